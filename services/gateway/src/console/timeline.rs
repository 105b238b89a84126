//! The task lookup page, `GET /console/task?id=...`, and its live
//! timeline: `console.js` (a static file, as the Content-Security-Policy
//! allows no inline script) opens an `EventSource` on
//! `GET /console/tasks/{id}/events`, which is `GET /v1/tasks/{id}/events`
//! (the same stream, stored events then live ones) authorised by the
//! console's session cookie instead of a bearer key, since a browser's
//! `EventSource` cannot send one. The script writes each event as text
//! (`textContent`), never as HTML.

use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Redirect, Response};

use super::{Console, secure};
use crate::api::AppState;

const JS: &str = include_str!("console.js");

/// `GET /console/task?id=...`: the lookup form, and the task's timeline.
pub async fn page(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let Some((_, caller, csrf)) = console.session(&headers) else {
        return Redirect::to("/console/login").into_response();
    };
    let id = super::id_param(query.as_deref());
    let events = id.as_deref().map(|id| {
        format!(
            "/console/tasks/{}/events",
            url::form_urlencoded::byte_serialize(id.as_bytes()).collect::<String>()
        )
    });
    console.render(
        "task.html",
        minijinja::context! { id, events, csrf, caller => caller.name },
    )
}

/// `GET /console/console.js`.
pub async fn script() -> Response {
    let mut response = JS.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/javascript; charset=utf-8"),
    );
    secure(response.headers_mut());
    response
}

/// `GET /console/tasks/{id}/events`: the task's events as Server-Sent
/// Events, for a console session.
pub async fn events(
    State(app): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let signed_in = app
        .console
        .as_ref()
        .is_some_and(|c| c.session(&headers).is_some());
    if !signed_in {
        return super::no_session();
    }
    match crate::api::status::task_events(State(app), Ok(Path(id)), headers).await {
        Ok(r) => r,
        Err(p) => p.into_response(),
    }
}
