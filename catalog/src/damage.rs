//! Damaged files: what the catalog does when a stored file cannot be read.
//!
//! A power cut, a full disk or a hand edit can leave a file half-written:
//! a truncated Parquet file, a JSON-lines segment ending in half a record,
//! an empty `rule.json`. None of these may stop the server from starting or
//! make every history query fail. Each reader skips what it cannot decode
//! (or, for a rule, recovers what it can) and reports it here, which logs an
//! error naming the file and counts it.
//!
//! The count is process-wide ([`damaged_files`]), for `/metrics`: every
//! store opened in the process adds to it, so tests that run several
//! servers in one process see each other's damage in it. What one store
//! found at open is also kept by that store (`RuleStore::damaged_files`,
//! `JsonLog::damaged_files`) so the server can write an audit entry for each.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

static DAMAGED_FILES: AtomicU64 = AtomicU64::new(0);

/// How many damaged files this process has found and skipped (or recovered
/// from) since it started, across every store. Each archive file is counted
/// once per size it had when found; log segments and rule files once per
/// open.
pub fn damaged_files() -> u64 {
    DAMAGED_FILES.load(Ordering::Relaxed)
}

/// One damaged file and what was done about it, as the audit log records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DamagedFile {
    /// Path in the object store.
    pub path: String,
    /// What the file is: `rule version`, `rule state`, `log segment`,
    /// `archive file`.
    pub kind: &'static str,
    /// Why it could not be used, e.g. the decoder's message with its line.
    pub reason: String,
    /// What the reader did instead: skipped it, kept its intact records,
    /// recovered a rule from another version.
    pub outcome: String,
}

/// Logs `file` as an error, counts it, and returns it for the caller's list.
pub(crate) fn report(file: DamagedFile) -> DamagedFile {
    DAMAGED_FILES.fetch_add(1, Ordering::Relaxed);
    tracing::error!(
        path = %file.path,
        kind = file.kind,
        reason = %file.reason,
        outcome = %file.outcome,
        "damaged file"
    );
    file
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reporting_counts_and_returns_the_file() {
        let before = damaged_files();
        let file = report(DamagedFile {
            path: "a/b.json".into(),
            kind: "rule state",
            reason: "EOF while parsing".into(),
            outcome: "skipped".into(),
        });
        assert_eq!(file.path, "a/b.json");
        // Other tests report concurrently: at least ours was counted.
        assert!(damaged_files() > before);
        let json = serde_json::to_value(&file).unwrap();
        assert_eq!(json["kind"], "rule state");
    }
}
