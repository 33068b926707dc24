//! The REST contract: every request body, query string and response body of
//! the API as a Rust type. `GET /api/openapi.json` is generated from these
//! types and the handlers' `#[utoipa::path]` annotations ([`super::openapi`]).
//!
//! One file on purpose: a UI or client author reads the whole contract here,
//! in the order of the routes, without the handlers around it; handlers
//! answer with these types and nothing else (no `serde_json::json!`).
//!
//! What the API shows of other crates' types (the engine's [`sql_rules::Alert`],
//! the catalog's [`catalog::rules::Rule`], the pipeline's rule health, the
//! replay report…) is mirrored here by a `…View` with a `From` conversion,
//! rather than given a schema where it lives: those crates stay free of HTTP,
//! and a change to them reaches the wire only through this file. The tests
//! at the bottom serialize each domain value and its view and fail when they
//! differ, so a field added there and not here is caught.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::{IntoParams, ToSchema};

// ---------------------------------------------------------------- errors

/// Every 4xx and 5xx answer of the API (`/healthz` and `/readyz` aside,
/// which answer 503 with their own body).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// Written for the person who sees it: what was wrong, and the limit or
    /// the expected shape when there is one.
    pub message: String,
    /// Where in the submitted SQL the problem is (1-based), for SQL errors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column: Option<u64>,
}

// ---------------------------------------------------------------- health

/// `GET /healthz`: 200 `ok`, or 503 `stalled` while the engine thread has
/// been busy on one input past `engine_stall_ms` (or died with input waiting).
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Health {
    pub status: HealthStatus,
    /// How long the engine thread has been on its current input (0: it has
    /// exited with input waiting). Only when stalled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub engine_busy_ms: Option<i64>,
    /// Inputs waiting for the engine thread. Only when stalled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inputs_waiting: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum HealthStatus {
    Ok,
    Stalled,
}

/// `GET /readyz`: 200 once storage answers, Kafka answers (when configured)
/// and the server is not shutting down; 503 otherwise, with the same body.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Readiness {
    pub ready: bool,
    pub storage: StorageState,
    pub kafka: KafkaState,
    /// The server has begun to shut down.
    pub draining: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum StorageState {
    Ok,
    Unreachable,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
pub enum KafkaState {
    #[serde(rename = "not configured")]
    NotConfigured,
    #[serde(rename = "ok")]
    Ok,
    #[serde(rename = "unreachable")]
    Unreachable,
}

// ---------------------------------------------------------------- rules

/// `POST /api/rules` and `PUT /api/rules/{id}`: a rule to compile and store.
/// The defaults are the catalog's ([`catalog::rules::RuleDraft`]).
#[derive(Debug, Clone, PartialEq, Deserialize, ToSchema)]
pub struct RuleRequest {
    /// Human-readable name; also the readable part of a new rule's id.
    pub name: String,
    /// The rule's SQL over `vitals`, stored exactly as given.
    pub sql: String,
    #[serde(default)]
    pub severity: SeverityView,
    /// Minimum time between two alerts for the same rule and key.
    #[serde(default = "default_cooldown")]
    #[schema(default = 300)]
    pub cooldown_seconds: u64,
    /// Overrides the engine's default allowed lateness for this rule.
    #[serde(default)]
    pub allowed_lateness_ms: Option<i64>,
    /// Free text shown to clinicians.
    #[serde(default)]
    pub description: Option<String>,
    /// Aggregate duplicate events too (default: duplicates are dropped).
    #[serde(default)]
    pub keep_duplicates: bool,
    /// Re-fire a suppressed repeat that crosses a higher threshold.
    #[serde(default)]
    pub escalation: Option<EscalationView>,
}

fn default_cooldown() -> u64 {
    catalog::rules::DEFAULT_COOLDOWN_SECONDS
}

impl From<RuleRequest> for catalog::rules::RuleDraft {
    fn from(r: RuleRequest) -> Self {
        Self {
            name: r.name,
            sql: r.sql,
            severity: r.severity.into(),
            cooldown_seconds: r.cooldown_seconds,
            allowed_lateness_ms: r.allowed_lateness_ms,
            description: r.description,
            keep_duplicates: r.keep_duplicates,
            escalation: r.escalation.map(Into::into),
        }
    }
}

/// How urgent a rule's alerts are.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SeverityView {
    Info,
    Low,
    #[default]
    Medium,
    High,
    Critical,
}

