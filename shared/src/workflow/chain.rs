//! The chain's routing slip: its wire form (the `x-warren-chain` header),
//! its checks, the step that follows a success, and publishing a chain's
//! first step.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::nested::{Link, Next, check_links};
use super::record::WorkflowRecord;
use crate::contract::{self, MAX_PRIORITY, headers};
use crate::publisher::{PublishError, PublishOptions, Publisher};

/// Most steps a chain may have.
pub const MAX_STEPS: usize = 1000;

/// Largest `x-warren-chain` header, in bytes of JSON. A message's headers
/// travel in one AMQP frame (RabbitMQ's `frame_max` is 128 KiB by default),
/// and the failure headers of a retry or parking-lot copy need room too.
pub const MAX_SLIP_BYTES: usize = 64 * 1024;

/// One step of a chain: a task type, its body, and where the previous
/// step's result goes. The same struct is the wire form of the steps in the
/// `x-warren-chain` header.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// The task type (the routing key), e.g. `pipeline.process`.
    #[serde(rename = "type")]
    pub task_type: String,
    /// The task's body, a JSON object when `result_to` is set.
    #[serde(default = "empty_object")]
    pub body: Value,
    /// The field of `body` that receives the previous step's result (its
    /// `Outcome::result`, `null` if it had none). Unset: the result is not
    /// passed on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_to: Option<String>,
    /// The step's priority, 0-9; unset, the priority of the step before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u8>,
    /// The step's own task id, in a slip the Celery bridge wrote (it keeps
    /// each Celery signature's `task_id`). Unset: `{chain id}.{n}`
    /// ([`step_id`]). [`Chain::check`] refuses it: a chain Warren publishes
    /// numbers its steps, which its workflow record and the gateway's
    /// `GET /v1/workflows/{id}` follow. Not allowed on a group's members.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The Celery task name the Celery bridge mapped this step from: the
    /// step is published with `x-warren-celery-task` (and the chain's
    /// `x-warren-celery-root-id`), so a worker with a Celery result backend
    /// writes its states as Celery results (docs/celery.md). Like `id`,
    /// only in the bridge's slips.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub celery_task: Option<String>,
}

fn empty_object() -> Value {
    Value::Object(serde_json::Map::new())
}

impl Step {
    /// A step running `task_type` with `body`.
    pub fn new(task_type: impl Into<String>, body: Value) -> Self {
        Self {
            task_type: task_type.into(),
            body,
            result_to: None,
            priority: None,
            id: None,
            celery_task: None,
        }
    }

    /// This step with the previous step's result in its body's `field`.
    pub fn result_to(mut self, field: impl Into<String>) -> Self {
        self.result_to = Some(field.into());
        self
    }

    /// This step with its own priority.
    pub fn priority(mut self, priority: u8) -> Self {
        self.priority = Some(priority);
        self
    }

    pub(super) fn check(&self, index: usize) -> Result<(), ChainError> {
        let invalid = |field: &str, reason: String| ChainError::InvalidStep {
            index,
            field: field.to_owned(),
            reason,
        };
        if self.task_type.trim().is_empty() {
            return Err(invalid("type", "the task type is empty".to_owned()));
        }
        if let Some(p) = self.priority
            && p > MAX_PRIORITY
        {
            return Err(invalid(
                "priority",
                format!("priority {p} is out of range 0-{MAX_PRIORITY}"),
            ));
        }
        if self.id.as_deref().is_some_and(|id| id.trim().is_empty()) {
            return Err(invalid("id", "the step's id is empty".to_owned()));
        }
        if let Some(field) = &self.result_to {
            if index == 0 {
                return Err(invalid(
                    "result_to",
                    "the first step has no previous result".to_owned(),
                ));
            }
            if field.is_empty() {
                return Err(invalid("result_to", "the field name is empty".to_owned()));
            }
            if !self.body.is_object() {
                return Err(invalid(
                    "body",
                    "a step with result_to needs a JSON object body".to_owned(),
                ));
            }
        }
        Ok(())
    }
}

