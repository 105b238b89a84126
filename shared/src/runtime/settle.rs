//! Settling a delivery: an ack once the work is done, or, for a failed
//! attempt, a confirmed copy first (to the next delay queue while attempts
//! remain and the failure may heal, to the parking lot with its reason
//! otherwise) and then the ack. A copy that cannot be published hands the
//! original back to its queue: nothing is lost, and nothing waits unacked
//! in memory for a retry.

use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use lapin::BasicProperties;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use lapin::types::FieldTable;
use tracing::{debug, warn};

use super::Inner;
use super::record::{DeadLettered, Duplicate, HandedBack, Recorder, Retried, Succeeded};
use super::session::Outbound;
use crate::contract::{self, DeadReason, PERSISTENT, headers};
use crate::publisher::{PublishError, Purpose};
use crate::topology::retry_delay;
use crate::{Outcome, TaskContext, TaskError, trace};

/// Acks a duplicate of a task that already succeeded.
pub(super) async fn duplicate(delivery: &Delivery, rec: &Recorder<'_>) {
    ack(delivery).await;
    rec.record(Duplicate).await;
}

/// Marks the task done (for the idempotency store) and acks it.
pub(super) async fn success(
    inner: &Inner,
    delivery: &Delivery,
    rec: &Recorder<'_>,
    outcome: &Outcome,
    elapsed: Duration,
) {
    inner.dispatch().mark_done(rec.ctx).await;
    ack(delivery).await;
    let result = outcome.result.as_ref();
    rec.record(Succeeded { result, elapsed }).await;
}

/// One failed attempt being settled: everything retry and dead-lettering
/// need.
#[derive(Clone, Copy)]
pub(super) struct Failure<'a> {
    pub(super) inner: &'a Inner,
    pub(super) out: &'a Outbound,
    pub(super) delivery: &'a Delivery,
    pub(super) rec: &'a Recorder<'a>,
    pub(super) err: &'a TaskError,
    pub(super) elapsed: Duration,
}

/// What becomes of a failed attempt. The one decision both the AMQP
/// runtime (below) and the in-memory test kit (`warren::testing`) act on,
/// so the two cannot drift apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Run again as attempt `next_attempt`, `delay` from now.
    Retry {
        /// The attempt the copy will be (2 for the first retry).
        next_attempt: u32,
        /// The retry ladder's delay before it.
        delay: Duration,
    },
    /// Park it in the dead-letter queue with this reason.
    Park(DeadReason),
}

/// Decides a failed attempt: retried while attempts remain and the
/// failure may heal (after the ladder's delay), else parked with its
/// reason. No ladder means no retry.
pub(crate) fn decide(
    err: &TaskError,
    attempt: u32,
    max_attempts: u32,
    retry_delays: &[Duration],
) -> Verdict {
    if err.is_permanent() {
        return Verdict::Park(DeadReason::Permanent);
    }
    let next_attempt = attempt.saturating_add(1);
    match retry_delay(retry_delays, next_attempt) {
        Some(delay) if attempt < max_attempts => Verdict::Retry {
            next_attempt,
            delay,
        },
        _ => Verdict::Park(DeadReason::AttemptsExhausted),
    }
}

/// Settles a failed attempt as [`decide`] says.
pub(super) async fn failure(f: Failure<'_>) {
    let ctx = f.rec.ctx;
    match decide(
        f.err,
        ctx.attempt,
        ctx.max_attempts,
        &f.inner.consumer.retry_delays,
    ) {
        Verdict::Retry {
            next_attempt,
            delay,
        } => retry(f, next_attempt, delay).await,
        Verdict::Park(reason) => dead_letter(f, reason).await,
    }
}

impl Failure<'_> {
    /// The copy was not published: give the original back, after a pause
    /// so a persistent failure does not spin. A copy that failed on a
    /// broken channel (closed by a soft error such as a deleted exchange,
    /// or by a lost connection) asks for a fresh session: new channels,
    /// topology declared again.
    async fn hand_back(&self, copy: Purpose, queue: &str, e: &PublishError) {
        let error = self.err;
        self.rec
            .record(HandedBack {
                error,
                copy,
                publish_error: e,
                queue,
            })
            .await;
        if matches!(e, PublishError::Broker(_)) {
            self.out.restart.cancel();
        }
        tokio::time::sleep(HAND_BACK_PAUSE).await;
        nack_requeue(self.delivery).await;
    }
}

