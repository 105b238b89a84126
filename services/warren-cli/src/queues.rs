//! `warren queues`: each work queue of the namespace with its ready,
//! unacked and consumer counts, in and out rates, the messages waiting in
//! its retry ladder and its parking lot's depth.

use serde::Serialize;
use serde_json::Value;

use crate::error::{CliError, Exit};
use crate::mgmt::{self, Management};
use crate::output::{Output, table};
use crate::settings::CliSettings;

#[derive(Debug, Serialize)]
pub struct QueueRow {
    pub name: String,
    pub ready: u64,
    pub unacked: u64,
    pub consumers: u64,
    /// Messages published to the queue per second.
    pub in_rate: f64,
    /// Messages acked from the queue per second.
    pub out_rate: f64,
    /// Messages waiting in the retry ladder (`{queue}.retry.*`).
    pub retrying: Option<u64>,
    /// The parking lot's depth (`{queue}.dead`).
    pub parked: Option<u64>,
}

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
    let prefix = format!("{namespace}.");
    let ours: Vec<&Value> = queues
        .iter()
        .filter(|q| q["name"].as_str().is_some_and(|n| n.starts_with(&prefix)))
        .collect();
    let name = |q: &Value| q["name"].as_str().unwrap_or_default().to_owned();
    let find = |n: &str| ours.iter().find(|q| q["name"].as_str() == Some(n));
    let mut rows: Vec<QueueRow> = ours
        .iter()
        .filter(|q| all || find(&format!("{}.dead", name(q))).is_some())
        .map(|q| {
            let n = name(q);
            let dead = find(&format!("{n}.dead")).map(|d| mgmt::count(d, "messages"));
            let retry_prefix = format!("{n}.retry.");
            let retry: Vec<&&Value> = ours
                .iter()
                .filter(|r| name(r).starts_with(&retry_prefix))
                .collect();
            QueueRow {
                ready: mgmt::count(q, "messages_ready"),
                unacked: mgmt::count(q, "messages_unacknowledged"),
                consumers: mgmt::count(q, "consumers"),
                in_rate: mgmt::rate(q, "publish"),
                out_rate: mgmt::rate(q, "ack"),
                retrying: (!retry.is_empty())
                    .then(|| retry.iter().map(|r| mgmt::count(r, "messages")).sum()),
                parked: dead,
                name: n,
            }
        })
        .collect();
    rows.sort_by(|a, b| a.name.cmp(&b.name));
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_queues_get_their_ladder_and_parking_lot() {
        let queues = serde_json::json!([
            {"name": "w.email", "messages_ready": 3, "messages_unacknowledged": 1, "consumers": 2,
             "message_stats": {"publish_details": {"rate": 1.5}, "ack_details": {"rate": 1.0}}},
            {"name": "w.email.retry.1s", "messages": 4},
            {"name": "w.email.dead", "messages": 7},
            {"name": "w.delay.00", "messages": 1},
            {"name": "other.email", "messages": 1}
        ]);
        let rows = rows(
            "w",
            queues.as_array().map(Vec::as_slice).unwrap_or(&[]),
            false,
        );
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].name, "w.email");
        assert_eq!(
            (rows[0].ready, rows[0].unacked, rows[0].consumers),
            (3, 1, 2)
        );
        assert_eq!((rows[0].retrying, rows[0].parked), (Some(4), Some(7)));
        assert!((rows[0].in_rate - 1.5).abs() < 1e-9);
    }
}
