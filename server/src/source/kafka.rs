//! The Kafka source: a consumer-group member reading `vitals`, cutting
//! micro-batches per partition by size or age, decoding them straight into
//! Arrow builders.
//!
//! Two threads: the consumer thread polls librdkafka's `BaseConsumer` (no
//! per-message future) and only copies message bytes into per-partition
//! chunks; the decode thread turns chunks into Arrow batches and dead
//! letters and hands each to the [`Intake`], in the order read. Batches are
//! per partition, so the engine sees each partition's events in offset order
//! and keeps a watermark per partition. Offsets are committed only as far as
//! the intake's commit gate allows (archived, and no dead letter in flight
//! before them). Partition assignment and revocation are forwarded to the
//! engine, so an instance that gains a partition waits for it before closing
//! windows. On shutdown the consumer stops fetching, hands over what it
//! read, commits, and leaves the group.
//!
//! With `[kafka] group_instance_id` set the consumer is a static group
//! member (`group.instance.id`, KIP-345): the group remembers the instance
//! and its assignment, so the same instance restarted (after a crash too)
//! takes its partitions back instead of waiting for the dead member's
//! session to time out. A static member does not leave the group on
//! shutdown either (librdkafka sends no LeaveGroup for it): its partitions
//! wait `session.timeout.ms` for it to come back. Another live member with
//! the same id fences this one out, a fatal consumer error: it is logged,
//! the source stops reading and `/readyz` reports Kafka unavailable.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::message::Message;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use super::decode::VitalsDecoder;
use super::topics::{Topics, PARTITIONS_PER_TOPIC};
use crate::config::{KafkaConfig, PipelineConfig};
use crate::intake::{Intake, IntakeBatch, Origin};
use crate::pipeline::Input;
use crate::shutdown::ShutdownNotice;
use crate::sink::dead_letter::DeadLetter;
use crate::sink::kafka::client_config;

struct RebalanceContext {
    intake: Intake,
    pending: Pending,
    decode: SyncSender<DecodeInput>,
    topics: Topics,
    /// Messages behind the partitions' ends, summed over our partitions, from
    /// librdkafka's statistics; -1 while unknown.
    lag: Arc<AtomicI64>,
    /// The same per partition (known ones only).
    partition_lag: PartitionLag,
}

/// Per partition, messages behind its end (librdkafka's statistics).
pub type PartitionLag = Arc<Mutex<std::collections::BTreeMap<i32, i64>>>;

/// How long a revocation or shutdown waits for a partition's dead letters.
const SETTLE_WAIT: Duration = Duration::from_secs(30);

/// Chunks cut but not yet decoded, in flight to the decode thread.
const DECODE_QUEUE: usize = 4;

impl ClientContext for RebalanceContext {
    /// librdkafka's statistics (every `statistics.interval.ms`): the
    /// consumer lag of our partitions, for `/readyz` and `/metrics`.
    fn stats(&self, statistics: rdkafka::Statistics) {
        let mut by_partition = std::collections::BTreeMap::new();
        let mut known = false;
        for name in self.topics.names() {
            let Some(topic) = statistics.topics.get(&name) else {
                continue;
            };
            known = true;
            // -1 is librdkafka's internal partition; a lag of -1 is unknown
            // (not assigned, or no offset yet).
            for (p, part) in topic.partitions.iter() {
                if *p >= 0 && part.consumer_lag >= 0 {
                    if let Some(stream) = self.topics.stream_partition(&name, *p) {
                        by_partition.insert(stream, part.consumer_lag);
                    }
                }
            }
        }
        let total = if known {
            by_partition.values().sum()
        } else {
            -1
        };
        self.lag.store(total, Ordering::Relaxed);
        *self.partition_lag.lock().expect("partition lag lock") = by_partition;
    }
}

