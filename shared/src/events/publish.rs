//! Emitting events without holding a task up, confirmed by the broker.
//!
//! [`EventPublisher::emit`] never waits: it hands the event to a writer
//! task of its own. The writer packs events into envelopes (up to
//! [`Batching::max_events`] events, or what came in [`Batching::max_delay`]
//! after the first, whichever comes first), publishes them in order on a
//! channel with publisher confirms, and keeps each envelope until the
//! broker confirms it. An envelope that is nacked, times out or is cut off
//! with its channel is published again, with every later unconfirmed one,
//! in order, once a channel is usable (lapin's recovery, or the next
//! session's [`EventPublisher::attach`]).
//!
//! An envelope is given up after [`MAX_ATTEMPTS`] failed publishes or
//! [`GIVE_UP_AFTER`] without a usable channel; an event is given up at
//! once when the writer's buffer is full. Either way it is counted in
//! `warren_task_events_dropped_total`, and if it was a task's final state
//! (`succeeded`, `dead_lettered`) that state is kept aside and re-emitted
//! (`warren_task_events_reemitted_total`): as soon as the broker confirms
//! an envelope again, or, when no other envelope is on its way to be
//! confirmed (the last tasks' events were the ones given up), on its own
//! after [`REEMIT_FIRST_DELAY`], doubling up to [`REEMIT_MAX_DELAY`] while
//! it keeps failing. So no status stays behind its task's final state for
//! much longer than the broker is away, whether or not more tasks run.
//!
//! Before it publishes on a channel it has not published on yet, after its
//! channel was seen down, and after [`RECHECK_AFTER_IDLE`] without a
//! confirm, the writer checks that the events stream takes messages
//! ([`stream_ready`]): right after a broker (re)start, RabbitMQ 3.10
//! confirms messages routed to a stream it has not started again yet, and
//! drops them. A check that finds no stream (nothing reads the events)
//! is not repeated: from then on at most one envelope a second goes out
//! with `mandatory`, and the writer checks again once one of those is
//! routed (a stream was declared) instead of returned. So a namespace
//! without a stream gets neither a `NOT_FOUND` (a broker log line) per
//! check nor every envelope sent back.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures::future::BoxFuture;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::ShortString;
use lapin::{Channel, Confirmation, Connection, PublisherConfirm};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use super::{TaskEvent, envelope};
use crate::broker::{declare_passive, is_absent};
use crate::contract::Names;
use crate::publisher::CONFIRM_TIMEOUT;
use crate::topology::declare_events_exchange;

/// How events are packed into envelopes.
#[derive(Debug, Clone, Copy)]
pub struct Batching {
    /// Most events in one envelope (at most
    /// [`envelope::MAX_ENVELOPE_EVENTS`]).
    pub max_events: usize,
    /// Longest an event waits for others before its envelope is published.
    pub max_delay: Duration,
}

impl Default for Batching {
    /// 256 events or 5 ms: at 8,000 tasks/s (16,000 events) that is about
    /// 200 messages/s for the broker instead of 16,000.
    fn default() -> Self {
        Self {
            max_events: 256,
            max_delay: Duration::from_millis(5),
        }
    }
}

/// Events waiting for the writer. When it falls this far behind (the
/// broker is away or slower than the tasks), further events are given up
/// rather than making tasks wait.
const EVENT_BUFFER: usize = 16_384;
/// Envelopes published and not yet confirmed.
const MAX_IN_FLIGHT: usize = 16;
/// Envelopes closed and not yet confirmed (published or waiting): past
/// this the writer stops taking events, and the buffer fills.
const MAX_PENDING: usize = 64;

