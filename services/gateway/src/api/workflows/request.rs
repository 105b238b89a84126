//! `POST /v1/workflows`: the request's JSON, and its parsing into the
//! shared workflow types (`warren::workflow::{Chain, Group, Chord}`),
//! naming the field at fault (`steps[2].type`, `members[0].priority`,
//! `callback.body`).
//!
//! The JSON is a tree: a workflow has `kind` and its `steps` (a chain) or
//! `members` (a group; a chord adds `callback` and `on_failure`); each
//! step is a task (`type`, `body`, `result_to`, `priority`). A step that
//! is itself a workflow (an object with `kind`: a group or chord as a
//! chain step, a chain as a chord's callback) is the nesting of issue 14,
//! refused for now with `nesting_not_supported`.

use serde::Deserialize;
use serde_json::Value;
use utoipa::ToSchema;
use warren::workflow::{Chain, ChainError, Chord, Group, OnFailure, Step, group};

use crate::enqueue;
use crate::problem::{self, Problem};

/// What kind of workflow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum KindRequest {
    /// `steps` one after another, each result passed on where the next
    /// step's `result_to` says.
    Chain,
    /// `members` in parallel.
    Group,
    /// `members` in parallel, then `callback` once all are final.
    Chord,
}

/// A chord's policy when a member was dead-lettered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnFailureRequest {
    /// Run the callback with the failures among the results (default).
    Run,
    /// Park the callback with the failures as its reason.
    Skip,
}

/// `POST /v1/workflows`: a chain, a group or a chord.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "kind": "chain",
    "id": "order-1",
    "steps": [
        {"type": "pipeline.validate", "body": {"record": {"id": "r1", "value": 7}}},
        {"type": "pipeline.process", "body": {"factor": 3}, "result_to": "input"},
        {"type": "pipeline.save", "body": {}, "result_to": "processed"}
    ]
}))]
pub struct WorkflowRequest {
    pub kind: KindRequest,
    /// The workflow's id; default a new UUID v7. 1-128 characters of
    /// `[A-Za-z0-9._~:-]`, not ending in `.callback` (a chord's callback
    /// id: a workflow of that id would loop back into a callback).
    #[serde(default)]
    pub id: Option<String>,
    /// A chain's steps, in order (1 to `workflows.max_steps`).
    #[serde(default)]
    #[schema(value_type = Option<Vec<StepRequest>>)]
    pub steps: Option<Vec<Value>>,
    /// A group's or chord's members (1 to `workflows.max_steps`).
    #[serde(default)]
    #[schema(value_type = Option<Vec<StepRequest>>)]
    pub members: Option<Vec<Value>>,
    /// A chord's callback; its body (an object) receives the members'
    /// outcomes in its `result_to` field (default `results`).
    #[serde(default)]
    #[schema(value_type = Option<StepRequest>)]
    pub callback: Option<Value>,
    /// A chord's policy when a member was dead-lettered.
    #[serde(default)]
    pub on_failure: Option<OnFailureRequest>,
}

/// One task of a workflow.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StepRequest {
    /// The task type (routing key); a worker must have declared its queue.
    #[serde(rename = "type")]
    pub task_type: String,
    /// The task's body; default `{}`. An object where `result_to` is set.
    #[serde(default = "empty_object")]
    #[schema(value_type = Option<Object>)]
    pub body: Value,
    /// Chain steps after the first: the field of `body` that receives the
    /// previous step's result. A chord's callback: the field that receives
    /// the members' outcomes (default `results`).
    #[serde(default)]
    pub result_to: Option<String>,
    /// 0-9; unset, a chain step runs at the priority of the step before.
    #[serde(default)]
    #[schema(minimum = 0, maximum = 9)]
    pub priority: Option<u8>,
}

fn empty_object() -> Value {
    Value::Object(serde_json::Map::new())
}

/// A request parsed and checked, ready to publish.
#[derive(Debug)]
pub enum Parsed {
    Chain(Chain),
    Group(Group),
    Chord(Chord),
}

/// A checked workflow: its id, the request's shape, and each task with
/// the field path it came from.
#[derive(Debug)]
pub struct Checked {
    pub id: String,
    pub workflow: Parsed,
    /// `(field of the step's type, task type)` of every task, for the
    /// checks that need the broker (is a worker queue there?).
    pub types: Vec<(String, String)>,
}

impl Checked {
    /// Every step or member, with its index (the callback is separate).
    pub fn kind_name(&self) -> &'static str {
        match self.workflow {
            Parsed::Chain(_) => "chain",
            Parsed::Group(_) => "group",
            Parsed::Chord(_) => "chord",
        }
    }
}

