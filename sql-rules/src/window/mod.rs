//! Window operators: the incremental state between events and alerts.
//!
//! Tumbling and hopping windows share one operator built on panes
//! ([`panes`]): each event is aggregated once into the pane of
//! gcd(size, slide) that contains it, and a window is its panes merged.
//! Session windows have their own operator ([`session`]) because their
//! bounds depend on the data. How far event time has got, and so which
//! windows may close, is [`watermark`]'s business. Closed TUMBLE and HOP
//! windows are kept for a late horizon so that late data can still alert
//! (`panes::late`; sessions only count late events).

pub mod clears;
pub mod panes;
pub mod session;
pub mod watermark;

use arrow::record_batch::RecordBatch;

use crate::keys::PatientIndex;

/// The rows of `batch` (and their event times) that `keep` selects.
pub(crate) fn keep_rows(
    batch: &RecordBatch,
    ts: &[i64],
    keep: &[bool],
) -> datafusion::common::Result<(RecordBatch, Vec<i64>)> {
    let kept_ts = ts
        .iter()
        .zip(keep)
        .filter(|(_, k)| **k)
        .map(|(t, _)| *t)
        .collect();
    let mask = arrow::array::BooleanArray::from(keep.to_vec());
    Ok((arrow::compute::filter_record_batch(batch, &mask)?, kept_ts))
}

/// What the engine learns about each group of a closed window beyond its
/// aggregates: enough to explain an alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupStats {
    pub count: u64,
    pub first_event_ms: i64,
    pub last_event_ms: i64,
    /// Device sequence numbers of the first and last event (by event
    /// time), so an auditor can find the readings; [`NO_SEQ`] if unknown.
    pub first_seq: u32,
    pub last_seq: u32,
}

/// A missing sequence number.
pub const NO_SEQ: u32 = u32::MAX;

impl GroupStats {
    pub const EMPTY: GroupStats = GroupStats {
        count: 0,
        first_event_ms: i64::MAX,
        last_event_ms: i64::MIN,
        first_seq: NO_SEQ,
        last_seq: NO_SEQ,
    };

    /// Stats of a single event.
    pub fn one(ts: i64, seq: u32) -> GroupStats {
        GroupStats {
            count: 1,
            first_event_ms: ts,
            last_event_ms: ts,
            first_seq: seq,
            last_seq: seq,
        }
    }

    #[inline]
    pub fn add(&mut self, ts: i64, seq: u32) {
        self.merge(&GroupStats::one(ts, seq));
    }

    /// Ties on event time keep the smaller (first) or larger (last)
    /// sequence number, so the result does not depend on arrival order.
    #[inline]
    pub fn merge(&mut self, other: &GroupStats) {
        if other.count == 0 {
            return;
        }
        self.count += other.count;
        if (other.first_event_ms, other.first_seq) < (self.first_event_ms, self.first_seq) {
            self.first_event_ms = other.first_event_ms;
            self.first_seq = other.first_seq;
        }
        if self.last_event_ms == i64::MIN
            || (other.last_event_ms, other.last_seq) > (self.last_event_ms, self.last_seq)
        {
            self.last_event_ms = other.last_event_ms;
            self.last_seq = other.last_seq;
        }
    }
}

