//! What the gateway knows about workflows: the shape of each chain, group
//! and chord (its kind, its steps' task types, its callback), read from
//! the records producers write to the events stream before a workflow's
//! first task (`warren::workflow::WorkflowRecord` for chains and groups,
//! `ChordRecord` for chords), whoever started it: this gateway, another
//! replica, the Rust `Publisher` or a pika script.
//!
//! A reader of its own follows the stream from its first retained message
//! and keeps only these records, a few hundred bytes each, so every
//! replica knows every workflow within the stream's retention whatever its
//! status store. The steps' states come from the status store, by their
//! deterministic ids (`{id}.{n}`, `{id}.callback`).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable};
use tokio_util::sync::CancellationToken;
use warren::Names;
use warren::broker::{Backoff, BackoffReset, connect, reconnect_loop};
use warren::contract::broker_headers;
use warren::settings::BrokerSettings;
use warren::workflow::{
    CHORD_CONTENT_TYPE, ChordRecord, Link, OnFailure, StepShape, WORKFLOW_CONTENT_TYPE,
    WorkflowKind, WorkflowRecord, step_id,
};

/// With no message for this long, the reader has read what the stream
/// held at start-up.
const QUIET: Duration = Duration::from_millis(300);

/// A workflow's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Chain,
    Group,
    Chord,
}

/// A workflow's shape: enough to name and look up each of its tasks.
#[derive(Debug, Clone, PartialEq)]
pub struct Shape {
    pub id: String,
    pub kind: Kind,
    /// How many steps or members.
    pub size: u32,
    /// Their task types, in order, when the record names them (chains and
    /// groups; a chord's record has its size only).
    pub types: Vec<String>,
    /// A chord's callback type and policy.
    pub callback: Option<(String, OnFailure)>,
    /// A chain's groups, by link number: their members' types and policy
    /// (member `m` of the group at link `n` is the task `{id}.{n}.{m}`).
    pub groups: BTreeMap<u32, (Vec<String>, OnFailure)>,
    /// The task types of the steps after a chord's callback (step `k`,
    /// from 2, is the task `{id}.callback.{k}`).
    pub after: Vec<String>,
    /// When the record was written (the message's timestamp).
    pub recorded_at: Option<DateTime<Utc>>,
}

impl Shape {
    /// From a chain's or group's record.
    pub fn from_record(record: WorkflowRecord, at: Option<DateTime<Utc>>) -> Self {
        let mut types = Vec::with_capacity(record.steps.len());
        let mut groups = BTreeMap::new();
        for (i, step) in record.steps.into_iter().enumerate() {
            match step {
                StepShape::Task(t) => types.push(t),
                StepShape::Group { group, on_failure } => {
                    types.push(String::new());
                    groups.insert(
                        u32::try_from(i + 1).unwrap_or(u32::MAX),
                        (group, on_failure),
                    );
                }
            }
        }
        Self {
            size: u32::try_from(types.len()).unwrap_or(u32::MAX),
            kind: match record.kind {
                WorkflowKind::Chain => Kind::Chain,
                WorkflowKind::Group => Kind::Group,
            },
            id: record.id,
            types,
            callback: None,
            groups,
            after: Vec::new(),
            recorded_at: at,
        }
    }

    /// From a chord's record.
    /// From a chord's record. A chord that is a link of a chain (its
    /// record names the chain) is shown by the chain; it is kept too, so
    /// `GET /v1/workflows/{chain}.{n}` shows the group alone, its callback
    /// as `{chain}.{n+1}`.
    pub fn from_chord(record: ChordRecord, at: Option<DateTime<Utc>>) -> Self {
        // The steps after the callback, up to a group (shown by the chain).
        let after = if record.chain.is_none() {
            record
                .next
                .iter()
                .map_while(|l| match l {
                    Link::Task(s) => Some(s.task_type.clone()),
                    Link::Group(_) => None,
                })
                .collect()
        } else {
            Vec::new()
        };
        Self {
            id: record.id,
            kind: Kind::Chord,
            size: record.size,
            types: Vec::new(),
            callback: Some((record.callback.task_type, record.on_failure)),
            groups: BTreeMap::new(),
            after,
            recorded_at: at,
        }
    }

    /// Step or member `n`'s task id (from 1).
    pub fn task_id(&self, n: u32) -> String {
        step_id(&self.id, n)
    }

    /// Member `m` (from 1) of the group at link `n` of a chain.
    pub fn member_id(&self, n: u32, m: u32) -> String {
        step_id(&self.task_id(n), m)
    }

    /// The callback's task id, for a chord.
    pub fn callback_id(&self) -> Option<String> {
        self.callback
            .as_ref()
            .map(|_| format!("{}.callback", self.id))
    }

    /// Step `k` (from 2) of the chain after a chord's callback.
    pub fn after_id(&self, k: u32) -> String {
        format!("{}.callback.{k}", self.id)
    }

