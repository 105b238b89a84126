//! The gateway: telemetry, settings, build, serve until SIGTERM or ctrl-c.

use anyhow::Context;
use gateway::{Gateway, Settings};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = Settings::load().context("Could not load the settings")?;
    let telemetry = warren::telemetry::init(&settings.telemetry, "gateway", std::io::stdout)
        .context("Could not set up logging and tracing")?;
    warren::metrics::init("gateway");
    gateway::metrics::init();
    let shutdown = warren::shutdown::on_signal();

    let ops_settings = settings.ops.clone();
    let gateway = Gateway::build(settings).context("Could not set up the gateway")?;

    // The ops endpoints outlive the HTTP API's drain, so probes see "not
    // ready" while requests finish and the last scrape sees final counts.
    let ops_stop = CancellationToken::new();
    let ops = warren::ops::serve(&ops_settings, gateway.readiness(), ops_stop.clone())
        .await
        .with_context(|| {
            format!(
                "Could not listen on {} for the ops endpoints",
                ops_settings.addr
            )
        })?;

    let result = gateway.run(shutdown).await;
    ops_stop.cancel();
    let _ = ops.task.await;
    telemetry.shutdown().await;
    result.context("The gateway stopped")
}
