//! `POST /api/ingest`: newline-delimited JSON VitalEvents into the pipeline.

use crate::auth::{need, Caller};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;

use super::error::ApiError;
use super::types::{ErrorBody, IngestResultView};
use super::SharedState;
use crate::source::ingest::ingest_ndjson;

/// Largest body `POST /api/ingest` reads: batches of events are larger than
/// axum's 2 MB default.
pub const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

#[utoipa::path(
    post,
    path = "/api/ingest",
    operation_id = "ingest",
    tag = "ingest",
    request_body(
        content = String,
        content_type = "application/x-ndjson",
        description = "One VitalEvent JSON object per line (`hospital_id`, `patient_id`, `timestamp_unix_ms`, `source_device`, `sequence_number`, and the readings, e.g. `heart_rate_bpm`, `spo2_pct`, `respiration_rate`, `systolic_bp_mmhg`, `diastolic_bp_mmhg`); at most 64 MiB. A line that cannot be used becomes a dead letter, not an error."
    ),
    responses(
        (status = 202, description = "Every line was handed to the pipeline (archive, engine, dead letters).", body = IngestResultView),
        (status = 413, description = "The body is over 64 MiB.", body = ErrorBody),
        (status = 503, description = "The pipeline is shutting down.", body = ErrorBody),
    )
)]
pub async fn ingest(
    State(state): State<SharedState>,
    caller: Caller<need::Ingest>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<IngestResultView>), ApiError> {
    let body = body?;
    let result = ingest_ndjson(
        &body,
        "http:/api/ingest",
        &state.intake,
        state.config.pipeline.max_batch_rows,
        // A sender limited to hospitals: others' events are dead letters.
        caller.hospitals.as_deref(),
    )
    .await
    .map_err(|e| ApiError::unavailable(e.to_string()))?;
    Ok((StatusCode::ACCEPTED, Json(result.into())))
}
