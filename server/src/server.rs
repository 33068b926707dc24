//! Wiring: storage, rules, engine thread, sinks, sources and the HTTP server.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use catalog::log::JsonLog;
use catalog::rules::RuleStore;
use sql_rules::stream::vitals_schema;
use sql_rules::RuleCompiler;

use crate::api::{self, AppState};
use crate::config::Config;
use crate::intake::Intake;
use crate::metrics::Metrics;
use crate::pipeline::{self, Input};
use crate::shutdown::Shutdown;
use crate::sink::alerts::{self, AlertHub};
use crate::sink::dead_letter::DeadLetters;
use crate::sink::kafka::KafkaProducer;
use crate::{demo, source};

/// Runs until Ctrl-C or SIGTERM.
pub async fn run(config: Config, demo_mode: bool) -> Result<()> {
    run_until(config, demo_mode, shutdown_signal()).await
}

/// Runs until `shutdown_requested` completes, then drains in a fixed order
/// (input stops, the Kafka source commits and leaves, the engine finishes,
/// alerts are delivered, the archive and logs are flushed) and returns,
/// each stage bounded so the whole takes seconds whatever clients hold open.
pub async fn run_until(
    config: Config,
    demo_mode: bool,
    shutdown_requested: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    // Refuse an exposed plain-HTTP or unauthenticated address, and load the
    // TLS certificate, before anything is opened.
    let endpoint = crate::transport::Endpoint::prepare(
        &config,
        crate::transport::effective_auth_required(&config, demo_mode),
    )?;
    config.check_instance()?;
    // With an instance id: the part of the shared logs this process writes.
    let writer = config.instance.name();
    if let Some(dir) = config.data_path() {
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("creating data directory {}", dir.display()))?;
    }
    let (store, prefix) = catalog::storage::open_store(&config.data_dir)
        .with_context(|| format!("opening storage at {}", config.data_dir))?;
    // One server per local data directory, held until this function returns
    // (the OS releases it if the process dies, so a crash blocks no restart).
    let _data_dir_lock = match local_data_dir(&config.data_dir) {
        Some(dir) => Some(lock_data_dir(&dir, config.instance.id)?),
        None => None,
    };
    let rules = RuleStore::open(Arc::clone(&store), prefix.clone())
        .await
        .context("loading rules")?;
    let dead_letter_log = JsonLog::open_as(
        Arc::clone(&store),
        prefix.clone(),
        "dead_letters",
        config.archive.max_dead_letters,
        writer.as_deref(),
    )
    .await
    .context("opening dead letters")?;
    // An acknowledgement is written (and on local disk fsync'd) before the
    // request that made it is answered.
    let ack_log = JsonLog::open_as(
        Arc::clone(&store),
        prefix.clone(),
        "acks",
        catalog::log::DEFAULT_MAX_IN_MEMORY,
        writer.as_deref(),
    )
    .await
    .context("opening acknowledgements")?
    .with_durable_appends();
    let metrics = Arc::new(Metrics::default());

    let producer = match &config.kafka.brokers {
        Some(brokers) => Some(KafkaProducer::new(&config.kafka, brokers)?),
        None => None,
    };

    let (alert_tx, alert_rx) = tokio::sync::mpsc::unbounded_channel();
    let engine_config = config.engine_config();
    let pipeline = pipeline::start(
        engine_config,
        config.pipeline.forget_patients_after_ms,
        Arc::clone(&metrics),
        alert_tx,
        config.kafka.brokers.is_some(),
        config.instance.role,
    );

    let hub = Arc::new(AlertHub::new(ack_log));
    // The Parquet archive: raw events and alerts, each on a writer task.
    let archive_config = crate::archive::writer_config(&config.archive);
    // What has no Kafka offsets (alerts, `POST /api/ingest`) is archived
    // under a partition of this instance's own.
    let local_partition = config.instance.local_partition();
    let (vitals_archive, vitals_view, vitals_task) = crate::archive::start_with_commit_interval(
        catalog::archive::ArchiveWriter::new(
            Arc::clone(&store),
            prefix.clone(),
            archive_config.clone(),
        ),
        "vitals",
        std::time::Duration::from_millis(config.archive.ingest_commit_interval_ms),
    );
    let vitals_archive = vitals_archive.with_local_partition(local_partition);
    let (alerts_archive, alerts_view, alerts_task) = crate::archive::start(
        catalog::archive::ArchiveWriter::alerts(Arc::clone(&store), prefix.clone(), archive_config),
        "alerts",
    );
    let alerts_archive = alerts_archive.with_local_partition(local_partition);
    let history = catalog::HistoryCatalog::new(Arc::clone(&store), prefix.clone())
        .context("opening history")?
        .with_unflushed(vitals_view)
        .context("opening history")?
        .with_resources(catalog::history::QueryResources {
            max_memory_bytes: config.limits.max_query_memory_bytes,
            max_function_output_bytes: config.limits.max_function_output_bytes,
        });
    history
        .register_table(catalog::archive::ArchiveTable::alerts(), Some(alerts_view))
        .context("opening alert history")?;
    let audit_log = Arc::new(
        JsonLog::open_as(
            Arc::clone(&store),
            prefix.clone(),
            "audit_log",
            catalog::log::DEFAULT_MAX_IN_MEMORY,
            writer.as_deref(),
        )
        .await
        .context("opening the audit log")?,
    );
    // Damaged files the stores skipped or recovered from while opening.
    let mut damaged = rules.damaged_files().to_vec();
    damaged.extend_from_slice(dead_letter_log.damaged_files());
    damaged.extend_from_slice(hub.acks.damaged_files());
    damaged.extend_from_slice(audit_log.damaged_files());
    crate::audit::record_damaged_files(&audit_log, &damaged).await;
    history
        .register_state_tables(rules.clone(), Arc::clone(&audit_log))
        .context("opening history")?;
    crate::archive::start_retention(
        Arc::clone(&store),
        prefix.clone(),
        config.archive.clone(),
        Arc::clone(&audit_log),
    );

    let dead_letters = Arc::new(DeadLetters {
        table: dead_letter_log,
        kafka: producer
            .clone()
            .map(|p| (p, config.kafka.dlq_topic.clone())),
        metrics: Arc::clone(&metrics),
        in_flight: Default::default(),
    });

    // Rules: the demo's examples on first start, then every active rule.
    let compiler = RuleCompiler::new(vitals_schema()).with_limits(config.limits.rules());
    let now = chrono::Utc::now().timestamp_millis();
    if demo_mode && rules.list().await.is_empty() {
        for draft in demo::example_rules() {
            rules
                .create(draft, now)
                .await
                .context("creating the demo rules")?;
        }
    }
    // What the engine was handed, for the rule watcher.
    let mut running = std::collections::HashMap::new();
    for rule in rules.list().await.into_iter().filter(|r| r.active) {
        running.insert(rule.id.clone(), rule.current.version);
        // Accepted once: limits apply, the submit-time sample check does not.
        match compiler.compile_accepted_scoped(&rule.current.sql, rule.current.hospital()) {
            Ok(compiled) => {
                pipeline.send(Input::Upsert(Box::new(api::rules::rule_spec(
                    &rule.current,
                    compiled,
                ))))?;
            }
            // A stored rule that no longer compiles (e.g. after an upgrade)
            // must not keep the others from running.
            Err(e) => {
                tracing::error!(rule = %rule.id, error = %e, "stored rule does not compile; not running it")
            }
        }
    }

    let shutdown = Shutdown::new();
    let intake = Intake::new(
        pipeline.clone(),
        vitals_archive.clone(),
        Arc::clone(&dead_letters),
        tokio::runtime::Handle::current(),
        shutdown.notice(),
        source::decode::EventTimeBounds::from_config(&config),
    )
    .with_durable_local(config.archive.ingest_durable_ack)
    // The global-rules instance reads every partition for its rules only:
    // the instances owning them archive them and write their dead letters.
    .observing(config.instance.role == crate::config::InstanceRole::GlobalRules);

    // With Kafka: restore the newest checkpoint before reading, learn which
    // alerts went out since it was taken, then checkpoint periodically.
    let checkpoints = config
        .kafka
        .brokers
        .as_deref()
        .filter(|_| config.pipeline.checkpoint_interval_ms > 0);
    let mut restored = crate::checkpoint::Restored::default();
    let mut checkpointer = None;
    if let Some(brokers) = checkpoints {
        let checkpoint_store = catalog::checkpoints::CheckpointStore::for_instance(
            Arc::clone(&store),
            &prefix,
            writer.as_deref(),
        );
        restored = crate::checkpoint::restore(
            &checkpoint_store,
            &pipeline,
            &intake,
            &history,
            &alerts_archive,
            &config.kafka,
            brokers,
            &metrics,
        )
        .await
        .context("restoring the latest checkpoint")?;
        let c = Arc::new(
            crate::checkpoint::Checkpointer::new(
                checkpoint_store,
                pipeline.clone(),
                intake.clone(),
                Arc::clone(&metrics),
            )
            .await?,
        );
        intake.set_checkpointer(Arc::clone(&c));
        checkpointer = Some(c);
    }
    let delivery = tokio::spawn(alerts::deliver(
        alert_rx,
        Arc::clone(&hub),
        producer
            .clone()
            .map(|p| (p, config.kafka.alerts_topic.clone())),
        Arc::clone(&metrics),
        alerts_archive,
        restored.alert_topic_start,
        restored.delivered,
    ));
    let kafka_ready = Arc::new(AtomicBool::new(config.kafka.brokers.is_none()));
    let mut kafka_lag = Arc::new(std::sync::atomic::AtomicI64::new(-1));
    let mut kafka_partition_lag = source::kafka::PartitionLag::default();
    let mut kafka_source = None;
    let mut topics = None;
    if let Some(brokers) = &config.kafka.brokers {
        // Hospitals onboarded with a topic of their own are read (unless
        // another instance of a partition split reads them).
        let read = source::topics::Topics::new(
            &config.kafka.vitals_topic,
            config.kafka.partitions.is_none() || config.kafka.hospital_topics,
        );
        let hospital_store = catalog::hospitals::HospitalStore::new(Arc::clone(&store), &prefix);
        read.sync_hospitals(
            &source::topics::hospital_topics(&hospital_store)
                .await
                .context("listing hospitals")?,
        );
        {
            // What another instance onboards or retires is read (or let go)
            // within seconds.
            let read = read.clone();
            let stop = shutdown.notice();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
                loop {
                    tokio::select! {
                        _ = tick.tick() => {}
                        _ = stop.clone().requested() => return,
                    }
                    match source::topics::hospital_topics(&hospital_store).await {
                        Ok(wanted) => read.sync_hospitals(&wanted),
                        Err(e) => tracing::warn!(error = %e, "listing hospitals' topics"),
                    }
                }
            });
        }
        let src = source::kafka::start(
            &config.kafka,
            brokers,
            &config.pipeline,
            intake.clone(),
            read.clone(),
            shutdown.notice(),
        )?;
        topics = Some(read);
        kafka_lag = Arc::clone(&src.lag);
        kafka_partition_lag = Arc::clone(&src.partition_lag);
        let connected = Arc::clone(&src.connected);
        let ready = Arc::clone(&kafka_ready);
        let stop = shutdown.notice();
        tokio::spawn(async move {
            while !stop.is_requested() {
                ready.store(connected.load(Ordering::Relaxed), Ordering::Relaxed);
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
        });
        kafka_source = Some(src);
        tracing::info!(brokers = %brokers, topic = %config.kafka.vitals_topic, "consuming from Kafka");
    } else {
        tracing::info!("no Kafka configured: events arrive over POST /api/ingest");
    }

    // Tasks that stop on the notice and are waited for (bounded) before the
    // pipeline drains: the demo ward, the HTTP server, the log flusher.
    let mut front = Vec::new();
    if let Some(c) = checkpointer {
        front.push(c.spawn_periodic(
            std::time::Duration::from_millis(config.pipeline.checkpoint_interval_ms),
            config.pipeline.checkpoint_max_overhead_percent,
            shutdown.notice(),
        ));
    }
    if let Some(task) = crate::instances::spawn(
        Arc::clone(&store),
        prefix.clone(),
        &config,
        shutdown.notice(),
    ) {
        front.push(task);
    }
    front.push(tokio::spawn(crate::sink::dead_letter::run_retention(
        Arc::clone(&dead_letters),
        crate::sink::dead_letter::Retention::from_config(&config.archive),
        shutdown.notice(),
    )));
    if demo_mode {
        front.push(tokio::spawn(demo::run(
            config.demo.patients,
            config.demo.seed,
            intake.clone(),
            config.pipeline.max_batch_rows,
            shutdown.notice(),
        )));
    }

    // Flush history logs to storage every second.
    {
        let hub = Arc::clone(&hub);
        let dl = Arc::clone(&dead_letters);
        let audit = Arc::clone(&audit_log);
        let stop = shutdown.notice();
        let shared = writer.is_some();
        front.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.clone().requested() => return,
                }
                flush_logs(&hub, &dl, &audit).await;
                if shared {
                    // What the other instances wrote: acknowledgements,
                    // audit records, dead letters.
                    if let Err(e) = hub.refresh_acks().await {
                        tracing::warn!(error = %e, "reading the other instances' acknowledgements");
                    }
                    for log in [&dl.table, &*audit] {
                        if let Err(e) = log.refresh().await {
                            tracing::warn!(error = %e, "reading the other instances' logs");
                        }
                    }
                }
            }
        }));
    }

    // Bounded pools for the heavy readers of history (each can hold a
    // scan's buffers, or an engine and an hour of events, in memory).
    let replays = crate::replay::jobs::ReplayJobs::new(
        config.limits.max_concurrent_replays,
        config.limits.max_finished_replays,
    );
    let query_slots = Arc::new(tokio::sync::Semaphore::new(
        config.limits.max_concurrent_queries.max(1),
    ));
    let auth = Arc::new(
        crate::auth::Authenticator::new(
            &config.auth,
            crate::transport::effective_auth_required(&config, demo_mode),
            catalog::api_keys::ApiKeyStore::new(Arc::clone(&store), &prefix),
        )
        .await?
        .with_rate_limits(
            config.limits.max_requests_per_second_per_caller,
            config.limits.max_request_burst_per_caller,
        ),
    );
    {
        // Callers whose buckets are full again are forgotten: the map holds
        // the recent ones only.
        let auth = Arc::clone(&auth);
        let stop = shutdown.notice();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(10));
            loop {
                tokio::select! {
                    _ = tick.tick() => auth.rate.forget_idle(),
                    _ = stop.clone().requested() => return,
                }
            }
        });
    }
    let state = Arc::new(AppState {
        auth,
        config,
        rules,
        compiler,
        pipeline: pipeline.clone(),
        alerts: Arc::clone(&hub),
        dead_letters: Arc::clone(&dead_letters),
        metrics,
        store,
        store_prefix: prefix,
        intake,
        shutdown: shutdown.notice(),
        history,
        audit: Arc::clone(&audit_log),
        replays,
        query_slots,
        kafka_ready,
        kafka_lag,
        kafka_partition_lag,
        rule_writes: tokio::sync::Mutex::new(()),
        topics,
    });
    if state.config.instance.id.is_some() {
        // Rules created, changed or deactivated through other instances.
        let interval =
            std::time::Duration::from_millis(state.config.instance.rule_watch_interval_ms);
        tokio::spawn(crate::rule_watch::run(
            Arc::clone(&state),
            running,
            interval,
            shutdown.notice(),
        ));
    }
    let app = crate::transport::protect(api::router(Arc::clone(&state)), &state.config);
    drop(state);
    let endpoint = endpoint.bind().await?;
    tracing::info!("wardwatch listening on {}", endpoint.url());
    let http = {
        let stop = shutdown.notice();
        tokio::spawn(endpoint.serve(app, stop.requested()))
    };
    let http_abort = http.abort_handle();

    // Run until asked to stop, or until the HTTP server fails.
    let mut http = std::pin::pin!(http);
    let http_result = tokio::select! {
        _ = shutdown_requested => None,
        r = &mut http => Some(r),
    };
    let started = std::time::Instant::now();
    shutdown.trigger();
    tracing::info!("shutting down: draining the pipeline");

    // 1. Stop taking input: the HTTP server finishes requests in flight (live
    //    feeds end on the notice), the demo and periodic tasks return. A
    //    client that holds a connection open past the grace is cut off.
    if http_result.is_none() && tokio::time::timeout(STAGE_LIMIT, &mut http).await.is_err() {
        tracing::warn!("HTTP connections still open after {STAGE_LIMIT:?}: closing them");
        http_abort.abort();
    }
    for task in front {
        if tokio::time::timeout(STAGE_LIMIT, task).await.is_err() {
            tracing::warn!("a background task did not stop in time");
        }
    }
    // 2. The Kafka source hands over what it read, commits what is
    //    archived, and leaves the group.
    if let Some(src) = kafka_source {
        if !src.stopped(STAGE_LIMIT).await {
            tracing::warn!("the Kafka source did not stop in time");
        }
    }
    // 3. The engine processes everything it was given and stops; alert
    //    delivery drains and ends with it.
    if tokio::time::timeout(STAGE_LIMIT, pipeline.stop())
        .await
        .is_err()
    {
        tracing::warn!("the engine did not stop in time");
    }
    if tokio::time::timeout(STAGE_LIMIT, delivery).await.is_err() {
        tracing::warn!("alert delivery did not finish in time");
    }
    // 4. The archives write everything they buffer.
    vitals_archive.close().await;
    let archives = async {
        let _ = vitals_task.await;
        let _ = alerts_task.await;
    };
    if tokio::time::timeout(ARCHIVE_LIMIT, archives).await.is_err() {
        tracing::error!("the archive's final flush did not finish in time");
    }
    // 5. The logs: dead letters, acknowledgements, audit.
    flush_logs(&hub, &dead_letters, &audit_log).await;
    tracing::info!(elapsed_ms = started.elapsed().as_millis() as u64, "stopped");
    match http_result {
        Some(Ok(Ok(()))) | None => Ok(()),
        Some(Ok(Err(e))) => Err(anyhow::Error::from(e).context("the HTTP server failed")),
        Some(Err(e)) => Err(anyhow::anyhow!("the HTTP server task failed: {e}")),
    }
}

