//! What the gateway knows about tasks, behind one interface whatever the
//! status store (`status.store`):
//!
//! - `memory`: a [`StatusView`] built by reading the events stream from
//!   the start of retention. Every replica reads the same stream, so all
//!   of them answer alike.
//! - `redis`: the shared [`RedisStatusStore`] the one indexer writes
//!   ([`crate::indexer`]), plus a small view of the events this replica
//!   saw live (read from the stream's end): a task's stored record with
//!   the newer live events folded in by the same rules
//!   ([`TaskRecord::apply`]), so an answer does not wait for the indexer.
//!
//! Both keep a broadcast of each event as it is applied (for SSE), and the
//! tasks this replica has just published whose `queued` event has not come
//! back through the stream yet, which lets a client that polls right after
//! its 202 see `queued` instead of `unknown`.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio::sync::broadcast;
use warren::events::{
    ListQuery, Page, StatusView, StreamedEvent, TaskEvent, TaskRecord, TaskStatus,
};

use crate::metrics;
use warren::events::{RedisStatusStore, StatusStoreError as StoreError};

/// Live events buffered per SSE subscriber; one that falls further behind
/// catches up from the view.
const LIVE_BUFFER: usize = 1024;
/// How long a published task counts as known before its `queued` event
/// arrives through the stream.
const PENDING_TTL: Duration = Duration::from_secs(300);
/// Most tasks remembered as just published.
const PENDING_CAPACITY: usize = 10_000;

/// The status view and its live feed. Shared by the handlers and the task
/// that follows the stream.
pub struct Tracker {
    view: RwLock<StatusView>,
    shared: Option<RedisStatusStore>,
    store_answers: AtomicBool,
    pending: Mutex<Pending>,
    live: broadcast::Sender<StreamedEvent>,
    started_at: DateTime<Utc>,
    stream_declared: AtomicBool,
    caught_up: AtomicBool,
    /// A task last updated longer ago than this is unknown, whatever a
    /// view still holds (`events.retention`).
    retention: Option<chrono::Duration>,
}

#[derive(Default)]
struct Pending {
    tasks: HashMap<String, (TaskEvent, Instant)>,
    order: VecDeque<String>,
}

impl Tracker {
    /// A tracker on the `memory` store, holding at most `capacity` tasks.
    pub fn new(capacity: usize) -> Self {
        Self::build(capacity, None)
    }

    /// A tracker on the `redis` store, keeping the events of at most
    /// `recent` tasks it saw live.
    pub fn shared(recent: usize, store: RedisStatusStore) -> Self {
        Self::build(recent, Some(store))
    }

    fn build(capacity: usize, shared: Option<RedisStatusStore>) -> Self {
        let (live, _) = broadcast::channel(LIVE_BUFFER);
        Self {
            view: RwLock::new(StatusView::new(capacity)),
            shared,
            store_answers: AtomicBool::new(false),
            pending: Mutex::new(Pending::default()),
            live,
            started_at: Utc::now(),
            stream_declared: AtomicBool::new(false),
            caught_up: AtomicBool::new(false),
            retention: None,
        }
    }

    /// Answers nothing about a task last updated longer than `retention`
    /// ago (`events.retention`): not from the store (whose record may
    /// outlive it by the indexer's lag), not from the view (which holds
    /// what it saw live, or read from a stream segment not yet deleted,
    /// until it is pushed out).
    pub fn with_retention(mut self, retention: Duration) -> Self {
        self.retention = chrono::Duration::from_std(retention).ok();
        self
    }

    /// The oldest last update still within the retention.
    fn horizon(&self) -> Option<DateTime<Utc>> {
        self.retention.map(|r| Utc::now() - r)
    }

    /// Applies an event read from the stream and hands it to the live
    /// subscribers. Returns whether it was new.
    pub fn apply(&self, streamed: StreamedEvent) -> bool {
        let event_at = streamed.event.at;
        {
            let mut view = self.view.write().unwrap_or_else(|e| e.into_inner());
            // A replay after a reconnect starts from the first offset again;
            // the view ignores what it has applied already.
            if !view.apply(streamed.clone()) {
                return false;
            }
            metrics::get().tracked_tasks.set(view.len() as i64);
        }
        metrics::get().events_applied.inc();
        if let Ok(mut pending) = self.pending.lock() {
            pending.tasks.remove(&streamed.event.task_id);
        }
        if event_at >= self.started_at {
            self.mark_caught_up();
        }
        // No subscriber is not an error.
        let _ = self.live.send(streamed);
        true
    }

