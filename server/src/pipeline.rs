//! The pipeline loop: owns the rule engine on a dedicated thread.
//!
//! Sources (Kafka, `POST /api/ingest`, the demo ward) send decoded batches
//! here through a bounded channel, so a slow engine pushes back on them
//! instead of buffering without limit. Rule changes arrive on the same
//! channel, in order with the data, so adding or replacing a rule never
//! stops the others. Alerts leave through an unbounded channel to the
//! delivery task (alerts are few; losing one is not an option).

use std::collections::HashMap;
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow::record_batch::RecordBatch;
use sql_rules::{Alert, Engine, EngineConfig, RuleSpec, RuleStats};
use tokio::sync::mpsc::UnboundedSender;

use crate::metrics::Metrics;

/// Partition id used for events that did not come from Kafka.
pub const LOCAL_PARTITION: i32 = -1;

pub enum Input {
    Batch {
        partition: i32,
        batch: RecordBatch,
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

#[derive(Clone)]
pub struct PipelineHandle {
    tx: SyncSender<Input>,
    pub rule_stats: Arc<Mutex<HashMap<String, RuleStats>>>,
}

impl PipelineHandle {
    /// Sends input, blocking while the pipeline is busy (backpressure).
    pub fn send(&self, input: Input) -> Result<(), PipelineClosed> {
        self.tx.send(input).map_err(|_| PipelineClosed)
    }

    /// Sends from async code without blocking the runtime's worker.
    pub async fn send_async(&self, input: Input) -> Result<(), PipelineClosed> {
        let tx = self.tx.clone();
        tokio::task::spawn_blocking(move || tx.send(input).map_err(|_| PipelineClosed))
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
    metrics: Arc<Metrics>,
    alerts: UnboundedSender<Vec<Alert>>,
    idle_from_source: bool,
) -> PipelineHandle {
    let (tx, rx) = mpsc::sync_channel::<Input>(64);
    let rule_stats = Arc::new(Mutex::new(HashMap::new()));
    let stats = Arc::clone(&rule_stats);
    std::thread::Builder::new()
        .name("wardwatch-engine".into())
        .spawn(move || {
            let mut engine = Engine::new(config);
            let mut last_tick = Instant::now();
            let mut stopped_reply = None;
            loop {
                let input = match rx.recv_timeout(Duration::from_millis(100)) {
                    Ok(input) => Some(input),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => break,
                };
                let result = match input {
                    Some(Input::Batch { partition, batch }) => {
                        let started = Instant::now();
                        let rows = batch.num_rows() as u64;
                        let r = engine.process(partition, &batch, now_ms());
                        metrics.observe_batch(started.elapsed().as_secs_f64());
                        metrics.events_in.fetch_add(rows, std::sync::atomic::Ordering::Relaxed);
                        r
                    }
                    Some(Input::Upsert(spec)) => {
                        let (id, version) = (spec.id.clone(), spec.version);
                        match engine.upsert_rule(*spec) {
                            Ok(()) => tracing::info!(rule = %id, version, "rule activated"),
                            Err(e) => tracing::error!(rule = %id, version, error = %e, "rule could not start"),
                        }
                        Ok(Default::default())
                    }
                    Some(Input::Remove(id)) => {
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
                        Ok(out) => {
                            for e in &out.errors {
                                tracing::error!(error = %e, "rule failed on a batch");
                            }
                            metrics.events_duplicate.fetch_add(out.duplicates, std::sync::atomic::Ordering::Relaxed);
                            metrics.events_late.fetch_add(out.late_events, std::sync::atomic::Ordering::Relaxed);
                            // One send per batch's alerts: each send may wake
                            // the delivery task, a system call.
                            if !out.alerts.is_empty() && alerts.send(out.alerts).is_err() {
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
            tracing::info!("engine thread stopped");
            if let Some(reply) = stopped_reply {
                let _ = reply.send(());
            }
        })
        .expect("spawning the engine thread");
    PipelineHandle { tx, rule_stats }
}
