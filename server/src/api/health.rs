//! Liveness, readiness and Prometheus metrics.

use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde_json::json;

use super::SharedState;

/// Live while the engine thread makes progress: a thread stuck on one
/// input past `engine_stall_ms` (or dead with input waiting) answers 503,
/// so an orchestrator restarts the process rather than alerting silently
/// stopping behind a green check.
pub async fn healthz(State(state): State<SharedState>) -> impl IntoResponse {
    let health = &state.pipeline.health;
    let now = chrono::Utc::now().timestamp_millis();
    match health.stalled_ms(now, state.config.pipeline.engine_stall_ms) {
        None => (StatusCode::OK, Json(json!({"status": "ok"}))),
        Some(busy_ms) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({
                "status": "stalled",
                "engine_busy_ms": busy_ms,
                "inputs_waiting": health.queued(),
            })),
        ),
    }
}

/// Ready once storage answers and, when configured, Kafka answers.
pub async fn readyz(State(state): State<SharedState>) -> impl IntoResponse {
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
    let kafka_state = match &state.config.kafka.brokers {
        None => "not configured",
        Some(_) if kafka => "ok",
        Some(_) => "unreachable",
    };
    (
        status,
        Json(
            json!({"ready": ready, "storage": if storage {"ok"} else {"unreachable"}, "kafka": kafka_state, "draining": draining}),
        ),
    )
}

pub async fn metrics(State(state): State<SharedState>) -> impl IntoResponse {
    let stats = state
        .pipeline
        .rule_stats
        .lock()
        .map(|s| s.clone())
        .unwrap_or_default();
    let active_rules = stats.len() as f64;
    let open_panes = stats.values().map(|s| s.open_panes).sum::<u64>() as f64;
    let now = chrono::Utc::now().timestamp_millis();
    let health = &state.pipeline.health;
    let stalled = health
        .stalled_ms(now, state.config.pipeline.engine_stall_ms)
        .is_some();
    let failing = state
        .pipeline
        .rule_health
        .lock()
        .map(|h| h.values().filter(|r| r.failing(now)).count())
        .unwrap_or_default() as f64;
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
    ]);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body)
}
