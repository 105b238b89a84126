//! `GET /v1/workflows/{id}` and `GET /v1/workflows/{id}/events`: a
//! workflow's shape (from its record, [`crate::workflows`]) filled in with
//! each task's status from the status store, and the overall state.
//!
//! Overall state: `queued` (no task started yet), `running`, `succeeded`
//! (every step of a chain, every member of a group, a chord's callback
//! succeeded) or `failed` (a chain step parked, the chain stopped there;
//! a group whose members are all final, one or more dead-lettered; a
//! chord's callback dead-lettered or parked by `on_failure = skip`). A
//! parked chain step replayed is queued again, and so is its chain.

use std::collections::{HashMap, HashSet, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;
use warren::events::{StreamedEvent, TaskState, result_ref};
use warren::workflow::OnFailure;

use crate::api::AppState;
use crate::api::model::{State as TaskStateDoc, StatusBody};
use crate::api::status::{OpenStream, not_caught_up, path_problem, sse_event, store_problem};
use crate::problem::{Problem, ProblemDocument};
use crate::status::Tracker;
use crate::workflows::{Kind, Shape};

/// A workflow's overall state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WorkflowState {
    /// No task of it has started yet.
    Queued,
    /// Some task has started; it is not over.
    Running,
    /// Every step of a chain, every member of a group, or a chord's
    /// callback succeeded.
    Succeeded,
    /// A chain step was dead-lettered (the chain stops there until it is
    /// replayed); a group's members are all final and one or more was
    /// dead-lettered; a chord's callback was dead-lettered (or parked by
    /// `on_failure = skip`).
    Failed,
}

impl WorkflowState {
    pub fn is_final(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed)
    }
}

/// One task of a workflow: its number (steps and members, from 1) and its
/// status as `GET /v1/tasks/{id}` gives it; `pending` when it has not been
/// published yet (a later chain step, a chord's callback).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct WorkflowTask {
    /// The step's or member's number, from 1; none for a callback.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub n: Option<u32>,
    #[serde(flatten)]
    pub status: StatusBody,
    /// A group nested in a chain: `group` (its `task_id` is the group's
    /// id, `{chain}.{n}`, and its `state` the group's: `succeeded` once
    /// every member is final, `dead_lettered` if one was and the chain
    /// stops there).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<Kind>,
    /// A nested group's policy for the step after it: `skip` or `run`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_failure: Option<String>,
    /// A nested group's members, in order (`{chain}.{n}.{m}`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub members: Option<Vec<WorkflowMember>>,
}

/// A member of a group nested in a chain.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct WorkflowMember {
    /// The member's number, from 1.
    pub n: u32,
    #[serde(flatten)]
    pub status: StatusBody,
}

/// `GET /v1/workflows/{id}`.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(example = json!({
    "workflow_id": "order-1",
    "kind": "chain",
    "state": "running",
    "size": 3,
    "steps": [
        {"n": 1, "task_id": "order-1.1", "state": "succeeded", "task_type": "pipeline.validate", "attempt": 1,
         "queued_at": "2026-05-01T12:00:00.000Z", "started_at": "2026-05-01T12:00:00.010Z",
         "finished_at": "2026-05-01T12:00:00.020Z", "result": {"id": "r1", "value": 7}},
        {"n": 2, "task_id": "order-1.2", "state": "running", "task_type": "pipeline.process", "attempt": 1},
        {"n": 3, "task_id": "order-1.3", "state": "pending", "task_type": "pipeline.save"}
    ]
}))]
pub struct WorkflowStatus {
    pub workflow_id: String,
    pub kind: Kind,
    pub state: WorkflowState,
    /// How many steps or members.
    pub size: u32,
    /// A chord's policy: `run` or `skip`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_failure: Option<String>,
    /// When its record was written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recorded_at: Option<DateTime<Utc>>,
    /// A chain's steps, in order.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steps: Option<Vec<WorkflowTask>>,
    /// A group's or chord's members, in order.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub members: Option<Vec<WorkflowTask>>,
    /// A chord's callback.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub callback: Option<WorkflowTask>,
    /// The steps after a chord's callback, when its callback is a chain
    /// (`n` from 2: `{id}.callback.{n}`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub then: Option<Vec<WorkflowTask>>,
    /// The ids of its dead-lettered tasks, in order.
    pub failed: Vec<String>,
}

