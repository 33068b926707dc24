//! Patient ids interned to dense integers, once per batch for every rule.
//!
//! Most rules group by `patient_id`, and the deduplicator keys on it too.
//! Hashing each row's id string once per batch and handing every rule the
//! row's integer turns each rule's group lookup into an array index (see
//! [`crate::window::panes`]) instead of a hash of the string per rule.
//!
//! Ids are forgotten once nothing needs them (see [`PatientIndex::forget`]
//! and the engine's `forget_patients_after_ms`): a forgotten index goes on
//! a free list and the next new patient takes it, so indices stay dense
//! (pane group tables are arrays over them) and a patient who comes back
//! is interned again like a new one. Each patient carries the engine's
//! event clock at their latest event (`seen_ms`), which is what the engine
//! judges "not seen for the span" by.
//!
//! Beside each patient the index keeps where the patient is
//! ([`Whereabouts`]), so an alert of a rule grouped by patient can say which
//! hospital it belongs to (see [`PatientIndex::note_hospitals`]).

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Int64Array, StringArray};
use arrow::datatypes::{DataType, Field, Int64Type, Schema};
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;

/// A hospital index meaning "no hospital known".
const NO_HOSPITAL: u32 = u32::MAX;

/// Where one patient is: the hospital of their latest event and since when
/// (event time), and the hospital before that. 16 bytes per patient.
///
/// Keeping the previous hospital is what makes the answer independent of
/// how the stream was cut into batches: a window closes only after events
/// past its end (plus lateness) arrived, and if the patient moved in
/// between, those events already name the new hospital. Asking "where was
/// the patient at the window's last event" picks the old one either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Whereabouts {
    current: u32,
    /// Event time of the first event seen at `current`; `i64::MIN` for the
    /// first hospital a patient is seen at (there is no before).
    since_ms: i64,
    previous: u32,
}

impl Whereabouts {
    const UNKNOWN: Whereabouts = Whereabouts {
        current: NO_HOSPITAL,
        since_ms: i64::MIN,
        previous: NO_HOSPITAL,
    };
}

/// Hospital names interned to small integers: a deployment has a handful.
#[derive(Default)]
struct HospitalNames {
    ids: foldhash::HashMap<Arc<str>, u32>,
    names: Vec<Arc<str>>,
}

impl HospitalNames {
    fn intern(&mut self, name: &str) -> u32 {
        if let Some(&i) = self.ids.get(name) {
            return i;
        }
        // Fewer than u32::MAX hospitals: the last value is NO_HOSPITAL.
        let i = u32::try_from(self.names.len())
            .ok()
            .filter(|i| *i != NO_HOSPITAL)
            .expect("fewer than 4 billion hospitals");
        let name: Arc<str> = name.into();
        self.names.push(Arc::clone(&name));
        self.ids.insert(name, i);
        i
    }

    fn name(&self, i: u32) -> Option<&str> {
        self.names.get(i as usize).map(|n| &**n)
    }
}

/// `seen_ms` of a free slot: never a candidate for forgetting, and not a
/// patient (stamps are capped below it).
const FREE_SLOT: i64 = i64::MAX;

#[derive(Default)]
pub struct PatientIndex {
    ids: foldhash::HashMap<Arc<str>, u32>,
    /// A free slot holds `empty`.
    names: Vec<Arc<str>>,
    /// Parallel to `names`: where each patient is.
    whereabouts: Vec<Whereabouts>,
    /// Parallel to `names`: the engine's event clock when the patient's
    /// latest event arrived ([`Self::note_seen`]); `i64::MIN` until
    /// stamped, [`FREE_SLOT`] for a free slot.
    seen_ms: Vec<i64>,
    /// Free slots, highest first, so a new patient takes the lowest one.
    free: Vec<u32>,
    /// Patients interned since the last [`Self::start_sweep`].
    interned_since_sweep: usize,
    /// Patients forgotten since the index was made.
    forgotten: u64,
    empty: Arc<str>,
    hospitals: HospitalNames,
}

