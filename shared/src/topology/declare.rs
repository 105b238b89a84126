//! Declaring the topology on a connection: idempotently, each object
//! once, with a conflict turned into an error that names the object, the
//! argument, the broker's value and Warren's.

use std::time::Duration;

use lapin::options::{
    ExchangeBindOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection};

use super::{Binding, DelayCascade, ExchangeBinding, ExchangeSpec, QueueKind, QueueSpec, Topology};
use crate::contract::Names;

/// Why the topology could not be declared.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error(
        "{object} '{name}' already exists on the broker with {argument} = {broker_has}, but Warren wants {argument} = {warren_wants}; \
         delete it (it is re-created on start-up) or choose another namespace"
    )]
    /// The broker has the object with other arguments: fix or delete it.
    Conflict {
        /// `exchange` or `queue`.
        object: &'static str,
        /// Its name.
        name: String,
        /// The argument that differs.
        argument: String,
        /// The value the broker has.
        broker_has: String,
        /// The value Warren declares.
        warren_wants: String,
    },
    /// The broker has the queue with the other queue type: the namespace
    /// switched between `classic` and `quorum`. RabbitMQ cannot change a
    /// queue's type; the queues must be drained and re-created.
    #[error(
        "queue '{name}' is a {broker_has} queue on the broker, but broker.queue_type is '{warren_wants}': \
         a namespace cannot switch queue types in place; migrate it (docs/operations.md, \
         \"Switching a namespace's queue type\") or set broker.queue_type = \"{broker_has}\""
    )]
    QueueTypeChanged {
        /// The queue.
        name: String,
        /// `classic` or `quorum`: what the broker has.
        broker_has: String,
        /// `classic` or `quorum`: what the settings ask for.
        warren_wants: String,
    },
    /// The broker refused the declaration for another reason.
    #[error("could not declare {object} '{name}': {source}")]
    Broker {
        /// `exchange`, `queue` or `binding`.
        object: &'static str,
        /// Its name.
        name: String,
        /// What lapin reported.
        #[source]
        source: lapin::Error,
    },
}

impl Topology {
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
        match result {
            Err(TopologyError::Conflict {
                object: "queue",
                name,
                argument,
                broker_has,
                warren_wants,
            }) => Err(match other_type(self.kind, &argument, &broker_has) {
                Some(broker_type) => TopologyError::QueueTypeChanged {
                    name,
                    broker_has: broker_type.to_owned(),
                    warren_wants: self.kind.type_name().to_owned(),
                },
                None => TopologyError::Conflict {
                    object: "queue",
                    name,
                    argument,
                    broker_has,
                    warren_wants,
                },
            }),
            other => other,
        }
    }

    async fn declare_on(&self, channel: &Channel) -> Result<(), TopologyError> {
        declare_all(
            channel,
            &self.exchanges(),
            self.queues(),
            &self.bindings(),
            &self.exchange_bindings(),
        )
        .await
    }
}

/// Whether a conflict on `argument` (the broker having `broker_has`) says
/// the queue is of the other type: an argument only the other type has.
/// RabbitMQ names the first argument that differs, in an order of its
/// own, so any of them may be the one: `x-max-priority` on a classic work
/// queue; `x-queue-type`, `x-delivery-limit`, `x-dead-letter-strategy` or
/// `x-overflow` on a quorum queue.
fn other_type(wanted: QueueKind, argument: &str, broker_has: &str) -> Option<&'static str> {
    let present = broker_has != "none";
    match wanted {
        QueueKind::Quorum { .. } => (argument == "x-queue-type"
            && matches!(broker_has, "none" | "classic")
            || argument == "x-max-priority" && present)
            .then_some("classic"),
        QueueKind::Classic => (matches!(
            argument,
            "x-queue-type" | "x-delivery-limit" | "x-dead-letter-strategy" | "x-overflow"
        ) && present)
            .then_some("quorum"),
    }
}

/// Declares exchanges, then queues, then bindings, in that order: the one
/// sequence every declared topology (a work queue's, the delay cascade) uses.
async fn declare_all(
    channel: &Channel,
    exchanges: &[ExchangeSpec],
    queues: impl IntoIterator<Item = QueueSpec>,
    bindings: &[Binding],
    exchange_bindings: &[ExchangeBinding],
) -> Result<(), TopologyError> {
    for exchange in exchanges {
        declare_exchange(channel, exchange).await?;
    }
    for queue in queues {
        declare_queue(channel, &queue).await?;
    }
    for binding in bindings {
        bind(channel, binding)
            .await
            .map_err(|source| TopologyError::Broker {
                object: "binding",
                name: format!(
                    "{} <- {} ({})",
                    binding.queue, binding.exchange, binding.key
                ),
                source,
            })?;
    }
    for binding in exchange_bindings {
        exchange_bind(channel, binding)
            .await
            .map_err(|source| exchange_binding_error(binding, source))?;
    }
    Ok(())
}

fn exchange_binding_error(binding: &ExchangeBinding, source: lapin::Error) -> TopologyError {
    TopologyError::Broker {
        object: "exchange binding",
        name: format!(
            "{} <- {} ({})",
            binding.destination, binding.source, binding.key
        ),
        source,
    }
}

