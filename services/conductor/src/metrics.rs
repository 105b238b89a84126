//! The conductor's metrics, in the process registry: fires per schedule,
//! how late they were, whether this replica leads, and takeovers.

use std::sync::LazyLock;

use prometheus::{HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts};

static FIRES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    warren::metrics::register(
        IntCounterVec::new(
            Opts::new(
                "warren_conductor_fires_total",
                "Fires committed to the broker (task and scheduled event), by schedule.",
            ),
            &["schedule"],
        )
        .unwrap_or_else(|e| unreachable!("well-formed metric: {e}")),
    )
});

static LAG: LazyLock<HistogramVec> = LazyLock::new(|| {
    warren::metrics::register(
        HistogramVec::new(
            HistogramOpts::new(
                "warren_conductor_fire_lag_seconds",
                "How long after its scheduled time a fire was committed.",
            )
            .buckets(vec![
                0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
            ]),
            &["schedule"],
        )
        .unwrap_or_else(|e| unreachable!("well-formed metric: {e}")),
    )
});

static LEADER: LazyLock<IntGauge> = LazyLock::new(|| {
    warren::metrics::register(
        IntGauge::new(
            "warren_conductor_leader",
            "1 while this replica holds the leader lock.",
        )
        .unwrap_or_else(|e| unreachable!("well-formed metric: {e}")),
    )
});

static TAKEOVERS: LazyLock<IntCounter> = LazyLock::new(|| {
    warren::metrics::register(
        IntCounter::new(
            "warren_conductor_takeovers_total",
            "Times this replica took the leader lock.",
        )
        .unwrap_or_else(|e| unreachable!("well-formed metric: {e}")),
    )
});

/// Registers the metrics so they show (at zero) from the start.
pub fn init(schedules: &[&str]) {
    LazyLock::force(&LEADER);
    LazyLock::force(&TAKEOVERS);
    for s in schedules {
        FIRES.with_label_values(&[s]);
        LAG.with_label_values(&[s]);
    }
}

pub fn fired(schedule: &str, lag_seconds: f64) {
    FIRES.with_label_values(&[schedule]).inc();
    LAG.with_label_values(&[schedule])
        .observe(lag_seconds.max(0.0));
}

pub fn leader(is: bool) {
    LEADER.set(i64::from(is));
}

pub fn took_over() {
    TAKEOVERS.inc();
}
