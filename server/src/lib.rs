//! The `wardwatch` server: configuration, Kafka source and sinks, the
//! pipeline around the rule engine, replay and audit of rules over the
//! archive, the REST API, metrics, the demo ward and the web UI. The
//! benchmarks (`bench/`) and the test harness (`test-support/`) are crates
//! of their own on top of this one.

pub(crate) mod api;
pub(crate) mod archive;
pub(crate) mod audit;
pub mod auth;
pub mod checkpoint;
pub mod config;
pub mod demo;
pub(crate) mod instances;
pub(crate) mod intake;
pub(crate) mod metrics;
pub(crate) mod pipeline;
pub mod replay;
pub(crate) mod rule_watch;
pub mod server;
pub(crate) mod shutdown;
pub(crate) mod sink;
pub mod source;
pub(crate) mod templates;
pub(crate) mod transport;

/// The REST API's OpenAPI document (`GET /api/openapi.json`, and
/// `wardwatch openapi`).
pub fn openapi_document() -> &'static str {
    api::openapi::document()
}
