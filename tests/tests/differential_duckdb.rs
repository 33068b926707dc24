//! Differential test: the streaming engine against DuckDB.
//!
//! A messy two-hour stream of bedside vitals (bursts, silences, nulls,
//! out-of-order and late events, duplicates, malformed payloads) is
//! partitioned by patient like the Kafka topic, decoded by the server's JSON
//! decoder, and pushed through `sql_rules::Engine` in skewed, randomly sized
//! per-partition chunks, several times, cut differently. Every event the
//! decoder accepted is written to a CSV, and `oracle/duckdb_windows.py`
//! computes the same windows in batch SQL from the engine's documented
//! semantics (lateness per partition in arrival order, HOP/SESSION
//! membership, exact decimal sums). Alerts, window bounds, aggregate values
//! and per-rule late counts of every cut must equal the oracle's, and the
//! cuts must agree with each other (ids included).
//!
//! Two streams: a dense ward (~1000 patients, with a patient whose SpO2
//! averages exactly 90.0) and a sparse one (8 patients, whole minutes without
//! any event, one cut delivering every event as its own batch).
//!
//! Needs python3 with duckdb (`bash tests/run.sh` installs it); without them
//! the test fails, it does not skip. Set WARDWATCH_DIFF_KEEP=<dir> to keep
//! the events CSV and the oracle's JSON for debugging.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::process::Command;
use std::time::Instant;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{Float64Type, TimestampMillisecondType};
use arrow::record_batch::RecordBatch;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::{Map, Value};
use sql_rules::stream::{idx, vitals_schema};
use sql_rules::{Alert, CompiledRule, Engine, EngineConfig, RuleSpec};
use wardwatch::source::decode::VitalsDecoder;

/// 2026-01-01T00:00:00Z: minute (and 5-minute) aligned.
const T0: i64 = 1_767_225_600_000;
const DURATION_MS: i64 = 2 * 3600 * 1000;
const PATIENTS: usize = 1000;
const PARTITIONS: i32 = 4;

/// The patient whose SpO2 averages exactly 90.0 over every 5-minute window
/// that contains its one minute of readings.
const EXACT_PATIENT: &str = "P1001";
const EXACT_MINUTE: i64 = T0 + 30 * 60_000;
const EXACT_PAIRS: usize = 20;

const GENERATOR_SEED: u64 = 0x5EED_0001;
/// (cut seed, largest chunk read from one partition at a time).
const CUTS: [(u64, usize); 2] = [(101, 6_000), (202, 6_000)];

const SPARSE_PATIENTS: usize = 8;
const SPARSE_SEED: u64 = 0x5EED_0002;
/// (cut seed, largest chunk): one run delivers every event as its own batch.
const SPARSE_CUTS: [(u64, usize); 3] = [(7, 1), (8, 40), (9, 400)];

const RULES: &[(&str, &str)] = &[
    (
        "tachycardia",
        "SELECT patient_id, AVG(heart_rate_bpm) AS avg_hr, COUNT(*) AS n FROM vitals \
         WHERE heart_rate_bpm > 100 \
         GROUP BY TUMBLE(event_time, INTERVAL '60' SECOND), patient_id \
         HAVING COUNT(*) >= 5 AND AVG(heart_rate_bpm) > 110",
    ),
    (
        "hypoxemia_lt",
        "SELECT patient_id, AVG(spo2_pct) AS avg_spo2, COUNT(*) AS n FROM vitals \
         GROUP BY HOP(event_time, INTERVAL '1' MINUTE, INTERVAL '5' MINUTE), patient_id \
         HAVING AVG(spo2_pct) < 90 AND COUNT(*) >= 10",
    ),
    (
        "hypoxemia_le",
        "SELECT patient_id, AVG(spo2_pct) AS avg_spo2, COUNT(*) AS n FROM vitals \
         GROUP BY HOP(event_time, INTERVAL '1' MINUTE, INTERVAL '5' MINUTE), patient_id \
         HAVING AVG(spo2_pct) <= 90 AND COUNT(*) >= 10",
    ),
    (
        "hr_stats",
        "SELECT patient_id, MIN(heart_rate_bpm) AS min_hr, MAX(heart_rate_bpm) AS max_hr, \
         SUM(heart_rate_bpm) AS sum_hr, COUNT(heart_rate_bpm) AS n_hr, COUNT(*) AS n FROM vitals \
         GROUP BY TUMBLE(event_time, INTERVAL '5' MINUTE), patient_id",
    ),
    (
        "bradycardia",
        "SELECT patient_id, MAX(heart_rate_bpm) AS max_hr, COUNT(*) AS n FROM vitals \
         GROUP BY TUMBLE(event_time, INTERVAL '30' SECOND), patient_id \
         HAVING MAX(heart_rate_bpm) < 45",
    ),
    (
        "desat_session",
        "SELECT patient_id, COUNT(*) AS n, MIN(spo2_pct) AS lo FROM vitals WHERE spo2_pct < 92 \
         GROUP BY SESSION(event_time, INTERVAL '30' SECOND), patient_id HAVING COUNT(*) >= 3",
    ),
    (
        "spo2_critical",
        "SELECT patient_id, spo2_pct FROM vitals WHERE spo2_pct < 85",
    ),
];

const PER_EVENT_RULE: &str = "spo2_critical";
/// Value columns that are counts: compared exactly.
const COUNT_COLUMNS: &[&str] = &["n", "n_hr"];

