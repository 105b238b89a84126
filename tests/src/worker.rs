//! A real worker process under test: built by cargo, started with its
//! settings in the environment, its JSON log lines collected, and stopped
//! the ways production stops it (SIGTERM) or the ways it dies (SIGKILL).

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::Notify;

/// Builds a binary of the workspace once per test process and returns its
/// path. Asking cargo (rather than guessing `target/debug/...`) keeps the
/// binary fresh and honours `CARGO_TARGET_DIR`.
pub fn binary(package: &str, bin: &str) -> anyhow::Result<PathBuf> {
    static BUILT: OnceLock<Mutex<Vec<(String, PathBuf)>>> = OnceLock::new();
    let built = BUILT.get_or_init(|| Mutex::new(Vec::new()));
    let mut built = built.lock().map_err(|_| anyhow!("poisoned"))?;
    if let Some((_, path)) = built.iter().find(|(name, _)| name == bin) {
        return Ok(path.clone());
    }
    // A prebuilt binary directory, for running tests against binaries
    // built elsewhere (or while another crate of the workspace is broken).
    if let Some(dir) = std::env::var_os("TEST_BIN_DIR") {
        let path = PathBuf::from(dir).join(bin);
        built.push((bin.to_owned(), path.clone()));
        return Ok(path);
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let output = std::process::Command::new(cargo)
        // The targets `cargo test --workspace` builds (not the benches, which
        // would compile everything again in release mode), so features
        // unify the same way and nothing is rebuilt between the two.
        .args([
            "build",
            "--quiet",
            "--message-format=json",
            "--workspace",
            "--lib",
            "--bins",
            "--tests",
            "--examples",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stderr(Stdio::inherit())
        .output()
        .context("could not run cargo build")?;
    if !output.status.success() {
        bail!("cargo build --workspace failed (wanted {package}'s {bin})");
    }
    let path = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| {
            m["reason"] == "compiler-artifact"
                && m["target"]["name"] == bin
                && m["target"]["kind"][0] == "bin"
                && m["profile"]["test"] == false
        })
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .with_context(|| format!("cargo did not report an executable for {bin}"))?;
    built.push((bin.to_owned(), path.clone()));
    Ok(path)
}

/// A running worker process.
pub struct WorkerProcess {
    child: Child,
    logs: Arc<Logs>,
    pub name: String,
}

#[derive(Default)]
struct Logs {
    lines: Mutex<Vec<serde_json::Value>>,
    /// Every line of stdout and stderr as written, JSON or not.
    raw: Mutex<Vec<String>>,
    /// Output streams read to their end (2 once the process closed both).
    closed: std::sync::atomic::AtomicUsize,
    changed: Notify,
}

impl WorkerProcess {
    /// Starts the email worker with `env` (`WARREN_...` settings). Inherited
    /// `WARREN_*` variables are removed so the test alone decides.
    pub async fn email(env: &[(&str, String)]) -> anyhow::Result<Self> {
        let path = binary("email-worker", "email-worker")?;
        Self::start(path, "email-worker", env).await
    }

    pub async fn start(path: PathBuf, name: &str, env: &[(&str, String)]) -> anyhow::Result<Self> {
        let mut cmd = Command::new(&path);
        for (key, _) in std::env::vars() {
            if key.starts_with("WARREN_") {
                cmd.env_remove(key);
            }
        }
        cmd.env("WARREN_TELEMETRY__LOG_FORMAT", "json")
            .env("RUST_LOG", "info,warren=debug")
            .env("WARREN_CONFIG", "/nonexistent/warren.toml")
            .env(
                "WARREN_BROKER__DELAY_CASCADE",
                crate::broker::TEST_DELAY_CASCADE,
            );
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("could not start {}", path.display()))?;
        let logs = Arc::new(Logs::default());
        let echo = std::env::var_os("TEST_WORKER_LOGS").is_some();
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
        ]
        .into_iter()
        .flatten()
        {
            let logs = logs.clone();
            let tag = name.to_owned();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stream).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if echo {
                        eprintln!("[{tag}] {line}");
                    }
                    let value = serde_json::from_str(&line)
                        .unwrap_or_else(|_| serde_json::json!({ "raw": line }));
                    if let Ok(mut l) = logs.lines.lock() {
                        l.push(value);
                    }
                    if let Ok(mut r) = logs.raw.lock() {
                        r.push(line);
                    }
                    logs.changed.notify_waiters();
                }
                logs.closed
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                logs.changed.notify_waiters();
            });
        }
        Ok(Self {
            child,
            logs,
            name: name.to_owned(),
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Log lines so far, parsed as JSON (non-JSON lines under `raw`).
    pub fn logs(&self) -> Vec<serde_json::Value> {
        self.logs
            .lines
            .lock()
            .map(|l| l.clone())
            .unwrap_or_default()
    }

    /// Every line of its output as written (JSON or not), to keep as a
    /// test artefact.
    pub fn raw_output(&self) -> Vec<String> {
        self.logs.raw.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// Log lines whose message is `message`.
    pub fn logs_with_message(&self, message: &str) -> Vec<serde_json::Value> {
        self.logs()
            .into_iter()
            .filter(|l| l["fields"]["message"] == message)
            .collect()
    }

    /// Waits until `count` log lines have the message `message`.
    pub async fn wait_for_log(
        &self,
        message: &str,
        count: usize,
        timeout: Duration,
    ) -> anyhow::Result<Vec<serde_json::Value>> {
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.logs.changed.notified();
            let found = self.logs_with_message(message);
            if found.len() >= count {
                return Ok(found);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!(
                    "{}: saw {} of {count} '{message}' log lines within {timeout:?}; last lines:\n{}",
                    self.name,
                    found.len(),
                    self.tail(30)
                );
            }
            let _ = tokio::time::timeout(left.min(Duration::from_millis(200)), notified).await;
        }
    }

    /// Waits until a log line has the message `message` (`Some` of the
    /// lines) or the process exits (`None`), whichever comes first. A line
    /// that is not JSON (pretty logs) counts when it contains `message`.
    pub async fn wait_for_log_or_exit(
        &mut self,
        message: &str,
        timeout: Duration,
    ) -> anyhow::Result<Option<Vec<serde_json::Value>>> {
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.logs.changed.notified();
            let found: Vec<_> = self
                .logs()
                .into_iter()
                .filter(|l| {
                    l["fields"]["message"] == message
                        || l["raw"].as_str().is_some_and(|raw| raw.contains(message))
                })
                .collect();
            if !found.is_empty() {
                return Ok(Some(found));
            }
            if self.child.try_wait()?.is_some() {
                return Ok(None);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!(
                    "{}: neither a '{message}' log line nor an exit within {timeout:?}; last lines:\n{}",
                    self.name,
                    self.tail(30)
                );
            }
            // The exit itself notifies nobody: look again now and then.
            let _ = tokio::time::timeout(left.min(Duration::from_millis(100)), notified).await;
        }
    }

    /// Everything the process wrote to stdout and stderr, once it has
    /// exited and both streams are read to their end.
    pub async fn all_output(&mut self, timeout: Duration) -> anyhow::Result<Vec<String>> {
        self.wait_exit(timeout).await?;
        let deadline = Instant::now() + timeout;
        while self.logs.closed.load(std::sync::atomic::Ordering::SeqCst) < 2 {
            let notified = self.logs.changed.notified();
            if self.logs.closed.load(std::sync::atomic::Ordering::SeqCst) >= 2 {
                break;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("{}: its output did not end within {timeout:?}", self.name);
            }
            let _ = tokio::time::timeout(left, notified).await;
        }
        Ok(self.logs.raw.lock().map(|r| r.clone()).unwrap_or_default())
    }

    /// The ops endpoint's address, from the worker's start-up log line.
    pub async fn ops_addr(&self) -> anyhow::Result<std::net::SocketAddr> {
        let lines = self
            .wait_for_log(
                "Serving /metrics, /healthz and /readyz.",
                1,
                Duration::from_secs(30),
            )
            .await?;
        let addr = lines[0]["fields"]["addr"]
            .as_str()
            .context("the ops log line has no addr")?;
        Ok(addr.parse()?)
    }

    /// Waits until the worker consumes.
    pub async fn wait_ready(&self) -> anyhow::Result<()> {
        self.wait_for_log("Consuming.", 1, Duration::from_secs(30))
            .await
            .map(|_| ())
    }

    /// The last `n` log lines, for failure messages.
    pub fn tail(&self, n: usize) -> String {
        let logs = self.logs();
        logs[logs.len().saturating_sub(n)..]
            .iter()
            .map(|l| l.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Sends a signal by name (`TERM`, `KILL`, ...).
    pub fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let pid = self.pid().context("the worker has already exited")?;
        let status = std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()?;
        if !status.success() {
            bail!("kill -{signal} {pid} failed");
        }
        Ok(())
    }

    /// Waits for the process to exit.
    pub async fn wait_exit(
        &mut self,
        timeout: Duration,
    ) -> anyhow::Result<std::process::ExitStatus> {
        tokio::time::timeout(timeout, self.child.wait())
            .await
            .with_context(|| {
                format!(
                    "{} did not exit within {timeout:?}; last lines:\n{}",
                    self.name,
                    self.tail(20)
                )
            })?
            .map_err(Into::into)
    }
}

/// The settings of an email worker in namespace `namespace`, sending to the
/// SMTP sink on `smtp_port` without TLS, with a short retry ladder.
pub fn email_env(namespace: &str, smtp_port: u16) -> Vec<(&'static str, String)> {
    vec![
        ("WARREN_BROKER__NAMESPACE", namespace.to_owned()),
        ("WARREN_EMAIL__TRANSPORT", "smtp".to_owned()),
        ("WARREN_EMAIL__SMTP__HOST", "127.0.0.1".to_owned()),
        ("WARREN_EMAIL__SMTP__PORT", smtp_port.to_string()),
        ("WARREN_EMAIL__SMTP__TLS", "none".to_owned()),
        (
            "WARREN_EMAIL__DEFAULT_FROM",
            "Warren Tests <tests@warren.test>".to_owned(),
        ),
        (
            "WARREN_EMAIL__TEMPLATES_DIR",
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../services/email-worker/templates"
            )
            .to_owned(),
        ),
        (
            "WARREN_CONSUMER__RETRY_DELAYS",
            r#"["200ms","300ms"]"#.to_owned(),
        ),
        ("WARREN_CONSUMER__SHUTDOWN_TIMEOUT", "10s".to_owned()),
        // Any free port: tests run many workers side by side.
        ("WARREN_OPS__ADDR", "127.0.0.1:0".to_owned()),
    ]
}

