//! What a replay reads from the archive: the events of a time range in
//! event-time order, one event-time hour at a time ([`EventsInOrder`]), and
//! the alerts recorded live for one rule version ([`RecordedAlert`]).
//!
//! This module only reads. Running a rule over the events and comparing the
//! result with what was recorded is the server's replay (`wardwatch::replay`);
//! nothing here knows about rules or the engine.
//!
//! # One event-time hour at a time
//!
//! The archive is partitioned by event-time hour, late events included (they
//! land in their hour's directory, in files of their own), so a range is read
//! one hour at a time, clipped to the range: each hour's history query opens
//! only that hour's files (see the [pruning](super#pruning)), the hour is
//! sorted on its own, and the sorted hours in turn are exactly the range in
//! event-time order. Hours without data are skipped
//! ([`HistoryCatalog::hours`]). While the caller works through one hour, the
//! next is read and sorted in the background, so memory is bounded by the
//! events of about two hours, not by the range.

use std::collections::BTreeMap;

use arrow::array::{Array, ArrayRef, AsArray, Int64Array};
use arrow::datatypes::{DataType, TimestampMillisecondType, UInt32Type};
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;
use datafusion::prelude::{SQLOptions, SessionContext};
use sql_rules::stream::{idx, vitals_schema};

use super::{HistoryCatalog, QueryLimits};
use crate::archive::{alert_col, VITALS};
use crate::CatalogError;

/// Milliseconds in an hour, the archive's partitioning unit.
const HOUR_MS: i64 = 3_600_000;

/// Rows per batch handed out (DataFusion's default batch size).
pub const REPLAY_BATCH_ROWS: usize = 8192;

/// The archived events of a range in replay order, see the
/// [module docs](self). Made by [`HistoryCatalog::events_in_order`].
///
/// Replay order is event time, then patient, then sequence number (nulls
/// last): the order of `ORDER BY event_time, patient_id, sequence_number`,
/// with the position in the archive as the last tie-break so that it is
/// deterministic.
pub struct EventsInOrder {
    session: SessionContext,
    from_ms: i64,
    to_ms: i64,
    /// The hours with data still to be read, ascending.
    hours: std::vec::IntoIter<i64>,
    /// The hour being read in the background.
    next: Option<HourRead>,
}

impl std::fmt::Debug for EventsInOrder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventsInOrder")
            .field("from_ms", &self.from_ms)
            .field("to_ms", &self.to_ms)
            .field("hours_left", &self.hours.len())
            .finish_non_exhaustive()
    }
}

