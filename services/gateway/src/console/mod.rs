//! The web console at `/console`: server-rendered HTML for operators.
//!
//! It logs in with an API key of the `admin` scope and keeps a session
//! cookie (`HttpOnly`, `SameSite=Strict`, path `/console`): the key itself
//! is checked once and never stored. Every state-changing form carries the
//! session's CSRF token, checked in constant time; a POST without it is
//! refused with 403. Sessions live in this gateway's memory (a restart, or
//! another replica, asks for the key again).
//!
//! Everything shown is escaped (minijinja's HTML auto-escaping), and every
//! page is sent with a strict Content-Security-Policy: scripts, styles and
//! connections of the gateway only (one static file, `console.js`, and no
//! inline script), forms posting back to it only. Queue counters come from
//! the management API through the code `warren queues` uses
//! ([`warren::management`]); the parking lot ([`dead`]) is read and
//! settled by the code `warren dead` runs ([`warren::dead`]); a task's
//! timeline ([`timeline`]) follows its events over SSE. The queues page
//! refreshes its counters in place from `GET /console/queues.json`
//! (polled by `console.js`). The workflows page ([`workflows`]) reads
//! what `GET /v1/workflows/{id}` answers; the schedules page
//! ([`schedules`]) what the conductor's `GET /v1/schedules` answers, at
//! `console.conductor_url`.

pub mod dead;
pub mod schedules;
pub mod timeline;
pub mod workflows;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use minijinja::Environment;
use serde::Serialize;
use subtle::ConstantTimeEq;
use warren::management::{Management, QueueRow, queue_rows};
use warren::settings::BrokerSettings;

use crate::auth::{Auth, Caller, Scope};
use crate::problem::Problem;

/// The session cookie's name.
pub const COOKIE: &str = "warren_console";
/// How long a session lasts from its login.
const SESSION_TTL: Duration = Duration::from_secs(8 * 3600);
/// Every console page's Content-Security-Policy: scripts (files only, no
/// inline script), styles, event streams and forms of this origin only; no
/// frames.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                       connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

const CSS: &str = include_str!("console.css");

struct Session {
    caller: Caller,
    csrf: String,
    expires: Instant,
}

/// What the `[console]` settings give the console.
#[derive(Debug, Clone)]
pub struct Options {
    /// The conductor's base URL, for the schedules page.
    pub conductor: Option<url::Url>,
    /// The most messages a replay sends a second; 0: no limit.
    pub replay_rate: f64,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            conductor: None,
            replay_rate: crate::settings::DEFAULT_CONSOLE_REPLAY_RATE,
        }
    }
}

/// The console's state: templates, sessions, the management API.
pub struct Console {
    auth: Arc<Auth>,
    broker: BrokerSettings,
    templates: Environment<'static>,
    sessions: Mutex<HashMap<String, Session>>,
    options: Options,
}

impl Console {
    pub fn new(auth: Arc<Auth>, broker: BrokerSettings) -> Self {
        let mut templates = Environment::new();
        for (name, source) in [
            ("base.html", include_str!("templates/base.html")),
            ("login.html", include_str!("templates/login.html")),
            ("queues.html", include_str!("templates/queues.html")),
            ("dead.html", include_str!("templates/dead.html")),
            ("settled.html", include_str!("templates/settled.html")),
            ("task.html", include_str!("templates/task.html")),
            ("workflows.html", include_str!("templates/workflows.html")),
            ("schedules.html", include_str!("templates/schedules.html")),
        ] {
            templates
                .add_template(name, source)
                .unwrap_or_else(|e| unreachable!("the console's template {name} parses: {e}"));
        }
        Self {
            auth,
            broker,
            templates,
            sessions: Mutex::new(HashMap::new()),
            options: Options::default(),
        }
    }

    /// The console with the `[console]` settings' options.
    #[must_use]
    pub fn with_options(mut self, options: Options) -> Self {
        self.options = options;
        self
    }

    fn render(&self, name: &str, context: minijinja::Value) -> Response {
        match self
            .templates
            .get_template(name)
            .and_then(|t| t.render(context))
        {
            Ok(html) => page(StatusCode::OK, html),
            Err(e) => {
                tracing::error!(error = %e, template = name, "A console page failed to render.");
                Problem::internal("the console page failed to render; it has been logged")
                    .into_response()
            }
        }
    }

    /// A connection to the broker for one page's work, closed after it.
    async fn connect(&self) -> Result<lapin::Connection, warren::broker::ConnectError> {
        warren::broker::connect_without_recovery(&self.broker, "gateway-console").await
    }

