//! The REST contract: every request body, query string and response body of
//! the API as a Rust type. `GET /api/openapi.json` is generated from these
//! types and the handlers' `#[utoipa::path]` annotations ([`super::openapi`]).
//!
//! One folder on purpose, apart from the handlers: a UI or client author
//! reads the whole contract here without the HTTP plumbing around it, and
//! handlers answer with these types and nothing else (no `serde_json::json!`).
//! This file holds the error body, health, ingest and query; [`rules`],
//! [`alerts`] and [`replay`] the rest, all re-exported here.
//!
//! What the API shows of other crates' types (the engine's [`sql_rules::Alert`],
//! the catalog's [`catalog::rules::Rule`], the pipeline's rule health, the
//! replay report…) is mirrored by a `…View` with a `From` conversion, rather
//! than given a schema where it lives: those crates stay free of HTTP, and a
//! change to them reaches the wire only through here. The tests (`tests.rs`)
//! serialize each domain value and its view and fail when they differ, and
//! name every field of the mirrored types, so one added there and not here
//! is caught.

pub mod alerts;
pub mod hospitals;
pub mod keys;
pub mod ops;
pub mod patients;
pub mod replay;
pub mod rules;
#[cfg(test)]
mod tests;

pub use alerts::*;
pub use hospitals::*;
pub use keys::*;
pub use ops::*;
pub use patients::*;
pub use replay::*;
pub use rules::*;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

// ---------------------------------------------------------------- errors

/// Every 4xx and 5xx answer of the API (`/healthz` and `/readyz` aside,
/// which answer 503 with their own body).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// Written for the person who sees it: what was wrong, and the limit or
    /// the expected shape when there is one.
    pub message: String,
    /// Where in the submitted SQL the problem is (1-based), for SQL errors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column: Option<u64>,
}

// ---------------------------------------------------------------- health

/// `GET /healthz`: 200 `ok`, or 503 `stalled` while the engine thread has
/// been busy on one input past `engine_stall_ms` (or died with input waiting).
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Health {
    pub status: HealthStatus,
    /// How long the engine thread has been on its current input (0: it has
    /// exited with input waiting). Only when stalled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub engine_busy_ms: Option<i64>,
    /// Inputs waiting for the engine thread. Only when stalled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inputs_waiting: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum HealthStatus {
    Ok,
    Stalled,
}

/// `GET /readyz`: 200 once storage answers, Kafka answers (when configured)
/// and the server is not shutting down; 503 otherwise, with the same body.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Readiness {
    pub ready: bool,
    pub storage: StorageState,
    pub kafka: KafkaState,
    /// The server has begun to shut down.
    pub draining: bool,
    /// Messages the Kafka consumer is behind, over its partitions (from
    /// librdkafka's statistics, each second); null without Kafka or while
    /// unknown.
    #[schema(required)]
    pub consumer_lag: Option<i64>,
    /// What works but is not well, while still ready: `"engine stalled"`,
    /// `"N rules failing"`, `"N rules suspended"`, `"N inputs waiting"`,
    /// `"kafka lag N"` (over 100,000 messages). Empty when all is well.
    pub degraded: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum StorageState {
    Ok,
    Unreachable,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
pub enum KafkaState {
    #[serde(rename = "not configured")]
    NotConfigured,
    #[serde(rename = "ok")]
    Ok,
    #[serde(rename = "unreachable")]
    Unreachable,
}

// ---------------------------------------------------------------- ingest

/// `POST /api/ingest`: lines decoded and handed to the pipeline, and lines
/// refused (each one a dead letter).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
pub struct IngestResultView {
    pub accepted: usize,
    pub rejected: usize,
}

impl From<crate::source::ingest::IngestResult> for IngestResultView {
    fn from(r: crate::source::ingest::IngestResult) -> Self {
        Self {
            accepted: r.accepted,
            rejected: r.rejected,
        }
    }
}

// ---------------------------------------------------------------- query

/// `POST /api/query`: read-only SQL over `vitals`, `alerts`, `rules`,
/// `rule_versions` and `audit_log`.
#[derive(Debug, Clone, PartialEq, Deserialize, ToSchema)]
pub struct QueryRequest {
    pub sql: String,
}

/// A query's JSON answer. It is written as it is produced (a large result is
/// streamed), so this type documents the shape; `api/query.rs` writes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct QueryResult {
    pub columns: Vec<Column>,
    /// One object per row, by column name.
    pub rows: Vec<Map<String, Value>>,
    /// Present (true) when a streamed answer was cut short by the row or time
    /// limit; `rows` then holds what was sent before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub truncated: Option<bool>,
    /// Why a streamed answer was cut short.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}
