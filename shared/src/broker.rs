//! Connecting to RabbitMQ.
//!
//! Connections use lapin's automatic recovery: after a dropped connection it
//! reconnects and replays channels, QoS, confirms and consumers. When
//! recovery gives up, the runtime starts over with a fresh connection, so the
//! two layers together survive a broker restart of any length. A session
//! that starts over opens its connections with [`connect_session`], whose
//! recovery ends for good when the session drops them: lapin cannot stop
//! a recovery, and one left running would bring the old connection (and
//! its consumers) back when its node returns.
//!
//! `broker.url` may name several nodes of a cluster. A connection goes to
//! the first that answers, starting from the one that answered last and on
//! round the list, each given `broker.connect_timeout`. lapin's recovery
//! reconnects to the node it was connected to; when that node stays down,
//! the fresh connection the runtime starts over with goes to a surviving
//! one (docs/cluster.md).
//!
//! `amqps://` URLs use rustls (with ring): the broker's certificate is
//! checked against the system's CAs plus `broker.tls_ca_file`, and its name
//! against the URL's host. A refused certificate is a [`ConnectError::Tls`]
//! that names the cause.

use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use lapin::options::QueueDeclareOptions;
use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
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
    /// The TLS handshake failed: the broker's certificate was refused.
    #[error("could not connect to the broker at {url} over TLS: {cause} ({source})")]
    Tls {
        /// The broker's URL, password redacted.
        url: String,
        /// What was wrong, in words, with what to change.
        cause: &'static str,
        /// What rustls reported.
        #[source]
        source: std::io::Error,
    },
    /// A file named by `broker.tls_ca_file`, `tls_cert_file` or
    /// `tls_key_file` could not be read.
    #[error("could not read {setting} ({path}): {source}")]
    TlsFile {
        /// The setting that names it.
        setting: &'static str,
        /// Its path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A client certificate without its key, or a key without certificate.
    #[error("broker.tls_cert_file and broker.tls_key_file go together: set both or neither")]
    TlsIdentity,
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

/// The causes of a refused TLS handshake, by the words rustls reports them
/// with, and what to say instead.
const TLS_CAUSES: &[(&[&str], &str)] = &[
    (
        &["UnknownIssuer"],
        "the broker's certificate is signed by a CA this process does not trust \
         (certificate unknown issuer); set broker.tls_ca_file to that CA's PEM file",
    ),
    (
        &["NotValidForName", "not valid for name"],
        "the broker's certificate does not name the host of broker.url \
         (host name mismatch); connect by a name the certificate carries",
    ),
    (
        &["BadSignature"],
        "the broker's certificate does not verify against the CA of that name in \
         broker.tls_ca_file (bad signature: another CA with the same name?)",
    ),
    (
        &["Expired", "NotValidYet"],
        "the broker's certificate is expired or not valid yet",
    ),
    (
        &["CertificateRequired", "certificate required"],
        "the broker asks for a client certificate; set broker.tls_cert_file and broker.tls_key_file",
    ),
    (
        &["InvalidCertificate", "invalid peer certificate"],
        "the broker's certificate was refused",
    ),
];

/// The cause of a TLS refusal in `error`, if it is one.
fn tls_cause(error: &(impl std::fmt::Display + std::fmt::Debug)) -> Option<&'static str> {
    let text = format!("{error} {error:?}");
    TLS_CAUSES
        .iter()
        .find(|(needles, _)| needles.iter().any(|n| text.contains(n)))
        .map(|(_, cause)| *cause)
}

fn read_tls_file(setting: &'static str, path: &Path) -> Result<Vec<u8>, ConnectError> {
    std::fs::read(path).map_err(|source| ConnectError::TlsFile {
        setting,
        path: path.to_owned(),
        source,
    })
}

/// The TLS configuration of `settings`: extra CAs and a client identity.
fn tls_config(settings: &BrokerSettings) -> Result<OwnedTLSConfig, ConnectError> {
    let cert_chain = match &settings.tls_ca_file {
        Some(path) => {
            Some(String::from_utf8_lossy(&read_tls_file("broker.tls_ca_file", path)?).into_owned())
        }
        None => None,
    };
    let identity = match (&settings.tls_cert_file, &settings.tls_key_file) {
        (Some(cert), Some(key)) => Some(OwnedIdentity::PKCS8 {
            pem: read_tls_file("broker.tls_cert_file", cert)?,
            key: read_tls_file("broker.tls_key_file", key)?,
        }),
        (None, None) => None,
        _ => return Err(ConnectError::TlsIdentity),
    };
    Ok(OwnedTLSConfig {
        identity,
        cert_chain,
    })
}

/// Opens a connection named `name` (shown in the management UI), with
/// automatic recovery.
pub async fn connect(settings: &BrokerSettings, name: &str) -> Result<Connection, ConnectError> {
    open(settings, name, true, &Arc::default(), None).await
}

