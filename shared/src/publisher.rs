//! Publishing with publisher confirms and `mandatory`: a nack or a returned
//! (unroutable) message is an error the caller sees, never a silent loss.
//!
//! Producers use [`Publisher::publish_task`]; the runtime uses
//! [`Publisher::publish_confirmed`] for retry and parking-lot copies.
//!
//! A task may be delayed ([`PublishOptions::delay`]) or given a due time
//! ([`PublishOptions::eta`]) of any length: it is published into the
//! broker's delay cascade (see [`crate::topology::delay`]) and reaches the
//! work queues once due, with nothing held by any process meanwhile.
//!
//! ```no_run
//! # async fn run(publisher: warren::Publisher) -> Result<(), warren::PublishError> {
//! use std::time::Duration;
//! use warren::PublishOptions;
//!
//! let body = serde_json::json!({"to": "ada@example.com", "subject": "Later", "text": "Hi"});
//! // In three hours.
//! publisher
//!     .publish_task("email.send", &body, PublishOptions::default().delay(Duration::from_secs(3 * 3600)))
//!     .await?;
//! // Tomorrow at 09:00 UTC.
//! let tomorrow = chrono::Utc::now().date_naive().succ_opt().and_then(|d| d.and_hms_opt(9, 0, 0));
//! if let Some(at) = tomorrow {
//!     publisher
//!         .publish_task("email.send", &body, PublishOptions::default().eta(at.and_utc()))
//!         .await?;
//! }
//! # Ok(())
//! # }
//! ```

use std::time::Duration;

use chrono::{DateTime, Utc};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection};
use serde::Serialize;
use tracing::Instrument;

use crate::broker::{ConnectError, connect};
use crate::contract::{self, CONTENT_TYPE_JSON, MAX_PRIORITY, Names, PERSISTENT};
use crate::events::ChannelSource;
use crate::settings::BrokerSettings;
use crate::topology::delay::{self, DelayTooLong, Destination};

/// Why a task was not published. Every variant means the broker did not take it.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// No connection to the broker.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The channel or connection failed.
    #[error("the broker did not take the message: {0}")]
    Broker(#[from] lapin::Error),
    /// The broker nacked the message.
    #[error("the broker refused the message (publisher confirm nack)")]
    Nacked,
    #[error(
        "the broker could not route the message to any queue ({code} {text}): is the consumer's topology declared?"
    )]
    /// The broker returned the message: no queue is bound for its key.
    Returned {
        /// The AMQP reply code (312 `NO_ROUTE`).
        code: u16,
        /// The broker's reply text.
        text: String,
    },
    /// The body is not serializable to JSON.
    #[error("the task body could not be serialized: {0}")]
    Serialize(#[from] serde_json::Error),
    /// A priority above 9.
    #[error("priority {0} is out of range 0-{MAX_PRIORITY}")]
    InvalidPriority(u8),
    #[error(
        "the broker did not confirm the message within {0:?} (is it blocked by a resource alarm?)"
    )]
    /// No confirm within the timeout.
    Timeout(Duration),
    /// A delay longer than the delay cascade serves.
    #[error(transparent)]
    DelayTooLong(#[from] DelayTooLong),
    /// The delay cascade could not be declared.
    #[error(transparent)]
    Topology(Box<crate::topology::TopologyError>),
    /// The events stream did not take messages within the confirm timeout
    /// (the broker is still starting it again): a record was not sent.
    #[error("the events stream {0} did not take messages in time (is the broker starting?)")]
    StreamUnavailable(String),
}

/// How long a publish may wait for the broker's confirm. A broker under a
/// memory or disk alarm blocks publishers silently; an error after a while
/// beats a task that hangs forever.
pub const CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);

/// Per-publish choices of a producer.
#[derive(Debug, Clone, Default)]
pub struct PublishOptions {
    /// The task id; a UUID v7 when left out.
    pub id: Option<String>,
    /// 0-9, 9 served first.
    pub priority: Option<u8>,
    /// Drop the task if nobody started it within this time (it is then
    /// dead-lettered by the broker into the parking lot).
    pub expiration: Option<Duration>,
    /// Extra headers, e.g. `traceparent`.
    pub headers: FieldTable,
    /// When the task is due: published into the delay cascade until then.
    /// Set with [`PublishOptions::delay`] or [`PublishOptions::eta`].
    pub due: Option<Due>,
}

/// When a delayed task is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// This long after publishing.
    After(Duration),
    /// At this time (a time already past: now).
    At(DateTime<Utc>),
}

impl Due {
    /// The due time, for a task published at `now`.
    pub fn at(self, now: DateTime<Utc>) -> DateTime<Utc> {
        match self {
            Due::After(d) => now + chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX),
            Due::At(t) => t,
        }
    }
}

impl PublishOptions {
    /// Start the task no sooner than `delay` from now (rounded up to whole
    /// seconds; any length up to [`delay::MAX_DELAY`]).
    pub fn delay(mut self, delay: Duration) -> Self {
        self.due = Some(Due::After(delay));
        self
    }

