//! Celery's canvas in a message's `embed`, read into the steps of a Warren
//! chain, or refused with a reason.
//!
//! A Celery chain `a.s(...) | b.s(...) | c.s(...)` arrives as `a`'s
//! message with `embed.chain` holding `c` and `b`'s signatures, in reverse
//! order (a Celery worker pops the next step off the end). A `link`
//! callback arrives in `embed.callbacks` (or, on a chain's last step, in
//! that signature's `options.link`). Each signature is mapped through the
//! same `[[celery.tasks]]` entries as a message, and becomes a
//! [`Step`] that keeps the signature's `task_id`:
//!
//! - A signature that takes the previous result (`.s()`) gets it the way
//!   Celery passes it, as its first positional argument: the result goes
//!   into the field its entry names first in `args` ([`Step::result_to`]),
//!   and the signature's own arguments fill the fields after it.
//! - An immutable signature (`.si()`) gets no result: its arguments are
//!   mapped as a message's are.
//!
//! What a Warren chain cannot run as Celery would is refused, never
//! guessed at: errbacks (`link_error`), chords, groups, several callbacks
//! (Celery runs them side by side), a callback on a step that is not the
//! chain's last, and a chained signature with its own `countdown`, `eta`
//! or `expires`.

use serde_json::{Map, Value};

use super::CeleryTaskMap;
use super::message::map_arguments;
use crate::contract::MAX_PRIORITY;
use crate::workflow::Step;

/// Why a message's workflow is refused: the error kind and the reason.
pub(super) type Refusal = (&'static str, String);

/// The kind of a workflow Warren does not run.
pub(super) const UNSUPPORTED: &str = "celery_unsupported_workflow";

/// The Celery task ids of every signature in `embed.chain`, in the order
/// they would run: a refused chain's results are written under each.
pub(super) fn chain_ids(embed: &Map<String, Value>) -> Vec<String> {
    let Some(Value::Array(chain)) = embed.get("chain") else {
        return Vec::new();
    };
    chain
        .iter()
        .rev()
        .filter_map(|sig| sig.pointer("/options/task_id")?.as_str())
        .filter(|id| !id.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The steps to run after the message's own task, in order: its chain,
/// then the chain's last `link` callback; empty when `embed` holds none.
pub(super) fn steps(
    embed: &Map<String, Value>,
    tasks: &[CeleryTaskMap],
) -> Result<Vec<Step>, Refusal> {
    if present(embed.get("chord")) {
        return Err((
            UNSUPPORTED,
            "the message is a chord's header task (embed.chord), which the Celery bridge does not \
             run: publish a Warren chord instead (docs/workflows.md)"
                .to_owned(),
        ));
    }
    if present(embed.get("errbacks")) {
        return Err((UNSUPPORTED, errbacks_reason("the task")));
    }
    let chain = match embed.get("chain") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(chain)) => chain.iter().rev().collect(),
        Some(_) => {
            return Err((
                "celery_invalid_body",
                "embed.chain is not a list of signatures".to_owned(),
            ));
        }
    };
    // The links of the message's own task, then of each chained signature:
    // only the chain's last task may have one (a callback is its next step).
    let mut links = links_of(embed.get("callbacks"), "the task")?;
    let mut steps = Vec::with_capacity(chain.len() + 1);
    for (i, sig) in chain.into_iter().enumerate() {
        let n = i + 2;
        let place = format!("step {n} of the Celery chain");
        if let Some(link) = links.first() {
            return Err(link_not_last(&place, link));
        }
        let sig = signature(sig, &place)?;
        links = links_of(sig.options.get("link"), &place)?;
        if present(sig.options.get("link_error")) {
            return Err((UNSUPPORTED, errbacks_reason(&place)));
        }
        steps.push(step(&sig, tasks, &place, true)?);
    }
    match links.as_slice() {
        [] => {}
        [link] => {
            let place = "the link callback".to_owned();
            let sig = signature(link, &place)?;
            if present(sig.options.get("link")) || present(sig.options.get("link_error")) {
                return Err((
                    UNSUPPORTED,
                    "the link callback has callbacks of its own, which the Celery bridge does \
                     not run"
                        .to_owned(),
                ));
            }
            // Celery assigns a callback's id only when it sends it: here the
            // callback is `{first task id}.{n}`.
            let mut step = step(&sig, tasks, &place, false)?;
            step.id = None;
            steps.push(step);
        }
        several => {
            return Err((
                UNSUPPORTED,
                format!(
                    "the task has {} link callbacks, which Celery runs side by side; a Warren \
                     chain runs one step after another, so the Celery bridge runs one callback \
                     at most (use a chain, or a Warren group)",
                    several.len()
                ),
            ));
        }
    }
    Ok(steps)
}

/// A signature dict: `{"task", "args", "kwargs", "options", "subtask_type",
/// "immutable"}`.
struct Signature<'a> {
    task: &'a str,
    args: Vec<Value>,
    kwargs: Map<String, Value>,
    options: &'a Map<String, Value>,
    immutable: bool,
}

