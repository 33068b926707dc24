//! Rule semantics over vectors of events: windows, lateness, partitions,
//! thresholds, and independence from how the stream is cut into batches.

use std::collections::BTreeSet;
use std::sync::Arc;

use arrow::array::{Float64Array, Int64Array, StringArray, TimestampMillisecondArray, UInt32Array};
use arrow::record_batch::RecordBatch;
use rand::{Rng, SeedableRng};
use sql_rules::stream::vitals_schema;
use sql_rules::{Alert, AlertStatus, CompiledRule, Engine, EngineConfig, RuleSpec};

#[derive(Clone, Debug)]
struct Ev {
    patient: &'static str,
    ts: i64,
    hr: Option<f64>,
    spo2: Option<f64>,
    partition: i32,
}

fn ev(patient: &'static str, ts: i64, hr: f64) -> Ev {
    Ev {
        patient,
        ts,
        hr: Some(hr),
        spo2: Some(97.0),
        partition: 0,
    }
}

fn batch(events: &[Ev]) -> RecordBatch {
    let n = events.len();
    RecordBatch::try_new(
        vitals_schema(),
        vec![
            Arc::new(StringArray::from(vec![Some("H01"); n])),
            Arc::new(StringArray::from(
                events.iter().map(|e| e.patient).collect::<Vec<_>>(),
            )),
            Arc::new(Int64Array::from(
                events.iter().map(|e| e.ts).collect::<Vec<_>>(),
            )),
            Arc::new(Float64Array::from(
                events.iter().map(|e| e.hr).collect::<Vec<_>>(),
            )),
            Arc::new(Float64Array::from(
                events.iter().map(|e| e.spo2).collect::<Vec<_>>(),
            )),
            Arc::new(Float64Array::from(vec![Some(16.0); n])),
            Arc::new(Float64Array::from(vec![Some(120.0); n])),
            Arc::new(Float64Array::from(vec![Some(80.0); n])),
            Arc::new(StringArray::from(vec![Some("BEDSIDE"); n])),
            // The device sequence number is a property of the event, not of the batch.
            Arc::new(UInt32Array::from(
                events.iter().map(|e| e.ts as u32).collect::<Vec<_>>(),
            )),
            Arc::new(
                TimestampMillisecondArray::from(events.iter().map(|e| e.ts).collect::<Vec<_>>())
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
        compiled: CompiledRule::compile(sql, &vitals_schema())
            .unwrap_or_else(|e| panic!("{id}: {e}")),
    }
}

/// Runs events through an engine, cut into batches at `cuts` (per
/// partition, in arrival order), then closes everything.
fn run(
    rules: &[RuleSpec],
    events: &[Ev],
    cuts: &[usize],
    final_watermark: Option<i64>,
) -> Vec<Alert> {
    let mut engine = Engine::new(EngineConfig::default());
    for r in rules {
        engine.upsert_rule(r.clone()).unwrap();
    }
    // As a Kafka consumer is told its assignment before data arrives.
    let all: Vec<i32> = events
        .iter()
        .map(|e| e.partition)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    engine.assign_partitions(&all, 0);
    let mut alerts = vec![];
    let mut start = 0;
    for &end in cuts.iter().chain(std::iter::once(&events.len())) {
        let chunk = &events[start..end];
        start = end;
        // Within a chunk, each partition's events go as one batch, in order.
        let partitions: BTreeSet<i32> = chunk.iter().map(|e| e.partition).collect();
        for p in partitions {
            let part: Vec<Ev> = chunk.iter().filter(|e| e.partition == p).cloned().collect();
            alerts.extend(engine.process(p, &batch(&part), 0).unwrap().alerts);
        }
    }
    if let Some(w) = final_watermark {
        alerts.extend(engine.advance_watermark(w, 0).unwrap().alerts);
    }
    alerts
}

fn summary(alerts: &[Alert]) -> Vec<String> {
    let mut v: Vec<String> = alerts
        .iter()
        .map(|a| {
            format!(
                "{} {} {:?} {:?} {} {}",
                a.rule_id,
                a.key
                    .get("patient_id")
                    .map(|v| v.to_string())
                    .unwrap_or_default(),
                a.window_start_ms,
                a.status,
                serde_json::Value::Object(a.values.clone()),
                a.id
            )
        })
        .collect();
    v.sort();
    v
}

const TACHY: &str = "SELECT patient_id, AVG(heart_rate_bpm) AS avg_hr, COUNT(*) AS n,
       TUMBLE_END(event_time, INTERVAL '60' SECOND) AS window_end
FROM vitals WHERE heart_rate_bpm > 100
GROUP BY TUMBLE(event_time, INTERVAL '60' SECOND), patient_id
HAVING COUNT(*) >= 5 AND AVG(heart_rate_bpm) > 110";

#[test]
fn tumble_rule_fires_once_per_qualifying_window_when_the_watermark_passes() {
    let rules = [spec("tachy", TACHY, 0)];
    let mut events = vec![];
    for s in 0..120 {
        events.push(ev("A", s * 1000, if s < 60 { 120.0 } else { 80.0 }));
        events.push(ev("B", s * 1000, 105.0));
    }
    // Nothing fires while the window is open.
    let early = run(&rules, &events[..100], &[], None);
    assert!(early.is_empty(), "{:?}", summary(&early));
    let alerts = run(&rules, &events, &[], None);
    assert_eq!(alerts.len(), 1, "{:?}", summary(&alerts));
    let a = &alerts[0];
    assert_eq!(a.key["patient_id"], "A");
    assert_eq!(a.window_start_ms, Some(0));
    assert_eq!(a.window_end_ms, Some(60_000));
    assert_eq!(a.values["n"], 60);
    assert_eq!(a.values["avg_hr"], 120.0);
    assert_eq!(a.explanation.event_count, 60);
    assert_eq!(a.explanation.last_event_ms, 59_000);
    // The readings an auditor looks up: sequence numbers of the first and
    // last contributing events (this helper numbers events by timestamp).
    assert_eq!(a.explanation.first_sequence_number, Some(0));
    assert_eq!(a.explanation.last_sequence_number, Some(59_000));
    assert_eq!(a.status, AlertStatus::Fired);
}

#[test]
fn per_event_rule_fires_on_each_matching_event() {
    let rules = [spec(
        "low",
        "SELECT patient_id, spo2_pct FROM vitals WHERE spo2_pct < 85",
        0,
    )];
    let mut events = vec![
        ev("A", 1000, 80.0),
        ev("B", 2000, 80.0),
        ev("A", 3000, 80.0),
    ];
    events[0].spo2 = Some(84.9);
    events[2].spo2 = Some(70.0);
    events[1].spo2 = None; // a device that did not measure SpO2 never matches
    let alerts = run(&rules, &events, &[], None);
    assert_eq!(alerts.len(), 2);
    assert_eq!(alerts[0].values["spo2_pct"], 84.9);
    assert!(alerts.iter().all(|a| a.window_start_ms.is_none()));
    assert_ne!(alerts[0].id, alerts[1].id);
}

#[test]
fn cooldown_suppresses_repeats_for_the_same_key_and_counts_them() {
    let rules = [spec(
        "low",
        "SELECT patient_id, spo2_pct FROM vitals WHERE spo2_pct < 85",
        300_000,
    )];
    let mut events: Vec<Ev> = (0..5)
        .map(|i| Ev {
            spo2: Some(80.0),
            ..ev("A", i * 1000, 70.0)
        })
        .collect();
    events.push(Ev {
        spo2: Some(80.0),
        ..ev("A", 301_000, 70.0)
    });
    let alerts = run(&rules, &events, &[], None);
    let statuses: Vec<AlertStatus> = alerts.iter().map(|a| a.status).collect();
    use AlertStatus::*;
    assert_eq!(
        statuses,
        vec![Fired, Suppressed, Suppressed, Suppressed, Suppressed, Fired]
    );
    assert_eq!(
        alerts[1].explanation.suppressed_by.as_deref(),
        Some(alerts[0].id.as_str())
    );
}

#[test]
fn late_events_beyond_lateness_are_counted_not_aggregated() {
    let rules = [spec("count", "SELECT patient_id, COUNT(*) AS n FROM vitals GROUP BY TUMBLE(event_time, INTERVAL '10' SECOND), patient_id", 0)];
    let events = vec![
        ev("A", 1_000, 70.0),
        ev("A", 9_000, 70.0),
        ev("A", 12_000, 70.0), // watermark 11.5 s: window [0,10) closes
        ev("A", 9_500, 70.0),  // late: its window already closed
        ev("A", 11_800, 70.0), // out of order but within lateness: counted
        ev("A", 30_000, 70.0),
    ];
    let mut engine = Engine::new(EngineConfig::default());
    engine.upsert_rule(rules[0].clone()).unwrap();
    let mut alerts = vec![];
    let mut late = 0;
    for e in &events {
        let out = engine
            .process(0, &batch(std::slice::from_ref(e)), 0)
            .unwrap();
        late += out.late_events;
        alerts.extend(out.alerts);
    }
    assert_eq!(late, 1);
    assert_eq!(engine.rule_stats("count").unwrap().late_events, 1);
    let counts: Vec<(Option<i64>, serde_json::Value)> = alerts
        .iter()
        .map(|a| (a.window_start_ms, a.values["n"].clone()))
        .collect();
    assert_eq!(counts, vec![(Some(0), 2.into()), (Some(10_000), 2.into())]);
    // Cut differently, the same events give the same alerts and late count.
    let again = run(&rules, &events, &[2, 3], None);
    assert_eq!(summary(&again), summary(&alerts));
}

#[test]
fn hop_windows_combine_panes_and_each_event_counts_in_every_window() {
    let rules = [spec(
        "hop",
        "SELECT patient_id, COUNT(*) AS n, HOP_START(event_time, INTERVAL '1' MINUTE, INTERVAL '3' MINUTE) AS ws
         FROM vitals GROUP BY HOP(event_time, INTERVAL '1' MINUTE, INTERVAL '3' MINUTE), patient_id",
        0,
    )];
    // One event per minute for 5 minutes.
    let events: Vec<Ev> = (0..5).map(|m| ev("A", m * 60_000 + 5_000, 70.0)).collect();
    let alerts = run(&rules, &events, &[], Some(10 * 60_000));
    let got: Vec<(i64, i64)> = alerts
        .iter()
        .map(|a| (a.window_start_ms.unwrap(), a.values["n"].as_i64().unwrap()))
        .collect();
    // Windows [s, s+3min) for s = -2min … 4min.
    let want: Vec<(i64, i64)> = (-2..=4)
        .map(|s: i64| {
            let start = s * 60_000;
            let n = events
                .iter()
                .filter(|e| e.ts >= start && e.ts < start + 180_000)
                .count() as i64;
            (start, n)
        })
        .collect();
    assert_eq!(got, want);
}

#[test]
fn a_partition_far_ahead_in_event_time_neither_loses_nor_splits_windows() {
    let rules = [spec("count", "SELECT patient_id, COUNT(*) AS n FROM vitals GROUP BY TUMBLE(event_time, INTERVAL '60' SECOND), patient_id", 0)];
    let mut events = vec![];
    // Partition 1 delivers ten minutes before partition 0 delivers anything.
    for s in 0..600 {
        events.push(Ev {
            partition: 1,
            ..ev("B", s * 1000, 70.0)
        });
    }
    for s in 0..600 {
        events.push(Ev {
            partition: 0,
            ..ev("A", s * 1000, 70.0)
        });
    }
    let alerts = run(&rules, &events, &[100, 600, 650, 900], Some(600_000));
    let a: Vec<i64> = alerts
        .iter()
        .filter(|a| a.key["patient_id"] == "A")
        .map(|a| a.values["n"].as_i64().unwrap())
        .collect();
    let b: Vec<i64> = alerts
        .iter()
        .filter(|a| a.key["patient_id"] == "B")
        .map(|a| a.values["n"].as_i64().unwrap())
        .collect();
    assert_eq!(a, vec![60; 10]);
    assert_eq!(
        b,
        vec![60; 10],
        "the partition that ran ahead lost or split windows"
    );
}

#[test]
fn an_average_exactly_on_the_threshold_decides_the_same_for_every_batching() {
    // 143 readings averaging exactly 90.0 against AVG(spo2_pct) < 90: never fires.
    let rules = [spec(
        "hypox",
        "SELECT patient_id, AVG(spo2_pct) AS avg_spo2, COUNT(*) AS n FROM vitals
         GROUP BY TUMBLE(event_time, INTERVAL '5' MINUTE), patient_id HAVING AVG(spo2_pct) <= 90",
        0,
    )];
    let mut events = vec![];
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut values = vec![];
    for i in 0..71 {
        let d = 0.1 * ((i % 9) as f64 + 1.0);
        values.push(90.0 + d);
        values.push(90.0 - d);
    }
    values.push(90.0);
    for (i, v) in values.iter().enumerate() {
        events.push(Ev {
            spo2: Some((v * 10.0_f64).round() / 10.0),
            ..ev("A", i as i64 * 2000, 70.0)
        });
    }
    for trial in 0..20 {
        let mut cuts: Vec<usize> = (0..rng.gen_range(0..10))
            .map(|_| rng.gen_range(1..events.len()))
            .collect();
        cuts.sort();
        cuts.dedup();
        let alerts = run(&rules, &events, &cuts, Some(600_000));
        assert_eq!(alerts.len(), 1, "trial {trial} cuts {cuts:?}");
        assert_eq!(
            alerts[0].values["avg_spo2"], 90.0,
            "trial {trial}: average must be exactly 90.0"
        );
    }
}

#[test]
fn results_do_not_depend_on_batching_or_partition_interleaving() {
    let rules = [
        spec("tachy", TACHY, 0),
        spec(
            "hop",
            "SELECT patient_id, AVG(heart_rate_bpm) AS a, MIN(heart_rate_bpm) AS lo, MAX(heart_rate_bpm) AS hi, COUNT(*) AS n
             FROM vitals GROUP BY HOP(event_time, INTERVAL '30' SECOND, INTERVAL '2' MINUTE), patient_id HAVING AVG(heart_rate_bpm) > 90",
            60_000,
        ),
        spec("per-event", "SELECT patient_id, heart_rate_bpm FROM vitals WHERE heart_rate_bpm > 140", 30_000),
    ];
    let patients = ["P1", "P2", "P3", "P4", "P5", "P6", "P7", "P8"];
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let mut per_partition: Vec<Vec<Ev>> = vec![vec![]; 3];
    let mut hrs = [80.0f64; 8];
    for s in 0..900i64 {
        for (pi, p) in patients.iter().enumerate() {
            let hr = &mut hrs[pi];
            *hr = (*hr + rng.gen_range(-4.0..4.5)).clamp(40.0, 170.0);
            let hr = *hr;
            // Jitter within lateness keeps events mostly in order.
            let ts = s * 1000 + rng.gen_range(0..400);
            per_partition[pi % 3].push(Ev {
                partition: (pi % 3) as i32,
                ..ev(p, ts, (hr * 10.0).round() / 10.0)
            });
        }
    }
    // Baseline: each partition whole, one after another.
    let baseline_events: Vec<Ev> = per_partition.iter().flatten().cloned().collect();
    let baseline = summary(&run(&rules, &baseline_events, &[], Some(2_000_000)));
    assert!(baseline.len() > 5, "the scenario should fire: {baseline:?}");
    for trial in 0..8 {
        // Interleave partitions in random chunks, preserving order within each.
        let mut cursors = [0usize; 3];
        let mut events = vec![];
        while cursors
            .iter()
            .zip(&per_partition)
            .any(|(c, p)| *c < p.len())
        {
            let p = rng.gen_range(0..3);
            let take = rng.gen_range(1..400);
            let end = (cursors[p] + take).min(per_partition[p].len());
            events.extend_from_slice(&per_partition[p][cursors[p]..end]);
            cursors[p] = end;
        }
        let mut cuts: Vec<usize> = (0..rng.gen_range(1..50))
            .map(|_| rng.gen_range(1..events.len()))
            .collect();
        cuts.sort();
        cuts.dedup();
        let got = summary(&run(&rules, &events, &cuts, Some(2_000_000)));
        let missing: Vec<&String> = baseline.iter().filter(|a| !got.contains(a)).collect();
        let extra: Vec<&String> = got.iter().filter(|a| !baseline.contains(a)).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "trial {trial}: missing {missing:#?}\nextra {extra:#?}"
        );
    }
}

#[test]
fn restoring_a_snapshot_and_continuing_gives_the_same_alerts_as_never_stopping() {
    let rules = [
        spec("tachy", TACHY, 120_000),
        spec(
            "hop",
            "SELECT patient_id, AVG(heart_rate_bpm) AS a, COUNT(DISTINCT heart_rate_bpm) AS d, COUNT(*) AS n
             FROM vitals GROUP BY HOP(event_time, INTERVAL '30' SECOND, INTERVAL '2' MINUTE), patient_id HAVING AVG(heart_rate_bpm) > 95",
            60_000,
        ),
        spec(
            "session",
            "SELECT patient_id, COUNT(*) AS n, MAX(heart_rate_bpm) AS hi FROM vitals WHERE heart_rate_bpm > 120
             GROUP BY SESSION(event_time, INTERVAL '20' SECOND), patient_id",
            0,
        ),
        spec("per-event", "SELECT patient_id, heart_rate_bpm FROM vitals WHERE heart_rate_bpm > 150", 30_000),
    ];
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let mut events = vec![];
    let mut hrs = [90.0f64; 6];
    let patients = ["A", "B", "C", "D", "E", "F"];
    for s in 0..1200i64 {
        for (i, p) in patients.iter().enumerate() {
            hrs[i] = (hrs[i] + rng.gen_range(-5.0..5.5)).clamp(40.0, 170.0);
            events.push(Ev {
                partition: (i % 2) as i32,
                ..ev(
                    p,
                    s * 1000 + rng.gen_range(0..300),
                    (hrs[i] * 10.0).round() / 10.0,
                )
            });
        }
    }
    let uninterrupted = summary(&run(&rules, &events, &[], Some(5_000_000)));
    assert!(uninterrupted.len() > 10);

    for cut in [1_000, 3_333, 5_000] {
        let feed = |engine: &mut Engine, part: &[Ev], alerts: &mut Vec<Alert>| {
            for p in [0, 1] {
                let chunk: Vec<Ev> = part.iter().filter(|e| e.partition == p).cloned().collect();
                alerts.extend(engine.process(p, &batch(&chunk), 0).unwrap().alerts);
            }
        };
        let mut first = Engine::new(EngineConfig::default());
        for r in &rules {
            first.upsert_rule(r.clone()).unwrap();
        }
        first.assign_partitions(&[0, 1], 0);
        let mut alerts = vec![];
        feed(&mut first, &events[..cut], &mut alerts);
        let bytes = first.snapshot().unwrap();
        drop(first);

        let mut second = Engine::new(EngineConfig::default());
        for r in &rules {
            second.upsert_rule(r.clone()).unwrap();
        }
        let skipped = second.restore(&bytes, 0).unwrap();
        assert!(skipped.is_empty(), "{skipped:?}");
        feed(&mut second, &events[cut..], &mut alerts);
        alerts.extend(second.advance_watermark(5_000_000, 0).unwrap().alerts);
        assert_eq!(
            summary(&alerts),
            uninterrupted,
            "snapshot after {cut} events"
        );
    }
}

/// The clinical rules of the brief, running at once over one stream.
#[test]
fn five_clinical_rules_run_at_once_and_each_flags_exactly_its_patient() {
    let rules = [
        spec("tachycardia", TACHY, 0),
        spec(
            "hypoxemia",
            "SELECT patient_id, AVG(spo2_pct) AS avg_spo2, COUNT(*) AS n FROM vitals
             GROUP BY HOP(event_time, INTERVAL '1' MINUTE, INTERVAL '5' MINUTE), patient_id
             HAVING AVG(spo2_pct) < 90 AND COUNT(*) >= 10",
            0,
        ),
        spec(
            "bradycardia",
            "SELECT patient_id, MAX(heart_rate_bpm) AS max_hr FROM vitals
             GROUP BY TUMBLE(event_time, INTERVAL '30' SECOND), patient_id HAVING MAX(heart_rate_bpm) < 45",
            0,
        ),
        spec(
            "hypotension",
            "SELECT patient_id, AVG(systolic_bp_mmhg) AS avg_sbp FROM vitals
             GROUP BY HOP(event_time, INTERVAL '30' SECOND, INTERVAL '2' MINUTE), patient_id
             HAVING AVG(systolic_bp_mmhg) < 90",
            0,
        ),
        spec(
            "news2",
            "SELECT patient_id,
               MAX(CASE WHEN respiration_rate <= 8 OR respiration_rate >= 25 THEN 3
                        WHEN respiration_rate >= 21 THEN 2 WHEN respiration_rate <= 11 THEN 1 ELSE 0 END)
             + MAX(CASE WHEN spo2_pct <= 91 THEN 3 WHEN spo2_pct <= 93 THEN 2 WHEN spo2_pct <= 95 THEN 1 ELSE 0 END)
             + MAX(CASE WHEN systolic_bp_mmhg <= 90 OR systolic_bp_mmhg >= 220 THEN 3
                        WHEN systolic_bp_mmhg <= 100 THEN 2 WHEN systolic_bp_mmhg <= 110 THEN 1 ELSE 0 END)
             + MAX(CASE WHEN heart_rate_bpm <= 40 OR heart_rate_bpm >= 131 THEN 3 WHEN heart_rate_bpm >= 111 THEN 2
                        WHEN heart_rate_bpm <= 50 OR heart_rate_bpm >= 91 THEN 1 ELSE 0 END) AS news2
             FROM vitals GROUP BY TUMBLE(event_time, INTERVAL '5' MINUTE), patient_id
             HAVING news2 >= 7",
            0,
        ),
    ];
    // (patient, minute range, hr, spo2, sbp, rr) episodes; normal otherwise.
    let episode = |p: &str, minute: i64| -> (f64, f64, f64, f64) {
        match (p, minute) {
            ("T", 2) => (125.0, 97.0, 120.0, 16.0),
            ("H", 3..=8) => (80.0, 86.0, 120.0, 16.0),
            ("B", 4) => (40.0, 97.0, 120.0, 16.0),
            ("L", 2..=5) => (80.0, 97.0, 80.0, 16.0),
            ("N", 5..=9) => (95.0, 93.0, 105.0, 26.0),
            _ => (75.0, 97.0, 120.0, 16.0),
        }
    };
    let mut events = vec![];
    for s in 0..720i64 {
        for (i, p) in ["T", "H", "B", "L", "N", "Z"].into_iter().enumerate() {
            let (hr, spo2, _, _) = episode(p, s / 60);
            events.push(Ev {
                spo2: Some(spo2),
                partition: (i % 3) as i32,
                ..ev(p, s * 1000 + 250, hr)
            });
        }
    }
    // Systolic pressure and respiration come from the same script; the
    // shared batch helper fixes them, so set those columns here.
    let mut engine = Engine::new(EngineConfig::default());
    for r in &rules {
        engine.upsert_rule(r.clone()).unwrap();
    }
    engine.assign_partitions(&[0, 1, 2], 0);
    let mut alerts = vec![];
    for chunk in events.chunks(97) {
        for p in 0..3 {
            let part: Vec<Ev> = chunk.iter().filter(|e| e.partition == p).cloned().collect();
            if part.is_empty() {
                continue;
            }
            let mut b = batch(&part);
            let sbp: Vec<Option<f64>> = part
                .iter()
                .map(|e| Some(episode(e.patient, e.ts / 60_000).2))
                .collect();
            let rr: Vec<Option<f64>> = part
                .iter()
                .map(|e| Some(episode(e.patient, e.ts / 60_000).3))
                .collect();
            let mut cols = b.columns().to_vec();
            cols[5] = Arc::new(Float64Array::from(rr));
            cols[6] = Arc::new(Float64Array::from(sbp));
            b = RecordBatch::try_new(b.schema(), cols).unwrap();
            alerts.extend(engine.process(p, &b, 0).unwrap().alerts);
        }
    }
    alerts.extend(engine.advance_watermark(10_000_000, 0).unwrap().alerts);
    let flagged = |rule: &str| -> BTreeSet<String> {
        alerts
            .iter()
            .filter(|a| a.rule_id == rule)
            .map(|a| a.key["patient_id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(flagged("tachycardia"), BTreeSet::from(["T".to_string()]));
    assert_eq!(flagged("hypoxemia"), BTreeSet::from(["H".to_string()]));
    assert_eq!(flagged("bradycardia"), BTreeSet::from(["B".to_string()]));
    assert_eq!(flagged("hypotension"), BTreeSet::from(["L".to_string()]));
    assert_eq!(flagged("news2"), BTreeSet::from(["N".to_string()]));
    let news2: Vec<i64> = alerts
        .iter()
        .filter(|a| a.rule_id == "news2")
        .map(|a| a.values["news2"].as_i64().unwrap())
        .collect();
    assert_eq!(
        news2,
        vec![7],
        "N's deterioration scores 3 (RR) + 2 (SpO2) + 1 (SBP) + 1 (HR)"
    );
    // Bradycardia minute 4 = two 30 s windows.
    assert_eq!(
        alerts.iter().filter(|a| a.rule_id == "bradycardia").count(),
        2
    );
}

/// 2026-01-01T00:00:00Z: event and processing time of the clock-driven
/// scenarios below (a window boundary).
const T0: i64 = 1_767_225_600_000;

/// An event as a Kafka log holds it: readable from processing time `at_ms`.
#[derive(Clone, Debug)]
struct Logged {
    ev: Ev,
    at_ms: i64,
}

/// Six patients on three partitions (patient i on partition i % 3), 1 Hz:
/// 150 s of readings, an hour of silence, then a gateway on each partition
/// flushes the three minutes it buffered, partition 0 first, partition 1
/// three seconds later, partition 2 six seconds later; then two minutes of
/// live readings. Tachycardia in the first minute after the silence on
/// partitions 1 and 2 (the windows a burst read first used to make late),
/// in the last window before the silence and in the last window of all
/// (which close only when the stream goes quiet).
fn quiet_then_burst_logs() -> Vec<Vec<Logged>> {
    let patients = ["P0", "P1", "P2", "P3", "P4", "P5"];
    let tachy = |p: usize, s: i64| -> bool {
        matches!(
            (p, s / 60),
            (1, 0) | (2, 2) | (1, 60) | (5, 60) | (4, 61) | (0, 62) | (3, 64)
        )
    };
    let flush = |partition: usize| T0 + 3_781_000 + 3_000 * partition as i64;
    let mut logs: Vec<Vec<Logged>> = vec![vec![]; 3];
    let seconds = (0..150).chain(3_600..3_900);
    for s in seconds {
        for (i, p) in patients.iter().enumerate() {
            let partition = i % 3;
            let ts = T0 + s * 1_000 + (i as i64 * 37) % 400;
            let hr = if tachy(i, s) {
                124.0 + (s % 5) as f64
            } else {
                72.0 + (s % 3) as f64
            };
            let readable = if (3_600..3_780).contains(&s) {
                flush(partition)
            } else {
                ts + 50
            };
            logs[partition].push(Logged {
                ev: Ev {
                    partition: partition as i32,
                    ..ev(p, ts, hr)
                },
                at_ms: readable,
            });
        }
    }
    for log in &mut logs {
        log.sort_by_key(|l| l.ev.ts);
        // A log is read in order: nothing is readable before what precedes it.
        let mut readable = i64::MIN;
        for l in log.iter_mut() {
            readable = readable.max(l.at_ms);
            l.at_ms = readable;
        }
    }
    logs
}

/// Reads `logs` as a Kafka consumer would: whenever events are readable,
/// a random partition's next chunk of random size (seeded); whenever none
/// is, the consumer is caught up and the engine ticks while processing time
/// passes. Returns the alerts with the processing time each was fired at,
/// and the engine (after a final quiet period, nothing forced).
fn consume(rules: &[RuleSpec], logs: &[Vec<Logged>], seed: u64) -> (Vec<Alert>, Engine) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut engine = Engine::new(EngineConfig::default());
    for r in rules {
        engine.upsert_rule(r.clone()).unwrap();
    }
    let partitions: Vec<i32> = (0..logs.len() as i32).collect();
    let mut now = T0 - 1_000;
    engine.assign_partitions(&partitions, now);
    let mut cursors = vec![0usize; logs.len()];
    let mut alerts = vec![];
    let readable = |p: usize, cursors: &[usize], now: i64| {
        logs[p][cursors[p]..]
            .iter()
            .take_while(|l| l.at_ms <= now)
            .count()
    };
    loop {
        let ready: Vec<usize> = (0..logs.len())
            .filter(|&p| readable(p, &cursors, now) > 0)
            .collect();
        if ready.is_empty() {
            // Caught up: processing time passes in steps, ticking.
            let out = engine.tick(now).unwrap();
            assert!(out.errors.is_empty(), "{:?}", out.errors);
            alerts.extend(out.alerts);
            let next = (0..logs.len())
                .filter_map(|p| logs[p].get(cursors[p]).map(|l| l.at_ms))
                .min();
            let Some(next) = next else {
                if now > logs.iter().flatten().map(|l| l.at_ms).max().unwrap() + 20_000 {
                    break;
                }
                now += 250;
                continue;
            };
            now = (now + rng.gen_range(50..500)).min(next.max(now + 1));
            continue;
        }
        let p = ready[rng.gen_range(0..ready.len())];
        let take = rng.gen_range(1..=64).min(readable(p, &cursors, now));
        let chunk: Vec<Ev> = logs[p][cursors[p]..cursors[p] + take]
            .iter()
            .map(|l| l.ev.clone())
            .collect();
        cursors[p] += take;
        let out = engine.process(p as i32, &batch(&chunk), now).unwrap();
        assert!(out.errors.is_empty(), "{:?}", out.errors);
        alerts.extend(out.alerts);
        now += rng.gen_range(0..20);
    }
    (alerts, engine)
}

#[test]
fn traffic_resuming_partition_by_partition_after_a_quiet_hour_loses_no_window() {
    let rules = [spec("tachy", TACHY, 0)];
    let logs = quiet_then_burst_logs();
    // The same events with no pause: every partition's log in one go, no
    // processing time passing, everything closed at the end.
    let unpaused: Vec<Ev> = logs.iter().flatten().map(|l| l.ev.clone()).collect();
    let want = summary(&run(&rules, &unpaused, &[], Some(i64::MAX / 4)));
    let windows: Vec<(String, i64)> = run(&rules, &unpaused, &[], Some(i64::MAX / 4))
        .iter()
        .map(|a| {
            (
                a.key["patient_id"].as_str().unwrap().to_string(),
                (a.window_start_ms.unwrap() - T0) / 1_000,
            )
        })
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(
        windows,
        [
            ("P0", 3_720),
            ("P1", 0),
            ("P1", 3_600),
            ("P2", 120),
            ("P3", 3_840),
            ("P4", 3_660),
            ("P5", 3_600),
        ]
        .map(|(p, s)| (p.to_string(), s)),
        "the scenario is what we think it is"
    );
    for seed in 0..5 {
        let (alerts, engine) = consume(&rules, &logs, seed);
        assert_eq!(summary(&alerts), want, "seed {seed}");
        assert_eq!(
            engine.rule_stats("tachy").unwrap().late_events,
            0,
            "seed {seed}"
        );
        // The last window before the silence closed during it, and the last
        // window of all once the stream went quiet (5 s after its end +
        // lateness), without a later event.
        let fired_at = |patient: &str| {
            alerts
                .iter()
                .find(|a| a.key["patient_id"] == patient)
                .map(|a| a.fired_at_ms - a.window_end_ms.unwrap())
                .unwrap()
        };
        let p2 = alerts.iter().find(|a| a.key["patient_id"] == "P2").unwrap();
        assert!(p2.fired_at_ms < T0 + 3_600_000, "seed {seed}: {p2:?}");
        assert!(
            (5_500..7_000).contains(&fired_at("P2")),
            "seed {seed}: {}",
            fired_at("P2")
        );
        assert!(
            (5_500..7_000).contains(&fired_at("P3")),
            "seed {seed}: {}",
            fired_at("P3")
        );
    }
}

#[test]
fn processing_time_closes_nothing_while_a_partition_is_still_delivering() {
    let rules = [spec("tachy", TACHY, 0)];
    let mut engine = Engine::new(EngineConfig::default());
    engine.upsert_rule(rules[0].clone()).unwrap();
    engine.assign_partitions(&[0, 1], T0);
    let mut alerts = vec![];
    // Partition 0: a minute of tachycardia, as it happens.
    for s in 0..60 {
        let e = ev("P1", T0 + s * 1_000, 125.0);
        alerts.extend(
            engine
                .process(0, &batch(&[e]), T0 + s * 1_000 + 50)
                .unwrap()
                .alerts,
        );
    }
    // Partition 1 works through an old backlog for a minute of processing
    // time, ticking in between: its event time holds the watermark back and
    // its deliveries keep the stream from being quiet.
    for k in 0..600 {
        let now = T0 + 60_000 + k * 100;
        let e = Ev {
            partition: 1,
            ..ev("P9", T0 - 3_600_000 + k * 100, 70.0)
        };
        alerts.extend(engine.process(1, &batch(&[e]), now).unwrap().alerts);
        alerts.extend(engine.tick(now + 50).unwrap().alerts);
    }
    assert!(alerts.is_empty(), "{alerts:?}");
    // Once the stream is quiet, the window closes 5 s after end + lateness
    // (partition 1 is also idle by then: partition 0 is ahead of it).
    let last = T0 + 60_000 + 599 * 100;
    alerts.extend(engine.tick(last + 4_999).unwrap().alerts);
    assert!(alerts.is_empty(), "{alerts:?}");
    alerts.extend(engine.tick(last + 10_000).unwrap().alerts);
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0].window_start_ms, Some(T0));
}

// Late data that still alerts (see `window/panes/late.rs` and
// `tests/rules/late_alerts.rules`).

const BURST: &str = "SELECT patient_id, COUNT(*) AS n FROM vitals
GROUP BY TUMBLE(event_time, INTERVAL '10' SECOND), patient_id HAVING COUNT(*) >= 3";

fn engine_with(rules: &[RuleSpec], horizon_ms: i64) -> Engine {
    let mut engine = Engine::new(EngineConfig {
        late_alert_horizon_ms: horizon_ms,
        ..EngineConfig::default()
    });
    for r in rules {
        engine.upsert_rule(r.clone()).unwrap();
    }
    engine
}

#[test]
fn a_late_event_that_turns_a_closed_window_into_an_alert_raises_a_late_alert() {
    let rules = [spec("burst", BURST, 0)];
    let events = [
        ev("A", 1_000, 70.0),
        ev("A", 2_000, 70.0),
        ev("B", 15_000, 70.0), // [0,10 s) closes: A has 2, no alert
        ev("A", 9_000, 70.0),  // late: A's third reading
        ev("B", 21_000, 70.0), // the stream reaches 20 s: the late row is applied
    ];
    for horizon in [0, 600_000] {
        let mut engine = engine_with(&rules, horizon);
        let mut alerts = vec![];
        for e in &events {
            let out = engine
                .process(0, &batch(std::slice::from_ref(e)), 0)
                .unwrap();
            alerts.extend(out.alerts);
        }
        assert_eq!(engine.rule_stats("burst").unwrap().late_events, 1);
        if horizon == 0 {
            assert!(alerts.is_empty(), "horizon 0 only counts: {alerts:?}");
            continue;
        }
        assert_eq!(alerts.len(), 1, "{alerts:?}");
        let late = &alerts[0];
        assert!(late.explanation.late);
        assert_eq!(late.window_start_ms, Some(0));
        assert_eq!(late.values["n"], 3);
        assert_eq!(late.explanation.event_count, 3);
        assert_eq!(late.status, AlertStatus::Fired);
        // Not the id an on-time alert of that window would have had.
        let on_time_id = sql_rules::alert_id("burst", 1, &late.key, "w=0");
        assert_ne!(late.id, on_time_id);
        // `late` is in the JSON only when set.
        let json = serde_json::to_value(late).unwrap();
        assert_eq!(json["explanation"]["late"], true);
    }
}

#[test]
fn an_on_time_alert_serialises_without_a_late_field_and_old_json_reads_back() {
    let rules = [spec("burst", BURST, 0)];
    let events = [
        ev("A", 1_000, 70.0),
        ev("A", 2_000, 70.0),
        ev("A", 3_000, 70.0),
        ev("B", 15_000, 70.0),
    ];
    let alerts = run(&rules, &events, &[], None);
    assert_eq!(alerts.len(), 1);
    let mut json = serde_json::to_value(&alerts[0]).unwrap();
    assert!(json["explanation"].get("late").is_none(), "{json}");
    json["explanation"].as_object_mut().unwrap().remove("late");
    let back: Alert = serde_json::from_value(json).unwrap();
    assert!(!back.explanation.late);
    assert_eq!(back, alerts[0]);
}

#[test]
fn a_window_that_already_alerted_gets_no_late_alert() {
    let rules = [spec("burst", BURST, 0)];
    let events = [
        ev("A", 1_000, 70.0),
        ev("A", 2_000, 70.0),
        ev("A", 3_000, 70.0),
        ev("B", 15_000, 70.0),
        ev("A", 9_000, 70.0),  // late, window alerted already
        ev("B", 21_000, 70.0), // the stream reaches 20 s: the late row is applied
    ];
    let alerts = run(&rules, &events, &[], None);
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert!(!alerts[0].explanation.late);
    assert_eq!(alerts[0].values["n"], 3);
}

/// Readings of 6 patients over `minutes`, in two partitions, a few of
/// them delayed by 2 to 40 s (a device buffering): late for the rules.
fn stream_with_late_readings(minutes: i64, seed: u64) -> Vec<Ev> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let patients = ["A", "B", "C", "D", "E", "F"];
    let mut by_partition: [Vec<Ev>; 2] = [vec![], vec![]];
    for s in 0..minutes * 60 {
        for (i, p) in patients.iter().enumerate() {
            if rng.gen_bool(0.4) {
                continue;
            }
            let e = Ev {
                partition: (i % 2) as i32,
                ..ev(
                    p,
                    s * 1000 + rng.gen_range(0..300),
                    rng.gen_range(60.0..140.0),
                )
            };
            by_partition[i % 2].push(e);
        }
    }
    // Delay some readings within their partition: they arrive later in
    // partition order, after the stream passed their window.
    for part in &mut by_partition {
        let n = part.len();
        for _ in 0..n / 25 {
            let from = rng.gen_range(0..n);
            let by = rng.gen_range(2..40);
            let to = (from + by * 4).min(n - 1);
            let e = part.remove(from);
            part.insert(to, e);
        }
    }
    // Interleave the partitions as a consumer might.
    let mut events = vec![];
    let (mut a, mut b) = (0, 0);
    while a < by_partition[0].len() || b < by_partition[1].len() {
        if b >= by_partition[1].len() || (a < by_partition[0].len() && rng.gen_bool(0.5)) {
            events.push(by_partition[0][a].clone());
            a += 1;
        } else {
            events.push(by_partition[1][b].clone());
            b += 1;
        }
    }
    events
}

