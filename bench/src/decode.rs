//! `wardwatch-bench decode`: Kafka payload bytes (JSON VitalEvents) into Arrow.
//!
//! The simulated ward's payloads (with its malformed ones) are generated
//! once; the timed part is [`VitalsDecoder::push_json`] over all of them,
//! cutting a batch every [`BATCH_ROWS`] rows as the Kafka source does.
//! Baseline: `serde_json` into a plain Rust struct with owned strings, the
//! textbook way, collected into a `Vec` cleared at the same batch size. The
//! baseline neither validates ranges nor builds columns, so it is the
//! floor of what parsing JSON costs. Each side runs three times; the fastest
//! counts.
//!
//! Protobuf payloads are not measured: there is no Protobuf decoder yet.

use std::time::Instant;

use anyhow::{bail, Result};
use serde::Deserialize;

use crate::{progress, BenchResult, BenchSize, BATCH_ROWS};
use wardwatch::source::decode::VitalsDecoder;

const NAME: &str = "decode";
/// (patients, seconds): 300 k payloads by default, 1.5 M with `--full`.
const SMALL: (usize, u64) = (1_000, 300);
const FULL: (usize, u64) = (5_000, 300);
const RUNS: usize = 3;

/// A VitalEvent as an application would usually parse it.
#[derive(Debug, Deserialize)]
#[allow(dead_code)] // Parsed to be measured, never read.
struct PlainVital {
    hospital_id: Option<String>,
    patient_id: Option<String>,
    timestamp_unix_ms: i64,
    heart_rate_bpm: Option<f64>,
    spo2_pct: Option<f64>,
    respiration_rate: Option<f64>,
    systolic_bp_mmhg: Option<f64>,
    diastolic_bp_mmhg: Option<f64>,
    source_device: Option<String>,
    sequence_number: Option<u32>,
}

/// Decodes every payload with the server's decoder: (rows, refused, batches).
fn ours(payloads: &[Vec<u8>]) -> (u64, u64, u64) {
    let mut decoder = VitalsDecoder::new(BATCH_ROWS);
    let (mut rows, mut refused, mut batches) = (0u64, 0u64, 0u64);
    for p in payloads {
        if decoder.push_json(p).is_err() {
            refused += 1;
        }
        if decoder.len() >= BATCH_ROWS {
            rows += decoder.finish().num_rows() as u64;
            batches += 1;
        }
    }
    if !decoder.is_empty() {
        rows += decoder.finish().num_rows() as u64;
        batches += 1;
    }
    (rows, refused, batches)
}

/// Parses every payload into [`PlainVital`]s: (parsed, failed).
fn baseline(payloads: &[Vec<u8>]) -> (u64, u64) {
    let mut out: Vec<PlainVital> = Vec::with_capacity(BATCH_ROWS);
    let (mut parsed, mut failed) = (0u64, 0u64);
    for p in payloads {
        match serde_json::from_slice::<PlainVital>(p) {
            Ok(v) => out.push(v),
            Err(_) => failed += 1,
        }
        if out.len() >= BATCH_ROWS {
            parsed += out.len() as u64;
            // Keep the work observable so it cannot be optimised away.
            std::hint::black_box(&out);
            out.clear();
        }
    }
    parsed += out.len() as u64;
    std::hint::black_box(&out);
    (parsed, failed)
}

fn fastest<T>(mut f: impl FnMut() -> T) -> (f64, T) {
    let mut best: Option<(f64, T)> = None;
    for _ in 0..RUNS {
        let started = Instant::now();
        let out = f();
        let secs = started.elapsed().as_secs_f64();
        if best.as_ref().is_none_or(|(b, _)| secs < *b) {
            best = Some((secs, out));
        }
    }
    best.expect("RUNS > 0")
}

pub fn run(size: &BenchSize) -> Result<BenchResult> {
    let ward = size.resolve(SMALL, FULL);
    progress(
        NAME,
        format!(
            "simulating {} patients × {} s of JSON payloads (not timed)",
            ward.patients, ward.seconds
        ),
    );
    let mut payloads: Vec<Vec<u8>> = Vec::new();
    ward.simulate(|events, _| payloads.extend(events.iter().map(|e| e.payload.clone())));
    let bytes: u64 = payloads.iter().map(|p| p.len() as u64).sum();
    let n = payloads.len() as u64;

    let (secs, (rows, refused, batches)) = fastest(|| ours(&payloads));
    progress(
        NAME,
        format!("VitalsDecoder: {secs:.3} s (fastest of {RUNS})"),
    );
    let (base_secs, (parsed, failed)) = fastest(|| baseline(&payloads));
    progress(
        NAME,
        format!("serde_json structs: {base_secs:.3} s (fastest of {RUNS})"),
    );
    if rows + refused != n {
        bail!("the decoder lost events: {rows} rows + {refused} refused != {n} payloads");
    }
    if parsed + failed != n {
        bail!("the baseline lost events: {parsed} + {failed} != {n} payloads");
    }

    Ok(BenchResult::new(
        NAME,
        ward,
        n,
        secs,
        1,
        "serde_json into structs",
        n,
        base_secs,
    )
    .detail("format", "json")
    .detail("bytes", bytes)
    .detail("mb_per_sec", bytes as f64 / 1e6 / secs.max(1e-9))
    .detail("rows", rows)
    .detail("rejected", refused)
    .detail("batches", batches)
    .detail("baseline_failed", failed))
}
