//! The gateway: telemetry, settings, build, serve until SIGTERM or ctrl-c.

use anyhow::Context;
use gateway::{Gateway, Settings};

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

    // The ops endpoints outlive the HTTP API's drain.
    let readiness = gateway.readiness();
    let result = warren::ops::serve_during(&ops_settings, readiness, gateway.run(shutdown)).await;
    telemetry.shutdown().await;
    result?.context("The gateway stopped")
}
