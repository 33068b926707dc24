//! `wardwatch-bench query`: three history queries over days of archived Parquet,
//! through the [`HistoryCatalog`] behind `POST /api/query`, against DuckDB
//! over the same files.
//!
//! The archive is generated once, not timed (see [`crate::archive`]), with
//! the alerts the 20 bench rules fire over it in the `alerts` table. The
//! queries:
//!
//! 1. alerts per patient per day (the `alerts` table, by its `date`
//!    partition column);
//! 2. hourly mean heart rate per hospital over the whole archive;
//! 3. one patient's readings over the last 24 h of the archive.
//!
//! Each runs [`REPS`] times on each side and the median counts. Ours is
//! [`HistoryCatalog::query`] (plan, read-only checks, row and time limits,
//! run, collect the Arrow batches), on a multi-threaded runtime. DuckDB runs
//! in a `python3` subprocess (`bench/duckdb_history.py`, or the interpreter
//! named by `WARDWATCH_PYTHON`) with views over `read_parquet` of the same
//! directories, timed inside Python from `execute` to the result fetched as
//! an Arrow table. Both use every core.
//!
//! `seconds` and `baseline_seconds` are the sums of the three medians, and
//! `events` (on both sides) is the archive's rows (vitals and alerts), so
//! `ratio` is DuckDB's time over ours: above 1, we are faster. Both sides
//! must return the same rows (numbers within 1e-9 relative): the scenario
//! fails otherwise. Without an importable `duckdb` the baseline is reported
//! as "duckdb unavailable" (ratio 0) instead of failing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use catalog::{HistoryCatalog, QueryLimits};
use serde_json::{json, Value};

use crate::archive::{self, BenchArchive};
use crate::engine::rule_specs;
use crate::{available_cores, progress, rules, BenchResult, BenchSize, Ward};

const NAME: &str = "query";
/// (patients, seconds): one day of 25 patients (≈2.2 M archived events) by
/// default, a week of 100 (≈61 M) with `--full`. Generating the archive
/// (with the 20 rules' alerts) is most of the run time.
const SMALL: (usize, u64) = (25, 86_400);
const FULL: (usize, u64) = (100, 7 * 86_400);
/// Runs of each query on each side; the median counts.
pub const REPS: usize = 5;
/// The DuckDB side, embedded so the binary runs from any directory.
const DUCKDB_SCRIPT: &str = include_str!("../duckdb_history.py");
/// What the baseline is called when DuckDB cannot be used.
pub const UNAVAILABLE: &str = "duckdb unavailable";

/// One history query in both dialects.
#[derive(Debug, Clone)]
pub struct HistoryQuery {
    pub name: &'static str,
    pub ours: String,
    pub duckdb: String,
}

/// The three queries over `archive`; `patient` is the one whose last 24 h
/// are read.
pub fn queries(archive: &BenchArchive, patient: &str) -> Vec<HistoryQuery> {
    let alerts_per_day = "SELECT patient_id, \"date\" AS day, COUNT(*) AS alerts FROM alerts \
         WHERE patient_id IS NOT NULL GROUP BY patient_id, \"date\" ORDER BY patient_id, day";
    // Integer division is `/` in DataFusion and `//` in DuckDB.
    let hourly = |div: &str| {
        format!(
            "SELECT hospital_id, timestamp_unix_ms {div} 3600000 * 3600000 AS hour_ms, \
             AVG(heart_rate_bpm) AS mean_hr, COUNT(heart_rate_bpm) AS readings FROM vitals \
             GROUP BY hospital_id, timestamp_unix_ms {div} 3600000 * 3600000 \
             ORDER BY hospital_id, hour_ms"
        )
    };
    let (from, to) = (archive.end_ms - 86_400_000, archive.end_ms);
    let last_day = format!(
        "SELECT timestamp_unix_ms, sequence_number, heart_rate_bpm, spo2_pct, respiration_rate, \
         systolic_bp_mmhg, diastolic_bp_mmhg FROM vitals \
         WHERE patient_id = '{patient}' AND timestamp_unix_ms >= {from} AND timestamp_unix_ms < {to} \
         ORDER BY timestamp_unix_ms, sequence_number"
    );
    vec![
        HistoryQuery {
            name: "alerts_per_patient_per_day",
            ours: alerts_per_day.to_owned(),
            duckdb: alerts_per_day.to_owned(),
        },
        HistoryQuery {
            name: "hourly_mean_hr_per_hospital",
            ours: hourly("/"),
            duckdb: hourly("//"),
        },
        HistoryQuery {
            name: "patient_last_24h",
            ours: last_day.clone(),
            duckdb: last_day,
        },
    ]
}