/// The overall state from the states of the steps or members (in order)
/// and a chord's callback.
pub fn overall(
    kind: Kind,
    steps: &[TaskStateDoc],
    callback: Option<TaskStateDoc>,
) -> WorkflowState {
    use TaskStateDoc as S;
    let started = |s: &S| !matches!(s, S::Pending | S::Unknown | S::Queued | S::Scheduled);
    let any_started = steps.iter().any(started) || callback.as_ref().is_some_and(started);
    let going = if any_started {
        WorkflowState::Running
    } else {
        WorkflowState::Queued
    };
    match kind {
        Kind::Chain => {
            if steps.contains(&S::DeadLettered) {
                WorkflowState::Failed
            } else if steps.iter().all(|s| *s == S::Succeeded) {
                // Every step, not only the last: a step's `succeeded`
                // event follows the next step's publish, and may come
                // after the last step's.
                WorkflowState::Succeeded
            } else {
                going
            }
        }
        Kind::Group => {
            if steps
                .iter()
                .all(|s| matches!(s, S::Succeeded | S::DeadLettered))
            {
                if steps.contains(&S::DeadLettered) {
                    WorkflowState::Failed
                } else {
                    WorkflowState::Succeeded
                }
            } else {
                going
            }
        }
        Kind::Chord => match callback {
            Some(S::Succeeded) => WorkflowState::Succeeded,
            Some(S::DeadLettered) => WorkflowState::Failed,
            _ => going,
        },
    }
}

/// A group nested in a chain, from its members' states: `succeeded` once
/// every member is final (`dead_lettered` instead when one was and
/// `strict`: its policy is `skip`, or it ends the chain), else `running`
/// once one started, else `queued` or `pending`.
pub fn group_state(members: &[TaskStateDoc], strict: bool) -> TaskStateDoc {
    use TaskStateDoc as S;
    if members
        .iter()
        .all(|s| matches!(s, S::Succeeded | S::DeadLettered))
    {
        if strict && members.contains(&S::DeadLettered) {
            S::DeadLettered
        } else {
            S::Succeeded
        }
    } else if members
        .iter()
        .any(|s| !matches!(s, S::Pending | S::Unknown | S::Queued | S::Scheduled))
    {
        S::Running
    } else if members
        .iter()
        .any(|s| matches!(s, S::Queued | S::Scheduled))
    {
        S::Queued
    } else {
        S::Pending
    }
}

/// A chord's callback and the steps after it, as one state for
/// [`overall`]: `dead_lettered` if one was, `succeeded` if all were, else
/// the callback's (`running` once a later step started).
fn callback_chain_state(chain: &[TaskStateDoc]) -> TaskStateDoc {
    use TaskStateDoc as S;
    if chain.contains(&S::DeadLettered) {
        S::DeadLettered
    } else if chain.iter().all(|s| *s == S::Succeeded) {
        S::Succeeded
    } else if chain.iter().skip(1).any(|s| *s != S::Pending) {
        S::Running
    } else {
        chain.first().copied().unwrap_or(S::Pending)
    }
}

/// The overall state of a workflow of `shape`, its tasks' states looked
/// up by id with `of`.
pub fn overall_of(shape: &Shape, of: impl Fn(&str) -> TaskStateDoc) -> WorkflowState {
    let steps: Vec<TaskStateDoc> = (1..=shape.size)
        .map(|n| match shape.groups.get(&n) {
            Some((types, policy)) => {
                let members: Vec<TaskStateDoc> = (1..=types.len() as u32)
                    .map(|m| of(&shape.member_id(n, m)))
                    .collect();
                group_state(&members, *policy == OnFailure::Skip || n == shape.size)
            }
            None => of(&shape.task_id(n)),
        })
        .collect();
    let callback = shape.callback_id().map(|id| {
        let mut chain = vec![of(&id)];
        chain.extend((2..=shape.after.len() as u32 + 1).map(|k| of(&shape.after_id(k))));
        callback_chain_state(&chain)
    });
    overall(shape.kind, &steps, callback)
}

/// The shape of a known workflow; 503 while the gateway is still reading
/// the stream, else 404.
pub(crate) fn shape_of(app: &AppState, id: &str) -> Result<Shape, Problem> {
    if let Some(shape) = app.workflows.get(id) {
        return Ok(shape);
    }
    if !app.workflows.is_caught_up() {
        return Err(Problem::unavailable(
            "not_ready",
            "the gateway is still reading the workflow records of the events stream; ask again shortly",
        ));
    }
    not_caught_up(app)?;
    Err(unknown_workflow(id))
}