impl From<SeverityView> for catalog::rules::Severity {
    fn from(s: SeverityView) -> Self {
        use catalog::rules::Severity as S;
        match s {
            SeverityView::Info => S::Info,
            SeverityView::Low => S::Low,
            SeverityView::Medium => S::Medium,
            SeverityView::High => S::High,
            SeverityView::Critical => S::Critical,
        }
    }
}

impl From<catalog::rules::Severity> for SeverityView {
    fn from(s: catalog::rules::Severity) -> Self {
        use catalog::rules::Severity as S;
        match s {
            S::Info => Self::Info,
            S::Low => Self::Low,
            S::Medium => Self::Medium,
            S::High => Self::High,
            S::Critical => Self::Critical,
        }
    }
}

/// Re-fire during cooldown when an output column crosses a higher
/// threshold, e.g. `avg_hr` above 140 after an alert at 115.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct EscalationView {
    /// One of the rule's output columns.
    pub column: String,
    #[serde(default)]
    pub above: Option<f64>,
    #[serde(default)]
    pub below: Option<f64>,
    /// Severity of the escalated alert (default: the rule's): one of info,
    /// low, medium, high, critical.
    #[serde(default)]
    pub severity: Option<String>,
}

impl From<EscalationView> for sql_rules::Escalation {
    fn from(e: EscalationView) -> Self {
        Self {
            column: e.column,
            above: e.above,
            below: e.below,
            severity: e.severity,
        }
    }
}

impl From<sql_rules::Escalation> for EscalationView {
    fn from(e: sql_rules::Escalation) -> Self {
        Self {
            column: e.column,
            above: e.above,
            below: e.below,
            severity: e.severity,
        }
    }
}

/// `GET /api/rules`.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct RuleList {
    pub rules: Vec<RuleView>,
}

/// A rule as the API shows it: its current version, whether it runs, and how
/// it is doing.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct RuleView {
    /// Stable, URL-safe id, e.g. `sustained-tachycardia-3f9a`.
    pub id: String,
    /// The version the engine runs.
    pub version: u32,
    pub name: String,
    pub sql: String,
    pub severity: SeverityView,
    pub cooldown_seconds: u64,
    #[schema(required)]
    pub allowed_lateness_ms: Option<i64>,
    #[schema(required)]
    pub description: Option<String>,
    pub keep_duplicates: bool,
    #[schema(required)]
    pub escalation: Option<EscalationView>,
    /// Whether the engine should run it; deactivated rules keep their versions.
    pub active: bool,
    /// The window, e.g. `HOP 5 min every 1 min`; null for a per-event rule.
    #[schema(required)]
    pub window: Option<String>,
    /// Every stored version number, ascending.
    pub versions: Vec<u32>,
    pub created_at_ms: i64,
    /// When the rule was last edited, activated or deactivated (Unix ms).
    pub updated_at_ms: i64,
    /// The engine's counters for the running version; null when not running.
    #[schema(required)]
    pub stats: Option<RuleStatsView>,
    /// What an operator needs first: is it running, and is it healthy?
    pub state: RuleState,
    /// Run-time errors; null when it never failed since the server started.
    #[schema(required)]
    pub health: Option<RuleHealthView>,
}

