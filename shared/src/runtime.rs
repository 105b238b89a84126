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

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use futures::StreamExt;
use futures::future::BoxFuture;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, error, info, info_span, warn};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::broker::{Backoff, ConnectError, connect, worker_identity};
use crate::contract::{self, DeadReason, Names, PERSISTENT, headers};
use crate::events::{EventPublisher, TaskEvent, TaskState};
use crate::idempotency::{self, IdempotencyStore};
use crate::metrics::{self, TaskMetrics};
use crate::publisher::{PublishError, Publisher, Purpose};
use crate::settings::{BrokerSettings, ConsumerSettings};
use crate::topology::{Topology, TopologyError};
use crate::trace;
use crate::{Outcome, Task, TaskContext, TaskError};

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

#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error(transparent)]
    Topology(TopologyError),
    #[error("{0}")]
    Broker(#[from] lapin::Error),
    #[error(transparent)]
    Publisher(#[from] PublishError),
    #[error("the broker cancelled the consumer (was the queue deleted?)")]
    ConsumerCancelled,
    #[error("a publish failed on a broken channel")]
    ChannelBroken,
}

/// One connection's life: connect, declare, consume until shutdown (then
/// drain) or until the connection is lost beyond lapin's recovery.
async fn session(
    inner: &Arc<Inner>,
    broker: &BrokerSettings,
    permits: &Arc<Semaphore>,
    tracker: &TaskTracker,
    shutdown: &CancellationToken,
    backoff: &mut Backoff,
) -> Result<(), SessionError> {
    let connection = tokio::select! {
        _ = shutdown.cancelled() => return Ok(()),
        connection = connect(broker, &inner.identity) => connection?,
    };
    match inner.topology.declare(&connection).await {
        Ok(()) => {}
        Err(e @ TopologyError::Conflict { .. }) => {
            let _ = connection.close(200, "topology conflict".into()).await;
            return Err(SessionError::Topology(e));
        }
        Err(TopologyError::Broker { source, .. }) => return Err(SessionError::Broker(source)),
    }
    let publisher = Publisher::on(&connection, inner.names.clone()).await?;
    let events = if inner.consumer.events {
        Some(EventPublisher::on(&connection, &inner.names).await?)
    } else {
        None
    };
    let restart = CancellationToken::new();
    let out = Outbound {
        publisher,
        events,
        restart: restart.clone(),
    };
    let channel = connection.create_channel().await?;
    channel
        .basic_qos(inner.consumer.prefetch, BasicQosOptions::default())
        .await?;
    let tag = format!("{}#{}", inner.identity, uuid::Uuid::new_v4().simple());
    let mut consumer = channel
        .basic_consume(
            inner.queue.as_str().into(),
            tag.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    inner.status.consuming.store(true, Ordering::SeqCst);
    metrics::broker_connected(true);
    if inner.status.sessions.fetch_add(1, Ordering::SeqCst) > 0 {
        metrics::broker_reconnected();
    }
    backoff.reset();
    info!(queue = %inner.queue, "Consuming.");
    let watcher = tokio::spawn(watch_connection(
        connection.status().clone(),
        connection.events_listener(),
        inner.clone(),
    ));

    let result = loop {
        // Take a permit before the next delivery, so at most `concurrency`
        // handlers run and the rest of the prefetch waits in the buffer.
        let permit = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break Ok(()),
            permit = permits.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break Ok(()),
            },
        };
        let next = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break Ok(()),
            _ = restart.cancelled() => break Err(SessionError::ChannelBroken),
            next = consumer.next() => next,
        };
        match next {
            Some(Ok(delivery)) => {
                let inner = inner.clone();
                tracker.spawn(process(inner, out.clone(), delivery, permit));
            }
            Some(Err(e)) => {
                drop(permit);
                debug!(error = %e, "The consumer saw a broker error; waiting for lapin's recovery.");
                if let Err(e) = channel.wait_for_recovery(e).await {
                    break Err(SessionError::Broker(e));
                }
            }
            None => break Err(SessionError::ConsumerCancelled),
        }
    };
    watcher.abort();
    inner.status.consuming.store(false, Ordering::SeqCst);
    metrics::broker_connected(false);
    if result.is_ok() {
        drain(inner, &channel, &tag, &mut consumer, tracker).await;
    }
    // The finished tasks' last events, before the connection goes.
    if let Some(events) = &out.events {
        events.flush(Duration::from_secs(2)).await;
    }
    if channel.status().connected() {
        let _ = channel.close(200, "worker stopping".into()).await;
    }
    let _ = connection.close(200, "worker stopping".into()).await;
    result
}