fn late_summary(alerts: &[Alert]) -> Vec<String> {
    let mut v: Vec<String> = alerts
        .iter()
        .map(|a| {
            format!(
                "{} {} {} {:?} {:?} late={} n={}",
                a.id,
                a.rule_id,
                a.key["patient_id"],
                a.window_start_ms,
                a.status,
                a.explanation.late,
                a.explanation.event_count
            )
        })
        .collect();
    v.sort();
    v
}

fn late_rules() -> Vec<RuleSpec> {
    vec![
        spec(
            "tumble",
            "SELECT patient_id, AVG(heart_rate_bpm) AS a, COUNT(*) AS n FROM vitals
             GROUP BY TUMBLE(event_time, INTERVAL '20' SECOND), patient_id
             HAVING AVG(heart_rate_bpm) > 108 AND COUNT(*) >= 3",
            30_000,
        ),
        spec(
            "hop",
            "SELECT patient_id, MAX(heart_rate_bpm) AS hi, COUNT(*) AS n FROM vitals
             GROUP BY HOP(event_time, INTERVAL '10' SECOND, INTERVAL '30' SECOND), patient_id
             HAVING MAX(heart_rate_bpm) > 138",
            0,
        ),
    ]
}

#[test]
fn late_alerts_do_not_depend_on_batching_and_their_ids_are_stable() {
    let rules = late_rules();
    let events = stream_with_late_readings(20, 11);
    let whole = late_summary(&run(&rules, &events, &[], Some(10_000_000)));
    let late = whole.iter().filter(|s| s.contains("late=true")).count();
    assert!(late >= 3, "the stream should raise late alerts: {late}");
    // Ids are unique: a late alert never takes an on-time alert's id.
    let ids: BTreeSet<&str> = whole.iter().map(|s| s.split(' ').next().unwrap()).collect();
    assert_eq!(ids.len(), whole.len());
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    for _ in 0..6 {
        let mut cuts: Vec<usize> = (0..rng.gen_range(1..200))
            .map(|_| rng.gen_range(0..events.len()))
            .collect();
        cuts.sort_unstable();
        cuts.dedup();
        let again = late_summary(&run(&rules, &events, &cuts, Some(10_000_000)));
        assert_eq!(again, whole, "cut at {} places", cuts.len());
    }
    // One event per batch.
    let every: Vec<usize> = (1..events.len()).collect();
    assert_eq!(
        late_summary(&run(&rules, &events, &every, Some(10_000_000))),
        whole
    );
}

