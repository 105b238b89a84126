//! The HTTP API: routes, shared state, and the layers every request goes
//! through (metrics, a time limit, panics caught and answered with 500).
//!
//! Routes: `POST /v1/tasks`, `GET /v1/tasks` (a listing), `POST
//! /v1/tasks/email`, `POST /v1/tasks/image`, `POST /v1/images`, `GET
//! /v1/tasks/{id}`, `GET /v1/tasks/{id}/events`, `POST /v1/workflows`, `GET
//! /v1/workflows/{id}`, `GET /v1/workflows/{id}/events` and `GET /openapi.json`. Every error is a
//! [`Problem`]; nothing a client sends can panic the server, and if a bug
//! does, the panic ends that request only.

pub mod list;
pub mod model;
pub mod status;
pub mod tasks;
pub mod workflows;

use std::any::Any;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tower_http::catch_panic::CatchPanicLayer;
use warren_store::Store;

use crate::broker::Broker;
use crate::enqueue::Checks;
use crate::metrics;
use crate::problem::Problem;
use crate::status::Tracker;
use crate::upload;
use crate::workflows::Workflows;

/// Room for a multipart body's boundaries, part headers and `outputs`
/// part, on top of `http.max_upload_bytes`.
const MULTIPART_OVERHEAD: usize = 256 * 1024;

/// What every handler shares. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<AppInner>,
}

/// The parts of [`AppState`].
pub struct AppInner {
    pub broker: Arc<Broker>,
    pub tracker: Arc<Tracker>,
    /// The workflows' shapes, from their records.
    pub workflows: Arc<Workflows>,
    pub checks: Checks,
    pub store: Store,
    pub limits: Limits,
    /// Turns for `POST /v1/images`: `http.max_concurrent_uploads` permits.
    pub uploads: Arc<tokio::sync::Semaphore>,
    /// Cancelled at shutdown: open SSE streams end.
    pub shutdown: CancellationToken,
    /// The API keys ([`crate::auth`]).
    pub auth: Arc<crate::auth::Auth>,
    /// The web console at `/console`; `None` serves none.
    pub console: Option<Arc<crate::console::Console>>,
}

/// The request limits of `[http]` and `[events]`.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_body_bytes: usize,
    /// The smaller of `http.max_upload_bytes` and `image.max_source_bytes`.
    pub max_upload_bytes: usize,
    pub request_timeout: Duration,
    pub unknown_wait: Duration,
    pub keep_alive: Duration,
    /// `status.max_list_limit`.
    pub max_list_limit: usize,
    /// `workflows.max_steps`.
    pub max_workflow_steps: usize,
}

impl AppState {
    pub fn new(inner: AppInner) -> Self {
        Self {
            inner: Arc::new(inner),
        }
    }
}

impl std::ops::Deref for AppState {
    type Target = AppInner;

    fn deref(&self) -> &AppInner {
        &self.inner
    }
}

/// The whole API: [`routes`] inside the layers every request goes through.
pub fn router(state: AppState) -> Router {
    let mut routes = routes(&state);
    if let Some(console) = state.console.clone() {
        routes = routes
            .route(
                "/console/tasks/{id}/events",
                get(crate::console::timeline::events),
            )
            .route("/console/workflows", get(crate::console::workflows::page))
            .merge(crate::console::router(console));
    }
    layered(routes, state)
}

/// The API's routes, each with its body limit.
fn routes(state: &AppState) -> Router<AppState> {
    let json_limit = DefaultBodyLimit::max(state.limits.max_body_bytes);
    let upload_limit = DefaultBodyLimit::max(
        state
            .limits
            .max_upload_bytes
            .saturating_add(MULTIPART_OVERHEAD),
    );
    Router::new()
        .route(
            "/v1/tasks",
            post(tasks::enqueue_task)
                .layer(json_limit)
                .get(list::list_tasks),
        )
        .route(
            "/v1/tasks/email",
            post(tasks::enqueue_email).layer(json_limit),
        )
        .route(
            "/v1/tasks/image",
            post(tasks::enqueue_image).layer(json_limit),
        )
        .route("/v1/images", post(upload::upload_image).layer(upload_limit))
        .route("/v1/tasks/{id}", get(status::task_status))
        .route("/v1/tasks/{id}/events", get(status::task_events))
        .route(
            "/v1/workflows",
            post(workflows::start_workflow).layer(json_limit),
        )
        .route(
            "/v1/workflows/{id}",
            get(workflows::status::workflow_status),
        )
        .route(
            "/v1/workflows/{id}/events",
            get(workflows::status::workflow_events),
        )
        .route("/openapi.json", get(openapi_json))
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed)
}

