//! From an accepted HTTP request to a confirmed task on the broker: the
//! checks every task gets (id, type, priority, delay), the checks the
//! workers themselves would make (`email.send`, `image.thumbnail`), the
//! publish, and the `queued` event.
//!
//! A task is published with confirms and `mandatory`; only an ack from
//! the broker makes it accepted (202). A delayed task (`delay` or `eta`,
//! of any length) goes into the delay cascade (`warren::topology::delay`)
//! and is reported `scheduled` with its due time until a worker starts it.

use chrono::{DateTime, Utc};
use serde_json::Value;
use warren::Task;
use warren::contract::MAX_PRIORITY;
use warren::events::{TaskEvent, TaskState};
use warren::topology::delay::MAX_DELAY;
use warren::{PublishError, PublishOptions};
use warren_tasks::email::{EmailAddress, EmailRequest, ParsePolicy, SendEmail};
use warren_tasks::image::{SpecPolicy, ThumbnailSpec, ThumbnailTask};

use crate::broker::Broker;
use crate::problem::{self, Problem};
use crate::status::Tracker;

/// Longest task id the gateway accepts: ids appear in URLs.
pub const MAX_ID_LEN: usize = 128;
/// Ids whose status URL would be another route.
const RESERVED_IDS: &[&str] = &["email", "image"];
/// Longest task type (an AMQP routing key is at most 255 bytes).
pub const MAX_TYPE_LEN: usize = 200;

/// What the worker-side checks need.
pub struct Checks {
    pub default_from: EmailAddress,
    pub max_attachment_bytes: usize,
    pub image: SpecPolicy,
}

/// A task ready to publish.
#[derive(Debug, Clone)]
pub struct Enqueue {
    pub task_type: String,
    pub payload: Value,
    pub id: String,
    pub priority: u8,
    /// When it is due, if it waits in the delay cascade first.
    pub due_at: Option<DateTime<Utc>>,
}