/// Publishes the task's copy to the next delay queue, then acks the
/// original; if the copy cannot be published, hands the original back.
async fn retry(f: Failure<'_>, next_attempt: u32, delay: Duration) {
    let Failure {
        inner,
        out,
        delivery,
        rec,
        err,
        elapsed,
    } = f;
    let ctx = rec.ctx;
    let Some(rung) = inner.topology.rung(delay) else {
        // Every delay of the ladder has its rung; this cannot happen.
        return dead_letter(f, DeadReason::AttemptsExhausted).await;
    };
    let now = Utc::now();
    let next_at = now + chrono::Duration::from_std(rung.delay).unwrap_or_default();
    let mut hdrs = failure_headers(inner, delivery, err, now);
    contract::set_int(&mut hdrs, headers::ATTEMPT, i64::from(next_attempt));
    contract::set_str(&mut hdrs, headers::NEXT_ATTEMPT_AT, rfc3339(next_at));
    let props = copy_properties(&delivery.properties, ctx, hdrs);
    let retry_queue = rung.queue.name.as_str();
    // The default exchange routes by queue name.
    let published = out
        .publisher
        .publish_for(Purpose::Retry, "", retry_queue, &delivery.data, props)
        .await;
    match published {
        Ok(()) => {
            ack(delivery).await;
            rec.record(Retried {
                error: err,
                elapsed,
                next_attempt,
                delay: rung.delay,
                retry_queue,
                next_attempt_at: next_at,
            })
            .await;
        }
        Err(e) => f.hand_back(Purpose::Retry, retry_queue, &e).await,
    }
}

/// Parks a failed attempt with `reason`, whatever [`decide`] would say:
/// for a task parked before it ran (`delivery_limit`).
pub(super) async fn park(f: Failure<'_>, reason: DeadReason) {
    dead_letter(f, reason).await;
}

/// Publishes the task's copy, with the reason, to the parking lot, then
/// acks the original; if the copy cannot be published, hands the original
/// back (rejecting it would route it through the queue's dead-letter
/// exchange, but if that is what broke, deleted or blocked, the broker
/// would drop it).
async fn dead_letter(f: Failure<'_>, reason: DeadReason) {
    let Failure {
        inner,
        out,
        delivery,
        rec,
        err,
        elapsed,
    } = f;
    let ctx = rec.ctx;
    let mut hdrs = failure_headers(inner, delivery, err, Utc::now());
    contract::set_int(&mut hdrs, headers::ATTEMPT, i64::from(ctx.attempt));
    contract::set_str(&mut hdrs, headers::DEAD_REASON, reason.as_str());
    let props = copy_properties(&delivery.properties, ctx, hdrs);
    let dead_queue = inner.topology.dead_queue.name.as_str();
    // The parking lot is bound to the dead exchange with the work queue's
    // name as its routing key.
    let published = out
        .publisher
        .publish_for(
            Purpose::DeadLetter,
            &inner.topology.dead_exchange,
            &inner.queue,
            &delivery.data,
            props,
        )
        .await;
    match published {
        Ok(()) => {
            ack(delivery).await;
            rec.record(DeadLettered {
                error: err,
                elapsed,
                reason,
                dead_queue,
            })
            .await;
        }
        Err(e) => f.hand_back(Purpose::DeadLetter, dead_queue, &e).await,
    }
}

/// How long a task whose copy could not be published waits before it is
/// handed back, so a persistent failure does not turn into a hot loop.
const HAND_BACK_PAUSE: Duration = Duration::from_secs(1);

/// Headers of a failed task's copy: everything it carried (trace context
/// included), plus why and when it failed and who saw it.
fn failure_headers(
    inner: &Inner,
    delivery: &Delivery,
    err: &TaskError,
    now: DateTime<Utc>,
) -> FieldTable {
    let mut hdrs = delivery.properties.headers().clone().unwrap_or_default();
    let existing = Some(&hdrs);
    let first =
        contract::header_str(existing, headers::FIRST_FAILURE_AT).unwrap_or_else(|| rfc3339(now));
    let original_exchange = contract::header_str(existing, headers::ORIGINAL_EXCHANGE)
        .unwrap_or_else(|| delivery.exchange.as_str().to_owned());
    let original_key = contract::header_str(existing, headers::ORIGINAL_ROUTING_KEY)
        .unwrap_or_else(|| delivery.routing_key.as_str().to_owned());
    contract::set_str(&mut hdrs, headers::FIRST_FAILURE_AT, first);
    contract::set_str(&mut hdrs, headers::LAST_FAILURE_AT, rfc3339(now));
    contract::set_str(&mut hdrs, headers::ERROR_KIND, err.kind.as_ref());
    contract::set_str(&mut hdrs, headers::ERROR, truncate(&err.message, 4096));
    contract::set_str(&mut hdrs, headers::WORKER, inner.identity.as_str());
    contract::set_str(&mut hdrs, headers::ORIGINAL_EXCHANGE, original_exchange);
    contract::set_str(&mut hdrs, headers::ORIGINAL_ROUTING_KEY, original_key);
    // The next attempt (or whoever replays the parking lot) continues the
    // trace from this attempt's span.
    trace::inject_span(&tracing::Span::current(), &mut hdrs);
    hdrs
}