/// Most commands the writer takes in at one wake-up.
const TAKE_AT_ONCE: usize = 1024;
/// Publishes of one envelope that may fail (nack, no confirm in time)
/// before its events are given up.
pub const MAX_ATTEMPTS: u32 = 5;
/// How long an envelope may wait for a usable channel before its events
/// are given up.
pub const GIVE_UP_AFTER: Duration = Duration::from_secs(30);
/// Final states kept for re-emission; past this, more are only counted.
const REEMIT_CAPACITY: usize = 100_000;
/// How long final states given up wait, when nothing else is on its way
/// to the broker, before they are re-emitted on their own.
pub const REEMIT_FIRST_DELAY: Duration = Duration::from_secs(1);
/// The longest such wait, after repeated failures.
pub const REEMIT_MAX_DELAY: Duration = Duration::from_secs(30);
/// How often the writer looks at a channel that is down.
const CHANNEL_POLL: Duration = Duration::from_millis(100);
/// With no confirm for this long, the writer checks the stream again
/// before it publishes: a broker restart takes longer than this, so an
/// outage the writer slept through is caught too.
pub const RECHECK_AFTER_IDLE: Duration = Duration::from_secs(1);
/// The longest a check of the stream may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// A connection on which short-lived channels can be opened: where the
/// writer publishes, and where it checks the stream ([`stream_ready`]).
pub trait ChannelSource: Send + Sync + 'static {
    /// Opens a channel on this connection.
    fn open_channel(&self) -> BoxFuture<'_, Result<Channel, lapin::Error>>;
}

impl ChannelSource for Connection {
    fn open_channel(&self) -> BoxFuture<'_, Result<Channel, lapin::Error>> {
        Box::pin(self.create_channel())
    }
}

impl ChannelSource for crate::broker::SessionConnection {
    fn open_channel(&self) -> BoxFuture<'_, Result<Channel, lapin::Error>> {
        Box::pin(self.create_channel())
    }
}

/// Whether `{ns}.events.stream` takes messages now: it answers a passive
/// declare, or it does not exist (nothing reads the events, and the broker
/// drops them unrouted, as it always has). Right after a broker (re)start,
/// RabbitMQ 3.10 confirms messages routed to a stream whose member it has
/// not started again yet, and they are lost: of 2,719 confirmed publishes
/// in the 8 s after four `start_app`s, the 30 of the first 0.3 s were not
/// on the stream. Meanwhile a passive declare fails with `NOT_FOUND -
/// home node ... is down or inaccessible`; once it answers, nothing was
/// lost (600 of 600).
pub async fn stream_ready(source: &dyn ChannelSource, stream: &str) -> StreamReady {
    let check = async {
        let channel = source.open_channel().await?;
        Ok::<_, lapin::Error>(match declare_passive(channel, stream).await {
            Ok(()) => StreamReady::Yes,
            Err(e) if is_absent(&e) => StreamReady::Absent,
            Err(_) => StreamReady::No,
        })
    };
    match tokio::time::timeout(CHECK_TIMEOUT, check).await {
        Ok(Ok(ready)) => ready,
        Ok(Err(_)) | Err(_) => StreamReady::No,
    }
}

/// What [`stream_ready`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamReady {
    /// The stream takes messages.
    Yes,
    /// There is no stream: messages to the exchange are unrouted.
    Absent,
    /// The stream exists and does not take messages yet (or the check
    /// failed): wait.
    No,
}

/// The writer's channel, and the connection it came from (not kept alive
/// by the writer), for checks of the stream.
#[derive(Clone)]
struct Attached {
    channel: Channel,
    source: Weak<dyn ChannelSource>,
}

enum Command {
    // Boxed: an event is much larger than a flush request.
    Event(Box<TaskEvent>),
    Flush(oneshot::Sender<()>),
}

/// Publishes task events in confirmed envelopes, off the task's path.
/// Cheap to clone; the writer ends when the last handle is dropped.
#[derive(Clone)]
pub struct EventPublisher {
    shared: Arc<Shared>,
}

struct Shared {
    tx: mpsc::Sender<Command>,
    channel: watch::Sender<Option<Attached>>,
    names: Names,
    reemit: Arc<Reemit>,
}

/// Final states whose events were given up, waiting to be emitted again.
#[derive(Default)]
struct Reemit {
    finals: Mutex<HashMap<String, TaskEvent>>,
    pending: AtomicBool,
}

