//! Liveness, readiness and Prometheus metrics.

use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;

use super::types::{Health, HealthStatus, KafkaState, Readiness, StorageState};
use super::SharedState;

/// Live while the engine thread makes progress: a thread stuck on one
/// input past `engine_stall_ms` (or dead with input waiting) answers 503,
/// so an orchestrator restarts the process rather than alerting silently
/// stopping behind a green check.
#[utoipa::path(
    get,
    path = "/healthz",
    operation_id = "healthz",
    tag = "health",
    responses(
        (status = 200, description = "The engine makes progress: `{\"status\": \"ok\"}`.", body = Health),
        (status = 503, description = "The engine thread is stalled (or has died with input waiting).", body = Health),
    )
)]
pub async fn healthz(State(state): State<SharedState>) -> (StatusCode, Json<Health>) {
    let health = &state.pipeline.health;
    let now = chrono::Utc::now().timestamp_millis();
    match health.stalled_ms(now, state.config.pipeline.engine_stall_ms) {
        None => (
            StatusCode::OK,
            Json(Health {
                status: HealthStatus::Ok,
                engine_busy_ms: None,
                inputs_waiting: None,
            }),
        ),
        Some(busy_ms) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Health {
                status: HealthStatus::Stalled,
                engine_busy_ms: Some(busy_ms),
                inputs_waiting: Some(health.queued()),
            }),
        ),
    }
}

/// Ready once storage answers and, when configured, Kafka answers.
#[utoipa::path(
    get,
    path = "/readyz",
    operation_id = "readyz",
    tag = "health",
    responses(
        (status = 200, description = "Ready to take traffic.", body = Readiness),
        (status = 503, description = "Not ready: storage or Kafka unreachable, or draining for shutdown.", body = Readiness),
    )
)]
pub async fn readyz(State(state): State<SharedState>) -> (StatusCode, Json<Readiness>) {
    let storage = state
        .store
        .list_with_delimiter(Some(&state.store_prefix))
        .await
        .is_ok();
    let kafka = state.kafka_ready.load(Ordering::Relaxed);
    let draining = state.shutdown.is_requested();
    let ready = storage && kafka && !draining;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let kafka = match &state.config.kafka.brokers {
        None => KafkaState::NotConfigured,
        Some(_) if kafka => KafkaState::Ok,
        Some(_) => KafkaState::Unreachable,
    };
    let storage = if storage {
        StorageState::Ok
    } else {
        StorageState::Unreachable
    };
    let lag = state.kafka_lag.load(Ordering::Relaxed);
    let consumer_lag = (lag >= 0).then_some(lag);
    let degraded = degraded(&state, consumer_lag);
    (
        status,
        Json(Readiness {
            ready,
            storage,
            kafka,
            draining,
            consumer_lag,
            degraded,
        }),
    )
}

/// A consumer this far behind is reported as degraded (minutes of a large
/// ward's traffic): alerts still come, but late.
const LAG_DEGRADED: i64 = 100_000;

/// Inputs queued for the engine thread past this are reported as degraded.
const QUEUE_DEGRADED: i64 = 64;

/// Rules with a run-time error in the last minute.
fn failing_rules(state: &SharedState, now_ms: i64) -> usize {
    state
        .pipeline
        .rule_health
        .lock()
        .map(|h| h.values().filter(|r| r.failing(now_ms)).count())
        .unwrap_or_default()
}

/// What `/readyz` lists under `degraded` (see [`Readiness::degraded`]).
fn degraded(state: &SharedState, consumer_lag: Option<i64>) -> Vec<String> {
    let now = chrono::Utc::now().timestamp_millis();
    let mut out = Vec::new();
    let health = &state.pipeline.health;
    if health
        .stalled_ms(now, state.config.pipeline.engine_stall_ms)
        .is_some()
    {
        out.push("engine stalled".to_string());
    }
    let failing = failing_rules(state, now);
    if failing > 0 {
        out.push(format!("{failing} rules failing"));
    }
    let suspended = state
        .pipeline
        .rule_stats
        .lock()
        .map(|s| s.values().filter(|s| s.suspension.is_some()).count())
        .unwrap_or_default();
    if suspended > 0 {
        out.push(format!("{suspended} rules suspended"));
    }
    if health.queued() > QUEUE_DEGRADED {
        out.push(format!("{} inputs waiting", health.queued()));
    }
    if let Some(lag) = consumer_lag.filter(|l| *l > LAG_DEGRADED) {
        out.push(format!("kafka lag {lag}"));
    }
    out
}

