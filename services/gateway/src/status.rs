//! What the gateway knows about tasks: the shared [`StatusView`] built
//! from the events stream, a broadcast of each event as it is applied (for
//! SSE), and the tasks this replica has just published whose `queued`
//! event has not come back through the stream yet.
//!
//! Every replica reads the same stream from the start of retention, so all
//! of them answer alike; the only per-replica state is the short-lived
//! "just published" list, which lets a client that polls right after its
//! 202 see `queued` instead of `unknown`.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio::sync::broadcast;
use warren::events::{StatusView, StreamedEvent, TaskEvent, TaskStatus};

use crate::metrics;

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
    pending: Mutex<Pending>,
    live: broadcast::Sender<StreamedEvent>,
    started_at: DateTime<Utc>,
    stream_declared: AtomicBool,
    caught_up: AtomicBool,
}

#[derive(Default)]
struct Pending {
    tasks: HashMap<String, (TaskEvent, Instant)>,
    order: VecDeque<String>,
}

impl Tracker {
    /// A tracker holding at most `capacity` tasks.
    pub fn new(capacity: usize) -> Self {
        let (live, _) = broadcast::channel(LIVE_BUFFER);
        Self {
            view: RwLock::new(StatusView::new(capacity)),
            pending: Mutex::new(Pending::default()),
            live,
            started_at: Utc::now(),
            stream_declared: AtomicBool::new(false),
            caught_up: AtomicBool::new(false),
        }
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

    /// The task's status, if the stream or this replica knows it.
    pub fn status(&self, task_id: &str) -> Option<TaskStatus> {
        let known = self
            .view
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(task_id)
            .cloned();
        known.or_else(|| self.pending_status(task_id))
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

    /// Whether the task is known, from the stream or as just published.
    pub fn knows(&self, task_id: &str) -> bool {
        self.status(task_id).is_some()
    }

    /// The task's events so far, in lifecycle order.
    pub fn events(&self, task_id: &str) -> Vec<StreamedEvent> {
        self.view
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .events(task_id)
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

    /// Tasks in the view.
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

    #[test]
    fn replays_are_not_applied_or_broadcast_twice() {
        let t = Tracker::new(10);
        let mut rx = t.subscribe();
        let now = Utc::now();
        assert!(t.apply(ev(1, "a", TaskState::Queued, now)));
        assert!(!t.apply(ev(1, "a", TaskState::Queued, now)));
        assert_eq!(rx.try_recv().unwrap().offset, 1);
        assert!(rx.try_recv().is_err());
        assert_eq!(t.events("a").len(), 1);
    }

    #[test]
    fn a_published_task_is_queued_until_the_stream_speaks() {
        let t = Tracker::new(10);
        assert!(t.status("p").is_none());
        t.published(TaskEvent::new("p", "email.send", TaskState::Queued, 1));
        assert_eq!(t.status("p").unwrap().state, TaskState::Queued);
        t.apply(ev(1, "p", TaskState::Running, Utc::now()));
        assert_eq!(t.status("p").unwrap().state, TaskState::Running);
        assert!(t.pending.lock().unwrap().tasks.is_empty());
        assert_eq!(t.len(), 1);
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
