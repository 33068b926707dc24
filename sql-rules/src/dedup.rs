//! Duplicate events: the same reading delivered twice (a device retry, a
//! producer resend, a gateway replaying its buffer) must not be aggregated
//! twice or alert twice.
//!
//! An event is a duplicate when the same patient and source device already
//! sent one with the same `sequence_number`, or with the same timestamp,
//! among its most recent [`REMEMBERED`] events in the same partition.
//! Decided per event in partition order, so the result does not depend on
//! batching. Memory is bounded: a few entries per (patient, device).

use std::collections::{HashMap, VecDeque};

use arrow::array::{Array, AsArray};
use arrow::datatypes::{TimestampMillisecondType, UInt32Type};
use arrow::record_batch::RecordBatch;

use crate::stream::idx;

/// Recent events remembered per (patient, device).
pub const REMEMBERED: usize = 32;

/// A device's latest events, and the largest timestamp and sequence number
/// it ever sent: an event past both cannot repeat a remembered one, which
/// spares the scan for nearly every event.
struct Recent {
    max_ts: i64,
    max_seq: Option<u32>,
    events: VecDeque<(i64, Option<u32>)>,
}

/// Per (patient index, device index).
type RecentByDevice = foldhash::HashMap<u64, Recent>;

/// Device index of a missing `source_device`.
const NO_DEVICE: u32 = u32::MAX;

#[derive(Default)]
pub struct Deduplicator {
    /// Per partition.
    recent: HashMap<i32, RecentByDevice>,
    /// Source devices interned (a handful of kinds in practice).
    devices: foldhash::HashMap<Box<str>, u32>,
}

impl Deduplicator {
    /// Marks duplicates in `batch` (true = duplicate); `patients` holds each
    /// row's patient index (see [`crate::keys`]). Returns `None` when there
    /// are none, the common case.
    pub fn mark(
        &mut self,
        partition: i32,
        batch: &RecordBatch,
        patients: &[u32],
    ) -> Option<Vec<bool>> {
        let devices = batch.column(idx::SOURCE_DEVICE).as_string_opt::<i32>()?;
        let ts = batch
            .column(idx::EVENT_TIME)
            .as_primitive_opt::<TimestampMillisecondType>()?;
        let seqs = batch
            .column(idx::SEQUENCE_NUMBER)
            .as_primitive_opt::<UInt32Type>()?;
        let recent = self.recent.entry(partition).or_default();
        let mut marks: Option<Vec<bool>> = None;
        for (i, &patient) in patients.iter().enumerate().take(batch.num_rows()) {
            let device = if devices.is_valid(i) {
                let name = devices.value(i);
                match self.devices.get(name) {
                    Some(&d) => d,
                    None => {
                        let d = self.devices.len() as u32;
                        self.devices.insert(name.into(), d);
                        d
                    }
                }
            } else {
                NO_DEVICE
            };
            let t = ts.value(i);
            let seq = seqs.is_valid(i).then(|| seqs.value(i));
            let recent = recent
                .entry(u64::from(patient) << 32 | u64::from(device))
                .or_insert_with(|| Recent {
                    max_ts: i64::MIN,
                    max_seq: None,
                    events: VecDeque::with_capacity(4),
                });
            let past_all =
                t > recent.max_ts && seq.is_none_or(|s| recent.max_seq.is_none_or(|m| s > m));
            let duplicate = !past_all
                && recent
                    .events
                    .iter()
                    .any(|&(et, es)| et == t || (seq.is_some() && es == seq));
            if duplicate {
                marks.get_or_insert_with(|| vec![false; batch.num_rows()])[i] = true;
                continue;
            }
            if recent.events.len() == REMEMBERED {
                recent.events.pop_front();
            }
            recent.events.push_back((t, seq));
            recent.max_ts = recent.max_ts.max(t);
            recent.max_seq = recent.max_seq.max(seq);
        }
        marks
    }

    /// Forgets a partition this instance no longer owns.
    pub fn forget(&mut self, partition: i32) {
        self.recent.remove(&partition);
    }
}
