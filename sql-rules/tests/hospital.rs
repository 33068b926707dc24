//! Every alert carries the hospital of the events behind it (issue 14: a
//! caller limited to some hospitals is shown only theirs). Per-event rules
//! take the event's, rules grouped by `hospital_id` the key's, rules
//! grouped by patient where the patient was at the group's last event; the
//! answer must not depend on batching and must survive a snapshot.
//! `tests/rules/hospital.rules` pins the same in the rule-file format.

mod common;

use common::{batch, Ev};
use sql_rules::stream::vitals_schema;
use sql_rules::{Alert, CompiledRule, Engine, EngineConfig, RuleSpec};

fn spec(id: &str, sql: &str) -> RuleSpec {
    RuleSpec {
        id: id.into(),
        version: 1,
        name: id.into(),
        severity: "high".into(),
        cooldown_ms: 0,
        allowed_lateness_ms: None,
        keep_duplicates: false,
        escalation: None,
        compiled: CompiledRule::compile(sql, &vitals_schema())
            .unwrap_or_else(|e| panic!("{id}: {e}")),
    }
}

fn rules() -> Vec<RuleSpec> {
    vec![
        spec(
            "each",
            "SELECT patient_id, heart_rate_bpm FROM vitals WHERE heart_rate_bpm > 150",
        ),
        // Aliased: the key is found on the plan, not by its output name.
        spec(
            "site",
            "SELECT hospital_id AS site, COUNT(*) AS n FROM vitals \
             GROUP BY TUMBLE(event_time, INTERVAL '10' SECOND), hospital_id",
        ),
        spec(
            "tachy",
            "SELECT patient_id, COUNT(*) AS n FROM vitals WHERE heart_rate_bpm > 100 \
             GROUP BY TUMBLE(event_time, INTERVAL '10' SECOND), patient_id",
        ),
        // Grouped by both: the key says which hospital.
        spec(
            "both",
            "SELECT patient_id, hospital_id, COUNT(*) AS n FROM vitals \
             WHERE heart_rate_bpm > 100 \
             GROUP BY TUMBLE(event_time, INTERVAL '10' SECOND), patient_id, hospital_id",
        ),
        // A session keyed by patient goes by the patient too.
        spec(
            "episode",
            "SELECT patient_id, COUNT(*) AS n FROM vitals WHERE heart_rate_bpm > 100 \
             GROUP BY SESSION(event_time, INTERVAL '3' SECOND), patient_id",
        ),
        // Grouped by neither: no one hospital.
        spec(
            "ward",
            "SELECT source_device, COUNT(*) AS n FROM vitals \
             GROUP BY TUMBLE(event_time, INTERVAL '10' SECOND), source_device",
        ),
    ]
}

/// M is at H1 until 20 s, then at H2 (plus one late reading from H1 that
/// must not move M back); S stays at H3; N's device never says where.
fn events() -> Vec<Ev> {
    vec![
        ("M", Some("H1"), 1_000, 120.0),
        ("M", Some("H1"), 2_000, 160.0),
        ("S", Some("H3"), 1_500, 130.0),
        ("N", None, 1_700, 155.0),
        ("M", Some("H1"), 11_000, 122.0),
        ("M", Some("H1"), 12_000, 123.0),
        ("M", Some("H2"), 20_000, 124.0),
        ("M", Some("H2"), 21_000, 165.0),
        ("M", Some("H1"), 19_900, 90.0),
        ("M", Some("H2"), 23_000, 126.0),
        ("S", Some("H3"), 31_000, 60.0),
    ]
}

fn run(events: &[Ev], batch_size: usize) -> Vec<Alert> {
    let mut engine = Engine::new(EngineConfig::default());
    for rule in rules() {
        engine.upsert_rule(rule).unwrap();
    }
    engine.assign_partitions(&[0], 0);
    let mut alerts = Vec::new();
    for chunk in events.chunks(batch_size) {
        alerts.extend(engine.process(0, &batch(chunk), 0).unwrap().alerts);
    }
    alerts.extend(engine.advance_watermark(60_000, 0).unwrap().alerts);
    alerts
}

/// (rule, patient, window start or event time, hospital), sorted.
fn hospitals(alerts: &[Alert]) -> Vec<(String, String, i64, Option<String>)> {
    let mut out: Vec<_> = alerts
        .iter()
        .map(|a| {
            (
                a.rule_id.clone(),
                a.patient_id().unwrap_or("-").to_string(),
                a.window_start_ms.unwrap_or(a.event_time_ms),
                a.hospital_id.clone(),
            )
        })
        .collect();
    out.sort();
    out
}

#[test]
fn each_kind_of_rule_gives_its_alerts_the_hospital_of_their_events() {
    let got = hospitals(&run(&events(), usize::MAX));
    let row = |rule: &str, patient: &str, t: i64, h: Option<&str>| {
        (
            rule.to_string(),
            patient.to_string(),
            t,
            h.map(str::to_string),
        )
    };
    let want = vec![
        row("both", "M", 0, Some("H1")),
        row("both", "M", 10_000, Some("H1")),
        row("both", "M", 20_000, Some("H2")),
        row("both", "N", 0, None),
        row("both", "S", 0, Some("H3")),
        row("each", "M", 2_000, Some("H1")),
        row("each", "M", 21_000, Some("H2")),
        row("each", "N", 1_700, None),
        // M's first episode ends at 2 s, before the move; the second is
        // after it (the late H1 reading at 19.9 s is not aggregated).
        row("episode", "M", 1_000, Some("H1")),
        row("episode", "M", 11_000, Some("H1")),
        // Without HAVING it is the signal-loss form: readings that pass
        // WHERE again clear each episode's alert, at the first of them,
        // with the hospital of the alert cleared.
        row("episode", "M", 11_000, Some("H1")),
        row("episode", "M", 20_000, Some("H1")),
        row("episode", "M", 20_000, Some("H2")),
        row("episode", "N", 1_700, None),
        row("episode", "S", 1_500, Some("H3")),
        row("site", "-", 0, None),
        row("site", "-", 0, Some("H1")),
        row("site", "-", 0, Some("H3")),
        row("site", "-", 10_000, Some("H1")),
        row("site", "-", 20_000, Some("H2")),
        row("site", "-", 30_000, Some("H3")),
        row("tachy", "M", 0, Some("H1")),
        // Closed only once readings from H2 had arrived: still H1.
        row("tachy", "M", 10_000, Some("H1")),
        row("tachy", "M", 20_000, Some("H2")),
        row("tachy", "N", 0, None),
        row("tachy", "S", 0, Some("H3")),
        row("ward", "-", 0, None),
        row("ward", "-", 10_000, None),
        row("ward", "-", 20_000, None),
        row("ward", "-", 30_000, None),
    ];
    assert_eq!(got, want);
}

