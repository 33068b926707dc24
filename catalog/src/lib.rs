//! What wardwatch persists, and how it is found again.
//!
//! The catalog owns every byte that outlives a process. All of it goes through
//! [`object_store`], so one storage location (a local directory by default,
//! memory for tests, S3 when built with the `aws` feature) decides where it
//! lands and several instances can share it.
//!
//! - [`storage`] turns the configured location into an object store and prefix;
//! - [`rules`] keeps rules as immutable, numbered versions plus a small
//!   mutable record of which version is current and whether the rule is active;
//! - [`log`] keeps append-only JSON-lines logs (acknowledgements, dead
//!   letters, audit log);
//! - [`archive`] writes raw events and alerts to Parquet, partitioned by
//!   event date and hour, and applies retention;
//! - [`history`] answers read-only SQL over the archive, including rows the
//!   archive writer has not flushed yet, and over the current rules and audit
//!   log; it also reads what a replay needs (events in order, recorded alerts);
//! - [`alert_history`] lists alerts newest first from the `alerts` table
//!   (what `GET /api/alerts` and acknowledgements read);
//! - [`checkpoints`] keeps the engine's state with the source offsets it
//!   covers, so a restart resumes windows instead of losing them;
//! - [`api_keys`] keeps services' API keys (hashed; the server makes them);
//! - [`hospitals`] keeps the hospitals onboarded over the API;
//! - [`damage`] counts the damaged files readers skipped or recovered from
//!   ([`damaged_files`]), so a half-written file is never fatal.
//!
//! The catalog does not judge rule SQL (the server compiles it with
//! `sql-rules` first), does not read a clock (callers pass `now_ms`), and
//! never overwrites an object that is meant to be immutable.

pub mod alert_history;
pub mod api_keys;
pub mod archive;
pub mod checkpoints;
pub mod damage;
mod error;
pub mod history;
pub mod hospitals;
pub mod log;
pub mod patient_history;
pub mod rules;
pub mod storage;

pub use archive::{
    alerts_from_batch, alerts_schema, alerts_to_batch, apply_retention, ArchiveConfig,
    ArchiveTable, ArchiveWriter, ArchivedFile, BufferedView,
};
pub use damage::{damaged_files, DamagedFile};
pub use error::CatalogError;
pub use history::{EventsInOrder, HistoryCatalog, QueryLimits, QueryResources, RecordedAlert};
pub use log::JsonLog;
pub use rules::{Deactivation, Rule, RuleDraft, RuleStore, RuleVersion, Severity};
pub use storage::open_store;
