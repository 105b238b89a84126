//! A Warren worker whose one task type, `bench.noop`, does nothing: the
//! runtime's own cost, with no handler work on top. Built like a real
//! service (`email-worker`'s `main`): layered `WARREN_*` settings, JSON
//! logs on stdout, metrics and the ops endpoints, the shared runtime.
//!
//! For the benchmark's memory and replica runs it also speaks a little
//! protocol: with `--wait-for-go` it prints `{"event":"waiting"}` on
//! stderr and connects only after a line on stdin, and stops (draining, as
//! on SIGTERM) when stdin closes; every few milliseconds it prints
//! `{"event":"progress","acked":N}` on stderr. With `--bare` it runs the
//! bench's bare lapin consumer instead of Warren's runtime, for comparison.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_util::sync::CancellationToken;
use warren::Worker;
use warren::contract::Names;
use warren::settings::{
    BrokerSettings, ConsumerSettings, IdempotencySettings, OpsSettings, TelemetrySettings,
};
use warren::{Outcome, TaskContext};
use warren_bench::bare::{BareConsumer, Progress};
use warren_bench::task::{BINDING, BenchTask, STEM, TASK_TYPE};

const SERVICE: &str = "noop-worker";

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
struct Settings {
    broker: BrokerSettings,
    consumer: ConsumerSettings,
    idempotency: IdempotencySettings,
    telemetry: TelemetrySettings,
    ops: OpsSettings,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            broker: BrokerSettings::default(),
            consumer: ConsumerSettings::default(),
            idempotency: IdempotencySettings::default(),
            telemetry: TelemetrySettings::default(),
            ops: OpsSettings::on_port(9409),
        }
    }
}

fn event(value: serde_json::Value) {
    eprintln!("{value}");
}

/// Prints the acked count whenever it changed, until `stop`.
fn report_progress(count: impl Fn() -> u64 + Send + 'static, stop: CancellationToken) {
    tokio::spawn(async move {
        let mut last = u64::MAX;
        loop {
            let n = count();
            if n != last {
                event(serde_json::json!({ "event": "progress", "acked": n }));
                last = n;
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(5)) => {}
            }
        }
    });
}

// mimalloc, not the system's malloc: see "The allocator" in
// docs/performance.md.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let bare = args.iter().any(|a| a == "--bare");
    let gated = args.iter().any(|a| a == "--wait-for-go");
    let settings: Settings = warren::settings::load().context("Could not load the settings")?;
    let telemetry = warren::telemetry::init(&settings.telemetry, SERVICE, std::io::stdout)
        .context("Could not set up logging and tracing")?;
    warren::metrics::init(SERVICE);
    let shutdown = warren::shutdown::on_signal();
    let queue = Names::new(&settings.broker.namespace).work_queue(STEM);

    if gated {
        let mut stdin = BufReader::new(tokio::io::stdin()).lines();
        event(serde_json::json!({ "event": "waiting", "pid": std::process::id() }));
        if !matches!(stdin.next_line().await, Ok(Some(_))) {
            return Ok(());
        }
        // The bench letting go of stdin stops the worker as SIGTERM would.
        let stop = shutdown.clone();
        tokio::spawn(async move {
            while let Ok(Some(_)) = stdin.next_line().await {}
            stop.cancel();
        });
    }

    let result = if bare {
        let progress = Arc::new(Progress::default());
        let p = progress.clone();
        report_progress(
            move || p.acked.load(std::sync::atomic::Ordering::Relaxed) as u64,
            shutdown.clone(),
        );
        BareConsumer {
            url: settings.broker.url.expose_secret().to_owned(),
            queue,
            prefetch: settings.consumer.prefetch,
            concurrency: settings.consumer.concurrency,
        }
        .run(None, shutdown.clone(), Arc::new(|_| {}), progress, None)
        .await
    } else {
        let store = warren::idempotency::from_settings(&settings.idempotency)
            .await
            .context("Could not set up the idempotency store")?;
        let worker = Worker::new(
            SERVICE,
            STEM,
            &[BINDING],
            settings.broker,
            settings.consumer,
        )
        .with_idempotency(store)
        .handle(|_ctx: TaskContext, _task: BenchTask| async { Ok(Outcome::done()) });
        let acked = warren::metrics::runtime()
            .succeeded
            .with_label_values(&[SERVICE, &queue, TASK_TYPE]);
        report_progress(move || acked.get(), shutdown.clone());
        let status = worker.status();
        warren::ops::serve_during(
            &settings.ops,
            Arc::new(move || status.readiness()),
            worker.run(shutdown),
        )
        .await?
        .map_err(anyhow::Error::from)
    };
    telemetry.shutdown().await;
    result.context("The noop worker stopped")
}