    /// Every task id of the workflow, in order.
    pub fn task_ids(&self) -> Vec<String> {
        let mut ids = Vec::new();
        for n in 1..=self.size {
            match self.groups.get(&n) {
                Some((types, _)) => {
                    ids.extend((1..=types.len() as u32).map(|m| self.member_id(n, m)));
                }
                None => ids.push(self.task_id(n)),
            }
        }
        ids.extend(self.callback_id());
        ids.extend((2..=self.after.len() as u32 + 1).map(|k| self.after_id(k)));
        ids
    }

    /// Whether `task_id` is one of this workflow's tasks.
    pub fn owns(&self, task_id: &str) -> bool {
        let Some(rest) = task_id
            .strip_prefix(self.id.as_str())
            .and_then(|r| r.strip_prefix('.'))
        else {
            return false;
        };
        let number = |s: &str, max: u32| {
            s.parse::<u32>()
                .is_ok_and(|n| (1..=max).contains(&n) && !s.starts_with('0'))
        };
        if rest == "callback" {
            return self.callback.is_some();
        }
        if let Some(k) = rest.strip_prefix("callback.") {
            return !self.after.is_empty() && k != "1" && number(k, self.after.len() as u32 + 1);
        }
        match rest.split_once('.') {
            Some((n, m)) => n.parse::<u32>().ok().is_some_and(|n| {
                !rest.starts_with('0')
                    && self
                        .groups
                        .get(&n)
                        .is_some_and(|(types, _)| number(m, types.len() as u32))
            }),
            None => {
                number(rest, self.size)
                    && !rest
                        .parse::<u32>()
                        .is_ok_and(|n| self.groups.contains_key(&n))
            }
        }
    }
}

/// The shapes known, at most `capacity` of them (the oldest forgotten
/// first), and whether the reader has caught up with the stream.
pub struct Workflows {
    shapes: RwLock<Shapes>,
    capacity: usize,
    caught_up: AtomicBool,
}

#[derive(Default)]
struct Shapes {
    by_id: HashMap<String, Shape>,
    order: VecDeque<String>,
}

impl Workflows {
    pub fn new(capacity: usize) -> Self {
        Self {
            shapes: RwLock::new(Shapes::default()),
            capacity: capacity.max(1),
            caught_up: AtomicBool::new(false),
        }
    }

    /// Adds (or replaces) a shape.
    pub fn add(&self, shape: Shape) {
        let mut shapes = self.shapes.write().unwrap_or_else(|e| e.into_inner());
        let id = shape.id.clone();
        if shapes.by_id.insert(id.clone(), shape).is_none() {
            shapes.order.push_back(id);
        }
        while shapes.by_id.len() > self.capacity {
            let Some(oldest) = shapes.order.pop_front() else {
                break;
            };
            shapes.by_id.remove(&oldest);
        }
    }

    pub fn get(&self, id: &str) -> Option<Shape> {
        self.shapes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .by_id
            .get(id)
            .cloned()
    }

    /// The `n` most recently recorded shapes, newest first.
    pub fn recent(&self, n: usize) -> Vec<Shape> {
        let shapes = self.shapes.read().unwrap_or_else(|e| e.into_inner());
        shapes
            .order
            .iter()
            .rev()
            .filter_map(|id| shapes.by_id.get(id).cloned())
            .take(n)
            .collect()
    }

