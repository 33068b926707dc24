//! Errors a rule author or the engine's caller can see.
//!
//! Compile errors carry the 1-based line and column in the rule's SQL so the
//! REST layer and the UI can point at the offending token.

use std::fmt;

/// Where in the rule's SQL text an error was found (1-based; 0 means unknown).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct SqlPosition {
    pub line: u64,
    pub column: u64,
}

impl SqlPosition {
    pub fn new(line: u64, column: u64) -> Self {
        Self { line, column }
    }

    pub fn from_sqlparser(loc: sqlparser::tokenizer::Location) -> Self {
        Self {
            line: loc.line,
            column: loc.column,
        }
    }

    pub fn is_known(&self) -> bool {
        self.line > 0
    }
}

impl fmt::Display for SqlPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}, column {}", self.line, self.column)
    }
}

/// A rule that cannot be compiled into a streaming plan.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message} (at {position})")]
pub struct RuleError {
    pub message: String,
    pub position: SqlPosition,
}

impl RuleError {
    pub fn new(message: impl Into<String>, position: SqlPosition) -> Self {
        Self {
            message: message.into(),
            position,
        }
    }

    /// An error whose position we could not determine; it points at the
    /// start of the statement.
    pub fn at_start(message: impl Into<String>) -> Self {
        Self::new(message, SqlPosition::new(1, 1))
    }
}

/// A failure while running compiled rules over data. These indicate a bug or
/// an input batch that does not match the stream schema, never bad event
/// values (those are rejected before they reach the engine).
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("rule {rule}: {source}")]
    Evaluation {
        rule: String,
        #[source]
        source: datafusion::error::DataFusionError,
    },
    #[error("{0}")]
    DataFusion(#[from] datafusion::error::DataFusionError),
    #[error("arrow error: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error("engine state could not be restored: {0}")]
    Restore(String),
    #[error("input batch does not match the stream schema: {0}")]
    Schema(String),
    /// A bug reached while running one rule; the rule failed this input,
    /// the others ran.
    #[error("internal error while running the rule: {0}")]
    Panicked(String),
    /// The rule went over a run-time budget: the engine suspends it (see
    /// [`crate::budget`]); never reported as a failure.
    #[error("{0}")]
    OverBudget(Box<crate::budget::Suspension>),
}
