//! The routes the web UI's worklist, rule workshop and patient trend read,
//! over real HTTP against a server fed through `/api/ingest`: deactivating
//! a rule with a reason and reactivating it, the worklist's "not
//! acknowledged" filter, a patient's readings around an alert, and a rule's
//! alert rate. Each answer is checked against what was sent or against
//! another route's answer, never against numbers written here.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use wardwatch_tests::Server;

/// 2026-01-01T00:00:00Z: the server is told to keep a long retention so
/// these dates stay acceptable.
const T0: i64 = 1_767_225_600_000;
const MINUTE: i64 = 60_000;

fn config() -> wardwatch::config::Config {
    let mut config = wardwatch::config::Config::default();
    config.archive.retention_days = 36_500;
    config
}

fn reading(patient: &str, ts: i64, seq: u32, spo2: f64, hr: f64) -> String {
    json!({"hospital_id": "H01", "patient_id": patient, "timestamp_unix_ms": ts, "spo2_pct": spo2,
           "heart_rate_bpm": hr, "source_device": "BEDSIDE", "sequence_number": seq})
    .to_string()
}

async fn create(server: &Server, name: &str, sql: &str, cooldown_seconds: u64) -> String {
    let created = server
        .http
        .post(server.url("/api/rules"))
        .json(&json!({"name": name, "sql": sql, "severity": "high", "cooldown_seconds": cooldown_seconds}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    created.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// GETs `path` until `done` holds for its JSON answer (or 20 s pass).
async fn poll(server: &Server, path: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let answer = server.get_json(path).await;
        if done(&answer) || Instant::now() > deadline {
            return answer;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn ids(list: &Value) -> Vec<String> {
    list["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deactivating_keeps_the_reason_and_reactivating_runs_the_rule_again() {
    let server = Server::start(config()).await.expect("server starts");
    let id = create(
        &server,
        "Low SpO2",
        "SELECT patient_id, spo2_pct FROM vitals WHERE spo2_pct < 85",
        0,
    )
    .await;
    let path = format!("/api/rules/{id}");

    // Over the limit: refused, and the rule keeps running.
    let long = "x".repeat(501);
    let refused = server
        .http
        .delete(server.url(&format!("{path}?reason={long}")))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 400);
    let message = refused.json::<Value>().await.unwrap()["error"]["message"].clone();
    assert!(
        message
            .as_str()
            .unwrap()
            .contains("max_deactivation_reason_chars"),
        "{message}"
    );
    assert_eq!(server.get_json(&path).await["active"], true);

    let off: Value = server
        .http
        .delete(server.url(&format!("{path}?reason=too%20noisy%20on%20ward%203")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(off["active"], false);
    assert_eq!(off["state"], "inactive");
    assert_eq!(off["deactivation"]["reason"], "too noisy on ward 3");
    assert_eq!(off["deactivation"]["by"], "anonymous");
    assert_eq!(
        server.get_json(&path).await["deactivation"],
        off["deactivation"]
    );

    // Deactivated: a matching reading alerts nothing.
    server.ingest(reading("P1", T0, 1, 80.0, 90.0)).await;
    // A second rule proves the reading was processed.
    let witness = create(
        &server,
        "Witness",
        "SELECT patient_id FROM vitals WHERE heart_rate_bpm > 0",
        0,
    )
    .await;
    server
        .ingest(reading("P1", T0 + 1_000, 2, 80.0, 90.0))
        .await;
    let witnessed = poll(&server, &format!("/api/alerts?rule={witness}"), |a| {
        !ids(a).is_empty()
    })
    .await;
    assert_eq!(ids(&witnessed).len(), 1);
    assert!(ids(&server.get_json(&format!("/api/alerts?rule={id}")).await).is_empty());

    let on = server
        .http
        .post(server.url(&format!("{path}/reactivate")))
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(on.status(), 200);
    let on: Value = on.json().await.unwrap();
    assert_eq!(on["active"], true);
    assert_eq!(on["deactivation"], Value::Null);
    assert_eq!(on["version"], 1, "the same version runs again");
    server
        .ingest(reading("P2", T0 + 2_000, 3, 80.0, 90.0))
        .await;
    let fired = poll(&server, &format!("/api/alerts?rule={id}"), |a| {
        !ids(a).is_empty()
    })
    .await;
    assert_eq!(fired["alerts"][0]["key"]["patient_id"], "P2");

    // Both steps are in the audit log, the reason with the deactivation.
    let audit: Value = server
        .http
        .post(server.url("/api/query"))
        .json(&json!({"sql": "SELECT action, details FROM audit_log WHERE action LIKE 'rule_%activated' ORDER BY seq"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let rows = audit["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{audit}");
    assert_eq!(rows[0]["action"], "rule_deactivated");
    assert!(rows[0]["details"]
        .to_string()
        .contains("too noisy on ward 3"));
    assert_eq!(rows[1]["action"], "rule_reactivated");
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worklist_leaves_out_acknowledged_alerts() {
    let server = Server::start(config()).await.expect("server starts");
    let id = create(
        &server,
        "Low SpO2",
        "SELECT patient_id, spo2_pct FROM vitals WHERE spo2_pct < 85",
        0,
    )
    .await;
    let body: String = (0..6)
        .map(|i| reading(&format!("P{i}"), T0 + i * 1_000, i as u32, 80.0, 90.0) + "\n")
        .collect();
    server.ingest(body).await;
    let all = poll(&server, &format!("/api/alerts?rule={id}"), |a| {
        ids(a).len() == 6
    })
    .await;
    let all = ids(&all);
    assert_eq!(all.len(), 6);
    // Acknowledge the newest and a middle one.
    for acked in [&all[0], &all[3]] {
        let r = server
            .http
            .post(server.url(&format!("/api/alerts/{acked}/ack")))
            .json(&json!({"by": "nurse", "note": "seen"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let open = ids(&server
        .get_json(&format!("/api/alerts?rule={id}&acknowledged=false&limit=3"))
        .await);
    assert_eq!(open, vec![all[1].clone(), all[2].clone(), all[4].clone()]);
    let done = ids(&server
        .get_json(&format!("/api/alerts?rule={id}&acknowledged=true"))
        .await);
    assert_eq!(done, vec![all[0].clone(), all[3].clone()]);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patients_readings_and_a_rules_alert_rate_match_what_was_sent() {
    let server = Server::start(config()).await.expect("server starts");
    let id = create(
        &server,
        "Tachycardia",
        "SELECT patient_id, heart_rate_bpm FROM vitals WHERE heart_rate_bpm > 120",
        120,
    )
    .await;
    // Two patients, a reading every 20 s for an hour; P1 is tachycardic in
    // some stretches, so the rule fires and its cooldown suppresses repeats.
    let mut sent: Vec<(i64, f64, f64)> = Vec::new();
    let mut body = String::new();
    for i in 0..180i64 {
        let t = T0 + i * 20_000;
        let hr = if (i / 20) % 3 == 0 {
            130.0 + (i % 7) as f64
        } else {
            80.0 + (i % 5) as f64
        };
        let spo2 = 95.0 + (i % 4) as f64 * 0.5;
        sent.push((t, hr, spo2));
        body.push_str(&reading("P1", t, i as u32, spo2, hr));
        body.push('\n');
        body.push_str(&reading("P2", t + 1, 10_000 + i as u32, 97.0, 70.0));
        body.push('\n');
    }
    server.ingest(body).await;

    // The trend around a stretch: P1's readings of [T0 + 10 min, T0 + 30 min).
    let (since, until) = (T0 + 10 * MINUTE, T0 + 30 * MINUTE);
    let path = format!("/api/patients/P1/vitals?since={since}&until={until}");
    let want: Vec<&(i64, f64, f64)> = sent
        .iter()
        .filter(|(t, _, _)| (since..until).contains(t))
        .collect();
    let got = poll(&server, &path, |v| {
        v["readings"]
            .as_array()
            .is_some_and(|r| r.len() == want.len())
    })
    .await;
    let readings = got["readings"].as_array().unwrap();
    assert_eq!(readings.len(), want.len(), "{got}");
    assert_eq!(got["truncated"], false);
    for (r, (t, hr, spo2)) in readings.iter().zip(&want) {
        assert_eq!(r["event_time_ms"], *t);
        assert_eq!(r["heart_rate_bpm"], *hr);
        assert_eq!(r["spo2_pct"], *spo2);
        assert_eq!(r["hospital_id"], "H01");
        assert_eq!(r["respiration_rate"], Value::Null);
    }
    // Refusals name the bound.
    for bad in [
        format!("/api/patients/P1/vitals?since={until}&until={since}"),
        format!(
            "/api/patients/P1/vitals?since={T0}&until={}",
            T0 + 25 * 60 * MINUTE
        ),
    ] {
        let r = server.http.get(server.url(&bad)).send().await.unwrap();
        assert_eq!(r.status(), 400, "{bad}");
    }

    // The alert rate per 10 minutes equals the alert list counted by hand.
    let listed = poll(
        &server,
        &format!("/api/alerts?rule={id}&limit=10000"),
        |a| ids(a).len() >= 60,
    )
    .await;
    let mut by_bucket: BTreeMap<i64, (u64, u64)> = BTreeMap::new();
    for a in listed["alerts"].as_array().unwrap() {
        let bucket = a["event_time_ms"].as_i64().unwrap() / (10 * MINUTE) * (10 * MINUTE);
        let entry = by_bucket.entry(bucket).or_default();
        match a["status"].as_str().unwrap() {
            "fired" => entry.0 += 1,
            _ => entry.1 += 1,
        }
    }
    let rate = server
        .get_json(&format!(
            "/api/rules/{id}/alert-rate?since={T0}&until={}&bucket_ms={}",
            T0 + 60 * MINUTE,
            10 * MINUTE
        ))
        .await;
    let got: BTreeMap<i64, (u64, u64)> = rate["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["start_ms"].as_i64().unwrap(),
                (
                    b["fired"].as_u64().unwrap(),
                    b["suppressed"].as_u64().unwrap(),
                ),
            )
        })
        .collect();
    assert_eq!(got, by_bucket);
    assert!(got.values().any(|(f, s)| *f > 0 && *s > 0), "{rate}");
    let r = server
        .http
        .get(server.url(&format!("/api/rules/{id}/alert-rate?bucket_ms=1000")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    // The engine holds both patients (and has forgotten none: the day
    // has not passed in event time).
    let ops = poll(&server, "/api/ops", |o| o["engine"]["patients_held"] == 2).await;
    assert_eq!(ops["engine"]["patients_held"], 2, "{ops}");
    assert_eq!(ops["engine"]["patients_forgotten"], 0);

    // Reading a patient's vitals is a read of patient data: audited.
    let audit: Value = server
        .http
        .post(server.url("/api/query"))
        .json(&json!({"sql": "SELECT details FROM audit_log WHERE action = 'read_patient_vitals'"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        audit["rows"][0]["details"].to_string().contains("P1"),
        "{audit}"
    );
    server.stop().await.unwrap();
}
