//! An in-memory test kit: run a worker's handlers without a broker, in
//! milliseconds, through the same code as production.
//!
//! A [`TestKit`] takes the [`Worker`]s you would [`crate::serve`] and
//! stands in for RabbitMQ. Each attempt goes through the runtime's own
//! attempt code (decoding, idempotency, the soft and hard time limits, a
//! panic as a failed attempt) and each failure through its own settle
//! decision (the retry ladder of `consumer.retry_delays`, max attempts,
//! the parking lot's reason); only the broker is replaced: a retry waits on
//! a virtual clock that moves when the test says so, and nothing sleeps.
//!
//! - **Eager** (the default): [`TestKit::publish`] runs the task inline,
//!   and everything it publishes that a worker of the kit handles, until
//!   nothing is due at the virtual now. [`TestKit::manual`] turns that off;
//!   [`TestKit::run_due`] then runs what is due.
//! - **Virtual time**: a retry or a delayed task
//!   ([`PublishOptions::delay`]) is due later; [`TestKit::advance`] moves
//!   the clock and runs what comes due on the way, [`TestKit::run_all`]
//!   runs until nothing is left.
//! - **Follow-ups** from `ctx.publish` are recorded with their causation
//!   id; those of a type a worker of the kit handles run too, the others are
//!   only recorded (with a broker, another worker's queue would take them).
//! - **Assertions**: every published task has a [`TaskRecord`] with its
//!   lifecycle as the [`TaskEvent`]s a real worker emits (`running`,
//!   `retrying`, `succeeded`, `dead_lettered`), its progress reports and
//!   its follow-ups.
//!
//! What it does not model: the per-type rate and concurrency limits
//! (attempts run one at a time), prefetch, and the broker's own failures.
//! Time limits run on tokio's clock (instant under `start_paused`).
//! Duplicate ids are skipped as under [`crate::serve`] with the default
//! settings: the kit gives its workers one in-memory idempotency store
//! (see [`TestKit::idempotency`]).
//!
//! ```
//! use warren::prelude::*;
//! use warren::testing::TestKit;
//!
//! #[derive(serde::Deserialize, serde::Serialize)]
//! struct Charge { cents: u32 }
//! impl Task for Charge { const TYPE: &'static str = "billing.charge"; }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let worker = Worker::for_task::<Charge>().handle(|ctx, _: Charge| async move {
//!     if ctx.attempt < 3 {
//!         return Err(TaskError::retry("gateway_busy", "try later"));
//!     }
//!     Ok(Outcome::done())
//! });
//! let mut kit = TestKit::new().worker(worker);
//! let id = kit.publish(&Charge { cents: 500 }).await;
//! kit.run_all().await; // the retry ladder's delays pass on the virtual clock
//! kit.task(&id).assert_succeeded().assert_attempts(3);
//! # }
//! ```

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use crate::contract::{DeadReason, MAX_PRIORITY};
use crate::events::{TaskEvent, TaskState};
use crate::idempotency::{IdempotencyStore, MemoryStore};
use crate::runtime::{Handled, Lane, Verdict, decide};
use crate::settings::IdempotencySettings;
use crate::{ContextRuntime, FollowUp, PublishOptions, Task, TaskContext, TaskError, Worker};
use warren_core::BoxFuture;

/// A run that goes on past this many attempts is taken for a loop (a task
/// that publishes itself forever) and panics.
const MAX_ATTEMPTS_PER_RUN: usize = 10_000;

/// Workers' handlers over an in-memory broker with a virtual clock. See
/// the [module docs](self).
pub struct TestKit {
    lanes: Vec<Lane>,
    /// Task type to the lane that handles it.
    routes: HashMap<&'static str, usize>,
    now: DateTime<Utc>,
    /// Attempts waiting for their due time.
    queue: Vec<Queued>,
    seq: u64,
    records: Vec<TaskRecord>,
    eager: bool,
    /// Shared by every worker of the kit, as [`crate::App`] shares one.
    idempotency: Option<Arc<dyn IdempotencyStore>>,
}

/// One attempt waiting for its due time.
struct Queued {
    due: DateTime<Utc>,
    seq: u64,
    /// Index of its task in `records`.
    record: usize,
    attempt: u32,
}

