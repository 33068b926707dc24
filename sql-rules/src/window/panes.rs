//! Tumbling and hopping windows over panes.
//!
//! A pane is a slice of event time of width gcd(size, slide). Events are
//! aggregated into the open pane containing them with DataFusion
//! `GroupsAccumulator`s keyed by the rule's GROUP BY columns. A tumbling
//! window is exactly one pane and is evaluated in place. A hopping window
//! covers size/pane panes: when the first window containing a pane fires,
//! the pane is sealed into its intermediate state (Arrow arrays), and every
//! window merges the sealed states of its panes. Each event is therefore
//! aggregated once, however many windows it belongs to.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, TimestampMillisecondArray, UInt32Array};
use arrow::compute::take;
use arrow::record_batch::RecordBatch;
use datafusion::common::Result;
use datafusion::logical_expr::{EmitTo, GroupsAccumulator};
use datafusion::physical_expr::GroupsAccumulatorAdapter;
use datafusion::physical_plan::aggregates::group_values::{new_group_values, GroupValues};
use datafusion::physical_plan::aggregates::order::GroupOrdering;

use super::{ClosedWindow, GroupStats};
use crate::compile::plan::{AggregateSpec, Windowed};
use crate::compile::WindowSpec;
use crate::error::EngineError;
use crate::eval::{evaluate_all, predicate_mask};
use crate::snapshot::{split_state_batch, state_batch, Blobs};

/// Open panes: keys interned to group ids, one accumulator per aggregate.
struct OpenPane {
    groups: Box<dyn GroupValues>,
    accumulators: Vec<Box<dyn GroupsAccumulator>>,
    stats: Vec<GroupStats>,
}

/// Keys, per-aggregate states and stats of a pane.
type PaneState = (Vec<ArrayRef>, Vec<Vec<ArrayRef>>, Vec<GroupStats>);

impl OpenPane {
    /// Empties the pane into its keys and each aggregate's final value.
    fn finish(&mut self) -> Result<(Vec<ArrayRef>, Vec<ArrayRef>)> {
        let keys = self.groups.emit(EmitTo::All)?;
        let values = self
            .accumulators
            .iter_mut()
            .map(|a| a.evaluate(EmitTo::All))
            .collect::<Result<Vec<_>>>()?;
        Ok((keys, values))
    }

    /// Empties the pane into its keys and each aggregate's intermediate state.
    fn drain(&mut self) -> Result<(Vec<ArrayRef>, Vec<Vec<ArrayRef>>)> {
        let keys = self.groups.emit(EmitTo::All)?;
        let states = self
            .accumulators
            .iter_mut()
            .map(|a| a.state(EmitTo::All))
            .collect::<Result<Vec<_>>>()?;
        Ok((keys, states))
    }
}

/// The batch's sequence numbers, [`super::NO_SEQ`] where missing. One
/// allocation per batch, for the explanation's first/last reading.
pub fn sequence_numbers(batch: &RecordBatch) -> Vec<u32> {
    use arrow::array::AsArray;
    let col = batch
        .column(crate::stream::idx::SEQUENCE_NUMBER)
        .as_primitive::<arrow::datatypes::UInt32Type>();
    if col.null_count() == 0 {
        col.values().to_vec()
    } else {
        col.iter().map(|v| v.unwrap_or(super::NO_SEQ)).collect()
    }
}

/// Merges intermediate state into a pane.
fn merge_into(
    pane: &mut OpenPane,
    keys: &[ArrayRef],
    states: &[Vec<ArrayRef>],
    stats: &[GroupStats],
) -> Result<()> {
    let mut ids = Vec::new();
    pane.groups.intern(keys, &mut ids)?;
    let total = pane.groups.len();
    for (acc, state) in pane.accumulators.iter_mut().zip(states) {
        acc.merge_batch(state, &ids, total)?;
    }
    pane.stats.resize(total, GroupStats::EMPTY);
    for (&g, s) in ids.iter().zip(stats) {
        pane.stats[g].merge(s);
    }
    Ok(())
}

/// A pane no event can reach any more, kept as intermediate state until
/// the last window containing it has fired.
struct SealedPane {
    keys: Vec<ArrayRef>,
    states: Vec<Vec<ArrayRef>>,
    stats: Vec<GroupStats>,
}

