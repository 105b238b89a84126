//! Warren's broker topology, as code and in one place: every exchange,
//! queue, queue argument and binding any part of Warren declares.
//!
//! A worker declares its [`Topology`]: the tasks and dead exchanges, its
//! work queue, retry ladder and parking lot. Producers declare the tasks
//! exchange ([`declare_tasks_exchange`]) so a publish reaches the broker's
//! routing before any worker has started; the events exchange and stream
//! are declared by [`declare_events_stream`] (and the exchange alone by
//! whoever emits events). The specs are plain data ([`ExchangeSpec`],
//! [`QueueSpec`], [`Binding`]), so `asyncapi.yaml` is checked against the
//! very values declared.
//!
//! Declaring is idempotent. When the broker already holds an object with
//! other arguments it answers `PRECONDITION_FAILED` and closes the channel;
//! a worker turns that into an error that names the object, the argument,
//! what the broker has and what Warren wants, because that is what an
//! operator needs at 3 a.m.
//!
//! A namespace's queues are of one [`QueueKind`]: classic (one node,
//! priorities) or quorum (replicated, a broker-side delivery limit,
//! at-least-once dead-lettering, no priorities before RabbitMQ 4.0). A
//! queue found on the broker with the other type is its own error,
//! [`TopologyError::QueueTypeChanged`], naming the migration.

mod declare;
pub mod delay;

use std::time::Duration;

use lapin::ExchangeKind;
use lapin::types::{AMQPValue, FieldTable, ShortString};

use crate::contract::{Names, QUEUE_MAX_PRIORITY};
pub use declare::{
    TopologyError, declare_delay_cascade, declare_events_exchange, declare_events_stream,
    declare_tasks_exchange,
};
pub use delay::{DelayCascade, ExchangeBinding};

/// An exchange: durable, not auto-deleted, with its arguments (most have
/// none).
#[derive(Debug, Clone, PartialEq)]
pub struct ExchangeSpec {
    /// Its name.
    pub name: String,
    /// `topic`, `direct`, ...
    pub kind: ExchangeKind,
    /// Its arguments.
    pub arguments: Vec<(&'static str, AMQPValue)>,
}

impl ExchangeSpec {
    /// `{ns}.tasks`, the topic exchange producers publish tasks to.
    pub fn tasks(names: &Names) -> Self {
        Self {
            name: names.tasks_exchange(),
            kind: ExchangeKind::Topic,
            arguments: Vec::new(),
        }
    }

    /// `{ns}.dead`, the direct exchange in front of every parking lot.
    pub fn dead(names: &Names) -> Self {
        Self {
            name: names.dead_exchange(),
            kind: ExchangeKind::Direct,
            arguments: Vec::new(),
        }
    }

    /// `{ns}.events`, the topic exchange task lifecycle events go to.
    pub fn events(names: &Names) -> Self {
        Self {
            name: names.events_exchange(),
            kind: ExchangeKind::Topic,
            arguments: Vec::new(),
        }
    }

    /// The arguments as AMQP declares them.
    pub fn table(&self) -> FieldTable {
        table(&self.arguments)
    }

    /// `topic`, `direct`, ...: the kind as AMQP names it.
    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            ExchangeKind::Topic => "topic",
            ExchangeKind::Direct => "direct",
            ExchangeKind::Fanout => "fanout",
            ExchangeKind::Headers => "headers",
            _ => "other",
        }
    }
}

/// The kind of a namespace's work queues, parking lots and retry queues
/// (`broker.queue_type` and `broker.delivery_limit`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum QueueKind {
    /// Classic queues: the work queue has `x-max-priority`.
    #[default]
    Classic,
    /// Quorum queues. The work queue dead-letters a message delivered more
    /// than `delivery_limit` + 1 times (0: no limit) to the parking lot
    /// with the reason `delivery_limit`; dead-lettering is at-least-once
    /// (`x-dead-letter-strategy`, with `x-overflow = reject-publish`, which
    /// it requires), so no copy is lost between two queues. RabbitMQ 3.x
    /// has no priorities on quorum queues: the work queue has none.
    Quorum {
        /// `x-delivery-limit`.
        delivery_limit: u32,
    },
}

