//! Who is calling, and what they may do.
//!
//! Every request but the public ones ([`is_public`]) passes [`authenticate`]
//! first: a bearer credential in `Authorization` — an OpenID Connect JWT
//! ([`jwt`]) for people, an API key ([`api_keys`]) for services — becomes a
//! [`Principal`] in the request's extensions, or the request ends with 401
//! and a `WWW-Authenticate` challenge. Each handler then names the role it
//! needs in its signature, `Caller<need::Author>`, which answers 403 (naming
//! the role) for anyone without it. A handler that forgot the extractor is
//! still authenticated; `tests/tests/auth_http.rs` walks every route of the
//! OpenAPI document with each role to catch it.
//!
//! With authentication off (`[auth] required = false`, loopback only; the
//! default for `serve --demo`) every caller is [`Principal::anonymous`],
//! which holds every role, and the UI shows a banner saying so.

pub mod api_keys;
pub mod jwt;
pub mod rate;

use std::marker::PhantomData;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::api::error::ApiError;
use crate::api::SharedState;
use crate::config::AuthConfig;

/// What a caller may do. Admin may do everything; any role but `ingest`
/// may do what a viewer does.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Clinicians: alerts, the live feed, acknowledging; reading rules.
    Viewer,
    /// Rule authors: create, change, deactivate, validate and backtest rules.
    Author,
    /// History SQL, replay audits, the audit log, dead letters.
    Auditor,
    /// API keys and configuration; every other role's rights.
    Admin,
    /// Services posting events to `POST /api/ingest`, and nothing else.
    Ingest,
}

impl Role {
    pub const ALL: [Role; 5] = [
        Role::Viewer,
        Role::Author,
        Role::Auditor,
        Role::Admin,
        Role::Ingest,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Author => "author",
            Role::Auditor => "auditor",
            Role::Admin => "admin",
            Role::Ingest => "ingest",
        }
    }

    /// A role name, case-insensitive; `None` for names that are not ours
    /// (a provider's token carries many).
    pub fn parse(name: &str) -> Option<Role> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str().eq_ignore_ascii_case(name.trim()))
    }
}

/// How a caller proved who they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Via {
    /// An OpenID Connect bearer token.
    Token,
    ApiKey,
    /// Authentication is off (loopback demo).
    AuthOff,
}

/// The authenticated caller.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Principal {
    /// Stable id: the token's `sub`, or `api-key:<id>`.
    pub subject: String,
    /// Shown as who did something (acknowledged, changed a rule).
    pub name: String,
    pub roles: Vec<Role>,
    /// Hospitals the caller is limited to; `None` is every hospital.
    pub hospitals: Option<Vec<String>>,
    pub via: Via,
    /// The peer address the request came from.
    pub from: Option<String>,
}

impl Principal {
    pub fn anonymous() -> Self {
        Self {
            subject: "anonymous".into(),
            name: "anonymous".into(),
            roles: Role::ALL.to_vec(),
            hospitals: None,
            via: Via::AuthOff,
            from: None,
        }
    }

    /// Whether this caller holds `need`, or a role that includes it.
    pub fn may(&self, need: Role) -> bool {
        self.roles
            .iter()
            .any(|&r| r == need || r == Role::Admin || (need == Role::Viewer && r != Role::Ingest))
    }

    /// Who, for the audit log: `{subject, name, roles, via, from}`.
    pub fn audit_fields(&self) -> serde_json::Value {
        serde_json::json!({
            "subject": self.subject,
            "name": self.name,
            "roles": self.roles,
            "via": self.via,
            "from": self.from,
        })
    }
}

/// Checks credentials.
pub struct Authenticator {
    required: bool,
    protect_metrics: bool,
    jwt: Option<Arc<jwt::JwtValidator>>,
    pub keys: api_keys::KeyRing,
    /// Requests per caller (only while authentication is required).
    pub rate: rate::CallerLimits,
}

