//! The deterministic stream of the end-to-end tests that run real
//! `wardwatch` processes on a tansu broker (`crash_recovery.rs`,
//! `instances.rs`): its generation, producing it, the brute force
//! evaluation of its rules, reading `alert-events` back with a consumer of
//! its own, and the metrics, config and process helpers around them.
//!
//! The stream: 32 patients on 4 partitions, 20 minutes of event time, one
//! chunk per minute, tachycardia episodes and desaturations, some duplicate
//! deliveries and a few malformed payloads, all from one seed.
#![allow(dead_code)] // each test binary uses its own subset

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{json, Map, Value};
use wardwatch_test_support::server::parse_metrics;

use super::Running;

pub const PARTITIONS: i32 = 4;
pub const PATIENTS: usize = 32;
/// Event time the stream spans; one chunk per minute.
pub const MINUTES: i64 = 20;
pub const READING_EVERY_MS: i64 = 4_000;
pub const MINUTE_MS: i64 = 60_000;
pub const DEFAULT_SEED: u64 = 13_2026;
pub const ALERT_TOPIC: &str = "alert-events";
/// Restart (process start, restore included) to first event read.
pub const RESTART_BOUND: Duration = Duration::from_secs(2);

// The rules. Thresholds with four decimals: an average of readings given
// to a tenth over fewer than 1,000 readings can never equal them, so
// float rounding cannot decide an alert differently here and in the
// brute force evaluation.
pub const HR_TUMBLE: &str = "HR high (1 min)";
pub const HR_TUMBLE_SQL: &str = "SELECT patient_id, AVG(heart_rate_bpm) AS avg_hr, COUNT(*) AS n
FROM vitals
GROUP BY TUMBLE(event_time, INTERVAL '1' MINUTE), patient_id
HAVING AVG(heart_rate_bpm) > 100.0123";
pub const DESAT_HOP: &str = "Desaturation (3 min every minute)";
pub const DESAT_HOP_SQL: &str =
    "SELECT patient_id, MIN(spo2_pct) AS min_spo2, MAX(respiration_rate) AS max_rr,
       COUNT(*) AS n
FROM vitals
GROUP BY HOP(event_time, INTERVAL '1' MINUTE, INTERVAL '3' MINUTE), patient_id
HAVING MIN(spo2_pct) < 90";
pub const TACHY_SESSION: &str = "Tachycardia episode";
pub const TACHY_SESSION_SQL: &str =
    "SELECT patient_id, COUNT(*) AS n, MAX(heart_rate_bpm) AS max_hr
FROM vitals WHERE heart_rate_bpm > 110
GROUP BY SESSION(event_time, INTERVAL '30' SECOND), patient_id
HAVING COUNT(*) >= 3";
pub const HR_PAGED: &str = "HR high, paged every 5 min";
pub const HR_PAGED_SQL: &str = "SELECT patient_id, AVG(heart_rate_bpm) AS avg_hr
FROM vitals
GROUP BY TUMBLE(event_time, INTERVAL '30' SECOND), patient_id
HAVING AVG(heart_rate_bpm) > 105.0123";

/// (name, SQL, cooldown seconds), created in this order on both servers.
pub const RULES: [(&str, &str, u64); 4] = [
    (HR_TUMBLE, HR_TUMBLE_SQL, 0),
    (DESAT_HOP, DESAT_HOP_SQL, 0),
    (TACHY_SESSION, TACHY_SESSION_SQL, 0),
    (HR_PAGED, HR_PAGED_SQL, 300),
];

