//! The parking lot pages: `GET /console/dead` lists parked messages with
//! filters (each with its headers, body, reason and attempts), and `POST
//! /console/dead/replay` and `/console/dead/purge` settle one message or a
//! selection. The reading and settling are [`warren::dead`]'s, the code
//! `warren dead` runs, so the console and the CLI cannot drift apart.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Redirect, Response};
use chrono::Utc;
use serde::Serialize;
use warren::dead::{self, DeadError, Filter, Parked};

use super::{Console, check_csrf};

/// Messages shown when the filter gives no limit.
pub const DEFAULT_LIMIT: usize = 50;
/// The most a page shows, whatever the limit asked.
pub const MAX_LIMIT: usize = 500;
/// A body longer than this (bytes) is cut on the page.
pub const MAX_BODY_BYTES: usize = 8 * 1024;

/// One parked message as the page shows it: text only.
#[derive(Debug, Serialize)]
pub struct Shown {
    pub queue: String,
    pub id: String,
    pub task_type: Option<String>,
    pub kind: Option<String>,
    pub reason: Option<String>,
    pub error: Option<String>,
    pub attempts: Option<u32>,
    pub parked_at: Option<String>,
    pub age: Option<String>,
    pub headers: Vec<(String, String)>,
    /// Pretty-printed when JSON, cut at [`MAX_BODY_BYTES`].
    pub body: String,
    pub body_bytes: usize,
    pub body_cut: bool,
}

impl Shown {
    fn new(p: &Parked, now: chrono::DateTime<Utc>) -> Self {
        let headers = match p.headers_json() {
            serde_json::Value::Object(map) => map
                .into_iter()
                .map(|(k, v)| {
                    let v = match v {
                        serde_json::Value::String(s) => s,
                        other => other.to_string(),
                    };
                    (k, v)
                })
                .collect(),
            _ => Vec::new(),
        };
        let pretty = serde_json::from_slice::<serde_json::Value>(&p.body)
            .ok()
            .and_then(|v| serde_json::to_string_pretty(&v).ok())
            .unwrap_or_else(|| String::from_utf8_lossy(&p.body).into_owned());
        let (body, body_cut) = cut(&pretty, MAX_BODY_BYTES);
        Self {
            queue: p.queue.clone(),
            id: p.id.clone(),
            task_type: p.task_type.clone(),
            kind: p.kind.clone(),
            reason: p.reason.clone(),
            error: p.error.clone(),
            attempts: p.attempts,
            parked_at: p
                .parked_at
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
            age: p.parked_at.map(|t| age(now, t)),
            headers,
            body: body.to_owned(),
            body_bytes: p.body.len(),
            body_cut,
        }
    }
}

/// `text` cut to at most `max` bytes, on a character boundary; whether
/// it was cut.
pub fn cut(text: &str, max: usize) -> (&str, bool) {
    if text.len() <= max {
        return (text, false);
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    (&text[..end], true)
}

/// `3m`, `2h`, `5d`: how long ago.
fn age(now: chrono::DateTime<Utc>, at: chrono::DateTime<Utc>) -> String {
    let secs = (now - at).num_seconds().max(0);
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 86_400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// The filter form's fields, as given (for showing them back).
#[derive(Debug, Default, Serialize)]
pub struct FilterForm {
    pub queue: String,
    pub task_type: String,
    pub kind: String,
    pub reason: String,
    pub older_than: String,
    pub newer_than: String,
    pub id: String,
    pub limit: String,
}

impl FilterForm {
    fn parse(query: &str) -> Self {
        let mut f = FilterForm::default();
        for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
            let v = v.trim().to_owned();
            match k.as_ref() {
                "queue" => f.queue = v,
                "type" => f.task_type = v,
                "kind" => f.kind = v,
                "reason" => f.reason = v,
                "older_than" => f.older_than = v,
                "newer_than" => f.newer_than = v,
                "id" => f.id = v,
                "limit" => f.limit = v,
                _ => {}
            }
        }
        f
    }

    /// The library's filter, or what is wrong with a field.
    fn filter(&self) -> Result<Filter, String> {
        let some = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        let duration = |name: &str, s: &str| {
            if s.is_empty() {
                Ok(None)
            } else {
                humantime::parse_duration(s)
                    .map(Some)
                    .map_err(|e| format!("{name} '{s}' is not a duration such as 10m or 2h: {e}"))
            }
        };
        let limit = if self.limit.is_empty() {
            DEFAULT_LIMIT
        } else {
            self.limit
                .parse::<usize>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("limit '{}' is not a positive number", self.limit))?
                .min(MAX_LIMIT)
        };
        Ok(Filter {
            queue: some(&self.queue),
            task_type: some(&self.task_type),
            kind: some(&self.kind),
            reason: some(&self.reason),
            older_than: duration("older than", &self.older_than)?,
            newer_than: duration("newer than", &self.newer_than)?,
            id: self
                .id
                .split([',', ' '])
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
            limit: Some(limit),
        })
    }
}

