//! W3C trace context in AMQP headers, so one trace runs producer, queue,
//! worker, retry, worker.
//!
//! Producers inject `traceparent`/`tracestate` into a task's headers; the
//! runtime extracts them as the parent of the task's span, and injects its
//! own span into retry and parking-lot copies.
//!
//! Two ways to hold a span's trace context, picked once by
//! `telemetry::init`:
//!
//! - **Exporting** (OTLP configured): the OpenTelemetry layer builds a real
//!   span for every tracing span, and the ids are that span's.
//! - **Not exporting**: no OpenTelemetry layer runs at all. The runtime
//!   gives a task's span a [`SpanContext`] of its own, kept in the span's
//!   extensions ([`start`]); spans opened inside it share it, and a task
//!   published outside any such span starts a new trace. Log lines still
//!   carry `trace_id` and `span_id`, and follow-up tasks still carry
//!   `traceparent`, without an OpenTelemetry span built, filled with
//!   attributes and dropped for every task.

use std::sync::atomic::{AtomicBool, Ordering};

use lapin::types::{AMQPValue, FieldTable, ShortString};
use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanContext, TraceContextExt, TraceFlags, TraceState};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::Registry;
use tracing_subscriber::registry::LookupSpan;

use crate::contract::{self, headers};

struct HeaderInjector<'a>(&'a mut FieldTable);

impl Injector for HeaderInjector<'_> {
    /// An empty value (the `tracestate` of a trace that has none) is left
    /// out, as W3C Trace Context allows, rather than sent with every task.
    /// (A copy keeps the original's `tracestate`, which is its trace's.)
    fn set(&mut self, key: &str, value: String) {
        if value.is_empty() {
            return;
        }
        self.0
            .insert(ShortString::from(key), AMQPValue::LongString(value.into()));
    }
}

struct HeaderExtractor<'a>(Option<&'a FieldTable>);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match self.0?.inner().get(key)? {
            AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok(),
            AMQPValue::ShortString(s) => Some(s.as_str()),
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .map(|t| t.inner().keys().map(|k| k.as_str()).collect())
            .unwrap_or_default()
    }
}

/// The trace context a message carries (empty when it carries none).
pub(crate) fn extract(headers: Option<&FieldTable>) -> Context {
    TraceContextPropagator::new().extract(&HeaderExtractor(headers))
}

/// Writes `span`'s context into `headers` (replacing any previous one);
/// does nothing when tracing is not set up for the span.
pub fn inject_span(span: &tracing::Span, table: &mut FieldTable) {
    if !exporting() {
        if let Some(sc) = local(span) {
            inject(&sc, table);
        }
        return;
    }
    let cx = span.context();
    if cx.span().span_context().is_valid() {
        TraceContextPropagator::new().inject_context(&cx, &mut HeaderInjector(table));
    }
}

/// Writes the trace context of a task being published into `headers`:
/// exporting, the publish `span`'s; otherwise the current span's trace (a
/// handler's task), or a new trace outside any.
pub(crate) fn inject_publish(span: &tracing::Span, table: &mut FieldTable) {
    if exporting() {
        inject_span(span, table);
    } else {
        let sc = local(&tracing::Span::current()).unwrap_or_else(|| child_of(&Context::new()));
        inject(&sc, table);
    }
}

/// Writes `sc` into `headers` as `traceparent` (and `tracestate`, when it
/// has one), as W3C Trace Context version 00 spells them.
pub(crate) fn inject(sc: &SpanContext, table: &mut FieldTable) {
    let traceparent = format!(
        "00-{}-{}-{:02x}",
        sc.trace_id(),
        sc.span_id(),
        sc.trace_flags().to_u8() & TraceFlags::SAMPLED.to_u8()
    );
    let mut injector = HeaderInjector(table);
    injector.set(headers::TRACEPARENT, traceparent);
    injector.set(headers::TRACESTATE, sc.trace_state().header());
}

/// A new span's context under `parent` (a message's extracted context):
/// the parent's trace with a new span id, or a new sampled trace when the
/// parent carries none. For spans that are not exported.
pub(crate) fn child_of(parent: &Context) -> SpanContext {
    let ids = RandomIdGenerator::default();
    let span = parent.span();
    let parent = span.span_context();
    if parent.is_valid() {
        SpanContext::new(
            parent.trace_id(),
            ids.new_span_id(),
            parent.trace_flags(),
            false,
            parent.trace_state().clone(),
        )
    } else {
        SpanContext::new(
            ids.new_trace_id(),
            ids.new_span_id(),
            TraceFlags::SAMPLED,
            false,
            TraceState::NONE,
        )
    }
}

/// The trace context of a span that is not exported, kept in its
/// extensions by [`start`].
struct Local(SpanContext);

/// Gives `span` its own trace context (when spans are not exported): what
/// [`inject_span`] writes for it and for the spans opened inside it. Does
/// nothing to a disabled span.
pub(crate) fn start(span: &tracing::Span, sc: SpanContext) {
    span.with_subscriber(|(id, dispatch)| {
        if let Some(data) = dispatch
            .downcast_ref::<Registry>()
            .and_then(|registry| registry.span(id))
        {
            data.extensions_mut().insert(Local(sc));
        }
    });
}