impl QueueKind {
    /// `classic` or `quorum`.
    pub fn type_name(self) -> &'static str {
        match self {
            QueueKind::Classic => "classic",
            QueueKind::Quorum { .. } => "quorum",
        }
    }

    /// The arguments every queue of this kind has first: none for a
    /// classic queue, `x-queue-type` for a quorum one.
    fn type_arguments(self) -> Vec<(&'static str, AMQPValue)> {
        match self {
            QueueKind::Classic => Vec::new(),
            QueueKind::Quorum { .. } => {
                vec![("x-queue-type", AMQPValue::LongString("quorum".into()))]
            }
        }
    }

    /// The arguments of a queue that dead-letters: at-least-once on a
    /// quorum queue, nothing more on a classic one.
    fn dead_letter_arguments(self) -> Vec<(&'static str, AMQPValue)> {
        match self {
            QueueKind::Classic => Vec::new(),
            QueueKind::Quorum { .. } => vec![
                (
                    "x-dead-letter-strategy",
                    AMQPValue::LongString("at-least-once".into()),
                ),
                ("x-overflow", AMQPValue::LongString("reject-publish".into())),
            ],
        }
    }
}

/// A queue and its arguments: durable, not exclusive, not auto-deleted.
#[derive(Debug, Clone)]
pub struct QueueSpec {
    /// Its name.
    pub name: String,
    /// Its arguments (`x-max-priority`, `x-dead-letter-exchange`, ...).
    pub arguments: Vec<(&'static str, AMQPValue)>,
}

impl QueueSpec {
    /// The stream that keeps task events for `retention` (RabbitMQ's
    /// `x-max-age`, whole seconds).
    pub fn events_stream(names: &Names, retention: Duration) -> Self {
        Self {
            name: names.events_stream(),
            arguments: vec![
                ("x-queue-type", AMQPValue::LongString("stream".into())),
                (
                    "x-max-age",
                    AMQPValue::LongString(format!("{}s", retention.as_secs().max(1)).into()),
                ),
            ],
        }
    }

    /// The arguments as AMQP declares them.
    pub fn table(&self) -> FieldTable {
        table(&self.arguments)
    }

    /// What Warren wants for `argument`, as a conflict message shows it.
    fn wants(&self, argument: &str) -> String {
        match argument {
            "durable" => "true".to_owned(),
            "exclusive" | "auto_delete" => "false".to_owned(),
            _ => self
                .arguments
                .iter()
                .find(|(k, _)| *k == argument)
                .map(|(_, v)| declare::show_value(v))
                .unwrap_or_else(|| "none".to_owned()),
        }
    }
}

fn table(arguments: &[(&'static str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in arguments {
        t.insert(ShortString::from(*k), v.clone());
    }
    t
}

/// A queue bound to an exchange with a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    /// The queue.
    pub queue: String,
    /// The exchange it is bound to.
    pub exchange: String,
    /// The binding key.
    pub key: String,
}

impl Binding {
    /// The events stream takes every event: `#` on `{ns}.events`.
    pub fn events_stream(names: &Names) -> Self {
        Self {
            queue: names.events_stream(),
            exchange: names.events_exchange(),
            key: "#".to_owned(),
        }
    }
}

/// A retry rung: the delay and its queue.
#[derive(Debug, Clone)]
pub struct RetryRung {
    /// How long a task waits on this rung.
    pub delay: Duration,
    /// Its delay queue, `{ns}.{stem}.retry.{delay}`.
    pub queue: QueueSpec,
}

/// Everything one worker declares.
#[derive(Debug, Clone)]
pub struct Topology {
    /// `{ns}.tasks`, where producers publish.
    pub tasks_exchange: String,
    /// `{ns}.dead`, in front of every parking lot.
    pub dead_exchange: String,
    /// The work queue, `{ns}.{stem}`.
    pub work_queue: QueueSpec,
    /// The keys binding it to the tasks exchange.
    pub binding_keys: Vec<String>,
    /// The parking lot, `{ns}.{stem}.dead`.
    pub dead_queue: QueueSpec,
    /// The retry ladder's delay queues.
    pub retry_rungs: Vec<RetryRung>,
    /// The delay cascade every worker declares (its objects are shared by
    /// the namespace), which delivers delayed tasks to the work queue.
    pub delay: DelayCascade,
    /// The kind of the work queue, parking lot and retry queues.
    pub kind: QueueKind,
    names: Names,
}

/// The delay before attempt `next_attempt` (>= 2) on the retry ladder
/// `retry_delays`: attempt n waits `retry_delays[n - 2]`, the last rung
/// repeating. `None` when there is no ladder.
pub fn retry_delay(retry_delays: &[Duration], next_attempt: u32) -> Option<Duration> {
    let idx = (next_attempt.saturating_sub(2) as usize).min(retry_delays.len().checked_sub(1)?);
    Some(retry_delays[idx])
}

impl Topology {
    /// The topology of a service consuming the classic queue
    /// `{ns}.{stem}`, bound to the tasks exchange with `binding_keys` (e.g.
    /// `email.#`).
    pub fn new(
        names: &Names,
        stem: &str,
        binding_keys: &[&str],
        retry_delays: &[Duration],
    ) -> Self {
        Self::with_kind(names, stem, binding_keys, retry_delays, QueueKind::Classic)
    }

