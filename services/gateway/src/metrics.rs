//! The gateway's own metrics, registered in the process registry next to
//! the shared ones (publishes are counted by the shared publisher under
//! `warren_publish_confirms_total{purpose="task"}`).
//!
//! Labels are of low cardinality only: the route pattern
//! (`/v1/tasks/{id}`, never the id), the method and the status class.

use std::sync::LazyLock;

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
};

static METRICS: LazyLock<GatewayMetrics> = LazyLock::new(GatewayMetrics::new);

/// What the gateway records.
pub struct GatewayMetrics {
    pub requests: IntCounterVec,
    pub duration: HistogramVec,
    pub events_applied: IntCounter,
    pub tracked_tasks: IntGauge,
    pub sse_streams: IntGauge,
    /// `redis` store: events the indexer wrote.
    pub indexed_events: IntCounter,
    /// `redis` store: 1 while this gateway holds the indexer lock.
    pub indexer_active: IntGauge,
    /// `redis` store: time of one indexer write (one batch).
    pub indexer_write_seconds: Histogram,
}

/// Request durations: a status lookup takes well under a millisecond, a
/// publish a few, an upload seconds.
const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

impl GatewayMetrics {
    fn new() -> Self {
        let requests = IntCounterVec::new(
            Opts::new(
                "warren_http_requests_total",
                "HTTP requests answered, by route pattern, method and status class (2xx, 4xx, ...).",
            ),
            &["service", "route", "method", "status_class"],
        )
        .unwrap_or_else(|e| unreachable!("the metric is well-formed: {e}"));
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "warren_http_request_duration_seconds",
                "Time from request to response headers, by route pattern and method.",
            )
            .buckets(BUCKETS.to_vec()),
            &["service", "route", "method"],
        )
        .unwrap_or_else(|e| unreachable!("the metric is well-formed: {e}"));
        let events_applied = IntCounter::new(
            "warren_gateway_events_applied_total",
            "Task events read from the events stream and applied to the status view.",
        )
        .unwrap_or_else(|e| unreachable!("the metric is well-formed: {e}"));
        let tracked_tasks = IntGauge::new(
            "warren_gateway_tracked_tasks",
            "Tasks held in the status view (at most events.max_tracked_tasks).",
        )
        .unwrap_or_else(|e| unreachable!("the metric is well-formed: {e}"));
        let sse_streams = IntGauge::new(
            "warren_gateway_sse_streams",
            "Open Server-Sent Events streams of task events.",
        )
        .unwrap_or_else(|e| unreachable!("the metric is well-formed: {e}"));
        let indexed_events = IntCounter::new(
            "warren_gateway_indexed_events_total",
            "Task events the status indexer wrote to the redis status store.",
        )
        .unwrap_or_else(|e| unreachable!("the metric is well-formed: {e}"));
        let indexer_active = IntGauge::new(
            "warren_gateway_indexer_active",
            "1 while this gateway holds the indexer lock and writes the redis status store.",
        )
        .unwrap_or_else(|e| unreachable!("the metric is well-formed: {e}"));
        let indexer_write_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "warren_gateway_indexer_write_seconds",
                "Time of one status indexer write to Redis (one batch of events).",
            )
            .buckets(BUCKETS.to_vec()),
        )
        .unwrap_or_else(|e| unreachable!("the metric is well-formed: {e}"));
        Self {
            indexed_events: warren::metrics::register(indexed_events),
            indexer_active: warren::metrics::register(indexer_active),
            indexer_write_seconds: warren::metrics::register(indexer_write_seconds),
            requests: warren::metrics::register(requests),
            duration: warren::metrics::register(duration),
            events_applied: warren::metrics::register(events_applied),
            tracked_tasks: warren::metrics::register(tracked_tasks),
            sse_streams: warren::metrics::register(sse_streams),
        }
    }
}

/// Registers the gateway's metrics so they show from the first scrape.
pub fn init() {
    LazyLock::force(&METRICS);
}

pub fn get() -> &'static GatewayMetrics {
    &METRICS
}

/// Counts one answered request.
pub fn request(route: &str, method: &str, status: u16, seconds: f64) {
    let class = match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    };
    let service = warren::metrics::service();
    METRICS
        .requests
        .with_label_values(&[service, route, method, class])
        .inc();
    METRICS
        .duration
        .with_label_values(&[service, route, method])
        .observe(seconds);
}
