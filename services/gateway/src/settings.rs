//! The gateway's settings tree: the shared sections (broker, telemetry,
//! ops) plus `[http]`, `[events]`, `[tasks]`, `[email]` and the image
//! store's `[image]` section (`warren_store`), the one the image worker
//! reads, so the gateway writes uploads to the very store the worker reads.
//!
//! Defaults come from [`Default`], then `warren.toml` (or `$WARREN_CONFIG`),
//! then `WARREN_HTTP__ADDR`-style environment variables; see
//! [`warren::settings::load`].

use std::time::Duration;

use serde::{Deserialize, Serialize};
use warren::settings::{BrokerSettings, OpsSettings, SettingsError, TelemetrySettings};
use warren_store::ImageSettings;

/// The gateway's default ops port (`/metrics`, `/healthz`, `/readyz`).
pub const DEFAULT_OPS_PORT: u16 = 9403;

/// Everything the gateway is configured with.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub broker: BrokerSettings,
    pub telemetry: TelemetrySettings,
    /// `/metrics`, `/healthz`, `/readyz`; port 9403 by default.
    pub ops: OpsSettings,
    pub http: HttpSettings,
    pub events: EventsSettings,
    pub status: StatusSettings,
    pub tasks: TasksSettings,
    pub workflows: WorkflowSettings,
    pub email: EmailChecks,
    /// The image store's `[image]` section, as the image worker reads it:
    /// the store uploads go to and the limits `image.thumbnail` tasks are
    /// checked against.
    pub image: ImageSettings,
    /// `[auth]`: the API keys (hashed); none only on a loopback address.
    pub auth: crate::auth::AuthSettings,
    /// `[console]`: the web console at `/console`.
    pub console: ConsoleSettings,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            broker: BrokerSettings::default(),
            telemetry: TelemetrySettings::default(),
            ops: OpsSettings::on_port(DEFAULT_OPS_PORT),
            http: HttpSettings::default(),
            events: EventsSettings::default(),
            status: StatusSettings::default(),
            tasks: TasksSettings::default(),
            workflows: WorkflowSettings::default(),
            email: EmailChecks::default(),
            image: ImageSettings::default(),
            auth: crate::auth::AuthSettings::default(),
            console: ConsoleSettings::default(),
        }
    }
}

impl Settings {
    /// Loads the layered settings (defaults, file, environment).
    pub fn load() -> Result<Self, SettingsError> {
        warren::settings::load::<Self>()
    }
}

/// `[http]`: the public API.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSettings {
    /// `host:port`; port 0 picks a free one (logged at start-up).
    pub addr: String,
    /// Largest JSON request body. Big enough for an email with the email
    /// worker's default 5 MiB of attachments in base64.
    pub max_body_bytes: usize,
    /// Largest uploaded file of `POST /v1/images`; also capped by
    /// `image.max_source_bytes`, which the image worker enforces.
    pub max_upload_bytes: usize,
    /// Uploads read at the same time; each is held whole in memory (up to
    /// `max_upload_bytes`) until it is stored, so this bounds the memory
    /// they take. Further uploads wait for a turn within
    /// `request_timeout`.
    pub max_concurrent_uploads: usize,
    /// Bound on one request, from its first byte to the response headers
    /// (an upload's body included; an SSE stream's events not).
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            addr: "0.0.0.0:8080".to_owned(),
            max_body_bytes: 8 * 1024 * 1024,
            max_upload_bytes: 32 * 1024 * 1024,
            max_concurrent_uploads: 8,
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// `[events]`: the status view built from the events stream.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventsSettings {
    /// How long the stream `{ns}.events.stream` keeps events (its
    /// `x-max-age`). A task older than this is unknown to a gateway that
    /// starts later. Changing it needs the stream deleted (RabbitMQ refuses
    /// to redeclare a queue with other arguments).
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    /// Most tasks held in memory; past it, the least recently updated are
    /// forgotten (and answer `unknown`). About 4 KB per email task and
    /// 7 KB per thumbnail task (its result is kept), so the default costs
    /// 200-350 MB.
    pub max_tracked_tasks: usize,
    /// How long `GET /v1/tasks/{id}/events` waits for an unknown task to
    /// appear before answering 404.
    #[serde(with = "humantime_serde")]
    pub unknown_wait: Duration,
    /// How often an idle SSE stream sends a keep-alive comment.
    #[serde(with = "humantime_serde")]
    pub keep_alive: Duration,
}

