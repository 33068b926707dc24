//! API keys and the caller's identity: `/api/keys`, `/api/whoami`.

use catalog::api_keys::ApiKeyRecord;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::{Principal, Role, Via};

/// `POST /api/keys`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKeyRequest {
    /// What the key is for (1–200 characters), e.g. `icu-gateway`.
    pub name: String,
    /// At least one role.
    pub roles: Vec<Role>,
    /// Limit the key to these hospitals; absent: every hospital (only an
    /// admin who is not limited may make such a key).
    #[serde(default)]
    pub hospitals: Option<Vec<String>>,
}

/// A stored key, without its secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ApiKeyView {
    pub id: String,
    pub name: String,
    pub roles: Vec<String>,
    pub hospitals: Option<Vec<String>>,
    pub created_at_ms: i64,
    pub created_by: String,
    pub revoked_at_ms: Option<i64>,
    pub revoked_by: Option<String>,
}

impl From<ApiKeyRecord> for ApiKeyView {
    fn from(r: ApiKeyRecord) -> Self {
        Self {
            id: r.id,
            name: r.name,
            roles: r.roles,
            hospitals: r.hospitals,
            created_at_ms: r.created_at_ms,
            created_by: r.created_by,
            revoked_at_ms: r.revoked_at_ms,
            revoked_by: r.revoked_by,
        }
    }
}

/// `POST /api/keys` (201): the key itself, shown this once.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CreatedKey {
    /// `wwk_<id>_<secret>`: send as `Authorization: Bearer <key>`. Only its
    /// hash is stored; it cannot be shown again.
    pub key: String,
    pub api_key: ApiKeyView,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ApiKeyList {
    pub keys: Vec<ApiKeyView>,
}

/// `GET /api/ui-config` (public): how the page signs people in.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct UiConfig {
    /// False when authentication is off (the loopback demo).
    pub auth_required: bool,
    /// The identity provider's sign-in for the page (authorization code
    /// with PKCE); null: pasted access tokens and API keys only.
    #[schema(required)]
    pub login: Option<UiLogin>,
}

/// `[auth.ui_login]`, as the page needs it (nothing secret: a public client).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct UiLogin {
    pub authorization_endpoint: String,
    pub token_endpoint: String,
    pub client_id: String,
    pub scope: String,
    /// Shown on the button: "Sign in with {name}".
    pub name: String,
}

impl From<&crate::config::UiLoginConfig> for UiLogin {
    fn from(c: &crate::config::UiLoginConfig) -> Self {
        Self {
            authorization_endpoint: c.authorization_endpoint.clone(),
            token_endpoint: c.token_endpoint.clone(),
            client_id: c.client_id.clone(),
            scope: c.scope.clone(),
            name: c.name.clone(),
        }
    }
}

/// `GET /api/whoami`: who the server takes the caller for.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct WhoAmI {
    /// False when authentication is off (the loopback demo): everyone is
    /// `anonymous` with every role.
    pub auth_required: bool,
    pub subject: String,
    pub name: String,
    pub roles: Vec<Role>,
    pub hospitals: Option<Vec<String>>,
    pub via: Via,
}

impl WhoAmI {
    pub fn new(auth_required: bool, p: &Principal) -> Self {
        Self {
            auth_required,
            subject: p.subject.clone(),
            name: p.name.clone(),
            roles: p.roles.clone(),
            hospitals: p.hospitals.clone(),
            via: p.via,
        }
    }
}
