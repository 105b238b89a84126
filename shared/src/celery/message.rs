//! A Celery protocol 2 message read into a Warren task, or refused with a
//! reason: its headers (`task`, `id`, `retries`, `eta`, `expires`,
//! `root_id`, `parent_id`), its JSON body `[args, kwargs, embed]` (the
//! chain in `embed` is read by [`super::canvas`]), and the mapping of its
//! task name and arguments onto a Warren task type and body.
//!
//! Nothing here talks to a broker: the bridge hands it a message's
//! properties and body, and gets back what to publish or why to park.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDateTime, Utc};
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};
use serde_json::{Map, Value};

use super::{CeleryTaskMap, canvas};
use crate::contract::{self, MAX_PRIORITY};
use crate::workflow::Step;

/// A Celery task, ready to be published as a Warren task.
#[derive(Debug, Clone, PartialEq)]
pub struct Converted {
    /// The Celery task id, kept as the Warren task id (so `AsyncResult(id)`
    /// finds its result).
    pub id: String,
    /// The Celery task name (`app.tasks.send_email_task`).
    pub name: String,
    /// The Warren task type it maps to (`email.send`).
    pub task_type: String,
    /// The Warren body built from the arguments.
    pub body: Value,
    /// The message's priority, at most 9.
    pub priority: Option<u8>,
    /// Celery's `eta` (a `countdown` arrives as an `eta`).
    pub eta: Option<DateTime<Utc>>,
    /// Celery's `expires`.
    pub expires: Option<DateTime<Utc>>,
    /// Celery's `retries`: the Warren attempt is one more.
    pub retries: u32,
    /// Celery's `root_id`, kept in a header.
    pub root_id: Option<String>,
    /// Celery's `parent_id`, kept as the causation id.
    pub parent_id: Option<String>,
    /// The steps of its Celery chain and `link` callback (`embed`), to run
    /// after it as a Warren chain; empty when it has none.
    pub chain: Vec<Step>,
}

/// Why a Celery message is parked instead of handed on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// The error kind (`celery_unsupported_content_type`, ...).
    pub kind: &'static str,
    /// A sentence a person can act on.
    pub reason: String,
    /// The Celery task id, when the message had one.
    pub id: Option<String>,
    /// The Celery ids of the steps of its chain, none of which will run:
    /// their results are `FAILURE` too, so a client waiting on the
    /// chain's last result hears why.
    pub chain_ids: Vec<String>,
}

/// Content types the bridge reads: Celery's `json` serializer.
const JSON: &str = "application/json";

