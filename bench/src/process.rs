//! Sections 5 and 6, with worker processes: peak RSS of one worker under
//! the consume load, and throughput of one against two replicas on the same
//! queue. The worker is `noop-worker` (this crate's `src/bin`): Warren's
//! runtime with a handler that does nothing, so the figures are the
//! runtime's, not an email's or an image's.
//!
//! Each run fills the queue first, starts the processes and waits until
//! they are up (not yet connected), then says "go" to all at once: the time
//! from "go" to the Nth ack includes connecting and declaring the topology
//! (tens of milliseconds), the same for one replica as for two.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::oneshot;

use crate::broker::BenchBroker;
use crate::config::Config;
use crate::consume::budget;
use crate::report::{Report, thousands};
use crate::stats::{median, ratio, round};
use crate::task::{STEM, pad_for};

/// Which consumer a worker process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Warren's runtime with the production defaults (in-process
    /// idempotency store included).
    Warren,
    /// Warren's runtime without the idempotency store and task events.
    WarrenLean,
    /// The bare lapin consumer.
    Bare,
}

impl Mode {
    fn key(self) -> &'static str {
        match self {
            Mode::Warren => "warren",
            Mode::WarrenLean => "warren_events_and_idempotency_off",
            Mode::Bare => "bare_lapin",
        }
    }
}

/// The `noop-worker` executable: the configured one, or the one next to
/// the running executable, built with cargo if it is not there yet.
pub fn worker_exe(cfg: &Config) -> anyhow::Result<PathBuf> {
    match &cfg.worker_exe {
        Some(p) => Ok(p.clone()),
        None => sibling_exe("warren-bench", "noop-worker"),
    }
}

/// The binary `bin` of workspace package `package`, next to the running
/// executable (same profile), built with cargo if it is not there yet.
pub fn sibling_exe(package: &str, bin: &str) -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe()?;
    let mut dir = me.parent().context("the executable has no directory")?;
    // A test binary runs from `target/<profile>/deps`; binaries live one up.
    if dir.ends_with("deps") {
        dir = dir.parent().context("deps has no parent")?;
    }
    let candidate = dir.join(bin);
    if !candidate.exists() {
        // `cargo run -p warren-bench` builds only the bench itself.
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let mut cmd = std::process::Command::new(cargo);
        cmd.args(["build", "-q", "-p", package, "--bin", bin])
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        if !cfg!(debug_assertions) {
            cmd.arg("--release");
        }
        eprintln!("Building {bin} ...");
        let status = cmd
            .status()
            .with_context(|| format!("could not run cargo to build {bin}"))?;
        if !status.success() || !candidate.exists() {
            bail!(
                "{bin} is not at {} and cargo could not build it; run `cargo build --release -p {package}`",
                candidate.display()
            );
        }
    }
    Ok(candidate)
}

/// A running worker process.
pub struct WorkerProcess {
    child: Child,
    stdin: Option<ChildStdin>,
    pid: u32,
    acked: Arc<AtomicU64>,
    waiting: Option<oneshot::Receiver<()>>,
    tail: Arc<Mutex<VecDeque<String>>>,
}

