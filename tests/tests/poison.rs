//! Poison tasks: a task that aborts the worker process is parked after
//! `broker.delivery_limit` deliveries with the reason `delivery_limit`, on
//! quorum queues (the broker counts) and on classic queues with the Redis
//! idempotency store (Redis counts). The test is the supervisor: it
//! restarts the worker each time the task kills it, and waits for its
//! ready line. Then the other direction of each namespace: a worker or
//! `warren topology verify` with the other queue type is refused by name.
//!
//! A serial binary of its own: it kills processes and creates quorum
//! queues (three per run, deleted at the end: quorum-queue churn has
//! wedged the shared broker before, rabbitmq-server#13828). Run it under
//! `flock -x /tmp/warren-broker.lock`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::path::PathBuf;
use std::time::Duration;

use serde_json::json;
use warren::PublishOptions;
use warren::contract::headers;
use warren_tests::broker::TestBroker;
use warren_tests::cli;
use warren_tests::worker::{WorkerProcess, binary};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Spans a worker's start after an abort.
const WAIT: Duration = Duration::from_secs(60);

/// `broker.delivery_limit` of `examples/config/quorum.toml`, and of the
/// classic run.
const LIMIT: usize = 3;

/// The example config a quorum namespace runs with.
fn quorum_config() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/config/quorum.toml")
}

/// The settings of a poison worker in the test's namespace, on `queue_type`.
fn worker_env(broker: &TestBroker, queue_type: &str) -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("WARREN_BROKER__NAMESPACE", broker.namespace().to_owned()),
        // One rung: one retry queue (a quorum queue in quorum mode).
        ("WARREN_CONSUMER__RETRY_DELAYS", r#"["1s"]"#.to_owned()),
        ("WARREN_CONSUMER__EVENTS", "false".to_owned()),
        ("WARREN_OPS__ADDR", "127.0.0.1:0".to_owned()),
    ];
    if queue_type == "quorum" {
        // The example config: quorum queues, delivery_limit = 3, Redis.
        env.push(("WARREN_CONFIG", quorum_config().display().to_string()));
    } else {
        env.extend([
            ("WARREN_BROKER__QUEUE_TYPE", "classic".to_owned()),
            ("WARREN_BROKER__DELIVERY_LIMIT", LIMIT.to_string()),
            ("WARREN_IDEMPOTENCY__BACKEND", "redis".to_owned()),
        ]);
    }
    env
}

