//! The connections to one SMTP host: at most `limit` at once, reused for
//! message after message, and fewer when the server says so.
//!
//! A send takes a slot (a semaphore permit), then an idle connection or, if
//! none is idle, a new one. Every connection is either idle or held with a
//! slot, and one is opened only when none is idle, so a host never has more
//! connections than its limit.
//!
//! Back-pressure: a server that answers `421` (too many connections, or
//! closing down) gets fewer. The limit drops to the connections that still
//! work (at least one) and the send tries again on one of them; the message
//! stays with this send, never dropped or handed back. The limit grows back
//! by one connection per [`REGROW_AFTER`] without another `421`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use prometheus::{IntCounter, IntGauge};
use tokio::sync::{Semaphore, SemaphorePermit};

use super::SmtpError;
use super::connection::{Connection, Target};

/// How long a shrunk limit waits before it grows back by one connection.
pub const REGROW_AFTER: Duration = Duration::from_secs(30);

/// Longest wait between two attempts when the server refuses even a single
/// connection.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// The pool of one host.
pub(crate) struct HostPool {
    target: Target,
    max: usize,
    idle_timeout: Duration,
    slots: Semaphore,
    state: Mutex<State>,
    open: Arc<OpenCount>,
    opened: IntCounter,
    shrinks: IntCounter,
    limit_gauge: IntGauge,
}

struct State {
    /// The current limit (the permits of `slots`, plus `debt`).
    limit: usize,
    /// Permits to take out of circulation as they come back.
    debt: usize,
    /// Most recently used last.
    idle: Vec<Connection>,
    last_shrink: Option<Instant>,
}

/// Connections open now, kept by a guard each connection carries.
struct OpenCount {
    count: AtomicUsize,
    gauge: IntGauge,
}

struct OpenGuard(Arc<OpenCount>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.count.fetch_sub(1, Ordering::AcqRel);
        self.0.gauge.dec();
    }
}

/// The metrics of one host's pool.
pub(crate) struct PoolMetrics {
    pub open: IntGauge,
    pub limit: IntGauge,
    pub opened: IntCounter,
    pub shrinks: IntCounter,
}

