//! From the wire type to a parsed `email.send` request: every field
//! checked, the sender defaulted, the attachments decoded and capped.

use serde_json::{Map, Value};

use super::address::EmailAddress;
use super::kinds::{ATTACHMENT_TOO_LARGE, INVALID_PAYLOAD};
use super::parts::{Attachment, Body, Subject, TemplateName};
use super::wire::{AttachmentSpec, SendEmail};
use crate::ParseError;

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
    parts: EmailParts,
}

/// The parts of an [`EmailRequest`], each valid on its own, for the code
/// that renders and sends it.
#[derive(Debug, Clone, PartialEq)]
pub struct EmailParts {
    pub from: EmailAddress,
    pub reply_to: Option<EmailAddress>,
    pub to: Vec<EmailAddress>,
    pub cc: Vec<EmailAddress>,
    pub bcc: Vec<EmailAddress>,
    /// `None` only with a template, which may provide one.
    pub subject: Option<Subject>,
    pub content: Content,
    pub attachments: Vec<Attachment>,
}

fn invalid_payload(field: &str, message: &str) -> ParseError {
    ParseError::new(INVALID_PAYLOAD, field, message)
}

impl EmailRequest {
    /// Parses the wire type.
    pub fn parse(wire: SendEmail, policy: &ParsePolicy<'_>) -> Result<Self, ParseError> {
        if wire.to.is_empty() {
            return Err(invalid_payload(
                "to",
                "the email has no recipients: to is empty",
            ));
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
                    "template",
                    "template excludes text and html: give one or the other",
                ));
            }
            (Some(name), variables) => Content::Template {
                name: TemplateName::parse(&name)?,
                variables: variables.unwrap_or_default(),
            },
            (None, Some(_)) => {
                return Err(invalid_payload(
                    "variables",
                    "variables were given without a template",
                ));
            }
            (None, None) => {
                if subject.is_none() {
                    return Err(invalid_payload(
                        "subject",
                        "subject is required unless a template provides one",
                    ));
                }
                Content::Literal(Body::new(wire.text, wire.html)?)
            }
        };

        let attachments = parse_attachments(wire.attachments, policy.max_attachment_bytes)?;

        Ok(Self {
            parts: EmailParts {
                from,
                reply_to,
                to,
                cc,
                bcc,
                subject,
                content,
                attachments,
            },
        })
    }

    pub fn content(&self) -> &Content {
        &self.parts.content
    }

    pub fn from(&self) -> &EmailAddress {
        &self.parts.from
    }

    pub fn attachments(&self) -> &[Attachment] {
        &self.parts.attachments
    }

    /// Its parts, to render and send.
    pub fn into_parts(self) -> EmailParts {
        self.parts
    }
}

/// A list of addresses; the error names the list (`cc`), as a client sent
/// it either as one string or as an array.
fn parse_addresses(field: &str, raw: &[String]) -> Result<Vec<EmailAddress>, ParseError> {
    raw.iter()
        .map(|one| EmailAddress::parse(field, one))
        .collect()
}

