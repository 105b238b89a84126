//! Remembering which task ids already succeeded, so a redelivery (after a
//! crash between the side effect and the ack, or a duplicate publish) is
//! acked without running the task again.
//!
//! One replica: the in-process [`MemoryStore`]. Several replicas: the shared
//! [`RedisStore`]. Both sit behind [`IdempotencyStore`] and are chosen by
//! settings.
//!
//! The Redis store also counts the deliveries of each attempt that never
//! settled ([`IdempotencyStore::count_delivery`]): a task that kills the
//! worker process (an abort, an out-of-memory kill) is redelivered by a
//! classic queue forever, and this count is what parks it after
//! `broker.delivery_limit` deliveries. The memory store cannot count: its
//! count would die with the process it counts the deaths of.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use secrecy::ExposeSecret;

use crate::settings::{IdempotencyBackend, IdempotencySettings};

/// The idempotency store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Redis failed or is unreachable.
    #[error("idempotency store (redis) failed: {0}")]
    Redis(#[from] redis::RedisError),
}

/// A record of succeeded task ids.
pub trait IdempotencyStore: Send + Sync + 'static {
    /// Whether `key` was recorded as succeeded.
    fn is_done<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<bool, StoreError>>;
    /// Records `key` as succeeded.
    fn mark_done<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Counts one more delivery of the attempt `key` ([`delivery_key`])
    /// and returns the deliveries so far, this one included; `None` when
    /// the store does not count (it forgets with the process).
    fn count_delivery<'a>(
        &'a self,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<u64>, StoreError>> {
        let _ = key;
        Box::pin(async { Ok(None) })
    }

    /// Forgets the count of the attempt `key`: its delivery settled.
    fn settle_delivery<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        let _ = key;
        Box::pin(async { Ok(()) })
    }
}

/// The key of a task: namespaced so environments sharing a Redis never see
/// each other's ids.
pub fn key(namespace: &str, task_type: &str, task_id: &str) -> String {
    format!("{namespace}:done:{task_type}:{task_id}")
}

/// The key of one attempt's delivery count: a retry is a new attempt with a
/// count of its own.
pub fn delivery_key(namespace: &str, task_type: &str, task_id: &str, attempt: u32) -> String {
    format!("{namespace}:deliveries:{task_type}:{task_id}:{attempt}")
}

/// Builds the store the settings ask for; `None` when deduplication is off.
pub async fn from_settings(
    settings: &IdempotencySettings,
) -> Result<Option<Arc<dyn IdempotencyStore>>, StoreError> {
    Ok(match settings.backend {
        IdempotencyBackend::Off => None,
        IdempotencyBackend::Memory => Some(Arc::new(MemoryStore::new(
            settings.memory_capacity,
            settings.ttl,
        ))),
        IdempotencyBackend::Redis => Some(Arc::new(
            RedisStore::connect(settings.redis_url.expose_secret(), settings.ttl).await?,
        )),
    })
}

/// In-process store, bounded: the oldest ids are forgotten first.
///
/// It keeps a 128-bit hash of each key, not the key: about 60 bytes an id
/// instead of about 280 (two copies of a key of some 70 bytes and their
/// allocations). The hash is keyed at random per process; two of the keys
/// a store holds at once (at most `capacity`) share a hash with a
/// probability below 2^-90 at the default capacity.
pub struct MemoryStore {
    inner: Mutex<MemoryInner>,
    capacity: usize,
    ttl: Duration,
    hashers: (RandomState, RandomState),
}

#[derive(Default)]
struct MemoryInner {
    done: HashMap<u128, Instant>,
    order: VecDeque<u128>,
}

