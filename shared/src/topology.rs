//! The broker topology of a worker, as code: exchanges, the work queue, its
//! retry ladder and its parking lot, with their arguments in one place.
//!
//! Declaring is idempotent. When the broker already holds an object with
//! other arguments it answers `PRECONDITION_FAILED` and closes the channel;
//! we turn that into an error that names the object, the argument, what the
//! broker has and what Warren wants, because that is what an operator needs
//! at 3 a.m.

use std::time::Duration;

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Channel, Connection, ExchangeKind};

use crate::contract::{Names, QUEUE_MAX_PRIORITY};

#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error(
        "{object} '{name}' already exists on the broker with {argument} = {broker_has}, but Warren wants {argument} = {warren_wants}; \
         delete it (it is re-created on start-up) or choose another namespace"
    )]
    Conflict {
        object: &'static str,
        name: String,
        argument: String,
        broker_has: String,
        warren_wants: String,
    },
    #[error("could not declare {object} '{name}': {source}")]
    Broker {
        object: &'static str,
        name: String,
        #[source]
        source: lapin::Error,
    },
}

/// One queue and its arguments.
#[derive(Debug, Clone)]
pub struct QueueSpec {
    pub name: String,
    pub arguments: Vec<(&'static str, AMQPValue)>,
}

impl QueueSpec {
    fn table(&self) -> FieldTable {
        let mut t = FieldTable::default();
        for (k, v) in &self.arguments {
            t.insert(ShortString::from(*k), v.clone());
        }
        t
    }

    fn wants(&self, argument: &str) -> String {
        match argument {
            "durable" => "true".to_owned(),
            "exclusive" | "auto_delete" => "false".to_owned(),
            _ => self
                .arguments
                .iter()
                .find(|(k, _)| *k == argument)
                .map(|(_, v)| show_value(v))
                .unwrap_or_else(|| "none".to_owned()),
        }
    }
}

/// A retry rung: the delay and its queue.
#[derive(Debug, Clone)]
pub struct RetryRung {
    pub delay: Duration,
    pub queue: QueueSpec,
}

/// Everything one worker declares.
#[derive(Debug, Clone)]
pub struct Topology {
    pub tasks_exchange: String,
    pub dead_exchange: String,
    pub work_queue: QueueSpec,
    pub binding_keys: Vec<String>,
    pub dead_queue: QueueSpec,
    pub retry_rungs: Vec<RetryRung>,
}

impl Topology {
    /// The topology of a service consuming queue `{ns}.{stem}`, bound to the
    /// tasks exchange with `binding_keys` (e.g. `email.#`).
    pub fn new(
        names: &Names,
        stem: &str,
        binding_keys: &[&str],
        retry_delays: &[Duration],
    ) -> Self {
        let work = names.work_queue(stem);
        let work_queue = QueueSpec {
            name: work.clone(),
            arguments: vec![
                ("x-max-priority", AMQPValue::LongInt(QUEUE_MAX_PRIORITY)),
                (
                    "x-dead-letter-exchange",
                    AMQPValue::LongString(names.dead_exchange().into()),
                ),
                (
                    "x-dead-letter-routing-key",
                    AMQPValue::LongString(work.clone().into()),
                ),
            ],
        };
        let dead_queue = QueueSpec {
            name: names.dead_queue(stem),
            arguments: Vec::new(),
        };
        let mut retry_rungs: Vec<RetryRung> = Vec::new();
        for &delay in retry_delays {
            if retry_rungs.iter().any(|r| r.delay == delay) {
                continue;
            }
            let ttl = i64::try_from(delay.as_millis()).unwrap_or(i64::MAX);
            retry_rungs.push(RetryRung {
                delay,
                queue: QueueSpec {
                    name: names.retry_queue(stem, delay),
                    arguments: vec![
                        ("x-message-ttl", AMQPValue::LongLongInt(ttl)),
                        // The default exchange routes by queue name, so an
                        // expired copy goes back to this work queue alone and
                        // never to other bindings of its routing key.
                        ("x-dead-letter-exchange", AMQPValue::LongString("".into())),
                        (
                            "x-dead-letter-routing-key",
                            AMQPValue::LongString(work.clone().into()),
                        ),
                    ],
                },
            });
        }
        Self {
            tasks_exchange: names.tasks_exchange(),
            dead_exchange: names.dead_exchange(),
            work_queue,
            binding_keys: binding_keys.iter().map(|k| (*k).to_owned()).collect(),
            dead_queue,
            retry_rungs,
        }
    }

