//! The consumer runtime: it owns everything between the broker and a
//! handler, so handlers stay plain async functions.
//!
//! Per delivery: read the task's metadata, skip ids that already succeeded,
//! decode the body, run the handler off the consumer loop (a panic is a
//! failed attempt, not a dead worker), then ack, or publish a confirmed copy
//! to a delay queue or the parking lot and ack the original. Nothing ever
//! waits unacked in memory for a retry: RabbitMQ's `consumer_timeout` would
//! close the channel under it, which is how Celery and Dramatiq lose work.
//!
//! Around that: prefetch and a concurrency limit, reconnects with backoff
//! when the broker goes away (lapin's auto-recovery first, a fresh
//! connection when that gives up), and a drain on shutdown that lets
//! in-flight tasks finish within a deadline and hands the rest back.
//!
//! The rooms: [`context`] (what a handler's context asks of the runtime:
//! follow-ups), [`limits`] (per-type concurrency, rate and soft time
//! limits), [`session`] (one connection's life, and the watch on it),
//! [`delivery`] (one delivery from its metadata to the handler's answer),
//! [`attempt`] (one run of a handler, shared with the test kit),
//! [`settle`] (the retry-or-park decision, shared with the test kit; then
//! ack, or a confirmed copy to a delay queue or the parking lot), [`record`] (each outcome's metric, log line and task event as one
//! value) and [`drain`] (stopping without losing anything).

mod attempt;
mod chain;
mod context;
mod defer;
mod delivery;
mod drain;
mod limits;
mod poison;
mod record;
mod session;
mod settle;

#[cfg(feature = "testing")]
pub(crate) use attempt::Handled;
#[cfg(feature = "testing")]
pub(crate) use settle::{Verdict, decide};

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::broker::{Backoff, worker_identity};
use crate::celery::CeleryResults;
use crate::contract::Names;
use crate::events::{Batching, EventPublisher};
use crate::idempotency::IdempotencyStore;
use crate::metrics;
use crate::settings::{BrokerSettings, ConsumerSettings};
use crate::topology::{Topology, TopologyError};
use crate::{Outcome, Task, TaskContext, TaskError, TaskOptions};
use session::{SessionError, session};

