//! Signal-loss clears beyond what `rules/signal_loss.rules` pins: across a
//! snapshot and restore, and what a clear alert holds.

mod common;

use common::{batch, Ev};
use sql_rules::stream::vitals_schema;
use sql_rules::{alert_id, Alert, AlertStatus, CompiledRule, Engine, EngineConfig, RuleSpec};

fn silent(cooldown_ms: i64) -> RuleSpec {
    RuleSpec {
        id: "silent".into(),
        version: 3,
        name: "Monitor silent".into(),
        severity: "high".into(),
        cooldown_ms,
        allowed_lateness_ms: None,
        keep_duplicates: false,
        escalation: None,
        compiled: CompiledRule::compile(
            "SELECT patient_id, COUNT(*) AS readings, MAX(timestamp_unix_ms) AS last_reading_ms
             FROM vitals GROUP BY SESSION(event_time, INTERVAL '30' SECOND), patient_id",
            &vitals_schema(),
        )
        .unwrap(),
    }
}

fn engine() -> Engine {
    let mut e = Engine::new(EngineConfig::default());
    e.upsert_rule(silent(0)).unwrap();
    e.assign_partitions(&[0], 0);
    e
}

/// A and B send every 5 s; A goes silent at 20 s (its silence alerts once
/// B's readings carry the stream past 50.5 s) and comes back at 70 s, at
/// another hospital. Each step is one batch.
fn steps() -> Vec<Vec<Ev>> {
    let mut steps: Vec<Vec<Ev>> = (0..=4)
        .map(|i| {
            vec![
                ("A", Some("H1"), i * 5_000, 70.0),
                ("B", Some("H1"), i * 5_000, 72.0),
            ]
        })
        .collect();
    steps.extend((5..=13).map(|i| vec![("B", Some("H1"), i * 5_000, 72.0)]));
    // A's first reading back: the watermark (69.5 s) has not reached it.
    steps.push(vec![("A", Some("H2"), 70_000, 71.0)]);
    steps.push(vec![
        ("B", Some("H1"), 75_000, 72.0),
        ("A", Some("H2"), 75_000, 71.0),
    ]);
    steps.push(vec![("B", Some("H1"), 80_000, 72.0)]);
    steps
}

fn feed(engine: &mut Engine, steps: &[Vec<Ev>], alerts: &mut Vec<Alert>) {
    for events in steps {
        alerts.extend(engine.process(0, &batch(events), 0).unwrap().alerts);
    }
}

#[test]
fn a_clear_holds_the_rule_key_values_and_hospital_of_the_alert_it_clears() {
    let mut alerts = vec![];
    feed(&mut engine(), &steps(), &mut alerts);
    let [alert, clear] = alerts.as_slice() else {
        panic!("expected A's alert and its clear: {alerts:#?}");
    };
    assert_eq!(alert.explanation.clears, None);
    assert_eq!(alert.hospital_id.as_deref(), Some("H1"));
    assert_eq!(clear.explanation.clears.as_deref(), Some(alert.id.as_str()));
    assert_eq!(
        (
            clear.rule_id.as_str(),
            clear.rule_version,
            clear.patient_id()
        ),
        ("silent", 3, Some("A"))
    );
    assert_eq!(
        (clear.status, clear.severity.as_str()),
        (AlertStatus::Fired, "info")
    );
    // The first reading back, not the batch that made the clear due.
    assert_eq!(clear.event_time_ms, 70_000);
    assert_eq!(clear.values, alert.values);
    assert_eq!(clear.values["last_reading_ms"], 20_000);
    // The alert's hospital, not the one A came back at: a caller who saw
    // the alert sees its clear.
    assert_eq!(clear.hospital_id.as_deref(), Some("H1"));
    assert_eq!(
        clear.id,
        alert_id("silent", 3, &alert.key, &format!("clears={}", alert.id))
    );
    assert_ne!(clear.id, alert.id);
    // On the wire: present on a clear, absent elsewhere, and JSON written
    // before clears existed reads back.
    let json = serde_json::to_value(clear).unwrap();
    assert_eq!(json["explanation"]["clears"], alert.id.as_str());
    let mut old = serde_json::to_value(alert).unwrap();
    assert!(old["explanation"].get("clears").is_none());
    old["explanation"].as_object_mut().unwrap().remove("clears");
    assert_eq!(&serde_json::from_value::<Alert>(old).unwrap(), alert);
}

#[test]
fn a_clear_waiting_across_a_snapshot_fires_once_after_restore() {
    let steps = steps();
    let mut uninterrupted = vec![];
    feed(&mut engine(), &steps, &mut uninterrupted);
    assert_eq!(uninterrupted.len(), 2);

    // Cut while A's alert waits for a return (14 steps), and once A's first
    // reading back has arrived but is not yet due (15).
    for cut in [14, 15] {
        let mut first = engine();
        let mut alerts = vec![];
        feed(&mut first, &steps[..cut], &mut alerts);
        assert_eq!(alerts.len(), 1, "A's alert before the cut at {cut}");
        let bytes = first.snapshot().unwrap();
        drop(first);
        let mut second = engine();
        assert!(second.restore(&bytes, 0).unwrap().is_empty());
        feed(&mut second, &steps[cut..], &mut alerts);
        // Nothing more however far the stream goes: exactly once.
        alerts.extend(second.advance_watermark(1_000_000, 0).unwrap().alerts);
        let clears: Vec<&Alert> = alerts
            .iter()
            .filter(|a| a.explanation.clears.is_some())
            .collect();
        assert_eq!(clears.len(), 1, "cut at {cut}: {alerts:#?}");
        assert_eq!(clears[0], &uninterrupted[1], "cut at {cut}");
    }
}

#[test]
fn a_suppressed_silence_waits_for_nothing_and_a_new_version_forgets_what_waited() {
    // Within the cooldown of its first alert, A's second silence is
    // suppressed; the return after it clears nothing.
    let mut e = Engine::new(EngineConfig::default());
    e.upsert_rule(silent(600_000)).unwrap();
    e.assign_partitions(&[0], 0);
    let mut alerts = vec![];
    let mut steps = steps();
    // A sends at 75 s (in the steps), then is silent again while B goes on,
    // then comes back at 150 s.
    steps.extend((17..=29).map(|i| vec![("B", Some("H1"), i * 5_000, 72.0)]));
    steps.push(vec![
        ("A", Some("H2"), 150_000, 71.0),
        ("B", Some("H1"), 150_000, 72.0),
    ]);
    steps.push(vec![("B", Some("H1"), 155_000, 72.0)]);
    feed(&mut e, &steps, &mut alerts);
    let summary: Vec<(AlertStatus, bool)> = alerts
        .iter()
        .map(|a| (a.status, a.explanation.clears.is_some()))
        .collect();
    assert_eq!(
        summary,
        [
            (AlertStatus::Fired, false),
            (AlertStatus::Fired, true),
            (AlertStatus::Suppressed, false),
        ]
    );

    // A silence that alerted, then a new version of the rule: the new
    // version starts without anything waiting.
    let mut e = engine();
    let mut alerts = vec![];
    let steps = self::steps();
    feed(&mut e, &steps[..14], &mut alerts);
    assert_eq!(alerts.len(), 1);
    let mut v4 = silent(0);
    v4.version = 4;
    e.upsert_rule(v4).unwrap();
    feed(&mut e, &steps[14..], &mut alerts);
    assert_eq!(alerts.len(), 1, "{alerts:#?}");
}