impl Reemit {
    fn keep(&self, event: TaskEvent) {
        let Ok(mut finals) = self.finals.lock() else {
            return;
        };
        if finals.len() < REEMIT_CAPACITY || finals.contains_key(&event.task_id) {
            finals.insert(event.task_id.clone(), event);
            self.pending.store(true, Ordering::SeqCst);
        }
    }

    fn has_pending(&self) -> bool {
        self.pending.load(Ordering::SeqCst)
    }

    fn take(&self) -> Vec<TaskEvent> {
        if !self.pending.swap(false, Ordering::SeqCst) {
            return Vec::new();
        }
        let Ok(mut finals) = self.finals.lock() else {
            return Vec::new();
        };
        let mut events: Vec<TaskEvent> = finals.drain().map(|(_, e)| e).collect();
        events.sort_by_key(|e| e.at);
        events
    }
}

/// An event that will not be published as it is: counted, and kept for
/// re-emission if it ended its task.
fn give_up(reemit: &Reemit, event: TaskEvent) {
    crate::metrics::task_event_dropped();
    if event.state.is_final() {
        reemit.keep(event);
    }
}

impl EventPublisher {
    /// A publisher with no channel yet: events wait (up to the buffer)
    /// until [`EventPublisher::attach`] gives it one.
    pub fn new(names: &Names, batching: Batching) -> Self {
        let (tx, rx) = mpsc::channel(EVENT_BUFFER);
        let (channel, channels) = watch::channel(None);
        let reemit = Arc::new(Reemit::default());
        let writer = Writer {
            rx,
            channels,
            exchange: ShortString::from(names.events_exchange()),
            stream: names.events_stream(),
            checked_at: None,
            stream_absent: false,
            absent_asked_at: None,
            reemit: reemit.clone(),
            batching: Batching {
                max_events: batching.max_events.clamp(1, envelope::MAX_ENVELOPE_EVENTS),
                max_delay: batching.max_delay,
            },
            batch: Vec::new(),
            batch_deadline: None,
            received: 0,
            settled: 0,
            waiting: VecDeque::new(),
            in_flight: VecDeque::new(),
            flushes: Vec::new(),
            retry_at: None,
            reemit_at: None,
            reemit_delay: REEMIT_FIRST_DELAY,
        };
        tokio::spawn(writer.run());
        Self {
            shared: Arc::new(Shared {
                tx,
                channel,
                names: names.clone(),
                reemit,
            }),
        }
    }

    /// Declares `{ns}.events` and opens a confirmed channel on
    /// `connection` for the writer; unconfirmed envelopes go out on it.
    /// Called again with each new connection, so events and the final
    /// states kept for re-emission outlive a lost connection. The writer
    /// keeps only a weak reference to `connection`, for its checks of the
    /// stream: the connection closes when its owner drops it.
    pub async fn attach<C: ChannelSource>(&self, connection: &Arc<C>) -> Result<(), lapin::Error> {
        let channel = connection.open_channel().await?;
        declare_events_exchange(&channel, &self.shared.names).await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let source: Weak<C> = Arc::downgrade(connection);
        self.shared
            .channel
            .send_replace(Some(Attached { channel, source }));
        Ok(())
    }

    /// A publisher with the default batching, attached to `connection`.
    pub async fn on<C: ChannelSource>(
        connection: &Arc<C>,
        names: &Names,
    ) -> Result<Self, lapin::Error> {
        let publisher = Self::new(names, Batching::default());
        publisher.attach(connection).await?;
        Ok(publisher)
    }

    /// Hands `event` to the writer without waiting. Events of one publisher
    /// reach the stream in the order they were emitted (a failed envelope
    /// is published again with every later one, so the last word stays
    /// last). With the writer's buffer full, the event is given up:
    /// counted, and kept for re-emission if it is a final state. An event
    /// never fails or delays the task it describes.
    pub async fn emit(&self, event: TaskEvent) {
        self.emit_now(event);
    }

