//! The `email.send` handler: parse the task, render its template, build the
//! MIME message, wait for the rate limiter, deliver within the send timeout,
//! and answer the runtime with an [`Outcome`] or a [`TaskError`] that says
//! whether to retry.
//!
//! [`Mailer`] knows nothing about AMQP; the runtime owns ack, retry and
//! dead-lettering. It is cheap to clone (one `Arc`), so every in-flight task
//! can hold one.

use std::fmt;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use serde_json::json;
use warren::{Outcome, TaskContext, TaskError};

use crate::message::{EmailAddress, EmailRequest, ParsePolicy, Render, SendEmail};
use crate::sender::SenderPolicy;
use crate::settings::{EmailSettings, TransportKind};
use crate::template::Templates;
use crate::transport::{SmtpError, Transport};

/// Start-up errors: the settings do not describe a mailer that can work.
#[derive(Debug, thiserror::Error)]
pub enum MailerError {
    #[error("email.default_from {value:?} is not a usable sender: {reason}")]
    InvalidDefaultFrom { value: String, reason: String },
    #[error("email.{setting} must be greater than zero")]
    MustBePositive { setting: &'static str },
    #[error("could not set up the SMTP transport for {host}: {source}")]
    Smtp {
        host: String,
        #[source]
        source: SmtpError,
    },
    #[error("could not create the outbox directory {}: {source}", path.display())]
    OutboxDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Sends `email.send` tasks. Clone freely.
#[derive(Clone)]
pub struct Mailer {
    inner: Arc<Inner>,
}

struct Inner {
    transport: Transport,
    templates: Templates,
    default_from: EmailAddress,
    senders: SenderPolicy,
    max_attachment_bytes: usize,
    send_timeout: Duration,
    /// `None` when `rate_limit_per_second` is 0 (unlimited).
    limiter: Option<DefaultDirectRateLimiter>,
}

impl Mailer {
    /// Builds the mailer from `[email]`. Opens no connection; creates the
    /// outbox directory when the outbox transport is selected, so a
    /// read-only path fails at start-up rather than on every task.
    ///
    /// Call it inside a Tokio runtime: lettre's SMTP pool spawns its
    /// idle-connection reaper when it is built.
    pub fn from_settings(settings: &EmailSettings) -> Result<Mailer, MailerError> {
        let default_from = EmailAddress::parse("email.default_from", &settings.default_from)
            .map_err(|e| MailerError::InvalidDefaultFrom {
                value: settings.default_from.clone(),
                reason: e.message,
            })?;
        if settings.send_timeout.is_zero() {
            return Err(MailerError::MustBePositive {
                setting: "send_timeout",
            });
        }
        if settings.transport == TransportKind::Smtp && settings.smtp.pool_max_size == 0 {
            return Err(MailerError::MustBePositive {
                setting: "smtp.pool_max_size",
            });
        }
        if settings.transport == TransportKind::Outbox {
            std::fs::create_dir_all(&settings.outbox_dir).map_err(|source| {
                MailerError::OutboxDir {
                    path: settings.outbox_dir.clone(),
                    source,
                }
            })?;
        }
        let transport = Transport::from_settings(settings).map_err(|source| MailerError::Smtp {
            host: settings.smtp.host.clone(),
            source,
        })?;
        let limiter = NonZeroU32::new(settings.rate_limit_per_second)
            .map(|per_second| RateLimiter::direct(Quota::per_second(per_second)));
        let senders = SenderPolicy::new(&settings.allowed_from, settings.transport, &default_from);
        Ok(Mailer {
            inner: Arc::new(Inner {
                transport,
                templates: Templates::new(&settings.templates_dir),
                senders,
                default_from,
                max_attachment_bytes: settings.max_attachment_bytes,
                send_timeout: settings.send_timeout,
                limiter,
            }),
        })
    }

    /// Which transport this mailer delivers through.
    pub fn transport_kind(&self) -> TransportKind {
        self.inner.transport.kind()
    }

    /// Handles one `email.send` task.
    ///
    /// Bad input is a permanent error (dead-lettered at once); a failure
    /// that may heal (SMTP 4xx, connection trouble, timeout, outbox I/O) is
    /// a retry. The Message-ID derives from `ctx.id`, so a redelivery sends
    /// the same Message-ID (and overwrites the same outbox file).
    pub async fn send(&self, ctx: &TaskContext, task: SendEmail) -> Result<Outcome, TaskError> {
        let inner = &*self.inner;
        let policy = ParsePolicy {
            default_from: &inner.default_from,
            max_attachment_bytes: inner.max_attachment_bytes,
        };
        let reply_to = task.reply_to.clone();
        let request = EmailRequest::parse(task, &policy)?;
        // `reply_to` parsed already; parsed again here for the policy.
        let reply_to = reply_to
            .map(|raw| EmailAddress::parse("reply_to", &raw))
            .transpose()?;
        inner.senders.check(request.from(), reply_to.as_ref())?;
        let email = request.render(&inner.templates)?;
        let message_id = email.message_id(&ctx.id);
        let transport = inner.transport.kind();
        // An outbox file has no envelope: keep Bcc in it, or those
        // recipients would be invisible. Over SMTP the envelope carries them.
        let keep_bcc = transport == TransportKind::Outbox;
        let message = email.into_message(&message_id, keep_bcc)?;
        let recipients = message.envelope().to().len();

        if let Some(limiter) = &inner.limiter {
            // Waiting here does not count against the send timeout: the
            // limit is ours, not the server's.
            limiter.until_ready().await;
        }

        inner
            .transport
            .send(&ctx.id, &message, inner.send_timeout)
            .await
            .map_err(|e| {
                let err = e.into_task_error();
                crate::metrics::send_failed(&err.kind);
                err
            })?;
        crate::metrics::sent(transport.as_str());

        tracing::info!(
            task_id = %ctx.id,
            message_id = %message_id,
            transport = transport.as_str(),
            recipients,
            "Sent the email."
        );
        Ok(Outcome::with_result(json!({
            "message_id": message_id.as_str(),
            "recipients": recipients,
            "transport": transport.as_str(),
        })))
    }

    /// Closes pooled SMTP connections; call once at shutdown, after the last
    /// send.
    pub async fn close(&self) {
        self.inner.transport.close().await;
    }
}

impl fmt::Debug for Mailer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mailer")
            .field("transport", &self.inner.transport)
            .field("templates", &self.inner.templates)
            .field("default_from", &self.inner.default_from)
            .field("max_attachment_bytes", &self.inner.max_attachment_bytes)
            .field("send_timeout", &self.inner.send_timeout)
            .field("rate_limited", &self.inner.limiter.is_some())
            .finish()
    }
}

