//! Mailboxes, and the control-character rule every header value follows.

use std::fmt;

use lettre::message::Mailbox;

use super::kinds::{HEADER_INJECTION, INVALID_ADDRESS};
use crate::ParseError;

/// Refuses CR, LF and every other control character in a value that ends up
/// in a header: a CR LF there would let the producer add headers (or
/// recipients) of its own. `what` opens the message; `field` is the field
/// at fault.
pub(super) fn refuse_control_chars(field: &str, what: &str, value: &str) -> Result<(), ParseError> {
    if value.chars().any(char::is_control) {
        return Err(ParseError::new(
            HEADER_INJECTION,
            field,
            format!("{what} contains a control character (CR, LF or similar), refused: {value:?}"),
        ));
    }
    Ok(())
}

/// One RFC 5322 mailbox, `a@x.org` or `Name <a@x.org>`, parsed with the
/// parser the email worker's message builder uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmailAddress(Mailbox);

impl EmailAddress {
    /// Parses `raw`; `field` names the task field in the error.
    pub fn parse(field: &str, raw: &str) -> Result<Self, ParseError> {
        refuse_control_chars(field, field, raw)?;
        let mailbox: Mailbox = raw.parse().map_err(|e| {
            ParseError::new(
                INVALID_ADDRESS,
                field,
                format!("{field} holds {raw:?}, which is not a valid mailbox ({e})"),
            )
        })?;
        // The raw check covers the display name already; this one guards
        // against a parser that unescapes something into a control char.
        if let Some(name) = &mailbox.name {
            refuse_control_chars(field, &format!("{field} display name"), name)?;
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

    pub fn into_mailbox(self) -> Mailbox {
        self.0
    }
}

impl TryFrom<&str> for EmailAddress {
    type Error = ParseError;

    fn try_from(raw: &str) -> Result<Self, Self::Error> {
        Self::parse("address", raw)
    }
}

impl fmt::Display for EmailAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}
