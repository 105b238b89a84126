//! The `warren` CLI under test: the real binary, run as a process with its
//! settings in the environment (inherited `WARREN_*` variables removed so
//! the test alone decides), its exit status, stdout and stderr collected.

use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use tokio::io::AsyncWriteExt;
use tokio::process::{Child, Command};

/// What a finished `warren` run left.
#[derive(Debug)]
pub struct CliRun {
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
}

impl CliRun {
    /// Stdout as JSON (for `--json` runs).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:?}"))
    }
}

/// `warren` with `env` and `args`, not started yet.
pub fn command(env: &[(&str, String)], args: &[&str]) -> anyhow::Result<Command> {
    let path = crate::worker::binary("warren-cli", "warren")?;
    let mut cmd = Command::new(path);
    for (key, _) in std::env::vars() {
        if key.starts_with("WARREN_") {
            cmd.env_remove(key);
        }
    }
    // The tests' shared delay cascade, as the workers under test have it.
    cmd.env("WARREN_CONFIG", "/nonexistent/warren.toml").env(
        "WARREN_BROKER__DELAY_CASCADE",
        crate::broker::TEST_DELAY_CASCADE,
    );
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    Ok(cmd)
}

/// Starts `warren` (for tests that kill it).
pub fn spawn(env: &[(&str, String)], args: &[&str]) -> anyhow::Result<Child> {
    command(env, args)?
        .spawn()
        .context("could not start warren")
}

/// Runs `warren` to its end, `stdin` written to it, within a minute.
pub async fn run(env: &[(&str, String)], args: &[&str], stdin: &str) -> anyhow::Result<CliRun> {
    let mut child = spawn(env, args)?;
    if let Some(mut input) = child.stdin.take() {
        input.write_all(stdin.as_bytes()).await?;
        drop(input);
    }
    let output = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .with_context(|| format!("warren {args:?} did not finish within 60 s"))??;
    Ok(CliRun {
        status: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    })
}
