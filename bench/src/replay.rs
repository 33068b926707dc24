//! `wardwatch-bench replay`: bench rules replayed over days of archived Parquet,
//! through the code path of `POST /api/replay`.
//!
//! The archive is generated once, not timed (see [`crate::archive`]). The
//! timed part replays each of [`REPLAYED`] — four of the 20 bench rules, one
//! per window shape — in turn over the whole simulated range `[start, end)`
//! with [`replay_rule`], the function behind `POST /api/replay`: a
//! [`HistoryCatalog`] query reading the range in event-time order, a fresh
//! engine holding the one rule, a final watermark at the end, and only
//! windows entirely inside the range kept. A rule's replay reads every
//! archived event of the range, so `events` is the archived events × 4 and
//! events/s is the mean rate of a one-rule replay. (All 20 rules would make
//! `--full` take most of an hour; the unit test runs all 20 at a tiny size.)
//!
//! Baseline: DataFusion (a default `SessionContext`, all cores, like the
//! history catalog) over the same files registered with `register_parquet`,
//! running each rule's batch twin (see [`crate::rules`]) made equivalent to
//! the replay: events of the range only, duplicates removed as the engine
//! removes them (same patient, device and event time; the first by sequence
//! number stays), only the windows entirely inside the range, and `SUM` and
//! `AVG` of readings computed exactly as the engine computes them (see
//! [`exact_sums`]).
//!
//! Correctness: for every rule, the replay's alerts (fired and suppressed:
//! cooldown only changes the status) and the baseline's rows must be the
//! same set of (key, window start) — or (patient, event time) for per-event
//! rules. The scenario fails otherwise, so it doubles as a check of the
//! replay path against an independent engine.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use arrow::array::{Array, AsArray};
use arrow::datatypes::DataType;
use arrow::record_batch::RecordBatch;
use catalog::HistoryCatalog;
use datafusion::prelude::{ParquetReadOptions, SessionContext};
use serde_json::json;
use sql_rules::stream::vitals_schema;
use sql_rules::{Alert, AlertStatus};

use crate::archive::{self, BenchArchive};
use crate::engine::rule_specs;
use crate::rules::{self, BenchRule, Shape};
use crate::{available_cores, progress, BenchResult, BenchSize, Ward};
use wardwatch::replay::{replay_rule, Progress};

const NAME: &str = "replay";
/// (patients, seconds): one day of 25 patients (≈2.2 M archived events) by
/// default, a week of 15 (≈9 M) with `--full`. The replay's memory is flat
/// in the range: it reads and sorts one event-time hour at a time (see
/// [`replay_rule`]). The scenario's peak resident memory is mostly the
/// DataFusion baseline's, whose deduplicating aggregate holds every event's
/// key: about 1.4 GiB at the small size, 3 GiB over 3 days of 25 patients.
const SMALL: (usize, u64) = (25, 86_400);
const FULL: (usize, u64) = (15, 7 * 86_400);
/// The rules the scenario replays: one of each window shape.
pub const REPLAYED: [&str; 4] = [
    "Sustained tachycardia",
    "Sustained hypoxemia",
    "Desaturation episode",
    "Critical SpO2 reading",
];
/// The name the baseline gives the archived files.
const BASELINE_TABLE: &str = "archived_vitals";

/// One alert or baseline row, as the two sides are compared: the key
/// (patient or hospital) and the window start, or the event time of a
/// per-event match.
type Identity = (String, i64);

fn shape_name(shape: Shape) -> &'static str {
    match shape {
        Shape::Tumble { .. } => "tumble",
        Shape::Hop { .. } => "hop",
        Shape::Session { .. } => "session",
        Shape::PerEvent => "per_event",
    }
}

fn alert_identity(alert: &Alert) -> Identity {
    let key = alert
        .patient_id()
        .or_else(|| alert.key.get("hospital_id").and_then(|v| v.as_str()))
        .unwrap_or_default()
        .to_owned();
    (key, alert.window_start_ms.unwrap_or(alert.event_time_ms))
}

