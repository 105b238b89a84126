//! The consumer runtime itself, in process, against the real RabbitMQ:
//! panics and timeouts are failed attempts, unknown task types and expired
//! tasks reach the parking lot, and the concurrency limit holds.
//!
//! Handlers here are test doubles of *application* code; the broker, the
//! queues and the runtime are the real ones.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::Duration;

use lapin::options::QueueDeleteOptions;
use serde::Deserialize;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use warren::PublishOptions;
use warren::Worker;
use warren::contract::headers;
use warren::settings::ConsumerSettings;
use warren::{Outcome, Task, TaskContext, TaskError};
use warren_tests::broker::TestBroker;
use warren_tests::{WAIT, wait_until};

const STEM: &str = "rt";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Ping {
    n: u32,
}

impl Task for Ping {
    const TYPE: &'static str = "rt.ping";
}

fn consumer(concurrency: usize, prefetch: u16) -> ConsumerSettings {
    ConsumerSettings {
        prefetch,
        concurrency,
        retry_delays: vec![Duration::from_millis(100), Duration::from_millis(200)],
        task_timeout: Duration::from_millis(500),
        shutdown_timeout: Duration::from_secs(5),
        ..ConsumerSettings::default()
    }
}

struct Running {
    broker: TestBroker,
    stop: CancellationToken,
    handle: tokio::task::JoinHandle<()>,
}

async fn start<F, Fut>(settings: ConsumerSettings, handler: F) -> Running
where
    F: Fn(TaskContext, Ping) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Outcome, TaskError>> + Send + 'static,
{
    let broker = TestBroker::new().await.unwrap();
    let worker =
        Worker::new("runtime-test", STEM, &["rt.#"], broker.settings(), settings).handle(handler);
    let status = worker.status();
    let stop = CancellationToken::new();
    let token = stop.clone();
    let handle = tokio::spawn(async move {
        worker.run(token).await.unwrap();
    });
    let deadline = tokio::time::Instant::now() + WAIT;
    while !status.is_ready() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "worker never became ready"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Running {
        broker,
        stop,
        handle,
    }
}

impl Running {
    async fn publish(&self, task_type: &str, n: u32) -> String {
        self.broker
            .publish(task_type, &json!({ "n": n }), PublishOptions::default())
            .await
            .unwrap()
    }

    async fn finish(self) {
        self.stop.cancel();
        tokio::time::timeout(WAIT, self.handle)
            .await
            .unwrap()
            .unwrap();
        // The stem's queues (the test ladder's rungs are among the usual
        // ones), the exchanges and the events stream.
        self.broker.cleanup_stems(&[STEM], &[]).await.unwrap();
    }
}

#[tokio::test]
async fn a_panicking_handler_is_a_failed_attempt_not_a_dead_worker() {
    let calls = Arc::new(AtomicU32::new(0));
    let attempts = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (c, a) = (calls.clone(), attempts.clone());
    let run = start(consumer(2, 4), move |ctx, _task: Ping| {
        let (c, a) = (c.clone(), a.clone());
        async move {
            a.lock().unwrap().push(ctx.attempt);
            if c.fetch_add(1, Ordering::SeqCst) == 0 {
                panic!("boom on the first attempt");
            }
            Ok(Outcome::done())
        }
    })
    .await;
    run.publish("rt.ping", 1).await;
    wait_until("two attempts", WAIT, || calls.load(Ordering::SeqCst) == 2).await;
    assert_eq!(*attempts.lock().unwrap(), vec![1, 2]);
    // The worker is alive: the next task runs too.
    run.publish("rt.ping", 2).await;
    wait_until("the next task", WAIT, || calls.load(Ordering::SeqCst) == 3).await;
    run.finish().await;
}

