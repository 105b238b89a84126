//! Per-task-type limits in the runtime, in process against the real
//! RabbitMQ (and Redis for the global rate limit): soft then hard time
//! limits, rate limits per replica (in process) and across two worker
//! processes (measured over 10 s and printed), a rate-limited type that
//! does not slow another one, and a per-type concurrency limit.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use warren::contract::headers;
use warren::settings::{ConsumerSettings, RateLimitBackend};
use warren::{Outcome, PublishOptions, RateLimit, Task, TaskOptions, Worker};
use warren_tests::broker::TestBroker;
use warren_tests::worker::{WorkerProcess, binary};
use warren_tests::{WAIT, wait_until};

#[derive(Debug, Deserialize, Serialize)]
struct Slow {
    n: u32,
}
impl Task for Slow {
    const TYPE: &'static str = "slow.task";
    const OPTIONS: TaskOptions = TaskOptions::new()
        .soft_time_limit(Duration::from_millis(200))
        .time_limit(Duration::from_millis(1500))
        .max_attempts(1);
}

/// 20 starts a second.
const RATE: u32 = 20;

#[derive(Debug, Deserialize, Serialize)]
struct Rated {
    n: u32,
}
impl Task for Rated {
    const TYPE: &'static str = "rated.task";
    const OPTIONS: TaskOptions = TaskOptions::new().rate_limit(RateLimit::per_second(RATE));
}

#[derive(Debug, Deserialize, Serialize)]
struct Free {
    n: u32,
}
impl Task for Free {
    const TYPE: &'static str = "free.task";
}

fn consumer(backend: RateLimitBackend) -> ConsumerSettings {
    ConsumerSettings {
        prefetch: 50,
        concurrency: 20,
        retry_delays: vec![Duration::from_millis(100)],
        task_timeout: Duration::from_secs(10),
        shutdown_timeout: Duration::from_secs(5),
        rate_limit_backend: backend,
        ..ConsumerSettings::default()
    }
}

fn spawn<S: Send + Sync + 'static>(
    worker: Worker<S>,
    stop: &CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let token = stop.clone();
    tokio::spawn(async move { worker.run(token).await.unwrap() })
}

async fn publish(broker: &TestBroker, task_type: &str, n: u32) -> String {
    broker
        .publish(task_type, &json!({ "n": n }), PublishOptions::default())
        .await
        .unwrap()
}

#[tokio::test]
async fn soft_then_hard_time_limit_on_a_handler_that_ignores_cancellation() {
    let broker = TestBroker::new().await.unwrap();
    let soft_seen = Arc::new(Mutex::new(Vec::new()));
    let finished = Arc::new(Mutex::new(Vec::new()));
    let (s, f) = (soft_seen.clone(), finished.clone());
    let worker = Worker::for_task::<Slow>()
        .settings(broker.settings(), consumer(RateLimitBackend::Memory))
        .handle(move |ctx, task: Slow| {
            let (s, f) = (s.clone(), f.clone());
            async move {
                // Something watches the soft limit; the handler's own work
                // ignores it.
                let watch = ctx.cancelled();
                let s2 = s.clone();
                let n = task.n;
                tokio::spawn(async move {
                    watch.await;
                    s2.lock().unwrap().push(n);
                });
                if task.n == 1 {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                }
                f.lock().unwrap().push(task.n);
                Ok(Outcome::done())
            }
        });
    let status = worker.status();
    let stop = CancellationToken::new();
    let handle = spawn(worker, &stop);
    wait_until("worker ready", WAIT, {
        let status = status.clone();
        move || status.is_ready()
    })
    .await;

    let stuck = publish(&broker, Slow::TYPE, 1).await;
    // The hard limit parks it (one attempt) as a transient timeout...
    let parked = broker
        .take(&broker.dead_queue("slow"), 1, WAIT)
        .await
        .unwrap();
    assert_eq!(parked[0].message_id().as_deref(), Some(stuck.as_str()));
    assert_eq!(
        parked[0].header(headers::ERROR_KIND).as_deref(),
        Some("timeout")
    );
    // ...after its context was cancelled by the soft limit.
    assert_eq!(*soft_seen.lock().unwrap(), vec![1]);
    // The worker is healthy and the next task runs.
    assert!(status.is_ready());
    publish(&broker, Slow::TYPE, 2).await;
    wait_until("the next task", WAIT, || {
        finished.lock().unwrap().contains(&2)
    })
    .await;
    assert_eq!(
        *finished.lock().unwrap(),
        vec![2],
        "the stuck task never finished"
    );
    stop.cancel();
    handle.await.unwrap();
    broker.cleanup_stems(&["slow"], &[]).await.unwrap();
}

