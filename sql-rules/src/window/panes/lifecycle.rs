//! A pane's life after its rows arrive: windows fire when the watermark
//! passes their end (a tumbling window is its one pane, finished in
//! place; a hopping window merges sealed panes), panes no future window
//! contains are dropped, and EMIT EARLY reads open windows without closing
//! them.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use arrow::array::{ArrayRef, TimestampMillisecondArray};
use arrow::record_batch::RecordBatch;
use datafusion::common::Result;

use super::pane::{merge_into, OpenPane, PaneState, SealedPane};
use super::PaneOperator;
use crate::keys::PatientIndex;
use crate::window::{ClosedWindow, GroupStats};

impl PaneOperator {
    /// Starts of the windows (at multiples of the slide) that contain the
    /// pane starting at `p`: every s with s <= p < p + pane <= s + size.
    pub(super) fn window_starts_containing(&self, p: i64) -> impl Iterator<Item = i64> {
        let lowest = p + self.pane_ms - self.size_ms;
        let mut first = lowest.div_euclid(self.slide_ms) * self.slide_ms;
        if first < lowest {
            first += self.slide_ms;
        }
        (first..=p).step_by(self.slide_ms as usize)
    }

    /// Merges the open (peeked) and sealed panes of `[start, end)` and
    /// evaluates the window; `None` if no pane holds a group.
    fn evaluate_window(
        &self,
        start: i64,
        end: i64,
        peeked: &BTreeMap<i64, PaneState>,
        index: &PatientIndex,
    ) -> Result<Option<ClosedWindow>> {
        let mut merged = self.new_pane()?;
        for (_, state) in peeked.range(start..end) {
            merge_into(&mut merged, &state.0, &state.1, &state.2)?;
        }
        for (_, pane) in self.sealed.range(start..end) {
            merge_into(&mut merged, &pane.keys, &pane.states, &pane.stats)?;
        }
        if !merged.groups.has_groups() {
            return Ok(None);
        }
        let (keys, values, stats) = merged.finish()?;
        let rows = self.output_batch(start, end, self.keys_out(keys, index), values)?;
        Ok(Some(ClosedWindow {
            start_ms: start,
            end_ms: end,
            rows,
            stats,
            late: false,
            session_key: None,
        }))
    }

    /// Fires every window ending at or before `watermark`, oldest first.
    /// Late rows held for closed windows (see [`super::late`]) are applied
    /// in the same sequence, right before the windows ending at the end
    /// they wait for, so on-time and late alerts reach cooldown in an order
    /// that does not depend on batching.
    pub fn fire(
        &mut self,
        watermark: i64,
        out: &mut Vec<ClosedWindow>,
        index: &PatientIndex,
    ) -> Result<()> {
        if watermark <= self.fired_through {
            return Ok(());
        }
        while let Some(at) = self.late.next_held_due(watermark) {
            self.fire_through(at.saturating_sub(1), out, index)?;
            self.apply_held_late(at, out, index)?;
        }
        self.fire_through(watermark, out, index)?;
        self.late
            .forget_closed_before(self.size_ms, self.fired_through);
        Ok(())
    }

    /// [`Self::fire`] without late rows.
    fn fire_through(
        &mut self,
        watermark: i64,
        out: &mut Vec<ClosedWindow>,
        index: &PatientIndex,
    ) -> Result<()> {
        if watermark <= self.fired_through {
            return Ok(());
        }
        if self.size_ms == self.pane_ms {
            self.fire_tumbling(watermark, out, index)?;
        } else {
            self.fire_hopping(watermark, out, index)?;
        }
        self.fired_through = watermark;
        Ok(())
    }

    fn fire_tumbling(
        &mut self,
        watermark: i64,
        out: &mut Vec<ClosedWindow>,
        index: &PatientIndex,
    ) -> Result<()> {
        while let Some((&start, _)) = self.open.first_key_value() {
            if start + self.size_ms > watermark {
                break;
            }
            let mut pane = self.open.remove(&start).expect("first key exists");
            if !pane.groups.has_groups() {
                continue;
            }
            if self.late.keeps_windows() {
                // Kept as state for late events, and evaluated from it.
                let end = start + self.size_ms;
                self.sealed.insert(start, SealedPane::from_pane(&mut pane)?);
                out.extend(self.evaluate_window(start, end, &BTreeMap::new(), index)?);
                continue;
            }
            let (keys, values, stats) = pane.finish()?;
            let rows = self.output_batch(
                start,
                start + self.size_ms,
                self.keys_out(keys, index),
                values,
            )?;
            out.push(ClosedWindow {
                start_ms: start,
                end_ms: start + self.size_ms,
                rows,
                stats,
                late: false,
                session_key: None,
            });
        }
        // Drop windows kept for late alerts once past the horizon.
        let keep_until = self.size_ms.saturating_add(self.late.horizon_ms());
        while let Some((&p, _)) = self.sealed.first_key_value() {
            if p.saturating_add(keep_until) > watermark {
                break;
            }
            self.sealed.remove(&p);
        }
        Ok(())
    }