impl ConsumerContext for RebalanceContext {
    /// Before partitions go: decode and archive everything read from them,
    /// then commit, so the next owner starts where our files end.
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let revoked = stream_partitions(&self.topics, tpl);
            hand_over(
                consumer,
                &self.intake,
                &self.topics,
                &self.pending,
                &self.decode,
                &revoked,
            );
        }
    }

    /// After an assignment: the archive drops files past the committed
    /// offsets (a crash wrote them but never committed), then the engine
    /// learns which partitions it owns.
    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            match consumer.committed_offsets((*tpl).clone(), Duration::from_secs(10)) {
                Ok(committed) => resume_at_committed(&self.intake, &self.topics, &committed),
                Err(e) => tracing::warn!(error = %e, "reading committed offsets on assignment"),
            }
        }
        let input = match rebalance {
            Rebalance::Assign(tpl) => Input::Assign(stream_partitions(&self.topics, tpl)),
            Rebalance::Revoke(tpl) => Input::Revoke(stream_partitions(&self.topics, tpl)),
            Rebalance::Error(e) => {
                tracing::warn!(error = %e, "rebalance error");
                return;
            }
        };
        let _ = self.intake.pipeline().send(input);
    }
}

/// The stream partitions of a list's topic partitions (those of topics
/// read; see [`Topics`]).
fn stream_partitions(topics: &Topics, tpl: &TopicPartitionList) -> Vec<i32> {
    tpl.elements()
        .iter()
        .filter_map(|e| topics.stream_partition(e.topic(), e.partition()))
        .collect()
}

/// Before partitions go (revoked, or their topic no longer read): decode
/// and archive everything read from them, take a checkpoint, then commit,
/// so the next owner (or the next run) starts where our files end.
fn hand_over<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    intake: &Intake,
    topics: &Topics,
    pending: &Pending,
    decode: &SyncSender<DecodeInput>,
    partitions: &[i32],
) {
    for &partition in partitions {
        let chunk = pending.lock().expect("pending lock").remove(&partition);
        if let Some(chunk) = chunk.filter(|c| !c.is_empty()) {
            let _ = decode.send(DecodeInput::Chunk { partition, chunk });
        }
    }
    drain_decoder(decode);
    // The next owner resumes from a checkpoint that holds all we read.
    intake.checkpoint_blocking(SETTLE_WAIT);
    settle_and_commit(consumer, intake, topics, partitions, SETTLE_WAIT);
}

/// On taking partitions at their committed offsets: the archive drops files
/// past them (a crash wrote them but never committed).
fn resume_at_committed(intake: &Intake, topics: &Topics, committed: &TopicPartitionList) {
    for e in committed.elements().iter() {
        let Some(partition) = topics.stream_partition(e.topic(), e.partition()) else {
            continue;
        };
        if let Offset::Offset(next) = e.offset() {
            // An observing instance archives nothing: the files past its
            // offsets are the owners'.
            if !intake.is_observing() {
                intake.archive().resume_blocking(partition, next);
            }
            // Commits never pass a checkpoint, so this means the newest
            // checkpoint was lost or damaged.
            if let Some(from) = intake.engine_from(partition).filter(|&from| next > from) {
                tracing::error!(partition, topic = e.topic(), committed = next, checkpoint = from,
                    "committed offset is past the restored checkpoint: events between are not in the engine's state");
            }
        }
    }
}

