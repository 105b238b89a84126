//! The gateway's API keys end to end: a real gateway process with keys of
//! each scope (`auth.keys`, given in the environment as an operator would),
//! answered over TCP; the `warren` CLI with its key; the log scanned for
//! the keys; and the no-key default, allowed on loopback only.

use std::time::Duration;

use serde_json::json;
use warren_tests::broker::TestBroker;
use warren_tests::cli;
use warren_tests::http;
use warren_tests::worker::{WorkerProcess, gateway_env, gateway_key_hash, with};

const ENQUEUE_KEY: &str = "wk_test_enqueue_3f9a1c0e7b2d4e6f8a1b3c5d7e9f0a2b";
const READ_KEY: &str = "wk_test_read_5d7e9f0a2b4c6d8e0f1a3b5c7d9e1f3a";
const ADMIN_KEY: &str = "wk_test_admin_9e1f3a5b7c9d1e3f5a7b9c1d3e5f7a9b";

/// `auth.keys` as an environment variable: a list of inline tables.
fn keys_env() -> String {
    let entry = |name: &str, key: &str, scope: &str| {
        format!(
            r#"{{name = "{name}", hash = "{}", scopes = ["{scope}"]}}"#,
            gateway_key_hash(key)
        )
    };
    format!(
        "[{}, {}, {}]",
        entry("shop", ENQUEUE_KEY, "enqueue"),
        entry("dashboard", READ_KEY, "read"),
        entry("ops", ADMIN_KEY, "admin")
    )
}

async fn call(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: Option<&serde_json::Value>,
) -> http::Response {
    let auth = key.map(|k| format!("Bearer {k}"));
    let mut headers: Vec<(&str, &str)> = Vec::new();
    if let Some(a) = &auth {
        headers.push(("Authorization", a));
    }
    let bytes = body.map(|b| b.to_string()).unwrap_or_default();
    if body.is_some() {
        headers.push(("Content-Type", "application/json"));
    }
    http::request(addr, method, path, &headers, bytes.as_bytes())
        .await
        .unwrap()
}

