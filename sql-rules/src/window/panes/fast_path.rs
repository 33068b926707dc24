//! The patient fast path: most rules group by `patient_id` alone, so a
//! row's group in a pane is an array lookup on its patient index (see
//! [`crate::keys`]) instead of a hash of its key, and a batch's rows reach
//! each pane through a mask or a few copied rows rather than a split batch.
//! It is a separate path from [`super::insert`] only for speed: both must
//! aggregate the same rows into the same groups.

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, UInt32Array};
use arrow::compute::take;
use arrow::datatypes::UInt32Type;
use arrow::record_batch::RecordBatch;
use datafusion::common::Result;

use super::pane::{patient_group, PaneGroups};
use super::PaneOperator;
use crate::window::GroupStats;

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

/// A batch's sequence numbers, [`crate::window::NO_SEQ`] where missing.
struct Seqs<'a>(&'a arrow::array::UInt32Array);

impl Seqs<'_> {
    #[inline]
    fn get(&self, i: usize) -> u32 {
        if self.0.is_valid(i) {
            self.0.value(i)
        } else {
            crate::window::NO_SEQ
        }
    }
}

/// Rows per batch below which a pane's rows are copied out rather than
/// masked: a mask costs a pass over the whole batch per aggregate.
const TAKE_BELOW_FRACTION: usize = 8;

impl PaneOperator {
    /// [`PaneOperator::insert`] for a rule grouped by `patient_id` alone.
    pub(super) fn insert_by_patient(
        &mut self,
        batch: &RecordBatch,
        ts: &[i64],
        keep: Option<&[bool]>,
        patients: &[u32],
    ) -> Result<()> {
        if let (Some(k), false) = (keep, self.plain_inputs) {
            // Expressions see only the rows WHERE kept, as in SQL.
            let (batch, ts) = crate::window::keep_rows(batch, ts, k)?;
            let patients: Vec<u32> = patients
                .iter()
                .zip(k)
                .filter(|(_, kept)| **kept)
                .map(|(p, _)| *p)
                .collect();
            return self.insert_by_patient(&batch, &ts, None, &patients);
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
}
