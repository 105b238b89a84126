//! Warren's shared library: the message contract, the broker topology, the
//! consumer runtime (prefetch, concurrency, ack, retry ladder,
//! dead-lettering, graceful shutdown, reconnect), publishing with confirms,
//! task events, settings and telemetry.
//!
//! Every service stands on it; nothing in it is specific to one service
//! (task types live in the contract crate, `warren-tasks`).
//!
//! What a user touches is at the root: write a handler against [`Task`],
//! [`TaskContext`], [`Outcome`] and [`TaskError`]; run it with a
//! [`Worker`]; publish with a [`Publisher`]. The rest is in modules named
//! after what they hold: [`contract`] (names and headers), [`topology`]
//! (what is declared), [`events`] (task lifecycle events and the status
//! view), [`settings`], [`telemetry`], [`metrics`], [`ops`] (health and
//! metrics endpoints), [`idempotency`], [`broker`] (connecting),
//! [`shutdown`] and [`trace`].
//!
//! ```no_run
//! use warren::prelude::*;
//!
//! #[derive(serde::Deserialize)]
//! struct Ping {
//!     n: u32,
//! }
//!
//! impl Task for Ping {
//!     const TYPE: &'static str = "ping.send";
//! }
//!
//! # async fn run(settings: warren::settings::BrokerSettings) -> Result<(), warren::RuntimeError> {
//! let worker = Worker::new("ping-worker", "ping", &["ping.#"], settings, Default::default())
//!     .handle(|_ctx: TaskContext, ping: Ping| async move {
//!         Ok::<_, TaskError>(Outcome::with_result(serde_json::json!({ "n": ping.n })))
//!     });
//! worker.run(warren::shutdown::on_signal()).await
//! # }
//! ```

pub mod broker;
pub mod contract;
pub mod events;
pub mod idempotency;
pub mod metrics;
pub mod ops;
mod publisher;
mod runtime;
pub mod settings;
pub mod shutdown;
pub mod telemetry;
pub mod topology;
pub mod trace;

pub use contract::{DeadReason, Names};
pub use events::{EventPublisher, StatusView, TaskEvent, TaskState};
pub use publisher::{CONFIRM_TIMEOUT, PublishError, PublishOptions, Publisher, task_properties};
pub use runtime::{RuntimeError, Worker, WorkerStatus};
pub use topology::{Topology, TopologyError};
pub use warren_core::{Disposition, Outcome, Task, TaskContext, TaskError, safe_task_id};

/// What writing a worker or a producer needs, in one import.
pub mod prelude {
    pub use crate::{
        Outcome, PublishOptions, Publisher, Task, TaskContext, TaskError, Worker, WorkerStatus,
    };
}
