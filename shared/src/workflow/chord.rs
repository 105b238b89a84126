//! Groups and chords: tasks run in parallel under one group id, and a
//! chord's callback, run once every member is final. The producer writes
//! the chord's record (its size, callback and failure policy) to the
//! events stream, then publishes the members; the conductor's leader
//! reads the stream, sees each member's final event and publishes the
//! callback (`{group}.callback`) with its `queued` event in one
//! transaction.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::chain::{MAX_STEPS, Slip, Step, step_id};
use super::nested::{ChainPlace, Link};
use super::record::{WorkflowKind, WorkflowRecord};
use crate::contract::PERSISTENT;
use crate::publisher::{PublishError, PublishOptions, Publisher};

/// Most members a group may have.
pub const MAX_MEMBERS: usize = 1000;

/// Content type of a chord record on the events exchange.
pub const CHORD_CONTENT_TYPE: &str = "application/vnd.warren.chord.v1+json";

/// AMQP `type` of a chord record.
pub const CHORD_MESSAGE_TYPE: &str = "warren.chord";

/// Content type of a chord's abort record on the events exchange: the
/// producer could not publish every member, and the conductor parks the
/// callback instead of waiting for members that will never come.
pub const CHORD_ABORT_CONTENT_TYPE: &str = "application/vnd.warren.chord-abort.v1+json";

/// AMQP `type` of a chord's abort record.
pub const CHORD_ABORT_MESSAGE_TYPE: &str = "warren.chord.abort";

/// Content type of the conductor's catch-up mark on the events exchange.
/// A new leader writes one and reads the stream up to it before deciding
/// anything; readers other than the conductor ignore it.
pub const MARK_CONTENT_TYPE: &str = "application/vnd.warren.mark.v1+json";

/// AMQP `type` of the conductor's catch-up mark.
pub const MARK_MESSAGE_TYPE: &str = "warren.mark";

/// What the callback does when a member was dead-lettered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    /// Run it anyway, with the failures among the results.
    #[default]
    Run,
    /// Park it, with the failures as its reason.
    Skip,
}

/// A chord's record, as written to the events stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChordRecord {
    /// The group's id; member `n` (from 1) is the task `{id}.{n}`.
    pub id: String,
    /// How many members.
    pub size: u32,
    /// The callback; its body's `result_to` field (default `results`)
    /// receives the members' outcomes, in member order.
    pub callback: Step,
    /// What happens to the callback when a member was dead-lettered.
    #[serde(default)]
    pub on_failure: OnFailure,
    /// Links (steps, groups) that run after the callback, as a chain: the
    /// callback is step 1 of the chain `{id}.callback` (or step
    /// `chain.step` of `chain.id`), and carries the rest in its
    /// `x-warren-chain` slip.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub next: Vec<Link>,
    /// Set when the group is a link of a chain: the callback is the step
    /// after it, step `step` of chain `id`, with the task id
    /// `{chain.id}.{chain.step}` instead of `{id}.callback`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain: Option<ChainPlace>,
}

impl ChordRecord {
    /// Member `n`'s task id (from 1).
    pub fn member_id(&self, n: u32) -> String {
        step_id(&self.id, n)
    }

    /// The callback's task id: `{group}.callback`, or, for a group in a
    /// chain, its step's id `{chain}.{n}`.
    pub fn callback_id(&self) -> String {
        match &self.chain {
            Some(place) => step_id(&place.id, place.step),
            None => format!("{}.callback", self.id),
        }
    }

    /// The callback's routing slip, when links follow it (see
    /// [`ChordRecord::next`]).
    pub fn callback_slip(&self) -> Option<Slip> {
        (!self.next.is_empty()).then(|| match &self.chain {
            Some(place) => Slip {
                id: place.id.clone(),
                step: place.step,
                next: self.next.clone(),
            },
            None => Slip {
                id: self.callback_id(),
                step: 1,
                next: self.next.clone(),
            },
        })
    }

    /// The field of the callback's body the outcomes go to.
    pub fn result_field(&self) -> &str {
        self.callback.result_to.as_deref().unwrap_or("results")
    }

