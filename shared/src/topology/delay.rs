//! The delay cascade: delays of any length (up to 2^28 - 1 seconds, about
//! 8.5 years) with no broker plugin and nothing held unacked by a worker.
//!
//! The design is the one of NServiceBus's RabbitMQ transport. There are
//! [`DELAY_LEVELS`] levels; level `n` is a topic exchange and a queue of
//! the same name (`{ns}.delay.{nn}`) whose messages expire after 2^n
//! seconds. A delayed message's routing key spells its delay in binary, one
//! word per level from the highest down, followed by its destination:
//! `0.0.….1.0.1.email.send` is 5 s for task type `email.send`. Each level's
//! exchange sends a message whose bit is 1 into its queue, and one whose
//! bit is 0 straight on to the next level's exchange (an exchange-to-
//! exchange binding). When a message expires from level `n`'s queue, the
//! broker dead-letters it, with its routing key unchanged, to the exchange
//! of level `n - 1`; below level 0 lies the delivery exchange
//! (`{ns}.delay.delivery`). So a message waits exactly the sum of the
//! levels whose bit is set, then reaches the delivery exchange, where each
//! work queue is bound with its own binding keys behind [`DELAY_LEVELS`]
//! `*` words: a delayed task reaches the queues the tasks exchange would
//! have routed it to, and nothing else.
//!
//! Two destinations exist: a task type (the Rust publisher, the gateway, the
//! conductor) and one work queue (`@{queue}`, used by a worker that defers
//! a task it received early, so the other queues bound for its type do not
//! get it twice). A task that, once due, no queue is bound for goes to the
//! delivery exchange's alternate exchange and waits in
//! `{ns}.delay.unrouted`: never dropped.
//!
//! The level queues are quorum queues with at-least-once dead-lettering:
//! the broker moves an expired message to the next level only once that
//! level has confirmed it, so a broker crash mid-hop loses nothing.
//! Granularity is one second: a delay is rounded up to whole seconds.

use std::time::Duration;

use lapin::ExchangeKind;
use lapin::types::AMQPValue;

use super::{Binding, ExchangeSpec, QueueSpec};
use crate::contract::Names;

/// Levels of the cascade: level `n` waits 2^n seconds.
pub const DELAY_LEVELS: u32 = 28;

/// The longest delay the cascade serves: 2^28 - 1 seconds.
pub const MAX_DELAY: Duration = Duration::from_secs((1 << DELAY_LEVELS) - 1);

/// Where a delayed message goes once due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination<'a> {
    /// Every queue bound for this task type (its routing key on the tasks
    /// exchange).
    TaskType(&'a str),
    /// This one work queue.
    Queue(&'a str),
}

/// The exchange and routing key that delay a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DelayRoute {
    /// The exchange of the highest level the delay waits at (its first).
    pub exchange: String,
    /// The key that routes it through the levels of the delay's set bits, then to its destination.
    pub routing_key: String,
    /// The delay served, in whole seconds (the asked delay, rounded up).
    pub seconds: u64,
}

/// A delay the cascade cannot serve.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "a delay of {} is longer than the delay cascade's longest ({})",
    humantime::format_duration(*asked),
    humantime::format_duration(MAX_DELAY)
)]
pub struct DelayTooLong {
    /// The delay asked for.
    pub asked: Duration,
}

/// `delay` rounded up to whole seconds.
pub fn whole_seconds(delay: Duration) -> u64 {
    delay.as_secs() + u64::from(delay.subsec_nanos() > 0)
}

/// The exchange and routing key that hold a message for `delay` and then
/// deliver it to `destination`.
pub fn route(
    names: &Names,
    delay: Duration,
    destination: Destination<'_>,
) -> Result<DelayRoute, DelayTooLong> {
    let seconds = whole_seconds(delay);
    if seconds > MAX_DELAY.as_secs() {
        return Err(DelayTooLong { asked: delay });
    }
    // Enter at the highest level with a bit set: the levels above would
    // only pass the message down.
    let top = 63u32.saturating_sub(seconds.leading_zeros());
    let mut key = String::with_capacity(2 * DELAY_LEVELS as usize + 32);
    for level in (0..DELAY_LEVELS).rev() {
        key.push(if seconds >> level & 1 == 1 { '1' } else { '0' });
        key.push('.');
    }
    match destination {
        Destination::TaskType(t) => key.push_str(t),
        Destination::Queue(q) => {
            key.push('@');
            key.push_str(q);
        }
    }
    Ok(DelayRoute {
        exchange: names.delay_level(top),
        routing_key: key,
        seconds,
    })
}