/// One side's runs of one query.
#[derive(Debug, Clone)]
pub struct Timed {
    pub seconds: Vec<f64>,
    pub rows: Vec<Vec<Value>>,
}

impl Timed {
    pub fn median(&self) -> f64 {
        let mut s = self.seconds.clone();
        s.sort_by(f64::total_cmp);
        match s.len() {
            0 => 0.0,
            n if n % 2 == 1 => s[n / 2],
            n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
        }
    }
}

/// What the DuckDB side gave.
#[derive(Debug)]
pub enum Baseline {
    Ran {
        version: String,
        fetch: String,
        threads: Value,
        queries: Vec<Timed>,
    },
    /// `duckdb` (or python) could not be used: why.
    Unavailable(String),
}

fn run_ours(
    runtime: &tokio::runtime::Runtime,
    history: &HistoryCatalog,
    queries: &[HistoryQuery],
) -> Result<Vec<Timed>> {
    let limits = QueryLimits {
        max_rows: 10_000_000,
        timeout: Duration::from_secs(3_600),
    };
    queries
        .iter()
        .map(|q| {
            let mut timed = Timed {
                seconds: Vec::with_capacity(REPS),
                rows: Vec::new(),
            };
            for _ in 0..REPS {
                let started = Instant::now();
                let batches = runtime
                    .block_on(history.query(&q.ours, &limits))
                    .with_context(|| format!("history query `{}`", q.name))?;
                timed.seconds.push(started.elapsed().as_secs_f64());
                timed.rows = batches
                    .iter()
                    .flat_map(|b| {
                        (0..b.num_rows()).map(move |r| {
                            b.columns()
                                .iter()
                                .map(|c| sql_rules::json::cell(c.as_ref(), r))
                                .collect()
                        })
                    })
                    .collect();
            }
            Ok(timed)
        })
        .collect()
}

/// Runs the DuckDB side with `python`.
pub fn run_duckdb(
    python: &str,
    archive: &BenchArchive,
    queries: &[HistoryQuery],
    reps: usize,
) -> Result<Baseline> {
    let work = tempfile::Builder::new()
        .prefix("wardwatch-duckdb-")
        .tempdir()?;
    let script = work.path().join("duckdb_history.py");
    std::fs::write(&script, DUCKDB_SCRIPT)?;
    let spec_path = work.path().join("spec.json");
    let out_path = work.path().join("out.json");
    let spec = json!({
        "vitals": archive.table_dir(catalog::archive::VITALS),
        "alerts": archive.table_dir(catalog::archive::ALERTS),
        "reps": reps,
        "queries": queries.iter().map(|q| json!({"name": q.name, "sql": q.duckdb})).collect::<Vec<_>>(),
    });
    std::fs::write(&spec_path, serde_json::to_vec(&spec)?)?;
    let output = match std::process::Command::new(python)
        .arg(&script)
        .arg(&spec_path)
        .arg(&out_path)
        .output()
    {
        Ok(o) => o,
        Err(e) => return Ok(Baseline::Unavailable(format!("cannot run {python}: {e}"))),
    };
    let stderr = String::from_utf8_lossy(&output.stderr).trim().to_owned();
    if output.status.code() == Some(3) {
        return Ok(Baseline::Unavailable(stderr));
    }
    if !output.status.success() {
        bail!("the DuckDB baseline failed ({}):\n{stderr}", output.status);
    }
    let out: Value = serde_json::from_slice(
        &std::fs::read(&out_path).context("reading the DuckDB baseline's output")?,
    )?;
    let mut timed = Vec::new();
    for (q, got) in queries
        .iter()
        .zip(out["queries"].as_array().into_iter().flatten())
    {
        if got["name"] != q.name {
            bail!(
                "the DuckDB baseline answered {} for {}",
                got["name"],
                q.name
            );
        }
        let seconds = got["seconds"]
            .as_array()
            .map(|s| s.iter().filter_map(Value::as_f64).collect())
            .unwrap_or_default();
        let rows = got["rows"]
            .as_array()
            .map(|rows| {
                rows.iter()
                    .map(|r| r.as_array().cloned().unwrap_or_default())
                    .collect()
            })
            .unwrap_or_default();
        timed.push(Timed { seconds, rows });
    }
    if timed.len() != queries.len() {
        bail!(
            "the DuckDB baseline answered {} of {} queries",
            timed.len(),
            queries.len()
        );
    }
    Ok(Baseline::Ran {
        version: out["duckdb_version"].as_str().unwrap_or("?").to_owned(),
        fetch: out["fetch"].as_str().unwrap_or("?").to_owned(),
        threads: out["threads"].clone(),
        queries: timed,
    })
}

