//! The FastAPI example (`examples/fastapi/`), both flavours, end to end:
//! the app served by uvicorn from the tools virtualenv through
//! `examples/fastapi/run <flavour> --app-only`, in front of the real Warren
//! processes. A user registers over HTTP and the welcome mail reaches the
//! real SMTP server; an uploaded image gets its thumbnails; `GET /task/{id}`
//! reads the outcome back (Celery's `AsyncResult` in one flavour, the
//! gateway's status in the other); an order runs the validate -> process
//! -> save chain (a Celery chain through the bridge in one flavour, through
//! the gateway in the other).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use warren_tests::broker::{AMQP_URL, TestBroker};
use warren_tests::celery::{self, CeleryRoute};
use warren_tests::http::{self, Multipart};
use warren_tests::images::photo_png;
use warren_tests::smtp::SmtpSink;
use warren_tests::worker::{WorkerProcess, binary, email_env, gateway_env, image_env};
use warren_tests::{WAIT, rcpt};

fn example_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/fastapi")
}

/// The example app, served by `examples/fastapi/run <flavour> --app-only`
/// (which execs uvicorn) on a free port.
struct App {
    child: Child,
    addr: SocketAddr,
    output: Arc<Mutex<Vec<String>>>,
    /// The tasks reading stdout and stderr, done at their end.
    readers: Vec<tokio::task::JoinHandle<()>>,
}

impl App {
    async fn start(flavour: &str, env: &[(&str, String)]) -> App {
        Self::spawn(&[flavour, "--app-only"], env, false).await
    }

    /// `examples/fastapi/run <flavour>` without `--app-only`: the script
    /// starts the Warren processes (from `BIN_DIR`) and the app; it
    /// alone decides their settings, from `env`.
    async fn start_full(flavour: &str, env: &[(&str, String)]) -> App {
        Self::spawn(&[flavour], env, true).await
    }

