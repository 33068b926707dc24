//! The HTTP API (axum): rules, alerts, ingest, history SQL, replay, health,
//! metrics, and the UI. Handlers parse requests, call the domain modules
//! (the engine through the pipeline, [`crate::replay`], the catalog) and map
//! their errors to responses.

pub mod alerts;
pub mod error;
pub mod health;
pub mod ingest;
pub mod query;
pub mod replay;
pub mod rules;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use axum::routing::{get, post};
use axum::Router;
use catalog::rules::RuleStore;
use sql_rules::RuleCompiler;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::pipeline::PipelineHandle;
use crate::sink::alerts::AlertHub;
use crate::sink::dead_letter::DeadLetters;

/// Everything handlers share.
pub struct AppState {
    pub config: Config,
    pub rules: RuleStore,
    pub compiler: RuleCompiler,
    pub pipeline: PipelineHandle,
    pub alerts: Arc<AlertHub>,
    pub dead_letters: Arc<DeadLetters>,
    pub metrics: Arc<Metrics>,
    pub store: Arc<dyn object_store::ObjectStore>,
    /// Where ingested events enter (archive, engine, dead letters).
    pub intake: crate::intake::Intake,
    /// Fires when the server begins to shut down: live feeds end on it.
    pub shutdown: crate::shutdown::ShutdownNotice,
    /// Read-only SQL over the archive (and rows not yet flushed).
    pub history: catalog::HistoryCatalog,
    /// Background replays, by job id.
    pub replays: crate::replay::jobs::ReplayJobs,
    /// History queries running at once (`[limits] max_concurrent_queries`).
    pub query_slots: Arc<tokio::sync::Semaphore>,
    /// Rule changes, acknowledgements and retention deletions.
    pub audit: Arc<catalog::log::JsonLog>,
    pub store_prefix: object_store::path::Path,
    /// Set by the Kafka source once the broker answers; true without Kafka.
    pub kafka_ready: Arc<AtomicBool>,
    /// Serialises rule changes so versions and engine updates stay in order.
    pub rule_writes: tokio::sync::Mutex<()>,
}

pub type SharedState = Arc<AppState>;

const INDEX_HTML: &str = include_str!("../../../web/index.html");

pub fn router(state: SharedState) -> Router {
    Router::new()
        .route("/", get(|| async { axum::response::Html(INDEX_HTML) }))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .route("/api/rules", get(rules::list).post(rules::create))
        .route("/api/rules/validate", post(rules::validate))
        .route(
            "/api/rules/{id}",
            get(rules::get_one)
                .put(rules::update)
                .delete(rules::deactivate),
        )
        .route("/api/alerts", get(alerts::list))
        .route("/api/alerts/stream", get(alerts::stream))
        .route("/api/alerts/{id}/ack", post(alerts::acknowledge))
        .route("/api/dead-letters", get(alerts::dead_letters))
        // Batches of newline-delimited events are larger than axum's 2 MB
        // default body limit.
        .route(
            "/api/ingest",
            post(ingest::ingest).layer(axum::extract::DefaultBodyLimit::max(64 * 1024 * 1024)),
        )
        .route("/api/query", post(query::query))
        .route("/api/replay", post(replay::replay))
        .route(
            "/api/replay/{job}",
            get(replay::status).delete(replay::cancel),
        )
        .with_state(state)
}
