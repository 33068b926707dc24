//! A rule that fails at run time (an integer division by zero that only
//! some readings trigger, so no validation sample can catch it) must not
//! look healthy and must not stop the others: it shows `failing` with its
//! error in `GET /api/rules` and `/metrics`, raises one `rule_failing`
//! system alert, and a canary rule keeps firing on every later event.

mod common;

use std::time::{Duration, Instant};

use common::{get, post, start, start_with};
use serde_json::{json, Value};

fn events(t0: i64, n: i64, spo2: f64) -> String {
    let mut body = String::new();
    for i in 0..n {
        body.push_str(
            &json!({"patient_id": format!("P{}", i % 5), "timestamp_unix_ms": t0 + i * 100,
                    "heart_rate_bpm": 80.0, "spo2_pct": spo2, "sequence_number": (t0 / 100) % 1_000_000 + i})
            .to_string(),
        );
        body.push('\n');
    }
    body
}

#[tokio::test]
async fn a_rule_failing_at_run_time_is_shown_alerted_and_leaves_the_canary_firing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let http = reqwest::Client::new();
    let server = start(&data, &http).await;
    let url = |p: &str| format!("{}{p}", server.url);

    let broken = post(
        &http,
        url("/api/rules"),
        json!({"name": "divides by spo2 - 97", "severity": "low", "cooldown_seconds": 0,
               "sql": "SELECT patient_id FROM vitals WHERE CAST(heart_rate_bpm AS BIGINT) / (CAST(spo2_pct AS BIGINT) - 97) > 100"}),
    )
    .await;
    let broken_id = broken["id"].as_str().unwrap().to_string();
    post(
        &http,
        url("/api/rules"),
        json!({"name": "canary", "severity": "critical", "cooldown_seconds": 0,
               "sql": "SELECT patient_id, spo2_pct FROM vitals WHERE spo2_pct < 98"}),
    )
    .await;

    // spo2 97 makes the broken rule divide by zero; the canary fires on it.
    let t0 = chrono::Utc::now().timestamp_millis() - 120_000;
    let r = http
        .post(url("/api/ingest"))
        .header("content-type", "application/x-ndjson")
        .body(events(t0, 10, 97.0))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);

    let deadline = Instant::now() + Duration::from_secs(20);
    let rule = loop {
        let rules = get(&http, url("/api/rules")).await;
        let rule = rules["rules"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["id"] == broken_id.as_str())
            .cloned()
            .unwrap();
        if rule["state"] == "failing" {
            break rule;
        }
        assert!(Instant::now() < deadline, "never shown failing: {rule}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        rule["health"]["errors_total"].as_u64().unwrap() >= 1,
        "{rule}"
    );
    let error = rule["health"]["last_error"].as_str().unwrap();
    assert!(error.to_lowercase().contains("divide by zero"), "{error}");

    let metrics = http
        .get(url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("\nwardwatch_rules_failing 1\n"),
        "{metrics}"
    );
    // Still ready (the others alert), but not well: /readyz says why.
    let ready = get(&http, url("/readyz")).await;
    assert_eq!(ready["ready"], true, "{ready}");
    assert_eq!(ready["degraded"], json!(["1 rules failing"]), "{ready}");
    assert_eq!(ready["consumer_lag"], Value::Null, "{ready}");
    assert!(
        !metrics.contains("\nwardwatch_rule_errors_total 0\n"),
        "{metrics}"
    );

    // One system alert, then the canary keeps firing on fresh events.
    let alerts = get(&http, url("/api/alerts?limit=1000")).await;
    let list = alerts["alerts"].as_array().unwrap();
    let system: Vec<&Value> = list
        .iter()
        .filter(|a| {
            a["rule_id"] == broken_id.as_str()
                && a["rule_name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with("rule_failing"))
        })
        .collect();
    assert_eq!(system.len(), 1, "{alerts}");
    assert_eq!(system[0]["status"], "fired");

    let before = list.iter().filter(|a| a["rule_name"] == "canary").count();
    assert_eq!(before, 10, "{alerts}");
    let r = http
        .post(url("/api/ingest"))
        .header("content-type", "application/x-ndjson")
        .body(events(t0 + 10_000, 10, 97.0))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let alerts = get(&http, url("/api/alerts?limit=1000")).await;
        let list = alerts["alerts"].as_array().unwrap();
        let canary = list.iter().filter(|a| a["rule_name"] == "canary").count();
        let system = list
            .iter()
            .filter(|a| {
                a["rule_name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with("rule_failing"))
            })
            .count();
        if canary == 20 {
            assert_eq!(system, 1, "still one system alert while it keeps failing");
            break;
        }
        assert!(Instant::now() < deadline, "canary stopped firing: {canary}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let health = http.get(url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
}

/// 1,200 readings of one patient within one minute, each matching.
fn storm_events(t0: i64) -> String {
    let mut body = String::new();
    for i in 0..1_200i64 {
        body.push_str(
            &json!({"patient_id": "STORM", "timestamp_unix_ms": t0 + i * 40,
                    "heart_rate_bpm": 150.0, "spo2_pct": 99.0, "sequence_number": i})
            .to_string(),
        );
        body.push('\n');
    }
    body
}

/// A rule that pages on every reading (cooldown 0) goes over an alert
/// budget of 1,000 per minute of event time (the default is 100,000; a
/// config file sets it lower here): it is suspended with its
/// reason in `GET /api/rules`, one `rule_suspended` system alert is raised
/// and counted in `/metrics`, and a canary keeps firing.
#[tokio::test]
async fn a_rule_over_its_alert_budget_is_suspended_shown_alerted_and_the_canary_fires() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let http = reqwest::Client::new();
    let config = dir.path().join("wardwatch.toml");
    std::fs::write(&config, "[limits]\nmax_alerts_per_rule_minute = 1000\n").unwrap();
    let server = start_with(&data, &http, &["--config", config.to_str().unwrap()]).await;
    let url = |p: &str| format!("{}{p}", server.url);

    let storm = post(
        &http,
        url("/api/rules"),
        json!({"name": "pages on every reading", "severity": "low", "cooldown_seconds": 0,
               "sql": "SELECT patient_id, heart_rate_bpm FROM vitals WHERE heart_rate_bpm > 140"}),
    )
    .await;
    let storm_id = storm["id"].as_str().unwrap().to_string();
    post(
        &http,
        url("/api/rules"),
        json!({"name": "canary", "severity": "critical", "cooldown_seconds": 0,
               "sql": "SELECT patient_id, spo2_pct FROM vitals WHERE spo2_pct < 90"}),
    )
    .await;

    let t0 = (chrono::Utc::now().timestamp_millis() - 600_000) / 60_000 * 60_000;
    let r = http
        .post(url("/api/ingest"))
        .header("content-type", "application/x-ndjson")
        .body(storm_events(t0))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);

    // One `rule_suspended` system alert says which budget and by how much.
    let deadline = Instant::now() + Duration::from_secs(20);
    let system = loop {
        let alerts = get(&http, url("/api/alerts?limit=2000")).await;
        let found = alerts["alerts"].as_array().unwrap().iter().find(|a| {
            a["rule_name"]
                .as_str()
                .is_some_and(|n| n.starts_with("rule_suspended"))
        });
        if let Some(a) = found {
            break a.clone();
        }
        assert!(Instant::now() < deadline, "never suspended: {alerts}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(system["rule_id"], storm_id.as_str(), "{system}");
    assert_eq!(system["status"], "fired", "{system}");
    assert_eq!(system["values"]["reason"], "alerts_per_minute", "{system}");
    assert_eq!(system["values"]["budget"], 1_000, "{system}");
    assert_eq!(system["values"]["observed"], 1_001, "{system}");
    assert!(
        system["values"]["error"]
            .as_str()
            .unwrap()
            .contains("max_alerts_per_rule_minute"),
        "{system}"
    );

    // The rule's counters stop at the reading that went over.
    let rules = get(&http, url("/api/rules")).await;
    let rule = rules["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == storm_id.as_str())
        .cloned()
        .unwrap();
    assert_eq!(rule["stats"]["alerts_fired"], 1_000, "{rule}");
    assert_eq!(rule["stats"]["events_matched"], 1_001, "{rule}");
    assert_eq!(rule["state"], "suspended", "{rule}");
    // Why and when, in `GET /api/rules`.
    let suspension = &rule["stats"]["suspension"];
    assert_eq!(suspension["reason"], "alerts_per_minute", "{rule}");
    assert_eq!(suspension["budget"], 1_000, "{rule}");
    assert_eq!(suspension["observed"], 1_001, "{rule}");
    // The 1,001st reading's alert went over.
    assert_eq!(suspension["at_event_ms"], t0 + 1_000 * 40, "{rule}");
    assert!(
        suspension["at_processing_ms"].as_i64().unwrap() > 0,
        "{rule}"
    );
    assert!(
        suspension["message"]
            .as_str()
            .unwrap()
            .contains("new version of the rule"),
        "{rule}"
    );

    let metrics = http
        .get(url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("\nwardwatch_rules_suspended_total 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("\nwardwatch_rules_suspended 1\n"),
        "{metrics}"
    );

    // Fresh readings: the suspended rule stays silent, the canary fires.
    let mut body = String::new();
    for i in 0..5i64 {
        body.push_str(
            &json!({"patient_id": "CANARY", "timestamp_unix_ms": t0 + 120_000 + i * 1_000,
                    "heart_rate_bpm": 150.0, "spo2_pct": 85.0, "sequence_number": i})
            .to_string(),
        );
        body.push('\n');
    }
    let r = http
        .post(url("/api/ingest"))
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let alerts = get(&http, url("/api/alerts?limit=2000")).await;
        let list = alerts["alerts"].as_array().unwrap();
        let canary = list.iter().filter(|a| a["rule_name"] == "canary").count();
        if canary == 5 {
            let storm = list
                .iter()
                .filter(|a| a["rule_id"] == storm_id.as_str() && a["status"] == "fired")
                .count();
            // 1,000 before the budget, the system alert; none for CANARY.
            assert_eq!(storm, 1_001, "{alerts}");
            break;
        }
        assert!(Instant::now() < deadline, "canary stopped firing: {canary}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let health = http.get(url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
}