#[test]
fn the_hospital_does_not_depend_on_batching() {
    let whole = run(&events(), usize::MAX);
    for size in [1, 2, 3, 5] {
        let cut = run(&events(), size);
        assert_eq!(hospitals(&cut), hospitals(&whole), "batches of {size}");
        // Nor does the hospital change which alerts fire, or their ids.
        let ids = |a: &[Alert]| {
            let mut ids: Vec<_> = a.iter().map(|a| (a.id.clone(), a.status)).collect();
            ids.sort_by(|x, y| x.0.cmp(&y.0));
            ids
        };
        assert_eq!(ids(&cut), ids(&whole), "batches of {size}");
    }
}

#[test]
fn a_snapshot_carries_where_patients_are() {
    // M's window [0, 10 s) is still open at the snapshot; M moved before.
    let before: Vec<Ev> = vec![
        ("M", Some("H1"), 1_000, 120.0),
        ("M", Some("H2"), 5_000, 121.0),
        ("S", Some("H3"), 6_000, 122.0),
    ];
    let mut first = Engine::new(EngineConfig::default());
    let mut second = Engine::new(EngineConfig::default());
    for rule in rules() {
        first.upsert_rule(rule.clone()).unwrap();
        second.upsert_rule(rule).unwrap();
    }
    first.assign_partitions(&[0], 0);
    first.process(0, &batch(&before), 0).unwrap();
    let uninterrupted = hospitals(&first.advance_watermark(60_000, 0).unwrap().alerts);

    let mut again = Engine::new(EngineConfig::default());
    for rule in rules() {
        again.upsert_rule(rule).unwrap();
    }
    again.assign_partitions(&[0], 0);
    again.process(0, &batch(&before), 0).unwrap();
    let bytes = again.snapshot().unwrap();
    assert!(second.restore(&bytes, 0).unwrap().is_empty());
    let restored = hospitals(&second.advance_watermark(60_000, 0).unwrap().alerts);
    assert_eq!(restored, uninterrupted);
    let tachy: Vec<_> = restored.iter().filter(|a| a.0 == "tachy").collect();
    assert_eq!(tachy.len(), 2, "{restored:?}");
    assert_eq!(tachy[0].3.as_deref(), Some("H2"), "M's last reading: H2");
    assert_eq!(tachy[1].3.as_deref(), Some("H3"));
}

#[test]
fn the_hospital_is_in_alert_json_when_known_and_absent_otherwise() {
    let alerts = run(&events(), usize::MAX);
    let known = alerts.iter().find(|a| a.hospital_id.is_some()).unwrap();
    let json = serde_json::to_value(known).unwrap();
    assert_eq!(json["hospital_id"], known.hospital_id.as_deref().unwrap());
    let unknown = alerts.iter().find(|a| a.hospital_id.is_none()).unwrap();
    let json = serde_json::to_value(unknown).unwrap();
    assert!(json.get("hospital_id").is_none(), "{json}");
    // Alerts written before the field read back with no hospital.
    let back: Alert = serde_json::from_value(json).unwrap();
    assert_eq!(&back, unknown);
}

/// Which rules need every partition (issue 13: several instances run
/// patient rules over their own partitions, the others on one instance).
#[test]
fn a_rule_is_keyed_by_patient_only_when_it_groups_by_the_patient_id_column() {
    let keyed = |sql: &str| {
        CompiledRule::compile(sql, &vitals_schema())
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .keyed_by_patient
    };
    assert!(keyed(
        "SELECT patient_id, heart_rate_bpm FROM vitals WHERE heart_rate_bpm > 150"
    ));
    assert!(keyed(
        "SELECT patient_id AS p, AVG(heart_rate_bpm) AS hr FROM vitals \
         GROUP BY TUMBLE(event_time, INTERVAL '1' MINUTE), patient_id"
    ));
    assert!(keyed(
        "SELECT hospital_id, patient_id, COUNT(*) AS n FROM vitals \
         GROUP BY TUMBLE(event_time, INTERVAL '1' MINUTE), hospital_id, patient_id"
    ));
    assert!(!keyed(
        "SELECT hospital_id, COUNT(*) AS n FROM vitals \
         GROUP BY TUMBLE(event_time, INTERVAL '1' MINUTE), hospital_id"
    ));
    assert!(!keyed(
        "SELECT source_device, COUNT(*) AS n FROM vitals \
         GROUP BY TUMBLE(event_time, INTERVAL '1' MINUTE), source_device"
    ));
    assert!(!keyed(
        "SELECT hospital_id, heart_rate_bpm FROM vitals WHERE heart_rate_bpm > 150"
    ));
}
