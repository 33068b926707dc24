//! kill -9 at any moment loses nothing, splits nothing and repeats nothing
//! (issue 13: checkpoints and exactly-once alerts without transactions).
//!
//! One deterministic stream (seeded: 32 patients on 4 partitions, 20
//! minutes of event time, tachycardia episodes and desaturations, some
//! duplicate deliveries and a few malformed payloads) is read by two real
//! `wardwatch` processes on a tansu broker, each with its own data
//! directory and consumer group, and the same four windowed rules created
//! over REST in the same order (TUMBLE, HOP, SESSION with cooldown 0, and a
//! TUMBLE rule with a 5-minute cooldown, so cooldown memory matters):
//!
//! - run A, the reference, is never killed;
//! - run B is killed with SIGKILL three times while the stream is produced
//!   chunk by chunk, and restarted on the same data directory and config:
//!   (a) as soon as it has read its first events (before any checkpoint or
//!   commit, most likely), (b) mid-stream, once it has written at least
//!   three checkpoints and committed offsets, just after it has read more
//!   (windows open, alerts possibly fired since the last checkpoint), and
//!   (c) at a seeded random moment while a chunk is being produced and
//!   read (possibly during a checkpoint write); then it is stopped
//!   gracefully (d, SIGTERM, as a rolling upgrade does): it must exit
//!   within 5 s having committed everything it read.
//!
//! Then, read back with an independent consumer from `alert-events`:
//! every alert id of run B is on the topic exactly once; run B's alerts
//! (rule, patient, window, values, what the explanation counts) are run
//! A's; run A's alerts of the three cooldown-free rules are what a brute
//! force evaluation of the generated readings says (so the reference is
//! itself right, and not empty). Run B's alert history (`GET /api/alerts`)
//! holds each id once: its fired alerts are those on the topic, and with
//! the suppressed ones it equals run A's history. The checkpoint and
//! restore metrics are exported, and each restart reads again within 2 s
//! of the process starting (the servers read by assignment, `[kafka]
//! partitions = []`, so no group join is waited for).
//!
//! Event-time results only: the idle-partition timeout and the quiet close
//! act on processing time (how long the stream paused, which differs
//! between a run that is killed and one that is not), so both runs turn
//! them off (`idle_timeout_ms` an hour, `quiet_close_ms = 0`) and a
//! trailing event on every partition, ten minutes past the stream, closes
//! every window. With those, the alerts are a function of each partition's
//! sequence of events, which both runs read from the same topic.
//!
//! `WARDWATCH_CRASH_SEED=<u64>` replays another stream and other kill
//! moments.

mod common;

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
use wardwatch_test_support::{recent_ms, Broker};

const PARTITIONS: i32 = 4;
const PATIENTS: usize = 32;
/// Event time the stream spans; one chunk per minute.
const MINUTES: i64 = 20;
const READING_EVERY_MS: i64 = 4_000;
const MINUTE_MS: i64 = 60_000;
const DEFAULT_SEED: u64 = 13_2026;
const ALERT_TOPIC: &str = "alert-events";
/// Restart (process start, restore included) to first event read.
const RESTART_BOUND: Duration = Duration::from_secs(2);

// The rules. Thresholds with four decimals: an average of readings given
// to a tenth over fewer than 1,000 readings can never equal them, so
// float rounding cannot decide an alert differently here and in the
// brute force evaluation.
const HR_TUMBLE: &str = "HR high (1 min)";
const HR_TUMBLE_SQL: &str = "SELECT patient_id, AVG(heart_rate_bpm) AS avg_hr, COUNT(*) AS n
FROM vitals
GROUP BY TUMBLE(event_time, INTERVAL '1' MINUTE), patient_id
HAVING AVG(heart_rate_bpm) > 100.0123";
const DESAT_HOP: &str = "Desaturation (3 min every minute)";
const DESAT_HOP_SQL: &str =
    "SELECT patient_id, MIN(spo2_pct) AS min_spo2, MAX(respiration_rate) AS max_rr,
       COUNT(*) AS n
