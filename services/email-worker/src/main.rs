//! The email worker: settings, the app (telemetry, metrics, ops, shutdown),
//! the mailer, run until SIGTERM or ctrl-c.

use anyhow::Context;
use email_worker::{Mailer, SendEmail, Settings};
use warren::{App, Worker};

// mimalloc, not the system's malloc: see "The allocator" in
// docs/performance.md.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = Settings::load().context("Could not load the settings")?;
    let app = App::init("email-worker", settings.worker())?;
    email_worker::metrics::init();
    let mailer =
        Mailer::from_settings(&settings.email).context("Could not set up the mail transport")?;
    let worker = Worker::for_task::<SendEmail>()
        .with_state(mailer.clone())
        .handle_with(|ctx, task: SendEmail, mailer| async move { mailer.send(&ctx, task).await });
    let app = app
        .worker(worker)
        .on_stop(async move { mailer.close().await });
    app.run().await.context("The email worker stopped")
}
