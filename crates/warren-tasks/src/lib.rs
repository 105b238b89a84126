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