    async fn spawn(args: &[&str], env: &[(&str, String)], full: bool) -> App {
        let flavour = args[0];
        let python = celery::python();
        assert!(
            python.exists(),
            "{} is missing: run scripts/prepare",
            python.display()
        );
        let mut command = Command::new(example_dir().join("run"));
        if full {
            for (key, _) in std::env::vars() {
                if key.starts_with("WARREN_") {
                    command.env_remove(key);
                }
            }
            command.env(
                "WARREN_BROKER__DELAY_CASCADE",
                warren_tests::broker::TEST_DELAY_CASCADE,
            );
        }
        let mut child = command
            .args(args)
            .env("PYTHON", &python)
            .env("PORT", "0")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("examples/fastapi/run starts");
        let output = Arc::new(Mutex::new(Vec::new()));
        let out = output.clone();
        let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut readers = vec![];
        readers.push(tokio::spawn(async move {
            while let Ok(Some(line)) = stdout.next_line().await {
                out.lock().unwrap().push(line);
            }
        }));
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        // uvicorn says where it listens once the app has started up.
        let find = async {
            while let Some(line) = lines.next_line().await.unwrap() {
                output.lock().unwrap().push(line.clone());
                if let Some(rest) = line.split("Uvicorn running on http://").nth(1) {
                    let addr = rest.split_whitespace().next().unwrap();
                    return Some(addr.parse::<SocketAddr>().unwrap());
                }
            }
            None
        };
        let addr = tokio::time::timeout(WAIT, find).await.ok().flatten();
        let Some(addr) = addr else {
            panic!(
                "the {flavour} app did not start:\n{}",
                output.lock().unwrap().join("\n")
            );
        };
        let out = output.clone();
        readers.push(tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                out.lock().unwrap().push(line);
            }
        }));
        App {
            child,
            addr,
            output,
            readers,
        }
    }

    async fn post(&self, path: &str, body: &Value) -> Value {
        let r = http::post_json(self.addr, path, body).await.unwrap();
        assert_eq!(r.status, 202, "{path}: {}", r.text());
        r.json().unwrap()
    }

    async fn upload(&self, png: &[u8]) -> Value {
        let form = Multipart::new().file("file", "cat.png", "image/png", png);
        let r = http::post_multipart(self.addr, "/images", form)
            .await
            .unwrap();
        assert_eq!(r.status, 202, "{}", r.text());
        r.json().unwrap()
    }

    /// Reads `path` until `field` holds one of `final_values` (the task's
    /// outcome was recorded), failing after WAIT.
    async fn until_final(&self, path: &str, field: &str, final_values: &[&str]) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let r = http::get(self.addr, path).await.unwrap();
            let v = r.json().unwrap_or(Value::Null);
            if final_values.iter().any(|f| v[field] == *f) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "{path} never reached {final_values:?}: {} {v}\n{}",
                r.status,
                self.output.lock().unwrap().join("\n")
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }

    /// Waits until `n` lines of the output (the script's, the app's and in
    /// full mode the Warren processes') contain `needle`.
    async fn wait_output(&self, needle: &str, n: usize) {
        let deadline = Instant::now() + WAIT;
        loop {
            let found = {
                let lines = self.output.lock().unwrap();
                lines.iter().filter(|l| l.contains(needle)).count()
            };
            if found >= n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{n} x {needle:?} never showed:\n{}",
                self.output.lock().unwrap().join("\n")
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM to the script, which stops every process it started.
    async fn terminate(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        let status = tokio::time::timeout(Duration::from_secs(40), self.child.wait()).await;
        assert!(
            matches!(status, Ok(Ok(_))),
            "examples/fastapi/run did not stop on SIGTERM:\n{}",
            self.output.lock().unwrap().join("\n")
        );
        // Every process it started has closed the output it shared.
        for reader in self.readers.drain(..) {
            let _ = tokio::time::timeout(WAIT, reader).await;
        }
        let output = self.output.lock().unwrap().join("\n");
        for stopped in ["Worker stopped.", "Conductor stopped."] {
            assert!(output.contains(stopped), "no {stopped:?}:\n{output}");
        }
    }
}

/// A PNG photo, small enough to go inline through Celery's JSON.
fn png() -> Vec<u8> {
    photo_png(320, 240)
}

#[tokio::test]
async fn the_fastapi_example_with_celerys_client_runs_on_warren_workers() {
    binary("email-worker", "email-worker").unwrap();
    binary("image-worker", "image-worker").unwrap();
    let pipeline = binary("warren-examples", "pipeline-worker").unwrap();
    let broker = TestBroker::new().await.unwrap();
    let ns = broker.namespace().to_owned();
    let sink = SmtpSink::start().await.unwrap();
    let store = tempfile::tempdir().unwrap();
    let pipeline_dir = tempfile::tempdir().unwrap();
    let route = CeleryRoute::for_namespace(&ns);
    // The example's own bridge settings; the test's Celery names.
    let settings = example_dir().join("celery/warren.toml");
    let celery_env = [
        ("WARREN_CONFIG", settings.display().to_string()),
        ("WARREN_CELERY__QUEUE", route.queue.clone()),
        ("WARREN_CELERY__EXCHANGE", route.exchange.clone()),
        ("WARREN_CELERY__ROUTING_KEY", route.routing_key.clone()),
    ];
    let mut email = email_env(&ns, sink.port());
    email.extend(celery_env.iter().cloned());
    let mut image = image_env(&ns, store.path());
    image.extend(celery_env.iter().cloned());
    // The pipeline worker, with the same settings: the order chain's
    // pipeline.* tasks, their results written for AsyncResult.
    let mut pipeline_env = vec![
        ("WARREN_BROKER__NAMESPACE", ns.clone()),
        ("WARREN_OPS__ADDR", "127.0.0.1:0".to_owned()),
        ("PIPELINE_DIR", pipeline_dir.path().display().to_string()),
    ];
    pipeline_env.extend(celery_env.iter().cloned());
    let mut workers = Vec::new();
    for w in [
        WorkerProcess::email(&email).await.unwrap(),
        WorkerProcess::image(&image).await.unwrap(),
        WorkerProcess::start(pipeline, "pipeline-worker", &pipeline_env)
            .await
            .unwrap(),
    ] {
        w.wait_for_log("Consuming.", 1, WAIT).await.unwrap();
        w.wait_for_log("Celery bridge consuming.", 1, WAIT)
            .await
            .unwrap();
        workers.push(w);
    }
    let app = App::start(
        "celery",
        &[
            ("CELERY_BROKER_URL", celery::BROKER_URL.to_owned()),
            ("CELERY_RESULT_BACKEND", celery::RESULT_BACKEND.to_owned()),
            ("CELERY_QUEUE", route.queue.clone()),
            ("CELERY_EXCHANGE", route.exchange.clone()),
            ("CELERY_ROUTING_KEY", route.routing_key.clone()),
        ],
    )
    .await;

    // Register -> send_email_task.delay(...) -> the bridge -> the email worker.
    let to = rcpt("fastapi-celery");
    let user = app
        .post("/users", &json!({"email": to, "name": "Ada"}))
        .await;
    let id = user["task_id"].as_str().unwrap().to_owned();
    let mails = sink.wait_for_messages_to(&to, 1, WAIT).await.unwrap();
    assert_eq!(mails[0].subject().as_deref(), Some("Welcome!"));
    assert!(mails[0].data.contains("Hello Ada"), "{}", mails[0].data);
    assert!(mails[0].message_id().unwrap().contains(&id));
    // GET /task/{id}: AsyncResult, from the results Warren wrote to Redis.
    let status = app
        .until_final(&format!("/task/{id}"), "status", &["SUCCESS", "FAILURE"])
        .await;
    assert_eq!(status["status"], "SUCCESS", "{status}");
    assert_eq!(status["result"]["transport"], "smtp", "{status}");
    assert_eq!(status["result"]["recipients"], 1, "{status}");

    // Upload -> process_image.delay(...) -> the image worker's thumbnails.
    let upload = app.upload(&png()).await;
    let id = upload["task_id"].as_str().unwrap().to_owned();
    let status = app
        .until_final(&format!("/task/{id}"), "status", &["SUCCESS", "FAILURE"])
        .await;
    assert_eq!(status["status"], "SUCCESS", "{status}");
    let outputs = status["result"]["outputs"].as_array().unwrap();
    assert_eq!(outputs.len(), 2, "{status}");
    for o in outputs {
        let key = o["key"].as_str().unwrap();
        assert!(
            store.path().join(key).is_file(),
            "{key} is not in the store"
        );
    }
    assert_eq!(outputs[1]["width"], 64, "{status}");

    // An order -> chain(validate_order.s(order), process_order.s(3),
    // save_order.s()).delay() -> the bridge -> a Warren chain on the
    // pipeline worker; GET /orders/{id} reads AsyncResult of each step.
    let order = app.post("/orders", &json!({"id": "r1", "value": 7})).await;
    let oid = order["order_id"].as_str().unwrap().to_owned();
    let state = app
        .until_final(&format!("/orders/{oid}"), "status", &["SUCCESS", "FAILURE"])
        .await;
    assert_eq!(state["status"], "SUCCESS", "{state}");
    assert_eq!(state["task_id"], order["task_id"], "{state}");
    let saved_path = pipeline_dir.path().join("r1.json");
    assert_eq!(
        state["result"]["saved"],
        saved_path.display().to_string(),
        "{state}"
    );
    let saved: Value = serde_json::from_slice(&std::fs::read(&saved_path).unwrap()).unwrap();
    assert_eq!(saved, json!({"id": "r1", "value": 21}));
    // Every step under the id the Celery client gave it, with its result.
    let steps = state["steps"].as_array().unwrap();
    let names: Vec<&str> = steps.iter().map(|s| s["step"].as_str().unwrap()).collect();
    assert_eq!(names, ["validate", "process", "save"], "{state}");
    for s in steps {
        assert_eq!(s["status"], "SUCCESS", "{state}");
        assert_eq!(
            s["task_id"],
            format!("{oid}-{}", s["step"].as_str().unwrap()),
            "{state}"
        );
    }
    assert_eq!(steps[0]["result"], json!({"id": "r1", "value": 7}));
    assert_eq!(steps[1]["result"], json!({"id": "r1", "value": 21}));
    workers[2]
        .wait_for_log("Task succeeded.", 3, WAIT)
        .await
        .unwrap();
    // A record validate_order refuses: the chain stops there, FAILURE, and
    // the later steps never run (PENDING).
    let order = app
        .post("/orders", &json!({"id": "bad id", "value": 1}))
        .await;
    let oid = order["order_id"].as_str().unwrap().to_owned();
    let refused = app
        .until_final(
            &format!("/task/{oid}-validate"),
            "status",
            &["SUCCESS", "FAILURE"],
        )
        .await;
    assert_eq!(refused["status"], "FAILURE", "{refused}");
    assert!(
        refused["error"]
            .as_str()
            .unwrap()
            .contains("invalid_record"),
        "{refused}"
    );
    let state = http::get(app.addr, &format!("/orders/{oid}"))
        .await
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(state["status"], "PENDING", "{state}");
    assert_eq!(state["steps"][1]["status"], "PENDING", "{state}");
    assert!(!pipeline_dir.path().join("bad id.json").exists());

    // An unknown id is PENDING, as Celery answers.
    let unknown = http::get(app.addr, "/task/no-such-task").await.unwrap();
    assert_eq!(unknown.json().unwrap()["status"], "PENDING");

    app.stop().await;
    for w in &workers {
        let _ = w.signal("TERM");
    }
    for w in &mut workers {
        let _ = w.wait_exit(Duration::from_secs(20)).await;
    }
    let channel = broker.connection.create_channel().await.unwrap();
    let _ = channel
        .queue_delete(route.queue.as_str().into(), QueueDeleteOptions::default())
        .await;
    let _ = channel
        .exchange_delete(
            route.exchange.as_str().into(),
            ExchangeDeleteOptions::default(),
        )
        .await;
    broker
        .cleanup_stems(&["email", "image", "pipeline", "celery"], &[])
        .await
        .unwrap();
}

#[tokio::test]
async fn the_fastapi_example_on_warrens_contract_publishes_with_aio_pika_and_reads_the_gateway() {
    binary("email-worker", "email-worker").unwrap();
    binary("image-worker", "image-worker").unwrap();
    binary("gateway", "gateway").unwrap();
    let pipeline = binary("warren-examples", "pipeline-worker").unwrap();
    let broker = TestBroker::new().await.unwrap();
    let ns = broker.namespace().to_owned();
    let sink = SmtpSink::start().await.unwrap();
    let store = tempfile::tempdir().unwrap();
    let pipeline_dir = tempfile::tempdir().unwrap();
    let mut processes = Vec::new();
    let email = WorkerProcess::email(&email_env(&ns, sink.port()))
        .await
        .unwrap();
    email.wait_ready().await.unwrap();
    processes.push(email);
    let image = WorkerProcess::image(&image_env(&ns, store.path()))
        .await
        .unwrap();
    image.wait_ready().await.unwrap();
    processes.push(image);
    let pipeline = WorkerProcess::start(
        pipeline,
        "pipeline-worker",
        &[
            ("WARREN_BROKER__NAMESPACE", ns.clone()),
            ("WARREN_OPS__ADDR", "127.0.0.1:0".to_owned()),
            ("PIPELINE_DIR", pipeline_dir.path().display().to_string()),
        ],
    )
    .await
    .unwrap();
    pipeline.wait_for_log("Consuming.", 1, WAIT).await.unwrap();
    processes.push(pipeline);
    let gateway = WorkerProcess::gateway(&gateway_env(&ns, store.path()))
        .await
        .unwrap();
    let gateway_addr = gateway.http_addr().await.unwrap();
    gateway.wait_caught_up().await.unwrap();
    gateway
        .wait_for_log("Read the workflow records from the events stream.", 1, WAIT)
        .await
        .unwrap();
    processes.push(gateway);
    let app = App::start(
        "warren",
        &[
            ("WARREN_BROKER__URL", AMQP_URL.to_owned()),
            ("WARREN_BROKER__NAMESPACE", ns.clone()),
            ("WARREN_GATEWAY_URL", format!("http://{gateway_addr}")),
        ],
    )
    .await;

    // Register -> an email.send task published with aio-pika.
    let spy = broker.spy("email.send").await.unwrap();
    let to = rcpt("fastapi-warren");
    let user = app
        .post("/users", &json!({"email": to, "name": "Grace"}))
        .await;
    let id = user["task_id"].as_str().unwrap().to_owned();
    let mails = sink.wait_for_messages_to(&to, 1, WAIT).await.unwrap();
    assert_eq!(mails[0].subject().as_deref(), Some("Welcome!"));
    assert!(mails[0].data.contains("Hello Grace"), "{}", mails[0].data);
    assert!(mails[0].message_id().unwrap().contains(&id));
    // Published by the contract: persistent, the id, priority 5, a type, a
    // timestamp and W3C trace context; it ran in that trace.
    let copy = &broker.take(&spy, 1, WAIT).await.unwrap()[0];
    assert_eq!(copy.message_id().as_deref(), Some(id.as_str()));
    let p = &copy.properties;
    assert_eq!(*p.delivery_mode(), Some(2));
    assert_eq!(*p.priority(), Some(5));
    assert_eq!(p.kind().as_ref().map(|k| k.as_str()), Some("email.send"));
    assert!(p.timestamp().is_some());
    let traceparent = copy.header("traceparent").expect("a traceparent");
    let trace_id = traceparent.split('-').nth(1).unwrap().to_owned();
    let done = processes[0]
        .wait_for_log("Task succeeded.", 1, WAIT)
        .await
        .unwrap();
    assert_eq!(done[0]["span"]["task_id"], id.as_str(), "{}", done[0]);
    assert_eq!(
        done[0]["span"]["trace_id"],
        trace_id.as_str(),
        "{}",
        done[0]
    );
    // GET /task/{id}: the gateway's status.
    let status = app
        .until_final(
            &format!("/task/{id}"),
            "state",
            &["succeeded", "dead_lettered"],
        )
        .await;
    assert_eq!(status["state"], "succeeded", "{status}");
    assert_eq!(status["task_type"], "email.send");
    assert_eq!(status["result"]["transport"], "smtp", "{status}");

    // Upload -> the gateway stores it -> the image worker's thumbnails.
    let upload = app.upload(&png()).await;
    let id = upload["task_id"].as_str().unwrap().to_owned();
    let status = app
        .until_final(
            &format!("/task/{id}"),
            "state",
            &["succeeded", "dead_lettered"],
        )
        .await;
    assert_eq!(status["state"], "succeeded", "{status}");
    let outputs = status["result"]["outputs"].as_array().unwrap();
    assert_eq!(outputs.len(), 2, "{status}");
    for o in outputs {
        let key = o["key"].as_str().unwrap();
        assert!(
            store.path().join(key).is_file(),
            "{key} is not in the store"
        );
    }
    // Not an image: the gateway's 415 problem, passed through.
    let form = Multipart::new().file("file", "notes.png", "image/png", b"plain text");
    let refused = http::post_multipart(app.addr, "/images", form)
        .await
        .unwrap();
    assert_eq!(refused.status, 415, "{}", refused.text());

    // An order -> the validate -> process -> save chain via POST /v1/workflows.
    let order = app.post("/orders", &json!({"id": "r1", "value": 7})).await;
    let wf = order["workflow_id"].as_str().unwrap().to_owned();
    let state = app
        .until_final(&format!("/orders/{wf}"), "state", &["succeeded", "failed"])
        .await;
    assert_eq!(state["state"], "succeeded", "{state}");
    let saved: Value =
        serde_json::from_slice(&std::fs::read(pipeline_dir.path().join("r1.json")).unwrap())
            .unwrap();
    assert_eq!(saved["value"], 21, "{saved}");

    // An unknown task: the gateway's 404, passed through.
    let unknown = http::get(app.addr, "/task/no-such-task").await.unwrap();
    assert_eq!(unknown.status, 404, "{}", unknown.text());

    app.stop().await;
    for p in &processes {
        let _ = p.signal("TERM");
    }
    for p in &mut processes {
        let _ = p.wait_exit(Duration::from_secs(20)).await;
    }
    broker
        .cleanup_stems(&["email", "image", "pipeline"], &[])
        .await
        .unwrap();
}

/// The directory of the Warren binaries `examples/fastapi/run` starts.
fn bin_dir() -> PathBuf {
    let mut dirs: Vec<PathBuf> = [
        binary("email-worker", "email-worker"),
        binary("image-worker", "image-worker"),
        binary("gateway", "gateway"),
        binary("conductor", "conductor"),
        binary("warren-examples", "pipeline-worker"),
    ]
    .into_iter()
    .map(|b| b.unwrap().parent().unwrap().to_owned())
    .collect();
    dirs.dedup();
    assert_eq!(dirs.len(), 1, "the binaries are not side by side: {dirs:?}");
    dirs.remove(0)
}

/// The settings `examples/fastapi/run` passes on to every process it
/// starts: the test's namespace, SMTP sink and store; no fixed port.
fn full_env(ns: &str, smtp_port: u16, store: &Path) -> Vec<(&'static str, String)> {
    let mut env: Vec<(&'static str, String)> = email_env(ns, smtp_port)
        .into_iter()
        .chain(image_env(ns, store))
        // The script sets the addresses; the thread count is the image
        // worker's alone (the gateway reads the store's keys of `image`).
        .filter(|(k, _)| {
            !matches!(
                *k,
                "WARREN_OPS__ADDR" | "WARREN_HTTP__ADDR" | "WARREN_IMAGE__THREADS"
            )
        })
        .collect();
    env.push(("BIN_DIR", bin_dir().display().to_string()));
    env.push(("OPS_PORT_BASE", "0".to_owned()));
    env.push(("WARREN_BROKER__URL", AMQP_URL.to_owned()));
    env.push(("WARREN_TELEMETRY__LOG_FORMAT", "json".to_owned()));
    env
}

/// `examples/fastapi/run celery`, the one command, as a user runs it: the
/// script starts the bridge-running workers (the pipeline worker too) and
/// the conductor itself, a registered user's welcome mail goes out and reads
/// back as SUCCESS, and an order's Celery chain saves its record.
#[tokio::test]
async fn the_fastapi_example_runs_in_one_command_celery_flavour() {
    let broker = TestBroker::new().await.unwrap();
    let ns = broker.namespace().to_owned();
    let sink = SmtpSink::start().await.unwrap();
    let store = tempfile::tempdir().unwrap();
    let pipeline_dir = tempfile::tempdir().unwrap();
    let route = CeleryRoute::for_namespace(&ns);
    let mut env = full_env(&ns, sink.port(), store.path());
    env.extend([
        ("PIPELINE_DIR", pipeline_dir.path().display().to_string()),
        ("WARREN_CELERY__QUEUE", route.queue.clone()),
        ("WARREN_CELERY__EXCHANGE", route.exchange.clone()),
        ("WARREN_CELERY__ROUTING_KEY", route.routing_key.clone()),
        ("CELERY_BROKER_URL", celery::BROKER_URL.to_owned()),
        ("CELERY_RESULT_BACKEND", celery::RESULT_BACKEND.to_owned()),
        ("CELERY_QUEUE", route.queue.clone()),
        ("CELERY_EXCHANGE", route.exchange.clone()),
        ("CELERY_ROUTING_KEY", route.routing_key.clone()),
    ]);
    let app = App::start_full("celery", &env).await;
    // The email, image and pipeline workers, each with its bridge.
    app.wait_output("Celery bridge consuming.", 3).await;
    app.wait_output("Consuming.", 3).await;
    app.wait_output("Took the leader lock.", 1).await;

    let to = rcpt("fastapi-full-celery");
    let user = app
        .post("/users", &json!({"email": to, "name": "Ada"}))
        .await;
    let id = user["task_id"].as_str().unwrap().to_owned();
    let mails = sink.wait_for_messages_to(&to, 1, WAIT).await.unwrap();
    assert!(mails[0].data.contains("Hello Ada"), "{}", mails[0].data);
    let status = app
        .until_final(&format!("/task/{id}"), "status", &["SUCCESS", "FAILURE"])
        .await;
    assert_eq!(status["status"], "SUCCESS", "{status}");
    // The order's Celery chain, on the pipeline worker the script started.
    let order = app.post("/orders", &json!({"id": "r2", "value": 2})).await;
    let oid = order["order_id"].as_str().unwrap().to_owned();
    let state = app
        .until_final(&format!("/orders/{oid}"), "status", &["SUCCESS", "FAILURE"])
        .await;
    assert_eq!(state["status"], "SUCCESS", "{state}");
    let saved: Value =
        serde_json::from_slice(&std::fs::read(pipeline_dir.path().join("r2.json")).unwrap())
            .unwrap();
    assert_eq!(saved["value"], 6, "{saved}");

    app.terminate().await;
    let channel = broker.connection.create_channel().await.unwrap();
    let _ = channel
        .queue_delete(route.queue.as_str().into(), QueueDeleteOptions::default())
        .await;
    let _ = channel
        .exchange_delete(
            route.exchange.as_str().into(),
            ExchangeDeleteOptions::default(),
        )
        .await;
    broker
        .cleanup_stems(&["email", "image", "pipeline", "celery"], &[])
        .await
        .unwrap();
}

/// `examples/fastapi/run warren`, the one command: the script starts the
/// workers, the gateway (on `GATEWAY_PORT`) and the conductor; a welcome
/// mail goes out and the order's chain runs, read back through the gateway.
#[tokio::test]
async fn the_fastapi_example_runs_in_one_command_warren_flavour() {
    let broker = TestBroker::new().await.unwrap();
    let ns = broker.namespace().to_owned();
    let sink = SmtpSink::start().await.unwrap();
    let store = tempfile::tempdir().unwrap();
    let pipeline_dir = tempfile::tempdir().unwrap();
    let gateway_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut env = full_env(&ns, sink.port(), store.path());
    // The events stream's retention stays the default: the conductor
    // declares the stream too, with its own (docs/conductor.md).
    env.extend(gateway_env(&ns, store.path()).into_iter().filter(|(k, _)| {
        !matches!(
            *k,
            "WARREN_OPS__ADDR" | "WARREN_HTTP__ADDR" | "WARREN_EVENTS__RETENTION"
        )
    }));
    env.extend([
        ("GATEWAY_PORT", gateway_port.to_string()),
        ("PIPELINE_DIR", pipeline_dir.path().display().to_string()),
    ]);
    let app = App::start_full("warren", &env).await;
    app.wait_output("Read the workflow records from the events stream.", 1)
        .await;
    app.wait_output("Took the leader lock.", 1).await;
    // The three workers consume (their queues are bound).
    app.wait_output("Consuming.", 3).await;

    let to = rcpt("fastapi-full-warren");
    let user = app
        .post("/users", &json!({"email": to, "name": "Grace"}))
        .await;
    let id = user["task_id"].as_str().unwrap().to_owned();
    let mails = sink.wait_for_messages_to(&to, 1, WAIT).await.unwrap();
    assert!(mails[0].data.contains("Hello Grace"), "{}", mails[0].data);
    let status = app
        .until_final(
            &format!("/task/{id}"),
            "state",
            &["succeeded", "dead_lettered"],
        )
        .await;
    assert_eq!(status["state"], "succeeded", "{status}");
    let order = app.post("/orders", &json!({"id": "r2", "value": 2})).await;
    let wf = order["workflow_id"].as_str().unwrap().to_owned();
    let state = app
        .until_final(&format!("/orders/{wf}"), "state", &["succeeded", "failed"])
        .await;
    assert_eq!(state["state"], "succeeded", "{state}");
    assert!(pipeline_dir.path().join("r2.json").is_file());

    app.terminate().await;
    broker
        .cleanup_stems(&["email", "image", "pipeline"], &[])
        .await
        .unwrap();
}

/// The Celery flavour's beat schedule and its Warren equivalent: the Beat
/// schedule read out of the Celery app is the one the real conductor
/// serves from `examples/fastapi/conductor.toml`, and a copy of it due
/// every second (only the timing changed, and the recipient the test's)
/// fires through the conductor to the real email worker and the SMTP
/// server.
#[tokio::test]
async fn the_fastapi_examples_beat_schedule_fires_through_the_conductor() {
    // Celery Beat's schedule, as the app declares it.
    let beat = std::process::Command::new(celery::python())
        .arg("-c")
        .arg(
            r#"
import json, sys
sys.path.insert(0, sys.argv[1])
from app.tasks import celery_app
out = {}
for name, e in celery_app.conf.beat_schedule.items():
    s = e["schedule"]
    out[name] = {"task": e["task"], "args": list(e.get("args", ())),
                 "priority": e.get("options", {}).get("priority"),
                 "crontab": [str(v) for v in (s._orig_minute, s._orig_hour, s._orig_day_of_month,
                                              s._orig_month_of_year, s._orig_day_of_week)]}
print(json.dumps(out))
"#,
        )
        .arg(example_dir().join("celery"))
        .output()
        .unwrap();
    assert!(beat.status.success(), "{beat:?}");
    let beat: Value = serde_json::from_slice(&beat.stdout).unwrap();
    let digest = &beat["send-digest-weekly"];
    assert_eq!(beat.as_object().unwrap().len(), 1, "{beat}");
    assert_eq!(digest["task"], "app.tasks.send_email_task");
    assert_eq!(
        digest["crontab"],
        json!(["0", "9", "*", "*", "1"]),
        "{beat}"
    );
    assert_eq!(digest["priority"], 5);

    let broker = TestBroker::new().await.unwrap();
    let ns = broker.namespace().to_owned();
    let sink = SmtpSink::start().await.unwrap();
    let email = WorkerProcess::email(&email_env(&ns, sink.port()))
        .await
        .unwrap();
    email.wait_ready().await.unwrap();

    let example = std::fs::read_to_string(example_dir().join("conductor.toml")).unwrap();
    let to = rcpt("fastapi-beat");
    let block = &example[example.find("[[schedules]]").unwrap()..];
    let now = block
        .replace(
            "name = \"send-digest-weekly\"",
            "name = \"send-digest-weekly-now\"",
        )
        .replace("cron = \"0 0 9 * * MON\"", "every = \"1s\"")
        .replace("time_zone = \"UTC\"\n", "")
        .replace("team@example.com", &to);
    assert!(
        now.contains("every = \"1s\"") && !now.contains("cron") && now.contains(&to),
        "{now}"
    );
    let config = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    std::fs::write(config.path(), format!("{example}\n{now}")).unwrap();
    let mut conductor = WorkerProcess::start(
        binary("conductor", "conductor").unwrap(),
        "conductor",
        &[
            ("WARREN_CONFIG", config.path().display().to_string()),
            ("WARREN_BROKER__NAMESPACE", ns.clone()),
            ("WARREN_OPS__ADDR", "127.0.0.1:0".to_owned()),
        ],
    )
    .await
    .unwrap();
    conductor
        .wait_for_log("Took the leader lock.", 1, WAIT)
        .await
        .unwrap();

    // The Beat schedule, as the conductor serves it.
    let serving = conductor
        .wait_for_log(
            "Serving /metrics, /healthz, /readyz and /v1/schedules.",
            1,
            WAIT,
        )
        .await
        .unwrap();
    let ops: SocketAddr = serving[0]["fields"]["addr"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let served = http::get(ops, "/v1/schedules").await.unwrap();
    let served: Value = served.json().unwrap();
    let weekly = served["schedules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "send-digest-weekly")
        .unwrap_or_else(|| panic!("{served}"))
        .clone();
    assert_eq!(weekly["cron"], "0 0 9 * * MON", "{weekly}");
    assert_eq!(weekly["time_zone"], "UTC", "{weekly}");
    assert_eq!(weekly["task_type"], "email.send", "{weekly}");
    assert_eq!(weekly["misfire"], "run_once", "{weekly}");
    let next = chrono::DateTime::parse_from_rfc3339(weekly["next_fire"].as_str().unwrap())
        .unwrap()
        .with_timezone(&chrono::Utc);
    use chrono::{Datelike, Timelike};
    assert_eq!(next.weekday(), chrono::Weekday::Mon, "{weekly}");
    assert_eq!((next.hour(), next.minute(), next.second()), (9, 0, 0));

    // The copy fires: Beat's args, by the bridge's mapping, as a payload.
    let mails = sink.wait_for_messages_to(&to, 1, WAIT).await.unwrap();
    assert_eq!(
        mails[0].subject().as_deref(),
        digest["args"][1].as_str(),
        "{}",
        mails[0].data
    );
    assert!(
        mails[0].data.contains(digest["args"][2].as_str().unwrap()),
        "{}",
        mails[0].data
    );
    let done = email
        .wait_for_log("Task succeeded.", 1, WAIT)
        .await
        .unwrap();
    let task_id = done[0]["span"]["task_id"].as_str().unwrap();
    assert!(
        task_id.starts_with("send-digest-weekly-now@"),
        "{}",
        done[0]
    );

    conductor.signal("TERM").unwrap();
    conductor.wait_exit(WAIT).await.unwrap();
    let mut email = email;
    let _ = email.signal("TERM");
    let _ = email.wait_exit(Duration::from_secs(20)).await;
    broker.cleanup_stems(&["email"], &[]).await.unwrap();
}
