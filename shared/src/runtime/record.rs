//! What happened to a delivery, as one value each: its metrics, its log
//! line and its task event live together in one struct, and one call
//! records all three, so they never drift apart (the habit of Vector's
//! `internal_events`). A call site is one line:
//! `rec.record(Retried { .. }).await`.

use std::time::Duration;

use chrono::{DateTime, Utc};
use tracing::{error, info, warn};

use crate::celery::CeleryResults;
use crate::contract::DeadReason;
use crate::events::{EventPublisher, TaskEvent, TaskState};
use crate::metrics::TaskMetrics;
use crate::publisher::{PublishError, Purpose};
use crate::{TaskContext, TaskError};

/// Something that happened to a task, with everything it reports.
pub(super) trait Record {
    /// Its metrics.
    fn count(&self, metrics: &TaskMetrics);
    /// Its log line, written in the task's span.
    fn log(&self);
    /// Its lifecycle event, if it has one.
    fn event(&self, ctx: &TaskContext) -> Option<TaskEvent>;
}

/// Records what happens to one delivery.
pub(super) struct Recorder<'a> {
    pub(super) ctx: &'a TaskContext,
    pub(super) metrics: &'a TaskMetrics,
    /// `None` with `consumer.events = false`.
    pub(super) events: Option<&'a EventPublisher>,
    /// This worker's identity, the events' `by`.
    pub(super) by: &'a str,
    /// Celery's result backend, for a task the Celery bridge handed on.
    pub(super) celery: Option<&'a CeleryResults>,
}

impl Recorder<'_> {
    /// Counts it, emits its event (waiting only while the event buffer is
    /// full), then logs it.
    pub(super) async fn record(&self, what: impl Record) {
        what.count(self.metrics);
        if (self.events.is_some() || self.celery.is_some())
            && let Some(mut event) = what.event(self.ctx)
        {
            event.by = Some(self.by.to_owned());
            if let Some(celery) = self.celery {
                celery.record(&event).await;
            }
            if let Some(events) = self.events {
                events.emit(event).await;
            }
        }
        what.log();
    }
}

fn event(ctx: &TaskContext, state: TaskState) -> TaskEvent {
    TaskEvent::new(&ctx.id, &ctx.task_type, state, ctx.attempt)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A delivery was taken from the queue and its handler is about to run.
pub(super) struct Started {
    /// Seconds it waited in its queue, when that is known.
    pub(super) queue_wait: Option<f64>,
    /// The producer left out `message_id`; the runtime assigned one.
    pub(super) id_assigned: bool,
    /// A handler exists for its type (otherwise it is dead-lettered at
    /// once, without a `running` event).
    pub(super) handled: bool,
}

impl Record for Started {
    fn count(&self, m: &TaskMetrics) {
        m.received.inc();
        m.in_progress.inc();
        if let Some(wait) = self.queue_wait {
            m.queue_wait.observe(wait);
        }
    }

    fn log(&self) {
        if self.id_assigned {
            info!("Task arrived without a message_id; assigned one.");
        }
    }

    fn event(&self, ctx: &TaskContext) -> Option<TaskEvent> {
        self.handled.then(|| event(ctx, TaskState::Running))
    }
}

/// The task id had already succeeded: acked without running.
pub(super) struct Duplicate;

impl Record for Duplicate {
    fn count(&self, m: &TaskMetrics) {
        m.duplicates.inc();
    }

    fn log(&self) {
        info!("Task already succeeded earlier; acking the duplicate without running it.");
    }

    fn event(&self, _: &TaskContext) -> Option<TaskEvent> {
        None
    }
}

/// The handler succeeded and the delivery was acked.
pub(super) struct Succeeded<'a> {
    pub(super) result: Option<&'a serde_json::Value>,
    pub(super) elapsed: Duration,
}

