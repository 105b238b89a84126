//! The Celery bridge: consumes Celery's queue (`celery` by default, bound to
//! the direct exchange `celery` with key `celery`), turns each Celery
//! protocol 2 message into a Warren task and publishes it, with confirms and
//! `mandatory`, to `{ns}.tasks` (or into the delay cascade when it has an
//! `eta`), and acks the Celery message only after that confirm. A message
//! it cannot read is parked at once in `{ns}.celery.dead` with the reason in
//! Warren's failure headers; nothing is guessed at and nothing is dropped.
//!
//! One message at a time, in order: a confirm costs about a millisecond on
//! a local broker, far below what a task costs to run.

use std::time::Duration;

use chrono::{SecondsFormat, Utc};
use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ExchangeKind};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::message::{self, Converted, Refused};
use super::{CeleryResults, CelerySettings};
use crate::broker::{
    Backoff, BackoffReset, ConnectError, connect_session, queue_exists, reconnect_loop,
};
use crate::contract::{self, Names, PERSISTENT, headers};
use crate::publisher::{Due, PublishError, PublishOptions, Publisher};
use crate::settings::BrokerSettings;
use crate::workflow::{Link, Slip};

/// The stem of the bridge's parking lot: `{ns}.celery.dead`, bound to
/// `{ns}.dead` with key `{ns}.celery`.
pub const STEM: &str = "celery";

