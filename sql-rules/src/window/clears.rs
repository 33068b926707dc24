//! Signal loss clears: a SESSION rule without HAVING alerts once per closed
//! session ("nothing since …"). When a key whose closed session *fired* an
//! alert sends readings again, the engine raises one clear for that alert
//! (see `crate::engine` for what the clear alert holds).
//!
//! The session operator keeps, per key, the fired alert waiting for its
//! readings to return ([`Pending`]) and notes the first returning reading
//! as rows arrive. A clear is due once the rule's watermark reaches that
//! reading: from then on no on-time reading can come before it, so its
//! event time does not depend on arrival order or batching. A return whose
//! session closes in the same step is cleared by that session itself
//! (`take`), before the session's own alert.
//!
//! Suppressed alerts wait for nothing (nobody was paged), and a key silent
//! for more than [`KEPT_MS`] (a day) of event time is no longer waited
//! for.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Int64Array, StringArray};
use arrow::datatypes::{DataType, Field, Int64Type, Schema};
use arrow::record_batch::RecordBatch;
use serde_json::{Map, Value};

use crate::error::EngineError;

/// A group key in arrow's row format (comparable bytes).
pub type KeyBytes = Box<[u8]>;

/// How long a fired signal-loss alert waits for its key's readings (event
/// time past the silent session's end): a monitor silent for a day (a
/// patient discharged, the alert long handled) that sends again gets no
/// clear, and memory stays bounded by the keys that went silent within a
/// day. Fixed, not the engine's patient-forgetting span, so that clears do
/// not depend on that setting.
pub const KEPT_MS: i64 = 24 * 3_600_000;

/// A fired alert of a closed session, waiting for its key to send again.
#[derive(Debug, Clone, PartialEq)]
pub struct Pending {
    pub alert_id: String,
    /// The alert's key and values, which its clear repeats.
    pub key: Map<String, Value>,
    pub values: Map<String, Value>,
    pub hospital_id: Option<String>,
    /// The silent session's end (its last reading + the gap): later
    /// readings are a return.
    pub silent_from_ms: i64,
    /// The earliest returning reading seen so far.
    pub returned_ms: Option<i64>,
}

#[derive(Debug, Default)]
pub struct Clears {
    pending: HashMap<KeyBytes, Pending>,
    /// Keys of `pending` with a returning reading: the only ones a step
    /// looks at.
    returned: HashSet<KeyBytes>,
    /// Watermark of the next pass that drops alerts waited for too long.
    next_prune_ms: i64,
}

impl Clears {
    pub fn new() -> Self {
        Self {
            next_prune_ms: i64::MIN,
            ..Self::default()
        }
    }

    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// A reading at `ts` became the first of a session of `key` (a new
    /// session, or one extended backwards): a return if `key` waits.
    #[inline]
    pub fn saw_start(&mut self, key: &[u8], ts: i64) {
        if self.pending.is_empty() {
            return;
        }
        if let Some(p) = self.pending.get_mut(key) {
            if ts >= p.silent_from_ms && p.returned_ms.is_none_or(|r| ts < r) {
                p.returned_ms = Some(ts);
                self.returned.insert(key.into());
            }
        }
    }

    /// Waits for `key`'s readings to return; `first_open` is the start of
    /// its earliest open session, if readings came back before this alert
    /// was made (they did not close the silent session: it was already
    /// past its end).
    pub fn hold(&mut self, key: KeyBytes, mut pending: Pending, first_open: Option<i64>) {
        if let Some(start) = first_open.filter(|s| *s >= pending.silent_from_ms) {
            pending.returned_ms = Some(pending.returned_ms.map_or(start, |r| r.min(start)));
        }
        if pending.returned_ms.is_some() {
            self.returned.insert(key.clone());
        } else {
            self.returned.remove(&key);
        }
        self.pending.insert(key, pending);
    }

    /// The alert `key` waits on, if any, no longer waited on (its return is
    /// a session closing now).
    pub fn take(&mut self, key: &[u8]) -> Option<Pending> {
        self.returned.remove(key);
        self.pending.remove(key)
    }

    /// Alerts whose first returning reading the watermark has reached, in
    /// the order of that reading (then alert id).
    pub fn due(&mut self, watermark: i64) -> Vec<Pending> {
        let mut due = vec![];
        if !self.returned.is_empty() {
            let keys: Vec<KeyBytes> = self
                .returned
                .iter()
                .filter(|k| {
                    self.pending
                        .get(&***k)
                        .and_then(|p| p.returned_ms)
                        .is_some_and(|r| r <= watermark)
                })
                .cloned()
                .collect();
            for k in keys {
                self.returned.remove(&k);
                due.extend(self.pending.remove(&k));
            }
            due.sort_by(|a, b| (a.returned_ms, &a.alert_id).cmp(&(b.returned_ms, &b.alert_id)));
        }
        if watermark >= self.next_prune_ms {
            self.next_prune_ms = watermark.saturating_add(60_000);
            let returned = &self.returned;
            self.pending.retain(|k, p| {
                returned.contains(k) || p.silent_from_ms.saturating_add(KEPT_MS) > watermark
            });
        }
        due
    }

    /// Approximate bytes held.
    pub fn state_bytes(&self) -> usize {
        self.pending
            .iter()
            .map(|(k, p)| {
                let text = |m: &Map<String, Value>| {
                    m.iter()
                        .map(|(k, v)| k.len() + v.to_string().len() + 32)
                        .sum::<usize>()
                };
                k.len() + p.alert_id.len() + text(&p.key) + text(&p.values) + 128
            })
            .sum::<usize>()
            + self.returned.len() * 32
    }

