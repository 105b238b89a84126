//! Warren's shared library: the message contract, the broker topology, the
//! consumer runtime (prefetch, concurrency, ack, retry ladder,
//! dead-lettering, graceful shutdown, reconnect), publishing with confirms,
//! task events, settings and telemetry.
//!
//! Every service stands on it; nothing in it is specific to one service
//! (task types live in the contract crate, `warren-tasks`).
//!
//! What a user touches is at the root, and in [`prelude`]: declare a
//! [`Task`] type (its name, and optionally its [`TaskOptions`]), write a
//! handler against [`TaskContext`], [`Outcome`] and [`TaskError`], route
//! it on a [`Worker`] and run that with [`serve`] or an [`App`]; publish
//! with a [`Publisher`], or from a handler with [`TaskContext::publish`]. The rest is in modules named
//! after what they hold: [`contract`] (names and headers), [`topology`]
//! (what is declared), [`events`] (task lifecycle events and the status
//! view), [`settings`], [`telemetry`], [`metrics`], [`ops`] (health and
//! metrics endpoints), [`idempotency`], [`broker`] (connecting),
//! [`shutdown`], [`trace`] and [`celery`] (the Celery bridge and result
//! backend). With the `testing` feature,
//! `warren::testing` runs a worker's handlers in memory, without a broker,
//! through the runtime's own attempt and retry-or-park code, on a virtual
//! clock (see `docs/writing-a-worker.md`, "Testing your tasks").
//!
//! ```no_run
//! use warren::prelude::*;
//!
//! #[derive(serde::Deserialize, serde::Serialize)]
//! struct Ping {
//!     n: u32,
//! }
//!
//! impl Task for Ping {
//!     const TYPE: &'static str = "ping.send";
//! }
//!
//! #[tokio::main]
//! async fn main() -> Result<(), warren::AppError> {
//!     let worker = Worker::for_task::<Ping>().handle(|_ctx, ping: Ping| async move {
//!         Ok(Outcome::with_result(serde_json::json!({ "n": ping.n })))
//!     });
//!     warren::serve("ping-worker", worker).await
//! }
//! ```

#![warn(missing_docs)]

mod app;
pub mod broker;
pub mod celery;
pub mod contract;
#[cfg(feature = "management")]
pub mod dead;
pub mod events;
pub mod idempotency;
#[cfg(feature = "management")]
pub mod management;
pub mod metrics;
pub mod ops;
mod publisher;
mod runtime;
pub mod settings;
pub mod shutdown;
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;
pub mod topology;
pub mod trace;
pub mod workflow;

pub use app::{App, AppError, serve};
pub use contract::{DeadReason, Names};
pub use events::{EventPublisher, StatusView, TaskEvent, TaskState};
pub use publisher::{CONFIRM_TIMEOUT, PublishError, PublishOptions, Publisher, task_properties};
pub use runtime::{RuntimeError, Worker, WorkerStatus};
pub use topology::{Topology, TopologyError};
pub use warren_core::{
    ContextRuntime, Disposition, FollowUp, Outcome, RateLimit, Task, TaskContext, TaskError,
    TaskOptions, safe_task_id,
};

/// What writing a worker or a producer needs, in one import.
pub mod prelude {
    pub use crate::{
        App, Outcome, PublishOptions, Publisher, RateLimit, Task, TaskContext, TaskError,
        TaskOptions, Worker, WorkerStatus,
    };
}
