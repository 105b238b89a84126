//! One leader, held by the broker: the exclusive queue
//! `{ns}.conductor.leader`, which only one connection can hold and which
//! the broker deletes when that connection closes (a clean stop, a crash,
//! a kill -9: the kernel closes the socket). Standbys try to declare it
//! every `conductor.takeover_poll`.
//!
//! Fencing: the leader publishes only over the connection that holds the
//! lock. When that connection is lost, so is the lock, and the channel it
//! publishes on is gone with it: a former leader cannot publish.
//!
//! Each fire publishes the task (id `{schedule}@{time}`) and its
//! `scheduled` event in one AMQP transaction on that connection, so both
//! reach the broker or neither does; `tx.commit-ok` is the broker's
//! confirmation. A new leader reads the events stream's tail for each
//! schedule's last fire, makes the fires missed within
//! `conductor.misfire_grace` (late) and applies the schedule's misfire
//! policy to older ones.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, QueueDeclareOptions,
};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection};
use tokio_util::sync::CancellationToken;
use tracing::info;
use warren::broker::{
    Backoff, BackoffReset, ConnectError, connect_without_recovery, reconnect_loop, worker_identity,
};
use warren::contract::{CONTENT_TYPE_JSON, EVENT_MESSAGE_TYPE, Names, PERSISTENT, broker_headers};
use warren::events::{TaskEvent, TaskState, envelope};
use warren::topology::Topology;
use warren::{TopologyError, task_properties};

use crate::metrics;
use crate::schedule::{Misfire, Schedule, ScheduleError, parse_all, parse_task_id};
use crate::settings::{ConductorSettings, Settings};
use crate::state::Shared;

/// With no event for this long, a new leader has read the stream's tail.
const TAIL_QUIET: Duration = Duration::from_millis(500);
/// How often the leader checks that its connection (its lock) is alive
/// while it waits for the next fire.
const LOCK_CHECK: Duration = Duration::from_millis(100);
/// At most this many late fires per schedule are made on a takeover.
const MAX_CATCH_UP: usize = 10_000;

