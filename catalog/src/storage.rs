//! Turns the storage location from the config file into an object store.
//!
//! Everything the catalog persists goes through [`object_store::ObjectStore`],
//! so a single string decides where it lands: a local directory by default,
//! memory for tests and demos, or S3 when the crate is built with the `aws`
//! feature. This module only opens stores; what is written into them belongs to
//! the modules that own each kind of data.

use std::sync::Arc;

use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ObjectStore, PutMode, PutPayload};

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
    let store =
        LocalFileSystem::new_with_prefix(dir).map_err(|e| CatalogError::store(dir.display(), e))?;
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

    #[test]
    fn empty_location_is_rejected() {
        let msg = open_store("  ").unwrap_err().to_string();
        assert!(msg.contains("empty"), "{msg}");
    }
}
