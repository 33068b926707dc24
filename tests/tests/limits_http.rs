//! Issue 12: what cannot run safely is refused at submit time. Every input
//! here took the server down or made it loop before (a 2,000-term sum
//! overflowed a worker's stack on each route that takes SQL; a HOP of 1 ms
//! panes over 100 years looped forever; an unbounded cooldown, a bogus
//! severity and megabyte fields were stored). Each is now a `400` whose
//! message names the limit, and afterwards a canary rule still fires on
//! fresh events and `/healthz` answers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use wardwatch::config::Config;
use wardwatch_tests::{recent_ms, Server};

/// Ten minutes ago, to the minute: inside the archive's retention and not
/// in the future, so the server accepts the events.
fn t0() -> i64 {
    static T0: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    *T0.get_or_init(|| recent_ms(60_000, 10))
}

const CANARY_SQL: &str = "SELECT patient_id, spo2_pct FROM vitals WHERE spo2_pct < 85";

fn chain(terms: usize) -> String {
    format!("SELECT {}", vec!["1"; terms].join("+"))
}

fn hop_rule(slide: &str, size: &str) -> String {
    format!(
        "SELECT patient_id, COUNT(*) AS n FROM vitals\nGROUP BY HOP(event_time, INTERVAL {slide}, INTERVAL {size}), patient_id"
    )
}

fn rule(name: &str, sql: &str) -> Value {
    json!({"name": name, "sql": sql, "severity": "high", "cooldown_seconds": 0})
}

