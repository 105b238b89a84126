//! Emitting events without holding a task up: a bounded buffer, written
//! in order and in batches by a task of its own, without waiting for the
//! broker's confirm. Only a full buffer makes a task wait; an event that
//! cannot be published is counted, never fails the task it describes.

use std::time::Duration;

use lapin::options::BasicPublishOptions;
use lapin::types::ShortString;
use lapin::{BasicProperties, Channel, Connection};

use super::TaskEvent;
use crate::contract::{CONTENT_TYPE_JSON, EVENT_MESSAGE_TYPE, Names, PERSISTENT};
use crate::topology::declare_events_exchange;

/// Events waiting to be written. When the broker takes them more slowly
/// than tasks produce them, emitting waits for room: tasks slow down
/// rather than events being lost or memory growing without bound.
const EVENT_BUFFER: usize = 1024;
/// Events written in one go: their frames are queued in order, then the
/// writes are awaited together.
const EVENT_BATCH: usize = 64;

// Events are the traffic; a flush is rare. Boxing every event to save the
// rare flush's bytes would cost an allocation per event.
#[allow(clippy::large_enum_variant)]
enum Outgoing {
    Event(TaskEvent),
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// Publishes events, fire and forget, on a channel of its own.
///
/// [`EventPublisher::emit`] hands the event to a task that writes events
/// in order, in batches, so a task does not wait for its events to reach
/// the socket (lapin's `basic_publish` waits for that) unless the buffer is
/// full.
#[derive(Clone)]
pub struct EventPublisher {
    tx: tokio::sync::mpsc::Sender<Outgoing>,
}

impl EventPublisher {
    /// Declares `{ns}.events`, opens a channel for it and starts the task
    /// that writes to it (it ends when the last handle is dropped).
    pub async fn on(connection: &Connection, names: &Names) -> Result<Self, lapin::Error> {
        let channel = connection.create_channel().await?;
        declare_events_exchange(&channel, names).await?;
        let (tx, rx) = tokio::sync::mpsc::channel(EVENT_BUFFER);
        tokio::spawn(write_events(channel, names.events_exchange(), rx));
        Ok(Self { tx })
    }

    /// Queues `event` for publishing; waits only while the buffer is full.
    /// Events of one publisher reach the broker in the order they were
    /// emitted. One that cannot be published (the connection is gone) is
    /// counted in `warren_task_events_dropped_total`: a lost event never
    /// fails the task it describes.
    pub async fn emit(&self, event: TaskEvent) {
        if self.tx.send(Outgoing::Event(event)).await.is_err() {
            crate::metrics::task_event_dropped();
        }
    }

    /// Waits, at most `timeout`, until the events emitted so far have been
    /// written to the connection; before closing it, so none is lost.
    pub async fn flush(&self, timeout: Duration) {
        let (done, written) = tokio::sync::oneshot::channel();
        if self.tx.send(Outgoing::Flush(done)).await.is_ok() {
            let _ = tokio::time::timeout(timeout, written).await;
        }
    }
}

async fn write_events(
    channel: Channel,
    exchange: String,
    mut rx: tokio::sync::mpsc::Receiver<Outgoing>,
) {
    let exchange = ShortString::from(exchange);
    let mut batch = Vec::with_capacity(EVENT_BATCH);
    while rx.recv_many(&mut batch, EVENT_BATCH).await > 0 {
        let mut writes = Vec::with_capacity(batch.len());
        let mut flushed = Vec::new();
        for outgoing in batch.drain(..) {
            match outgoing {
                Outgoing::Event(event) => {
                    writes.push(Some(Box::pin(publish_event(&channel, &exchange, event))));
                }
                Outgoing::Flush(done) => flushed.push(done),
            }
        }
        // Polled in order: each write queues its frames on its first poll
        // (lapin has no await before that), so the events keep their order
        // on the wire while the batch waits for the socket once.
        std::future::poll_fn(|cx| {
            let mut done = true;
            for slot in &mut writes {
                if let Some(write) = slot {
                    if write.as_mut().poll(cx).is_ready() {
                        *slot = None;
                    } else {
                        done = false;
                    }
                }
            }
            if done {
                std::task::Poll::Ready(())
            } else {
                std::task::Poll::Pending
            }
        })
        .await;
        for done in flushed {
            let _ = done.send(());
        }
    }
}

async fn publish_event(channel: &Channel, exchange: &ShortString, event: TaskEvent) {
    let body = match serde_json::to_vec(&event) {
        Ok(b) => b,
        Err(e) => {
            tracing::debug!(error = %e, "Could not serialize a task event.");
            return;
        }
    };
    let properties = BasicProperties::default()
        .with_content_type(CONTENT_TYPE_JSON.into())
        .with_delivery_mode(PERSISTENT)
        .with_type(EVENT_MESSAGE_TYPE.into())
        .with_message_id(uuid::Uuid::now_v7().to_string().into())
        .with_timestamp(u64::try_from(event.at.timestamp()).unwrap_or(0));
    let published = channel
        .basic_publish(
            exchange.clone(),
            ShortString::from(event.routing_key()),
            BasicPublishOptions::default(),
            &body,
            properties,
        )
        .await;
    if let Err(e) = published {
        crate::metrics::task_event_dropped();
        tracing::debug!(error = %e, task_id = %event.task_id, "Could not publish a task event.");
    }
}