    /// The rung whose delay applies before attempt `next_attempt` (>= 2);
    /// the last rung repeats.
    pub fn rung_for(&self, retry_delays: &[Duration], next_attempt: u32) -> Option<&RetryRung> {
        let idx = (next_attempt.saturating_sub(2) as usize).min(retry_delays.len().checked_sub(1)?);
        let delay = retry_delays[idx];
        self.retry_rungs.iter().find(|r| r.delay == delay)
    }

    /// Every queue name, for clean-up in tests and tooling.
    pub fn queue_names(&self) -> Vec<String> {
        let mut v = vec![self.work_queue.name.clone(), self.dead_queue.name.clone()];
        v.extend(self.retry_rungs.iter().map(|r| r.queue.name.clone()));
        v
    }

    /// Declares everything, idempotently. Each failing declaration closes its
    /// channel, so this uses a channel of its own and closes it when done.
    pub async fn declare(&self, connection: &Connection) -> Result<(), TopologyError> {
        let channel =
            connection
                .create_channel()
                .await
                .map_err(|source| TopologyError::Broker {
                    object: "channel",
                    name: String::new(),
                    source,
                })?;
        let result = self.declare_on(&channel).await;
        if channel.status().connected() {
            let _ = channel.close(200, "topology declared".into()).await;
        }
        result
    }

