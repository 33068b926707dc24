//! Liveness, readiness and Prometheus metrics.

use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde_json::json;

use super::SharedState;

pub async fn healthz() -> impl IntoResponse {
    Json(json!({"status": "ok"}))
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
    ]);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body)
}
