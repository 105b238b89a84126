//! The gateway's console over HTTP: a real gateway with keys, the real
//! management API. Login with a key of the `admin` scope gives a session
//! cookie (HttpOnly, SameSite=Strict); an `enqueue` key is refused; the
//! queues page lists the namespace's work queues; a POST without the CSRF
//! token is refused; every page carries the strict Content-Security-Policy.

use std::net::SocketAddr;
use std::time::Duration;

use warren_tests::broker::TestBroker;
use warren_tests::http::{self, Response};
use warren_tests::worker::{WorkerProcess, gateway_env, gateway_key_hash, with};

const ENQUEUE_KEY: &str = "wk_console_enqueue_0a1b2c3d4e5f60718293a4b5c6d7e8f9";
const ADMIN_KEY: &str = "wk_console_admin_f9e8d7c6b5a4938271605f4e3d2c1b0a";

async fn form(addr: SocketAddr, path: &str, cookie: Option<&str>, body: &str) -> Response {
    let cookie = cookie.map(|c| format!("warren_console={c}"));
    let mut headers = vec![("Content-Type", "application/x-www-form-urlencoded")];
    if let Some(c) = &cookie {
        headers.push(("Cookie", c.as_str()));
    }
    http::request(addr, "POST", path, &headers, body.as_bytes())
        .await
        .unwrap()
}

async fn page(addr: SocketAddr, path: &str, cookie: Option<&str>) -> Response {
    let cookie = cookie.map(|c| format!("warren_console={c}"));
    let headers: Vec<(&str, &str)> = cookie.iter().map(|c| ("Cookie", c.as_str())).collect();
    http::request(addr, "GET", path, &headers, &[])
        .await
        .unwrap()
}

fn is_strict_page(r: &Response) {
    let csp = r.header("content-security-policy").unwrap_or_default();
    assert!(
        csp.contains("default-src 'none'") && !csp.contains("script-src"),
        "{csp}"
    );
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
}

#[tokio::test]
async fn the_console_logs_in_with_an_admin_key_lists_queues_and_refuses_a_post_without_csrf() {
    warren_tests::worker::binary("gateway", "gateway").unwrap();
    let broker = TestBroker::new().await.unwrap();
    let ladder = [Duration::from_millis(200), Duration::from_millis(300)];
    broker.declare_email_topology(&ladder).await.unwrap();
    let store = tempfile::tempdir().unwrap();
    let keys = format!(
        r#"[{{name = "shop", hash = "{}", scopes = ["enqueue"]}}, {{name = "ops", hash = "{}", scopes = ["admin"]}}]"#,
        gateway_key_hash(ENQUEUE_KEY),
        gateway_key_hash(ADMIN_KEY)
    );
    let env = with(
        gateway_env(broker.namespace(), store.path()),
        &[("WARREN_AUTH__KEYS", keys.as_str())],
    );
    let mut gateway = WorkerProcess::gateway(&env).await.unwrap();
    let addr = gateway.http_addr().await.unwrap();

    // No session: to the login page, which is strict HTML.
    let r = page(addr, "/console", None).await;
    assert_eq!(r.status, 303, "{}", r.text());
    assert_eq!(r.header("location"), Some("/console/login"));
    let r = page(addr, "/console/login", None).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    is_strict_page(&r);

    // An enqueue key may not use the console; an unknown key neither.
    let r = form(addr, "/console/login", None, &format!("key={ENQUEUE_KEY}")).await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.header("set-cookie").is_none());
    assert!(r.text().contains("lacks the scope"), "{}", r.text());
    let r = form(addr, "/console/login", None, "key=wk_nobody").await;
    assert_eq!(r.status, 401, "{}", r.text());
    assert!(r.header("set-cookie").is_none());

    // The admin key: a session cookie, HttpOnly and SameSite=Strict.
    let r = form(addr, "/console/login", None, &format!("key={ADMIN_KEY}")).await;
    assert_eq!(r.status, 303, "{}", r.text());
    let set = r.header("set-cookie").unwrap().to_owned();
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict"),
        "{set}"
    );
    assert!(!set.contains(ADMIN_KEY), "the cookie is not the key: {set}");
    let session = set
        .strip_prefix("warren_console=")
        .and_then(|s| s.split(';').next())
        .unwrap()
        .to_owned();

    // The queues page lists the namespace's work queue.
    let r = page(addr, "/console", Some(&session)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    is_strict_page(&r);
    let html = r.text();
    let queue = broker.names.work_queue("email");
    assert!(html.contains(&format!("data-queue=\"{queue}\"")), "{html}");
    let csrf = html
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap()
        .to_owned();
    assert_eq!(csrf.len(), 64, "{html}");

    // A POST without the token, or with a wrong one, is refused, and the
    // session goes on.
    for body in ["", "csrf=0000"] {
        let r = form(addr, "/console/logout", Some(&session), body).await;
        assert_eq!(r.status, 403, "{}", r.text());
        assert_eq!(r.json().unwrap()["type"], "urn:warren:problem:csrf");
    }
    assert_eq!(page(addr, "/console", Some(&session)).await.status, 200);
    // With it, the session ends.
    let r = form(
        addr,
        "/console/logout",
        Some(&session),
        &format!("csrf={csrf}"),
    )
    .await;
    assert_eq!(r.status, 303, "{}", r.text());
    assert_eq!(page(addr, "/console", Some(&session)).await.status, 303);

    gateway.signal("TERM").unwrap();
    let output = gateway.all_output(Duration::from_secs(20)).await.unwrap();
    for line in &output {
        assert!(
            !line.contains(ADMIN_KEY) && !line.contains(ENQUEUE_KEY) && !line.contains(&session),
            "a key or session in the log: {line}"
        );
    }
    broker.cleanup_stems(&["email"], &ladder).await.unwrap();
}