    async fn declare_on(&self, channel: &Channel) -> Result<(), TopologyError> {
        declare_exchange(channel, &self.tasks_exchange, ExchangeKind::Topic).await?;
        declare_exchange(channel, &self.dead_exchange, ExchangeKind::Direct).await?;
        declare_queue(channel, &self.work_queue).await?;
        for key in &self.binding_keys {
            bind(channel, &self.work_queue.name, &self.tasks_exchange, key).await?;
        }
        declare_queue(channel, &self.dead_queue).await?;
        bind(
            channel,
            &self.dead_queue.name,
            &self.dead_exchange,
            &self.work_queue.name,
        )
        .await?;
        for rung in &self.retry_rungs {
            declare_queue(channel, &rung.queue).await?;
        }
        Ok(())
    }
}

async fn declare_exchange(
    channel: &Channel,
    name: &str,
    kind: ExchangeKind,
) -> Result<(), TopologyError> {
    let wanted = match kind {
        ExchangeKind::Topic => "topic",
        ExchangeKind::Direct => "direct",
        ExchangeKind::Fanout => "fanout",
        _ => "other",
    };
    channel
        .exchange_declare(
            name.into(),
            kind,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(|source| {
            classify("exchange", name, source, |arg| match arg {
                "type" => wanted.to_owned(),
                "durable" => "true".to_owned(),
                _ => "none".to_owned(),
            })
        })
}

async fn declare_queue(channel: &Channel, spec: &QueueSpec) -> Result<(), TopologyError> {
    channel
        .queue_declare(
            spec.name.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            spec.table(),
        )
        .await
        .map(|_| ())
        .map_err(|source| classify("queue", &spec.name, source, |arg| spec.wants(arg)))
}

async fn bind(
    channel: &Channel,
    queue: &str,
    exchange: &str,
    key: &str,
) -> Result<(), TopologyError> {
    channel
        .queue_bind(
            queue.into(),
            exchange.into(),
            key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|source| TopologyError::Broker {
            object: "binding",
            name: format!("{queue} <- {exchange} ({key})"),
            source,
        })
}

fn classify(
    object: &'static str,
    name: &str,
    source: lapin::Error,
    wants: impl Fn(&str) -> String,
) -> TopologyError {
    if let lapin::ErrorKind::ProtocolError(amqp) = source.kind()
        && matches!(
            amqp.kind(),
            AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED)
        )
        && let Some(mismatch) = parse_inequivalent(amqp.get_message().as_str())
    {
        return TopologyError::Conflict {
            object,
            name: name.to_owned(),
            warren_wants: wants(&mismatch.argument),
            argument: mismatch.argument,
            broker_has: mismatch.current,
        };
    }
    TopologyError::Broker {
        object,
        name: name.to_owned(),
        source,
    }
}

#[derive(Debug, PartialEq)]
struct Mismatch {
    argument: String,
    current: String,
}

/// Parses RabbitMQ's `PRECONDITION_FAILED - inequivalent arg 'x-max-priority'
/// for queue 'q' in vhost '/': received the value '10' of type 'signedint'
/// but current is none` (and its variants for `durable` and `type`).
fn parse_inequivalent(text: &str) -> Option<Mismatch> {
    let rest = text.split("inequivalent arg '").nth(1)?;
    let (argument, rest) = rest.split_once('\'')?;
    let current = rest.rsplit_once("but current is ")?.1.trim();
    let current = match current.strip_prefix("the value ") {
        Some(v) => v.split(" of type").next().unwrap_or(v),
        None => current,
    };
    Some(Mismatch {
        argument: argument.to_owned(),
        current: current.trim_matches('\'').to_owned(),
    })
}

fn show_value(v: &AMQPValue) -> String {
    match v {
        AMQPValue::LongString(s) => format!("'{}'", String::from_utf8_lossy(s.as_bytes())),
        AMQPValue::ShortString(s) => format!("'{}'", s.as_str()),
        AMQPValue::LongInt(n) => n.to_string(),
        AMQPValue::LongLongInt(n) => n.to_string(),
        AMQPValue::ShortInt(n) => n.to_string(),
        AMQPValue::Boolean(b) => b.to_string(),
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rabbitmq_inequivalent_arg_messages() {
        let m = parse_inequivalent(
            "PRECONDITION_FAILED - inequivalent arg 'x-max-priority' for queue 'warren.email' in vhost '/': received the value '10' of type 'signedint' but current is none",
        );
        assert_eq!(
            m,
            Some(Mismatch {
                argument: "x-max-priority".into(),
                current: "none".into()
            })
        );
        let m = parse_inequivalent(
            "PRECONDITION_FAILED - inequivalent arg 'x-max-priority' for queue 'q' in vhost '/': received the value '10' of type 'signedint' but current is the value '5' of type 'signedint'",
        );
        assert_eq!(m.map(|m| m.current), Some("5".into()));
        let m = parse_inequivalent(
            "PRECONDITION_FAILED - inequivalent arg 'durable' for queue 'q' in vhost '/': received 'true' but current is 'false'",
        );
        assert_eq!(
            m,
            Some(Mismatch {
                argument: "durable".into(),
                current: "false".into()
            })
        );
        assert_eq!(parse_inequivalent("NOT_FOUND - no queue 'q'"), None);
    }

    #[test]
    fn retry_ladder_maps_attempts_to_rungs_and_repeats_the_last() {
        let delays: Vec<Duration> = [1, 5, 30].into_iter().map(Duration::from_secs).collect();
        let t = Topology::new(&Names::new("w"), "email", &["email.#"], &delays);
        let name = |a| t.rung_for(&delays, a).map(|r| r.queue.name.clone());
        assert_eq!(name(2).as_deref(), Some("w.email.retry.1s"));
        assert_eq!(name(3).as_deref(), Some("w.email.retry.5s"));
        assert_eq!(name(4).as_deref(), Some("w.email.retry.30s"));
        assert_eq!(name(9).as_deref(), Some("w.email.retry.30s"));
        assert!(t.rung_for(&[], 2).is_none());
    }

    #[test]
    fn wanted_values_are_shown_for_conflicts() {
        let t = Topology::new(&Names::new("w"), "email", &["email.#"], &[]);
        assert_eq!(t.work_queue.wants("x-max-priority"), "10");
        assert_eq!(t.work_queue.wants("x-dead-letter-exchange"), "'w.dead'");
        assert_eq!(t.work_queue.wants("x-queue-mode"), "none");
    }
}
