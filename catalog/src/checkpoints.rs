//! Checkpoints: the engine's state with the source positions it covers, so
//! a process killed at any moment resumes where its state ends instead of
//! losing or splitting the windows that were open.
//!
//! ```text
//! {prefix}/checkpoints/ckpt-{sequence:020}.bin
//! ```
//!
//! One object per checkpoint, written whole (on local disk fsync'd before it
//! becomes visible, see [`crate::storage`]), never overwritten; the newest
//! readable one wins and older ones are deleted once a newer one is written.
//! Layout: `WWCKPT1\n`, a little-endian u64 header length, the JSON
//! [`CheckpointHeader`], then the engine's own snapshot bytes, whose length
//! the header records (a truncated object is refused, never half-restored).

use std::collections::BTreeMap;
use std::sync::Arc;

use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use serde::{Deserialize, Serialize};

use crate::storage::{get_bytes, list_all, put_new};
use crate::CatalogError;

const MAGIC: &[u8; 8] = b"WWCKPT1\n";
const DIR: &str = "checkpoints";

/// What a checkpoint says besides the engine state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CheckpointHeader {
    /// Increases by one per checkpoint written by any run on this store.
    pub sequence: u64,
    /// Processing time at which the state was taken.
    pub taken_at_ms: i64,
    /// Per source partition, the next offset the state has not seen: the
    /// engine resumes there (earlier events are archived again if needed,
    /// never counted twice).
    pub source_offsets: BTreeMap<i32, i64>,
    /// Per partition of the alert topic, a position at or before the first
    /// alert delivered after the state was taken: a restore reads the topic
    /// from there to learn which alert ids the restored engine will make
    /// again but must not deliver again.
    pub alert_positions: BTreeMap<i32, i64>,
    /// Alerts made before the state was taken that the alert history had
    /// not yet written to storage: a restore writes those it lacks.
    #[serde(default)]
    pub unwritten_alerts: Vec<sql_rules::Alert>,
    /// The rules (id, version) whose state the snapshot holds.
    pub rules: Vec<(String, u32)>,
    /// Length of the engine snapshot that follows the header.
    pub engine_bytes: u64,
}

/// A checkpoint read back.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    pub header: CheckpointHeader,
    pub engine: bytes::Bytes,
}

/// The checkpoints of one data directory (or object store prefix).
#[derive(Clone)]
pub struct CheckpointStore {
    store: Arc<dyn ObjectStore>,
    dir: Path,
}

impl CheckpointStore {
    pub fn new(store: Arc<dyn ObjectStore>, prefix: &Path) -> Self {
        Self::for_instance(store, prefix, None)
    }

    /// The checkpoints of one instance among several sharing the store
    /// (`checkpoints/{instance}/`); `None`: a single instance's.
    pub fn for_instance(
        store: Arc<dyn ObjectStore>,
        prefix: &Path,
        instance: Option<&str>,
    ) -> Self {
        let dir = prefix.clone().join(DIR);
        Self {
            store,
            dir: match instance {
                Some(name) => dir.join(name),
                None => dir,
            },
        }
    }

    fn path(&self, sequence: u64) -> Path {
        self.dir.clone().join(format!("ckpt-{sequence:020}.bin"))
    }

    /// Sequence numbers of the stored checkpoints, oldest first.
    async fn sequences(&self) -> Result<Vec<u64>, CatalogError> {
        let mut found: Vec<u64> = list_all(self.store.as_ref(), &self.dir)
            .await?
            .into_iter()
            .filter_map(|meta| {
                // Directly in this directory: not an instance's below it.
                let mut parts = meta.location.prefix_match(&self.dir)?;
                let name = parts.next()?.as_ref().to_string();
                if parts.next().is_some() {
                    return None;
                }
                name.strip_prefix("ckpt-")?
                    .strip_suffix(".bin")?
                    .parse()
                    .ok()
            })
            .collect();
        found.sort_unstable();
        Ok(found)
    }

    /// The sequence number the next checkpoint should use.
    pub async fn next_sequence(&self) -> Result<u64, CatalogError> {
        Ok(self.sequences().await?.last().map_or(1, |s| s + 1))
    }

