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
//!
//! This module owns the operator's state and its window arithmetic; the
//! work is split by concern:
//!
//! * [`pane`]: one pane's state, open (accumulators) or sealed (Arrow).
//! * [`insert`]: adding rows for a rule with any GROUP BY key.
//! * [`fast_path`]: adding rows for a rule grouped by `patient_id` alone.
//! * [`lifecycle`]: firing windows, sealing and dropping panes, EMIT EARLY.
//! * [`late`]: closed windows kept for a late horizon, and the late alerts
//!   a late event there can raise.
//! * [`snapshot`]: writing and restoring the panes.

mod fast_path;
mod insert;
mod late;
mod lifecycle;
mod pane;
mod snapshot;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use arrow::array::{ArrayRef, AsArray, UInt32Array};
use arrow::datatypes::UInt32Type;
use datafusion::common::{DataFusionError, Result};
use datafusion::logical_expr::GroupsAccumulator;
use datafusion::physical_expr::GroupsAccumulatorAdapter;
use datafusion::physical_plan::aggregates::group_values::new_group_values;
use datafusion::physical_plan::aggregates::order::GroupOrdering;

use super::GroupStats;
use crate::compile::plan::{AggregateSpec, Windowed};
use crate::compile::WindowSpec;
use crate::keys::PatientIndex;
use pane::{OpenPane, PaneGroups, SealedPane};

pub use pane::sequence_numbers;
pub use snapshot::PanesToRebuild;

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
    /// Closed windows kept for late alerts, and late rows waiting for them.
    /// Boxed: cold, and it would make every window operator larger.
    late: Box<late::LateState>,
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
            late: Box::default(),
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

    /// How far past a row's event time (or the lateness threshold it was
    /// judged against) this operator may still hold state from it: once
    /// `fired_through` is this far past, every window that row can be in
    /// has fired and been dropped, late-alert horizon included, and a late
    /// row held for one has been applied (it waits for at most a slide).
    pub fn reach_ms(&self) -> i64 {
        self.size_ms.saturating_add(self.late.horizon_ms())
    }

    /// Clears the marks in `dead` (by patient index) of patients some pane
    /// still holds: open, sealed, kept for late alerts, or late rows held
    /// or applied. Only a rule grouped by patient alone keys its panes by
    /// patient index; the others hold ids as text.
    pub fn keep_referenced(&self, dead: &mut [bool]) {
        if !self.by_patient {
            return;
        }
        let mut keep = |p: u32| {
            if let Some(d) = dead.get_mut(p as usize) {
                *d = false;
            }
        };
        let open = self
            .open
            .values()
            .chain(self.late.held.values().flat_map(|g| g.values()));
        for pane in open {
            if let PaneGroups::Patient { patients, .. } = &pane.groups {
                patients.iter().skip(1).for_each(|&p| keep(p));
            }
        }
        for pane in self.sealed.values().chain(self.late.applied.values()) {
            if let Some(keys) = pane.keys.first() {
                keys.as_primitive::<UInt32Type>()
                    .values()
                    .iter()
                    .for_each(|&p| keep(p));
            }
        }
    }

    /// Panes some window still to fire needs; panes kept only for late
    /// alerts (see [`late`]) are not counted.
    pub fn open_panes(&self) -> usize {
        let needed = self
            .sealed
            .keys()
            .filter(|&&p| self.last_window_end(p) > self.fired_through)
            .count();
        self.open.len() + needed
    }

    /// Bytes held by open and sealed panes (group tables, accumulators,
    /// stats, sealed Arrow state) and by closed windows kept for late
    /// alerts, as the structures report them.
    pub fn state_bytes(&self) -> usize {
        let open: usize = self.open.values().map(OpenPane::size).sum();
        let sealed: usize = self.sealed.values().map(SealedPane::size).sum();
        open + sealed + self.late.state_bytes()
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
}
