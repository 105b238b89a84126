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
//! The rooms: [`session`] (one connection's life, and the watch on it),
//! [`delivery`] (one delivery from its metadata to the handler's answer),
//! [`settle`] (ack, or a confirmed copy to a delay queue or the parking
//! lot), [`record`] (each outcome's metric, log line and task event as one
//! value) and [`drain`] (stopping without losing anything).

mod delivery;
mod drain;
mod record;
mod session;
mod settle;

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
use crate::contract::Names;
use crate::events::{Batching, EventPublisher};
use crate::idempotency::{self, IdempotencyStore};
use crate::metrics;
use crate::settings::{BrokerSettings, ConsumerSettings};
use crate::topology::{Topology, TopologyError};
use crate::{Outcome, Task, TaskContext, TaskError};
use session::{SessionError, session};

/// Errors that stop a worker for good. Connection trouble is not among
/// them: the runtime reconnects until it is told to stop.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(transparent)]
    Topology(#[from] TopologyError),
    #[error("the worker has no handlers")]
    NoHandlers,
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

/// A worker consuming one queue and dispatching by task type.
pub struct Worker {
    service: String,
    stem: String,
    binding_keys: Vec<String>,
    broker: BrokerSettings,
    consumer: ConsumerSettings,
    handlers: HashMap<&'static str, ErasedHandler>,
    idempotency: Option<Arc<dyn IdempotencyStore>>,
    status: Arc<WorkerStatus>,
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
            broker,
            consumer,
            handlers: HashMap::new(),
            idempotency: None,
            status: Arc::default(),
        }
    }

    /// Deduplicate by task id with this store.
    pub fn with_idempotency(mut self, store: Option<Arc<dyn IdempotencyStore>>) -> Self {
        self.idempotency = store;
        self
    }

    /// Routes task type `T::TYPE` to `handler`. The body is decoded into `T`
    /// first; a body that does not decode is dead-lettered at once.
    pub fn handle<T, F, Fut>(mut self, handler: F) -> Self
    where
        T: Task,
        F: Fn(TaskContext, T) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Outcome, TaskError>> + Send + 'static,
    {
        let handler = Arc::new(handler);
        let erased: ErasedHandler = Arc::new(move |ctx, body| match T::decode(body) {
            Ok(task) => Box::pin(handler(ctx, task)),
            Err(e) => Box::pin(std::future::ready(Err(e))),
        });
        self.handlers.insert(T::TYPE, erased);
        self
    }

    /// The topology this worker declares.
    pub fn topology(&self) -> Topology {
        let keys: Vec<&str> = self.binding_keys.iter().map(String::as_str).collect();
        Topology::new(
            &Names::new(&self.broker.namespace),
            &self.stem,
            &keys,
            &self.consumer.retry_delays,
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
        let inner = Arc::new(Inner {
            names: Names::new(&self.broker.namespace),
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
            consumer: self.consumer,
            topology,
            status: self.status,
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

/// What one delivery needs, shared by all of them.
struct Inner {
    names: Names,
    queue: String,
    /// `process {queue}`, the OpenTelemetry name of a task's span.
    span_name: String,
    identity: String,
    handlers: HashMap<&'static str, ErasedHandler>,
    /// Metric handles of each handled task type, looked up once: their
    /// series exist (at zero) from the start, and a task costs no label
    /// lookups.
    task_metrics: HashMap<&'static str, Arc<metrics::TaskMetrics>>,
    idempotency: Option<Arc<dyn IdempotencyStore>>,
    consumer: ConsumerSettings,
    topology: Topology,
    status: Arc<WorkerStatus>,
}

impl Inner {
    /// The idempotency store's key of a task.
    fn dedup_key(&self, ctx: &TaskContext) -> String {
        idempotency::key(self.names.namespace(), &ctx.task_type, &ctx.id)
    }
}
