//! Chords, decided by the leader from the events stream: a chord's record
//! (written by the producer before its members) says how many members
//! there are and what the callback is; each member's final event
//! (`succeeded`, `dead_lettered`) fills its slot; once every slot is
//! filled the leader publishes the callback `{group}.callback` and its
//! `queued` event in one transaction (with `on_failure = skip` and a
//! failed member: the callback straight into its parking lot, with its
//! `dead_lettered` event). A chord whose producer failed midway has an
//! abort record after its record: its callback is parked at once, with
//! error kind `chord_aborted`.
//!
//! Exactly once, by construction: the callback's fate is on the stream
//! (its own event, committed with it), and a leader decides nothing until
//! it has read the stream up to a mark it wrote itself after taking the
//! lock. Whatever an earlier leader committed, it committed while it held
//! the lock, so before the mark. The connection does not recover (see
//! [`warren::broker::connect_without_recovery`]): once it is lost, the
//! lock, the reader and the writer are gone with it, and the next session
//! starts over from a new mark.

use std::collections::{HashMap, HashSet};

use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::AMQPValue;
use lapin::{BasicProperties, Channel, Connection};
use serde_json::{Value, json};
use tracing::{info, warn};
use warren::contract::{
    self, CONTENT_TYPE_JSON, DeadReason, EVENT_MESSAGE_TYPE, Names, PERSISTENT, headers,
};
use warren::events::{TaskEvent, TaskState, envelope};
use warren::task_properties;
use warren::workflow::{
    CHORD_ABORT_CONTENT_TYPE, CHORD_CONTENT_TYPE, ChordAbort, ChordRecord, MARK_CONTENT_TYPE,
    MARK_MESSAGE_TYPE, OnFailure,
};

/// The error kind of a callback parked by `on_failure = skip`.
pub const MEMBER_FAILED: &str = "chord_member_failed";

/// The error kind of a callback parked because its chord was aborted.
pub const ABORTED: &str = "chord_aborted";