impl Default for EventsSettings {
    fn default() -> Self {
        Self {
            retention: Duration::from_secs(7 * 24 * 3600),
            max_tracked_tasks: 50_000,
            unknown_wait: Duration::from_secs(5),
            keep_alive: Duration::from_secs(15),
        }
    }
}

/// Where task statuses are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreKind {
    /// In this gateway's memory, built from the whole stream at start-up
    /// (one replica, or a few that each read the stream).
    Memory,
    /// In Redis, shared by every replica, written by one indexer.
    Redis,
}

/// `[status]`: the status store.
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StatusSettings {
    /// `memory` or `redis`.
    pub store: StoreKind,
    /// `redis`: the Redis URL (may carry a password).
    #[serde(serialize_with = "warren::settings::serialize_secret")]
    pub redis_url: secrecy::SecretString,
    /// `redis`: the prefix of every key; empty means `{namespace}:status:`.
    pub key_prefix: String,
    /// `redis`: whether this gateway may run the indexer (one at a time
    /// across replicas, under the broker-held lock `{ns}.events.indexer`).
    pub indexer: bool,
    /// `redis`: how often a standby indexer tries to take the lock.
    #[serde(with = "humantime_serde")]
    pub indexer_retry: Duration,
    /// `redis`: events written to Redis in one go.
    pub indexer_batch: usize,
    /// `redis`: tasks kept in each index (by state, by type); older ones
    /// drop out of listings (their records stay until they expire).
    pub max_index_tasks: usize,
    /// `redis`: events kept per task (for `GET /v1/tasks/{id}/events`).
    pub max_events_per_task: usize,
    /// `redis`: a result larger than this (as JSON) is kept by reference
    /// to its event in the stream, and read from there when asked for.
    pub max_result_bytes: usize,
    /// `redis`: tasks this gateway saw live and keeps in memory, so its
    /// answers do not wait for the indexer.
    pub recent_tasks: usize,
    /// `GET /v1/tasks`: the largest `limit` (more is a 400).
    pub max_list_limit: usize,
}

impl Default for StatusSettings {
    fn default() -> Self {
        Self {
            store: StoreKind::Memory,
            redis_url: secrecy::SecretString::from("redis://127.0.0.1:6379/0"),
            key_prefix: String::new(),
            indexer: true,
            indexer_retry: Duration::from_secs(1),
            indexer_batch: 500,
            max_index_tasks: 1_000_000,
            max_events_per_task: 16,
            max_result_bytes: 4096,
            recent_tasks: 10_000,
            max_list_limit: 1000,
        }
    }
}

impl std::fmt::Debug for StatusSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use secrecy::ExposeSecret;
        f.debug_struct("StatusSettings")
            .field("store", &self.store)
            .field(
                "redis_url",
                &warren::settings::redact_url(self.redis_url.expose_secret()),
            )
            .field("key_prefix", &self.key_prefix)
            .field("indexer", &self.indexer)
            .field("max_index_tasks", &self.max_index_tasks)
            .finish_non_exhaustive()
    }
}

/// `[tasks]`: how enqueued tasks are published.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TasksSettings {
    /// No longer read: delayed tasks wait in the delay cascade, whatever
    /// the workers' retry ladder. Still accepted so existing settings
    /// files load.
    #[serde(with = "warren::settings::duration_list")]
    pub retry_delays: Vec<Duration>,
}

impl Default for TasksSettings {
    fn default() -> Self {
        Self {
            retry_delays: warren::settings::ConsumerSettings::default().retry_delays,
        }
    }
}

/// `[workflows]`: `POST /v1/workflows` and the workflows the gateway
/// follows.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkflowSettings {
    /// Most steps (a chain) or members (a group or chord) a workflow
    /// posted here may have; more is a 422. At most 1,000
    /// (`warren::workflow::MAX_STEPS`, `MAX_MEMBERS`), whatever this says.
    pub max_steps: usize,
    /// Most workflow shapes held in memory (a few hundred bytes each, plus
    /// 20-odd bytes per step's task type); past it the oldest are
    /// forgotten (their `GET` is 404; their tasks' statuses remain).
    pub max_tracked: usize,
}

impl Default for WorkflowSettings {
    fn default() -> Self {
        Self {
            max_steps: 1000,
            max_tracked: 100_000,
        }
    }
}

