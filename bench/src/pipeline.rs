//! `wardwatch-bench pipeline`: end to end from a real Kafka-protocol broker on
//! 127.0.0.1 through the Kafka source, decode, the 20 rules and the alert
//! sink of a real `wardwatch` server running in this process.
//!
//! Steps:
//! 1. start tansu (in-memory storage), create `vitals` (4 partitions),
//!    `alert-events` and `vitals-dlq`;
//! 2. produce the simulated ward's N messages keyed by patient (not timed);
//! 3. baseline: a bare rdkafka `BaseConsumer` in a fresh group reads the
//!    topic and does nothing with the messages until it has counted N (the
//!    high watermark is not used: tansu reports it wrong);
//! 4. wardwatch: the 20 rules are created over REST on a first server with
//!    no Kafka, then a second server on the same data directory, with Kafka
//!    configured (`fetch.wait.max.ms` 10, the default), starts consuming
//!    with those rules already loaded — creating them over REST on the
//!    consuming server would let events through before the rules exist. We
//!    poll its `/metrics` every 50 ms until `wardwatch_events_in_total +
//!    wardwatch_events_rejected_total` reaches N.
//!
//! Both sides are timed from their first event to the N-th, so the consumer
//! group join (seconds on tansu, the same for both) is reported apart as
//! `startup_seconds` rather than diluting the rate. The server polls are
//! 50 ms apart and see a batch only once the engine has processed it, so the
//! server's time is accurate to about 0.1 s.
//!
//! This scenario does not stop its in-process servers (see
//! [`crate::inproc`]): their async tasks end with this scenario's runtime,
//! but the Kafka source and engine threads stay idle until the process
//! exits. Run this scenario last in a process. The server archives every event to Parquet in its
//! data directory (a temporary one here); the archive's writer task pushes
//! back on the source through a bounded channel, so it is in the measured
//! path, but the timing ends when the engine has counted the last event,
//! not when the archive has flushed it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientContext;
use serde_json::json;
use tempfile::TempDir;

use crate::inproc::{self, POLL_EVERY};
use crate::rules::{self, BenchRule};
use crate::{available_cores, progress, BenchResult, BenchSize, Ward, PARTITIONS};
use wardwatch::config::Config;
use wardwatch::demo::simulator::SimEvent;
use wardwatch_test_support::{free_port, Broker, Server};

const NAME: &str = "pipeline";
/// (patients, seconds): 600 k messages by default, 3 M with `--full`.
const SMALL: (usize, u64) = (1_000, 600);
const FULL: (usize, u64) = (10_000, 300);
const TOPIC: &str = "vitals";
/// Longest we wait for either side to read everything.
const READ_TIMEOUT: Duration = Duration::from_secs(600);

pub fn run(size: &BenchSize) -> Result<BenchResult> {
    run_keeping_broker(size).map(|(result, _broker)| result)
}

/// [`run`], handing back the broker instead of stopping it. The in-process
/// server's consumer keeps running and logs connection errors once its
/// broker is gone, so the CLI stops the broker only when it is about to exit.
pub fn run_keeping_broker(size: &BenchSize) -> Result<(BenchResult, Broker)> {
    let ward = size.resolve(SMALL, FULL);
    let (broker, data_dir, runtime) = crate::inproc::broker_and_runtime(NAME)?;
    let result = runtime.block_on(run_async(ward, &broker, &data_dir));
    runtime.shutdown_timeout(Duration::from_secs(2));
    Ok((result?, broker))
}

