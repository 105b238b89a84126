//! Helpers for Warren's integration tests, which run the real workers against real
//! backing services: RabbitMQ, Redis and a real SMTP server over TCP.
//!
//! The tests themselves are two binaries: `tests/tests/behaviour/` (one module per
//! part, run in parallel, each test in a namespace of its own) and
//! `tests/tests/resilience.rs` (tests that stop the broker or kill processes, one at
//! a time). The deploy, dashboard and docs checks live in `tools/deploy-check`.

pub mod broker;
pub mod celery;
pub mod cli;
pub mod cpu;
mod helpers;
pub mod http;
pub mod images;
pub mod ops;
pub mod otlp;
pub mod s3;
pub mod smtp;
pub mod smtp_tls;
pub mod status;
pub mod worker;

pub use helpers::{EmailWorld, WAIT, rcpt, wait_until};
