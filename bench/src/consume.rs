//! Section 1: N no-op tasks through Warren's runtime against a bare lapin
//! consumer, same queue, prefetch and concurrency, alternating per round.
//!
//! Warren runs as a production worker does by default (`Variant::Defaults`):
//! the in-process idempotency store, task lifecycle events, metrics, spans
//! and a JSON log line per task. Two leaner variants show what the optional
//! features cost.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio_util::sync::CancellationToken;
use warren::settings::ConsumerSettings;

use crate::bare::{BareConsumer, Progress};
use crate::broker::BenchBroker;
use crate::config::Config;
use crate::cpu;
use crate::peers::{Peer, noop as peer_noop};
use crate::report::{Report, at_least, thousands};
use crate::stats::{median, ratio, round};
use crate::task::{BINDING, STEM, pad_for};
use crate::warren_side::{InProcess, Options, noop};

/// How long one consume run may take before the bench gives up.
pub fn budget(n: usize) -> Duration {
    Duration::from_secs(60 + n as u64 / 200)
}

/// Which of Warren's optional per-task features are on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// The defaults: idempotency store (memory) and task events on.
    Defaults,
    /// Task events off (`consumer.events = false`).
    EventsOff,
    /// Task events and the idempotency store off: the runtime's floor.
    Lean,
}

impl Variant {
    pub fn key(self) -> &'static str {
        match self {
            Variant::Defaults => "warren",
            Variant::EventsOff => "warren_events_off",
            Variant::Lean => "warren_events_and_idempotency_off",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Variant::Defaults => "Warren defaults",
            Variant::EventsOff => "events off",
            Variant::Lean => "events + idempotency off",
        }
    }

    pub fn idempotency(self) -> bool {
        self != Variant::Lean
    }

    pub fn events(self) -> bool {
        self == Variant::Defaults
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Contender {
    Warren(Variant),
    Bare,
    /// With `--peers`: Celery's or Dramatiq's worker, no-op tasks.
    Peer(Peer),
}

impl Contender {
    fn key(self) -> &'static str {
        match self {
            Contender::Warren(v) => v.key(),
            Contender::Bare => "bare_lapin",
            Contender::Peer(p) => p.as_str(),
        }
    }
}

/// Warren's options for a bench worker on the `bench` queue.
pub fn options(cfg: &Config, variant: Variant) -> Options {
    Options {
        stem: STEM.to_owned(),
        binding_keys: vec![BINDING.to_owned()],
        prefetch: cfg.prefetch,
        concurrency: cfg.concurrency,
        retry_delays: ConsumerSettings::default().retry_delays,
        idempotency: variant.idempotency(),
        events: variant.events(),
    }
}

/// CPU microseconds per message of a consume run: the consumer (this
/// process) and the broker, from start to stop of the consumer.
pub type CpuPerMsg = (Option<f64>, Option<f64>);

/// One Warren consume run over a freshly filled queue: msg/s from the
/// first handler start to the last ack.
pub async fn warren_once(
    cfg: &Config,
    bench: &BenchBroker,
    pad: &str,
    variant: Variant,
) -> anyhow::Result<f64> {
    warren_once_cpu(cfg, bench, pad, variant)
        .await
        .map(|(rate, _)| rate)
}

/// [`warren_once`], with its CPU cost per message.
async fn warren_once_cpu(
    cfg: &Config,
    bench: &BenchBroker,
    pad: &str,
    variant: Variant,
) -> anyhow::Result<(f64, CpuPerMsg)> {
    bench.purge(STEM).await?;
    bench.prefill(STEM, cfg.n, pad).await?;
    let broker = cpu::broker_pid();
    let before = cpu::Reading::now(broker);
    let worker = InProcess::start(bench, &options(cfg, variant), cfg.n, noop());
    let done = worker.wait_done(budget(cfg.n)).await;
    worker.stop().await?;
    let used = cpu::Reading::now(broker).us_per(before, cfg.n);
    let (first, end) = done?;
    Ok((cfg.n as f64 / (end - first).as_secs_f64(), used))
}

/// One bare consume run over a freshly filled queue: msg/s from the first
/// delivery to the last ack.
pub async fn bare_once(
    cfg: &Config,
    bench: &BenchBroker,
    pad: &str,
) -> anyhow::Result<(f64, CpuPerMsg)> {
    bench.purge(STEM).await?;
    bench.prefill(STEM, cfg.n, pad).await?;
    let broker = cpu::broker_pid();
    let before = cpu::Reading::now(broker);
    let consumer = BareConsumer {
        url: bench.url.clone(),
        queue: bench.queue(STEM),
        prefetch: cfg.prefetch,
        concurrency: cfg.concurrency,
    };
    let progress = Arc::new(Progress::default());
    tokio::time::timeout(
        budget(cfg.n),
        consumer.run(
            Some(cfg.n),
            CancellationToken::new(),
            Arc::new(|_| {}),
            progress.clone(),
            None,
        ),
    )
    .await
    .map_err(|_| anyhow::anyhow!("the bare consumer did not finish in time"))??;
    let used = cpu::Reading::now(broker).us_per(before, cfg.n);
    let (first, end) = progress
        .span()
        .ok_or_else(|| anyhow::anyhow!("the bare consumer consumed nothing"))?;
    Ok((cfg.n as f64 / (end - first).as_secs_f64(), used))
}

