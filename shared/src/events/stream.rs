//! Reading the events stream from its first retained event, then
//! following it: every reader builds the same view, and a restarted one
//! rebuilds it, without a database.

use futures::{Stream, StreamExt};
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection};

use super::TaskEvent;
use crate::contract::{Names, broker_headers};

/// An event read from the stream, with its offset (unique and increasing).
#[derive(Debug, Clone)]
pub struct StreamedEvent {
    pub offset: u64,
    pub event: TaskEvent,
}

/// Where reading the stream starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamStart {
    /// Its first retained event.
    First,
    /// The events written from now on.
    Next,
    /// The event at this offset (the one after the last applied, for a
    /// reader that resumes).
    Offset(u64),
}

/// Reads the stream from its first retained event, then follows it. Each
/// item is acked as it is read (streams need acks to keep credit flowing;
/// acking does not remove anything). Unreadable entries are skipped.
pub async fn follow(
    connection: &Connection,
    names: &Names,
) -> Result<
    impl Stream<Item = Result<StreamedEvent, lapin::Error>> + Send + 'static + use<>,
    lapin::Error,
> {
    follow_from(connection, names, StreamStart::First).await
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
    let offset = match start {
        StreamStart::First => AMQPValue::LongString("first".into()),
        StreamStart::Next => AMQPValue::LongString("next".into()),
        StreamStart::Offset(n) => AMQPValue::LongLongInt(i64::try_from(n).unwrap_or(i64::MAX)),
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
    let stream = consumer.filter_map(move |delivery| {
        let channel = channel.clone();
        async move {
            let delivery = match delivery {
                Ok(d) => d,
                Err(e) => return Some(Err(e)),
            };
            let offset = delivery
                .properties
                .headers()
                .as_ref()
                .and_then(|h| match h.inner().get(broker_headers::STREAM_OFFSET) {
                    Some(AMQPValue::LongLongInt(n)) => u64::try_from(*n).ok(),
                    Some(AMQPValue::LongUInt(n)) => Some(u64::from(*n)),
                    Some(AMQPValue::LongInt(n)) => u64::try_from(*n).ok(),
                    _ => None,
                })
                .unwrap_or(0);
            let _ = delivery.acker.ack(BasicAckOptions::default()).await;
            drop(channel);
            match serde_json::from_slice::<TaskEvent>(&delivery.data) {
                Ok(event) => Some(Ok(StreamedEvent { offset, event })),
                Err(e) => {
                    tracing::debug!(error = %e, offset, "Skipped an unreadable task event.");
                    None
                }
            }
        }
    });
    Ok(stream)
}
