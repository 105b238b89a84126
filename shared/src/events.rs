//! Task lifecycle events: what happened to task X, replayable.
//!
//! Workers emit an event when a task starts, is scheduled for a retry,
//! succeeds or is dead-lettered; producers that want "queued" (the gateway)
//! emit it after the broker confirmed the task. Events go to the durable
//! topic exchange `{ns}.events` with routing key `{task type}.{state}`
//! (`email.send.succeeded`). A RabbitMQ stream queue, `{ns}.events.stream`,
//! bound with `#`, keeps them for a retention period, so any number of
//! readers can build the same status view from the start of retention and
//! then follow it, without a database.
//!
//! Emitting does not hold a task up: events are queued in a bounded
//! buffer and written in order by a task of their own, without waiting for
//! the broker's confirm (only a full buffer makes a task wait). An event can
//! be lost if the connection fails at that moment; the task itself cannot.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::{Stream, StreamExt};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ExchangeKind};
use serde::{Deserialize, Serialize};

use crate::contract::{CONTENT_TYPE_JSON, Names};

/// Where a task is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    /// Published and confirmed by the broker; no worker has it yet.
    Queued,
    /// A worker is running it.
    Running,
    /// An attempt failed; it waits in a delay queue for the next one.
    Retrying,
    /// Done.
    Succeeded,
    /// In the parking lot; a person must look.
    DeadLettered,
}

impl TaskState {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Queued => "queued",
            TaskState::Running => "running",
            TaskState::Retrying => "retrying",
            TaskState::Succeeded => "succeeded",
            TaskState::DeadLettered => "dead_lettered",
        }
    }

    /// Succeeded and dead-lettered end a task's life.
    pub fn is_final(self) -> bool {
        matches!(self, TaskState::Succeeded | TaskState::DeadLettered)
    }
}

/// One lifecycle event, as JSON on the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskEvent {
    pub task_id: String,
    pub task_type: String,
    pub state: TaskState,
    pub at: DateTime<Utc>,
    /// The attempt this event belongs to (1 for the first).
    pub attempt: u32,
    /// `<service>@<host>/<pid>` of the worker (or producer) that emitted it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    /// For `retrying` and `dead_lettered`: the failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// For `retrying`: when the next attempt starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// For `dead_lettered`: `permanent` or `attempts_exhausted`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// For `succeeded`: the handler's result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
}

impl TaskEvent {
    /// An event with only the always-present fields set.
    pub fn new(task_id: &str, task_type: &str, state: TaskState, attempt: u32) -> Self {
        Self {
            task_id: task_id.to_owned(),
            task_type: task_type.to_owned(),
            state,
            at: Utc::now(),
            attempt,
            by: None,
            error_kind: None,
            error: None,
            next_attempt_at: None,
            reason: None,
            result: None,
        }
    }

    /// `{task type}.{state}`, e.g. `email.send.succeeded`.
    pub fn routing_key(&self) -> String {
        format!("{}.{}", self.task_type, self.state.as_str())
    }
}

/// Events waiting to be written. When the broker takes them more slowly
/// than tasks produce them, emitting waits for room: tasks slow down
/// rather than events being lost or memory growing without bound.
const EVENT_BUFFER: usize = 1024;
/// Events written in one go: their frames are queued in order, then the
/// writes are awaited together.
const EVENT_BATCH: usize = 64;

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
        declare_exchange(&channel, names).await?;
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
        .with_delivery_mode(crate::contract::PERSISTENT)
        .with_type("warren.task_event".into())
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

