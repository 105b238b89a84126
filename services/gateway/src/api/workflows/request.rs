//! `POST /v1/workflows`: the request's JSON, and its parsing into the
//! shared workflow types (`warren::workflow::{Chain, Group, Chord}`),
//! naming the field at fault (`steps[2].type`, `members[0].priority`,
//! `callback.body`).
//!
//! The JSON is a tree: a workflow has `kind` and its `steps` (a chain) or
//! `members` (a group; a chord adds `callback` and `on_failure`); each
//! step is a task (`type`, `body`, `result_to`, `priority`). One level of
//! nesting is taken: a chain step may be a group or a chord (an object with
//! `kind`, whose members and callback are tasks), and a chord's callback
//! may be a chain (of tasks). Anything deeper (a workflow inside a nested
//! one, a workflow as a group's member, a chain inside a chain) is refused
//! with `nesting_not_supported`, naming the field.

use serde::Deserialize;
use serde_json::Value;
use utoipa::ToSchema;
use warren::workflow::{Chain, ChainError, Chord, Group, GroupLink, Link, OnFailure, Step, group};

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
    if request.kind == KindRequest::Chain {
        let mut links = Vec::with_capacity(list.len());
        for (i, raw) in list.into_iter().enumerate() {
            let field = format!("{list_field}[{i}]");
            links.extend(link(raw, &field, &mut types)?);
        }
        let chain = Chain::of(links).id(&id);
        chain.check(max_steps).map_err(chain_problem)?;
        return Ok(Checked {
            id,
            workflow: Parsed::Chain(chain),
            types,
        });
    }
    let mut steps = Vec::with_capacity(list.len());
    for (i, raw) in list.into_iter().enumerate() {
        let field = format!("{list_field}[{i}]");
        let step = task(raw, &field, "a group's member")?;
        types.push((format!("{field}.type"), step.task_type.clone()));
        steps.push(step);
    }
    // A group or a chord (a chain returned above).
    let workflow = {
        {
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
                let (callback, after) = callback_chain(raw, max_steps, &mut types)?;
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
                let policy = match request.on_failure {
                    Some(OnFailureRequest::Skip) => OnFailure::Skip,
                    _ => OnFailure::Run,
                };
                Parsed::Chord(g.then(callback).on_failure(policy).and_then(after))
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

/// A task (no `kind`); a nested workflow here is refused.
fn task(raw: Value, field: &str, place: &str) -> Result<Step, Problem> {
    if raw.get("kind").is_some() {
        return Err(Problem::invalid(
            "nesting_not_supported",
            field,
            format!(
                "{field} is a nested workflow (it has a kind); {place} must be a task (type, body, \
                 result_to, priority). One level of nesting is supported: a group or chord as a \
                 chain step, a chain as a top-level chord's callback"
            ),
        ));
    }
    step(raw, field)
}

/// A chain's link: a task, or a group or chord nested in the chain (a
/// chord is its group, then its callback as the next step). Records each
/// task's type field.
fn link(raw: Value, field: &str, types: &mut Vec<(String, String)>) -> Result<Vec<Link>, Problem> {
    let Some(kind) = raw.get("kind").cloned() else {
        let s = step(raw, field)?;
        types.push((format!("{field}.type"), s.task_type.clone()));
        return Ok(vec![Link::Task(s)]);
    };
    let request: WorkflowRequest = serde_path_to_error::deserialize(raw)
        .map_err(|e| problem::from_serde(e, &format!("{field}.")))?;
    if request.kind == KindRequest::Chain {
        return Err(Problem::invalid(
            "nesting_not_supported",
            &format!("{field}.kind"),
            format!(
                "{field} is a chain inside a chain ({kind}); list its steps in the outer chain instead"
            ),
        ));
    }
    refuse_field(
        request.id.is_some(),
        &format!("{field}.id"),
        "a nested group's id is the chain's: {chain}.{n}",
    )?;
    refuse_field(
        request.steps.is_some(),
        &format!("{field}.steps"),
        "a group or chord has members, not steps",
    )?;
    let Some(members) = request.members else {
        return Err(Problem::invalid(
            "missing_field",
            &format!("{field}.members"),
            "a nested group or chord needs members",
        ));
    };
    let mut group = Vec::with_capacity(members.len());
    for (m, raw) in members.into_iter().enumerate() {
        let member_field = format!("{field}.members[{m}]");
        let s = task(raw, &member_field, "a group's member")?;
        types.push((format!("{member_field}.type"), s.task_type.clone()));
        group.push(s);
    }
    if request.kind == KindRequest::Group {
        refuse_field(
            request.callback.is_some(),
            &format!("{field}.callback"),
            "a group has no callback (make it a chord, or put the step after the group)",
        )?;
        // In a chain, a failed member stops the chain by default.
        let on_failure = match request.on_failure {
            Some(OnFailureRequest::Run) => OnFailure::Run,
            _ => OnFailure::Skip,
        };
        return Ok(vec![Link::Group(GroupLink { group, on_failure })]);
    }
    let Some(raw) = request.callback else {
        return Err(Problem::invalid(
            "missing_field",
            &format!("{field}.callback"),
            "a chord needs a callback",
        ));
    };
    let callback_field = format!("{field}.callback");
    let callback = task(raw, &callback_field, "a nested chord's callback")?;
    types.push((format!("{callback_field}.type"), callback.task_type.clone()));
    let on_failure = match request.on_failure {
        Some(OnFailureRequest::Skip) => OnFailure::Skip,
        _ => OnFailure::Run,
    };
    Ok(vec![
        Link::Group(GroupLink { group, on_failure }),
        Link::Task(callback),
    ])
}

/// A chord's callback: a task, or a chain of tasks (the callback, then
/// the steps after it).
fn callback_chain(
    raw: Value,
    max_steps: usize,
    types: &mut Vec<(String, String)>,
) -> Result<(Step, Vec<Step>), Problem> {
    if raw.get("kind").and_then(Value::as_str) != Some("chain") {
        let callback = task(raw, "callback", "a chord's callback")?;
        types.push(("callback.type".to_owned(), callback.task_type.clone()));
        return Ok((callback, Vec::new()));
    }
    let request: WorkflowRequest =
        serde_path_to_error::deserialize(raw).map_err(|e| problem::from_serde(e, "callback."))?;
    refuse_field(
        request.id.is_some(),
        "callback.id",
        "a callback chain's id is the chord's: {id}.callback",
    )?;
    refuse_field(
        request.members.is_some() || request.callback.is_some() || request.on_failure.is_some(),
        "callback",
        "a callback chain has steps only",
    )?;
    let steps = request.steps.unwrap_or_default();
    if steps.is_empty() {
        return Err(Problem::invalid(
            "no_steps",
            "callback.steps",
            "callback.steps is empty; the callback chain needs at least one step",
        ));
    }
    let mut chain = Vec::with_capacity(steps.len());
    for (k, raw) in steps.into_iter().enumerate() {
        let field = format!("callback.steps[{k}]");
        let s = task(raw, &field, "a callback chain's step")?;
        types.push((format!("{field}.type"), s.task_type.clone()));
        chain.push(s);
    }
    // Checked as a chain, the callback's own result_to aside (it names
    // where the members' outcomes go).
    let mut first = chain[0].clone();
    first.result_to = None;
    let mut check = chain.clone();
    check[0] = first;
    Chain::new(check).check(max_steps).map_err(|e| {
        let p = chain_problem(e);
        let field = p.field.clone().unwrap_or_default();
        Problem::invalid(p.slug(), &format!("callback.{field}"), p.detail.clone())
    })?;
    let mut chain = chain.into_iter();
    let callback = chain.next().ok_or_else(|| {
        Problem::invalid("no_steps", "callback.steps", "the callback chain is empty")
    })?;
    Ok((callback, chain.collect()))
}

/// One step: a task.
fn step(raw: Value, field: &str) -> Result<Step, Problem> {
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
        id: None,
        celery_task: None,
    })
}