/// `sql` with every `SUM` and `AVG` of a float reading over the reading cast
/// to `DECIMAL(18, 6)`, so DataFusion sums it exactly.
///
/// The engine sums float readings as integer millionths (rounded to the
/// nearest; `sql_rules::functions::exact_sum`), so its sums and averages do
/// not depend on the order of the terms. DataFusion's float `AVG` does, and
/// a window whose exact average sits on a `HAVING` threshold is decided by
/// how the batch query happened to split and merge it: over 3 days of 25
/// patients, one 5-minute window of P000023 averages exactly 90.0 (298
/// readings, sum 26 820.0), which the replay rightly does not take as
/// `AVG(spo2_pct) < 90`, and which a float sum puts anywhere from
/// 89.9999999999999 to 90.0000000000001 depending on the order: DataFusion
/// alerted on it. The cast rounds to millionths as the engine does (readings
/// have one decimal).
fn exact_sums(sql: &str) -> String {
    let mut sql = sql.to_owned();
    for field in vitals_schema().fields() {
        if field.data_type() != &DataType::Float64 {
            continue;
        }
        let c = field.name();
        for agg in ["SUM", "AVG"] {
            sql = sql.replace(
                &format!("{agg}({c})"),
                &format!("{agg}(CAST({c} AS DECIMAL(18, 6)))"),
            );
        }
    }
    sql
}

/// The batch twin of `rule` made equivalent to a replay of `[from_ms,
/// to_ms)`: deduplicated events of the range, windows inside it, exact sums.
pub fn baseline_sql(rule: &BenchRule, from_ms: i64, to_ms: i64) -> String {
    let columns: Vec<String> = vitals_schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    // One row per (patient, device, event time): the engine's duplicates
    // (replayed in event-time order, a repeat of an event time is always
    // within the engine's memory of recent events), keeping the first by
    // sequence number as the replay order does. A hash aggregate: the
    // optimiser drops the `first_value`s a rule does not read. (A
    // `ROW_NUMBER()` window over the same partitions is several times
    // slower in DataFusion: nearly every partition holds one row.)
    let keys = ["patient_id", "source_device", "timestamp_unix_ms"];
    let firsts: Vec<String> = columns
        .iter()
        .map(|c| {
            if keys.contains(&c.as_str()) {
                c.clone()
            } else {
                format!("first_value({c} ORDER BY sequence_number) AS {c}")
            }
        })
        .collect();
    let vitals = format!(
        "WITH vitals AS (SELECT {} FROM {BASELINE_TABLE} \
           WHERE timestamp_unix_ms >= {from_ms} AND timestamp_unix_ms < {to_ms} \
           GROUP BY {})",
        firsts.join(", "),
        keys.join(", ")
    );
    let twin = exact_sums(&rule.batch_sql);
    match rule.shape {
        Shape::PerEvent => format!("{vitals} {twin}"),
        _ => format!(
            "{vitals} SELECT * FROM ({twin}) AS windows \
             WHERE window_start >= to_timestamp_millis({from_ms}) \
               AND window_end <= to_timestamp_millis({to_ms})"
        ),
    }
}

/// (key, window start) of every baseline row: the first two columns.
fn row_identities(batches: &[RecordBatch]) -> Result<Vec<Identity>> {
    let mut out = Vec::new();
    for b in batches {
        let keys = arrow::compute::cast(b.column(0), &DataType::Utf8)?;
        let keys = keys.as_string::<i32>();
        // Window arithmetic may widen the unit to nanoseconds: ms first.
        let starts = arrow::compute::cast(
            b.column(1),
            &DataType::Timestamp(arrow::datatypes::TimeUnit::Millisecond, None),
        )?;
        let starts = arrow::compute::cast(&starts, &DataType::Int64)?;
        let starts = starts.as_primitive::<arrow::datatypes::Int64Type>();
        for r in 0..b.num_rows() {
            let key = if keys.is_null(r) { "" } else { keys.value(r) };
            out.push((key.to_owned(), starts.value(r)));
        }
    }
    Ok(out)
}

