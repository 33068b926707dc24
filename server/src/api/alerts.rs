//! Alerts for people and dashboards: a filtered list read from the alert
//! history (the archive's `alerts` table), acknowledgements, and a live SSE
//! feed of new alerts.

use crate::auth::{need, Caller};
use std::convert::Infallible;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::Json;
use catalog::alert_history;
use futures::{Stream, StreamExt};
use tokio_stream::wrappers::BroadcastStream;

use super::error::ApiError;
use super::types::{
    AckRequest, Acknowledgement, AlertFilterParams, AlertList, AlertView, DeadLetter,
    DeadLetterList, DeadLetterParams, ErrorBody, LiveFeedLagged,
};
use super::SharedState;
use crate::sink::alerts::AlertFilter;
use serde_json::json;

const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 10_000;

/// What a reader asked for, for the audit log.
fn filter_summary(filter: &AlertFilter) -> serde_json::Value {
    json!({
        "rule": filter.rule, "patient": filter.patient, "severity": filter.severity,
        "status": filter.status, "since": filter.since, "until": filter.until,
        "limit": filter.limit, "hospitals": filter.hospitals,
    })
}

/// Alerts as the API shows them: each with its latest acknowledgement.
fn views(state: &SharedState, alerts: Vec<sql_rules::Alert>) -> Vec<AlertView> {
    // The hub keeps acknowledgements by alert id as JSON; only `ack` is read
    // back from its answer.
    let with_acks = state.alerts.with_acks(&alerts);
    alerts
        .into_iter()
        .zip(with_acks)
        .map(|(alert, mut value)| {
            let ack = value
                .get_mut("ack")
                .map(serde_json::Value::take)
                .and_then(|ack| match serde_json::from_value::<Acknowledgement>(ack) {
                    Ok(ack) => Some(ack),
                    Err(e) => {
                        tracing::warn!(alert = %alert.id, error = %e, "unreadable acknowledgement left out");
                        None
                    }
                });
            AlertView::new(alert, ack)
        })
        .collect()
}

/// `GET /api/alerts`: the newest alerts in history (the archive's `alerts`
/// table, flushed or not) that match the filters.
#[utoipa::path(
    get,
    path = "/api/alerts",
    operation_id = "list_alerts",
    tag = "alerts",
    params(AlertFilterParams),
    responses(
        (status = 200, description = "Matching alerts, newest first, fired and suppressed.", body = AlertList),
        (status = 400, description = "A query parameter of the wrong type.", body = ErrorBody),
        (status = 500, description = "The alert history could not be read.", body = ErrorBody),
    )
)]
pub async fn list(
    State(state): State<SharedState>,
    caller: Caller<need::Viewer>,
    params: Result<Query<AlertFilterParams>, QueryRejection>,
) -> Result<Json<AlertList>, ApiError> {
    let Query(params) = params?;
    let mut filter = AlertFilter::from(params);
    // A caller limited to hospitals sees only their alerts.
    filter.hospitals = caller.hospitals.clone();
    let limit = filter.limit.unwrap_or(DEFAULT_LIMIT).min(MAX_LIMIT);
    let Some(query) = filter.history_query(limit, |since| state.alerts.acknowledged_ids(since))
    else {
        return Ok(Json(AlertList { alerts: vec![] }));
    };
    let alerts = alert_history::recent_alerts(&state.history, &query)
        .await
        .map_err(|e| ApiError::internal(format!("reading alert history: {e}")))?;
    crate::audit::record_by(
        &state.audit,
        &caller,
        "read_alerts",
        json!({"filter": filter_summary(&filter), "returned": alerts.len()}),
    )
    .await;
    Ok(Json(AlertList {
        alerts: views(&state, alerts),
    }))
}