/// A chain the shared checks refuse, naming the field.
fn chain_problem(e: ChainError) -> Problem {
    let field = e.field().unwrap_or_default();
    let slug = match &e {
        ChainError::NoSteps => "no_steps",
        ChainError::TooManySteps { .. } => "too_many_steps",
        ChainError::TooLarge { .. } => "too_large",
        ChainError::Nesting { .. } => "nesting_not_supported",
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
        // Nested: a chain of (group, callback), then a final step; and a
        // chord whose callback is a chain.
        let n = parse(
            json!({"kind": "chain", "id": "n1", "steps": [
                {"kind": "chord", "members": [t("a.x"), t("a.x")], "callback": t("a.cb")},
                {"type": "a.z", "result_to": "report"}]}),
            5,
        )
        .unwrap();
        let Parsed::Chain(chain) = &n.workflow else {
            panic!("a chain")
        };
        assert_eq!(chain.len(), 3);
        assert_eq!(n.types[1].0, "steps[0].members[1].type");
        assert_eq!(n.types[2].0, "steps[0].callback.type");
        let c = parse(
            json!({"kind": "chord", "members": [t("a.x")], "callback":
                {"kind": "chain", "steps": [{"type": "a.cb", "result_to": "outcomes"}, t("a.z")]}}),
            5,
        )
        .unwrap();
        let Parsed::Chord(chord) = &c.workflow else {
            panic!("a chord")
        };
        assert_eq!(chord.next().len(), 1);
        assert_eq!(c.types.last().unwrap().0, "callback.steps[1].type");
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
                json!({"kind": "chain", "steps": [t("a.x"), {"kind": "group", "members": [{"kind": "group", "members": [t("a.y")]}]}]}),
                "nesting_not_supported",
                "steps[1].members[0]",
            ),
            (
                json!({"kind": "chain", "steps": [{"kind": "group", "members": [t("a.y")]}, {"kind": "group", "members": [t("a.y")]}]}),
                "nesting_not_supported",
                "steps[1]",
            ),
            (
                json!({"kind": "chain", "steps": [{"kind": "chord", "members": [t("a.y")], "callback": {"kind": "chain", "steps": [t("a.z")]}}]}),
                "nesting_not_supported",
                "steps[0].callback",
            ),
            (
                json!({"kind": "chain", "steps": [t("a.x"), {"kind": "chain", "steps": [t("a.y")]}]}),
                "nesting_not_supported",
                "steps[1].kind",
            ),
            (
                json!({"kind": "group", "members": [{"kind": "group", "members": [t("a.y")]}]}),
                "nesting_not_supported",
                "members[0]",
            ),
            (
                json!({"kind": "chord", "members": [t("a.x")], "callback": {"kind": "chain", "steps": []}}),
                "no_steps",
                "callback.steps",
            ),
            (
                json!({"kind": "chord", "members": [t("a.x")], "callback": {"kind": "chain", "steps": [t("a.y"), {"type": "a.z", "body": [], "result_to": "r"}]}}),
                "invalid_value",
                "callback.steps[1].body",
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