/// Errors that stop a worker for good. Connection trouble is not among
/// them: the runtime reconnects until it is told to stop.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The broker has Warren's names with other arguments.
    #[error(transparent)]
    Topology(#[from] TopologyError),
    /// `run` was called on a worker with no handlers.
    #[error("the worker has no handlers")]
    NoHandlers,
    /// The Redis of the `redis` rate-limit backend is unreachable.
    #[error("could not connect to the rate limit store: {0}")]
    RateLimitStore(#[from] redis::RedisError),
}

type ErasedHandler =
    Arc<dyn Fn(TaskContext, &[u8]) -> BoxFuture<'static, Result<Outcome, TaskError>> + Send + Sync>;

/// Whether the worker is connected and consuming, for `/readyz`.
#[derive(Debug, Default)]
pub struct WorkerStatus {
    consuming: AtomicBool,
    in_flight: AtomicUsize,
    sessions: AtomicUsize,
}

impl WorkerStatus {
    /// Connected, topology declared, consuming.
    pub fn is_ready(&self) -> bool {
        self.consuming.load(Ordering::SeqCst)
    }

    /// `Ok` when ready, else why not: for `/readyz`.
    pub fn readiness(&self) -> Result<(), String> {
        if self.is_ready() {
            Ok(())
        } else {
            Err("not consuming (connecting to the broker, recovering, or shutting down)".to_owned())
        }
    }

    /// Tasks being handled right now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }
}

/// One task type's handler and what the type declared.
#[derive(Clone)]
struct Route {
    handler: ErasedHandler,
    options: TaskOptions,
}

/// A worker consuming one queue and dispatching by task type.
///
/// Build it from a task type with [`Worker::for_task`] (the queue and its
/// binding come from the type), give it its dependencies once with
/// [`Worker::with_state`], route types to handlers with
/// [`Worker::handle_with`] (or [`Worker::handle`] for handlers without
/// state), and run it with [`crate::App`] or [`crate::serve`], which bring
/// settings, telemetry, metrics, ops endpoints, idempotency and shutdown.
///
/// Every task type routed on one worker shares its queue (and its
/// prefetch); for types with different limits or very different
/// durations, use one worker (one queue) per type in the same [`crate::App`].
///
/// ```
/// use std::sync::Arc;
/// use warren::prelude::*;
///
/// #[derive(serde::Deserialize, serde::Serialize)]
/// struct Resize {
///     key: String,
/// }
///
/// impl Task for Resize {
///     const TYPE: &'static str = "photos.resize";
/// }
///
/// struct Store;
///
/// async fn resize(_ctx: TaskContext, task: Resize, _store: Arc<Store>) -> Result<Outcome, TaskError> {
///     Ok(Outcome::with_result(serde_json::json!({ "key": task.key })))
/// }
///
/// let worker = Worker::for_task::<Resize>().with_state(Store).handle_with(resize);
/// assert_eq!(worker.queue_stem(), "photos");
/// assert_eq!(worker.binding_keys(), ["photos.resize"]);
/// ```
pub struct Worker<S = ()> {
    service: String,
    stem: String,
    binding_keys: Vec<String>,
    /// Built by [`Worker::for_task`]: each handled type adds its binding.
    derived: bool,
    broker: BrokerSettings,
    consumer: ConsumerSettings,
    handlers: HashMap<&'static str, Route>,
    idempotency: Option<Arc<dyn IdempotencyStore>>,
    celery_results: Option<CeleryResults>,
    status: Arc<WorkerStatus>,
    state: Arc<S>,
}

impl Worker {
    /// A worker of `service` consuming `{namespace}.{stem}`, bound to the
    /// tasks exchange with `binding_keys` (e.g. `["email.#"]`).
    pub fn new(
        service: impl Into<String>,
        stem: impl Into<String>,
        binding_keys: &[&str],
        broker: BrokerSettings,
        consumer: ConsumerSettings,
    ) -> Self {
        Self {
            service: service.into(),
            stem: stem.into(),
            binding_keys: binding_keys.iter().map(|k| (*k).to_owned()).collect(),
            derived: false,
            broker,
            consumer,
            handlers: HashMap::new(),
            idempotency: None,
            celery_results: None,
            status: Arc::default(),
            state: Arc::new(()),
        }
    }

    /// A worker for task type `T`: it consumes `{namespace}.{stem}`, the
    /// stem being `T::OPTIONS.queue` or else the first segment of
    /// `T::TYPE`, bound with `T::OPTIONS.bindings` or else `T::TYPE`.
    /// Settings are the defaults until [`crate::App`] (or
    /// [`Worker::settings`]) gives it its own.
    pub fn for_task<T: Task>() -> Self {
        let stem = queue_stem_of::<T>();
        let mut worker = Self::new(
            format!("{stem}-worker"),
            stem,
            &[],
            BrokerSettings::default(),
            ConsumerSettings::default(),
        );
        worker.derived = true;
        worker.bind::<T>();
        worker
    }
}

/// The stem of `T`'s work queue.
fn queue_stem_of<T: Task>() -> &'static str {
    T::OPTIONS
        .queue
        .unwrap_or_else(|| T::TYPE.split('.').next().unwrap_or(T::TYPE))
}

