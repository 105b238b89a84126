//! RabbitMQ's management HTTP API, read only: queues with their counters
//! and rates, exchanges, bindings; and the rows of the operator's queue
//! table (each work queue with its retry ladder and parking lot), which
//! `warren queues` prints and the gateway's console shows.
//!
//! Its URL is `broker.management_url`; its user and password those of that
//! URL, else of the AMQP URL. Behind the `management` feature (it brings an
//! HTTP client).

use std::time::Duration;

use secrecy::ExposeSecret;
use serde::Serialize;
use serde_json::Value;
use url::Url;

use crate::settings::{BrokerSettings, redact_url};

/// Why the management API could not answer.
#[derive(Debug, thiserror::Error)]
pub enum ManagementError {
    /// The settings are wrong (a URL that does not parse).
    #[error("{0}")]
    Settings(String),
    /// The API did not answer, or not as expected.
    #[error("{0}")]
    Http(String),
    /// The vhost does not exist.
    #[error("{0}")]
    NotFound(String),
}

/// A client of the management API for the vhost of `broker.url`.
pub struct Management {
    base: Url,
    vhost: String,
    user: String,
    password: String,
    client: reqwest::Client,
}

impl Management {
    /// A client for `broker.management_url`, with the credentials of that
    /// URL or else of `broker.url`, for the AMQP URL's vhost.
    pub fn new(broker: &BrokerSettings) -> Result<Self, ManagementError> {
        let raw = broker.management_url.expose_secret();
        let mut base = Url::parse(raw).map_err(|e| {
            ManagementError::Settings(format!(
                "broker.management_url {} is not a URL: {e}",
                redact_url(raw)
            ))
        })?;
        // Of several addresses (a cluster's nodes), the first: they share
        // their users and virtual hosts.
        let first = broker.addresses().into_iter().next().unwrap_or_default();
        let amqp = Url::parse(first.expose_secret())
            .map_err(|e| ManagementError::Settings(format!("broker.url is not a URL: {e}")))?;
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
            .map_err(|e| ManagementError::Http(format!("could not build an HTTP client: {e}")))?;
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
    async fn get(&self, segments: &[&str]) -> Result<Option<Value>, ManagementError> {
        let mut url = self.base.clone();
        {
            let mut path = url.path_segments_mut().map_err(|_| {
                ManagementError::Settings("broker.management_url cannot be a base".into())
            })?;
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
                ManagementError::Http(format!(
                    "the management API at {shown} does not answer ({e}); is rabbitmq_management enabled?"
                ))
            })?;
        let status = response.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !status.is_success() {
            return Err(ManagementError::Http(format!(
                "the management API answered {status} for {shown}"
            )));
        }
        let body = response
            .bytes()
            .await
            .map_err(|e| ManagementError::Http(format!("reading {shown}: {e}")))?;
        serde_json::from_slice(&body)
            .map(Some)
            .map_err(|e| ManagementError::Http(format!("{shown} sent no JSON: {e}")))
    }

    async fn list(&self, what: &str) -> Result<Vec<Value>, ManagementError> {
        match self.get(&[what, &self.vhost]).await? {
            Some(Value::Array(v)) => Ok(v),
            Some(_) => Err(ManagementError::Http(format!("/api/{what} sent no list"))),
            None => Err(ManagementError::NotFound(format!(
                "the vhost '{}' does not exist",
                self.vhost
            ))),
        }
    }

    /// Every queue of the vhost, with its counters and rates.
    pub async fn queues(&self) -> Result<Vec<Value>, ManagementError> {
        self.list("queues").await
    }

    /// Every exchange of the vhost.
    pub async fn exchanges(&self) -> Result<Vec<Value>, ManagementError> {
        self.list("exchanges").await
    }

    /// Every binding of the vhost.
    pub async fn bindings(&self) -> Result<Vec<Value>, ManagementError> {
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

/// One work queue at a glance.
#[derive(Debug, Clone, Serialize)]
pub struct QueueRow {
    /// The work queue's name (`{namespace}.{stem}`).
    pub name: String,
    /// Messages ready for a consumer.
    pub ready: u64,
    /// Messages delivered and not yet acked.
    pub unacked: u64,
    /// Consumers attached.
    pub consumers: u64,
    /// Messages published to the queue per second.
    pub in_rate: f64,
    /// Messages acked from the queue per second.
    pub out_rate: f64,
    /// Messages waiting in the retry ladder (`{queue}.retry.*`).
    pub retrying: Option<u64>,
    /// The parking lot's depth (`{queue}.dead`).
    pub parked: Option<u64>,
}

/// The rows of `queues` (the management API's list): work queues (a queue
/// with a parking lot `{name}.dead`) of `namespace`, or with `all` every
/// queue of the namespace; sorted by name.
pub fn queue_rows(namespace: &str, queues: &[Value], all: bool) -> Vec<QueueRow> {
    let prefix = format!("{namespace}.");
    let ours: Vec<&Value> = queues
        .iter()
        .filter(|q| q["name"].as_str().is_some_and(|n| n.starts_with(&prefix)))
        .collect();
    let name = |q: &Value| q["name"].as_str().unwrap_or_default().to_owned();
    let find = |n: &str| ours.iter().find(|q| q["name"].as_str() == Some(n));
    let mut rows: Vec<QueueRow> = ours
        .iter()
        .filter(|q| all || find(&format!("{}.dead", name(q))).is_some())
        .map(|q| {
            let n = name(q);
            let dead = find(&format!("{n}.dead")).map(|d| count(d, "messages"));
            let retry_prefix = format!("{n}.retry.");
            let retry: Vec<&&Value> = ours
                .iter()
                .filter(|r| name(r).starts_with(&retry_prefix))
                .collect();
            QueueRow {
                ready: count(q, "messages_ready"),
                unacked: count(q, "messages_unacknowledged"),
                consumers: count(q, "consumers"),
                in_rate: rate(q, "publish"),
                out_rate: rate(q, "ack"),
                retrying: (!retry.is_empty())
                    .then(|| retry.iter().map(|r| count(r, "messages")).sum()),
                parked: dead,
                name: n,
            }
        })
        .collect();
    rows.sort_by(|a, b| a.name.cmp(&b.name));
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_queues_get_their_ladder_and_parking_lot() {
        let queues = serde_json::json!([
            {"name": "w.email", "messages_ready": 3, "messages_unacknowledged": 1, "consumers": 2,
             "message_stats": {"publish_details": {"rate": 1.5}, "ack_details": {"rate": 1.0}}},
            {"name": "w.email.retry.1s", "messages": 4},
            {"name": "w.email.dead", "messages": 7},
            {"name": "w.delay.00", "messages": 1},
            {"name": "other.email", "messages": 1}
        ]);
        let rows = queue_rows(
            "w",
            queues.as_array().map(Vec::as_slice).unwrap_or(&[]),
            false,
        );
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].name, "w.email");
        assert_eq!(
            (rows[0].ready, rows[0].unacked, rows[0].consumers),
            (3, 1, 2)
        );
        assert_eq!((rows[0].retrying, rows[0].parked), (Some(4), Some(7)));
        assert!((rows[0].in_rate - 1.5).abs() < 1e-9);
    }
}
