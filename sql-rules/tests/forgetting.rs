//! Forgetting patients: the interner (and what hangs off it: whereabouts,
//! duplicate memory) stays bounded when patient ids keep changing, and no
//! alert depends on whether, or when, a patient was forgotten.

use std::sync::Arc;

use arrow::array::{Float64Array, Int64Array, StringArray, TimestampMillisecondArray, UInt32Array};
use arrow::record_batch::RecordBatch;
use rand::{Rng, SeedableRng};
use sql_rules::stream::vitals_schema;
use sql_rules::{Alert, AlertStatus, CompiledRule, Engine, EngineConfig, RuleSpec};

#[derive(Clone, Debug)]
struct Ev {
    patient: String,
    hospital: String,
    ts: i64,
    hr: f64,
    seq: u32,
}

fn batch(events: &[Ev]) -> RecordBatch {
    let n = events.len();
    let nulls = Arc::new(Float64Array::from(vec![None::<f64>; n]));
    RecordBatch::try_new(
        vitals_schema(),
        vec![
            Arc::new(StringArray::from_iter_values(
                events.iter().map(|e| e.hospital.as_str()),
            )),
            Arc::new(StringArray::from_iter_values(
                events.iter().map(|e| e.patient.as_str()),
            )),
            Arc::new(Int64Array::from_iter_values(events.iter().map(|e| e.ts))),
            Arc::new(Float64Array::from_iter_values(events.iter().map(|e| e.hr))),
            nulls.clone(),
            nulls.clone(),
            nulls.clone(),
            nulls,
            Arc::new(StringArray::from(vec![Some("BEDSIDE"); n])),
            Arc::new(UInt32Array::from_iter_values(events.iter().map(|e| e.seq))),
            Arc::new(
                TimestampMillisecondArray::from_iter_values(events.iter().map(|e| e.ts))
                    .with_timezone("UTC"),
            ),
        ],
    )
    .unwrap()
}

fn spec(id: &str, sql: &str, cooldown_ms: i64) -> RuleSpec {
    RuleSpec {
        id: id.into(),
        version: 1,
        name: id.into(),
        severity: "high".into(),
        cooldown_ms,
        allowed_lateness_ms: None,
        keep_duplicates: false,
        escalation: None,
        compiled: CompiledRule::compile(sql, &vitals_schema()).unwrap(),
    }
}

const MINUTE: i64 = 60_000;

/// Every kind of state a patient can leave behind: panes keyed by patient
/// index (with a late horizon), panes keyed by text whose alerts look the
/// patient's hospital up, sessions (signal loss), per-event alerts, and
/// cooldowns longer than the forgetting span.
fn rules() -> Vec<RuleSpec> {
    vec![
        spec(
            "tumble",
            "SELECT patient_id, AVG(heart_rate_bpm) AS a, COUNT(*) AS n FROM vitals
             GROUP BY TUMBLE(event_time, INTERVAL '1' MINUTE), patient_id
             HAVING AVG(heart_rate_bpm) > 105",
            90 * MINUTE,
        ),
        spec(
            "hop",
            "SELECT patient_id, source_device, MAX(heart_rate_bpm) AS m, COUNT(*) AS n FROM vitals
             GROUP BY HOP(event_time, INTERVAL '1' MINUTE, INTERVAL '5' MINUTE), patient_id, source_device
             HAVING MAX(heart_rate_bpm) > 125",
            10 * MINUTE,
        ),
        spec(
            "silent",
            "SELECT patient_id, COUNT(*) AS n, MAX(timestamp_unix_ms) AS last FROM vitals
             GROUP BY SESSION(event_time, INTERVAL '2' MINUTE), patient_id",
            0,
        ),
        spec(
            "spike",
            "SELECT patient_id, heart_rate_bpm FROM vitals WHERE heart_rate_bpm > 135",
            20 * MINUTE,
        ),
    ]
}

