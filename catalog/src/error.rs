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

    /// A log name is not usable as a single path segment.
    #[error("invalid log name '{name}': use 1-64 characters from a-z, 0-9, '_' and '-'")]
    InvalidLogName {
        /// The name that was given.
        name: String,
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
}