impl RuleView {
    /// The rule's fields, with what the engine knows of it and its window
    /// (`None`: per event, or SQL that no longer compiles).
    pub fn new(
        rule: catalog::rules::Rule,
        stats: Option<sql_rules::RuleStats>,
        health: Option<crate::pipeline::RuleHealth>,
        window: Option<String>,
        now_ms: i64,
    ) -> Self {
        let state = RuleState::of(rule.active, health.as_ref(), now_ms);
        let v = rule.current;
        Self {
            id: rule.id,
            version: v.version,
            name: v.name,
            sql: v.sql,
            severity: v.severity.into(),
            cooldown_seconds: v.cooldown_seconds,
            allowed_lateness_ms: v.allowed_lateness_ms,
            description: v.description,
            keep_duplicates: v.keep_duplicates,
            escalation: v.escalation.map(Into::into),
            active: rule.active,
            window,
            versions: rule.versions,
            created_at_ms: rule.created_at_ms,
            updated_at_ms: rule.updated_at_ms,
            stats: stats.map(Into::into),
            state,
            health: health.map(Into::into),
        }
    }
}

/// Where a rule is. New states are added here, never repurposed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RuleState {
    /// Deactivated: the engine does not run it.
    Inactive,
    /// Running, with no run-time error in the last minute.
    Active,
    /// Running, with a run-time error in the last minute.
    Failing,
}

impl RuleState {
    pub fn of(active: bool, health: Option<&crate::pipeline::RuleHealth>, now_ms: i64) -> Self {
        match health {
            _ if !active => Self::Inactive,
            Some(h) if h.failing(now_ms) => Self::Failing,
            _ => Self::Active,
        }
    }
}

/// The engine's counters for a rule version, cumulative since it was added.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct RuleStatsView {
    pub events_matched: u64,
    pub late_events: u64,
    pub alerts_fired: u64,
    pub alerts_suppressed: u64,
    /// Window panes holding state.
    pub open_panes: u64,
    /// Set when the rule went over a run-time budget: it no longer runs and
    /// holds no state, until a new version of it is saved.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub suspension: Option<SuspensionView>,
}

/// Why and when the engine suspended a rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct SuspensionView {
    pub reason: SuspensionReasonView,
    /// The budget, in the unit of `reason`.
    pub budget: u64,
    /// What the rule reached when it was stopped (at least `budget + 1`).
    pub observed: u64,
    /// For people: what happened, the setting, and what clears it.
    pub message: String,
    /// Event time the rule had reached; null when no event had arrived.
    #[schema(required)]
    pub at_event_ms: Option<i64>,
    /// Processing time of the engine call that suspended it.
    pub at_processing_ms: i64,
}

impl From<sql_rules::Suspension> for SuspensionView {
    fn from(s: sql_rules::Suspension) -> Self {
        Self {
            reason: s.reason.into(),
            budget: s.budget,
            observed: s.observed,
            message: s.message,
            at_event_ms: s.at_event_ms,
            at_processing_ms: s.at_processing_ms,
        }
    }
}

/// Which budget a rule went over (each is a `[limits]` setting:
/// `max_rule_state_bytes`, `max_rule_work_per_batch`,
/// `max_alerts_per_rule_minute`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SuspensionReasonView {
    StateBytes,
    WorkPerBatch,
    AlertsPerMinute,
}

impl From<sql_rules::SuspensionReason> for SuspensionReasonView {
    fn from(r: sql_rules::SuspensionReason) -> Self {
        use sql_rules::SuspensionReason as R;
        match r {
            R::StateBytes => Self::StateBytes,
            R::WorkPerBatch => Self::WorkPerBatch,
            R::AlertsPerMinute => Self::AlertsPerMinute,
        }
    }
}

