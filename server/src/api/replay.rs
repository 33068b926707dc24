//! `POST /api/replay`: a rule version (or a draft's SQL) over archived
//! events, with the same engine as live, and optionally an audit that
//! diffs the result against the alerts actually recorded.
//!
//! Events are replayed in event-time order as one stream; the end of the
//! range is a final watermark. Only windows entirely inside the range are
//! reported (a window that began before `from_ms` would miss events).

use std::collections::{BTreeMap, BTreeSet};

use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64};
use std::sync::{Arc, Mutex};

use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;
use axum::extract::{Path, State};
use axum::Json;
use datafusion::prelude::SQLOptions;
use serde_json::{json, Value};
use sql_rules::stream::vitals_schema;
use sql_rules::{Alert, AlertStatus, Engine, EngineConfig, RuleSpec};

use super::error::ApiError;
use super::rules::rule_spec;
use super::SharedState;

#[derive(Debug, serde::Deserialize)]
pub struct ReplayRequest {
    pub rule_id: Option<String>,
    pub version: Option<u32>,
    /// A draft never activated (backtest), instead of `rule_id`.
    pub sql: Option<String>,
    #[serde(default)]
    pub cooldown_seconds: Option<u64>,
    pub from_ms: i64,
    pub to_ms: i64,
    #[serde(default)]
    pub audit: bool,
    /// Run in the background: answer `202 {"job"}` at once; follow it
    /// with `GET /api/replay/{job}` and cancel with `DELETE`.
    #[serde(default, rename = "async")]
    pub background: bool,
}

/// A replay's progress, shared with `GET /api/replay/{job}`.
#[derive(Default)]
pub struct Progress {
    pub events: AtomicU64,
    /// Event time reached so far.
    pub event_time_ms: AtomicI64,
    pub cancelled: AtomicBool,
}

/// A background replay.
pub struct ReplayJob {
    pub from_ms: i64,
    pub to_ms: i64,
    pub started_at_ms: i64,
    pub progress: Progress,
    pub outcome: Mutex<Option<Result<Value, (u16, String)>>>,
}

impl ReplayJob {
    fn view(&self, id: &str) -> Value {
        let events = self.progress.events.load(Relaxed);
        let reached = self.progress.event_time_ms.load(Relaxed);
        let span = (self.to_ms - self.from_ms).max(1) as f64;
        let fraction = ((reached - self.from_ms).max(0) as f64 / span).min(1.0);
        let outcome = self.outcome.lock().expect("replay job lock");
        let (state, result, error) = match &*outcome {
            None if self.progress.cancelled.load(Relaxed) => {
                ("cancelling", Value::Null, Value::Null)
            }
            None => ("running", Value::Null, Value::Null),
            Some(Ok(v)) => ("done", v.clone(), Value::Null),
            Some(Err((_, m))) if self.progress.cancelled.load(Relaxed) => {
                ("cancelled", Value::Null, Value::from(m.clone()))
            }
            Some(Err((_, m))) => ("failed", Value::Null, Value::from(m.clone())),
        };
        json!({"job": id, "state": state, "events": events, "event_time_ms": reached,
               "fraction": if state == "done" { 1.0 } else { fraction },
               "started_at_ms": self.started_at_ms, "result": result, "error": error})
    }
}

