//! Warren's shared library: the message contract, the broker topology, the
//! consumer runtime (prefetch, concurrency, ack, retry ladder,
//! dead-lettering, graceful shutdown, reconnect), settings and telemetry.
//!
//! Every service stands on it; nothing in it is specific to one service.

pub mod broker;
pub mod contract;
pub mod events;
pub mod idempotency;
pub mod metrics;
pub mod ops;
pub mod publisher;
pub mod runtime;
pub mod settings;
pub mod shutdown;
pub mod telemetry;
pub mod topology;
pub mod trace;

pub use warren_core::{Disposition, Outcome, Task, TaskContext, TaskError, safe_task_id};
