//! Reading the events stream from its first retained event (or from where
//! a reader left off), then following it: every reader builds the same
//! view, and a restarted one rebuilds it, without a database.
//!
//! Readers see single events: each message (an envelope, or a single event
//! as written before envelopes) is unpacked here, and each event gets a
//! position ([`StreamedEvent::offset`]) that is unique and increasing.

use futures::{Stream, StreamExt};
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection};

use super::TaskEvent;
use super::envelope;
use crate::contract::{Names, broker_headers};

/// An event read from the stream, with its position.
#[derive(Debug, Clone)]
pub struct StreamedEvent {
    /// Unique and increasing: the stream offset of the message that holds
    /// the event times 2^16, plus the event's index in that message (see
    /// [`envelope::position`]). [`StreamedEvent::stream_offset`] gives the
    /// stream offset back.
    pub offset: u64,
    /// The event.
    pub event: TaskEvent,
}

impl StreamedEvent {
    /// The stream offset of the message (envelope) that held this event.
    pub fn stream_offset(&self) -> u64 {
        envelope::stream_offset(self.offset)
    }
}

/// Where reading the stream starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamStart {
    /// Its first retained event.
    First,
    /// The events written from now on.
    Next,
    /// After the event at this position (a [`StreamedEvent::offset`] a
    /// reader applied and saved): reading starts at the message that held
    /// it, and it and the events before it are skipped.
    After(u64),
}

/// Reads the stream from its first retained event, then follows it. Each
/// message is acked as it is read (streams need acks to keep credit
/// flowing; acking does not remove anything), and unpacked into its
/// events. Unreadable messages are skipped.
pub async fn follow(
    connection: &Connection,
    names: &Names,
) -> Result<
    impl Stream<Item = Result<StreamedEvent, lapin::Error>> + Send + 'static + use<>,
    lapin::Error,
> {
    follow_after(connection, names, None).await
}

/// [`follow`], resuming after the event at position `after` (an
/// [`StreamedEvent::offset`] a reader applied and saved): reading starts at
/// the message that held it, and it and the events before it are skipped.
/// `None` reads from the first retained event.
pub async fn follow_after(
    connection: &Connection,
    names: &Names,
    after: Option<u64>,
) -> Result<
    impl Stream<Item = Result<StreamedEvent, lapin::Error>> + Send + 'static + use<>,
    lapin::Error,
> {
    let start = after.map_or(StreamStart::First, StreamStart::After);
    follow_from(connection, names, start).await
}

/// Reads the stream from `start`, then follows it, as [`follow`] does.
pub async fn follow_from(
    connection: &Connection,
    names: &Names,
    start: StreamStart,
) -> Result<
    impl Stream<Item = Result<StreamedEvent, lapin::Error>> + Send + 'static + use<>,
    lapin::Error,
> {
    let channel = connection.create_channel().await?;
    follow_on(&channel, names, start).await
}

/// Reads the stream from `start` on `channel` (which the caller may close
/// when done), as [`follow_from`] does.
pub async fn follow_on(
    channel: &Channel,
    names: &Names,
    start: StreamStart,
) -> Result<
    impl Stream<Item = Result<StreamedEvent, lapin::Error>> + Send + 'static + use<>,
    lapin::Error,
> {
    let channel = channel.clone();
    // Streams require a prefetch; it bounds how far ahead the broker sends.
    channel.basic_qos(1000, BasicQosOptions::default()).await?;
    let mut args = FieldTable::default();
    let (offset, after) = match start {
        StreamStart::First => (AMQPValue::LongString("first".into()), None),
        StreamStart::Next => (AMQPValue::LongString("next".into()), None),
        StreamStart::After(position) => (
            AMQPValue::LongLongInt(
                i64::try_from(envelope::stream_offset(position)).unwrap_or(i64::MAX),
            ),
            Some(position),
        ),
    };
    args.insert(broker_headers::STREAM_OFFSET.into(), offset);
    let consumer = channel
        .basic_consume(
            names.events_stream().into(),
            "".into(),
            BasicConsumeOptions::default(),
            args,
        )
        .await?;
    let stream = consumer
        .then(move |delivery| {
            let channel = channel.clone();
            async move {
                let delivery = delivery?;
                let _ = delivery.acker.ack(BasicAckOptions::default()).await;
                drop(channel);
                Ok(unpack(&delivery))
            }
        })
        .flat_map(|unpacked: Result<Vec<StreamedEvent>, lapin::Error>| {
            let items: Vec<Result<StreamedEvent, lapin::Error>> = match unpacked {
                Ok(events) => events.into_iter().map(Ok).collect(),
                Err(e) => vec![Err(e)],
            };
            futures::stream::iter(items)
        })
        .filter(move |item| {
            let keep = match (item, after) {
                (Ok(streamed), Some(after)) => streamed.offset > after,
                _ => true,
            };
            std::future::ready(keep)
        });
    Ok(stream)
}

