//! What must survive: a worker killed mid-task, a broker restart while tasks
//! flow (the tasks and their statuses), and SIGTERM with tasks in flight.
//!
//! These tests kill processes and restart the shared broker, so they live in
//! a test binary of their own (cargo runs test binaries one after another)
//! and take a lock so they run one at a time within it.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use serde_json::json;
use warren::PublishOptions;
use warren_tests::broker::{TestBroker, rabbitmqctl};
use warren_tests::http;
use warren_tests::worker::WorkerProcess;
use warren_tests::{EmailWorld, rcpt, wait_until};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Longer than the behaviour tests' `WAIT`: these waits span a broker
/// restart or a worker's start after a kill.
const WAIT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn a_worker_killed_mid_task_loses_nothing() {
    let _serial = SERIAL.lock().await;
    let EmailWorld {
        broker,
        sink,
        worker: mut first,
        env,
    } = EmailWorld::start(&[("WARREN_CONSUMER__CONCURRENCY", "1")])
        .await
        .unwrap();

    // The sink holds the final reply until released: once it says so, the
    // worker is mid-send.
    let to = rcpt("hold");
    let id = broker
        .publish(
            "email.send",
            &json!({"to": to, "subject": "k", "text": "k"}),
            PublishOptions::default(),
        )
        .await
        .unwrap();
    let queue = broker.names.work_queue("email");
    sink.wait_for_holding_to(&to, 1, WAIT).await.unwrap();
    first.signal("KILL").unwrap();
    first.wait_exit(WAIT).await.unwrap();
    assert!(first.logs_with_message("Task succeeded.").is_empty());

    // The killed worker never got its 250; a fresh one gets the redelivery.
    let second = WorkerProcess::email(&env).await.unwrap();
    second.wait_ready().await.unwrap();
    sink.wait_for_holding_to(&to, 2, WAIT).await.unwrap();
    sink.release(&to).await.unwrap();
    let done = second
        .wait_for_log("Task succeeded.", 1, WAIT)
        .await
        .unwrap();
    assert_eq!(done[0]["span"]["task_id"], id);
    assert_eq!(done[0]["span"]["redelivered"], true);
    sink.wait_for_messages_to(&to, 1, WAIT).await.unwrap();
    wait_until("the killed attempt to be seen as aborted", WAIT, || {
        sink.aborted().iter().any(|a| a.rcpt_tos.contains(&to))
    })
    .await;
    assert_eq!(sink.messages_to(&to).len(), 1);
    assert_eq!(broker.depth(&queue).await.unwrap(), 0);
    assert_eq!(broker.depth(&broker.email_dead_queue()).await.unwrap(), 0);
    broker.cleanup().await.unwrap();
}

/// Publishes, reconnecting through a broker outage until the publish is
/// confirmed.
async fn publish_through_outage(
    broker: &mut TestBroker,
    namespace: &str,
    id: &str,
    body: &serde_json::Value,
) {
    let deadline = Instant::now() + WAIT;
    loop {
        let options = PublishOptions {
            id: Some(id.to_owned()),
            ..Default::default()
        };
        // A publish caught by the outage may never be confirmed: give up on
        // it quickly and publish again (same id) on a fresh connection.
        let attempt = tokio::time::timeout(
            Duration::from_secs(2),
            broker.publish("email.send", body, options),
        )
        .await;
        match attempt.unwrap_or_else(|_| Err(anyhow::anyhow!("no confirm within 2 s"))) {
            Ok(_) => return,
            Err(e) => {
                assert!(Instant::now() < deadline, "could not publish {id}: {e}");
                tokio::time::sleep(Duration::from_millis(300)).await;
                if let Ok(fresh) = TestBroker::with_namespace(namespace.to_owned()).await {
                    *broker = fresh;
                }
            }
        }
    }
}

/// An email world whose worker runs four handlers at once.
async fn four_handlers() -> (TestBroker, warren_tests::smtp::SmtpSink, WorkerProcess) {
    let world = EmailWorld::start(&[("WARREN_CONSUMER__CONCURRENCY", "4")])
        .await
        .unwrap();
    (world.broker, world.sink, world.worker)
}

