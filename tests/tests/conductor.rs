//! The conductor under disruption, with real processes and the real
//! RabbitMQ: the leader killed (`kill -9`) and stopped (SIGTERM) while a
//! schedule fires every second, and the broker restarted under it. Each
//! fire is counted by its deterministic id at a real consumer (the work
//! queue, drained at the end).
//!
//! These kill processes and restart the shared broker: a binary of its own,
//! its tests one at a time; run it under `flock -x /tmp/warren-broker.lock`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use warren::contract::{self, headers};
use warren_tests::broker::{Message, TestBroker};
use warren_tests::worker::{WorkerProcess, binary};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The documented takeover time (docs/conductor.md): from the leader's
/// death to the first fire of its successor.
const TAKEOVER: Duration = Duration::from_secs(3);
/// The chord tests' pipeline worker retries a failed member after this.
const PIPELINE_RETRY: Duration = Duration::from_secs(3);
const WAIT: Duration = Duration::from_secs(60);

/// A settings file with one schedule firing every second.
fn settings_file(misfire: &str, grace: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    write!(
        f,
        r#"
[conductor]
misfire_grace = "{grace}"

[[schedules]]
name = "tick"
every = "1s"
task_type = "email.send"
misfire = "{misfire}"
payload = {{ to = "tick@example.com", subject = "Tick", text = "tock" }}
"#
    )
    .unwrap();
    f
}

async fn conductor(namespace: &str, config: &std::path::Path, n: usize) -> WorkerProcess {
    let path = binary("conductor", "conductor").unwrap();
    WorkerProcess::start(
        path,
        &format!("conductor-{n}"),
        &[
            ("WARREN_CONFIG", config.display().to_string()),
            ("WARREN_BROKER__NAMESPACE", namespace.to_owned()),
            ("WARREN_OPS__ADDR", "127.0.0.1:0".to_owned()),
        ],
    )
    .await
    .unwrap()
}

