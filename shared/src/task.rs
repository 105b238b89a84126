//! What a handler sees and answers: the task's metadata, its outcome, and an
//! error that says whether the task is retried later or dead-lettered now.
//!
//! Handlers know nothing about AMQP. The runtime turns a delivery into a
//! [`TaskContext`] plus a typed payload, and turns the handler's answer into an
//! ack, a copy in a delay queue, or a copy in the parking lot.

use std::borrow::Cow;
use std::fmt;

use chrono::{DateTime, Utc};

/// Metadata of the task being handled.
#[derive(Debug, Clone)]
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
}

impl TaskContext {
    /// True when a transient failure of this attempt will not be retried.
    pub fn is_last_attempt(&self) -> bool {
        self.attempt >= self.max_attempts
    }
}

/// What a successful handler hands back. The result is logged and, once task
/// events exist, published as the task's result.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Outcome {
    pub result: Option<serde_json::Value>,
}

impl Outcome {
    /// Success with nothing to report.
    pub fn done() -> Self {
        Self::default()
    }

    /// Success with a result.
    pub fn with_result(result: serde_json::Value) -> Self {
        Self {
            result: Some(result),
        }
    }
}

/// Whether a failure may heal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// The failure may heal (a timeout, a refused connection, SMTP 4xx):
    /// retry through the delay queues.
    Retry,
    /// The failure will not heal (bad input, SMTP 5xx): dead-letter now.
    Permanent,
}

impl Disposition {
    pub fn as_str(self) -> &'static str {
        match self {
            Disposition::Retry => "retry",
            Disposition::Permanent => "permanent",
        }
    }
}

/// A failed attempt.
///
/// `kind` is a short, stable, low-cardinality slug (`invalid_json`,
/// `smtp_permanent`, `timeout`, ...). It travels in the `x-warren-error-kind`
/// header and is a metric label, so never put ids or free text in it;
/// `message` carries the details.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskError {
    pub disposition: Disposition,
    pub kind: Cow<'static, str>,
    pub message: String,
}

impl TaskError {
    /// A failure that may heal: the task is retried after a delay.
    pub fn retry(kind: impl Into<Cow<'static, str>>, message: impl fmt::Display) -> Self {
        Self {
            disposition: Disposition::Retry,
            kind: kind.into(),
            message: message.to_string(),
        }
    }

    /// A failure that will not heal: the task is dead-lettered at once.
    pub fn permanent(kind: impl Into<Cow<'static, str>>, message: impl fmt::Display) -> Self {
        Self {
            disposition: Disposition::Permanent,
            kind: kind.into(),
            message: message.to_string(),
        }
    }

    pub fn is_permanent(&self) -> bool {
        self.disposition == Disposition::Permanent
    }
}

impl fmt::Display for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({}): {}",
            self.kind,
            self.disposition.as_str(),
            self.message
        )
    }
}

impl std::error::Error for TaskError {}

/// A task type with its JSON payload: the runtime deserializes the body into
/// `Self` (unknown fields are rejected by the type's serde attributes) before
/// it calls the handler.
pub trait Task: serde::de::DeserializeOwned + Send + 'static {
    /// The routing key producers publish this task with, e.g. `email.send`.
    const TYPE: &'static str;
}
