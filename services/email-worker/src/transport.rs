//! Where a built message goes: an SMTP server through Warren's pooled,
//! pipelining SMTP client ([`crate::smtp`]), or an outbox directory of
//! `.eml` files.
//!
//! The outbox writes `{outbox_dir}/{sanitized task id}.eml` through a
//! temporary file and a rename, so a reader never sees half a message and a
//! redelivered task overwrites its own file: idempotent by construction.
//!
//! Every delivery is bounded by a deadline here. A send cut off by it drops
//! the connection it held, so a connection left in the middle of an SMTP
//! exchange is never reused.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use lettre::Message;
use tokio::io::AsyncWriteExt;
use warren::TaskError;

use crate::settings::{EmailSettings, TransportKind};
pub use crate::smtp::{SmtpError, SmtpRelay};
use warren::safe_task_id;

/// One of the two real transports.
#[derive(Debug)]
pub enum Transport {
    Smtp(Box<SmtpRelay>),
    Outbox(Outbox),
}

impl Transport {
    /// Builds the transport `settings.transport` names. Connects to nothing
    /// yet: SMTP connections are opened on the first send.
    pub fn from_settings(settings: &EmailSettings) -> Result<Self, SmtpError> {
        Ok(match settings.transport {
            TransportKind::Smtp => Transport::Smtp(Box::new(SmtpRelay::new(
                settings.smtp.clone(),
                settings.send_timeout,
            )?)),
            TransportKind::Outbox => Transport::Outbox(Outbox::new(&settings.outbox_dir)),
        })
    }

    pub fn kind(&self) -> TransportKind {
        match self {
            Transport::Smtp(_) => TransportKind::Smtp,
            Transport::Outbox(_) => TransportKind::Outbox,
        }
    }

    /// Delivers `message` for task `task_id` within `deadline`.
    pub async fn send(
        &self,
        task_id: &str,
        message: &Message,
        deadline: Duration,
    ) -> Result<(), TransportError> {
        match self {
            Transport::Smtp(relay) => send_smtp(relay, message, deadline).await,
            Transport::Outbox(outbox) => {
                match tokio::time::timeout(deadline, outbox.write(task_id, message)).await {
                    Ok(written) => written.map(|_path| ()),
                    Err(_elapsed) => Err(TransportError::Timeout(deadline)),
                }
            }
        }
    }

    /// Closes pooled SMTP connections politely (QUIT); for shutdown.
    pub async fn close(&self) {
        if let Transport::Smtp(relay) = self {
            relay.close().await;
        }
    }
}

/// Why a delivery failed.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("SMTP delivery failed: {0}")]
    Smtp(SmtpError),
    #[error("writing the outbox file {} failed: {source}", path.display())]
    Outbox { path: PathBuf, source: io::Error },
    #[error("delivery took longer than the send timeout of {0:?}")]
    Timeout(Duration),
}

impl TransportError {
    /// Answers the runtime's question: retry later, or dead-letter now?
    ///
    /// Only an SMTP 5xx reply is permanent: the server looked at this message
    /// and said no. Everything else (4xx, a refused or broken connection, a
    /// TLS failure, a full disk, a timeout) may heal.
    pub fn into_task_error(self) -> TaskError {
        match self {
            TransportError::Smtp(e) if e.is_permanent() => TaskError::permanent(
                "smtp_permanent",
                format!("the SMTP server refused the message: {e}"),
            ),
            TransportError::Smtp(e) if e.is_transient() => TaskError::retry(
                "smtp_transient",
                format!("the SMTP server deferred the message: {e}"),
            ),
            TransportError::Smtp(e) => TaskError::retry(
                "smtp_connection",
                format!("talking to the SMTP server failed: {}", with_sources(&e)),
            ),
            error @ TransportError::Outbox { .. } => TaskError::retry("outbox_io", error),
            error @ TransportError::Timeout(_) => TaskError::retry("timeout", error),
        }
    }
}