    /// [`EventPublisher::emit`], from code that is not async.
    pub fn emit_now(&self, event: TaskEvent) {
        use mpsc::error::TrySendError;
        match self.shared.tx.try_send(Command::Event(Box::new(event))) {
            Ok(()) => {}
            Err(
                TrySendError::Full(Command::Event(e)) | TrySendError::Closed(Command::Event(e)),
            ) => {
                give_up(&self.shared.reemit, *e);
            }
            Err(_) => {}
        }
    }

    /// Waits, at most `timeout`, until every event emitted so far is
    /// settled: confirmed by the broker, or given up. Before closing a
    /// connection, so the last events get their chance. Returns whether it
    /// got there in time.
    pub async fn flush(&self, timeout: Duration) -> bool {
        let (done, settled) = oneshot::channel();
        tokio::time::timeout(timeout, async {
            self.shared.tx.send(Command::Flush(done)).await.is_ok() && settled.await.is_ok()
        })
        .await
        .unwrap_or(false)
    }
}

/// A closed envelope, kept until the broker confirms it.
struct Envelope {
    events: Vec<TaskEvent>,
    body: Vec<u8>,
    routing_key: ShortString,
    newest_at: i64,
    /// The writer's sequence number of its last event.
    last_seq: u64,
    failed: u32,
    /// Since when it waits for a usable channel.
    stalled_since: Option<Instant>,
}

struct InFlight {
    envelope: Envelope,
    confirm: PublisherConfirm,
    deadline: Instant,
    /// Published with `mandatory`: its confirm says whether a stream is
    /// bound.
    mandatory: bool,
}

/// The writer's side: batching, publishing, confirms, retries.
struct Writer {
    rx: mpsc::Receiver<Command>,
    channels: watch::Receiver<Option<Attached>>,
    exchange: ShortString,
    /// The events stream, checked before publishing ([`stream_ready`]).
    stream: String,
    /// When the stream last took messages (a check, a confirm) on the
    /// current channel.
    checked_at: Option<Instant>,
    /// No stream is bound to the exchange (a check found none, or a
    /// `mandatory` envelope came back): nothing to check.
    stream_absent: bool,
    /// When the last `mandatory` envelope went out while no stream was
    /// bound.
    absent_asked_at: Option<Instant>,
    reemit: Arc<Reemit>,
    batching: Batching,
    batch: Vec<TaskEvent>,
    batch_deadline: Option<Instant>,
    /// Events taken in so far (sequence number of the last one).
    received: u64,
    /// Every event up to this sequence number is confirmed or given up.
    settled: u64,
    /// Closed envelopes not yet published (or to publish again), in order.
    waiting: VecDeque<Envelope>,
    /// Published, waiting for their confirms, in order.
    in_flight: VecDeque<InFlight>,
    flushes: Vec<(u64, oneshot::Sender<()>)>,
    /// No publish before this, after a failure.
    retry_at: Option<Instant>,
    /// When the final states kept aside go out on their own (nothing else
    /// on its way whose confirm would re-emit them).
    reemit_at: Option<Instant>,
    /// The wait before the next such re-emission.
    reemit_delay: Duration,
}

/// The broker's answer to an envelope.
enum Settled {
    /// Confirmed: on the stream, or (`routed == false`) returned
    /// unroutable, with no stream bound.
    Ack {
        routed: bool,
    },
    Nack,
    Failed(Box<lapin::Error>),
    TimedOut,
}

