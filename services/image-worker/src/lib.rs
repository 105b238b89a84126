//! Warren's image worker: consumes `image.thumbnail` tasks, reads the
//! source from an object store (a local directory or an S3-compatible
//! bucket), and writes resized JPEG, PNG or WebP outputs back.
//!
//! The shared runtime owns the queue (ack, retry, dead-lettering); the
//! contract crate what a task asks for and which keys are safe
//! ([`spec`], `warren_tasks::image`); the store crate the object store
//! (`warren_store`). This crate owns the CPU work ([`decode`],
//! [`pipeline`], [`encode`]) on its own threads ([`pool`]), and the
//! handler that ties them together ([`thumbnailer`]). [`error`] lists the
//! error kinds.

pub mod decode;
pub mod encode;
pub mod error;
pub mod metrics;
pub mod pipeline;
pub mod pool;
pub mod settings;
pub mod thumbnailer;

/// The `image.thumbnail` contract (`warren_tasks::image`): the wire task,
/// its parsed spec, store keys.
pub use warren_tasks::image as spec;

pub use pipeline::{Rendered, RenderedOutput, SourceInfo, render};
pub use settings::{ImageSettings, S3Settings, Settings, StoreKind};
pub use spec::{
    Fit, Limits, OutputFormat, OutputSpec, Rgb, StoreKey, ThumbnailSpec, ThumbnailTask,
};
pub use thumbnailer::{Thumbnailer, ThumbnailerError};
pub use warren_store::{Store, StoreError};
