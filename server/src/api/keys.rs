//! API keys (admins): make one (its secret shown once), list, revoke; and
//! `GET /api/whoami` for any authenticated caller (the UI reads it to show
//! only what the caller's roles allow).

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde_json::json;

use super::error::ApiError;
use super::types::{
    ApiKeyList, ApiKeyView, CreateKeyRequest, CreatedKey, ErrorBody, UiConfig, WhoAmI,
};
use super::SharedState;
use crate::auth::{api_keys, need, Caller};

const MAX_NAME_CHARS: usize = 200;
const MAX_HOSPITALS: usize = 1000;
const MAX_HOSPITAL_ID_BYTES: usize = 128;
/// Keys that may exist at once (revoked ones included: they are kept).
pub const MAX_KEYS: usize = 10_000;

/// How the page signs people in: whether authentication is on, and the
/// identity provider's endpoints when `[auth.ui_login]` is set. Public: the
/// page asks before anyone has signed in.
#[utoipa::path(
    get,
    path = "/api/ui-config",
    operation_id = "ui_config",
    tag = "auth",
    responses((status = 200, description = "How the page signs people in.", body = UiConfig))
)]
pub async fn ui_config(State(state): State<SharedState>) -> Json<UiConfig> {
    Json(UiConfig {
        auth_required: state.auth.required(),
        login: state.config.auth.ui_login.as_ref().map(Into::into),
    })
}

/// Who the server takes the caller for, and whether authentication is on.
#[utoipa::path(
    get,
    path = "/api/whoami",
    operation_id = "whoami",
    tag = "auth",
    responses((status = 200, description = "The caller.", body = WhoAmI))
)]
pub async fn whoami(State(state): State<SharedState>, caller: Caller<need::Any>) -> Json<WhoAmI> {
    Json(WhoAmI::new(state.auth.required(), &caller))
}

/// Every API key, revoked ones included (secrets are never shown again).
#[utoipa::path(
    get,
    path = "/api/keys",
    operation_id = "list_keys",
    tag = "auth",
    responses((status = 200, description = "The keys.", body = ApiKeyList))
)]
pub async fn list(
    State(state): State<SharedState>,
    caller: Caller<need::Admin>,
) -> Json<ApiKeyList> {
    let keys = state
        .auth
        .keys
        .list()
        .into_iter()
        .filter(|k| manages(&caller, k))
        .map(ApiKeyView::from)
        .collect();
    Json(ApiKeyList { keys })
}

