//! End to end through a real broker: events produced by an independent
//! client → wardwatch's Kafka source → the tachycardia rule → alerts read
//! back from `alert-events` by a separate consumer; malformed events land in
//! `vitals-dlq` with reasons; a bad rule is refused with line and column.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{json, Value};
use wardwatch_tests::{Broker, Server};

const TACHYCARDIA: &str = "SELECT patient_id, AVG(heart_rate_bpm) AS avg_hr, COUNT(*) AS n,
       TUMBLE_END(event_time, INTERVAL '60' SECOND) AS window_end
FROM vitals WHERE heart_rate_bpm > 100
GROUP BY TUMBLE(event_time, INTERVAL '60' SECOND), patient_id
HAVING COUNT(*) >= 5 AND AVG(heart_rate_bpm) > 110";

const PARTITIONS: i32 = 4;
const T0: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z, a window boundary

struct Reading {
    patient: String,
    ts: i64,
    hr: f64,
}

/// Three minutes of 1 Hz readings for patients with different stories.
fn ward() -> Vec<Reading> {
    let mut out = vec![];
    for s in 0..180i64 {
        let minute = s / 60;
        let ts = T0 + s * 1000 + 137; // not aligned to the second
        let wobble = ((s * 7) % 5) as f64 * 0.3;
        let hr = |p: &str| -> f64 {
            match (p, minute) {
                ("P1", 0) | ("P1", 1) => 121.0 + wobble, // sustained, two windows
                ("P2", 1) => 131.4 - wobble,             // one window
                ("P3", _) => 105.2 + wobble,             // above 100, avg below 110
                ("P4", 2) if s % 60 < 4 => 140.0,        // only 4 fast beats: n < 5
                ("P6", 2) => 112.0 + wobble,             // last window
                _ => 72.0 + wobble,
            }
        };
        for p in ["P1", "P2", "P3", "P4", "P5", "P6"] {
            out.push(Reading {
                patient: p.to_string(),
                ts,
                hr: (hr(p) * 10.0).round() / 10.0,
            });
        }
    }
    out
}

/// The rule evaluated by brute force over the same readings.
fn expected(readings: &[Reading]) -> BTreeSet<(String, i64)> {
    let mut windows: BTreeMap<(String, i64), Vec<f64>> = BTreeMap::new();
    for r in readings.iter().filter(|r| r.hr > 100.0) {
        let start = r.ts.div_euclid(60_000) * 60_000;
        windows
            .entry((r.patient.clone(), start))
            .or_default()
            .push(r.hr);
    }
    windows
        .into_iter()
        .filter(|(_, v)| v.len() >= 5 && v.iter().sum::<f64>() / v.len() as f64 > 110.0)
        .map(|(k, _)| k)
        .collect()
}

fn reading_json(r: &Reading, seq: u32) -> String {
    json!({
        "hospital_id": "H01", "patient_id": r.patient, "timestamp_unix_ms": r.ts,
        "heart_rate_bpm": r.hr, "spo2_pct": 97.0, "respiration_rate": 16.0,
        "systolic_bp_mmhg": 120.0, "diastolic_bp_mmhg": 80.0,
        "source_device": "BEDSIDE", "sequence_number": seq,
    })
    .to_string()
}