/// How long each shutdown stage may take before the next one starts anyway.
const STAGE_LIMIT: std::time::Duration = std::time::Duration::from_secs(3);
/// The archive's final flush writes Parquet files: give it a little longer.
const ARCHIVE_LIMIT: std::time::Duration = std::time::Duration::from_secs(10);

/// The lock file in a local data directory; it holds the holder's pid.
pub const DATA_DIR_LOCK: &str = "wardwatch.lock";

/// The local directory behind a data location: a plain path or a
/// `file:///…` URL (percent-encoded ones are not decoded and not locked).
/// Object stores (`s3://`, `memory://`) have no lock.
fn local_data_dir(location: &str) -> Option<std::path::PathBuf> {
    let location = location.trim();
    match location.split_once("://") {
        None => Some(location.into()),
        Some((scheme, path)) if scheme.eq_ignore_ascii_case("file") => {
            (path.starts_with('/') && !path.contains('%')).then(|| path.into())
        }
        Some(_) => None,
    }
}

/// Locks `dir` for this process for as long as the returned files are
/// open (the OS releases them if the process dies, so a crash blocks no
/// restart), writing our pid into the file it holds alone:
/// - a single instance holds [`DATA_DIR_LOCK`] exclusively;
/// - an instance with an id holds it shared, and `wardwatch-i{id}.lock`
///   exclusively.
///
/// So a second single server, a second process with the same id, a single
/// server where instances run, or an instance where a single server runs
/// fails here, naming the directory, the lock and the holder's pid.
fn lock_data_dir(dir: &std::path::Path, instance: Option<u32>) -> Result<Vec<std::fs::File>> {
    let mut held = Vec::new();
    let Some(id) = instance else {
        held.push(lock_file(dir, DATA_DIR_LOCK, false, || {
            "another wardwatch server, or instances with an [instance] id, use it. \
             Two single servers must not share a local data directory: give each its own \
             --data-dir, or give every process sharing it an [instance] id"
                .to_string()
        })?);
        return Ok(held);
    };
    held.push(lock_file(dir, DATA_DIR_LOCK, true, || {
        "a wardwatch server without an [instance] id uses it alone; give it an id too".to_string()
    })?);
    held.push(lock_file(
        dir,
        &format!("wardwatch-i{id}.lock"),
        false,
        || {
            format!(
                "another process runs as [instance] id = {id} on it: \
             each instance sharing a data directory needs an id of its own"
            )
        },
    )?);
    Ok(held)
}

