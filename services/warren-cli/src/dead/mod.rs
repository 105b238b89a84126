//! `warren dead`: the parking lots (`{ns}.{stem}.dead`), listed, shown,
//! replayed and purged, with filters. The reading and settling are
//! [`warren::dead`]'s (the gateway's console uses the same); this module
//! is the command line's side: filters from flags, tables, confirmation.

mod settle;

use chrono::{DateTime, Utc};
use lapin::Connection;
use serde::Serialize;

use crate::args::{DeadCommand, Filters};
use crate::error::{CliError, Exit};
use crate::output::{Output, cut, table};
use crate::settings::CliSettings;

pub use warren::dead::{Parked, Scan};

pub async fn run(
    settings: &CliSettings,
    out: &Output,
    command: DeadCommand,
) -> Result<Exit, CliError> {
    // No automatic recovery: a recovered connection would not hold the
    // messages this command has fetched (the broker hands them back when the
    // first connection dies), so a replay or purge on it could only fail
    // later and less clearly. A lost connection ends the command (status 1);
    // run it again.
    let connection =
        warren::broker::connect_without_recovery(&settings.broker, "warren-cli").await?;
    let result = match command {
        DeadCommand::List(filters) => list(settings, out, &connection, &filters).await,
        DeadCommand::Show { id, queue, full } => {
            let filters = Filters {
                queue,
                id: vec![id],
                ..Filters::default()
            };
            show(settings, out, &connection, &filters, full).await
        }
        DeadCommand::Replay {
            filters,
            rate,
            dry_run,
        } => settle::replay(settings, out, &connection, &filters, rate, dry_run).await,
        DeadCommand::Purge { filters, yes } => {
            settle::purge(settings, out, &connection, &filters, yes).await
        }
    };
    let close = connection.close(200, "done".into());
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), close).await;
    result
}

/// One line of `dead list`.
#[derive(Debug, Serialize)]
pub struct Summary {
    pub queue: String,
    pub id: String,
    pub task_type: Option<String>,
    pub error_kind: Option<String>,
    pub dead_reason: Option<String>,
    pub attempts: Option<u32>,
    pub parked_at: Option<DateTime<Utc>>,
    pub error: Option<String>,
}

impl From<&Parked> for Summary {
    fn from(p: &Parked) -> Self {
        Self {
            queue: p.queue.clone(),
            id: p.id.clone(),
            task_type: p.task_type.clone(),
            error_kind: p.kind.clone(),
            dead_reason: p.reason.clone(),
            attempts: p.attempts,
            parked_at: p.parked_at,
            error: p.error.clone(),
        }
    }
}

/// The parking lots the filters name, each scanned and held.
async fn scan_all(
    settings: &CliSettings,
    connection: &Connection,
    filters: &Filters,
) -> Result<Vec<Scan>, CliError> {
    let stems: Vec<&str> = warren_tasks::WORK_QUEUES.iter().map(|q| q.stem).collect();
    Ok(warren::dead::scan_all(&settings.broker, connection, &filters.to_filter(), &stems).await?)
}

fn nothing_matched(scans: &[Scan]) -> Exit {
    let seen: usize = scans.iter().map(|s| s.seen).sum();
    eprintln!(
        "No parked message matches the filters ({seen} looked at in {}).",
        scans
            .iter()
            .map(|s| s.queue.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    Exit::NothingMatched
}

async fn list(
    settings: &CliSettings,
    out: &Output,
    connection: &Connection,
    filters: &Filters,
) -> Result<Exit, CliError> {
    let scans = scan_all(settings, connection, filters).await?;
    let summaries: Vec<Summary> = scans
        .iter()
        .flat_map(|s| s.matched.iter().map(Summary::from))
        .collect();
    for scan in scans {
        scan.release().await;
    }
    if out.json {
        out.json(&summaries);
    } else if !summaries.is_empty() {
        let now = Utc::now();
        let rows: Vec<Vec<String>> = summaries
            .iter()
            .map(|s| {
                let dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".to_owned());
                vec![
                    s.queue.clone(),
                    s.id.clone(),
                    dash(&s.task_type),
                    dash(&s.error_kind),
                    dash(&s.dead_reason),
                    s.attempts.map_or_else(|| "-".to_owned(), |a| a.to_string()),
                    s.parked_at.map_or_else(|| "-".to_owned(), |t| age(now, t)),
                    cut(s.error.as_deref().unwrap_or("-"), 60),
                ]
            })
            .collect();
        println!(
            "{}",
            table(
                &[
                    "QUEUE", "ID", "TYPE", "KIND", "REASON", "ATTEMPTS", "AGE", "ERROR"
                ],
                &rows
            )
        );
    }
    if summaries.is_empty() {
        eprintln!("No parked message matches the filters.");
        return Ok(Exit::NothingMatched);
    }
    Ok(Exit::Ok)
}

async fn show(
    settings: &CliSettings,
    out: &Output,
    connection: &Connection,
    filters: &Filters,
    full: bool,
) -> Result<Exit, CliError> {
    let scans = scan_all(settings, connection, filters).await?;
    let found = scans.iter().flat_map(|s| s.matched.iter()).next();
    let exit = match found {
        None => {
            let _ = nothing_matched(&scans);
            Exit::NotFound
        }
        Some(p) => {
            let headers = p.headers_json();
            let body_text = String::from_utf8_lossy(&p.body);
            let body = serde_json::from_slice::<serde_json::Value>(&p.body).ok();
            if out.json {
                out.json(&serde_json::json!({
                    "queue": p.queue,
                    "id": p.id,
                    "task_type": p.task_type,
                    "priority": p.properties.priority(),
                    "headers": headers,
                    "body": body.clone().unwrap_or_else(|| serde_json::Value::String(body_text.to_string())),
                }));
            } else {
                println!("queue:     {}", p.queue);
                println!("id:        {}", p.id);
                println!("type:      {}", p.task_type.as_deref().unwrap_or("-"));
                println!(
                    "priority:  {}",
                    p.properties
                        .priority()
                        .map_or_else(|| "-".to_owned(), |n| n.to_string())
                );
                println!("headers:");
                if let serde_json::Value::Object(map) = &headers {
                    for (k, v) in map {
                        let v = match v {
                            serde_json::Value::String(s) => s.clone(),
                            other => other.to_string(),
                        };
                        println!("  {k}: {v}");
                    }
                }
                let pretty = body
                    .and_then(|b| serde_json::to_string_pretty(&b).ok())
                    .unwrap_or_else(|| body_text.to_string());
                println!("body ({} bytes):", p.body.len());
                if full {
                    println!("{pretty}");
                } else {
                    println!("{}", cut(&pretty, 4096));
                }
            }
            Exit::Ok
        }
    };
    for scan in scans {
        scan.release().await;
    }
    Ok(exit)
}

/// `3m`, `2h`, `5d`: how long ago.
fn age(now: DateTime<Utc>, at: DateTime<Utc>) -> String {
    let secs = (now - at).num_seconds().max(0);
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 86_400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}