/// The layers every request goes through, outermost last: panics caught
/// and answered 500, a time limit, metrics.
fn layered(routes: Router<AppState>, state: AppState) -> Router {
    let timeout = state.limits.request_timeout;
    let auth = state.auth.clone();
    routes
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(middleware::from_fn_with_state(timeout, limit_time))
        .layer(middleware::from_fn_with_state(auth, crate::auth::authorize))
        .layer(middleware::from_fn(observe))
        .with_state(state)
}

async fn openapi_json() -> Response {
    match crate::openapi::json() {
        Ok(doc) => ([(header::CONTENT_TYPE, "application/json")], doc).into_response(),
        Err(e) => {
            Problem::internal(format!("the OpenAPI document failed to render: {e}")).into_response()
        }
    }
}

async fn no_route(request: Request) -> Problem {
    Problem::no_route(request.uri().path())
}

async fn method_not_allowed(request: Request) -> Problem {
    Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "Method not allowed",
        format!(
            "{} is not served at {}; see /openapi.json",
            request.method(),
            request.uri().path()
        ),
    )
}

/// Counts the request by route pattern and status class.
async fn observe(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = method_label(request.method());
    let started = Instant::now();
    let response = next.run(request).await;
    metrics::request(
        &route,
        method,
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    response
}

fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Bounds a request from its first byte to its response headers. An SSE
/// stream's events come after its headers, so they are not bounded.
async fn limit_time(State(limit): State<Duration>, request: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "timeout",
            "The request took too long",
            format!(
                "the request did not complete within http.request_timeout ({}); \
                 a task being published may or may not have been queued: retry with the same id",
                humantime::format_duration(limit)
            ),
        )
        .into_response(),
    }
}

fn panic_response(payload: Box<dyn Any + Send + 'static>) -> Response {
    let message = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".to_owned());
    tracing::error!(panic = %message, "A request handler panicked; answered 500.");
    Problem::internal("the gateway hit a bug answering this request; it has been logged")
        .into_response()
}

/// The JSON body of a request: 415 unless the content type is JSON, 413
/// over `http.max_body_bytes`, 400 unless it parses.
pub fn json_body(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Value, Problem> {
    require_content_type(headers, is_json, "application/json")?;
    let bytes = body.map_err(body_problem)?;
    serde_json::from_slice(&bytes).map_err(|e| Problem::malformed_json(e.to_string()))
}

/// Checks the `Content-Type` header's media type (parameters ignored).
pub fn require_content_type(
    headers: &HeaderMap,
    accept: impl Fn(&str) -> bool,
    wanted: &str,
) -> Result<(), Problem> {
    let given = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
        });
    match given {
        Some(media) if accept(&media) => Ok(()),
        Some(media) => Err(Problem::unsupported_media_type(format!(
            "the body is {media}; send {wanted}"
        ))),
        None => Err(Problem::unsupported_media_type(format!(
            "the request has no Content-Type; send {wanted}"
        ))),
    }
}

fn is_json(media: &str) -> bool {
    media == "application/json" || (media.starts_with("application/") && media.ends_with("+json"))
}

/// A body that could not be read: 413 when over the limit.
pub fn body_problem(rejection: BytesRejection) -> Problem {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        Problem::too_large(format!(
            "the body is larger than this endpoint's limit ({})",
            rejection.body_text()
        ))
    } else {
        Problem::new(
            StatusCode::BAD_REQUEST,
            "unreadable_body",
            "The request body could not be read",
            rejection.body_text(),
        )
    }
}

