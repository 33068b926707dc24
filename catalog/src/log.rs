//! Append-only JSON-lines logs on the object store.
//!
//! Acknowledgements, the embedded dead-letter table and the audit log are
//! kept here (alert history is the archive's `alerts` table, see
//! [`crate::alert_history`]). Records are appended
//! to memory, where [`JsonLog::recent`] sees them at once, and [`JsonLog::flush`]
//! writes everything appended since the last flush as one new immutable
//! segment:
//!
//! ```text
//! {prefix}/{name}/seg-000000000000.jsonl   records 0..n
//! {prefix}/{name}/seg-{n:012}.jsonl        records n..
//! ```
//!
//! A segment is named after the sequence number of its first record and is
//! written with `PutMode::Create`, so an existing segment is never replaced.
//! Records not yet flushed are lost if the process dies; the caller decides
//! how often to flush, or opens the log with
//! [`with_durable_appends`](JsonLog::with_durable_appends) so that an append
//! returns only once its record is written (and, on a local directory,
//! fsync'd: see [`crate::storage::DurableLocalStore`]).
//!
//! A damaged segment (a line that is not JSON, such as half a record left by
//! a power cut) never stops a log from opening: its intact lines are kept, the
//! rest is skipped, and the segment is reported to [`crate::damage`] and
//! listed by [`JsonLog::damaged_files`] for the audit log. A bad line still
//! counts as a record, so sequence numbers (and segment names) are never
//! reused. A log has one writer: two processes appending to the
//! same `{prefix}/{name}` would pick the same segment names, and the second
//! flush fails with [`CatalogError::AlreadyExists`] instead of overwriting.
//!
//! Only a bounded tail of the most recent records is kept in memory (and
//! loaded on open); older records stay in their segments.

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::ObjectStore;
use serde_json::Value;

use crate::damage::{self, DamagedFile};
use crate::storage::{get_bytes, list_all, put_new};
use crate::CatalogError;

/// How many of the most recent records [`JsonLog::open`] keeps in memory.
pub const DEFAULT_MAX_IN_MEMORY: usize = 100_000;

const MAX_NAME_CHARS: usize = 64;

/// Segments read at once while opening a log.
const SEGMENT_READS: usize = 16;

/// An append-only log of JSON records, see the [module docs](self).
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// use std::sync::Arc;
/// use catalog::log::JsonLog;
/// use object_store::{memory::InMemory, path::Path};
/// use serde_json::json;
///
/// let log = JsonLog::open(Arc::new(InMemory::new()), Path::default(), "alerts").await?;
/// log.append(&[json!({"rule": "tachy", "patient": "p1"})]).await?;
/// log.flush().await?;
/// assert_eq!(log.recent(10, |_| true)[0]["patient"], "p1");
/// # Ok::<(), catalog::CatalogError>(())
/// # }).unwrap();
/// ```
pub struct JsonLog {
    store: Arc<dyn ObjectStore>,
    /// `{prefix}/{name}`.
    dir: Path,
    max_in_memory: usize,
    /// A std mutex because `recent` and `len` are synchronous; it is never
    /// held across an await.
    state: Mutex<State>,
    /// Serialises flushes so segments are written in sequence order.
    flushing: tokio::sync::Mutex<()>,
    /// Whether [`append`](Self::append) flushes before it returns.
    durable_appends: bool,
    /// Segments found damaged when the log was opened.
    damaged: Vec<DamagedFile>,
    /// Where this process writes: `dir`, or `dir/{writer}` for an instance.
    own_dir: Path,
    /// With a writer name: per other writer's directory, the last segment
    /// read from it ([`refresh`](Self::refresh) reads those after it).
    others: Option<tokio::sync::Mutex<std::collections::BTreeMap<Path, Option<Path>>>>,
}

struct State {
    /// The most recent records, oldest first, at most `max_in_memory`.
    tail: VecDeque<Value>,
    /// Sequence number of the next record; also the total ever appended.
    next_seq: u64,
    /// Encoded records appended since the last flush.
    buffer: Vec<u8>,
    buffer_first_seq: u64,
    buffer_count: u64,
    /// Segments cut by a flush whose write has not succeeded yet, oldest
    /// first. Their bytes never change, so retrying one is idempotent.
    sealed: VecDeque<Segment>,
}

#[derive(Clone)]
struct Segment {
    first_seq: u64,
    count: u64,
    bytes: Bytes,
}

impl fmt::Debug for JsonLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JsonLog")
            .field("dir", &self.dir)
            .field("len", &self.len())
            .field("unflushed", &self.unflushed())
            .finish_non_exhaustive()
    }
}

