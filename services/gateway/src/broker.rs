//! The gateway's link to RabbitMQ: two connections, reconnected as one.
//!
//! One publishes (tasks with confirms and `mandatory`, and the `queued`
//! events); the other declares the events stream and follows it into the
//! [`Tracker`]. Kept apart because RabbitMQ throttles a publishing
//! connection under a resource alarm, and the status view must keep
//! reading then. When either is lost beyond lapin's own recovery, both are
//! dropped and opened again with backoff; the stream is then read from its
//! first offset again, and the view skips what it already holds. On the
//! `redis` status store the stream is read from its end instead: Redis
//! holds the past.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::StreamExt;
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use tokio_util::sync::CancellationToken;
use warren::broker::{Backoff, ConnectError, SessionConnection, connect_session};
use warren::events::{self, EventPublisher, StreamStart};
use warren::settings::BrokerSettings;
use warren::{Names, PublishError, Publisher, topology};

use crate::status::Tracker;

/// With no event for this long, the follower has read what the stream
/// held: the view is caught up.
pub const CATCH_UP_QUIET: Duration = Duration::from_millis(300);

/// What a handler publishes through, while connected.
#[derive(Clone)]
pub struct Outbound {
    pub publisher: Publisher,
    pub events: EventPublisher,
    status: lapin::ConnectionStatus,
    /// The connection that reads the events stream.
    reader: Arc<SessionConnection>,
}

impl Outbound {
    pub fn is_connected(&self) -> bool {
        self.status.connected()
    }
}

/// How long the events stream keeps events, and how long lapin's recovery
/// may try before the session starts over (twice `broker.connect_timeout`).
struct Durations {
    retention: Duration,
    recovery_limit: Duration,
}

/// The broker side of the gateway.
pub struct Broker {
    names: Names,
    identity: String,
    outbound: RwLock<Option<Outbound>>,
    following: AtomicBool,
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("{0}")]
    Broker(#[from] lapin::Error),
    #[error(transparent)]
    Publisher(#[from] PublishError),
    #[error(
        "the events stream {stream} exists with other arguments than events.retention asks for ({source}); \
         delete it (it is re-created on start-up, losing its events) or set events.retention to its x-max-age"
    )]
    StreamConflict {
        stream: String,
        #[source]
        source: lapin::Error,
    },
    #[error(transparent)]
    Topology(Box<warren::TopologyError>),
    #[error("the broker ended the events stream consumer (was the stream deleted?)")]
    StreamEnded,
    #[error("the publishing connection was lost")]
    PublishingLost,
    #[error("lapin's recovery did not reconnect within {0:?}")]
    RecoveryStalled(Duration),
}

impl Broker {
    pub fn new(names: Names, identity: String) -> Self {
        Self {
            names,
            identity,
            outbound: RwLock::new(None),
            following: AtomicBool::new(false),
        }
    }

    pub fn names(&self) -> &Names {
        &self.names
    }

    /// `gateway@<host>/<pid>`: the `by` of the events it emits.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// The publishing side, if connected.
    pub fn outbound(&self) -> Option<Outbound> {
        self.outbound
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .filter(Outbound::is_connected)
    }

    /// Connected on both sides and following the stream.
    pub fn is_connected(&self) -> bool {
        self.following.load(Ordering::SeqCst) && self.outbound().is_some()
    }

    fn set_outbound(&self, outbound: Option<Outbound>) {
        *self.outbound.write().unwrap_or_else(|e| e.into_inner()) = outbound;
    }

