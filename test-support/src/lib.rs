//! What the end-to-end tests (`tests/`) and the benchmarks (`bench/`) share,
//! so neither reaches into the other and the shipped `wardwatch` binary
//! carries none of it:
//!
//! - [`broker`]: a throwaway Kafka-protocol broker (tansu, in-memory) on
//!   127.0.0.1, and [`free_port`];
//! - [`server`]: a wardwatch server running in this process on a free port
//!   and a temporary data directory, with its REST client;
//! - [`ward`]: the built-in ward simulator's traffic, partitioned by patient
//!   and decoded into Arrow batches as the Kafka source cuts them;
//! - [`duckdb`]: DuckDB as an independent reader of the Parquet archive.
//!
//! Everything here is for tests and benchmarks: it fails loudly (and says
//! why) rather than skipping when the broker or DuckDB is missing.

pub mod broker;
pub mod duckdb;
pub mod server;
pub mod ward;

pub use broker::{free_port, Broker};
pub use server::{recent_ms, Server};
pub use ward::{partition_of, DecodedWard, Ward, BATCH_ROWS, PARTITIONS};
