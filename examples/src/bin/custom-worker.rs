//! A custom worker with two task types, each on its own queue
//! (`{ns}.files`, `{ns}.digest`): `files.cleanup` under `$CLEANUP_ROOT`,
//! and `digest.weekly`, which publishes `email.send` follow-ups.

use anyhow::Context;
use warren::prelude::*;
use warren_examples::*;

// mimalloc, not the system's malloc: see "The allocator" in
// docs/performance.md.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let root = std::env::var("CLEANUP_ROOT").context("Set CLEANUP_ROOT")?;
    let root = CleanupRoot::new(&root).with_context(|| format!("Cannot open {root}"))?;
    let cleanup = Worker::for_task::<CleanupOldFiles>().with_state(root);
    App::from_env("custom-worker")?
        .worker(cleanup.handle_with(cleanup_old_files))
        .worker(Worker::for_task::<SendWeeklyDigest>().handle(send_weekly_digest))
        .run()
        .await?;
    Ok(())
}
