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
use crate::metrics::Metrics;
use crate::pipeline::{self, Input};
use crate::sink::alerts::{self, AlertHub};
use crate::sink::dead_letter::DeadLetters;
use crate::sink::kafka::KafkaProducer;
use crate::{demo, source};

/// Runs until Ctrl-C or SIGTERM.
pub async fn run(config: Config, demo_mode: bool) -> Result<()> {
    run_until(config, demo_mode, shutdown_signal()).await
}

/// Runs until `shutdown` completes, then stops consuming, flushes the
/// archive and logs, and returns.
pub async fn run_until(
    config: Config,
    demo_mode: bool,
    shutdown_requested: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    if let Some(dir) = config.data_path() {
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("creating data directory {}", dir.display()))?;
    }
    let (store, prefix) = catalog::storage::open_store(&config.data_dir)
        .with_context(|| format!("opening storage at {}", config.data_dir))?;
    let rules = RuleStore::open(Arc::clone(&store), prefix.clone())
        .await
        .context("loading rules")?;
    let alert_log = JsonLog::open(Arc::clone(&store), prefix.clone(), "alerts")
        .await
        .context("opening alert history")?;
    let dead_letter_log = JsonLog::open(Arc::clone(&store), prefix.clone(), "dead_letters")
        .await
        .context("opening dead letters")?;
    let ack_log = JsonLog::open(Arc::clone(&store), prefix.clone(), "acks")
        .await
        .context("opening acknowledgements")?;
    let metrics = Arc::new(Metrics::default());

    let producer = match &config.kafka.brokers {
        Some(brokers) => Some(KafkaProducer::new(&config.kafka, brokers)?),
        None => None,
    };

    let (alert_tx, alert_rx) = tokio::sync::mpsc::unbounded_channel();
    let engine_config = config.pipeline.engine_config();
    let pipeline = pipeline::start(
        engine_config,
        Arc::clone(&metrics),
        alert_tx,
        config.kafka.brokers.is_some(),
    );

    let hub = Arc::new(AlertHub::new(alert_log, ack_log));
    // The Parquet archive: raw events and alerts, each on a writer task.
    let archive_config = crate::archive::writer_config(&config.archive);
    let (vitals_archive, vitals_view, vitals_task) = crate::archive::start(
        catalog::archive::ArchiveWriter::new(
            Arc::clone(&store),
            prefix.clone(),
            archive_config.clone(),
        ),
        "vitals",
    );
    let (alerts_archive, alerts_view, alerts_task) = crate::archive::start(
        catalog::archive::ArchiveWriter::alerts(Arc::clone(&store), prefix.clone(), archive_config),
        "alerts",
    );
    let history = catalog::HistoryCatalog::new(Arc::clone(&store), prefix.clone())
        .context("opening history")?
        .with_unflushed(vitals_view)
        .context("opening history")?;
    history
        .register_table(catalog::archive::ArchiveTable::alerts(), Some(alerts_view))
        .context("opening alert history")?;
    let audit_log = Arc::new(
        JsonLog::open(Arc::clone(&store), prefix.clone(), "audit_log")
            .await
            .context("opening the audit log")?,
    );
    crate::archive::start_retention(
        Arc::clone(&store),
        prefix.clone(),
        config.archive.clone(),
        Arc::clone(&audit_log),
    );

    tokio::spawn(alerts::deliver(
        alert_rx,
        Arc::clone(&hub),
        producer
            .clone()
            .map(|p| (p, config.kafka.alerts_topic.clone())),
        Arc::clone(&metrics),
        alerts_archive,
    ));
    let dead_letters = Arc::new(DeadLetters {
        table: dead_letter_log,
        kafka: producer
            .clone()
            .map(|p| (p, config.kafka.dlq_topic.clone())),
        metrics: Arc::clone(&metrics),
        in_flight: Default::default(),
    });

    // Rules: the demo's examples on first start, then every active rule.
    let compiler = RuleCompiler::new(vitals_schema());
    let now = chrono::Utc::now().timestamp_millis();
    if demo_mode && rules.list().await.is_empty() {
        for draft in demo::example_rules() {
            rules
                .create(draft, now)
                .await
                .context("creating the demo rules")?;
        }
    }
    for rule in rules.list().await.into_iter().filter(|r| r.active) {
        match compiler.compile(&rule.current.sql) {
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

    let shutdown = Arc::new(AtomicBool::new(false));
    let kafka_ready = Arc::new(AtomicBool::new(config.kafka.brokers.is_none()));
    if let Some(brokers) = &config.kafka.brokers {
        let src = source::kafka::start(
            &config.kafka,
            brokers,
            &config.pipeline,
            source::kafka::SourceOutputs {
                pipeline: pipeline.clone(),
                dead_letters: Arc::clone(&dead_letters),
                archive: vitals_archive.clone(),
                rt: tokio::runtime::Handle::current(),
                time_bounds: source::decode::EventTimeBounds::from_config(&config),
            },
            Arc::clone(&shutdown),
        )?;
        let ready = Arc::clone(&kafka_ready);
        tokio::spawn(async move {
            loop {
                ready.store(src.connected.load(Ordering::Relaxed), Ordering::Relaxed);
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
        });
        tracing::info!(brokers = %brokers, topic = %config.kafka.vitals_topic, "consuming from Kafka");
    } else {
        tracing::info!("no Kafka configured: events arrive over POST /api/ingest");
    }

    if demo_mode {
        tokio::spawn(demo::run(
            config.demo.patients,
            config.demo.seed,
            pipeline.clone(),
            Arc::clone(&dead_letters),
            vitals_archive.clone(),
            config.pipeline.max_batch_rows,
            source::decode::EventTimeBounds::from_config(&config),
        ));
    }

    // Flush history logs to storage every second.
    {
        let hub = Arc::clone(&hub);
        let dl = Arc::clone(&dead_letters);
        let audit = Arc::clone(&audit_log);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
            loop {
                tick.tick().await;
                if let Err(e) = hub.log.flush().await {
                    tracing::error!(error = %e, "flushing alert history");
                }
                if let Err(e) = dl.table.flush().await {
                    tracing::error!(error = %e, "flushing dead letters");
                }
                if let Err(e) = hub.acks.flush().await {
                    tracing::error!(error = %e, "flushing acknowledgements");
                }
                if let Err(e) = audit.flush().await {
                    tracing::error!(error = %e, "flushing the audit log");
                }
            }
        });
    }

    let listen = config.listen;
    let state = Arc::new(AppState {
        config,
        rules,
        compiler,
        pipeline,
        alerts: Arc::clone(&hub),
        dead_letters: Arc::clone(&dead_letters),
        metrics,
        store,
        store_prefix: prefix,
        archive: vitals_archive,
        history,
        audit: Arc::clone(&audit_log),
        replays: Default::default(),
        kafka_ready,
        rule_writes: tokio::sync::Mutex::new(()),
    });
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("listening on {listen}"))?;
    tracing::info!("wardwatch listening on http://{listen}");
    axum::serve(listener, api::router(state))
        .with_graceful_shutdown(shutdown_requested)
        .await?;
    shutdown.store(true, Ordering::Relaxed);
    // Dropping the state closes the archive channels; wait for the final
    // flush so buffered events reach Parquet before exit.
    if let Err(e) = audit_log.flush().await {
        tracing::error!(error = %e, "flushing the audit log at shutdown");
    }
    drop(audit_log);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        let _ = vitals_task.await;
        let _ = alerts_task.await;
    })
    .await;

    if let Err(e) = hub.log.flush().await {
        tracing::error!(error = %e, "flushing alert history at shutdown");
    }
    if let Err(e) = dead_letters.table.flush().await {
        tracing::error!(error = %e, "flushing dead letters at shutdown");
    }
    Ok(())
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
