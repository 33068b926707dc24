//! The abuse suite (issue 12): inputs that once stopped or took down
//! alerting, tried against a running server the way a careless or hostile
//! client would. Every case ends with the same [`aftermath`] check:
//!
//! - two canary rules still fire on fresh events within seconds: a
//!   per-event one, and a windowed one whose window must close (so a stuck
//!   watermark, the way windowed alerting silently stops, fails the check),
//! - `/healthz` answers 200 `{"status": "ok"}` within 2 s (it answers 503
//!   `stalled` when the engine thread stops making progress),
//! - the process's peak memory stays under [`PEAK_RSS_BOUND`], and
//! - every event the server accepted is in history (nothing accepted lost).
//!
//! Cases elsewhere, with the same checks: a reading dated 2999 and a
//! megabyte patient id (`event_time_http.rs`); SQL nested too deep and
//! rules over a submit-time budget (`limits_http.rs`); a rule failing at
//! run time (`server/tests/rule_health.rs`); quiet-then-burst partitions and
//! windows closing on a quiet stream (`sql-rules/tests/rules/`
//! `quiet_close.rules`, `partitions.rules`).

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use wardwatch::config::Config;
use wardwatch_tests::{recent_ms, Server};

/// Peak resident memory of this test process (the servers run in it) over
/// the whole suite. Before issue 12, one `repeat('x', 1e9)` query peaked at
/// 3.8 GB and three at once aborted the process.
const PEAK_RSS_BOUND: u64 = 2 * 1024 * 1024 * 1024;

const CANARY_SQL: &str = "SELECT patient_id, spo2_pct FROM vitals WHERE spo2_pct < 85";
const WINDOWED_CANARY_SQL: &str = "SELECT patient_id, MAX(heart_rate_bpm) AS hr FROM vitals \
     GROUP BY TUMBLE(event_time, INTERVAL '1' SECOND), patient_id HAVING MAX(heart_rate_bpm) > 180";

/// Ten minutes ago, to the minute: inside retention, not in the future.
fn t0() -> i64 {
    static T0: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    *T0.get_or_init(|| recent_ms(60_000, 10))
}

fn event(patient: &str, at_ms: i64, spo2: f64, heart_rate: i64, seq: u32) -> String {
    json!({"hospital_id": "H01", "patient_id": patient, "timestamp_unix_ms": at_ms,
           "spo2_pct": spo2, "heart_rate_bpm": heart_rate, "source_device": "BEDSIDE",
           "sequence_number": seq})
    .to_string()
}

/// A server with the canary rules, counting the events it accepted.
struct Ward {
    server: Server,
    canary: String,
    windowed_canary: String,
    accepted: u64,
}

impl Ward {
    async fn start(config: Config) -> Self {
        let server = Server::start(config).await.expect("server starts");
        let mut ids = Vec::new();
        for (name, sql) in [
            ("Canary", CANARY_SQL),
            ("Windowed canary", WINDOWED_CANARY_SQL),
        ] {
            let created = server
                .http
                .post(server.url("/api/rules"))
                .json(&json!({"name": name, "sql": sql, "severity": "high",
                              "cooldown_seconds": 0}))
                .send()
                .await
                .unwrap();
            assert_eq!(created.status(), 201);
            let id = created.json::<Value>().await.unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string();
            ids.push(id);
        }
        let windowed_canary = ids.pop().unwrap();
        let canary = ids.pop().unwrap();
        Self {
            server,
            canary,
            windowed_canary,
            accepted: 0,
        }
    }

    async fn ingest(&mut self, lines: &[String]) {
        let answer = self.server.ingest(lines.join("\n")).await;
        self.accepted += answer["accepted"].as_u64().expect("accepted count");
    }

