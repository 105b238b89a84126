//! Workflows over HTTP (docs/workflows.md#over-http): a real gateway, the
//! examples crate's pipeline worker and (for chords) the real conductor,
//! against the real RabbitMQ. Workflows are posted over TCP (one with the
//! docs' own `curl` command), followed to their end through
//! `GET /v1/workflows/{id}/events`, then read with `GET /v1/workflows/{id}`.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{Value, json};
use warren::workflow::{Step, group};
use warren_tests::WAIT;
use warren_tests::broker::TestBroker;
use warren_tests::http::{self, SseEvent};
use warren_tests::worker::{WorkerProcess, binary, gateway_env, with};

/// One test's world: its namespace, the pipeline worker, a gateway and,
/// for chords, the conductor.
struct World {
    broker: TestBroker,
    dir: tempfile::TempDir,
    store: tempfile::TempDir,
    processes: Vec<WorkerProcess>,
    http: SocketAddr,
}

impl World {
    async fn start(conductor: bool, gateway: &[(&'static str, &str)]) -> World {
        // Built before any broker connection opens (see TestBroker::new).
        let pipeline = binary("warren-examples", "pipeline-worker").unwrap();
        binary("gateway", "gateway").unwrap();
        let conductor_bin = binary("conductor", "conductor").unwrap();
        let broker = TestBroker::new().await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let store = tempfile::tempdir().unwrap();
        let ns = broker.namespace().to_owned();
        let mut processes = Vec::new();
        let worker = WorkerProcess::start(
            pipeline,
            "pipeline-worker",
            &[
                ("WARREN_BROKER__NAMESPACE", ns.clone()),
                ("WARREN_OPS__ADDR", "127.0.0.1:0".to_owned()),
                (
                    "WARREN_CONSUMER__RETRY_DELAYS",
                    r#"["200ms","300ms"]"#.to_owned(),
                ),
                ("PIPELINE_DIR", dir.path().display().to_string()),
            ],
        )
        .await
        .unwrap();
        worker.wait_for_log("Consuming.", 1, WAIT).await.unwrap();
        processes.push(worker);
        if conductor {
            let c = WorkerProcess::start(
                conductor_bin,
                "conductor",
                &[
                    ("WARREN_BROKER__NAMESPACE", ns.clone()),
                    ("WARREN_OPS__ADDR", "127.0.0.1:0".to_owned()),
                    // Both declare the events stream: the same retention
                    // as the gateway's (gateway_env).
                    ("WARREN_CONDUCTOR__EVENTS_RETENTION", "1h".to_owned()),
                ],
            )
            .await
            .unwrap();
            c.wait_for_log("Read the chords from the events stream.", 1, WAIT)
                .await
                .unwrap();
            processes.push(c);
        }
        let env = with(gateway_env(&ns, store.path()), gateway);
        let gw = WorkerProcess::gateway(&env).await.unwrap();
        let http = gw.http_addr().await.unwrap();
        gw.wait_caught_up().await.unwrap();
        gw.wait_for_log("Read the workflow records from the events stream.", 1, WAIT)
            .await
            .unwrap();
        processes.push(gw);
        World {
            broker,
            dir,
            store,
            processes,
            http,
        }
    }

    async fn post(&self, body: &Value) -> (u16, Value, Option<String>) {
        let r = http::post_json(self.http, "/v1/workflows", body)
            .await
            .unwrap();
        let location = r.header("location").map(str::to_owned);
        (r.status, r.json().unwrap_or(Value::Null), location)
    }

    async fn get(&self, id: &str) -> (u16, Value) {
        let r = http::get(self.http, &format!("/v1/workflows/{id}"))
            .await
            .unwrap();
        (r.status, r.json().unwrap())
    }

    /// Follows the workflow's SSE stream to its end: every event.
    async fn follow(&self, id: &str) -> Vec<SseEvent> {
        let mut stream = http::sse(self.http, &format!("/v1/workflows/{id}/events"), &[])
            .await
            .unwrap();
        let status = stream.status;
        if status != 200 {
            panic!("{status}: {}", stream.rest().await.unwrap_or_default());
        }
        let mut events = Vec::new();
        let read = async {
            while let Some(e) = stream.next_event().await.unwrap() {
                events.push(e);
            }
        };
        tokio::time::timeout(WAIT, read)
            .await
            .expect("the workflow's SSE stream ends once it is final");
        events
    }

    async fn stop(self) {
        for p in &self.processes {
            let _ = p.signal("TERM");
        }
        let mut processes = self.processes;
        for p in &mut processes {
            let _ = p.wait_exit(Duration::from_secs(20)).await;
        }
        self.broker.cleanup_stems(&["pipeline"], &[]).await.unwrap();
        drop(self.store);
    }
}

/// The states each task went through, from the SSE events, and the final
/// `workflow` event's data.
fn by_task(events: &[SseEvent]) -> (std::collections::BTreeMap<String, Vec<String>>, Value) {
    let mut states: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    let (last, rest) = events.split_last().expect("events");
    assert_eq!(last.event.as_deref(), Some("workflow"), "{last:?}");
    for e in rest {
        let data = e.json().unwrap();
        assert_eq!(e.event.as_deref(), data["state"].as_str(), "{data}");
        states
            .entry(data["task_id"].as_str().unwrap().to_owned())
            .or_default()
            .push(data["state"].as_str().unwrap().to_owned());
    }
    (states, last.json().unwrap())
}

/// The first ```sh block after `## Over HTTP` in docs/workflows.md, with
/// the gateway's address in place of localhost:8080.
fn docs_curl(addr: SocketAddr) -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/workflows.md");
    let doc = std::fs::read_to_string(path).unwrap();
    let section = doc.split("## Over HTTP").nth(1).expect("the section");
    let block = section
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("a sh block");
    assert!(block.contains("curl"), "{block}");
    block.replace("http://localhost:8080", &format!("http://{addr}"))
}

fn chain(id: &str, record: &str, value: i64) -> Value {
    json!({
        "kind": "chain",
        "id": id,
        "steps": [
            {"type": "pipeline.validate", "body": {"record": {"id": record, "value": value}}},
            {"type": "pipeline.process", "body": {"factor": 3}, "result_to": "input"},
            {"type": "pipeline.save", "body": {}, "result_to": "processed"}
        ]
    })
}

#[tokio::test]
async fn a_chain_posted_with_the_docs_curl_shows_each_step_and_result_to_the_end() {
    let w = World::start(false, &[]).await;
    let out = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(docs_curl(w.http))
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let accepted: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        accepted,
        json!({"workflow_id": "order-1", "kind": "chain", "state": "queued", "size": 3,
               "status_url": "/v1/workflows/order-1", "events_url": "/v1/workflows/order-1/events"})
    );

