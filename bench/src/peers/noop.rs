//! The peers' no-op tasks (`bench/peers/noop.py`), for the consume and
//! publish sections: the same N tasks that do nothing, on the same broker
//! and machine, in rounds alternating with Warren's and bare lapin's.
//!
//! - Publish: the peer's own publisher, with its defaults (unconfirmed),
//!   timed inside Python (interpreter start-up excluded).
//! - Consume: the queue is filled by the peer's publisher, then its worker
//!   starts (Celery: prefork, 2 processes, `acks_late`; Dramatiq: 2
//!   processes of 8 threads, acked after the actor returns). Each task
//!   appends its time to a file; msg/s from the first task to the last,
//!   as Warren is timed. The resident set of the worker's whole process
//!   tree is sampled every 20 ms (peak), and read once more when the
//!   queue is drained and the worker idles.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::process::Command;

use super::{Peer, bench_dir, venv_bin};
use crate::broker::BenchBroker;
use crate::email::e2e::{status_kib, stop};

/// Worker processes for either peer: one per core, as Warren's 1 process
/// of `concurrency` tasks is measured on the same 2 cores.
pub const PROCESSES: usize = 2;
/// Dramatiq's threads per process (its default).
pub const DRAMATIQ_THREADS: usize = 8;
/// Bytes per line of the marks file: 19 digits of nanoseconds and `\n`.
const MARK_BYTES: u64 = 20;

/// One consume run of a peer.
#[derive(Debug, Clone, Copy)]
pub struct ConsumeRun {
    pub rate: f64,
    /// The worker's process tree at its largest during the run, KiB.
    pub peak_rss_kib: u64,
    /// The worker's process tree once the queue is drained, KiB.
    pub idle_rss_kib: u64,
}

fn queue(bench: &BenchBroker, peer: Peer) -> String {
    format!("{}.{}-noop", bench.namespace(), peer.as_str())
}

fn command(bench: &BenchBroker, program: PathBuf, queue: &str, marks: &Path) -> Command {
    let mut cmd = Command::new(program);
    cmd.current_dir(bench_dir().join("peers"))
        .env("BENCH_AMQP_URL", &bench.url)
        .env("BENCH_QUEUE", queue)
        .env("BENCH_MARKS", marks)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    cmd
}

/// Deletes what the peer declared for `queue` (Celery: the queue and its
/// exchange; Dramatiq: the queue and its delay and dead-letter queues).
async fn delete(bench: &BenchBroker, peer: Peer, queue: &str) -> anyhow::Result<()> {
    match peer {
        Peer::Celery => {
            bench
                .delete_peer_objects(&[queue.to_owned()], &[queue.to_owned()])
                .await
        }
        Peer::Dramatiq => {
            let queues = [
                queue.to_owned(),
                format!("{queue}.DQ"),
                format!("{queue}.XQ"),
            ];
            bench.delete_peer_objects(&queues, &[]).await
        }
    }
}

