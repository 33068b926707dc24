//! The pipeline loop: owns the rule engine on a dedicated thread.
//!
//! Sources (Kafka, `POST /api/ingest`, the demo ward) send decoded batches
//! here through a bounded channel, so a slow engine pushes back on them
//! instead of buffering without limit. Rule changes arrive on the same
//! channel, in order with the data, so adding or replacing a rule never
//! stops the others. Alerts leave through an unbounded channel to the
//! delivery task (alerts are few; losing one is not an option).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicI64};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow::record_batch::RecordBatch;
use sql_rules::{
    alert_id, Alert, AlertStatus, Engine, EngineConfig, Explanation, RuleFailure, RuleSpec,
    RuleStats, RuleSuspended,
};
use tokio::sync::mpsc::UnboundedSender;

use crate::metrics::Metrics;
use crate::sink::alerts::{Delivery, DeliveryMark};

/// Partition id used for events that did not come from Kafka.
pub const LOCAL_PARTITION: i32 = -1;

pub enum Input {
    Batch {
        partition: i32,
        batch: RecordBatch,
        /// For a Kafka batch, the last offset it covers (refused events
        /// included; the batch may then be empty): checkpoints record how
        /// far each partition's state reaches.
        last_offset: Option<i64>,
    },
    /// Take the engine's state for a checkpoint (see [`EngineState`]).
    /// Answers `None` when nothing that a checkpoint holds has changed since
    /// the last one (an idle ward is not rewritten every interval).
    Checkpoint(std::sync::mpsc::Sender<Result<Option<EngineState>, String>>),
    /// Restore a checkpoint's engine state (rules already upserted); answers
    /// the rules whose state could not be restored (they start empty).
    Restore {
        bytes: bytes::Bytes,
        source_offsets: BTreeMap<i32, i64>,
        reply: std::sync::mpsc::Sender<Result<Vec<String>, String>>,
    },
    Upsert(Box<RuleSpec>),
    Remove(String),
    Assign(Vec<i32>),
    Revoke(Vec<i32>),
    /// Replies once everything sent before it has been processed.
    Barrier(std::sync::mpsc::Sender<()>),
    /// Shutdown: process everything sent before it, then stop the engine
    /// thread (which closes the alert channel, so delivery drains and ends);
    /// replies once the thread has let go of the alert channel.
    Stop(std::sync::mpsc::Sender<()>),
    /// The Kafka source has nothing buffered: every assigned partition is
    /// caught up, so partitions without data may now count as idle.
    CaughtUp,
}

/// The engine's state at one point of its input, for a checkpoint.
pub struct EngineState {
    pub bytes: Vec<u8>,
    /// Per Kafka partition, the next offset the state has not seen.
    pub source_offsets: BTreeMap<i32, i64>,
    /// The rules (id, version) the state belongs to.
    pub rules: Vec<(String, u32)>,
    /// Answered once every alert made before the state was taken is
    /// confirmed delivered (see [`Delivery::Mark`]).
    pub delivered: tokio::sync::oneshot::Receiver<DeliveryMark>,
}

#[derive(Clone)]
pub struct PipelineHandle {
    tx: SyncSender<Input>,
    pub rule_stats: Arc<Mutex<HashMap<String, RuleStats>>>,
    /// Per rule, its run-time failures (see [`RuleHealth`]).
    pub rule_health: Arc<Mutex<HashMap<String, RuleHealth>>>,
    /// Whether the engine thread is making progress (see [`EngineHealth`]).
    pub health: Arc<EngineHealth>,
    /// Per partition: latest event time and whether idle (refreshed every
    /// 100 ms, for metrics).
    pub partition_clocks: Arc<Mutex<Vec<(i32, i64, bool)>>>,
}

/// A rule that fails at run time keeps running (each input is a new try)
/// and never stops the others, but it must not look healthy: its errors
/// are counted and the latest is kept, for the API, the UI and metrics.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RuleHealth {
    pub errors_total: u64,
    pub last_error: Option<String>,
    pub last_error_at_ms: Option<i64>,
}

/// A rule is `failing` while its latest error is this recent.
pub const FAILING_FOR_MS: i64 = 60_000;

impl RuleHealth {
    pub fn failing(&self, now_ms: i64) -> bool {
        self.last_error_at_ms
            .is_some_and(|at| now_ms.saturating_sub(at) < FAILING_FOR_MS)
    }
}