// ---------------------------------------------------------------------------
// The stream

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Valid,
    Duplicate,
    Unparseable,
    MissingPatient,
    NegativeHeartRate,
    Spo2Over100,
}

impl Kind {
    fn malformed(self) -> bool {
        !matches!(self, Kind::Valid | Kind::Duplicate)
    }
}

struct Msg {
    part: i32,
    arrival: i64,
    order: u64,
    kind: Kind,
    payload: String,
}

struct Stream {
    /// Per partition, in arrival order.
    parts: Vec<Vec<Msg>>,
    kinds: BTreeMap<Kind, usize>,
    delayed: usize,
    out_of_order: usize,
}

impl Stream {
    fn malformed(&self) -> usize {
        self.kinds
            .iter()
            .filter(|(k, _)| k.malformed())
            .map(|(_, n)| n)
            .sum()
    }
}

/// Kafka-like: a stable hash of the key picks the partition.
fn partition_of(patient: &str) -> i32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in patient.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % PARTITIONS as u64) as i32
}

/// A reading in tenths as JSON text with exactly one decimal.
fn tenths(v: i64) -> String {
    let sign = if v < 0 { "-" } else { "" };
    format!("{sign}{}.{}", v.abs() / 10, v.abs() % 10)
}

#[derive(Clone, Copy)]
struct Vital {
    ts: i64,
    hr: Option<i64>,
    spo2: Option<i64>,
    sys: Option<i64>,
}

fn payload(rng: &mut StdRng, patient: Option<&str>, seq: u32, v: &Vital) -> String {
    let mut s = String::with_capacity(200);
    s.push('{');
    let hospital = format!("H0{}", 1 + seq % 3);
    let _ = write!(s, "\"hospital_id\":\"{hospital}\",");
    if let Some(p) = patient {
        let _ = write!(s, "\"patient_id\":\"{p}\",");
    }
    let _ = write!(s, "\"timestamp_unix_ms\":{}", v.ts);
    for (name, value) in [
        ("heart_rate_bpm", v.hr),
        ("spo2_pct", v.spo2),
        ("systolic_bp_mmhg", v.sys),
    ] {
        match value {
            Some(x) => {
                let _ = write!(s, ",\"{name}\":{}", tenths(x));
            }
            // A missing reading is sometimes explicit null, sometimes absent.
            None if rng.gen_bool(0.5) => {
                let _ = write!(s, ",\"{name}\":null");
            }
            None => {}
        }
    }
    let _ = write!(
        s,
        ",\"source_device\":\"BEDSIDE\",\"sequence_number\":{seq}}}"
    );
    s
}

fn noise(rng: &mut StdRng, scale: f64) -> f64 {
    // Roughly normal: sum of three uniforms.
    (rng.gen::<f64>() + rng.gen::<f64>() + rng.gen::<f64>() - 1.5) * scale
}

fn to_tenths(x: f64) -> i64 {
    (x * 10.0).round() as i64
}

/// One patient's readings, in event-time order: a heart-rate random walk
/// with tachycardia and bradycardia episodes, SpO2 with desaturations,
/// systolic pressure; bursts, silences and missing readings.
fn patient_vitals(rng: &mut StdRng) -> Vec<Vital> {
    let base_interval = rng.gen_range(5_000.0..40_000.0);
    let hr_base = rng.gen_range(60.0..95.0);
    let spo2_base = rng.gen_range(94.0..99.5);
    let sys_base = rng.gen_range(100.0..140.0);
    let (mut hr, mut spo2, mut sys) = (hr_base, spo2_base, sys_base);
    let (mut hr_target, mut hr_until, mut brady) = (hr_base, 0i64, false);
    let (mut spo2_target, mut spo2_until) = (spo2_base, 0i64);
    let mut burst = 0u32;
    let mut t = T0 + rng.gen_range(0..60_000);
    let mut out = vec![];
    while t < T0 + DURATION_MS {
        if t >= hr_until {
            hr_target = hr_base;
            brady = false;
            if rng.gen_bool(0.006) {
                brady = rng.gen_bool(0.3);
                hr_target = if brady {
                    rng.gen_range(40.0..43.0)
                } else {
                    rng.gen_range(115.0..160.0)
                };
                hr_until = t + rng.gen_range(60_000..600_000);
            }
        }
        if t >= spo2_until {
            spo2_target = spo2_base;
            if rng.gen_bool(0.005) {
                spo2_target = rng.gen_range(82.0..89.5);
                spo2_until = t + rng.gen_range(120_000..480_000);
            }
        }
        hr = (hr + (hr_target - hr) * 0.3 + noise(rng, if brady { 1.0 } else { 3.0 }))
            .clamp(40.0, 170.0);
        spo2 = (spo2 + (spo2_target - spo2) * 0.3 + noise(rng, 1.0)).clamp(80.0, 100.0);
        sys = (sys + (sys_base - sys) * 0.1 + noise(rng, 6.0)).clamp(70.0, 160.0);
        let reading = |rng: &mut StdRng, x: f64| {
            if rng.gen_bool(0.02) {
                None
            } else {
                Some(to_tenths(x))
            }
        };
        out.push(Vital {
            ts: t,
            hr: reading(rng, hr),
            spo2: reading(rng, spo2),
            sys: reading(rng, sys),
        });
        t += if burst > 0 {
            burst -= 1;
            rng.gen_range(100..400)
        } else if rng.gen_bool(0.006) {
            rng.gen_range(60_000..600_000) // silence: minutes
        } else if rng.gen_bool(0.01) {
            burst = rng.gen_range(5..30); // several events per second
            rng.gen_range(100..400)
        } else {
            (base_interval * rng.gen_range(0.5..1.5)) as i64
        };
    }
    out
}