/// Reads a Celery protocol 2 message and maps it with `tasks`.
pub fn convert(
    properties: &BasicProperties,
    body: &[u8],
    tasks: &[CeleryTaskMap],
) -> Result<Converted, Refused> {
    let hdrs = properties.headers().as_ref();
    let id = contract::header_str(hdrs, "id")
        .filter(|s| !s.is_empty())
        .or_else(|| {
            properties
                .correlation_id()
                .as_ref()
                .map(|c| c.to_string())
                .filter(|s| !s.is_empty())
        });
    let refuse = |kind: &'static str, reason: String| Refused {
        kind,
        reason,
        id: id.clone(),
        chain_ids: Vec::new(),
    };
    let content_type = properties
        .content_type()
        .as_ref()
        .map(|c| c.to_string())
        .unwrap_or_default();
    if content_type != JSON {
        let shown = if content_type.is_empty() {
            "none".to_owned()
        } else {
            content_type
        };
        return Err(refuse(
            "celery_unsupported_content_type",
            format!(
                "content type {shown} is not supported: Warren reads Celery's json serializer only \
                 (task_serializer = \"json\"); pickle, yaml and msgpack are never guessed at"
            ),
        ));
    }
    if let Some(encoding) = properties.content_encoding()
        && !encoding.as_str().eq_ignore_ascii_case("utf-8")
    {
        return Err(refuse(
            "celery_unsupported_content_type",
            format!(
                "content encoding {} is not supported: Warren reads utf-8 JSON only",
                encoding.as_str()
            ),
        ));
    }
    let Some(name) = contract::header_str(hdrs, "task").filter(|s| !s.is_empty()) else {
        return Err(refuse(
            "celery_protocol",
            "the message has no `task` header: it is not a Celery protocol 2 message \
             (protocol 1 is not supported; set task_protocol = 2, Celery's default)"
                .to_owned(),
        ));
    };
    let Some(id) = id.clone() else {
        return Err(refuse(
            "celery_protocol",
            format!("the {name} message has no `id` header"),
        ));
    };
    let Some(map) = tasks.iter().find(|t| t.name == name) else {
        return Err(Refused {
            // A chain after it will not run either.
            chain_ids: read_body(body)
                .map(|(_, _, embed)| canvas::chain_ids(&embed))
                .unwrap_or_default(),
            ..refuse(
                "celery_unmapped_task",
                format!(
                    "no Warren task type is mapped to the Celery task {name}; add a [[celery.tasks]] entry \
                     with name = \"{name}\""
                ),
            )
        });
    };
    let (args, kwargs, embed) = read_body(body).map_err(|e| refuse("celery_invalid_body", e))?;
    // From here on, a refusal is the whole chain's.
    let chain_ids = canvas::chain_ids(&embed);
    let refuse = |kind: &'static str, reason: String| Refused {
        chain_ids: chain_ids.clone(),
        ..refuse(kind, reason)
    };
    let chain = canvas::steps(&embed, tasks).map_err(|(kind, reason)| refuse(kind, reason))?;
    let body = map_arguments(map, args, kwargs).map_err(|e| refuse("celery_invalid_body", e))?;
    let eta = time_header(hdrs, "eta").map_err(|e| refuse("celery_invalid_header", e))?;
    let expires = time_header(hdrs, "expires").map_err(|e| refuse("celery_invalid_header", e))?;
    let retries = contract::header_i64(hdrs, "retries").unwrap_or(0);
    let retries = u32::try_from(retries.max(0)).unwrap_or(u32::MAX);
    Ok(Converted {
        id,
        name,
        task_type: map.task_type.clone(),
        body,
        priority: properties.priority().map(|p| p.min(MAX_PRIORITY)),
        eta,
        expires,
        retries,
        root_id: contract::header_str(hdrs, "root_id").filter(|s| !s.is_empty()),
        parent_id: contract::header_str(hdrs, "parent_id").filter(|s| !s.is_empty()),
        chain,
    })
}

type Body = (Vec<Value>, Map<String, Value>, Map<String, Value>);

/// `[args, kwargs, embed]`.
fn read_body(body: &[u8]) -> Result<Body, String> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        format!("the body is not JSON ({e}); Celery protocol 2 sends [args, kwargs, embed]")
    })?;
    let Value::Array(mut parts) = value else {
        return Err(
            "the body is not a JSON array; Celery protocol 2 sends [args, kwargs, embed]"
                .to_owned(),
        );
    };
    if parts.len() != 3 {
        return Err(format!(
            "the body is an array of {} items; Celery protocol 2 sends [args, kwargs, embed]",
            parts.len()
        ));
    }
    let embed = parts.pop().unwrap_or(Value::Null);
    let kwargs = parts.pop().unwrap_or(Value::Null);
    let args = parts.pop().unwrap_or(Value::Null);
    let Value::Array(args) = args else {
        return Err("args (the body's first item) is not a JSON array".to_owned());
    };
    let Value::Object(kwargs) = kwargs else {
        return Err("kwargs (the body's second item) is not a JSON object".to_owned());
    };
    let embed = match embed {
        Value::Object(embed) => embed,
        Value::Null => Map::new(),
        _ => return Err("embed (the body's third item) is not a JSON object".to_owned()),
    };
    Ok((args, kwargs, embed))
}