    pub fn len(&self) -> usize {
        self.shapes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .by_id
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn mark_caught_up(&self) {
        if !self.caught_up.swap(true, Ordering::SeqCst) {
            tracing::info!(
                workflows = self.len(),
                "Read the workflow records from the events stream."
            );
        }
    }

    pub fn is_caught_up(&self) -> bool {
        self.caught_up.load(Ordering::SeqCst)
    }

    /// Applies one message of the stream: a workflow or chord record is
    /// kept; anything else is not this reader's.
    pub fn apply_message(
        &self,
        content_type: Option<&str>,
        timestamp: Option<u64>,
        body: &[u8],
    ) -> bool {
        let at = timestamp
            .and_then(|t| i64::try_from(t).ok())
            .and_then(|t| DateTime::from_timestamp(t, 0));
        let shape = match content_type {
            Some(WORKFLOW_CONTENT_TYPE) => serde_json::from_slice::<WorkflowRecord>(body)
                .map(|r| Shape::from_record(r, at))
                .map_err(|e| e.to_string()),
            Some(CHORD_CONTENT_TYPE) => serde_json::from_slice::<ChordRecord>(body)
                .map(|r| Shape::from_chord(r, at))
                .map_err(|e| e.to_string()),
            _ => return false,
        };
        match shape {
            Ok(shape) if !shape.id.is_empty() && shape.size > 0 => {
                self.add(shape);
                true
            }
            Ok(_) => false,
            Err(e) => {
                tracing::debug!(error = %e, "Skipped a workflow record that does not parse.");
                false
            }
        }
    }
}

/// Follows the events stream for workflow records until `shutdown`,
/// reconnecting with backoff; each session reads from the first retained
/// message (replacing a shape with itself is harmless).
pub async fn follow(
    settings: BrokerSettings,
    names: Names,
    identity: String,
    workflows: std::sync::Arc<Workflows>,
    shutdown: CancellationToken,
) {
    let backoff = Backoff::new(Duration::from_millis(250), settings.reconnect_max_delay);
    reconnect_loop(
        backoff,
        &shutdown,
        "The workflow reader lost the events stream; reconnecting.",
        |up| session(&settings, &names, &identity, &workflows, &shutdown, up),
    )
    .await;
}

#[derive(Debug, thiserror::Error)]
enum ReadError {
    #[error(transparent)]
    Connect(#[from] warren::broker::ConnectError),
    #[error("{0}")]
    Broker(#[from] lapin::Error),
    #[error("the broker ended the events stream consumer (was the stream deleted?)")]
    Ended,
}

async fn session(
    settings: &BrokerSettings,
    names: &Names,
    identity: &str,
    workflows: &Workflows,
    shutdown: &CancellationToken,
    backoff: BackoffReset,
) -> Result<(), ReadError> {
    let name = format!("{identity} workflows");
    let connection = tokio::select! {
        _ = shutdown.cancelled() => return Ok(()),
        c = connect(settings, &name) => c?,
    };
    let result = async {
        let channel = connection.create_channel().await?;
        channel.basic_qos(1000, BasicQosOptions::default()).await?;
        let mut args = FieldTable::default();
        args.insert(
            broker_headers::STREAM_OFFSET.into(),
            AMQPValue::LongString("first".into()),
        );
        // The gateway's broker task declares the stream; until it has, the
        // consume fails and this session starts over.
        let mut consumer = channel
            .basic_consume(
                names.events_stream().as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                args,
            )
            .await?;
        backoff.reset();
        // A message written after this session began means the stream's
        // past is read, even when messages never pause for `QUIET`.
        let began = u64::try_from(Utc::now().timestamp()).unwrap_or(0);
        loop {
            let next = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                next = tokio::time::timeout(QUIET, consumer.next()) => next,
            };
            let delivery = match next {
                Err(_quiet) => {
                    workflows.mark_caught_up();
                    continue;
                }
                Ok(None) => return Err(ReadError::Ended),
                Ok(Some(delivery)) => delivery?,
            };
            let _ = delivery.acker.ack(BasicAckOptions::default()).await;
            let p = &delivery.properties;
            if p.timestamp().is_some_and(|t| t > began) {
                workflows.mark_caught_up();
            }
            workflows.apply_message(
                p.content_type().as_ref().map(|c| c.as_str()),
                *p.timestamp(),
                &delivery.data,
            );
        }
    }
    .await;
    let _ = connection.close(200, "gateway stopping".into()).await;
    result
}

#[cfg(test)]
// A failing unwrap is how a test reports failure.
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn records_become_shapes_and_the_oldest_go_past_capacity() {
        let w = Workflows::new(2);
        let chain = br#"{"id":"c","kind":"chain","steps":["a.x","a.y"]}"#;
        assert!(w.apply_message(Some(WORKFLOW_CONTENT_TYPE), Some(1), chain));
        let chord = br#"{"id":"g","size":3,"callback":{"type":"a.cb"},"on_failure":"skip"}"#;
        assert!(w.apply_message(Some(CHORD_CONTENT_TYPE), None, chord));
        assert!(!w.apply_message(Some("application/json"), None, b"[]"));
        assert!(!w.apply_message(Some(WORKFLOW_CONTENT_TYPE), None, b"nope"));
        let c = w.get("c").unwrap();
        assert_eq!((c.kind, c.size), (Kind::Chain, 2));
        assert!(c.owns("c.2") && !c.owns("c.3") && !c.owns("c.callback") && !c.owns("c.02"));
        let g = w.get("g").unwrap();
        assert_eq!(g.callback_id().as_deref(), Some("g.callback"));
        assert!(g.owns("g.callback") && g.owns("g.3") && !g.owns("gg.1"));
        w.add(Shape {
            id: "h".into(),
            ..g.clone()
        });
        assert!(w.get("c").is_none(), "the oldest went");
        assert_eq!(w.len(), 2);
    }

    #[test]
    fn a_nested_chain_owns_its_group_members() {
        let w = Workflows::new(4);
        let chain = br#"{"id":"n","kind":"chain","steps":["a.x",{"group":["a.y","a.y"],"on_failure":"skip"},"a.z"]}"#;
        assert!(w.apply_message(Some(WORKFLOW_CONTENT_TYPE), Some(1), chain));
        let n = w.get("n").unwrap();
        assert_eq!(n.size, 3);
        assert_eq!(
            n.task_ids(),
            ["n.1", "n.2.1", "n.2.2", "n.3"].map(String::from)
        );
        assert!(n.owns("n.2.2") && n.owns("n.3") && !n.owns("n.2") && !n.owns("n.2.3"));
        assert!(!n.owns("n.1.1") && !n.owns("n.02.1"));
        let chord = br#"{"id":"g","size":2,"callback":{"type":"a.cb"},"next":[{"type":"a.z"}]}"#;
        assert!(w.apply_message(Some(CHORD_CONTENT_TYPE), None, chord));
        let g = w.get("g").unwrap();
        assert_eq!(g.after, ["a.z"]);
        assert!(g.owns("g.callback.2") && !g.owns("g.callback.3") && !g.owns("g.callback.1"));
    }
}
