//! The parts of an email that parsing produces: subject, body, attachments
//! and template name, each valid once it exists.

use std::fmt;

use base64::Engine as _;
use lettre::message::header::ContentType;

use super::address::refuse_control_chars;
use super::kinds::INVALID_PAYLOAD;
use super::wire::AttachmentSpec;
use crate::ParseError;

fn invalid_payload(field: &str, message: impl fmt::Display) -> ParseError {
    ParseError::new(INVALID_PAYLOAD, field, message)
}

/// A subject line: not blank, no control characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject(String);

impl Subject {
    /// Parses `raw` (trimmed); `field` names its origin in the error.
    pub fn parse(field: &str, raw: &str) -> Result<Self, ParseError> {
        Self::parse_as(field, field, raw)
    }

    /// Parses a subject a template rendered: the task's `subject` field,
    /// rendered from template `template`.
    pub fn rendered(template: &TemplateName, raw: &str) -> Result<Self, ParseError> {
        Self::parse_as(
            "subject",
            &format!("subject rendered from template {template}"),
            raw,
        )
    }

    fn parse_as(field: &str, what: &str, raw: &str) -> Result<Self, ParseError> {
        let trimmed = raw.trim();
        refuse_control_chars(field, what, trimmed)?;
        if trimmed.is_empty() {
            return Err(invalid_payload(field, format!("{what} is blank")));
        }
        Ok(Self(trimmed.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

/// The text and/or HTML body: at least one of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Body {
    text: Option<String>,
    html: Option<String>,
}

impl Body {
    pub fn new(text: Option<String>, html: Option<String>) -> Result<Self, ParseError> {
        if text.is_none() && html.is_none() {
            return Err(invalid_payload(
                "text",
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

    /// The text and the HTML; at least one is `Some`.
    pub fn into_parts(self) -> (Option<String>, Option<String>) {
        (self.text, self.html)
    }
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
    pub fn parse(index: usize, spec: AttachmentSpec) -> Result<Self, ParseError> {
        let field = format!("attachments[{index}]");
        let filename_field = format!("{field}.filename");
        refuse_control_chars(&filename_field, &filename_field, &spec.filename)?;
        if spec.filename.trim().is_empty() {
            return Err(invalid_payload(
                &filename_field,
                format!("{filename_field} is blank"),
            ));
        }
        let type_field = format!("{field}.content_type");
        let content_type = match spec.content_type.as_deref() {
            None => ContentType::parse("application/octet-stream"),
            Some(raw) => {
                refuse_control_chars(&type_field, &type_field, raw)?;
                ContentType::parse(raw)
            }
        }
        .map_err(|e| {
            invalid_payload(
                &type_field,
                format!(
                    "{type_field} {:?} is not a MIME type ({e})",
                    spec.content_type.as_deref().unwrap_or_default()
                ),
            )
        })?;
        // Producers may wrap base64 at 76 columns as MIME does; the line
        // breaks carry no data.
        let compact: String = spec
            .content_base64
            .chars()
            .filter(|c| !c.is_ascii_whitespace())
            .collect();
        let data_field = format!("{field}.content_base64");
        let data = base64::engine::general_purpose::STANDARD
            .decode(compact.as_bytes())
            .map_err(|e| {
                invalid_payload(&data_field, format!("{data_field} is not base64 ({e})"))
            })?;
        Ok(Self {
            filename: spec.filename,
            content_type,
            data,
        })
    }

    pub fn filename(&self) -> &str {
        &self.filename
    }

    pub fn content_type(&self) -> &ContentType {
        &self.content_type
    }

    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The file name, the content type and the decoded bytes.
    pub fn into_parts(self) -> (String, ContentType, Vec<u8>) {
        (self.filename, self.content_type, self.data)
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

/// Longest accepted template name; real names are short, and the cap keeps
/// error messages and paths bounded.
const MAX_TEMPLATE_NAME_LEN: usize = 100;

/// A template name made of `[A-Za-z0-9_-]`: safe as one path segment, so a
/// task cannot name `../../etc/passwd`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateName(String);

impl TemplateName {
    /// Parses a name from a task; a bad name is `invalid_payload`.
    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        let valid = !raw.is_empty()
            && raw.len() <= MAX_TEMPLATE_NAME_LEN
            && raw
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !valid {
            return Err(invalid_payload(
                "template",
                format!(
                    "template {raw:?} is not a valid template name ([A-Za-z0-9_-]+, at most {MAX_TEMPLATE_NAME_LEN} characters)"
                ),
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<&str> for TemplateName {
    type Error = ParseError;

    fn try_from(raw: &str) -> Result<Self, Self::Error> {
        Self::parse(raw)
    }
}

impl fmt::Display for TemplateName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
