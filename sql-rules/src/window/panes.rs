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

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, TimestampMillisecondArray, UInt32Array,
};
use arrow::compute::take;
use arrow::datatypes::UInt32Type;
use arrow::record_batch::RecordBatch;
use datafusion::common::{DataFusionError, Result};
use datafusion::logical_expr::{EmitTo, GroupsAccumulator};
use datafusion::physical_expr::GroupsAccumulatorAdapter;
use datafusion::physical_plan::aggregates::group_values::{new_group_values, GroupValues};
use datafusion::physical_plan::aggregates::order::GroupOrdering;

use super::{ClosedWindow, GroupStats};
use crate::compile::plan::{AggregateSpec, Windowed};
use crate::compile::WindowSpec;
use crate::error::EngineError;
use crate::eval::{evaluate_all, predicate_mask};
use crate::keys::PatientIndex;
use crate::snapshot::{split_state_batch, state_batch, Blobs};

/// How an open pane maps keys to group ids.
enum PaneGroups {
    /// `GROUP BY patient_id` alone, as most rules are: the group of a
    /// patient index (see [`crate::keys`]) is an array lookup. Group 0 is a
    /// placeholder that rows outside the pane point at (accumulators take a
    /// group id for every row and skip the filtered ones); it is never
    /// emitted. The pane's keys are patient indices (`UInt32`) until output.
    Patient {
        /// Patient index → group id, 0 when the patient has none yet.
        slot: Vec<u32>,
        /// Group id → patient index (`u32::MAX` for the placeholder).
        patients: Vec<u32>,
    },
    /// Any other key: DataFusion's group table over the key columns.
    General(Box<dyn GroupValues>),
}

/// The group of patient index `p`, creating it if new.
#[inline]
fn patient_group(slot: &mut Vec<u32>, patients: &mut Vec<u32>, p: u32) -> usize {
    let at = p as usize;
    if at >= slot.len() {
        slot.resize(at + 1, 0);
    }
    let g = &mut slot[at];
    if *g == 0 {
        *g = patients.len() as u32;
        patients.push(p);
    }
    *g as usize
}

impl PaneGroups {
    /// Placeholder groups before the first real one.
    fn skip(&self) -> usize {
        match self {
            PaneGroups::Patient { .. } => 1,
            PaneGroups::General(_) => 0,
        }
    }

    /// Group ids in use, placeholder included.
    fn len(&self) -> usize {
        match self {
            PaneGroups::Patient { patients, .. } => patients.len(),
            PaneGroups::General(g) => g.len(),
        }
    }

    fn has_groups(&self) -> bool {
        self.len() > self.skip()
    }

    /// Group ids of keys as the pane stores them.
    fn intern(&mut self, keys: &[ArrayRef], ids: &mut Vec<usize>) -> Result<()> {
        match self {
            PaneGroups::General(g) => {
                ids.clear();
                g.intern(keys, ids)
            }
            PaneGroups::Patient { slot, patients } => {
                ids.clear();
                let keys = keys[0].as_primitive::<UInt32Type>();
                ids.extend(
                    keys.values()
                        .iter()
                        .map(|&p| patient_group(slot, patients, p)),
                );
                Ok(())
            }
        }
    }

    /// Keys of the real groups, in group order; empties the table.
    fn emit(&mut self) -> Result<Vec<ArrayRef>> {
        match self {
            PaneGroups::General(g) => g.emit(EmitTo::All),
            PaneGroups::Patient { slot, patients } => {
                let keys: ArrayRef = Arc::new(UInt32Array::from(patients[1..].to_vec()));
                slot.clear();
                patients.truncate(1);
                Ok(vec![keys])
            }
        }
    }
}

/// `array` without its first `skip` rows (the placeholder group).
fn drop_front(array: ArrayRef, skip: usize) -> ArrayRef {
    if skip == 0 {
        return array;
    }
    let skip = skip.min(array.len());
    array.slice(skip, array.len() - skip)
}

/// Open panes: keys interned to group ids, one accumulator per aggregate.
struct OpenPane {
    groups: PaneGroups,
    accumulators: Vec<Box<dyn GroupsAccumulator>>,
    stats: Vec<GroupStats>,
}

