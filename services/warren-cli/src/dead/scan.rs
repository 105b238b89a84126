//! Reading a parking lot: which queues, each message read and held
//! unacked, the filters applied.

use std::time::Duration;

use chrono::{DateTime, Utc};
use lapin::Acker;
use lapin::options::{BasicGetOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection};
use serde_json::Value;
use warren::contract::{broker_headers, death_time, header_i64, header_str, header_u32, headers};

use crate::args::Filters;
use crate::error::CliError;
use crate::mgmt::Management;
use crate::settings::CliSettings;

/// A parked message, held unacked.
pub struct Parked {
    pub queue: String,
    pub id: String,
    pub task_type: Option<String>,
    pub kind: Option<String>,
    pub reason: Option<String>,
    pub error: Option<String>,
    pub attempts: Option<u32>,
    pub parked_at: Option<DateTime<Utc>>,
    pub body: Vec<u8>,
    pub properties: BasicProperties,
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
    pub fn matches(&self, filters: &Filters, now: DateTime<Utc>) -> bool {
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

    /// The headers as JSON, for `show`.
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

fn amqp_json(v: &AMQPValue) -> Value {
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
    pub queue: String,
    pub channel: Channel,
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
        filters: &Filters,
        limit: Option<usize>,
    ) -> Result<Self, CliError> {
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
    pub async fn release(self) {
        let _ = self.channel.close(200, "released".into()).await;
    }
}

/// The parking lots to read: the one `queue` names (a stem or a full name),
/// else every `{ns}.<stem>.dead` the management API lists, else those of
/// the contract's work queues that exist.
pub async fn parking_lots(
    settings: &CliSettings,
    connection: &Connection,
    queue: Option<&str>,
) -> Result<Vec<String>, CliError> {
    let ns = settings.broker.namespace.clone();
    if let Some(q) = queue {
        let name = if q.starts_with(&format!("{ns}.")) && q.ends_with(".dead") {
            q.to_owned()
        } else if q.starts_with(&format!("{ns}.")) {
            format!("{q}.dead")
        } else {
            format!("{ns}.{}.dead", q.trim_end_matches(".dead"))
        };
        if !exists(connection, &name).await? {
            return Err(CliError::NotFound(format!(
                "no parking lot '{name}' in namespace '{ns}' (no worker of that queue has run here)"
            )));
        }
        return Ok(vec![name]);
    }
    let prefix = format!("{ns}.");
    let mut names: Vec<String> = match Management::new(&settings.broker)?.queues().await {
        Ok(queues) => queues
            .iter()
            .filter_map(|q| q["name"].as_str())
            .filter(|n| {
                n.strip_prefix(&prefix)
                    .and_then(|rest| rest.strip_suffix(".dead"))
                    .is_some_and(|stem| !stem.is_empty() && !stem.contains('.'))
            })
            .map(str::to_owned)
            .collect(),
        Err(_) => {
            let mut v = Vec::new();
            for q in warren_tasks::WORK_QUEUES {
                let name = format!("{ns}.{}.dead", q.stem);
                if exists(connection, &name).await? {
                    v.push(name);
                }
            }
            v
        }
    };
    names.sort();
    if names.is_empty() {
        return Err(CliError::NotFound(format!(
            "no parking lot in namespace '{ns}' (no worker has run here)"
        )));
    }
    Ok(names)
}

/// Does `queue` exist? (A passive declare, on a channel of its own: a
/// missing queue closes the channel.)
pub async fn exists(connection: &Connection, queue: &str) -> Result<bool, CliError> {
    let channel = connection.create_channel().await?;
    let found = channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await;
    match found {
        Ok(_) => {
            let _ = channel.close(200, "checked".into()).await;
            Ok(true)
        }
        Err(e) if is_not_found(&e) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

fn is_not_found(e: &lapin::Error) -> bool {
    matches!(e.kind(), lapin::ErrorKind::ProtocolError(amqp)
        if matches!(amqp.kind(), lapin::protocol::AMQPErrorKind::Soft(lapin::protocol::AMQPSoftError::NOTFOUND)))
}
