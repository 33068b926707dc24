//! Recording in the audit log: rule changes, acknowledgements, damaged
//! files found at startup (retention deletions are recorded by the
//! archive's retention task).
//!
//! The log itself and the `audit_log` table that shows it to SQL are the
//! catalog's ([`catalog::JsonLog`],
//! [`catalog::history::state_tables`]); this adds the time and the action
//! to a record.

use catalog::JsonLog;
use serde_json::Value;

/// Appends `{"at_ms": now, "action": action, ...details}` to the audit log.
/// A failure is logged, not returned: the change it records has happened.
pub async fn record(log: &JsonLog, action: &str, details: Value) {
    let mut record =
        serde_json::json!({"at_ms": chrono::Utc::now().timestamp_millis(), "action": action});
    if let (Some(obj), Value::Object(extra)) = (record.as_object_mut(), details) {
        obj.extend(extra);
    }
    if let Err(e) = log.append(&[record]).await {
        tracing::error!(error = %e, action, "recording in the audit log");
    }
}

/// Records each damaged file a store found while opening (and skipped, or
/// recovered from) as a `damaged_file` entry, so an auditor sees what was
/// not loaded and why.
pub async fn record_damaged_files(log: &JsonLog, files: &[catalog::DamagedFile]) {
    for file in files {
        let details = serde_json::to_value(file).unwrap_or_default();
        record(log, "damaged_file", details).await;
    }
}
