//! `POST /api/replay`: a rule version (or a draft's SQL) over archived
//! events, with the same engine as live, and optionally an audit that
//! diffs the result against the alerts actually recorded; `GET` and
//! `DELETE /api/replay/{job}` follow and cancel a background replay.
//!
//! Only HTTP lives here: the request's shape, status codes and errors. What
//! a replay does is [`crate::replay`].

use crate::auth::{need, Caller};
use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::error::ApiError;
use super::types::{ErrorBody, ReplayJobView, ReplayReportView, ReplayRequest};
use super::SharedState;
use crate::replay::jobs::ReplayJob;
use crate::replay::{self, Progress, Replay, ReplayError, RuleSource};

/// The replay asked for; fails if it names both or neither a rule and a
/// draft.
fn into_replay(req: ReplayRequest, budgets: sql_rules::RuleBudgets) -> Result<Replay, ReplayError> {
    Ok(Replay {
        budgets,
        source: RuleSource::new(req.rule_id, req.version, req.sql, req.hospital_id)?,
        cooldown_seconds: req.cooldown_seconds,
        from_ms: req.from_ms,
        to_ms: req.to_ms,
        audit: req.audit,
    })
}

impl From<ReplayError> for ApiError {
    fn from(e: ReplayError) -> Self {
        use ReplayError as E;
        match e {
            E::Compile(e) => e.into(),
            E::RuleNotFound { .. } | E::VersionNotFound { .. } => Self::not_found(e.to_string()),
            E::RuleAndDraft
            | E::NoRule
            | E::StoredRuleScope
            | E::RuleRefused(_)
            | E::Cancelled { .. }
            | E::Suspended(_) => Self::bad_request(e.to_string()),
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

/// Replays a rule version or a draft over archived events, in the request
/// or (`"async": true`) in the background.
#[utoipa::path(
    post,
    path = "/api/replay",
    operation_id = "replay",
    tag = "replay",
    request_body = ReplayRequest,
    responses(
        (status = 200, description = "The replay's alerts, and the audit when asked for.", body = ReplayReportView),
        (status = 202, description = "`\"async\": true`: the job, started; follow it with `GET /api/replay/{job}`.", body = ReplayJobView),
        (status = 400, description = "An invalid request: `from_ms` not before `to_ms`, both or neither of `rule_id` and `sql`, `hospital_id` with `rule_id`, SQL that does not compile (with its line and column).", body = ErrorBody),
        (status = 404, description = "No such rule or version.", body = ErrorBody),
        (status = 500, description = "The archive could not be read, or the engine failed.", body = ErrorBody),
        (status = 503, description = "`max_concurrent_replays` replays are already running.", body = ErrorBody),
    )
)]
pub async fn replay(
    State(state): State<SharedState>,
    caller: Caller<need::AuthorOrAuditor>,
    body: Result<Json<ReplayRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(req) =
        body.map_err(|e| ApiError::bad_request(format!("invalid replay request: {e}")))?;
    if req.from_ms >= req.to_ms {
        return Err(ApiError::bad_request("from_ms must be before to_ms"));
    }
    if caller.hospitals.is_some() {
        // Replay reads every hospital's archived events.
        return Err(ApiError::forbidden(
            "replay reads every hospital's events; a caller limited to hospitals cannot run one",
        ));
    }
    crate::audit::record_by(
        &state.audit,
        &caller,
        "replay",
        serde_json::json!({
            "rule_id": req.rule_id, "version": req.version, "sql": req.sql,
            "hospital_id": req.hospital_id,
            "from_ms": req.from_ms, "to_ms": req.to_ms, "audit": req.audit,
        }),
    )
    .await;
    let slot = state
        .replays
        .slot()
        .map_err(|e| ApiError::unavailable(e.to_string()))?;
    if !req.background {
        let replay = into_replay(req, state.config.limits.budgets())?;
        let report = run(&state, &replay, &Progress::default()).await?;
        drop(slot);
        return Ok(Json(ReplayReportView::from(report)).into_response());
    }
    let (from_ms, to_ms) = (req.from_ms, req.to_ms);
    let now_ms = chrono::Utc::now().timestamp_millis();
    let task_state = Arc::clone(&state);
    let (id, job) =
        state
            .replays
            .start(slot, &caller.subject, from_ms, to_ms, now_ms, move |job| {
                // A request naming both or neither a rule and a draft is accepted
                // and fails as a job, as it always has.
                let budgets = task_state.config.limits.budgets();
                async move { run(&task_state, &into_replay(req, budgets)?, &job.progress).await }
            });
    Ok((
        StatusCode::ACCEPTED,
        Json(ReplayJobView::from(job.view(&id))),
    )
        .into_response())
}

/// The job, if this caller started it (or is an admin): a job's result is
/// every hospital's alerts over its range.
fn find_job(
    state: &SharedState,
    caller: &crate::auth::Principal,
    id: &str,
) -> Result<Arc<ReplayJob>, ApiError> {
    state
        .replays
        .get(id)
        .filter(|job| {
            job.owner == caller.subject || caller.roles.contains(&crate::auth::Role::Admin)
        })
        .ok_or_else(|| ApiError::not_found(format!("no replay job '{id}'")))
}

/// `GET /api/replay/{job}`: progress, then the result.
#[utoipa::path(
    get,
    path = "/api/replay/{job}",
    operation_id = "replay_status",
    tag = "replay",
    params(("job" = String, Path, description = "The job id from `POST /api/replay`.")),
    responses(
        (status = 200, description = "The job now.", body = ReplayJobView),
        (status = 404, description = "No such job (finished jobs are forgotten past `max_finished_replays`).", body = ErrorBody),
    )
)]
pub async fn status(
    State(state): State<SharedState>,
    caller: Caller<need::AuthorOrAuditor>,
    Path(id): Path<String>,
) -> Result<Json<ReplayJobView>, ApiError> {
    let job = find_job(&state, &caller, &id)?;
    crate::audit::record_by(
        &state.audit,
        &caller,
        "read_replay_job",
        serde_json::json!({"job": id}),
    )
    .await;
    Ok(Json(job.view(&id).into()))
}

/// `DELETE /api/replay/{job}`: stop a running replay.
#[utoipa::path(
    delete,
    path = "/api/replay/{job}",
    operation_id = "cancel_replay",
    tag = "replay",
    params(("job" = String, Path, description = "The job id from `POST /api/replay`.")),
    responses(
        (status = 200, description = "Asked to stop: the job, `cancelling` until it has.", body = ReplayJobView),
        (status = 404, description = "No such job.", body = ErrorBody),
    )
)]
pub async fn cancel(
    State(state): State<SharedState>,
    caller: Caller<need::AuthorOrAuditor>,
    Path(id): Path<String>,
) -> Result<Json<ReplayJobView>, ApiError> {
    let job = find_job(&state, &caller, &id)?;
    job.cancel();
    Ok(Json(job.view(&id).into()))
}
