//! Fuzzing the task parsers with proptest (docs/development.md,
//! "Fuzzing"): bodies a producer could publish, from arbitrary bytes to
//! near-valid JSON with hostile strings in every field, go through the
//! same steps as in the workers (`serde_json` into the wire struct, then
//! `parse`). Nothing may panic; whatever parses keeps the promises of the
//! domain types (no header injection, keys inside the store's root, the
//! size limits); whatever is refused names a field.
//!
//! Cases per property: `PROPTEST_CASES` (256 by default). A failure is
//! shrunk and saved under `proptest-regressions/`, which is committed and
//! replayed first on every run.

use proptest::prelude::*;
use serde_json::{Map, Value, json};

use crate::ParseError;
use crate::email::{EmailAddress, EmailRequest, ParsePolicy, SendEmail};
use crate::image::{
    Limits, MAX_OUTPUTS, PrefixTemplate, Rgb, Source, SpecPolicy, ThumbnailSpec, ThumbnailTask,
};

/// Strings a hostile or careless producer sends: printable text, CR/LF
/// and other controls, quotes, angle brackets, `@`, path tricks, long runs.
fn hostile() -> impl Strategy<Value = String> {
    prop_oneof![
        "\\PC{0,40}",
        "[ -~]{0,40}",
        "[a-z]{1,8}@[a-z]{1,8}\\.(org|com)",
        "\"?[a-zA-Z \\r\\n\\t\\x07\"<>,;:@\\\\]{0,16}\"? ?<[a-z\\r\\n.]{1,8}@[a-z.\\r\\n]{1,10}>",
        "[a-z./\\\\]{0,6}(\\.\\.|//|/\\.|\\x00|\\r\\n)[a-z./]{0,6}",
        "[=A-Za-z0-9+/ \\r\\n]{0,40}",
        ".{0,3}".prop_map(|s| s.repeat(400)),
    ]
}

fn maybe<T: std::fmt::Debug + Clone + 'static>(
    s: impl Strategy<Value = T> + 'static,
) -> impl Strategy<Value = Option<T>> {
    proptest::option::weighted(0.6, s)
}

/// A field's value: usually a string, sometimes another JSON type.
fn field() -> impl Strategy<Value = Value> {
    prop_oneof![
        6 => hostile().prop_map(Value::String),
        1 => proptest::collection::vec(hostile().prop_map(Value::String), 0..4).prop_map(Value::Array),
        1 => any::<i64>().prop_map(Value::from),
        1 => Just(Value::Null),
        1 => any::<bool>().prop_map(Value::Bool),
    ]
}

/// An `email.send` body, near-valid more often than not.
fn email_body() -> impl Strategy<Value = Value> {
    let attachment = (field(), maybe(field()), field(), any::<bool>()).prop_map(
        |(filename, content_type, content, extra)| {
            let mut a = Map::new();
            a.insert("filename".into(), filename);
            if let Some(t) = content_type {
                a.insert("content_type".into(), t);
            }
            a.insert("content_base64".into(), content);
            if extra {
                a.insert("extra".into(), json!(1));
            }
            Value::Object(a)
        },
    );
    (
        field(),
        maybe(field()),
        maybe(field()),
        maybe(field()),
        maybe(field()),
        maybe(field()),
        maybe(field()),
        maybe(field()),
        maybe(field()),
        maybe(proptest::collection::vec(attachment, 0..3)),
    )
        .prop_map(
            |(to, cc, bcc, from, reply_to, subject, text, html, template, attachments)| {
                let mut m = Map::new();
                m.insert("to".into(), to);
                for (k, v) in [
                    ("cc", cc),
                    ("bcc", bcc),
                    ("from", from),
                    ("reply_to", reply_to),
                    ("subject", subject),
                    ("text", text),
                    ("html", html),
                    ("template", template),
                ] {
                    if let Some(v) = v {
                        m.insert(k.into(), v);
                    }
                }
                if let Some(a) = attachments {
                    m.insert("attachments".into(), Value::Array(a));
                }
                Value::Object(m)
            },
        )
}

const MAX_ATTACHMENT_BYTES: usize = 64;

