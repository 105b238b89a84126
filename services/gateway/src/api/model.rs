//! The API's request and response bodies, as the OpenAPI document shows
//! them.
//!
//! Task payloads are the contract crate's wire types
//! ([`SendEmail`](warren_tasks::email::SendEmail),
//! [`ThumbnailTask`](warren_tasks::image::ThumbnailTask)), with their
//! schemas derived there and their parsing the workers' own; the types
//! here only wrap them.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use warren::events::{TaskState, TaskStatus};

/// `POST /v1/tasks`: any task type.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "type": "email.send",
    "payload": {"to": "ada@example.com", "subject": "Hello", "text": "Hi from Warren"},
    "priority": 5,
    "delay": "30s",
    "id": "signup-42-welcome"
}))]
pub struct TaskRequest {
    /// The task type, also the routing key: `email.send`,
    /// `image.thumbnail`, ... Its first segment names the worker queue.
    #[serde(rename = "type")]
    pub task_type: String,
    /// The task body. `email.send` and `image.thumbnail` payloads are
    /// checked as their workers check them; others are passed through.
    #[schema(value_type = Object)]
    pub payload: Value,
    /// 0-9; 9 is served first. Default 0.
    #[serde(default)]
    #[schema(minimum = 0, maximum = 9)]
    pub priority: Option<u8>,
    /// Start no sooner than this (`30s`, `3h`, `2days`), of any length up
    /// to about 8.5 years; served by the delay cascade, in whole seconds
    /// (rounded up). Not with `eta`.
    #[serde(default)]
    pub delay: Option<String>,
    /// Start no sooner than this RFC 3339 time
    /// (`2026-12-01T09:00:00+01:00`); a past time runs at once. Not with
    /// `delay`.
    #[serde(default)]
    pub eta: Option<String>,
    /// The task id; default a new UUID v7. 1-128 characters of
    /// `[A-Za-z0-9._~:-]`.
    #[serde(default)]
    pub id: Option<String>,
}

/// The options of the typed endpoints, in the query string.
#[derive(Debug, Clone, Default, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EnqueueParams {
    /// The task id; default a new UUID v7. 1-128 characters of
    /// `[A-Za-z0-9._~:-]`.
    pub id: Option<String>,
    /// 0-9; 9 is served first. Default 0.
    #[param(minimum = 0, maximum = 9)]
    pub priority: Option<u8>,
    /// Start no sooner than this (`30s`, `3h`), as for `POST /v1/tasks`.
    pub delay: Option<String>,
    /// Start no sooner than this RFC 3339 time, as for `POST /v1/tasks`.
    pub eta: Option<String>,
}

/// 202: the broker confirmed the task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({
    "task_id": "0192f0c4-6b0e-7cc1-9d5e-3b8f1f7a2c10",
    "task_type": "email.send",
    "state": "queued",
    "priority": 0,
    "status_url": "/v1/tasks/0192f0c4-6b0e-7cc1-9d5e-3b8f1f7a2c10",
    "events_url": "/v1/tasks/0192f0c4-6b0e-7cc1-9d5e-3b8f1f7a2c10/events"
}))]
pub struct Accepted {
    pub task_id: String,
    pub task_type: String,
    /// `queued`, or `scheduled` for a task with a `delay` or `eta`.
    pub state: State,
    pub priority: u8,
    /// `scheduled`: when the task is due.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub due_at: Option<DateTime<Utc>>,
    /// `GET` it for the task's status.
    pub status_url: String,
    /// `GET` it for the task's events as Server-Sent Events.
    pub events_url: String,
    /// `POST /v1/images` only: where the upload was stored, the task's
    /// `source.key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_key: Option<String>,
}

impl Accepted {
    pub fn new(task_id: &str, task_type: &str, priority: u8) -> Self {
        Self {
            task_id: task_id.to_owned(),
            task_type: task_type.to_owned(),
            state: State::Queued,
            priority,
            due_at: None,
            status_url: format!("/v1/tasks/{task_id}"),
            events_url: format!("/v1/tasks/{task_id}/events"),
            source_key: None,
        }
    }
}

/// Where a task is. `unknown`: never seen, or older than the events
/// stream's retention, or forgotten past `events.max_tracked_tasks`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Unknown,
    /// Only in a workflow's status: a step not published yet (a chain's
    /// later step, a chord's callback before its members are final).
    Pending,
    /// Waiting in the delay cascade until `due_at`.
    Scheduled,
    Queued,
    Running,
    /// Only as an event's state (the SSE event `progress`): how far a
    /// running task is. A status is never `progress`.
    Progress,
    Retrying,
    Succeeded,
    DeadLettered,
}

impl From<TaskState> for State {
    fn from(s: TaskState) -> Self {
        match s {
            TaskState::Scheduled => State::Scheduled,
            TaskState::Queued => State::Queued,
            TaskState::Running => State::Running,
            TaskState::Progress => State::Progress,
            TaskState::Retrying => State::Retrying,
            TaskState::Succeeded => State::Succeeded,
            TaskState::DeadLettered => State::DeadLettered,
        }
    }
}

