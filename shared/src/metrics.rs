//! Prometheus metrics of the runtime, in one registry per process that
//! services add their own metrics to.
//!
//! Names follow `warren_<noun>_<unit>_total`; labels are of low cardinality
//! only (`service`, `queue`, `task`, `outcome`, `error_kind`, ...), never
//! ids. The dashboards and alert rules under `deploy/` depend on these
//! names: they are part of Warren's public surface.

use std::sync::{LazyLock, OnceLock};

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

static SERVICE: OnceLock<String> = OnceLock::new();
static REGISTRY: LazyLock<Registry> = LazyLock::new(build_registry);
static RUNTIME: LazyLock<RuntimeMetrics> = LazyLock::new(|| RuntimeMetrics::new(&REGISTRY));

/// Names this process's metrics (`service` label, build info). Call once at
/// start-up, before anything is recorded; later calls are ignored.
pub fn init(service: &str) {
    let _ = SERVICE.set(service.to_owned());
    let info = IntGaugeVec::new(
        Opts::new(
            "warren_build_info",
            "Build of the running service; always 1.",
        ),
        &["service", "version"],
    )
    .and_then(|g| {
        REGISTRY.register(Box::new(g.clone()))?;
        Ok(g)
    });
    if let Ok(info) = info {
        info.with_label_values(&[service, env!("CARGO_PKG_VERSION")])
            .set(1);
    }
}

/// The `service` label of this process.
pub fn service() -> &'static str {
    SERVICE.get().map(String::as_str).unwrap_or("unknown")
}

/// The process's registry, for services registering their own metrics.
pub fn registry() -> &'static Registry {
    &REGISTRY
}

/// The runtime's metrics.
pub fn runtime() -> &'static RuntimeMetrics {
    &RUNTIME
}

/// The text exposition of every metric, for `/metrics`.
pub fn render() -> String {
    let mut buffer = Vec::new();
    let families = REGISTRY.gather();
    if TextEncoder::new().encode(&families, &mut buffer).is_err() {
        return String::new();
    }
    String::from_utf8(buffer).unwrap_or_default()
}

/// Registers a metric in the process registry, returning it. A name
/// registered twice is a programming error caught in tests; in production
/// the metric still works, it is just not exported twice.
pub fn register<M: prometheus::core::Collector + Clone + 'static>(metric: M) -> M {
    if let Err(e) = REGISTRY.register(Box::new(metric.clone())) {
        tracing::debug!(error = %e, "Metric already registered.");
    }
    metric
}

fn build_registry() -> Registry {
    let registry = Registry::new();
    #[cfg(target_os = "linux")]
    {
        let _ = registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ));
    }
    registry
}

/// Task durations: a no-op takes well under a millisecond, an SMTP send tens
/// of milliseconds, a large image seconds.
const DURATION_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];
/// Queue waits: milliseconds on an idle system, minutes in a backlog.
const WAIT_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    300.0, 900.0, 3600.0,
];

/// What the consumer runtime records.
pub struct RuntimeMetrics {
    /// `warren_tasks_received_total`.
    pub received: IntCounterVec,
    /// `warren_tasks_succeeded_total`.
    pub succeeded: IntCounterVec,
    /// `warren_tasks_retried_total`, by error kind.
    pub retried: IntCounterVec,
    /// `warren_tasks_dead_lettered_total`, by error kind and reason.
    pub dead_lettered: IntCounterVec,
    /// `warren_tasks_duplicates_total`: ids that already succeeded.
    pub duplicates: IntCounterVec,
    /// `warren_task_duration_seconds`, by outcome.
    pub duration: HistogramVec,
    /// `warren_task_queue_wait_seconds`: from publish (or due time) to start.
    pub queue_wait: HistogramVec,
    /// `warren_tasks_in_progress`.
    pub in_progress: IntGaugeVec,
    /// `warren_broker_connected`: 1 while connected.
    pub broker_connected: IntGaugeVec,
    /// `warren_broker_reconnects_total`.
    pub broker_reconnects: IntCounterVec,
    /// `warren_publish_confirms_total`, by purpose and result.
    pub publish_confirms: IntCounterVec,
    /// `warren_task_events_dropped_total`: events given up on.
    pub task_events_dropped: IntCounterVec,
    /// `warren_task_events_reemitted_total`: events published again after a lost confirm.
    pub task_events_reemitted: IntCounterVec,
}