/// `env` with `overrides` replacing or adding keys.
pub fn with(
    mut env: Vec<(&'static str, String)>,
    overrides: &[(&'static str, &str)],
) -> Vec<(&'static str, String)> {
    for (k, v) in overrides {
        env.retain(|(key, _)| key != k);
        env.push((k, (*v).to_owned()));
    }
    env
}

impl WorkerProcess {
    /// Starts the image worker with `env` (see [`image_env`]).
    pub async fn image(env: &[(&str, String)]) -> anyhow::Result<Self> {
        let path = binary("image-worker", "image-worker")?;
        Self::start(path, "image-worker", env).await
    }
}

/// The settings of an image worker in namespace `namespace`, with its local
/// store rooted at `store_root`, two image threads and a short retry ladder.
pub fn image_env(namespace: &str, store_root: &std::path::Path) -> Vec<(&'static str, String)> {
    vec![
        ("WARREN_BROKER__NAMESPACE", namespace.to_owned()),
        ("WARREN_IMAGE__STORE", "local".to_owned()),
        ("WARREN_IMAGE__LOCAL_ROOT", store_root.display().to_string()),
        ("WARREN_IMAGE__THREADS", "2".to_owned()),
        // Any free port: tests run many workers side by side.
        ("WARREN_OPS__ADDR", "127.0.0.1:0".to_owned()),
        (
            "WARREN_CONSUMER__RETRY_DELAYS",
            r#"["200ms","300ms"]"#.to_owned(),
        ),
        ("WARREN_CONSUMER__SHUTDOWN_TIMEOUT", "10s".to_owned()),
    ]
}

impl WorkerProcess {
    /// Starts the gateway with `env` (see [`gateway_env`]).
    pub async fn gateway(env: &[(&str, String)]) -> anyhow::Result<Self> {
        let path = binary("gateway", "gateway")?;
        Self::start(path, "gateway", env).await
    }

    /// The gateway's HTTP API address, from its start-up log line.
    pub async fn http_addr(&self) -> anyhow::Result<std::net::SocketAddr> {
        let lines = self
            .wait_for_log("Serving the HTTP API.", 1, Duration::from_secs(30))
            .await?;
        let addr = lines[0]["fields"]["addr"]
            .as_str()
            .context("the HTTP API log line has no addr")?;
        Ok(addr.parse()?)
    }

    /// Waits until the gateway has read the events stream up to now (it is
    /// ready from then on).
    pub async fn wait_caught_up(&self) -> anyhow::Result<()> {
        self.wait_for_log(
            "Caught up with the task events.",
            1,
            Duration::from_secs(30),
        )
        .await
        .map(|_| ())
    }
}

/// The settings of a gateway in namespace `namespace`: any free ports, the
/// image store at `store_root` (the image worker's), and the workers'
/// short test ladder of [`email_env`] and [`image_env`] for delays.
pub fn gateway_env(namespace: &str, store_root: &std::path::Path) -> Vec<(&'static str, String)> {
    vec![
        ("WARREN_BROKER__NAMESPACE", namespace.to_owned()),
        ("WARREN_HTTP__ADDR", "127.0.0.1:0".to_owned()),
        ("WARREN_OPS__ADDR", "127.0.0.1:0".to_owned()),
        ("WARREN_IMAGE__STORE", "local".to_owned()),
        ("WARREN_IMAGE__LOCAL_ROOT", store_root.display().to_string()),
        (
            "WARREN_TASKS__RETRY_DELAYS",
            r#"["200ms","300ms"]"#.to_owned(),
        ),
        // Short enough for tests to see an unknown task's 404.
        ("WARREN_EVENTS__UNKNOWN_WAIT", "1s".to_owned()),
        ("WARREN_EVENTS__RETENTION", "1h".to_owned()),
    ]
}

/// The stored form of a gateway API key, as `gateway hash-key` prints it
/// (the key read on standard input, never an argument): `sha256:` and 64
/// hex digits.
pub fn gateway_key_hash(key: &str) -> String {
    use std::io::Write;
    let path = binary("gateway", "gateway").expect("the gateway binary");
    let mut child = std::process::Command::new(path)
        .arg("hash-key")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("gateway hash-key starts");
    child
        .stdin
        .take()
        .expect("its stdin")
        .write_all(format!("{key}\n").as_bytes())
        .expect("the key written");
    let out = child.wait_with_output().expect("gateway hash-key ends");
    assert!(out.status.success(), "gateway hash-key failed: {out:?}");
    let hash = String::from_utf8(out.stdout)
        .expect("UTF-8")
        .trim()
        .to_owned();
    assert!(hash.starts_with("sha256:") && hash.len() == 71, "{hash}");
    hash
}
