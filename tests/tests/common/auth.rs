//! A server with authentication on, for the tests over HTTP that need
//! people and services with roles: an identity provider whose JWKS is a
//! file holding a P-256 key made here (tokens are signed with its private
//! half, as a provider would), a bootstrap admin API key, and helpers to
//! call the API and post readings.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use wardwatch::auth::Role;
use wardwatch::config::Config;
use wardwatch_tests::{recent_ms, Server};

pub const ISSUER: &str = "https://idp.hospital.test/realms/wards";
pub const AUDIENCE: &str = "wardwatch";

/// The identity provider of the test: a P-256 signing key and its JWKS.
pub struct Provider {
    der: Vec<u8>,
    kid: String,
}

impl Provider {
    pub fn new(kid: &str) -> (Self, Value) {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        // Uncompressed point: 0x04, then x and y.
        let point = key.public_key_raw();
        assert_eq!((point.len(), point[0]), (65, 4));
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let jwk = json!({
            "kty": "EC", "crv": "P-256", "kid": kid, "use": "sig", "alg": "ES256",
            "x": b64(&point[1..33]), "y": b64(&point[33..]),
        });
        (
            Self {
                der: key.serialize_der(),
                kid: kid.into(),
            },
            jwk,
        )
    }

    pub fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &EncodingKey::from_ec_der(&self.der)).unwrap()
    }
}

pub fn now_s() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Claims of a person with `roles`, valid for an hour.
pub fn claims(sub: &str, name: &str, roles: &[&str]) -> Value {
    json!({
        "iss": ISSUER, "aud": AUDIENCE, "sub": sub, "name": name,
        "exp": now_s() + 3600, "iat": now_s(), "nbf": now_s() - 5,
        "realm_access": {"roles": roles},
    })
}

pub struct Setup {
    pub server: Server,
    pub idp: Provider,
    /// The first admin key, as `wardwatch api-key create` makes it.
    pub admin_key: String,
}

pub async fn start() -> Setup {
    start_with(|_| {}).await
}

/// [`start`], with the config changed by `change` first.
pub async fn start_with(change: impl FnOnce(&mut Config)) -> Setup {
    let data = Arc::new(tempfile::tempdir().unwrap());
    let (idp, jwk) = Provider::new("k1");
    let jwks = data.path().join("jwks.json");
    std::fs::write(&jwks, json!({"keys": [jwk]}).to_string()).unwrap();
    // The first admin key, as `wardwatch api-key create` makes it.
    let (admin_key, _) = wardwatch::auth::api_keys::create_in_store(
        data.path().to_str().unwrap(),
        "bootstrap",
        &[Role::Admin],
        None,
    )
    .await
    .unwrap();
    let mut config = Config::default();
    config.auth.required = Some(true);
    config.auth.jwks_file = Some(jwks);
    config.auth.issuer = Some(ISSUER.into());
    config.auth.audience = Some(AUDIENCE.into());
    config.auth.roles_claim = "realm_access.roles".into();
    config.archive.flush_interval_ms = 200;
    change(&mut config);
    let server = Server::start_in(config, data).await.unwrap();
    Setup {
        server,
        idp,
        admin_key,
    }
}

pub async fn call(
    server: &Server,
    method: Method,
    path: &str,
    credential: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, reqwest::header::HeaderMap, String) {
    let mut request = server
        .http
        .request(method.clone(), server.url(path))
        .timeout(Duration::from_secs(30));
    if let Some(c) = credential {
        request = request.bearer_auth(c);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request
        .send()
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let (status, headers) = (response.status(), response.headers().clone());
    // The live feed never ends: its status and headers are the answer.
    let text = if path.ends_with("/stream") && status.is_success() {
        String::new()
    } else {
        response.text().await.unwrap_or_default()
    };
    (status, headers, text)
}

/// Posts one reading per (patient, hospital) that the canary fires on.
pub async fn post_readings(server: &Server, key: &str, rows: &[(&str, &str)]) -> Value {
    let t = recent_ms(1000, 30);
    let body: String = rows
        .iter()
        .enumerate()
        .map(|(i, (patient, hospital))| {
            format!(
                "{}\n",
                json!({"patient_id": patient, "hospital_id": hospital, "source_device": "BEDSIDE",
                       "timestamp_unix_ms": t + i as i64, "sequence_number": 1, "heart_rate_bpm": 199.0})
            )
        })
        .collect();
    let response = server
        .http
        .post(server.url("/api/ingest"))
        .bearer_auth(key)
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    response.json().await.unwrap()
}