async fn declare_exchange(channel: &Channel, names: &Names) -> Result<(), lapin::Error> {
    channel
        .exchange_declare(
            names.events_exchange().into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
}

/// Declares the events exchange and the stream that keeps them for
/// `retention` (RabbitMQ's `x-max-age`, whole seconds).
pub async fn declare_stream(
    connection: &Connection,
    names: &Names,
    retention: Duration,
) -> Result<(), lapin::Error> {
    let channel = connection.create_channel().await?;
    declare_exchange(&channel, names).await?;
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("stream".into()),
    );
    args.insert(
        "x-max-age".into(),
        AMQPValue::LongString(format!("{}s", retention.as_secs().max(1)).into()),
    );
    channel
        .queue_declare(
            names.events_stream().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await?;
    channel
        .queue_bind(
            names.events_stream().into(),
            names.events_exchange().into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let _ = channel.close(200, "declared".into()).await;
    Ok(())
}

/// An event read from the stream, with its offset (unique and increasing).
#[derive(Debug, Clone)]
pub struct StreamedEvent {
    pub offset: u64,
    pub event: TaskEvent,
}

/// Reads the stream from its first retained event, then follows it. Each
/// item is acked as it is read (streams need acks to keep credit flowing;
/// acking does not remove anything). Unreadable entries are skipped.
pub async fn follow(
    connection: &Connection,
    names: &Names,
) -> Result<
    impl Stream<Item = Result<StreamedEvent, lapin::Error>> + Send + 'static + use<>,
    lapin::Error,
> {
    let channel = connection.create_channel().await?;
    // Streams require a prefetch; it bounds how far ahead the broker sends.
    channel.basic_qos(1000, BasicQosOptions::default()).await?;
    let mut args = FieldTable::default();
    args.insert(
        "x-stream-offset".into(),
        AMQPValue::LongString("first".into()),
    );
    let consumer = channel
        .basic_consume(
            names.events_stream().into(),
            "".into(),
            BasicConsumeOptions::default(),
            args,
        )
        .await?;
    let stream = consumer.filter_map(move |delivery| {
        let channel = channel.clone();
        async move {
            let delivery = match delivery {
                Ok(d) => d,
                Err(e) => return Some(Err(e)),
            };
            let offset = delivery
                .properties
                .headers()
                .as_ref()
                .and_then(|h| match h.inner().get("x-stream-offset") {
                    Some(AMQPValue::LongLongInt(n)) => u64::try_from(*n).ok(),
                    Some(AMQPValue::LongUInt(n)) => Some(u64::from(*n)),
                    Some(AMQPValue::LongInt(n)) => u64::try_from(*n).ok(),
                    _ => None,
                })
                .unwrap_or(0);
            let _ = delivery.acker.ack(BasicAckOptions::default()).await;
            drop(channel);
            match serde_json::from_slice::<TaskEvent>(&delivery.data) {
                Ok(event) => Some(Ok(StreamedEvent { offset, event })),
                Err(e) => {
                    tracing::debug!(error = %e, offset, "Skipped an unreadable task event.");
                    None
                }
            }
        }
    });
    Ok(stream)
}

/// What is known about one task.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskStatus {
    pub task_id: String,
    pub task_type: String,
    pub state: TaskState,
    pub attempt: u32,
    pub queued_at: Option<DateTime<Utc>>,
    pub started_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_kind: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
}

impl TaskStatus {
    /// A task's status before `event`, its first, is applied: only its
    /// identity, state and time.
    pub fn first(event: &TaskEvent) -> Self {
        Self {
            task_id: event.task_id.clone(),
            task_type: event.task_type.clone(),
            state: event.state,
            attempt: event.attempt,
            queued_at: None,
            started_at: None,
            updated_at: event.at,
            finished_at: None,
            next_attempt_at: None,
            error_kind: None,
            error: None,
            reason: None,
            result: None,
        }
    }
}

/// The status of every task seen in the stream, bounded in memory: past
/// `capacity` tasks the least recently updated are forgotten, and each task
/// keeps at most `MAX_EVENTS_PER_TASK` events.
pub struct StatusView {
    tasks: HashMap<String, Entry>,
    order: VecDeque<(String, u64)>,
    capacity: usize,
    last_offset: Option<u64>,
}

struct Entry {
    status: TaskStatus,
    events: Vec<StreamedEvent>,
    touched: u64,
}

/// Events kept per task for replay (`/events`).
pub const MAX_EVENTS_PER_TASK: usize = 64;

impl StatusView {
    pub fn new(capacity: usize) -> Self {
        Self {
            tasks: HashMap::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
            last_offset: None,
        }
    }

    /// Applies one event and returns whether it was new: events at or
    /// before the last applied offset are ignored, so replaying is harmless.
    ///
    /// A `queued` event older than the task's latest event is history
    /// only. The gateway emits `queued` once the broker has confirmed the
    /// task, on another connection than the worker's `running`, so it can
    /// reach the stream after `running` or even `succeeded`; its timestamp
    /// is taken before the publish. Such a late event supplies `queued_at`
    /// and takes its place in the task's history by time, but does not
    /// turn a running or finished task back into `queued`. A `queued`
    /// event newer than everything else (a replay from the parking lot, a
    /// task published again with the same id) does.
    pub fn apply(&mut self, streamed: StreamedEvent) -> bool {
        if let Some(last) = self.last_offset
            && streamed.offset <= last
            && streamed.offset != 0
        {
            return false;
        }
        self.last_offset = Some(streamed.offset);
        if streamed.event.state == TaskState::Queued
            && let Some(entry) = self.tasks.get_mut(&streamed.event.task_id)
            && streamed.event.at < entry.status.updated_at
        {
            let at = streamed.event.at;
            let queued_at = entry.status.queued_at.get_or_insert(at);
            *queued_at = (*queued_at).min(at);
            if entry.events.len() < MAX_EVENTS_PER_TASK {
                let position = entry
                    .events
                    .iter()
                    .position(|e| e.event.at > at)
                    .unwrap_or(entry.events.len());
                entry.events.insert(position, streamed);
            }
            return true;
        }
        let e = &streamed.event;
        let touched = streamed.offset;
        let entry = self
            .tasks
            .entry(e.task_id.clone())
            .or_insert_with(|| Entry {
                status: TaskStatus::first(e),
                events: Vec::new(),
                touched,
            });
        let s = &mut entry.status;
        // A final state sticks, unless the task is queued anew (replayed
        // from the parking lot, or published again with the same id).
        if !s.state.is_final() || e.state == TaskState::Queued || entry.events.is_empty() {
            s.state = e.state;
            s.attempt = e.attempt;
        }
        s.updated_at = e.at;
        match e.state {
            TaskState::Queued => {
                s.queued_at = Some(e.at);
                s.finished_at = None;
            }
            TaskState::Running => {
                s.started_at.get_or_insert(e.at);
                s.next_attempt_at = None;
            }
            TaskState::Retrying => {
                s.next_attempt_at = e.next_attempt_at;
                s.error_kind.clone_from(&e.error_kind);
                s.error.clone_from(&e.error);
            }
            TaskState::Succeeded => {
                s.finished_at = Some(e.at);
                s.result.clone_from(&e.result);
                s.next_attempt_at = None;
            }
            TaskState::DeadLettered => {
                s.finished_at = Some(e.at);
                s.error_kind.clone_from(&e.error_kind);
                s.error.clone_from(&e.error);
                s.reason.clone_from(&e.reason);
                s.next_attempt_at = None;
            }
        }
        if entry.events.len() < MAX_EVENTS_PER_TASK {
            entry.events.push(streamed.clone());
        }
        entry.touched = touched;
        self.order.push_back((e.task_id.clone(), touched));
        self.evict();
        true
    }

    fn evict(&mut self) {
        while self.tasks.len() > self.capacity {
            let Some((id, touched)) = self.order.pop_front() else {
                break;
            };
            // Only the newest mention of a task counts.
            if self.tasks.get(&id).is_some_and(|e| e.touched == touched) {
                self.tasks.remove(&id);
            }
        }
        // Keep the order queue from growing without bound on busy tasks.
        if self.order.len() > self.capacity * 4 {
            let tasks = &self.tasks;
            self.order
                .retain(|(id, t)| tasks.get(id).is_some_and(|e| e.touched == *t));
        }
    }

    pub fn get(&self, task_id: &str) -> Option<&TaskStatus> {
        self.tasks.get(task_id).map(|e| &e.status)
    }

    /// The task's events so far, oldest first.
    pub fn events(&self, task_id: &str) -> Vec<StreamedEvent> {
        self.tasks
            .get(task_id)
            .map(|e| e.events.clone())
            .unwrap_or_default()
    }

    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    pub fn last_offset(&self) -> Option<u64> {
        self.last_offset
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(offset: u64, id: &str, state: TaskState, attempt: u32) -> StreamedEvent {
        StreamedEvent {
            offset,
            event: TaskEvent::new(id, "email.send", state, attempt),
        }
    }

    #[test]
    fn the_view_follows_a_task_through_its_life() {
        let mut v = StatusView::new(10);
        v.apply(ev(1, "a", TaskState::Queued, 1));
        assert_eq!(v.get("a").map(|s| s.state), Some(TaskState::Queued));
        v.apply(ev(2, "a", TaskState::Running, 1));
        let mut retry = ev(3, "a", TaskState::Retrying, 1);
        retry.event.error_kind = Some("smtp_transient".into());
        v.apply(retry);
        assert_eq!(
            v.get("a").unwrap().error_kind.as_deref(),
            Some("smtp_transient")
        );
        v.apply(ev(4, "a", TaskState::Running, 2));
        let mut done = ev(5, "a", TaskState::Succeeded, 2);
        done.event.result = Some(serde_json::json!({"ok": true}));
        v.apply(done);
        let s = v.get("a").unwrap();
        assert_eq!((s.state, s.attempt), (TaskState::Succeeded, 2));
        assert!(s.finished_at.is_some() && s.started_at.is_some() && s.queued_at.is_some());
        assert_eq!(v.events("a").len(), 5);
        // A late, stale event does not reopen a finished task.
        v.apply(ev(6, "a", TaskState::Running, 2));
        assert_eq!(v.get("a").unwrap().state, TaskState::Succeeded);
        // Replays of old offsets are ignored.
        v.apply(ev(3, "a", TaskState::Retrying, 1));
        assert_eq!(v.events("a").len(), 6);
        assert!(v.get("unknown").is_none());
    }

    #[test]
    fn a_late_queued_event_is_history_only() {
        let at = |offset: u64, state, when| {
            let mut e = ev(offset, "a", state, 1);
            e.event.at = when;
            e
        };
        let t0 = Utc::now();
        let later = t0 + chrono::Duration::milliseconds(5);
        let mut v = StatusView::new(10);
        assert!(v.apply(at(1, TaskState::Running, later)));
        assert!(v.apply(at(2, TaskState::Succeeded, later)));
        // The producer's `queued`, stamped before the publish, arrives last.
        assert!(v.apply(at(3, TaskState::Queued, t0)));
        let s = v.get("a").unwrap();
        assert_eq!(s.state, TaskState::Succeeded);
        assert_eq!(s.queued_at, Some(t0));
        assert!(s.finished_at.is_some());
        let order: Vec<_> = v.events("a").iter().map(|e| e.offset).collect();
        assert_eq!(order, vec![3, 1, 2], "queued first, in lifecycle order");
        // Queued anew later (a replay from the parking lot) does count.
        let replayed = later + chrono::Duration::seconds(1);
        assert!(v.apply(at(4, TaskState::Queued, replayed)));
        let s = v.get("a").unwrap();
        assert_eq!((s.state, s.queued_at), (TaskState::Queued, Some(replayed)));
        assert!(s.finished_at.is_none());
        // A replay of an old offset changes nothing.
        assert!(!v.apply(at(3, TaskState::Queued, t0)));
        assert_eq!(v.events("a").len(), 4);
    }

    #[test]
    fn the_view_is_bounded() {
        let mut v = StatusView::new(2);
        v.apply(ev(1, "a", TaskState::Queued, 1));
        v.apply(ev(2, "b", TaskState::Queued, 1));
        v.apply(ev(3, "a", TaskState::Running, 1));
        v.apply(ev(4, "c", TaskState::Queued, 1));
        assert_eq!(v.len(), 2);
        assert!(
            v.get("b").is_none(),
            "the least recently updated goes first"
        );
        assert!(v.get("a").is_some() && v.get("c").is_some());
    }

    #[test]
    fn events_have_stable_json_and_routing_keys() {
        let mut e = TaskEvent::new("t1", "email.send", TaskState::DeadLettered, 3);
        e.reason = Some("permanent".into());
        assert_eq!(e.routing_key(), "email.send.dead_lettered");
        let json = serde_json::to_value(&e).unwrap();
        assert_eq!(json["state"], "dead_lettered");
        assert_eq!(json["reason"], "permanent");
        assert!(json.get("result").is_none());
        let back: TaskEvent = serde_json::from_value(json).unwrap();
        assert_eq!(back, e);
    }
}
