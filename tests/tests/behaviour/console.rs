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
        csp.contains("default-src 'none'")
            && csp.contains("script-src 'self';")
            && !csp.contains("unsafe"),
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

/// A message parked by hand in `queue` (as a worker parks one), with the
/// failure headers a worker sets.
async fn park(broker: &TestBroker, queue: &str, id: &str, body: &[u8], error: &str) {
    use warren::contract::{headers, set_int, set_str};
    let props = warren::task_properties(id, "email.send", 0);
    let mut table = props.headers().clone().unwrap_or_default();
    set_int(&mut table, headers::ATTEMPT, 3);
    set_str(&mut table, headers::ERROR_KIND, "smtp_transient");
    set_str(&mut table, headers::ERROR, error);
    set_str(&mut table, headers::DEAD_REASON, "attempts_exhausted");
    set_str(
        &mut table,
        headers::LAST_FAILURE_AT,
        chrono::Utc::now().to_rfc3339(),
    );
    let props = props.with_headers(table);
    broker
        .publisher
        .publish_confirmed("", queue, body, props)
        .await
        .unwrap();
}

#[tokio::test]
async fn the_console_in_a_real_browser_shows_queues_and_parked_messages_replays_one_and_runs_no_script_from_a_body()
 {
    warren_tests::worker::binary("gateway", "gateway").unwrap();
    let broker = TestBroker::new().await.unwrap();
    let ladder = [Duration::from_millis(200), Duration::from_millis(300)];
    broker.declare_email_topology(&ladder).await.unwrap();
    let work = broker.names.work_queue("email");
    let dead = broker.email_dead_queue();
    let good = format!("good-{}", uuid::Uuid::new_v4().simple());
    let evil = format!("evil-{}", uuid::Uuid::new_v4().simple());
    park(
        &broker,
        &dead,
        &good,
        br#"{"to":"a@example.com","subject":"hello","text":"t"}"#,
        "451 try later",
    )
    .await;
    // Script in the body and in a header: as a page element, an event
    // handler and text that would end the <pre>.
    park(
        &broker,
        &dead,
        &evil,
        br#"{"to":"b@example.com","subject":"</pre><script>document.title='owned';window.warrenOwned=1</script>","text":"<img src=x onerror=\"window.warrenOwned=2\">"}"#,
        "<script>window.warrenOwned=3</script>",
    )
    .await;

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
    gateway.wait_caught_up().await.unwrap();
    let base = format!("http://{addr}");

    // An enqueue key enqueues, but the console is not its to read: its
    // login is refused, and the key as a bearer opens no page.
    let enqueued = http::request(
        addr,
        "POST",
        "/v1/tasks/email",
        &[
            ("Authorization", &format!("Bearer {ENQUEUE_KEY}")),
            ("Content-Type", "application/json"),
        ],
        br#"{"to":"c@example.com","subject":"s","text":"t"}"#,
    )
    .await
    .unwrap();
    assert_eq!(enqueued.status, 202, "{}", enqueued.text());
    let task_id = enqueued.json().unwrap()["task_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = form(addr, "/console/login", None, &format!("key={ENQUEUE_KEY}")).await;
    assert_eq!(r.status, 403, "{}", r.text());
    for path in ["/console", "/console/dead", "/console/task"] {
        let bearer = format!("Bearer {ENQUEUE_KEY}");
        let r = http::request(addr, "GET", path, &[("Authorization", &bearer)], &[])
            .await
            .unwrap();
        assert_eq!(r.status, 303, "{path}: {}", r.text());
        assert_eq!(r.header("location"), Some("/console/login"), "{path}");
    }
    let r = http::request(
        addr,
        "GET",
        &format!("/console/tasks/{task_id}/events"),
        &[("Authorization", &format!("Bearer {ENQUEUE_KEY}"))],
        &[],
    )
    .await
    .unwrap();
    assert_eq!(r.status, 401, "{}", r.text());

    let browser = warren_tests::browser::Browser::start().await.unwrap();
    let b = &browser.client;

    // Log in with the admin key: the queues page.
    b.goto(&format!("{base}/console/login")).await.unwrap();
    let key = browser.wait_for("input[name=key]").await.unwrap();
    key.send_keys(ADMIN_KEY).await.unwrap();
    browser
        .wait_for("#login button[type=submit]")
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    browser
        .wait_for(&format!("#queues tr[data-queue=\"{work}\"]"))
        .await
        .unwrap();
    browser.screenshot("queues").await.unwrap();

    // The parking lot: both messages, the evil one as text.
    b.goto(&format!("{base}/console/dead?queue=email"))
        .await
        .unwrap();
    browser
        .wait_for(&format!("article[data-id=\"{good}\"]"))
        .await
        .unwrap();
    let shown = browser
        .wait_for(&format!("article[data-id=\"{evil}\"] pre.body"))
        .await
        .unwrap();
    assert!(
        shown
            .text()
            .await
            .unwrap()
            .contains("<script>document.title"),
        "the body is shown as text"
    );
    let error = browser
        .wait_for(&format!("article[data-id=\"{evil}\"] .error-text"))
        .await
        .unwrap();
    assert_eq!(
        error.text().await.unwrap(),
        "<script>window.warrenOwned=3</script>"
    );
    let attempts = browser
        .wait_for(&format!("article[data-id=\"{good}\"] .attempts"))
        .await
        .unwrap();
    assert_eq!(attempts.text().await.unwrap(), "3");
    assert_eq!(b.title().await.unwrap(), "Parking lot · Warren console");
    let owned = b
        .execute(
            "return window.warrenOwned === undefined ? null : window.warrenOwned;",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(owned, serde_json::Value::Null, "a script from the body ran");
    let script_elements = b
        .find_all(fantoccini::Locator::Css("main script, main img"))
        .await
        .unwrap();
    assert!(script_elements.is_empty(), "the body made elements");
    browser.screenshot("parking-lot").await.unwrap();

    // Its replay button: on the work queue, fresh, and gone from the lot.
    browser
        .wait_for(&format!("article[data-id=\"{good}\"] button.replay-one"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let replayed = browser.wait_for("#replayed").await.unwrap();
    assert_eq!(replayed.text().await.unwrap(), "1");
    assert_eq!(
        browser
            .wait_for("#not-found")
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        "0"
    );
    browser.screenshot("replayed").await.unwrap();
    let delivered = broker.take(&work, 2, warren_tests::WAIT).await.unwrap();
    let back = delivered
        .iter()
        .find(|m| m.message_id().as_deref() == Some(good.as_str()))
        .unwrap_or_else(|| panic!("{good} on {work}: {delivered:?}"));
    assert_eq!(back.header("x-warren-attempt").as_deref(), Some("1"));
    assert_eq!(back.header("x-warren-error-kind"), None);
    assert_eq!(broker.depth(&dead).await.unwrap(), 1, "the evil one stays");

    // The task lookup: the enqueued task's timeline, live over SSE.
    b.goto(&format!("{base}/console/task?id={task_id}"))
        .await
        .unwrap();
    browser
        .wait_for("#events tr.event[data-state=\"queued\"]")
        .await
        .unwrap();
    browser.screenshot("timeline").await.unwrap();

    browser.close().await;
    gateway.signal("TERM").unwrap();
    let output = gateway.all_output(Duration::from_secs(20)).await.unwrap();
    for line in &output {
        assert!(
            !line.contains(ADMIN_KEY) && !line.contains(ENQUEUE_KEY),
            "a key in the log: {line}"
        );
    }
    broker.cleanup_stems(&["email"], &ladder).await.unwrap();
}
