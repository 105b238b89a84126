//! Replaying and purging parked messages.
//!
//! A replayed message is published (with confirm, `mandatory`) to its work
//! queue through the default exchange, then acked in the parking lot: if
//! the replaying process dies in between, the message is in both places (a
//! duplicate, never a loss). Publishes and acks go out on the scan's
//! channel, one message at a time: the broker handles a channel's frames in
//! order, so the confirm of message n+1 also says that the ack of message n
//! was processed. At most one message is therefore in flight (published,
//! its ack not yet known to be processed) at any moment: a `kill -9`
//! duplicates at most one message.
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
//!
//! A message whose body no longer parses (the [`BodyCheck`] says why) is
//! not sent round the loop again: it is parked again at once with that
//! reason, and reported.

use std::time::Duration;

use chrono::Utc;
use lapin::options::{BasicAckOptions, BasicPublishOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation};
use serde::Serialize;

use super::{DeadError, Parked, Scan};
use crate::Names;
use crate::contract::{self, CONTENT_TYPE_JSON, PERSISTENT, headers};

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

/// Why a body would be parked again at once (an error kind and a message),
/// given the task type and the body; `None` if it parses.
/// `warren_tasks::body_problem` is the contract's.
pub type BodyCheck = dyn Fn(Option<&str>, &[u8]) -> Option<(&'static str, String)> + Sync;

/// What a replay did.
#[derive(Debug, Default, Serialize)]
pub struct ReplaySummary {
    /// Only looked: nothing moved.
    pub dry_run: bool,
    /// Ids put back on their work queue (or, dry run, that would be).
    pub replayed: Vec<String>,
    /// Messages whose body no longer parses: parked again, with why.
    pub parked_again: Vec<Reparked>,
    /// A message that could not be republished: left parked, replay stopped.
    pub failed: Option<Reparked>,
    /// Matching messages not reached (the replay stopped early).
    pub not_reached: usize,
    /// The connection to the broker was lost mid-replay, and why: the replay
    /// stopped there. Messages not yet acked are back in the parking lot
    /// (the one in flight may also be on its work queue: a duplicate).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connection_lost: Option<String>,
}

/// A message a replay did not put back, and why.
#[derive(Debug, Serialize)]
pub struct Reparked {
    /// Its id.
    pub id: String,
    /// The error kind (`invalid_json`, ..., `publish_failed`).
    pub error_kind: String,
    /// What went wrong.
    pub error: String,
}

/// Replays every message the scans hold, at most `rate` a second, calling
/// `progress` after each one is settled; `actor` names who parks a bad
/// body again (`x-warren-worker`, with this host and process). A message that cannot be
/// republished stops the replay (it stays parked, as do the ones after
/// it); one whose body no longer parses (`check`) is parked again. A lost
/// connection stops it as well (`connection_lost`): nothing is lost, the
/// broker hands every message not yet acked back to its parking lot.
/// Release the scans afterwards.
pub async fn replay(
    scans: &[Scan],
    names: &Names,
    check: &BodyCheck,
    rate: Option<f64>,
    actor: &str,
    mut progress: impl FnMut(&str),
) -> Result<ReplaySummary, DeadError> {
    let total: usize = scans.iter().map(|s| s.matched.len()).sum();
    let mut summary = ReplaySummary::default();
    let mut pace = rate.filter(|r| *r > 0.0 && r.is_finite()).map(|r| {
        let mut i = tokio::time::interval(Duration::from_secs_f64(1.0 / r));
        i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        i
    });
    let mut done = 0;
    'queues: for scan in scans {
        let work_queue = scan.queue.trim_end_matches(".dead").to_owned();
        for parked in &scan.matched {
            if let Some(p) = pace.as_mut() {
                p.tick().await;
            }
            let problem = check(parked.task_type.as_deref(), &parked.body);
            let (exchange, properties) = match &problem {
                None => (String::new(), replay_properties(parked)),
                Some((kind, error)) => (
                    names.dead_exchange(),
                    repark_properties(parked, kind, error, actor),
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
            match published {
                Ok(()) => {}
                Err(Failure::Lost(e)) => {
                    summary.connection_lost = Some(e.to_string());
                    break 'queues;
                }
                Err(Failure::Refused(error)) => {
                    summary.failed = Some(Reparked {
                        id: parked.id.clone(),
                        error_kind: "publish_failed".into(),
                        error,
                    });
                    break 'queues;
                }
            }
            if let Err(e) = parked.acker.ack(BasicAckOptions::default()).await {
                summary.connection_lost = Some(e.to_string());
                break 'queues;
            }
            match problem {
                None => summary.replayed.push(parked.id.clone()),
                Some((kind, error)) => summary.parked_again.push(Reparked {
                    id: parked.id.clone(),
                    error_kind: kind.to_owned(),
                    error,
                }),
            }
            done += 1;
            progress(&parked.id);
        }
    }
    summary.not_reached = total - done - usize::from(summary.failed.is_some());
    Ok(summary)
}

/// Deletes every message the scans hold (acks it) and releases the scans;
/// the ids deleted.
pub async fn purge(scans: Vec<Scan>) -> Result<Vec<String>, DeadError> {
    let mut ids = Vec::new();
    let mut failed = None;
    'all: for scan in &scans {
        for parked in &scan.matched {
            if let Err(e) = parked.acker.ack(BasicAckOptions::default()).await {
                failed = Some(e);
                break 'all;
            }
            ids.push(parked.id.clone());
        }
    }
    // Closing the channel is a round trip: every ack before it is processed.
    super::release(scans).await;
    match failed {
        Some(e) => Err(e.into()),
        None => Ok(ids),
    }
}

/// Why a republish failed.
enum Failure {
    /// The channel or connection failed: nothing more can move on it.
    Lost(lapin::Error),
    /// The broker answered but did not take the message (unroutable, nack,
    /// no confirm in time).
    Refused(String),
}

/// Publishes with `mandatory` on `channel` and waits for the confirm.
async fn publish(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    properties: BasicProperties,
) -> Result<(), Failure> {
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
        .await
        .map_err(Failure::Lost)?;
    let confirm = tokio::time::timeout(crate::CONFIRM_TIMEOUT, confirm)
        .await
        .map_err(|_| {
            Failure::Refused(format!(
                "the broker did not confirm within {:?}",
                crate::CONFIRM_TIMEOUT
            ))
        })?
        .map_err(Failure::Lost)?;
    match confirm {
        Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
        Confirmation::Ack(Some(r)) | Confirmation::Nack(Some(r)) => Err(Failure::Refused(format!(
            "the broker could not route it to '{routing_key}' ({} {}): does the work queue exist?",
            r.reply_code, r.reply_text
        ))),
        Confirmation::Nack(None) => Err(Failure::Refused("the broker refused it (nack)".into())),
    }
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
fn repark_properties(parked: &Parked, kind: &str, error: &str, actor: &str) -> BasicProperties {
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
        crate::broker::worker_identity(actor),
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
