//! Recording in the audit log: rule changes, acknowledgements, API key
//! changes, reads of patient data (with who did each), damaged files found
//! at startup (retention deletions are recorded by the archive's retention
//! task).
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

/// Records an action and who took it (`who`: subject, name, roles, how
/// they authenticated, the peer address). Reads of patient data are
/// recorded this way too: an auditor can tell who saw what.
pub async fn record_by(log: &JsonLog, who: &crate::auth::Principal, action: &str, details: Value) {
    let mut details = details;
    match details.as_object_mut() {
        Some(obj) => {
            obj.insert("who".into(), who.audit_fields());
        }
        None => details = serde_json::json!({"who": who.audit_fields(), "details": details}),
    }
    record(log, action, details).await;
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use catalog::rules::{RuleDraft, RuleStore};
    use object_store::path::Path;
    use serde_json::json;

    use crate::config::Config;

    /// A server over a data directory with a half-written `rule.json` and
    /// garbage at the end of an acknowledgement segment starts, runs the
    /// recovered rule, and writes one `damaged_file` audit entry per file.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_server_starts_over_damaged_files_and_audits_them() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().to_str().unwrap().to_string();
        let (store, _) = catalog::open_store(&data).unwrap();
        let rules = RuleStore::open(Arc::clone(&store), Path::default())
            .await
            .unwrap();
        let rule = rules
            .create(
                RuleDraft::new(
                    "Tachy",
                    "SELECT patient_id FROM vitals WHERE heart_rate_bpm > 150",
                ),
                1_000,
            )
            .await
            .unwrap();
        let acks = catalog::JsonLog::open(Arc::clone(&store), Path::default(), "acks")
            .await
            .unwrap();
        acks.append(&[json!({"alert_id": "a1", "by": "nurse"})])
            .await
            .unwrap();
        acks.flush().await.unwrap();
        drop((rules, acks));

        let meta = tmp.path().join("rules").join(&rule.id).join("rule.json");
        let bytes = std::fs::read(&meta).unwrap();
        std::fs::write(&meta, &bytes[..bytes.len() / 2]).unwrap();
        let segment = tmp.path().join("acks/seg-000000000000.jsonl");
        let mut bytes = std::fs::read(&segment).unwrap();
        bytes.extend_from_slice(b"{\"alert_id\": \"a2\", \"by");
        std::fs::write(&segment, bytes).unwrap();

        let before = catalog::damaged_files();
        let config = Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            data_dir: data.clone(),
            ..Config::default()
        };
        let stop = tokio::time::sleep(std::time::Duration::from_millis(500));
        crate::server::run_until(config, false, stop)
            .await
            .expect("the server starts and stops over damaged files");
        assert!(catalog::damaged_files() >= before + 2);

        let audit = catalog::JsonLog::open(store, Path::default(), "audit_log")
            .await
            .unwrap();
        let entries = audit.recent(100, |r| r["action"] == "damaged_file");
        let mut paths: Vec<&str> = entries
            .iter()
            .map(|e| e["path"].as_str().unwrap())
            .collect();
        paths.sort();
        let rule_json = format!("rules/{}/rule.json", rule.id);
        assert_eq!(paths, ["acks/seg-000000000000.jsonl", rule_json.as_str()]);
        assert!(entries
            .iter()
            .any(|e| e["outcome"] == "rule recovered from version 1 and active"));
    }
}
