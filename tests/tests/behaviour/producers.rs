//! The producer examples in other languages (`examples/producers/`), end to
//! end: each publishes by the documented contract with its own AMQP client
//! (pika, amqplib) to the real broker, and the real email worker delivers
//! the task to the test SMTP server. A copy of every `email.send` task is
//! read back to check the properties each client set, so the contract is
//! proven by independent clients, not only by Warren's own publisher.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde_json::json;
use tokio::process::Command;
use warren_tests::broker::Message;
use warren_tests::{EmailWorld, WAIT, rcpt};

fn producers_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/producers")
}

/// The interpreter scripts/prepare installs pika for (Debian's python3-pika).
fn python() -> String {
    std::env::var("TEST_PYTHON").unwrap_or_else(|_| {
        if Path::new("/usr/bin/python3").exists() {
            "/usr/bin/python3".to_owned()
        } else {
            "python3".to_owned()
        }
    })
}

/// Runs one producer with the broker settings of `world`'s namespace;
/// returns the task id it printed, or panics with its output.
async fn run_producer(world: &EmailWorld, program: &str, script: &Path, args: &[&str]) -> String {
    let out = Command::new(program)
        .arg(script)
        .args(args)
        .env("WARREN_BROKER__URL", warren_tests::broker::AMQP_URL)
        .env("WARREN_BROKER__NAMESPACE", world.broker.namespace())
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap_or_else(|e| panic!("could not run {program} {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "{program} {} failed ({}):\n{}{}",
        script.display(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn assert_contract_properties(copy: &Message, id: &str, priority: u8, traceparent: &str) {
    let p = &copy.properties;
    assert_eq!(copy.message_id().as_deref(), Some(id));
    assert_eq!(copy.routing_key, "email.send");
    assert_eq!(
        p.content_type().as_ref().map(|s| s.as_str()),
        Some("application/json")
    );
    assert_eq!(*p.delivery_mode(), Some(2), "persistent");
    assert_eq!(*p.priority(), Some(priority));
    assert_eq!(p.kind().as_ref().map(|s| s.as_str()), Some("email.send"));
    let sent_at = p.timestamp().expect("a timestamp");
    let now = chrono::Utc::now().timestamp() as u64;
    assert!(
        sent_at <= now && sent_at > now - 3600,
        "timestamp {sent_at}"
    );
    assert_eq!(copy.header("traceparent").as_deref(), Some(traceparent));
}

async fn a_producer_delivers_by_the_contract(
    program: &str,
    script: &Path,
    tag: &str,
    trace_id: &str,
) {
    let world = EmailWorld::start(&[]).await.unwrap();
    let spy = world.broker.spy("email.send").await.unwrap();
    let to = rcpt(tag);
    let traceparent = format!("00-{trace_id}-00f067aa0ba902b7-01");
    let task_id = format!("{tag}-welcome-1");
    let body =
        json!({"to": to, "subject": format!("Welcome from {tag}"), "text": "Hello"}).to_string();
    let printed = run_producer(
        &world,
        program,
        script,
        &[
            "email.send",
            &body,
            "--id",
            &task_id,
            "--priority",
            "7",
            "--traceparent",
            &traceparent,
        ],
    )
    .await;
    assert_eq!(printed, task_id);

    // Delivered by the real worker, in the producer's trace.
    let mails = world.sink.wait_for_messages_to(&to, 1, WAIT).await.unwrap();
    assert_eq!(
        mails[0].subject().as_deref(),
        Some(format!("Welcome from {tag}").as_str())
    );
    assert!(mails[0].message_id().unwrap().contains(&task_id));
    let done = world
        .worker
        .wait_for_log("Task succeeded.", 1, WAIT)
        .await
        .unwrap();
    assert_eq!(done[0]["span"]["trace_id"], trace_id, "{}", done[0]);

    // The message as the client published it.
    let copies = world.broker.take(&spy, 1, WAIT).await.unwrap();
    assert_contract_properties(&copies[0], &task_id, 7, &traceparent);

    // Unroutable (no queue bound for the type): the client reports it, exit 1.
    let out = Command::new(program)
        .arg(script)
        .args(["nobody.listens", "{}"])
        .env("WARREN_BROKER__URL", warren_tests::broker::AMQP_URL)
        .env("WARREN_BROKER__NAMESPACE", world.broker.namespace())
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no queue is bound"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    world.broker.cleanup().await.unwrap();
}

#[tokio::test]
async fn the_python_pika_producer_publishes_by_the_contract() {
    let script = producers_dir().join("python/publish_task.py");
    a_producer_delivers_by_the_contract(
        &python(),
        &script,
        "pika",
        "4bf92f3577b34da6a3ce929d0e0e0001",
    )
    .await;
}

#[tokio::test]
async fn the_node_amqplib_producer_publishes_by_the_contract() {
    let script = producers_dir().join("node/publish_task.js");
    assert!(
        producers_dir().join("node/node_modules/amqplib").is_dir(),
        "amqplib is not installed: run scripts/prepare (npm ci in examples/producers/node)"
    );
    a_producer_delivers_by_the_contract(
        "node",
        &script,
        "amqplib",
        "4bf92f3577b34da6a3ce929d0e0e0002",
    )
    .await;
}