impl Record for Succeeded<'_> {
    fn count(&self, m: &TaskMetrics) {
        m.succeeded.inc();
        m.succeeded_duration.observe(self.elapsed.as_secs_f64());
    }

    fn log(&self) {
        let elapsed_ms = millis(self.elapsed);
        match self.result {
            Some(result) => info!(elapsed_ms, result = %result, "Task succeeded."),
            None => info!(elapsed_ms, "Task succeeded."),
        }
    }

    fn event(&self, ctx: &TaskContext) -> Option<TaskEvent> {
        let mut e = event(ctx, TaskState::Succeeded);
        e.result = self.result.cloned();
        Some(e)
    }
}

/// A failed attempt's copy is in a delay queue (confirmed) and the
/// original was acked.
pub(super) struct Retried<'a> {
    pub(super) error: &'a TaskError,
    pub(super) elapsed: Duration,
    pub(super) next_attempt: u32,
    pub(super) delay: Duration,
    pub(super) retry_queue: &'a str,
    pub(super) next_attempt_at: DateTime<Utc>,
}

impl Record for Retried<'_> {
    fn count(&self, m: &TaskMetrics) {
        m.retried(&self.error.kind);
        m.duration("retried", self.elapsed.as_secs_f64());
    }

    fn log(&self) {
        warn!(
            error = %self.error.message,
            error_kind = %self.error.kind,
            elapsed_ms = millis(self.elapsed),
            next_attempt = self.next_attempt,
            delay_ms = millis(self.delay),
            retry_queue = %self.retry_queue,
            "Task failed; it will be retried."
        );
    }

    fn event(&self, ctx: &TaskContext) -> Option<TaskEvent> {
        let mut e = event(ctx, TaskState::Retrying);
        e.error_kind = Some(self.error.kind.to_string());
        e.error = Some(self.error.message.clone());
        e.next_attempt_at = Some(self.next_attempt_at);
        Some(e)
    }
}

/// A failed task's copy is in the parking lot (confirmed) with its reason,
/// and the original was acked.
pub(super) struct DeadLettered<'a> {
    pub(super) error: &'a TaskError,
    pub(super) elapsed: Duration,
    pub(super) reason: DeadReason,
    pub(super) dead_queue: &'a str,
}

impl Record for DeadLettered<'_> {
    fn count(&self, m: &TaskMetrics) {
        m.dead_lettered(&self.error.kind, self.reason.as_str());
        m.duration("dead_lettered", self.elapsed.as_secs_f64());
    }

    fn log(&self) {
        error!(
            error = %self.error.message,
            error_kind = %self.error.kind,
            dead_reason = self.reason.as_str(),
            elapsed_ms = millis(self.elapsed),
            dead_queue = %self.dead_queue,
            "Task dead-lettered."
        );
    }

    fn event(&self, ctx: &TaskContext) -> Option<TaskEvent> {
        let mut e = event(ctx, TaskState::DeadLettered);
        e.error_kind = Some(self.error.kind.to_string());
        e.error = Some(self.error.message.clone());
        e.reason = Some(self.reason.as_str().to_owned());
        Some(e)
    }
}

/// A failed task's copy could not be published, so the original goes
/// back to its queue: nothing is settled, nothing is counted but the
/// failed publish (`warren_publish_confirms_total`), and no event says
/// otherwise.
pub(super) struct HandedBack<'a> {
    pub(super) error: &'a TaskError,
    /// The copy that failed: a retry, or the parking lot's.
    pub(super) copy: Purpose,
    pub(super) publish_error: &'a PublishError,
    /// The queue the copy was for.
    pub(super) queue: &'a str,
}

impl Record for HandedBack<'_> {
    fn count(&self, _: &TaskMetrics) {}

    fn log(&self) {
        match self.copy {
            Purpose::DeadLetter => error!(
                error = %self.error.message,
                error_kind = %self.error.kind,
                publish_error = %self.publish_error,
                dead_queue = %self.queue,
                "Could not publish the task to the parking lot; handing it back to the queue."
            ),
            _ => warn!(
                error = %self.publish_error,
                task_error = %self.error,
                retry_queue = %self.queue,
                "Could not publish the retry copy; handing the task back to the queue."
            ),
        }
    }

    fn event(&self, _: &TaskContext) -> Option<TaskEvent> {
        None
    }
}
