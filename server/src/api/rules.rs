//! Rules over REST. A rule is compiled before it is stored, so a rule that
//! cannot run is refused with the position of the problem and never
//! reaches the engine; so is one over a budget of `[limits]` (window
//! length, panes, cooldown, lateness, field lengths, SQL size and depth).
//! `PUT` makes a new version (old versions stay); `DELETE` deactivates.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use catalog::rules::{Rule, RuleDraft, RuleVersion};
use serde_json::{json, Value};
use sql_rules::{CompiledRule, RuleError, RuleSpec};

use super::error::ApiError;
use super::SharedState;
use crate::pipeline::Input;

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// The engine's view of a stored rule version.
pub fn rule_spec(version: &RuleVersion, compiled: CompiledRule) -> RuleSpec {
    version.spec(compiled)
}

fn rule_json(state: &SharedState, rule: &Rule) -> Value {
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
    let now = chrono::Utc::now().timestamp_millis();
    // What an operator needs first: is it running, and is it healthy?
    let run_state = match &health {
        _ if !rule.active => "inactive",
        Some(h) if h.failing(now) => "failing",
        _ => "active",
    };
    let window = compile(state, &rule.current.sql)
        .ok()
        .and_then(|c| c.window())
        .map(|w| w.describe());
    json!({
        "id": rule.id,
        "version": rule.current.version,
        "name": rule.current.name,
        "sql": rule.current.sql,
        "severity": rule.current.severity,
        "cooldown_seconds": rule.current.cooldown_seconds,
        "allowed_lateness_ms": rule.current.allowed_lateness_ms,
        "description": rule.current.description,
        "keep_duplicates": rule.current.keep_duplicates,
        "escalation": rule.current.escalation,
        "active": rule.active,
        "window": window,
        "versions": rule.versions,
        "created_at_ms": rule.created_at_ms,
        "updated_at_ms": rule.updated_at_ms,
        "stats": stats,
        "state": run_state,
        "health": health,
    })
}

/// Compiles rule SQL within the configured `[limits]`.
pub fn compile(state: &SharedState, sql: &str) -> Result<CompiledRule, RuleError> {
    state
        .compiler
        .compile_within(sql, &state.config.limits.rules())
}

/// A submitted rule: its fields within `[limits]`, its SQL compiled, and
/// its escalation column one of the rule's output columns.
fn parse_draft(state: &SharedState, body: Value) -> Result<(RuleDraft, CompiledRule), ApiError> {
    let draft: RuleDraft = serde_json::from_value(body)
        .map_err(|e| ApiError::bad_request(format!("invalid rule: {e}")))?;
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

pub async fn list(State(state): State<SharedState>) -> Json<Value> {
    let rules: Vec<Value> = state
        .rules
        .list()
        .await
        .iter()
        .map(|r| rule_json(&state, r))
        .collect();
    Json(json!({"rules": rules}))
}

pub async fn get_one(
    State(state): State<SharedState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let rule = state
        .rules
        .get(&id)
        .await
        .ok_or_else(|| ApiError::not_found(format!("no rule with id '{id}'")))?;
    let mut body = rule_json(&state, &rule);
    let mut versions = vec![];
    for v in &rule.versions {
        if let Some(version) = state.rules.version(&id, *v).await {
            versions.push(version);
        }
    }
    body["history"] = serde_json::to_value(versions).unwrap_or(Value::Null);
    Ok(Json(body))
}

pub async fn validate(
    State(state): State<SharedState>,
    Json(body): Json<Value>,
) -> Result<Json<Value>, ApiError> {
    let sql = body
        .get("sql")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::bad_request("expected {\"sql\": \"SELECT …\"}"))?;
    let compiled = compile(&state, sql)?;
    let columns: Vec<Value> = compiled
        .output_schema
        .fields()
        .iter()
        .map(|f| json!({"name": f.name(), "type": f.data_type().to_string()}))
        .collect();
    Ok(Json(json!({
        "valid": true,
        "kind": if compiled.window().is_some() { "windowed" } else { "per_event" },
        "window": compiled.window().map(|w| w.describe()),
        "columns": columns,
    })))
}

pub async fn create(
    State(state): State<SharedState>,
    Json(body): Json<Value>,
) -> Result<impl IntoResponse, ApiError> {
    let (draft, compiled) = parse_draft(&state, body)?;
    let _guard = state.rule_writes.lock().await;
    let rule = state.rules.create(draft, now_ms()).await?;
    crate::audit::record(
        &state.audit,
        "rule_created",
        json!({"rule_id": rule.id, "version": rule.current.version, "name": rule.current.name}),
    )
    .await;
    state
        .pipeline
        .send_async(Input::Upsert(Box::new(rule_spec(&rule.current, compiled))))
        .await
        .map_err(|e| ApiError::unavailable(e.to_string()))?;
    Ok((StatusCode::CREATED, Json(rule_json(&state, &rule))))
}

pub async fn update(
    State(state): State<SharedState>,
    Path(id): Path<String>,
    Json(body): Json<Value>,
) -> Result<Json<Value>, ApiError> {
    let (draft, compiled) = parse_draft(&state, body)?;
    let _guard = state.rule_writes.lock().await;
    let mut rule = state.rules.update(&id, draft, now_ms()).await?;
    crate::audit::record(
        &state.audit,
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
    Ok(Json(rule_json(&state, &rule)))
}

pub async fn deactivate(
    State(state): State<SharedState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let _guard = state.rule_writes.lock().await;
    let rule = state.rules.set_active(&id, false, now_ms()).await?;
    crate::audit::record(
        &state.audit,
        "rule_deactivated",
        json!({"rule_id": rule.id, "version": rule.current.version}),
    )
    .await;
    state
        .pipeline
        .send_async(Input::Remove(id))
        .await
        .map_err(|e| ApiError::unavailable(e.to_string()))?;
    Ok(Json(rule_json(&state, &rule)))
}
