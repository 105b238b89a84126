//! Connecting to RabbitMQ.
//!
//! Connections use lapin's automatic recovery: after a dropped connection it
//! reconnects and replays channels, QoS, confirms and consumers. When
//! recovery gives up, the runtime starts over with a fresh connection, so the
//! two layers together survive a broker restart of any length.

use std::fmt::Display;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use secrecy::ExposeSecret;
use tokio_util::sync::CancellationToken;

use crate::settings::BrokerSettings;

/// Why a connection to the broker could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The broker refused or dropped the connection.
    #[error("could not connect to the broker at {url}: {source}")]
    Broker {
        /// The broker's URL, password redacted.
        url: String,
        /// What lapin reported.
        #[source]
        source: lapin::Error,
    },
    #[error(
        "could not connect to the broker at {url} within {timeout:?} (refused, unreachable or not answering)"
    )]
    /// The broker did not answer in time.
    Timeout {
        /// The broker's URL, password redacted.
        url: String,
        /// How long it was given.
        timeout: Duration,
    },
}

/// Opens a connection named `name` (shown in the management UI), with
/// automatic recovery.
pub async fn connect(settings: &BrokerSettings, name: &str) -> Result<Connection, ConnectError> {
    open(settings, name, true).await
}

/// Opens a connection named `name` that does not recover: once it is lost
/// it stays lost, and everything opened on it (channels, consumers,
/// exclusive queues) is gone with it.
///
/// For a holder of a lock on the connection (the conductor's leader): a
/// recovered connection would no longer hold the lock, yet its replayed
/// consumers and channels would carry on as if it did, and lapin does not
/// replay `tx.select`, so a transactional channel would come back
/// publishing outside any transaction. Start over with a fresh connection
/// instead.
pub async fn connect_without_recovery(
    settings: &BrokerSettings,
    name: &str,
) -> Result<Connection, ConnectError> {
    open(settings, name, false).await
}

async fn open(
    settings: &BrokerSettings,
    name: &str,
    recover: bool,
) -> Result<Connection, ConnectError> {
    // lapin's default reconnect backoff doubles from 1 s: after a broker
    // restart of a few seconds the next try may be half a minute away. Start
    // small and cap at our own maximum; when lapin gives up, the runtime
    // starts over with a fresh connection.
    let max_delay = settings.reconnect_max_delay;
    let properties = ConnectionProperties::default()
        .with_connection_name(name.into())
        .configure_backoff(move |b| {
            b.with_min_delay(Duration::from_millis(250))
                .with_max_delay(max_delay)
                .with_factor(2.0)
                .with_jitter()
                .with_max_times(20)
        });
    let properties = if recover {
        properties.enable_auto_recover()
    } else {
        properties
    };
    let url = settings.url.expose_secret();
    match tokio::time::timeout(
        settings.connect_timeout,
        Connection::connect(url, properties),
    )
    .await
    {
        Ok(Ok(connection)) => Ok(connection),
        Ok(Err(source)) => Err(ConnectError::Broker {
            url: settings.redacted_url(),
            source,
        }),
        Err(_) => Err(ConnectError::Timeout {
            url: settings.redacted_url(),
            timeout: settings.connect_timeout,
        }),
    }
}

/// `<service>@<hostname>/<pid>`: who did it, in headers and connection names.
pub fn worker_identity(service: &str) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown-host".to_owned());
    format!("{service}@{host}/{}", std::process::id())
}

/// Exponential backoff with full jitter, capped.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    /// Delays from `base`, doubling per failure up to `max`, with jitter.
    pub fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max,
            failures: 0,
        }
    }

    /// The delay before the next try.
    pub fn next_delay(&mut self) -> Duration {
        let exp = self.base.saturating_mul(1u32 << self.failures.min(16));
        self.failures = self.failures.saturating_add(1);
        let cap = exp.min(self.max);
        // Full jitter keeps a fleet of replicas from reconnecting in lockstep
        // when the broker comes back.
        let factor: f64 = rand::random_range(0.5..=1.0);
        cap.mul_f64(factor)
    }

    /// Starts over from `base`, after a success.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

