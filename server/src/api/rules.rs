//! Rules over REST. A rule is compiled before it is stored, so a rule that
//! cannot run is refused with the position of the problem and never
//! reaches the engine; so is one over a budget of `[limits]` (window
//! length, panes, cooldown, lateness, field lengths, SQL size and depth).
//! `PUT` makes a new version (old versions stay); `DELETE` deactivates.

use crate::auth::{need, Caller};
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use catalog::rules::{Rule, RuleDraft, RuleVersion};
use serde_json::{json, Value};
use sql_rules::{CompiledRule, RuleError, RuleSpec};

use super::error::ApiError;
use super::types::{
    Column, ErrorBody, RuleDetail, RuleKind, RuleList, RuleRequest, RuleValidation, RuleView,
    ValidateRequest,
};
use super::SharedState;
use crate::pipeline::Input;

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// The engine's view of a stored rule version.
pub fn rule_spec(version: &RuleVersion, compiled: CompiledRule) -> RuleSpec {
    version.spec(compiled)
}

/// The rule with what the engine knows of it now.
fn rule_view(state: &SharedState, rule: Rule) -> RuleView {
    let stats = state
        .pipeline
        .rule_stats
        .lock()
        .ok()
        .and_then(|s| s.get(&rule.id).cloned());
    let health = state
        .pipeline
        .rule_health
        .lock()
        .ok()
        .and_then(|h| h.get(&rule.id).cloned());
    let window = compile(state, &rule.current.sql)
        .ok()
        .and_then(|c| c.window())
        .map(|w| w.describe());
    RuleView::new(rule, stats, health, window, now_ms())
}

/// Compiles rule SQL within the configured `[limits]`.
pub fn compile(state: &SharedState, sql: &str) -> Result<CompiledRule, RuleError> {
    state
        .compiler
        .compile_within(sql, &state.config.limits.rules())
}

/// A submitted rule: its fields within `[limits]`, its SQL compiled, and
/// its escalation column one of the rule's output columns.
fn parse_draft(
    state: &SharedState,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<(RuleDraft, CompiledRule), ApiError> {
    // Read as JSON first, then as a rule, so that a JSON rule with a wrong
    // field is a 400 naming the field (axum's typed extractor would say 422).
    let Json(body) = body?;
    let draft: RuleDraft = serde_json::from_value::<RuleRequest>(body)
        .map_err(|e| ApiError::bad_request(format!("invalid rule: {e}")))?
        .into();
    draft.validate_within(&state.config.limits.drafts())?;
    let compiled = compile(state, &draft.sql)?;
    if let Some(escalation) = &draft.escalation {
        let columns: Vec<&str> = compiled
            .output_schema
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect();
        if !columns.contains(&escalation.column.as_str()) {
            return Err(ApiError::bad_request(format!(
                "the escalation column '{}' is not an output column of the rule; it has {}",
                escalation.column,
                columns.join(", ")
            )));
        }
    }
    Ok((draft, compiled))
}

/// Every rule, active or not.
#[utoipa::path(
    get,
    path = "/api/rules",
    operation_id = "list_rules",
    tag = "rules",
    responses((status = 200, description = "Every stored rule.", body = RuleList))
)]
pub async fn list(
    State(state): State<SharedState>,
    _caller: Caller<need::Viewer>,
) -> Json<RuleList> {
    let rules = state
        .rules
        .list()
        .await
        .into_iter()
        .map(|r| rule_view(&state, r))
        .collect();
    Json(RuleList { rules })
}

/// A rule and every stored version of it.
#[utoipa::path(
    get,
    path = "/api/rules/{id}",
    operation_id = "get_rule",
    tag = "rules",
    params(("id" = String, Path, description = "The rule's id.")),
    responses(
        (status = 200, description = "The rule, with `history`.", body = RuleDetail),
        (status = 404, description = "No rule with this id.", body = ErrorBody),
    )
)]
pub async fn get_one(
    State(state): State<SharedState>,
    _caller: Caller<need::Viewer>,
    Path(id): Path<String>,
) -> Result<Json<RuleDetail>, ApiError> {
    let rule = state
        .rules
        .get(&id)
        .await
        .ok_or_else(|| ApiError::not_found(format!("no rule with id '{id}'")))?;
    let mut history = vec![];
    for v in &rule.versions {
        if let Some(version) = state.rules.version(&id, *v).await {
            history.push(version.into());
        }
    }
    let rule = rule_view(&state, rule);
    Ok(Json(RuleDetail { rule, history }))
}

