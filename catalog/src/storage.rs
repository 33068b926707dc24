//! Turns the storage location from the config file into an object store.
//!
//! Everything the catalog persists goes through [`object_store::ObjectStore`],
//! so a single string decides where it lands: a local directory by default,
//! memory for tests and demos, or S3 when the crate is built with the `aws`
//! feature. This module only opens stores; what is written into them belongs to
//! the modules that own each kind of data.
//!
//! A local directory is opened as a [`DurableLocalStore`]: every write is
//! flushed to disk (`fsync`) before it becomes visible and its directory entry
//! is flushed before the write returns, so rule files, logs, archive files and
//! checkpoints survive a power cut by construction. Object stores (S3) are
//! durable when a put returns; memory is never durable.

use std::fmt;
use std::future::Future;
use std::io::Write;
use std::ops::Range;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::BoxStream;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    ObjectStoreExt, PutMode, PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions,
    UploadPart,
};

use crate::CatalogError;

/// The locations this build understands, for error messages.
#[cfg(feature = "aws")]
const SUPPORTED: &str =
    "a local directory path, file:///<dir>, memory://[<prefix>], s3://<bucket>[/<prefix>]";
#[cfg(not(feature = "aws"))]
const SUPPORTED: &str = "a local directory path, file:///<dir>, memory://[<prefix>] \
     (s3:// needs wardwatch-catalog built with the `aws` feature)";

/// Opens the object store named by `location` and returns it with the prefix
/// under which the catalog should keep its data.
///
/// Accepted forms:
/// - a plain directory path (`./data`, `/var/lib/wardwatch`), created if missing;
/// - `file:///absolute/dir`, likewise created if missing;
/// - `memory://` or `memory://some/prefix`: a fresh, empty in-memory store
///   (each call returns a new one, so it does not survive a restart);
/// - `s3://bucket/prefix` (and `s3a://`) when built with the `aws` feature;
///   credentials and region come from the usual `AWS_*` environment variables.
///
/// Local stores are rooted at the directory, so the returned prefix is empty.
///
/// ```
/// let (store, prefix) = catalog::storage::open_store("memory://wardwatch").unwrap();
/// assert_eq!(prefix.as_ref(), "wardwatch");
/// # drop(store);
/// ```
pub fn open_store(location: &str) -> Result<(Arc<dyn ObjectStore>, Path), CatalogError> {
    let trimmed = location.trim();
    if trimmed.is_empty() {
        return Err(CatalogError::InvalidLocation {
            location: location.to_string(),
            reason: format!("the location is empty; expected {SUPPORTED}"),
        });
    }

    let Some((scheme, rest)) = trimmed.split_once("://") else {
        return open_local_dir(location, std::path::Path::new(trimmed));
    };

    match scheme.to_ascii_lowercase().as_str() {
        "file" => {
            let url = parse_url(location, trimmed)?;
            let dir = url
                .to_file_path()
                .map_err(|()| CatalogError::InvalidLocation {
                    location: location.to_string(),
                    reason: "a file:// URL must name an absolute local directory, \
                             e.g. file:///var/lib/wardwatch"
                        .to_string(),
                })?;
            open_local_dir(location, &dir)
        }
        "memory" => {
            let prefix = parse_prefix(location, rest.trim_matches('/'))?;
            Ok((Arc::new(InMemory::new()), prefix))
        }
        "s3" | "s3a" => open_s3(location, trimmed),
        other => Err(CatalogError::UnsupportedScheme {
            location: location.to_string(),
            scheme: other.to_string(),
            supported: SUPPORTED.to_string(),
        }),
    }
}

/// Creates `dir` if needed and roots a [`LocalFileSystem`] there.
fn open_local_dir(
    location: &str,
    dir: &std::path::Path,
) -> Result<(Arc<dyn ObjectStore>, Path), CatalogError> {
    std::fs::create_dir_all(dir).map_err(|e| CatalogError::InvalidLocation {
        location: location.to_string(),
        reason: format!("cannot create directory '{}': {e}", dir.display()),
    })?;
    let store = DurableLocalStore::new(dir).map_err(|e| CatalogError::store(dir.display(), e))?;
    Ok((Arc::new(store), Path::default()))
}