/// The events of one delivery from the stream, with their positions; none
/// if it cannot be read.
fn unpack(delivery: &lapin::message::Delivery) -> Vec<StreamedEvent> {
    let properties = &delivery.properties;
    let offset = stream_offset_of(properties.headers().as_ref());
    let decoded = envelope::decode(
        properties.content_type().as_ref().map(|c| c.as_str()),
        properties.kind().as_ref().map(|k| k.as_str()),
        &delivery.data,
    );
    match decoded {
        Ok(events) => events
            .into_iter()
            .enumerate()
            .map(|(index, event)| StreamedEvent {
                offset: envelope::position(offset, index),
                event,
            })
            .collect(),
        Err(e @ envelope::DecodeError::UnknownFormat(_)) => {
            tracing::warn!(error = %e, offset, "Skipped a message of the events stream that this reader cannot read (is a newer Warren writing?).");
            Vec::new()
        }
        Err(e) => {
            tracing::debug!(error = %e, offset, "Skipped an unreadable task event.");
            Vec::new()
        }
    }
}

fn stream_offset_of(headers: Option<&FieldTable>) -> u64 {
    headers
        .and_then(|h| match h.inner().get(broker_headers::STREAM_OFFSET) {
            Some(AMQPValue::LongLongInt(n)) => u64::try_from(*n).ok(),
            Some(AMQPValue::LongUInt(n)) => Some(u64::from(*n)),
            Some(AMQPValue::LongInt(n)) => u64::try_from(*n).ok(),
            _ => None,
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use lapin::BasicProperties;
    use lapin::message::Delivery;

    use super::*;
    use crate::contract::{CONTENT_TYPE_JSON, EVENT_MESSAGE_TYPE};
    use crate::events::TaskState;

    fn delivery(offset: i64, properties: BasicProperties, body: Vec<u8>) -> Delivery {
        let mut headers = FieldTable::default();
        headers.insert(
            broker_headers::STREAM_OFFSET.into(),
            AMQPValue::LongLongInt(offset),
        );
        let mut d = Delivery::mock(1, "".into(), "".into(), false, body);
        d.properties = properties.with_headers(headers);
        d
    }

    #[test]
    fn old_single_events_and_envelopes_both_unpack_in_order() {
        let queued = TaskEvent::new("t1", "email.send", TaskState::Queued, 1);
        let single = delivery(
            4,
            BasicProperties::default()
                .with_content_type(CONTENT_TYPE_JSON.into())
                .with_type(EVENT_MESSAGE_TYPE.into()),
            serde_json::to_vec(&queued).unwrap_or_default(),
        );
        let batch = vec![
            TaskEvent::new("t1", "email.send", TaskState::Running, 1),
            TaskEvent::new("t1", "email.send", TaskState::Succeeded, 1),
        ];
        let packed = delivery(
            5,
            envelope::properties(0),
            envelope::encode(&batch).unwrap_or_default(),
        );
        let mut read = unpack(&single);
        read.extend(unpack(&packed));
        let states: Vec<_> = read.iter().map(|s| s.event.state).collect();
        assert_eq!(
            states,
            [TaskState::Queued, TaskState::Running, TaskState::Succeeded]
        );
        let offsets: Vec<_> = read.iter().map(|s| s.offset).collect();
        assert!(offsets.windows(2).all(|w| w[0] < w[1]), "{offsets:?}");
        let streams: Vec<_> = read.iter().map(StreamedEvent::stream_offset).collect();
        assert_eq!(streams, [4, 5, 5]);
    }

    #[test]
    fn an_unreadable_message_unpacks_to_nothing() {
        let bad = delivery(
            9,
            envelope::properties(0).with_content_type("application/x-unknown".into()),
            b"[]".to_vec(),
        );
        assert!(unpack(&bad).is_empty());
        let garbled = delivery(10, envelope::properties(0), b"[{".to_vec());
        assert!(unpack(&garbled).is_empty());
    }
}
