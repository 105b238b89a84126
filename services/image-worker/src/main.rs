//! The image worker: telemetry, settings, build, run until SIGTERM or ctrl-c.

use std::sync::Arc;

use anyhow::Context;
use image_worker::{Settings, ThumbnailTask, Thumbnailer};
use warren::Worker;
use warren_tasks::image::QUEUE;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings: Settings = warren::settings::load().context("Could not load the settings")?;
    let telemetry = warren::telemetry::init(&settings.telemetry, "image-worker", std::io::stdout)
        .context("Could not set up logging and tracing")?;
    warren::metrics::init("image-worker");
    image_worker::metrics::init();
    let shutdown = warren::shutdown::on_signal();

    let thumbnailer = Thumbnailer::from_settings(&settings.image)
        .context("Could not set up the image store and threads")?;
    tracing::info!(
        store = thumbnailer.store().kind().as_str(),
        location = %thumbnailer.store().location(),
        threads = thumbnailer.threads(),
        "Image pipeline ready."
    );
    let store = warren::idempotency::from_settings(&settings.idempotency)
        .await
        .context("Could not connect to the idempotency store")?;
    let worker = Worker::new(
        "image-worker",
        QUEUE.stem,
        QUEUE.binding_keys,
        settings.broker,
        settings.consumer,
    )
    .with_idempotency(store)
    .handle(move |ctx, task: ThumbnailTask| {
        let thumbnailer = thumbnailer.clone();
        async move { thumbnailer.thumbnail(&ctx, task).await }
    });

    let status = worker.status();
    let result = warren::ops::serve_during(
        &settings.ops,
        Arc::new(move || status.readiness()),
        worker.run(shutdown),
    )
    .await;
    telemetry.shutdown().await;
    result?.context("The image worker stopped")
}