/// Compiles rule SQL without storing it.
#[utoipa::path(
    post,
    path = "/api/rules/validate",
    operation_id = "validate_rule",
    tag = "rules",
    request_body = ValidateRequest,
    responses(
        (status = 200, description = "The SQL compiles within the limits.", body = RuleValidation),
        (status = 400, description = "Not JSON, no `sql`, or SQL that does not compile or is over a limit: the message, with the line and column.", body = ErrorBody),
        (status = 415, description = "Not sent as `application/json`.", body = ErrorBody),
    )
)]
pub async fn validate(
    State(state): State<SharedState>,
    _caller: Caller<need::Author>,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<Json<RuleValidation>, ApiError> {
    let Json(body) = body?;
    let ValidateRequest { sql } = serde_json::from_value(body)
        .map_err(|_| ApiError::bad_request("expected {\"sql\": \"SELECT …\"}"))?;
    let compiled = compile(&state, &sql)?;
    let window = compiled.window();
    Ok(Json(RuleValidation {
        valid: true,
        kind: if window.is_some() {
            RuleKind::Windowed
        } else {
            RuleKind::PerEvent
        },
        window: window.map(|w| w.describe()),
        columns: Column::of(&compiled.output_schema),
    }))
}

/// Stores a new rule (version 1) and starts running it.
#[utoipa::path(
    post,
    path = "/api/rules",
    operation_id = "create_rule",
    tag = "rules",
    request_body = RuleRequest,
    responses(
        (status = 201, description = "Stored and running.", body = RuleView),
        (status = 400, description = "Refused: not JSON, a field, the SQL (with its line and column), or a `[limits]` budget.", body = ErrorBody),
        (status = 415, description = "Not sent as `application/json`.", body = ErrorBody),
        (status = 500, description = "The rule store failed.", body = ErrorBody),
        (status = 503, description = "The engine is shutting down.", body = ErrorBody),
    )
)]
pub async fn create(
    State(state): State<SharedState>,
    caller: Caller<need::Author>,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<(StatusCode, Json<RuleView>), ApiError> {
    let (draft, compiled) = parse_draft(&state, body)?;
    let _guard = state.rule_writes.lock().await;
    let rule = state.rules.create(draft, now_ms()).await?;
    crate::audit::record_by(
        &state.audit,
        &caller,
        "rule_created",
        json!({"rule_id": rule.id, "version": rule.current.version, "name": rule.current.name}),
    )
    .await;
    state
        .pipeline
        .send_async(Input::Upsert(Box::new(rule_spec(&rule.current, compiled))))
        .await
        .map_err(|e| ApiError::unavailable(e.to_string()))?;
    Ok((StatusCode::CREATED, Json(rule_view(&state, rule))))
}

/// Stores a new version of a rule, (re)activates it and runs it.
#[utoipa::path(
    put,
    path = "/api/rules/{id}",
    operation_id = "update_rule",
    tag = "rules",
    params(("id" = String, Path, description = "The rule's id.")),
    request_body = RuleRequest,
    responses(
        (status = 200, description = "The new version, running.", body = RuleView),
        (status = 400, description = "Refused: not JSON, a field, the SQL (with its line and column), or a `[limits]` budget.", body = ErrorBody),
        (status = 415, description = "Not sent as `application/json`.", body = ErrorBody),
        (status = 404, description = "No rule with this id.", body = ErrorBody),
        (status = 500, description = "The rule store failed.", body = ErrorBody),
        (status = 503, description = "The engine is shutting down.", body = ErrorBody),
    )
)]
pub async fn update(
    State(state): State<SharedState>,
    caller: Caller<need::Author>,
    Path(id): Path<String>,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<Json<RuleView>, ApiError> {
    let (draft, compiled) = parse_draft(&state, body)?;
    let _guard = state.rule_writes.lock().await;
    let mut rule = state.rules.update(&id, draft, now_ms()).await?;
    crate::audit::record_by(
        &state.audit,
        &caller,
        "rule_updated",
        json!({"rule_id": rule.id, "version": rule.current.version}),
    )
    .await;
    if !rule.active {
        rule = state.rules.set_active(&id, true, now_ms()).await?;
    }
    state
        .pipeline
        .send_async(Input::Upsert(Box::new(rule_spec(&rule.current, compiled))))
        .await
        .map_err(|e| ApiError::unavailable(e.to_string()))?;
    Ok(Json(rule_view(&state, rule)))
}

/// Deactivates a rule: the engine stops running it; its versions stay.
#[utoipa::path(
    delete,
    path = "/api/rules/{id}",
    operation_id = "deactivate_rule",
    tag = "rules",
    params(("id" = String, Path, description = "The rule's id.")),
    responses(
        (status = 200, description = "Deactivated.", body = RuleView),
        (status = 404, description = "No rule with this id.", body = ErrorBody),
        (status = 500, description = "The rule store failed.", body = ErrorBody),
        (status = 503, description = "The engine is shutting down.", body = ErrorBody),
    )
)]
pub async fn deactivate(
    State(state): State<SharedState>,
    caller: Caller<need::Author>,
    Path(id): Path<String>,
) -> Result<Json<RuleView>, ApiError> {
    let _guard = state.rule_writes.lock().await;
    let rule = state.rules.set_active(&id, false, now_ms()).await?;
    crate::audit::record_by(
        &state.audit,
        &caller,
        "rule_deactivated",
        json!({"rule_id": rule.id, "version": rule.current.version}),
    )
    .await;
    state
        .pipeline
        .send_async(Input::Remove(id))
        .await
        .map_err(|e| ApiError::unavailable(e.to_string()))?;
    Ok(Json(rule_view(&state, rule)))
}