// Field by field rather than by destructuring: RuleStats grows as the engine
// does, and a new field must not break this crate's build; the test
// `views_serialize_like_their_domain_types` says what is missing.
impl From<sql_rules::RuleStats> for RuleStatsView {
    fn from(s: sql_rules::RuleStats) -> Self {
        Self {
            events_matched: s.events_matched,
            late_events: s.late_events,
            alerts_fired: s.alerts_fired,
            alerts_suppressed: s.alerts_suppressed,
            open_panes: s.open_panes,
            suspension: s.suspension.map(Into::into),
        }
    }
}

/// A rule's run-time errors since the server started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct RuleHealthView {
    pub errors_total: u64,
    #[schema(required)]
    pub last_error: Option<String>,
    #[schema(required)]
    pub last_error_at_ms: Option<i64>,
}

impl From<crate::pipeline::RuleHealth> for RuleHealthView {
    fn from(h: crate::pipeline::RuleHealth) -> Self {
        Self {
            errors_total: h.errors_total,
            last_error: h.last_error,
            last_error_at_ms: h.last_error_at_ms,
        }
    }
}

/// `GET /api/rules/{id}`: the rule and every stored version of it.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct RuleDetail {
    #[serde(flatten)]
    pub rule: RuleView,
    /// Every stored version, oldest first.
    pub history: Vec<RuleVersionView>,
}

/// One immutable version of a rule, exactly as stored.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct RuleVersionView {
    pub rule_id: String,
    /// 1 for the first version, then one more for each edit.
    pub version: u32,
    pub name: String,
    pub sql: String,
    pub severity: SeverityView,
    pub cooldown_seconds: u64,
    #[schema(required)]
    pub allowed_lateness_ms: Option<i64>,
    #[schema(required)]
    pub description: Option<String>,
    pub keep_duplicates: bool,
    #[schema(required)]
    pub escalation: Option<EscalationView>,
    /// When this version was written (Unix ms).
    pub created_at_ms: i64,
}

impl From<catalog::rules::RuleVersion> for RuleVersionView {
    fn from(v: catalog::rules::RuleVersion) -> Self {
        Self {
            rule_id: v.rule_id,
            version: v.version,
            name: v.name,
            sql: v.sql,
            severity: v.severity.into(),
            cooldown_seconds: v.cooldown_seconds,
            allowed_lateness_ms: v.allowed_lateness_ms,
            description: v.description,
            keep_duplicates: v.keep_duplicates,
            escalation: v.escalation.map(Into::into),
            created_at_ms: v.created_at_ms,
        }
    }
}

/// `POST /api/rules/validate`: SQL to compile without storing it.
#[derive(Debug, Clone, PartialEq, Deserialize, ToSchema)]
pub struct ValidateRequest {
    pub sql: String,
}

/// The answer to a valid rule; an invalid one is a 400 [`ErrorBody`] with
/// the line and column of the problem.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct RuleValidation {
    /// Always true (an invalid rule is a 400).
    pub valid: bool,
    pub kind: RuleKind,
    /// The window, e.g. `TUMBLE 5 min`; null for a per-event rule.
    #[schema(required)]
    pub window: Option<String>,
    /// The rule's output columns.
    pub columns: Vec<Column>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RuleKind {
    /// Evaluated on each event (`WHERE`).
    PerEvent,
    /// Evaluated when a window closes (`GROUP BY TUMBLE/HOP/SESSION`).
    Windowed,
}

/// A column of a rule's output or of a query result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Column {
    pub name: String,
    /// The Arrow data type, e.g. `Float64`, `Utf8`,
    /// `Timestamp(Millisecond, Some("UTC"))`.
    #[serde(rename = "type")]
    pub data_type: String,
}

impl Column {
    /// The columns of an Arrow schema.
    pub fn of(schema: &arrow::datatypes::Schema) -> Vec<Column> {
        schema
            .fields()
            .iter()
            .map(|f| Column {
                name: f.name().clone(),
                data_type: f.data_type().to_string(),
            })
            .collect()
    }
}

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
        }
    }
}

