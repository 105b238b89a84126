//! Workflows over HTTP (docs/workflows.md): `POST /v1/workflows` starts a
//! chain, a group or a chord, checked first ([`request`]) and then
//! published with the shared `Publisher`'s workflow calls (the record,
//! then the tasks, each confirmed); `GET /v1/workflows/{id}` and its SSE
//! ([`status`]) show every task of it.

pub mod request;
pub mod status;

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;
use warren::PublishError;
use warren::events::{TaskEvent, TaskState};
use warren::workflow::{ChainError, GroupError, Link, WorkflowKind, WorkflowRecord};

use self::request::{Checked, Parsed, WorkflowRequest};
use self::status::WorkflowState;
use super::{AppState, json_body};
use crate::enqueue::stem;
use crate::problem::{Problem, ProblemDocument};
use crate::workflows::{Kind, Shape};

/// 202: the workflow's record and first tasks are confirmed.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(example = json!({
    "workflow_id": "order-1",
    "kind": "chain",
    "state": "queued",
    "size": 3,
    "status_url": "/v1/workflows/order-1",
    "events_url": "/v1/workflows/order-1/events"
}))]
pub struct WorkflowAccepted {
    pub workflow_id: String,
    pub kind: Kind,
    pub state: WorkflowState,
    /// How many steps or members.
    pub size: u32,
    /// `GET` it for the workflow's status.
    pub status_url: String,
    /// `GET` it for its tasks' events as Server-Sent Events.
    pub events_url: String,
}

/// Start a workflow: a chain, a group or a chord.
///
/// Step `n` (from 1) of a chain, or member `n` of a group, is the task
/// `{id}.{n}`; a chord's callback is `{id}.callback`.
#[utoipa::path(
    post,
    path = "/v1/workflows",
    tag = "workflows",
    request_body(
        content = WorkflowRequest,
        description = "A chain (`steps`), a group (`members`) or a chord (`members`, `callback`, `on_failure`). Each step is a task: `type`, `body`, `result_to`, `priority`. Nesting, one level: a chain step may be a group or a chord (`kind`, `members`, `callback`, `on_failure`; a group's member `n` of chain step `k` is `{id}.{k}.{n}`, the step after it receives the members' outcomes), and a chord's callback may be a chain of tasks (`{\"kind\": \"chain\", \"steps\": [...]}`). `email.send` and `image.thumbnail` bodies are checked as their workers check them."
    ),
    responses(
        (status = 202, description = "The workflow's record and its first tasks (a chain's first step; every member) were confirmed by the broker.", body = WorkflowAccepted,
            headers(("Location" = String, description = "The workflow's status URL."))),
        (status = 400, description = "The body is not JSON.", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 413, description = "The body is over `http.max_body_bytes`.", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 415, description = "The body is not `application/json`.", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 422, description = "A field is invalid, named in `field` (`steps[2].type`): no steps (`no_steps`), more than `workflows.max_steps` (`too_many_steps`), a task type no worker queue takes (`unknown_task_type`), an id that is a callback's (`callback_cycle`), a workflow nested deeper than one level, or two groups in a row in a chain (`nesting_not_supported`), a body its worker would refuse.", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 503, description = "The broker did not confirm the workflow. `partially_published`: publishing stopped midway, and `detail` says which members were published; otherwise nothing of it runs.", body = ProblemDocument, content_type = "application/problem+json"),
    )
)]
pub async fn start_workflow(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Problem> {
    let value = json_body(&headers, body)?;
    let checked = request::parse(value, app.limits.max_workflow_steps)?;
    check_bodies(&app, &checked)?;
    check_types(&app, &checked).await?;
    let Some(out) = app.broker.outbound() else {
        return Err(Problem::unavailable(
            "broker_unavailable",
            "the gateway is not connected to the broker right now; try again shortly",
        ));
    };
    let id = checked.id.clone();
    let kind_name = checked.kind_name();
    let (shape, first_tasks) = shape_of(&checked);
    // Stamped before the publish: a worker's `running` always comes later.
    let queued: Vec<TaskEvent> = first_tasks
        .iter()
        .map(|(task_id, task_type)| {
            let mut e = TaskEvent::new(task_id, task_type, TaskState::Queued, 1);
            e.by = Some(app.broker.identity().to_owned());
            e
        })
        .collect();
    let published = match checked.workflow {
        Parsed::Chain(chain) => out
            .publisher
            .publish_chain(chain)
            .await
            .map_err(chain_problem),
        Parsed::Group(g) => out.publisher.publish_group(g).await.map_err(group_problem),
        Parsed::Chord(c) => out.publisher.publish_chord(c).await.map_err(group_problem),
    };
    if let Err(p) = published {
        tracing::warn!(
            workflow_id = %id,
            kind = kind_name,
            problem = %p.detail,
            "The broker did not accept a workflow."
        );
        return Err(p.with_task_id(id));
    }
    // The record is on its way through the stream; this replica knows the
    // shape now, and its first tasks as queued.
    for e in queued {
        out.events.emit(e.clone()).await;
        app.tracker.published(e);
    }
    let accepted = WorkflowAccepted {
        workflow_id: id.clone(),
        kind: shape.kind,
        state: WorkflowState::Queued,
        size: shape.size,
        status_url: format!("/v1/workflows/{id}"),
        events_url: format!("/v1/workflows/{id}/events"),
    };
    tracing::info!(
        workflow_id = %id,
        kind = kind_name,
        size = shape.size,
        "Workflow started."
    );
    app.workflows.add(shape);
    let location = accepted.status_url.clone();
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, location)],
        axum::Json(accepted),
    )
        .into_response())
}

