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

/// Logs the browser in with the admin key and waits for the queues page.
async fn log_in(browser: &warren_tests::browser::Browser, base: &str) {
    browser
        .client
        .goto(&format!("{base}/console/login"))
        .await
        .unwrap();
    let key = browser.wait_for("input[name=key]").await.unwrap();
    key.send_keys(ADMIN_KEY).await.unwrap();
    browser
        .wait_for("#login button[type=submit]")
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    browser.wait_for("h2 code").await.unwrap();
}

/// Waits, in the page, until the element of `css` reads `text`: a
/// MutationObserver answers when the DOM changes (the WebDriver script
/// timeout bounds it).
async fn wait_for_text(browser: &warren_tests::browser::Browser, css: &str, text: &str) {
    let script = r#"
        var css = arguments[0], want = arguments[1], done = arguments[arguments.length - 1];
        var el = document.querySelector(css);
        if (!el) { done('no element ' + css); return; }
        if (el.textContent.trim() === want) { done(null); return; }
        new MutationObserver(function (changes, observer) {
            if (el.textContent.trim() === want) { observer.disconnect(); done(null); }
        }).observe(el, { childList: true, characterData: true, subtree: true });
    "#;
    let outcome = browser
        .client
        .execute_async(script, vec![css.into(), text.into()])
        .await;
    match outcome {
        Ok(serde_json::Value::Null) => {}
        other => panic!("'{css}' never read '{text}': {other:?}"),
    }
}

fn console_keys() -> String {
    format!(
        r#"[{{name = "shop", hash = "{}", scopes = ["enqueue"]}}, {{name = "ops", hash = "{}", scopes = ["admin"]}}]"#,
        gateway_key_hash(ENQUEUE_KEY),
        gateway_key_hash(ADMIN_KEY)
    )
}

