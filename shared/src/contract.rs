//! Warren's public message contract: every exchange, queue and header name,
//! derived from one namespace so environments and tests share a broker.
//!
//! Changing anything here changes Warren's public API; the README and
//! `asyncapi.yaml` describe the same names (`shared/tests/asyncapi.rs`
//! holds the document to them).

use std::time::Duration;

use lapin::types::{AMQPValue, FieldTable, ShortString};

/// Content type of every task body.
pub const CONTENT_TYPE_JSON: &str = "application/json";
/// AMQP `delivery_mode` for persistent messages.
pub const PERSISTENT: u8 = 2;
/// Highest priority a producer may set; the work queues use `x-max-priority`
/// of [`QUEUE_MAX_PRIORITY`].
pub const MAX_PRIORITY: u8 = 9;
/// `x-max-priority` of every work queue: priorities 0-9 are served, 9 first.
pub const QUEUE_MAX_PRIORITY: i32 = 10;

/// Header names. `traceparent`/`tracestate` are W3C trace context; the rest
/// are Warren's own.
pub mod headers {
    /// W3C trace context: the producer's (or the failed attempt's) span.
    pub const TRACEPARENT: &str = "traceparent";
    /// W3C trace state, carried along with `traceparent`.
    pub const TRACESTATE: &str = "tracestate";
    /// Attempt number of this delivery (absent: 1); on a parking-lot copy,
    /// the attempts made.
    pub const ATTEMPT: &str = "x-warren-attempt";
    /// A failed task's error kind (a short slug, e.g. `smtp_transient`).
    pub const ERROR_KIND: &str = "x-warren-error-kind";
    /// A failed task's error message (at most 4 KiB).
    pub const ERROR: &str = "x-warren-error";
    /// When the task first failed (RFC 3339).
    pub const FIRST_FAILURE_AT: &str = "x-warren-first-failure-at";
    /// When the task last failed (RFC 3339).
    pub const LAST_FAILURE_AT: &str = "x-warren-last-failure-at";
    /// The worker that saw the last failure, `<service>@<host>/<pid>`.
    pub const WORKER: &str = "x-warren-worker";
    /// When a retried task's next attempt starts (RFC 3339).
    pub const NEXT_ATTEMPT_AT: &str = "x-warren-next-attempt-at";
    /// Why a task is in the parking lot: `permanent` or `attempts_exhausted`.
    pub const DEAD_REASON: &str = "x-warren-dead-reason";
    /// The exchange the task was first published to.
    pub const ORIGINAL_EXCHANGE: &str = "x-warren-original-exchange";
    /// The routing key the task was first published with.
    pub const ORIGINAL_ROUTING_KEY: &str = "x-warren-original-routing-key";
    /// Publish time in milliseconds since the Unix epoch (the AMQP
    /// `timestamp` property has whole seconds only), for queue-wait metrics.
    pub const PUBLISHED_AT_MS: &str = "x-warren-published-at-ms";
    /// On a follow-up task published by a handler (`ctx.publish`): the id
    /// of the task that published it.
    pub const CAUSATION_ID: &str = "x-warren-causation-id";
    /// When the task is due, in milliseconds since the Unix epoch. A
    /// producer may set it on a task it publishes to the tasks exchange: a
    /// worker that receives it early moves it into the delay cascade
    /// (`{ns}.delay.*`) instead of running it. Warren's own publisher sets
    /// it on every task it sends through the cascade.
    pub const ETA_MS: &str = "x-warren-eta-ms";
    /// How long after publishing (`x-warren-published-at-ms`, else when a
    /// worker first receives it) the task is due, in milliseconds; the
    /// worker turns it into `x-warren-eta-ms` when it defers the task.
    pub const DELAY_MS: &str = "x-warren-delay-ms";
    /// A chain's routing slip (JSON, see `crate::workflow::Slip`): the
    /// chain's id, this step's number and the steps still to run. Retry
    /// and parking-lot copies carry it unchanged.
    pub const CHAIN: &str = "x-warren-chain";
    /// When the task expires, in milliseconds since the Unix epoch: a
    /// worker that receives it later parks it (`expired`) without running
    /// it. Set by the Celery bridge from Celery's `expires`; any producer
    /// may set it.
    pub const EXPIRES_MS: &str = "x-warren-expires-at-ms";
    /// On a task handed on by the Celery bridge: the Celery task name. Its
    /// presence makes a worker with a Celery result backend write the
    /// task's states in Celery's format.
    pub const CELERY_TASK: &str = "x-warren-celery-task";
    /// On a task handed on by the Celery bridge: Celery's `root_id`.
    pub const CELERY_ROOT_ID: &str = "x-warren-celery-root-id";