/// The properties of a copy: the original's, with the task id and type made
/// explicit, persistence forced, and no `expiration` (the task was already
/// started; a retry must not vanish from its delay queue). `user_id` is
/// dropped because the broker checks it against the publishing user.
fn copy_properties(p: &BasicProperties, ctx: &TaskContext, hdrs: FieldTable) -> BasicProperties {
    let mut out = BasicProperties::default()
        .with_message_id(ctx.id.as_str().into())
        .with_type(ctx.task_type.as_str().into())
        .with_delivery_mode(PERSISTENT)
        .with_headers(hdrs);
    if let Some(v) = p.content_type() {
        out = out.with_content_type(v.clone());
    }
    if let Some(v) = p.content_encoding() {
        out = out.with_content_encoding(v.clone());
    }
    if let Some(v) = p.priority() {
        out = out.with_priority(*v);
    }
    if let Some(v) = p.correlation_id() {
        out = out.with_correlation_id(v.clone());
    }
    if let Some(v) = p.reply_to() {
        out = out.with_reply_to(v.clone());
    }
    if let Some(v) = p.timestamp() {
        out = out.with_timestamp(*v);
    }
    if let Some(v) = p.app_id() {
        out = out.with_app_id(v.clone());
    }
    out
}

/// The longest a task waits for its ack or nack to be written. lapin
/// queues the frame when asked; the wait only says it went out. On a
/// connection that is lost (lapin still recovering it, or the session
/// starting over without it) that can take as long as the recovery, or
/// forever, and a task waiting holds its handler slot all that time: after
/// this long the task lets go. The frame goes out if the connection comes
/// back; otherwise the broker redelivers the task (and the idempotency
/// store keeps a task that succeeded from running again).
const SETTLE_WAIT: Duration = Duration::from_secs(5);

/// Acks the delivery.
pub(super) async fn ack(delivery: &Delivery) {
    match tokio::time::timeout(SETTLE_WAIT, delivery.acker.ack(BasicAckOptions::default())).await {
        Ok(Ok(_)) => {}
        // The channel is gone; the broker requeues the message and the
        // idempotency store keeps a second run from repeating the work.
        Ok(Err(e)) => warn!(error = %e, "Could not ack the task; the broker will redeliver it."),
        Err(_) => warn!(
            wait_ms = SETTLE_WAIT.as_millis() as u64,
            "The ack did not go out in time (is the connection lost?); it goes out if the connection recovers, otherwise the broker redelivers the task."
        ),
    }
}

/// Gives the delivery back to its queue.
pub(super) async fn nack_requeue(delivery: &Delivery) {
    let nack = delivery.acker.nack(BasicNackOptions {
        requeue: true,
        ..Default::default()
    });
    match tokio::time::timeout(SETTLE_WAIT, nack).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            debug!(error = %e, "Could not nack the task; the broker will redeliver it.");
        }
        Err(_) => debug!(
            "The nack did not go out in time (is the connection lost?); the broker redelivers the task if it does not."
        ),
    }
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_retry_along_the_ladder_then_park() {
        let ladder = [Duration::from_secs(1), Duration::from_secs(5)];
        let transient = TaskError::retry("smtp_transient", "421");
        let retry = |next_attempt, secs| Verdict::Retry {
            next_attempt,
            delay: Duration::from_secs(secs),
        };
        assert_eq!(decide(&transient, 1, 4, &ladder), retry(2, 1));
        assert_eq!(decide(&transient, 2, 4, &ladder), retry(3, 5));
        // The last rung repeats.
        assert_eq!(decide(&transient, 3, 4, &ladder), retry(4, 5));
        let exhausted = Verdict::Park(DeadReason::AttemptsExhausted);
        assert_eq!(decide(&transient, 4, 4, &ladder), exhausted);
        // No ladder: no retry.
        assert_eq!(decide(&transient, 1, 4, &[]), exhausted);
        let permanent = TaskError::permanent("invalid_json", "{");
        assert_eq!(
            decide(&permanent, 1, 4, &ladder),
            Verdict::Park(DeadReason::Permanent)
        );
    }

    #[test]
    fn truncation_respects_char_boundaries() {
        assert_eq!(truncate("abc", 5), "abc");
        assert_eq!(truncate("ééé", 3), "é...");
    }
}