async fn run_async(ward: Ward, broker: &Broker, data_dir: &Arc<TempDir>) -> Result<BenchResult> {
    for (topic, partitions) in [(TOPIC, PARTITIONS), ("alert-events", 1), ("vitals-dlq", 1)] {
        broker.create_topic(topic, partitions).await?;
    }

    progress(
        NAME,
        format!(
            "simulating {} patients × {} s and producing to `{TOPIC}` (not timed)",
            ward.patients, ward.seconds
        ),
    );
    let mut events: Vec<SimEvent> = Vec::new();
    ward.simulate(|e, _| events.extend_from_slice(e));
    let n = events.len() as u64;
    let config = broker.client_config();
    let produce_secs = tokio::task::spawn_blocking(move || produce(config, &events))
        .await
        .context("the producer thread panicked")??;
    progress(
        NAME,
        format!(
            "produced {n} messages in {produce_secs:.1} s ({:.0}/s)",
            n as f64 / produce_secs
        ),
    );

    let config = broker.client_config();
    let bare = tokio::task::spawn_blocking(move || bare_consumer(config, n))
        .await
        .context("the bare consumer thread panicked")??;
    progress(
        NAME,
        format!(
            "bare consumer: {n} messages in {:.3} s after {:.1} s of group join",
            bare.seconds, bare.startup_seconds
        ),
    );

    let ours = wardwatch(broker, data_dir, n, &rules::rules()).await?;
    let (archive_files, archive_bytes) = parquet_files(data_dir.path());
    progress(
        NAME,
        format!(
            "wardwatch: {n} events in {:.3} s after {:.1} s of startup, {} alerts fired",
            ours.seconds, ours.startup_seconds, ours.alerts_fired
        ),
    );

    let mut result = BenchResult::new(
        NAME,
        ward,
        n,
        ours.seconds,
        available_cores(),
        "bare rdkafka BaseConsumer",
        n,
        bare.seconds,
    )
    .detail("rules", ours.rules)
    .detail("partitions", PARTITIONS)
    .detail("startup_seconds", ours.startup_seconds)
    .detail("baseline_startup_seconds", bare.startup_seconds)
    .detail("produce_seconds", produce_secs)
    .detail("rejected", ours.rejected)
    .detail("late_events", ours.late)
    .detail("duplicates", ours.duplicates)
    .detail("batches", ours.batches)
    .detail("engine_batch_mean_ms", ours.batch_mean_ms)
    .detail("alerts_delivered_kafka", ours.alerts_delivered_kafka)
    .detail("archive_parquet_files", archive_files)
    .detail("archive_parquet_bytes", archive_bytes);
    result.alerts = Some(ours.alerts_fired);
    Ok(result)
}

/// Counts delivery reports, so a message the broker refused is an error.
#[derive(Default)]
struct Deliveries {
    ok: AtomicU64,
    failed: AtomicU64,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        let counter = if result.is_ok() {
            &self.ok
        } else {
            &self.failed
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Produces every event keyed by patient and waits for every delivery
/// report. Returns the seconds it took.
fn produce(mut config: rdkafka::ClientConfig, events: &[SimEvent]) -> Result<f64> {
    let producer: ThreadedProducer<Deliveries> = config
        .set("linger.ms", "20")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "1000000")
        .set("queue.buffering.max.kbytes", "1048576")
        .set("message.timeout.ms", "120000")
        .create_with_context(Deliveries::default())
        .context("creating the benchmark's producer")?;
    let started = Instant::now();
    for e in events {
        let mut record = BaseRecord::to(TOPIC).key(&e.key).payload(&e.payload);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((
                    rdkafka::error::KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull),
                    r,
                )) => {
                    // The local queue is full: let the broker catch up.
                    record = r;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err((e, _)) => bail!("producing to {TOPIC}: {e}"),
            }
        }
    }
    producer
        .flush(Duration::from_secs(300))
        .context("waiting for the broker to acknowledge every message")?;
    let ctx = producer.context();
    let (ok, failed) = (
        ctx.ok.load(Ordering::Relaxed),
        ctx.failed.load(Ordering::Relaxed),
    );
    if failed > 0 || ok != events.len() as u64 {
        bail!(
            "the broker acknowledged {ok} of {} messages ({failed} failed)",
            events.len()
        );
    }
    Ok(started.elapsed().as_secs_f64())
}

/// How long one side took to read everything.
struct ReadTiming {
    /// From creating the consumer (or starting the server) to the first event.
    startup_seconds: f64,
    /// From the first event to the N-th.
    seconds: f64,
}

/// The baseline: read and count, nothing else, with the server's consumer
/// settings.
fn bare_consumer(mut config: rdkafka::ClientConfig, n: u64) -> Result<ReadTiming> {
    let started = Instant::now();
    let consumer: BaseConsumer = config
        .set("group.id", format!("bench-bare-{}", free_port()?))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set(
            "fetch.wait.max.ms",
            Config::default().kafka.fetch_wait_max_ms.to_string(),
        )
        .set("queued.min.messages", "200000")
        .create()
        .context("creating the bare consumer")?;
    consumer
        .subscribe(&[TOPIC])
        .context("subscribing the bare consumer")?;
    let mut count = 0u64;
    let mut first: Option<Instant> = None;
    while count < n {
        if started.elapsed() > READ_TIMEOUT {
            bail!("the bare consumer read only {count} of {n} messages in {READ_TIMEOUT:?}");
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                first.get_or_insert_with(Instant::now);
                std::hint::black_box(m.payload());
                count += 1;
            }
            Some(Err(e)) => bail!("the bare consumer failed: {e}"),
            None => {}
        }
    }
    let first = first.unwrap_or(started);
    Ok(ReadTiming {
        startup_seconds: first.duration_since(started).as_secs_f64(),
        seconds: first.elapsed().as_secs_f64(),
    })
}