/// Prometheus metrics (text exposition format 0.0.4).
#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "metrics",
    tag = "health",
    responses(
        (status = 200, description = "Counters and gauges in the Prometheus text format.", body = String, content_type = "text/plain; version=0.0.4"),
    )
)]
pub async fn metrics(State(state): State<SharedState>) -> impl IntoResponse {
    let stats = state
        .pipeline
        .rule_stats
        .lock()
        .map(|s| s.clone())
        .unwrap_or_default();
    let active_rules = stats.len() as f64;
    let open_panes = stats.values().map(|s| s.open_panes).sum::<u64>() as f64;
    let suspended = stats.values().filter(|s| s.suspension.is_some()).count() as f64;
    let now = chrono::Utc::now().timestamp_millis();
    let health = &state.pipeline.health;
    let stalled = health
        .stalled_ms(now, state.config.pipeline.engine_stall_ms)
        .is_some();
    let failing = failing_rules(&state, now) as f64;
    let body = state.metrics.render(&[
        (
            "wardwatch_active_rules",
            "Rules running in the engine.",
            active_rules,
        ),
        (
            "wardwatch_open_panes",
            "Window panes holding state.",
            open_panes,
        ),
        (
            "wardwatch_engine_stalled",
            "1 while the engine thread has been busy on one input past engine_stall_ms (or has died with input waiting).",
            if stalled { 1.0 } else { 0.0 },
        ),
        (
            "wardwatch_engine_queue",
            "Inputs waiting for the engine thread.",
            health.queued() as f64,
        ),
        (
            "wardwatch_rules_failing",
            "Rules with a run-time error in the last minute.",
            failing,
        ),
        (
            "wardwatch_consumer_lag",
            "Messages the Kafka consumer is behind over its partitions (librdkafka statistics); -1 unknown or no Kafka.",
            state.kafka_lag.load(Ordering::Relaxed) as f64,
        ),
        (
            "wardwatch_rules_suspended",
            "Rules suspended for going over a run-time budget (GET /api/rules: stats.suspension); a new version of the rule clears it.",
            suspended,
        ),
        (
            "wardwatch_checkpoint_bytes",
            "Size of the latest checkpoint of engine state.",
            state.metrics.checkpoint_bytes.load(Ordering::Relaxed) as f64,
        ),
        (
            "wardwatch_checkpoint_duration_seconds",
            "Time the latest checkpoint took, from taking the state to its file being written.",
            state.metrics.checkpoint_micros.load(Ordering::Relaxed) as f64 / 1e6,
        ),
        (
            "wardwatch_rules_unplaced",
            "Active rules no live instance runs (several instances: rules not grouped by patient_id while no global_rules instance is live). Alert on > 0: those rules are not alerting.",
            state.metrics.rules_unplaced.load(Ordering::Relaxed) as f64,
        ),
        (
            "wardwatch_patients_held",
            "Patients the engine holds an id for (forgotten after forget_patients_after_ms of event time without readings and with no state).",
            state.metrics.patients_held.load(Ordering::Relaxed) as f64,
        ),
        (
            "wardwatch_patients_forgotten",
            "Patients the engine has forgotten since it started (or was restored).",
            state.metrics.patients_forgotten.load(Ordering::Relaxed) as f64,
        ),
        (
            "wardwatch_checkpoint_interval_seconds",
            "The wait before the next checkpoint: checkpoint_interval_ms, or longer when the last took more than checkpoint_max_overhead_percent of it.",
            state.metrics.checkpoint_wait_micros.load(Ordering::Relaxed) as f64 / 1e6,
        ),
        (
            "wardwatch_checkpoint_age_seconds",
            "Time since the latest checkpoint was taken; -1 before the first.",
            match state.metrics.checkpoint_at_ms.load(Ordering::Relaxed) {
                0 => -1.0,
                at => (now - at as i64).max(0) as f64 / 1e3,
            },
        ),
        (
            "wardwatch_restore_seconds",
            "Time the start-up restore of the latest checkpoint took (reading it, restoring the engine, reading back delivered alerts); 0 when nothing was restored.",
            state.metrics.restore_micros.load(Ordering::Relaxed) as f64 / 1e6,
        ),
    ]);
    let body = body + &partition_metrics(&state, now);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body)
}

/// Per partition: the consumer's lag in messages, and how far its events
/// are behind the server clock (the watermark lag a platform team watches:
/// a partition whose devices or broker fall behind shows here first).
fn partition_metrics(state: &SharedState, now_ms: i64) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let lag = state
        .kafka_partition_lag
        .lock()
        .map(|l| l.clone())
        .unwrap_or_default();
    let name = "wardwatch_partition_consumer_lag";
    let _ = writeln!(out, "# HELP {name} Messages the Kafka consumer is behind the partition's end (librdkafka statistics).\n# TYPE {name} gauge");
    for (partition, messages) in lag {
        let _ = writeln!(out, "{name}{{partition=\"{partition}\"}} {messages}");
    }
    let clocks = state
        .pipeline
        .partition_clocks
        .lock()
        .map(|c| c.clone())
        .unwrap_or_default();
    let name = "wardwatch_partition_event_lag_seconds";
    let _ = writeln!(out, "# HELP {name} Server clock minus the partition's latest event time (how far behind real time its events are; the watermark follows the slowest partition that is not idle).\n# TYPE {name} gauge");
    for (partition, latest, _) in clocks.iter().filter(|(_, latest, _)| *latest > i64::MIN) {
        let _ = writeln!(
            out,
            "{name}{{partition=\"{partition}\"}} {}",
            (now_ms - latest) as f64 / 1e3
        );
    }
    let name = "wardwatch_partition_idle";
    let _ = writeln!(out, "# HELP {name} 1 while the partition no longer holds the watermark back (idle_timeout_ms).\n# TYPE {name} gauge");
    for (partition, _, idle) in &clocks {
        let _ = writeln!(
            out,
            "{name}{{partition=\"{partition}\"}} {}",
            u8::from(*idle)
        );
    }
    out
}