/// Opens a connection named `name` for one session of a long-lived
/// process, with automatic recovery while the session holds it. Dropping
/// it (or [`SessionConnection::retire`]) ends that recovery for good: no
/// reconnect is made after it, and a connection that is connected (or
/// reconnects in the instant it is retired) is closed.
///
/// For whoever gives up on a recovery and starts over with a fresh
/// connection (a worker's consumer, the gateway): lapin has no way to stop
/// its recovery, and a connection left to it would reconnect once its node
/// answers again and replay its consumers, which nobody reads any more.
/// Their prefetched deliveries would stay unacked on that connection for as
/// long as it lives (docs/cluster.md, "Duplicates").
pub async fn connect_session(
    settings: &BrokerSettings,
    name: &str,
) -> Result<SessionConnection, ConnectError> {
    let retired = Arc::new(AtomicBool::new(false));
    let (gone_tx, gone) = tokio::sync::watch::channel(());
    let connection = open(settings, name, true, &retired, Some(gone_tx)).await?;
    Ok(SessionConnection {
        connection: Some(connection),
        retired,
        gone,
        close_timeout: settings.connect_timeout,
    })
}

/// A connection of [`connect_session`]: lapin's [`Connection`] (it derefs
/// to it) whose recovery ends when it is dropped or retired.
pub struct SessionConnection {
    /// Always `Some` until retired or dropped.
    connection: Option<Connection>,
    /// Set when retired: every later reconnect of lapin's recovery fails.
    retired: Arc<AtomicBool>,
    /// Closed when lapin's IO loop, which owns the sender, has ended.
    gone: tokio::sync::watch::Receiver<()>,
    /// How long the close of a connected connection may take.
    close_timeout: Duration,
}

impl std::ops::Deref for SessionConnection {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        // Taken only by `retire` and `drop`, which consume it.
        self.connection.as_ref().unwrap_or_else(|| unreachable!())
    }
}

impl SessionConnection {
    /// Ends the connection for good; the future completes once it is gone:
    /// closed, or lapin's recovery over without a reconnect. Dropping the
    /// connection does the same in a task of its own.
    pub fn retire(mut self) -> impl std::future::Future<Output = ()> + Send + 'static {
        self.retired.store(true, Ordering::SeqCst);
        retire(
            self.connection.take(),
            self.gone.clone(),
            self.close_timeout,
        )
    }
}

impl Drop for SessionConnection {
    fn drop(&mut self) {
        self.retired.store(true, Ordering::SeqCst);
        let Some(connection) = self.connection.take() else {
            return;
        };
        // Outside a runtime the flag alone must do: no reconnect is made
        // after it, and lapin closes a connected connection when dropped.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(retire(
                Some(connection),
                self.gone.clone(),
                self.close_timeout,
            ));
        }
    }
}