fn parse_url(location: &str, trimmed: &str) -> Result<url::Url, CatalogError> {
    url::Url::parse(trimmed).map_err(|e| CatalogError::InvalidLocation {
        location: location.to_string(),
        reason: format!("not a valid URL: {e}"),
    })
}

fn parse_prefix(location: &str, prefix: &str) -> Result<Path, CatalogError> {
    Path::parse(prefix).map_err(|e| CatalogError::InvalidLocation {
        location: location.to_string(),
        reason: format!("invalid prefix '{prefix}': {e}"),
    })
}

#[cfg(feature = "aws")]
fn open_s3(location: &str, trimmed: &str) -> Result<(Arc<dyn ObjectStore>, Path), CatalogError> {
    let url = parse_url(location, trimmed)?;
    // The builder behind `parse_url_opts` starts empty, so hand it the same
    // AWS_* variables `AmazonS3Builder::from_env` would read.
    let env = std::env::vars().filter(|(key, _)| key.starts_with("AWS_"));
    let (store, prefix) =
        object_store::parse_url_opts(&url, env).map_err(|e| CatalogError::store(location, e))?;
    Ok((Arc::from(store), prefix))
}

#[cfg(not(feature = "aws"))]
fn open_s3(location: &str, trimmed: &str) -> Result<(Arc<dyn ObjectStore>, Path), CatalogError> {
    let scheme = trimmed.split_once("://").map_or(trimmed, |(s, _)| s);
    Err(CatalogError::UnsupportedScheme {
        location: location.to_string(),
        scheme: scheme.to_string(),
        supported: SUPPORTED.to_string(),
    })
}

/// Writes `bytes` to `path` only if nothing is there yet.
///
/// Immutable objects (rule versions, log segments) go through here so an
/// existing object is never replaced; a clash surfaces as
/// [`CatalogError::AlreadyExists`].
pub(crate) async fn put_new(
    store: &dyn ObjectStore,
    path: &Path,
    bytes: bytes::Bytes,
) -> Result<(), CatalogError> {
    match store
        .put_opts(path, PutPayload::from(bytes), PutMode::Create.into())
        .await
    {
        Ok(_) => Ok(()),
        Err(object_store::Error::AlreadyExists { .. }) => Err(CatalogError::AlreadyExists {
            path: path.to_string(),
        }),
        Err(e) => Err(CatalogError::store(path, e)),
    }
}

/// Writes `bytes` to `path`, replacing whatever is there.
pub(crate) async fn put_overwrite(
    store: &dyn ObjectStore,
    path: &Path,
    bytes: bytes::Bytes,
) -> Result<(), CatalogError> {
    store
        .put_opts(path, PutPayload::from(bytes), PutMode::Overwrite.into())
        .await
        .map(|_| ())
        .map_err(|e| CatalogError::store(path, e))
}

/// Reads a whole object into memory.
pub(crate) async fn get_bytes(
    store: &dyn ObjectStore,
    path: &Path,
) -> Result<bytes::Bytes, CatalogError> {
    let result = store
        .get_opts(path, Default::default())
        .await
        .map_err(|e| CatalogError::store(path, e))?;
    result
        .bytes()
        .await
        .map_err(|e| CatalogError::store(path, e))
}

/// Every `*.json` object under `root` read as a `T`, for stores that keep
/// one small record per object (API keys, hospitals). An object that does
/// not decode is skipped and reported as damaged, of `kind`, with
/// `outcome` saying what skipping it means.
pub(crate) async fn list_json_records<T: serde::de::DeserializeOwned>(
    store: &dyn ObjectStore,
    root: &Path,
    kind: &'static str,
    outcome: &str,
) -> Result<(Vec<T>, Vec<crate::DamagedFile>), CatalogError> {
    let mut records = Vec::new();
    let mut damaged = Vec::new();
    for meta in list_all(store, root).await? {
        if meta.location.extension() != Some("json") {
            continue;
        }
        let bytes = get_bytes(store, &meta.location).await?;
        match serde_json::from_slice::<T>(&bytes) {
            Ok(record) => records.push(record),
            Err(e) => damaged.push(crate::damage::report(crate::DamagedFile {
                path: meta.location.to_string(),
                kind,
                reason: e.to_string(),
                outcome: outcome.to_string(),
            })),
        }
    }
    Ok((records, damaged))
}

