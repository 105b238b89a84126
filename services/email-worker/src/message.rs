//! The `email.send` task: the wire type producers publish, and the domain
//! types it is parsed into before anything is sent.
//!
//! Parse, don't validate: [`SendEmail`] is exactly what arrived (serde has
//! already refused unknown fields); [`EmailRequest::parse`] turns it into
//! values that cannot be wrong ([`EmailAddress`], [`Subject`], [`Body`],
//! [`Attachment`]), each with private fields, or into a permanent
//! [`TaskError`] that says which field was bad. Once the template (if any) is
//! rendered, the request becomes an [`Email`], which builds a lettre
//! [`Message`] without further checks.

use std::fmt;

use base64::Engine as _;
use lettre::Message;
use lettre::message::header::ContentType;
use lettre::message::{Mailbox, MultiPart, SinglePart};
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use warren::task::safe_task_id;
use warren::{Task, TaskError};

use crate::template::{Rendered, TemplateName, Templates};

/// The body of an `email.send` task, as published.
///
/// `to`, `cc` and `bcc` take a single mailbox string or an array of them.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SendEmail {
    /// One or more RFC 5322 mailboxes: `a@x.org` or `Name <a@x.org>`.
    #[serde(deserialize_with = "one_or_many")]
    #[cfg_attr(feature = "openapi", schema(schema_with = openapi::recipients))]
    pub to: Vec<String>,
    #[serde(
        default,
        deserialize_with = "one_or_many",
        skip_serializing_if = "Vec::is_empty"
    )]
    #[cfg_attr(feature = "openapi", schema(schema_with = openapi::recipients))]
    pub cc: Vec<String>,
    #[serde(
        default,
        deserialize_with = "one_or_many",
        skip_serializing_if = "Vec::is_empty"
    )]
    #[cfg_attr(feature = "openapi", schema(schema_with = openapi::recipients))]
    pub bcc: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub html: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    /// The template's variables; only with `template`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub variables: Option<Map<String, Value>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<AttachmentSpec>,
}

impl Task for SendEmail {
    const TYPE: &'static str = "email.send";
}

/// One attachment, as published.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct AttachmentSpec {
    pub filename: String,
    /// Defaults to `application/octet-stream`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    pub content_base64: String,
}

/// OpenAPI schemas the derive cannot infer (the `openapi` feature).
#[cfg(feature = "openapi")]
mod openapi {
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, OneOfBuilder, Schema, Type};

    /// `to`, `cc`, `bcc`: one mailbox, or an array of them.
    pub fn recipients() -> Schema {
        let mailbox = || {
            ObjectBuilder::new()
                .schema_type(Type::String)
                .description(Some("An RFC 5322 mailbox: `a@x.org` or `Name <a@x.org>`."))
        };
        Schema::OneOf(
            OneOfBuilder::new()
                .item(mailbox())
                .item(ArrayBuilder::new().items(mailbox()))
                .description(Some("One mailbox, or an array of mailboxes."))
                .build(),
        )
    }
}

/// Accepts `"a@x.org"`, `["a@x.org", "b@x.org"]` or `null`.
fn one_or_many<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    struct OneOrMany;

    impl<'de> Visitor<'de> for OneOrMany {
        type Value = Vec<String>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a string or an array of strings")
        }

        fn visit_str<E: de::Error>(self, value: &str) -> Result<Self::Value, E> {
            Ok(vec![value.to_owned()])
        }

        fn visit_string<E: de::Error>(self, value: String) -> Result<Self::Value, E> {
            Ok(vec![value])
        }

        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(Vec::new())
        }

        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(Vec::new())
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            // The hint comes from the input; cap it so a hostile length
            // cannot make us allocate up front.
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
            while let Some(item) = seq.next_element::<String>()? {
                out.push(item);
            }
            Ok(out)
        }
    }

    deserializer.deserialize_any(OneOrMany)
}

fn invalid_payload(message: impl fmt::Display) -> TaskError {
    TaskError::permanent("invalid_payload", message)
}

/// Refuses CR, LF and every other control character in a value that ends up
/// in a header: a CR LF there would let the producer add headers (or
/// recipients) of its own.
fn refuse_control_chars(field: &str, value: &str) -> Result<(), TaskError> {
    if value.chars().any(char::is_control) {
        return Err(TaskError::permanent(
            "header_injection",
            format!("{field} contains a control character (CR, LF or similar), refused: {value:?}"),
        ));
    }
    Ok(())
}

