//! The `wardwatch` server: configuration, Kafka source and sinks, the
//! pipeline around the rule engine, replay and audit of rules over the
//! archive, the REST API, metrics, the demo ward and the web UI. The
//! benchmarks (`bench/`) and the test harness (`test-support/`) are crates
//! of their own on top of this one.

pub mod api;
pub mod archive;
pub mod audit;
pub mod config;
pub mod demo;
pub mod intake;
pub mod metrics;
pub mod pipeline;
pub mod replay;
pub mod server;
pub mod shutdown;
pub mod sink;
pub mod source;