impl<S: Send + Sync + 'static> Worker<S> {
    /// This worker with `state` handed to every [`Worker::handle_with`]
    /// handler as an `Arc<S>`: built once, shared, never cloned by hand.
    pub fn with_state<S2: Send + Sync + 'static>(self, state: S2) -> Worker<S2> {
        Worker {
            service: self.service,
            stem: self.stem,
            binding_keys: self.binding_keys,
            derived: self.derived,
            broker: self.broker,
            consumer: self.consumer,
            handlers: self.handlers,
            idempotency: self.idempotency,
            celery_results: self.celery_results,
            status: self.status,
            state: Arc::new(state),
        }
    }

    /// The state handlers get, e.g. to close it after the worker stops.
    pub fn state(&self) -> Arc<S> {
        self.state.clone()
    }

    /// The service name (logs, metrics, the worker's identity).
    pub fn service(mut self, service: impl Into<String>) -> Self {
        self.service = service.into();
        self
    }

    /// This worker with these broker and consumer settings.
    pub fn settings(mut self, broker: BrokerSettings, consumer: ConsumerSettings) -> Self {
        self.broker = broker;
        self.consumer = consumer;
        self
    }

    /// Deduplicate by task id with this store.
    pub fn with_idempotency(mut self, store: Option<Arc<dyn IdempotencyStore>>) -> Self {
        self.idempotency = store;
        self
    }

    /// Write the states of tasks the Celery bridge handed on in Celery's
    /// result-backend format (docs/celery.md).
    pub fn with_celery_results(mut self, results: Option<CeleryResults>) -> Self {
        self.celery_results = results;
        self
    }

    /// The stem of the queue this worker consumes, `{namespace}.{stem}`.
    pub fn queue_stem(&self) -> &str {
        &self.stem
    }

    /// The keys binding its queue to the tasks exchange.
    pub fn binding_keys(&self) -> &[String] {
        &self.binding_keys
    }

    /// The task types it handles.
    pub fn task_types(&self) -> Vec<&'static str> {
        let mut types: Vec<_> = self.handlers.keys().copied().collect();
        types.sort_unstable();
        types
    }

    fn bind<T: Task>(&mut self) {
        if !self.derived {
            return;
        }
        let keys = T::OPTIONS.bindings.unwrap_or(&[]);
        let keys = if keys.is_empty() {
            &[T::TYPE][..]
        } else {
            keys
        };
        for key in keys {
            if !self.binding_keys.iter().any(|k| k == key) {
                self.binding_keys.push((*key).to_owned());
            }
        }
    }

    /// Routes task type `T::TYPE` to `handler`, which gets the task's
    /// context, the decoded task and the worker's state. The body is
    /// decoded into `T` first; a body that does not decode is
    /// dead-lettered at once. On a worker from [`Worker::for_task`], the
    /// queue is also bound with `T`'s key.
    pub fn handle_with<T, F, Fut>(mut self, handler: F) -> Self
    where
        T: Task,
        F: Fn(TaskContext, T, Arc<S>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Outcome, TaskError>> + Send + 'static,
    {
        let handler = Arc::new(handler);
        let state = self.state.clone();
        let erased: ErasedHandler = Arc::new(move |ctx, body| match T::decode(body) {
            Ok(task) => Box::pin(handler(ctx, task, state.clone())),
            Err(e) => Box::pin(std::future::ready(Err(e))),
        });
        self.bind::<T>();
        self.handlers.insert(
            T::TYPE,
            Route {
                handler: erased,
                options: T::OPTIONS,
            },
        );
        self
    }

    /// Routes task type `T::TYPE` to `handler`, which needs no state. The
    /// body is decoded into `T` first; a body that does not decode is
    /// dead-lettered at once.
    pub fn handle<T, F, Fut>(self, handler: F) -> Self
    where
        T: Task,
        F: Fn(TaskContext, T) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Outcome, TaskError>> + Send + 'static,
    {
        self.handle_with(move |ctx, task: T, _state: Arc<S>| handler(ctx, task))
    }

    /// The topology this worker declares.
    pub fn topology(&self) -> Topology {
        let keys: Vec<&str> = self.binding_keys.iter().map(String::as_str).collect();
        Topology::with_kind(
            &self.broker.names(),
            &self.stem,
            &keys,
            &self.consumer.retry_delays,
            self.broker.queue_kind(),
        )
    }

    /// Readiness and load, shared with the health endpoint.
    pub fn status(&self) -> Arc<WorkerStatus> {
        self.status.clone()
    }

    /// Consumes until `shutdown` is cancelled, then drains. Returns an error
    /// only for what reconnecting cannot fix (a topology conflict).
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), RuntimeError> {
        if self.handlers.is_empty() {
            return Err(RuntimeError::NoHandlers);
        }
        let identity = worker_identity(&self.service);
        let topology = self.topology();
        let concurrency = self
            .consumer
            .concurrency
            .clamp(1, usize::from(self.consumer.prefetch.max(1)));
        let gates = limits::Gates::new(
            self.handlers.iter().map(|(t, r)| (*t, r.options)),
            &self.broker.namespace,
            &self.consumer,
        )
        .await?;
        let inner = Arc::new(Inner {
            gates,
            stop: shutdown.child_token(),
            names: self.broker.names(),
            queue: topology.work_queue.name.clone(),
            span_name: format!("process {}", topology.work_queue.name),
            identity: identity.clone(),
            task_metrics: self
                .handlers
                .keys()
                .map(|&task| {
                    let m = metrics::runtime().for_task(&topology.work_queue.name, task);
                    (task, Arc::new(m))
                })
                .collect(),
            handlers: self.handlers,
            idempotency: self.idempotency,
            celery_results: self.celery_results,
            consumer: self.consumer,
            topology,
            status: self.status,
            delivery_limit: self.broker.delivery_limit,
            priority_warned: AtomicBool::new(false),
        });
        let permits = Arc::new(Semaphore::new(concurrency));
        let tracker = TaskTracker::new();
        let mut backoff = Backoff::new(Duration::from_millis(250), self.broker.reconnect_max_delay);
        // One for the worker's life, attached to each session's connection,
        // so events not confirmed before a connection was lost are not lost
        // with it.
        let events = inner
            .consumer
            .events
            .then(|| EventPublisher::new(&inner.names, Batching::default()));

        info!(
            queue = %inner.queue,
            worker = %identity,
            prefetch = inner.consumer.prefetch,
            concurrency,
            queue_type = inner.topology.kind.type_name(),
            delivery_limit = inner.delivery_limit,
            broker = %self.broker.redacted_url(),
            "Worker starting."
        );
        loop {
            let outcome = session(
                &inner,
                &self.broker,
                &permits,
                &tracker,
                &shutdown,
                &mut backoff,
                events.as_ref(),
            )
            .await;
            inner.status.consuming.store(false, Ordering::SeqCst);
            match outcome {
                Ok(()) => break,
                Err(SessionError::Topology(e)) => {
                    error!(error = %e, "Broker topology conflicts with Warren's; stopping.");
                    return Err(RuntimeError::Topology(e));
                }
                Err(e) => {
                    let delay = backoff.next_delay();
                    warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "Broker connection lost; reconnecting.");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
        // Reached after a clean drain, or when shutdown came while we were
        // disconnected: whatever is still running cannot ack any more, and
        // the broker already took its message back.
        tracker.close();
        if !tracker.is_empty() {
            let _ = tokio::time::timeout(inner.consumer.shutdown_timeout, tracker.wait()).await;
        }
        info!(worker = %identity, "Worker stopped.");
        Ok(())
    }
}

/// A worker taken apart for the in-memory test kit: its handlers and the
/// rules their attempts run under, without a broker.
#[cfg(feature = "testing")]
pub(crate) struct Lane {
    handlers: HashMap<&'static str, Route>,
    pub(crate) consumer: ConsumerSettings,
    idempotency: Option<Arc<dyn IdempotencyStore>>,
    namespace: String,
    queue: String,
}

#[cfg(feature = "testing")]
impl Lane {
    /// The handlers and the rules their attempts run under.
    pub(crate) fn dispatch(&self) -> attempt::Dispatch<'_> {
        attempt::Dispatch {
            handlers: &self.handlers,
            idempotency: self.idempotency.as_deref(),
            consumer: &self.consumer,
            namespace: &self.namespace,
            queue: &self.queue,
        }
    }

    /// Deduplicates by task id with `store` (none: off).
    pub(crate) fn set_idempotency(&mut self, store: Option<Arc<dyn IdempotencyStore>>) {
        self.idempotency = store;
    }

    /// The task types it handles.
    pub(crate) fn task_types(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.handlers.keys().copied()
    }
}