    /// Every header Warren writes.
    pub const ALL: &[&str] = &[
        TRACEPARENT,
        TRACESTATE,
        ATTEMPT,
        ERROR_KIND,
        ERROR,
        FIRST_FAILURE_AT,
        LAST_FAILURE_AT,
        WORKER,
        NEXT_ATTEMPT_AT,
        DEAD_REASON,
        ORIGINAL_EXCHANGE,
        ORIGINAL_ROUTING_KEY,
        PUBLISHED_AT_MS,
        CAUSATION_ID,
        ETA_MS,
        DELAY_MS,
        CHAIN,
        EXPIRES_MS,
        CELERY_TASK,
        CELERY_ROOT_ID,
    ];
}

/// AMQP `type` of a single task lifecycle event on the events exchange:
/// what Warren wrote before envelopes, still read by every stream reader.
pub const EVENT_MESSAGE_TYPE: &str = "warren.task_event";

/// AMQP `type` of an envelope of task lifecycle events: one message holding
/// many events, in the order they happened.
pub const EVENT_ENVELOPE_MESSAGE_TYPE: &str = "warren.task_events";

/// `content_type` of an envelope of task lifecycle events, version 1: a
/// JSON array of events. The version is in the content type; a reader
/// skips (and logs) envelopes of a version it does not know.
pub const EVENT_ENVELOPE_CONTENT_TYPE: &str = "application/vnd.warren.task-events.v1+json";

/// Headers and arguments RabbitMQ itself sets or reads, which Warren's
/// readers rely on (and `asyncapi.yaml` documents). Warren never writes the
/// `x-death` family; the broker adds it whenever it dead-letters a message.
pub mod broker_headers {
    /// Added to deliveries from a stream: the message's offset. Also the
    /// consumer argument that says where to start reading (`first`).
    pub const STREAM_OFFSET: &str = "x-stream-offset";
    /// Each time the broker dead-lettered the message: queue, reason,
    /// count, time.
    pub const X_DEATH: &str = "x-death";
    /// The queue a message the broker dead-lettered was first dead-lettered from.
    pub const X_FIRST_DEATH_QUEUE: &str = "x-first-death-queue";
    /// Why the broker dead-lettered it (`expired`, `rejected`, `maxlen`, ...).
    pub const X_FIRST_DEATH_REASON: &str = "x-first-death-reason";
    /// The exchange it was published to before the broker dead-lettered it.
    pub const X_FIRST_DEATH_EXCHANGE: &str = "x-first-death-exchange";
    /// On every delivery from a quorum queue: how many times the message
    /// was delivered before and never settled (0 on the first delivery).
    /// The worker parks a task whose count reached `broker.delivery_limit`.
    pub const X_DELIVERY_COUNT: &str = "x-delivery-count";

    /// Every one of them.
    pub const ALL: &[&str] = &[
        STREAM_OFFSET,
        X_DEATH,
        X_FIRST_DEATH_QUEUE,
        X_FIRST_DEATH_REASON,
        X_FIRST_DEATH_EXCHANGE,
        X_DELIVERY_COUNT,
    ];
}

/// Why a task sits in the parking lot (`x-warren-dead-reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadReason {
    /// The failure will not heal (bad input, SMTP 5xx).
    Permanent,
    /// A transient failure outlasted the retry ladder.
    AttemptsExhausted,
    /// The task was delivered `broker.delivery_limit` times and never
    /// settled: each time, the worker process died with it (an abort, an
    /// out-of-memory kill). Also RabbitMQ's `x-first-death-reason` when a
    /// quorum queue's `x-delivery-limit` dead-letters it.
    DeliveryLimit,
}

impl DeadReason {
    /// Every reason.
    pub const ALL: [DeadReason; 3] = [
        DeadReason::Permanent,
        DeadReason::AttemptsExhausted,
        DeadReason::DeliveryLimit,
    ];