/// `[kafka] partitions`: reads `topic`'s partitions (`wanted`, all when
/// empty; a hospital's own topic: all) by assignment, no group membership,
/// from the group's committed offsets (the start when none), adding them to
/// what is read already. Returns the stream partitions assigned, or `None`
/// while the topic does not exist.
fn assign_topic<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    intake: &Intake,
    topics: &Topics,
    topic: &str,
    wanted: &[i32],
    lookback: i64,
    floors: &mut HashMap<i32, i64>,
) -> Option<Vec<i32>> {
    let all: Vec<i32> = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(2))
        .ok()
        .and_then(|m| {
            let t = m.topics().iter().find(|t| t.name() == topic)?;
            let all: Vec<i32> = t.partitions().iter().map(|p| p.id()).collect();
            (!all.is_empty()).then_some(all)
        })?;
    let partitions: Vec<i32> = if wanted.is_empty() {
        all
    } else {
        for p in wanted.iter().filter(|p| !all.contains(p)) {
            tracing::error!(
                partition = p,
                topic,
                "configured partition does not exist; not read"
            );
        }
        wanted.iter().copied().filter(|p| all.contains(p)).collect()
    };
    let mut tpl = TopicPartitionList::new();
    for &p in &partitions {
        tpl.add_partition(topic, p);
    }
    let committed = match consumer.committed_offsets(tpl.clone(), Duration::from_secs(10)) {
        Ok(committed) => committed,
        Err(e) => {
            tracing::warn!(error = %e, topic, "reading committed offsets; reading from the start");
            tpl.clone()
        }
    };
    resume_at_committed(intake, topics, &committed);
    let mut start = TopicPartitionList::new();
    for e in committed.elements().iter().filter(|e| e.topic() == topic) {
        let offset = match e.offset() {
            Offset::Offset(o) => {
                // Messages below the committed offset are dropped as they
                // arrive (see `[kafka] resume_lookback_messages`).
                if let Some(stream) = topics.stream_partition(topic, e.partition()) {
                    floors.insert(stream, o);
                }
                Offset::Offset(o.saturating_sub(lookback.max(0)).max(0))
            }
            _ => Offset::Beginning,
        };
        let _ = start.add_partition_offset(topic, e.partition(), offset);
    }
    if let Err(e) = consumer.incremental_assign(&start) {
        tracing::error!(error = %e, topic, "assigning partitions");
        return None;
    }
    tracing::info!(
        ?partitions,
        topic,
        "reading partitions by assignment (no group membership)"
    );
    let streams: Vec<i32> = partitions
        .iter()
        .filter_map(|&p| topics.stream_partition(topic, p))
        .collect();
    let _ = intake.pipeline().send(Input::Assign(streams.clone()));
    Some(streams)
}

/// Lets go of the partitions of a topic no longer read (manual assignment):
/// what was read of them is handed over and committed first.
fn unassign_topic<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    kafka_partitions: &[i32],
) {
    let mut tpl = TopicPartitionList::new();
    for &p in kafka_partitions {
        tpl.add_partition(topic, p);
    }
    if let Err(e) = consumer.incremental_unassign(&tpl) {
        tracing::warn!(error = %e, topic, "unassigning partitions");
    }
}

/// Waits until the decode thread has handed everything sent before to the
/// intake (bounded: a stuck engine must not hold a rebalance forever).
fn drain_decoder(decode: &SyncSender<DecodeInput>) {
    let (done, wait) = std::sync::mpsc::channel();
    if decode.send(DecodeInput::Barrier(done)).is_ok() && wait.recv_timeout(SETTLE_WAIT).is_err() {
        tracing::warn!("the decoder did not drain in time");
    }
}

/// Writes the partitions' archived rows, waits for their dead letters, and
/// commits as far as the commit gate allows: the next owner (or the next
/// run) starts where our files end. For revocation and shutdown.
fn settle_and_commit<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    intake: &Intake,
    topics: &Topics,
    partitions: &[i32],
    limit: Duration,
) {
    for &partition in partitions {
        intake.gate().settle_blocking(partition, limit);
        if let Some(cap) = intake.gate().committable(partition) {
            store_offset(consumer, topics, partition, cap);
        }
    }
    if let Err(e) = consumer.commit_consumer_state(rdkafka::consumer::CommitMode::Sync) {
        tracing::debug!(error = %e, "committing");
    }
}

pub struct KafkaSource {
    /// The broker answered the last metadata request.
    pub connected: Arc<AtomicBool>,
    /// Consumer lag over our partitions (librdkafka's statistics, each
    /// second); -1 while unknown.
    pub lag: Arc<AtomicI64>,
    /// The same per partition.
    pub partition_lag: PartitionLag,
    consumer_thread: std::thread::JoinHandle<()>,
    decode_thread: std::thread::JoinHandle<()>,
}

impl KafkaSource {
    /// Waits (at most `limit`) for the source to stop after the shutdown
    /// notice: it stops fetching, hands what it read to the intake, commits
    /// what the archive made durable, and leaves the group.
    pub async fn stopped(self, limit: Duration) -> bool {
        let join = tokio::task::spawn_blocking(move || {
            let _ = self.consumer_thread.join();
            let _ = self.decode_thread.join();
        });
        tokio::time::timeout(limit, join).await.is_ok()
    }
}

/// Messages of one partition read since the last cut, not yet decoded:
/// bytes copied into two flat buffers, no allocation per message.
#[derive(Default)]
struct RawChunk {
    first: Option<i64>,
    last: i64,
    offsets: Vec<i64>,
    payloads: Vec<u8>,
    payload_ends: Vec<usize>,
    keys: Vec<u8>,
    key_ends: Vec<usize>,
}

