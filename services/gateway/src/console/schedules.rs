//! The schedules page, `GET /console/schedules`: what the conductor at
//! `console.conductor_url` answers to `GET /v1/schedules` (its identity,
//! whether it leads, the leader it knows of, and each schedule's cron or
//! interval, last and next fire). Without the setting the page says the
//! conductor is not configured. Every value is shown escaped, as text.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Redirect, Response};
use serde::{Deserialize, Serialize};

use super::Console;

/// Bound on one request to the conductor.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// The body of the conductor's `GET /v1/schedules`, as far as the page
/// reads it (unknown fields are ignored, missing ones shown as `-`).
#[derive(Debug, Default, Deserialize, Serialize)]
pub struct Snapshot {
    #[serde(default)]
    pub identity: Option<String>,
    #[serde(default)]
    pub leader: bool,
    #[serde(default)]
    pub leader_identity: Option<String>,
    #[serde(default)]
    pub leader_since: Option<String>,
    #[serde(default)]
    pub schedules: Vec<Schedule>,
}

/// One schedule of the snapshot.
#[derive(Debug, Default, Deserialize, Serialize)]
pub struct Schedule {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub task_type: Option<String>,
    #[serde(default)]
    pub cron: Option<String>,
    #[serde(default)]
    pub time_zone: Option<String>,
    #[serde(default)]
    pub every: Option<String>,
    #[serde(default)]
    pub misfire: Option<String>,
    #[serde(default)]
    pub last_fire: Option<String>,
    #[serde(default)]
    pub next_fire: Option<String>,
}

/// Reads `GET {base}/v1/schedules`. The client is built per page, as the
/// management API's is: after start-up has installed the TLS provider.
async fn fetch(base: &url::Url) -> Result<Snapshot, String> {
    let client = reqwest::Client::builder()
        .timeout(TIMEOUT)
        .build()
        .map_err(|e| format!("could not build an HTTP client: {e}"))?;
    let url = base
        .join("v1/schedules")
        .map_err(|e| format!("console.conductor_url {base} cannot be joined: {e}"))?;
    let response = client
        .get(url.clone())
        .send()
        .await
        .map_err(|e| format!("the conductor at {url} does not answer: {e}"))?;
    let status = response.status();
    if !status.is_success() {
        return Err(format!("the conductor at {url} answered {status}"));
    }
    let body = response
        .bytes()
        .await
        .map_err(|e| format!("reading {url}: {e}"))?;
    serde_json::from_slice(&body).map_err(|e| format!("{url} sent no schedules as JSON: {e}"))
}

/// `GET /console/schedules`.
pub async fn page(State(console): State<Arc<Console>>, headers: HeaderMap) -> Response {
    let Some((_, caller, csrf)) = console.session(&headers) else {
        return Redirect::to("/console/login").into_response();
    };
    let conductor = console.options.conductor.clone();
    let (snapshot, error) = match &conductor {
        None => (None, None),
        Some(base) => match fetch(base).await {
            Ok(s) => (Some(s), None),
            Err(e) => (None, Some(e)),
        },
    };
    console.render(
        "schedules.html",
        minijinja::context! {
            configured => conductor.is_some(),
            conductor => conductor.map(|u| u.to_string()),
            snapshot,
            error,
            csrf,
            caller => caller.name,
        },
    )
}

#[cfg(test)]
// A failing unwrap is how a test reports failure.
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::auth::Auth;
    use warren::settings::BrokerSettings;

    #[test]
    fn the_conductors_fields_are_escaped_and_an_absent_setting_is_said() {
        let console = Console::new(Arc::new(Auth::open()), BrokerSettings::default());
        let snapshot: Snapshot = serde_json::from_value(serde_json::json!({
            "identity": "conductor@<b>h</b>/1", "leader": true,
            "leader_identity": "conductor@<b>h</b>/1", "leader_since": "2026-01-01T00:00:00Z",
            "schedules": [{"name": "<script>x()</script>", "task_type": "email.send",
                           "cron": "0 3 * * *", "misfire": "skip", "last_fire": null,
                           "next_fire": "2026-01-02T03:00:00Z", "extra": 1}]
        }))
        .unwrap();
        let t = console.templates.get_template("schedules.html").unwrap();
        let html = t
            .render(
                minijinja::context! { configured => true, snapshot, csrf => "t", caller => "c" },
            )
            .unwrap();
        assert!(
            !html.contains("<script>") && !html.contains("<b>"),
            "{html}"
        );
        assert!(html.contains("&lt;script&gt;x()"), "{html}");
        assert!(html.contains("0 3 * * *"), "{html}");
        let html = t
            .render(minijinja::context! { configured => false, csrf => "t", caller => "c" })
            .unwrap();
        assert!(html.contains("id=\"not-configured\""), "{html}");
    }
}
