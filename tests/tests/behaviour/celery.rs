//! Celery clients against Warren: a real Celery 5 client (`.delay`,
//! `.apply_async`, `send_task`, `AsyncResult.get`) publishes to RabbitMQ,
//! the email worker's Celery bridge hands each task on to the email worker,
//! which delivers to the real SMTP server and writes the results in
//! Celery's Redis result-backend format; what the bridge cannot read is
//! parked with its reason (docs/celery.md).

use lapin::BasicProperties;
use lapin::options::{BasicPublishOptions, ExchangeDeleteOptions, QueueDeleteOptions};
use lapin::types::{AMQPValue, FieldTable};
use serde_json::json;
use warren::contract::headers;
use warren_tests::broker::TestBroker;
use warren_tests::celery::{CeleryRoute, RESULT_BACKEND, run_client};
use warren_tests::smtp::SmtpSink;
use warren_tests::worker::{WorkerProcess, email_env};
use warren_tests::{WAIT, rcpt};

/// One Celery test's world: a namespace, an SMTP sink, and an email worker
/// whose bridge consumes the test's own Celery queue.
struct CeleryWorld {
    broker: TestBroker,
    sink: SmtpSink,
    worker: WorkerProcess,
    route: CeleryRoute,
    _config: tempfile::TempDir,
}

impl CeleryWorld {
    async fn start() -> Self {
        Self::start_with(&documented_settings(), &[]).await
    }

