//! Replaying and purging parked messages.
//!
//! A replayed message is published (with confirm, `mandatory`) to its work
//! queue through the default exchange, then acked in the parking lot: if
//! the CLI dies in between, the message is in both places (a duplicate,
//! never a loss). Publishes and acks go out on the scan's channel, one
//! message at a time: the broker handles a channel's frames in order, so
//! the confirm of message n+1 also says that the ack of message n was
//! processed. At most one message is therefore in flight (published, its
//! ack not yet known to be processed) at any moment: a `kill -9` of the
//! CLI duplicates at most one message.
//!
//! What a replay resets: `x-warren-attempt` (back to 1), and drops the
//! failure headers `x-warren-error-kind`, `x-warren-error`,
//! `x-warren-first-failure-at`, `x-warren-last-failure-at`,
//! `x-warren-worker`, `x-warren-next-attempt-at`, `x-warren-dead-reason`
//! and the broker's `x-death` family, and the per-message `expiration`.
//! Everything else is kept: the id, type, priority, timestamp, the trace
//! context (`traceparent`, `tracestate`), `x-warren-original-*`,
//! `x-warren-published-at-ms`, `x-warren-causation-id`, and the body byte
//! for byte.

use std::io::BufRead;
use std::time::Duration;

use chrono::Utc;
use indicatif::{ProgressBar, ProgressStyle};
use lapin::options::{BasicAckOptions, BasicPublishOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection};
use serde::Serialize;
use warren::Task;
use warren::contract::{self, CONTENT_TYPE_JSON, PERSISTENT, headers};

use super::{Parked, Scan, Summary, nothing_matched, scan_all};
use crate::args::Filters;
use crate::error::{CliError, Exit};
use crate::output::{Output, table};
use crate::settings::CliSettings;

/// The headers a replay removes (and `x-warren-attempt`, set to 1).
pub const RESET_HEADERS: &[&str] = &[
    headers::ATTEMPT,
    headers::ERROR_KIND,
    headers::ERROR,
    headers::FIRST_FAILURE_AT,
    headers::LAST_FAILURE_AT,
    headers::WORKER,
    headers::NEXT_ATTEMPT_AT,
    headers::DEAD_REASON,
];

#[derive(Debug, Default, Serialize)]
pub struct ReplaySummary {
    pub dry_run: bool,
    /// Ids put back on their work queue (or, dry run, that would be).
    pub replayed: Vec<String>,
    /// Messages whose body no longer parses: parked again, with why.
    pub parked_again: Vec<Reparked>,
    /// A message that could not be republished: left parked, replay stopped.
    pub failed: Option<Reparked>,
    /// Matching messages not reached (the replay stopped early).
    pub not_reached: usize,
}

#[derive(Debug, Serialize)]
pub struct Reparked {
    pub id: String,
    pub error_kind: String,
    pub error: String,
}