    /// Writes a checkpoint; returns its size in bytes. Its sequence must be
    /// new ([`CatalogError::AlreadyExists`] otherwise: two writers).
    pub async fn write(
        &self,
        header: &CheckpointHeader,
        engine: &[u8],
    ) -> Result<u64, CatalogError> {
        let mut header = header.clone();
        header.engine_bytes = engine.len() as u64;
        let json = serde_json::to_vec(&header).map_err(|source| CatalogError::Encode {
            what: format!("checkpoint {}", header.sequence),
            source,
        })?;
        let mut bytes = Vec::with_capacity(16 + json.len() + engine.len());
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&(json.len() as u64).to_le_bytes());
        bytes.extend_from_slice(&json);
        bytes.extend_from_slice(engine);
        let size = bytes.len() as u64;
        put_new(
            self.store.as_ref(),
            &self.path(header.sequence),
            bytes.into(),
        )
        .await?;
        Ok(size)
    }

    /// The newest checkpoint that reads back whole; damaged ones are
    /// reported (as damaged files) and skipped for the one before.
    pub async fn latest(&self) -> Result<Option<Checkpoint>, CatalogError> {
        for sequence in self.sequences().await?.into_iter().rev() {
            let path = self.path(sequence);
            let bytes = get_bytes(self.store.as_ref(), &path).await?;
            match decode(&bytes) {
                Ok(checkpoint) => return Ok(Some(checkpoint)),
                Err(reason) => {
                    crate::damage::report(crate::DamagedFile {
                        path: path.to_string(),
                        kind: "checkpoint",
                        reason,
                        outcome: "skipped: the checkpoint before it is used".into(),
                    });
                }
            }
        }
        Ok(None)
    }

    /// Deletes every checkpoint older than the newest `keep`.
    pub async fn prune(&self, keep: usize) -> Result<usize, CatalogError> {
        let sequences = self.sequences().await?;
        let old = sequences.len().saturating_sub(keep);
        for &sequence in &sequences[..old] {
            let path = self.path(sequence);
            match self.store.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(CatalogError::store(&path, e)),
            }
        }
        Ok(old)
    }
}

/// The engine state is a slice of the bytes read (no copy: it can be
/// hundreds of MiB).
fn decode(bytes: &bytes::Bytes) -> Result<Checkpoint, String> {
    if bytes.len() < 16 || &bytes[..8] != MAGIC {
        return Err("not a checkpoint (wrong magic)".into());
    }
    let header_len = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes")) as usize;
    let json = bytes
        .get(16..16usize.saturating_add(header_len))
        .ok_or("truncated header")?;
    let header: CheckpointHeader =
        serde_json::from_slice(json).map_err(|e| format!("header: {e}"))?;
    let engine = bytes.slice(16 + header_len..);
    if engine.len() as u64 != header.engine_bytes {
        return Err(format!(
            "engine state is {} bytes, the header says {}",
            engine.len(),
            header.engine_bytes
        ));
    }
    Ok(Checkpoint { header, engine })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> CheckpointStore {
        let (store, prefix) = crate::storage::open_store("memory://ck").unwrap();
        CheckpointStore::new(store, &prefix)
    }

    fn header(sequence: u64) -> CheckpointHeader {
        CheckpointHeader {
            sequence,
            taken_at_ms: 1_000 * sequence as i64,
            source_offsets: BTreeMap::from([(0, 10), (3, 7)]),
            alert_positions: BTreeMap::from([(0, 2)]),
            rules: vec![("r1".into(), 2)],
            unwritten_alerts: vec![],
            engine_bytes: 0,
        }
    }

    #[tokio::test]
    async fn the_newest_whole_checkpoint_is_read_back_and_old_ones_pruned() {
        let s = store();
        assert!(s.latest().await.unwrap().is_none());
        assert_eq!(s.next_sequence().await.unwrap(), 1);
        for seq in 1..=4 {
            s.write(&header(seq), &[seq as u8; 100]).await.unwrap();
        }
        assert_eq!(s.next_sequence().await.unwrap(), 5);
        let latest = s.latest().await.unwrap().unwrap();
        assert_eq!(latest.header.sequence, 4);
        assert_eq!(latest.header.source_offsets, header(4).source_offsets);
        assert_eq!(latest.engine, vec![4u8; 100]);
        // A second writer of the same sequence is refused.
        assert!(matches!(
            s.write(&header(4), b"x").await,
            Err(CatalogError::AlreadyExists { .. })
        ));
        assert_eq!(s.prune(2).await.unwrap(), 2);
        assert_eq!(s.sequences().await.unwrap(), vec![3, 4]);
    }

    #[tokio::test]
    async fn a_truncated_checkpoint_is_skipped_for_the_one_before() {
        let s = store();
        s.write(&header(1), b"first").await.unwrap();
        s.write(&header(2), b"second").await.unwrap();
        // Cut the newest short, as a torn write on a store without atomic
        // puts would.
        let path = s.path(2);
        let bytes = get_bytes(s.store.as_ref(), &path).await.unwrap();
        crate::storage::put_overwrite(s.store.as_ref(), &path, bytes.slice(..bytes.len() - 3))
            .await
            .unwrap();
        let latest = s.latest().await.unwrap().unwrap();
        assert_eq!(latest.header.sequence, 1);
        assert_eq!(&latest.engine[..], b"first");
    }
}
