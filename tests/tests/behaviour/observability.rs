//! What ops see: the counters a scrape of `/metrics` shows after known
//! tasks, accepted by `promtool check metrics`, and the health endpoints.
//! (`/readyz` across a broker outage lives in `tests/tests/resilience.rs`.)

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use warren::PublishOptions;
use warren_tests::ops::{http_get, sample, sample_or_zero, try_sample};
use warren_tests::{EmailWorld, WAIT, rcpt};

#[tokio::test]
async fn a_scrape_shows_exactly_the_tasks_processed_and_promtool_accepts_it() {
    let world = EmailWorld::start(&[]).await.unwrap();
    let (broker, worker) = (&world.broker, &world.worker);
    let ops = worker.ops_addr().await.unwrap();

    // Before any task: the series exist (or are absent, i.e. zero).
    let (status, before) = http_get(ops, "/metrics").await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        sample_or_zero(&before, "warren_tasks_received_total", &[]),
        0.0
    );
    assert_eq!(
        sample(
            &before,
            "warren_broker_connected",
            &[("service", "email-worker")]
        ),
        1.0
    );

    // Three successes, one success after a retry, one dead letter.
    for _ in 0..3 {
        let body = json!({"to": rcpt("ok"), "subject": "m", "text": "m"});
        broker
            .publish("email.send", &body, PublishOptions::default())
            .await
            .unwrap();
    }
    let body = json!({"to": rcpt("tempfail451x1"), "subject": "m", "text": "m"});
    broker
        .publish("email.send", &body, PublishOptions::default())
        .await
        .unwrap();
    let body = json!({"to": rcpt("reject550"), "subject": "m", "text": "m"});
    broker
        .publish("email.send", &body, PublishOptions::default())
        .await
        .unwrap();
    worker
        .wait_for_log("Task succeeded.", 4, WAIT)
        .await
        .unwrap();
    worker
        .wait_for_log("Task dead-lettered.", 1, WAIT)
        .await
        .unwrap();

    let q = broker.names.work_queue("email");
    let task = [
        ("service", "email-worker"),
        ("queue", q.as_str()),
        ("task", "email.send"),
    ];
    let with = |extra: &[(&'static str, &'static str)]| {
        let mut l: Vec<(&str, &str)> = task.to_vec();
        l.extend_from_slice(extra);
        l
    };
    let expect = [
        ("warren_tasks_received_total", with(&[]), 6.0),
        ("warren_tasks_succeeded_total", with(&[]), 4.0),
        (
            "warren_tasks_retried_total",
            with(&[("error_kind", "smtp_transient")]),
            1.0,
        ),
        (
            "warren_tasks_dead_lettered_total",
            with(&[("error_kind", "smtp_permanent"), ("reason", "permanent")]),
            1.0,
        ),
        ("warren_tasks_duplicates_total", with(&[]), 0.0),
        ("warren_task_duration_seconds_count", with(&[]), 6.0),
        (
            "warren_task_duration_seconds_count",
            with(&[("outcome", "retried")]),
            1.0,
        ),
        ("warren_task_queue_wait_seconds_count", with(&[]), 6.0),
        ("warren_tasks_in_progress", vec![("queue", q.as_str())], 0.0),
        ("warren_emails_sent_total", vec![("transport", "smtp")], 4.0),
        (
            "warren_smtp_errors_total",
            vec![("class", "transient")],
            1.0,
        ),
        (
            "warren_smtp_errors_total",
            vec![("class", "permanent")],
            1.0,
        ),
        (
            "warren_publish_confirms_total",
            vec![("purpose", "retry"), ("result", "ack")],
            1.0,
        ),
        (
            "warren_publish_confirms_total",
            vec![("purpose", "dead_letter"), ("result", "ack")],
            1.0,
        ),
        ("warren_build_info", vec![("service", "email-worker")], 1.0),
    ];
    // The log lines come first; the metrics (the in-progress gauge last of
    // all) settle once each delivery is acked: read until they have.
    let deadline = Instant::now() + WAIT;
    let text = loop {
        let (_, text) = http_get(ops, "/metrics").await.unwrap();
        let wrong = expect
            .iter()
            .find(|(name, labels, want)| try_sample(&text, name, labels) != Some(*want));
        match wrong {
            None => break text,
            Some((name, labels, want)) => assert!(
                Instant::now() < deadline,
                "{name} {labels:?} is not {want} after {WAIT:?}\n{text}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };

    // promtool lints the exposition the way Prometheus ingests it.
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect(
            "promtool (Debian package prometheus) must be installed; scripts/prepare installs it",
        );
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    broker.cleanup().await.unwrap();
}

#[tokio::test]
async fn health_and_readiness_answer_on_the_ops_port() {
    let mut world = EmailWorld::start(&[]).await.unwrap();
    let (broker, worker) = (&world.broker, &mut world.worker);
    let ops = worker.ops_addr().await.unwrap();
    assert_eq!(http_get(ops, "/healthz").await.unwrap().0, 200);
    assert_eq!(http_get(ops, "/readyz").await.unwrap().0, 200);
    assert_eq!(http_get(ops, "/nope").await.unwrap().0, 404);
    worker.signal("TERM").unwrap();
    assert!(worker.wait_exit(WAIT).await.unwrap().success());
    broker.cleanup().await.unwrap();
}

/// One trace runs producer, queue, worker, retry, worker: the worker's span
/// is a child of the producer's, and the retried attempt's span a child of
/// the failed attempt's, all exported over OTLP to a receiver in the test.
#[tokio::test]
async fn a_producers_trace_context_reaches_the_worker_and_survives_a_retry() {
    use warren_tests::otlp::OtlpReceiver;
    let receiver = OtlpReceiver::start().await.unwrap();
    let world = EmailWorld::start(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.endpoint()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
        ("OTEL_SERVICE_NAME", "email-worker-under-test"),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ])
    .await
    .unwrap();
    let (broker, worker) = (&world.broker, &world.worker);

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let producer_span = "00f067aa0ba902b7";
    let traceparent = format!("00-{trace_id}-{producer_span}-01");
    let id = publish_traced(broker, "tempfail451x1", &traceparent).await;
    let done = worker
        .wait_for_log("Task succeeded.", 1, WAIT)
        .await
        .unwrap();
    // Log lines carry the trace.
    assert_eq!(done[0]["span"]["trace_id"], trace_id);

    let name = format!("process {}", broker.names.work_queue("email"));
    let spans = receiver
        .wait_for(2, WAIT, |s| s.name == name && s.trace_id == trace_id)
        .await
        .unwrap();
    let attempt = |n: &str| {
        spans
            .iter()
            .find(|s| s.attribute("attempt").as_deref() == Some(n))
            .cloned()
            .unwrap()
    };
    let (first, second) = (attempt("1"), attempt("2"));
    assert_eq!(
        first.parent_span_id, producer_span,
        "the first attempt continues the producer's span"
    );
    assert_eq!(
        second.parent_span_id, first.span_id,
        "the retry continues the failed attempt's span"
    );
    assert_eq!(first.service, "email-worker-under-test");
    for span in [&first, &second] {
        assert_eq!(
            span.attribute("messaging.system").as_deref(),
            Some("rabbitmq")
        );
        assert_eq!(
            span.attribute("messaging.operation.type").as_deref(),
            Some("process")
        );
        assert_eq!(
            span.attribute("messaging.message.id").as_deref(),
            Some(id.as_str())
        );
        assert_eq!(
            span.attribute("messaging.destination.name"),
            Some(broker.names.work_queue("email"))
        );
    }
    assert_eq!(
        second.attribute("messaging.rabbitmq.destination.routing_key"),
        Some(broker.names.work_queue("email")),
        "the retry came back through the delay queue"
    );
    broker.cleanup().await.unwrap();
}

#[tokio::test]
async fn without_an_exporter_log_lines_and_copies_still_carry_the_trace() {
    let world = EmailWorld::start(&[]).await.unwrap();
    let (broker, worker) = (&world.broker, &world.worker);
    let trace_id = "0af7651916cd43dd8448eb211c80319c";
    let traceparent = format!("00-{trace_id}-b7ad6b7169203331-01");
    let id = publish_traced(broker, "reject550", &traceparent).await;
    let parked = worker
        .wait_for_log("Task dead-lettered.", 1, WAIT)
        .await
        .unwrap();
    let span = &parked[0]["span"];
    assert_eq!(span["task_id"], id.as_str(), "{}", parked[0]);
    assert_eq!(span["trace_id"], trace_id, "{}", parked[0]);
    let span_id = span["span_id"].as_str().expect("a span_id").to_owned();
    assert_eq!(span_id.len(), 16, "{}", parked[0]);
    assert_ne!(
        span_id, "b7ad6b7169203331",
        "the attempt has a span of its own"
    );
    // The parked copy continues the trace from the attempt's span, the one
    // its log lines name.
    let copy = &broker
        .take(&broker.email_dead_queue(), 1, WAIT)
        .await
        .unwrap()[0];
    assert_eq!(
        copy.header("traceparent").as_deref(),
        Some(format!("00-{trace_id}-{span_id}-01").as_str())
    );
    broker.cleanup().await.unwrap();
}

/// Publishes an `email.send` task to a recipient tagged `tag`, in the
/// producer's trace `traceparent`; returns its id.
async fn publish_traced(
    broker: &warren_tests::broker::TestBroker,
    tag: &str,
    traceparent: &str,
) -> String {
    let mut headers = lapin::types::FieldTable::default();
    warren::contract::set_str(&mut headers, "traceparent", traceparent);
    let body = json!({"to": rcpt(tag), "subject": "traced", "text": "t"});
    broker
        .publish(
            "email.send",
            &body,
            PublishOptions {
                headers,
                ..Default::default()
            },
        )
        .await
        .unwrap()
}