impl JsonLog {
    /// Opens log `name` under `prefix`, loading up to
    /// [`DEFAULT_MAX_IN_MEMORY`] of its most recent records.
    ///
    /// `name` becomes a path segment: 1-64 characters from `a-z`, `0-9`,
    /// `_` and `-` (for example `alerts`, `dead_letters`, `audit_log`).
    pub async fn open(
        store: Arc<dyn ObjectStore>,
        prefix: Path,
        name: &str,
    ) -> Result<Self, CatalogError> {
        Self::open_with_limit(store, prefix, name, DEFAULT_MAX_IN_MEMORY).await
    }

    /// Like [`open`](Self::open), keeping at most `max_in_memory` recent records.
    pub async fn open_with_limit(
        store: Arc<dyn ObjectStore>,
        prefix: Path,
        name: &str,
        max_in_memory: usize,
    ) -> Result<Self, CatalogError> {
        Self::open_as(store, prefix, name, max_in_memory, None).await
    }

    /// Like [`open_with_limit`](Self::open_with_limit), for one of several
    /// processes sharing the store: with `writer` (a name like `name`), this
    /// process writes under `{name}/{writer}/` and reads the other writers'
    /// parts (and a single writer's `{name}/seg-…` from before) as part of
    /// the log; [`refresh`](Self::refresh) picks up what they write later.
    /// Without, the log is a single writer's, as before, and still reads
    /// what instances wrote under it.
    pub async fn open_as(
        store: Arc<dyn ObjectStore>,
        prefix: Path,
        name: &str,
        max_in_memory: usize,
        writer: Option<&str>,
    ) -> Result<Self, CatalogError> {
        validate_name(name)?;
        let dir = prefix.join(name);
        let own_dir = match writer {
            Some(w) => {
                validate_name(w)?;
                dir.clone().join(w)
            }
            None => dir.clone(),
        };
        let Loaded {
            tail: own_tail,
            next_seq,
            mut damaged,
        } = load_tail(store.as_ref(), &own_dir, max_in_memory).await?;
        // The other writers' parts, read at open (their later segments by
        // `refresh`): each one's newest records, before ours.
        let mut others = std::collections::BTreeMap::new();
        let mut tail = VecDeque::new();
        let listed = store
            .list_with_delimiter(Some(&dir))
            .await
            .map_err(|e| CatalogError::store(&dir, e))?;
        let mut other_dirs: Vec<Path> = listed
            .common_prefixes
            .into_iter()
            .filter(|d| *d != own_dir)
            .collect();
        if writer.is_some() && !listed.objects.is_empty() {
            other_dirs.push(dir.clone());
        }
        for other in other_dirs {
            let loaded = load_tail(store.as_ref(), &other, max_in_memory).await?;
            damaged.extend(loaded.damaged);
            tail.extend(loaded.tail);
            let last = newest_segment(store.as_ref(), &other).await?;
            others.insert(other, last);
        }
        tail.extend(own_tail);
        let excess = tail.len().saturating_sub(max_in_memory);
        tail.drain(..excess);
        tracing::debug!(log = %dir, records = next_seq, in_memory = tail.len(), "opened log");
        Ok(Self {
            store,
            dir,
            own_dir,
            others: writer.map(|_| tokio::sync::Mutex::new(others)),
            max_in_memory,
            state: Mutex::new(State {
                tail,
                next_seq,
                buffer: Vec::new(),
                buffer_first_seq: next_seq,
                buffer_count: 0,
                sealed: VecDeque::new(),
            }),
            flushing: tokio::sync::Mutex::new(()),
            durable_appends: false,
            damaged,
        })
    }

    /// Makes every [`append`](Self::append) write its records (with whatever
    /// else is buffered) before returning, for records that must not be lost
    /// once answered, such as acknowledgements. Each append then costs one
    /// object write (on local disk, two fsyncs); appends made while a write is
    /// under way share the next one.
    pub fn with_durable_appends(mut self) -> Self {
        self.durable_appends = true;
        self
    }

