//! A TLS-capable SMTP server with AUTH for integration tests:
//! `tests/smtp_wire_server.py` (aiosmtpd) with `--tls` and `--auth`, run as a
//! child process on a free port, its JSON events collected as they arrive;
//! killed on drop. And [`TestCa`]: a certificate authority and a
//! `localhost` server certificate it signed, generated with `openssl` in a
//! temporary directory.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::Notify;

/// A CA and a server certificate for `localhost` it signed.
pub struct TestCa {
    dir: tempfile::TempDir,
}

impl TestCa {
    pub fn generate() -> anyhow::Result<Self> {
        Self::generate_named("Warren Test CA")
    }

    /// A CA whose subject is `CN=<name>` (two CAs of different names: one
    /// signed the server's certificate, the client trusts the other).
    pub fn generate_named(name: &str) -> anyhow::Result<Self> {
        let subject = format!("/CN={name}");
        let dir = tempfile::tempdir()?;
        let d = dir.path();
        openssl(
            d,
            &[
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", &subject,
                "-keyout", "ca.key", "-out", "ca.pem",
            ],
        )?;
        openssl(
            d,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                "/CN=localhost",
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
            ],
        )?;
        // A server's certificate, not a CA's: webpki refuses a CA
        // certificate as the server's own.
        std::fs::write(
            d.join("server.ext"),
            "subjectAltName=DNS:localhost\nbasicConstraints=critical,CA:FALSE\n\
             extendedKeyUsage=serverAuth\n",
        )?;
        openssl(
            d,
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "1",
                "-extfile",
                "server.ext",
                "-out",
                "server.pem",
            ],
        )?;
        Ok(Self { dir })
    }

    /// The CA certificate, what a client trusts (`SSL_CERT_FILE`).
    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    pub fn server_cert(&self) -> PathBuf {
        self.dir.path().join("server.pem")
    }

    pub fn server_key(&self) -> PathBuf {
        self.dir.path().join("server.key")
    }
}

fn openssl(dir: &Path, args: &[&str]) -> anyhow::Result<()> {
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .context("openssl must be installed")?;
    if !out.status.success() {
        bail!(
            "openssl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// A running `smtp_wire_server.py`.
pub struct WireServer {
    pub port: u16,
    events: Arc<Mutex<Vec<Value>>>,
    changed: Arc<Notify>,
    _child: Child,
}

impl WireServer {
    /// Starts the server with `args` (see the script's docstring). The
    /// interpreter is `$TEST_PYTHON`, else `/usr/bin/python3`; it needs
    /// aiosmtpd.
    pub async fn start(args: &[&str]) -> anyhow::Result<Self> {
        let python = std::env::var_os("TEST_PYTHON")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/usr/bin/python3"));
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("smtp_wire_server.py");
        let mut child = Command::new(&python)
            .arg(&script)
            .args(["--port", "0"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("could not run {}", script.display()))?;
        let mut lines = BufReader::new(child.stdout.take().context("no stdout")?).lines();
        let first = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .context("the wire server did not start (does python3 have aiosmtpd?)")??
            .context("the wire server exited (does python3 have aiosmtpd?)")?;
        let ready: Value = serde_json::from_str(&first)?;
        let port = u16::try_from(ready["port"].as_u64().context("no port")?)?;
        let events = Arc::new(Mutex::new(Vec::new()));
        let changed = Arc::new(Notify::new());
        let (e, c) = (events.clone(), changed.clone());
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    if let Ok(mut events) = e.lock() {
                        events.push(v);
                    }
                    c.notify_waiters();
                }
            }
        });
        Ok(Self {
            port,
            events,
            changed,
            _child: child,
        })
    }

    /// The events of kind `kind` so far (`connection`, `auth`, `message`...).
    pub fn events(&self, kind: &str) -> Vec<Value> {
        self.events
            .lock()
            .map(|events| {
                events
                    .iter()
                    .filter(|e| e["event"] == kind)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Waits until there are `n` events of kind `kind`.
    pub async fn wait_for(
        &self,
        kind: &str,
        n: usize,
        timeout: Duration,
    ) -> anyhow::Result<Vec<Value>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.changed.notified();
            let found = self.events(kind);
            if found.len() >= n {
                return Ok(found);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                bail!("the server reported {} of {n} {kind} events", found.len());
            }
        }
    }
}