/// The contract's work queues: where to look when the management API
/// cannot list the parking lots.
fn known_stems() -> Vec<&'static str> {
    warren_tasks::WORK_QUEUES.iter().map(|q| q.stem).collect()
}

/// `GET /console/dead`: the parking lots, filtered.
pub async fn page(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let Some((_, caller, csrf)) = console.session(&headers) else {
        return Redirect::to("/console/login").into_response();
    };
    let form = FilterForm::parse(query.as_deref().unwrap_or_default());
    let mut messages = Vec::new();
    let mut looked = Vec::new();
    let mut error = None;
    match form.filter() {
        Err(e) => error = Some(e),
        Ok(filter) => match read(&console, &filter).await {
            Ok((shown, queues)) => {
                messages = shown;
                looked = queues;
            }
            Err(e) => error = Some(e.to_string()),
        },
    }
    console.render(
        "dead.html",
        minijinja::context! {
            namespace => console.broker.namespace.clone(),
            form,
            messages,
            looked,
            error,
            csrf,
            caller => caller.name,
        },
    )
}

/// The matching messages, read and handed back at once.
async fn read(console: &Console, filter: &Filter) -> Result<(Vec<Shown>, Vec<String>), DeadError> {
    let connection = console.connect().await?;
    let scans = dead::scan_all(&console.broker, &connection, filter, &known_stems()).await;
    let result = scans.map(|scans| {
        let now = Utc::now();
        let shown: Vec<Shown> = scans
            .iter()
            .flat_map(|s| s.matched.iter().map(|p| Shown::new(p, now)))
            .collect();
        let queues = scans.iter().map(|s| s.queue.clone()).collect::<Vec<_>>();
        (scans, shown, queues)
    });
    let out = match result {
        Ok((scans, shown, queues)) => {
            dead::release(scans).await;
            Ok((shown, queues))
        }
        Err(e) => Err(e),
    };
    let _ = connection.close(200, "done".into()).await;
    out
}

/// What a replay or purge from the console did.
#[derive(Debug, Default, Serialize)]
pub struct Outcome {
    pub action: &'static str,
    pub replayed: Vec<String>,
    pub purged: Vec<String>,
    pub parked_again: Vec<dead::Reparked>,
    pub failed: Option<dead::Reparked>,
    pub not_reached: usize,
    /// Asked for, but not (or no longer) in the parking lot.
    pub not_found: Vec<String>,
    pub errors: Vec<String>,
    /// The parking lots touched, for the way back.
    pub queues: Vec<String>,
    /// A replay's pace: at most this many messages a second
    /// (`console.replay_rate`); none when unlimited.
    pub rate: Option<f64>,
    /// The rate as shown: `5`, `2.5`.
    pub rate_shown: Option<String>,
    /// How long a replay took, as `1.2s`.
    pub took: Option<String>,
}

/// The messages a settling form names, by parking lot: the `one` button's
/// value, else every ticked `id` box. Each value is `<queue> <id>`.
fn selection(body: &[u8]) -> BTreeMap<String, Vec<String>> {
    let pairs: Vec<(String, String)> = url::form_urlencoded::parse(body).into_owned().collect();
    let one: Vec<&String> = pairs
        .iter()
        .filter(|(k, _)| k == "one")
        .map(|(_, v)| v)
        .collect();
    let values: Vec<&String> = if one.is_empty() {
        pairs
            .iter()
            .filter(|(k, _)| k == "id")
            .map(|(_, v)| v)
            .collect()
    } else {
        one
    };
    let mut by_queue: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for v in values {
        if let Some((queue, id)) = v.split_once(' ')
            && !queue.is_empty()
            && !id.is_empty()
        {
            by_queue
                .entry(queue.to_owned())
                .or_default()
                .push(id.to_owned());
        }
    }
    by_queue
}

/// `POST /console/dead/replay`.
pub async fn replay(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    settle(console, headers, body, "replay").await
}

/// `POST /console/dead/purge`.
pub async fn purge(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    settle(console, headers, body, "purge").await
}