impl PatientIndex {
    /// The index of `name`, adding it if new.
    #[inline]
    pub fn intern(&mut self, name: &str) -> u32 {
        if let Some(&i) = self.ids.get(name) {
            return i;
        }
        let name: Arc<str> = name.into();
        self.interned_since_sweep += 1;
        let i = match self.free.pop() {
            Some(i) => {
                let at = i as usize;
                self.names[at] = Arc::clone(&name);
                self.whereabouts[at] = Whereabouts::UNKNOWN;
                self.seen_ms[at] = i64::MIN;
                i
            }
            None => {
                let i = u32::try_from(self.names.len()).expect("fewer than 4 billion patients");
                self.names.push(Arc::clone(&name));
                self.whereabouts.push(Whereabouts::UNKNOWN);
                self.seen_ms.push(i64::MIN);
                i
            }
        };
        self.ids.insert(name, i);
        i
    }

    /// Patients held (interned and not forgotten).
    pub fn held(&self) -> usize {
        self.names.len() - self.free.len()
    }

    /// Patients forgotten so far.
    pub fn forgotten(&self) -> u64 {
        self.forgotten
    }

    /// Patients interned since the last forgetting pass began.
    pub fn interned_since_sweep(&self) -> usize {
        self.interned_since_sweep
    }

    /// A forgetting pass begins: count new patients from here.
    pub fn start_sweep(&mut self) {
        self.interned_since_sweep = 0;
    }

    /// Stamps the patients of a batch's rows as seen at `clock_ms`, the
    /// engine's event clock (it never goes back, so this is a maximum).
    pub fn note_seen(&mut self, patients: &[u32], clock_ms: i64) {
        let clock_ms = clock_ms.min(FREE_SLOT - 1);
        for &p in patients {
            let seen = &mut self.seen_ms[p as usize];
            if *seen < clock_ms {
                *seen = clock_ms;
            }
        }
    }

    /// Stamps patients interned without an event (restored from a
    /// snapshot that did not say when they were seen) as seen at
    /// `clock_ms`, so they are kept a full span from there.
    pub fn stamp_unseen(&mut self, clock_ms: i64) {
        for seen in &mut self.seen_ms {
            if *seen == i64::MIN {
                *seen = clock_ms.min(FREE_SLOT - 1);
            }
        }
    }

    /// The patients last seen at or before `cutoff_ms`, as a mask over
    /// indices; `None` if there are none (the common case: a cheap pass).
    pub fn seen_at_or_before(&self, cutoff_ms: i64) -> Option<Vec<bool>> {
        let first = self.seen_ms.iter().position(|&s| s <= cutoff_ms)?;
        let mut mask = vec![false; self.seen_ms.len()];
        for (i, &s) in self.seen_ms.iter().enumerate().skip(first) {
            mask[i] = s <= cutoff_ms;
        }
        Some(mask)
    }

    /// Forgets the patients `dead` marks: their id, where they are and
    /// when they were seen go, and their indices are reused. The caller
    /// has made sure nothing holds these indices any more. Returns how
    /// many were forgotten.
    pub fn forget(&mut self, dead: &[bool]) -> usize {
        let mut n = 0;
        for (i, _) in dead.iter().enumerate().filter(|(_, d)| **d) {
            if self.seen_ms.get(i).is_none_or(|&s| s == FREE_SLOT) {
                continue;
            }
            let name = std::mem::replace(&mut self.names[i], Arc::clone(&self.empty));
            self.ids.remove(&*name);
            self.whereabouts[i] = Whereabouts::UNKNOWN;
            self.seen_ms[i] = FREE_SLOT;
            self.free.push(i as u32);
            n += 1;
        }
        if n == 0 {
            return 0;
        }
        self.forgotten += n as u64;
        // Free slots at the end are dropped rather than kept for reuse.
        let mut len = self.names.len();
        while len > 0 && self.seen_ms[len - 1] == FREE_SLOT {
            len -= 1;
        }
        self.names.truncate(len);
        self.whereabouts.truncate(len);
        self.seen_ms.truncate(len);
        self.free.retain(|&i| (i as usize) < len);
        self.free.sort_unstable_by(|a, b| b.cmp(a));
        // Give memory back after a crowd has gone (a map or vector far
        // larger than what it holds).
        if self.ids.capacity() > 4 * self.ids.len().max(1024) {
            self.ids.shrink_to_fit();
        }
        if self.names.capacity() > 2 * len.max(1024) {
            self.names.shrink_to_fit();
            self.whereabouts.shrink_to_fit();
            self.seen_ms.shrink_to_fit();
        }
        if self.free.capacity() > 2 * self.free.len().max(1024) {
            self.free.shrink_to_fit();
        }
        n
    }