/// The object at `path` read as a `T`; `None` if there is none.
pub(crate) async fn get_json<T: serde::de::DeserializeOwned>(
    store: &dyn ObjectStore,
    path: &Path,
) -> Result<Option<T>, CatalogError> {
    let bytes = match store.get_opts(path, Default::default()).await {
        Ok(got) => got
            .bytes()
            .await
            .map_err(|e| CatalogError::store(path, e))?,
        Err(object_store::Error::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(CatalogError::store(path, e)),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|source| CatalogError::Decode {
            path: path.to_string(),
            source,
        })
}

/// Lists every object under `prefix` (recursively).
pub(crate) async fn list_all(
    store: &dyn ObjectStore,
    prefix: &Path,
) -> Result<Vec<object_store::ObjectMeta>, CatalogError> {
    use futures::TryStreamExt;
    store
        .list(Some(prefix))
        .try_collect()
        .await
        .map_err(|e| CatalogError::store(prefix, e))
}

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

const DURABLE_STORE: &str = "DurableLocalStore";

/// A local directory whose writes are on disk when they return.
///
/// [`LocalFileSystem`] writes a staging file and renames it into place, so a
/// reader never sees half an object while the machine runs; but it flushes
/// nothing, so after a power cut a renamed file can be empty or partial. Here
/// a put writes the staging file, `fsync`s it, renames (or, for
/// [`PutMode::Create`], hard-links) it into place and then `fsync`s the
/// directory, and every directory it had to create, all on a blocking thread.
/// Multipart uploads, copies and renames flush the file and its directory
/// before they return.
///
/// Reads, listings and deletes are `LocalFileSystem`'s. Deletes are not
/// flushed: one lost in a power cut only brings back a file that was meant to
/// go (retention deletes it again). Staging files left by a crash are named
/// `{name}#{n}`, which listings ignore.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// use catalog::storage::DurableLocalStore;
/// use object_store::{path::Path, ObjectStoreExt};
///
/// let dir = tempfile::tempdir().unwrap();
/// let store = DurableLocalStore::new(dir.path()).unwrap();
/// store.put(&Path::from("rules/r1/rule.json"), "{}".into()).await.unwrap();
/// assert!(dir.path().join("rules/r1/rule.json").is_file());
/// # });
/// ```
#[derive(Debug)]
pub struct DurableLocalStore {
    inner: LocalFileSystem,
    root: PathBuf,
}

impl DurableLocalStore {
    /// Roots the store at `root`, which must exist.
    pub fn new(root: &std::path::Path) -> object_store::Result<Self> {
        Ok(Self {
            inner: LocalFileSystem::new_with_prefix(root)?,
            root: root.to_path_buf(),
        })
    }

    fn parent_of(&self, location: &Path) -> object_store::Result<(PathBuf, PathBuf)> {
        let file = self.inner.path_to_filesystem(location)?;
        let dir = file
            .parent()
            .map(std::path::Path::to_path_buf)
            .unwrap_or_else(|| self.root.clone());
        Ok((file, dir))
    }
}

impl fmt::Display for DurableLocalStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DurableLocalStore({})", self.root.display())
    }
}

