//! Section 3: at a fixed offered rate, the time from the publish call to
//! the start of the handler, Warren (its producer and its runtime) against
//! bare lapin (producer and consumer), alternating per round.
//!
//! Publishes are scheduled open-loop (the i-th at start + i/rate, each in
//! its own task), so a slow confirm never delays the next publish. The body
//! carries the send time in microseconds; the handler subtracts it from
//! its own clock, the same process's.
//!
//! After the rounds, one more Warren run at the same rate measures the
//! status latency: from a task's end (its `succeeded` event is stamped
//! right after the ack) to the moment the gateway's status view
//! ([`StatusView`], fed by [`events::follow`] exactly as the gateway's is)
//! shows it.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use serde_json::json;
use tokio::sync::oneshot;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use warren::events::{self, StatusView, TaskState};
use warren::{PublishOptions, Publisher};

use crate::bare::{BareConsumer, BarePublisher, Progress};
use crate::broker::BenchBroker;
use crate::config::Config;
use crate::consume::{Variant, budget, options};
use crate::report::Report;
use crate::stats::{percentile, ratio, round};
use crate::task::{BenchBody, STEM, TASK_TYPE, now_us, pad_for};
use crate::warren_side::InProcess;

type Samples = Arc<Mutex<Vec<u64>>>;

fn record(samples: &Samples, sent_at_us: u64) {
    let latency = now_us().saturating_sub(sent_at_us);
    if let Ok(mut s) = samples.lock() {
        s.push(latency);
    }
}

fn take(samples: &Samples) -> Vec<u64> {
    samples
        .lock()
        .map(|mut s| std::mem::take(&mut *s))
        .unwrap_or_default()
}

/// Starts `count` publishes at `rate` per second, each in its own task.
async fn paced<F, Fut>(rate: u32, count: usize, publish: F) -> anyhow::Result<()>
where
    F: Fn(u64) -> Fut,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let start = tokio::time::Instant::now();
    let step = 1.0 / f64::from(rate.max(1));
    let mut set = JoinSet::new();
    for i in 0..count {
        tokio::time::sleep_until(start + Duration::from_secs_f64(i as f64 * step)).await;
        set.spawn(publish(i as u64));
        while let Some(done) = set.try_join_next() {
            done??;
        }
    }
    while let Some(done) = set.join_next().await {
        done??;
    }
    Ok(())
}

async fn warren_once(
    cfg: &Config,
    bench: &BenchBroker,
    pad: &Arc<str>,
    count: usize,
) -> anyhow::Result<Vec<u64>> {
    bench.purge(STEM).await?;
    let samples: Samples = Arc::new(Mutex::new(Vec::with_capacity(count)));
    let s = samples.clone();
    let worker = InProcess::start(
        bench,
        &options(cfg, Variant::Defaults),
        count,
        Arc::new(move |_, task| {
            record(&s, task.sent_at_us);
            Ok(())
        }),
    );
    worker.wait_ready(Duration::from_secs(30)).await?;
    let connection = warren::broker::connect(&bench.settings(), "warren-bench-producer").await?;
    let publisher = Publisher::on(&connection, bench.names.clone()).await?;
    let published = paced(cfg.rate, count, |seq| {
        let publisher = publisher.clone();
        let pad = pad.clone();
        async move {
            let body = BenchBody {
                seq,
                sent_at_us: now_us(),
                pad: &pad,
            };
            publisher
                .publish_task(TASK_TYPE, &body, PublishOptions::default())
                .await?;
            Ok(())
        }
    })
    .await;
    let done = match published {
        Ok(()) => worker.wait_done(budget(count)).await.map(|_| ()),
        Err(e) => Err(e),
    };
    worker.stop().await?;
    let _ = connection.close(200, "bench done".into()).await;
    done?;
    Ok(take(&samples))
}

