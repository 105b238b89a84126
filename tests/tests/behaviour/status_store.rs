//! The `redis` status store end to end: real gateway processes on
//! `status.store = "redis"`, the real RabbitMQ events stream, the real
//! Redis. Task events are published straight to the namespace's events
//! exchange (as workers do), so each test knows exactly what the store
//! must hold. Each test has its own namespace and Redis key prefix, and
//! deletes both at the end.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use chrono::Utc;
use serde_json::Value;
use warren::events::TaskState;
use warren_tests::smtp::SmtpSink;
use warren_tests::status::{StatusWorld, lifecycle};
use warren_tests::worker::{WorkerProcess, email_env};
use warren_tests::{WAIT, http, rcpt};

async fn get(http: SocketAddr, path: &str) -> (u16, Value) {
    let r = http::get(http, path).await.unwrap();
    (r.status, r.json().unwrap())
}

/// Every page of a listing, following `next`: the task ids in order.
async fn all_pages(http: SocketAddr, first: &str) -> (Vec<String>, usize) {
    let mut ids = Vec::new();
    let mut pages = 0;
    let mut path = Some(first.to_owned());
    while let Some(p) = path {
        let (code, body) = get(http, &p).await;
        assert_eq!(code, 200, "{p}: {body}");
        pages += 1;
        for t in body["tasks"].as_array().unwrap() {
            ids.push(t["task_id"].as_str().unwrap().to_owned());
        }
        path = body["next"].as_str().map(str::to_owned);
    }
    (ids, pages)
}

#[tokio::test]
async fn the_listing_filters_and_pages_on_redis_and_both_replicas_answer_alike() {
    let mut w = StatusWorld::new(Duration::from_secs(3600)).await.unwrap();
    let base = Utc::now();
    let mut events = Vec::new();
    let finals = [
        TaskState::Succeeded,
        TaskState::DeadLettered,
        TaskState::Retrying,
    ];
    for i in 0..30 {
        let ty = if i % 2 == 0 {
            "email.send"
        } else {
            "image.thumbnail"
        };
        let at = base + chrono::Duration::milliseconds(10 * i);
        events.extend(lifecycle(
            &format!("l{i:02}"),
            ty,
            finals[i as usize % 3],
            at,
        ));
    }
    w.publish(events).await;
    let (reference, last) = w.reference().await.unwrap();
    let (first, _) = w.gateway(&[]).await.unwrap();
    let (second, _) = w
        .gateway(&[("WARREN_STATUS__INDEXER", "false")])
        .await
        .unwrap();
    w.wait_indexed(last, WAIT).await.unwrap();
    w.assert_store_matches(&reference).await.unwrap();
    w.wait_ready(first).await.unwrap();
    w.wait_ready(second).await.unwrap();

    // What each filter must list, newest first.
    let mut expected: Vec<_> = reference.values().collect();
    expected.sort_by_key(|r| std::cmp::Reverse(r.position()));
    let want = |f: &dyn Fn(&&warren::events::TaskRecord) -> bool| {
        expected
            .iter()
            .filter(|r| f(r))
            .map(|r| r.status.task_id.clone())
            .collect::<Vec<_>>()
    };
    let since = base + chrono::Duration::milliseconds(150);
    for (query, wanted, pages) in [
        ("limit=7", want(&|_| true), 5),
        (
            "state=dead_lettered&type=email.send&limit=2",
            want(&|r| {
                r.status.state == TaskState::DeadLettered && r.status.task_type == "email.send"
            }),
            3,
        ),
        (
            "type=image.thumbnail&limit=4",
            want(&|r| r.status.task_type == "image.thumbnail"),
            4,
        ),
        (
            &*format!(
                "state=succeeded&since={}&limit=3",
                since.to_rfc3339().replace('+', "%2B")
            ),
            want(&|r| r.status.state == TaskState::Succeeded && r.status.updated_at >= since),
            4,
        ),
    ] {
        let (ids, n) = all_pages(first, &format!("/v1/tasks?{query}")).await;
        assert_eq!(ids, wanted, "{query}");
        assert_eq!(n, pages, "{query}: pages");
        assert_eq!(
            all_pages(second, &format!("/v1/tasks?{query}")).await.0,
            wanted
        );
    }
    for (query, field) in [
        ("limit=1001", "limit"),
        ("state=lost", "state"),
        ("type=email%20send", "type"),
        ("since=yesterday", "since"),
        ("owner=me", "owner"),
    ] {
        let r = http::get(first, &format!("/v1/tasks?{query}"))
            .await
            .unwrap();
        assert_eq!(r.status, 400, "{query}");
        assert_eq!(r.header("content-type"), Some("application/problem+json"));
        assert_eq!(r.json().unwrap()["field"], field, "{query}");
    }
    // Each task answers alike from both replicas, as folded from the stream.
    let mut by_state: HashMap<String, usize> = HashMap::new();
    for (id, record) in &reference {
        let a = get(first, &format!("/v1/tasks/{id}")).await;
        assert_eq!(a, get(second, &format!("/v1/tasks/{id}")).await, "{id}");
        assert_eq!(a.1["state"], record.status.state.as_str(), "{id}");
        *by_state
            .entry(record.status.state.as_str().to_owned())
            .or_default() += 1;
    }
    assert_eq!(by_state["dead_lettered"], 10);
    assert_eq!(
        get(second, "/v1/tasks/never-seen").await,
        (
            404,
            serde_json::json!({"task_id": "never-seen", "state": "unknown"})
        )
    );
    w.finish().await.unwrap();
}

