//! Alerts: what a rule produced, identified deterministically.
//!
//! One shape everywhere alerts appear (Kafka, REST, history, replay). The id
//! is a hash of (rule id, rule version, group key, window start) — or the
//! event's identity for per-event rules — so replaying the same events
//! reproduces the same ids and live and replayed output can be diffed.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertStatus {
    Fired,
    /// Within the cooldown of an earlier alert for the same rule and key:
    /// recorded and counted, not delivered to people.
    Suppressed,
}

/// Why an alert fired: what the rule saw.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Explanation {
    /// The condition the rule applied (HAVING or WHERE).
    pub condition: String,
    /// Events that contributed to the window (1 for per-event rules).
    pub event_count: u64,
    pub first_event_ms: i64,
    pub last_event_ms: i64,
    /// Device sequence numbers of the first and last contributing event.
    #[serde(default)]
    pub first_sequence_number: Option<u32>,
    #[serde(default)]
    pub last_sequence_number: Option<u32>,
    /// Set when the alert is suppressed: the alert that started the cooldown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suppressed_by: Option<String>,
    /// Set when a repeat within the cooldown crossed the rule's escalation
    /// threshold: the alert it escalates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub escalated_from: Option<String>,
    /// Set when the alert comes from events that arrived after the
    /// window's allowed lateness and turned its closed window's decision
    /// into an alert (see `sql-rules/tests/rules/README.md`). Absent from
    /// JSON when false, so alerts written before it read back unchanged.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub late: bool,
    /// Set on a signal-loss *clear*: the id of the alert whose silence the
    /// key's returning readings end (a SESSION rule without HAVING; see
    /// the README's "Signal loss"). Absent from JSON otherwise, so alerts
    /// written before it read back unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clears: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    pub id: String,
    pub rule_id: String,
    pub rule_version: u32,
    pub rule_name: String,
    pub severity: String,
    pub status: AlertStatus,
    /// The GROUP BY columns (e.g. `patient_id`).
    pub key: Map<String, Value>,
    /// The hospital of the events behind the alert, so a caller limited to
    /// some hospitals sees only theirs: the event's `hospital_id` for a
    /// per-event rule, the key's for a rule grouped by `hospital_id`, else
    /// for a rule grouped by patient where the patient was (see
    /// `keys::PatientIndex`). Unknown (absent from JSON, so alerts written
    /// before it read back unchanged) for other rules and system alerts.
    /// Not part of the id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hospital_id: Option<String>,
    pub window_start_ms: Option<i64>,
    pub window_end_ms: Option<i64>,
    /// The rule's other output columns.
    pub values: Map<String, Value>,
    /// Event time of the (last) event that triggered the alert.
    pub event_time_ms: i64,
    /// Processing time at which the engine emitted it.
    pub fired_at_ms: i64,
    pub explanation: Explanation,
}

impl Alert {
    /// The patient the alert is about, if the key names one.
    pub fn patient_id(&self) -> Option<&str> {
        self.key.get("patient_id").and_then(Value::as_str)
    }
}

/// The deterministic alert id: 16 hex digits of xxh3 over the identity.
pub fn alert_id(
    rule_id: &str,
    version: u32,
    key: &Map<String, Value>,
    discriminator: &str,
) -> String {
    // serde_json's Map is ordered by key, so this text is canonical.
    alert_id_for_key_text(
        rule_id,
        version,
        &Value::Object(key.clone()).to_string(),
        discriminator,
    )
}

/// [`alert_id`] for a key already rendered as canonical JSON text.
pub fn alert_id_for_key_text(
    rule_id: &str,
    version: u32,
    key_text: &str,
    discriminator: &str,
) -> String {
    use xxhash_rust::xxh3::Xxh3;
    let mut h = Xxh3::new();
    h.update(rule_id.as_bytes());
    h.update(&[0]);
    h.update(&version.to_le_bytes());
    h.update(key_text.as_bytes());
    h.update(&[0]);
    h.update(discriminator.as_bytes());
    format!("{:016x}", h.digest())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_depend_on_every_part_of_the_identity() {
        let mut key = Map::new();
        key.insert("patient_id".into(), Value::from("P1"));
        let a = alert_id("r", 1, &key, "w=0");
        assert_eq!(a, alert_id("r", 1, &key, "w=0"));
        assert_ne!(a, alert_id("r", 2, &key, "w=0"));
        assert_ne!(a, alert_id("s", 1, &key, "w=0"));
        assert_ne!(a, alert_id("r", 1, &key, "w=60000"));
        key.insert("patient_id".into(), Value::from("P2"));
        assert_ne!(a, alert_id("r", 1, &key, "w=0"));
        assert_eq!(a.len(), 16);
    }
}