fn parse_email(bytes: &[u8]) -> Option<Result<EmailRequest, ParseError>> {
    let wire: SendEmail = serde_json::from_slice(bytes).ok()?;
    let default_from = EmailAddress::parse("default_from", "Warren <warren@example.org>")
        .unwrap_or_else(|e| panic!("the default sender parses: {e}"));
    Some(EmailRequest::parse(
        wire,
        &ParsePolicy {
            default_from: &default_from,
            max_attachment_bytes: MAX_ATTACHMENT_BYTES,
        },
    ))
}

fn no_line_breaks(what: &str, s: &str) -> Result<(), TestCaseError> {
    prop_assert!(
        !s.contains(['\r', '\n']),
        "{} carries a line break: {:?}",
        what,
        s
    );
    Ok(())
}

/// What a parsed email promises, whatever came in.
fn check_email(request: EmailRequest) -> Result<(), TestCaseError> {
    let parts = request.into_parts();
    prop_assert!(!parts.to.is_empty(), "no recipient");
    let addresses = parts
        .to
        .iter()
        .chain(&parts.cc)
        .chain(&parts.bcc)
        .chain(parts.reply_to.as_ref())
        .chain([&parts.from]);
    for address in addresses {
        no_line_breaks("an address", &address.as_mailbox().to_string())?;
    }
    if let Some(subject) = &parts.subject {
        prop_assert!(
            !subject.as_str().chars().any(char::is_control),
            "control character in the subject {:?}",
            subject.as_str()
        );
    }
    let total: usize = parts.attachments.iter().map(|a| a.len()).sum();
    prop_assert!(total <= MAX_ATTACHMENT_BYTES, "{total} attachment bytes");
    for a in &parts.attachments {
        prop_assert!(!a.filename().chars().any(char::is_control));
        prop_assert!(!a.filename().trim().is_empty());
    }
    Ok(())
}

/// A refusal names its field, except an output prefix rendered from the
/// settings and the task id (`field_optional`), which no field holds.
fn check_refusal(e: &ParseError) -> Result<(), TestCaseError> {
    refusal(e, false)
}

fn refusal(e: &ParseError, field_optional: bool) -> Result<(), TestCaseError> {
    prop_assert!(
        field_optional || !e.field.is_empty(),
        "a refusal names no field: {:?}",
        e
    );
    prop_assert!(!e.message.is_empty(), "a refusal says nothing: {:?}", e);
    prop_assert!(!e.kind.is_empty(), "a refusal has no kind: {:?}", e);
    Ok(())
}

fn spec_policy() -> SpecPolicy {
    SpecPolicy {
        limits: Limits {
            max_width: 4096,
            max_height: 4096,
            max_pixels: 8_000_000,
            max_alloc_bytes: 64 << 20,
        },
        max_inline_bytes: 64,
        default_quality: 80,
        default_background: Rgb([255, 255, 255]),
        output_prefix: PrefixTemplate::parse("thumbnails/{task_id}")
            .unwrap_or_else(|e| panic!("the prefix template parses: {e}")),
    }
}

/// An `image.thumbnail` body, near-valid more often than not.
fn thumbnail_body() -> impl Strategy<Value = Value> {
    let dimension = prop_oneof![
        4 => 0u32..5000,
        1 => any::<u32>(),
    ];
    let output = (
        dimension.clone(),
        dimension,
        maybe(prop_oneof![
            Just(json!("cover")),
            Just(json!("contain")),
            Just(json!("fill")),
            field()
        ]),
        maybe(prop_oneof![
            Just(json!("jpeg")),
            Just(json!("png")),
            Just(json!("webp")),
            field()
        ]),
        maybe(any::<i16>()),
        maybe(field()),
    )
        .prop_map(|(w, h, fit, format, quality, name)| {
            let mut o = Map::new();
            o.insert("width".into(), json!(w));
            o.insert("height".into(), json!(h));
            for (k, v) in [("fit", fit), ("format", format), ("name", name)] {
                if let Some(v) = v {
                    o.insert(k.into(), v);
                }
            }
            if let Some(q) = quality {
                o.insert("quality".into(), json!(q));
            }
            Value::Object(o)
        });
    let source = (maybe(field()), maybe(field())).prop_map(|(key, base64)| {
        let mut s = Map::new();
        if let Some(k) = key {
            s.insert("key".into(), k);
        }
        if let Some(b) = base64 {
            s.insert("base64".into(), b);
        }
        Value::Object(s)
    });
    (
        source,
        proptest::collection::vec(output, 0..MAX_OUTPUTS + 3),
        maybe(field()),
        maybe(prop_oneof![
            "#[0-9a-fA-F]{0,7}".prop_map(Value::String),
            field()
        ]),
    )
        .prop_map(|(source, outputs, prefix, background)| {
            let mut m = Map::new();
            m.insert("source".into(), source);
            m.insert("outputs".into(), Value::Array(outputs));
            if let Some(p) = prefix {
                m.insert("destination_prefix".into(), p);
            }
            if let Some(b) = background {
                m.insert("background".into(), b);
            }
            Value::Object(m)
        })
}

