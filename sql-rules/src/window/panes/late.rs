//! Late data that still alerts: closed windows kept for a late horizon.
//!
//! An event is *late* when the first window containing it may already
//! have closed (see [`crate::engine`]): it is counted and left out of the
//! on-time result, which never changes. With a late horizon (engine
//! setting `late_alert_horizon_ms`, 0 to turn off), a window's state is
//! kept for that much event time after it closes. A late event for such a
//! window is applied to it, and if that turns the window's decision for
//! the event's group from no alert (HAVING failed, or the group had no
//! rows) into an alert, the window yields a *late* result for that group,
//! which the engine turns into an alert marked `late` that goes through
//! cooldown like any other. A group that already alerted gets nothing
//! more: the earlier alert stands, and repeating it with slightly
//! different numbers would page people without a new decision. Beyond the
//! horizon a late event is only counted.
//!
//! Which windows: those containing the event that end at or before the
//! lateness threshold it was judged against (the partition's latest event
//! time minus the allowed lateness, or the rule's watermark if higher) and
//! within the horizon of it. For HOP, windows containing the event that
//! end after that threshold do not get it either, as before: the on-time
//! result does not depend on how late data arrived.
//!
//! Only windows that end after the first event the operator aggregated:
//! for an earlier one (the rule was added, or the engine started without a
//! snapshot, mid-stream) whether it alerted is unknown.
//!
//! When: a late row is held until the next window end after its threshold
//! (the first end a later on-time window can have), and applied when the
//! watermark reaches that end, before the windows ending there fire. Rows
//! held for the same end are applied together, as one step. The threshold,
//! that end and that order depend only on the events in partition order,
//! so late alerts, and how cooldown treats them, do not depend on batching;
//! and a flood of late rows costs one step per window end, not one per row.
//! A held row waits for the stream to reach that end (later events, or the
//! quiet close): at most one slide more than an on-time row.
//!
//! What it costs: the panes of closed windows and the late rows applied
//! to them, for the horizon, counted in `state_bytes`; applying late rows
//! looks up their groups in the window's panes and evaluates those groups
//! twice (before and after), once per window end and window.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{ArrayRef, UInt32Array};
use arrow::compute::{take, take_record_batch};
use arrow::record_batch::RecordBatch;
use datafusion::common::Result;

use super::pane::{merge_into, sequence_numbers, OpenPane, SealedPane};
use super::PaneOperator;
use crate::compile::RowOp;
use crate::eval::{apply_ops, evaluate_all};
use crate::keys::PatientIndex;
use crate::window::{ClosedWindow, GroupStats};

/// A pane operator's late-alert state.
#[derive(Default)]
pub(super) struct LateState {
    /// Event time a closed window is kept after its end; 0: off.
    horizon_ms: i64,
    /// The rule's HAVING (and projection), to tell whether a group alerts.
    output_ops: Vec<RowOp>,
    /// Late rows not applied yet, by the window end they wait for, then by
    /// the start of the window they go to.
    pub(super) held: BTreeMap<i64, BTreeMap<i64, OpenPane>>,
    /// Late rows applied so far to each kept window, by window start.
    pub(super) applied: BTreeMap<i64, SealedPane>,
    /// Event time of the first row this operator aggregated. A window
    /// ending at or before it closed before the operator saw the stream
    /// (a rule added, or an engine started without a snapshot, mid-stream):
    /// whether it alerted is unknown, so late rows never alert for it.
    pub(super) since: Option<i64>,
}

impl LateState {
    pub(super) fn horizon_ms(&self) -> i64 {
        self.horizon_ms
    }

    /// Whether closed windows are kept at all.
    pub(super) fn keeps_windows(&self) -> bool {
        self.horizon_ms > 0
    }

    /// The first window end that held rows wait for, if `watermark` has
    /// reached it.
    pub(super) fn next_held_due(&self, watermark: i64) -> Option<i64> {
        self.held
            .first_key_value()
            .map(|(&at, _)| at)
            .filter(|&at| at <= watermark)
    }

    /// Forgets late rows applied to windows past the horizon.
    pub(super) fn forget_closed_before(&mut self, size_ms: i64, fired_through: i64) {
        let keep_until = size_ms.saturating_add(self.horizon_ms);
        while let Some((&start, _)) = self.applied.first_key_value() {
            if start.saturating_add(keep_until) > fired_through {
                break;
            }
            self.applied.remove(&start);
        }
    }

    /// Notes the event time of the first row aggregated (see `since`).
    #[inline]
    pub(super) fn saw(&mut self, ts: i64) {
        if self.since.is_none() {
            self.since = Some(ts);
        }
    }