impl RawChunk {
    fn push(&mut self, offset: i64, key: Option<&[u8]>, payload: &[u8]) {
        self.first.get_or_insert(offset);
        self.last = offset;
        self.offsets.push(offset);
        self.payloads.extend_from_slice(payload);
        self.payload_ends.push(self.payloads.len());
        self.keys.extend_from_slice(key.unwrap_or_default());
        self.key_ends.push(self.keys.len());
    }

    fn len(&self) -> usize {
        self.offsets.len()
    }

    fn is_empty(&self) -> bool {
        self.first.is_none()
    }

    fn slice<'a>(bytes: &'a [u8], ends: &[usize], i: usize) -> &'a [u8] {
        let start = if i == 0 { 0 } else { ends[i - 1] };
        &bytes[start..ends[i]]
    }

    fn payload(&self, i: usize) -> &[u8] {
        Self::slice(&self.payloads, &self.payload_ends, i)
    }

    fn key(&self, i: usize) -> Option<&[u8]> {
        Some(Self::slice(&self.keys, &self.key_ends, i)).filter(|k| !k.is_empty())
    }
}

/// Work for the decode thread, in the order the source read it.
enum DecodeInput {
    Chunk {
        partition: i32,
        chunk: RawChunk,
    },
    /// The source has read everything available (passed on to the engine
    /// after the chunks before it).
    CaughtUp,
    /// Answered once everything sent before has reached the archive and
    /// the engine.
    Barrier(std::sync::mpsc::Sender<()>),
}

/// Per partition, the messages read since the last cut. Shared with the
/// rebalance callback, which runs inside `poll` and must hand a revoked
/// partition's messages over before committing.
type Pending = Arc<Mutex<HashMap<i32, RawChunk>>>;

