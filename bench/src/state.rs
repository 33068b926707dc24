//! `wardwatch-bench state`: resident memory of the engine's window state with a ward
//! of patients and 20 rules whose five-minute windows are all still open.
//!
//! The ward runs for four simulated minutes from a five-minute boundary, so
//! no window closes: every rule holds partial aggregates for every patient.
//! Events are simulated, decoded and processed one second at a time and
//! dropped after processing, so what stays is the engine's state. It is
//! measured by the engine's own accounting (`Engine::state_bytes`: group
//! tables, accumulators, stats, remembered events, interned ids, as those
//! structures report their allocations). The growth of the process's
//! resident set (`VmRSS`) across the fill is reported beside it; it is not
//! the figure, because the allocator reuses memory freed earlier in the
//! process (by an earlier scenario in `bench all`, say) and keeps some
//! freed memory, so it can be far below or above the state.
//!
//! Baseline: the Arrow memory of the same events buffered raw (once, shared
//! by all rules), which is what a window operator without incremental
//! aggregation would hold. Here `ratio` is a memory ratio — the raw buffer
//! over our state, higher is better — and `events_per_sec` is the fill rate
//! (`baseline_events_per_sec` is 0: the baseline is not timed).

use std::time::Instant;

use anyhow::{bail, Context, Result};
use sql_rules::{Engine, EngineConfig};

use crate::engine::rule_specs;
use crate::rules::five_minute_rules;
use crate::{partition_of, progress, BenchResult, BenchSize, BATCH_ROWS, PARTITIONS};
use wardwatch::source::decode::VitalsDecoder;

const NAME: &str = "state";
/// (patients, seconds): the target is 100 k patients (`--full`); the small
/// size projects from 10 k.
const SMALL: (usize, u64) = (10_000, 240);
const FULL: (usize, u64) = (100_000, 240);
/// The target's ward, for the projection.
const TARGET_PATIENTS: f64 = 100_000.0;

/// A `/proc/self/status` field in bytes (Linux only).
fn proc_status_bytes(field: &str) -> Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")
        .context("the state benchmark reads /proc/self/status (Linux only)")?;
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .with_context(|| format!("no {field} in /proc/self/status"))?;
    let kb: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("unreadable {line:?}"))?;
    Ok(kb * 1024)
}

pub fn run(size: &BenchSize) -> Result<BenchResult> {
    let ward = size.resolve(SMALL, FULL);
    if ward.seconds > 300 {
        bail!(
            "the state scenario keeps windows open: --seconds must be at most 300 (five minutes)"
        );
    }
    let rules = five_minute_rules();
    let specs = rule_specs(&rules)?;
    let mut engine = Engine::new(EngineConfig::default());
    for spec in &specs {
        engine.upsert_rule(spec.clone())?;
    }
    let partitions: Vec<i32> = (0..PARTITIONS).collect();
    engine.assign_partitions(&partitions, 0);
    let mut decoders: Vec<VitalsDecoder> = (0..PARTITIONS)
        .map(|_| VitalsDecoder::new(BATCH_ROWS))
        .collect();
    progress(
        NAME,
        format!(
            "filling {} rules' five-minute windows with {} patients × {} s",
            specs.len(),
            ward.patients,
            ward.seconds
        ),
    );

    let rss_before = proc_status_bytes("VmRSS:")?;
    let (mut rows, mut raw_bytes) = (0u64, 0u64);
    let mut engine_secs = 0.0;
    let mut failure = None;
    ward.simulate(|events, now_ms| {
        for e in events {
            // Refused payloads are the decoder's business, not state.
            let _ = decoders[partition_of(&e.key) as usize].push_json(&e.payload);
        }
        for (p, decoder) in decoders.iter_mut().enumerate() {
            if decoder.is_empty() {
                continue;
            }
            let batch = decoder.finish();
            rows += batch.num_rows() as u64;
            // The rows' own bytes, not the builders' spare capacity.
            raw_bytes += batch
                .columns()
                .iter()
                .map(|c| c.to_data().get_slice_memory_size().unwrap_or(0) as u64)
                .sum::<u64>();
            let started = Instant::now();
            match engine.process(p as i32, &batch, now_ms) {
                Ok(out) => {
                    if let Some(e) = out.errors.first() {
                        failure.get_or_insert_with(|| e.to_string());
                    }
                }
                Err(e) => {
                    failure.get_or_insert_with(|| e.to_string());
                }
            }
            engine_secs += started.elapsed().as_secs_f64();
        }
    });
    if let Some(e) = failure {
        bail!("a rule failed while filling state: {e}");
    }
    let rss_after = proc_status_bytes("VmRSS:")?;
    let peak = proc_status_bytes("VmHWM:")?;
    let rss_growth = rss_after.saturating_sub(rss_before);
    let state_bytes = engine.state_bytes() as u64;
    let open_panes: u64 = specs
        .iter()
        .filter_map(|s| engine.rule_stats(&s.id))
        .map(|s| s.open_panes)
        .sum();
    if open_panes == 0 {
        bail!("no window state is open after the fill: the scenario measures nothing");
    }
    let per_patient = state_bytes as f64 / ward.patients as f64;
    progress(
        NAME,
        format!(
            "state {:.1} MiB ({:.0} B per patient and rule), raw events {:.1} MiB",
            state_bytes as f64 / 1048576.0,
            per_patient / specs.len() as f64,
            raw_bytes as f64 / 1048576.0
        ),
    );

    let mut result = BenchResult::new(
        NAME,
        ward,
        rows,
        engine_secs,
        1,
        "raw Arrow events buffered (memory)",
        rows,
        0.0,
    )
    .detail("rules", specs.len() as u64)
    .detail(
        "ratio_kind",
        "memory: raw buffer bytes / engine state bytes",
    )
    .detail("state_bytes", state_bytes)
    .detail("state_mib", state_bytes as f64 / 1048576.0)
    .detail("baseline_bytes", raw_bytes)
    .detail("bytes_per_patient_rule", per_patient / specs.len() as f64)
    .detail(
        "projected_100k_patients_mib",
        per_patient * TARGET_PATIENTS / 1048576.0,
    )
    .detail("open_panes", open_panes)
    .detail("peak_rss_mib", peak as f64 / 1048576.0)
    .detail("rss_growth_mib", rss_growth as f64 / 1048576.0);
    result.ratio = if state_bytes > 0 {
        raw_bytes as f64 / state_bytes as f64
    } else {
        0.0
    };
    Ok(result)
}
