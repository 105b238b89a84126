//! The parking lots (`{ns}.{stem}.dead`): read with filters, replayed and
//! purged. One implementation for the `warren dead` command and the
//! gateway's console.
//!
//! Messages are read with `basic.get` and held unacked: a message an
//! operation does not take goes back to its place in the queue when the
//! channel closes (a crash or `kill -9` included), so looking never
//! consumes. A scan reads at most the depth the queue had when it began,
//! so a message parked again meanwhile is not read twice.
//!
//! ```no_run
//! # async fn run(broker: &warren::settings::BrokerSettings, connection: &lapin::Connection) -> Result<(), warren::dead::DeadError> {
//! use warren::dead::{self, Filter};
//! let filter = Filter { queue: Some("email".into()), kind: Some("invalid_address".into()), ..Filter::default() };
//! let scans = dead::scan_all(broker, connection, &filter, &["email", "image"]).await?;
//! let check = |_: Option<&str>, _: &[u8]| None;
//! let summary = dead::replay(&scans, &broker.names(), &check, None, "my-tool", |_| {}).await?;
//! dead::release(scans).await;
//! println!("replayed {}", summary.replayed.len());
//! # Ok(()) }
//! ```
//!
//! Behind the `management` feature (the parking lots are listed through
//! the management API).

mod scan;
mod settle;

use std::time::Duration;

use lapin::Connection;

use crate::management::{Management, ManagementError};
use crate::settings::BrokerSettings;

pub use scan::{Parked, Scan, amqp_json, exists};
pub use settle::{
    BodyCheck, RESET_HEADERS, Reparked, ReplaySummary, purge, replay, replay_properties,
};

/// Why a parking lot could not be read or settled.
#[derive(Debug, thiserror::Error)]
pub enum DeadError {
    /// No such parking lot, or none at all in the namespace.
    #[error("{0}")]
    NotFound(String),
    /// The broker failed.
    #[error("the broker: {0}")]
    Broker(#[from] lapin::Error),
    /// The broker could not be reached.
    #[error(transparent)]
    Connect(#[from] crate::broker::ConnectError),
    /// The management API's settings are wrong.
    #[error(transparent)]
    Management(#[from] ManagementError),
}

/// Which parked messages an operation takes. Empty fields match all.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// The parking lot: a worker's stem (`email`) or the queue's name
    /// (`warren.email.dead`). `None`: every parking lot of the namespace.
    pub queue: Option<String>,
    /// Task type (`email.send`).
    pub task_type: Option<String>,
    /// Error kind (`x-warren-error-kind`).
    pub kind: Option<String>,
    /// Dead reason: `permanent`, `attempts_exhausted`, or the broker's.
    pub reason: Option<String>,
    /// Parked at least this long ago.
    pub older_than: Option<Duration>,
    /// Parked at most this long ago.
    pub newer_than: Option<Duration>,
    /// Task ids; empty: any.
    pub id: Vec<String>,
    /// At most this many messages, over all parking lots.
    pub limit: Option<usize>,
}

/// The parking lots `filter` names, each scanned and its matches held.
/// `known_stems` are the work queues to look for when the management API
/// cannot list the queues.
pub async fn scan_all(
    broker: &BrokerSettings,
    connection: &Connection,
    filter: &Filter,
    known_stems: &[&str],
) -> Result<Vec<Scan>, DeadError> {
    let queues = parking_lots(broker, connection, filter.queue.as_deref(), known_stems).await?;
    let mut scans = Vec::new();
    let mut left = filter.limit;
    for queue in queues {
        let scan = Scan::run(connection, &queue, filter, left).await;
        let scan = match scan {
            Ok(s) => s,
            Err(e) => {
                release(scans).await;
                return Err(e);
            }
        };
        if let Some(l) = left.as_mut() {
            *l = l.saturating_sub(scan.matched.len());
        }
        scans.push(scan);
    }
    Ok(scans)
}

/// Hands every message the scans hold and did not settle back to its
/// queue, in its place.
pub async fn release(scans: Vec<Scan>) {
    for scan in scans {
        scan.release().await;
    }
}

/// The full name of the parking lot `queue` names: a stem (`email`), a
/// work queue (`warren.email`) or a parking lot (`warren.email.dead`).
pub fn parking_lot_name(namespace: &str, queue: &str) -> String {
    if queue.starts_with(&format!("{namespace}.")) && queue.ends_with(".dead") {
        queue.to_owned()
    } else if queue.starts_with(&format!("{namespace}.")) {
        format!("{queue}.dead")
    } else {
        format!("{namespace}.{}.dead", queue.trim_end_matches(".dead"))
    }
}

/// The parking lots to read: the one `queue` names (a stem or a full name),
/// else every `{ns}.<stem>.dead` the management API lists, else those of
/// `known_stems` that exist.
pub async fn parking_lots(
    broker: &BrokerSettings,
    connection: &Connection,
    queue: Option<&str>,
    known_stems: &[&str],
) -> Result<Vec<String>, DeadError> {
    let ns = broker.namespace.clone();
    if let Some(q) = queue {
        let name = parking_lot_name(&ns, q);
        if !exists(connection, &name).await? {
            return Err(DeadError::NotFound(format!(
                "no parking lot '{name}' in namespace '{ns}' (no worker of that queue has run here)"
            )));
        }
        return Ok(vec![name]);
    }
    let prefix = format!("{ns}.");
    let mut names: Vec<String> = match Management::new(broker)?.queues().await {
        Ok(queues) => queues
            .iter()
            .filter_map(|q| q["name"].as_str())
            .filter(|n| {
                n.strip_prefix(&prefix)
                    .and_then(|rest| rest.strip_suffix(".dead"))
                    .is_some_and(|stem| !stem.is_empty() && !stem.contains('.'))
            })
            .map(str::to_owned)
            .collect(),
        Err(_) => {
            let mut v = Vec::new();
            for stem in known_stems {
                let name = format!("{ns}.{stem}.dead");
                if exists(connection, &name).await? {
                    v.push(name);
                }
            }
            v
        }
    };
    names.sort();
    if names.is_empty() {
        return Err(DeadError::NotFound(format!(
            "no parking lot in namespace '{ns}' (no worker has run here)"
        )));
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_parking_lot_is_named_by_stem_work_queue_or_full_name() {
        for q in ["email", "email.dead", "w.email", "w.email.dead"] {
            assert_eq!(parking_lot_name("w", q), "w.email.dead", "{q}");
        }
    }
}