impl Checks {
    /// When a task asked to wait is due: `delay` (a duration of any length
    /// up to the delay cascade's longest) or `eta` (an RFC 3339 time), not
    /// both. `None` to run at once (neither, a zero delay, a past eta).
    pub fn due(
        &self,
        delay: Option<&str>,
        eta: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>, Problem> {
        let due = match (delay, eta) {
            (None, None) => return Ok(None),
            (Some(_), Some(_)) => {
                return Err(Problem::invalid(
                    "conflicting_fields",
                    "eta",
                    "give delay or eta, not both",
                ));
            }
            (Some(raw), None) => {
                let wanted = humantime::parse_duration(raw.trim()).map_err(|e| {
                    Problem::invalid(
                        "invalid_value",
                        "delay",
                        format!("delay {raw:?} is not a duration like 30s, 3h or 2days ({e})"),
                    )
                })?;
                if wanted > MAX_DELAY {
                    return Err(Problem::invalid(
                        "delay_too_long",
                        "delay",
                        format!(
                            "delay {} is longer than the delay cascade's longest ({})",
                            humantime::format_duration(wanted),
                            humantime::format_duration(MAX_DELAY)
                        ),
                    ));
                }
                now + chrono::Duration::from_std(wanted).unwrap_or(chrono::Duration::MAX)
            }
            (None, Some(raw)) => {
                let at = DateTime::parse_from_rfc3339(raw.trim()).map_err(|e| {
                    Problem::invalid(
                        "invalid_value",
                        "eta",
                        format!(
                            "eta {raw:?} is not an RFC 3339 time like 2026-12-01T09:00:00+01:00 ({e})"
                        ),
                    )
                })?;
                let at = at.with_timezone(&Utc);
                if (at - now).to_std().is_ok_and(|d| d > MAX_DELAY) {
                    return Err(Problem::invalid(
                        "delay_too_long",
                        "eta",
                        format!(
                            "eta {raw} is further away than the delay cascade's longest delay ({})",
                            humantime::format_duration(MAX_DELAY)
                        ),
                    ));
                }
                at
            }
        };
        Ok((due > now).then_some(due))
    }

    /// Checks the payload of a task type the workers here know, as the
    /// worker will; `prefix` goes before field names (`payload.`).
    pub fn check_payload(
        &self,
        task_type: &str,
        payload: &Value,
        task_id: &str,
        prefix: &str,
    ) -> Result<(), Problem> {
        if task_type == SendEmail::TYPE {
            let wire: SendEmail = serde_path_to_error::deserialize(payload)
                .map_err(|e| problem::from_serde(e, prefix))?;
            let policy = ParsePolicy {
                default_from: &self.default_from,
                max_attachment_bytes: self.max_attachment_bytes,
            };
            EmailRequest::parse(wire, &policy)
                .map_err(|e| Problem::refused_by_worker(&e, prefix))?;
        } else if task_type == ThumbnailTask::TYPE {
            let wire: ThumbnailTask = serde_path_to_error::deserialize(payload)
                .map_err(|e| problem::from_serde(e, prefix))?;
            ThumbnailSpec::parse(wire, task_id, &self.image)
                .map_err(|e| Problem::refused_by_worker(&e, prefix))?;
        }
        Ok(())
    }
}

/// A task id from the client, or a new UUID v7.
pub fn task_id(raw: Option<&str>, field: &str) -> Result<String, Problem> {
    let Some(raw) = raw else {
        return Ok(uuid::Uuid::now_v7().to_string());
    };
    let ok = !raw.is_empty()
        && raw.len() <= MAX_ID_LEN
        && raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'~' | b':'));
    if !ok {
        return Err(Problem::invalid(
            "invalid_value",
            field,
            format!(
                "{field} {raw:?} is not a task id: 1 to {MAX_ID_LEN} characters of [A-Za-z0-9._~:-]"
            ),
        ));
    }
    // `/v1/tasks/email` and `/v1/tasks/image` are routes of their own.
    if RESERVED_IDS.contains(&raw) {
        return Err(Problem::invalid(
            "invalid_value",
            field,
            format!("{field} {raw:?} is reserved (it names an endpoint); choose another"),
        ));
    }
    Ok(raw.to_owned())
}

/// A priority 0-9 (default 0).
pub fn priority(raw: Option<u8>, field: &str) -> Result<u8, Problem> {
    match raw {
        None => Ok(0),
        Some(p) if p <= MAX_PRIORITY => Ok(p),
        Some(p) => Err(Problem::invalid(
            "invalid_value",
            field,
            format!("{field} {p} is out of range 0-{MAX_PRIORITY} (9 is served first)"),
        )),
    }
}

/// A task type such as `email.send`: dot-separated segments of
/// `[A-Za-z0-9_-]`; the first names the worker queue (`{ns}.email`).
pub fn task_type(raw: &str, field: &str) -> Result<(), Problem> {
    let ok = !raw.is_empty()
        && raw.len() <= MAX_TYPE_LEN
        && raw.split('.').all(|s| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
        });
    if !ok {
        return Err(Problem::invalid(
            "invalid_value",
            field,
            format!(
                "{field} {raw:?} is not a task type: dot-separated names of [A-Za-z0-9_-], like email.send"
            ),
        ));
    }
    Ok(())
}

/// The queue stem of a task type: `email` for `email.send`.
pub fn stem(task_type: &str) -> &str {
    task_type.split('.').next().unwrap_or(task_type)
}

