//! One patient's readings around an alert, for the UI's trend chart: read
//! from the archive (history), limited to the caller's hospitals, audited
//! as a read of patient data.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::Json;
use catalog::patient_history;
use serde_json::json;

use super::error::ApiError;
use super::types::{ErrorBody, PatientVitals, PatientVitalsParams};
use super::SharedState;
use crate::auth::{need, Caller};

const HOUR_MS: i64 = 3_600_000;
/// The longest range one request reads: a trend around an alert, not an
/// export (history SQL is for that).
pub const MAX_SPAN_MS: i64 = 24 * HOUR_MS;
/// Readings one answer holds at most.
pub const MAX_READINGS: usize = 10_000;

/// A patient's archived readings in a time range, oldest first.
#[utoipa::path(
    get,
    path = "/api/patients/{patient_id}/vitals",
    operation_id = "patient_vitals",
    tag = "alerts",
    params(("patient_id" = String, Path, description = "The patient's id."), PatientVitalsParams),
    responses(
        (status = 200, description = "The readings (at most 10,000; `truncated` says when there were more).", body = PatientVitals),
        (status = 400, description = "A range that is empty, reversed or longer than 24 h, or a patient id over 128 bytes.", body = ErrorBody),
        (status = 500, description = "The archive could not be read.", body = ErrorBody),
        (status = 503, description = "`max_concurrent_queries` history reads are running already.", body = ErrorBody),
        (status = 504, description = "The read ran past `query_timeout_ms`.", body = ErrorBody),
    )
)]
pub async fn vitals(
    State(state): State<SharedState>,
    caller: Caller<need::Viewer>,
    Path(patient_id): Path<String>,
    params: Result<Query<PatientVitalsParams>, QueryRejection>,
) -> Result<Json<PatientVitals>, ApiError> {
    let Query(params) = params?;
    if patient_id.len() > crate::source::decode::MAX_ID_BYTES {
        return Err(ApiError::bad_request(format!(
            "the patient id is {} bytes long; no patient id is longer than {}",
            patient_id.len(),
            crate::source::decode::MAX_ID_BYTES
        )));
    }
    let until = params
        .until
        .unwrap_or_else(|| chrono::Utc::now().timestamp_millis());
    let since = params.since.unwrap_or(until.saturating_sub(HOUR_MS));
    check_range(since, until, MAX_SPAN_MS)?;
    crate::audit::record_by(
        &state.audit,
        &caller,
        "read_patient_vitals",
        json!({"patient_id": patient_id, "since": since, "until": until}),
    )
    .await;
    // Within the history queries' slots and time limit: it scans the same
    // archive.
    let (readings, truncated) = super::query::bounded_read(
        &state,
        patient_history::patient_readings(
            &state.history,
            &patient_id,
            caller.hospitals.as_deref(),
            since,
            until,
            MAX_READINGS,
        ),
    )
    .await?;
    Ok(Json(PatientVitals {
        patient_id,
        since,
        until,
        readings: readings.into_iter().map(Into::into).collect(),
        truncated,
    }))
}

/// `[since, until)` must be a non-empty range of at most `max_span_ms`.
pub fn check_range(since: i64, until: i64, max_span_ms: i64) -> Result<(), ApiError> {
    if since >= until {
        return Err(ApiError::bad_request(format!(
            "since ({since}) must be before until ({until})"
        )));
    }
    if until.saturating_sub(since) > max_span_ms {
        return Err(ApiError::bad_request(format!(
            "the range is {} ms long; the limit is {max_span_ms} ms",
            until.saturating_sub(since)
        )));
    }
    Ok(())
}
