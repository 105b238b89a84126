//! The command line, declared with clap's derive API.

use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// Warren's operator tool: queues, the parking lot, tasks, the topology.
///
/// Broker and management API come from the services' settings
/// (`warren.toml` or `$WARREN_CONFIG`, then `WARREN_BROKER__URL`,
/// `WARREN_BROKER__NAMESPACE`, `WARREN_BROKER__MANAGEMENT_URL`).
#[derive(Debug, Parser)]
#[command(name = "warren", version, about, long_about = None)]
pub struct Cli {
    /// Print JSON instead of tables (one document per command).
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Per work queue: ready, unacked, consumers, rates, retrying and parked.
    Queues {
        /// Every queue of the namespace, not only the work queues.
        #[arg(long)]
        all: bool,
    },
    /// The parking lots: list, show, replay, purge.
    #[command(subcommand)]
    Dead(DeadCommand),
    /// A task's status and history, through the gateway.
    Task {
        /// The task id.
        id: String,
        /// Stream the task's events as they happen until it succeeds or is parked.
        #[arg(long)]
        follow: bool,
        /// The gateway's base URL.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        gateway: String,
    },
    /// The broker's topology against what Warren declares.
    #[command(subcommand)]
    Topology(TopologyCommand),
    /// Publish a task, confirmed by the broker; prints its id.
    Publish {
        /// The task type, e.g. `email.send` (the routing key).
        task_type: String,
        /// The body, a JSON object; `-` reads it from stdin.
        body: String,
        /// 0-9, 9 served first.
        #[arg(long)]
        priority: Option<u8>,
        /// Start it no sooner than this (`90s`, `3h`, `2days`).
        #[arg(long, value_parser = humantime::parse_duration)]
        delay: Option<Duration>,
        /// The task id (default: a new UUID v7).
        #[arg(long)]
        id: Option<String>,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
}

#[derive(Debug, Subcommand)]
pub enum TopologyCommand {
    /// Compare the broker with what the code declares; exit 5 on a difference.
    Verify {
        /// Check this worker's queues (stem: `email`, `image`); repeatable.
        /// Default: every known worker whose work queue exists.
        #[arg(long)]
        worker: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum DeadCommand {
    /// List parked messages (they stay parked).
    List(Filters),
    /// Show one parked message: headers and body.
    Show {
        /// The task id (`message_id`).
        id: String,
        /// The parking lot (`email`, or its full name); default: all.
        #[arg(long)]
        queue: Option<String>,
        /// Print the whole body, however long.
        #[arg(long)]
        full: bool,
    },
    /// Put parked messages back on their work queue, with a fresh attempt count.
    Replay {
        #[command(flatten)]
        filters: Filters,
        /// Messages per second at most.
        #[arg(long)]
        rate: Option<f64>,
        /// Show what would be replayed; move nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Delete parked messages.
    Purge {
        #[command(flatten)]
        filters: Filters,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
}

/// Which parked messages a command takes.
#[derive(Debug, Clone, Default, Args)]
pub struct Filters {
    /// The parking lot: a worker's stem (`email`) or the queue's name
    /// (`warren.email.dead`). Default: every parking lot of the namespace.
    #[arg(long)]
    pub queue: Option<String>,
    /// Task type (`email.send`).
    #[arg(long = "type")]
    pub task_type: Option<String>,
    /// Error kind (`x-warren-error-kind`, e.g. `invalid_address`).
    #[arg(long)]
    pub kind: Option<String>,
    /// Dead reason: `permanent`, `attempts_exhausted`, or the broker's
    /// (`expired`, `rejected`, `maxlen`) for messages it dead-lettered.
    #[arg(long)]
    pub reason: Option<String>,
    /// Parked at least this long ago (`1h`).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub older_than: Option<Duration>,
    /// Parked at most this long ago (`10m`).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub newer_than: Option<Duration>,
    /// Task id; repeatable.
    #[arg(long)]
    pub id: Vec<String>,
    /// At most this many messages.
    #[arg(long)]
    pub limit: Option<usize>,
}

impl Filters {
    /// The library's filter ([`warren::dead::Filter`]).
    pub fn to_filter(&self) -> warren::dead::Filter {
        warren::dead::Filter {
            queue: self.queue.clone(),
            task_type: self.task_type.clone(),
            kind: self.kind.clone(),
            reason: self.reason.clone(),
            older_than: self.older_than,
            newer_than: self.newer_than,
            id: self.id.clone(),
            limit: self.limit,
        }
    }
}

#[cfg(test)]
// A failing unwrap is how a test reports failure.
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Splits a shell line into words: whitespace, and single quotes.
    fn words(line: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut word = String::new();
        let mut quoted = false;
        let mut started = false;
        for c in line.chars() {
            match c {
                '\'' => {
                    quoted = !quoted;
                    started = true;
                }
                c if c.is_whitespace() && !quoted => {
                    if started {
                        out.push(std::mem::take(&mut word));
                        started = false;
                    }
                }
                c => {
                    word.push(c);
                    started = true;
                }
            }
        }
        if started {
            out.push(word);
        }
        out
    }

    #[test]
    fn every_command_in_docs_cli_parses() {
        let doc = include_str!("../../../docs/cli.md");
        let mut checked = 0;
        for line in doc.lines() {
            let Some(command) = line.strip_prefix("$ ") else {
                continue;
            };
            // `echo ... | warren ...`: the warren part.
            let command = command.rsplit("| ").next().unwrap();
            let args = words(command);
            assert_eq!(args[0], "warren", "{line}");
            if let Err(e) = Cli::try_parse_from(&args) {
                panic!("docs/cli.md: {line}\n{e}");
            }
            checked += 1;
        }
        assert!(checked >= 12, "only {checked} commands found");
    }
}
