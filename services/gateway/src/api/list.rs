//! `GET /v1/tasks?state=&type=&since=&limit=&cursor=`: recent tasks, newest
//! first, a page at a time, from the status store (the console's and the
//! CLI's view). Every parameter is checked: an unknown parameter, a state
//! that is none of the six, a malformed type or time, or a `limit` above
//! `status.max_list_limit` is a 400 naming it.

use axum::Json;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use warren::events::{ListQuery, TaskState};

use super::AppState;
use super::model::StatusBody;
use super::status::{not_caught_up, store_problem};
use crate::problem::{Problem, ProblemDocument};

/// A page's size when `limit` is not given.
pub const DEFAULT_LIMIT: usize = 100;

/// The filters of `GET /v1/tasks`, all optional.
#[derive(Debug, Default, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // documents the query; the handler reads it by hand to name a bad field
pub struct ListParams {
    /// `scheduled`, `queued`, `running`, `retrying`, `succeeded` or
    /// `dead_lettered`.
    state: Option<String>,
    /// A task type, e.g. `email.send`.
    #[param(rename = "type")]
    r#type: Option<String>,
    /// Only tasks updated at or after this time (RFC 3339).
    since: Option<DateTime<Utc>>,
    /// Tasks per page: 1 to `status.max_list_limit` (1000); default 100.
    limit: Option<usize>,
    /// The `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// One page of tasks.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({
    "tasks": [{
        "task_id": "0192f0c4-6b0e-7cc1-9d5e-3b8f1f7a2c10",
        "state": "dead_lettered",
        "task_type": "email.send",
        "attempt": 1,
        "updated_at": "2025-05-01T12:00:00.540Z",
        "finished_at": "2025-05-01T12:00:00.540Z",
        "error_kind": "invalid_address",
        "error": "to: not an address",
        "reason": "permanent"
    }],
    "next_cursor": "1746100800540123",
    "next": "/v1/tasks?state=dead_lettered&type=email.send&limit=1&cursor=1746100800540123"
}))]
pub struct TaskPage {
    /// Newest first (by last update).
    pub tasks: Vec<StatusBody>,
    /// Pass it as `cursor` for the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
    /// The next page's path, filters included; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// Recent tasks, filtered, a page at a time.
#[utoipa::path(
    get,
    path = "/v1/tasks",
    tag = "tasks",
    params(ListParams),
    responses(
        (status = 200, description = "Tasks newest first (by their last update), at most `limit`; `next` (and `next_cursor`) lead to the next page. A page can hold fewer than `limit` tasks and still have a next one (a filtered scan is bounded per page). On the `redis` store each index keeps `status.max_index_tasks` tasks; on `memory`, the view's tasks.", body = TaskPage),
        (status = 400, description = "An unknown parameter, a state that is none of the six, a malformed type, time or cursor, or a `limit` out of range: `field` names it.", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 503, description = "The status store does not answer, or (`memory`) the gateway is still reading the events stream.", body = ProblemDocument, content_type = "application/problem+json"),
    )
)]
pub async fn list_tasks(
    State(app): State<AppState>,
    RawQuery(raw): RawQuery,
) -> Result<Json<TaskPage>, Problem> {
    let max_limit = app.limits.max_list_limit.max(1);
    let query = parse(raw.as_deref().unwrap_or(""), max_limit)?;
    // On `memory`, a view still reading the stream would list too little.
    not_caught_up(&app)?;
    let max_scan = (query.limit * 10).max(1000);
    let page = app
        .tracker
        .list(&query, max_scan)
        .await
        .map_err(store_problem)?;
    let next_cursor = page.next.map(|n| n.to_string());
    let next = next_cursor.as_ref().map(|cursor| {
        let mut url = url::form_urlencoded::Serializer::new(String::new());
        if let Some(state) = query.state {
            url.append_pair("state", state.as_str());
        }
        if let Some(ty) = &query.task_type {
            url.append_pair("type", ty);
        }
        if let Some(since) = query.since {
            url.append_pair("since", &since.to_rfc3339());
        }
        url.append_pair("limit", &query.limit.to_string());
        url.append_pair("cursor", cursor);
        format!("/v1/tasks?{}", url.finish())
    });
    Ok(Json(TaskPage {
        tasks: page.tasks.into_iter().map(StatusBody::from).collect(),
        next_cursor,
        next,
    }))
}

