//! Warren's HTTP gateway: the front door for producers that do not speak
//! AMQP, and the answer to "what happened to task X?".
//!
//! It enqueues tasks over HTTP with publisher confirms ([`enqueue`]),
//! checking `email.send` and `image.thumbnail` bodies with the workers' own
//! parsing; stores uploaded images in the image worker's store
//! ([`upload`]); and answers task statuses and streams task events
//! ([`api::status`]) from a status view ([`status`]) built by reading the
//! task events stream from the start of its retention ([`broker`]), so
//! every replica answers alike and a restart needs no database. Errors are
//! RFC 9457 problem documents ([`problem`]); the OpenAPI document is
//! generated from the code ([`openapi`]).

pub mod api;
pub mod app;
pub mod auth;
pub mod broker;
pub mod console;
pub mod enqueue;
pub mod indexer;
pub mod metrics;
pub mod openapi;
pub mod problem;
pub mod settings;
pub mod status;
pub mod upload;
pub mod workflows;

pub use app::{Gateway, GatewayError};
pub use settings::Settings;
