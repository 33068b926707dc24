//! OpenID Connect bearer tokens: JWTs signed by the identity provider,
//! checked against its JWKS (a file, or a URL refreshed in the
//! background), its issuer, our audience, expiry and not-before with a
//! configured clock skew. Signature checks are `jsonwebtoken`'s; only
//! asymmetric algorithms are accepted (a shared-secret `HS*` token could be
//! minted by anyone who learnt the secret, and JWKS keys are public).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;

use super::{Principal, Role, Via};
use crate::config::AuthConfig;

/// How long a JWKS fetch may take, and the most it may weigh.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_JWKS_BYTES: usize = 1024 * 1024;
/// A token naming a key we do not know refreshes the JWKS at most this often
/// (the provider rotated keys), so unknown kids cannot make us hammer it.
const UNKNOWN_KID_REFRESH: Duration = Duration::from_secs(60);

const ASYMMETRIC: [Algorithm; 9] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

#[derive(Debug, Clone)]
enum Source {
    File(PathBuf),
    Url(String),
}

struct Key {
    key: DecodingKey,
    /// The JWK's own `alg`, when it names one: a token must use it.
    alg: Option<Algorithm>,
}

/// Validates bearer JWTs.
pub struct JwtValidator {
    source: Source,
    issuer: String,
    audience: String,
    leeway_seconds: u64,
    roles_claim: String,
    hospitals_claim: String,
    require_hospitals_claim: bool,
    name_claim: String,
    keys: RwLock<HashMap<String, Arc<Key>>>,
    last_refresh: tokio::sync::Mutex<Option<Instant>>,
    http: reqwest::Client,
}

impl JwtValidator {
    /// `None` when no JWKS is configured (API keys only). A configured JWKS
    /// without issuer and audience is refused: without them a token minted
    /// for another application of the same provider would be accepted.
    pub async fn from_config(config: &AuthConfig) -> Result<Option<Arc<Self>>> {
        let source = match (&config.jwks_file, &config.jwks_url) {
            (None, None) => return Ok(None),
            (Some(_), Some(_)) => bail!("[auth] set jwks_file or jwks_url, not both"),
            (Some(path), None) => Source::File(path.clone()),
            (None, Some(url)) => {
                if !fetchable_safely(url) {
                    bail!(
                        "[auth] jwks_url must be https:// (plain http only to a loopback \
                         address): keys fetched in the clear could be swapped in transit"
                    );
                }
                Source::Url(url.clone())
            }
        };
        let (Some(issuer), Some(audience)) = (&config.issuer, &config.audience) else {
            bail!(
                "[auth] a JWKS is configured, so issuer and audience must be set too \
                 (tokens are checked against both)"
            );
        };
        let validator = Arc::new(Self {
            source,
            issuer: issuer.clone(),
            audience: audience.clone(),
            leeway_seconds: config.leeway_seconds,
            roles_claim: config.roles_claim.clone(),
            hospitals_claim: config.hospitals_claim.clone(),
            require_hospitals_claim: config.require_hospitals_claim,
            name_claim: config.name_claim.clone(),
            keys: RwLock::new(HashMap::new()),
            last_refresh: tokio::sync::Mutex::new(None),
            http: reqwest::Client::builder()
                .timeout(FETCH_TIMEOUT)
                .build()
                .context("building the JWKS client")?,
        });
        match (&validator.source, validator.refresh().await) {
            // A bad file is the operator's mistake, seen at once.
            (Source::File(path), Err(e)) => {
                return Err(e.context(format!("loading the JWKS file {}", path.display())))
            }
            // A provider that is down must not stop alerting from starting:
            // tokens fail with 401 until a refresh succeeds.
            (Source::Url(url), Err(e)) => {
                tracing::error!(url, error = %format!("{e:#}"), "cannot fetch the JWKS; tokens are refused until it can be")
            }
            (_, Ok(n)) => tracing::info!(keys = n, "loaded the identity provider's JWKS"),
        }
        Ok(Some(validator))
    }