/// Runs `session` until it ends well or `shutdown` is cancelled, starting
/// it over after each error: the error is logged at WARN as `message`
/// (with `error` and `retry_in_ms`), then the next delay of `backoff` is
/// waited unless `shutdown` comes first. A session calls
/// [`BackoffReset::reset`] once it is connected and working, so a long
/// healthy session is followed by a short first delay.
///
/// The one shape of the long-lived broker sessions beside a worker's
/// consumer (the gateway's workflow reader and status indexer, the
/// conductor's leader, the Celery bridge): `Ok(())` means it stopped on
/// purpose (shutdown), an error that the connection or the stream was lost.
///
/// ```no_run
/// # async fn demo(settings: warren::settings::BrokerSettings) {
/// use std::time::Duration;
/// use tokio_util::sync::CancellationToken;
/// use warren::broker::{Backoff, connect, reconnect_loop};
///
/// let shutdown = CancellationToken::new();
/// let backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(30));
/// let settings = &settings;
/// reconnect_loop(backoff, &shutdown, "The reader lost its connection; reconnecting.", |up| async move {
///     let connection = connect(settings, "reader").await?;
///     up.reset();
///     // ... work until the connection is lost or shutdown ...
///     # drop(connection);
///     Ok::<(), warren::broker::ConnectError>(())
/// })
/// .await;
/// # }
/// ```
pub async fn reconnect_loop<E, F, Fut>(
    mut backoff: Backoff,
    shutdown: &CancellationToken,
    message: &str,
    mut session: F,
) where
    E: Display,
    F: FnMut(BackoffReset) -> Fut,
    Fut: Future<Output = Result<(), E>>,
{
    loop {
        let up = BackoffReset::default();
        let result = session(up.clone()).await;
        if up.0.load(Ordering::SeqCst) {
            backoff.reset();
        }
        match result {
            Ok(()) => return,
            Err(e) => {
                let delay = backoff.next_delay();
                tracing::warn!(
                    error = %e,
                    retry_in_ms = delay.as_millis() as u64,
                    "{message}"
                );
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

/// Given to each session of [`reconnect_loop`]: [`reset`](Self::reset)
/// says the session got going, so the backoff starts over from its base.
#[derive(Debug, Clone, Default)]
pub struct BackoffReset(Arc<AtomicBool>);

impl BackoffReset {
    /// The session is connected and working: the next delay after it ends
    /// is the backoff's shortest.
    pub fn reset(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Whether the queue `queue` exists, by a passive declare on a channel of
/// its own (a failed passive declare closes its channel, so the caller's
/// channels are never at risk). `NOT_FOUND` is `Ok(false)`; any other
/// failure (the connection lost, access refused) is an error, never taken
/// for an absent queue.
pub async fn queue_exists(connection: &Connection, queue: &str) -> Result<bool, lapin::Error> {
    let channel = connection.create_channel().await?;
    let found = channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await;
    match found {
        Ok(_) => {
            let _ = channel.close(200, "checked".into()).await;
            Ok(true)
        }
        Err(e) if is_not_found(&e) => Ok(false),
        Err(e) => Err(e),
    }
}

/// The broker's `404 NOT_FOUND` channel error (no such queue or exchange).
pub fn is_not_found(e: &lapin::Error) -> bool {
    matches!(e.kind(), lapin::ErrorKind::ProtocolError(amqp)
        if matches!(amqp.kind(), lapin::protocol::AMQPErrorKind::Soft(lapin::protocol::AMQPSoftError::NOTFOUND)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let first = b.next_delay();
        assert!(first <= Duration::from_millis(100) && first >= Duration::from_millis(50));
        for _ in 0..20 {
            assert!(b.next_delay() <= Duration::from_secs(2));
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }

    #[tokio::test(start_paused = true)]
    async fn reconnect_loop_starts_sessions_over_until_one_ends_well_or_shutdown() {
        let shutdown = CancellationToken::new();
        let backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let mut runs = 0;
        let started = tokio::time::Instant::now();
        reconnect_loop(backoff, &shutdown, "Lost; reconnecting.", |_| {
            runs += 1;
            let result = if runs < 3 { Err("lost") } else { Ok(()) };
            async move { result }
        })
        .await;
        assert_eq!(runs, 3);
        // Two waits: at most 100 ms, then at most 200 ms.
        assert!(started.elapsed() <= Duration::from_millis(300));

        // Shutdown ends the wait between sessions.
        let backoff = Backoff::new(Duration::from_secs(3600), Duration::from_secs(3600));
        let stop = shutdown.clone();
        reconnect_loop(backoff, &shutdown, "Lost; reconnecting.", |up| {
            up.reset();
            stop.cancel();
            async { Err::<(), _>("lost") }
        })
        .await;
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn identity_names_service_host_and_pid() {
        let id = worker_identity("email-worker");
        assert!(id.starts_with("email-worker@"));
        assert!(id.ends_with(&format!("/{}", std::process::id())));
    }
}