#[tokio::test]
async fn keys_gate_the_api_by_scope_and_never_reach_the_log() {
    warren_tests::worker::binary("gateway", "gateway").unwrap();
    warren_tests::worker::binary("warren-cli", "warren").unwrap();
    let broker = TestBroker::new().await.unwrap();
    broker
        .declare_email_topology(&[Duration::from_millis(200), Duration::from_millis(300)])
        .await
        .unwrap();
    let store = tempfile::tempdir().unwrap();
    // Keys make any address acceptable; 0.0.0.0 shows it (no loopback
    // exception is used).
    let keys = keys_env();
    let env = with(
        gateway_env(broker.namespace(), store.path()),
        &[
            ("WARREN_AUTH__KEYS", keys.as_str()),
            ("WARREN_HTTP__ADDR", "0.0.0.0:0"),
        ],
    );
    let mut gateway = WorkerProcess::gateway(&env).await.unwrap();
    let port = gateway.http_addr().await.unwrap().port();
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    gateway.wait_caught_up().await.unwrap();
    let loaded = gateway
        .wait_for_log("API keys loaded.", 1, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(loaded[0]["fields"]["keys"], 3, "{loaded:?}");

    let email = json!({"to": "ada@example.com", "subject": "s", "text": "t"});
    let path = "/v1/tasks/email?id=auth-1";

    // No key: 401, a problem document, and the Bearer challenge.
    let r = call(addr, "POST", path, None, Some(&email)).await;
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    assert_eq!(r.json().unwrap()["type"], "urn:warren:problem:unauthorized");
    assert!(
        r.header("www-authenticate")
            .is_some_and(|v| v.starts_with("Bearer")),
        "{:?}",
        r.headers
    );
    // An unknown key, and a key in another scheme: 401 too.
    for header in [
        format!("Bearer {ENQUEUE_KEY}x"),
        format!("Basic {ENQUEUE_KEY}"),
    ] {
        let r = http::request(
            addr,
            "GET",
            "/v1/tasks/auth-1",
            &[("Authorization", &header)],
            &[],
        )
        .await
        .unwrap();
        assert_eq!(r.status, 401, "{header}: {}", r.text());
        assert!(!r.text().contains(ENQUEUE_KEY), "the key is not echoed");
    }
    // A read key may not enqueue: 403, naming the key and the scope.
    let r = call(addr, "POST", path, Some(READ_KEY), Some(&email)).await;
    assert_eq!(r.status, 403, "{}", r.text());
    let problem = r.json().unwrap();
    assert_eq!(problem["type"], "urn:warren:problem:forbidden");
    assert_eq!(
        problem["detail"],
        "the key 'dashboard' lacks the scope 'enqueue'"
    );
    assert_eq!(
        broker
            .depth(&broker.names.work_queue("email"))
            .await
            .unwrap(),
        0
    );

    // The enqueue key enqueues, but may not read the status.
    let r = call(addr, "POST", path, Some(ENQUEUE_KEY), Some(&email)).await;
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(
        broker
            .depth(&broker.names.work_queue("email"))
            .await
            .unwrap(),
        1
    );
    let r = call(addr, "GET", "/v1/tasks/auth-1", Some(ENQUEUE_KEY), None).await;
    assert_eq!(r.status, 403, "{}", r.text());
    // The read key reads it; the admin key does everything.
    let r = call(addr, "GET", "/v1/tasks/auth-1", Some(READ_KEY), None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json().unwrap()["state"], "queued");
    let r = call(addr, "GET", "/v1/tasks?state=queued", Some(ADMIN_KEY), None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = call(
        addr,
        "POST",
        "/v1/tasks/email?id=auth-2",
        Some(ADMIN_KEY),
        Some(&email),
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.text());
    // The OpenAPI document stays open, and declares the scheme.
    let r = http::get(addr, "/openapi.json").await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json().unwrap()["components"]["securitySchemes"]["api_key"]["scheme"],
        "bearer"
    );
    // The ops port needs no key.
    let ops = gateway.ops_addr().await.unwrap();
    assert_eq!(
        warren_tests::ops::http_get(ops, "/readyz").await.unwrap().0,
        200
    );

    // The CLI sends $WARREN_GATEWAY_KEY; without it, it is refused.
    let url = format!("http://{addr}");
    let args = ["task", "auth-1", "--json", "--gateway", url.as_str()];
    let with_key = cli::run(&[("WARREN_GATEWAY_KEY", READ_KEY.to_owned())], &args, "")
        .await
        .unwrap();
    assert_eq!(with_key.status, 0, "{with_key:?}");
    assert_eq!(with_key.json()["state"], "queued");
    let without = cli::run(&[], &args, "").await.unwrap();
    assert_eq!(without.status, 1, "{without:?}");
    assert!(without.stderr.contains("401"), "{without:?}");

    // Every line the gateway wrote, from start to exit: no key in any.
    gateway.signal("TERM").unwrap();
    let output = gateway.all_output(Duration::from_secs(20)).await.unwrap();
    assert!(output.len() > 5, "{output:?}");
    for line in &output {
        for key in [ENQUEUE_KEY, READ_KEY, ADMIN_KEY] {
            assert!(!line.contains(key), "a key in the log: {line}");
        }
    }
    broker
        .cleanup_stems(
            &["email"],
            &[Duration::from_millis(200), Duration::from_millis(300)],
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn without_keys_the_gateway_runs_on_loopback_with_a_warning_and_refuses_elsewhere() {
    warren_tests::worker::binary("gateway", "gateway").unwrap();
    let broker = TestBroker::new().await.unwrap();
    let store = tempfile::tempdir().unwrap();
    let env = gateway_env(broker.namespace(), store.path());

    // On 127.0.0.1 (the tests' default): it serves, open, and says so.
    let gateway = WorkerProcess::gateway(&env).await.unwrap();
    let addr = gateway.http_addr().await.unwrap();
    let warned = gateway
        .wait_for_log(
            "No API key is configured: the gateway is open to every caller on this loopback address. \
             Configure auth.keys before binding to any other address.",
            1,
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    assert_eq!(warned[0]["level"], "WARN");
    let r = http::get(addr, "/v1/tasks/nobody").await.unwrap();
    assert_ne!(r.status, 401, "{}", r.text());
    gateway.signal("TERM").unwrap();

    // On every address: start-up refuses, saying why.
    let mut refused = WorkerProcess::gateway(&with(env, &[("WARREN_HTTP__ADDR", "0.0.0.0:0")]))
        .await
        .unwrap();
    let status = refused.wait_exit(Duration::from_secs(20)).await.unwrap();
    assert!(!status.success());
    let output = refused.all_output(Duration::from_secs(5)).await.unwrap();
    assert!(
        output
            .iter()
            .any(|l| l.contains("no API key is configured") && l.contains("0.0.0.0:0")),
        "{output:?}"
    );
    let mut first = gateway;
    first.wait_exit(Duration::from_secs(20)).await.unwrap();
    broker.cleanup().await.unwrap();
}
