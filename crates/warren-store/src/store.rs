//! Where sources are read and outputs written: an `object_store` behind one
//! small type, a local directory by default and an S3-compatible bucket in
//! production.
//!
//! Only a [`StoreKey`] reaches the store, so no key can leave the local
//! root or the bucket. Errors answer the runtime's one question: a missing
//! source will not appear by itself (permanent); an unreachable, slow or
//! failing store may heal (retry). Writes overwrite: a retried task
//! rewrites the same objects, and the local store writes each object to a
//! temporary file and renames it, so a reader never sees half an image.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::{Attribute, Attributes, ObjectStore, ObjectStoreExt, PutOptions, PutPayload};
use secrecy::ExposeSecret;
use warren::TaskError;
use warren_tasks::image::StoreKey;
use warren_tasks::image::kinds::{
    INVALID_KEY, SOURCE_NOT_FOUND, SOURCE_TOO_LARGE, STORE_UNAVAILABLE,
};

use crate::settings::{ImageSettings, StoreKind};

/// Start-up errors: the settings describe no usable store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("could not create the local store's root {}: {source}", path.display())]
    LocalRoot {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("could not open the local store at {}: {source}", path.display())]
    Local {
        path: PathBuf,
        #[source]
        source: object_store::Error,
    },
    #[error("image.s3.bucket must be set when image.store is s3")]
    MissingBucket,
    #[error("could not set up the S3 store for bucket {bucket}: {source}")]
    S3 {
        bucket: String,
        #[source]
        source: object_store::Error,
    },
}

/// The image store. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<dyn ObjectStore>,
    kind: StoreKind,
    timeout: Duration,
    /// Where it points, for logs (no credentials).
    location: String,
}

impl Store {
    /// The store `[image]` describes. For `local`, creates the root.
    pub fn from_settings(settings: &ImageSettings) -> Result<Self, StoreError> {
        match settings.store {
            StoreKind::Local => Self::local(&settings.local_root, settings.store_timeout),
            StoreKind::S3 => Self::s3(settings),
        }
    }

    /// A directory store rooted at `root` (created if missing).
    pub fn local(root: &Path, timeout: Duration) -> Result<Self, StoreError> {
        std::fs::create_dir_all(root).map_err(|source| StoreError::LocalRoot {
            path: root.to_owned(),
            source,
        })?;
        let fs = LocalFileSystem::new_with_prefix(root).map_err(|source| StoreError::Local {
            path: root.to_owned(),
            source,
        })?;
        Ok(Self {
            inner: Arc::new(fs),
            kind: StoreKind::Local,
            timeout,
            location: root.display().to_string(),
        })
    }

    fn s3(settings: &ImageSettings) -> Result<Self, StoreError> {
        let s3 = &settings.s3;
        if s3.bucket.is_empty() {
            return Err(StoreError::MissingBucket);
        }
        // reqwest is built without a bundled TLS crypto provider; ring is
        // the workspace's one. Err means one is installed already: fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(&s3.bucket)
            .with_region(&s3.region)
            .with_allow_http(s3.allow_http)
            .with_virtual_hosted_style_request(s3.virtual_hosted_style);
        if !s3.endpoint.is_empty() {
            builder = builder.with_endpoint(&s3.endpoint);
        }
        if !s3.access_key_id.expose_secret().is_empty() {
            builder = builder
                .with_access_key_id(s3.access_key_id.expose_secret())
                .with_secret_access_key(s3.secret_access_key.expose_secret());
        }
        let store = builder.build().map_err(|source| StoreError::S3 {
            bucket: s3.bucket.clone(),
            source,
        })?;
        let endpoint = if s3.endpoint.is_empty() {
            "aws"
        } else {
            s3.endpoint.as_str()
        };
        Ok(Self {
            inner: Arc::new(store),
            kind: StoreKind::S3,
            timeout: settings.store_timeout,
            location: format!("s3://{} ({endpoint})", s3.bucket),
        })
    }

    pub fn kind(&self) -> StoreKind {
        self.kind
    }

    /// Where the store points (a directory or `s3://bucket`), for logs.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// Reads a source object, refusing one over `max_bytes` before reading
    /// its body.
    pub async fn get(&self, key: &StoreKey, max_bytes: u64) -> Result<Vec<u8>, TaskError> {
        let path = path(key);
        let read = async {
            let result = self.inner.get(&path).await?;
            let size = result.meta.size;
            if size > max_bytes {
                return Ok(Err(TaskError::permanent(
                    SOURCE_TOO_LARGE,
                    format!(
                        "source {key} is {size} bytes, over image.max_source_bytes ({max_bytes})"
                    ),
                )));
            }
            Ok(Ok(Vec::from(result.bytes().await?)))
        };
        match tokio::time::timeout(self.timeout, read).await {
            Ok(Ok(result)) => result,
            Ok(Err(e)) => Err(read_error(key, e)),
            Err(_) => Err(self.timed_out("reading", key)),
        }
    }

