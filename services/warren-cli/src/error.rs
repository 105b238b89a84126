//! Errors and exit statuses. Each status means one thing, so scripts can
//! tell "nothing matched" from "the broker is down".

use std::process::ExitCode;

/// The exit statuses of `warren` (documented in `docs/cli.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Done.
    Ok = 0,
    /// Could not do it: the broker, the management API or the gateway
    /// failed, or the settings are wrong.
    Failure = 1,
    /// Bad command line (clap's own status).
    Usage = 2,
    /// The filters matched no message.
    NothingMatched = 3,
    /// No such queue or task.
    NotFound = 4,
    /// `topology verify`: the broker differs from what Warren declares.
    Mismatch = 5,
    /// `dead replay`: some messages were parked again (their body no
    /// longer parses) or could not be republished.
    Incomplete = 6,
    /// `dead purge`: the operator did not confirm.
    NotConfirmed = 7,
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> Self {
        ExitCode::from(exit as u8)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Settings(#[from] warren::settings::SettingsError),
    #[error("the broker: {0}")]
    Broker(#[from] lapin::Error),
    #[error(transparent)]
    Connect(#[from] warren::broker::ConnectError),
    #[error(transparent)]
    Publish(#[from] warren::PublishError),
    #[error("{0}")]
    Http(String),
    #[error("{0}")]
    Other(String),
}

impl CliError {
    /// The exit status this error ends the command with.
    pub fn exit(&self) -> Exit {
        match self {
            CliError::NotFound(_) => Exit::NotFound,
            CliError::Usage(_) => Exit::Usage,
            _ => Exit::Failure,
        }
    }
}

impl From<warren::dead::DeadError> for CliError {
    fn from(e: warren::dead::DeadError) -> Self {
        match e {
            warren::dead::DeadError::NotFound(s) => CliError::NotFound(s),
            warren::dead::DeadError::Broker(e) => CliError::Broker(e),
            warren::dead::DeadError::Connect(e) => CliError::Connect(e),
            warren::dead::DeadError::Management(e) => e.into(),
        }
    }
}
