//! Tasks received before they are due: a producer that set
//! `x-warren-eta-ms` or `x-warren-delay-ms` on a task it published to the
//! tasks exchange (Python, the CLI, anything but Warren's own publisher,
//! which goes to the delay cascade directly). The worker publishes a
//! confirmed copy into the delay cascade, addressed to its own work queue
//! alone, then acks: nothing waits unacked in memory.

use std::time::Duration;

use chrono::{DateTime, Utc};
use lapin::message::Delivery;
use tracing::{info, warn};

use super::Inner;
use super::session::Outbound;
use crate::TaskError;
use crate::contract::{self, headers};
use crate::publisher::Purpose;
use crate::topology::delay::{self, Destination};

/// A task closer than this to its due time runs now: the cascade counts
/// whole seconds, and clocks of producer and worker differ a little.
const EARLY_ENOUGH: Duration = Duration::from_millis(500);

/// What the due headers of a delivery ask.
#[derive(Debug, PartialEq)]
pub(super) enum Due {
    /// Not delayed, or due already.
    Now,
    /// Due at this time, later than now.
    Later(DateTime<Utc>),
}

/// Reads `x-warren-eta-ms`, else `x-warren-delay-ms` counted from
/// `x-warren-published-at-ms` (or the AMQP timestamp, or now).
pub(super) fn due(delivery: &Delivery, now: DateTime<Utc>) -> Result<Due, TaskError> {
    let hdrs = delivery.properties.headers().as_ref();
    let eta_ms = match contract::header_i64(hdrs, headers::ETA_MS) {
        Some(ms) => ms,
        None => match contract::header_i64(hdrs, headers::DELAY_MS) {
            Some(delay) if delay < 0 => {
                return Err(TaskError::permanent(
                    "invalid_delay",
                    format!("{} is negative ({delay})", headers::DELAY_MS),
                ));
            }
            Some(delay) => {
                let published = contract::header_i64(hdrs, headers::PUBLISHED_AT_MS)
                    .or_else(|| {
                        delivery
                            .properties
                            .timestamp()
                            .and_then(|s| i64::try_from(s).ok())
                            .map(|s| s.saturating_mul(1000))
                    })
                    .unwrap_or_else(|| now.timestamp_millis());
                published.saturating_add(delay)
            }
            None => return Ok(Due::Now),
        },
    };
    let Some(eta) = DateTime::from_timestamp_millis(eta_ms) else {
        return Err(TaskError::permanent(
            "invalid_delay",
            format!("{} {eta_ms} is not a time", headers::ETA_MS),
        ));
    };
    match (eta - now).to_std() {
        Ok(wait) if wait > EARLY_ENOUGH => {
            if wait > delay::MAX_DELAY {
                return Err(TaskError::permanent(
                    "invalid_delay",
                    format!(
                        "the task is due at {eta}, further away than the delay cascade's longest delay ({})",
                        humantime::format_duration(delay::MAX_DELAY)
                    ),
                ));
            }
            Ok(Due::Later(eta))
        }
        _ => Ok(Due::Now),
    }
}

/// Publishes a copy into the delay cascade for this work queue alone, with
/// its due time in `x-warren-eta-ms`, then acks the original. If the copy
/// is not confirmed, the original goes back to the queue.
pub(super) async fn defer(inner: &Inner, out: &Outbound, delivery: &Delivery, eta: DateTime<Utc>) {
    let wait = (eta - Utc::now())
        .to_std()
        .unwrap_or_default()
        .min(delay::MAX_DELAY);
    let route = delay::route(&inner.names, wait, Destination::Queue(&inner.queue));
    // Rebuilt without the delay header: the copy's due time is its eta.
    let mut hdrs = lapin::types::FieldTable::default();
    for (k, v) in delivery.properties.headers().iter().flat_map(|h| h.inner()) {
        if k.as_str() != headers::DELAY_MS {
            hdrs.insert(k.clone(), v.clone());
        }
    }
    contract::set_int(&mut hdrs, headers::ETA_MS, eta.timestamp_millis());
    let props = delivery.properties.clone().with_headers(hdrs);
    let published = match &route {
        Ok(route) => {
            out.publisher
                .publish_for(
                    Purpose::Defer,
                    &route.exchange,
                    &route.routing_key,
                    &delivery.data,
                    props,
                )
                .await
        }
        Err(e) => Err(e.clone().into()),
    };
    match published {
        Ok(()) => {
            super::settle::ack(delivery).await;
            info!(
                due_at = %eta,
                delay_s = wait.as_secs(),
                "Task received before it is due; moved into the delay cascade."
            );
        }
        Err(e) => {
            warn!(error = %e, "Could not move a task into the delay cascade; handing it back.");
            tokio::time::sleep(Duration::from_secs(1)).await;
            super::settle::nack_requeue(delivery).await;
        }
    }
}
