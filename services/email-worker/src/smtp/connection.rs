//! One SMTP connection: connect (TCP with `TCP_NODELAY`), TLS (implicit or
//! STARTTLS), EHLO, AUTH, then mail transactions, pipelined when the server
//! offers `PIPELINING` (RFC 2920).
//!
//! The protocol pieces (reply parsing, EHLO capabilities, AUTH mechanisms,
//! dot-stuffing, pipelined command groups) come from `mail-send`; this
//! module decides what to write when, and what a failure means for the
//! message and for the connection.

use std::sync::Arc;
use std::time::{Duration, Instant};

use mail_send::{Credentials, SmtpClient};
use smtp_proto::{EXT_8BIT_MIME, EXT_PIPELINING, EXT_SMTP_UTF8, EXT_START_TLS, EhloResponse};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::SmtpError;
use super::stream::Stream;
use crate::settings::SmtpTls;

/// Where and how to connect: built once from the settings, shared by every
/// connection to that host.
#[derive(Clone)]
pub(crate) struct Target {
    pub host: String,
    pub port: u16,
    pub tls: SmtpTls,
    pub tls_connector: TlsConnector,
    pub credentials: Option<Credentials<String>>,
    /// Our name in EHLO.
    pub hello: String,
    /// Bounds connect, TLS, greeting, EHLO and AUTH together.
    pub connect_timeout: Duration,
    /// Bounds each command group and the DATA payload.
    pub command_timeout: Duration,
    /// Pipeline when the server offers it.
    pub pipelining: bool,
}

/// An open, authenticated connection, ready for a mail transaction.
pub(crate) struct Connection {
    client: SmtpClient<Stream>,
    capabilities: u32,
    pipelining: bool,
    /// Set after the first transaction: the next one starts with RSET.
    used: bool,
    pub(crate) idle_since: Instant,
    /// Dropped with the connection: keeps the pool's count of open
    /// connections right however the connection ends.
    _open: Arc<dyn Send + Sync>,
}

/// Why a transaction failed, and what that leaves behind.
#[derive(Debug)]
pub(crate) struct Failure {
    pub error: SmtpError,
    /// The end of the DATA payload may have reached the server, which may
    /// then have accepted the message: sending it again here could deliver
    /// it twice.
    pub maybe_delivered: bool,
    /// The connection is still in step with the server and may be reused.
    pub usable: bool,
}

impl Failure {
    fn broken(error: SmtpError) -> Self {
        Self {
            error,
            maybe_delivered: false,
            usable: false,
        }
    }

    /// A definite reply: the server is in step unless it is closing (421).
    fn reply(error: SmtpError) -> Self {
        let usable = !error.is_service_closing();
        Self {
            error,
            maybe_delivered: false,
            usable,
        }
    }
}

impl Connection {
    /// Opens a connection to `target`, within its connect timeout.
    /// `open_guard` is kept as long as the connection lives.
    pub(crate) async fn open(
        target: &Target,
        open_guard: Arc<dyn Send + Sync>,
    ) -> Result<Self, SmtpError> {
        match tokio::time::timeout(target.connect_timeout, Self::open_inner(target)).await {
            Ok(Ok((client, ehlo))) => {
                let pipelining = target.pipelining && ehlo.has_capability(EXT_PIPELINING);
                Ok(Self {
                    client,
                    capabilities: ehlo.capabilities,
                    pipelining,
                    used: false,
                    idle_since: Instant::now(),
                    _open: open_guard,
                })
            }
            Ok(Err(error)) => Err(error),
            Err(_elapsed) => Err(SmtpError::ConnectTimeout(target.connect_timeout)),
        }
    }

