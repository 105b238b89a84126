//! The status of every task seen in the stream, folded from its events
//! and bounded in memory: what `GET /v1/tasks/{id}` answers.

use std::collections::{HashMap, VecDeque};

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{StreamedEvent, TaskEvent, TaskState};

/// What is known about one task.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskStatus {
    /// The task's id.
    pub task_id: String,
    /// The task's type.
    pub task_type: String,
    /// Where it is (`progress` events leave it `running`).
    pub state: TaskState,
    /// The attempt of its latest event.
    pub attempt: u32,
    /// When it was published, if a `queued` event was seen.
    pub queued_at: Option<DateTime<Utc>>,
    /// When its first attempt started.
    pub started_at: Option<DateTime<Utc>>,
    /// Its latest event's time.
    pub updated_at: DateTime<Utc>,
    /// When it succeeded or was dead-lettered.
    pub finished_at: Option<DateTime<Utc>>,
    /// Retrying: when the next attempt starts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// Scheduled: when the task is due.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub due_at: Option<DateTime<Utc>>,
    /// The latest failure's kind.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_kind: Option<String>,
    /// The latest failure's message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Dead-lettered: `permanent` or `attempts_exhausted`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Succeeded: the handler's result.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    /// The latest `progress` of the current attempt, 0.0 to 1.0.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress: Option<f64>,
    /// The message of that `progress` event.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress_message: Option<String>,
}

impl TaskStatus {
    /// A task's status before `event`, its first, is applied: only its
    /// identity, state and time.
    pub fn first(event: &TaskEvent) -> Self {
        Self {
            task_id: event.task_id.clone(),
            task_type: event.task_type.clone(),
            state: event.state,
            attempt: event.attempt,
            queued_at: None,
            started_at: None,
            updated_at: event.at,
            finished_at: None,
            next_attempt_at: None,
            due_at: None,
            error_kind: None,
            error: None,
            reason: None,
            result: None,
            progress: None,
            progress_message: None,
        }
    }
}

/// One task's status and its history: what a status store keeps per task.
/// [`TaskRecord::apply`] holds the ordering rules every store follows, so
/// the in-memory view and a shared store answer alike.
#[derive(Debug, Clone)]
pub struct TaskRecord {
    /// Its status, as the events so far say.
    pub status: TaskStatus,
    /// The task's events, in lifecycle order; at most
    /// [`MAX_EVENTS_PER_TASK`] (or the store's own, smaller, bound).
    pub events: Vec<StreamedEvent>,
    /// The highest stream offset applied to this task.
    pub last_offset: u64,
}

impl TaskRecord {
    /// A task's record from its first event.
    pub fn first(streamed: StreamedEvent) -> Self {
        let mut record = Self {
            status: TaskStatus::first(&streamed.event),
            events: Vec::new(),
            last_offset: 0,
        };
        record.apply(streamed, MAX_EVENTS_PER_TASK);
        record
    }

    /// Applies one event of this task, keeping at most `max_events` in the
    /// history. Returns whether the event changed the state, not only the
    /// history (a late `queued`).
    ///
    /// A `queued` event older than the task's latest event is history
    /// only. The gateway emits `queued` once the broker has confirmed the
    /// task, on another connection than the worker's `running`, so it can
    /// reach the stream after `running` or even `succeeded`; its timestamp
    /// is taken before the publish. Such a late event supplies `queued_at`
    /// and takes its place in the task's history by time, but does not
    /// turn a running or finished task back into `queued`. A `queued`
    /// event newer than everything else (a replay from the parking lot, a
    /// task published again with the same id) does.
    pub fn apply(&mut self, streamed: StreamedEvent, max_events: usize) -> bool {
        self.last_offset = self.last_offset.max(streamed.offset);
        if streamed.event.state == TaskState::Queued
            && !self.events.is_empty()
            && streamed.event.at < self.status.updated_at
        {
            let at = streamed.event.at;
            let queued_at = self.status.queued_at.get_or_insert(at);
            *queued_at = (*queued_at).min(at);
            if self.events.len() < max_events {
                let position = self
                    .events
                    .iter()
                    .position(|e| e.event.at > at)
                    .unwrap_or(self.events.len());
                self.events.insert(position, streamed);
            }
            return false;
        }
        let e = &streamed.event;
        let s = &mut self.status;
        // A final state sticks, unless the task is queued anew (replayed
        // from the parking lot, or published again with the same id).
        if !s.state.is_final()
            || matches!(e.state, TaskState::Queued | TaskState::Scheduled)
            || self.events.is_empty()
        {
            // A progress event says the task is running.
            s.state = match e.state {
                TaskState::Progress => TaskState::Running,
                state => state,
            };
            s.attempt = e.attempt;
        }
        s.updated_at = e.at;
        match e.state {
            TaskState::Scheduled => {
                s.queued_at = Some(e.at);
                s.due_at = e.due_at;
                s.finished_at = None;
            }
            TaskState::Queued => {
                s.queued_at = Some(e.at);
                s.finished_at = None;
            }
            TaskState::Running => {
                s.started_at.get_or_insert(e.at);
                s.next_attempt_at = None;
                s.progress = None;
                s.progress_message = None;
            }
            TaskState::Progress => {
                s.progress = e.progress;
                s.progress_message.clone_from(&e.message);
            }
            TaskState::Retrying => {
                s.next_attempt_at = e.next_attempt_at;
                s.error_kind.clone_from(&e.error_kind);
                s.error.clone_from(&e.error);
            }
            TaskState::Succeeded => {
                s.finished_at = Some(e.at);
                s.result.clone_from(&e.result);
                s.next_attempt_at = None;
            }
            TaskState::DeadLettered => {
                s.finished_at = Some(e.at);
                s.error_kind.clone_from(&e.error_kind);
                s.error.clone_from(&e.error);
                s.reason.clone_from(&e.reason);
                s.next_attempt_at = None;
            }
        }
        if self.events.len() < max_events {
            self.events.push(streamed);
        }
        true
    }