    /// [`Topology::new`] with queues of `kind` (a namespace's
    /// [`crate::settings::BrokerSettings::queue_kind`]).
    ///
    /// ```
    /// use warren::Names;
    /// use warren::topology::{QueueKind, Topology};
    ///
    /// let kind = QueueKind::Quorum { delivery_limit: 5 };
    /// let t = Topology::with_kind(&Names::new("w"), "email", &["email.#"], &[], kind);
    /// let has = |k: &str| t.work_queue.arguments.iter().any(|(a, _)| *a == k);
    /// assert!(has("x-delivery-limit") && !has("x-max-priority"));
    /// ```
    pub fn with_kind(
        names: &Names,
        stem: &str,
        binding_keys: &[&str],
        retry_delays: &[Duration],
        kind: QueueKind,
    ) -> Self {
        let work = names.work_queue(stem);
        let mut arguments = kind.type_arguments();
        match kind {
            QueueKind::Classic => {
                arguments.push(("x-max-priority", AMQPValue::LongInt(QUEUE_MAX_PRIORITY)));
            }
            QueueKind::Quorum { delivery_limit } if delivery_limit > 0 => {
                arguments.push((
                    "x-delivery-limit",
                    AMQPValue::LongLongInt(i64::from(delivery_limit)),
                ));
            }
            QueueKind::Quorum { .. } => {}
        }
        arguments.extend([
            (
                "x-dead-letter-exchange",
                AMQPValue::LongString(names.dead_exchange().into()),
            ),
            (
                "x-dead-letter-routing-key",
                AMQPValue::LongString(work.clone().into()),
            ),
        ]);
        arguments.extend(kind.dead_letter_arguments());
        let work_queue = QueueSpec {
            name: work.clone(),
            arguments,
        };
        let dead_queue = QueueSpec {
            name: names.dead_queue(stem),
            arguments: kind.type_arguments(),
        };
        let mut retry_rungs: Vec<RetryRung> = Vec::new();
        for &delay in retry_delays {
            if retry_rungs.iter().any(|r| r.delay == delay) {
                continue;
            }
            let ttl = i64::try_from(delay.as_millis()).unwrap_or(i64::MAX);
            let mut arguments = kind.type_arguments();
            arguments.extend([
                ("x-message-ttl", AMQPValue::LongLongInt(ttl)),
                // The default exchange routes by queue name, so an
                // expired copy goes back to this work queue alone and
                // never to other bindings of its routing key.
                ("x-dead-letter-exchange", AMQPValue::LongString("".into())),
                (
                    "x-dead-letter-routing-key",
                    AMQPValue::LongString(work.clone().into()),
                ),
            ]);
            arguments.extend(kind.dead_letter_arguments());
            retry_rungs.push(RetryRung {
                delay,
                queue: QueueSpec {
                    name: names.retry_queue(stem, delay),
                    arguments,
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
            delay: DelayCascade::new(names),
            kind,
            names: names.clone(),
        }
    }

    /// The rung whose delay applies before attempt `next_attempt` (>= 2);
    /// the last rung repeats.
    pub fn rung_for(&self, retry_delays: &[Duration], next_attempt: u32) -> Option<&RetryRung> {
        self.rung(retry_delay(retry_delays, next_attempt)?)
    }

    /// The rung of this delay, if the ladder has one.
    pub fn rung(&self, delay: Duration) -> Option<&RetryRung> {
        self.retry_rungs.iter().find(|r| r.delay == delay)
    }

    /// Every queue name, for clean-up in tests and tooling.
    pub fn queue_names(&self) -> Vec<String> {
        self.queues().map(|q| q.name.clone()).collect()
    }

    /// The exchanges, in the order they are declared: tasks, dead, then
    /// the delay cascade's.
    pub fn exchanges(&self) -> Vec<ExchangeSpec> {
        let mut v = vec![
            ExchangeSpec::tasks(&self.names),
            ExchangeSpec::dead(&self.names),
        ];
        v.extend(self.delay.exchanges());
        v
    }

    /// The queues, in the order they are declared: the worker's own, then
    /// the delay cascade's (shared by the namespace).
    pub fn queues(&self) -> impl Iterator<Item = QueueSpec> + '_ {
        [&self.work_queue, &self.dead_queue]
            .into_iter()
            .chain(self.retry_rungs.iter().map(|r| &r.queue))
            .cloned()
            .chain(self.delay.queues())
    }

    /// The exchange-to-exchange bindings (the delay cascade's).
    pub fn exchange_bindings(&self) -> Vec<ExchangeBinding> {
        self.delay.exchange_bindings()
    }

    /// The bindings: the work queue to the tasks exchange (one per
    /// binding key), the parking lot to the dead exchange, the work queue
    /// to the delay cascade's delivery exchange (its binding keys behind
    /// the delay's words, and `@{queue}` for tasks deferred for it alone),
    /// and the cascade's own. The retry ladder's queues have none: copies
    /// reach them through the default exchange.
    pub fn bindings(&self) -> Vec<Binding> {
        let work = &self.work_queue.name;
        let mut v: Vec<Binding> = self
            .binding_keys
            .iter()
            .map(|key| Binding {
                queue: work.clone(),
                exchange: self.tasks_exchange.clone(),
                key: key.clone(),
            })
            .collect();
        v.push(Binding {
            queue: self.dead_queue.name.clone(),
            exchange: self.dead_exchange.clone(),
            key: work.clone(),
        });
        let delivery = self.names.delay_delivery_exchange();
        for key in &self.binding_keys {
            v.push(Binding {
                queue: work.clone(),
                exchange: delivery.clone(),
                key: delay::delivery_key(&self.names, key),
            });
        }
        v.push(Binding {
            queue: work.clone(),
            exchange: delivery,
            key: delay::queue_key(&self.names, work),
        });
        v.extend(self.delay.bindings());
        v
    }
}

#[cfg(test)]
// A failing unwrap is how a test reports failure.
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

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
        assert_eq!(t.queue_names().len(), 5 + delay::DELAY_LEVELS as usize + 1);
    }

