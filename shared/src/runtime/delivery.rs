//! One delivery, from its metadata to the handler's answer: read the
//! task's id, type and attempt off the AMQP properties, open its span
//! (continuing the producer's trace), skip ids that already succeeded, run
//! the handler on a task of its own (a panic or a timeout is a failed
//! attempt, not a dead worker), and hand the answer to [`settle`].
//!
//! [`settle`]: super::settle

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use chrono::{DateTime, Utc};
use lapin::message::Delivery;
use tokio::sync::OwnedSemaphorePermit;
use tracing::{Instrument, info_span, warn};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::attempt::Handled;
use super::context::DeliveryRuntime;
use super::poison::DeliveryCount;
use super::record::{Recorder, Started};
use super::session::Outbound;
use super::settle::{self, Failure};
use super::{Inner, defer};
use crate::contract::{self, DeadReason, headers};
use crate::metrics;
use crate::topology::QueueKind;
use crate::{TaskContext, TaskError, trace};

/// Handles one delivery from start to ack. Never panics, never returns an
/// error: every path ends in ack, a confirmed copy plus ack, or a hand-back.
pub(super) async fn process(
    inner: Arc<Inner>,
    out: Arc<Outbound>,
    delivery: Delivery,
    permit: OwnedSemaphorePermit,
) {
    let Meta { ctx, id_assigned } = read_meta(&delivery, &inner);
    let span = task_span(&inner, &delivery, &ctx);
    // A task that is not due yet goes into the delay cascade untouched: no
    // handler, no event, no metric of a run.
    let early = match defer::due(&delivery, Utc::now()) {
        Ok(defer::Due::Now) => None,
        Ok(defer::Due::Later(eta)) => {
            defer::defer(&inner, &out, &delivery, eta)
                .instrument(span)
                .await;
            drop(permit);
            return;
        }
        Err(e) => Some(e),
    };
    // A task past its `x-warren-expires-at-ms` is parked, not run.
    let early = early.or_else(|| expired(&delivery, Utc::now()));
    // A chain step's routing slip: read before any work, so a bad one parks
    // the step before it runs.
    let (slip, early) = match super::chain::read(&delivery) {
        Ok(slip) => (slip, early),
        Err(e) => (None, early.or(Some(e))),
    };
    async move {
        inner.status.in_flight.fetch_add(1, Ordering::SeqCst);
        let metrics = match inner.task_metrics.get(ctx.task_type.as_str()) {
            Some(m) => Arc::clone(m),
            None => Arc::new(metrics::runtime().for_task(&inner.queue, &ctx.task_type)),
        };
        let celery = inner.celery_results.as_ref().filter(|_| {
            contract::header_str(delivery.properties.headers().as_ref(), headers::CELERY_TASK)
                .is_some()
        });
        let rec = Recorder {
            ctx: &ctx,
            metrics: &metrics,
            events: out.events.as_ref(),
            by: &inner.identity,
            celery,
        };
        // Held back by the type's limits: unacked, not failed; handed back
        // if the worker stops first.
        let Some(_pass) = inner.gates.enter(&ctx.task_type, &inner.stop).await else {
            settle::nack_requeue(&delivery).await;
            inner.status.in_flight.fetch_sub(1, Ordering::SeqCst);
            return;
        };
        let queue_wait = queue_wait(&delivery, &ctx);
        let handled = inner.handlers.contains_key(ctx.task_type.as_str());
        rec.record(Started {
            queue_wait,
            id_assigned,
            handled,
        })
        .await;
        if inner.topology.kind != QueueKind::Classic
            && ctx.priority > 0
            && !inner.priority_warned.swap(true, Ordering::SeqCst)
        {
            warn!(
                priority = ctx.priority,
                "A task has a priority, but quorum queues serve none before RabbitMQ 4.0: it is served in arrival order (logged once)."
            );
        }
        // The deliveries of this attempt that died with a worker: past the
        // limit, the task is parked instead of run again.
        let count = DeliveryCount::of(&inner, &delivery, &ctx).await;
        let poisoned = count.exceeded(inner.delivery_limit);
        let early = poisoned.clone().or(early);
        let started = Instant::now();
        let result = match early {
            // Bad due headers: parked at once with the reason.
            Some(e) => Err(e),
            None => {
                let runtime = DeliveryRuntime::new(inner.clone(), out.clone(), &ctx);
                let result = inner
                    .dispatch()
                    .run(runtime.attach(ctx.clone()), &delivery.data, &runtime.cancel)
                    .await;
                runtime.finish().await;
                result
            }
        };
        // A chain step's success publishes the next step before the ack.
        let result = match (result, &slip) {
            (Ok(Handled::Done(outcome)), Some(slip)) => {
                super::chain::advance(&out, &delivery, &ctx, slip, &outcome)
                    .await
                    .map(|()| Handled::Done(outcome))
            }
            (result, _) => result,
        };
        let elapsed = started.elapsed();
        match result {
            Ok(Handled::Duplicate) => settle::duplicate(&delivery, &rec).await,
            Ok(Handled::Done(outcome)) => {
                settle::success(&inner, &delivery, &rec, &outcome, elapsed).await;
            }
            Err(err) => {
                let (out, delivery, rec, err) = (&out, &delivery, &rec, &err);
                let inner = &*inner;
                let failure = Failure {
                    inner,
                    out,
                    delivery,
                    rec,
                    err,
                    elapsed,
                };
                if poisoned.is_some() {
                    settle::park(failure, DeadReason::DeliveryLimit).await;
                } else {
                    settle::failure(failure).await;
                }
            }
        }
        count.settled(&inner).await;
        metrics.in_progress.dec();
        inner.status.in_flight.fetch_sub(1, Ordering::SeqCst);
        drop(permit);
    }
    .instrument(span)
    .await
}

