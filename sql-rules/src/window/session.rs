//! Session windows: per key, events closer than `gap` in event time form
//! one session `[first event, last event + gap)`.
//!
//! A session's bounds depend on events that may still arrive, and two
//! sessions merge when an event bridges them, so this operator keeps the
//! (filtered, on-time) input rows of open sessions and aggregates a session
//! when it closes — when the watermark passes its end. Rows are held only
//! while their session is open; a closed session's rows are aggregated with
//! DataFusion accumulators in one pass and dropped.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arrow::array::AsArray;
use arrow::array::{ArrayRef, BooleanArray, TimestampMillisecondArray, UInt32Array};
use arrow::compute::{concat_batches, filter_record_batch, take, take_record_batch};
use arrow::datatypes::TimestampMillisecondType;
use arrow::record_batch::RecordBatch;
use arrow::row::{RowConverter, SortField};

use datafusion::common::Result;
use datafusion::logical_expr::EmitTo;

use super::clears::{Clears, KeyBytes, Pending};
use super::panes::new_accumulator;
use super::{ClosedWindow, GroupStats};
use crate::compile::plan::Windowed;
use crate::compile::WindowSpec;
use crate::error::EngineError;
use crate::eval::{evaluate_all, predicate_mask};
use crate::snapshot::Blobs;
use crate::stream::idx;

#[derive(Debug, Clone, Copy)]
struct Session {
    start: i64,
    last: i64,
}

pub struct SessionOperator {
    plan: Arc<Windowed>,
    gap_ms: i64,
    converter: RowConverter,
    /// Open sessions per key, sorted by start, never overlapping.
    sessions: HashMap<KeyBytes, Vec<Session>>,
    /// Session ends (last + gap) → count, to know cheaply when one is due.
    ends: BTreeMap<i64, usize>,
    /// Input rows of open sessions.
    buffered: Vec<RecordBatch>,
    fired_through: i64,
    /// Signal loss (a rule without HAVING): fired alerts waiting for their
    /// key's readings to return (see [`super::clears`]). Boxed: most
    /// session rules have none.
    clears: Option<Box<Clears>>,
}

impl SessionOperator {
    /// Bytes held: the buffered input rows and the session index.
    pub fn state_bytes(&self) -> usize {
        let rows: usize = self
            .buffered
            .iter()
            .map(|b| b.get_array_memory_size())
            .sum();
        let sessions: usize = self
            .sessions
            .iter()
            .map(|(k, v)| {
                std::mem::size_of_val(k) + k.len() + v.capacity() * std::mem::size_of::<Session>()
            })
            .sum();
        let clears = self.clears.as_ref().map_or(0, |c| c.state_bytes());
        rows + sessions + self.ends.len() * 32 + clears
    }

    pub fn new(plan: Arc<Windowed>) -> Result<Self> {
        let WindowSpec::Session { gap_ms } = plan.window else {
            unreachable!("tumbling and hopping windows use the pane operator")
        };
        let fields = plan
            .key_schema
            .fields()
            .iter()
            .map(|f| SortField::new(f.data_type().clone()))
            .collect();
        Ok(Self {
            converter: RowConverter::new(fields)?,
            plan,
            gap_ms,
            sessions: HashMap::new(),
            ends: BTreeMap::new(),
            buffered: Vec::new(),
            fired_through: i64::MIN,
            clears: None,
        })
    }

    /// Clears the alerts of silent sessions when readings return (see
    /// [`super::clears`]): for a rule without HAVING.
    pub fn with_clears(mut self) -> Self {
        self.clears = Some(Box::new(Clears::new()));
        self
    }

    pub fn clears_enabled(&self) -> bool {
        self.clears.is_some()
    }

    /// The alert `key` (a closed session's, see [`ClosedWindow::session_key`])
    /// was waiting on, no longer waited on.
    pub fn take_pending(&mut self, key: &[u8]) -> Option<Pending> {
        self.clears.as_mut()?.take(key)
    }

    /// `key`'s closed session fired `pending`: wait for its readings.
    pub fn hold_pending(&mut self, key: KeyBytes, pending: Pending) {
        let first_open = self
            .sessions
            .get(&key)
            .and_then(|l| l.iter().find(|s| s.start >= pending.silent_from_ms))
            .map(|s| s.start);
        if let Some(c) = &mut self.clears {
            c.hold(key, pending, first_open);
        }
    }

    /// Waiting alerts whose first returning reading `watermark` reached.
    pub fn due_clears(&mut self, watermark: i64) -> Vec<Pending> {
        self.clears
            .as_mut()
            .map_or_else(Vec::new, |c| c.due(watermark))
    }

    pub fn fired_through(&self) -> i64 {
        self.fired_through
    }

    pub fn gap_ms(&self) -> i64 {
        self.gap_ms
    }

    /// A session whose last event is at `ts` closes once the watermark
    /// reaches `ts + gap`.
    #[inline]
    pub fn last_window_end(&self, ts: i64) -> i64 {
        ts.saturating_add(self.gap_ms)
    }

