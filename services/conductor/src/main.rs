//! The conductor: telemetry, settings, schedules checked, lead or stand by
//! until SIGTERM or ctrl-c.

use std::sync::Arc;

use anyhow::Context;
use conductor::{Conductor, Settings};

// mimalloc, not the system's malloc: see "The allocator" in
// docs/performance.md.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = Settings::load().context("Could not load the settings")?;
    let telemetry = warren::telemetry::init(&settings.telemetry, "conductor", std::io::stdout)
        .context("Could not set up logging and tracing")?;
    warren::metrics::init("conductor");
    let ops = settings.ops.clone();
    let conductor = Conductor::build(settings).context("A schedule is invalid")?;
    let names: Vec<&str> = conductor.schedules().iter().map(|s| s.name()).collect();
    conductor::metrics::init(&names);
    let shutdown = warren::shutdown::on_signal();

    let readiness = Arc::new(conductor.readiness());
    let listener = tokio::net::TcpListener::bind(&ops.addr)
        .await
        .with_context(|| format!("Could not listen on {} for the ops endpoints", ops.addr))?;
    let app = warren::ops::router(readiness).merge(conductor::state::router(conductor.shared()));
    tracing::info!(addr = %listener.local_addr()?, "Serving /metrics, /healthz, /readyz and /v1/schedules.");
    let stop = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn({
        let stop = stop.clone();
        async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await
        }
    });
    conductor.run(shutdown).await;
    stop.cancel();
    let _ = server.await;
    telemetry.shutdown().await;
    Ok(())
}
