//! The chain's hook in the runtime: a delivery carrying a routing slip
//! (`x-warren-chain`) has it read before its handler runs (a slip that does
//! not parse parks the step at once, before any work), and once the
//! handler succeeds, the next step is published, confirmed, before the
//! step is acked. If that publish fails, the step's attempt fails
//! (`publish_failed`, retried): the step runs again rather than the chain
//! stopping silently; the next step's id is deterministic, so the
//! idempotency store keeps a step published twice from running twice.

use lapin::message::Delivery;

use super::session::Outbound;
use crate::contract::{self, headers};
use crate::publisher::{PublishError, PublishOptions};
use crate::workflow::{GroupError, Next, Slip};
use crate::{Outcome, TaskContext, TaskError};

/// The delivery's routing slip, if it carries one.
pub(super) fn read(delivery: &Delivery) -> Result<Option<Slip>, TaskError> {
    let Some(json) = contract::header_str(delivery.properties.headers().as_ref(), headers::CHAIN)
    else {
        return Ok(None);
    };
    Slip::parse(&json)
        .map(Some)
        .map_err(|e| TaskError::permanent("invalid_chain", e.to_string()))
}

/// Publishes the step after `ctx`'s, with its result, and waits for the
/// confirm. Nothing to do on the chain's last step.
pub(super) async fn advance(
    out: &Outbound,
    delivery: &Delivery,
    ctx: &TaskContext,
    slip: &Slip,
    outcome: &Outcome,
) -> Result<(), TaskError> {
    let next = match slip.advance(outcome.result.as_ref(), ctx.priority) {
        None => return Ok(()),
        Some(Next::Task(next)) => next,
        Some(Next::Group(group)) => {
            // The whole group (its chord record, then every member) is
            // confirmed before the step is acked; a failure retries the
            // step, which publishes the group again under the same ids
            // (the conductor ignores a chord record it has seen).
            return out
                .publisher
                .publish_next_group(&group, Some(&ctx.id), false)
                .await
                .map_err(|e| {
                    let message = format!(
                        "group {} (step {} of chain {}) was not published: {e}",
                        group.id, group.step, group.chain
                    );
                    match e {
                        GroupError::TooManyMembers { .. } => {
                            TaskError::permanent("invalid_chain", message)
                        }
                        _ => TaskError::retry("publish_failed", message),
                    }
                });
        }
    };
    let invalid = |e: String| TaskError::permanent("invalid_chain", e);
    let mut options = PublishOptions {
        id: Some(next.id.clone()),
        priority: Some(next.priority),
        ..Default::default()
    };
    let header = next.slip.to_json().map_err(|e| invalid(e.to_string()))?;
    contract::set_str(&mut options.headers, headers::CHAIN, header);
    contract::set_str(&mut options.headers, headers::CAUSATION_ID, ctx.id.clone());
    // A step the Celery bridge mapped: its states are Celery results too,
    // under the same root as the step before.
    if let Some(name) = &next.celery_task {
        contract::set_str(&mut options.headers, headers::CELERY_TASK, name.clone());
        if let Some(root) = contract::header_str(
            delivery.properties.headers().as_ref(),
            headers::CELERY_ROOT_ID,
        ) {
            contract::set_str(&mut options.headers, headers::CELERY_ROOT_ID, root);
        }
    }
    // Published from within the task's span: the next step continues its
    // trace.
    out.publisher
        .publish_task(&next.task_type, &next.body, options)
        .await
        .map(|_| ())
        .map_err(|e| {
            let message = format!(
                "step {} ({}) of chain {} was not published: {e}",
                next.slip.step, next.task_type, next.slip.id
            );
            match e {
                PublishError::Serialize(_) | PublishError::InvalidPriority(_) => invalid(message),
                _ => TaskError::retry("publish_failed", message),
            }
        })
}
