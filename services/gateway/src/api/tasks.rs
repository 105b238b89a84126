//! The enqueue endpoints: `POST /v1/tasks/email` and `POST
//! /v1/tasks/image` take the workers' own task bodies (options in the
//! query string), `POST /v1/tasks` takes any task type wrapped with its
//! options. Each answers 202 once the broker has confirmed the task.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use warren::Task;
use warren_tasks::email::SendEmail;
use warren_tasks::image::ThumbnailTask;

use super::model::{Accepted, EnqueueParams, TaskRequest};
use super::{AppState, json_body};
use crate::enqueue::{self, Enqueue};
use crate::problem::{self, Problem, ProblemDocument};

/// Enqueue an `email.send` task.
///
/// The body is the email worker's own `email.send` body; the id, priority
/// and delay go in the query string.
#[utoipa::path(
    post,
    path = "/v1/tasks/email",
    tag = "tasks",
    params(EnqueueParams),
    request_body(
        content = SendEmail,
        description = "The `email.send` body, checked as the email worker checks it (addresses, subject, body or template, attachments)."
    ),
    responses(
        (status = 202, description = "The broker confirmed the task.", body = Accepted,
            headers(("Location" = String, description = "The task's status URL."))),
        (status = 400, description = "The body is not JSON.", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 413, description = "The body is over `http.max_body_bytes`.", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 415, description = "The body is not `application/json`.", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 422, description = "A field is unknown, missing, of the wrong type, or would be refused by the email worker (`error_kind` says how).", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 503, description = "The broker did not confirm the task (not connected, no worker queue, nack, timeout).", body = ProblemDocument, content_type = "application/problem+json"),
    )
)]
pub async fn enqueue_email(
    State(app): State<AppState>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Problem> {
    let params = parse_params(query.as_deref())?;
    let payload = json_body(&headers, body)?;
    typed(&app, SendEmail::TYPE, payload, params).await
}

/// Enqueue an `image.thumbnail` task.
///
/// For a source already in the image store (or inline as base64); to
/// upload one, use `POST /v1/images`. The id, priority and delay go in the
/// query string.
#[utoipa::path(
    post,
    path = "/v1/tasks/image",
    tag = "tasks",
    params(EnqueueParams),
    request_body(
        content = ThumbnailTask,
        description = "The `image.thumbnail` body, checked as the image worker checks it (keys, sizes, quality). Whether `source.key` exists is the worker's to find out."
    ),
    responses(
        (status = 202, description = "The broker confirmed the task.", body = Accepted,
            headers(("Location" = String, description = "The task's status URL."))),
        (status = 400, description = "The body is not JSON.", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 413, description = "The body is over `http.max_body_bytes`.", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 415, description = "The body is not `application/json`.", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 422, description = "A field is unknown, missing, of the wrong type, or would be refused by the image worker.", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 503, description = "The broker did not confirm the task.", body = ProblemDocument, content_type = "application/problem+json"),
    )
)]
pub async fn enqueue_image(
    State(app): State<AppState>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Problem> {
    let params = parse_params(query.as_deref())?;
    let payload = json_body(&headers, body)?;
    typed(&app, ThumbnailTask::TYPE, payload, params).await
}

/// Enqueue a task of any type.
///
/// With an optional `delay` or `eta` of any length, served by the delay
/// cascade: the task is `scheduled` until it is due.
#[utoipa::path(
    post,
    path = "/v1/tasks",
    tag = "tasks",
    request_body(
        content = TaskRequest,
        description = "A task of any type. `email.send` and `image.thumbnail` payloads are checked as their workers check them (fields named `payload.<field>`)."
    ),
    responses(
        (status = 202, description = "The broker confirmed the task.", body = Accepted,
            headers(("Location" = String, description = "The task's status URL."))),
        (status = 400, description = "The body is not JSON.", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 413, description = "The body is over `http.max_body_bytes`.", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 415, description = "The body is not `application/json`.", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 422, description = "A field is unknown, missing or invalid (a delay or eta beyond the delay cascade's 8.5 years, both given, a priority over 9, a payload its worker would refuse).", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 503, description = "The broker did not confirm the task: not connected, no queue for the type (no worker has declared it), nack, timeout.", body = ProblemDocument, content_type = "application/problem+json"),
    )
)]
pub async fn enqueue_task(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Problem> {
    let value = json_body(&headers, body)?;
    let request: TaskRequest =
        serde_path_to_error::deserialize(value).map_err(|e| problem::from_serde(e, ""))?;
    enqueue::task_type(&request.task_type, "type")?;
    let id = enqueue::task_id(request.id.as_deref(), "id")?;
    let priority = enqueue::priority(request.priority, "priority")?;
    let due_at = app.checks.due(
        request.delay.as_deref(),
        request.eta.as_deref(),
        chrono::Utc::now(),
    )?;
    app.checks
        .check_payload(&request.task_type, &request.payload, &id, "payload.")?;
    let task = Enqueue {
        task_type: request.task_type,
        payload: request.payload,
        id,
        priority,
        due_at,
    };
    accept(&app, task, None).await
}

/// The typed endpoints: the options, the worker's checks, the publish.
async fn typed(
    app: &AppState,
    task_type: &str,
    payload: serde_json::Value,
    params: EnqueueParams,
) -> Result<Response, Problem> {
    let id = enqueue::task_id(params.id.as_deref(), "id")?;
    let priority = enqueue::priority(params.priority, "priority")?;
    let due_at = app.checks.due(
        params.delay.as_deref(),
        params.eta.as_deref(),
        chrono::Utc::now(),
    )?;
    app.checks.check_payload(task_type, &payload, &id, "")?;
    let task = Enqueue {
        task_type: task_type.to_owned(),
        payload,
        id,
        priority,
        due_at,
    };
    accept(app, task, None).await
}

/// Publishes and answers 202 with the task's URLs.
pub async fn accept(
    app: &AppState,
    task: Enqueue,
    source_key: Option<String>,
) -> Result<Response, Problem> {
    enqueue::publish(&app.broker, &app.tracker, &task).await?;
    let mut accepted = Accepted::new(&task.id, &task.task_type, task.priority);
    if let Some(due) = task.due_at {
        accepted.state = crate::api::model::State::Scheduled;
        accepted.due_at = Some(due);
    }
    accepted.source_key = source_key;
    let location = accepted.status_url.clone();
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, location)],
        axum::Json(accepted),
    )
        .into_response())
}

