//! The views against the domain types they mirror: same JSON, same fields.

use serde_json::json;

use super::*;

/// The domain value and its view must serialize alike: the wire shape is
/// the view's, and the domain type is what the code fills in.
fn same_json(domain: impl Serialize, view: impl Serialize, what: &str) {
    let domain = serde_json::to_value(domain).unwrap();
    let view = serde_json::to_value(view).unwrap();
    assert_eq!(
        domain, view,
        "{what} and its view in api/types/ serialize differently: add the new field to the view"
    );
}

fn alert(status: &str) -> sql_rules::Alert {
    serde_json::from_value(json!({
        "id": "00000000000000aa", "rule_id": "r-1", "rule_version": 2, "rule_name": "R",
        "severity": "high", "status": status, "key": {"patient_id": "P-1"},
        "hospital_id": "H-1", "window_start_ms": 1000, "window_end_ms": null, "values": {"avg_hr": 131.5, "n": 3},
        "event_time_ms": 1500, "fired_at_ms": 1600,
        "explanation": {"condition": "avg_hr > 120", "event_count": 3, "first_event_ms": 1000,
            "last_event_ms": 1500, "first_sequence_number": 7, "last_sequence_number": null,
            "suppressed_by": "00000000000000bb", "escalated_from": "00000000000000cc",
            "late": true}
    }))
    .expect("a complete alert (a new field of Alert without a default needs adding here and to AlertView)")
}

// `..Default::default()` after every field: a field added to a domain
// type with a default must not break this test's build, only its check.
#[allow(clippy::needless_update)]
#[test]
fn views_serialize_like_their_domain_types() {
    for status in ["fired", "suppressed"] {
        let a = alert(status);
        same_json(&a, AlertView::from(a.clone()), "sql_rules::Alert");
        // Without a hospital the field is absent from both.
        let a = sql_rules::Alert {
            hospital_id: None,
            ..a
        };
        same_json(&a, AlertView::from(a.clone()), "sql_rules::Alert");
    }
    let stats = sql_rules::RuleStats {
        events_matched: 1,
        late_events: 2,
        alerts_fired: 3,
        alerts_suppressed: 4,
        open_panes: 5,
        suspension: Some(sql_rules::Suspension::new(
            sql_rules::SuspensionReason::AlertsPerMinute,
            1_000,
            1_001,
            Some(7),
            8,
        )),
        ..Default::default()
    };
    same_json(&stats, RuleStatsView::from(stats.clone()), "RuleStats");
    same_json(
        sql_rules::RuleStats::default(),
        RuleStatsView::from(sql_rules::RuleStats::default()),
        "RuleStats",
    );
    let health = crate::pipeline::RuleHealth {
        errors_total: 3,
        last_error: Some("division by zero".into()),
        last_error_at_ms: Some(9),
        ..Default::default()
    };
    same_json(&health, RuleHealthView::from(health.clone()), "RuleHealth");
    let ingest = crate::source::ingest::IngestResult {
        accepted: 5,
        rejected: 1,
        ..Default::default()
    };
    same_json(ingest, IngestResultView::from(ingest), "IngestResult");

    let version: catalog::rules::RuleVersion = serde_json::from_value(json!({
        "rule_id": "r-1", "version": 1, "name": "R", "sql": "SELECT 1", "severity": "critical",
        "cooldown_seconds": 60, "allowed_lateness_ms": null, "description": "d",
        "keep_duplicates": true,
        "escalation": {"column": "avg_hr", "above": 140.0, "below": null, "severity": "critical"},
        "created_at_ms": 5, "hospital_id": "H-1"
    }))
    .unwrap();
    same_json(
        &version,
        RuleVersionView::from(version.clone()),
        "RuleVersion",
    );
    // A global rule: null in both.
    let global = catalog::rules::RuleVersion {
        hospital_id: None,
        ..version.clone()
    };
    same_json(
        &global,
        RuleVersionView::from(global.clone()),
        "RuleVersion",
    );

    let report = crate::replay::ReplayReport {
        rule_id: "r-1".into(),
        version: 1,
        from_ms: 0,
        to_ms: 10,
        events: 4,
        alerts: vec![alert("fired")],
        audit: Some(crate::replay::audit::diff(&[], &[alert("fired")])),
    };
    same_json(
        &report,
        ReplayReportView::from(report.clone()),
        "ReplayReport",
    );
    for (state, result, error) in [
        (crate::replay::jobs::JobState::Done, Some(report), None),
        (
            crate::replay::jobs::JobState::Failed,
            None,
            Some("no events".to_string()),
        ),
    ] {
        let job = crate::replay::jobs::JobView {
            job: "j".into(),
            state,
            events: 4,
            event_time_ms: 8,
            fraction: 0.5,
            started_at_ms: 1,
            result,
            error,
        };
        same_json(&job, ReplayJobView::from(job.clone()), "JobView");
    }
}