fn sql_string(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

pub async fn replay(
    State(state): State<SharedState>,
    body: Result<Json<ReplayRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    let Json(req) =
        body.map_err(|e| ApiError::bad_request(format!("invalid replay request: {e}")))?;
    if req.from_ms >= req.to_ms {
        return Err(ApiError::bad_request("from_ms must be before to_ms"));
    }
    if !req.background {
        let progress = Progress::default();
        return Ok(Json(run(&state, &req, &progress).await?).into_response());
    }
    let id = format!("{:016x}", rand::random::<u64>());
    let job = Arc::new(ReplayJob {
        from_ms: req.from_ms,
        to_ms: req.to_ms,
        started_at_ms: chrono::Utc::now().timestamp_millis(),
        progress: Progress::default(),
        outcome: Mutex::new(None),
    });
    state
        .replays
        .lock()
        .expect("replays lock")
        .insert(id.clone(), Arc::clone(&job));
    let task_state = Arc::clone(&state);
    let task_job = Arc::clone(&job);
    tokio::spawn(async move {
        let outcome = run(&task_state, &req, &task_job.progress)
            .await
            .map_err(|e| (e.status.as_u16(), e.message));
        *task_job.outcome.lock().expect("replay job lock") = Some(outcome);
    });
    Ok((axum::http::StatusCode::ACCEPTED, Json(job.view(&id))).into_response())
}

fn find_job(state: &SharedState, id: &str) -> Result<Arc<ReplayJob>, ApiError> {
    let job = state.replays.lock().expect("replays lock").get(id).cloned();
    job.ok_or_else(|| ApiError::not_found(format!("no replay job '{id}'")))
}

/// `GET /api/replay/{job}`: progress, then the result.
pub async fn status(
    State(state): State<SharedState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let job = find_job(&state, &id)?;
    Ok(Json(job.view(&id)))
}

/// `DELETE /api/replay/{job}`: stop a running replay.
pub async fn cancel(
    State(state): State<SharedState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let job = find_job(&state, &id)?;
    job.progress.cancelled.store(true, Relaxed);
    Ok(Json(job.view(&id)))
}

async fn run(
    state: &SharedState,
    req: &ReplayRequest,
    progress: &Progress,
) -> Result<Value, ApiError> {
    let spec: RuleSpec = match (&req.rule_id, &req.sql) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "give either rule_id (a stored rule) or sql (a draft), not both",
            ))
        }
        (None, None) => {
            return Err(ApiError::bad_request(
                "give rule_id (a stored rule) or sql (a draft to backtest)",
            ))
        }
        (Some(id), None) => {
            let rule = state
                .rules
                .get(id)
                .await
                .ok_or_else(|| ApiError::not_found(format!("no rule with id '{id}'")))?;
            let version = req.version.unwrap_or(rule.current.version);
            let stored = state.rules.version(id, version).await.ok_or_else(|| {
                ApiError::not_found(format!("rule '{id}' has no version {version}"))
            })?;
            let compiled = state.compiler.compile(&stored.sql)?;
            let mut spec = rule_spec(&stored, compiled);
            if let Some(c) = req.cooldown_seconds {
                spec.cooldown_ms = c as i64 * 1000;
            }
            spec
        }
        (None, Some(sql)) => RuleSpec {
            id: "draft".into(),
            version: 0,
            name: "draft".into(),
            severity: "medium".into(),
            cooldown_ms: req.cooldown_seconds.unwrap_or(300) as i64 * 1000,
            allowed_lateness_ms: None,
            keep_duplicates: false,
            escalation: None,
            compiled: state.compiler.compile(sql)?,
        },
    };
    let (rule_id, version) = (spec.id.clone(), spec.version);
    let Replayed { events, alerts } =
        replay_rule(&state.history, spec, req.from_ms, req.to_ms, progress).await?;
    let mut body = json!({
        "rule_id": rule_id,
        "version": version,
        "from_ms": req.from_ms,
        "to_ms": req.to_ms,
        "events": events,
        "alerts": alerts,
    });
    if req.audit && req.sql.is_none() {
        body["audit"] = audit(state, &rule_id, version, req, &alerts).await?;
    }
    Ok(body)
}

/// What [`replay_rule`] produced.
#[derive(Debug)]
pub struct Replayed {
    /// Archived events read from the range.
    pub events: usize,
    /// Alerts (fired and suppressed) of windows entirely inside the range,
    /// and of per-event matches inside it.
    pub alerts: Vec<Alert>,
}

