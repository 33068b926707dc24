//! Issue 14: a hospital onboarded by API with a Kafka topic of its own,
//! read by the running server without a restart, through a real broker —
//! as a group member (subscription) and with `[kafka] partitions`
//! (assignment).
//!
//! The hospital is onboarded before its topic exists; the topic is created
//! and events produced to it with an independent client. Timed: request to
//! the hospital's first alert (under a minute). Its events need no
//! `hospital_id` (they get the hospital's), one naming another hospital is
//! a dead letter on the dead-letter topic with the reason, and the shared
//! topic's canary keeps firing. The archive holds each good event exactly
//! once, also after a restart, which reads the topic again from where it
//! stopped; once the hospital is retired its topic is no longer read.

use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{json, Value};
use wardwatch_tests::{recent_ms, Broker, Server};

const OWN_TOPIC: &str = "vitals-h77";

fn config(broker: &Broker, manual: bool) -> wardwatch::config::Config {
    let mut config = wardwatch::config::Config::default();
    config.kafka.brokers = Some(broker.bootstrap.clone());
    config.kafka.group_id = format!("hospital-topic-{manual}");
    config.kafka.fetch_wait_max_ms = 10;
    config.pipeline.idle_timeout_ms = 2_000;
    if manual {
        config.kafka.partitions = Some(vec![]);
    }
    config
}

fn reading(patient: &str, hospital: Option<&str>, seq: u32, spo2: f64, hr: f64) -> String {
    let mut event = json!({"patient_id": patient, "source_device": "BEDSIDE",
        "timestamp_unix_ms": recent_ms(1000, 30) + i64::from(seq), "sequence_number": seq,
        "spo2_pct": spo2, "heart_rate_bpm": hr});
    if let Some(h) = hospital {
        event["hospital_id"] = json!(h);
    }
    event.to_string()
}