/// One published task, as the test kit saw it: what was published, and
/// what became of it.
#[derive(Debug, Clone)]
pub struct TaskRecord {
    /// The task id (given, or a UUID v7).
    pub id: String,
    /// Its type, the routing key.
    pub task_type: String,
    /// The body, as published.
    pub body: Vec<u8>,
    /// Its priority, 0-9.
    pub priority: u8,
    /// The id of the task whose handler published it, for a follow-up.
    pub causation_id: Option<String>,
    /// When it was published, on the kit's clock.
    pub published_at: DateTime<Utc>,
    /// Whether a worker of the kit handles its type (else it is only
    /// recorded).
    pub handled: bool,
    /// Its lifecycle events, as a real worker emits them: `running` per
    /// attempt, then `retrying`, `succeeded` or `dead_lettered`. A
    /// duplicate of an id that already succeeded has a `running` event and
    /// nothing after it, as in production.
    pub events: Vec<TaskEvent>,
    /// Every `ctx.progress` report, uncoalesced.
    pub progress: Vec<(f64, Option<String>)>,
    /// The id already succeeded (idempotency store): acked unrun.
    pub duplicate: bool,
}

impl TaskRecord {
    /// The last lifecycle state, `None` before its first attempt.
    pub fn state(&self) -> Option<TaskState> {
        self.events.last().map(|e| e.state)
    }

    /// Attempts started.
    pub fn attempts(&self) -> u32 {
        self.events
            .iter()
            .filter(|e| e.state == TaskState::Running)
            .count() as u32
    }

    /// The handler's result, once it succeeded.
    pub fn result(&self) -> Option<&serde_json::Value> {
        self.final_event(TaskState::Succeeded)
            .and_then(|e| e.result.as_ref())
    }

    /// Why it was parked, once it was.
    pub fn dead_reason(&self) -> Option<DeadReason> {
        let reason = self
            .final_event(TaskState::DeadLettered)?
            .reason
            .as_deref()?;
        DeadReason::ALL.into_iter().find(|r| r.as_str() == reason)
    }

    /// The error kinds of its failed attempts, in order.
    pub fn error_kinds(&self) -> Vec<&str> {
        self.events
            .iter()
            .filter_map(|e| e.error_kind.as_deref())
            .collect()
    }

    /// The body decoded as `T`.
    pub fn decode<T: Task>(&self) -> Result<T, TaskError> {
        T::decode(&self.body)
    }

    fn final_event(&self, state: TaskState) -> Option<&TaskEvent> {
        self.events.last().filter(|e| e.state == state)
    }

    /// Panics unless it succeeded.
    #[track_caller]
    pub fn assert_succeeded(&self) -> &Self {
        assert!(
            self.state() == Some(TaskState::Succeeded),
            "task {} was expected to succeed:\n{}",
            self.id,
            self.history()
        );
        self
    }

    /// Panics unless it was parked for `reason` after a failure of `kind`.
    #[track_caller]
    pub fn assert_parked(&self, reason: DeadReason, kind: &str) -> &Self {
        let parked = self.final_event(TaskState::DeadLettered);
        assert!(
            self.dead_reason() == Some(reason)
                && parked.and_then(|e| e.error_kind.as_deref()) == Some(kind),
            "task {} was expected to be parked ({}, {kind}):\n{}",
            self.id,
            reason.as_str(),
            self.history()
        );
        self
    }

    /// Panics unless it was tried `n` times.
    #[track_caller]
    pub fn assert_attempts(&self, n: u32) -> &Self {
        assert!(
            self.attempts() == n,
            "task {} was expected to take {n} attempts:\n{}",
            self.id,
            self.history()
        );
        self
    }

    /// Its lifecycle, one line per event, for failure messages.
    pub fn history(&self) -> String {
        let mut out = String::new();
        for e in &self.events {
            let _ = write!(out, "  attempt {} {}", e.attempt, e.state.as_str());
            if let Some(kind) = &e.error_kind {
                let _ = write!(out, " {kind}: {}", e.error.as_deref().unwrap_or(""));
            }
            if let Some(reason) = &e.reason {
                let _ = write!(out, " ({reason})");
            }
            out.push('\n');
        }
        if self.events.is_empty() {
            out.push_str("  (never run)\n");
        }
        out
    }
}

impl Default for TestKit {
    fn default() -> Self {
        Self::new()
    }
}

impl TestKit {
    /// An eager kit with no workers, its clock at the current time.
    pub fn new() -> Self {
        Self {
            lanes: Vec::new(),
            routes: HashMap::new(),
            now: Utc::now(),
            queue: Vec::new(),
            seq: 0,
            records: Vec::new(),
            eager: true,
            idempotency: Some(Arc::new(memory_store())),
        }
    }

