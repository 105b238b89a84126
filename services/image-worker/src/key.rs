//! Object keys that cannot leave the store's root.
//!
//! The seed's `image.save(f"uploads/{filename}")` wrote wherever a
//! `../../` in the file name pointed. Here a key is parsed once into a
//! [`StoreKey`]: relative, `/`-separated, without empty, `.` or `..`
//! segments, backslashes or control characters. Holding one means it is
//! safe to hand to any store; nothing else reaches the store.

use std::fmt;

use crate::error::{self, INVALID_KEY};
use warren::TaskError;

/// Longest key, in bytes (S3's limit).
pub const MAX_KEY_BYTES: usize = 1024;
/// Longest single segment (a file name on most file systems).
pub const MAX_SEGMENT_BYTES: usize = 255;

/// A validated, relative object key such as `uploads/2024/cat.jpg`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StoreKey(String);

impl StoreKey {
    /// Parses `raw`; `what` names it in the error (`source.key`,
    /// `destination_prefix`).
    pub fn parse(what: &str, raw: &str) -> Result<Self, TaskError> {
        let refuse =
            |why: &str| error::permanent(INVALID_KEY, format!("{what} {raw:?} is refused: {why}"));
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
        // Whatever we accept, the store's own path type must accept too.
        object_store::path::Path::parse(raw)
            .map_err(|e| refuse(&format!("the store rejects it: {e}")))?;
        Ok(Self(raw.to_owned()))
    }

    /// `self/name`, where `name` is one segment (no `/`).
    pub fn join(&self, what: &str, name: &str) -> Result<Self, TaskError> {
        if name.contains('/') {
            return Err(error::permanent(
                INVALID_KEY,
                format!("{what} {name:?} is refused: it must be a single name without '/'"),
            ));
        }
        Self::parse(what, &format!("{}/{}", self.0, name))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The key as the object store's path type.
    pub fn to_path(&self) -> object_store::path::Path {
        // `parse` already proved that this parses; `from` percent-encodes
        // nothing that `parse` accepted, so both agree on the segments.
        object_store::path::Path::parse(&self.0).unwrap_or_else(|_| self.0.as_str().into())
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

    /// The prefix of task `task_id`.
    pub fn render(&self, task_id: &str) -> Result<StoreKey, TaskError> {
        let rendered = self
            .0
            .replace(TASK_ID_PLACEHOLDER, &warren::task::safe_task_id(task_id));
        StoreKey::parse("the output prefix", &rendered)
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
            assert_eq!(e.kind, INVALID_KEY, "{bad:?}");
            assert!(e.is_permanent());
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
        assert!(prefix.join("n", "../a.jpg").is_err());
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

    #[test]
    fn keys_become_store_paths_unchanged() {
        let k = StoreKey::parse("k", "uploads/a b/c.jpg").unwrap();
        assert_eq!(k.to_path().as_ref(), "uploads/a b/c.jpg");
    }
}
