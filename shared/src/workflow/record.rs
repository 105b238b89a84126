//! A chain's or group's record on the events stream: its id, its kind and
//! the task types of its steps, in order. `publish_chain` and
//! `publish_group` write it (confirmed) before the first task, as
//! `publish_chord` writes a [`ChordRecord`](super::ChordRecord), so a
//! reader of the stream (the gateway's `GET /v1/workflows/{id}`) knows a
//! workflow's shape whoever started it. Nothing runs from it: the steps
//! carry the chain themselves.

use serde::{Deserialize, Serialize};

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
    /// The task type of each step or member, in order.
    pub steps: Vec<String>,
}

impl WorkflowRecord {
    /// The record of a workflow of `kind` whose steps have these types.
    pub fn new<'a>(id: &str, kind: WorkflowKind, types: impl IntoIterator<Item = &'a str>) -> Self {
        Self {
            id: id.to_owned(),
            kind,
            steps: types.into_iter().map(str::to_owned).collect(),
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
        let first = record.steps.first().map_or("workflow", String::as_str);
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
    }
}