#[cfg(test)]
// A failing unwrap is how a test reports failure.
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::Value;
    use std::path::Path;
    use warren::safe_task_id;

    fn context(id: &str) -> TaskContext {
        let mut ctx = TaskContext::new(id, "email.send");
        ctx.max_attempts = 6;
        ctx
    }

    fn outbox_settings(outbox: &Path) -> EmailSettings {
        EmailSettings {
            transport: TransportKind::Outbox,
            default_from: "Warren <warren@example.org>".to_owned(),
            outbox_dir: outbox.to_owned(),
            templates_dir: Path::new(env!("CARGO_MANIFEST_DIR")).join("templates"),
            ..EmailSettings::default()
        }
    }

    fn task(value: Value) -> SendEmail {
        serde_json::from_value(value).unwrap()
    }

    #[tokio::test]
    async fn a_templated_email_lands_in_the_outbox_once_per_task_id() {
        let dir = tempfile::tempdir().unwrap();
        let mailer = Mailer::from_settings(&outbox_settings(dir.path())).unwrap();
        let payload = json!({
            "to": ["Ann <ann@x.org>"],
            "template": "welcome",
            "variables": { "name": "Ann & Co" },
            "attachments": [{ "filename": "hi.txt", "content_type": "text/plain", "content_base64": "aGk=" }],
        });

        let outcome = mailer
            .send(&context("task/42"), task(payload.clone()))
            .await
            .unwrap();
        let id = safe_task_id("task/42");
        assert_eq!(
            outcome.result,
            Some(json!({
                "message_id": format!("<{id}@example.org>"),
                "recipients": 1,
                "transport": "outbox",
            }))
        );
        // A redelivery of the same task id writes the same file again.
        mailer
            .send(&context("task/42"), task(payload))
            .await
            .unwrap();
        let files: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(files.len(), 1);

        let raw = std::fs::read(dir.path().join(format!("{id}.eml"))).unwrap();
        let parsed = mail_parser::MessageParser::default().parse(&raw).unwrap();
        assert_eq!(parsed.subject(), Some("Welcome to Warren, Ann & Co!"));
        assert_eq!(
            parsed.message_id(),
            Some(format!("{id}@example.org").as_str())
        );
        assert!(parsed.body_html(0).unwrap().contains("Ann &amp; Co"));
        assert!(parsed.body_text(0).unwrap().contains("Hello Ann & Co,"));
        assert_eq!(parsed.attachment_count(), 1);
    }

    #[tokio::test]
    async fn bad_input_is_permanent_before_anything_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let mailer = Mailer::from_settings(&outbox_settings(dir.path())).unwrap();
        let cases = [
            (
                json!({ "to": "a@x.org", "template": "nope" }),
                "template_not_found",
            ),
            (
                json!({ "to": "a@x.org", "template": "welcome" }),
                "template_error",
            ),
            (
                json!({ "to": "@x.org", "subject": "s", "text": "t" }),
                "invalid_address",
            ),
            // A variable cannot smuggle a header in through the subject.
            (
                json!({ "to": "a@x.org", "template": "welcome", "variables": { "name": "A\r\nBcc: e@x.org" } }),
                "header_injection",
            ),
        ];
        for (payload, kind) in cases {
            let err = mailer
                .send(&context("t1"), task(payload))
                .await
                .unwrap_err();
            assert_eq!(err.kind, kind, "{err}");
            assert!(err.is_permanent());
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn settings_that_cannot_work_fail_at_start_up() {
        let dir = tempfile::tempdir().unwrap();
        let mut settings = outbox_settings(dir.path());
        settings.default_from = "not a mailbox".to_owned();
        assert!(matches!(
            Mailer::from_settings(&settings),
            Err(MailerError::InvalidDefaultFrom { .. })
        ));
        let mut settings = outbox_settings(dir.path());
        settings.send_timeout = Duration::ZERO;
        assert!(matches!(
            Mailer::from_settings(&settings),
            Err(MailerError::MustBePositive { .. })
        ));
    }

    #[tokio::test]
    async fn a_rate_limited_mailer_sends_and_the_limit_holds() {
        let dir = tempfile::tempdir().unwrap();
        let mut settings = outbox_settings(dir.path());
        // Three per second: a burst of three, then one every 333 ms.
        settings.rate_limit_per_second = 3;
        let mailer = Mailer::from_settings(&settings).unwrap();
        let limiter = mailer.inner.limiter.as_ref().expect("a limiter");
        for n in 0..3 {
            mailer
                .send(
                    &context(&format!("t{n}")),
                    task(json!({ "to": "a@x.org", "subject": "s", "text": "t" })),
                )
                .await
                .unwrap();
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 3);
        // The burst is spent: a fourth send now would have to wait.
        assert!(
            limiter.check().is_err(),
            "three sends left room for a fourth within the same second"
        );
    }

    #[test]
    fn no_rate_limit_means_no_limiter() {
        let dir = tempfile::tempdir().unwrap();
        let mut settings = outbox_settings(dir.path());
        settings.rate_limit_per_second = 0;
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let _guard = runtime.enter();
        let mailer = Mailer::from_settings(&settings).unwrap();
        assert!(mailer.inner.limiter.is_none());
    }
}
