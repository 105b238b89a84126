//! RabbitMQ's management HTTP API, read only: queues with their counters
//! and rates, exchanges, bindings. Its URL is `broker.management_url`; its
//! user and password those of that URL, else of the AMQP URL.

use std::time::Duration;

use secrecy::ExposeSecret;
use serde_json::Value;
use url::Url;
use warren::settings::{BrokerSettings, redact_url};

use crate::error::CliError;

pub struct Management {
    base: Url,
    vhost: String,
    user: String,
    password: String,
    client: reqwest::Client,
}

impl Management {
    pub fn new(broker: &BrokerSettings) -> Result<Self, CliError> {
        let raw = broker.management_url.expose_secret();
        let mut base = Url::parse(raw).map_err(|e| {
            CliError::Usage(format!(
                "broker.management_url {} is not a URL: {e}",
                redact_url(raw)
            ))
        })?;
        let amqp = Url::parse(broker.url.expose_secret())
            .map_err(|e| CliError::Usage(format!("broker.url is not a URL: {e}")))?;
        let decode = |s: &str| {
            url::form_urlencoded::parse(format!("x={s}").as_bytes())
                .next()
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default()
        };
        let (user, password) = if base.username().is_empty() {
            (
                decode(amqp.username()),
                decode(amqp.password().unwrap_or("")),
            )
        } else {
            (
                decode(base.username()),
                decode(base.password().unwrap_or("")),
            )
        };
        let _ = base.set_username("");
        let _ = base.set_password(None);
        // The AMQP URL's path is the vhost (`/%2f` is `/`; none is `/`).
        let vhost = match amqp.path().trim_start_matches('/') {
            "" => "/".to_owned(),
            v => decode(v),
        };
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(15))
            .build()
            .map_err(|e| CliError::Http(format!("could not build an HTTP client: {e}")))?;
        Ok(Self {
            base,
            vhost,
            user: if user.is_empty() {
                "guest".to_owned()
            } else {
                user
            },
            password,
            client,
        })
    }

    /// `GET /api/<segments...>` as JSON; `None` on 404.
    async fn get(&self, segments: &[&str]) -> Result<Option<Value>, CliError> {
        let mut url = self.base.clone();
        {
            let mut path = url
                .path_segments_mut()
                .map_err(|_| CliError::Usage("broker.management_url cannot be a base".into()))?;
            path.pop_if_empty().push("api");
            for s in segments {
                path.push(s);
            }
        }
        let shown = redact_url(url.as_str());
        let response = self
            .client
            .get(url)
            .basic_auth(&self.user, Some(&self.password))
            .send()
            .await
            .map_err(|e| {
                CliError::Http(format!(
                    "the management API at {shown} does not answer ({e}); is rabbitmq_management enabled?"
                ))
            })?;
        let status = response.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !status.is_success() {
            return Err(CliError::Http(format!(
                "the management API answered {status} for {shown}"
            )));
        }
        let body = response
            .bytes()
            .await
            .map_err(|e| CliError::Http(format!("reading {shown}: {e}")))?;
        serde_json::from_slice(&body)
            .map(Some)
            .map_err(|e| CliError::Http(format!("{shown} sent no JSON: {e}")))
    }

    async fn list(&self, what: &str) -> Result<Vec<Value>, CliError> {
        match self.get(&[what, &self.vhost]).await? {
            Some(Value::Array(v)) => Ok(v),
            Some(_) => Err(CliError::Http(format!("/api/{what} sent no list"))),
            None => Err(CliError::NotFound(format!(
                "the vhost '{}' does not exist",
                self.vhost
            ))),
        }
    }

    /// Every queue of the vhost, with its counters and rates.
    pub async fn queues(&self) -> Result<Vec<Value>, CliError> {
        self.list("queues").await
    }

    /// Every exchange of the vhost.
    pub async fn exchanges(&self) -> Result<Vec<Value>, CliError> {
        self.list("exchanges").await
    }

    /// Every binding of the vhost.
    pub async fn bindings(&self) -> Result<Vec<Value>, CliError> {
        self.list("bindings").await
    }
}

/// A counter of a queue (`messages_ready`, ...), 0 when absent.
pub fn count(queue: &Value, field: &str) -> u64 {
    queue[field].as_u64().unwrap_or(0)
}

/// A rate of a queue's `message_stats` (`publish`, `ack`, ...), per second.
pub fn rate(queue: &Value, stat: &str) -> f64 {
    queue["message_stats"][format!("{stat}_details")]["rate"]
        .as_f64()
        .unwrap_or(0.0)
}