async fn produce(producer: &FutureProducer, topic: &str, key: &str, payload: &str) {
    producer
        .send(
            FutureRecord::to(topic).key(key).payload(payload),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .expect("produce");
}

async fn send(server: &Server, method: reqwest::Method, path: &str, body: Value) -> (u16, Value) {
    let response = server
        .http
        .request(method, server.url(path))
        .json(&body)
        .send()
        .await
        .expect("request");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Waits until `GET /api/alerts?{query}` lists at least one alert.
async fn first_alert(server: &Server, query: &str, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let list = server.get_json(&format!("/api/alerts?{query}")).await;
        if let Some(first) = list["alerts"].as_array().and_then(|a| a.last()) {
            return first.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no alert for {query} in {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Rows of the hospital's events in the archive (history SQL).
async fn archived(server: &Server, hospital: &str) -> i64 {
    let (status, answer) = send(
        server,
        reqwest::Method::POST,
        "/api/query",
        json!({"sql": format!("SELECT count(*) AS n FROM vitals WHERE hospital_id = '{hospital}'")}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    answer["rows"][0]["n"].as_i64().unwrap()
}

/// Waits until the archive holds `want` rows of the hospital.
async fn archived_eventually(server: &Server, hospital: &str, want: i64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let n = archived(server, hospital).await;
        if n == want {
            return;
        }
        assert!(
            n < want,
            "{n} rows of {hospital} archived, more than the {want} sent"
        );
        assert!(
            Instant::now() < deadline,
            "{n} of {want} rows of {hospital} archived"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every payload and reason header on the dead-letter topic.
async fn dead_letters(broker: &Broker, want: usize) -> Vec<(String, String)> {
    let consumer: StreamConsumer = broker
        .client_config()
        .set("group.id", format!("dlq-reader-{}", rand::random::<u64>()))
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "10")
        .create()
        .unwrap();
    consumer.subscribe(&["vitals-dlq"]).unwrap();
    let mut out = vec![];
    let deadline = Instant::now() + Duration::from_secs(30);
    while out.len() < want && Instant::now() < deadline {
        if let Ok(Ok(m)) = tokio::time::timeout(Duration::from_millis(500), consumer.recv()).await {
            let reason = m
                .headers()
                .and_then(|h| {
                    use rdkafka::message::Headers;
                    h.iter()
                        .find(|h| h.key == "reason")
                        .and_then(|h| h.value)
                        .map(|v| String::from_utf8_lossy(v).into_owned())
                })
                .unwrap_or_default();
            out.push((
                String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned(),
                reason,
            ));
        }
    }
    out
}

async fn run(manual: bool) {
    let broker = Broker::start().expect("the test broker must start");
    for (topic, partitions) in [("vitals", 2), ("alert-events", 1), ("vitals-dlq", 1)] {
        broker
            .create_topic(topic, partitions)
            .await
            .expect("create topic");
    }
    let server = Server::start(config(&broker, manual))
        .await
        .expect("server starts");
    let producer: FutureProducer = broker
        .client_config()
        .set("linger.ms", "1")
        .create()
        .unwrap();

    let (status, canary) = send(
        &server,
        reqwest::Method::POST,
        "/api/rules",
        json!({"name": "canary", "sql": "SELECT patient_id FROM vitals WHERE heart_rate_bpm > 190",
               "cooldown_seconds": 0}),
    )
    .await;
    assert_eq!(status, 201, "{canary}");
    let canary = canary["id"].as_str().unwrap().to_string();
    produce(
        &producer,
        "vitals",
        "C1",
        &reading("C1", Some("H01"), 1, 97.0, 200.0),
    )
    .await;
    first_alert(
        &server,
        &format!("rule={canary}&patient=C1"),
        Duration::from_secs(30),
    )
    .await;

    // Refused: one of the server's own topics.
    let (status, answer) = send(
        &server,
        reqwest::Method::POST,
        "/api/hospitals",
        json!({"id": "H78", "name": "x", "time_zone": "UTC", "topic": "alert-events"}),
    )
    .await;
    assert_eq!(status, 400, "{answer}");

    // Onboarded before its topic exists.
    let asked = Instant::now();
    let (status, hospital) = send(
        &server,
        reqwest::Method::POST,
        "/api/hospitals",
        json!({"id": "H77", "name": "St. Seventy-Seven", "time_zone": "Europe/Amsterdam",
               "topic": OWN_TOPIC, "templates": ["critical-spo2-reading"]}),
    )
    .await;
    assert_eq!(status, 201, "{hospital}");
    assert_eq!(hospital["topic"], OWN_TOPIC);
    // Another hospital cannot have the same topic.
    let (status, answer) = send(
        &server,
        reqwest::Method::POST,
        "/api/hospitals",
        json!({"id": "H79", "name": "x", "time_zone": "UTC", "topic": OWN_TOPIC}),
    )
    .await;
    assert_eq!(status, 409, "{answer}");

    broker
        .create_topic(OWN_TOPIC, 2)
        .await
        .expect("create topic");
    // No hospital_id: the topic says whose it is.
    produce(
        &producer,
        OWN_TOPIC,
        "P1",
        &reading("P1", None, 1, 80.0, 90.0),
    )
    .await;
    let alert = first_alert(
        &server,
        "patient=P1&severity=critical",
        Duration::from_secs(60),
    )
    .await;
    let took = asked.elapsed();
    assert_eq!(alert["hospital_id"], "H77", "{alert}");
    assert!(took < Duration::from_secs(60), "first alert after {took:?}");
    println!("onboarding with a topic of its own → first alert: {took:?} (manual = {manual})");

    // Its own id, another hospital's (a dead letter), more readings.
    let mut good = 1;
    produce(
        &producer,
        OWN_TOPIC,
        "P2",
        &reading("P2", Some("H77"), 2, 97.0, 80.0),
    )
    .await;
    good += 1;
    let foreign = reading("P3", Some("H01"), 3, 97.0, 80.0);
    produce(&producer, OWN_TOPIC, "P3", &foreign).await;
    for i in 0..20u32 {
        let patient = format!("Q{i}");
        produce(
            &producer,
            OWN_TOPIC,
            &patient,
            &reading(&patient, None, 10 + i, 96.0, 75.0),
        )
        .await;
        good += 1;
    }
    archived_eventually(&server, "H77", good).await;
    let letters = dead_letters(&broker, 1).await;
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].0, foreign);
    assert!(
        letters[0].1.contains("on the topic of hospital 'H77'"),
        "{letters:?}"
    );
    // The shared topic is read all along.
    produce(
        &producer,
        "vitals",
        "C2",
        &reading("C2", Some("H01"), 2, 97.0, 200.0),
    )
    .await;
    first_alert(
        &server,
        &format!("rule={canary}&patient=C2"),
        Duration::from_secs(30),
    )
    .await;

    // A restart reads the hospital's topic again, from where it stopped.
    let data_dir = std::sync::Arc::clone(&server.data_dir);
    server.stop().await.unwrap();
    for i in 0..5u32 {
        let patient = format!("R{i}");
        produce(
            &producer,
            OWN_TOPIC,
            &patient,
            &reading(&patient, None, 40 + i, 96.0, 75.0),
        )
        .await;
        good += 1;
    }
    let server = Server::start_in(config(&broker, manual), data_dir)
        .await
        .expect("server restarts");
    produce(
        &producer,
        OWN_TOPIC,
        "P9",
        &reading("P9", None, 50, 80.0, 90.0),
    )
    .await;
    good += 1;
    first_alert(
        &server,
        "patient=P9&severity=critical",
        Duration::from_secs(60),
    )
    .await;
    archived_eventually(&server, "H77", good).await;

    // Retired: its topic is no longer read; the shared one still is.
    let (status, _) = send(
        &server,
        reqwest::Method::DELETE,
        "/api/hospitals/H77",
        json!({}),
    )
    .await;
    assert_eq!(status, 200);
    tokio::time::sleep(Duration::from_secs(1)).await;
    produce(
        &producer,
        OWN_TOPIC,
        "P10",
        &reading("P10", None, 60, 80.0, 90.0),
    )
    .await;
    produce(
        &producer,
        "vitals",
        "C3",
        &reading("C3", Some("H01"), 3, 97.0, 200.0),
    )
    .await;
    first_alert(
        &server,
        &format!("rule={canary}&patient=C3"),
        Duration::from_secs(30),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        archived(&server, "H77").await,
        good,
        "a retired hospital's topic was read"
    );
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hospital_topic_is_read_by_the_group_member_without_a_restart() {
    run(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hospital_topic_is_read_by_assignment_without_a_restart() {
    run(true).await;
}