    /// Re-reads the JWKS every `interval` (keys rotate).
    pub fn spawn_refresh(self: &Arc<Self>, interval: Duration) -> tokio::task::JoinHandle<()> {
        let me = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval.max(Duration::from_secs(10)));
            tick.tick().await;
            loop {
                tick.tick().await;
                if let Err(e) = me.refresh().await {
                    tracing::warn!(error = %format!("{e:#}"), "refreshing the JWKS failed; keeping the keys we have");
                }
            }
        })
    }

    async fn refresh(&self) -> Result<usize> {
        let mut last = self.last_refresh.lock().await;
        self.refresh_locked(&mut last).await
    }

    /// Refreshes unless someone did (or tried) within `age`: checked under
    /// the lock, so a burst of tokens naming an unknown key fetches once.
    async fn refresh_if_older(&self, age: Duration) {
        let mut last = self.last_refresh.lock().await;
        if last.is_some_and(|at| at.elapsed() < age) {
            return;
        }
        if let Err(e) = self.refresh_locked(&mut last).await {
            tracing::warn!(error = %format!("{e:#}"), "refreshing the JWKS failed");
        }
    }

    /// `last` is the attempt's time whatever its outcome: a provider that is
    /// down is asked again after the interval, not on every request.
    async fn refresh_locked(&self, last: &mut Option<Instant>) -> Result<usize> {
        *last = Some(Instant::now());
        let bytes = match &self.source {
            Source::File(path) => {
                let bytes = tokio::fs::read(path)
                    .await
                    .with_context(|| format!("reading {}", path.display()))?;
                if bytes.len() > MAX_JWKS_BYTES {
                    bail!("{} is over {MAX_JWKS_BYTES} bytes", path.display());
                }
                bytes
            }
            Source::Url(url) => {
                let response = self
                    .http
                    .get(url)
                    .send()
                    .await
                    .with_context(|| format!("fetching {url}"))?
                    .error_for_status()
                    .with_context(|| format!("fetching {url}"))?;
                let bytes = response.bytes().await.context("reading the JWKS")?;
                if bytes.len() > MAX_JWKS_BYTES {
                    bail!("the JWKS at {url} is over {MAX_JWKS_BYTES} bytes");
                }
                bytes.to_vec()
            }
        };
        let set: JwkSet = serde_json::from_slice(&bytes).context("parsing the JWKS")?;
        let mut keys = HashMap::new();
        for jwk in &set.keys {
            match key_of(jwk) {
                Ok(key) => {
                    keys.insert(jwk.common.key_id.clone().unwrap_or_default(), Arc::new(key));
                }
                Err(e) => {
                    tracing::warn!(kid = ?jwk.common.key_id, error = %e, "skipping a JWKS key")
                }
            }
        }
        if keys.is_empty() {
            bail!("the JWKS has no usable signing key");
        }
        let n = keys.len();
        *self.keys.write().expect("jwks lock") = keys;
        Ok(n)
    }

    fn key(&self, kid: Option<&str>) -> Option<Arc<Key>> {
        let keys = self.keys.read().expect("jwks lock");
        match kid {
            Some(kid) => keys.get(kid).cloned(),
            // Without a kid only an unambiguous set will do.
            None if keys.len() == 1 => keys.values().next().cloned(),
            None => None,
        }
    }

    /// The caller a valid token names; `Err` says why a token is refused.
    pub async fn validate(&self, token: &str) -> std::result::Result<Principal, String> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| format!("not a JWT: {e}"))?;
        if !ASYMMETRIC.contains(&header.alg) {
            return Err(format!(
                "tokens signed with {:?} are not accepted (asymmetric algorithms only)",
                header.alg
            ));
        }
        let kid = header.kid.as_deref();
        let key = match self.key(kid) {
            Some(key) => key,
            None => {
                // Maybe the provider rotated its keys since we last looked.
                self.refresh_if_older(UNKNOWN_KID_REFRESH).await;
                self.key(kid).ok_or_else(|| match kid {
                    Some(kid) => format!("no signing key '{kid}' in the identity provider's JWKS"),
                    None => "the token names no key (kid) and the JWKS has several".to_string(),
                })?
            }
        };
        if key.alg.is_some_and(|alg| alg != header.alg) {
            return Err(format!(
                "the token's algorithm {:?} is not its key's",
                header.alg
            ));
        }
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        validation.leeway = self.leeway_seconds;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let data = jsonwebtoken::decode::<Value>(token, &key.key, &validation)
            .map_err(|e| format!("invalid token: {e}"))?;
        self.principal(&data.claims)
    }

    fn principal(&self, claims: &Value) -> std::result::Result<Principal, String> {
        let subject = claims
            .get("sub")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or("the token has no subject (sub)")?;
        let name = claim(claims, &self.name_claim)
            .and_then(Value::as_str)
            .filter(|s| !s.trim().is_empty())
            .unwrap_or(subject);
        let roles = strings(claim(claims, &self.roles_claim))
            .iter()
            .filter_map(|r| Role::parse(r))
            .collect();
        let hospitals = claim(claims, &self.hospitals_claim).map(|v| strings(Some(v)));
        if hospitals.is_none() && self.require_hospitals_claim {
            return Err(format!(
                "the token has no '{}' claim, which this server requires",
                self.hospitals_claim
            ));
        }
        Ok(Principal {
            subject: subject.chars().take(256).collect(),
            name: name.chars().take(256).collect(),
            roles,
            hospitals,
            via: Via::Token,
            from: None,
        })
    }
}