/// Whether two cells hold the same value: integers exactly, other numbers
/// within 1e-9 relative, anything else equal.
fn same_cell(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(x), Some(y)) => x == y,
            _ => {
                let (x, y) = (
                    x.as_f64().unwrap_or(f64::NAN),
                    y.as_f64().unwrap_or(f64::NAN),
                );
                (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1.0)
            }
        },
        _ => a == b,
    }
}

/// Fails unless both sides returned the same rows, in the same order.
pub fn check_rows(name: &str, ours: &[Vec<Value>], theirs: &[Vec<Value>]) -> Result<()> {
    if ours.len() != theirs.len() {
        bail!(
            "`{name}`: wardwatch returned {} rows, DuckDB {}",
            ours.len(),
            theirs.len()
        );
    }
    for (i, (a, b)) in ours.iter().zip(theirs).enumerate() {
        if a.len() != b.len() || !a.iter().zip(b).all(|(x, y)| same_cell(x, y)) {
            bail!(
                "`{name}`: row {i} differs: wardwatch {}, DuckDB {}",
                Value::from(a.clone()),
                Value::from(b.clone())
            );
        }
    }
    Ok(())
}

/// The patient whose last day query 3 reads: one in the middle of the ward.
fn patient(ward: Ward) -> String {
    format!("P{:06}", ward.patients / 2 + 1)
}

/// Runs the scenario over a ward of `ward`'s size, with DuckDB run by
/// `python`.
pub fn run_with(ward: Ward, python: &str) -> Result<BenchResult> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("building the query's runtime")?;
    progress(
        NAME,
        format!(
            "archiving {} patients × {} s ({:.2} days) and the alerts of {} rules to Parquet (not timed)",
            ward.patients,
            ward.seconds,
            ward.seconds as f64 / 86_400.0,
            rules::rules().len()
        ),
    );
    let generating = Instant::now();
    let specs = rule_specs(&rules::rules())?;
    let archive = archive::generate(ward, Some(&specs), &runtime)?;
    progress(
        NAME,
        format!(
            "{} events in {} files, {} alerts in {} files, in {:.1} s",
            archive.vitals.rows,
            archive.vitals.files,
            archive.alerts.rows,
            archive.alerts.files,
            generating.elapsed().as_secs_f64()
        ),
    );
    if archive.alerts.rows == 0 {
        bail!("no alerts to query: the rules or the simulator are broken");
    }
    let queries = queries(&archive, &patient(ward));
    let history = HistoryCatalog::new(Arc::clone(&archive.store), archive.prefix.clone())?;
    let ours = run_ours(&runtime, &history, &queries)?;
    let ours_seconds: f64 = ours.iter().map(Timed::median).sum();
    progress(
        NAME,
        format!("wardwatch: {ours_seconds:.3} s (sum of medians of {REPS})"),
    );
    let baseline = run_duckdb(python, &archive, &queries, REPS)?;

    let events = archive.vitals.rows + archive.alerts.rows;
    let mut per_query = Vec::new();
    let result = match &baseline {
        Baseline::Ran {
            version,
            fetch,
            threads,
            queries: theirs,
        } => {
            for ((q, a), b) in queries.iter().zip(&ours).zip(theirs) {
                check_rows(q.name, &a.rows, &b.rows)?;
                if a.rows.is_empty() {
                    bail!("`{}` returned no rows on either side", q.name);
                }
            }
            let theirs_seconds: f64 = theirs.iter().map(Timed::median).sum();
            progress(
                NAME,
                format!(
                    "DuckDB {version}: {theirs_seconds:.3} s (sum of medians of {REPS}); same rows on both sides"
                ),
            );
            let mut log_ratios = 0.0;
            for ((q, a), b) in queries.iter().zip(&ours).zip(theirs) {
                let ratio = b.median() / a.median().max(1e-9);
                log_ratios += ratio.ln();
                per_query.push(json!({
                    "name": q.name,
                    "rows": a.rows.len(),
                    "seconds": a.median(),
                    "baseline_seconds": b.median(),
                    "ratio": ratio,
                    "sql": q.ours,
                }));
            }
            BenchResult::new(
                NAME,
                ward,
                events,
                ours_seconds,
                available_cores(),
                &format!("duckdb {version} over the same Parquet"),
                events,
                theirs_seconds,
            )
            .detail("geomean_ratio", (log_ratios / queries.len() as f64).exp())
            .detail("duckdb_fetch", fetch.as_str())
            .detail("duckdb_threads", threads.clone())
        }
        Baseline::Unavailable(why) => {
            progress(NAME, format!("{UNAVAILABLE}: {why}"));
            for (q, a) in queries.iter().zip(&ours) {
                per_query.push(json!({
                    "name": q.name,
                    "rows": a.rows.len(),
                    "seconds": a.median(),
                    "sql": q.ours,
                }));
            }
            BenchResult::new(
                NAME,
                ward,
                events,
                ours_seconds,
                available_cores(),
                UNAVAILABLE,
                0,
                0.0,
            )
            .detail("baseline_error", why.as_str())
        }
    };
    Ok(result
        .detail("queries", per_query)
        .detail("reps", REPS as u64)
        .detail("days", ward.seconds as f64 / 86_400.0)
        .detail("archived_events", archive.vitals.rows)
        .detail("archived_alerts", archive.alerts.rows)
        .detail("archive_files", archive.vitals.files + archive.alerts.files)
        .detail("archive_bytes", archive.vitals.bytes + archive.alerts.bytes)
        .detail("alerts_fired", archive.alerts_fired)
        .detail("alerts_suppressed", archive.alerts_suppressed))
}