/// Starts the consumer thread and the decode thread.
///
/// The consumer thread only polls and copies message bytes; decoding into
/// Arrow, dead letters and the hand-off to the archive and the engine run
/// on the decode thread, so reading from the broker and decoding overlap.
pub fn start(
    kafka: &KafkaConfig,
    brokers: &str,
    pipeline_cfg: &PipelineConfig,
    intake: Intake,
    topics: Topics,
    shutdown: ShutdownNotice,
) -> Result<KafkaSource> {
    let mut cfg = client_config(kafka, brokers);
    cfg.set("group.id", &kafka.group_id)
        .set("enable.auto.commit", "true")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", kafka.fetch_wait_max_ms.to_string())
        .set("queued.min.messages", "200000")
        .set("statistics.interval.ms", "1000")
        // A topic created after start (a hospital's own, or the shared one
        // on a new cluster) is seen within seconds, not librdkafka's 5 min.
        .set("topic.metadata.refresh.interval.ms", "5000");
    let instance_id = kafka
        .group_instance_id
        .as_deref()
        .map(str::trim)
        .filter(|id| !id.is_empty());
    if let Some(id) = instance_id {
        cfg.set("group.instance.id", id);
        tracing::info!(group_instance_id = id, "static group membership");
    }
    let instance_id = instance_id.map(str::to_owned);
    for (k, v) in &kafka.properties {
        cfg.set(k, v);
    }
    let pending: Pending = Arc::default();
    let (decode_tx, decode_rx) = std::sync::mpsc::sync_channel(DECODE_QUEUE);
    let context = RebalanceContext {
        intake: intake.clone(),
        pending: Arc::clone(&pending),
        decode: decode_tx.clone(),
        topics: topics.clone(),
        lag: Arc::new(AtomicI64::new(-1)),
        partition_lag: PartitionLag::default(),
    };
    let lag = Arc::clone(&context.lag);
    let partition_lag = Arc::clone(&context.partition_lag);
    let consumer: BaseConsumer<RebalanceContext> = cfg
        .create_with_context(context)
        .context("creating the Kafka consumer")?;
    let manual = kafka.partitions.clone();
    let lookback = kafka.resume_lookback_messages;
    if manual.is_none() {
        subscribe(&consumer, &topics)?;
    }
    let connected = Arc::new(AtomicBool::new(false));
    let connected_flag = Arc::clone(&connected);
    let topic = kafka.vitals_topic.clone();
    let max_rows = pipeline_cfg.max_batch_rows.max(1);
    let max_delay = Duration::from_millis(pipeline_cfg.max_batch_delay_ms.max(1));
    let decode_thread = {
        let decoder = Decoder {
            topics: topics.clone(),
            max_rows,
            intake: intake.clone(),
        };
        std::thread::Builder::new()
            .name("wardwatch-decode".into())
            .spawn(move || decoder.run(decode_rx))
            .context("spawning the decode thread")?
    };
    let consumer_thread = std::thread::Builder::new()
        .name("wardwatch-kafka-source".into())
        .spawn(move || {
            let mut last_flush = Instant::now();
            let mut last_metadata_check = Instant::now() - Duration::from_secs(60);
            let mut last_caught_up = Instant::now();
            let mut fatal = false;
            // With manual assignment: each topic assigned, with its Kafka
            // partitions. The shared topic first, waiting for it to exist.
            let mut assigned: HashMap<String, Vec<i32>> = HashMap::new();
            // With manual assignment, per stream partition: the lowest
            // offset still to be taken. Lower ones (a lookback, or a
            // broker delivering a message again) are dropped, so the
            // archive and the engine never see an offset twice in a run.
            let mut floors: HashMap<i32, i64> = HashMap::new();
            if let Some(wanted) = &manual {
                while !shutdown.is_requested() {
                    if let Some(streams) = assign_topic(
                        &consumer,
                        &intake,
                        &topics,
                        &topic,
                        wanted,
                        lookback,
                        &mut floors,
                    ) {
                        assigned.insert(topic.clone(), streams);
                        connected_flag.store(true, Ordering::Relaxed);
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(500));
                }
            }
            let mut topics_version = topics.version();
            let mut last_topics_check = Instant::now();
            // The stream partition numbers of the topic of the last message
            // (a topic's numbers never change while the process runs).
            let mut base_of: (String, Option<i32>) = (String::new(), None);
            let cut_all = || {
                let chunks: Vec<(i32, RawChunk)> = pending
                    .lock()
                    .expect("pending lock")
                    .iter_mut()
                    .filter(|(_, c)| !c.is_empty())
                    .map(|(&p, c)| (p, std::mem::take(c)))
                    .collect();
                for (partition, chunk) in chunks {
                    let _ = decode_tx.send(DecodeInput::Chunk { partition, chunk });
                }
            };
            while !shutdown.is_requested() {
                if fatal {
                    // The consumer is unusable (e.g. fenced by another
                    // member with our group.instance.id): read nothing more.
                    connected_flag.store(false, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(200));
                    continue;
                }
                if last_metadata_check.elapsed() > Duration::from_secs(5) {
                    last_metadata_check = Instant::now();
                    let ok = consumer
                        .fetch_metadata(Some(&topic), Duration::from_secs(2))
                        .is_ok();
                    connected_flag.store(ok, Ordering::Relaxed);
                }
                // A hospital onboarded with a topic of its own (or retired):
                // read it from now on (or let it go).
                let version = topics.version();
                // A topic not yet created is looked for again every 2 s (the
                // clock is checked first: this runs once per poll).
                let due = manual.is_some() && last_topics_check.elapsed() > Duration::from_secs(2);
                if due {
                    last_topics_check = Instant::now();
                }
                let recheck = due && topics.names().len() != assigned.len();
                if version != topics_version || recheck {
                    topics_version = version;
                    match &manual {
                        None => {
                            if let Err(e) = subscribe(&consumer, &topics) {
                                tracing::error!(error = %e, "subscribing to the topics read");
                            }
                        }
                        Some(wanted) => {
                            let reading = topics.reading();
                            for t in &reading {
                                if assigned.contains_key(&t.name) {
                                    continue;
                                }
                                let wanted: &[i32] = if t.name == topic { wanted } else { &[] };
                                if let Some(streams) = assign_topic(
                                    &consumer,
                                    &intake,
                                    &topics,
                                    &t.name,
                                    wanted,
                                    lookback,
                                    &mut floors,
                                ) {
                                    assigned.insert(t.name.clone(), streams);
                                }
                            }
                            let gone: Vec<String> = assigned
                                .keys()
                                .filter(|name| !reading.iter().any(|t| &t.name == *name))
                                .cloned()
                                .collect();
                            for name in gone {
                                let streams = assigned.remove(&name).unwrap_or_default();
                                for s in &streams {
                                    floors.remove(s);
                                }
                                hand_over(
                                    &consumer, &intake, &topics, &pending, &decode_tx, &streams,
                                );
                                let kafka_partitions: Vec<i32> = streams
                                    .iter()
                                    .filter_map(|&s| topics.kafka_partition(s).map(|(_, p)| p))
                                    .collect();
                                unassign_topic(&consumer, &name, &kafka_partitions);
                                let _ = intake.pipeline().send(Input::Revoke(streams));
                                tracing::info!(topic = %name, "no longer reading the topic");
                            }
                        }
                    }
                }
                let wait = max_delay
                    .saturating_sub(last_flush.elapsed())
                    .max(Duration::from_millis(1));
                match consumer.poll(wait) {
                    Some(Ok(msg)) => {
                        if base_of.0 != msg.topic() {
                            base_of = (
                                msg.topic().to_string(),
                                topics.stream_partition(msg.topic(), 0),
                            );
                        }
                        let (Some(base), true) = (
                            base_of.1,
                            (0..PARTITIONS_PER_TOPIC).contains(&msg.partition()),
                        ) else {
                            continue;
                        };
                        let partition = base + msg.partition();
                        if manual.is_some() {
                            match floors.get_mut(&partition) {
                                Some(floor) if msg.offset() < *floor => continue,
                                Some(floor) => *floor = msg.offset() + 1,
                                None => {
                                    floors.insert(partition, msg.offset() + 1);
                                }
                            }
                        }
                        let full = {
                            let mut pending = pending.lock().expect("pending lock");
                            let chunk = pending.entry(partition).or_default();
                            chunk.push(msg.offset(), msg.key(), msg.payload().unwrap_or_default());
                            (chunk.len() >= max_rows).then(|| std::mem::take(chunk))
                        };
                        if let Some(chunk) = full {
                            let _ = decode_tx.send(DecodeInput::Chunk { partition, chunk });
                        }
                    }
                    Some(Err(e)) => match consumer.client().fatal_error() {
                        Some((code, reason)) => {
                            fatal = true;
                            tracing::error!(
                                error = %e, ?code, %reason, group_instance_id = ?instance_id,
                                "fatal Kafka consumer error: no longer reading (a fenced \
                                 group_instance_id means another live member uses the same id; \
                                 give each instance its own)"
                            );
                        }
                        None => tracing::warn!(error = %e, "Kafka consumer error"),
                    },
                    None => {
                        // Nothing more to read right now: hand over what we
                        // have instead of holding it for the batch delay. Under
                        // load batches fill by size; when the source keeps up,
                        // an event waits for no timer.
                        cut_all();
                        if last_caught_up.elapsed() >= Duration::from_millis(100) {
                            last_caught_up = Instant::now();
                            let _ = decode_tx.send(DecodeInput::CaughtUp);
                        }
                    }
                }
                if last_flush.elapsed() >= max_delay {
                    last_flush = Instant::now();
                    cut_all();
                    // Commit only what the archive has written and whose
                    // dead letters are delivered: a restart re-reads the rest.
                    let partitions: Vec<i32> = pending
                        .lock()
                        .expect("pending lock")
                        .keys()
                        .copied()
                        .collect();
                    for partition in partitions {
                        if let Some(cap) = intake.gate().committable(partition) {
                            store_offset(&consumer, &topics, partition, cap);
                        }
                    }
                }
            }
            // Shutdown: hand over what was read, write it, commit it, and
            // leave the group (dropping the consumer closes it).
            cut_all();
            drain_decoder(&decode_tx);
            // State and offsets for the next run: it resumes right here.
            intake.checkpoint_blocking(Duration::from_secs(2));
            let partitions: Vec<i32> = pending
                .lock()
                .expect("pending lock")
                .keys()
                .copied()
                .collect();
            settle_and_commit(
                &consumer,
                &intake,
                &topics,
                &partitions,
                Duration::from_secs(2),
            );
            drop(decode_tx);
            drop(consumer);
            tracing::info!("Kafka source stopped");
        })
        .context("spawning the Kafka source thread")?;
    Ok(KafkaSource {
        connected,
        lag,
        partition_lag,
        consumer_thread,
        decode_thread,
    })
}

