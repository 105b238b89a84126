//! Section 7: the retry path. N tasks fail on their first attempt
//! (`TaskError::retry`) and succeed on the second, through a 1 ms delay
//! queue (`{ns}.retry.retry.1ms`), against the same worker's happy path
//! (every task succeeds at once), alternating per round.
//!
//! Broker operations per task come from the runtime's own counters
//! (deliveries, retry copies published and confirmed, acks) and, when the
//! management API is there, from RabbitMQ's per-queue counters.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use warren::TaskError;

use crate::broker::{BenchBroker, Management, RETRY_DELAYS};
use crate::config::Config;
use crate::consume::{Variant, budget, warren_once};
use crate::report::{Report, thousands};
use crate::stats::{median, ratio, round};
use crate::task::{RETRY_STEM, TASK_TYPE, pad_for};
use crate::warren_side::{InProcess, Options};

const ERROR_KIND: &str = "bench_fail_once";

/// The runtime's counters for the retry queue.
#[derive(Debug, Clone, Copy, Default)]
struct Counters {
    received: u64,
    succeeded: u64,
    retried: u64,
    retry_confirms: u64,
}

fn counters(queue: &str) -> Counters {
    let m = warren::metrics::runtime();
    let service = warren::metrics::service();
    Counters {
        received: m
            .received
            .with_label_values(&[service, queue, TASK_TYPE])
            .get(),
        succeeded: m
            .succeeded
            .with_label_values(&[service, queue, TASK_TYPE])
            .get(),
        retried: m
            .retried
            .with_label_values(&[service, queue, TASK_TYPE, ERROR_KIND])
            .get(),
        retry_confirms: m
            .publish_confirms
            .with_label_values(&[service, "retry", "ack"])
            .get(),
    }
}

async fn retry_once(cfg: &Config, bench: &BenchBroker, pad: &str) -> anyhow::Result<f64> {
    bench.purge(RETRY_STEM).await?;
    bench.prefill(RETRY_STEM, cfg.n, pad).await?;
    let options = Options {
        stem: RETRY_STEM.to_owned(),
        binding_keys: Vec::new(),
        prefetch: cfg.prefetch,
        concurrency: cfg.concurrency,
        retry_delays: RETRY_DELAYS.to_vec(),
        idempotency: true,
        events: true,
    };
    let worker = InProcess::start(
        bench,
        &options,
        cfg.n,
        std::sync::Arc::new(|ctx, _| {
            if ctx.attempt < 2 {
                Err(TaskError::retry(ERROR_KIND, "fails on its first attempt"))
            } else {
                Ok(())
            }
        }),
    );
    let done = worker.wait_done(budget(cfg.n) * 2).await;
    worker.stop().await?;
    let (first, end) = done?;
    Ok(cfg.n as f64 / (end - first).as_secs_f64())
}