/// One batch per partition per 10 s tick for `hours`: a cohort of 100
/// patients arrives every 10 minutes and stays 12 minutes, at one of three
/// hospitals. Every fifth cohort brings back the ids of the cohort from 50
/// minutes before, at another hospital. Some readings arrive minutes late
/// (within the late horizon), some twice.
fn ward(hours: i64, seed: u64) -> Vec<(i32, Vec<Ev>)> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let ticks = hours * 360;
    let mut held_back: Vec<(i64, i32, Ev)> = vec![];
    let mut out = vec![];
    let mut hr: std::collections::HashMap<String, f64> = Default::default();
    for tick in 0..ticks {
        let now = tick * 10_000;
        let mut parts: [Vec<Ev>; 2] = [vec![], vec![]];
        let first = (now - 12 * MINUTE).div_euclid(10 * MINUTE) + 1;
        for cohort in first.max(0)..=now / (10 * MINUTE) {
            let (names_of, hospital) = if cohort % 5 == 4 && cohort >= 5 {
                (cohort - 5, format!("H{}", (cohort + 1) % 3))
            } else {
                (cohort, format!("H{}", cohort % 3))
            };
            for i in 0..100 {
                let patient = format!("C{names_of}-{i}");
                let h = hr.entry(patient.clone()).or_insert(90.0);
                *h = (*h + rng.gen_range(-6.0..6.3)).clamp(50.0, 150.0);
                let e = Ev {
                    patient,
                    hospital: hospital.clone(),
                    ts: now + rng.gen_range(0..400),
                    hr: (*h * 10.0).round() / 10.0,
                    seq: tick as u32,
                };
                let p = i % 2;
                let roll = rng.gen_range(0..1000);
                if roll < 3 {
                    held_back.push((now + rng.gen_range(60_000..240_000), p, e));
                } else {
                    if roll < 6 {
                        parts[p as usize].push(e.clone());
                    }
                    parts[p as usize].push(e);
                }
            }
        }
        held_back.retain(|(due, p, e)| {
            if *due <= now {
                parts[*p as usize].push(e.clone());
                false
            } else {
                true
            }
        });
        for (p, events) in parts.into_iter().enumerate() {
            if !events.is_empty() {
                out.push((p as i32, events));
            }
        }
    }
    out
}

fn engine(forget_after_ms: i64) -> Engine {
    let mut engine = Engine::new(EngineConfig::default());
    engine.set_forget_patients_after_ms(forget_after_ms);
    for r in rules() {
        engine.upsert_rule(r).unwrap();
    }
    engine.assign_partitions(&[0, 1], 0);
    engine
}

/// What a run produced, and the most patients and state bytes it held.
#[derive(Default)]
struct Run {
    alerts: Vec<Alert>,
    max_held: usize,
    end_held: usize,
    /// State bytes halfway through and at the end, before the final
    /// watermark closes everything.
    mid_bytes: usize,
    end_bytes: usize,
    forgotten: u64,
}

fn feed(engine: &mut Engine, batches: &[(i32, Vec<Ev>)], run: &mut Run) {
    for (p, events) in batches {
        let out = engine.process(*p, &batch(events), 0).unwrap();
        assert!(out.errors.is_empty(), "{:?}", out.errors);
        run.alerts.extend(out.alerts);
        run.max_held = run.max_held.max(engine.patients_held());
    }
}

fn finish(mut engine: Engine, mut run: Run, end_ms: i64) -> Run {
    run.alerts
        .extend(engine.advance_watermark(end_ms, 0).unwrap().alerts);
    run.end_held = engine.patients_held();
    run.end_bytes = engine.state_bytes();
    run.forgotten = engine.patients_forgotten();
    run
}

fn run(forget_after_ms: i64, batches: &[(i32, Vec<Ev>)], end_ms: i64) -> Run {
    let mut e = engine(forget_after_ms);
    let mut run = Run::default();
    let half = batches.len() / 2;
    feed(&mut e, &batches[..half], &mut run);
    run.mid_bytes = e.state_bytes();
    feed(&mut e, &batches[half..], &mut run);
    run.end_bytes = e.state_bytes();
    let bytes = run.end_bytes;
    let mut run = finish(e, run, end_ms);
    run.end_bytes = bytes;
    run
}