/// One RFC 5322 mailbox, `a@x.org` or `Name <a@x.org>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmailAddress(Mailbox);

impl EmailAddress {
    /// Parses `raw`; `field` names the task field in the error.
    pub fn parse(field: &str, raw: &str) -> Result<Self, TaskError> {
        refuse_control_chars(field, raw)?;
        let mailbox: Mailbox = raw.parse().map_err(|e| {
            TaskError::permanent(
                "invalid_address",
                format!("{field} holds {raw:?}, which is not a valid mailbox ({e})"),
            )
        })?;
        // The raw check covers the display name already; this one guards
        // against a parser that unescapes something into a control char.
        if let Some(name) = &mailbox.name {
            refuse_control_chars(&format!("{field} display name"), name)?;
        }
        Ok(Self(mailbox))
    }

    /// The domain of the address, e.g. `x.org`.
    pub fn domain(&self) -> &str {
        self.0.email.domain()
    }

    pub fn as_mailbox(&self) -> &Mailbox {
        &self.0
    }

    fn into_mailbox(self) -> Mailbox {
        self.0
    }
}

impl TryFrom<&str> for EmailAddress {
    type Error = TaskError;

    fn try_from(raw: &str) -> Result<Self, Self::Error> {
        Self::parse("address", raw)
    }
}

impl fmt::Display for EmailAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A subject line: not blank, no control characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject(String);