    /// Records the hospital of each row of a batch: `patients` are the
    /// rows' indices (from [`Self::index_column`]), `hospitals` the
    /// `hospital_id` column, `ts` the event times, in arrival order.
    ///
    /// The common row (the patient's hospital unchanged) costs a load and a
    /// comparison of a short string; only a move interns a name. A row
    /// without a hospital changes nothing (a device that leaves the field
    /// out does not hide the patient from their hospital), nor does one
    /// older than the patient's current stay (a late event from before a
    /// move).
    pub fn note_hospitals(&mut self, patients: &[u32], hospitals: &StringArray, ts: &[i64]) {
        let nulls = hospitals.nulls().filter(|n| n.null_count() > 0);
        for (row, (&patient, &t)) in patients.iter().zip(ts).enumerate() {
            if nulls.is_some_and(|n| n.is_null(row)) {
                continue;
            }
            let name = hospitals.value(row);
            let w = &mut self.whereabouts[patient as usize];
            if self.hospitals.name(w.current) == Some(name) {
                // Out of order within the stay: it began no later than this.
                if t < w.since_ms {
                    w.since_ms = t;
                }
                continue;
            }
            if t < w.since_ms {
                continue;
            }
            let h = self.hospitals.intern(name);
            *w = if w.current == NO_HOSPITAL {
                Whereabouts {
                    current: h,
                    since_ms: i64::MIN,
                    previous: NO_HOSPITAL,
                }
            } else {
                Whereabouts {
                    current: h,
                    since_ms: t,
                    previous: w.current,
                }
            };
        }
    }

    /// The hospital patient `name` was at as of event time `at_ms` (for a
    /// window alert, the last event behind it), as far as the events seen
    /// so far tell; `None` for a patient never seen with a hospital.
    pub fn hospital_of(&self, name: &str, at_ms: i64) -> Option<&str> {
        let &patient = self.ids.get(name)?;
        let w = self.whereabouts[patient as usize];
        let h = if at_ms >= w.since_ms {
            w.current
        } else {
            w.previous
        };
        self.hospitals.name(h)
    }

    /// Replaces `out` with the index of each row of a `patient_id` column
    /// (a null id, which the decoder never produces, maps to "").
    pub fn index_column(&mut self, column: &StringArray, out: &mut Vec<u32>) {
        out.clear();
        out.reserve(column.len());
        if column.null_count() == 0 {
            for name in column.iter().flatten() {
                let i = self.intern(name);
                out.push(i);
            }
        } else {
            for name in column.iter() {
                let i = self.intern(name.unwrap_or(""));
                out.push(i);
            }
        }
    }

    /// Bytes held by the interned ids and their index, and where each
    /// patient is.
    pub fn state_bytes(&self) -> usize {
        let names: usize = self.names.iter().map(|n| n.len() + 16).sum();
        let hospitals: usize = self.hospitals.names.iter().map(|n| n.len() + 16).sum();
        names
            + self.names.capacity() * 16
            + self.ids.capacity() * 24
            + self.whereabouts.capacity() * std::mem::size_of::<Whereabouts>()
            + self.seen_ms.capacity() * 8
            + self.free.capacity() * 4
            + hospitals
            + self.hospitals.names.capacity() * 16
            + self.hospitals.ids.capacity() * 24
    }

