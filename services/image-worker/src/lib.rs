//! Warren's image worker: consumes `image.thumbnail` tasks, reads the
//! source from an object store (a local directory or an S3-compatible
//! bucket), and writes resized JPEG, PNG or WebP outputs back.
//!
//! The shared runtime owns the queue (ack, retry, dead-lettering); this
//! crate owns what a task asks for ([`spec`]), which keys are safe
//! ([`key`]), the store ([`store`]), the CPU work ([`decode`],
//! [`pipeline`], [`encode`]) on its own threads ([`pool`]), and the handler
//! that ties them together ([`thumbnailer`]). [`error`] lists the error
//! kinds.

pub mod decode;
pub mod encode;
pub mod error;
pub mod key;
pub mod metrics;
pub mod pipeline;
pub mod pool;
pub mod settings;
pub mod spec;
pub mod store;
pub mod thumbnailer;

pub use key::StoreKey;
pub use pipeline::{Rendered, RenderedOutput, SourceInfo, render};
pub use settings::{ImageSettings, S3Settings, Settings, StoreKind};
pub use spec::{Fit, Limits, OutputFormat, OutputSpec, Rgb, ThumbnailSpec, ThumbnailTask};
pub use store::{Store, StoreError};
pub use thumbnailer::{Thumbnailer, ThumbnailerError};