#[tokio::test]
async fn past_the_retention_a_task_answers_unknown_and_its_keys_are_gone() {
    let mut w = StatusWorld::new(Duration::from_secs(3)).await.unwrap();
    let (http, _) = w.gateway(&[]).await.unwrap();
    w.publish(lifecycle(
        "old",
        "email.send",
        TaskState::Succeeded,
        Utc::now(),
    ))
    .await;
    let (_, last) = w.reference().await.unwrap();
    w.wait_indexed(last, WAIT).await.unwrap();
    let (code, body) = get(http, "/v1/tasks/old").await;
    assert_eq!((code, body["state"].as_str()), (200, Some("succeeded")));
    let prefix = w.prefix.clone();
    let live = http;
    // The record expires with its TTL, the index entries at the indexer's
    // next trim.
    let deadline = std::time::Instant::now() + WAIT;
    while w.store.record("old").await.unwrap().is_some() || keys(&prefix).await.len() > 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the record or its index entries outlived the retention: {:?}",
            keys(&prefix).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The gateway that saw the events live (and still holds them in its
    // recent view) answers `unknown` too: past the retention is gone.
    assert_eq!(
        get(live, "/v1/tasks/old").await,
        (
            404,
            serde_json::json!({"task_id": "old", "state": "unknown"})
        )
    );
    let (_, listed) = get(live, "/v1/tasks").await;
    assert_eq!(listed["tasks"], serde_json::json!([]));
    // So does a gateway that reads Redis only.
    let (http, _) = w
        .gateway(&[("WARREN_STATUS__INDEXER", "false")])
        .await
        .unwrap();
    w.wait_ready(http).await.unwrap();
    assert_eq!(
        get(http, "/v1/tasks/old").await,
        (
            404,
            serde_json::json!({"task_id": "old", "state": "unknown"})
        )
    );
    let (_, listed) = get(http, "/v1/tasks").await;
    assert_eq!(listed["tasks"], serde_json::json!([]));
    // Only the committed offset and the set of types are left.
    let mut left = keys(&prefix).await;
    left.sort();
    assert_eq!(left, [format!("{prefix}offset"), format!("{prefix}types")]);
    w.finish().await.unwrap();
    assert!(
        keys(&prefix).await.is_empty(),
        "the test's keys are deleted"
    );
}

#[tokio::test]
async fn a_task_through_a_real_worker_is_answered_from_redis_by_a_gateway_that_never_saw_it() {
    let mut w = StatusWorld::new(Duration::from_secs(3600)).await.unwrap();
    let sink = SmtpSink::start().await.unwrap();
    let mut worker = WorkerProcess::email(&email_env(w.broker.namespace(), sink.port()))
        .await
        .unwrap();
    worker.wait_ready().await.unwrap();
    // The gateway that indexes (and publishes the task).
    let (indexer, _) = w.gateway(&[]).await.unwrap();
    w.wait_ready(indexer).await.unwrap();
    let to = rcpt("through-redis");
    let r = http::post_json(
        indexer,
        "/v1/tasks/email",
        &serde_json::json!({"to": to, "subject": "Through a worker", "text": "indexed"}),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 202, "{}", r.text());
    let id = r.json().unwrap()["task_id"].as_str().unwrap().to_owned();
    let mails = sink.wait_for_messages_to(&to, 1, WAIT).await.unwrap();
    assert!(mails[0].message_id().unwrap().contains(&id));
    // The worker's events reach the store through the stream and the indexer.
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let record = w.store.record(&id).await.unwrap();
        if record
            .as_ref()
            .is_some_and(|r| r.status.state == TaskState::Succeeded)
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the store never showed {id} succeeded: {record:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A gateway started afterwards, without an indexer: nothing of this
    // task is in its recent view, so the answer is Redis's.
    let (reader, _) = w
        .gateway(&[("WARREN_STATUS__INDEXER", "false")])
        .await
        .unwrap();
    w.wait_ready(reader).await.unwrap();
    for http in [reader, indexer] {
        let (code, body) = get(http, &format!("/v1/tasks/{id}")).await;
        assert_eq!(
            (code, body["state"].as_str()),
            (200, Some("succeeded")),
            "{body}"
        );
        assert_eq!(body["task_type"], "email.send");
        assert_eq!(body["attempt"], 1);
        assert!(
            body["result"]["message_id"].as_str().unwrap().contains(&id),
            "{body}"
        );
        assert!(
            body["queued_at"].is_string() && body["finished_at"].is_string(),
            "{body}"
        );
    }
    let (code, listed) = get(reader, "/v1/tasks?state=succeeded&type=email.send").await;
    assert_eq!(code, 200, "{listed}");
    assert_eq!(listed["tasks"][0]["task_id"], id.as_str(), "{listed}");
    worker.signal("TERM").unwrap();
    worker.wait_exit(WAIT).await.unwrap();
    w.broker.cleanup_stems(&["email"], &[]).await.unwrap();
    w.finish().await.unwrap();
}

/// The keys under `prefix` (sorted sets that emptied are gone too).
async fn keys(prefix: &str) -> Vec<String> {
    let client = redis::Client::open(warren_tests::status::REDIS_URL).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut c)
        .await
        .unwrap()
}
