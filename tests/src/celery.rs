//! A real Celery 5 client for tests: `tests/celery_client.py` run with the
//! Python of `.tools/venv` (where `scripts/prepare` installs the pinned
//! `celery` and `redis`), sending the calls it is given to the test's Celery
//! queue and reading their results from Celery's Redis result backend.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

/// Celery's AMQP URL of the test broker (Celery spells the default vhost `//`).
pub const BROKER_URL: &str = "amqp://guest:guest@127.0.0.1:5672//";
/// The Redis Celery's result backend and Warren's result writer share.
pub const RESULT_BACKEND: &str = "redis://127.0.0.1:6379/0";

/// The Python of the tools virtualenv: `$TEST_DEPLOY_TOOLS/python`, else
/// `.tools/venv/bin/python` in the checkout.
pub fn python() -> PathBuf {
    std::env::var_os("TEST_DEPLOY_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join(".tools/venv/bin")
        })
        .join("python")
}

/// Where a test's Celery client publishes: its own queue, exchange and
/// routing key, so tests never share Celery's default `celery` queue.
#[derive(Debug, Clone)]
pub struct CeleryRoute {
    pub queue: String,
    pub exchange: String,
    pub routing_key: String,
}

impl CeleryRoute {
    /// Names under `namespace`.
    pub fn for_namespace(namespace: &str) -> Self {
        Self {
            queue: format!("{namespace}.celery-in"),
            exchange: format!("{namespace}.celery-x"),
            routing_key: format!("{namespace}.celery-rk"),
        }
    }
}

/// Runs the Celery client with `calls` (see `tests/celery_client.py`) and
/// returns what it printed, one JSON value a line. Fails if the client
/// fails or takes longer than `timeout`.
pub async fn run_client(
    route: &CeleryRoute,
    calls: &serde_json::Value,
    timeout: Duration,
) -> anyhow::Result<Vec<serde_json::Value>> {
    let python = python();
    if !python.exists() {
        bail!(
            "{} is missing: run scripts/prepare (it installs celery and redis into .tools/venv)",
            python.display()
        );
    }
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("celery_client.py");
    let mut child = Command::new(&python)
        .arg(&script)
        .args(["--broker", BROKER_URL, "--backend", RESULT_BACKEND])
        .args(["--queue", &route.queue, "--exchange", &route.exchange])
        .args(["--routing-key", &route.routing_key])
        .args(["--timeout", &timeout.as_secs().to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("could not start {}", python.display()))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(calls.to_string().as_bytes()).await?;
    }
    let output = tokio::time::timeout(timeout * 2, child.wait_with_output())
        .await
        .context("the Celery client did not finish in time")??;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "the Celery client failed ({}):\n{stdout}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).with_context(|| format!("not JSON: {l}")))
        .collect()
}
