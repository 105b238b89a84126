//! Nesting: a group (or a chord) as a link of a chain. A chain is a list of
//! links, each a step or a group of steps run in parallel. When the link
//! before a group succeeds (or at once, when the group is the chain's
//! first link), the group is published as a chord whose callback is the
//! step after the group: the chord record carries the chain's place (the
//! callback is step `n + 1` of the chain, `{chain}.{n+1}`) and the rest of
//! the chain, so the conductor's leader publishes the step exactly once,
//! with the members' outcomes, and the chain goes on from there. A group
//! that ends the chain has no callback: its members are the chain's end.
//!
//! Ids are deterministic: the group at link `n` of chain `C` is the group
//! `C.n`, its members `C.n.1` ... `C.n.M`; the step after it `C.{n+1}`. A
//! leader failover, a step retried after publishing the group, or a
//! producer posting again cannot run the step after a group twice: the
//! conductor remembers every callback it has seen published.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::chain::{ChainError, MAX_STEPS, Step, step_id, with_result};
use super::chord::{Chord, ChordAbort, ChordRecord, Group, GroupError, MAX_MEMBERS, OnFailure};
use crate::contract::{self, MAX_PRIORITY, headers};
use crate::publisher::{PublishOptions, Publisher};

/// One link of a chain: a step, or a group of steps run in parallel.
///
/// On the wire (a slip's `next`, a chord record's `next`) a step is its
/// object (`{"type": ...}`) and a group is `{"group": [steps],
/// "on_failure": "skip" | "run"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Link {
    /// A task.
    Task(Step),
    /// Tasks in parallel.
    Group(GroupLink),
}

/// A group as a link of a chain: its members run in parallel; the step
/// after it (if any) runs once every member is final, with their outcomes
/// in its `result_to` field (default `results`), as a chord's callback.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupLink {
    /// The members, in order. A member's `result_to` receives the result
    /// of the step before the group.
    pub group: Vec<Step>,
    /// What the step after the group does when a member was
    /// dead-lettered: `skip` (the default in a chain: it is parked, and the
    /// chain stops there, failed) or `run` (it runs with the failures
    /// among the outcomes).
    #[serde(default = "skip")]
    pub on_failure: OnFailure,
}

fn skip() -> OnFailure {
    OnFailure::Skip
}

impl Link {
    /// How many tasks it publishes (a group: its members).
    pub fn tasks(&self) -> usize {
        match self {
            Self::Task(_) => 1,
            Self::Group(g) => g.group.len(),
        }
    }

    /// Whether it is a group.
    pub fn is_group(&self) -> bool {
        matches!(self, Self::Group(_))
    }
}

impl From<Step> for Link {
    fn from(step: Step) -> Self {
        Self::Task(step)
    }
}

/// What [`crate::chain!`] takes: a [`Step`], a [`Group`] (a link that
/// skips the step after it when a member fails) or a [`Chord`] (its group,
/// then its callback, then the steps of [`Chord::and_then`]).
pub trait IntoLinks {
    /// The links it stands for, in order.
    fn into_links(self) -> Vec<Link>;
}

impl IntoLinks for Step {
    fn into_links(self) -> Vec<Link> {
        vec![Link::Task(self)]
    }
}

impl IntoLinks for Link {
    fn into_links(self) -> Vec<Link> {
        vec![self]
    }
}

impl IntoLinks for Group {
    /// The group's own id, if set, is not used: in a chain it is
    /// `{chain}.{n}`.
    fn into_links(self) -> Vec<Link> {
        vec![Link::Group(GroupLink {
            group: self.members().to_vec(),
            on_failure: OnFailure::Skip,
        })]
    }
}

impl IntoLinks for Chord {
    /// The group's own id, if set, is not used: in a chain it is
    /// `{chain}.{n}`, and the callback is step `n + 1`.
    fn into_links(self) -> Vec<Link> {
        let (members, callback, on_failure, next) = self.into_parts();
        let mut links = vec![
            Link::Group(GroupLink {
                group: members,
                on_failure,
            }),
            Link::Task(callback),
        ];
        links.extend(next);
        links
    }
}

