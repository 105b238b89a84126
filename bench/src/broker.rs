//! The benchmark's own corner of the shared broker: a fresh namespace
//! (`bench-<random>`), its topology, filling and emptying its queues
//! (untimed), deleting everything at the end, and RabbitMQ's management API
//! for the version and per-queue counters.

use std::time::Duration;

use anyhow::{Context, bail};
use base64::Engine;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeleteOptions, QueueDeclareOptions,
    QueueDeleteOptions, QueuePurgeOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Confirmation, Connection, ConnectionProperties};
use secrecy::SecretString;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use warren::contract::Names;
use warren::settings::{BrokerSettings, ConsumerSettings};
use warren::topology::Topology;

use crate::task::{BINDING, BenchBody, RETRY_STEM, STEM, TASK_TYPE};

/// The retry ladder of the retry run: one rung of 1 ms, so the retry path
/// is measured, not the delay.
pub const RETRY_DELAYS: [Duration; 1] = [Duration::from_millis(1)];

/// Publishes at most this many messages ahead of their confirms when
/// filling a queue.
const PREFILL_WINDOW: usize = 2_000;

/// How long the bench's events stream keeps events (it is deleted at the
/// end of the run anyway).
const EVENTS_RETENTION: Duration = Duration::from_secs(3600);

/// The email worker's queue stem (`{namespace}.email`).
pub const EMAIL_STEM: &str = "email";
/// The image worker's queue stem (`{namespace}.image`).
pub const IMAGE_STEM: &str = "image";

/// How long the bench waits for the broker to take a connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// A connection to the bench's broker, or a clear error within
/// [`CONNECT_TIMEOUT`] instead of a hang (a broker that accepts TCP but
/// never answers: still booting, or blocked by an alarm).
pub async fn connect(url: &str) -> anyhow::Result<Connection> {
    match tokio::time::timeout(
        CONNECT_TIMEOUT,
        Connection::connect(url, ConnectionProperties::default()),
    )
    .await
    {
        Ok(connection) => {
            connection.with_context(|| format!("RabbitMQ must run at {}", redact(url)))
        }
        Err(_) => bail!(
            "RabbitMQ at {} did not take a connection within {CONNECT_TIMEOUT:?}; \
             is it running and not blocked by an alarm?",
            redact(url)
        ),
    }
}

pub struct BenchBroker {
    pub url: String,
    pub names: Names,
    connection: Connection,
    channel: Channel,
    topologies: Vec<Topology>,
}

