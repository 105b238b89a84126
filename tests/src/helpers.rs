//! What most tests start from, written once: how long a test waits for
//! something to happen, recipients of their own, a condition polled until
//! it holds, and the usual world of an email test (a namespace on the real
//! broker, a real SMTP server and a ready email worker sending to it).

use std::time::{Duration, Instant};

use anyhow::Context;

use crate::broker::TestBroker;
use crate::smtp::SmtpSink;
use crate::worker::{WorkerProcess, email_env, with};

/// How long a test waits for the event that makes it true. Generous: CI
/// runs on a loaded 2-core machine, and a test that passes never waits it
/// out.
pub const WAIT: Duration = Duration::from_secs(30);

/// A recipient no other test uses, `<prefix>-<uuid>@example.com`. The SMTP
/// sink picks its answer from the prefix (`reject550`, `tempfail451x<N>`,
/// `slow<MS>`; see `tests/smtp_sink.py`).
pub fn rcpt(prefix: &str) -> String {
    format!("{prefix}-{}@example.com", uuid::Uuid::new_v4().simple())
}

/// Polls `done` until it holds, failing the test with `what` after
/// `timeout`.
pub async fn wait_until(what: &str, timeout: Duration, done: impl Fn() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One email test's world: its own namespace, SMTP sink and a ready email
/// worker sending to that sink.
pub struct EmailWorld {
    pub broker: TestBroker,
    pub sink: SmtpSink,
    pub worker: WorkerProcess,
    /// The worker's settings, to start more workers like it.
    pub env: Vec<(&'static str, String)>,
}

impl EmailWorld {
    /// Starts the world with [`email_env`] plus `overrides`, and waits until
    /// the worker consumes.
    pub async fn start(overrides: &[(&'static str, &str)]) -> anyhow::Result<Self> {
        let broker = TestBroker::new().await.context("broker")?;
        let sink = SmtpSink::start().await.context("smtp sink")?;
        let env = with(email_env(broker.namespace(), sink.port()), overrides);
        let worker = WorkerProcess::email(&env).await.context("email worker")?;
        worker.wait_ready().await.context("email worker ready")?;
        Ok(Self {
            broker,
            sink,
            worker,
            env,
        })
    }
}
