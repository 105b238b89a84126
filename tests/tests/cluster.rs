//! Node loss on a three-node RabbitMQ cluster (docs/cluster.md): quorum
//! queues, 5,000 tasks enqueued through the gateway and run by two worker
//! processes with the Redis idempotency store, while one node's Erlang VM
//! is killed with SIGKILL, restarted, and then another node is stopped
//! gracefully. Every task is run, none is lost; a handler runs twice only
//! for a delivery in flight on a lost connection (at most a prefetch per
//! worker per fault), and a redelivery of a task that had succeeded is
//! acked without running (deduplicated by id). The gateway accepts every
//! task, each resubmitted with the same id until the broker confirmed it
//! (202), as docs/gateway.md tells clients to do after a 503.
//!
//! Heavy (three RabbitMQ nodes on a small machine): a test binary of its
//! own, which scripts/test runs alone, in a step of its own, within a time
//! budget. It starts and stops the cluster with scripts/cluster and never
//! touches the broker on 5672.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use redis::AsyncCommands;
use serde_json::json;
use tokio::sync::watch;
use warren_tests::http;
use warren_tests::worker::{WorkerProcess, binary, gateway_env};

/// Tasks in the flow.
const TASKS: usize = 5_000;
/// Clients enqueueing at once.
const CLIENTS: usize = 16;
/// The workers' prefetch: the most deliveries one worker holds unacked.
const PREFETCH: usize = 16;
/// Faults that cost a connection: the SIGKILL and the graceful stop.
const FAULTS: usize = 2;
/// The most one step of the flow (the next 1,000 tasks accepted) may take.
/// The step and drain bounds keep the test within scripts/test's budget
/// (7 minutes), so that a failure reports itself instead of being killed.
const STEP: Duration = Duration::from_secs(90);
/// The most the flow may take once every task is accepted: the workers
/// keep up with the clients, so this is only the last few tasks.
const DRAIN: Duration = Duration::from_secs(60);

/// The cluster of scripts/cluster, in `$WARREN_CLUSTER_DIR` (scripts/test
/// sets it, to clean up after a test stopped at its time budget) or a
/// temporary directory; stopped (and its directory removed) when dropped,
/// whatever the test's outcome.
struct Cluster {
    dir: PathBuf,
    _temp: Option<tempfile::TempDir>,
}