    /// Reads the segments the other writers sharing this log wrote since
    /// the last look (a new writer included) into the in-memory tail;
    /// returns the records that arrived. Nothing to do for a single writer.
    pub async fn refresh(&self) -> Result<Vec<Value>, CatalogError> {
        let Some(others) = &self.others else {
            return Ok(Vec::new());
        };
        let mut others = others.lock().await;
        let listed = self
            .store
            .list_with_delimiter(Some(&self.dir))
            .await
            .map_err(|e| CatalogError::store(&self.dir, e))?;
        for d in listed.common_prefixes {
            if d != self.own_dir {
                others.entry(d).or_insert(None);
            }
        }
        let mut arrived = Vec::new();
        for (dir, last) in others.iter_mut() {
            if *dir == self.dir {
                continue; // a single writer's part: nobody writes it now
            }
            let mut new: Vec<(u64, Path)> = match last {
                Some(after) => self.store.list_with_offset(Some(dir), after),
                None => self.store.list(Some(dir)),
            }
            .try_collect::<Vec<_>>()
            .await
            .map_err(|e| CatalogError::store(dir, e))?
            .into_iter()
            .filter_map(|o| Some((direct_segment(dir, &o.location)?, o.location)))
            .collect();
            new.sort();
            for (_, path) in new {
                let read = get_bytes(self.store.as_ref(), &path).await;
                let Some((segment, _damage)) = read_segment(read, &path)? else {
                    continue;
                };
                arrived.extend(segment.records.iter().cloned());
                let mut state = self.lock_state();
                state.tail.extend(segment.records);
                let excess = state.tail.len().saturating_sub(self.max_in_memory);
                state.tail.drain(..excess);
                drop(state);
                *last = Some(path);
            }
        }
        Ok(arrived)
    }

    /// The damaged segments found when the log was opened (see the
    /// [module docs](self)), for the audit log.
    pub fn damaged_files(&self) -> &[DamagedFile] {
        &self.damaged
    }

    /// Appends `records`. They are visible to [`recent`](Self::recent) at once
    /// and reach the object store at the next [`flush`](Self::flush), or
    /// before this returns with [`with_durable_appends`](Self::with_durable_appends).
    ///
    /// With durable appends an error means the records may not be durable:
    /// they stay queued (and visible), and the next flush retries them.
    pub async fn append(&self, records: &[Value]) -> Result<(), CatalogError> {
        self.append_to_memory(records)?;
        if self.durable_appends && !records.is_empty() {
            self.flush().await?;
        }
        Ok(())
    }

    fn append_to_memory(&self, records: &[Value]) -> Result<(), CatalogError> {
        if records.is_empty() {
            return Ok(());
        }
        // Encode before taking the lock so readers are not held up by it.
        let mut lines = Vec::new();
        for record in records {
            serde_json::to_writer(&mut lines, record).map_err(|source| CatalogError::Encode {
                what: format!("a record for log '{}'", self.dir),
                source,
            })?;
            lines.push(b'\n');
        }

        let mut state = self.lock_state();
        if state.buffer_count == 0 {
            state.buffer_first_seq = state.next_seq;
        }
        state.buffer.extend_from_slice(&lines);
        state.buffer_count += records.len() as u64;
        state.next_seq += records.len() as u64;
        // The caller keeps its slice, so the in-memory tail needs its own copy;
        // skip the records that would be evicted straight away.
        let keep = records.len().min(self.max_in_memory);
        state
            .tail
            .extend(records[records.len() - keep..].iter().cloned());
        let excess = state.tail.len().saturating_sub(self.max_in_memory);
        state.tail.drain(..excess);
        Ok(())
    }

    /// Writes everything appended since the last flush as one new segment.
    ///
    /// Does nothing if nothing is buffered. If a write fails, its records stay
    /// queued and the next flush retries the very same segment.
    pub async fn flush(&self) -> Result<(), CatalogError> {
        let _flushing = self.flushing.lock().await;
        let pending: Vec<Segment> = {
            let mut state = self.lock_state();
            if state.buffer_count > 0 {
                let segment = Segment {
                    first_seq: state.buffer_first_seq,
                    count: state.buffer_count,
                    bytes: Bytes::from(std::mem::take(&mut state.buffer)),
                };
                state.sealed.push_back(segment);
                state.buffer_count = 0;
                state.buffer_first_seq = state.next_seq;
            }
            // Bytes clones share the buffer; the copy lets us write unlocked.
            state.sealed.iter().cloned().collect()
        };

        for segment in pending {
            self.write_segment(&segment).await?;
            self.lock_state().sealed.pop_front();
        }
        Ok(())
    }

    /// Up to `limit` records matching `filter`, newest first, from the
    /// in-memory tail.
    ///
    /// `filter` runs under the log's lock, so keep it cheap.
    pub fn recent(&self, limit: usize, filter: impl Fn(&Value) -> bool) -> Vec<Value> {
        let state = self.lock_state();
        state
            .tail
            .iter()
            .rev()
            .filter(|record| filter(record))
            .take(limit)
            .cloned()
            .collect()
    }

    /// Total records ever appended, including those loaded from storage.
    pub fn len(&self) -> u64 {
        self.lock_state().next_seq
    }

    /// Whether the log has never had a record.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Records appended but not yet durably written.
    pub fn unflushed(&self) -> u64 {
        let state = self.lock_state();
        state.buffer_count + state.sealed.iter().map(|s| s.count).sum::<u64>()
    }