    /// `permanent`, `attempts_exhausted` or `delivery_limit`, as in the
    /// `x-warren-dead-reason` header.
    pub fn as_str(self) -> &'static str {
        match self {
            DeadReason::Permanent => "permanent",
            DeadReason::AttemptsExhausted => "attempts_exhausted",
            DeadReason::DeliveryLimit => "delivery_limit",
        }
    }
}

/// Every broker name of one namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    namespace: String,
    /// The prefix of the delay cascade's levels, when several namespaces
    /// share one cascade (`broker.delay_cascade`); else the namespace.
    delay_cascade: Option<String>,
}

impl Names {
    /// The names of `namespace`, with a delay cascade of its own.
    pub fn new(namespace: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            delay_cascade: None,
        }
    }

    /// The same names, delaying through the cascade of prefix `cascade`
    /// (`{cascade}.delay.00` ...), which other namespaces of the virtual
    /// host may share. Equal to the namespace, or empty, means the
    /// namespace's own cascade.
    pub fn with_delay_cascade(mut self, cascade: impl Into<String>) -> Self {
        let cascade = cascade.into();
        self.delay_cascade = (!cascade.is_empty() && cascade != self.namespace).then_some(cascade);
        self
    }

    /// The namespace every name of this set starts with.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The prefix of the delay cascade's names: the shared cascade's, or
    /// the namespace.
    pub fn delay_cascade(&self) -> &str {
        self.delay_cascade.as_deref().unwrap_or(&self.namespace)
    }

    /// Whether the delay cascade is shared with other namespaces (and so
    /// not this namespace's to delete).
    pub fn shares_delay_cascade(&self) -> bool {
        self.delay_cascade.is_some()
    }

    /// The topic exchange producers publish tasks to.
    pub fn tasks_exchange(&self) -> String {
        format!("{}.tasks", self.namespace)
    }

    /// The direct exchange in front of every parking lot.
    pub fn dead_exchange(&self) -> String {
        format!("{}.dead", self.namespace)
    }

    /// The work queue of a service's queue stem (`email` -> `warren.email`).
    pub fn work_queue(&self, stem: &str) -> String {
        format!("{}.{}", self.namespace, stem)
    }

    /// The topic exchange task lifecycle events go to.
    pub fn events_exchange(&self) -> String {
        format!("{}.events", self.namespace)
    }

    /// The stream queue that keeps task events for replay.
    pub fn events_stream(&self) -> String {
        format!("{}.events.stream", self.namespace)
    }

    /// The exclusive, auto-deleted queue whose holder is the one status
    /// indexer of the namespace (a lock the broker releases when the
    /// holder's connection goes, a `kill -9` included).
    pub fn indexer_lock(&self) -> String {
        format!("{}.events.indexer", self.namespace)
    }

    /// The parking lot of a work queue (`warren.email.dead`).
    pub fn dead_queue(&self, stem: &str) -> String {
        format!("{}.{}.dead", self.namespace, stem)
    }

    /// Level `level` of the delay cascade (`warren.delay.07`): the topic
    /// exchange and the queue whose TTL is 2^level seconds share the name.
    pub fn delay_level(&self, level: u32) -> String {
        format!("{}.delay.{level:02}", self.delay_cascade())
    }

    /// The topic exchange at the foot of the delay cascade
    /// (`warren.delay.exit`): every namespace on the cascade binds its
    /// delivery exchange to it for the routing keys that name it, and what
    /// no namespace takes goes to the cascade's unrouted exchange.
    pub fn delay_exit(&self) -> String {
        format!("{}.delay.exit", self.delay_cascade())
    }

    /// Where a due task goes when no namespace on the cascade takes it
    /// (`warren.delay.unrouted` with the namespace's own cascade).
    pub fn delay_cascade_unrouted(&self) -> String {
        format!("{}.delay.unrouted", self.delay_cascade())
    }

    /// The namespace's topic exchange below the cascade's exit, to which
    /// the work queues are bound (`warren.delay.delivery`).
    pub fn delay_delivery_exchange(&self) -> String {
        format!("{}.delay.delivery", self.namespace)
    }

    /// Where a delayed task goes when, once due, no queue is bound for it
    /// (`warren.delay.unrouted`): the alternate exchange of the delivery
    /// exchange, and the queue that keeps such tasks.
    pub fn delay_unrouted(&self) -> String {
        format!("{}.delay.unrouted", self.namespace)
    }

    /// One rung of the retry ladder (`warren.email.retry.30s`).
    pub fn retry_queue(&self, stem: &str, delay: Duration) -> String {
        format!("{}.{}.retry.{}", self.namespace, stem, delay_label(delay))
    }
}

