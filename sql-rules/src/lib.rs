//! wardwatch's rule engine: clinician SQL → incremental window operators
//! over Arrow batches.
//!
//! Pure compute: no Kafka, no files, no clock. Time arrives as data (event
//! time in each row, processing time as an argument), so every behaviour can
//! be tested with a vector of events.
//!
//! ```
//! use sql_rules::{CompiledRule, stream::vitals_schema};
//! let rule = CompiledRule::compile(
//!     "SELECT patient_id, AVG(heart_rate_bpm) AS avg_hr
//!      FROM vitals
//!      GROUP BY TUMBLE(event_time, INTERVAL '60' SECOND), patient_id
//!      HAVING AVG(heart_rate_bpm) > 110",
//!     &vitals_schema(),
//! ).unwrap();
//! assert!(rule.window().is_some());
//! ```

//! The public surface is the items re-exported here plus two modules other
//! crates build on: [`stream`] (the `vitals` input schema, its column names
//! and indices) and [`json`] (Arrow cells as JSON, the form alert keys and
//! values take). Everything else is the engine's inside and may change
//! without notice.

// The modules other crates use by path.
pub mod json;
pub mod stream;

mod alert;
mod alerting;
mod budget;
mod compile;
mod dedup;
mod engine;
mod error;
mod eval;
mod functions;
mod keys;
mod snapshot;
mod window;

pub use alert::{alert_id, Alert, AlertStatus, Explanation};
pub use budget::{RuleBudgets, Suspension, SuspensionReason};
pub use compile::{
    check_query_sql, reading_type, CompiledRule, RuleCompiler, RuleLimits, WindowSpec,
};
pub use engine::{
    Engine, EngineConfig, EngineOutput, Escalation, RuleFailure, RuleSpec, RuleStats,
    RuleSuspended, DEFAULT_FORGET_PATIENTS_AFTER_MS,
};
pub use error::{EngineError, RuleError, SqlPosition};
/// Size-amplifying functions and `||`, bounded per call (history SQL and
/// rules).
pub use functions::bounded as bounded_functions;
/// Registers wardwatch's order-independent `sum` and `avg` in a DataFusion
/// session, so SQL run elsewhere (history, replay baselines) sums readings
/// the way rules do.
pub use functions::register as register_functions;
pub use stream::vitals_schema;
