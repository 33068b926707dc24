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

use arrow::array::{Array, AsArray, BooleanArray};
use arrow::datatypes::{TimestampMillisecondType, UInt32Type};
use arrow::record_batch::RecordBatch;

use crate::stream::idx;

/// Recent events remembered per (patient, device).
pub const REMEMBERED: usize = 32;

/// Per "patient\0device", its latest (timestamp, sequence number) pairs.
type RecentByDevice = HashMap<Box<str>, VecDeque<(i64, Option<u32>)>>;

#[derive(Default)]
pub struct Deduplicator {
    /// Per partition.
    recent: HashMap<i32, RecentByDevice>,
    scratch: String,
}

impl Deduplicator {
    /// Marks duplicates in `batch` (true = duplicate). Returns `None` when
    /// there are none, the common case, so callers skip any copying.
    pub fn mark(&mut self, partition: i32, batch: &RecordBatch) -> Option<BooleanArray> {
        let patients = batch.column(idx::PATIENT_ID).as_string_opt::<i32>()?;
        let devices = batch.column(idx::SOURCE_DEVICE).as_string_opt::<i32>()?;
        let ts = batch
            .column(idx::EVENT_TIME)
            .as_primitive_opt::<TimestampMillisecondType>()?;
        let seqs = batch
            .column(idx::SEQUENCE_NUMBER)
            .as_primitive_opt::<UInt32Type>()?;
        let recent = self.recent.entry(partition).or_default();
        let mut marks: Option<Vec<bool>> = None;
        for i in 0..batch.num_rows() {
            self.scratch.clear();
            self.scratch.push_str(patients.value(i));
            self.scratch.push('\0');
            if devices.is_valid(i) {
                self.scratch.push_str(devices.value(i));
            }
            let t = ts.value(i);
            let seq = seqs.is_valid(i).then(|| seqs.value(i));
            let entries = match recent.get_mut(self.scratch.as_str()) {
                Some(e) => e,
                None => recent
                    .entry(self.scratch.as_str().into())
                    .or_insert_with(|| VecDeque::with_capacity(4)),
            };
            let duplicate = entries
                .iter()
                .any(|&(et, es)| et == t || (seq.is_some() && es == seq));
            if duplicate {
                marks.get_or_insert_with(|| vec![false; batch.num_rows()])[i] = true;
                continue;
            }
            if entries.len() == REMEMBERED {
                entries.pop_front();
            }
            entries.push_back((t, seq));
        }
        marks.map(BooleanArray::from)
    }

    /// Forgets a partition this instance no longer owns.
    pub fn forget(&mut self, partition: i32) {
        self.recent.remove(&partition);
    }
}
