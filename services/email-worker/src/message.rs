//! From a parsed `email.send` request to a lettre [`Message`]: render the
//! template (if any), then build the MIME message without further checks.
//!
//! What an `email.send` task is, and its parsing into values that cannot
//! be wrong, is the contract crate's (`warren_tasks::email`, re-exported
//! here); this module owns what only the worker does with them. Once the
//! template is rendered, the request becomes an [`Email`], which builds the
//! message; its Message-ID derives from the task id ([`MessageId`]).

use std::fmt;

use lettre::Message;
use lettre::message::{MultiPart, SinglePart};
use warren::{TaskError, safe_task_id};
pub use warren_tasks::email::{
    Attachment, AttachmentSpec, Body, Content, EmailAddress, EmailParts, EmailRequest, ParsePolicy,
    SendEmail, Subject, TemplateName,
};

use crate::template::{Rendered, Templates};

fn invalid_payload(message: impl fmt::Display) -> TaskError {
    TaskError::permanent(warren_tasks::email::kinds::INVALID_PAYLOAD, message)
}

/// Rendering a parsed request into a complete [`Email`].
pub trait Render {
    /// Renders the template, if any, and completes the email. A subject in
    /// the task wins over the template's `subject.txt`.
    fn render(self, templates: &Templates) -> Result<Email, TaskError>;
}

impl Render for EmailRequest {
    fn render(self, templates: &Templates) -> Result<Email, TaskError> {
        let EmailParts {
            from,
            reply_to,
            to,
            cc,
            bcc,
            subject,
            content,
            attachments,
        } = self.into_parts();
        let (subject, body) = match content {
            Content::Literal(body) => {
                let subject = subject.ok_or_else(|| {
                    invalid_payload("subject is required unless a template provides one")
                })?;
                (subject, body)
            }
            Content::Template { name, variables } => {
                let Rendered {
                    subject: rendered_subject,
                    text,
                    html,
                } = templates.render(&name, &variables)?;
                let subject = match (subject, rendered_subject) {
                    (Some(subject), _) => subject,
                    (None, Some(raw)) => Subject::rendered(&name, &raw)?,
                    (None, None) => {
                        return Err(invalid_payload(format!(
                            "subject is required: the task has none and template {name} has no subject.txt"
                        )));
                    }
                };
                (subject, Body::new(text, html)?)
            }
        };
        Ok(Email {
            from,
            reply_to,
            to,
            cc,
            bcc,
            subject,
            body,
            attachments,
        })
    }
}

/// A complete, valid email, ready to become a lettre [`Message`].
#[derive(Debug, Clone, PartialEq)]
pub struct Email {
    from: EmailAddress,
    reply_to: Option<EmailAddress>,
    to: Vec<EmailAddress>,
    cc: Vec<EmailAddress>,
    bcc: Vec<EmailAddress>,
    subject: Subject,
    body: Body,
    attachments: Vec<Attachment>,
}

enum Part {
    Single(SinglePart),
    Multi(MultiPart),
}

fn body_part(body: Body) -> Part {
    match body.into_parts() {
        (Some(text), Some(html)) => Part::Multi(MultiPart::alternative_plain_html(text, html)),
        (Some(text), None) => Part::Single(SinglePart::plain(text)),
        (None, Some(html)) => Part::Single(SinglePart::html(html)),
        // `Body::new` refuses an empty body; an empty text part keeps this
        // total without a panic.
        (None, None) => Part::Single(SinglePart::plain(String::new())),
    }
}

impl Email {
    pub fn from(&self) -> &EmailAddress {
        &self.from
    }

    pub fn subject(&self) -> &Subject {
        &self.subject
    }

    pub fn body(&self) -> &Body {
        &self.body
    }

    pub fn attachments(&self) -> &[Attachment] {
        &self.attachments
    }

    /// The Message-ID this email gets when sent for `task_id`.
    pub fn message_id(&self, task_id: &str) -> MessageId {
        MessageId::for_task(task_id, &self.from)
    }

