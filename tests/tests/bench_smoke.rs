//! CI smoke test for `wardwatch-bench`: the `engine`, `recovery`,
//! `pipeline` and `latency` scenarios run at a tiny size and their results
//! are right (alerts fire, the engine fires exactly the same ones twice, a
//! checkpoint restores the window state it took, and the latency run reads
//! an alert for every marker and window it expects). Speed is not
//! checked here: that is what `wardwatch-bench` is for.
//!
//! The pipeline and latency scenarios need the tansu broker (`bash
//! tests/run.sh` installs it); without it the tests fail and say so.

use wardwatch_bench::{self as bench, BenchResult, BenchSize};

/// Fields every scenario's JSON line must carry.
const REQUIRED: [&str; 7] = [
    "scenario",
    "events",
    "seconds",
    "events_per_sec",
    "baseline",
    "baseline_events_per_sec",
    "ratio",
];

fn check_shape(r: &BenchResult, scenario: &str) {
    check_shape_without_alerts(r, scenario);
    let json: serde_json::Value = serde_json::from_str(&r.to_json_line()).expect("one JSON line");
    assert!(json["alerts"].as_u64().is_some(), "{json}");
}

fn check_shape_without_alerts(r: &BenchResult, scenario: &str) {
    assert_eq!(r.scenario, scenario);
    assert!(r.events > 0, "{r:?}");
    assert!(r.seconds > 0.0 && r.events_per_sec > 0.0, "{r:?}");
    assert!(r.baseline_events_per_sec > 0.0 && r.ratio > 0.0, "{r:?}");
    let json: serde_json::Value = serde_json::from_str(&r.to_json_line()).expect("one JSON line");
    for key in REQUIRED {
        assert!(json.get(key).is_some(), "{key} missing from {json}");
    }
}

#[test]
fn engine_bench_fires_the_same_alerts_every_run() {
    // Five minutes of 300 patients: windows of every size close, episodes start.
    let size = BenchSize::exact(300, 300);
    let first = bench::engine::run(&size).expect("the engine benchmark runs");
    check_shape(&first, "engine");
    let alerts = first.alerts.expect("the engine reports alerts");
    assert!(alerts > 0, "no alerts: {first:?}");
    assert!(
        first.details["baseline_rows"].as_u64() > Some(0),
        "the batch SQL baseline found nothing: {first:?}"
    );

    let second = bench::engine::run(&size).expect("the engine benchmark runs again");
    assert_eq!(
        second.alerts,
        Some(alerts),
        "alert counts differ between runs"
    );
    assert_eq!(
        first.details["alert_digest"], second.details["alert_digest"],
        "alert ids differ between runs"
    );
    assert_eq!(
        first.details["alerts_suppressed"],
        second.details["alerts_suppressed"]
    );
}

#[test]
fn recovery_bench_restores_the_state_it_checkpointed() {
    let result =
        bench::recovery::run(&BenchSize::exact(200, 120)).expect("the recovery benchmark runs");
    check_shape_without_alerts(&result, "recovery");
    let d = &result.details;
    assert!(d["state_snapshot_bytes"].as_u64() > Some(0), "{d:?}");
    assert!(
        d["checkpoint_file_bytes"].as_u64() > d["state_snapshot_bytes"].as_u64(),
        "{d:?}"
    );
    assert!(d["open_panes_restored"].as_u64() > Some(0), "{d:?}");
}

#[test]
fn pipeline_bench_runs_through_a_real_broker_and_fires_alerts() {
    let size = BenchSize::exact(300, 180);
    let r = bench::pipeline::run(&size).expect("the pipeline benchmark runs");
    check_shape(&r, "pipeline");
    assert!(r.alerts > Some(0), "no alerts through Kafka: {r:?}");
    assert_eq!(r.details["rules"], 20, "{r:?}");
    // Every produced message was accounted for: accepted or dead-lettered.
    assert_eq!(r.baseline_events, r.events);
    assert!(r.details["rejected"].as_u64() > Some(0), "{r:?}");
}

#[test]
fn latency_bench_reads_an_alert_for_every_marker_and_window() {
    // 2 000 events/s for 4 s: about 500 per-event markers and 20 window
    // markers a second; the first second is warm-up and the last window is
    // still open at the end, so two windows are measured.
    let r = bench::latency::run(&BenchSize::exact(2_000, 4)).expect("the latency benchmark runs");
    check_shape(&r, "latency");
    assert_eq!(r.events, 8_000, "every simulated event was sent: {r:?}");
    let d = &r.details;
    assert_eq!(d["per_event_missing"], 0, "{r:?}");
    assert_eq!(d["windowed_missing"], 0, "{r:?}");
    assert_eq!(d["unexpected_alerts"], 0, "{r:?}");
    assert_eq!(d["late_events"], 0, "{r:?}");
    assert!(d["per_event_samples"].as_u64() >= Some(1_000), "{r:?}");
    assert_eq!(d["windows"], 2, "{r:?}");
    assert!(d["windowed_samples"].as_u64() >= Some(20), "{r:?}");
    assert!(d["baseline_samples"].as_u64() >= Some(5_000), "{r:?}");
    for kind in ["per_event", "windowed", "baseline"] {
        let p50 = d[&format!("{kind}_p50_ms")].as_f64().unwrap();
        let p99 = d[&format!("{kind}_p99_ms")].as_f64().unwrap();
        let max = d[&format!("{kind}_max_ms")].as_f64().unwrap();
        assert!(p50 <= p99 && p99 <= max, "{kind}: {r:?}");
    }
}
