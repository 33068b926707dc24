//! A rule scoped to a hospital sees only that hospital's events (issue 14);
//! a global rule (no scope) sees every event, as before scopes existed.
//! The scope is added to the rule's parsed SQL, so a hospital id is a
//! string literal whatever it holds, and errors still point into the SQL
//! as the author wrote it.

mod common;

use common::{batch, Ev};
use sql_rules::stream::vitals_schema;
use sql_rules::{Alert, CompiledRule, Engine, EngineConfig, RuleCompiler, RuleSpec};

fn compiler() -> RuleCompiler {
    RuleCompiler::new(vitals_schema())
}

fn spec(id: &str, compiled: CompiledRule) -> RuleSpec {
    RuleSpec {
        id: id.into(),
        version: 1,
        name: id.into(),
        severity: "high".into(),
        cooldown_ms: 0,
        allowed_lateness_ms: None,
        keep_duplicates: false,
        escalation: None,
        compiled,
    }
}

fn scoped(id: &str, sql: &str, hospital: Option<&str>) -> RuleSpec {
    let compiled = compiler()
        .compile_scoped(sql, hospital)
        .unwrap_or_else(|e| panic!("{id}: {e}"));
    spec(id, compiled)
}

fn run(rules: Vec<RuleSpec>, events: &[Ev]) -> Vec<Alert> {
    let mut engine = Engine::new(EngineConfig::default());
    for rule in rules {
        engine.upsert_rule(rule).unwrap();
    }
    engine.assign_partitions(&[0], 0);
    let mut alerts = engine.process(0, &batch(events), 0).unwrap().alerts;
    alerts.extend(engine.advance_watermark(60_000, 0).unwrap().alerts);
    alerts
}

/// (rule, patient, hospital), sorted.
fn fired(alerts: &[Alert]) -> Vec<(String, String, Option<String>)> {
    let mut out: Vec<_> = alerts
        .iter()
        .map(|a| {
            (
                a.rule_id.clone(),
                a.patient_id().unwrap_or("-").to_string(),
                a.hospital_id.clone(),
            )
        })
        .collect();
    out.sort();
    out
}

fn row(rule: &str, patient: &str, hospital: Option<&str>) -> (String, String, Option<String>) {
    (
        rule.to_string(),
        patient.to_string(),
        hospital.map(str::to_string),
    )
}

const PER_EVENT: &str = "SELECT patient_id, heart_rate_bpm FROM vitals WHERE heart_rate_bpm > 150";
const WINDOWED: &str = "SELECT patient_id, COUNT(*) AS n FROM vitals WHERE heart_rate_bpm > 100 \
                        GROUP BY TUMBLE(event_time, INTERVAL '10' SECOND), patient_id";

/// A at H1, B at H2, N at no hospital: every one tachycardic.
fn two_hospitals() -> Vec<Ev> {
    vec![
        ("A", Some("H1"), 1_000, 160.0),
        ("B", Some("H2"), 1_100, 170.0),
        ("N", None, 1_200, 180.0),
        ("A", Some("H1"), 2_000, 120.0),
        ("B", Some("H2"), 2_100, 130.0),
    ]
}

#[test]
fn scoped_rules_fire_only_for_their_hospital_and_global_ones_for_every_event() {
    let rules = vec![
        scoped("each-h1", PER_EVENT, Some("H1")),
        scoped("each-h2", PER_EVENT, Some("H2")),
        scoped("each-all", PER_EVENT, None),
        scoped("tachy-h1", WINDOWED, Some("H1")),
        scoped("tachy-h2", WINDOWED, Some("H2")),
        scoped("tachy-all", WINDOWED, None),
    ];
    let got = fired(&run(rules, &two_hospitals()));
    let want = vec![
        row("each-all", "A", Some("H1")),
        row("each-all", "B", Some("H2")),
        row("each-all", "N", None),
        row("each-h1", "A", Some("H1")),
        row("each-h2", "B", Some("H2")),
        row("tachy-all", "A", Some("H1")),
        row("tachy-all", "B", Some("H2")),
        row("tachy-all", "N", None),
        row("tachy-h1", "A", Some("H1")),
        row("tachy-h2", "B", Some("H2")),
    ];
    assert_eq!(got, want);
    // The windowed rules counted only their hospital's events.
    let counts: Vec<(String, f64)> = run(
        vec![scoped("tachy-h1", WINDOWED, Some("H1"))],
        &two_hospitals(),
    )
    .iter()
    .map(|a| (a.rule_id.clone(), a.values["n"].as_f64().unwrap()))
    .collect();
    assert_eq!(counts, [("tachy-h1".to_string(), 2.0)]);
}

