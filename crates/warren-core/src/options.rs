//! What a task type declares about itself besides its name: where it is
//! queued and how the runtime treats it. Every field has a default, so a
//! task type that declares nothing gets the worker's settings.

use std::time::Duration;

/// How the runtime treats one task type, declared once with the type as
/// [`Task::OPTIONS`](crate::Task::OPTIONS).
///
/// Built in a `const` with the builder methods; anything left out takes
/// the worker's settings (`[consumer]`).
///
/// ```
/// use std::time::Duration;
/// use warren_core::{RateLimit, TaskOptions};
///
/// const OPTIONS: TaskOptions = TaskOptions::new()
///     .queue("maintenance")
///     .max_attempts(3)
///     .time_limit(Duration::from_secs(60))
///     .rate_limit(RateLimit::per_second(5))
///     .concurrency(2);
/// assert_eq!(OPTIONS.queue, Some("maintenance"));
/// assert_eq!(OPTIONS.priority, 0);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct TaskOptions {
    /// The work queue's stem (`{namespace}.{stem}`). Default: the task
    /// type's first segment (`files` for `files.cleanup`).
    pub queue: Option<&'static str>,
    /// The keys binding the queue to the tasks exchange. Default: the task
    /// type itself.
    pub bindings: Option<&'static [&'static str]>,
    /// The priority follow-ups of this type are published with (0-9).
    pub priority: u8,
    /// Attempts before a transient failure is dead-lettered, first
    /// included. Default: `consumer.max_attempts`.
    pub max_attempts: Option<u32>,
    /// After this long the handler's context is cancelled
    /// ([`TaskContext::cancelled`](crate::TaskContext::cancelled)) so it
    /// can stop and clean up.
    pub soft_time_limit: Option<Duration>,
    /// After this long the attempt fails as a transient `timeout`; the
    /// handler's future is dropped and the result of any blocking work it
    /// started is discarded. Default: `consumer.task_timeout`.
    pub time_limit: Option<Duration>,
    /// At most this many tasks of this type start per period, per replica
    /// or across replicas (`[limits] backend`).
    pub rate_limit: Option<RateLimit>,
    /// At most this many tasks of this type run at once in one replica.
    pub concurrency: Option<usize>,
}

impl TaskOptions {
    /// Nothing declared: the worker's settings apply.
    pub const DEFAULT: TaskOptions = TaskOptions {
        queue: None,
        bindings: None,
        priority: 0,
        max_attempts: None,
        soft_time_limit: None,
        time_limit: None,
        rate_limit: None,
        concurrency: None,
    };

    /// [`TaskOptions::DEFAULT`], to build on.
    pub const fn new() -> Self {
        Self::DEFAULT
    }

    /// Consume from `{namespace}.{stem}`.
    pub const fn queue(mut self, stem: &'static str) -> Self {
        self.queue = Some(stem);
        self
    }

    /// Bind the queue with these keys instead of the task type.
    pub const fn bindings(mut self, keys: &'static [&'static str]) -> Self {
        self.bindings = Some(keys);
        self
    }

    /// Publish follow-ups of this type with this priority (0-9).
    pub const fn priority(mut self, priority: u8) -> Self {
        self.priority = priority;
        self
    }

    /// Dead-letter after this many attempts.
    pub const fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = Some(attempts);
        self
    }

    /// Cancel the handler's context after this long.
    pub const fn soft_time_limit(mut self, limit: Duration) -> Self {
        self.soft_time_limit = Some(limit);
        self
    }

    /// Fail the attempt as a transient `timeout` after this long.
    pub const fn time_limit(mut self, limit: Duration) -> Self {
        self.time_limit = Some(limit);
        self
    }

    /// Start at most this many tasks per period.
    pub const fn rate_limit(mut self, limit: RateLimit) -> Self {
        self.rate_limit = Some(limit);
        self
    }

    /// Run at most this many at once per replica.
    pub const fn concurrency(mut self, limit: usize) -> Self {
        self.concurrency = Some(limit);
        self
    }
}

impl Default for TaskOptions {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// `count` task starts per `period`, spread evenly (GCRA: one every
/// `period / count`, no bursts beyond one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Starts allowed per period. At least 1.
    pub count: u32,
    /// The period.
    pub period: Duration,
}

impl RateLimit {
    /// `count` starts per second.
    pub const fn per_second(count: u32) -> Self {
        Self {
            count,
            period: Duration::from_secs(1),
        }
    }

    /// `count` starts per minute.
    pub const fn per_minute(count: u32) -> Self {
        Self {
            count,
            period: Duration::from_secs(60),
        }
    }

    /// The time between two starts.
    pub fn interval(&self) -> Duration {
        self.period / self.count.max(1)
    }
}
