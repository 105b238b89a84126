//! Warren's email worker: consumes `email.send` tasks and delivers them over
//! SMTP, or into an outbox directory of `.eml` files.
//!
//! The shared runtime owns the queue (ack, retry, dead-lettering) and the
//! contract crate (`warren_tasks::email`) what an `email.send` task is and
//! how it parses; this crate owns how it is rendered ([`template`]) and
//! built into a message ([`message`]), where it goes ([`transport`]) and
//! the handler that ties them together ([`mailer`]).

pub mod mailer;
pub mod message;
pub mod metrics;
pub mod sender;
pub mod settings;
pub mod smtp;
pub mod template;
pub mod transport;

pub use mailer::{Mailer, MailerError};
pub use message::SendEmail;
pub use settings::{EmailSettings, Settings, SmtpSettings, SmtpTls, TransportKind};