#[test]
fn forgetting_bounds_the_patients_held_and_changes_no_alert() {
    let hours = 6;
    let batches = ward(hours, 7);
    let distinct: std::collections::HashSet<&str> = batches
        .iter()
        .flat_map(|(_, b)| b.iter().map(|e| e.patient.as_str()))
        .collect();
    let end = hours * 60 * MINUTE + 60 * MINUTE;

    let kept = run(0, &batches, end);
    let forgetting = run(30 * MINUTE, &batches, end);

    // Without forgetting every id stays; with it, the ward at any moment
    // (a cohort lives 12 minutes, plus the span, the rules' reach and the
    // pass interval) and no more.
    assert_eq!(kept.max_held, distinct.len());
    assert_eq!(kept.forgotten, 0);
    assert!(distinct.len() > 2_500, "{}", distinct.len());
    assert!(
        forgetting.max_held < 1_200,
        "held {} of {} distinct",
        forgetting.max_held,
        distinct.len()
    );
    assert!(forgetting.forgotten as usize >= distinct.len() - forgetting.max_held);
    // The ward is the same size at both points, and what keeping adds is
    // every id seen in between (with its whereabouts and duplicate
    // memory). Forgetting gives most of that back; what remains is rule
    // state of its own (signal-loss alerts waiting a day for a return,
    // keyed by the id's text).
    let growth = |r: &Run| r.end_bytes as f64 - r.mid_bytes as f64;
    assert!(
        growth(&forgetting) * 2.0 < growth(&kept),
        "state bytes from halfway to the end: forgetting {} -> {}, keeping {} -> {}",
        forgetting.mid_bytes,
        forgetting.end_bytes,
        kept.mid_bytes,
        kept.end_bytes
    );

    // The same alerts, in the same order, to the field.
    assert!(kept.alerts.len() > 500, "{}", kept.alerts.len());
    for rule in ["tumble", "hop", "silent", "spike"] {
        assert!(
            kept.alerts.iter().any(|a| a.rule_id == rule),
            "no {rule} alert: the test would not cover it"
        );
    }
    assert!(kept
        .alerts
        .iter()
        .any(|a| a.explanation.late && a.rule_id == "tumble"));
    assert!(kept
        .alerts
        .iter()
        .any(|a| a.status == AlertStatus::Suppressed && a.rule_id == "tumble"));
    assert_same(
        &forgetting.alerts,
        &kept.alerts,
        "forgetting against keeping",
    );
}

#[test]
fn a_snapshot_taken_after_forgetting_restores_to_the_same_alerts_and_patients() {
    let hours = 3;
    let batches = ward(hours, 11);
    let end = hours * 60 * MINUTE + 60 * MINUTE;
    let uninterrupted = run(20 * MINUTE, &batches, end);
    assert!(uninterrupted.forgotten > 0);

    for cut in [batches.len() / 3, batches.len() * 2 / 3] {
        let mut first = engine(20 * MINUTE);
        let mut run = Run::default();
        feed(&mut first, &batches[..cut], &mut run);
        assert!(first.patients_forgotten() > 0, "nothing forgotten by {cut}");
        let held = first.patients_held();
        let bytes = first.snapshot().unwrap();
        drop(first);

        let mut second = engine(20 * MINUTE);
        assert!(second.restore(&bytes, 0).unwrap().is_empty());
        assert_eq!(second.patients_held(), held, "restored at {cut}");
        feed(&mut second, &batches[cut..], &mut run);
        let run = finish(second, run, end);
        assert_same(
            &run.alerts,
            &uninterrupted.alerts,
            &format!("restored at {cut}"),
        );
        assert_eq!(run.end_held, uninterrupted.end_held, "restored at {cut}");
    }
}

/// The same alerts (as multisets: sessions closing at the same moment
/// come out in hash order); on a difference, the first one, not thousands.
fn assert_same(got: &[Alert], want: &[Alert], what: &str) {
    let sorted = |alerts: &[Alert]| {
        let mut v: Vec<Alert> = alerts.to_vec();
        v.sort_by_cached_key(|a| format!("{a:?}"));
        v
    };
    let (got, want) = (sorted(got), sorted(want));
    if let Some(i) = (0..got.len().min(want.len())).find(|&i| got[i] != want[i]) {
        panic!(
            "{what}: alert {i} differs\n got:  {:?}\n want: {:?}",
            got[i], want[i]
        );
    }
    assert_eq!(got.len(), want.len(), "{what}: alert counts");
}