impl Writer {
    async fn run(mut self) {
        // Handles exist (events may come), a channel may be attached.
        let (mut open, mut watching) = (true, true);
        loop {
            self.publish_waiting().await;
            self.give_up_stalled();
            self.answer_flushes();
            if !open
                && self.batch.is_empty()
                && self.waiting.is_empty()
                && self.in_flight.is_empty()
            {
                return;
            }
            if !open && !watching && self.channel().is_none() {
                // No handle and no channel will come: what is left cannot
                // be published.
                self.abandon();
                return;
            }
            let pending = self.waiting.len() + self.in_flight.len();
            // While a batch is open its events are left in the channel
            // until its deadline and taken in then, all at once: one
            // wake-up of this task per envelope, not one per event.
            let take = open && pending < MAX_PENDING && self.batch_deadline.is_none();
            let batch_deadline = self.batch_deadline;
            let confirming = !self.in_flight.is_empty();
            let can_publish = !self.waiting.is_empty() && self.in_flight.len() < MAX_IN_FLIGHT;
            let wake = self
                .retry_at
                .filter(|at| *at > Instant::now())
                .unwrap_or_else(|| Instant::now() + CHANNEL_POLL);
            let reemit_at = self.reemit_due();
            tokio::select! {
                command = self.rx.recv(), if take => {
                    open = self.take(command) && self.take_ready();
                }
                () = sleep_until(batch_deadline), if batch_deadline.is_some() => {
                    if open {
                        open = self.take_ready();
                    }
                    self.close_batch();
                }
                () = sleep_until(reemit_at), if reemit_at.is_some() => self.reemit_idle(),
                settled = confirm_front(&mut self.in_flight), if confirming => self.settle_front(settled),
                changed = self.channels.changed(), if watching => {
                    watching = changed.is_ok();
                    self.retry_at = None;
                    self.checked_at = None;
                }
                () = tokio::time::sleep_until(wake), if can_publish => {}
            }
        }
    }

    /// Takes in the commands already in the channel (at most
    /// [`TAKE_AT_ONCE`], and none while [`MAX_PENDING`] envelopes are
    /// pending); whether more may come.
    fn take_ready(&mut self) -> bool {
        for _ in 0..TAKE_AT_ONCE {
            if self.waiting.len() + self.in_flight.len() >= MAX_PENDING {
                break;
            }
            match self.rx.try_recv() {
                Ok(command) => {
                    if !self.take(Some(command)) {
                        return false;
                    }
                }
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => return self.take(None),
            }
        }
        true
    }

    /// Takes in one command (`None`: every handle is gone); whether more
    /// may come.
    fn take(&mut self, command: Option<Command>) -> bool {
        match command {
            Some(Command::Event(event)) => self.push(*event),
            Some(Command::Flush(done)) => {
                self.close_batch();
                self.flushes.push((self.received, done));
            }
            None => {
                self.close_batch();
                return false;
            }
        }
        true
    }

    fn push(&mut self, event: TaskEvent) {
        self.received += 1;
        self.batch.push(event);
        if self.batch.len() == 1 {
            self.batch_deadline = Some(Instant::now() + self.batching.max_delay);
        }
        if self.batch.len() >= self.batching.max_events {
            self.close_batch();
        }
    }

    fn close_batch(&mut self) {
        self.batch_deadline = None;
        if self.batch.is_empty() {
            return;
        }
        let events = std::mem::take(&mut self.batch);
        match envelope::encode(&events) {
            Ok(body) => self.waiting.push_back(Envelope {
                routing_key: envelope::routing_key(&events).into(),
                newest_at: events.iter().map(|e| e.at.timestamp()).max().unwrap_or(0),
                events,
                body,
                last_seq: self.received,
                failed: 0,
                stalled_since: None,
            }),
            Err(e) => {
                tracing::warn!(error = %e, "Could not serialize task events; dropping them.");
                self.settled = self.settled.max(self.received);
                events.into_iter().for_each(|e| give_up(&self.reemit, e));
            }
        }
    }

    /// A connected channel, if there is one.
    fn channel(&self) -> Option<Channel> {
        self.channels
            .borrow()
            .as_ref()
            .map(|a| &a.channel)
            .filter(|c| c.status().connected())
            .cloned()
    }