/// The workflow's shape, and the tasks published at once (a chain's
/// first step, or its first group's members; every member) with their
/// types.
fn shape_of(checked: &Checked) -> (Shape, Vec<(String, String)>) {
    let id = &checked.id;
    let shape = match &checked.workflow {
        Parsed::Chain(c) => Shape::from_record(
            WorkflowRecord::of_chain(id, c.links()),
            Some(chrono::Utc::now()),
        ),
        Parsed::Group(g) => {
            let types = g.members().iter().map(|m| m.task_type.as_str());
            Shape::from_record(
                WorkflowRecord::new(id, WorkflowKind::Group, types),
                Some(chrono::Utc::now()),
            )
        }
        Parsed::Chord(c) => Shape {
            id: id.clone(),
            kind: Kind::Chord,
            size: u32::try_from(c.members().len()).unwrap_or(u32::MAX),
            types: c.members().iter().map(|s| s.task_type.clone()).collect(),
            callback: Some((c.callback().task_type.clone(), c.policy())),
            groups: Default::default(),
            after: c
                .next()
                .iter()
                .map_while(|l| match l {
                    Link::Task(s) => Some(s.task_type.clone()),
                    Link::Group(_) => None,
                })
                .collect(),
            recorded_at: Some(chrono::Utc::now()),
        },
    };
    let first = match &checked.workflow {
        Parsed::Chain(c) => match c.links().first() {
            Some(Link::Group(g)) => g
                .group
                .iter()
                .enumerate()
                .map(|(m, s)| (shape.member_id(1, m as u32 + 1), s.task_type.clone()))
                .collect(),
            Some(Link::Task(s)) => vec![(shape.task_id(1), s.task_type.clone())],
            None => Vec::new(),
        },
        Parsed::Group(_) | Parsed::Chord(_) => shape
            .types
            .iter()
            .enumerate()
            .map(|(i, t)| (shape.task_id(i as u32 + 1), t.clone()))
            .collect(),
    };
    (shape, first)
}

