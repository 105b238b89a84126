//! The one indexer of the `redis` status store: reads the events stream
//! and writes each task's record, committing the stream offset it applied
//! in the same Redis script, so a restart resumes after it instead of
//! replaying the retention.
//!
//! It runs inside the gateways (`status.indexer = true`), one at a time:
//! the one that holds the broker-held lock, the exclusive queue
//! `{ns}.events.indexer`, indexes; the others try to take the lock every
//! `status.indexer_retry` (1 s). RabbitMQ deletes an exclusive queue as
//! soon as its connection goes, a `kill -9` of the holder included (the
//! kernel closes the socket), so a standby takes over within about a
//! second; a holder cut off from the broker less cleanly is cut off after
//! its heartbeat timeout. A former holder still writing when its successor
//! has begun is refused by the store (the committed offset is no longer
//! the one it wrote) and steps down.

use std::time::{Duration, Instant};

use futures::StreamExt;
use lapin::options::QueueDeclareOptions;
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::FieldTable;
use tokio_util::sync::CancellationToken;
use warren::Names;
use warren::broker::{Backoff, BackoffReset, ConnectError, connect_session, reconnect_loop};
use warren::events::{self, StreamStart};
use warren::settings::BrokerSettings;

use crate::metrics;
use warren::events::{RedisStatusStore, StatusStoreError as StoreError};

/// How long the indexer gathers events for one write after the first.
const BATCH_WINDOW: Duration = Duration::from_millis(5);

/// How often index entries past the retention are removed.
const TRIM_EVERY: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum IndexerError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("{0}")]
    Broker(#[from] lapin::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the broker ended the events stream consumer (was the stream deleted?)")]
    StreamEnded,
}

/// What the indexer needs.
pub struct Indexer {
    pub broker: BrokerSettings,
    pub names: Names,
    pub identity: String,
    pub store: RedisStatusStore,
    pub batch: usize,
    pub retry: Duration,
}

impl Indexer {
    /// Stands by for the lock, indexes while holding it, and starts over
    /// after any failure, until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let backoff = Backoff::new(self.retry, self.broker.reconnect_max_delay.max(self.retry));
        reconnect_loop(
            backoff,
            &shutdown,
            "The status indexer stopped; starting over.",
            |up| async {
                let result = self.session(&shutdown, up).await;
                metrics::get().indexer_active.set(0);
                result
            },
        )
        .await;
    }

    async fn session(
        &self,
        shutdown: &CancellationToken,
        backoff: BackoffReset,
    ) -> Result<(), IndexerError> {
        let name = format!("{} indexer", self.identity);
        let connection = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            c = connect_session(&self.broker, &name) => c?,
        };
        let result = self.connected(&connection, shutdown, &backoff).await;
        let _ = connection.close(200, "indexer stopping".into()).await;
        result
    }

    async fn connected(
        &self,
        connection: &lapin::Connection,
        shutdown: &CancellationToken,
        backoff: &BackoffReset,
    ) -> Result<(), IndexerError> {
        if !self.take_lock(connection, shutdown).await? {
            return Ok(());
        }
        metrics::get().indexer_active.set(1);
        let mut committed = self.store.committed_offset().await?;
        let start = committed.map_or(StreamStart::First, StreamStart::After);
        tracing::info!(
            lock = %self.names.indexer_lock(),
            committed = ?committed,
            "Holding the indexer lock; indexing the task events."
        );
        let stream = events::follow_from(connection, &self.names, start).await?;
        futures::pin_mut!(stream);
        backoff.reset();
        let mut trim = tokio::time::interval(TRIM_EVERY);
        trim.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let max = self.batch.max(1);
        let mut batch = Vec::with_capacity(max);
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Ok(()),
                _ = trim.tick() => self.store.trim().await?,
                next = stream.next() => {
                    match next {
                        Some(Ok(e)) => batch.push(e),
                        Some(Err(e)) => return Err(e.into()),
                        None => return Err(IndexerError::StreamEnded),
                    }
                    // What arrives within a few milliseconds goes in the
                    // same write: far fewer round trips under load, for a
                    // status at most that much later.
                    let gather = tokio::time::Instant::now() + BATCH_WINDOW;
                    while batch.len() < max {
                        match tokio::time::timeout_at(gather, stream.next()).await {
                            Ok(Some(Ok(e))) => batch.push(e),
                            Ok(Some(Err(e))) => return Err(e.into()),
                            Ok(None) => return Err(IndexerError::StreamEnded),
                            Err(_) => break,
                        }
                    }
                    let n = batch.len();
                    let started = Instant::now();
                    committed = self.store.apply(committed, std::mem::take(&mut batch)).await?;
                    let m = metrics::get();
                    m.indexed_events.inc_by(n as u64);
                    m.indexer_write_seconds.observe(started.elapsed().as_secs_f64());
                }
            }
        }
    }

    /// Declares the lock queue until this connection holds it; `false`
    /// when shutdown came first.
    async fn take_lock(
        &self,
        connection: &lapin::Connection,
        shutdown: &CancellationToken,
    ) -> Result<bool, IndexerError> {
        let mut waiting = false;
        loop {
            // A refused declare closes its channel: a new one each time.
            let channel = connection.create_channel().await?;
            let declared = channel
                .queue_declare(
                    self.names.indexer_lock().into(),
                    QueueDeclareOptions {
                        exclusive: true,
                        auto_delete: true,
                        ..QueueDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await;
            match declared {
                Ok(_) => return Ok(true),
                Err(e) if is_resource_locked(&e) => {
                    if !waiting {
                        tracing::info!(
                            lock = %self.names.indexer_lock(),
                            "Another gateway holds the indexer lock; standing by."
                        );
                        waiting = true;
                    }
                }
                Err(e) => return Err(e.into()),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(false),
                _ = tokio::time::sleep(self.retry) => {}
            }
        }
    }
}

fn is_resource_locked(e: &lapin::Error) -> bool {
    matches!(
        e.kind(),
        lapin::ErrorKind::ProtocolError(amqp)
            if matches!(amqp.kind(), AMQPErrorKind::Soft(AMQPSoftError::RESOURCELOCKED))
    )
}