/// SpO2 for the exact-90 patient: pairs 90+d / 90-d, shuffled so that a
/// naive f64 running sum in arrival order does NOT come out at exactly 3600.
fn exact_patient_spo2() -> Vec<i64> {
    for seed in 0.. {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut v = vec![];
        for _ in 0..EXACT_PAIRS {
            let d: i64 = rng.gen_range(1..=99);
            v.push(900 + d);
            v.push(900 - d);
        }
        v.shuffle(&mut rng);
        let naive: f64 = v.iter().map(|x| tenths(*x).parse::<f64>().unwrap()).sum();
        if naive != 90.0 * v.len() as f64 {
            return v;
        }
    }
    unreachable!()
}

/// The dense ward: ~1000 patients plus the exact-90 patient.
fn dense_patients(rng: &mut StdRng) -> Vec<(String, Vec<Vital>)> {
    let mut patients: Vec<(String, Vec<Vital>)> = (1..=PATIENTS)
        .map(|p| (format!("P{p:04}"), patient_vitals(rng)))
        .collect();
    let exact: Vec<Vital> = exact_patient_spo2()
        .into_iter()
        .enumerate()
        .map(|(i, s)| Vital {
            ts: EXACT_MINUTE + 700 + i as i64 * 1_400,
            hr: Some(750),
            spo2: Some(s),
            sys: Some(1200),
        })
        .collect();
    patients.push((EXACT_PATIENT.to_string(), exact));
    patients
}

/// A quiet ward: a few patients whose readings come in short clusters
/// separated by minutes of silence, so that whole minutes (panes) of the
/// stream are empty and windows close over nothing but old panes.
fn sparse_patients(rng: &mut StdRng) -> Vec<(String, Vec<Vital>)> {
    (1..=SPARSE_PATIENTS)
        .map(|p| {
            let mut out = vec![];
            let mut t = T0 + rng.gen_range(0..600_000);
            while t < T0 + DURATION_MS {
                // One cluster: normal, tachycardic, bradycardic or desaturated.
                let (hr, spo2) = match rng.gen_range(0..4) {
                    0 => (rng.gen_range(600..900), rng.gen_range(940..1000)),
                    1 => (rng.gen_range(1150..1500), rng.gen_range(920..990)),
                    2 => (rng.gen_range(400..440), rng.gen_range(930..990)),
                    _ => (rng.gen_range(700..1000), rng.gen_range(820..900)),
                };
                for _ in 0..rng.gen_range(1..40) {
                    let jitter = |rng: &mut StdRng, x: i64, lo: i64, hi: i64| {
                        if rng.gen_bool(0.03) {
                            None
                        } else {
                            Some((x + rng.gen_range(-15..=15)).clamp(lo, hi))
                        }
                    };
                    out.push(Vital {
                        ts: t,
                        hr: jitter(rng, hr, 400, 1700),
                        spo2: jitter(rng, spo2, 800, 1000),
                        sys: jitter(rng, 1200, 700, 1600),
                    });
                    t += rng.gen_range(200..5_000);
                }
                t += rng.gen_range(60_000..900_000);
                if rng.gen_bool(0.5) {
                    // Start the next cluster just after a minute boundary.
                    t = t - t.rem_euclid(60_000) + rng.gen_range(0..500);
                }
            }
            (format!("Q{p:03}"), out)
        })
        .collect()
}