#[tokio::test]
async fn the_console_refreshes_queue_depths_live_replays_all_shown_at_its_rate_and_shows_the_conductors_schedules()
 {
    warren_tests::worker::binary("gateway", "gateway").unwrap();
    let conductor_bin = warren_tests::worker::binary("conductor", "conductor").unwrap();
    let broker = TestBroker::new().await.unwrap();
    let ladder = [Duration::from_millis(200), Duration::from_millis(300)];
    broker.declare_email_topology(&ladder).await.unwrap();
    let work = broker.names.work_queue("email");
    let dead = broker.email_dead_queue();
    let parked: Vec<String> = (0..3)
        .map(|i| format!("all-{i}-{}", uuid::Uuid::new_v4().simple()))
        .collect();
    for id in &parked {
        park(
            &broker,
            &dead,
            id,
            br#"{"to":"a@example.com","subject":"hello","text":"t"}"#,
            "451 try later",
        )
        .await;
    }

    // A gateway without console.conductor_url, replaying at most 5 a second.
    let store = tempfile::tempdir().unwrap();
    let keys = console_keys();
    let env = with(
        gateway_env(broker.namespace(), store.path()),
        &[
            ("WARREN_AUTH__KEYS", keys.as_str()),
            ("WARREN_CONSOLE__REPLAY_RATE", "5"),
        ],
    );
    let mut gateway = WorkerProcess::gateway(&env).await.unwrap();
    let addr = gateway.http_addr().await.unwrap();
    gateway.wait_caught_up().await.unwrap();
    let base = format!("http://{addr}");
    // The counters' endpoint is the session's only.
    let r = page(addr, "/console/queues.json", None).await;
    assert_eq!(r.status, 401, "{}", r.text());

    let browser = warren_tests::browser::Browser::start().await.unwrap();
    let b = &browser.client;
    log_in(&browser, &base).await;

    // The queues page: the work queue's ready count goes from 0 to 2 in
    // place when two tasks are published, without a reload (a global set
    // before survives).
    let ready = format!("#queues tr[data-queue=\"{work}\"] td[data-field=ready]");
    wait_for_text(&browser, &ready, "0").await;
    b.execute("window.warrenNoReload = 7; return null;", vec![])
        .await
        .unwrap();
    for i in 0..2 {
        let id = format!("live-{i}-{}", uuid::Uuid::new_v4().simple());
        broker
            .publisher
            .publish_confirmed(
                "",
                &work,
                br#"{"to":"l@example.com","subject":"live","text":"t"}"#,
                warren::task_properties(&id, "email.send", 0),
            )
            .await
            .unwrap();
    }
    wait_for_text(&browser, &ready, "2").await;
    let marker = b
        .execute("return window.warrenNoReload;", vec![])
        .await
        .unwrap();
    assert_eq!(marker, serde_json::json!(7), "the page was reloaded");
    let state = browser.wait_for("#queues-state").await.unwrap();
    assert!(
        state.text().await.unwrap().starts_with("last read "),
        "{}",
        state.text().await.unwrap()
    );
    browser.screenshot("queues-live").await.unwrap();

    // The parking lot: "select all shown" ticks the three; one replay
    // sends them all, at most 5 a second.
    b.goto(&format!("{base}/console/dead?queue=email"))
        .await
        .unwrap();
    for id in &parked {
        browser
            .wait_for(&format!("article[data-id=\"{id}\"]"))
            .await
            .unwrap();
    }
    let ticked = "return document.querySelectorAll('#settle input[name=id]:checked').length;";
    assert_eq!(
        b.execute(ticked, vec![]).await.unwrap(),
        serde_json::json!(0)
    );
    browser
        .wait_for("#select-all")
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    assert_eq!(
        b.execute(ticked, vec![]).await.unwrap(),
        serde_json::json!(3)
    );
    browser.screenshot("select-all").await.unwrap();
    browser
        .wait_for("#replay-selected")
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let replayed = browser.wait_for("#replayed").await.unwrap();
    assert_eq!(replayed.text().await.unwrap(), "3");
    let rate = browser
        .wait_for("#rate")
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(rate, "at most 5 a second");
    let took = browser
        .wait_for("#took")
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let took = humantime::parse_duration(&took).unwrap();
    // Three at 5 a second: the second and third wait 200 ms each.
    assert!(took >= Duration::from_millis(400), "{took:?}");
    browser.screenshot("replayed-all").await.unwrap();
    let delivered = broker.take(&work, 5, warren_tests::WAIT).await.unwrap();
    for id in &parked {
        let copies: Vec<_> = delivered
            .iter()
            .filter(|m| m.message_id().as_deref() == Some(id.as_str()))
            .collect();
        assert_eq!(copies.len(), 1, "{id} on {work}: {delivered:?}");
        assert_eq!(copies[0].header("x-warren-attempt").as_deref(), Some("1"));
    }
    assert_eq!(broker.depth(&dead).await.unwrap(), 0);

    // Schedules, without the setting: said so.
    b.goto(&format!("{base}/console/schedules")).await.unwrap();
    browser.wait_for("#not-configured").await.unwrap();
    gateway.signal("TERM").unwrap();
    gateway.wait_exit(Duration::from_secs(20)).await.unwrap();

    // A real conductor, and a gateway pointing at it.
    let mut config = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    std::io::Write::write_all(
        &mut config,
        br#"
[[schedules]]
name = "tick"
every = "1s"
task_type = "email.send"
payload = { to = "tick@example.com", subject = "Tick", text = "tock" }

[[schedules]]
name = "nightly"
cron = "0 3 * * *"
time_zone = "Europe/Paris"
task_type = "email.send"
payload = { to = "night@example.com", subject = "Night", text = "report" }
"#,
    )
    .unwrap();
    let mut conductor = WorkerProcess::start(
        conductor_bin,
        "conductor",
        &[
            ("WARREN_CONFIG", config.path().display().to_string()),
            ("WARREN_BROKER__NAMESPACE", broker.namespace().to_owned()),
            ("WARREN_OPS__ADDR", "127.0.0.1:0".to_owned()),
            // The events stream's retention, as the gateway's (gateway_env).
            ("WARREN_CONDUCTOR__EVENTS_RETENTION", "1h".to_owned()),
        ],
    )
    .await
    .unwrap();
    let serving = conductor
        .wait_for_log(
            "Serving /metrics, /healthz, /readyz and /v1/schedules.",
            1,
            warren_tests::WAIT,
        )
        .await
        .unwrap();
    let conductor_addr = serving[0]["fields"]["addr"].as_str().unwrap().to_owned();
    conductor
        .wait_for_log("Fired.", 1, warren_tests::WAIT)
        .await
        .unwrap();
    let truth = http::get(conductor_addr.parse().unwrap(), "/v1/schedules")
        .await
        .unwrap()
        .json()
        .unwrap();
    let identity = truth["identity"].as_str().unwrap().to_owned();
    assert_eq!(truth["leader"], true, "{truth}");

    let conductor_url = format!("http://{conductor_addr}");
    let env = with(
        gateway_env(broker.namespace(), store.path()),
        &[
            ("WARREN_AUTH__KEYS", keys.as_str()),
            ("WARREN_CONSOLE__CONDUCTOR_URL", conductor_url.as_str()),
        ],
    );
    let mut gateway = WorkerProcess::gateway(&env).await.unwrap();
    let addr = gateway.http_addr().await.unwrap();
    let base = format!("http://{addr}");
    log_in(&browser, &base).await;
    b.goto(&format!("{base}/console/schedules")).await.unwrap();
    let leader = browser.wait_for("#leader").await.unwrap();
    assert_eq!(leader.text().await.unwrap(), identity);
    let leads = browser.wait_for("#conductor").await.unwrap();
    assert_eq!(
        leads.attr("data-leader").await.unwrap().as_deref(),
        Some("true")
    );
    let cell =
        |name: &str, class: &str| format!("#schedules tr[data-schedule=\"{name}\"] .{class}");
    let text = |css: String| {
        let browser = &browser;
        async move { browser.wait_for(&css).await.unwrap().text().await.unwrap() }
    };
    assert_eq!(text(cell("nightly", "cron")).await, "0 3 * * *");
    assert_eq!(text(cell("nightly", "last-fire")).await, "-");
    let next = text(cell("nightly", "next-fire")).await;
    chrono::DateTime::parse_from_rfc3339(&next).unwrap_or_else(|e| panic!("{next}: {e}"));
    assert_eq!(text(cell("tick", "every")).await, "1s");
    let last = text(cell("tick", "last-fire")).await;
    chrono::DateTime::parse_from_rfc3339(&last).unwrap_or_else(|e| panic!("{last}: {e}"));
    assert_eq!(text(cell("tick", "task-type")).await, "email.send");
    browser.screenshot("schedules").await.unwrap();

    browser.close().await;
    for p in [&gateway, &conductor] {
        p.signal("TERM").unwrap();
    }
    gateway.wait_exit(Duration::from_secs(20)).await.unwrap();
    conductor.wait_exit(Duration::from_secs(20)).await.unwrap();
    broker.cleanup_stems(&["email"], &ladder).await.unwrap();
}

