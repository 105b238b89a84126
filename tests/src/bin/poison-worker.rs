//! A worker process with a poison task, for the serial poison tests
//! (`tests/tests/poison.rs`): `poison.abort` aborts the whole process
//! (what an out-of-memory kill or a crash in a codec does: no panic to
//! catch, no ack), `poison.flaky` fails its first attempt and succeeds on
//! the retry (the retry ladder on the namespace's queue type), and
//! `poison.ok` succeeds.

use warren::prelude::*;

/// Takes the worker process down.
#[derive(serde::Deserialize)]
struct Abort {}

impl Task for Abort {
    const TYPE: &'static str = "poison.abort";
}

/// Fails once, transiently.
#[derive(serde::Deserialize)]
struct Flaky {}

impl Task for Flaky {
    const TYPE: &'static str = "poison.flaky";
}

/// Succeeds.
#[derive(serde::Deserialize)]
struct Fine {}

impl Task for Fine {
    const TYPE: &'static str = "poison.ok";
}

/// Aborts: the process dies with the task unacked.
async fn abort(_: TaskContext, _: Abort) -> Result<Outcome, TaskError> {
    std::process::abort()
}

#[tokio::main]
async fn main() -> Result<(), warren::AppError> {
    let worker = Worker::for_task::<Abort>()
        .handle(abort)
        .handle(|ctx: TaskContext, _: Flaky| async move {
            if ctx.attempt == 1 {
                Err(TaskError::retry("flaky", "the first attempt fails"))
            } else {
                Ok(Outcome::done())
            }
        })
        .handle(|_, _: Fine| async { Ok(Outcome::done()) });
    warren::serve("poison-worker", worker).await
}
