//! Alerts, acknowledgements, the live feed's events and dead letters.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::{IntoParams, ToSchema};

// ---------------------------------------------------------------- alerts

/// Query string of `GET /api/alerts` and `GET /api/alerts/stream`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AlertFilterParams {
    /// Rule id or rule name.
    pub rule: Option<String>,
    /// The `patient_id` of the alert's key.
    pub patient: Option<String>,
    /// Alert severity, e.g. `high`.
    pub severity: Option<String>,
    /// `fired` or `suppressed`; any other value matches nothing.
    pub status: Option<String>,
    /// Event time from (Unix ms, inclusive).
    pub since: Option<i64>,
    /// Event time until (Unix ms, exclusive).
    pub until: Option<i64>,
    /// At most this many, newest first (default 100, at most 10,000;
    /// ignored by the live feed).
    pub limit: Option<usize>,
    /// `false`: only alerts nobody has acknowledged (the worklist); `true`:
    /// only acknowledged ones (the live feed then sends nothing).
    pub acknowledged: Option<bool>,
}

impl From<AlertFilterParams> for crate::sink::alerts::AlertFilter {
    fn from(p: AlertFilterParams) -> Self {
        Self {
            rule: p.rule,
            patient: p.patient,
            severity: p.severity,
            status: p.status,
            since: p.since,
            until: p.until,
            limit: p.limit,
            acknowledged: p.acknowledged,
            // Set from the caller's scope by the handler, never from the query string.
            hospitals: None,
        }
    }
}

/// `GET /api/alerts`.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct AlertList {
    /// Newest first.
    pub alerts: Vec<AlertView>,
}

/// An alert: which rule fired for which key, with what values, and why. The
/// live feed's `alert` events carry the same object (without `ack`).
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct AlertView {
    /// Deterministic: 16 hex digits over (rule, version, key, window), so a
    /// replay reproduces the ids that fired.
    pub id: String,
    pub rule_id: String,
    pub rule_version: u32,
    pub rule_name: String,
    pub severity: String,
    pub status: AlertStatusView,
    /// The GROUP BY columns, e.g. `{"patient_id": "P-1"}`.
    pub key: Map<String, Value>,
    /// The hospital of the events behind the alert: the event's for a
    /// per-event rule, the key's for a rule grouped by `hospital_id`, where
    /// the patient was for a rule grouped by patient. Absent when unknown
    /// (other rules, system alerts, alerts archived before it existed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hospital_id: Option<String>,
    #[schema(required)]
    pub window_start_ms: Option<i64>,
    #[schema(required)]
    pub window_end_ms: Option<i64>,
    /// The rule's other output columns.
    pub values: Map<String, Value>,
    /// Event time of the (last) event that triggered the alert.
    pub event_time_ms: i64,
    /// Processing time at which the engine emitted it.
    pub fired_at_ms: i64,
    pub explanation: ExplanationView,
    /// The latest acknowledgement, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ack: Option<Acknowledgement>,
}

impl AlertView {
    pub fn new(a: sql_rules::Alert, ack: Option<Acknowledgement>) -> Self {
        Self {
            id: a.id,
            rule_id: a.rule_id,
            rule_version: a.rule_version,
            rule_name: a.rule_name,
            severity: a.severity,
            status: a.status.into(),
            key: a.key,
            hospital_id: a.hospital_id,
            window_start_ms: a.window_start_ms,
            window_end_ms: a.window_end_ms,
            values: a.values,
            event_time_ms: a.event_time_ms,
            fired_at_ms: a.fired_at_ms,
            explanation: a.explanation.into(),
            ack,
        }
    }
}

