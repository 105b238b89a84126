//! Per-task-type limits in the runtime, in process against the real
//! RabbitMQ (and Redis for the global rate limit): soft then hard time
//! limits, rate limits per replica and across replicas (measured over 10 s
//! and printed), and a rate-limited type that does not slow another one.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use warren::contract::headers;
use warren::settings::{ConsumerSettings, RateLimitBackend};
use warren::{Outcome, PublishOptions, RateLimit, Task, TaskOptions, Worker};
use warren_tests::broker::TestBroker;
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
async fn a_global_rate_limit_in_redis_holds_across_two_replicas() {
    let broker = TestBroker::new().await.unwrap();
    let starts: Starts = Arc::default();
    // Two replicas: two workers with their own connections, prefetch and
    // limiters, sharing only the broker's queue and Redis.
    let a = rated_worker(&broker, RateLimitBackend::Redis, &starts);
    let b = rated_worker(&broker, RateLimitBackend::Redis, &starts);
    let (sa, sb) = (a.status(), b.status());
    let stop = CancellationToken::new();
    let handles = [spawn(a, &stop), spawn(b, &stop)];
    wait_until("both ready", WAIT, || sa.is_ready() && sb.is_ready()).await;
    let n = RATE * 10 + 1;
    for i in 0..n {
        publish(&broker, Rated::TYPE, i).await;
    }
    wait_until("the rated type done", Duration::from_secs(60), || {
        starts.lock().unwrap().len() == n as usize
    })
    .await;
    assert_within_10_percent("across two replicas (redis)", measured_rate(&starts));
    stop.cancel();
    for h in handles {
        h.await.unwrap();
    }
    broker.cleanup_stems(&["rated"], &[]).await.unwrap();
}