    /// Where the task sorts in a listing, newest first: its last update
    /// in milliseconds, times 1000, plus its last offset modulo 1000, so
    /// tasks updated in the same millisecond still sort apart. Exact in an
    /// `f64` (a Redis sorted-set score) until the year 2255.
    pub fn position(&self) -> u64 {
        let ms = u64::try_from(self.status.updated_at.timestamp_millis()).unwrap_or(0);
        ms * 1000 + self.last_offset % 1000
    }
}

/// The lower bound of [`TaskRecord::position`] for tasks updated at or
/// after `since`.
pub fn position_since(since: DateTime<Utc>) -> u64 {
    u64::try_from(since.timestamp_millis()).unwrap_or(0) * 1000
}

/// What a listing asks for: tasks in this state, of this type, updated at
/// or after `since` and sorting before `before` (a page's cursor), newest
/// first, at most `limit`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ListQuery {
    /// Only tasks in this state.
    pub state: Option<TaskState>,
    /// Only tasks of this type.
    pub task_type: Option<String>,
    /// Only tasks updated at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Only tasks whose [`TaskRecord::position`] is below this.
    pub before: Option<u64>,
    /// At most this many tasks.
    pub limit: usize,
}

impl ListQuery {
    /// Whether `record` is one this query lists (all but the limit).
    pub fn matches(&self, record: &TaskRecord) -> bool {
        self.state.is_none_or(|s| s == record.status.state)
            && self
                .task_type
                .as_deref()
                .is_none_or(|t| t == record.status.task_type)
            && self.since.is_none_or(|s| record.status.updated_at >= s)
            && self.before.is_none_or(|b| record.position() < b)
    }
}

/// One page of a listing: the tasks, newest first, and the cursor of the
/// next page if there may be more.
#[derive(Debug, Clone, Default)]
pub struct Page {
    /// The tasks, newest first.
    pub tasks: Vec<TaskStatus>,
    /// The `before` cursor of the next page, if there may be more.
    pub next: Option<u64>,
}

/// The status of every task seen in the stream, bounded in memory: past
/// `capacity` tasks the least recently updated are forgotten, and each task
/// keeps at most `MAX_EVENTS_PER_TASK` events.
pub struct StatusView {
    tasks: HashMap<String, Entry>,
    order: VecDeque<(String, u64)>,
    capacity: usize,
    last_offset: Option<u64>,
}

struct Entry {
    record: TaskRecord,
    touched: u64,
}

/// Events kept per task for replay (`/events`).
pub const MAX_EVENTS_PER_TASK: usize = 64;

impl StatusView {
    /// A view keeping at most `capacity` tasks (the oldest finished go first).
    pub fn new(capacity: usize) -> Self {
        Self {
            tasks: HashMap::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
            last_offset: None,
        }
    }

