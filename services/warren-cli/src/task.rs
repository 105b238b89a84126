//! `warren task <id>`: a task's status from the gateway (`GET
//! /v1/tasks/{id}`); with `--follow`, its events as they happen (`GET
//! /v1/tasks/{id}/events`, Server-Sent Events) until it succeeds or is
//! parked.
//!
//! A gateway with API keys wants one with the `read` scope: the CLI sends
//! `$WARREN_GATEWAY_KEY` as `Authorization: Bearer` (an environment
//! variable rather than a flag, so the key never shows in `ps`).

use serde_json::Value;

use crate::error::{CliError, Exit};
use crate::output::Output;

const FINAL_STATES: &[&str] = &["succeeded", "dead_lettered"];

/// The environment variable holding the key sent to the gateway.
pub const KEY_VAR: &str = "WARREN_GATEWAY_KEY";

/// `request` with the gateway key of [`KEY_VAR`], if set.
fn with_key(request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    match std::env::var(KEY_VAR) {
        Ok(key) if !key.is_empty() => request.bearer_auth(key),
        _ => request,
    }
}

pub async fn run(out: &Output, gateway: &str, id: &str, follow: bool) -> Result<Exit, CliError> {
    let base = url::Url::parse(gateway)
        .map_err(|e| CliError::Usage(format!("--gateway {gateway} is not a URL: {e}")))?;
    let mut url = base.clone();
    url.path_segments_mut()
        .map_err(|_| CliError::Usage("--gateway cannot be a base URL".into()))?
        .pop_if_empty()
        .extend(["v1", "tasks", id]);
    let client = reqwest::Client::new();
    let unreachable = |e: reqwest::Error| {
        CliError::Http(format!("the gateway at {gateway} does not answer: {e}"))
    };
    let response = with_key(client.get(url.clone()))
        .send()
        .await
        .map_err(unreachable)?;
    let status = response.status();
    let body = response.bytes().await.map_err(unreachable)?;
    let doc: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    if status == reqwest::StatusCode::NOT_FOUND {
        if out.json {
            out.json(&doc);
        }
        return Err(CliError::NotFound(format!(
            "the gateway does not know task '{id}'"
        )));
    }
    if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
        return Err(CliError::Http(format!(
            "the gateway answered {status}: {} (set {KEY_VAR} to a key with the read scope)",
            doc["detail"].as_str().unwrap_or_default()
        )));
    }
    if !status.is_success() {
        return Err(CliError::Http(format!(
            "the gateway answered {status}: {}",
            doc["detail"].as_str().unwrap_or_default()
        )));
    }
    if !follow {
        if out.json {
            out.json(&doc);
        } else if let Value::Object(map) = &doc {
            for (k, v) in map {
                let v = match v {
                    Value::String(s) => s.clone(),
                    Value::Null => continue,
                    other => other.to_string(),
                };
                println!("{k:<16} {v}");
            }
        }
        return Ok(Exit::Ok);
    }
    url.path_segments_mut()
        .map_err(|_| CliError::Usage("--gateway cannot be a base URL".into()))?
        .push("events");
    let mut response = with_key(client.get(url))
        .header("accept", "text/event-stream")
        .send()
        .await
        .map_err(unreachable)?;
    if !response.status().is_success() {
        return Err(CliError::Http(format!(
            "the gateway answered {} for the events",
            response.status()
        )));
    }
    let mut buffer = String::new();
    while let Some(chunk) = response.chunk().await.map_err(unreachable)? {
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let frame: String = buffer.drain(..end + 2).collect();
            let data: String = frame
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(str::trim_start)
                .collect::<Vec<_>>()
                .join("\n");
            if data.is_empty() {
                continue;
            }
            let event: Value = serde_json::from_str(&data).unwrap_or(Value::String(data));
            if out.json {
                println!("{event}");
            } else {
                println!(
                    "{}  {:<14} attempt {}  {}",
                    event["at"].as_str().unwrap_or("-"),
                    event["state"].as_str().unwrap_or("-"),
                    event["attempt"]
                        .as_u64()
                        .map_or_else(|| "-".to_owned(), |a| a.to_string()),
                    event["by"].as_str().unwrap_or("")
                );
            }
            if event["state"]
                .as_str()
                .is_some_and(|s| FINAL_STATES.contains(&s))
            {
                return Ok(Exit::Ok);
            }
        }
    }
    Ok(Exit::Ok)
}
