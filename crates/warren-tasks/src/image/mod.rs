//! The `image.thumbnail` task: the wire format producers publish
//! ([`ThumbnailTask`]), the parsed domain type the image worker works from
//! ([`ThumbnailSpec`]), object keys that cannot leave the store
//! ([`StoreKey`]), and recognising an image by its first bytes
//! ([`SourceFormat`]).
//!
//! Parse, don't validate: once a [`ThumbnailSpec`] exists, its keys cannot
//! escape the store, its sizes are within the limits, its quality is 1-100
//! and no two outputs share a key.
//!
//! ```
//! use warren_tasks::image::{StoreKey, ThumbnailTask};
//!
//! let task: ThumbnailTask = serde_json::from_value(serde_json::json!({
//!     "source": {"key": "uploads/cat.jpg"},
//!     "outputs": [{"width": 256, "height": 256, "fit": "cover", "format": "webp"}],
//! }))?;
//! assert_eq!(task.outputs.len(), 1);
//! assert!(StoreKey::parse("source.key", "uploads/../../etc/passwd").is_err());
//! # Ok::<(), serde_json::Error>(())
//! ```

mod format;
mod key;
pub mod kinds;
mod spec;
mod wire;

pub use format::SourceFormat;
pub use key::{MAX_KEY_BYTES, MAX_SEGMENT_BYTES, PrefixTemplate, StoreKey, TASK_ID_PLACEHOLDER};
pub use spec::{Limits, MAX_OUTPUTS, OutputSpec, Rgb, Source, SpecPolicy, ThumbnailSpec};
pub use wire::{Fit, OutputFormat, OutputWire, SourceWire, ThumbnailTask};

use crate::WorkQueue;

/// The image worker's queue: `{ns}.image`, bound with `image.#`.
pub const QUEUE: WorkQueue = WorkQueue {
    stem: "image",
    binding_keys: &["image.#"],
};