fn reading(patient: &str, hospital: &str, ts: i64, hr: f64) -> Ev {
    Ev {
        patient: patient.into(),
        hospital: hospital.into(),
        ts,
        hr,
        seq: (ts / 1000) as u32,
    }
}

#[test]
fn a_forgotten_patient_who_returns_gets_fresh_windows_and_the_same_cooldown() {
    let tumble = spec(
        "tumble",
        "SELECT patient_id, AVG(heart_rate_bpm) AS a, COUNT(*) AS n FROM vitals
         GROUP BY TUMBLE(event_time, INTERVAL '1' MINUTE), patient_id
         HAVING AVG(heart_rate_bpm) > 105",
        // Longer than the span: the return is still within it.
        120 * MINUTE,
    );
    let by_text = spec(
        "by_text",
        "SELECT patient_id, source_device, COUNT(*) AS n FROM vitals
         GROUP BY TUMBLE(event_time, INTERVAL '1' MINUTE), patient_id, source_device
         HAVING COUNT(*) >= 3",
        0,
    );
    let go = |forget: i64| {
        let mut e = Engine::new(EngineConfig::default());
        e.set_forget_patients_after_ms(forget);
        e.upsert_rule(tumble.clone()).unwrap();
        e.upsert_rule(by_text.clone()).unwrap();
        e.assign_partitions(&[0], 0);
        let mut alerts = vec![];
        let mut held = vec![];
        let mut step = |e: &mut Engine, events: Vec<Ev>| {
            alerts.extend(e.process(0, &batch(&events), 0).unwrap().alerts);
            held.push(e.patients_held());
        };
        // A alerts at H1, then is silent for an hour and a half while B
        // (the rest of the ward) keeps the stream going.
        step(
            &mut e,
            (0..6)
                .map(|i| reading("A", "H1", i * 5_000, 120.0))
                .collect(),
        );
        for m in 1..90 {
            step(&mut e, vec![reading("B", "H1", m * MINUTE, 80.0)]);
        }
        // A returns at H2: three readings, high again, in a window of
        // their own.
        let back = 90 * MINUTE;
        step(
            &mut e,
            (0..3)
                .map(|i| reading("A", "H2", back + i * 5_000, 130.0))
                .chain([reading("B", "H1", back, 80.0)])
                .collect(),
        );
        step(&mut e, vec![reading("B", "H1", back + 2 * MINUTE, 80.0)]);
        (alerts, held, e.patients_forgotten())
    };
    let (kept, kept_held, none) = go(0);
    let (forgot, held, forgotten) = go(30 * MINUTE);
    assert_eq!(none, 0);
    assert_eq!(forgotten, 1, "A was forgotten while away");
    assert_eq!(kept_held.last(), Some(&2));
    assert!(held.contains(&1), "A left the interner: {held:?}");
    assert_eq!(held.last(), Some(&2), "and came back");
    assert_eq!(forgot, kept);

    let of = |rule: &str| -> Vec<&Alert> { forgot.iter().filter(|a| a.rule_id == rule).collect() };
    let tumble = of("tumble");
    assert_eq!(tumble.len(), 2, "{tumble:#?}");
    // The return's window holds its three readings only, at H2, and is
    // within A's cooldown: suppressed by the alert before A left.
    assert_eq!(tumble[1].values["n"], 3);
    assert_eq!(tumble[1].hospital_id.as_deref(), Some("H2"));
    assert_eq!(tumble[1].status, AlertStatus::Suppressed);
    assert_eq!(
        tumble[1].explanation.suppressed_by.as_deref(),
        Some(tumble[0].id.as_str())
    );
    let by_text: Vec<_> = of("by_text")
        .into_iter()
        .filter(|a| a.patient_id() == Some("A"))
        .map(|a| (a.values["n"].as_u64(), a.hospital_id.clone()))
        .collect();
    assert_eq!(
        by_text,
        [
            (Some(6), Some("H1".to_string())),
            (Some(3), Some("H2".to_string()))
        ]
    );
}