/// Starts of the rated type, as instants.
type Starts = Arc<Mutex<Vec<Instant>>>;

fn rated_worker(broker: &TestBroker, backend: RateLimitBackend, starts: &Starts) -> Worker {
    let starts = starts.clone();
    Worker::for_task::<Rated>()
        .settings(broker.settings(), consumer(backend))
        .handle(move |_ctx, _task: Rated| {
            let starts = starts.clone();
            async move {
                starts.lock().unwrap().push(Instant::now());
                Ok(Outcome::done())
            }
        })
}

/// Starts per second between the first and the last start.
fn measured_rate(starts: &Starts) -> f64 {
    let mut s = starts.lock().unwrap().clone();
    s.sort();
    let span = s[s.len() - 1].duration_since(s[0]).as_secs_f64();
    (s.len() - 1) as f64 / span
}

fn assert_within_10_percent(what: &str, rate: f64) {
    println!("{what}: measured {rate:.2} starts/s against a limit of {RATE}/s");
    let limit = f64::from(RATE);
    assert!(
        (rate - limit).abs() <= limit * 0.10,
        "{what}: {rate:.2}/s is not within 10% of {limit}/s"
    );
}

#[tokio::test]
async fn a_per_replica_rate_limit_holds_and_does_not_slow_another_type() {
    let broker = TestBroker::new().await.unwrap();
    let starts: Starts = Arc::default();
    let rated = rated_worker(&broker, RateLimitBackend::Memory, &starts);
    let free_done = Arc::new(Mutex::new(0usize));
    let fd = free_done.clone();
    let free = Worker::for_task::<Free>()
        .settings(broker.settings(), consumer(RateLimitBackend::Memory))
        .handle(move |_ctx, _task: Free| {
            let fd = fd.clone();
            async move {
                *fd.lock().unwrap() += 1;
                Ok(Outcome::done())
            }
        });
    let (rated_status, free_status) = (rated.status(), free.status());
    let stop = CancellationToken::new();
    let handles = [spawn(rated, &stop), spawn(free, &stop)];
    wait_until("both ready", WAIT, || {
        rated_status.is_ready() && free_status.is_ready()
    })
    .await;

    // 10 s of work at the limit, and 200 tasks of another type behind it.
    let n = RATE * 10 + 1;
    for i in 0..n {
        publish(&broker, Rated::TYPE, i).await;
    }
    for i in 0..200 {
        publish(&broker, Free::TYPE, i).await;
    }
    wait_until("the free type done", WAIT, || {
        *free_done.lock().unwrap() == 200
    })
    .await;
    let rated_so_far = starts.lock().unwrap().len();
    assert!(
        rated_so_far < n as usize,
        "the free type finished only after the rated one ({rated_so_far} of {n} started)"
    );
    wait_until("the rated type done", Duration::from_secs(60), || {
        starts.lock().unwrap().len() == n as usize
    })
    .await;
    assert_within_10_percent("per replica", measured_rate(&starts));
    stop.cancel();
    for h in handles {
        h.await.unwrap();
    }
    broker.cleanup_stems(&["rated", "free"], &[]).await.unwrap();
}

