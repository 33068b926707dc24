//! The small history tables — `rules`, `rule_versions`, `audit_log` — built
//! fresh for each query from the rule store and the audit log, so SQL sees
//! the current state (they are thousands of rows, not millions).

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanArray, Int64Array, StringArray, TimestampMillisecondArray, UInt32Array,
    UInt64Array,
};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use arrow::record_batch::RecordBatch;
use datafusion::datasource::MemTable;

use super::SharedState;

fn ts_type() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()))
}

fn ts(values: Vec<i64>) -> ArrayRef {
    Arc::new(TimestampMillisecondArray::from(values).with_timezone("UTC"))
}

fn table(fields: Vec<Field>, columns: Vec<ArrayRef>) -> Result<Arc<MemTable>, String> {
    let schema = Arc::new(Schema::new(fields));
    let batch = RecordBatch::try_new(Arc::clone(&schema), columns).map_err(|e| e.to_string())?;
    MemTable::try_new(schema, vec![vec![batch]])
        .map(Arc::new)
        .map_err(|e| e.to_string())
}

/// Registers the current `rules`, `rule_versions` and `audit_log`.
pub async fn refresh(state: &SharedState) -> Result<(), String> {
    let rules = state.rules.list().await;
    let rules_table = table(
        vec![
            Field::new("id", DataType::Utf8, false),
            Field::new("active", DataType::Boolean, false),
            Field::new("version", DataType::UInt32, false),
            Field::new("name", DataType::Utf8, false),
            Field::new("severity", DataType::Utf8, false),
            Field::new("cooldown_seconds", DataType::UInt64, false),
            Field::new("sql", DataType::Utf8, false),
            Field::new("created_at", ts_type(), false),
            Field::new("updated_at", ts_type(), false),
        ],
        vec![
            Arc::new(StringArray::from_iter_values(
                rules.iter().map(|r| r.id.as_str()),
            )),
            Arc::new(BooleanArray::from(
                rules.iter().map(|r| r.active).collect::<Vec<_>>(),
            )),
            Arc::new(UInt32Array::from_iter_values(
                rules.iter().map(|r| r.current.version),
            )),
            Arc::new(StringArray::from_iter_values(
                rules.iter().map(|r| r.current.name.as_str()),
            )),
            Arc::new(StringArray::from_iter_values(
                rules.iter().map(|r| r.current.severity.as_str()),
            )),
            Arc::new(UInt64Array::from_iter_values(
                rules.iter().map(|r| r.current.cooldown_seconds),
            )),
            Arc::new(StringArray::from_iter_values(
                rules.iter().map(|r| r.current.sql.as_str()),
            )),
            ts(rules.iter().map(|r| r.created_at_ms).collect()),
            ts(rules.iter().map(|r| r.updated_at_ms).collect()),
        ],
    )?;
    let mut versions = Vec::new();
    for r in &rules {
        for v in &r.versions {
            if let Some(version) = state.rules.version(&r.id, *v).await {
                versions.push(version);
            }
        }
    }
    let versions_table = table(
        vec![
            Field::new("rule_id", DataType::Utf8, false),
            Field::new("version", DataType::UInt32, false),
            Field::new("name", DataType::Utf8, false),
            Field::new("severity", DataType::Utf8, false),
            Field::new("cooldown_seconds", DataType::UInt64, false),
            Field::new("allowed_lateness_ms", DataType::Int64, true),
            Field::new("sql", DataType::Utf8, false),
            Field::new("created_at", ts_type(), false),
        ],
        vec![
            Arc::new(StringArray::from_iter_values(
                versions.iter().map(|v| v.rule_id.as_str()),
            )),
            Arc::new(UInt32Array::from_iter_values(
                versions.iter().map(|v| v.version),
            )),
            Arc::new(StringArray::from_iter_values(
                versions.iter().map(|v| v.name.as_str()),
            )),
            Arc::new(StringArray::from_iter_values(
                versions.iter().map(|v| v.severity.as_str()),
            )),
            Arc::new(UInt64Array::from_iter_values(
                versions.iter().map(|v| v.cooldown_seconds),
            )),
            Arc::new(Int64Array::from(
                versions
                    .iter()
                    .map(|v| v.allowed_lateness_ms)
                    .collect::<Vec<_>>(),
            )),
            Arc::new(StringArray::from_iter_values(
                versions.iter().map(|v| v.sql.as_str()),
            )),
            ts(versions.iter().map(|v| v.created_at_ms).collect()),
        ],
    )?;
    // Oldest first.
    let mut audit = state.audit.recent(usize::MAX, |_| true);
    audit.reverse();
    let audit_table = table(
        vec![
            // Order of recording, for events within the same millisecond.
            Field::new("seq", DataType::UInt64, false),
            Field::new("at", ts_type(), false),
            Field::new("action", DataType::Utf8, false),
            Field::new("details", DataType::Utf8, false),
        ],
        vec![
            Arc::new(UInt64Array::from_iter_values(0..audit.len() as u64)),
            ts(audit
                .iter()
                .map(|a| a.get("at_ms").and_then(|v| v.as_i64()).unwrap_or(0))
                .collect()),
            Arc::new(StringArray::from_iter_values(audit.iter().map(|a| {
                a.get("action")
                    .and_then(|v| v.as_str())
                    .unwrap_or("")
                    .to_string()
            }))),
            Arc::new(StringArray::from_iter_values(
                audit.iter().map(|a| a.to_string()),
            )),
        ],
    )?;
    let ctx = state.history.session();
    for (name, provider) in [
        ("rules", rules_table),
        ("rule_versions", versions_table),
        ("audit_log", audit_table),
    ] {
        let _ = ctx.deregister_table(name);
        ctx.register_table(name, provider)
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Appends an entry to the audit log (rule changes, acknowledgements).
pub async fn audit(state: &SharedState, action: &str, details: serde_json::Value) {
    let mut record =
        serde_json::json!({"at_ms": chrono::Utc::now().timestamp_millis(), "action": action});
    if let (Some(obj), serde_json::Value::Object(extra)) = (record.as_object_mut(), details) {
        obj.extend(extra);
    }
    if let Err(e) = state.audit.append(&[record]).await {
        tracing::error!(error = %e, action, "recording in the audit log");
    }
}