pub async fn replay(
    settings: &CliSettings,
    out: &Output,
    connection: &Connection,
    filters: &Filters,
    rate: Option<f64>,
    dry_run: bool,
) -> Result<Exit, CliError> {
    if let Some(r) = rate
        && !(r > 0.0 && r.is_finite())
    {
        return Err(CliError::Usage(format!(
            "--rate must be a positive number, not {r}"
        )));
    }
    let scans = scan_all(settings, connection, filters).await?;
    let total: usize = scans.iter().map(|s| s.matched.len()).sum();
    if total == 0 {
        let exit = nothing_matched(&scans);
        release(scans).await;
        return Ok(exit);
    }
    let mut summary = ReplaySummary {
        dry_run,
        ..Default::default()
    };
    if dry_run {
        summary.replayed = scans
            .iter()
            .flat_map(|s| s.matched.iter().map(|p| p.id.clone()))
            .collect();
        if !out.json {
            let rows: Vec<Vec<String>> = scans
                .iter()
                .flat_map(|s| s.matched.iter().map(Summary::from))
                .map(|s| vec![s.queue, s.id, s.error_kind.unwrap_or_else(|| "-".into())])
                .collect();
            println!("{}", table(&["QUEUE", "ID", "KIND"], &rows));
            eprintln!("Dry run: {total} messages would be replayed; nothing moved.");
        }
        release(scans).await;
        if out.json {
            out.json(&summary);
        }
        return Ok(Exit::Ok);
    }
    let bar = if out.json {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(total as u64)
    };
    if let Ok(style) =
        ProgressStyle::with_template("{bar:40} {pos}/{len} replayed  {per_sec}  eta {eta}")
    {
        bar.set_style(style);
    }
    let mut pace = rate.map(|r| {
        let mut i = tokio::time::interval(Duration::from_secs_f64(1.0 / r));
        i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        i
    });
    let names = settings.names();
    let mut done = 0;
    'queues: for scan in &scans {
        let work_queue = scan.queue.trim_end_matches(".dead").to_owned();
        for parked in &scan.matched {
            if let Some(p) = pace.as_mut() {
                p.tick().await;
            }
            let problem = body_problem(parked.task_type.as_deref(), &parked.body);
            let (exchange, properties) = match &problem {
                None => (String::new(), replay_properties(parked)),
                Some((kind, error)) => (
                    names.dead_exchange(),
                    repark_properties(parked, kind, error),
                ),
            };
            let published = publish(
                &scan.channel,
                &exchange,
                &work_queue,
                &parked.body,
                properties,
            )
            .await;
            if let Err(e) = published {
                summary.failed = Some(Reparked {
                    id: parked.id.clone(),
                    error_kind: "publish_failed".into(),
                    error: e.to_string(),
                });
                break 'queues;
            }
            parked.acker.ack(BasicAckOptions::default()).await?;
            match problem {
                None => summary.replayed.push(parked.id.clone()),
                Some((kind, error)) => summary.parked_again.push(Reparked {
                    id: parked.id.clone(),
                    error_kind: kind.to_owned(),
                    error,
                }),
            }
            done += 1;
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    summary.not_reached = total - done - usize::from(summary.failed.is_some());
    release(scans).await;
    report(out, &summary);
    Ok(
        if summary.failed.is_some() || !summary.parked_again.is_empty() {
            Exit::Incomplete
        } else {
            Exit::Ok
        },
    )
}

/// Publishes with `mandatory` on `channel` and waits for the confirm.
async fn publish(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    properties: BasicProperties,
) -> Result<(), CliError> {
    let confirm = channel
        .basic_publish(
            ShortString::from(exchange),
            ShortString::from(routing_key),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            body,
            properties,
        )
        .await?;
    let confirm = tokio::time::timeout(warren::CONFIRM_TIMEOUT, confirm)
        .await
        .map_err(|_| {
            CliError::Other(format!(
                "the broker did not confirm within {:?}",
                warren::CONFIRM_TIMEOUT
            ))
        })??;
    match confirm {
        Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
        Confirmation::Ack(Some(r)) | Confirmation::Nack(Some(r)) => Err(CliError::Other(format!(
            "the broker could not route it to '{routing_key}' ({} {}): does the work queue exist?",
            r.reply_code, r.reply_text
        ))),
        Confirmation::Nack(None) => Err(CliError::Other("the broker refused it (nack)".into())),
    }
}

/// Why a body would be parked again at once, or `None` if it parses (as
/// JSON, and as its task type's body when the type is one of the contract).
pub fn body_problem(task_type: Option<&str>, body: &[u8]) -> Option<(&'static str, String)> {
    let value: serde_json::Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => return Some(("invalid_json", format!("the body is not JSON: {e}"))),
    };
    let typed = match task_type {
        Some(t) if t == warren_tasks::email::SendEmail::TYPE => {
            serde_json::from_value::<warren_tasks::email::SendEmail>(value).err()
        }
        Some(t) if t == warren_tasks::image::ThumbnailTask::TYPE => {
            serde_json::from_value::<warren_tasks::image::ThumbnailTask>(value).err()
        }
        _ if !value.is_object() => {
            return Some((
                "invalid_payload",
                "the body is not a JSON object".to_owned(),
            ));
        }
        _ => None,
    };
    typed.map(|e| {
        let text = e.to_string();
        let kind = if text.starts_with("unknown field") {
            "unknown_field"
        } else {
            "invalid_payload"
        };
        (
            kind,
            format!(
                "the body does not parse as {}: {text}",
                task_type.unwrap_or("a task")
            ),
        )
    })
}

/// The properties a replayed message carries: the original's, with the
/// failure headers dropped and the attempt count back to 1.
pub fn replay_properties(parked: &Parked) -> BasicProperties {
    let mut table = FieldTable::default();
    if let Some(old) = parked.properties.headers() {
        for (k, v) in old.inner() {
            let name = k.as_str();
            let broker = name.starts_with("x-death")
                || name.starts_with("x-first-death")
                || name.starts_with("x-last-death");
            if !broker && !RESET_HEADERS.contains(&name) {
                table.insert(k.clone(), v.clone());
            }
        }
    }
    contract::set_int(&mut table, headers::ATTEMPT, 1);
    base_properties(parked).with_headers(table)
}

