//! Rules over REST. A rule is compiled before it is stored, so a rule that
//! cannot run is refused with the position of the problem and never
//! reaches the engine; so is one over a budget of `[limits]` (window
//! length, panes, cooldown, lateness, field lengths, SQL size and depth).
//! `PUT` makes a new version (old versions stay); `DELETE` deactivates.
//!
//! A rule may be scoped to a hospital (`hospital_id`: it sees only that
//! hospital's events) or global (every hospital's). A caller limited to
//! hospitals sees their hospitals' rules and the global ones, and changes
//! only their hospitals' (another hospital's rule is a 404 to them, as if
//! absent); a global rule is made and changed by unlimited admins only.

use crate::auth::{need, Caller, Principal, Role};
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use catalog::rules::{Rule, RuleDraft, RuleVersion};
use serde_json::{json, Value};
use sql_rules::{CompiledRule, RuleError, RuleSpec};

use super::error::ApiError;
use super::types::{
    AlertRate, AlertRateParams, Column, DeactivateParams, ErrorBody, RuleDetail, RuleKind,
    RuleList, RuleRequest, RuleValidation, RuleView, ValidateRequest,
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
    let window = compile(state, &rule.current.sql, rule.current.hospital())
        .ok()
        .and_then(|c| c.window())
        .map(|w| w.describe());
    RuleView::new(rule, stats, health, window, now_ms())
}

/// [`rule_view`] as `caller` may see it: a global rule's counters count
/// every hospital's events, so a caller limited to hospitals gets its state
/// but not its counters.
fn rule_view_for(state: &SharedState, caller: &Principal, rule: Rule) -> RuleView {
    let mut view = rule_view(state, rule);
    if caller.hospitals.is_some() && view.hospital_id.is_none() {
        view.stats = None;
    }
    view
}

/// Compiles rule SQL within the configured `[limits]`, scoped to
/// `hospital` (`None`: a global rule).
pub fn compile(
    state: &SharedState,
    sql: &str,
    hospital: Option<&str>,
) -> Result<CompiledRule, RuleError> {
    state
        .compiler
        .compile_within_scoped(sql, hospital, &state.config.limits.rules())
}

/// Whether `caller` may see a rule (version) of `hospital`: every caller
/// sees global rules, which run over their hospitals' events too.
fn may_see(caller: &Principal, hospital: Option<&str>) -> bool {
    match (&caller.hospitals, hospital) {
        (None, _) | (Some(_), None) => true,
        (Some(mine), Some(h)) => mine.iter().any(|m| m == h),
    }
}

/// Whether `caller` may make, change or deactivate a rule of `hospital`.
/// The caller already holds the author role (`Caller<need::Author>`).
fn may_change(caller: &Principal, hospital: Option<&str>) -> Result<(), ApiError> {
    match (&caller.hospitals, hospital) {
        (_, None) if !caller.may(Role::Admin) => Err(ApiError::forbidden(
            "a rule for every hospital needs the admin role; give hospital_id",
        )),
        (Some(mine), None) => Err(ApiError::forbidden(format!(
            "you are limited to hospitals {mine:?}: a rule for every hospital is beyond them; \
             give one of them as hospital_id"
        ))),
        (Some(mine), Some(h)) if !mine.iter().any(|m| m == h) => Err(ApiError::forbidden(format!(
            "you are limited to hospitals {mine:?}: a rule you make or change must have \
                 one of them as hospital_id"
        ))),
        _ => Ok(()),
    }
}

/// Rule `id` if `caller` may change it: 404 if absent or of a hospital
/// they cannot see, 403 if they see it but may not change it (a global
/// rule, unless they are an unlimited admin).
async fn changeable(state: &SharedState, caller: &Principal, id: &str) -> Result<Rule, ApiError> {
    let rule = state
        .rules
        .get(id)
        .await
        .filter(|r| may_see(caller, r.current.hospital()))
        .ok_or_else(|| catalog::CatalogError::RuleNotFound {
            rule_id: id.to_string(),
        })?;
    may_change(caller, rule.current.hospital())?;
    Ok(rule)
}

