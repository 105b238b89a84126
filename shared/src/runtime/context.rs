//! What a handler's [`TaskContext`] asks of the runtime: follow-up tasks,
//! published confirmed through the session's publisher, carrying the
//! task's trace context and its id as their causation id; progress,
//! coalesced into at most a few `progress` events a second, the last one
//! always emitted before the task's final event; and the soft time limit's
//! cancellation.

use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::Inner;
use super::session::Outbound;
use crate::contract::{self, headers};
use crate::events::{EventPublisher, TaskEvent, TaskState};
use crate::publisher::{PublishError, PublishOptions};
use crate::{ContextRuntime, FollowUp, TaskContext, TaskError};
use warren_core::BoxFuture;

/// The runtime behind one delivery's [`TaskContext`].
pub(super) struct DeliveryRuntime {
    out: Arc<Outbound>,
    /// The parent task's id: the follow-ups' causation id.
    parent_id: String,
    task_type: String,
    attempt: u32,
    /// The worker (its identity is the `by` of progress events).
    inner: Arc<Inner>,
    /// The task's span: follow-ups continue its trace.
    span: tracing::Span,
    /// Cancelled when the soft time limit passes.
    pub(super) cancel: CancellationToken,
    /// Made at the first progress report (most tasks make none); never
    /// with `consumer.events = false`.
    progress: OnceLock<Arc<ProgressPump>>,
}

/// At most one `progress` event per this interval per task.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(250);

/// Coalesces one task's progress reports: the first goes out at once, the
/// next no sooner than [`PROGRESS_INTERVAL`] later, each time the latest
/// one; intermediate reports are dropped.
pub(super) struct ProgressPump {
    events: EventPublisher,
    /// The event's identity: a `progress` event of this task and attempt.
    template: TaskEvent,
    state: Mutex<PumpState>,
    wake: tokio::sync::Notify,
}

#[derive(Default)]
struct PumpState {
    /// The latest report not yet emitted.
    pending: Option<(f64, Option<String>)>,
    /// The emitting task, while it runs (it clears this as it ends).
    running: Option<tokio::task::JoinHandle<()>>,
    /// The attempt ended: emit what is pending now, accept nothing more.
    finished: bool,
}

impl ProgressPump {
    /// A pump of the progress events of `runtime`'s task.
    fn new(events: EventPublisher, runtime: &DeliveryRuntime) -> Arc<Self> {
        let mut template = TaskEvent::new(
            &runtime.parent_id,
            &runtime.task_type,
            TaskState::Progress,
            runtime.attempt,
        );
        template.by = Some(runtime.inner.identity.clone());
        Arc::new(Self {
            events,
            template,
            state: Mutex::default(),
            wake: tokio::sync::Notify::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, PumpState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn report(self: &Arc<Self>, fraction: f64, message: Option<String>) {
        let mut state = self.lock();
        if state.finished {
            return;
        }
        state.pending = Some((fraction, message));
        if state.running.is_none() {
            state.running = Some(tokio::spawn(Arc::clone(self).pump()));
        }
    }

    /// Emits the pending report, then waits out the interval (cut short
    /// when the attempt ends), until nothing is pending.
    async fn pump(self: Arc<Self>) {
        loop {
            // Under the lock: a report either finds this task running (and
            // its report is taken here) or finds it gone and starts another.
            let next = {
                let mut state = self.lock();
                let next = state.pending.take();
                if next.is_none() {
                    state.running = None;
                }
                next
            };
            let Some((fraction, message)) = next else {
                return;
            };
            let mut event = self.template.clone();
            event.at = chrono::Utc::now();
            event.progress = Some(fraction);
            event.message = message;
            self.events.emit(event).await;
            if !self.lock().finished {
                let _ = tokio::time::timeout(PROGRESS_INTERVAL, self.wake.notified()).await;
            }
        }
    }

    /// The attempt ended: emits the last pending report now and waits
    /// until it is queued, so it precedes the task's final event.
    async fn finish(&self) {
        let running = {
            let mut state = self.lock();
            state.finished = true;
            state.running.take()
        };
        if let Some(running) = running {
            self.wake.notify_one();
            let _ = running.await;
        }
    }
}

impl DeliveryRuntime {
    /// The runtime of `ctx`'s delivery, in the current (the task's) span.
    pub(super) fn new(inner: Arc<Inner>, out: Arc<Outbound>, ctx: &TaskContext) -> Arc<Self> {
        Arc::new(Self {
            out,
            parent_id: ctx.id.clone(),
            task_type: ctx.task_type.clone(),
            attempt: ctx.attempt,
            inner,
            span: tracing::Span::current(),
            cancel: CancellationToken::new(),
            progress: OnceLock::new(),
        })
    }

    /// `ctx` with this runtime behind it.
    pub(super) fn attach(self: &Arc<Self>, ctx: TaskContext) -> TaskContext {
        ctx.with_runtime(Arc::clone(self) as Arc<dyn ContextRuntime>)
    }

    /// The attempt ended: its last progress report, if any, is queued
    /// before the task's final event.
    pub(super) async fn finish(&self) {
        if let Some(pump) = self.progress.get() {
            pump.finish().await;
        }
    }
}

impl ContextRuntime for DeliveryRuntime {
    fn publish(&self, follow_up: FollowUp) -> BoxFuture<Result<String, TaskError>> {
        let out = Arc::clone(&self.out);
        let parent_id = self.parent_id.clone();
        let span = self.span.clone();
        Box::pin(
            async move {
                let FollowUp {
                    task_type,
                    body,
                    id,
                    priority,
                } = follow_up;
                let body: serde_json::Value = serde_json::from_slice(&body).map_err(|e| {
                    TaskError::permanent("invalid_follow_up", format!("not JSON: {e}"))
                })?;
                let mut options = PublishOptions {
                    id,
                    priority: Some(priority),
                    ..Default::default()
                };
                contract::set_str(&mut options.headers, headers::CAUSATION_ID, parent_id);
                out.publisher
                    .publish_task(&task_type, &body, options)
                    .await
                    .map_err(|e| follow_up_error(&task_type, e))
            }
            .instrument(span),
        )
    }

    fn progress(&self, fraction: f64, message: Option<String>) {
        if let Some(events) = &self.out.events {
            self.progress
                .get_or_init(|| ProgressPump::new(events.clone(), self))
                .report(fraction, message);
        }
    }

    fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    fn cancelled(&self) -> BoxFuture<()> {
        super::limits::cancelled(&self.cancel)
    }
}

/// A follow-up that could not be published fails the parent's attempt:
/// transient unless no retry can fix it.
fn follow_up_error(task_type: &str, e: PublishError) -> TaskError {
    let message = format!("the {task_type} follow-up was not published: {e}");
    match e {
        PublishError::Serialize(_) | PublishError::InvalidPriority(_) => {
            TaskError::permanent("invalid_follow_up", message)
        }
        _ => TaskError::retry("publish_failed", message),
    }
}