/// `bytes` as an engine written before forgetting would have left it: the
/// header without the patients' stamps and the event clock (the blobs
/// stay; nothing points at the stamps any more).
fn without_stamps(bytes: &[u8]) -> Vec<u8> {
    let len = u64::from_le_bytes(bytes[8..16].try_into().unwrap()) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&bytes[16..16 + len]).unwrap();
    let fields = header.as_object_mut().unwrap();
    assert!(fields.remove("patients_seen").is_some());
    assert!(fields.remove("event_clock_ms").is_some());
    let header = header.to_string();
    let mut out = bytes[..8].to_vec();
    out.extend_from_slice(&(header.len() as u64).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(&bytes[16 + len..]);
    out
}

#[test]
fn a_snapshot_from_before_forgetting_restores_and_keeps_its_patients_a_full_span() {
    let hours = 2;
    let batches = ward(hours, 5);
    let end = hours * 60 * MINUTE + 60 * MINUTE;
    let uninterrupted = run(20 * MINUTE, &batches, end);
    let cut = batches.len() / 2;
    let mut first = engine(20 * MINUTE);
    let mut run = Run::default();
    feed(&mut first, &batches[..cut], &mut run);
    let held = first.patients_held();
    let old = without_stamps(&first.snapshot().unwrap());
    drop(first);

    let mut second = engine(20 * MINUTE);
    assert!(second.restore(&old, 0).unwrap().is_empty());
    assert_eq!(second.patients_held(), held);
    let forgotten_before = second.patients_forgotten();
    // Stamped at the restore: none forgotten in the next span.
    let span_batches = batches[cut..]
        .iter()
        .take_while(|(_, b)| b[0].ts < batches[cut].1[0].ts + 20 * MINUTE)
        .count();
    feed(&mut second, &batches[cut..cut + span_batches], &mut run);
    assert_eq!(second.patients_forgotten(), forgotten_before);
    feed(&mut second, &batches[cut + span_batches..], &mut run);
    assert!(second.patients_forgotten() > forgotten_before);
    let run = finish(second, run, end);
    assert_same(
        &run.alerts,
        &uninterrupted.alerts,
        "restored from the old format",
    );
}

/// Timing, not a check (`--ignored --nocapture`, best in release): a
/// steady ward of 2 000 patients at 1 Hz, with forgetting off, at the
/// default span, and at a one-minute span (a pass every 15 s of event
/// time, none of whose patients is ever due).
#[test]
#[ignore]
fn steady_streaming_costs_the_same_with_forgetting() {
    let mut batches = vec![];
    for s in 0..300i64 {
        for p in 0..2 {
            let events: Vec<Ev> = (0..1_000)
                .map(|i| {
                    reading(
                        &format!("P{p}-{i}"),
                        "H1",
                        s * 1_000 + i as i64 % 500,
                        80.0 + (i % 50) as f64,
                    )
                })
                .collect();
            batches.push((p, events));
        }
    }
    let batches: Vec<(i32, RecordBatch)> = batches.iter().map(|(p, b)| (*p, batch(b))).collect();
    let time = |forget: i64| {
        let mut e = engine(forget);
        let start = std::time::Instant::now();
        for (p, b) in &batches {
            e.process(*p, b, 0).unwrap();
        }
        assert_eq!(e.patients_forgotten(), 0);
        (start.elapsed(), e.patients_held())
    };
    // The fastest of several rounds each, in rotating order: the machine
    // is shared, and noise only ever adds time.
    let spans = [0, sql_rules::DEFAULT_FORGET_PATIENTS_AFTER_MS, MINUTE];
    let mut best = [std::time::Duration::MAX; 3];
    for round in 0..5 {
        for k in 0..3 {
            let at = (round + k) % 3;
            let (took, held) = time(spans[at]);
            assert_eq!(held, 2_000);
            best[at] = best[at].min(took);
        }
    }
    for (span, took) in spans.iter().zip(best) {
        eprintln!("forget after {span} ms: fastest {took:?}");
    }
}