/// What one rule gave on both sides.
struct RuleOutcome {
    name: String,
    shape: Shape,
    ours: Vec<Identity>,
    fired: u64,
    suppressed: u64,
    ours_seconds: f64,
    baseline: Vec<Identity>,
    baseline_seconds: f64,
}

/// Replays every rule over the archive; returns (events read, outcomes
/// without the baseline).
fn run_replays(
    runtime: &tokio::runtime::Runtime,
    archive: &BenchArchive,
    rules: &[BenchRule],
) -> Result<(u64, Vec<RuleOutcome>)> {
    let specs = rule_specs(rules)?;
    let history = HistoryCatalog::new(Arc::clone(&archive.store), archive.prefix.clone())?;
    let mut events = 0u64;
    let mut outcomes = Vec::with_capacity(rules.len());
    for (rule, spec) in rules.iter().zip(specs) {
        let started = Instant::now();
        let replayed = runtime
            .block_on(replay_rule(
                &history,
                spec,
                archive.start_ms,
                archive.end_ms,
                sql_rules::RuleBudgets::default(),
                &Progress::default(),
            ))
            .map_err(|e| anyhow!("replaying `{}`: {e}", rule.name))?;
        let seconds = started.elapsed().as_secs_f64();
        events += replayed.events as u64;
        let fired = replayed
            .alerts
            .iter()
            .filter(|a| a.status == AlertStatus::Fired)
            .count() as u64;
        let mut ours: Vec<Identity> = replayed.alerts.iter().map(alert_identity).collect();
        ours.sort_unstable();
        outcomes.push(RuleOutcome {
            name: rule.name.clone(),
            shape: rule.shape,
            fired,
            suppressed: replayed.alerts.len() as u64 - fired,
            ours,
            ours_seconds: seconds,
            baseline: Vec::new(),
            baseline_seconds: 0.0,
        });
    }
    Ok((events, outcomes))
}

/// Runs every rule's equivalent batch query over the same files.
fn run_baseline(
    runtime: &tokio::runtime::Runtime,
    archive: &BenchArchive,
    rules: &[BenchRule],
    outcomes: &mut [RuleOutcome],
) -> Result<()> {
    runtime.block_on(async {
        let ctx = SessionContext::new();
        let dir = archive.table_dir(catalog::archive::VITALS);
        let dir = dir
            .to_str()
            .context("the archive's path is not UTF-8")?
            .to_owned()
            + "/";
        let partition_cols = vec![
            ("date".to_owned(), DataType::Utf8),
            ("hour".to_owned(), DataType::Utf8),
        ];
        ctx.register_parquet(
            BASELINE_TABLE,
            &dir,
            ParquetReadOptions::default().table_partition_cols(partition_cols),
        )
        .await
        .context("registering the archived files with DataFusion")?;
        for (rule, outcome) in rules.iter().zip(outcomes.iter_mut()) {
            let sql = baseline_sql(rule, archive.start_ms, archive.end_ms);
            let started = Instant::now();
            let batches = ctx
                .sql(&sql)
                .await
                .with_context(|| format!("planning the batch twin of `{}`", rule.name))?
                .collect()
                .await
                .with_context(|| format!("running the batch twin of `{}`", rule.name))?;
            outcome.baseline_seconds = started.elapsed().as_secs_f64();
            let mut rows = row_identities(&batches)?;
            rows.sort_unstable();
            outcome.baseline = rows;
        }
        Ok(())
    })
}

/// Fails unless every rule's alerts and baseline rows are the same set.
fn check(outcomes: &[RuleOutcome]) -> Result<()> {
    let mut problems = Vec::new();
    for o in outcomes {
        if o.ours == o.baseline {
            continue;
        }
        let only = |a: &[Identity], b: &[Identity]| -> Vec<String> {
            a.iter()
                .filter(|x| b.binary_search(x).is_err())
                .take(3)
                .map(|(k, t)| format!("{k}@{t}"))
                .collect()
        };
        problems.push(format!(
            "`{}`: replay {} alerts, baseline {} rows (only in the replay: {:?}; only in the baseline: {:?})",
            o.name,
            o.ours.len(),
            o.baseline.len(),
            only(&o.ours, &o.baseline),
            only(&o.baseline, &o.ours),
        ));
    }
    if !problems.is_empty() {
        bail!(
            "the replay and the DataFusion baseline disagree on {} of {} rules:\n{}",
            problems.len(),
            outcomes.len(),
            problems.join("\n")
        );
    }
    Ok(())
}