/// Parses and checks a request, as far as it can be without the broker.
pub fn parse(value: Value, max_steps: usize) -> Result<Checked, Problem> {
    let request: WorkflowRequest =
        serde_path_to_error::deserialize(value).map_err(|e| problem::from_serde(e, ""))?;
    let id = workflow_id(request.id.as_deref())?;
    let (list_field, list) = match request.kind {
        KindRequest::Chain => {
            refuse_field(
                request.members.is_some(),
                "members",
                "a chain has steps, not members",
            )?;
            refuse_field(
                request.callback.is_some(),
                "callback",
                "a chain has no callback (make it a chord)",
            )?;
            refuse_field(
                request.on_failure.is_some(),
                "on_failure",
                "on_failure is a chord's",
            )?;
            ("steps", request.steps)
        }
        KindRequest::Group | KindRequest::Chord => {
            refuse_field(
                request.steps.is_some(),
                "steps",
                "a group or chord has members, not steps",
            )?;
            if request.kind == KindRequest::Group {
                refuse_field(
                    request.callback.is_some(),
                    "callback",
                    "a group has no callback (make it a chord)",
                )?;
                refuse_field(
                    request.on_failure.is_some(),
                    "on_failure",
                    "on_failure is a chord's",
                )?;
            }
            ("members", request.members)
        }
    };
    let Some(list) = list else {
        return Err(Problem::invalid(
            "missing_field",
            list_field,
            format!("a {} needs {list_field}", kind_word(request.kind)),
        ));
    };
    if list.is_empty() {
        return Err(Problem::invalid(
            "no_steps",
            list_field,
            format!("{list_field} is empty; a workflow needs at least one"),
        ));
    }
    if list.len() > max_steps {
        return Err(Problem::invalid(
            "too_many_steps",
            list_field,
            format!(
                "{list_field} has {} entries; at most {max_steps} are allowed (workflows.max_steps)",
                list.len()
            ),
        ));
    }
    let mut types = Vec::with_capacity(list.len() + 1);
    let mut steps = Vec::with_capacity(list.len());
    for (i, raw) in list.into_iter().enumerate() {
        let field = format!("{list_field}[{i}]");
        let step = step(raw, &field)?;
        types.push((format!("{field}.type"), step.task_type.clone()));
        steps.push(step);
    }
    let workflow = match request.kind {
        KindRequest::Chain => {
            let chain = Chain::new(steps).id(&id);
            chain.check(max_steps).map_err(chain_problem)?;
            Parsed::Chain(chain)
        }
        KindRequest::Group | KindRequest::Chord => {
            for (i, s) in steps.iter().enumerate() {
                if s.result_to.is_some() {
                    return Err(Problem::invalid(
                        "invalid_value",
                        &format!("members[{i}].result_to"),
                        "a member has no previous result; result_to is for chain steps and callbacks",
                    ));
                }
            }
            let g = group(steps).id(&id);
            if request.kind == KindRequest::Group {
                Parsed::Group(g)
            } else {
                let Some(raw) = request.callback else {
                    return Err(Problem::invalid(
                        "missing_field",
                        "callback",
                        "a chord needs a callback",
                    ));
                };
                let callback = step(raw, "callback")?;
                if !callback.body.is_object() {
                    return Err(Problem::invalid(
                        "invalid_value",
                        "callback.body",
                        "a callback's body must be a JSON object (the members' outcomes go into it)",
                    ));
                }
                if callback.result_to.as_deref() == Some("") {
                    return Err(Problem::invalid(
                        "invalid_value",
                        "callback.result_to",
                        "the field name is empty",
                    ));
                }
                types.push(("callback.type".to_owned(), callback.task_type.clone()));
                let policy = match request.on_failure {
                    Some(OnFailureRequest::Skip) => OnFailure::Skip,
                    _ => OnFailure::Run,
                };
                Parsed::Chord(g.then(callback).on_failure(policy))
            }
        }
    };
    Ok(Checked {
        id,
        workflow,
        types,
    })
}

fn kind_word(kind: KindRequest) -> &'static str {
    match kind {
        KindRequest::Chain => "chain",
        KindRequest::Group => "group",
        KindRequest::Chord => "chord",
    }
}

fn refuse_field(given: bool, field: &str, why: &str) -> Result<(), Problem> {
    if given {
        return Err(Problem::invalid("unexpected_field", field, why.to_owned()));
    }
    Ok(())
}

/// The workflow's id: as for a task, and not a callback's id.
fn workflow_id(raw: Option<&str>) -> Result<String, Problem> {
    let id = enqueue::task_id(raw, "id")?;
    if id == "callback" || id.ends_with(".callback") {
        return Err(Problem::invalid(
            "callback_cycle",
            "id",
            format!(
                "id {id:?} is a chord callback's id ({{group}}.callback); a workflow of that id \
                 would be its own or another chord's callback, a cycle. Choose an id not ending in .callback"
            ),
        ));
    }
    Ok(id)
}

/// One step: a task, or (refused for now) a nested workflow.
fn step(raw: Value, field: &str) -> Result<Step, Problem> {
    if raw.get("kind").is_some() {
        return Err(Problem::invalid(
            "nesting_not_supported",
            field,
            format!(
                "{field} is a nested workflow (it has a kind); nesting (a group or chord as a chain step, \
                 a chain as a chord's callback) is not supported yet: give a task (type, body, result_to, priority)"
            ),
        ));
    }
    let prefix = format!("{field}.");
    let s: StepRequest =
        serde_path_to_error::deserialize(raw).map_err(|e| problem::from_serde(e, &prefix))?;
    enqueue::task_type(&s.task_type, &format!("{field}.type"))?;
    if let Some(p) = s.priority {
        enqueue::priority(Some(p), &format!("{field}.priority"))?;
    }
    Ok(Step {
        task_type: s.task_type,
        body: s.body,
        result_to: s.result_to,
        priority: s.priority,
    })
}

