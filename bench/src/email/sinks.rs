//! The SMTP servers of the email section, as a user would run them:
//! Postfix's `smtp-sink` (Debian's `postfix` package) and aiosmtpd (the
//! tests' `tests/smtp_sink.py`), plus Postfix's `smtp-source`, the ceiling:
//! the fastest client there is for that server at that concurrency.
//!
//! Each run gets a fresh server that says when each message was accepted:
//! `smtp-sink -c` prints its running count (`mesg=N`), the aiosmtpd sink
//! one line per message. (`smtp-sink -M N` would exit at the Nth message
//! without answering it.)

use std::path::Path;
use std::process::Stdio;

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdout, Command};
use tokio::sync::watch;

pub const SMTP_SINK: &str = "/usr/sbin/smtp-sink";
pub const SMTP_SOURCE: &str = "/usr/sbin/smtp-source";

/// Which server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Server {
    Postfix,
    Aiosmtpd,
}

impl Server {
    pub fn key(self) -> &'static str {
        match self {
            Server::Postfix => "postfix_smtp_sink",
            Server::Aiosmtpd => "aiosmtpd",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Server::Postfix => "Postfix smtp-sink",
            Server::Aiosmtpd => "aiosmtpd (tests/smtp_sink.py)",
        }
    }
}

/// A server waiting for `n` messages; killed on drop.
pub struct Sink {
    pub port: u16,
    n: usize,
    /// Messages accepted so far, and when the count last changed; `None`
    /// once the server's output ended. Read from the server's stdout all
    /// along, so the pipe never fills and stalls the server.
    accepted: watch::Receiver<Option<(usize, Instant)>>,
    _child: Child,
}

/// Checks that the Postfix tools and aiosmtpd are installed.
pub fn check_installed() -> anyhow::Result<()> {
    for tool in [SMTP_SINK, SMTP_SOURCE] {
        if !Path::new(tool).exists() {
            bail!(
                "{tool} is missing: run bench/prepare (it installs Debian's postfix, unconfigured)"
            );
        }
    }
    Ok(())
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|v| v.split_whitespace().next().map(|u| u == "0"))
        })
        .unwrap_or(false)
}

impl Sink {
    pub async fn start(server: Server, n: usize) -> anyhow::Result<Self> {
        match server {
            Server::Postfix => Self::postfix(n).await,
            Server::Aiosmtpd => Self::aiosmtpd(n).await,
        }
    }

    async fn postfix(n: usize) -> anyhow::Result<Self> {
        let port = free_port()?;
        let mut cmd = Command::new(SMTP_SINK);
        if is_root() {
            // smtp-sink refuses to run as root without a user to become.
            cmd.args(["-u", "nobody"]);
        }
        let mut child = cmd
            .arg("-c")
            .arg(format!("127.0.0.1:{port}"))
            .arg("1024")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("could not start {SMTP_SINK}"))?;
        let output = BufReader::new(child.stdout.take().context("no stdout")?);
        // It listens first thing; a probe connection is one empty session.
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            if Instant::now() > deadline {
                bail!("smtp-sink did not listen on port {port}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(Self {
            port,
            n,
            accepted: count(output, Server::Postfix),
            _child: child,
        })
    }

    async fn aiosmtpd(n: usize) -> anyhow::Result<Self> {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/smtp_sink.py");
        let mut child = Command::new("/usr/bin/python3")
            .args([script, "--port", "0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("could not start tests/smtp_sink.py with /usr/bin/python3")?;
        let mut output = BufReader::new(child.stdout.take().context("no stdout")?);
        let first = tokio::time::timeout(Duration::from_secs(20), next(&mut output, b'\n'))
            .await
            .context("the aiosmtpd sink did not start")??
            .context("the aiosmtpd sink exited (is python3-aiosmtpd installed? bench/prepare)")?;
        let ready: serde_json::Value = serde_json::from_str(&first)?;
        let port = ready["port"].as_u64().context("no port from the sink")? as u16;
        Ok(Self {
            port,
            n,
            accepted: count(output, Server::Aiosmtpd),
            _child: child,
        })
    }

    /// Waits until the server has accepted its `n` messages; returns when.
    pub async fn wait_all(&mut self, timeout: Duration) -> anyhow::Result<Instant> {
        let n = self.n;
        let accepted = &mut self.accepted;
        let waited = tokio::time::timeout(timeout, async {
            loop {
                match *accepted.borrow_and_update() {
                    Some((got, at)) if got >= n => return Ok(at),
                    Some(_) => {}
                    None => bail!("the SMTP server exited"),
                }
                if accepted.changed().await.is_err() {
                    bail!("the SMTP server's output ended");
                }
            }
        })
        .await;
        match waited {
            Ok(done) => done,
            Err(_) => bail!("the SMTP server did not get {n} messages within {timeout:?}"),
        }
    }
}

/// Follows the server's output: smtp-sink's `mesg=N` counters
/// (`\r`-separated), or aiosmtpd's JSON lines, one per message.
fn count(
    mut output: BufReader<ChildStdout>,
    server: Server,
) -> watch::Receiver<Option<(usize, Instant)>> {
    let (tx, rx) = watch::channel(Some((0, Instant::now())));

    tokio::spawn(async move {
        let delimiter = match server {
            Server::Postfix => b'\r',
            Server::Aiosmtpd => b'\n',
        };
        let mut got = 0;
        while let Ok(Some(chunk)) = next(&mut output, delimiter).await {
            let now = match server {
                // "sess=1 quit=0 mesg=42"
                Server::Postfix => chunk
                    .split_whitespace()
                    .find_map(|f| f.strip_prefix("mesg="))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(got),
                Server::Aiosmtpd if chunk.starts_with("{\"event\":\"message\"") => got + 1,
                Server::Aiosmtpd => got,
            };
            if now != got {
                got = now;
                let _ = tx.send(Some((got, Instant::now())));
            }
        }
        let _ = tx.send(None);
    });
    rx
}

/// The next `delimiter`-terminated piece of `reader`, without it; `None`
/// at the end.
async fn next(
    reader: &mut (impl AsyncBufRead + Unpin),
    delimiter: u8,
) -> anyhow::Result<Option<String>> {
    let mut buf = Vec::new();
    if reader.read_until(delimiter, &mut buf).await? == 0 {
        return Ok(None);
    }
    if buf.last() == Some(&delimiter) {
        buf.pop();
    }
    Ok(Some(String::from_utf8_lossy(&buf).into_owned()))
}

/// Runs Postfix's `smtp-source` into `port`: `n` messages of `size` bytes
/// over `sessions` parallel sessions, one connection per message, or with
/// `reuse` several messages per connection (`-d`). Returns the elapsed time.
pub async fn smtp_source(
    port: u16,
    n: usize,
    sessions: usize,
    size: usize,
    reuse: bool,
) -> anyhow::Result<Duration> {
    let mut cmd = Command::new(SMTP_SOURCE);
    cmd.args(["-s", &sessions.to_string()])
        .args(["-m", &n.to_string()])
        .args(["-l", &size.to_string()])
        .args(["-f", "bench@warren.test", "-t", "rcpt@warren.test"]);
    if reuse {
        cmd.arg("-d");
    }
    let start = Instant::now();
    let out = cmd
        .arg(format!("127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .with_context(|| format!("could not run {SMTP_SOURCE}"))?;
    let elapsed = start.elapsed();
    if !out.status.success() {
        bail!(
            "smtp-source failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(elapsed)
}
