//! The error kinds of `image.thumbnail`, as the slugs that travel in the
//! `x-warren-error-kind` header (the contract crate's list, re-exported),
//! and the two ways this crate builds a failure from one.
//!
//! Every failure is a [`warren::TaskError`] built with one of these slugs:
//! bad input and images that are not what they claim are permanent (parked
//! at once, never looped); a store that cannot be reached or written is
//! retried. `invalid_json` and `unknown_field` come from the runtime, which
//! decodes the body before the handler sees it.

use std::fmt;

use warren::TaskError;

pub use warren_tasks::image::kinds::*;

/// A permanent failure of kind `kind`.
pub fn permanent(kind: &'static str, message: impl fmt::Display) -> TaskError {
    TaskError::permanent(kind, message)
}

/// A transient failure of kind `kind`.
pub fn retry(kind: &'static str, message: impl fmt::Display) -> TaskError {
    TaskError::retry(kind, message)
}
