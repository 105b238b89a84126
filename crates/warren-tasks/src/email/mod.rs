//! The `email.send` task: the wire type producers publish ([`SendEmail`])
//! and the domain types it is parsed into before anything is sent.
//!
//! Parse, don't validate: [`SendEmail`] is exactly what arrived (serde has
//! already refused unknown fields); [`EmailRequest::parse`] turns it into
//! values that cannot be wrong ([`EmailAddress`], [`Subject`], [`Body`],
//! [`Attachment`], [`TemplateName`]), each with private fields, or into a
//! [`ParseError`](crate::ParseError) naming the field. Rendering the
//! template and building the MIME message are the email worker's.
//!
//! ```
//! use warren_tasks::email::{EmailAddress, EmailRequest, ParsePolicy, SendEmail};
//!
//! let wire: SendEmail = serde_json::from_value(serde_json::json!({
//!     "to": ["ada@example.com", "not an address"],
//!     "subject": "Hello",
//!     "text": "Hi",
//! }))?;
//! let from = EmailAddress::parse("from", "Warren <warren@localhost>")?;
//! let policy = ParsePolicy { default_from: &from, max_attachment_bytes: 1024 };
//! let e = EmailRequest::parse(wire, &policy).unwrap_err();
//! assert_eq!((e.field.as_str(), e.kind), ("to", "invalid_address"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod address;
mod parts;
mod request;
mod wire;

pub use address::EmailAddress;
pub use parts::{Attachment, Body, Subject, TemplateName};
pub use request::{Content, EmailParts, EmailRequest, ParsePolicy};
pub use wire::{AttachmentSpec, SendEmail};

use crate::WorkQueue;

/// The email worker's queue: `{ns}.email`, bound with `email.#`.
pub const QUEUE: WorkQueue = WorkQueue {
    stem: "email",
    binding_keys: &["email.#"],
};

/// The error kinds parsing an `email.send` task produces (all permanent).
pub mod kinds {
    /// The body has the wrong shape: no recipients, no body, a blank
    /// subject, bad base64, a template with text.
    pub const INVALID_PAYLOAD: &str = "invalid_payload";
    /// An address that is not an RFC 5322 mailbox.
    pub const INVALID_ADDRESS: &str = "invalid_address";
    /// CR, LF or another control character in a value that becomes a
    /// header.
    pub const HEADER_INJECTION: &str = "header_injection";
    /// The attachments decode to more than `email.max_attachment_bytes`.
    pub const ATTACHMENT_TOO_LARGE: &str = "attachment_too_large";
}
