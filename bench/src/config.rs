//! What one benchmark run measures, and with which sizes.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use crate::peers::Peers;

/// The eight parts of a run, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Section {
    Consume,
    Publish,
    Latency,
    Email,
    Memory,
    Replicas,
    Retry,
    Thumbnails,
}

impl Section {
    pub const ALL: [Section; 8] = [
        Section::Consume,
        Section::Publish,
        Section::Latency,
        Section::Email,
        Section::Memory,
        Section::Replicas,
        Section::Retry,
        Section::Thumbnails,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Section::Consume => "consume",
            Section::Publish => "publish",
            Section::Latency => "latency",
            Section::Email => "email",
            Section::Memory => "memory",
            Section::Replicas => "replicas",
            Section::Retry => "retry",
            Section::Thumbnails => "thumbnails",
        }
    }
}

impl fmt::Display for Section {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Section {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Section::ALL
            .into_iter()
            .find(|x| x.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<_> = Section::ALL.iter().map(|x| x.as_str()).collect();
                format!("unknown section '{s}' (one of {})", names.join(", "))
            })
    }
}

/// Sizes and knobs of a run. [`Config::default`] is the full benchmark;
/// [`Config::smoke`] the tiny one CI runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// AMQP URL of the broker (its user also reads the management API).
    pub amqp_url: String,
    /// RabbitMQ's management API, for its version and per-queue counters.
    pub management_url: String,
    /// Messages per consume, publish, memory, replica and retry run.
    pub n: usize,
    /// Measured rounds; contenders alternate within each.
    pub rounds: usize,
    /// Offered rate of the latency run, messages per second.
    pub rate: u32,
    /// Length of the latency run, per contender (split over the rounds).
    pub duration: Duration,
    /// Prefetch of every consumer, Warren's and bare.
    pub prefetch: u16,
    /// Handlers running at once in every consumer.
    pub concurrency: usize,
    /// Body size of every message, bytes.
    pub size: usize,
    /// Publishes in flight at once in the publish run (each waits for its
    /// confirm, as a web request publishing a task does).
    pub publish_concurrency: usize,
    /// Emails per email run.
    pub email_n: usize,
    /// Emails in flight at once (Warren's SMTP pool has this many
    /// connections at most).
    pub email_concurrency: usize,
    /// Emails of the email section's memory run (peak RSS of the worker).
    pub email_memory_n: usize,
    /// `image.thumbnail` tasks per whole-worker thumbnails run.
    pub thumbnails_n: usize,
    /// Frameworks measured beside Warren (`--peers`); none by default.
    pub peers: Peers,
    /// Wait for RabbitMQ's per-queue counters after the retry run (they lag
    /// by up to 5 s).
    pub broker_stats: bool,
    /// Which sections to run.
    pub sections: Vec<Section>,
    /// The worker binary for the memory and replica runs; by default the
    /// `noop-worker` next to the running executable (built if missing).
    pub worker_exe: Option<PathBuf>,
    /// Set by [`Config::smoke`]; recorded in the JSON file.
    pub smoke: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            amqp_url: "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned(),
            management_url: "http://127.0.0.1:15672".to_owned(),
            n: 50_000,
            rounds: 3,
            rate: 2_000,
            duration: Duration::from_secs(20),
            prefetch: 200,
            concurrency: 8,
            size: 256,
            publish_concurrency: 64,
            email_n: 5_000,
            email_concurrency: 10,
            email_memory_n: 50_000,
            thumbnails_n: 200,
            peers: Peers::default(),
            broker_stats: true,
            sections: Section::ALL.to_vec(),
            worker_exe: None,
            smoke: false,
        }
    }
}

impl Config {
    /// Tiny sizes: every section runs and produces its figures in seconds.
    /// For CI, so the benchmark never rots; its figures mean nothing.
    pub fn smoke() -> Self {
        Self {
            n: 200,
            rounds: 1,
            rate: 200,
            duration: Duration::from_secs(1),
            email_n: 20,
            email_memory_n: 50,
            thumbnails_n: 4,
            broker_stats: false,
            smoke: true,
            ..Self::default()
        }
    }

    pub fn runs(&self, section: Section) -> bool {
        self.sections.contains(&section)
    }
}
