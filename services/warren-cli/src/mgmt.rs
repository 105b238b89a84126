//! RabbitMQ's management HTTP API, read only: the client the gateway's
//! console shares ([`warren::management`]). Its URL is
//! `broker.management_url`; its user and password those of that URL, else
//! of the AMQP URL.

pub use warren::management::{Management, count, rate};

use warren::management::ManagementError;

use crate::error::CliError;

impl From<ManagementError> for CliError {
    fn from(e: ManagementError) -> Self {
        match e {
            ManagementError::Settings(s) => CliError::Usage(s),
            ManagementError::Http(s) => CliError::Http(s),
            ManagementError::NotFound(s) => CliError::NotFound(s),
        }
    }
}