fn signature<'a>(sig: &'a Value, place: &str) -> Result<Signature<'a>, Refusal> {
    let invalid = |what: &str| ("celery_invalid_body", format!("{place}: {what}"));
    let Value::Object(sig) = sig else {
        return Err(invalid("the signature is not a JSON object"));
    };
    if let Some(kind) = sig.get("subtask_type").and_then(Value::as_str) {
        return Err((
            UNSUPPORTED,
            format!(
                "{place} is a Celery {kind}, which the Celery bridge does not run inside a chain: \
                 publish a Warren workflow instead (docs/workflows.md)"
            ),
        ));
    }
    let Some(task) = sig
        .get("task")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
    else {
        return Err(invalid("the signature has no task name"));
    };
    let args = match sig.get("args") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a.clone(),
        Some(_) => return Err(invalid("the signature's args are not a list")),
    };
    let kwargs = match sig.get("kwargs") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(k)) => k.clone(),
        Some(_) => return Err(invalid("the signature's kwargs are not an object")),
    };
    static EMPTY: std::sync::LazyLock<Map<String, Value>> = std::sync::LazyLock::new(Map::new);
    let options = match sig.get("options") {
        None | Some(Value::Null) => &*EMPTY,
        Some(Value::Object(o)) => o,
        Some(_) => return Err(invalid("the signature's options are not an object")),
    };
    for key in ["countdown", "eta", "expires"] {
        if present(options.get(key)) {
            return Err((
                UNSUPPORTED,
                format!(
                    "{place} ({task}) has its own {key}, which the Celery bridge does not honour \
                     in a chain: a Warren step runs as soon as the step before succeeds"
                ),
            ));
        }
    }
    for key in ["chord", "group_id"] {
        if present(options.get(key)) {
            return Err((
                UNSUPPORTED,
                format!(
                    "{place} ({task}) belongs to a Celery group or chord ({key}), which the Celery bridge does not run"
                ),
            ));
        }
    }
    Ok(Signature {
        task,
        args,
        kwargs,
        options,
        immutable: sig
            .get("immutable")
            .and_then(Value::as_bool)
            .unwrap_or(false),
    })
}

/// The Warren step of `sig`: mapped by its `[[celery.tasks]]` entry, with
/// the previous result as its first positional argument unless it is
/// immutable.
fn step(
    sig: &Signature<'_>,
    tasks: &[CeleryTaskMap],
    place: &str,
    keep_id: bool,
) -> Result<Step, Refusal> {
    let Some(map) = tasks.iter().find(|t| t.name == sig.task) else {
        return Err((
            "celery_unmapped_task",
            format!(
                "{place} is the Celery task {name}, which no Warren task type is mapped to; the \
                 whole workflow is parked and none of it runs (add a [[celery.tasks]] entry with \
                 name = \"{name}\")",
                name = sig.task
            ),
        ));
    };
    let invalid = |e: String| ("celery_invalid_body", format!("{place}: {e}"));
    let (body, result_to) = if sig.immutable {
        (
            map_arguments(map, sig.args.clone(), sig.kwargs.clone()).map_err(invalid)?,
            None,
        )
    } else {
        let Some(first) = map.args.first() else {
            return Err(invalid(format!(
                "{} takes the previous step's result as its first positional argument, as Celery \
                 passes it, but its [[celery.tasks]] entry names no args to put it in: name the \
                 field first in args, or make the signature immutable (.si())",
                map.name
            )));
        };
        // The result is args[0]: mapped with a placeholder there, which
        // the worker replaces with the result when it publishes the step.
        let mut args = Vec::with_capacity(sig.args.len() + 1);
        args.push(Value::Null);
        args.extend(sig.args.iter().cloned());
        let mut body = map_arguments(map, args, sig.kwargs.clone()).map_err(|e| {
            invalid(format!(
                "{e} (counting the previous step's result, which Celery passes first)"
            ))
        })?;
        if let Some(object) = body.as_object_mut() {
            object.remove(first);
        }
        (body, Some(first.clone()))
    };
    let mut step = Step::new(map.task_type.clone(), body);
    step.result_to = result_to;
    step.celery_task = Some(sig.task.to_owned());
    step.priority = sig
        .options
        .get("priority")
        .and_then(Value::as_u64)
        .map(|p| u8::try_from(p.min(u64::from(MAX_PRIORITY))).unwrap_or(MAX_PRIORITY));
    if keep_id {
        step.id = sig
            .options
            .get("task_id")
            .and_then(Value::as_str)
            .filter(|id| !id.is_empty())
            .map(str::to_owned);
    }
    Ok(step)
}