    /// The callback's body with `outcomes` in its result field.
    pub fn callback_body(&self, outcomes: Vec<Value>) -> Value {
        let mut body = self.callback.body.clone();
        if let Some(object) = body.as_object_mut() {
            object.insert(self.result_field().to_owned(), Value::Array(outcomes));
        }
        body
    }
}

/// A chord's abort record, as written to the events stream when publishing
/// its members failed midway: the conductor parks the callback with the
/// reason (error kind `chord_aborted`) and never runs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChordAbort {
    /// The group's id.
    pub id: String,
    /// Members published (1 to this); the rest were not.
    pub published: u32,
    /// Members in the chord.
    pub size: u32,
    /// Why the next member was not published.
    pub reason: String,
}

/// Why a group or chord was refused or only partly published.
#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    /// No members.
    #[error("a group needs at least one member")]
    NoMembers,
    /// More members than allowed.
    #[error("the group has {count} members; at most {max} are allowed")]
    TooManyMembers {
        /// Members given.
        count: usize,
        /// [`MAX_MEMBERS`].
        max: usize,
    },
    /// A member is invalid.
    #[error("members[{index}].{field}: {reason}")]
    InvalidMember {
        /// The member, from 0.
        index: usize,
        /// Its field at fault.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The callback is invalid.
    #[error("callback: {0}")]
    InvalidCallback(String),
    /// An id was given, and it is empty.
    #[error("the group id is empty")]
    EmptyId,
    /// Publishing stopped midway: `published` of `total` members are
    /// queued (members 1 to `published`); the rest are not.
    #[error("only {published} of {total} members of group {id} were published: {source}")]
    Partial {
        /// The group's id.
        id: String,
        /// Members published (1 to this).
        published: usize,
        /// Members in the group.
        total: usize,
        /// Why the next one was not.
        source: Box<PublishError>,
    },
    /// The chord's record was not published (no member was).
    #[error(transparent)]
    Publish(#[from] PublishError),
    /// A chord's publishing stopped midway (as [`GroupError::Partial`]),
    /// and its abort record could not be written either: the conductor
    /// does not know the chord failed, and its callback never runs (its
    /// unpublished members never become final).
    #[error(
        "only {published} of {total} members of chord {id} were published ({source}), and its abort record was not written: {abort}"
    )]
    Unaborted {
        /// The group's id.
        id: String,
        /// Members published (1 to this).
        published: usize,
        /// Members in the chord.
        total: usize,
        /// Why the next member was not published.
        source: Box<PublishError>,
        /// Why the abort record was not written.
        abort: Box<PublishError>,
    },
}

/// Tasks run in parallel under one id; [`Group::then`] makes it a chord.
#[derive(Debug, Clone)]
pub struct Group {
    id: Option<String>,
    members: Vec<Step>,
}

/// A group and a callback run once when every member is final.
#[derive(Debug, Clone)]
pub struct Chord {
    group: Group,
    callback: Step,
    on_failure: OnFailure,
    next: Vec<Link>,
}

/// A group of `members`.
pub fn group(members: Vec<Step>) -> Group {
    Group { id: None, members }
}

impl Group {
    /// This group with its own id (default: a new UUID v7).
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// The members, in order.
    pub fn members(&self) -> &[Step] {
        &self.members
    }

    /// A chord: `callback` runs once every member succeeded or was
    /// dead-lettered, with their outcomes in its body's `result_to` field
    /// (default `results`).
    pub fn then(self, callback: Step) -> Chord {
        Chord {
            group: self,
            callback,
            on_failure: OnFailure::Run,
            next: Vec::new(),
        }
    }

    fn check(&self) -> Result<(), GroupError> {
        if self.members.is_empty() {
            return Err(GroupError::NoMembers);
        }
        if self.members.len() > MAX_MEMBERS {
            return Err(GroupError::TooManyMembers {
                count: self.members.len(),
                max: MAX_MEMBERS,
            });
        }
        if self.id.as_deref().is_some_and(str::is_empty) {
            return Err(GroupError::EmptyId);
        }
        for (index, m) in self.members.iter().enumerate() {
            let invalid = |field, reason: &str| GroupError::InvalidMember {
                index,
                field,
                reason: reason.to_owned(),
            };
            if m.task_type.trim().is_empty() {
                return Err(invalid("type", "the task type is empty"));
            }
            if m.result_to.is_some() {
                return Err(invalid("result_to", "a member has no previous result"));
            }
            if m.id.is_some() || m.celery_task.is_some() {
                return Err(invalid(
                    "id",
                    "a member has no id of its own: it is {group}.{m}",
                ));
            }
            if m.priority
                .is_some_and(|p| p > crate::contract::MAX_PRIORITY)
            {
                return Err(invalid("priority", "out of range 0-9"));
            }
        }
        Ok(())
    }
}