    /// The waiting alerts for a snapshot: their keys in row format (the
    /// caller turns them into the rule's key columns) and the rest as one
    /// batch, row for row.
    pub fn snapshot(&self) -> Result<(Vec<&[u8]>, RecordBatch), EngineError> {
        let mut entries: Vec<(&KeyBytes, &Pending)> = self.pending.iter().collect();
        entries.sort_by(|a, b| a.0.cmp(b.0));
        let json = |m: &Map<String, Value>| Value::Object(m.clone()).to_string();
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values(
                entries.iter().map(|(_, p)| p.alert_id.as_str()),
            )),
            Arc::new(StringArray::from_iter_values(
                entries.iter().map(|(_, p)| json(&p.key)),
            )),
            Arc::new(StringArray::from_iter_values(
                entries.iter().map(|(_, p)| json(&p.values)),
            )),
            Arc::new(StringArray::from_iter(
                entries.iter().map(|(_, p)| p.hospital_id.as_deref()),
            )),
            Arc::new(Int64Array::from_iter_values(
                entries.iter().map(|(_, p)| p.silent_from_ms),
            )),
            Arc::new(Int64Array::from_iter(
                entries.iter().map(|(_, p)| p.returned_ms),
            )),
        ];
        let schema = Schema::new(vec![
            Field::new("alert_id", DataType::Utf8, false),
            Field::new("key", DataType::Utf8, false),
            Field::new("values", DataType::Utf8, false),
            Field::new("hospital_id", DataType::Utf8, true),
            Field::new("silent_from_ms", DataType::Int64, false),
            Field::new("returned_ms", DataType::Int64, true),
        ]);
        let keys = entries.iter().map(|(k, _)| &***k).collect();
        Ok((keys, RecordBatch::try_new(Arc::new(schema), columns)?))
    }

    /// Restores what [`Self::snapshot`] wrote, with `keys` the rows' keys
    /// in row format.
    pub fn restore(&mut self, keys: Vec<KeyBytes>, batch: &RecordBatch) -> Result<(), EngineError> {
        let bad = |what: &str| EngineError::Restore(format!("signal-loss clears: {what}"));
        let text = |i: usize| {
            batch
                .columns()
                .get(i)
                .and_then(|c| c.as_string_opt::<i32>())
                .ok_or_else(|| bad(&format!("column {i} is not text")))
        };
        let number = |i: usize| {
            batch
                .columns()
                .get(i)
                .and_then(|c| c.as_primitive_opt::<Int64Type>())
                .ok_or_else(|| bad(&format!("column {i} is not an Int64")))
        };
        let (ids, key, values, hospital) = (text(0)?, text(1)?, text(2)?, text(3)?);
        let (silent, returned) = (number(4)?, number(5)?);
        if keys.len() != batch.num_rows() {
            return Err(bad("keys and rows differ in number"));
        }
        let map = |s: &str| match serde_json::from_str(s) {
            Ok(Value::Object(m)) => Ok(m),
            _ => Err(bad("a key or values is not a JSON object")),
        };
        for (row, k) in keys.into_iter().enumerate() {
            let p = Pending {
                alert_id: ids.value(row).to_string(),
                key: map(key.value(row))?,
                values: map(values.value(row))?,
                hospital_id: hospital
                    .is_valid(row)
                    .then(|| hospital.value(row).to_string()),
                silent_from_ms: silent.value(row),
                returned_ms: returned.is_valid(row).then(|| returned.value(row)),
            };
            self.hold(k, p, None);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(id: &str, silent_from_ms: i64) -> Pending {
        Pending {
            alert_id: id.into(),
            key: Map::new(),
            values: Map::new(),
            hospital_id: None,
            silent_from_ms,
            returned_ms: None,
        }
    }

    #[test]
    fn a_clear_is_due_once_the_watermark_reaches_the_first_returning_reading() {
        let mut c = Clears::new();
        let k: KeyBytes = b"A".as_slice().into();
        c.hold(k.clone(), pending("a1", 50_000), None);
        // A reading before the silence ended is no return; later ones are,
        // the earliest counting whatever the arrival order.
        c.saw_start(&k, 40_000);
        c.saw_start(&k, 65_000);
        c.saw_start(&k, 60_000);
        c.saw_start(&k, 62_000);
        assert!(c.due(59_999).is_empty());
        let due = c.due(60_000);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].returned_ms, Some(60_000));
        assert!(c.due(i64::MAX).is_empty(), "exactly once");
        // Readings that came back before the alert was made.
        c.hold(k.clone(), pending("a2", 100_000), Some(120_000));
        assert_eq!(c.take(&k).map(|p| p.returned_ms), Some(Some(120_000)));
        assert_eq!(c.len(), 0);
    }

    #[test]
    fn alerts_are_waited_for_a_day_at_most() {
        let mut c = Clears::new();
        c.hold(b"A".as_slice().into(), pending("a", 0), None);
        c.hold(b"B".as_slice().into(), pending("b", 1_000), None);
        c.due(KEPT_MS);
        assert_eq!(c.len(), 1);
        c.due(KEPT_MS + 60_000);
        assert_eq!(c.len(), 0);
    }
}
