//! Event time you can trust, over HTTP: one reading dated 2999 used to move
//! the HTTP partition's event time to 2999, after which every real reading
//! was late and the same tachycardia burst gave no alert until a restart.
//! Now it is a dead letter (`timestamp in the future`), counted by reason,
//! and the burst after it alerts exactly like the burst before it.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use wardwatch_tests::{recent_ms, Server};

const TACHYCARDIA: &str = "SELECT patient_id, AVG(heart_rate_bpm) AS avg_hr, COUNT(*) AS n
FROM vitals WHERE heart_rate_bpm > 100
GROUP BY TUMBLE(event_time, INTERVAL '60' SECOND), patient_id
HAVING COUNT(*) >= 5 AND AVG(heart_rate_bpm) > 110";

fn reading(patient: &str, ts: i64, hr: f64) -> String {
    json!({"hospital_id": "H01", "patient_id": patient, "timestamp_unix_ms": ts,
           "heart_rate_bpm": hr, "spo2_pct": 97.0, "source_device": "BEDSIDE"})
    .to_string()
}

/// A minute of tachycardia for three patients from `start`, then one calm
/// reading a minute and a second later that moves event time past it.
fn burst(start: i64) -> String {
    let mut body = String::new();
    for s in 0..60 {
        for p in ["P1", "P2", "P3"] {
            body.push_str(&reading(p, start + s * 1_000, 130.0));
            body.push('\n');
        }
    }
    body.push_str(&reading("Z", start + 61_000, 70.0));
    body.push('\n');
    body
}

async fn alerts(server: &Server, rule: &str, want: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let listed: Value = server
            .get_json(&format!("/api/alerts?rule={rule}&limit=100"))
            .await;
        let alerts = listed["alerts"].as_array().cloned().unwrap_or_default();
        if alerts.len() >= want || Instant::now() > deadline {
            return alerts;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reading_dated_2999_is_refused_and_alerting_goes_on() {
    let server = Server::start(wardwatch::config::Config::default())
        .await
        .expect("server starts");
    let created = server
        .http
        .post(server.url("/api/rules"))
        .json(&json!({"name": "Sustained tachycardia", "sql": TACHYCARDIA, "severity": "high", "cooldown_seconds": 0}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let rule: Value = created.json().await.unwrap();
    let rule = rule["id"].as_str().unwrap().to_string();

    // Recent readings (retention refuses old ones), on a minute boundary.
    let now = recent_ms(1, 0);
    let base = (now / 60_000 - 20) * 60_000;
    let before = server.ingest(burst(base)).await;
    assert_eq!(before, json!({"accepted": 181, "rejected": 0}));
    assert_eq!(alerts(&server, &rule, 3).await.len(), 3, "the first burst");

    let outlier = server
        .ingest(reading("P1", 32_503_593_600_000, 130.0))
        .await;
    assert_eq!(outlier, json!({"accepted": 0, "rejected": 1}));
    // Just as far in the past: older than the archive's retention.
    let ancient = server
        .ingest(reading("P1", now - 40 * 86_400_000, 130.0))
        .await;
    assert_eq!(ancient, json!({"accepted": 0, "rejected": 1}));

    let after = server.ingest(burst(base + 120_000)).await;
    assert_eq!(after, json!({"accepted": 181, "rejected": 0}));
    let all = alerts(&server, &rule, 6).await;
    assert_eq!(all.len(), 6, "the same burst alerts again: {all:?}");

    let letters: Value = server.get_json("/api/dead-letters?limit=10").await;
    let reasons: Vec<&str> = letters["dead_letters"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l["reason"].as_str())
        .collect();
    assert!(
        reasons
            .iter()
            .any(|r| r.starts_with("timestamp in the future")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.starts_with("timestamp older than retention")),
        "{reasons:?}"
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
    for line in [
        "wardwatch_events_rejected_total 2",
        "wardwatch_events_rejected_by_reason_total{reason=\"timestamp_in_the_future\"} 1",
        "wardwatch_events_rejected_by_reason_total{reason=\"timestamp_older_than_retention\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
    server.stop().await.unwrap();
}

/// A device cannot park megabytes in the server: a 1 MiB `patient_id` is a
/// dead letter (ids are interned and kept in engine state), and the
/// embedded dead-letter table keeps only the first 4 KiB of its payload.
/// The burst after it alerts as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_megabyte_patient_id_is_refused_and_its_dead_letter_is_bounded() {
    let server = Server::start(wardwatch::config::Config::default())
        .await
        .expect("server starts");
    let created = server
        .http
        .post(server.url("/api/rules"))
        .json(&json!({"name": "Sustained tachycardia", "sql": TACHYCARDIA, "severity": "high", "cooldown_seconds": 0}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let now = recent_ms(1, 0);
    let huge = "P".repeat(1 << 20);
    let result = server
        .ingest(reading(&huge, now - 1_000, 130.0) + "\n")
        .await;
    assert_eq!(result["rejected"], 1, "{result}");

    let letters: Value = server.get_json("/api/dead-letters?limit=10").await;
    let letter = &letters["dead_letters"][0];
    assert!(
        letter["reason"]
            .as_str()
            .unwrap()
            .starts_with("patient_id is 1048576 bytes long"),
        "{}",
        letter["reason"]
    );
    assert!(letter["payload"].as_str().unwrap().len() <= 4096);
    assert_eq!(letter["payload_truncated"], true);
    assert!(letter["payload_bytes"].as_u64().unwrap() > 1 << 20);

    let start = (now / 60_000 - 5) * 60_000;
    server.ingest(burst(start)).await;
    let fired = alerts(&server, "Sustained tachycardia", 3).await;
    assert_eq!(fired.len(), 3, "alerting goes on: {fired:?}");
}
