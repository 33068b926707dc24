//! Checkpoints and recovery: what lets a process be killed at any moment
//! and lose nothing, repeat nothing.
//!
//! Every `[pipeline] checkpoint_interval_ms` the engine thread takes its
//! state (open windows, cooldowns, duplicate memory, partition clocks) at a
//! point of its input, with the Kafka offsets that point covers; a mark
//! follows the alerts made before it through delivery, and the checkpoint
//! is written once Kafka has confirmed all of them. Only then may the
//! consumer commit up to those offsets ([`crate::intake::CommitGate`]).
//!
//! On start the newest checkpoint is restored before the source reads:
//! - the engine resumes from its state; Kafka batches below its offsets are
//!   archived (again, if the archive had not written them) but skip the
//!   engine, so no window is lost, split or counted twice;
//! - `alert-events` is read from the position the checkpoint records to
//!   its end, to learn which alerts were delivered after the state was
//!   taken: the restored engine makes them again with the same ids, and
//!   delivery sends none of them again (exactly once on the topic, without
//!   Kafka transactions);
//! - the alerts made before the state was taken that the alert history
//!   had not written yet travel in the checkpoint (fired and suppressed:
//!   the latter are never on Kafka), and are written to it if it lacks them.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use catalog::checkpoints::{CheckpointHeader, CheckpointStore};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use sql_rules::Alert;

use crate::archive::ArchiveHandle;
use crate::config::KafkaConfig;
use crate::intake::Intake;
use crate::metrics::Metrics;
use crate::pipeline::{Input, PipelineHandle};
use crate::shutdown::ShutdownNotice;
use crate::sink::alerts::Delivered;
use crate::sink::kafka::client_config;

/// Checkpoints kept: the newest, and the one before in case it is damaged.
const KEEP: usize = 2;

/// How long reading `alert-events` back may take at start.
const READ_BACK_LIMIT: Duration = Duration::from_secs(15);

/// Takes checkpoints, one at a time.
pub struct Checkpointer {
    store: CheckpointStore,
    pipeline: PipelineHandle,
    intake: Intake,
    metrics: Arc<Metrics>,
    state: tokio::sync::Mutex<State>,
}

struct State {
    next_sequence: u64,
    /// What the latest checkpoint cost in work: taking the state (queue
    /// wait included) and writing the file, not the wait for Kafka to
    /// confirm alerts. Zero after a failure or when nothing was written.
    work: Duration,
}

impl Checkpointer {
    pub async fn new(
        store: CheckpointStore,
        pipeline: PipelineHandle,
        intake: Intake,
        metrics: Arc<Metrics>,
    ) -> Result<Self> {
        let next_sequence = store.next_sequence().await.context("listing checkpoints")?;
        intake.gate().require_checkpoints();
        Ok(Self {
            store,
            pipeline,
            intake,
            metrics,
            state: tokio::sync::Mutex::new(State {
                next_sequence,
                work: Duration::ZERO,
            }),
        })
    }

    /// Takes one checkpoint: the engine's state, then (once every alert
    /// made before it is confirmed by Kafka) the file, then the commit
    /// gate's new bound, then old checkpoints go.
    pub async fn checkpoint(&self) -> Result<()> {
        let mut state = self.state.lock().await;
        let started = Instant::now();
        state.work = Duration::ZERO;
        let result = self.checkpoint_locked(&mut state).await;
        match &result {
            Ok(None) => {}
            Ok(Some(bytes)) => {
                self.metrics.checkpoints.fetch_add(1, Relaxed);
                self.metrics.checkpoint_bytes.store(*bytes, Relaxed);
                self.metrics
                    .checkpoint_micros
                    .store(started.elapsed().as_micros() as u64, Relaxed);
            }
            Err(e) => {
                self.metrics.checkpoint_failures.fetch_add(1, Relaxed);
                tracing::error!(error = %e, "checkpoint failed; offsets stay committed at the previous one");
            }
        }
        result.map(|_| ())
    }

