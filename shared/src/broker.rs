//! Connecting to RabbitMQ.
//!
//! Connections use lapin's automatic recovery: after a dropped connection it
//! reconnects and replays channels, QoS, confirms and consumers. When
//! recovery gives up, the runtime starts over with a fresh connection, so the
//! two layers together survive a broker restart of any length.
//!
//! `broker.url` may name several nodes of a cluster. A connection goes to
//! the first that answers, starting from the one that answered last and on
//! round the list, each given `broker.connect_timeout`. lapin's recovery
//! reconnects to the node it was connected to; when that node stays down,
//! the fresh connection the runtime starts over with goes to a surviving
//! one (docs/cluster.md).

use std::fmt::Display;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use secrecy::{ExposeSecret, SecretString};
use tokio_util::sync::CancellationToken;

use crate::settings::{BrokerSettings, redact_url};

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
    /// None of several addresses answered: why, address by address.
    #[error("could not connect to any of the {} broker addresses: {}", .0.len(), join_errors(.0))]
    NoAddressAnswered(Vec<ConnectError>),
}

fn join_errors(errors: &[ConnectError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
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
    let addresses = settings.addresses();
    let rotation = Rotation::of(settings);
    let mut errors = Vec::new();
    for index in rotation.order(addresses.len()) {
        let address = &addresses[index];
        match open_one(address, settings.connect_timeout, properties.clone()).await {
            Ok(connection) => {
                rotation.answered(index);
                if !errors.is_empty() {
                    tracing::info!(
                        broker = %redact_url(address.expose_secret()),
                        skipped = errors.len(),
                        "Connected to another broker address; the ones before it did not answer."
                    );
                }
                return Ok(connection);
            }
            Err(e) => errors.push(e),
        }
    }
    if errors.len() == 1 {
        Err(errors.remove(0))
    } else {
        Err(ConnectError::NoAddressAnswered(errors))
    }
}

/// Which address of a `broker.url` answered last in this process: every
/// connection opened with the same `url`, from any copy of the settings,
/// starts there. Keyed by a hash of the URL, never the URL itself.
struct Rotation(u64);

impl Rotation {
    fn table() -> &'static std::sync::Mutex<std::collections::HashMap<u64, usize>> {
        static TABLE: std::sync::OnceLock<std::sync::Mutex<std::collections::HashMap<u64, usize>>> =
            std::sync::OnceLock::new();
        TABLE.get_or_init(Default::default)
    }

    fn of(settings: &BrokerSettings) -> Self {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        settings.url.expose_secret().hash(&mut hasher);
        Self(hasher.finish())
    }

    /// The order in which `count` addresses are tried.
    fn order(&self, count: usize) -> Vec<usize> {
        let start = Self::table()
            .lock()
            .map(|t| t.get(&self.0).copied().unwrap_or(0))
            .unwrap_or(0);
        order(start, count)
    }

    /// Remembers that address `index` answered.
    fn answered(&self, index: usize) {
        if let Ok(mut t) = Self::table().lock() {
            t.insert(self.0, index);
        }
    }
}

/// `count` addresses from `start` (the one that answered last), then on
/// round the list: each once.
fn order(start: usize, count: usize) -> Vec<usize> {
    (0..count).map(|i| (start + i) % count).collect()
}

/// One address, within `timeout`.
async fn open_one(
    address: &SecretString,
    timeout: Duration,
    properties: ConnectionProperties,
) -> Result<Connection, ConnectError> {
    let url = address.expose_secret();
    match tokio::time::timeout(timeout, Connection::connect(url, properties)).await {
        Ok(Ok(connection)) => Ok(connection),
        Ok(Err(source)) => Err(ConnectError::Broker {
            url: redact_url(url),
            source,
        }),
        Err(_) => Err(ConnectError::Timeout {
            url: redact_url(url),
            timeout,
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

    /// A port nothing listens on: bound, then released.
    fn closed_port() -> u16 {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    }

    #[test]
    fn the_rotation_starts_from_the_address_that_answered_last() {
        assert_eq!(order(0, 3), [0, 1, 2]);
        assert_eq!(order(1, 3), [1, 2, 0]);
        assert_eq!(order(2, 3), [2, 0, 1]);
        assert_eq!(order(0, 1), [0]);
        assert!(order(0, 0).is_empty());
        // Shared by every copy of the same settings, not by other URLs.
        let settings = BrokerSettings {
            url: SecretString::from(format!(
                "amqp://a:1/%2f,amqp://b:1/%2f,amqp://{}:1",
                uuid::Uuid::new_v4().simple()
            )),
            ..Default::default()
        };
        let copy = settings.clone();
        assert_eq!(Rotation::of(&settings).order(3), [0, 1, 2]);
        Rotation::of(&copy).answered(2);
        assert_eq!(Rotation::of(&settings).order(3), [2, 0, 1]);
        assert_eq!(Rotation::of(&BrokerSettings::default()).order(1), [0]);
    }

    #[tokio::test]
    async fn every_address_is_tried_in_turn_and_each_failure_is_named() {
        // One refuses at once, one accepts and never answers the handshake.
        let refused = closed_port();
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let silent_port = silent.local_addr().unwrap().port();
        let settings = BrokerSettings {
            url: SecretString::from(format!(
                "amqp://u:hunter2@127.0.0.1:{refused}/%2f,amqp://u:hunter2@127.0.0.1:{silent_port}/%2f"
            )),
            connect_timeout: Duration::from_millis(300),
            ..Default::default()
        };
        let started = tokio::time::Instant::now();
        let err = connect(&settings, "test").await.err().unwrap();
        let shown = err.to_string();
        assert!(
            matches!(&err, ConnectError::NoAddressAnswered(e) if e.len() == 2),
            "{shown}"
        );
        assert!(shown.contains(&format!("127.0.0.1:{refused}")), "{shown}");
        assert!(
            shown.contains(&format!("127.0.0.1:{silent_port}")),
            "{shown}"
        );
        assert!(shown.contains("within 300ms"), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
        // Each address had its own timeout, not one for the lot.
        assert!(started.elapsed() < Duration::from_secs(3));
        drop(silent);
    }

    #[tokio::test]
    async fn one_address_fails_as_before() {
        let refused = closed_port();
        let settings = BrokerSettings {
            url: SecretString::from(format!("amqp://u:hunter2@127.0.0.1:{refused}/%2f")),
            connect_timeout: Duration::from_millis(300),
            ..Default::default()
        };
        let err = connect(&settings, "test").await.err().unwrap();
        assert!(
            matches!(
                &err,
                ConnectError::Broker { .. } | ConnectError::Timeout { .. }
            ),
            "{err}"
        );
    }

    #[test]
    fn identity_names_service_host_and_pid() {
        let id = worker_identity("email-worker");
        assert!(id.starts_with("email-worker@"));
        assert!(id.ends_with(&format!("/{}", std::process::id())));
    }
}