    /// Drops from memory the oldest records for which `expired` is true,
    /// stopping at the first that is not (records are kept in append order).
    /// Returns how many were dropped. Storage is untouched: see
    /// [`delete_old_segments`](Self::delete_old_segments).
    pub fn forget_oldest_while(&self, expired: impl Fn(&Value) -> bool) -> usize {
        let mut state = self.lock_state();
        let keep_from = state
            .tail
            .iter()
            .position(|record| !expired(record))
            .unwrap_or(state.tail.len());
        state.tail.drain(..keep_from);
        keep_from
    }

    /// Deletes stored segments that are old by time or by count: those last
    /// written before `written_before_ms` (Unix ms, the store's modification
    /// time), and those whose every record is older than the newest
    /// `keep_records`. The newest segment is always kept: its name carries
    /// the record count on. Returns the deleted paths.
    pub async fn delete_old_segments(
        &self,
        written_before_ms: i64,
        keep_records: u64,
    ) -> Result<Vec<Path>, CatalogError> {
        use object_store::ObjectStoreExt;
        let _flushing = self.flushing.lock().await;
        let keep_from_seq = self.len().saturating_sub(keep_records);
        let mut segments: Vec<(u64, object_store::ObjectMeta)> =
            list_all(self.store.as_ref(), &self.own_dir)
                .await?
                .into_iter()
                .filter_map(|object| {
                    // Only this writer's own segments.
                    let first_seq = direct_segment(&self.own_dir, &object.location)?;
                    Some((first_seq, object))
                })
                .collect();
        segments.sort_by_key(|(first_seq, _)| *first_seq);
        let mut deleted = Vec::new();
        for pair in segments.windows(2) {
            let [(_, object), (next_first_seq, _)] = pair else {
                continue;
            };
            let too_old = object.last_modified.timestamp_millis() < written_before_ms;
            let too_many = *next_first_seq <= keep_from_seq;
            if !(too_old || too_many) {
                continue;
            }
            match self.store.delete(&object.location).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {
                    deleted.push(object.location.clone())
                }
                Err(e) => return Err(CatalogError::store(&object.location, e)),
            }
        }
        Ok(deleted)
    }

    fn lock_state(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere cannot leave State half-updated in a way that
        // matters more than losing the log, so keep serving it.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    async fn write_segment(&self, segment: &Segment) -> Result<(), CatalogError> {
        let path = segment_path(&self.own_dir, segment.first_seq);
        match put_new(self.store.as_ref(), &path, segment.bytes.clone()).await {
            Ok(()) => Ok(()),
            Err(CatalogError::AlreadyExists { path: clash }) => {
                // An earlier attempt may have landed even though it reported
                // an error; identical content means this segment is done.
                let existing = get_bytes(self.store.as_ref(), &path).await?;
                if existing == segment.bytes {
                    Ok(())
                } else {
                    Err(CatalogError::AlreadyExists { path: clash })
                }
            }
            Err(e) => Err(e),
        }
    }
}

fn validate_name(name: &str) -> Result<(), CatalogError> {
    let valid = !name.is_empty()
        && name.len() <= MAX_NAME_CHARS
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if valid {
        Ok(())
    } else {
        Err(CatalogError::InvalidLogName {
            name: name.to_string(),
        })
    }
}

fn segment_path(dir: &Path, first_seq: u64) -> Path {
    dir.clone().join(format!("seg-{first_seq:012}.jsonl"))
}