/// Turns patients' readings into Kafka-like partitions: JSON payloads, some
/// delivered out of order (<= 400 ms) or late (5-60 s), some twice, plus
/// malformed messages; each partition in arrival order.
fn messy_stream(patients: &[(String, Vec<Vital>)], rng: &mut StdRng) -> Stream {
    let mut msgs: Vec<Msg> = vec![];
    let mut order = 0u64;
    let mut push = |msgs: &mut Vec<Msg>, part, arrival, kind, payload| {
        msgs.push(Msg {
            part,
            arrival,
            order,
            kind,
            payload,
        });
        order += 1;
    };
    let (mut delayed, mut out_of_order) = (0usize, 0usize);
    for (patient, vitals) in patients {
        let part = partition_of(patient);
        for (seq, v) in vitals.iter().enumerate() {
            let text = payload(rng, Some(patient), seq as u32, v);
            let r: f64 = if patient == EXACT_PATIENT {
                1.0
            } else {
                rng.gen()
            };
            let arrival = if r < 0.01 {
                out_of_order += 1;
                v.ts + rng.gen_range(1..=400)
            } else if r < 0.015 {
                delayed += 1;
                v.ts + rng.gen_range(5_000..=60_000)
            } else {
                v.ts
            };
            if patient != EXACT_PATIENT && rng.gen_bool(0.005) {
                push(
                    &mut msgs,
                    part,
                    arrival + rng.gen_range(0..=300),
                    Kind::Duplicate,
                    text.clone(),
                );
            }
            push(&mut msgs, part, arrival, Kind::Valid, text);
        }
    }

    let valid = msgs.len();
    let bad = (valid as f64 * 0.003).round() as usize;
    for _ in 0..bad.max(4) {
        let patient = patients[rng.gen_range(0..patients.len())].0.clone();
        let ts = T0 + rng.gen_range(0..DURATION_MS);
        let v = Vital {
            ts,
            hr: Some(rng.gen_range(500..1200)),
            spo2: Some(rng.gen_range(900..1000)),
            sys: Some(1200),
        };
        let kind = [
            Kind::Unparseable,
            Kind::MissingPatient,
            Kind::NegativeHeartRate,
            Kind::Spo2Over100,
        ][rng.gen_range(0..4)];
        let (part, text) = match kind {
            Kind::Unparseable => {
                let full = payload(rng, Some(&patient), 0, &v);
                let text = if rng.gen_bool(0.2) {
                    "not json at all".to_string()
                } else {
                    // Any proper prefix of a JSON object is not JSON.
                    full[..rng.gen_range(1..full.len())].to_string()
                };
                (partition_of(&patient), text)
            }
            Kind::MissingPatient => (rng.gen_range(0..PARTITIONS), payload(rng, None, 0, &v)),
            Kind::NegativeHeartRate => {
                let v = Vital {
                    hr: Some(-rng.gen_range(1..1000)),
                    ..v
                };
                (partition_of(&patient), payload(rng, Some(&patient), 0, &v))
            }
            Kind::Spo2Over100 => {
                let v = Vital {
                    spo2: Some(rng.gen_range(1001..1200)),
                    ..v
                };
                (partition_of(&patient), payload(rng, Some(&patient), 0, &v))
            }
            Kind::Valid | Kind::Duplicate => unreachable!(),
        };
        push(&mut msgs, part, ts, kind, text);
    }

    msgs.sort_by_key(|m| (m.arrival, m.order));
    let mut kinds = BTreeMap::new();
    let mut parts: Vec<Vec<Msg>> = (0..PARTITIONS).map(|_| vec![]).collect();
    for m in msgs {
        *kinds.entry(m.kind).or_insert(0) += 1;
        parts[m.part as usize].push(m);
    }
    Stream {
        parts,
        kinds,
        delayed,
        out_of_order,
    }
}

// ---------------------------------------------------------------------------
// The engine side

fn rule_specs() -> Vec<RuleSpec> {
    RULES
        .iter()
        .map(|(id, sql)| RuleSpec {
            id: id.to_string(),
            version: 1,
            name: id.to_string(),
            severity: "high".into(),
            cooldown_ms: 0,
            allowed_lateness_ms: None,
            keep_duplicates: false,
            escalation: None,
            compiled: CompiledRule::compile(sql, &vitals_schema())
                .unwrap_or_else(|e| panic!("rule {id} does not compile: {e}")),
        })
        .collect()
}

/// One accepted event as the decoder produced it.
struct Row {
    part: i32,
    arrival: u64,
    patient: String,
    ts: i64,
    /// Device sequence number: the engine drops repeats (duplicates).
    seq: Option<u32>,
    hr: Option<f64>,
    spo2: Option<f64>,
    sys: Option<f64>,
}

struct RunResult {
    alerts: Vec<Alert>,
    duplicates: u64,
    late: BTreeMap<String, u64>,
    rows: Vec<Row>,
    rejected: BTreeMap<Kind, usize>,
    decoder_problems: Vec<String>,
    chunks: usize,
    max_skew_ms: i64,
}

fn batch_rows(batch: &RecordBatch, part: i32, next_arrival: &mut u64, rows: &mut Vec<Row>) {
    let patients = batch.column(idx::PATIENT_ID).as_string::<i32>();
    let ts = batch
        .column(idx::EVENT_TIME)
        .as_primitive::<TimestampMillisecondType>();
    let reading = |i: usize, row: usize| {
        let a = batch.column(i).as_primitive::<Float64Type>();
        a.is_valid(row).then(|| a.value(row))
    };
    let seqs = batch
        .column(idx::SEQUENCE_NUMBER)
        .as_primitive::<arrow::datatypes::UInt32Type>();
    for r in 0..batch.num_rows() {
        rows.push(Row {
            seq: seqs.is_valid(r).then(|| seqs.value(r)),
            part,
            arrival: *next_arrival,
            patient: patients.value(r).to_string(),
            ts: ts.value(r),
            hr: reading(idx::HEART_RATE_BPM, r),
            spo2: reading(idx::SPO2_PCT, r),
            sys: reading(idx::SYSTOLIC_BP_MMHG, r),
        });
        *next_arrival += 1;
    }
}

