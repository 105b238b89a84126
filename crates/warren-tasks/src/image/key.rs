//! Object keys that cannot leave the store's root.
//!
//! The seed's `image.save(f"uploads/{filename}")` wrote wherever a
//! `../../` in the file name pointed. Here a key is parsed once into a
//! [`StoreKey`]: relative, `/`-separated, without empty, `.` or `..`
//! segments, backslashes or control characters. Holding one means it is
//! safe to hand to any store; nothing else reaches the store. (These rules
//! are stricter than `object_store`'s path parsing; the storage crate's
//! tests hold the two together.)

use std::fmt;

use warren_core::safe_task_id;

use super::kinds::INVALID_KEY;
use crate::ParseError;

/// Longest key, in bytes (S3's limit).
pub const MAX_KEY_BYTES: usize = 1024;
/// Longest single segment (a file name on most file systems).
pub const MAX_SEGMENT_BYTES: usize = 255;

/// A validated, relative object key such as `uploads/2024/cat.jpg`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StoreKey(String);

impl StoreKey {
    /// Parses `raw`; `field` names it in the error (`source.key`,
    /// `destination_prefix`).
    pub fn parse(field: &str, raw: &str) -> Result<Self, ParseError> {
        Self::parse_as(field, field, raw)
    }

    /// Parses `raw`, whose error is about `field` and says `what` it is.
    fn parse_as(field: &str, what: &str, raw: &str) -> Result<Self, ParseError> {
        let refuse = |why: &str| {
            ParseError::new(
                INVALID_KEY,
                field,
                format!("{what} {raw:?} is refused: {why}"),
            )
        };
        if raw.is_empty() {
            return Err(refuse("it is empty"));
        }
        if raw.len() > MAX_KEY_BYTES {
            return Err(refuse(&format!("it is longer than {MAX_KEY_BYTES} bytes")));
        }
        if raw.starts_with('/') {
            return Err(refuse(
                "it is an absolute path; keys are relative to the store's root",
            ));
        }
        if raw.contains('\\') {
            return Err(refuse(
                "it contains a backslash; segments are separated by '/'",
            ));
        }
        if raw.chars().any(char::is_control) {
            return Err(refuse("it contains a control character"));
        }
        for segment in raw.split('/') {
            match segment {
                "" => return Err(refuse("it has an empty segment ('//' or a trailing '/')")),
                "." | ".." => {
                    return Err(refuse(
                        "it has a '.' or '..' segment, which could escape the store's root",
                    ));
                }
                s if s.len() > MAX_SEGMENT_BYTES => {
                    return Err(refuse(&format!(
                        "a segment is longer than {MAX_SEGMENT_BYTES} bytes"
                    )));
                }
                _ => {}
            }
        }
        Ok(Self(raw.to_owned()))
    }

    /// `self/name`, where `name` is one segment (no `/`); `field` names
    /// it in the error.
    pub fn join(&self, field: &str, name: &str) -> Result<Self, ParseError> {
        if name.contains('/') {
            return Err(ParseError::new(
                INVALID_KEY,
                field,
                format!("{field} {name:?} is refused: it must be a single name without '/'"),
            ));
        }
        Self::parse(field, &format!("{}/{}", self.0, name))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for StoreKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An output prefix template such as `thumbnails/{task_id}`, checked at
/// start-up.
#[derive(Debug, Clone)]
pub struct PrefixTemplate(String);

/// The placeholder replaced by the task id.
pub const TASK_ID_PLACEHOLDER: &str = "{task_id}";

impl PrefixTemplate {
    /// Accepts a template that contains `{task_id}` and renders to a valid
    /// key.
    pub fn parse(raw: &str) -> Result<Self, String> {
        if !raw.contains(TASK_ID_PLACEHOLDER) {
            return Err(format!(
                "image.output_prefix {raw:?} must contain {TASK_ID_PLACEHOLDER}, so that each task writes its own objects"
            ));
        }
        let template = Self(raw.to_owned());
        template
            .render("0192f0c4-6b0e-7cc1-9d5e-3b8f1f7a2c10")
            .map_err(|e| format!("image.output_prefix: {}", e.message))?;
        Ok(template)
    }

    /// The prefix of task `task_id`, made safe as one key segment.
    pub fn render(&self, task_id: &str) -> Result<StoreKey, ParseError> {
        let rendered = self.0.replace(TASK_ID_PLACEHOLDER, &safe_task_id(task_id));
        // No field of the task is at fault: the template is a setting.
        StoreKey::parse_as("", "the output prefix", &rendered)
    }
}

#[cfg(test)]
// A failing unwrap is how a test reports failure.
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_keys_are_accepted() {
        for ok in [
            "cat.jpg",
            "uploads/2024/05/cat.jpg",
            "a b/c-d_e.f.png",
            "unicodé/ünïcode.webp",
            "..hidden-but-not-a-dot-segment/x",
        ] {
            assert_eq!(StoreKey::parse("source.key", ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn keys_that_could_escape_the_root_are_refused() {
        for bad in [
            "",
            "/etc/passwd",
            "../etc/passwd",
            "uploads/../../etc/passwd",
            "uploads/..",
            "./cat.jpg",
            "uploads//cat.jpg",
            "uploads/",
            "uploads\\..\\cat.jpg",
            "cat\u{0}.jpg",
            "cat\n.jpg",
        ] {
            let e = StoreKey::parse("source.key", bad).unwrap_err();
            assert_eq!(
                (e.kind, e.field.as_str()),
                (INVALID_KEY, "source.key"),
                "{bad:?}"
            );
            assert!(e.message.contains("source.key"), "{}", e.message);
        }
        let long = "a/".repeat(600) + "b";
        assert!(StoreKey::parse("k", &long).is_err());
        let long_segment = "a".repeat(256);
        assert!(StoreKey::parse("k", &long_segment).is_err());
    }

    #[test]
    fn joining_takes_one_segment_only() {
        let prefix = StoreKey::parse("p", "thumbs/1").unwrap();
        assert_eq!(
            prefix.join("n", "a.jpg").unwrap().as_str(),
            "thumbs/1/a.jpg"
        );
        assert_eq!(prefix.join("n", "../a.jpg").unwrap_err().field, "n");
        assert!(prefix.join("n", "..").is_err());
        assert!(prefix.join("n", "").is_err());
    }

    #[test]
    fn the_prefix_template_needs_the_task_id_and_renders_safely() {
        assert!(PrefixTemplate::parse("thumbnails").is_err());
        assert!(PrefixTemplate::parse("/abs/{task_id}").is_err());
        let t = PrefixTemplate::parse("thumbnails/{task_id}").unwrap();
        assert_eq!(t.render("abc-1").unwrap().as_str(), "thumbnails/abc-1");
        let hashed = t.render("../../etc").unwrap();
        assert!(hashed.as_str().starts_with("thumbnails/id="), "{hashed}");
        assert_eq!(hashed, t.render("../../etc").unwrap());
    }
}