/// Checks `links`, the first being link `first` (from 0) of its chain;
/// `after_group`: the link before them is a group.
pub(super) fn check_links(
    links: &[Link],
    first: usize,
    mut after_group: bool,
) -> Result<(), ChainError> {
    for (i, link) in links.iter().enumerate() {
        let index = first + i;
        match link {
            Link::Task(step) => {
                step.check(index)?;
                if after_group && !step.body.is_object() {
                    return Err(ChainError::InvalidStep {
                        index,
                        field: "body".to_owned(),
                        reason: "the step after a group needs a JSON object body (the members' \
                                 outcomes go into it)"
                            .to_owned(),
                    });
                }
                if after_group && step.result_to.as_deref() == Some("") {
                    return Err(ChainError::InvalidStep {
                        index,
                        field: "result_to".to_owned(),
                        reason: "the field name is empty".to_owned(),
                    });
                }
                after_group = false;
            }
            Link::Group(g) => {
                if after_group {
                    return Err(ChainError::Nesting {
                        index,
                        reason: "a group right after a group: put a step between them (the \
                                 first group's outcomes go to a step, not to another group)"
                            .to_owned(),
                    });
                }
                g.check(index)?;
                after_group = true;
            }
        }
    }
    Ok(())
}

impl GroupLink {
    fn check(&self, index: usize) -> Result<(), ChainError> {
        if self.group.is_empty() {
            return Err(ChainError::Nesting {
                index,
                reason: "a group needs at least one member".to_owned(),
            });
        }
        if self.group.len() > MAX_MEMBERS {
            return Err(ChainError::Nesting {
                index,
                reason: format!(
                    "the group has {} members; at most {MAX_MEMBERS} are allowed",
                    self.group.len()
                ),
            });
        }
        for (member, m) in self.group.iter().enumerate() {
            let invalid = |field: &str, reason: &str| ChainError::InvalidMember {
                index,
                member,
                field: field.to_owned(),
                reason: reason.to_owned(),
            };
            if m.task_type.trim().is_empty() {
                return Err(invalid("type", "the task type is empty"));
            }
            if m.priority.is_some_and(|p| p > MAX_PRIORITY) {
                return Err(invalid("priority", "out of range 0-9"));
            }
            if m.id.is_some() {
                return Err(invalid(
                    "id",
                    "a group's member has no id of its own: it is {group}.{m}",
                ));
            }
            if m.celery_task.is_some() {
                return Err(invalid(
                    "celery_task",
                    "only the Celery bridge's chain steps carry a Celery task name",
                ));
            }
            if let Some(field) = &m.result_to {
                if index == 0 {
                    return Err(invalid(
                        "result_to",
                        "the chain's first group has no previous result",
                    ));
                }
                if field.is_empty() {
                    return Err(invalid("result_to", "the field name is empty"));
                }
                if !m.body.is_object() {
                    return Err(invalid(
                        "body",
                        "a member with result_to needs a JSON object body",
                    ));
                }
            }
        }
        Ok(())
    }

    /// The group as link `step` of chain `chain`, after a step whose result
    /// and priority are given; `rest`: the links after it.
    pub(super) fn next_group(
        &self,
        chain: &str,
        step: u32,
        rest: &[Link],
        result: Option<&Value>,
        priority: u8,
    ) -> NextGroup {
        let id = step_id(chain, step);
        let members = self
            .group
            .iter()
            .map(|m| Step {
                task_type: m.task_type.clone(),
                body: with_result(&m.body, m.result_to.as_deref(), result),
                result_to: None,
                priority: Some(m.priority.unwrap_or(priority)),
                id: None,
                celery_task: None,
            })
            .collect();
        // The step after the group is the chord's callback, and step
        // `step + 1` of the chain, with the links after it.
        let record = match rest.split_first() {
            Some((Link::Task(callback), after)) => {
                let mut callback = callback.clone();
                callback.priority = Some(callback.priority.unwrap_or(priority));
                Some(ChordRecord {
                    id: id.clone(),
                    size: u32::try_from(self.group.len()).unwrap_or(u32::MAX),
                    callback,
                    on_failure: self.on_failure,
                    next: after.to_vec(),
                    chain: Some(ChainPlace {
                        id: chain.to_owned(),
                        step: step + 1,
                    }),
                })
            }
            // Checked: a group is never followed by a group.
            Some((Link::Group(_), _)) | None => None,
        };
        NextGroup {
            id,
            chain: chain.to_owned(),
            step,
            members,
            record,
        }
    }
}