/// Why the bridge stopped for good, or lost its connection.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// `celery.tasks` is not usable.
    #[error("invalid celery settings: {0}")]
    Settings(String),
    /// No connection to the broker.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// A channel or declaration failed.
    #[error("{0}")]
    Broker(#[from] lapin::Error),
    /// A publish failed in a way that needs a fresh connection.
    #[error(transparent)]
    Publish(#[from] PublishError),
    /// The broker cancelled the consumer.
    #[error("the broker cancelled the Celery consumer (was the queue deleted?)")]
    ConsumerCancelled,
}

/// Checks `settings.tasks`: names and types non-empty, no name twice.
pub fn check(settings: &CelerySettings) -> Result<(), BridgeError> {
    message::check_tasks(&settings.tasks).map_err(BridgeError::Settings)
}

/// Runs the bridge until `shutdown`, reconnecting when the broker goes
/// away. `identity` names it in parked messages' `x-warren-worker`.
pub async fn run(
    broker: BrokerSettings,
    settings: CelerySettings,
    identity: String,
    results: Option<CeleryResults>,
    shutdown: CancellationToken,
) -> Result<(), BridgeError> {
    check(&settings)?;
    let bridge = Bridge {
        names: broker.names(),
        settings,
        identity,
        results,
    };
    info!(
        queue = %bridge.settings.queue,
        exchange = %bridge.settings.exchange,
        routing_key = %bridge.settings.routing_key,
        tasks = bridge.settings.tasks.len(),
        results = bridge.results.is_some(),
        "Celery bridge starting."
    );
    let backoff = Backoff::new(Duration::from_millis(250), broker.reconnect_max_delay);
    reconnect_loop(
        backoff,
        &shutdown,
        "Celery bridge lost its connection; reconnecting.",
        |up| bridge.session(&broker, &shutdown, up),
    )
    .await;
    info!("Celery bridge stopped.");
    Ok(())
}

struct Bridge {
    names: Names,
    settings: CelerySettings,
    identity: String,
    results: Option<CeleryResults>,
}

/// What became of one Celery message.
enum Handed {
    /// Published as a Warren task, then acked.
    On,
    /// Parked with its reason, then acked.
    Parked,
}

impl Bridge {
    async fn session(
        &self,
        broker: &BrokerSettings,
        shutdown: &CancellationToken,
        backoff: BackoffReset,
    ) -> Result<(), BridgeError> {
        let name = format!("{} celery-bridge", self.identity);
        let connection = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            c = connect_session(broker, &name) => c?,
        };
        let result = self.consume(&connection, shutdown, &backoff).await;
        let _ = connection.close(200, "celery bridge stopping".into()).await;
        result
    }

    async fn consume(
        &self,
        connection: &Connection,
        shutdown: &CancellationToken,
        backoff: &BackoffReset,
    ) -> Result<(), BridgeError> {
        self.declare(connection).await?;
        let publisher = Publisher::on(connection, self.names.clone()).await?;
        let channel = connection.create_channel().await?;
        channel
            .basic_qos(self.settings.prefetch.max(1), BasicQosOptions::default())
            .await?;
        let mut consumer = channel
            .basic_consume(
                self.settings.queue.as_str().into(),
                format!("{} celery-bridge", self.identity).into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        backoff.reset();
        info!(queue = %self.settings.queue, "Celery bridge consuming.");
        loop {
            let delivery = tokio::select! {
                _ = shutdown.cancelled() => {
                    // Unacked messages go back to Celery's queue as the
                    // channel closes.
                    let _ = channel.close(200, "shutdown".into()).await;
                    return Ok(());
                }
                next = consumer.next() => next,
            };
            let delivery = match delivery {
                Some(Ok(d)) => d,
                Some(Err(e)) => return Err(e.into()),
                None => return Err(BridgeError::ConsumerCancelled),
            };
            match self.hand_on(&publisher, &delivery).await {
                Ok(_) => {
                    if let Err(e) = delivery.acker.ack(BasicAckOptions::default()).await {
                        // Redelivered; the task id keeps a second run from
                        // repeating the work.
                        warn!(error = %e, "Could not ack the Celery message; the broker will redeliver it.");
                    }
                }
                Err(e) => {
                    // Not taken by the broker: the Celery message goes back
                    // to its queue, after a pause so a lasting failure is not
                    // a hot loop, and the session starts over.
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    let _ = delivery
                        .acker
                        .nack(BasicNackOptions {
                            requeue: true,
                            ..Default::default()
                        })
                        .await;
                    return Err(e.into());
                }
            }
        }
    }

    /// Celery's queue and exchange as Celery declares them (durable, no
    /// arguments; an existing queue is taken as it is, so one declared with
    /// `x-max-priority` by the application stays so), and the parking lot.
    async fn declare(&self, connection: &Connection) -> Result<(), BridgeError> {
        let channel = connection.create_channel().await?;
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        let queue = self.settings.queue.as_str();
        if !queue_exists(connection, queue).await? {
            channel
                .queue_declare(queue.into(), durable_queue(), FieldTable::default())
                .await?;
        }
        declare_exchange(
            &channel,
            &self.settings.exchange,
            ExchangeKind::Direct,
            durable,
        )
        .await?;
        channel
            .queue_bind(
                queue.into(),
                self.settings.exchange.as_str().into(),
                self.settings.routing_key.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let dead_exchange = self.names.dead_exchange();
        let dead_queue = self.names.dead_queue(STEM);
        declare_exchange(&channel, &dead_exchange, ExchangeKind::Direct, durable).await?;
        channel
            .queue_declare(
                dead_queue.as_str().into(),
                durable_queue(),
                FieldTable::default(),
            )
            .await?;
        channel
            .queue_bind(
                dead_queue.as_str().into(),
                dead_exchange.as_str().into(),
                self.names.work_queue(STEM).as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let _ = channel.close(200, "declared".into()).await;
        // Where converted tasks go: the tasks exchange and, for an `eta`,
        // the delay cascade.
        let channel = connection.create_channel().await?;
        crate::topology::declare_tasks_exchange(&channel, &self.names).await?;
        crate::topology::declare_delay_cascade(&channel, &self.names)
            .await
            .map_err(|e| PublishError::Topology(Box::new(e)))?;
        let _ = channel.close(200, "declared".into()).await;
        Ok(())
    }

    /// Publishes the Warren task, or parks the message; `Err` when the
    /// broker took neither.
    async fn hand_on(
        &self,
        publisher: &Publisher,
        delivery: &Delivery,
    ) -> Result<Handed, PublishError> {
        let converted =
            message::convert(&delivery.properties, &delivery.data, &self.settings.tasks);
        let task = match converted {
            Ok(task) => task,
            Err(refused) => return self.park(publisher, delivery, &refused).await,
        };
        let chain_ids = || task.chain.iter().filter_map(|s| s.id.clone()).collect();
        let options = match options(&task) {
            Ok(options) => options,
            Err(reason) => {
                let refused = Refused {
                    kind: "celery_unsupported_workflow",
                    reason,
                    id: Some(task.id.clone()),
                    chain_ids: chain_ids(),
                };
                return self.park(publisher, delivery, &refused).await;
            }
        };
        match publisher
            .publish_task(&task.task_type, &task.body, options)
            .await
        {
            Ok(_) => {
                info!(
                    task_id = %task.id,
                    celery_task = %task.name,
                    task_type = %task.task_type,
                    priority = task.priority,
                    eta = task.eta.map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true)),
                    chain_steps = task.chain.len(),
                    "Celery task handed on as a Warren task."
                );
                Ok(Handed::On)
            }
            Err(PublishError::Returned { code, text }) => {
                let refused = Refused {
                    kind: "celery_unroutable",
                    reason: format!(
                        "no queue is bound for the Warren task type {} that {} maps to ({code} {text}): \
                         is its worker running?",
                        task.task_type, task.name
                    ),
                    id: Some(task.id.clone()),
                    chain_ids: chain_ids(),
                };
                self.park(publisher, delivery, &refused).await
            }
            Err(e @ (PublishError::InvalidPriority(_) | PublishError::DelayTooLong(_))) => {
                let refused = Refused {
                    kind: "celery_invalid_header",
                    reason: e.to_string(),
                    id: Some(task.id.clone()),
                    chain_ids: chain_ids(),
                };
                self.park(publisher, delivery, &refused).await
            }
            Err(e) => Err(e),
        }
    }

    /// The Celery message, untouched but for Warren's failure headers, into
    /// `{ns}.celery.dead`; then a `FAILURE` result if results are on.
    async fn park(
        &self,
        publisher: &Publisher,
        delivery: &Delivery,
        refused: &Refused,
    ) -> Result<Handed, PublishError> {
        let mut hdrs = delivery.properties.headers().clone().unwrap_or_default();
        let now = Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true);
        contract::set_str(&mut hdrs, headers::FIRST_FAILURE_AT, now.clone());
        contract::set_str(&mut hdrs, headers::LAST_FAILURE_AT, now);
        contract::set_str(&mut hdrs, headers::ERROR_KIND, refused.kind);
        contract::set_str(&mut hdrs, headers::ERROR, refused.reason.clone());
        contract::set_str(&mut hdrs, headers::DEAD_REASON, "permanent");
        contract::set_str(&mut hdrs, headers::WORKER, self.identity.clone());
        contract::set_int(&mut hdrs, headers::ATTEMPT, 1);
        contract::set_str(
            &mut hdrs,
            headers::ORIGINAL_EXCHANGE,
            delivery.exchange.as_str(),
        );
        contract::set_str(
            &mut hdrs,
            headers::ORIGINAL_ROUTING_KEY,
            delivery.routing_key.as_str(),
        );
        let mut props = delivery
            .properties
            .clone()
            .with_delivery_mode(PERSISTENT)
            .with_headers(hdrs);
        if let Some(id) = &refused.id
            && props.message_id().is_none()
        {
            props = props.with_message_id(id.as_str().into());
        }
        publisher
            .publish_confirmed(
                &self.names.dead_exchange(),
                &self.names.work_queue(STEM),
                &delivery.data,
                props,
            )
            .await?;
        error!(
            task_id = refused.id.as_deref().unwrap_or(""),
            error_kind = refused.kind,
            error = %refused.reason,
            dead_queue = %self.names.dead_queue(STEM),
            "Celery message parked."
        );
        if let Some(results) = &self.results {
            for id in refused.id.iter().chain(&refused.chain_ids) {
                results.refused(id, refused.kind, &refused.reason).await;
            }
        }
        Ok(Handed::Parked)
    }
}