/// The running conductor that holds the lock (took it more often than it
/// lost it), once there is one.
async fn leader(conductors: &[WorkerProcess]) -> usize {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(i) = conductors.iter().position(|c| {
            c.logs_with_message("Took the leader lock.").len()
                > c.logs_with_message("No longer the leader.").len()
                && c.logs_with_message("Conductor stopped.").is_empty()
        }) {
            return i;
        }
        assert!(Instant::now() < deadline, "no conductor took the lock");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every fire in the work queue: scheduled time -> (copies, publish time).
async fn drain(namespace: &str) -> BTreeMap<DateTime<Utc>, (usize, i64)> {
    let broker = TestBroker::with_namespace(namespace.to_owned())
        .await
        .unwrap();
    let queue = broker.names.work_queue("email");
    let n = broker.depth(&queue).await.unwrap() as usize;
    let messages: Vec<Message> = broker.take(&queue, n, WAIT).await.unwrap();
    let mut fires = BTreeMap::new();
    for m in messages {
        let id = m.message_id().unwrap();
        let at = id.strip_prefix("tick@").expect("a tick id");
        let at = DateTime::parse_from_rfc3339(at)
            .unwrap()
            .with_timezone(&Utc);
        let published =
            contract::header_i64(m.properties.headers().as_ref(), headers::PUBLISHED_AT_MS)
                .unwrap();
        let entry = fires.entry(at).or_insert((0, published));
        entry.0 += 1;
    }
    fires
}

/// Stops every conductor (SIGTERM), then reads the fires from the work
/// queue and checks that none was made twice.
async fn stop_and_drain(
    conductors: &mut [WorkerProcess],
    namespace: &str,
) -> BTreeMap<DateTime<Utc>, (usize, i64)> {
    for c in conductors.iter() {
        c.signal("TERM").unwrap();
    }
    for c in conductors.iter_mut() {
        c.wait_exit(WAIT).await.unwrap();
    }
    let fires = drain(namespace).await;
    let duplicated: Vec<_> = fires.iter().filter(|(_, (n, _))| *n != 1).collect();
    assert!(
        duplicated.is_empty(),
        "fired more than once: {duplicated:?}"
    );
    fires
}

async fn cleanup(namespace: &str) {
    let broker = TestBroker::with_namespace(namespace.to_owned())
        .await
        .unwrap();
    let _ = broker.cleanup().await;
}

#[tokio::test]
async fn each_second_fires_exactly_once_through_kills_and_a_sigterm_of_the_leader() {
    let _serial = SERIAL.lock().await;
    let broker = TestBroker::new().await.unwrap();
    let namespace = broker.namespace().to_owned();
    let config = settings_file("skip", "30s");
    let mut conductors = Vec::new();
    for n in 0..3 {
        conductors.push(conductor(&namespace, config.path(), n).await);
    }
    let mut next_n = 3;
    let mut lead = leader(&conductors).await;
    // Four failovers, about 7 s apart: kill -9 three times, SIGTERM once.
    for signal in ["KILL", "KILL", "TERM", "KILL"] {
        conductors[lead]
            .wait_for_log("Fired.", 7, WAIT)
            .await
            .unwrap();
        conductors[lead].signal(signal).unwrap();
        conductors[lead].wait_exit(WAIT).await.unwrap();
        conductors.remove(lead);
        // Three again.
        conductors.push(conductor(&namespace, config.path(), next_n).await);
        next_n += 1;
        lead = leader(&conductors).await;
    }
    conductors[lead]
        .wait_for_log("Fired.", 3, WAIT)
        .await
        .unwrap();
    let fires = stop_and_drain(&mut conductors, &namespace).await;
    let first = *fires.keys().next().unwrap();
    let last = *fires.keys().last().unwrap();
    let seconds = (last - first).num_seconds() + 1;
    let published: Vec<i64> = fires.values().map(|(_, p)| *p).collect();
    let gap = published.windows(2).map(|w| w[1] - w[0]).max().unwrap();
    eprintln!(
        "{} fires, each once, over {seconds} s; longest gap between fires {gap} ms",
        fires.len()
    );
    assert!(seconds >= 20, "ran {seconds} s");
    assert_eq!(
        fires.len() as i64,
        seconds,
        "every second from {first} to {last} fired"
    );
    // The gap at each failover: between consecutive publishes.
    assert!(
        gap < TAKEOVER.as_millis() as i64,
        "the longest gap between fires was {gap} ms"
    );
    eprintln!(
        "{} fires over {seconds} s, longest gap {gap} ms",
        fires.len()
    );
    cleanup(&namespace).await;
}

#[tokio::test]
async fn a_broker_restart_fires_nothing_twice_and_applies_the_misfire_policy() {
    let _serial = SERIAL.lock().await;
    let broker = TestBroker::new().await.unwrap();
    let namespace = broker.namespace().to_owned();
    drop(broker);
    // Fires missed by more than 2 s are misfires: run_once makes the
    // latest of them only.
    let config = settings_file("run_once", "2s");
    let mut conductors = Vec::new();
    for n in 0..2 {
        conductors.push(conductor(&namespace, config.path(), n).await);
    }
    let lead = leader(&conductors).await;
    conductors[lead]
        .wait_for_log("Fired.", 3, WAIT)
        .await
        .unwrap();
    warren_tests::broker::rabbitmqctl(&["stop_app"]);
    let stopped = Utc::now();
    tokio::time::sleep(Duration::from_secs(8)).await;
    warren_tests::broker::rabbitmqctl(&["start_app"]);
    warren_tests::broker::rabbitmqctl(&["await_startup"]);
    let started = Utc::now();
    // Both lost their connection; one leads again and fires on.
    let deadline = Instant::now() + WAIT;
    while conductors
        .iter()
        .map(|c| c.logs_with_message("Took the leader lock.").len())
        .sum::<usize>()
        < 2
    {
        assert!(Instant::now() < deadline, "nobody took the lock again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Wait for a fire scheduled after the broker was back (its log line
    // names it), not for a count of fires: a leader that lags on a loaded
    // machine may first make late fires of seconds before `started`.
    let fired_after = |c: &WorkerProcess| {
        c.logs_with_message("Fired.").iter().any(|l| {
            l["fields"]["task_id"]
                .as_str()
                .and_then(|id| id.strip_prefix("tick@"))
                .and_then(|at| DateTime::parse_from_rfc3339(at).ok())
                .is_some_and(|at| at.with_timezone(&Utc) > started)
        })
    };
    let deadline = Instant::now() + WAIT;
    while !conductors.iter().any(fired_after) {
        assert!(Instant::now() < deadline, "no fire after the restart");
        let lead = leader(&conductors).await;
        let seen = conductors[lead].logs_with_message("Fired.").len();
        let _ = conductors[lead]
            .wait_for_log("Fired.", seen + 1, Duration::from_secs(10))
            .await;
    }
    let fires = stop_and_drain(&mut conductors, &namespace).await;
    // Of the seconds the broker was down, only those within the grace
    // before the new leader's start, and the latest misfire, were made.
    let during: Vec<_> = fires
        .keys()
        .filter(|at| **at > stopped && **at < started)
        .collect();
    assert!(
        during.len() <= 2 + 1 + 2,
        "outage of {} s: {} fires made for it ({during:?})",
        (started - stopped).num_seconds(),
        during.len()
    );
    assert!(fires.keys().any(|at| *at > started), "fires resumed");
    cleanup(&namespace).await;
}

/// Two conductors with no schedules (they only run chords), a pipeline
/// worker, and a chord of 20 members whose each member has failed once and
/// waits 3 s for its second attempt.
struct ChordWorld {
    _serial: tokio::sync::MutexGuard<'static, ()>,
    broker: TestBroker,
    namespace: String,
    _config: tempfile::NamedTempFile,
    conductors: Vec<WorkerProcess>,
    first: usize,
    dir: tempfile::TempDir,
    worker: WorkerProcess,
    id: String,
}

async fn chord_mid_group() -> ChordWorld {
    use serde_json::json;
    use warren::workflow::{Step, group};

    let serial = SERIAL.lock().await;
    let pipeline = binary("warren-examples", "pipeline-worker").unwrap();
    // Built before any broker connection opens, for `workflow_status`.
    binary("gateway", "gateway").unwrap();
    let broker = TestBroker::new().await.unwrap();
    let namespace = broker.namespace().to_owned();
    // No schedules: the conductors only run chords.
    let config = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    let conductors = vec![
        conductor(&namespace, config.path(), 0).await,
        conductor(&namespace, config.path(), 1).await,
    ];
    let first = leader(&conductors).await;
    conductors[first]
        .wait_for_log("Read the chords from the events stream.", 1, WAIT)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let worker = WorkerProcess::start(
        pipeline,
        "pipeline-worker",
        &[
            ("WARREN_BROKER__NAMESPACE", namespace.clone()),
            ("WARREN_OPS__ADDR", "127.0.0.1:0".to_owned()),
            (
                "WARREN_CONSUMER__RETRY_DELAYS",
                format!(r#"["{}s"]"#, PIPELINE_RETRY.as_secs()),
            ),
            ("PIPELINE_DIR", dir.path().display().to_string()),
        ],
    )
    .await
    .unwrap();
    worker.wait_for_log("Consuming.", 1, WAIT).await.unwrap();

    // Each member fails once, then waits 3 s for its second attempt.
    let members = (1..=20)
        .map(|i| {
            Step::new(
                "pipeline.process",
                json!({ "input": { "id": format!("m{i}"), "value": i }, "factor": 2, "fail_first": 1 }),
            )
        })
        .collect();
    let id = format!("chord-{}", &namespace[2..]);
    broker
        .publisher
        .publish_chord(
            group(members)
                .id(&id)
                .then(Step::new("pipeline.report", json!({}))),
        )
        .await
        .unwrap();
    worker
        .wait_for_log("Task failed; it will be retried.", 20, WAIT)
        .await
        .unwrap();
    ChordWorld {
        _serial: serial,
        broker,
        namespace,
        _config: config,
        conductors,
        first,
        dir,
        worker,
        id,
    }
}

/// The chord as `GET /v1/workflows/{id}` shows it, from a gateway started
/// now in the namespace: it reads the chord's record and every task event
/// from the events stream, so what it shows is what the stream kept
/// through the kill or the restart.
async fn chord_status(namespace: &str, id: &str) -> serde_json::Value {
    let store = tempfile::tempdir().unwrap();
    let mut env = warren_tests::worker::gateway_env(namespace, store.path());
    // The conductors declared the stream with the default retention.
    env.retain(|(k, _)| *k != "WARREN_EVENTS__RETENTION");
    let mut gateway = WorkerProcess::gateway(&env).await.unwrap();
    let http = gateway.http_addr().await.unwrap();
    gateway.wait_caught_up().await.unwrap();
    gateway
        .wait_for_log("Read the workflow records from the events stream.", 1, WAIT)
        .await
        .unwrap();
    let r = warren_tests::http::get(http, &format!("/v1/workflows/{id}"))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let body = r.json().unwrap();
    gateway.signal("TERM").unwrap();
    gateway.wait_exit(WAIT).await.unwrap();
    body
}

/// The chord's status: succeeded, each of its 20 members succeeded (value
/// `2 n`), its callback succeeded once, nothing failed.
fn assert_chord_succeeded(body: &serde_json::Value, id: &str) {
    assert_eq!(
        (
            body["kind"].as_str(),
            body["state"].as_str(),
            body["size"].as_u64()
        ),
        (Some("chord"), Some("succeeded"), Some(20)),
        "{body}"
    );
    let members = body["members"].as_array().unwrap();
    assert_eq!(members.len(), 20);
    for (i, m) in members.iter().enumerate() {
        let n = i as i64 + 1;
        assert_eq!(m["task_id"], format!("{id}.{n}"), "{m}");
        assert_eq!(m["state"], "succeeded", "{m}");
        assert_eq!(m["result"]["value"], 2 * n, "{m}");
    }
    let callback = &body["callback"];
    assert_eq!(
        (callback["task_id"].as_str(), callback["state"].as_str()),
        (Some(format!("{id}.callback").as_str()), Some("succeeded")),
        "{callback}"
    );
    assert_eq!(body["failed"], serde_json::json!([]), "{body}");
}

/// A chord whose conductor leader is killed (`kill -9`) while the chord's
/// members wait for their second attempt: the conductor that takes over
/// publishes the callback, once, and the worker runs it once.
#[tokio::test]
async fn a_chord_callback_runs_once_when_the_leader_is_killed_mid_group() {
    let ChordWorld {
        _serial,
        broker,
        namespace: _,
        _config,
        mut conductors,
        first,
        dir,
        mut worker,
        id,
    } = chord_mid_group().await;
    conductors[first].signal("KILL").unwrap();
    conductors[first].wait_exit(WAIT).await.unwrap();
    let second = 1 - first;
    conductors[second]
        .wait_for_log("Chord complete; callback published.", 1, WAIT)
        .await
        .unwrap();

    // The callback ran once, with the 20 results in member order.
    let callback = format!("{id}.callback");
    let ran = |w: &WorkerProcess| {
        w.logs_with_message("Task succeeded.")
            .iter()
            .filter(|l| l["span"]["task_id"] == callback.as_str())
            .count()
    };
    let deadline = Instant::now() + WAIT;
    while ran(&worker) == 0 {
        assert!(Instant::now() < deadline, "{}", worker.tail(30));
        worker
            .wait_for_log("Task succeeded.", 21, WAIT)
            .await
            .unwrap();
    }
    let results: Vec<serde_json::Value> = serde_json::from_slice(
        &std::fs::read(dir.path().join(format!("{callback}.json"))).unwrap(),
    )
    .unwrap();
    let values: Vec<i64> = results
        .iter()
        .map(|r| r["result"]["value"].as_i64().unwrap())
        .collect();
    assert_eq!(values, (1..=20).map(|i| i * 2).collect::<Vec<_>>());
    // Nothing more: the survivor stops, the worker drains its queue.
    conductors[second].signal("TERM").unwrap();
    conductors[second].wait_exit(WAIT).await.unwrap();
    worker.signal("TERM").unwrap();
    worker.wait_exit(WAIT).await.unwrap();
    assert_eq!(ran(&worker), 1);
    assert_eq!(
        conductors[second]
            .logs_with_message("Chord complete; callback published.")
            .len(),
        1
    );
    assert!(
        conductors[first]
            .logs_with_message("Chord complete; callback published.")
            .is_empty()
    );
    let queue = broker.names.work_queue("pipeline");
    assert_eq!(broker.depth(&queue).await.unwrap(), 0);
    // And GET /v1/workflows/{id} shows it, every member and the callback.
    assert_chord_succeeded(&chord_status(broker.namespace(), &id).await, &id);
    // The worker's retry rung is not among the usual ones.
    let _ = broker.cleanup_stems(&["pipeline"], &[PIPELINE_RETRY]).await;
    let _ = broker.cleanup().await;
}

/// A chord whose broker restarts while the chord's members wait for their
/// second attempt: once the broker is back, the leader (whichever it is)
/// publishes the callback once, and the worker runs it once.
#[tokio::test]
async fn a_chord_callback_runs_once_through_a_broker_restart_mid_group() {
    let ChordWorld {
        _serial,
        broker,
        namespace,
        _config,
        mut conductors,
        first: _,
        dir,
        mut worker,
        id,
    } = chord_mid_group().await;
    drop(broker);
    warren_tests::broker::rabbitmqctl(&["stop_app"]);
    warren_tests::broker::rabbitmqctl(&["start_app"]);
    warren_tests::broker::rabbitmqctl(&["await_startup"]);

    let callback = format!("{id}.callback");
    let ran = |w: &WorkerProcess| {
        w.logs_with_message("Task succeeded.")
            .iter()
            .filter(|l| l["span"]["task_id"] == callback.as_str())
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(90);
    while ran(&worker) == 0 {
        assert!(
            Instant::now() < deadline,
            "worker:\n{}\nconductors:\n{}\n{}",
            worker.tail(30),
            conductors[0].tail(40),
            conductors[1].tail(40)
        );
        let seen = worker.logs_with_message("Task succeeded.").len();
        let _ = worker
            .wait_for_log("Task succeeded.", seen + 1, Duration::from_secs(90))
            .await;
    }
    let results: Vec<serde_json::Value> = serde_json::from_slice(
        &std::fs::read(dir.path().join(format!("{callback}.json"))).unwrap(),
    )
    .unwrap();
    assert_eq!(results.len(), 20);
    assert!(
        results.iter().all(|r| r["state"] == "succeeded"),
        "{results:?}"
    );
    for c in conductors.iter() {
        c.signal("TERM").unwrap();
    }
    for c in conductors.iter_mut() {
        c.wait_exit(WAIT).await.unwrap();
    }
    worker.signal("TERM").unwrap();
    worker.wait_exit(WAIT).await.unwrap();
    assert_eq!(ran(&worker), 1);
    let published: usize = conductors
        .iter()
        .map(|c| {
            c.logs_with_message("Chord complete; callback published.")
                .len()
        })
        .sum();
    // The callback ran once (above). Its publisher may not have logged it:
    // a transaction the broker committed just before it stopped can lose
    // its commit-ok with the connection, and the next leader then finds the
    // callback's `queued` event on the stream and publishes nothing.
    assert!(
        published <= 1,
        "the callback was published {published} times"
    );
    let broker = TestBroker::with_namespace(namespace.clone()).await.unwrap();
    let queue = broker.names.work_queue("pipeline");
    assert_eq!(broker.depth(&queue).await.unwrap(), 0);
    // And GET /v1/workflows/{id} shows it through the restart.
    assert_chord_succeeded(&chord_status(&namespace, &id).await, &id);
    // The worker's retry rung is not among the usual ones.
    let _ = broker.cleanup_stems(&["pipeline"], &[PIPELINE_RETRY]).await;
    let _ = broker.cleanup().await;
}
