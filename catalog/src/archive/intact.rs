//! Keeping damaged archive files out of history queries.
//!
//! DataFusion's listing table fails a whole query on one unreadable file
//! ("Corrupt footer"), so one half-written Parquet file would make every
//! history query, replay and `GET /api/alerts` over its hour fail.
//! [`SkipDamagedParquet`] wraps the store the history session lists and
//! leaves out of every listing the `.parquet` files whose footer does not
//! decode, or whose column chunks lie outside the file. Each file is checked
//! once per (path, size, modification time): a footer read the first time it
//! is listed, a map lookup after that. A damaged file is reported to
//! [`crate::damage`] once per size it has.
//!
//! What it does not catch: a file whose footer is intact but whose data pages
//! are corrupt (a bit flip, not a cut-off write) still fails the query that
//! reads those pages.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::ops::Range;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    ObjectStoreExt, PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions,
};
use parquet::file::metadata::ParquetMetaDataReader;

use crate::damage::{self, DamagedFile};

/// Checked files remembered before the cache starts over (about 100 bytes
/// each); past it every file is checked again once.
const MAX_REMEMBERED: usize = 200_000;

/// Footers checked at once while a listing streams.
const CHECK_CONCURRENCY: usize = 8;

const FOOTER_TAIL: u64 = 8;
const MAGIC: &[u8; 4] = b"PAR1";

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// An object store whose listings leave out damaged Parquet files, see the
/// [module docs](self). Everything else is passed through.
pub struct SkipDamagedParquet {
    inner: Arc<dyn ObjectStore>,
    checked: Arc<Mutex<HashMap<Path, Checked>>>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
struct Checked {
    size: u64,
    modified_ms: i64,
    intact: bool,
}

impl SkipDamagedParquet {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn ObjectStore>) -> Self {
        Self {
            inner,
            checked: Arc::default(),
        }
    }

    /// Whether `store` is already one of these (so it is not wrapped twice).
    pub fn wraps(store: &dyn ObjectStore) -> bool {
        store.to_string().starts_with("SkipDamagedParquet(")
    }
}

impl fmt::Debug for SkipDamagedParquet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SkipDamagedParquet")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for SkipDamagedParquet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SkipDamagedParquet({})", self.inner)
    }
}

/// Whether a listed object may be listed: everything but damaged Parquet.
async fn keep(
    store: Arc<dyn ObjectStore>,
    checked: Arc<Mutex<HashMap<Path, Checked>>>,
    meta: &ObjectMeta,
) -> bool {
    if meta.location.extension() != Some("parquet") {
        return true;
    }
    let modified_ms = meta.last_modified.timestamp_millis();
    let known = lock(&checked).get(&meta.location).copied();
    if let Some(known) = known {
        if known.size == meta.size && known.modified_ms == modified_ms {
            return known.intact;
        }
    }
    let intact = match check_parquet_footer(store.as_ref(), meta).await {
        Ok(()) => true,
        // Gone since the listing (retention, resume): not damage.
        Err(FooterError::Gone) => return false,
        // Cannot tell (an I/O error): list it, check again next time.
        Err(FooterError::Unreadable(e)) => {
            tracing::warn!(path = %meta.location, error = %e, "cannot check an archive file");
            return true;
        }
        Err(FooterError::Damaged(reason)) => {
            damage::report(DamagedFile {
                path: meta.location.to_string(),
                kind: "archive file",
                reason,
                outcome: "left out of history queries, replays and the alert list".to_string(),
            });
            false
        }
    };
    let mut checked = lock(&checked);
    if checked.len() >= MAX_REMEMBERED {
        checked.clear();
    }
    checked.insert(
        meta.location.clone(),
        Checked {
            size: meta.size,
            modified_ms,
            intact,
        },
    );
    intact
}

fn lock(
    checked: &Mutex<HashMap<Path, Checked>>,
) -> std::sync::MutexGuard<'_, HashMap<Path, Checked>> {
    // A map of check results: one left half-updated by a panic is still usable.
    checked
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Why a Parquet file's footer could not be used.
#[derive(Debug)]
pub enum FooterError {
    /// The file is not there any more.
    Gone,
    /// The store could not be read; nothing is known about the file.
    Unreadable(object_store::Error),
    /// The file is there and is not a whole Parquet file.
    Damaged(String),
}