/// An admin limited to hospitals sees and revokes only keys limited to
/// some of those hospitals: not another hospital's, nor an unlimited one.
fn manages(caller: &crate::auth::Principal, key: &catalog::api_keys::ApiKeyRecord) -> bool {
    match (&caller.hospitals, &key.hospitals) {
        (None, _) => true,
        (Some(mine), Some(theirs)) => !theirs.is_empty() && theirs.iter().all(|h| mine.contains(h)),
        (Some(_), None) => false,
    }
}
/// Makes an API key for a service; the answer holds the key, once.
#[utoipa::path(
    post,
    path = "/api/keys",
    operation_id = "create_key",
    tag = "auth",
    request_body = CreateKeyRequest,
    responses(
        (status = 201, description = "Made: `key` is shown this once.", body = CreatedKey),
        (status = 400, description = "No name or roles, or a field over its limit.", body = ErrorBody),
        (status = 403, description = "A caller limited to hospitals asked for a key beyond them.", body = ErrorBody),
    )
)]
pub async fn create(
    State(state): State<SharedState>,
    caller: Caller<need::Admin>,
    body: Result<Json<CreateKeyRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<CreatedKey>), ApiError> {
    let Json(req) = body.map_err(|e| {
        ApiError::bad_request(format!(
            "expected {{\"name\": \"…\", \"roles\": [\"ingest\"], \"hospitals\": [\"…\"]}}: {e}"
        ))
    })?;
    let name = req.name.trim();
    if name.is_empty() || name.chars().count() > MAX_NAME_CHARS {
        return Err(ApiError::bad_request(format!(
            "`name` must be 1–{MAX_NAME_CHARS} characters"
        )));
    }
    let mut roles = req.roles.clone();
    roles.sort();
    roles.dedup();
    if roles.is_empty() {
        return Err(ApiError::bad_request(
            "`roles` must name at least one of viewer, author, auditor, admin, ingest",
        ));
    }
    if let Some(hospitals) = &req.hospitals {
        if hospitals.is_empty()
            || hospitals.len() > MAX_HOSPITALS
            || hospitals
                .iter()
                .any(|h| h.is_empty() || h.len() > MAX_HOSPITAL_ID_BYTES)
        {
            return Err(ApiError::bad_request(format!(
                "`hospitals` must list 1–{MAX_HOSPITALS} ids of 1–{MAX_HOSPITAL_ID_BYTES} bytes \
                 (leave it out for every hospital)"
            )));
        }
    }
    // No one hands out more than they hold.
    if let Some(mine) = &caller.hospitals {
        let within = req
            .hospitals
            .as_ref()
            .is_some_and(|theirs| theirs.iter().all(|h| mine.contains(h)));
        if !within {
            return Err(ApiError::forbidden(format!(
                "you are limited to hospitals {mine:?}: a key you make must be limited to them too"
            )));
        }
    }
    if state.auth.keys.list().len() >= MAX_KEYS {
        return Err(ApiError::bad_request(format!(
            "there are {MAX_KEYS} keys already, the limit"
        )));
    }
    let now_ms = chrono::Utc::now().timestamp_millis();
    let made = api_keys::make_key(name, &roles, req.hospitals.clone(), &caller.subject, now_ms);
    state.auth.keys.store().create(&made.record).await?;
    state.auth.keys.remember(made.record.clone());
    crate::audit::record_by(
        &state.audit,
        &caller,
        "api_key_created",
        json!({"key_id": made.record.id, "key_name": name, "roles": made.record.roles,
               "hospitals": made.record.hospitals}),
    )
    .await;
    Ok((
        StatusCode::CREATED,
        Json(CreatedKey {
            key: made.key,
            api_key: made.record.into(),
        }),
    ))
}

/// Revokes a key: it stops authenticating (on other instances within
/// seconds); its record stays.
#[utoipa::path(
    delete,
    path = "/api/keys/{id}",
    operation_id = "revoke_key",
    tag = "auth",
    params(("id" = String, Path, description = "The key's id (the part after `wwk_`).")),
    responses(
        (status = 200, description = "Revoked.", body = ApiKeyView),
        (status = 404, description = "No key with this id.", body = ErrorBody),
    )
)]
pub async fn revoke(
    State(state): State<SharedState>,
    caller: Caller<need::Admin>,
    Path(id): Path<String>,
) -> Result<Json<ApiKeyView>, ApiError> {
    let now_ms = chrono::Utc::now().timestamp_millis();
    let visible = |state: &SharedState| {
        state
            .auth
            .keys
            .list()
            .into_iter()
            .any(|k| k.id == id && manages(&caller, &k))
    };
    // A key made elsewhere (another instance, the CLI) may not be cached yet.
    if !visible(&state) {
        let _ = state.auth.keys.reload().await;
    }
    if !visible(&state) {
        return Err(ApiError::not_found(format!("no API key '{id}'")));
    }
    let revoked = match state
        .auth
        .keys
        .store()
        .revoke(&id, &caller.subject, now_ms)
        .await
    {
        Ok(Some(record)) => record,
        Ok(None) | Err(catalog::CatalogError::InvalidKeyId { .. }) => {
            return Err(ApiError::not_found(format!("no API key '{id}'")))
        }
        Err(e) => return Err(e.into()),
    };
    state.auth.keys.remember(revoked.clone());
    crate::audit::record_by(
        &state.audit,
        &caller,
        "api_key_revoked",
        json!({"key_id": id, "key_name": revoked.name}),
    )
    .await;
    Ok(Json(revoked.into()))
}
