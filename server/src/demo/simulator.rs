//! The built-in ward simulator behind `serve --demo` and the benchmarks.
//!
//! This module owns synthetic VitalEvent traffic: a population of patients
//! spread over a few hospitals, each with a device reporting once a second,
//! plausible baseline vitals that wander a little, and occasional clinical
//! episodes (tachycardia, hypoxemia, hypotension, bradycardia) lasting a few
//! minutes, so the stock rules have something to fire on. It can also inject
//! the faults the pipeline must survive: malformed payloads (for the
//! dead-letter path), late events (for watermarks) and duplicates.
//!
//! It is pure and deterministic: no clock, no I/O. The caller decides how fast
//! simulated seconds pass ([`WardSimulator::tick`] produces one). The same
//! [`WardConfig`] always yields the same bytes, and each patient draws from its
//! own random stream, so one patient's readings do not change when the ward
//! grows. Every event that is not deliberately malformed passes
//! `source::decode`'s validation.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use sql_rules::stream::SOURCE_DEVICES;

/// Chance a patient not already in an episode starts one in a given second.
/// Across 300 patients that is three episodes a minute, and with episodes of
/// 2–5 minutes about a dozen patients are unwell at any time.
const EPISODE_START_PER_SECOND: f64 = 1.0 / 6_000.0;

/// Chance that one reading of one event is missing (sent as `null`).
const DROPOUT_PER_READING: f64 = 0.003;

/// Earliest and latest offset of a late event behind its true time, in ms.
const LATE_SHIFT_MS: (i64, i64) = (2_000, 20_000);

/// How to build a ward.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WardConfig {
    /// Patients, one device each, ids `P000001`, `P000002`, ...
    pub patients: usize,
    /// Hospitals `H01`, `H02`, ...; patients are dealt out round-robin.
    pub hospitals: usize,
    /// Seed for everything random; same seed, same bytes.
    pub seed: u64,
    /// Simulated wall clock at the start, in ms since the epoch.
    pub start_ms: i64,
    /// Events per thousand that are malformed and must be dead-lettered.
    pub malformed_per_mille: u32,
    /// Events per thousand whose event time lags 2–20 s behind the others.
    pub late_per_mille: u32,
    /// Events per thousand that are sent twice.
    pub duplicate_per_mille: u32,
}

impl Default for WardConfig {
    fn default() -> Self {
        Self {
            patients: 300,
            hospitals: 3,
            seed: 42,
            // 2024-01-01T00:00:00Z; `serve --demo` overrides this with "now".
            start_ms: 1_704_067_200_000,
            malformed_per_mille: 2,
            late_per_mille: 0,
            duplicate_per_mille: 0,
        }
    }
}

/// One Kafka message's worth of simulated traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimEvent {
    /// The message key: the patient id (also for malformed payloads).
    pub key: String,
    /// The message value: a JSON VitalEvent, or deliberately broken bytes.
    pub payload: Vec<u8>,
    /// The event time the payload carries (for a late event, its shifted time).
    pub timestamp_ms: i64,
}

/// A deterministic ward of patients producing vitals at 1 Hz.
#[derive(Debug)]
pub struct WardSimulator {
    cfg: WardConfig,
    patients: Vec<Patient>,
    now_ms: i64,
    /// How many malformed events so far, to rotate through [`Malformation`]s.
    malformed: u64,
    /// Scratch for one tick, ordered by arrival before being handed out.
    pending: Vec<(i64, SimEvent)>,
}

impl WardSimulator {
    /// A ward at `cfg.start_ms`, with every patient at their baseline.
    pub fn new(cfg: WardConfig) -> Self {
        let hospitals = cfg.hospitals.max(1);
        let patients = (0..cfg.patients)
            .map(|i| Patient::new(i, hospitals, cfg.seed))
            .collect();
        Self {
            now_ms: cfg.start_ms,
            patients,
            malformed: 0,
            pending: Vec::with_capacity(cfg.patients),
            cfg,
        }
    }

