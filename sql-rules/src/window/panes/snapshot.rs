//! Snapshots of a pane operator: every open and sealed pane's
//! intermediate state as an Arrow blob, with the patient keys written as
//! ids (indices are per process), so a restored engine continues exactly
//! where the snapshot was taken. Closed windows kept for late alerts are
//! sealed panes like any other; the late rows held or applied to them
//! (see [`super::late`]) are written beside them.

use arrow::array::ArrayRef;

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
        // Late rows held for closed windows, and those applied to them.
        let mut held = Vec::new();
        let thresholds: Vec<i64> = self.late.held.keys().copied().collect();
        for at in thresholds {
            let starts: Vec<i64> = self.late.held[&at].keys().copied().collect();
            for start in starts {
                let pane = self
                    .late
                    .held
                    .get_mut(&at)
                    .and_then(|g| g.get_mut(&start))
                    .expect("key listed above");
                let (keys, states, stats) = pane.drain()?;
                let key_columns = self.keys_out(keys.clone(), index);
                let blob = blobs.push(&state_batch(&key_columns, &states, &stats)?)?;
                let rebuilt = self.pane_from_state(&keys, &states, &stats)?;
                self.late
                    .held
                    .get_mut(&at)
                    .expect("listed")
                    .insert(start, rebuilt);
                held.push(serde_json::json!({"threshold": at, "start": start, "blob": blob}));
            }
        }
        let mut applied = Vec::new();
        for (start, pane) in &self.late.applied {
            let key_columns = self.keys_out(pane.keys.clone(), index);
            let blob = blobs.push(&state_batch(&key_columns, &pane.states, &pane.stats)?)?;
            applied.push(serde_json::json!({"start": start, "blob": blob}));
        }
        Ok(serde_json::json!({
            "fired_through": self.fired_through,
            "panes": panes,
            "late_held": held,
            "late_applied": applied,
            "late_since": self.late.since,
        }))
    }

    /// The first half of a restore: everything but rebuilding the open
    /// panes' aggregates, which [`restore_panes`](Self::restore_panes)
    /// does without the patient index (so rules can do it in parallel).
    pub fn restore(
        &mut self,
        header: &serde_json::Value,
        blobs: &Blobs,
        index: &mut PatientIndex,
    ) -> std::result::Result<PanesToRebuild, EngineError> {
        let mut rebuild = PanesToRebuild::default();
        let bad = |what: &str| EngineError::Restore(format!("pane snapshot: {what}"));
        self.fired_through = header["fired_through"]
            .as_i64()
            .ok_or_else(|| bad("fired_through"))?;
        self.open.clear();
        self.sealed.clear();
        self.late.held.clear();
        self.late.applied.clear();
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
                rebuild.open.push((start, (keys, states, stats)));
            }
        }
        // Snapshots from before late alerts kept no closed window: only
        // windows closing after the restore can alert late.
        self.late.since = match header.get("late_since") {
            Some(since) => since.as_i64(),
            None => Some(self.fired_through),
        };
        let empty = Vec::new();
        for held in header["late_held"].as_array().unwrap_or(&empty) {
            let at = held["threshold"].as_i64().ok_or_else(|| bad("threshold"))?;
            let start = held["start"].as_i64().ok_or_else(|| bad("start"))?;
            let blob = held["blob"].as_u64().ok_or_else(|| bad("blob"))? as usize;
            let (keys, states, stats) =
                split_state_batch(&blobs.get(blob)?, self.plan.key_exprs.len(), &state_columns)?;
            let keys = self.keys_in(keys, index)?;
            rebuild.held.push((at, start, (keys, states, stats)));
        }
        for applied in header["late_applied"].as_array().unwrap_or(&empty) {
            let start = applied["start"].as_i64().ok_or_else(|| bad("start"))?;
            let blob = applied["blob"].as_u64().ok_or_else(|| bad("blob"))? as usize;
            let (keys, states, stats) =
                split_state_batch(&blobs.get(blob)?, self.plan.key_exprs.len(), &state_columns)?;
            let keys = self.keys_in(keys, index)?;
            self.late.applied.insert(
                start,
                SealedPane {
                    keys,
                    states,
                    stats,
                },
            );
        }
        Ok(rebuild)
    }

    /// The second half of a restore: the open panes' aggregates rebuilt
    /// from their states.
    pub fn restore_panes(
        &mut self,
        rebuild: PanesToRebuild,
    ) -> std::result::Result<(), EngineError> {
        for (start, (keys, states, stats)) in rebuild.open {
            let pane = self.pane_from_state(&keys, &states, &stats)?;
            self.open.insert(start, pane);
        }
        for (at, start, (keys, states, stats)) in rebuild.held {
            let pane = self.pane_from_state(&keys, &states, &stats)?;
            self.late.held.entry(at).or_default().insert(start, pane);
        }
        Ok(())
    }
}

/// Open panes read from a snapshot, their keys already indexed, waiting to
/// be rebuilt ([`PaneOperator::restore_panes`]).
#[derive(Default)]
pub struct PanesToRebuild {
    open: Vec<(i64, PaneState)>,
    held: Vec<(i64, i64, PaneState)>,
}

/// A pane's keys, aggregate states and group stats, as a snapshot holds them.
type PaneState = (
    Vec<ArrayRef>,
    Vec<Vec<ArrayRef>>,
    Vec<crate::window::GroupStats>,
);