    // SSE: every step's events, each step running then succeeded, in
    // order; then the workflow, succeeded.
    let events = w.follow("order-1").await;
    let (states, last) = by_task(&events);
    assert_eq!(states.len(), 3, "{states:?}");
    for n in 1..=3 {
        let seen = &states[&format!("order-1.{n}")];
        let tail: Vec<&str> = seen
            .iter()
            .map(String::as_str)
            .filter(|s| *s != "queued")
            .collect();
        assert_eq!(tail, ["running", "succeeded"], "step {n}: {seen:?}");
    }
    assert_eq!(last["state"], "succeeded", "{last}");

    // GET: each step's state, result and timing. The gateway emits the
    // first step's `queued` once the broker has confirmed the chain, on
    // another connection than the worker's events, so it may reach the
    // view after the step finished (a late `queued` still supplies
    // `queued_at`): the GET waits until the view has it.
    let deadline = tokio::time::Instant::now() + WAIT;
    let body = loop {
        let (code, body) = w.get("order-1").await;
        assert_eq!(code, 200, "{body}");
        if body["steps"][0]["queued_at"].is_string() || tokio::time::Instant::now() >= deadline {
            break body;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(
        (body["kind"].as_str(), body["state"].as_str()),
        (Some("chain"), Some("succeeded"))
    );
    let steps = body["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 3);
    let results = [
        json!({"id": "r1", "value": 7}),
        json!({"id": "r1", "value": 21}),
    ];
    for (i, s) in steps.iter().enumerate() {
        assert_eq!(s["n"], i + 1, "{s}");
        assert_eq!(s["task_id"], format!("order-1.{}", i + 1));
        assert_eq!(s["state"], "succeeded", "{s}");
        assert_eq!(s["attempt"], 1, "{s}");
        for t in ["started_at", "finished_at"] {
            assert!(s[t].is_string(), "{t} of {s}");
        }
        if let Some(r) = results.get(i) {
            assert_eq!(&s["result"], r, "{s}");
        }
    }
    assert!(steps[0]["queued_at"].is_string(), "{}", steps[0]);
    assert_eq!(body["failed"], json!([]));
    let saved: Value =
        serde_json::from_slice(&std::fs::read(w.dir.path().join("r1.json")).unwrap()).unwrap();
    assert_eq!(saved, json!({"id": "r1", "value": 21}));
    w.stop().await;
}

#[tokio::test]
async fn a_chain_whose_step_parks_shows_failed_at_that_step() {
    let w = World::start(false, &[]).await;
    // process refuses r3 while its marker exists: a permanent failure.
    std::fs::write(w.dir.path().join("r3.blocked"), b"").unwrap();
    let (code, body, location) = w.post(&chain("order-3", "r3", 4)).await;
    assert_eq!(code, 202, "{body}");
    assert_eq!(location.as_deref(), Some("/v1/workflows/order-3"));
    let events = w.follow("order-3").await;
    let (states, last) = by_task(&events);
    assert_eq!(
        states["order-3.2"].last().map(String::as_str),
        Some("dead_lettered")
    );
    assert!(!states.contains_key("order-3.3"), "{states:?}");
    assert_eq!(last["state"], "failed", "{last}");

    let (code, body) = w.get("order-3").await;
    assert_eq!(code, 200);
    assert_eq!(body["state"], "failed", "{body}");
    let steps = body["steps"].as_array().unwrap();
    assert_eq!(steps[0]["state"], "succeeded");
    assert_eq!(steps[1]["state"], "dead_lettered");
    assert_eq!(steps[1]["error_kind"], "record_blocked");
    assert_eq!(steps[1]["reason"], "permanent");
    assert_eq!(
        (steps[2]["state"].as_str(), steps[2]["task_type"].as_str()),
        (Some("pending"), Some("pipeline.save"))
    );
    assert_eq!(body["failed"], json!(["order-3.2"]));
    w.stop().await;
}

#[tokio::test]
async fn a_chord_shows_its_members_and_callback_and_a_publisher_started_one_is_known_too() {
    let w = World::start(true, &[]).await;
    let members: Vec<Value> = (1..=5)
        .map(|i| {
            let value = if i == 3 { -1 } else { i };
            json!({"type": "pipeline.validate", "body": {"record": {"id": format!("m{i}"), "value": value}}})
        })
        .collect();
    let (code, body, _) = w
        .post(&json!({
            "kind": "chord", "id": "nightly-1", "members": members,
            "callback": {"type": "pipeline.report", "body": {}}, "on_failure": "run"
        }))
        .await;
    assert_eq!(code, 202, "{body}");
    assert_eq!(
        (body["kind"].as_str(), body["size"].as_u64()),
        (Some("chord"), Some(5))
    );
    let events = w.follow("nightly-1").await;
    let (states, last) = by_task(&events);
    assert_eq!(states.len(), 6, "five members and the callback: {states:?}");
    assert_eq!(
        states["nightly-1.3"].last().map(String::as_str),
        Some("dead_lettered")
    );
    assert_eq!(
        states["nightly-1.callback"].last().map(String::as_str),
        Some("succeeded")
    );
    assert_eq!(last["state"], "succeeded", "{last}");

    let (code, body) = w.get("nightly-1").await;
    assert_eq!(code, 200);
    assert_eq!(
        (
            body["kind"].as_str(),
            body["state"].as_str(),
            body["on_failure"].as_str()
        ),
        (Some("chord"), Some("succeeded"), Some("run"))
    );
    let members = body["members"].as_array().unwrap();
    assert_eq!(members.len(), 5);
    for (i, m) in members.iter().enumerate() {
        let n = i + 1;
        if n == 3 {
            assert_eq!(
                (m["state"].as_str(), m["error_kind"].as_str()),
                (Some("dead_lettered"), Some("invalid_record"))
            );
        } else {
            assert_eq!(m["state"], "succeeded", "{m}");
            assert_eq!(m["result"], json!({"id": format!("m{n}"), "value": n}));
        }
    }
    let cb = &body["callback"];
    assert_eq!(
        (cb["task_id"].as_str(), cb["state"].as_str()),
        (Some("nightly-1.callback"), Some("succeeded"))
    );
    assert!(cb["finished_at"].is_string(), "{cb}");
    assert_eq!(body["failed"], json!(["nightly-1.3"]));

    // A chord and a chain started by the Rust Publisher, not the gateway:
    // their records reach the gateway through the events stream.
    let chord = group(vec![Step::new(
        "pipeline.validate",
        json!({"record": {"id": "p1", "value": 2}}),
    )])
    .id("rust-chord")
    .then(Step::new("pipeline.report", json!({})));
    w.broker.publisher.publish_chord(chord).await.unwrap();
    let rust_chain = warren::chain![
        Step::new(
            "pipeline.validate",
            json!({"record": {"id": "p2", "value": 2}})
        ),
        Step::new("pipeline.process", json!({"factor": 2})).result_to("input"),
    ]
    .id("rust-chain");
    w.broker.publisher.publish_chain(rust_chain).await.unwrap();
    for (id, kind, field, size) in [
        ("rust-chord", "chord", "members", 1),
        ("rust-chain", "chain", "steps", 2),
    ] {
        let (_, last) = by_task(&w.follow(id).await);
        assert_eq!(last["state"], "succeeded", "{last}");
        let (code, body) = w.get(id).await;
        assert_eq!(code, 200, "{body}");
        assert_eq!(body["kind"], kind);
        assert_eq!(body[field].as_array().map(Vec::len), Some(size), "{body}");
    }
    w.stop().await;
}

#[tokio::test]
async fn bad_workflows_get_a_problem_naming_the_field_and_nothing_is_published() {
    let w = World::start(false, &[("WARREN_WORKFLOWS__MAX_STEPS", "3")]).await;
    // A spy on every task published in this namespace.
    let spy = w.broker.spy("#").await.unwrap();
    let task = |ty: &str| json!({"type": ty, "body": {}});
    let cases = [
        (json!({"kind": "chain", "steps": []}), "no_steps", "steps"),
        (
            json!({"kind": "group", "members": vec![task("pipeline.validate"); 4]}),
            "too_many_steps",
            "members",
        ),
        (
            json!({"kind": "chain", "steps": [task("pipeline.validate"), task("pipeline.process"), task("nosuch.thing")]}),
            "unknown_task_type",
            "steps[2].type",
        ),
        (
            json!({"kind": "chord", "members": [task("pipeline.validate")], "callback": task("nosuch.report")}),
            "unknown_task_type",
            "callback.type",
        ),
        (
            json!({"kind": "chord", "id": "nightly-2.callback", "members": [task("pipeline.validate")], "callback": task("pipeline.report")}),
            "callback_cycle",
            "id",
        ),
        (
            json!({"kind": "chain", "steps": [task("pipeline.validate"), {"kind": "group", "members": [{"kind": "group", "members": [task("pipeline.process")]}]}]}),
            "nesting_not_supported",
            "steps[1].members[0]",
        ),
        (
            json!({"kind": "chain", "steps": [task("pipeline.validate"), {"kind": "group", "members": [task("pipeline.validate")]}, {"kind": "group", "members": [task("pipeline.validate")]}]}),
            "nesting_not_supported",
            "steps[2]",
        ),
        (
            json!({"kind": "chain", "steps": [task("pipeline.validate"), {"kind": "group", "members": [task("nosuch.thing")]}]}),
            "unknown_task_type",
            "steps[1].members[0].type",
        ),
        (
            json!({"kind": "chain", "steps": [task("pipeline.validate"), {"type": "pipeline.process", "body": {}, "prio": 1}]}),
            "unknown_field",
            "steps[1].prio",
        ),
        (
            json!({"kind": "chain", "steps": [{"type": "pipeline.validate", "result_to": "x"}]}),
            "invalid_value",
            "steps[0].result_to",
        ),
    ];
    for (body, slug, field) in cases {
        let r = http::post_json(w.http, "/v1/workflows", &body)
            .await
            .unwrap();
        assert_eq!(r.status, 422, "{body}: {}", r.text());
        assert_eq!(r.header("content-type"), Some("application/problem+json"));
        let p = r.json().unwrap();
        assert_eq!(p["type"], format!("urn:warren:problem:{slug}"), "{p}");
        assert_eq!(p["field"], field, "{p}");
    }
    let (code, p) = w.get("never-started").await;
    assert_eq!(
        (code, p["type"].as_str()),
        (404, Some("urn:warren:problem:unknown_workflow"))
    );
    // Nothing of any of them reached the tasks exchange; a good one does.
    let (code, body, _) = w.post(&chain("order-9", "r9", 1)).await;
    assert_eq!(code, 202, "{body}");
    let first = w.broker.take(&spy, 1, WAIT).await.unwrap();
    assert_eq!(first[0].message_id().as_deref(), Some("order-9.1"));
    w.stop().await;
}

/// Nested over HTTP: a chain of (a chord of 3 with one failing member, its
/// callback), then a final step. `GET` shows the group as step 1 with its
/// members (`{id}.1.{m}`), the callback as step 2 and the final step as 3;
/// the SSE stream has every task's events and ends with the workflow.
#[tokio::test]
async fn a_nested_chain_posted_shows_its_group_members_and_each_step_to_the_end() {
    let w = World::start(true, &[]).await;
    let id = format!("nested-{}", uuid::Uuid::new_v4().simple());
    let members: Vec<Value> = (1..=3)
        .map(|i| {
            let value = if i == 2 { -1 } else { i };
            json!({"type": "pipeline.validate", "body": {"record": {"id": format!("n{i}"), "value": value}}})
        })
        .collect();
    let (code, body, location) = w
        .post(&json!({
            "kind": "chain", "id": id, "steps": [
                {"kind": "chord", "members": members,
                 "callback": {"type": "pipeline.report", "body": {}}, "on_failure": "run"},
                {"type": "pipeline.validate", "body": {"record": {"id": "final", "value": 0}}}
            ]
        }))
        .await;
    assert_eq!(code, 202, "{body}");
    assert_eq!(
        location.as_deref(),
        Some(format!("/v1/workflows/{id}").as_str())
    );
    assert_eq!(
        (body["kind"].as_str(), body["size"].as_u64()),
        (Some("chain"), Some(3))
    );
    let (states, last) = by_task(&w.follow(&id).await);
    assert_eq!(
        states.len(),
        5,
        "three members, the callback, the final step: {states:?}"
    );
    assert_eq!(
        states[&format!("{id}.1.2")].last().map(String::as_str),
        Some("dead_lettered")
    );
    for task in [format!("{id}.2"), format!("{id}.3")] {
        assert_eq!(
            states[&task].last().map(String::as_str),
            Some("succeeded"),
            "{task}"
        );
    }
    assert_eq!(last["state"], "succeeded", "{last}");

    let (code, body) = w.get(&id).await;
    assert_eq!(code, 200);
    assert_eq!(
        (body["kind"].as_str(), body["state"].as_str()),
        (Some("chain"), Some("succeeded")),
        "{body}"
    );
    let steps = body["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 3);
    let group = &steps[0];
    assert_eq!(
        (
            group["kind"].as_str(),
            group["task_id"].as_str(),
            group["state"].as_str(),
            group["on_failure"].as_str()
        ),
        (
            Some("group"),
            Some(format!("{id}.1").as_str()),
            Some("succeeded"),
            Some("run")
        ),
        "{group}"
    );
    let members = group["members"].as_array().unwrap();
    assert_eq!(members.len(), 3);
    for (i, m) in members.iter().enumerate() {
        let n = i + 1;
        assert_eq!(m["task_id"], format!("{id}.1.{n}"));
        let want = if n == 2 { "dead_lettered" } else { "succeeded" };
        assert_eq!(m["state"], want, "{m}");
    }
    assert_eq!(
        (steps[1]["task_id"].as_str(), steps[1]["state"].as_str()),
        (Some(format!("{id}.2").as_str()), Some("succeeded"))
    );
    assert_eq!(steps[1]["result"], json!({"succeeded": 2, "failed": 1}));
    assert_eq!(
        (steps[2]["task_id"].as_str(), steps[2]["state"].as_str()),
        (Some(format!("{id}.3").as_str()), Some("succeeded"))
    );
    assert_eq!(body["failed"], json!([format!("{id}.1.2")]));

    w.stop().await;
}
