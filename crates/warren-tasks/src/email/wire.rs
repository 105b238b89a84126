//! The `email.send` body as producers publish it.

use std::fmt;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use warren_core::Task;

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
    /// Consumed from the contract's queue, bound as the contract says.
    const OPTIONS: warren_core::TaskOptions = warren_core::TaskOptions::new()
        .queue(super::QUEUE.stem)
        .bindings(super::QUEUE.binding_keys);
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

#[cfg(test)]
// A failing unwrap is how a test reports failure.
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

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
}