    /// An event at `ts` could belong to a session that closed once the
    /// threshold passes `ts` (any closed session ended at or before it).
    #[inline]
    pub fn late_bound(&self, ts: i64) -> i64 {
        ts + 1
    }

    pub fn open_sessions(&self) -> usize {
        self.sessions.values().map(Vec::len).sum()
    }

    fn remove_end(&mut self, end: i64) {
        if let Some(n) = self.ends.get_mut(&end) {
            *n -= 1;
            if *n == 0 {
                self.ends.remove(&end);
            }
        }
    }

    pub fn insert(&mut self, batch: &RecordBatch, ts: &[i64]) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let keys = evaluate_all(&self.plan.key_exprs, batch)?;
        let rows = self.converter.convert_columns(&keys)?;
        let gap = self.gap_ms;
        for (i, &t) in ts.iter().enumerate() {
            let key = rows.row(i);
            if !self.sessions.contains_key(key.as_ref()) {
                self.sessions.insert(key.as_ref().into(), Vec::new());
            }
            let list = self.sessions.get_mut(key.as_ref()).expect("inserted above");
            // Sessions this event touches: start - gap < t < last + gap.
            let mut merged = Session { start: t, last: t };
            let mut removed_ends = vec![];
            list.retain(|s| {
                if t > s.start - gap && t < s.last + gap {
                    merged.start = merged.start.min(s.start);
                    merged.last = merged.last.max(s.last);
                    removed_ends.push(s.last + gap);
                    false
                } else {
                    true
                }
            });
            let pos = list.partition_point(|s| s.start < merged.start);
            list.insert(pos, merged);
            if merged.start == t {
                // The earliest reading of a session is always its start when
                // it arrives, whatever the order: the return, if one.
                if let Some(c) = &mut self.clears {
                    c.saw_start(key.as_ref(), t);
                }
            }
            for e in removed_ends {
                self.remove_end(e);
            }
            *self.ends.entry(merged.last + gap).or_default() += 1;
        }
        self.buffered.push(batch.clone());
        Ok(())
    }

    pub fn fire(&mut self, watermark: i64, out: &mut Vec<ClosedWindow>) -> Result<()> {
        if watermark <= self.fired_through {
            return Ok(());
        }
        self.fired_through = watermark;
        if self
            .ends
            .first_key_value()
            .is_none_or(|(&end, _)| end > watermark)
        {
            return Ok(());
        }
        let gap = self.gap_ms;
        // Closed sessions, each with an output index, oldest end first.
        let mut closed: Vec<(KeyBytes, Session)> = vec![];
        for (key, list) in self.sessions.iter_mut() {
            list.retain(|s| {
                if s.last + gap <= watermark {
                    closed.push((key.clone(), *s));
                    false
                } else {
                    true
                }
            });
        }
        self.sessions.retain(|_, l| !l.is_empty());
        for (_, s) in &closed {
            self.remove_end(s.last + gap);
        }
        closed.sort_by_key(|(_, s)| (s.last + gap, s.start));
        let mut index: HashMap<KeyBytes, Vec<(Session, usize)>> = HashMap::new();
        for (i, (k, s)) in closed.iter().enumerate() {
            index.entry(k.clone()).or_default().push((*s, i));
        }

        let all = concat_batches(&self.plan_input_schema(), &self.buffered)?;
        self.buffered.clear();
        let ts = all
            .column(idx::EVENT_TIME)
            .as_primitive::<TimestampMillisecondType>()
            .values()
            .clone();
        let keys = evaluate_all(&self.plan.key_exprs, &all)?;
        let rows = self.converter.convert_columns(&keys)?;
        let mut take_rows: Vec<u32> = vec![];
        let mut group_ids: Vec<usize> = vec![];
        let mut keep = vec![true; all.num_rows()];
        for i in 0..all.num_rows() {
            if let Some(list) = index.get(rows.row(i).as_ref()) {
                if let Some((_, g)) = list
                    .iter()
                    .find(|(s, _)| ts[i] >= s.start && ts[i] <= s.last)
                {
                    take_rows.push(i as u32);
                    group_ids.push(*g);
                    keep[i] = false;
                }
            }
        }
        if keep.iter().any(|k| *k) {
            self.buffered
                .push(filter_record_batch(&all, &BooleanArray::from(keep))?);
        }
        if closed.is_empty() {
            return Ok(());
        }
        let taken = take_record_batch(&all, &UInt32Array::from(take_rows.clone()))?;
        let n = closed.len();
        let mut stats = vec![GroupStats::EMPTY; n];
        let seqs = super::panes::sequence_numbers(&all);
        for (&g, &r) in group_ids.iter().zip(&take_rows) {
            stats[g].add(ts[r as usize], seqs[r as usize]);
        }
        let mut values = Vec::with_capacity(self.plan.aggregates.len());
        for agg in &self.plan.aggregates {
            let mut acc = new_accumulator(agg)?;
            let args = evaluate_all(&agg.args, &taken)?;
            let filter = agg
                .filter
                .as_ref()
                .map(|f| predicate_mask(f, &taken))
                .transpose()?;
            acc.update_batch(&args, &group_ids, filter.as_ref(), n)?;
            values.push(acc.evaluate(EmitTo::All)?);
        }
        // Key columns: the first row of each session.
        let mut first_row = vec![u32::MAX; n];
        for (pos, &g) in group_ids.iter().enumerate() {
            if first_row[g] == u32::MAX {
                first_row[g] = pos as u32;
            }
        }
        let key_cols = evaluate_all(&self.plan.key_exprs, &taken)?;
        let first = UInt32Array::from(first_row);
        let keys: Vec<ArrayRef> = key_cols
            .iter()
            .map(|c| take(c.as_ref(), &first, None))
            .collect::<std::result::Result<_, _>>()?;
        // Each session is its own window; emit them one by one so alerts
        // carry their own bounds.
        let starts: Vec<i64> = closed.iter().map(|(_, s)| s.start).collect();
        let window_ends: Vec<i64> = closed.iter().map(|(_, s)| s.last + gap).collect();
        let rows = self.output_batch(&starts, &window_ends, keys, values)?;
        let keep_keys = self.clears.is_some();
        for (i, (key, _)) in closed.into_iter().enumerate() {
            out.push(ClosedWindow {
                start_ms: starts[i],
                end_ms: window_ends[i],
                rows: rows.slice(i, 1),
                stats: vec![stats[i]],
                late: false,
                session_key: keep_keys.then_some(key),
            });
        }
        Ok(())
    }

    /// Sessions are derived from the buffered rows, so the rows are the
    /// state: restoring re-inserts them and rebuilds the same sessions.
    pub fn snapshot(
        &mut self,
        blobs: &mut Blobs,
    ) -> std::result::Result<serde_json::Value, EngineError> {
        let blob = if self.buffered.is_empty() {
            None
        } else {
            let all = concat_batches(&self.plan_input_schema(), &self.buffered)?;
            self.buffered = vec![all.clone()];
            Some(blobs.push(&all)?)
        };
        let clears = match &self.clears {
            Some(c) if c.len() > 0 => {
                let (keys, rest) = c.snapshot()?;
                let parser = self.converter.parser();
                let keys = self
                    .converter
                    .convert_rows(keys.into_iter().map(|k| parser.parse(k)))?;
                let mut columns = keys;
                columns.extend(rest.columns().iter().cloned());
                let fields: Vec<arrow::datatypes::Field> = columns
                    .iter()
                    .enumerate()
                    .map(|(i, c)| {
                        arrow::datatypes::Field::new(format!("c{i}"), c.data_type().clone(), true)
                    })
                    .collect();
                let batch =
                    RecordBatch::try_new(Arc::new(arrow::datatypes::Schema::new(fields)), columns)?;
                Some(blobs.push(&batch)?)
            }
            _ => None,
        };
        Ok(serde_json::json!({
            "fired_through": self.fired_through,
            "rows": blob,
            "clears": clears,
        }))
    }

    pub fn restore(
        &mut self,
        header: &serde_json::Value,
        blobs: &Blobs,
    ) -> std::result::Result<(), EngineError> {
        self.sessions.clear();
        self.ends.clear();
        self.buffered.clear();
        // Before the rows, so re-inserting them notes the returns again.
        // Absent from snapshots taken before clears.
        if let Some(clears) = &mut self.clears {
            **clears = Clears::new();
        }
        if let (Some(clears), Some(blob)) = (&mut self.clears, header["clears"].as_u64()) {
            let batch = blobs.get(blob as usize)?;
            let n = self.plan.key_exprs.len();
            if batch.num_columns() < n {
                return Err(EngineError::Restore(
                    "signal-loss clears: fewer columns than the rule's keys".into(),
                ));
            }
            let rows = self.converter.convert_columns(&batch.columns()[..n])?;
            let keys = rows.iter().map(|r| r.as_ref().into()).collect();
            let rest = batch.project(&(n..batch.num_columns()).collect::<Vec<_>>())?;
            clears.restore(keys, &rest)?;
        }
        if let Some(blob) = header["rows"].as_u64() {
            let rows = blobs.get(blob as usize)?;
            let ts = rows
                .column(idx::EVENT_TIME)
                .as_primitive::<TimestampMillisecondType>()
                .values()
                .clone();
            self.insert(&rows, &ts)?;
        }
        self.fired_through = header["fired_through"]
            .as_i64()
            .ok_or_else(|| EngineError::Restore("session snapshot: fired_through".into()))?;
        Ok(())
    }

    fn plan_input_schema(&self) -> arrow::datatypes::SchemaRef {
        self.buffered
            .first()
            .map(|b| b.schema())
            .unwrap_or_else(crate::stream::vitals_schema)
    }

    fn output_batch(
        &self,
        starts: &[i64],
        ends: &[i64],
        keys: Vec<ArrayRef>,
        values: Vec<ArrayRef>,
    ) -> Result<RecordBatch> {
        let bounds = |v: &[i64]| -> ArrayRef {
            Arc::new(TimestampMillisecondArray::from(v.to_vec()).with_timezone("UTC"))
        };
        super::aggregate_rows(&self.plan, bounds(starts), bounds(ends), keys, values)
    }
}