/// Feeds the stream to a fresh engine: partitions read in random chunks with
/// skewed rates, so some partitions run minutes ahead of others.
fn run_engine(stream: &Stream, rules: &[RuleSpec], cut_seed: u64, max_chunk: usize) -> RunResult {
    let mut rng = StdRng::seed_from_u64(cut_seed);
    let mut engine = Engine::new(EngineConfig::default());
    for r in rules {
        engine.upsert_rule(r.clone()).expect("rule accepted");
    }
    let all: Vec<i32> = (0..PARTITIONS).collect();
    engine.assign_partitions(&all, 0);

    let mut weights: Vec<f64> = (0..PARTITIONS).map(|_| rng.gen_range(0.5..1.5)).collect();
    weights[rng.gen_range(0..PARTITIONS as usize)] *= 4.0;
    let mut cursor = vec![0usize; PARTITIONS as usize];
    let mut max_ts = vec![i64::MIN; PARTITIONS as usize];
    let mut next_arrival = vec![0u64; PARTITIONS as usize];
    let mut decoder = VitalsDecoder::new(8192);
    let mut result = RunResult {
        duplicates: 0,
        alerts: vec![],
        late: BTreeMap::new(),
        rows: vec![],
        rejected: BTreeMap::new(),
        decoder_problems: vec![],
        chunks: 0,
        max_skew_ms: 0,
    };
    loop {
        let open: Vec<usize> = (0..PARTITIONS as usize)
            .filter(|&p| cursor[p] < stream.parts[p].len())
            .collect();
        if open.is_empty() {
            break;
        }
        let total: f64 = open.iter().map(|&p| weights[p]).sum();
        let mut pick = rng.gen_range(0.0..total);
        let mut p = open[open.len() - 1];
        for &q in &open {
            if pick < weights[q] {
                p = q;
                break;
            }
            pick -= weights[q];
        }
        let size = if rng.gen_bool(0.25) {
            rng.gen_range(1..=64.min(max_chunk))
        } else {
            rng.gen_range(1..=max_chunk)
        };
        let end = (cursor[p] + size).min(stream.parts[p].len());
        for m in &stream.parts[p][cursor[p]..end] {
            match decoder.push_json(m.payload.as_bytes()) {
                Ok(()) if m.kind.malformed() => result
                    .decoder_problems
                    .push(format!("accepted a {:?} payload: {}", m.kind, m.payload)),
                Ok(()) => {}
                Err(_) if m.kind.malformed() => *result.rejected.entry(m.kind).or_insert(0) += 1,
                Err(r) => result.decoder_problems.push(format!(
                    "rejected a valid payload ({}): {}",
                    r.reason, m.payload
                )),
            }
        }
        cursor[p] = end;
        let batch = decoder.finish();
        batch_rows(&batch, p as i32, &mut next_arrival[p], &mut result.rows);
        if let Some(m) = batch
            .column(idx::EVENT_TIME)
            .as_primitive::<TimestampMillisecondType>()
            .values()
            .iter()
            .max()
        {
            max_ts[p] = max_ts[p].max(*m);
        }
        let out = engine.process(p as i32, &batch, 0).expect("engine.process");
        assert!(out.errors.is_empty(), "rule errors: {:?}", out.errors);
        result.alerts.extend(out.alerts);
        result.chunks += 1;
        if max_ts.iter().all(|t| *t > i64::MIN) {
            let ahead = *max_ts.iter().max().unwrap();
            let behind = (0..PARTITIONS as usize)
                .filter(|&q| cursor[q] < stream.parts[q].len())
                .map(|q| max_ts[q])
                .min();
            if let Some(behind) = behind {
                result.max_skew_ms = result.max_skew_ms.max(ahead - behind);
            }
        }
    }
    let out = engine
        .advance_watermark(i64::MAX / 4, 0)
        .expect("advance_watermark");
    assert!(out.errors.is_empty(), "rule errors: {:?}", out.errors);
    result.alerts.extend(out.alerts);
    for (id, _) in RULES {
        result.late.insert(
            id.to_string(),
            engine.rule_stats(id).expect("rule exists").late_events,
        );
    }
    result.duplicates = engine.duplicates();
    result
}

/// A canonical line per alert, for comparing runs.
fn canonical(alerts: &[Alert]) -> Vec<String> {
    let mut v: Vec<String> = alerts
        .iter()
        .map(|a| {
            format!(
                "{} {} {:?}-{:?} ev={} {:?} {} {}",
                a.rule_id,
                Value::Object(a.key.clone()),
                a.window_start_ms,
                a.window_end_ms,
                a.event_time_ms,
                a.status,
                Value::Object(a.values.clone()),
                a.id
            )
        })
        .collect();
    v.sort();
    v
}

// ---------------------------------------------------------------------------
// The oracle

fn write_csv(rows: &[Row], path: &std::path::Path) {
    let file = std::fs::File::create(path).expect("create csv");
    let mut w = std::io::BufWriter::new(file);
    writeln!(
        w,
        "part,arrival,patient_id,ts,seq,heart_rate_bpm,spo2_pct,systolic_bp_mmhg"
    )
    .unwrap();
    let fmt = |v: Option<f64>| -> String {
        match v {
            None => String::new(),
            Some(x) => {
                let s = x.to_string();
                assert!(
                    s.split('.').nth(1).map_or(0, str::len) <= 1,
                    "reading {s} has more than one decimal: the oracle's DECIMAL(18,1) would round it"
                );
                s
            }
        }
    };
    for r in rows {
        writeln!(
            w,
            "{},{},{},{},{},{},{},{}",
            r.part,
            r.arrival,
            r.patient,
            r.ts,
            r.seq.map(|s| s.to_string()).unwrap_or_default(),
            fmt(r.hr),
            fmt(r.spo2),
            fmt(r.sys)
        )
        .unwrap();
    }
    w.flush().unwrap();
}

