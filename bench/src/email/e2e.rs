//! Warren end to end: the real `email-worker` process (release build,
//! production defaults but for its concurrency and pool) takes pre-published
//! `email.send` tasks from RabbitMQ and delivers them to a real SMTP server.
//! Timed from the process start to the server's last accept, start-up
//! included, as issue 20 measured it; the rate after the worker logged
//! `Consuming.` is reported beside it.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tokio::sync::oneshot;

use crate::broker::{BenchBroker, EMAIL_STEM};
use crate::email::sinks::Sink;
use crate::process::sibling_exe;

pub const FROM: &str = "Warren Bench <bench@warren.test>";

/// The seed's welcome email, as a producer publishes it.
pub fn welcome_task(n: usize) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "to": format!("user{n}@warren.test"),
        "template": "welcome",
        "variables": { "name": format!("User {n}") },
    }))
    .unwrap_or_default()
}

pub fn templates_dir() -> String {
    concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../services/email-worker/templates"
    )
    .to_owned()
}

/// One e2e run's figures.
pub struct E2e {
    /// Emails per second, process start to the last accept.
    pub rate: f64,
    /// Emails per second, `Consuming.` to the last accept.
    pub rate_after_ready: f64,
    pub start_up: Duration,
    /// `VmHWM` of the worker at the end.
    pub peak_rss_kib: u64,
}

/// Fills the email queue with `n` welcome emails, starts the worker against
/// `sink` with `concurrency` handlers and as many pooled connections, and
/// waits until the server accepted all `n`.
pub async fn warren(
    bench: &BenchBroker,
    sink: &mut Sink,
    n: usize,
    concurrency: usize,
) -> anyhow::Result<E2e> {
    bench.prefill_emails(n, &welcome_task(0)).await?;
    let exe = sibling_exe("email-worker", "email-worker")?;
    let mut cmd = Command::new(&exe);
    for (key, _) in std::env::vars() {
        if key.starts_with("WARREN_") || key == "RUST_LOG" || key.starts_with("OTEL_") {
            cmd.env_remove(key);
        }
    }
    let started = Instant::now();
    let mut child = cmd
        .env("WARREN_CONFIG", "/nonexistent/warren.toml")
        .env("WARREN_BROKER__URL", &bench.url)
        .env("WARREN_BROKER__NAMESPACE", bench.namespace())
        .env("WARREN_CONSUMER__CONCURRENCY", concurrency.to_string())
        .env("WARREN_EMAIL__TRANSPORT", "smtp")
        .env("WARREN_EMAIL__DEFAULT_FROM", FROM)
        .env("WARREN_EMAIL__TEMPLATES_DIR", templates_dir())
        .env("WARREN_EMAIL__SMTP__HOST", "127.0.0.1")
        .env("WARREN_EMAIL__SMTP__PORT", sink.port.to_string())
        .env("WARREN_EMAIL__SMTP__TLS", "none")
        .env("WARREN_EMAIL__SMTP__POOL_MAX_SIZE", concurrency.to_string())
        .env("WARREN_OPS__ADDR", "127.0.0.1:0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("could not start {}", exe.display()))?;
    let pid = child.id().context("the email worker exited at once")?;
    // Its JSON log lines go to a pipe that is read and dropped, as a log
    // shipper would; "Consuming." marks the end of start-up.
    let stdout = child.stdout.take().context("no stdout")?;
    let (ready_tx, ready_rx) = oneshot::channel();
    tokio::spawn(async move {
        let mut ready = Some(ready_tx);
        let mut lines = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if ready.is_some()
                && line.contains("\"Consuming.\"")
                && let Some(tx) = ready.take()
            {
                let _ = tx.send(Instant::now());
            }
        }
    });
    let budget = Duration::from_secs(60) + Duration::from_millis(n as u64 * 5);
    let done = match sink.wait_all(budget).await {
        Ok(done) => done,
        Err(e) => {
            let _ = child.kill().await;
            return Err(e.context("Warren's email worker did not deliver every email"));
        }
    };
    let ready = ready_rx.await.unwrap_or(started);
    let peak_rss_kib = status_kib(pid, "VmHWM").unwrap_or(0);
    stop(&mut child, pid).await?;
    let left = bench.depth(EMAIL_STEM).await?;
    if left != 0 {
        bench.purge(EMAIL_STEM).await?;
        bail!("{left} email tasks were still queued after the server had every email");
    }
    let total = done - started;
    Ok(E2e {
        rate: n as f64 / total.as_secs_f64(),
        rate_after_ready: n as f64 / (done - ready).as_secs_f64(),
        start_up: ready - started,
        peak_rss_kib,
    })
}

/// SIGTERM, as an orchestrator stops a worker; it drains and exits.
pub async fn stop(child: &mut tokio::process::Child, pid: u32) -> anyhow::Result<()> {
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .await;
    match tokio::time::timeout(Duration::from_secs(30), child.wait()).await {
        Ok(status) => {
            status?;
            Ok(())
        }
        Err(_) => {
            let _ = child.kill().await;
            bail!("the process did not stop within 30 s of SIGTERM")
        }
    }
}

/// A `/proc/<pid>/status` field in KiB.
pub fn status_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
}