    /// Whether the stream takes messages, checked if it was not lately.
    async fn stream_checked(&mut self) -> bool {
        if self.stream_absent
            || self
                .checked_at
                .is_some_and(|at| at.elapsed() < RECHECK_AFTER_IDLE)
        {
            return true;
        }
        let source = self
            .channels
            .borrow()
            .as_ref()
            .and_then(|a| a.source.upgrade());
        let ready = match source {
            Some(source) => stream_ready(source.as_ref(), &self.stream).await,
            None => StreamReady::No,
        };
        self.stream_absent = ready == StreamReady::Absent;
        let ready = ready != StreamReady::No;
        if ready {
            self.checked_at = Some(Instant::now());
        } else {
            tracing::debug!(stream = %self.stream, "The events stream does not take messages yet; task events wait.");
        }
        ready
    }

    async fn publish_waiting(&mut self) {
        if self.waiting.is_empty() || self.retry_at.is_some_and(|at| at > Instant::now()) {
            return;
        }
        let channel = match self.channel() {
            Some(channel) if self.stream_checked().await => channel,
            found => {
                if found.is_none() {
                    // Down now, maybe restarted when it is back.
                    self.checked_at = None;
                } else {
                    self.retry_at = Some(Instant::now() + CHANNEL_POLL);
                }
                let now = Instant::now();
                for envelope in &mut self.waiting {
                    envelope.stalled_since.get_or_insert(now);
                }
                return;
            }
        };
        while self.in_flight.len() < MAX_IN_FLIGHT {
            let Some(mut envelope) = self.waiting.pop_front() else {
                break;
            };
            // With a stream bound, `mandatory` costs nothing; without, a
            // returned envelope comes back whole, so only one a second
            // asks whether a stream is bound yet.
            let mandatory = !self.stream_absent
                || self
                    .absent_asked_at
                    .is_none_or(|at| at.elapsed() >= RECHECK_AFTER_IDLE);
            if self.stream_absent && mandatory {
                self.absent_asked_at = Some(Instant::now());
            }
            let published = channel
                .basic_publish(
                    self.exchange.clone(),
                    envelope.routing_key.clone(),
                    BasicPublishOptions {
                        mandatory,
                        ..Default::default()
                    },
                    &envelope.body,
                    envelope::properties(envelope.newest_at),
                )
                .await;
            match published {
                Ok(confirm) => {
                    envelope.stalled_since = None;
                    self.in_flight.push_back(InFlight {
                        envelope,
                        confirm,
                        deadline: Instant::now() + CONFIRM_TIMEOUT,
                        mandatory,
                    });
                }
                Err(e) => {
                    crate::metrics::publish_result("events", "error");
                    tracing::debug!(error = %e, "Could not publish task events; will publish them again.");
                    self.waiting.push_front(envelope);
                    let counts = channel.status().connected();
                    self.failed(counts);
                    break;
                }
            }
        }
    }

    fn settle_front(&mut self, settled: Settled) {
        let (label, counts) = match &settled {
            Settled::Ack { routed } => {
                if let Some(done) = self.in_flight.pop_front() {
                    self.settled = self.settled.max(done.envelope.last_seq);
                    if done.mandatory {
                        // Routed once more: a stream is bound (check it
                        // before the next publish, it may be new).
                        if self.stream_absent && *routed {
                            self.checked_at = None;
                        }
                        self.stream_absent = !routed;
                    }
                }
                crate::metrics::publish_result("events", "ack");
                if !self.stream_absent && self.checked_at.is_some() {
                    self.checked_at = Some(Instant::now());
                }
                self.retry_at = None;
                self.reemit_delay = REEMIT_FIRST_DELAY;
                self.reemit_finals();
                return;
            }
            Settled::Nack => ("nack", true),
            Settled::Failed(_) => ("error", self.channel().is_some()),
            Settled::TimedOut => ("timeout", true),
        };
        crate::metrics::publish_result("events", label);
        if let Settled::Failed(e) = &settled {
            tracing::debug!(error = %e, "Task events were not confirmed; will publish them again.");
        }
        self.failed(counts);
    }