/// The server's side, with its counters at the end.
struct ServerRun {
    startup_seconds: f64,
    seconds: f64,
    rules: u64,
    alerts_fired: u64,
    alerts_delivered_kafka: u64,
    rejected: u64,
    late: u64,
    duplicates: u64,
    batches: u64,
    batch_mean_ms: f64,
}

async fn wardwatch(
    broker: &Broker,
    data_dir: &Arc<TempDir>,
    n: u64,
    rules: &[BenchRule],
) -> Result<ServerRun> {
    // First server, no Kafka: the rules go in over REST and are stored. It
    // is left running (see the module doc).
    let bodies: Vec<serde_json::Value> = rules
        .iter()
        .map(|rule| {
            json!({
                "name": rule.name,
                "sql": rule.sql,
                "severity": rule.severity,
                "cooldown_seconds": rule.cooldown_seconds,
            })
        })
        .collect();
    // Stopped before the consuming server starts: one server per data dir.
    inproc::create_rules(data_dir, &bodies)
        .await?
        .stop_within(Duration::from_secs(30))
        .await
        .context("stopping the rules server")?;
    progress(NAME, format!("{} rules created over REST", rules.len()));

    // Second server, consuming, with the stored rules.
    let config = inproc::consuming_config(broker)?;
    let started = Instant::now();
    let mut server = Server::spawn_in(config, Arc::clone(data_dir))?;
    let mut first: Option<Instant> = None;
    let mut m;
    loop {
        server.check_alive().await?;
        m = server.metrics().await.unwrap_or_default();
        let seen = m.get("wardwatch_events_in_total").copied().unwrap_or(0.0)
            + m.get("wardwatch_events_rejected_total")
                .copied()
                .unwrap_or(0.0);
        if seen > 0.0 {
            first.get_or_insert_with(Instant::now);
        }
        if seen as u64 >= n {
            break;
        }
        if started.elapsed() > READ_TIMEOUT {
            bail!("wardwatch processed only {seen} of {n} events in {READ_TIMEOUT:?}");
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
    let done = Instant::now();
    let first = first.unwrap_or(done);

    // Windows close as the watermark passes them; give the last ones (and
    // the alert delivery) a moment if nothing has fired yet.
    let deadline = Instant::now() + Duration::from_secs(15);
    while m
        .get("wardwatch_alerts_fired_total")
        .copied()
        .unwrap_or(0.0)
        == 0.0
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
        m = server.metrics().await.unwrap_or(m);
    }
    let get = |k: &str| m.get(k).copied().unwrap_or(0.0);
    let seen = get("wardwatch_events_in_total") + get("wardwatch_events_rejected_total");
    if seen as u64 != n {
        bail!("wardwatch counted {seen} events, but {n} were produced");
    }
    let rules_active = get("wardwatch_active_rules") as u64;
    if rules_active != rules.len() as u64 {
        bail!(
            "the consuming server ran {rules_active} rules instead of {}",
            rules.len()
        );
    }
    let alerts_fired = get("wardwatch_alerts_fired_total") as u64;
    if alerts_fired == 0 {
        bail!("wardwatch fired no alerts over {n} events through Kafka");
    }
    let batches = get("wardwatch_batch_seconds_count");
    Ok(ServerRun {
        startup_seconds: first.duration_since(started).as_secs_f64(),
        seconds: done.duration_since(first).as_secs_f64(),
        rules: rules_active,
        alerts_fired,
        alerts_delivered_kafka: get("wardwatch_alerts_delivered_kafka_total") as u64,
        rejected: get("wardwatch_events_rejected_total") as u64,
        late: get("wardwatch_events_late_total") as u64,
        duplicates: get("wardwatch_events_duplicate_total") as u64,
        batches: batches as u64,
        batch_mean_ms: if batches > 0.0 {
            get("wardwatch_batch_seconds_sum") / batches * 1e3
        } else {
            0.0
        },
    })
}

/// Parquet files (and their bytes) under `dir` when the run ended: what the
/// archive had written by then (it buffers up to `archive.flush_interval_ms`).
fn parquet_files(dir: &std::path::Path) -> (u64, u64) {
    let (mut files, mut bytes) = (0, 0);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "parquet") {
                files += 1;
                bytes += entry.metadata().map_or(0, |m| m.len());
            }
        }
    }
    (files, bytes)
}