    async fn open_inner(
        target: &Target,
    ) -> Result<(SmtpClient<Stream>, EhloResponse<String>), SmtpError> {
        let address = format!("{}:{}", target.host, target.port);
        let tcp = TcpStream::connect((target.host.as_str(), target.port))
            .await
            .map_err(|source| SmtpError::Connect {
                address: address.clone(),
                source,
            })?;
        tcp.set_nodelay(true)
            .map_err(|source| SmtpError::Connect { address, source })?;
        let mut plain = SmtpClient {
            stream: tcp,
            timeout: target.command_timeout,
        };
        let mut client = match target.tls {
            SmtpTls::Implicit => {
                let tls = plain
                    .into_tls(&target.tls_connector, &target.host)
                    .await
                    .map_err(|e| SmtpError::from_protocol("TLS handshake", e))?;
                let mut client = SmtpClient {
                    stream: Stream::tls(tls.stream),
                    timeout: target.command_timeout,
                };
                greeting(&mut client).await?;
                client
            }
            SmtpTls::Starttls => {
                greeting(&mut plain).await?;
                let ehlo = plain
                    .ehlo(&target.hello)
                    .await
                    .map_err(|e| SmtpError::from_protocol("EHLO", e))?;
                if !ehlo.has_capability(EXT_START_TLS) {
                    return Err(SmtpError::from_protocol(
                        "EHLO",
                        mail_send::Error::MissingStartTls,
                    ));
                }
                let tls = plain
                    .start_tls(&target.tls_connector, &target.host)
                    .await
                    .map_err(|e| SmtpError::from_protocol("STARTTLS", e))?;
                SmtpClient {
                    stream: Stream::tls(tls.stream),
                    timeout: target.command_timeout,
                }
            }
            SmtpTls::None => {
                greeting(&mut plain).await?;
                SmtpClient {
                    stream: Stream::plain(plain.stream),
                    timeout: target.command_timeout,
                }
            }
        };
        let ehlo = client
            .ehlo(&target.hello)
            .await
            .map_err(|e| SmtpError::from_protocol("EHLO", e))?;
        if let Some(credentials) = &target.credentials {
            client
                .authenticate(credentials, &ehlo)
                .await
                .map_err(|e| SmtpError::from_protocol("AUTH", e))?;
        }
        Ok((client, ehlo))
    }

    /// One mail transaction: (RSET,) MAIL, RCPT per recipient, DATA, the
    /// payload. With pipelining the commands go out as one write and their
    /// replies are read together; the payload and its terminator are a
    /// second write. Without it, each command waits for its reply.
    pub(crate) async fn send(
        &mut self,
        from: &str,
        to: &[String],
        body: &[u8],
    ) -> Result<(), Failure> {
        let mut params = String::new();
        if self.capabilities & EXT_8BIT_MIME != 0 {
            params.push_str(" BODY=8BITMIME");
        }
        let non_ascii = !from.is_ascii() || to.iter().any(|r| !r.is_ascii());
        if non_ascii && self.capabilities & EXT_SMTP_UTF8 != 0 {
            params.push_str(" SMTPUTF8");
        }
        let mut names: Vec<&'static str> = Vec::with_capacity(to.len() + 3);
        let mut lines: Vec<String> = Vec::with_capacity(to.len() + 3);
        if self.used {
            names.push("RSET");
            lines.push("RSET\r\n".to_owned());
        }
        self.used = true;
        names.push("MAIL");
        lines.push(format!("MAIL FROM:<{from}>{params}\r\n"));
        for rcpt in to {
            names.push("RCPT");
            lines.push(format!("RCPT TO:<{rcpt}>\r\n"));
        }
        names.push("DATA");
        lines.push("DATA\r\n".to_owned());

        if self.pipelining {
            self.envelope_pipelined(&names, &lines).await?;
        } else {
            self.envelope_in_step(&names, &lines).await?;
        }
        self.payload(body).await
    }

