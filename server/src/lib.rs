//! The `wardwatch` server: configuration, Kafka source and sinks, the
//! pipeline around the rule engine, the REST API, metrics, the demo ward,
//! the web UI, and the benchmark suite (`wardwatch bench`).

pub mod api;
pub mod archive;
pub mod bench;
pub mod config;
pub mod demo;
pub mod intake;
pub mod metrics;
pub mod pipeline;
pub mod server;
pub mod shutdown;
pub mod sink;
pub mod source;