/// Replays one rule over the archived events of `[from_ms, to_ms)`: the
/// engine behind `POST /api/replay` (and the `replay` benchmark).
///
/// Events are fed to a fresh engine holding only `spec`, as one partition,
/// in event-time order (then patient, then sequence number, nulls last);
/// `to_ms` is then a final watermark. Alerts of windows that began before
/// `from_ms` or end after `to_ms` are left out (they would miss events).
/// Stops with an error when `progress.cancelled` is set.
///
/// # Streaming, one event-time hour at a time
///
/// The archive is partitioned by event-time hour, late events included (they
/// land in their hour's directory, in files of their own), so the range is
/// read one hour at a time, clipped to the range: each hour's history query
/// opens only that hour's files (see [`catalog::history`]), the hour is
/// sorted on its own, and the sorted hours in turn are exactly the range in
/// event-time order. Hours without data are skipped
/// ([`HistoryCatalog::hours`](catalog::HistoryCatalog::hours)). Memory is
/// bounded by the events of about two hours, not by the range: the hour the
/// engine runs over, and the next one, read and sorted in the background
/// meanwhile (held twice while its sorted copy is made). Progress and
/// cancellation are per batch of the engine.
pub async fn replay_rule(
    history: &catalog::HistoryCatalog,
    spec: RuleSpec,
    from_ms: i64,
    to_ms: i64,
    progress: &Progress,
) -> Result<Replayed, ApiError> {
    let mut engine = Engine::new(EngineConfig::default());
    engine
        .upsert_rule(spec)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    engine.assign_partitions(&[0], 0);
    let now = chrono::Utc::now().timestamp_millis();
    let mut alerts: Vec<Alert> = Vec::new();
    let mut events = 0usize;
    let cancelled =
        |events: usize| ApiError::bad_request(format!("replay cancelled after {events} events"));
    // Only the hours that hold anything: a long range may be mostly empty.
    let hours = history
        .hours(catalog::archive::VITALS, from_ms, to_ms)
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let mut hours = hours.into_iter();
    let mut next = hours
        .next()
        .map(|hour| HourRead::start(history, hour, from_ms, to_ms));
    while let Some(read) = next.take() {
        if progress.cancelled.load(Relaxed) {
            return Err(cancelled(events));
        }
        let sorted = read.finish().await?;
        next = hours
            .next()
            .map(|hour| HourRead::start(history, hour, from_ms, to_ms));
        for batch in sorted {
            events += batch.num_rows();
            progress.events.store(events as u64, Relaxed);
            if let Some(last) = batch
                .column(sql_rules::stream::idx::TIMESTAMP_UNIX_MS)
                .as_any()
                .downcast_ref::<arrow::array::Int64Array>()
                .and_then(|t| t.values().last().copied())
            {
                progress.event_time_ms.store(last, Relaxed);
            }
            if progress.cancelled.load(Relaxed) {
                return Err(cancelled(events));
            }
            let out = engine
                .process(0, &batch, now)
                .map_err(|e| ApiError::internal(e.to_string()))?;
            alerts.extend(out.alerts);
            // An hour can be long: let the runtime's other tasks (the next
            // hour's read among them) have this thread between batches.
            tokio::task::yield_now().await;
        }
    }
    alerts.extend(
        engine
            .advance_watermark(to_ms, now)
            .map_err(|e| ApiError::internal(e.to_string()))?
            .alerts,
    );
    let inside = |a: &Alert| match (a.window_start_ms, a.window_end_ms) {
        (Some(s), Some(e)) => s >= from_ms && e <= to_ms,
        _ => a.event_time_ms >= from_ms && a.event_time_ms < to_ms,
    };
    alerts.retain(inside);
    Ok(Replayed { events, alerts })
}

/// Milliseconds in an hour, the archive's partitioning unit.
const HOUR_MS: i64 = 3_600_000;

/// Rows handed to the engine at a time (DataFusion's default batch size).
const REPLAY_BATCH_ROWS: usize = 8192;

/// The history query for the events of `hour` inside `[from_ms, to_ms)`.
///
/// All the vitals columns (the engine takes batches of the vitals schema),
/// no `ORDER BY` (see [`sort_hour`]). The catalog turns the time bounds,
/// which lie within one hour, into `date = … AND hour = …`, so only that
/// hour's directory is listed and only its files are opened; late events of
/// the hour are in that directory too.
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
    task: tokio::task::JoinHandle<Result<Vec<RecordBatch>, String>>,
}

impl HourRead {
    /// Plans and runs the hour's history query on a task of its own, in the
    /// catalog's session (planning lists the hour's directory, so that too
    /// overlaps with the engine), then sorts it on the blocking pool.
    fn start(history: &catalog::HistoryCatalog, hour: i64, from_ms: i64, to_ms: i64) -> Self {
        let session = history.session().clone();
        let sql = hour_sql(hour, from_ms, to_ms);
        let task = tokio::spawn(async move {
            let read_only = SQLOptions::new()
                .with_allow_ddl(false)
                .with_allow_dml(false)
                .with_allow_statements(false);
            let batches = session
                .sql_with_options(&sql, read_only)
                .await
                .map_err(|e| e.to_string())?
                .collect()
                .await
                .map_err(|e| e.to_string())?;
            tokio::task::spawn_blocking(move || sort_hour(batches))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())
        });
        Self { task }
    }

    /// The hour's events in replay order, in batches of the vitals schema.
    async fn finish(mut self) -> Result<Vec<RecordBatch>, ApiError> {
        match (&mut self.task).await {
            Ok(result) => {
                result.map_err(|e| ApiError::internal(format!("reading the archive: {e}")))
            }
            Err(e) => Err(ApiError::internal(format!("reading the archive: {e}"))),
        }
    }
}

