//! The `warren` command-line tool: an operator's view of one namespace of
//! Warren on the broker.
//!
//! - `warren queues`: per work queue, ready, unacked, consumers, rates and
//!   the parking lot's depth ([`queues`], from the management API);
//! - `warren dead list|show|replay|purge`: the parking lots, filtered
//!   ([`dead`]); a replayed message moves by publish-with-confirm, then
//!   ack, so it is never fetched and then lost;
//! - `warren task <id>`: a task's status through the gateway ([`task`]);
//! - `warren topology verify`: the broker against what Warren declares
//!   ([`topology`]);
//! - `warren publish <type> <json>` ([`publish`]).
//!
//! Settings are the services' own (`warren.toml`, `WARREN_BROKER__...`):
//! see [`settings`]. Exit statuses are [`Exit`].

mod args;
pub mod dead;
mod error;
pub mod mgmt;
mod output;
pub mod publish;
pub mod queues;
pub mod settings;
pub mod task;
pub mod topology;

pub use args::{Cli, Command, DeadCommand, TopologyCommand};
pub use error::{CliError, Exit};

use clap::CommandFactory;

/// Runs one command line.
pub async fn run(cli: Cli) -> Result<Exit, CliError> {
    let out = output::Output::new(cli.json);
    if let Command::Completions { shell } = cli.command {
        let mut script = Vec::new();
        clap_complete::generate(shell, &mut Cli::command(), "warren", &mut script);
        // A closed pipe (`| head`) is not an error worth a panic.
        let _ = std::io::Write::write_all(&mut std::io::stdout(), &script);
        return Ok(Exit::Ok);
    }
    let settings = settings::CliSettings::load()?;
    match cli.command {
        Command::Queues { all } => queues::run(&settings, &out, all).await,
        Command::Dead(command) => dead::run(&settings, &out, command).await,
        Command::Task {
            id,
            follow,
            gateway,
        } => task::run(&out, &gateway, &id, follow).await,
        Command::Topology(TopologyCommand::Verify { worker }) => {
            topology::verify(&settings, &out, &worker).await
        }
        Command::Publish {
            task_type,
            body,
            priority,
            delay,
            id,
        } => publish::run(&settings, &out, &task_type, &body, priority, delay, id).await,
        Command::Completions { .. } => Ok(Exit::Ok),
    }
}