/// The task's span, continuing the trace of the producer (or of the failed
/// attempt). Its fields are what a log line needs, formatted into JSON
/// once when it opens, for every task; what only an exporter reads (the
/// OpenTelemetry name, kind and messaging attributes) is set on an
/// exported span alone. Not exporting, the span gets its trace context
/// from `trace::start` instead of an OpenTelemetry span.
fn task_span(inner: &Inner, delivery: &Delivery, ctx: &TaskContext) -> tracing::Span {
    let parent = trace::extract(delivery.properties.headers().as_ref());
    if !trace::exporting() {
        let sc = trace::child_of(&parent);
        let span = info_span!(
            "task",
            task_id = %ctx.id,
            task_type = %ctx.task_type,
            attempt = ctx.attempt,
            redelivered = ctx.redelivered,
            trace_id = %sc.trace_id(),
            span_id = %sc.span_id(),
        );
        trace::start(&span, sc);
        return span;
    }
    let span = info_span!(
        "task",
        otel.name = %inner.span_name,
        otel.kind = "consumer",
        task_id = %ctx.id,
        task_type = %ctx.task_type,
        attempt = ctx.attempt,
        redelivered = ctx.redelivered,
        trace_id = tracing::field::Empty,
        span_id = tracing::field::Empty,
    );
    let _ = span.set_parent(parent);
    trace::record_ids(&span);
    trace::messaging_attributes(
        &span,
        trace::Operation::Process,
        &trace::Message {
            destination: &inner.queue,
            routing_key: delivery.routing_key.as_str(),
            id: &ctx.id,
            body_size: delivery.data.len(),
        },
    );
    span
}

/// Seconds the task waited in its queue: since the end of its retry delay
/// for a retry, since its publish otherwise (milliseconds from Warren's
/// header, whole seconds from the AMQP timestamp for other producers).
fn queue_wait(delivery: &Delivery, ctx: &TaskContext) -> Option<f64> {
    let hdrs = delivery.properties.headers().as_ref();
    let now_ms = Utc::now().timestamp_millis();
    let since_ms = if ctx.attempt > 1 {
        contract::header_str(hdrs, headers::NEXT_ATTEMPT_AT)
            .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
            .map(|t| t.timestamp_millis())
    } else if let Some(eta) = contract::header_i64(hdrs, headers::ETA_MS) {
        // A delayed task waits in its queue from its due time on.
        Some(eta)
    } else {
        hdrs.and_then(|h| match h.inner().get(headers::PUBLISHED_AT_MS) {
            Some(lapin::types::AMQPValue::LongLongInt(ms)) => Some(*ms),
            _ => None,
        })
        .or_else(|| ctx.published_at.map(|t| t.timestamp_millis()))
    }?;
    Some((now_ms - since_ms).max(0) as f64 / 1000.0)
}

/// The permanent failure of a task received after its expiry time.
fn expired(delivery: &Delivery, now: DateTime<Utc>) -> Option<TaskError> {
    let at_ms = contract::header_i64(delivery.properties.headers().as_ref(), headers::EXPIRES_MS)?;
    (now.timestamp_millis() >= at_ms).then(|| {
        let at = DateTime::from_timestamp_millis(at_ms)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
            .unwrap_or_else(|| at_ms.to_string());
        TaskError::permanent(
            "expired",
            format!("the task expired at {at} before it was started"),
        )
    })
}

/// The task's metadata as read off a delivery.
struct Meta {
    ctx: TaskContext,
    id_assigned: bool,
}

fn read_meta(delivery: &Delivery, inner: &Inner) -> Meta {
    let props = &delivery.properties;
    let hdrs = props.headers().as_ref();
    let (id, id_assigned) = match props.message_id() {
        Some(id) if !id.as_str().is_empty() => (id.as_str().to_owned(), false),
        _ => (uuid::Uuid::now_v7().to_string(), true),
    };
    let task_type = props
        .kind()
        .as_ref()
        .map(|t| t.as_str().to_owned())
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| delivery.routing_key.as_str().to_owned());
    let published_at = props
        .timestamp()
        .and_then(|ts| i64::try_from(ts).ok())
        .and_then(|ts| DateTime::from_timestamp(ts, 0));
    let max_attempts = inner.dispatch().max_attempts(&task_type);
    let mut ctx = TaskContext::new(id, task_type);
    ctx.attempt = contract::attempt(hdrs);
    ctx.max_attempts = max_attempts;
    ctx.priority = props.priority().unwrap_or(0);
    ctx.published_at = published_at;
    ctx.redelivered = delivery.redelivered;
    ctx.causation_id = contract::header_str(hdrs, headers::CAUSATION_ID);
    Meta { ctx, id_assigned }
}
