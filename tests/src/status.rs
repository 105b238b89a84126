//! The `redis` status store under test: a namespace and a Redis key prefix
//! of the test's own, gateway processes on `status.store = "redis"`, task
//! events published to the namespace's events exchange, and the reference
//! each task's record must equal: the stream read back and folded by the
//! store's own rules ([`TaskRecord::apply`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use lapin::Connection;
use warren::contract::Names;
use warren::events::{
    self, EventPublisher, RedisOptions, RedisStatusStore, StreamStart, TaskEvent, TaskRecord,
    TaskState,
};

use crate::broker::{TestBroker, cleanup_namespace_stems};
use crate::worker::{WorkerProcess, binary, gateway_env, with};

/// The Redis the tests use.
pub const REDIS_URL: &str = "redis://127.0.0.1:6379/0";
/// Events kept per task by the store (the gateway's default).
pub const MAX_EVENTS: usize = 16;

/// One test's namespace, key prefix, gateways and event publisher.
pub struct StatusWorld {
    pub broker: TestBroker,
    /// The store's key prefix, `test:{namespace}:status:`.
    pub prefix: String,
    /// The store, as the gateways see it.
    pub store: RedisStatusStore,
    pub retention: Duration,
    connection: Arc<Connection>,
    publisher: EventPublisher,
    store_root: tempfile::TempDir,
    pub processes: Vec<WorkerProcess>,
    published: usize,
}

impl StatusWorld {
    /// A fresh namespace whose events stream keeps events for `retention`
    /// (the store's records live as long).
    pub async fn new(retention: Duration) -> anyhow::Result<Self> {
        binary("gateway", "gateway")?;
        let broker = TestBroker::new().await?;
        let names = broker.names.clone();
        let prefix = format!("test:{}:status:", broker.namespace());
        let store = RedisStatusStore::new(
            REDIS_URL,
            RedisOptions {
                prefix: prefix.clone(),
                retention,
                max_index_tasks: 1_000_000,
                max_events_per_task: MAX_EVENTS,
                max_result_bytes: 4096,
            },
        )?;
        store
            .ping()
            .await
            .context("Redis must run on 127.0.0.1:6379")?;
        let connection = Arc::new(crate::broker::connect(crate::broker::AMQP_URL).await?);
        // The stream exists before any event is published, so it keeps
        // them all.
        events::declare_stream(&connection, &names, retention).await?;
        let publisher = EventPublisher::on(&connection, &names).await?;
        Ok(Self {
            broker,
            prefix,
            store,
            retention,
            connection,
            publisher,
            store_root: tempfile::tempdir()?,
            processes: Vec::new(),
            published: 0,
        })
    }

    pub fn names(&self) -> Names {
        self.broker.names.clone()
    }