#[tokio::test]
async fn the_console_lists_workflows_shows_a_chains_steps_and_links_each_to_its_timeline() {
    // Built before any broker connection opens (see TestBroker::new).
    let pipeline = warren_tests::worker::binary("warren-examples", "pipeline-worker").unwrap();
    warren_tests::worker::binary("gateway", "gateway").unwrap();
    let broker = TestBroker::new().await.unwrap();
    let ns = broker.namespace().to_owned();
    let dir = tempfile::tempdir().unwrap();
    let mut worker = WorkerProcess::start(
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
    worker
        .wait_for_log("Consuming.", 1, warren_tests::WAIT)
        .await
        .unwrap();
    let store = tempfile::tempdir().unwrap();
    let keys = console_keys();
    let env = with(
        gateway_env(&ns, store.path()),
        &[("WARREN_AUTH__KEYS", keys.as_str())],
    );
    let mut gateway = WorkerProcess::gateway(&env).await.unwrap();
    let addr = gateway.http_addr().await.unwrap();
    gateway.wait_caught_up().await.unwrap();
    gateway
        .wait_for_log(
            "Read the workflow records from the events stream.",
            1,
            warren_tests::WAIT,
        )
        .await
        .unwrap();
    let base = format!("http://{addr}");

    // A chain of three steps through the real pipeline worker, followed
    // to its end over SSE. (Markup in fields is the unit tests' part: an
    // id of the HTTP API is [A-Za-z0-9._~:-] only.)
    let id = format!("order-{}", uuid::Uuid::new_v4().simple());
    let chain = serde_json::json!({
        "kind": "chain",
        "id": id,
        "steps": [
            {"type": "pipeline.validate", "body": {"record": {"id": "c1", "value": 4}}},
            {"type": "pipeline.process", "body": {"factor": 3}, "result_to": "input"},
            {"type": "pipeline.save", "body": {}, "result_to": "processed"}
        ]
    });
    let bearer = format!("Bearer {ENQUEUE_KEY}");
    let r = http::request(
        addr,
        "POST",
        "/v1/workflows",
        &[
            ("Authorization", bearer.as_str()),
            ("Content-Type", "application/json"),
        ],
        chain.to_string().as_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 202, "{}", r.text());
    let admin = format!("Bearer {ADMIN_KEY}");
    let mut stream = http::sse(
        addr,
        &format!("/v1/workflows/{id}/events"),
        &[("Authorization", admin.as_str())],
    )
    .await
    .unwrap();
    assert_eq!(stream.status, 200);
    let mut last = None;
    tokio::time::timeout(warren_tests::WAIT, async {
        while let Some(e) = stream.next_event().await.unwrap() {
            last = Some(e);
        }
    })
    .await
    .expect("the workflow's stream ends once it is final");
    let last = last.unwrap();
    assert_eq!(last.event.as_deref(), Some("workflow"));
    assert_eq!(last.json().unwrap()["state"], "succeeded");

    let browser = warren_tests::browser::Browser::start().await.unwrap();
    let b = &browser.client;
    log_in(&browser, &base).await;

    // The list: the chain, succeeded, linking to its page.
    b.goto(&format!("{base}/console/workflows")).await.unwrap();
    let listed = browser
        .wait_for("#recent tr[data-workflow] a.workflow-link")
        .await
        .unwrap();
    assert_eq!(listed.text().await.unwrap(), id);
    let row = browser.wait_for("#recent tr[data-workflow]").await.unwrap();
    assert_eq!(
        row.attr("data-state").await.unwrap().as_deref(),
        Some("succeeded")
    );
    browser.screenshot("workflows").await.unwrap();
    listed.click().await.unwrap();

    // Its page: three steps, each succeeded with its type, each a link to
    // its task's timeline.
    let state = browser.wait_for("#workflow-state").await.unwrap();
    assert_eq!(state.text().await.unwrap(), "succeeded");
    let steps = b
        .find_all(fantoccini::Locator::Css("#steps tr.step"))
        .await
        .unwrap();
    assert_eq!(steps.len(), 3);
    for (n, ty) in [
        (1, "pipeline.validate"),
        (2, "pipeline.process"),
        (3, "pipeline.save"),
    ] {
        let task = format!("{id}.{n}");
        let row = &steps[n - 1];
        assert_eq!(
            row.attr("data-task").await.unwrap().as_deref(),
            Some(task.as_str())
        );
        assert_eq!(
            row.attr("data-state").await.unwrap().as_deref(),
            Some("succeeded")
        );
        let cells = row.find_all(fantoccini::Locator::Css("td")).await.unwrap();
        assert_eq!(cells[2].text().await.unwrap(), ty);
        let link = row
            .find(fantoccini::Locator::Css("a.timeline-link"))
            .await
            .unwrap();
        assert_eq!(link.text().await.unwrap(), task);
    }
    browser.screenshot("workflow").await.unwrap();

    // The second step's link: its timeline, to `succeeded`.
    steps[1]
        .find(fantoccini::Locator::Css("a.timeline-link"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    browser
        .wait_for("#events tr.event[data-state=\"succeeded\"]")
        .await
        .unwrap();
    let shown = browser.wait_for("#timeline").await.unwrap();
    assert_eq!(
        shown.attr("data-task").await.unwrap().as_deref(),
        Some(format!("{id}.2").as_str())
    );

    // An unknown id: said so.
    b.goto(&format!(
        "{base}/console/workflows?id=nosuch-{}",
        uuid::Uuid::new_v4().simple()
    ))
    .await
    .unwrap();
    browser.wait_for("#error").await.unwrap();

    browser.close().await;
    for p in [&gateway, &worker] {
        p.signal("TERM").unwrap();
    }
    gateway.wait_exit(Duration::from_secs(20)).await.unwrap();
    worker.wait_exit(Duration::from_secs(20)).await.unwrap();
    broker.cleanup_stems(&["pipeline"], &[]).await.unwrap();
}