/// A chain the shared checks refuse, naming the field.
fn chain_problem(e: ChainError) -> Problem {
    let field = e.field().unwrap_or_default();
    let slug = match &e {
        ChainError::NoSteps => "no_steps",
        ChainError::TooManySteps { .. } => "too_many_steps",
        ChainError::TooLarge { .. } => "too_large",
        _ => "invalid_value",
    };
    Problem::invalid(slug, &field, e.to_string())
}

#[cfg(test)]
// A failing unwrap is how a test reports failure.
#[allow(clippy::unwrap_used)]
mod tests {
    use serde_json::json;

    use super::*;

    fn refused(v: Value) -> (String, Option<String>) {
        let p = parse(v, 3).unwrap_err();
        assert_eq!(p.status, 422, "{p:?}");
        (p.slug().to_owned(), p.field.clone())
    }

    fn t(ty: &str) -> Value {
        json!({"type": ty, "body": {}})
    }

    #[test]
    fn chains_groups_and_chords_parse() {
        let c = parse(
            json!({"kind": "chain", "id": "c1", "steps": [t("a.x"), {"type": "a.y", "result_to": "in"}]}),
            3,
        )
        .unwrap();
        assert_eq!((c.id.as_str(), c.kind_name()), ("c1", "chain"));
        assert_eq!(c.types[1], ("steps[1].type".to_owned(), "a.y".to_owned()));
        let g = parse(json!({"kind": "group", "members": [t("a.x")]}), 3).unwrap();
        assert_eq!(g.kind_name(), "group");
        assert_eq!(g.id.len(), 36);
        let d = parse(
            json!({"kind": "chord", "members": [t("a.x")], "callback": t("a.cb"), "on_failure": "skip"}),
            3,
        )
        .unwrap();
        assert_eq!(d.types.last().unwrap().0, "callback.type");
    }

    #[test]
    fn bad_workflows_name_the_field() {
        let cases = [
            (json!({"kind": "chain", "steps": []}), "no_steps", "steps"),
            (
                json!({"kind": "group", "members": vec![t("a.x"); 4]}),
                "too_many_steps",
                "members",
            ),
            (
                json!({"kind": "chain", "steps": [t("a.x"), t("a.y"), {"type": ""}]}),
                "invalid_value",
                "steps[2].type",
            ),
            (
                json!({"kind": "chain", "steps": [t("a.x"), {"type": "a.y", "prio": 1}]}),
                "unknown_field",
                "steps[1].prio",
            ),
            (
                json!({"kind": "chain", "steps": [{"type": "a.x", "result_to": "r"}]}),
                "invalid_value",
                "steps[0].result_to",
            ),
            (
                json!({"kind": "chain", "steps": [t("a.x"), {"type": "a.y", "body": [], "result_to": "r"}]}),
                "invalid_value",
                "steps[1].body",
            ),
            (
                json!({"kind": "chain", "steps": [t("a.x"), {"type": "a.y", "priority": 10}]}),
                "invalid_value",
                "steps[1].priority",
            ),
            (
                json!({"kind": "chain", "steps": [t("a.x"), {"kind": "group", "members": [t("a.y")]}]}),
                "nesting_not_supported",
                "steps[1]",
            ),
            (
                json!({"kind": "chord", "members": [t("a.x")], "callback": {"kind": "chain", "steps": []}}),
                "nesting_not_supported",
                "callback",
            ),
            (
                json!({"kind": "chord", "members": [t("a.x")]}),
                "missing_field",
                "callback",
            ),
            (
                json!({"kind": "chord", "members": [t("a.x")], "callback": {"type": "a.cb", "body": 1}}),
                "invalid_value",
                "callback.body",
            ),
            (
                json!({"kind": "chord", "id": "g.callback", "members": [t("a.x")], "callback": t("a.cb")}),
                "callback_cycle",
                "id",
            ),
            (
                json!({"kind": "group", "members": [t("a.x")], "callback": t("a.cb")}),
                "unexpected_field",
                "callback",
            ),
            (
                json!({"kind": "chain", "members": [t("a.x")]}),
                "unexpected_field",
                "members",
            ),
            (json!({"kind": "chain"}), "missing_field", "steps"),
            (
                json!({"kind": "loop", "steps": []}),
                "invalid_value",
                "kind",
            ),
            (
                json!({"kind": "chain", "steps": [t("a.x")], "colour": 1}),
                "unknown_field",
                "colour",
            ),
        ];
        for (v, slug, field) in cases {
            let (s, f) = refused(v.clone());
            assert_eq!((s.as_str(), f.as_deref()), (slug, Some(field)), "{v}");
        }
    }
}
