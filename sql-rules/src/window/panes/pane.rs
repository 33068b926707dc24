//! One pane's state: open (keys interned to group ids, one DataFusion
//! accumulator per aggregate) or sealed (the same state as Arrow arrays,
//! once no event can reach it). Kept apart from the operator so the
//! insert paths, firing and snapshots share one definition of a pane and
//! of how state merges into it.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, UInt32Array};
use arrow::datatypes::UInt32Type;
use arrow::record_batch::RecordBatch;
use datafusion::common::Result;
use datafusion::logical_expr::{EmitTo, GroupsAccumulator};
use datafusion::physical_plan::aggregates::group_values::GroupValues;

use crate::window::GroupStats;

/// How an open pane maps keys to group ids.
pub(super) enum PaneGroups {
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
pub(super) fn patient_group(slot: &mut Vec<u32>, patients: &mut Vec<u32>, p: u32) -> usize {
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
    pub(super) fn skip(&self) -> usize {
        match self {
            PaneGroups::Patient { .. } => 1,
            PaneGroups::General(_) => 0,
        }
    }

    /// Group ids in use, placeholder included.
    pub(super) fn len(&self) -> usize {
        match self {
            PaneGroups::Patient { patients, .. } => patients.len(),
            PaneGroups::General(g) => g.len(),
        }
    }

    pub(super) fn has_groups(&self) -> bool {
        self.len() > self.skip()
    }

    /// Group ids of keys as the pane stores them.
    pub(super) fn intern(&mut self, keys: &[ArrayRef], ids: &mut Vec<usize>) -> Result<()> {
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
    pub(super) fn emit(&mut self) -> Result<Vec<ArrayRef>> {
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
pub(super) fn drop_front(array: ArrayRef, skip: usize) -> ArrayRef {
    if skip == 0 {
        return array;
    }
    let skip = skip.min(array.len());
    array.slice(skip, array.len() - skip)
}

/// Open panes: keys interned to group ids, one accumulator per aggregate.
pub(super) struct OpenPane {
    pub(super) groups: PaneGroups,
    pub(super) accumulators: Vec<Box<dyn GroupsAccumulator>>,
    pub(super) stats: Vec<GroupStats>,
}

/// Keys, per-aggregate states and stats of a pane.
pub(super) type PaneState = (Vec<ArrayRef>, Vec<Vec<ArrayRef>>, Vec<GroupStats>);

impl OpenPane {
    /// Empties the pane into its keys, each aggregate's final value and
    /// the groups' stats.
    pub(super) fn finish(&mut self) -> Result<(Vec<ArrayRef>, Vec<ArrayRef>, Vec<GroupStats>)> {
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
    pub(super) fn drain(&mut self) -> Result<PaneState> {
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

/// The batch's sequence numbers, [`crate::window::NO_SEQ`] where missing. One
/// allocation per batch, for the explanation's first/last reading.
pub fn sequence_numbers(batch: &RecordBatch) -> Vec<u32> {
    let col = batch
        .column(crate::stream::idx::SEQUENCE_NUMBER)
        .as_primitive::<arrow::datatypes::UInt32Type>();
    if col.null_count() == 0 {
        col.values().to_vec()
    } else {
        col.iter()
            .map(|v| v.unwrap_or(crate::window::NO_SEQ))
            .collect()
    }
}

/// Merges intermediate state into a pane; returns the group id of each
/// merged key.
pub(super) fn merge_into(
    pane: &mut OpenPane,
    keys: &[ArrayRef],
    states: &[Vec<ArrayRef>],
    stats: &[GroupStats],
) -> Result<Vec<usize>> {
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
    Ok(ids)
}

impl OpenPane {
    /// Aggregates rows into the pane: their keys (as the pane stores
    /// them), each aggregate's arguments and FILTER mask, event times and
    /// sequence numbers. `ids` is scratch for the rows' group ids.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn update(
        &mut self,
        keys: &[ArrayRef],
        args: &[Vec<ArrayRef>],
        filters: &[Option<BooleanArray>],
        ts: &[i64],
        seqs: &[u32],
        ids: &mut Vec<usize>,
    ) -> Result<()> {
        self.groups.intern(keys, ids)?;
        let total = self.groups.len();
        for ((acc, values), filter) in self.accumulators.iter_mut().zip(args).zip(filters) {
            acc.update_batch(values, ids, filter.as_ref(), total)?;
        }
        self.stats.resize(total, GroupStats::EMPTY);
        for ((&g, &t), &seq) in ids.iter().zip(ts).zip(seqs) {
            self.stats[g].add(t, seq);
        }
        Ok(())
    }

    /// Bytes held: group table, accumulators, stats.
    pub(super) fn size(&self) -> usize {
        let groups = match &self.groups {
            PaneGroups::Patient { slot, patients } => (slot.capacity() + patients.capacity()) * 4,
            PaneGroups::General(g) => g.size(),
        };
        groups
            + self.accumulators.iter().map(|a| a.size()).sum::<usize>()
            + self.stats.capacity() * std::mem::size_of::<GroupStats>()
    }
}

impl SealedPane {
    /// Empties an open pane into its intermediate state.
    pub(super) fn from_pane(pane: &mut OpenPane) -> Result<SealedPane> {
        let (keys, states, stats) = pane.drain()?;
        Ok(SealedPane {
            keys,
            states,
            stats,
        })
    }

    /// Bytes held: Arrow state and stats.
    pub(super) fn size(&self) -> usize {
        self.keys
            .iter()
            .chain(self.states.iter().flatten())
            .map(|a| a.get_array_memory_size())
            .sum::<usize>()
            + self.stats.capacity() * std::mem::size_of::<GroupStats>()
    }
}

/// A pane no event can reach any more, kept as intermediate state until
/// the last window containing it has fired.
pub(super) struct SealedPane {
    pub(super) keys: Vec<ArrayRef>,
    pub(super) states: Vec<Vec<ArrayRef>>,
    pub(super) stats: Vec<GroupStats>,
}