/// Every field of the mirrored domain types, by name and without `..`:
/// a field added to one of them stops this test module compiling, here,
/// where its view must gain it too (a field skipped when empty would
/// pass the serialization test unseen). `RuleStats` and `RuleHealth`
/// are left to that test while they are growing.
// Never called: it only has to compile.
#[allow(dead_code, clippy::too_many_arguments)]
fn census(
    alert: sql_rules::Alert,
    explanation: sql_rules::Explanation,
    escalation: sql_rules::Escalation,
    version: catalog::rules::RuleVersion,
    rule: catalog::rules::Rule,
    draft: catalog::rules::RuleDraft,
    report: crate::replay::ReplayReport,
    diff: crate::replay::audit::AuditDiff,
    difference: crate::replay::audit::Difference,
    job: crate::replay::jobs::JobView,
    ingest: crate::source::ingest::IngestResult,
    suspension: sql_rules::Suspension,
) {
    let sql_rules::Suspension {
        reason: _,
        budget: _,
        observed: _,
        message: _,
        at_event_ms: _,
        at_processing_ms: _,
    } = suspension;
    let sql_rules::Alert {
        id: _,
        rule_id: _,
        rule_version: _,
        rule_name: _,
        severity: _,
        status: _,
        key: _,
        hospital_id: _,
        window_start_ms: _,
        window_end_ms: _,
        values: _,
        event_time_ms: _,
        fired_at_ms: _,
        explanation: _,
    } = alert;
    let sql_rules::Explanation {
        condition: _,
        event_count: _,
        first_event_ms: _,
        last_event_ms: _,
        first_sequence_number: _,
        last_sequence_number: _,
        suppressed_by: _,
        escalated_from: _,
        late: _,
        clears: _,
    } = explanation;
    let sql_rules::Escalation {
        column: _,
        above: _,
        below: _,
        severity: _,
    } = escalation;
    let catalog::rules::RuleVersion {
        rule_id: _,
        version: _,
        name: _,
        sql: _,
        severity: _,
        cooldown_seconds: _,
        allowed_lateness_ms: _,
        description: _,
        keep_duplicates: _,
        escalation: _,
        created_at_ms: _,
        hospital_id: _,
    } = version;
    let catalog::rules::Rule {
        id: _,
        active: _,
        current: _,
        versions: _,
        created_at_ms: _,
        updated_at_ms: _,
        deactivation: _,
    } = rule;
    let catalog::rules::RuleDraft {
        name: _,
        sql: _,
        severity: _,
        cooldown_seconds: _,
        allowed_lateness_ms: _,
        description: _,
        keep_duplicates: _,
        escalation: _,
        hospital_id: _,
    } = draft;
    let crate::replay::ReplayReport {
        rule_id: _,
        version: _,
        from_ms: _,
        to_ms: _,
        events: _,
        alerts: _,
        audit: _,
    } = report;
    let crate::replay::audit::AuditDiff {
        both: _,
        fired_not_reproduced: _,
        reproduced_not_fired: _,
        clean: _,
    } = diff;
    let crate::replay::audit::Difference { id: _, why: _ } = difference;
    let crate::replay::jobs::JobView {
        job: _,
        state: _,
        events: _,
        event_time_ms: _,
        fraction: _,
        started_at_ms: _,
        result: _,
        error: _,
    } = job;
    let crate::source::ingest::IngestResult {
        accepted: _,
        rejected: _,
    } = ingest;
}

#[test]
fn a_rule_request_has_the_catalog_defaults() {
    let request: RuleRequest =
        serde_json::from_value(json!({"name": "n", "sql": "SELECT 1"})).unwrap();
    let draft: catalog::rules::RuleDraft =
        serde_json::from_value(json!({"name": "n", "sql": "SELECT 1"})).unwrap();
    assert_eq!(catalog::rules::RuleDraft::from(request), draft);
    let full = json!({"name": "n", "sql": "SELECT 1", "severity": "info", "cooldown_seconds": 5,
        "allowed_lateness_ms": 10, "description": "d", "keep_duplicates": true,
        "escalation": {"column": "c", "below": 80, "severity": "high"}, "hospital_id": "H-1"});
    let request: RuleRequest = serde_json::from_value(full.clone()).unwrap();
    let draft: catalog::rules::RuleDraft = serde_json::from_value(full).unwrap();
    assert_eq!(catalog::rules::RuleDraft::from(request), draft);
}

#[test]
fn every_severity_round_trips_through_the_catalog() {
    for level in catalog::rules::Severity::ALL {
        let view = SeverityView::from(level);
        assert_eq!(catalog::rules::Severity::from(view), level);
        same_json(level, view, "Severity");
    }
}
