//! Duplicate events: the same reading delivered twice (a device retry, a
//! producer resend, a gateway replaying its buffer) must not be aggregated
//! twice or alert twice.
//!
//! An event is a duplicate when the same patient and source device of the
//! same hospital already sent one with the same `sequence_number`, or with
//! the same timestamp, among its most recent [`REMEMBERED`] events in the
//! same partition. The hospital is part of the identity: two hospitals may
//! reuse a patient id, and one hospital's sender must not be able to make
//! another's readings count as duplicates.
//! Decided per event in partition order, so the result does not depend on
//! batching. Memory is bounded: a few entries per (patient, device).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Int32Array, Int64Array, StringArray, UInt32Array};
use arrow::datatypes::{Field, Int32Type, Int64Type, Schema, TimestampMillisecondType, UInt32Type};
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;

use crate::keys::PatientIndex;
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

/// Per (patient index, hospital-and-device index).
type RecentByDevice = foldhash::HashMap<u64, Recent>;

#[derive(Default)]
pub struct Deduplicator {
    /// Per partition.
    recent: HashMap<i32, RecentByDevice>,
    /// (hospital, source device) pairs interned: hospital first, then the
    /// device kind (a handful in practice); a missing one is "".
    devices: foldhash::HashMap<Box<str>, foldhash::HashMap<Box<str>, u32>>,
    /// Pairs interned so far.
    pairs: u32,
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
        let hospitals = batch.column(idx::HOSPITAL_ID).as_string_opt::<i32>()?;
        let ts = batch
            .column(idx::EVENT_TIME)
            .as_primitive_opt::<TimestampMillisecondType>()?;
        let seqs = batch
            .column(idx::SEQUENCE_NUMBER)
            .as_primitive_opt::<UInt32Type>()?;
        let recent = self.recent.entry(partition).or_default();
        let mut marks: Option<Vec<bool>> = None;
        let mut last: Option<(&str, &str, u32)> = None;
        for (i, &patient) in patients.iter().enumerate().take(batch.num_rows()) {
            let hospital = if hospitals.is_valid(i) {
                hospitals.value(i)
            } else {
                ""
            };
            let name = if devices.is_valid(i) {
                devices.value(i)
            } else {
                ""
            };
            // Rows of a batch mostly repeat the previous row's pair: compare
            // before hashing. Looked up by &str (no allocation per row); a new
            // pair is rare.
            let device = match last {
                Some((h, n, d)) if h == hospital && n == name => d,
                _ => {
                    let d = match self.devices.get(hospital).and_then(|d| d.get(name)) {
                        Some(&d) => d,
                        None => {
                            let d = self.pairs;
                            self.pairs += 1;
                            self.devices
                                .entry(hospital.into())
                                .or_default()
                                .insert(name.into(), d);
                            d
                        }
                    };
                    last = Some((hospital, name, d));
                    d
                }
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

    /// Bytes held by the remembered events.
    pub fn state_bytes(&self) -> usize {
        let per_device = std::mem::size_of::<(u64, Recent)>() + 8;
        self.recent
            .values()
            .flat_map(|devices| devices.values())
            .map(|r| per_device + r.events.capacity() * std::mem::size_of::<(i64, Option<u32>)>())
            .sum()
    }

    /// Forgets the devices of the patients `dead` marks (by patient index:
    /// see [`PatientIndex::forget`]); their indices are about to be reused.
    pub fn forget_patients(&mut self, dead: &[bool]) {
        for devices in self.recent.values_mut() {
            devices.retain(|key, _| !dead.get((key >> 32) as usize).copied().unwrap_or(false));
            if devices.capacity() > 4 * devices.len().max(1024) {
                devices.shrink_to_fit();
            }
        }
    }

    /// Forgets a partition this instance no longer owns.
    pub fn forget(&mut self, partition: i32) {
        self.recent.remove(&partition);
    }

    /// The remembered events as one batch, for a snapshot: a row per event
    /// (oldest first per device), with its partition, patient, hospital,
    /// device and the device's largest timestamp and sequence number.
    pub fn snapshot_batch(&self, patients: &PatientIndex) -> Result<RecordBatch, ArrowError> {
        let mut pairs: HashMap<u32, (&str, &str)> = HashMap::new();
        for (hospital, devices) in &self.devices {
            for (device, &d) in devices {
                pairs.insert(d, (hospital, device));
            }
        }
        let (mut part, mut patient, mut hospital, mut device) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut max_ts, mut max_seq, mut ts, mut seq) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut partitions: Vec<_> = self.recent.iter().collect();
        partitions.sort_by_key(|(p, _)| **p);
        for (&p, devices) in partitions {
            let mut keys: Vec<_> = devices.iter().collect();
            keys.sort_by_key(|(k, _)| **k);
            for (&key, recent) in keys {
                let (h, d) = pairs
                    .get(&((key & 0xffff_ffff) as u32))
                    .copied()
                    .unwrap_or(("", ""));
                let name = patients.name((key >> 32) as u32);
                for &(t, s) in &recent.events {
                    part.push(p);
                    patient.push(name);
                    hospital.push(h);
                    device.push(d);
                    max_ts.push(recent.max_ts);
                    max_seq.push(recent.max_seq);
                    ts.push(t);
                    seq.push(s);
                }
            }
        }
        let columns: Vec<ArrayRef> = vec![
            Arc::new(Int32Array::from(part)),
            Arc::new(StringArray::from(patient)),
            Arc::new(StringArray::from(hospital)),
            Arc::new(StringArray::from(device)),
            Arc::new(Int64Array::from(max_ts)),
            Arc::new(UInt32Array::from(max_seq)),
            Arc::new(Int64Array::from(ts)),
            Arc::new(UInt32Array::from(seq)),
        ];
        let fields: Vec<Field> = [
            "partition",
            "patient",
            "hospital",
            "device",
            "max_ts",
            "max_seq",
            "ts",
            "seq",
        ]
        .iter()
        .zip(&columns)
        .map(|(name, c)| Field::new(*name, c.data_type().clone(), true))
        .collect();
        RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
    }

    /// Restores a [`snapshot_batch`](Self::snapshot_batch), interning its
    /// patients into `patients`.
    pub fn restore_batch(
        &mut self,
        batch: &RecordBatch,
        patients: &mut PatientIndex,
    ) -> Result<(), String> {
        let bad = || "duplicate-memory state has the wrong columns".to_string();
        if batch.num_columns() != 8 {
            return Err(bad());
        }
        let part = batch
            .column(0)
            .as_primitive_opt::<Int32Type>()
            .ok_or_else(bad)?;
        let patient = batch.column(1).as_string_opt::<i32>().ok_or_else(bad)?;
        let hospital = batch.column(2).as_string_opt::<i32>().ok_or_else(bad)?;
        let device = batch.column(3).as_string_opt::<i32>().ok_or_else(bad)?;
        let max_ts = batch
            .column(4)
            .as_primitive_opt::<Int64Type>()
            .ok_or_else(bad)?;
        let max_seq = batch
            .column(5)
            .as_primitive_opt::<UInt32Type>()
            .ok_or_else(bad)?;
        let ts = batch
            .column(6)
            .as_primitive_opt::<Int64Type>()
            .ok_or_else(bad)?;
        let seq = batch
            .column(7)
            .as_primitive_opt::<UInt32Type>()
            .ok_or_else(bad)?;
        // A snapshot lists each device's events together: look its device
        // and patient up once per run of rows, not once per row (at 100 k
        // patients that is most of a restore's time otherwise).
        let same_device = |a: usize, b: usize| {
            part.value(a) == part.value(b)
                && patient.value(a) == patient.value(b)
                && hospital.value(a) == hospital.value(b)
                && device.value(a) == device.value(b)
        };
        let mut i = 0;
        while i < batch.num_rows() {
            let mut end = i + 1;
            while end < batch.num_rows() && same_device(i, end) {
                end += 1;
            }
            let (h, n) = (hospital.value(i), device.value(i));
            let d = match self.devices.get(h).and_then(|d| d.get(n)) {
                Some(&d) => d,
                None => {
                    let d = self.pairs;
                    self.pairs += 1;
                    self.devices
                        .entry(h.into())
                        .or_default()
                        .insert(n.into(), d);
                    d
                }
            };
            let p = patients.intern(patient.value(i));
            let recent = self
                .recent
                .entry(part.value(i))
                .or_default()
                .entry(u64::from(p) << 32 | u64::from(d))
                .or_insert_with(|| Recent {
                    max_ts: max_ts.value(i),
                    max_seq: max_seq.is_valid(i).then(|| max_seq.value(i)),
                    events: VecDeque::with_capacity(4),
                });
            for row in i..end {
                if recent.events.len() == REMEMBERED {
                    recent.events.pop_front();
                }
                recent
                    .events
                    .push_back((ts.value(row), seq.is_valid(row).then(|| seq.value(row))));
            }
            i = end;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::{Float64Array, TimestampMillisecondArray};

    use super::*;
    use crate::stream::vitals_schema;

    /// (patient, device, timestamp, sequence number) → a vitals batch.
    fn batch(events: &[(&str, Option<&str>, i64, Option<u32>)]) -> RecordBatch {
        let n = events.len();
        let nulls: ArrayRef = Arc::new(Float64Array::from(vec![None::<f64>; n]));
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(vec![Some("H1"); n])),
            Arc::new(StringArray::from_iter_values(events.iter().map(|e| e.0))),
            Arc::new(Int64Array::from_iter_values(events.iter().map(|e| e.2))),
            Arc::clone(&nulls),
            Arc::clone(&nulls),
            Arc::clone(&nulls),
            Arc::clone(&nulls),
            Arc::clone(&nulls),
            Arc::new(StringArray::from_iter(events.iter().map(|e| e.1))),
            Arc::new(UInt32Array::from_iter(events.iter().map(|e| e.3))),
            Arc::new(
                TimestampMillisecondArray::from_iter_values(events.iter().map(|e| e.2))
                    .with_timezone("UTC"),
            ),
        ];
        RecordBatch::try_new(vitals_schema(), columns).unwrap()
    }

    fn marks(
        dedup: &mut Deduplicator,
        index: &mut PatientIndex,
        events: &[(&str, Option<&str>, i64, Option<u32>)],
    ) -> Vec<bool> {
        let batch = batch(events);
        let mut patients = Vec::new();
        index.index_column(batch.column(idx::PATIENT_ID).as_string(), &mut patients);
        dedup
            .mark(0, &batch, &patients)
            .unwrap_or_else(|| vec![false; events.len()])
    }

    #[test]
    fn the_same_patient_id_at_two_hospitals_is_two_patients() {
        let (mut d, mut ix) = (Deduplicator::default(), PatientIndex::default());
        let b = Some("BEDSIDE");
        let events = [("P1", b, 1_000, Some(1)), ("P1", b, 1_000, Some(1))];
        let one = batch(&events);
        // The first row at H1, the second at H2: same patient id, device,
        // time and number, and yet not a resend of the first.
        let mut columns = one.columns().to_vec();
        columns[idx::HOSPITAL_ID] = Arc::new(StringArray::from(vec!["H1", "H2"]));
        let two = RecordBatch::try_new(vitals_schema(), columns).unwrap();
        let mut patients = Vec::new();
        ix.index_column(two.column(idx::PATIENT_ID).as_string(), &mut patients);
        assert_eq!(d.mark(0, &two, &patients), None);
        // At one hospital it is a resend.
        assert_eq!(marks(&mut d, &mut ix, &events[..1]), [true]);
    }

    #[test]
    fn repeats_are_caught_in_order_and_out_of_order() {
        let (mut d, mut ix) = (Deduplicator::default(), PatientIndex::default());
        let b = Some("BEDSIDE");
        // In order: nothing repeats (the fast path).
        let first: Vec<_> = (0..40)
            .map(|i| ("P1", b, 1_000 * i, Some(i as u32)))
            .collect();
        assert!(marks(&mut d, &mut ix, &first).iter().all(|m| !m));
        assert_eq!(
            marks(
                &mut d,
                &mut ix,
                &[
                    // A resend of a recent event: same time and number.
                    ("P1", b, 39_000, Some(39)),
                    // Same number, other time (a clock fix): still the event.
                    ("P1", b, 39_500, Some(38)),
                    // Older time, new number: a late reading, not a repeat.
                    ("P1", b, 20_500, Some(40)),
                    // Same reading from another device or patient: distinct.
                    ("P1", Some("PORTABLE"), 39_000, Some(39)),
                    ("P2", b, 39_000, Some(39)),
                    // No sequence number: decided by time alone.
                    ("P3", None, 5_000, None),
                    ("P3", None, 5_000, None),
                    ("P3", None, 6_000, None),
                ]
            ),
            [true, true, false, false, false, false, true, false]
        );
        // Older than the 32 remembered: no longer recognised.
        assert_eq!(
            marks(&mut d, &mut ix, &[("P1", b, 1_000, Some(1))]),
            [false]
        );
    }

    #[test]
    fn restored_memory_recognises_what_the_original_would() {
        let (mut d, mut ix) = (Deduplicator::default(), PatientIndex::default());
        let b = Some("BEDSIDE");
        let seen: Vec<_> = (0..40)
            .map(|i| ("P1", b, 1_000 * i, Some(i as u32)))
            .chain([("P2", Some("PORTABLE"), 7_000, None)])
            .collect();
        marks(&mut d, &mut ix, &seen);
        let snapshot = d.snapshot_batch(&ix).unwrap();
        // Another process: its own interning order.
        let (mut r, mut rx) = (Deduplicator::default(), PatientIndex::default());
        rx.intern("P9");
        r.restore_batch(&snapshot, &mut rx).unwrap();
        let probe = [
            ("P1", b, 39_000, Some(39)),
            ("P1", b, 20_500, Some(40)),
            ("P2", Some("PORTABLE"), 7_000, None),
            ("P1", b, 1_000, Some(1)),
            ("P1", b, 50_000, Some(50)),
        ];
        assert_eq!(
            marks(&mut r, &mut rx, &probe),
            marks(&mut d, &mut ix, &probe)
        );
        assert_eq!(marks(&mut r, &mut rx, &probe[..1]), [true]);
    }
}