    /// Deduplicates task ids with `store` instead of the kit's in-memory
    /// one; `None` turns deduplication off (`idempotency.backend = "off"`).
    /// As with [`crate::App`], a worker's own store is replaced.
    pub fn idempotency(mut self, store: Option<Arc<dyn IdempotencyStore>>) -> Self {
        for lane in &mut self.lanes {
            lane.set_idempotency(store.clone());
        }
        self.idempotency = store;
        self
    }

    /// Adds a worker: its task types run on the kit, under its consumer
    /// settings (the retry ladder, max attempts, the time limit).
    pub fn worker<S: Send + Sync + 'static>(mut self, worker: Worker<S>) -> Self {
        let mut lane = worker.into_lane();
        lane.set_idempotency(self.idempotency.clone());
        let index = self.lanes.len();
        for task_type in lane.task_types() {
            self.routes.insert(task_type, index);
        }
        self.lanes.push(lane);
        self
    }

    /// Publishing only queues; [`TestKit::run_due`], [`TestKit::advance`]
    /// or [`TestKit::run_all`] run.
    pub fn manual(mut self) -> Self {
        self.eager = false;
        self
    }

    /// The virtual now.
    pub fn now(&self) -> DateTime<Utc> {
        self.now
    }

    /// Attempts waiting for their due time.
    pub fn pending(&self) -> usize {
        self.queue.len()
    }

    /// When the next waiting attempt is due.
    pub fn next_due(&self) -> Option<DateTime<Utc>> {
        self.queue.iter().map(|q| q.due).min()
    }

    /// Publishes `task` with its type's priority; returns its id. Eager:
    /// runs it, and what it publishes, before returning.
    pub async fn publish<T: Task + serde::Serialize>(&mut self, task: &T) -> String {
        let options = PublishOptions {
            priority: Some(T::OPTIONS.priority),
            ..PublishOptions::default()
        };
        self.publish_with(task, options).await
    }

    /// Publishes `task` with `options` (its id, priority, delay or due
    /// time, on the kit's clock); returns its id.
    ///
    /// # Panics
    /// If the task does not serialize to JSON.
    pub async fn publish_with<T: Task + serde::Serialize>(
        &mut self,
        task: &T,
        options: PublishOptions,
    ) -> String {
        let body = match serde_json::to_vec(task) {
            Ok(body) => body,
            Err(e) => panic!("the {} task does not serialize: {e}", T::TYPE),
        };
        self.publish_raw(T::TYPE, body, options).await
    }

    /// Publishes a raw body as `task_type`, e.g. to test bad input.
    pub async fn publish_raw(
        &mut self,
        task_type: &str,
        body: impl Into<Vec<u8>>,
        options: PublishOptions,
    ) -> String {
        let due = options.due.map(|d| d.at(self.now));
        let id = options
            .id
            .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
        self.record(
            id.clone(),
            task_type,
            body.into(),
            options.priority.unwrap_or(0),
            None,
            due,
        );
        if self.eager {
            self.run_due().await;
        }
        id
    }

    /// Records a published task and queues its first attempt if a worker
    /// handles it.
    fn record(
        &mut self,
        id: String,
        task_type: &str,
        body: Vec<u8>,
        priority: u8,
        causation_id: Option<String>,
        due: Option<DateTime<Utc>>,
    ) {
        let handled = self.routes.contains_key(task_type);
        self.records.push(TaskRecord {
            id,
            task_type: task_type.to_owned(),
            body,
            priority,
            causation_id,
            published_at: self.now,
            handled,
            events: Vec::new(),
            progress: Vec::new(),
            duplicate: false,
        });
        if handled {
            let record = self.records.len() - 1;
            self.enqueue(record, 1, due.unwrap_or(self.now).max(self.now));
        }
    }

    fn enqueue(&mut self, record: usize, attempt: u32, due: DateTime<Utc>) {
        self.seq += 1;
        self.queue.push(Queued {
            due,
            seq: self.seq,
            record,
            attempt,
        });
    }

    /// The next attempt due at or before `until`: the earliest, then the
    /// highest priority, then the first published.
    fn take_next(&mut self, until: DateTime<Utc>) -> Option<Queued> {
        let records = &self.records;
        let index = self
            .queue
            .iter()
            .enumerate()
            .filter(|(_, q)| q.due <= until)
            .min_by_key(|(_, q)| (q.due, std::cmp::Reverse(records[q.record].priority), q.seq))
            .map(|(i, _)| i)?;
        Some(self.queue.swap_remove(index))
    }

    /// Runs every attempt due at the virtual now, and what those publish
    /// for now; returns how many ran.
    pub async fn run_due(&mut self) -> usize {
        self.run_until(self.now).await
    }

    /// Moves the clock forward by `by`, running each attempt that comes due
    /// on the way at its due time; returns how many ran.
    pub async fn advance(&mut self, by: Duration) -> usize {
        let until = self.now + chrono::Duration::from_std(by).unwrap_or(chrono::Duration::MAX);
        let ran = self.run_until(until).await;
        self.now = until;
        ran
    }

    /// Runs until nothing is left to run, moving the clock to each due
    /// time; returns how much virtual time passed.
    ///
    /// # Panics
    /// After 10 000 attempts: a task that publishes itself forever.
    pub async fn run_all(&mut self) -> Duration {
        let start = self.now;
        self.run_until(DateTime::<Utc>::MAX_UTC).await;
        (self.now - start).to_std().unwrap_or_default()
    }

    async fn run_until(&mut self, until: DateTime<Utc>) -> usize {
        let mut ran = 0;
        while let Some(next) = self.take_next(until) {
            self.now = self.now.max(next.due);
            self.attempt(next).await;
            ran += 1;
            assert!(
                ran <= MAX_ATTEMPTS_PER_RUN,
                "more than {MAX_ATTEMPTS_PER_RUN} attempts in one run: does a task publish itself forever?"
            );
        }
        ran
    }

    /// One attempt, through the runtime's attempt code and settle decision.
    async fn attempt(&mut self, q: Queued) {
        let rec = &self.records[q.record];
        let Some(&lane_index) = self.routes.get(rec.task_type.as_str()) else {
            return;
        };
        let lane = &self.lanes[lane_index];
        let dispatch = lane.dispatch();
        let mut ctx = TaskContext::new(rec.id.clone(), rec.task_type.clone());
        ctx.attempt = q.attempt;
        ctx.max_attempts = dispatch.max_attempts(&rec.task_type);
        ctx.priority = rec.priority;
        ctx.published_at = Some(rec.published_at);
        ctx.causation_id = rec.causation_id.clone();
        let body = rec.body.clone();
        let cancel = CancellationToken::new();
        let runtime = Arc::new(KitRuntime {
            captured: Mutex::default(),
            cancel: cancel.clone(),
        });
        let running = TaskEvent::new(&ctx.id, &ctx.task_type, TaskState::Running, q.attempt);
        let result = dispatch
            .run(ctx.clone().with_runtime(runtime.clone()), &body, &cancel)
            .await;
        let event = |state| {
            let mut e = TaskEvent::new(&ctx.id, &ctx.task_type, state, q.attempt);
            e.at = self.now;
            e
        };
        let settled = match result {
            Ok(Handled::Duplicate) => None,
            Ok(Handled::Done(outcome)) => {
                dispatch.mark_done(&ctx).await;
                let mut e = event(TaskState::Succeeded);
                e.result = outcome.result;
                Some(e)
            }
            Err(err) => {
                let verdict = decide(
                    &err,
                    q.attempt,
                    ctx.max_attempts,
                    &lane.consumer.retry_delays,
                );
                let mut e = match verdict {
                    Verdict::Retry { delay, .. } => {
                        let mut e = event(TaskState::Retrying);
                        e.next_attempt_at =
                            Some(self.now + chrono::Duration::from_std(delay).unwrap_or_default());
                        e
                    }
                    Verdict::Park(reason) => {
                        let mut e = event(TaskState::DeadLettered);
                        e.reason = Some(reason.as_str().to_owned());
                        e
                    }
                };
                e.error_kind = Some(err.kind.to_string());
                e.error = Some(err.message);
                Some(e)
            }
        };
        let mut running = running;
        running.at = self.now;
        let captured = std::mem::take(&mut *lock(&runtime.captured));
        let rec = &mut self.records[q.record];
        rec.events.push(running);
        rec.progress.extend(captured.progress);
        rec.duplicate |= settled.is_none();
        let retry_at = settled
            .as_ref()
            .and_then(|e| e.next_attempt_at.filter(|_| e.state == TaskState::Retrying));
        rec.events.extend(settled);
        if let Some(at) = retry_at {
            self.enqueue(q.record, q.attempt + 1, at);
        }
        for (id, follow_up) in captured.follow_ups {
            self.record(
                id,
                &follow_up.task_type,
                follow_up.body,
                follow_up.priority,
                Some(ctx.id.clone()),
                None,
            );
        }
    }

    /// The task published with `id` (the first, if the id was published
    /// more than once).
    ///
    /// # Panics
    /// If no task with that id was published.
    #[track_caller]
    pub fn task(&self, id: &str) -> &TaskRecord {
        match self.records.iter().find(|r| r.id == id) {
            Some(r) => r,
            None => panic!("no task with id {id} was published"),
        }
    }

    /// Every task published, follow-ups included, in publish order.
    pub fn published(&self) -> &[TaskRecord] {
        &self.records
    }

    /// The tasks of `task_type` published, in order.
    pub fn published_of(&self, task_type: &str) -> Vec<&TaskRecord> {
        self.records
            .iter()
            .filter(|r| r.task_type == task_type)
            .collect()
    }

    /// The follow-ups the task `parent_id` published, in order.
    pub fn follow_ups(&self, parent_id: &str) -> Vec<&TaskRecord> {
        self.records
            .iter()
            .filter(|r| r.causation_id.as_deref() == Some(parent_id))
            .collect()
    }

    /// The tasks in the parking lot.
    pub fn parked(&self) -> Vec<&TaskRecord> {
        self.records
            .iter()
            .filter(|r| r.state() == Some(TaskState::DeadLettered))
            .collect()
    }
}

