//! The hospitals a server serves, as onboarded over the API: one object per
//! hospital, `{prefix}/hospitals/{id}.json`. An id is reserved with
//! `PutMode::Create` (two instances cannot onboard one twice); changes and
//! retirement rewrite the record, which is never deleted (the audit trail
//! of what was served when stays). Instances sharing a store see each
//! other's hospitals on [`HospitalStore::list`].

use std::sync::Arc;

use object_store::path::Path;
use object_store::ObjectStore;
use serde::{Deserialize, Serialize};

use crate::damage::DamagedFile;
use crate::storage::{get_json, list_json_records, put_new, put_overwrite};
use crate::CatalogError;

/// Longest hospital id: the same bound events' `hospital_id` has.
pub const MAX_ID_BYTES: usize = 128;

/// One onboarded hospital.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HospitalRecord {
    /// The `hospital_id` its events carry.
    pub id: String,
    pub name: String,
    /// IANA time zone, e.g. `Europe/Amsterdam` (for people reading its
    /// alerts; event times stay UTC).
    pub time_zone: String,
    /// The rules made for it from templates at onboarding.
    pub rule_ids: Vec<String>,
    pub created_at_ms: i64,
    pub created_by: String,
    pub updated_at_ms: i64,
    pub retired_at_ms: Option<i64>,
    /// Its own Kafka topic, when its events do not come on the shared one.
    /// Absent in records written before hospitals could have one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<HospitalTopic>,
}

/// A hospital's own Kafka topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HospitalTopic {
    pub name: String,
    /// The number its partitions are known by past the source (archive
    /// files, checkpoints, watermarks): never reused, retired hospitals'
    /// included, so their files and offsets keep meaning what they meant.
    pub source: u32,
}

/// The stored hospitals.
#[derive(Debug, Clone)]
pub struct HospitalStore {
    store: Arc<dyn ObjectStore>,
    root: Path,
}

/// Whether `id` can be a hospital id: 1–128 bytes of letters, digits, `-`,
/// `_` and `.` (it names a stored object and appears in filters).
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_BYTES
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && id != "."
        && id != ".."
}

impl HospitalStore {
    pub fn new(store: Arc<dyn ObjectStore>, prefix: &Path) -> Self {
        Self {
            store,
            root: prefix.clone().join("hospitals"),
        }
    }

    fn path(&self, id: &str) -> Result<Path, CatalogError> {
        if !valid_id(id) {
            return Err(CatalogError::InvalidHospitalId { id: id.into() });
        }
        Ok(self.root.clone().join(format!("{id}.json")))
    }

    /// Every hospital, retired ones included, by id. A record that cannot
    /// be read is skipped and reported.
    pub async fn list(&self) -> Result<(Vec<HospitalRecord>, Vec<DamagedFile>), CatalogError> {
        let (mut hospitals, damaged): (Vec<HospitalRecord>, _) =
            list_json_records(self.store.as_ref(), &self.root, "hospital", "skipped").await?;
        hospitals.sort_by(|a, b| a.id.cmp(&b.id));
        Ok((hospitals, damaged))
    }

    /// One hospital; `None` if there is none with this id.
    pub async fn get(&self, id: &str) -> Result<Option<HospitalRecord>, CatalogError> {
        get_json(self.store.as_ref(), &self.path(id)?).await
    }

    /// Stores a new hospital; an existing id is
    /// [`CatalogError::AlreadyExists`].
    pub async fn create(&self, hospital: &HospitalRecord) -> Result<(), CatalogError> {
        let path = self.path(&hospital.id)?;
        put_new(self.store.as_ref(), &path, encode(hospital)?.into()).await
    }

    /// Rewrites a hospital's record (a change, or its retirement).
    pub async fn update(&self, hospital: &HospitalRecord) -> Result<(), CatalogError> {
        let path = self.path(&hospital.id)?;
        put_overwrite(self.store.as_ref(), &path, encode(hospital)?.into()).await
    }
}

fn encode(hospital: &HospitalRecord) -> Result<Vec<u8>, CatalogError> {
    serde_json::to_vec_pretty(hospital).map_err(|source| CatalogError::Encode {
        what: format!("hospital '{}'", hospital.id),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str) -> HospitalRecord {
        HospitalRecord {
            id: id.into(),
            name: "St. Elsewhere".into(),
            time_zone: "Europe/Amsterdam".into(),
            rule_ids: vec![],
            created_at_ms: 1,
            created_by: "admin".into(),
            updated_at_ms: 1,
            retired_at_ms: None,
            topic: None,
        }
    }

    #[tokio::test]
    async fn a_topic_of_its_own_is_kept_and_old_records_read_without_one() {
        use object_store::ObjectStoreExt;
        let store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let hospitals = HospitalStore::new(Arc::clone(&store), &Path::from("ward"));
        let mut own = record("H7");
        own.topic = Some(HospitalTopic {
            name: "vitals-h7".into(),
            source: 4,
        });
        hospitals.create(&own).await.unwrap();
        assert_eq!(hospitals.get("H7").await.unwrap(), Some(own));
        // A record written before topics existed.
        let old = r#"{"id":"H1","name":"Old","time_zone":"UTC","rule_ids":[],"created_at_ms":1,
                      "created_by":"a","updated_at_ms":1,"retired_at_ms":null}"#;
        store
            .put(&Path::from("ward/hospitals/H1.json"), old.into())
            .await
            .unwrap();
        assert_eq!(hospitals.get("H1").await.unwrap().unwrap().topic, None);
    }

    #[tokio::test]
    async fn a_hospital_is_onboarded_once_changed_and_listed() {
        let store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let hospitals = HospitalStore::new(Arc::clone(&store), &Path::default());
        hospitals.create(&record("H-07")).await.unwrap();
        assert!(matches!(
            hospitals.create(&record("H-07")).await,
            Err(CatalogError::AlreadyExists { .. })
        ));
        let mut retired = record("H-07");
        retired.retired_at_ms = Some(9);
        hospitals.update(&retired).await.unwrap();
        assert_eq!(hospitals.get("H-07").await.unwrap(), Some(retired));
        assert_eq!(hospitals.get("H-08").await.unwrap(), None);
        assert!(hospitals.get("../rules").await.is_err());
        let (all, damaged) = HospitalStore::new(store, &Path::default())
            .list()
            .await
            .unwrap();
        assert_eq!((all.len(), damaged.len()), (1, 0));
    }

    #[test]
    fn ids_are_plain_names() {
        assert!(valid_id("H01") && valid_id("st-elsewhere.east_2"));
        assert!(!valid_id("") && !valid_id("..") && !valid_id("a/b") && !valid_id("a b"));
        assert!(!valid_id(&"x".repeat(129)));
    }
}