pub async fn run(cfg: &Config, bench: &BenchBroker, report: &mut Report) -> anyhow::Result<()> {
    let pad = pad_for(cfg.size);
    let variants = [Variant::Defaults, Variant::EventsOff, Variant::Lean];
    let mut contenders = vec![
        Contender::Warren(Variant::Defaults),
        Contender::Bare,
        Contender::Warren(Variant::EventsOff),
        Contender::Warren(Variant::Lean),
    ];
    contenders.extend(cfg.peers.0.iter().map(|p| Contender::Peer(*p)));
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); contenders.len()];
    // Each peer's worker: (peak, idle) resident set of its process tree.
    let mut rss: Vec<Vec<(u64, u64)>> = vec![Vec::new(); contenders.len()];
    // Warren's and bare lapin's CPU per message: (consumer, broker).
    let mut cpus: Vec<Vec<CpuPerMsg>> = vec![Vec::new(); contenders.len()];
    for r in 0..cfg.rounds {
        // Rotate the order each round, so no contender always runs first
        // (or right after the broker's busiest moment).
        for k in 0..contenders.len() {
            let i = (k + r) % contenders.len();
            let rate = match contenders[i] {
                Contender::Warren(v) => {
                    let (rate, used) = warren_once_cpu(cfg, bench, &pad, v).await?;
                    cpus[i].push(used);
                    rate
                }
                Contender::Bare => {
                    let (rate, used) = bare_once(cfg, bench, &pad).await?;
                    cpus[i].push(used);
                    rate
                }
                Contender::Peer(p) => {
                    let run = peer_noop::consume_once(bench, p, cfg.n, budget(cfg.n)).await?;
                    rss[i].push((run.peak_rss_kib, run.idle_rss_kib));
                    run.rate
                }
            };
            report.note(format!(
                "consume round {}/{}: {} {} msg/s",
                r + 1,
                cfg.rounds,
                contenders[i].key(),
                thousands(rate)
            ));
            rates[i].push(rate);
        }
    }
    bench.purge(STEM).await?;
    let median_of = |c: Contender| {
        contenders
            .iter()
            .position(|x| *x == c)
            .map(|i| median(&rates[i]))
            .unwrap_or(f64::NAN)
    };
    let bare = median_of(Contender::Bare);
    let mut section = serde_json::Map::new();
    for (i, c) in contenders.iter().enumerate() {
        let mut figures = json!({
            "rates_msg_per_s": rates[i].iter().map(|x| round(*x, 1)).collect::<Vec<_>>(),
            "median_msg_per_s": round(median(&rates[i]), 1),
        });
        let consumer: Vec<f64> = cpus[i].iter().filter_map(|c| c.0).collect();
        let broker: Vec<f64> = cpus[i].iter().filter_map(|c| c.1).collect();
        // CPU time counts in 10 ms ticks: a run too short to show any (the
        // smoke run's) reports none rather than a 0.
        if median(&consumer) > 0.0 && median(&broker) > 0.0 {
            figures["cpu_us_per_msg"] = json!({
                "source": "utime + stime deltas of /proc/<pid>/stat from the consumer's start to its stop, medians of the rounds",
                "consumer": round(median(&consumer), 1),
                "broker": round(median(&broker), 1),
            });
        }
        section.insert(c.key().to_owned(), figures);
    }
    let label = format!("msg/s, median of {}", cfg.rounds);
    for v in variants {
        let w = median_of(Contender::Warren(v));
        let r = ratio(w, bare);
        section.insert(format!("ratio_{}_to_bare", v.key()), json!(round(r, 4)));
        let (target, met) = if v == Variant::Defaults {
            (">= 0.90", at_least(r, 0.9))
        } else {
            ("", None)
        };
        report.row(
            "consume",
            format!("{label} ({})", v.label()),
            thousands(w),
            thousands(bare),
            Some(r),
            target,
            met,
        );
    }
    let warren = median_of(Contender::Warren(Variant::Defaults));
    for (i, c) in contenders.iter().enumerate() {
        let Contender::Peer(p) = *c else { continue };
        let peer = median(&rates[i]);
        let r = ratio(warren, peer);
        let peak = rss[i].iter().map(|(p, _)| *p).max().unwrap_or(0);
        let idle = rss[i].iter().map(|(_, i)| *i).min().unwrap_or(0);
        section.insert(format!("ratio_warren_to_{p}"), json!(round(r, 2)));
        if let Some(serde_json::Value::Object(o)) = section.get_mut(p.as_str()) {
            o.insert("worker_peak_rss_kib".to_owned(), json!(peak));
            o.insert("worker_idle_rss_kib".to_owned(), json!(idle));
            o.insert(
                "worker".to_owned(),
                json!(match p {
                    Peer::Celery => format!(
                        "celery worker --pool prefork --concurrency {}, acks_late",
                        peer_noop::PROCESSES
                    ),
                    Peer::Dramatiq => format!(
                        "dramatiq --processes {} --threads {}",
                        peer_noop::PROCESSES,
                        peer_noop::DRAMATIQ_THREADS
                    ),
                }),
            );
        }
        report.row(
            "consume",
            format!(
                "{label} (Warren defaults vs {p}; peak RSS {} MiB)",
                peak / 1024
            ),
            thousands(warren),
            thousands(peer),
            Some(r),
            "",
            None,
        );
    }
    section.insert("target_ratio".to_owned(), json!(0.9));
    section.insert("prefetch".to_owned(), json!(cfg.prefetch));
    section.insert("concurrency".to_owned(), json!(cfg.concurrency));
    section.insert("body_bytes".to_owned(), json!(cfg.size));
    report.sections.insert("consume".to_owned(), section.into());
    Ok(())
}