async fn bare_once(
    cfg: &Config,
    bench: &BenchBroker,
    pad: &Arc<str>,
    count: usize,
) -> anyhow::Result<Vec<u64>> {
    bench.purge(STEM).await?;
    let samples: Samples = Arc::new(Mutex::new(Vec::with_capacity(count)));
    let s = samples.clone();
    let consumer = BareConsumer {
        url: bench.url.clone(),
        queue: bench.queue(STEM),
        prefetch: cfg.prefetch,
        concurrency: cfg.concurrency,
    };
    let (ready_tx, ready_rx) = oneshot::channel();
    let progress = Arc::new(Progress::default());
    let stop = CancellationToken::new();
    let consuming = tokio::spawn({
        let stop = stop.clone();
        let progress = progress.clone();
        async move {
            consumer
                .run(
                    Some(count),
                    stop,
                    Arc::new(move |task| record(&s, task.sent_at_us)),
                    progress,
                    Some(ready_tx),
                )
                .await
        }
    });
    ready_rx
        .await
        .map_err(|_| anyhow::anyhow!("the bare consumer did not start"))?;
    let publisher =
        Arc::new(BarePublisher::connect(&bench.url, &bench.names.tasks_exchange()).await?);
    let published = paced(cfg.rate, count, |seq| {
        let publisher = publisher.clone();
        let pad = pad.clone();
        async move {
            let body = BenchBody {
                seq,
                sent_at_us: now_us(),
                pad: &pad,
            };
            publisher.publish(&body).await
        }
    })
    .await;
    let finished = match published {
        Ok(()) => tokio::time::timeout(budget(count), consuming).await,
        Err(e) => {
            stop.cancel();
            return Err(e);
        }
    };
    publisher.close().await;
    match finished {
        Ok(joined) => joined??,
        Err(_) => {
            stop.cancel();
            anyhow::bail!("the bare consumer did not receive every message in time");
        }
    }
    Ok(take(&samples))
}

/// One Warren run with a reader of the events stream beside it: the
/// status latency of each task, in microseconds.
async fn status_once(
    cfg: &Config,
    bench: &BenchBroker,
    pad: &Arc<str>,
    count: usize,
) -> anyhow::Result<Vec<u64>> {
    // A fresh stream: the reader starts at its first offset, as a gateway
    // does, and finds only this run's events.
    bench.reset_events_stream().await?;
    let connection = warren::broker::connect(&bench.settings(), "warren-bench-status").await?;
    let stream = events::follow(&connection, &bench.names).await?;
    let reader = tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        let mut view = StatusView::new(count + 1);
        let mut samples = Vec::with_capacity(count);
        while samples.len() < count {
            let Some(Ok(streamed)) = stream.next().await else {
                break;
            };
            let (state, at) = (streamed.event.state, streamed.event.at);
            view.apply(streamed);
            if state == TaskState::Succeeded {
                let shown = chrono::Utc::now() - at;
                samples.push(u64::try_from(shown.num_microseconds().unwrap_or(0)).unwrap_or(0));
            }
        }
        samples
    });
    let ran = warren_once(cfg, bench, pad, count).await;
    let read = tokio::time::timeout(Duration::from_secs(30), reader).await;
    let _ = connection.close(200, "bench done".into()).await;
    ran?;
    let samples = read
        .map_err(|_| anyhow::anyhow!("the status view did not see every task end within 30 s"))??;
    anyhow::ensure!(
        samples.len() == count,
        "the status view saw {} of {count} task ends",
        samples.len()
    );
    Ok(samples)
}

/// Adds one round's samples to `all`; the round's p99, in milliseconds.
fn extend(all: &mut Vec<u64>, mut round_samples: Vec<u64>) -> f64 {
    round_samples.sort_unstable();
    let p99 = round(percentile(&round_samples, 99.0) as f64 / 1000.0, 3);
    all.extend(round_samples);
    p99
}

fn summary(sorted: &[u64]) -> serde_json::Value {
    let ms = |us: u64| round(us as f64 / 1000.0, 3);
    json!({
        "samples": sorted.len(),
        "p50_ms": ms(percentile(sorted, 50.0)),
        "p99_ms": ms(percentile(sorted, 99.0)),
        "p99_9_ms": ms(percentile(sorted, 99.9)),
        "max_ms": ms(sorted.last().copied().unwrap_or(0)),
    })
}