    /// Events for one simulated second (one per patient at 1 Hz, jittered within the second), as JSON payloads keyed by patient_id.
    ///
    /// Events are appended to `out` in arrival order, which is event-time
    /// order except for late events (they arrive now but carry an older time)
    /// and duplicates (which follow their original). Each patient's events
    /// are in order. Afterwards [`now_ms`](Self::now_ms) is one second later.
    pub fn tick(&mut self, out: &mut Vec<SimEvent>) {
        let second_start = self.now_ms;
        self.pending.clear();
        for patient in &mut self.patients {
            patient.step();
            let offset = patient.arrival_offset_ms();
            let arrival_ms = second_start + offset;
            let rng = &mut patient.rng;
            let late = per_mille(rng, self.cfg.late_per_mille);
            let timestamp_ms = if late {
                arrival_ms - rng.gen_range(LATE_SHIFT_MS.0..=LATE_SHIFT_MS.1)
            } else {
                arrival_ms
            };
            let malformation = if per_mille(rng, self.cfg.malformed_per_mille) {
                let kind =
                    Malformation::ALL[(self.malformed % Malformation::ALL.len() as u64) as usize];
                self.malformed += 1;
                Some(kind)
            } else {
                None
            };
            let duplicate = per_mille(rng, self.cfg.duplicate_per_mille);
            let event = patient.event(timestamp_ms, malformation);
            if duplicate {
                self.pending.push((arrival_ms, event.clone()));
            }
            self.pending.push((arrival_ms, event));
        }
        // Stable: ties (and duplicates) keep patient order.
        self.pending.sort_by_key(|(arrival, _)| *arrival);
        out.extend(self.pending.drain(..).map(|(_, event)| event));
        self.now_ms = second_start + 1_000;
    }

    /// The simulated clock: the start of the next second [`tick`](Self::tick)
    /// will produce, i.e. `start_ms` plus one second per tick so far.
    pub fn now_ms(&self) -> i64 {
        self.now_ms
    }
}

/// True with probability `rate / 1000`.
fn per_mille(rng: &mut SmallRng, rate: u32) -> bool {
    rate > 0 && rng.gen_range(0..1_000) < rate
}

/// Rounds a reading to one decimal place, as bedside monitors report.
fn one_decimal(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// Ways an event is broken on purpose, used in rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Malformation {
    /// The JSON is cut off halfway.
    Unparseable,
    /// No `patient_id` field.
    MissingPatientId,
    /// A negative heart rate.
    NegativeHeartRate,
    /// SpO2 above 100 %.
    SpO2Over100,
}

impl Malformation {
    const ALL: [Malformation; 4] = [
        Malformation::Unparseable,
        Malformation::MissingPatientId,
        Malformation::NegativeHeartRate,
        Malformation::SpO2Over100,
    ];
}

/// A clinical episode: what it does and when it ends.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Episode {
    /// Heart rate up to `hr`.
    Tachycardia { hr: f64 },
    /// Heart rate down to `hr`.
    Bradycardia { hr: f64 },
    /// SpO2 down to `spo2`, breathing faster to compensate.
    Hypoxemia { spo2: f64 },
    /// Systolic pressure down to `sbp`, heart rate up to compensate.
    Hypotension { sbp: f64 },
}

impl Episode {
    /// Draws a new episode; bradycardia is the rare one.
    fn draw(rng: &mut SmallRng) -> Self {
        match rng.gen_range(0..100) {
            0..=39 => Episode::Tachycardia {
                hr: rng.gen_range(115.0..150.0),
            },
            40..=74 => Episode::Hypoxemia {
                spo2: rng.gen_range(82.0..89.0),
            },
            75..=91 => Episode::Hypotension {
                sbp: rng.gen_range(75.0..88.0),
            },
            _ => Episode::Bradycardia {
                hr: rng.gen_range(35.0..44.0),
            },
        }
    }
}

/// The five vital signs, in schema order.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Vitals {
    hr: f64,
    spo2: f64,
    rr: f64,
    sbp: f64,
    dbp: f64,
}

/// One patient and their monitor.
#[derive(Debug)]
struct Patient {
    id: String,
    hospital: String,
    device: &'static str,
    rng: SmallRng,
    /// Where this patient's vitals settle when well.
    baseline: Vitals,
    /// The true (unrounded) current vitals.
    current: Vitals,
    /// The ongoing episode and the seconds it has left.
    episode: Option<(Episode, u32)>,
    /// Where in each second this device usually reports.
    phase_ms: i64,
    sequence: u32,
}

