//! One typed settings tree per service, layered: built-in defaults, then an
//! optional TOML file, then `WARREN_...` environment variables.
//!
//! Nested keys are separated by a double underscore in the environment:
//! `WARREN_BROKER__URL`, `WARREN_CONSUMER__PREFETCH`, `WARREN_EMAIL__SMTP__HOST`.
//! The file is `warren.toml` in the working directory if it exists, or the
//! path in `WARREN_CONFIG`. Secrets (the broker URL carries a password) are
//! wrapped so they never print in logs or `Debug` output, and never in a
//! settings error either: a secret accepts any scalar (`123456789`, `true`,
//! a URL), and a value it refuses is named by its key and type alone.
//!
//! An environment variable is read as the type its setting has: a setting
//! whose default is a string (a URL, a password, a name, a duration) takes
//! the variable's text as it is, so `WARREN_EMAIL__SMTP__PASSWORD=0123`
//! is the password `0123`, not the number 123.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Where the broker is and which namespace Warren's names live in.
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerSettings {
    /// AMQP URL, e.g. `amqp://guest:guest@127.0.0.1:5672/%2f`, or several
    /// separated by commas (the nodes of a cluster:
    /// `amqp://u:p@rabbit-1:5672/%2f,amqp://u:p@rabbit-2:5672/%2f`). A
    /// connection goes to the first that answers, starting from the one
    /// that answered last; see [`BrokerSettings::addresses`]. Secret: it
    /// usually carries a password (a comma in a password is written `%2C`).
    #[serde(with = "secret")]
    pub url: SecretString,
    /// Prefix of every exchange and queue name (`warren.tasks`,
    /// `warren.email`, ...), so environments and tests share one broker.
    pub namespace: String,
    /// The prefix of a delay cascade shared with other namespaces of the
    /// virtual host (`{delay_cascade}.delay.00` ...). Empty (the default):
    /// the namespace has a cascade of its own. Every process of a namespace
    /// must agree on it; see docs/contract.md, "Delays of any length".
    pub delay_cascade: String,
    /// Upper bound of the reconnect backoff after the broker went away.
    #[serde(with = "humantime_serde")]
    pub reconnect_max_delay: Duration,
    /// How long to wait for the TCP and AMQP handshake.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// RabbitMQ's management HTTP API, read by the `warren` CLI (queues,
    /// topology verify). Its user and password are the URL's, else those
    /// of `url`. Secret: it may carry a password. The services ignore it.
    #[serde(with = "secret")]
    pub management_url: SecretString,
    /// The type of the namespace's work queues, parking lots and retry
    /// queues: `classic` (the default) or `quorum` (durable, replicated
    /// across a cluster's nodes, with a broker-side delivery limit and
    /// at-least-once dead-lettering). Every process of a namespace must
    /// agree; switching an existing namespace is refused at start-up (see
    /// docs/operations.md, "Queue types").
    pub queue_type: QueueType,
    /// Deliveries of one attempt that never settled (the worker process
    /// died: an abort, an out-of-memory kill) before the task is parked
    /// with the reason `delivery_limit`. Counted by the broker on quorum
    /// queues (`x-delivery-limit`), by the Redis idempotency store on
    /// classic ones; not counted with the `memory` store. 0: no limit.
    pub delivery_limit: u32,
}

/// The type of a namespace's queues (`broker.queue_type`).
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum QueueType {
    /// Classic queues on one node, with priorities (`x-max-priority`).
    #[default]
    Classic,
    /// Quorum queues: replicated, `x-delivery-limit`, at-least-once
    /// dead-lettering. No priorities before RabbitMQ 4.0.
    Quorum,
}

impl QueueType {
    /// `classic` or `quorum`, as settings and RabbitMQ name it.
    pub fn as_str(self) -> &'static str {
        match self {
            QueueType::Classic => "classic",
            QueueType::Quorum => "quorum",
        }
    }
}

impl Default for BrokerSettings {
    fn default() -> Self {
        Self {
            url: SecretString::from("amqp://guest:guest@127.0.0.1:5672/%2f"),
            namespace: "warren".to_owned(),
            delay_cascade: String::new(),
            reconnect_max_delay: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            management_url: SecretString::from("http://127.0.0.1:15672"),
            queue_type: QueueType::Classic,
            delivery_limit: 5,
        }
    }
}

impl BrokerSettings {
    /// The broker names of this namespace, on its delay cascade.
    pub fn names(&self) -> crate::contract::Names {
        crate::contract::Names::new(&self.namespace).with_delay_cascade(&self.delay_cascade)
    }

