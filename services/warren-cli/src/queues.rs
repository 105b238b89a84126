//! `warren queues`: each work queue of the namespace with its ready,
//! unacked and consumer counts, in and out rates, the messages waiting in
//! its retry ladder and its parking lot's depth.

use serde_json::Value;

use crate::error::{CliError, Exit};
use crate::mgmt::Management;
use crate::output::{Output, table};
use crate::settings::CliSettings;

/// A row: the shared [`warren::management::QueueRow`], as the console
/// shows it too.
pub use warren::management::QueueRow;

pub async fn run(settings: &CliSettings, out: &Output, all: bool) -> Result<Exit, CliError> {
    let management = Management::new(&settings.broker)?;
    let queues = management.queues().await?;
    let rows = rows(settings.names().namespace(), &queues, all);
    if out.json {
        out.json(&rows);
    } else if rows.is_empty() {
        eprintln!(
            "No work queue in namespace '{}' (no worker has declared one yet).",
            settings.broker.namespace
        );
    } else {
        let cells: Vec<Vec<String>> = rows
            .iter()
            .map(|r| {
                let opt = |v: Option<u64>| v.map_or_else(|| "-".to_owned(), |n| n.to_string());
                vec![
                    r.name.clone(),
                    r.ready.to_string(),
                    r.unacked.to_string(),
                    r.consumers.to_string(),
                    format!("{:.1}", r.in_rate),
                    format!("{:.1}", r.out_rate),
                    opt(r.retrying),
                    opt(r.parked),
                ]
            })
            .collect();
        println!(
            "{}",
            table(
                &[
                    "QUEUE",
                    "READY",
                    "UNACKED",
                    "CONSUMERS",
                    "IN/S",
                    "OUT/S",
                    "RETRYING",
                    "PARKED"
                ],
                &cells
            )
        );
    }
    if rows.is_empty() {
        return Ok(Exit::NotFound);
    }
    Ok(Exit::Ok)
}

/// The rows: work queues (a queue with a parking lot `{name}.dead`), or
/// with `all` every queue of the namespace.
pub fn rows(namespace: &str, queues: &[Value], all: bool) -> Vec<QueueRow> {
    warren::management::queue_rows(namespace, queues, all)
}
