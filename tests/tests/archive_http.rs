//! The archive end to end: events ingested over HTTP land once each in
//! Parquet files laid out by event date and hour, are counted the same by
//! `POST /api/query` (before and after the flush) and by DuckDB reading the
//! files directly, and alerts are queryable with SQL too.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use wardwatch_tests::Server;

const T0: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z

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
           "heart_rate_bpm": 80.0, "source_device": "BEDSIDE", "sequence_number": seq})
    .to_string()
}

async fn sql(server: &Server, query: &str) -> (u16, Value) {
    let r = server
        .http
        .post(server.url("/api/query"))
        .json(&json!({"sql": query}))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

fn parquet_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![];
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "parquet") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingested_events_are_archived_once_and_queryable_with_sql() {
    let mut config = config();
    config.archive.flush_interval_ms = 300;
    let server = Server::start(config).await.expect("server starts");
    let created = server
        .http
        .post(server.url("/api/rules"))
        .json(&json!({"name": "Low SpO2", "sql": "SELECT patient_id, spo2_pct FROM vitals WHERE spo2_pct < 85", "cooldown_seconds": 300}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);

    // Three hours of event time for 4 patients, one reading a minute, some low.
    let mut body = String::new();
    let mut n = 0;
    for m in 0..180i64 {
        for (p, patient) in ["A", "B", "C", "D"].iter().enumerate() {
            let spo2 = if p == 0 && m % 30 < 3 { 82.0 } else { 97.0 };
            body.push_str(&reading(
                patient,
                T0 + m * 60_000 + p as i64 * 7,
                m as u32,
                spo2,
            ));
            body.push('\n');
            n += 1;
        }
    }
    body.push_str("{\"patient_id\": \"bad\"}\n");
    let r: Value = server
        .http
        .post(server.url("/api/ingest"))
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r, json!({"accepted": n, "rejected": 1}));

    // Visible at once, before any file is written.
    let (status, result) = sql(&server, "SELECT count(*) AS n FROM vitals").await;
    assert_eq!(status, 200, "{result}");
    assert_eq!(result["rows"][0]["n"], n, "{result}");

    // After the flush interval: files by event date and hour, each event once.
    let deadline = Instant::now() + Duration::from_secs(20);
    let files = loop {
        let files = parquet_files(&server.data_dir.path().join("vitals"));
        if files.len() >= 3 || Instant::now() > deadline {
            break files;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let hours: std::collections::BTreeSet<String> = files
        .iter()
        .map(|f| {
            f.parent()
                .unwrap()
                .strip_prefix(server.data_dir.path())
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    assert_eq!(
        hours,
        [
            "vitals/date=2026-01-01/hour=00",
            "vitals/date=2026-01-01/hour=01",
            "vitals/date=2026-01-01/hour=02"
        ]
        .into_iter()
        .map(String::from)
        .collect(),
        "{files:?}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, result) = sql(
        &server,
        "SELECT count(*) AS n, count(DISTINCT patient_id) AS p FROM vitals",
    )
    .await;
    assert_eq!(
        result["rows"][0]["n"], n,
        "no event lost or counted twice after the flush: {result}"
    );
    assert_eq!(result["rows"][0]["p"], 4);
    let (_, hour) = sql(
        &server,
        "SELECT count(*) AS n FROM vitals WHERE event_time >= '2026-01-01T01:00:00Z' AND event_time < '2026-01-01T02:00:00Z'",
    )
    .await;
    assert_eq!(hour["rows"][0]["n"], 240, "{hour}");

    // Another tool reads the same files and counts the same rows.
    assert_eq!(
        wardwatch_tests::duckdb_first_row(server.data_dir.path(), "SELECT count(*) FROM {vitals}"),
        format!("({n},)")
    );

    // CSV and Arrow IPC answers.
    let csv = server
        .http
        .post(server.url("/api/query"))
        .header("accept", "text/csv")
        .json(&json!({"sql": "SELECT patient_id, count(*) AS n FROM vitals GROUP BY patient_id ORDER BY patient_id"}))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        csv.lines().collect::<Vec<_>>(),
        vec!["patient_id,n", "A,180", "B,180", "C,180", "D,180"]
    );
    let ipc = server
        .http
        .post(server.url("/api/query"))
        .header("accept", "application/vnd.apache.arrow.stream")
        .json(&json!({"sql": "SELECT patient_id FROM vitals WHERE spo2_pct < 85"}))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let reader =
        arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(ipc.to_vec()), None)
            .unwrap();
    let rows: usize = reader.map(|b| b.unwrap().num_rows()).sum();
    assert_eq!(rows, 18);

    // Alerts are a table too, fired and suppressed alike.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let (_, alerts) = sql(
        &server,
        "SELECT status, count(*) AS n FROM alerts GROUP BY status ORDER BY status",
    )
    .await;
    let rest: Value = server
        .http
        .get(server.url("/api/alerts?limit=1000"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let rest_fired = rest["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["status"] == "fired")
        .count();
    let rest_suppressed = rest["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["status"] == "suppressed")
        .count();
    assert_eq!(
        alerts["rows"],
        json!([{"status": "fired", "n": rest_fired}, {"status": "suppressed", "n": rest_suppressed}]),
        "{alerts}"
    );
    // Six low episodes of three readings: the first alerts, two are suppressed.
    assert_eq!((rest_fired, rest_suppressed), (6, 12));

    // Writes and file-reading functions are refused with a clear error.
    for refused in [
        "DROP TABLE vitals",
        "INSERT INTO vitals SELECT * FROM vitals",
        "SELECT * FROM read_parquet('/etc/passwd')",
    ] {
        let (status, body) = sql(&server, refused).await;
        assert_eq!(status, 400, "{refused}: {body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{body}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_of_an_unchanged_rule_reproduces_exactly_the_fired_ids_and_backtests_a_draft() {
    let mut config = config();
    config.archive.flush_interval_ms = 200;
    let server = Server::start(config).await.expect("server starts");
    let rule: Value = server
        .http
        .post(server.url("/api/rules"))
        .json(&json!({"name": "Hypoxemia", "cooldown_seconds": 600, "sql":
            "SELECT patient_id, AVG(spo2_pct) AS avg_spo2, COUNT(*) AS n FROM vitals
             GROUP BY TUMBLE(event_time, INTERVAL '5' MINUTE), patient_id HAVING AVG(spo2_pct) < 90"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let rule_id = rule["id"].as_str().unwrap().to_string();

    // Two hours, 3 patients at 0.1 Hz; B desaturates for 40 minutes.
    let mut body = String::new();
    for s in (0..7200i64).step_by(10) {
        for patient in ["A", "B", "C"] {
            let spo2 = if patient == "B" && (1800..4200).contains(&s) {
                87.5
            } else {
                97.0
            };
            body.push_str(&reading(patient, T0 + s * 1000, s as u32, spo2));
            body.push('\n');
        }
    }
    // A trailing reading moves the watermark past the last window.
    body.push_str(&reading("C", T0 + 7_300_000, 9_999, 97.0));
    body.push('\n');
    server
        .http
        .post(server.url("/api/ingest"))
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let live_fired: Vec<Value> = loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (_, r) = sql(&server, &format!("SELECT id FROM alerts WHERE rule_id = '{rule_id}' AND status = 'fired' ORDER BY id")).await;
        let rows = r["rows"].as_array().cloned().unwrap_or_default();
        if rows.len() >= 4 || Instant::now() > deadline {
            break rows;
        }
    };
    // 40 low minutes = 8 windows; with a 10-minute cooldown every other fires.
    assert_eq!(live_fired.len(), 4, "{live_fired:?}");

    let replay: Value = server
        .http
        .post(server.url("/api/replay"))
        .json(&json!({"rule_id": rule_id, "from_ms": T0, "to_ms": T0 + 7_200_000, "audit": true}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(replay["events"], 2160, "{replay}");
    let replay_fired: Vec<&str> = replay["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["status"] == "fired")
        .map(|a| a["id"].as_str().unwrap())
        .collect();
    let mut live_ids: Vec<&str> = live_fired
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    live_ids.sort();
    let mut sorted = replay_fired.clone();
    sorted.sort();
    assert_eq!(sorted, live_ids, "replay reproduces exactly the fired ids");
    assert_eq!(replay["audit"]["clean"], true, "{}", replay["audit"]);
    assert_eq!(replay["audit"]["both"].as_array().unwrap().len(), 4);

    // Backtest a stricter draft over the same hours: never activated.
    let backtest: Value = server
        .http
        .post(server.url("/api/replay"))
        .json(&json!({"sql": "SELECT patient_id, AVG(spo2_pct) AS a FROM vitals GROUP BY TUMBLE(event_time, INTERVAL '5' MINUTE), patient_id HAVING AVG(spo2_pct) < 88",
                      "cooldown_seconds": 0, "from_ms": T0, "to_ms": T0 + 7_200_000}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        backtest["alerts"].as_array().unwrap().len(),
        8,
        "{backtest}"
    );
    let bad = server
        .http
        .post(server.url("/api/replay"))
        .json(&json!({"sql": "SELECT nope FROM vitals", "from_ms": T0, "to_ms": T0 + 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_versions_and_the_audit_log_are_tables_too() {
    let server = Server::start(config()).await.expect("server starts");
    let rule: Value = server
        .http
        .post(server.url("/api/rules"))
        .json(&json!({"name": "Low SpO2", "sql": "SELECT patient_id, spo2_pct FROM vitals WHERE spo2_pct < 85"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = rule["id"].as_str().unwrap();
    let updated = server
        .http
        .put(server.url(&format!("/api/rules/{id}")))
        .json(&json!({"name": "Low SpO2", "sql": "SELECT patient_id, spo2_pct FROM vitals WHERE spo2_pct < 88", "severity": "high"}))
        .send()
        .await
        .unwrap();
    assert_eq!(updated.status(), 200);
    server
        .http
        .delete(server.url(&format!("/api/rules/{id}")))
        .send()
        .await
        .unwrap();

    let (_, rules) = sql(&server, "SELECT id, active, version, severity FROM rules").await;
    assert_eq!(
        rules["rows"],
        json!([{"id": id, "active": false, "version": 2, "severity": "high"}]),
        "{rules}"
    );
    let (_, versions) = sql(
        &server,
        "SELECT version, sql FROM rule_versions ORDER BY version",
    )
    .await;
    assert_eq!(versions["rows"].as_array().unwrap().len(), 2, "{versions}");
    assert!(
        versions["rows"][0]["sql"]
            .as_str()
            .unwrap()
            .contains("< 85"),
        "an old version is never overwritten"
    );
    // Changes only: reads (these queries among them) are audited too.
    let (_, audit) = sql(
        &server,
        "SELECT action FROM audit_log WHERE action LIKE 'rule_%' ORDER BY seq",
    )
    .await;
    let actions: Vec<&str> = audit["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        vec!["rule_created", "rule_updated", "rule_deactivated"],
        "{audit}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_results_stream_and_oversized_ones_are_refused_or_marked() {
    let mut config = config();
    config.archive.query_max_rows = 20_000;
    let server = Server::start(config).await.expect("server starts");
    let mut body = String::new();
    for i in 0..25_000i64 {
        body.push_str(&reading(
            &format!("P{}", i % 50),
            T0 + i * 100,
            i as u32,
            97.0,
        ));
        body.push('\n');
    }
    let r: Value = server
        .http
        .post(server.url("/api/ingest"))
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["accepted"], 25_000);

    // Within the limit but past the buffering threshold: streamed, complete.
    let (status, full) = sql(
        &server,
        "SELECT sequence_number FROM vitals WHERE sequence_number < 15000",
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(full["rows"].as_array().unwrap().len(), 15_000);
    assert!(full.get("truncated").is_none());
    let csv = server
        .http
        .post(server.url("/api/query"))
        .header("accept", "text/csv")
        .json(&json!({"sql": "SELECT patient_id, sequence_number FROM vitals WHERE sequence_number < 15000"}))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(csv.lines().count(), 15_001, "header and every row");

    // Past the row limit while streaming: marked, never silently short.
    let (status, cut) = sql(&server, "SELECT sequence_number FROM vitals").await;
    assert_eq!(status, 200);
    assert_eq!(cut["rows"].as_array().unwrap().len(), 20_000);
    assert_eq!(cut["truncated"], true);
    assert!(
        cut["error"].as_str().unwrap().contains("20000"),
        "{}",
        cut["error"]
    );
    let arrow_cut = match server
        .http
        .post(server.url("/api/query"))
        .header("accept", "application/vnd.apache.arrow.stream")
        .json(&json!({"sql": "SELECT sequence_number FROM vitals"}))
        .send()
        .await
    {
        // The cut can reach the client before or after the headers.
        Ok(response) => response.bytes().await.map(|_| ()),
        Err(e) => Err(e),
    };
    assert!(
        arrow_cut.is_err(),
        "an Arrow answer past the limit is cut off with an error"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_result_over_the_row_limit_is_refused() {
    let mut config = config();
    config.archive.query_max_rows = 100;
    let server = Server::start(config).await.expect("server starts");
    let mut body = String::new();
    for i in 0..500i64 {
        body.push_str(&reading("P1", T0 + i * 1000, i as u32, 97.0));
        body.push('\n');
    }
    server
        .http
        .post(server.url("/api/ingest"))
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .await
        .unwrap();
    let (status, refused) = sql(&server, "SELECT * FROM vitals").await;
    assert_eq!(status, 413, "{refused}");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("100"),
        "{refused}"
    );
    let (status, ok) = sql(&server, "SELECT count(*) AS n FROM vitals").await;
    assert_eq!((status, ok["rows"][0]["n"].clone()), (200, json!(500)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_background_replay_reports_progress_and_gives_the_same_result() {
    let server = Server::start(config()).await.expect("server starts");
    let mut body = String::new();
    for s in (0..3600i64).step_by(5) {
        body.push_str(&reading(
            "A",
            T0 + s * 1000,
            s as u32,
            if (600..1200).contains(&s) { 84.0 } else { 97.0 },
        ));
        body.push('\n');
    }
    server
        .http
        .post(server.url("/api/ingest"))
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .await
        .unwrap();
    let draft = json!({"sql": "SELECT patient_id, MIN(spo2_pct) AS lo FROM vitals GROUP BY TUMBLE(event_time, INTERVAL '1' MINUTE), patient_id HAVING MIN(spo2_pct) < 85",
                       "cooldown_seconds": 0, "from_ms": T0, "to_ms": T0 + 3_600_000});
    let sync: Value = server
        .http
        .post(server.url("/api/replay"))
        .json(&draft)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(sync["alerts"].as_array().unwrap().len(), 10, "{sync}");

    let mut background = draft.clone();
    background["async"] = json!(true);
    let started = server
        .http
        .post(server.url("/api/replay"))
        .json(&background)
        .send()
        .await
        .unwrap();
    assert_eq!(started.status(), 202);
    let job: Value = started.json().await.unwrap();
    let id = job["job"].as_str().unwrap().to_string();
    assert!(
        ["running", "done"].contains(&job["state"].as_str().unwrap()),
        "{job}"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let done = loop {
        let status: Value = server
            .http
            .get(server.url(&format!("/api/replay/{id}")))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if status["state"] != "running" || Instant::now() > deadline {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(done["state"], "done", "{done}");
    assert_eq!(done["events"], 720);
    assert_eq!(done["fraction"], 1.0);
    // Same alerts (ids, windows, values); only the processing time differs.
    let identity = |v: &Value| -> Vec<(Value, Value, Value)> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|a| {
                (
                    a["id"].clone(),
                    a["window_start_ms"].clone(),
                    a["values"].clone(),
                )
            })
            .collect()
    };
    assert_eq!(
        identity(&done["result"]["alerts"]),
        identity(&sync["alerts"])
    );
    let missing = server
        .http
        .delete(server.url("/api/replay/nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
}