impl RuntimeMetrics {
    fn new(registry: &Registry) -> Self {
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).unwrap_or_else(|e| {
                unreachable!("metric {name} is well-formed: {e}");
            });
            let _ = registry.register(Box::new(c.clone()));
            c
        };
        let histogram = |name: &str, help: &str, labels: &[&str], buckets: &[f64]| {
            let h = HistogramVec::new(
                HistogramOpts::new(name, help).buckets(buckets.to_vec()),
                labels,
            )
            .unwrap_or_else(|e| unreachable!("metric {name} is well-formed: {e}"));
            let _ = registry.register(Box::new(h.clone()));
            h
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels)
                .unwrap_or_else(|e| unreachable!("metric {name} is well-formed: {e}"));
            let _ = registry.register(Box::new(g.clone()));
            g
        };
        const TASK: &[&str] = &["service", "queue", "task"];
        Self {
            received: counter(
                "warren_tasks_received_total",
                "Deliveries taken from the work queue.",
                TASK,
            ),
            succeeded: counter(
                "warren_tasks_succeeded_total",
                "Tasks whose handler succeeded (acked).",
                TASK,
            ),
            retried: counter(
                "warren_tasks_retried_total",
                "Failed attempts sent to a delay queue for another try.",
                &["service", "queue", "task", "error_kind"],
            ),
            dead_lettered: counter(
                "warren_tasks_dead_lettered_total",
                "Tasks moved to the parking lot, by error kind and reason (permanent, attempts_exhausted).",
                &["service", "queue", "task", "error_kind", "reason"],
            ),
            duplicates: counter(
                "warren_tasks_duplicates_total",
                "Deliveries of task ids that had already succeeded, acked without running.",
                TASK,
            ),
            duration: histogram(
                "warren_task_duration_seconds",
                "Handler run time, by outcome (succeeded, retried, dead_lettered).",
                &["service", "queue", "task", "outcome"],
                DURATION_BUCKETS,
            ),
            queue_wait: histogram(
                "warren_task_queue_wait_seconds",
                "Time from publish (or from the end of a retry delay) to handler start.",
                TASK,
                WAIT_BUCKETS,
            ),
            in_progress: gauge(
                "warren_tasks_in_progress",
                "Handlers running now.",
                &["service", "queue"],
            ),
            broker_connected: gauge(
                "warren_broker_connected",
                "1 while the connection to the broker is up, 0 otherwise.",
                &["service"],
            ),
            broker_reconnects: counter(
                "warren_broker_reconnects_total",
                "Times the connection to the broker was lost and re-established.",
                &["service"],
            ),
            publish_confirms: counter(
                "warren_publish_confirms_total",
                "Publishes by purpose (task, retry, dead_letter) and broker answer (ack, nack, returned, timeout, error).",
                &["service", "purpose", "result"],
            ),
            task_events_dropped: counter(
                "warren_task_events_dropped_total",
                "Task lifecycle events given up: the buffer was full, or the broker did not confirm them after retries.",
                &["service"],
            ),
            task_events_reemitted: counter(
                "warren_task_events_reemitted_total",
                "Final states (succeeded, dead_lettered) emitted again after their event was given up.",
                &["service"],
            ),
        }
    }

    /// Handles for one queue and task type, so the hot path does no label
    /// lookups beyond this.
    pub fn for_task(&self, queue: &str, task: &str) -> TaskMetrics {
        let labels = [service(), queue, task];
        TaskMetrics {
            service_queue_task: (service().to_owned(), queue.to_owned(), task.to_owned()),
            received: self.received.with_label_values(&labels),
            succeeded: self.succeeded.with_label_values(&labels),
            duplicates: self.duplicates.with_label_values(&labels),
            queue_wait: self.queue_wait.with_label_values(&labels),
            in_progress: self.in_progress.with_label_values(&[service(), queue]),
            succeeded_duration: self.duration.with_label_values(&[
                service(),
                queue,
                task,
                "succeeded",
            ]),
        }
    }
}