/// A submitted rule, read as JSON first, then as a rule, so that a JSON
/// rule with a wrong field is a 400 naming the field (axum's typed
/// extractor would say 422).
fn read_draft(body: Result<Json<Value>, JsonRejection>) -> Result<RuleDraft, ApiError> {
    let Json(body) = body?;
    Ok(serde_json::from_value::<RuleRequest>(body)
        .map_err(|e| ApiError::bad_request(format!("invalid rule: {e}")))?
        .into())
}

/// Where several instances share the data directory: a 409 when no live
/// one would run `compiled` (see [`crate::instances::unplaced`]).
async fn placed(state: &SharedState, compiled: &CompiledRule) -> Result<(), ApiError> {
    match crate::instances::unplaced(
        &state.config,
        state.store.as_ref(),
        &state.store_prefix,
        compiled.keyed_by_patient,
    )
    .await
    {
        None => Ok(()),
        Some(why) => Err(ApiError::conflict(why)),
    }
}

/// Hands a stored rule's current version to the engine (which replaces
/// any version it runs).
async fn run(state: &SharedState, rule: &Rule, compiled: CompiledRule) -> Result<(), ApiError> {
    state
        .pipeline
        .send_async(Input::Upsert(Box::new(rule_spec(&rule.current, compiled))))
        .await
        .map_err(|e| ApiError::unavailable(e.to_string()))
}

/// A submitted rule: its fields within `[limits]`, its SQL compiled (with
/// its scope), and its escalation column one of the rule's output columns.
pub fn compile_draft(state: &SharedState, draft: &RuleDraft) -> Result<CompiledRule, ApiError> {
    draft.validate_within(&state.config.limits.drafts())?;
    let compiled = compile(state, &draft.sql, draft.hospital_id.as_deref())?;
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
    Ok(compiled)
}

/// Every rule, active or not (for a caller limited to hospitals: their
/// hospitals' and the global ones).
#[utoipa::path(
    get,
    path = "/api/rules",
    operation_id = "list_rules",
    tag = "rules",
    responses((status = 200, description = "Every stored rule the caller may see.", body = RuleList))
)]
pub async fn list(
    State(state): State<SharedState>,
    caller: Caller<need::Viewer>,
) -> Json<RuleList> {
    let rules = state
        .rules
        .list()
        .await
        .into_iter()
        .filter(|r| may_see(&caller, r.current.hospital()))
        .map(|r| rule_view_for(&state, &caller, r))
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
        (status = 404, description = "No rule with this id (or one of a hospital the caller is not limited to).", body = ErrorBody),
    )
)]
pub async fn get_one(
    State(state): State<SharedState>,
    caller: Caller<need::Viewer>,
    Path(id): Path<String>,
) -> Result<Json<RuleDetail>, ApiError> {
    let rule = state
        .rules
        .get(&id)
        .await
        .filter(|r| may_see(&caller, r.current.hospital()))
        .ok_or_else(|| ApiError::not_found(format!("no rule with id '{id}'")))?;
    let mut history = vec![];
    for v in &rule.versions {
        // An edit may have moved the rule from another hospital: its
        // versions there are that hospital's.
        if let Some(version) = state
            .rules
            .version(&id, *v)
            .await
            .filter(|v| may_see(&caller, v.hospital()))
        {
            history.push(version.into());
        }
    }
    let rule = rule_view_for(&state, &caller, rule);
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
    let compiled = compile(&state, &sql, None)?;
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
        (status = 403, description = "A global rule (no `hospital_id`) without the admin role, or a rule of a hospital the caller is not limited to.", body = ErrorBody),
        (status = 409, description = "Several instances share the data directory and none that is live would run this rule (a rule not grouped by `patient_id` needs a `global_rules` instance).", body = ErrorBody),
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
    let draft = read_draft(body)?;
    may_change(&caller, draft.hospital_id.as_deref())?;
    let compiled = compile_draft(&state, &draft)?;
    placed(&state, &compiled).await?;
    let _guard = state.rule_writes.lock().await;
    let rule = store_and_run(&state, &caller, draft, compiled).await?;
    Ok((StatusCode::CREATED, Json(rule_view(&state, rule))))
}