/// Watches the connection: while lapin recovers a dropped connection by
/// itself the consumer stream stays quiet, so this is where the outage and
/// the recovery become visible (logs and readiness). Its events carry the
/// broker's resource alarms; recovery is read off the connection state,
/// which lapin keeps current in every path.
async fn watch_connection(
    status: lapin::ConnectionStatus,
    events: impl futures::Stream<Item = lapin::Event> + Send + 'static,
    inner: Arc<Inner>,
) {
    futures::pin_mut!(events);
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            event = events.next() => match event {
                Some(lapin::Event::ConnectionBlocked(reason)) => warn!(
                    reason = %reason,
                    "The broker blocked this connection (resource alarm); retry and dead-letter copies wait."
                ),
                Some(lapin::Event::ConnectionUnblocked) => info!("The broker unblocked this connection."),
                Some(_) => {}
                None => return,
            },
            _ = tick.tick() => {
                let connected = status.connected();
                let was = inner.status.consuming.swap(connected, Ordering::SeqCst);
                metrics::broker_connected(connected);
                if was && !connected {
                    warn!(reconnecting = status.reconnecting(), "Broker connection interrupted; recovering.");
                } else if !was && connected {
                    metrics::broker_reconnected();
                    info!(queue = %inner.queue, "Broker connection recovered; consuming again.");
                }
            }
        }
    }
}

/// Stops consuming, hands back what was prefetched but not started, and
/// gives in-flight tasks until the deadline to finish.
async fn drain(
    inner: &Arc<Inner>,
    channel: &Channel,
    tag: &str,
    consumer: &mut lapin::Consumer,
    tracker: &TaskTracker,
) {
    if let Err(e) = channel
        .basic_cancel(tag.into(), BasicCancelOptions::default())
        .await
    {
        warn!(error = %e, "Could not cancel the consumer; closing the channel hands its messages back.");
    }
    let mut handed_back = 0usize;
    while let Ok(Some(Ok(delivery))) =
        tokio::time::timeout(Duration::from_millis(50), consumer.next()).await
    {
        let _ = delivery
            .acker
            .nack(BasicNackOptions {
                requeue: true,
                ..Default::default()
            })
            .await;
        handed_back += 1;
    }
    let in_flight = inner.status.in_flight();
    info!(
        in_flight,
        handed_back,
        deadline_ms = inner.consumer.shutdown_timeout.as_millis() as u64,
        "Stopped consuming; waiting for in-flight tasks."
    );
    tracker.close();
    if tokio::time::timeout(inner.consumer.shutdown_timeout, tracker.wait())
        .await
        .is_err()
    {
        warn!(
            unfinished = inner.status.in_flight(),
            "In-flight tasks did not finish before the deadline; handing them back to the broker."
        );
    }
}

/// Seconds the task waited in its queue: since the end of its retry delay
/// for a retry, since its publish otherwise (milliseconds from Warren's
/// header, whole seconds from the AMQP timestamp for other producers).
fn queue_wait(delivery: &Delivery, ctx: &TaskContext) -> Option<f64> {
    let hdrs = delivery.properties.headers().as_ref();
    let now_ms = Utc::now().timestamp_millis();
    let since_ms = if ctx.attempt > 1 {
        contract::header_str(hdrs, headers::NEXT_ATTEMPT_AT)
            .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
            .map(|t| t.timestamp_millis())
    } else {
        hdrs.and_then(|h| match h.inner().get(headers::PUBLISHED_AT_MS) {
            Some(lapin::types::AMQPValue::LongLongInt(ms)) => Some(*ms),
            _ => None,
        })
        .or_else(|| ctx.published_at.map(|t| t.timestamp_millis()))
    }?;
    Some((now_ms - since_ms).max(0) as f64 / 1000.0)
}

/// The task's metadata as read off a delivery.
struct Meta {
    ctx: TaskContext,
    id_assigned: bool,
}

