//! The email worker end to end: tasks published over AMQP to the real
//! RabbitMQ, a real worker process, a real SMTP server over TCP.
//!
//! Each test has its own namespace on the shared broker and its own SMTP
//! sink, so they run in parallel. Tests that kill processes or restart the
//! broker live in `tests/tests/resilience.rs`.

use std::collections::HashSet;
use std::time::Duration;

use lapin::BasicProperties;
use lapin::options::QueueDeclareOptions;
use lapin::types::{AMQPValue, FieldTable};
use serde_json::json;
use warren::PublishOptions;
use warren::contract::headers;
use warren_tests::broker::TestBroker;
use warren_tests::smtp::SmtpSink;
use warren_tests::worker::{WorkerProcess, email_env, with};
use warren_tests::{EmailWorld, WAIT, rcpt};

#[tokio::test]
async fn an_email_task_reaches_the_smtp_server_and_is_acked() {
    let s = EmailWorld::start(&[]).await.unwrap();
    let to = rcpt("ada");
    let cc = rcpt("grace");
    let bcc = rcpt("hidden");
    let id = s
        .broker
        .publish(
            "email.send",
            &json!({
                "to": [format!("Ada Lovelace <{to}>")],
                "cc": cc,
                "bcc": [bcc],
                "reply_to": "support@warren.test",
                "subject": "Your report is ready ✓",
                "text": "Hello Ada,\nyour report is ready.",
                "html": "<p>Hello Ada, your report is <b>ready</b>.</p>",
                "attachments": [{"filename": "report.csv", "content_type": "text/csv", "content_base64": "YSxiCjEsMgo="}],
            }),
            PublishOptions::default(),
        )
        .await
        .unwrap();

    let mails = s.sink.wait_for_messages_to(&to, 1, WAIT).await.unwrap();
    let mail = &mails[0];
    // Envelope: every recipient, Bcc included, and the default sender.
    let rcpts: HashSet<_> = mail.rcpt_tos.iter().map(|r| r.to_lowercase()).collect();
    assert_eq!(rcpts, HashSet::from([to.clone(), cc.clone(), bcc.clone()]));
    assert_eq!(mail.mail_from, "tests@warren.test");
    // Headers: Bcc never shows; Message-ID derives from the task id.
    assert_eq!(mail.subject().as_deref(), Some("Your report is ready ✓"));
    assert!(mail.header("To").unwrap().contains(&to));
    assert!(mail.header("Cc").unwrap().contains(&cc));
    assert!(mail.header("Bcc").is_none());
    assert!(
        mail.header("Reply-To")
            .unwrap()
            .contains("support@warren.test")
    );
    assert!(mail.header("From").unwrap().contains("tests@warren.test"));
    assert!(
        mail.message_id().unwrap().contains(&id),
        "{:?}",
        mail.message_id()
    );
    // Bodies and the attachment.
    assert!(mail.text_body().unwrap().contains("your report is ready."));
    assert!(mail.html_body().unwrap().contains("<b>ready</b>"));
    assert_eq!(
        mail.attachments(),
        vec![("report.csv".to_owned(), b"a,b\n1,2\n".to_vec())]
    );

    // Acked: the worker logged success and nothing is left anywhere.
    let done = s
        .worker
        .wait_for_log("Task succeeded.", 1, WAIT)
        .await
        .unwrap();
    assert_eq!(done[0]["span"]["task_id"], id);
    assert_eq!(
        s.broker
            .depth(&s.broker.names.work_queue("email"))
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        s.broker.depth(&s.broker.email_dead_queue()).await.unwrap(),
        0
    );
    assert_eq!(s.sink.messages().len(), 1);
    s.broker.cleanup().await.unwrap();
}

