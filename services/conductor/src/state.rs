//! What this replica knows, for `GET /v1/schedules`: whether it leads,
//! who it is, and each schedule's last and next fire.

use std::sync::{Arc, RwLock};

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::schedule::{Misfire, Schedule, Timing};

/// One schedule, as `GET /v1/schedules` shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ScheduleView {
    pub name: String,
    pub task_type: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cron: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub every: Option<String>,
    pub misfire: Misfire,
    /// The latest fire this replica knows of (made by it, or read from the
    /// events stream when it took over).
    pub last_fire: Option<DateTime<Utc>>,
    /// The next fire, as this replica computes it.
    pub next_fire: Option<DateTime<Utc>>,
}

/// The body of `GET /v1/schedules`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Snapshot {
    /// This replica: `conductor@<host>/<pid>`.
    pub identity: String,
    /// Whether this replica holds the leader lock.
    pub leader: bool,
    /// The leader's identity, when known: this replica's while it leads,
    /// else the `by` of the latest fire it has read on the events stream
    /// (a standby follows the stream from `conductor.lookback`; `null`
    /// until it has seen a fire).
    pub leader_identity: Option<String>,
    pub leader_since: Option<DateTime<Utc>>,
    pub schedules: Vec<ScheduleView>,
}

/// Shared between the leader loop and the HTTP handler.
#[derive(Debug)]
pub struct Shared {
    inner: RwLock<Snapshot>,
}

impl Shared {
    pub fn new(identity: &str, schedules: &[Schedule]) -> Arc<Self> {
        let now = Utc::now();
        let views = schedules
            .iter()
            .map(|s| {
                let (cron, time_zone, every) = match s.timing() {
                    Timing::Cron {
                        expression, zone, ..
                    } => (Some(expression.clone()), Some(zone.name().to_owned()), None),
                    Timing::Every(d) => {
                        (None, None, Some(humantime::format_duration(*d).to_string()))
                    }
                };
                ScheduleView {
                    name: s.name().to_owned(),
                    task_type: s.task_type().to_owned(),
                    cron,
                    time_zone,
                    every,
                    misfire: s.misfire(),
                    last_fire: None,
                    next_fire: s.next_after(now),
                }
            })
            .collect();
        Arc::new(Self {
            inner: RwLock::new(Snapshot {
                identity: identity.to_owned(),
                leader: false,
                leader_identity: None,
                leader_since: None,
                schedules: views,
            }),
        })
    }

    pub fn snapshot(&self) -> Snapshot {
        self.inner.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn update(&self, f: impl FnOnce(&mut Snapshot)) {
        f(&mut self.inner.write().unwrap_or_else(|e| e.into_inner()));
    }

    pub fn set_leader(&self, leading: bool) {
        self.update(|s| {
            s.leader = leading;
            if leading {
                s.leader_since = Some(Utc::now());
                s.leader_identity = Some(s.identity.clone());
            } else {
                s.leader_since = None;
                if s.leader_identity.as_deref() == Some(s.identity.as_str()) {
                    s.leader_identity = None;
                }
            }
        });
    }

    /// A standby saw a fire on the events stream: its maker leads. The
    /// leader's own view is not touched.
    pub fn saw_fire(
        &self,
        index: usize,
        at: DateTime<Utc>,
        next: Option<DateTime<Utc>>,
        by: Option<String>,
    ) {
        self.update(|s| {
            if s.leader {
                return;
            }
            if by.is_some() {
                s.leader_identity = by;
            }
            if let Some(v) = s.schedules.get_mut(index) {
                v.last_fire = v.last_fire.max(Some(at));
                v.next_fire = next;
            }
        });
    }

    pub fn set_fires(
        &self,
        index: usize,
        last: Option<DateTime<Utc>>,
        next: Option<DateTime<Utc>>,
    ) {
        self.update(|s| {
            if let Some(v) = s.schedules.get_mut(index) {
                if last.is_some() {
                    v.last_fire = last;
                }
                v.next_fire = next;
            }
        });
    }
}

/// `GET /v1/schedules`.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/schedules", get(schedules))
        .with_state(shared)
}

async fn schedules(State(shared): State<Arc<Shared>>) -> axum::Json<Snapshot> {
    axum::Json(shared.snapshot())
}