    /// The kind of queues this namespace declares: its type and, for
    /// quorum queues, the broker's delivery limit.
    pub fn queue_kind(&self) -> crate::topology::QueueKind {
        match self.queue_type {
            QueueType::Classic => crate::topology::QueueKind::Classic,
            QueueType::Quorum => crate::topology::QueueKind::Quorum {
                delivery_limit: self.delivery_limit,
            },
        }
    }

    /// The broker addresses of `url`, in order: one, or a cluster's nodes
    /// separated by commas (blanks around them ignored).
    ///
    /// ```
    /// use secrecy::{ExposeSecret, SecretString};
    /// let settings = warren::settings::BrokerSettings {
    ///     url: SecretString::from("amqp://rabbit-1:5672/%2f, amqp://rabbit-2:5672/%2f"),
    ///     ..Default::default()
    /// };
    /// let addresses = settings.addresses();
    /// assert_eq!(addresses[1].expose_secret(), "amqp://rabbit-2:5672/%2f");
    /// ```
    pub fn addresses(&self) -> Vec<SecretString> {
        split_addresses(self.url.expose_secret())
            .map(SecretString::from)
            .collect()
    }

    /// The URL (every address of it) with its password replaced, for logs.
    pub fn redacted_url(&self) -> String {
        split_addresses(self.url.expose_secret())
            .map(redact_url)
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl fmt::Debug for BrokerSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BrokerSettings")
            .field("url", &self.redacted_url())
            .field("namespace", &self.namespace)
            .field("delay_cascade", &self.delay_cascade)
            .field("reconnect_max_delay", &self.reconnect_max_delay)
            .field("connect_timeout", &self.connect_timeout)
            .field(
                "management_url",
                &redact_url(self.management_url.expose_secret()),
            )
            .field("queue_type", &self.queue_type)
            .field("delivery_limit", &self.delivery_limit)
            .finish()
    }
}

/// The addresses of a `broker.url`: split on commas, blanks trimmed, empty
/// pieces dropped; the whole text when nothing is left (so an empty URL is
/// still refused by name when it is used).
fn split_addresses(raw: &str) -> impl Iterator<Item = &str> {
    let mut pieces: Vec<&str> = raw
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    if pieces.is_empty() {
        pieces.push(raw);
    }
    pieces.into_iter()
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

/// `[idempotency]`: deduplicating tasks by id.
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdempotencySettings {
    /// Where succeeded ids are kept: `off`, `memory` or `redis`.
    pub backend: IdempotencyBackend,
    /// Redis URL (may carry a password).
    #[serde(with = "secret")]
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
    /// One JSON object per line (production).
    Json,
    /// Human-readable lines (a terminal).
    Pretty,
}

/// `[telemetry]`: logs and traces.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetrySettings {
    /// `EnvFilter` directives; `RUST_LOG` wins when it is set.
    pub log_level: String,
    /// `json` or `pretty`.
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
/// `[ops]`, `[celery]`); a service with more sections keeps its own tree and hands
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
    /// The Celery bridge and result backend (off by default; docs/celery.md).
    pub celery: crate::celery::CelerySettings,
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
    let defaults = Figment::from(Serialized::defaults(T::default()));
    let env = TypedEnv {
        // `WARREN_GATEWAY_KEY` is the `warren` CLI's key for the gateway,
        // not a setting: a service that shares the environment ignores it.
        env: Env::prefixed("WARREN_")
            .split("__")
            .ignore(&["config", "gateway_key"]),
        defaults: defaults.clone(),
    };
    defaults.merge(Toml::file(file)).merge(env)
}

/// `WARREN_*` variables, each read as the type of its setting's default:
/// the text as it is for a string setting (so a numeric or boolean password
/// stays the string it was, leading zeros and all), figment's parsing
/// (numbers, booleans, arrays) for the others.
struct TypedEnv {
    env: Env,
    defaults: Figment,
}

impl Provider for TypedEnv {
    fn metadata(&self) -> Metadata {
        self.env.metadata()
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let mut dict = Dict::new();
        for (key, raw) in self.env.iter() {
            let key = key.as_str();
            let parsed: Value = raw.parse().unwrap_or_else(|_| Value::from(raw.clone()));
            let value = match (self.defaults.find_value(key), &parsed) {
                // `'"123456"'`, the quoting older docs asked for: its text.
                (Ok(Value::String(..)), Value::String(..)) if is_quoted(&raw) => parsed,
                (Ok(Value::String(..)), _) => Value::from(raw),
                _ => parsed,
            };
            if let Value::Dict(_, nested) = figment::util::nest(key, value) {
                merge_dicts(&mut dict, nested);
            }
        }
        Ok(Map::from([(Profile::Default, dict)]))
    }
}

/// `"..."`: a string figment unquotes.
fn is_quoted(raw: &str) -> bool {
    raw.len() >= 2 && raw.starts_with('"') && raw.ends_with('"')
}