#[test]
fn the_scope_is_and_ed_with_the_rules_own_filter_as_one_operand() {
    // Bound to the first operand alone, the scope would leave
    // `OR heart_rate_bpm > 165` open to B (H2, 170) and N (none, 180).
    let sql = "SELECT patient_id FROM vitals WHERE heart_rate_bpm < 0 OR heart_rate_bpm > 165";
    let got = fired(&run(vec![scoped("h1", sql, Some("H1"))], &two_hospitals()));
    assert_eq!(got, []);
    let got = fired(&run(vec![scoped("h2", sql, Some("H2"))], &two_hospitals()));
    assert_eq!(got, [row("h2", "B", Some("H2"))]);
    // No WHERE at all: the scope alone.
    let got = fired(&run(
        vec![scoped(
            "all-h2",
            "SELECT patient_id FROM vitals",
            Some("H2"),
        )],
        &two_hospitals(),
    ));
    assert_eq!(got, vec![row("all-h2", "B", Some("H2")); 2]);
}

#[test]
fn a_hospital_id_with_a_quote_is_a_literal_not_sql() {
    let events = [
        ("A", Some("O'Brien"), 1_000, 160.0),
        ("B", Some("H2"), 1_100, 170.0),
    ];
    let got = fired(&run(
        vec![scoped("ob", PER_EVENT, Some("O'Brien"))],
        &events,
    ));
    assert_eq!(got, [row("ob", "A", Some("O'Brien"))]);
    // Text that would widen the filter if it were spliced into the SQL is
    // just a hospital no event names.
    for hospital in ["x' OR '1'='1", "H2' --", "'"] {
        let got = fired(&run(
            vec![scoped("sneaky", PER_EVENT, Some(hospital))],
            &events,
        ));
        assert_eq!(got, [], "{hospital}");
    }
}

#[test]
fn a_derived_table_is_scoped_where_it_reads_the_stream() {
    // The outer `hospital_id` is made up; the scope must hold on the
    // event's own.
    let sql = "SELECT patient_id, hospital_id FROM \
               (SELECT patient_id, 'H1' AS hospital_id, heart_rate_bpm FROM vitals) t \
               WHERE heart_rate_bpm > 150";
    let got = fired(&run(
        vec![scoped("fake", sql, Some("H1"))],
        &two_hospitals(),
    ));
    assert_eq!(got, [row("fake", "A", Some("H1"))]);
}

#[test]
fn an_unscoped_rule_is_compiled_as_before() {
    let compiler = compiler();
    for sql in [PER_EVENT, WINDOWED] {
        let before = compiler.compile(sql).unwrap();
        for after in [
            compiler.compile_scoped(sql, None).unwrap(),
            compiler.compile_accepted_scoped(sql, None).unwrap(),
            compiler
                .compile_within_scoped(sql, None, compiler.limits())
                .unwrap(),
        ] {
            assert_eq!(format!("{before:?}"), format!("{after:?}"));
        }
        // A scope changes the plan, and only by its filter.
        let scoped = compiler.compile_scoped(sql, Some("H1")).unwrap();
        assert_ne!(format!("{before:?}"), format!("{scoped:?}"));
        assert_eq!(before.sql, scoped.sql, "the rule keeps its SQL as written");
        assert_eq!(before.output_schema, scoped.output_schema);
        assert_eq!(before.key_columns, scoped.key_columns);
    }
    let got = fired(&run(
        vec![spec(
            "plain",
            CompiledRule::compile(PER_EVENT, &vitals_schema()).unwrap(),
        )],
        &two_hospitals(),
    ));
    assert_eq!(got.len(), 3);
}