fn parse_attachments(
    specs: Vec<AttachmentSpec>,
    max_bytes: usize,
) -> Result<Vec<Attachment>, ParseError> {
    let too_large = |total: usize| {
        ParseError::new(
            ATTACHMENT_TOO_LARGE,
            "attachments",
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

#[cfg(test)]
// A failing unwrap is how a test reports failure.
#[allow(clippy::unwrap_used)]
mod tests {
    use base64::Engine as _;
    use serde_json::json;

    use super::*;

    fn default_from() -> EmailAddress {
        EmailAddress::parse("default_from", "Warren <warren@example.org>").unwrap()
    }

    fn parse(value: Value) -> Result<EmailRequest, ParseError> {
        let wire: SendEmail = serde_json::from_value(value).unwrap();
        EmailRequest::parse(
            wire,
            &ParsePolicy {
                default_from: &default_from(),
                max_attachment_bytes: 16,
            },
        )
    }

    #[test]
    fn a_literal_email_parses_with_the_default_sender() {
        let request = parse(json!({
            "to": ["Ann <ann@x.org>", "bob@y.org"],
            "bcc": "hidden@z.org",
            "subject": " Hello ",
            "text": "plain",
            "html": "<p>rich</p>",
        }))
        .unwrap();
        assert_eq!(request.from().domain(), "example.org");
        let parts = request.into_parts();
        assert_eq!((parts.to.len(), parts.bcc.len()), (2, 1));
        assert_eq!(
            parts.subject.map(Subject::into_string).as_deref(),
            Some("Hello")
        );
        assert!(matches!(parts.content, Content::Literal(b) if b.text() == Some("plain")));
    }

    #[test]
    fn header_injection_in_the_subject_is_refused() {
        let err =
            parse(json!({ "to": "a@x.org", "subject": "Hi\r\nBcc: evil@x.org", "text": "t" }))
                .unwrap_err();
        assert_eq!(
            (err.kind, err.field.as_str()),
            ("header_injection", "subject")
        );
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
        assert_eq!((err.kind, err.field.as_str()), ("header_injection", "to"));
        assert!(err.message.starts_with("to "), "{}", err.message);
        let from = parse(
            json!({ "to": "a@x.org", "from": "Me\n <me@x.org>", "subject": "s", "text": "t" }),
        )
        .unwrap_err();
        assert_eq!(
            (from.kind, from.field.as_str()),
            ("header_injection", "from")
        );
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
        assert_eq!(err.field, "attachments[0].filename");
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
        assert_eq!(err.field, "attachments[0].content_type");
    }

    #[test]
    fn an_invalid_address_names_the_field_and_the_value() {
        let err = parse(json!({ "to": "a@x.org", "cc": ["ok@x.org", "not an address"], "subject": "s", "text": "t" }))
            .unwrap_err();
        assert_eq!((err.kind, err.field.as_str()), ("invalid_address", "cc"));
        assert!(err.message.contains("cc"), "{}", err.message);
        assert!(err.message.contains("not an address"), "{}", err.message);
    }

    #[test]
    fn payload_shape_errors_are_invalid_payload_and_name_a_field() {
        let cases = [
            (json!({ "to": [], "subject": "s", "text": "t" }), "to"),
            (json!({ "to": "a@x.org", "subject": "s" }), "text"),
            (json!({ "to": "a@x.org", "text": "t" }), "subject"),
            (
                json!({ "to": "a@x.org", "subject": "  ", "text": "t" }),
                "subject",
            ),
            (
                json!({ "to": "a@x.org", "template": "welcome", "text": "t" }),
                "template",
            ),
            (
                json!({ "to": "a@x.org", "subject": "s", "text": "t", "variables": {} }),
                "variables",
            ),
            (json!({ "to": "a@x.org", "template": "../etc" }), "template"),
        ];
        for (case, field) in cases {
            let err = parse(case.clone()).unwrap_err();
            assert_eq!(
                (err.kind, err.field.as_str()),
                ("invalid_payload", field),
                "{case}: {err}"
            );
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
        assert_eq!(one.attachments().len(), 1);
        assert_eq!(one.attachments()[0].len(), 12);
        assert_eq!(
            one.attachments()[0].content_type(),
            &lettre::message::header::ContentType::parse("application/octet-stream").unwrap()
        );

        let err = parse(json!({
            "to": "a@x.org", "subject": "s", "text": "t",
            "attachments": [
                { "filename": "a.bin", "content_base64": twelve },
                { "filename": "b.bin", "content_base64": twelve },
            ],
        }))
        .unwrap_err();
        assert_eq!(
            (err.kind, err.field.as_str()),
            ("attachment_too_large", "attachments")
        );
    }

    #[test]
    fn bad_base64_and_bad_content_types_are_invalid_payload() {
        let err = parse(json!({
            "to": "a@x.org", "subject": "s", "text": "t",
            "attachments": [{ "filename": "a", "content_base64": "!!!" }],
        }))
        .unwrap_err();
        assert_eq!(
            (err.kind, err.field.as_str()),
            ("invalid_payload", "attachments[0].content_base64")
        );
        let err = parse(json!({
            "to": "a@x.org", "subject": "s", "text": "t",
            "attachments": [{ "filename": "a", "content_type": "not a type", "content_base64": "" }],
        }))
        .unwrap_err();
        assert_eq!(
            (err.kind, err.field.as_str()),
            ("invalid_payload", "attachments[0].content_type")
        );
    }

    #[test]
    fn template_names_that_could_leave_the_directory_are_refused() {
        for name in [
            "../secret",
            "..",
            ".",
            "a/b",
            "a\\b",
            "",
            "we lcome",
            "wélcome",
            "x.html",
        ] {
            let err = TemplateName::parse(name).unwrap_err();
            assert_eq!(
                (err.kind, err.field.as_str()),
                ("invalid_payload", "template"),
                "{name:?}"
            );
        }
        assert_eq!(
            TemplateName::parse("Welcome_v2-b").unwrap().as_str(),
            "Welcome_v2-b"
        );
    }
}