/// The interpreter that runs the DuckDB side.
pub fn python() -> String {
    std::env::var("WARDWATCH_PYTHON").unwrap_or_else(|_| "python3".to_owned())
}

pub fn run(size: &BenchSize) -> Result<BenchResult> {
    run_with(size.resolve(SMALL, FULL), &python())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_queries_match_duckdb_over_a_tiny_archive() {
        let ward = Ward {
            patients: 20,
            seconds: 2 * 3_600,
        };
        let r = run_with(ward, &python()).expect("the query benchmark runs");
        assert_eq!(r.scenario, NAME);
        assert!(
            r.baseline != UNAVAILABLE,
            "DuckDB could not be used ({}): `bash tests/run.sh` installs it",
            r.details["baseline_error"]
        );
        // run_with has already compared every row of both sides.
        assert!(r.ratio > 0.0 && r.baseline_seconds > 0.0, "{r:?}");
        let queries = r.details["queries"].as_array().unwrap();
        assert_eq!(queries.len(), 3);
        // One patient's last 24 h of a two-hour archive: two hours at 1 Hz.
        let readings = queries[2]["rows"].as_u64().unwrap();
        assert!((7_000..7_400).contains(&readings), "{readings}");
        assert!(r.details["archived_alerts"].as_u64() > Some(0), "{r:?}");
    }

    #[test]
    fn without_duckdb_the_baseline_says_so() {
        let archive_dir = tempfile::tempdir().unwrap();
        let (store, prefix) =
            catalog::storage::open_store(archive_dir.path().to_str().unwrap()).unwrap();
        let archive = BenchArchive {
            dir: archive_dir,
            store,
            prefix,
            start_ms: 0,
            end_ms: 1,
            produced: 0,
            rejected: 0,
            vitals: Default::default(),
            alerts: Default::default(),
            alerts_fired: 0,
            alerts_suppressed: 0,
        };
        let q = queries(&archive, "P000001");
        match run_duckdb("/nonexistent/python3", &archive, &q, 1).unwrap() {
            Baseline::Unavailable(why) => assert!(why.contains("cannot run"), "{why}"),
            other => panic!("expected unavailable, got {other:?}"),
        }
    }

    #[test]
    fn rows_compare_numbers_with_tolerance_and_the_rest_exactly() {
        let a = vec![vec![json!("P1"), json!(3), json!(71.25)]];
        let close = vec![vec![json!("P1"), json!(3), json!(71.250_000_000_01)]];
        assert!(check_rows("q", &a, &close).is_ok());
        let off = vec![vec![json!("P1"), json!(4), json!(71.25)]];
        assert!(check_rows("q", &a, &off).is_err());
        assert!(check_rows("q", &a, &[]).is_err());
        let other_key = vec![vec![json!("P2"), json!(3), json!(71.25)]];
        assert!(check_rows("q", &a, &other_key).is_err());
    }
}
