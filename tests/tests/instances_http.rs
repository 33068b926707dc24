//! Several instances on one data directory, over HTTP (issue 13): what one
//! is told, the others know. Two embedded servers (`[instance] id` 0 and 1,
//! no Kafka) share a directory: a rule created through one runs on the
//! other within a second or two; an alert made by one is in the other's
//! alert history and is acknowledged through it, and the acknowledgement
//! shows on the first; a rule deactivated through one stops on the other;
//! a canary rule fires on both afterwards. A rule that no live instance
//! would run is refused with 409 until one that runs it is up (and is
//! counted in `wardwatch_rules_unplaced` once that one stops), and a
//! second process cannot take an id that is in use.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use wardwatch_tests::Server;

fn config(id: u32, role: &str) -> wardwatch::config::Config {
    use wardwatch::config::InstanceRole;
    let mut config = wardwatch::config::Config::default();
    config.instance.id = Some(id);
    config.instance.role = match role {
        "patient_rules" => InstanceRole::PatientRules,
        "global_rules" => InstanceRole::GlobalRules,
        _ => InstanceRole::All,
    };
    config.instance.rule_watch_interval_ms = 200;
    config
}

fn low_spo2(patient: &str, ts: i64, seq: u32) -> String {
    json!({"hospital_id": "H01", "patient_id": patient, "timestamp_unix_ms": ts, "spo2_pct": 80.0,
           "heart_rate_bpm": 88.0, "source_device": "BEDSIDE", "sequence_number": seq})
    .to_string()
}

async fn create(server: &Server, name: &str, sql: &str) -> reqwest::Response {
    server
        .http
        .post(server.url("/api/rules"))
        .json(&json!({"name": name, "sql": sql, "severity": "high", "cooldown_seconds": 0}))
        .send()
        .await
        .unwrap()
}