pub async fn run(cfg: &Config, bench: &BenchBroker, report: &mut Report) -> anyhow::Result<()> {
    let pad: Arc<str> = pad_for(cfg.size).into();
    let total = ((f64::from(cfg.rate) * cfg.duration.as_secs_f64()) as usize).max(1);
    let per_round = (total / cfg.rounds.max(1)).max(1);
    let mut warren = Vec::with_capacity(total);
    let mut bare = Vec::with_capacity(total);
    // Each round's p99 as well: a stall in one round shows as that round's
    // outlier, not only as a pooled p99 that moved.
    let (mut warren_p99s, mut bare_p99s) = (Vec::new(), Vec::new());
    for r in 0..cfg.rounds {
        for k in 0..2 {
            if (k + r) % 2 == 0 {
                let p99 = extend(&mut warren, warren_once(cfg, bench, &pad, per_round).await?);
                warren_p99s.push(p99);
                report.note(format!(
                    "latency round {}/{}: warren {per_round} tasks at {}/s, p99 {p99:.2} ms",
                    r + 1,
                    cfg.rounds,
                    cfg.rate
                ));
            } else {
                let p99 = extend(&mut bare, bare_once(cfg, bench, &pad, per_round).await?);
                bare_p99s.push(p99);
                report.note(format!(
                    "latency round {}/{}: bare_lapin {per_round} tasks at {}/s, p99 {p99:.2} ms",
                    r + 1,
                    cfg.rounds,
                    cfg.rate
                ));
            }
        }
    }
    let mut status = status_once(cfg, bench, &pad, per_round).await?;
    report.note(format!(
        "latency: status view of {per_round} tasks at {}/s",
        cfg.rate
    ));
    bench.purge(STEM).await?;
    warren.sort_unstable();
    bare.sort_unstable();
    status.sort_unstable();
    let mut w = summary(&warren);
    let mut b = summary(&bare);
    w["p99_ms_by_round"] = json!(warren_p99s);
    b["p99_ms_by_round"] = json!(bare_p99s);
    let st = summary(&status);
    let p99 = w["p99_ms"].as_f64().unwrap_or(f64::NAN);
    let p99_ratio = ratio(p99, b["p99_ms"].as_f64().unwrap_or(f64::NAN));
    report.sections.insert(
        "latency".to_owned(),
        json!({
            "rate_msg_per_s": cfg.rate,
            "duration_s_per_contender": cfg.duration.as_secs_f64(),
            "warren": w,
            "bare_lapin": b,
            "ratio_p99_warren_to_bare": round(p99_ratio, 4),
            "ratio_p99_9_warren_to_bare": round(ratio(
                w["p99_9_ms"].as_f64().unwrap_or(f64::NAN),
                b["p99_9_ms"].as_f64().unwrap_or(f64::NAN),
            ), 4),
            "target_ratio_p99": TARGET_P99_RATIO,
            "status_latency": st,
        }),
    );
    let fmt =
        |v: &serde_json::Value, k: &str| format!("{:.2} ms", v[k].as_f64().unwrap_or(f64::NAN));
    let label = format!("publish -> handler at {}/s", cfg.rate);
    report.row(
        "latency",
        format!("{label}, p50"),
        fmt(&w, "p50_ms"),
        fmt(&b, "p50_ms"),
        Some(ratio(
            w["p50_ms"].as_f64().unwrap_or(0.0),
            b["p50_ms"].as_f64().unwrap_or(0.0),
        )),
        "",
        None,
    );
    report.row(
        "latency",
        format!("{label}, p99"),
        fmt(&w, "p99_ms"),
        fmt(&b, "p99_ms"),
        Some(p99_ratio),
        "<= 1.5x",
        at_most(p99_ratio, TARGET_P99_RATIO),
    );
    report.row(
        "latency",
        format!("{label}, p99.9"),
        fmt(&w, "p99_9_ms"),
        fmt(&b, "p99_9_ms"),
        Some(ratio(
            w["p99_9_ms"].as_f64().unwrap_or(0.0),
            b["p99_9_ms"].as_f64().unwrap_or(0.0),
        )),
        "",
        None,
    );
    for (name, key) in [("p50", "p50_ms"), ("p99", "p99_ms"), ("p99.9", "p99_9_ms")] {
        report.row(
            "latency",
            format!("task end -> status view at {}/s, {name}", cfg.rate),
            fmt(&st, key),
            "-".to_owned(),
            None,
            "",
            None,
        );
    }
    Ok(())
}

/// Warren's p99 over bare lapin's, at most.
const TARGET_P99_RATIO: f64 = 1.5;

fn at_most(r: f64, target: f64) -> Option<bool> {
    r.is_finite().then_some(r <= target)
}