impl BenchBroker {
    /// A fresh namespace with the work queues of every run declared.
    pub async fn new(url: &str) -> anyhow::Result<Self> {
        let namespace = format!("bench-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let connection = connect(url).await?;
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let names = Names::new(namespace);
        // What the in-process workers and the worker processes declare
        // themselves, declared up front so a queue exists before it is filled.
        let topologies = vec![
            Topology::new(
                &names,
                STEM,
                &[BINDING],
                &ConsumerSettings::default().retry_delays,
            ),
            Topology::new(&names, RETRY_STEM, &[], &RETRY_DELAYS),
            // What the email worker declares (its defaults).
            Topology::new(
                &names,
                EMAIL_STEM,
                &["email.#"],
                &ConsumerSettings::default().retry_delays,
            ),
            // What the image worker declares (its defaults).
            Topology::new(
                &names,
                IMAGE_STEM,
                &["image.#"],
                &ConsumerSettings::default().retry_delays,
            ),
        ];
        let broker = Self {
            url: url.to_owned(),
            names,
            connection,
            channel,
            topologies,
        };
        for t in &broker.topologies {
            t.declare(&broker.connection).await?;
        }
        broker.reset_events_stream().await?;
        Ok(broker)
    }

    /// Deletes and declares the events stream (`{namespace}.events.stream`,
    /// as a gateway declares it), so the runtime's task events are routed
    /// into a stream and stored, as in production, and a reader from its
    /// first offset sees only what came after.
    pub async fn reset_events_stream(&self) -> anyhow::Result<()> {
        self.channel
            .queue_delete(
                self.names.events_stream().as_str().into(),
                QueueDeleteOptions::default(),
            )
            .await?;
        warren::events::declare_stream(&self.connection, &self.names, EVENTS_RETENTION).await?;
        Ok(())
    }

    pub fn namespace(&self) -> &str {
        self.names.namespace()
    }

    /// Settings for Warren's runtime and publisher in this namespace.
    pub fn settings(&self) -> BrokerSettings {
        BrokerSettings {
            url: SecretString::from(self.url.clone()),
            namespace: self.namespace().to_owned(),
            ..BrokerSettings::default()
        }
    }

    /// The work queue of `stem` (`{namespace}.{stem}`).
    pub fn queue(&self, stem: &str) -> String {
        self.names.work_queue(stem)
    }

    /// Puts `n` persistent tasks of `size` bytes into the work queue of
    /// `stem`, as Warren's producer would (same properties and headers), and
    /// waits for every confirm. Fast and untimed: publishes are pipelined.
    pub async fn prefill(&self, stem: &str, n: usize, pad: &str) -> anyhow::Result<()> {
        // The bench work queue is reached through the tasks exchange like any
        // task; the retry queue has no binding and is reached by name.
        let (exchange, routing_key) = if stem == STEM {
            (self.names.tasks_exchange(), TASK_TYPE.to_owned())
        } else {
            (String::new(), self.queue(stem))
        };
        self.publish_n(&exchange, &routing_key, TASK_TYPE, n, |seq| {
            BenchBody {
                seq: seq as u64,
                sent_at_us: 0,
                pad,
            }
            .to_vec()
        })
        .await?;
        let depth = self.depth(stem).await?;
        if depth as usize != n {
            bail!(
                "queue {} holds {depth} messages after filling it with {n}",
                self.queue(stem)
            );
        }
        Ok(())
    }

    /// Puts `n` `email.send` tasks with `body` into the email worker's
    /// queue, as Warren's producer would, and waits for every confirm.
    pub async fn prefill_emails(&self, n: usize, body: &[u8]) -> anyhow::Result<()> {
        let exchange = self.names.tasks_exchange();
        self.publish_n(&exchange, "email.send", "email.send", n, |_| body.to_vec())
            .await?;
        let depth = self.depth(EMAIL_STEM).await?;
        if depth as usize != n {
            bail!("the email queue holds {depth} tasks after filling it with {n}");
        }
        Ok(())
    }

    /// Publishes `n` persistent tasks of type `task_type`, `body(seq)` each,
    /// with at most [`PREFILL_WINDOW`] awaiting their confirms.
    /// Puts `n` tasks of `task_type` into the queue bound to it through
    /// the tasks exchange, `body(seq)` each, and waits for every confirm.
    pub async fn prefill_tasks(
        &self,
        task_type: &str,
        n: usize,
        body: impl Fn(usize) -> Vec<u8>,
    ) -> anyhow::Result<()> {
        let exchange = self.names.tasks_exchange();
        self.publish_n(&exchange, task_type, task_type, n, body)
            .await
    }

    async fn publish_n(
        &self,
        exchange: &str,
        routing_key: &str,
        task_type: &str,
        n: usize,
        body: impl Fn(usize) -> Vec<u8>,
    ) -> anyhow::Result<()> {
        let mut pending = FuturesUnordered::new();
        for seq in 0..n {
            let id = uuid::Uuid::now_v7().to_string();
            let props = warren::task_properties(&id, task_type, 0);
            let confirm = self
                .channel
                .basic_publish(
                    exchange.into(),
                    routing_key.into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..Default::default()
                    },
                    &body(seq),
                    props,
                )
                .await?;
            pending.push(confirm);
            while pending.len() >= PREFILL_WINDOW {
                check_confirm(pending.next().await)?;
            }
        }
        while !pending.is_empty() {
            check_confirm(pending.next().await)?;
        }
        Ok(())
    }

    /// Deletes a queue and an exchange a peer declared in this namespace.
    pub async fn delete_peer_objects(
        &self,
        queues: &[String],
        exchanges: &[String],
    ) -> anyhow::Result<()> {
        for q in queues {
            self.channel
                .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                .await?;
        }
        for x in exchanges {
            self.channel
                .exchange_delete(x.as_str().into(), ExchangeDeleteOptions::default())
                .await?;
        }
        Ok(())
    }

    /// Ready messages in the work queue of `stem`.
    pub async fn depth(&self, stem: &str) -> anyhow::Result<u32> {
        let q = self
            .channel
            .queue_declare(
                self.queue(stem).as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        Ok(q.message_count())
    }

    /// Empties the work queue and the delay queues of `stem`.
    pub async fn purge(&self, stem: &str) -> anyhow::Result<()> {
        for t in self
            .topologies
            .iter()
            .filter(|t| t.work_queue.name == self.queue(stem))
        {
            for q in t.queue_names() {
                self.channel
                    .queue_purge(q.as_str().into(), QueuePurgeOptions::default())
                    .await?;
            }
        }
        Ok(())
    }

    /// Deletes every queue and exchange of the namespace, on a fresh
    /// connection (the broker may have been restarted under the run, which
    /// kills this one), trying for up to a minute.
    pub async fn cleanup(&self) -> anyhow::Result<()> {
        let _ = self.connection.close(200, "bench done".into()).await;
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            match self.delete_everything().await {
                Ok(()) => return Ok(()),
                Err(e) if std::time::Instant::now() >= deadline => {
                    return Err(e.context(format!(
                        "could not delete namespace {}; delete its queues and exchanges by hand",
                        self.namespace()
                    )));
                }
                Err(_) => tokio::time::sleep(Duration::from_secs(2)).await,
            }
        }
    }

