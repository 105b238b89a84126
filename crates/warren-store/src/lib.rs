//! Warren's image store, shared by the two services that touch it: the
//! image worker reads sources from it and writes thumbnails; the gateway
//! writes uploads where the worker will find them.
//!
//! It holds the `[image]` settings section both read ([`ImageSettings`]),
//! the object store those settings open ([`Store`]: a local directory or
//! an S3-compatible bucket, through `object_store`), and the task-parsing
//! policy they describe ([`policy`]), so the gateway checks an
//! `image.thumbnail` task against the very limits the worker applies. The
//! task types themselves are the contract crate's (`warren-tasks`).

mod policy;
mod settings;
mod store;

pub use policy::{SettingError, policy};
pub use settings::{ImageSettings, S3Settings, StoreKind};
pub use store::{Store, StoreError};
