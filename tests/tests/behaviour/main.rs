//! Warren's behaviour, end to end: real worker processes (and, in `runtime`,
//! the consumer runtime in process) against the real RabbitMQ, a real SMTP
//! server, a real image store, over TCP. One binary, one module per part;
//! the helpers they share live in `warren_tests` (`tests/src`).
//!
//! Each test has a namespace of its own on the shared broker, so the tests
//! run in parallel. Tests that stop the broker or kill processes live in
//! `tests/tests/resilience.rs`, a binary of their own.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod auth;
mod celery;
mod cli;
mod conductor;
mod console;
mod delay;
mod email;
mod email_sender;
mod email_wire;
mod events;
mod examples;
mod fastapi;
mod gateway;
mod image;
mod limits;
mod observability;
mod producers;
mod runtime;
mod s3;
mod scenarios;
mod secrets;
mod session_connection;
mod settings;
mod smtp_auth;
mod smtp_sink;
mod status_store;
mod workflow;
mod workflow_api;
