//! What a handler knows about the task it runs, and what it can ask of
//! the runtime through it: publish follow-up tasks, report progress, learn
//! that its soft time limit passed.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::{Task, TaskError};

/// A boxed, sendable future: what [`ContextRuntime`] methods return.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Metadata of the task being handled, and the handler's line to the
/// runtime (follow-ups, progress, cancellation).
///
/// The runtime builds it; a unit test builds one with
/// [`TaskContext::new`] (follow-ups then fail with `no_runtime`, progress
/// goes nowhere), or gets one from `warren::testing`.
#[derive(Clone)]
pub struct TaskContext {
    /// The task id: the AMQP `message_id`, or a UUID the runtime assigned
    /// when the producer left it out.
    pub id: String,
    /// The task type, e.g. `email.send`.
    pub task_type: String,
    /// 1 for the first attempt, 2 for the first retry, and so on.
    pub attempt: u32,
    /// The attempt after which a transient failure is dead-lettered instead
    /// of retried.
    pub max_attempts: u32,
    /// AMQP priority, 0-9.
    pub priority: u8,
    /// When the producer published the task, if it said.
    pub published_at: Option<DateTime<Utc>>,
    /// Whether the broker flagged this delivery as a redelivery (the previous
    /// holder died or gave it back before acking).
    pub redelivered: bool,
    /// The id of the task that published this one as a follow-up, if any
    /// (the `x-warren-causation-id` header).
    pub causation_id: Option<String>,
    runtime: Option<Arc<dyn ContextRuntime>>,
}

impl fmt::Debug for TaskContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskContext")
            .field("id", &self.id)
            .field("task_type", &self.task_type)
            .field("attempt", &self.attempt)
            .field("max_attempts", &self.max_attempts)
            .field("priority", &self.priority)
            .field("published_at", &self.published_at)
            .field("redelivered", &self.redelivered)
            .field("causation_id", &self.causation_id)
            .finish_non_exhaustive()
    }
}

impl TaskContext {
    /// A context for a first attempt of `task_type` with id `id`, out of
    /// one attempt, with no runtime behind it: for unit tests.
    ///
    /// ```
    /// let ctx = warren_core::TaskContext::new("t-1", "files.cleanup");
    /// assert_eq!(ctx.attempt, 1);
    /// assert!(ctx.is_last_attempt());
    /// ```
    pub fn new(id: impl Into<String>, task_type: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            task_type: task_type.into(),
            attempt: 1,
            max_attempts: 1,
            priority: 0,
            published_at: None,
            redelivered: false,
            causation_id: None,
            runtime: None,
        }
    }

    /// This context with `runtime` answering its follow-ups, progress and
    /// cancellation. The worker runtime and the test kit call this.
    pub fn with_runtime(mut self, runtime: Arc<dyn ContextRuntime>) -> Self {
        self.runtime = Some(runtime);
        self
    }

    /// True when a transient failure of this attempt will not be retried.
    pub fn is_last_attempt(&self) -> bool {
        self.attempt >= self.max_attempts
    }

    /// Publishes `task` as a follow-up of this one and returns its id once
    /// the broker has confirmed it. It carries this task's trace context
    /// and this task's id as its causation id.
    ///
    /// A failure is a transient `publish_failed` error, so `?` retries the
    /// whole task: give follow-ups ids of their own with
    /// [`TaskContext::publish_with_id`] when a retry must not publish them
    /// twice.
    pub async fn publish<T: Task + serde::Serialize>(&self, task: &T) -> Result<String, TaskError> {
        self.publish_follow_up(T::TYPE, task, None, T::OPTIONS.priority)
            .await
    }

    /// [`TaskContext::publish`] with a chosen task id: with an idempotency
    /// store, a retried parent that publishes the same id again does not
    /// run the follow-up twice.
    pub async fn publish_with_id<T: Task + serde::Serialize>(
        &self,
        task: &T,
        id: impl Into<String>,
    ) -> Result<String, TaskError> {
        self.publish_follow_up(T::TYPE, task, Some(id.into()), T::OPTIONS.priority)
            .await
    }

    /// Publishes a follow-up of a type this program has no [`Task`] type
    /// for, with routing key `task_type`.
    pub async fn publish_as(
        &self,
        task_type: &str,
        body: &impl serde::Serialize,
        id: Option<String>,
    ) -> Result<String, TaskError> {
        self.publish_follow_up(task_type, body, id, 0).await
    }

    async fn publish_follow_up(
        &self,
        task_type: &str,
        body: &(impl serde::Serialize + ?Sized),
        id: Option<String>,
        priority: u8,
    ) -> Result<String, TaskError> {
        let body = serde_json::to_vec(body).map_err(|e| {
            TaskError::permanent(
                "invalid_follow_up",
                format!("the {task_type} follow-up cannot be serialized: {e}"),
            )
        })?;
        let Some(runtime) = &self.runtime else {
            return Err(TaskError::retry(
                "no_runtime",
                "this task context has no runtime to publish through",
            ));
        };
        runtime
            .publish(FollowUp {
                task_type: task_type.to_owned(),
                body,
                id,
                priority,
            })
            .await
    }

    /// Reports how far the task is, `fraction` from 0.0 to 1.0, with an
    /// optional message. Cheap: reports are coalesced to a few task events
    /// per second, the last one always kept.
    pub fn progress(&self, fraction: f64, message: impl Into<Option<String>>) {
        if let Some(runtime) = &self.runtime {
            runtime.progress(fraction.clamp(0.0, 1.0), message.into());
        }
    }

    /// True once the task's soft time limit has passed (or the worker is
    /// giving up on it): stop, clean up, and return.
    pub fn is_cancelled(&self) -> bool {
        self.runtime.as_ref().is_some_and(|r| r.is_cancelled())
    }

    /// Completes when [`TaskContext::is_cancelled`] turns true; never
    /// without a runtime. Select on it in long-running handlers.
    pub fn cancelled(&self) -> BoxFuture<()> {
        match &self.runtime {
            Some(runtime) => runtime.cancelled(),
            None => Box::pin(std::future::pending()),
        }
    }
}

/// A follow-up task as a handler asks for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FollowUp {
    /// Its type and routing key.
    pub task_type: String,
    /// Its JSON body.
    pub body: Vec<u8>,
    /// Its id; the runtime assigns a UUID v7 when `None`.
    pub id: Option<String>,
    /// Its priority, 0-9.
    pub priority: u8,
}

/// What stands behind a [`TaskContext`]: the worker runtime, or the test
/// kit. Handlers never implement or call it.
pub trait ContextRuntime: Send + Sync {
    /// Publishes a follow-up of the current task, confirmed; returns its id.
    fn publish(&self, follow_up: FollowUp) -> BoxFuture<Result<String, TaskError>>;

    /// Records progress (already clamped to 0.0-1.0).
    fn progress(&self, _fraction: f64, _message: Option<String>) {}

    /// True once the handler should stop.
    fn is_cancelled(&self) -> bool {
        false
    }

    /// Completes once the handler should stop.
    fn cancelled(&self) -> BoxFuture<()> {
        Box::pin(std::future::pending())
    }
}