#[tokio::test]
async fn a_handler_over_its_timeout_is_retried() {
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let run = start(consumer(2, 4), move |ctx, _task: Ping| {
        let c = c.clone();
        async move {
            c.fetch_add(1, Ordering::SeqCst);
            if ctx.attempt == 1 {
                tokio::time::sleep(Duration::from_secs(3)).await;
            }
            Ok(Outcome::done())
        }
    })
    .await;
    run.publish("rt.ping", 1).await;
    wait_until("the retry after the timeout", WAIT, || {
        calls.load(Ordering::SeqCst) == 2
    })
    .await;
    let work = run.broker.names.work_queue(STEM);
    eventually_depth(&run.broker, &work, 0).await;
    assert_eq!(
        run.broker
            .depth(&run.broker.names.dead_queue(STEM))
            .await
            .unwrap(),
        0
    );
    run.finish().await;
}

async fn eventually_depth(broker: &TestBroker, queue: &str, n: u32) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while broker.depth(queue).await.unwrap() != n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{queue} never reached depth {n}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn unknown_task_types_and_permanent_errors_go_to_the_parking_lot_with_trace_context() {
    let run = start(consumer(2, 4), |_ctx, task: Ping| async move {
        if task.n == 13 {
            Err(TaskError::permanent("unlucky", "13 is refused"))
        } else {
            Ok(Outcome::done())
        }
    })
    .await;
    let mut hdrs = lapin::types::FieldTable::default();
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    warren::contract::set_str(&mut hdrs, headers::TRACEPARENT, traceparent);
    let id = run
        .broker
        .publish(
            "rt.ping",
            &json!({"n": 13}),
            PublishOptions {
                headers: hdrs,
                priority: Some(7),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let other = run.publish("rt.other", 1).await;
    let dead = run
        .broker
        .take(&run.broker.names.dead_queue(STEM), 2, WAIT)
        .await
        .unwrap();
    let find = |id: &str| {
        dead.iter()
            .find(|d| d.message_id().as_deref() == Some(id))
            .unwrap()
            .clone()
    };
    let refused = find(&id);
    assert_eq!(
        refused.header(headers::ERROR_KIND).as_deref(),
        Some("unlucky")
    );
    assert_eq!(
        refused.header(headers::ERROR).as_deref(),
        Some("13 is refused")
    );
    assert_eq!(
        refused.header(headers::TRACEPARENT).as_deref(),
        Some(traceparent)
    );
    assert_eq!(refused.properties.priority(), &Some(7));
    let unknown = find(&other);
    assert_eq!(
        unknown.header(headers::ERROR_KIND).as_deref(),
        Some("unknown_task_type")
    );
    assert!(unknown.header(headers::ERROR).unwrap().contains("rt.other"));
    run.finish().await;
}

#[tokio::test]
async fn the_concurrency_limit_holds_with_a_larger_prefetch() {
    let running = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    // Each handler waits for a permit the test hands out one at a time, so
    // handlers overlap however the deliveries were timed.
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let (r, p, d, g) = (running.clone(), peak.clone(), done.clone(), gate.clone());
    let run = start(consumer(2, 10), move |_ctx, _task: Ping| {
        let (r, p, d, g) = (r.clone(), p.clone(), d.clone(), g.clone());
        async move {
            let now = r.fetch_add(1, Ordering::SeqCst) + 1;
            p.fetch_max(now, Ordering::SeqCst);
            if let Ok(permit) = g.acquire().await {
                permit.forget();
            }
            r.fetch_sub(1, Ordering::SeqCst);
            d.fetch_add(1, Ordering::SeqCst);
            Ok(Outcome::done())
        }
    })
    .await;
    for n in 0..8 {
        run.publish("rt.ping", n).await;
    }
    // Two handlers block with six deliveries prefetched behind them; each
    // permit lets one finish and the next start.
    wait_until("two running", WAIT, || running.load(Ordering::SeqCst) == 2).await;
    for finished in 1..=8 {
        gate.add_permits(1);
        wait_until("the next to finish", WAIT, || {
            done.load(Ordering::SeqCst) == finished
        })
        .await;
        let want = (8 - finished).min(2);
        wait_until("the next to start", WAIT, || {
            running.load(Ordering::SeqCst) == want
        })
        .await;
    }
    assert_eq!(peak.load(Ordering::SeqCst), 2);
    run.finish().await;
}

#[tokio::test]
async fn a_task_that_expires_in_the_queue_lands_in_the_parking_lot() {
    // No worker: the topology alone, as a producer would find it.
    let broker = TestBroker::new().await.unwrap();
    let topology = warren::topology::Topology::new(&broker.names, STEM, &["rt.#"], &[]);
    topology.declare(&broker.connection).await.unwrap();
    let id = broker
        .publish(
            "rt.ping",
            &json!({"n": 1}),
            PublishOptions {
                expiration: Some(Duration::from_millis(50)),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let dead = broker
        .take(&topology.dead_queue.name, 1, WAIT)
        .await
        .unwrap();
    assert_eq!(dead[0].message_id().as_deref(), Some(id.as_str()));
    assert!(
        dead[0].headers().contains_key("x-death"),
        "{:?}",
        dead[0].headers()
    );
    let channel = broker.connection.create_channel().await.unwrap();
    for q in topology.queue_names() {
        let _ = channel
            .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    broker.cleanup().await.unwrap();
}

#[tokio::test]
async fn lifecycle_events_reach_the_stream_in_order() {
    use futures::StreamExt;
    use warren::events::{self, StatusView, TaskState};

    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let run = start(consumer(2, 4), move |_ctx, task: Ping| {
        let c = c.clone();
        async move {
            if task.n == 7 && c.fetch_add(1, Ordering::SeqCst) == 0 {
                return Err(TaskError::retry("flaky", "first try fails"));
            }
            Ok(Outcome::with_result(json!({"n": task.n})))
        }
    })
    .await;
    let names = run.broker.names.clone();
    events::declare_stream(&run.broker.connection, &names, Duration::from_secs(3600))
        .await
        .unwrap();
    let ok = run.publish("rt.ping", 1).await;
    let flaky = run.publish("rt.ping", 7).await;
    let bad = run
        .broker
        .publish("rt.ping", &json!({"n": "x"}), PublishOptions::default())
        .await
        .unwrap();

    let mut stream = Box::pin(
        events::follow(&run.broker.connection, &names)
            .await
            .unwrap(),
    );
    let mut view = StatusView::new(100);
    let deadline = tokio::time::Instant::now() + WAIT;
    let finished = |v: &StatusView| {
        [&ok, &flaky, &bad]
            .iter()
            .all(|id| v.get(id).is_some_and(|s| s.state.is_final()))
    };
    while !finished(&view) {
        let next = tokio::time::timeout_at(deadline, stream.next())
            .await
            .expect("events within the deadline")
            .expect("the stream goes on")
            .unwrap();
        view.apply(next);
    }
    let states = |id: &str| {
        view.events(id)
            .iter()
            .map(|e| e.event.state)
            .collect::<Vec<_>>()
    };
    assert_eq!(states(&ok), vec![TaskState::Running, TaskState::Succeeded]);
    assert_eq!(view.get(&ok).unwrap().result, Some(json!({"n": 1})));
    assert_eq!(
        states(&flaky),
        vec![
            TaskState::Running,
            TaskState::Retrying,
            TaskState::Running,
            TaskState::Succeeded
        ]
    );
    let f = view.get(&flaky).unwrap();
    assert_eq!(f.attempt, 2);
    assert_eq!(f.error_kind.as_deref(), Some("flaky"));
    let b = view.get(&bad).unwrap();
    assert_eq!(b.state, TaskState::DeadLettered);
    assert_eq!(b.reason.as_deref(), Some("permanent"));
    assert_eq!(b.error_kind.as_deref(), Some("invalid_payload"));
    run.finish().await;
}