    /// Applies one event and returns whether it was new: events at or
    /// before the last applied offset are ignored, so replaying is harmless.
    /// The ordering rules are [`TaskRecord::apply`]'s.
    pub fn apply(&mut self, streamed: StreamedEvent) -> bool {
        if let Some(last) = self.last_offset
            && streamed.offset <= last
            && streamed.offset != 0
        {
            return false;
        }
        self.last_offset = Some(streamed.offset);
        let touched = streamed.offset;
        let id = streamed.event.task_id.clone();
        match self.tasks.get_mut(&id) {
            Some(entry) => {
                if !entry.record.apply(streamed, MAX_EVENTS_PER_TASK) {
                    // History only: the task's place in the order stays.
                    return true;
                }
                entry.touched = touched;
            }
            None => {
                self.tasks.insert(
                    id.clone(),
                    Entry {
                        record: TaskRecord::first(streamed),
                        touched,
                    },
                );
            }
        }
        self.order.push_back((id, touched));
        self.evict();
        true
    }

    fn evict(&mut self) {
        while self.tasks.len() > self.capacity {
            let Some((id, touched)) = self.order.pop_front() else {
                break;
            };
            // Only the newest mention of a task counts.
            if self.tasks.get(&id).is_some_and(|e| e.touched == touched) {
                self.tasks.remove(&id);
            }
        }
        // Keep the order queue from growing without bound on busy tasks.
        if self.order.len() > self.capacity * 4 {
            let tasks = &self.tasks;
            self.order
                .retain(|(id, t)| tasks.get(id).is_some_and(|e| e.touched == *t));
        }
    }

    /// The status of `task_id`, if it is known.
    pub fn get(&self, task_id: &str) -> Option<&TaskStatus> {
        self.tasks.get(task_id).map(|e| &e.record.status)
    }

    /// The task's status and history.
    pub fn record(&self, task_id: &str) -> Option<&TaskRecord> {
        self.tasks.get(task_id).map(|e| &e.record)
    }

    /// The task's events so far, oldest first.
    pub fn events(&self, task_id: &str) -> Vec<StreamedEvent> {
        self.tasks
            .get(task_id)
            .map(|e| e.record.events.clone())
            .unwrap_or_default()
    }

    /// One page of the tasks `query` asks for, newest first.
    pub fn list(&self, query: &ListQuery) -> Page {
        let mut found: Vec<(u64, &TaskRecord)> = self
            .tasks
            .values()
            .filter(|e| query.matches(&e.record))
            .map(|e| (e.record.position(), &e.record))
            .collect();
        found.sort_unstable_by_key(|(p, _)| std::cmp::Reverse(*p));
        let more = found.len() > query.limit;
        found.truncate(query.limit);
        Page {
            next: if more {
                found.last().map(|(p, _)| *p)
            } else {
                None
            },
            tasks: found.into_iter().map(|(_, r)| r.status.clone()).collect(),
        }
    }

