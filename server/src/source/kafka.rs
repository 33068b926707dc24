//! The Kafka source: a consumer-group member reading `vitals`, decoding
//! straight into per-partition Arrow builders and cutting micro-batches by
//! size or age.
//!
//! Runs on its own thread with librdkafka's `BaseConsumer` (no per-message
//! future). Batches are per partition, so the engine sees each partition's
//! events in offset order and keeps a watermark per partition. Offsets are
//! stored for commit only after the batch holding them is handed to the
//! pipeline. Partition assignment and revocation are forwarded to the
//! engine, so an instance that gains a partition waits for it before
//! closing windows.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::message::Message;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use super::decode::VitalsDecoder;
use crate::archive::{ArchiveHandle, ArchiveInput};
use crate::config::{KafkaConfig, PipelineConfig};
use crate::pipeline::{Input, PipelineHandle};
use crate::sink::dead_letter::{DeadLetter, DeadLetters};
use crate::sink::kafka::client_config;

struct RebalanceContext {
    pipeline: PipelineHandle,
    archive: ArchiveHandle,
    dead_letters: Arc<DeadLetters>,
    topic: String,
}

/// Dead letters waiting for delivery past this many make the source wait
/// (the broker is slow or down) rather than buffer without bound.
const MAX_DEAD_LETTERS_IN_FLIGHT: usize = 100_000;

/// How long a revocation waits for the partition's dead letters.
const REVOKE_WAIT: Duration = Duration::from_secs(30);

impl ClientContext for RebalanceContext {}

