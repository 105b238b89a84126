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
//!
//! The rooms: `model` (the event and its states, as JSON on the wire),
//! `publish` (emitting, in order, off the task's path), `stream` (reading
//! the stream from its first retained event, its end, or an offset),
//! `view` (the status of every task, folded from the events, in memory)
//! and `store` (the same records in Redis, shared by gateway replicas). The exchange and the
//! stream are declared with the rest of the topology
//! ([`crate::topology`]).

mod model;
mod publish;
mod store;
mod stream;
mod view;

pub use crate::topology::declare_events_stream as declare_stream;
pub use model::{TaskEvent, TaskState};
pub use publish::EventPublisher;
pub use store::{RESULT_REF, RedisOptions, RedisStatusStore, StatusStoreError, result_ref};
pub use stream::{StreamStart, StreamedEvent, follow, follow_from, follow_on};
pub use view::{
    ListQuery, MAX_EVENTS_PER_TASK, Page, StatusView, TaskRecord, TaskStatus, position_since,
};