impl Subject {
    /// Parses `raw` (trimmed); `field` names its origin in the error.
    pub fn parse(field: &str, raw: &str) -> Result<Self, TaskError> {
        let trimmed = raw.trim();
        refuse_control_chars(field, trimmed)?;
        if trimmed.is_empty() {
            return Err(invalid_payload(format!("{field} is blank")));
        }
        Ok(Self(trimmed.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The text and/or HTML body: at least one of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Body {
    text: Option<String>,
    html: Option<String>,
}

impl Body {
    pub fn new(text: Option<String>, html: Option<String>) -> Result<Self, TaskError> {
        if text.is_none() && html.is_none() {
            return Err(invalid_payload(
                "the email has no body: give text, html, or a template",
            ));
        }
        Ok(Self { text, html })
    }

    pub fn text(&self) -> Option<&str> {
        self.text.as_deref()
    }

    pub fn html(&self) -> Option<&str> {
        self.html.as_deref()
    }

    fn into_part(self) -> Part {
        match (self.text, self.html) {
            (Some(text), Some(html)) => Part::Multi(MultiPart::alternative_plain_html(text, html)),
            (Some(text), None) => Part::Single(SinglePart::plain(text)),
            (None, Some(html)) => Part::Single(SinglePart::html(html)),
            // `Body::new` refuses an empty body; an empty text part keeps this
            // total without a panic.
            (None, None) => Part::Single(SinglePart::plain(String::new())),
        }
    }
}

enum Part {
    Single(SinglePart),
    Multi(MultiPart),
}

/// A decoded attachment with a safe file name and a parsed content type.
#[derive(Clone, PartialEq, Eq)]
pub struct Attachment {
    filename: String,
    content_type: ContentType,
    data: Vec<u8>,
}

impl Attachment {
    /// Decodes one attachment; `index` names it in errors.
    pub fn parse(index: usize, spec: AttachmentSpec) -> Result<Self, TaskError> {
        let field = format!("attachments[{index}]");
        refuse_control_chars(&format!("{field}.filename"), &spec.filename)?;
        if spec.filename.trim().is_empty() {
            return Err(invalid_payload(format!("{field}.filename is blank")));
        }
        let content_type = match spec.content_type.as_deref() {
            None => ContentType::parse("application/octet-stream"),
            Some(raw) => {
                refuse_control_chars(&format!("{field}.content_type"), raw)?;
                ContentType::parse(raw)
            }
        }
        .map_err(|e| {
            invalid_payload(format!(
                "{field}.content_type {:?} is not a MIME type ({e})",
                spec.content_type.as_deref().unwrap_or_default()
            ))
        })?;
        // Producers may wrap base64 at 76 columns as MIME does; the line
        // breaks carry no data.
        let compact: String = spec
            .content_base64
            .chars()
            .filter(|c| !c.is_ascii_whitespace())
            .collect();
        let data = base64::engine::general_purpose::STANDARD
            .decode(compact.as_bytes())
            .map_err(|e| invalid_payload(format!("{field}.content_base64 is not base64 ({e})")))?;
        Ok(Self {
            filename: spec.filename,
            content_type,
            data,
        })
    }

    pub fn filename(&self) -> &str {
        &self.filename
    }

    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

impl fmt::Debug for Attachment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The size, not the bytes: an attachment can be megabytes.
        f.debug_struct("Attachment")
            .field("filename", &self.filename)
            .field("content_type", &self.content_type)
            .field("len", &self.data.len())
            .finish()
    }
}

/// What the email's body comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum Content {
    /// `text` and/or `html` given in the task.
    Literal(Body),
    /// A template rendered with the task's variables.
    Template {
        name: TemplateName,
        variables: Map<String, Value>,
    },
}

/// What parsing needs besides the task itself.
#[derive(Debug, Clone, Copy)]
pub struct ParsePolicy<'a> {
    /// Used when the task names no sender.
    pub default_from: &'a EmailAddress,
    /// Cap on the total decoded size of the attachments.
    pub max_attachment_bytes: usize,
}

/// A parsed `email.send` task whose body may still need rendering.
#[derive(Debug, Clone, PartialEq)]
pub struct EmailRequest {
    from: EmailAddress,
    reply_to: Option<EmailAddress>,
    to: Vec<EmailAddress>,
    cc: Vec<EmailAddress>,
    bcc: Vec<EmailAddress>,
    subject: Option<Subject>,
    content: Content,
    attachments: Vec<Attachment>,
}

impl EmailRequest {
    /// Parses the wire type; every error is permanent.
    pub fn parse(wire: SendEmail, policy: &ParsePolicy<'_>) -> Result<Self, TaskError> {
        if wire.to.is_empty() {
            return Err(invalid_payload("the email has no recipients: to is empty"));
        }
        let to = parse_addresses("to", &wire.to)?;
        let cc = parse_addresses("cc", &wire.cc)?;
        let bcc = parse_addresses("bcc", &wire.bcc)?;
        let from = match wire.from.as_deref() {
            Some(raw) => EmailAddress::parse("from", raw)?,
            None => policy.default_from.clone(),
        };
        let reply_to = wire
            .reply_to
            .as_deref()
            .map(|raw| EmailAddress::parse("reply_to", raw))
            .transpose()?;
        let subject = wire
            .subject
            .as_deref()
            .map(|raw| Subject::parse("subject", raw))
            .transpose()?;

        let content = match (wire.template, wire.variables) {
            (Some(_), _) if wire.text.is_some() || wire.html.is_some() => {
                return Err(invalid_payload(
                    "template excludes text and html: give one or the other",
                ));
            }
            (Some(name), variables) => Content::Template {
                name: TemplateName::parse(&name)?,
                variables: variables.unwrap_or_default(),
            },
            (None, Some(_)) => {
                return Err(invalid_payload("variables were given without a template"));
            }
            (None, None) => {
                if subject.is_none() {
                    return Err(invalid_payload(
                        "subject is required unless a template provides one",
                    ));
                }
                Content::Literal(Body::new(wire.text, wire.html)?)
            }
        };

        let attachments = parse_attachments(wire.attachments, policy.max_attachment_bytes)?;

        Ok(Self {
            from,
            reply_to,
            to,
            cc,
            bcc,
            subject,
            content,
            attachments,
        })
    }

    pub fn content(&self) -> &Content {
        &self.content
    }