/// `GET /v1/tasks/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({
    "task_id": "0192f0c4-6b0e-7cc1-9d5e-3b8f1f7a2c10",
    "state": "retrying",
    "task_type": "email.send",
    "attempt": 1,
    "queued_at": "2025-05-01T12:00:00.000Z",
    "started_at": "2025-05-01T12:00:00.020Z",
    "updated_at": "2025-05-01T12:00:00.540Z",
    "next_attempt_at": "2025-05-01T12:00:01.540Z",
    "error_kind": "smtp_transient",
    "error": "the SMTP server answered 451: try again later"
}))]
pub struct StatusBody {
    pub task_id: String,
    pub state: State,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_type: Option<String>,
    /// The attempt of the latest event (1 for the first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queued_at: Option<DateTime<Utc>>,
    /// When the first attempt started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    /// When the latest event happened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<DateTime<Utc>>,
    /// When it succeeded or was dead-lettered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
    /// `retrying`: when the next attempt starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// `scheduled` (a `delay` or `eta`): when the task is due.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub due_at: Option<DateTime<Utc>>,
    /// `retrying` and `dead_lettered`: the last failure's kind
    /// (`x-warren-error-kind`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// `dead_lettered`: `permanent` or `attempts_exhausted`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// `succeeded`: the handler's result (the image worker's outputs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub result: Option<Value>,
    /// `running`: how far the current attempt is, 0.0 to 1.0, as its
    /// handler last reported (`ctx.progress`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<f64>,
    /// `running`: the message of that report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress_message: Option<String>,
}

impl StatusBody {
    /// The answer for a task nobody knows.
    pub fn unknown(task_id: &str) -> Self {
        Self {
            task_id: task_id.to_owned(),
            state: State::Unknown,
            task_type: None,
            attempt: None,
            queued_at: None,
            started_at: None,
            updated_at: None,
            finished_at: None,
            next_attempt_at: None,
            due_at: None,
            error_kind: None,
            error: None,
            reason: None,
            result: None,
            progress: None,
            progress_message: None,
        }
    }
}

impl From<TaskStatus> for StatusBody {
    fn from(s: TaskStatus) -> Self {
        Self {
            task_id: s.task_id,
            state: s.state.into(),
            task_type: Some(s.task_type),
            attempt: Some(s.attempt),
            queued_at: s.queued_at,
            started_at: s.started_at,
            updated_at: Some(s.updated_at),
            finished_at: s.finished_at,
            next_attempt_at: s.next_attempt_at,
            due_at: s.due_at,
            error_kind: s.error_kind,
            error: s.error,
            reason: s.reason,
            result: s.result,
            progress: s.progress,
            progress_message: s.progress_message,
        }
    }
}

/// One task lifecycle event: the `data` of each Server-Sent Event, and the
/// body of each message in the events stream (`warren::events::TaskEvent`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[schema(as = TaskEvent)]
pub struct TaskEventDoc {
    pub task_id: String,
    pub task_type: String,
    /// Never `unknown`.
    pub state: State,
    pub at: DateTime<Utc>,
    /// The attempt this event belongs to (1 for the first).
    pub attempt: u32,
    /// `<service>@<host>/<pid>` of the worker (or gateway) that emitted it.
    pub by: Option<String>,
    /// `retrying`, `dead_lettered`: the failure.
    pub error_kind: Option<String>,
    pub error: Option<String>,
    /// `retrying`: when the next attempt starts.
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// `dead_lettered`: `permanent` or `attempts_exhausted`.
    pub reason: Option<String>,
    /// `succeeded`: the handler's result.
    #[schema(value_type = Option<Object>)]
    pub result: Option<Value>,
    /// `progress`: how far the task is, 0.0 to 1.0.
    pub progress: Option<f64>,
    /// `progress`: what the handler said with it.
    pub message: Option<String>,
}

/// `POST /v1/images`: a `multipart/form-data` body.
#[derive(Debug, ToSchema)]
#[allow(dead_code)] // documents the form; the handler reads the parts one by one
pub struct ImageUpload {
    /// The image: PNG, JPEG, WebP or GIF, recognised by its first bytes
    /// (the file name and the part's content type are not trusted).
    #[schema(value_type = String, format = Binary)]
    pub file: Vec<u8>,
    /// Optional JSON array of thumbnail outputs, as in `image.thumbnail`;
    /// default `[{"width": 256, "height": 256, "fit": "contain", "format":
    /// "jpeg"}]`.
    #[schema(value_type = Option<Vec<warren_tasks::image::OutputWire>>)]
    pub outputs: Option<String>,
}

#[cfg(test)]
// A failing unwrap is how a test reports failure.
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The SSE data schema shows every field a real event serializes.
    #[test]
    fn the_event_schema_matches_the_events_on_the_wire() {
        let mut e = warren::events::TaskEvent::new("t", "email.send", TaskState::DeadLettered, 2);
        e.by = Some("w@h/1".into());
        e.error_kind = Some("k".into());
        e.error = Some("m".into());
        e.next_attempt_at = Some(Utc::now());
        e.reason = Some("permanent".into());
        e.result = Some(json!({"a": 1}));
        e.progress = Some(0.5);
        e.message = Some("half".into());
        let wire = serde_json::to_value(&e).unwrap();
        let doc: TaskEventDoc = serde_json::from_value(wire.clone()).unwrap();
        let back = serde_json::to_value(&doc).unwrap();
        assert_eq!(
            wire.as_object().unwrap().keys().collect::<Vec<_>>(),
            back.as_object().unwrap().keys().collect::<Vec<_>>()
        );
        assert_eq!(back["state"], "dead_lettered");
    }
}
