//! Run-time budgets: a rule over its state, work or alert budget is
//! suspended — state dropped, no longer evaluated, the reason and time in
//! its stats — while the other rules keep running; a new version of the
//! rule clears it (issue 12, "rules with budgets").

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use arrow::array::{Float64Array, Int64Array, StringArray, TimestampMillisecondArray, UInt32Array};
use arrow::record_batch::RecordBatch;
use sql_rules::stream::vitals_schema;
use sql_rules::{
    AlertStatus, CompiledRule, Engine, EngineConfig, RuleBudgets, RuleSpec, SuspensionReason,
};

/// A minute boundary an hour ago: recent, and minute-aligned so that the
/// alert budget's minutes are easy to reason about.
fn t0() -> i64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    (now - 3_600_000).div_euclid(60_000) * 60_000
}

/// Readings `(patient, ms after t0, heart rate, spo2)`, sequence numbers in order.
fn batch(t0: i64, events: &[(&str, i64, f64, f64)], first_seq: u32) -> RecordBatch {
    let ts: Vec<i64> = events.iter().map(|e| t0 + e.1).collect();
    let n = events.len();
    RecordBatch::try_new(
        vitals_schema(),
        vec![
            Arc::new(StringArray::from(vec![Some("H01"); n])),
            Arc::new(StringArray::from(
                events.iter().map(|e| e.0).collect::<Vec<_>>(),
            )),
            Arc::new(Int64Array::from(ts.clone())),
            Arc::new(Float64Array::from(
                events.iter().map(|e| e.2).collect::<Vec<_>>(),
            )),
            Arc::new(Float64Array::from(
                events.iter().map(|e| e.3).collect::<Vec<_>>(),
            )),
            Arc::new(Float64Array::from(vec![16.0; n])),
            Arc::new(Float64Array::from(vec![120.0; n])),
            Arc::new(Float64Array::from(vec![80.0; n])),
            Arc::new(StringArray::from(vec![Some("BEDSIDE"); n])),
            Arc::new(UInt32Array::from_iter_values(
                (0..n as u32).map(|i| first_seq + i),
            )),
            Arc::new(TimestampMillisecondArray::from(ts).with_timezone("UTC")),
        ],
    )
    .unwrap()
}

fn spec(id: &str, version: u32, sql: &str, cooldown_ms: i64) -> RuleSpec {
    RuleSpec {
        id: id.into(),
        version,
        name: id.into(),
        severity: "high".into(),
        cooldown_ms,
        allowed_lateness_ms: None,
        keep_duplicates: false,
        escalation: None,
        compiled: CompiledRule::compile(sql, &vitals_schema()).unwrap(),
    }
}

const CANARY: &str = "SELECT patient_id, spo2_pct FROM vitals WHERE spo2_pct < 90";

fn engine(budgets: RuleBudgets, rules: &[RuleSpec]) -> Engine {
    let mut engine = Engine::new(EngineConfig {
        budgets,
        ..EngineConfig::default()
    });
    for r in rules {
        engine.upsert_rule(r.clone()).unwrap();
    }
    engine.assign_partitions(&[0], 0);
    engine
}

fn fired(alerts: &[sql_rules::Alert], rule: &str) -> usize {
    alerts
        .iter()
        .filter(|a| a.rule_id == rule && a.status == AlertStatus::Fired)
        .count()
}

#[test]
fn an_alert_storm_suspends_its_rule_at_the_budget_and_the_canary_keeps_firing() {
    let t0 = t0();
    let budgets = RuleBudgets {
        max_alerts_per_minute: 10,
        ..RuleBudgets::default()
    };
    let storm = "SELECT patient_id, heart_rate_bpm FROM vitals WHERE heart_rate_bpm > 100";
    let mut engine = engine(
        budgets,
        &[spec("storm", 1, storm, 0), spec("canary", 1, CANARY, 0)],
    );
    // 30 readings in half a minute: the storm rule matches every one.
    let events: Vec<_> = (0..30).map(|i| ("P1", i * 1_000, 130.0, 97.0)).collect();
    let out = engine.process(0, &batch(t0, &events, 1), 5).unwrap();
    assert_eq!(fired(&out.alerts, "storm"), 10);
    assert_eq!(out.suspended.len(), 1);
    assert_eq!(out.suspended[0].rule_id, "storm");
    assert!(out.errors.is_empty());

    let stats = engine.rule_stats("storm").unwrap();
    let s = stats.suspension.clone().expect("suspended");
    assert_eq!(s.reason, SuspensionReason::AlertsPerMinute);
    assert_eq!((s.budget, s.observed), (10, 11));
    // The 11th reading's alert went over: its time and the call's.
    assert_eq!(s.at_event_ms, Some(t0 + 10_000));
    assert_eq!(s.at_processing_ms, 5);
    assert!(
        s.message.contains("max_alerts_per_rule_minute"),
        "{}",
        s.message
    );
    assert_eq!(stats.alerts_fired, 10);
    // Serialised with the stats, for the API.
    let json = serde_json::to_value(&stats).unwrap();
    assert_eq!(json["suspension"]["reason"], "alerts_per_minute");

    // Later events: the storm rule is not evaluated, the canary fires.
    let events: Vec<_> = (0..5)
        .map(|i| ("P1", 60_000 + i * 1_000, 140.0, 85.0))
        .collect();
    let out = engine.process(0, &batch(t0, &events, 100), 6).unwrap();
    assert_eq!(fired(&out.alerts, "storm"), 0);
    assert_eq!(fired(&out.alerts, "canary"), 5);
    assert!(out.suspended.is_empty());
    // It stopped at the reading that went over.
    assert_eq!(engine.rule_stats("storm").unwrap().events_matched, 11);

    // A new version clears the suspension and runs afresh.
    engine.upsert_rule(spec("storm", 2, storm, 0)).unwrap();
    assert!(engine.rule_stats("storm").unwrap().suspension.is_none());
    let out = engine
        .process(0, &batch(t0, &[("P1", 120_000, 130.0, 97.0)], 200), 7)
        .unwrap();
    assert_eq!(fired(&out.alerts, "storm"), 1);
}