fn parse_segment_name(file_name: &str) -> Option<u64> {
    let digits = file_name.strip_prefix("seg-")?.strip_suffix(".jsonl")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// A segment read back, its damage reported (and returned, for the audit
/// log); `None` when retention deleted it between the listing and the read.
fn read_segment(
    read: Result<Bytes, CatalogError>,
    path: &Path,
) -> Result<Option<(ParsedSegment, Option<DamagedFile>)>, CatalogError> {
    let bytes = match read {
        Ok(bytes) => bytes,
        Err(CatalogError::Store {
            source: object_store::Error::NotFound { .. },
            ..
        }) => return Ok(None),
        Err(e) => return Err(e),
    };
    let segment = parse_segment(&bytes);
    let damage = segment.damage(path).map(damage::report);
    Ok(Some((segment, damage)))
}

/// The newest segment directly in `dir`, if any.
async fn newest_segment(store: &dyn ObjectStore, dir: &Path) -> Result<Option<Path>, CatalogError> {
    Ok(list_all(store, dir)
        .await?
        .into_iter()
        .filter_map(|o| Some((direct_segment(dir, &o.location)?, o.location)))
        .max()
        .map(|(_, p)| p))
}

/// The sequence number of a segment directly in `dir` (not in a writer's
/// directory below it).
fn direct_segment(dir: &Path, location: &Path) -> Option<u64> {
    let mut parts = location.prefix_match(dir)?;
    let file = parts.next()?;
    if parts.next().is_some() {
        return None;
    }
    parse_segment_name(file.as_ref())
}

/// What [`load_tail`] found.
struct Loaded {
    /// The most recent records, oldest first.
    tail: VecDeque<Value>,
    /// The sequence number the next record gets.
    next_seq: u64,
    damaged: Vec<DamagedFile>,
}

/// Reads the newest segments until `max_in_memory` records are found.
///
/// The total record count comes from the newest segment's name and length,
/// without reading older segments. Damaged segments give their intact lines.
async fn load_tail(
    store: &dyn ObjectStore,
    dir: &Path,
    max_in_memory: usize,
) -> Result<Loaded, CatalogError> {
    let mut segments = Vec::new();
    for object in list_all(store, dir).await? {
        let parts: Vec<_> = match object.location.prefix_match(dir) {
            Some(parts) => parts.collect(),
            None => continue,
        };
        let first_seq = match parts.as_slice() {
            [file] => parse_segment_name(file.as_ref()),
            // Another writer's part (see `JsonLog::open_as`).
            [_, _] => continue,
            _ => None,
        };
        match first_seq {
            Some(first_seq) => segments.push((first_seq, object.location)),
            None => tracing::warn!(path = %object.location, "ignoring unexpected object in a log"),
        }
    }
    segments.sort_by_key(|(first_seq, _)| *first_seq);

    let mut next_seq = 0;
    // Newest segment first; each chunk keeps its records oldest first.
    let mut chunks: Vec<Vec<Value>> = Vec::new();
    let mut damaged = Vec::new();
    let mut loaded = 0;
    let mut expected_end = None;
    // Newest first, several reads in flight: a log written by durable
    // appends has one small segment per record.
    // Owned items: a closure over borrowed ones makes the future of every
    // caller (`run_until` under `tokio::spawn`) fail to be `Send`.
    let mut reads = futures::stream::iter(segments.into_iter().rev())
        .map(|(first_seq, path)| async move {
            let read = get_bytes(store, &path).await;
            (first_seq, path, read)
        })
        .buffered(SEGMENT_READS);
    while let Some((first_seq, path, read)) = reads.next().await {
        let Some((segment, damage)) = read_segment(read, &path)? else {
            continue;
        };
        damaged.extend(damage);
        // A bad line was a record once; an empty segment (cut off before
        // its first line reached disk) still used its name.
        let end = first_seq + segment.lines.max(1);
        match expected_end {
            // The newest segment fixes the total count.
            None => next_seq = end,
            Some(expected) if expected != end => tracing::warn!(
                path = %path,
                "log segment ends at record {end} but the next segment starts at {expected}"
            ),
            Some(_) => {}
        }
        expected_end = Some(first_seq);
        loaded += segment.records.len();
        chunks.push(segment.records);
        if loaded >= max_in_memory {
            break;
        }
    }

    let mut tail: VecDeque<Value> = chunks.into_iter().rev().flatten().collect();
    let excess = tail.len().saturating_sub(max_in_memory);
    tail.drain(..excess);
    Ok(Loaded {
        tail,
        next_seq,
        damaged,
    })
}

/// One segment's lines, decoded as far as they go.
struct ParsedSegment {
    records: Vec<Value>,
    /// Non-blank lines, intact or not.
    lines: u64,
    /// Line numbers (1-based) that are not JSON, with the first error.
    bad_lines: Vec<usize>,
    first_error: Option<String>,
}

impl ParsedSegment {
    fn damage(&self, path: &Path) -> Option<DamagedFile> {
        let first = self.bad_lines.first()?;
        let more = match self.bad_lines.len() {
            1 => String::new(),
            n => format!(" (and {} more lines)", n - 1),
        };
        Some(DamagedFile {
            path: path.to_string(),
            kind: "log segment",
            reason: format!(
                "line {first}: {}{more}",
                self.first_error.as_deref().unwrap_or("not JSON")
            ),
            outcome: format!(
                "kept {} intact records, skipped {} lines",
                self.records.len(),
                self.bad_lines.len()
            ),
        })
    }
}

fn parse_segment(bytes: &[u8]) -> ParsedSegment {
    let mut parsed = ParsedSegment {
        records: Vec::new(),
        lines: 0,
        bad_lines: Vec::new(),
        first_error: None,
    };
    for (number, line) in bytes.split(|b| *b == b'\n').enumerate() {
        if line.trim_ascii().is_empty() {
            continue;
        }
        parsed.lines += 1;
        match serde_json::from_slice(line) {
            Ok(record) => parsed.records.push(record),
            Err(e) => {
                parsed.first_error.get_or_insert_with(|| e.to_string());
                parsed.bad_lines.push(number + 1);
            }
        }
    }
    parsed
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::local::LocalFileSystem;
    use object_store::memory::InMemory;
    use object_store::ObjectStoreExt;
    use serde_json::json;

    #[tokio::test]
    async fn instances_write_their_own_parts_and_read_everyones_as_one_log() {
        let tmp = tempfile::tempdir().unwrap();
        let store: Arc<dyn ObjectStore> =
            Arc::new(LocalFileSystem::new_with_prefix(tmp.path()).unwrap());
        let open = |writer: Option<&'static str>| {
            let store = Arc::clone(&store);
            async move {
                JsonLog::open_as(store, Path::from("p"), "acks", 1000, writer)
                    .await
                    .unwrap()
            }
        };
        // A single server's records from before.
        let single = open(None).await;
        single.append(&records(0..2)).await.unwrap();
        single.flush().await.unwrap();
        drop(single);
        let a = open(Some("i0")).await;
        let b = open(Some("i1")).await;
        assert_eq!(
            a.recent(10, |_| true).len(),
            2,
            "the single server's part is read"
        );
        a.append(&records(10..13)).await.unwrap();
        a.flush().await.unwrap();
        b.append(&records(20..21)).await.unwrap();
        b.flush().await.unwrap();
        // Same sequence numbers, different names: no collision.
        assert_eq!(a.len(), 3);
        assert_eq!(b.len(), 1);
        assert_eq!(b.refresh().await.unwrap().len(), 3);
        assert_eq!(a.refresh().await.unwrap(), records(20..21));
        assert!(
            a.refresh().await.unwrap().is_empty(),
            "each segment is read once"
        );
        let seqs = |log: &JsonLog| {
            let mut s: Vec<u64> = log
                .recent(100, |_| true)
                .iter()
                .map(|r| r["seq"].as_u64().unwrap())
                .collect();
            s.sort();
            s
        };
        assert_eq!(seqs(&a), [0, 1, 10, 11, 12, 20]);
        assert_eq!(seqs(&a), seqs(&b));
        // A restarted instance continues its own numbering and reads the rest.
        drop(a);
        let a = open(Some("i0")).await;
        assert_eq!(a.len(), 3);
        assert_eq!(seqs(&a), [0, 1, 10, 11, 12, 20]);
        a.append(&records(13..14)).await.unwrap();
        a.flush().await.unwrap();
        b.refresh().await.unwrap();
        assert_eq!(seqs(&b), [0, 1, 10, 11, 12, 13, 20]);
        // A single server opened later (instances gone) reads every part.
        drop((a, b));
        let single = open(None).await;
        assert_eq!(seqs(&single), [0, 1, 10, 11, 12, 13, 20]);
        assert_eq!(single.len(), 2);
    }

    fn records(range: std::ops::Range<u64>) -> Vec<Value> {
        range
            .map(|i| json!({"seq": i, "even": i % 2 == 0}))
            .collect()
    }

    fn seqs(values: &[Value]) -> Vec<u64> {
        values.iter().filter_map(|v| v["seq"].as_u64()).collect()
    }

    async fn object_names(store: &dyn ObjectStore, dir: &str) -> Vec<String> {
        let mut names: Vec<String> = list_all(store, &Path::from(dir))
            .await
            .unwrap()
            .into_iter()
            .filter_map(|o| o.location.filename().map(str::to_string))
            .collect();
        names.sort();
        names
    }

    #[tokio::test]
    async fn appended_records_are_visible_newest_first_before_flush() {
        let log = JsonLog::open(Arc::new(InMemory::new()), Path::default(), "alerts")
            .await
            .unwrap();
        assert!(log.is_empty());
        log.append(&records(0..5)).await.unwrap();
        assert_eq!(seqs(&log.recent(10, |_| true)), vec![4, 3, 2, 1, 0]);
        assert_eq!(seqs(&log.recent(2, |_| true)), vec![4, 3]);
        let even = log.recent(10, |v| v["even"] == json!(true));
        assert_eq!(seqs(&even), vec![4, 2, 0]);
        assert_eq!(log.len(), 5);
        assert_eq!(log.unflushed(), 5);
    }

    #[tokio::test]
    async fn flush_writes_one_segment_named_after_its_first_record() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let log = JsonLog::open(store.clone(), Path::from("p"), "dead_letters")
            .await
            .unwrap();
        log.flush().await.unwrap();
        assert!(object_names(store.as_ref(), "p/dead_letters")
            .await
            .is_empty());

        log.append(&records(0..3)).await.unwrap();
        log.append(&records(3..4)).await.unwrap();
        log.flush().await.unwrap();
        log.flush().await.unwrap(); // nothing new: no empty segment
        log.append(&records(4..6)).await.unwrap();
        log.flush().await.unwrap();

        assert_eq!(
            object_names(store.as_ref(), "p/dead_letters").await,
            vec!["seg-000000000000.jsonl", "seg-000000000004.jsonl"]
        );
        assert_eq!(log.unflushed(), 0);
        let first = get_bytes(
            store.as_ref(),
            &Path::from("p/dead_letters/seg-000000000000.jsonl"),
        )
        .await
        .unwrap();
        assert_eq!(first.iter().filter(|b| **b == b'\n').count(), 4);
    }

    #[tokio::test]
    async fn records_come_back_after_reopening_a_local_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let open = || async {
            let store: Arc<dyn ObjectStore> =
                Arc::new(LocalFileSystem::new_with_prefix(tmp.path()).unwrap());
            JsonLog::open(store, Path::from("catalog"), "audit_log")
                .await
                .unwrap()
        };

        let log = open().await;
        log.append(&records(0..3)).await.unwrap();
        log.flush().await.unwrap();
        log.append(&records(3..7)).await.unwrap();
        log.flush().await.unwrap();
        log.append(&records(7..8)).await.unwrap(); // never flushed: lost
        drop(log);

        let log = open().await;
        assert_eq!(log.len(), 7);
        assert_eq!(seqs(&log.recent(100, |_| true)), vec![6, 5, 4, 3, 2, 1, 0]);

        // Appending continues the numbering, so no segment name is reused.
        log.append(&records(7..9)).await.unwrap();
        log.flush().await.unwrap();
        assert!(tmp
            .path()
            .join("catalog/audit_log/seg-000000000007.jsonl")
            .is_file());
        drop(log);
        assert_eq!(open().await.len(), 9);
    }

    #[tokio::test]
    async fn only_the_most_recent_records_stay_in_memory() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let log = JsonLog::open_with_limit(store.clone(), Path::default(), "alerts", 3)
            .await
            .unwrap();
        log.append(&records(0..2)).await.unwrap();
        log.flush().await.unwrap();
        log.append(&records(2..7)).await.unwrap();
        log.flush().await.unwrap();
        log.append(&records(7..9)).await.unwrap();
        log.flush().await.unwrap();
        assert_eq!(seqs(&log.recent(10, |_| true)), vec![8, 7, 6]);
        assert_eq!(log.len(), 9);

        for (limit, expected) in [
            (3, vec![8, 7, 6]),
            (0, vec![]),
            (100, (0..9).rev().collect()),
        ] {
            let reopened =
                JsonLog::open_with_limit(store.clone(), Path::default(), "alerts", limit)
                    .await
                    .unwrap();
            assert_eq!(reopened.len(), 9, "limit {limit}");
            assert_eq!(
                seqs(&reopened.recent(100, |_| true)),
                expected,
                "limit {limit}"
            );
        }
    }

    #[tokio::test]
    async fn a_second_writer_never_overwrites_a_segment() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let a = JsonLog::open(store.clone(), Path::default(), "alerts")
            .await
            .unwrap();
        let b = JsonLog::open(store.clone(), Path::default(), "alerts")
            .await
            .unwrap();

        // Identical content under the same name counts as already written,
        // which is what makes retrying a half-failed flush safe.
        a.append(&records(0..2)).await.unwrap();
        b.append(&records(0..2)).await.unwrap();
        a.flush().await.unwrap();
        b.flush().await.unwrap();

        a.append(&records(2..3)).await.unwrap();
        b.append(&records(10..11)).await.unwrap();
        a.flush().await.unwrap();
        let err = b.flush().await.unwrap_err();
        assert!(matches!(err, CatalogError::AlreadyExists { .. }), "{err}");
        assert_eq!(b.unflushed(), 1, "the failed segment stays queued");

        let kept = get_bytes(store.as_ref(), &Path::from("alerts/seg-000000000002.jsonl"))
            .await
            .unwrap();
        assert_eq!(seqs(&parse_segment(&kept).records), vec![2]);
    }

    #[tokio::test]
    async fn bad_log_names_are_rejected() {
        for name in ["", "Alerts", "a/b", "..", &"x".repeat(65)] {
            let err = JsonLog::open(Arc::new(InMemory::new()), Path::default(), name)
                .await
                .unwrap_err();
            assert!(
                matches!(err, CatalogError::InvalidLogName { .. }),
                "{name}: {err}"
            );
        }
    }

    #[tokio::test]
    async fn a_corrupt_line_is_skipped_and_reported_with_its_path_and_line() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let path = Path::from("alerts/seg-000000000000.jsonl");
        store
            .put(
                &path,
                "{\"seq\": 0}\nnot json\n{\"seq\": 2}\n{\"seq\": 3, \"ha".into(),
            )
            .await
            .unwrap();
        let before = damage::damaged_files();
        let log = JsonLog::open(store, Path::default(), "alerts")
            .await
            .unwrap();
        assert_eq!(seqs(&log.recent(10, |_| true)), vec![2, 0]);
        // The two bad lines were records: numbering goes on after them.
        assert_eq!(log.len(), 4);
        let damaged = log.damaged_files();
        assert_eq!(damaged.len(), 1);
        assert_eq!(damaged[0].path, "alerts/seg-000000000000.jsonl");
        assert!(
            damaged[0].reason.starts_with("line 2: "),
            "{:?}",
            damaged[0]
        );
        assert!(
            damaged[0].reason.contains("(and 1 more lines)"),
            "{:?}",
            damaged[0]
        );
        assert_eq!(damaged[0].outcome, "kept 2 intact records, skipped 2 lines");
        assert!(damage::damaged_files() > before);
    }

    #[tokio::test]
    async fn an_empty_newest_segment_does_not_block_the_next_flush() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let log = JsonLog::open(store.clone(), Path::default(), "acks")
            .await
            .unwrap();
        log.append(&records(0..3)).await.unwrap();
        log.flush().await.unwrap();
        // A power cut left the next segment's name with nothing in it.
        store
            .put(&Path::from("acks/seg-000000000003.jsonl"), "".into())
            .await
            .unwrap();
        let log = JsonLog::open(store.clone(), Path::default(), "acks")
            .await
            .unwrap();
        assert_eq!(log.len(), 4);
        log.append(&records(4..5)).await.unwrap();
        log.flush().await.unwrap();
        let log = JsonLog::open(store, Path::default(), "acks").await.unwrap();
        assert_eq!(seqs(&log.recent(10, |_| true)), vec![4, 2, 1, 0]);
        assert!(
            log.damaged_files().is_empty(),
            "an empty segment has no bad line"
        );
    }

    #[tokio::test]
    async fn durable_appends_are_written_before_append_returns() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let log = JsonLog::open(store.clone(), Path::default(), "acks")
            .await
            .unwrap()
            .with_durable_appends();
        log.append(&records(0..1)).await.unwrap();
        assert_eq!(log.unflushed(), 0);
        log.append(&records(1..3)).await.unwrap();
        assert_eq!(
            object_names(store.as_ref(), "acks").await,
            vec!["seg-000000000000.jsonl", "seg-000000000001.jsonl"]
        );
        // Nothing lost without a flush or a shutdown.
        let reopened = JsonLog::open(store, Path::default(), "acks").await.unwrap();
        assert_eq!(seqs(&reopened.recent(10, |_| true)), vec![2, 1, 0]);
    }

    #[tokio::test]
    async fn old_records_are_forgotten_and_old_segments_deleted_but_the_newest() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let log = JsonLog::open(store.clone(), Path::default(), "dead_letters")
            .await
            .unwrap();
        for range in [0..2, 2..4, 4..6] {
            log.append(&records(range)).await.unwrap();
            log.flush().await.unwrap();
        }
        assert_eq!(log.forget_oldest_while(|r| r["seq"].as_u64() < Some(3)), 3);
        assert_eq!(seqs(&log.recent(10, |_| true)), vec![5, 4, 3]);
        assert_eq!(log.forget_oldest_while(|r| r["even"] == json!(true)), 0);

        let future = chrono::Utc::now().timestamp_millis() + 60_000;
        let past = chrono::Utc::now().timestamp_millis() - 60_000;
        // By count: the newest 3 records are in segments 2.. and 4..
        let deleted = log.delete_old_segments(past, 3).await.unwrap();
        assert_eq!(
            deleted,
            vec![Path::from("dead_letters/seg-000000000000.jsonl")]
        );
        assert!(log.delete_old_segments(past, 3).await.unwrap().is_empty());
        // By time: everything was written before `future`, but the newest stays.
        let deleted = log.delete_old_segments(future, u64::MAX).await.unwrap();
        assert_eq!(deleted.len(), 1);
        assert_eq!(
            object_names(store.as_ref(), "dead_letters").await,
            vec!["seg-000000000004.jsonl"]
        );
        // Numbering carries on from the kept segment.
        let reopened = JsonLog::open(store, Path::default(), "dead_letters")
            .await
            .unwrap();
        assert_eq!(reopened.len(), 6);
    }

    #[tokio::test]
    async fn unrelated_objects_next_to_segments_are_ignored() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        store
            .put(&Path::from("alerts/README.txt"), "hello".into())
            .await
            .unwrap();
        let log = JsonLog::open(store, Path::default(), "alerts")
            .await
            .unwrap();
        assert!(log.is_empty());
    }
}
