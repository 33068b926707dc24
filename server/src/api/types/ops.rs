//! `GET /api/ops`: what an operator watches — per-partition lag and event
//! time, checkpoints, the engine's queue, and each rule against its budgets.

use serde::Serialize;
use utoipa::ToSchema;

/// The operations view (admins).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Operations {
    /// Server clock when the view was taken.
    pub now_ms: i64,
    /// Per partition the engine reads (Kafka partitions; -1 for events
    /// from HTTP or the demo).
    pub partitions: Vec<PartitionOps>,
    pub checkpoints: CheckpointOps,
    pub engine: EngineOps,
    /// The run-time budgets every rule is held to (`[limits]`).
    pub budgets: RuleBudgetsView,
    pub rules: Vec<RuleOps>,
    /// Where several instances share the data directory (`[instance] id`
    /// set): each as it last announced itself, live or gone. Empty for a
    /// single instance.
    pub instances: Vec<crate::instances::InstanceStatus>,
}

/// One partition.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PartitionOps {
    pub partition: i32,
    /// Messages behind the partition's end; `None` when unknown (no Kafka,
    /// or librdkafka has not reported it yet).
    pub consumer_lag: Option<i64>,
    /// Latest event time read from it; `None` before its first event.
    pub latest_event_ms: Option<i64>,
    /// Server clock minus `latest_event_ms`.
    pub event_lag_ms: Option<i64>,
    /// No longer holding the watermark back (`idle_timeout_ms`).
    pub idle: bool,
}

/// Checkpoints of engine state (with Kafka).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CheckpointOps {
    /// Off without Kafka or with `checkpoint_interval_ms = 0`.
    pub enabled: bool,
    pub interval_ms: u64,
    /// The wait before the next: `interval_ms`, or longer when the last
    /// took more than `checkpoint_max_overhead_percent` of it.
    pub next_wait_ms: u64,
    /// Written since start, and failed attempts.
    pub written: u64,
    pub failures: u64,
    /// Time since the latest was taken; `None` before the first.
    pub age_ms: Option<i64>,
    pub bytes: u64,
    pub duration_ms: f64,
    /// Time the start-up restore took; `None`: nothing was restored.
    pub restore_ms: Option<f64>,
}

/// The engine thread.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct EngineOps {
    /// Inputs waiting for the engine thread.
    pub inputs_waiting: i64,
    /// Set while one input has kept it busy past `engine_stall_ms`.
    pub stalled_ms: Option<i64>,
    /// Messages behind over every partition; `None` unknown or no Kafka.
    pub consumer_lag: Option<i64>,
    /// Patients the engine holds an id for, and has forgotten since start
    /// (`forget_patients_after_ms`).
    pub patients_held: u64,
    pub patients_forgotten: u64,
}

/// `[limits]` run-time budgets of a rule.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RuleBudgetsView {
    pub max_state_bytes: u64,
    pub max_work_per_batch: u64,
    pub max_alerts_per_minute: u64,
}

/// One running rule.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RuleOps {
    pub id: String,
    /// `running`, `failing` (a run-time error in the last minute) or
    /// `suspended` (over a budget; a new version clears it).
    pub state: String,
    pub open_panes: u64,
    pub alerts_fired: u64,
    pub alerts_suppressed: u64,
    pub late_events: u64,
    pub errors_total: u64,
    /// Why it was suspended, for people.
    pub suspension: Option<String>,
}