    /// A world whose worker reads `settings` as its `warren.toml`, with
    /// `env` added.
    async fn start_with(settings: &str, extra: &[(&'static str, String)]) -> Self {
        let broker = TestBroker::new().await.unwrap();
        let sink = SmtpSink::start().await.unwrap();
        let route = CeleryRoute::for_namespace(broker.namespace());
        // The settings docs/celery.md shows, as they are; the test's own
        // Celery names from the environment.
        let config = tempfile::tempdir().unwrap();
        let path = config.path().join("warren.toml");
        std::fs::write(&path, settings).unwrap();
        let mut env = email_env(broker.namespace(), sink.port());
        env.extend(extra.iter().cloned());
        env.push(("WARREN_CONFIG", path.display().to_string()));
        env.push(("WARREN_CELERY__QUEUE", route.queue.clone()));
        env.push(("WARREN_CELERY__EXCHANGE", route.exchange.clone()));
        env.push(("WARREN_CELERY__ROUTING_KEY", route.routing_key.clone()));
        let worker = WorkerProcess::email(&env).await.unwrap();
        worker.wait_ready().await.unwrap();
        worker
            .wait_for_log("Celery bridge consuming.", 1, WAIT)
            .await
            .unwrap();
        Self {
            broker,
            sink,
            worker,
            route,
            _config: config,
        }
    }

    async fn cleanup(self) {
        let channel = self.broker.connection.create_channel().await.unwrap();
        let _ = channel
            .queue_delete(
                self.route.queue.as_str().into(),
                QueueDeleteOptions::default(),
            )
            .await;
        let _ = channel
            .exchange_delete(
                self.route.exchange.as_str().into(),
                ExchangeDeleteOptions::default(),
            )
            .await;
        self.broker
            .cleanup_stems(&["email", "celery"], &[])
            .await
            .unwrap();
    }
}

/// The first TOML block of docs/celery.md ("Switching a task over").
fn documented_settings() -> String {
    let page =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/celery.md")).unwrap();
    let start = page
        .find("```toml\n")
        .expect("docs/celery.md has a TOML example")
        + 8;
    let end = start + page[start..].find("```").unwrap();
    let toml = page[start..end].to_owned();
    assert!(
        toml.contains(&format!("result_backend = \"{RESULT_BACKEND}\"")),
        "{toml}"
    );
    toml
}

/// The TOML block of docs/celery.md's "Chains and link callbacks": the
/// chained task's mapping, added to the first block's.
fn documented_chain_settings() -> String {
    let page =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/celery.md")).unwrap();
    let section = &page[page
        .find("## Chains and link callbacks")
        .expect("docs/celery.md has the chains section")..];
    let start = section.find("```toml\n").expect("a TOML example") + 8;
    let end = start + section[start..].find("```").unwrap();
    let toml = &section[start..end];
    assert!(toml.contains("app.tasks.send_receipt"), "{toml}");
    format!("{}\n{toml}", documented_settings())
}

/// A chain world: the documented settings and mappings, and a templates
/// folder holding the documented `delivered` template.
async fn chain_world() -> (CeleryWorld, tempfile::TempDir) {
    let templates = tempfile::tempdir().unwrap();
    let dir = templates.path().join("delivered");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("subject.txt"), "Delivered: {{ message_id }}").unwrap();
    std::fs::write(
        dir.join("body.txt"),
        "{{ message_id }} went to {{ recipients }} recipient(s) over {{ transport }}.",
    )
    .unwrap();
    let world = CeleryWorld::start_with(
        &documented_chain_settings(),
        &[(
            "WARREN_EMAIL__TEMPLATES_DIR",
            templates.path().display().to_string(),
        )],
    )
    .await;
    (world, templates)
}

/// The meta of `id` in Celery's result backend, once its status is `status`.
async fn celery_meta(id: &str, status: &str) -> serde_json::Value {
    let mut redis = redis::Client::open(RESULT_BACKEND)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let key = format!("celery-task-meta-{id}");
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let text: Option<String> = redis::cmd("GET")
            .arg(&key)
            .query_async(&mut redis)
            .await
            .unwrap();
        if let Some(meta) = text
            .as_deref()
            .map(|t| serde_json::from_str::<serde_json::Value>(t).unwrap())
            .filter(|m| m["status"] == status)
        {
            return meta;
        }
        assert!(std::time::Instant::now() < deadline, "{key}: {text:?}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// docs/celery.md's chain from the real Celery client: `(send_email_task.s(...)
/// | send_receipt.s(...)).delay()` runs as a Warren chain under Celery's ids,
/// the first mail's result passed as the receipt's first argument; a `.si()`
/// step gets none; a `link` callback runs after its task.
#[tokio::test]
async fn a_celery_chain_runs_as_a_warren_chain_passing_each_result_on() {
    let (w, _templates) = chain_world().await;
    let (customer, shop, plain, linked, shop2) = (
        rcpt("celery-chain-customer"),
        rcpt("celery-chain-shop"),
        rcpt("celery-chain-si"),
        rcpt("celery-link"),
        rcpt("celery-link-shop"),
    );
    let receipt = |to: &str| json!({"name": "app.tasks.send_receipt", "args": [to], "kwargs": {"template": "delivered"}});
    let calls = json!([
        {"call": "chain", "steps": [
            {"name": "app.tasks.send_email_task", "args": [customer, "Your order", "It has shipped."]},
            receipt(&shop),
        ]},
        {"call": "chain", "steps": [
            {"name": "app.tasks.send_email_task", "args": [customer, "Second", "Then an immutable step"]},
            {"name": "app.tasks.send_email_task", "args": [plain, "Immutable", "No result passed"], "immutable": true},
        ]},
        {"call": "apply_async", "args": [linked, "Linked", "With a callback"], "link": receipt(&shop2)},
    ]);
    let out = run_client(&w.route, &calls, WAIT).await.unwrap();
    let results: Vec<_> = out.iter().filter(|l| l.get("status").is_some()).collect();
    assert_eq!(results.len(), 3, "{out:#?}");

    // The chain: AsyncResult(last).get() is the receipt's result, under
    // its Celery id.
    let chain = results[0];
    assert_eq!(chain["status"], "SUCCESS", "{chain}");
    let ids: Vec<&str> = chain["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i.as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 2, "{chain}");
    assert_eq!(chain["id"], ids[1]);
    let last_mid = chain["result"]["message_id"].as_str().unwrap();
    assert!(last_mid.contains(ids[1]), "{chain}");
    // The first step ran under its own Celery id, and its result is there.
    let first = celery_meta(ids[0], "SUCCESS").await;
    let first_mid = first["result"]["message_id"].as_str().unwrap();
    assert!(first_mid.contains(ids[0]), "{first}");
    // In order, the result passed: the shop's mail names the customer's.
    let mail = &w
        .sink
        .wait_for_messages_to(&customer, 1, WAIT)
        .await
        .unwrap()[0];
    assert_eq!(mail.subject().as_deref(), Some("Your order"));
    let to_shop = &w.sink.wait_for_messages_to(&shop, 1, WAIT).await.unwrap()[0];
    assert_eq!(
        to_shop.subject(),
        Some(format!("Delivered: {first_mid}")),
        "{}",
        to_shop.data
    );
    assert_eq!(
        to_shop.text_body().as_deref().map(str::trim_end),
        Some(format!("{first_mid} went to 1 recipient(s) over smtp.").as_str()),
        "{}",
        to_shop.data
    );
    assert!(to_shop.at >= mail.at);
    // The second step was a Warren chain step, caused by the first.
    let handed = w
        .worker
        .logs_with_message("Celery task handed on as a Warren task.")
        .into_iter()
        .find(|l| l["fields"]["task_id"] == ids[0])
        .expect("the bridge logged the chain's first task");
    assert_eq!(handed["fields"]["chain_steps"], 1, "{handed}");

    // `.si()`: its own arguments, no result.
    let si = results[1];
    assert_eq!(si["status"], "SUCCESS", "{si}");
    let mail = &w.sink.wait_for_messages_to(&plain, 1, WAIT).await.unwrap()[0];
    assert_eq!(mail.subject().as_deref(), Some("Immutable"));
    assert_eq!(
        mail.text_body().as_deref().map(str::trim_end),
        Some("No result passed")
    );

    // `link=`: the callback runs after the task, with its result, as
    // `{task id}.2`.
    let linked_result = results[2];
    assert_eq!(linked_result["status"], "SUCCESS", "{linked_result}");
    let linked_id = linked_result["id"].as_str().unwrap();
    let linked_mid = linked_result["result"]["message_id"].as_str().unwrap();
    let to_shop2 = &w.sink.wait_for_messages_to(&shop2, 1, WAIT).await.unwrap()[0];
    assert_eq!(to_shop2.subject(), Some(format!("Delivered: {linked_mid}")));
    let callback = celery_meta(&format!("{linked_id}.2"), "SUCCESS").await;
    assert_eq!(callback["result"]["recipients"], 1, "{callback}");
    w.cleanup().await;
}

/// A chain with a step no entry maps, and a task with an errback: each is
/// parked whole with its reason before anything runs, and the chain's last
/// id reads FAILURE with the reason.
#[tokio::test]
async fn a_celery_chain_warren_cannot_run_is_parked_whole_with_its_reason() {
    let (w, _templates) = chain_world().await;
    let to = rcpt("celery-chain-bad");
    let calls = json!([
        {"call": "chain", "steps": [
            {"name": "app.tasks.send_email_task", "args": [to, "Never", "sent"]},
            {"name": "app.tasks.not_mapped", "args": []},
        ]},
        {"call": "apply_async", "args": [to, "Never", "sent either"],
         "link_error": {"name": "app.tasks.send_receipt", "args": [to], "immutable": true}},
    ]);
    let out = run_client(&w.route, &calls, WAIT).await.unwrap();
    let results: Vec<_> = out.iter().filter(|l| l.get("status").is_some()).collect();
    assert_eq!(results.len(), 2, "{out:#?}");
    // `.get()` on the chain's last task: FAILURE, naming the unmapped task.
    let chain = results[0];
    assert_eq!(chain["status"], "FAILURE", "{chain}");
    let error = chain["error"].as_str().unwrap();
    assert!(error.starts_with("celery_unmapped_task: "), "{error}");
    assert!(error.contains("step 2 of the Celery chain"), "{error}");
    assert!(error.contains("app.tasks.not_mapped"), "{error}");
    let errback = results[1];
    assert_eq!(errback["status"], "FAILURE", "{errback}");
    let error = errback["error"].as_str().unwrap();
    assert!(
        error.starts_with("celery_unsupported_workflow: "),
        "{error}"
    );
    assert!(error.contains("link_error"), "{error}");

    let parked = w
        .broker
        .take(&w.broker.dead_queue("celery"), 2, WAIT)
        .await
        .unwrap();
    let kinds: Vec<_> = parked
        .iter()
        .map(|m| m.header(headers::ERROR_KIND).unwrap_or_default())
        .collect();
    assert_eq!(
        kinds,
        ["celery_unmapped_task", "celery_unsupported_workflow"]
    );
    // The chain's first task is parked as it came, under its own id.
    let ids = chain["ids"].as_array().unwrap();
    assert_eq!(parked[0].message_id().as_deref(), ids[0].as_str());
    // Parked before any of it ran: nothing was handed on or sent.
    assert!(
        w.worker
            .logs_with_message("Celery task handed on as a Warren task.")
            .is_empty()
    );
    assert!(w.sink.messages_to(&to).is_empty());
    w.cleanup().await;
}

#[tokio::test]
async fn celery_client_calls_are_delivered_and_their_results_read_back() {
    let w = CeleryWorld::start().await;
    let (by_delay, by_countdown, by_kwargs, refused) = (
        rcpt("celery-delay"),
        rcpt("celery-countdown"),
        rcpt("celery-kwargs"),
        rcpt("reject550"),
    );
    let calls = json!([
        {"call": "delay", "args": [by_delay, "Sent with delay", "Hello from .delay"]},
        {"call": "apply_async", "args": [by_countdown, "Sent with a countdown", "Two seconds later"],
         "countdown": 2, "priority": 7},
        {"call": "apply_async", "kwargs": {"to": by_kwargs, "subject": "Sent with kwargs", "body": "Renamed to text"}},
        {"call": "delay", "args": [refused, "Refused", "The server answers 550"]},
    ]);
    let out = run_client(&w.route, &calls, WAIT).await.unwrap();
    let results: Vec<_> = out.iter().filter(|l| l.get("status").is_some()).collect();
    assert_eq!(results.len(), 4, "{out:#?}");

    // Each success is SUCCESS with the email worker's documented result.
    for (result, to, subject, text) in [
        (
            results[0],
            &by_delay,
            "Sent with delay",
            "Hello from .delay",
        ),
        (
            results[1],
            &by_countdown,
            "Sent with a countdown",
            "Two seconds later",
        ),
        (
            results[2],
            &by_kwargs,
            "Sent with kwargs",
            "Renamed to text",
        ),
    ] {
        assert_eq!(result["status"], "SUCCESS", "{result}");
        assert_eq!(result["result"]["transport"], "smtp", "{result}");
        assert_eq!(result["result"]["recipients"], 1, "{result}");
        let mails = w.sink.wait_for_messages_to(to, 1, WAIT).await.unwrap();
        assert_eq!(mails[0].subject().as_deref(), Some(subject));
        assert!(mails[0].data.contains(text), "{}", mails[0].data);
        // The Celery id is the Warren task id, in the Message-ID.
        let id = result["id"].as_str().unwrap();
        assert_eq!(
            result["result"]["message_id"]
                .as_str()
                .map(|m| m.contains(id)),
            Some(true),
            "{result}"
        );
    }

    // The countdown became a broker-side delay: the bridge handed the task
    // on with its eta and priority, and the mail was not sent before it.
    let countdown_id = results[1]["id"].as_str().unwrap();
    let handed = w
        .worker
        .logs_with_message("Celery task handed on as a Warren task.")
        .into_iter()
        .find(|l| l["fields"]["task_id"] == countdown_id)
        .expect("the bridge logged the countdown task");
    assert_eq!(handed["fields"]["priority"], 7, "{handed}");
    let eta = handed["fields"]["eta"].as_str().unwrap();
    let eta = chrono::DateTime::parse_from_rfc3339(eta).unwrap();
    let mail = &w.sink.messages_to(&by_countdown)[0];
    assert!(
        mail.at * 1000.0 >= eta.timestamp_millis() as f64,
        "sent at {} before its eta {eta}",
        mail.at
    );

    // A task that fails for good is FAILURE, with Warren's kind and reason.
    let failed = results[3];
    assert_eq!(failed["status"], "FAILURE", "{failed}");
    assert_eq!(failed["error_type"], "WarrenTaskError", "{failed}");
    let error = failed["error"].as_str().unwrap();
    assert!(error.starts_with("smtp_permanent: "), "{error}");
    assert!(error.contains("550"), "{error}");
    assert!(
        failed["traceback"].as_str().unwrap().contains("permanent"),
        "{failed}"
    );
    w.cleanup().await;
}

#[tokio::test]
async fn celery_messages_warren_cannot_read_are_parked_with_a_reason() {
    let w = CeleryWorld::start().await;
    let to = rcpt("celery-bad");
    // A pickle message and an unmapped name, from the real client: each is
    // parked, and its result is a FAILURE saying why.
    let calls = json!([
        {"call": "apply_async", "args": [to, "Pickled", "x"], "serializer": "pickle"},
        {"call": "send_task", "name": "app.tasks.not_mapped", "args": [to]},
    ]);
    let out = run_client(&w.route, &calls, WAIT).await.unwrap();
    let results: Vec<_> = out.iter().filter(|l| l.get("status").is_some()).collect();
    assert_eq!(results.len(), 2, "{out:#?}");
    assert_eq!(results[0]["status"], "FAILURE");
    assert!(
        results[0]["error"]
            .as_str()
            .unwrap()
            .starts_with("celery_unsupported_content_type: "),
        "{}",
        results[0]
    );
    assert_eq!(results[1]["status"], "FAILURE");
    assert!(
        results[1]["error"]
            .as_str()
            .unwrap()
            .contains("app.tasks.not_mapped"),
        "{}",
        results[1]
    );

    // A malformed body, as a broken producer would send it.
    let mut hdrs = FieldTable::default();
    for (k, v) in [
        ("lang", "py"),
        ("task", "app.tasks.send_email_task"),
        ("id", "malformed-1"),
    ] {
        hdrs.insert(k.into(), AMQPValue::LongString(v.into()));
    }
    w.broker
        .channel
        .basic_publish(
            w.route.exchange.as_str().into(),
            w.route.routing_key.as_str().into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            br#"{"args": ["not", "a", "list"]}"#,
            BasicProperties::default()
                .with_content_type("application/json".into())
                .with_content_encoding("utf-8".into())
                .with_headers(hdrs),
        )
        .await
        .unwrap()
        .await
        .unwrap();

    let parked = w
        .broker
        .take(&w.broker.dead_queue("celery"), 3, WAIT)
        .await
        .unwrap();
    let kinds: Vec<_> = parked
        .iter()
        .map(|m| m.header(headers::ERROR_KIND).unwrap_or_default())
        .collect();
    assert_eq!(
        kinds,
        [
            "celery_unsupported_content_type",
            "celery_unmapped_task",
            "celery_invalid_body"
        ]
    );
    for m in &parked {
        assert_eq!(m.header(headers::DEAD_REASON).as_deref(), Some("permanent"));
        assert!(!m.header(headers::ERROR).unwrap_or_default().is_empty());
    }
    assert!(parked[0].header(headers::ERROR).unwrap().contains("pickle"));
    // The parked copy is the Celery message as it came, body included.
    assert_eq!(
        parked[0]
            .properties
            .content_type()
            .as_ref()
            .map(|c| c.as_str()),
        Some("application/x-python-serialize")
    );
    assert_eq!(parked[2].body, br#"{"args": ["not", "a", "list"]}"#);
    // Nothing reached the SMTP server.
    assert!(w.sink.messages_to(&to).is_empty());
    w.cleanup().await;
}

/// A Celery task whose `expires` has passed, and a Warren task whose
/// `x-warren-expires-at-ms` has, reach the real email worker: neither is
/// run; each is parked as `expired` in the worker's parking lot, and the
/// Celery one's result is a FAILURE saying so (Celery's `expires`,
/// docs/celery.md).
#[tokio::test]
async fn expired_tasks_reach_a_real_worker_and_are_parked_as_expired_not_run() {
    let w = CeleryWorld::start().await;
    let to = rcpt("celery-expired");
    let past = chrono::Utc::now() - chrono::Duration::minutes(5);

    // Celery protocol 2 as Celery's client writes it, with `expires` set
    // five minutes back (and, unlike Celery's client, no AMQP
    // `expiration`, so the broker never drops it before the bridge sees it).
    let celery_id = format!("expired-{}", uuid::Uuid::new_v4().simple());
    let mut hdrs = FieldTable::default();
    for (k, v) in [
        ("lang", "py".to_owned()),
        ("task", "app.tasks.send_email_task".to_owned()),
        ("id", celery_id.clone()),
        ("root_id", celery_id.clone()),
        ("expires", past.to_rfc3339()),
    ] {
        hdrs.insert(k.into(), AMQPValue::LongString(v.into()));
    }
    let body = json!([[to, "Too late", "Never sent"], {}, {"callbacks": null, "errbacks": null, "chain": null, "chord": null}]);
    w.broker
        .channel
        .basic_publish(
            w.route.exchange.as_str().into(),
            w.route.routing_key.as_str().into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            body.to_string().as_bytes(),
            BasicProperties::default()
                .with_content_type("application/json".into())
                .with_content_encoding("utf-8".into())
                .with_delivery_mode(2)
                .with_headers(hdrs),
        )
        .await
        .unwrap()
        .await
        .unwrap();

    // A Warren task, by the contract, expired at publish.
    let mut hdrs = FieldTable::default();
    warren::contract::set_int(&mut hdrs, headers::EXPIRES_MS, past.timestamp_millis());
    let warren_id = w
        .broker
        .publish(
            "email.send",
            &json!({"to": to, "subject": "Too late too", "text": "Never sent"}),
            warren::PublishOptions {
                headers: hdrs,
                ..Default::default()
            },
        )
        .await
        .unwrap();

    // The bridge handed the Celery task on, with its expiry; the worker
    // parked both without running them.
    let parked = w
        .broker
        .take(&w.broker.email_dead_queue(), 2, WAIT)
        .await
        .unwrap();
    let mut ids: Vec<_> = parked.iter().map(|m| m.message_id().unwrap()).collect();
    ids.sort();
    let mut want = vec![celery_id.clone(), warren_id.clone()];
    want.sort();
    assert_eq!(ids, want);
    for m in &parked {
        assert_eq!(m.header(headers::ERROR_KIND).as_deref(), Some("expired"));
        assert_eq!(m.header(headers::DEAD_REASON).as_deref(), Some("permanent"));
        let error = m.header(headers::ERROR).unwrap();
        assert!(error.contains("expired at"), "{error}");
        assert_eq!(
            warren::contract::header_i64(m.properties.headers().as_ref(), headers::EXPIRES_MS),
            Some(past.timestamp_millis())
        );
    }
    // The worker logs a park after the broker confirms it: the parked copy
    // may be seen first.
    let dead = w
        .worker
        .wait_for_log("Task dead-lettered.", 2, WAIT)
        .await
        .unwrap();
    for id in [&celery_id, &warren_id] {
        let line = dead
            .iter()
            .find(|l| l["span"]["task_id"] == id.as_str())
            .unwrap_or_else(|| panic!("no dead-lettered line for {id}: {dead:#?}"));
        assert_eq!(line["fields"]["error_kind"], "expired", "{line}");
    }
    assert!(w.worker.logs_with_message("Task succeeded.").is_empty());
    assert!(w.sink.messages_to(&to).is_empty());

    // The Celery client's AsyncResult reads FAILURE, with the reason.
    let mut redis = redis::Client::open(RESULT_BACKEND)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let key = format!("celery-task-meta-{celery_id}");
    let deadline = std::time::Instant::now() + WAIT;
    let meta: serde_json::Value = loop {
        let text: Option<String> = redis::cmd("GET")
            .arg(&key)
            .query_async(&mut redis)
            .await
            .unwrap();
        if let Some(meta) = text
            .as_deref()
            .map(|t| serde_json::from_str::<serde_json::Value>(t).unwrap())
            .filter(|m| m["status"] == "FAILURE")
        {
            break meta;
        }
        assert!(std::time::Instant::now() < deadline, "{key}: {text:?}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let message = meta["result"]["exc_message"][0].as_str().unwrap();
    assert!(message.starts_with("expired: "), "{meta}");
    let _: () = redis::cmd("DEL")
        .arg(&key)
        .query_async(&mut redis)
        .await
        .unwrap();
    w.cleanup().await;
}
