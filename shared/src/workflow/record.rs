//! A chain's or group's record on the events stream: its id, its kind and
//! the task types of its steps, in order. `publish_chain` and
//! `publish_group` write it (confirmed) before the first task, as
//! `publish_chord` writes a [`ChordRecord`](super::ChordRecord), so a
//! reader of the stream (the gateway's `GET /v1/workflows/{id}`) knows a
//! workflow's shape whoever started it. Nothing runs from it: the steps
//! carry the chain themselves.

use serde::{Deserialize, Serialize};

use super::chord::OnFailure;
use super::nested::Link;
use crate::contract::PERSISTENT;
use crate::publisher::{PublishError, Publisher};

/// Content type of a workflow record on the events exchange.
pub const WORKFLOW_CONTENT_TYPE: &str = "application/vnd.warren.workflow.v1+json";

/// AMQP `type` of a workflow record.
pub const WORKFLOW_MESSAGE_TYPE: &str = "warren.workflow";

/// What a [`WorkflowRecord`] describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkflowKind {
    /// Steps one after another: step `n` (from 1) is the task `{id}.{n}`.
    Chain,
    /// Members in parallel: member `n` (from 1) is the task `{id}.{n}`.
    Group,
}

/// A chain's or group's record, as written to the events stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkflowRecord {
    /// The workflow's id.
    pub id: String,
    /// Chain or group.
    pub kind: WorkflowKind,
    /// Each step or member, in order: its task type, or (a group nested in
    /// a chain) its members' types.
    pub steps: Vec<StepShape>,
}

/// One entry of a [`WorkflowRecord`]'s `steps`: a task type
/// (`"pipeline.save"`), or a group nested in a chain (`{"group":
/// ["pipeline.process", ...], "on_failure": "skip"}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum StepShape {
    /// A step: its task type.
    Task(String),
    /// A group: its members' task types and its policy.
    Group {
        /// The members' task types, in order.
        group: Vec<String>,
        /// What the step after it does when a member failed.
        on_failure: OnFailure,
    },
}

impl StepShape {
    /// A step's task type; a group's first member's.
    pub fn first_type(&self) -> &str {
        match self {
            Self::Task(t) => t,
            Self::Group { group, .. } => group.first().map_or("group", String::as_str),
        }
    }
}

impl WorkflowRecord {
    /// The record of a workflow of `kind` whose steps have these types.
    pub fn new<'a>(id: &str, kind: WorkflowKind, types: impl IntoIterator<Item = &'a str>) -> Self {
        Self {
            id: id.to_owned(),
            kind,
            steps: types
                .into_iter()
                .map(|t| StepShape::Task(t.to_owned()))
                .collect(),
        }
    }

    /// The record of chain `id` of `links`.
    pub fn of_chain(id: &str, links: &[Link]) -> Self {
        Self {
            id: id.to_owned(),
            kind: WorkflowKind::Chain,
            steps: links
                .iter()
                .map(|l| match l {
                    Link::Task(s) => StepShape::Task(s.task_type.clone()),
                    Link::Group(g) => StepShape::Group {
                        group: g.group.iter().map(|m| m.task_type.clone()).collect(),
                        on_failure: g.on_failure,
                    },
                })
                .collect(),
        }
    }
}

impl Publisher {
    /// Writes a workflow's record to the events exchange, with confirms;
    /// returned unrouted (no events stream bound) is not an error.
    pub(crate) async fn publish_workflow_record(
        &self,
        record: &WorkflowRecord,
    ) -> Result<(), PublishError> {
        let body = serde_json::to_vec(record).map_err(PublishError::Serialize)?;
        let properties = lapin::BasicProperties::default()
            .with_content_type(WORKFLOW_CONTENT_TYPE.into())
            .with_type(WORKFLOW_MESSAGE_TYPE.into())
            .with_delivery_mode(PERSISTENT)
            .with_message_id(format!("{}.workflow", record.id).into())
            .with_timestamp(u64::try_from(chrono::Utc::now().timestamp()).unwrap_or(0));
        let first = record
            .steps
            .first()
            .map_or("workflow", StepShape::first_type);
        let key = format!("{first}.workflow");
        // A publish to a missing exchange would close the channel: a
        // producer may start before anything declared it.
        crate::topology::declare_events_exchange(self.channel(), self.names()).await?;
        match self
            .publish_confirmed(&self.names().events_exchange(), &key, &body, properties)
            .await
        {
            // No events stream is bound (no gateway or conductor has
            // declared it): nobody reads records here, and the workflow
            // runs without one.
            Err(PublishError::Returned { .. }) => Ok(()),
            other => other,
        }
    }
}

#[cfg(test)]
// A failing unwrap is how a test reports failure.
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_record_is_its_documented_json() {
        let r = WorkflowRecord::new("c", WorkflowKind::Chain, ["a.b", "a.c"]);
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"id": "c", "kind": "chain", "steps": ["a.b", "a.c"]})
        );
        assert_eq!(serde_json::from_value::<WorkflowRecord>(json).unwrap(), r);
        let nested = serde_json::json!({"id": "n", "kind": "chain", "steps": [
            "a.b", {"group": ["a.c", "a.c"], "on_failure": "skip"}, "a.d"]});
        let r: WorkflowRecord = serde_json::from_value(nested.clone()).unwrap();
        assert!(matches!(&r.steps[1], StepShape::Group { group, .. } if group.len() == 2));
        assert_eq!(serde_json::to_value(&r).unwrap(), nested);
    }
}