/// `email.send` and `image.thumbnail` bodies, as their workers check them.
fn check_bodies(app: &AppState, checked: &Checked) -> Result<(), Problem> {
    // (field, task id, step)
    let mut bodies: Vec<(String, String, &warren::workflow::Step)> = Vec::new();
    let id = &checked.id;
    match &checked.workflow {
        Parsed::Chain(c) => {
            // Request fields count a chord as one entry; links count its
            // callback apart.
            for (n, link) in c.links().iter().enumerate() {
                match link {
                    Link::Task(s) => {
                        bodies.push((format!("link {}", n + 1), format!("{id}.{}", n + 1), s))
                    }
                    Link::Group(g) => bodies.extend(g.group.iter().enumerate().map(|(m, s)| {
                        (
                            format!("link {} member {}", n + 1, m + 1),
                            format!("{id}.{}.{}", n + 1, m + 1),
                            s,
                        )
                    })),
                }
            }
            // Name each body by the request's field of its type.
            for ((field, _, _), (type_field, _)) in bodies.iter_mut().zip(&checked.types) {
                *field = type_field.trim_end_matches(".type").to_owned();
            }
        }
        Parsed::Group(g) => bodies.extend(
            g.members()
                .iter()
                .enumerate()
                .map(|(i, s)| (format!("members[{i}]"), format!("{id}.{}", i + 1), s)),
        ),
        Parsed::Chord(c) => {
            bodies.extend(
                c.members()
                    .iter()
                    .enumerate()
                    .map(|(i, s)| (format!("members[{i}]"), format!("{id}.{}", i + 1), s)),
            );
            bodies.push((
                "callback".to_owned(),
                format!("{id}.callback"),
                c.callback(),
            ));
        }
    }
    for (field, task_id, step) in bodies {
        // A step whose body receives a result is checked by its worker.
        if step.result_to.is_some() {
            continue;
        }
        app.checks.check_payload(
            &step.task_type,
            &step.body,
            &task_id,
            &format!("{field}.body."),
        )?;
    }
    Ok(())
}

/// Every task type must have a worker queue: `{ns}.{stem}` declared by a
/// worker (the queue of `pipeline.process` is `{ns}.pipeline`). Checked
/// before anything is published, for every step, not only the first.
async fn check_types(app: &AppState, checked: &Checked) -> Result<(), Problem> {
    let mut stems: BTreeMap<&str, (&str, &str)> = BTreeMap::new();
    for (field, task_type) in &checked.types {
        stems.entry(stem(task_type)).or_insert((field, task_type));
    }
    // Report the first step at fault, in request order.
    let mut missing: Vec<(&str, &str, String)> = Vec::new();
    for (s, (field, task_type)) in stems {
        let queue = app.broker.names().work_queue(s);
        match app.broker.queue_exists(&queue).await {
            Some(true) => {}
            Some(false) => missing.push((field, task_type, queue)),
            None => {
                return Err(Problem::unavailable(
                    "broker_unavailable",
                    "the gateway is not connected to the broker right now; try again shortly",
                ));
            }
        }
    }
    let order = |f: &str| checked.types.iter().position(|(g, _)| g == f);
    missing.sort_by_key(|(f, _, _)| order(f));
    if let Some((field, task_type, queue)) = missing.into_iter().next() {
        return Err(Problem::invalid(
            "unknown_task_type",
            field,
            format!(
                "no worker takes task type {task_type}: its queue {queue} does not exist \
                 (is a worker for it deployed?); nothing of the workflow was published"
            ),
        ));
    }
    Ok(())
}

fn publish_detail(e: &PublishError) -> String {
    match e {
        PublishError::Returned { .. } => "no queue is bound for its task type".to_owned(),
        other => other.to_string(),
    }
}

fn chain_problem(e: ChainError) -> Problem {
    match e {
        ChainError::Group(g) => group_problem(*g),
        ChainError::Publish(p) => Problem::unavailable(
            "broker_unavailable",
            format!(
                "the chain's first step was not published ({}); nothing of the chain runs. Retry with the same id",
                publish_detail(&p)
            ),
        ),
        other => {
            let field = other.field().unwrap_or_default();
            Problem::invalid("invalid_value", &field, other.to_string())
        }
    }
}

fn group_problem(e: GroupError) -> Problem {
    match e {
        GroupError::Partial {
            id,
            published,
            total,
            source,
        } => {
            let which = match published {
                0 => "no member was published".to_owned(),
                1 => format!("member 1 ({id}.1) was published"),
                k => format!("members 1 to {k} ({id}.1 to {id}.{k}) were published"),
            };
            Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "partially_published",
                "The workflow was only partly published",
                format!(
                    "publishing stopped at member {} of {total} ({}): {which}, the rest were not; \
                     a chord's callback will not run. GET /v1/workflows/{id} shows them (pending). \
                     Retry with the same id to publish them all (published members then run again \
                     unless the workers keep an idempotency store)",
                    published + 1,
                    publish_detail(&source)
                ),
            )
        }
        GroupError::Publish(p) => Problem::unavailable(
            "broker_unavailable",
            format!(
                "the workflow's record was not published ({}); no member was. Retry with the same id",
                publish_detail(&p)
            ),
        ),
        other => Problem::invalid("invalid_value", "members", other.to_string()),
    }
}