/// Waits (up to 15 s: RabbitMQ updates them every 5 s) until the broker's
/// counters for the retry work queue show every delivery.
async fn broker_counters(
    mgmt: &Management,
    bench: &BenchBroker,
    deliveries: u64,
) -> anyhow::Result<(Value, Value)> {
    let work = bench.queue(RETRY_STEM);
    let delay = bench.names.retry_queue(RETRY_STEM, RETRY_DELAYS[0]);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let w = mgmt.queue_stats(&work).await?;
        let seen = w["deliver_get"].as_u64().unwrap_or(0);
        if seen >= deliveries || Instant::now() >= deadline {
            let d = mgmt.queue_stats(&delay).await?;
            return Ok((w, d));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

pub async fn run(
    cfg: &Config,
    bench: &BenchBroker,
    mgmt: Option<&Management>,
    report: &mut Report,
) -> anyhow::Result<()> {
    let pad = pad_for(cfg.size);
    let queue = bench.queue(RETRY_STEM);
    let before = counters(&queue);
    let mut retry = Vec::new();
    let mut happy = Vec::new();
    for r in 0..cfg.rounds {
        for k in 0..2 {
            if (k + r) % 2 == 0 {
                let rate = retry_once(cfg, bench, &pad).await?;
                report.note(format!(
                    "retry round {}/{}: fail-once {} tasks/s",
                    r + 1,
                    cfg.rounds,
                    thousands(rate)
                ));
                retry.push(rate);
            } else {
                let rate = warren_once(cfg, bench, &pad, Variant::Defaults).await?;
                report.note(format!(
                    "retry round {}/{}: happy path {} tasks/s",
                    r + 1,
                    cfg.rounds,
                    thousands(rate)
                ));
                happy.push(rate);
            }
        }
    }
    let after = counters(&queue);
    let tasks = (cfg.n * cfg.rounds) as f64;
    let per = |a: u64, b: u64| round((a - b) as f64 / tasks, 3);
    let deliveries = per(after.received, before.received);
    let publishes = per(after.retry_confirms, before.retry_confirms);
    let acks = per(
        after.succeeded + after.retried,
        before.succeeded + before.retried,
    );
    // The happy path costs one delivery and one ack per task. The retry
    // path adds a delivery, an ack, a published copy and its confirm; the
    // copy's confirm is the one round trip the worker waits for (before
    // it acks the original).
    let extra = round((deliveries - 1.0) + (acks - 1.0) + 2.0 * publishes, 3);
    let (rm, hm) = (median(&retry), median(&happy));
    let r = ratio(rm, hm);
    let mut section = json!({
        "retry_delays": ["1ms"],
        "delay_queue": bench.names.retry_queue(RETRY_STEM, RETRY_DELAYS[0]),
        "fail_once": { "rates_tasks_per_s": retry.iter().map(|x| round(*x, 1)).collect::<Vec<_>>(), "median_tasks_per_s": round(rm, 1) },
        "happy_path": { "rates_tasks_per_s": happy.iter().map(|x| round(*x, 1)).collect::<Vec<_>>(), "median_tasks_per_s": round(hm, 1) },
        "ratio_fail_once_to_happy": round(r, 4),
        "per_task_from_runtime_counters": {
            "deliveries": deliveries,
            "acks": acks,
            "retry_copies_published_and_confirmed": publishes,
            "extra_broker_messages_vs_happy_path": extra,
            "extra_awaited_round_trips": publishes,
        },
    });
    if let (true, Some(mgmt)) = (cfg.broker_stats, mgmt) {
        let expected = 2 * (cfg.n * cfg.rounds) as u64;
        match broker_counters(mgmt, bench, expected).await {
            Ok((w, d)) => {
                let f = |v: &Value, k: &str| round(v[k].as_u64().unwrap_or(0) as f64 / tasks, 3);
                section["per_task_from_rabbitmq_counters"] = json!({
                    "work_queue_deliveries": f(&w, "deliver_get"),
                    "work_queue_acks": f(&w, "ack"),
                    "work_queue_publishes_in": f(&w, "publish"),
                    "delay_queue_publishes_in": f(&d, "publish"),
                });
                report.note(format!(
                    "retry: RabbitMQ's counters per task: {} deliveries, {} acks, {} messages into the work queue, {} into the delay queue",
                    f(&w, "deliver_get"),
                    f(&w, "ack"),
                    f(&w, "publish"),
                    f(&d, "publish")
                ));
            }
            Err(e) => report.note(format!(
                "retry: RabbitMQ's per-queue counters unavailable: {e}"
            )),
        }
    }
    bench.purge(RETRY_STEM).await?;
    report.sections.insert("retry".to_owned(), section);
    report.row(
        "retry",
        format!(
            "tasks/s, fail once (Warren) vs happy path, median of {}",
            cfg.rounds
        ),
        thousands(rm),
        thousands(hm),
        Some(r),
        "",
        None,
    );
    report.row(
        "retry",
        "extra broker messages per task (awaited round trips)",
        format!("{extra:.2} ({publishes:.2})"),
        "0 (0)",
        None,
        "",
        None,
    );
    Ok(())
}