    /// `None`: nothing changed since the last checkpoint, none written.
    async fn checkpoint_locked(&self, state: &mut State) -> Result<Option<u64>> {
        let taken_at_ms = chrono::Utc::now().timestamp_millis();
        let asked = Instant::now();
        let (tx, rx) = std::sync::mpsc::channel();
        self.pipeline
            .send_async(Input::Checkpoint(tx))
            .await
            .map_err(|_| anyhow!("the engine has stopped"))?;
        let engine = tokio::task::spawn_blocking(move || rx.recv())
            .await?
            .map_err(|_| anyhow!("the engine has stopped"))?
            .map_err(|e| anyhow!("taking the engine's state: {e}"))?;
        let Some(engine) = engine else {
            return Ok(None);
        };
        let taking = asked.elapsed();
        // Every alert made before the state was taken is on Kafka.
        let mark = engine
            .delivered
            .await
            .map_err(|_| anyhow!("alert delivery has stopped"))?;
        let mut header = CheckpointHeader {
            sequence: state.next_sequence,
            taken_at_ms,
            source_offsets: engine.source_offsets.clone(),
            alert_positions: mark.positions,
            unwritten_alerts: mark.unwritten,
            rules: engine.rules,
            engine_bytes: 0,
        };
        let writing = Instant::now();
        let bytes = match self.store.write(&header, &engine.bytes).await {
            Err(catalog::CatalogError::AlreadyExists { path }) => {
                // Someone else wrote this sequence: move past theirs.
                tracing::warn!(%path, "checkpoint sequence taken; another writer shares the data dir?");
                header.sequence = self.store.next_sequence().await?;
                self.store.write(&header, &engine.bytes).await?
            }
            other => other?,
        };
        state.next_sequence = header.sequence + 1;
        state.work = taking + writing.elapsed();
        self.intake.gate().checkpointed(&engine.source_offsets);
        self.metrics
            .checkpoint_at_ms
            .store(taken_at_ms.max(0) as u64, Relaxed);
        if let Err(e) = self.store.prune(KEEP).await {
            tracing::warn!(error = %e, "deleting old checkpoints");
        }
        Ok(Some(bytes))
    }

    /// Checkpoints every `interval` until the shutdown notice (the Kafka
    /// source takes the last one as it stops).
    ///
    /// A checkpoint of a large state costs the engine its snapshot and a
    /// core its write; at most `max_overhead_percent` of the time goes to
    /// them: the next starts no sooner than [`pause_after`] the last.
    pub fn spawn_periodic(
        self: Arc<Self>,
        interval: Duration,
        max_overhead_percent: u64,
        stop: ShutdownNotice,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut wait = interval;
            loop {
                self.metrics
                    .checkpoint_wait_micros
                    .store(wait.as_micros() as u64, Relaxed);
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.clone().requested() => return,
                }
                let _ = self.checkpoint().await;
                let work = self.state.lock().await.work;
                wait = pause_after(interval, work, max_overhead_percent);
            }
        })
    }
}

/// The longest wait between checkpoints the overhead bound may set: a
/// stall must not keep commits (which wait for checkpoints) back for long.
pub const MAX_PAUSE: Duration = Duration::from_secs(300);

/// How long to wait after a checkpoint whose work (taking the state and
/// writing it) took `took`: `interval`, or longer so that checkpoints take
/// at most `max_overhead_percent` of the time (0 or ≥ 100: no bound), but
/// never more than [`MAX_PAUSE`] (or `interval`, if that is longer).
pub fn pause_after(interval: Duration, took: Duration, max_overhead_percent: u64) -> Duration {
    if max_overhead_percent == 0 || max_overhead_percent >= 100 {
        return interval;
    }
    let p = max_overhead_percent as f64;
    interval.max(took.mul_f64((100.0 - p) / p).min(MAX_PAUSE))
}

/// What a start-up restore found.
#[derive(Default)]
pub struct Restored {
    /// Alerts delivered before the crash that the restored engine will make
    /// again.
    pub delivered: Delivered,
    /// The alert topic's end per partition now, before this run delivers.
    pub alert_topic_start: BTreeMap<i32, i64>,
}