/// Merges `from` into `into`, nested dictionaries key by key, the later
/// value winning otherwise.
fn merge_dicts(into: &mut Dict, from: Dict) {
    for (key, value) in from {
        match (into.get_mut(&key), value) {
            (Some(Value::Dict(_, existing)), Value::Dict(_, nested)) => {
                merge_dicts(existing, nested)
            }
            (_, value) => {
                into.insert(key, value);
            }
        }
    }
}

/// A secret setting, for `#[serde(with = "warren::settings::secret")]` on a
/// [`SecretString`] field.
///
/// It accepts any scalar as its text (a TOML `password = 123456789` is the
/// password `"123456789"`), and refuses anything else by naming its type,
/// never its value, so a settings error cannot print the secret.
pub mod secret {
    use std::fmt;

    use secrecy::{ExposeSecret, SecretString};
    use serde::Serializer;
    use serde::de::{self, Deserializer, Visitor};

    /// Serializes the secret in clear: only used to seed figment's
    /// defaults, whose value is then read back through [`deserialize`].
    pub fn serialize<S: Serializer>(
        secret: &SecretString,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(secret.expose_secret())
    }

    /// Reads a secret from a string, an integer or a boolean.
    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<SecretString, D::Error> {
        deserializer.deserialize_any(SecretVisitor)
    }

    struct SecretVisitor;

    /// The refusal of a value that is no scalar: its kind, never its content.
    fn refuse<E: de::Error>(found: &str) -> E {
        E::custom(format_args!(
            "a secret setting must be a string (found {found}; its value is not shown)"
        ))
    }

    impl<'de> Visitor<'de> for SecretVisitor {
        type Value = SecretString;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a secret string")
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(SecretString::from(v))
        }

        fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
            Ok(SecretString::from(v))
        }

        fn visit_char<E: de::Error>(self, v: char) -> Result<Self::Value, E> {
            Ok(SecretString::from(v.to_string()))
        }

        fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
            Ok(SecretString::from(v.to_string()))
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
            Ok(SecretString::from(v.to_string()))
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
            Ok(SecretString::from(v.to_string()))
        }

        fn visit_i128<E: de::Error>(self, v: i128) -> Result<Self::Value, E> {
            Ok(SecretString::from(v.to_string()))
        }

        fn visit_u128<E: de::Error>(self, v: u128) -> Result<Self::Value, E> {
            Ok(SecretString::from(v.to_string()))
        }

        // A float has no faithful text (`1.50` reads back as 1.5): refused.
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Err(refuse("a decimal number; quote it"))
        }

        fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<Self::Value, E> {
            Err(refuse("bytes"))
        }

        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Err(refuse("nothing"))
        }

        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Err(refuse("nothing"))
        }

        fn visit_some<D: Deserializer<'de>>(self, _: D) -> Result<Self::Value, D::Error> {
            Err(refuse("an option"))
        }

        fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_any(self)
        }

        fn visit_seq<A: de::SeqAccess<'de>>(self, _: A) -> Result<Self::Value, A::Error> {
            Err(refuse("a list"))
        }

        fn visit_map<A: de::MapAccess<'de>>(self, _: A) -> Result<Self::Value, A::Error> {
            Err(refuse("a table"))
        }

        fn visit_enum<A: de::EnumAccess<'de>>(self, _: A) -> Result<Self::Value, A::Error> {
            Err(refuse("an enum"))
        }
    }
}

/// `["1s", "5s", "2m"]` <-> `Vec<Duration>`, for `#[serde(with = ...)]`
/// (the retry ladder here, a service's own duration lists).
pub mod duration_list {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes the list as humantime strings.
    pub fn serialize<S: Serializer>(list: &[Duration], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(
            list.iter()
                .map(|d| humantime::format_duration(*d).to_string()),
        )
    }

    /// Reads a list of humantime strings.
    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<Duration>, D::Error> {
        let raw = Vec::<humantime_serde::Serde<Duration>>::deserialize(deserializer)?;
        Ok(raw.into_iter().map(|d| d.into_inner()).collect())
    }
}