    /// The session of the request's cookie, if any and not expired.
    pub(crate) fn session(&self, headers: &HeaderMap) -> Option<(String, Caller, String)> {
        let id = cookie(headers, COOKIE)?;
        let mut sessions = self.sessions.lock().ok()?;
        let now = Instant::now();
        sessions.retain(|_, s| s.expires > now);
        sessions
            .get(&id)
            .map(|s| (id.clone(), s.caller.clone(), s.csrf.clone()))
    }
}

/// The console's routes, with their own state.
pub fn router<S: Clone + Send + Sync + 'static>(console: Arc<Console>) -> Router<S> {
    Router::new()
        .route("/console", get(queues_page))
        .route("/console/queues.json", get(queues_json))
        .route("/console/schedules", get(schedules::page))
        .route("/console/login", get(login_page).post(login))
        .route("/console/logout", post(logout))
        .route("/console/console.css", get(css))
        .route("/console/console.js", get(timeline::script))
        .route("/console/dead", get(dead::page))
        .route("/console/dead/replay", post(dead::replay))
        .route("/console/dead/purge", post(dead::purge))
        .route("/console/task", get(timeline::page))
        .with_state(console)
}

/// An HTML page with the console's security headers.
fn page(status: StatusCode, html: String) -> Response {
    let mut response = (status, html).into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    secure(h);
    response
}

pub(crate) fn secure(h: &mut HeaderMap) {
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

async fn css() -> Response {
    let mut response = CSS.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/css; charset=utf-8"),
    );
    secure(response.headers_mut());
    response
}

async fn login_page(State(console): State<Arc<Console>>) -> Response {
    console.render("login.html", minijinja::context! {})
}

async fn login(State(console): State<Arc<Console>>, body: Bytes) -> Response {
    let form = form(&body);
    let key = form.get("key").map(String::as_str).unwrap_or_default();
    let refuse = |status: StatusCode, error: &str| {
        let mut r = console.render("login.html", minijinja::context! { error });
        *r.status_mut() = status;
        r
    };
    let Some(caller) = console.auth.check(key) else {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "That key is not one this gateway knows.",
        );
    };
    if !caller.may(Scope::Admin) {
        return refuse(
            StatusCode::FORBIDDEN,
            &format!(
                "The key '{}' lacks the scope 'admin', which the console needs.",
                caller.name
            ),
        );
    }
    let id = token();
    let csrf = token();
    tracing::info!(key = %caller.name, "Console login.");
    if let Ok(mut sessions) = console.sessions.lock() {
        sessions.insert(
            id.clone(),
            Session {
                caller,
                csrf,
                expires: Instant::now() + SESSION_TTL,
            },
        );
    }
    let mut response = Redirect::to("/console").into_response();
    if let Ok(v) = HeaderValue::from_str(&format!(
        "{COOKIE}={id}; Path=/console; HttpOnly; SameSite=Strict; Max-Age={}",
        SESSION_TTL.as_secs()
    )) {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
    response
}

async fn logout(State(console): State<Arc<Console>>, headers: HeaderMap, body: Bytes) -> Response {
    let Some((id, _, csrf)) = console.session(&headers) else {
        return Redirect::to("/console/login").into_response();
    };
    if let Err(refused) = check_csrf(&csrf, &body) {
        return refused.into_response();
    }
    if let Ok(mut sessions) = console.sessions.lock() {
        sessions.remove(&id);
    }
    let mut response = Redirect::to("/console/login").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static(
            "warren_console=; Path=/console; HttpOnly; SameSite=Strict; Max-Age=0",
        ),
    );
    response
}

/// The namespace's work queues, or what kept the management API from
/// answering.
async fn queue_table(console: &Console) -> (Vec<QueueRow>, Option<String>) {
    let namespace = &console.broker.namespace;
    match Management::new(&console.broker) {
        Ok(m) => match m.queues().await {
            Ok(queues) => (queue_rows(namespace, &queues, false), None),
            Err(e) => (Vec::new(), Some(e.to_string())),
        },
        Err(e) => (Vec::new(), Some(e.to_string())),
    }
}

/// `GET /console/queues.json`: what the queues page shows, for
/// `console.js` to refresh it in place.
#[derive(Debug, Serialize)]
pub struct QueuesNow {
    pub rows: Vec<QueueRow>,
    pub error: Option<String>,
    /// When the management API was read (RFC 3339).
    pub at: String,
}

async fn queues_json(State(console): State<Arc<Console>>, headers: HeaderMap) -> Response {
    if console.session(&headers).is_none() {
        return no_session();
    }
    let (rows, error) = queue_table(&console).await;
    let now = QueuesNow {
        rows,
        error,
        at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    };
    let mut response = axum::Json(now).into_response();
    secure(response.headers_mut());
    response
}

/// 401 for a console resource a script fetches without a session.
pub(crate) fn no_session() -> Response {
    Problem::new(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "No console session",
        "log in to the console first",
    )
    .into_response()
}

