//! The email worker's own metrics, in the process registry next to the
//! runtime's: mail handed to the transport, SMTP failures by class, and the
//! SMTP connection pool of each destination host.

use std::sync::LazyLock;

use prometheus::{IntCounterVec, IntGaugeVec, Opts};

static SENT: LazyLock<IntCounterVec> = LazyLock::new(|| {
    warren::metrics::register(
        IntCounterVec::new(
            Opts::new(
                "warren_emails_sent_total",
                "Emails accepted by the SMTP server or written to the outbox.",
            ),
            &["service", "transport"],
        )
        .unwrap_or_else(|e| unreachable!("well-formed metric: {e}")),
    )
});

static SMTP_ERRORS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    warren::metrics::register(
        IntCounterVec::new(
            Opts::new(
                "warren_smtp_errors_total",
                "Failed sends by class: transient (4xx), permanent (5xx), connection, timeout.",
            ),
            &["service", "class"],
        )
        .unwrap_or_else(|e| unreachable!("well-formed metric: {e}")),
    )
});

/// Registers the metrics so they show (at zero) before the first email.
pub fn init() {
    LazyLock::force(&SENT);
    LazyLock::force(&SMTP_ERRORS);
    LazyLock::force(&POOL_OPEN);
    LazyLock::force(&POOL_LIMIT);
    LazyLock::force(&CONNECTIONS_OPENED);
    LazyLock::force(&POOL_SHRINKS);
}

pub(crate) fn sent(transport: &str) {
    SENT.with_label_values(&[warren::metrics::service(), transport])
        .inc();
}

/// Counts a failed send by the error kind the transport reported.
pub(crate) fn send_failed(error_kind: &str) {
    let class = match error_kind {
        "smtp_permanent" => "permanent",
        "smtp_transient" => "transient",
        "smtp_connection" => "connection",
        "timeout" => "timeout",
        _ => return,
    };
    SMTP_ERRORS
        .with_label_values(&[warren::metrics::service(), class])
        .inc();
}

static POOL_OPEN: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    warren::metrics::register(
        IntGaugeVec::new(
            Opts::new(
                "warren_smtp_pool_connections",
                "SMTP connections open now, per destination host.",
            ),
            &["service", "host"],
        )
        .unwrap_or_else(|e| unreachable!("well-formed metric: {e}")),
    )
});

static POOL_LIMIT: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    warren::metrics::register(
        IntGaugeVec::new(
            Opts::new(
                "warren_smtp_pool_limit",
                "Most SMTP connections to the host at once: email.smtp.pool_max_size, lower after a 421.",
            ),
            &["service", "host"],
        )
        .unwrap_or_else(|e| unreachable!("well-formed metric: {e}")),
    )
});

static CONNECTIONS_OPENED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    warren::metrics::register(
        IntCounterVec::new(
            Opts::new(
                "warren_smtp_connections_opened_total",
                "SMTP connections opened (connected, greeted, authenticated), per destination host.",
            ),
            &["service", "host"],
        )
        .unwrap_or_else(|e| unreachable!("well-formed metric: {e}")),
    )
});

static POOL_SHRINKS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    warren::metrics::register(
        IntCounterVec::new(
            Opts::new(
                "warren_smtp_pool_shrinks_total",
                "Times a 421 reply lowered the connection limit of a destination host.",
            ),
            &["service", "host"],
        )
        .unwrap_or_else(|e| unreachable!("well-formed metric: {e}")),
    )
});

/// The metric handles of one destination host's pool (`host:port`: the
/// configured relay, so the label stays low-cardinality).
pub(crate) fn pool(host: &str) -> crate::smtp::PoolMetrics {
    let labels = [warren::metrics::service(), host];
    crate::smtp::PoolMetrics {
        open: POOL_OPEN.with_label_values(&labels),
        limit: POOL_LIMIT.with_label_values(&labels),
        opened: CONNECTIONS_OPENED.with_label_values(&labels),
        shrinks: POOL_SHRINKS.with_label_values(&labels),
    }
}