/// The engine thread's liveness. An input that keeps the thread busy past
/// the stall limit (a runaway rule, a deadlock) makes `/healthz` fail, so
/// an orchestrator restarts the process instead of alerting silently
/// stopping while the process looks alive.
#[derive(Default)]
pub struct EngineHealth {
    /// Inputs sent and not yet taken by the engine thread.
    queued: AtomicI64,
    /// Processing time at which the thread took its current input; 0 while
    /// it waits for input.
    busy_since_ms: AtomicI64,
    /// Set when the thread has exited (stopped, or died).
    exited: AtomicBool,
}

impl EngineHealth {
    /// Inputs waiting for the engine thread.
    pub fn queued(&self) -> i64 {
        self.queued.load(Relaxed).max(0)
    }

    /// How long the thread has been on its current input, when that is at
    /// least `limit_ms`; or `Some(0)` when the thread has exited while input
    /// is waiting. `None`: healthy.
    pub fn stalled_ms(&self, now_ms: i64, limit_ms: i64) -> Option<i64> {
        if self.exited.load(Relaxed) {
            return (self.queued() > 0).then_some(0);
        }
        let since = self.busy_since_ms.load(Relaxed);
        let busy = if since == 0 { 0 } else { now_ms - since };
        (since != 0 && busy >= limit_ms).then_some(busy)
    }
}

impl PipelineHandle {
    /// Sends input, blocking while the pipeline is busy (backpressure).
    pub fn send(&self, input: Input) -> Result<(), PipelineClosed> {
        self.health.queued.fetch_add(1, Relaxed);
        self.tx.send(input).map_err(|_| {
            self.health.queued.fetch_sub(1, Relaxed);
            PipelineClosed
        })
    }