/// `POST /api/alerts/{id}/ack`: who has seen the alert and acts on it.
#[derive(Debug, Clone, PartialEq, Deserialize, ToSchema)]
pub struct AckRequest {
    /// Who acknowledges (at most `max_ack_by_chars` characters).
    pub by: String,
    /// At most `max_ack_note_bytes` bytes.
    #[serde(default)]
    pub note: Option<String>,
}

/// An acknowledgement as recorded (and audited); a later one supersedes an
/// earlier one in alert views.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Acknowledgement {
    pub alert_id: String,
    pub by: String,
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

// ---------------------------------------------------------------- ingest

/// `POST /api/ingest`: lines decoded and handed to the pipeline, and lines
/// refused (each one a dead letter).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
pub struct IngestResultView {
    pub accepted: usize,
    pub rejected: usize,
}

impl From<crate::source::ingest::IngestResult> for IngestResultView {
    fn from(r: crate::source::ingest::IngestResult) -> Self {
        Self {
            accepted: r.accepted,
            rejected: r.rejected,
        }
    }
}

// ---------------------------------------------------------------- query

/// `POST /api/query`: read-only SQL over `vitals`, `alerts`, `rules`,
/// `rule_versions` and `audit_log`.
#[derive(Debug, Clone, PartialEq, Deserialize, ToSchema)]
pub struct QueryRequest {
    pub sql: String,
}

/// A query's JSON answer. It is written as it is produced (a large result is
/// streamed), so this type documents the shape; `api/query.rs` writes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct QueryResult {
    pub columns: Vec<Column>,
    /// One object per row, by column name.
    pub rows: Vec<Map<String, Value>>,
    /// Present (true) when a streamed answer was cut short by the row or time
    /// limit; `rows` then holds what was sent before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub truncated: Option<bool>,
    /// Why a streamed answer was cut short.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

// ---------------------------------------------------------------- replay

/// `POST /api/replay`: a stored rule (`rule_id`, optionally `version`) or a
/// draft (`sql`) over the archived events of `[from_ms, to_ms)`.
#[derive(Debug, Clone, PartialEq, Deserialize, ToSchema)]
pub struct ReplayRequest {
    /// A stored rule; not with `sql`.
    pub rule_id: Option<String>,
    /// The stored rule's version (default: its current one).
    pub version: Option<u32>,
    /// A draft never activated (backtest), instead of `rule_id`.
    pub sql: Option<String>,
    /// Overrides the rule's cooldown.
    #[serde(default)]
    pub cooldown_seconds: Option<u64>,
    pub from_ms: i64,
    pub to_ms: i64,
    /// Diff the result against the alerts recorded live (stored rules only).
    #[serde(default)]
    pub audit: bool,
    /// Run in the background: answer `202` with the job at once; follow it
    /// with `GET /api/replay/{job}` and cancel it with `DELETE`.
    #[serde(default, rename = "async")]
    pub background: bool,
}

/// What a replay found.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct ReplayReportView {
    pub rule_id: String,
    pub version: u32,
    pub from_ms: i64,
    pub to_ms: i64,
    /// Archived events read from the range.
    pub events: usize,
    /// Alerts (fired and suppressed) of windows entirely inside the range,
    /// and of per-event matches inside it.
    pub alerts: Vec<AlertView>,
    /// Present when an audit was asked for a stored rule.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audit: Option<AuditDiffView>,
}

impl From<crate::replay::ReplayReport> for ReplayReportView {
    fn from(r: crate::replay::ReplayReport) -> Self {
        Self {
            rule_id: r.rule_id,
            version: r.version,
            from_ms: r.from_ms,
            to_ms: r.to_ms,
            events: r.events,
            alerts: r.alerts.into_iter().map(Into::into).collect(),
            audit: r.audit.map(Into::into),
        }
    }
}

