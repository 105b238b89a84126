//! "What happened to task X?": `GET /v1/tasks/{id}` answers from the
//! status view, and `GET /v1/tasks/{id}/events` streams the task's events
//! as Server-Sent Events: first those already seen, then live ones, until
//! a final state (`succeeded`, `dead_lettered`).
//!
//! The live feed is subscribed to before the stored events are read, and
//! events are told apart by their stream offset, so none is lost or sent
//! twice between the two. A subscriber that falls behind the live buffer
//! catches up from the view.

use std::collections::{HashSet, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use tokio::sync::broadcast::{self, error::RecvError};
use tokio_util::sync::CancellationToken;
use warren::events::{StreamedEvent, TaskState};

use super::AppState;
use super::model::StatusBody;
use crate::metrics;
use crate::problem::{Problem, ProblemDocument};
use crate::status::Tracker;
use warren::events::{StatusStoreError as StoreError, result_ref};

/// The status of a task.
#[utoipa::path(
    get,
    path = "/v1/tasks/{id}",
    tag = "tasks",
    params(("id" = String, Path, description = "The task id.")),
    responses(
        (status = 200, description = "The task's status: queued, running, retrying (attempt, next try), succeeded (result) or dead_lettered (reason), with timestamps.", body = StatusBody),
        (status = 404, description = "Unknown: never seen, older than the events stream's retention, or forgotten past `events.max_tracked_tasks`.", body = StatusBody,
            example = json!({"task_id": "0192f0c4-6b0e-7cc1-9d5e-3b8f1f7a2c10", "state": "unknown"})),
        (status = 503, description = "The task is not known yet and the gateway is still reading the events stream (just started).", body = ProblemDocument, content_type = "application/problem+json"),
    )
)]
pub async fn task_status(
    State(app): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, Problem> {
    let Path(id) = id.map_err(path_problem)?;
    let Some(mut status) = app.tracker.status(&id).await.map_err(store_problem)? else {
        not_caught_up(&app)?;
        return Ok((StatusCode::NOT_FOUND, Json(StatusBody::unknown(&id))).into_response());
    };
    // A result the `redis` store keeps by reference: read from its event
    // in the stream, so clients see it as ever.
    if let Some(offset) = status.result.as_ref().and_then(result_ref)
        && let Some(result) = app.broker.result_at(offset, &id).await
    {
        status.result = Some(result);
    }
    Ok(Json(StatusBody::from(status)).into_response())
}

/// The status store failed (Redis does not answer): 503.
pub fn store_problem(e: StoreError) -> Problem {
    tracing::warn!(error = %e, "The status store failed a request.");
    Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "status_store_unavailable",
        "The status store does not answer",
        "the status store (redis) did not answer; ask again shortly",
    )
}

/// The task's stored events for an open SSE stream; none when the store
/// fails (the live ones still come).
async fn stored_events(tracker: &Tracker, id: &str) -> Vec<StreamedEvent> {
    tracker.events(id).await.unwrap_or_else(|e| {
        tracing::warn!(error = %e, "The status store failed an SSE stream's read.");
        Vec::new()
    })
}

/// Until the view has read the stream, "unknown" may be wrong: 503.
pub(crate) fn not_caught_up(app: &AppState) -> Result<(), Problem> {
    if app.tracker.is_caught_up() {
        return Ok(());
    }
    Err(Problem::unavailable(
        "not_ready",
        "the gateway is still reading the task events stream; ask again shortly",
    ))
}

/// The lifecycle events of a task, as Server-Sent Events.
#[utoipa::path(
    get,
    path = "/v1/tasks/{id}/events",
    tag = "tasks",
    params(
        ("id" = String, Path, description = "The task id."),
        ("Last-Event-ID" = Option<u64>, Header, description = "Resume after this event (the `id` of the last event received)."),
    ),
    responses(
        (status = 200, description = "Server-Sent Events, one per lifecycle event, in order: `event` is the state, `id` the event's offset in the events stream, `data` the event as JSON (schema `TaskEvent`). Already-seen events come first, then live ones; the stream ends after `succeeded` or `dead_lettered`. Idle streams get a keep-alive comment every `events.keep_alive`.",
            content_type = "text/event-stream", body = String),
        (status = 404, description = "The task is unknown and no event of it arrived within `events.unknown_wait` (5 s).", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 503, description = "The task is not known yet and the gateway is still reading the events stream.", body = ProblemDocument, content_type = "application/problem+json"),
    )
)]
pub async fn task_events(
    State(app): State<AppState>,
    id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let Path(id) = id.map_err(path_problem)?;
    // Subscribe first: whatever is applied after this shows up live.
    let mut rx = app.tracker.subscribe();
    let mut stored = app.tracker.events(&id).await.map_err(store_problem)?;
    if stored.is_empty() && !app.tracker.knows(&id).await.map_err(store_problem)? {
        not_caught_up(&app)?;
        stored = wait_for_first(
            &app.tracker,
            &mut rx,
            &id,
            app.limits.unknown_wait,
            &app.shutdown,
        )
        .await
        .ok_or_else(|| {
            Problem::new(
                StatusCode::NOT_FOUND,
                "unknown_task",
                "Unknown task",
                format!(
                    "no event of task {id} has been seen, and none arrived within {}",
                    humantime::format_duration(app.limits.unknown_wait)
                ),
            )
            .with_task_id(id.clone())
        })?;
    }
    let resume_after = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let mut feed = Feed {
        id,
        queue: VecDeque::new(),
        sent: HashSet::new(),
        last_at: None,
        rx,
        tracker: app.tracker.clone(),
        shutdown: app.shutdown.clone(),
        done: false,
        _open: OpenStream::new(),
    };
    feed.start(stored, resume_after);
    let stream = futures::stream::unfold(feed, Feed::next);
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(app.limits.keep_alive))
        .into_response())
}

