//! Rules: what is submitted, what is shown, and what validation answers.

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

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
    /// The hospital whose events the rule sees (1–128 bytes). Leave it out
    /// for a global rule, over every hospital's events: that needs the
    /// admin role.
    #[serde(default)]
    pub hospital_id: Option<String>,
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
            hospital_id: r.hospital_id,
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
    /// The hospital whose events it sees; null for a global rule.
    #[schema(required)]
    pub hospital_id: Option<String>,
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
    /// The engine's counters for the running version; null when not
    /// running, and for a global rule shown to a caller limited to hospitals
    /// (they count every hospital's events).
    #[schema(required)]
    pub stats: Option<RuleStatsView>,
    /// What an operator needs first: is it running, and is it healthy?
    pub state: RuleState,
    /// Run-time errors; null when it never failed since the server started.
    #[schema(required)]
    pub health: Option<RuleHealthView>,
    /// Who deactivated it, when and why; null while active.
    #[schema(required)]
    pub deactivation: Option<DeactivationView>,
}

/// Who deactivated a rule, when and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct DeactivationView {
    /// The caller's display name.
    pub by: String,
    pub at_ms: i64,
    pub reason: String,
}

impl From<catalog::Deactivation> for DeactivationView {
    fn from(d: catalog::Deactivation) -> Self {
        Self {
            by: d.by,
            at_ms: d.at_ms,
            reason: d.reason,
        }
    }
}

/// Query string of `DELETE /api/rules/{id}`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeactivateParams {
    /// Why the rule is stopped (at most `[limits] max_deactivation_reason_chars`,
    /// default 500), kept with the rule and in the audit log.
    pub reason: Option<String>,
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
        let state = RuleState::of(rule.active, stats.as_ref(), health.as_ref(), now_ms);
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
            hospital_id: v.hospital_id,
            active: rule.active,
            window,
            versions: rule.versions,
            created_at_ms: rule.created_at_ms,
            updated_at_ms: rule.updated_at_ms,
            stats: stats.map(Into::into),
            state,
            health: health.map(Into::into),
            deactivation: rule.deactivation.map(Into::into),
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
    /// Stopped by the engine for going over a run-time budget (state,
    /// work per batch, alerts per minute; `stats.suspension` says which):
    /// it holds no state and is not evaluated until a new version is saved.
    Suspended,
}

impl RuleState {
    pub fn of(
        active: bool,
        stats: Option<&sql_rules::RuleStats>,
        health: Option<&crate::pipeline::RuleHealth>,
        now_ms: i64,
    ) -> Self {
        match health {
            _ if !active => Self::Inactive,
            _ if stats.is_some_and(|s| s.suspension.is_some()) => Self::Suspended,
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
    /// The hospital whose events this version sees; null for a global rule.
    #[schema(required)]
    pub hospital_id: Option<String>,
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
            hospital_id: v.hospital_id,
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