impl Chord {
    /// The group's members, in order.
    pub fn members(&self) -> &[Step] {
        &self.group.members
    }

    /// The callback.
    pub fn callback(&self) -> &Step {
        &self.callback
    }

    /// The callback's policy when a member was dead-lettered.
    pub fn policy(&self) -> OnFailure {
        self.on_failure
    }

    /// The callback's policy when a member was dead-lettered.
    pub fn on_failure(mut self, policy: OnFailure) -> Self {
        self.on_failure = policy;
        self
    }

    /// Makes the callback the first step of a chain: once it succeeds,
    /// `steps` run one after another, each receiving the previous one's
    /// result if it asks for it ([`Step::result_to`]). The chain's id is
    /// `{group}.callback`, so the steps after the callback are
    /// `{group}.callback.2`, `{group}.callback.3`, ...
    ///
    /// ```
    /// use serde_json::json;
    /// use warren::workflow::{Step, group};
    ///
    /// let chord = group(vec![Step::new("pipeline.validate", json!({ "record": { "id": "a", "value": 1 } }))])
    ///     .then(Step::new("pipeline.report", json!({})))
    ///     .and_then(vec![Step::new("pipeline.validate", json!({ "record": { "id": "z", "value": 0 } }))]);
    /// # let _ = chord;
    /// ```
    pub fn and_then(mut self, steps: Vec<Step>) -> Self {
        self.next = steps.into_iter().map(Link::Task).collect();
        self
    }

    /// As [`Chord::and_then`], with groups among the links (see
    /// [`Link`]).
    pub fn and_then_links(mut self, links: Vec<Link>) -> Self {
        self.next = links;
        self
    }

    /// The links after the callback.
    pub fn next(&self) -> &[Link] {
        &self.next
    }

    /// Its members, callback, policy and the links after the callback.
    pub(super) fn into_parts(self) -> (Vec<Step>, Step, OnFailure, Vec<Link>) {
        (
            self.group.members,
            self.callback,
            self.on_failure,
            self.next,
        )
    }
}

impl Publisher {
    /// Writes the group's [`WorkflowRecord`] to the events stream, then
    /// publishes its members (`{id}.1` ... `{id}.N`), each confirmed,
    /// and returns the group's id. If a publish fails, the error says how
    /// many members were published.
    pub async fn publish_group(&self, group: Group) -> Result<String, GroupError> {
        group.check()?;
        let id = group
            .id
            .clone()
            .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
        let types = group.members.iter().map(|m| m.task_type.as_str());
        let record = WorkflowRecord::new(&id, WorkflowKind::Group, types);
        self.publish_workflow_record(&record).await?;
        self.publish_members(&id, &group.members).await?;
        Ok(id)
    }