/// Runs the scenario with `rules` over a ward of `ward`'s size.
pub fn run_ward(ward: Ward, rules: &[BenchRule]) -> Result<BenchResult> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("building the replay's runtime")?;
    progress(
        NAME,
        format!(
            "archiving {} patients × {} s ({:.2} days) to Parquet (not timed)",
            ward.patients,
            ward.seconds,
            ward.seconds as f64 / 86_400.0
        ),
    );
    let generating = Instant::now();
    let archive = archive::generate(ward, None, &runtime)?;
    progress(
        NAME,
        format!(
            "{} events in {} files ({:.1} MiB) in {:.1} s; {} refused by the decoder",
            archive.vitals.rows,
            archive.vitals.files,
            archive.vitals.bytes as f64 / 1_048_576.0,
            generating.elapsed().as_secs_f64(),
            archive.rejected
        ),
    );
    let (events, mut outcomes) = run_replays(&runtime, &archive, rules)?;
    let ours_seconds: f64 = outcomes.iter().map(|o| o.ours_seconds).sum();
    progress(
        NAME,
        format!(
            "wardwatch: {} rules replayed in {ours_seconds:.3} s",
            rules.len()
        ),
    );
    run_baseline(&runtime, &archive, rules, &mut outcomes)?;
    let baseline_seconds: f64 = outcomes.iter().map(|o| o.baseline_seconds).sum();
    progress(
        NAME,
        format!(
            "DataFusion baseline: {} batch queries in {baseline_seconds:.3} s",
            rules.len()
        ),
    );
    check(&outcomes)?;
    let fired: u64 = outcomes.iter().map(|o| o.fired).sum();
    let suppressed: u64 = outcomes.iter().map(|o| o.suppressed).sum();
    let baseline_rows: u64 = outcomes.iter().map(|o| o.baseline.len() as u64).sum();
    if fired + suppressed == 0 {
        bail!(
            "the replay found no alerts over {} events: the rules or the simulator are broken",
            archive.vitals.rows
        );
    }
    progress(
        NAME,
        format!(
            "replay and baseline agree on every rule: {} alerts ({fired} fired, {suppressed} suppressed)",
            fired + suppressed
        ),
    );

    let per_rule: Vec<serde_json::Value> = outcomes
        .iter()
        .map(|o| {
            json!({
                "name": o.name,
                "shape": shape_name(o.shape),
                "alerts": o.ours.len(),
                "seconds": o.ours_seconds,
                "baseline_seconds": o.baseline_seconds,
            })
        })
        .collect();

    let mut result = BenchResult::new(
        NAME,
        ward,
        events,
        ours_seconds,
        available_cores(),
        "datafusion batch SQL over the same Parquet",
        events,
        baseline_seconds,
    )
    .detail("rules", rules.len() as u64)
    .detail("days", ward.seconds as f64 / 86_400.0)
    .detail("archived_events", archive.vitals.rows)
    .detail("archive_files", archive.vitals.files)
    .detail("archive_bytes", archive.vitals.bytes)
    .detail("rejected", archive.rejected)
    .detail("from_ms", archive.start_ms)
    .detail("to_ms", archive.end_ms)
    .detail("alerts_suppressed", suppressed)
    .detail("baseline_rows", baseline_rows)
    .detail("per_rule", per_rule);
    result.alerts = Some(fired);
    Ok(result)
}

