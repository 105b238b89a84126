//! The one place the tracing subscriber is set up: JSON logs (or pretty ones
//! for a terminal), filtered by `RUST_LOG` or the settings, and OpenTelemetry
//! traces.
//!
//! Traces are exported over OTLP/HTTP when the standard variables ask for it
//! (`OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`;
//! `OTEL_EXPORTER_OTLP_PROTOCOL` picks `http/protobuf` or `http/json`;
//! `OTEL_SERVICE_NAME` names the service). Without them a task's span still
//! gets trace and span ids, so log lines carry `trace_id` and `span_id` and
//! follow-up tasks continue a producer's trace, but no OpenTelemetry span
//! is built (see `trace`).
//!
//! Generic over the writer so tests can capture or silence the output.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry};

use crate::settings::{LogFormat, TelemetrySettings};

/// Telemetry could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// A global subscriber is already installed.
    #[error("a global tracing subscriber is already installed: {0}")]
    AlreadyInstalled(#[from] tracing_subscriber::util::TryInitError),
    /// The OTLP exporter could not be built.
    #[error("could not set up the OTLP trace exporter: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
}

/// Keeps the tracer provider; [`Telemetry::shutdown`] flushes the spans not
/// yet exported. Dropping it without shutting down may lose the last spans.
pub struct Telemetry {
    provider: SdkTracerProvider,
    exporting: bool,
}

impl Telemetry {
    /// Whether spans are exported (OTLP configured).
    pub fn exporting(&self) -> bool {
        self.exporting
    }

    /// Flushes and stops the exporter. The SDK's shutdown blocks on the
    /// export thread, and blocking an async worker thread on it can
    /// deadlock, so it runs on the blocking pool.
    pub async fn shutdown(self) {
        let provider = self.provider;
        let _ = tokio::task::spawn_blocking(move || {
            if let Err(e) = provider.shutdown() {
                eprintln!("Could not flush the last traces: {e}");
            }
        })
        .await;
    }
}

/// Installs the global subscriber writing logs to `writer`, with
/// OpenTelemetry spans. `service` names the service unless
/// `OTEL_SERVICE_NAME` does.
pub fn init<W>(
    settings: &TelemetrySettings,
    service: &str,
    writer: W,
) -> Result<Telemetry, TelemetryError>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    install_crypto_provider();
    let exporting = otlp_configured();
    crate::trace::set_exporting(exporting);
    let mut resource = Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(service.to_owned());
    }
    let mut builder = SdkTracerProvider::builder().with_resource(resource.build());
    if exporting {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .build()?;
        builder = builder.with_batch_exporter(exporter);
    }
    let provider = builder.build();
    let tracer = provider.tracer("warren");
    opentelemetry::global::set_tracer_provider(provider.clone());

    // lapin logs every recoverable hiccup at error level, and ERROR must
    // mean a person has to look; the runtime reports connection trouble
    // itself, once, with context. `RUST_LOG=lapin=debug` brings it back.
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new(&settings.log_level).add_directive("lapin=off".parse().unwrap_or_default())
    });
    // Without an exporter no OpenTelemetry span is built: a task's span
    // carries a trace context of its own (`trace::start`) for the
    // `trace_id` of its log lines and the `traceparent` of its follow-up
    // tasks, and nothing else an OpenTelemetry span would hold (attributes,
    // log events, source location, thread, busy and idle times) is made
    // for every task only to be dropped.
    let otel = exporting.then(|| tracing_opentelemetry::layer().with_tracer(tracer));
    let registry = Registry::default().with(filter).with(otel);
    match settings.log_format {
        LogFormat::Json => registry
            .with(
                json_subscriber::fmt::layer()
                    .with_current_span(true)
                    .with_span_list(false)
                    .with_writer(writer),
            )
            .try_init()?,
        LogFormat::Pretty => registry
            .with(tracing_subscriber::fmt::layer().with_writer(writer))
            .try_init()?,
    }
    if exporting {
        tracing::info!(service, "Exporting traces over OTLP.");
    }
    Ok(Telemetry {
        provider,
        exporting,
    })
}

/// Makes ring the process's rustls crypto provider. lapin and lettre name
/// theirs explicitly, but HTTP clients built on reqwest (the OTLP exporter,
/// object stores) use the process default, and the workspace carries no
/// second provider (two would make rustls refuse to pick one). Idempotent.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn otlp_configured() -> bool {
    [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|v| std::env::var(v).is_ok_and(|s| !s.trim().is_empty()))
        && !std::env::var("OTEL_TRACES_EXPORTER").is_ok_and(|v| v == "none")
}