fn parse_thumbnail(bytes: &[u8], task_id: &str) -> Option<Result<ThumbnailSpec, ParseError>> {
    let wire: ThumbnailTask = serde_json::from_slice(bytes).ok()?;
    Some(ThumbnailSpec::parse(wire, task_id, &spec_policy()))
}

/// A key the store may be handed: relative, no empty, `.` or `..`
/// segment, no backslash or control character.
fn check_key(key: &str) -> Result<(), TestCaseError> {
    prop_assert!(!key.starts_with('/'), "absolute key {key:?}");
    prop_assert!(!key.contains('\\'), "backslash in {key:?}");
    prop_assert!(!key.chars().any(char::is_control), "control in {key:?}");
    for segment in key.split('/') {
        prop_assert!(
            !matches!(segment, "" | "." | ".."),
            "segment {segment:?} in {key:?}"
        );
    }
    Ok(())
}

fn check_thumbnail(spec: &ThumbnailSpec) -> Result<(), TestCaseError> {
    let policy = spec_policy();
    let outputs = spec.outputs();
    prop_assert!((1..=MAX_OUTPUTS).contains(&outputs.len()));
    let mut keys = std::collections::HashSet::new();
    for o in outputs {
        prop_assert!(o.width() >= 1 && o.height() >= 1);
        prop_assert_eq!(policy.limits.exceeded_by(o.width(), o.height()), None);
        check_key(o.key().as_str())?;
        prop_assert!(
            keys.insert(o.key().as_str().to_owned()),
            "two outputs share a key"
        );
    }
    match spec.source() {
        Source::Key(k) => check_key(k.as_str())?,
        Source::Inline(bytes) => prop_assert!(bytes.len() <= policy.max_inline_bytes),
    }
    Ok(())
}

proptest! {
    #[test]
    fn any_bytes_as_an_email_task_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        if let Some(parsed) = parse_email(&bytes) {
            match parsed {
                Ok(request) => check_email(request)?,
                Err(e) => check_refusal(&e)?,
            }
        }
    }

    #[test]
    fn an_email_task_parses_into_a_safe_message_or_names_the_field(body in email_body()) {
        let bytes = serde_json::to_vec(&body).unwrap_or_default();
        if let Some(parsed) = parse_email(&bytes) {
            match parsed {
                Ok(request) => check_email(request)?,
                Err(e) => check_refusal(&e)?,
            }
        }
    }

    #[test]
    fn any_bytes_as_a_thumbnail_task_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        if let Some(parsed) = parse_thumbnail(&bytes, "t-1") {
            match parsed {
                Ok(spec) => check_thumbnail(&spec)?,
                Err(e) => check_refusal(&e)?,
            }
        }
    }

    #[test]
    fn a_thumbnail_spec_stays_in_the_store_and_the_limits_or_names_the_field(
        body in thumbnail_body(),
        task_id in prop_oneof!["[a-z0-9-]{1,20}", hostile()],
    ) {
        let bytes = serde_json::to_vec(&body).unwrap_or_default();
        if let Some(parsed) = parse_thumbnail(&bytes, &task_id) {
            match parsed {
                Ok(spec) => check_thumbnail(&spec)?,
                Err(e) => refusal(&e, true)?,
            }
        }
    }

    #[test]
    fn a_colour_parses_only_as_hex_and_prints_back(raw in prop_oneof!["#[0-9a-fA-F]{0,7}", "\\PC{0,8}"]) {
        if let Some(rgb) = Rgb::parse(&raw) {
            let printed = rgb.to_string();
            prop_assert_eq!(Rgb::parse(&printed), Some(rgb));
        }
    }
}