fn read_meta(delivery: &Delivery, max_attempts: u32) -> Meta {
    let props = &delivery.properties;
    let hdrs = props.headers().as_ref();
    let (id, id_assigned) = match props.message_id() {
        Some(id) if !id.as_str().is_empty() => (id.as_str().to_owned(), false),
        _ => (uuid::Uuid::now_v7().to_string(), true),
    };
    let task_type = props
        .kind()
        .as_ref()
        .map(|t| t.as_str().to_owned())
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| delivery.routing_key.as_str().to_owned());
    let published_at = props
        .timestamp()
        .and_then(|ts| i64::try_from(ts).ok())
        .and_then(|ts| DateTime::from_timestamp(ts, 0));
    Meta {
        ctx: TaskContext {
            id,
            task_type,
            attempt: contract::header_u32(hdrs, headers::ATTEMPT)
                .unwrap_or(1)
                .max(1),
            max_attempts,
            priority: props.priority().unwrap_or(0),
            published_at,
            redelivered: delivery.redelivered,
        },
        id_assigned,
    }
}

/// Handles one delivery from start to ack. Never panics, never returns an
/// error: every path ends in ack, a confirmed copy plus ack, or a hand-back.
/// What a delivery publishes through: copies (confirmed) and events (fire
/// and forget).
#[derive(Clone)]
struct Outbound {
    publisher: Publisher,
    events: Option<EventPublisher>,
    /// Cancelled when a publish broke on the channel: the session restarts.
    restart: CancellationToken,
}

impl Outbound {
    async fn emit(&self, event: Option<TaskEvent>) {
        if let (Some(events), Some(event)) = (&self.events, event) {
            events.emit(event).await;
        }
    }
}

async fn process(
    inner: Arc<Inner>,
    out: Outbound,
    delivery: Delivery,
    permit: OwnedSemaphorePermit,
) {
    let Meta { ctx, id_assigned } = read_meta(&delivery, inner.consumer.max_attempts());
    // The span's fields are what a log line needs; every one of them is
    // formatted into JSON when the span opens, for every task, so the
    // OpenTelemetry messaging attributes, which only an exporter reads,
    // are set on the exported span alone (see `trace::messaging_attributes`).
    let span = info_span!(
        "task",
        otel.name = %inner.span_name,
        otel.kind = "consumer",
        task_id = %ctx.id,
        task_type = %ctx.task_type,
        attempt = ctx.attempt,
        redelivered = ctx.redelivered,
        trace_id = tracing::field::Empty,
        span_id = tracing::field::Empty,
    );
    // The producer's (or the failed attempt's) span is this one's parent.
    let _ = span.set_parent(trace::extract(delivery.properties.headers().as_ref()));
    trace::record_ids(&span);
    if trace::exporting() {
        trace::messaging_attributes(
            &span,
            &inner.queue,
            delivery.routing_key.as_str(),
            &ctx.id,
            delivery.data.len(),
        );
    }
    async move {
        inner.status.in_flight.fetch_add(1, Ordering::SeqCst);
        let m = match inner.task_metrics.get(ctx.task_type.as_str()) {
            Some(m) => Arc::clone(m),
            None => Arc::new(metrics::runtime().for_task(&inner.queue, &ctx.task_type)),
        };
        m.received.inc();
        m.in_progress.inc();
        if let Some(wait) = queue_wait(&delivery, &ctx) {
            m.queue_wait.observe(wait);
        }
        if id_assigned {
            info!("Task arrived without a message_id; assigned one.");
        }
        let event = |state| {
            let mut e = TaskEvent::new(&ctx.id, &ctx.task_type, state, ctx.attempt);
            e.by = Some(inner.identity.clone());
            e
        };
        if inner.handlers.contains_key(ctx.task_type.as_str()) {
            out.emit(Some(event(TaskState::Running))).await;
        }
        let started = Instant::now();
        let result = run_handler(&inner, &ctx, &delivery.data).await;
        let elapsed = started.elapsed();
        let elapsed_ms = elapsed.as_millis() as u64;
        match result {
            Ok(Handled::Duplicate) => {
                info!("Task already succeeded earlier; acking the duplicate without running it.");
                ack(&delivery).await;
                m.duplicates.inc();
            }
            Ok(Handled::Done(outcome)) => {
                if let (Some(store), Some(key)) = (&inner.idempotency, dedup_key(&inner, &ctx))
                    && let Err(e) = store.mark_done(&key).await
                {
                    warn!(error = %e, "Could not record the task as done; a redelivery would run it again.");
                }
                ack(&delivery).await;
                m.succeeded.inc();
                m.succeeded_duration.observe(elapsed.as_secs_f64());
                let mut done = event(TaskState::Succeeded);
                done.result.clone_from(&outcome.result);
                out.emit(Some(done)).await;
                match &outcome.result {
                    Some(result) => info!(elapsed_ms, result = %result, "Task succeeded."),
                    None => info!(elapsed_ms, "Task succeeded."),
                }
            }
            Err(err) => {
                let failed = Failed {
                    inner: &inner,
                    publisher: &out.publisher,
                    restart: &out.restart,
                    delivery: &delivery,
                    ctx: &ctx,
                    err: &err,
                    metrics: &m,
                    elapsed,
                };
                let settled = if !err.is_permanent() && ctx.attempt < ctx.max_attempts {
                    retry(failed).await
                } else if err.is_permanent() {
                    dead_letter(failed, DeadReason::Permanent).await
                } else {
                    dead_letter(failed, DeadReason::AttemptsExhausted).await
                };
                out.emit(settled.map(|mut e| {
                    e.by = Some(inner.identity.clone());
                    e
                }))
                .await;
            }
        }
        m.in_progress.dec();
        inner.status.in_flight.fetch_sub(1, Ordering::SeqCst);
        drop(permit);
    }
    .instrument(span)
    .await
}

