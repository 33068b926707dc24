//! The `wardwatch` server: configuration, Kafka source and sinks, the
//! pipeline around the rule engine, replay and audit of rules over the
//! archive, the REST API, metrics, the demo ward, the web UI, and the
//! benchmark suite (`wardwatch bench`).

pub mod api;
pub mod archive;
pub mod audit;
pub mod bench;
pub mod config;
pub mod demo;
pub mod metrics;
pub mod pipeline;
pub mod replay;
pub mod server;
pub mod sink;
pub mod source;
