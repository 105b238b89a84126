//! One connection's life: connect, declare the topology, open the
//! publishing and consuming channels, consume until shutdown (then drain)
//! or until the connection is lost beyond lapin's recovery; and the watch
//! that makes an outage and its recovery visible in logs and readiness.
//!
//! lapin's recovery is given [`recovery_limit`] (twice
//! `broker.connect_timeout`, 20 s by default) to reconnect. A recovery
//! that has not reconnected by then is abandoned and the session starts
//! over with a fresh connection (whose every attempt has a timeout): after
//! a broker restart, a recovery whose reconnect landed while the broker
//! was still starting was seen to stay down for over a minute, its worker
//! consuming nothing although the broker was back.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::Inner;
use super::delivery::process;
use super::drain::drain;
use crate::broker::{Backoff, ConnectError, connect_session};
use crate::events::EventPublisher;
use crate::metrics;
use crate::publisher::{PublishError, Publisher};
use crate::settings::BrokerSettings;
use crate::topology::TopologyError;

/// What a delivery publishes through: copies (confirmed before the ack)
/// and events (confirmed in envelopes, off the task's path).
#[derive(Clone)]
pub(super) struct Outbound {
    pub(super) publisher: Publisher,
    pub(super) events: Option<EventPublisher>,
    /// Cancelled when a publish broke on the channel: the session restarts.
    pub(super) restart: CancellationToken,
}

#[derive(Debug, thiserror::Error)]
pub(super) enum SessionError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error(transparent)]
    Topology(TopologyError),
    #[error("{0}")]
    Broker(#[from] lapin::Error),
    #[error(transparent)]
    Publisher(#[from] PublishError),
    #[error("the broker cancelled the consumer (was the queue deleted?)")]
    ConsumerCancelled,
    #[error("a publish failed on a broken channel")]
    ChannelBroken,
    #[error("lapin's recovery did not reconnect within {0:?}")]
    RecoveryStalled(Duration),
}

/// How long lapin's recovery may take to reconnect before the session
/// abandons it and starts over with a fresh connection.
pub(super) fn recovery_limit(broker: &BrokerSettings) -> Duration {
    broker.connect_timeout.max(Duration::from_secs(1)) * 2
}

/// One connection's life: connect, declare, consume until shutdown (then
/// drain) or until the connection is lost beyond lapin's recovery.
pub(super) async fn session(
    inner: &Arc<Inner>,
    broker: &BrokerSettings,
    permits: &Arc<Semaphore>,
    tracker: &TaskTracker,
    shutdown: &CancellationToken,
    backoff: &mut Backoff,
    events: Option<&EventPublisher>,
) -> Result<(), SessionError> {
    // Shared (weakly) with the event publisher, for its checks of the
    // stream; closed when this session drops it.
    let connection = Arc::new(tokio::select! {
        _ = shutdown.cancelled() => return Ok(()),
        connection = connect_session(broker, &inner.identity) => connection?,
    });
    match inner.topology.declare(&connection).await {
        Ok(()) => {}
        Err(e @ (TopologyError::Conflict { .. } | TopologyError::QueueTypeChanged { .. })) => {
            let _ = connection.close(200, "topology conflict".into()).await;
            return Err(SessionError::Topology(e));
        }
        Err(TopologyError::Broker { source, .. }) => return Err(SessionError::Broker(source)),
    }
    let publisher = Publisher::on(&connection, inner.names.clone())
        .await?
        .checking_stream_on(&connection);
    // The worker's one event publisher, on this connection: what it could
    // not publish on the last one goes out here.
    if let Some(events) = events {
        events.attach(&connection).await?;
    }
    let events = events.cloned();
    let restart = CancellationToken::new();
    // Shared by every delivery of the session (one reference count each).
    let out = Arc::new(Outbound {
        publisher,
        events,
        restart: restart.clone(),
    });
    let channel = connection.create_channel().await?;
    channel
        .basic_qos(inner.consumer.prefetch, BasicQosOptions::default())
        .await?;
    let tag = format!("{}#{}", inner.identity, uuid::Uuid::new_v4().simple());
    let mut consumer = channel
        .basic_consume(
            inner.queue.as_str().into(),
            tag.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    inner.status.consuming.store(true, Ordering::SeqCst);
    metrics::broker_connected(true);
    if inner.status.sessions.fetch_add(1, Ordering::SeqCst) > 0 {
        metrics::broker_reconnected();
    }
    backoff.reset();
    info!(queue = %inner.queue, "Consuming.");
    let limit = recovery_limit(broker);
    let stalled = CancellationToken::new();
    let watcher = tokio::spawn(watch_connection(
        connection.status().clone(),
        connection.events_listener(),
        inner.clone(),
        (limit, stalled.clone()),
    ));

    let result = loop {
        // Take a permit before the next delivery, so at most `concurrency`
        // handlers run and the rest of the prefetch waits in the buffer.
        // A lost connection is watched here too: with every permit held (a
        // long handler, an ack waiting on the lost connection), the session
        // must still start over (seen on a cluster node's loss: the worker
        // sat there, consuming nothing).
        let permit = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break Ok(()),
            _ = restart.cancelled() => break Err(SessionError::ChannelBroken),
            _ = stalled.cancelled() => break Err(SessionError::RecoveryStalled(limit)),
            permit = permits.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break Ok(()),
            },
        };
        let next = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break Ok(()),
            _ = restart.cancelled() => break Err(SessionError::ChannelBroken),
            _ = stalled.cancelled() => break Err(SessionError::RecoveryStalled(limit)),
            next = consumer.next() => next,
        };
        match next {
            Some(Ok(delivery)) => {
                let inner = inner.clone();
                tracker.spawn(process(inner, out.clone(), delivery, permit));
            }
            Some(Err(e)) => {
                drop(permit);
                debug!(error = %e, "The consumer saw a broker error; waiting for lapin's recovery.");
                let recovered = tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => break Ok(()),
                    _ = stalled.cancelled() => break Err(SessionError::RecoveryStalled(limit)),
                    recovered = channel.wait_for_recovery(e) => recovered,
                };
                if let Err(e) = recovered {
                    break Err(SessionError::Broker(e));
                }
            }
            None => break Err(SessionError::ConsumerCancelled),
        }
    };
    watcher.abort();
    inner.status.consuming.store(false, Ordering::SeqCst);
    metrics::broker_connected(false);
    if result.is_ok() {
        drain(inner, &channel, &tag, &mut consumer, tracker).await;
    }
    // The finished tasks' last events, confirmed before the connection
    // goes. After a lost connection they wait for the next one instead.
    if let Some(events) = &out.events
        && result.is_ok()
        && !events.flush(Duration::from_secs(2)).await
    {
        debug!(
            "Some task events were not confirmed before the connection closed; they go out on the next one."
        );
    }
    // A connection already lost (its node gone, lapin still trying to
    // recover it) may never answer the close: do not wait on it.
    let close = async {
        if channel.status().connected() {
            let _ = channel.close(200, "worker stopping".into()).await;
        }
        let _ = connection.close(200, "worker stopping".into()).await;
    };
    let _ = tokio::time::timeout(broker.connect_timeout, close).await;
    result
}