/// Publishes the task, waits for the broker's confirm, then emits its
/// `queued` event and remembers it as just published.
pub async fn publish(broker: &Broker, tracker: &Tracker, task: &Enqueue) -> Result<(), Problem> {
    let Some(out) = broker.outbound() else {
        return Err(Problem::unavailable(
            "broker_unavailable",
            "the gateway is not connected to the broker right now; try again shortly",
        ));
    };
    // Stamped before the publish: a worker's `running` always comes later.
    let mut queued = TaskEvent::new(&task.id, &task.task_type, TaskState::Queued, 1);
    queued.by = Some(broker.identity().to_owned());
    let mut options = PublishOptions {
        id: Some(task.id.clone()),
        priority: Some(task.priority),
        ..Default::default()
    };
    if let Some(due) = task.due_at {
        options = options.eta(due);
        queued.state = TaskState::Scheduled;
        queued.due_at = Some(due);
    }
    let published = out
        .publisher
        .publish_task(&task.task_type, &task.payload, options)
        .await;
    if let Err(e) = published {
        tracing::warn!(
            error = %e,
            task_id = %task.id,
            task_type = %task.task_type,
            "The broker did not accept a task."
        );
        return Err(publish_problem(broker, task, e));
    }
    out.events.emit(queued.clone()).await;
    tracker.published(queued);
    tracing::info!(
        task_id = %task.id,
        task_type = %task.task_type,
        priority = task.priority,
        due_at = task.due_at.map(|d| d.to_rfc3339()),
        "Task enqueued."
    );
    Ok(())
}

fn publish_problem(broker: &Broker, task: &Enqueue, e: PublishError) -> Problem {
    let p = match e {
        PublishError::Returned { .. } => match task.due_at {
            None => Problem::unavailable(
                "unroutable",
                format!(
                    "no queue takes task type {}: no worker for it has declared its queue {} yet (is a worker for it running?)",
                    task.task_type,
                    broker.names().work_queue(stem(&task.task_type))
                ),
            ),
            Some(_) => Problem::unavailable(
                "unroutable",
                "the delay cascade is not declared on the broker (it is declared on connecting; try again)",
            ),
        },
        PublishError::DelayTooLong(e) => {
            return Problem::invalid("delay_too_long", "delay", e.to_string());
        }
        PublishError::Topology(e) => Problem::unavailable("broker_unavailable", e.to_string()),
        PublishError::Nacked => Problem::unavailable(
            "broker_nack",
            "the broker refused the task (publisher confirm nack); try again",
        ),
        PublishError::Timeout(t) => Problem::unavailable(
            "broker_timeout",
            format!(
                "the broker did not confirm the task within {}; it may be blocked by a resource alarm. \
                 The task may or may not have been queued: retry with the same id",
                humantime::format_duration(t)
            ),
        ),
        PublishError::InvalidPriority(p) => {
            return priority(Some(p), "priority").err().unwrap_or_else(|| {
                Problem::internal(format!("priority {p} was refused by the publisher"))
            });
        }
        PublishError::Serialize(e) => {
            return Problem::internal(format!("the task could not be serialized: {e}"));
        }
        PublishError::Connect(e) => Problem::unavailable("broker_unavailable", e.to_string()),
        e @ PublishError::StreamUnavailable(_) => {
            Problem::unavailable("broker_unavailable", e.to_string())
        }
        PublishError::Broker(e) => Problem::unavailable(
            "broker_unavailable",
            format!("the broker did not take the task: {e}"),
        ),
    };
    p.with_task_id(task.id.clone())
}