    /// Current results of the open windows that contain a pane which
    /// received rows since the last call, without closing them (EMIT EARLY).
    pub fn peek_touched(
        &mut self,
        out: &mut Vec<ClosedWindow>,
        index: &PatientIndex,
    ) -> Result<()> {
        let touched = std::mem::take(&mut self.touched);
        let mut starts = BTreeSet::new();
        for &p in &touched {
            starts.extend(
                self.window_starts_containing(p)
                    .filter(|s| s + self.size_ms > self.fired_through),
            );
        }
        // Each open pane's state is read once per call, however many
        // windows contain it.
        let mut peeked: BTreeMap<i64, PaneState> = BTreeMap::new();
        for start in starts {
            let end = start + self.size_ms;
            let open_in: Vec<i64> = self.open.range(start..end).map(|(p, _)| *p).collect();
            for p in open_in {
                if let std::collections::btree_map::Entry::Vacant(slot) = peeked.entry(p) {
                    slot.insert(self.peek_open(p)?);
                }
            }
            out.extend(self.evaluate_window(start, end, &peeked, index)?);
        }
        Ok(())
    }

    /// Reads an open pane's intermediate state, leaving the pane as it was
    /// (drained and rebuilt: accumulators have no read-only view).
    fn peek_open(&mut self, start: i64) -> Result<PaneState> {
        let mut pane = self
            .open
            .remove(&start)
            .expect("caller checked the pane is open");
        let (keys, states, stats) = pane.drain()?;
        let restored = self.pane_from_state(&keys, &states, &stats)?;
        self.open.insert(start, restored);
        Ok((keys, states, stats))
    }

    /// Rebuilds an open pane from intermediate state.
    pub(super) fn pane_from_state(
        &self,
        keys: &[ArrayRef],
        states: &[Vec<ArrayRef>],
        stats: &[GroupStats],
    ) -> Result<OpenPane> {
        let mut pane = self.new_pane()?;
        merge_into(&mut pane, keys, states, stats)?;
        Ok(pane)
    }

    fn seal(&mut self, start: i64) -> Result<()> {
        if let Some(mut pane) = self.open.remove(&start) {
            let (keys, states, stats) = pane.drain()?;
            self.sealed.insert(
                start,
                SealedPane {
                    keys,
                    states,
                    stats,
                },
            );
        }
        Ok(())
    }

    fn fire_hopping(
        &mut self,
        watermark: i64,
        out: &mut Vec<ClosedWindow>,
        index: &PatientIndex,
    ) -> Result<()> {
        // Windows (starting at multiples of the slide) that contain some
        // pane and are due, by end.
        let mut ends = BTreeSet::new();
        // Open and sealed panes are two sorted maps; their chain is not
        // sorted, so take each one's range below the watermark.
        // Sealed panes before `lowest` only have windows that already fired
        // (they are kept for late alerts): skip them.
        let lowest = self.fired_through.saturating_sub(self.size_ms);
        let panes: Vec<i64> = self
            .open
            .range(..watermark)
            .map(|(p, _)| *p)
            .chain(self.sealed.range(lowest..watermark).map(|(p, _)| *p))
            .collect();
        for p in panes {
            let due = self.window_starts_containing(p).map(|s| s + self.size_ms);
            ends.extend(due.filter(|&end| end <= watermark && end > self.fired_through));
        }
        for end in ends {
            let start = end - self.size_ms;
            let panes: Vec<i64> = self.open.range(start..end).map(|(&p, _)| p).collect();
            for p in panes {
                self.seal(p)?;
            }
            out.extend(self.evaluate_window(start, end, &BTreeMap::new(), index)?);
        }
        // Drop panes no future window (ending after the watermark) contains
        // and no window kept for late alerts needs: the last window
        // containing pane p starts at floor(p / slide). Panes are sorted and
        // that end grows with p, so only the front can go.
        let horizon = self.late.horizon_ms();
        while let Some((&p, _)) = self.sealed.first_key_value() {
            if self.last_window_end(p).saturating_add(horizon) > watermark {
                break;
            }
            self.sealed.remove(&p);
        }
        Ok(())
    }

    /// Lays out closed-window rows as the aggregate's output schema.
    pub(super) fn output_batch(
        &self,
        start: i64,
        end: i64,
        keys: Vec<ArrayRef>,
        values: Vec<ArrayRef>,
    ) -> Result<RecordBatch> {
        let n = keys
            .first()
            .map(|k| k.len())
            .or_else(|| values.first().map(|v| v.len()))
            .unwrap_or(0);
        let bound = |v: i64| -> ArrayRef {
            Arc::new(TimestampMillisecondArray::from_value(v, n).with_timezone("UTC"))
        };
        crate::window::aggregate_rows(&self.plan, bound(start), bound(end), keys, values)
    }
}