async fn start(env: &[(&'static str, String)]) -> WorkerProcess {
    let path = binary("warren-tests", "poison-worker").unwrap();
    let worker = WorkerProcess::start(path, "poison-worker", env)
        .await
        .unwrap();
    worker.wait_ready().await.unwrap();
    worker
}

/// Publishes `poison.abort` and supervises the worker it kills until the
/// task is parked; returns the aborts seen and the worker left running.
async fn park_the_poison(
    broker: &TestBroker,
    env: &[(&'static str, String)],
) -> (usize, String, WorkerProcess) {
    let mut worker = start(env).await;
    let id = broker
        .publish("poison.abort", &json!({}), PublishOptions::default())
        .await
        .unwrap();
    let mut aborts = 0;
    loop {
        match worker
            .wait_for_log_or_exit("Task dead-lettered.", WAIT)
            .await
            .unwrap()
        {
            Some(_) => break,
            None => {
                aborts += 1;
                assert!(
                    aborts <= LIMIT,
                    "the poison task killed the worker {aborts} times; the limit is {LIMIT}"
                );
                // The supervisor's restart.
                worker = start(env).await;
            }
        }
    }
    (aborts, id, worker)
}

async fn assert_parked(broker: &TestBroker, id: &str) {
    let parked = broker
        .take(&broker.dead_queue("poison"), 1, WAIT)
        .await
        .unwrap();
    let m = &parked[0];
    assert_eq!(m.message_id().as_deref(), Some(id));
    assert_eq!(
        m.header(headers::DEAD_REASON).as_deref(),
        Some("delivery_limit")
    );
    assert_eq!(
        m.header(headers::ERROR_KIND).as_deref(),
        Some("delivery_limit")
    );
    let error = m.header(headers::ERROR).unwrap_or_default();
    assert!(error.contains("delivered 3 times"), "{error}");
}

/// The worker keeps serving: a task that fails once is retried through the
/// namespace's retry queue and succeeds, and a plain one succeeds.
async fn still_serving(broker: &TestBroker, worker: &WorkerProcess) {
    for task in ["poison.flaky", "poison.ok"] {
        broker
            .publish(task, &json!({}), PublishOptions::default())
            .await
            .unwrap();
    }
    worker
        .wait_for_log("Task succeeded.", 2, WAIT)
        .await
        .unwrap();
    assert_eq!(
        worker
            .logs_with_message("Task failed; it will be retried.")
            .len(),
        1
    );
}

/// A worker with the other queue type stops at start-up, naming the switch.
async fn refused_with_the_other_type(env: &[(&'static str, String)], has: &str, wants: &str) {
    let path = binary("warren-tests", "poison-worker").unwrap();
    let mut other = WorkerProcess::start(path, "poison-worker", env)
        .await
        .unwrap();
    let status = other.wait_exit(WAIT).await.unwrap();
    assert!(!status.success());
    let stopped = other.logs_with_message("Broker topology conflicts with Warren's; stopping.");
    let error = stopped
        .first()
        .map(|l| l["fields"]["error"].as_str().unwrap_or_default().to_owned())
        .unwrap_or_else(|| panic!("no conflict logged:\n{}", other.tail(20)));
    for needle in [
        format!("is a {has} queue on the broker"),
        format!("broker.queue_type is '{wants}'"),
        "Switching a namespace's queue type".to_owned(),
    ] {
        assert!(error.contains(&needle), "{needle:?} in {error}");
    }
}

/// `warren topology verify --worker poison` with `queue_type`: the queues'
/// differences (bindings aside: the CLI knows no `poison` task types).
async fn verify_queues(broker: &TestBroker, queue_type: &str) -> Vec<serde_json::Value> {
    let env = [
        ("WARREN_BROKER__NAMESPACE", broker.namespace().to_owned()),
        ("WARREN_BROKER__QUEUE_TYPE", queue_type.to_owned()),
        ("WARREN_BROKER__DELIVERY_LIMIT", LIMIT.to_string()),
        ("WARREN_CONSUMER__RETRY_DELAYS", r#"["1s"]"#.to_owned()),
    ];
    let run = cli::run(
        &env,
        &["topology", "verify", "--worker", "poison", "--json"],
        "",
    )
    .await
    .unwrap();
    run.json()["differences"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|d| d["object"] == "queue")
        .collect()
}

#[tokio::test]
async fn a_poison_task_is_parked_after_the_delivery_limit_on_quorum_queues() {
    let _serial = SERIAL.lock().await;
    let broker = TestBroker::new().await.unwrap();
    let env = worker_env(&broker, "quorum");
    let (aborts, id, mut worker) = park_the_poison(&broker, &env).await;
    assert_eq!(aborts, LIMIT);
    assert_parked(&broker, &id).await;
    still_serving(&broker, &worker).await;
    worker.signal("TERM").unwrap();
    worker.wait_exit(WAIT).await.unwrap();

    assert_eq!(
        verify_queues(&broker, "quorum").await,
        Vec::<serde_json::Value>::new()
    );
    let switched = verify_queues(&broker, "classic").await;
    let types: Vec<_> = switched
        .iter()
        .map(|d| {
            (
                d["what"].as_str(),
                d["broker_has"].as_str(),
                d["warren_wants"].as_str(),
            )
        })
        .collect();
    // The work queue, its parking lot and its retry queue.
    assert_eq!(
        types,
        vec![(Some("type"), Some("quorum"), Some("classic")); 3]
    );
    let mut classic = env.clone();
    classic.retain(|(k, _)| *k != "WARREN_CONFIG");
    classic.push(("WARREN_BROKER__QUEUE_TYPE", "classic".to_owned()));
    refused_with_the_other_type(&classic, "quorum", "classic").await;

    broker.cleanup_stems(&["poison"], &[]).await.unwrap();
}

#[tokio::test]
async fn a_poison_task_is_parked_after_the_delivery_limit_on_classic_queues_with_redis() {
    let _serial = SERIAL.lock().await;
    let broker = TestBroker::new().await.unwrap();
    let env = worker_env(&broker, "classic");
    let (aborts, id, mut worker) = park_the_poison(&broker, &env).await;
    assert_eq!(aborts, LIMIT);
    assert_parked(&broker, &id).await;
    still_serving(&broker, &worker).await;
    worker.signal("TERM").unwrap();
    worker.wait_exit(WAIT).await.unwrap();

    // Switching to quorum is refused before any quorum queue is created.
    let mut quorum = env.clone();
    quorum.push(("WARREN_BROKER__QUEUE_TYPE", "quorum".to_owned()));
    refused_with_the_other_type(&quorum, "classic", "quorum").await;

    broker.cleanup_stems(&["poison"], &[]).await.unwrap();
}
