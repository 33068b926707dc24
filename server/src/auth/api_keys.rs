//! API keys for services (gateways posting events, scrapers, scripts).
//!
//! A key reads `wwk_<id>_<secret>`: the id finds the record, the secret
//! (32 random bytes from the OS) is checked against the SHA-256 stored in
//! the catalog ([`catalog::api_keys`]), compared in constant time. SHA-256
//! rather than a password hash because the secret is random and long, not
//! something a person chose: nothing is gained by making each check slow.
//! The secret is shown once, when the key is made.
//!
//! Records are cached; the cache is re-read from storage every
//! [`RELOAD_EVERY`] (keys made or revoked by another instance, or by
//! `wardwatch api-key create` on the command line) and, at most once a
//! [`MISS_RELOAD_EVERY`], when a key's id is not in it.

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use base64::Engine as _;
use catalog::api_keys::{ApiKeyRecord, ApiKeyStore};
use catalog::CatalogError;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{Principal, Role, Via};

pub const PREFIX: &str = "wwk_";
pub const RELOAD_EVERY: Duration = Duration::from_secs(10);
const MISS_RELOAD_EVERY: Duration = Duration::from_secs(2);

/// A key as the person who made it receives it: shown once.
pub struct NewKey {
    pub record: ApiKeyRecord,
    pub key: String,
}

/// Makes a key: a fresh id and secret, and the record to store.
pub fn make_key(
    name: &str,
    roles: &[Role],
    hospitals: Option<Vec<String>>,
    created_by: &str,
    now_ms: i64,
) -> NewKey {
    let mut id = [0u8; 8];
    let mut secret = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut id);
    rand::rngs::OsRng.fill_bytes(&mut secret);
    let id: String = id.iter().map(|b| format!("{b:02x}")).collect();
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret);
    let record = ApiKeyRecord {
        id: id.clone(),
        name: name.to_string(),
        roles: roles.iter().map(|r| r.as_str().to_string()).collect(),
        hospitals,
        secret_sha256: sha256_hex(&secret),
        created_at_ms: now_ms,
        created_by: created_by.to_string(),
        revoked_at_ms: None,
        revoked_by: None,
    };
    NewKey {
        key: format!("{PREFIX}{id}_{secret}"),
        record,
    }
}