impl HostPool {
    pub(crate) fn new(
        target: Target,
        max: usize,
        idle_timeout: Duration,
        metrics: PoolMetrics,
    ) -> Self {
        let max = max.max(1);
        metrics.limit.set(max as i64);
        Self {
            target,
            max,
            idle_timeout,
            slots: Semaphore::new(max),
            state: Mutex::new(State {
                limit: max,
                debt: 0,
                idle: Vec::new(),
                last_shrink: None,
            }),
            open: Arc::new(OpenCount {
                count: AtomicUsize::new(0),
                gauge: metrics.open,
            }),
            opened: metrics.opened,
            shrinks: metrics.shrinks,
            limit_gauge: metrics.limit,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A poisoned lock only means a panic elsewhere; the state is whole.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Delivers one message on a pooled connection. Cancelling the future
    /// (the send timeout) drops the connection it was using: a connection
    /// in the middle of a transaction is never reused.
    pub(crate) async fn send(
        &self,
        from: &str,
        to: &[String],
        body: &[u8],
    ) -> Result<(), SmtpError> {
        let mut backoff = Duration::from_millis(20);
        loop {
            let permit = self
                .slots
                .acquire()
                .await
                .map_err(|_| SmtpError::PoolClosed)?;
            let (mut connection, reused) = match self.take_idle() {
                Some(connection) => (connection, true),
                None => match self.connect().await {
                    Ok(connection) => (connection, false),
                    Err(error) if error.is_service_closing() => {
                        if !self.shrink(permit) {
                            // Even this few are refused: wait, then ask again.
                            tokio::time::sleep(backoff).await;
                            backoff = (backoff * 2).min(MAX_BACKOFF);
                        }
                        continue;
                    }
                    Err(error) => {
                        self.release(permit);
                        return Err(error);
                    }
                },
            };
            match connection.send(from, to, body).await {
                Ok(()) => {
                    self.put_idle(connection);
                    self.release(permit);
                    self.maybe_regrow();
                    return Ok(());
                }
                Err(failure) => {
                    if failure.usable {
                        self.put_idle(connection);
                    } else {
                        drop(connection);
                    }
                    // A 421 on a pooled connection is most often a server
                    // closing a client it thinks idle: like a dropped
                    // connection, try again without giving up a slot. On a
                    // fresh one it means "too many": shrink.
                    if failure.error.is_service_closing() && !failure.maybe_delivered {
                        if reused {
                            self.release(permit);
                            continue;
                        }
                        if !self.shrink(permit) {
                            tokio::time::sleep(backoff).await;
                            backoff = (backoff * 2).min(MAX_BACKOFF);
                        }
                        continue;
                    }
                    if reused && !failure.usable && !failure.maybe_delivered {
                        // A pooled connection the server had closed while
                        // it sat idle: try again on another one.
                        self.release(permit);
                        continue;
                    }
                    self.release(permit);
                    return Err(failure.error);
                }
            }
        }
    }

    async fn connect(&self) -> Result<Connection, SmtpError> {
        self.open.count.fetch_add(1, Ordering::AcqRel);
        self.open.gauge.inc();
        let guard: Arc<dyn Send + Sync> = Arc::new(OpenGuard(self.open.clone()));
        let connection = Connection::open(&self.target, guard).await?;
        self.opened.inc();
        Ok(connection)
    }

    fn take_idle(&self) -> Option<Connection> {
        let mut state = self.state();
        while let Some(connection) = state.idle.pop() {
            if connection.idle_since.elapsed() < self.idle_timeout {
                return Some(connection);
            }
            // Idle too long: the server has likely timed it out already.
        }
        None
    }

    fn put_idle(&self, connection: Connection) {
        self.state().idle.push(connection);
    }

    /// Gives a slot back, or takes it out of circulation if the limit
    /// shrank while it was out.
    fn release(&self, permit: SemaphorePermit<'_>) {
        let mut state = self.state();
        if state.debt > 0 {
            state.debt -= 1;
            permit.forget();
        } else {
            drop(permit);
        }
    }

    /// After a `421`: the limit becomes the connections still open (at
    /// least one). `permit` is the caller's slot, which the caller keeps
    /// unless the limit shrank. Returns whether it shrank.
    fn shrink(&self, permit: SemaphorePermit<'_>) -> bool {
        let open = self.open.count.load(Ordering::Acquire);
        let mut state = self.state();
        let target = open.clamp(1, state.limit);
        if target >= state.limit {
            // Nothing to give up; the caller waits and asks again.
            drop(state);
            self.release(permit);
            return false;
        }
        let mut excess = state.limit - target;
        state.limit = target;
        state.last_shrink = Some(Instant::now());
        // Close idle connections above the new limit.
        let keep = target.min(state.idle.len());
        let surplus = state.idle.len() - keep;
        state.idle.drain(..surplus);
        // The caller's own slot goes first, then free ones, then the rest
        // as they come back.
        permit.forget();
        excess -= 1;
        let forgotten = self.slots.forget_permits(excess);
        state.debt += excess - forgotten;
        self.shrinks.inc();
        self.limit_gauge.set(target as i64);
        tracing::warn!(
            host = %self.target.host,
            port = self.target.port,
            limit = target,
            "The SMTP server refused a connection (421); using fewer connections."
        );
        true
    }

    /// Grows a shrunk limit back by one after [`REGROW_AFTER`] without a
    /// `421`.
    fn maybe_regrow(&self) {
        let mut state = self.state();
        if state.limit >= self.max {
            return;
        }
        if state
            .last_shrink
            .is_some_and(|at| at.elapsed() < REGROW_AFTER)
        {
            return;
        }
        state.limit += 1;
        state.last_shrink = Some(Instant::now());
        if state.debt > 0 {
            state.debt -= 1;
        } else {
            self.slots.add_permits(1);
        }
        self.limit_gauge.set(state.limit as i64);
    }

    /// Closes every idle connection politely (QUIT) and refuses new sends.
    pub(crate) async fn close(&self) {
        self.slots.close();
        let idle: Vec<Connection> = std::mem::take(&mut self.state().idle);
        futures::future::join_all(idle.into_iter().map(Connection::quit)).await;
    }
}
