//! The `redis` status store at scale, through a real worker, and its
//! benchmark figures. 200,000 tasks are published to a real worker process
//! (`noop-worker` of `warren-bench`: the shared runtime with its defaults,
//! task events on, a task type that does nothing), which emits each task's
//! `running` and `succeeded` events into the events stream as production
//! does (confirmed envelopes). A gateway then indexes the stream into
//! Redis; two gateway replicas answer every id's final state; a gateway
//! started afterwards is ready (measured, printed, under 2 s) and answers
//! the first id.
//!
//! Measured on the way: Redis memory per task (`MEMORY USAGE`), the
//! indexer's events/s, the latency from a task's end in the worker (its
//! `finished_at`) to `GET /v1/tasks/{id}` showing it on a replica that
//! does not index (p50/p99), and the CPU time (`/proc/<pid>/stat`) that
//! the broker, the worker and the indexer spent per task and per event,
//! the inputs of docs/performance.md's "Scale on paper".
//!
//! Ignored by default (minutes). Run it with release binaries, alone on
//! the bench lock, and write the figures to the bench's JSON, as
//! docs/performance.md shows:
//!
//! ```sh
//! cargo build --release -p gateway -p warren-bench
//! cargo test -p warren-tests --test status_scale --no-run
//! TEST_BIN_DIR=target/release STATUS_BENCH_JSON=bench/results/status-dev-vm-2-cores.json \
//!   flock -x /tmp/warren-bench.lock flock -s /tmp/warren-broker.lock \
//!   cargo test -p warren-tests --test status_scale -- --ignored --nocapture
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde_json::json;
use warren::{PublishOptions, Publisher};
use warren_tests::cpu::{self, CpuTime};
use warren_tests::http::KeepAlive;
use warren_tests::ops::{http_get, sample_or_zero};
use warren_tests::status::StatusWorld;
use warren_tests::worker::{WorkerProcess, binary};

const HOLDING: &str = "Holding the indexer lock; indexing the task events.";
/// The no-op worker's task type (`warren_bench::task::TASK_TYPE`).
const TASK_TYPE: &str = "bench.noop";
/// Events a no-op task emits: `running`, `succeeded`.
const EVENTS_PER_TASK: usize = 2;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// The no-op worker in the world's namespace, events on (the default).
async fn start_worker(w: &StatusWorld) -> WorkerProcess {
    let path = binary("warren-bench", "noop-worker").unwrap();
    let env = [
        ("WARREN_BROKER__NAMESPACE", w.broker.namespace().to_owned()),
        ("WARREN_OPS__ADDR", "127.0.0.1:0".to_owned()),
        ("WARREN_CONSUMER__SHUTDOWN_TIMEOUT", "10s".to_owned()),
    ];
    let worker = WorkerProcess::start(path, "noop-worker", &env)
        .await
        .unwrap();
    worker.wait_ready().await.unwrap();
    worker
}

/// Publishes one no-op task per id, 64 confirms in flight.
async fn publish_tasks(publisher: &Publisher, ids: &[String]) {
    futures::stream::iter(ids.iter().enumerate())
        .for_each_concurrent(64, |(seq, id)| async move {
            publisher
                .publish_task(
                    TASK_TYPE,
                    &json!({ "seq": seq }),
                    PublishOptions {
                        id: Some(id.clone()),
                        ..PublishOptions::default()
                    },
                )
                .await
                .unwrap();
        })
        .await;
}