    /// Renders the template, if any, and completes the email. A subject in
    /// the task wins over the template's `subject.txt`.
    pub fn render(self, templates: &Templates) -> Result<Email, TaskError> {
        let (subject, body) = match self.content {
            Content::Literal(body) => {
                let subject = self.subject.ok_or_else(|| {
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
                let subject = match (self.subject, rendered_subject) {
                    (Some(subject), _) => subject,
                    (None, Some(raw)) => {
                        Subject::parse(&format!("subject rendered from template {name}"), &raw)?
                    }
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
            from: self.from,
            reply_to: self.reply_to,
            to: self.to,
            cc: self.cc,
            bcc: self.bcc,
            subject,
            body,
            attachments: self.attachments,
        })
    }
}

fn parse_addresses(field: &str, raw: &[String]) -> Result<Vec<EmailAddress>, TaskError> {
    raw.iter()
        .map(|one| EmailAddress::parse(field, one))
        .collect()
}

fn parse_attachments(
    specs: Vec<AttachmentSpec>,
    max_bytes: usize,
) -> Result<Vec<Attachment>, TaskError> {
    let too_large = |total: usize| {
        TaskError::permanent(
            "attachment_too_large",
            format!(
                "the attachments decode to at least {total} bytes, more than the cap of {max_bytes}"
            ),
        )
    };
    let mut total = 0usize;
    let mut out = Vec::with_capacity(specs.len());
    for (index, spec) in specs.into_iter().enumerate() {
        // Refuse before decoding when the encoded length alone says the cap
        // is blown: no point allocating for a payload we will refuse. Four
        // base64 characters make three bytes, minus at most two of padding,
        // so this lower bound never refuses an attachment that would fit.
        let encoded = spec
            .content_base64
            .bytes()
            .filter(|b| !b.is_ascii_whitespace())
            .count();
        let at_least = total.saturating_add((encoded / 4 * 3).saturating_sub(2));
        if at_least > max_bytes {
            return Err(too_large(at_least));
        }
        let attachment = Attachment::parse(index, spec)?;
        total = total.saturating_add(attachment.len());
        if total > max_bytes {
            return Err(too_large(total));
        }
        out.push(attachment);
    }
    Ok(out)
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
            .subject(self.subject.0)
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

        let body = self.body.into_part();
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
                mixed = mixed.singlepart(
                    lettre::message::Attachment::new(attachment.filename)
                        .body(attachment.data, attachment.content_type),
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
    use serde_json::json;

    fn default_from() -> EmailAddress {
        EmailAddress::parse("default_from", "Warren <warren@example.org>").unwrap()
    }

    fn parse(value: Value) -> Result<EmailRequest, TaskError> {
        let wire: SendEmail = serde_json::from_value(value).unwrap();
        EmailRequest::parse(
            wire,
            &ParsePolicy {
                default_from: &default_from(),
                max_attachment_bytes: 16,
            },
        )
    }

    fn literal(request: EmailRequest) -> Email {
        let templates = Templates::new("/nonexistent");
        request.render(&templates).unwrap()
    }

    #[test]
    fn to_accepts_a_string_or_an_array() {
        let one: SendEmail = serde_json::from_value(json!({ "to": "a@x.org" })).unwrap();
        assert_eq!(one.to, vec!["a@x.org"]);
        let many: SendEmail =
            serde_json::from_value(json!({ "to": ["a@x.org", "B <b@x.org>"], "cc": "c@x.org" }))
                .unwrap();
        assert_eq!(many.to, vec!["a@x.org", "B <b@x.org>"]);
        assert_eq!(many.cc, vec!["c@x.org"]);
        assert!(many.bcc.is_empty());
        let wrong = serde_json::from_value::<SendEmail>(json!({ "to": 42 }));
        assert!(
            wrong
                .unwrap_err()
                .to_string()
                .contains("a string or an array of strings")
        );
    }

    #[test]
    fn unknown_and_missing_fields_are_rejected() {
        let unknown =
            serde_json::from_value::<SendEmail>(json!({ "to": "a@x.org", "bc": "b@x.org" }));
        assert!(
            unknown
                .unwrap_err()
                .to_string()
                .contains("unknown field `bc`")
        );
        let unknown_in_attachment = serde_json::from_value::<SendEmail>(json!({
            "to": "a@x.org",
            "attachments": [{ "filename": "a", "content_base64": "", "size": 1 }],
        }));
        assert!(unknown_in_attachment.is_err());
        let missing = serde_json::from_value::<SendEmail>(json!({ "subject": "hi" }));
        assert!(
            missing
                .unwrap_err()
                .to_string()
                .contains("missing field `to`")
        );
    }

    #[test]
    fn the_task_type_is_email_send() {
        assert_eq!(<SendEmail as Task>::TYPE, "email.send");
    }

    #[test]
    fn a_literal_email_parses_and_builds() {
        let email = literal(
            parse(json!({
                "to": ["Ann <ann@x.org>", "bob@y.org"],
                "bcc": "hidden@z.org",
                "subject": "Hello",
                "text": "plain",
                "html": "<p>rich</p>",
            }))
            .unwrap(),
        );
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
    fn header_injection_in_the_subject_is_refused() {
        let err =
            parse(json!({ "to": "a@x.org", "subject": "Hi\r\nBcc: evil@x.org", "text": "t" }))
                .unwrap_err();
        assert_eq!(err.kind, "header_injection");
        assert!(err.is_permanent());
        assert!(err.message.contains("subject"), "{}", err.message);
        let tab = parse(json!({ "to": "a@x.org", "subject": "Hi\u{7}", "text": "t" })).unwrap_err();
        assert_eq!(tab.kind, "header_injection");
    }

    #[test]
    fn header_injection_in_a_display_name_is_refused() {
        let err = parse(json!({
            "to": "\"Evil\r\nBcc: victim@x.org\" <a@x.org>",
            "subject": "s",
            "text": "t",
        }))
        .unwrap_err();
        assert_eq!(err.kind, "header_injection");
        assert!(err.message.starts_with("to "), "{}", err.message);
        let from = parse(
            json!({ "to": "a@x.org", "from": "Me\n <me@x.org>", "subject": "s", "text": "t" }),
        )
        .unwrap_err();
        assert_eq!(from.kind, "header_injection");
        assert!(from.message.starts_with("from "), "{}", from.message);
    }

    #[test]
    fn header_injection_in_attachment_headers_is_refused() {
        let err = parse(json!({
            "to": "a@x.org", "subject": "s", "text": "t",
            "attachments": [{ "filename": "a.txt\r\nX-Evil: 1", "content_base64": "aGk=" }],
        }))
        .unwrap_err();
        assert_eq!(err.kind, "header_injection");
        assert!(
            err.message.contains("attachments[0].filename"),
            "{}",
            err.message
        );
        let err = parse(json!({
            "to": "a@x.org", "subject": "s", "text": "t",
            "attachments": [{ "filename": "a.txt", "content_type": "text/plain\nX-Evil: 1", "content_base64": "aGk=" }],
        }))
        .unwrap_err();
        assert_eq!(err.kind, "header_injection");
        assert!(
            err.message.contains("attachments[0].content_type"),
            "{}",
            err.message
        );
    }

    #[test]
    fn an_invalid_address_names_the_field_and_the_value() {
        let err = parse(json!({ "to": "a@x.org", "cc": ["ok@x.org", "not an address"], "subject": "s", "text": "t" }))
            .unwrap_err();
        assert_eq!(err.kind, "invalid_address");
        assert!(err.is_permanent());
        assert!(err.message.contains("cc"), "{}", err.message);
        assert!(err.message.contains("not an address"), "{}", err.message);
    }

    #[test]
    fn payload_shape_errors_are_invalid_payload() {
        let cases = [
            json!({ "to": [], "subject": "s", "text": "t" }),
            json!({ "to": "a@x.org", "subject": "s" }),
            json!({ "to": "a@x.org", "text": "t" }),
            json!({ "to": "a@x.org", "subject": "  ", "text": "t" }),
            json!({ "to": "a@x.org", "template": "welcome", "text": "t" }),
            json!({ "to": "a@x.org", "subject": "s", "text": "t", "variables": {} }),
            json!({ "to": "a@x.org", "template": "../etc" }),
        ];
        for case in cases {
            let err = parse(case.clone()).unwrap_err();
            assert_eq!(err.kind, "invalid_payload", "{case}: {err}");
            assert!(err.is_permanent());
        }
    }

    #[test]
    fn attachments_are_capped_by_their_decoded_size() {
        // 12 bytes each; the cap in `parse` is 16.
        let twelve = base64::engine::general_purpose::STANDARD.encode(b"0123456789ab");
        let one = parse(json!({
            "to": "a@x.org", "subject": "s", "text": "t",
            "attachments": [{ "filename": "a.bin", "content_base64": twelve }],
        }))
        .unwrap();
        let email = literal(one);
        assert_eq!(email.attachments().len(), 1);
        assert_eq!(email.attachments()[0].len(), 12);
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

        let err = parse(json!({
            "to": "a@x.org", "subject": "s", "text": "t",
            "attachments": [
                { "filename": "a.bin", "content_base64": twelve },
                { "filename": "b.bin", "content_base64": twelve },
            ],
        }))
        .unwrap_err();
        assert_eq!(err.kind, "attachment_too_large");
        assert!(err.is_permanent());
    }

    #[test]
    fn bad_base64_and_bad_content_types_are_invalid_payload() {
        let err = parse(json!({
            "to": "a@x.org", "subject": "s", "text": "t",
            "attachments": [{ "filename": "a", "content_base64": "!!!" }],
        }))
        .unwrap_err();
        assert_eq!(err.kind, "invalid_payload");
        let err = parse(json!({
            "to": "a@x.org", "subject": "s", "text": "t",
            "attachments": [{ "filename": "a", "content_type": "not a type", "content_base64": "" }],
        }))
        .unwrap_err();
        assert_eq!(err.kind, "invalid_payload");
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