    /// Builds the MIME message: text and HTML as multipart/alternative,
    /// wrapped in multipart/mixed when there are attachments.
    ///
    /// `keep_bcc` keeps the `Bcc` header in the formatted message; an outbox
    /// file has no envelope, so without it the Bcc recipients would vanish.
    pub fn into_message(
        self,
        message_id: &MessageId,
        keep_bcc: bool,
    ) -> Result<Message, TaskError> {
        let mut builder = Message::builder()
            .from(self.from.into_mailbox())
            .subject(self.subject.into_string())
            .message_id(Some(message_id.as_str().to_owned()));
        if keep_bcc {
            builder = builder.keep_bcc();
        }
        if let Some(reply_to) = self.reply_to {
            builder = builder.reply_to(reply_to.into_mailbox());
        }
        for to in self.to {
            builder = builder.to(to.into_mailbox());
        }
        for cc in self.cc {
            builder = builder.cc(cc.into_mailbox());
        }
        for bcc in self.bcc {
            builder = builder.bcc(bcc.into_mailbox());
        }

        let body = body_part(self.body);
        let built = if self.attachments.is_empty() {
            match body {
                Part::Single(part) => builder.singlepart(part),
                Part::Multi(part) => builder.multipart(part),
            }
        } else {
            let mixed = MultiPart::mixed();
            let mut mixed = match body {
                Part::Single(part) => mixed.singlepart(part),
                Part::Multi(part) => mixed.multipart(part),
            };
            for attachment in self.attachments {
                let (filename, content_type, data) = attachment.into_parts();
                mixed = mixed.singlepart(
                    lettre::message::Attachment::new(filename).body(data, content_type),
                );
            }
            builder.multipart(mixed)
        };
        // Every input was checked above, so lettre refusing the message is
        // a bug on our side; still not worth retrying the same input.
        built.map_err(|e| invalid_payload(format!("the message could not be built: {e}")))
    }
}

/// A Message-ID derived from the task id, `<{id}@{domain of From}>`, so a
/// redelivered task produces the same Message-ID and receivers can drop the
/// duplicate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageId(String);

impl MessageId {
    pub fn for_task(task_id: &str, from: &EmailAddress) -> Self {
        Self(format!("<{}@{}>", safe_task_id(task_id), from.domain()))
    }

    /// With the angle brackets, as in the header.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
// A failing unwrap is how a test reports failure.
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn default_from() -> EmailAddress {
        EmailAddress::parse("default_from", "Warren <warren@example.org>").unwrap()
    }

    fn literal(value: Value) -> Email {
        let wire: SendEmail = serde_json::from_value(value).unwrap();
        let request = EmailRequest::parse(
            wire,
            &ParsePolicy {
                default_from: &default_from(),
                max_attachment_bytes: 16,
            },
        )
        .unwrap();
        request.render(&Templates::new("/nonexistent")).unwrap()
    }

    #[test]
    fn a_literal_email_parses_and_builds() {
        let email = literal(json!({
            "to": ["Ann <ann@x.org>", "bob@y.org"],
            "bcc": "hidden@z.org",
            "subject": "Hello",
            "text": "plain",
            "html": "<p>rich</p>",
        }));
        assert_eq!(email.from().domain(), "example.org");
        let message_id = email.message_id("task-1");
        let message = email.into_message(&message_id, false).unwrap();
        assert_eq!(message.envelope().to().len(), 3);
        let formatted = String::from_utf8(message.formatted()).unwrap();
        assert!(
            formatted.contains("Message-ID: <task-1@example.org>"),
            "{formatted}"
        );
        assert!(formatted.contains("multipart/alternative"), "{formatted}");
        assert!(!formatted.contains("hidden@z.org"), "{formatted}");
    }

    #[test]
    fn attachments_make_a_mixed_message() {
        let email = literal(json!({
            "to": "a@x.org", "subject": "s", "text": "t",
            "attachments": [{ "filename": "a.bin", "content_base64": "MDEyMzQ1Njc4OWFi" }],
        }));
        assert_eq!(email.attachments().len(), 1);
        let formatted = String::from_utf8(
            email
                .into_message(&MessageId("<x@y>".into()), false)
                .unwrap()
                .formatted(),
        )
        .unwrap();
        assert!(formatted.contains("multipart/mixed"), "{formatted}");
        assert!(
            formatted.contains("application/octet-stream"),
            "{formatted}"
        );
    }

    #[test]
    fn task_ids_are_sanitized_for_message_ids() {
        let from = EmailAddress::parse("from", "me@mail.example.org").unwrap();
        assert_eq!(
            MessageId::for_task("a/b", &from).as_str(),
            format!("<{}@mail.example.org>", safe_task_id("a/b"))
        );
    }
}
