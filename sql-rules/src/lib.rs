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

pub mod alert;
pub mod compile;
pub mod dedup;
pub mod engine;
pub mod error;
pub mod eval;
pub mod functions;
pub mod json;
pub mod keys;
pub mod snapshot;
pub mod stream;
pub mod window;

pub use alert::{Alert, AlertStatus, Explanation};
pub use compile::{CompiledRule, RuleCompiler, WindowSpec};
pub use engine::{Engine, EngineConfig, EngineOutput, RuleSpec, RuleStats};
pub use error::{EngineError, RuleError, SqlPosition};