    /// Tasks known.
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    /// Whether no task is known.
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// The offset of the last event applied: where a reader resumes.
    pub fn last_offset(&self) -> Option<u64> {
        self.last_offset
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(offset: u64, id: &str, state: TaskState, attempt: u32) -> StreamedEvent {
        StreamedEvent {
            offset,
            event: TaskEvent::new(id, "email.send", state, attempt),
        }
    }

    #[test]
    fn progress_keeps_a_task_running_and_shows_the_latest_report() {
        let mut v = StatusView::new(10);
        v.apply(ev(1, "a", TaskState::Running, 1));
        let mut p = ev(2, "a", TaskState::Progress, 1);
        p.event.progress = Some(0.5);
        p.event.message = Some("half".into());
        v.apply(p);
        let s = v.get("a").unwrap();
        assert_eq!(s.state, TaskState::Running);
        assert_eq!(s.progress, Some(0.5));
        assert_eq!(s.progress_message.as_deref(), Some("half"));
        // A new attempt starts from nothing; the final state keeps the
        // last report.
        v.apply(ev(3, "a", TaskState::Running, 2));
        assert_eq!(v.get("a").unwrap().progress, None);
        let mut p = ev(4, "a", TaskState::Progress, 2);
        p.event.progress = Some(1.0);
        v.apply(p);
        v.apply(ev(5, "a", TaskState::Succeeded, 2));
        let s = v.get("a").unwrap();
        assert_eq!((s.state, s.progress), (TaskState::Succeeded, Some(1.0)));
        assert_eq!(v.events("a").len(), 5);
    }

    #[test]
    fn the_view_follows_a_task_through_its_life() {
        let mut v = StatusView::new(10);
        v.apply(ev(1, "a", TaskState::Queued, 1));
        assert_eq!(v.get("a").map(|s| s.state), Some(TaskState::Queued));
        v.apply(ev(2, "a", TaskState::Running, 1));
        let mut retry = ev(3, "a", TaskState::Retrying, 1);
        retry.event.error_kind = Some("smtp_transient".into());
        v.apply(retry);
        assert_eq!(
            v.get("a").unwrap().error_kind.as_deref(),
            Some("smtp_transient")
        );
        v.apply(ev(4, "a", TaskState::Running, 2));
        let mut done = ev(5, "a", TaskState::Succeeded, 2);
        done.event.result = Some(serde_json::json!({"ok": true}));
        v.apply(done);
        let s = v.get("a").unwrap();
        assert_eq!((s.state, s.attempt), (TaskState::Succeeded, 2));
        assert!(s.finished_at.is_some() && s.started_at.is_some() && s.queued_at.is_some());
        assert_eq!(v.events("a").len(), 5);
        // A late, stale event does not reopen a finished task.
        v.apply(ev(6, "a", TaskState::Running, 2));
        assert_eq!(v.get("a").unwrap().state, TaskState::Succeeded);
        // Replays of old offsets are ignored.
        v.apply(ev(3, "a", TaskState::Retrying, 1));
        assert_eq!(v.events("a").len(), 6);
        assert!(v.get("unknown").is_none());
    }

    #[test]
    fn a_late_queued_event_is_history_only() {
        let at = |offset: u64, state, when| {
            let mut e = ev(offset, "a", state, 1);
            e.event.at = when;
            e
        };
        let t0 = Utc::now();
        let later = t0 + chrono::Duration::milliseconds(5);
        let mut v = StatusView::new(10);
        assert!(v.apply(at(1, TaskState::Running, later)));
        assert!(v.apply(at(2, TaskState::Succeeded, later)));
        // The producer's `queued`, stamped before the publish, arrives last.
        assert!(v.apply(at(3, TaskState::Queued, t0)));
        let s = v.get("a").unwrap();
        assert_eq!(s.state, TaskState::Succeeded);
        assert_eq!(s.queued_at, Some(t0));
        assert!(s.finished_at.is_some());
        let order: Vec<_> = v.events("a").iter().map(|e| e.offset).collect();
        assert_eq!(order, vec![3, 1, 2], "queued first, in lifecycle order");
        // Queued anew later (a replay from the parking lot) does count.
        let replayed = later + chrono::Duration::seconds(1);
        assert!(v.apply(at(4, TaskState::Queued, replayed)));
        let s = v.get("a").unwrap();
        assert_eq!((s.state, s.queued_at), (TaskState::Queued, Some(replayed)));
        assert!(s.finished_at.is_none());
        // A replay of an old offset changes nothing.
        assert!(!v.apply(at(3, TaskState::Queued, t0)));
        assert_eq!(v.events("a").len(), 4);
    }

    #[test]
    fn the_view_is_bounded() {
        let mut v = StatusView::new(2);
        v.apply(ev(1, "a", TaskState::Queued, 1));
        v.apply(ev(2, "b", TaskState::Queued, 1));
        v.apply(ev(3, "a", TaskState::Running, 1));
        v.apply(ev(4, "c", TaskState::Queued, 1));
        assert_eq!(v.len(), 2);
        assert!(
            v.get("b").is_none(),
            "the least recently updated goes first"
        );
        assert!(v.get("a").is_some() && v.get("c").is_some());
    }

    #[test]
    fn listing_filters_and_pages_newest_first() {
        let mut v = StatusView::new(100);
        let t0 = Utc::now();
        for i in 0..10u64 {
            let mut e = ev(i + 1, &format!("t{i}"), TaskState::Queued, 1);
            e.event.at = t0 + chrono::Duration::milliseconds(i as i64);
            if i % 2 == 1 {
                e.event.task_type = "image.thumbnail".into();
            }
            v.apply(e);
        }
        let mut done = ev(11, "t3", TaskState::Succeeded, 1);
        done.event.task_type = "image.thumbnail".into();
        done.event.at = t0 + chrono::Duration::milliseconds(20);
        v.apply(done);
        let ids = |p: &Page| {
            p.tasks
                .iter()
                .map(|s| s.task_id.clone())
                .collect::<Vec<_>>()
        };
        let mut query = ListQuery {
            limit: 4,
            ..Default::default()
        };
        let first = v.list(&query);
        assert_eq!(ids(&first), ["t3", "t9", "t8", "t7"]);
        query.before = first.next;
        let second = v.list(&query);
        assert_eq!(ids(&second), ["t6", "t5", "t4", "t2"]);
        query.before = second.next;
        let last = v.list(&query);
        assert_eq!(ids(&last), ["t1", "t0"]);
        assert_eq!(last.next, None);
        let typed = v.list(&ListQuery {
            state: Some(TaskState::Queued),
            task_type: Some("image.thumbnail".into()),
            since: Some(t0 + chrono::Duration::milliseconds(5)),
            limit: 10,
            ..Default::default()
        });
        assert_eq!(ids(&typed), ["t9", "t7", "t5"]);
    }
}
