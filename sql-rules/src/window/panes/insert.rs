//! Adding rows to panes for a rule with any GROUP BY key, and the entry
//! point every insert goes through: rules grouped by `patient_id` alone
//! take the fast path ([`super::fast_path`]), the others intern their keys
//! in DataFusion's group table and split the batch by pane here.

use std::collections::BTreeMap;

use arrow::array::{ArrayRef, AsArray, BooleanArray, UInt32Array};
use arrow::compute::take;
use arrow::record_batch::RecordBatch;
use datafusion::common::Result;

use super::pane::sequence_numbers;
use super::PaneOperator;
use crate::eval::{evaluate_all, predicate_mask};

impl PaneOperator {
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
        if self.late.since.is_none() {
            let first = match keep {
                None => ts.first(),
                Some(keep) => ts.iter().zip(keep).find(|(_, k)| **k).map(|(t, _)| t),
            };
            if let Some(&t) = first {
                self.late.saw(t);
            }
        }
        match (self.by_patient, keep) {
            (true, keep) => self.insert_by_patient(batch, ts, keep, patients),
            (false, None) => self.insert_general(batch, ts),
            (false, Some(keep)) => {
                let (batch, ts) = crate::window::keep_rows(batch, ts, keep)?;
                self.insert_general(&batch, &ts)
            }
        }
    }

    /// Marks `pane` as having received rows, opening it if new.
    pub(super) fn touch_pane(&mut self, pane: i64) -> Result<()> {
        self.touched.insert(pane);
        if !self.open.contains_key(&pane) {
            let fresh = self.new_pane()?;
            self.open.insert(pane, fresh);
        }
        Ok(())
    }

    /// Each aggregate's arguments and FILTER mask over `batch`.
    #[allow(clippy::type_complexity)]
    pub(super) fn aggregate_inputs(
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
        state.update(keys, args, filters, ts, seqs, &mut self.group_ids)
    }
}