#[cfg(test)]
// A failing unwrap is how a test reports failure.
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn checks() -> Checks {
        let settings = warren_store::ImageSettings::default();
        Checks {
            default_from: EmailAddress::parse("from", "warren@localhost").unwrap(),
            max_attachment_bytes: 10,
            image: warren_store::policy(&settings).unwrap(),
        }
    }

    #[test]
    fn delays_and_etas_of_any_length_give_a_due_time() {
        let c = checks();
        let now = Utc::now();
        assert_eq!(c.due(None, None, now).unwrap(), None);
        assert_eq!(c.due(Some("0s"), None, now).unwrap(), None);
        let three_hours = c.due(Some("3h"), None, now).unwrap().unwrap();
        assert_eq!(three_hours - now, chrono::Duration::hours(3));
        let in_a_year = c.due(Some("365days"), None, now).unwrap();
        assert!(in_a_year.is_some());
        let tomorrow = (now + chrono::Duration::days(1)).to_rfc3339();
        assert!(c.due(None, Some(&tomorrow), now).unwrap().is_some());
        let past = (now - chrono::Duration::days(1)).to_rfc3339();
        assert_eq!(c.due(None, Some(&past), now).unwrap(), None);
        let p = c.due(Some("10years"), None, now).unwrap_err();
        assert_eq!(
            (p.status, p.slug(), p.field.as_deref()),
            (422, "delay_too_long", Some("delay"))
        );
        let p = c.due(Some("soon"), None, now).unwrap_err();
        assert_eq!(p.field.as_deref(), Some("delay"));
        let p = c.due(None, Some("tomorrow"), now).unwrap_err();
        assert_eq!(p.field.as_deref(), Some("eta"));
        let p = c.due(Some("1s"), Some(&tomorrow), now).unwrap_err();
        assert_eq!(p.slug(), "conflicting_fields");
    }

    #[test]
    fn emails_are_checked_as_the_worker_checks_them() {
        let c = checks();
        let ok = json!({"to": "ada@example.com", "subject": "Hi", "text": "x"});
        c.check_payload("email.send", &ok, "t", "").unwrap();
        let p = c
            .check_payload(
                "email.send",
                &json!({"to": "ada@", "subject": "Hi", "text": "x"}),
                "t",
                "",
            )
            .unwrap_err();
        assert_eq!(
            (p.status, p.slug(), p.field.as_deref()),
            (422, "invalid_address", Some("to"))
        );
        assert_eq!(p.error_kind.as_deref(), Some("invalid_address"));
        let p = c
            .check_payload(
                "email.send",
                &json!({"to": "a@b.c", "subject": "Hi"}),
                "t",
                "payload.",
            )
            .unwrap_err();
        assert_eq!(p.slug(), "invalid_payload");
        let p = c
            .check_payload(
                "email.send",
                &json!({"to": "a@b.c", "sbject": "Hi"}),
                "t",
                "payload.",
            )
            .unwrap_err();
        assert_eq!(
            (p.slug(), p.field.as_deref()),
            ("unknown_field", Some("payload.sbject"))
        );
    }

    #[test]
    fn thumbnails_are_checked_as_the_worker_checks_them() {
        let c = checks();
        let ok =
            json!({"source": {"key": "uploads/a.png"}, "outputs": [{"width": 10, "height": 10}]});
        c.check_payload("image.thumbnail", &ok, "t", "").unwrap();
        let bad =
            json!({"source": {"key": "../etc/passwd"}, "outputs": [{"width": 10, "height": 10}]});
        let p = c
            .check_payload("image.thumbnail", &bad, "t", "")
            .unwrap_err();
        assert_eq!(
            (p.slug(), p.field.as_deref()),
            ("invalid_key", Some("source.key"))
        );
        let bad = json!({"source": {"key": "a.png"}, "outputs": [{"width": 10, "height": "x"}]});
        let p = c
            .check_payload("image.thumbnail", &bad, "t", "")
            .unwrap_err();
        assert_eq!(
            (p.slug(), p.field.as_deref()),
            ("invalid_type", Some("outputs[0].height"))
        );
        // Types no worker here knows are not checked.
        c.check_payload("report.build", &json!([1, 2]), "t", "")
            .unwrap();
    }

    #[test]
    fn ids_types_and_priorities_are_checked() {
        assert!(task_id(None, "id").unwrap().len() == 36);
        assert_eq!(
            task_id(Some("order-42:welcome"), "id").unwrap(),
            "order-42:welcome"
        );
        assert!(task_id(Some("a/b"), "id").is_err());
        assert!(task_id(Some(""), "id").is_err());
        assert!(task_id(Some("email"), "id").is_err());
        assert!(task_type("email.send", "type").is_ok());
        assert!(task_type("email..send", "type").is_err());
        assert!(task_type("email send", "type").is_err());
        assert_eq!(stem("image.thumbnail"), "image");
        assert_eq!(priority(Some(9), "priority").unwrap(), 9);
        assert_eq!(
            priority(Some(10), "priority").unwrap_err().field.as_deref(),
            Some("priority")
        );
    }
}
