//! The `redis` status store at scale, and its benchmark figures: 200,000
//! email-like tasks (600,000 events: `queued`, `running`, `succeeded` with
//! a `message_id` result, as the email worker emits them) in the events
//! stream; a gateway indexes them; two gateway replicas answer every id's
//! final state; a gateway started afterwards is ready (measured, printed)
//! and answers the first id. Also measured: Redis memory per task
//! (`MEMORY USAGE`), the indexer's events/s, and the latency from a task's
//! last event to `GET /v1/tasks/{id}` showing it (p50/p99).
//!
//! Ignored by default (minutes). Run it with release gateways, and write
//! the figures to the bench's JSON, as docs/performance.md shows:
//!
//! ```sh
//! cargo build --release -p gateway
//! TEST_BIN_DIR=target/release STATUS_BENCH_JSON=bench/results/status-dev-vm-2-cores.json \
//!   flock -s /tmp/warren-broker.lock \
//!   cargo test -p warren-tests --test status_scale -- --ignored --nocapture
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use chrono::Utc;
use futures::StreamExt;
use serde_json::json;
use warren::events::{TaskEvent, TaskState};
use warren_tests::http::KeepAlive;
use warren_tests::ops::{http_get, sample};
use warren_tests::status::StatusWorld;

const HOLDING: &str = "Holding the indexer lock; indexing the task events.";

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// An email task's events as the gateway and the email worker emit them.
fn email_task(id: &str, at: chrono::DateTime<Utc>) -> Vec<TaskEvent> {
    let step = |state, by: &str, ms| {
        let mut e = TaskEvent::new(id, "email.send", state, 1);
        e.at = at + chrono::Duration::milliseconds(ms);
        e.by = Some(by.to_owned());
        e
    };
    let mut done = step(TaskState::Succeeded, "email-worker@worker-7f9c/4711", 40);
    done.result = Some(json!({"message_id": format!("<{id}@warren.example.org>")}));
    vec![
        step(TaskState::Queued, "gateway@gateway-5d8b/1234", 0),
        step(TaskState::Running, "email-worker@worker-7f9c/4711", 5),
        done,
    ]
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
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
#[ignore = "minutes: run with release gateways, see the module docs"]
async fn two_hundred_thousand_tasks_answer_from_every_replica_and_a_late_gateway_is_ready_at_once()
{
    let tasks = env_usize("STATUS_SCALE_TASKS", 200_000);
    let mut w = StatusWorld::new(Duration::from_secs(3600)).await.unwrap();
    let load_at_start = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();

    // The events are in the stream before any gateway runs.
    let base = Utc::now();
    let ids: Vec<String> = (0..tasks)
        .map(|_| uuid::Uuid::now_v7().to_string())
        .collect();
    let published = Instant::now();
    for (n, chunk) in ids.chunks(10_000).enumerate() {
        let mut events = Vec::with_capacity(chunk.len() * 3);
        for (i, id) in chunk.iter().enumerate() {
            let at = base + chrono::Duration::microseconds(((n * 10_000 + i) * 10) as i64);
            events.extend(email_task(id, at));
        }
        w.publish(events).await;
    }
    let events = tasks * 3;
    println!(
        "published {events} events in {:.1} s",
        published.elapsed().as_secs_f64()
    );

    // The indexer: from its lock to the last event committed.
    let (first, a) = w.gateway(&[]).await.unwrap();
    let holding = w.processes[a]
        .wait_for_log(HOLDING, 1, Duration::from_secs(30))
        .await
        .unwrap();
    let held_at: chrono::DateTime<Utc> = holding[0]["timestamp"].as_str().unwrap().parse().unwrap();
    let ops = w.processes[a].ops_addr().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(1800);
    loop {
        let (_, metrics) = http_get(ops, "/metrics").await.unwrap();
        let indexed = sample(&metrics, "warren_gateway_indexed_events_total", &[]);
        if indexed >= events as f64 {
            assert_eq!(indexed, events as f64, "no event indexed twice");
            break;
        }
        assert!(Instant::now() < deadline, "{indexed} of {events} indexed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let indexing = (Utc::now() - held_at).to_std().unwrap();
    let events_per_s = events as f64 / indexing.as_secs_f64();
    println!(
        "indexer: {events} events in {:.1} s, {events_per_s:.0} events/s",
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
        format!("{}type:email.send", w.prefix),
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
        "Redis memory per email task: record {record:.0} B + indexes {index:.0} B = {:.0} B",
        record + index
    );

    // Latency: a task's last event published, until GET shows it, on the
    // replica that does not index.
    let rounds = env_usize("STATUS_LATENCY_TASKS", 500);
    let mut client = KeepAlive::connect(second).await.unwrap();
    let mut latencies = Vec::with_capacity(rounds);
    for n in 0..rounds {
        let id = format!("latency-{n}-{}", uuid::Uuid::new_v4().simple());
        let mut events = email_task(&id, Utc::now());
        let done = events.pop().unwrap();
        w.publish(events).await;
        let started = Instant::now();
        w.publish(vec![done]).await;
        loop {
            let r = client.get(&format!("/v1/tasks/{id}")).await.unwrap();
            if r.json().unwrap()["state"] == "succeeded" {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "{id} never succeeded"
            );
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        latencies.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    latencies.sort_by(f64::total_cmp);
    let (p50, p99) = (percentile(&latencies, 0.5), percentile(&latencies, 0.99));
    println!("status latency, last event to GET showing it: p50 {p50:.2} ms, p99 {p99:.2} ms");
    let load_at_end = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();

    if let Ok(path) = std::env::var("STATUS_BENCH_JSON") {
        let figures = json!({
            "section": "status",
            "profile": if std::env::var_os("TEST_BIN_DIR").is_some() { "release gateways" } else { "debug gateways" },
            "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            "loadavg_at_start": load_at_start.trim(),
            "loadavg_at_end": load_at_end.trim(),
            "git_revision": std::process::Command::new("git").args(["rev-parse", "HEAD"]).output()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned()).unwrap_or_default(),
            "tasks": tasks,
            "events": events,
            "indexer_events_per_s": events_per_s.round(),
            "indexer_seconds": indexing.as_secs_f64(),
            "redis_bytes_per_email_task": {
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
                "what": "a task's last event published to GET /v1/tasks/{id} showing it, on a replica that does not index",
                "tasks": rounds,
                "p50": (p50 * 100.0).round() / 100.0,
                "p99": (p99 * 100.0).round() / 100.0,
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
    w.finish().await.unwrap();
}
