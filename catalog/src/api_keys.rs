//! API keys for services, as stored: one object per key,
//! `{prefix}/api_keys/{id}.json`, holding the key's name, roles, hospital
//! scope and the SHA-256 of its secret — never the secret itself (the
//! server makes and hashes keys; the catalog only keeps the records).
//!
//! A key is created with `PutMode::Create` (an id is never reused) and
//! revoked by rewriting its record with `revoked_at_ms`; records are never
//! deleted, so the audit trail of who had which key stays. Several
//! instances sharing a store see each other's keys on [`ApiKeyStore::load`].

use std::sync::Arc;

use object_store::path::Path;
use object_store::ObjectStore;
use serde::{Deserialize, Serialize};

use crate::damage::DamagedFile;
use crate::storage::{get_json, list_json_records, put_new, put_overwrite};
use crate::CatalogError;

/// One API key as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKeyRecord {
    /// Public part of the key (it appears in the key itself and in logs).
    pub id: String,
    /// What the key is for, e.g. `icu-gateway`.
    pub name: String,
    /// Role names (`viewer`, `author`, `auditor`, `admin`, `ingest`).
    pub roles: Vec<String>,
    /// Hospitals the key is limited to; `None` is every hospital.
    pub hospitals: Option<Vec<String>>,
    /// Lower-case hex SHA-256 of the secret part.
    pub secret_sha256: String,
    pub created_at_ms: i64,
    /// Who created it (subject of the admin, or `cli`).
    pub created_by: String,
    pub revoked_at_ms: Option<i64>,
    pub revoked_by: Option<String>,
}

/// The stored API keys.
#[derive(Debug, Clone)]
pub struct ApiKeyStore {
    store: Arc<dyn ObjectStore>,
    root: Path,
}

impl ApiKeyStore {
    pub fn new(store: Arc<dyn ObjectStore>, prefix: &Path) -> Self {
        Self {
            store,
            root: prefix.clone().join("api_keys"),
        }
    }

    fn path(&self, id: &str) -> Result<Path, CatalogError> {
        // Ids are made by the server (hex); anything else is refused rather
        // than turned into a path.
        if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(CatalogError::InvalidKeyId { id: id.into() });
        }
        Ok(self.root.clone().join(format!("{id}.json")))
    }

    /// Every stored key, revoked ones included. A record that cannot be
    /// read is skipped and reported (its key does not authenticate).
    pub async fn load(&self) -> Result<(Vec<ApiKeyRecord>, Vec<DamagedFile>), CatalogError> {
        let (mut keys, damaged): (Vec<ApiKeyRecord>, _) = list_json_records(
            self.store.as_ref(),
            &self.root,
            "api key",
            "skipped: the key does not authenticate",
        )
        .await?;
        keys.sort_by(|a, b| (a.created_at_ms, &a.id).cmp(&(b.created_at_ms, &b.id)));
        Ok((keys, damaged))
    }

    /// Stores a new key; an existing id is [`CatalogError::AlreadyExists`].
    pub async fn create(&self, record: &ApiKeyRecord) -> Result<(), CatalogError> {
        let path = self.path(&record.id)?;
        let bytes = encode(record)?;
        put_new(self.store.as_ref(), &path, bytes.into()).await
    }

    /// Marks key `id` revoked (a revoked key stays revoked: revoking again
    /// keeps the first time and author). `None` if there is no such key.
    pub async fn revoke(
        &self,
        id: &str,
        by: &str,
        now_ms: i64,
    ) -> Result<Option<ApiKeyRecord>, CatalogError> {
        let path = self.path(id)?;
        let Some(mut record) = get_json::<ApiKeyRecord>(self.store.as_ref(), &path).await? else {
            return Ok(None);
        };
        if record.revoked_at_ms.is_none() {
            record.revoked_at_ms = Some(now_ms);
            record.revoked_by = Some(by.to_string());
            let bytes = encode(&record)?;
            put_overwrite(self.store.as_ref(), &path, bytes.into()).await?;
        }
        Ok(Some(record))
    }
}

fn encode(record: &ApiKeyRecord) -> Result<Vec<u8>, CatalogError> {
    serde_json::to_vec_pretty(record).map_err(|source| CatalogError::Encode {
        what: format!("API key '{}'", record.id),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str) -> ApiKeyRecord {
        ApiKeyRecord {
            id: id.into(),
            name: "gateway".into(),
            roles: vec!["ingest".into()],
            hospitals: Some(vec!["h1".into()]),
            secret_sha256: "00".repeat(32),
            created_at_ms: 1,
            created_by: "admin".into(),
            revoked_at_ms: None,
            revoked_by: None,
        }
    }

    #[tokio::test]
    async fn keys_are_created_once_listed_and_revoked_for_good() {
        let store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let keys = ApiKeyStore::new(Arc::clone(&store), &Path::default());
        keys.create(&record("abc123")).await.unwrap();
        assert!(matches!(
            keys.create(&record("abc123")).await,
            Err(CatalogError::AlreadyExists { .. })
        ));
        let revoked = keys.revoke("abc123", "root", 5).await.unwrap().unwrap();
        assert_eq!(revoked.revoked_at_ms, Some(5));
        let again = keys.revoke("abc123", "other", 9).await.unwrap().unwrap();
        assert_eq!(
            (again.revoked_at_ms, again.revoked_by.as_deref()),
            (Some(5), Some("root"))
        );
        assert!(keys.revoke("nokey", "root", 5).await.unwrap().is_none());
        assert!(keys.revoke("../rules", "root", 5).await.is_err());
        let (all, damaged) = ApiKeyStore::new(store, &Path::default())
            .load()
            .await
            .unwrap();
        assert_eq!(all.len(), 1);
        assert!(damaged.is_empty());
        assert_eq!(all[0].revoked_by.as_deref(), Some("root"));
    }
}
