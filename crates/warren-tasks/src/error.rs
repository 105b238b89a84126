//! The one error of parsing a task body: which field, what kind, and why.
//!
//! Every parse error is permanent (no retry makes bad input good), so it
//! converts into a permanent [`TaskError`] whose kind travels in the
//! `x-warren-error-kind` header. The field is kept as data so an HTTP
//! front end can answer with it (`"field": "attachments[0].filename"`)
//! without searching the message.

use std::fmt;

use warren_core::TaskError;

/// A task body that does not parse into its domain type.
///
/// ```
/// use warren_tasks::image::StoreKey;
///
/// let e = StoreKey::parse("source.key", "../etc/passwd").unwrap_err();
/// assert_eq!((e.field.as_str(), e.kind), ("source.key", "invalid_key"));
/// assert!(e.message.starts_with("source.key \"../etc/passwd\" is refused"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ParseError {
    /// The field at fault, as a path into the task body: `to`, `subject`,
    /// `attachments[0].filename`, `source.key`, `outputs[1]`. Empty when no
    /// single field is (an output prefix rendered from the settings).
    pub field: String,
    /// A short, stable slug (`invalid_payload`, `invalid_address`,
    /// `invalid_key`, ...), as in `x-warren-error-kind`.
    pub kind: &'static str,
    /// What is wrong, for people; names the field and the value.
    pub message: String,
}

impl ParseError {
    pub(crate) fn new(
        kind: &'static str,
        field: impl Into<String>,
        message: impl fmt::Display,
    ) -> Self {
        Self {
            field: field.into(),
            kind,
            message: message.to_string(),
        }
    }
}

impl From<ParseError> for TaskError {
    /// Always permanent: the same input fails the same way.
    fn from(e: ParseError) -> Self {
        TaskError::permanent(e.kind, e.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_errors_become_permanent_task_errors_with_their_kind() {
        let e = ParseError::new("invalid_payload", "to", "to is empty");
        let t = TaskError::from(e.clone());
        assert!(t.is_permanent());
        assert_eq!(
            (t.kind.as_ref(), t.message.as_str()),
            ("invalid_payload", "to is empty")
        );
        assert_eq!(e.field, "to");
    }
}
