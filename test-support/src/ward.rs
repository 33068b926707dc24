//! The built-in ward simulator's traffic as tests and benchmarks use it:
//! a [`Ward`] of patients reporting at 1 Hz (with a few per cent of
//! malformed, late and duplicate events, fixed seed), partitioned by patient
//! as a Kafka producer would ([`partition_of`]), and decoded once into Arrow
//! batches cut per partition as the Kafka source cuts them ([`DecodedWard`]).
//!
//! Deterministic: the same `Ward` always gives the same events and batches.

use arrow::record_batch::RecordBatch;
use wardwatch::demo::simulator::{SimEvent, WardConfig, WardSimulator};
use wardwatch::source::decode::VitalsDecoder;

/// Kafka partitions of `vitals` in every benchmark (and the batches' tags).
pub const PARTITIONS: i32 = 4;

/// Rows per micro-batch, as the Kafka source cuts them by default
/// (`pipeline.max_batch_rows`).
pub const BATCH_ROWS: usize = 8192;

/// A resolved ward size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ward {
    pub patients: usize,
    pub seconds: u64,
}

impl Ward {
    /// The simulator configuration every scenario uses: a few per cent of
    /// malformed, late and duplicate events (1 % each), fixed seed.
    pub fn config(&self) -> WardConfig {
        WardConfig {
            patients: self.patients,
            // About a hundred beds per hospital, at most 20 hospitals.
            hospitals: (self.patients / 100).clamp(1, 20),
            malformed_per_mille: 10,
            late_per_mille: 10,
            duplicate_per_mille: 10,
            ..WardConfig::default()
        }
    }

    /// Runs the simulator for the whole size, one tick at a time.
    pub fn simulate(&self, mut each_second: impl FnMut(&[SimEvent], i64)) {
        let mut sim = WardSimulator::new(self.config());
        let mut events = Vec::with_capacity(self.patients * 11 / 10);
        for _ in 0..self.seconds {
            events.clear();
            sim.tick(&mut events);
            each_second(&events, sim.now_ms());
        }
    }
}

/// The partition a patient's events go to: a stable hash of the key, as a
/// Kafka producer partitions by key (the exact function does not matter,
/// only that a patient stays on one partition).
pub fn partition_of(key: &str) -> i32 {
    // FNV-1a: tiny, stable across runs and platforms.
    let mut h: u32 = 0x811c_9dc5;
    for b in key.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    (h % PARTITIONS as u32) as i32
}

/// Simulated traffic decoded once into Arrow, cut per partition like the
/// Kafka source cuts it.
pub struct DecodedWard {
    /// (partition, batch, simulated clock when the batch was cut), in the
    /// order the source would hand them to the engine.
    pub batches: Vec<(i32, RecordBatch, i64)>,
    /// Simulator events, including the malformed ones.
    pub produced: u64,
    /// Rows in `batches` (valid events and their duplicates).
    pub rows: u64,
    /// Events the decoder refused.
    pub rejected: u64,
    /// Simulated time just past the last event.
    pub end_ms: i64,
}

impl DecodedWard {
    /// Simulates `ward` and decodes it, per partition, into batches of up
    /// to [`BATCH_ROWS`] rows.
    pub fn generate(ward: Ward) -> Self {
        let mut decoders: Vec<VitalsDecoder> = (0..PARTITIONS)
            .map(|_| VitalsDecoder::new(BATCH_ROWS))
            .collect();
        let mut out = DecodedWard {
            batches: Vec::new(),
            produced: 0,
            rows: 0,
            rejected: 0,
            end_ms: 0,
        };
        ward.simulate(|events, now_ms| {
            out.end_ms = now_ms;
            for e in events {
                out.produced += 1;
                let p = partition_of(&e.key);
                let decoder = &mut decoders[p as usize];
                if decoder.push_json(&e.payload).is_err() {
                    out.rejected += 1;
                }
                if decoder.len() >= BATCH_ROWS {
                    out.rows += decoder.len() as u64;
                    out.batches.push((p, decoder.finish(), now_ms));
                }
            }
        });
        for (p, decoder) in decoders.iter_mut().enumerate() {
            if !decoder.is_empty() {
                out.rows += decoder.len() as u64;
                out.batches.push((p as i32, decoder.finish(), out.end_ms));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_patient_stays_on_one_partition_and_all_partitions_are_used() {
        assert_eq!(partition_of("P000001"), partition_of("P000001"));
        let used: std::collections::BTreeSet<i32> = (1..200)
            .map(|i| partition_of(&format!("P{i:06}")))
            .collect();
        assert_eq!(used.len(), PARTITIONS as usize);
    }
}
