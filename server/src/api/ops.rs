//! `GET /api/ops` (admins): the operations strip's data in one answer,
//! read from what `/metrics` reads (the same counters, per partition and
//! per rule), so the UI and Prometheus never disagree.

use std::sync::atomic::Ordering::Relaxed;

use axum::extract::State;
use axum::Json;

use super::types::{CheckpointOps, EngineOps, Operations, PartitionOps, RuleBudgetsView, RuleOps};
use super::SharedState;
use crate::auth::{need, Caller};

#[utoipa::path(
    get,
    path = "/api/ops",
    operation_id = "operations",
    tag = "health",
    responses((status = 200, description = "Partitions, checkpoints, the engine and each rule against its budgets.", body = Operations))
)]
pub async fn operations(
    State(state): State<SharedState>,
    _caller: Caller<need::Admin>,
) -> Json<Operations> {
    let now = chrono::Utc::now().timestamp_millis();
    let lag = state
        .kafka_partition_lag
        .lock()
        .map(|l| l.clone())
        .unwrap_or_default();
    let clocks = state
        .pipeline
        .partition_clocks
        .lock()
        .map(|c| c.clone())
        .unwrap_or_default();
    let mut partitions: Vec<PartitionOps> = clocks
        .iter()
        .map(|&(partition, latest, idle)| {
            let latest = (latest > i64::MIN).then_some(latest);
            PartitionOps {
                partition,
                consumer_lag: lag.get(&partition).copied(),
                latest_event_ms: latest,
                event_lag_ms: latest.map(|l| now - l),
                idle,
            }
        })
        .collect();
    // Lag known for a partition the engine has not heard from yet.
    for (&partition, &messages) in &lag {
        if !partitions.iter().any(|p| p.partition == partition) {
            partitions.push(PartitionOps {
                partition,
                consumer_lag: Some(messages),
                latest_event_ms: None,
                event_lag_ms: None,
                idle: false,
            });
        }
    }
    partitions.sort_by_key(|p| p.partition);

    let m = &state.metrics;
    let config = &state.config;
    let taken_at = m.checkpoint_at_ms.load(Relaxed) as i64;
    let restore_micros = m.restore_micros.load(Relaxed);
    let checkpoints = CheckpointOps {
        enabled: config.kafka.brokers.is_some() && config.pipeline.checkpoint_interval_ms > 0,
        interval_ms: config.pipeline.checkpoint_interval_ms,
        next_wait_ms: m.checkpoint_wait_micros.load(Relaxed) / 1_000,
        written: m.checkpoints.load(Relaxed),
        failures: m.checkpoint_failures.load(Relaxed),
        age_ms: (taken_at > 0).then(|| (now - taken_at).max(0)),
        bytes: m.checkpoint_bytes.load(Relaxed),
        duration_ms: m.checkpoint_micros.load(Relaxed) as f64 / 1e3,
        restore_ms: (restore_micros > 0).then(|| restore_micros as f64 / 1e3),
    };
    let health = &state.pipeline.health;
    let total_lag = state.kafka_lag.load(Relaxed);
    let engine = EngineOps {
        inputs_waiting: health.queued(),
        stalled_ms: health.stalled_ms(now, config.pipeline.engine_stall_ms),
        consumer_lag: (total_lag >= 0).then_some(total_lag),
        patients_held: m.patients_held.load(Relaxed),
        patients_forgotten: m.patients_forgotten.load(Relaxed),
    };
    let budgets = config.limits.budgets();
    let budgets = RuleBudgetsView {
        max_state_bytes: budgets.max_state_bytes,
        max_work_per_batch: budgets.max_work_per_batch,
        max_alerts_per_minute: budgets.max_alerts_per_minute,
    };
    let stats = state
        .pipeline
        .rule_stats
        .lock()
        .map(|s| s.clone())
        .unwrap_or_default();
    let rule_health = state
        .pipeline
        .rule_health
        .lock()
        .map(|h| h.clone())
        .unwrap_or_default();
    let mut rules: Vec<RuleOps> = stats
        .into_iter()
        .map(|(id, s)| {
            let health = rule_health.get(&id).cloned().unwrap_or_default();
            let state = if s.suspension.is_some() {
                "suspended"
            } else if health.failing(now) {
                "failing"
            } else {
                "running"
            };
            RuleOps {
                state: state.into(),
                open_panes: s.open_panes,
                alerts_fired: s.alerts_fired,
                alerts_suppressed: s.alerts_suppressed,
                late_events: s.late_events,
                errors_total: health.errors_total,
                suspension: s.suspension.map(|x| x.message),
                id,
            }
        })
        .collect();
    rules.sort_by(|a, b| a.id.cmp(&b.id));
    let instances = match state.config.instance.id {
        Some(_) => crate::instances::list(state.store.as_ref(), &state.store_prefix).await,
        None => Vec::new(),
    };
    Json(Operations {
        now_ms: now,
        partitions,
        checkpoints,
        engine,
        budgets,
        rules,
        instances,
    })
}
