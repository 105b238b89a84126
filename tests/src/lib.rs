//! Helpers for Warren's integration tests, which run the real workers against real
//! backing services: RabbitMQ, Redis and a real SMTP server over TCP.

pub mod broker;
pub mod deploy;
pub mod http;
pub mod ops;
pub mod otlp;
pub mod prometheus;
pub mod smtp;
pub mod worker;