FROM vitals
GROUP BY HOP(event_time, INTERVAL '1' MINUTE, INTERVAL '3' MINUTE), patient_id
HAVING MIN(spo2_pct) < 90";
const TACHY_SESSION: &str = "Tachycardia episode";
const TACHY_SESSION_SQL: &str = "SELECT patient_id, COUNT(*) AS n, MAX(heart_rate_bpm) AS max_hr
FROM vitals WHERE heart_rate_bpm > 110
GROUP BY SESSION(event_time, INTERVAL '30' SECOND), patient_id
HAVING COUNT(*) >= 3";
const HR_PAGED: &str = "HR high, paged every 5 min";
const HR_PAGED_SQL: &str = "SELECT patient_id, AVG(heart_rate_bpm) AS avg_hr
FROM vitals
GROUP BY TUMBLE(event_time, INTERVAL '30' SECOND), patient_id
HAVING AVG(heart_rate_bpm) > 105.0123";

/// (name, SQL, cooldown seconds), created in this order on both servers.
const RULES: [(&str, &str, u64); 4] = [
    (HR_TUMBLE, HR_TUMBLE_SQL, 0),
    (DESAT_HOP, DESAT_HOP_SQL, 0),
    (TACHY_SESSION, TACHY_SESSION_SQL, 0),
    (HR_PAGED, HR_PAGED_SQL, 300),
];

// ------------------------------------------------------------ processes

/// The logs of every process of the test, the last lines of each.
#[derive(Default)]
struct Logs(Vec<(String, PathBuf)>);

impl Logs {
    fn add(&mut self, what: &str, process: &common::Running) {
        self.0.push((what.to_string(), process.log.clone()));
    }