impl Authenticator {
    pub async fn new(
        config: &AuthConfig,
        required: bool,
        keys: catalog::api_keys::ApiKeyStore,
    ) -> anyhow::Result<Self> {
        let jwt = jwt::JwtValidator::from_config(config).await?;
        if let Some(v) = &jwt {
            v.spawn_refresh(std::time::Duration::from_secs(config.jwks_refresh_seconds));
        }
        let keys = api_keys::KeyRing::open(keys)
            .await
            .map_err(|e| anyhow::anyhow!("loading API keys: {e}"))?;
        if required && jwt.is_none() && keys.list().iter().all(|k| k.revoked_at_ms.is_some()) {
            tracing::warn!(
                "authentication is required but no identity provider ([auth] jwks_file or \
                 jwks_url) and no API key is configured: every API call will get 401. Make \
                 the first admin key with `wardwatch api-key create --role admin`"
            );
        }
        Ok(Self {
            required,
            protect_metrics: config.protect_metrics,
            jwt,
            keys,
            rate: rate::CallerLimits::off(),
        })
    }

    /// Limits each caller's requests (see [`rate`]); without required
    /// authentication there is no caller to tell apart, and it stays off.
    pub fn with_rate_limits(mut self, per_second: u32, burst: u32) -> Self {
        if self.required {
            self.rate = rate::CallerLimits::new(per_second, burst);
        }
        self
    }

    /// 429 when `caller` is over its request rate.
    fn over_rate(&self, caller: &str) -> Option<Response> {
        self.rate
            .check(caller)
            .err()
            .map(|wait| self.too_many(wait))
    }

    fn too_many(&self, wait: std::time::Duration) -> Response {
        let seconds = wait.as_secs_f64().ceil().max(1.0) as u64;
        let mut response = ApiError {
            status: axum::http::StatusCode::TOO_MANY_REQUESTS,
            message: format!(
                "too many requests: each caller may make {} a second \
                 (max_requests_per_second_per_caller); retry after {seconds} s",
                self.rate.per_second()
            ),
            position: None,
        }
        .into_response();
        response.headers_mut().insert(
            axum::http::header::RETRY_AFTER,
            axum::http::HeaderValue::from(seconds),
        );
        response
    }

    pub fn required(&self) -> bool {
        self.required
    }