impl Patient {
    fn new(index: usize, hospitals: usize, seed: u64) -> Self {
        let mut rng = SmallRng::seed_from_u64(patient_seed(seed, index as u64));
        let sbp = rng.gen_range(100.0..140.0);
        // Keep a realistic pulse pressure: diastolic at least 25 below systolic.
        let dbp = rng.gen_range(60.0_f64..90.0).min(sbp - 25.0);
        let baseline = Vitals {
            hr: rng.gen_range(60.0..95.0),
            spo2: rng.gen_range(94.0..99.0),
            rr: rng.gen_range(12.0..20.0),
            sbp,
            dbp,
        };
        let device = match rng.gen_range(0..100) {
            0..=84 => SOURCE_DEVICES[0],
            85..=94 => SOURCE_DEVICES[1],
            _ => SOURCE_DEVICES[2],
        };
        Self {
            id: format!("P{:06}", index + 1),
            hospital: format!("H{:02}", index % hospitals + 1),
            device,
            phase_ms: rng.gen_range(0..1_000),
            rng,
            baseline,
            current: baseline,
            episode: None,
            sequence: 0,
        }
    }

    /// Advances this patient by one second: episodes start and end, and each
    /// vital moves part of the way to its target plus a little noise.
    fn step(&mut self) {
        self.episode = match self.episode {
            Some((episode, left)) if left > 1 => Some((episode, left - 1)),
            Some(_) => None,
            None if self.rng.gen_bool(EPISODE_START_PER_SECOND) => {
                Some((Episode::draw(&mut self.rng), self.rng.gen_range(120..=300)))
            }
            None => None,
        };

        let mut target = self.baseline;
        if let Some((episode, _)) = self.episode {
            match episode {
                Episode::Tachycardia { hr } | Episode::Bradycardia { hr } => target.hr = hr,
                Episode::Hypoxemia { spo2 } => {
                    target.spo2 = spo2;
                    target.rr += 8.0;
                    target.hr += 10.0;
                }
                Episode::Hypotension { sbp } => {
                    target.dbp = (sbp * 0.6).min(target.dbp);
                    target.sbp = sbp;
                    target.hr += 15.0;
                }
            }
        }

        // Mean reversion towards the target (faster while an episode is on,
        // so onset takes tens of seconds) plus small symmetric noise.
        let pull = if self.episode.is_some() { 0.08 } else { 0.05 };
        let rng = &mut self.rng;
        let mut walk = |x: f64, target: f64, noise: f64| {
            x + pull * (target - x) + noise * (rng.gen::<f64>() - rng.gen::<f64>())
        };
        let c = self.current;
        self.current = Vitals {
            hr: walk(c.hr, target.hr, 2.0).clamp(25.0, 220.0),
            spo2: walk(c.spo2, target.spo2, 0.4).clamp(70.0, 100.0),
            rr: walk(c.rr, target.rr, 0.8).clamp(4.0, 60.0),
            sbp: walk(c.sbp, target.sbp, 2.5).clamp(50.0, 230.0),
            dbp: walk(c.dbp, target.dbp, 1.5).clamp(30.0, 140.0),
        };
        // Keep diastolic below systolic whatever the noise did.
        self.current.dbp = self.current.dbp.min(self.current.sbp - 10.0);
    }

    /// This second's report time within the second: the device's phase with
    /// a little jitter, kept inside the second.
    fn arrival_offset_ms(&mut self) -> i64 {
        (self.phase_ms + self.rng.gen_range(-40..=40)).clamp(0, 999)
    }

    /// The event for the current vitals at `timestamp_ms`, possibly broken.
    fn event(&mut self, timestamp_ms: i64, malformation: Option<Malformation>) -> SimEvent {
        let mut reading =
            |value: f64| (!self.rng.gen_bool(DROPOUT_PER_READING)).then(|| one_decimal(value));
        let c = self.current;
        let mut body = Body {
            hospital_id: &self.hospital,
            patient_id: Some(&self.id),
            timestamp_unix_ms: timestamp_ms,
            heart_rate_bpm: reading(c.hr),
            spo2_pct: reading(c.spo2),
            respiration_rate: reading(c.rr),
            // Ambulatory monitors carry no cuff.
            systolic_bp_mmhg: if self.device == SOURCE_DEVICES[2] {
                None
            } else {
                reading(c.sbp)
            },
            diastolic_bp_mmhg: if self.device == SOURCE_DEVICES[2] {
                None
            } else {
                reading(c.dbp)
            },
            source_device: self.device,
            sequence_number: self.sequence,
        };
        self.sequence = self.sequence.wrapping_add(1);

        match malformation {
            None | Some(Malformation::Unparseable) => {}
            Some(Malformation::MissingPatientId) => body.patient_id = None,
            Some(Malformation::NegativeHeartRate) => {
                body.heart_rate_bpm = Some(-one_decimal(self.rng.gen_range(1.0..60.0)));
            }
            Some(Malformation::SpO2Over100) => {
                body.spo2_pct = Some(one_decimal(self.rng.gen_range(100.1..120.0)));
            }
        }
        let mut payload = Vec::with_capacity(320);
        // Serializing a struct of strings and numbers into a Vec cannot fail;
        // should it ever, an empty payload is still a valid malformed event.
        if serde_json::to_writer(&mut payload, &body).is_err() {
            payload.clear();
        }
        if malformation == Some(Malformation::Unparseable) {
            payload.truncate(payload.len() / 2);
        }
        SimEvent {
            key: self.id.clone(),
            payload,
            timestamp_ms,
        }
    }
}