/// The Warren body: positional arguments by the map's `args` names, keyword
/// arguments under their `kwargs` rename or their own name.
pub(super) fn map_arguments(
    map: &CeleryTaskMap,
    args: Vec<Value>,
    kwargs: Map<String, Value>,
) -> Result<Value, String> {
    if args.len() > map.args.len() {
        return Err(format!(
            "{} takes at most {} positional argument(s) ({}), the message has {}",
            map.name,
            map.args.len(),
            map.args.join(", "),
            args.len()
        ));
    }
    let mut body = Map::new();
    for (field, value) in map.args.iter().zip(args) {
        body.insert(field.clone(), value);
    }
    for (key, value) in kwargs {
        let field = map.kwargs.get(&key).cloned().unwrap_or(key);
        if body.contains_key(&field) {
            return Err(format!(
                "{}: the field {field} is given both positionally and as a keyword argument",
                map.name
            ));
        }
        body.insert(field, value);
    }
    Ok(Value::Object(body))
}

/// An ISO 8601 time header (`eta`, `expires`); naive times are UTC, as
/// Celery's `enable_utc` (the default) means.
fn time_header(headers: Option<&FieldTable>, name: &str) -> Result<Option<DateTime<Utc>>, String> {
    let Some(value) = headers.and_then(|h| h.inner().get(name)) else {
        return Ok(None);
    };
    let text = match value {
        AMQPValue::Void => return Ok(None),
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        AMQPValue::ShortString(s) => s.to_string(),
        other => {
            return Err(format!(
                "the `{name}` header is not a time string ({other:?})"
            ));
        }
    };
    parse_time(&text)
        .map(Some)
        .ok_or_else(|| format!("the `{name}` header {text:?} is not an ISO 8601 time"))
}

fn parse_time(text: &str) -> Option<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Some(t.with_timezone(&Utc));
    }
    ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"]
        .iter()
        .find_map(|f| NaiveDateTime::parse_from_str(text, f).ok())
        .map(|t| t.and_utc())
}