    async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let response = self
            .server
            .http
            .post(self.server.url(path))
            .json(body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {path}: the server did not answer: {e}"));
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(json!(text)))
    }

    /// The checks every case ends with (see the module docs).
    async fn aftermath(&mut self, case: &str) {
        let patient = format!("P-canary-{case}");
        // The windowed canary's reading is dated now: its window closes
        // when the stream's time passes it (here, by the quiet close).
        let now = chrono::Utc::now().timestamp_millis();
        self.ingest(&[
            event(&patient, t0() + 1, 80.0, 70, 1),
            event(&patient, now - 500, 97.0, 190, 2),
        ])
        .await;
        let deadline = Instant::now() + Duration::from_secs(20);
        for rule in [self.canary.clone(), self.windowed_canary.clone()] {
            loop {
                let alerts = self
                    .server
                    .get_json(&format!("/api/alerts?rule={rule}&patient={patient}"))
                    .await;
                if !alerts["alerts"].as_array().unwrap().is_empty() {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{case}: canary {rule} did not fire within 20 s"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        let health = self.server.http.get(self.server.url("/healthz")).send();
        let health = tokio::time::timeout(Duration::from_secs(2), health)
            .await
            .unwrap_or_else(|_| panic!("{case}: /healthz did not answer within 2 s"))
            .unwrap();
        assert_eq!(health.status(), 200, "{case}");
        let health: Value = health.json().await.unwrap();
        assert_eq!(health["status"], "ok", "{case}: {health}");

        let (status, rows) = self
            .post(
                "/api/query",
                &json!({"sql": "SELECT count(*) AS n FROM vitals"}),
            )
            .await;
        assert_eq!(status, 200, "{case}: {rows}");
        assert_eq!(
            rows["rows"][0]["n"].as_u64(),
            Some(self.accepted),
            "{case}: accepted events missing from history: {rows}"
        );
        let peak = peak_rss_bytes();
        assert!(
            peak < PEAK_RSS_BOUND,
            "{case}: peak RSS {} MiB is over the bound of {} MiB",
            peak >> 20,
            PEAK_RSS_BOUND >> 20
        );
    }
}

/// VmHWM of this process, in bytes.
fn peak_rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .expect("VmHWM");
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("VmHWM in kB");
    kib * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn history_sql_cannot_take_the_servers_memory() {
    let mut ward = Ward::start(Config::default()).await;
    ward.ingest(&[event("P1", t0(), 97.0, 70, 1)]).await;

    // Three gigabyte-sized values at once: each refused before it is
    // allocated, with the function and the limit named.
    let started = Instant::now();
    let huge = json!({"sql": "SELECT length(repeat('x', 1000000000)) FROM vitals"});
    let queries = (0..3).map(|_| ward.post("/api/query", &huge));
    for (status, body) in futures::future::join_all(queries).await {
        assert_eq!(status, 413, "{body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("repeat()"), "{message}");
        assert!(message.contains("max_function_output_bytes"), "{message}");
    }
    assert!(started.elapsed() < Duration::from_secs(10));

    // An aggregate with more groups than one query's memory (40 M keys in
    // no order, so the hash table must hold them all): stopped with a 413
    // that says what to do, not an abort.
    let (status, body) = ward
        .post(
            "/api/query",
            &json!({"sql": "SELECT count(*) FROM (SELECT value % 40000000 AS k FROM generate_series(1, 100000000) GROUP BY k)"}),
        )
        .await;
    assert_eq!(status, 413, "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("more memory than one query may hold"),
        "{message}"
    );

    // ORDER BY over a huge input keeps only the rows it may return.
    let (status, body) = ward
        .post(
            "/api/query",
            &json!({"sql": "SELECT value FROM generate_series(1, 20000000) ORDER BY value DESC LIMIT 3"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["rows"][0]["value"], 20_000_000, "{body}");

    ward.aftermath("history-sql").await;
    ward.server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn heavy_backtests_are_bounded_and_health_keeps_answering() {
    let mut config = Config::default();
    config.limits.max_concurrent_replays = 2;
    let mut ward = Ward::start(config).await;
    // An hour of one reading a second for 50 patients: enough that a
    // backtest over it takes a while in a debug build.
    let start = t0() - 3_600_000;
    for chunk in 0..36 {
        let lines: Vec<String> = (0..100)
            .flat_map(|s| {
                let at = start + (chunk * 100 + s) * 1_000;
                (0..50).map(move |p| event(&format!("P{p}"), at, 96.0, 60 + (s % 50), s as u32 + 1))
            })
            .collect();
        ward.ingest(&lines).await;
    }

    let draft = json!({
        "sql": "SELECT patient_id, AVG(heart_rate_bpm) AS hr FROM vitals \
                GROUP BY HOP(event_time, INTERVAL '10' SECOND, INTERVAL '1' MINUTE), patient_id \
                HAVING AVG(heart_rate_bpm) > 80",
        "from_ms": start, "to_ms": t0(), "async": true,
    });
    let mut jobs = Vec::new();
    let mut refused = 0;
    for _ in 0..4 {
        let (status, body) = ward.post("/api/replay", &draft).await;
        match status {
            202 => jobs.push(body["job"].as_str().unwrap().to_string()),
            503 => {
                refused += 1;
                let message = body["error"]["message"].as_str().unwrap_or_default();
                assert!(message.contains("max_concurrent_replays"), "{message}");
            }
            other => panic!("POST /api/replay: {other} {body}"),
        }
    }
    assert_eq!(jobs.len(), 2, "two run at once (max_concurrent_replays)");
    assert_eq!(refused, 2, "the others are refused while they run");
    // While they run: health answers at once (replays are off the HTTP
    // threads) and the canary still fires.
    for _ in 0..5 {
        let started = Instant::now();
        let health = ward.server.http.get(ward.server.url("/healthz")).send();
        let health = health.await.unwrap();
        assert_eq!(health.status(), 200);
        // Generous on a loaded 2-core machine; a blocked HTTP thread took
        // /healthz past its probe's timeout for good before.
        assert!(started.elapsed() < Duration::from_secs(2));
    }
    ward.aftermath("backtests-running").await;
    // Each job finishes with the same alerts (they replay the same draft).
    let mut alert_counts = Vec::new();
    for job in &jobs {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let view = ward.server.get_json(&format!("/api/replay/{job}")).await;
            if view["state"] == "done" {
                alert_counts.push(view["result"]["alerts"].as_array().map(Vec::len));
                break;
            }
            assert_ne!(view["state"], "failed", "{view}");
            assert!(
                Instant::now() < deadline,
                "job {job} did not finish: {view}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    assert!(
        alert_counts.windows(2).all(|w| w[0] == w[1]),
        "{alert_counts:?}"
    );
    eprintln!(
        "{} jobs ran, {refused} refused; alerts {alert_counts:?}",
        jobs.len()
    );
    ward.aftermath("backtests-done").await;
    ward.server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_alert_storm_rule_is_suspended_and_the_others_keep_firing() {
    let mut config = Config::default();
    config.limits.max_alerts_per_rule_minute = 1_000;
    let mut ward = Ward::start(config).await;
    // Every reading alerts, with no cooldown: 1,200 alerts in a minute of
    // event time, over a budget of 1,000 (the default, 100,000, is for a
    // whole deployment).
    let (status, body) = ward
        .post(
            "/api/rules",
            &json!({"name": "Storm", "sql": "SELECT patient_id, heart_rate_bpm FROM vitals WHERE heart_rate_bpm > 0",
                    "severity": "low", "cooldown_seconds": 0}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let storm = body["id"].as_str().unwrap().to_string();
    let lines: Vec<String> = (0..1_200)
        .map(|i| {
            event(
                &format!("S{}", i % 40),
                t0() - 60_000 + i * 40,
                97.0,
                70,
                i as u32 + 1,
            )
        })
        .collect();
    ward.ingest(&lines).await;

    let deadline = Instant::now() + Duration::from_secs(20);
    let rule = loop {
        let rule = ward.server.get_json(&format!("/api/rules/{storm}")).await;
        if rule["state"] == "suspended" {
            break rule;
        }
        assert!(Instant::now() < deadline, "not suspended: {rule}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        rule["stats"]["suspension"]["reason"], "alerts_per_minute",
        "{rule}"
    );
    assert_eq!(rule["stats"]["alerts_fired"], 1_000, "{rule}");
    let metrics = ward.server.metrics().await.unwrap();
    assert_eq!(metrics.get("wardwatch_rules_suspended"), Some(&1.0));
    ward.aftermath("alert-storm").await;
    // The suspended rule stays silent on the canary's reading.
    let rule = ward.server.get_json(&format!("/api/rules/{storm}")).await;
    assert_eq!(rule["stats"]["alerts_fired"], 1_000, "{rule}");
    ward.server.stop().await.unwrap();
}