/// Takes `dir/name` (shared or exclusive) without waiting; an exclusive
/// holder's pid is written into the file.
fn lock_file(
    dir: &std::path::Path,
    name: &str,
    shared: bool,
    why: impl FnOnce() -> String,
) -> Result<std::fs::File> {
    use std::io::{Read, Seek, Write};
    let path = dir.join(name);
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("opening the data directory lock {}", path.display()))?;
    let taken = if shared {
        file.try_lock_shared()
    } else {
        file.try_lock()
    };
    match taken {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = match holder.trim() {
                "" => String::new(),
                h => format!(" ({h})"),
            };
            anyhow::bail!(
                "the data directory {} is in use by another wardwatch server{holder}: \
                 it holds the lock {}. {}",
                dir.display(),
                path.display(),
                why()
            );
        }
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(e).with_context(|| format!("locking {}", path.display()))
        }
    }
    // Shared holders say so instead (a stale pid would mislead).
    let holder = if shared {
        "instances with an [instance] id".to_string()
    } else {
        format!("pid {}", std::process::id())
    };
    file.set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| writeln!(file, "{holder}"))
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(file)
}

/// Writes the JSON-lines logs' buffered records to storage.
async fn flush_logs(hub: &AlertHub, dead_letters: &DeadLetters, audit: &JsonLog) {
    if let Err(e) = dead_letters.table.flush().await {
        tracing::error!(error = %e, "flushing dead letters");
    }
    if let Err(e) = hub.acks.flush().await {
        tracing::error!(error = %e, "flushing acknowledgements");
    }
    if let Err(e) = audit.flush().await {
        tracing::error!(error = %e, "flushing the audit log");
    }
}

