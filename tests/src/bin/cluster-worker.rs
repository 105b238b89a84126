//! A worker process for the node-loss test (`tests/tests/cluster.rs`):
//! `cluster.note` counts each run of its handler per task id in a Redis
//! hash (`CLUSTER_RUNS_KEY`), so the test sees every task processed and
//! every handler that ran twice, whichever worker ran it.

use redis::AsyncCommands;
use warren::prelude::*;

/// One task of the flow.
#[derive(serde::Deserialize)]
struct Note {}

impl Task for Note {
    const TYPE: &'static str = "cluster.note";
}

#[tokio::main]
async fn main() -> Result<(), warren::AppError> {
    let key = std::env::var("CLUSTER_RUNS_KEY").expect("CLUSTER_RUNS_KEY names the runs hash");
    let url = std::env::var("WARREN_IDEMPOTENCY__REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379/0".to_owned());
    let client = redis::Client::open(url).expect("a Redis URL");
    let redis = redis::aio::ConnectionManager::new(client)
        .await
        .expect("Redis answers at start-up");
    let worker = Worker::for_task::<Note>().handle(move |ctx: TaskContext, _: Note| {
        let mut redis = redis.clone();
        let key = key.clone();
        async move {
            let _: i64 = redis
                .hincr(&key, &ctx.id, 1)
                .await
                .map_err(|e| TaskError::retry("redis", e.to_string()))?;
            Ok(Outcome::done())
        }
    });
    warren::serve("cluster-worker", worker).await
}
