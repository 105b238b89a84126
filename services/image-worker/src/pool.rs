//! The image threads: a rayon pool, one thread per core by default, that
//! runs decode, resize and encode off the async executor.
//!
//! Tokio's worker threads never decode a pixel, so the consumer loop, acks
//! and the broker heartbeats keep running however large the image. The
//! pool's size also bounds how many images are decoded (held in memory) at
//! once, whatever `consumer.concurrency` says: extra tasks wait in the
//! pool's queue holding only their source bytes.

use std::panic::AssertUnwindSafe;

use warren::TaskError;

use crate::error::{self, CANCELLED, PROCESSING_FAILED};

/// Runs CPU-bound jobs on dedicated threads. Cheap to share behind an `Arc`.
pub struct CpuPool {
    pool: rayon::ThreadPool,
}

impl CpuPool {
    /// A pool of `threads` threads; 0 means one per core.
    pub fn new(threads: usize) -> Result<Self, rayon::ThreadPoolBuildError> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("image-{i}"))
            .build()?;
        Ok(Self { pool })
    }

    /// Threads in the pool.
    pub fn threads(&self) -> usize {
        self.pool.current_num_threads()
    }

    /// Runs `job` on the pool and waits for it without blocking the
    /// executor. A panic in `job` becomes a permanent `processing_failed`
    /// error: the same bytes would panic again. If the caller stops waiting
    /// (the task timed out) before the job starts, the job is skipped.
    pub async fn run<T, F>(&self, job: F) -> Result<T, TaskError>
    where
        T: Send + 'static,
        F: FnOnce() -> Result<T, TaskError> + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.pool.spawn(move || {
            if tx.is_closed() {
                return;
            }
            let result = std::panic::catch_unwind(AssertUnwindSafe(job)).unwrap_or_else(|panic| {
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "non-string panic payload".to_owned());
                Err(error::permanent(
                    PROCESSING_FAILED,
                    format!("the image pipeline panicked on this input: {message}"),
                ))
            });
            // The receiver is gone if the task timed out meanwhile.
            let _ = tx.send(result);
        });
        rx.await.unwrap_or_else(|_| {
            Err(error::retry(
                CANCELLED,
                "the image threads stopped before the job finished",
            ))
        })
    }
}

impl std::fmt::Debug for CpuPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CpuPool")
            .field("threads", &self.threads())
            .finish()
    }
}

#[cfg(test)]
// A failing unwrap is how a test reports failure.
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn jobs_run_off_the_executor_and_panics_become_permanent_errors() {
        let pool = CpuPool::new(1).unwrap();
        assert_eq!(pool.threads(), 1);
        let name = pool
            .run(|| Ok(std::thread::current().name().map(str::to_owned)))
            .await
            .unwrap();
        assert_eq!(name.as_deref(), Some("image-0"));
        let e = pool
            .run(|| -> Result<(), TaskError> { panic!("boom") })
            .await
            .unwrap_err();
        assert!(e.is_permanent());
        assert_eq!(e.kind, PROCESSING_FAILED);
        assert!(e.message.contains("boom"), "{}", e.message);
        // The pool survives a panic.
        assert_eq!(pool.run(|| Ok(7)).await.unwrap(), 7);
    }
}
