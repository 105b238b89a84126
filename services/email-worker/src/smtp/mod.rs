//! SMTP delivery at the server's speed: a pool of connections per
//! destination host, `TCP_NODELAY` and one write per command group and per
//! DATA payload, `PIPELINING` (RFC 2920) when the server offers it, RSET
//! between the messages of a connection, and fewer connections when the
//! server answers `421`.
//!
//! Why not lettre's pooled transport: lettre writes each command and waits
//! for its reply (it has no pipelining), and writes the DATA payload and its
//! terminator in two writes without `TCP_NODELAY`, which costs up to 40 ms
//! per message against a server with delayed ACKs. The protocol pieces come
//! from `mail-send` (see [`connection`]); lettre still builds the messages.

mod connection;
mod pool;
mod stream;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use mail_send::Credentials;
use secrecy::ExposeSecret;
use smtp_proto::Response;
use tokio_rustls::TlsConnector;

use crate::settings::SmtpSettings;
use connection::Target;
use pool::HostPool;

pub(crate) use pool::PoolMetrics;
pub use pool::REGROW_AFTER;

/// Why an SMTP delivery (or setting one up) failed.
#[derive(Debug, thiserror::Error)]
pub enum SmtpError {
    /// The server answered, and not with what the transaction needed.
    #[error("the SMTP server answered {code} to {command}: {message}")]
    Reply {
        command: &'static str,
        code: u16,
        message: String,
    },
    #[error("could not connect to {address}: {source}")]
    Connect {
        address: String,
        #[source]
        source: std::io::Error,
    },
    #[error("connecting to the SMTP server took longer than {0:?}")]
    ConnectTimeout(Duration),
    /// Broken connection, TLS failure, unparseable reply, no STARTTLS, no
    /// usable AUTH mechanism.
    #[error("{command} failed: {source}")]
    Protocol {
        command: &'static str,
        #[source]
        source: mail_send::Error,
    },
    #[error("the SMTP settings cannot work: {0}")]
    Settings(String),
    #[error("the SMTP connection pool is closed (shutting down)")]
    PoolClosed,
}

impl SmtpError {
    fn reply(command: &'static str, reply: &Response<String>) -> Self {
        SmtpError::Reply {
            command,
            code: reply.code(),
            message: reply.message().trim().to_owned(),
        }
    }

    fn from_protocol(command: &'static str, error: mail_send::Error) -> Self {
        match error {
            mail_send::Error::UnexpectedReply(reply)
            | mail_send::Error::AuthenticationFailed(reply) => Self::reply(command, &reply),
            source => SmtpError::Protocol { command, source },
        }
    }

    /// The server's reply code, if it answered.
    pub fn code(&self) -> Option<u16> {
        match self {
            SmtpError::Reply { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// 5xx: the server looked at this and said no for good.
    pub fn is_permanent(&self) -> bool {
        self.code().is_some_and(|c| (500..600).contains(&c))
    }

    /// 4xx: the server said "not now".
    pub fn is_transient(&self) -> bool {
        self.code().is_some_and(|c| (400..500).contains(&c))
    }

    /// 421: the server is closing this connection (too many connections,
    /// or shutting down).
    fn is_service_closing(&self) -> bool {
        self.code() == Some(421)
    }
}

/// Pooled SMTP delivery to the relay of `[email.smtp]`: one pool per
/// destination host (today the one relay), each with at most
/// `pool_max_size` connections.
pub struct SmtpRelay {
    settings: SmtpSettings,
    target: Target,
    pools: Mutex<HashMap<String, Arc<HostPool>>>,
}

impl SmtpRelay {
    /// Checks the settings and prepares TLS; connects to nothing yet.
    pub fn new(settings: SmtpSettings, command_timeout: Duration) -> Result<Self, SmtpError> {
        if settings.host.is_empty() {
            return Err(SmtpError::Settings("email.smtp.host is empty".to_owned()));
        }
        rustls::pki_types::ServerName::try_from(settings.host.clone()).map_err(|_| {
            SmtpError::Settings(format!(
                "email.smtp.host {:?} is not a valid host name for TLS",
                settings.host
            ))
        })?;
        let tls_connector = tls_connector()?;
        let credentials = settings.username.as_ref().map(|username| {
            Credentials::new(
                username.clone(),
                settings.password.expose_secret().to_owned(),
            )
        });
        let hello = gethostname::gethostname()
            .into_string()
            .ok()
            .filter(|h| !h.is_empty() && h.is_ascii())
            .unwrap_or_else(|| "localhost".to_owned());
        let target = Target {
            host: settings.host.clone(),
            port: settings.port(),
            tls: settings.tls,
            tls_connector,
            credentials,
            hello,
            connect_timeout: settings.connect_timeout,
            command_timeout,
            pipelining: settings.pipelining,
        };
        Ok(Self {
            settings,
            target,
            pools: Mutex::new(HashMap::new()),
        })
    }

    /// The pool of the relay host, created on first use.
    fn pool(&self) -> Arc<HostPool> {
        let key = format!("{}:{}", self.settings.host, self.settings.port());
        let mut pools = self.pools.lock().unwrap_or_else(PoisonError::into_inner);
        pools
            .entry(key.clone())
            .or_insert_with(|| {
                Arc::new(HostPool::new(
                    self.target.clone(),
                    self.settings.pool_max_size as usize,
                    self.settings.idle_timeout,
                    crate::metrics::pool(&key),
                ))
            })
            .clone()
    }

    /// Delivers `body` from `from` to `to`. Not bounded in time here: the
    /// caller's deadline cancels it, and a cancelled send drops its
    /// connection rather than return it to the pool.
    pub async fn send(&self, from: &str, to: &[String], body: &[u8]) -> Result<(), SmtpError> {
        self.pool().send(from, to, body).await
    }

    /// Closes the pooled connections politely (QUIT); for shutdown.
    pub async fn close(&self) {
        let pools: Vec<Arc<HostPool>> = self
            .pools
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        for pool in pools {
            pool.close().await;
        }
    }
}

impl std::fmt::Debug for SmtpRelay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpRelay")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// rustls with ring and the system's trusted roots (`SSL_CERT_FILE` and
/// `SSL_CERT_DIR` are honoured), as lettre was set up before.
fn tls_connector() -> Result<TlsConnector, SmtpError> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        // A certificate the store cannot parse is skipped, as lettre did.
        let _ = roots.add(cert);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| SmtpError::Settings(format!("TLS set-up failed: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}