pub fn run(size: &BenchSize) -> Result<BenchResult> {
    let rules: Vec<BenchRule> = rules::rules()
        .into_iter()
        .filter(|r| REPLAYED.contains(&r.name.as_str()))
        .collect();
    if rules.len() != REPLAYED.len() {
        bail!("the bench rules lost one of {REPLAYED:?}");
    }
    run_ward(size.resolve(SMALL, FULL), &rules)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_agrees_with_the_batch_sql_over_a_tiny_archive() {
        // An hour and a half of 20 patients, across an hour boundary.
        let ward = Ward {
            patients: 20,
            seconds: 5_400,
        };
        let r = run_ward(ward, &rules::rules())
            .expect("the replay benchmark runs and agrees with its baseline");
        assert_eq!(r.scenario, NAME);
        assert_eq!(r.details["rules"], 20);
        let archived = r.details["archived_events"].as_u64().unwrap();
        assert!(archived > 100_000, "{r:?}");
        // Every rule read every archived event of the range.
        assert!(r.events >= 20 * (archived - 1_000), "{r:?}");
        assert!(r.alerts > Some(0), "{r:?}");
        assert_eq!(
            r.details["baseline_rows"].as_u64(),
            Some(r.alerts.unwrap() + r.details["alerts_suppressed"].as_u64().unwrap())
        );
        assert!(r.details["archive_files"].as_u64() >= Some(8), "{r:?}");
        assert!(r.seconds > 0.0 && r.baseline_seconds > 0.0, "{r:?}");
    }

    #[test]
    fn the_equivalent_batch_query_keeps_the_range_and_drops_duplicates() {
        let rules = rules::rules();
        let tumble = rules
            .iter()
            .find(|r| matches!(r.shape, Shape::Tumble { .. }))
            .unwrap();
        let sql = baseline_sql(tumble, 1_000, 2_000);
        assert!(sql.contains("timestamp_unix_ms >= 1000 AND timestamp_unix_ms < 2000"));
        assert!(sql.contains("GROUP BY patient_id, source_device, timestamp_unix_ms"));
        assert!(sql.contains("window_end <= to_timestamp_millis(2000)"));
        let per_event = rules.iter().find(|r| r.shape == Shape::PerEvent).unwrap();
        assert!(!baseline_sql(per_event, 1_000, 2_000).contains("window_end"));
    }

    #[test]
    fn the_equivalent_batch_query_sums_readings_exactly() {
        let hypoxemia = rules::rules()
            .into_iter()
            .find(|r| r.name == "Sustained hypoxemia")
            .unwrap();
        let sql = baseline_sql(&hypoxemia, 1_000, 2_000);
        assert!(sql.contains("HAVING AVG(CAST(spo2_pct AS DECIMAL(18, 6))) < 90"));
        // No float SUM or AVG is left in any rule's twin: every one is over
        // a cast, or over a CASE of integers.
        for rule in rules::rules() {
            let sql = baseline_sql(&rule, 1_000, 2_000);
            for agg in ["SUM(", "AVG("] {
                for (i, _) in sql.match_indices(agg) {
                    let arg = &sql[i + agg.len()..];
                    assert!(
                        arg.starts_with("CAST(") || arg.starts_with("CASE "),
                        "`{}`: {}",
                        rule.name,
                        &sql[i..]
                    );
                }
            }
        }
    }

    /// Readings averaging exactly 90 whose float sum, in this order, is
    /// 359.99999999999994: the 3-day bench's P000023 window in small.
    #[test]
    fn an_average_exactly_on_the_threshold_is_not_below_it() {
        let values = [94.2, 82.0, 89.1, 94.7];
        assert!(values.iter().sum::<f64>() / 4.0 < 90.0);
        let rows: Vec<String> = values
            .iter()
            .map(|v| format!("(CAST({v:?} AS DOUBLE))"))
            .collect();
        let sql = exact_sums(&format!(
            "SELECT AVG(spo2_pct) < 90 AS below FROM (VALUES {}) AS t(spo2_pct)",
            rows.join(", ")
        ));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let batches = runtime
            .block_on(async { SessionContext::new().sql(&sql).await?.collect().await })
            .unwrap();
        assert!(!batches[0].column(0).as_boolean().value(0), "{sql}");
    }
}
