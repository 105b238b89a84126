//! The real RabbitMQ, seen from a test: a namespace of its own, publishing
//! tasks the way producers do, and reading queues and the parking lot.
//!
//! Each test gets a fresh namespace (`t-<random>`), so tests running side by
//! side on the shared broker never see each other's messages; dropping the
//! namespace deletes its queues and exchanges.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use lapin::options::{
    BasicAckOptions, BasicGetOptions, ConfirmSelectOptions, ExchangeDeleteOptions,
    QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use warren::contract::{self, Names};
use warren::settings::BrokerSettings;
use warren::topology::Topology;
use warren::{PublishOptions, Publisher};

pub const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// A test's own corner of the broker.
pub struct TestBroker {
    pub names: Names,
    pub connection: Connection,
    pub channel: Channel,
    pub publisher: Publisher,
}

/// A message read from a queue.
#[derive(Debug, Clone)]
pub struct Message {
    pub body: Vec<u8>,
    pub properties: BasicProperties,
    pub routing_key: String,
}

impl Message {
    pub fn header(&self, name: &str) -> Option<String> {
        let headers = self.properties.headers().as_ref();
        contract::header_str(headers, name)
            .or_else(|| contract::header_u32(headers, name).map(|n| n.to_string()))
    }

    pub fn headers(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        if let Some(table) = self.properties.headers() {
            for (k, v) in table.inner() {
                let shown = match v {
                    AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
                    other => format!("{other:?}"),
                };
                out.insert(k.to_string(), shown);
            }
        }
        out
    }

    pub fn message_id(&self) -> Option<String> {
        self.properties.message_id().as_ref().map(|s| s.to_string())
    }
}

/// How long a test waits for the broker to take a connection before it
/// fails: a broker that accepts TCP but never answers (still booting, or
/// blocked) fails the test with a clear message instead of hanging it.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// A connection to the test broker, or a clear error within
/// [`CONNECT_TIMEOUT`].
pub async fn connect(url: &str) -> anyhow::Result<Connection> {
    match tokio::time::timeout(
        CONNECT_TIMEOUT,
        Connection::connect(url, ConnectionProperties::default()),
    )
    .await
    {
        Ok(connection) => connection
            .context("RabbitMQ must run on 127.0.0.1:5672 (guest/guest); scripts/test starts it"),
        Err(_) => bail!(
            "RabbitMQ on 127.0.0.1:5672 did not take a connection within {CONNECT_TIMEOUT:?}; \
             is it running (scripts/test starts it) and not blocked by an alarm?"
        ),
    }
}

/// The delay cascade every test namespace shares (`broker.delay_cascade`):
/// 28 quorum queues declared once and kept, instead of 28 created and
/// deleted per test, a churn that can wedge a small RabbitMQ node
/// (rabbitmq-server#13828). Every process a test starts gets it too.
pub const TEST_DELAY_CASCADE: &str = "warren-test";

