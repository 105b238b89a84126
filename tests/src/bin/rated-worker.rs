//! A worker process with one rate-limited task type, `rated.task` (20
//! starts a second), for the behaviour test of the global rate limit: two
//! of these processes share the limit through Redis when started with
//! `WARREN_CONSUMER__RATE_LIMIT_BACKEND=redis`.

use warren::prelude::*;

/// 20 starts a second, across every replica sharing the limit.
#[derive(serde::Deserialize)]
struct Rated {}

impl Task for Rated {
    const TYPE: &'static str = "rated.task";
    const OPTIONS: TaskOptions = TaskOptions::new().rate_limit(RateLimit::per_second(20));
}

#[tokio::main]
async fn main() -> Result<(), warren::AppError> {
    let worker = Worker::for_task::<Rated>().handle(|_, _: Rated| async { Ok(Outcome::done()) });
    warren::serve("rated-worker", worker).await
}