/// Keys, per-aggregate states and stats of a pane.
type PaneState = (Vec<ArrayRef>, Vec<Vec<ArrayRef>>, Vec<GroupStats>);

impl OpenPane {
    /// Empties the pane into its keys, each aggregate's final value and
    /// the groups' stats.
    fn finish(&mut self) -> Result<(Vec<ArrayRef>, Vec<ArrayRef>, Vec<GroupStats>)> {
        let skip = self.groups.skip();
        let keys = self.groups.emit()?;
        let values = self
            .accumulators
            .iter_mut()
            .map(|a| Ok(drop_front(a.evaluate(EmitTo::All)?, skip)))
            .collect::<Result<Vec<_>>>()?;
        Ok((keys, values, self.take_stats(skip)))
    }

    /// Empties the pane into its keys, each aggregate's intermediate state
    /// and the groups' stats.
    fn drain(&mut self) -> Result<PaneState> {
        let skip = self.groups.skip();
        let keys = self.groups.emit()?;
        let states = self
            .accumulators
            .iter_mut()
            .map(|a| {
                Ok(a.state(EmitTo::All)?
                    .into_iter()
                    .map(|s| drop_front(s, skip))
                    .collect())
            })
            .collect::<Result<Vec<_>>>()?;
        Ok((keys, states, self.take_stats(skip)))
    }

    fn take_stats(&mut self, skip: usize) -> Vec<GroupStats> {
        let mut stats = std::mem::take(&mut self.stats);
        stats.drain(..skip.min(stats.len()));
        self.stats = vec![GroupStats::EMPTY; skip];
        stats
    }
}

/// The batch's sequence numbers, [`super::NO_SEQ`] where missing. One
/// allocation per batch, for the explanation's first/last reading.
pub fn sequence_numbers(batch: &RecordBatch) -> Vec<u32> {
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

/// The rows of a batch that go to one pane.
enum PaneRows<'a> {
    /// Every row of the batch.
    All,
    /// The rows set in a mask over the whole batch: no copy, and the
    /// accumulators skip the others.
    Masked(&'a BooleanArray),
    /// A few rows, copied out (cheaper than a pass over the whole batch).
    Taken(&'a UInt32Array),
}

/// A batch's sequence numbers, [`super::NO_SEQ`] where missing.
struct Seqs<'a>(&'a arrow::array::UInt32Array);

impl Seqs<'_> {
    #[inline]
    fn get(&self, i: usize) -> u32 {
        if self.0.is_valid(i) {
            self.0.value(i)
        } else {
            super::NO_SEQ
        }
    }
}

