//! TLS to the broker, for real: a RabbitMQ node of the test's own
//! (`warren_tests::extra_node`) with an amqps listener whose certificate,
//! for `localhost`, is signed by a CA the test generates.
//!
//! - amqps with server verification against that CA (`broker.tls_ca_file`)
//!   works end to end: a task published over TLS is consumed by a real
//!   worker process connected over TLS (RabbitMQ lists both connections as
//!   `ssl`);
//! - a worker trusting another CA is refused, naming the cause (certificate
//!   unknown issuer);
//! - a URL whose host is not the certificate's name is refused, naming the
//!   host name mismatch;
//! - the broker password shows in no log line of any of those workers.
//!
//! A serial binary of its own: it starts a RabbitMQ node (about ten
//! seconds) and never touches the shared broker on 5672.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::path::Path;
use std::time::Duration;

use secrecy::SecretString;
use serde_json::json;
use warren::broker::{ConnectError, connect};
use warren::settings::BrokerSettings;
use warren::{Names, PublishOptions, Publisher};
use warren_tests::extra_node::{ExtraNode, NodeOptions, TlsFiles};
use warren_tests::smtp_tls::TestCa;
use warren_tests::worker::{WorkerProcess, binary};

const WAIT: Duration = Duration::from_secs(60);
const USER: &str = "warren-tls";

fn settings(url: &str, namespace: &str, ca: &Path) -> BrokerSettings {
    BrokerSettings {
        url: SecretString::from(url.to_owned()),
        namespace: namespace.to_owned(),
        tls_ca_file: Some(ca.to_owned()),
        connect_timeout: Duration::from_secs(10),
        ..Default::default()
    }
}

/// A poison worker (`tests/src/bin/poison-worker.rs`, a plain Warren
/// worker) connecting to `url`, trusting `ca`.
async fn worker(url: &str, namespace: &str, ca: &Path) -> WorkerProcess {
    let path = binary("warren-tests", "poison-worker").unwrap();
    let env = [
        ("WARREN_BROKER__URL", url.to_owned()),
        ("WARREN_BROKER__NAMESPACE", namespace.to_owned()),
        ("WARREN_BROKER__TLS_CA_FILE", ca.display().to_string()),
        ("WARREN_BROKER__CONNECT_TIMEOUT", "10s".to_owned()),
        ("WARREN_CONSUMER__EVENTS", "false".to_owned()),
        ("WARREN_OPS__ADDR", "127.0.0.1:0".to_owned()),
    ];
    WorkerProcess::start(path, "poison-worker", &env)
        .await
        .unwrap()
}

/// The error a worker logs when it cannot connect (it keeps retrying).
async fn connect_error(worker: &WorkerProcess) -> String {
    let lines = worker
        .wait_for_log("Broker connection lost; reconnecting.", 1, WAIT)
        .await
        .unwrap_or_else(|e| panic!("{e}:\n{}", worker.tail(20)));
    lines[0]["fields"]["error"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

async fn assert_no_secret(worker: &mut WorkerProcess, password: &str) {
    worker.signal("TERM").unwrap();
    let output = worker.all_output(WAIT).await.unwrap();
    assert!(!output.is_empty());
    for line in output {
        assert!(!line.contains(password), "the password is logged: {line}");
    }
}

#[tokio::test]
async fn amqps_with_a_test_ca_works_and_a_wrong_ca_or_host_name_is_refused_by_cause() {
    let ca = TestCa::generate().unwrap();
    let other_ca = TestCa::generate_named("Another Test CA").unwrap();
    let tls = TlsFiles {
        ca: ca.ca(),
        cert: ca.server_cert(),
        key: ca.server_key(),
    };
    // Built before the node starts: the build takes the cores.
    binary("warren-tests", "poison-worker").unwrap();
    let node = tokio::task::spawn_blocking(move || {
        ExtraNode::start(
            "tls",
            NodeOptions {
                tls: Some(tls),
                management: false,
            },
        )
    })
    .await
    .unwrap()
    .unwrap();
    // A user of the test's own, whose password must never be logged.
    let password = format!("pw-{}", uuid::Uuid::new_v4().simple());
    for args in [
        vec!["add_user", USER, &password],
        vec!["set_permissions", USER, ".*", ".*", ".*"],
    ] {
        let out = node.cli("rabbitmqctl", &args).unwrap();
        assert!(out.status.success(), "{out:?}");
    }
    let port = node.amqps_port.unwrap();
    let url = |host: &str| format!("amqps://{USER}:{password}@{host}:{port}/%2f");
    let namespace = format!("t-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);

    // 1. Verified against the test CA: a real worker consumes over TLS.
    let mut good = worker(&url("localhost"), &namespace, &ca.ca()).await;
    good.wait_ready()
        .await
        .unwrap_or_else(|e| panic!("{e}:\n{}", good.tail(20)));
    let connection = connect(
        &settings(&url("localhost"), &namespace, &ca.ca()),
        "tls-test",
    )
    .await
    .unwrap();
    let publisher = Publisher::on(&connection, Names::new(namespace.as_str()))
        .await
        .unwrap();
    let id = publisher
        .publish_task("poison.ok", &json!({}), PublishOptions::default())
        .await
        .unwrap();
    let done = good.wait_for_log("Task succeeded.", 1, WAIT).await.unwrap();
    assert_eq!(done[0]["span"]["task_id"], id.as_str(), "{}", done[0]);
    // Both ends really are on the TLS listener.
    let listed = node
        .cli(
            "rabbitmqctl",
            &["-q", "list_connections", "user", "ssl", "port"],
        )
        .unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout);
    let ours: Vec<&str> = listed.lines().filter(|l| l.starts_with(USER)).collect();
    assert!(ours.len() >= 2, "{listed}");
    for line in ours {
        assert!(
            line.contains("true") && line.contains(&port.to_string()),
            "{line}"
        );
    }
    let _ = connection.close(200, "done".into()).await;

    // 2. Another CA: refused, naming the unknown issuer.
    let err = connect(
        &settings(&url("localhost"), &namespace, &other_ca.ca()),
        "tls-test",
    )
    .await
    .unwrap_err();
    assert!(matches!(err, ConnectError::Tls { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("certificate unknown issuer"), "{text}");
    assert!(text.contains("broker.tls_ca_file"), "{text}");
    assert!(!text.contains(&password), "{text}");
    let mut wrong_ca = worker(&url("localhost"), &namespace, &other_ca.ca()).await;
    let logged = connect_error(&wrong_ca).await;
    assert!(logged.contains("certificate unknown issuer"), "{logged}");

    // 3. The right CA, but the host is not the certificate's name.
    let err = connect(
        &settings(&url("127.0.0.1"), &namespace, &ca.ca()),
        "tls-test",
    )
    .await
    .unwrap_err();
    assert!(matches!(err, ConnectError::Tls { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("host name mismatch"), "{text}");
    assert!(!text.contains(&password), "{text}");
    let mut wrong_host = worker(&url("127.0.0.1"), &namespace, &ca.ca()).await;
    let logged = connect_error(&wrong_host).await;
    assert!(logged.contains("host name mismatch"), "{logged}");

    // 4. No password in any line any of them wrote.
    for w in [&mut good, &mut wrong_ca, &mut wrong_host] {
        assert_no_secret(w, &password).await;
    }
    tokio::task::spawn_blocking(move || drop(node))
        .await
        .unwrap();
}