async fn read_topic(
    broker: &Broker,
    topic: &str,
    want: usize,
    timeout: Duration,
) -> Vec<(Option<String>, Vec<u8>, BTreeMap<String, String>)> {
    let consumer: StreamConsumer = broker
        .client_config()
        // A fresh group each time: every read starts from the beginning.
        .set(
            "group.id",
            format!("e2e-reader-{topic}-{}", rand::random::<u64>()),
        )
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "10")
        .create()
        .expect("reader consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let mut out = vec![];
    let deadline = Instant::now() + timeout;
    while out.len() < want && Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_millis(500), consumer.recv()).await {
            Ok(Ok(m)) => {
                let mut headers = BTreeMap::new();
                if let Some(h) = m.headers() {
                    for header in h.iter() {
                        headers.insert(
                            header.key.to_string(),
                            String::from_utf8_lossy(header.value.unwrap_or_default()).into_owned(),
                        );
                    }
                }
                out.push((
                    m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                    m.payload().unwrap_or_default().to_vec(),
                    headers,
                ));
            }
            Ok(Err(e)) => panic!("reading {topic}: {e}"),
            Err(_) => {}
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tachycardia_rule_fires_for_exactly_the_right_patients_through_kafka() {
    let broker = Broker::start().expect("the test broker must start");
    for (topic, partitions) in [
        ("vitals", PARTITIONS),
        ("alert-events", 1),
        ("vitals-dlq", 1),
    ] {
        broker
            .create_topic(topic, partitions)
            .await
            .expect("create topic");
    }
    let mut config = wardwatch::config::Config::default();
    config.kafka.brokers = Some(broker.bootstrap.clone());
    config.kafka.group_id = "wardwatch-e2e".into();
    config.pipeline.idle_timeout_ms = 3_000;
    // Events are dated 2026-01-01, older than the default 30-day retention.
    config.archive.retention_days = 36_500;
    let server = Server::start(config).await.expect("server starts");

    // A bad rule is refused with the position of the problem.
    let bad = server
        .http
        .post(server.url("/api/rules"))
        .json(&json!({"name": "typo", "sql": "SELECT patient_id, AVG(heart_rte) FROM vitals\nGROUP BY TUMBLE(event_time, INTERVAL '1' MINUTE), patient_id"}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let body: Value = bad.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("heart_rte"),
        "{body}"
    );
    assert_eq!(body["error"]["line"], 1, "{body}");
    assert_eq!(body["error"]["column"], 24, "{body}");

    let created = server
        .http
        .post(server.url("/api/rules"))
        .json(&json!({"name": "Sustained tachycardia", "sql": TACHYCARDIA, "severity": "high", "cooldown_seconds": 0}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let rule: Value = created.json().await.unwrap();
    let rule_id = rule["id"].as_str().unwrap().to_string();
    assert_eq!(rule["version"], 1);

    // Produce with an independent client, keyed by patient.
    let producer: FutureProducer = broker
        .client_config()
        .set("linger.ms", "5")
        .create()
        .unwrap();
    let readings = ward();
    let mut sends = vec![];
    for (i, r) in readings.iter().enumerate() {
        let payload = reading_json(r, i as u32);
        let key = r.patient.clone();
        let producer = producer.clone();
        sends.push(async move {
            producer
                .send(
                    FutureRecord::to("vitals").key(&key).payload(&payload),
                    Duration::from_secs(10),
                )
                .await
                .map(|_| ())
        });
    }
    for s in futures::future::join_all(sends).await {
        s.map_err(|(e, _)| e).expect("produce");
    }
    let malformed: [(&str, &str); 4] = [
        ("P9", "{not json"),
        (
            "P9",
            r#"{"timestamp_unix_ms": 1767225600000, "heart_rate_bpm": 80}"#,
        ),
        (
            "P9",
            r#"{"patient_id": "P9", "timestamp_unix_ms": 1767225600000, "heart_rate_bpm": -5}"#,
        ),
        (
            "P9",
            r#"{"patient_id": "P9", "timestamp_unix_ms": 1767225600000, "spo2_pct": 101.5}"#,
        ),
    ];
    for (key, payload) in malformed {
        producer
            .send(
                FutureRecord::to("vitals").key(key).payload(payload),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
    // Move every partition's event time past the last window (+ lateness).
    for p in 0..PARTITIONS {
        let r = Reading {
            patient: format!("Z{p}"),
            ts: T0 + 181_000 + 1_000,
            hr: 70.0,
        };
        let payload = reading_json(&r, 0);
        producer
            .send(
                FutureRecord::to("vitals")
                    .key(&r.patient)
                    .partition(p)
                    .payload(&payload),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }

    let want = expected(&readings);
    assert_eq!(
        want.iter()
            .map(|(p, _)| p.as_str())
            .collect::<BTreeSet<_>>(),
        BTreeSet::from(["P1", "P2", "P6"]),
        "the scenario itself is what we think it is"
    );
    assert_eq!(want.len(), 4);

    let alerts = read_topic(&broker, "alert-events", want.len(), Duration::from_secs(60)).await;
    let mut got = BTreeSet::new();
    for (key, payload, headers) in &alerts {
        let alert: Value = serde_json::from_slice(payload).expect("alert is JSON");
        assert_eq!(alert["rule_id"], rule_id.as_str());
        assert_eq!(alert["status"], "fired");
        assert_eq!(
            headers.get("alert_id").map(String::as_str),
            alert["id"].as_str(),
            "id header"
        );
        let patient = alert["key"]["patient_id"].as_str().unwrap().to_string();
        assert_eq!(key.as_deref(), Some(patient.as_str()), "keyed by patient");
        assert!(alert["values"]["avg_hr"].as_f64().unwrap() > 110.0);
        assert!(alert["values"]["n"].as_i64().unwrap() >= 5);
        assert_eq!(
            alert["window_end_ms"].as_i64().unwrap() - alert["window_start_ms"].as_i64().unwrap(),
            60_000
        );
        got.insert((patient, alert["window_start_ms"].as_i64().unwrap()));
    }
    assert_eq!(got, want, "alerts on alert-events");
    // Nothing more arrives (no duplicates, no extra patients).
    let extra = read_topic(
        &broker,
        "alert-events",
        want.len() + 1,
        Duration::from_secs(3),
    )
    .await;
    assert_eq!(
        extra.len(),
        want.len(),
        "exactly one alert per qualifying window"
    );

    let letters = read_topic(&broker, "vitals-dlq", 4, Duration::from_secs(30)).await;
    assert_eq!(letters.len(), 4, "every malformed event is dead-lettered");
    let reasons: Vec<String> = letters
        .iter()
        .map(|(_, _, h)| h.get("reason").cloned().unwrap_or_default())
        .collect();
    assert!(reasons.iter().any(|r| r.contains("JSON")), "{reasons:?}");
    assert!(
        reasons.iter().any(|r| r.contains("patient_id")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("heart_rate_bpm")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("spo2_pct")),
        "{reasons:?}"
    );
    let payloads: BTreeSet<Vec<u8>> = letters.iter().map(|(_, p, _)| p.clone()).collect();
    assert!(
        payloads.contains(b"{not json".as_slice()),
        "original bytes are kept"
    );

    // The REST view agrees with Kafka.
    let listed: Value = server
        .http
        .get(server.url(&format!("/api/alerts?rule={rule_id}&limit=100")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        listed["alerts"].as_array().unwrap().len(),
        want.len(),
        "{listed}"
    );
    let metrics = server
        .http
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("wardwatch_events_rejected_total 4"),
        "{metrics}"
    );
    let ready = server.http.get(server.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    // Caught up: librdkafka's statistics (each second) report the lag.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let ready = server.get_json("/readyz").await;
        eprintln!("readyz: {ready}");
        if let Some(lag) = ready["consumer_lag"].as_i64() {
            assert!(lag < 100, "caught up, yet {lag} behind: {ready}");
            assert!(ready["degraded"].as_array().unwrap().is_empty(), "{ready}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no consumer lag: {ready}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
