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
//! Emitting does not hold a task up: events are handed to a writer of
//! their own, which packs them into envelopes (many events per message),
//! publishes those in order with publisher confirms and publishes them
//! again until the broker confirms them. An event given up (the broker was
//! away too long, or the buffer was full) is counted, and a task's final
//! state among them is emitted again once the broker is back.
//!
//! The rooms: `model` (the event and its states, as JSON on the wire),
//! `envelope` (many events in one message, versioned), `publish`
//! (emitting, batched and confirmed, off the task's path), `stream`
//! (reading the stream, one event at a time, from its first retained
//! event, its end, or where a reader left off), `view` (the status of
//! every task, folded from the events, in memory) and `store` (the same
//! records in Redis, shared by gateway replicas). The exchange and the
//! stream are declared with the rest of the topology
//! ([`crate::topology`]).

pub mod envelope;
mod model;
mod publish;
mod store;
mod stream;
mod view;

pub use crate::topology::declare_events_stream as declare_stream;
pub use model::{TaskEvent, TaskState};
pub use publish::{
    Batching, ChannelSource, EventPublisher, GIVE_UP_AFTER, MAX_ATTEMPTS, RECHECK_AFTER_IDLE,
    StreamReady, stream_ready,
};
pub use store::{RESULT_REF, RedisOptions, RedisStatusStore, StatusStoreError, result_ref};
pub use stream::{StreamStart, StreamedEvent, follow, follow_after, follow_from, follow_on};
pub use view::{
    ListQuery, MAX_EVENTS_PER_TASK, Page, StatusView, TaskRecord, TaskStatus, position_since,
};
