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
    topic: String,
}

impl ClientContext for RebalanceContext {}

impl ConsumerContext for RebalanceContext {
    /// Before partitions go: write what the archive buffers for them and
    /// commit, so the next owner starts where our files end.
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            for e in tpl.elements().iter().filter(|e| e.topic() == self.topic) {
                self.archive.flush_blocking(e.partition());
                if let Some(durable) = self.archive.durable_offset(e.partition()) {
                    store_offset(consumer, &self.topic, e.partition(), durable);
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
                            letters.push(DeadLetter {
                                key: msg.key().map(<[u8]>::to_vec),
                                payload: payload.to_vec(),
                                reason: rejection.reason,
                                origin: format!("kafka:{topic}/{partition}@{offset}"),
                            });
                        }
                        if buffer.decoder.len() >= max_rows {
                            flush_partition(
                                &consumer, &topic, &pipeline, &archive, partition, buffer,
                            );
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
                            flush_all(&consumer, &topic, &pipeline, &archive, &mut buffers);
                            let _ = pipeline.send(Input::CaughtUp);
                        }
                    }
                }
                if last_flush.elapsed() >= max_delay {
                    last_flush = Instant::now();
                    // Dead letters first: their offsets are stored as done
                    // with the batch that follows them.
                    if !letters.is_empty() {
                        let batch = std::mem::take(&mut letters);
                        let dl = Arc::clone(&dead_letters);
                        rt.block_on(dl.record(batch));
                    }
                    flush_all(&consumer, &topic, &pipeline, &archive, &mut buffers);
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
fn flush_all<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    pipeline: &PipelineHandle,
    archive: &ArchiveHandle,
    buffers: &mut HashMap<i32, PartitionBuffer>,
) {
    for (&partition, buffer) in buffers.iter_mut() {
        if buffer.first.is_some() {
            flush_partition(consumer, topic, pipeline, archive, partition, buffer);
        } else if let Some(durable) = archive.durable_offset(partition) {
            store_offset(consumer, topic, partition, durable);
        }
    }
}

fn flush_partition<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    pipeline: &PipelineHandle,
    archive: &ArchiveHandle,
    partition: i32,
    buffer: &mut PartitionBuffer,
) {
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
    if let Some(durable) = archive.durable_offset(partition) {
        store_offset(consumer, topic, partition, durable);
    }
}