impl ConsumerContext for RebalanceContext {
    /// Before partitions go: write what the archive buffers for them and
    /// commit, so the next owner starts where our files end.
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            for e in tpl.elements().iter().filter(|e| e.topic() == self.topic) {
                self.archive.flush_blocking(e.partition());
                let waiting = Instant::now();
                while self.dead_letters.in_flight.pending(e.partition())
                    && waiting.elapsed() < REVOKE_WAIT
                {
                    std::thread::sleep(Duration::from_millis(5));
                }
                if let Some(durable) = self.archive.durable_offset(e.partition()) {
                    let cap = self.dead_letters.in_flight.commit_cap(e.partition(), durable);
                    store_offset(consumer, &self.topic, e.partition(), cap);
                }
            }
            if let Err(e) = consumer.commit_consumer_state(rdkafka::consumer::CommitMode::Sync) {
                tracing::debug!(error = %e, "committing before revocation");
            }
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        // Reading resumes at the committed offset: files an earlier owner
        // wrote from there on will be written again, so remove them first.
        if let Rebalance::Assign(tpl) = rebalance {
            match consumer.committed_offsets((*tpl).clone(), Duration::from_secs(10)) {
                Ok(committed) => {
                    for e in committed
                        .elements()
                        .iter()
                        .filter(|e| e.topic() == self.topic)
                    {
                        if let Offset::Offset(next) = e.offset() {
                            self.archive.resume_blocking(e.partition(), next);
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "reading committed offsets on assignment"),
            }
        }
        let partitions = |tpl: &TopicPartitionList| -> Vec<i32> {
            tpl.elements()
                .iter()
                .filter(|e| e.topic() == self.topic)
                .map(|e| e.partition())
                .collect()
        };
        let input = match rebalance {
            Rebalance::Assign(tpl) => Input::Assign(partitions(tpl)),
            Rebalance::Revoke(tpl) => Input::Revoke(partitions(tpl)),
            Rebalance::Error(e) => {
                tracing::warn!(error = %e, "rebalance error");
                return;
            }
        };
        let _ = self.pipeline.send(input);
    }
}

pub struct KafkaSource {
    pub connected: Arc<AtomicBool>,
}

/// Where the source sends what it reads.
pub struct SourceOutputs {
    pub pipeline: PipelineHandle,
    /// Refused events, recorded through the async runtime `rt`.
    pub dead_letters: Arc<DeadLetters>,
    pub archive: ArchiveHandle,
    pub rt: tokio::runtime::Handle,
}

/// Starts the consumer thread.
pub fn start(
    kafka: &KafkaConfig,
    brokers: &str,
    pipeline_cfg: &PipelineConfig,
    outputs: SourceOutputs,
    shutdown: Arc<AtomicBool>,
) -> Result<KafkaSource> {
    let SourceOutputs {
        pipeline,
        dead_letters,
        archive,
        rt,
    } = outputs;
    let mut cfg = client_config(kafka, brokers);
    cfg.set("group.id", &kafka.group_id)
        .set("enable.auto.commit", "true")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", kafka.fetch_wait_max_ms.to_string())
        .set("queued.min.messages", "200000");
    for (k, v) in &kafka.properties {
        cfg.set(k, v);
    }
    let context = RebalanceContext {
        pipeline: pipeline.clone(),
        archive: archive.clone(),
        dead_letters: Arc::clone(&dead_letters),
        topic: kafka.vitals_topic.clone(),
    };
    let consumer: BaseConsumer<RebalanceContext> = cfg
        .create_with_context(context)
        .context("creating the Kafka consumer")?;
    consumer
        .subscribe(&[kafka.vitals_topic.as_str()])
        .with_context(|| format!("subscribing to {}", kafka.vitals_topic))?;
    let connected = Arc::new(AtomicBool::new(false));
    let source = KafkaSource {
        connected: Arc::clone(&connected),
    };
    let topic = kafka.vitals_topic.clone();
    let max_rows = pipeline_cfg.max_batch_rows.max(1);
    let max_delay = Duration::from_millis(pipeline_cfg.max_batch_delay_ms.max(1));
    std::thread::Builder::new()
        .name("wardwatch-kafka-source".into())
        .spawn(move || {
            let mut buffers: HashMap<i32, PartitionBuffer> = HashMap::new();
            let mut letters: Vec<DeadLetter> = Vec::new();
            let mut last_flush = Instant::now();
            let mut last_metadata_check = Instant::now() - Duration::from_secs(60);
            let mut last_caught_up = Instant::now();
            while !shutdown.load(Ordering::Relaxed) {
                if last_metadata_check.elapsed() > Duration::from_secs(5) {
                    last_metadata_check = Instant::now();
                    let ok = consumer
                        .fetch_metadata(Some(&topic), Duration::from_secs(2))
                        .is_ok();
                    connected.store(ok, Ordering::Relaxed);
                }
                let wait = max_delay
                    .saturating_sub(last_flush.elapsed())
                    .max(Duration::from_millis(1));
                match consumer.poll(wait) {
                    Some(Ok(msg)) => {
                        let partition = msg.partition();
                        let offset = msg.offset();
                        let buffer = buffers.entry(partition).or_insert_with(|| PartitionBuffer {
                            decoder: VitalsDecoder::new(max_rows),
                            first: None,
                            last: -1,
                        });
                        buffer.first.get_or_insert(offset);
                        buffer.last = offset;
                        let payload = msg.payload().unwrap_or_default();
                        if let Err(rejection) = buffer.decoder.push_json(payload) {
                            // No commit past it until it is delivered.
                            dead_letters.in_flight.hold(&[(partition, offset)], 1);
                            letters.push(DeadLetter {
                                key: msg.key().map(<[u8]>::to_vec),
                                payload: payload.to_vec(),
                                reason: rejection.reason,
                                origin: format!("kafka:{topic}/{partition}@{offset}"),
                                source: Some((partition, offset)),
                            });
                        }
                        if buffer.decoder.len() >= max_rows {
                            let sinks = Sinks {
                                pipeline: &pipeline,
                                archive: &archive,
                                dead_letters: &dead_letters,
                            };
                            flush_partition(&consumer, &topic, &sinks, partition, buffer);
                        }
                    }
                    Some(Err(e)) => tracing::warn!(error = %e, "Kafka consumer error"),
                    None => {
                        // Nothing buffered locally for any partition: flush
                        // what is pending, then tell the engine (in order,
                        // after those batches) that partitions without data
                        // are idle rather than waiting their turn.
                        if last_caught_up.elapsed() >= Duration::from_millis(100) {
                            last_caught_up = Instant::now();
                            let sinks = Sinks {
                                pipeline: &pipeline,
                                archive: &archive,
                                dead_letters: &dead_letters,
                            };
                            flush_all(&consumer, &topic, &sinks, &mut buffers);
                            let _ = pipeline.send(Input::CaughtUp);
                        }
                    }
                }
                if last_flush.elapsed() >= max_delay {
                    last_flush = Instant::now();
                    // Dead letters first: their offsets are stored as done
                    // with the batch that follows them.
                    if !letters.is_empty() {
                        while dead_letters.in_flight.letters() > MAX_DEAD_LETTERS_IN_FLIGHT
                            && !shutdown.load(Ordering::Relaxed)
                        {
                            std::thread::sleep(Duration::from_millis(5));
                        }
                        dead_letters.record_in_background(&rt, std::mem::take(&mut letters));
                    }
                    let sinks = Sinks {
                        pipeline: &pipeline,
                        archive: &archive,
                        dead_letters: &dead_letters,
                    };
                    flush_all(&consumer, &topic, &sinks, &mut buffers);
                }
            }
            tracing::info!("Kafka source stopped");
        })
        .context("spawning the Kafka source thread")?;
    Ok(source)
}

fn store_offset<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    partition: i32,
    offset: i64,
) {
    let mut tpl = TopicPartitionList::new();
    if tpl
        .add_partition_offset(topic, partition, Offset::Offset(offset + 1))
        .is_ok()
    {
        if let Err(e) = consumer.store_offsets(&tpl) {
            tracing::debug!(error = %e, partition, "storing offset");
        }
    }
}