/// The `link` signatures of a task (`embed.callbacks` or a signature's
/// `options.link`).
fn links_of<'a>(value: Option<&'a Value>, place: &str) -> Result<Vec<&'a Value>, Refusal> {
    match value {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(links)) => Ok(links.iter().collect()),
        Some(_) => Err((
            "celery_invalid_body",
            format!("{place}: its link callbacks are not a list of signatures"),
        )),
    }
}

fn link_not_last(place: &str, link: &Value) -> Refusal {
    let name = link.get("task").and_then(Value::as_str).unwrap_or("?");
    (
        UNSUPPORTED,
        format!(
            "the step before {place} has a link callback ({name}), which Celery would run beside \
             the chain; the Celery bridge runs a callback only after a chain's last step"
        ),
    )
}

fn errbacks_reason(place: &str) -> String {
    format!(
        "{place} has errbacks (link_error), which the Celery bridge does not run: a Warren task \
         that fails for good is parked with its reason and its Celery result is FAILURE; handle \
         failures from the parking lot or the task events instead (docs/celery.md)"
    )
}

fn present(value: Option<&Value>) -> bool {
    match value {
        None | Some(Value::Null) => false,
        Some(Value::Array(a)) => !a.is_empty(),
        Some(Value::Object(o)) => !o.is_empty(),
        Some(_) => true,
    }
}

#[cfg(test)]
// A failing unwrap is how a test reports failure.
#[allow(clippy::unwrap_used)]
mod tests {
    use serde_json::json;

    use super::*;

    fn tasks() -> Vec<CeleryTaskMap> {
        vec![
            CeleryTaskMap {
                name: "app.tasks.send_email_task".into(),
                task_type: "email.send".into(),
                args: vec!["to".into(), "subject".into(), "text".into()],
                kwargs: [("body".to_owned(), "text".to_owned())].into(),
            },
            CeleryTaskMap {
                name: "app.tasks.send_receipt".into(),
                task_type: "email.send".into(),
                args: vec!["variables".into(), "to".into()],
                kwargs: Default::default(),
            },
            CeleryTaskMap {
                name: "app.tasks.kw_only".into(),
                task_type: "x.y".into(),
                args: vec![],
                kwargs: Default::default(),
            },
        ]
    }

