//! Replays: the request, the report with its audit, and background jobs.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::AlertView;

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
    /// The draft's hospital: it sees only that hospital's events, as it
    /// would stored with this `hospital_id` (default: every hospital's).
    /// Not with `rule_id`: a stored rule has its own.
    #[serde(default)]
    pub hospital_id: Option<String>,
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