#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("{0}")]
    Broker(#[from] lapin::Error),
    #[error(transparent)]
    Topology(Box<TopologyError>),
    #[error("the connection holding the leader lock was lost")]
    LockLost,
    #[error("the connection was lost while standing by")]
    ConnectionLost,
    #[error("a task could not be serialized: {0}")]
    Serialize(#[from] serde_json::Error),
    #[error("chords: {0}")]
    Chord(#[from] crate::chord::TrackError),
}

/// The conductor: schedules, and the loop that leads or stands by.
pub struct Conductor {
    broker: warren::settings::BrokerSettings,
    settings: ConductorSettings,
    schedules: Arc<Vec<Schedule>>,
    shared: Arc<Shared>,
    identity: String,
    names: Names,
    connected: Arc<AtomicBool>,
}

impl Conductor {
    /// Checks the schedules; connects nothing yet.
    pub fn build(settings: Settings) -> Result<Self, ScheduleError> {
        let schedules = parse_all(&settings.schedules)?;
        let identity = worker_identity("conductor");
        let shared = Shared::new(&identity, &schedules);
        Ok(Self {
            names: settings.broker.names(),
            broker: settings.broker,
            settings: settings.conductor,
            schedules: Arc::new(schedules),
            shared,
            identity,
            connected: Arc::default(),
        })
    }

    /// What `GET /v1/schedules` shows.
    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    pub fn schedules(&self) -> &[Schedule] {
        &self.schedules
    }

    /// Connected to the broker (leading or standing by), for `/readyz`.
    pub fn readiness(&self) -> impl Fn() -> Result<(), String> + Send + Sync + 'static {
        let connected = self.connected.clone();
        move || {
            if connected.load(Ordering::SeqCst) {
                Ok(())
            } else {
                Err("not connected to the broker".to_owned())
            }
        }
    }

    /// Leads or stands by until `shutdown`, reconnecting with backoff.
    pub async fn run(self, shutdown: CancellationToken) {
        info!(
            identity = %self.identity,
            schedules = self.schedules.len(),
            lock = %self.lock_queue(),
            "Conductor starting."
        );
        let backoff = Backoff::new(Duration::from_millis(250), self.broker.reconnect_max_delay);
        reconnect_loop(
            backoff,
            &shutdown,
            "Conductor session ended; reconnecting.",
            |up| async {
                let result = self.session(&shutdown, up).await;
                self.connected.store(false, Ordering::SeqCst);
                self.step_down();
                result
            },
        )
        .await;
        info!(identity = %self.identity, "Conductor stopped.");
    }

    fn lock_queue(&self) -> String {
        format!("{}.conductor.leader", self.names.namespace())
    }

    fn step_down(&self) {
        if self.shared.snapshot().leader {
            info!(identity = %self.identity, "No longer the leader.");
        }
        metrics::leader(false);
        self.shared.set_leader(false);
    }

    async fn session(
        &self,
        shutdown: &CancellationToken,
        backoff: BackoffReset,
    ) -> Result<(), SessionError> {
        let name = format!("{} leader", self.identity);
        let connection = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            // No recovery: a lost connection is a lost lock; start over.
            c = connect_without_recovery(&self.broker, &name) => c?,
        };
        let result = self.connected(&connection, shutdown, &backoff).await;
        // Closing the connection releases the lock at once. A connection
        // already lost may never answer the close: do not wait on it.
        let _ = tokio::time::timeout(
            self.broker.connect_timeout,
            connection.close(200, "conductor stopping".into()),
        )
        .await;
        result
    }

    async fn connected(
        &self,
        connection: &Connection,
        shutdown: &CancellationToken,
        backoff: &BackoffReset,
    ) -> Result<(), SessionError> {
        warren::events::declare_stream(connection, &self.names, self.settings.events_retention)
            .await?;
        // The work queues of the schedules' task types, so a fire made
        // before any worker has started waits in its queue.
        for queue in warren_tasks::WORK_QUEUES {
            if self.schedules.iter().any(|s| {
                let stem = s.task_type().split('.').next().unwrap_or_default();
                stem == queue.stem
            }) {
                let kind = self.broker.queue_kind();
                Topology::with_kind(&self.names, queue.stem, queue.binding_keys, &[], kind)
                    .declare(connection)
                    .await
                    .map_err(|e| SessionError::Topology(Box::new(e)))?;
            }
        }
        self.connected.store(true, Ordering::SeqCst);
        backoff.reset();
        let mut announced = false;
        // While standing by, the fires on the stream tell who leads.
        let mut follower: Option<CancellationToken> = None;
        let stop_following = |follower: &mut Option<CancellationToken>| {
            if let Some(stop) = follower.take() {
                stop.cancel();
            }
        };
        loop {
            // A connection lost while standing by (it does not recover) can
            // leave the lock's declare waiting for an answer that never
            // comes: watch the connection and shutdown meanwhile.
            let lock_queue = self.lock_queue();
            let locked = tokio::select! {
                _ = shutdown.cancelled() => {
                    stop_following(&mut follower);
                    return Ok(());
                }
                _ = lost(connection) => Err(SessionError::ConnectionLost),
                locked = try_lock(connection, &lock_queue) => locked.map_err(SessionError::from),
            };
            match locked {
                Ok(true) => break,
                Ok(false) => {}
                Err(e) => {
                    stop_following(&mut follower);
                    return Err(e);
                }
            }
            if !announced {
                info!(lock = %self.lock_queue(), "Another conductor leads; standing by.");
                announced = true;
                follower = Some(self.follow_fires(connection).await?);
            }
            tokio::select! {
                _ = shutdown.cancelled() => {
                    stop_following(&mut follower);
                    return Ok(());
                }
                _ = lost(connection) => {
                    stop_following(&mut follower);
                    return Err(SessionError::ConnectionLost);
                }
                _ = tokio::time::sleep(self.settings.takeover_poll) => {}
            }
        }
        stop_following(&mut follower);
        let acquired = Utc::now();
        metrics::took_over();
        metrics::leader(true);
        self.shared.set_leader(true);
        info!(identity = %self.identity, lock = %self.lock_queue(), "Took the leader lock.");
        let last = self.read_last_fires(connection, acquired).await?;
        // The schedules' fires and the chords' callbacks, both only while
        // this connection holds the lock.
        tokio::select! {
            led = self.lead(connection, last, shutdown) => led,
            tracked = crate::chord::track(connection, &self.names, &self.identity) => {
                match tracked {
                    Ok(()) => Err(SessionError::LockLost),
                    Err(e) => Err(e.into()),
                }
            }
        }
    }

    /// A standby's view of the leader: follows the events stream from
    /// `conductor.lookback` and, for each fire of a schedule of ours, shows
    /// its time as the schedule's last fire and its maker (`by`) as the
    /// leader's identity. Only `*.scheduled` deliveries are decoded. Stops
    /// when the returned token is cancelled (this replica takes the lead)
    /// or the connection goes.
    async fn follow_fires(
        &self,
        connection: &Connection,
    ) -> Result<CancellationToken, lapin::Error> {
        let since = Utc::now()
            - chrono::Duration::from_std(self.settings.lookback).unwrap_or(chrono::Duration::MAX);
        let (channel, mut consumer) =
            read_stream(connection, &self.names, offset_at(since)).await?;
        let stop = CancellationToken::new();
        let shared = self.shared.clone();
        let schedules = self.schedules.clone();
        tokio::spawn({
            let stop = stop.clone();
            async move {
                loop {
                    let delivery = tokio::select! {
                        _ = stop.cancelled() => break,
                        d = consumer.next() => match d {
                            Some(Ok(d)) => d,
                            _ => break,
                        },
                    };
                    let _ = delivery.acker.ack(BasicAckOptions::default()).await;
                    if !delivery.routing_key.as_str().ends_with(".scheduled") {
                        continue;
                    }
                    for event in delivery_events(&delivery) {
                        if let Some((i, at)) = fire_of(&schedules, &event) {
                            let next = schedules[i].next_after(at.max(Utc::now()));
                            shared.saw_fire(i, at, next, event.by.clone());
                        }
                    }
                }
                let _ = channel.close(200, "stopped following".into()).await;
            }
        });
        Ok(stop)
    }

    /// Each schedule's latest fire on the events stream since
    /// `conductor.lookback`, and who made the latest of all.
    async fn read_last_fires(
        &self,
        connection: &Connection,
        acquired: DateTime<Utc>,
    ) -> Result<HashMap<String, DateTime<Utc>>, SessionError> {
        let since = acquired
            - chrono::Duration::from_std(self.settings.lookback).unwrap_or(chrono::Duration::MAX);
        let (channel, mut consumer) =
            read_stream(connection, &self.names, offset_at(since)).await?;
        let mut last: HashMap<String, DateTime<Utc>> = HashMap::new();
        let mut latest: Option<(DateTime<Utc>, Option<String>)> = None;
        loop {
            let delivery = match tokio::time::timeout(TAIL_QUIET, consumer.next()).await {
                Err(_) | Ok(None) => break,
                Ok(Some(d)) => d?,
            };
            let _ = delivery.acker.ack(BasicAckOptions::default()).await;
            let mut caught_up = false;
            for event in delivery_events(&delivery) {
                caught_up |= event.at >= acquired;
                if let Some((i, at)) = fire_of(&self.schedules, &event) {
                    let slot = last
                        .entry(self.schedules[i].name().to_owned())
                        .or_insert(at);
                    *slot = (*slot).max(at);
                    if latest.as_ref().is_none_or(|(t, _)| *t <= event.at) {
                        latest = Some((event.at, event.by.clone()));
                    }
                }
            }
            if caught_up {
                break;
            }
        }
        let _ = channel.close(200, "read the tail".into()).await;
        info!(
            schedules_with_fires = last.len(),
            previous_leader = latest
                .as_ref()
                .and_then(|(_, by)| by.as_deref())
                .unwrap_or("none"),
            "Read the last fires from the events stream."
        );
        Ok(last)
    }

    async fn lead(
        &self,
        connection: &Connection,
        last: HashMap<String, DateTime<Utc>>,
        shutdown: &CancellationToken,
    ) -> Result<(), SessionError> {
        let channel = connection.create_channel().await?;
        channel.tx_select().await?;
        let now = Utc::now();
        let mut queues: Vec<VecDeque<DateTime<Utc>>> = Vec::with_capacity(self.schedules.len());
        for (i, s) in self.schedules.iter().enumerate() {
            let previous = last.get(s.name()).copied();
            let queue = plan(s, previous, now, self.settings.misfire_grace);
            self.shared.set_fires(i, previous, queue.front().copied());
            queues.push(queue);
        }
        loop {
            let Some((i, at)) = queues
                .iter()
                .enumerate()
                .filter_map(|(i, q)| q.front().map(|at| (i, *at)))
                .min_by_key(|(_, at)| *at)
            else {
                // No schedule fires again: hold the lock until told to stop
                // or it is lost.
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = lost(connection) => return Err(SessionError::LockLost),
                }
            };
            if let Ok(wait) = (at - Utc::now()).to_std() {
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(wait) => {}
                    _ = lost(connection) => return Err(SessionError::LockLost),
                }
            }
            if shutdown.is_cancelled() {
                return Ok(());
            }
            // Fencing: only over the connection that holds the lock.
            if !connection.status().connected() {
                return Err(SessionError::LockLost);
            }
            let schedule = &self.schedules[i];
            self.fire(&channel, schedule, at).await?;
            let lag = (Utc::now() - at).num_milliseconds() as f64 / 1000.0;
            metrics::fired(schedule.name(), lag);
            info!(
                schedule = schedule.name(),
                task_id = %schedule.task_id(at),
                lag_s = lag,
                "Fired."
            );
            let queue = &mut queues[i];
            queue.pop_front();
            if queue.is_empty()
                && let Some(next) = schedule.next_after(at)
            {
                queue.push_back(next);
            }
            self.shared.set_fires(i, Some(at), queue.front().copied());
        }
    }

    /// The task and its `scheduled` event, in one transaction.
    async fn fire(
        &self,
        channel: &Channel,
        schedule: &Schedule,
        at: DateTime<Utc>,
    ) -> Result<(), SessionError> {
        let id = schedule.task_id(at);
        let body = serde_json::to_vec(schedule.payload())?;
        let properties = task_properties(&id, schedule.task_type(), schedule.priority());
        // In transaction mode the per-message confirm is `NotRequested` at
        // once; the commit below is the confirmation of both.
        channel
            .basic_publish(
                self.names.tasks_exchange().as_str().into(),
                schedule.task_type().into(),
                BasicPublishOptions::default(),
                &body,
                properties,
            )
            .await?
            .await?;
        let mut event = TaskEvent::new(&id, schedule.task_type(), TaskState::Scheduled, 1);
        event.by = Some(self.identity.clone());
        event.due_at = Some(at);
        let event_body = serde_json::to_vec(&event)?;
        let properties = BasicProperties::default()
            .with_content_type(CONTENT_TYPE_JSON.into())
            .with_delivery_mode(PERSISTENT)
            .with_type(EVENT_MESSAGE_TYPE.into())
            .with_message_id(uuid::Uuid::now_v7().to_string().into())
            .with_timestamp(u64::try_from(event.at.timestamp()).unwrap_or(0));
        channel
            .basic_publish(
                self.names.events_exchange().as_str().into(),
                event.routing_key().as_str().into(),
                BasicPublishOptions::default(),
                &event_body,
                properties,
            )
            .await?
            .await?;
        channel.tx_commit().await?;
        Ok(())
    }
}

