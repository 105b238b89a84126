//! The delay cascade: delays of any length (up to 2^28 - 1 seconds, about
//! 8.5 years) with no broker plugin and nothing held unacked by a worker.
//!
//! The design is the one of NServiceBus's RabbitMQ transport. There are
//! [`DELAY_LEVELS`] levels; level `n` is a topic exchange and a queue of
//! the same name (`{cascade}.delay.{nn}`) whose messages expire after 2^n
//! seconds. A delayed message's routing key spells its delay in binary, one
//! word per level from the highest down, followed by its namespace and its
//! destination: `0.0.….1.0.1.warren.email.send` is 5 s for task type
//! `email.send` in namespace `warren`. Each level's exchange sends a
//! message whose bit is 1 into its queue, and one whose bit is 0 straight
//! on to the next level's exchange (an exchange-to-exchange binding). When
//! a message expires from level `n`'s queue, the broker dead-letters it,
//! with its routing key unchanged, to the exchange of level `n - 1`; below
//! level 0 lies the cascade's exit exchange (`{cascade}.delay.exit`). So a
//! message waits exactly the sum of the levels whose bit is set, then
//! reaches the exit, which passes it to its namespace's delivery exchange
//! (`{ns}.delay.delivery`, bound with [`DELAY_LEVELS`] `*` words and the
//! namespace). There each work queue is bound with its own binding keys
//! behind the same words: a delayed task reaches the queues the tasks
//! exchange would have routed it to, and nothing else.
//!
//! By default a namespace has a cascade of its own (`{cascade}` is the
//! namespace). Namespaces of one virtual host may share one cascade
//! (`broker.delay_cascade`): 28 quorum queues in all instead of 28 per
//! namespace, which matters where namespaces come and go (one per test
//! run, say: RabbitMQ is not built for quorum-queue churn).
//!
//! Two destinations exist: a task type (the Rust publisher, the gateway, the
//! conductor) and one work queue (`@{queue}`, used by a worker that defers
//! a task it received early, so the other queues bound for its type do not
//! get it twice). A task that, once due, no queue is bound for goes to the
//! delivery exchange's alternate exchange and waits in
//! `{ns}.delay.unrouted`; one whose namespace no longer listens waits in
//! `{cascade}.delay.unrouted`: never dropped.
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
    let mut key = String::with_capacity(2 * DELAY_LEVELS as usize + 48);
    for level in (0..DELAY_LEVELS).rev() {
        key.push(if seconds >> level & 1 == 1 { '1' } else { '0' });
        key.push('.');
    }
    key.push_str(names.namespace());
    key.push('.');
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
/// the tasks exchange (`email.#` -> `*.….*.warren.email.#`).
pub fn delivery_key(names: &Names, binding_key: &str) -> String {
    format!("{}{}.{binding_key}", skip(DELAY_LEVELS), names.namespace())
}

/// The delivery exchange's binding key that takes messages deferred for
/// one work queue (`*.….*.warren.@warren.email`).
pub fn queue_key(names: &Names, queue: &str) -> String {
    format!("{}{}.@{queue}", skip(DELAY_LEVELS), names.namespace())
}

