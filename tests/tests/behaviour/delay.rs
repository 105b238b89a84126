//! The delay cascade against the real RabbitMQ: long delays and ETAs wait
//! in its level queues (nothing held by any process), a delay arrives on
//! time to the second, several arrive in due order, only at their
//! destination queue; and a task published to the tasks exchange with a
//! delay header is deferred by the worker that receives it early.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions};
use lapin::types::FieldTable;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use warren::contract::{self, headers};
use warren::settings::ConsumerSettings;
use warren::topology::Topology;
use warren::topology::delay::DELAY_LEVELS;
use warren::{Outcome, PublishOptions, Task, TaskContext, TaskError, Worker, task_properties};
use warren_tests::WAIT;
use warren_tests::broker::TestBroker;

/// Polls `f` until it answers, for up to `timeout`.
async fn poll<T, F, Fut>(timeout: Duration, f: F) -> Option<T>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A queue's messages as they arrive: (message id, when).
async fn arrivals(broker: &TestBroker, queue: &str) -> Arc<Mutex<Vec<(String, Instant)>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let channel = broker.connection.create_channel().await.unwrap();
    let mut consumer = channel
        .basic_consume(
            queue.into(),
            "delay-test".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let out = seen.clone();
    tokio::spawn(async move {
        let _channel = channel;
        while let Some(Ok(d)) = consumer.next().await {
            let id = d
                .properties
                .message_id()
                .as_ref()
                .map(|s| s.to_string())
                .unwrap_or_default();
            out.lock().await.push((id, Instant::now()));
            let _ = d.acker.ack(BasicAckOptions::default()).await;
        }
    });
    seen
}

fn body() -> serde_json::Value {
    json!({"to": "later@example.com", "subject": "Later", "text": "x"})
}

#[tokio::test]
async fn a_three_hour_delay_and_an_eta_tomorrow_sit_in_the_cascade() {
    let broker = TestBroker::with_own_delay_cascade().await.unwrap();
    broker.declare_email_topology(&[]).await.unwrap();
    broker
        .publish(
            "email.send",
            &body(),
            PublishOptions::default().delay(Duration::from_secs(3 * 3600)),
        )
        .await
        .unwrap();
    let tomorrow = chrono::Utc::now() + chrono::Duration::days(1);
    broker
        .publish(
            "email.send",
            &body(),
            PublishOptions::default().eta(tomorrow),
        )
        .await
        .unwrap();
    // 3 h = 10800 s: bits 13, 11, 9, 7, 6 and 5; it enters at level 13.
    // A day = 86400 s: highest bit 16.
    let level = |l: u32| broker.names.delay_level(l);
    let mut held = Vec::new();
    for l in 0..DELAY_LEVELS {
        let n = broker.depth(&level(l)).await.unwrap();
        if n > 0 {
            held.push((l, n));
        }
    }
    assert_eq!(held, vec![(13, 1), (16, 1)], "(level, messages)");
    assert_eq!(
        broker
            .depth(&broker.names.work_queue("email"))
            .await
            .unwrap(),
        0
    );
    broker.cleanup().await.unwrap();
}

/// A delay that passes through several levels of the cascade arrives, and
/// never before it is due. How late it may be is the bench's business, not
/// a test's: a loaded machine delays the test's own consumer.
#[tokio::test]
async fn a_seventy_second_delay_arrives_when_due_never_before() {
    let broker = TestBroker::new().await.unwrap();
    broker.declare_email_topology(&[]).await.unwrap();
    let seen = arrivals(&broker, &broker.names.work_queue("email")).await;
    let published = Instant::now();
    let delay = Duration::from_secs(70);
    broker
        .publish(
            "email.send",
            &body(),
            PublishOptions::default().delay(delay),
        )
        .await
        .unwrap();
    let arrived = poll(delay + WAIT, || {
        let seen = seen.clone();
        async move { seen.lock().await.first().map(|(_, at)| *at) }
    })
    .await
    .expect("the task arrives");
    let waited = arrived - published;
    // The clock started after the publish call began: a little under the
    // delay is still on time.
    assert!(
        waited >= delay - Duration::from_secs(1),
        "arrived early: after {waited:?}"
    );
    broker.cleanup().await.unwrap();
}

#[tokio::test]
async fn delays_of_five_three_and_one_second_arrive_in_due_order() {
    let broker = TestBroker::new().await.unwrap();
    broker.declare_email_topology(&[]).await.unwrap();
    let seen = arrivals(&broker, &broker.names.work_queue("email")).await;
    for s in [5, 3, 1] {
        broker
            .publish(
                "email.send",
                &body(),
                PublishOptions {
                    id: Some(format!("in-{s}s")),
                    ..Default::default()
                }
                .delay(Duration::from_secs(s)),
            )
            .await
            .unwrap();
    }
    let order = poll(WAIT, || {
        let seen = seen.clone();
        async move {
            let seen = seen.lock().await;
            (seen.len() == 3).then(|| seen.iter().map(|(id, _)| id.clone()).collect::<Vec<_>>())
        }
    })
    .await
    .expect("all three arrive");
    assert_eq!(order, ["in-1s", "in-3s", "in-5s"]);
    broker.cleanup().await.unwrap();
}