/// The events of one stream delivery: an envelope, or a single event (as
/// fires are written). Undecodable deliveries have none.
fn delivery_events(delivery: &lapin::message::Delivery) -> Vec<TaskEvent> {
    envelope::decode(
        delivery
            .properties
            .content_type()
            .as_ref()
            .map(|c| c.as_str()),
        delivery.properties.kind().as_ref().map(|k| k.as_str()),
        &delivery.data,
    )
    .unwrap_or_default()
}

/// The schedule (by index) and scheduled time of `event`, if it is a fire
/// of one of `schedules`.
fn fire_of(schedules: &[Schedule], event: &TaskEvent) -> Option<(usize, DateTime<Utc>)> {
    if event.state != TaskState::Scheduled {
        return None;
    }
    let (name, at) = parse_task_id(&event.task_id)?;
    let i = schedules.iter().position(|s| s.name() == name)?;
    Some((i, at))
}

/// Resolves once the connection is no longer usable.
async fn lost(connection: &Connection) {
    loop {
        let status = connection.status();
        if !status.connected() {
            return;
        }
        tokio::time::sleep(LOCK_CHECK).await;
    }
}

/// Declares the exclusive lock queue: `true` if this connection now holds
/// it, `false` if another does.
async fn try_lock(connection: &Connection, queue: &str) -> Result<bool, lapin::Error> {
    let channel = connection.create_channel().await?;
    let declared = channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                durable: false,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await;
    match declared {
        Ok(_) => {
            let _ = channel.close(200, "locked".into()).await;
            Ok(true)
        }
        Err(e) if is_locked(&e) => Ok(false),
        Err(e) => Err(e),
    }
}