/// Lays out window results as the rule's aggregate schema: the group-by
/// slots (window bounds from `starts`/`ends`, one per row, or keys) then
/// the aggregate values.
pub(crate) fn aggregate_rows(
    plan: &crate::compile::plan::Windowed,
    starts: arrow::array::ArrayRef,
    ends: arrow::array::ArrayRef,
    keys: Vec<arrow::array::ArrayRef>,
    values: Vec<arrow::array::ArrayRef>,
) -> datafusion::common::Result<RecordBatch> {
    use crate::compile::plan::GroupSlot;
    use std::sync::Arc;
    let n = starts.len();
    let mut columns = Vec::with_capacity(plan.group_slots.len() + values.len());
    for slot in &plan.group_slots {
        columns.push(match slot {
            GroupSlot::WindowStart => Arc::clone(&starts),
            GroupSlot::WindowEnd => Arc::clone(&ends),
            GroupSlot::Key(i) => Arc::clone(&keys[*i]),
        });
    }
    columns.extend(values);
    // Cast where DataFusion's planned type differs in a detail such as a
    // timezone.
    let schema = Arc::clone(&plan.aggregate_schema);
    let columns = columns
        .into_iter()
        .zip(schema.fields())
        .map(|(c, f)| {
            if c.data_type() == f.data_type() {
                Ok(c)
            } else {
                arrow::compute::cast(&c, f.data_type())
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(RecordBatch::try_new_with_options(
        schema,
        columns,
        &arrow::record_batch::RecordBatchOptions::new().with_row_count(Some(n)),
    )?)
}

/// A window that closed: the aggregate's output rows (schema: the rule's
/// aggregate schema) and per-row stats.
#[derive(Debug)]
pub struct ClosedWindow {
    pub start_ms: i64,
    pub end_ms: i64,
    pub rows: RecordBatch,
    pub stats: Vec<GroupStats>,
    /// The rows are groups of an already closed window that late events
    /// turned from no alert into an alert (see [`panes`]' `late` module);
    /// only those groups are in `rows`.
    pub late: bool,
    /// A session of a rule that clears signal loss: its key in row format
    /// (see [`clears`]).
    pub session_key: Option<clears::KeyBytes>,
}

/// The window operator a rule runs: panes (TUMBLE, HOP) or sessions.
pub enum WindowOperator {
    Panes(panes::PaneOperator),
    Session(session::SessionOperator),
}

impl WindowOperator {
    pub fn new(
        plan: std::sync::Arc<crate::compile::plan::Windowed>,
    ) -> datafusion::common::Result<Self> {
        Ok(match plan.window {
            crate::compile::WindowSpec::Session { .. } => {
                WindowOperator::Session(session::SessionOperator::new(plan)?)
            }
            _ => WindowOperator::Panes(panes::PaneOperator::new(plan)),
        })
    }

    /// Keeps closed windows for `horizon_ms` of event time after they
    /// close, so that a late event there that turns the window's decision
    /// (`output_ops`: HAVING) from no alert into an alert raises a late
    /// alert. 0 (or less) keeps nothing: late events are only counted.
    /// Session windows do not support it yet: their late events are only
    /// counted.
    pub fn with_late_alerts(
        mut self,
        horizon_ms: i64,
        output_ops: &[crate::compile::RowOp],
    ) -> Self {
        if let WindowOperator::Panes(p) = &mut self {
            p.keep_closed_windows(horizon_ms, output_ops);
        }
        self
    }

    /// A SESSION rule without HAVING (signal loss) clears the alerts of
    /// silent sessions when readings return (see [`clears`]).
    pub fn with_clears(self, on: bool) -> Self {
        match self {
            WindowOperator::Session(s) if on => WindowOperator::Session(s.with_clears()),
            other => other,
        }
    }

    /// The session operator, if this rule clears signal loss.
    pub fn clearing_sessions(&mut self) -> Option<&mut session::SessionOperator> {
        match self {
            WindowOperator::Session(s) if s.clears_enabled() => Some(s),
            _ => None,
        }
    }

    /// Holds late rows (already counted late by the caller) for the closed
    /// windows they belong to; they are applied when the watermark passes
    /// the point the stream had reached when each arrived (see
    /// [`panes`]' `late` module). `late` lists `(row, threshold)`: the row
    /// of `batch` and the lateness threshold it was judged against.
    pub fn hold_late(
        &mut self,
        batch: &RecordBatch,
        ts: &[i64],
        late: &[(u32, i64)],
        patients: &[u32],
    ) -> datafusion::common::Result<()> {
        match self {
            WindowOperator::Panes(p) => p.hold_late(batch, ts, late, patients),
            WindowOperator::Session(_) => Ok(()),
        }
    }

    /// An event at `ts` is late once the lateness threshold reaches this.
    #[inline]
    pub fn late_bound(&self, ts: i64) -> i64 {
        match self {
            WindowOperator::Panes(p) => p.first_window_end(ts),
            WindowOperator::Session(s) => s.late_bound(ts),
        }
    }

    pub fn fired_through(&self) -> i64 {
        match self {
            WindowOperator::Panes(p) => p.fired_through(),
            WindowOperator::Session(s) => s.fired_through(),
        }
    }

    /// The end of the last window an event at `ts` can belong to: a
    /// watermark there closes every window that holds events up to `ts`
    /// and none that can only hold later ones (the quiet close's cap).
    pub fn last_window_end(&self, ts: i64) -> i64 {
        match self {
            WindowOperator::Panes(p) => p.last_window_end(ts),
            WindowOperator::Session(s) => s.last_window_end(ts),
        }
    }

    /// Adds the rows `keep` selects (all when `None`); `ts` is each row's
    /// event time, `patients` its patient index (see [`crate::keys`]).
    pub fn insert(
        &mut self,
        batch: &RecordBatch,
        ts: &[i64],
        keep: Option<&[bool]>,
        patients: &[u32],
    ) -> datafusion::common::Result<()> {
        match (self, keep) {
            (WindowOperator::Panes(p), keep) => p.insert(batch, ts, keep, patients),
            (WindowOperator::Session(s), None) => s.insert(batch, ts),
            (WindowOperator::Session(s), Some(keep)) => {
                let (batch, ts) = keep_rows(batch, ts, keep)?;
                s.insert(&batch, &ts)
            }
        }
    }

    pub fn fire(
        &mut self,
        watermark: i64,
        out: &mut Vec<ClosedWindow>,
        index: &PatientIndex,
    ) -> datafusion::common::Result<()> {
        match self {
            WindowOperator::Panes(p) => p.fire(watermark, out, index),
            WindowOperator::Session(s) => s.fire(watermark, out),
        }
    }

    pub fn snapshot(
        &mut self,
        blobs: &mut crate::snapshot::Blobs,
        index: &PatientIndex,
    ) -> Result<serde_json::Value, crate::EngineError> {
        match self {
            WindowOperator::Panes(p) => p.snapshot(blobs, index),
            WindowOperator::Session(s) => s.snapshot(blobs),
        }
    }

    /// Restores a snapshot but for the open panes' aggregates, which
    /// [`restore_panes`](Self::restore_panes) rebuilds (it needs no
    /// patient index, so rules can do it in parallel).
    pub fn restore(
        &mut self,
        header: &serde_json::Value,
        blobs: &crate::snapshot::Blobs,
        index: &mut PatientIndex,
    ) -> Result<Option<panes::PanesToRebuild>, crate::EngineError> {
        match self {
            WindowOperator::Panes(p) => p.restore(header, blobs, index).map(Some),
            WindowOperator::Session(s) => s.restore(header, blobs).map(|()| None),
        }
    }

    /// The second half of [`restore`](Self::restore).
    pub fn restore_panes(
        &mut self,
        rebuild: panes::PanesToRebuild,
    ) -> Result<(), crate::EngineError> {
        match self {
            WindowOperator::Panes(p) => p.restore_panes(rebuild),
            WindowOperator::Session(_) => Ok(()),
        }
    }

    /// Current results of touched open windows (EMIT EARLY; TUMBLE and HOP).
    pub fn peek_touched(
        &mut self,
        out: &mut Vec<ClosedWindow>,
        index: &PatientIndex,
    ) -> datafusion::common::Result<()> {
        match self {
            WindowOperator::Panes(p) => p.peek_touched(out, index),
            WindowOperator::Session(_) => Ok(()),
        }
    }

    /// How far `fired_through` must pass a row's stamp (its event time, or
    /// the threshold it was judged late against, whichever is later)
    /// before this operator holds nothing derived from it.
    pub fn reach_ms(&self) -> i64 {
        match self {
            WindowOperator::Panes(p) => p.reach_ms(),
            // A session closes `gap` after its last row, rows and all; late
            // rows are only counted.
            WindowOperator::Session(s) => s.gap_ms(),
        }
    }

    /// Clears the marks in `dead` of patient indices this operator still
    /// holds (see [`crate::keys::PatientIndex::forget`]). Sessions key
    /// their rows by the ids' text, never by index.
    pub fn keep_referenced(&self, dead: &mut [bool]) {
        if let WindowOperator::Panes(p) = self {
            p.keep_referenced(dead);
        }
    }

    /// Bytes of window state held (see the operators' `state_bytes`).
    pub fn state_bytes(&self) -> usize {
        match self {
            WindowOperator::Panes(p) => p.state_bytes(),
            WindowOperator::Session(s) => s.state_bytes(),
        }
    }

    /// Open panes or sessions holding state.
    pub fn open_state(&self) -> usize {
        match self {
            WindowOperator::Panes(p) => p.open_panes(),
            WindowOperator::Session(s) => s.open_sessions(),
        }
    }
}