pub struct PaneOperator {
    plan: Arc<Windowed>,
    size_ms: i64,
    slide_ms: i64,
    pane_ms: i64,
    open: BTreeMap<i64, OpenPane>,
    sealed: BTreeMap<i64, SealedPane>,
    /// Every window ending at or before this has fired.
    fired_through: i64,
    group_ids: Vec<usize>,
    /// Panes that received rows since the last `peek_touched`.
    touched: BTreeSet<i64>,
}

pub fn new_accumulator(spec: &AggregateSpec) -> Result<Box<dyn GroupsAccumulator>> {
    if spec.function.groups_accumulator_supported() {
        spec.function.create_groups_accumulator()
    } else {
        let function = Arc::clone(&spec.function);
        Ok(Box::new(GroupsAccumulatorAdapter::new(move || {
            function.create_accumulator()
        })))
    }
}

impl PaneOperator {
    pub fn new(plan: Arc<Windowed>) -> Self {
        let (size_ms, slide_ms) = match plan.window {
            WindowSpec::Tumble { size_ms } => (size_ms, size_ms),
            WindowSpec::Hop { slide_ms, size_ms } => (size_ms, slide_ms),
            WindowSpec::Session { .. } => unreachable!("sessions use the session operator"),
        };
        Self {
            pane_ms: plan.window.pane_ms(),
            plan,
            size_ms,
            slide_ms,
            open: BTreeMap::new(),
            sealed: BTreeMap::new(),
            fired_through: i64::MIN,
            group_ids: Vec::new(),
            touched: BTreeSet::new(),
        }
    }

    /// End of the first window that contains an event at `ts`: the event is
    /// late once that window may have fired. Window starts are multiples of
    /// the slide (as in Flink), so the earliest window containing `ts`
    /// starts at the first multiple of the slide after `ts − size`.
    #[inline]
    pub fn first_window_end(&self, ts: i64) -> i64 {
        (ts - self.size_ms).div_euclid(self.slide_ms) * self.slide_ms + self.slide_ms + self.size_ms
    }

    pub fn fired_through(&self) -> i64 {
        self.fired_through
    }

    pub fn open_panes(&self) -> usize {
        self.open.len() + self.sealed.len()
    }

    fn new_pane(&self) -> Result<OpenPane> {
        Ok(OpenPane {
            groups: new_group_values(Arc::clone(&self.plan.key_schema), &GroupOrdering::None)?,
            accumulators: self
                .plan
                .aggregates
                .iter()
                .map(new_accumulator)
                .collect::<Result<_>>()?,
            stats: Vec::new(),
        })
    }