/// Serializes a secret in clear; prefer `#[serde(with = "secret")]`
/// ([`secret`]), which also reads it back without ever printing it.
pub fn serialize_secret<S: serde::Serializer>(
    secret: &SecretString,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    secret::serialize(secret, serializer)
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
    fn several_addresses_are_split_and_each_redacted() {
        let s = BrokerSettings {
            url: SecretString::from(
                "amqp://u:hunter2@rabbit-1:5701/%2f, amqp://u:hunter2@rabbit-2:5702/%2f,",
            ),
            ..Default::default()
        };
        let addresses: Vec<String> = s
            .addresses()
            .iter()
            .map(|a| a.expose_secret().to_owned())
            .collect();
        assert_eq!(
            addresses,
            [
                "amqp://u:hunter2@rabbit-1:5701/%2f",
                "amqp://u:hunter2@rabbit-2:5702/%2f"
            ]
        );
        let shown = format!("{s:?} {}", s.redacted_url());
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("u:***@rabbit-1:5701"), "{shown}");
        assert!(shown.contains("u:***@rabbit-2:5702"), "{shown}");
    }

    #[test]
    fn several_addresses_come_from_one_environment_variable() {
        figment::Jail::expect_with(|jail| {
            jail.set_env(
                "WARREN_BROKER__URL",
                "amqp://g:g@127.0.0.1:5701/%2f,amqp://g:g@127.0.0.1:5702/%2f",
            );
            let s: Svc = load().map_err(|e| e.to_string())?;
            assert_eq!(s.broker.addresses().len(), 2);
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_are_rejected_by_name() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("WARREN_CONSUMER__PREFETCHH", "7");
            let err = load::<Svc>().err().ok_or("an unknown key was accepted")?;
            let shown = err.to_string();
            assert!(shown.contains("prefetchh"), "{shown}");
            Ok(())
        });
    }

    #[derive(Debug, Default, Deserialize, Serialize)]
    #[serde(default)]
    struct WithSecrets {
        broker: BrokerSettings,
        idempotency: IdempotencySettings,
    }

    /// The error of a load, or a note that it loaded.
    fn load_error() -> String {
        match load::<WithSecrets>() {
            Ok(_) => "loaded".to_owned(),
            Err(e) => format!("{e} {e:?}"),
        }
    }

    #[test]
    fn a_secret_from_the_environment_is_its_text_whatever_it_looks_like() {
        for raw in [
            "123456789",
            "0123",
            "true",
            "1.50",
            "-7",
            "[1, 2]",
            "{a=1}",
            "'x'",
        ] {
            figment::Jail::expect_with(|jail| {
                jail.set_env("WARREN_BROKER__URL", raw);
                jail.set_env("WARREN_IDEMPOTENCY__REDIS_URL", raw);
                let s: WithSecrets = load().map_err(|e| e.to_string())?;
                assert_eq!(s.broker.url.expose_secret(), raw);
                assert_eq!(s.idempotency.redis_url.expose_secret(), raw);
                Ok(())
            });
        }
    }

    #[test]
    fn a_quoted_secret_is_unquoted_as_before() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("WARREN_BROKER__URL", "\"123456\"");
            let s: WithSecrets = load().map_err(|e| e.to_string())?;
            assert_eq!(s.broker.url.expose_secret(), "123456");
            Ok(())
        });
    }

    #[test]
    fn a_secret_from_the_file_takes_any_scalar() {
        for (toml, text) in [("123456789", "123456789"), ("true", "true"), ("-3", "-3")] {
            figment::Jail::expect_with(|jail| {
                jail.create_file("warren.toml", &format!("[broker]\nurl = {toml}\n"))?;
                let s: WithSecrets = load().map_err(|e| e.to_string())?;
                assert_eq!(s.broker.url.expose_secret(), text);
                Ok(())
            });
        }
    }

    #[test]
    fn a_refused_secret_names_its_key_and_type_never_its_value() {
        for toml in ["987654.25", "[987654, 1]", "{ pw = 987654 }"] {
            figment::Jail::expect_with(|jail| {
                jail.create_file(
                    "warren.toml",
                    &format!("[idempotency]\nredis_url = {toml}\n"),
                )?;
                let shown = load_error();
                assert!(shown.contains("redis_url"), "{shown}");
                assert!(shown.contains("must be a string"), "{shown}");
                assert!(!shown.contains("987654"), "{shown}");
                Ok(())
            });
        }
    }

    #[test]
    fn a_secret_nested_under_a_stray_key_is_not_printed() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("WARREN_BROKER__URL__PASSWORD", "987654");
            let shown = load_error();
            assert!(shown.contains("url"), "{shown}");
            assert!(!shown.contains("987654"), "{shown}");
            Ok(())
        });
    }

    #[test]
    fn a_numeric_setting_from_the_environment_is_still_a_number() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("WARREN_CONSUMER__PREFETCH", "0012");
            jail.set_env("WARREN_CONSUMER__EVENTS", "false");
            jail.set_env("WARREN_CONSUMER__RETRY_DELAYS", "[\"1s\", \"2s\"]");
            jail.set_env("WARREN_BROKER__NAMESPACE", "007");
            let s: Svc = load().map_err(|e| e.to_string())?;
            assert_eq!(s.consumer.prefetch, 12);
            assert!(!s.consumer.events);
            assert_eq!(s.consumer.retry_delays.len(), 2);
            assert_eq!(s.broker.namespace, "007");
            Ok(())
        });
    }
}