// `ObjectStore` is declared with `#[async_trait]`; the workspace does not
// carry that crate, so these are the signatures it expands to.
impl ObjectStore for DurableLocalStore {
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
        Box::pin(async move {
            let create = match &opts.mode {
                PutMode::Overwrite => false,
                PutMode::Create => true,
                // Not supported on local disk: LocalFileSystem says so.
                PutMode::Update(_) => return self.inner.put_opts(location, payload, opts).await,
            };
            if !opts.attributes.is_empty() {
                return self.inner.put_opts(location, payload, opts).await;
            }
            let (file, dir) = self.parent_of(location)?;
            run_blocking(move || write_durably(&file, &dir, &payload, create)).await?;
            let meta = self.inner.head(location).await?;
            Ok(PutResult {
                e_tag: meta.e_tag,
                version: None,
            })
        })
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
        Box::pin(async move {
            let (file, dir) = self.parent_of(location)?;
            let new_dirs = dir.clone();
            run_blocking(move || create_dirs_durably(&new_dirs).map_err(io_error)).await?;
            let inner = self.inner.put_multipart_opts(location, opts).await?;
            Ok(Box::new(DurableUpload { inner, file, dir }) as Box<dyn MultipartUpload>)
        })
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
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list_with_offset(prefix, offset)
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
        self.inner.list_with_delimiter(prefix)
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
        Box::pin(async move {
            let (file, dir) = self.parent_of(to)?;
            let new_dirs = dir.clone();
            run_blocking(move || create_dirs_durably(&new_dirs).map_err(io_error)).await?;
            self.inner.copy_opts(from, to, options).await?;
            run_blocking(move || sync_file_and_dir(&file, &dir)).await
        })
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
        Box::pin(async move {
            let (_, from_dir) = self.parent_of(from)?;
            let (file, dir) = self.parent_of(to)?;
            let new_dirs = dir.clone();
            run_blocking(move || create_dirs_durably(&new_dirs).map_err(io_error)).await?;
            self.inner.rename_opts(from, to, options).await?;
            run_blocking(move || {
                sync_file_and_dir(&file, &dir)?;
                sync_dir(&from_dir).map_err(io_error)
            })
            .await
        })
    }
}

/// A [`LocalFileSystem`] multipart upload that flushes the file and its
/// directory when it completes.
#[derive(Debug)]
struct DurableUpload {
    inner: Box<dyn MultipartUpload>,
    file: PathBuf,
    dir: PathBuf,
}

impl MultipartUpload for DurableUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        self.inner.put_part(data)
    }

    fn complete<'a, 'c>(&'a mut self) -> BoxFuture<'c, object_store::Result<PutResult>>
    where
        'a: 'c,
        Self: 'c,
    {
        Box::pin(async move {
            let result = self.inner.complete().await?;
            let (file, dir) = (self.file.clone(), self.dir.clone());
            run_blocking(move || sync_file_and_dir(&file, &dir)).await?;
            Ok(result)
        })
    }

    fn abort<'a, 'c>(&'a mut self) -> BoxFuture<'c, object_store::Result<()>>
    where
        'a: 'c,
        Self: 'c,
    {
        self.inner.abort()
    }
}

/// Runs file-system work on a blocking thread when there is a runtime.
async fn run_blocking<T: Send + 'static>(
    work: impl FnOnce() -> object_store::Result<T> + Send + 'static,
) -> object_store::Result<T> {
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => {
            runtime
                .spawn_blocking(work)
                .await
                .map_err(|e| object_store::Error::Generic {
                    store: DURABLE_STORE,
                    source: Box::new(e),
                })?
        }
        Err(_) => work(),
    }
}

fn io_error(source: std::io::Error) -> object_store::Error {
    object_store::Error::Generic {
        store: DURABLE_STORE,
        source: Box::new(source),
    }
}

/// Writes `payload` to a staging file next to `file`, flushes it, puts it in
/// place (rename, or hard link when `create_only`, which fails if `file`
/// exists) and flushes the directory.
fn write_durably(
    file: &std::path::Path,
    dir: &std::path::Path,
    payload: &PutPayload,
    create_only: bool,
) -> object_store::Result<()> {
    create_dirs_durably(dir).map_err(io_error)?;
    let (mut staged, staging) = staging_file(file).map_err(io_error)?;
    let written = payload
        .iter()
        .try_for_each(|chunk| staged.write_all(chunk))
        .and_then(|()| staged.sync_all());
    drop(staged);
    let placed = written.and_then(|()| {
        if create_only {
            std::fs::hard_link(&staging, file)
        } else {
            std::fs::rename(&staging, file)
        }
    });
    if create_only || placed.is_err() {
        let _ = std::fs::remove_file(&staging); // the link, or the failure, leaves it behind
    }
    match placed {
        Ok(()) => sync_dir(dir).map_err(io_error),
        Err(source) if source.kind() == std::io::ErrorKind::AlreadyExists => {
            Err(object_store::Error::AlreadyExists {
                path: file.display().to_string(),
                source: Box::new(source),
            })
        }
        Err(source) => Err(io_error(source)),
    }
}