enum Handled {
    Done(Outcome),
    Duplicate,
}

fn dedup_key(inner: &Inner, ctx: &TaskContext) -> Option<String> {
    Some(idempotency::key(
        inner.names.namespace(),
        &ctx.task_type,
        &ctx.id,
    ))
}

async fn run_handler(
    inner: &Arc<Inner>,
    ctx: &TaskContext,
    body: &[u8],
) -> Result<Handled, TaskError> {
    let Some(handler) = inner.handlers.get(ctx.task_type.as_str()) else {
        return Err(TaskError::permanent(
            "unknown_task_type",
            format!(
                "no handler for task type '{}' on queue '{}' (handled: {})",
                ctx.task_type,
                inner.queue,
                inner
                    .handlers
                    .keys()
                    .copied()
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    };
    if let (Some(store), Some(key)) = (&inner.idempotency, dedup_key(inner, ctx)) {
        match store.is_done(&key).await {
            Ok(true) => return Ok(Handled::Duplicate),
            Ok(false) => {}
            Err(e) => return Err(TaskError::retry("idempotency_store", e)),
        }
    }
    let future = handler(ctx.clone(), body);
    let timeout = inner.consumer.task_timeout;
    // A task of its own: a panic in the handler surfaces as a JoinError
    // here instead of unwinding through the consumer.
    match tokio::spawn(tokio::time::timeout(timeout, future)).await {
        Ok(Ok(Ok(outcome))) => Ok(Handled::Done(outcome)),
        Ok(Ok(Err(e))) => Err(e),
        Ok(Err(_elapsed)) => Err(TaskError::retry(
            "timeout",
            format!(
                "the handler did not finish within {}",
                humantime::format_duration(timeout)
            ),
        )),
        Err(join) if join.is_panic() => {
            let payload = join.into_panic();
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "non-string panic payload".to_owned());
            Err(TaskError::retry(
                "panic",
                format!("the handler panicked: {message}"),
            ))
        }
        Err(join) => Err(TaskError::retry("cancelled", join)),
    }
}

/// One failed attempt being settled: everything retry and dead-lettering
/// need.
#[derive(Clone, Copy)]
struct Failed<'a> {
    inner: &'a Inner,
    publisher: &'a Publisher,
    restart: &'a CancellationToken,
    delivery: &'a Delivery,
    ctx: &'a TaskContext,
    err: &'a TaskError,
    metrics: &'a TaskMetrics,
    elapsed: Duration,
}

impl Failed<'_> {
    /// A copy that failed on a broken channel (closed by a soft error such
    /// as a deleted exchange, or by a lost connection) asks for a fresh
    /// session: new channels, topology declared again.
    fn out_failed(&self, e: &PublishError) {
        if matches!(e, PublishError::Broker(_)) {
            self.restart.cancel();
        }
    }
}