/// `1s`, `30s`, `2m`, `1h`, `200ms`: the suffix of a delay queue's name.
pub fn delay_label(delay: Duration) -> String {
    let ms = delay.as_millis();
    if ms == 0 {
        "0s".to_owned()
    } else if ms.is_multiple_of(3_600_000) {
        format!("{}h", ms / 3_600_000)
    } else if ms.is_multiple_of(60_000) {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1_000) {
        format!("{}s", ms / 1_000)
    } else {
        format!("{ms}ms")
    }
}

/// Reads a header as a string, whichever AMQP string type carries it.
pub fn header_str(headers: Option<&FieldTable>, name: &str) -> Option<String> {
    let value = headers?.inner().get(name)?;
    match value {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

/// Reads a header as a signed 64-bit integer: any AMQP integer type, a
/// float or double holding a whole number (what JavaScript clients send
/// for a number), or a decimal string (long or short). Anything else, and
/// a value that does not fit, is `None`. The one reader of integer
/// headers: [`header_u32`] is built on it, so both agree on every type.
pub fn header_i64(headers: Option<&FieldTable>, name: &str) -> Option<i64> {
    amqp_i64(headers?.inner().get(name)?)
}

/// [`header_i64`] on a value.
fn amqp_i64(value: &AMQPValue) -> Option<i64> {
    // The largest float below 2^63: `as` would saturate silently above it.
    const LIMIT: f64 = 9_223_372_036_854_775_807.0;
    let whole = |f: f64| (f.is_finite() && f.fract() == 0.0 && f.abs() < LIMIT).then_some(f as i64);
    match *value {
        AMQPValue::ShortShortInt(v) => Some(v.into()),
        AMQPValue::ShortShortUInt(v) => Some(v.into()),
        AMQPValue::ShortInt(v) => Some(v.into()),
        AMQPValue::ShortUInt(v) => Some(v.into()),
        AMQPValue::LongInt(v) => Some(v.into()),
        AMQPValue::LongUInt(v) => Some(v.into()),
        AMQPValue::LongLongInt(v) => Some(v),
        AMQPValue::Float(v) => whole(v.into()),
        AMQPValue::Double(v) => whole(v),
        AMQPValue::LongString(ref s) => std::str::from_utf8(s.as_bytes()).ok()?.trim().parse().ok(),
        AMQPValue::ShortString(ref s) => s.as_str().trim().parse().ok(),
        _ => None,
    }
}

/// Reads a header as an unsigned 32-bit count (an attempt number), from
/// whatever [`header_i64`] reads: a negative value is `None`, one above
/// `u32::MAX` is `u32::MAX` (past any attempt limit, so a task claiming
/// that many attempts is parked, never started over).
pub fn header_u32(headers: Option<&FieldTable>, name: &str) -> Option<u32> {
    let n = header_i64(headers, name)?;
    (n >= 0).then(|| u32::try_from(n).unwrap_or(u32::MAX))
}

/// The attempt a delivery carries (`x-warren-attempt`, read by
/// [`header_u32`]): 1 when it is absent, unreadable, negative or 0.
pub fn attempt(headers: Option<&FieldTable>) -> u32 {
    header_u32(headers, self::headers::ATTEMPT)
        .unwrap_or(1)
        .max(1)
}

/// When the broker last dead-lettered the message: the `time` of the
/// first entry of `x-death` that has one (RabbitMQ keeps the array most
/// recent first). `None` when the header is absent, is not an array of
/// tables, or holds no time chrono can represent.
pub fn death_time(headers: Option<&FieldTable>) -> Option<chrono::DateTime<chrono::Utc>> {
    let AMQPValue::FieldArray(deaths) = headers?.inner().get(broker_headers::X_DEATH)? else {
        return None;
    };
    deaths.as_slice().iter().find_map(|d| match d {
        AMQPValue::FieldTable(t) => match t.inner().get("time") {
            Some(AMQPValue::Timestamp(ts)) => {
                chrono::DateTime::from_timestamp(i64::try_from(*ts).ok()?, 0)
            }
            _ => None,
        },
        _ => None,
    })
}

/// Sets a string header.
pub fn set_str(table: &mut FieldTable, name: &str, value: impl Into<String>) {
    table.insert(
        ShortString::from(name),
        AMQPValue::LongString(value.into().into()),
    );
}

/// Sets an integer header (AMQP long-long, as most clients read it).
pub fn set_int(table: &mut FieldTable, name: &str, value: i64) {
    table.insert(ShortString::from(name), AMQPValue::LongLongInt(value));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_namespace() {
        let n = Names::new("warren");
        assert_eq!(n.tasks_exchange(), "warren.tasks");
        assert_eq!(n.dead_exchange(), "warren.dead");
        assert_eq!(n.work_queue("email"), "warren.email");
        assert_eq!(n.dead_queue("email"), "warren.email.dead");
        assert_eq!(
            n.retry_queue("email", Duration::from_secs(120)),
            "warren.email.retry.2m"
        );
        let t = Names::new("t-123");
        assert_eq!(t.work_queue("email"), "t-123.email");
    }

    #[test]
    fn delay_labels_are_short_and_exact() {
        assert_eq!(delay_label(Duration::from_secs(1)), "1s");
        assert_eq!(delay_label(Duration::from_secs(30)), "30s");
        assert_eq!(delay_label(Duration::from_secs(600)), "10m");
        assert_eq!(delay_label(Duration::from_secs(7200)), "2h");
        assert_eq!(delay_label(Duration::from_millis(200)), "200ms");
        assert_eq!(delay_label(Duration::from_millis(1500)), "1500ms");
    }

    #[test]
    fn integer_headers_are_read_whatever_their_amqp_type() {
        let mut t = FieldTable::default();
        t.insert("a".into(), AMQPValue::LongInt(3));
        t.insert("b".into(), AMQPValue::ShortShortUInt(4));
        t.insert("c".into(), AMQPValue::LongString("5".into()));
        t.insert("d".into(), AMQPValue::LongLongInt(-1));
        assert_eq!(header_u32(Some(&t), "a"), Some(3));
        assert_eq!(header_u32(Some(&t), "b"), Some(4));
        assert_eq!(header_u32(Some(&t), "c"), Some(5));
        assert_eq!(header_u32(Some(&t), "d"), None);
        assert_eq!(header_u32(None, "a"), None);
    }

    #[test]
    fn both_integer_readers_take_a_short_string_and_a_whole_float() {
        let mut t = FieldTable::default();
        t.insert("s".into(), AMQPValue::ShortString("7".into()));
        t.insert("f".into(), AMQPValue::Double(3.0));
        t.insert("g".into(), AMQPValue::Float(2.5));
        t.insert("big".into(), AMQPValue::LongLongInt(1 << 40));
        assert_eq!(header_i64(Some(&t), "s"), Some(7));
        assert_eq!(header_u32(Some(&t), "s"), Some(7));
        assert_eq!(header_u32(Some(&t), "f"), Some(3));
        assert_eq!(header_u32(Some(&t), "g"), None);
        assert_eq!(header_u32(Some(&t), "big"), Some(u32::MAX));
    }

    /// Fuzzing the readers of AMQP headers (docs/development.md, "Fuzzing"):
    /// whatever a producer's client put in a header, of any AMQP type,
    /// nested as deep as it likes, the readers never panic, agree with
    /// each other, and read every integer type alike.
    mod fuzz {
        use proptest::prelude::*;

        use super::*;

        /// Any AMQP field value, tables and arrays nested.
        fn any_value() -> impl Strategy<Value = AMQPValue> {
            let leaf = prop_oneof![
                any::<bool>().prop_map(AMQPValue::Boolean),
                any::<i8>().prop_map(AMQPValue::ShortShortInt),
                any::<u8>().prop_map(AMQPValue::ShortShortUInt),
                any::<i16>().prop_map(AMQPValue::ShortInt),
                any::<u16>().prop_map(AMQPValue::ShortUInt),
                any::<i32>().prop_map(AMQPValue::LongInt),
                any::<u32>().prop_map(AMQPValue::LongUInt),
                any::<i64>().prop_map(AMQPValue::LongLongInt),
                any::<f32>().prop_map(AMQPValue::Float),
                any::<f64>().prop_map(AMQPValue::Double),
                (any::<u8>(), any::<u32>()).prop_map(|(scale, value)| {
                    AMQPValue::DecimalValue(lapin::types::DecimalValue { scale, value })
                }),
                "\\PC{0,20}".prop_map(|s| AMQPValue::ShortString(s.into())),
                proptest::collection::vec(any::<u8>(), 0..24)
                    .prop_map(|b| AMQPValue::LongString(b.into())),
                any::<i64>().prop_map(|n| AMQPValue::LongString(format!(" {n} ").into())),
                any::<u64>().prop_map(AMQPValue::Timestamp),
                proptest::collection::vec(any::<u8>(), 0..8)
                    .prop_map(|b| AMQPValue::ByteArray(b.into())),
                Just(AMQPValue::Void),
            ];
            leaf.prop_recursive(3, 24, 4, |inner| {
                prop_oneof![
                    proptest::collection::vec(inner.clone(), 0..4)
                        .prop_map(|v| AMQPValue::FieldArray(v.into())),
                    proptest::collection::vec(("[a-z-]{1,12}", inner), 0..4).prop_map(|kv| {
                        let mut t = FieldTable::default();
                        for (k, v) in kv {
                            t.insert(k.into(), v);
                        }
                        AMQPValue::FieldTable(t)
                    }),
                ]
            })
        }

        fn table(value: AMQPValue) -> FieldTable {
            let mut t = FieldTable::default();
            t.insert(headers::ATTEMPT.into(), value);
            t
        }

        proptest! {
            #[test]
            fn the_readers_agree_on_any_value(value in any_value()) {
                let t = table(value);
                let h = Some(&t);
                let wide = header_i64(h, headers::ATTEMPT);
                let narrow = header_u32(h, headers::ATTEMPT);
                prop_assert_eq!(
                    narrow,
                    wide.filter(|n| *n >= 0).map(|n| u32::try_from(n).unwrap_or(u32::MAX))
                );
                prop_assert!(attempt(h) >= 1);
                let _ = header_str(h, headers::ATTEMPT);
            }

            #[test]
            fn x_death_of_any_shape_reads_without_panicking(
                deaths in proptest::collection::vec(any_value(), 0..4),
                time in any::<u64>(),
                first in any::<bool>(),
            ) {
                let mut t = FieldTable::default();
                let mut entries = deaths;
                let mut entry = FieldTable::default();
                entry.insert("queue".into(), AMQPValue::LongString("w.email".into()));
                entry.insert("time".into(), AMQPValue::Timestamp(time));
                if first {
                    entries.insert(0, AMQPValue::FieldTable(entry));
                }
                t.insert(broker_headers::X_DEATH.into(), AMQPValue::FieldArray(entries.into()));
                let read = death_time(Some(&t));
                if first {
                    let expected = i64::try_from(time)
                        .ok()
                        .and_then(|s| chrono::DateTime::from_timestamp(s, 0));
                    if expected.is_some() {
                        prop_assert_eq!(read, expected);
                    }
                }
                // Not an array: nothing, whatever it is.
                let mut other = FieldTable::default();
                other.insert(broker_headers::X_DEATH.into(), AMQPValue::Timestamp(time));
                prop_assert_eq!(death_time(Some(&other)), None);
            }

            #[test]
            fn every_integer_type_reads_as_its_number(n in any::<i64>()) {
                let mut forms = vec![
                    AMQPValue::LongLongInt(n),
                    AMQPValue::LongString(n.to_string().into()),
                    AMQPValue::ShortString(n.to_string().into()),
                ];
                if let Ok(v) = i8::try_from(n) { forms.push(AMQPValue::ShortShortInt(v)); }
                if let Ok(v) = u8::try_from(n) { forms.push(AMQPValue::ShortShortUInt(v)); }
                if let Ok(v) = i16::try_from(n) { forms.push(AMQPValue::ShortInt(v)); }
                if let Ok(v) = u16::try_from(n) { forms.push(AMQPValue::ShortUInt(v)); }
                if let Ok(v) = i32::try_from(n) {
                    forms.push(AMQPValue::LongInt(v));
                    forms.push(AMQPValue::Double(v.into()));
                }
                if let Ok(v) = u32::try_from(n) { forms.push(AMQPValue::LongUInt(v)); }
                for form in forms {
                    let t = table(form.clone());
                    prop_assert_eq!(header_i64(Some(&t), headers::ATTEMPT), Some(n), "{:?}", form);
                    let expected = if n < 1 { 1 } else { u32::try_from(n).unwrap_or(u32::MAX) };
                    prop_assert_eq!(attempt(Some(&t)), expected, "{:?}", form);
                }
            }
        }
    }
}