    /// Writes (or overwrites) an object.
    pub async fn put(
        &self,
        key: &StoreKey,
        bytes: Vec<u8>,
        content_type: &'static str,
    ) -> Result<(), TaskError> {
        let mut options = PutOptions::default();
        // The local store keeps no attributes and refuses them.
        if self.kind != StoreKind::Local {
            let mut attributes = Attributes::new();
            attributes.insert(Attribute::ContentType, content_type.into());
            options.attributes = attributes;
        }
        let path = path(key);
        let write = self.inner.put_opts(&path, PutPayload::from(bytes), options);
        match tokio::time::timeout(self.timeout, write).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(write_error(key, e)),
            Err(_) => Err(self.timed_out("writing", key)),
        }
    }

    fn timed_out(&self, doing: &str, key: &StoreKey) -> TaskError {
        TaskError::retry(
            STORE_UNAVAILABLE,
            format!(
                "{doing} {key} took longer than image.store_timeout ({:?})",
                self.timeout
            ),
        )
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("kind", &self.kind)
            .field("location", &self.location)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// The key as the object store's path type. `StoreKey`'s rules are
/// stricter than `Path::parse`'s (a test holds them together), so the
/// fallback, which percent-encodes, is never taken.
fn path(key: &StoreKey) -> object_store::path::Path {
    object_store::path::Path::parse(key.as_str()).unwrap_or_else(|_| key.as_str().into())
}

fn read_error(key: &StoreKey, e: object_store::Error) -> TaskError {
    match e {
        object_store::Error::NotFound { .. } => TaskError::permanent(
            SOURCE_NOT_FOUND,
            format!("source {key} does not exist in the store"),
        ),
        object_store::Error::InvalidPath { source } => TaskError::permanent(
            INVALID_KEY,
            format!("the store refuses source key {key}: {source}"),
        ),
        other => TaskError::retry(STORE_UNAVAILABLE, format!("could not read {key}: {other}")),
    }
}

fn write_error(key: &StoreKey, e: object_store::Error) -> TaskError {
    match e {
        object_store::Error::InvalidPath { source } => TaskError::permanent(
            INVALID_KEY,
            format!("the store refuses output key {key}: {source}"),
        ),
        other => TaskError::retry(STORE_UNAVAILABLE, format!("could not write {key}: {other}")),
    }
}

#[cfg(test)]
// A failing unwrap is how a test reports failure.
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn key(k: &str) -> StoreKey {
        StoreKey::parse("k", k).unwrap()
    }

    #[test]
    fn every_key_the_contract_accepts_is_a_store_path_unchanged() {
        for k in [
            "cat.jpg",
            "uploads/a b/c.jpg",
            "unicodé/ünïcode.webp",
            "..hidden-but-not-a-dot-segment/x",
            "a%20b/{braces}/q?.png",
        ] {
            let parsed = object_store::path::Path::parse(key(k).as_str()).unwrap();
            assert_eq!(parsed.as_ref(), k);
            assert_eq!(path(&key(k)).as_ref(), k);
        }
    }

    #[tokio::test]
    async fn the_local_store_round_trips_and_stays_in_its_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let store = Store::local(&root, Duration::from_secs(5)).unwrap();
        store
            .put(&key("a/b/c.jpg"), b"hello".to_vec(), "image/jpeg")
            .await
            .unwrap();
        assert_eq!(std::fs::read(root.join("a/b/c.jpg")).unwrap(), b"hello");
        assert_eq!(store.get(&key("a/b/c.jpg"), 100).await.unwrap(), b"hello");
        // Overwrites in place.
        store
            .put(&key("a/b/c.jpg"), b"again".to_vec(), "image/jpeg")
            .await
            .unwrap();
        assert_eq!(store.get(&key("a/b/c.jpg"), 100).await.unwrap(), b"again");
        // Nothing was written outside the root.
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "only the root"
        );
    }

    #[tokio::test]
    async fn missing_sources_are_permanent_and_big_ones_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::local(dir.path(), Duration::from_secs(5)).unwrap();
        let e = store.get(&key("nope.jpg"), 100).await.unwrap_err();
        assert_eq!(e.kind, SOURCE_NOT_FOUND);
        assert!(e.is_permanent());
        std::fs::write(dir.path().join("big.jpg"), vec![0u8; 101]).unwrap();
        let e = store.get(&key("big.jpg"), 100).await.unwrap_err();
        assert_eq!(e.kind, SOURCE_TOO_LARGE);
    }

    #[tokio::test]
    async fn an_unwritable_destination_is_retried() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::local(dir.path(), Duration::from_secs(5)).unwrap();
        // A file where a directory should be: as a full or read-only disk,
        // a failure an operator can fix.
        std::fs::write(dir.path().join("blocked"), b"").unwrap();
        let e = store
            .put(&key("blocked/x.jpg"), b"x".to_vec(), "image/jpeg")
            .await
            .unwrap_err();
        assert_eq!(e.kind, STORE_UNAVAILABLE, "{}", e.message);
        assert!(!e.is_permanent());
    }

    #[test]
    fn s3_needs_a_bucket_and_builds_without_network() {
        let mut settings = ImageSettings {
            store: StoreKind::S3,
            ..ImageSettings::default()
        };
        assert!(matches!(
            Store::from_settings(&settings),
            Err(StoreError::MissingBucket)
        ));
        settings.s3.bucket = "thumbs".to_owned();
        settings.s3.endpoint = "http://127.0.0.1:9".to_owned();
        settings.s3.allow_http = true;
        let store = Store::from_settings(&settings).unwrap();
        assert_eq!(store.kind(), StoreKind::S3);
        assert!(store.location().contains("thumbs"));
    }
}