    pub(super) fn state_bytes(&self) -> usize {
        let held: usize = self
            .held
            .values()
            .flat_map(|g| g.values())
            .map(OpenPane::size)
            .sum();
        held + self.applied.values().map(SealedPane::size).sum::<usize>()
    }
}

/// Keys, per-aggregate states and stats of some groups of a pane.
type PartState = (Vec<ArrayRef>, Vec<Vec<ArrayRef>>, Vec<GroupStats>);

/// The rows of each of `parts` whose key is one of `late`'s. `probe` is an
/// empty pane whose group table finds them: `late`'s keys are interned
/// first, so a key with a lower id than the table's size then is one.
fn touched_part<'a>(
    mut probe: OpenPane,
    late: &SealedPane,
    parts: impl Iterator<Item = &'a SealedPane>,
) -> Result<Vec<PartState>> {
    let mut ids = Vec::new();
    probe.groups.intern(&late.keys, &mut ids)?;
    let touched_below = probe.groups.len();
    let mut out = Vec::new();
    for part in parts {
        probe.groups.intern(&part.keys, &mut ids)?;
        let rows: Vec<u32> = ids
            .iter()
            .enumerate()
            .filter(|(_, &g)| g < touched_below)
            .map(|(i, _)| i as u32)
            .collect();
        if rows.is_empty() {
            continue;
        }
        let rows = UInt32Array::from(rows);
        let pick = |arrays: &[ArrayRef]| -> Result<Vec<ArrayRef>> {
            Ok(arrays
                .iter()
                .map(|a| take(a.as_ref(), &rows, None))
                .collect::<std::result::Result<_, _>>()?)
        };
        let states = part
            .states
            .iter()
            .map(|s| pick(s))
            .collect::<Result<Vec<_>>>()?;
        let stats = rows
            .values()
            .iter()
            .map(|&r| part.stats[r as usize])
            .collect();
        out.push((pick(&part.keys)?, states, stats));
    }
    Ok(out)
}

impl PaneOperator {
    /// See [`crate::window::WindowOperator::with_late_alerts`].
    pub fn keep_closed_windows(&mut self, horizon_ms: i64, output_ops: &[RowOp]) {
        self.late.horizon_ms = horizon_ms.max(0);
        self.late.output_ops = output_ops.to_vec();
    }

    /// See [`crate::window::WindowOperator::hold_late`].
    pub fn hold_late(
        &mut self,
        batch: &RecordBatch,
        ts: &[i64],
        late: &[(u32, i64)],
        patients: &[u32],
    ) -> Result<()> {
        let horizon = self.late.horizon_ms;
        if horizon <= 0 || late.is_empty() {
            return Ok(());
        }
        // (window end to wait for, window start) → the late rows that go
        // there: windows closed by the row's threshold, and still kept when
        // the watermark reaches the end it waits for.
        let mut targets: BTreeMap<(i64, i64), Vec<u32>> = BTreeMap::new();
        for &(row, threshold) in late {
            let at = self.first_window_end(threshold);
            let pane = ts[row as usize].div_euclid(self.pane_ms) * self.pane_ms;
            for start in self.window_starts_containing(pane) {
                let end = start.saturating_add(self.size_ms);
                if end <= threshold && end.saturating_add(horizon) >= at {
                    targets.entry((at, start)).or_default().push(row);
                }
            }
        }
        for ((at, start), rows) in targets {
            let idx = UInt32Array::from(rows);
            // Late rows are few: copying them out is cheaper than a mask
            // over the batch, and expressions then see only rows WHERE kept.
            let late_rows = take_record_batch(batch, &idx)?;
            let keys: Vec<ArrayRef> = if self.by_patient {
                let ids = idx.values().iter().map(|&r| patients[r as usize]);
                vec![Arc::new(UInt32Array::from_iter_values(ids))]
            } else {
                evaluate_all(&self.plan.key_exprs, &late_rows)?
            };
            let (args, filters) = self.aggregate_inputs(&late_rows)?;
            let late_ts: Vec<i64> = idx.values().iter().map(|&r| ts[r as usize]).collect();
            let seqs = sequence_numbers(&late_rows);
            let held = self
                .late
                .held
                .get(&at)
                .is_some_and(|g| g.contains_key(&start));
            if !held {
                let fresh = self.new_pane()?;
                self.late.held.entry(at).or_default().insert(start, fresh);
            }
            let pane = self
                .late
                .held
                .get_mut(&at)
                .and_then(|g| g.get_mut(&start))
                .expect("held above");
            pane.update(&keys, &args, &filters, &late_ts, &seqs, &mut self.group_ids)?;
        }
        Ok(())
    }