    /// Adds rows (already filtered: no late rows, WHERE applied).
    /// `ts` is the event time of each row in milliseconds.
    pub fn insert(&mut self, batch: &RecordBatch, ts: &[i64]) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let keys = evaluate_all(&self.plan.key_exprs, batch)?;
        let mut args = Vec::with_capacity(self.plan.aggregates.len());
        let mut filters = Vec::with_capacity(self.plan.aggregates.len());
        for agg in &self.plan.aggregates {
            args.push(evaluate_all(&agg.args, batch)?);
            filters.push(
                agg.filter
                    .as_ref()
                    .map(|f| predicate_mask(f, batch))
                    .transpose()?,
            );
        }
        let seqs = sequence_numbers(batch);
        let pane_ms = self.pane_ms;
        let first = ts[0].div_euclid(pane_ms);
        if ts.iter().all(|t| t.div_euclid(pane_ms) == first) {
            return self.insert_into_pane(first * pane_ms, &keys, &args, &filters, ts, &seqs);
        }
        // Rows span panes (out-of-order events, or a batch across a pane
        // boundary): split by pane. The copies are per pane, not per event.
        let mut by_pane: BTreeMap<i64, Vec<u32>> = BTreeMap::new();
        for (i, t) in ts.iter().enumerate() {
            by_pane
                .entry(t.div_euclid(pane_ms) * pane_ms)
                .or_default()
                .push(i as u32);
        }
        for (pane, rows) in by_pane {
            let idx = UInt32Array::from(rows);
            let take_all = |cols: &[ArrayRef]| -> Result<Vec<ArrayRef>> {
                Ok(cols
                    .iter()
                    .map(|c| take(c.as_ref(), &idx, None))
                    .collect::<std::result::Result<_, _>>()?)
            };
            let keys = take_all(&keys)?;
            let args = args
                .iter()
                .map(|a| take_all(a))
                .collect::<Result<Vec<_>>>()?;
            let filters = filters
                .iter()
                .map(|f| {
                    f.as_ref()
                        .map(|f| {
                            take(f, &idx, None).map(|a| {
                                a.as_any()
                                    .downcast_ref::<arrow::array::BooleanArray>()
                                    .cloned()
                                    .expect("boolean take")
                            })
                        })
                        .transpose()
                })
                .collect::<std::result::Result<Vec<_>, _>>()?;
            let pane_ts: Vec<i64> = idx.values().iter().map(|&i| ts[i as usize]).collect();
            let pane_seqs: Vec<u32> = idx.values().iter().map(|&i| seqs[i as usize]).collect();
            self.insert_into_pane(pane, &keys, &args, &filters, &pane_ts, &pane_seqs)?;
        }
        Ok(())
    }

    fn insert_into_pane(
        &mut self,
        pane: i64,
        keys: &[ArrayRef],
        args: &[Vec<ArrayRef>],
        filters: &[Option<arrow::array::BooleanArray>],
        ts: &[i64],
        seqs: &[u32],
    ) -> Result<()> {
        self.touched.insert(pane);
        if !self.open.contains_key(&pane) {
            let fresh = self.new_pane()?;
            self.open.insert(pane, fresh);
        }
        let state = self.open.get_mut(&pane).expect("inserted above");
        self.group_ids.clear();
        state.groups.intern(keys, &mut self.group_ids)?;
        let total = state.groups.len();
        for ((acc, values), filter) in state.accumulators.iter_mut().zip(args).zip(filters) {
            acc.update_batch(values, &self.group_ids, filter.as_ref(), total)?;
        }
        state.stats.resize(total, GroupStats::EMPTY);
        for ((&g, &t), &seq) in self.group_ids.iter().zip(ts).zip(seqs) {
            state.stats[g].add(t, seq);
        }
        Ok(())
    }

    /// Starts of the windows (at multiples of the slide) that contain the
    /// pane starting at `p`: every s with s <= p < p + pane <= s + size.
    fn window_starts_containing(&self, p: i64) -> impl Iterator<Item = i64> {
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
    ) -> Result<Option<ClosedWindow>> {
        let mut merged = self.new_pane()?;
        for (_, state) in peeked.range(start..end) {
            merge_into(&mut merged, &state.0, &state.1, &state.2)?;
        }
        for (_, pane) in self.sealed.range(start..end) {
            merge_into(&mut merged, &pane.keys, &pane.states, &pane.stats)?;
        }
        if merged.groups.is_empty() {
            return Ok(None);
        }
        let (keys, values) = merged.finish()?;
        let rows = self.output_batch(start, end, keys, values)?;
        Ok(Some(ClosedWindow {
            start_ms: start,
            end_ms: end,
            rows,
            stats: merged.stats,
        }))
    }

    /// Fires every window ending at or before `watermark`, oldest first.
    pub fn fire(&mut self, watermark: i64, out: &mut Vec<ClosedWindow>) -> Result<()> {
        if watermark <= self.fired_through {
            return Ok(());
        }
        if self.size_ms == self.pane_ms {
            self.fire_tumbling(watermark, out)?;
        } else {
            self.fire_hopping(watermark, out)?;
        }
        self.fired_through = watermark;
        Ok(())
    }

    fn fire_tumbling(&mut self, watermark: i64, out: &mut Vec<ClosedWindow>) -> Result<()> {
        while let Some((&start, _)) = self.open.first_key_value() {
            if start + self.size_ms > watermark {
                break;
            }
            let mut pane = self.open.remove(&start).expect("first key exists");
            let (keys, values) = pane.finish()?;
            let rows = self.output_batch(start, start + self.size_ms, keys, values)?;
            out.push(ClosedWindow {
                start_ms: start,
                end_ms: start + self.size_ms,
                rows,
                stats: pane.stats,
            });
        }
        Ok(())
    }

    /// Current results of the open windows that contain a pane which
    /// received rows since the last call, without closing them (EMIT EARLY).
    pub fn peek_touched(&mut self, out: &mut Vec<ClosedWindow>) -> Result<()> {
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
            out.extend(self.evaluate_window(start, end, &peeked)?);
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
        let (keys, states) = pane.drain()?;
        let restored = self.pane_from_state(&keys, &states, pane.stats.clone())?;
        self.open.insert(start, restored);
        Ok((keys, states, pane.stats))
    }

    /// Rebuilds an open pane from intermediate state.
    fn pane_from_state(
        &self,
        keys: &[ArrayRef],
        states: &[Vec<ArrayRef>],
        stats: Vec<GroupStats>,
    ) -> Result<OpenPane> {
        let mut pane = self.new_pane()?;
        let mut ids = Vec::new();
        pane.groups.intern(keys, &mut ids)?;
        let total = pane.groups.len();
        for (acc, state) in pane.accumulators.iter_mut().zip(states) {
            acc.merge_batch(state, &ids, total)?;
        }
        pane.stats = vec![GroupStats::EMPTY; total];
        for (&g, s) in ids.iter().zip(&stats) {
            pane.stats[g].merge(s);
        }
        Ok(pane)
    }

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
    ) -> std::result::Result<serde_json::Value, EngineError> {
        let mut panes = Vec::new();
        let starts: Vec<i64> = self.open.keys().copied().collect();
        for start in starts {
            let mut pane = self.open.remove(&start).expect("key listed above");
            let (keys, states) = pane.drain()?;
            let blob = blobs.push(&state_batch(&keys, &states, &pane.stats)?)?;
            let rebuilt = self.pane_from_state(&keys, &states, pane.stats)?;
            self.open.insert(start, rebuilt);
            panes.push(serde_json::json!({"start": start, "sealed": false, "blob": blob}));
        }
        for (start, pane) in &self.sealed {
            let blob = blobs.push(&state_batch(&pane.keys, &pane.states, &pane.stats)?)?;
            panes.push(serde_json::json!({"start": start, "sealed": true, "blob": blob}));
        }
        Ok(serde_json::json!({"fired_through": self.fired_through, "panes": panes}))
    }

    pub fn restore(
        &mut self,
        header: &serde_json::Value,
        blobs: &Blobs,
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
                let rebuilt = self.pane_from_state(&keys, &states, stats)?;
                self.open.insert(start, rebuilt);
            }
        }
        Ok(())
    }

    fn seal(&mut self, start: i64) -> Result<()> {
        if let Some(mut pane) = self.open.remove(&start) {
            let (keys, states) = pane.drain()?;
            self.sealed.insert(
                start,
                SealedPane {
                    keys,
                    states,
                    stats: pane.stats,
                },
            );
        }
        Ok(())
    }

    fn fire_hopping(&mut self, watermark: i64, out: &mut Vec<ClosedWindow>) -> Result<()> {
        // Windows (starting at multiples of the slide) that contain some
        // pane and are due, by end.
        let mut ends = BTreeSet::new();
        // Open and sealed panes are two sorted maps; their chain is not
        // sorted, so take each one's range below the watermark.
        let panes: Vec<i64> = self
            .open
            .range(..watermark)
            .map(|(p, _)| *p)
            .chain(self.sealed.range(..watermark).map(|(p, _)| *p))
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
            out.extend(self.evaluate_window(start, end, &BTreeMap::new())?);
        }
        // Drop panes no future window (ending after the watermark) contains:
        // the last window containing pane p starts at floor(p / slide).
        let (size, slide) = (self.size_ms, self.slide_ms);
        self.sealed
            .retain(|&p, _| p.div_euclid(slide) * slide + size > watermark);
        Ok(())
    }

    /// Lays out closed-window rows as the aggregate's output schema.
    fn output_batch(
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
        super::aggregate_rows(&self.plan, bound(start), bound(end), keys, values)
    }
}
