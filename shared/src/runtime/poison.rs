//! Poison deliveries: a task that kills the worker process (an abort, an
//! out-of-memory kill, a crash in a codec) never settles, and the broker
//! hands it out again and again. Each attempt's deliveries that never
//! settled are counted, and the delivery after `broker.delivery_limit` of
//! them parks the task (`delivery_limit`) instead of running it.
//!
//! Who counts: on a quorum queue the broker (`x-delivery-count`, with
//! `x-delivery-limit` as its own backstop); on a classic queue the Redis
//! idempotency store, whose count outlives the process; with the memory
//! store nobody (the count would die with the process), and a poison
//! task on a classic queue is redelivered until someone parks it by hand.

use lapin::message::Delivery;
use tracing::warn;

use super::Inner;
use crate::contract::{self, broker_headers};
use crate::idempotency;
use crate::topology::QueueKind;
use crate::{TaskContext, TaskError};

/// One delivery's place in its attempt's count.
pub(super) struct DeliveryCount {
    /// Earlier deliveries of this attempt that never settled, if counted.
    previous: Option<u64>,
    /// The store's key, to forget the count once the delivery settles.
    key: Option<String>,
}

impl DeliveryCount {
    /// Counts this delivery: the broker's count on a quorum queue, the
    /// store's on a classic one.
    pub(super) async fn of(inner: &Inner, delivery: &Delivery, ctx: &TaskContext) -> Self {
        let none = Self {
            previous: None,
            key: None,
        };
        if inner.delivery_limit == 0 {
            return none;
        }
        match inner.topology.kind {
            QueueKind::Quorum { .. } => Self {
                previous: contract::header_u32(
                    delivery.properties.headers().as_ref(),
                    broker_headers::X_DELIVERY_COUNT,
                )
                .map(u64::from),
                key: None,
            },
            QueueKind::Classic => {
                let Some(store) = inner.idempotency.as_deref() else {
                    return none;
                };
                let key = idempotency::delivery_key(
                    inner.names.namespace(),
                    &ctx.task_type,
                    &ctx.id,
                    ctx.attempt,
                );
                match store.count_delivery(&key).await {
                    Ok(Some(count)) => Self {
                        previous: Some(count.saturating_sub(1)),
                        key: Some(key),
                    },
                    Ok(None) => none,
                    Err(e) => {
                        warn!(error = %e, "Could not count the delivery; a task that kills the worker would not be parked.");
                        none
                    }
                }
            }
        }
    }

    /// The error that parks the task, when its earlier deliveries reached
    /// the limit.
    pub(super) fn exceeded(&self, limit: u32) -> Option<TaskError> {
        let previous = self.previous?;
        (limit > 0 && previous >= u64::from(limit)).then(|| {
            TaskError::permanent(
                "delivery_limit",
                format!(
                    "delivered {previous} times without settling (the worker process died each time: \
                     an abort, an out-of-memory kill?); broker.delivery_limit is {limit}"
                ),
            )
        })
    }

    /// The delivery settled (acked, copied or handed back by a living
    /// worker): its count is forgotten.
    pub(super) async fn settled(self, inner: &Inner) {
        if let (Some(key), Some(store)) = (self.key, inner.idempotency.as_deref())
            && let Err(e) = store.settle_delivery(&key).await
        {
            warn!(error = %e, "Could not forget the delivery count; it expires with the idempotency TTL.");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_delivery_after_the_limit_parks() {
        let count = |previous| DeliveryCount {
            previous: Some(previous),
            key: None,
        };
        assert!(count(2).exceeded(3).is_none());
        let err = count(3).exceeded(3).map(|e| e.kind.to_string());
        assert_eq!(err.as_deref(), Some("delivery_limit"));
        // No limit, or nobody counting: never.
        assert!(count(9).exceeded(0).is_none());
        let uncounted = DeliveryCount {
            previous: None,
            key: None,
        };
        assert!(uncounted.exceeded(1).is_none());
    }
}
