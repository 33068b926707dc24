//! The `wardwatch` server: configuration, Kafka source and sinks, the
//! pipeline around the rule engine, the REST API, metrics, the demo ward,
//! and the web UI.

pub mod api;
pub mod config;
pub mod demo;
pub mod metrics;
pub mod pipeline;
pub mod server;
pub mod sink;
pub mod source;