/// The exit's binding key that passes a namespace's due messages to its
/// delivery exchange (`*.….*.warren.#`).
pub fn namespace_key(names: &Names) -> String {
    format!("{}{}.#", skip(DELAY_LEVELS), names.namespace())
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

/// Every object a namespace needs to delay messages: the cascade (its own
/// or a shared one) and the namespace's delivery exchange below it.
#[derive(Debug, Clone)]
pub struct DelayCascade {
    names: Names,
}

impl DelayCascade {
    /// The cascade and delivery exchange of `names`.
    pub fn new(names: &Names) -> Self {
        Self {
            names: names.clone(),
        }
    }

    /// Where level `level`'s messages go next: the level below, or the
    /// cascade's exit below level 0.
    fn below(&self, level: u32) -> String {
        match level.checked_sub(1) {
            Some(l) => self.names.delay_level(l),
            None => self.names.delay_exit(),
        }
    }

    /// The unrouted exchanges: the cascade's, and the namespace's when the
    /// cascade is shared (else they are one).
    fn unrouted(&self) -> Vec<String> {
        let mut v = vec![self.names.delay_cascade_unrouted()];
        if self.names.shares_delay_cascade() {
            v.push(self.names.delay_unrouted());
        }
        v
    }

    /// The level exchanges (topic), the unrouted exchange(s) (fanout), the
    /// exit (topic, with the cascade's unrouted exchange as its alternate)
    /// and the namespace's delivery exchange (topic, with the namespace's
    /// unrouted exchange as its alternate).
    pub fn exchanges(&self) -> Vec<ExchangeSpec> {
        let mut v: Vec<ExchangeSpec> = (0..DELAY_LEVELS)
            .map(|level| ExchangeSpec {
                name: self.names.delay_level(level),
                kind: ExchangeKind::Topic,
                arguments: Vec::new(),
            })
            .collect();
        v.extend(self.unrouted().into_iter().map(|name| ExchangeSpec {
            name,
            kind: ExchangeKind::Fanout,
            arguments: Vec::new(),
        }));
        v.push(ExchangeSpec {
            name: self.names.delay_exit(),
            kind: ExchangeKind::Topic,
            arguments: vec![(
                "alternate-exchange",
                AMQPValue::LongString(self.names.delay_cascade_unrouted().into()),
            )],
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

    /// The names of the queues and exchanges that belong to this namespace
    /// alone: everything when the cascade is its own, else its delivery
    /// and unrouted exchanges and its unrouted queue. What a namespace's
    /// clean-up may delete.
    pub fn owned_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.queues().into_iter().map(|q| q.name).collect();
        v.extend(self.exchanges().into_iter().map(|x| x.name));
        if self.names.shares_delay_cascade() {
            let own = [
                self.names.delay_delivery_exchange(),
                self.names.delay_unrouted(),
            ];
            v.retain(|n| own.contains(n));
        }
        v.sort();
        v.dedup();
        v
    }

    /// The names of the exchanges among [`DelayCascade::owned_names`]:
    /// the cascade's exchanges a namespace's clean-up may delete.
    pub fn owned_exchanges(&self) -> Vec<String> {
        let owned = self.owned_names();
        self.exchanges()
            .into_iter()
            .map(|x| x.name)
            .filter(|x| owned.contains(x))
            .collect()
    }

    /// The level queues, then the unrouted queue(s).
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
        v.extend(self.unrouted().into_iter().map(|name| QueueSpec {
            name,
            arguments: Vec::new(),
        }));
        v
    }

    /// Each level's queue takes the messages whose bit of that level is 1;
    /// an unrouted queue takes everything its exchange gets.
    pub fn bindings(&self) -> Vec<Binding> {
        let mut v: Vec<Binding> = (0..DELAY_LEVELS)
            .map(|level| Binding {
                queue: self.names.delay_level(level),
                exchange: self.names.delay_level(level),
                key: level_key(level, '1'),
            })
            .collect();
        v.extend(self.unrouted().into_iter().map(|name| Binding {
            queue: name.clone(),
            exchange: name,
            key: String::new(),
        }));
        v
    }

    /// Each level's exchange passes the messages whose bit of that level is
    /// 0 on to the level below (or the exit); the exit passes the
    /// namespace's messages on to its delivery exchange.
    pub fn exchange_bindings(&self) -> Vec<ExchangeBinding> {
        let mut v: Vec<ExchangeBinding> = (0..DELAY_LEVELS)
            .map(|level| ExchangeBinding {
                destination: self.below(level),
                source: self.names.delay_level(level),
                key: level_key(level, '0'),
            })
            .collect();
        v.push(ExchangeBinding {
            destination: self.names.delay_delivery_exchange(),
            source: self.names.delay_exit(),
            key: namespace_key(&self.names),
        });
        v
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
        while exchange != names.delay_exit() {
            let level: u32 = exchange.rsplit('.').next().unwrap().parse().unwrap();
            let bit = words[(DELAY_LEVELS - 1 - level) as usize];
            if bit == "1" {
                waited.push(level);
            }
            exchange = cascade.below(level);
        }
        assert_eq!(words[DELAY_LEVELS as usize], names.namespace());
        let rest = words[DELAY_LEVELS as usize + 1..].join(".");
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
            r.routing_key.ends_with(".1.0.1.w.email.send"),
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
        let w = Names::new("w");
        assert!(delivery_key(&w, "email.#").ends_with(".*.w.email.#"));
        assert!(queue_key(&w, "w.email").ends_with(".*.w.@w.email"));
        let c = DelayCascade::new(&w);
        assert_eq!(c.queues().len(), DELAY_LEVELS as usize + 1);
        assert_eq!(c.exchanges().len(), DELAY_LEVELS as usize + 3);
        let bindings = c.exchange_bindings();
        let last = &bindings[0];
        assert_eq!(
            (last.source.as_str(), last.destination.as_str()),
            ("w.delay.00", "w.delay.exit")
        );
        let exit = bindings.last().unwrap();
        assert_eq!(
            (exit.source.as_str(), exit.destination.as_str()),
            ("w.delay.exit", "w.delay.delivery")
        );
        assert_eq!(exit.key, format!("{}w.#", skip(DELAY_LEVELS)));
        assert_eq!(c.owned_names().len(), DELAY_LEVELS as usize + 3);
    }

    #[test]
    fn namespaces_can_share_one_cascade() {
        let a = Names::new("a").with_delay_cascade("shared");
        let r = route(&a, Duration::from_secs(3), Destination::TaskType("x.y")).unwrap();
        assert_eq!(r.exchange, "shared.delay.01");
        let (waited, rest) = walk(&a, &r);
        assert_eq!((waited, rest.as_str()), (vec![1, 0], "x.y"));
        let c = DelayCascade::new(&a);
        let exit = c.exchange_bindings().pop().unwrap();
        assert_eq!(
            (exit.source.as_str(), exit.destination.as_str()),
            ("shared.delay.exit", "a.delay.delivery")
        );
        // The shared cascade's objects are not the namespace's to delete.
        assert_eq!(
            c.owned_names(),
            vec!["a.delay.delivery".to_owned(), "a.delay.unrouted".to_owned()]
        );
        assert_eq!(c.queues().len(), DELAY_LEVELS as usize + 2);
        // Sharing with oneself is having one's own.
        let own = Names::new("a").with_delay_cascade("a");
        assert!(!own.shares_delay_cascade());
    }
}