/// One task type's handles.
pub struct TaskMetrics {
    service_queue_task: (String, String, String),
    /// Tasks received.
    pub received: IntCounter,
    /// Tasks succeeded.
    pub succeeded: IntCounter,
    /// Duplicates acked unrun.
    pub duplicates: IntCounter,
    /// Seconds tasks waited in the queue.
    pub queue_wait: Histogram,
    /// Tasks running now.
    pub in_progress: IntGauge,
    /// The duration histogram of successes, the hot path's.
    pub succeeded_duration: Histogram,
}

impl TaskMetrics {
    /// Counts a retried attempt that failed with `error_kind`.
    pub fn retried(&self, error_kind: &str) {
        let (s, q, t) = &self.service_queue_task;
        runtime()
            .retried
            .with_label_values(&[s, q, t, error_kind])
            .inc();
    }

    /// Counts a task parked after `error_kind`, for `reason`.
    pub fn dead_lettered(&self, error_kind: &str, reason: &str) {
        let (s, q, t) = &self.service_queue_task;
        runtime()
            .dead_lettered
            .with_label_values(&[s, q, t, error_kind, reason])
            .inc();
    }

    /// Observes an attempt's duration, by its `outcome`.
    pub fn duration(&self, outcome: &str, seconds: f64) {
        let (s, q, t) = &self.service_queue_task;
        runtime()
            .duration
            .with_label_values(&[s, q, t, outcome])
            .observe(seconds);
    }
}

/// Counts a task event that was not published.
pub(crate) fn task_event_dropped() {
    runtime()
        .task_events_dropped
        .with_label_values(&[service()])
        .inc();
}

/// Counts a final state emitted again after its event was given up.
pub(crate) fn task_event_reemitted() {
    runtime()
        .task_events_reemitted
        .with_label_values(&[service()])
        .inc();
}

/// Records a publish's outcome.
pub(crate) fn publish_result(purpose: &str, result: &str) {
    runtime()
        .publish_confirms
        .with_label_values(&[service(), purpose, result])
        .inc();
}

/// Sets the broker connection gauge.
pub fn broker_connected(up: bool) {
    runtime()
        .broker_connected
        .with_label_values(&[service()])
        .set(i64::from(up));
}

/// Counts a reconnect.
pub(crate) fn broker_reconnected() {
    runtime()
        .broker_reconnects
        .with_label_values(&[service()])
        .inc();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_has_runtime_metrics_with_low_cardinality_labels() {
        init("unit-test");
        let m = runtime().for_task("warren.email", "email.send");
        m.received.inc();
        m.retried("smtp_transient");
        m.duration("succeeded", 0.02);
        publish_result("task", "ack");
        broker_connected(true);
        let text = render();
        for needle in [
            "warren_build_info{service=\"unit-test\",version=",
            "warren_tasks_received_total{queue=\"warren.email\",service=\"unit-test\",task=\"email.send\"} 1",
            "warren_tasks_retried_total{error_kind=\"smtp_transient\"",
            "warren_task_duration_seconds_bucket{outcome=\"succeeded\"",
            "warren_publish_confirms_total{purpose=\"task\",result=\"ack\",service=\"unit-test\"} 1",
            "warren_broker_connected{service=\"unit-test\"} 1",
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
    }
}