    /// The caller of a request, from its `Authorization` header.
    pub async fn authenticate(&self, parts: &axum::http::HeaderMap) -> Result<Principal, ApiError> {
        if !self.required {
            return Ok(Principal::anonymous());
        }
        let Some(header) = parts.get(axum::http::header::AUTHORIZATION) else {
            return Err(ApiError::unauthorized(
                "authentication required: send `Authorization: Bearer <token or API key>`",
            ));
        };
        let credential = header
            .to_str()
            .ok()
            .and_then(|h| {
                h.strip_prefix("Bearer ")
                    .or_else(|| h.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .ok_or_else(|| {
                ApiError::unauthorized("expected `Authorization: Bearer <credential>`")
            })?;
        let principal = if credential.starts_with(api_keys::PREFIX) {
            self.keys.check(credential).await
        } else if let Some(jwt) = &self.jwt {
            jwt.validate(credential).await
        } else {
            Err("no identity provider is configured: only API keys are accepted".into())
        }
        .map_err(ApiError::unauthorized)?;
        if principal.roles.is_empty() {
            return Err(ApiError::forbidden(format!(
                "'{}' holds no wardwatch role (one of viewer, author, auditor, admin, ingest)",
                principal.name
            )));
        }
        Ok(principal)
    }

    fn is_public(&self, path: &str) -> bool {
        is_public(path) || (path == "/metrics" && !self.protect_metrics)
    }
}

/// Routes anyone may call: health for orchestrators, the UI's static page
/// (it holds no data; it asks for credentials), and the API's description.
pub fn is_public(path: &str) -> bool {
    matches!(
        path,
        "/" | "/app.js"
            | "/app.css"
            | "/vendor.js"
            | "/vendor.css"
            | "/healthz"
            | "/readyz"
            | "/api/openapi.json"
            | "/api/ui-config"
    )
}

/// Middleware: authenticates every non-public request (see the module docs).
pub async fn authenticate(
    State(state): State<SharedState>,
    mut request: Request,
    next: Next,
) -> Response {
    if state.auth.is_public(request.uri().path()) {
        return next.run(request).await;
    }
    let ip = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip());
    let from = ip.map(|ip| ip.to_string());
    let peer = rate::peer_key(ip);
    // A peer that spent its bucket on failed credentials is refused before
    // its credentials are checked, right or wrong.
    if let Err(wait) = state.auth.rate.blocked(&peer) {
        return state.auth.too_many(wait);
    }
    let mut principal = match state.auth.authenticate(request.headers()).await {
        Ok(p) => p,
        Err(e) => {
            return match state.auth.rate.failed(&peer) {
                Err(wait) => state.auth.too_many(wait),
                Ok(()) => e.into_response(),
            };
        }
    };
    if let Some(too_many) = state.auth.over_rate(&principal.subject) {
        return too_many;
    }
    principal.from = from;
    request.extensions_mut().insert(Arc::new(principal));
    next.run(request).await
}

/// The role a handler needs, as a type: `Caller<need::Author>`.
pub mod need {
    use super::Role;

    pub trait Need: Send + Sync + 'static {
        /// Any one of these will do.
        const ROLES: &'static [Role];
    }

    macro_rules! needs {
        ($($(#[$doc:meta])* $name:ident => [$($role:ident),+];)*) => {$(
            $(#[$doc])*
            pub struct $name;
            impl Need for $name {
                const ROLES: &'static [Role] = &[$(Role::$role),+];
            }
        )*};
    }

    needs! {
        Viewer => [Viewer];
        Author => [Author];
        Auditor => [Auditor];
        Admin => [Admin];
        Ingest => [Ingest];
        /// Anyone authenticated, services included.
        Any => [Viewer, Ingest];
        /// Replays: authors backtest drafts, auditors audit versions.
        AuthorOrAuditor => [Author, Auditor];
    }
}

/// The authenticated caller of a handler, holding one of `N`'s roles.
pub struct Caller<N: need::Need> {
    pub principal: Arc<Principal>,
    need: PhantomData<N>,
}

impl<N: need::Need> std::ops::Deref for Caller<N> {
    type Target = Principal;
    fn deref(&self) -> &Principal {
        &self.principal
    }
}

impl<N: need::Need, S: Send + Sync> FromRequestParts<S> for Caller<N> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let principal = parts
            .extensions
            .get::<Arc<Principal>>()
            .cloned()
            .ok_or_else(|| ApiError::unauthorized("authentication required"))?;
        if !N::ROLES.iter().any(|&r| principal.may(r)) {
            let needed: Vec<&str> = N::ROLES.iter().map(|r| r.as_str()).collect();
            return Err(ApiError::forbidden(format!(
                "this needs the {} role; '{}' has {}",
                needed.join(" or "),
                principal.name,
                if principal.roles.is_empty() {
                    "none".to_string()
                } else {
                    principal
                        .roles
                        .iter()
                        .map(|r| r.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            )));
        }
        Ok(Self {
            principal,
            need: PhantomData,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_includes_every_role_and_viewing_needs_any_human_role() {
        let with = |roles: &[Role]| Principal {
            roles: roles.to_vec(),
            ..Principal::anonymous()
        };
        assert!(Role::ALL.iter().all(|&r| with(&[Role::Admin]).may(r)));
        assert!(with(&[Role::Auditor]).may(Role::Viewer));
        assert!(!with(&[Role::Auditor]).may(Role::Author));
        assert!(!with(&[Role::Ingest]).may(Role::Viewer));
        assert!(!with(&[Role::Viewer]).may(Role::Ingest));
        assert!(!with(&[]).may(Role::Viewer));
        assert_eq!(Role::parse(" Author "), Some(Role::Author));
        assert_eq!(Role::parse("offline_access"), None);
    }
}
