//! One typed settings tree per service, layered: built-in defaults, then an
//! optional TOML file, then `WARREN_...` environment variables.
//!
//! Nested keys are separated by a double underscore in the environment:
//! `WARREN_BROKER__URL`, `WARREN_CONSUMER__PREFETCH`, `WARREN_EMAIL__SMTP__HOST`.
//! The file is `warren.toml` in the working directory if it exists, or the
//! path in `WARREN_CONFIG`. Secrets (the broker URL carries a password) are
//! wrapped so they never print in logs or `Debug` output.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Where the broker is and which namespace Warren's names live in.
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerSettings {
    /// AMQP URL, e.g. `amqp://guest:guest@127.0.0.1:5672/%2f`. Secret: it
    /// usually carries a password.
    #[serde(serialize_with = "serialize_secret")]
    pub url: SecretString,
    /// Prefix of every exchange and queue name (`warren.tasks`,
    /// `warren.email`, ...), so environments and tests share one broker.
    pub namespace: String,
    /// Upper bound of the reconnect backoff after the broker went away.
    #[serde(with = "humantime_serde")]
    pub reconnect_max_delay: Duration,
    /// How long to wait for the TCP and AMQP handshake.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
}

impl Default for BrokerSettings {
    fn default() -> Self {
        Self {
            url: SecretString::from("amqp://guest:guest@127.0.0.1:5672/%2f"),
            namespace: "warren".to_owned(),
            reconnect_max_delay: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
        }
    }
}

impl BrokerSettings {
    /// The URL with its password replaced, for logs.
    pub fn redacted_url(&self) -> String {
        redact_url(self.url.expose_secret())
    }
}

impl fmt::Debug for BrokerSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BrokerSettings")
            .field("url", &self.redacted_url())
            .field("namespace", &self.namespace)
            .field("reconnect_max_delay", &self.reconnect_max_delay)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

/// How a worker consumes its queue.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsumerSettings {
    /// AMQP prefetch (`basic.qos`): deliveries the broker hands this worker
    /// before it acks. Bounded so priorities work and replicas share load.
    pub prefetch: u16,
    /// Handlers running at once. At most `prefetch`.
    pub concurrency: usize,
    /// The retry ladder: one delay queue per rung. Attempt n (n >= 2) waits
    /// `retry_delays[n - 2]`, the last rung repeating if `max_attempts` asks
    /// for more attempts than there are rungs.
    #[serde(with = "duration_list")]
    pub retry_delays: Vec<Duration>,
    /// Attempts before a transient failure is dead-lettered (first try
    /// included). Defaults to one more than the rungs of the ladder.
    pub max_attempts: Option<u32>,
    /// A handler running longer than this is a failed (transient) attempt.
    #[serde(with = "humantime_serde")]
    pub task_timeout: Duration,
    /// On SIGTERM, how long in-flight tasks may take to finish before they are
    /// handed back to the broker.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// Emit task lifecycle events (started, retrying, succeeded,
    /// dead-lettered) to `{ns}.events`, for the gateway's status view.
    pub events: bool,
    /// Where the task types' rate limits (`TaskOptions::rate_limit`) are
    /// kept: `memory` (per replica) or `redis` (across replicas).
    pub rate_limit_backend: RateLimitBackend,
    /// Redis URL of the `redis` rate-limit backend (may carry a password).
    #[serde(serialize_with = "serialize_secret")]
    pub rate_limit_redis_url: SecretString,
}

/// Where the task types' rate limits are kept.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RateLimitBackend {
    /// In-process (governor): each replica starts at most the rate.
    Memory,
    /// A GCRA in Redis: all replicas together start at most the rate.
    Redis,
}

impl Default for ConsumerSettings {
    fn default() -> Self {
        Self {
            prefetch: 16,
            concurrency: 8,
            retry_delays: [1, 5, 30, 120, 600]
                .into_iter()
                .map(Duration::from_secs)
                .collect(),
            max_attempts: None,
            task_timeout: Duration::from_secs(120),
            shutdown_timeout: Duration::from_secs(30),
            events: true,
            rate_limit_backend: RateLimitBackend::Memory,
            rate_limit_redis_url: SecretString::from("redis://127.0.0.1:6379/0"),
        }
    }
}

impl ConsumerSettings {
    /// Attempts before a transient failure is dead-lettered.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
            .unwrap_or(self.retry_delays.len() as u32 + 1)
            .max(1)
    }
}

/// Which store remembers the ids of tasks that already succeeded.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum IdempotencyBackend {
    /// In-process: right for one replica.
    Memory,
    /// Redis: shared by every replica.
    Redis,
    /// No deduplication.
    Off,
}

#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdempotencySettings {
    pub backend: IdempotencyBackend,
    /// Redis URL (may carry a password).
    #[serde(serialize_with = "serialize_secret")]
    pub redis_url: SecretString,
    /// How long a succeeded task id is remembered.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    /// Most ids the in-process store keeps; the oldest are forgotten first.
    pub memory_capacity: usize,
}

impl Default for IdempotencySettings {
    fn default() -> Self {
        Self {
            backend: IdempotencyBackend::Memory,
            redis_url: SecretString::from("redis://127.0.0.1:6379/0"),
            ttl: Duration::from_secs(7 * 24 * 3600),
            memory_capacity: 100_000,
        }
    }
}

impl fmt::Debug for IdempotencySettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdempotencySettings")
            .field("backend", &self.backend)
            .field("redis_url", &redact_url(self.redis_url.expose_secret()))
            .field("ttl", &self.ttl)
            .field("memory_capacity", &self.memory_capacity)
            .finish()
    }
}

