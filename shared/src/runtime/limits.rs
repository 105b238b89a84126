//! Per-task-type limits, applied before a handler runs: at most
//! `concurrency` at once, at most `rate_limit` starts per period (in this
//! replica with governor, or across replicas with a GCRA in Redis), and the
//! soft time limit's cancellation.
//!
//! A task held back here waits unacked, as a prefetched task does; it is
//! neither acked early nor counted as failed. Types on other queues (other
//! workers of the same process) have permits of their own and never wait
//! behind it.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use redis::aio::ConnectionManager;
use secrecy::ExposeSecret;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::settings::{ConsumerSettings, RateLimitBackend};
use crate::{RateLimit, TaskOptions};
use warren_core::BoxFuture;

/// The gates of every task type that declared a limit.
#[derive(Default)]
pub(super) struct Gates {
    by_type: HashMap<&'static str, Gate>,
}

/// One task type's limits.
struct Gate {
    concurrency: Option<Arc<Semaphore>>,
    rate: Option<Rate>,
}

enum Rate {
    Local(DefaultDirectRateLimiter),
    Global(RedisGcra),
}

/// A pass through a gate: holds the type's concurrency permit until the
/// attempt settles.
pub(super) struct Pass {
    _permit: Option<OwnedSemaphorePermit>,
}

impl Gates {
    /// The gates of `types`, their rate limits kept where `consumer` says.
    pub(super) async fn new(
        types: impl Iterator<Item = (&'static str, TaskOptions)>,
        namespace: &str,
        consumer: &ConsumerSettings,
    ) -> Result<Self, redis::RedisError> {
        let mut by_type = HashMap::new();
        let mut redis: Option<ConnectionManager> = None;
        for (task_type, options) in types {
            let concurrency = options
                .concurrency
                .map(|n| Arc::new(Semaphore::new(n.max(1))));
            let rate = match (options.rate_limit, consumer.rate_limit_backend) {
                (None, _) => None,
                (Some(limit), RateLimitBackend::Memory) => Some(Rate::Local(local(limit))),
                (Some(limit), RateLimitBackend::Redis) => {
                    let connection = match &redis {
                        Some(c) => c.clone(),
                        None => {
                            let client =
                                redis::Client::open(consumer.rate_limit_redis_url.expose_secret())?;
                            let c = ConnectionManager::new(client).await?;
                            redis = Some(c.clone());
                            c
                        }
                    };
                    Some(Rate::Global(RedisGcra {
                        connection,
                        key: format!("{namespace}:rate:{task_type}"),
                        interval: limit.interval(),
                    }))
                }
            };
            if concurrency.is_some() || rate.is_some() {
                by_type.insert(task_type, Gate { concurrency, rate });
            }
        }
        Ok(Self { by_type })
    }

    /// Waits until a task of `task_type` may start; `None` when `stop` was
    /// cancelled first (the task is then handed back, not run).
    pub(super) async fn enter(&self, task_type: &str, stop: &CancellationToken) -> Option<Pass> {
        let Some(gate) = self.by_type.get(task_type) else {
            return Some(Pass { _permit: None });
        };
        let wait = async {
            let permit = match &gate.concurrency {
                Some(s) => s.clone().acquire_owned().await.ok(),
                None => None,
            };
            match &gate.rate {
                Some(Rate::Local(limiter)) => limiter.until_ready().await,
                Some(Rate::Global(gcra)) => gcra.until_ready(stop).await,
                None => {}
            }
            Pass { _permit: permit }
        };
        tokio::select! {
            biased;
            _ = stop.cancelled() => None,
            pass = wait => Some(pass),
        }
    }
}

/// A per-replica limiter: one start every `period / count`, no burst.
fn local(limit: RateLimit) -> DefaultDirectRateLimiter {
    let interval = limit.interval().max(Duration::from_nanos(1));
    let quota = Quota::with_period(interval)
        .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
        .allow_burst(NonZeroU32::MIN);
    RateLimiter::direct(quota)
}

/// GCRA in Redis, shared by every replica: the key holds the theoretical
/// arrival time (TAT) in microseconds of Redis' clock; a start is allowed
/// when the TAT is at most one interval ahead, and moves it one interval
/// on. That tolerance lets a start that came late (a waiter woke after its
/// slot) be made up by the next one, so lateness does not add up and the
/// rate holds over any window, give or take one start. The script answers
/// how long to wait otherwise.
struct RedisGcra {
    connection: ConnectionManager,
    key: String,
    interval: Duration,
}

const GCRA: &str = r"
local now = redis.call('TIME')
local now_us = tonumber(now[1]) * 1000000 + tonumber(now[2])
local interval = tonumber(ARGV[1])
local tat = tonumber(redis.call('GET', KEYS[1]) or now_us)
if tat < now_us then tat = now_us end
if tat - now_us > interval then return tat - now_us - interval end
redis.call('SET', KEYS[1], tat + interval, 'PX', math.ceil((tat + interval - now_us) / 1000) + 1000)
return 0
";

impl RedisGcra {
    async fn until_ready(&self, stop: &CancellationToken) {
        let interval_us = u64::try_from(self.interval.as_micros()).unwrap_or(u64::MAX);
        loop {
            let mut connection = self.connection.clone();
            // EVAL rather than EVALSHA: one short script, no cache to miss.
            let answer: Result<u64, _> = redis::cmd("EVAL")
                .arg(GCRA)
                .arg(1)
                .arg(&self.key)
                .arg(interval_us)
                .query_async(&mut connection)
                .await;
            let wait = match answer {
                Ok(0) => return,
                Ok(us) => Duration::from_micros(us),
                Err(e) => {
                    warn!(error = %e, "The rate limit store is unreachable; waiting before asking again.");
                    Duration::from_secs(1)
                }
            };
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}

/// The soft time limit: cancels `token` after `limit`, unless the returned
/// guard is dropped first.
pub(super) fn soft_limit(limit: Option<Duration>, token: &CancellationToken) -> SoftLimit {
    let timer = limit.map(|limit| {
        let token = token.clone();
        tokio::spawn(async move {
            tokio::time::sleep(limit).await;
            token.cancel();
        })
    });
    SoftLimit { timer }
}

/// Stops the soft limit's timer when the attempt ends.
pub(super) struct SoftLimit {
    timer: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for SoftLimit {
    fn drop(&mut self) {
        if let Some(timer) = &self.timer {
            timer.abort();
        }
    }
}

/// The future a [`crate::TaskContext::cancelled`] returns.
pub(super) fn cancelled(token: &CancellationToken) -> BoxFuture<()> {
    Box::pin(token.clone().cancelled_owned())
}
