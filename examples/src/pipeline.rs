//! The seed's multi-step workflow, validate → process → save, as three
//! task types on one queue (`{ns}.pipeline`), run as a chain
//! (`docs/workflows.md`). Each step's result is the next step's input:
//! `pipeline.process` takes the validated record in its `input` field,
//! `pipeline.save` the processed one in `processed`.

use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use warren::prelude::*;

/// A record travelling through the pipeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    /// The record's id; also the saved file's name.
    pub id: String,
    /// Its value.
    pub value: i64,
}

/// `pipeline.validate`: checks a record (ids of `[A-Za-z0-9_-]`, a value
/// of zero or more) and returns it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Validate {
    /// The record to check.
    pub record: Record,
}

impl Task for Validate {
    const TYPE: &'static str = "pipeline.validate";
}

/// `pipeline.process`: multiplies the validated record's value.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Process {
    /// The validated record: the result of `pipeline.validate`.
    pub input: Record,
    /// The factor.
    pub factor: i64,
    /// For demonstrations and tests: fail transiently (`store_busy`) on
    /// this many first attempts.
    #[serde(default)]
    pub fail_first: u32,
}

impl Task for Process {
    const TYPE: &'static str = "pipeline.process";
}

/// `pipeline.save`: writes the processed record to `{dir}/{id}.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Save {
    /// The processed record: the result of `pipeline.process`.
    pub processed: Record,
}

impl Task for Save {
    const TYPE: &'static str = "pipeline.save";
}

/// Where the pipeline writes: saved records, and `{id}.blocked` markers
/// that make `pipeline.process` refuse a record (permanently, until the
/// marker is removed and the parked task replayed).
#[derive(Debug, Clone)]
pub struct PipelineDir(pub PathBuf);

/// Checks the record.
pub async fn validate(_ctx: TaskContext, task: Validate) -> Result<Outcome, TaskError> {
    let r = task.record;
    let id_ok = !r.id.is_empty()
        && r.id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'));
    if !id_ok {
        return Err(TaskError::permanent(
            "invalid_record",
            format!("record.id {:?} is not made of [A-Za-z0-9_-]", r.id),
        ));
    }
    if r.value < 0 {
        return Err(TaskError::permanent(
            "invalid_record",
            format!("record.value {} is negative", r.value),
        ));
    }
    Ok(Outcome::with_result(
        serde_json::to_value(&r).map_err(|e| TaskError::permanent("invalid_record", e))?,
    ))
}

/// Multiplies the value; refuses a record with a `.blocked` marker.
pub async fn process(
    ctx: TaskContext,
    task: Process,
    dir: Arc<PipelineDir>,
) -> Result<Outcome, TaskError> {
    if ctx.attempt <= task.fail_first {
        return Err(TaskError::retry(
            "store_busy",
            format!("attempt {} of {} set to fail", ctx.attempt, task.fail_first),
        ));
    }
    let marker = dir.0.join(format!("{}.blocked", task.input.id));
    if tokio::fs::try_exists(&marker).await.unwrap_or(false) {
        return Err(TaskError::permanent(
            "record_blocked",
            format!("record {} is blocked", task.input.id),
        ));
    }
    let value =
        task.input.value.checked_mul(task.factor).ok_or_else(|| {
            TaskError::permanent("invalid_record", "the processed value overflows")
        })?;
    let processed = Record {
        id: task.input.id,
        value,
    };
    Ok(Outcome::with_result(
        serde_json::to_value(&processed).map_err(|e| TaskError::permanent("invalid_record", e))?,
    ))
}

/// Writes the processed record.
pub async fn save(
    _ctx: TaskContext,
    task: Save,
    dir: Arc<PipelineDir>,
) -> Result<Outcome, TaskError> {
    let path = dir.0.join(format!("{}.json", task.processed.id));
    let json = serde_json::to_vec(&task.processed)
        .map_err(|e| TaskError::permanent("invalid_record", e))?;
    tokio::fs::write(&path, json)
        .await
        .map_err(|e| TaskError::retry("save_failed", e))?;
    Ok(Outcome::with_result(
        serde_json::json!({ "saved": path.display().to_string() }),
    ))
}

/// `pipeline.report`: a chord's callback. Writes the members' outcomes, as
/// the conductor gave them (member order), to `{dir}/{task id}.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Report {
    /// Each member's outcome: `id`, `state`, and `result` or `error_kind`
    /// and `error`.
    pub results: Vec<serde_json::Value>,
}

impl Task for Report {
    const TYPE: &'static str = "pipeline.report";
}

/// Writes the report; returns how many members succeeded and failed.
pub async fn report(
    ctx: TaskContext,
    task: Report,
    dir: Arc<PipelineDir>,
) -> Result<Outcome, TaskError> {
    let succeeded = task
        .results
        .iter()
        .filter(|r| r["state"] == "succeeded")
        .count();
    let path = dir.0.join(format!("{}.json", ctx.id));
    let json =
        serde_json::to_vec(&task.results).map_err(|e| TaskError::permanent("invalid_record", e))?;
    tokio::fs::write(&path, json)
        .await
        .map_err(|e| TaskError::retry("save_failed", e))?;
    Ok(Outcome::with_result(serde_json::json!({
        "succeeded": succeeded,
        "failed": task.results.len() - succeeded,
    })))
}