#[test]
fn late_alerts_survive_a_snapshot_and_restore() {
    let rules = late_rules();
    let events = stream_with_late_readings(10, 17);
    let uninterrupted = late_summary(&run(&rules, &events, &[], Some(10_000_000)));
    assert!(uninterrupted.iter().any(|s| s.contains("late=true")));
    for cut in [300, 1_000, 1_777] {
        let mut alerts = vec![];
        let feed = |engine: &mut Engine, part: &[Ev], alerts: &mut Vec<Alert>| {
            for e in part {
                let out = engine
                    .process(e.partition, &batch(std::slice::from_ref(e)), 0)
                    .unwrap();
                alerts.extend(out.alerts);
            }
        };
        let mut first = engine_with(&rules, 600_000);
        first.assign_partitions(&[0, 1], 0);
        feed(&mut first, &events[..cut], &mut alerts);
        let bytes = first.snapshot().unwrap();
        drop(first);
        let mut second = engine_with(&rules, 600_000);
        assert!(second.restore(&bytes, 0).unwrap().is_empty());
        feed(&mut second, &events[cut..], &mut alerts);
        alerts.extend(second.advance_watermark(10_000_000, 0).unwrap().alerts);
        assert_eq!(late_summary(&alerts), uninterrupted, "snapshot after {cut}");
    }
}