/// Stores a new rule, records it in the audit log and hands it to the
/// engine. The caller holds `state.rule_writes`, so versions and engine
/// updates stay in order.
pub(crate) async fn store_and_run(
    state: &SharedState,
    caller: &Principal,
    draft: RuleDraft,
    compiled: CompiledRule,
) -> Result<Rule, ApiError> {
    let rule = state.rules.create(draft, now_ms()).await?;
    crate::audit::record_by(
        &state.audit,
        caller,
        "rule_created",
        json!({"rule_id": rule.id, "version": rule.current.version, "name": rule.current.name,
               "hospital_id": rule.current.hospital_id}),
    )
    .await;
    run(state, &rule, compiled).await?;
    Ok(rule)
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
        (status = 403, description = "The rule, or the new version, is global (no `hospital_id`) and the caller no unlimited admin, or the new version is of a hospital the caller is not limited to.", body = ErrorBody),
        (status = 409, description = "Several instances share the data directory and none that is live would run this version (a rule not grouped by `patient_id` needs a `global_rules` instance).", body = ErrorBody),
        (status = 415, description = "Not sent as `application/json`.", body = ErrorBody),
        (status = 404, description = "No rule with this id (or one of a hospital the caller is not limited to).", body = ErrorBody),
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
    let draft = read_draft(body)?;
    changeable(&state, &caller, &id).await?;
    may_change(&caller, draft.hospital_id.as_deref())?;
    let compiled = compile_draft(&state, &draft)?;
    placed(&state, &compiled).await?;
    let _guard = state.rule_writes.lock().await;
    // Again under the lock: the rule may have moved while this compiled.
    let before = changeable(&state, &caller, &id).await?;
    let mut rule = state.rules.update(&id, draft, now_ms()).await?;
    crate::audit::record_by(
        &state.audit,
        &caller,
        "rule_updated",
        json!({"rule_id": rule.id, "version": rule.current.version,
               "hospital_id": rule.current.hospital_id,
               "hospital_id_before": before.current.hospital_id}),
    )
    .await;
    if !rule.active {
        rule = state.rules.set_active(&id, true, now_ms()).await?;
    }
    run(&state, &rule, compiled).await?;
    Ok(Json(rule_view(&state, rule)))
}

