//! The email worker: telemetry, settings, build, run until SIGTERM or ctrl-c.

use std::sync::Arc;

use anyhow::Context;
use email_worker::{Mailer, SendEmail, Settings};
use warren::Worker;
use warren_tasks::email::QUEUE;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings: Settings = warren::settings::load().context("Could not load the settings")?;
    let telemetry = warren::telemetry::init(&settings.telemetry, "email-worker", std::io::stdout)
        .context("Could not set up logging and tracing")?;
    warren::metrics::init("email-worker");
    email_worker::metrics::init();
    let shutdown = warren::shutdown::on_signal();

    let mailer =
        Mailer::from_settings(&settings.email).context("Could not set up the mail transport")?;
    let store = warren::idempotency::from_settings(&settings.idempotency)
        .await
        .context("Could not connect to the idempotency store")?;
    let handler_mailer = mailer.clone();
    let worker = Worker::new(
        "email-worker",
        QUEUE.stem,
        QUEUE.binding_keys,
        settings.broker,
        settings.consumer,
    )
    .with_idempotency(store)
    .handle(move |ctx, task: SendEmail| {
        let mailer = handler_mailer.clone();
        async move { mailer.send(&ctx, task).await }
    });

    let status = worker.status();
    let result =
        warren::ops::serve_during(&settings.ops, Arc::new(move || status.readiness()), async {
            let result = worker.run(shutdown).await;
            mailer.close().await;
            result
        })
        .await;
    telemetry.shutdown().await;
    result?.context("The email worker stopped")
}
