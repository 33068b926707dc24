//! `POST /api/replay`: a rule version (or a draft's SQL) over archived
//! events, with the same engine as live, and optionally an audit that
//! diffs the result against the alerts actually recorded; `GET` and
//! `DELETE /api/replay/{job}` follow and cancel a background replay.
//!
//! Only HTTP lives here: the request's shape, status codes and errors. What
//! a replay does is [`crate::replay`].

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::error::ApiError;
use super::SharedState;
use crate::replay::jobs::{JobView, ReplayJob};
use crate::replay::{self, Progress, Replay, ReplayError, RuleSource};

#[derive(Debug, serde::Deserialize)]
pub struct ReplayRequest {
    pub rule_id: Option<String>,
    pub version: Option<u32>,
    /// A draft never activated (backtest), instead of `rule_id`.
    pub sql: Option<String>,
    #[serde(default)]
    pub cooldown_seconds: Option<u64>,
    pub from_ms: i64,
    pub to_ms: i64,
    #[serde(default)]
    pub audit: bool,
    /// Run in the background: answer `202 {"job"}` at once; follow it
    /// with `GET /api/replay/{job}` and cancel with `DELETE`.
    #[serde(default, rename = "async")]
    pub background: bool,
}

impl ReplayRequest {
    /// The replay asked for; fails if it names both or neither a rule and a
    /// draft.
    fn into_replay(self) -> Result<Replay, ReplayError> {
        Ok(Replay {
            source: RuleSource::new(self.rule_id, self.version, self.sql)?,
            cooldown_seconds: self.cooldown_seconds,
            from_ms: self.from_ms,
            to_ms: self.to_ms,
            audit: self.audit,
        })
    }
}

impl From<ReplayError> for ApiError {
    fn from(e: ReplayError) -> Self {
        use ReplayError as E;
        match e {
            E::Compile(e) => e.into(),
            E::RuleNotFound { .. } | E::VersionNotFound { .. } => Self::not_found(e.to_string()),
            E::RuleAndDraft | E::NoRule | E::RuleRefused(_) | E::Cancelled { .. } => {
                Self::bad_request(e.to_string())
            }
            E::Archive(_) | E::Engine(_) => Self::internal(e.to_string()),
        }
    }
}

async fn run(
    state: &SharedState,
    replay: &Replay,
    progress: &Progress,
) -> Result<replay::ReplayReport, ReplayError> {
    replay::run(
        &state.rules,
        &state.compiler,
        &state.history,
        replay,
        progress,
    )
    .await
}

pub async fn replay(
    State(state): State<SharedState>,
    body: Result<Json<ReplayRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(req) =
        body.map_err(|e| ApiError::bad_request(format!("invalid replay request: {e}")))?;
    if req.from_ms >= req.to_ms {
        return Err(ApiError::bad_request("from_ms must be before to_ms"));
    }
    let slot = state
        .replays
        .slot()
        .map_err(|e| ApiError::unavailable(e.to_string()))?;
    if !req.background {
        let replay = req.into_replay()?;
        let report = run(&state, &replay, &Progress::default()).await?;
        drop(slot);
        return Ok(Json(report).into_response());
    }
    let (from_ms, to_ms) = (req.from_ms, req.to_ms);
    let now_ms = chrono::Utc::now().timestamp_millis();
    let task_state = Arc::clone(&state);
    let (id, job) = state
        .replays
        .start(slot, from_ms, to_ms, now_ms, move |job| {
            // A request naming both or neither a rule and a draft is accepted
            // and fails as a job, as it always has.
            async move { run(&task_state, &req.into_replay()?, &job.progress).await }
        });
    Ok((StatusCode::ACCEPTED, Json(job.view(&id))).into_response())
}

fn find_job(state: &SharedState, id: &str) -> Result<Arc<ReplayJob>, ApiError> {
    state
        .replays
        .get(id)
        .ok_or_else(|| ApiError::not_found(format!("no replay job '{id}'")))
}

/// `GET /api/replay/{job}`: progress, then the result.
pub async fn status(
    State(state): State<SharedState>,
    Path(id): Path<String>,
) -> Result<Json<JobView>, ApiError> {
    let job = find_job(&state, &id)?;
    Ok(Json(job.view(&id)))
}

/// `DELETE /api/replay/{job}`: stop a running replay.
pub async fn cancel(
    State(state): State<SharedState>,
    Path(id): Path<String>,
) -> Result<Json<JobView>, ApiError> {
    let job = find_job(&state, &id)?;
    job.cancel();
    Ok(Json(job.view(&id)))
}