/// Deactivates a rule: the engine stops running it; its versions stay, and
/// who stopped it and why is kept with it (`deactivation`) until it is
/// reactivated.
#[utoipa::path(
    delete,
    path = "/api/rules/{id}",
    operation_id = "deactivate_rule",
    tag = "rules",
    params(("id" = String, Path, description = "The rule's id."), DeactivateParams),
    responses(
        (status = 200, description = "Deactivated.", body = RuleView),
        (status = 400, description = "The reason is longer than `[limits] max_deactivation_reason_chars`.", body = ErrorBody),
        (status = 403, description = "A global rule, and the caller no unlimited admin.", body = ErrorBody),
        (status = 404, description = "No rule with this id (or one of a hospital the caller is not limited to).", body = ErrorBody),
        (status = 500, description = "The rule store failed.", body = ErrorBody),
        (status = 503, description = "The engine is shutting down.", body = ErrorBody),
    )
)]
pub async fn deactivate(
    State(state): State<SharedState>,
    caller: Caller<need::Author>,
    Path(id): Path<String>,
    Query(params): Query<DeactivateParams>,
) -> Result<Json<RuleView>, ApiError> {
    let reason = params.reason.unwrap_or_default().trim().to_string();
    let limit = state.config.limits.max_deactivation_reason_chars;
    let chars = reason.chars().count();
    if chars > limit {
        return Err(ApiError::bad_request(format!(
            "the reason is {chars} characters long; the limit is {limit} (max_deactivation_reason_chars)"
        )));
    }
    let _guard = state.rule_writes.lock().await;
    changeable(&state, &caller, &id).await?;
    let now = now_ms();
    let why = catalog::Deactivation {
        by: caller.name.clone(),
        by_subject: caller.subject.clone(),
        at_ms: now,
        reason: reason.clone(),
    };
    let rule = state
        .rules
        .set_active_because(&id, false, now, Some(why))
        .await?;
    crate::audit::record_by(
        &state.audit,
        &caller,
        "rule_deactivated",
        json!({"rule_id": rule.id, "version": rule.current.version, "reason": reason}),
    )
    .await;
    state
        .pipeline
        .send_async(Input::Remove(id))
        .await
        .map_err(|e| ApiError::unavailable(e.to_string()))?;
    Ok(Json(rule_view(&state, rule)))
}

/// Runs a deactivated rule's current version again, as it was (no new
/// version); it is compiled under today's `[limits]` first.
#[utoipa::path(
    post,
    path = "/api/rules/{id}/reactivate",
    operation_id = "reactivate_rule",
    tag = "rules",
    params(("id" = String, Path, description = "The rule's id.")),
    responses(
        (status = 200, description = "Running again (or was already).", body = RuleView),
        (status = 400, description = "The stored version no longer compiles or is over a `[limits]` budget (save a new version instead), or its hospital was retired.", body = ErrorBody),
        (status = 403, description = "A global rule, and the caller no unlimited admin.", body = ErrorBody),
        (status = 404, description = "No rule with this id (or one of a hospital the caller is not limited to).", body = ErrorBody),
        (status = 500, description = "The rule store failed.", body = ErrorBody),
        (status = 503, description = "The engine is shutting down.", body = ErrorBody),
    )
)]
pub async fn reactivate(
    State(state): State<SharedState>,
    caller: Caller<need::Author>,
    Path(id): Path<String>,
) -> Result<Json<RuleView>, ApiError> {
    let _guard = state.rule_writes.lock().await;
    let before = changeable(&state, &caller, &id).await?;
    if before.active {
        return Ok(Json(rule_view(&state, before)));
    }
    // A retired hospital's rules stay stopped (its own topic is not read).
    if let Some(hospital) = before.current.hospital() {
        let record = catalog::hospitals::HospitalStore::new(
            std::sync::Arc::clone(&state.store),
            &state.store_prefix,
        )
        .get(hospital)
        .await?;
        if let Some(retired_at) = record.and_then(|h| h.retired_at_ms) {
            return Err(ApiError::bad_request(format!(
                "hospital '{hospital}' was retired (at {retired_at} ms): its rules stay stopped"
            )));
        }
    }
    let compiled =
        compile(&state, &before.current.sql, before.current.hospital()).map_err(|e| {
            ApiError::bad_request(format!(
                "version {} cannot run again as it is ({}); save a new version instead",
                before.current.version, e.message
            ))
        })?;
    let rule = state.rules.set_active(&id, true, now_ms()).await?;
    crate::audit::record_by(
        &state.audit,
        &caller,
        "rule_reactivated",
        json!({"rule_id": rule.id, "version": rule.current.version}),
    )
    .await;
    run(&state, &rule, compiled).await?;
    Ok(Json(rule_view(&state, rule)))
}