/// Reads and decodes the footer of the Parquet file `meta` names and checks
/// that every column chunk it describes lies inside the file.
pub async fn check_parquet_footer(
    store: &dyn ObjectStore,
    meta: &ObjectMeta,
) -> Result<(), FooterError> {
    let size = meta.size;
    let read = |range: Range<u64>| async move {
        store
            .get_range(&meta.location, range)
            .await
            .map_err(|e| match e {
                object_store::Error::NotFound { .. } => FooterError::Gone,
                e => FooterError::Unreadable(e),
            })
    };
    if size < 12 {
        return Err(FooterError::Damaged(format!(
            "{size} bytes: too short for a Parquet file (cut off while being written?)"
        )));
    }
    let tail = read(size - FOOTER_TAIL..size).await?;
    if &tail[4..8] != MAGIC {
        return Err(FooterError::Damaged(format!(
            "{size} bytes without the closing PAR1 magic: cut off while being written?"
        )));
    }
    let footer_len = u64::from(u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]));
    let data_end = size
        .checked_sub(FOOTER_TAIL + footer_len)
        .filter(|end| *end >= 4)
        .ok_or_else(|| {
            FooterError::Damaged(format!(
                "footer of {footer_len} bytes does not fit in a file of {size} bytes"
            ))
        })?;
    let footer = read(data_end..size - FOOTER_TAIL).await?;
    let metadata = ParquetMetaDataReader::decode_metadata(&footer)
        .map_err(|e| FooterError::Damaged(format!("footer does not decode: {e}")))?;
    for (g, group) in metadata.row_groups().iter().enumerate() {
        for column in group.columns() {
            let start = column
                .dictionary_page_offset()
                .unwrap_or_else(|| column.data_page_offset());
            let end = start.checked_add(column.compressed_size());
            let inside = start >= 4 && end.is_some_and(|end| (end as u64) <= data_end);
            if !inside {
                return Err(FooterError::Damaged(format!(
                    "row group {g}, column {}: bytes {start}..{end:?} are outside the data ({data_end} bytes)",
                    column.column_path()
                )));
            }
        }
    }
    Ok(())
}

impl fmt::Display for FooterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FooterError::Gone => f.write_str("the file is gone"),
            FooterError::Unreadable(e) => write!(f, "cannot read the file: {e}"),
            FooterError::Damaged(reason) => f.write_str(reason),
        }
    }
}

// `ObjectStore` is declared with `#[async_trait]`; the workspace does not
// carry that crate, so these are the signatures it expands to.
impl ObjectStore for SkipDamagedParquet {
    fn put_opts<'a, 'b, 'c>(
        &'a self,
        location: &'b Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> BoxFuture<'c, object_store::Result<PutResult>>
    where
        'a: 'c,
        'b: 'c,
        Self: 'c,
    {
        self.inner.put_opts(location, payload, opts)
    }

