//! `wardwatch-bench engine`: Arrow batches in memory through the 20 rules, no I/O.
//!
//! The simulated ward is decoded once into per-partition batches (as the
//! Kafka source would cut them); the timed part is `Engine::process` over
//! every batch in arrival order, then one `advance_watermark` that closes the
//! windows still open. The engine is single-threaded, so events/s is also
//! events/s per core. It runs twice: the alerts must be non-empty and the
//! same both times (count and ids), and the faster run is reported.
//!
//! Baseline: the same 20 rules as batch SQL (see [`crate::rules`]) in
//! DataFusion over the same batches in a `MemTable`, with one target
//! partition on a current-thread runtime so it also uses one core; the
//! faster of two runs.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use datafusion::datasource::MemTable;
use datafusion::prelude::{SessionConfig, SessionContext};
use sql_rules::stream::vitals_schema;
use sql_rules::{AlertStatus, Engine, EngineConfig, RuleCompiler, RuleSpec};

use crate::rules::{self, BenchRule};
use crate::{progress, BenchResult, BenchSize, DecodedWard, PARTITIONS};

const NAME: &str = "engine";
/// (patients, seconds): 600 k events by default, 18 M with `--full`.
const SMALL: (usize, u64) = (1_000, 600);
const FULL: (usize, u64) = (10_000, 1_800);

/// What one pass of the engine over the data produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineRun {
    pub seconds_nanos: u128,
    pub fired: u64,
    pub suppressed: u64,
    pub late_events: u64,
    pub duplicates: u64,
    /// Order-independent digest of every alert's id and status.
    pub digest: u64,
}

impl EngineRun {
    fn seconds(&self) -> f64 {
        self.seconds_nanos as f64 / 1e9
    }

    /// Whether two runs produced the same alerts (timing aside).
    fn same_alerts(&self, other: &EngineRun) -> bool {
        (self.fired, self.suppressed, self.digest) == (other.fired, other.suppressed, other.digest)
    }
}

/// The engine's view of the benchmark rules, compiled once.
pub fn rule_specs(rules: &[BenchRule]) -> Result<Vec<RuleSpec>> {
    let compiler = RuleCompiler::new(vitals_schema());
    rules
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let compiled = compiler
                .compile(&r.sql)
                .with_context(|| format!("compiling bench rule `{}`", r.name))?;
            Ok(RuleSpec {
                id: format!("bench-{i:02}"),
                version: 1,
                name: r.name.clone(),
                severity: r.severity.to_owned(),
                cooldown_ms: r.cooldown_seconds as i64 * 1000,
                allowed_lateness_ms: None,
                keep_duplicates: false,
                escalation: None,
                compiled,
            })
        })
        .collect()
}

/// A fresh engine with `specs`, owning every benchmark partition.
pub fn engine_with(specs: &[RuleSpec]) -> Result<Engine> {
    let mut engine = Engine::new(EngineConfig::default());
    for spec in specs {
        engine
            .upsert_rule(spec.clone())
            .with_context(|| format!("adding rule {}", spec.name))?;
    }
    let partitions: Vec<i32> = (0..PARTITIONS).collect();
    engine.assign_partitions(&partitions, 0);
    Ok(engine)
}

/// One timed pass: a fresh engine with `specs`, every batch, then close
/// every window.
pub fn run_engine(specs: &[RuleSpec], data: &DecodedWard) -> Result<EngineRun> {
    let mut engine = engine_with(specs)?;
    let mut ids: Vec<(String, bool)> = Vec::new();
    let mut run = EngineRun {
        seconds_nanos: 0,
        fired: 0,
        suppressed: 0,
        late_events: 0,
        duplicates: 0,
        digest: 0,
    };
    let started = Instant::now();
    let mut outputs = Vec::with_capacity(data.batches.len() + 1);
    for (partition, batch, clock_ms) in &data.batches {
        outputs.push(engine.process(*partition, batch, *clock_ms)?);
    }
    // Past the longest window (15 min), so everything still open closes.
    let end = data.end_ms + 3_600_000;
    outputs.push(engine.advance_watermark(end, end)?);
    run.seconds_nanos = started.elapsed().as_nanos();

    for out in outputs {
        if let Some(e) = out.errors.first() {
            bail!("a rule failed during the engine benchmark: {e}");
        }
        run.late_events += out.late_events;
        run.duplicates += out.duplicates;
        for alert in out.alerts {
            let fired = alert.status == AlertStatus::Fired;
            if fired {
                run.fired += 1;
            } else {
                run.suppressed += 1;
            }
            ids.push((alert.id, fired));
        }
    }
    ids.sort_unstable();
    let mut h = DefaultHasher::new();
    ids.hash(&mut h);
    run.digest = h.finish();
    Ok(run)
}

