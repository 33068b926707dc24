//! Shared harness for the end-to-end tests: a real Kafka-protocol broker
//! (tansu) on 127.0.0.1, a wardwatch server running in-process on a free
//! port, and DuckDB as an independent reader of the archive. All of it lives
//! in `wardwatch-test-support` (the benchmarks use the same launcher and
//! server); this crate only holds the tests themselves.
//!
//! Nothing is skipped silently: if the broker cannot start, the test fails
//! and says why.

pub use wardwatch_test_support::duckdb::duckdb_first_row;
pub use wardwatch_test_support::{free_port, recent_ms, Broker, Server};
