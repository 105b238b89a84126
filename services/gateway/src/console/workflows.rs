//! The workflows page, `GET /console/workflows`: the most recently
//! recorded chains, groups and chords this gateway knows (from the records
//! on the events stream, held in memory: cheap to list) with each one's
//! overall state, and, for `?id=...`, one workflow's status as `GET
//! /v1/workflows/{id}` answers it: each step, member, nested group member
//! and callback with its state, attempt and error, and a link to its task
//! timeline (`/console/task?id=...`).

use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Redirect, Response};
use serde::Serialize;

use crate::api::AppState;
use crate::api::workflows::status::{WorkflowStatus, shape_of, status_of};
use crate::workflows::Kind;

/// Workflows listed on the page.
pub const RECENT: usize = 25;

/// One line of the list.
#[derive(Debug, Serialize)]
pub struct Listed {
    pub id: String,
    pub kind: Kind,
    pub size: u32,
    pub recorded_at: Option<String>,
    /// The overall state, or what kept it from being read.
    pub state: Option<String>,
    pub error: Option<String>,
}

/// `GET /console/workflows[?id=...]`.
pub async fn page(
    State(app): State<AppState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let Some(console) = app.console.clone() else {
        return Redirect::to("/console/login").into_response();
    };
    let Some((_, caller, csrf)) = console.session(&headers) else {
        return Redirect::to("/console/login").into_response();
    };
    let id = super::id_param(query.as_deref());
    let mut status: Option<WorkflowStatus> = None;
    let mut error = None;
    if let Some(id) = &id {
        match shape_of(&app, id) {
            Ok(shape) => match status_of(&app, &shape).await {
                Ok(s) => status = Some(s),
                Err(p) => error = Some(p.detail.clone()),
            },
            Err(p) => error = Some(p.detail.clone()),
        }
    }
    let mut recent = Vec::new();
    for shape in app.workflows.recent(RECENT) {
        let (state, error) = match status_of(&app, &shape).await {
            Ok(s) => (serde_json::to_value(s.state).ok(), None),
            Err(p) => (None, Some(p.detail.clone())),
        };
        recent.push(Listed {
            id: shape.id.clone(),
            kind: shape.kind,
            size: shape.size,
            recorded_at: shape
                .recorded_at
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
            state: state.and_then(|v| v.as_str().map(str::to_owned)),
            error,
        });
    }
    console.render(
        "workflows.html",
        minijinja::context! {
            id,
            status,
            error,
            recent,
            known => app.workflows.len(),
            caught_up => app.workflows.is_caught_up(),
            csrf,
            caller => caller.name,
        },
    )
}
