//! Alerts over HTTP, as a dashboard and a nurse's station use them: the
//! live SSE feed read by a real HTTP client, a storm that yields one alert
//! and its suppressed repeats, duplicates dropped and counted, and
//! acknowledgement.

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{json, Value};
use wardwatch_tests::Server;

const T0: i64 = 1_767_225_600_000;

/// The default configuration, except that events dated T0 (2026-01-01)
/// stay acceptable: the server refuses events older than the archive's
/// retention (30 days by default).
fn config() -> wardwatch::config::Config {
    let mut config = wardwatch::config::Config::default();
    config.archive.retention_days = 36_500;
    config
}

fn reading(patient: &str, ts: i64, seq: u32, spo2: f64) -> String {
    json!({"hospital_id": "H01", "patient_id": patient, "timestamp_unix_ms": ts, "spo2_pct": spo2,
           "heart_rate_bpm": 88.0, "source_device": "BEDSIDE", "sequence_number": seq})
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_gives_one_alert_live_over_sse_and_the_rest_are_recorded_as_suppressed() {
    let server = Server::start(config()).await.expect("server starts");
    let created = server
        .http
        .post(server.url("/api/rules"))
        .json(&json!({"name": "Critical SpO2", "sql": "SELECT patient_id, spo2_pct FROM vitals WHERE spo2_pct < 85",
                      "severity": "critical", "cooldown_seconds": 300}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);

    // Subscribe before anything happens, like a dashboard would.
    let sse = server
        .http
        .get(server.url("/api/alerts/stream?patient=P1"))
        .send()
        .await
        .unwrap();
    assert_eq!(sse.status(), 200);
    assert!(sse.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let reader = tokio::spawn(async move {
        let mut body = sse.bytes_stream();
        let mut buffer = String::new();
        let mut events: Vec<(String, Value)> = vec![];
        let deadline = Instant::now() + Duration::from_secs(30);
        while events.len() < 200 && Instant::now() < deadline {
            let Ok(Some(chunk)) = tokio::time::timeout(Duration::from_secs(1), body.next()).await
            else {
                continue;
            };
            buffer.push_str(&String::from_utf8_lossy(&chunk.expect("SSE chunk")));
            while let Some(end) = buffer.find("\n\n") {
                let frame: String = buffer.drain(..end + 2).collect();
                let kind = frame
                    .lines()
                    .find_map(|l| l.strip_prefix("event:"))
                    .map(|s| s.trim().to_string());
                let data = frame
                    .lines()
                    .find_map(|l| l.strip_prefix("data:"))
                    .map(|s| s.trim().to_string());
                if let (Some(kind), Some(data)) = (kind, data) {
                    events.push((kind, serde_json::from_str(&data).expect("SSE data is JSON")));
                }
            }
        }
        events
    });
    tokio::time::sleep(Duration::from_millis(200)).await;

    // 200 distinct low readings in 60 s, 20 exact re-sends, another patient.
    let mut body = String::new();
    for i in 0..200u32 {
        body.push_str(&reading("P1", T0 + i as i64 * 300, i, 80.0));
        body.push('\n');
    }
    // A gateway replaying the tail of its buffer.
    for i in 180..200u32 {
        body.push_str(&reading("P1", T0 + i as i64 * 300, i, 80.0));
        body.push('\n');
    }
    body.push_str(&reading("P2", T0, 0, 84.0));
    body.push('\n');
    let ingested = server
        .http
        .post(server.url("/api/ingest"))
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(ingested.status(), 202);
    let counts: Value = ingested.json().await.unwrap();
    assert_eq!(counts, json!({"accepted": 221, "rejected": 0}));

    let events = reader.await.unwrap();
    assert_eq!(events.len(), 200, "live alerts for P1 over SSE");
    assert!(events
        .iter()
        .all(|(kind, a)| kind == "alert" && a["key"]["patient_id"] == "P1"));
    let fired: Vec<&Value> = events
        .iter()
        .map(|(_, a)| a)
        .filter(|a| a["status"] == "fired")
        .collect();
    assert_eq!(fired.len(), 1, "one alert for the storm");
    assert_eq!(fired[0]["severity"], "critical");
    assert_eq!(fired[0]["event_time_ms"], T0);
    let first_id = fired[0]["id"].as_str().unwrap().to_string();
    assert!(events
        .iter()
        .filter(|(_, a)| a["status"] == "suppressed")
        .all(|(_, a)| a["explanation"]["suppressed_by"] == first_id.as_str()));

    // The list agrees, by status; suppressed alerts are queryable.
    let list = |q: String| {
        let http = server.http.clone();
        let url = server.url(&format!("/api/alerts?{q}"));
        async move {
            http.get(url)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()["alerts"]
                .as_array()
                .unwrap()
                .clone()
        }
    };
    assert_eq!(
        list("patient=P1&status=suppressed&limit=1000".into())
            .await
            .len(),
        199
    );
    assert_eq!(list("patient=P1&status=fired".into()).await.len(), 1);
    assert_eq!(
        list("patient=P2".into()).await.len(),
        1,
        "another patient is not muted by P1's cooldown"
    );
    assert_eq!(
        list(format!("patient=P1&since={}&limit=1000", T0 + 1))
            .await
            .len(),
        199,
        "since filters by event time"
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
        metrics.contains("wardwatch_events_duplicate_total 20"),
        "{metrics}"
    );
    assert!(
        metrics.contains("wardwatch_alerts_suppressed_total 199"),
        "{metrics}"
    );
    assert!(
        metrics.contains("wardwatch_alerts_fired_total 2"),
        "{metrics}"
    );

    // Acknowledge: recorded and visible in history.
    let ack = server
        .http
        .post(server.url(&format!("/api/alerts/{first_id}/ack")))
        .json(&json!({"by": "nurse.kim", "note": "probe reseated, SpO2 recovering"}))
        .send()
        .await
        .unwrap();
    assert_eq!(ack.status(), 200);
    let acked: Value = ack.json().await.unwrap();
    assert_eq!(acked["ack"]["by"], "nurse.kim");
    let shown = list("patient=P1&status=fired".into()).await;
    assert_eq!(shown[0]["ack"]["note"], "probe reseated, SpO2 recovering");
    let unknown = server
        .http
        .post(server.url("/api/alerts/nope/ack"))
        .json(&json!({"by": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
    let nobody = server
        .http
        .post(server.url(&format!("/api/alerts/{first_id}/ack")))
        .json(&json!({"by": " "}))
        .send()
        .await
        .unwrap();
    assert_eq!(nobody.status(), 400);
}
