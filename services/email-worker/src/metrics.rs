//! The email worker's own metrics, in the process registry next to the
//! runtime's: mail handed to the transport, and SMTP failures by class.

use std::sync::LazyLock;

use prometheus::{IntCounterVec, Opts};

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
