//! The error kinds of `image.thumbnail`, as the slugs that travel in the
//! `x-warren-error-kind` header.
//!
//! Bad input and images that are not what they claim are permanent
//! (parked at once, never looped); a store that cannot be reached or
//! written is retried. `invalid_json` and `unknown_field` come from the
//! runtime, which decodes the body before the handler sees it. Parsing a
//! task produces the first three; the image worker the rest.

/// The body has the wrong shape: no outputs, a zero width, a quality out of
/// range, bad base64, two outputs with one key. Permanent.
pub const INVALID_PAYLOAD: &str = "invalid_payload";
/// A source key or destination prefix that is empty, absolute, has a `..`
/// or `.` segment, a backslash or a control character: anything that could
/// leave the store's root. Permanent.
pub const INVALID_KEY: &str = "invalid_key";
/// The source object or inline data is over `image.max_source_bytes` or
/// `image.max_inline_bytes`. Permanent.
pub const SOURCE_TOO_LARGE: &str = "source_too_large";
/// The source key names no object. Permanent.
pub const SOURCE_NOT_FOUND: &str = "source_not_found";
/// The bytes are no JPEG, PNG, WebP or GIF (a text file named `.jpg`).
/// Permanent.
pub const UNSUPPORTED_FORMAT: &str = "unsupported_format";
/// The header declares more than `image.max_width`, `max_height` or
/// `max_pixels`, or decoding would allocate over `max_alloc_bytes`: refused
/// before the pixels are decoded. Permanent.
pub const IMAGE_TOO_LARGE: &str = "image_too_large";
/// The image is truncated or malformed. Permanent.
pub const CORRUPT_IMAGE: &str = "corrupt_image";
/// Resizing or encoding failed, or the pipeline panicked, on this input.
/// Permanent: the same bytes fail the same way.
pub const PROCESSING_FAILED: &str = "processing_failed";
/// The store could not be read or written (I/O error, timeout, refused
/// connection, S3 5xx, denied access). Retried.
pub const STORE_UNAVAILABLE: &str = "store_unavailable";
/// The worker is stopping and its image threads are gone. Retried.
pub const CANCELLED: &str = "cancelled";

/// Every kind of `image.thumbnail`, with whether it is permanent.
pub const KINDS: &[(&str, bool)] = &[
    (INVALID_PAYLOAD, true),
    (INVALID_KEY, true),
    (SOURCE_NOT_FOUND, true),
    (SOURCE_TOO_LARGE, true),
    (UNSUPPORTED_FORMAT, true),
    (IMAGE_TOO_LARGE, true),
    (CORRUPT_IMAGE, true),
    (PROCESSING_FAILED, true),
    (STORE_UNAVAILABLE, false),
    (CANCELLED, false),
];