    async fn delete_everything(&self) -> anyhow::Result<()> {
        let connection = connect(&self.url).await?;
        let channel = connection.create_channel().await?;
        for t in &self.topologies {
            for q in t.queue_names() {
                channel
                    .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                    .await?;
            }
        }
        // The runtime's task events: the exchange it declares, and the
        // stream the bench declared as a gateway would.
        channel
            .queue_delete(
                self.names.events_stream().as_str().into(),
                QueueDeleteOptions::default(),
            )
            .await?;
        // The delay cascade's exchanges: the workers declared them (its
        // queues are among the topologies' queues).
        let mut exchanges = warren::topology::DelayCascade::new(&self.names).owned_exchanges();
        exchanges.extend([
            self.names.tasks_exchange(),
            self.names.dead_exchange(),
            self.names.events_exchange(),
        ]);
        for x in exchanges {
            channel
                .exchange_delete(x.as_str().into(), ExchangeDeleteOptions::default())
                .await?;
        }
        let _ = channel.close(200, "bench cleaned up".into()).await;
        let _ = connection.close(200, "bench cleaned up".into()).await;
        Ok(())
    }
}

fn check_confirm(confirm: Option<Result<Confirmation, lapin::Error>>) -> anyhow::Result<()> {
    match confirm {
        Some(Ok(Confirmation::Ack(None))) | None => Ok(()),
        Some(Ok(other)) => bail!("the broker did not take a prefill message: {other:?}"),
        Some(Err(e)) => Err(e.into()),
    }
}

/// The URL without its password.
pub fn redact(url: &str) -> String {
    warren::settings::redact_url(url)
}

/// RabbitMQ's management HTTP API (read only), with the AMQP URL's user.
#[derive(Debug, Clone)]
pub struct Management {
    host: String,
    port: u16,
    authorization: String,
}

impl Management {
    pub fn new(management_url: &str, amqp_url: &str) -> anyhow::Result<Self> {
        let http = url::Url::parse(management_url).context("invalid management URL")?;
        let amqp = url::Url::parse(amqp_url).context("invalid AMQP URL")?;
        let decode = |s: &str| {
            url::form_urlencoded::parse(format!("x={s}").as_bytes())
                .next()
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default()
        };
        let user = decode(amqp.username());
        let password = decode(amqp.password().unwrap_or(""));
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        Ok(Self {
            host: http.host_str().unwrap_or("127.0.0.1").to_owned(),
            port: http.port_or_known_default().unwrap_or(15672),
            authorization: format!("Basic {token}"),
        })
    }

    /// `GET path` as JSON (HTTP/1.0, so the body ends with the connection).
    pub async fn get(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        let fetch = async {
            let mut stream =
                tokio::net::TcpStream::connect((self.host.as_str(), self.port)).await?;
            let request = format!(
                "GET {path} HTTP/1.0\r\nHost: {}:{}\r\nAuthorization: {}\r\nAccept: application/json\r\n\r\n",
                self.host, self.port, self.authorization
            );
            stream.write_all(request.as_bytes()).await?;
            let mut raw = Vec::new();
            stream.read_to_end(&mut raw).await?;
            anyhow::Ok(raw)
        };
        let raw = tokio::time::timeout(Duration::from_secs(10), fetch)
            .await
            .context("the management API did not answer within 10 s")??;
        let text = String::from_utf8_lossy(&raw);
        let (head, body) = text
            .split_once("\r\n\r\n")
            .context("the management API sent no HTTP body")?;
        if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
            bail!(
                "the management API answered {}",
                head.lines().next().unwrap_or("")
            );
        }
        Ok(serde_json::from_str(body)?)
    }

    /// RabbitMQ's and Erlang's versions.
    pub async fn versions(&self) -> anyhow::Result<(String, String)> {
        let overview = self.get("/api/overview").await?;
        let rabbit = overview["rabbitmq_version"]
            .as_str()
            .context("no rabbitmq_version in /api/overview")?
            .to_owned();
        let erlang = overview["erlang_version"]
            .as_str()
            .unwrap_or("unknown")
            .to_owned();
        Ok((rabbit, erlang))
    }

    /// A queue's cumulative message counters (`publish`, `deliver_get`,
    /// `ack`, `redeliver`, ...) in the default vhost.
    pub async fn queue_stats(&self, queue: &str) -> anyhow::Result<serde_json::Value> {
        let q = self.get(&format!("/api/queues/%2F/{queue}")).await?;
        Ok(q["message_stats"].clone())
    }
}