#[test]
fn closed_windows_are_kept_for_the_horizon_only() {
    let rules = late_rules();
    let events = stream_with_late_readings(60, 23);
    let bytes_at = |horizon: i64| -> Vec<usize> {
        let mut engine = engine_with(&rules, horizon);
        engine.assign_partitions(&[0, 1], 0);
        let mut sizes = vec![];
        for (i, chunk) in events.chunks(events.len() / 6).enumerate() {
            for p in [0, 1] {
                let part: Vec<Ev> = chunk.iter().filter(|e| e.partition == p).cloned().collect();
                engine.process(p, &batch(&part), 0).unwrap();
            }
            if i >= 2 {
                sizes.push(engine.state_bytes());
            }
        }
        sizes
    };
    let kept = bytes_at(600_000);
    let none = bytes_at(0);
    // The horizon costs state, and that state stops growing once the
    // stream is past it (20, 30, 40, 50 and 60 minutes in).
    assert!(kept[0] > none[0], "{kept:?} vs {none:?}");
    let (lo, hi) = (kept.iter().min().unwrap(), kept.iter().max().unwrap());
    assert!(
        *hi <= lo + lo / 2,
        "kept state grows with the stream: {kept:?}"
    );
}

#[test]
fn a_late_row_held_at_a_snapshot_is_applied_after_restore() {
    let rules = [spec("burst", BURST, 0)];
    let mut first = engine_with(&rules, 600_000);
    for e in [
        ev("A", 1_000, 70.0),
        ev("A", 2_000, 70.0),
        ev("B", 15_000, 70.0),
        ev("A", 9_000, 70.0), // late, held until the stream moves on
    ] {
        let out = first.process(0, &batch(&[e]), 0).unwrap();
        assert!(out.alerts.is_empty());
    }
    let bytes = first.snapshot().unwrap();
    let mut second = engine_with(&rules, 600_000);
    assert!(second.restore(&bytes, 0).unwrap().is_empty());
    let out = second
        .process(0, &batch(&[ev("B", 21_000, 70.0)]), 0)
        .unwrap();
    assert_eq!(out.alerts.len(), 1, "{:?}", out.alerts);
    assert!(out.alerts[0].explanation.late);
    assert_eq!(out.alerts[0].values["n"], 3);
}

