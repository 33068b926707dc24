//! `wardwatch-bench recovery`: what checkpoints cost and what a restore
//! takes, at the state size of a ward (10 k patients; 100 k with `--full`).
//!
//! The ward of the `state` scenario (20 rules, five-minute windows that all
//! stay open) is decoded into batches first (not timed). Then the engine
//! processes them twice, on this thread:
//! - baseline: no checkpoints;
//! - measured: snapshots scheduled as the server schedules checkpoints
//!   ([`wardwatch::checkpoint::pause_after`]): every `checkpoint_interval_ms`
//!   (2 s by default) of processing time, or longer when the last snapshot
//!   took more than `checkpoint_max_overhead_percent` (10 %) of it — the
//!   snapshot is on the engine's path, so its whole cost shows in the rate.
//!   (The server also counts the file's write, off the engine thread, in
//!   the checkpoint's duration, so it pauses longer than this: the ratio
//!   here is the lower one.)
//!
//! `ratio` is the throughput with checkpoints over without (the goal is at
//! least 0.9). Details: the largest snapshot's size and the time taken to
//! snapshot it, to write it as a checkpoint file (fsync'd, on a local data
//! directory: off the engine thread in the server) and to read and restore
//! it into a fresh engine (what a restart does before reading again; the
//! fastest of three).

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use arrow::record_batch::RecordBatch;
use sql_rules::{Engine, EngineConfig, RuleSpec};

use crate::engine::rule_specs;
use crate::rules::five_minute_rules;
use crate::{partition_of, progress, BenchResult, BenchSize, BATCH_ROWS, PARTITIONS};
use wardwatch::source::decode::VitalsDecoder;

const NAME: &str = "recovery";
/// (patients, seconds), as the `state` scenario.
const SMALL: (usize, u64) = (10_000, 240);
const FULL: (usize, u64) = (100_000, 240);
/// The server's default `checkpoint_interval_ms`.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(2);
/// Restores timed (the fastest is reported).
const RESTORES: usize = 3;
/// The server's default `checkpoint_max_overhead_percent`.
const MAX_OVERHEAD_PERCENT: u64 = 10;

fn engine(specs: &[RuleSpec]) -> Result<Engine> {
    let mut engine = Engine::new(EngineConfig::default());
    for spec in specs {
        engine.upsert_rule(spec.clone())?;
    }
    let partitions: Vec<i32> = (0..PARTITIONS).collect();
    engine.assign_partitions(&partitions, 0);
    Ok(engine)
}

/// Writes a snapshot as a checkpoint file (off the engine thread in the
/// server).
type WriteCheckpoint<'a> = &'a dyn Fn(&[u8]) -> Result<()>;

/// Processes every batch; with `every`, snapshots as the server schedules
/// checkpoints at that interval, each also written with `write` (its time is
/// not counted: the server writes on another thread; but, as there, it
/// counts in the checkpoint's duration and so in the pause before the next).
/// Returns the seconds taken, the snapshots' (bytes, seconds) and the last
/// snapshot.
#[allow(clippy::type_complexity)]
fn process(
    engine: &mut Engine,
    batches: &[(i32, RecordBatch, i64)],
    every: Option<(Duration, WriteCheckpoint)>,
) -> Result<(f64, Vec<(usize, f64)>, Option<Vec<u8>>)> {
    let mut snapshots = Vec::new();
    let mut last = None;
    let started = Instant::now();
    let mut writing = Duration::ZERO;
    let mut since = Instant::now();
    let mut wait = every.map(|(every, _)| every);
    for (partition, batch, now_ms) in batches {
        let out = engine.process(*partition, batch, *now_ms)?;
        if let Some(e) = out.errors.first() {
            bail!("a rule failed: {e}");
        }
        if wait.is_some_and(|wait| since.elapsed() >= wait) {
            let taken = Instant::now();
            let bytes = engine.snapshot()?;
            let took = taken.elapsed();
            snapshots.push((bytes.len(), took.as_secs_f64()));
            let written = Instant::now();
            if let Some((_, write)) = every {
                write(&bytes)?;
            }
            let write_took = written.elapsed();
            writing += write_took;
            last = Some(bytes);
            wait = every.map(|(every, _)| {
                wardwatch::checkpoint::pause_after(every, took + write_took, MAX_OVERHEAD_PERCENT)
            });
            since = Instant::now();
        }
    }
    Ok(((started.elapsed() - writing).as_secs_f64(), snapshots, last))
}

