//! Task events on the real RabbitMQ: published in confirmed envelopes,
//! unpacked by the stream reader one event at a time, next to single
//! events as Warren wrote them before envelopes; and a reader resuming
//! from a saved position.

use std::time::Duration;

use futures::StreamExt;
use lapin::BasicProperties;
use warren::contract::{CONTENT_TYPE_JSON, EVENT_MESSAGE_TYPE, PERSISTENT};
use warren::events::{self, Batching, EventPublisher, StreamedEvent, TaskEvent, TaskState};
use warren_tests::WAIT;
use warren_tests::broker::TestBroker;

/// Reads `n` events from `stream`, failing after [`WAIT`].
async fn read<S>(stream: &mut S, n: usize) -> Vec<StreamedEvent>
where
    S: futures::Stream<Item = Result<StreamedEvent, lapin::Error>> + Unpin,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let next = tokio::time::timeout_at(deadline, stream.next())
            .await
            .unwrap_or_else(|_| panic!("{} of {n} events within the deadline", out.len()))
            .expect("the stream goes on")
            .unwrap();
        out.push(next);
    }
    out
}

#[tokio::test]
async fn events_go_out_in_confirmed_envelopes_and_readers_unpack_old_and_new() {
    let broker = TestBroker::new().await.unwrap();
    let names = broker.names.clone();
    events::declare_stream(&broker.connection, &names, Duration::from_secs(3600))
        .await
        .unwrap();
    let publisher = EventPublisher::new(
        &names,
        Batching {
            max_events: 64,
            max_delay: Duration::from_millis(20),
        },
    );
    let connection = std::sync::Arc::new(
        warren_tests::broker::connect(warren_tests::broker::AMQP_URL)
            .await
            .unwrap(),
    );
    publisher.attach(&connection).await.unwrap();

    // A single event, as Warren wrote them before envelopes.
    let old = TaskEvent::new("old-1", "email.send", TaskState::Queued, 1);
    let properties = BasicProperties::default()
        .with_content_type(CONTENT_TYPE_JSON.into())
        .with_type(EVENT_MESSAGE_TYPE.into())
        .with_delivery_mode(PERSISTENT);
    broker
        .publisher
        .publish_confirmed(
            &names.events_exchange(),
            "email.send.queued",
            &serde_json::to_vec(&old).unwrap(),
            properties,
        )
        .await
        .unwrap();

    let mut sent = Vec::new();
    for i in 0..150 {
        for state in [TaskState::Running, TaskState::Succeeded] {
            let event = TaskEvent::new(&format!("t-{i}"), "email.send", state, 1);
            sent.push(event.clone());
            publisher.emit(event).await;
        }
    }
    assert!(
        publisher.flush(WAIT).await,
        "every event is confirmed by the broker"
    );

    let mut stream = Box::pin(events::follow(&broker.connection, &names).await.unwrap());
    let read_back = read(&mut stream, 1 + sent.len()).await;
    assert_eq!(read_back[0].event, old, "the old single event comes first");
    let events: Vec<TaskEvent> = read_back[1..].iter().map(|s| s.event.clone()).collect();
    assert_eq!(events, sent, "every event, in the order it was emitted");
    let positions: Vec<u64> = read_back.iter().map(|s| s.offset).collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "positions are unique and increasing"
    );
    let mut messages: Vec<u64> = read_back[1..]
        .iter()
        .map(StreamedEvent::stream_offset)
        .collect();
    messages.dedup();
    assert!(
        messages.len() >= sent.len().div_ceil(64) && messages.len() < sent.len() / 4,
        "300 events in envelopes of at most 64: {} messages",
        messages.len()
    );

    // A reader that saved the position of the 100th event resumes right
    // after it, in the middle of an envelope or not.
    let saved = read_back[100].offset;
    let mut resumed = Box::pin(
        events::follow_after(&broker.connection, &names, Some(saved))
            .await
            .unwrap(),
    );
    let rest = read(&mut resumed, read_back.len() - 101).await;
    assert_eq!(rest[0].offset, read_back[101].offset);
    assert_eq!(
        rest.iter().map(|s| s.event.clone()).collect::<Vec<_>>(),
        read_back[101..]
            .iter()
            .map(|s| s.event.clone())
            .collect::<Vec<_>>()
    );
    broker.cleanup().await.unwrap();
}