impl MemoryStore {
    /// A store of at most `capacity` ids, each kept for `ttl`.
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        Self {
            inner: Mutex::new(MemoryInner::default()),
            capacity: capacity.max(1),
            ttl,
            hashers: (RandomState::new(), RandomState::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryInner> {
        // A panic while holding this lock cannot leave the maps inconsistent
        // in a way that matters (worst case: one id is forgotten).
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn hash(&self, key: &str) -> u128 {
        let (a, b) = &self.hashers;
        (u128::from(a.hash_one(key)) << 64) | u128::from(b.hash_one(key))
    }
}

impl IdempotencyStore for MemoryStore {
    fn is_done<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<bool, StoreError>> {
        let hash = self.hash(key);
        let hit = self
            .lock()
            .done
            .get(&hash)
            .is_some_and(|at| at.elapsed() < self.ttl);
        Box::pin(async move { Ok(hit) })
    }

    fn mark_done<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        let hash = self.hash(key);
        let mut inner = self.lock();
        if inner.done.insert(hash, Instant::now()).is_none() {
            inner.order.push_back(hash);
        }
        while inner.order.len() > self.capacity {
            if let Some(old) = inner.order.pop_front() {
                inner.done.remove(&old);
            }
        }
        Box::pin(async { Ok(()) })
    }
}

/// Shared store in Redis: `SET key 1 EX ttl`.
pub struct RedisStore {
    connection: ConnectionManager,
    ttl_secs: u64,
}

impl RedisStore {
    /// Connects to the Redis at `url`; ids are kept for `ttl`.
    pub async fn connect(url: &str, ttl: Duration) -> Result<Self, StoreError> {
        let client = redis::Client::open(url)?;
        let connection = ConnectionManager::new(client).await?;
        Ok(Self {
            connection,
            ttl_secs: ttl.as_secs().max(1),
        })
    }
}

impl IdempotencyStore for RedisStore {
    fn is_done<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<bool, StoreError>> {
        let mut connection = self.connection.clone();
        Box::pin(async move { Ok(connection.exists(key).await?) })
    }

    fn mark_done<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        let mut connection = self.connection.clone();
        let ttl = self.ttl_secs;
        Box::pin(async move {
            let _: () = connection.set_ex(key, 1u8, ttl).await?;
            Ok(())
        })
    }

    fn count_delivery<'a>(
        &'a self,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<u64>, StoreError>> {
        let mut connection = self.connection.clone();
        let ttl = self.ttl_secs;
        Box::pin(async move {
            // One round trip, atomic: the count and its expiry (a task that
            // is never delivered again leaves no key behind).
            let (count,): (u64,) = redis::pipe()
                .atomic()
                .incr(key, 1u64)
                .expire(key, i64::try_from(ttl).unwrap_or(i64::MAX))
                .ignore()
                .query_async(&mut connection)
                .await?;
            Ok(Some(count))
        })
    }

    fn settle_delivery<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        let mut connection = self.connection.clone();
        Box::pin(async move {
            let _: () = connection.del(key).await?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_store_remembers_and_forgets_the_oldest() {
        let s = MemoryStore::new(2, Duration::from_secs(60));
        assert!(!s.is_done("a").await.unwrap());
        s.mark_done("a").await.unwrap();
        s.mark_done("b").await.unwrap();
        assert!(s.is_done("a").await.unwrap());
        s.mark_done("c").await.unwrap();
        assert!(!s.is_done("a").await.unwrap());
        assert!(s.is_done("b").await.unwrap() && s.is_done("c").await.unwrap());
    }

    #[tokio::test]
    async fn memory_store_entries_expire() {
        let s = MemoryStore::new(10, Duration::from_millis(0));
        s.mark_done("a").await.unwrap();
        assert!(!s.is_done("a").await.unwrap());
    }

    /// Against the Redis on 127.0.0.1:6379 (the test environment runs one).
    #[tokio::test]
    async fn redis_store_is_shared_between_instances() {
        let url = "redis://127.0.0.1:6379/0";
        let a = RedisStore::connect(url, Duration::from_secs(30))
            .await
            .unwrap();
        let b = RedisStore::connect(url, Duration::from_secs(30))
            .await
            .unwrap();
        let k = key(
            &format!("test-{}", uuid::Uuid::new_v4()),
            "email.send",
            "t1",
        );
        assert!(!b.is_done(&k).await.unwrap());
        a.mark_done(&k).await.unwrap();
        assert!(b.is_done(&k).await.unwrap());
        let mut c = a.connection.clone();
        let ttl: i64 = c.ttl(&k).await.unwrap();
        assert!(ttl > 0 && ttl <= 30, "ttl {ttl}");
        let _: () = c.del(&k).await.unwrap();
    }

    /// The delivery count survives the store (and the process) that counted.
    #[tokio::test]
    async fn redis_store_counts_deliveries_until_settled() {
        let url = "redis://127.0.0.1:6379/0";
        let k = delivery_key(
            &format!("test-{}", uuid::Uuid::new_v4()),
            "poison.abort",
            "t1",
            1,
        );
        for expected in 1..=3 {
            let fresh = RedisStore::connect(url, Duration::from_secs(30))
                .await
                .unwrap();
            assert_eq!(fresh.count_delivery(&k).await.unwrap(), Some(expected));
        }
        let s = RedisStore::connect(url, Duration::from_secs(30))
            .await
            .unwrap();
        s.settle_delivery(&k).await.unwrap();
        assert_eq!(s.count_delivery(&k).await.unwrap(), Some(1));
        s.settle_delivery(&k).await.unwrap();
        let memory = MemoryStore::new(10, Duration::from_secs(30));
        assert_eq!(memory.count_delivery(&k).await.unwrap(), None);
    }
}