    /// Connects, declares, follows; reconnects until `shutdown`. Returns an
    /// error only for what reconnecting cannot fix (the stream exists with
    /// other arguments).
    pub async fn run(
        self: Arc<Self>,
        settings: BrokerSettings,
        retention: Duration,
        tracker: Arc<Tracker>,
        shutdown: CancellationToken,
    ) -> Result<(), SessionError> {
        let mut backoff = Backoff::new(Duration::from_millis(250), settings.reconnect_max_delay);
        loop {
            let result = self
                .session(&settings, retention, &tracker, &shutdown, &mut backoff)
                .await;
            self.set_outbound(None);
            self.following.store(false, Ordering::SeqCst);
            warren::metrics::broker_connected(false);
            match result {
                Ok(()) => return Ok(()),
                Err(e @ SessionError::StreamConflict { .. }) => {
                    tracing::error!(error = %e, "The events stream conflicts with the settings; stopping.");
                    return Err(e);
                }
                Err(e) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(
                        error = %e,
                        retry_in_ms = delay.as_millis() as u64,
                        "Broker connection lost; reconnecting."
                    );
                    tokio::select! {
                        _ = shutdown.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    async fn session(
        &self,
        settings: &BrokerSettings,
        retention: Duration,
        tracker: &Tracker,
        shutdown: &CancellationToken,
        backoff: &mut Backoff,
    ) -> Result<(), SessionError> {
        let connections = async {
            let publishing =
                connect_session(settings, &format!("{} publish", self.identity)).await?;
            let following = connect_session(settings, &format!("{} events", self.identity)).await?;
            Ok::<_, ConnectError>((publishing, following))
        };
        let (publishing, following) = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            c = connections => c?,
        };
        // Shared (weakly) with the event publisher, for its checks of the
        // stream.
        let publishing = Arc::new(publishing);
        let following = Arc::new(following);
        let result = self
            .connected(
                &publishing,
                &following,
                Durations {
                    retention,
                    recovery_limit: settings.connect_timeout.max(Duration::from_secs(1)) * 2,
                },
                tracker,
                shutdown,
                backoff,
            )
            .await;
        // The `queued` events of tasks already confirmed, before the
        // connection goes.
        if let Some(out) = self.outbound() {
            out.events.flush(Duration::from_secs(2)).await;
        }
        self.set_outbound(None);
        // A connection already lost (its node gone, lapin still trying to
        // recover it) may never answer the close: do not wait on it.
        for c in [&publishing, &*following] {
            let _ = tokio::time::timeout(
                settings.connect_timeout,
                c.close(200, "gateway stopping".into()),
            )
            .await;
        }
        result
    }

    async fn connected(
        &self,
        publishing: &Arc<SessionConnection>,
        following: &Arc<SessionConnection>,
        Durations {
            retention,
            recovery_limit,
        }: Durations,
        tracker: &Tracker,
        shutdown: &CancellationToken,
        backoff: &mut Backoff,
    ) -> Result<(), SessionError> {
        // Producers declare the tasks exchange too, so a publish reaches the
        // broker's routing (where `mandatory` says whether a worker's queue
        // is bound) even before any worker has started.
        let channel = publishing.create_channel().await?;
        topology::declare_tasks_exchange(&channel, &self.names).await?;
        // And the delay cascade, for tasks with a delay or an eta.
        topology::declare_delay_cascade(&channel, &self.names)
            .await
            .map_err(|e| SessionError::Topology(Box::new(e)))?;
        let _ = channel.close(200, "declared".into()).await;
        events::declare_stream(following, &self.names, retention)
            .await
            .map_err(|source| {
                if is_precondition_failed(&source) {
                    SessionError::StreamConflict {
                        stream: self.names.events_stream(),
                        source,
                    }
                } else {
                    SessionError::Broker(source)
                }
            })?;
        tracker.set_stream_declared();
        let publisher = Publisher::on(publishing, self.names.clone())
            .await?
            .checking_stream_on(publishing);
        let events = EventPublisher::on(publishing, &self.names).await?;
        self.set_outbound(Some(Outbound {
            publisher,
            events,
            status: publishing.status().clone(),
            reader: following.clone(),
        }));
        // On `memory` the view is the store: read the whole retention. On
        // `redis` the store is Redis; this replica only follows what
        // happens from now on (for SSE, and fresher answers).
        let start = if tracker.store().is_some() {
            StreamStart::Next
        } else {
            StreamStart::First
        };
        let stream = events::follow_from(following, &self.names, start).await?;
        futures::pin_mut!(stream);
        if start == StreamStart::Next {
            tracker.mark_caught_up();
        }
        self.following.store(true, Ordering::SeqCst);
        warren::metrics::broker_connected(true);
        backoff.reset();
        tracing::info!(
            stream = %self.names.events_stream(),
            "Following the task events."
        );
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // lapin's recovery reconnects to the node it lost; a node that stays
        // down is left after `limit` for a fresh pair of connections, which
        // go to a surviving node of `broker.url` (as the workers do).
        let limit = recovery_limit;
        let mut down_since: Option<tokio::time::Instant> = None;
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Ok(()),
                _ = tick.tick() => {
                    let status = publishing.status();
                    if !status.connected() && !status.reconnecting() && !status.connecting() {
                        return Err(SessionError::PublishingLost);
                    }
                    if status.connected() && following.status().connected() {
                        down_since = None;
                    } else if down_since.get_or_insert_with(tokio::time::Instant::now).elapsed() >= limit {
                        return Err(SessionError::RecoveryStalled(limit));
                    }
                }
                next = tokio::time::timeout(CATCH_UP_QUIET, stream.next()) => match next {
                    Err(_quiet) => tracker.mark_caught_up(),
                    Ok(Some(Ok(event))) => {
                        tracker.apply(event);
                    }
                    Ok(Some(Err(e))) => return Err(SessionError::Broker(e)),
                    Ok(None) => return Err(SessionError::StreamEnded),
                },
            }
        }
    }
}

impl Broker {
    /// The result of the `succeeded` event at `offset` of the events
    /// stream, for a result the `redis` store keeps by reference. `None`
    /// when the broker is not connected, the event is gone (past the
    /// retention) or is not that task's.
    pub async fn result_at(&self, offset: u64, task_id: &str) -> Option<serde_json::Value> {
        let reader = self.outbound()?.reader;
        let channel = reader.create_channel().await.ok()?;
        let found = tokio::time::timeout(RESULT_READ_TIMEOUT, async {
            // The event at `offset` is the first after the one before it.
            let start = match offset.checked_sub(1) {
                Some(before) => StreamStart::After(before),
                None => StreamStart::First,
            };
            let stream = events::follow_on(&channel, &self.names, start).await.ok()?;
            futures::pin_mut!(stream);
            let first = stream.next().await?.ok()?;
            (first.offset == offset && first.event.task_id == task_id)
                .then_some(first.event.result)
                .flatten()
        })
        .await
        .ok()
        .flatten();
        let _ = channel.close(200, "result read".into()).await;
        found
    }
}

impl Broker {
    /// Whether the queue exists (a passive declare); `None` when not
    /// connected or the broker did not answer.
    pub async fn queue_exists(&self, queue: &str) -> Option<bool> {
        let reader = self.outbound()?.reader;
        // A passive declare of a missing queue closes its channel: one
        // channel per question.
        let channel = reader.create_channel().await.ok()?;
        let declared = tokio::time::timeout(
            RESULT_READ_TIMEOUT,
            channel.queue_declare(
                queue.into(),
                lapin::options::QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                lapin::types::FieldTable::default(),
            ),
        )
        .await
        .ok()?;
        match declared {
            Ok(_) => {
                let _ = channel.close(200, "queue checked".into()).await;
                Some(true)
            }
            Err(e) if is_not_found(&e) => Some(false),
            Err(_) => None,
        }
    }
}

fn is_not_found(e: &lapin::Error) -> bool {
    matches!(
        e.kind(),
        lapin::ErrorKind::ProtocolError(amqp)
            if matches!(amqp.kind(), AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND))
    )
}

/// How long reading a result kept by reference may take.
const RESULT_READ_TIMEOUT: Duration = Duration::from_secs(5);

fn is_precondition_failed(e: &lapin::Error) -> bool {
    matches!(
        e.kind(),
        lapin::ErrorKind::ProtocolError(amqp)
            if matches!(amqp.kind(), AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED))
    )
}
