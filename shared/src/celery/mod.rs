//! Celery compatibility: a bridge that consumes Celery protocol 2 messages
//! from RabbitMQ and hands each one on as a Warren task, and an optional
//! writer of Celery's Redis result-backend format, so an application that
//! calls `send_email_task.delay(...)` keeps its code while Warren workers
//! do the work (docs/celery.md).
//!
//! Why a bridge, not a second decoder inside the consumer: a Celery message
//! becomes an ordinary Warren task (published with confirms, acked only
//! after the confirm), so everything Warren does for its own tasks (the
//! delay cascade for `eta`/`countdown`, priorities, the retry ladder, the
//! parking lot, events, statuses, replay) applies unchanged, and the worker
//! code never learns about Celery. The cost is one extra hop through the
//! broker per task.
//!
//! The rooms: [`message`] (reading a Celery message into a Warren task, or
//! refusing it with a reason), `canvas` (a Celery chain or `link` callback
//! in the message's `embed`, read into Warren chain steps), [`bridge`] (the
//! consumer) and [`results`] (Celery's result metas in Redis).

pub mod bridge;
mod canvas;
pub mod message;
pub mod results;

use std::collections::BTreeMap;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

pub use bridge::{BridgeError, run as run_bridge};
pub use results::CeleryResults;

/// `[celery]`: the Celery bridge and result backend. Off by default.
///
/// ```toml
/// [celery]
/// enabled = true
/// result_backend = "redis://127.0.0.1:6379/0"
///
/// [[celery.tasks]]
/// name = "app.tasks.send_email_task"
/// type = "email.send"
/// args = ["to", "subject", "text"]
/// kwargs = { body = "text" }
/// ```
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CelerySettings {
    /// Run the bridge in this worker process.
    pub enabled: bool,
    /// The queue Celery publishes to (Celery's `task_default_queue`).
    pub queue: String,
    /// Its direct exchange (Celery's `task_default_exchange`).
    pub exchange: String,
    /// The binding key (Celery's `task_default_routing_key`).
    pub routing_key: String,
    /// Celery messages the bridge takes before it acks (`basic.qos`).
    pub prefetch: u16,
    /// Celery task names and how their arguments become a Warren body.
    pub tasks: Vec<CeleryTaskMap>,
    /// Redis URL of Celery's result backend; empty (the default): no
    /// results are written. Secret: it may carry a password.
    #[serde(with = "crate::settings::secret")]
    pub result_backend: SecretString,
    /// How long a result is kept (Celery's `result_expires`).
    #[serde(with = "humantime_serde")]
    pub result_expires: Duration,
}

impl Default for CelerySettings {
    fn default() -> Self {
        Self {
            enabled: false,
            queue: "celery".to_owned(),
            exchange: "celery".to_owned(),
            routing_key: "celery".to_owned(),
            prefetch: 32,
            tasks: Vec::new(),
            result_backend: SecretString::from(""),
            result_expires: Duration::from_secs(24 * 3600),
        }
    }
}

impl std::fmt::Debug for CelerySettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CelerySettings")
            .field("enabled", &self.enabled)
            .field("queue", &self.queue)
            .field("exchange", &self.exchange)
            .field("routing_key", &self.routing_key)
            .field("prefetch", &self.prefetch)
            .field("tasks", &self.tasks)
            .field(
                "result_backend",
                &crate::settings::redact_url(self.result_backend.expose_secret()),
            )
            .field("result_expires", &self.result_expires)
            .finish()
    }
}

impl CelerySettings {
    /// The result backend's URL, when results are on.
    pub fn result_backend_url(&self) -> Option<&str> {
        Some(self.result_backend.expose_secret().trim()).filter(|u| !u.is_empty())
    }
}

/// One Celery task name mapped onto a Warren task type.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CeleryTaskMap {
    /// The Celery task name, e.g. `app.tasks.send_email_task`.
    pub name: String,
    /// The Warren task type, e.g. `email.send`.
    #[serde(rename = "type")]
    pub task_type: String,
    /// The body field of each positional argument, in order: `["to",
    /// "subject", "text"]` puts `args[0]` in `to`. More arguments than
    /// names: the message is parked.
    #[serde(default)]
    pub args: Vec<String>,
    /// Keyword arguments renamed (`{ body = "text" }`); any other keyword
    /// argument keeps its name.
    #[serde(default)]
    pub kwargs: BTreeMap<String, String>,
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail's closures return figment::Error
mod tests {
    use super::*;

    #[derive(Debug, Default, Deserialize, Serialize)]
    #[serde(default)]
    struct Svc {
        celery: CelerySettings,
    }

    #[test]
    fn celerys_defaults_are_the_defaults_and_the_documented_example_loads() {
        let d = CelerySettings::default();
        assert_eq!(
            (
                d.queue.as_str(),
                d.exchange.as_str(),
                d.routing_key.as_str()
            ),
            ("celery", "celery", "celery")
        );
        assert!(!d.enabled);
        assert_eq!(d.result_backend_url(), None);
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "warren.toml",
                r#"
[celery]
enabled = true
result_backend = "redis://:hunter2@127.0.0.1:6379/0"

[[celery.tasks]]
name = "app.tasks.send_email_task"
type = "email.send"
args = ["to", "subject", "text"]
kwargs = { body = "text" }
"#,
            )?;
            jail.set_env("WARREN_CELERY__QUEUE", "warren-in");
            let s: Svc = crate::settings::load().map_err(|e| e.to_string())?;
            assert!(s.celery.enabled);
            assert_eq!(s.celery.queue, "warren-in");
            assert_eq!(s.celery.tasks[0].task_type, "email.send");
            assert_eq!(s.celery.tasks[0].kwargs["body"], "text");
            assert!(!format!("{:?}", s.celery).contains("hunter2"));
            Ok(())
        });
    }
}