fn run_oracle(csv: &std::path::Path, out: &std::path::Path) -> Map<String, Value> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/oracle/duckdb_windows.py");
    let output = Command::new("python3").arg(script).arg(csv).arg(out).output().unwrap_or_else(|e| {
        panic!("cannot run python3 ({e}); the DuckDB oracle needs python3 with the duckdb package: run `bash tests/run.sh`")
    });
    if !output.status.success() {
        panic!(
            "the DuckDB oracle failed ({}):\n{}\nIf python3 or duckdb is missing, run `bash tests/run.sh`.",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let text = std::fs::read_to_string(out).expect("oracle output");
    match serde_json::from_str(&text).expect("oracle output is JSON") {
        Value::Object(m) => m,
        other => panic!("oracle output is not an object: {other}"),
    }
}

// ---------------------------------------------------------------------------
// Comparison

type Entry = (Option<i64>, Map<String, Value>);

fn values_equal(name: &str, a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Null, Value::Null) => true,
        (Value::Number(x), Value::Number(y)) if COUNT_COLUMNS.contains(&name) => {
            x.as_i64().is_some() && x.as_i64() == y.as_i64()
        }
        (Value::Number(x), Value::Number(y)) => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            x == y || (x - y).abs() <= 1e-9 * x.abs().max(y.abs())
        }
        _ => false,
    }
}

fn entry_diff(a: &Entry, b: &Entry) -> Option<String> {
    let mut problems = vec![];
    if a.0 != b.0 {
        problems.push(format!("window_end engine {:?} oracle {:?}", a.0, b.0));
    }
    let names: std::collections::BTreeSet<&String> = a.1.keys().chain(b.1.keys()).collect();
    for name in names {
        let (x, y) = (
            a.1.get(name).unwrap_or(&Value::Null),
            b.1.get(name).unwrap_or(&Value::Null),
        );
        if !values_equal(name, x, y) {
            problems.push(format!("{name}: engine {x} oracle {y}"));
        }
    }
    (!problems.is_empty()).then(|| problems.join(", "))
}

/// Differences between the engine's and the oracle's output for one rule,
/// keyed by (patient, window start) or (patient, event time).
fn compare_rule(
    rule: &str,
    engine: BTreeMap<(String, i64), Vec<Entry>>,
    oracle: BTreeMap<(String, i64), Vec<Entry>>,
    report: &mut Vec<String>,
) {
    const SHOW: usize = 6;
    let (mut missing, mut extra, mut wrong) = (vec![], vec![], vec![]);
    let keys: std::collections::BTreeSet<&(String, i64)> =
        engine.keys().chain(oracle.keys()).collect();
    let empty = vec![];
    for key in keys {
        let mut e = engine.get(key).unwrap_or(&empty).clone();
        let mut o = oracle.get(key).unwrap_or(&empty).clone();
        let sort = |v: &mut Vec<Entry>| v.sort_by_key(|x| Value::Object(x.1.clone()).to_string());
        sort(&mut e);
        sort(&mut o);
        let label = format!("{} @ {} (T0{:+}ms)", key.0, key.1, key.1 - T0);
        if e.len() < o.len() {
            missing.push(format!(
                "{label}: oracle {:?}, engine has {} of {}",
                o[0].1,
                e.len(),
                o.len()
            ));
        } else if e.len() > o.len() {
            extra.push(format!(
                "{label}: engine {:?}, oracle has {} of {}",
                e[0].1,
                o.len(),
                e.len()
            ));
        } else {
            for (x, y) in e.iter().zip(&o) {
                if let Some(d) = entry_diff(x, y) {
                    wrong.push(format!("{label}: {d}"));
                    break;
                }
            }
        }
    }
    for (what, list) in [
        ("missing from engine", &missing),
        ("extra in engine", &extra),
        ("different values", &wrong),
    ] {
        if !list.is_empty() {
            let mut s = format!("[{rule}] {} {what}; first ones:", list.len());
            for l in list.iter().take(SHOW) {
                let _ = write!(s, "\n    {l}");
            }
            report.push(s);
        }
    }
}

fn engine_entries(
    alerts: &[Alert],
    rule: &str,
    report: &mut Vec<String>,
) -> BTreeMap<(String, i64), Vec<Entry>> {
    let mut m: BTreeMap<(String, i64), Vec<Entry>> = BTreeMap::new();
    // The oracle models on-time windows; late alerts (a late event that
    // turned a closed window's decision) are compared between cuts only.
    for a in alerts
        .iter()
        .filter(|a| a.rule_id == rule && !a.explanation.late)
    {
        let patient = a
            .key
            .get("patient_id")
            .and_then(Value::as_str)
            .unwrap_or("<none>")
            .to_string();
        let at = if rule == PER_EVENT_RULE {
            a.event_time_ms
        } else {
            match a.window_start_ms {
                Some(s) => s,
                None => {
                    report.push(format!("[{rule}] alert without window start: {a:?}"));
                    continue;
                }
            }
        };
        let end = if rule == PER_EVENT_RULE {
            None
        } else {
            a.window_end_ms
        };
        m.entry((patient, at))
            .or_default()
            .push((end, a.values.clone()));
    }
    m
}