impl From<sql_rules::Alert> for AlertView {
    fn from(a: sql_rules::Alert) -> Self {
        Self::new(a, None)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum AlertStatusView {
    /// Delivered to people.
    Fired,
    /// Within the cooldown of an earlier alert for the same rule and key:
    /// recorded and counted, not delivered.
    Suppressed,
}

impl From<sql_rules::AlertStatus> for AlertStatusView {
    fn from(s: sql_rules::AlertStatus) -> Self {
        match s {
            sql_rules::AlertStatus::Fired => Self::Fired,
            sql_rules::AlertStatus::Suppressed => Self::Suppressed,
        }
    }
}

/// Why an alert fired: what the rule saw.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct ExplanationView {
    /// The condition the rule applied (HAVING or WHERE).
    pub condition: String,
    /// Events that contributed to the window (1 for per-event rules).
    pub event_count: u64,
    pub first_event_ms: i64,
    pub last_event_ms: i64,
    /// Device sequence numbers of the first and last contributing event.
    #[schema(required)]
    pub first_sequence_number: Option<u32>,
    #[schema(required)]
    pub last_sequence_number: Option<u32>,
    /// Set when the alert is suppressed: the alert that started the cooldown.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub suppressed_by: Option<String>,
    /// Set when a repeat within the cooldown crossed the rule's escalation
    /// threshold: the alert it escalates.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub escalated_from: Option<String>,
    /// Present (true) when events that arrived after the window's allowed
    /// lateness turned its closed window's decision into an alert.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    #[schema(default = false)]
    pub late: bool,
    /// Set on a signal-loss rule's "cleared" alert (readings came back):
    /// the id of the alert it clears.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clears: Option<String>,
}

impl From<sql_rules::Explanation> for ExplanationView {
    fn from(e: sql_rules::Explanation) -> Self {
        Self {
            condition: e.condition,
            event_count: e.event_count,
            first_event_ms: e.first_event_ms,
            last_event_ms: e.last_event_ms,
            first_sequence_number: e.first_sequence_number,
            last_sequence_number: e.last_sequence_number,
            suppressed_by: e.suppressed_by,
            escalated_from: e.escalated_from,
            late: e.late,
            clears: e.clears,
        }
    }
}

/// `POST /api/alerts/{id}/ack`: who has seen the alert and acts on it.
#[derive(Debug, Clone, PartialEq, Deserialize, ToSchema)]
pub struct AckRequest {
    /// Who acknowledges (at most `max_ack_by_chars` characters). Needed
    /// only when authentication is off; otherwise the authenticated caller
    /// is who acknowledges, and this is ignored.
    #[serde(default)]
    pub by: Option<String>,
    /// At most `max_ack_note_bytes` bytes.
    #[serde(default)]
    pub note: Option<String>,
}

/// An acknowledgement as recorded (and audited); a later one supersedes an
/// earlier one in alert views.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Acknowledgement {
    pub alert_id: String,
    /// Who acknowledged, as shown (the caller's display name).
    pub by: String,
    /// The caller's stable id (token `sub` or `api-key:<id>`); absent when
    /// authentication is off. A display name can change; this cannot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by_subject: Option<String>,
    #[serde(default)]
    #[schema(required)]
    pub note: Option<String>,
    /// When it was recorded (Unix ms).
    pub at_ms: i64,
}

/// The live feed's `lagged` event: the client was too slow and missed this
/// many alerts (read them from `GET /api/alerts`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct LiveFeedLagged {
    pub missed: u64,
}

/// Query string of `GET /api/dead-letters`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeadLetterParams {
    /// At most this many, newest first (default 100, at most 10,000).
    pub limit: Option<usize>,
}

/// `GET /api/dead-letters`.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct DeadLetterList {
    /// Newest first; empty when dead letters go to Kafka.
    pub dead_letters: Vec<DeadLetter>,
    /// Letters recorded since the table began.
    pub total: u64,
}

/// An event that could not be used, and why (the embedded dead-letter table).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DeadLetter {
    pub received_at_ms: i64,
    pub reason: String,
    /// Where it came from: `kafka:vitals/3@1234`, `http:/api/ingest`, `demo`.
    pub origin: String,
    #[schema(required)]
    pub key: Option<String>,
    /// The first 4 KiB of the payload, as text.
    pub payload: String,
    /// The payload's full length (absent on letters recorded before it was kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_bytes: Option<u64>,
    /// Whether `payload` was cut (absent on letters recorded before it was kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_truncated: Option<bool>,
}