    /// Where each patient with a known hospital is, as one batch for a
    /// snapshot (patients by id: indices are per process).
    pub fn whereabouts_batch(&self) -> Result<RecordBatch, ArrowError> {
        let known = || {
            self.names
                .iter()
                .zip(&self.whereabouts)
                .filter(|(_, w)| w.current != NO_HOSPITAL)
        };
        let hospital = |h: u32| self.hospitals.name(h);
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values(known().map(|(n, _)| &**n))),
            Arc::new(StringArray::from_iter(
                known().map(|(_, w)| hospital(w.current)),
            )),
            Arc::new(Int64Array::from_iter_values(
                known().map(|(_, w)| w.since_ms),
            )),
            Arc::new(StringArray::from_iter(
                known().map(|(_, w)| hospital(w.previous)),
            )),
        ];
        let schema = Schema::new(vec![
            Field::new("patient_id", DataType::Utf8, false),
            Field::new("hospital_id", DataType::Utf8, false),
            Field::new("since_ms", DataType::Int64, false),
            Field::new("previous_hospital_id", DataType::Utf8, true),
        ]);
        RecordBatch::try_new(Arc::new(schema), columns)
    }

    /// Restores what [`Self::whereabouts_batch`] wrote.
    pub fn restore_whereabouts(&mut self, batch: &RecordBatch) -> Result<(), String> {
        let text = |i: usize| {
            batch
                .columns()
                .get(i)
                .and_then(|c| c.as_string_opt::<i32>())
                .ok_or_else(|| format!("whereabouts column {i} is not a string"))
        };
        let (patients, current, previous) = (text(0)?, text(1)?, text(3)?);
        let since = batch
            .columns()
            .get(2)
            .and_then(|c| c.as_primitive_opt::<Int64Type>())
            .ok_or("whereabouts column 2 is not an Int64")?;
        for row in 0..batch.num_rows() {
            if patients.is_null(row) || current.is_null(row) {
                return Err(format!("whereabouts row {row} has no patient or hospital"));
            }
            let patient = self.intern(patients.value(row));
            let w = Whereabouts {
                current: self.hospitals.intern(current.value(row)),
                since_ms: since.value(row),
                previous: if previous.is_null(row) {
                    NO_HOSPITAL
                } else {
                    self.hospitals.intern(previous.value(row))
                },
            };
            self.whereabouts[patient as usize] = w;
        }
        Ok(())
    }

    /// When each patient held was last seen, as one batch for a snapshot
    /// (patients by id, in index order).
    pub fn seen_batch(&self) -> Result<RecordBatch, ArrowError> {
        let live = || {
            self.names
                .iter()
                .zip(&self.seen_ms)
                .filter(|(_, s)| **s != FREE_SLOT)
        };
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values(live().map(|(n, _)| &**n))),
            Arc::new(Int64Array::from_iter_values(live().map(|(_, s)| *s))),
        ];
        let schema = Schema::new(vec![
            Field::new("patient_id", DataType::Utf8, false),
            Field::new("seen_ms", DataType::Int64, false),
        ]);
        RecordBatch::try_new(Arc::new(schema), columns)
    }

    /// Restores what [`Self::seen_batch`] wrote, interning its patients.
    pub fn restore_seen(&mut self, batch: &RecordBatch) -> Result<(), String> {
        let patients = batch
            .columns()
            .first()
            .and_then(|c| c.as_string_opt::<i32>())
            .ok_or("seen column 0 is not a string")?;
        let seen = batch
            .columns()
            .get(1)
            .and_then(|c| c.as_primitive_opt::<Int64Type>())
            .ok_or("seen column 1 is not an Int64")?;
        for row in 0..batch.num_rows() {
            let p = self.intern(patients.value(row)) as usize;
            self.seen_ms[p] = self.seen_ms[p].max(seen.value(row).min(FREE_SLOT - 1));
        }
        Ok(())
    }

    pub fn name(&self, index: u32) -> &str {
        &self.names[index as usize]
    }

    /// The ids of `indices` as a `patient_id` column.
    pub fn names_array(&self, indices: &[u32]) -> ArrayRef {
        Arc::new(StringArray::from_iter_values(
            indices.iter().map(|&i| self.name(i)),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interning_is_stable_and_dense() {
        let mut index = PatientIndex::default();
        let column = StringArray::from(vec!["P2", "P1", "P2", "P3", "P1"]);
        let mut rows = Vec::new();
        index.index_column(&column, &mut rows);
        assert_eq!(rows, [0, 1, 0, 2, 1]);
        assert_eq!(index.names.len(), 3);
        assert_eq!(index.intern("P1"), 1);
        let names = index.names_array(&[2, 0]);
        let names = names.as_any().downcast_ref::<StringArray>().unwrap();
        assert_eq!(names.iter().flatten().collect::<Vec<_>>(), ["P3", "P2"]);
    }

    #[test]
    fn forgotten_indices_are_reused_lowest_first_and_the_tail_is_dropped() {
        let mut index = PatientIndex::default();
        for (i, p) in ["A", "B", "C", "D"].iter().enumerate() {
            assert_eq!(index.intern(p), i as u32);
        }
        index.note_seen(&[0, 1], 1_000);
        index.note_seen(&[2, 3], 5_000);
        assert_eq!(index.seen_at_or_before(999), None);
        let mut dead = index.seen_at_or_before(1_000).unwrap();
        assert_eq!(dead, [true, true, false, false]);
        // D is kept whatever its stamp says: the caller found it held.
        dead[3] = false;
        assert_eq!(index.forget(&dead), 2);
        assert_eq!((index.held(), index.forgotten()), (2, 2));
        assert_eq!(index.hospital_of("A", 0), None);
        // A new patient takes the lowest free index; A comes back as new.
        assert_eq!(index.intern("E"), 0);
        assert_eq!(index.intern("A"), 1);
        assert_eq!(index.intern("C"), 2);
        assert_eq!(index.name(1), "A");
        // Forgetting the highest drops the slot instead of keeping it.
        index.note_seen(&[0, 1, 2], 9_000);
        let dead = index.seen_at_or_before(5_000).unwrap();
        assert_eq!(dead, [false, false, false, true]);
        index.forget(&dead);
        assert_eq!(index.names.len(), 3);
        assert_eq!(index.intern("F"), 3);
        // Only live patients go into a snapshot.
        assert_eq!(index.seen_batch().unwrap().num_rows(), 4);
    }

    fn note(index: &mut PatientIndex, rows: &[(&str, Option<&str>, i64)]) {
        let patients = StringArray::from_iter_values(rows.iter().map(|r| r.0));
        let hospitals = StringArray::from(rows.iter().map(|r| r.1).collect::<Vec<_>>());
        let ts: Vec<i64> = rows.iter().map(|r| r.2).collect();
        let mut indices = Vec::new();
        index.index_column(&patients, &mut indices);
        index.note_hospitals(&indices, &hospitals, &ts);
    }

    #[test]
    fn a_patient_is_where_their_latest_event_was_as_of_a_time() {
        let mut index = PatientIndex::default();
        note(
            &mut index,
            &[
                ("A", Some("H1"), 5_000),
                ("B", None, 5_000),
                ("A", Some("H1"), 1_000),
            ],
        );
        // The first hospital holds for any time before too.
        assert_eq!(index.hospital_of("A", 0), Some("H1"));
        assert_eq!(index.hospital_of("B", 0), None);
        assert_eq!(index.hospital_of("C", 0), None);
        // A moves at 10 s; a late reading from H1 and one without a
        // hospital move nobody.
        note(
            &mut index,
            &[
                ("A", Some("H2"), 10_000),
                ("A", Some("H1"), 9_000),
                ("A", None, 11_000),
                ("B", Some("H3"), 12_000),
            ],
        );
        assert_eq!(index.hospital_of("A", 9_999), Some("H1"));
        assert_eq!(index.hospital_of("A", 10_000), Some("H2"));
        assert_eq!(index.hospital_of("B", 0), Some("H3"));
        // An H2 reading from before the first one seen there: the stay
        // began no later than that.
        note(&mut index, &[("A", Some("H2"), 9_500)]);
        assert_eq!(index.hospital_of("A", 9_500), Some("H2"));
        assert_eq!(index.hospital_of("A", 9_499), Some("H1"));
        assert_eq!(index.hospitals.names.len(), 3, "names interned once");

        // Through a snapshot batch into a fresh index, where patient
        // indices differ.
        let batch = index.whereabouts_batch().unwrap();
        assert_eq!(batch.num_rows(), 2);
        let mut restored = PatientIndex::default();
        restored.intern("Z");
        restored.restore_whereabouts(&batch).unwrap();
        for t in [0, 9_499, 9_500, 20_000] {
            for p in ["A", "B", "Z"] {
                assert_eq!(
                    restored.hospital_of(p, t),
                    index.hospital_of(p, t),
                    "{p} at {t}"
                );
            }
        }
    }
}
