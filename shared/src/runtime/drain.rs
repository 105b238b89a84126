//! Stopping without losing anything: cancel the consumer, hand back what
//! was prefetched but not started, and give in-flight tasks until the
//! deadline (`consumer.shutdown_timeout`) to finish. Whatever is still
//! unacked when the channel closes goes back to the queue.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use lapin::Channel;
use lapin::options::{BasicCancelOptions, BasicNackOptions};
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use super::Inner;

/// Stops consuming, hands back what was prefetched but not started, and
/// gives in-flight tasks until the deadline to finish.
pub(super) async fn drain(
    inner: &Arc<Inner>,
    channel: &Channel,
    tag: &str,
    consumer: &mut lapin::Consumer,
    tracker: &TaskTracker,
) {
    if let Err(e) = channel
        .basic_cancel(tag.into(), BasicCancelOptions::default())
        .await
    {
        warn!(error = %e, "Could not cancel the consumer; closing the channel hands its messages back.");
    }
    let mut handed_back = 0usize;
    while let Ok(Some(Ok(delivery))) =
        tokio::time::timeout(Duration::from_millis(50), consumer.next()).await
    {
        let _ = delivery
            .acker
            .nack(BasicNackOptions {
                requeue: true,
                ..Default::default()
            })
            .await;
        handed_back += 1;
    }
    let in_flight = inner.status.in_flight();
    info!(
        in_flight,
        handed_back,
        deadline_ms = inner.consumer.shutdown_timeout.as_millis() as u64,
        "Stopped consuming; waiting for in-flight tasks."
    );
    tracker.close();
    if tokio::time::timeout(inner.consumer.shutdown_timeout, tracker.wait())
        .await
        .is_err()
    {
        warn!(
            unfinished = inner.status.in_flight(),
            "In-flight tasks did not finish before the deadline; handing them back to the broker."
        );
    }
}