/// Publishes the task's copy to the next delay queue, then acks the
/// original; if the copy cannot be published, hands the original back.
/// Returns the event that tells what happened, if anything was settled.
async fn retry(f: Failed<'_>) -> Option<TaskEvent> {
    let Failed {
        inner,
        publisher,
        delivery,
        ctx,
        err,
        metrics: m,
        elapsed,
        ..
    } = f;
    let next_attempt = ctx.attempt + 1;
    let Some(rung) = inner
        .topology
        .rung_for(&inner.consumer.retry_delays, next_attempt)
    else {
        // No ladder configured: retrying means dead-lettering.
        return dead_letter(f, DeadReason::AttemptsExhausted).await;
    };
    let now = Utc::now();
    let next_at = now + chrono::Duration::from_std(rung.delay).unwrap_or_default();
    let mut hdrs = failure_headers(inner, delivery, err, now);
    contract::set_int(&mut hdrs, headers::ATTEMPT, i64::from(next_attempt));
    contract::set_str(&mut hdrs, headers::NEXT_ATTEMPT_AT, rfc3339(next_at));
    let props = copy_properties(&delivery.properties, ctx, hdrs);
    match publisher
        .publish_for(Purpose::Retry, "", &rung.queue.name, &delivery.data, props)
        .await
    {
        Ok(()) => {
            ack(delivery).await;
            m.retried(&err.kind);
            m.duration("retried", elapsed.as_secs_f64());
            warn!(
                error = %err.message,
                error_kind = %err.kind,
                elapsed_ms = elapsed.as_millis() as u64,
                next_attempt,
                delay_ms = rung.delay.as_millis() as u64,
                retry_queue = %rung.queue.name,
                "Task failed; it will be retried."
            );
            let mut e = TaskEvent::new(&ctx.id, &ctx.task_type, TaskState::Retrying, ctx.attempt);
            e.error_kind = Some(err.kind.to_string());
            e.error = Some(err.message.clone());
            e.next_attempt_at = Some(next_at);
            Some(e)
        }
        Err(e) => {
            // Not copied: give the original back so it is not lost.
            warn!(error = %e, task_error = %err, "Could not publish the retry copy; handing the task back to the queue.");
            f.out_failed(&e);
            tokio::time::sleep(HAND_BACK_PAUSE).await;
            nack_requeue(delivery).await;
            None
        }
    }
}

/// Publishes the task's copy, with the reason, to the parking lot, then
/// acks the original; if the copy cannot be published, rejects the original
/// so the queue's own dead-letter exchange parks it.
async fn dead_letter(f: Failed<'_>, reason: DeadReason) -> Option<TaskEvent> {
    let Failed {
        inner,
        publisher,
        delivery,
        ctx,
        err,
        metrics: m,
        elapsed,
        ..
    } = f;
    m.dead_lettered(&err.kind, reason.as_str());
    m.duration("dead_lettered", elapsed.as_secs_f64());
    let mut event = TaskEvent::new(
        &ctx.id,
        &ctx.task_type,
        TaskState::DeadLettered,
        ctx.attempt,
    );
    event.error_kind = Some(err.kind.to_string());
    event.error = Some(err.message.clone());
    event.reason = Some(reason.as_str().to_owned());
    let mut hdrs = failure_headers(inner, delivery, err, Utc::now());
    contract::set_int(&mut hdrs, headers::ATTEMPT, i64::from(ctx.attempt));
    contract::set_str(&mut hdrs, headers::DEAD_REASON, reason.as_str());
    let props = copy_properties(&delivery.properties, ctx, hdrs);
    let dead_queue = &inner.topology.dead_queue.name;
    match publisher
        .publish_for(
            Purpose::DeadLetter,
            &inner.topology.dead_exchange,
            &inner.queue,
            &delivery.data,
            props,
        )
        .await
    {
        Ok(()) => {
            ack(delivery).await;
            error!(
                error = %err.message,
                error_kind = %err.kind,
                dead_reason = reason.as_str(),
                elapsed_ms = elapsed.as_millis() as u64,
                dead_queue = %dead_queue,
                "Task dead-lettered."
            );
        }
        Err(e) => {
            // Rejecting would route it through the queue's dead-letter
            // exchange, but if that is what broke (deleted, blocked) the
            // broker drops it. Give it back instead, after a pause so a
            // persistent failure does not spin; the session is restarted
            // on channel errors, which re-declares the topology.
            error!(
                error = %err.message,
                error_kind = %err.kind,
                publish_error = %e,
                dead_queue = %dead_queue,
                "Could not publish the task to the parking lot; handing it back to the queue."
            );
            f.out_failed(&e);
            tokio::time::sleep(HAND_BACK_PAUSE).await;
            nack_requeue(delivery).await;
            return None;
        }
    }
    Some(event)
}