fn oracle_entries(oracle: &Map<String, Value>, rule: &str) -> BTreeMap<(String, i64), Vec<Entry>> {
    let mut m: BTreeMap<(String, i64), Vec<Entry>> = BTreeMap::new();
    let rows = oracle
        .get(rule)
        .and_then(Value::as_array)
        .unwrap_or_else(|| panic!("oracle has no rule {rule}"));
    for r in rows {
        let patient = r["patient_id"].as_str().expect("patient_id").to_string();
        let (at, end) = if rule == PER_EVENT_RULE {
            (r["event_time_ms"].as_i64().expect("event_time_ms"), None)
        } else {
            (
                r["window_start_ms"].as_i64().expect("window_start_ms"),
                r["window_end_ms"].as_i64(),
            )
        };
        let values = r["values"].as_object().expect("values").clone();
        m.entry((patient, at)).or_default().push((end, values));
    }
    m
}

/// What a differential run must show beyond agreement.
struct Expect {
    /// Partitions drift minutes apart during delivery.
    skew: bool,
    /// Every rule alerts and every windowed rule sees late events.
    rich: bool,
}

/// Runs the stream through the engine once per cut seed and through DuckDB;
/// returns the first run and the disagreements (empty when all agree).
fn differential(
    label: &str,
    stream: &Stream,
    cuts: &[(u64, usize)],
    expect: Expect,
) -> (RunResult, Vec<String>) {
    let events: usize = stream.parts.iter().map(Vec::len).sum();
    let per_part: Vec<usize> = stream.parts.iter().map(Vec::len).collect();
    println!(
        "[{label}] {events} messages {per_part:?}: {:?}, {} out of order (<=400 ms), {} delayed 5-60 s",
        stream.kinds, stream.out_of_order, stream.delayed
    );
    assert!(stream.delayed > 0 && stream.out_of_order > 0 && stream.malformed() > 0);

    let rules = rule_specs();
    let mut runs = vec![];
    for &(seed, max_chunk) in cuts {
        let t = Instant::now();
        let run = run_engine(stream, &rules, seed, max_chunk);
        println!(
            "[{label}] engine run (cut seed {seed}, chunks <= {max_chunk}): {} chunks, max partition skew {:.1} min, {} alerts ({} late), {:.1}s",
            run.chunks,
            run.max_skew_ms as f64 / 60_000.0,
            run.alerts.len(),
            run.alerts.iter().filter(|a| a.explanation.late).count(),
            t.elapsed().as_secs_f64()
        );
        assert!(
            run.decoder_problems.is_empty(),
            "decoder disagreed with the generator:\n{}",
            run.decoder_problems.join("\n")
        );
        let rejected: usize = run.rejected.values().sum();
        assert_eq!(
            rejected,
            stream.malformed(),
            "rejected {:?}, generated {:?}",
            run.rejected,
            stream.kinds
        );
        if expect.skew {
            assert!(
                run.max_skew_ms >= 2 * 60_000,
                "delivery was meant to let partitions drift minutes apart; max skew was {} ms",
                run.max_skew_ms
            );
        }
        runs.push(run);
    }

    let mut report = vec![];
    // The same input cut differently gives the same alerts.
    let first = canonical(&runs[0].alerts);
    for (i, run) in runs.iter().enumerate().skip(1) {
        let other = canonical(&run.alerts);
        if first != other {
            let only_a: Vec<&String> = first
                .iter()
                .filter(|x| other.binary_search(x).is_err())
                .take(6)
                .collect();
            let only_b: Vec<&String> = other
                .iter()
                .filter(|x| first.binary_search(x).is_err())
                .take(6)
                .collect();
            report.push(format!(
                "cut seeds {} and {} disagree ({} vs {} alerts)\n  only with {}: {only_a:#?}\n  only with {}: {only_b:#?}",
                cuts[0].0,
                cuts[i].0,
                first.len(),
                other.len(),
                cuts[0].0,
                cuts[i].0,
            ));
        }
        if runs[0].late != run.late {
            report.push(format!(
                "late counts differ between cuts: {:?} vs {:?}",
                runs[0].late, run.late
            ));
        }
    }

    // The oracle, over exactly the events the decoder accepted.
    let dir = tempfile::tempdir().expect("tempdir");
    let csv = dir.path().join("events.csv");
    let out = dir.path().join("oracle.json");
    write_csv(&runs[0].rows, &csv);
    let t = Instant::now();
    let oracle = run_oracle(&csv, &out);
    println!(
        "[{label}] DuckDB oracle over {} accepted events: {:.1}s",
        runs[0].rows.len(),
        t.elapsed().as_secs_f64()
    );

    let oracle_duplicates = oracle
        .get("_duplicates")
        .and_then(Value::as_u64)
        .expect("oracle duplicate count");
    println!(
        "[{label}] duplicates: oracle {oracle_duplicates}, engine {:?}",
        runs.iter().map(|r| r.duplicates).collect::<Vec<_>>()
    );
    for run in &runs {
        if run.duplicates != oracle_duplicates {
            report.push(format!(
                "duplicates: engine dropped {}, the oracle {oracle_duplicates}",
                run.duplicates
            ));
        }
    }
    if expect.rich && oracle_duplicates == 0 {
        report.push("no duplicates: the generated stream does not exercise deduplication".into());
    }
    let oracle_late = oracle
        .get("_late")
        .and_then(Value::as_object)
        .expect("oracle late counts");
    let mut header = format!("[{label}] {:<15} {:>7} {:>7}", "rule", "oracle", "late");
    for (seed, _) in cuts {
        let _ = write!(header, " | cut {seed:<4} {:>7} {:>5}", "alerts", "late");
    }
    println!("{header}");
    for (rule, _) in RULES {
        let o = oracle_entries(&oracle, rule);
        let no: usize = o.values().map(Vec::len).sum();
        let late_o = oracle_late
            .get(*rule)
            .and_then(Value::as_u64)
            .expect("oracle late count");
        let mut line = format!("[{label}] {rule:<15} {no:>7} {late_o:>7}");
        if expect.rich && no == 0 {
            report.push(format!("[{rule}] the oracle expects no alerts: the generated stream does not exercise this rule"));
        }
        if expect.rich && *rule != PER_EVENT_RULE && late_o == 0 {
            report.push(format!(
                "[{rule}] no late events: the generated stream does not exercise lateness"
            ));
        }
        // Every cut is compared with the oracle, so a failure says which cuts went wrong.
        for (run, (seed, _)) in runs.iter().zip(cuts) {
            let tag = format!("{rule}, cut {seed}");
            let e = engine_entries(&run.alerts, rule, &mut report);
            let ne: usize = e.values().map(Vec::len).sum();
            let late_e = run.late[*rule];
            let mark = if ne == no && late_e == late_o {
                ' '
            } else {
                '*'
            };
            let _ = write!(line, " | {mark}{:>15} {late_e:>5}", ne);
            if late_e != late_o {
                report.push(format!(
                    "[{tag}] late events: engine {late_e}, oracle {late_o}"
                ));
            }
            compare_rule(&tag, e, o.clone(), &mut report);
        }
        println!("{line}");
    }
    if let Ok(keep) = std::env::var("WARDWATCH_DIFF_KEEP") {
        // For debugging a failure: keep the events and the oracle's answer.
        std::fs::create_dir_all(&keep).expect("create WARDWATCH_DIFF_KEEP");
        std::fs::copy(&csv, format!("{keep}/{label}-events.csv")).expect("copy csv");
        std::fs::copy(&out, format!("{keep}/{label}-oracle.json")).expect("copy oracle output");
        println!("[{label}] kept events and oracle output in {keep}");
    }
    let run = runs.swap_remove(0);
    (run, report)
}

