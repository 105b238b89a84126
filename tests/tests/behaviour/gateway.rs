//! The gateway end to end: a real gateway process answering HTTP over
//! TCP, real email and image worker processes, the real RabbitMQ (tasks,
//! and the task events stream the statuses are built from), a real SMTP
//! server and a real local image store.
//!
//! Each test has its own namespace (its own events stream too), its own
//! SMTP sink and store, so they run in parallel; each stops its processes
//! and deletes its queues, exchanges and stream at the end.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use image::ImageFormat;
use lapin::options::{QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::{AMQPValue, FieldTable};
use serde_json::{Value, json};
use warren_tests::broker::TestBroker;
use warren_tests::http::{self, Multipart, SseEvent};
use warren_tests::images::photo_png;
use warren_tests::ops::{http_get, sample};
use warren_tests::smtp::SmtpSink;
use warren_tests::worker::{WorkerProcess, email_env, gateway_env, image_env, with};
use warren_tests::{WAIT, rcpt};

fn task_id(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// One test's world: its namespace, store, SMTP sink and processes.
struct World {
    broker: TestBroker,
    store: tempfile::TempDir,
    sink: SmtpSink,
    processes: Vec<WorkerProcess>,
}

impl World {
    async fn new() -> Self {
        // Build the binaries first: a build can take minutes, and blocks
        // this test's thread, which would starve its broker connection of
        // heartbeats.
        for (package, bin) in [
            ("gateway", "gateway"),
            ("email-worker", "email-worker"),
            ("image-worker", "image-worker"),
        ] {
            warren_tests::worker::binary(package, bin).expect("the binary builds");
        }
        Self {
            broker: TestBroker::new().await.expect("broker"),
            store: tempfile::tempdir().expect("store root"),
            sink: SmtpSink::start().await.expect("smtp sink"),
            processes: Vec::new(),
        }
    }

    fn ns(&self) -> &str {
        self.broker.namespace()
    }

    /// Starts a gateway, waits until it has caught up with the events
    /// stream, and returns its HTTP and ops addresses.
    async fn gateway(&mut self, overrides: &[(&'static str, &str)]) -> (SocketAddr, SocketAddr) {
        let env = with(gateway_env(self.ns(), self.store.path()), overrides);
        let gateway = WorkerProcess::gateway(&env).await.expect("gateway");
        let addr = gateway.http_addr().await.expect("http addr");
        let ops = gateway.ops_addr().await.expect("ops addr");
        gateway.wait_caught_up().await.expect("gateway caught up");
        self.processes.push(gateway);
        (addr, ops)
    }

    async fn email_worker(&mut self, overrides: &[(&'static str, &str)]) {
        let env = with(email_env(self.ns(), self.sink.port()), overrides);
        let worker = WorkerProcess::email(&env).await.expect("email worker");
        worker.wait_ready().await.expect("email worker ready");
        self.processes.push(worker);
    }

    async fn image_worker(&mut self) {
        let env = image_env(self.ns(), self.store.path());
        let worker = WorkerProcess::image(&env).await.expect("image worker");
        worker.wait_ready().await.expect("image worker ready");
        self.processes.push(worker);
    }

    fn process(&self, name: &str) -> &WorkerProcess {
        self.processes
            .iter()
            .find(|p| p.name == name)
            .expect("such a process")
    }

    /// Stops every process (SIGTERM), then deletes the namespace's queues,
    /// exchanges and events stream.
    async fn finish(mut self) {
        for p in &self.processes {
            let _ = p.signal("TERM");
        }
        for p in &mut self.processes {
            let status = p.wait_exit(Duration::from_secs(20)).await.expect("exit");
            assert!(status.success(), "{} exited with {status}", p.name);
        }
        self.broker
            .cleanup_stems(
                &["email", "image"],
                &[Duration::from_secs(1), Duration::from_secs(2)],
            )
            .await
            .expect("cleanup");
    }
}

/// `GET /v1/tasks/{id}`: the status code and body.
async fn status(http: SocketAddr, id: &str) -> (u16, Value) {
    let r = http::get(http, &format!("/v1/tasks/{id}")).await.unwrap();
    (r.status, r.json().unwrap())
}

/// Polls the task's status until it is final, returning every state seen
/// (consecutive repeats collapsed) and the final body.
async fn watch(http: SocketAddr, id: &str, every: Duration) -> (Vec<String>, Value) {
    let deadline = Instant::now() + WAIT;
    let mut seen: Vec<String> = Vec::new();
    loop {
        let (_, body) = status(http, id).await;
        let state = body["state"].as_str().unwrap().to_owned();
        if seen.last() != Some(&state) {
            seen.push(state.clone());
        }
        if state == "succeeded" || state == "dead_lettered" {
            return (seen, body);
        }
        assert!(
            Instant::now() < deadline,
            "task {id} not final within {WAIT:?}; states seen: {seen:?}, last: {body}"
        );
        tokio::time::sleep(every).await;
    }
}

/// Reads an SSE stream to its end (within `WAIT`).
async fn read_all_events(stream: &mut http::SseStream) -> Vec<SseEvent> {
    let mut events = Vec::new();
    let read = async {
        while let Some(e) = stream.next_event().await.unwrap() {
            events.push(e);
        }
    };
    tokio::time::timeout(WAIT, read)
        .await
        .expect("the SSE stream ends at the final state");
    events
}

fn states(events: &[SseEvent]) -> Vec<String> {
    events
        .iter()
        .map(|e| e.json().unwrap()["state"].as_str().unwrap().to_owned())
        .collect()
}

/// A timestamp of a status or event, in nanoseconds since the epoch
/// (read through Warren's own event type, which parses RFC 3339).
fn nanos(v: &Value) -> i64 {
    let event: warren::events::TaskEvent = serde_json::from_value(json!({
        "task_id": "", "task_type": "", "state": "queued", "attempt": 1, "at": v,
    }))
    .unwrap_or_else(|e| panic!("{v} is not a timestamp: {e}"));
    event
        .at
        .timestamp_nanos_opt()
        .expect("a timestamp in range")
}

const MS: i64 = 1_000_000;

#[tokio::test]
async fn an_email_enqueued_over_http_goes_queued_running_succeeded() {
    let mut w = World::new().await;
    // The queue exists before any worker: the task waits in it, queued.
    w.broker
        .declare_email_topology(&[Duration::from_millis(200), Duration::from_millis(300)])
        .await
        .unwrap();
    let (http, ops) = w.gateway(&[]).await;
    // The sink answers after 1.5 s, so `running` lasts long enough to see.
    let to = rcpt("slow1500");
    let id = task_id("welcome");
    let r = http::post_json(
        http,
        &format!("/v1/tasks/email?id={id}&priority=7"),
        &json!({"to": to, "subject": "Welcome", "text": "Hello from the gateway"}),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 202, "{}", r.text());
    let accepted = r.json().unwrap();
    assert_eq!(accepted["task_id"], id);
    assert_eq!(accepted["state"], "queued");
    assert_eq!(accepted["priority"], 7);
    assert_eq!(
        r.header("location"),
        Some(format!("/v1/tasks/{id}").as_str())
    );

    // Queued: waiting in the work queue for a worker.
    let (code, body) = status(http, &id).await;
    assert_eq!(
        (code, body["state"].as_str()),
        (200, Some("queued")),
        "{body}"
    );
    assert_eq!(body["task_type"], "email.send");
    assert!(body["queued_at"].is_string(), "{body}");
    let queue = w.broker.names.work_queue("email");
    assert_eq!(w.broker.depth(&queue).await.unwrap(), 1);

    w.email_worker(&[]).await;
    let (seen, done) = watch(http, &id, Duration::from_millis(50)).await;
    assert_eq!(seen, vec!["queued", "running", "succeeded"]);
    assert_eq!(done["task_type"], "email.send");
    assert_eq!(done["attempt"], 1);
    assert!(
        done["result"]["message_id"].as_str().unwrap().contains(&id),
        "{done}"
    );
    let (queued, started, finished) = (
        nanos(&done["queued_at"]),
        nanos(&done["started_at"]),
        nanos(&done["finished_at"]),
    );
    assert!(queued <= started && started <= finished, "{done}");
    assert!(done.get("error").is_none() && done.get("reason").is_none());

    // The SMTP server got it, once, with the Message-ID of the task.
    let mails = w.sink.wait_for_messages_to(&to, 1, WAIT).await.unwrap();
    assert_eq!(mails[0].subject().as_deref(), Some("Welcome"));
    assert!(mails[0].message_id().unwrap().contains(&id));

    // The ops port counts requests by route and the confirmed publish.
    let (_, metrics) = http_get(ops, "/metrics").await.unwrap();
    let posted = sample(
        &metrics,
        "warren_http_requests_total",
        &[("route", "/v1/tasks/email"), ("status_class", "2xx")],
    );
    assert_eq!(posted, 1.0, "{metrics}");
    let confirmed = sample(
        &metrics,
        "warren_publish_confirms_total",
        &[
            ("service", "gateway"),
            ("purpose", "task"),
            ("result", "ack"),
        ],
    );
    assert_eq!(confirmed, 1.0);
    assert_eq!(http_get(ops, "/readyz").await.unwrap().0, 200);
    assert_eq!(http_get(ops, "/healthz").await.unwrap().0, 200);
    w.finish().await;
}

#[tokio::test]
async fn a_transient_failure_shows_retrying_then_succeeded_and_a_permanent_one_dead_lettered() {
    let mut w = World::new().await;
    // A 1 s delay before the retry.
    let ladder = r#"["1s","2s"]"#;
    w.email_worker(&[("WARREN_CONSUMER__RETRY_DELAYS", ladder)])
        .await;
    let (http, _) = w.gateway(&[("WARREN_TASKS__RETRY_DELAYS", ladder)]).await;

    let flaky_to = rcpt("tempfail451x1");
    let r = http::post_json(
        http,
        "/v1/tasks",
        &json!({"type": "email.send", "payload": {"to": flaky_to, "subject": "Flaky", "text": "451 once"}}),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 202, "{}", r.text());
    let flaky = r.json().unwrap()["task_id"].as_str().unwrap().to_owned();

    // The task's whole history, read to its final state: the `retrying`
    // that passes by is in it, however briefly it lasted.
    let mut history = http::sse(http, &format!("/v1/tasks/{flaky}/events"), &[])
        .await
        .unwrap();
    let events: Vec<Value> = read_all_events(&mut history)
        .await
        .iter()
        .map(|e| e.json().unwrap())
        .collect();
    let retrying = events
        .iter()
        .find(|e| e["state"] == "retrying")
        .unwrap_or_else(|| panic!("no retrying event: {events:?}"));
    assert_eq!(retrying["attempt"], 1);
    assert_eq!(retrying["error_kind"], "smtp_transient");
    assert!(
        retrying["error"].as_str().unwrap().contains("451"),
        "{retrying}"
    );
    // The retry time is stamped before the copy is confirmed and the event
    // after it: the announced wait is positive and at most the delay.
    let next_attempt_at = nanos(&retrying["next_attempt_at"]);
    let wait = next_attempt_at - nanos(&retrying["at"]);
    assert!(
        0 < wait && wait <= 1000 * MS,
        "next try {} ms later: {retrying}",
        wait / MS
    );
    // The broker's delay queue holds the copy the whole delay: the second
    // attempt starts no earlier than announced.
    let second = events
        .iter()
        .find(|e| e["state"] == "running" && e["attempt"] == 2)
        .unwrap_or_else(|| panic!("no second attempt: {events:?}"));
    assert!(
        nanos(&second["at"]) >= next_attempt_at,
        "the second attempt started before next_attempt_at: {second} after {retrying}"
    );
    let (seen, done) = watch(http, &flaky, Duration::from_millis(20)).await;
    assert_eq!(
        seen.last().map(String::as_str),
        Some("succeeded"),
        "{seen:?}"
    );
    assert_eq!(done["attempt"], 2);
    assert!(done.get("next_attempt_at").is_none(), "{done}");
    assert_eq!(w.sink.messages_to(&flaky_to).len(), 1);

    let bad_to = rcpt("reject550");
    let r = http::post_json(
        http,
        "/v1/tasks/email",
        &json!({"to": bad_to, "subject": "Rejected", "text": "550"}),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 202, "{}", r.text());
    let bad = r.json().unwrap()["task_id"].as_str().unwrap().to_owned();
    let (_, dead) = watch(http, &bad, Duration::from_millis(20)).await;
    assert_eq!(dead["state"], "dead_lettered", "{dead}");
    assert_eq!(dead["reason"], "permanent");
    assert_eq!(dead["error_kind"], "smtp_permanent");
    assert!(dead["error"].as_str().unwrap().contains("550"), "{dead}");
    assert_eq!(dead["attempt"], 1);
    assert!(dead["finished_at"].is_string());
    // The parking lot holds it.
    let parked = w
        .broker
        .take(&w.broker.dead_queue("email"), 1, WAIT)
        .await
        .unwrap();
    assert_eq!(parked[0].message_id().as_deref(), Some(bad.as_str()));
    w.finish().await;
}

#[tokio::test]
async fn the_sse_stream_delivers_the_events_in_order_and_closes_at_the_final_state() {
    let mut w = World::new().await;
    w.email_worker(&[]).await;
    let (http, ops) = w.gateway(&[]).await;
    let to = rcpt("tempfail451x1");
    let r = http::post_json(
        http,
        "/v1/tasks/email",
        &json!({"to": to, "subject": "Watched", "text": "live"}),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 202, "{}", r.text());
    let id = r.json().unwrap()["task_id"].as_str().unwrap().to_owned();

    // Live, from right after the 202.
    let mut live = http::sse(http, &format!("/v1/tasks/{id}/events"), &[])
        .await
        .unwrap();
    assert_eq!(live.status, 200);
    assert!(
        live.header("content-type")
            .unwrap()
            .starts_with("text/event-stream")
    );
    let events = read_all_events(&mut live).await;
    let got = states(&events);
    // The `queued` event may reach the stream after `running` (it is sent
    // once the broker confirmed, when the worker may have started): a live
    // subscriber then gets the rest, in order.
    let rest: Vec<&str> = got
        .iter()
        .map(String::as_str)
        .skip_while(|s| *s == "queued")
        .collect();
    assert_eq!(
        rest,
        vec!["running", "retrying", "running", "succeeded"],
        "{got:?}"
    );
    for e in &events {
        let data = e.json().unwrap();
        assert_eq!(data["task_id"], id);
        assert_eq!(
            e.event.as_deref(),
            data["state"].as_str(),
            "event name = state"
        );
        assert!(e.id.as_deref().unwrap().parse::<u64>().is_ok(), "{e:?}");
    }
    let attempts: Vec<u64> = events
        .iter()
        .map(|e| e.json().unwrap()["attempt"].as_u64().unwrap())
        .collect();
    assert_eq!(attempts[attempts.len() - 4..], [1, 1, 2, 2]);
    let times: Vec<i64> = events
        .iter()
        .map(|e| nanos(&e.json().unwrap()["at"]))
        .collect();
    assert!(
        times.windows(2).all(|p| p[0] <= p[1]),
        "in time order: {times:?}"
    );
    let retrying = events[events.len() - 3].json().unwrap();
    assert_eq!(retrying["error_kind"], "smtp_transient");
    assert!(retrying["next_attempt_at"].is_string());
    let succeeded = events.last().unwrap().json().unwrap();
    assert!(succeeded["result"]["message_id"].is_string());

    // Afterwards: the whole history, `queued` first, and the stream ends.
    let mut replay = http::sse(http, &format!("/v1/tasks/{id}/events"), &[])
        .await
        .unwrap();
    let all = read_all_events(&mut replay).await;
    assert_eq!(
        states(&all),
        vec!["queued", "running", "retrying", "running", "succeeded"]
    );
    let queued = all[0].json().unwrap();
    assert!(
        queued["by"].as_str().unwrap().starts_with("gateway@"),
        "{queued}"
    );
    // Resuming after the second event sends the other three.
    let second = all[1].id.clone().unwrap();
    let mut resumed = http::sse(
        http,
        &format!("/v1/tasks/{id}/events"),
        &[("Last-Event-ID", second.as_str())],
    )
    .await
    .unwrap();
    assert_eq!(
        states(&read_all_events(&mut resumed).await),
        vec!["retrying", "running", "succeeded"]
    );

    // An id nobody knows: 404 once `events.unknown_wait` (1 s here) passed.
    let started = Instant::now();
    let mut unknown = http::sse(http, "/v1/tasks/never-seen/events", &[])
        .await
        .unwrap();
    assert_eq!(unknown.status, 404);
    assert!(started.elapsed() >= Duration::from_millis(900));
    let problem: Value = serde_json::from_str(&unknown.rest().await.unwrap()).unwrap();
    assert_eq!(problem["type"], "urn:warren:problem:unknown_task");
    assert_eq!(problem["task_id"], "never-seen");

    let (_, metrics) = http_get(ops, "/metrics").await.unwrap();
    assert_eq!(sample(&metrics, "warren_gateway_sse_streams", &[]), 0.0);
    w.finish().await;
}

#[tokio::test]
async fn a_second_gateway_started_after_the_tasks_ran_reports_the_same_statuses() {
    let mut w = World::new().await;
    w.email_worker(&[]).await;
    let (first, _) = w.gateway(&[]).await;
    let mut ids = Vec::new();
    for prefix in ["fine", "tempfail451x1", "reject550"] {
        let r = http::post_json(
            first,
            "/v1/tasks/email",
            &json!({"to": rcpt(prefix), "subject": prefix, "text": "x"}),
        )
        .await
        .unwrap();
        assert_eq!(r.status, 202, "{}", r.text());
        ids.push(r.json().unwrap()["task_id"].as_str().unwrap().to_owned());
    }
    let mut finals = Vec::new();
    for id in &ids {
        finals.push(watch(first, id, Duration::from_millis(20)).await.1);
    }
    assert_eq!(
        finals
            .iter()
            .map(|f| f["state"].clone())
            .collect::<Vec<_>>(),
        vec!["succeeded", "succeeded", "dead_lettered"]
    );
    // Every event is in the stream (the `queued` ones too) before the
    // second gateway starts reading it.
    for id in &ids {
        let deadline = Instant::now() + WAIT;
        while status(first, id).await.1["queued_at"].is_null() {
            assert!(Instant::now() < deadline, "no queued_at for {id}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    let (second, _) = w.gateway(&[]).await;
    for id in &ids {
        let a = status(first, id).await;
        let b = status(second, id).await;
        assert_eq!(a, b, "both gateways answer alike for {id}");
        let history = |http| async move {
            let mut s = http::sse(http, &format!("/v1/tasks/{id}/events"), &[])
                .await
                .unwrap();
            read_all_events(&mut s).await
        };
        assert_eq!(history(first).await, history(second).await, "{id}");
    }
    let unknown = status(second, "never-seen").await;
    assert_eq!(
        unknown,
        (404, json!({"task_id": "never-seen", "state": "unknown"}))
    );
    assert_eq!(status(first, "never-seen").await, unknown);
    w.finish().await;
}

#[tokio::test]
async fn an_uploaded_png_gets_its_thumbnail_in_the_store_and_its_key_in_the_result() {
    let mut w = World::new().await;
    w.image_worker().await;
    let (http, _) = w.gateway(&[]).await;
    let original = photo_png(300, 200);
    let form = Multipart::new().file("file", "../holiday photo.png", "image/png", &original);
    let r = http::post_multipart(http, "/v1/images", form)
        .await
        .unwrap();
    assert_eq!(r.status, 202, "{}", r.text());
    let accepted = r.json().unwrap();
    let id = accepted["task_id"].as_str().unwrap().to_owned();
    assert_eq!(accepted["task_type"], "image.thumbnail");
    let key = accepted["source_key"].as_str().unwrap().to_owned();
    assert_eq!(key, format!("uploads/{id}/holiday_photo.png"));
    assert_eq!(std::fs::read(w.store.path().join(&key)).unwrap(), original);

    let (_, done) = watch(http, &id, Duration::from_millis(50)).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let result = &done["result"];
    assert_eq!(result["source"]["key"], key.as_str());
    assert_eq!(result["source"]["format"], "png");
    let outputs = result["outputs"].as_array().unwrap();
    assert_eq!(outputs.len(), 1, "the default: one 256x256 JPEG");
    let thumb_key = outputs[0]["key"].as_str().unwrap();
    let thumb = std::fs::read(w.store.path().join(thumb_key)).unwrap();
    assert_eq!(image::guess_format(&thumb).unwrap(), ImageFormat::Jpeg);
    let decoded = image::load_from_memory(&thumb).unwrap();
    assert_eq!(decoded.width(), 256);
    assert!(
        (170..=171).contains(&decoded.height()),
        "{}",
        decoded.height()
    );

    // Outputs of the client's choosing, and a file name with no extension.
    let form = Multipart::new()
        .file("file", "scan", "application/octet-stream", &photo_png(120, 90))
        .text(
            "outputs",
            r#"[{"width": 64, "height": 64, "fit": "cover", "format": "webp", "name": "square.webp"}]"#,
        );
    let r = http::post_multipart(http, "/v1/images?id=my-upload-1&priority=3", form)
        .await
        .unwrap();
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(
        r.json().unwrap()["source_key"],
        "uploads/my-upload-1/scan.png"
    );
    let (_, done) = watch(http, "my-upload-1", Duration::from_millis(50)).await;
    let square = done["result"]["outputs"][0]["key"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(square, "thumbnails/my-upload-1/square.webp");
    let bytes = std::fs::read(w.store.path().join(&square)).unwrap();
    let decoded = image::load_from_memory_with_format(&bytes, ImageFormat::WebP).unwrap();
    assert_eq!((decoded.width(), decoded.height()), (64, 64));
    w.finish().await;
}

#[tokio::test]
async fn a_delayed_task_waits_in_the_delay_cascade_and_the_openapi_document_is_served() {
    let mut w = World::new().await;
    w.email_worker(&[]).await;
    let (http, _) = w.gateway(&[]).await;
    let to = rcpt("later");
    let r = http::post_json(
        http,
        "/v1/tasks",
        &json!({"type": "email.send", "payload": {"to": to, "subject": "Later", "text": "x"}, "delay": "1s", "priority": 2}),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 202, "{}", r.text());
    let accepted = r.json().unwrap();
    assert_eq!(accepted["state"], "scheduled", "{accepted}");
    assert!(accepted["due_at"].is_string(), "{accepted}");
    let id = accepted["task_id"].as_str().unwrap().to_owned();
    let (_, done) = watch(http, &id, Duration::from_millis(20)).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let waited_ms = (nanos(&done["started_at"]) - nanos(&done["queued_at"])) / MS;
    assert!(waited_ms >= 980, "waited {waited_ms} ms");

    // Three hours: accepted, and reported scheduled with its due time.
    let r = http::post_json(
        http,
        "/v1/tasks",
        &json!({"type": "email.send", "payload": {"to": to, "subject": "Much later", "text": "x"}, "delay": "3h"}),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 202, "{}", r.text());
    let accepted = r.json().unwrap();
    let id = accepted["task_id"].as_str().unwrap().to_owned();
    let due = accepted["due_at"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + WAIT;
    let status = loop {
        let (_, body) = status(http, &id).await;
        if body["state"] != "unknown" || Instant::now() > deadline {
            break body;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status["state"], "scheduled", "{status}");
    assert_eq!(
        nanos(&status["due_at"]),
        nanos(&json!(due)),
        "the due time is the one accepted: {status}"
    );
    let in_3h = nanos(&status["due_at"]) - nanos(&status["queued_at"]);
    assert!((in_3h - 3 * 3600 * 1000 * MS).abs() < 1000 * MS, "{status}");
    w.sink.wait_for_messages_to(&to, 1, WAIT).await.unwrap();

    let r = http::get(http, "/openapi.json").await.unwrap();
    assert_eq!(r.status, 200);
    let doc = r.json().unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/v1/tasks",
        "/v1/tasks/email",
        "/v1/tasks/image",
        "/v1/images",
        "/v1/tasks/{id}",
        "/v1/tasks/{id}/events",
    ] {
        assert!(doc["paths"].get(path).is_some(), "{path} documented");
    }
    assert!(doc["components"]["schemas"]["SendEmail"]["properties"]["to"].is_object());
    w.finish().await;
}

/// One bad request and what it must get.
struct Case {
    what: &'static str,
    path: &'static str,
    content_type: Option<String>,
    body: Vec<u8>,
    status: u16,
    slug: &'static str,
    field: Option<&'static str>,
}

fn case(
    what: &'static str,
    path: &'static str,
    body: Value,
    status: u16,
    slug: &'static str,
    field: Option<&'static str>,
) -> Case {
    Case {
        what,
        path,
        content_type: Some("application/json".to_owned()),
        body: serde_json::to_vec(&body).unwrap(),
        status,
        slug,
        field,
    }
}

#[tokio::test]
async fn each_bad_request_gets_its_code_and_a_problem_body_naming_the_field() {
    let mut w = World::new().await;
    // Queues but no worker: whatever is published stays there to count.
    w.broker
        .declare_email_topology(&[Duration::from_millis(200), Duration::from_millis(300)])
        .await
        .unwrap();
    let (http, ops) = w
        .gateway(&[
            ("WARREN_HTTP__MAX_BODY_BYTES", "4096"),
            ("WARREN_HTTP__MAX_UPLOAD_BYTES", "4096"),
        ])
        .await;
    let email = json!({"to": "ada@example.com", "subject": "Hi", "text": "x"});
    let with_field = |field: &str, value: Value| {
        let mut e = email.clone();
        e[field] = value;
        e
    };
    let mut cases = vec![
        Case {
            what: "malformed JSON",
            path: "/v1/tasks/email",
            content_type: Some("application/json".to_owned()),
            body: b"{\"to\": ".to_vec(),
            status: 400,
            slug: "malformed_json",
            field: None,
        },
        Case {
            what: "not JSON content",
            path: "/v1/tasks/email",
            content_type: Some("text/plain".to_owned()),
            body: serde_json::to_vec(&email).unwrap(),
            status: 415,
            slug: "unsupported_media_type",
            field: None,
        },
        Case {
            what: "no content type",
            path: "/v1/tasks",
            content_type: None,
            body: b"{}".to_vec(),
            status: 415,
            slug: "unsupported_media_type",
            field: None,
        },
        case(
            "too large",
            "/v1/tasks/email",
            with_field("text", json!("x".repeat(5000))),
            413,
            "payload_too_large",
            None,
        ),
        case(
            "unknown field",
            "/v1/tasks/email",
            with_field("subjet", json!("typo")),
            422,
            "unknown_field",
            Some("subjet"),
        ),
        case(
            "missing field",
            "/v1/tasks/email",
            json!({"subject": "Hi", "text": "x"}),
            422,
            "missing_field",
            Some("to"),
        ),
        case(
            "wrong type",
            "/v1/tasks/email",
            with_field("to", json!(42)),
            422,
            "invalid_type",
            Some("to"),
        ),
        case(
            "an address the worker refuses",
            "/v1/tasks/email",
            with_field("cc", json!(["ok@example.com", "not an address"])),
            422,
            "invalid_address",
            Some("cc"),
        ),
        case(
            "header injection",
            "/v1/tasks/email",
            with_field("subject", json!("Hi\r\nBcc: victim@example.com")),
            422,
            "header_injection",
            Some("subject"),
        ),
        case(
            "no body",
            "/v1/tasks/email",
            json!({"to": "ada@example.com", "subject": "Hi"}),
            422,
            "invalid_payload",
            Some("text"),
        ),
        case(
            "a key that leaves the store",
            "/v1/tasks/image",
            json!({"source": {"key": "../../etc/passwd"}, "outputs": [{"width": 10, "height": 10}]}),
            422,
            "invalid_key",
            Some("source.key"),
        ),
        case(
            "a nested bad type",
            "/v1/tasks/image",
            json!({"source": {"key": "a.png"}, "outputs": [{"width": 10, "height": -1}]}),
            422,
            "invalid_value",
            Some("outputs[0].height"),
        ),
        case(
            "priority out of range",
            "/v1/tasks",
            json!({"type": "email.send", "payload": email, "priority": 12}),
            422,
            "invalid_value",
            Some("priority"),
        ),
        case(
            "delay beyond the delay cascade",
            "/v1/tasks",
            json!({"type": "email.send", "payload": email, "delay": "9years"}),
            422,
            "delay_too_long",
            Some("delay"),
        ),
        case(
            "delay not a duration",
            "/v1/tasks",
            json!({"type": "email.send", "payload": email, "delay": "soon"}),
            422,
            "invalid_value",
            Some("delay"),
        ),
        case(
            "bad task type",
            "/v1/tasks",
            json!({"type": "email send", "payload": {}}),
            422,
            "invalid_value",
            Some("type"),
        ),
        case(
            "bad task id",
            "/v1/tasks",
            json!({"type": "email.send", "payload": email, "id": "a/b"}),
            422,
            "invalid_value",
            Some("id"),
        ),
        case(
            "a payload field the worker does not know",
            "/v1/tasks",
            json!({"type": "email.send", "payload": {"to": "a@example.com", "sbject": "x"}}),
            422,
            "unknown_field",
            Some("payload.sbject"),
        ),
        case(
            "a missing payload",
            "/v1/tasks",
            json!({"type": "email.send"}),
            422,
            "missing_field",
            Some("payload"),
        ),
        case(
            "an unknown query parameter",
            "/v1/tasks/email?prio=1",
            email.clone(),
            422,
            "unknown_field",
            Some("prio"),
        ),
        case(
            "a bad query priority",
            "/v1/tasks/email?priority=high",
            email.clone(),
            422,
            "invalid_value",
            Some("priority"),
        ),
        case(
            "a task type no worker has a queue for",
            "/v1/tasks",
            json!({"type": "report.build", "payload": {}}),
            503,
            "unroutable",
            None,
        ),
    ];
    // Uploads.
    let upload = |form: Multipart| Case {
        what: "",
        path: "/v1/images",
        content_type: Some(form.content_type()),
        body: form.into_body(),
        status: 0,
        slug: "",
        field: None,
    };
    let mut big = photo_png(8, 8);
    big.extend(std::iter::repeat_n(0u8, 5000));
    cases.extend([
        Case {
            what: "an upload that is not an image",
            status: 415,
            slug: "unsupported_media_type",
            field: Some("file"),
            ..upload(Multipart::new().file("file", "cat.png", "image/png", b"GIF? no, plain text"))
        },
        Case {
            what: "an upload over the limit",
            status: 413,
            slug: "payload_too_large",
            field: Some("file"),
            ..upload(Multipart::new().file("file", "big.png", "image/png", &big))
        },
        Case {
            what: "an upload without a file part",
            status: 422,
            slug: "missing_field",
            field: Some("file"),
            ..upload(Multipart::new().text("outputs", "[]"))
        },
        Case {
            what: "an upload with an unknown part",
            status: 422,
            slug: "unknown_field",
            field: Some("picture"),
            ..upload(Multipart::new().file("picture", "a.png", "image/png", &photo_png(4, 4)))
        },
        Case {
            what: "an upload with outputs the worker refuses",
            status: 422,
            slug: "invalid_payload",
            field: Some("outputs[0]"),
            ..upload(
                Multipart::new()
                    .file("file", "a.png", "image/png", &photo_png(4, 4))
                    .text("outputs", r#"[{"width": 10, "height": 10, "quality": 0}]"#),
            )
        },
        Case {
            what: "a multipart upload without a boundary",
            path: "/v1/images",
            content_type: Some("multipart/form-data".to_owned()),
            body: b"--X\r\n\r\n".to_vec(),
            status: 400,
            slug: "malformed_multipart",
            field: None,
        },
        Case {
            what: "a multipart upload cut off inside its file part",
            path: "/v1/images",
            content_type: Some("multipart/form-data; boundary=B".to_owned()),
            body: b"--B\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.png\"\r\nContent-Type: image/png\r\n\r\n\x89PNG\r\n\x1a\n".to_vec(),
            status: 400,
            slug: "malformed_multipart",
            field: None,
        },
        Case {
            what: "an upload that is not multipart",
            path: "/v1/images",
            content_type: Some("application/json".to_owned()),
            body: b"{}".to_vec(),
            status: 415,
            slug: "unsupported_media_type",
            field: None,
        },
    ]);

    for c in &cases {
        let r = http::post(http, c.path, c.content_type.as_deref(), &c.body)
            .await
            .unwrap();
        assert_eq!(r.status, c.status, "{}: {}", c.what, r.text());
        assert_eq!(
            r.header("content-type"),
            Some("application/problem+json"),
            "{}",
            c.what
        );
        let p = r.json().unwrap();
        assert_eq!(
            p["type"],
            format!("urn:warren:problem:{}", c.slug),
            "{}: {p}",
            c.what
        );
        assert_eq!(p["status"], c.status, "{}", c.what);
        assert!(
            p["title"].is_string() && p["detail"].is_string(),
            "{}: {p}",
            c.what
        );
        assert_eq!(p["field"].as_str(), c.field, "{}: {p}", c.what);
        if let Some(field) = c.field {
            assert!(
                p["detail"]
                    .as_str()
                    .unwrap()
                    .contains(field.split('[').next().unwrap()),
                "{}: the detail names the field: {p}",
                c.what
            );
        }
        if c.slug == "invalid_address" || c.slug == "header_injection" {
            assert_eq!(p["error_kind"], c.slug, "the worker's error kind");
        }
    }

    // Not found, a method not served, an unknown task.
    let r = http::get(http, "/v2/nothing").await.unwrap();
    assert_eq!(r.status, 404);
    assert_eq!(r.json().unwrap()["type"], "urn:warren:problem:not_found");
    let r = http::request(http, "DELETE", "/v1/tasks/x", &[], &[])
        .await
        .unwrap();
    assert_eq!(r.status, 405);
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    let (code, body) = status(http, "nobody-knows-me").await;
    assert_eq!(
        (code, body),
        (
            404,
            json!({"task_id": "nobody-knows-me", "state": "unknown"})
        )
    );

    // Nothing bad was published, and the gateway is alive and ready.
    let queue = w.broker.names.work_queue("email");
    assert_eq!(w.broker.depth(&queue).await.unwrap(), 0);
    assert_eq!(http_get(ops, "/readyz").await.unwrap().0, 200);
    let (_, metrics) = http_get(ops, "/metrics").await.unwrap();
    let refused = sample(
        &metrics,
        "warren_http_requests_total",
        &[("status_class", "4xx")],
    );
    assert!(refused >= (cases.len() - 1) as f64, "{metrics}");
    assert!(
        w.process("gateway")
            .logs_with_message("A request handler panicked; answered 500.")
            .is_empty()
    );
    w.finish().await;
}

#[tokio::test]
async fn image_progress_reaches_sse_in_order_coalesced_and_ends_with_the_final_state() {
    let mut w = World::new().await;
    w.image_worker().await;
    let (http, _) = w.gateway(&[]).await;
    let outputs: Vec<Value> = (1..=8)
        .map(|i| json!({"width": 16 * i, "height": 16 * i, "format": "png"}))
        .collect();
    let form = Multipart::new()
        .file("file", "p.png", "image/png", &photo_png(400, 300))
        .text("outputs", &serde_json::to_string(&outputs).unwrap());
    let r = http::post_multipart(http, "/v1/images", form)
        .await
        .unwrap();
    assert_eq!(r.status, 202, "{}", r.text());
    let id = r.json().unwrap()["task_id"].as_str().unwrap().to_owned();
    let mut live = http::sse(http, &format!("/v1/tasks/{id}/events"), &[])
        .await
        .unwrap();
    let events = read_all_events(&mut live).await;
    let got = states(&events);
    assert_eq!(got.last().map(String::as_str), Some("succeeded"), "{got:?}");
    let progress: Vec<Value> = events
        .iter()
        .filter(|e| e.event.as_deref() == Some("progress"))
        .map(|e| e.json().unwrap())
        .collect();
    assert!(!progress.is_empty(), "{got:?}");
    assert!(progress.len() <= outputs.len(), "{got:?}");
    // In order, ending at 1.0 just before the final state.
    let fractions: Vec<f64> = progress
        .iter()
        .map(|p| p["progress"].as_f64().unwrap())
        .collect();
    println!(
        "progress events: {fractions:?} of {} reports",
        outputs.len()
    );
    assert!(fractions.windows(2).all(|w| w[0] <= w[1]), "{fractions:?}");
    assert_eq!(fractions.last(), Some(&1.0));
    assert_eq!(got[got.len() - 2], "progress", "{got:?}");
    assert!(
        progress[0]["message"]
            .as_str()
            .unwrap()
            .starts_with("wrote ")
    );
    // Coalesced: at most four a second, except the last, sent at once
    // when the attempt ends.
    let at: Vec<i64> = progress.iter().map(|p| nanos(&p["at"])).collect();
    if at.len() > 2 {
        for pair in at[..at.len() - 1].windows(2) {
            assert!(pair[1] - pair[0] >= 240 * MS, "{at:?}");
        }
    }
    // The status shows the last report.
    let (_, done) = status(http, &id).await;
    assert_eq!(done["state"], "succeeded");
    assert_eq!(done["progress"], 1.0);
    w.finish().await;
}

/// A port nothing listens on: bound, then closed.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

#[tokio::test]
async fn a_nacked_publish_and_an_unreachable_store_are_503s_and_nothing_is_queued() {
    let mut w = World::new().await;
    // The tasks exchange, and a queue of one that refuses more (the broker
    // nacks the publish that would overflow it).
    w.broker.declare_email_topology(&[]).await.unwrap();
    let full = w.broker.names.work_queue("full");
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongLongInt(1));
    args.insert(
        "x-overflow".into(),
        AMQPValue::LongString("reject-publish".into()),
    );
    w.broker
        .channel
        .queue_declare(
            full.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await
        .unwrap();
    w.broker
        .channel
        .queue_bind(
            full.as_str().into(),
            w.broker.names.tasks_exchange().as_str().into(),
            "full.#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let (http, ops) = w.gateway(&[]).await;

    let task = |id: &str| json!({"type": "full.job", "id": id, "payload": {"n": 1}});
    let r = http::post_json(http, "/v1/tasks", &task("fits"))
        .await
        .unwrap();
    assert_eq!(r.status, 202, "the first task fits: {}", r.text());
    let r = http::post_json(http, "/v1/tasks", &task("overflows"))
        .await
        .unwrap();
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    let p = r.json().unwrap();
    assert_eq!(p["type"], "urn:warren:problem:broker_nack", "{p}");
    assert_eq!(p["task_id"], "overflows", "{p}");
    assert_eq!(w.broker.depth(&full).await.unwrap(), 1);
    // Refused, so never reported queued.
    let (code, body) = status(http, "overflows").await;
    assert_eq!(code, 404, "{body}");
    let (_, metrics) = http_get(ops, "/metrics").await.unwrap();
    assert!(
        sample(
            &metrics,
            "warren_http_requests_total",
            &[("route", "/v1/tasks"), ("status_class", "5xx")]
        ) >= 1.0,
        "{metrics}"
    );

    // A gateway whose S3 store is unreachable: an upload is a 503, nothing
    // is queued, and the gateway goes on.
    let port = closed_port().to_string();
    let endpoint = format!("http://127.0.0.1:{port}");
    let (http, _) = w
        .gateway(&[
            ("WARREN_IMAGE__STORE", "s3"),
            ("WARREN_IMAGE__S3__BUCKET", "warren-test"),
            ("WARREN_IMAGE__S3__ENDPOINT", &endpoint),
            ("WARREN_IMAGE__S3__ALLOW_HTTP", "true"),
            ("WARREN_IMAGE__S3__ACCESS_KEY_ID", "test"),
            ("WARREN_IMAGE__S3__SECRET_ACCESS_KEY", "test-secret"),
            ("WARREN_IMAGE__STORE_TIMEOUT", "2s"),
        ])
        .await;
    let form = Multipart::new().file("file", "a.png", "image/png", &photo_png(8, 8));
    let r = http::post_multipart(http, "/v1/images?id=unstored", form)
        .await
        .unwrap();
    assert_eq!(r.status, 503, "{}", r.text());
    let p = r.json().unwrap();
    assert_eq!(p["type"], "urn:warren:problem:store_unavailable", "{p}");
    assert!(
        !p["detail"].as_str().unwrap().contains("test-secret"),
        "{p}"
    );
    let (code, body) = status(http, "unstored").await;
    assert_eq!(code, 404, "nothing was queued: {body}");
    let r = http::get(http, "/openapi.json").await.unwrap();
    assert_eq!(r.status, 200, "the gateway goes on");

    w.broker
        .channel
        .queue_delete(full.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    w.finish().await;
}