    /// Remembers a task this replica published, until its first event
    /// comes through the stream.
    pub fn published(&self, queued: TaskEvent) {
        let Ok(mut pending) = self.pending.lock() else {
            return;
        };
        let now = Instant::now();
        // Forget the expired (or already seen) from the front, and the
        // oldest while full.
        while let Some(oldest) = pending.order.front() {
            let stale = pending
                .tasks
                .get(oldest)
                .is_none_or(|(_, at)| now.duration_since(*at) > PENDING_TTL);
            if !stale && pending.tasks.len() < PENDING_CAPACITY {
                break;
            }
            if let Some(oldest) = pending.order.pop_front() {
                pending.tasks.remove(&oldest);
            }
        }
        // Ids the stream has already spoken for linger in the order queue
        // behind a live one; keep it from growing without bound.
        if pending.order.len() > PENDING_CAPACITY * 4 {
            let Pending { tasks, order } = &mut *pending;
            order.retain(|id| tasks.contains_key(id));
        }
        pending.order.push_back(queued.task_id.clone());
        pending.tasks.insert(queued.task_id.clone(), (queued, now));
    }

    /// The shared store, on `redis`.
    pub fn store(&self) -> Option<&RedisStatusStore> {
        self.shared.as_ref()
    }

    /// The task's status and history: the store's, with what this replica
    /// saw live folded in.
    async fn record(&self, task_id: &str) -> Result<Option<TaskRecord>, StoreError> {
        let horizon = self.horizon();
        let within = |r: &TaskRecord| horizon.is_none_or(|h| r.status.updated_at >= h);
        let live = self
            .view
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .record(task_id)
            .filter(|r| within(r))
            .cloned();
        let Some(store) = &self.shared else {
            return Ok(live);
        };
        let stored = store.record(task_id).await?.filter(within);
        Ok(match (stored, live) {
            (stored, None) => stored,
            (None, live) => live,
            (Some(mut stored), Some(live)) => {
                let max = store.options().max_events_per_task.max(1);
                for streamed in live.events {
                    if streamed.offset > stored.last_offset {
                        stored.apply(streamed, max);
                    }
                }
                Some(stored)
            }
        })
    }

    /// The task's status, if the store or this replica knows it.
    pub async fn status(&self, task_id: &str) -> Result<Option<TaskStatus>, StoreError> {
        let known = self.record(task_id).await?.map(|r| r.status);
        Ok(known.or_else(|| self.pending_status(task_id)))
    }

    /// One page of a listing, from the store (on `memory`, the view).
    /// Tasks past the retention are not listed.
    pub async fn list(&self, query: &ListQuery, max_scan: usize) -> Result<Page, StoreError> {
        let mut query = query.clone();
        if let Some(horizon) = self.horizon() {
            query.since = Some(query.since.map_or(horizon, |s| s.max(horizon)));
        }
        match &self.shared {
            Some(store) => store.list(&query, max_scan).await,
            None => Ok(self
                .view
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .list(&query)),
        }
    }

    fn pending_status(&self, task_id: &str) -> Option<TaskStatus> {
        let pending = self.pending.lock().ok()?;
        let (e, at) = pending.tasks.get(task_id)?;
        if at.elapsed() > PENDING_TTL {
            return None;
        }
        Some(TaskStatus {
            // `queued`, or `scheduled` with its due time.
            state: e.state,
            due_at: e.due_at,
            queued_at: Some(e.at),
            ..TaskStatus::first(e)
        })
    }

    /// Whether the task is known, from the store or as just published.
    pub async fn knows(&self, task_id: &str) -> Result<bool, StoreError> {
        Ok(self.status(task_id).await?.is_some())
    }

    /// The task's events so far, in lifecycle order.
    pub async fn events(&self, task_id: &str) -> Result<Vec<StreamedEvent>, StoreError> {
        Ok(self
            .record(task_id)
            .await?
            .map(|r| r.events)
            .unwrap_or_default())
    }