#[tokio::test]
async fn a_delayed_task_reaches_only_its_destination_queue() {
    let broker = TestBroker::new().await.unwrap();
    broker.declare_email_topology(&[]).await.unwrap();
    // Another worker's queue, and one bound to every task type.
    Topology::new(&broker.names, "image", &["image.#"], &[])
        .declare(&broker.connection)
        .await
        .unwrap();
    Topology::new(&broker.names, "all", &["#.send"], &[])
        .declare(&broker.connection)
        .await
        .unwrap();
    let email = broker.names.work_queue("email");
    broker
        .publish(
            "email.send",
            &body(),
            PublishOptions {
                id: Some("only-email".into()),
                ..Default::default()
            }
            .delay(Duration::from_secs(1)),
        )
        .await
        .unwrap();
    let got = broker.take(&email, 1, WAIT).await.unwrap();
    assert_eq!(got[0].message_id().as_deref(), Some("only-email"));
    let eta = contract::header_i64(got[0].properties.headers().as_ref(), headers::ETA_MS);
    assert!(eta.is_some(), "the due time is on the task");
    // The queue bound for `#.send` got its own copy, as from the tasks
    // exchange; the image queue and the unrouted queue got nothing.
    let all = broker.take(&broker.names.work_queue("all"), 1, WAIT).await;
    assert!(all.is_ok(), "the #.send queue gets its copy");
    assert_eq!(
        broker
            .depth(&broker.names.work_queue("image"))
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        broker.depth(&broker.names.delay_unrouted()).await.unwrap(),
        0
    );
    // A task type no queue is bound for waits in the unrouted queue.
    broker
        .publish(
            "report.build",
            &json!({}),
            PublishOptions::default().delay(Duration::from_secs(1)),
        )
        .await
        .unwrap();
    broker
        .take(&broker.names.delay_unrouted(), 1, WAIT)
        .await
        .unwrap();
    broker
        .cleanup_stems(&["email", "image", "all"], &[])
        .await
        .unwrap();
}

#[derive(Debug, Deserialize)]
struct Later {
    n: u32,
}

impl Task for Later {
    const TYPE: &'static str = "later.run";
}

#[tokio::test]
async fn a_task_with_a_delay_header_is_deferred_by_the_worker_and_runs_when_due() {
    let broker = TestBroker::new().await.unwrap();
    let ran: Arc<Mutex<Vec<(u32, Instant)>>> = Arc::default();
    let stop = CancellationToken::new();
    let mut handles = Vec::new();
    let mut statuses = Vec::new();
    // Two queues bound for the type: each runs the task once, not twice.
    for stem in ["later", "later2"] {
        let ran = ran.clone();
        let worker = Worker::new(
            "delay-test",
            stem,
            &["later.#"],
            broker.settings(),
            ConsumerSettings::default(),
        )
        .handle(move |_ctx: TaskContext, t: Later| {
            let ran = ran.clone();
            async move {
                ran.lock().await.push((t.n, Instant::now()));
                Ok::<_, TaskError>(Outcome::default())
            }
        });
        statuses.push(worker.status());
        let stop = stop.clone();
        handles.push(tokio::spawn(async move {
            let _ = worker.run(stop).await;
        }));
    }
    poll(WAIT, || async {
        statuses.iter().all(|s| s.is_ready()).then_some(())
    })
    .await
    .expect("both workers consume");
    let mut props = task_properties("deferred-1", "later.run", 0);
    let mut hdrs = props.headers().clone().unwrap_or_default();
    contract::set_int(&mut hdrs, headers::DELAY_MS, 2000);
    props = props.with_headers(hdrs);
    let published = Instant::now();
    broker
        .publish_raw("later.run", br#"{"n": 7}"#, props)
        .await
        .unwrap();
    let runs = poll(WAIT, || {
        let ran = ran.clone();
        async move {
            let ran = ran.lock().await;
            (ran.len() >= 2).then(|| ran.clone())
        }
    })
    .await
    .expect("both queues run it");
    for (n, at) in &runs {
        assert_eq!(*n, 7);
        assert!(
            *at - published >= Duration::from_millis(1900),
            "ran after {:?}",
            *at - published
        );
    }
    stop.cancel();
    for h in handles {
        let _ = h.await;
    }
    assert_eq!(ran.lock().await.len(), 2, "once per queue");
    broker
        .cleanup_stems(&["later", "later2"], &[])
        .await
        .unwrap();
}