/// Polls `check` every 100 ms until it answers `Some`, or fails after `limit`.
async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> (T, Duration)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(v) = check().await {
            return (v, started.elapsed());
        }
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn alerts(server: &Server, query: &str) -> Vec<Value> {
    server.get_json(&format!("/api/alerts?{query}")).await["alerts"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_one_instance_is_told_the_others_know() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let a = Server::start_in(config(0, "all"), Arc::clone(&dir))
        .await
        .expect("instance 0 starts");
    let b = Server::start_in(config(1, "all"), Arc::clone(&dir))
        .await
        .expect("instance 1 starts beside it");
    let now = chrono::Utc::now().timestamp_millis();

    // A rule created through A runs on B.
    let created = create(
        &a,
        "Low SpO2",
        "SELECT patient_id, spo2_pct FROM vitals WHERE spo2_pct < 85",
    )
    .await;
    assert_eq!(created.status(), 201);
    let rule: Value = created.json().await.unwrap();
    let rule_id = rule["id"].as_str().unwrap().to_string();
    let (_, took) = eventually("B lists A's rule", Duration::from_secs(5), || async {
        let rules = b.get_json("/api/rules").await;
        rules["rules"]
            .as_array()?
            .iter()
            .any(|r| r["id"] == rule_id.as_str())
            .then_some(())
    })
    .await;
    eprintln!("rule listed on B after {took:?}");
    // B runs it: a reading sent to B alerts (B's engine), perhaps after
    // its watcher's next look.
    let tries_b = std::sync::atomic::AtomicU32::new(1);
    let (alert, took) = eventually("B alerts with A's rule", Duration::from_secs(5), || async {
        let n = tries_b.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        b.ingest(low_spo2("P-B", now + n as i64 * 1000, n)).await;
        let found = alerts(&b, "patient=P-B&status=fired").await;
        found.into_iter().next()
    })
    .await;
    eprintln!("B alerted after {took:?}");
    let alert_id = alert["id"].as_str().unwrap().to_string();

    // B's alert is in A's history, and acknowledged through A.
    eventually(
        "A's history has B's alert",
        Duration::from_secs(20),
        || async {
            alerts(&a, "patient=P-B&status=fired")
                .await
                .iter()
                .any(|x| x["id"] == alert_id.as_str())
                .then_some(())
        },
    )
    .await;
    let ack = a
        .http
        .post(a.url(&format!("/api/alerts/{alert_id}/ack")))
        .json(&json!({"by": "nurse.kim", "note": "seen on the other screen"}))
        .send()
        .await
        .unwrap();
    assert_eq!(ack.status(), 200, "{}", ack.text().await.unwrap());
    // B shows it acknowledged, and no longer among the unacknowledged.
    eventually(
        "B sees A's acknowledgement",
        Duration::from_secs(5),
        || async {
            let shown = alerts(&b, "patient=P-B&status=fired").await;
            let acked = shown
                .iter()
                .find(|x| x["id"] == alert_id.as_str())
                .is_some_and(|x| x["ack"]["by"] == "nurse.kim");
            let open = alerts(&b, "patient=P-B&status=fired&acknowledged=false").await;
            (acked && !open.iter().any(|x| x["id"] == alert_id.as_str())).then_some(())
        },
    )
    .await;

    // Deactivated through B: A stops running it.
    let off = b
        .http
        .delete(b.url(&format!("/api/rules/{rule_id}?reason=replaced")))
        .send()
        .await
        .unwrap();
    assert!(off.status().is_success(), "{}", off.status());
    eventually("A stops the rule", Duration::from_secs(5), || async {
        let ops = a.get_json("/api/ops").await;
        (!ops["rules"]
            .as_array()?
            .iter()
            .any(|r| r["id"] == rule_id.as_str()))
        .then_some(())
    })
    .await;
    a.ingest(low_spo2("P-A", now, 1)).await;

    // A canary created through B fires on A (and the stopped rule did not).
    let canary = create(
        &b,
        "Canary",
        "SELECT patient_id, heart_rate_bpm FROM vitals WHERE heart_rate_bpm > 0",
    )
    .await;
    assert_eq!(canary.status(), 201);
    let canary: Value = canary.json().await.unwrap();
    let canary_id = canary["id"].as_str().unwrap().to_string();
    let tries = std::sync::atomic::AtomicU32::new(1);
    eventually("the canary fires on A", Duration::from_secs(10), || async {
        // A new reading each try: a resent one is a duplicate.
        let n = tries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        a.ingest(low_spo2("P-C", now + n as i64 * 1000, n)).await;
        alerts(&a, "patient=P-C&status=fired")
            .await
            .iter()
            .any(|x| x["rule_id"] == canary_id.as_str())
            .then_some(())
    })
    .await;
    let stopped: Vec<Value> = alerts(&a, "patient=P-A")
        .await
        .into_iter()
        .filter(|x| x["rule_id"] == rule_id.as_str())
        .collect();
    assert!(
        stopped.is_empty(),
        "a deactivated rule alerted on A: {stopped:?}"
    );

    // Both instances are listed, live.
    let ops = a.get_json("/api/ops").await;
    let ids: Vec<i64> = ops["instances"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["live"] == true)
        .map(|i| i["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, [0, 1], "{ops}");

    // A third process cannot take id 1, nor run without an id beside them.
    let taken = Server::start_in(config(1, "all"), Arc::clone(&dir)).await;
    let e = format!("{:#}", taken.err().expect("a second id 1 is refused"));
    assert!(e.contains("wardwatch-i1.lock"), "{e}");
    let single = Server::start_in(wardwatch::config::Config::default(), Arc::clone(&dir)).await;
    let e = format!("{:#}", single.err().expect("a single server is refused"));
    assert!(e.contains("[instance] id"), "{e}");

    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_no_live_instance_would_run_is_refused_until_one_is_up() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let patients = Server::start_in(config(0, "patient_rules"), Arc::clone(&dir))
        .await
        .unwrap();
    let by_hospital = "SELECT hospital_id, COUNT(*) AS n FROM vitals \
                       GROUP BY TUMBLE(event_time, INTERVAL '1' MINUTE), hospital_id HAVING COUNT(*) > 100";
    let refused = create(&patients, "Ward load", by_hospital).await;
    assert_eq!(refused.status(), 409);
    let body: Value = refused.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("global_rules"),
        "{body}"
    );
    // A patient rule is fine here.
    let ok = create(
        &patients,
        "Low SpO2",
        "SELECT patient_id, spo2_pct FROM vitals WHERE spo2_pct < 85",
    )
    .await;
    assert_eq!(ok.status(), 201);
    // With an instance up that runs every rule, the same request is taken,
    // and that instance (not this one) runs it.
    let all = Server::start_in(config(1, "all"), Arc::clone(&dir))
        .await
        .unwrap();
    let (created, _) = eventually(
        "taken once instance 1 announced",
        Duration::from_secs(10),
        || async {
            let r = create(&patients, "Ward load", by_hospital).await;
            (r.status() == 201).then_some(r)
        },
    )
    .await;
    let rule: Value = created.json().await.unwrap();
    let id = rule["id"].as_str().unwrap().to_string();
    let runs = |ops: Value| {
        ops["rules"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["id"] == id.as_str())
    };
    eventually("instance 1 runs it", Duration::from_secs(5), || async {
        runs(all.get_json("/api/ops").await).then_some(())
    })
    .await;
    assert!(
        !runs(patients.get_json("/api/ops").await),
        "a patient_rules instance must not run a rule grouped by hospital"
    );
    // Instance 1 stops (its announcement goes with it): the rule runs
    // nowhere now, and the patient instance says so.
    all.stop().await.unwrap();
    eventually(
        "the unplaced rule is counted",
        Duration::from_secs(15),
        || async {
            let m = patients.metrics().await.ok()?;
            (m.get("wardwatch_rules_unplaced").copied() == Some(1.0)).then_some(())
        },
    )
    .await;
    patients.stop().await.unwrap();
}