/// Restores the newest checkpoint into the engine (rules already given to
/// it) and learns which alerts were delivered since. Without a usable
/// checkpoint the engine starts empty at the committed offsets.
#[allow(clippy::too_many_arguments)]
pub async fn restore(
    store: &CheckpointStore,
    pipeline: &PipelineHandle,
    intake: &Intake,
    history: &catalog::HistoryCatalog,
    alerts_archive: &ArchiveHandle,
    kafka: &KafkaConfig,
    brokers: &str,
    metrics: &Metrics,
) -> Result<Restored> {
    let started = Instant::now();
    let mut restored = Restored::default();
    let (cfg, topic) = (kafka.clone(), brokers.to_string());
    let alerts_topic = kafka.alerts_topic.clone();
    restored.alert_topic_start = tokio::task::spawn_blocking({
        let alerts_topic = alerts_topic.clone();
        move || topic_ends(&cfg, &topic, &alerts_topic)
    })
    .await?
    .unwrap_or_else(|e| {
        tracing::warn!(error = %e, "reading the alert topic's end; a restore after a crash reads it from the start");
        BTreeMap::new()
    });
    let checkpoint = match store.latest().await {
        Ok(Some(c)) => c,
        Ok(None) => return Ok(restored),
        Err(e) => {
            tracing::error!(error = %e, "reading checkpoints; starting with empty windows");
            return Ok(restored);
        }
    };
    let header = checkpoint.header;
    let (tx, rx) = std::sync::mpsc::channel();
    pipeline
        .send_async(Input::Restore {
            bytes: checkpoint.engine,
            source_offsets: header.source_offsets.clone(),
            reply: tx,
        })
        .await
        .map_err(|_| anyhow!("the engine has stopped"))?;
    let outcome = tokio::task::spawn_blocking(move || rx.recv())
        .await?
        .map_err(|_| anyhow!("the engine has stopped"))?;
    // "id vN" of the rules whose state was not restored.
    let not_restored: Vec<String> = match outcome {
        Ok(skipped) => {
            for rule in &skipped {
                tracing::warn!(rule = %rule, "rule state not restored: the rule changed since the checkpoint; its windows start empty");
            }
            skipped
        }
        Err(e) => {
            tracing::error!(error = %e, sequence = header.sequence, "checkpoint not restored; windows start empty");
            return Ok(restored);
        }
    };
    // The state holds every event below these offsets.
    intake.skip_engine_below(&header.source_offsets);
    intake.gate().checkpointed(&header.source_offsets);

    // Which alerts went out after the state was taken.
    let (cfg, brokers_owned, from) = (
        kafka.clone(),
        brokers.to_string(),
        header.alert_positions.clone(),
    );
    let ends = restored.alert_topic_start.clone();
    let read_back = tokio::task::spawn_blocking(move || {
        read_alerts(&cfg, &brokers_owned, &alerts_topic, &from, &ends)
    })
    .await?
    .unwrap_or_else(|e| {
        tracing::error!(error = %e, "reading alert-events back after a restore; alerts may be delivered twice");
        Vec::new()
    });
    // Only what the restored state's rules will make again (not another
    // deployment's alerts on a shared topic, not alerts about a rule, whose
    // ids carry the time they were raised): each is awaited, and until it
    // comes, later checkpoints keep reading the topic from its position.
    // A rule that changed version since makes no alert of the old one
    // again: its ids are not awaited.
    let versions: std::collections::HashSet<(&str, u32)> = header
        .rules
        .iter()
        .filter(|(id, version)| !not_restored.contains(&format!("{id} v{version}")))
        .map(|(id, version)| (id.as_str(), *version))
        .collect();
    restored.delivered.on_kafka = read_back
        .iter()
        .filter(|(_, _, a)| versions.contains(&(a.rule_id.as_str(), a.rule_version)))
        .filter(|(_, _, a)| a.window_end_ms.is_some() || a.patient_id().is_some())
        .map(|(partition, offset, a)| (a.id.clone(), (*partition, *offset)))
        .collect();
    // This run's checkpoints start from the restored one's positions: the
    // alerts past them are not made again yet.
    restored.alert_topic_start = header.alert_positions.clone();

    // The history: what it already holds is not recorded again (the
    // restored engine makes alerts of the last moments again); what died
    // in its buffer before the state was taken is recorded now, durably.
    let since = read_back
        .iter()
        .map(|(_, _, a)| a)
        .chain(&header.unwritten_alerts)
        .map(|a| a.event_time_ms)
        .chain([header.taken_at_ms])
        .min()
        .unwrap_or(header.taken_at_ms)
        .saturating_sub(24 * 3_600_000);
    let query = catalog::alert_history::AlertQuery {
        since_ms: Some(since),
        limit: 1_000_000,
        ..Default::default()
    };
    match catalog::alert_history::recent_alerts(history, &query).await {
        Ok(known) => {
            restored.delivered.in_history = known.into_iter().map(|a| a.id).collect();
        }
        Err(e) => tracing::error!(error = %e, "reading alert history after a restore"),
    }
    let missing: Vec<Alert> = header
        .unwritten_alerts
        .into_iter()
        .filter(|a| !restored.delivered.in_history.contains(&a.id))
        .collect();
    if !missing.is_empty() {
        let batch = catalog::archive::alerts_to_batch(&missing)?;
        let written = alerts_archive
            .send_local_durable(batch)
            .await
            .map_err(|e| anyhow!("{e}"))?;
        written.await.map_err(|e| anyhow!("{e}"))?;
        tracing::info!(
            alerts = missing.len(),
            "alerts the history lost in the crash written to it again"
        );
        restored
            .delivered
            .in_history
            .extend(missing.into_iter().map(|a| a.id));
    }
    let took = started.elapsed();
    metrics
        .restore_micros
        .store(took.as_micros().max(1) as u64, Relaxed);
    tracing::info!(
        sequence = header.sequence,
        taken_at_ms = header.taken_at_ms,
        partitions = header.source_offsets.len(),
        alerts_already_delivered = restored.delivered.on_kafka.len(),
        elapsed_ms = took.as_millis() as u64,
        "checkpoint restored"
    );
    Ok(restored)
}