/// `id`, `priority`, `delay` and `eta` from the query string; anything else is
/// an unknown field.
pub fn parse_params(query: Option<&str>) -> Result<EnqueueParams, Problem> {
    let mut params = EnqueueParams::default();
    for (key, value) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match key.as_ref() {
            "id" => params.id = Some(value.into_owned()),
            "delay" => params.delay = Some(value.into_owned()),
            "eta" => params.eta = Some(value.into_owned()),
            "priority" => {
                let p = value.trim().parse::<u8>().map_err(|_| {
                    Problem::invalid(
                        "invalid_value",
                        "priority",
                        format!("priority {value:?} is not a number 0-9"),
                    )
                })?;
                params.priority = Some(p);
            }
            other => {
                return Err(Problem::invalid(
                    "unknown_field",
                    other,
                    format!(
                        "unknown query parameter {other:?}; expected id, priority, delay or eta"
                    ),
                ));
            }
        }
    }
    Ok(params)
}

#[cfg(test)]
// A failing unwrap is how a test reports failure.
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn query_options_are_parsed_and_unknown_ones_named() {
        let p = parse_params(Some("id=a-1&priority=7&delay=30s")).unwrap();
        assert_eq!(p.id.as_deref(), Some("a-1"));
        assert_eq!(p.priority, Some(7));
        assert_eq!(p.delay.as_deref(), Some("30s"));
        assert!(parse_params(None).unwrap().id.is_none());
        let e = parse_params(Some("priority=high")).unwrap_err();
        assert_eq!((e.status, e.field.as_deref()), (422, Some("priority")));
        let e = parse_params(Some("prio=1")).unwrap_err();
        assert_eq!(
            (e.slug(), e.field.as_deref()),
            ("unknown_field", Some("prio"))
        );
    }
}