/// How a replay compares with what was recorded live, by alert id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct AuditDiffView {
    /// Ids fired both live and in the replay, ascending.
    pub both: Vec<String>,
    /// Fired live, not fired by the replay.
    pub fired_not_reproduced: Vec<DifferenceView>,
    /// Fired by the replay, not fired live.
    pub reproduced_not_fired: Vec<DifferenceView>,
    /// No differences either way.
    pub clean: bool,
}

impl From<crate::replay::audit::AuditDiff> for AuditDiffView {
    fn from(d: crate::replay::audit::AuditDiff) -> Self {
        let views =
            |v: Vec<crate::replay::audit::Difference>| v.into_iter().map(Into::into).collect();
        Self {
            both: d.both,
            fired_not_reproduced: views(d.fired_not_reproduced),
            reproduced_not_fired: views(d.reproduced_not_fired),
            clean: d.clean,
        }
    }
}

/// One alert fired on one side only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct DifferenceView {
    pub id: String,
    /// The likely reason, as a sentence for the auditor.
    pub why: String,
}

impl From<crate::replay::audit::Difference> for DifferenceView {
    fn from(d: crate::replay::audit::Difference) -> Self {
        Self {
            id: d.id,
            why: d.why.explanation().to_string(),
        }
    }
}

/// A background replay (`POST /api/replay` with `"async": true`, then
/// `GET`/`DELETE /api/replay/{job}`).
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct ReplayJobView {
    pub job: String,
    pub state: JobStateView,
    /// Events handed to the engine so far.
    pub events: u64,
    /// Event time reached so far.
    pub event_time_ms: i64,
    /// Share of the range's event time covered, 0 to 1 (1 once done).
    pub fraction: f64,
    pub started_at_ms: i64,
    /// The report once done, else null.
    #[schema(required)]
    pub result: Option<ReplayReportView>,
    /// Why it failed or stopped, else null.
    #[schema(required)]
    pub error: Option<String>,
}