fn bad(field: &str, slug: &str, detail: String) -> Problem {
    Problem::new(
        StatusCode::BAD_REQUEST,
        slug,
        "A query parameter is not valid",
        detail,
    )
    .with_field(field)
}

/// The query string as a listing query, or a 400 naming the parameter.
pub fn parse(raw: &str, max_limit: usize) -> Result<ListQuery, Problem> {
    let mut query = ListQuery {
        limit: DEFAULT_LIMIT.min(max_limit),
        ..ListQuery::default()
    };
    let mut seen = std::collections::HashSet::new();
    for (key, value) in url::form_urlencoded::parse(raw.as_bytes()) {
        if !seen.insert(key.to_string()) {
            return Err(bad(
                &key,
                "repeated_parameter",
                format!("{key} is given more than once"),
            ));
        }
        match &*key {
            "state" => {
                query.state = Some(
                    TaskState::ALL
                        .into_iter()
                        .find(|s| s.as_str() == value)
                        .ok_or_else(|| {
                            bad(
                                "state",
                                "unknown_state",
                                format!(
                                    "{value:?} is no task state; one of scheduled, queued, running, retrying, succeeded, dead_lettered"
                                ),
                            )
                        })?,
                );
            }
            "type" => {
                let valid = !value.is_empty()
                    && value.len() <= 128
                    && value
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
                if !valid {
                    return Err(bad(
                        "type",
                        "invalid_type",
                        format!(
                            "{value:?} is no task type: 1-128 characters of [A-Za-z0-9._-], e.g. email.send"
                        ),
                    ));
                }
                query.task_type = Some(value.into_owned());
            }
            "since" => {
                let since = DateTime::parse_from_rfc3339(&value).map_err(|e| {
                    bad(
                        "since",
                        "invalid_time",
                        format!("{value:?} is no RFC 3339 time ({e}), e.g. 2025-05-01T12:00:00Z"),
                    )
                })?;
                query.since = Some(since.with_timezone(&Utc));
            }
            "limit" => {
                let limit: usize = value.parse().map_err(|_| {
                    bad(
                        "limit",
                        "invalid_limit",
                        format!("{value:?} is no whole number from 1 to {max_limit}"),
                    )
                })?;
                if limit == 0 || limit > max_limit {
                    return Err(bad(
                        "limit",
                        "limit_out_of_range",
                        format!(
                            "limit must be from 1 to {max_limit} (status.max_list_limit); got {limit}"
                        ),
                    ));
                }
                query.limit = limit;
            }
            "cursor" => {
                query.before = Some(value.parse().map_err(|_| {
                    bad(
                        "cursor",
                        "invalid_cursor",
                        format!("{value:?} is not a cursor; pass a page's next_cursor as it is"),
                    )
                })?);
            }
            other => {
                return Err(bad(
                    other,
                    "unknown_parameter",
                    format!(
                        "{other} is no parameter of GET /v1/tasks; it takes state, type, since, limit and cursor"
                    ),
                ));
            }
        }
    }
    Ok(query)
}

#[cfg(test)]
// A failing unwrap is how a test reports failure.
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn each_bad_parameter_is_named() {
        let q = parse(
            "state=dead_lettered&type=email.send&limit=5&since=2025-05-01T12:00:00Z&cursor=42",
            10,
        )
        .unwrap();
        assert_eq!(q.state, Some(TaskState::DeadLettered));
        assert_eq!(q.task_type.as_deref(), Some("email.send"));
        assert_eq!((q.limit, q.before), (5, Some(42)));
        assert_eq!(parse("", 10).unwrap().limit, 10);
        for (raw, field) in [
            ("state=unknown", "state"),
            ("type=a%20b", "type"),
            ("since=yesterday", "since"),
            ("limit=11", "limit"),
            ("limit=0", "limit"),
            ("cursor=x", "cursor"),
            ("stat=queued", "stat"),
            ("limit=1&limit=2", "limit"),
        ] {
            let problem = parse(raw, 10).unwrap_err();
            assert_eq!(problem.field.as_deref(), Some(field), "{raw}");
        }
    }
}