/// `*.` once per level: the part of a binding key that skips the delay.
fn skip(words: u32) -> String {
    "*.".repeat(words as usize)
}

/// The delivery exchange's binding key for a work queue's binding key on
/// the tasks exchange (`email.#` -> `*.….*.email.#`).
pub fn delivery_key(binding_key: &str) -> String {
    format!("{}{binding_key}", skip(DELAY_LEVELS))
}

/// The delivery exchange's binding key that takes messages deferred for
/// one work queue (`*.….*.@warren.email`).
pub fn queue_key(queue: &str) -> String {
    format!("{}@{queue}", skip(DELAY_LEVELS))
}

/// An exchange bound to another: `source` passes what matches `key` on to
/// `destination`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExchangeBinding {
    /// The exchange that receives.
    pub destination: String,
    /// The exchange that passes messages on.
    pub source: String,
    /// The binding key.
    pub key: String,
}

/// Every object of one namespace's cascade.
#[derive(Debug, Clone)]
pub struct DelayCascade {
    names: Names,
}

impl DelayCascade {
    /// The cascade of `names`' namespace.
    pub fn new(names: &Names) -> Self {
        Self {
            names: names.clone(),
        }
    }

    /// Where level `level`'s messages go next: the level below, or the
    /// delivery exchange below level 0.
    fn below(&self, level: u32) -> String {
        match level.checked_sub(1) {
            Some(l) => self.names.delay_level(l),
            None => self.names.delay_delivery_exchange(),
        }
    }

    /// The level exchanges (topic), the delivery exchange (topic, with the
    /// unrouted exchange as its alternate) and the unrouted exchange
    /// (fanout).
    pub fn exchanges(&self) -> Vec<ExchangeSpec> {
        let mut v: Vec<ExchangeSpec> = (0..DELAY_LEVELS)
            .map(|level| ExchangeSpec {
                name: self.names.delay_level(level),
                kind: ExchangeKind::Topic,
                arguments: Vec::new(),
            })
            .collect();
        v.push(ExchangeSpec {
            name: self.names.delay_unrouted(),
            kind: ExchangeKind::Fanout,
            arguments: Vec::new(),
        });
        v.push(ExchangeSpec {
            name: self.names.delay_delivery_exchange(),
            kind: ExchangeKind::Topic,
            arguments: vec![(
                "alternate-exchange",
                AMQPValue::LongString(self.names.delay_unrouted().into()),
            )],
        });
        v
    }

    /// The level queues, then the unrouted queue.
    pub fn queues(&self) -> Vec<QueueSpec> {
        let mut v: Vec<QueueSpec> = (0..DELAY_LEVELS)
            .map(|level| QueueSpec {
                name: self.names.delay_level(level),
                arguments: vec![
                    ("x-queue-type", AMQPValue::LongString("quorum".into())),
                    (
                        "x-message-ttl",
                        AMQPValue::LongLongInt((1i64 << level) * 1000),
                    ),
                    (
                        "x-dead-letter-exchange",
                        AMQPValue::LongString(self.below(level).into()),
                    ),
                    (
                        "x-dead-letter-strategy",
                        AMQPValue::LongString("at-least-once".into()),
                    ),
                    ("x-overflow", AMQPValue::LongString("reject-publish".into())),
                ],
            })
            .collect();
        v.push(QueueSpec {
            name: self.names.delay_unrouted(),
            arguments: Vec::new(),
        });
        v
    }

    /// Each level's queue takes the messages whose bit of that level is 1;
    /// the unrouted queue takes everything its exchange gets.
    pub fn bindings(&self) -> Vec<Binding> {
        let mut v: Vec<Binding> = (0..DELAY_LEVELS)
            .map(|level| Binding {
                queue: self.names.delay_level(level),
                exchange: self.names.delay_level(level),
                key: level_key(level, '1'),
            })
            .collect();
        v.push(Binding {
            queue: self.names.delay_unrouted(),
            exchange: self.names.delay_unrouted(),
            key: String::new(),
        });
        v
    }

