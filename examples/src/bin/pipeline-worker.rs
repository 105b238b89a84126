//! The validate → process → save pipeline's worker: one queue
//! (`{ns}.pipeline`) for the three steps and the chord callback
//! `pipeline.report`, saving under `$PIPELINE_DIR`.
//! Publish the chain with `Publisher::publish_chain` (`docs/workflows.md`).

use anyhow::Context;
use warren::prelude::*;
use warren_examples::pipeline::{self, PipelineDir, Validate};

// mimalloc, not the system's malloc: see "The allocator" in
// docs/performance.md.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let app = App::from_env("pipeline-worker")?;
    let dir = std::env::var("PIPELINE_DIR").context("Set PIPELINE_DIR to a writable directory")?;
    app.worker(
        Worker::for_task::<Validate>()
            .with_state(PipelineDir(dir.into()))
            .handle(pipeline::validate)
            .handle_with(pipeline::process)
            .handle_with(pipeline::save)
            .handle_with(pipeline::report),
    )
    .run()
    .await?;
    Ok(())
}
