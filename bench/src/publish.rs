//! Section 2: Warren's confirmed producer against a bare lapin confirmed
//! producer: same N, body, properties and publishes in flight, each
//! publish waiting for its own confirm (as a request handler publishing a
//! task does), alternating per round.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use serde_json::json;
use tokio::task::JoinSet;
use warren::{PublishOptions, Publisher};

use crate::bare::BarePublisher;
use crate::broker::BenchBroker;
use crate::config::Config;
use crate::peers::noop as peer_noop;
use crate::report::{Report, at_least, thousands};
use crate::stats::{median, ratio, round};
use crate::task::{BenchBody, STEM, TASK_TYPE, pad_for};
use crate::warren_side::init_telemetry;

/// Publishes `n` bodies with `concurrency` publishes in flight, each
/// awaiting its confirm; `publish` publishes the body with sequence number
/// `seq`. Returns the rate in msg/s.
async fn publish_n<F, Fut>(n: usize, concurrency: usize, publish: F) -> anyhow::Result<f64>
where
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut set = JoinSet::new();
    for _ in 0..concurrency.max(1) {
        let publish = publish.clone();
        let next = next.clone();
        set.spawn(async move {
            loop {
                let seq = next.fetch_add(1, Ordering::Relaxed);
                if seq >= n {
                    return anyhow::Ok(());
                }
                publish(seq as u64).await?;
            }
        });
    }
    while let Some(r) = set.join_next().await {
        r??;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

async fn warren_once(cfg: &Config, bench: &BenchBroker, pad: &Arc<str>) -> anyhow::Result<f64> {
    init_telemetry();
    let connection = warren::broker::connect(&bench.settings(), "warren-bench-producer").await?;
    // In an Arc like the bare publisher, so both sides pay the same per
    // publish to reach it.
    let publisher = Arc::new(Publisher::on(&connection, bench.names.clone()).await?);
    let pad = pad.clone();
    let rate = publish_n(cfg.n, cfg.publish_concurrency, move |seq| {
        let (publisher, pad) = (publisher.clone(), pad.clone());
        async move {
            let body = BenchBody {
                seq,
                sent_at_us: 0,
                pad: &pad,
            };
            publisher
                .publish_task(TASK_TYPE, &body, PublishOptions::default())
                .await?;
            Ok(())
        }
    })
    .await?;
    let _ = connection.close(200, "bench done".into()).await;
    Ok(rate)
}

async fn bare_once(cfg: &Config, bench: &BenchBroker, pad: &Arc<str>) -> anyhow::Result<f64> {
    let publisher =
        Arc::new(BarePublisher::connect(&bench.url, &bench.names.tasks_exchange()).await?);
    let pad = pad.clone();
    let driver = publisher.clone();
    let rate = publish_n(cfg.n, cfg.publish_concurrency, move |seq| {
        let (publisher, pad) = (driver.clone(), pad.clone());
        async move {
            let body = BenchBody {
                seq,
                sent_at_us: 0,
                pad: &pad,
            };
            publisher.publish(&body).await?;
            Ok(())
        }
    })
    .await?;
    publisher.close().await;
    Ok(rate)
}

pub async fn run(cfg: &Config, bench: &BenchBroker, report: &mut Report) -> anyhow::Result<()> {
    let pad: Arc<str> = pad_for(cfg.size).into();
    let mut warren = Vec::new();
    let mut bare = Vec::new();
    for r in 0..cfg.rounds {
        for k in 0..2 {
            bench.purge(STEM).await?;
            if (k + r) % 2 == 0 {
                let rate = warren_once(cfg, bench, &pad).await?;
                report.note(format!(
                    "publish round {}/{}: warren {} msg/s",
                    r + 1,
                    cfg.rounds,
                    thousands(rate)
                ));
                warren.push(rate);
            } else {
                let rate = bare_once(cfg, bench, &pad).await?;
                report.note(format!(
                    "publish round {}/{}: bare_lapin {} msg/s",
                    r + 1,
                    cfg.rounds,
                    thousands(rate)
                ));
                bare.push(rate);
            }
        }
    }
    // With `--peers`: each peer's own publisher, in the same rounds.
    let mut peers: Vec<Vec<f64>> = vec![Vec::new(); cfg.peers.0.len()];
    for r in 0..cfg.rounds {
        for (k, peer) in cfg.peers.0.iter().enumerate() {
            let rate = peer_noop::publish_once(bench, *peer, cfg.n).await?;
            report.note(format!(
                "publish round {}/{}: {peer} {} msg/s (unconfirmed)",
                r + 1,
                cfg.rounds,
                thousands(rate)
            ));
            peers[k].push(rate);
        }
    }
    bench.purge(STEM).await?;
    let (w, b) = (median(&warren), median(&bare));
    let r = ratio(w, b);
    let mut section = json!({
            "warren": { "rates_msg_per_s": warren.iter().map(|x| round(*x, 1)).collect::<Vec<_>>(), "median_msg_per_s": round(w, 1) },
            "bare_lapin": { "rates_msg_per_s": bare.iter().map(|x| round(*x, 1)).collect::<Vec<_>>(), "median_msg_per_s": round(b, 1) },
            "ratio_warren_to_bare": round(r, 4),
            "target_ratio": 0.95,
            "publishes_in_flight": cfg.publish_concurrency,
            "body_bytes": cfg.size,
    });
    for (k, peer) in cfg.peers.0.iter().enumerate() {
        let p = median(&peers[k]);
        let r = ratio(w, p);
        section[peer.as_str()] = json!({
            "rates_msg_per_s": peers[k].iter().map(|x| round(*x, 1)).collect::<Vec<_>>(),
            "median_msg_per_s": round(p, 1),
            "publisher": "its own, one at a time, unconfirmed (the framework's default)",
        });
        section[format!("ratio_warren_to_{peer}")] = json!(round(r, 2));
        report.row(
            "publish",
            format!(
                "msg/s, median of {} (Warren confirmed vs {peer} unconfirmed)",
                cfg.rounds
            ),
            thousands(w),
            thousands(p),
            Some(r),
            "",
            None,
        );
    }
    report.sections.insert("publish".to_owned(), section);
    report.row(
        "publish",
        format!("confirmed msg/s, median of {}", cfg.rounds),
        thousands(w),
        thousands(b),
        Some(r),
        ">= 0.95",
        at_least(r, 0.95),
    );
    Ok(())
}
