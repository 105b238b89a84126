//! Celery's side of the email section: the seed's email task
//! (`bench/peers/celery_email.py`: smtplib, one SMTP connection per email)
//! under a prefork worker with 2 processes and `acks_late`, fed from a queue
//! of this run's namespace that is filled before the worker starts, as
//! Warren's is. Timed from the worker's start to the server's last accept.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::process::Command;

use super::{bench_dir, venv_bin};
use crate::broker::BenchBroker;
use crate::email::e2e::{stop, templates_dir};
use crate::email::sinks::Sink;

/// Prefork processes, as the seed ran it.
pub const PROCESSES: usize = 2;

fn command(bench: &BenchBroker, program: std::path::PathBuf, queue: &str, port: u16) -> Command {
    let mut cmd = Command::new(program);
    cmd.current_dir(bench_dir().join("peers"))
        .env("BENCH_AMQP_URL", &bench.url)
        .env("BENCH_QUEUE", queue)
        .env("BENCH_SMTP_PORT", port.to_string())
        .env("BENCH_TEMPLATES", templates_dir())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    cmd
}

/// Publishes `n` welcome emails, runs the worker until `sink` has them all;
/// returns emails per second (worker start-up included).
pub async fn email(bench: &BenchBroker, sink: &mut Sink, n: usize) -> anyhow::Result<f64> {
    let queue = format!("{}.celery-email", bench.namespace());
    let published = command(bench, venv_bin("python")?, &queue, sink.port)
        .args(["celery_email.py", "publish", &n.to_string()])
        .stdout(Stdio::null())
        .output()
        .await
        .context("could not run bench/peers/celery_email.py")?;
    if !published.status.success() {
        bail!(
            "publishing Celery tasks failed: {}",
            String::from_utf8_lossy(&published.stderr)
        );
    }
    let started = Instant::now();
    let mut worker = command(bench, venv_bin("celery")?, &queue, sink.port)
        .args(["-A", "celery_email", "worker", "--pool", "prefork"])
        .args(["--concurrency", &PROCESSES.to_string()])
        .args([
            "--without-heartbeat",
            "--without-gossip",
            "--without-mingle",
        ])
        .args(["--loglevel", "WARNING", "-Q", &queue])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("could not start the Celery worker")?;
    let pid = worker.id().context("the Celery worker exited at once")?;
    let budget = Duration::from_secs(60) + Duration::from_millis(n as u64 * 20);
    let done = sink.wait_all(budget).await;
    let stopped = stop(&mut worker, pid).await;
    bench
        .delete_peer_objects(std::slice::from_ref(&queue), std::slice::from_ref(&queue))
        .await?;
    let done = done.context("the Celery worker did not deliver every email")?;
    stopped?;
    Ok(n as f64 / (done - started).as_secs_f64())
}