impl HistoryCatalog {
    /// The archived `vitals` events with an event time in `[from_ms, to_ms)`,
    /// in replay order, one event-time hour at a time; the first hour is
    /// being read when this returns.
    ///
    /// Includes the rows the vitals writer still buffers if it is attached
    /// (see [`with_unflushed`](Self::with_unflushed)). An hour first written
    /// after this call is not included.
    pub async fn events_in_order(
        &self,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<EventsInOrder, CatalogError> {
        // Only the hours that hold anything: a long range may be mostly empty.
        let hours = self.hours(VITALS, from_ms, to_ms).await?;
        let mut events = EventsInOrder {
            session: self.session().clone(),
            from_ms,
            to_ms,
            hours: hours.into_iter(),
            next: None,
        };
        events.next = events.start_next();
        Ok(events)
    }

    /// The id and status of every alert of `rule_id` at `version` recorded in
    /// the archive for `[from_ms, to_ms)`: per-event alerts with an event time
    /// in the range, and windowed ones whose window lies entirely inside it
    /// (what a replay of that range can reproduce).
    ///
    /// Runs under the default [`QueryLimits`]. An id recorded twice keeps the
    /// status seen last.
    pub async fn recorded_alerts(
        &self,
        rule_id: &str,
        version: u32,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<RecordedAlert>, CatalogError> {
        let (from, to) = (from_ms, to_ms);
        let sql = format!(
            "SELECT {id}, {status} FROM alerts WHERE rule_id = {rule} AND rule_version = {version} \
             AND event_time >= to_timestamp_millis({from}) AND event_time < to_timestamp_millis({to}) \
             AND (window_start IS NULL OR (window_start >= to_timestamp_millis({from}) AND window_end <= to_timestamp_millis({to})))",
            id = alert_col::ID,
            status = alert_col::STATUS,
            rule = sql_string(rule_id),
        );
        let batches = self.query(&sql, &QueryLimits::default()).await?;
        let mut recorded: BTreeMap<String, String> = BTreeMap::new();
        let utf8 = |column: &ArrayRef| {
            // Parquet strings may come back as views; one type to read.
            arrow::compute::cast(column, &DataType::Utf8).map_err(|source| CatalogError::Arrow {
                what: "read recorded alert ids".into(),
                source,
            })
        };
        for batch in &batches {
            let (ids, statuses) = (utf8(batch.column(0))?, utf8(batch.column(1))?);
            let (ids, statuses) = (ids.as_string::<i32>(), statuses.as_string::<i32>());
            for (id, status) in ids.iter().zip(statuses.iter()) {
                if let (Some(id), Some(status)) = (id, status) {
                    recorded.insert(id.to_string(), status.to_string());
                }
            }
        }
        Ok(recorded
            .into_iter()
            .map(|(id, status)| RecordedAlert { id, status })
            .collect())
    }
}

/// An alert as recorded live, for comparing with a replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedAlert {
    /// The deterministic alert id.
    pub id: String,
    /// `fired` or `suppressed` (as archived).
    pub status: String,
}

/// `s` as a SQL string literal.
fn sql_string(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

impl EventsInOrder {
    /// The events of the next hour with data, in replay order, in batches of
    /// at most [`REPLAY_BATCH_ROWS`] rows of the vitals schema; `None` after
    /// the last hour. Starts reading the hour after it in the background.
    ///
    /// An hour may hold no rows at all once clipped to the range (its
    /// events lie outside it): then the batches are empty.
    pub async fn next_hour(&mut self) -> Option<Result<Vec<RecordBatch>, CatalogError>> {
        let read = self.next.take()?;
        let sorted = read.finish().await;
        if sorted.is_ok() {
            self.next = self.start_next();
        }
        Some(sorted)
    }

    /// Whether every hour has been handed out (or reading one failed).
    pub fn is_done(&self) -> bool {
        self.next.is_none()
    }

    fn start_next(&mut self) -> Option<HourRead> {
        let hour = self.hours.next()?;
        Some(HourRead::start(
            self.session.clone(),
            hour,
            self.from_ms,
            self.to_ms,
        ))
    }
}

/// The history query for the events of `hour` inside `[from_ms, to_ms)`.
///
/// All the vitals columns (batches of the vitals schema are handed out), no
/// `ORDER BY` (see [`sort_hour`]). The table turns the time bounds, which lie
/// within one hour, into `date = … AND hour = …`, so only that hour's
/// directory is listed and only its files are opened; late events of the
/// hour are in that directory too.
fn hour_sql(hour: i64, from_ms: i64, to_ms: i64) -> String {
    let lo = from_ms.max(hour.saturating_mul(HOUR_MS));
    let hi = to_ms.min(hour.saturating_add(1).saturating_mul(HOUR_MS));
    let columns: Vec<String> = vitals_schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    format!(
        "SELECT {} FROM vitals WHERE timestamp_unix_ms >= {lo} AND timestamp_unix_ms < {hi}",
        columns.join(", "),
    )
}

/// One hour being read and sorted in the background (aborted if dropped).
struct HourRead {
    hour: i64,
    task: tokio::task::JoinHandle<Result<Vec<RecordBatch>, CatalogError>>,
}

impl HourRead {
    /// Plans and runs the hour's history query on a task of its own (planning
    /// lists the hour's directory, so that too overlaps with the caller's
    /// work), then sorts it on the blocking pool.
    fn start(session: SessionContext, hour: i64, from_ms: i64, to_ms: i64) -> Self {
        let sql = hour_sql(hour, from_ms, to_ms);
        let task = tokio::spawn(async move {
            let read_only = SQLOptions::new()
                .with_allow_ddl(false)
                .with_allow_dml(false)
                .with_allow_statements(false);
            let batches = session
                .sql_with_options(&sql, read_only)
                .await
                .map_err(CatalogError::query)?
                .collect()
                .await
                .map_err(CatalogError::query)?;
            tokio::task::spawn_blocking(move || sort_hour(batches))
                .await
                .map_err(|e| CatalogError::Task {
                    what: format!("sorting the archived events of hour {hour}"),
                    reason: e.to_string(),
                })?
                .map_err(|source| CatalogError::Arrow {
                    what: format!("sort the archived events of hour {hour}"),
                    source,
                })
        });
        Self { hour, task }
    }

    /// The hour's events in replay order.
    async fn finish(mut self) -> Result<Vec<RecordBatch>, CatalogError> {
        match (&mut self.task).await {
            Ok(result) => result,
            Err(e) => Err(CatalogError::Task {
                what: format!("reading the archived events of hour {}", self.hour),
                reason: e.to_string(),
            }),
        }
    }
}

impl Drop for HourRead {
    fn drop(&mut self) {
        // A reader that stops early (error, cancel, client gone) does not
        // leave the next hour being read.
        self.task.abort();
    }
}

/// Sorts the events of one hour into replay order and cuts the result into
/// batches of [`REPLAY_BATCH_ROWS`] of the vitals schema.
///
/// Only the event times are sorted (an Arrow kernel over one `i64` column);
/// the few runs of equal times are then ordered by patient and sequence
/// number, with the position read as the last tie-break so the order is
/// deterministic. The columns are gathered once, by index, into the output.
fn sort_hour(batches: Vec<RecordBatch>) -> Result<Vec<RecordBatch>, ArrowError> {
    // Same columns, but the archive may hand back its own field metadata.
    let batches = batches
        .into_iter()
        .filter(|b| b.num_rows() > 0)
        .map(|b| RecordBatch::try_new(vitals_schema(), b.columns().to_vec()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            ArrowError::SchemaError(format!("archived rows do not match the stream schema: {e}"))
        })?;
    let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
    if rows == 0 {
        return Ok(Vec::new());
    }
    if u32::try_from(rows).is_err() {
        return Err(ArrowError::ComputeError(format!(
            "{rows} archived events in one hour are more than a replay can sort"
        )));
    }
    // (batch, row) of every event in read order; its index is the position.
    let mut at: Vec<(u32, u32)> = Vec::with_capacity(rows);
    let mut times: Vec<i64> = Vec::with_capacity(rows);
    for (b, batch) in batches.iter().enumerate() {
        let t = batch
            .column(idx::EVENT_TIME)
            .as_primitive_opt::<TimestampMillisecondType>()
            .ok_or_else(|| ArrowError::SchemaError("event_time is not a timestamp".into()))?;
        times.extend_from_slice(t.values());
        at.extend((0..batch.num_rows() as u32).map(|r| (b as u32, r)));
    }
    let times = Int64Array::from(times);
    let mut order: Vec<u32> = arrow::compute::sort_to_indices(&times, None, None)?
        .values()
        .to_vec();
    let times = times.values();

    // Equal event times: patient, then sequence number (nulls last), then
    // position. The kernel's sort is unstable, so every run is re-sorted.
    let mut start = 0;
    while start < rows {
        let t = times[order[start] as usize];
        let mut end = start + 1;
        while end < rows && times[order[end] as usize] == t {
            end += 1;
        }
        if end - start > 1 {
            let key = |i: u32| {
                let (b, r) = at[i as usize];
                let (batch, r) = (&batches[b as usize], r as usize);
                let patient = batch.column(idx::PATIENT_ID).as_string::<i32>().value(r);
                let seq = batch
                    .column(idx::SEQUENCE_NUMBER)
                    .as_primitive::<UInt32Type>();
                let seq = if seq.is_valid(r) {
                    u64::from(seq.value(r))
                } else {
                    u64::MAX
                };
                (patient, seq, i)
            };
            order[start..end].sort_unstable_by(|a, b| key(*a).cmp(&key(*b)));
        }
        start = end;
    }

    let sources: Vec<&RecordBatch> = batches.iter().collect();
    let mut gather = Vec::with_capacity(REPLAY_BATCH_ROWS.min(rows));
    order
        .chunks(REPLAY_BATCH_ROWS)
        .map(|chunk| {
            gather.clear();
            gather.extend(chunk.iter().map(|&i| {
                let (b, r) = at[i as usize];
                (b as usize, r as usize)
            }));
            arrow::compute::interleave_record_batch(&sources, &gather)
        })
        .collect()
}