    /// Applies the late rows waiting for window end `at` to their windows
    /// (which have fired: they end at or before the rows' thresholds, below
    /// `at`), and yields, per window, the
    /// groups whose decision they turned into an alert.
    pub(super) fn apply_held_late(
        &mut self,
        at: i64,
        out: &mut Vec<ClosedWindow>,
        index: &PatientIndex,
    ) -> Result<()> {
        let Some(group) = self.late.held.remove(&at) else {
            return Ok(());
        };
        for (start, mut rows) in group {
            let end = start.saturating_add(self.size_ms);
            // Checked here, not when held: the first aggregated row of a
            // batch is inserted after that batch's late rows are held.
            if self.late.since.is_none_or(|since| end <= since) {
                continue;
            }
            let late = SealedPane::from_pane(&mut rows)?;
            // The window as it stands for the groups these rows touch: its
            // panes and the late rows applied before, other groups left
            // out (a late row costs work for its own group, not the ward's).
            // Built twice, before and after these rows, in the same order,
            // so a group has the same id in both.
            let mut window = self.new_pane()?;
            let parts = self
                .sealed
                .range(start..end)
                .map(|(_, pane)| pane)
                .chain(self.late.applied.get(&start));
            for (keys, states, stats) in touched_part(self.new_pane()?, &late, parts)? {
                merge_into(&mut window, &keys, &states, &stats)?;
            }
            let groups_before = window.groups.len();
            let skip = window.groups.skip();
            let state = SealedPane::from_pane(&mut window)?;
            let mut before = self.pane_from_state(&state.keys, &state.states, &state.stats)?;
            let mut after = self.pane_from_state(&state.keys, &state.states, &state.stats)?;
            let touched = merge_into(&mut after, &late.keys, &late.states, &late.stats)?;

            let (keys, values, _) = before.finish()?;
            let rows_before = self.output_batch(start, end, self.keys_out(keys, index), values)?;
            let alerted_before = self.alerting(&rows_before)?;
            let (keys, values, stats) = after.finish()?;
            let rows_after = self.output_batch(start, end, self.keys_out(keys, index), values)?;
            let alerts_after = self.alerting(&rows_after)?;
            let mut turned: Vec<u32> = touched
                .iter()
                .filter(|&&g| g >= skip)
                .filter(|&&g| {
                    let row = g - skip;
                    alerts_after[row] && !(g < groups_before && alerted_before[row])
                })
                .map(|&g| (g - skip) as u32)
                .collect();
            turned.sort_unstable();
            turned.dedup();

            // Remember these rows with the window, for later late rows.
            let applied = match self.late.applied.remove(&start) {
                None => late,
                Some(prev) => {
                    let mut pane = self.pane_from_state(&prev.keys, &prev.states, &prev.stats)?;
                    merge_into(&mut pane, &late.keys, &late.states, &late.stats)?;
                    SealedPane::from_pane(&mut pane)?
                }
            };
            self.late.applied.insert(start, applied);

            if turned.is_empty() {
                continue;
            }
            let stats = turned.iter().map(|&r| stats[r as usize]).collect();
            let rows = take_record_batch(&rows_after, &UInt32Array::from(turned))?;
            out.push(ClosedWindow {
                start_ms: start,
                end_ms: end,
                rows,
                stats,
                late: true,
                session_key: None,
            });
        }
        Ok(())
    }

    /// Which rows of a window's aggregate output pass the rule's HAVING.
    fn alerting(&self, rows: &RecordBatch) -> Result<Vec<bool>> {
        let mut passed = vec![false; rows.num_rows()];
        let evaluated = apply_ops(&self.late.output_ops, rows)?;
        for &row in evaluated.base_rows.values() {
            passed[row as usize] = true;
        }
        Ok(passed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_rows_wait_until_the_watermark_reaches_their_window_end() {
        let mut late = LateState::default();
        late.held.insert(20_000, BTreeMap::new());
        late.held.insert(30_000, BTreeMap::new());
        assert_eq!(late.next_held_due(19_999), None);
        assert_eq!(late.next_held_due(20_000), Some(20_000));
        late.held.remove(&20_000);
        assert_eq!(late.next_held_due(45_000), Some(30_000));
    }

    #[test]
    fn applied_rows_are_forgotten_past_the_horizon() {
        let mut late = LateState {
            horizon_ms: 60_000,
            ..LateState::default()
        };
        let empty = || SealedPane {
            keys: vec![],
            states: vec![],
            stats: vec![],
        };
        late.applied.insert(0, empty());
        late.applied.insert(10_000, empty());
        // Window [0, 10 s) is kept while the watermark is below 70 s.
        late.forget_closed_before(10_000, 69_999);
        assert_eq!(late.applied.len(), 2);
        late.forget_closed_before(10_000, 70_000);
        assert_eq!(late.applied.keys().copied().collect::<Vec<_>>(), [10_000]);
        assert!(!LateState::default().keeps_windows());
    }
}