    /// Records whether the shared store answered its last ping.
    pub fn set_store_answers(&self, answers: bool) {
        self.store_answers.store(answers, Ordering::SeqCst);
    }

    /// On `redis`: whether the store answered its last ping.
    pub fn store_answers(&self) -> bool {
        self.store_answers.load(Ordering::SeqCst)
    }

    /// Live events, from now on. Subscribe before reading
    /// [`Tracker::events`] so nothing falls between the two.
    pub fn subscribe(&self) -> broadcast::Receiver<StreamedEvent> {
        self.live.subscribe()
    }

    pub fn set_stream_declared(&self) {
        self.stream_declared.store(true, Ordering::SeqCst);
    }

    /// The view has read everything the stream held at start-up.
    pub fn mark_caught_up(&self) {
        if !self.caught_up.swap(true, Ordering::SeqCst) {
            let tasks = self.len();
            tracing::info!(tasks, "Caught up with the task events.");
        }
    }

    pub fn is_caught_up(&self) -> bool {
        self.caught_up.load(Ordering::SeqCst)
    }

    pub fn is_stream_declared(&self) -> bool {
        self.stream_declared.load(Ordering::SeqCst)
    }

    /// Tasks in the view (on `redis`, those seen live).
    pub fn len(&self) -> usize {
        self.view.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
// A failing unwrap is how a test reports failure.
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use warren::events::TaskState;

    fn ev(offset: u64, id: &str, state: TaskState, at: DateTime<Utc>) -> StreamedEvent {
        let mut event = TaskEvent::new(id, "email.send", state, 1);
        event.at = at;
        StreamedEvent { offset, event }
    }

    #[tokio::test]
    async fn replays_are_not_applied_or_broadcast_twice() {
        let t = Tracker::new(10);
        let mut rx = t.subscribe();
        let now = Utc::now();
        assert!(t.apply(ev(1, "a", TaskState::Queued, now)));
        assert!(!t.apply(ev(1, "a", TaskState::Queued, now)));
        assert_eq!(rx.try_recv().unwrap().offset, 1);
        assert!(rx.try_recv().is_err());
        assert_eq!(t.events("a").await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn a_published_task_is_queued_until_the_stream_speaks() {
        let t = Tracker::new(10);
        assert!(t.status("p").await.unwrap().is_none());
        t.published(TaskEvent::new("p", "email.send", TaskState::Queued, 1));
        assert_eq!(
            t.status("p").await.unwrap().unwrap().state,
            TaskState::Queued
        );
        t.apply(ev(1, "p", TaskState::Running, Utc::now()));
        assert_eq!(
            t.status("p").await.unwrap().unwrap().state,
            TaskState::Running
        );
        assert!(t.pending.lock().unwrap().tasks.is_empty());
        assert_eq!(t.len(), 1);
    }

    #[tokio::test]
    async fn a_task_past_the_retention_is_unknown_though_the_view_holds_it() {
        let t = Tracker::new(10).with_retention(Duration::from_secs(60));
        let now = Utc::now();
        t.apply(ev(
            1,
            "old",
            TaskState::Succeeded,
            now - chrono::Duration::seconds(61),
        ));
        t.apply(ev(
            2,
            "new",
            TaskState::Succeeded,
            now - chrono::Duration::seconds(59),
        ));
        assert_eq!(t.len(), 2);
        assert!(t.status("old").await.unwrap().is_none());
        assert!(t.events("old").await.unwrap().is_empty());
        assert_eq!(
            t.status("new").await.unwrap().unwrap().state,
            TaskState::Succeeded
        );
        let page = t
            .list(
                &ListQuery {
                    limit: 10,
                    ..Default::default()
                },
                100,
            )
            .await
            .unwrap();
        let listed: Vec<_> = page.tasks.iter().map(|s| s.task_id.as_str()).collect();
        assert_eq!(listed, ["new"]);
    }

    #[test]
    fn an_event_newer_than_the_start_means_caught_up() {
        let t = Tracker::new(10);
        t.apply(ev(
            1,
            "old",
            TaskState::Queued,
            Utc::now() - chrono::Duration::hours(1),
        ));
        assert!(!t.is_caught_up());
        t.apply(ev(2, "new", TaskState::Queued, Utc::now()));
        assert!(t.is_caught_up());
    }
}