/// The baseline: every rule's batch query over the same batches. Returns
/// (seconds, result rows).
pub fn run_baseline(rules: &[BenchRule], data: &DecodedWard) -> Result<(f64, u64)> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the baseline's runtime")?;
    runtime.block_on(async {
        let ctx = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(1));
        let batches = data.batches.iter().map(|(_, b, _)| b.clone()).collect();
        let table = MemTable::try_new(vitals_schema(), vec![batches])?;
        ctx.register_table("vitals", Arc::new(table))?;
        let started = Instant::now();
        let mut rows = 0u64;
        for rule in rules {
            let out = ctx
                .sql(&rule.batch_sql)
                .await
                .with_context(|| format!("planning the batch twin of `{}`", rule.name))?
                .collect()
                .await
                .with_context(|| format!("running the batch twin of `{}`", rule.name))?;
            rows += out.iter().map(|b| b.num_rows() as u64).sum::<u64>();
        }
        Ok((started.elapsed().as_secs_f64(), rows))
    })
}

pub fn run(size: &BenchSize) -> Result<BenchResult> {
    let ward = size.resolve(SMALL, FULL);
    progress(
        NAME,
        format!(
            "simulating {} patients × {} s and decoding into Arrow (not timed)",
            ward.patients, ward.seconds
        ),
    );
    let data = DecodedWard::generate(ward);
    let rules = rules::rules();
    let specs = rule_specs(&rules)?;
    progress(
        NAME,
        format!(
            "{} events in {} batches over {PARTITIONS} partitions ({} refused by the decoder); {} rules",
            data.rows,
            data.batches.len(),
            data.rejected,
            specs.len()
        ),
    );

    let first = run_engine(&specs, &data)?;
    progress(NAME, format!("engine run 1: {:.3} s", first.seconds()));
    let second = run_engine(&specs, &data)?;
    progress(NAME, format!("engine run 2: {:.3} s", second.seconds()));
    if first.fired == 0 {
        bail!(
            "the engine fired no alerts over {} events: the rules or the simulator are broken",
            data.rows
        );
    }
    if !first.same_alerts(&second) {
        bail!(
            "two engine runs over the same batches disagree: {} fired / {} suppressed (digest {:016x}) vs {} / {} ({:016x})",
            first.fired,
            first.suppressed,
            first.digest,
            second.fired,
            second.suppressed,
            second.digest
        );
    }
    let best = if second.seconds_nanos < first.seconds_nanos {
        &second
    } else {
        &first
    };

    let (b1, baseline_rows) = run_baseline(&rules, &data)?;
    progress(NAME, format!("DataFusion baseline run 1: {b1:.3} s"));
    let (b2, _) = run_baseline(&rules, &data)?;
    progress(NAME, format!("DataFusion baseline run 2: {b2:.3} s"));

    let mut result = BenchResult::new(
        NAME,
        ward,
        data.rows,
        best.seconds(),
        1,
        "datafusion batch SQL, 1 partition",
        data.rows,
        b1.min(b2),
    )
    .detail("rules", specs.len() as u64)
    .detail("batches", data.batches.len() as u64)
    .detail("rejected", data.rejected)
    .detail("alerts_suppressed", best.suppressed)
    .detail("late_events", best.late_events)
    .detail("duplicates", best.duplicates)
    .detail("alert_digest", format!("{:016x}", best.digest))
    .detail("baseline_rows", baseline_rows);
    result.alerts = Some(best.fired);
    Ok(result)
}