/// `POST /api/alerts/{id}/ack`: someone has seen the alert and acts on it.
#[utoipa::path(
    post,
    path = "/api/alerts/{id}/ack",
    operation_id = "acknowledge_alert",
    tag = "alerts",
    params(("id" = String, Path, description = "The alert's id.")),
    request_body = AckRequest,
    responses(
        (status = 200, description = "Recorded: the alert with its `ack`.", body = AlertView),
        (status = 400, description = "No `by` (authentication off), or `by` or `note` over its limit.", body = ErrorBody),
        (status = 404, description = "No alert with this id.", body = ErrorBody),
        (status = 409, description = "Already acknowledged (by whom is in the message).", body = ErrorBody),
        (status = 500, description = "The acknowledgement could not be recorded.", body = ErrorBody),
    )
)]
pub async fn acknowledge(
    State(state): State<SharedState>,
    caller: Caller<need::Viewer>,
    Path(id): Path<String>,
    body: Result<Json<AckRequest>, JsonRejection>,
) -> Result<Json<AlertView>, ApiError> {
    let Json(req) = body.map_err(|e| {
        ApiError::bad_request(format!(
            "expected {{\"note\": \"…\"}} (and `by` when authentication is off): {e}"
        ))
    })?;
    // Who acknowledges is who is authenticated: a `by` in the body is taken
    // only when authentication is off (the loopback demo).
    let by = match caller.via {
        crate::auth::Via::AuthOff => req.by.as_deref().map(str::trim).unwrap_or_default(),
        _ => caller.name.as_str(),
    };
    if by.is_empty() {
        return Err(ApiError::bad_request(
            "`by` must name who acknowledges the alert",
        ));
    }
    let limits = &state.config.limits;
    let by_chars = by.chars().count();
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
    // Another hospital's alert is, to a caller limited to hospitals, no alert.
    let visible = |alert: &sql_rules::Alert| match &caller.hospitals {
        None => true,
        Some(mine) => alert.hospital_id.as_ref().is_some_and(|h| mine.contains(h)),
    };
    let Some(alert) = found.filter(visible) else {
        return Err(ApiError::not_found(format!("no alert with id '{id}'")));
    };
    let ack = Acknowledgement {
        alert_id: id,
        by: by.to_string(),
        by_subject: (caller.via != crate::auth::Via::AuthOff).then(|| caller.subject.clone()),
        note: req.note,
        at_ms: chrono::Utc::now().timestamp_millis(),
    };
    let record = serde_json::to_value(&ack).map_err(|e| ApiError::internal(e.to_string()))?;
    // An acknowledgement stands: a second one would rewrite who acted.
    if let Some(earlier) = state
        .alerts
        .acknowledge_once(record.clone())
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
    {
        let who = earlier
            .get("by")
            .and_then(|v| v.as_str())
            .unwrap_or("someone");
        return Err(ApiError::conflict(format!(
            "alert '{}' was already acknowledged by {who}",
            ack.alert_id
        )));
    }
    crate::audit::record_by(&state.audit, &caller, "alert_acknowledged", record).await;
    Ok(Json(AlertView::new(alert, Some(ack))))
}

/// Server-Sent Events: one `alert` event per alert, as it is emitted.
#[utoipa::path(
    get,
    path = "/api/alerts/stream",
    operation_id = "alert_stream",
    tag = "alerts",
    params(AlertFilterParams),
    responses(
        (status = 200, description = "Server-Sent Events, until the server shuts down. Event `alert`: an `AlertView` (without `ack`), its id the alert id. Event `lagged`: a `LiveFeedLagged`, when this client was too slow and missed alerts.", content_type = "text/event-stream", body = String),
        (status = 400, description = "A query parameter of the wrong type.", body = ErrorBody),
    )
)]
pub async fn stream(
    State(state): State<SharedState>,
    caller: Caller<need::Viewer>,
    params: Result<Query<AlertFilterParams>, QueryRejection>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let Query(params) = params?;
    let mut filter = AlertFilter::from(params);
    filter.hospitals = caller.hospitals.clone();
    crate::audit::record_by(
        &state.audit,
        &caller,
        "open_alert_stream",
        json!({"filter": filter_summary(&filter)}),
    )
    .await;
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
                        // The engine's alert serializes as `AlertView` (a
                        // test in api/types/tests.rs holds them together); it is
                        // shared by every client, so it is not copied into one.
                        let data = serde_json::to_string(alert.as_ref()).ok()?;
                        Some(Ok(Event::default()
                            .event("alert")
                            .id(alert.id.clone())
                            .data(data)))
                    }
                    // A slow client missed alerts: say so rather than hide it.
                    Err(tokio_stream::wrappers::errors::BroadcastStreamRecvError::Lagged(n)) => {
                        let lagged = LiveFeedLagged { missed: n };
                        Some(Ok(Event::default()
                            .event("lagged")
                            .data(serde_json::to_string(&lagged).ok()?)))
                    }
                }
            }
        });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// Events that could not be used, newest first (the embedded dead-letter
/// table; empty when dead letters go to Kafka).
#[utoipa::path(
    get,
    path = "/api/dead-letters",
    operation_id = "list_dead_letters",
    tag = "ingest",
    params(DeadLetterParams),
    responses(
        (status = 200, description = "The newest dead letters.", body = DeadLetterList),
        (status = 400, description = "A query parameter of the wrong type.", body = ErrorBody),
    )
)]
pub async fn dead_letters(
    State(state): State<SharedState>,
    caller: Caller<need::Auditor>,
    params: Result<Query<DeadLetterParams>, QueryRejection>,
) -> Result<Json<DeadLetterList>, ApiError> {
    let Query(q) = params?;
    if caller.hospitals.is_some() {
        // A dead letter is an event that could not be read, so which
        // hospital it belongs to is not known: none is shown to a caller
        // limited to hospitals.
        return Err(ApiError::forbidden(
            "dead letters are not attributed to hospitals; a caller limited to hospitals cannot read them",
        ));
    }
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT).min(MAX_LIMIT);
    crate::audit::record_by(
        &state.audit,
        &caller,
        "read_dead_letters",
        json!({"limit": limit}),
    )
    .await;
    let dead_letters = state
        .dead_letters
        .table
        .recent(limit, |_| true)
        .into_iter()
        .filter_map(
            |record| match serde_json::from_value::<DeadLetter>(record) {
                Ok(letter) => Some(letter),
                Err(e) => {
                    tracing::warn!(error = %e, "unreadable dead-letter record left out");
                    None
                }
            },
        )
        .collect();
    Ok(Json(DeadLetterList {
        dead_letters,
        total: state.dead_letters.table.len(),
    }))
}