#[cfg(feature = "testing")]
impl<S: Send + Sync + 'static> Worker<S> {
    /// Its handlers and rules, for the test kit.
    pub(crate) fn into_lane(self) -> Lane {
        let queue = self.topology().work_queue.name;
        Lane {
            handlers: self.handlers,
            consumer: self.consumer,
            idempotency: self.idempotency,
            namespace: self.broker.namespace,
            queue,
        }
    }
}

/// What one delivery needs, shared by all of them.
struct Inner {
    names: Names,
    queue: String,
    /// `process {queue}`, the OpenTelemetry name of a task's span.
    span_name: String,
    identity: String,
    handlers: HashMap<&'static str, Route>,
    /// Metric handles of each handled task type, looked up once: their
    /// series exist (at zero) from the start, and a task costs no label
    /// lookups.
    task_metrics: HashMap<&'static str, Arc<metrics::TaskMetrics>>,
    idempotency: Option<Arc<dyn IdempotencyStore>>,
    /// Celery's result backend, when `celery.result_backend` is set.
    celery_results: Option<CeleryResults>,
    consumer: ConsumerSettings,
    topology: Topology,
    status: Arc<WorkerStatus>,
    /// Per-type concurrency and rate limits.
    gates: limits::Gates,
    /// Cancelled on shutdown: tasks waiting at a gate are handed back.
    stop: CancellationToken,
    /// `broker.delivery_limit`: deliveries of an attempt that never
    /// settled before it is parked (0: no limit).
    delivery_limit: u32,
    /// A prioritised task on a quorum queue was logged (once per worker).
    priority_warned: AtomicBool,
}

