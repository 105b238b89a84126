//! Chords, decided by the leader from the events stream: a chord's record
//! (written by the producer before its members) says how many members
//! there are and what the callback is; each member's final event
//! (`succeeded`, `dead_lettered`) fills its slot; once every slot is
//! filled the leader publishes the callback `{group}.callback` and its
//! `queued` event in one transaction (with `on_failure = skip` and a
//! failed member: the callback straight into its parking lot, with its
//! `dead_lettered` event).
//!
//! Exactly once across failovers: a new leader reads the stream from its
//! start, and the callback's own event, committed with it, tells it the
//! callback was already published. It publishes nothing until it has read
//! up to the moment it took the lock.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicPublishOptions};
use lapin::types::AMQPValue;
use lapin::{BasicProperties, Channel, Connection};
use serde_json::{Value, json};
use tracing::{info, warn};
use warren::contract::{
    self, CONTENT_TYPE_JSON, DeadReason, EVENT_MESSAGE_TYPE, Names, PERSISTENT, headers,
};
use warren::events::{TaskEvent, TaskState, envelope};
use warren::task_properties;
use warren::workflow::{CHORD_CONTENT_TYPE, ChordRecord, OnFailure};

/// Reading the stream's history: it is caught up after this long without
/// a message.
const QUIET: Duration = Duration::from_millis(500);

/// The error kind of a callback parked by `on_failure = skip`.
pub const MEMBER_FAILED: &str = "chord_member_failed";

