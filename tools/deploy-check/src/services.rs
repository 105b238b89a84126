//! The four Warren services as the deploy files name them, and each one's
//! settings loaded by its own loader from exactly the environment a
//! container would get.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, anyhow};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::repo::{process_lock, read};

/// A Warren service: its package, binary, compose service, Kubernetes
/// Deployment and Dockerfile target all carry this one name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Service {
    EmailWorker,
    ImageWorker,
    Gateway,
    Conductor,
}

impl Service {
    pub const ALL: [Service; 4] = [
        Service::EmailWorker,
        Service::ImageWorker,
        Service::Gateway,
        Service::Conductor,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Service::EmailWorker => "email-worker",
            Service::ImageWorker => "image-worker",
            Service::Gateway => "gateway",
            Service::Conductor => "conductor",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }

    /// The stem of the work queue a worker consumes (`{ns}.{stem}`), as its
    /// `main.rs` passes it to `Worker::new`; `None` for the gateway and the
    /// conductor.
    pub fn queue_stem(self) -> Option<&'static str> {
        match self {
            Service::EmailWorker => Some("email"),
            Service::ImageWorker => Some("image"),
            Service::Gateway | Service::Conductor => None,
        }
    }

    /// The settings this service would run with, given exactly `env` as its
    /// environment: loaded by `warren::settings::load`, as its `main.rs`
    /// does, so an unknown `WARREN_*` variable or a value that does not
    /// parse is the same error the service would stop with.
    pub fn load_settings(self, env: &BTreeMap<String, String>) -> anyhow::Result<Settings> {
        match self {
            Service::EmailWorker => load::<email_worker::Settings>(env),
            Service::ImageWorker => load::<image_worker::Settings>(env),
            Service::Gateway => load::<gateway::Settings>(env),
            Service::Conductor => load::<conductor::Settings>(env),
        }
        .with_context(|| format!("{} does not accept these settings", self.name()))
    }
}

#[allow(clippy::result_large_err)] // figment::Jail's closures return figment::Error
fn load<T>(env: &BTreeMap<String, String>) -> anyhow::Result<Settings>
where
    T: DeserializeOwned + serde::Serialize + Default,
{
    let _guard = process_lock();
    let mut loaded = Err(anyhow!("the settings were not loaded"));
    figment::Jail::try_with(|jail| {
        jail.clear_env();
        // No settings file: the deploy files configure through the
        // environment alone.
        let no_file = jail.directory().join("absent.toml");
        jail.set_env("WARREN_CONFIG", no_file.display());
        for (key, value) in env {
            jail.set_env(key, value);
        }
        loaded = warren::settings::load::<T>()
            .map_err(|e| anyhow!("{e}"))
            .and_then(|s| serde_json::to_value(s).map_err(Into::into))
            .map(Settings);
        Ok(())
    })
    .map_err(|e| anyhow!("figment jail: {e}"))?;
    loaded
}

/// A service's loaded settings, serialized back (durations as `30s`).
#[derive(Debug, Clone, PartialEq)]
pub struct Settings(pub Value);

impl Settings {
    /// The value at `path` (`consumer.shutdown_timeout`), if the service
    /// has that setting.
    pub fn get(&self, path: &str) -> Option<&Value> {
        path.split('.').try_fold(&self.0, |v, key| v.get(key))
    }

    pub fn str(&self, path: &str) -> anyhow::Result<&str> {
        self.get(path)
            .and_then(Value::as_str)
            .with_context(|| format!("no string setting {path}"))
    }

    pub fn duration(&self, path: &str) -> anyhow::Result<Duration> {
        humantime::parse_duration(self.str(path)?)
            .with_context(|| format!("setting {path} is not a duration"))
    }

    /// The port of a `host:port` setting (`ops.addr`, `http.addr`).
    pub fn port(&self, path: &str) -> anyhow::Result<u16> {
        let addr = self.str(path)?;
        addr.rsplit_once(':')
            .and_then(|(_, port)| port.parse().ok())
            .with_context(|| format!("setting {path} = {addr:?} has no port"))
    }
}

/// Environment variables Warren reads that are not `WARREN_*` settings:
/// `RUST_LOG` (tracing's `EnvFilter`) and the OpenTelemetry exporter's,
/// as long as `shared/src/telemetry.rs` still reads or documents them.
pub fn known_non_setting_variable(name: &str) -> bool {
    if name == "RUST_LOG" {
        return true;
    }
    // Read in the code ("NAME") or documented as honoured there (`NAME`).
    let telemetry = read("shared/src/telemetry.rs");
    name.starts_with("OTEL_")
        && (telemetry.contains(&format!("\"{name}\"")) || telemetry.contains(&format!("`{name}`")))
}
