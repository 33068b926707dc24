//! The HTTP API (axum): rules, alerts, ingest, history SQL, replay, health,
//! metrics, and the UI. Handlers parse requests, call the domain modules
//! (the engine through the pipeline, [`crate::replay`], the catalog) and map
//! their errors to responses.
//!
//! The contract, every body a route takes or answers, is [`types`]; the
//! routes and the OpenAPI document (`GET /api/openapi.json`) are built from
//! one list, [`routes`], so the server cannot serve a route the document
//! does not describe.

pub mod alerts;
pub mod error;
pub mod health;
pub mod hospitals;
pub mod ingest;
pub mod keys;
pub mod openapi;
pub mod ops;
pub mod patients;
pub mod query;
pub mod replay;
pub mod rules;
pub mod types;
pub mod ui;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use axum::Router;
use catalog::rules::RuleStore;
use sql_rules::RuleCompiler;

use utoipa::OpenApi;
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouterExt};
use utoipa_axum::routes;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::pipeline::PipelineHandle;
use crate::sink::alerts::AlertHub;
use crate::sink::dead_letter::DeadLetters;

/// Everything handlers share.
pub struct AppState {
    /// Checks every non-public request's credentials.
    pub auth: Arc<crate::auth::Authenticator>,
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
    /// Kafka consumer lag over our partitions; -1 unknown or no Kafka.
    pub kafka_lag: Arc<std::sync::atomic::AtomicI64>,
    /// The same per partition (empty: unknown or no Kafka).
    pub kafka_partition_lag: crate::source::kafka::PartitionLag,
    /// Serialises rule changes so versions and engine updates stay in order.
    pub rule_writes: tokio::sync::Mutex<()>,
    /// The Kafka topics read (`None` without Kafka): onboarding a hospital
    /// with a topic of its own adds it here, and the source starts reading.
    pub topics: Option<crate::source::topics::Topics>,
}

pub type SharedState = Arc<AppState>;

/// Every route, each with its handler's `#[utoipa::path]` (path, methods,
/// parameters, bodies): the router and the OpenAPI document both come from
/// here. Handlers of one path go in one `routes!`.
pub fn routes() -> OpenApiRouter<SharedState> {
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(ui::index))
        .routes(routes!(ui::app_js))
        .routes(routes!(ui::app_css))
        .routes(routes!(ui::vendor_js))
        .routes(routes!(ui::vendor_css))
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz))
        .routes(routes!(health::metrics))
        .routes(routes!(openapi::openapi_json))
        .routes(routes!(rules::list, rules::create))
        .routes(routes!(rules::validate))
        .routes(routes!(rules::get_one, rules::update, rules::deactivate))
        .routes(routes!(rules::reactivate))
        .routes(routes!(rules::alert_rate))
        .routes(routes!(patients::vitals))
        .routes(routes!(alerts::list))
        .routes(routes!(alerts::stream))
        .routes(routes!(alerts::acknowledge))
        .routes(routes!(alerts::dead_letters))
        .routes(
            routes!(ingest::ingest)
                .layer(axum::extract::DefaultBodyLimit::max(ingest::MAX_BODY_BYTES)),
        )
        .routes(routes!(query::query))
        .routes(routes!(replay::replay))
        .routes(routes!(replay::status, replay::cancel))
        .routes(routes!(keys::whoami))
        .routes(routes!(keys::ui_config))
        .routes(routes!(keys::list, keys::create))
        .routes(routes!(keys::revoke))
        .routes(routes!(hospitals::list, hospitals::create))
        .routes(routes!(
            hospitals::get_one,
            hospitals::update,
            hospitals::retire
        ))
        .routes(routes!(hospitals::templates))
        .routes(routes!(ops::operations))
}

pub fn router(state: SharedState) -> Router {
    let (router, _) = routes().split_for_parts();
    router
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            crate::auth::authenticate,
        ))
        .with_state(state)
}
