//! Results in Celery's Redis result-backend format, so a Celery client's
//! `AsyncResult(id).status`, `.result` and `.get()` keep working: each
//! task event of a task that came through the bridge is written to
//! `celery-task-meta-<id>` (and published on the channel of that name,
//! which wakes a waiting `.get()`), as Celery's own Redis backend does.
//!
//! | Warren event | Celery state | `result` |
//! |---|---|---|
//! | (none yet) | `PENDING` (no key) | |
//! | `running` | `STARTED` | `null` |
//! | `retrying` | `RETRY` | exception dict: the failure |
//! | `succeeded` | `SUCCESS` | the handler's result (`null` if none) |
//! | `dead_lettered` | `FAILURE` | exception dict: `WarrenTaskError`, with the kind and reason |

use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use redis::aio::ConnectionManager;
use serde_json::{Value, json};
use tracing::warn;

use crate::events::{TaskEvent, TaskState};

/// Writes Celery result metas to Redis. Cheap to clone.
#[derive(Clone)]
pub struct CeleryResults {
    redis: ConnectionManager,
    expires: Duration,
}

impl std::fmt::Debug for CeleryResults {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CeleryResults")
            .field("expires", &self.expires)
            .finish_non_exhaustive()
    }
}

/// The Redis key (and pub/sub channel) of task `id`'s result.
pub fn meta_key(id: &str) -> String {
    format!("celery-task-meta-{id}")
}

/// Celery's name of the exception a Warren failure shows as.
pub const EXCEPTION_TYPE: &str = "WarrenTaskError";

impl CeleryResults {
    /// Connects to the Redis at `url`; metas expire after `expires`
    /// (Celery's `result_expires`, one day by default).
    pub async fn connect(url: &str, expires: Duration) -> Result<Self, redis::RedisError> {
        let client = redis::Client::open(url)?;
        let redis = ConnectionManager::new(client).await?;
        Ok(Self { redis, expires })
    }

    /// Writes the state `event` stands for, if it stands for one. A write
    /// that fails is logged and dropped: the task's own outcome stands.
    pub async fn record(&self, event: &TaskEvent) {
        if let Some(meta) = meta_for(event) {
            self.write(&event.task_id, &meta).await;
        }
    }

    /// Writes a `FAILURE` for a message the bridge parked.
    pub async fn refused(&self, id: &str, kind: &str, reason: &str) {
        let meta = meta(
            id,
            "FAILURE",
            exception(kind, reason),
            Some(format!(
                "Parked by Warren's Celery bridge: {kind}: {reason}"
            )),
            Utc::now(),
        );
        self.write(id, &meta).await;
    }

    async fn write(&self, id: &str, meta: &Value) {
        let key = meta_key(id);
        let text = meta.to_string();
        let mut redis = self.redis.clone();
        let written: Result<(), redis::RedisError> = redis::pipe()
            .set_ex(&key, &text, self.expires.as_secs().max(1))
            .ignore()
            .publish(&key, &text)
            .ignore()
            .query_async(&mut redis)
            .await;
        if let Err(e) = written {
            warn!(error = %e, task_id = %id, "Could not write the Celery result to Redis.");
        }
    }
}

/// The Celery meta of a Warren event, or `None` for events Celery has no
/// state for (`progress`, `queued`, `scheduled`).
pub fn meta_for(event: &TaskEvent) -> Option<Value> {
    let failure = || {
        exception(
            event.error_kind.as_deref().unwrap_or("unknown"),
            event.error.as_deref().unwrap_or(""),
        )
    };
    let (status, result, traceback) = match event.state {
        TaskState::Running => ("STARTED", Value::Null, None),
        TaskState::Retrying => ("RETRY", failure(), None),
        TaskState::Succeeded => ("SUCCESS", event.result.clone().unwrap_or(Value::Null), None),
        TaskState::DeadLettered => (
            "FAILURE",
            failure(),
            Some(format!(
                "Parked by Warren after {} attempt(s) ({}): {}: {}",
                event.attempt,
                event.reason.as_deref().unwrap_or("permanent"),
                event.error_kind.as_deref().unwrap_or("unknown"),
                event.error.as_deref().unwrap_or("")
            )),
        ),
        TaskState::Scheduled | TaskState::Queued | TaskState::Progress => return None,
    };
    Some(meta(&event.task_id, status, result, traceback, event.at))
}

fn meta(
    id: &str,
    status: &str,
    result: Value,
    traceback: Option<String>,
    at: DateTime<Utc>,
) -> Value {
    json!({
        "status": status,
        "result": result,
        "traceback": traceback,
        "children": [],
        "date_done": at.to_rfc3339_opts(SecondsFormat::Micros, true),
        "task_id": id,
    })
}

/// Celery's serialized exception: `AsyncResult.result` is then a
/// `WarrenTaskError("<kind>: <message>")` and `.get()` raises it.
fn exception(kind: &str, message: &str) -> Value {
    json!({
        "exc_type": EXCEPTION_TYPE,
        "exc_message": [format!("{kind}: {message}")],
        "exc_module": "warren",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warren_states_map_to_celery_states() {
        let mut e = TaskEvent::new("t1", "email.send", TaskState::Succeeded, 1);
        e.result = Some(json!({"message_id": "<x@y>"}));
        let m = meta_for(&e);
        assert_eq!(m.as_ref().map(|m| &m["status"]), Some(&json!("SUCCESS")));
        assert_eq!(
            m.as_ref().map(|m| &m["result"]),
            Some(&json!({"message_id": "<x@y>"}))
        );
        assert_eq!(m.as_ref().map(|m| &m["task_id"]), Some(&json!("t1")));

        let mut e = TaskEvent::new("t1", "email.send", TaskState::DeadLettered, 1);
        e.error_kind = Some("smtp_permanent".into());
        e.error = Some("550 no such user".into());
        e.reason = Some("permanent".into());
        let m = meta_for(&e).unwrap_or_default();
        assert_eq!(m["status"], "FAILURE");
        assert_eq!(m["result"]["exc_type"], EXCEPTION_TYPE);
        assert_eq!(
            m["result"]["exc_message"][0],
            "smtp_permanent: 550 no such user"
        );

        let e = TaskEvent::new("t1", "email.send", TaskState::Running, 1);
        assert_eq!(meta_for(&e).unwrap_or_default()["status"], "STARTED");
        let e = TaskEvent::new("t1", "email.send", TaskState::Progress, 1);
        assert!(meta_for(&e).is_none());
    }
}