#[cfg(test)]
// A failing unwrap is how a test reports failure.
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Duration;

    use axum::body::Body;
    use axum::http::Request as HttpRequest;
    use tower::ServiceExt;
    use warren::contract::Names;
    use warren_tasks::email::EmailAddress;

    use super::*;

    /// The whole API with no broker behind it.
    fn app(store: &std::path::Path) -> (Router, Arc<Tracker>) {
        let (state, tracker) = state(store);
        (router(state), tracker)
    }

    fn state(store: &std::path::Path) -> (AppState, Arc<Tracker>) {
        let settings = warren_store::ImageSettings {
            local_root: store.to_owned(),
            ..Default::default()
        };
        let tracker = Arc::new(Tracker::new(100));
        let state = AppState::new(AppInner {
            broker: Arc::new(Broker::new(Names::new("unit"), "gateway@test/1".into())),
            tracker: tracker.clone(),
            workflows: Arc::new(Workflows::new(100)),
            checks: Checks {
                default_from: EmailAddress::parse("from", "warren@localhost").unwrap(),
                max_attachment_bytes: 1024,
                image: warren_store::policy(&settings).unwrap(),
            },
            store: Store::from_settings(&settings).unwrap(),
            limits: Limits {
                max_body_bytes: 1024,
                max_upload_bytes: 1024,
                request_timeout: Duration::from_secs(5),
                unknown_wait: Duration::from_millis(10),
                keep_alive: Duration::from_secs(15),
                max_list_limit: 10,
                max_workflow_steps: 3,
            },
            uploads: Arc::new(tokio::sync::Semaphore::new(1)),
            shutdown: CancellationToken::new(),
            auth: Arc::new(crate::auth::Auth::open()),
            console: None,
        });
        (state, tracker)
    }

    async fn call(app: &Router, request: HttpRequest<Body>) -> (StatusCode, String, Value) {
        let response = app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
        (status, content_type, json)
    }

    fn post(path: &str, content_type: &str, body: impl Into<Body>) -> HttpRequest<Body> {
        HttpRequest::post(path)
            .header(header::CONTENT_TYPE, content_type)
            .body(body.into())
            .unwrap()
    }

    #[tokio::test]
    async fn an_upload_waits_for_a_turn_before_its_body_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let (state, _) = state(dir.path());
        let uploads = state.uploads.clone();
        let app = router(state);
        let turn = uploads.clone().acquire_owned().await.unwrap();
        let mut body = b"--B\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.png\"\r\nContent-Type: image/png\r\n\r\n".to_vec();
        body.extend_from_slice(b"\x89PNG\r\n\x1a\n0000");
        body.extend_from_slice(b"\r\n--B--\r\n");
        let request = post("/v1/images", "multipart/form-data; boundary=B", body);
        let mut upload = tokio::spawn(async move { call(&app, request).await });
        // The only turn is taken: the upload waits, and reads nothing.
        assert!(
            tokio::time::timeout(Duration::from_millis(300), &mut upload)
                .await
                .is_err(),
            "the upload went ahead without a turn"
        );
        drop(turn);
        // With its turn it reads the file and stores it (the publish after
        // that fails here: there is no broker).
        let (status, _, body) = upload.await.unwrap();
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        let stored = std::fs::read_dir(dir.path().join("uploads"))
            .map(|d| d.count())
            .unwrap_or(0);
        assert_eq!(stored, 1, "the upload was stored once it had a turn");
        assert_eq!(uploads.available_permits(), 1, "the turn is given back");
    }

    #[tokio::test]
    async fn bad_requests_get_problems_and_good_ones_503_without_a_broker() {
        let dir = tempfile::tempdir().unwrap();
        let (app, _) = app(dir.path());
        let json = "application/json";
        for (request, status, slug, field) in [
            (
                post("/v1/tasks/email", json, "{"),
                400,
                "malformed_json",
                None,
            ),
            (
                post("/v1/tasks/email", "text/plain", "{}"),
                415,
                "unsupported_media_type",
                None,
            ),
            (
                post("/v1/tasks/email", json, "x".repeat(2000)),
                413,
                "payload_too_large",
                None,
            ),
            (
                post(
                    "/v1/tasks/email",
                    json,
                    r#"{"to": "a@b.c", "subject": "s", "text": "t", "x": 1}"#,
                ),
                422,
                "unknown_field",
                Some("x"),
            ),
            (
                post(
                    "/v1/tasks/email",
                    json,
                    r#"{"to": "a@", "subject": "s", "text": "t"}"#,
                ),
                422,
                "invalid_address",
                Some("to"),
            ),
            (
                post(
                    "/v1/tasks",
                    json,
                    r#"{"type": "email.send", "payload": {}, "delay": "9years"}"#,
                ),
                422,
                "delay_too_long",
                Some("delay"),
            ),
            (
                post("/v1/images", json, "{}"),
                415,
                "unsupported_media_type",
                None,
            ),
            (
                post(
                    "/v1/tasks/email",
                    json,
                    r#"{"to": "a@b.c", "subject": "s", "text": "t"}"#,
                ),
                503,
                "broker_unavailable",
                None,
            ),
        ] {
            let (code, content_type, body) = call(&app, request).await;
            assert_eq!(code.as_u16(), status, "{body}");
            assert_eq!(content_type, "application/problem+json");
            assert_eq!(body["type"], format!("urn:warren:problem:{slug}"), "{body}");
            assert_eq!(body["field"].as_str(), field, "{body}");
        }
        let (code, _, body) =
            call(&app, HttpRequest::get("/nope").body(Body::empty()).unwrap()).await;
        assert_eq!(
            (code, body["type"].as_str()),
            (StatusCode::NOT_FOUND, Some("urn:warren:problem:not_found"))
        );
        let (code, _, _) = call(
            &app,
            HttpRequest::get("/openapi.json")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(code, StatusCode::OK);
    }

    #[tokio::test]
    async fn an_unknown_task_is_503_until_the_view_caught_up_then_404() {
        let dir = tempfile::tempdir().unwrap();
        let (app, tracker) = app(dir.path());
        let get = || {
            HttpRequest::get("/v1/tasks/t-1")
                .body(Body::empty())
                .unwrap()
        };
        let (code, _, body) = call(&app, get()).await;
        assert_eq!(
            (code, body["type"].as_str()),
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Some("urn:warren:problem:not_ready")
            )
        );
        tracker.mark_caught_up();
        let (code, content_type, body) = call(&app, get()).await;
        assert_eq!(code, StatusCode::NOT_FOUND);
        assert_eq!(content_type, "application/json");
        assert_eq!(
            body,
            serde_json::json!({"task_id": "t-1", "state": "unknown"})
        );
    }

    #[tokio::test]
    async fn the_listing_pages_and_names_a_bad_parameter() {
        let dir = tempfile::tempdir().unwrap();
        let (app, tracker) = app(dir.path());
        tracker.mark_caught_up();
        for i in 1..=3u64 {
            let mut event = warren::events::TaskEvent::new(
                &format!("t{i}"),
                "email.send",
                warren::events::TaskState::DeadLettered,
                1,
            );
            event.at += chrono::Duration::milliseconds(i as i64);
            tracker.apply(warren::events::StreamedEvent { offset: i, event });
        }
        let get = |uri: &str| HttpRequest::get(uri).body(Body::empty()).unwrap();
        let (code, _, body) = call(&app, get("/v1/tasks?state=dead_lettered&limit=2")).await;
        assert_eq!(code, StatusCode::OK, "{body}");
        assert_eq!(body["tasks"][0]["task_id"], "t3");
        assert_eq!(body["tasks"][1]["task_id"], "t2");
        let next = body["next"].as_str().unwrap().to_owned();
        let (_, _, body) = call(&app, get(&next)).await;
        assert_eq!(body["tasks"][0]["task_id"], "t1");
        assert!(body.get("next").is_none(), "{body}");
        for (uri, field) in [
            ("/v1/tasks?limit=11", "limit"),
            ("/v1/tasks?state=lost", "state"),
            ("/v1/tasks?colour=red", "colour"),
        ] {
            let (code, content_type, body) = call(&app, get(uri)).await;
            assert_eq!(code, StatusCode::BAD_REQUEST, "{body}");
            assert_eq!(content_type, "application/problem+json");
            assert_eq!(body["field"], field, "{body}");
        }
    }

    async fn boom() -> &'static str {
        panic!("kaboom in a handler")
    }

    /// `router()` is `layered(routes())`: the real routes with one that
    /// panics beside them, inside the real layers.
    #[tokio::test]
    async fn a_panicking_handler_answers_500_and_the_server_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let (state, _) = state(dir.path());
        let app = layered(routes(&state).route("/boom", get(boom)), state);
        let counted = || {
            metrics::get()
                .requests
                .with_label_values(&[warren::metrics::service(), "/boom", "GET", "5xx"])
                .get()
        };
        let before = counted();
        let (code, content_type, body) =
            call(&app, HttpRequest::get("/boom").body(Body::empty()).unwrap()).await;
        assert_eq!(code, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(content_type, "application/problem+json");
        assert_eq!(body["type"], "urn:warren:problem:internal");
        assert!(
            !body["detail"].as_str().unwrap().contains("kaboom"),
            "the panic message stays in the log: {body}"
        );
        assert_eq!(counted(), before + 1, "the metrics layer saw the 500");
        // The same app goes on answering its real routes.
        let (code, _, doc) = call(
            &app,
            HttpRequest::get("/openapi.json")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(code, StatusCode::OK);
        assert!(doc["paths"]["/v1/tasks/email"].is_object(), "{doc}");
        let (code, _, body) =
            call(&app, HttpRequest::get("/boom").body(Body::empty()).unwrap()).await;
        assert_eq!(code, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    }
}