/// The whole chain of causes: a TLS failure is two or three levels down.
fn with_sources(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        // Some errors already print their direct source; skip repeats.
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Hands a lettre-built message to the SMTP pool within a deadline.
async fn send_smtp(
    relay: &SmtpRelay,
    message: &Message,
    deadline: Duration,
) -> Result<(), TransportError> {
    let envelope = message.envelope();
    let from = envelope.from().map(ToString::to_string).unwrap_or_default();
    let to: Vec<String> = envelope.to().iter().map(ToString::to_string).collect();
    let body = message.formatted();
    // A send cut off here drops its connection mid-transaction; the pool
    // never sees it again, so no later send inherits a half-done exchange.
    match tokio::time::timeout(deadline, relay.send(&from, &to, &body)).await {
        Ok(sent) => sent.map_err(TransportError::Smtp),
        Err(_elapsed) => Err(TransportError::Timeout(deadline)),
    }
}

/// Writes each message to `{dir}/{sanitized task id}.eml`.
#[derive(Debug, Clone)]
pub struct Outbox {
    dir: PathBuf,
}

/// Makes temporary file names unique within the process, so two deliveries
/// of the same task at once never write the same temporary file.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

impl Outbox {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file a task's message is written to.
    pub fn path_for(&self, task_id: &str) -> PathBuf {
        self.dir.join(format!("{}.eml", safe_task_id(task_id)))
    }

    /// Writes the message atomically and returns the file's path. Creates
    /// the directory if it is missing.
    pub async fn write(&self, task_id: &str, message: &Message) -> Result<PathBuf, TransportError> {
        let target = self.path_for(task_id);
        let outbox_error = |path: &Path, source: io::Error| TransportError::Outbox {
            path: path.to_owned(),
            source,
        };
        tokio::fs::create_dir_all(&self.dir)
            .await
            .map_err(|e| outbox_error(&self.dir, e))?;
        // Same directory as the target, so the rename cannot cross file
        // systems; a leading dot keeps it out of `*.eml` globs.
        let temp = self.dir.join(format!(
            ".{}.{}.{}.tmp",
            safe_task_id(task_id),
            std::process::id(),
            TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let written = write_then_rename(&temp, &target, &message.formatted()).await;
        if written.is_err() {
            // Best effort: the error that matters is the one we return.
            let _ = tokio::fs::remove_file(&temp).await;
        }
        written.map_err(|e| outbox_error(&target, e))?;
        Ok(target)
    }
}

async fn write_then_rename(temp: &Path, target: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = tokio::fs::File::create(temp).await?;
    file.write_all(bytes).await?;
    // Flush to disk before the rename makes the file visible, so a crash
    // cannot leave a complete-looking but empty message.
    file.sync_all().await?;
    drop(file);
    tokio::fs::rename(temp, target).await
}

#[cfg(test)]
// A failing unwrap is how a test reports failure.
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::message::{EmailAddress, EmailRequest, ParsePolicy, Render, SendEmail};
    use crate::template::Templates;
    use serde_json::json;

    fn message(subject: &str) -> Message {
        let wire: SendEmail = serde_json::from_value(json!({
            "to": "Ann <ann@x.org>",
            "bcc": "hidden@x.org",
            "subject": subject,
            "text": "Hello",
        }))
        .unwrap();
        let from = EmailAddress::parse("from", "me@example.org").unwrap();
        let email = EmailRequest::parse(
            wire,
            &ParsePolicy {
                default_from: &from,
                max_attachment_bytes: 0,
            },
        )
        .unwrap()
        .render(&Templates::new("/nonexistent"))
        .unwrap();
        let id = email.message_id("task-7");
        email.into_message(&id, true).unwrap()
    }

    #[tokio::test]
    async fn the_outbox_writes_one_file_per_task_and_overwrites_it() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("not").join("yet");
        let transport = Transport::Outbox(Outbox::new(&dir));

        transport
            .send("task-7", &message("First"), Duration::from_secs(5))
            .await
            .unwrap();
        transport
            .send("task-7", &message("Second"), Duration::from_secs(5))
            .await
            .unwrap();

        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, vec!["task-7.eml"], "no temporary files left behind");
        let raw = std::fs::read(dir.join("task-7.eml")).unwrap();
        let parsed = mail_parser::MessageParser::default().parse(&raw).unwrap();
        assert_eq!(parsed.subject(), Some("Second"));
        assert_eq!(parsed.message_id(), Some("task-7@example.org"));
        assert_eq!(
            parsed.body_text(0).as_deref().map(str::trim_end),
            Some("Hello")
        );
        let bcc = parsed
            .bcc()
            .and_then(|a| a.first())
            .and_then(|a| a.address());
        assert_eq!(bcc, Some("hidden@x.org"));
    }

    #[tokio::test]
    async fn unsafe_task_ids_never_escape_the_outbox() {
        let root = tempfile::tempdir().unwrap();
        let outbox = Outbox::new(root.path());
        let path = outbox
            .write("../../etc/passwd", &message("s"))
            .await
            .unwrap();
        assert_eq!(path.parent(), Some(root.path()));
        assert!(
            path.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("id=")
        );
    }

    #[tokio::test]
    async fn an_unwritable_outbox_is_a_retryable_outbox_io_error() {
        let root = tempfile::tempdir().unwrap();
        let blocker = root.path().join("file");
        std::fs::write(&blocker, b"not a directory").unwrap();
        let err = Outbox::new(&blocker)
            .write("t", &message("s"))
            .await
            .unwrap_err()
            .into_task_error();
        assert_eq!(err.kind, "outbox_io");
        assert!(!err.is_permanent());
    }

    #[test]
    fn smtp_failures_are_classified_by_reply_code() {
        let reply = |code| {
            TransportError::Smtp(SmtpError::Reply {
                command: "end of DATA",
                code,
                message: "test".to_owned(),
            })
            .into_task_error()
        };
        let permanent = reply(550);
        assert_eq!(permanent.kind, "smtp_permanent");
        assert!(permanent.is_permanent());
        let transient = reply(451);
        assert_eq!(transient.kind, "smtp_transient");
        assert!(!transient.is_permanent());
        let refused = TransportError::Smtp(SmtpError::Connect {
            address: "127.0.0.1:1".to_owned(),
            source: io::Error::from(io::ErrorKind::ConnectionRefused),
        })
        .into_task_error();
        assert_eq!(refused.kind, "smtp_connection");
        assert!(!refused.is_permanent());
        let timeout = TransportError::Timeout(Duration::from_secs(1)).into_task_error();
        assert_eq!(timeout.kind, "timeout");
        assert!(!timeout.is_permanent());
    }

    #[tokio::test]
    async fn smtp_transports_build_for_every_tls_mode() {
        use crate::settings::{SmtpSettings, SmtpTls};
        for tls in [SmtpTls::Starttls, SmtpTls::Implicit, SmtpTls::None] {
            let settings = SmtpSettings {
                tls,
                username: Some("user".to_owned()),
                ..SmtpSettings::default()
            };
            assert!(
                SmtpRelay::new(settings, Duration::from_secs(5)).is_ok(),
                "{tls:?}"
            );
        }
        let bad = SmtpSettings {
            host: "not a host".to_owned(),
            ..SmtpSettings::default()
        };
        assert!(SmtpRelay::new(bad, Duration::from_secs(5)).is_err());
    }
}