fn durable_queue() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..Default::default()
    }
}

async fn declare_exchange(
    channel: &Channel,
    name: &str,
    kind: ExchangeKind,
    options: ExchangeDeclareOptions,
) -> Result<(), lapin::Error> {
    channel
        .exchange_declare(name.into(), kind, options, FieldTable::default())
        .await
}

/// The Warren publish of a converted Celery task: its id, priority and
/// `eta`; `retries` as the attempt; `expires`, the root and parent ids and
/// the Celery name (which turns result writing on) as headers; its Celery
/// chain as a Warren routing slip (`x-warren-chain`) whose id is the task's
/// own. `Err`: the chain cannot travel as a slip (too many steps, too
/// large), said as a reason.
fn options(task: &Converted) -> Result<PublishOptions, String> {
    let mut hdrs = FieldTable::default();
    contract::set_int(
        &mut hdrs,
        headers::ATTEMPT,
        i64::from(task.retries.saturating_add(1)),
    );
    contract::set_str(&mut hdrs, headers::CELERY_TASK, task.name.clone());
    if let Some(root) = &task.root_id {
        contract::set_str(&mut hdrs, headers::CELERY_ROOT_ID, root.clone());
    }
    if let Some(parent) = &task.parent_id {
        contract::set_str(&mut hdrs, headers::CAUSATION_ID, parent.clone());
    }
    if let Some(expires) = task.expires {
        contract::set_int(&mut hdrs, headers::EXPIRES_MS, expires.timestamp_millis());
    }
    if !task.chain.is_empty() {
        let slip = Slip {
            id: task.id.clone(),
            step: 1,
            next: task.chain.iter().cloned().map(Link::Task).collect(),
        };
        let json = slip
            .to_json()
            .and_then(|json| Slip::parse(&json).map(|_| json))
            .map_err(|e| {
                format!(
                    "the Celery chain of {} cannot run as a Warren chain: {e}",
                    task.name
                )
            })?;
        contract::set_str(&mut hdrs, headers::CHAIN, json);
    }
    Ok(PublishOptions {
        id: Some(task.id.clone()),
        priority: task.priority,
        expiration: None,
        headers: hdrs,
        due: task.eta.map(Due::At),
    })
}
