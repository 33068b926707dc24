//! Snapshots of a pane operator: every open and sealed pane's
//! intermediate state as an Arrow blob, with the patient keys written as
//! ids (indices are per process), so a restored engine continues exactly
//! where the snapshot was taken.

use super::pane::SealedPane;
use super::PaneOperator;
use crate::error::EngineError;
use crate::keys::PatientIndex;
use crate::snapshot::{split_state_batch, state_batch, Blobs};
use datafusion::common::Result;

impl PaneOperator {
    fn state_columns(&self) -> Result<Vec<usize>> {
        self.plan
            .aggregates
            .iter()
            .map(|a| Ok(a.function.state_fields()?.len()))
            .collect()
    }

    /// Writes every pane's intermediate state. Open panes are drained and
    /// rebuilt (accumulators have no read-only view of their state).
    pub fn snapshot(
        &mut self,
        blobs: &mut Blobs,
        index: &PatientIndex,
    ) -> std::result::Result<serde_json::Value, EngineError> {
        let mut panes = Vec::new();
        let starts: Vec<i64> = self.open.keys().copied().collect();
        for start in starts {
            let mut pane = self.open.remove(&start).expect("key listed above");
            let (keys, states, stats) = pane.drain()?;
            let key_columns = self.keys_out(keys.clone(), index);
            let blob = blobs.push(&state_batch(&key_columns, &states, &stats)?)?;
            let rebuilt = self.pane_from_state(&keys, &states, &stats)?;
            self.open.insert(start, rebuilt);
            panes.push(serde_json::json!({"start": start, "sealed": false, "blob": blob}));
        }
        for (start, pane) in &self.sealed {
            let key_columns = self.keys_out(pane.keys.clone(), index);
            let blob = blobs.push(&state_batch(&key_columns, &pane.states, &pane.stats)?)?;
            panes.push(serde_json::json!({"start": start, "sealed": true, "blob": blob}));
        }
        Ok(serde_json::json!({"fired_through": self.fired_through, "panes": panes}))
    }

    pub fn restore(
        &mut self,
        header: &serde_json::Value,
        blobs: &Blobs,
        index: &mut PatientIndex,
    ) -> std::result::Result<(), EngineError> {
        let bad = |what: &str| EngineError::Restore(format!("pane snapshot: {what}"));
        self.fired_through = header["fired_through"]
            .as_i64()
            .ok_or_else(|| bad("fired_through"))?;
        self.open.clear();
        self.sealed.clear();
        let state_columns = self.state_columns()?;
        for pane in header["panes"].as_array().ok_or_else(|| bad("panes"))? {
            let start = pane["start"].as_i64().ok_or_else(|| bad("start"))?;
            let blob = pane["blob"].as_u64().ok_or_else(|| bad("blob"))? as usize;
            let batch = blobs.get(blob)?;
            let (keys, states, stats) =
                split_state_batch(&batch, self.plan.key_exprs.len(), &state_columns)?;
            let keys = self.keys_in(keys, index)?;
            if pane["sealed"].as_bool().unwrap_or(false) {
                self.sealed.insert(
                    start,
                    SealedPane {
                        keys,
                        states,
                        stats,
                    },
                );
            } else {
                let rebuilt = self.pane_from_state(&keys, &states, &stats)?;
                self.open.insert(start, rebuilt);
            }
        }
        Ok(())
    }
}
