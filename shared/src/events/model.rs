//! The event and its states, as JSON on the wire.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Where a task is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    /// Published into the delay cascade (a delay or a due time), or fired
    /// by the conductor for later: it reaches the work queue at `due_at`.
    Scheduled,
    /// Published and confirmed by the broker; no worker has it yet.
    Queued,
    /// A worker is running it.
    Running,
    /// Not a state of its own: how far a running task is (`ctx.progress`),
    /// with `progress` and `message`. The status stays `running`.
    Progress,
    /// An attempt failed; it waits in a delay queue for the next one.
    Retrying,
    /// Done.
    Succeeded,
    /// In the parking lot; a person must look.
    DeadLettered,
}

impl TaskState {
    /// Every state, in lifecycle order.
    pub const ALL: [TaskState; 7] = [
        TaskState::Scheduled,
        TaskState::Queued,
        TaskState::Running,
        TaskState::Progress,
        TaskState::Retrying,
        TaskState::Succeeded,
        TaskState::DeadLettered,
    ];

    /// The state as on the wire, e.g. `dead_lettered`.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Scheduled => "scheduled",
            TaskState::Queued => "queued",
            TaskState::Running => "running",
            TaskState::Progress => "progress",
            TaskState::Retrying => "retrying",
            TaskState::Succeeded => "succeeded",
            TaskState::DeadLettered => "dead_lettered",
        }
    }

    /// Succeeded and dead-lettered end a task's life.
    pub fn is_final(self) -> bool {
        matches!(self, TaskState::Succeeded | TaskState::DeadLettered)
    }
}

/// One lifecycle event, as JSON on the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskEvent {
    /// The task's id.
    pub task_id: String,
    /// The task's type, e.g. `email.send`.
    pub task_type: String,
    /// What happened.
    pub state: TaskState,
    /// When it happened.
    pub at: DateTime<Utc>,
    /// The attempt this event belongs to (1 for the first).
    pub attempt: u32,
    /// `<service>@<host>/<pid>` of the worker (or producer) that emitted it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    /// For `retrying` and `dead_lettered`: the failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_kind: Option<String>,
    /// For `retrying` and `dead_lettered`: the error message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// For `retrying`: when the next attempt starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// For `scheduled`: when the task is due (reaches its work queue).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub due_at: Option<DateTime<Utc>>,
    /// For `dead_lettered`: `permanent` or `attempts_exhausted`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// For `succeeded`: the handler's result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    /// For `progress`: how far the task is, 0.0 to 1.0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<f64>,
    /// For `progress`: what the handler said with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl TaskEvent {
    /// An event with only the always-present fields set.
    pub fn new(task_id: &str, task_type: &str, state: TaskState, attempt: u32) -> Self {
        Self {
            task_id: task_id.to_owned(),
            task_type: task_type.to_owned(),
            state,
            at: Utc::now(),
            attempt,
            by: None,
            error_kind: None,
            error: None,
            next_attempt_at: None,
            due_at: None,
            reason: None,
            result: None,
            progress: None,
            message: None,
        }
    }

    /// `{task type}.{state}`, e.g. `email.send.succeeded`.
    pub fn routing_key(&self) -> String {
        format!("{}.{}", self.task_type, self.state.as_str())
    }
}

#[cfg(test)]
// A failing unwrap is how a test reports failure.
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn events_have_stable_json_and_routing_keys() {
        let mut e = TaskEvent::new("t1", "email.send", TaskState::DeadLettered, 3);
        e.reason = Some("permanent".into());
        assert_eq!(e.routing_key(), "email.send.dead_lettered");
        let json = serde_json::to_value(&e).unwrap();
        assert_eq!(json["state"], "dead_lettered");
        assert_eq!(json["reason"], "permanent");
        assert!(json.get("result").is_none());
        let back: TaskEvent = serde_json::from_value(json).unwrap();
        assert_eq!(back, e);
    }
}