impl From<crate::replay::jobs::JobView> for ReplayJobView {
    fn from(j: crate::replay::jobs::JobView) -> Self {
        Self {
            job: j.job,
            state: j.state.into(),
            events: j.events,
            event_time_ms: j.event_time_ms,
            fraction: j.fraction,
            started_at_ms: j.started_at_ms,
            result: j.result.map(Into::into),
            error: j.error,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobStateView {
    Running,
    /// Asked to stop, not stopped yet.
    Cancelling,
    Done,
    Cancelled,
    Failed,
}

impl From<crate::replay::jobs::JobState> for JobStateView {
    fn from(s: crate::replay::jobs::JobState) -> Self {
        use crate::replay::jobs::JobState as S;
        match s {
            S::Running => Self::Running,
            S::Cancelling => Self::Cancelling,
            S::Done => Self::Done,
            S::Cancelled => Self::Cancelled,
            S::Failed => Self::Failed,
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// The domain value and its view must serialize alike: the wire shape is
    /// the view's, and the domain type is what the code fills in.
    fn same_json(domain: impl Serialize, view: impl Serialize, what: &str) {
        let domain = serde_json::to_value(domain).unwrap();
        let view = serde_json::to_value(view).unwrap();
        assert_eq!(
            domain, view,
            "{what} and its view in api/types.rs serialize differently: add the new field to the view"
        );
    }

    fn alert(status: &str) -> sql_rules::Alert {
        serde_json::from_value(json!({
            "id": "00000000000000aa", "rule_id": "r-1", "rule_version": 2, "rule_name": "R",
            "severity": "high", "status": status, "key": {"patient_id": "P-1"},
            "window_start_ms": 1000, "window_end_ms": null, "values": {"avg_hr": 131.5, "n": 3},
            "event_time_ms": 1500, "fired_at_ms": 1600,
            "explanation": {"condition": "avg_hr > 120", "event_count": 3, "first_event_ms": 1000,
                "last_event_ms": 1500, "first_sequence_number": 7, "last_sequence_number": null,
                "suppressed_by": "00000000000000bb", "escalated_from": "00000000000000cc",
                "late": true}
        }))
        .expect("a complete alert (a new field of Alert without a default needs adding here and to AlertView)")
    }

    // `..Default::default()` after every field: a field added to a domain
    // type with a default must not break this test's build, only its check.
    #[allow(clippy::needless_update)]
    #[test]
    fn views_serialize_like_their_domain_types() {
        for status in ["fired", "suppressed"] {
            let a = alert(status);
            same_json(&a, AlertView::from(a.clone()), "sql_rules::Alert");
        }
        let stats = sql_rules::RuleStats {
            events_matched: 1,
            late_events: 2,
            alerts_fired: 3,
            alerts_suppressed: 4,
            open_panes: 5,
            suspension: Some(sql_rules::Suspension::new(
                sql_rules::SuspensionReason::AlertsPerMinute,
                1_000,
                1_001,
                Some(7),
                8,
            )),
            ..Default::default()
        };
        same_json(&stats, RuleStatsView::from(stats.clone()), "RuleStats");
        same_json(
            sql_rules::RuleStats::default(),
            RuleStatsView::from(sql_rules::RuleStats::default()),
            "RuleStats",
        );
        let health = crate::pipeline::RuleHealth {
            errors_total: 3,
            last_error: Some("division by zero".into()),
            last_error_at_ms: Some(9),
            ..Default::default()
        };
        same_json(&health, RuleHealthView::from(health.clone()), "RuleHealth");
        let ingest = crate::source::ingest::IngestResult {
            accepted: 5,
            rejected: 1,
            ..Default::default()
        };
        same_json(ingest, IngestResultView::from(ingest), "IngestResult");

        let version: catalog::rules::RuleVersion = serde_json::from_value(json!({
            "rule_id": "r-1", "version": 1, "name": "R", "sql": "SELECT 1", "severity": "critical",
            "cooldown_seconds": 60, "allowed_lateness_ms": null, "description": "d",
            "keep_duplicates": true,
            "escalation": {"column": "avg_hr", "above": 140.0, "below": null, "severity": "critical"},
            "created_at_ms": 5
        }))
        .unwrap();
        same_json(
            &version,
            RuleVersionView::from(version.clone()),
            "RuleVersion",
        );

        let report = crate::replay::ReplayReport {
            rule_id: "r-1".into(),
            version: 1,
            from_ms: 0,
            to_ms: 10,
            events: 4,
            alerts: vec![alert("fired")],
            audit: Some(crate::replay::audit::diff(&[], &[alert("fired")])),
        };
        same_json(
            &report,
            ReplayReportView::from(report.clone()),
            "ReplayReport",
        );
        for (state, result, error) in [
            (crate::replay::jobs::JobState::Done, Some(report), None),
            (
                crate::replay::jobs::JobState::Failed,
                None,
                Some("no events".to_string()),
            ),
        ] {
            let job = crate::replay::jobs::JobView {
                job: "j".into(),
                state,
                events: 4,
                event_time_ms: 8,
                fraction: 0.5,
                started_at_ms: 1,
                result,
                error,
            };
            same_json(&job, ReplayJobView::from(job.clone()), "JobView");
        }
    }

    /// Every field of the mirrored domain types, by name and without `..`:
    /// a field added to one of them stops this test module compiling, here,
    /// where its view must gain it too (a field skipped when empty would
    /// pass the serialization test unseen). `RuleStats` and `RuleHealth`
    /// are left to that test while they are growing.
    // Never called: it only has to compile.
    #[allow(dead_code, clippy::too_many_arguments)]
    fn census(
        alert: sql_rules::Alert,
        explanation: sql_rules::Explanation,
        escalation: sql_rules::Escalation,
        version: catalog::rules::RuleVersion,
        rule: catalog::rules::Rule,
        draft: catalog::rules::RuleDraft,
        report: crate::replay::ReplayReport,
        diff: crate::replay::audit::AuditDiff,
        difference: crate::replay::audit::Difference,
        job: crate::replay::jobs::JobView,
        ingest: crate::source::ingest::IngestResult,
        suspension: sql_rules::Suspension,
    ) {
        let sql_rules::Suspension {
            reason: _,
            budget: _,
            observed: _,
            message: _,
            at_event_ms: _,
            at_processing_ms: _,
        } = suspension;
        let sql_rules::Alert {
            id: _,
            rule_id: _,
            rule_version: _,
            rule_name: _,
            severity: _,
            status: _,
            key: _,
            window_start_ms: _,
            window_end_ms: _,
            values: _,
            event_time_ms: _,
            fired_at_ms: _,
            explanation: _,
        } = alert;
        let sql_rules::Explanation {
            condition: _,
            event_count: _,
            first_event_ms: _,
            last_event_ms: _,
            first_sequence_number: _,
            last_sequence_number: _,
            suppressed_by: _,
            escalated_from: _,
            late: _,
        } = explanation;
        let sql_rules::Escalation {
            column: _,
            above: _,
            below: _,
            severity: _,
        } = escalation;
        let catalog::rules::RuleVersion {
            rule_id: _,
            version: _,
            name: _,
            sql: _,
            severity: _,
            cooldown_seconds: _,
            allowed_lateness_ms: _,
            description: _,
            keep_duplicates: _,
            escalation: _,
            created_at_ms: _,
        } = version;
        let catalog::rules::Rule {
            id: _,
            active: _,
            current: _,
            versions: _,
            created_at_ms: _,
            updated_at_ms: _,
        } = rule;
        let catalog::rules::RuleDraft {
            name: _,
            sql: _,
            severity: _,
            cooldown_seconds: _,
            allowed_lateness_ms: _,
            description: _,
            keep_duplicates: _,
            escalation: _,
        } = draft;
        let crate::replay::ReplayReport {
            rule_id: _,
            version: _,
            from_ms: _,
            to_ms: _,
            events: _,
            alerts: _,
            audit: _,
        } = report;
        let crate::replay::audit::AuditDiff {
            both: _,
            fired_not_reproduced: _,
            reproduced_not_fired: _,
            clean: _,
        } = diff;
        let crate::replay::audit::Difference { id: _, why: _ } = difference;
        let crate::replay::jobs::JobView {
            job: _,
            state: _,
            events: _,
            event_time_ms: _,
            fraction: _,
            started_at_ms: _,
            result: _,
            error: _,
        } = job;
        let crate::source::ingest::IngestResult {
            accepted: _,
            rejected: _,
        } = ingest;
    }

    #[test]
    fn a_rule_request_has_the_catalog_defaults() {
        let request: RuleRequest =
            serde_json::from_value(json!({"name": "n", "sql": "SELECT 1"})).unwrap();
        let draft: catalog::rules::RuleDraft =
            serde_json::from_value(json!({"name": "n", "sql": "SELECT 1"})).unwrap();
        assert_eq!(catalog::rules::RuleDraft::from(request), draft);
        let full = json!({"name": "n", "sql": "SELECT 1", "severity": "info", "cooldown_seconds": 5,
            "allowed_lateness_ms": 10, "description": "d", "keep_duplicates": true,
            "escalation": {"column": "c", "below": 80, "severity": "high"}});
        let request: RuleRequest = serde_json::from_value(full.clone()).unwrap();
        let draft: catalog::rules::RuleDraft = serde_json::from_value(full).unwrap();
        assert_eq!(catalog::rules::RuleDraft::from(request), draft);
    }

    #[test]
    fn every_severity_round_trips_through_the_catalog() {
        for level in catalog::rules::Severity::ALL {
            let view = SeverityView::from(level);
            assert_eq!(catalog::rules::Severity::from(view), level);
            same_json(level, view, "Severity");
        }
    }
}