fn is_locked(e: &lapin::Error) -> bool {
    matches!(
        e.kind(),
        lapin::ErrorKind::ProtocolError(amqp)
            if matches!(amqp.kind(), AMQPErrorKind::Soft(AMQPSoftError::RESOURCELOCKED))
    )
}

/// The fires a new leader owes a schedule whose last fire was `last`, in
/// order: every one missed within `grace` (late), preceded under
/// `run_once` by the latest one missed by more; then the next. Without a
/// last fire, only the next.
pub fn plan(
    schedule: &Schedule,
    last: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
    grace: Duration,
) -> VecDeque<DateTime<Utc>> {
    let mut fires = VecDeque::new();
    let Some(last) = last else {
        fires.extend(schedule.next_after(now));
        return fires;
    };
    let horizon = now - chrono::Duration::from_std(grace).unwrap_or(chrono::Duration::MAX);
    let mut cursor = last;
    if schedule.next_after(last).is_some_and(|t| t < horizon) {
        if schedule.misfire() == Misfire::RunOnce
            && let Some(latest) = schedule.at_or_before(horizon)
            && latest > last
        {
            fires.push_back(latest);
        }
        cursor = cursor.max(horizon);
    }
    while let Some(t) = schedule.next_after(cursor) {
        fires.push_back(t);
        if t > now || fires.len() > MAX_CATCH_UP {
            break;
        }
        cursor = t;
    }
    fires
}