    /// Start the task no sooner than `at`.
    pub fn eta(mut self, at: DateTime<Utc>) -> Self {
        self.due = Some(Due::At(at));
        self
    }
}

/// A confirmed publishing channel. Cheap to clone; safe to share between
/// tasks.
#[derive(Clone)]
pub struct Publisher {
    channel: Channel,
    names: Names,
    // Keeps a connection that this publisher opened itself alive.
    _connection: Option<std::sync::Arc<Connection>>,
    /// Where the events stream is checked before a record goes to it
    /// ([`Publisher::checking_stream_on`]; not kept alive from here), and
    /// the events exchange, named once rather than at every publish.
    stream_check: Option<(std::sync::Weak<dyn ChannelSource>, String)>,
}

impl Publisher {
    /// Opens a connection of its own: for producers.
    pub async fn connect(settings: &BrokerSettings) -> Result<Self, PublishError> {
        let connection = connect(settings, "warren-producer").await?;
        let names = settings.names();
        let mut publisher = Self::on(&connection, names.clone()).await?;
        // A producer may start before any worker: make sure the exchange
        // exists so the publish reaches the broker's routing, where
        // `mandatory` tells us if no queue is bound yet.
        crate::topology::declare_tasks_exchange(&publisher.channel, &names).await?;
        // And the delay cascade, so a delayed task has its levels too.
        let cascade = connection.create_channel().await?;
        crate::topology::declare_delay_cascade(&cascade, &names)
            .await
            .map_err(|e| PublishError::Topology(Box::new(e)))?;
        let _ = cascade.close(200, "declared".into()).await;
        let connection = std::sync::Arc::new(connection);
        publisher = publisher.checking_stream_on(&connection);
        publisher._connection = Some(connection);
        Ok(publisher)
    }

    /// Before each publish to the events exchange (workflow and chord
    /// records), checks on `connection` that the events stream takes
    /// messages, waiting up to [`CONFIRM_TIMEOUT`] for it: right after a
    /// broker restart, RabbitMQ 3.10 confirms messages routed to a stream
    /// it has not started again yet, and drops them
    /// ([`crate::events::stream_ready`]). A chord whose record were lost so
    /// would never fire its callback.
    pub fn checking_stream_on<C: ChannelSource>(mut self, connection: &std::sync::Arc<C>) -> Self {
        let source: std::sync::Weak<C> = std::sync::Arc::downgrade(connection);
        self.stream_check = Some((source, self.names.events_exchange()));
        self
    }

