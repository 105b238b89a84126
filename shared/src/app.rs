//! One call that runs workers as a service: settings, telemetry, metrics,
//! the ops endpoints, the idempotency store, and shutdown on SIGTERM or
//! ctrl-c with a drain, in that order, so a worker's `main` is a few
//! lines.

use std::future::Future;
use std::sync::Arc;

use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;

use crate::celery::CeleryResults;
use crate::idempotency::{self, StoreError};
use crate::ops::OpsBindError;
use crate::runtime::{RuntimeError, Worker, WorkerStatus};
use crate::settings::{SettingsError, WorkerSettings};
use crate::telemetry::{self, Telemetry, TelemetryError};

/// Why a service could not start, or stopped for good.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The settings did not load or parse.
    #[error(transparent)]
    Settings(#[from] SettingsError),
    /// Logging or tracing could not be set up.
    #[error("could not set up logging and tracing: {0}")]
    Telemetry(#[from] TelemetryError),
    /// The idempotency store is unreachable.
    #[error("could not connect to the idempotency store: {0}")]
    Idempotency(#[from] StoreError),
    /// The ops port is taken.
    #[error(transparent)]
    Ops(#[from] OpsBindError),
    /// A worker stopped for a reason reconnecting cannot fix.
    #[error("a worker stopped: {0}")]
    Runtime(#[from] RuntimeError),
    /// The Celery result backend (Redis) is unreachable.
    #[error("could not connect to the Celery result backend: {0}")]
    CeleryResults(#[source] redis::RedisError),
    /// The Celery bridge's settings are not usable.
    #[error(transparent)]
    Celery(#[from] crate::celery::BridgeError),
    /// [`App::run`] was given no worker.
    #[error("the app has no workers")]
    NoWorkers,
}

/// A service made of workers: it owns the process-wide set-up and runs
/// every worker until SIGTERM or ctrl-c, then drains them.
///
/// [`App::init`] sets up telemetry and metrics at once, so whatever the
/// service builds next (a mail transport, an object store) logs as it
/// should; [`App::run`] does the rest.
///
/// ```no_run
/// use warren::prelude::*;
///
/// #[derive(serde::Deserialize, serde::Serialize)]
/// struct Ping {
///     n: u32,
/// }
///
/// impl Task for Ping {
///     const TYPE: &'static str = "ping.send";
/// }
///
/// #[tokio::main]
/// async fn main() -> Result<(), warren::AppError> {
///     App::from_env("ping-worker")?
///         .worker(Worker::for_task::<Ping>().handle(|_ctx, ping: Ping| async move {
///             Ok(Outcome::with_result(serde_json::json!({ "n": ping.n })))
///         }))
///         .run()
///         .await
/// }
/// ```
pub struct App {
    service: String,
    settings: WorkerSettings,
    telemetry: Telemetry,
    shutdown: CancellationToken,
    workers: Vec<Worker>,
    on_stop: Vec<BoxFuture<'static, ()>>,
}

impl App {
    /// Loads [`WorkerSettings`] (defaults, `warren.toml`, `WARREN_*`) and
    /// initialises the service `service` with them.
    pub fn from_env(service: &str) -> Result<Self, AppError> {
        Self::init(service, WorkerSettings::load()?)
    }

    /// Initialises the service `service` with `settings`: installs the
    /// log and trace subscriber (stdout), registers the runtime's metrics,
    /// and starts listening for SIGTERM and ctrl-c. Call it once per
    /// process, inside the Tokio runtime.
    pub fn init(service: &str, settings: WorkerSettings) -> Result<Self, AppError> {
        let telemetry = telemetry::init(&settings.telemetry, service, std::io::stdout)?;
        crate::metrics::init(service);
        Ok(Self {
            service: service.to_owned(),
            settings,
            telemetry,
            shutdown: crate::shutdown::on_signal(),
            workers: Vec::new(),
            on_stop: Vec::new(),
        })
    }

    /// The settings the workers run with.
    pub fn settings(&self) -> &WorkerSettings {
        &self.settings
    }

    /// Cancelled on SIGTERM or ctrl-c; cancel it to stop the service from
    /// code (tests, an admin endpoint).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Adds a worker (one queue). It runs with the app's broker, consumer
    /// and idempotency settings and the app's service name; its state is
    /// kept by its handlers.
    pub fn worker<S: Send + Sync + 'static>(mut self, worker: Worker<S>) -> Self {
        let worker = worker
            .with_state(())
            .service(self.service.clone())
            .settings(self.settings.broker.clone(), self.settings.consumer.clone());
        self.workers.push(worker);
        self
    }

    /// Runs `stop` once every worker has drained, before the last traces
    /// are flushed: close a connection pool, flush a buffer.
    pub fn on_stop(mut self, stop: impl Future<Output = ()> + Send + 'static) -> Self {
        self.on_stop.push(Box::pin(stop));
        self
    }

    /// Connects the idempotency store, serves the ops endpoints, and runs
    /// every worker until shutdown, then drains them, runs the
    /// [`App::on_stop`] hooks and flushes traces.
    pub async fn run(self) -> Result<(), AppError> {
        let result = self.run_workers().await;
        if let Err(e) = &result {
            tracing::error!(error = %e, "The service stopped.");
        }
        result
    }

    async fn run_workers(self) -> Result<(), AppError> {
        let Self {
            service,
            settings,
            telemetry,
            shutdown,
            workers,
            on_stop,
        } = self;
        if workers.is_empty() {
            return Err(AppError::NoWorkers);
        }
        crate::celery::bridge::check(&settings.celery)?;
        let store = idempotency::from_settings(&settings.idempotency).await?;
        let celery_results = match settings.celery.result_backend_url() {
            Some(url) => Some(
                CeleryResults::connect(url, settings.celery.result_expires)
                    .await
                    .map_err(AppError::CeleryResults)?,
            ),
            None => None,
        };
        let workers: Vec<Worker> = workers
            .into_iter()
            .map(|w| {
                w.with_idempotency(store.clone())
                    .with_celery_results(celery_results.clone())
            })
            .collect();
        let statuses: Vec<Arc<WorkerStatus>> = workers.iter().map(Worker::status).collect();
        let bridge = celery_bridge(
            &service,
            &settings,
            celery_results,
            statuses.clone(),
            shutdown.clone(),
        );
        let readiness = Arc::new(move || statuses.iter().try_for_each(|status| status.readiness()));
        let run_all = async {
            // Every worker stops on the same token; the first to fail for
            // good stops the others too.
            let runs = workers.into_iter().map(|worker| {
                let shutdown = shutdown.clone();
                async move {
                    let result = worker.run(shutdown.clone()).await;
                    if result.is_err() {
                        shutdown.cancel();
                    }
                    result
                }
            });
            let (results, bridged) = tokio::join!(futures::future::join_all(runs), bridge);
            for stop in on_stop {
                stop.await;
            }
            results
                .into_iter()
                .collect::<Result<Vec<()>, _>>()
                .map_err(AppError::from)?;
            bridged.map_err(AppError::from)
        };
        let result = crate::ops::serve_during(&settings.ops, readiness, run_all).await;
        telemetry.shutdown().await;
        result?
    }
}

/// The Celery bridge, when `celery.enabled`: started once every worker of
/// the app consumes (so the task types it hands on have their queues
/// bound), stopped with them.
async fn celery_bridge(
    service: &str,
    settings: &WorkerSettings,
    results: Option<CeleryResults>,
    statuses: Vec<Arc<WorkerStatus>>,
    shutdown: CancellationToken,
) -> Result<(), crate::celery::BridgeError> {
    if !settings.celery.enabled {
        return Ok(());
    }
    let mut ready = tokio::time::interval(std::time::Duration::from_millis(100));
    while !statuses.iter().all(|s| s.is_ready()) {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = ready.tick() => {}
        }
    }
    let result = crate::celery::run_bridge(
        settings.broker.clone(),
        settings.celery.clone(),
        crate::broker::worker_identity(service),
        results,
        shutdown.clone(),
    )
    .await;
    if result.is_err() {
        shutdown.cancel();
    }
    result
}

/// Runs one worker as the service `service`, with [`WorkerSettings`] from
/// the environment: [`App::from_env`], [`App::worker`], [`App::run`] in
/// one call.
///
/// ```no_run
/// use warren::prelude::*;
///
/// #[derive(serde::Deserialize, serde::Serialize)]
/// struct Ping {}
///
/// impl Task for Ping {
///     const TYPE: &'static str = "ping.send";
/// }
///
/// #[tokio::main]
/// async fn main() -> Result<(), warren::AppError> {
///     warren::serve(
///         "ping-worker",
///         Worker::for_task::<Ping>().handle(|_ctx, _ping: Ping| async { Ok(Outcome::done()) }),
///     )
///     .await
/// }
/// ```
pub async fn serve<S: Send + Sync + 'static>(
    service: &str,
    worker: Worker<S>,
) -> Result<(), AppError> {
    App::from_env(service)?.worker(worker).run().await
}