/// Publishes `n` no-op tasks with the peer's publisher; its msg/s.
async fn publish_n(bench: &BenchBroker, peer: Peer, queue: &str, n: usize) -> anyhow::Result<f64> {
    let marks = std::env::temp_dir().join("warren-bench-unused-marks");
    let out = command(bench, venv_bin("python")?, queue, &marks)
        .args(["noop.py", peer.as_str(), "publish", &n.to_string()])
        .output()
        .await
        .context("could not run bench/peers/noop.py")?;
    if !out.status.success() {
        bail!(
            "publishing {peer} tasks failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let seconds: f64 = stdout
        .split_whitespace()
        .nth(3)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("noop.py printed no time: {stdout}"))?;
    Ok(n as f64 / seconds)
}

/// One publish run: msg/s of the peer's publisher; the queue is deleted.
pub async fn publish_once(bench: &BenchBroker, peer: Peer, n: usize) -> anyhow::Result<f64> {
    let queue = queue(bench, peer);
    let rate = publish_n(bench, peer, &queue, n).await;
    delete(bench, peer, &queue).await?;
    rate
}

/// One consume run over a queue the peer's publisher filled.
pub async fn consume_once(
    bench: &BenchBroker,
    peer: Peer,
    n: usize,
    budget: Duration,
) -> anyhow::Result<ConsumeRun> {
    let queue = queue(bench, peer);
    let marks = std::env::temp_dir().join(format!("{queue}.marks"));
    let _ = std::fs::remove_file(&marks);
    let result = consume(bench, peer, &queue, n, &marks, budget).await;
    let _ = std::fs::remove_file(&marks);
    delete(bench, peer, &queue).await?;
    result
}

async fn consume(
    bench: &BenchBroker,
    peer: Peer,
    queue: &str,
    n: usize,
    marks: &Path,
    budget: Duration,
) -> anyhow::Result<ConsumeRun> {
    publish_n(bench, peer, queue, n).await?;
    let mut cmd = match peer {
        Peer::Celery => {
            let mut cmd = command(bench, venv_bin("celery")?, queue, marks);
            cmd.args(["-A", "noop_celery", "worker", "--pool", "prefork"])
                .args(["--concurrency", &PROCESSES.to_string()])
                .args([
                    "--without-heartbeat",
                    "--without-gossip",
                    "--without-mingle",
                ])
                .args(["--loglevel", "WARNING", "-Q", queue]);
            cmd
        }
        Peer::Dramatiq => {
            let mut cmd = command(bench, venv_bin("dramatiq")?, queue, marks);
            cmd.arg("noop_dramatiq")
                .args(["--processes", &PROCESSES.to_string()])
                .args(["--threads", &DRAMATIQ_THREADS.to_string()])
                .args(["--queues", queue]);
            cmd
        }
    };
    let mut worker = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("could not start the {peer} worker"))?;
    let pid = worker
        .id()
        .with_context(|| format!("the {peer} worker exited at once"))?;
    let deadline = Instant::now() + budget;
    let want = n as u64 * MARK_BYTES;
    let mut peak = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    let done = loop {
        tick.tick().await;
        peak = peak.max(tree_rss_kib(pid));
        let len = std::fs::metadata(marks).map(|m| m.len()).unwrap_or(0);
        if len >= want {
            break Ok(());
        }
        if Instant::now() > deadline {
            break Err(anyhow::anyhow!(
                "the {peer} worker ran {} of {n} tasks within {budget:?}",
                len / MARK_BYTES
            ));
        }
        if let Ok(Some(status)) = worker.try_wait() {
            break Err(anyhow::anyhow!("the {peer} worker exited: {status}"));
        }
    };
    let idle = tree_rss_kib(pid);
    let stopped = stop(&mut worker, pid).await;
    done?;
    stopped?;
    let (first, last) = span(marks)?;
    Ok(ConsumeRun {
        rate: n as f64 / ((last - first) as f64 / 1e9),
        peak_rss_kib: peak.max(idle),
        idle_rss_kib: idle,
    })
}

/// The first and last task times in the marks file, in nanoseconds.
fn span(marks: &Path) -> anyhow::Result<(u64, u64)> {
    let text = std::fs::read_to_string(marks)?;
    let mut times = text.lines().filter_map(|l| l.parse::<u64>().ok());
    let first = times.next().context("no task ran")?;
    let (min, max) = times.fold((first, first), |(lo, hi), t| (lo.min(t), hi.max(t)));
    Ok((min, max))
}

/// The resident set of `pid` and all its descendants, KiB.
fn tree_rss_kib(pid: u32) -> u64 {
    let mut total = 0;
    let mut stack = vec![pid];
    while let Some(p) = stack.pop() {
        total += status_kib(p, "VmRSS").unwrap_or(0);
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) {
            for task in tasks.flatten() {
                let children =
                    std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
                stack.extend(
                    children
                        .split_whitespace()
                        .filter_map(|c| c.parse::<u32>().ok()),
                );
            }
        }
    }
    total
}
