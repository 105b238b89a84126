//! Warren's examples, as a team replacing Celery would write them: two
//! task types of their own and their handlers. `src/bin/custom-worker.rs`
//! runs them; `src/bin/producer.rs` publishes them. See
//! `docs/writing-a-worker.md`, which walks through this code.
//!
//! - `files.cleanup` ([`CleanupOldFiles`], [`cleanup_old_files`]): delete
//!   the files older than N days under a directory of the worker's root,
//!   refusing any path that leaves the root.
//! - `digest.weekly` ([`SendWeeklyDigest`], [`send_weekly_digest`]):
//!   publish one `email.send` follow-up per recipient, for the email
//!   worker to deliver.

#![warn(missing_docs)]

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use warren::prelude::*;
use warren_tasks::email::SendEmail;

pub mod pipeline;

/// `files.cleanup`: delete the files under `dir` (relative to the
/// worker's root) last modified more than `older_than_days` days ago.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CleanupOldFiles {
    /// A directory under the worker's root, e.g. `uploads/tmp`.
    pub dir: String,
    /// Files older than this many days go.
    pub older_than_days: u32,
}

impl Task for CleanupOldFiles {
    const TYPE: &'static str = "files.cleanup";
    // Disk work: a few at a time, and never longer than a minute.
    const OPTIONS: TaskOptions = TaskOptions::new()
        .concurrency(2)
        .time_limit(Duration::from_secs(60));
}

/// The directory `files.cleanup` may touch, and nothing outside it.
#[derive(Debug, Clone)]
pub struct CleanupRoot(PathBuf);

impl CleanupRoot {
    /// The root, resolved once (symbolic links included).
    pub fn new(root: impl AsRef<Path>) -> std::io::Result<Self> {
        Ok(Self(root.as_ref().canonicalize()?))
    }

    /// `dir` under the root, or a permanent `path_outside_root` error for
    /// an absolute path, a `..`, or a link that leads out.
    pub fn resolve(&self, dir: &str) -> Result<PathBuf, TaskError> {
        let outside = || {
            TaskError::permanent(
                "path_outside_root",
                format!("{dir:?} is not a directory under the cleanup root"),
            )
        };
        let relative = Path::new(dir);
        if relative
            .components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
        {
            return Err(outside());
        }
        let path = self.0.join(relative).canonicalize().map_err(|e| {
            TaskError::permanent("dir_not_found", format!("{dir:?} cannot be read: {e}"))
        })?;
        if !path.starts_with(&self.0) {
            return Err(outside());
        }
        Ok(path)
    }
}

/// Deletes the old files under the task's directory (recursively, never
/// following links) and reports how many went and how many stayed.
pub async fn cleanup_old_files(
    _ctx: TaskContext,
    task: CleanupOldFiles,
    root: Arc<CleanupRoot>,
) -> Result<Outcome, TaskError> {
    let dir = root.resolve(&task.dir)?;
    let max_age = Duration::from_secs(u64::from(task.older_than_days) * 24 * 3600);
    let (deleted, kept) = tokio::task::spawn_blocking(move || delete_older_than(&dir, max_age))
        .await
        .map_err(|e| TaskError::retry("cancelled", e))?
        .map_err(|e| TaskError::retry("io", e))?;
    Ok(Outcome::with_result(
        serde_json::json!({ "deleted": deleted, "kept": kept }),
    ))
}

fn delete_older_than(dir: &Path, max_age: Duration) -> std::io::Result<(u64, u64)> {
    let now = SystemTime::now();
    let (mut deleted, mut kept) = (0, 0);
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            let (d, k) = delete_older_than(&entry.path(), max_age)?;
            (deleted, kept) = (deleted + d, kept + k);
        } else if kind.is_file() {
            let age = now
                .duration_since(entry.metadata()?.modified()?)
                .unwrap_or_default();
            if age > max_age {
                std::fs::remove_file(entry.path())?;
                deleted += 1;
            } else {
                kept += 1;
            }
        }
    }
    Ok((deleted, kept))
}

/// `digest.weekly`: email this week's digest to each recipient.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendWeeklyDigest {
    /// The week, e.g. `2026-W48`.
    pub week: String,
    /// Who gets it.
    pub recipients: Vec<String>,
}

impl Task for SendWeeklyDigest {
    const TYPE: &'static str = "digest.weekly";
}

/// Publishes one `email.send` follow-up per recipient. Each gets the id
/// `{digest id}-{n}`, so a retried digest publishes the same ids again and
/// the email worker's idempotency store sends each mail once.
pub async fn send_weekly_digest(
    ctx: TaskContext,
    digest: SendWeeklyDigest,
) -> Result<Outcome, TaskError> {
    let mut ids = Vec::new();
    for (n, to) in digest.recipients.iter().enumerate() {
        let email = SendEmail {
            to: vec![to.clone()],
            subject: Some(format!("Your digest for {}", digest.week)),
            text: Some(format!("Here is what happened in {}.", digest.week)),
            ..SendEmail::default()
        };
        ids.push(
            ctx.publish_with_id(&email, format!("{}-{n}", ctx.id))
                .await?,
        );
        ctx.progress((n + 1) as f64 / digest.recipients.len() as f64, None);
    }
    Ok(Outcome::with_result(serde_json::json!({ "emails": ids })))
}

#[cfg(test)]
// A failing unwrap is how a test reports failure.
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn paths_that_leave_the_root_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("tmp")).unwrap();
        let root = CleanupRoot::new(dir.path()).unwrap();
        assert!(root.resolve("tmp").is_ok());
        for bad in ["../", "/etc", "tmp/../..", ".."] {
            let e = root.resolve(bad).unwrap_err();
            assert_eq!(e.kind, "path_outside_root", "{bad}");
            assert!(e.is_permanent());
        }
    }
}

/// `docs/writing-a-worker.md`: its Rust blocks run as doctests, so the
/// guide cannot drift from the API.
#[doc = include_str!("../../docs/writing-a-worker.md")]
#[cfg(doctest)]
pub struct WritingAWorkerGuide;