pub struct PaneOperator {
    plan: Arc<Windowed>,
    size_ms: i64,
    slide_ms: i64,
    pane_ms: i64,
    /// The rule groups by `patient_id` alone (see [`PaneGroups::Patient`]).
    by_patient: bool,
    /// Every aggregate argument is a column or a literal and no aggregate
    /// has a FILTER: evaluating them over rows WHERE excluded cannot fail
    /// (an expression such as `x / y` guarded by `WHERE y <> 0` could).
    plain_inputs: bool,
    open: BTreeMap<i64, OpenPane>,
    sealed: BTreeMap<i64, SealedPane>,
    /// Every window ending at or before this has fired.
    fired_through: i64,
    /// Scratch, reused across batches: group id per row, pane per row.
    group_ids: Vec<usize>,
    row_panes: Vec<i64>,
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

/// Whether the rule's only key is the stream's `patient_id` column.
fn groups_by_patient(plan: &Windowed) -> bool {
    use datafusion::physical_expr::expressions::Column;
    let [key] = plan.key_exprs.as_slice() else {
        return false;
    };
    key.downcast_ref::<Column>().is_some_and(|c| {
        c.index() == crate::stream::idx::PATIENT_ID && c.name() == crate::stream::col::PATIENT_ID
    }) && plan.key_schema.field(0).data_type() == &arrow::datatypes::DataType::Utf8
}

/// Whether evaluating the aggregates' inputs over any row is safe.
fn plain_inputs(plan: &Windowed) -> bool {
    use datafusion::physical_expr::expressions::{Column, Literal};
    plan.aggregates.iter().all(|a| {
        a.filter.is_none()
            && a.args.iter().all(|e| {
                e.downcast_ref::<Column>().is_some() || e.downcast_ref::<Literal>().is_some()
            })
    })
}

/// Rows per batch below which a pane's rows are copied out rather than
/// masked: a mask costs a pass over the whole batch per aggregate.
const TAKE_BELOW_FRACTION: usize = 8;

impl PaneOperator {
    pub fn new(plan: Arc<Windowed>) -> Self {
        let (size_ms, slide_ms) = match plan.window {
            WindowSpec::Tumble { size_ms } => (size_ms, size_ms),
            WindowSpec::Hop { slide_ms, size_ms } => (size_ms, slide_ms),
            WindowSpec::Session { .. } => unreachable!("sessions use the session operator"),
        };
        Self {
            pane_ms: plan.window.pane_ms(),
            by_patient: groups_by_patient(&plan),
            plain_inputs: plain_inputs(&plan),
            plan,
            size_ms,
            slide_ms,
            open: BTreeMap::new(),
            sealed: BTreeMap::new(),
            fired_through: i64::MIN,
            group_ids: Vec::new(),
            row_panes: Vec::new(),
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

    /// End of the last window that contains an event at `ts`: the one
    /// starting at the last multiple of the slide at or before `ts`.
    #[inline]
    pub fn last_window_end(&self, ts: i64) -> i64 {
        ts.div_euclid(self.slide_ms)
            .saturating_mul(self.slide_ms)
            .saturating_add(self.size_ms)
    }

    pub fn open_panes(&self) -> usize {
        self.open.len() + self.sealed.len()
    }

    /// Bytes held by open and sealed panes (group tables, accumulators,
    /// stats, sealed Arrow state), as the structures report them.
    pub fn state_bytes(&self) -> usize {
        let stats = std::mem::size_of::<GroupStats>();
        let open: usize = self
            .open
            .values()
            .map(|pane| {
                let groups = match &pane.groups {
                    PaneGroups::Patient { slot, patients } => {
                        (slot.capacity() + patients.capacity()) * 4
                    }
                    PaneGroups::General(g) => g.size(),
                };
                groups
                    + pane.accumulators.iter().map(|a| a.size()).sum::<usize>()
                    + pane.stats.capacity() * stats
            })
            .sum();
        let sealed: usize = self
            .sealed
            .values()
            .map(|pane| {
                pane.keys
                    .iter()
                    .chain(pane.states.iter().flatten())
                    .map(|a| a.get_array_memory_size())
                    .sum::<usize>()
                    + pane.stats.capacity() * stats
            })
            .sum();
        open + sealed
    }

    fn new_pane(&self) -> Result<OpenPane> {
        let groups = if self.by_patient {
            PaneGroups::Patient {
                slot: Vec::new(),
                patients: vec![u32::MAX],
            }
        } else {
            PaneGroups::General(new_group_values(
                Arc::clone(&self.plan.key_schema),
                &GroupOrdering::None,
            )?)
        };
        Ok(OpenPane {
            stats: vec![GroupStats::EMPTY; groups.skip()],
            groups,
            accumulators: self
                .plan
                .aggregates
                .iter()
                .map(new_accumulator)
                .collect::<Result<_>>()?,
        })
    }

    /// Keys as the pane stores them → the rule's key columns.
    fn keys_out(&self, keys: Vec<ArrayRef>, index: &PatientIndex) -> Vec<ArrayRef> {
        if self.by_patient {
            vec![index.names_array(keys[0].as_primitive::<UInt32Type>().values())]
        } else {
            keys
        }
    }

    /// The rule's key columns (from a snapshot) → keys as the pane stores them.
    fn keys_in(&self, keys: Vec<ArrayRef>, index: &mut PatientIndex) -> Result<Vec<ArrayRef>> {
        if !self.by_patient {
            return Ok(keys);
        }
        let names = keys[0]
            .as_string_opt::<i32>()
            .ok_or_else(|| DataFusionError::Internal("patient keys are not strings".into()))?;
        let mut ids = Vec::new();
        index.index_column(names, &mut ids);
        Ok(vec![Arc::new(UInt32Array::from(ids))])
    }

    /// Adds the rows of `batch` that `keep` selects (all when `None`): WHERE
    /// passed, not late. `ts` is each row's event time in milliseconds and
    /// `patients` its patient index.
    pub fn insert(
        &mut self,
        batch: &RecordBatch,
        ts: &[i64],
        keep: Option<&[bool]>,
        patients: &[u32],
    ) -> Result<()> {
        if !self.by_patient {
            return match keep {
                None => self.insert_general(batch, ts),
                Some(keep) => {
                    let (batch, ts) = super::keep_rows(batch, ts, keep)?;
                    self.insert_general(&batch, &ts)
                }
            };
        }
        if let (Some(k), false) = (keep, self.plain_inputs) {
            // Expressions see only the rows WHERE kept, as in SQL.
            let (batch, ts) = super::keep_rows(batch, ts, k)?;
            let patients: Vec<u32> = patients
                .iter()
                .zip(k)
                .filter(|(_, kept)| **kept)
                .map(|(p, _)| *p)
                .collect();
            return self.insert(&batch, &ts, None, &patients);
        }
        let n = batch.num_rows();
        let kept = |i: usize| keep.is_none_or(|k| k[i]);
        // The pane of each kept row, and the panes with their row counts.
        // Rows mostly fall in one or two panes: remember the last one.
        let pane_ms = self.pane_ms;
        let mut row_panes = std::mem::take(&mut self.row_panes);
        row_panes.clear();
        row_panes.resize(n, i64::MIN);
        let mut panes: Vec<(i64, usize)> = Vec::new();
        let mut last = usize::MAX;
        for (i, &t) in ts.iter().enumerate() {
            if !kept(i) {
                continue;
            }
            let in_last = last != usize::MAX && {
                let start = panes[last].0;
                t >= start && t < start + pane_ms
            };
            if !in_last {
                let start = t.div_euclid(pane_ms) * pane_ms;
                last = match panes.iter().position(|(p, _)| *p == start) {
                    Some(at) => at,
                    None => {
                        panes.push((start, 0));
                        panes.len() - 1
                    }
                };
            }
            panes[last].1 += 1;
            row_panes[i] = panes[last].0;
        }
        if panes.is_empty() {
            self.row_panes = row_panes;
            return Ok(());
        }
        let (args, filters) = self.aggregate_inputs(batch)?;
        let seq_col = batch
            .column(crate::stream::idx::SEQUENCE_NUMBER)
            .as_primitive::<UInt32Type>();
        let seqs = Seqs(seq_col);
        let result = (|| {
            if panes.len() == 1 && panes[0].1 == n {
                return self.update_pane(
                    panes[0].0,
                    PaneRows::All,
                    &args,
                    &filters,
                    patients,
                    ts,
                    &seqs,
                );
            }
            for &(pane, count) in &panes {
                if count * TAKE_BELOW_FRACTION >= n {
                    let mask =
                        BooleanArray::from(arrow::buffer::BooleanBuffer::collect_bool(n, |i| {
                            row_panes[i] == pane
                        }));
                    self.update_pane(
                        pane,
                        PaneRows::Masked(&mask),
                        &args,
                        &filters,
                        patients,
                        ts,
                        &seqs,
                    )?;
                } else {
                    let rows: UInt32Array = row_panes
                        .iter()
                        .enumerate()
                        .filter(|(_, &p)| p == pane)
                        .map(|(i, _)| i as u32)
                        .collect();
                    self.update_pane(
                        pane,
                        PaneRows::Taken(&rows),
                        &args,
                        &filters,
                        patients,
                        ts,
                        &seqs,
                    )?;
                }
            }
            Ok(())
        })();
        self.row_panes = row_panes;
        result
    }

    /// Aggregates one pane's rows of a batch grouped by patient. `args` and
    /// `filters` are evaluated over the whole batch.
    #[allow(clippy::too_many_arguments)]
    fn update_pane(
        &mut self,
        pane: i64,
        rows: PaneRows<'_>,
        args: &[Vec<ArrayRef>],
        filters: &[Option<BooleanArray>],
        patients: &[u32],
        ts: &[i64],
        seqs: &Seqs<'_>,
    ) -> Result<()> {
        self.touch_pane(pane)?;
        let state = self.open.get_mut(&pane).expect("opened by touch_pane");
        let PaneGroups::Patient {
            slot,
            patients: group_patients,
        } = &mut state.groups
        else {
            unreachable!("panes of a rule grouped by patient group by patient")
        };
        let ids = &mut self.group_ids;
        ids.clear();
        match rows {
            PaneRows::All => {
                ids.extend(
                    patients
                        .iter()
                        .map(|&p| patient_group(slot, group_patients, p)),
                );
            }
            PaneRows::Masked(mask) => {
                // Rows outside the mask point at the placeholder group.
                ids.resize(patients.len(), 0);
                for i in mask.values().set_indices() {
                    ids[i] = patient_group(slot, group_patients, patients[i]);
                }
            }
            PaneRows::Taken(rows) => {
                ids.extend(
                    rows.values()
                        .iter()
                        .map(|&i| patient_group(slot, group_patients, patients[i as usize])),
                );
            }
        }
        let total = group_patients.len();
        for ((acc, values), filter) in state.accumulators.iter_mut().zip(args).zip(filters) {
            match rows {
                PaneRows::All => acc.update_batch(values, ids, filter.as_ref(), total)?,
                PaneRows::Masked(mask) => {
                    let filter = match filter {
                        Some(f) => arrow::compute::and(mask, f)?,
                        None => mask.clone(),
                    };
                    acc.update_batch(values, ids, Some(&filter), total)?
                }
                PaneRows::Taken(rows) => {
                    let values = values
                        .iter()
                        .map(|v| take(v.as_ref(), rows, None))
                        .collect::<std::result::Result<Vec<_>, _>>()?;
                    let filter = match filter {
                        Some(f) => Some(take(f, rows, None)?.as_boolean().clone()),
                        None => None,
                    };
                    acc.update_batch(&values, ids, filter.as_ref(), total)?
                }
            }
        }
        state.stats.resize(total, GroupStats::EMPTY);
        let stats = &mut state.stats;
        match rows {
            PaneRows::All => {
                for (i, (&g, &t)) in ids.iter().zip(ts).enumerate() {
                    stats[g].add(t, seqs.get(i));
                }
            }
            PaneRows::Masked(mask) => {
                for i in mask.values().set_indices() {
                    stats[ids[i]].add(ts[i], seqs.get(i));
                }
            }
            PaneRows::Taken(rows) => {
                for (&g, &i) in ids.iter().zip(rows.values()) {
                    let i = i as usize;
                    stats[g].add(ts[i], seqs.get(i));
                }
            }
        }
        Ok(())
    }

    /// Marks `pane` as having received rows, opening it if new.
    fn touch_pane(&mut self, pane: i64) -> Result<()> {
        self.touched.insert(pane);
        if !self.open.contains_key(&pane) {
            let fresh = self.new_pane()?;
            self.open.insert(pane, fresh);
        }
        Ok(())
    }

    /// Each aggregate's arguments and FILTER mask over `batch`.
    #[allow(clippy::type_complexity)]
    fn aggregate_inputs(
        &self,
        batch: &RecordBatch,
    ) -> Result<(Vec<Vec<ArrayRef>>, Vec<Option<BooleanArray>>)> {
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
        Ok((args, filters))
    }

    /// Adds rows (WHERE applied, no late rows) of a rule with any key.
    fn insert_general(&mut self, batch: &RecordBatch, ts: &[i64]) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let keys = evaluate_all(&self.plan.key_exprs, batch)?;
        let (args, filters) = self.aggregate_inputs(batch)?;
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
                        .map(|f| take(f, &idx, None).map(|a| a.as_boolean().clone()))
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
        filters: &[Option<BooleanArray>],
        ts: &[i64],
        seqs: &[u32],
    ) -> Result<()> {
        self.touch_pane(pane)?;
        let state = self.open.get_mut(&pane).expect("opened by touch_pane");
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
        }))
    }

    /// Fires every window ending at or before `watermark`, oldest first.
    pub fn fire(
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
            });
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
    fn pane_from_state(
        &self,
        keys: &[ArrayRef],
        states: &[Vec<ArrayRef>],
        stats: &[GroupStats],
    ) -> Result<OpenPane> {
        let mut pane = self.new_pane()?;
        merge_into(&mut pane, keys, states, stats)?;
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
            out.extend(self.evaluate_window(start, end, &BTreeMap::new(), index)?);
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
