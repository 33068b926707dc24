//! The audit of a replay: its alerts diffed, by deterministic id, against
//! those recorded live for the same rule version and range.
//!
//! Alert ids hash (rule id, rule version, group key, window start), so a
//! replay of unchanged events reproduces exactly the ids that fired; every
//! difference is reported with the likely reason. The recorded alerts come
//! from the catalog ([`HistoryCatalog::recorded_alerts`]); the diff itself
//! ([`diff`]) is pure.

use std::collections::{BTreeMap, BTreeSet};

use catalog::{HistoryCatalog, RecordedAlert};
use sql_rules::{Alert, AlertStatus};

use super::ReplayError;

/// How a replay compares with what was recorded live.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AuditDiff {
    /// Ids fired both live and in the replay, ascending.
    pub both: Vec<String>,
    /// Fired live, not fired by the replay.
    pub fired_not_reproduced: Vec<Difference>,
    /// Fired by the replay, not fired live.
    pub reproduced_not_fired: Vec<Difference>,
    /// No differences either way.
    pub clean: bool,
}

/// One alert fired on one side only, and why that may be.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Difference {
    pub id: String,
    pub why: Why,
}

/// The likely reason for a [`Difference`]; serialised as its explanation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// Fired live; the replay produced it but suppressed it.
    ReplaySuppressed,
    /// Fired live; the replay did not produce it at all.
    NotReproduced,
    /// Fired by the replay; recorded live as suppressed.
    SuppressedLive,
    /// Fired by the replay; not recorded live at all.
    NotEvaluatedLive,
}

impl Why {
    /// The sentence shown to the auditor.
    pub fn explanation(self) -> &'static str {
        match self {
            Why::ReplaySuppressed => "replay suppressed it (cooldown history differs)",
            Why::NotReproduced => "replay did not produce it (events late or outside the range live, or a window only partly inside it)",
            Why::SuppressedLive => "suppressed by cooldown when it happened",
            Why::NotEvaluatedLive => "not evaluated live: the rule version was not active then, or its events arrived after their window closed",
        }
    }
}

impl serde::Serialize for Why {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.explanation())
    }
}

/// Diffs `replayed` with the alerts recorded live for `rule_id` at `version`
/// over `[from_ms, to_ms)` (the replay's own rule and range).
pub async fn audit(
    history: &HistoryCatalog,
    rule_id: &str,
    version: u32,
    from_ms: i64,
    to_ms: i64,
    replayed: &[Alert],
) -> Result<AuditDiff, ReplayError> {
    let recorded = history
        .recorded_alerts(rule_id, version, from_ms, to_ms)
        .await?;
    Ok(diff(&recorded, replayed))
}

/// Diffs the fired alerts of both sides by id.
pub fn diff(recorded: &[RecordedAlert], replayed: &[Alert]) -> AuditDiff {
    let live: BTreeMap<&str, &str> = recorded
        .iter()
        .map(|a| (a.id.as_str(), a.status.as_str()))
        .collect();
    let replay_ids: BTreeSet<&str> = replayed.iter().map(|a| a.id.as_str()).collect();
    let replay_fired: BTreeSet<&str> = replayed
        .iter()
        .filter(|a| a.status == AlertStatus::Fired)
        .map(|a| a.id.as_str())
        .collect();
    let live_fired: BTreeSet<&str> = live
        .iter()
        .filter(|(_, status)| **status == "fired")
        .map(|(id, _)| *id)
        .collect();
    let both = live_fired
        .intersection(&replay_fired)
        .map(|id| id.to_string())
        .collect();
    let fired_not_reproduced: Vec<Difference> = live_fired
        .difference(&replay_fired)
        .map(|id| Difference {
            id: id.to_string(),
            why: if replay_ids.contains(id) {
                Why::ReplaySuppressed
            } else {
                Why::NotReproduced
            },
        })
        .collect();
    let reproduced_not_fired: Vec<Difference> = replay_fired
        .difference(&live_fired)
        .map(|id| Difference {
            id: id.to_string(),
            why: match live.get(id) {
                Some(&"suppressed") => Why::SuppressedLive,
                _ => Why::NotEvaluatedLive,
            },
        })
        .collect();
    AuditDiff {
        clean: fired_not_reproduced.is_empty() && reproduced_not_fired.is_empty(),
        both,
        fired_not_reproduced,
        reproduced_not_fired,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn recorded(id: &str, status: &str) -> RecordedAlert {
        RecordedAlert {
            id: id.into(),
            status: status.into(),
        }
    }

    fn replayed(id: &str, status: AlertStatus) -> Alert {
        serde_json::from_value(json!({
            "id": id, "rule_id": "r", "rule_version": 1, "rule_name": "r",
            "severity": "high", "status": status, "key": {},
            "window_start_ms": null, "window_end_ms": null, "values": {},
            "event_time_ms": 0, "fired_at_ms": 0,
            "explanation": {"condition": "", "event_count": 1,
                            "first_event_ms": 0, "last_event_ms": 0},
        }))
        .unwrap()
    }

    #[test]
    fn every_difference_is_reported_with_its_reason_in_the_answer_shape() {
        let live = [
            recorded("both", "fired"),
            recorded("suppressed-in-replay", "fired"),
            recorded("missing-in-replay", "fired"),
            recorded("suppressed-live", "suppressed"),
        ];
        let replay = [
            replayed("both", AlertStatus::Fired),
            replayed("suppressed-in-replay", AlertStatus::Suppressed),
            replayed("suppressed-live", AlertStatus::Fired),
            replayed("new", AlertStatus::Fired),
        ];
        let diff = diff(&live, &replay);
        assert_eq!(
            serde_json::to_value(&diff).unwrap(),
            json!({
                "both": ["both"],
                "fired_not_reproduced": [
                    {"id": "missing-in-replay", "why": Why::NotReproduced.explanation()},
                    {"id": "suppressed-in-replay", "why": Why::ReplaySuppressed.explanation()},
                ],
                "reproduced_not_fired": [
                    {"id": "new", "why": Why::NotEvaluatedLive.explanation()},
                    {"id": "suppressed-live", "why": Why::SuppressedLive.explanation()},
                ],
                "clean": false,
            })
        );
    }

    #[test]
    fn the_same_fired_ids_are_clean() {
        let live = [recorded("a", "fired"), recorded("b", "suppressed")];
        let replay = [
            replayed("a", AlertStatus::Fired),
            replayed("b", AlertStatus::Suppressed),
        ];
        let diff = diff(&live, &replay);
        assert!(diff.clean);
        assert_eq!(diff.both, ["a"]);
    }
}