/// A message parked again by the replay: its headers, with this failure.
fn repark_properties(parked: &Parked, kind: &str, error: &str) -> BasicProperties {
    let mut table = parked.properties.headers().clone().unwrap_or_default();
    let now = Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    contract::set_str(&mut table, headers::ERROR_KIND, kind);
    contract::set_str(
        &mut table,
        headers::ERROR,
        format!("replay refused: {error}"),
    );
    contract::set_str(&mut table, headers::LAST_FAILURE_AT, now.clone());
    if contract::header_str(Some(&table), headers::FIRST_FAILURE_AT).is_none() {
        contract::set_str(&mut table, headers::FIRST_FAILURE_AT, now);
    }
    contract::set_str(&mut table, headers::DEAD_REASON, "permanent");
    contract::set_str(
        &mut table,
        headers::WORKER,
        warren::broker::worker_identity("warren-cli"),
    );
    base_properties(parked).with_headers(table)
}

fn base_properties(parked: &Parked) -> BasicProperties {
    let old = &parked.properties;
    let mut p = BasicProperties::default()
        .with_content_type(
            old.content_type()
                .clone()
                .unwrap_or_else(|| CONTENT_TYPE_JSON.into()),
        )
        .with_delivery_mode(PERSISTENT);
    if let Some(v) = old.message_id() {
        p = p.with_message_id(v.clone());
    }
    if let Some(v) = old.priority() {
        p = p.with_priority(*v);
    }
    if let Some(v) = old.timestamp() {
        p = p.with_timestamp(*v);
    }
    if let Some(v) = old.kind() {
        p = p.with_type(v.clone());
    }
    if let Some(v) = old.content_encoding() {
        p = p.with_content_encoding(v.clone());
    }
    if let Some(v) = old.correlation_id() {
        p = p.with_correlation_id(v.clone());
    }
    if let Some(v) = old.reply_to() {
        p = p.with_reply_to(v.clone());
    }
    if let Some(v) = old.app_id() {
        p = p.with_app_id(v.clone());
    }
    p
}

fn report(out: &Output, summary: &ReplaySummary) {
    if out.json {
        out.json(summary);
        return;
    }
    println!("Replayed {} messages.", summary.replayed.len());
    if !summary.parked_again.is_empty() {
        println!(
            "Parked again, their body no longer parses ({}):",
            summary.parked_again.len()
        );
        for r in &summary.parked_again {
            println!("  {}  {}  {}", r.id, r.error_kind, r.error);
        }
    }
    if let Some(f) = &summary.failed {
        println!(
            "Stopped: {} could not be republished and stays parked: {}",
            f.id, f.error
        );
    }
    if summary.not_reached > 0 {
        println!("Not reached, still parked: {}", summary.not_reached);
    }
}

async fn release(scans: Vec<Scan>) {
    for scan in scans {
        scan.release().await;
    }
}

pub async fn purge(
    settings: &CliSettings,
    out: &Output,
    connection: &Connection,
    filters: &Filters,
    yes: bool,
) -> Result<Exit, CliError> {
    let scans = scan_all(settings, connection, filters).await?;
    let total: usize = scans.iter().map(|s| s.matched.len()).sum();
    if total == 0 {
        let exit = nothing_matched(&scans);
        release(scans).await;
        return Ok(exit);
    }
    if !yes {
        let queues: Vec<&str> = scans
            .iter()
            .filter(|s| !s.matched.is_empty())
            .map(|s| s.queue.as_str())
            .collect();
        eprint!(
            "Delete {total} parked messages from {} for good? Type 'yes' to confirm: ",
            queues.join(", ")
        );
        let answer = tokio::task::spawn_blocking(|| {
            let mut line = String::new();
            std::io::stdin().lock().read_line(&mut line).map(|_| line)
        })
        .await
        .map_err(|e| CliError::Other(e.to_string()))?
        .unwrap_or_default();
        if !matches!(answer.trim(), "yes" | "y") {
            release(scans).await;
            eprintln!("Not confirmed: nothing purged.");
            return Ok(Exit::NotConfirmed);
        }
    }
    let mut ids = Vec::new();
    for scan in &scans {
        for parked in &scan.matched {
            parked.acker.ack(BasicAckOptions::default()).await?;
            ids.push(parked.id.clone());
        }
    }
    // Closing the channel is a round trip: every ack before it is processed.
    release(scans).await;
    if out.json {
        out.json(&serde_json::json!({ "purged": ids.len(), "ids": ids }));
    } else {
        println!("Purged {} messages.", ids.len());
    }
    Ok(Exit::Ok)
}