    /// Sends from async code without blocking the runtime's worker.
    pub async fn send_async(&self, input: Input) -> Result<(), PipelineClosed> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.send(input))
            .await
            .map_err(|_| PipelineClosed)?
    }

    /// Processes everything sent before this call, then stops the engine
    /// thread; returns once it has stopped (or already had).
    pub async fn stop(&self) {
        let (tx, rx) = std::sync::mpsc::channel();
        if self.send_async(Input::Stop(tx)).await.is_ok() {
            let _ = tokio::task::spawn_blocking(move || rx.recv()).await;
        }
    }

    /// Waits until every input sent before this call has been processed.
    pub async fn barrier(&self) -> Result<(), PipelineClosed> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.send_async(Input::Barrier(tx)).await?;
        tokio::task::spawn_blocking(move || rx.recv().map_err(|_| PipelineClosed))
            .await
            .map_err(|_| PipelineClosed)?
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the pipeline has stopped")]
pub struct PipelineClosed;

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Starts the engine thread.
///
/// `idle_from_source`: partitions become idle only on the Kafka source's
/// [`Input::CaughtUp`], never merely because processing time passed. While a
/// consumer works through a backlog it reads partitions in long chunks, and a
/// partition waiting its turn must not be declared idle (its events would
/// then be late). Without Kafka, a timer drives idleness.
pub fn start(
    config: EngineConfig,
    forget_patients_after_ms: i64,
    metrics: Arc<Metrics>,
    alerts: UnboundedSender<Delivery>,
    idle_from_source: bool,
    role: crate::config::InstanceRole,
) -> PipelineHandle {
    let (tx, rx) = mpsc::sync_channel::<Input>(64);
    let rule_stats = Arc::new(Mutex::new(HashMap::new()));
    let stats = Arc::clone(&rule_stats);
    let rule_health: Arc<Mutex<HashMap<String, RuleHealth>>> = Arc::default();
    let failures = Arc::clone(&rule_health);
    let health = Arc::new(EngineHealth::default());
    let liveness = Arc::clone(&health);
    let partition_clocks: Arc<Mutex<Vec<(i32, i64, bool)>>> = Arc::default();
    let clocks = Arc::clone(&partition_clocks);
    std::thread::Builder::new()
        .name("wardwatch-engine".into())
        .spawn(move || {
            // Marks the thread exited however it ends, panics included.
            struct Exited(Arc<EngineHealth>);
            impl Drop for Exited {
                fn drop(&mut self) {
                    self.0.exited.store(true, Relaxed);
                }
            }
            let _exited = Exited(Arc::clone(&liveness));
            let new_engine = || {
                let mut engine = Engine::new(config.clone());
                engine.set_forget_patients_after_ms(forget_patients_after_ms);
                engine
            };
            let mut engine = new_engine();
            // Per Kafka partition, the next offset the engine has not seen.
            let mut covered: BTreeMap<i32, i64> = BTreeMap::new();
            // Whether anything a checkpoint holds changed since the last one.
            let mut changed = true;
            let mut last_tick = Instant::now();
            let mut stopped_reply = None;
            loop {
                liveness.busy_since_ms.store(0, Relaxed);
                let input = match rx.recv_timeout(Duration::from_millis(100)) {
                    Ok(input) => {
                        liveness.queued.fetch_sub(1, Relaxed);
                        Some(input)
                    }
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => break,
                };
                // Busy from here until the next wait, timer-driven ticks too.
                liveness.busy_since_ms.store(now_ms(), Relaxed);
                // Ticks close windows too, but a restore that reopens them
                // closes them again the same way (same alert ids).
                changed |= matches!(
                    input,
                    Some(
                        Input::Batch { .. }
                            | Input::Upsert(_)
                            | Input::Remove(_)
                            | Input::Assign(_)
                            | Input::Revoke(_)
                            | Input::Restore { .. }
                    )
                );
                let result = match input {
                    Some(Input::Batch {
                        partition,
                        batch,
                        last_offset,
                    }) => {
                        if let Some(last) = last_offset {
                            let next = covered.entry(partition).or_insert(last + 1);
                            *next = (*next).max(last + 1);
                        }
                        if batch.num_rows() == 0 {
                            // Every event refused: only the offsets count.
                            Ok(Default::default())
                        } else {
                            let started = Instant::now();
                            let rows = batch.num_rows() as u64;
                            let r = engine.process(partition, &batch, now_ms());
                            metrics.observe_batch(started.elapsed().as_secs_f64());
                            metrics.events_in.fetch_add(rows, Relaxed);
                            r
                        }
                    }
                    // Another instance runs it (see `[instance] role`); it
                    // may have changed kind with this version.
                    Some(Input::Upsert(spec)) if !role.runs(spec.compiled.keyed_by_patient) => {
                        failures.lock().expect("rule health lock").remove(&spec.id);
                        if engine.remove_rule(&spec.id) {
                            tracing::info!(rule = %spec.id, version = spec.version, ?role, "rule runs on another instance");
                        }
                        Ok(Default::default())
                    }
                    // The version already running: the rule watcher and the
                    // API may both send it; its state must not restart.
                    Some(Input::Upsert(spec))
                        if engine
                            .rules()
                            .any(|(s, _)| s.id == spec.id && s.version == spec.version) =>
                    {
                        Ok(Default::default())
                    }
                    Some(Input::Upsert(spec)) => {
                        let (id, version) = (spec.id.clone(), spec.version);
                        // A new version starts with a clean record.
                        failures.lock().expect("rule health lock").remove(&id);
                        match engine.upsert_rule(*spec) {
                            Ok(()) => tracing::info!(rule = %id, version, "rule activated"),
                            Err(e) => tracing::error!(rule = %id, version, error = %e, "rule could not start"),
                        }
                        Ok(Default::default())
                    }
                    Some(Input::Remove(id)) => {
                        failures.lock().expect("rule health lock").remove(&id);
                        if engine.remove_rule(&id) {
                            tracing::info!(rule = %id, "rule deactivated");
                        }
                        Ok(Default::default())
                    }
                    Some(Input::Assign(p)) => {
                        engine.assign_partitions(&p, now_ms());
                        Ok(Default::default())
                    }
                    Some(Input::Revoke(p)) => {
                        engine.revoke_partitions(&p);
                        Ok(Default::default())
                    }
                    Some(Input::Checkpoint(reply)) if !changed => {
                        let _ = reply.send(Ok(None));
                        Ok(Default::default())
                    }
                    Some(Input::Checkpoint(reply)) => {
                        let taken = engine.snapshot().map_err(|e| e.to_string());
                        changed = taken.is_err();
                        let state = taken.map(|bytes| {
                            // Through the alert channel, behind every alert
                            // made before the state was taken.
                            let (mark, delivered) = tokio::sync::oneshot::channel();
                            let _ = alerts.send(Delivery::Mark(mark));
                            EngineState {
                                bytes,
                                source_offsets: covered.clone(),
                                rules: engine
                                    .rules()
                                    .map(|(spec, _)| (spec.id.clone(), spec.version))
                                    .collect(),
                                delivered,
                            }
                        });
                        let _ = reply.send(state.map(Some));
                        Ok(Default::default())
                    }
                    Some(Input::Restore {
                        bytes,
                        source_offsets,
                        reply,
                    }) => {
                        let restored = engine.restore(&bytes, now_ms()).map_err(|e| e.to_string());
                        if restored.is_ok() {
                            covered = source_offsets;
                        } else {
                            // A restore that failed half-way must leave no
                            // partial state: start over, empty, same rules.
                            let specs: Vec<RuleSpec> =
                                engine.rules().map(|(spec, _)| spec.clone()).collect();
                            engine = new_engine();
                            for spec in specs {
                                let _ = engine.upsert_rule(spec);
                            }
                        }
                        let _ = reply.send(restored);
                        Ok(Default::default())
                    }
                    Some(Input::Barrier(reply)) => {
                        let _ = reply.send(());
                        Ok(Default::default())
                    }
                    Some(Input::CaughtUp) => engine.tick(now_ms()),
                    Some(Input::Stop(reply)) => {
                        stopped_reply = Some(reply);
                        break;
                    }
                    None => Ok(Default::default()),
                };
                let mut outputs = vec![result];
                if last_tick.elapsed() >= Duration::from_millis(100) {
                    last_tick = Instant::now();
                    if !idle_from_source {
                        outputs.push(engine.tick(now_ms()));
                    }
                    *clocks.lock().expect("clocks lock") = engine.partition_clocks();
                    metrics
                        .patients_held
                        .store(engine.patients_held() as u64, Relaxed);
                    metrics
                        .patients_forgotten
                        .store(engine.patients_forgotten(), Relaxed);
                    let mut s = stats.lock().expect("stats lock");
                    s.clear();
                    for (spec, _) in engine.rules() {
                        if let Some(st) = engine.rule_stats(&spec.id) {
                            s.insert(spec.id.clone(), st);
                        }
                    }
                }
                for out in outputs {
                    match out {
                        Ok(mut out) => {
                            if !out.errors.is_empty() {
                                let system =
                                    record_failures(&engine, &out.errors, &failures, &metrics);
                                out.alerts.extend(system);
                            }
                            if !out.suspended.is_empty() {
                                let system = record_suspensions(&engine, &out.suspended, &metrics);
                                out.alerts.extend(system);
                                // Shown at once, not at the next refresh.
                                let mut s = stats.lock().expect("stats lock");
                                for suspended in &out.suspended {
                                    if let Some(st) = engine.rule_stats(&suspended.rule_id) {
                                        s.insert(suspended.rule_id.clone(), st);
                                    }
                                }
                            }
                            metrics.events_duplicate.fetch_add(out.duplicates, Relaxed);
                            metrics.events_late.fetch_add(out.late_events, Relaxed);
                            // One send per batch's alerts: each send may wake
                            // the delivery task, a system call.
                            if !out.alerts.is_empty()
                                && alerts.send(Delivery::Alerts(out.alerts)).is_err()
                            {
                                tracing::error!("alert delivery task has stopped");
                            }
                        }
                        // A failing rule must not stop the others; the error
                        // names the rule.
                        Err(e) => tracing::error!(error = %e, "engine error"),
                    }
                }
            }
            // Dropping the alert sender lets delivery drain what it has and end.
            drop(alerts);
            liveness.busy_since_ms.store(0, Relaxed);
            tracing::info!("engine thread stopped");
            if let Some(reply) = stopped_reply {
                let _ = reply.send(());
            }
        })
        .expect("spawning the engine thread");
    PipelineHandle {
        tx,
        rule_stats,
        rule_health,
        health,
        partition_clocks,
    }
}

