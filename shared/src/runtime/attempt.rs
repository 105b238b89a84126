//! One attempt of a task, whatever carried it: find the type's handler,
//! skip an id that already succeeded, run the handler under the type's
//! soft and hard time limits (a panic or a timeout is a failed attempt,
//! not a dead worker), and, after a success, remember the id. The AMQP
//! runtime ([`super::delivery`]) and the in-memory test kit
//! (`warren::testing`) both run attempts through here.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures::FutureExt;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::{Route, limits};
use crate::idempotency::{self, IdempotencyStore};
use crate::settings::ConsumerSettings;
use crate::{Outcome, TaskContext, TaskError};

/// A worker's handlers and the rules their attempts run under.
#[derive(Clone, Copy)]
pub(crate) struct Dispatch<'a> {
    pub(super) handlers: &'a HashMap<&'static str, Route>,
    pub(super) idempotency: Option<&'a dyn IdempotencyStore>,
    pub(super) consumer: &'a ConsumerSettings,
    /// The namespace, for idempotency keys.
    pub(super) namespace: &'a str,
    /// The work queue, for error messages.
    pub(super) queue: &'a str,
}

/// What an attempt came to, when it did not fail.
pub(crate) enum Handled {
    /// The handler succeeded.
    Done(Outcome),
    /// The id already succeeded; the handler did not run.
    Duplicate,
}

impl Dispatch<'_> {
    /// Attempts of `task_type` before a transient failure is parked: its
    /// own declaration, else the worker's settings.
    pub(crate) fn max_attempts(&self, task_type: &str) -> u32 {
        self.handlers
            .get(task_type)
            .and_then(|r| r.options.max_attempts)
            .unwrap_or_else(|| self.consumer.max_attempts())
            .max(1)
    }

    /// How long an attempt of `task_type` may run.
    pub(crate) fn time_limit(&self, task_type: &str) -> Duration {
        self.handlers
            .get(task_type)
            .and_then(|r| r.options.time_limit)
            .unwrap_or(self.consumer.task_timeout)
    }

    fn dedup_key(&self, ctx: &TaskContext) -> String {
        idempotency::key(self.namespace, &ctx.task_type, &ctx.id)
    }

    /// Records a succeeded task for the idempotency store, if there is one.
    pub(crate) async fn mark_done(&self, ctx: &TaskContext) {
        if let Some(store) = self.idempotency
            && let Err(e) = store.mark_done(&self.dedup_key(ctx)).await
        {
            warn!(error = %e, "Could not record the task as done; a redelivery would run it again.");
        }
    }

    /// Runs one attempt of the task `ctx` describes, with body `body`;
    /// `cancel` is cancelled at the soft time limit.
    pub(crate) async fn run(
        &self,
        ctx: TaskContext,
        body: &[u8],
        cancel: &CancellationToken,
    ) -> Result<Handled, TaskError> {
        let Some(route) = self.handlers.get(ctx.task_type.as_str()) else {
            let mut handled: Vec<_> = self.handlers.keys().copied().collect();
            handled.sort_unstable();
            return Err(TaskError::permanent(
                "unknown_task_type",
                format!(
                    "no handler for task type '{}' on queue '{}' (handled: {})",
                    ctx.task_type,
                    self.queue,
                    handled.join(", ")
                ),
            ));
        };
        if let Some(store) = self.idempotency {
            match store.is_done(&self.dedup_key(&ctx)).await {
                Ok(true) => return Ok(Handled::Duplicate),
                Ok(false) => {}
                Err(e) => return Err(TaskError::retry("idempotency_store", e)),
            }
        }
        let timeout = self.time_limit(&ctx.task_type);
        let _soft = limits::soft_limit(route.options.soft_time_limit, cancel);
        let future = (route.handler)(ctx, body);
        // Polled right here, not on a task of its own (a spawn and a
        // cross-thread wake per task): a panic in the handler is caught
        // and becomes a failed attempt instead of unwinding through the
        // consumer, and the hard limit drops the handler's future.
        match AssertUnwindSafe(tokio::time::timeout(timeout, future))
            .catch_unwind()
            .await
        {
            Ok(Ok(Ok(outcome))) => Ok(Handled::Done(outcome)),
            Ok(Ok(Err(e))) => Err(e),
            Ok(Err(_elapsed)) => Err(TaskError::retry(
                "timeout",
                format!(
                    "the handler did not finish within {}",
                    humantime::format_duration(timeout)
                ),
            )),
            Err(payload) => {
                let message = payload
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "non-string panic payload".to_owned());
                Err(TaskError::retry(
                    "panic",
                    format!("the handler panicked: {message}"),
                ))
            }
        }
    }
}