impl WorkerProcess {
    pub async fn spawn(
        exe: &Path,
        cfg: &Config,
        bench: &BenchBroker,
        mode: Mode,
    ) -> anyhow::Result<Self> {
        let mut cmd = Command::new(exe);
        for (key, _) in std::env::vars() {
            if key.starts_with("WARREN_") || key == "RUST_LOG" || key.starts_with("OTEL_") {
                cmd.env_remove(key);
            }
        }
        let (backend, events) = if mode == Mode::Warren {
            ("memory", "true")
        } else {
            ("off", "false")
        };
        cmd.env("WARREN_CONFIG", "/nonexistent/warren.toml")
            .env("WARREN_BROKER__URL", &bench.url)
            .env("WARREN_BROKER__NAMESPACE", bench.namespace())
            .env("WARREN_CONSUMER__PREFETCH", cfg.prefetch.to_string())
            .env("WARREN_CONSUMER__CONCURRENCY", cfg.concurrency.to_string())
            .env("WARREN_IDEMPOTENCY__BACKEND", backend)
            .env("WARREN_CONSUMER__EVENTS", events)
            .env("WARREN_OPS__ADDR", "127.0.0.1:0")
            .arg("--wait-for-go");
        if mode == Mode::Bare {
            cmd.arg("--bare");
        }
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("could not start {}", exe.display()))?;
        let pid = child.id().context("the worker exited at once")?;
        let stdin = child.stdin.take();
        let acked = Arc::new(AtomicU64::new(0));
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let (waiting_tx, waiting_rx) = oneshot::channel();
        // Logs (stdout) are read and dropped, as a log shipper would; the
        // last lines are kept for error messages.
        if let Some(out) = child.stdout.take() {
            let tail = tail.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(out).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    keep(&tail, line);
                }
            });
        }
        if let Some(err) = child.stderr.take() {
            let (acked, tail) = (acked.clone(), tail.clone());
            tokio::spawn(async move {
                let mut waiting = Some(waiting_tx);
                let mut lines = BufReader::new(err).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    match serde_json::from_str::<serde_json::Value>(&line) {
                        Ok(v) if v["event"] == "progress" => {
                            acked.store(v["acked"].as_u64().unwrap_or(0), Ordering::Release);
                        }
                        Ok(v) if v["event"] == "waiting" => {
                            if let Some(tx) = waiting.take() {
                                let _ = tx.send(());
                            }
                        }
                        _ => keep(&tail, line),
                    }
                }
            });
        }
        Ok(Self {
            child,
            stdin,
            pid,
            acked,
            waiting: Some(waiting_rx),
            tail,
        })
    }

    /// Waits until the process is up and waiting for "go".
    pub async fn wait_waiting(&mut self) -> anyhow::Result<()> {
        if let Some(rx) = self.waiting.take() {
            match tokio::time::timeout(Duration::from_secs(30), rx).await {
                Ok(Ok(())) => {}
                _ => bail!(
                    "the worker process did not start; last lines:\n{}",
                    self.tail()
                ),
            }
        }
        Ok(())
    }

    pub async fn go(&mut self) -> anyhow::Result<()> {
        let stdin = self.stdin.as_mut().context("stdin already closed")?;
        stdin.write_all(b"go\n").await?;
        stdin.flush().await?;
        Ok(())
    }

    pub fn acked(&self) -> u64 {
        self.acked.load(Ordering::Acquire)
    }

    /// A `/proc/<pid>/status` field in KiB (`VmHWM`: peak resident set,
    /// `VmRSS`: resident set now).
    pub fn status_kib(&self, field: &str) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .with_context(|| format!("no {field} in /proc/{}/status", self.pid))
    }

    /// Closes stdin (the worker drains and exits); kills it after 30 s.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.stdin.take();
        match tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await {
            Ok(Ok(status)) if status.success() => Ok(()),
            Ok(Ok(status)) => bail!(
                "the worker exited with {status}; last lines:\n{}",
                self.tail()
            ),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => {
                let _ = self.child.kill().await;
                bail!("the worker did not stop within 30 s")
            }
        }
    }

    fn tail(&self) -> String {
        self.tail
            .lock()
            .map(|t| t.iter().cloned().collect::<Vec<_>>().join("\n"))
            .unwrap_or_default()
    }
}

fn keep(tail: &Mutex<VecDeque<String>>, line: String) {
    if let Ok(mut t) = tail.lock() {
        if t.len() >= 20 {
            t.pop_front();
        }
        t.push_back(line);
    }
}

/// What one run with worker processes measured.
pub struct ProcessRun {
    pub rate: f64,
    pub idle_rss_kib: Vec<u64>,
    pub peak_rss_kib: Vec<u64>,
}

