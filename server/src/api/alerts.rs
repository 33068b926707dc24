//! Alerts for people and dashboards: a filtered list read from the alert
//! history (the archive's `alerts` table), acknowledgements, and a live SSE
//! feed of new alerts.

use std::convert::Infallible;

use axum::extract::{Path, Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::Json;
use catalog::alert_history;
use futures::{Stream, StreamExt};
use serde_json::{json, Value};
use tokio_stream::wrappers::BroadcastStream;

use super::error::ApiError;
use super::SharedState;
use crate::sink::alerts::AlertFilter;

const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 10_000;

/// `GET /api/alerts`: the newest alerts in history (the archive's `alerts`
/// table, flushed or not) that match the filters.
pub async fn list(
    State(state): State<SharedState>,
    Query(filter): Query<AlertFilter>,
) -> Result<Json<Value>, ApiError> {
    let limit = filter.limit.unwrap_or(DEFAULT_LIMIT).min(MAX_LIMIT);
    let Some(query) = filter.history_query(limit) else {
        return Ok(Json(json!({"alerts": []})));
    };
    let alerts = alert_history::recent_alerts(&state.history, &query)
        .await
        .map_err(|e| ApiError::internal(format!("reading alert history: {e}")))?;
    Ok(Json(json!({"alerts": state.alerts.with_acks(&alerts)})))
}

#[derive(Debug, serde::Deserialize)]
pub struct AckRequest {
    pub by: String,
    #[serde(default)]
    pub note: Option<String>,
}

/// `POST /api/alerts/{id}/ack`: someone has seen the alert and acts on it.
pub async fn acknowledge(
    State(state): State<SharedState>,
    Path(id): Path<String>,
    body: Result<Json<AckRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let Json(req) = body.map_err(|e| {
        ApiError::bad_request(format!(
            "expected {{\"by\": \"who\", \"note\": \"…\"}}: {e}"
        ))
    })?;
    if req.by.trim().is_empty() {
        return Err(ApiError::bad_request(
            "`by` must name who acknowledges the alert",
        ));
    }
    let limits = &state.config.limits;
    let by_chars = req.by.trim().chars().count();
    if by_chars > limits.max_ack_by_chars {
        return Err(ApiError::bad_request(format!(
            "`by` is {by_chars} characters long; the limit is {} (max_ack_by_chars)",
            limits.max_ack_by_chars
        )));
    }
    if let Some(note) = &req.note {
        if note.len() > limits.max_ack_note_bytes {
            return Err(ApiError::bad_request(format!(
                "`note` is {} bytes long; the limit is {} bytes (max_ack_note_bytes)",
                note.len(),
                limits.max_ack_note_bytes
            )));
        }
    }
    let found = alert_history::find_alert(&state.history, &id)
        .await
        .map_err(|e| ApiError::internal(format!("reading alert history: {e}")))?;
    let Some(alert) = found else {
        return Err(ApiError::not_found(format!("no alert with id '{id}'")));
    };
    let ack = json!({
        "alert_id": id,
        "by": req.by.trim(),
        "note": req.note,
        "at_ms": chrono::Utc::now().timestamp_millis(),
    });
    state
        .alerts
        .acknowledge(ack.clone())
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?;
    crate::audit::record(&state.audit, "alert_acknowledged", ack).await;
    let mut alerts = state.alerts.with_acks(std::slice::from_ref(&alert));
    Ok(Json(alerts.remove(0)))
}

/// Server-Sent Events: one `alert` event per alert, as it is emitted.
pub async fn stream(
    State(state): State<SharedState>,
    Query(filter): Query<AlertFilter>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let rx = state.alerts.live.subscribe();
    // The feed ends when the server shuts down, so an open client cannot
    // hold the process (clients reconnect, to another instance if need be).
    let stop = state.shutdown.clone().requested();
    let stream = BroadcastStream::new(rx)
        .take_until(stop)
        .filter_map(move |item| {
            let filter = filter.clone();
            async move {
                match item {
                    Ok(alert) => {
                        if !filter.matches(&alert) {
                            return None;
                        }
                        let data = serde_json::to_string(alert.as_ref()).ok()?;
                        Some(Ok(Event::default()
                            .event("alert")
                            .id(alert.id.clone())
                            .data(data)))
                    }
                    // A slow client missed alerts: say so rather than hide it.
                    Err(tokio_stream::wrappers::errors::BroadcastStreamRecvError::Lagged(n)) => {
                        Some(Ok(Event::default()
                            .event("lagged")
                            .data(json!({"missed": n}).to_string())))
                    }
                }
            }
        });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

#[derive(Debug, serde::Deserialize)]
pub struct DeadLetterQuery {
    pub limit: Option<usize>,
}

pub async fn dead_letters(
    State(state): State<SharedState>,
    Query(q): Query<DeadLetterQuery>,
) -> Json<Value> {
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT).min(MAX_LIMIT);
    let letters = state.dead_letters.table.recent(limit, |_| true);
    Json(json!({"dead_letters": letters, "total": state.dead_letters.table.len()}))
}
