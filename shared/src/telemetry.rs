//! The one place the tracing subscriber is set up: JSON logs (or pretty ones
//! for a terminal), filtered by `RUST_LOG` or the settings.
//!
//! Generic over the writer so tests can capture or silence the output.

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry};

use crate::settings::{LogFormat, TelemetrySettings};

/// Installs the global subscriber writing to `writer`. Errors if one is
/// already installed.
pub fn init<W>(
    settings: &TelemetrySettings,
    writer: W,
) -> Result<(), tracing_subscriber::util::TryInitError>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    // lapin logs every recoverable hiccup at error level, and ERROR must
    // mean a person has to look; the runtime reports connection trouble
    // itself, once, with context. `RUST_LOG=lapin=debug` brings it back.
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new(&settings.log_level).add_directive("lapin=off".parse().unwrap_or_default())
    });
    let registry = Registry::default().with(filter);
    match settings.log_format {
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_current_span(true)
                    .with_span_list(false)
                    .with_writer(writer),
            )
            .try_init(),
        LogFormat::Pretty => registry
            .with(tracing_subscriber::fmt::layer().with_writer(writer))
            .try_init(),
    }
}