/// Fills the queue with N tasks, lets `replicas` worker processes consume
/// them, and measures.
pub async fn run_processes(
    cfg: &Config,
    bench: &BenchBroker,
    exe: &Path,
    replicas: usize,
    mode: Mode,
) -> anyhow::Result<ProcessRun> {
    let pad = pad_for(cfg.size);
    bench.purge(STEM).await?;
    bench.prefill(STEM, cfg.n, &pad).await?;
    let mut workers = Vec::with_capacity(replicas);
    for _ in 0..replicas {
        workers.push(WorkerProcess::spawn(exe, cfg, bench, mode).await?);
    }
    for w in &mut workers {
        w.wait_waiting().await?;
    }
    let idle_rss_kib = workers
        .iter()
        .map(|w| w.status_kib("VmRSS"))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let start = Instant::now();
    for w in &mut workers {
        w.go().await?;
    }
    let deadline = start + budget(cfg.n);
    let result = loop {
        let acked: u64 = workers.iter().map(WorkerProcess::acked).sum();
        if acked >= cfg.n as u64 {
            break Ok(start.elapsed());
        }
        if Instant::now() >= deadline {
            break Err(anyhow::anyhow!(
                "{replicas} worker(s) acked {acked} of {} tasks in time",
                cfg.n
            ));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    let peak_rss_kib = workers
        .iter()
        .map(|w| w.status_kib("VmHWM"))
        .collect::<anyhow::Result<Vec<_>>>();
    for w in workers {
        w.stop().await?;
    }
    let elapsed = result?;
    Ok(ProcessRun {
        rate: cfg.n as f64 / elapsed.as_secs_f64(),
        idle_rss_kib,
        peak_rss_kib: peak_rss_kib?,
    })
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Section 5: peak RSS of one worker process consuming N tasks.
pub async fn memory(cfg: &Config, bench: &BenchBroker, report: &mut Report) -> anyhow::Result<()> {
    let exe = worker_exe(cfg)?;
    let mut section = serde_json::Map::new();
    let mut peaks = Vec::new();
    for mode in [Mode::Warren, Mode::WarrenLean, Mode::Bare] {
        let run = run_processes(cfg, bench, &exe, 1, mode).await?;
        let (idle, peak) = (run.idle_rss_kib[0], run.peak_rss_kib[0]);
        report.note(format!(
            "memory: {} idle {:.1} MiB, peak {:.1} MiB after {} tasks ({} msg/s)",
            mode.key(),
            mib(idle),
            mib(peak),
            cfg.n,
            thousands(run.rate)
        ));
        section.insert(
            mode.key().to_owned(),
            json!({ "idle_rss_kib": idle, "peak_rss_kib": peak, "tasks": cfg.n, "rate_msg_per_s": round(run.rate, 1) }),
        );
        peaks.push(peak);
    }
    bench.purge(STEM).await?;
    let bare = peaks[2] as f64;
    section.insert(
        "ratio_peak_warren_to_bare".to_owned(),
        json!(round(ratio(peaks[0] as f64, bare), 4)),
    );
    section.insert(
        "worker".to_owned(),
        json!("noop-worker (Warren runtime, no-op handler)"),
    );
    section.insert("source".to_owned(), json!("VmHWM in /proc/<pid>/status"));
    report.sections.insert("memory".to_owned(), section.into());
    report.row(
        "memory",
        format!("peak RSS of one worker, {} tasks (defaults)", cfg.n),
        format!("{:.1} MiB", mib(peaks[0])),
        format!("{:.1} MiB", mib(peaks[2])),
        Some(ratio(peaks[0] as f64, bare)),
        "",
        None,
    );
    report.row(
        "memory",
        "peak RSS, events + idempotency off",
        format!("{:.1} MiB", mib(peaks[1])),
        format!("{:.1} MiB", mib(peaks[2])),
        Some(ratio(peaks[1] as f64, bare)),
        "",
        None,
    );
    Ok(())
}

/// Section 6: one against two worker processes on the same queue.
pub async fn replicas(
    cfg: &Config,
    bench: &BenchBroker,
    report: &mut Report,
) -> anyhow::Result<()> {
    let exe = worker_exe(cfg)?;
    let mut one = Vec::new();
    let mut two = Vec::new();
    for r in 0..cfg.rounds {
        for k in 0..2 {
            let replicas = if (k + r) % 2 == 0 { 1 } else { 2 };
            let run = run_processes(cfg, bench, &exe, replicas, Mode::Warren).await?;
            report.note(format!(
                "replicas round {}/{}: {replicas} worker(s) {} msg/s",
                r + 1,
                cfg.rounds,
                thousands(run.rate)
            ));
            if replicas == 1 {
                one.push(run.rate)
            } else {
                two.push(run.rate)
            }
        }
    }
    bench.purge(STEM).await?;
    let (a, b) = (median(&one), median(&two));
    let r = ratio(b, a);
    report.sections.insert(
        "replicas".to_owned(),
        json!({
            "worker": "noop-worker (Warren runtime, no-op handler, defaults)",
            "one": { "rates_msg_per_s": one.iter().map(|x| round(*x, 1)).collect::<Vec<_>>(), "median_msg_per_s": round(a, 1) },
            "two": { "rates_msg_per_s": two.iter().map(|x| round(*x, 1)).collect::<Vec<_>>(), "median_msg_per_s": round(b, 1) },
            "ratio_two_to_one": round(r, 4),
        }),
    );
    report.row(
        "replicas",
        format!(
            "msg/s, 2 processes (Warren) vs 1 (baseline), median of {}",
            cfg.rounds
        ),
        thousands(b),
        thousands(a),
        Some(r),
        "",
        None,
    );
    Ok(())
}