fn reader(kafka: &KafkaConfig, brokers: &str) -> Result<BaseConsumer> {
    let mut cfg = client_config(kafka, brokers);
    // Not a group member: reads by assignment, commits nothing.
    cfg.set("group.id", "wardwatch-recovery")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        // wardwatch writes no transactions, so nothing is uncommitted; and
        // a broker whose last stable offset falls short of the newest
        // record batch's end (tansu reports that batch's base + 1) would
        // otherwise hide that batch's tail.
        .set("isolation.level", "read_uncommitted")
        .set("fetch.wait.max.ms", kafka.fetch_wait_max_ms.to_string());
    cfg.create().context("creating a Kafka reader")
}

/// Each partition's end (high watermark) of `topic`; empty when the topic
/// does not exist yet.
fn topic_ends(kafka: &KafkaConfig, brokers: &str, topic: &str) -> Result<BTreeMap<i32, i64>> {
    let consumer = reader(kafka, brokers)?;
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(5))
        .with_context(|| format!("metadata of {topic}"))?;
    let mut ends = BTreeMap::new();
    for t in metadata.topics().iter().filter(|t| t.name() == topic) {
        for p in t.partitions() {
            let (_, high) = consumer
                .fetch_watermarks(topic, p.id(), Duration::from_secs(5))
                .with_context(|| format!("end of {topic}/{}", p.id()))?;
            ends.insert(p.id(), high);
        }
    }
    Ok(ends)
}

/// The alerts on `topic`, with their partition and offset, from `from` (per
/// partition; a partition not named is read from its start) to `ends` (read
/// at start, before this run delivered anything).
fn read_alerts(
    kafka: &KafkaConfig,
    brokers: &str,
    topic: &str,
    from: &BTreeMap<i32, i64>,
    ends: &BTreeMap<i32, i64>,
) -> Result<Vec<(i32, i64, Alert)>> {
    let consumer = reader(kafka, brokers)?;
    let mut tpl = TopicPartitionList::new();
    let mut remaining: BTreeMap<i32, i64> = BTreeMap::new();
    let partitions: std::collections::BTreeSet<i32> =
        ends.keys().chain(from.keys()).copied().collect();
    if partitions.is_empty() {
        return Ok(Vec::new());
    }
    for partition in partitions {
        let start = from.get(&partition).copied().unwrap_or(0);
        // Read even when the reported end is not past the start: it may
        // fall short of the true end.
        tpl.add_partition_offset(topic, partition, Offset::Offset(start))?;
        if let Some(&end) = ends.get(&partition).filter(|&&end| start < end) {
            remaining.insert(partition, end);
        }
    }
    consumer
        .assign(&tpl)
        .context("assigning alert partitions")?;
    let deadline = Instant::now() + READ_BACK_LIMIT;
    let mut alerts = Vec::new();
    // The broker may report an end short of the last record batch's tail
    // (tansu answers the batch's base + 1): once a partition reaches it,
    // poll on until the broker has nothing more to hand over.
    let mut quiet_polls = 0;
    while quiet_polls < 3 {
        if Instant::now() > deadline {
            return Err(anyhow!(
                "alert-events not read to its end within {READ_BACK_LIMIT:?}"
            ));
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(msg)) => {
                if let Some(end) = remaining.get(&msg.partition()) {
                    if msg.offset() + 1 >= *end {
                        remaining.remove(&msg.partition());
                    }
                }
                match msg.payload().map(serde_json::from_slice::<Alert>) {
                    Some(Ok(alert)) => alerts.push((msg.partition(), msg.offset(), alert)),
                    _ => tracing::warn!(
                        partition = msg.partition(),
                        offset = msg.offset(),
                        "a message on the alert topic is not an alert; skipped"
                    ),
                }
                quiet_polls = 0;
            }
            Some(Err(e)) => return Err(anyhow!("reading alert-events: {e}")),
            None if remaining.is_empty() => quiet_polls += 1,
            None => {}
        }
    }
    Ok(alerts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_costly_checkpoint_pushes_the_next_back_to_its_share_of_the_time() {
        let interval = Duration::from_secs(2);
        // Cheap: the interval.
        assert_eq!(
            pause_after(interval, Duration::from_millis(30), 10),
            interval
        );
        // 4 s at 10 %: 36 s of running for each 4 s of checkpoint.
        assert_eq!(
            pause_after(interval, Duration::from_secs(4), 10),
            Duration::from_secs(36)
        );
        assert_eq!(
            pause_after(interval, Duration::from_secs(4), 50),
            Duration::from_secs(4)
        );
        // A stall cannot push the next past the cap.
        assert_eq!(
            pause_after(interval, Duration::from_secs(600), 10),
            MAX_PAUSE
        );
        // No bound.
        assert_eq!(pause_after(interval, Duration::from_secs(4), 0), interval);
        assert_eq!(pause_after(interval, Duration::from_secs(4), 100), interval);
    }
}