#[tokio::test]
async fn a_template_is_rendered_and_a_missing_message_id_is_assigned() {
    let s = EmailWorld::start(&[]).await.unwrap();
    let to = rcpt("tpl");
    let body = json!({"to": to, "template": "welcome", "variables": {"name": "Ada <script>"}});
    // A producer that sets no message_id: the worker assigns one.
    let props = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2);
    s.broker
        .publish_raw("email.send", body.to_string().as_bytes(), props)
        .await
        .unwrap();
    let mails = s.sink.wait_for_messages_to(&to, 1, WAIT).await.unwrap();
    let html = mails[0].html_body().unwrap();
    assert!(
        html.contains("Ada &lt;script&gt;"),
        "HTML must be escaped: {html}"
    );
    assert!(mails[0].text_body().unwrap().contains("Ada <script>"));
    let assigned = s
        .worker
        .wait_for_log("Task arrived without a message_id; assigned one.", 1, WAIT)
        .await
        .unwrap();
    let id = assigned[0]["span"]["task_id"].as_str().unwrap().to_owned();
    assert!(mails[0].message_id().unwrap().contains(&id));
    s.broker.cleanup().await.unwrap();
}

#[tokio::test]
async fn smtp_451_twice_then_250_is_delivered_once_after_two_retries() {
    let mut s = EmailWorld::start(&[]).await.unwrap();
    let to = rcpt("tempfail451x2");
    let id = s
        .broker
        .publish(
            "email.send",
            &json!({"to": to, "subject": "retry me", "text": "third time lucky"}),
            PublishOptions::default(),
        )
        .await
        .unwrap();
    s.sink.wait_for_messages_to(&to, 1, WAIT).await.unwrap();
    let retried = s
        .worker
        .wait_for_log("Task failed; it will be retried.", 2, WAIT)
        .await
        .unwrap();
    let ns = s.broker.namespace();
    assert_eq!(
        retried[0]["fields"]["retry_queue"],
        format!("{ns}.email.retry.200ms")
    );
    assert_eq!(
        retried[1]["fields"]["retry_queue"],
        format!("{ns}.email.retry.300ms")
    );
    assert_eq!(retried[0]["fields"]["error_kind"], "smtp_transient");
    let done = s
        .worker
        .wait_for_log("Task succeeded.", 1, WAIT)
        .await
        .unwrap();
    assert_eq!(done[0]["span"]["attempt"], 3);
    assert_eq!(done[0]["span"]["task_id"], id);

    // Exactly once: with the worker drained and gone and every queue
    // empty (below), no stray duplicate can still be on its way.
    s.worker.signal("TERM").unwrap();
    assert!(s.worker.wait_exit(WAIT).await.unwrap().success());
    assert_eq!(s.sink.messages_to(&to).len(), 1);
    assert_eq!(s.sink.rejections_to(&to).len(), 2);
    for q in [
        s.broker.names.work_queue("email"),
        s.broker.email_dead_queue(),
        s.broker
            .names
            .retry_queue("email", Duration::from_millis(200)),
        s.broker
            .names
            .retry_queue("email", Duration::from_millis(300)),
    ] {
        assert_eq!(s.broker.depth(&q).await.unwrap(), 0, "{q}");
    }
    s.broker.cleanup().await.unwrap();
}

#[tokio::test]
async fn transient_failures_that_outlast_the_ladder_are_dead_lettered() {
    let s = EmailWorld::start(&[("WARREN_CONSUMER__MAX_ATTEMPTS", "2")])
        .await
        .unwrap();
    let to = rcpt("tempfail451x9");
    let id = s
        .broker
        .publish(
            "email.send",
            &json!({"to": to, "subject": "s", "text": "t"}),
            PublishOptions::default(),
        )
        .await
        .unwrap();
    let dead = s
        .broker
        .take(&s.broker.email_dead_queue(), 1, WAIT)
        .await
        .unwrap();
    assert_eq!(dead[0].message_id().as_deref(), Some(id.as_str()));
    assert_eq!(
        dead[0].header(headers::DEAD_REASON).as_deref(),
        Some("attempts_exhausted")
    );
    assert_eq!(dead[0].header(headers::ATTEMPT).as_deref(), Some("2"));
    assert_eq!(
        dead[0].header(headers::ERROR_KIND).as_deref(),
        Some("smtp_transient")
    );
    assert_eq!(s.sink.rejections_to(&to).len(), 2);
    assert!(s.sink.messages_to(&to).is_empty());

    // Replayed as it is (a shovel's "Move messages"): it keeps its
    // `x-warren-attempt`, so its first transient failure parks it again.
    s.broker
        .publish_raw("email.send", &dead[0].body, dead[0].properties.clone())
        .await
        .unwrap();
    let again = s
        .broker
        .take(&s.broker.email_dead_queue(), 1, WAIT)
        .await
        .unwrap();
    assert_eq!(again[0].message_id().as_deref(), Some(id.as_str()));
    // Run again as the attempt it was parked at: the last one allowed.
    assert_eq!(again[0].header(headers::ATTEMPT).as_deref(), Some("2"));
    assert_eq!(
        again[0].header(headers::DEAD_REASON).as_deref(),
        Some("attempts_exhausted")
    );
    assert_eq!(
        again[0].body, dead[0].body,
        "the body is kept byte for byte"
    );
    assert_eq!(s.sink.rejections_to(&to).len(), 3, "one more try only");
    s.broker.cleanup().await.unwrap();
}

