//! What a handler sees and answers: the task's metadata, its outcome, and an
//! error that says whether the task is retried later or dead-lettered now.
//!
//! Handlers know nothing about AMQP. The runtime (`warren`) turns a delivery
//! into a [`TaskContext`] plus a typed payload, and turns the handler's
//! answer into an ack, a copy in a delay queue, or a copy in the parking lot.
//!
//! This crate has no I/O, so the task contract crate (`warren-tasks`) can
//! implement [`Task`] for its wire types and turn its parse errors into
//! [`TaskError`]s without pulling in an AMQP client. Everything here is
//! re-exported at the root of `warren`; use it from there.

#![warn(missing_docs)]

mod context;
mod options;

use std::borrow::Cow;
use std::fmt;

pub use context::{BoxFuture, ContextRuntime, FollowUp, TaskContext};
pub use options::{RateLimit, TaskOptions};

/// What a successful handler hands back. The result is logged and, once task
/// events exist, published as the task's result.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Outcome {
    /// The result, as JSON: logged, and the `result` of the `succeeded`
    /// task event.
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
    /// `retry` or `permanent`.
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
    /// Retried later, or dead-lettered now.
    pub disposition: Disposition,
    /// A short, stable slug: the `x-warren-error-kind` header, a metric
    /// label.
    pub kind: Cow<'static, str>,
    /// The details, for people: the `x-warren-error` header and logs.
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

    /// True when the task is dead-lettered without retrying.
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
///
/// ```
/// use warren_core::Task;
///
/// #[derive(serde::Deserialize)]
/// #[serde(deny_unknown_fields)]
/// struct Ping {
///     n: u32,
/// }
///
/// impl Task for Ping {
///     const TYPE: &'static str = "test.ping";
/// }
///
/// assert_eq!(Ping::decode(br#"{"n": 3}"#).map(|p| p.n), Ok(3));
/// assert_eq!(Ping::decode(b"{").err().map(|e| e.kind), Some("invalid_json".into()));
/// ```
pub trait Task: serde::de::DeserializeOwned + Send + 'static {
    /// The routing key producers publish this task with, e.g. `email.send`.
    const TYPE: &'static str;

    /// Where it is queued and how the runtime treats it: queue, bindings,
    /// priority, attempts, time limits, rate limit, concurrency. Nothing
    /// declared means the worker's settings.
    const OPTIONS: TaskOptions = TaskOptions::DEFAULT;

    /// Decodes a task body as the runtime does before it calls the handler.
    /// Bad JSON and unknown fields are permanent: no retry makes them valid.
    fn decode(body: &[u8]) -> Result<Self, TaskError> {
        decode_json(body)
    }
}

/// The JSON decoding behind [`Task::decode`], with its error kinds:
/// `invalid_json` (not JSON), `unknown_field`, `invalid_payload` (JSON of
/// the wrong shape).
fn decode_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, TaskError> {
    use serde_json::error::Category;
    serde_json::from_slice(body).map_err(|e| match e.classify() {
        Category::Data if e.to_string().starts_with("unknown field") => {
            TaskError::permanent("unknown_field", format!("the task body has {e}"))
        }
        Category::Data => {
            TaskError::permanent("invalid_payload", format!("the task body is invalid: {e}"))
        }
        _ => TaskError::permanent(
            "invalid_json",
            format!("the task body is not valid JSON: {e}"),
        ),
    })
}

/// Longest task id kept verbatim by [`safe_task_id`]; longer ones are
/// hashed, so a file name made from one stays well under 255 bytes.
const MAX_VERBATIM_ID_LEN: usize = 128;

/// A form of the task id that is safe as one file name or object-key
/// segment and inside a Message-ID.
///
/// Ids made of `[A-Za-z0-9._-]` (as UUIDs are), not too long, not starting
/// or ending with a dot and without `..`, are kept verbatim. Anything else
/// becomes `id=` and a stable 128-bit FNV-1a hash of the id: `=` never
/// appears in a verbatim id, so the two forms cannot collide.
pub fn safe_task_id(task_id: &str) -> String {
    let verbatim = !task_id.is_empty()
        && task_id.len() <= MAX_VERBATIM_ID_LEN
        && task_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && !task_id.starts_with('.')
        && !task_id.ends_with('.')
        && !task_id.contains("..");
    if verbatim {
        task_id.to_owned()
    } else {
        format!("id={:032x}", fnv1a_128(task_id.as_bytes()))
    }
}

/// FNV-1a, 128 bits. Chosen over `DefaultHasher` because its output must not
/// change between Rust releases: a redelivery must map to the same
/// Message-ID, file name and key prefix.
fn fnv1a_128(bytes: &[u8]) -> u128 {
    const OFFSET_BASIS: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
    const PRIME: u128 = 0x0000_0000_0100_0000_0000_0000_0000_013b;
    bytes.iter().fold(OFFSET_BASIS, |hash, &b| {
        (hash ^ u128::from(b)).wrapping_mul(PRIME)
    })
}

#[cfg(test)]
// A failing unwrap is how a test reports failure.
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Ping {
        #[allow(dead_code)]
        n: u32,
    }
    impl Task for Ping {
        const TYPE: &'static str = "test.ping";
    }

    #[test]
    fn decode_errors_are_permanent_and_named() {
        let e = Ping::decode(b"{not json").unwrap_err();
        assert!(e.is_permanent());
        assert_eq!(e.kind, "invalid_json");
        let e = Ping::decode(br#"{"n": 1, "extra": true}"#).unwrap_err();
        assert_eq!(e.kind, "unknown_field");
        assert!(e.message.contains("extra"), "{}", e.message);
        let e = Ping::decode(br#"{"n": "x"}"#).unwrap_err();
        assert_eq!(e.kind, "invalid_payload");
        assert!(Ping::decode(br#"{"n": 3}"#).is_ok());
    }

    #[test]
    fn task_ids_are_kept_when_safe_and_hashed_stably_otherwise() {
        let uuid = "0191b2c4-7e5a-7b3c-9d8e-1f2a3b4c5d6e";
        assert_eq!(safe_task_id(uuid), uuid);
        assert_eq!(safe_task_id("order_42.v2"), "order_42.v2");
        for unsafe_id in [
            "a/b",
            "a b",
            "<x@y>",
            "..",
            "a..b",
            ".hidden",
            "",
            "é",
            &"a".repeat(200),
        ] {
            let clean = safe_task_id(unsafe_id);
            assert!(clean.starts_with("id="), "{unsafe_id:?} -> {clean}");
            assert_eq!(clean.len(), 3 + 32);
            // Stable: the same id always maps to the same value.
            assert_eq!(clean, safe_task_id(unsafe_id));
        }
        assert_ne!(safe_task_id("a/b"), safe_task_id("a/c"));
    }
}
