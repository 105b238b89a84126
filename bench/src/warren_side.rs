//! Warren's side, in process: the real `warren::Worker` with the
//! process set up as a production worker is (JSON logs at `info` through
//! `warren::telemetry`, OpenTelemetry spans without an exporter,
//! Prometheus metrics), only the log lines go to `/dev/null` instead of a
//! terminal. Warnings and errors the bench does not expect are copied to
//! stderr and counted, so a figure never hides a runtime in trouble.

use std::io::Write;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use prometheus::IntCounter;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use warren::idempotency::{IdempotencyStore, MemoryStore};
use warren::settings::{ConsumerSettings, IdempotencySettings, TelemetrySettings};
use warren::{Outcome, TaskContext, TaskError};
use warren::{RuntimeError, Worker, WorkerStatus};

use crate::broker::BenchBroker;
use crate::task::{BenchTask, TASK_TYPE};

/// The `service` label of the in-process workers.
pub const SERVICE: &str = "warren-bench";

/// The runtime's expected warning: the retry run fails every task once on
/// purpose.
const EXPECTED_WARNING: &str = "Task failed; it will be retried.";

static UNEXPECTED: AtomicU64 = AtomicU64::new(0);
static DEV_NULL: OnceLock<Option<std::fs::File>> = OnceLock::new();

/// Where the in-process log lines go: `/dev/null` (one write per line, as
/// to a terminal or a pipe), and stderr as well for an unexpected WARN or
/// ERROR.
struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        // The level comes right after the timestamp: look at the head of
        // the line only, so the check costs the measured process nothing.
        let head = &line[..line.len().min(96)];
        let warning = [&b"\"level\":\"WARN\""[..], b"\"level\":\"ERROR\""]
            .iter()
            .any(|level| head.windows(level.len()).any(|w| w == *level));
        if warning && !String::from_utf8_lossy(line).contains(EXPECTED_WARNING) {
            UNEXPECTED.fetch_add(1, Ordering::Relaxed);
            let _ = std::io::stderr().write_all(line);
        }
        if let Some(mut null) = DEV_NULL.get().and_then(Option::as_ref) {
            let _ = null.write_all(line);
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Unexpected warnings and errors the in-process runtime logged so far.
pub fn unexpected_warnings() -> u64 {
    UNEXPECTED.load(Ordering::Relaxed)
}

/// Sets up logs, traces and metrics once per process, as `email-worker`'s
/// `main` does; log lines go to [`LogWriter`].
pub fn init_telemetry() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        DEV_NULL.get_or_init(|| {
            std::fs::OpenOptions::new()
                .write(true)
                .open("/dev/null")
                .ok()
        });
        // Fails only if a subscriber is already installed (a test
        // harness's): then that one stays.
        let _ = warren::telemetry::init(&TelemetrySettings::default(), SERVICE, || LogWriter);
        warren::metrics::init(SERVICE);
    });
}

/// A handler body: `Ok` succeeds, `Err` is the task's failure.
pub type Handler = Arc<dyn Fn(&TaskContext, &BenchTask) -> Result<(), TaskError> + Send + Sync>;

/// The handler that does nothing.
pub fn noop() -> Handler {
    Arc::new(|_, _| Ok(()))
}

/// How the in-process worker is set up.
#[derive(Debug, Clone)]
pub struct Options {
    pub stem: String,
    pub binding_keys: Vec<String>,
    pub prefetch: u16,
    pub concurrency: usize,
    pub retry_delays: Vec<Duration>,
    /// Warren's default in-process idempotency store; `false`: none.
    pub idempotency: bool,
    /// Task lifecycle events (`consumer.events`, on by default).
    pub events: bool,
}

#[derive(Default)]
struct State {
    first: OnceLock<Instant>,
    succeeded: AtomicUsize,
    target: usize,
    reached: Notify,
}

/// A Warren worker running in this process until [`InProcess::stop`].
pub struct InProcess {
    state: Arc<State>,
    acked: IntCounter,
    acked_before: u64,
    status: Arc<WorkerStatus>,
    stop: CancellationToken,
    handle: JoinHandle<Result<(), RuntimeError>>,
}

impl InProcess {
    /// Starts a worker of `bench`'s namespace; `target` successful
    /// handler runs end the measurement.
    pub fn start(bench: &BenchBroker, options: &Options, target: usize, handler: Handler) -> Self {
        init_telemetry();
        let consumer = ConsumerSettings {
            prefetch: options.prefetch,
            concurrency: options.concurrency,
            retry_delays: options.retry_delays.clone(),
            events: options.events,
            ..ConsumerSettings::default()
        };
        let keys: Vec<&str> = options.binding_keys.iter().map(String::as_str).collect();
        let state = Arc::new(State {
            target,
            ..State::default()
        });
        let handler_state = state.clone();
        let store: Option<Arc<dyn IdempotencyStore>> = if options.idempotency {
            // What `idempotency::from_settings` builds for the default
            // settings (backend `memory`).
            let s = IdempotencySettings::default();
            Some(Arc::new(MemoryStore::new(s.memory_capacity, s.ttl)))
        } else {
            None
        };
        let worker = Worker::new(
            SERVICE,
            options.stem.clone(),
            &keys,
            bench.settings(),
            consumer,
        )
        .with_idempotency(store)
        .handle(move |ctx: TaskContext, task: BenchTask| {
            let state = handler_state.clone();
            let handler = handler.clone();
            async move {
                state.first.get_or_init(Instant::now);
                handler(&ctx, &task)?;
                let done = state.succeeded.fetch_add(1, Ordering::AcqRel) + 1;
                if done == state.target {
                    state.reached.notify_one();
                }
                Ok(Outcome::done())
            }
        });
        let status = worker.status();
        // The runtime's own count of acked successes: the measurement ends
        // when the last ack has gone out, not when the last handler returned.
        let acked = warren::metrics::runtime().succeeded.with_label_values(&[
            warren::metrics::service(),
            &bench.queue(&options.stem),
            TASK_TYPE,
        ]);
        let acked_before = acked.get();
        let stop = CancellationToken::new();
        let handle = tokio::spawn(worker.run(stop.clone()));
        Self {
            state,
            acked,
            acked_before,
            status,
            stop,
            handle,
        }
    }

    /// Waits until the worker consumes.
    pub async fn wait_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        while !self.status.is_ready() {
            if Instant::now() >= deadline || self.handle.is_finished() {
                bail!("the in-process Warren worker did not start consuming within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        Ok(())
    }

    /// Waits for the target number of successes and their acks; returns
    /// the first handler start and the last ack.
    pub async fn wait_done(&self, timeout: Duration) -> anyhow::Result<(Instant, Instant)> {
        tokio::time::timeout(timeout, self.state.reached.notified())
            .await
            .with_context(|| {
                format!(
                    "the Warren worker handled {} of {} tasks within {timeout:?}",
                    self.state.succeeded.load(Ordering::Acquire),
                    self.state.target
                )
            })?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.acked.get() - self.acked_before < self.state.target as u64 {
            if Instant::now() >= deadline {
                bail!("the Warren worker did not ack its last tasks within 10 s");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let end = Instant::now();
        let first = *self.state.first.get().context("no handler ran")?;
        Ok((first, end))
    }

    /// Stops the worker (drain included) and waits for it.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.stop.cancel();
        match tokio::time::timeout(Duration::from_secs(60), self.handle).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(e))) => Err(e.into()),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => bail!("the in-process Warren worker did not stop within 60 s"),
        }
    }
}