/// The map of Celery names, for settings checks.
pub(super) fn check_tasks(tasks: &[CeleryTaskMap]) -> Result<(), String> {
    let mut seen = BTreeMap::new();
    for (i, t) in tasks.iter().enumerate() {
        if t.name.trim().is_empty() {
            return Err(format!("celery.tasks[{i}].name is empty"));
        }
        if t.task_type.trim().is_empty() {
            return Err(format!("celery.tasks[{i}].type is empty ({})", t.name));
        }
        if let Some(j) = seen.insert(t.name.as_str(), i) {
            return Err(format!(
                "celery.tasks[{j}] and celery.tasks[{i}] both map {}",
                t.name
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
// A failing unwrap is how a test reports failure.
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn send_email() -> Vec<CeleryTaskMap> {
        vec![CeleryTaskMap {
            name: "app.tasks.send_email_task".into(),
            task_type: "email.send".into(),
            args: vec!["to".into(), "subject".into(), "text".into()],
            kwargs: [("body".to_owned(), "text".to_owned())].into(),
        }]
    }

    fn props(headers: &[(&str, AMQPValue)]) -> BasicProperties {
        let mut table = FieldTable::default();
        for (k, v) in headers {
            table.insert((*k).into(), v.clone());
        }
        BasicProperties::default()
            .with_content_type(JSON.into())
            .with_content_encoding("utf-8".into())
            .with_correlation_id("id-1".into())
            .with_priority(7)
            .with_headers(table)
    }

    fn s(v: &str) -> AMQPValue {
        AMQPValue::LongString(v.into())
    }

    fn celery_headers() -> Vec<(&'static str, AMQPValue)> {
        vec![
            ("lang", s("py")),
            ("task", s("app.tasks.send_email_task")),
            ("id", s("id-1")),
            ("eta", s("2026-11-30T04:10:00.250000+00:00")),
            ("expires", AMQPValue::Void),
            ("retries", AMQPValue::LongLongInt(0)),
            ("root_id", s("id-1")),
            ("parent_id", AMQPValue::Void),
        ]
    }

    #[test]
    fn a_celery_message_becomes_a_warren_task() {
        let body = br#"[["ada@example.com", "Hi"], {"body": "Hello"}, {"callbacks": null, "errbacks": null, "chain": null, "chord": null}]"#;
        let c = convert(&props(&celery_headers()), body, &send_email()).unwrap();
        assert_eq!(c.id, "id-1");
        assert_eq!(c.task_type, "email.send");
        assert_eq!(
            c.body,
            serde_json::json!({"to": "ada@example.com", "subject": "Hi", "text": "Hello"})
        );
        assert_eq!(c.priority, Some(7));
        assert_eq!(c.eta.unwrap().to_rfc3339(), "2026-11-30T04:10:00.250+00:00");
        assert_eq!(c.expires, None);
        assert_eq!(c.root_id.as_deref(), Some("id-1"));
        assert_eq!(c.parent_id, None);
    }

    #[test]
    fn what_is_not_supported_is_refused_with_its_kind() {
        let tasks = send_email();
        let ok_body = br#"[[], {}, {}]"#;
        let mut pickle = props(&celery_headers());
        pickle = pickle.with_content_type("application/x-python-serialize".into());
        let refused = convert(&pickle, ok_body, &tasks).unwrap_err();
        assert_eq!(refused.kind, "celery_unsupported_content_type");
        assert!(refused.reason.contains("pickle"), "{}", refused.reason);
        assert_eq!(refused.id.as_deref(), Some("id-1"));

        let mut headers = celery_headers();
        headers[1] = ("task", s("app.tasks.other"));
        let refused = convert(&props(&headers), ok_body, &tasks).unwrap_err();
        assert_eq!(refused.kind, "celery_unmapped_task");
        assert!(refused.reason.contains("app.tasks.other"));
        let chained = br#"[[], {}, {"chain": [{"task": "x", "options": {"task_id": "id-2"}}]}]"#;
        let refused = convert(&props(&headers), chained, &tasks).unwrap_err();
        assert_eq!(refused.chain_ids, ["id-2"]);

        for body in [
            &b"{not json"[..],
            br#"{"args": []}"#,
            br#"[[], {}]"#,
            br#"[{}, {}, {}]"#,
            br#"[[1, 2, 3, 4], {}, {}]"#,
            br#"[["a"], {"to": "b"}, {}]"#,
        ] {
            let refused = convert(&props(&celery_headers()), body, &tasks).unwrap_err();
            assert_eq!(refused.kind, "celery_invalid_body", "{refused:?}");
        }
        // A chain with a step no entry maps: the whole chain is refused,
        // its ids named so their results say why.
        let chained = br#"[[], {}, {"chain": [{"task": "x", "args": [], "kwargs": {}, "options": {"task_id": "id-2"}}]}]"#;
        let refused = convert(&props(&celery_headers()), chained, &tasks).unwrap_err();
        assert_eq!(refused.kind, "celery_unmapped_task");
        assert!(refused.reason.contains("step 2 of the Celery chain"));
        assert_eq!(refused.chain_ids, ["id-2"]);
        let chord = br#"[[], {}, {"chord": {"task": "x"}}]"#;
        let refused = convert(&props(&celery_headers()), chord, &tasks).unwrap_err();
        assert_eq!(refused.kind, "celery_unsupported_workflow");

        let mut headers = celery_headers();
        headers[3] = ("eta", s("tomorrow"));
        let refused = convert(&props(&headers), ok_body, &tasks).unwrap_err();
        assert_eq!(refused.kind, "celery_invalid_header");

        let headers: Vec<_> = celery_headers()
            .into_iter()
            .filter(|(k, _)| *k != "task")
            .collect();
        let refused = convert(&props(&headers), ok_body, &tasks).unwrap_err();
        assert_eq!(refused.kind, "celery_protocol");
    }

    #[test]
    fn naive_times_are_utc_and_priorities_are_capped() {
        let mut headers = celery_headers();
        headers[3] = ("eta", s("2026-11-30T04:10:00.5"));
        let p = props(&headers).with_priority(200);
        let c = convert(&p, br#"[[], {}, null]"#, &send_email()).unwrap();
        assert_eq!(c.eta.unwrap().timestamp_millis() % 1000, 500);
        assert_eq!(c.priority, Some(9));
    }

    #[test]
    fn duplicate_and_empty_mappings_are_refused() {
        let mut tasks = send_email();
        assert!(check_tasks(&tasks).is_ok());
        tasks.push(tasks[0].clone());
        assert!(check_tasks(&tasks).unwrap_err().contains("both map"));
    }
}