#[test]
fn a_rule_whose_state_grows_past_its_budget_is_suspended_and_its_state_dropped() {
    let t0 = t0();
    let budgets = RuleBudgets {
        max_state_bytes: 256 * 1024,
        ..RuleBudgets::default()
    };
    // A key per event in a day-long window: state that only grows.
    let hoarder = "SELECT patient_id, timestamp_unix_ms, COUNT(*) AS n FROM vitals
                   GROUP BY TUMBLE(event_time, INTERVAL '24' HOUR), patient_id, timestamp_unix_ms";
    let mut engine = engine(
        budgets,
        &[spec("hoarder", 1, hoarder, 0), spec("canary", 1, CANARY, 0)],
    );
    let mut suspended_at = None;
    for b in 0..40i64 {
        let events: Vec<_> = (0..512)
            .map(|i| ("P1", (b * 512 + i) * 10, 80.0, 97.0))
            .collect();
        let out = engine
            .process(0, &batch(t0, &events, (b * 512) as u32), b)
            .unwrap();
        if !out.suspended.is_empty() {
            suspended_at = Some(b);
            break;
        }
    }
    let b = suspended_at.expect("the state budget was reached");
    let s = engine.rule_stats("hoarder").unwrap().suspension.unwrap();
    assert_eq!(s.reason, SuspensionReason::StateBytes);
    assert!(s.observed > s.budget, "{s:?}");
    assert_eq!(s.at_processing_ms, b);
    assert!(s.message.contains("max_rule_state_bytes"), "{}", s.message);
    // Its state is gone: what remains is the canary's (none) and the
    // engine's own (patients, duplicate detection).
    assert_eq!(engine.rule_stats("hoarder").unwrap().open_panes, 0);
    assert!(engine.state_bytes() < 64 * 1024, "{}", engine.state_bytes());
    let out = engine
        .process(0, &batch(t0, &[("P1", 900_000, 80.0, 85.0)], 1_000_000), 99)
        .unwrap();
    assert_eq!(fired(&out.alerts, "canary"), 1);
}

#[test]
fn a_rule_whose_windows_cost_too_much_work_in_one_batch_is_suspended() {
    let t0 = t0();
    // 60 panes per window: each window result row counts 60 units.
    let budgets = RuleBudgets {
        max_work_per_batch: 1_000,
        ..RuleBudgets::default()
    };
    let hop = "SELECT patient_id, COUNT(*) AS n FROM vitals
               GROUP BY HOP(event_time, INTERVAL '1' SECOND, INTERVAL '60' SECOND), patient_id
               HAVING COUNT(*) > 1000";
    let light = "SELECT patient_id, COUNT(*) AS n FROM vitals
                 GROUP BY TUMBLE(event_time, INTERVAL '60' SECOND), patient_id
                 HAVING COUNT(*) >= 1";
    let mut engine = engine(
        budgets,
        &[spec("heavy", 1, hop, 0), spec("light", 1, light, 0)],
    );
    // 20 patients: one window result is 20 rows x 60 panes = 1,200 units.
    let patients: Vec<String> = (0..20).map(|p| format!("P{p}")).collect();
    let events: Vec<_> = patients
        .iter()
        .map(|p| (p.as_str(), 500, 80.0, 97.0))
        .collect();
    engine.process(0, &batch(t0, &events, 1), 1).unwrap();
    let out = engine.advance_watermark(t0 + 120_000, 2).unwrap();
    assert_eq!(out.suspended.len(), 1, "{:?}", out.suspended);
    let s = engine.rule_stats("heavy").unwrap().suspension.unwrap();
    assert_eq!(s.reason, SuspensionReason::WorkPerBatch);
    assert_eq!((s.budget, s.observed), (1_000, 1_200));
    // The light rule closed its window for all 20 patients.
    assert_eq!(fired(&out.alerts, "light"), 20);
    assert!(engine.rule_stats("light").unwrap().suspension.is_none());
}

#[test]
fn a_suspension_survives_a_snapshot_and_restore() {
    let t0 = t0();
    let budgets = RuleBudgets {
        max_alerts_per_minute: 1,
        ..RuleBudgets::default()
    };
    let storm = "SELECT patient_id FROM vitals WHERE heart_rate_bpm > 100";
    let rules = [spec("storm", 1, storm, 0)];
    let mut engine = engine(budgets, &rules);
    let events = [("P1", 0, 130.0, 97.0), ("P1", 1_000, 130.0, 97.0)];
    engine.process(0, &batch(t0, &events, 1), 1).unwrap();
    let before = engine.rule_stats("storm").unwrap();
    assert!(before.suspension.is_some());
    let snapshot = engine.snapshot().unwrap();

    let mut restored = self::engine(budgets, &rules);
    restored.restore(&snapshot, 2).unwrap();
    assert_eq!(restored.rule_stats("storm").unwrap(), before);
    let out = restored
        .process(0, &batch(t0, &[("P1", 120_000, 130.0, 97.0)], 10), 3)
        .unwrap();
    assert!(out.alerts.is_empty());
}

#[test]
fn the_default_budgets_are_generous() {
    let b = RuleBudgets::default();
    assert_eq!(b.max_state_bytes, 256 * 1024 * 1024);
    assert_eq!(b.max_work_per_batch, 1_000_000_000);
    assert_eq!(b.max_alerts_per_minute, 100_000);
}