    /// The oldest unconfirmed envelope failed: it and every later one go
    /// back to be published again, in order. `counts` when the broker was
    /// there to answer (a nack, a timeout): those failures are limited; a
    /// channel cut off only waits for the next one.
    fn failed(&mut self, counts: bool) {
        self.checked_at = None;
        while let Some(flight) = self.in_flight.pop_back() {
            self.waiting.push_front(flight.envelope);
        }
        let Some(front) = self.waiting.front_mut() else {
            return;
        };
        if counts {
            front.failed += 1;
        }
        if front.failed >= MAX_ATTEMPTS {
            if let Some(envelope) = self.waiting.pop_front() {
                self.give_up_envelope(envelope, "the broker refused them");
            }
            self.retry_at = None;
            return;
        }
        let backoff = Duration::from_millis(100) * 2u32.pow(front.failed.min(5));
        self.retry_at = Some(Instant::now() + backoff.min(Duration::from_secs(2)));
    }

    /// Envelopes that waited too long for a channel are given up, oldest
    /// first, so memory stays bounded while the broker is away.
    fn give_up_stalled(&mut self) {
        if !self.in_flight.is_empty() {
            return;
        }
        while self
            .waiting
            .front()
            .and_then(|e| e.stalled_since)
            .is_some_and(|since| since.elapsed() >= GIVE_UP_AFTER)
        {
            if let Some(envelope) = self.waiting.pop_front() {
                self.give_up_envelope(envelope, "no channel to the broker");
            }
        }
    }

    fn give_up_envelope(&mut self, envelope: Envelope, why: &str) {
        tracing::warn!(
            events = envelope.events.len(),
            why,
            "Gave up publishing task events; final states among them will be re-emitted once the broker confirms again."
        );
        self.settled = self.settled.max(envelope.last_seq);
        for event in envelope.events {
            give_up(&self.reemit, event);
        }
    }

    /// The broker confirms again: the final states given up so far go out.
    fn reemit_finals(&mut self) {
        let events = self.reemit.take();
        if events.is_empty() {
            return;
        }
        tracing::info!(
            events = events.len(),
            "Re-emitting the final states of tasks whose events were given up."
        );
        for event in events {
            crate::metrics::task_event_reemitted();
            self.push(event);
        }
    }

    /// When final states kept aside must go out on their own: there are
    /// some, and nothing is batched, waiting or in flight, so no confirm
    /// is coming to re-emit them ([`Writer::reemit_finals`]).
    fn reemit_due(&mut self) -> Option<Instant> {
        let idle = self.batch.is_empty() && self.waiting.is_empty() && self.in_flight.is_empty();
        if !idle || !self.reemit.has_pending() {
            self.reemit_at = None;
            return None;
        }
        let delay = self.reemit_delay;
        Some(*self.reemit_at.get_or_insert_with(|| Instant::now() + delay))
    }

    /// The final states kept aside go out now, in an envelope of their
    /// own; if it fails too, the next try waits twice as long.
    fn reemit_idle(&mut self) {
        self.reemit_at = None;
        self.reemit_delay = (self.reemit_delay * 2).min(REEMIT_MAX_DELAY);
        self.reemit_finals();
        self.close_batch();
    }