impl Inner {
    /// The handlers and the rules their attempts run under.
    fn dispatch(&self) -> attempt::Dispatch<'_> {
        attempt::Dispatch {
            handlers: &self.handlers,
            idempotency: self.idempotency.as_deref(),
            consumer: &self.consumer,
            namespace: self.names.namespace(),
            queue: &self.queue,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize)]
    struct Resize {}
    impl Task for Resize {
        const TYPE: &'static str = "photos.resize";
    }

    #[derive(serde::Deserialize)]
    struct Crop {}
    impl Task for Crop {
        const TYPE: &'static str = "photos.crop";
        const OPTIONS: TaskOptions = TaskOptions::new().max_attempts(2);
    }

    #[derive(serde::Deserialize)]
    struct Send {}
    impl Task for Send {
        const TYPE: &'static str = "mail.send";
        const OPTIONS: TaskOptions = TaskOptions::new().queue("outbox").bindings(&["mail.#"]);
    }

    async fn ok() -> Result<Outcome, TaskError> {
        Ok(Outcome::done())
    }

    #[test]
    fn a_worker_derives_its_queue_and_a_binding_per_type() {
        let w = Worker::for_task::<Resize>()
            .handle(|_, _: Resize| ok())
            .handle(|_, _: Crop| ok());
        assert_eq!(w.queue_stem(), "photos");
        assert_eq!(w.binding_keys(), ["photos.resize", "photos.crop"]);
        assert_eq!(w.task_types(), ["photos.crop", "photos.resize"]);
        let w =
            Worker::for_task::<Send>()
                .with_state(3u8)
                .handle_with(|_, _: Send, n| async move {
                    Ok(Outcome::with_result(serde_json::json!(*n)))
                });
        assert_eq!(
            (w.queue_stem(), w.binding_keys()),
            ("outbox", &["mail.#".to_owned()][..])
        );
        // A worker with explicit bindings keeps exactly those.
        let w = Worker::new(
            "s",
            "q",
            &["x.#"],
            BrokerSettings::default(),
            ConsumerSettings::default(),
        )
        .handle(|_, _: Resize| ok());
        assert_eq!(w.binding_keys(), ["x.#"]);
    }
}