#[test]
fn a_window_that_closed_before_the_rule_saw_the_stream_never_alerts_late() {
    // As after a restart without a snapshot, or a rule added mid-stream:
    // whether [0,10 s) alerted is unknown, so late readings there only
    // count; [10 s,20 s), which the rule saw, still alerts late.
    let rules = [spec("burst", BURST, 0)];
    let events = [
        ev("B", 15_000, 70.0), // the first reading the rule sees
        ev("B", 31_000, 70.0), // [10 s,20 s) closes: B has 1
        ev("A", 9_000, 70.0),  // late, before the rule's time
        ev("A", 9_100, 70.0),
        ev("A", 9_200, 70.0),
        ev("B", 16_000, 70.0), // late, in a window the rule saw
        ev("B", 17_000, 70.0),
        ev("B", 41_000, 70.0), // the stream reaches 40 s: late rows applied
    ];
    for cuts in [vec![], (1..events.len()).collect::<Vec<_>>()] {
        let alerts = run(&rules, &events, &cuts, None);
        assert_eq!(alerts.len(), 1, "{alerts:?}");
        assert!(alerts[0].explanation.late);
        assert_eq!(alerts[0].key["patient_id"], "B");
        assert_eq!(alerts[0].window_start_ms, Some(10_000));
    }
}