    fn answer_flushes(&mut self) {
        let settled = self.settled;
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.flushes)
            .into_iter()
            .partition(|(target, _)| *target <= settled);
        self.flushes = waiting;
        for (_, done) in ready {
            let _ = done.send(());
        }
    }

    /// The last handle is gone and so is any channel: count what is left.
    fn abandon(&mut self) {
        let mut events = std::mem::take(&mut self.batch);
        for envelope in self.waiting.drain(..) {
            events.extend(envelope.events);
        }
        for flight in self.in_flight.drain(..) {
            events.extend(flight.envelope.events);
        }
        for _ in events {
            crate::metrics::task_event_dropped();
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The broker's answer to the oldest envelope in flight.
async fn confirm_front(in_flight: &mut VecDeque<InFlight>) -> Settled {
    let Some(front) = in_flight.front_mut() else {
        return std::future::pending().await;
    };
    match tokio::time::timeout_at(front.deadline, &mut front.confirm).await {
        Ok(Ok(Confirmation::Ack(None) | Confirmation::NotRequested)) => {
            Settled::Ack { routed: true }
        }
        Ok(Ok(Confirmation::Ack(Some(_)))) => Settled::Ack { routed: false },
        Ok(Ok(Confirmation::Nack(_))) => Settled::Nack,
        Ok(Err(e)) => Settled::Failed(Box::new(e)),
        Err(_) => Settled::TimedOut,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::TaskState;

    fn event(id: &str, state: TaskState) -> TaskEvent {
        TaskEvent::new(id, "email.send", state, 1)
    }

    fn kept(publisher: &EventPublisher) -> Vec<String> {
        let finals = publisher
            .shared
            .reemit
            .finals
            .lock()
            .map(|f| f.keys().cloned().collect::<Vec<_>>())
            .unwrap_or_default();
        let mut ids = finals;
        ids.sort();
        ids
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_channel_events_wait_then_final_states_are_kept_for_reemission() {
        let publisher = EventPublisher::new(&Names::new("w"), Batching::default());
        publisher.emit(event("a", TaskState::Running)).await;
        publisher.emit(event("a", TaskState::Succeeded)).await;
        publisher.emit(event("b", TaskState::Running)).await;
        publisher.emit(event("c", TaskState::DeadLettered)).await;
        // Nothing can be confirmed yet: the events wait for a channel.
        assert!(!publisher.flush(Duration::from_secs(5)).await);
        assert!(kept(&publisher).is_empty(), "not given up before the limit");
        // Past the limit they are given up (settled), and the final states
        // are kept for when the broker confirms again.
        assert!(publisher.flush(GIVE_UP_AFTER).await);
        assert_eq!(kept(&publisher), ["a", "c"]);
    }

    #[tokio::test(start_paused = true)]
    async fn final_states_given_up_with_nothing_else_to_confirm_go_out_again_on_their_own() {
        let publisher = EventPublisher::new(&Names::new("w"), Batching::default());
        publisher.emit(event("a", TaskState::Succeeded)).await;
        // The broker stays away: given up, kept for re-emission.
        assert!(
            publisher
                .flush(GIVE_UP_AFTER + Duration::from_secs(1))
                .await
        );
        assert_eq!(kept(&publisher), ["a"]);
        // No other envelope will be confirmed to re-emit it: the writer
        // takes it out again by itself, after its delay.
        tokio::time::sleep(REEMIT_FIRST_DELAY + Duration::from_millis(50)).await;
        assert!(kept(&publisher).is_empty(), "taken out for re-emission");
        // Still no broker: given up again, kept again, and tried later.
        tokio::time::sleep(GIVE_UP_AFTER + Duration::from_secs(1)).await;
        assert_eq!(kept(&publisher), ["a"]);
        tokio::time::sleep(REEMIT_FIRST_DELAY * 2 + Duration::from_millis(50)).await;
        assert!(kept(&publisher).is_empty(), "tried again, twice as late");
    }

    #[test]
    fn reemission_keeps_the_last_final_state_of_each_task_oldest_first() {
        let reemit = Reemit::default();
        assert!(reemit.take().is_empty());
        let mut first = event("a", TaskState::DeadLettered);
        first.at -= chrono::Duration::seconds(10);
        let mut replayed = event("a", TaskState::Succeeded);
        replayed.at -= chrono::Duration::seconds(5);
        give_up(&reemit, first);
        give_up(&reemit, event("b", TaskState::Succeeded));
        give_up(&reemit, event("c", TaskState::Running));
        give_up(&reemit, replayed);
        let taken: Vec<_> = reemit
            .take()
            .into_iter()
            .map(|e| (e.task_id, e.state))
            .collect();
        assert_eq!(
            taken,
            [
                ("a".to_owned(), TaskState::Succeeded),
                ("b".to_owned(), TaskState::Succeeded)
            ]
        );
        assert!(reemit.take().is_empty(), "taken once");
    }
}
