//! Issue 14: onboarding a hospital by API, live without a restart.
//!
//! `POST /api/hospitals` with a rule template: the hospital's first alert
//! arrives within a minute of the request (timed here), from a rule limited
//! to that hospital (another hospital's identical reading does not fire
//! it); the hospital is listed, changed and retired (its rule stops), each
//! step in the audit log; bad requests get 4xx; a canary rule fires
//! throughout.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use wardwatch::config::Config;
use wardwatch_tests::{recent_ms, Server};

async fn send(
    server: &Server,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = server.http.request(method, server.url(path));
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn reading(patient: &str, hospital: &str, seq: u32, spo2: f64) -> String {
    json!({"patient_id": patient, "hospital_id": hospital, "source_device": "BEDSIDE",
           "timestamp_unix_ms": recent_ms(1000, 20) + i64::from(seq), "sequence_number": seq,
           "spo2_pct": spo2})
    .to_string()
}

/// Waits until `GET /api/alerts?{query}` lists at least `n` alerts.
async fn alerts_eventually(server: &Server, query: &str, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let list = server.get_json(&format!("/api/alerts?{query}")).await;
        let alerts = list["alerts"].as_array().cloned().unwrap_or_default();
        if alerts.len() >= n {
            return alerts;
        }
        assert!(
            Instant::now() < deadline,
            "fewer than {n} alerts for {query}: {list}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hospital_onboarded_by_api_alerts_within_a_minute_and_can_be_retired() {
    let server = Server::start(Config::default())
        .await
        .expect("server starts");
    // A canary for every hospital: heart rate, not SpO2.
    let (status, canary) = send(
        &server,
        reqwest::Method::POST,
        "/api/rules",
        Some(json!({"name": "canary", "sql": "SELECT patient_id FROM vitals WHERE heart_rate_bpm > 190"})),
    )
    .await;
    assert_eq!(status, 201, "{canary}");
    let canary_id = canary["id"].as_str().unwrap().to_string();

    let (status, templates) =
        send(&server, reqwest::Method::GET, "/api/rule-templates", None).await;
    assert_eq!(status, 200);
    let names: Vec<&str> = templates["templates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["template"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"critical-spo2-reading"), "{names:?}");

    // Refusals first: nothing is stored by them.
    for (body, want) in [
        (json!({"id": "a/b", "name": "x", "time_zone": "UTC"}), 400),
        (json!({"id": "H-NEW", "name": "", "time_zone": "UTC"}), 400),
        (
            json!({"id": "H-NEW", "name": "x", "time_zone": "Mars; DROP"}),
            400,
        ),
        (
            json!({"id": "H-NEW", "name": "x", "time_zone": "UTC", "templates": ["no-such"]}),
            400,
        ),
        (
            json!({"id": "H-NEW", "name": "x", "time_zone": "UTC", "topic": "h-new-vitals"}),
            400,
        ),
    ] {
        let (status, answer) = send(
            &server,
            reqwest::Method::POST,
            "/api/hospitals",
            Some(body.clone()),
        )
        .await;
        assert_eq!(status, want, "{body}: {answer}");
        assert!(
            answer["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{answer}"
        );
    }
    let (_, listed) = send(&server, reqwest::Method::GET, "/api/hospitals", None).await;
    assert_eq!(
        listed["hospitals"],
        json!([]),
        "a refused request stored something"
    );

    // Onboard, then its first reading: time it from the request.
    let asked = Instant::now();
    let (status, hospital) = send(
        &server,
        reqwest::Method::POST,
        "/api/hospitals",
        Some(
            json!({"id": "H-NEW", "name": "St. Elsewhere", "time_zone": "Europe/Amsterdam",
                    "templates": ["critical-spo2-reading"]}),
        ),
    )
    .await;
    assert_eq!(status, 201, "{hospital}");
    let rule_id = hospital["rule_ids"][0]
        .as_str()
        .expect("a rule")
        .to_string();
    let ndjson = [
        reading("P-other", "H-OTHER", 1, 80.0),
        reading("P-new", "H-NEW", 1, 80.0),
    ]
    .join("\n");
    server.ingest(ndjson).await;
    let alerts = alerts_eventually(&server, &format!("rule={rule_id}"), 1).await;
    let first_alert = asked.elapsed();
    assert!(first_alert < Duration::from_secs(60), "{first_alert:?}");
    eprintln!("onboarding request to first alert: {first_alert:?}");
    assert_eq!(
        alerts.len(),
        1,
        "only H-NEW's reading fires its rule: {alerts:?}"
    );
    assert_eq!(alerts[0]["hospital_id"], "H-NEW");
    assert_eq!(alerts[0]["key"]["patient_id"], "P-new");
    let (status, _) = send(
        &server,
        reqwest::Method::POST,
        "/api/hospitals",
        Some(json!({"id": "H-NEW", "name": "again", "time_zone": "UTC"})),
    )
    .await;
    assert_eq!(status, 409);

    // Changed, then retired: its rule stops, the canary goes on.
    let (status, changed) = send(
        &server,
        reqwest::Method::PUT,
        "/api/hospitals/H-NEW",
        Some(json!({"name": "St. Elsewhere East"})),
    )
    .await;
    assert_eq!(
        (status, changed["name"].as_str()),
        (200, Some("St. Elsewhere East"))
    );
    let (status, retired) = send(
        &server,
        reqwest::Method::DELETE,
        "/api/hospitals/H-NEW",
        None,
    )
    .await;
    assert_eq!(status, 200, "{retired}");
    assert!(retired["retired_at_ms"].is_i64());
    let rule = server.get_json(&format!("/api/rules/{rule_id}")).await;
    assert_eq!(rule["active"], false, "{rule}");
    // Its rules stay stopped: reactivating one is refused.
    let (status, refused) = send(
        &server,
        reqwest::Method::POST,
        &format!("/api/rules/{rule_id}/reactivate"),
        Some(json!({})),
    )
    .await;
    assert_eq!(status, 400, "{refused}");
    assert!(
        refused["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("retired")),
        "{refused}"
    );
    let after = [
        reading("P-new", "H-NEW", 2, 79.0),
        json!({"patient_id": "P-canary", "hospital_id": "H-NEW", "source_device": "BEDSIDE",
               "timestamp_unix_ms": recent_ms(1000, 20) + 5, "sequence_number": 1,
               "heart_rate_bpm": 199.0})
        .to_string(),
    ]
    .join("\n");
    server.ingest(after).await;
    // Events are evaluated in order: once the canary fired, the reading
    // before it has been seen too.
    alerts_eventually(&server, &format!("rule={canary_id}"), 1).await;
    let after_retirement = server
        .get_json(&format!("/api/alerts?rule={rule_id}"))
        .await;
    assert_eq!(
        after_retirement["alerts"].as_array().map(Vec::len),
        Some(1),
        "a retired hospital's rule fired: {after_retirement}"
    );

    let (_, log) = send(
        &server,
        reqwest::Method::POST,
        "/api/query",
        Some(json!({"sql": "SELECT action FROM audit_log WHERE action LIKE 'hospital_%' ORDER BY seq"})),
    )
    .await;
    let actions: Vec<&str> = log["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        ["hospital_onboarded", "hospital_changed", "hospital_retired"],
        "{log}"
    );
}
