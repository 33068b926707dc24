//! The one error type the catalog returns.
//!
//! Every variant carries what the person reading the message needs to act on
//! it: the storage location or object path that failed, or the rule id that
//! was asked for. Object-store errors are wrapped rather than flattened so the
//! underlying cause stays reachable through [`std::error::Error::source`].

/// Everything that can go wrong while persisting or loading catalog data.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The storage location string could not be turned into an object store.
    #[error("cannot open storage location '{location}': {reason}")]
    InvalidLocation {
        /// The location as the user wrote it.
        location: String,
        /// Why it was rejected.
        reason: String,
    },

    /// The storage location uses a URL scheme this build cannot serve.
    #[error("unsupported storage scheme '{scheme}' in '{location}'; supported: {supported}")]
    UnsupportedScheme {
        /// The location as the user wrote it.
        location: String,
        /// The scheme that was not recognised.
        scheme: String,
        /// A human-readable list of the schemes this build accepts.
        supported: String,
    },

    /// An object-store operation failed.
    #[error("storage error at '{path}': {source}")]
    Store {
        /// The object (or prefix) being read, written or listed.
        path: String,
        /// The underlying object-store error.
        #[source]
        source: object_store::Error,
    },

    /// An immutable object already exists with different content; the catalog
    /// never overwrites it.
    #[error("'{path}' already exists and is immutable; refusing to overwrite it")]
    AlreadyExists {
        /// The object that already exists.
        path: String,
    },

    /// A stored object is not valid JSON of the expected shape.
    #[error("cannot decode '{path}': {source}")]
    Decode {
        /// The object that failed to decode, with a line number for JSON lines.
        path: String,
        /// The underlying JSON error.
        #[source]
        source: serde_json::Error,
    },

    /// A value could not be encoded as JSON before writing it.
    #[error("cannot encode {what} as JSON: {source}")]
    Encode {
        /// What was being encoded (for example `rule 'x' version 3`).
        what: String,
        /// The underlying JSON error.
        #[source]
        source: serde_json::Error,
    },

    /// No rule with this id exists.
    #[error("rule '{rule_id}' not found")]
    RuleNotFound {
        /// The id that was asked for.
        rule_id: String,
    },

    /// The stored objects of a rule contradict each other.
    #[error("rule '{rule_id}' is corrupt in storage at '{path}': {reason}")]
    CorruptRule {
        /// The rule whose objects are inconsistent.
        rule_id: String,
        /// The object where the inconsistency was found.
        path: String,
        /// What is inconsistent.
        reason: String,
    },

    /// A rule draft failed validation (empty name, empty SQL, ...).
    #[error("invalid rule: {0}")]
    InvalidRule(String),

    /// A severity string is not one of the known levels.
    #[error("invalid severity '{value}': expected one of info, low, medium, high, critical")]
    InvalidSeverity {
        /// The string that was given.
        value: String,
    },

    /// An API key id is not one the server could have made.
    #[error("'{id}' is not an API key id")]
    InvalidKeyId {
        /// The id that was given.
        id: String,
    },

    /// A hospital id is not a plain name.
    #[error("'{id}' is not a hospital id: use 1-128 letters, digits, '-', '_' or '.'")]
    InvalidHospitalId {
        /// The id that was given.
        id: String,
    },

    /// A log name is not usable as a single path segment.
    #[error("invalid log name '{name}': use 1-64 characters from a-z, 0-9, '_' and '-'")]
    InvalidLogName {
        /// The name that was given.
        name: String,
    },

    /// An archive table name is not usable as a single path segment.
    #[error("invalid archive table name '{name}': use 1-64 characters from a-z, 0-9, '_' and '-'")]
    InvalidTableName {
        /// The name that was given.
        name: String,
    },

    /// A batch handed to the archive does not fit the table it is written to.
    #[error("cannot archive into '{table}': {reason}")]
    ArchiveSchema {
        /// The archive table (`vitals`, `alerts`, ...).
        table: String,
        /// What does not fit.
        reason: String,
    },

    /// The offsets of a batch handed to the archive contradict earlier ones.
    #[error(
        "cannot archive into '{table}' for partition {partition} at offset {offset}: {reason}"
    )]
    ArchiveOffset {
        /// The archive table.
        table: String,
        /// The source partition (-1 for input that is not from Kafka).
        partition: i32,
        /// The first offset of the batch.
        offset: i64,
        /// What is wrong with it.
        reason: String,
    },

    /// Encoding or decoding a Parquet file failed.
    #[error("Parquet error at '{path}': {source}")]
    Parquet {
        /// The archive file being written or read.
        path: String,
        /// The underlying Parquet error.
        #[source]
        source: parquet::errors::ParquetError,
    },

    /// An Arrow kernel failed while preparing archive data.
    #[error("cannot {what}: {source}")]
    Arrow {
        /// What was being done (for example `split a batch by hour`).
        what: String,
        /// The underlying Arrow error.
        #[source]
        source: arrow::error::ArrowError,
    },

    /// An alert record does not have the shape the alerts archive expects.
    #[error("alert #{index} cannot be archived or read back: {reason}")]
    InvalidAlert {
        /// Position of the alert in the slice that was passed.
        index: usize,
        /// What is missing or of the wrong type.
        reason: String,
    },

    /// A history query was refused because it would change something or read
    /// outside the archive.
    #[error("history queries are read-only: {reason}")]
    QueryRefused {
        /// What was refused and why.
        reason: String,
    },

    /// A history query failed to plan or run.
    #[error("history query failed: {source}")]
    Query {
        /// The DataFusion error (boxed: it is large and this path is cold).
        #[source]
        source: Box<datafusion::error::DataFusionError>,
    },

    /// A history query needed more memory than its budget (the per-query
    /// memory pool, or one call of a size-amplifying function) and was
    /// stopped; see `HistoryCatalog::with_resources`.
    #[error("history query stopped: it needs more memory than one query may hold ({reason}); narrow the time range, filter or aggregate")]
    QueryOverBudget {
        /// DataFusion's account of what did not fit.
        reason: String,
    },

    /// A history query ran longer than its time limit and was cancelled.
    #[error("history query cancelled after {limit_ms} ms (the time limit); narrow the time range or add filters")]
    QueryTimeout {
        /// The limit that was exceeded, in milliseconds.
        limit_ms: u64,
    },

    /// A history query produced more rows than allowed.
    #[error(
        "history query returns more than {limit} rows (the row limit); add a LIMIT or aggregate"
    )]
    QueryTooLarge {
        /// The row limit.
        limit: usize,
    },

    /// A background task the catalog started (for example Parquet encoding)
    /// did not finish.
    #[error("background task '{what}' failed: {reason}")]
    Task {
        /// What the task was doing.
        what: String,
        /// Why it did not finish.
        reason: String,
    },
}

impl CatalogError {
    /// Wraps an object-store error with the path it happened at.
    pub(crate) fn store(path: impl std::fmt::Display, source: object_store::Error) -> Self {
        Self::Store {
            path: path.to_string(),
            source,
        }
    }

    /// Wraps a DataFusion error from a history query.
    pub fn query(source: datafusion::error::DataFusionError) -> Self {
        // Wherever it was wrapped (a stream, a join task), running out of a
        // query's memory budget is its own answer (HTTP 413), not a failure.
        if let datafusion::error::DataFusionError::ResourcesExhausted(reason) = source.find_root() {
            return Self::QueryOverBudget {
                reason: reason.clone(),
            };
        }
        Self::Query {
            source: Box::new(source),
        }
    }
}