/// The events stream's `x-stream-offset` for the first message at or after
/// `since`.
fn offset_at(since: DateTime<Utc>) -> AMQPValue {
    AMQPValue::Timestamp(u64::try_from(since.timestamp()).unwrap_or(0))
}

/// A channel of its own reading the namespace's events stream from
/// `offset` (a stream needs a prefetch; it bounds how far ahead the broker
/// sends). The caller acks what it reads and closes the channel.
pub(crate) async fn read_stream(
    connection: &Connection,
    names: &Names,
    offset: AMQPValue,
) -> Result<(Channel, lapin::Consumer), lapin::Error> {
    let channel = connection.create_channel().await?;
    channel.basic_qos(1000, BasicQosOptions::default()).await?;
    let mut args = FieldTable::default();
    args.insert(broker_headers::STREAM_OFFSET.into(), offset);
    let consumer = channel
        .basic_consume(
            names.events_stream().as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            args,
        )
        .await?;
    Ok((channel, consumer))
}

#[cfg(test)]
// A failing unwrap is how a test reports failure.
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::schedule::ScheduleSettings;

    fn every_second(misfire: Misfire) -> Schedule {
        Schedule::parse(&ScheduleSettings {
            name: "tick".into(),
            cron: None,
            time_zone: None,
            every: Some(Duration::from_secs(1)),
            task_type: "email.send".into(),
            payload: serde_json::json!({"to": "a@example.com", "subject": "s", "text": "t"}),
            priority: 0,
            misfire,
        })
        .unwrap()
    }

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap()
    }

    #[test]
    fn a_new_leader_makes_late_fires_within_grace_and_applies_the_policy_beyond() {
        let grace = Duration::from_secs(10);
        let s = every_second(Misfire::Skip);
        // A failover: last fire at 0, now 3.5: 1, 2, 3 late, then 4.
        let p: Vec<_> = plan(
            &s,
            Some(t(0)),
            t(3) + chrono::Duration::milliseconds(500),
            grace,
        )
        .into();
        assert_eq!(p, vec![t(1), t(2), t(3), t(4)]);
        // A long outage: last fire at 0, now 100: 1-89 are misfires
        // (skipped), 91-100 are late, then 101.
        let p: Vec<_> = plan(&s, Some(t(0)), t(100), grace).into();
        assert_eq!(p.first(), Some(&t(91)));
        assert_eq!(p.last(), Some(&t(101)));
        assert_eq!(p.len(), 11);
        // run_once: the latest misfire (90), once, first.
        let s = every_second(Misfire::RunOnce);
        let p: Vec<_> = plan(&s, Some(t(0)), t(100), grace).into();
        assert_eq!(p.first(), Some(&t(90)));
        assert_eq!(p.get(1), Some(&t(91)));
        assert_eq!(p.len(), 12);
        // No last fire known: only the next.
        let p: Vec<_> = plan(&s, None, t(5), grace).into();
        assert_eq!(p, vec![t(6)]);
        // Nothing missed.
        let p: Vec<_> = plan(&s, Some(t(5)), t(5), grace).into();
        assert_eq!(p, vec![t(6)]);
    }
}