#[tokio::test]
async fn smtp_550_is_dead_lettered_at_once_and_the_worker_goes_on() {
    let s = EmailWorld::start(&[]).await.unwrap();
    let bad = rcpt("reject550");
    let id = s
        .broker
        .publish(
            "email.send",
            &json!({"to": bad, "subject": "nope", "text": "x"}),
            PublishOptions {
                priority: Some(4),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let dead = s
        .broker
        .take(&s.broker.email_dead_queue(), 1, WAIT)
        .await
        .unwrap();
    let d = &dead[0];
    assert_eq!(d.message_id().as_deref(), Some(id.as_str()));
    assert_eq!(d.header(headers::DEAD_REASON).as_deref(), Some("permanent"));
    assert_eq!(
        d.header(headers::ERROR_KIND).as_deref(),
        Some("smtp_permanent")
    );
    assert!(
        d.header(headers::ERROR).unwrap().contains("550"),
        "{:?}",
        d.headers()
    );
    assert_eq!(d.header(headers::ATTEMPT).as_deref(), Some("1"));
    assert!(
        d.header(headers::WORKER)
            .unwrap()
            .starts_with("email-worker@")
    );
    assert!(d.header(headers::FIRST_FAILURE_AT).is_some());
    assert!(d.header(headers::LAST_FAILURE_AT).is_some());
    assert_eq!(
        d.header(headers::ORIGINAL_ROUTING_KEY).as_deref(),
        Some("email.send")
    );
    assert_eq!(d.properties.priority(), &Some(4));
    assert_eq!(
        d.properties.kind().as_ref().map(|k| k.as_str()),
        Some("email.send")
    );
    // One SMTP attempt only: no retries for a 5xx.
    assert_eq!(s.sink.rejections_to(&bad).len(), 1);

    let good = rcpt("after");
    s.broker
        .publish(
            "email.send",
            &json!({"to": good, "subject": "still here", "text": "y"}),
            PublishOptions::default(),
        )
        .await
        .unwrap();
    s.sink.wait_for_messages_to(&good, 1, WAIT).await.unwrap();
    s.broker.cleanup().await.unwrap();
}

#[tokio::test]
async fn bad_input_is_dead_lettered_with_a_clear_reason_and_nothing_is_sent() {
    let s = EmailWorld::start(&[]).await.unwrap();
    let ok_rcpt = rcpt("bad-input");
    let cases: Vec<(&str, Vec<u8>, &str, &str)> = vec![
        (
            "malformed",
            b"{\"to\": \"a@example.com\", ".to_vec(),
            "invalid_json",
            "JSON",
        ),
        (
            "unknown",
            json!({"to": ok_rcpt, "subject": "s", "text": "t", "priority_boost": 3})
                .to_string()
                .into_bytes(),
            "unknown_field",
            "priority_boost",
        ),
        (
            "address",
            json!({"to": "not an address", "subject": "s", "text": "t"})
                .to_string()
                .into_bytes(),
            "invalid_address",
            "not an address",
        ),
        (
            "binary",
            vec![0xff, 0xfe, b'{', 0x00, b'\r', b'\n', 0x80],
            "invalid_json",
            "JSON",
        ),
        (
            "crlf",
            json!({"to": ok_rcpt, "subject": "Hi\r\nBcc: victim@example.com", "text": "t"})
                .to_string()
                .into_bytes(),
            "header_injection",
            "subject",
        ),
    ];
    for (id, body, _, _) in &cases {
        let props = warren::task_properties(id, "email.send", 0);
        s.broker
            .publish_raw("email.send", body, props)
            .await
            .unwrap();
    }
    let dead = s
        .broker
        .take(&s.broker.email_dead_queue(), cases.len(), WAIT)
        .await
        .unwrap();
    for (id, body, kind, needle) in &cases {
        let d = dead
            .iter()
            .find(|d| d.message_id().as_deref() == Some(*id))
            .unwrap_or_else(|| panic!("{id} not dead-lettered"));
        assert_eq!(&d.body, body, "{id}: the parked body is kept byte for byte");
        assert_eq!(
            d.header(headers::ERROR_KIND).as_deref(),
            Some(*kind),
            "{id}: {:?}",
            d.headers()
        );
        assert_eq!(d.header(headers::DEAD_REASON).as_deref(), Some("permanent"));
        let message = d.header(headers::ERROR).unwrap();
        assert!(
            message.contains(needle),
            "{id}: reason {message:?} should name {needle:?}"
        );
    }
    // The worker is still up and nothing reached the SMTP server.
    let after = rcpt("after-bad");
    s.broker
        .publish(
            "email.send",
            &json!({"to": after, "subject": "s", "text": "t"}),
            PublishOptions::default(),
        )
        .await
        .unwrap();
    s.sink.wait_for_messages_to(&after, 1, WAIT).await.unwrap();
    assert_eq!(
        s.sink.messages().len(),
        1,
        "only the valid task may be sent"
    );
    assert!(s.sink.messages_to("victim@example.com").is_empty());
    s.broker.cleanup().await.unwrap();
}

#[tokio::test]
async fn a_task_id_that_already_succeeded_is_not_sent_again() {
    let s = EmailWorld::start(&[]).await.unwrap();
    let to = rcpt("once");
    let body = json!({"to": to, "subject": "once", "text": "only once"});
    let options = || PublishOptions {
        id: Some(format!("dup-{}", uuid::Uuid::new_v4().simple())),
        ..Default::default()
    };
    let first = options();
    let id = first.id.clone().unwrap();
    s.broker.publish("email.send", &body, first).await.unwrap();
    s.sink.wait_for_messages_to(&to, 1, WAIT).await.unwrap();
    s.worker
        .wait_for_log("Task succeeded.", 1, WAIT)
        .await
        .unwrap();
    s.broker
        .publish(
            "email.send",
            &body,
            PublishOptions {
                id: Some(id.clone()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let dup = s
        .worker
        .wait_for_log(
            "Task already succeeded earlier; acking the duplicate without running it.",
            1,
            WAIT,
        )
        .await
        .unwrap();
    assert_eq!(dup[0]["span"]["task_id"], id);
    assert_eq!(s.sink.messages_to(&to).len(), 1);
    assert_eq!(
        s.broker
            .depth(&s.broker.names.work_queue("email"))
            .await
            .unwrap(),
        0
    );
    s.broker.cleanup().await.unwrap();
}

/// Several replicas share the Redis store: a task id one worker sent is not
/// sent again by another, even after the first is gone.
#[tokio::test]
async fn the_redis_store_deduplicates_across_worker_processes() {
    let broker = TestBroker::new().await.unwrap();
    let sink = SmtpSink::start().await.unwrap();
    let env = with(
        email_env(broker.namespace(), sink.port()),
        &[("WARREN_IDEMPOTENCY__BACKEND", "redis")],
    );
    let to = rcpt("redis");
    let body = json!({"to": to, "subject": "r", "text": "r"});
    let id = format!("redis-{}", uuid::Uuid::new_v4().simple());

    let mut first = WorkerProcess::email(&env).await.unwrap();
    first.wait_ready().await.unwrap();
    broker
        .publish(
            "email.send",
            &body,
            PublishOptions {
                id: Some(id.clone()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    sink.wait_for_messages_to(&to, 1, WAIT).await.unwrap();
    first
        .wait_for_log("Task succeeded.", 1, WAIT)
        .await
        .unwrap();
    first.signal("TERM").unwrap();
    assert!(first.wait_exit(WAIT).await.unwrap().success());

    let second = WorkerProcess::email(&env).await.unwrap();
    second.wait_ready().await.unwrap();
    broker
        .publish(
            "email.send",
            &body,
            PublishOptions {
                id: Some(id.clone()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    second
        .wait_for_log(
            "Task already succeeded earlier; acking the duplicate without running it.",
            1,
            WAIT,
        )
        .await
        .unwrap();
    assert_eq!(sink.messages_to(&to).len(), 1);
    broker.cleanup().await.unwrap();
}

#[tokio::test]
async fn higher_priority_tasks_are_sent_first() {
    let broker = TestBroker::new().await.unwrap();
    let sink = SmtpSink::start().await.unwrap();
    let env = with(
        email_env(broker.namespace(), sink.port()),
        &[
            ("WARREN_CONSUMER__PREFETCH", "1"),
            ("WARREN_CONSUMER__CONCURRENCY", "1"),
        ],
    );
    broker
        .declare_email_topology(&[Duration::from_millis(200), Duration::from_millis(300)])
        .await
        .unwrap();
    let to = rcpt("prio");
    for i in 0..200 {
        broker
            .publish(
                "email.send",
                &json!({"to": to, "subject": format!("low {i}"), "text": "."}),
                PublishOptions {
                    priority: Some(0),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
    }
    for i in 0..5 {
        broker
            .publish(
                "email.send",
                &json!({"to": to, "subject": format!("high {i}"), "text": "."}),
                PublishOptions {
                    priority: Some(9),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
    }
    assert_eq!(
        broker
            .depth(&broker.names.work_queue("email"))
            .await
            .unwrap(),
        205
    );

    let worker = WorkerProcess::email(&env).await.unwrap();
    worker.wait_ready().await.unwrap();
    let mails = sink
        .wait_for_messages_to(&to, 205, Duration::from_secs(120))
        .await
        .unwrap();
    let first_five: Vec<String> = mails[..5]
        .iter()
        .map(|m| m.subject().unwrap_or_default())
        .collect();
    assert!(
        first_five.iter().all(|s| s.starts_with("high ")),
        "the five priority-9 tasks must be sent first, got {first_five:?}"
    );
    broker.cleanup().await.unwrap();
}

#[tokio::test]
async fn start_up_against_a_conflicting_queue_names_the_argument() {
    let broker = TestBroker::new().await.unwrap();
    let sink = SmtpSink::start().await.unwrap();
    let queue = broker.names.work_queue("email");
    // Warren's arguments but for the priority: the one RabbitMQ reports.
    let mut args = FieldTable::default();
    args.insert("x-max-priority".into(), AMQPValue::LongInt(5));
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(broker.names.dead_exchange().into()),
    );
    args.insert(
        "x-dead-letter-routing-key".into(),
        AMQPValue::LongString(queue.clone().into()),
    );
    broker
        .channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await
        .unwrap();

    let mut worker = WorkerProcess::email(&email_env(broker.namespace(), sink.port()))
        .await
        .unwrap();
    let status = worker.wait_exit(WAIT).await.unwrap();
    assert!(!status.success(), "the worker must refuse to start");
    let text = worker
        .logs()
        .iter()
        .map(|l| l.to_string())
        .collect::<Vec<_>>()
        .join("\n");
    for needle in [
        queue.as_str(),
        "x-max-priority",
        "= 5",
        "wants x-max-priority = 10",
    ] {
        assert!(
            text.contains(needle),
            "start-up error should contain {needle:?}:\n{text}"
        );
    }
    broker.cleanup().await.unwrap();
}

/// An operator deletes Warren's queue and exchange under a running worker:
/// the consumer is cancelled and the publish channel closed by a soft
/// error; the worker starts a fresh session, declares everything again,
/// and a task whose parking-lot copy failed is handed back, not dropped.
#[tokio::test]
async fn topology_deleted_under_a_running_worker_is_declared_again() {
    let s = EmailWorld::start(&[]).await.unwrap();
    let channel = s.broker.connection.create_channel().await.unwrap();
    channel
        .queue_delete(
            s.broker.names.work_queue("email").as_str().into(),
            lapin::options::QueueDeleteOptions::default(),
        )
        .await
        .unwrap();
    s.worker.wait_for_log("Consuming.", 2, WAIT).await.unwrap();
    let to = rcpt("redeclared");
    s.broker
        .publish(
            "email.send",
            &json!({"to": to, "subject": "s", "text": "t"}),
            PublishOptions::default(),
        )
        .await
        .unwrap();
    s.sink.wait_for_messages_to(&to, 1, WAIT).await.unwrap();

    // Now the parking lot's exchange goes away: the dead-letter copy fails.
    channel
        .exchange_delete(
            s.broker.names.dead_exchange().as_str().into(),
            lapin::options::ExchangeDeleteOptions::default(),
        )
        .await
        .unwrap();
    let bad = rcpt("reject550");
    let id = s
        .broker
        .publish(
            "email.send",
            &json!({"to": bad, "subject": "s", "text": "t"}),
            PublishOptions::default(),
        )
        .await
        .unwrap();
    let dead = s
        .broker
        .take(&s.broker.email_dead_queue(), 1, WAIT)
        .await
        .unwrap();
    assert_eq!(dead[0].message_id().as_deref(), Some(id.as_str()));
    assert_eq!(
        dead[0].header(headers::ERROR_KIND).as_deref(),
        Some("smtp_permanent")
    );
    s.worker
        .wait_for_log(
            "Could not publish the task to the parking lot; handing it back to the queue.",
            1,
            WAIT,
        )
        .await
        .unwrap();
    assert!(
        s.worker.logs_with_message("Consuming.").len() >= 3,
        "a fresh session"
    );
    s.broker.cleanup().await.unwrap();
}

/// Takes the parked task and checks it was parked after the whole ladder,
/// with `kind` as its last error.
async fn parked_with_kind(broker: &TestBroker, id: &str, kind: &str) {
    let dead = broker
        .take(&broker.email_dead_queue(), 1, WAIT)
        .await
        .unwrap();
    assert_eq!(dead[0].message_id().as_deref(), Some(id));
    assert_eq!(
        dead[0].header(headers::DEAD_REASON).as_deref(),
        Some("attempts_exhausted"),
        "{kind}"
    );
    assert_eq!(dead[0].header(headers::ATTEMPT).as_deref(), Some("2"));
    assert_eq!(dead[0].header(headers::ERROR_KIND).as_deref(), Some(kind));
}

#[tokio::test]
async fn a_send_held_past_send_timeout_is_a_timeout_retried_then_parked() {
    // The timeout covers the whole send: 5 s, so that on a loaded machine a
    // fresh connection's greeting and EHLO to the Python sink fit in it and
    // each try is cut off at DATA (a try cut off while connecting would be
    // `smtp_connection`, which one stability run saw with 1 s).
    let s = EmailWorld::start(&[
        ("WARREN_CONSUMER__MAX_ATTEMPTS", "2"),
        ("WARREN_EMAIL__SEND_TIMEOUT", "5s"),
    ])
    .await
    .unwrap();
    // The sink holds its answer to DATA until released: never, here.
    let to = rcpt("hold");
    let id = s
        .broker
        .publish(
            "email.send",
            &json!({"to": to, "subject": "s", "text": "t"}),
            PublishOptions::default(),
        )
        .await
        .unwrap();
    s.sink.wait_for_holding_to(&to, 1, WAIT).await.unwrap();
    let retried = s
        .worker
        .wait_for_log("Task failed; it will be retried.", 1, WAIT)
        .await
        .unwrap();
    assert_eq!(retried[0]["fields"]["error_kind"], "timeout", "{retried:?}");
    parked_with_kind(&s.broker, &id, "timeout").await;
    // Both tries reached DATA and were cut off there; nothing was sent.
    let held = s.sink.wait_for_holding_to(&to, 2, WAIT).await.unwrap();
    assert_eq!(held.len(), 2, "{held:?}");
    s.sink.release(&to).await.unwrap();
    assert!(s.sink.messages_to(&to).is_empty());
    s.broker.cleanup().await.unwrap();
}

#[tokio::test]
async fn a_refused_smtp_connection_is_smtp_connection_retried_then_parked() {
    let broker = TestBroker::new().await.unwrap();
    // A port nothing listens on: every connection is refused.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let env = with(
        email_env(broker.namespace(), port),
        &[("WARREN_CONSUMER__MAX_ATTEMPTS", "2")],
    );
    let mut worker = WorkerProcess::email(&env).await.unwrap();
    worker.wait_ready().await.unwrap();
    let id = broker
        .publish(
            "email.send",
            &json!({"to": rcpt("refused"), "subject": "s", "text": "t"}),
            PublishOptions::default(),
        )
        .await
        .unwrap();
    let retried = worker
        .wait_for_log("Task failed; it will be retried.", 1, WAIT)
        .await
        .unwrap();
    assert_eq!(
        retried[0]["fields"]["error_kind"], "smtp_connection",
        "{retried:?}"
    );
    parked_with_kind(&broker, &id, "smtp_connection").await;
    // The worker goes on: still ready after it.
    worker.wait_ready().await.unwrap();
    worker.signal("TERM").unwrap();
    assert!(worker.wait_exit(WAIT).await.unwrap().success());
    broker.cleanup().await.unwrap();
}

/// The retry copy cannot be published (its delay queue is gone, so the
/// mandatory publish comes back): the task is handed back to its queue, not
/// acked and not lost, and its next delivery runs it again.
#[tokio::test]
async fn a_retry_copy_that_cannot_be_published_hands_the_task_back() {
    let mut s = EmailWorld::start(&[]).await.unwrap();
    let retry_queue = s
        .broker
        .names
        .retry_queue("email", Duration::from_millis(200));
    s.broker
        .channel
        .queue_delete(
            retry_queue.as_str().into(),
            lapin::options::QueueDeleteOptions::default(),
        )
        .await
        .unwrap();
    // One 451, then 250.
    let to = rcpt("tempfail451x1");
    let id = s
        .broker
        .publish(
            "email.send",
            &json!({"to": to, "subject": "s", "text": "handed back"}),
            PublishOptions::default(),
        )
        .await
        .unwrap();
    let handed = s
        .worker
        .wait_for_log(
            "Could not publish the retry copy; handing the task back to the queue.",
            1,
            WAIT,
        )
        .await
        .unwrap();
    assert_eq!(handed[0]["fields"]["retry_queue"], retry_queue.as_str());
    assert_eq!(handed[0]["span"]["task_id"], id.as_str());
    let done = s
        .worker
        .wait_for_log("Task succeeded.", 1, WAIT)
        .await
        .unwrap();
    assert_eq!(done[0]["span"]["task_id"], id.as_str());
    assert_eq!(
        done[0]["span"]["redelivered"], true,
        "the handed-back original"
    );
    assert_eq!(done[0]["span"]["attempt"], 1, "no copy: the same attempt");
    s.sink.wait_for_messages_to(&to, 1, WAIT).await.unwrap();
    assert_eq!(s.sink.rejections_to(&to).len(), 1);
    assert!(
        s.worker
            .logs_with_message("Task failed; it will be retried.")
            .is_empty()
    );
    s.worker.signal("TERM").unwrap();
    assert!(s.worker.wait_exit(WAIT).await.unwrap().success());
    assert_eq!(s.sink.messages_to(&to).len(), 1);
    for q in [
        s.broker.names.work_queue("email"),
        s.broker.email_dead_queue(),
    ] {
        assert_eq!(s.broker.depth(&q).await.unwrap(), 0, "{q}");
    }
    s.broker.cleanup().await.unwrap();
}