/// Watches the connection: while lapin recovers a dropped connection by
/// itself the consumer stream stays quiet, so this is where the outage and
/// the recovery become visible (logs and readiness). Its events carry the
/// broker's resource alarms, the error that dropped the connection and
/// each reconnection (`Connected`: this listener exists only after the
/// first connect, so every one it sees is a recovery); the connection
/// state, sampled every 200 ms, covers whatever the events do not say.
/// A recovery is logged once per outage, whichever saw it first: a drop
/// and a reconnect between two samples is still seen through the events.
/// A connection down for `limit` cancels `stalled`: the session abandons
/// lapin's recovery and starts over.
async fn watch_connection(
    status: lapin::ConnectionStatus,
    events: impl futures::Stream<Item = lapin::Event> + Send + 'static,
    inner: Arc<Inner>,
    (limit, stalled): (Duration, CancellationToken),
) {
    let mut down_since: Option<tokio::time::Instant> = None;
    futures::pin_mut!(events);
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Reconnections already logged by a sample whose `Connected` event is
    // still to come.
    let mut logged_ahead = 0usize;
    let interrupted = |reconnecting: bool| {
        if inner.status.consuming.swap(false, Ordering::SeqCst) {
            metrics::broker_connected(false);
            warn!(reconnecting, "Broker connection interrupted; recovering.");
        }
    };
    let recovered = || {
        inner.status.consuming.store(true, Ordering::SeqCst);
        metrics::broker_connected(true);
        metrics::broker_reconnected();
        info!(queue = %inner.queue, "Broker connection recovered; consuming again.");
    };
    loop {
        tokio::select! {
            event = events.next() => match event {
                Some(lapin::Event::ConnectionBlocked(reason)) => warn!(
                    reason = %reason,
                    "The broker blocked this connection (resource alarm); retry and dead-letter copies wait."
                ),
                Some(lapin::Event::ConnectionUnblocked) => info!("The broker unblocked this connection."),
                // A channel closed by the broker (a passive declare's
                // NOT_FOUND) says so here too: only a connection that is
                // down is an interruption.
                Some(lapin::Event::Error(_)) if !status.connected() => {
                    interrupted(status.reconnecting())
                }
                Some(lapin::Event::Connected) => {
                    if logged_ahead > 0 {
                        logged_ahead -= 1;
                    } else {
                        // The drop may have come and gone between samples.
                        interrupted(true);
                        recovered();
                    }
                }
                Some(_) => {}
                None => return,
            },
            _ = tick.tick() => {
                let connected = status.connected();
                if connected {
                    down_since = None;
                } else if down_since.get_or_insert_with(tokio::time::Instant::now).elapsed() >= limit {
                    warn!(
                        limit_ms = limit.as_millis() as u64,
                        "The broker connection did not recover in time; starting over with a fresh connection."
                    );
                    stalled.cancel();
                    return;
                }
                let consuming = inner.status.consuming.load(Ordering::SeqCst);
                if consuming && !connected {
                    interrupted(status.reconnecting());
                } else if !consuming && connected {
                    logged_ahead += 1;
                    recovered();
                }
            }
        }
    }
}