impl Drop for HourRead {
    fn drop(&mut self) {
        // A replay that stops early (error, cancel, client gone) does not
        // leave the next hour being read.
        self.task.abort();
    }
}

/// Sorts the events of one hour into replay order: event time, then
/// patient, then sequence number (nulls last) — the order of `ORDER BY
/// event_time, patient_id, sequence_number` — and cuts the result into
/// batches of [`REPLAY_BATCH_ROWS`] of the vitals schema.
///
/// Only the event times are sorted (an Arrow kernel over one `i64` column);
/// the few runs of equal times are then ordered by patient and sequence
/// number, with the position read as the last tie-break so the order is
/// deterministic. The columns are gathered once, by index, into the output.
fn sort_hour(batches: Vec<RecordBatch>) -> Result<Vec<RecordBatch>, ArrowError> {
    use arrow::array::{Array, AsArray, Int64Array};
    use arrow::datatypes::{TimestampMillisecondType, UInt32Type};
    use sql_rules::stream::idx;

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

/// Diffs replayed alerts with those recorded live for the same rule version
/// and range, by deterministic id.
async fn audit(
    state: &SharedState,
    rule_id: &str,
    version: u32,
    req: &ReplayRequest,
    replayed: &[Alert],
) -> Result<Value, ApiError> {
    let (from, to) = (req.from_ms, req.to_ms);
    let sql = format!(
        "SELECT id, status FROM alerts WHERE rule_id = {} AND rule_version = {version} \
         AND event_time >= to_timestamp_millis({from}) AND event_time < to_timestamp_millis({to}) \
         AND (window_start IS NULL OR (window_start >= to_timestamp_millis({from}) AND window_end <= to_timestamp_millis({to})))",
        sql_string(rule_id),
    );
    let batches = state
        .history
        .query(&sql, &catalog::QueryLimits::default())
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let mut live: BTreeMap<String, String> = BTreeMap::new();
    for b in &batches {
        for r in 0..b.num_rows() {
            let id = sql_rules::json::cell(b.column(0).as_ref(), r);
            let status = sql_rules::json::cell(b.column(1).as_ref(), r);
            if let (Some(id), Some(status)) = (id.as_str(), status.as_str()) {
                live.insert(id.to_string(), status.to_string());
            }
        }
    }
    let replay_ids: BTreeSet<&str> = replayed.iter().map(|a| a.id.as_str()).collect();
    let replay_fired: BTreeSet<&str> = replayed
        .iter()
        .filter(|a| a.status == AlertStatus::Fired)
        .map(|a| a.id.as_str())
        .collect();
    let live_fired: BTreeSet<&str> = live
        .iter()
        .filter(|(_, s)| *s == "fired")
        .map(|(id, _)| id.as_str())
        .collect();
    let both: Vec<&str> = live_fired.intersection(&replay_fired).copied().collect();
    let fired_not_reproduced: Vec<Value> = live_fired
        .difference(&replay_fired)
        .map(|id| {
            let why = if replay_ids.contains(id) {
                "replay suppressed it (cooldown history differs)"
            } else {
                "replay did not produce it (events late or outside the range live, or a window only partly inside it)"
            };
            json!({"id": id, "why": why})
        })
        .collect();
    let reproduced_not_fired: Vec<Value> = replay_fired
        .difference(&live_fired)
        .map(|id| {
            let why = match live.get(*id).map(String::as_str) {
                Some("suppressed") => "suppressed by cooldown when it happened",
                _ => "not evaluated live: the rule version was not active then, or its events arrived after their window closed",
            };
            json!({"id": id, "why": why})
        })
        .collect();
    Ok(json!({
        "both": both,
        "fired_not_reproduced": fired_not_reproduced,
        "reproduced_not_fired": reproduced_not_fired,
        "clean": fired_not_reproduced.is_empty() && reproduced_not_fired.is_empty(),
    }))
}