#[tokio::test]
async fn a_broker_restart_while_tasks_flow_loses_nothing() {
    let _serial = SERIAL.lock().await;
    let (mut broker, sink, worker) = four_handlers().await;
    let namespace = broker.namespace().to_owned();

    let to = rcpt("restart");
    let ids: Vec<String> = (0..60)
        .map(|i| format!("restart-{i}-{}", uuid::Uuid::new_v4().simple()))
        .collect();
    for (i, id) in ids.iter().enumerate() {
        if i == 20 {
            let restart = Instant::now();
            rabbitmqctl(&["stop_app"]);
            tokio::time::sleep(Duration::from_secs(1)).await;
            rabbitmqctl(&["start_app"]);
            rabbitmqctl(&["await_startup"]);
            eprintln!("broker restart took {:?}", restart.elapsed());
        }
        let body = json!({"to": to, "subject": id, "text": "flowing"});
        let started = Instant::now();
        publish_through_outage(&mut broker, &namespace, id, &body).await;
        if started.elapsed() > Duration::from_secs(1) {
            eprintln!("publishing {id} took {:?}", started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }

    let wanted: HashSet<&str> = ids.iter().map(String::as_str).collect();
    let received = || -> HashMap<String, usize> {
        let mut seen = HashMap::new();
        for m in sink.messages_to(&to) {
            *seen.entry(m.subject().unwrap_or_default()).or_insert(0) += 1;
        }
        seen
    };
    let publishing_done = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let seen = received();
        if wanted.iter().all(|id| seen.contains_key(*id)) {
            break;
        }
        let missing: Vec<_> = wanted
            .iter()
            .filter(|id| !seen.contains_key(**id))
            .collect();
        assert!(
            Instant::now() < deadline,
            "{} tasks never arrived: {missing:?}\nworker:\n{}",
            missing.len(),
            worker.tail(40)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "all delivered {:?} after the last publish",
        publishing_done.elapsed()
    );
    // The worker noticed the outage and came back by itself.
    let reconnected = !worker
        .logs_with_message("Broker connection recovered; consuming again.")
        .is_empty()
        || worker.logs_with_message("Consuming.").len() >= 2;
    assert!(
        reconnected,
        "no reconnect in the worker's log:\n{}",
        worker.tail(40)
    );
    let duplicates: usize = received().values().map(|n| n - 1).sum();
    eprintln!(
        "broker restart: {} tasks delivered, {duplicates} duplicate sends",
        ids.len()
    );
    // The worker lived through the outage: a task sent whose ack the outage
    // swallowed comes back redelivered, and its id is in the worker's
    // idempotency store (or a republished copy carries the same id), so it
    // is skipped, not sent again (docs/operations.md, "An email can be sent
    // twice" needs a worker that dies).
    assert_eq!(
        duplicates,
        0,
        "duplicate sends across a broker restart: {:?}",
        received()
            .into_iter()
            .filter(|(_, n)| *n > 1)
            .collect::<Vec<_>>()
    );
    assert_eq!(broker.depth(&broker.email_dead_queue()).await.unwrap(), 0);
    broker.cleanup().await.unwrap();
}

#[tokio::test]
async fn a_broker_restart_while_tasks_run_leaves_no_status_behind_its_final_state() {
    use futures::StreamExt;
    use warren::events::{self, StatusView, TaskState};

    let _serial = SERIAL.lock().await;
    let (mut broker, sink, worker) = four_handlers().await;
    let namespace = broker.namespace().to_owned();
    // The stream a gateway declares: the events land in it.
    events::declare_stream(&broker.connection, &broker.names, Duration::from_secs(3600))
        .await
        .unwrap();

    // Each send takes 300 ms at the sink: tasks are running, and their
    // events on their way, when the broker goes.
    let to = rcpt("slow300");
    let ids: Vec<String> = (0..40)
        .map(|i| format!("status-{i}-{}", uuid::Uuid::new_v4().simple()))
        .collect();
    for (i, id) in ids.iter().enumerate() {
        if i == 16 {
            rabbitmqctl(&["stop_app"]);
            rabbitmqctl(&["start_app"]);
            rabbitmqctl(&["await_startup"]);
        }
        let body = json!({"to": to, "subject": id, "text": "statuses"});
        publish_through_outage(&mut broker, &namespace, id, &body).await;
    }
    wait_until("every task to reach the sink", WAIT, || {
        let seen: HashSet<String> = sink
            .messages_to(&to)
            .iter()
            .filter_map(|m| m.subject())
            .collect();
        ids.iter().all(|id| seen.contains(id))
    })
    .await;

    // Every task succeeded; the statuses folded from the stream must say
    // so for every one of them, as a gateway started now would.
    let mut stream = Box::pin(
        events::follow(&broker.connection, &broker.names)
            .await
            .unwrap(),
    );
    let mut view = StatusView::new(1000);
    let succeeded = |v: &StatusView| {
        ids.iter()
            .all(|id| v.get(id).is_some_and(|s| s.state == TaskState::Succeeded))
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    while !succeeded(&view) {
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(Some(Ok(event))) => {
                view.apply(event);
            }
            Ok(other) => panic!("the events stream ended: {other:?}"),
            Err(_) => {
                let behind: Vec<_> = ids
                    .iter()
                    .filter_map(|id| {
                        let state = view.get(id).map(|s| s.state);
                        (state != Some(TaskState::Succeeded)).then_some((id, state))
                    })
                    .collect();
                panic!(
                    "{} statuses stayed behind their task's final state: {behind:?}\nworker:\n{}",
                    behind.len(),
                    worker.tail(40)
                );
            }
        }
    }
    let reemitted = worker
        .logs_with_message("Re-emitting the final states of tasks whose events were given up.");
    eprintln!(
        "broker restart: {} statuses final, {} re-emissions",
        ids.len(),
        reemitted.len()
    );
    broker.cleanup().await.unwrap();
}

#[tokio::test]
async fn sigterm_lets_in_flight_tasks_finish_and_hands_back_the_rest() {
    let _serial = SERIAL.lock().await;
    let EmailWorld {
        broker,
        sink,
        worker: mut first,
        env,
    } = EmailWorld::start(&[
        ("WARREN_CONSUMER__CONCURRENCY", "3"),
        ("WARREN_CONSUMER__PREFETCH", "6"),
        ("WARREN_CONSUMER__SHUTDOWN_TIMEOUT", "10s"),
    ])
    .await
    .unwrap();
    // Every send is held until released: the three running handlers stay
    // mid-DATA until the test has seen the drain begin.
    let rcpts: Vec<String> = (0..6).map(|_| rcpt("hold")).collect();
    for to in &rcpts {
        broker
            .publish(
                "email.send",
                &json!({"to": to, "subject": "drain", "text": "d"}),
                PublishOptions::default(),
            )
            .await
            .unwrap();
    }
    let queue = broker.names.work_queue("email");
    let ops = first.ops_addr().await.unwrap();
    let held = sink.wait_for_holding(3, WAIT).await.unwrap();
    assert_eq!(
        warren_tests::ops::http_get(ops, "/readyz").await.unwrap().0,
        200
    );
    first.signal("TERM").unwrap();
    let drained = first
        .wait_for_log("Stopped consuming; waiting for in-flight tasks.", 1, WAIT)
        .await
        .unwrap();
    let in_flight = drained[0]["fields"]["in_flight"].as_u64().unwrap() as usize;
    assert_eq!(in_flight, 3, "three handlers were running");
    // Draining: no longer ready, so no new traffic is routed to it.
    assert_eq!(
        warren_tests::ops::http_get(ops, "/readyz").await.unwrap().0,
        503,
        "/readyz while draining"
    );
    for h in &held {
        sink.release(&h.rcpt_tos[0]).await.unwrap();
    }
    let status = first.wait_exit(WAIT).await.unwrap();
    assert!(
        status.success(),
        "the worker must exit cleanly: {status:?}\n{}",
        first.tail(20)
    );
    // The three in flight finished before the exit; the rest went back.
    assert_eq!(
        sink.messages().len(),
        3,
        "in-flight tasks must finish during the drain"
    );
    assert_eq!(broker.depth(&queue).await.unwrap(), 3);

    for to in &rcpts {
        sink.release(to).await.unwrap();
    }
    let mut second = WorkerProcess::email(&env).await.unwrap();
    second.wait_ready().await.unwrap();
    sink.wait_for_messages(6, WAIT).await.unwrap();
    // Once the second worker has drained and gone, nothing more can arrive.
    second.signal("TERM").unwrap();
    assert!(second.wait_exit(WAIT).await.unwrap().success());
    assert_eq!(broker.depth(&queue).await.unwrap(), 0);
    let got: HashSet<String> = sink
        .messages()
        .iter()
        .flat_map(|m| m.rcpt_tos.clone())
        .collect();
    assert_eq!(got, rcpts.iter().cloned().collect::<HashSet<_>>());
    assert_eq!(sink.messages().len(), 6, "nothing sent twice");
    broker.cleanup().await.unwrap();
}

#[tokio::test]
async fn sigterm_hands_back_a_task_that_outlasts_the_drain_deadline() {
    let _serial = SERIAL.lock().await;
    let EmailWorld {
        broker,
        sink,
        worker: mut first,
        env,
    } = EmailWorld::start(&[("WARREN_CONSUMER__SHUTDOWN_TIMEOUT", "500ms")])
        .await
        .unwrap();
    // Held until released, which happens only after the worker is gone:
    // its exit can come from the drain deadline alone.
    let to = rcpt("hold");
    broker
        .publish(
            "email.send",
            &json!({"to": to, "subject": "long", "text": "l"}),
            PublishOptions::default(),
        )
        .await
        .unwrap();
    let queue = broker.names.work_queue("email");
    sink.wait_for_holding_to(&to, 1, WAIT).await.unwrap();
    first.signal("TERM").unwrap();
    assert!(first.wait_exit(WAIT).await.unwrap().success());
    assert!(
        sink.messages_to(&to).is_empty(),
        "the task was still held when the drain deadline ended the worker"
    );
    first
        .wait_for_log(
            "In-flight tasks did not finish before the deadline; handing them back to the broker.",
            1,
            WAIT,
        )
        .await
        .unwrap();
    assert_eq!(
        broker.depth(&queue).await.unwrap(),
        1,
        "the task is back in its queue"
    );

    sink.release(&to).await.unwrap();
    let second = WorkerProcess::email(&env).await.unwrap();
    second.wait_ready().await.unwrap();
    sink.wait_for_messages_to(&to, 1, WAIT).await.unwrap();
    broker.cleanup().await.unwrap();
}

#[tokio::test]
async fn readyz_turns_unready_while_the_broker_is_down_and_ready_after() {
    let _serial = SERIAL.lock().await;
    let EmailWorld {
        broker,
        sink,
        worker,
        env: _,
    } = EmailWorld::start(&[]).await.unwrap();
    let ops = worker.ops_addr().await.unwrap();
    let readyz = || async { warren_tests::ops::http_get(ops, "/readyz").await.unwrap().0 };
    assert_eq!(readyz().await, 200);

    rabbitmqctl(&["stop_app"]);
    let deadline = Instant::now() + WAIT;
    let mut status = readyz().await;
    while status != 503 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        status = readyz().await;
    }
    let (_, metrics) = warren_tests::ops::http_get(ops, "/metrics").await.unwrap();
    rabbitmqctl(&["start_app"]);
    rabbitmqctl(&["await_startup"]);
    assert_eq!(status, 503, "/readyz must fail while the broker is down");
    assert_eq!(
        warren_tests::ops::sample(&metrics, "warren_broker_connected", &[]),
        0.0
    );

    let deadline = Instant::now() + WAIT;
    while readyz().await != 200 {
        assert!(
            Instant::now() < deadline,
            "/readyz never recovered:\n{}",
            worker.tail(20)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, metrics) = warren_tests::ops::http_get(ops, "/metrics").await.unwrap();
    assert_eq!(
        warren_tests::ops::sample(&metrics, "warren_broker_connected", &[]),
        1.0
    );
    assert!(warren_tests::ops::sample(&metrics, "warren_broker_reconnects_total", &[]) >= 1.0);
    // And it consumes again.
    let to = rcpt("after-outage");
    broker_publish_after_restart(&broker, &to).await;
    sink.wait_for_messages_to(&to, 1, WAIT).await.unwrap();
    let fresh = TestBroker::with_namespace(broker.namespace().to_owned())
        .await
        .unwrap();
    fresh.cleanup().await.unwrap();
}

/// Right after a broker restart, RabbitMQ 3.10 confirms messages routed to
/// a stream it has not started again yet, and drops them (a chord whose
/// members' `succeeded` events went that way never fired its callback).
/// Task events published the moment the broker is back, on a fresh
/// connection as a worker's next session has, all reach the stream, and so
/// do messages a `Publisher` sends to the events exchange (workflow and
/// chord records; here single events, which readers read too): both wait
/// until the stream answers.
#[tokio::test]
async fn task_events_published_the_moment_the_broker_is_back_all_reach_the_stream() {
    use lapin::BasicProperties;
    use warren::contract::{CONTENT_TYPE_JSON, EVENT_MESSAGE_TYPE, PERSISTENT};
    use warren::events::{self, Batching, EventPublisher, TaskEvent, TaskState};
    let _serial = SERIAL.lock().await;
    let broker = TestBroker::new().await.unwrap();
    let namespace = broker.namespace().to_owned();
    let names = broker.names.clone();
    events::declare_stream(&broker.connection, &names, Duration::from_secs(3600))
        .await
        .unwrap();
    drop(broker);
    let publisher = EventPublisher::new(
        &names,
        Batching {
            max_events: 4,
            max_delay: Duration::from_millis(1),
        },
    );
    let mut sent = HashSet::new();
    for round in 0..3 {
        rabbitmqctl(&["stop_app"]);
        // No `await_startup`: the node takes connections before it has
        // started its streams again, and so does a worker.
        rabbitmqctl(&["start_app"]);
        let connection = std::sync::Arc::new(
            warren_tests::broker::connect(warren_tests::broker::AMQP_URL)
                .await
                .unwrap(),
        );
        publisher.attach(&connection).await.unwrap();
        let records = warren::Publisher::on(&connection, names.clone())
            .await
            .unwrap()
            .checking_stream_on(&connection);
        // Spread over the first few hundred milliseconds, where the
        // broker's window is.
        for i in 0..100 {
            let id = format!("back-{round}-{i}");
            publisher
                .emit(TaskEvent::new(&id, "email.send", TaskState::Succeeded, 1))
                .await;
            sent.insert(id);
            if i % 10 == 0 {
                let id = format!("record-{round}-{i}");
                let event = TaskEvent::new(&id, "email.send", TaskState::Queued, 1);
                let properties = BasicProperties::default()
                    .with_content_type(CONTENT_TYPE_JSON.into())
                    .with_type(EVENT_MESSAGE_TYPE.into())
                    .with_delivery_mode(PERSISTENT);
                records
                    .publish_confirmed(
                        &names.events_exchange(),
                        "email.send.queued",
                        &serde_json::to_vec(&event).unwrap(),
                        properties,
                    )
                    .await
                    .unwrap();
                sent.insert(id);
            }
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
        assert!(publisher.flush(WAIT).await, "every event is confirmed");
        let _ = connection.close(200, "round done".into()).await;
    }
    let broker = TestBroker::with_namespace(namespace).await.unwrap();
    let mut stream = Box::pin(events::follow(&broker.connection, &names).await.unwrap());
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut read = HashSet::new();
    while read.len() < sent.len() {
        let next = tokio::time::timeout_at(deadline, futures::StreamExt::next(&mut stream)).await;
        let Ok(Some(Ok(event))) = next else {
            let mut lost: Vec<_> = sent.difference(&read).collect();
            lost.sort();
            panic!(
                "{} of {} confirmed events on the stream; missing: {lost:?}",
                read.len(),
                sent.len()
            );
        };
        read.insert(event.event.task_id);
    }
    assert_eq!(read, sent);
    drop(stream);
    broker.cleanup().await.unwrap();
}

async fn broker_publish_after_restart(old: &TestBroker, to: &str) {
    // The test's own connection died with the broker: publish on a new one.
    let fresh = TestBroker::with_namespace(old.namespace().to_owned())
        .await
        .unwrap();
    fresh
        .publish(
            "email.send",
            &json!({"to": to, "subject": "back", "text": "b"}),
            PublishOptions::default(),
        )
        .await
        .unwrap();
}

/// The `redis` status store's indexer is killed with `kill -9` while
/// events stream in; the standby gateway takes the lock and resumes from
/// the committed offset. Every task's record then equals the stream folded
/// by the store's rules: no event applied twice, none skipped.
#[tokio::test]
async fn the_status_indexer_killed_mid_stream_is_replaced_and_no_event_is_applied_twice_or_skipped()
{
    use warren::events::TaskState;
    use warren_tests::status::{StatusWorld, lifecycle};

    const HOLDING: &str = "Holding the indexer lock; indexing the task events.";
    let _serial = SERIAL.lock().await;
    let mut w = StatusWorld::new(Duration::from_secs(3600)).await.unwrap();
    // Two gateways; the first to declare the lock queue indexes.
    let (_, a) = w.gateway(&[]).await.unwrap();
    let (_, b) = w.gateway(&[]).await.unwrap();
    let holder = tokio::select! {
        r = w.processes[a].wait_for_log(HOLDING, 1, WAIT) => { r.unwrap(); a }
        r = w.processes[b].wait_for_log(HOLDING, 1, WAIT) => { r.unwrap(); b }
    };
    let standby = if holder == a { b } else { a };
    w.processes[standby]
        .wait_for_log(
            "Another gateway holds the indexer lock; standing by.",
            1,
            WAIT,
        )
        .await
        .unwrap();

    // 20,000 tasks, 60,000 events, published in four rounds; the holder is
    // killed once it has indexed part of the first.
    let base = chrono::Utc::now();
    let finals = [
        TaskState::Succeeded,
        TaskState::DeadLettered,
        TaskState::Retrying,
    ];
    let mut killed_at = None;
    for round in 0..4 {
        let mut events = Vec::new();
        for i in 0..5000 {
            let n = round * 5000 + i;
            let at = base + chrono::Duration::microseconds(n as i64 * 10);
            events.extend(lifecycle(&format!("f{n}"), "email.send", finals[n % 3], at));
        }
        w.publish(events).await;
        if killed_at.is_none() {
            // Mid-stream: something committed, and more to come.
            let deadline = Instant::now() + WAIT;
            let committed = loop {
                if let Some(c) = w.store.committed_offset().await.unwrap() {
                    break c;
                }
                assert!(Instant::now() < deadline, "the indexer committed nothing");
                tokio::time::sleep(Duration::from_millis(5)).await;
            };
            w.processes[holder].signal("KILL").unwrap();
            killed_at = Some((chrono::Utc::now(), committed));
        }
    }
    let (killed, committed_at_kill) = killed_at.unwrap();
    let took = w.processes[standby]
        .wait_for_log(HOLDING, 1, WAIT)
        .await
        .unwrap();
    // From the kill to the standby's log line, by the log's own clock.
    let took_at: chrono::DateTime<chrono::Utc> =
        took[0]["timestamp"].as_str().unwrap().parse().unwrap();
    let takeover = (took_at - killed).to_std().unwrap_or_default();
    let (reference, last) = w.reference().await.unwrap();
    assert!(
        committed_at_kill < last,
        "the kill came after the last event ({committed_at_kill} of {last})"
    );
    w.wait_indexed(last, WAIT).await.unwrap();
    w.assert_store_matches(&reference).await.unwrap();
    println!(
        "indexer failover: killed at offset {committed_at_kill} of {last}; the standby held the lock {:.0} ms after the kill; {} tasks identical to the stream",
        takeover.as_secs_f64() * 1000.0,
        reference.len()
    );
    let mut dead = w.processes.remove(holder);
    let _ = dead.wait_exit(Duration::from_secs(10)).await;
    w.finish().await.unwrap();
}

/// Parks 1,000 `email.send` tasks (`p0`..`p999`) the way the runtime
/// parks: a copy to the dead exchange, keyed by the work queue, with the
/// failure headers, confirmed. No worker: the work queue keeps what a
/// replay delivers.
async fn park_a_thousand(broker: &TestBroker) {
    use warren::contract::{self, headers};
    broker.declare_email_topology(&[]).await.unwrap();
    let work = broker.names.work_queue("email");
    for n in 0..1000 {
        let mut props = warren::task_properties(&format!("p{n}"), "email.send", 0);
        let mut h = props.headers().clone().unwrap_or_default();
        contract::set_str(&mut h, headers::DEAD_REASON, "permanent");
        contract::set_str(&mut h, headers::ERROR_KIND, "smtp_permanent");
        contract::set_str(&mut h, headers::ERROR, "550 rejected");
        props = props.with_headers(h);
        let body = json!({"to": format!("r{n}@example.com"), "subject": "s", "text": "t"});
        broker
            .publisher
            .publish_confirmed(
                &broker.names.dead_exchange(),
                &work,
                body.to_string().as_bytes(),
                props,
            )
            .await
            .unwrap();
    }
    assert_eq!(
        broker.depth(&broker.email_dead_queue()).await.unwrap(),
        1000
    );
}

/// Waits until the moved part of a replay is at least `n` on the work queue.
async fn wait_moved(broker: &TestBroker, n: u32) {
    let work = broker.names.work_queue("email");
    let deadline = Instant::now() + WAIT;
    while broker.depth(&work).await.unwrap() < n {
        assert!(Instant::now() < deadline, "the replay did not get going");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// After an interrupted replay of [`park_a_thousand`]'s tasks: every task
/// is on the work queue or still parked, none lost, at most one (the
/// message in flight) in both; what was delivered starts afresh, what is
/// parked is as it was. Returns (delivered, parked, duplicates).
async fn count_the_thousand(broker: &TestBroker, what: &str) -> (usize, usize, usize) {
    use warren::contract::headers;
    let work = broker.names.work_queue("email");
    let dead = broker.email_dead_queue();
    // The held messages return to the parking lot once the broker sees the
    // connection gone.
    let deadline = Instant::now() + WAIT;
    loop {
        let total = broker.depth(&work).await.unwrap() + broker.depth(&dead).await.unwrap();
        if total >= 1000 {
            break;
        }
        assert!(Instant::now() < deadline, "{total} of 1000 tasks found");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let delivered = broker
        .take(&work, broker.depth(&work).await.unwrap() as usize, WAIT)
        .await
        .unwrap();
    let parked = broker
        .take(&dead, broker.depth(&dead).await.unwrap() as usize, WAIT)
        .await
        .unwrap();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for m in delivered.iter().chain(&parked) {
        *seen.entry(m.message_id().unwrap()).or_default() += 1;
    }
    let duplicates: usize = seen.values().map(|n| n - 1).sum();
    println!(
        "replay {what}: {} delivered, {} parked, {} duplicates",
        delivered.len(),
        parked.len(),
        duplicates
    );
    assert_eq!(seen.len(), 1000, "every task is somewhere");
    assert_eq!(delivered.len() + parked.len(), 1000 + duplicates);
    assert!(
        duplicates <= 1,
        "{duplicates} duplicates: more than in flight"
    );
    assert!(
        delivered
            .iter()
            .all(|m| m.header(headers::ATTEMPT).as_deref() == Some("1")
                && m.header(headers::DEAD_REASON).is_none())
    );
    assert!(
        parked
            .iter()
            .all(|m| m.header(headers::DEAD_REASON).as_deref() == Some("permanent"))
    );
    (delivered.len(), parked.len(), duplicates)
}

/// `warren dead replay` of 1,000 parked tasks, killed with `kill -9`
/// midway: every task is parked or delivered (on its work queue), none is
/// lost, and at most the one message in flight (published, its ack not
/// yet processed) is in both places.
#[tokio::test]
async fn a_replay_killed_with_kill_9_loses_nothing_and_duplicates_at_most_the_message_in_flight() {
    use warren_tests::cli;

    let _serial = SERIAL.lock().await;
    let broker = TestBroker::new().await.unwrap();
    park_a_thousand(&broker).await;

    let env = [("WARREN_BROKER__NAMESPACE", broker.namespace().to_owned())];
    let mut replay = cli::spawn(&env, &["dead", "replay", "--rate", "400", "--json"]).unwrap();
    // Killed once a good part has moved.
    wait_moved(&broker, 300).await;
    replay.start_kill().unwrap();
    let status = replay.wait().await.unwrap();
    assert!(!status.success(), "killed: {status:?}");

    count_the_thousand(&broker, "killed").await;
    broker.cleanup().await.unwrap();
}

/// `warren dead replay` of 1,000 parked tasks, interrupted by a restart
/// of the broker (`rabbitmqctl stop_app`, `start_app`) midway: every task
/// is parked or delivered, none is lost, at most the one message in flight
/// is in both places, and `warren` ends with status 1 and a message naming
/// the lost connection (docs/cli.md).
#[tokio::test]
async fn a_replay_interrupted_by_a_broker_restart_loses_nothing_and_duplicates_at_most_the_message_in_flight()
 {
    use tokio::io::AsyncReadExt;
    use warren_tests::cli;

    let _serial = SERIAL.lock().await;
    let broker = TestBroker::new().await.unwrap();
    let namespace = broker.namespace().to_owned();
    park_a_thousand(&broker).await;

    let env = [("WARREN_BROKER__NAMESPACE", namespace.clone())];
    let mut replay = cli::spawn(&env, &["dead", "replay", "--rate", "400", "--json"]).unwrap();
    let mut stderr = replay.stderr.take().unwrap();
    let stderr = tokio::spawn(async move {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text).await;
        text
    });
    let mut stdout = replay.stdout.take().unwrap();
    let stdout = tokio::spawn(async move {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text).await;
        text
    });
    wait_moved(&broker, 300).await;
    drop(broker);
    let restart = Instant::now();
    rabbitmqctl(&["stop_app"]);
    rabbitmqctl(&["start_app"]);
    rabbitmqctl(&["await_startup"]);
    eprintln!("broker restart took {:?}", restart.elapsed());

    // It should end (or finish) by itself; one that does not is killed
    // after WAIT, and what it moved is counted all the same.
    let ended = tokio::time::timeout(WAIT, replay.wait()).await;
    let status = match ended {
        Ok(status) => Some(status.unwrap()),
        Err(_) => {
            replay.start_kill().unwrap();
            let _ = replay.wait().await;
            None
        }
    };
    let (stdout, stderr) = (stdout.await.unwrap(), stderr.await.unwrap());
    println!("warren dead replay: {status:?}\nstdout: {stdout}\nstderr: {stderr}");

    let broker = TestBroker::with_namespace(namespace).await.unwrap();
    let (delivered, _, _) = count_the_thousand(&broker, "interrupted by a broker restart").await;
    assert!(delivered >= 300, "{delivered}");
    let status = status.expect("warren dead replay hung after the broker restart");
    assert_eq!(status.code(), Some(1), "stdout: {stdout}\nstderr: {stderr}");
    assert!(
        stderr.to_lowercase().contains("connection"),
        "a message naming the lost connection: {stderr}"
    );
    broker.cleanup().await.unwrap();
}

/// A `redis-server` of the test's own on `port` (never the shared 6379),
/// killed when dropped.
struct OwnRedis {
    child: tokio::process::Child,
}

impl OwnRedis {
    /// Starts it and waits for its "Ready to accept connections" line.
    async fn start(port: u16) -> Self {
        use tokio::io::AsyncBufReadExt;
        let mut child = tokio::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server must be installed");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let ready = async {
            while let Some(line) = lines.next_line().await.expect("redis output") {
                if line.contains("Ready to accept connections") {
                    return true;
                }
            }
            false
        };
        let ready = tokio::time::timeout(WAIT, ready).await;
        assert!(
            matches!(ready, Ok(true)),
            "redis-server on port {port} did not get ready"
        );
        // Keep draining its output so it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Self { child }
    }

    /// SIGKILL, and wait until it is gone.
    async fn kill(mut self) {
        self.child.kill().await.expect("kill redis-server");
    }
}

#[tokio::test]
async fn a_redis_outage_under_the_redis_idempotency_store_retries_and_sends_once_after() {
    let _serial = SERIAL.lock().await;
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let url = format!("redis://127.0.0.1:{port}/0");
    let redis = OwnRedis::start(port).await;
    let EmailWorld {
        broker,
        sink,
        worker,
        ..
    } = EmailWorld::start(&[
        ("WARREN_IDEMPOTENCY__BACKEND", "redis"),
        ("WARREN_IDEMPOTENCY__REDIS_URL", &url),
        // Enough rungs to outlast the outage.
        ("WARREN_CONSUMER__MAX_ATTEMPTS", "50"),
    ])
    .await
    .unwrap();

    // Redis goes away; a task comes. The documented behaviour
    // (docs/contract.md, `idempotency_store`): a transient failure, retried
    // through the ladder, and the handler does not run meanwhile.
    redis.kill().await;
    let to = rcpt("redisdown");
    let id = format!("redis-outage-{}", uuid::Uuid::new_v4().simple());
    let body = json!({"to": to, "subject": "r", "text": "r"});
    let publish = || {
        broker.publish(
            "email.send",
            &body,
            PublishOptions {
                id: Some(id.clone()),
                ..Default::default()
            },
        )
    };
    publish().await.unwrap();
    let retried = worker
        .wait_for_log("Task failed; it will be retried.", 2, WAIT)
        .await
        .unwrap();
    for line in &retried {
        assert_eq!(line["fields"]["error_kind"], "idempotency_store", "{line}");
        assert_eq!(line["span"]["task_id"], id.as_str(), "{line}");
    }
    assert!(sink.messages_to(&to).is_empty(), "nothing sent while down");
    assert!(
        worker.logs().iter().all(|l| !l.to_string().contains(&url)),
        "the Redis URL is a secret"
    );

    // Redis is back (empty): the next attempt runs, sends once, records.
    let _redis = OwnRedis::start(port).await;
    let done = worker
        .wait_for_log("Task succeeded.", 1, WAIT)
        .await
        .unwrap();
    assert_eq!(done[0]["span"]["task_id"], id.as_str());
    sink.wait_for_messages_to(&to, 1, WAIT).await.unwrap();
    // Recorded in the restarted Redis: the same id again is a duplicate.
    publish().await.unwrap();
    worker
        .wait_for_log(
            "Task already succeeded earlier; acking the duplicate without running it.",
            1,
            WAIT,
        )
        .await
        .unwrap();
    assert_eq!(sink.messages_to(&to).len(), 1);
    assert_eq!(broker.depth(&broker.email_dead_queue()).await.unwrap(), 0);
    broker.cleanup().await.unwrap();
}

/// The broker's memory alarm, raised for the whole node (every publishing
/// connection blocks): the watermark set to 0, put back when dropped, even
/// when the test fails.
struct MemoryAlarm {
    restore: Vec<String>,
}

impl MemoryAlarm {
    fn raise() -> Self {
        let output = std::process::Command::new("rabbitmqctl")
            .args(["eval", "vm_memory_monitor:get_vm_memory_high_watermark()."])
            .output()
            .expect("rabbitmqctl must be installed");
        let current = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        // `0.4`, or `{absolute,1073741824}`.
        let restore = match current.strip_prefix("{absolute,") {
            Some(rest) => vec!["absolute".to_owned(), rest.trim_end_matches('}').to_owned()],
            None => {
                assert!(
                    current.parse::<f64>().is_ok_and(|v| v > 0.0),
                    "the watermark is {current:?}"
                );
                vec![current]
            }
        };
        rabbitmqctl(&["set_vm_memory_high_watermark", "0"]);
        Self { restore }
    }
}

impl Drop for MemoryAlarm {
    fn drop(&mut self) {
        let mut args = vec!["set_vm_memory_high_watermark"];
        args.extend(self.restore.iter().map(String::as_str));
        rabbitmqctl(&args);
    }
}

/// Waits until the broker reports a connection of process `pid` whose
/// client-provided name ends with `suffix` as `blocked`: it tried to
/// publish under the alarm.
async fn wait_blocked(pid: u32, suffix: &str) {
    let wanted = format!("/{pid} {suffix}");
    let deadline = Instant::now() + WAIT;
    loop {
        let output = tokio::process::Command::new("rabbitmqctl")
            .args(["list_connections", "client_properties", "state", "--silent"])
            .output()
            .await
            .expect("rabbitmqctl");
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        if text
            .lines()
            .any(|l| l.contains(&wanted) && l.trim_end().ends_with("blocked"))
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no blocked connection {wanted}: {text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A gateway with the email queue declared (no worker: tasks stay queued).
async fn gateway_world(
    overrides: &[(&'static str, &str)],
) -> (
    TestBroker,
    tempfile::TempDir,
    WorkerProcess,
    std::net::SocketAddr,
) {
    let broker = TestBroker::new().await.unwrap();
    broker
        .declare_email_topology(&[Duration::from_millis(200)])
        .await
        .unwrap();
    let store = tempfile::tempdir().unwrap();
    let env = warren_tests::worker::with(
        warren_tests::worker::gateway_env(broker.namespace(), store.path()),
        overrides,
    );
    let gateway = WorkerProcess::gateway(&env).await.unwrap();
    let http = gateway.http_addr().await.unwrap();
    gateway.wait_caught_up().await.unwrap();
    (broker, store, gateway, http)
}

#[tokio::test]
async fn gateway_sigterm_during_an_enqueue_confirms_it_and_ends_open_sse_streams_cleanly() {
    let _serial = SERIAL.lock().await;
    let (broker, store, mut gateway, http) = gateway_world(&[]).await;
    let email = |subject: &str| json!({"to": rcpt("sigterm"), "subject": subject, "text": "x"});
    let r = http::post_json(http, "/v1/tasks/email?id=watched", &email("watched"))
        .await
        .unwrap();
    assert_eq!(r.status, 202, "{}", r.text());
    let mut sse = http::sse(http, "/v1/tasks/watched/events", &[])
        .await
        .unwrap();
    assert_eq!(sse.status, 200);
    let first = sse.next_event().await.unwrap().expect("the queued event");
    assert!(first.data.contains("\"queued\""), "{first:?}");

    // Publishes block: the next enqueue waits for its confirm.
    let alarm = MemoryAlarm::raise();
    let enqueue = tokio::spawn(async move {
        http::post_json(http, "/v1/tasks/email?id=in-flight", &email("in flight")).await
    });
    wait_blocked(gateway.pid().unwrap(), "publish").await;
    gateway.signal("TERM").unwrap();
    gateway
        .wait_for_log("Shutdown requested; draining in-flight tasks.", 1, WAIT)
        .await
        .unwrap();
    // The open stream ends cleanly (no error, no torn event) at shutdown.
    let rest = tokio::time::timeout(WAIT, async {
        let mut rest = Vec::new();
        while let Some(event) = sse.next_event().await.unwrap() {
            rest.push(event);
        }
        rest
    })
    .await
    .expect("the SSE stream ends at shutdown");
    assert!(
        rest.iter().all(|e| !e.data.contains("\"queued\"")),
        "{rest:?}"
    );
    assert!(!enqueue.is_finished(), "the enqueue waits for its confirm");

    // The broker takes publishes again: the enqueue in flight is confirmed
    // and answered, then the gateway stops.
    drop(alarm);
    let r = enqueue.await.unwrap().unwrap();
    assert_eq!(r.status, 202, "{}", r.text());
    let status = gateway.wait_exit(WAIT).await.unwrap();
    assert!(status.success(), "the gateway exited with {status}");
    let queue = broker.names.work_queue("email");
    assert_eq!(broker.depth(&queue).await.unwrap(), 2);

    // Its `queued` event reached the events stream: a new gateway reads it.
    let env = warren_tests::worker::gateway_env(broker.namespace(), store.path());
    let mut second = WorkerProcess::gateway(&env).await.unwrap();
    let http = second.http_addr().await.unwrap();
    second.wait_caught_up().await.unwrap();
    let r = http::get(http, "/v1/tasks/in-flight").await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json().unwrap()["state"], "queued");
    second.signal("TERM").unwrap();
    assert!(second.wait_exit(WAIT).await.unwrap().success());
    broker
        .cleanup_stems(&["email"], &[Duration::from_millis(200)])
        .await
        .unwrap();
}

#[tokio::test]
async fn a_publish_the_broker_never_confirms_is_a_503_broker_timeout() {
    let _serial = SERIAL.lock().await;
    // The request outlives the confirm wait (`CONFIRM_TIMEOUT`, 30 s).
    let (broker, _store, mut gateway, http) =
        gateway_world(&[("WARREN_HTTP__REQUEST_TIMEOUT", "50s")]).await;
    let alarm = MemoryAlarm::raise();
    let started = Instant::now();
    let r = http::request_within(
        Duration::from_secs(50),
        http,
        "POST",
        "/v1/tasks/email?id=unconfirmed",
        &[("content-type", "application/json")],
        json!({"to": rcpt("blocked"), "subject": "s", "text": "t"})
            .to_string()
            .as_bytes(),
    )
    .await
    .unwrap();
    drop(alarm);
    assert_eq!(r.status, 503, "{}", r.text());
    let p = r.json().unwrap();
    assert_eq!(p["type"], "urn:warren:problem:broker_timeout", "{p}");
    assert_eq!(p["task_id"], "unconfirmed", "{p}");
    assert!(
        started.elapsed() >= warren::CONFIRM_TIMEOUT,
        "answered after the confirm wait: {:?}",
        started.elapsed()
    );
    gateway.signal("TERM").unwrap();
    assert!(gateway.wait_exit(WAIT).await.unwrap().success());
    broker
        .cleanup_stems(&["email"], &[Duration::from_millis(200)])
        .await
        .unwrap();
}