    /// Publishes a chord: its record to the events stream (confirmed),
    /// then its members. The conductor's leader publishes the callback.
    pub async fn publish_chord(&self, chord: Chord) -> Result<String, GroupError> {
        chord.group.check()?;
        if chord.callback.task_type.trim().is_empty() {
            return Err(GroupError::InvalidCallback("the task type is empty".into()));
        }
        if !chord.callback.body.is_object() {
            return Err(GroupError::InvalidCallback(
                "the body must be a JSON object (the results go into it)".into(),
            ));
        }
        let own_ids = std::iter::once(&chord.callback)
            .chain(chord.next.iter().filter_map(|l| match l {
                Link::Task(s) => Some(s),
                Link::Group(_) => None,
            }))
            .any(|s| s.id.is_some() || s.celery_task.is_some());
        if own_ids {
            return Err(GroupError::InvalidCallback(
                "the callback and the steps after it have no ids of their own: they are \
                 {group}.callback and {group}.callback.{k}"
                    .into(),
            ));
        }
        let id = chord
            .group
            .id
            .clone()
            .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
        let record = ChordRecord {
            id: id.clone(),
            size: u32::try_from(chord.group.members.len()).unwrap_or(u32::MAX),
            callback: chord.callback,
            on_failure: chord.on_failure,
            next: chord.next,
            chain: None,
        };
        if record.next.len() >= MAX_STEPS {
            return Err(GroupError::InvalidCallback(format!(
                "the callback and the {} steps after it are more than {MAX_STEPS}",
                record.next.len()
            )));
        }
        if let Some(slip) = record.callback_slip() {
            // The slip the conductor will send, checked as a worker reads it.
            slip.to_json()
                .and_then(|json| Slip::parse(&json))
                .map_err(|e| GroupError::InvalidCallback(e.to_string()))?;
        }
        self.publish_chord_record(&record).await?;
        match self.publish_members(&id, &chord.group.members).await {
            Err(GroupError::Partial {
                id,
                published,
                total,
                source,
            }) => {
                // Marked failed durably: the conductor parks the callback.
                let abort = ChordAbort {
                    id: id.clone(),
                    published: u32::try_from(published).unwrap_or(u32::MAX),
                    size: u32::try_from(total).unwrap_or(u32::MAX),
                    reason: source.to_string(),
                };
                match self.publish_abort(&record, &abort).await {
                    Ok(()) => Err(GroupError::Partial {
                        id,
                        published,
                        total,
                        source,
                    }),
                    Err(abort) => Err(GroupError::Unaborted {
                        id,
                        published,
                        total,
                        source,
                        abort: Box::new(abort),
                    }),
                }
            }
            Err(e) => Err(e),
            Ok(()) => Ok(id),
        }
    }

    /// Writes a chord's record to the events exchange, confirmed.
    pub(super) async fn publish_chord_record(
        &self,
        record: &ChordRecord,
    ) -> Result<(), PublishError> {
        let body = serde_json::to_vec(record).map_err(PublishError::Serialize)?;
        let properties = lapin::BasicProperties::default()
            .with_content_type(CHORD_CONTENT_TYPE.into())
            .with_type(CHORD_MESSAGE_TYPE.into())
            .with_delivery_mode(PERSISTENT)
            .with_message_id(record.callback_id().into())
            .with_timestamp(u64::try_from(chrono::Utc::now().timestamp()).unwrap_or(0));
        let key = format!("{}.chord", record.callback.task_type);
        self.publish_confirmed(&self.names().events_exchange(), &key, &body, properties)
            .await
    }

    pub(super) async fn publish_abort(
        &self,
        record: &ChordRecord,
        abort: &ChordAbort,
    ) -> Result<(), PublishError> {
        let body = serde_json::to_vec(abort).map_err(PublishError::Serialize)?;
        let properties = lapin::BasicProperties::default()
            .with_content_type(CHORD_ABORT_CONTENT_TYPE.into())
            .with_type(CHORD_ABORT_MESSAGE_TYPE.into())
            .with_delivery_mode(PERSISTENT)
            .with_message_id(format!("{}.abort", record.id).into())
            .with_timestamp(u64::try_from(chrono::Utc::now().timestamp()).unwrap_or(0));
        let key = format!("{}.chord.abort", record.callback.task_type);
        self.publish_confirmed(&self.names().events_exchange(), &key, &body, properties)
            .await
    }

    async fn publish_members(&self, id: &str, members: &[Step]) -> Result<(), GroupError> {
        for (i, m) in members.iter().enumerate() {
            let n = u32::try_from(i + 1).unwrap_or(u32::MAX);
            let options = PublishOptions {
                id: Some(step_id(id, n)),
                priority: m.priority,
                ..Default::default()
            };
            if let Err(source) = self.publish_task(&m.task_type, &m.body, options).await {
                return Err(GroupError::Partial {
                    id: id.to_owned(),
                    published: i,
                    total: members.len(),
                    source: Box::new(source),
                });
            }
        }
        Ok(())
    }
}