    fn put_multipart_opts<'a, 'b, 'c>(
        &'a self,
        location: &'b Path,
        opts: PutMultipartOptions,
    ) -> BoxFuture<'c, object_store::Result<Box<dyn MultipartUpload>>>
    where
        'a: 'c,
        'b: 'c,
        Self: 'c,
    {
        self.inner.put_multipart_opts(location, opts)
    }

    fn get_opts<'a, 'b, 'c>(
        &'a self,
        location: &'b Path,
        options: GetOptions,
    ) -> BoxFuture<'c, object_store::Result<GetResult>>
    where
        'a: 'c,
        'b: 'c,
        Self: 'c,
    {
        self.inner.get_opts(location, options)
    }

    fn get_ranges<'a, 'b, 'd, 'c>(
        &'a self,
        location: &'b Path,
        ranges: &'d [Range<u64>],
    ) -> BoxFuture<'c, object_store::Result<Vec<Bytes>>>
    where
        'a: 'c,
        'b: 'c,
        'd: 'c,
        Self: 'c,
    {
        self.inner.get_ranges(location, ranges)
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let (store, checked) = (Arc::clone(&self.inner), Arc::clone(&self.checked));
        self.inner
            .list(prefix)
            .map(move |item| {
                let (store, checked) = (Arc::clone(&store), Arc::clone(&checked));
                async move {
                    match item {
                        Ok(meta) => keep(store, checked, &meta).await.then_some(Ok(meta)),
                        Err(e) => Some(Err(e)),
                    }
                }
            })
            .buffered(CHECK_CONCURRENCY)
            .filter_map(futures::future::ready)
            .boxed()
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let (store, checked) = (Arc::clone(&self.inner), Arc::clone(&self.checked));
        self.inner
            .list_with_offset(prefix, offset)
            .map(move |item| {
                let (store, checked) = (Arc::clone(&store), Arc::clone(&checked));
                async move {
                    match item {
                        Ok(meta) => keep(store, checked, &meta).await.then_some(Ok(meta)),
                        Err(e) => Some(Err(e)),
                    }
                }
            })
            .buffered(CHECK_CONCURRENCY)
            .filter_map(futures::future::ready)
            .boxed()
    }

    fn list_with_delimiter<'a, 'b, 'c>(
        &'a self,
        prefix: Option<&'b Path>,
    ) -> BoxFuture<'c, object_store::Result<ListResult>>
    where
        'a: 'c,
        'b: 'c,
        Self: 'c,
    {
        Box::pin(async move {
            let mut listed = self.inner.list_with_delimiter(prefix).await?;
            let objects = std::mem::take(&mut listed.objects);
            listed.objects = futures::stream::iter(objects)
                .map(|meta| {
                    let (store, checked) = (Arc::clone(&self.inner), Arc::clone(&self.checked));
                    async move { keep(store, checked, &meta).await.then_some(meta) }
                })
                .buffered(CHECK_CONCURRENCY)
                .filter_map(futures::future::ready)
                .collect()
                .await;
            Ok(listed)
        })
    }

    fn copy_opts<'a, 'b, 'd, 'c>(
        &'a self,
        from: &'b Path,
        to: &'d Path,
        options: CopyOptions,
    ) -> BoxFuture<'c, object_store::Result<()>>
    where
        'a: 'c,
        'b: 'c,
        'd: 'c,
        Self: 'c,
    {
        self.inner.copy_opts(from, to, options)
    }

    fn rename_opts<'a, 'b, 'd, 'c>(
        &'a self,
        from: &'b Path,
        to: &'d Path,
        options: RenameOptions,
    ) -> BoxFuture<'c, object_store::Result<()>>
    where
        'a: 'c,
        'b: 'c,
        'd: 'c,
        Self: 'c,
    {
        self.inner.rename_opts(from, to, options)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;

    async fn parquet_file() -> Bytes {
        use crate::archive::sample;
        let batch = sample::vitals(&sample::times(sample::T0, 20, 1_000), 0);
        let mut out = Vec::new();
        let mut writer =
            parquet::arrow::ArrowWriter::try_new(&mut out, batch.schema(), None).unwrap();
        writer.write(&batch).unwrap();
        writer.close().unwrap();
        Bytes::from(out)
    }

    #[tokio::test]
    async fn damaged_parquet_files_are_left_out_of_listings_and_counted_once() {
        let raw: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let whole = parquet_file().await;
        raw.put(&Path::from("t/a.parquet"), whole.clone().into())
            .await
            .unwrap();
        raw.put(
            &Path::from("t/b.parquet"),
            whole.slice(..whole.len() / 2).into(),
        )
        .await
        .unwrap();
        raw.put(&Path::from("t/notes.txt"), "x".into())
            .await
            .unwrap();
        let store = SkipDamagedParquet::new(Arc::clone(&raw));
        assert!(SkipDamagedParquet::wraps(&store));
        assert!(!SkipDamagedParquet::wraps(raw.as_ref()));

        let before = damage::damaged_files();
        let names = |listed: Vec<ObjectMeta>| {
            let mut names: Vec<String> = listed.iter().map(|o| o.location.to_string()).collect();
            names.sort();
            names
        };
        let listed: Vec<ObjectMeta> = store
            .list(Some(&Path::from("t")))
            .map(Result::unwrap)
            .collect()
            .await;
        assert_eq!(names(listed), ["t/a.parquet", "t/notes.txt"]);
        let listed = store
            .list_with_delimiter(Some(&Path::from("t")))
            .await
            .unwrap()
            .objects;
        assert_eq!(names(listed), ["t/a.parquet", "t/notes.txt"]);
        // Checked once: the second listing used the cache.
        let counted = damage::damaged_files() - before;
        assert!(counted >= 1, "{counted}");

        // Rewritten whole, it is listed again.
        raw.put(&Path::from("t/b.parquet"), whole.into())
            .await
            .unwrap();
        let listed: Vec<ObjectMeta> = store
            .list(Some(&Path::from("t")))
            .map(Result::unwrap)
            .collect()
            .await;
        assert_eq!(listed.len(), 3);
    }

    #[tokio::test]
    async fn footer_checks_say_what_is_wrong() {
        let store = InMemory::new();
        let whole = parquet_file().await;
        let cases: Vec<(&str, Bytes, &str)> = vec![
            ("empty", Bytes::new(), "too short"),
            (
                "half",
                whole.slice(..whole.len() / 2),
                "without the closing PAR1",
            ),
            (
                "garbage footer",
                {
                    let mut bytes = whole.to_vec();
                    let n = bytes.len();
                    // Keep the length and magic, scramble the footer.
                    for b in &mut bytes[n - 40..n - 8] {
                        *b = 0xff;
                    }
                    Bytes::from(bytes)
                },
                "",
            ),
            (
                "huge footer length",
                {
                    let mut bytes = whole.to_vec();
                    let n = bytes.len();
                    bytes[n - 8..n - 4].copy_from_slice(&u32::MAX.to_le_bytes());
                    Bytes::from(bytes)
                },
                "does not fit",
            ),
        ];
        for (name, bytes, expected) in cases {
            let path = Path::from(format!("{name}.parquet"));
            store.put(&path, bytes.into()).await.unwrap();
            let meta = store.head(&path).await.unwrap();
            match check_parquet_footer(&store, &meta).await {
                Err(FooterError::Damaged(reason)) => {
                    assert!(reason.contains(expected), "{name}: {reason}")
                }
                other => panic!("{name}: {other:?}"),
            }
        }
        let path = Path::from("whole.parquet");
        store.put(&path, whole.into()).await.unwrap();
        let meta = store.head(&path).await.unwrap();
        assert!(check_parquet_footer(&store, &meta).await.is_ok());
    }
}