    /// A gateway's environment on this world's store, plus `overrides`.
    pub fn gateway_env(&self, overrides: &[(&'static str, &str)]) -> Vec<(&'static str, String)> {
        let mut env = gateway_env(self.broker.namespace(), self.store_root.path());
        env.retain(|(k, _)| *k != "WARREN_EVENTS__RETENTION");
        env.extend([
            ("WARREN_STATUS__STORE", "redis".to_owned()),
            ("WARREN_STATUS__REDIS_URL", REDIS_URL.to_owned()),
            ("WARREN_STATUS__KEY_PREFIX", self.prefix.clone()),
            (
                "WARREN_EVENTS__RETENTION",
                humantime::format_duration(self.retention).to_string(),
            ),
        ]);
        with(env, overrides)
    }

    /// Starts a gateway and waits until it serves HTTP; returns its
    /// address and its index in `processes`.
    pub async fn gateway(
        &mut self,
        overrides: &[(&'static str, &str)],
    ) -> anyhow::Result<(SocketAddr, usize)> {
        let gateway = WorkerProcess::gateway(&self.gateway_env(overrides)).await?;
        let addr = gateway.http_addr().await?;
        self.processes.push(gateway);
        Ok((addr, self.processes.len() - 1))
    }

    /// Waits until the gateway at `addr` stops answering 503 (`not_ready`)
    /// while it attaches to the events stream.
    pub async fn wait_ready(&self, addr: SocketAddr) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + crate::WAIT;
        while crate::http::get(addr, "/v1/tasks?limit=1").await?.status == 503 {
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "the gateway at {addr} did not become ready"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// Publishes `events` in order to the namespace's events exchange.
    pub async fn publish(&mut self, events: Vec<TaskEvent>) {
        self.published += events.len();
        // The writer gives an event up when its buffer is full: hand them
        // over a buffer's worth at a time, each lot confirmed.
        for lot in events.chunks(256) {
            for event in lot {
                self.publisher.emit(event.clone()).await;
            }
            assert!(
                self.publisher.flush(Duration::from_secs(30)).await,
                "the broker did not confirm the events"
            );
        }
    }

    /// Every event published so far, read back from the stream and folded
    /// per task by the store's rules: what each record must be. Also
    /// returns the last offset.
    pub async fn reference(&self) -> anyhow::Result<(HashMap<String, TaskRecord>, u64)> {
        let channel = self.connection.create_channel().await?;
        let stream = events::follow_on(&channel, &self.names(), StreamStart::First).await?;
        futures::pin_mut!(stream);
        let mut records: HashMap<String, TaskRecord> = HashMap::new();
        let mut last = 0;
        let read = async {
            for _ in 0..self.published {
                let Some(next) = stream.next().await else {
                    bail!("the stream ended");
                };
                let streamed = next?;
                last = streamed.offset;
                match records.get_mut(&streamed.event.task_id) {
                    Some(record) => {
                        record.apply(streamed, MAX_EVENTS);
                    }
                    None => {
                        let mut record = TaskRecord::first(streamed.clone());
                        record.events.truncate(MAX_EVENTS);
                        records.insert(streamed.event.task_id.clone(), record);
                    }
                }
            }
            Ok(())
        };
        tokio::time::timeout(Duration::from_secs(120), read)
            .await
            .context("the stream did not give back every published event")??;
        let _ = channel.close(200, "read".into()).await;
        Ok((records, last))
    }

    /// Waits until the indexer has committed offset `last`.
    pub async fn wait_indexed(&self, last: u64, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let committed = self.store.committed_offset().await?;
            if committed.is_some_and(|c| c >= last) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the store committed {committed:?}, not {last}, within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Every record in the store equals the reference (status, history,
    /// offsets): nothing applied twice, nothing skipped.
    pub async fn assert_store_matches(
        &self,
        reference: &HashMap<String, TaskRecord>,
    ) -> anyhow::Result<()> {
        for (id, want) in reference {
            let got = self
                .store
                .record(id)
                .await?
                .with_context(|| format!("no record of {id}"))?;
            if got.status != want.status {
                bail!("{id}: status {:?}, want {:?}", got.status, want.status);
            }
            let offsets = |r: &TaskRecord| r.events.iter().map(|e| e.offset).collect::<Vec<_>>();
            if offsets(&got) != offsets(want) || got.last_offset != want.last_offset {
                bail!(
                    "{id}: history {:?} (last {}), want {:?} (last {})",
                    offsets(&got),
                    got.last_offset,
                    offsets(want),
                    want.last_offset
                );
            }
        }
        Ok(())
    }

    /// Stops the gateways (SIGTERM), deletes the store's keys and the
    /// namespace's stream and exchanges.
    pub async fn finish(mut self) -> anyhow::Result<()> {
        for p in &self.processes {
            let _ = p.signal("TERM");
        }
        for p in &mut self.processes {
            let _ = p.wait_exit(Duration::from_secs(20)).await;
        }
        self.store.delete_all().await?;
        cleanup_namespace_stems(&self.connection, &self.names(), &[], &[]).await?;
        let _ = self.connection.close(200, "done".into()).await;
        Ok(())
    }
}

/// The events of one task's life: `queued`, `running`, then `final_state`
/// (`succeeded`, `dead_lettered`; or `retrying` then `succeeded` for
/// `retrying`), at `at` plus a millisecond per step.
pub fn lifecycle(
    id: &str,
    task_type: &str,
    final_state: TaskState,
    at: DateTime<Utc>,
) -> Vec<TaskEvent> {
    let step = |state, attempt, n: i64| {
        let mut e = TaskEvent::new(id, task_type, state, attempt);
        e.at = at + chrono::Duration::milliseconds(n);
        e.by = Some("test@host/1".into());
        e
    };
    let mut events = vec![
        step(TaskState::Queued, 1, 0),
        step(TaskState::Running, 1, 1),
    ];
    match final_state {
        TaskState::Succeeded => {
            let mut done = step(TaskState::Succeeded, 1, 2);
            done.result = Some(serde_json::json!({"message_id": format!("<{id}@test>")}));
            events.push(done);
        }
        TaskState::DeadLettered => {
            let mut dead = step(TaskState::DeadLettered, 1, 2);
            dead.error_kind = Some("invalid_address".into());
            dead.error = Some("to: not an address".into());
            dead.reason = Some("permanent".into());
            events.push(dead);
        }
        TaskState::Retrying => {
            let mut retry = step(TaskState::Retrying, 1, 2);
            retry.error_kind = Some("smtp_transient".into());
            retry.error = Some("451 try again".into());
            retry.next_attempt_at = Some(at + chrono::Duration::milliseconds(1002));
            events.push(retry);
            events.push(step(TaskState::Running, 2, 3));
            events.push(step(TaskState::Succeeded, 2, 4));
        }
        TaskState::Scheduled | TaskState::Queued => events.truncate(1),
        TaskState::Running => events.truncate(2),
        TaskState::Progress => {
            let mut half = step(TaskState::Progress, 1, 2);
            half.progress = Some(0.5);
            half.message = Some("half".into());
            events.push(half);
        }
    }
    events
}
