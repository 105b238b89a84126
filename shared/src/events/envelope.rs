//! The envelope: many task events in one AMQP message, so the broker routes
//! and stores one message where it used to handle dozens.
//!
//! Version 1 is a JSON array of events, oldest first, with `content_type`
//! [`EVENT_ENVELOPE_CONTENT_TYPE`] and `type` [`EVENT_ENVELOPE_MESSAGE_TYPE`].
//! Readers also take the single-event messages Warren wrote before
//! envelopes (`application/json`, `type` [`EVENT_MESSAGE_TYPE`]), so a
//! stream that holds both decodes whole.
//!
//! Each event read from the stream gets a position that is unique and
//! increasing, as the stream offset of a single event used to be: the
//! envelope's stream offset times 2^16, plus the event's index in it.
//!
//! [`EVENT_ENVELOPE_CONTENT_TYPE`]: crate::contract::EVENT_ENVELOPE_CONTENT_TYPE
//! [`EVENT_ENVELOPE_MESSAGE_TYPE`]: crate::contract::EVENT_ENVELOPE_MESSAGE_TYPE
//! [`EVENT_MESSAGE_TYPE`]: crate::contract::EVENT_MESSAGE_TYPE

use lapin::BasicProperties;

use super::TaskEvent;
use crate::contract::{
    CONTENT_TYPE_JSON, EVENT_ENVELOPE_CONTENT_TYPE, EVENT_ENVELOPE_MESSAGE_TYPE,
    EVENT_MESSAGE_TYPE, PERSISTENT,
};

/// Bits of an event's position that hold its index in its envelope.
pub const INDEX_BITS: u32 = 16;

/// Most events one envelope may hold: every index fits in [`INDEX_BITS`].
pub const MAX_ENVELOPE_EVENTS: usize = 1 << INDEX_BITS;

/// The position of the `index`th event of the envelope at `stream_offset`.
pub fn position(stream_offset: u64, index: usize) -> u64 {
    (stream_offset << INDEX_BITS) | (index as u64 & (MAX_ENVELOPE_EVENTS as u64 - 1))
}

/// The stream offset of the envelope holding the event at `position`.
pub fn stream_offset(position: u64) -> u64 {
    position >> INDEX_BITS
}

/// Why a message from the events stream could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// A content type this reader does not know.
    #[error("content type {0:?} is not a task event or an envelope version this reader knows")]
    UnknownFormat(String),
    /// The body does not parse.
    #[error("the body is not valid: {0}")]
    Body(#[from] serde_json::Error),
    /// An envelope with more events than a reader accepts.
    #[error("the envelope holds {0} events, more than {MAX_ENVELOPE_EVENTS}")]
    TooLarge(usize),
}

/// The routing key of an envelope: `{task type}.batch` when all its events
/// share a task type (a worker's usually do), else `batch`. Bindings such
/// as `email.send.#` keep working; `#` takes everything.
pub fn routing_key(events: &[TaskEvent]) -> String {
    match events.split_first() {
        Some((first, rest)) if rest.iter().all(|e| e.task_type == first.task_type) => {
            format!("{}.batch", first.task_type)
        }
        _ => "batch".to_owned(),
    }
}

/// The body of an envelope.
pub fn encode(events: &[TaskEvent]) -> Result<Vec<u8>, serde_json::Error> {
    serde_json::to_vec(events)
}

/// The AMQP properties of an envelope whose newest event happened at
/// `newest_at` (seconds since the epoch).
pub fn properties(newest_at: i64) -> BasicProperties {
    BasicProperties::default()
        .with_content_type(EVENT_ENVELOPE_CONTENT_TYPE.into())
        .with_delivery_mode(PERSISTENT)
        .with_type(EVENT_ENVELOPE_MESSAGE_TYPE.into())
        .with_message_id(uuid::Uuid::now_v7().to_string().into())
        .with_timestamp(u64::try_from(newest_at).unwrap_or(0))
}

