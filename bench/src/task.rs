//! The benchmark's task: a no-op with a sequence number, an optional send
//! time for latency, and padding to a chosen body size.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// The task type every benchmark message carries.
pub const TASK_TYPE: &str = "bench.noop";
/// Queue stem of the consume, publish, latency, memory and replica runs:
/// the work queue is `{namespace}.bench`.
pub const STEM: &str = "bench";
/// Binding key of the work queue on the tasks exchange.
pub const BINDING: &str = "bench.#";
/// Queue stem of the retry run (`{namespace}.retry`), kept apart so the
/// broker's per-queue counters describe the retry path alone.
pub const RETRY_STEM: &str = "retry";

/// What a handler receives. Unknown fields are refused, as Warren's real
/// task types do, so both consumers parse the same way.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BenchTask {
    pub seq: u64,
    /// Microseconds since the Unix epoch when the producer published it; 0
    /// when nobody measures latency.
    #[serde(default)]
    pub sent_at_us: u64,
    #[serde(default)]
    pub pad: String,
}

impl warren::Task for BenchTask {
    const TYPE: &'static str = TASK_TYPE;
}

/// The body as producers serialize it.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct BenchBody<'a> {
    pub seq: u64,
    pub sent_at_us: u64,
    pub pad: &'a str,
}

impl BenchBody<'_> {
    pub fn to_vec(&self) -> Vec<u8> {
        // Serializing a struct of integers and a string cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// Padding that brings a body to about `size` bytes.
pub fn pad_for(size: usize) -> String {
    let base = BenchBody {
        seq: 10_000_000,
        sent_at_us: now_us(),
        pad: "",
    }
    .to_vec()
    .len();
    "x".repeat(size.saturating_sub(base))
}

/// Wall-clock microseconds since the Unix epoch: the producer and the
/// handler run in one process, so they share this clock.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_reaches_the_requested_size_and_round_trips() {
        let pad = pad_for(256);
        let body = BenchBody {
            seq: 42,
            sent_at_us: now_us(),
            pad: &pad,
        }
        .to_vec();
        assert!((250..=262).contains(&body.len()), "{}", body.len());
        let task: BenchTask = serde_json::from_slice(&body).expect("the body parses");
        assert_eq!(task.seq, 42);
        assert!(serde_json::from_slice::<BenchTask>(br#"{"seq":1,"x":2}"#).is_err());
    }
}