/// A VitalEvent as the simulator writes it; field order is fixed, so the
/// bytes are deterministic.
#[derive(Serialize)]
struct Body<'a> {
    hospital_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    patient_id: Option<&'a str>,
    timestamp_unix_ms: i64,
    heart_rate_bpm: Option<f64>,
    spo2_pct: Option<f64>,
    respiration_rate: Option<f64>,
    systolic_bp_mmhg: Option<f64>,
    diastolic_bp_mmhg: Option<f64>,
    source_device: &'static str,
    sequence_number: u32,
}

/// Derives a well-mixed per-patient seed (SplitMix64 finaliser), so nearby
/// seeds and indices give unrelated streams.
fn patient_seed(seed: u64, index: u64) -> u64 {
    let mut z = seed ^ index.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::decode::VitalsDecoder;
    use serde_json::Value;

    fn run(cfg: WardConfig, seconds: usize) -> Vec<SimEvent> {
        let mut sim = WardSimulator::new(cfg);
        let mut out = Vec::new();
        for _ in 0..seconds {
            sim.tick(&mut out);
        }
        out
    }

    fn parse(event: &SimEvent) -> Option<Value> {
        serde_json::from_slice(&event.payload).ok()
    }

    #[test]
    fn same_seed_same_bytes_different_seed_different_bytes() {
        let cfg = WardConfig {
            patients: 50,
            late_per_mille: 10,
            duplicate_per_mille: 10,
            malformed_per_mille: 10,
            ..WardConfig::default()
        };
        let a = run(cfg.clone(), 120);
        let b = run(cfg.clone(), 120);
        assert_eq!(a, b);
        let c = run(
            WardConfig {
                seed: cfg.seed + 1,
                ..cfg
            },
            120,
        );
        assert_ne!(a, c);
    }

    #[test]
    fn a_patient_does_not_depend_on_ward_size() {
        let readings = |patients| -> Vec<Vec<u8>> {
            let cfg = WardConfig {
                patients,
                malformed_per_mille: 0,
                ..WardConfig::default()
            };
            run(cfg, 60)
                .into_iter()
                .filter(|e| e.key == "P000001")
                .map(|e| e.payload)
                .collect()
        };
        assert_eq!(readings(5), readings(50));
    }

    #[test]
    fn one_event_per_patient_per_second_with_ids_hospitals_and_clock() {
        let cfg = WardConfig {
            malformed_per_mille: 0,
            ..WardConfig::default()
        };
        let start = cfg.start_ms;
        let mut sim = WardSimulator::new(cfg);
        assert_eq!(sim.now_ms(), start);
        let mut out = Vec::new();
        sim.tick(&mut out);
        assert_eq!(sim.now_ms(), start + 1_000);
        assert_eq!(out.len(), 300);
        assert!(out
            .windows(2)
            .all(|w| w[0].timestamp_ms <= w[1].timestamp_ms));
        assert!(out
            .iter()
            .all(|e| (start..start + 1_000).contains(&e.timestamp_ms)));
        let mut keys: Vec<&str> = out.iter().map(|e| e.key.as_str()).collect();
        keys.sort_unstable();
        keys.dedup();
        assert_eq!(keys.len(), 300);
        assert_eq!((keys[0], keys[299]), ("P000001", "P000300"));
        for event in &out {
            let v = parse(event).expect("well-formed");
            assert_eq!(v["patient_id"], event.key.as_str());
            assert_eq!(v["timestamp_unix_ms"], event.timestamp_ms);
            let hospital = v["hospital_id"].as_str().expect("hospital");
            assert!(["H01", "H02", "H03"].contains(&hospital), "{hospital}");
        }
        let bedside = out
            .iter()
            .filter(|e| parse(e).unwrap()["source_device"] == "BEDSIDE")
            .count();
        assert!(bedside > 200, "mostly bedside devices, got {bedside}");
    }

    #[test]
    fn malformed_rate_is_roughly_as_configured_and_everything_else_decodes() {
        for per_mille in [2_u32, 20] {
            let cfg = WardConfig {
                malformed_per_mille: per_mille,
                ..WardConfig::default()
            };
            let events = run(cfg, 600);
            let mut decoder = VitalsDecoder::new(events.len());
            let mut reasons = Vec::new();
            for event in &events {
                if let Err(rejection) = decoder.push_json(&event.payload) {
                    reasons.push(rejection.reason);
                }
            }
            let expected = events.len() as f64 * f64::from(per_mille) / 1000.0;
            let got = reasons.len() as f64;
            assert!(
                (got - expected).abs() < expected * 0.25,
                "{per_mille}‰: expected about {expected} malformed, got {got}"
            );
            let kinds = |prefix: &str| reasons.iter().filter(|r| r.starts_with(prefix)).count();
            let each = reasons.len() / 4;
            assert!(kinds("invalid JSON") >= each, "{reasons:?}");
            assert!(kinds("missing patient_id") >= each);
            assert!(kinds("heart_rate_bpm must be between") >= each);
            assert!(kinds("spo2_pct must be between") >= each);
            assert_eq!(decoder.len() + reasons.len(), events.len());
        }
    }

    #[test]
    fn episodes_appear_within_half_an_hour() {
        let cfg = WardConfig {
            malformed_per_mille: 0,
            ..WardConfig::default()
        };
        let mut sim = WardSimulator::new(cfg);
        let mut out = Vec::new();
        let (mut events, mut tachy, mut brady, mut hypox, mut hypot, mut nulls) =
            (0, 0, 0, 0, 0, 0);
        for _ in 0..30 * 60 {
            out.clear();
            sim.tick(&mut out);
            for event in &out {
                let v = parse(event).expect("well-formed");
                let reading = |name: &str| v[name].as_f64();
                events += 1;
                match reading("heart_rate_bpm") {
                    None => nulls += 1,
                    Some(hr) if hr > 110.0 => tachy += 1,
                    Some(hr) if hr < 45.0 => brady += 1,
                    Some(_) => {}
                }
                hypox += usize::from(reading("spo2_pct").is_some_and(|x| x < 90.0));
                hypot += usize::from(reading("systolic_bp_mmhg").is_some_and(|x| x < 90.0));
            }
        }
        assert!(tachy > 60, "tachycardia seen in {tachy} readings");
        assert!(hypox > 60, "hypoxemia seen in {hypox} readings");
        assert!(hypot > 0, "hypotension seen in {hypot} readings");
        // Episodes are the exception: most readings are unremarkable.
        assert!(
            tachy + brady + hypox + hypot < events / 10,
            "{tachy} {brady} {hypox} {hypot} of {events}"
        );
        // Readings go missing, but rarely.
        assert!(
            nulls > 0 && nulls < events / 100,
            "{nulls} null heart rates of {events}"
        );
    }

    #[test]
    fn readings_have_at_most_one_decimal() {
        let cfg = WardConfig {
            patients: 100,
            malformed_per_mille: 0,
            ..WardConfig::default()
        };
        for event in run(cfg, 300) {
            let text = std::str::from_utf8(&event.payload).expect("utf-8");
            let v = parse(&event).expect("well-formed");
            for name in sql_rules::stream::READINGS {
                let value = &v[name];
                if value.is_null() {
                    continue;
                }
                let number = value.to_string();
                let decimals = number.split_once('.').map_or(0, |(_, frac)| frac.len());
                assert!(decimals <= 1, "{name} = {number} in {text}");
                assert!(!number.contains('e'), "{name} = {number}");
            }
        }
    }

    #[test]
    fn late_and_duplicate_events() {
        let cfg = WardConfig {
            malformed_per_mille: 0,
            late_per_mille: 50,
            duplicate_per_mille: 50,
            ..WardConfig::default()
        };
        let mut sim = WardSimulator::new(cfg);
        let mut out = Vec::new();
        let mut late = 0;
        let mut duplicates = 0;
        for _ in 0..20 {
            let tick_start = sim.now_ms();
            out.clear();
            sim.tick(&mut out);
            for event in &out {
                let behind = tick_start - event.timestamp_ms;
                if behind > 0 {
                    assert!((1_001..=20_000).contains(&behind), "late by {behind} ms");
                    late += 1;
                }
            }
            duplicates += out.windows(2).filter(|w| w[0] == w[1]).count();
            assert!(out.len() > 300);
        }
        // 6000 events at 5 % each.
        assert!((200..400).contains(&late), "{late} late events");
        assert!((200..400).contains(&duplicates), "{duplicates} duplicates");
    }
}
