//! Patient ids interned to dense integers, once per batch for every rule.
//!
//! Most rules group by `patient_id`, and the deduplicator keys on it too.
//! Hashing each row's id string once per batch and handing every rule the
//! row's integer turns each rule's group lookup into an array index (see
//! [`crate::window::panes`]) instead of a hash of the string per rule.
//!
//! Ids are never forgotten while the engine runs: a ward's patients number
//! in the thousands, and even a million distinct ids cost tens of MiB.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, StringArray};

#[derive(Default)]
pub struct PatientIndex {
    ids: foldhash::HashMap<Arc<str>, u32>,
    names: Vec<Arc<str>>,
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
        self.ids.insert(name, i);
        i
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

    /// Bytes held by the interned ids and their index.
    pub fn state_bytes(&self) -> usize {
        let names: usize = self.names.iter().map(|n| n.len() + 16).sum();
        names + self.names.capacity() * 16 + self.ids.capacity() * 24
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
}
