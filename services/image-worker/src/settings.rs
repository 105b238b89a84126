//! The image worker's settings tree: the shared sections every worker has
//! (broker, consumer, idempotency, telemetry) plus `[image]` and
//! `[image.s3]` (the image store's section, shared with the gateway: see
//! `warren_store::ImageSettings`).
//!
//! Defaults come from [`Default`], then `warren.toml` (or `$WARREN_CONFIG`),
//! then `WARREN_IMAGE__MAX_PIXELS`-style environment variables; see
//! [`warren::settings::load`]. The S3 credentials are secrets: they never
//! show in `Debug` output.

use serde::{Deserialize, Serialize};
use warren::settings::{
    BrokerSettings, ConsumerSettings, IdempotencySettings, SettingsError, TelemetrySettings,
};
pub use warren_store::{ImageSettings, S3Settings, StoreKind};

/// Everything the image worker is configured with.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub broker: BrokerSettings,
    pub consumer: ConsumerSettings,
    pub idempotency: IdempotencySettings,
    pub telemetry: TelemetrySettings,
    /// `/metrics`, `/healthz`, `/readyz`; port 9402 by default.
    pub ops: warren::settings::OpsSettings,
    /// The Celery bridge and result backend (docs/celery.md).
    pub celery: warren::celery::CelerySettings,
    pub image: ImageSettings,
}

/// The image worker's default ops port.
pub const DEFAULT_OPS_PORT: u16 = 9402;

impl Default for Settings {
    fn default() -> Self {
        Self {
            broker: BrokerSettings::default(),
            consumer: ConsumerSettings::default(),
            idempotency: IdempotencySettings::default(),
            telemetry: TelemetrySettings::default(),
            ops: warren::settings::OpsSettings::on_port(DEFAULT_OPS_PORT),
            celery: warren::celery::CelerySettings::default(),
            image: ImageSettings::default(),
        }
    }
}

impl Settings {
    /// Loads the layered settings (defaults, file, environment).
    pub fn load() -> Result<Self, SettingsError> {
        warren::settings::load::<Self>()
    }

    /// The sections the shared runtime needs, for `warren::App`.
    pub fn worker(&self) -> warren::settings::WorkerSettings {
        warren::settings::WorkerSettings {
            broker: self.broker.clone(),
            consumer: self.consumer.clone(),
            idempotency: self.idempotency.clone(),
            telemetry: self.telemetry.clone(),
            ops: self.ops.clone(),
            celery: self.celery.clone(),
        }
    }
}

#[cfg(test)]
// A failing unwrap is how a test reports failure.
#[allow(clippy::unwrap_used)]
mod tests {
    use std::path::PathBuf;
    use std::time::Duration;

    use secrecy::{ExposeSecret, SecretString};

    use super::*;

    #[test]
    fn debug_output_hides_the_s3_credentials() {
        let mut settings = Settings::default();
        settings.image.s3.access_key_id = SecretString::from("AKIDEXAMPLE");
        settings.image.s3.secret_access_key = SecretString::from("hunter2");
        let shown = format!("{settings:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(!shown.contains("AKIDEXAMPLE"), "{shown}");
        assert!(shown.contains("secret_access_key: \"***\""), "{shown}");
    }

    #[test]
    fn defaults_survive_a_serialize_deserialize_round_trip() {
        // figment seeds its defaults by serializing `Settings::default()` and
        // reads them back through `Deserialize`, so both halves must agree.
        let mut original = Settings::default();
        original.image.s3.secret_access_key = SecretString::from("s3cret");
        let json = serde_json::to_value(&original).unwrap();
        let back: Settings = serde_json::from_value(json).unwrap();
        assert_eq!(back.image.s3.secret_access_key.expose_secret(), "s3cret");
        assert_eq!(back.image.store, StoreKind::Local);
        assert_eq!(back.image.local_root, PathBuf::from("./data"));
        assert_eq!(back.image.store_timeout, Duration::from_secs(30));
        assert_eq!(back.image.output_prefix, "thumbnails/{task_id}");
    }
}