/// Where a chord's callback sits in a chain: step `step` of chain `id`
/// (its task id `{id}.{step}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChainPlace {
    /// The chain's id.
    pub id: String,
    /// The callback's step number in it, from 1.
    pub step: u32,
}

/// What follows a chain step's success.
#[derive(Debug, Clone, PartialEq)]
pub enum Next {
    /// The next step.
    Task(super::chain::NextStep),
    /// A group (and, if a step follows it, its chord record).
    Group(NextGroup),
}

/// A group to publish as a chain's link: its record, then its members.
#[derive(Debug, Clone, PartialEq)]
pub struct NextGroup {
    /// The group's id, `{chain}.{n}`.
    pub id: String,
    /// The chain's id.
    pub chain: String,
    /// Its link number in the chain, from 1.
    pub step: u32,
    /// The members, their bodies filled in and priorities set.
    pub members: Vec<Step>,
    /// The chord record making the step after the group its callback; none
    /// when the group ends the chain.
    pub record: Option<ChordRecord>,
}

impl Publisher {
    /// Publishes a group that is a chain's link: its chord record (if a
    /// step follows it), then each member (`{group}.{m}`), every message
    /// confirmed. `causation`: the step that succeeded before it. With
    /// `abort`, a partial publish writes the chord's abort record (the
    /// chain is marked failed); without (a worker, whose step is retried
    /// and publishes the whole group again), it does not.
    pub(crate) async fn publish_next_group(
        &self,
        group: &NextGroup,
        causation: Option<&str>,
        abort: bool,
    ) -> Result<(), GroupError> {
        if group.members.len() + group.record.as_ref().map_or(0, |r| r.next.len()) > MAX_STEPS {
            return Err(GroupError::TooManyMembers {
                count: group.members.len(),
                max: MAX_STEPS,
            });
        }
        if let Some(record) = &group.record {
            crate::topology::declare_events_exchange(self.channel(), self.names())
                .await
                .map_err(crate::publisher::PublishError::from)?;
            self.publish_chord_record(record).await?;
        }
        for (i, m) in group.members.iter().enumerate() {
            let n = u32::try_from(i + 1).unwrap_or(u32::MAX);
            let mut options = PublishOptions {
                id: Some(step_id(&group.id, n)),
                priority: m.priority,
                ..Default::default()
            };
            if let Some(cause) = causation {
                contract::set_str(&mut options.headers, headers::CAUSATION_ID, cause);
            }
            if let Err(source) = self.publish_task(&m.task_type, &m.body, options).await {
                let (id, published, total) = (group.id.clone(), i, group.members.len());
                let source = Box::new(source);
                if let (true, Some(record)) = (abort, &group.record) {
                    let marked = ChordAbort {
                        id: id.clone(),
                        published: u32::try_from(published).unwrap_or(u32::MAX),
                        size: u32::try_from(total).unwrap_or(u32::MAX),
                        reason: source.to_string(),
                    };
                    if let Err(abort) = self.publish_abort(record, &marked).await {
                        return Err(GroupError::Unaborted {
                            id,
                            published,
                            total,
                            source,
                            abort: Box::new(abort),
                        });
                    }
                }
                return Err(GroupError::Partial {
                    id,
                    published,
                    total,
                    source,
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
// A failing unwrap is how a test reports failure.
#[allow(clippy::unwrap_used)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::workflow::{Chain, Slip, group};

    fn s(ty: &str) -> Step {
        Step::new(ty, json!({}))
    }

    #[test]
    fn a_group_in_a_chain_becomes_a_chord_whose_callback_is_the_next_step() {
        // step, group of 2 (receiving step 1's result), step, step.
        let chain = crate::chain![
            s("p.validate"),
            group(vec![
                Step::new("p.process", json!({ "factor": 2 })).result_to("input"),
                s("p.process"),
            ]),
            s("p.report").result_to("outcomes"),
            s("p.save").result_to("report"),
        ]
        .id("c");
        chain.check(10).unwrap();
        assert_eq!(chain.len(), 4);
        let slip = Slip {
            id: "c".into(),
            step: 1,
            next: chain.links()[1..].to_vec(),
        };
        // The slip's wire form round-trips, the group as {"group": [...]}.
        let json = slip.to_json().unwrap();
        assert!(json.contains(r#""group":[{"type":"p.process""#), "{json}");
        assert_eq!(Slip::parse(&json).unwrap(), slip);
        let Some(Next::Group(g)) = slip.advance(Some(&json!({ "v": 1 })), 4) else {
            panic!("a group follows step 1");
        };
        assert_eq!((g.id.as_str(), g.step), ("c.2", 2));
        assert_eq!(
            g.members[0].body,
            json!({ "factor": 2, "input": { "v": 1 } })
        );
        assert_eq!(g.members[1].priority, Some(4));
        let record = g.record.unwrap();
        assert_eq!(record.callback_id(), "c.3");
        assert_eq!(record.member_id(2), "c.2.2");
        assert_eq!(record.on_failure, OnFailure::Skip);
        assert_eq!(record.result_field(), "outcomes");
        let slip = record.callback_slip().unwrap();
        assert_eq!((slip.id.as_str(), slip.step, slip.next.len()), ("c", 3, 1));
        let Some(Next::Task(last)) = slip.advance(None, 0) else {
            panic!("a step follows the callback");
        };
        assert_eq!(last.id, "c.4");
    }

    #[test]
    fn a_chord_in_a_chain_is_its_group_then_its_callback() {
        let chord = group(vec![s("p.a"), s("p.b")])
            .then(s("p.cb"))
            .on_failure(OnFailure::Run);
        let chain = crate::chain![chord, s("p.last").result_to("x")].id("k");
        chain.check(10).unwrap();
        let links = chain.links();
        assert_eq!(links.len(), 3);
        assert!(matches!(&links[0], Link::Group(g) if g.on_failure == OnFailure::Run));
        let start = Slip {
            id: "k".into(),
            step: 0,
            next: links.to_vec(),
        };
        let Some(Next::Group(g)) = start.advance(None, 0) else {
            panic!("the chain starts with a group");
        };
        let record = g.record.unwrap();
        assert_eq!(
            (g.id.as_str(), record.callback_id().as_str()),
            ("k.1", "k.2")
        );
        assert_eq!(record.next.len(), 1);
    }

    #[test]
    fn bad_nesting_is_refused_naming_the_link() {
        let e = crate::chain![s("a.a"), group(vec![s("a.b")]), group(vec![s("a.c")])]
            .check(10)
            .unwrap_err();
        assert_eq!(e.field().as_deref(), Some("steps[2]"));
        let e = crate::chain![s("a.a"), group(vec![])]
            .check(10)
            .unwrap_err();
        assert_eq!(e.field().as_deref(), Some("steps[1]"));
        let e = crate::chain![group(vec![s("a.b").result_to("x")])]
            .check(10)
            .unwrap_err();
        assert_eq!(e.field().as_deref(), Some("steps[0].members[0].result_to"));
        let e = crate::chain![group(vec![s("a.b")]), Step::new("a.c", json!([]))]
            .check(10)
            .unwrap_err();
        assert_eq!(e.field().as_deref(), Some("steps[1].body"));
        let e = Chain::of(vec![Link::Group(GroupLink {
            group: vec![s("a.b"); 11],
            on_failure: OnFailure::Skip,
        })])
        .check(10)
        .unwrap_err();
        assert!(matches!(e, ChainError::TooManySteps { count: 11, .. }));
        // A slip holding two groups in a row does not parse.
        assert!(
            Slip::parse(
                r#"{"id":"c","step":1,"next":[{"group":[{"type":"a.b"}]},{"group":[{"type":"a.b"}]}]}"#
            )
            .is_err()
        );
    }
}