/// How often a rule alerted, fired and suppressed, per bucket of event
/// time: the tuning signal beside its SQL.
#[utoipa::path(
    get,
    path = "/api/rules/{id}/alert-rate",
    operation_id = "rule_alert_rate",
    tag = "rules",
    params(("id" = String, Path, description = "The rule's id."), AlertRateParams),
    responses(
        (status = 200, description = "Alerts per bucket (every version of the rule; empty buckets left out).", body = AlertRate),
        (status = 400, description = "An empty or reversed range, a bucket under 1 min, or more than 1,440 buckets.", body = ErrorBody),
        (status = 404, description = "No rule with this id (or one of a hospital the caller is not limited to).", body = ErrorBody),
        (status = 500, description = "The alert history could not be read.", body = ErrorBody),
        (status = 503, description = "`max_concurrent_queries` history reads are running already.", body = ErrorBody),
        (status = 504, description = "The read ran past `query_timeout_ms`.", body = ErrorBody),
    )
)]
pub async fn alert_rate(
    State(state): State<SharedState>,
    caller: Caller<need::Viewer>,
    Path(id): Path<String>,
    params: Result<Query<AlertRateParams>, QueryRejection>,
) -> Result<Json<AlertRate>, ApiError> {
    const MAX_BUCKETS: i64 = 1_440;
    let Query(params) = params?;
    let rule = state
        .rules
        .get(&id)
        .await
        .filter(|r| may_see(&caller, r.current.hospital()))
        .ok_or_else(|| ApiError::not_found(format!("rule '{id}' not found")))?;
    let until = params.until.unwrap_or_else(now_ms);
    let since = params.since.unwrap_or(until.saturating_sub(24 * 3_600_000));
    let bucket_ms = params.bucket_ms.unwrap_or(3_600_000);
    if bucket_ms < 60_000 {
        return Err(ApiError::bad_request(format!(
            "bucket_ms is {bucket_ms}; the smallest bucket is 60000 (1 min)"
        )));
    }
    super::patients::check_range(since, until, bucket_ms.saturating_mul(MAX_BUCKETS)).map_err(
        |e| ApiError::bad_request(format!("{} ({MAX_BUCKETS} buckets at most)", e.message)),
    )?;
    let buckets = super::query::bounded_read(
        &state,
        catalog::alert_history::alert_rate(
            &state.history,
            &rule.id,
            caller.hospitals.as_deref(),
            since,
            until,
            bucket_ms,
        ),
    )
    .await?;
    Ok(Json(AlertRate {
        rule_id: rule.id,
        since,
        until,
        bucket_ms,
        buckets: buckets.into_iter().map(Into::into).collect(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limited_callers_see_their_and_global_rules_and_change_only_theirs() {
        let caller = |roles: &[Role], hospitals: Option<&[&str]>| Principal {
            roles: roles.to_vec(),
            hospitals: hospitals.map(|h| h.iter().map(|h| h.to_string()).collect()),
            ..Principal::anonymous()
        };
        let author_h1 = caller(&[Role::Author], Some(&["h1"]));
        assert!(may_see(&author_h1, None));
        assert!(may_see(&author_h1, Some("h1")));
        assert!(!may_see(&author_h1, Some("h2")));
        assert!(may_change(&author_h1, Some("h1")).is_ok());
        assert!(may_change(&author_h1, Some("h2")).is_err());
        let global = may_change(&author_h1, None).unwrap_err();
        assert_eq!(global.status, StatusCode::FORBIDDEN);
        assert!(global.message.contains("admin role"), "{}", global.message);
        // Unlimited authors change any hospital's rules, not global ones.
        let author = caller(&[Role::Author], None);
        assert!(may_see(&author, Some("h2")));
        assert!(may_change(&author, Some("h2")).is_ok());
        assert!(may_change(&author, None).is_err());
        // A global rule is for unlimited admins (and authentication off).
        assert!(may_change(&caller(&[Role::Admin], None), None).is_ok());
        assert!(may_change(&caller(&[Role::Admin], Some(&["h1"])), None).is_err());
        assert!(may_change(&Principal::anonymous(), None).is_ok());
    }
}