fn unknown_workflow(id: &str) -> Problem {
    Problem::new(
        StatusCode::NOT_FOUND,
        "unknown_workflow",
        "Unknown workflow",
        format!(
            "no record of workflow {id} is in the events stream: never started, started without its \
             record (see docs/workflows.md), or older than events.retention"
        ),
    )
    .with_task_id(id.to_owned())
}

/// One task's status body, its result read from the stream when the
/// store keeps it by reference; `pending` (with the type the record
/// names) when unknown.
async fn task(
    app: &AppState,
    id: &str,
    n: Option<u32>,
    expected_type: Option<&str>,
) -> Result<WorkflowTask, Problem> {
    let status = app.tracker.status(id).await.map_err(store_problem)?;
    let status = match status {
        Some(mut status) => {
            if let Some(offset) = status.result.as_ref().and_then(result_ref)
                && let Some(result) = app.broker.result_at(offset, id).await
            {
                status.result = Some(result);
            }
            StatusBody::from(status)
        }
        None => {
            let mut body = StatusBody::unknown(id);
            body.state = TaskStateDoc::Pending;
            body.task_type = expected_type.map(str::to_owned);
            body
        }
    };
    Ok(WorkflowTask {
        n,
        status,
        kind: None,
        on_failure: None,
        members: None,
    })
}

fn policy_name(p: OnFailure) -> String {
    match p {
        OnFailure::Run => "run",
        OnFailure::Skip => "skip",
    }
    .to_owned()
}

/// The workflow's status, every task looked up.
pub async fn status_of(app: &AppState, shape: &Shape) -> Result<WorkflowStatus, Problem> {
    let mut tasks = Vec::with_capacity(shape.size as usize);
    let mut states: HashMap<String, TaskStateDoc> = HashMap::new();
    let mut failed = Vec::new();
    let mut note = |t: &StatusBody| {
        states.insert(t.task_id.clone(), t.state);
        if t.state == TaskStateDoc::DeadLettered {
            failed.push(t.task_id.clone());
        }
    };
    for n in 1..=shape.size {
        if let Some((types, policy)) = shape.groups.get(&n) {
            let mut members = Vec::with_capacity(types.len());
            for (m, ty) in (1..).zip(types) {
                let t = task(app, &shape.member_id(n, m), Some(m), Some(ty)).await?;
                note(&t.status);
                members.push(WorkflowMember {
                    n: m,
                    status: t.status,
                });
            }
            let member_states: Vec<TaskStateDoc> = members.iter().map(|m| m.status.state).collect();
            let mut status = StatusBody::unknown(&shape.task_id(n));
            status.state = group_state(
                &member_states,
                *policy == OnFailure::Skip || n == shape.size,
            );
            tasks.push(WorkflowTask {
                n: Some(n),
                status,
                kind: Some(Kind::Group),
                on_failure: Some(policy_name(*policy)),
                members: Some(members),
            });
            continue;
        }
        let expected = shape.types.get(n as usize - 1).map(String::as_str);
        let t = task(app, &shape.task_id(n), Some(n), expected).await?;
        note(&t.status);
        tasks.push(t);
    }
    let callback = match (&shape.callback_id(), &shape.callback) {
        (Some(id), Some((ty, _))) => {
            let t = task(app, id, None, Some(ty)).await?;
            note(&t.status);
            Some(t)
        }
        _ => None,
    };
    let mut then = Vec::with_capacity(shape.after.len());
    for (k, ty) in (2..).zip(&shape.after) {
        let t = task(app, &shape.after_id(k), Some(k), Some(ty)).await?;
        note(&t.status);
        then.push(t);
    }
    let state = overall_of(shape, |id| {
        states.get(id).copied().unwrap_or(TaskStateDoc::Pending)
    });
    let (steps, members) = match shape.kind {
        Kind::Chain => (Some(tasks), None),
        Kind::Group | Kind::Chord => (None, Some(tasks)),
    };
    Ok(WorkflowStatus {
        workflow_id: shape.id.clone(),
        kind: shape.kind,
        state,
        size: shape.size,
        on_failure: shape.callback.as_ref().map(|(_, p)| policy_name(*p)),
        recorded_at: shape.recorded_at,
        steps,
        members,
        callback,
        then: (!then.is_empty()).then_some(then),
        failed,
    })
}