    fn embed(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    /// `(send_email_task.s(...) | send_receipt.s("ops@x", template="sent") |
    /// send_email_task.si("z@x", "S", "T")).delay()`, as Celery 5.5 writes it.
    fn chain_embed() -> Value {
        json!({"callbacks": null, "errbacks": null, "chord": null, "chain": [
            {"task": "app.tasks.send_email_task", "args": ["z@x", "S", "T"], "kwargs": {},
             "options": {"task_id": "id-3", "reply_to": "r"}, "subtask_type": null, "immutable": true},
            {"task": "app.tasks.send_receipt", "args": ["ops@x"], "kwargs": {"template": "sent"},
             "options": {"task_id": "id-2", "reply_to": "r"}, "subtask_type": null, "immutable": false}
        ]})
    }

    #[test]
    fn a_celery_chain_becomes_warren_steps_in_order_keeping_their_ids() {
        let e = embed(chain_embed());
        assert_eq!(chain_ids(&e), ["id-2", "id-3"]);
        let steps = steps(&e, &tasks()).unwrap();
        assert_eq!(steps.len(), 2);
        assert_eq!(steps[0].id.as_deref(), Some("id-2"));
        assert_eq!(steps[0].task_type, "email.send");
        assert_eq!(steps[0].result_to.as_deref(), Some("variables"));
        assert_eq!(steps[0].body, json!({"to": "ops@x", "template": "sent"}));
        assert_eq!(
            steps[0].celery_task.as_deref(),
            Some("app.tasks.send_receipt")
        );
        // Immutable: no result, its own arguments from args[0].
        assert_eq!(steps[1].id.as_deref(), Some("id-3"));
        assert_eq!(steps[1].result_to, None);
        assert_eq!(
            steps[1].body,
            json!({"to": "z@x", "subject": "S", "text": "T"})
        );
    }

    #[test]
    fn one_link_callback_is_a_step_after_the_task_or_the_chain() {
        let e = embed(json!({"callbacks": [
            {"task": "app.tasks.send_receipt", "args": ["ops@x"], "kwargs": {}, "options": {},
             "subtask_type": null, "immutable": false}], "chain": null}));
        let steps = steps(&e, &tasks()).unwrap();
        assert_eq!(steps.len(), 1);
        assert_eq!(steps[0].id, None);
        assert_eq!(steps[0].result_to.as_deref(), Some("variables"));

        let mut c = chain_embed();
        c["chain"][0]["options"]["link"] = json!([{"task": "app.tasks.send_receipt",
            "args": ["ops@x"], "kwargs": {}, "options": {}, "immutable": false}]);
        assert_eq!(steps_of(c).unwrap().len(), 3);
    }

    fn steps_of(v: Value) -> Result<Vec<Step>, Refusal> {
        steps(&embed(v), &tasks())
    }

    #[test]
    fn what_a_warren_chain_cannot_run_is_refused_with_its_reason() {
        let mut c = chain_embed();
        c["chain"][0]["task"] = json!("app.tasks.not_mapped");
        let (kind, reason) = steps_of(c).unwrap_err();
        assert_eq!(kind, "celery_unmapped_task");
        assert!(reason.contains("step 3 of the Celery chain"), "{reason}");
        assert!(reason.contains("app.tasks.not_mapped"), "{reason}");

        let cases = [
            (
                json!({"errbacks": [{"task": "app.tasks.send_receipt"}]}),
                "errbacks",
            ),
            (json!({"chord": {"task": "x"}}), "chord"),
            (
                json!({"callbacks": [{"task": "app.tasks.send_receipt"}, {"task": "app.tasks.send_receipt"}]}),
                "2 link callbacks",
            ),
            (
                json!({"chain": [{"task": "app.tasks.send_receipt", "options": {"countdown": 5}}]}),
                "countdown",
            ),
            (
                json!({"chain": [{"task": "celery.group", "subtask_type": "group"}]}),
                "group",
            ),
            (
                json!({"callbacks": [{"task": "app.tasks.send_receipt"}],
                       "chain": [{"task": "app.tasks.send_receipt"}]}),
                "only after a chain's last step",
            ),
        ];
        for (e, says) in cases {
            let (kind, reason) = steps_of(e.clone()).unwrap_err();
            assert_eq!(kind, UNSUPPORTED, "{e}");
            assert!(reason.contains(says), "{e}: {reason}");
        }

        let mut c = chain_embed();
        c["chain"][1]["options"]["link_error"] = json!([{"task": "app.tasks.send_receipt"}]);
        assert_eq!(steps_of(c).unwrap_err().0, UNSUPPORTED);

        // The result has nowhere to go; too many arguments with it; a
        // keyword argument in the result's field.
        for (sig, says) in [
            (json!({"task": "app.tasks.kw_only"}), "names no args"),
            (
                json!({"task": "app.tasks.send_receipt", "args": ["a", "b"]}),
                "counting the previous step's result",
            ),
            (
                json!({"task": "app.tasks.send_receipt", "kwargs": {"variables": {}}}),
                "both positionally",
            ),
        ] {
            let (kind, reason) = steps_of(json!({"chain": [sig]})).unwrap_err();
            assert_eq!(kind, "celery_invalid_body");
            assert!(reason.contains(says), "{reason}");
        }
    }
}