async fn settle(
    console: Arc<Console>,
    headers: HeaderMap,
    body: Bytes,
    action: &'static str,
) -> Response {
    let Some((_, caller, csrf)) = console.session(&headers) else {
        return Redirect::to("/console/login").into_response();
    };
    if let Err(refused) = check_csrf(&csrf, &body) {
        return refused.into_response();
    }
    let wanted = selection(&body);
    let rate = Some(console.options.replay_rate).filter(|r| *r > 0.0 && r.is_finite());
    let mut outcome = Outcome {
        action,
        queues: wanted.keys().cloned().collect(),
        rate: if action == "replay" { rate } else { None },
        rate_shown: rate.filter(|_| action == "replay").map(|r| r.to_string()),
        ..Outcome::default()
    };
    let started = std::time::Instant::now();
    if wanted.is_empty() {
        outcome.errors.push("No message was selected.".into());
    } else {
        match console.connect().await {
            Err(e) => outcome.errors.push(e.to_string()),
            Ok(connection) => {
                for (queue, ids) in &wanted {
                    if let Err(e) =
                        settle_queue(&console, &connection, queue, ids, &mut outcome).await
                    {
                        outcome.errors.push(format!("{queue}: {e}"));
                    }
                }
                let _ = connection.close(200, "done".into()).await;
            }
        }
    }
    if action == "replay" {
        let took = std::time::Duration::from_millis(
            u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        );
        outcome.took = Some(humantime::format_duration(took).to_string());
    }
    tracing::info!(
        key = %caller.name,
        action,
        replayed = outcome.replayed.len(),
        purged = outcome.purged.len(),
        parked_again = outcome.parked_again.len(),
        not_found = outcome.not_found.len(),
        rate = outcome.rate,
        "Console settled parked messages."
    );
    console.render(
        "settled.html",
        minijinja::context! {
            outcome,
            csrf,
            caller => caller.name,
        },
    )
}

async fn settle_queue(
    console: &Console,
    connection: &lapin::Connection,
    queue: &str,
    ids: &[String],
    outcome: &mut Outcome,
) -> Result<(), DeadError> {
    let filter = Filter {
        queue: Some(queue.to_owned()),
        id: ids.to_vec(),
        ..Filter::default()
    };
    let scans = dead::scan_all(&console.broker, connection, &filter, &known_stems()).await?;
    let found: Vec<String> = scans
        .iter()
        .flat_map(|s| s.matched.iter().map(|p| p.id.clone()))
        .collect();
    outcome
        .not_found
        .extend(ids.iter().filter(|id| !found.contains(id)).cloned());
    if outcome.action == "purge" {
        outcome.purged.extend(dead::purge(scans).await?);
        return Ok(());
    }
    let replayed = dead::replay(
        &scans,
        &console.broker.names(),
        &warren_tasks::body_problem,
        outcome.rate,
        "gateway-console",
        |_| {},
    )
    .await;
    dead::release(scans).await;
    let summary = replayed?;
    outcome.replayed.extend(summary.replayed);
    outcome.parked_again.extend(summary.parked_again);
    outcome.not_reached += summary.not_reached;
    if summary.failed.is_some() {
        outcome.failed = summary.failed;
    }
    if let Some(lost) = summary.connection_lost {
        outcome.errors.push(format!(
            "the connection to the broker was lost ({lost}): the messages not replayed stay \
             parked; replay them again"
        ));
    }
    Ok(())
}

#[cfg(test)]
// A failing unwrap is how a test reports failure.
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_body_is_cut_on_a_character_boundary() {
        let text = "ééé"; // 2 bytes each
        assert_eq!(cut(text, 3), ("é", true));
        assert_eq!(cut(text, 4), ("éé", true));
        assert_eq!(cut(text, 6), ("ééé", false));
        assert_eq!(cut("🦀x", 2), ("", true));
    }

    #[test]
    fn the_selection_is_the_one_button_else_the_ticked_boxes() {
        let ticked =
            selection(b"csrf=t&id=w.email.dead+a&id=w.email.dead+b&id=w.image.dead+c&id=junk");
        assert_eq!(ticked["w.email.dead"], vec!["a", "b"]);
        assert_eq!(ticked["w.image.dead"], vec!["c"]);
        assert_eq!(ticked.len(), 2);
        let one = selection(b"csrf=t&id=w.email.dead+a&one=w.email.dead+z");
        assert_eq!(one["w.email.dead"], vec!["z"]);
        assert_eq!(one.len(), 1);
    }

    #[test]
    fn the_filter_form_parses_and_names_a_bad_field() {
        let f = FilterForm::parse("queue=email&type=email.send&kind=&older_than=1h&id=a,b&limit=7");
        let filter = f.filter().unwrap();
        assert_eq!(filter.queue.as_deref(), Some("email"));
        assert_eq!(filter.kind, None);
        assert_eq!(filter.id, vec!["a", "b"]);
        assert_eq!(filter.limit, Some(7));
        assert_eq!(
            filter.older_than,
            Some(std::time::Duration::from_secs(3600))
        );
        assert_eq!(
            FilterForm::parse("").filter().unwrap().limit,
            Some(DEFAULT_LIMIT)
        );
        assert!(
            FilterForm::parse("limit=0")
                .filter()
                .unwrap_err()
                .contains("limit")
        );
        assert!(
            FilterForm::parse("newer_than=soon")
                .filter()
                .unwrap_err()
                .contains("newer than")
        );
    }
}