#[test]
fn engine_matches_duckdb_on_a_messy_partitioned_stream() {
    let started = Instant::now();
    let mut rng = StdRng::seed_from_u64(GENERATOR_SEED);
    let stream = messy_stream(&dense_patients(&mut rng), &mut rng);
    let (run, mut report) = differential(
        "dense",
        &stream,
        &CUTS,
        Expect {
            skew: true,
            rich: true,
        },
    );

    // The exact-90 patient: AVG = 90.0 exactly must fire `<= 90` and not `< 90`.
    let exact_windows: Vec<i64> = (0..5).map(|k| EXACT_MINUTE - k * 60_000).rev().collect();
    let mut le: Vec<(i64, Value, Value)> = run
        .alerts
        .iter()
        .filter(|a| {
            a.rule_id == "hypoxemia_le"
                && !a.explanation.late
                && a.patient_id() == Some(EXACT_PATIENT)
        })
        .map(|a| {
            (
                a.window_start_ms.unwrap_or(i64::MIN),
                a.values["avg_spo2"].clone(),
                a.values["n"].clone(),
            )
        })
        .collect();
    le.sort_by_key(|x| x.0);
    let expected_le: Vec<(i64, Value, Value)> = exact_windows
        .iter()
        .map(|w| (*w, Value::from(90.0), Value::from(2 * EXACT_PAIRS)))
        .collect();
    if le != expected_le {
        report.push(format!("[hypoxemia_le] {EXACT_PATIENT} (AVG exactly 90.0): expected {expected_le:?}, got {le:?}"));
    }
    let lt: Vec<&Alert> = run
        .alerts
        .iter()
        .filter(|a| {
            a.rule_id == "hypoxemia_lt"
                && !a.explanation.late
                && a.patient_id() == Some(EXACT_PATIENT)
        })
        .collect();
    if !lt.is_empty() {
        report.push(format!(
            "[hypoxemia_lt] {EXACT_PATIENT} (AVG exactly 90.0) must not fire `< 90`, got {:?}",
            lt.iter()
                .map(|a| (a.window_start_ms, &a.values))
                .collect::<Vec<_>>()
        ));
    }

    println!("[dense] total {:.1}s", started.elapsed().as_secs_f64());
    assert!(
        report.is_empty(),
        "engine and DuckDB disagree (dense stream):\n{}",
        report.join("\n")
    );
}

/// The same comparison over a quiet ward, cut into small chunks: minutes go
/// by with no event at all, so windows close whose panes all arrived long ago.
#[test]
fn engine_matches_duckdb_on_a_sparse_stream() {
    let started = Instant::now();
    let mut rng = StdRng::seed_from_u64(SPARSE_SEED);
    let stream = messy_stream(&sparse_patients(&mut rng), &mut rng);
    let (_, report) = differential(
        "sparse",
        &stream,
        &SPARSE_CUTS,
        Expect {
            skew: false,
            rich: false,
        },
    );
    println!("[sparse] total {:.1}s", started.elapsed().as_secs_f64());
    assert!(
        report.is_empty(),
        "engine and DuckDB disagree (sparse stream):\n{}",
        report.join("\n")
    );
}
