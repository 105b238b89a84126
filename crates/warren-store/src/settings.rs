//! `[image]`: the store, the limits every source and output is checked
//! against, and the defaults of `image.thumbnail` tasks. The image worker
//! and the gateway read the same section, so uploads land where the worker
//! looks and tasks are checked against the worker's limits. The S3
//! credentials are secrets: they never show in `Debug` output.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

/// Where sources are read from and outputs written to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// A directory on this machine, `local_root`. The default.
    #[default]
    Local,
    /// An S3-compatible bucket, `[image.s3]`.
    S3,
}

impl StoreKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StoreKind::Local => "local",
            StoreKind::S3 => "s3",
        }
    }
}

/// `[image]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImageSettings {
    pub store: StoreKind,
    /// Root directory of the `local` store; created at start-up. Every key
    /// is relative to it and can never leave it.
    pub local_root: PathBuf,
    /// Where a task's outputs go when it names no `destination_prefix`.
    /// `{task_id}` is replaced by the task id (made safe as one key
    /// segment), so a retried or redelivered task overwrites its own
    /// objects. Must contain `{task_id}`.
    pub output_prefix: String,
    /// Quality (1-100) of lossy outputs that name none.
    pub default_quality: u8,
    /// Colour (`#rrggbb`) behind transparent pixels when the output format
    /// has no alpha (JPEG) and the task names none.
    pub default_background: String,
    /// Widest source (after reading its header, before decoding) or output.
    pub max_width: u32,
    /// Tallest source or output.
    pub max_height: u32,
    /// Most pixels (width x height) of a source or output.
    pub max_pixels: u64,
    /// Most bytes a decoder may allocate for one image.
    pub max_alloc_bytes: u64,
    /// Largest source object read from the store.
    pub max_source_bytes: u64,
    /// Largest inline (`source.base64`) source, decoded.
    pub max_inline_bytes: usize,
    /// Threads that decode, resize and encode; 0 means one per core.
    /// Also the number of images held decoded in memory at once.
    pub threads: usize,
    /// Bound on one read or write of the store.
    #[serde(with = "humantime_serde")]
    pub store_timeout: Duration,
    pub s3: S3Settings,
}

impl Default for ImageSettings {
    fn default() -> Self {
        Self {
            store: StoreKind::Local,
            local_root: PathBuf::from("./data"),
            output_prefix: "thumbnails/{task_id}".to_owned(),
            default_quality: 85,
            default_background: "#ffffff".to_owned(),
            max_width: 20_000,
            max_height: 20_000,
            max_pixels: 60_000_000,
            max_alloc_bytes: 512 * 1024 * 1024,
            max_source_bytes: 64 * 1024 * 1024,
            max_inline_bytes: 1024 * 1024,
            threads: 0,
            store_timeout: Duration::from_secs(30),
            s3: S3Settings::default(),
        }
    }
}

/// `[image.s3]`: an S3-compatible bucket (AWS, MinIO, Ceph, R2, ...).
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct S3Settings {
    pub bucket: String,
    pub region: String,
    /// For S3-compatible services, e.g. `http://127.0.0.1:9000`; empty means
    /// AWS itself.
    pub endpoint: String,
    /// Secret. Empty: taken from the usual AWS sources (environment,
    /// instance metadata).
    #[serde(with = "warren::settings::secret")]
    pub access_key_id: SecretString,
    /// Secret. From the environment (`WARREN_IMAGE__S3__SECRET_ACCESS_KEY`),
    /// not from a file in the repository.
    #[serde(with = "warren::settings::secret")]
    pub secret_access_key: SecretString,
    /// Allow a plain-HTTP `endpoint` (a local MinIO).
    pub allow_http: bool,
    /// Path-style (`endpoint/bucket/key`) unless this is set.
    pub virtual_hosted_style: bool,
}

impl Default for S3Settings {
    fn default() -> Self {
        Self {
            bucket: String::new(),
            region: "us-east-1".to_owned(),
            endpoint: String::new(),
            access_key_id: SecretString::from(""),
            secret_access_key: SecretString::from(""),
            allow_http: false,
            virtual_hosted_style: false,
        }
    }
}

impl fmt::Debug for S3Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Say whether a credential is set, never what it is.
        let shown = |s: &SecretString| {
            if s.expose_secret().is_empty() {
                "<unset>"
            } else {
                "***"
            }
        };
        f.debug_struct("S3Settings")
            .field("bucket", &self.bucket)
            .field("region", &self.region)
            .field("endpoint", &self.endpoint)
            .field("access_key_id", &shown(&self.access_key_id))
            .field("secret_access_key", &shown(&self.secret_access_key))
            .field("allow_http", &self.allow_http)
            .field("virtual_hosted_style", &self.virtual_hosted_style)
            .finish()
    }
}

#[cfg(test)]
// A failing unwrap is how a test reports failure.
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn store_kinds_parse_and_unknown_keys_are_rejected() {
        let image: ImageSettings = serde_json::from_value(serde_json::json!({
            "store": "s3",
            "s3": {"bucket": "thumbs", "endpoint": "http://127.0.0.1:9000", "allow_http": true},
        }))
        .unwrap();
        assert_eq!(image.store, StoreKind::S3);
        assert_eq!(image.s3.bucket, "thumbs");
        let typo: Result<ImageSettings, _> =
            serde_json::from_value(serde_json::json!({ "max_pixel": 1 }));
        assert!(typo.is_err());
    }

    #[test]
    fn debug_output_hides_the_s3_credentials() {
        let s3 = S3Settings {
            access_key_id: SecretString::from("AKIDEXAMPLE"),
            secret_access_key: SecretString::from("hunter2"),
            ..S3Settings::default()
        };
        let shown = format!("{s3:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("AKIDEXAMPLE"),
            "{shown}"
        );
        assert!(shown.contains("secret_access_key: \"***\""), "{shown}");
    }
}