/// A workflow's status, with each step's.
#[utoipa::path(
    get,
    path = "/v1/workflows/{id}",
    tag = "workflows",
    params(("id" = String, Path, description = "The workflow id.")),
    responses(
        (status = 200, description = "The workflow's kind and overall state (queued, running, succeeded, failed), and each step, member and callback with its state (`pending` until published), attempt, result or error, and timing (queued_at, started_at, finished_at).", body = WorkflowStatus),
        (status = 404, description = "No record of the workflow in the events stream.", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 503, description = "The gateway is still reading the events stream, or the status store does not answer.", body = ProblemDocument, content_type = "application/problem+json"),
    )
)]
pub async fn workflow_status(
    State(app): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, Problem> {
    let Path(id) = id.map_err(path_problem)?;
    let shape = shape_of(&app, &id)?;
    Ok(Json(status_of(&app, &shape).await?).into_response())
}

/// The state changes of every task of a workflow, as Server-Sent Events.
#[utoipa::path(
    get,
    path = "/v1/workflows/{id}/events",
    tag = "workflows",
    params(("id" = String, Path, description = "The workflow id.")),
    responses(
        (status = 200, description = "Server-Sent Events: every lifecycle event of the workflow's tasks (`event` the state, `id` the event's offset, `data` the `TaskEvent`, whose `task_id` names the step), those already seen first, then live ones; once the workflow is final, one `workflow` event whose `data` is its status (as `GET /v1/workflows/{id}`), and the stream ends.",
            content_type = "text/event-stream", body = String),
        (status = 404, description = "No record of the workflow appeared within `events.unknown_wait`.", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 503, description = "The gateway is still reading the events stream.", body = ProblemDocument, content_type = "application/problem+json"),
    )
)]
pub async fn workflow_events(
    State(app): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, Problem> {
    let Path(id) = id.map_err(path_problem)?;
    let rx = app.tracker.subscribe();
    let shape = match shape_of(&app, &id) {
        Ok(shape) => shape,
        Err(p) if p.status == 404 => wait_for_shape(&app, &id).await.ok_or(p)?,
        Err(p) => return Err(p),
    };
    let mut feed = WorkflowFeed {
        app: app.clone(),
        shape,
        queue: VecDeque::new(),
        sent: HashSet::new(),
        latest: HashMap::new(),
        rx,
        shutdown: app.shutdown.clone(),
        done: false,
        _open: OpenStream::new(),
    };
    let stored = feed.stored().await;
    feed.queue.extend(stored);
    let stream = futures::stream::unfold(feed, WorkflowFeed::next);
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(app.limits.keep_alive))
        .into_response())
}

