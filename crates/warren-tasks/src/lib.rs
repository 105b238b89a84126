//! Warren's task contract: what a producer may publish and what a worker
//! accepts, for each task type, with no I/O.
//!
//! Each task type has a module: [`email`] (`email.send`) and [`image`]
//! (`image.thumbnail`). A module holds
//!
//! - the wire struct, exactly what arrives ([`email::SendEmail`],
//!   [`image::ThumbnailTask`]), which implements [`warren_core::Task`]
//!   (re-exported as `warren::Task`) so a worker can route it;
//! - its parsing into domain types that cannot be wrong once they exist
//!   ([`email::EmailRequest`], [`image::ThumbnailSpec`], [`image::StoreKey`],
//!   ...), failing with a [`ParseError`] that names the field at fault as
//!   data, so an HTTP front end can point at it without reading prose;
//! - the work queue its tasks land in ([`WorkQueue`]);
//! - with the `openapi` feature, the wire types' OpenAPI schemas.
//!
//! Producers (the gateway, a CLI, your application) and workers depend on
//! this crate, never on each other. It pulls in no AMQP client, SMTP
//! transport, template engine, image codec or object store: only serde,
//! base64, and lettre's mailbox parser.

pub mod email;
mod error;
#[cfg(test)]
mod fuzz;
pub mod image;

pub use error::ParseError;
pub use warren_core::Task;

/// A work queue of the contract: where a worker consumes tasks of its
/// types. The broker names are derived from the namespace: stem `email`
/// gives `{ns}.email`, `{ns}.email.retry.<delay>` and `{ns}.email.dead`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkQueue {
    /// The queue's name after the namespace.
    pub stem: &'static str,
    /// The keys binding the queue to the tasks exchange.
    pub binding_keys: &'static [&'static str],
}

/// Every work queue of the contract.
pub const WORK_QUEUES: &[WorkQueue] = &[email::QUEUE, image::QUEUE];

/// Every task type of the contract.
pub const TASK_TYPES: &[&str] = &[
    <email::SendEmail as Task>::TYPE,
    <image::ThumbnailTask as Task>::TYPE,
];

/// Why a body would be parked again at once by its worker, or `None` if it
/// parses: as JSON, and as its task type's body when the type is one of the
/// contract's (any other type needs a JSON object). The kind is the error
/// kind a worker would give (`invalid_json`, `invalid_payload`,
/// `unknown_field`); a replay of the parking lot uses it to re-park such a
/// message instead of sending it round the loop again.
///
/// ```
/// assert_eq!(warren_tasks::body_problem(None, b"{}"), None);
/// assert_eq!(warren_tasks::body_problem(None, b"nope").unwrap().0, "invalid_json");
/// ```
pub fn body_problem(task_type: Option<&str>, body: &[u8]) -> Option<(&'static str, String)> {
    let value: serde_json::Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => return Some(("invalid_json", format!("the body is not JSON: {e}"))),
    };
    let typed = match task_type {
        Some(t) if t == <email::SendEmail as Task>::TYPE => {
            serde_json::from_value::<email::SendEmail>(value).err()
        }
        Some(t) if t == <image::ThumbnailTask as Task>::TYPE => {
            serde_json::from_value::<image::ThumbnailTask>(value).err()
        }
        _ if !value.is_object() => {
            return Some((
                "invalid_payload",
                "the body is not a JSON object".to_owned(),
            ));
        }
        _ => None,
    };
    typed.map(|e| {
        let text = e.to_string();
        let kind = if text.starts_with("unknown field") {
            "unknown_field"
        } else {
            "invalid_payload"
        };
        (
            kind,
            format!(
                "the body does not parse as {}: {text}",
                task_type.unwrap_or("a task")
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_task_type_routes_to_its_queue() {
        for task_type in TASK_TYPES {
            let stem = task_type.split('.').next().unwrap_or_default();
            let queue = WORK_QUEUES.iter().find(|q| q.stem == stem);
            assert_eq!(
                queue.map(|q| q.binding_keys),
                Some(&[format!("{stem}.#").as_str()][..]),
                "{task_type}"
            );
        }
    }
}
