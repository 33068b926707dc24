//! Patient ids interned to dense integers, once per batch for every rule.
//!
//! Most rules group by `patient_id`, and the deduplicator keys on it too.
//! Hashing each row's id string once per batch and handing every rule the
//! row's integer turns each rule's group lookup into an array index (see
//! [`crate::window::panes`]) instead of a hash of the string per rule.
//!
//! Ids are never forgotten while the engine runs: a ward's patients number
//! in the thousands, and even a million distinct ids cost tens of MiB.
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

#[derive(Default)]
pub struct PatientIndex {
    ids: foldhash::HashMap<Arc<str>, u32>,
    names: Vec<Arc<str>>,
    /// Parallel to `names`: where each patient is.
    whereabouts: Vec<Whereabouts>,
    hospitals: HospitalNames,
}

impl PatientIndex {
    /// The index of `name`, adding it if new.
    #[inline]
    pub fn intern(&mut self, name: &str) -> u32 {
        if let Some(&i) = self.ids.get(name) {
            return i;
        }
        let i = u32::try_from(self.names.len()).expect("fewer than 4 billion patients");
        let name: Arc<str> = name.into();
        self.names.push(Arc::clone(&name));
        self.whereabouts.push(Whereabouts::UNKNOWN);
        self.ids.insert(name, i);
        i
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