/// The events of one message from the events stream: an envelope, or a
/// single event as written before envelopes (`application/json` or no
/// content type, `type` `warren.task_event` or none).
pub fn decode(
    content_type: Option<&str>,
    kind: Option<&str>,
    body: &[u8],
) -> Result<Vec<TaskEvent>, DecodeError> {
    match content_type {
        Some(EVENT_ENVELOPE_CONTENT_TYPE) => {
            let events: Vec<TaskEvent> = serde_json::from_slice(body)?;
            if events.len() > MAX_ENVELOPE_EVENTS {
                return Err(DecodeError::TooLarge(events.len()));
            }
            Ok(events)
        }
        // A chord's record (`crate::workflow::ChordRecord`), its abort
        // record and the conductor's catch-up mark, for the conductor: no
        // task events in them.
        Some(crate::workflow::CHORD_CONTENT_TYPE)
        | Some(crate::workflow::CHORD_ABORT_CONTENT_TYPE)
        | Some(crate::workflow::MARK_CONTENT_TYPE) => Ok(Vec::new()),
        // A chain's or group's record (`crate::workflow::WorkflowRecord`),
        // for the gateway: no task events in it either.
        Some(crate::workflow::WORKFLOW_CONTENT_TYPE) => Ok(Vec::new()),
        None | Some(CONTENT_TYPE_JSON)
            if kind.is_none_or(|k| k == EVENT_MESSAGE_TYPE || k.is_empty()) =>
        {
            Ok(vec![serde_json::from_slice(body)?])
        }
        other => Err(DecodeError::UnknownFormat(
            other.unwrap_or_default().to_owned(),
        )),
    }
}

#[cfg(test)]
// A failing unwrap is how a test reports failure.
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::events::TaskState;

    fn events() -> Vec<TaskEvent> {
        let mut done = TaskEvent::new("t1", "email.send", TaskState::Succeeded, 1);
        done.result = Some(serde_json::json!({"message_id": "<a@b>"}));
        vec![
            TaskEvent::new("t1", "email.send", TaskState::Running, 1),
            done,
            TaskEvent::new("t2", "email.send", TaskState::Running, 1),
        ]
    }

    #[test]
    fn an_envelope_round_trips_in_order() {
        let sent = events();
        let body = encode(&sent).unwrap();
        let props = properties(sent[2].at.timestamp());
        let content_type = props.content_type().as_ref().map(|c| c.as_str());
        let kind = props.kind().as_ref().map(|k| k.as_str());
        assert_eq!(content_type, Some(EVENT_ENVELOPE_CONTENT_TYPE));
        assert_eq!(kind, Some(EVENT_ENVELOPE_MESSAGE_TYPE));
        assert_eq!(*props.delivery_mode(), Some(PERSISTENT));
        assert_eq!(decode(content_type, kind, &body).unwrap(), sent);
        // Version 1 is a plain JSON array of events.
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json[1]["state"], "succeeded");
        assert_eq!(json.as_array().unwrap().len(), 3);
    }

    #[test]
    fn a_single_event_as_written_before_envelopes_still_decodes() {
        let one = TaskEvent::new("t1", "email.send", TaskState::Queued, 1);
        let body = serde_json::to_vec(&one).unwrap();
        for (content_type, kind) in [
            (Some(CONTENT_TYPE_JSON), Some(EVENT_MESSAGE_TYPE)),
            (Some(CONTENT_TYPE_JSON), None),
            (None, None),
        ] {
            assert_eq!(
                decode(content_type, kind, &body).unwrap(),
                vec![one.clone()]
            );
        }
    }

    #[test]
    fn unknown_versions_and_bad_bodies_are_errors() {
        let body = encode(&events()).unwrap();
        let v2 = "application/vnd.warren.task-events.v2+json";
        assert!(matches!(
            decode(Some(v2), Some(EVENT_ENVELOPE_MESSAGE_TYPE), &body),
            Err(DecodeError::UnknownFormat(c)) if c == v2
        ));
        assert!(matches!(
            decode(Some(CONTENT_TYPE_JSON), Some("email.send"), b"{}"),
            Err(DecodeError::UnknownFormat(_))
        ));
        assert!(matches!(
            decode(
                Some(EVENT_ENVELOPE_CONTENT_TYPE),
                None,
                b"[{\"task_id\":1}]"
            ),
            Err(DecodeError::Body(_))
        ));
        assert!(matches!(
            decode(Some(CONTENT_TYPE_JSON), None, b"not json"),
            Err(DecodeError::Body(_))
        ));
    }

    #[test]
    fn positions_are_unique_increasing_and_give_back_the_offset() {
        let a = position(7, 0);
        let b = position(7, 1);
        let c = position(7, MAX_ENVELOPE_EVENTS - 1);
        let d = position(8, 0);
        assert!(a < b && b < c && c < d);
        assert_eq!(position(0, 0), 0);
        for p in [a, b, c] {
            assert_eq!(stream_offset(p), 7);
        }
        assert_eq!(stream_offset(d), 8);
    }

    #[test]
    fn an_envelope_of_one_task_type_is_routed_by_it() {
        let mut evs = events();
        assert_eq!(routing_key(&evs), "email.send.batch");
        evs.push(TaskEvent::new(
            "t3",
            "image.thumbnail",
            TaskState::Running,
            1,
        ));
        assert_eq!(routing_key(&evs), "batch");
        assert_eq!(routing_key(&[]), "batch");
    }
}