#[derive(Debug, thiserror::Error)]
pub enum TrackError {
    #[error("{0}")]
    Broker(#[from] lapin::Error),
    #[error("a callback could not be serialized: {0}")]
    Serialize(#[from] serde_json::Error),
    #[error("the connection holding the leader lock was lost")]
    LockLost,
}

/// One chord being tracked.
struct Tracked {
    record: ChordRecord,
    /// Each member's outcome, once final.
    outcomes: Vec<Option<Value>>,
    done: usize,
}

/// The chords of the stream, and which chord each member belongs to.
#[derive(Default)]
struct Chords {
    chords: HashMap<String, Tracked>,
    members: HashMap<String, (String, usize)>,
    /// Callback id -> group id.
    callbacks: HashMap<String, String>,
}

impl Chords {
    fn add(&mut self, record: ChordRecord) {
        if self.chords.contains_key(&record.id) || record.size == 0 {
            return;
        }
        for n in 1..=record.size {
            self.members
                .insert(record.member_id(n), (record.id.clone(), n as usize - 1));
        }
        self.callbacks
            .insert(record.callback_id(), record.id.clone());
        self.chords.insert(
            record.id.clone(),
            Tracked {
                outcomes: vec![None; record.size as usize],
                done: 0,
                record,
            },
        );
    }

    /// Applies an event; returns the group id if the chord became complete.
    fn apply(&mut self, event: &TaskEvent) -> Option<String> {
        if let Some(group) = self.callbacks.get(&event.task_id).cloned() {
            // The callback was published (by us or an earlier leader).
            self.forget(&group);
            return None;
        }
        let (group, slot) = self.members.get(&event.task_id)?.clone();
        let outcome = match event.state {
            TaskState::Succeeded => json!({
                "id": event.task_id,
                "state": "succeeded",
                "result": event.result.clone().unwrap_or(Value::Null),
            }),
            TaskState::DeadLettered => json!({
                "id": event.task_id,
                "state": "dead_lettered",
                "error_kind": event.error_kind,
                "error": event.error,
            }),
            _ => return None,
        };
        let chord = self.chords.get_mut(&group)?;
        if chord.outcomes[slot].is_none() {
            chord.done += 1;
        }
        chord.outcomes[slot] = Some(outcome);
        (chord.done == chord.outcomes.len()).then_some(group)
    }

    fn complete(&self) -> Vec<String> {
        self.chords
            .iter()
            .filter(|(_, c)| c.done == c.outcomes.len())
            .map(|(g, _)| g.clone())
            .collect()
    }

    fn forget(&mut self, group: &str) {
        if let Some(chord) = self.chords.remove(group) {
            for n in 1..=chord.record.size {
                self.members.remove(&chord.record.member_id(n));
            }
            self.callbacks.remove(&chord.record.callback_id());
        }
    }
}

/// Tracks chords until the connection is lost: history first (firing
/// nothing), then live, publishing each callback once its chord completes.
pub async fn track(
    connection: &Connection,
    names: &Names,
    identity: &str,
    acquired: DateTime<Utc>,
) -> Result<(), TrackError> {
    // The reader channel lives as long as the tracking does.
    let (_reader, mut consumer) =
        crate::leader::read_stream(connection, names, AMQPValue::LongString("first".into()))
            .await?;
    let writer = connection.create_channel().await?;
    writer.tx_select().await?;
    let mut chords = Chords::default();
    let mut live = false;
    loop {
        let next = if live {
            consumer.next().await
        } else {
            match tokio::time::timeout(QUIET, consumer.next()).await {
                Ok(next) => next,
                Err(_) => {
                    live = catch_up(&writer, connection, names, identity, &mut chords).await?;
                    continue;
                }
            }
        };
        let Some(delivery) = next else {
            return Err(TrackError::LockLost);
        };
        let delivery = delivery?;
        let _ = delivery.acker.ack(BasicAckOptions::default()).await;
        let content_type = delivery
            .properties
            .content_type()
            .as_ref()
            .map(|c| c.as_str());
        if content_type == Some(CHORD_CONTENT_TYPE) {
            match serde_json::from_slice::<ChordRecord>(&delivery.data) {
                Ok(record) => chords.add(record),
                Err(e) => warn!(error = %e, "Skipped a chord record that does not parse."),
            }
            continue;
        }
        let Ok(events) = envelope::decode(
            content_type,
            delivery.properties.kind().as_ref().map(|k| k.as_str()),
            &delivery.data,
        ) else {
            continue;
        };
        for event in events {
            if !live && event.at >= acquired {
                live = catch_up(&writer, connection, names, identity, &mut chords).await?;
            }
            if let Some(group) = chords.apply(&event)
                && live
            {
                fire(&writer, connection, names, identity, &mut chords, &group).await?;
            }
        }
    }
}

/// History read: fires every chord that completed while no leader was
/// watching (or whose callback the last leader did not commit).
async fn catch_up(
    writer: &Channel,
    connection: &Connection,
    names: &Names,
    identity: &str,
    chords: &mut Chords,
) -> Result<bool, TrackError> {
    let ready = chords.complete();
    info!(
        tracked = chords.chords.len(),
        ready = ready.len(),
        "Read the chords from the events stream."
    );
    for group in ready {
        fire(writer, connection, names, identity, chords, &group).await?;
    }
    Ok(true)
}

/// Publishes the chord's callback (or parks it) with its event, in one
/// transaction, and forgets the chord.
async fn fire(
    writer: &Channel,
    connection: &Connection,
    names: &Names,
    identity: &str,
    chords: &mut Chords,
    group: &str,
) -> Result<(), TrackError> {
    let Some(chord) = chords.chords.get(group) else {
        return Ok(());
    };
    // Fencing: only over the connection that holds the lock.
    if !connection.status().connected() {
        return Err(TrackError::LockLost);
    }
    let record = &chord.record;
    let outcomes: Vec<Value> = chord.outcomes.iter().flatten().cloned().collect();
    let failed: Vec<&Value> = outcomes
        .iter()
        .filter(|o| o["state"] == "dead_lettered")
        .collect();
    let id = record.callback_id();
    let task_type = record.callback.task_type.as_str();
    let body = serde_json::to_vec(&record.callback_body(outcomes.clone()))?;
    let priority = record.callback.priority.unwrap_or(0);
    let mut properties = task_properties(&id, task_type, priority);
    let mut event;
    let (exchange, key) = if record.on_failure == OnFailure::Skip && !failed.is_empty() {
        let reason = failure_reason(&failed, outcomes.len());
        let mut hdrs = properties.headers().clone().unwrap_or_default();
        contract::set_str(
            &mut hdrs,
            headers::DEAD_REASON,
            DeadReason::Permanent.as_str(),
        );
        contract::set_str(&mut hdrs, headers::ERROR_KIND, MEMBER_FAILED);
        contract::set_str(&mut hdrs, headers::ERROR, reason.clone());
        contract::set_str(&mut hdrs, headers::WORKER, identity);
        properties = properties.with_headers(hdrs);
        event = TaskEvent::new(&id, task_type, TaskState::DeadLettered, 1);
        event.reason = Some(DeadReason::Permanent.as_str().to_owned());
        event.error_kind = Some(MEMBER_FAILED.to_owned());
        event.error = Some(reason);
        // The parking lot of the callback's work queue (its default stem).
        let stem = task_type.split('.').next().unwrap_or(task_type);
        (names.dead_exchange(), names.work_queue(stem))
    } else {
        event = TaskEvent::new(&id, task_type, TaskState::Queued, 1);
        (names.tasks_exchange(), task_type.to_owned())
    };
    event.by = Some(identity.to_owned());
    writer
        .basic_publish(
            exchange.as_str().into(),
            key.as_str().into(),
            BasicPublishOptions::default(),
            &body,
            properties,
        )
        .await?
        .await?;
    let event_body = serde_json::to_vec(&event)?;
    let event_properties = BasicProperties::default()
        .with_content_type(CONTENT_TYPE_JSON.into())
        .with_delivery_mode(PERSISTENT)
        .with_type(EVENT_MESSAGE_TYPE.into())
        .with_message_id(uuid::Uuid::now_v7().to_string().into())
        .with_timestamp(u64::try_from(event.at.timestamp()).unwrap_or(0));
    writer
        .basic_publish(
            names.events_exchange().as_str().into(),
            event.routing_key().as_str().into(),
            BasicPublishOptions::default(),
            &event_body,
            event_properties,
        )
        .await?
        .await?;
    writer.tx_commit().await?;
    info!(
        group,
        callback = %id,
        members = record.size,
        failed = failed.len(),
        parked = event.state == TaskState::DeadLettered,
        "Chord complete; callback published."
    );
    chords.forget(group);
    Ok(())
}

/// Why a skipped callback is parked: the failed members, in order.
fn failure_reason(failed: &[&Value], total: usize) -> String {
    let list: Vec<String> = failed
        .iter()
        .map(|o| {
            format!(
                "{} ({}: {})",
                o["id"].as_str().unwrap_or_default(),
                o["error_kind"].as_str().unwrap_or("unknown"),
                o["error"].as_str().unwrap_or_default()
            )
        })
        .collect();
    let mut reason = format!(
        "{} of {total} members were dead-lettered (on_failure = skip): {}",
        failed.len(),
        list.join("; ")
    );
    if reason.len() > 4096 {
        let mut end = 4096;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
        reason.push_str("...");
    }
    reason
}