/// A record written by another producer may reach this gateway a moment
/// after the client asks: look again until `events.unknown_wait`.
async fn wait_for_shape(app: &AppState, id: &str) -> Option<Shape> {
    let deadline = tokio::time::Instant::now() + app.limits.unknown_wait;
    while tokio::time::Instant::now() < deadline {
        tokio::select! {
            _ = app.shutdown.cancelled() => return None,
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
        if let Some(shape) = app.workflows.get(id) {
            return Some(shape);
        }
    }
    None
}

/// One SSE subscriber of a workflow.
struct WorkflowFeed {
    app: AppState,
    shape: Shape,
    queue: VecDeque<StreamedEvent>,
    sent: HashSet<u64>,
    /// Each task's newest event time and state sent.
    latest: HashMap<String, (DateTime<Utc>, TaskState)>,
    rx: tokio::sync::broadcast::Receiver<StreamedEvent>,
    shutdown: CancellationToken,
    done: bool,
    _open: OpenStream,
}

impl WorkflowFeed {
    /// Every task's stored events, oldest first.
    async fn stored(&self) -> Vec<StreamedEvent> {
        let tracker: &Arc<Tracker> = &self.app.tracker;
        let ids = self.shape.task_ids();
        let mut all = Vec::new();
        for id in ids {
            match tracker.events(&id).await {
                Ok(events) => all.extend(events),
                Err(e) => {
                    tracing::warn!(error = %e, "The status store failed a workflow SSE stream's read.");
                }
            }
        }
        all.sort_by_key(|e| (e.event.at, e.offset));
        all
    }

    /// The overall state from the events sent so far.
    fn state(&self) -> WorkflowState {
        let of = |id: &str| {
            self.latest
                .get(id)
                .map_or(TaskStateDoc::Pending, |(_, s)| TaskStateDoc::from(*s))
        };
        overall_of(&self.shape, of)
    }

    async fn next(mut self) -> Option<(Result<Event, Infallible>, Self)> {
        loop {
            if self.done {
                return None;
            }
            while let Some(streamed) = self.queue.pop_front() {
                if !self.sent.insert(streamed.offset) {
                    continue;
                }
                let e = &streamed.event;
                // A `queued` that reached the stream after later events of
                // its task: out of order now, and says nothing new.
                let newest = self.latest.get(&e.task_id).map(|(at, _)| *at);
                if e.state == TaskState::Queued && newest.is_some_and(|at| e.at < at) {
                    continue;
                }
                if e.state != TaskState::Progress && newest.is_none_or(|at| e.at >= at) {
                    self.latest.insert(e.task_id.clone(), (e.at, e.state));
                }
                return Some((Ok(sse_event(&streamed)), self));
            }
            // Final, and every task seen so far at its end: a step's own
            // final event may reach the stream after its successor's.
            let settled = self
                .latest
                .values()
                .all(|(_, s)| matches!(s, TaskState::Succeeded | TaskState::DeadLettered));
            if settled && self.state().is_final() {
                self.done = true;
                let event = match status_of(&self.app, &self.shape).await {
                    Ok(status) => Event::default()
                        .event("workflow")
                        .json_data(&status)
                        .unwrap_or_else(|_| Event::default().comment("unserializable")),
                    Err(_) => Event::default().event("workflow").data("{}"),
                };
                return Some((Ok(event), self));
            }
            tokio::select! {
                _ = self.shutdown.cancelled() => return None,
                next = self.rx.recv() => match next {
                    Ok(streamed) => {
                        if self.shape.owns(&streamed.event.task_id) {
                            self.queue.push_back(streamed);
                        }
                    }
                    Err(RecvError::Lagged(_)) => {
                        let stored = self.stored().await;
                        self.queue.extend(stored);
                    }
                    Err(RecvError::Closed) => return None,
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use TaskStateDoc as S;

    #[test]
    fn the_overall_state_follows_the_documented_rules() {
        assert_eq!(
            overall(Kind::Chain, &[S::Queued, S::Pending], None),
            WorkflowState::Queued
        );
        assert_eq!(
            overall(Kind::Chain, &[S::Succeeded, S::Running], None),
            WorkflowState::Running
        );
        assert_eq!(
            overall(
                Kind::Chain,
                &[S::Succeeded, S::DeadLettered, S::Pending],
                None
            ),
            WorkflowState::Failed
        );
        assert_eq!(
            overall(Kind::Chain, &[S::Succeeded, S::Succeeded], None),
            WorkflowState::Succeeded
        );
        assert_eq!(
            overall(Kind::Group, &[S::Succeeded, S::Retrying], None),
            WorkflowState::Running
        );
        assert_eq!(
            overall(Kind::Group, &[S::Succeeded, S::DeadLettered], None),
            WorkflowState::Failed
        );
        assert_eq!(
            overall(Kind::Group, &[S::Succeeded, S::Succeeded], None),
            WorkflowState::Succeeded
        );
        assert_eq!(
            overall(
                Kind::Chord,
                &[S::Succeeded, S::DeadLettered],
                Some(S::Pending)
            ),
            WorkflowState::Running
        );
        assert_eq!(
            overall(
                Kind::Chord,
                &[S::Succeeded, S::DeadLettered],
                Some(S::Succeeded)
            ),
            WorkflowState::Succeeded
        );
        assert_eq!(
            overall(Kind::Chord, &[S::DeadLettered], Some(S::DeadLettered)),
            WorkflowState::Failed
        );
    }

    #[test]
    fn a_nested_group_is_final_when_its_members_are() {
        assert_eq!(group_state(&[S::Succeeded, S::Running], true), S::Running);
        assert_eq!(group_state(&[S::Queued, S::Pending], true), S::Queued);
        assert_eq!(
            group_state(&[S::Succeeded, S::DeadLettered], false),
            S::Succeeded
        );
        assert_eq!(
            group_state(&[S::Succeeded, S::DeadLettered], true),
            S::DeadLettered
        );
        assert_eq!(
            callback_chain_state(&[S::Succeeded, S::Running]),
            S::Running
        );
        assert_eq!(
            callback_chain_state(&[S::Succeeded, S::DeadLettered]),
            S::DeadLettered
        );
    }
}