impl TestBroker {
    /// A fresh namespace on the local broker, on the shared test cascade.
    pub async fn new() -> anyhow::Result<Self> {
        let namespace = format!("t-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        Self::with_namespace(namespace).await
    }

    /// A fresh namespace with a delay cascade of its own, for a test that
    /// counts what the cascade's levels hold.
    pub async fn with_own_delay_cascade() -> anyhow::Result<Self> {
        let mut broker = Self::new().await?;
        broker.names = Names::new(broker.namespace());
        broker.publisher = Publisher::on(&broker.connection, broker.names.clone()).await?;
        Ok(broker)
    }

    pub async fn with_namespace(namespace: String) -> anyhow::Result<Self> {
        // Build the worker binaries first: the build blocks this thread,
        // and a broker connection opened before it could miss heartbeats
        // and be dropped while cargo runs.
        crate::worker::binary("email-worker", "email-worker")?;
        let connection = connect(AMQP_URL).await?;
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let names = Names::new(namespace).with_delay_cascade(TEST_DELAY_CASCADE);
        let publisher = Publisher::on(&connection, names.clone()).await?;
        Ok(Self {
            names,
            connection,
            channel,
            publisher,
        })
    }

    pub fn namespace(&self) -> &str {
        self.names.namespace()
    }

    /// Broker settings pointing at this namespace.
    pub fn settings(&self) -> BrokerSettings {
        BrokerSettings {
            namespace: self.namespace().to_owned(),
            delay_cascade: self.names.delay_cascade().to_owned(),
            ..BrokerSettings::default()
        }
    }

    /// The email worker's topology in this namespace, for tests that queue
    /// tasks before any worker runs.
    pub fn email_topology(&self, retry_delays: &[Duration]) -> Topology {
        Topology::new(&self.names, "email", &["email.#"], retry_delays)
    }

    pub async fn declare_email_topology(&self, retry_delays: &[Duration]) -> anyhow::Result<()> {
        self.email_topology(retry_delays)
            .declare(&self.connection)
            .await?;
        Ok(())
    }

    /// Declares `{namespace}.spy`, a queue that gets a copy of every task
    /// published to the namespace's tasks exchange with a routing key
    /// matching `binding_key` (`#` for all), and returns its name. It is
    /// auto-delete: it goes once the test stops reading it.
    pub async fn spy(&self, binding_key: &str) -> anyhow::Result<String> {
        let spy = format!("{}.spy", self.namespace());
        self.channel
            .queue_declare(
                spy.as_str().into(),
                QueueDeclareOptions {
                    auto_delete: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        self.channel
            .queue_bind(
                spy.as_str().into(),
                self.names.tasks_exchange().as_str().into(),
                binding_key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok(spy)
    }

    /// Publishes a task as a Warren producer does; returns its id.
    pub async fn publish(
        &self,
        task_type: &str,
        body: &serde_json::Value,
        options: PublishOptions,
    ) -> anyhow::Result<String> {
        Ok(self
            .publisher
            .publish_task(task_type, body, options)
            .await?)
    }

    /// Publishes raw bytes with hand-made properties (for malformed input and
    /// producers that leave fields out).
    pub async fn publish_raw(
        &self,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> anyhow::Result<()> {
        self.publisher
            .publish_confirmed(&self.names.tasks_exchange(), routing_key, body, properties)
            .await?;
        Ok(())
    }

    /// Ready messages in a queue.
    pub async fn depth(&self, queue: &str) -> anyhow::Result<u32> {
        let channel = self.connection.create_channel().await?;
        let q = channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        let _ = channel.close(200, "ok".into()).await;
        Ok(q.message_count())
    }

    /// Takes (and acks) up to `n` messages from a queue, waiting up to
    /// `timeout` for them to arrive.
    pub async fn take(
        &self,
        queue: &str,
        n: usize,
        timeout: Duration,
    ) -> anyhow::Result<Vec<Message>> {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        while out.len() < n {
            match self
                .channel
                .basic_get(queue.into(), BasicGetOptions::default())
                .await?
            {
                Some(m) => {
                    m.delivery.acker.ack(BasicAckOptions::default()).await?;
                    out.push(Message {
                        body: m.delivery.data.clone(),
                        properties: m.delivery.properties.clone(),
                        routing_key: m.delivery.routing_key.to_string(),
                    });
                }
                None if Instant::now() >= deadline => {
                    bail!(
                        "queue {queue}: got {} of {n} messages within {timeout:?}",
                        out.len()
                    )
                }
                None => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        Ok(out)
    }

    /// The parking lot of the email queue.
    pub fn email_dead_queue(&self) -> String {
        self.names.dead_queue("email")
    }

    /// Deletes this namespace's email topology and exchanges.
    pub async fn cleanup(&self) -> anyhow::Result<()> {
        cleanup_namespace(&self.connection, &self.names, &[Duration::ZERO]).await
    }
}

/// Deletes a namespace's queues (any retry rung from 0 to 1 h in the usual
/// steps, plus the given delays) and exchanges.
pub async fn cleanup_namespace(
    connection: &Connection,
    names: &Names,
    extra_delays: &[Duration],
) -> anyhow::Result<()> {
    cleanup_namespace_stems(connection, names, &["email"], extra_delays).await
}

impl TestBroker {
    /// The parking lot of the work queue with stem `stem` (`{ns}.{stem}.dead`).
    pub fn dead_queue(&self, stem: &str) -> String {
        self.names.dead_queue(stem)
    }

    /// Deletes this namespace's queues of the given stems (work queue,
    /// parking lot, every usual retry rung plus `extra_delays`) and its
    /// exchanges.
    pub async fn cleanup_stems(
        &self,
        stems: &[&str],
        extra_delays: &[Duration],
    ) -> anyhow::Result<()> {
        cleanup_namespace_stems(&self.connection, &self.names, stems, extra_delays).await
    }
}

/// [`cleanup_namespace`] for any queue stems (`image`, ...), not only
/// `email`.
pub async fn cleanup_namespace_stems(
    connection: &Connection,
    names: &Names,
    stems: &[&str],
    extra_delays: &[Duration],
) -> anyhow::Result<()> {
    let channel = connection.create_channel().await?;
    let mut delays: Vec<Duration> = [
        100, 200, 250, 300, 500, 1000, 2000, 5000, 30_000, 120_000, 600_000,
    ]
    .into_iter()
    .map(Duration::from_millis)
    .collect();
    delays.extend_from_slice(extra_delays);
    for stem in stems {
        let mut queues = vec![names.work_queue(stem), names.dead_queue(stem)];
        queues.extend(delays.iter().map(|d| names.retry_queue(stem, *d)));
        for q in queues {
            let _ = channel
                .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
    }
    // Workers declare the events exchange; a gateway, the events stream.
    let _ = channel
        .queue_delete(
            names.events_stream().as_str().into(),
            QueueDeleteOptions::default(),
        )
        .await;
    // The delay cascade: every worker, producer and gateway declares it. A
    // shared one stays; the namespace's own part goes.
    let cascade = warren::topology::DelayCascade::new(names);
    let owned = cascade.owned_names();
    for q in cascade
        .queues()
        .into_iter()
        .filter(|q| owned.contains(&q.name))
    {
        let _ = channel
            .queue_delete(q.name.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    let mut exchanges = cascade.owned_exchanges();
    exchanges.extend([
        names.tasks_exchange(),
        names.dead_exchange(),
        names.events_exchange(),
    ]);
    for x in exchanges {
        let _ = channel
            .exchange_delete(x.as_str().into(), ExchangeDeleteOptions::default())
            .await;
    }
    let _ = channel.close(200, "cleaned".into()).await;
    Ok(())
}

/// Runs `rabbitmqctl` on the local node (`stop_app`, `start_app`,
/// `await_startup`): for the disruptive tests, under the exclusive broker
/// lock.
pub fn rabbitmqctl(args: &[&str]) {
    let status = std::process::Command::new("rabbitmqctl")
        .args(args)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("rabbitmqctl must be installed");
    assert!(status.success(), "rabbitmqctl {args:?} failed");
}