/// Waits for the first event of an unknown task; its stored events then.
async fn wait_for_first(
    tracker: &Tracker,
    rx: &mut broadcast::Receiver<StreamedEvent>,
    id: &str,
    wait: std::time::Duration,
    shutdown: &CancellationToken,
) -> Option<Vec<StreamedEvent>> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let next = tokio::select! {
            _ = shutdown.cancelled() => return None,
            next = tokio::time::timeout_at(deadline, rx.recv()) => next.ok()?,
        };
        match next {
            Ok(event) if event.event.task_id == id => {
                let stored = stored_events(tracker, id).await;
                return Some(if stored.is_empty() {
                    vec![event]
                } else {
                    stored
                });
            }
            Ok(_) => {}
            Err(RecvError::Lagged(_)) => {
                let stored = stored_events(tracker, id).await;
                if !stored.is_empty() {
                    return Some(stored);
                }
            }
            Err(RecvError::Closed) => return None,
        }
    }
}

/// One SSE subscriber's state.
struct Feed {
    id: String,
    /// Events to send, in order.
    queue: VecDeque<StreamedEvent>,
    /// Offsets already sent (or skipped): a task has at most a few dozen.
    sent: HashSet<u64>,
    /// The newest event time sent.
    last_at: Option<DateTime<Utc>>,
    rx: broadcast::Receiver<StreamedEvent>,
    tracker: Arc<Tracker>,
    shutdown: CancellationToken,
    done: bool,
    _open: OpenStream,
}

impl Feed {
    /// Queues the stored events, without those up to `Last-Event-ID`.
    fn start(&mut self, stored: Vec<StreamedEvent>, resume_after: Option<u64>) {
        let skip = match resume_after {
            None => 0,
            // Stored events are in lifecycle order, which is not always
            // offset order (a late `queued` comes first): resume after
            // the event with that id when there is one.
            Some(id) => match stored.iter().position(|e| e.offset == id) {
                Some(i) => i + 1,
                None => stored.iter().take_while(|e| e.offset <= id).count(),
            },
        };
        for (i, streamed) in stored.into_iter().enumerate() {
            if i < skip {
                self.mark_sent(&streamed);
            } else {
                self.queue.push_back(streamed);
            }
        }
    }

    fn mark_sent(&mut self, streamed: &StreamedEvent) {
        self.sent.insert(streamed.offset);
        self.last_at = self.last_at.max(Some(streamed.event.at));
    }

    async fn next(mut self) -> Option<(Result<Event, Infallible>, Self)> {
        loop {
            if self.done {
                return None;
            }
            while let Some(streamed) = self.queue.pop_front() {
                if self.sent.contains(&streamed.offset) {
                    continue;
                }
                // A `queued` event that reached the stream after later
                // events of its task, which this client already has:
                // sending it now would put it out of order.
                let late = streamed.event.state == TaskState::Queued
                    && self.last_at.is_some_and(|at| streamed.event.at < at);
                self.mark_sent(&streamed);
                if late {
                    continue;
                }
                self.done = streamed.event.state.is_final();
                return Some((Ok(sse_event(&streamed)), self));
            }
            tokio::select! {
                _ = self.shutdown.cancelled() => return None,
                next = self.rx.recv() => match next {
                    Ok(streamed) => {
                        if streamed.event.task_id == self.id {
                            self.queue.push_back(streamed);
                        }
                    }
                    // Fell behind the live buffer: the view has them all.
                    Err(RecvError::Lagged(_)) => {
                        let stored = stored_events(&self.tracker, &self.id).await;
                        self.queue.extend(stored);
                    }
                    Err(RecvError::Closed) => return None,
                },
            }
        }
    }
}

pub(crate) fn sse_event(streamed: &StreamedEvent) -> Event {
    let event = Event::default()
        .event(streamed.event.state.as_str())
        .id(streamed.offset.to_string());
    match serde_json::to_string(&streamed.event) {
        Ok(json) => event.data(json),
        Err(_) => event.comment("an event that could not be serialized"),
    }
}

/// Counts open SSE streams while alive.
pub(crate) struct OpenStream;

impl OpenStream {
    pub(crate) fn new() -> Self {
        metrics::get().sse_streams.inc();
        Self
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        metrics::get().sse_streams.dec();
    }
}

pub(crate) fn path_problem(rejection: PathRejection) -> Problem {
    Problem::new(
        StatusCode::BAD_REQUEST,
        "invalid_path",
        "The path is not valid",
        rejection.body_text(),
    )
    .with_field("id")
}
