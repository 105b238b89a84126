//! Reading a parking lot: which queues, each message read and held
//! unacked, the filters applied.

use std::time::Duration;

use crate::contract::{broker_headers, death_time, header_i64, header_str, header_u32, headers};
use chrono::{DateTime, Utc};
use lapin::Acker;
use lapin::options::{BasicGetOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection};
use serde_json::Value;

use super::{DeadError, Filter};

/// A parked message, held unacked.
pub struct Parked {
    /// The parking lot it was read from.
    pub queue: String,
    /// Its `message_id` (`-` when it has none).
    pub id: String,
    /// Its `type`, else the routing key it was first published with.
    pub task_type: Option<String>,
    /// `x-warren-error-kind`.
    pub kind: Option<String>,
    /// `x-warren-dead-reason`, else the broker's first death reason.
    pub reason: Option<String>,
    /// `x-warren-error`: the last failure's message.
    pub error: Option<String>,
    /// `x-warren-attempt`: the attempts made.
    pub attempts: Option<u32>,
    /// When it was parked (its last failure, else its death, else when
    /// it was published).
    pub parked_at: Option<DateTime<Utc>>,
    /// The body, byte for byte.
    pub body: Vec<u8>,
    /// Its AMQP properties, headers included.
    pub properties: BasicProperties,
    /// Settles it (ack: gone from the parking lot).
    pub acker: Acker,
}

impl Parked {
    fn new(queue: &str, delivery: lapin::message::Delivery) -> Self {
        let props = &delivery.properties;
        let h = props.headers().as_ref();
        let id = props
            .message_id()
            .as_ref()
            .map(|s| s.to_string())
            .unwrap_or_else(|| "-".to_owned());
        let task_type = props
            .kind()
            .as_ref()
            .map(|s| s.to_string())
            .or_else(|| header_str(h, headers::ORIGINAL_ROUTING_KEY));
        // Parked by a worker: its reason; dead-lettered by the broker
        // (expired, rejected, maxlen): the broker's.
        let reason = header_str(h, headers::DEAD_REASON)
            .or_else(|| header_str(h, broker_headers::X_FIRST_DEATH_REASON));
        let parked_at = header_str(h, headers::LAST_FAILURE_AT)
            .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
            .map(|t| t.with_timezone(&Utc))
            .or_else(|| death_time(h))
            .or_else(|| {
                header_i64(h, headers::PUBLISHED_AT_MS).and_then(DateTime::from_timestamp_millis)
            })
            .or_else(|| {
                props
                    .timestamp()
                    .and_then(|t| DateTime::from_timestamp(i64::try_from(t).ok()?, 0))
            });
        Self {
            queue: queue.to_owned(),
            id,
            task_type,
            kind: header_str(h, headers::ERROR_KIND),
            reason,
            error: header_str(h, headers::ERROR),
            attempts: header_u32(h, headers::ATTEMPT),
            parked_at,
            body: delivery.data,
            properties: delivery.properties,
            acker: delivery.acker,
        }
    }

    /// Does it pass `filters` (all but the limit)?
    pub fn matches(&self, filters: &Filter, now: DateTime<Utc>) -> bool {
        let eq = |want: &Option<String>, have: &Option<String>| {
            want.as_ref().is_none_or(|w| have.as_deref() == Some(w))
        };
        let age = self
            .parked_at
            .and_then(|t| (now - t).to_std().ok())
            .unwrap_or(Duration::ZERO);
        eq(&filters.task_type, &self.task_type)
            && eq(&filters.kind, &self.kind)
            && eq(&filters.reason, &self.reason)
            && (filters.id.is_empty() || filters.id.contains(&self.id))
            && filters.older_than.is_none_or(|d| age >= d)
            && filters.newer_than.is_none_or(|d| age <= d)
    }

    /// The headers as JSON, for showing them.
    pub fn headers_json(&self) -> Value {
        let mut map = serde_json::Map::new();
        if let Some(table) = self.properties.headers() {
            for (k, v) in table.inner() {
                map.insert(k.to_string(), amqp_json(v));
            }
        }
        Value::Object(map)
    }
}

/// An AMQP field value as JSON (for showing headers).
pub fn amqp_json(v: &AMQPValue) -> Value {
    match v {
        AMQPValue::LongString(s) => Value::String(String::from_utf8_lossy(s.as_bytes()).into()),
        AMQPValue::ShortString(s) => Value::String(s.to_string()),
        AMQPValue::Boolean(b) => Value::Bool(*b),
        AMQPValue::ShortShortInt(n) => Value::from(*n),
        AMQPValue::ShortShortUInt(n) => Value::from(*n),
        AMQPValue::ShortInt(n) => Value::from(*n),
        AMQPValue::ShortUInt(n) => Value::from(*n),
        AMQPValue::LongInt(n) => Value::from(*n),
        AMQPValue::LongUInt(n) => Value::from(*n),
        AMQPValue::LongLongInt(n) => Value::from(*n),
        AMQPValue::Timestamp(n) => Value::from(*n),
        AMQPValue::FieldArray(a) => Value::Array(a.as_slice().iter().map(amqp_json).collect()),
        AMQPValue::FieldTable(t) => Value::Object(
            t.inner()
                .iter()
                .map(|(k, v)| (k.to_string(), amqp_json(v)))
                .collect(),
        ),
        other => Value::String(format!("{other:?}")),
    }
}

/// One parking lot, read to the depth it had: the matching messages held,
/// the others held too until the scan is released.
pub struct Scan {
    /// The parking lot.
    pub queue: String,
    /// The channel the messages are held on (in confirm mode).
    pub channel: Channel,
    /// The messages that pass the filter, held.
    pub matched: Vec<Parked>,
    /// Messages looked at.
    pub seen: usize,
}

impl Scan {
    /// Reads `queue` on a channel of its own (in confirm mode, so a replay
    /// publishes on it: a confirm then also says that every ack sent
    /// before it on the channel has been processed).
    pub async fn run(
        connection: &Connection,
        queue: &str,
        filters: &Filter,
        limit: Option<usize>,
    ) -> Result<Self, DeadError> {
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let depth = channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?
            .message_count();
        let now = Utc::now();
        let mut matched = Vec::new();
        let mut seen = 0;
        while seen < depth as usize && limit.is_none_or(|l| matched.len() < l) {
            let Some(message) = channel
                .basic_get(queue.into(), BasicGetOptions { no_ack: false })
                .await?
            else {
                break;
            };
            seen += 1;
            let parked = Parked::new(queue, message.delivery);
            if parked.matches(filters, now) {
                matched.push(parked);
            }
        }
        Ok(Self {
            queue: queue.to_owned(),
            channel,
            matched,
            seen,
        })
    }

    /// Hands every message not settled back to the queue, in its place.
    /// Bounded: a close on a lost connection may never be answered, and
    /// the broker hands the messages back on its own when the connection
    /// is gone.
    pub async fn release(self) {
        let close = self.channel.close(200, "released".into());
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), close).await;
    }
}

/// Does `queue` exist? (A passive declare, on a channel of its own: a
/// missing queue closes the channel.)
pub async fn exists(connection: &Connection, queue: &str) -> Result<bool, DeadError> {
    Ok(crate::broker::queue_exists(connection, queue).await?)
}