    /// Waits until the events stream takes messages, if this publisher
    /// checks it.
    async fn stream_taking(&self) -> Result<(), PublishError> {
        let Some((check, _)) = &self.stream_check else {
            return Ok(());
        };
        let stream = self.names.events_stream();
        let deadline = tokio::time::Instant::now() + CONFIRM_TIMEOUT;
        loop {
            // With its connection gone, the publish fails on its own.
            let Some(source) = check.upgrade() else {
                return Ok(());
            };
            if crate::events::stream_ready(source.as_ref(), &stream).await
                != crate::events::StreamReady::No
            {
                return Ok(());
            }
            drop(source);
            if tokio::time::Instant::now() >= deadline {
                return Err(PublishError::StreamUnavailable(stream));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A publisher on a channel of an existing connection.
    pub async fn on(connection: &Connection, names: Names) -> Result<Self, PublishError> {
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Self {
            channel,
            names,
            _connection: None,
            stream_check: None,
        })
    }

    /// The confirm channel it publishes on.
    pub(crate) fn channel(&self) -> &lapin::Channel {
        &self.channel
    }

    /// The names it publishes to.
    pub fn names(&self) -> &Names {
        &self.names
    }

    /// Publishes a task to the tasks exchange with routing key `task_type`
    /// and returns its id once the broker has confirmed it.
    pub async fn publish_task<T: Serialize + ?Sized>(
        &self,
        task_type: &str,
        body: &T,
        options: PublishOptions,
    ) -> Result<String, PublishError> {
        let payload = serde_json::to_vec(body)?;
        let id = options
            .id
            .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
        let priority = options.priority.unwrap_or(0);
        if priority > MAX_PRIORITY {
            return Err(PublishError::InvalidPriority(priority));
        }
        // The header table is built once: the contract's, the caller's,
        // a delayed task's due time, the trace context.
        let now_ms = chrono::Utc::now().timestamp_millis();
        let mut headers = task_headers(now_ms);
        for (k, v) in options.headers.inner() {
            headers.insert(k.clone(), v.clone());
        }
        let mut exchange = self.names.tasks_exchange();
        let mut routing_key = task_type.to_owned();
        if let Some(due) = options.due {
            let now = Utc::now();
            let eta = due.at(now);
            if let Ok(wait) = (eta - now).to_std()
                && !wait.is_zero()
            {
                let route = delay::route(&self.names, wait, Destination::TaskType(task_type))?;
                contract::set_int(
                    &mut headers,
                    contract::headers::ETA_MS,
                    eta.timestamp_millis(),
                );
                exchange = route.exchange;
                routing_key = route.routing_key;
            }
        }
        // As for a consumer's span (`trace::messaging_attributes`): a
        // publish span exists only to be exported.
        let span = if crate::trace::exporting() {
            let span = tracing::info_span!(
                "publish",
                otel.name = %format!("publish {exchange}"),
                otel.kind = "producer",
            );
            crate::trace::messaging_attributes(
                &span,
                crate::trace::Operation::Publish,
                &crate::trace::Message {
                    destination: &exchange,
                    routing_key: &routing_key,
                    id: &id,
                    body_size: payload.len(),
                },
            );
            span
        } else {
            tracing::Span::none()
        };
        // A caller that set its own trace context keeps it; otherwise the
        // task continues the caller's current trace.
        if !crate::trace::has_context(&headers) {
            crate::trace::inject_publish(&span, &mut headers);
        }
        let mut properties = properties_with(&id, task_type, priority, now_ms, headers);
        if let Some(ttl) = options.expiration {
            properties = properties.with_expiration(ttl.as_millis().to_string().into());
        }
        self.publish_confirmed(&exchange, &routing_key, &payload, properties)
            .instrument(span)
            .await?;
        Ok(id)
    }

    /// Publishes with `mandatory` and waits for the broker's confirm.
    pub async fn publish_confirmed(
        &self,
        exchange: &str,
        routing_key: &str,
        payload: &[u8],
        properties: BasicProperties,
    ) -> Result<(), PublishError> {
        self.publish_for(Purpose::Task, exchange, routing_key, payload, properties)
            .await
    }

    /// [`Publisher::publish_confirmed`], counted under `purpose` in
    /// `warren_publish_confirms_total`.
    pub(crate) async fn publish_for(
        &self,
        purpose: Purpose,
        exchange: &str,
        routing_key: &str,
        payload: &[u8],
        properties: BasicProperties,
    ) -> Result<(), PublishError> {
        let result = self
            .publish_inner(exchange, routing_key, payload, properties)
            .await;
        let label = match &result {
            Ok(()) => "ack",
            Err(PublishError::Nacked) => "nack",
            Err(PublishError::Returned { .. }) => "returned",
            Err(PublishError::Timeout(_)) => "timeout",
            Err(_) => "error",
        };
        crate::metrics::publish_result(purpose.as_str(), label);
        result
    }

    async fn publish_inner(
        &self,
        exchange: &str,
        routing_key: &str,
        payload: &[u8],
        properties: BasicProperties,
    ) -> Result<(), PublishError> {
        if self
            .stream_check
            .as_ref()
            .is_some_and(|(_, events)| exchange == events)
        {
            self.stream_taking().await?;
        }
        let publish = async {
            self.channel
                .basic_publish(
                    ShortString::from(exchange),
                    ShortString::from(routing_key),
                    BasicPublishOptions {
                        mandatory: true,
                        ..Default::default()
                    },
                    payload,
                    properties,
                )
                .await?
                .await
        };
        let confirm = tokio::time::timeout(CONFIRM_TIMEOUT, publish)
            .await
            .map_err(|_| PublishError::Timeout(CONFIRM_TIMEOUT))??;
        match confirm {
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Ack(Some(returned)) | Confirmation::Nack(Some(returned)) => {
                Err(PublishError::Returned {
                    code: returned.reply_code,
                    text: returned.reply_text.to_string(),
                })
            }
            Confirmation::Nack(None) => Err(PublishError::Nacked),
            // confirm_select is always on for this channel.
            Confirmation::NotRequested => Ok(()),
        }
    }
}

/// Why a message is published, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Purpose {
    /// A new task from a producer.
    Task,
    /// A failed task's copy into a delay queue.
    Retry,
    /// A failed task's copy into the parking lot.
    DeadLetter,
    /// A task received before its due time, moved into the delay cascade.
    Defer,
}

impl Purpose {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Purpose::Task => "task",
            Purpose::Retry => "retry",
            Purpose::DeadLetter => "dead_letter",
            Purpose::Defer => "defer",
        }
    }
}

/// The AMQP properties of a fresh task, as the contract defines them.
pub fn task_properties(id: &str, task_type: &str, priority: u8) -> BasicProperties {
    let now_ms = chrono::Utc::now().timestamp_millis();
    properties_with(id, task_type, priority, now_ms, task_headers(now_ms))
}

/// The headers of a fresh task published at `now_ms`.
fn task_headers(now_ms: i64) -> FieldTable {
    let mut headers = FieldTable::default();
    contract::set_int(&mut headers, contract::headers::ATTEMPT, 1);
    contract::set_int(&mut headers, contract::headers::PUBLISHED_AT_MS, now_ms);
    headers
}

/// The properties of a fresh task published at `now_ms`, with `headers`.
fn properties_with(
    id: &str,
    task_type: &str,
    priority: u8,
    now_ms: i64,
    headers: FieldTable,
) -> BasicProperties {
    BasicProperties::default()
        .with_message_id(id.into())
        .with_content_type(CONTENT_TYPE_JSON.into())
        .with_delivery_mode(PERSISTENT)
        .with_priority(priority)
        .with_timestamp(u64::try_from(now_ms / 1000).unwrap_or(0))
        .with_type(task_type.into())
        .with_headers(headers)
}