fn sha256_hex(secret: &str) -> String {
    Sha256::digest(secret.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `wardwatch api-key create`: makes a key straight in the data
/// directory (the first admin key, before anyone can call the API). A
/// running server sees it within seconds. Returns the key, to show once.
pub async fn create_in_store(
    data_dir: &str,
    name: &str,
    roles: &[Role],
    hospitals: Option<Vec<String>>,
) -> anyhow::Result<(String, ApiKeyRecord)> {
    use anyhow::Context;
    anyhow::ensure!(!name.trim().is_empty(), "a key needs a --name");
    anyhow::ensure!(!roles.is_empty(), "a key needs at least one --role");
    let (store, prefix) = catalog::storage::open_store(data_dir)
        .with_context(|| format!("opening storage at {data_dir}"))?;
    let now_ms = chrono::Utc::now().timestamp_millis();
    let made = make_key(name.trim(), roles, hospitals, "cli", now_ms);
    ApiKeyStore::new(store, &prefix)
        .create(&made.record)
        .await
        .context("storing the key")?;
    Ok((made.key, made.record))
}

/// The stored keys, cached for checking.
pub struct KeyRing {
    store: ApiKeyStore,
    cache: RwLock<HashMap<String, ApiKeyRecord>>,
    loaded_at: tokio::sync::Mutex<Instant>,
}

impl KeyRing {
    pub async fn open(store: ApiKeyStore) -> Result<Self, CatalogError> {
        let ring = Self {
            store,
            cache: RwLock::new(HashMap::new()),
            loaded_at: tokio::sync::Mutex::new(Instant::now()),
        };
        ring.reload().await?;
        Ok(ring)
    }

    pub fn store(&self) -> &ApiKeyStore {
        &self.store
    }

    /// Re-reads every record from storage.
    pub async fn reload(&self) -> Result<(), CatalogError> {
        let mut loaded_at = self.loaded_at.lock().await;
        self.reload_locked(&mut loaded_at).await
    }

    /// `loaded_at` becomes the attempt's time whatever its outcome, so a
    /// failing store is not listed again on every request.
    async fn reload_locked(&self, loaded_at: &mut Instant) -> Result<(), CatalogError> {
        *loaded_at = Instant::now();
        let (keys, _damaged) = self.store.load().await?;
        *self.cache.write().expect("key cache lock") =
            keys.into_iter().map(|k| (k.id.clone(), k)).collect();
        Ok(())
    }

    /// Reloads if the cache is older than `age`, checked under the lock: a
    /// burst of unknown key ids lists the store once.
    async fn reload_if_older(&self, age: Duration) {
        let mut loaded_at = self.loaded_at.lock().await;
        if loaded_at.elapsed() < age {
            return;
        }
        if let Err(e) = self.reload_locked(&mut loaded_at).await {
            tracing::warn!(error = %e, "reloading API keys failed; keeping the cached ones");
        }
    }

    /// Puts a record made or changed by this instance into the cache.
    pub fn remember(&self, record: ApiKeyRecord) {
        self.cache
            .write()
            .expect("key cache lock")
            .insert(record.id.clone(), record);
    }

    pub fn list(&self) -> Vec<ApiKeyRecord> {
        let mut keys: Vec<_> = self
            .cache
            .read()
            .expect("key cache lock")
            .values()
            .cloned()
            .collect();
        keys.sort_by(|a, b| (a.created_at_ms, &a.id).cmp(&(b.created_at_ms, &b.id)));
        keys
    }

    /// The caller a presented key names; `Err` says why it is refused
    /// (without telling a guesser which part was wrong).
    pub async fn check(&self, presented: &str) -> Result<Principal, String> {
        const REFUSED: &str = "unknown or revoked API key";
        let Some((id, secret)) = presented
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split_once('_'))
        else {
            return Err("malformed API key (expected wwk_<id>_<secret>)".into());
        };
        self.reload_if_older(RELOAD_EVERY).await;
        let mut record = self.cache.read().expect("key cache lock").get(id).cloned();
        if record.is_none() {
            self.reload_if_older(MISS_RELOAD_EVERY).await;
            record = self.cache.read().expect("key cache lock").get(id).cloned();
        }
        let Some(record) = record else {
            return Err(REFUSED.into());
        };
        let matches: bool = sha256_hex(secret)
            .as_bytes()
            .ct_eq(record.secret_sha256.as_bytes())
            .into();
        if !matches || record.revoked_at_ms.is_some() {
            return Err(REFUSED.into());
        }
        Ok(Principal {
            subject: format!("api-key:{}", record.id),
            name: record.name.clone(),
            roles: record.roles.iter().filter_map(|r| Role::parse(r)).collect(),
            hospitals: record.hospitals.clone(),
            via: Via::ApiKey,
            from: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use object_store::path::Path;

    use super::*;

    #[tokio::test]
    async fn a_made_key_authenticates_until_revoked_and_its_secret_is_not_stored() {
        let store: Arc<dyn object_store::ObjectStore> =
            Arc::new(object_store::memory::InMemory::new());
        let keys = ApiKeyStore::new(Arc::clone(&store), &Path::default());
        let ring = KeyRing::open(keys.clone()).await.unwrap();
        let made = make_key("gw", &[Role::Ingest], None, "admin", 1);
        keys.create(&made.record).await.unwrap();
        ring.remember(made.record.clone());
        let (_, secret) = made.key[PREFIX.len()..].split_once('_').unwrap();
        assert!(!serde_json::to_string(&made.record)
            .unwrap()
            .contains(secret));

        let who = ring.check(&made.key).await.unwrap();
        assert_eq!(
            (who.name.as_str(), &who.roles[..]),
            ("gw", &[Role::Ingest][..])
        );
        let wrong = format!("{}x", made.key);
        assert_eq!(
            ring.check(&wrong).await.unwrap_err(),
            "unknown or revoked API key"
        );
        assert!(ring.check("wwk_nothing").await.is_err());

        let revoked = keys
            .revoke(&made.record.id, "admin", 2)
            .await
            .unwrap()
            .unwrap();
        ring.remember(revoked);
        assert!(ring.check(&made.key).await.is_err());
    }
}