    #[test]
    fn wanted_values_are_shown_for_conflicts() {
        let t = Topology::new(&Names::new("w"), "email", &["email.#"], &[]);
        assert_eq!(t.work_queue.wants("x-max-priority"), "10");
        assert_eq!(t.work_queue.wants("x-dead-letter-exchange"), "'w.dead'");
        assert_eq!(t.work_queue.wants("x-queue-mode"), "none");
    }

    #[test]
    fn bindings_route_tasks_in_and_failures_to_the_parking_lot() {
        let t = Topology::new(&Names::new("w"), "email", &["email.#"], &[]);
        let keys: Vec<_> = t
            .bindings()
            .into_iter()
            .map(|b| (b.queue, b.exchange, b.key))
            .take(2)
            .collect();
        let own = |a: &str, b: &str, c: &str| (a.to_owned(), b.to_owned(), c.to_owned());
        assert_eq!(
            keys,
            vec![
                own("w.email", "w.tasks", "email.#"),
                own("w.email.dead", "w.dead", "w.email")
            ]
        );
        let stream = QueueSpec::events_stream(&Names::new("w"), Duration::from_secs(7 * 86_400));
        assert_eq!(stream.wants("x-max-age"), "'604800s'");
    }

    #[test]
    fn quorum_queues_have_a_delivery_limit_and_at_least_once_dead_lettering() {
        let delays = [Duration::from_secs(1)];
        let kind = QueueKind::Quorum { delivery_limit: 3 };
        let t = Topology::with_kind(&Names::new("w"), "email", &["email.#"], &delays, kind);
        let w = &t.work_queue;
        assert_eq!(w.wants("x-queue-type"), "'quorum'");
        assert_eq!(w.wants("x-delivery-limit"), "3");
        assert_eq!(w.wants("x-max-priority"), "none");
        assert_eq!(w.wants("x-dead-letter-strategy"), "'at-least-once'");
        assert_eq!(w.wants("x-overflow"), "'reject-publish'");
        assert_eq!(t.dead_queue.wants("x-queue-type"), "'quorum'");
        let rung = &t.retry_rungs[0].queue;
        assert_eq!(rung.wants("x-queue-type"), "'quorum'");
        assert_eq!(rung.wants("x-dead-letter-strategy"), "'at-least-once'");
        // No limit: no argument.
        let t = Topology::with_kind(
            &Names::new("w"),
            "email",
            &[],
            &[],
            QueueKind::Quorum { delivery_limit: 0 },
        );
        assert_eq!(t.work_queue.wants("x-delivery-limit"), "none");
    }
}