/// The trace context [`start`] gave `span` or the nearest span it is in.
pub(crate) fn local(span: &tracing::Span) -> Option<SpanContext> {
    span.with_subscriber(|(id, dispatch)| {
        let registry = dispatch.downcast_ref::<Registry>()?;
        registry
            .span(id)?
            .scope()
            .find_map(|s| s.extensions().get::<Local>().map(|l| l.0.clone()))
    })
    .flatten()
}

/// Whether the headers already carry a trace context.
pub(crate) fn has_context(table: &FieldTable) -> bool {
    contract::header_str(Some(table), headers::TRACEPARENT).is_some()
}

static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Whether spans are exported (set once by `telemetry::init`).
pub(crate) fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

pub(crate) fn set_exporting(on: bool) {
    EXPORTING.store(on, Ordering::Relaxed);
}

/// Records an exported `span`'s trace and span id in its `trace_id` and
/// `span_id` fields, for the log lines, in one call: the JSON log layer
/// re-encodes a span's fields on every record.
pub(crate) fn record_ids(span: &tracing::Span) {
    let Some((trace_id, span_id)) = ids(span) else {
        return;
    };
    tracing::record_all!(span, trace_id = trace_id, span_id = span_id);
}

/// What a messaging span does: a producer's `publish` or a consumer's
/// `process`.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Operation {
    Publish,
    Process,
}

/// The message a messaging span is about.
pub(crate) struct Message<'a> {
    /// The exchange published to, or the queue consumed from.
    pub(crate) destination: &'a str,
    pub(crate) routing_key: &'a str,
    pub(crate) id: &'a str,
    pub(crate) body_size: usize,
}

/// The OpenTelemetry messaging attributes of a `publish` or `process`
/// span (set on exported spans only: nothing else reads them).
pub(crate) fn messaging_attributes(
    span: &tracing::Span,
    operation: Operation,
    message: &Message<'_>,
) {
    let (kind, name) = match operation {
        Operation::Publish => ("send", "publish"),
        Operation::Process => ("process", "process"),
    };
    span.set_attribute("messaging.system", "rabbitmq");
    span.set_attribute("messaging.operation.type", kind);
    span.set_attribute("messaging.operation.name", name);
    span.set_attribute("messaging.destination.name", message.destination.to_owned());
    span.set_attribute(
        "messaging.rabbitmq.destination.routing_key",
        message.routing_key.to_owned(),
    );
    span.set_attribute("messaging.message.id", message.id.to_owned());
    span.set_attribute(
        "messaging.message.body.size",
        i64::try_from(message.body_size).unwrap_or(i64::MAX),
    );
}

/// The trace and span id of `span`, as hex, when tracing is set up.
pub(crate) fn ids(span: &tracing::Span) -> Option<(String, String)> {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid()
        .then(|| (sc.trace_id().to_string(), sc.span_id().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_traceparent_header_round_trips() {
        let mut t = FieldTable::default();
        contract::set_str(
            &mut t,
            headers::TRACEPARENT,
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        );
        let cx = extract(Some(&t));
        let sc = cx.span().span_context().clone();
        assert!(sc.is_valid() && sc.is_remote());
        assert_eq!(
            sc.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(sc.span_id().to_string(), "00f067aa0ba902b7");
        let mut out = FieldTable::default();
        TraceContextPropagator::new().inject_context(&cx, &mut HeaderInjector(&mut out));
        assert_eq!(
            contract::header_str(Some(&out), headers::TRACEPARENT).as_deref(),
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        );
        assert!(!extract(None).span().span_context().is_valid());
    }

    #[test]
    fn a_span_not_exported_continues_its_parents_trace_and_lends_it_to_spans_inside() {
        let mut t = FieldTable::default();
        contract::set_str(
            &mut t,
            headers::TRACEPARENT,
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        );
        let sc = child_of(&extract(Some(&t)));
        assert_eq!(
            sc.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_ne!(sc.span_id().to_string(), "00f067aa0ba902b7");
        assert!(sc.is_valid() && sc.is_sampled());
        let root = child_of(&Context::new());
        assert!(root.is_valid() && root.is_sampled());
        assert_ne!(root.trace_id(), sc.trace_id());

        tracing::subscriber::with_default(Registry::default(), || {
            let task = tracing::info_span!("task");
            start(&task, sc.clone());
            let inner = task.in_scope(|| tracing::info_span!("inner"));
            assert_eq!(local(&inner), Some(sc.clone()));
            let mut out = FieldTable::default();
            inner.in_scope(|| inject_span(&tracing::Span::current(), &mut out));
            assert_eq!(
                contract::header_str(Some(&out), headers::TRACEPARENT),
                Some(format!(
                    "00-4bf92f3577b34da6a3ce929d0e0e4736-{}-01",
                    sc.span_id()
                ))
            );
            assert_eq!(
                contract::header_str(Some(&out), headers::TRACESTATE),
                None,
                "an empty tracestate is left out"
            );
            assert_eq!(local(&tracing::info_span!("elsewhere")), None);
        });
    }
}