/// Sends `body` and expects a 400 whose message contains `fragment`.
async fn refused(
    server: &Server,
    method: reqwest::Method,
    path: &str,
    body: Value,
    fragment: &str,
) -> Value {
    let response = server
        .http
        .request(method.clone(), server.url(path))
        .json(&body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: the server did not answer: {e}"));
    let status = response.status();
    let text = response.text().await.unwrap();
    assert_eq!(status, 400, "{method} {path}: {text}");
    let error: Value = serde_json::from_str(&text).unwrap();
    let message = error["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(fragment),
        "{method} {path}: expected `{fragment}` in: {message}"
    );
    error["error"].clone()
}

async fn create_canary(server: &Server) -> String {
    let created = server
        .http
        .post(server.url("/api/rules"))
        .json(&rule("Canary", CANARY_SQL))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    created.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Posts a low reading and waits for the canary's alert for that patient.
async fn canary_fires(server: &Server, rule_id: &str, patient: &str) {
    let event = json!({"hospital_id": "H01", "patient_id": patient, "timestamp_unix_ms": t0(),
                       "spo2_pct": 80.0, "source_device": "BEDSIDE", "sequence_number": 1});
    server.ingest(event.to_string()).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let alerts: Value = server
            .get_json(&format!("/api/alerts?rule={rule_id}&patient={patient}"))
            .await;
        if !alerts["alerts"].as_array().unwrap().is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the canary rule did not fire for {patient} within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let health = server
        .http
        .get(server.url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_sql_is_refused_on_every_route_that_takes_sql_and_the_server_keeps_alerting() {
    use reqwest::Method;
    let server = Server::start(Config::default())
        .await
        .expect("server starts");
    let canary = create_canary(&server).await;
    canary_fires(&server, &canary, "P-before").await;

    let depth = "levels deep (max_expression_depth)";
    let deep_rule = format!(
        "SELECT patient_id FROM vitals WHERE {} > 0",
        vec!["heart_rate_bpm"; 2_000].join(" + ")
    );
    for sql in [chain(2_000), chain(10_000)] {
        refused(
            &server,
            Method::POST,
            "/api/query",
            json!({"sql": sql}),
            depth,
        )
        .await;
    }
    let error = refused(
        &server,
        Method::POST,
        "/api/rules/validate",
        json!({"sql": deep_rule}),
        depth,
    )
    .await;
    assert_eq!(error["line"], 1, "{error}");
    refused(
        &server,
        Method::POST,
        "/api/rules",
        rule("Deep", &deep_rule),
        depth,
    )
    .await;
    refused(
        &server,
        Method::PUT,
        &format!("/api/rules/{canary}"),
        rule("Canary", &deep_rule),
        depth,
    )
    .await;
    refused(
        &server,
        Method::POST,
        "/api/replay",
        json!({"sql": deep_rule, "from_ms": t0() - 60_000, "to_ms": t0() + 60_000}),
        depth,
    )
    .await;
    // Nesting the parser itself stops, and text over the size limit.
    let parens = format!("SELECT {}1{}", "(".repeat(1_000), ")".repeat(1_000));
    refused(
        &server,
        Method::POST,
        "/api/query",
        json!({"sql": parens}),
        "recursion limit",
    )
    .await;
    let case = (0..500).fold("heart_rate_bpm".to_string(), |e, _| {
        format!("CASE WHEN spo2_pct < 90 THEN {e} ELSE 0 END")
    });
    refused(
        &server,
        Method::POST,
        "/api/rules/validate",
        json!({"sql": format!("SELECT patient_id FROM vitals WHERE {case} > 0")}),
        // The parser backtracks out of its recursion limit inside CASE; the
        // message still says what is wrong (it once said "found ELSE").
        "nested too deeply",
    )
    .await;
    let long = format!("{} -- {}", CANARY_SQL, "x".repeat(70_000));
    for path in ["/api/query", "/api/rules/validate"] {
        refused(
            &server,
            Method::POST,
            path,
            json!({"sql": long}),
            "the limit is 65536 bytes (max_sql_bytes)",
        )
        .await;
    }

    // Within the limit, history SQL still plans and runs on a request thread.
    let ok = server
        .http
        .post(server.url("/api/query"))
        .json(&json!({"sql": chain(150)}))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200, "{}", ok.text().await.unwrap());

    // The canary is unchanged (the refused PUT made no version) and fires.
    let rule: Value = server.get_json(&format!("/api/rules/{canary}")).await;
    assert_eq!(rule["version"], 1);
    canary_fires(&server, &canary, "P-after").await;
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_over_a_budget_are_refused_with_the_limit_and_the_server_keeps_alerting() {
    use reqwest::Method;
    let server = Server::start(Config::default())
        .await
        .expect("server starts");
    let canary = create_canary(&server).await;

    let post = |body: Value, fragment: &'static str| {
        let server = &server;
        async move { refused(server, Method::POST, "/api/rules", body, fragment).await }
    };
    let error = post(
        rule("Century", &hop_rule("'1' MILLISECOND", "'36500' DAY")),
        "the HOP size is 36500 days; the longest allowed is 1 day (max_window_ms = 86400000)",
    )
    .await;
    assert_eq!(
        (error["line"].as_u64(), error["column"].as_u64()),
        (Some(2), Some(10))
    );
    post(
        rule("Storm", &hop_rule("'1' MILLISECOND", "'10' SECOND")),
        "the limit is 1440 panes per window (max_panes_per_window)",
    )
    .await;
    post(
        rule(
            "Early",
            &format!("{}\nEMIT EARLY", hop_rule("'1' MILLISECOND", "'1' HOUR")),
        ),
        "max_panes_per_window",
    )
    .await;
    post(
        rule(
            "Forever",
            "SELECT patient_id, COUNT(*) FROM vitals GROUP BY TUMBLE(event_time, INTERVAL '2147483647' DAY), patient_id",
        ),
        "max_window_ms",
    )
    .await;
    post(
        rule(
            "Endless session",
            "SELECT patient_id, COUNT(*) FROM vitals GROUP BY SESSION(event_time, INTERVAL '36500' DAY), patient_id",
        ),
        "the SESSION gap is 36500 days",
    )
    .await;

    let mut body = rule("No cooldown", CANARY_SQL);
    body["cooldown_seconds"] = json!(u64::MAX);
    post(body, "the limit is 604800 (7 days, max_cooldown_seconds)").await;
    let mut body = rule("Late", CANARY_SQL);
    body["allowed_lateness_ms"] = json!(3_600_001);
    post(body, "the limit is 3600000 (max_allowed_lateness_ms)").await;
    let mut body = rule("Bogus", CANARY_SQL);
    body["escalation"] = json!({"column": "spo2_pct", "below": 80, "severity": "ultra-bogus"});
    post(body, "expected one of info, low, medium, high, critical").await;
    let mut body = rule("Wrong column", CANARY_SQL);
    body["escalation"] = json!({"column": "avg_hr", "above": 140, "severity": "critical"});
    post(
        body,
        "'avg_hr' is not an output column of the rule; it has patient_id, spo2_pct",
    )
    .await;
    post(
        rule(&"n".repeat(201), CANARY_SQL),
        "the limit is 200 (max_name_chars)",
    )
    .await;
    let mut body = rule("Wordy", CANARY_SQL);
    body["description"] = json!("d".repeat(4097));
    post(body, "the limit is 4096 bytes (max_description_bytes)").await;
    // Editing is held to the same budgets.
    refused(
        &server,
        Method::PUT,
        &format!("/api/rules/{canary}"),
        rule("Canary", &hop_rule("'1' MILLISECOND", "'36500' DAY")),
        "max_window_ms",
    )
    .await;

    // Acknowledgements: checked before the alert is looked up.
    refused(
        &server,
        Method::POST,
        "/api/alerts/any/ack",
        json!({"by": "b".repeat(201)}),
        "the limit is 200 (max_ack_by_chars)",
    )
    .await;
    refused(
        &server,
        Method::POST,
        "/api/alerts/any/ack",
        json!({"by": "nurse", "note": "n".repeat(4097)}),
        "the limit is 4096 bytes (max_ack_note_bytes)",
    )
    .await;

    // Nothing refused was stored; the canary fires.
    let rules: Value = server.get_json("/api/rules").await;
    assert_eq!(rules["rules"].as_array().unwrap().len(), 1, "{rules}");
    canary_fires(&server, &canary, "P1").await;
    server.stop().await.unwrap();
}

/// VmHWM of this process (the server runs in it), in bytes.
fn peak_rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_that_would_build_huge_values_are_refused_without_building_them() {
    use reqwest::Method;
    let server = Server::start(Config::default())
        .await
        .expect("server starts");
    let canary = create_canary(&server).await;
    // Validating the first took 3 GB before rules had the history's bounded
    // functions; three at once would have taken the process down.
    let huge = [
        "SELECT patient_id, length(repeat(patient_id, 100000000)) AS n\nFROM vitals WHERE heart_rate_bpm > 0",
        "SELECT patient_id, length(lpad(patient_id, 1000000000)) AS n\nFROM vitals WHERE heart_rate_bpm > 0",
        "SELECT patient_id, length(patient_id || repeat('x', 10000000) || repeat('y', 10000000)) AS n\nFROM vitals",
    ];
    let refusals = huge.iter().map(|sql| {
        let server = &server;
        async move {
            refused(
                server,
                Method::POST,
                "/api/rules/validate",
                json!({"sql": sql}),
                "max_function_output_bytes",
            )
            .await
        }
    });
    for error in futures::future::join_all(refusals).await {
        assert_eq!(error["line"].as_u64(), Some(1), "{error}");
    }
    refused(
        &server,
        Method::POST,
        "/api/rules",
        rule("Huge", huge[0]),
        "max_function_output_bytes",
    )
    .await;
    let peak = peak_rss_bytes();
    assert!(
        peak < 1024 * 1024 * 1024,
        "peak RSS {} MiB: something built the value",
        peak >> 20
    );
    // Ordinary text functions in rules are untouched.
    let ok = server
        .http
        .post(server.url("/api/rules/validate"))
        .json(&json!({"sql": "SELECT patient_id, upper(patient_id || '-' || source_device) AS tag FROM vitals WHERE spo2_pct < 85"}))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200, "{}", ok.text().await.unwrap());
    canary_fires(&server, &canary, "P-after-huge").await;
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_are_settings_a_config_file_can_raise() {
    let mut config = Config::default();
    config.limits.max_window_ms = 2 * 86_400_000;
    let server = Server::start(config).await.expect("server starts");
    let sql = "SELECT patient_id, COUNT(*) FROM vitals GROUP BY TUMBLE(event_time, INTERVAL '48' HOUR), patient_id";
    let created = server
        .http
        .post(server.url("/api/rules"))
        .json(&rule("Two days", sql))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201, "{}", created.text().await.unwrap());
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_rule_over_a_budget_is_not_run_at_startup_and_the_others_fire() {
    // An older version stored these without checking budgets.
    let data_dir = Arc::new(tempfile::tempdir().unwrap());
    let (store, prefix) = catalog::storage::open_store(&data_dir.path().to_string_lossy()).unwrap();
    let rules = catalog::rules::RuleStore::open(store, prefix)
        .await
        .unwrap();
    rules
        .create(
            catalog::rules::RuleDraft::new(
                "Century of 1 ms panes",
                hop_rule("'1' MILLISECOND", "'36500' DAY"),
            ),
            t0(),
        )
        .await
        .unwrap();
    let mut no_cooldown = catalog::rules::RuleDraft::new("Canary", CANARY_SQL);
    no_cooldown.cooldown_seconds = u64::MAX;
    let canary = rules.create(no_cooldown, t0()).await.unwrap().id;
    drop(rules);

    let server = Server::start_in(Config::default(), data_dir)
        .await
        .expect("server starts");
    canary_fires(&server, &canary, "P1").await;
    // A cooldown of u64::MAX seconds is very long, not none: the repeat
    // is suppressed.
    let event = json!({"hospital_id": "H01", "patient_id": "P1", "timestamp_unix_ms": t0() + 1000,
                       "spo2_pct": 79.0, "source_device": "BEDSIDE", "sequence_number": 2});
    server
        .http
        .post(server.url("/api/ingest"))
        .header("content-type", "application/x-ndjson")
        .body(event.to_string())
        .send()
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let alerts: Value = server
            .get_json(&format!("/api/alerts?rule={canary}&patient=P1"))
            .await;
        let statuses: Vec<&str> = alerts["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|a| a["status"].as_str())
            .collect();
        if statuses.len() == 2 {
            assert_eq!(statuses, ["suppressed", "fired"], "{alerts}");
            break;
        }
        assert!(Instant::now() < deadline, "no second alert: {alerts}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.stop().await.unwrap();
}

/// History queries and replays run in bounded pools: past the limit a
/// request gets `503` with the limit named, a streamed answer holds its
/// slot until it has been read, and alerting goes on throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_readers_beyond_their_pools_get_503_and_alerting_goes_on() {
    let mut config = Config::default();
    config.limits.max_concurrent_queries = 1;
    config.archive.query_max_rows = 10_000_000;
    let server = Server::start(config).await.expect("server starts");
    let canary = create_canary(&server).await;

    // Streamed (over 10,000 rows) and far larger than the socket's buffers,
    // so the slot stays taken until the client reads it.
    let big = server
        .http
        .post(server.url("/api/query"))
        .json(&json!({"sql": "SELECT value FROM generate_series(1, 3000000)"}))
        .send()
        .await
        .unwrap();
    assert_eq!(big.status(), 200);
    let busy = server
        .http
        .post(server.url("/api/query"))
        .json(&json!({"sql": "SELECT 1 AS one"}))
        .send()
        .await
        .unwrap();
    assert_eq!(busy.status(), 503);
    let message = busy.json::<Value>().await.unwrap()["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(message.contains("max_concurrent_queries"), "{message}");
    canary_fires(&server, &canary, "P-during").await;

    // Reading the first answer to its end frees the slot.
    let body = big.text().await.unwrap();
    assert!(body.len() > 3_000_000, "{} bytes", body.len());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let again = server
            .http
            .post(server.url("/api/query"))
            .json(&json!({"sql": "SELECT 1 AS one"}))
            .send()
            .await
            .unwrap();
        if again.status() == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "the slot never came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    canary_fires(&server, &canary, "P-after").await;
}

/// A replay runs within the same `[limits]` budgets as live rules: a draft
/// that would be suspended live is refused with the budget's name, one
/// within it answers, and live alerting goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_run_within_the_configured_rule_budgets() {
    let mut config = Config::default();
    config.limits.max_alerts_per_rule_minute = 5;
    config.archive.flush_interval_ms = 200;
    let server = Server::start(config).await.expect("server starts");
    let canary = create_canary(&server).await;
    let start = t0();
    let storm: Vec<String> = (0..20)
        .map(|i| {
            json!({"hospital_id": "H01", "patient_id": "P-storm", "timestamp_unix_ms": start + i * 100,
                   "heart_rate_bpm": 199.0, "source_device": "BEDSIDE", "sequence_number": i})
            .to_string()
        })
        .collect();
    server.ingest(storm.join("\n")).await;
    let draft = |to_ms: i64| {
        json!({"sql": "SELECT patient_id FROM vitals WHERE heart_rate_bpm > 180",
               "cooldown_seconds": 0, "from_ms": start - 60_000, "to_ms": to_ms})
    };
    // Three events: three alerts, within the budget of five a minute.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let response = server
            .http
            .post(server.url("/api/replay"))
            .json(&draft(start + 250))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let report: Value = response.json().await.unwrap();
        if report["alerts"].as_array().map(Vec::len) == Some(3) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the archive never showed the storm: {report}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Twenty in two seconds: over the configured five a minute.
    refused(
        &server,
        reqwest::Method::POST,
        "/api/replay",
        draft(start + 60_000),
        "max_alerts_per_rule_minute",
    )
    .await;
    canary_fires(&server, &canary, "P-after-replay").await;
}
