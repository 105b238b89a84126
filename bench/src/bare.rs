//! The baseline: what a careful hand-written lapin client does, with none
//! of Warren's runtime. Its consumer takes the same prefetch and runs the
//! same number of handlers at once, parses each body as JSON into the same
//! type and acks each message by itself; its producer publishes with
//! `mandatory` and waits for each confirm.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection};
use tokio::sync::{Semaphore, oneshot};
use tokio_util::sync::CancellationToken;

use crate::task::{BenchBody, BenchTask, TASK_TYPE};

/// Called with each parsed task before its ack.
pub type OnTask = Arc<dyn Fn(&BenchTask) + Send + Sync>;

/// Counts and times a consumer's acks.
#[derive(Debug, Default)]
pub struct Progress {
    pub acked: AtomicUsize,
    pub first: OnceLock<Instant>,
    pub end: Mutex<Option<Instant>>,
}

impl Progress {
    /// From the first delivery to the `limit`th ack.
    pub fn span(&self) -> Option<(Instant, Instant)> {
        let first = *self.first.get()?;
        let end = (*self.end.lock().ok()?)?;
        Some((first, end))
    }
}

/// A bare consumer of one queue.
#[derive(Debug, Clone)]
pub struct BareConsumer {
    pub url: String,
    pub queue: String,
    pub prefetch: u16,
    pub concurrency: usize,
}

impl BareConsumer {
    /// Consumes until `limit` messages are acked (then cancels `stop`) or
    /// until `stop` is cancelled. `ready` fires once the consumer is
    /// registered.
    pub async fn run(
        &self,
        limit: Option<usize>,
        stop: CancellationToken,
        on_task: OnTask,
        progress: Arc<Progress>,
        ready: Option<oneshot::Sender<()>>,
    ) -> anyhow::Result<()> {
        let connection = crate::broker::connect(&self.url).await?;
        let channel = connection.create_channel().await?;
        channel
            .basic_qos(self.prefetch, BasicQosOptions::default())
            .await?;
        let tag = format!("bare-{}", uuid::Uuid::new_v4().simple());
        let mut consumer = channel
            .basic_consume(
                self.queue.as_str().into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        if let Some(ready) = ready {
            let _ = ready.send(());
        }
        let concurrency = self.concurrency.max(1);
        let permits = Arc::new(Semaphore::new(concurrency));
        let result = loop {
            let permit = tokio::select! {
                biased;
                _ = stop.cancelled() => break Ok(()),
                p = permits.clone().acquire_owned() => p?,
            };
            let delivery = tokio::select! {
                biased;
                _ = stop.cancelled() => break Ok(()),
                d = consumer.next() => d,
            };
            let delivery = match delivery {
                Some(Ok(d)) => d,
                Some(Err(e)) => break Err(anyhow::Error::from(e)),
                None => break Err(anyhow::anyhow!("the broker cancelled the bare consumer")),
            };
            progress.first.get_or_init(Instant::now);
            let on_task = on_task.clone();
            let progress = progress.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let _permit = permit;
                if let Ok(task) = serde_json::from_slice::<BenchTask>(&delivery.data) {
                    on_task(&task);
                }
                if delivery.acker.ack(BasicAckOptions::default()).await.is_ok() {
                    let acked = progress.acked.fetch_add(1, Ordering::AcqRel) + 1;
                    if Some(acked) == limit {
                        if let Ok(mut end) = progress.end.lock() {
                            *end = Some(Instant::now());
                        }
                        stop.cancel();
                    }
                }
            });
        };
        // Let the running handlers finish their acks, then leave.
        let _ = tokio::time::timeout(
            Duration::from_secs(10),
            permits.acquire_many(concurrency as u32),
        )
        .await;
        let _ = channel
            .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
            .await;
        let _ = channel.close(200, "bare consumer done".into()).await;
        let _ = connection.close(200, "bare consumer done".into()).await;
        result
    }
}

/// A bare confirmed producer on a channel of its own connection.
pub struct BarePublisher {
    connection: Connection,
    channel: Channel,
    exchange: String,
}

impl BarePublisher {
    pub async fn connect(url: &str, exchange: &str) -> anyhow::Result<Self> {
        let connection = crate::broker::connect(url).await?;
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Self {
            connection,
            channel,
            exchange: exchange.to_owned(),
        })
    }

    /// Publishes one task the way the README tells any producer to
    /// (`message_id`, `content_type`, persistent, `priority`, `type`,
    /// `timestamp`, Warren's attempt and publish-time headers, `mandatory`)
    /// and waits for its confirm.
    pub async fn publish(&self, body: &BenchBody<'_>) -> anyhow::Result<()> {
        let payload = body.to_vec();
        let id = uuid::Uuid::now_v7().to_string();
        let now_ms = chrono::Utc::now().timestamp_millis();
        let mut headers = FieldTable::default();
        headers.insert(
            ShortString::from("x-warren-attempt"),
            AMQPValue::LongLongInt(1),
        );
        headers.insert(
            ShortString::from("x-warren-published-at-ms"),
            AMQPValue::LongLongInt(now_ms),
        );
        let props = BasicProperties::default()
            .with_message_id(id.as_str().into())
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_priority(0)
            .with_timestamp(u64::try_from(now_ms / 1000).unwrap_or(0))
            .with_type(TASK_TYPE.into())
            .with_headers(headers);
        let confirm = self
            .channel
            .basic_publish(
                self.exchange.as_str().into(),
                TASK_TYPE.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                &payload,
                props,
            )
            .await?
            .await
            .context("no confirm from the broker")?;
        match confirm {
            Confirmation::Ack(None) => Ok(()),
            other => bail!("the broker did not take the message: {other:?}"),
        }
    }

    pub async fn close(&self) {
        let _ = self.channel.close(200, "bare publisher done".into()).await;
        let _ = self
            .connection
            .close(200, "bare publisher done".into())
            .await;
    }
}