/// The id of step `n` (1-based) of chain `chain_id`: `{chain_id}.{n}`,
/// unless the step has its own ([`Step::id`], in the Celery bridge's
/// chains). Deterministic, so a
/// step published twice is the same task.
pub fn step_id(chain_id: &str, n: u32) -> String {
    format!("{chain_id}.{n}")
}

/// Why a chain was refused, naming the step and field at fault.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    /// No steps.
    #[error("a chain needs at least one step")]
    NoSteps,
    /// More steps than allowed.
    #[error("the chain has {count} steps; at most {max} are allowed")]
    TooManySteps {
        /// Steps given.
        count: usize,
        /// Steps allowed.
        max: usize,
    },
    /// An id was given, and it is empty.
    #[error("the chain id is empty")]
    EmptyId,
    /// A step is invalid.
    #[error("step {index}: {field}: {reason}")]
    InvalidStep {
        /// The step, from 0.
        index: usize,
        /// The step's field at fault (`type`, `body`, `result_to`, `priority`).
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The slip is too large for the message's headers.
    #[error("the chain's routing slip is {bytes} bytes of JSON; at most {max} are allowed")]
    TooLarge {
        /// Its size.
        bytes: usize,
        /// [`MAX_SLIP_BYTES`].
        max: usize,
    },
    /// A received `x-warren-chain` header that does not parse or check.
    #[error("the x-warren-chain header is not a valid routing slip: {0}")]
    InvalidSlip(String),
    /// A group is nested where it may not be (two groups in a row, or a
    /// group where a step is needed).
    #[error("step {index}: {reason}")]
    Nesting {
        /// The link at fault, from 0.
        index: usize,
        /// Why it may not be there.
        reason: String,
    },
    /// A group's member is invalid.
    #[error("step {index}: members[{member}].{field}: {reason}")]
    InvalidMember {
        /// The group's link, from 0.
        index: usize,
        /// The member, from 0.
        member: usize,
        /// Its field at fault.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The first step was not published.
    #[error(transparent)]
    Publish(#[from] PublishError),
    /// The chain's first link, a group, was not (or only partly)
    /// published: the error says which members were.
    #[error(transparent)]
    Group(Box<super::chord::GroupError>),
}

impl ChainError {
    /// The field at fault, as a path into the request (`steps[2].type`).
    pub fn field(&self) -> Option<String> {
        match self {
            Self::NoSteps | Self::TooManySteps { .. } | Self::TooLarge { .. } => {
                Some("steps".to_owned())
            }
            Self::EmptyId => Some("id".to_owned()),
            Self::InvalidStep { index, field, .. } => Some(format!("steps[{index}].{field}")),
            Self::Nesting { index, .. } => Some(format!("steps[{index}]")),
            Self::InvalidMember {
                index,
                member,
                field,
                ..
            } => Some(format!("steps[{index}].members[{member}].{field}")),
            Self::InvalidSlip(_) | Self::Publish(_) | Self::Group(_) => None,
        }
    }
}

/// The routing slip, the `x-warren-chain` header's JSON: which chain,
/// which step this is, and the steps still to run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Slip {
    /// The chain's id; step `n` has the task id `{id}.{n}`.
    pub id: String,
    /// The number of the step carrying the slip, from 1.
    pub step: u32,
    /// The links after this one, in order (each a step, or a group of
    /// steps run in parallel: [`Link`]); empty on the last step.
    #[serde(default)]
    pub next: Vec<Link>,
}

/// `body` with `result` in its field `to`, if it names one.
pub(super) fn with_result(body: &Value, to: Option<&str>, result: Option<&Value>) -> Value {
    let mut body = body.clone();
    if let (Some(field), Some(object)) = (to, body.as_object_mut()) {
        object.insert(field.to_owned(), result.cloned().unwrap_or(Value::Null));
    }
    body
}

/// The step to publish after a success: its id, type, body (the result
/// filled in), priority and its own slip.
#[derive(Debug, Clone, PartialEq)]
pub struct NextStep {
    /// Its task id, `{chain id}.{n}`.
    pub id: String,
    /// Its task type.
    pub task_type: String,
    /// Its body, the previous result in its `result_to` field.
    pub body: Value,
    /// Its priority.
    pub priority: u8,
    /// The slip it carries.
    pub slip: Slip,
    /// The Celery task name it was mapped from ([`Step::celery_task`]).
    pub celery_task: Option<String>,
}

impl Slip {
    /// Reads and checks a slip from the header's value.
    pub fn parse(json: &str) -> Result<Self, ChainError> {
        let slip: Slip =
            serde_json::from_str(json).map_err(|e| ChainError::InvalidSlip(e.to_string()))?;
        if slip.id.is_empty() {
            return Err(ChainError::InvalidSlip("the chain id is empty".to_owned()));
        }
        if slip.step == 0 {
            return Err(ChainError::InvalidSlip(
                "step numbers start at 1".to_owned(),
            ));
        }
        // Index as the whole chain counts it (the first step is 0); the
        // step carrying the slip is a task.
        check_links(&slip.next, slip.step as usize, false)
            .map_err(|e| ChainError::InvalidSlip(e.to_string()))?;
        Ok(slip)
    }

    /// The header's value.
    pub fn to_json(&self) -> Result<String, ChainError> {
        let json = serde_json::to_string(self).map_err(PublishError::Serialize)?;
        if json.len() > MAX_SLIP_BYTES {
            return Err(ChainError::TooLarge {
                bytes: json.len(),
                max: MAX_SLIP_BYTES,
            });
        }
        Ok(json)
    }

    /// What follows this step, given its result and priority: the next
    /// step, or a group (with the chord record that makes the step after
    /// it its callback); `None` at the end of the chain.
    pub fn advance(&self, result: Option<&Value>, priority: u8) -> Option<Next> {
        let (first, rest) = self.next.split_first()?;
        let step = self.step + 1;
        match first {
            Link::Task(first) => Some(Next::Task(NextStep {
                id: first.id.clone().unwrap_or_else(|| step_id(&self.id, step)),
                task_type: first.task_type.clone(),
                body: with_result(&first.body, first.result_to.as_deref(), result),
                priority: first.priority.unwrap_or(priority),
                slip: Slip {
                    id: self.id.clone(),
                    step,
                    next: rest.to_vec(),
                },
                celery_task: first.celery_task.clone(),
            })),
            Link::Group(g) => Some(Next::Group(
                g.next_group(&self.id, step, rest, result, priority),
            )),
        }
    }
}

/// Links to run one after another, each a step or a group of steps run in
/// parallel ([`Link`]), each receiving the previous one's result if it
/// asks for it ([`Step::result_to`]). Build it with [`crate::chain!`] (which
/// takes steps, groups and chords), [`Chain::new`] or [`Chain::of`];
/// publish it with [`Publisher::publish_chain`].
#[derive(Debug, Clone)]
pub struct Chain {
    id: Option<String>,
    links: Vec<Link>,
}

impl Chain {
    /// A chain of `steps`, in order.
    pub fn new(steps: Vec<Step>) -> Self {
        Self::of(steps.into_iter().map(Link::Task).collect())
    }

    /// A chain of `links` (steps and groups), in order.
    pub fn of(links: Vec<Link>) -> Self {
        Self { id: None, links }
    }

    /// This chain with its own id (default: a new UUID v7). Step `n`'s task
    /// id is `{id}.{n}`; a group at link `n` is the group `{id}.{n}`, its
    /// members `{id}.{n}.{m}`.
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// How many links (a group counts one).
    pub fn len(&self) -> usize {
        self.links.len()
    }

    /// No links at all (which [`Chain::check`] refuses).
    pub fn is_empty(&self) -> bool {
        self.links.is_empty()
    }

    /// The links, in order.
    pub fn links(&self) -> &[Link] {
        &self.links
    }

    /// Checks the chain against `max_steps` (tasks, counting each group
    /// member): at least one link, each step with a type, a priority in
    /// range, and an object body where a result goes; groups as
    /// [`Link`] says.
    pub fn check(&self, max_steps: usize) -> Result<(), ChainError> {
        if self.links.is_empty() {
            return Err(ChainError::NoSteps);
        }
        let tasks: usize = self.links.iter().map(Link::tasks).sum();
        if self.links.len() > max_steps || tasks > max_steps {
            return Err(ChainError::TooManySteps {
                count: tasks.max(self.links.len()),
                max: max_steps,
            });
        }
        if self.id.as_deref().is_some_and(str::is_empty) {
            return Err(ChainError::EmptyId);
        }
        for (index, link) in self.links.iter().enumerate() {
            if let Link::Task(step) = link {
                let field = match (&step.id, &step.celery_task) {
                    (Some(_), _) => "id",
                    (None, Some(_)) => "celery_task",
                    (None, None) => continue,
                };
                return Err(ChainError::InvalidStep {
                    index,
                    field: field.to_owned(),
                    reason: "only the Celery bridge's chains carry it: a published chain's \
                             steps are {chain id}.{n}, which its workflow record follows"
                        .to_owned(),
                });
            }
        }
        check_links(&self.links, 0, false)
    }

    /// The chain's id and its links, once checked.
    fn start(self) -> Result<(String, Vec<Link>), ChainError> {
        self.check(MAX_STEPS)?;
        let id = self.id.unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
        Ok((id, self.links))
    }
}

impl Publisher {
    /// Writes the chain's [`WorkflowRecord`] to the events stream, then
    /// publishes its first link and returns the chain's id once the broker
    /// has confirmed it. A first step carries the rest in its
    /// `x-warren-chain` header; a first group is published as a chord
    /// whose callback is the step after it (see [`Link`]). The workers
    /// (and the conductor, after a group) then run the links one after
    /// another.
    ///
    /// If a first group's members are published only in part, the chord
    /// is marked failed (its abort record, as [`Publisher::publish_chord`]
    /// writes it) and the error ([`ChainError::Group`]) says which members
    /// were published.
    ///
    /// ```no_run
    /// # async fn f(publisher: warren::Publisher) -> Result<(), warren::workflow::ChainError> {
    /// use serde_json::json;
    /// use warren::workflow::Step;
    ///
    /// let id = publisher
    ///     .publish_chain(warren::chain![
    ///         Step::new("pipeline.validate", json!({ "record": { "id": "r-1", "value": 21 } })),
    ///         Step::new("pipeline.process", json!({ "factor": 2 })).result_to("input"),
    ///         Step::new("pipeline.save", json!({})).result_to("processed"),
    ///     ])
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn publish_chain(&self, chain: Chain) -> Result<String, ChainError> {
        let (id, links) = chain.start()?;
        // The chain's shape, for readers of the events stream, before its
        // first step: a reader never sees a step of a chain it cannot place.
        let record = WorkflowRecord::of_chain(&id, &links);
        self.publish_workflow_record(&record).await?;
        // The chain as if a step 0 had just succeeded with no result.
        let start = Slip {
            id: id.clone(),
            step: 0,
            next: links,
        };
        match start.advance(None, 0) {
            Some(Next::Task(first)) => {
                let first_link = start.next.first();
                let priority = match first_link {
                    Some(Link::Task(s)) => s.priority,
                    _ => None,
                };
                let mut options = PublishOptions {
                    id: Some(first.id),
                    priority,
                    ..Default::default()
                };
                contract::set_str(&mut options.headers, headers::CHAIN, first.slip.to_json()?);
                self.publish_task(&first.task_type, &first.body, options)
                    .await?;
            }
            Some(Next::Group(group)) => {
                self.publish_next_group(&group, None, true)
                    .await
                    .map_err(|e| ChainError::Group(Box::new(e)))?;
            }
            None => return Err(ChainError::NoSteps),
        }
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn three() -> Chain {
        crate::chain![
            Step::new("p.validate", json!({ "v": 1 })),
            Step::new("p.process", json!({ "factor": 2 })).result_to("input"),
            Step::new("p.save", json!({})).result_to("processed"),
        ]
        .id("c")
    }

    #[test]
    fn each_success_hands_its_result_to_the_next_step() {
        let (id, links) = three().start().unwrap();
        let start = Slip {
            id,
            step: 0,
            next: links,
        };
        let Some(Next::Task(one)) = start.advance(None, 0) else {
            panic!("a step first");
        };
        assert_eq!(
            (one.id.as_str(), one.task_type.as_str()),
            ("c.1", "p.validate")
        );
        let header = one.slip.to_json().unwrap();
        let slip = Slip::parse(&header).unwrap();
        let Some(Next::Task(two)) = slip.advance(Some(&json!({ "ok": true })), 5) else {
            panic!("a step second");
        };
        assert_eq!(two.id, "c.2");
        assert_eq!(two.body, json!({ "factor": 2, "input": { "ok": true } }));
        assert_eq!(two.priority, 5);
        assert_eq!(two.slip.next.len(), 1);
        let Some(Next::Task(three)) = two.slip.advance(None, 5) else {
            panic!("a step third");
        };
        assert_eq!(three.id, "c.3");
        assert_eq!(three.body, json!({ "processed": null }));
        assert!(three.slip.advance(None, 5).is_none());
    }

    #[test]
    fn a_step_with_its_own_id_keeps_it_and_its_celery_name() {
        let mut own = Step::new("email.send", json!({ "to": "a@x" })).result_to("variables");
        own.id = Some("celery-2".to_owned());
        own.celery_task = Some("app.tasks.send_receipt".to_owned());
        // Only in the bridge's slips, never in a chain Warren publishes.
        let e = crate::chain![Step::new("a.b", json!({})), own.clone()]
            .check(10)
            .unwrap_err();
        assert_eq!(e.field().as_deref(), Some("steps[1].id"));
        let slip = Slip {
            id: "celery-1".to_owned(),
            step: 1,
            next: vec![Link::Task(own), Link::Task(Step::new("a.b", json!({})))],
        };
        let slip = Slip::parse(&slip.to_json().unwrap()).unwrap();
        let Some(Next::Task(two)) = slip.advance(Some(&json!({ "n": 1 })), 0) else {
            panic!("a step second");
        };
        assert_eq!(two.id, "celery-2");
        assert_eq!(two.celery_task.as_deref(), Some("app.tasks.send_receipt"));
        assert_eq!(two.body, json!({ "to": "a@x", "variables": { "n": 1 } }));
        let Some(Next::Task(three)) = two.slip.advance(None, 0) else {
            panic!("a step third");
        };
        assert_eq!((three.id.as_str(), three.celery_task), ("celery-1.3", None));
        let mut blank = Step::new("a.b", json!({}));
        blank.id = Some(" ".to_owned());
        let empty = Slip {
            id: "c".to_owned(),
            step: 1,
            next: vec![Link::Task(blank)],
        };
        assert!(Slip::parse(&empty.to_json().unwrap()).is_err());
    }

    #[test]
    fn bad_chains_are_refused_naming_the_field() {
        assert!(matches!(
            Chain::new(vec![]).check(10),
            Err(ChainError::NoSteps)
        ));
        let many = Chain::new(vec![Step::new("a.b", json!({})); 11]);
        let e = many.check(10).unwrap_err();
        assert!(matches!(e, ChainError::TooManySteps { count: 11, max: 10 }));
        let e = crate::chain![Step::new("a.b", json!(1)), Step::new("", json!({}))]
            .check(10)
            .unwrap_err();
        assert_eq!(e.field().as_deref(), Some("steps[1].type"));
        let e = crate::chain![
            Step::new("a.b", json!({})),
            Step::new("a.c", json!([])).result_to("x")
        ]
        .check(10)
        .unwrap_err();
        assert_eq!(e.field().as_deref(), Some("steps[1].body"));
        let e = crate::chain![Step::new("a.b", json!({})).result_to("x")]
            .check(10)
            .unwrap_err();
        assert_eq!(e.field().as_deref(), Some("steps[0].result_to"));
        assert!(Slip::parse("{\"id\":\"c\",\"step\":0}").is_err());
        assert!(Slip::parse("not json").is_err());
    }
}