    async fn envelope_pipelined(
        &mut self,
        names: &[&'static str],
        lines: &[String],
    ) -> Result<(), Failure> {
        let replies = self
            .client
            .cmds(lines)
            .await
            .map_err(|e| Failure::broken(SmtpError::from_protocol("MAIL", e)))?;
        let mut first_refusal = None;
        for (name, reply) in names.iter().zip(&replies) {
            let expected = if *name == "DATA" { 354 } else { 250 };
            let ok = if *name == "DATA" {
                reply.code() == expected
            } else {
                reply.is_positive_completion()
            };
            if ok {
                continue;
            }
            if *name == "DATA" && first_refusal.is_none() {
                return Err(Failure::reply(SmtpError::reply(name, reply)));
            }
            first_refusal.get_or_insert_with(|| SmtpError::reply(name, reply));
        }
        match first_refusal {
            None => Ok(()),
            Some(error) => {
                let data_open = replies.last().is_some_and(|r| r.code() == 354);
                // The server opened DATA although a command before it
                // failed: only closing the connection ends that without
                // delivering something.
                Err(Failure {
                    usable: !data_open && !error.is_service_closing(),
                    error,
                    maybe_delivered: false,
                })
            }
        }
    }

    async fn envelope_in_step(
        &mut self,
        names: &[&'static str],
        lines: &[String],
    ) -> Result<(), Failure> {
        for (name, line) in names.iter().zip(lines) {
            let reply = self
                .client
                .cmd(line)
                .await
                .map_err(|e| Failure::broken(SmtpError::from_protocol(name, e)))?;
            let ok = if *name == "DATA" {
                reply.code() == 354
            } else {
                reply.is_positive_completion()
            };
            if !ok {
                return Err(Failure::reply(SmtpError::reply(name, &reply)));
            }
        }
        Ok(())
    }

    /// Writes the dot-stuffed payload and `<CR><LF>.<CR><LF>`, flushes
    /// once, and reads the verdict.
    async fn payload(&mut self, body: &[u8]) -> Result<(), Failure> {
        let timeout = self.client.timeout;
        match tokio::time::timeout(timeout, self.client.write_message(body)).await {
            Ok(Ok(())) => {}
            // The terminator is the last thing written: a failed write
            // means the server cannot have taken the message.
            Ok(Err(e)) => {
                return Err(Failure::broken(SmtpError::from_protocol(
                    "DATA",
                    mail_send::Error::Io(e),
                )));
            }
            Err(_) => {
                return Err(Failure::broken(SmtpError::from_protocol(
                    "DATA",
                    mail_send::Error::Timeout,
                )));
            }
        }
        let reply = match tokio::time::timeout(timeout, self.client.read()).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(e)) => {
                return Err(Failure {
                    maybe_delivered: true,
                    ..Failure::broken(SmtpError::from_protocol("end of DATA", e))
                });
            }
            Err(_) => {
                return Err(Failure {
                    maybe_delivered: true,
                    ..Failure::broken(SmtpError::from_protocol(
                        "end of DATA",
                        mail_send::Error::Timeout,
                    ))
                });
            }
        };
        if reply.is_positive_completion() {
            self.idle_since = Instant::now();
            Ok(())
        } else {
            Err(Failure::reply(SmtpError::reply("end of DATA", &reply)))
        }
    }

    /// Says goodbye; best effort, for shutdown.
    pub(crate) async fn quit(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), self.client.cmd(b"QUIT\r\n")).await;
    }
}

/// Reads the server's greeting: 220, or a refusal such as 421 (too many
/// connections).
async fn greeting<T>(client: &mut SmtpClient<T>) -> Result<(), SmtpError>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let timeout = client.timeout;
    let reply = tokio::time::timeout(timeout, client.read())
        .await
        .map_err(|_| SmtpError::from_protocol("greeting", mail_send::Error::Timeout))?
        .map_err(|e| SmtpError::from_protocol("greeting", e))?;
    if reply.is_positive_completion() {
        Ok(())
    } else {
        Err(SmtpError::reply("greeting", &reply))
    }
}