/// The seed of the stream: `WARDWATCH_CRASH_SEED`, else [`DEFAULT_SEED`].
pub fn seed() -> u64 {
    std::env::var("WARDWATCH_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_SEED)
}

// ------------------------------------------------------------ processes

/// The logs of every process of the test, the last lines of each.
#[derive(Default)]
pub struct Logs(Vec<(String, PathBuf)>);

impl Logs {
    pub fn add(&mut self, what: &str, process: &Running) {
        self.0.push((what.to_string(), process.log.clone()));
    }

    pub fn dump(&self) -> String {
        let mut out = String::new();
        for (what, path) in &self.0 {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let from = lines.len().saturating_sub(150);
            out.push_str(&format!(
                "\n===== {what} ({}; last {} of {} lines) =====\n{}\n",
                path.display(),
                lines.len() - from,
                lines.len(),
                lines[from..].join("\n")
            ));
        }
        out
    }
}

/// A server's config file: `head` (top-level keys) first, then `[kafka]`
/// (`brokers`, `group_id`, `partitions` by assignment, a 10 ms fetch wait,
/// then `kafka_extra`), `[pipeline]` (checkpoints every 500 ms; the quiet
/// close off and the idle timeout an hour, so alerts depend on event time
/// only), `[archive]` (flushed every 1.5 s) and `tail` (more sections).
pub fn config_text(
    head: &str,
    bootstrap: &str,
    group: &str,
    partitions: &[i32],
    kafka_extra: &str,
    tail: &str,
) -> String {
    let partitions: Vec<String> = partitions.iter().map(i32::to_string).collect();
    // tansu 0.6 answers a fetch from inside a record batch with the next
    // batch: without a lookback, a restart at such an offset (a SIGTERM
    // mid-batch) loses the rest of the batch.
    format!(
        "{head}\
         [kafka]\n\
         brokers = \"{bootstrap}\"\n\
         group_id = \"{group}\"\n\
         partitions = [{}]\n\
         fetch_wait_max_ms = 10\n\
         resume_lookback_messages = 1000\n\
         {kafka_extra}\
         [pipeline]\n\
         checkpoint_interval_ms = 500\n\
         quiet_close_ms = 0\n\
         idle_timeout_ms = 3600000\n\
         [archive]\n\
         flush_interval_ms = 1500\n\
         {tail}",
        partitions.join(", ")
    )
}

/// The config of run `name`, its data directory and its consumer group.
///
/// Partitions by assignment (`partitions = []`: all of them), offsets
/// committed under the group: a restarted process reads again at once,
/// with no group join to wait for.
pub fn write_config(dir: &Path, name: &str, bootstrap: &str) -> (PathBuf, PathBuf, String) {
    let config = dir.join(format!("{name}.toml"));
    let group = format!("crash-recovery-{name}");
    std::fs::write(&config, config_text("", bootstrap, &group, &[], "", "")).unwrap();
    (config, dir.join(format!("{name}-data")), group)
}

pub async fn metrics(http: &reqwest::Client, p: &Running) -> Option<HashMap<String, f64>> {
    let text = http
        .get(format!("{}/metrics", p.url))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    Some(parse_metrics(&text))
}

/// A metric's value: the plain series, else its labelled series summed,
/// else (a histogram or summary) its `_sum`.
pub fn metric(m: &HashMap<String, f64>, name: &str) -> Option<f64> {
    if let Some(v) = m.get(name) {
        return Some(*v);
    }
    let labelled: Vec<f64> = m
        .iter()
        .filter(|(k, _)| k.starts_with(&format!("{name}{{")))
        .map(|(_, v)| *v)
        .collect();
    if !labelled.is_empty() {
        return Some(labelled.iter().sum());
    }
    m.get(&format!("{name}_sum")).copied()
}

/// Whether `/metrics` exports `name` in any form (plain, labelled,
/// histogram or summary series).
pub fn metric_present(m: &HashMap<String, f64>, name: &str) -> bool {
    m.keys().any(|k| {
        k == name
            || k.starts_with(&format!("{name}{{"))
            || ["_bucket", "_sum", "_count"]
                .iter()
                .any(|s| k.starts_with(&format!("{name}{s}")))
    })
}

pub async fn wait_healthy(http: &reqwest::Client, p: &Running, logs: &Logs) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = http.get(format!("{}/healthz", p.url)).send().await {
            if r.status().is_success() {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the server did not answer /healthz within 30 s; logs:{}",
            logs.dump()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls `/metrics` (every `every`) until `name` is at least `want`;
/// returns the time since the process started.
pub async fn wait_metric(
    http: &reqwest::Client,
    p: &Running,
    name: &str,
    want: f64,
    limit: Duration,
    every: Duration,
    logs: &Logs,
) -> Duration {
    let deadline = Instant::now() + limit;
    loop {
        let m = metrics(http, p).await;
        if m.as_ref().and_then(|m| metric(m, name)).unwrap_or(0.0) >= want {
            return p.started.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "{name} did not reach {want} within {limit:?} (now {:?}); logs:{}",
            m.as_ref().and_then(|m| metric(m, name)),
            logs.dump()
        );
        tokio::time::sleep(every).await;
    }
}

/// Sends SIGTERM to `p` and waits (at most 10 s, else the test fails)
/// for it to exit: its exit status and how long it took.
pub async fn sigterm(p: &mut Running, logs: &Logs) -> (std::process::ExitStatus, Duration) {
    let stopping = Instant::now();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &p.child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill -TERM failed");
    loop {
        if let Some(exit) = p.child.try_wait().expect("waiting for the server") {
            return (exit, stopping.elapsed());
        }
        assert!(
            stopping.elapsed() < Duration::from_secs(10),
            "the server did not exit within 10 s of SIGTERM; logs:{}",
            logs.dump()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn create_rules(
    http: &reqwest::Client,
    p: &Running,
    logs: &Logs,
) -> BTreeMap<String, String> {
    let mut ids = BTreeMap::new();
    for (name, sql, cooldown) in RULES {
        let r = http
            .post(format!("{}/api/rules", p.url))
            .json(&json!({"name": name, "sql": sql, "severity": "high", "cooldown_seconds": cooldown}))
            .send()
            .await
            .expect("POST /api/rules");
        let status = r.status();
        let body: Value = r.json().await.unwrap_or_default();
        assert_eq!(
            status,
            201,
            "creating rule {name}: {body}; logs:{}",
            logs.dump()
        );
        ids.insert(
            body["id"].as_str().expect("a rule id").to_string(),
            name.to_string(),
        );
    }
    ids
}

// --------------------------------------------------------------- stream

#[derive(Debug, Clone)]
pub struct Reading {
    pub hospital: String,
    pub patient: String,
    pub partition: i32,
    pub ts: i64,
    pub hr: f64,
    pub spo2: f64,
    pub rr: f64,
    pub systolic: f64,
    pub diastolic: f64,
    pub device: &'static str,
    pub seq: u32,
}

impl Reading {
    pub fn message(&self) -> Msg {
        Msg {
            partition: self.partition,
            key: self.patient.clone(),
            payload: json!({
                "hospital_id": self.hospital, "patient_id": self.patient,
                "timestamp_unix_ms": self.ts, "heart_rate_bpm": self.hr,
                "spo2_pct": self.spo2, "respiration_rate": self.rr,
                "systolic_bp_mmhg": self.systolic, "diastolic_bp_mmhg": self.diastolic,
                "source_device": self.device, "sequence_number": self.seq,
            })
            .to_string(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Msg {
    pub partition: i32,
    pub key: String,
    pub payload: String,
}

pub struct Stream {
    /// Every valid reading once, in event-time order.
    pub readings: Vec<Reading>,
    /// What is produced: one chunk per minute of event time, in order
    /// within each partition, with duplicates and malformed payloads.
    pub chunks: Vec<Vec<Msg>>,
    /// One reading per partition, ten minutes past the stream.
    pub trailers: Vec<Msg>,
    pub duplicates: usize,
    pub malformed: usize,
}

pub fn tenth(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// The stream: patient `i` on partition `i % 4` (every partition carries
/// patients), one reading every 4 s at a per-patient phase, heart rate in
/// 30-second blocks that are tachycardic now and then (and tend to stay
/// so), SpO2 below 90 % in about one reading in 250. Every patient is in
/// hospital `H01`.
pub fn generate(seed: u64, t0: i64) -> Stream {
    generate_in_hospitals(seed, t0, 1)
}

/// [`generate`] with the patients in `hospitals` hospitals (`H01`,
/// `H02`…): patients `4k..4k + 3` (one on each partition) in hospital
/// `k % hospitals + 1`, so every hospital has patients on every partition.
/// The readings are [`generate`]'s, whatever the number of hospitals.
pub fn generate_in_hospitals(seed: u64, t0: i64, hospitals: usize) -> Stream {
    let mut rng = StdRng::seed_from_u64(seed);
    let devices = ["BEDSIDE", "PORTABLE", "AMBULATORY"];
    let mut readings = vec![];
    for i in 0..PATIENTS {
        let patient = format!("P{i:02}");
        let hospital = format!("H{:02}", i / PARTITIONS as usize % hospitals.max(1) + 1);
        let phase = rng.gen_range(0..READING_EVERY_MS);
        let block_offset = rng.gen_range(0..30_000);
        let blocks = (MINUTES * MINUTE_MS / 30_000 + 2) as usize;
        let mut tachy = Vec::with_capacity(blocks);
        let mut previous = false;
        for _ in 0..blocks {
            previous = rng.gen_bool(if previous { 0.55 } else { 0.12 });
            tachy.push(previous);
        }
        for k in 0..MINUTES * MINUTE_MS / READING_EVERY_MS {
            let offset = phase + k * READING_EVERY_MS;
            let block = ((offset + block_offset) / 30_000) as usize;
            let hr = if tachy[block] {
                rng.gen_range(112.0..131.0)
            } else {
                rng.gen_range(62.0..92.0)
            };
            let spo2 = if rng.gen_bool(0.004) {
                rng.gen_range(85.0..89.9)
            } else {
                rng.gen_range(94.0..99.5)
            };
            readings.push(Reading {
                hospital: hospital.clone(),
                patient: patient.clone(),
                partition: i as i32 % PARTITIONS,
                ts: t0 + offset,
                hr: tenth(hr),
                spo2: tenth(spo2),
                rr: tenth(rng.gen_range(12.0..24.0)),
                systolic: tenth(rng.gen_range(105.0..140.0)),
                diastolic: tenth(rng.gen_range(60.0..90.0)),
                device: devices[i % devices.len()],
                seq: k as u32 + 1,
            });
        }
    }
    readings.sort_by(|a, b| (a.ts, &a.patient).cmp(&(b.ts, &b.patient)));

    // Duplicates: 2 % of readings delivered again 1 to 60 messages later
    // (a few seconds of event time; sometimes in the next chunk).
    let mut chunks: Vec<Vec<Msg>> = (0..MINUTES).map(|_| vec![]).collect();
    let mut due: Vec<(usize, usize)> = vec![];
    let mut duplicates = 0;
    for (i, r) in readings.iter().enumerate() {
        let chunk = ((r.ts - t0) / MINUTE_MS) as usize;
        let (now, later): (Vec<_>, Vec<_>) = due.drain(..).partition(|(at, _)| *at <= i);
        due = later;
        for (_, j) in now {
            chunks[chunk].push(readings[j].message());
            duplicates += 1;
        }
        chunks[chunk].push(r.message());
        if rng.gen_bool(0.02) {
            due.push((i + rng.gen_range(1..60), i));
        }
    }
    for (_, j) in due {
        chunks[MINUTES as usize - 1].push(readings[j].message());
        duplicates += 1;
    }

    // Malformed payloads, dead-lettered, never aggregated.
    let mut malformed = 0;
    for (n, chunk) in [2usize, 5, 9, 12, 15, 18].into_iter().enumerate() {
        let i = rng.gen_range(0..PATIENTS);
        let patient = format!("P{i:02}");
        let ts = t0 + chunk as i64 * MINUTE_MS + 1;
        let payload = match n {
            0 => "{not json".to_string(),
            1 => json!({"timestamp_unix_ms": ts, "heart_rate_bpm": 80.0}).to_string(),
            2 => json!({"patient_id": patient, "timestamp_unix_ms": ts, "heart_rate_bpm": -5.0})
                .to_string(),
            3 => json!({"patient_id": patient, "timestamp_unix_ms": ts, "spo2_pct": 101.5})
                .to_string(),
            4 => json!({"patient_id": patient, "timestamp_unix_ms": "yesterday", "heart_rate_bpm": 80.0})
                .to_string(),
            _ => format!("{{\"patient_id\": \"{patient}\", \"timestamp_unix_ms\": {ts}"),
        };
        let middle = chunks[chunk].len() / 2;
        chunks[chunk].insert(
            middle,
            Msg {
                partition: i as i32 % PARTITIONS,
                key: patient,
                payload,
            },
        );
        malformed += 1;
    }

    let trailers = (0..PARTITIONS)
        .map(|p| {
            Reading {
                hospital: "H01".to_string(),
                patient: format!("ZZ-TRAIL-{p}"),
                partition: p,
                ts: t0 + (MINUTES + 10) * MINUTE_MS,
                hr: 70.0,
                spo2: 97.0,
                rr: 14.0,
                systolic: 120.0,
                diastolic: 80.0,
                device: "BEDSIDE",
                seq: 1,
            }
            .message()
        })
        .collect();
    Stream {
        readings,
        chunks,
        trailers,
        duplicates,
        malformed,
    }
}

/// Produces `msgs` to `vitals`, each to its partition, enqueued in order
/// (so each partition receives them in this order), and waits for every
/// acknowledgement.
pub async fn produce(producer: &FutureProducer, msgs: &[Msg]) {
    let mut pending = Vec::with_capacity(msgs.len());
    for m in msgs {
        let record = FutureRecord::to("vitals")
            .partition(m.partition)
            .key(&m.key)
            .payload(&m.payload);
        match producer.send_result(record) {
            Ok(delivery) => pending.push(delivery),
            Err((e, _)) => panic!("enqueueing a message to vitals: {e}"),
        }
    }
    for delivery in pending {
        delivery
            .await
            .expect("the producer answers")
            .map_err(|(e, _)| e)
            .expect("the broker accepts the message");
    }
}

// --------------------------------------------------------------- oracle

/// A number as compared: integers as they are, floats to 6 decimals (an
/// average over at most 16 readings given to a tenth has at most 5
/// decimals, so summing in another order cannot move it across).
pub fn number(v: &Value) -> String {
    match v {
        Value::Number(n) if n.is_i64() || n.is_u64() => n.to_string(),
        Value::Number(n) => format!("{:.6}", n.as_f64().unwrap_or(f64::NAN)),
        other => other.to_string(),
    }
}

/// What an alert says, independent of rule ids (which differ between the
/// two servers) and of when it fired.
pub fn identity(
    rule_name: &str,
    patient: &str,
    start: Option<i64>,
    end: Option<i64>,
    values: &Map<String, Value>,
) -> String {
    let values: BTreeMap<&String, String> = values.iter().map(|(k, v)| (k, number(v))).collect();
    let values: Vec<String> = values.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!(
        "{rule_name} | {patient} | {}..{} | {}",
        start.map_or("-".into(), |s| s.to_string()),
        end.map_or("-".into(), |e| e.to_string()),
        values.join(" ")
    )
}

/// The three cooldown-free rules evaluated by brute force over the
/// readings (each once: duplicates are dropped; every partition is in
/// event-time order, so nothing is late).
pub fn brute_force(readings: &[Reading]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut by_patient: BTreeMap<&str, Vec<&Reading>> = BTreeMap::new();
    for r in readings {
        by_patient.entry(&r.patient).or_default().push(r);
    }
    let f = |x: f64| Value::from(x);
    for (patient, rs) in &by_patient {
        // TUMBLE 1 minute: AVG(hr) > 100.0123.
        let mut tumbles: BTreeMap<i64, Vec<f64>> = BTreeMap::new();
        for r in rs {
            tumbles
                .entry(r.ts.div_euclid(MINUTE_MS) * MINUTE_MS)
                .or_default()
                .push(r.hr);
        }
        for (start, hrs) in tumbles {
            let avg = hrs.iter().sum::<f64>() / hrs.len() as f64;
            if avg > 100.0123 {
                let mut v = Map::new();
                v.insert("avg_hr".into(), f(avg));
                v.insert("n".into(), Value::from(hrs.len() as i64));
                out.insert(identity(
                    HR_TUMBLE,
                    patient,
                    Some(start),
                    Some(start + MINUTE_MS),
                    &v,
                ));
            }
        }
        // HOP 3 minutes every minute: MIN(spo2) < 90.
        let mut hops: BTreeMap<i64, Vec<&Reading>> = BTreeMap::new();
        for r in rs {
            let last = r.ts.div_euclid(MINUTE_MS) * MINUTE_MS;
            for k in 0..3 {
                hops.entry(last - k * MINUTE_MS).or_default().push(r);
            }
        }
        for (start, in_window) in hops {
            let min_spo2 = in_window
                .iter()
                .map(|r| r.spo2)
                .fold(f64::INFINITY, f64::min);
            if min_spo2 < 90.0 {
                let mut v = Map::new();
                v.insert("min_spo2".into(), f(min_spo2));
                let max_rr = in_window
                    .iter()
                    .map(|r| r.rr)
                    .fold(f64::NEG_INFINITY, f64::max);
                v.insert("max_rr".into(), f(max_rr));
                v.insert("n".into(), Value::from(in_window.len() as i64));
                out.insert(identity(
                    DESAT_HOP,
                    patient,
                    Some(start),
                    Some(start + 3 * MINUTE_MS),
                    &v,
                ));
            }
        }
        // SESSION 30 s over hr > 110: COUNT(*) >= 3; [first, last + gap).
        let fast: Vec<&&Reading> = rs.iter().filter(|r| r.hr > 110.0).collect();
        let mut sessions: Vec<Vec<&Reading>> = vec![];
        for r in fast {
            match sessions.last_mut() {
                Some(s) if r.ts < s.last().map_or(i64::MIN, |l| l.ts) + 30_000 => s.push(r),
                _ => sessions.push(vec![r]),
            }
        }
        for s in sessions.into_iter().filter(|s| s.len() >= 3) {
            let mut v = Map::new();
            v.insert("n".into(), Value::from(s.len() as i64));
            let max_hr = s.iter().map(|r| r.hr).fold(f64::NEG_INFINITY, f64::max);
            v.insert("max_hr".into(), f(max_hr));
            let (first, last) = (s[0].ts, s[s.len() - 1].ts);
            out.insert(identity(
                TACHY_SESSION,
                patient,
                Some(first),
                Some(last + 30_000),
                &v,
            ));
        }
    }
    out
}

// --------------------------------------------------------------- alerts

/// An alert as read back (from the topic or the history).
#[derive(Debug, Clone)]
pub struct Seen {
    pub id: String,
    pub rule_id: String,
    pub rule_name: String,
    pub status: String,
    /// [`identity`].
    pub identity: String,
    /// `identity` with what the explanation counts: events, first and
    /// last event time, and whether late.
    pub full: String,
}

pub fn seen(v: &Value) -> Seen {
    let rule_name = v["rule_name"].as_str().unwrap_or_default().to_string();
    let patient = match v["key"].get("patient_id").and_then(Value::as_str) {
        Some(p) => p.to_string(),
        None => v["key"].to_string(),
    };
    let values = v["values"].as_object().cloned().unwrap_or_default();
    let identity = identity(
        &rule_name,
        &patient,
        v["window_start_ms"].as_i64(),
        v["window_end_ms"].as_i64(),
        &values,
    );
    let e = &v["explanation"];
    let full = format!(
        "{identity} | events={} {}..{}{}",
        e["event_count"],
        e["first_event_ms"],
        e["last_event_ms"],
        if e["late"].as_bool() == Some(true) {
            " late"
        } else {
            ""
        }
    );
    Seen {
        id: v["id"].as_str().unwrap_or_default().to_string(),
        rule_id: v["rule_id"].as_str().unwrap_or_default().to_string(),
        rule_name,
        status: v["status"].as_str().unwrap_or_default().to_string(),
        identity,
        full,
    }
}

/// Everything on `alert-events`, read from its beginning by a consumer of
/// its own (no group, no commits) to its end.
pub fn read_alert_topic(bootstrap: &str) -> Vec<Value> {
    read_topic(bootstrap, ALERT_TOPIC)
        .into_iter()
        .map(|payload| {
            serde_json::from_slice(&payload).unwrap_or_else(|e| {
                panic!(
                    "an alert on {ALERT_TOPIC} is not JSON ({e}): {}",
                    String::from_utf8_lossy(&payload)
                )
            })
        })
        .collect()
}

/// Every payload of partition 0 of `topic` (a topic of one partition),
/// read from its beginning by a consumer of its own (no group, no commits)
/// to its end.
pub fn read_topic(bootstrap: &str, topic: &str) -> Vec<Vec<u8>> {
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set(
            "group.id",
            format!("crash-recovery-reader-{}", rand::random::<u64>()),
        )
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_uncommitted")
        .set("fetch.wait.max.ms", "10")
        .create()
        .unwrap_or_else(|e| panic!("a reader of {topic}: {e}"));
    let (_, end) = consumer
        .fetch_watermarks(topic, 0, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("the end of {topic}: {e}"));
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)
        .unwrap();
    consumer
        .assign(&tpl)
        .unwrap_or_else(|e| panic!("assigning {topic}: {e}"));
    let mut out = vec![];
    let mut next = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    // tansu reports the end (and the last stable offset, hence
    // read_uncommitted above) as the newest record batch's base + 1, short
    // of the true end: past it, read on until the topic has been quiet.
    let mut quiet = 0;
    while next < end || quiet < 5 {
        assert!(
            Instant::now() < deadline,
            "read only up to offset {next} of {end} on {topic} in 30 s"
        );
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                next = m.offset() + 1;
                quiet = 0;
                out.push(m.payload().unwrap_or_default().to_vec());
            }
            Some(Err(e)) => panic!("reading {topic}: {e}"),
            None if next >= end => quiet += 1,
            None => {}
        }
    }
    out
}

/// [`read_alert_topic`] again every 2 s until two reads find as many
/// alerts (nothing more arrives), for at most 30 s; call it once the
/// servers have committed everything.
pub async fn read_alert_topic_settled(bootstrap: &str, logs: &Logs) -> Vec<Value> {
    let read_topic = || {
        let bootstrap = bootstrap.to_string();
        tokio::task::spawn_blocking(move || read_alert_topic(&bootstrap))
    };
    let mut on_topic = read_topic().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let again = read_topic().await.unwrap();
        let settled = again.len() == on_topic.len();
        assert!(
            settled || Instant::now() < deadline,
            "alerts still arrive on {ALERT_TOPIC} 30 s after the servers committed everything \
             ({} then {}); logs:{}",
            on_topic.len(),
            again.len(),
            logs.dump()
        );
        on_topic = again;
        if settled {
            return on_topic;
        }
    }
}

/// (committed, end) offsets of `vitals`, summed over its partitions, for
/// `group`.
pub fn committed_and_end(bootstrap: &str, group: &str) -> (i64, i64) {
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    let mut end = 0;
    for p in 0..PARTITIONS {
        tpl.add_partition("vitals", p);
        end += consumer
            .fetch_watermarks("vitals", p, Duration::from_secs(5))
            .map(|(_, high)| high)
            .unwrap_or(0);
    }
    let committed = consumer
        .committed_offsets(tpl, Duration::from_secs(5))
        .map(|c| {
            c.elements()
                .iter()
                .map(|e| match e.offset() {
                    Offset::Offset(o) => o,
                    _ => 0,
                })
                .sum()
        })
        .unwrap_or(0);
    (committed, end)
}

pub async fn offsets(bootstrap: &str, group: &str) -> (i64, i64) {
    let (bootstrap, group) = (bootstrap.to_string(), group.to_string());
    tokio::task::spawn_blocking(move || committed_and_end(&bootstrap, &group))
        .await
        .unwrap()
}

/// Waits until `group` has committed at least `want` offsets of `vitals`
/// (`None`: all of them, up to the end).
pub async fn wait_committed(
    bootstrap: &str,
    group: &str,
    want: Option<i64>,
    limit: Duration,
    logs: &Logs,
) {
    let deadline = Instant::now() + limit;
    loop {
        let (committed, end) = offsets(bootstrap, group).await;
        if committed >= want.unwrap_or(end) && (want.is_some() || end > 0) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "group {group} committed {committed} offsets of vitals (end: {end}, wanted {}) \
             within {limit:?}; logs:{}",
            want.map_or("all".into(), |w| w.to_string()),
            logs.dump()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

pub async fn history(http: &reqwest::Client, p: &Running) -> Option<Vec<Value>> {
    let v: Value = http
        .get(format!("{}/api/alerts?limit=10000", p.url))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    v["alerts"].as_array().cloned()
}

/// Per identity, how often it occurs.
pub fn counted<'a>(items: impl Iterator<Item = &'a String>) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for i in items {
        *out.entry(i.clone()).or_insert(0) += 1;
    }
    out
}

/// The differences between two multisets, at most 25 lines each way.
pub fn diff(
    left: &str,
    a: &BTreeMap<String, usize>,
    right: &str,
    b: &BTreeMap<String, usize>,
) -> String {
    let mut out = String::new();
    for (x, y, name, other) in [(a, b, left, right), (b, a, right, left)] {
        let mut extra = vec![];
        for (k, n) in x {
            let m = y.get(k).copied().unwrap_or(0);
            if m < *n {
                extra.push(format!("  {k} (x{n} vs x{m})"));
            }
        }
        if !extra.is_empty() {
            out.push_str(&format!(
                "\n{} more often in {name} than in {other} (times in each):\n{}",
                extra.len(),
                extra[..extra.len().min(25)].join("\n")
            ));
        }
    }
    out
}

pub fn per_rule(alerts: &[Seen]) -> BTreeMap<String, usize> {
    counted(alerts.iter().map(|a| &a.rule_name))
}