impl Cluster {
    fn script() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/cluster")
    }

    async fn start() -> anyhow::Result<Self> {
        let cluster = match std::env::var_os("WARREN_CLUSTER_DIR") {
            Some(dir) => {
                let cluster = Self {
                    dir: dir.into(),
                    _temp: None,
                };
                // What an earlier run left, gone: a cluster of its own.
                cluster.run(&["stop"]).await?;
                cluster
            }
            None => {
                let temp = tempfile::Builder::new()
                    .prefix("warren-cluster-")
                    .tempdir()?;
                Self {
                    dir: temp.path().to_owned(),
                    _temp: Some(temp),
                }
            }
        };
        cluster.run(&["start"]).await?;
        Ok(cluster)
    }

    /// `scripts/cluster args...`; its standard output.
    async fn run(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = tokio::process::Command::new(Self::script())
            .args(args)
            .env("WARREN_CLUSTER_DIR", &self.dir)
            .output()
            .await
            .context("scripts/cluster did not run")?;
        if !out.status.success() {
            bail!(
                "scripts/cluster {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// SIGKILL to node `n`'s Erlang VM.
    async fn kill(&self, n: u8) -> anyhow::Result<()> {
        let pid = self.run(&["pid", &n.to_string()]).await?;
        let status = tokio::process::Command::new("kill")
            .args(["-9", &pid])
            .status()
            .await?;
        anyhow::ensure!(status.success(), "kill -9 {pid} failed");
        Ok(())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = std::process::Command::new(Self::script())
            .arg("stop")
            .env("WARREN_CLUSTER_DIR", &self.dir)
            .status();
    }
}

/// The cluster's addresses starting from node `first` (0-based), as
/// `broker.url` takes them.
fn urls_from(urls: &[String], first: usize) -> String {
    let mut list = urls[first..].to_vec();
    list.extend_from_slice(&urls[..first]);
    list.join(",")
}

/// What every process of the namespace shares.
fn broker_env(namespace: &str, url: String) -> Vec<(&'static str, String)> {
    vec![
        ("WARREN_BROKER__URL", url),
        ("WARREN_BROKER__NAMESPACE", namespace.to_owned()),
        ("WARREN_BROKER__QUEUE_TYPE", "quorum".to_owned()),
        // A lost node is left for another after 2 x 2 s (docs/cluster.md).
        ("WARREN_BROKER__CONNECT_TIMEOUT", "2s".to_owned()),
        ("WARREN_BROKER__RECONNECT_MAX_DELAY", "1s".to_owned()),
        ("WARREN_OPS__ADDR", "127.0.0.1:0".to_owned()),
    ]
}

/// How the enqueueing went.
#[derive(Default)]
struct Enqueued {
    /// Requests answered other than 202 (or not at all), each retried.
    retried: AtomicUsize,
    /// The longest one task took from its first request to its 202, ms.
    longest_ms: AtomicUsize,
}

/// Enqueues task `i` through the gateway, resubmitting it with the same id
/// after a 5xx or no answer, until it is accepted.
async fn enqueue(gateway: std::net::SocketAddr, i: usize, stats: &Enqueued) {
    let body = serde_json::to_vec(&json!({
        "type": "cluster.note",
        "payload": {},
        "id": task_id(i),
    }))
    .unwrap();
    let first = Instant::now();
    let mut pause = Duration::from_millis(50);
    loop {
        let answer = http::request_within(
            Duration::from_secs(15),
            gateway,
            "POST",
            "/v1/tasks",
            &[("Content-Type", "application/json")],
            &body,
        )
        .await;
        match answer {
            Ok(r) if r.status == 202 => break,
            Ok(r) if r.status < 500 => panic!("task {i} refused: {} {}", r.status, r.text()),
            _ => {
                stats.retried.fetch_add(1, Ordering::Relaxed);
                assert!(
                    first.elapsed() < Duration::from_secs(120),
                    "the gateway did not accept task {i} for 120 s: {answer:?}",
                    answer = answer.map(|r| (r.status, r.text()))
                );
                // The client's backoff between resubmissions.
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
        }
    }
    let took = usize::try_from(first.elapsed().as_millis()).unwrap_or(usize::MAX);
    stats.longest_ms.fetch_max(took, Ordering::Relaxed);
}

fn task_id(i: usize) -> String {
    format!("note-{i:05}")
}

/// The management API of node `n` (1-3): `GET path` as JSON, or why not.
async fn management(n: usize, path: &str) -> anyhow::Result<serde_json::Value> {
    management_call(n, "GET", path, b"").await
}

async fn management_call(
    n: usize,
    method: &str,
    path: &str,
    body: &[u8],
) -> anyhow::Result<serde_json::Value> {
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", 15700 + n).parse()?;
    let r = http::request_within(
        Duration::from_secs(10),
        addr,
        method,
        path,
        // guest:guest
        &[
            ("Authorization", "Basic Z3Vlc3Q6Z3Vlc3Q="),
            ("Content-Type", "application/json"),
        ],
        body,
    )
    .await?;
    anyhow::ensure!(r.status == 200, "{} {}", r.status, r.text());
    r.json()
}

/// Where the tasks that never ran are: for each missing id, whether it is
/// ready in a queue of the namespace, recorded as done or counted in the
/// Redis idempotency store, or neither (then it is unacked, held by a
/// consumer); and, per node, the namespace's queues and every channel that
/// holds unacked deliveries (its connection names the process and node).
async fn where_are(
    namespace: &str,
    missing: &[String],
    redis: &mut redis::aio::MultiplexedConnection,
) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let missing_set: std::collections::HashSet<&str> = missing.iter().map(String::as_str).collect();
    let mut ready: HashMap<String, String> = HashMap::new();
    let mut queues_seen = false;
    for n in 1..=3 {
        let queues = match management(
            n,
            "/api/queues/%2f?columns=name,type,node,leader,members,messages_ready,messages_unacknowledged,consumers",
        )
        .await
        {
            Ok(q) => q,
            Err(e) => {
                let _ = writeln!(out, "node {n}: management API unanswered: {e:#}");
                continue;
            }
        };
        if !queues_seen {
            queues_seen = true;
            for q in queues.as_array().into_iter().flatten() {
                let name = q["name"].as_str().unwrap_or_default();
                if !name.starts_with(namespace) {
                    continue;
                }
                let _ = writeln!(
                    out,
                    "queue {name} ({}, leader {}): ready {}, unacked {}, consumers {}",
                    q["type"],
                    q["leader"],
                    q["messages_ready"],
                    q["messages_unacknowledged"],
                    q["consumers"]
                );
                let ready_count = q["messages_ready"].as_u64().unwrap_or(0);
                if ready_count == 0 || q["type"] == "stream" {
                    continue;
                }
                // Ready messages, peeked (requeued): their ids.
                let body = json!({"count": ready_count.min(10_000), "ackmode": "ack_requeue_true", "encoding": "auto", "truncate": 64});
                let path = format!("/api/queues/%2f/{}/get", name.replace('/', "%2f"));
                match management_call(n, "POST", &path, body.to_string().as_bytes()).await {
                    Ok(messages) => {
                        for m in messages.as_array().into_iter().flatten() {
                            if let Some(id) = m["properties"]["message_id"].as_str()
                                && missing_set.contains(id)
                            {
                                ready.insert(id.to_owned(), name.to_owned());
                            }
                        }
                    }
                    Err(e) => {
                        let _ = writeln!(out, "  could not peek {name}: {e:#}");
                    }
                }
            }
        }
        // The name each process gave its connections (its identity).
        let named: HashMap<String, String> =
            management(n, "/api/connections?columns=name,user_provided_name")
                .await
                .ok()
                .and_then(|c| c.as_array().cloned())
                .into_iter()
                .flatten()
                .filter_map(|c| {
                    Some((
                        c["name"].as_str()?.to_owned(),
                        c["user_provided_name"].as_str()?.to_owned(),
                    ))
                })
                .collect();
        match management(
            n,
            "/api/channels?columns=name,node,messages_unacknowledged,consumer_count,prefetch_count,connection_details",
        )
        .await
        {
            Ok(channels) => {
                for c in channels.as_array().into_iter().flatten() {
                    if c["messages_unacknowledged"].as_u64().unwrap_or(0) == 0 {
                        continue;
                    }
                    let connection = c["connection_details"]["name"].as_str().unwrap_or_default();
                    let _ = writeln!(
                        out,
                        "node {n}: channel {} on {} holds {} unacked ({} consumers, prefetch {}); connection {connection} named {:?}",
                        c["name"],
                        c["node"],
                        c["messages_unacknowledged"],
                        c["consumer_count"],
                        c["prefetch_count"],
                        named.get(connection).map_or("(not known to this node)", String::as_str)
                    );
                }
            }
            Err(e) => {
                let _ = writeln!(out, "node {n}: channels unanswered: {e:#}");
            }
        }
    }
    for id in missing {
        let done: bool = redis
            .exists(warren::idempotency::key(namespace, "cluster.note", id))
            .await
            .unwrap_or(false);
        let counts: Vec<String> = redis
            .keys(format!("{namespace}:deliveries:cluster.note:{id}:*"))
            .await
            .unwrap_or_default();
        let place = match ready.get(id) {
            Some(queue) => format!("ready in {queue}"),
            None => "not ready in any queue: unacked (held by a consumer)".to_owned(),
        };
        let _ = writeln!(
            out,
            "missing {id}: {place}; idempotency done key: {done}; delivery count keys: {counts:?}"
        );
    }
    out
}

/// Keeps what a failed run leaves for a look afterwards, under
/// `target/test-artefacts/cluster/<namespace>/`: each process's output, the
/// report, and the nodes' logs (the cluster's directory goes with it).
fn keep_artefacts(
    namespace: &str,
    processes: &[(&str, &WorkerProcess)],
    cluster_dir: &std::path::Path,
    report: &str,
) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"),
        PathBuf::from,
    );
    let dir = target
        .join("test-artefacts")
        .join("cluster")
        .join(namespace);
    let _ = std::fs::create_dir_all(&dir);
    for (name, p) in processes {
        let _ = std::fs::write(dir.join(format!("{name}.log")), p.raw_output().join("\n"));
    }
    let _ = std::fs::write(dir.join("report.txt"), report);
    for n in 1..=3 {
        let logs = cluster_dir.join(format!("c{n}")).join("log");
        if let Ok(entries) = std::fs::read_dir(&logs) {
            for e in entries.flatten() {
                let _ = std::fs::copy(
                    e.path(),
                    dir.join(format!("c{n}-{}", e.file_name().to_string_lossy())),
                );
            }
        }
    }
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_flow_through_a_node_killed_restarted_and_another_stopped() {
    let began = Instant::now();
    let cluster = Cluster::start().await.unwrap();
    let started_cluster = began.elapsed();
    let urls: Vec<String> = cluster
        .run(&["urls"])
        .await
        .unwrap()
        .split(',')
        .map(str::to_owned)
        .collect();
    assert_eq!(urls.len(), 3);
    let namespace = format!(
        "cluster-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let runs_key = format!("{namespace}:runs");
    let worker_env = |first: usize| {
        let mut env = broker_env(&namespace, urls_from(&urls, first));
        env.extend([
            ("WARREN_IDEMPOTENCY__BACKEND", "redis".to_owned()),
            ("WARREN_IDEMPOTENCY__TTL", "30m".to_owned()),
            ("WARREN_CONSUMER__PREFETCH", PREFETCH.to_string()),
            ("WARREN_CONSUMER__EVENTS", "false".to_owned()),
            ("WARREN_CONSUMER__RETRY_DELAYS", r#"["1s"]"#.to_owned()),
            ("CLUSTER_RUNS_KEY", runs_key.clone()),
        ]);
        env
    };
    // The delay cascade's unrouted queues are classic queues: they live on
    // the node that first declared them, and while that node is down every
    // (re)declaration of the cascade fails (docs/cluster.md, "Limits"). Here
    // they live on node 3, which stays up; node 1 and 2 go down.
    {
        let on_3 = warren::settings::BrokerSettings {
            url: urls[2].clone().into(),
            namespace: namespace.clone(),
            delay_cascade: warren_tests::broker::TEST_DELAY_CASCADE.to_owned(),
            ..Default::default()
        };
        let connection = warren::broker::connect(&on_3, "cluster-test")
            .await
            .unwrap();
        let channel = connection.create_channel().await.unwrap();
        warren::topology::declare_delay_cascade(&channel, &on_3.names())
            .await
            .unwrap();
        let _ = connection.close(200, "declared".into()).await;
    }
    // Worker 1 and the gateway on node 1 (killed), worker 2 on node 2
    // (stopped): each of them loses its node once.
    let path = binary("warren-tests", "cluster-worker").unwrap();
    let mut workers = Vec::new();
    for first in [0, 1] {
        let worker = WorkerProcess::start(path.clone(), "cluster-worker", &worker_env(first))
            .await
            .unwrap();
        worker.wait_ready().await.unwrap();
        workers.push(worker);
    }
    let store = tempfile::tempdir().unwrap();
    let mut env = gateway_env(&namespace, store.path());
    env.extend(broker_env(&namespace, urls_from(&urls, 0)));
    let gateway = WorkerProcess::gateway(&env).await.unwrap();
    let addr = gateway.http_addr().await.unwrap();
    gateway.wait_caught_up().await.unwrap();
    let ready_after = began.elapsed();

    // Clients take the next task while it is below the limit; the faults
    // raise it once each has begun, so each happens while tasks flow.
    let (accepted_tx, accepted) = watch::channel(0usize);
    let (limit_tx, limit) = watch::channel(1_500usize);
    let next = Arc::new(AtomicUsize::new(0));
    let stats = Arc::new(Enqueued::default());
    let flow = Instant::now();
    let accepted_tx = Arc::new(accepted_tx);
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let (next, stats, accepted_tx, mut limit) = (
            next.clone(),
            stats.clone(),
            accepted_tx.clone(),
            limit.clone(),
        );
        clients.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= TASKS {
                    return;
                }
                limit.wait_for(|l| i < *l).await.unwrap();
                enqueue(addr, i, &stats).await;
                accepted_tx.send_modify(|a| *a += 1);
            }
        }));
    }

    // Each step within STEP, or the test fails with what the processes
    // said (a client that gave up stops the count).
    let processes = || {
        [
            ("gateway", &gateway),
            ("worker-1", &workers[0]),
            ("worker-2", &workers[1]),
        ]
    };
    let tails = |what: &str| {
        let kept = keep_artefacts(&namespace, &processes(), &cluster.dir, what);
        format!(
            "{what} (logs kept in {})\n--- gateway\n{}\n--- worker 1\n{}\n--- worker 2\n{}",
            kept.display(),
            gateway.tail(40),
            workers[0].tail(25),
            workers[1].tail(25)
        )
    };
    let reach = |n: usize| {
        let mut accepted = accepted.clone();
        async move {
            tokio::time::timeout(STEP, accepted.wait_for(|a| *a >= n))
                .await
                .map(|_| ())
        }
    };
    let mut marks = Vec::new();
    reach(1_000)
        .await
        .unwrap_or_else(|_| panic!("{}", tails("1,000 accepted")));
    cluster.kill(1).await.unwrap();
    marks.push(("node 1 killed", flow.elapsed()));
    limit_tx.send_replace(3_500);
    reach(2_000)
        .await
        .unwrap_or_else(|_| panic!("{}", tails("2,000 accepted after the kill")));
    cluster.run(&["start", "1"]).await.unwrap();
    marks.push(("node 1 back", flow.elapsed()));
    reach(3_000)
        .await
        .unwrap_or_else(|_| panic!("{}", tails("3,000 accepted after the restart")));
    limit_tx.send_replace(TASKS);
    cluster.run(&["stop", "2"]).await.unwrap();
    marks.push(("node 2 stopped", flow.elapsed()));
    reach(TASKS)
        .await
        .unwrap_or_else(|_| panic!("{}", tails("every task accepted after the stop")));
    for client in clients {
        client.await.unwrap();
    }
    let enqueued_in = flow.elapsed();
    drop(limit);

    // Every task run: one field per task id in the runs hash.
    let client = redis::Client::open("redis://127.0.0.1:6379/0").unwrap();
    let mut redis = client.get_multiplexed_async_connection().await.unwrap();
    let deadline = Instant::now() + DRAIN;
    loop {
        let done: usize = redis.hlen(&runs_key).await.unwrap();
        if done >= TASKS || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let processed_in = flow.elapsed();
    let runs: HashMap<String, usize> = redis.hgetall(&runs_key).await.unwrap();
    let expected: std::collections::HashSet<String> = (0..TASKS).map(task_id).collect();
    let mut lost: Vec<String> = expected
        .iter()
        .filter(|id| !runs.contains_key(*id))
        .cloned()
        .collect();
    lost.sort();
    if !lost.is_empty() {
        let report = format!(
            "{} of {TASKS} tasks run {DRAIN:?} after the last was accepted; {} never ran\n{}",
            runs.len(),
            lost.len(),
            where_are(&namespace, &lost, &mut redis).await
        );
        let kept = keep_artefacts(&namespace, &processes(), &cluster.dir, &report);
        panic!(
            "{report}\nlogs kept in {}\n--- worker 1\n{}\n--- worker 2\n{}",
            kept.display(),
            workers[0].tail(20),
            workers[1].tail(20)
        );
    }
    let strangers: Vec<_> = runs.keys().filter(|id| !expected.contains(*id)).collect();
    assert!(strangers.is_empty(), "unknown task ids ran: {strangers:?}");
    let ran_twice: usize = runs.values().map(|r| r.saturating_sub(1)).sum();
    let deduplicated: usize = workers
        .iter()
        .map(|w| {
            w.logs_with_message(
                "Task already succeeded earlier; acking the duplicate without running it.",
            )
            .len()
        })
        .sum();
    // docs/cluster.md: a handler runs again only for a delivery in flight
    // on a lost connection, at most a prefetch per worker per fault.
    assert!(
        ran_twice <= FAULTS * workers.len() * PREFETCH,
        "{ran_twice} handler runs were repeats"
    );
    // Each lost its node and went on on a surviving one of broker.url.
    for p in workers.iter().chain([&gateway]) {
        assert!(
            !p.logs_with_message(
                "Connected to another broker address; the ones before it did not answer."
            )
            .is_empty(),
            "{} never moved to another node:\n{}",
            p.name,
            p.tail(30)
        );
    }
    // Everyone still serving: the workers run a last task, the gateway
    // accepts it, resubmitted after a 503 like every other: the gateway
    // drops both its connections when one stays lost past its recovery
    // limit, so the reader's move off the stopped node can still be under
    // way when the flow ends.
    let before: usize = redis.hlen(&runs_key).await.unwrap();
    enqueue(addr, TASKS, &stats).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while redis.hlen::<_, usize>(&runs_key).await.unwrap() <= before {
        assert!(Instant::now() < deadline, "the last task did not run");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    eprintln!(
        "cluster test: cluster up in {:.1} s, workers and gateway ready at {:.1} s; \
         {TASKS} tasks enqueued in {:.1} s and run in {:.1} s; \
         {} resubmissions, longest wait for a 202 {} ms; {ran_twice} repeated handler runs; \
         {deduplicated} redeliveries deduplicated by id; faults at {marks:?}; total {:.1} s",
        started_cluster.as_secs_f64(),
        ready_after.as_secs_f64(),
        enqueued_in.as_secs_f64(),
        processed_in.as_secs_f64(),
        stats.retried.load(Ordering::Relaxed),
        stats.longest_ms.load(Ordering::Relaxed),
        began.elapsed().as_secs_f64(),
    );
    let _: () = redis.del(&runs_key).await.unwrap();
    drop(gateway);
    drop(workers);
    drop(cluster);
}
