//! The image worker's own metrics, in the process registry next to the
//! runtime's: source pixels decoded and output bytes written.

use std::sync::LazyLock;

use prometheus::{IntCounterVec, Opts};

static PIXELS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    warren::metrics::register(
        IntCounterVec::new(
            Opts::new(
                "warren_image_pixels_processed_total",
                "Source pixels decoded (width x height as stored).",
            ),
            &["service"],
        )
        .unwrap_or_else(|e| unreachable!("well-formed metric: {e}")),
    )
});

static BYTES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    warren::metrics::register(
        IntCounterVec::new(
            Opts::new(
                "warren_image_bytes_written_total",
                "Output bytes written to the store, by format.",
            ),
            &["service", "format"],
        )
        .unwrap_or_else(|e| unreachable!("well-formed metric: {e}")),
    )
});

/// Registers the metrics so they show before the first image.
pub fn init() {
    LazyLock::force(&PIXELS);
    LazyLock::force(&BYTES);
}

pub(crate) fn pixels(width: u32, height: u32) {
    PIXELS
        .with_label_values(&[warren::metrics::service()])
        .inc_by(u64::from(width) * u64::from(height));
}

pub(crate) fn bytes_written(format: &str, bytes: usize) {
    BYTES
        .with_label_values(&[warren::metrics::service(), format])
        .inc_by(bytes as u64);
}