#[tokio::test]
async fn a_global_rate_limit_in_redis_holds_across_two_worker_processes() {
    use futures::StreamExt;
    use warren::events::{self, TaskState};

    // Built before any broker connection opens: building blocks this
    // thread, and a connection that misses its heartbeats is closed.
    let path = binary("warren-tests", "rated-worker").unwrap();
    let broker = TestBroker::new().await.unwrap();
    let names = broker.names.clone();
    events::declare_stream(&broker.connection, &names, Duration::from_secs(3600))
        .await
        .unwrap();
    // Two replicas: two processes with their own connections, prefetch and
    // limiters, sharing only the broker's queue and Redis.
    let env = vec![
        ("WARREN_BROKER__NAMESPACE", broker.namespace().to_owned()),
        ("WARREN_OPS__ADDR", "127.0.0.1:0".to_owned()),
        ("WARREN_CONSUMER__RATE_LIMIT_BACKEND", "redis".to_owned()),
        ("WARREN_CONSUMER__PREFETCH", "50".to_owned()),
        ("WARREN_CONSUMER__CONCURRENCY", "20".to_owned()),
    ];
    let mut replicas = Vec::new();
    for name in ["rated-a", "rated-b"] {
        let p = WorkerProcess::start(path.clone(), name, &env)
            .await
            .unwrap();
        p.wait_for_log("Consuming.", 1, WAIT).await.unwrap();
        replicas.push(p);
    }
    let mut stream = Box::pin(events::follow(&broker.connection, &names).await.unwrap());
    let n = RATE * 10 + 1;
    for i in 0..n {
        publish(&broker, Rated::TYPE, i).await;
    }
    // The starts as the broker saw them: each replica's `running` events,
    // stamped when a task passed the limit and started.
    let mut starts = std::collections::HashMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while starts.len() < n as usize {
        let event = tokio::time::timeout_at(deadline, stream.next())
            .await
            .unwrap_or_else(|_| panic!("{} of {n} starts within 60 s", starts.len()))
            .expect("the stream goes on")
            .unwrap()
            .event;
        if event.state == TaskState::Running && event.task_type == Rated::TYPE {
            starts.insert(event.task_id, (event.at, event.by.unwrap_or_default()));
        }
    }
    let by: std::collections::HashSet<_> = starts.values().map(|(_, by)| by.clone()).collect();
    assert_eq!(by.len(), 2, "both replicas started tasks: {by:?}");
    let first = starts.values().map(|(at, _)| *at).min().unwrap();
    let last = starts.values().map(|(at, _)| *at).max().unwrap();
    let span = (last - first).to_std().unwrap().as_secs_f64();
    assert_within_10_percent(
        "across two worker processes (redis)",
        f64::from(n - 1) / span,
    );
    for mut p in replicas {
        p.signal("TERM").unwrap();
        p.wait_exit(WAIT).await.unwrap();
    }
    broker.cleanup_stems(&["rated"], &[]).await.unwrap();
}

#[derive(Debug, Deserialize, Serialize)]
struct Paired {
    n: u32,
}
impl Task for Paired {
    const TYPE: &'static str = "paired.task";
    const OPTIONS: TaskOptions = TaskOptions::new().concurrency(2);
}

#[derive(Debug, Deserialize, Serialize)]
struct Unpaired {
    n: u32,
}
impl Task for Unpaired {
    const TYPE: &'static str = "paired.other";
}

/// Tasks of one type running at once, and the most seen.
#[derive(Default)]
struct Overlap {
    now: Mutex<(u32, u32)>,
    done: Mutex<u32>,
}

impl Overlap {
    async fn run(&self) {
        {
            let mut now = self.now.lock().unwrap();
            now.0 += 1;
            now.1 = now.1.max(now.0);
        }
        // Work that takes a while, so that tasks would overlap.
        tokio::time::sleep(Duration::from_millis(100)).await;
        self.now.lock().unwrap().0 -= 1;
        *self.done.lock().unwrap() += 1;
    }
}

#[tokio::test]
async fn a_per_type_concurrency_limit_holds_and_leaves_other_types_alone() {
    let broker = TestBroker::new().await.unwrap();
    let overlaps = Arc::new((Overlap::default(), Overlap::default()));
    let worker = Worker::for_task::<Paired>()
        .settings(broker.settings(), consumer(RateLimitBackend::Memory))
        .with_state(overlaps.clone())
        .handle_with(|_ctx, _task: Paired, o| async move {
            o.0.run().await;
            Ok(Outcome::done())
        })
        .handle_with(|_ctx, _task: Unpaired, o| async move {
            o.1.run().await;
            Ok(Outcome::done())
        });
    let status = worker.status();
    let stop = CancellationToken::new();
    let handle = spawn(worker, &stop);
    wait_until("ready", WAIT, || status.is_ready()).await;
    for i in 0..12 {
        publish(&broker, Paired::TYPE, i).await;
        publish(&broker, Unpaired::TYPE, i).await;
    }
    wait_until("both types done", WAIT, || {
        *overlaps.0.done.lock().unwrap() == 12 && *overlaps.1.done.lock().unwrap() == 12
    })
    .await;
    let paired = overlaps.0.now.lock().unwrap().1;
    let other = overlaps.1.now.lock().unwrap().1;
    println!("most at once: {paired} of the limited type (limit 2), {other} of the other");
    assert_eq!(paired, 2, "the limited type ran {paired} at once");
    assert!(other > 2, "the other type ran only {other} at once");
    stop.cancel();
    handle.await.unwrap();
    broker.cleanup_stems(&["paired"], &[]).await.unwrap();
}