#[derive(Debug, thiserror::Error)]
pub enum TrackError {
    #[error("{0}")]
    Broker(#[from] lapin::Error),
    #[error("a callback could not be serialized: {0}")]
    Serialize(#[from] serde_json::Error),
    #[error("the connection holding the leader lock was lost")]
    LockLost,
    #[error("the catch-up mark was not confirmed by the broker")]
    MarkNotConfirmed,
}

/// One chord being tracked.
struct Tracked {
    record: ChordRecord,
    /// Each member's outcome, once final.
    /// Kept as JSON text: a parsed `Value` costs about ten times its text
    /// in memory (measured in the tests below).
    outcomes: Vec<Option<Box<str>>>,
    done: usize,
    /// The producer's abort record, if it failed midway.
    aborted: Option<ChordAbort>,
}

/// The chords of the stream, and which chord each member belongs to.
#[derive(Default)]
struct Chords {
    chords: HashMap<String, Tracked>,
    members: HashMap<String, (String, usize)>,
    /// Callback id -> group id.
    callbacks: HashMap<String, String>,
    /// Groups whose callback is published: a record seen again (a chain
    /// step retried after publishing its group, a producer posting again)
    /// is not tracked again, so its callback never runs twice.
    fired: HashSet<String>,
}

impl Chords {
    fn add(&mut self, record: ChordRecord) {
        if self.chords.contains_key(&record.id)
            || self.fired.contains(&record.id)
            || record.size == 0
        {
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
                aborted: None,
                record,
            },
        );
    }

    /// Applies an event; returns the group id if the chord became complete.
    fn apply(&mut self, event: &TaskEvent) -> Option<String> {
        if let Some(group) = self.callbacks.get(&event.task_id).cloned() {
            // The callback was published (by us or an earlier leader).
            self.forget(&group);
            self.fired.insert(group);
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
        chord.outcomes[slot] = Some(outcome.to_string().into_boxed_str());
        (chord.done == chord.outcomes.len()).then_some(group)
    }

    /// Applies an abort record; returns the group id if it was tracked.
    fn abort(&mut self, abort: ChordAbort) -> Option<String> {
        let chord = self.chords.get_mut(&abort.id)?;
        let group = abort.id.clone();
        chord.aborted = Some(abort);
        Some(group)
    }

    /// The chords whose callback is due: complete, or aborted.
    fn complete(&self) -> Vec<String> {
        self.chords
            .iter()
            .filter(|(_, c)| c.done == c.outcomes.len() || c.aborted.is_some())
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
/// nothing) up to this leader's own mark, then live, publishing each
/// callback once its chord completes.
pub async fn track(
    connection: &Connection,
    names: &Names,
    identity: &str,
) -> Result<(), TrackError> {
    // The reader channel lives as long as the tracking does.
    let (_reader, mut consumer) =
        crate::leader::read_stream(connection, names, AMQPValue::LongString("first".into()))
            .await?;
    let writer = connection.create_channel().await?;
    writer.tx_select().await?;
    let mark = write_mark(connection, names, identity).await?;
    let mut chords = Chords::default();
    let mut live = false;
    loop {
        let Some(delivery) = consumer.next().await else {
            return Err(TrackError::LockLost);
        };
        let delivery = delivery?;
        let _ = delivery.acker.ack(BasicAckOptions::default()).await;
        let content_type = delivery
            .properties
            .content_type()
            .as_ref()
            .map(|c| c.as_str());
        match content_type {
            Some(CHORD_CONTENT_TYPE) => {
                match serde_json::from_slice::<ChordRecord>(&delivery.data) {
                    Ok(record) => chords.add(record),
                    Err(e) => warn!(error = %e, "Skipped a chord record that does not parse."),
                }
                continue;
            }
            Some(CHORD_ABORT_CONTENT_TYPE) => {
                match serde_json::from_slice::<ChordAbort>(&delivery.data) {
                    Ok(abort) => {
                        if let Some(group) = chords.abort(abort)
                            && live
                        {
                            fire(&writer, connection, names, identity, &mut chords, &group).await?;
                        }
                    }
                    Err(e) => {
                        warn!(error = %e, "Skipped a chord abort record that does not parse.")
                    }
                }
                continue;
            }
            Some(MARK_CONTENT_TYPE) => {
                let ours = delivery
                    .properties
                    .message_id()
                    .as_ref()
                    .is_some_and(|id| id.as_str() == mark);
                if ours && !live {
                    live = catch_up(&writer, connection, names, identity, &mut chords).await?;
                }
                continue;
            }
            _ => {}
        }
        let Ok(events) = envelope::decode(
            content_type,
            delivery.properties.kind().as_ref().map(|k| k.as_str()),
            &delivery.data,
        ) else {
            continue;
        };
        for event in events {
            if let Some(group) = chords.apply(&event)
                && live
            {
                fire(&writer, connection, names, identity, &mut chords, &group).await?;
            }
        }
    }
}

/// Writes this leader's catch-up mark to the events stream, confirmed, and
/// returns its id: everything an earlier leader committed is before it.
async fn write_mark(
    connection: &Connection,
    names: &Names,
    identity: &str,
) -> Result<String, TrackError> {
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let id = uuid::Uuid::now_v7().to_string();
    let body = serde_json::to_vec(&json!({ "by": identity, "id": id }))?;
    let properties = BasicProperties::default()
        .with_content_type(MARK_CONTENT_TYPE.into())
        .with_type(MARK_MESSAGE_TYPE.into())
        .with_message_id(id.clone().into())
        .with_timestamp(u64::try_from(chrono::Utc::now().timestamp()).unwrap_or(0));
    let confirm = channel
        .basic_publish(
            names.events_exchange().as_str().into(),
            "conductor.mark".into(),
            BasicPublishOptions::default(),
            &body,
            properties,
        )
        .await?
        .await?;
    let _ = channel.close(200, "marked".into()).await;
    if !confirm.is_ack() {
        return Err(TrackError::MarkNotConfirmed);
    }
    info!(mark = %id, "Wrote the catch-up mark; reading the events stream up to it.");
    Ok(id)
}

/// History read up to the mark: fires every chord that completed while no
/// leader was watching (or whose callback the last leader did not commit).
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
    // Every slot, in member order; an aborted chord's unfinished members
    // say so.
    let outcomes: Vec<Value> = chord
        .outcomes
        .iter()
        .enumerate()
        .map(|(i, o)| match o {
            Some(o) => serde_json::from_str(o).unwrap_or(Value::Null),
            None => {
                let n = u32::try_from(i + 1).unwrap_or(u32::MAX);
                let published = chord.aborted.as_ref().is_none_or(|a| n <= a.published);
                json!({
                    "id": record.member_id(n),
                    "state": if published { "unfinished" } else { "not_published" },
                })
            }
        })
        .collect();
    let failed: Vec<&Value> = outcomes
        .iter()
        .filter(|o| o["state"] == "dead_lettered")
        .collect();
    let id = record.callback_id();
    let task_type = record.callback.task_type.as_str();
    let body = serde_json::to_vec(&record.callback_body(outcomes.clone()))?;
    let priority = record.callback.priority.unwrap_or(0);
    let mut properties = task_properties(&id, task_type, priority);
    // A callback followed by steps carries their routing slip (checked by
    // the producer); its parking-lot copy keeps it, so a replay resumes.
    if let Some(slip) = record.callback_slip() {
        match slip.to_json() {
            Ok(json) => {
                let mut hdrs = properties.headers().clone().unwrap_or_default();
                contract::set_str(&mut hdrs, headers::CHAIN, json);
                properties = properties.with_headers(hdrs);
            }
            Err(e) => {
                warn!(group, error = %e, "Sent a chord's callback without the steps after it.")
            }
        }
    }
    let mut event;
    let parked = match &chord.aborted {
        Some(abort) => Some((ABORTED, abort_reason(abort))),
        None if record.on_failure == OnFailure::Skip && !failed.is_empty() => {
            Some((MEMBER_FAILED, failure_reason(&failed, outcomes.len())))
        }
        None => None,
    };
    let (exchange, key) = if let Some((kind, reason)) = parked {
        let mut hdrs = properties.headers().clone().unwrap_or_default();
        contract::set_str(
            &mut hdrs,
            headers::DEAD_REASON,
            DeadReason::Permanent.as_str(),
        );
        contract::set_str(&mut hdrs, headers::ERROR_KIND, kind);
        contract::set_str(&mut hdrs, headers::ERROR, reason.clone());
        contract::set_str(&mut hdrs, headers::WORKER, identity);
        properties = properties.with_headers(hdrs);
        event = TaskEvent::new(&id, task_type, TaskState::DeadLettered, 1);
        event.reason = Some(DeadReason::Permanent.as_str().to_owned());
        event.error_kind = Some(kind.to_owned());
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
    chords.fired.insert(group.to_owned());
    Ok(())
}

/// Why an aborted chord's callback is parked.
fn abort_reason(abort: &ChordAbort) -> String {
    let mut reason = format!(
        "the chord was aborted by its producer: only {} of {} members were published: {}",
        abort.published, abort.size, abort.reason
    );
    truncate(&mut reason);
    reason
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
    truncate(&mut reason);
    reason
}

/// At most 4 KiB of reason, cut at a character boundary.
fn truncate(reason: &mut String) {
    if reason.len() > 4096 {
        let mut end = 4096;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
        reason.push_str("...");
    }
}

#[cfg(test)]
// A failing unwrap is how a test reports failure.
#[allow(clippy::unwrap_used)]
mod tests {
    use warren::workflow::Step;

    use super::*;

    /// The process's resident memory, in bytes (Linux).
    fn rss() -> i64 {
        let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
        let pages: i64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
        pages * 4096
    }

    fn record(group: &str, size: u32) -> ChordRecord {
        ChordRecord {
            id: group.to_owned(),
            size,
            callback: Step::new("pipeline.report", json!({})),
            on_failure: OnFailure::Run,
            next: Vec::new(),
            chain: None,
        }
    }

    #[test]
    fn a_record_seen_again_after_its_callback_is_not_tracked_again() {
        let r = record("g", 1);
        let mut chords = Chords::default();
        chords.add(r.clone());
        assert_eq!(chords.apply(&succeeded(&r, 1)), Some("g".to_owned()));
        let callback = TaskEvent::new(&r.callback_id(), "pipeline.report", TaskState::Queued, 1);
        assert_eq!(chords.apply(&callback), None);
        // The same record again (a retried chain step published its group
        // twice), and its member's event again: nothing fires.
        chords.add(r.clone());
        assert_eq!(chords.apply(&succeeded(&r, 1)), None);
        assert!(chords.complete().is_empty());
    }

    /// A member's `succeeded` event with the pipeline's small result.
    fn succeeded(record: &ChordRecord, n: u32) -> TaskEvent {
        let mut event = TaskEvent::new(
            &record.member_id(n),
            "pipeline.process",
            TaskState::Succeeded,
            1,
        );
        event.result = Some(json!({ "id": format!("m{n}"), "value": n }));
        event
    }

    /// The memory a leader holds per open chord, measured as the growth of
    /// the process's resident memory: docs/workflows.md (Limits) quotes the
    /// figures this prints, run alone (`cargo test -p conductor --lib
    /// memory -- --nocapture`) so no other test's memory counts.
    #[test]
    fn memory_per_tracked_chord_is_measured_and_released_when_chords_complete() {
        const CHORDS: u32 = 20;
        const MEMBERS: u32 = 1000;
        let records: Vec<ChordRecord> = (0..CHORDS)
            .map(|c| record(&format!("0192f0c4-7a3e-7cc1-9a55-{c:012}"), MEMBERS))
            .collect();
        let mut chords = Chords::default();
        let before = rss();
        for r in &records {
            chords.add(r.clone());
        }
        let opened = rss() - before;
        // Every member but the last of each chord finished.
        for r in &records {
            for n in 1..MEMBERS {
                assert_eq!(chords.apply(&succeeded(r, n)), None);
            }
        }
        let waiting = rss() - before;
        assert_eq!(chords.chords.len(), CHORDS as usize);
        assert_eq!(chords.members.len(), (CHORDS * MEMBERS) as usize);
        let per_chord_open = opened / i64::from(CHORDS);
        let per_chord_waiting = waiting / i64::from(CHORDS);
        let per_result = (waiting - opened) / i64::from(CHORDS * (MEMBERS - 1));
        eprintln!(
            "{CHORDS} chords of {MEMBERS} members: {per_chord_open} B per chord just opened \
             ({} B per member), {per_chord_waiting} B per chord with every result but one in \
             ({per_result} B more per finished member)",
            per_chord_open / i64::from(MEMBERS)
        );
        // The last members complete each chord; once fired (forgotten), a
        // chord holds nothing.
        for r in &records {
            assert_eq!(chords.apply(&succeeded(r, MEMBERS)), Some(r.id.clone()));
            chords.forget(&r.id);
        }
        assert!(chords.chords.is_empty() && chords.members.is_empty());
        assert!(chords.callbacks.is_empty() && chords.complete().is_empty());
    }
}