    /// Each level's exchange passes the messages whose bit of that level is
    /// 0 on to the level below (or the delivery exchange).
    pub fn exchange_bindings(&self) -> Vec<ExchangeBinding> {
        (0..DELAY_LEVELS)
            .map(|level| ExchangeBinding {
                destination: self.below(level),
                source: self.names.delay_level(level),
                key: level_key(level, '0'),
            })
            .collect()
    }
}

/// The binding key matching `bit` at `level`'s word of the routing key.
pub fn level_key(level: u32, bit: char) -> String {
    format!("{}{bit}.#", skip(DELAY_LEVELS - 1 - level))
}

#[cfg(test)]
// A failing unwrap is how a test reports failure.
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Follows a routing key down the cascade as the broker would: the
    /// levels whose queue it waits in, and where it is delivered.
    fn walk(names: &Names, route: &DelayRoute) -> (Vec<u32>, String) {
        let cascade = DelayCascade::new(names);
        let words: Vec<&str> = route.routing_key.split('.').collect();
        let mut waited = Vec::new();
        let mut exchange = route.exchange.clone();
        while exchange != names.delay_delivery_exchange() {
            let level: u32 = exchange.rsplit('.').next().unwrap().parse().unwrap();
            let bit = words[(DELAY_LEVELS - 1 - level) as usize];
            if bit == "1" {
                waited.push(level);
            }
            exchange = cascade.below(level);
        }
        let rest = words[DELAY_LEVELS as usize..].join(".");
        (waited, rest)
    }

    #[test]
    fn a_delay_waits_at_the_levels_of_its_set_bits() {
        let n = Names::new("w");
        let r = route(
            &n,
            Duration::from_secs(5),
            Destination::TaskType("email.send"),
        )
        .unwrap();
        assert_eq!(r.exchange, "w.delay.02");
        assert_eq!(r.seconds, 5);
        assert!(
            r.routing_key.ends_with(".1.0.1.email.send"),
            "{}",
            r.routing_key
        );
        let (waited, rest) = walk(&n, &r);
        assert_eq!(waited, vec![2, 0]);
        assert_eq!(rest, "email.send");
        let three_hours = Duration::from_secs(3 * 3600);
        let r = route(&n, three_hours, Destination::Queue("w.email")).unwrap();
        let (waited, rest) = walk(&n, &r);
        let total: u64 = waited.iter().map(|l| 1u64 << l).sum();
        assert_eq!(total, 3 * 3600);
        assert_eq!(rest, "@w.email");
    }

    #[test]
    fn delays_round_up_to_seconds_and_have_a_ceiling() {
        let n = Names::new("w");
        let r = route(&n, Duration::from_millis(1), Destination::TaskType("a")).unwrap();
        assert_eq!((r.seconds, r.exchange.as_str()), (1, "w.delay.00"));
        let r = route(
            &n,
            Duration::from_millis(70_001),
            Destination::TaskType("a"),
        )
        .unwrap();
        assert_eq!(r.seconds, 71);
        let r = route(&n, MAX_DELAY, Destination::TaskType("a")).unwrap();
        assert_eq!(r.exchange, "w.delay.27");
        assert!(!r.routing_key.contains('0'));
        let err = route(
            &n,
            MAX_DELAY + Duration::from_secs(1),
            Destination::TaskType("a"),
        );
        assert!(err.is_err());
        let r = route(&n, Duration::ZERO, Destination::TaskType("a")).unwrap();
        assert_eq!((r.seconds, r.exchange.as_str()), (0, "w.delay.00"));
    }

    #[test]
    fn binding_keys_pick_one_word_per_level() {
        assert_eq!(level_key(DELAY_LEVELS - 1, '1'), "1.#");
        assert_eq!(
            level_key(0, '0').matches("*.").count(),
            DELAY_LEVELS as usize - 1
        );
        assert!(delivery_key("email.#").ends_with(".*.email.#"));
        assert!(queue_key("w.email").ends_with(".*.@w.email"));
        let c = DelayCascade::new(&Names::new("w"));
        assert_eq!(c.queues().len(), DELAY_LEVELS as usize + 1);
        assert_eq!(c.exchanges().len(), DELAY_LEVELS as usize + 2);
        let last = c.exchange_bindings().remove(0);
        assert_eq!(
            (last.source.as_str(), last.destination.as_str()),
            ("w.delay.00", "w.delay.delivery")
        );
    }
}