/// Waits until `metric` on the ops port `ops` reaches `want`; returns it.
async fn wait_metric(ops: SocketAddr, metric: &str, want: f64, timeout: Duration) -> f64 {
    let deadline = Instant::now() + timeout;
    loop {
        let (_, metrics) = http_get(ops, "/metrics").await.unwrap();
        let value = sample_or_zero(&metrics, metric, &[]);
        if value >= want {
            return value;
        }
        assert!(Instant::now() < deadline, "{metric}: {value} of {want}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// CPU time of the broker, a service and this test, read together.
#[derive(Clone, Copy)]
struct Cpu {
    broker: CpuTime,
    service: CpuTime,
    test: CpuTime,
}

impl Cpu {
    fn read(broker: u32, service: u32) -> Self {
        Self {
            broker: cpu::of(broker).unwrap(),
            service: cpu::of(service).unwrap(),
            test: cpu::own().unwrap(),
        }
    }

    /// Microseconds of CPU per `per` things since `earlier`.
    fn us_per(self, earlier: Cpu, per: usize) -> (f64, f64, f64) {
        let us = |now: CpuTime, then: CpuTime| (now.since(then) * 1e6 / per as f64).round();
        (
            us(self.broker, earlier.broker),
            us(self.service, earlier.service),
            us(self.test, earlier.test),
        )
    }
}

/// Every id answers `succeeded` from `addr`: 32 keep-alive connections.
async fn check_all(addr: SocketAddr, ids: &[String]) -> Duration {
    let started = Instant::now();
    let chunks: Vec<Vec<String>> = ids
        .chunks(ids.len().div_ceil(32))
        .map(<[_]>::to_vec)
        .collect();
    futures::stream::iter(chunks)
        .for_each_concurrent(32, |chunk| async move {
            let mut client = KeepAlive::connect(addr).await.unwrap();
            for id in chunk {
                let r = client.get(&format!("/v1/tasks/{id}")).await.unwrap();
                let body = r.json().unwrap();
                assert_eq!(
                    (r.status, body["state"].as_str()),
                    (200, Some("succeeded")),
                    "{id}: {body}"
                );
            }
        })
        .await;
    started.elapsed()
}

/// Time from spawning a gateway to its `/readyz` answering 200.
async fn start_and_time_ready(w: &mut StatusWorld) -> (SocketAddr, Duration) {
    let started = Instant::now();
    let (http, index) = w
        .gateway(&[("WARREN_STATUS__INDEXER", "false")])
        .await
        .unwrap();
    let ops = w.processes[index].ops_addr().await.unwrap();
    loop {
        if let Ok((200, _)) = http_get(ops, "/readyz").await {
            return (http, started.elapsed());
        }
        assert!(started.elapsed() < Duration::from_secs(60), "never ready");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
#[ignore = "minutes: run with release binaries, see the module docs"]
async fn two_hundred_thousand_tasks_answer_from_every_replica_and_a_late_gateway_is_ready_at_once()
{
    let tasks = env_usize("STATUS_SCALE_TASKS", 200_000);
    let mut w = StatusWorld::new(Duration::from_secs(3600)).await.unwrap();
    let load_at_start = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let broker = cpu::broker_pid().unwrap();

    // The tasks run through a real worker; its events reach the stream
    // (declared by the world) before any gateway runs.
    let mut worker = start_worker(&w).await;
    let worker_pid = worker.pid().unwrap();
    let worker_ops = worker.ops_addr().await.unwrap();
    let publisher = Publisher::connect(&w.broker.settings()).await.unwrap();
    let ids: Vec<String> = (0..tasks)
        .map(|_| uuid::Uuid::now_v7().to_string())
        .collect();
    let before = Cpu::read(broker, worker_pid);
    let started = Instant::now();
    publish_tasks(&publisher, &ids).await;
    let published = started.elapsed();
    wait_metric(
        worker_ops,
        "warren_tasks_succeeded_total",
        tasks as f64,
        Duration::from_secs(1800),
    )
    .await;
    let ran = started.elapsed();
    let after = Cpu::read(broker, worker_pid);
    let (broker_us, worker_us, publisher_us) = after.us_per(before, tasks);
    let events = tasks * EVENTS_PER_TASK;
    println!(
        "published {tasks} tasks in {:.1} s; the worker ran them all {:.1} s after the first \
         publish ({:.0} tasks/s end to end, {events} events)",
        published.as_secs_f64(),
        ran.as_secs_f64(),
        tasks as f64 / ran.as_secs_f64()
    );
    println!(
        "CPU per task: broker {broker_us} us, worker {worker_us} us, publisher (this test) \
         {publisher_us} us"
    );

    // The indexer: from its lock to the last event committed.
    let (first, a) = w.gateway(&[]).await.unwrap();
    let indexer_pid = w.processes[a].pid().unwrap();
    let holding = w.processes[a]
        .wait_for_log(HOLDING, 1, Duration::from_secs(30))
        .await
        .unwrap();
    let before_index = Cpu::read(broker, indexer_pid);
    let held_at: DateTime<Utc> = holding[0]["timestamp"].as_str().unwrap().parse().unwrap();
    let ops = w.processes[a].ops_addr().await.unwrap();
    let indexed = wait_metric(
        ops,
        "warren_gateway_indexed_events_total",
        events as f64,
        Duration::from_secs(1800),
    )
    .await;
    assert_eq!(indexed, events as f64, "no event indexed twice");
    let indexing = (Utc::now() - held_at).to_std().unwrap();
    let after_index = Cpu::read(broker, indexer_pid);
    let (broker_index_us, indexer_us, _) = after_index.us_per(before_index, events);
    let events_per_s = events as f64 / indexing.as_secs_f64();
    println!(
        "indexer: {events} events in {:.1} s, {events_per_s:.0} events/s; CPU per event: \
         indexer (gateway) {indexer_us} us, broker (stream reads) {broker_index_us} us",
        indexing.as_secs_f64()
    );

    // Two replicas answer every id.
    let (second, second_ready) = start_and_time_ready(&mut w).await;
    let took_first = check_all(first, &ids).await;
    let took_second = check_all(second, &ids).await;
    println!(
        "every one of {tasks} ids succeeded on both replicas ({:.0} and {:.0} GET/s)",
        tasks as f64 / took_first.as_secs_f64(),
        tasks as f64 / took_second.as_secs_f64()
    );

    // A gateway started afterwards: ready at once, and it knows the first id.
    let (late, late_ready) = start_and_time_ready(&mut w).await;
    let mut client = KeepAlive::connect(late).await.unwrap();
    let r = client.get(&format!("/v1/tasks/{}", ids[0])).await.unwrap();
    assert_eq!(r.json().unwrap()["state"], "succeeded");
    println!(
        "late gateway ready {:.0} ms after its start (the second replica: {:.0} ms)",
        late_ready.as_secs_f64() * 1000.0,
        second_ready.as_secs_f64() * 1000.0
    );
    assert!(
        late_ready < Duration::from_secs(2),
        "the late gateway took {late_ready:?} to be ready"
    );

    // Memory per task: the record, plus its share of the two indexes.
    let sampled: Vec<u64> = {
        let mut v = Vec::new();
        for id in ids.iter().step_by((tasks / 1000).max(1)) {
            v.push(w.store.memory_usage(id).await.unwrap().unwrap());
        }
        v
    };
    let record = sampled.iter().sum::<u64>() as f64 / sampled.len() as f64;
    let index_keys = [
        format!("{}state:succeeded", w.prefix),
        format!("{}type:{TASK_TYPE}", w.prefix),
    ];
    let redis = redis::Client::open(warren_tests::status::REDIS_URL).unwrap();
    let mut c = redis.get_multiplexed_async_connection().await.unwrap();
    let mut index_bytes = 0u64;
    for key in &index_keys {
        let bytes: u64 = redis::cmd("MEMORY")
            .arg("USAGE")
            .arg(key)
            .arg("SAMPLES")
            .arg(0)
            .query_async(&mut c)
            .await
            .unwrap();
        index_bytes += bytes;
    }
    let index = index_bytes as f64 / tasks as f64;
    println!(
        "Redis memory per no-op task: record {record:.0} B + indexes {index:.0} B = {:.0} B",
        record + index
    );

    // Latency, one task at a time through the worker: from the task's end
    // (`finished_at`, stamped by the worker right after its ack) until GET
    // on the replica that does not index shows `succeeded`; and from the
    // publish call, for the whole trip.
    let rounds = env_usize("STATUS_LATENCY_TASKS", 500);
    let mut client = KeepAlive::connect(second).await.unwrap();
    let mut latencies = Vec::with_capacity(rounds);
    let mut trips = Vec::with_capacity(rounds);
    for n in 0..rounds {
        let id = format!("latency-{n}-{}", uuid::Uuid::new_v4().simple());
        let published = Instant::now();
        publish_tasks(&publisher, std::slice::from_ref(&id)).await;
        let body = loop {
            let r = client.get(&format!("/v1/tasks/{id}")).await.unwrap();
            let body = r.json().unwrap();
            if body["state"] == "succeeded" {
                break body;
            }
            assert!(
                published.elapsed() < Duration::from_secs(30),
                "{id} never succeeded: {body}"
            );
            tokio::time::sleep(Duration::from_micros(200)).await;
        };
        let shown = Utc::now();
        trips.push(published.elapsed().as_secs_f64() * 1000.0);
        let finished: DateTime<Utc> = body["finished_at"]
            .as_str()
            .unwrap_or_else(|| panic!("no finished_at: {body}"))
            .parse()
            .unwrap();
        latencies.push((shown - finished).num_microseconds().unwrap() as f64 / 1000.0);
    }
    latencies.sort_by(f64::total_cmp);
    trips.sort_by(f64::total_cmp);
    let (p50, p99) = (percentile(&latencies, 0.5), percentile(&latencies, 0.99));
    let (trip50, trip99) = (percentile(&trips, 0.5), percentile(&trips, 0.99));
    println!(
        "status latency, the task's end in the worker to GET showing it: p50 {p50:.2} ms, p99 \
         {p99:.2} ms (publish call to GET: p50 {trip50:.2} ms, p99 {trip99:.2} ms)"
    );
    let load_at_end = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();

    if let Ok(path) = std::env::var("STATUS_BENCH_JSON") {
        let ms = |x: f64| (x * 100.0).round() / 100.0;
        let figures = json!({
            "section": "status",
            "profile": if std::env::var("TEST_BIN_DIR").is_ok_and(|d| d.contains("release")) { "release binaries" } else { "debug binaries" },
            "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            "loadavg_at_start": load_at_start.trim(),
            "loadavg_at_end": load_at_end.trim(),
            "git_revision": std::process::Command::new("git").args(["rev-parse", "HEAD"]).output()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned()).unwrap_or_default(),
            "worker": "noop-worker (warren-bench): the shared runtime with its defaults, task events on, a no-op task type",
            "tasks": tasks,
            "events": events,
            "worker_run": {
                "what": "tasks published (64 confirms in flight) while the worker runs them; from the first publish to the worker's last success",
                "seconds": ran.as_secs_f64(),
                "tasks_per_s": (tasks as f64 / ran.as_secs_f64()).round(),
                "publish_seconds": published.as_secs_f64(),
            },
            "cpu_us_per_task": {
                "source": "utime + stime deltas of /proc/<pid>/stat over the worker run",
                "broker": broker_us,
                "worker": worker_us,
                "publisher": publisher_us,
            },
            "cpu_us_per_event_indexed": {
                "source": "utime + stime deltas of /proc/<pid>/stat over the indexer's catch-up",
                "indexer": indexer_us,
                "broker": broker_index_us,
            },
            "indexer_events_per_s": events_per_s.round(),
            "indexer_seconds": indexing.as_secs_f64(),
            "redis_bytes_per_task": {
                "task": "bench.noop: running and succeeded events, no result",
                "record": record.round(),
                "indexes": index.round(),
                "total": (record + index).round(),
                "target": 1024,
            },
            "late_gateway_ready_ms": (late_ready.as_secs_f64() * 1000.0).round(),
            "second_replica_ready_ms": (second_ready.as_secs_f64() * 1000.0).round(),
            "get_per_s_per_replica": [
                (tasks as f64 / took_first.as_secs_f64()).round(),
                (tasks as f64 / took_second.as_secs_f64()).round(),
            ],
            "status_latency_ms": {
                "what": "a task's finished_at (stamped by the worker after its ack) to GET /v1/tasks/{id} showing it, on a replica that does not index; one task at a time",
                "tasks": rounds,
                "p50": ms(p50),
                "p99": ms(p99),
            },
            "publish_to_status_ms": {
                "what": "the publish call to GET showing succeeded, same tasks",
                "p50": ms(trip50),
                "p99": ms(trip99),
            },
        });
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(path);
        std::fs::write(
            &path,
            serde_json::to_string_pretty(&figures).unwrap() + "\n",
        )
        .unwrap();
        println!("wrote {}", path.display());
    }
    worker.signal("TERM").unwrap();
    worker.wait_exit(Duration::from_secs(20)).await.unwrap();
    // The worker's queues; `finish` deletes the stream and exchanges.
    w.broker.cleanup_stems(&["bench"], &[]).await.unwrap();
    w.finish().await.unwrap();
}