pub fn run(size: &BenchSize) -> Result<BenchResult> {
    let ward = size.resolve(SMALL, FULL);
    let specs = rule_specs(&five_minute_rules())?;
    progress(
        NAME,
        format!(
            "decoding {} patients × {} s for {} rules",
            ward.patients,
            ward.seconds,
            specs.len()
        ),
    );
    let mut decoders: Vec<VitalsDecoder> = (0..PARTITIONS)
        .map(|_| VitalsDecoder::new(BATCH_ROWS))
        .collect();
    let mut batches = Vec::new();
    ward.simulate(|events, now_ms| {
        for e in events {
            let _ = decoders[partition_of(&e.key) as usize].push_json(&e.payload);
        }
        for (p, decoder) in decoders.iter_mut().enumerate() {
            if !decoder.is_empty() {
                batches.push((p as i32, decoder.finish(), now_ms));
            }
        }
    });
    let rows: u64 = batches.iter().map(|(_, b, _)| b.num_rows() as u64).sum();

    progress(NAME, "baseline: processing without checkpoints");
    let (off_secs, _, _) = process(&mut engine(&specs)?, &batches, None)?;
    progress(
        NAME,
        format!(
            "processing with a snapshot every {CHECKPOINT_EVERY:?}, or less often past {MAX_OVERHEAD_PERCENT} % of the time"
        ),
    );
    let dir = tempfile::tempdir()?;
    let (store, prefix) = catalog::storage::open_store(&dir.path().to_string_lossy())?;
    let checkpoints = catalog::checkpoints::CheckpointStore::new(store, &prefix);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let sequence = std::cell::Cell::new(1u64);
    let write = |bytes: &[u8]| -> Result<()> {
        let header = catalog::checkpoints::CheckpointHeader {
            sequence: sequence.get(),
            ..Default::default()
        };
        sequence.set(sequence.get() + 1);
        runtime.block_on(async {
            checkpoints.write(&header, bytes).await?;
            checkpoints.prune(2).await
        })?;
        Ok(())
    };
    let mut checkpointed = engine(&specs)?;
    let (on_secs, snapshots, _) = process(
        &mut checkpointed,
        &batches,
        Some((CHECKPOINT_EVERY, &write)),
    )?;
    // The full state at the end, whatever the run's length: its size and
    // cost are what a checkpoint of this ward costs.
    let taken = Instant::now();
    let last = checkpointed.snapshot()?;
    let snapshot_secs = taken.elapsed().as_secs_f64();

    let header = catalog::checkpoints::CheckpointHeader {
        sequence: sequence.get(),
        ..Default::default()
    };
    let written = Instant::now();
    let file_bytes = runtime.block_on(checkpoints.write(&header, &last))?;
    let write_secs = written.elapsed().as_secs_f64();
    // Read and restored three times (each into a fresh engine), the
    // fastest reported: on two shared cores one sample is mostly noise.
    let mut restore_secs = f64::MAX;
    let mut fresh = None;
    for _ in 0..RESTORES {
        let mut restoring = engine(&specs)?;
        let restored = Instant::now();
        let read = runtime
            .block_on(checkpoints.latest())?
            .ok_or_else(|| anyhow::anyhow!("the checkpoint just written is not found"))?;
        let skipped = restoring.restore(&read.engine, 0)?;
        restore_secs = restore_secs.min(restored.elapsed().as_secs_f64());
        if !skipped.is_empty() {
            bail!("rules not restored: {skipped:?}");
        }
        fresh = Some(restoring);
    }
    let fresh = fresh.expect("restored at least once");
    let open_panes: u64 = specs
        .iter()
        .filter_map(|s| fresh.rule_stats(&s.id))
        .map(|s| s.open_panes)
        .sum();
    if open_panes == 0 {
        bail!("the restored engine holds no window state: the scenario measures nothing");
    }
    progress(
        NAME,
        format!(
            "state {:.1} MiB: snapshot {:.0} ms, write {:.0} ms, read and restore {:.0} ms (fastest of 3); {} snapshots during the run",
            last.len() as f64 / 1048576.0,
            snapshot_secs * 1e3,
            write_secs * 1e3,
            restore_secs * 1e3,
            snapshots.len()
        ),
    );
    let during: f64 = snapshots.iter().map(|(_, s)| s).sum();
    Ok(BenchResult::new(
        NAME,
        ward,
        rows,
        on_secs,
        1,
        "the same engine without checkpoints",
        rows,
        off_secs,
    )
    .detail("rules", specs.len() as u64)
    .detail("ratio_kind", "throughput with checkpoints / without")
    .detail("checkpoint_every_ms", CHECKPOINT_EVERY.as_millis() as u64)
    .detail("max_overhead_percent", MAX_OVERHEAD_PERCENT)
    .detail("snapshots_during_run", snapshots.len() as u64)
    .detail("snapshot_seconds_during_run", during)
    .detail("state_snapshot_bytes", last.len() as u64)
    .detail("checkpoint_file_bytes", file_bytes)
    .detail("snapshot_ms", snapshot_secs * 1e3)
    .detail("write_ms", write_secs * 1e3)
    .detail("read_and_restore_ms", restore_secs * 1e3)
    .detail("open_panes_restored", open_panes))
}
