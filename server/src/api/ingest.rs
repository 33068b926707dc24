//! `POST /api/ingest`: newline-delimited JSON VitalEvents into the pipeline.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;

use super::error::ApiError;
use super::SharedState;
use crate::source::ingest::ingest_ndjson;

pub async fn ingest(
    State(state): State<SharedState>,
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    let result = ingest_ndjson(
        &body,
        "http:/api/ingest",
        &state.pipeline,
        &state.dead_letters,
        &state.archive,
        state.config.pipeline.max_batch_rows,
        crate::source::decode::EventTimeBounds::from_config(&state.config),
    )
    .await
    .map_err(|e| ApiError::unavailable(e.to_string()))?;
    Ok((StatusCode::ACCEPTED, Json(result)))
}