/// HTTPS, or plain HTTP to this machine (a sidecar or a test provider).
pub fn fetchable_safely(url: &str) -> bool {
    match url::Url::parse(url) {
        Ok(u) if u.scheme() == "https" => true,
        Ok(u) if u.scheme() == "http" => match u.host() {
            Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            None => false,
        },
        _ => false,
    }
}

fn key_of(jwk: &Jwk) -> Result<Key> {
    let alg = match &jwk.common.key_algorithm {
        None => None,
        Some(a) => {
            let alg: Algorithm = a
                .to_string()
                .parse()
                .map_err(|_| anyhow::anyhow!("unsupported algorithm {a}"))?;
            if !ASYMMETRIC.contains(&alg) {
                bail!("{alg:?} is not an asymmetric algorithm");
            }
            Some(alg)
        }
    };
    // `from_jwk` refuses symmetric (`oct`) keys' families we never accept
    // anyway: the algorithm check above and in `validate` keeps HS* out.
    if matches!(
        jwk.algorithm,
        jsonwebtoken::jwk::AlgorithmParameters::OctetKey(_)
    ) {
        bail!("symmetric keys are not accepted");
    }
    let key = DecodingKey::from_jwk(jwk).context("unusable key")?;
    Ok(Key { key, alg })
}

/// `a.b.c` walks into nested objects (Keycloak's `realm_access.roles`); a
/// claim whose own name has dots is found first as is.
fn claim<'a>(claims: &'a Value, path: &str) -> Option<&'a Value> {
    if let Some(v) = claims.get(path) {
        return Some(v);
    }
    path.split('.').try_fold(claims, |v, part| v.get(part))
}

/// A list of strings, or one string of names separated by spaces or commas
/// (the OAuth `scope` style).
fn strings(value: Option<&Value>) -> Vec<String> {
    match value {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect(),
        Some(Value::String(s)) => s
            .split([' ', ','])
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_jwks_is_fetched_over_https_or_from_this_machine_only() {
        assert!(fetchable_safely("https://idp.example.org/certs"));
        assert!(fetchable_safely("http://127.0.0.1:8081/certs"));
        assert!(fetchable_safely("http://localhost/certs"));
        assert!(fetchable_safely("http://[::1]:9/certs"));
        assert!(!fetchable_safely("http://idp.example.org/certs"));
        assert!(!fetchable_safely("http://127.0.0.1.evil.example/certs"));
        assert!(!fetchable_safely("file:///etc/jwks.json"));
        assert!(!fetchable_safely("not a url"));
    }

    #[test]
    fn claims_are_found_by_path_and_read_as_lists() {
        let claims = serde_json::json!({
            "realm_access": {"roles": ["viewer", "offline_access"]},
            "scope": "author auditor",
            "x.y": "flat",
        });
        assert_eq!(
            strings(claim(&claims, "realm_access.roles")),
            ["viewer", "offline_access"]
        );
        assert_eq!(strings(claim(&claims, "scope")), ["author", "auditor"]);
        assert_eq!(claim(&claims, "x.y"), Some(&Value::from("flat")));
        assert!(claim(&claims, "realm_access.nothing").is_none());
    }
}