/// A new `{file}#{n}` to write into: the name LocalFileSystem gives staging
/// files, which its listings skip.
fn staging_file(file: &std::path::Path) -> std::io::Result<(std::fs::File, PathBuf)> {
    for n in 1u32.. {
        let mut name = file.as_os_str().to_owned();
        name.push(format!("#{n}"));
        let path = PathBuf::from(name);
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(staged) => return Ok((staged, path)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::other("no free staging file name"))
}

/// Creates `dir` and its missing ancestors, flushing each new entry into its
/// parent (a file in a directory whose own entry was lost is lost too).
fn create_dirs_durably(dir: &std::path::Path) -> std::io::Result<()> {
    let mut missing = Vec::new();
    let mut cursor = Some(dir);
    while let Some(d) = cursor {
        if d.is_dir() {
            break;
        }
        missing.push(d);
        cursor = d.parent();
    }
    if missing.is_empty() {
        return Ok(());
    }
    std::fs::create_dir_all(dir)?;
    for created in missing.iter().rev() {
        if let Some(parent) = created.parent() {
            sync_dir(parent)?;
        }
    }
    Ok(())
}

fn sync_file_and_dir(file: &std::path::Path, dir: &std::path::Path) -> object_store::Result<()> {
    std::fs::File::open(file)
        .and_then(|f| f.sync_all())
        .and_then(|()| sync_dir(dir))
        .map_err(io_error)
}

/// Flushes a directory's entries (new, renamed and linked names).
#[cfg(unix)]
fn sync_dir(dir: &std::path::Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Windows cannot open a directory as a file; its renames are journaled.
#[cfg(not(unix))]
fn sync_dir(_dir: &std::path::Path) -> std::io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::ObjectStoreExt;

    #[tokio::test]
    async fn plain_directory_is_created_and_used_as_root() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("nested").join("data");
        let (store, prefix) = open_store(dir.to_str().unwrap()).unwrap();
        assert!(dir.is_dir());
        assert!(prefix.is_root());

        let path = prefix.clone().join("hello.txt");
        store
            .put(&path, PutPayload::from_static(b"hi"))
            .await
            .unwrap();
        assert_eq!(std::fs::read(dir.join("hello.txt")).unwrap(), b"hi");
    }

    #[tokio::test]
    async fn file_url_opens_a_local_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("via-url");
        let url = url::Url::from_directory_path(&dir).unwrap();
        let (store, prefix) = open_store(url.as_str()).unwrap();
        assert!(dir.is_dir());

        store
            .put(&prefix.join("x.json"), PutPayload::from_static(b"{}"))
            .await
            .unwrap();
        assert!(dir.join("x.json").is_file());
    }

    #[test]
    fn memory_url_keeps_its_prefix() {
        let (_, prefix) = open_store("memory://").unwrap();
        assert!(prefix.is_root());
        let (_, prefix) = open_store("memory://ward/a/").unwrap();
        assert_eq!(prefix.as_ref(), "ward/a");
    }

    #[test]
    fn unknown_scheme_names_the_supported_ones() {
        let err = open_store("ftp://example.com/x").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("'ftp'"), "{msg}");
        assert!(msg.contains("memory://"), "{msg}");
        assert!(msg.contains("local directory"), "{msg}");
    }

    #[cfg(not(feature = "aws"))]
    #[test]
    fn s3_without_the_aws_feature_says_how_to_get_it() {
        let msg = open_store("s3://bucket/prefix").unwrap_err().to_string();
        assert!(msg.contains("`aws` feature"), "{msg}");
    }

    #[tokio::test]
    async fn put_new_never_overwrites() {
        let store = InMemory::new();
        let path = Path::from("a/b.json");
        put_new(&store, &path, bytes::Bytes::from_static(b"1"))
            .await
            .unwrap();
        let err = put_new(&store, &path, bytes::Bytes::from_static(b"2"))
            .await
            .unwrap_err();
        assert!(matches!(err, CatalogError::AlreadyExists { .. }), "{err}");
        assert_eq!(get_bytes(&store, &path).await.unwrap().as_ref(), b"1");
    }

    #[tokio::test]
    async fn a_local_directory_is_opened_as_a_durable_store() {
        let tmp = tempfile::tempdir().unwrap();
        let (store, _) = open_store(tmp.path().to_str().unwrap()).unwrap();
        assert!(
            store.to_string().starts_with("DurableLocalStore("),
            "{store}"
        );
    }

    #[tokio::test]
    async fn durable_puts_replace_create_and_leave_no_staging_files() {
        let tmp = tempfile::tempdir().unwrap();
        let store = DurableLocalStore::new(tmp.path()).unwrap();
        let path = Path::from("a/b/c/rule.json");

        let first = store
            .put(&path, PutPayload::from_static(b"one"))
            .await
            .unwrap();
        assert_eq!(first.e_tag, store.head(&path).await.unwrap().e_tag);
        store
            .put(
                &path,
                PutPayload::from_iter([Bytes::from_static(b"tw"), Bytes::from_static(b"o")]),
            )
            .await
            .unwrap();
        assert_eq!(
            std::fs::read(tmp.path().join("a/b/c/rule.json")).unwrap(),
            b"two"
        );

        put_new(
            &store,
            &Path::from("a/b/c/v1.json"),
            Bytes::from_static(b"v1"),
        )
        .await
        .unwrap();
        let err = put_new(
            &store,
            &Path::from("a/b/c/v1.json"),
            Bytes::from_static(b"x"),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, CatalogError::AlreadyExists { .. }), "{err}");
        assert_eq!(
            std::fs::read(tmp.path().join("a/b/c/v1.json")).unwrap(),
            b"v1"
        );

        let mut names: Vec<_> = std::fs::read_dir(tmp.path().join("a/b/c"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["rule.json", "v1.json"], "no staging file is left");
    }

    #[tokio::test]
    async fn staging_files_left_by_a_crash_are_not_listed() {
        let tmp = tempfile::tempdir().unwrap();
        let store = DurableLocalStore::new(tmp.path()).unwrap();
        store
            .put(
                &Path::from("logs/seg-000.jsonl"),
                PutPayload::from_static(b"{}"),
            )
            .await
            .unwrap();
        // What a power cut between write and rename leaves.
        std::fs::write(tmp.path().join("logs/seg-001.jsonl#1"), b"{\"half").unwrap();
        let listed = list_all(&store, &Path::from("logs")).await.unwrap();
        let names: Vec<_> = listed.iter().map(|o| o.location.to_string()).collect();
        assert_eq!(names, ["logs/seg-000.jsonl"]);
        // A later put of that name picks another staging file and succeeds.
        store
            .put(
                &Path::from("logs/seg-001.jsonl"),
                PutPayload::from_static(b"{}"),
            )
            .await
            .unwrap();
        assert_eq!(
            std::fs::read(tmp.path().join("logs/seg-001.jsonl")).unwrap(),
            b"{}"
        );
    }

    #[tokio::test]
    async fn multipart_uploads_copies_and_renames_land_whole() {
        let tmp = tempfile::tempdir().unwrap();
        let store = DurableLocalStore::new(tmp.path()).unwrap();
        let path = Path::from("archive/vitals/date=2026-01-01/hour=10/part.parquet");
        let mut upload = store.put_multipart(&path).await.unwrap();
        upload
            .put_part(PutPayload::from_static(b"PAR1"))
            .await
            .unwrap();
        upload
            .put_part(PutPayload::from_static(b"data"))
            .await
            .unwrap();
        upload.complete().await.unwrap();
        assert_eq!(
            get_bytes(&store, &path).await.unwrap().as_ref(),
            b"PAR1data"
        );

        let copy = Path::from("elsewhere/copy.parquet");
        store.copy(&path, &copy).await.unwrap();
        let moved = Path::from("moved/again.parquet");
        store.rename(&copy, &moved).await.unwrap();
        assert_eq!(
            get_bytes(&store, &moved).await.unwrap().as_ref(),
            b"PAR1data"
        );
        assert!(store.head(&copy).await.is_err());
    }

    #[test]
    fn empty_location_is_rejected() {
        let msg = open_store("  ").unwrap_err().to_string();
        assert!(msg.contains("empty"), "{msg}");
    }
}