#[test]
fn a_rule_keyed_by_more_than_the_patient_alerts_late_for_the_touched_group_only() {
    // Keyed by (patient, heart rate band): DataFusion's group table, not
    // the patient fast path.
    let rules = [spec(
        "bands",
        "SELECT patient_id, heart_rate_bpm > 100 AS fast, COUNT(*) AS n FROM vitals
         GROUP BY TUMBLE(event_time, INTERVAL '10' SECOND), patient_id, heart_rate_bpm > 100
         HAVING COUNT(*) >= 2",
        0,
    )];
    let events = [
        ev("A", 1_000, 120.0),
        ev("A", 2_000, 70.0),
        ev("A", 3_000, 70.0), // (A, slow) alerts on time
        ev("B", 4_000, 120.0),
        ev("C", 15_000, 70.0),
        ev("A", 9_000, 130.0), // late: (A, fast) now has 2
        ev("A", 9_500, 60.0),  // late: (A, slow) alerted already
        ev("C", 21_000, 70.0),
    ];
    for cuts in [vec![], (1..events.len()).collect::<Vec<_>>()] {
        let alerts = run(&rules, &events, &cuts, None);
        let got: Vec<(bool, &serde_json::Value, bool)> = alerts
            .iter()
            .map(|a| (a.explanation.late, &a.key["fast"], a.values["n"] == 2))
            .collect();
        assert_eq!(
            got,
            vec![
                (false, &serde_json::Value::Bool(false), true),
                (true, &serde_json::Value::Bool(true), true),
            ],
            "{alerts:?}"
        );
    }
}
