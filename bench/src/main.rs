//! `warren-bench`: Warren's runtime against bare lapin, measured in the same
//! run on the local RabbitMQ. Prints a table; `--json` also writes every
//! figure with the machine, the broker version and the git revision.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use warren_bench::peers::{Peer, Peers};
use warren_bench::{Config, Section};

// The allocator of Warren's services (docs/performance.md, "The
// allocator"), for both sides of every comparison.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Benchmarks Warren's runtime, producer, mailer and worker processes
/// against their bare baselines, alternating round by round.
#[derive(Debug, Parser)]
#[command(name = "warren-bench", version)]
struct Args {
    /// Messages per consume, publish, memory, replica and retry run.
    #[arg(long)]
    n: Option<usize>,
    /// Measured rounds (contenders alternate within each).
    #[arg(long)]
    rounds: Option<usize>,
    /// Offered rate of the latency run, messages per second.
    #[arg(long)]
    rate: Option<u32>,
    /// Length of the latency run per contender: `20s`, `500ms` or seconds.
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Prefetch of every consumer.
    #[arg(long)]
    prefetch: Option<u16>,
    /// Handlers at once in every consumer.
    #[arg(long)]
    concurrency: Option<usize>,
    /// Body size of every message, bytes.
    #[arg(long)]
    size: Option<usize>,
    /// Publishes in flight at once in the publish run.
    #[arg(long)]
    publish_concurrency: Option<usize>,
    /// Emails per email run.
    #[arg(long)]
    email_n: Option<usize>,
    /// Emails in flight at once.
    #[arg(long)]
    email_concurrency: Option<usize>,
    /// Tiny sizes, every section: checks the bench runs; figures mean nothing.
    #[arg(long)]
    smoke: bool,
    /// Also write every figure to this JSON file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Run only these sections (comma-separated): consume, publish,
    /// latency, email, memory, replicas, retry, thumbnails.
    #[arg(long, value_delimiter = ',')]
    only: Vec<Section>,
    /// Emails of the email section's memory run.
    #[arg(long)]
    email_memory_n: Option<usize>,
    /// `image.thumbnail` tasks per whole-worker thumbnails run (200).
    #[arg(long)]
    thumbnails_n: Option<usize>,
    /// Also run the peers beside Warren, from bench/.venv (install it with
    /// bench/prepare): all of them, or those named (comma-separated):
    /// celery, dramatiq.
    #[arg(long, num_args = 0.., value_delimiter = ',')]
    peers: Option<Vec<Peer>>,
    /// Do not wait for RabbitMQ's per-queue counters after the retry run.
    #[arg(long)]
    no_broker_stats: bool,
    /// The broker.
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    amqp_url: String,
    /// RabbitMQ's management API (version, per-queue counters).
    #[arg(long, default_value = "http://127.0.0.1:15672")]
    management_url: String,
    /// The worker binary for the memory and replica runs (default: the
    /// noop-worker next to this executable).
    #[arg(long)]
    worker_exe: Option<PathBuf>,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("'{s}' is not a duration (e.g. 20s, 500ms, 20)");
    if let Some(ms) = s.strip_suffix("ms") {
        return ms.parse().map(Duration::from_millis).map_err(|_| bad());
    }
    let secs: f64 = s
        .strip_suffix('s')
        .unwrap_or(s)
        .parse()
        .map_err(|_| bad())?;
    Duration::try_from_secs_f64(secs).map_err(|_| bad())
}

impl Args {
    fn config(&self) -> Config {
        let base = if self.smoke {
            Config::smoke()
        } else {
            Config::default()
        };
        Config {
            amqp_url: self.amqp_url.clone(),
            management_url: self.management_url.clone(),
            n: self.n.unwrap_or(base.n).max(1),
            rounds: self.rounds.unwrap_or(base.rounds).max(1),
            rate: self.rate.unwrap_or(base.rate).max(1),
            duration: self.duration.unwrap_or(base.duration),
            prefetch: self.prefetch.unwrap_or(base.prefetch).max(1),
            concurrency: self.concurrency.unwrap_or(base.concurrency).max(1),
            size: self.size.unwrap_or(base.size),
            publish_concurrency: self
                .publish_concurrency
                .unwrap_or(base.publish_concurrency)
                .max(1),
            email_n: self.email_n.unwrap_or(base.email_n).max(1),
            email_concurrency: self
                .email_concurrency
                .unwrap_or(base.email_concurrency)
                .max(1),
            email_memory_n: self.email_memory_n.unwrap_or(base.email_memory_n).max(1),
            thumbnails_n: self.thumbnails_n.unwrap_or(base.thumbnails_n).max(1),
            peers: Peers(match &self.peers {
                None => Vec::new(),
                Some(named) if named.is_empty() => Peer::ALL.to_vec(),
                Some(named) => named.clone(),
            }),
            broker_stats: base.broker_stats && !self.no_broker_stats,
            sections: if self.only.is_empty() {
                base.sections
            } else {
                self.only.clone()
            },
            worker_exe: self.worker_exe.clone(),
            smoke: self.smoke,
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let cfg = args.config();
    let report = warren_bench::run(&cfg)
        .await
        .context("The benchmark failed")?;
    println!("{}", report.table());
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report.to_json())?;
        std::fs::write(path, text + "\n")
            .with_context(|| format!("Could not write {}", path.display()))?;
        eprintln!("Wrote {}.", path.display());
    }
    Ok(())
}
