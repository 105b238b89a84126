//! The image worker: settings, the app (telemetry, metrics, ops, shutdown),
//! the thumbnailer, run until SIGTERM or ctrl-c.

use anyhow::Context;
use image_worker::{Settings, ThumbnailTask, Thumbnailer};
use warren::{App, Worker};

// mimalloc, not the system's malloc: see "The allocator" in
// docs/performance.md.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = Settings::load().context("Could not load the settings")?;
    let app = App::init("image-worker", settings.worker())?;
    image_worker::metrics::init();
    let thumbnailer = Thumbnailer::from_settings(&settings.image)
        .context("Could not set up the image store and threads")?;
    tracing::info!(
        store = thumbnailer.store().kind().as_str(),
        location = %thumbnailer.store().location(),
        threads = thumbnailer.threads(),
        "Image pipeline ready."
    );
    let worker = Worker::for_task::<ThumbnailTask>()
        .with_state(thumbnailer)
        .handle_with(|ctx, task: ThumbnailTask, t| async move { t.thumbnail(&ctx, task).await });
    app.worker(worker)
        .run()
        .await
        .context("The image worker stopped")
}