/// How long a task whose copy could not be published waits before it is
/// handed back, so a persistent failure does not turn into a hot loop.
const HAND_BACK_PAUSE: Duration = Duration::from_secs(1);

/// Headers of a failed task's copy: everything it carried (trace context
/// included), plus why and when it failed and who saw it.
fn failure_headers(
    inner: &Inner,
    delivery: &Delivery,
    err: &TaskError,
    now: DateTime<Utc>,
) -> FieldTable {
    let mut hdrs = delivery.properties.headers().clone().unwrap_or_default();
    let existing = Some(&hdrs);
    let first =
        contract::header_str(existing, headers::FIRST_FAILURE_AT).unwrap_or_else(|| rfc3339(now));
    let original_exchange = contract::header_str(existing, headers::ORIGINAL_EXCHANGE)
        .unwrap_or_else(|| delivery.exchange.as_str().to_owned());
    let original_key = contract::header_str(existing, headers::ORIGINAL_ROUTING_KEY)
        .unwrap_or_else(|| delivery.routing_key.as_str().to_owned());
    contract::set_str(&mut hdrs, headers::FIRST_FAILURE_AT, first);
    contract::set_str(&mut hdrs, headers::LAST_FAILURE_AT, rfc3339(now));
    contract::set_str(&mut hdrs, headers::ERROR_KIND, err.kind.as_ref());
    contract::set_str(&mut hdrs, headers::ERROR, truncate(&err.message, 4096));
    contract::set_str(&mut hdrs, headers::WORKER, inner.identity.as_str());
    contract::set_str(&mut hdrs, headers::ORIGINAL_EXCHANGE, original_exchange);
    contract::set_str(&mut hdrs, headers::ORIGINAL_ROUTING_KEY, original_key);
    // The next attempt (or whoever replays the parking lot) continues the
    // trace from this attempt's span.
    trace::inject_span(&tracing::Span::current(), &mut hdrs);
    hdrs
}

/// The properties of a copy: the original's, with the task id and type made
/// explicit, persistence forced, and no `expiration` (the task was already
/// started; a retry must not vanish from its delay queue). `user_id` is
/// dropped because the broker checks it against the publishing user.
fn copy_properties(p: &BasicProperties, ctx: &TaskContext, hdrs: FieldTable) -> BasicProperties {
    let mut out = BasicProperties::default()
        .with_message_id(ctx.id.as_str().into())
        .with_type(ctx.task_type.as_str().into())
        .with_delivery_mode(PERSISTENT)
        .with_headers(hdrs);
    if let Some(v) = p.content_type() {
        out = out.with_content_type(v.clone());
    }
    if let Some(v) = p.content_encoding() {
        out = out.with_content_encoding(v.clone());
    }
    if let Some(v) = p.priority() {
        out = out.with_priority(*v);
    }
    if let Some(v) = p.correlation_id() {
        out = out.with_correlation_id(v.clone());
    }
    if let Some(v) = p.reply_to() {
        out = out.with_reply_to(v.clone());
    }
    if let Some(v) = p.timestamp() {
        out = out.with_timestamp(*v);
    }
    if let Some(v) = p.app_id() {
        out = out.with_app_id(v.clone());
    }
    out
}

async fn ack(delivery: &Delivery) {
    if let Err(e) = delivery.acker.ack(BasicAckOptions::default()).await {
        // The channel is gone; the broker requeues the message and the
        // idempotency store keeps a second run from repeating the work.
        warn!(error = %e, "Could not ack the task; the broker will redeliver it.");
    }
}

async fn nack_requeue(delivery: &Delivery) {
    if let Err(e) = delivery
        .acker
        .nack(BasicNackOptions {
            requeue: true,
            ..Default::default()
        })
        .await
    {
        debug!(error = %e, "Could not nack the task; the broker will redeliver it.");
    }
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_respects_char_boundaries() {
        assert_eq!(truncate("abc", 5), "abc");
        assert_eq!(truncate("ééé", 3), "é...");
    }
}