/// The memory store of the default settings.
fn memory_store() -> MemoryStore {
    let defaults = IdempotencySettings::default();
    MemoryStore::new(defaults.memory_capacity, defaults.ttl)
}

/// What one attempt's context captured.
#[derive(Default)]
struct Captured {
    follow_ups: Vec<(String, FollowUp)>,
    progress: Vec<(f64, Option<String>)>,
}

/// The runtime behind a kit attempt's [`TaskContext`].
struct KitRuntime {
    captured: Mutex<Captured>,
    cancel: CancellationToken,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl ContextRuntime for KitRuntime {
    fn publish(&self, follow_up: FollowUp) -> BoxFuture<Result<String, TaskError>> {
        // As the broker's publisher checks them.
        let checked = if serde_json::from_slice::<serde_json::Value>(&follow_up.body).is_err() {
            Err(TaskError::permanent(
                "invalid_follow_up",
                format!("the {} follow-up is not JSON", follow_up.task_type),
            ))
        } else if follow_up.priority > MAX_PRIORITY {
            Err(TaskError::permanent(
                "invalid_follow_up",
                format!(
                    "the {} follow-up's priority {} is out of range 0-{MAX_PRIORITY}",
                    follow_up.task_type, follow_up.priority
                ),
            ))
        } else {
            let id = follow_up
                .id
                .clone()
                .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
            lock(&self.captured)
                .follow_ups
                .push((id.clone(), follow_up));
            Ok(id)
        };
        Box::pin(std::future::ready(checked))
    }

    fn progress(&self, fraction: f64, message: Option<String>) {
        lock(&self.captured).progress.push((fraction, message));
    }

    fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    fn cancelled(&self) -> BoxFuture<()> {
        let cancel = self.cancel.clone();
        Box::pin(async move { cancel.cancelled().await })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::Outcome;
    use crate::settings::ConsumerSettings;

    #[derive(serde::Deserialize, serde::Serialize)]
    #[serde(deny_unknown_fields)]
    struct Flaky {
        fail_times: u32,
        permanent: bool,
    }
    impl Task for Flaky {
        const TYPE: &'static str = "kit.flaky";
    }

    #[derive(serde::Deserialize, serde::Serialize)]
    struct Note {
        text: String,
    }
    impl Task for Note {
        const TYPE: &'static str = "kit.note";
    }

    fn worker() -> Worker {
        let consumer = ConsumerSettings {
            retry_delays: vec![Duration::from_secs(10), Duration::from_secs(60)],
            ..ConsumerSettings::default()
        };
        Worker::for_task::<Flaky>()
            .settings(Default::default(), consumer)
            .handle(|ctx, task: Flaky| async move {
                if task.permanent {
                    return Err(TaskError::permanent("refused", "no"));
                }
                if ctx.attempt <= task.fail_times {
                    return Err(TaskError::retry("busy", "later"));
                }
                ctx.progress(1.0, "done".to_owned());
                ctx.publish(&Note { text: "hi".into() }).await?;
                Ok(Outcome::with_result(serde_json::json!(ctx.attempt)))
            })
    }

    #[tokio::test]
    async fn retries_wait_on_the_virtual_clock_and_follow_ups_are_recorded() {
        let mut kit = TestKit::new().worker(worker());
        let id = kit
            .publish(&Flaky {
                fail_times: 2,
                permanent: false,
            })
            .await;
        kit.task(&id).assert_attempts(1);
        assert_eq!(kit.task(&id).state(), Some(TaskState::Retrying));
        // Not yet: the first rung is 10 s.
        assert_eq!(kit.advance(Duration::from_secs(9)).await, 0);
        assert_eq!(kit.advance(Duration::from_secs(1)).await, 1);
        assert_eq!(kit.run_all().await, Duration::from_secs(60));
        let task = kit.task(&id);
        task.assert_succeeded().assert_attempts(3);
        assert_eq!(task.error_kinds(), ["busy", "busy"]);
        assert_eq!(task.result(), Some(&serde_json::json!(3)));
        assert_eq!(task.progress, [(1.0, Some("done".to_owned()))]);
        let notes = kit.follow_ups(&id);
        assert_eq!(notes.len(), 1);
        assert!(!notes[0].handled);
        assert_eq!(notes[0].decode::<Note>().unwrap().text, "hi");
    }

    #[tokio::test]
    async fn failures_are_parked_with_their_reason() {
        let mut kit = TestKit::new().worker(worker());
        let permanent = kit
            .publish(&Flaky {
                fail_times: 0,
                permanent: true,
            })
            .await;
        let exhausted = kit
            .publish(&Flaky {
                fail_times: 9,
                permanent: false,
            })
            .await;
        let bad = kit
            .publish_raw(Flaky::TYPE, "{\"x\": 1}", PublishOptions::default())
            .await;
        kit.run_all().await;
        kit.task(&permanent)
            .assert_parked(DeadReason::Permanent, "refused")
            .assert_attempts(1);
        // Three rungs' worth: the default max attempts is the ladder + 1.
        kit.task(&exhausted)
            .assert_parked(DeadReason::AttemptsExhausted, "busy")
            .assert_attempts(3);
        kit.task(&bad)
            .assert_parked(DeadReason::Permanent, "unknown_field");
        assert_eq!(kit.parked().len(), 3);
    }

    #[tokio::test]
    async fn a_duplicate_id_is_acked_unrun_unless_deduplication_is_off() {
        let task = Flaky {
            fail_times: 0,
            permanent: false,
        };
        let once = || PublishOptions {
            id: Some("same".into()),
            ..PublishOptions::default()
        };
        let mut kit = TestKit::new().worker(worker());
        kit.publish_with(&task, once()).await;
        kit.publish_with(&task, once()).await;
        let runs = kit.published_of(Flaky::TYPE);
        runs[0].assert_succeeded();
        assert!(runs[1].duplicate && runs[1].state() == Some(TaskState::Running));
        assert_eq!(kit.published_of(Note::TYPE).len(), 1);

        let mut kit = TestKit::new().worker(worker()).idempotency(None);
        kit.publish_with(&task, once()).await;
        kit.publish_with(&task, once()).await;
        assert_eq!(kit.published_of(Note::TYPE).len(), 2);
    }

    #[tokio::test]
    async fn delayed_tasks_wait_and_manual_kits_run_on_demand() {
        let mut kit = TestKit::new().worker(worker()).manual();
        let task = Flaky {
            fail_times: 0,
            permanent: false,
        };
        let now = kit.publish(&task).await;
        let later = kit
            .publish_with(
                &task,
                PublishOptions::default().delay(Duration::from_secs(3600)),
            )
            .await;
        assert_eq!(kit.task(&now).state(), None);
        assert_eq!(kit.run_due().await, 1);
        kit.task(&now).assert_succeeded();
        assert_eq!(kit.pending(), 1);
        kit.advance(Duration::from_secs(3599)).await;
        assert_eq!(kit.task(&later).state(), None);
        kit.advance(Duration::from_secs(1)).await;
        kit.task(&later).assert_succeeded();
    }
}