/// The decode thread: raw chunks to Arrow batches and dead letters, handed
/// to the intake in the order read.
struct Decoder {
    topics: Topics,
    max_rows: usize,
    intake: Intake,
}

impl Decoder {
    fn run(self, inputs: Receiver<DecodeInput>) {
        let mut decoders: HashMap<i32, VitalsDecoder> = HashMap::new();
        while let Ok(input) = inputs.recv() {
            match input {
                DecodeInput::Chunk { partition, chunk } => {
                    // The clock is read once per chunk.
                    let now = chrono::Utc::now().timestamp_millis();
                    let bounds = self.intake.time_bounds();
                    let decoder = decoders.entry(partition).or_insert_with(|| {
                        // A hospital's own topic carries only its events.
                        let own = self
                            .topics
                            .kafka_partition(partition)
                            .and_then(|(t, _)| t.hospital)
                            .map(Arc::from);
                        VitalsDecoder::new(self.max_rows)
                            .with_time_bounds(bounds, now)
                            .with_own_hospital(own)
                    });
                    decoder.set_now(now);
                    self.decode(partition, &chunk, decoder);
                }
                DecodeInput::CaughtUp => {
                    let _ = self.intake.pipeline().send(Input::CaughtUp);
                }
                DecodeInput::Barrier(done) => {
                    let _ = done.send(());
                }
            }
        }
        tracing::info!("Kafka decode thread stopped");
    }