/// Counts each rule's failures and keeps the latest; a rule that starts
/// failing (no error in the last [`FAILING_FOR_MS`]) raises one
/// `rule_failing` system alert, so the on-call hears of it without reading
/// logs. Returns those alerts.
fn record_failures(
    engine: &Engine,
    errors: &[RuleFailure],
    failures: &Mutex<HashMap<String, RuleHealth>>,
    metrics: &Metrics,
) -> Vec<Alert> {
    let now = now_ms();
    let mut alerts = Vec::new();
    let mut failures = failures.lock().expect("rule health lock");
    for failure in errors {
        tracing::error!(error = %failure, "rule failed on a batch");
        metrics.rule_errors.fetch_add(1, Relaxed);
        let health = failures.entry(failure.rule_id.clone()).or_default();
        let starts_failing = !health.failing(now);
        health.errors_total += 1;
        health.last_error = Some(failure.error.to_string());
        health.last_error_at_ms = Some(now);
        if !starts_failing {
            continue;
        }
        let Some((spec, _)) = engine.rules().find(|(s, _)| s.id == failure.rule_id) else {
            continue;
        };
        alerts.push(rule_failing_alert(spec, &failure.error.to_string(), now));
    }
    alerts
}

/// A rule over a run-time budget has been suspended by the engine (its
/// state dropped, no longer evaluated): count it, log it, and raise one
/// `rule_suspended` system alert, since a rule that stops running stops
/// alerting. Returns those alerts.
fn record_suspensions(
    engine: &Engine,
    suspended: &[RuleSuspended],
    metrics: &Metrics,
) -> Vec<Alert> {
    let now = now_ms();
    let mut alerts = Vec::new();
    for s in suspended {
        tracing::warn!(rule = %s.rule_id, reason = ?s.suspension.reason, budget = s.suspension.budget,
            observed = s.suspension.observed, "rule suspended: {}", s.suspension.message);
        metrics.rules_suspended.fetch_add(1, Relaxed);
        let Some((spec, _)) = engine.rules().find(|(spec, _)| spec.id == s.rule_id) else {
            continue;
        };
        let mut alert = system_alert(spec, "rule_suspended", &s.suspension.message, now);
        let reason = serde_json::to_value(s.suspension.reason).unwrap_or_default();
        alert.values.insert("reason".into(), reason);
        alert
            .values
            .insert("budget".into(), s.suspension.budget.into());
        alert
            .values
            .insert("observed".into(), s.suspension.observed.into());
        alert.explanation.condition =
            "the rule went over a run-time budget and was suspended".into();
        alerts.push(alert);
    }
    alerts
}