#[test]
fn errors_point_into_the_sql_as_written() {
    let compiler = compiler();
    for sql in [
        "SELECT patient_id FROM vitals WHERE no_such_column > 1",
        "SELECT patient_id FROM vitals\nWHERE heart_rate_bpm > 1\nORDER BY patient_id",
        "SELECT patient_id FROM vitals WHERE spo2_pct < 'abc'",
        "SELECT patient_id, COUNT(*) AS n FROM vitals GROUP BY patient_id",
        "SELECT patient_id FROM vitals WHERE 60 % CAST(heart_rate_bpm AS INT) = 0",
    ] {
        let plain = compiler.compile(sql).unwrap_err().to_string();
        let scoped = compiler
            .compile_scoped(sql, Some("H1"))
            .unwrap_err()
            .to_string();
        assert_eq!(plain, scoped, "{sql}");
    }
}

#[test]
fn the_sample_check_runs_a_scoped_rule_over_events_of_its_hospital() {
    let compiler = compiler();
    // Refused for a division by zero: the sample's readings reach the rule
    // through its scope.
    let division = "SELECT patient_id, COUNT(*) AS n FROM vitals \
                    GROUP BY TUMBLE(event_time, INTERVAL '1' MINUTE), patient_id \
                    HAVING COUNT(*) / (COUNT(*) - COUNT(*)) > 1";
    let err = compiler
        .compile_scoped(division, Some("H1"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("Divide by zero"), "{err}");
    // A cast of the hospital id fails on every event a rule scoped to a
    // hospital named so sees; on the sample's made-up id it says nothing.
    let cast = "SELECT patient_id FROM vitals WHERE CAST(hospital_id AS INT) > 3";
    let err = compiler
        .compile_scoped(cast, Some("H1"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("Cannot cast"), "{err}");
    compiler.compile(cast).unwrap();
    compiler.compile_scoped(cast, Some("17")).unwrap();
    // Stored rules are not held to the sample.
    compiler
        .compile_accepted_scoped(division, Some("H1"))
        .unwrap();
}

#[test]
fn a_scoped_rule_that_could_read_events_around_its_scope_is_refused() {
    // The review's bypasses: a CTE inside a derived table would put the
    // scope on the CTE's reader, not on the events.
    let e = compiler()
        .compile_scoped(
            "SELECT patient_id FROM (WITH x AS (SELECT * FROM vitals) SELECT * FROM x) t \
             WHERE heart_rate_bpm > 150",
            Some("H1"),
        )
        .expect_err("a CTE inside a derived table");
    assert!(e.message.contains("limited to a hospital"), "{}", e.message);
    // Subqueries in expressions are refused for every rule.
    compiler()
        .compile_scoped(
            "SELECT patient_id FROM vitals \
             WHERE heart_rate_bpm > (SELECT MIN(heart_rate_bpm) FROM vitals)",
            Some("H1"),
        )
        .expect_err("a second read in a subquery");
    // Double parentheses are followed down to the read of vitals: the
    // made-up outer hospital does not let H2's event through.
    let sql = "SELECT patient_id, hospital_id FROM \
               ((SELECT patient_id, 'H1' AS hospital_id, heart_rate_bpm FROM vitals)) t \
               WHERE heart_rate_bpm > 150";
    let got = fired(&run(
        vec![scoped("parens", sql, Some("H1"))],
        &two_hospitals(),
    ));
    assert_eq!(got, [row("parens", "A", Some("H1"))]);
}

#[test]
fn a_scoped_rules_alerts_carry_its_hospital_whatever_it_groups_by() {
    // Grouped by device, not patient or hospital: an unscoped rule's
    // alerts name no hospital; a scoped one's name its hospital, so the
    // clinicians limited to it see them.
    let by_device = "SELECT source_device, COUNT(*) AS n FROM vitals WHERE heart_rate_bpm > 100 \
                     GROUP BY TUMBLE(event_time, INTERVAL '10' SECOND), source_device";
    let alerts = run(
        vec![
            scoped("dev-h1", by_device, Some("H1")),
            scoped("dev-all", by_device, None),
        ],
        &two_hospitals(),
    );
    let hospitals = |rule: &str| -> Vec<Option<String>> {
        alerts
            .iter()
            .filter(|a| a.rule_id == rule)
            .map(|a| a.hospital_id.clone())
            .collect()
    };
    assert_eq!(hospitals("dev-h1"), [Some("H1".to_string())], "{alerts:?}");
    assert_eq!(hospitals("dev-all"), [None], "{alerts:?}");
}