/// Where the ops endpoints (`/metrics`, `/healthz`, `/readyz`) listen.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct OpsSettings {
    /// `host:port`; port 0 picks a free one (logged at start-up).
    pub addr: String,
}

impl OpsSettings {
    /// All interfaces on `port`: each service has its own default so several
    /// run side by side on one host.
    pub fn on_port(port: u16) -> Self {
        Self {
            addr: format!("0.0.0.0:{port}"),
        }
    }
}

impl Default for OpsSettings {
    fn default() -> Self {
        Self::on_port(9400)
    }
}

/// Log output.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Json,
    Pretty,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetrySettings {
    /// `EnvFilter` directives; `RUST_LOG` wins when it is set.
    pub log_level: String,
    pub log_format: LogFormat,
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        Self {
            log_level: "info".to_owned(),
            log_format: LogFormat::Json,
        }
    }
}

/// The sections every worker has: what [`crate::App`] needs to run
/// workers. A custom worker with no settings of its own loads exactly
/// this (`[broker]`, `[consumer]`, `[idempotency]`, `[telemetry]`,
/// `[ops]`); a service with more sections keeps its own tree and hands
/// these over.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerSettings {
    /// Where the broker is.
    pub broker: BrokerSettings,
    /// How queues are consumed.
    pub consumer: ConsumerSettings,
    /// Which store remembers succeeded task ids.
    pub idempotency: IdempotencySettings,
    /// Logs and traces.
    pub telemetry: TelemetrySettings,
    /// `/metrics`, `/healthz`, `/readyz`; port 9400 by default.
    pub ops: OpsSettings,
}

impl WorkerSettings {
    /// Loads the layered settings (defaults, file, environment).
    pub fn load() -> Result<Self, SettingsError> {
        load::<Self>()
    }
}

/// Errors while loading settings.
#[derive(Debug, thiserror::Error)]
#[error("invalid settings: {0}")]
pub struct SettingsError(#[from] Box<figment::Error>);

/// Loads a service's settings: `T::default()`, then the TOML file
/// (`WARREN_CONFIG`, or `./warren.toml` if present), then `WARREN_*`
/// variables with `__` between nested keys.
pub fn load<T>() -> Result<T, SettingsError>
where
    T: DeserializeOwned + Serialize + Default,
{
    figment_for::<T>()
        .extract()
        .map_err(|e| SettingsError(Box::new(e)))
}

/// The figment behind [`load`], for services that add providers.
pub fn figment_for<T: Serialize + Default>() -> Figment {
    let file = std::env::var_os("WARREN_CONFIG")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("warren.toml"));
    Figment::from(Serialized::defaults(T::default()))
        .merge(Toml::file(file))
        .merge(Env::prefixed("WARREN_").split("__").ignore(&["config"]))
}

/// `["1s", "5s", "2m"]` <-> `Vec<Duration>`, for `#[serde(with = ...)]`
/// (the retry ladder here, a service's own duration lists).
pub mod duration_list {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(list: &[Duration], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(
            list.iter()
                .map(|d| humantime::format_duration(*d).to_string()),
        )
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<Duration>, D::Error> {
        let raw = Vec::<humantime_serde::Serde<Duration>>::deserialize(deserializer)?;
        Ok(raw.into_iter().map(|d| d.into_inner()).collect())
    }
}

/// Serializes a secret in clear: only used to seed figment's
/// defaults, whose value is then read back through `Deserialize`.
pub fn serialize_secret<S: serde::Serializer>(
    secret: &SecretString,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(secret.expose_secret())
}

/// Replaces the password of a URL with `***`.
pub fn redact_url(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut parsed) => {
            if parsed.password().is_some() {
                let _ = parsed.set_password(Some("***"));
            }
            parsed.to_string()
        }
        Err(_) => "<unparseable url>".to_owned(),
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail's closures return figment::Error
mod tests {
    use super::*;

    #[derive(Debug, Default, Deserialize, Serialize)]
    #[serde(default)]
    struct Svc {
        broker: BrokerSettings,
        consumer: ConsumerSettings,
    }

    #[test]
    fn env_overrides_file_overrides_defaults() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "warren.toml",
                "[broker]\nnamespace = \"fromfile\"\n[consumer]\nprefetch = 3\nretry_delays = [\"200ms\", \"1s\"]\n",
            )?;
            jail.set_env("WARREN_CONSUMER__PREFETCH", "7");
            let s: Svc = load().map_err(|e| e.to_string())?;
            assert_eq!(s.broker.namespace, "fromfile");
            assert_eq!(s.consumer.prefetch, 7);
            assert_eq!(
                s.consumer.retry_delays,
                vec![Duration::from_millis(200), Duration::from_secs(1)]
            );
            assert_eq!(s.consumer.max_attempts(), 3);
            Ok(())
        });
    }

    #[test]
    fn debug_output_hides_the_broker_password() {
        let s = BrokerSettings {
            url: SecretString::from("amqp://user:hunter2@rabbit:5672/%2f"),
            ..Default::default()
        };
        let shown = format!("{s:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("user:***@rabbit"), "{shown}");
    }

    #[test]
    fn unknown_keys_are_rejected() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("WARREN_CONSUMER__PREFETCHH", "7");
            let r: Result<Svc, _> = load();
            assert!(r.is_err());
            Ok(())
        });
    }
}