/// Ctrl-C, or SIGTERM from a container runtime or systemd: stop accepting
/// requests, then flush logs before exiting.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = terminate => {}
    }
    tracing::info!("shutting down");
}

#[cfg(test)]
mod data_dir_lock_tests {
    use super::*;

    #[test]
    fn local_directories_are_locked_object_stores_are_not() {
        assert_eq!(local_data_dir(" ./data "), Some("./data".into()));
        assert_eq!(
            local_data_dir("file:///var/lib/ww"),
            Some("/var/lib/ww".into())
        );
        assert_eq!(
            local_data_dir("FILE:///var/lib/ww"),
            Some("/var/lib/ww".into())
        );
        assert_eq!(local_data_dir("file:///var/lib/a%20b"), None);
        assert_eq!(local_data_dir("s3://bucket/ww"), None);
        assert_eq!(local_data_dir("memory://"), None);
    }

    #[test]
    fn a_second_lock_is_refused_naming_the_directory_and_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let held = lock_data_dir(dir.path(), None).unwrap();
        let e = lock_data_dir(dir.path(), None).unwrap_err().to_string();
        let want = format!(
            "the data directory {} is in use by another wardwatch server (pid {})",
            dir.path().display(),
            std::process::id()
        );
        assert!(e.starts_with(&want), "{e}");
        // Nor may an instance join a single server's directory.
        let e = lock_data_dir(dir.path(), Some(0)).unwrap_err().to_string();
        assert!(e.contains("without an [instance] id"), "{e}");
        drop(held);
        lock_data_dir(dir.path(), None).expect("free again once the holder closes it");
    }

    #[test]
    fn instances_share_a_directory_each_under_its_own_id_and_never_beside_a_single_server() {
        let dir = tempfile::tempdir().unwrap();
        let a = lock_data_dir(dir.path(), Some(0)).unwrap();
        let b = lock_data_dir(dir.path(), Some(1)).unwrap();
        let e = lock_data_dir(dir.path(), Some(1)).unwrap_err().to_string();
        assert!(
            e.contains("wardwatch-i1.lock") && e.contains("id = 1"),
            "{e}"
        );
        let e = lock_data_dir(dir.path(), None).unwrap_err().to_string();
        assert!(e.contains("[instance] id"), "{e}");
        drop((a, b));
        lock_data_dir(dir.path(), None).expect("free once the instances are gone");
    }
}