/// Waits until a retired connection is gone: closes it if it is (or
/// becomes) connected, and lets it go once lapin's IO loop has ended.
async fn retire(
    connection: Option<Connection>,
    mut gone: tokio::sync::watch::Receiver<()>,
    close_timeout: Duration,
) {
    let Some(connection) = connection else {
        return;
    };
    loop {
        if connection.status().connected() {
            // Connected, or a reconnect that landed as it was retired:
            // closing hands back whatever its consumers had received.
            let _ =
                tokio::time::timeout(close_timeout, connection.close(200, "retired".into())).await;
        }
        tokio::select! {
            // The IO loop ended: closed, or its recovery gave up (every
            // reconnect after the retirement is refused).
            _ = gone.changed() => return,
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
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
    open(settings, name, false, &Arc::default(), None).await
}

async fn open(
    settings: &BrokerSettings,
    name: &str,
    recover: bool,
    retired: &Arc<AtomicBool>,
    gone: Option<tokio::sync::watch::Sender<()>>,
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
        match open_one(settings, address, properties.clone(), retired, gone.clone()).await {
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

/// One address, within `broker.connect_timeout`, with the TLS settings.
async fn open_one(
    settings: &BrokerSettings,
    address: &SecretString,
    properties: ConnectionProperties,
    retired: &Arc<AtomicBool>,
    gone: Option<tokio::sync::watch::Sender<()>>,
) -> Result<Connection, ConnectError> {
    let timeout = settings.connect_timeout;
    let url = address.expose_secret();
    tls_preflight(settings, address, timeout).await?;
    let broker_error = |source| ConnectError::Broker {
        url: redact_url(url),
        source,
    };
    let uri = url
        .parse::<lapin::uri::AMQPUri>()
        .map_err(|e| broker_error(std::io::Error::other(e).into()))?;
    let runtime = lapin::runtime::default_runtime().map_err(broker_error)?;
    // Kept by lapin for every reconnect of the recovery.
    let tls = tls_config(settings)?;
    let retired = retired.clone();
    // lapin's own TCP (and TLS) connect, refused once the connection is
    // retired (`SessionConnection`): the only way to end lapin's recovery.
    // The closure lives as long as lapin's IO loop: `gone`, which it owns,
    // tells the retirement when that loop has ended.
    let connect = Connection::connector(
        uri,
        runtime,
        async move |uri, runtime| {
            let _io_loop = &gone;
            let refused = || {
                lapin::Error::from(std::io::Error::new(
                    std::io::ErrorKind::ConnectionAborted,
                    "the connection was retired; no more reconnects",
                ))
            };
            if retired.load(Ordering::SeqCst) {
                return Err(refused());
            }
            let stream =
                lapin::tcp::AMQPUriTcpExt::connect_with_config_async(&uri, tls.as_ref(), &runtime)
                    .await
                    .map_err(lapin::Error::from)?;
            // Retired while this connect was under way: not handed to lapin.
            if retired.load(Ordering::SeqCst) {
                return Err(refused());
            }
            Ok(stream)
        },
        properties,
    );
    match tokio::time::timeout(timeout, connect).await {
        Ok(Ok(connection)) => Ok(connection),
        Ok(Err(source)) => Err(match tls_cause(&source) {
            Some(cause) => ConnectError::Tls {
                url: redact_url(url),
                cause,
                source: std::io::Error::other(source),
            },
            None => ConnectError::Broker {
                url: redact_url(url),
                source,
            },
        }),
        Err(_) => Err(ConnectError::Timeout {
            url: redact_url(url),
            timeout,
        }),
    }
}

/// For an `amqps://` URL, one TLS handshake with the broker, trusting what
/// lapin trusts (the system's CAs and `broker.tls_ca_file`) and presenting
/// the same client certificate. lapin retries a refused handshake like a
/// refused connection until `connect_timeout`, so without this a wrong CA
/// or host name would surface as a timeout; with it, the refusal is a
/// [`ConnectError::Tls`] at once. Anything other than a refused
/// certificate (the broker down, a plain URL) is left to lapin.
async fn tls_preflight(
    settings: &BrokerSettings,
    address: &SecretString,
    timeout: Duration,
) -> Result<(), ConnectError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

    let Ok(uri) = address.expose_secret().parse::<lapin::uri::AMQPUri>() else {
        return Ok(()); // lapin names the bad URL
    };
    if uri.scheme != lapin::uri::AMQPScheme::AMQPS {
        return Ok(());
    }
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    if let Some(path) = &settings.tls_ca_file {
        let pem = read_tls_file("broker.tls_ca_file", path)?;
        roots
            .add_parsable_certificates(CertificateDer::pem_slice_iter(&pem).filter_map(Result::ok));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let Ok(builder) =
        rustls::ClientConfig::builder_with_provider(provider).with_safe_default_protocol_versions()
    else {
        return Ok(());
    };
    let builder = builder.with_root_certificates(roots);
    let config = match (&settings.tls_cert_file, &settings.tls_key_file) {
        (Some(cert), Some(key)) => {
            let certs = read_tls_file("broker.tls_cert_file", cert)?;
            let key = read_tls_file("broker.tls_key_file", key)?;
            let certs: Vec<_> = CertificateDer::pem_slice_iter(&certs)
                .filter_map(Result::ok)
                .collect();
            let Ok(key) = PrivateKeyDer::from_pem_slice(&key) else {
                return Ok(()); // lapin reports the unreadable key
            };
            match builder.with_client_auth_cert(certs, key) {
                Ok(config) => config,
                Err(_) => return Ok(()),
            }
        }
        (None, None) => builder.with_no_client_auth(),
        _ => return Err(ConnectError::TlsIdentity),
    };
    let host = uri.authority.host.clone();
    let Ok(server_name) = ServerName::try_from(host.clone()) else {
        return Ok(());
    };
    let attempt = async {
        let tcp = tokio::net::TcpStream::connect((host.as_str(), uri.authority.port)).await?;
        tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(server_name, tcp)
            .await
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(Err(source)) => match tls_cause(&source) {
            Some(cause) => Err(ConnectError::Tls {
                url: redact_url(address.expose_secret()),
                cause,
                source,
            }),
            None => Ok(()),
        },
        // A handshake that went through, or no answer: lapin's turn.
        Ok(Ok(_)) | Err(_) => Ok(()),
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
/// channels are never at risk). `NOT_FOUND - no queue` is `Ok(false)`; any
/// other failure (the connection lost, access refused, the queue's home
/// node down) is an error, never taken for an absent queue.
pub async fn queue_exists(connection: &Connection, queue: &str) -> Result<bool, lapin::Error> {
    match declare_passive(connection.create_channel().await?, queue).await {
        Ok(()) => Ok(true),
        Err(e) if is_absent(&e) => Ok(false),
        Err(e) => Err(e),
    }
}

/// A passive declare of `queue` on `channel`, which it closes when the
/// queue answers (a failed declare has the broker close it).
pub async fn declare_passive(channel: lapin::Channel, queue: &str) -> Result<(), lapin::Error> {
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    let _ = channel.close(200, "checked".into()).await;
    Ok(())
}

/// A passive declare's `NOT_FOUND - no queue ...`: the queue does not
/// exist. (A queue whose home node is down, or a stream the broker has not
/// started again yet, is `NOT_FOUND` too, with another text.)
pub fn is_absent(e: &lapin::Error) -> bool {
    is_not_found(e) && e.to_string().contains("no queue")
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