async fn queues_page(State(console): State<Arc<Console>>, headers: HeaderMap) -> Response {
    let Some((_, caller, csrf)) = console.session(&headers) else {
        return Redirect::to("/console/login").into_response();
    };
    let namespace = console.broker.namespace.clone();
    let (rows, error) = queue_table(&console).await;
    console.render(
        "queues.html",
        minijinja::context! {
            namespace,
            rows,
            error,
            csrf,
            caller => caller.name,
        },
    )
}

/// 403 unless the form's `csrf` field is the session's token.
fn check_csrf(expected: &str, body: &[u8]) -> Result<(), Problem> {
    let form = form(body);
    let given = form.get("csrf").map(String::as_str).unwrap_or_default();
    if !given.is_empty() && bool::from(given.as_bytes().ct_eq(expected.as_bytes())) {
        Ok(())
    } else {
        Err(Problem::new(
            StatusCode::FORBIDDEN,
            "csrf",
            "The form's CSRF token is missing or wrong",
            "reload the console page and submit the form again",
        ))
    }
}

/// An `application/x-www-form-urlencoded` body.
fn form(body: &[u8]) -> HashMap<String, String> {
    url::form_urlencoded::parse(body).into_owned().collect()
}

/// The value of cookie `name`.
fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

/// 32 random bytes as hex.
fn token() -> String {
    let bytes: [u8; 32] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The `id` of a page's query string (`?id=...`), trimmed; `None` when it is
/// missing or blank.
fn id_param(query: Option<&str>) -> Option<String> {
    url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .find(|(k, _)| k == "id")
        .map(|(_, v)| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

#[cfg(test)]
// A failing unwrap is how a test reports failure.
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn every_field_is_escaped() {
        let console = Console::new(Arc::new(Auth::open()), BrokerSettings::default());
        let rows = vec![warren::management::QueueRow {
            name: "<script>document.title='owned'</script>".into(),
            ready: 1,
            unacked: 0,
            consumers: 0,
            in_rate: 0.0,
            out_rate: 0.0,
            retrying: None,
            parked: Some(1),
        }];
        let html = console
            .templates
            .get_template("queues.html")
            .unwrap()
            .render(minijinja::context! { namespace => "w", rows, csrf => "t", caller => "<b>" })
            .unwrap();
        assert!(!html.contains("<script>"), "{html}");
        assert!(html.contains("&lt;script&gt;"), "{html}");
        assert!(!html.contains("<b>"), "{html}");
    }

    #[test]
    fn a_workflows_fields_are_escaped_and_each_step_links_to_its_timeline() {
        let console = Console::new(Arc::new(Auth::open()), BrokerSettings::default());
        let status = serde_json::json!({
            "workflow_id": "<i>w</i>", "kind": "chain", "state": "failed", "size": 2,
            "failed": ["<i>w</i>.2"],
            "steps": [
                {"n": 1, "task_id": "<i>w</i>.1", "state": "succeeded", "task_type": "a.b", "attempt": 1},
                {"n": 2, "task_id": "<i>w</i>.2", "kind": "group", "state": "dead_lettered", "on_failure": "skip",
                 "members": [{"n": 1, "task_id": "<i>w</i>.2.1", "state": "dead_lettered",
                              "error_kind": "bad", "error": "<script>x()</script>"}]}
            ]
        });
        let recent = vec![
            serde_json::json!({"id": "<i>w</i>", "kind": "chain", "size": 2, "state": "failed"}),
        ];
        let html = console
            .templates
            .get_template("workflows.html")
            .unwrap()
            .render(minijinja::context! {
                id => "<i>w</i>", status, recent, known => 1, caught_up => true, csrf => "t", caller => "c"
            })
            .unwrap();
        assert!(
            !html.contains("<i>") && !html.contains("<script>"),
            "{html}"
        );
        assert!(
            // (minijinja keeps `/` in a query, which the escaping writes as `&#x2f;`.)
            html.contains("href=\"/console/task?id=%3Ci%3Ew%3C&#x2f;i%3E.2.1\""),
            "{html}"
        );
        assert!(html.contains("&lt;script&gt;x()"), "{html}");
        assert!(
            html.contains("data-workflow=\"&lt;i&gt;w&lt;&#x2f;i&gt;\""),
            "{html}"
        );
    }

    #[test]
    fn cookies_and_forms_are_read() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; warren_console=abc; b=2"),
        );
        assert_eq!(cookie(&h, COOKIE).as_deref(), Some("abc"));
        assert_eq!(form(b"key=wk_1%2B&csrf=x")["key"], "wk_1+");
        assert!(check_csrf("tok", b"csrf=tok").is_ok());
        assert!(check_csrf("tok", b"csrf=tox").is_err());
        assert!(check_csrf("tok", b"").is_err());
    }
}