    fn decode(&self, partition: i32, chunk: &RawChunk, decoder: &mut VitalsDecoder) {
        if chunk.is_empty() {
            return;
        }
        // Events below a restored checkpoint's offset go to the archive
        // only, so a batch must not straddle it: cut there.
        let split = self
            .intake
            .engine_from(partition)
            .map_or(0, |from| chunk.offsets.partition_point(|&o| o < from));
        for range in [0..split, split..chunk.len()] {
            if !range.is_empty() {
                self.decode_range(partition, chunk, range, decoder);
            }
        }
    }

    fn decode_range(
        &self,
        partition: i32,
        chunk: &RawChunk,
        range: std::ops::Range<usize>,
        decoder: &mut VitalsDecoder,
    ) {
        let (first, last) = (chunk.offsets[range.start], chunk.offsets[range.end - 1]);
        let (topic, kafka_partition) = self
            .topics
            .kafka_partition(partition)
            .map_or_else(|| ("?".to_string(), partition), |(t, p)| (t.name, p));
        let mut letters = Vec::new();
        for i in range {
            let payload = chunk.payload(i);
            if let Err(rejection) = decoder.push_json(payload) {
                let offset = chunk.offsets[i];
                letters.push(DeadLetter {
                    key: chunk.key(i).map(<[u8]>::to_vec),
                    payload: payload.to_vec(),
                    reason: rejection.reason,
                    origin: format!("kafka:{topic}/{kafka_partition}@{offset}"),
                    source: Some((partition, offset)),
                });
            }
        }
        self.intake.submit_blocking(IntakeBatch {
            origin: Origin::Kafka {
                partition,
                offsets: first..=last,
            },
            batch: decoder.finish(),
            dead_letters: letters,
        });
    }
}

/// Stores `offset` + 1 of a stream partition for the next commit.
fn store_offset<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topics: &Topics,
    partition: i32,
    offset: i64,
) {
    let Some((topic, kafka_partition)) = topics.kafka_partition(partition) else {
        return;
    };
    let mut tpl = TopicPartitionList::new();
    if tpl
        .add_partition_offset(&topic.name, kafka_partition, Offset::Offset(offset + 1))
        .is_ok()
    {
        if let Err(e) = consumer.store_offsets(&tpl) {
            tracing::debug!(error = %e, partition, "storing offset");
        }
    }
}

/// Subscribes the group member to every topic read (replacing the last
/// subscription: a rebalance follows).
fn subscribe<C: ConsumerContext>(consumer: &BaseConsumer<C>, topics: &Topics) -> Result<()> {
    let names = topics.names();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    consumer
        .subscribe(&names)
        .with_context(|| format!("subscribing to {}", names.join(", ")))
}