    fn dump(&self) -> String {
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

/// The config of run `name`, its data directory and its consumer group.
///
/// Partitions by assignment (`partitions = []`: all of them), offsets
/// committed under the group: a restarted process reads again at once,
/// with no group join to wait for.
fn write_config(dir: &Path, name: &str, bootstrap: &str) -> (PathBuf, PathBuf, String) {
    let config = dir.join(format!("{name}.toml"));
    let group = format!("crash-recovery-{name}");
    std::fs::write(
        &config,
        format!(
            "[kafka]\n\
             brokers = \"{bootstrap}\"\n\
             group_id = \"{group}\"\n\
             partitions = []\n\
             fetch_wait_max_ms = 10\n\
             [pipeline]\n\
             checkpoint_interval_ms = 500\n\
             quiet_close_ms = 0\n\
             idle_timeout_ms = 3600000\n\
             [archive]\n\
             flush_interval_ms = 1500\n"
        ),
    )
    .unwrap();
    (config, dir.join(format!("{name}-data")), group)
}

async fn metrics(http: &reqwest::Client, p: &common::Running) -> Option<HashMap<String, f64>> {
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
fn metric(m: &HashMap<String, f64>, name: &str) -> Option<f64> {
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
fn metric_present(m: &HashMap<String, f64>, name: &str) -> bool {
    m.keys().any(|k| {
        k == name
            || k.starts_with(&format!("{name}{{"))
            || ["_bucket", "_sum", "_count"]
                .iter()
                .any(|s| k.starts_with(&format!("{name}{s}")))
    })
}

async fn wait_healthy(http: &reqwest::Client, p: &common::Running, logs: &Logs) {
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
async fn wait_metric(
    http: &reqwest::Client,
    p: &common::Running,
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

async fn create_rules(
    http: &reqwest::Client,
    p: &common::Running,
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
struct Reading {
    patient: String,
    partition: i32,
    ts: i64,
    hr: f64,
    spo2: f64,
    rr: f64,
    systolic: f64,
    diastolic: f64,
    device: &'static str,
    seq: u32,
}

impl Reading {
    fn message(&self) -> Msg {
        Msg {
            partition: self.partition,
            key: self.patient.clone(),
            payload: json!({
                "hospital_id": "H01", "patient_id": self.patient,
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
struct Msg {
    partition: i32,
    key: String,
    payload: String,
}

struct Stream {
    /// Every valid reading once, in event-time order.
    readings: Vec<Reading>,
    /// What is produced: one chunk per minute of event time, in order
    /// within each partition, with duplicates and malformed payloads.
    chunks: Vec<Vec<Msg>>,
    /// One reading per partition, ten minutes past the stream.
    trailers: Vec<Msg>,
    duplicates: usize,
    malformed: usize,
}

fn tenth(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// The stream: patient `i` on partition `i % 4` (every partition carries
/// patients), one reading every 4 s at a per-patient phase, heart rate in
/// 30-second blocks that are tachycardic now and then (and tend to stay
/// so), SpO2 below 90 % in about one reading in 250.
fn generate(seed: u64, t0: i64) -> Stream {
    let mut rng = StdRng::seed_from_u64(seed);
    let devices = ["BEDSIDE", "PORTABLE", "AMBULATORY"];
    let mut readings = vec![];
    for i in 0..PATIENTS {
        let patient = format!("P{i:02}");
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
async fn produce(producer: &FutureProducer, msgs: &[Msg]) {
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
fn number(v: &Value) -> String {
    match v {
        Value::Number(n) if n.is_i64() || n.is_u64() => n.to_string(),
        Value::Number(n) => format!("{:.6}", n.as_f64().unwrap_or(f64::NAN)),
        other => other.to_string(),
    }
}

/// What an alert says, independent of rule ids (which differ between the
/// two servers) and of when it fired.
fn identity(
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
fn brute_force(readings: &[Reading]) -> BTreeSet<String> {
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
struct Seen {
    id: String,
    rule_id: String,
    rule_name: String,
    status: String,
    /// [`identity`].
    identity: String,
    /// `identity` with what the explanation counts: events, first and
    /// last event time, and whether late.
    full: String,
}

fn seen(v: &Value) -> Seen {
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
fn read_alert_topic(bootstrap: &str) -> Vec<Value> {
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
        .expect("a reader of alert-events");
    let (_, end) = consumer
        .fetch_watermarks(ALERT_TOPIC, 0, Duration::from_secs(10))
        .expect("the end of alert-events");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(ALERT_TOPIC, 0, Offset::Beginning)
        .unwrap();
    consumer.assign(&tpl).expect("assigning alert-events");
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
            "read only up to offset {next} of {end} on {ALERT_TOPIC} in 30 s"
        );
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                next = m.offset() + 1;
                quiet = 0;
                let payload = m.payload().unwrap_or_default();
                let alert: Value = serde_json::from_slice(payload).unwrap_or_else(|e| {
                    panic!(
                        "an alert on {ALERT_TOPIC} is not JSON ({e}): {}",
                        String::from_utf8_lossy(payload)
                    )
                });
                out.push(alert);
            }
            Some(Err(e)) => panic!("reading {ALERT_TOPIC}: {e}"),
            None if next >= end => quiet += 1,
            None => {}
        }
    }
    out
}

/// (committed, end) offsets of `vitals`, summed over its partitions, for
/// `group`.
fn committed_and_end(bootstrap: &str, group: &str) -> (i64, i64) {
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

async fn offsets(bootstrap: &str, group: &str) -> (i64, i64) {
    let (bootstrap, group) = (bootstrap.to_string(), group.to_string());
    tokio::task::spawn_blocking(move || committed_and_end(&bootstrap, &group))
        .await
        .unwrap()
}

/// Waits until `group` has committed at least `want` offsets of `vitals`
/// (`None`: all of them, up to the end).
async fn wait_committed(
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

async fn history(http: &reqwest::Client, p: &common::Running) -> Option<Vec<Value>> {
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
fn counted<'a>(items: impl Iterator<Item = &'a String>) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for i in items {
        *out.entry(i.clone()).or_insert(0) += 1;
    }
    out
}

/// The differences between two multisets, at most 25 lines each way.
fn diff(
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

fn per_rule(alerts: &[Seen]) -> BTreeMap<String, usize> {
    counted(alerts.iter().map(|a| &a.rule_name))
}

// ----------------------------------------------------------------- test

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_any_moment_neither_loses_splits_nor_repeats_an_alert() {
    let seed = std::env::var("WARDWATCH_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_SEED);
    println!("seed {seed} (WARDWATCH_CRASH_SEED replays another)");
    let broker = Broker::start().expect("the test broker must start");
    for (topic, partitions) in [("vitals", PARTITIONS), (ALERT_TOPIC, 1), ("vitals-dlq", 1)] {
        broker.create_topic(topic, partitions).await.unwrap();
    }
    let bootstrap = broker.bootstrap.clone();
    let dir = tempfile::tempdir().unwrap();
    // Recent event time, on a minute: inside retention, never in the future.
    let t0 = recent_ms(MINUTE_MS, 60);
    let stream = generate(seed, t0);
    let expected = brute_force(&stream.readings);
    println!(
        "stream: t0 {t0} (chunk c: event time t0 + [c, c + 1) min), {} readings, {} duplicates, \
         {} malformed, {} chunks; brute force: {} alerts of the cooldown-free rules",
        stream.readings.len(),
        stream.duplicates,
        stream.malformed,
        stream.chunks.len(),
        expected.len()
    );
    assert!(
        !expected.is_empty(),
        "the generated stream must make the rules fire (seed {seed})"
    );

    let (config_a, data_a, group_a) = write_config(dir.path(), "a", &bootstrap);
    let (config_b, data_b, group_b) = write_config(dir.path(), "b", &bootstrap);
    let http = reqwest::Client::new();
    let mut logs = Logs::default();
    let producer: FutureProducer = broker
        .client_config()
        .set("linger.ms", "5")
        .create()
        .unwrap();
    // The kill moments, from the seed too.
    let mut rng = StdRng::seed_from_u64(seed ^ 0x6b69_6c6c);
    let mut restarts: Vec<(&str, Duration)> = vec![];
    let mut resuppressed = 0.0;

    // Both servers up, the same rules in the same order, before any event.
    let a = common::spawn_with_config(&config_a, &data_a);
    logs.add("run A", &a);
    let mut b = common::spawn_with_config(&config_b, &data_b);
    logs.add("run B, first start", &b);
    wait_healthy(&http, &a, &logs).await;
    wait_healthy(&http, &b, &logs).await;
    let rules_a = create_rules(&http, &a, &logs).await;
    let rules_b = create_rules(&http, &b, &logs).await;
    println!("rules: A {rules_a:?}, B {rules_b:?}");

    // (a) Killed as soon as it has read its first events.
    produce(&producer, &stream.chunks[0]).await;
    let ms = Duration::from_millis(5);
    let minute = Duration::from_secs(60);
    wait_metric(
        &http,
        &b,
        "wardwatch_events_in_total",
        1.0,
        minute,
        ms,
        &logs,
    )
    .await;
    drop(b);
    println!("kill (a): after the first events read");
    produce(&producer, &stream.chunks[1]).await;
    b = common::spawn_with_config(&config_b, &data_b);
    logs.add("run B after kill (a)", &b);
    let first = wait_metric(
        &http,
        &b,
        "wardwatch_events_in_total",
        1.0,
        minute,
        ms,
        &logs,
    )
    .await;
    restarts.push(("after kill (a)", first));

    // (b) Mid-stream: after several checkpoints and a commit, just after
    // it has read more.
    for chunk in &stream.chunks[2..=7] {
        produce(&producer, chunk).await;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let every_100ms = Duration::from_millis(100);
    wait_metric(
        &http,
        &b,
        "wardwatch_checkpoints_total",
        3.0,
        Duration::from_secs(30),
        every_100ms,
        &logs,
    )
    .await;
    wait_committed(
        &bootstrap,
        &group_b,
        Some(1),
        Duration::from_secs(30),
        &logs,
    )
    .await;
    let m = metrics(&http, &b).await.unwrap_or_default();
    resuppressed += metric(&m, "wardwatch_alerts_resuppressed_total").unwrap_or(0.0);
    let read = metric(&m, "wardwatch_events_in_total").unwrap_or(0.0);
    produce(&producer, &stream.chunks[8]).await;
    wait_metric(
        &http,
        &b,
        "wardwatch_events_in_total",
        read + 1.0,
        minute,
        ms,
        &logs,
    )
    .await;
    drop(b);
    println!(
        "kill (b): after {} checkpoints and a commit, mid-chunk 8",
        metric(&m, "wardwatch_checkpoints_total").unwrap_or(0.0)
    );
    produce(&producer, &stream.chunks[9]).await;
    b = common::spawn_with_config(&config_b, &data_b);
    logs.add("run B after kill (b)", &b);
    let first = wait_metric(
        &http,
        &b,
        "wardwatch_events_in_total",
        1.0,
        minute,
        ms,
        &logs,
    )
    .await;
    restarts.push(("after kill (b)", first));

    // (c) At a random moment while a chunk is produced and read.
    let k = rng.gen_range(11..=15usize);
    let delay = Duration::from_millis(rng.gen_range(0..400));
    for chunk in &stream.chunks[10..k] {
        produce(&producer, chunk).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let m = metrics(&http, &b).await.unwrap_or_default();
    resuppressed += metric(&m, "wardwatch_alerts_resuppressed_total").unwrap_or(0.0);
    let producing = {
        let (producer, chunk) = (producer.clone(), stream.chunks[k].clone());
        tokio::spawn(async move { produce(&producer, &chunk).await })
    };
    tokio::time::sleep(delay).await;
    drop(b);
    println!("kill (c): {delay:?} into producing chunk {k}");
    producing.await.unwrap();
    produce(&producer, &stream.chunks[k + 1]).await;
    b = common::spawn_with_config(&config_b, &data_b);
    logs.add("run B after kill (c)", &b);
    let first = wait_metric(
        &http,
        &b,
        "wardwatch_events_in_total",
        1.0,
        minute,
        ms,
        &logs,
    )
    .await;
    restarts.push(("after kill (c)", first));

    // (d) A graceful stop (SIGTERM), as a rolling upgrade does: the last
    // checkpoint and commit cover everything read, and the process exits
    // within seconds.
    produce(&producer, &stream.chunks[k + 2]).await;
    let read_so_far: usize = stream.chunks[..=k + 2].iter().map(Vec::len).sum();
    let m = metrics(&http, &b).await.unwrap_or_default();
    let read = metric(&m, "wardwatch_events_in_total").unwrap_or(0.0);
    wait_metric(
        &http,
        &b,
        "wardwatch_events_in_total",
        read + 1.0,
        minute,
        ms,
        &logs,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let m = metrics(&http, &b).await.unwrap_or_default();
    resuppressed += metric(&m, "wardwatch_alerts_resuppressed_total").unwrap_or(0.0);
    let stopping = Instant::now();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &b.child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill -TERM failed");
    let exit = loop {
        if let Some(exit) = b.child.try_wait().expect("waiting for the server") {
            break exit;
        }
        assert!(
            stopping.elapsed() < Duration::from_secs(10),
            "the server did not exit within 10 s of SIGTERM; logs:{}",
            logs.dump()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let stop_took = stopping.elapsed();
    println!("graceful stop (d): exited {exit} {stop_took:?} after SIGTERM");
    assert!(
        exit.success() && stop_took < Duration::from_secs(5),
        "SIGTERM: exit {exit} after {stop_took:?}; logs:{}",
        logs.dump()
    );
    // Committed at once on the way out: nothing read is read again.
    wait_committed(
        &bootstrap,
        &group_b,
        Some(read_so_far as i64),
        Duration::from_secs(2),
        &logs,
    )
    .await;
    b = common::spawn_with_config(&config_b, &data_b);
    logs.add("run B after a graceful stop (d)", &b);

    // The rest of the stream, then every partition far ahead.
    for chunk in &stream.chunks[k + 3..] {
        produce(&producer, chunk).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    produce(&producer, &stream.trailers).await;

    // Both runs have checkpointed and committed everything (a checkpoint
    // covers only alerts Kafka has confirmed), and nothing more arrives.
    // Counted from what was produced: tansu reports a partition's end as
    // its newest record batch's base + 1, short of the true end.
    let produced =
        (stream.chunks.iter().map(Vec::len).sum::<usize>() + stream.trailers.len()) as i64;
    wait_committed(&bootstrap, &group_a, Some(produced), minute, &logs).await;
    wait_committed(&bootstrap, &group_b, Some(produced), minute, &logs).await;
    let read_topic = || {
        let bootstrap = bootstrap.clone();
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
            "alerts still arrive on {ALERT_TOPIC} 30 s after both runs committed everything \
             ({} then {}); logs:{}",
            on_topic.len(),
            again.len(),
            logs.dump()
        );
        on_topic = again;
        if settled {
            break;
        }
    }
    let topic: Vec<Seen> = on_topic.iter().map(seen).collect();
    let topic_a: Vec<Seen> = topic
        .iter()
        .filter(|s| rules_a.contains_key(&s.rule_id))
        .cloned()
        .collect();
    let topic_b: Vec<Seen> = topic
        .iter()
        .filter(|s| rules_b.contains_key(&s.rule_id))
        .cloned()
        .collect();
    let others = topic.len() - topic_a.len() - topic_b.len();
    println!(
        "{ALERT_TOPIC}: {} alerts of run A {:?}, {} of run B {:?}, {others} of neither",
        topic_a.len(),
        per_rule(&topic_a),
        topic_b.len(),
        per_rule(&topic_b)
    );
    for (label, d) in &restarts {
        println!("restart {label}: process start to first event read {d:?}");
    }
    // What each run's (last) process counted, to read a failure by.
    for (run, p) in [("A", &a), ("B (last process)", &b)] {
        let m = metrics(&http, p).await.unwrap_or_default();
        let counts: Vec<String> = [
            "wardwatch_events_in_total",
            "wardwatch_events_duplicate_total",
            "wardwatch_events_late_total",
            "wardwatch_events_rejected_total",
            "wardwatch_alerts_fired_total",
            "wardwatch_alerts_suppressed_total",
            "wardwatch_alerts_resuppressed_total",
            "wardwatch_checkpoints_total",
        ]
        .iter()
        .map(|n| {
            format!(
                "{}={}",
                n.trim_start_matches("wardwatch_"),
                metric(&m, n).map_or("-".into(), |v| v.to_string())
            )
        })
        .collect();
        println!("run {run}: {}", counts.join(" "));
    }

    // The reference is right: the cooldown-free rules as brute force says.
    let free: BTreeSet<&str> = [HR_TUMBLE, DESAT_HOP, TACHY_SESSION].into();
    let a_free = counted(
        topic_a
            .iter()
            .filter(|s| free.contains(s.rule_name.as_str()))
            .map(|s| &s.identity),
    );
    let want = counted(expected.iter());
    assert!(
        a_free == want,
        "run A (never killed) does not alert as the brute force evaluation of the stream says \
         (seed {seed}):{}\nlogs:{}",
        diff("brute force", &want, "run A", &a_free),
        logs.dump()
    );
    assert!(
        topic_a.iter().all(|s| s.status == "fired"),
        "only fired alerts go to {ALERT_TOPIC}"
    );

    // Every alert id of run B on the topic exactly once.
    let ids_b = counted(topic_b.iter().map(|s| &s.id));
    let repeated: Vec<(&String, &usize)> = ids_b.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        repeated.is_empty(),
        "{} alert ids of run B reached {ALERT_TOPIC} more than once (seed {seed}): {:?}\nlogs:{}",
        repeated.len(),
        repeated.iter().take(25).collect::<Vec<_>>(),
        logs.dump()
    );
    let ids_a = counted(topic_a.iter().map(|s| &s.id));
    assert!(
        ids_a.values().all(|n| *n == 1),
        "run A delivered an alert id twice"
    );

    // Run B alerts as run A: nothing lost, split or added across the kills.
    let full_a = counted(topic_a.iter().map(|s| &s.full));
    let full_b = counted(topic_b.iter().map(|s| &s.full));
    assert!(
        full_a == full_b,
        "run B (killed three times) alerts differently from run A (seed {seed}):{}\nlogs:{}",
        diff("run A", &full_a, "run B", &full_b),
        logs.dump()
    );

    // Run B's history: each id once; its fired alerts are those on the
    // topic; with the suppressed ones it is run A's history.
    let topic_ids_b: BTreeSet<String> = ids_b.keys().cloned().collect();
    let topic_ids_a: BTreeSet<String> = ids_a.keys().cloned().collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    let (history_a, history_b) = loop {
        let ha = history(&http, &a).await.unwrap_or_default();
        let hb = history(&http, &b).await.unwrap_or_default();
        let ha: Vec<Seen> = ha
            .iter()
            .map(seen)
            .filter(|s| rules_a.contains_key(&s.rule_id))
            .collect();
        let hb: Vec<Seen> = hb
            .iter()
            .map(seen)
            .filter(|s| rules_b.contains_key(&s.rule_id))
            .collect();
        let fired = |h: &[Seen]| -> BTreeSet<String> {
            h.iter()
                .filter(|s| s.status == "fired")
                .map(|s| s.id.clone())
                .collect()
        };
        if (fired(&hb) == topic_ids_b && fired(&ha) == topic_ids_a && hb.len() >= ha.len())
            || Instant::now() > deadline
        {
            break (ha, hb);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let history_ids_b = counted(history_b.iter().map(|s| &s.id));
    let twice: Vec<(&String, &usize)> = history_ids_b.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "{} alert ids are in run B's history more than once (seed {seed}): {:?}\nlogs:{}",
        twice.len(),
        twice.iter().take(25).collect::<Vec<_>>(),
        logs.dump()
    );
    let fired_history_b: BTreeMap<String, usize> = counted(
        history_b
            .iter()
            .filter(|s| s.status == "fired")
            .map(|s| &s.id),
    );
    assert!(
        fired_history_b == ids_b,
        "run B's history (fired) and {ALERT_TOPIC} differ (seed {seed}):{}\nlogs:{}",
        diff(ALERT_TOPIC, &ids_b, "history", &fired_history_b),
        logs.dump()
    );
    let with_status = |h: &[Seen]| -> BTreeMap<String, usize> {
        let lines: Vec<String> = h
            .iter()
            .map(|s| format!("{} | {}", s.full, s.status))
            .collect();
        counted(lines.iter())
    };
    let (status_a, status_b) = (with_status(&history_a), with_status(&history_b));
    let suppressed = history_a
        .iter()
        .filter(|s| s.status == "suppressed")
        .count();
    println!(
        "history: run A {} alerts ({suppressed} suppressed), run B {}",
        history_a.len(),
        history_b.len()
    );
    assert!(
        status_a == status_b,
        "run B's alert history differs from run A's (seed {seed}):{}\nlogs:{}",
        diff("run A", &status_a, "run B", &status_b),
        logs.dump()
    );

    // The checkpoint and restore metrics of the last restarted process.
    let m = metrics(&http, &b).await.unwrap_or_default();
    resuppressed += metric(&m, "wardwatch_alerts_resuppressed_total").unwrap_or(0.0);
    println!(
        "metrics of run B's last process: checkpoints {:?}, bytes {:?}, duration {:?}, age {:?}, \
         restore {:?}; alerts re-suppressed after restores, all processes: {resuppressed}",
        metric(&m, "wardwatch_checkpoints_total"),
        metric(&m, "wardwatch_checkpoint_bytes"),
        metric(&m, "wardwatch_checkpoint_duration_seconds"),
        metric(&m, "wardwatch_checkpoint_age_seconds"),
        metric(&m, "wardwatch_restore_seconds"),
    );
    for name in [
        "wardwatch_checkpoints_total",
        "wardwatch_checkpoint_bytes",
        "wardwatch_checkpoint_duration_seconds",
        "wardwatch_checkpoint_age_seconds",
        "wardwatch_restore_seconds",
        "wardwatch_alerts_resuppressed_total",
    ] {
        assert!(metric_present(&m, name), "/metrics has no {name}");
    }
    for name in ["wardwatch_checkpoints_total", "wardwatch_checkpoint_bytes"] {
        assert!(
            metric(&m, name).unwrap_or(0.0) > 0.0,
            "{name} is {:?} after a run with checkpoints every 500 ms",
            metric(&m, name)
        );
    }
    // Per partition, how far its events are behind the server clock (the
    // stream is about an hour old) and, when librdkafka has reported it,
    // the consumer's lag.
    for p in 0..PARTITIONS {
        let lag = m
            .get(&format!(
                "wardwatch_partition_event_lag_seconds{{partition=\"{p}\"}}"
            ))
            .copied();
        assert!(
            lag.is_some_and(|s| (0.0..7_200.0).contains(&s)),
            "partition {p}: event lag {lag:?} s"
        );
        println!(
            "partition {p}: event lag {lag:?} s, consumer lag {:?}",
            m.get(&format!(
                "wardwatch_partition_consumer_lag{{partition=\"{p}\"}}"
            ))
        );
    }
    for (label, d) in &restarts {
        assert!(
            *d < RESTART_BOUND,
            "restart {label}: {d:?} from process start to the first event read; logs:{}",
            logs.dump()
        );
    }
    drop(a);
    drop(b);
}

/// The generated stream and the brute force evaluation are what the engine
/// computes when nothing is killed and there is no Kafka (`POST
/// /api/ingest`, one partition): if this fails, the oracle of the test
/// above (or the engine's windows) is wrong, not crash recovery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_brute_force_evaluation_is_what_the_engine_computes_without_a_crash() {
    let seed = std::env::var("WARDWATCH_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_SEED);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("embedded.toml");
    std::fs::write(
        &config,
        "[pipeline]\nquiet_close_ms = 0\nidle_timeout_ms = 3600000\n",
    )
    .unwrap();
    let t0 = recent_ms(MINUTE_MS, 60);
    let stream = generate(seed, t0);
    let expected = counted(brute_force(&stream.readings).iter());
    let http = reqwest::Client::new();
    let mut logs = Logs::default();
    let server = common::spawn_with_config(&config, &dir.path().join("data"));
    logs.add("embedded server", &server);
    wait_healthy(&http, &server, &logs).await;
    let rules = create_rules(&http, &server, &logs).await;
    for chunk in stream.chunks.iter().chain([&stream.trailers]) {
        let body: Vec<&str> = chunk.iter().map(|m| m.payload.as_str()).collect();
        let r = http
            .post(format!("{}/api/ingest", server.url))
            .header("content-type", "application/x-ndjson")
            .body(body.join("\n"))
            .send()
            .await
            .expect("POST /api/ingest");
        assert_eq!(r.status(), 202, "POST /api/ingest; logs:{}", logs.dump());
    }
    let free: BTreeSet<&str> = [HR_TUMBLE, DESAT_HOP, TACHY_SESSION].into();
    let deadline = Instant::now() + Duration::from_secs(30);
    let got = loop {
        let alerts: Vec<Seen> = history(&http, &server)
            .await
            .unwrap_or_default()
            .iter()
            .map(seen)
            .filter(|s| rules.contains_key(&s.rule_id) && free.contains(s.rule_name.as_str()))
            .collect();
        let got = counted(alerts.iter().map(|s| &s.identity));
        if got == expected || Instant::now() > deadline {
            println!(
                "embedded: {} alerts of the cooldown-free rules {:?}",
                alerts.len(),
                per_rule(&alerts)
            );
            break got;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!(
        got == expected,
        "the engine and the brute force evaluation disagree (seed {seed}):{}\nlogs:{}",
        diff("brute force", &expected, "engine", &got),
        logs.dump()
    );
}