/// `[email]`: what `email.send` tasks are checked against before they are
/// published, as the email worker would check them.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct EmailChecks {
    /// The email worker's `email.max_attachment_bytes`.
    pub max_attachment_bytes: usize,
}

impl Default for EmailChecks {
    fn default() -> Self {
        Self {
            max_attachment_bytes: 5 * 1024 * 1024,
        }
    }
}

/// The most messages a console replay sends a second by default: a page's
/// selection (at most 500) is replayed within `http.request_timeout`'s
/// default 30 s, and the workers see a steady trickle, not a burst.
pub const DEFAULT_CONSOLE_REPLAY_RATE: f64 = 50.0;

/// `[console]`: the web console at `/console`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsoleSettings {
    /// The conductor's HTTP address (its ops port), e.g.
    /// `http://conductor:9404`, for the Schedules page (`GET
    /// /v1/schedules`); empty: not configured, and the page says so.
    pub conductor_url: String,
    /// The most messages a console replay sends a second (as `warren dead
    /// replay --rate`); 0 sends them as fast as the broker confirms.
    pub replay_rate: f64,
}

impl Default for ConsoleSettings {
    fn default() -> Self {
        Self {
            conductor_url: String::new(),
            replay_rate: DEFAULT_CONSOLE_REPLAY_RATE,
        }
    }
}

impl ConsoleSettings {
    /// The conductor's base URL, if one is configured; an error naming the
    /// setting when it is not an `http` or `https` URL, or the rate is not
    /// a finite number of zero or more.
    pub fn checked(&self) -> Result<Option<url::Url>, String> {
        if !self.replay_rate.is_finite() || self.replay_rate < 0.0 {
            return Err(format!(
                "console.replay_rate {} is not a number of messages a second (0 or more)",
                self.replay_rate
            ));
        }
        let raw = self.conductor_url.trim();
        if raw.is_empty() {
            return Ok(None);
        }
        let url = url::Url::parse(raw).map_err(|e| {
            format!("console.conductor_url '{raw}' is not a URL such as http://conductor:9404: {e}")
        })?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(format!(
                "console.conductor_url '{raw}' is not an http(s) URL with a host, such as http://conductor:9404"
            ));
        }
        Ok(Some(url))
    }
}

#[cfg(test)]
// A failing unwrap is how a test reports failure.
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn defaults_survive_a_serialize_deserialize_round_trip() {
        // figment seeds its defaults by serializing `Settings::default()` and
        // reads them back through `Deserialize`, so both halves must agree.
        let json = serde_json::to_value(Settings::default()).unwrap();
        let back: Settings = serde_json::from_value(json).unwrap();
        assert_eq!(back.http.addr, "0.0.0.0:8080");
        assert_eq!(back.ops.addr, "0.0.0.0:9403");
        assert_eq!(back.events.retention, Duration::from_secs(7 * 24 * 3600));
        assert_eq!(back.tasks.retry_delays.len(), 5);
        assert_eq!(back.image.output_prefix, "thumbnails/{task_id}");
        assert_eq!(back.console.conductor_url, "");
        assert_eq!(back.console.replay_rate, DEFAULT_CONSOLE_REPLAY_RATE);
    }

    #[test]
    fn the_console_settings_are_checked() {
        let mut c = ConsoleSettings::default();
        assert_eq!(c.checked().unwrap(), None);
        c.conductor_url = "http://127.0.0.1:9404".into();
        assert_eq!(
            c.checked().unwrap().unwrap().as_str(),
            "http://127.0.0.1:9404/"
        );
        for bad in ["conductor:9404", "ftp://x:1", "not a url"] {
            c.conductor_url = bad.into();
            let e = c.checked().unwrap_err();
            assert!(e.contains("console.conductor_url"), "{bad}: {e}");
        }
        c.conductor_url = String::new();
        c.replay_rate = -1.0;
        assert!(c.checked().unwrap_err().contains("console.replay_rate"));
    }

    #[test]
    fn durations_parse_and_unknown_keys_are_rejected() {
        let tasks: TasksSettings =
            serde_json::from_value(serde_json::json!({"retry_delays": ["200ms", "1m"]})).unwrap();
        assert_eq!(
            tasks.retry_delays,
            vec![Duration::from_millis(200), Duration::from_secs(60)]
        );
        let typo: Result<HttpSettings, _> =
            serde_json::from_value(serde_json::json!({"max_body_byte": 1}));
        assert!(typo.is_err());
    }
}