/// The system alert for a rule that fails at run time: keyed by the rule,
/// on the alert topic like any fired alert.
fn rule_failing_alert(spec: &RuleSpec, error: &str, now: i64) -> Alert {
    system_alert(spec, "rule_failing", error, now)
}

/// An alert about a rule itself (`kind`: `rule_failing`, `rule_suspended`),
/// keyed by the rule, delivered like any fired alert.
fn system_alert(spec: &RuleSpec, kind: &str, error: &str, now: i64) -> Alert {
    let mut key = serde_json::Map::new();
    key.insert("rule_id".into(), spec.id.clone().into());
    let mut values = serde_json::Map::new();
    values.insert("error".into(), error.into());
    values.insert("rule_name".into(), spec.name.clone().into());
    Alert {
        id: alert_id(&spec.id, spec.version, &key, &format!("{kind}@{now}")),
        rule_id: spec.id.clone(),
        rule_version: spec.version,
        rule_name: format!("{kind}: {}", spec.name),
        severity: "high".into(),
        status: AlertStatus::Fired,
        key,
        // About a rule, not about any hospital's patients.
        hospital_id: None,
        window_start_ms: None,
        window_end_ms: None,
        values,
        event_time_ms: now,
        fired_at_ms: now,
        explanation: Explanation {
            condition: "the rule failed to evaluate at run time".into(),
            event_count: 0,
            first_event_ms: now,
            last_event_ms: now,
            first_sequence_number: None,
            last_sequence_number: None,
            suppressed_by: None,
            escalated_from: None,
            late: false,
            clears: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_engine_is_stalled_only_when_one_input_takes_past_the_limit_or_it_died_with_input_waiting(
    ) {
        let h = EngineHealth::default();
        // Waiting for input: healthy however long.
        assert_eq!(h.stalled_ms(1_000_000, 15_000), None);
        // Busy for 10 s of a 15 s limit: healthy; for 20 s: stalled.
        h.busy_since_ms.store(100_000, Relaxed);
        assert_eq!(h.stalled_ms(110_000, 15_000), None);
        assert_eq!(h.stalled_ms(120_000, 15_000), Some(20_000));
        // Exited with nothing waiting (a clean stop): not a stall.
        h.busy_since_ms.store(0, Relaxed);
        h.exited.store(true, Relaxed);
        assert_eq!(h.stalled_ms(120_000, 15_000), None);
        // Exited (died) while input waits: stalled.
        h.queued.store(3, Relaxed);
        assert_eq!(h.stalled_ms(120_000, 15_000), Some(0));
    }

    #[test]
    fn a_rule_counts_as_failing_for_a_minute_after_its_latest_error() {
        let mut r = RuleHealth::default();
        assert!(!r.failing(1_000));
        r.last_error_at_ms = Some(1_000);
        assert!(r.failing(1_000 + FAILING_FOR_MS - 1));
        assert!(!r.failing(1_000 + FAILING_FOR_MS));
    }
}