/// A partition's events since its last micro-batch, and their offsets
/// (dead-lettered messages included, so the archive knows they were consumed).
struct PartitionBuffer {
    decoder: VitalsDecoder,
    first: Option<i64>,
    last: i64,
}

/// Hands every partition's pending events to the engine and the archive;
/// for partitions with nothing pending, commits what the archive has since
/// written (files land in the background).
/// Where decoded batches go, and what decides how far offsets may be
/// committed.
struct Sinks<'a> {
    pipeline: &'a PipelineHandle,
    archive: &'a ArchiveHandle,
    dead_letters: &'a DeadLetters,
}

impl Sinks<'_> {
    /// Stores the offset up to which everything read from `partition` is
    /// safe: archived, and its dead letters delivered.
    fn store_durable<C: ConsumerContext>(&self, consumer: &BaseConsumer<C>, topic: &str, partition: i32) {
        if let Some(durable) = self.archive.durable_offset(partition) {
            let cap = self.dead_letters.in_flight.commit_cap(partition, durable);
            store_offset(consumer, topic, partition, cap);
        }
    }
}

fn flush_all<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    sinks: &Sinks<'_>,
    buffers: &mut HashMap<i32, PartitionBuffer>,
) {
    for (&partition, buffer) in buffers.iter_mut() {
        if buffer.first.is_some() {
            flush_partition(consumer, topic, sinks, partition, buffer);
        } else {
            sinks.store_durable(consumer, topic, partition);
        }
    }
}

fn flush_partition<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    sinks: &Sinks<'_>,
    partition: i32,
    buffer: &mut PartitionBuffer,
) {
    let Sinks {
        pipeline, archive, ..
    } = sinks;
    let Some(first) = buffer.first.take() else {
        return;
    };
    let batch = buffer.decoder.finish();
    // The copy for the archive shares the columns (Arc), it copies no data.
    archive.send_blocking(ArchiveInput {
        partition,
        offsets: first..=buffer.last,
        batch: batch.clone(),
        accepted: None,
    });
    if batch.num_rows() > 0 && pipeline.send(Input::Batch { partition, batch }).is_err() {
        return;
    }
    // Commit only what the archive has written: a restart re-reads the rest.
    sinks.store_durable(consumer, topic, partition);
}