/// Declares the delay cascade, for producers that delay tasks: a delayed
/// publish then has its level exchange and queue even before any worker has
/// started. Idempotent; a conflict is an error naming the object.
pub async fn declare_delay_cascade(channel: &Channel, names: &Names) -> Result<(), TopologyError> {
    let cascade = DelayCascade::new(names);
    declare_all(
        channel,
        &cascade.exchanges(),
        cascade.queues(),
        &cascade.bindings(),
        &cascade.exchange_bindings(),
    )
    .await
}

/// The one `exchange.bind` of Warren.
async fn exchange_bind(channel: &Channel, binding: &ExchangeBinding) -> Result<(), lapin::Error> {
    channel
        .exchange_bind(
            binding.destination.as_str().into(),
            binding.source.as_str().into(),
            binding.key.as_str().into(),
            ExchangeBindOptions::default(),
            FieldTable::default(),
        )
        .await
}

/// Declares the tasks exchange, for producers: a publish then reaches the
/// broker's routing (where `mandatory` says whether a worker's queue is
/// bound) even before any worker has started.
pub async fn declare_tasks_exchange(channel: &Channel, names: &Names) -> Result<(), lapin::Error> {
    exchange_declare(channel, &ExchangeSpec::tasks(names)).await
}

/// Declares the events exchange, for whoever emits task events.
pub async fn declare_events_exchange(channel: &Channel, names: &Names) -> Result<(), lapin::Error> {
    exchange_declare(channel, &ExchangeSpec::events(names)).await
}

/// Declares the events exchange and the stream that keeps its events for
/// `retention`, bound with `#`. A stream declared earlier with another
/// retention fails with `PRECONDITION_FAILED`.
pub async fn declare_events_stream(
    connection: &Connection,
    names: &Names,
    retention: Duration,
) -> Result<(), lapin::Error> {
    let channel = connection.create_channel().await?;
    declare_events_exchange(&channel, names).await?;
    queue_declare(&channel, &QueueSpec::events_stream(names, retention)).await?;
    bind(&channel, &Binding::events_stream(names)).await?;
    let _ = channel.close(200, "declared".into()).await;
    Ok(())
}

/// The one `exchange.declare` of Warren.
async fn exchange_declare(channel: &Channel, spec: &ExchangeSpec) -> Result<(), lapin::Error> {
    channel
        .exchange_declare(
            spec.name.as_str().into(),
            spec.kind.clone(),
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            spec.table(),
        )
        .await
}

/// The one `queue.declare` of Warren.
async fn queue_declare(channel: &Channel, spec: &QueueSpec) -> Result<(), lapin::Error> {
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
}

/// The one `queue.bind` of Warren.
async fn bind(channel: &Channel, binding: &Binding) -> Result<(), lapin::Error> {
    channel
        .queue_bind(
            binding.queue.as_str().into(),
            binding.exchange.as_str().into(),
            binding.key.as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
}

async fn declare_exchange(channel: &Channel, spec: &ExchangeSpec) -> Result<(), TopologyError> {
    let wanted = spec.kind_name();
    exchange_declare(channel, spec).await.map_err(|source| {
        classify("exchange", &spec.name, source, |arg| match arg {
            "type" => wanted.to_owned(),
            "durable" => "true".to_owned(),
            _ => spec
                .arguments
                .iter()
                .find(|(k, _)| *k == arg)
                .map(|(_, v)| show_value(v))
                .unwrap_or_else(|| "none".to_owned()),
        })
    })
}

async fn declare_queue(channel: &Channel, spec: &QueueSpec) -> Result<(), TopologyError> {
    queue_declare(channel, spec)
        .await
        .map_err(|source| classify("queue", &spec.name, source, |arg| spec.wants(arg)))
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

pub(super) fn show_value(v: &AMQPValue) -> String {
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
        // RabbitMQ 3.10's answers when a namespace switched queue types.
        let m = parse_inequivalent(
            "PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue 'q' in vhost '/': received the value 'quorum' of type 'longstr' but current is none",
        );
        assert_eq!(
            m.map(|m| (m.argument, m.current)),
            Some(("x-queue-type".into(), "none".into()))
        );
        let m = parse_inequivalent(
            "PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue 'q' in vhost '/': received 'classic' but current is 'quorum'",
        );
        assert_eq!(m.map(|m| m.current), Some("quorum".into()));
    }

    #[test]
    fn a_conflict_on_an_argument_of_the_other_type_is_a_type_switch() {
        let quorum = QueueKind::Quorum { delivery_limit: 5 };
        // What RabbitMQ 3.10 names when a classic namespace turns quorum,
        // and the other way round.
        assert_eq!(other_type(quorum, "x-max-priority", "10"), Some("classic"));
        assert_eq!(other_type(quorum, "x-queue-type", "none"), Some("classic"));
        let classic = QueueKind::Classic;
        for argument in ["x-dead-letter-strategy", "x-delivery-limit", "x-overflow"] {
            assert_eq!(other_type(classic, argument, "5"), Some("quorum"));
        }
        // Other drift is a plain conflict.
        assert_eq!(other_type(classic, "x-max-priority", "5"), None);
        assert_eq!(other_type(quorum, "x-delivery-limit", "3"), None);
        assert_eq!(other_type(classic, "x-message-ttl", "999"), None);
    }
}
