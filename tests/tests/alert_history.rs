//! One alert history: `GET /api/alerts`, acknowledgements and SQL over the
//! `alerts` table read the same rows, so a flood of suppressed alerts cannot
//! push a fired one out of view, and a restart changes nothing.

use std::collections::BTreeSet;

use serde_json::{json, Value};
use wardwatch_tests::{recent_ms, Server};

/// Six hours ago, on the hour: the alerts span four hours, all inside the
/// archive's retention and none in the future.
fn t0() -> i64 {
    static T0: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    *T0.get_or_init(|| recent_ms(3_600_000, 6))
}

fn reading(patient: &str, ts: i64, seq: u32, spo2: f64) -> String {
    json!({"hospital_id": "H01", "patient_id": patient, "timestamp_unix_ms": ts, "spo2_pct": spo2,
           "heart_rate_bpm": 88.0, "source_device": "BEDSIDE", "sequence_number": seq})
    .to_string()
}

async fn create_rule(server: &Server) {
    let created = server
        .http
        .post(server.url("/api/rules"))
        .json(&json!({"name": "Critical SpO2", "sql": "SELECT patient_id, spo2_pct FROM vitals WHERE spo2_pct < 85",
                      "severity": "critical", "cooldown_seconds": 300}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
}

async fn list(server: &Server, query: &str) -> Vec<Value> {
    let response = server
        .http
        .get(server.url(&format!("/api/alerts?{query}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.json::<Value>().await.unwrap()["alerts"]
        .as_array()
        .unwrap()
        .clone()
}

/// Waits until `GET /api/alerts` shows `n` alerts for `query`.
async fn wait_for(server: &Server, query: &str, n: usize) -> Vec<Value> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let alerts = list(server, query).await;
        if alerts.len() >= n || std::time::Instant::now() > deadline {
            return alerts;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_suppressed_alerts_does_not_hide_a_fired_alert_or_its_ack() {
    let server = Server::start(wardwatch::config::Config::default())
        .await
        .expect("server starts");
    create_rule(&server).await;

    server.ingest(reading("P1", t0(), 0, 80.0) + "\n").await;
    let fired = wait_for(&server, "patient=P1&status=fired", 1).await;
    assert_eq!(fired.len(), 1);
    let fired_id = fired[0]["id"].as_str().unwrap().to_string();

    // 5,001 low readings for another patient in 250 s: one alert, then
    // 5,000 repeats inside the cooldown.
    const FLOOD: u32 = 5_001;
    let mut body = String::new();
    for i in 0..FLOOD {
        body.push_str(&reading("P2", t0() + 1_000 + i64::from(i) * 50, i, 70.0));
        body.push('\n');
    }
    server.ingest(body).await;
    let suppressed = wait_for(&server, "patient=P2&status=suppressed&limit=10000", 5_000).await;
    assert_eq!(suppressed.len(), 5_000);

    // The newest alerts are the flood's, newest first...
    let newest = list(&server, "").await;
    assert_eq!(newest.len(), 100, "limit defaults to 100");
    let times: Vec<i64> = newest
        .iter()
        .map(|a| a["event_time_ms"].as_i64().unwrap())
        .collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "newest first");
    assert_eq!(times[0], t0() + 1_000 + i64::from(FLOOD - 1) * 50);
    // ...and the fired alert is still there, and can be acknowledged.
    let fired = list(&server, "status=fired").await;
    let ids: Vec<&str> = fired.iter().map(|a| a["id"].as_str().unwrap()).collect();
    assert!(ids.contains(&fired_id.as_str()), "{ids:?}");
    assert_eq!(
        list(&server, "rule=Critical%20SpO2&patient=P1").await.len(),
        1
    );
    let ack = server
        .http
        .post(server.url(&format!("/api/alerts/{fired_id}/ack")))
        .json(&json!({"by": "nurse.kim"}))
        .send()
        .await
        .unwrap();
    assert_eq!(ack.status(), 200);
    let acked: Value = ack.json().await.unwrap();
    assert_eq!(acked["id"], fired_id.as_str());
    assert_eq!(acked["ack"]["by"], "nurse.kim");
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_alert_list_and_sql_agree_after_a_restart() {
    let server = Server::start(wardwatch::config::Config::default())
        .await
        .expect("server starts");
    create_rule(&server).await;
    // Alerts over several hours, for three patients.
    let mut body = String::new();
    for (i, patient) in ["P1", "P2", "P3"].iter().enumerate() {
        for h in 0..4u32 {
            for k in 0..3u32 {
                let ts = t0() + i64::from(h) * 3_600_000 + i as i64 * 1_000 + i64::from(k) * 10_000;
                body.push_str(&reading(patient, ts, h * 10 + k, 80.0));
                body.push('\n');
            }
        }
    }
    server.ingest(body).await;
    assert_eq!(wait_for(&server, "limit=1000", 36).await.len(), 36);
    let data_dir = server.data_dir.clone();
    server.stop().await.unwrap();

    let server = Server::start_in(wardwatch::config::Config::default(), data_dir)
        .await
        .expect("server restarts");
    let listed: BTreeSet<(String, String)> = list(&server, "limit=1000")
        .await
        .iter()
        .map(|a| {
            (
                a["id"].as_str().unwrap().to_string(),
                a["status"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let response = server
        .http
        .post(server.url("/api/query"))
        .json(&json!({"sql": "SELECT id, status FROM alerts"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    let queried: BTreeSet<(String, String)> = body["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| match row {
            Value::Array(cells) => (
                cells[0].as_str().unwrap().to_string(),
                cells[1].as_str().unwrap().to_string(),
            ),
            _ => (
                row["id"].as_str().unwrap().to_string(),
                row["status"].as_str().unwrap().to_string(),
            ),
        })
        .collect();
    assert_eq!(listed.len(), 36);
    assert_eq!(listed, queried);
    let fired = listed.iter().filter(|(_, s)| s == "fired").count();
    // Each patient's 4 hours are more than the 300 s cooldown apart.
    assert_eq!(fired, 12, "{listed:?}");
    server.stop().await.unwrap();
}
