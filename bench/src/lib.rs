//! Warren's benchmarks: every figure is a ratio against a baseline measured
//! in the same run, on the same broker, alternating round by round, so the
//! figure holds on a noisy machine.
//!
//! Sections: [`consume`] (Warren's runtime against a bare lapin consumer),
//! [`publish`] (Warren's confirmed producer against a bare one),
//! [`latency`] (publish to handler start at a fixed rate), [`email`]
//! (the email worker end to end into Postfix's `smtp-sink` and aiosmtpd,
//! against `smtp-source` and, with `--peers`, Celery), [`process`] (peak RSS
//! of a worker process; one against two replicas) and [`retry`] (the
//! fail-once path). Everything lives in a namespace of its own
//! (`bench-<random>`), deleted at the end.

pub mod bare;
pub mod broker;
pub mod config;
pub mod consume;
pub mod cpu;
pub mod email;
pub mod latency;
pub mod peers;
pub mod process;
pub mod publish;
pub mod report;
pub mod retry;
pub mod smtp_sink;
pub mod stats;
pub mod task;
pub mod thumbnails;
pub mod warren_side;

use serde_json::{Map, Value, json};

pub use config::{Config, Section};
pub use report::Report;

use broker::{BenchBroker, Management};

/// Runs the configured sections and returns every figure. The namespace
/// is deleted whatever happens, ctrl-c included.
pub async fn run(cfg: &Config) -> anyhow::Result<Report> {
    let mut report = Report::default();
    let mgmt = Management::new(&cfg.management_url, &cfg.amqp_url).ok();
    report.meta = meta(cfg, mgmt.as_ref()).await;
    let bench = BenchBroker::new(&cfg.amqp_url).await?;
    eprintln!("Benchmarking in namespace {}.", bench.namespace());
    let result = tokio::select! {
        r = sections(cfg, &bench, mgmt.as_ref(), &mut report) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    let cleaned = bench.cleanup().await;
    result?;
    cleaned?;
    Ok(report)
}

async fn sections(
    cfg: &Config,
    bench: &BenchBroker,
    mgmt: Option<&Management>,
    report: &mut Report,
) -> anyhow::Result<()> {
    for section in Section::ALL {
        if !cfg.runs(section) {
            continue;
        }
        eprintln!("Section {section} ...");
        let warnings_before = warren_side::unexpected_warnings();
        match section {
            Section::Consume => consume::run(cfg, bench, report).await?,
            Section::Publish => publish::run(cfg, bench, report).await?,
            Section::Latency => latency::run(cfg, bench, report).await?,
            Section::Email => email::run(cfg, bench, report).await?,
            Section::Memory => process::memory(cfg, bench, report).await?,
            Section::Replicas => process::replicas(cfg, bench, report).await?,
            Section::Retry => retry::run(cfg, bench, mgmt, report).await?,
            Section::Thumbnails => thumbnails::run(cfg, bench, report).await?,
        }
        let warnings = warren_side::unexpected_warnings() - warnings_before;
        if warnings > 0 {
            report.note(format!(
                "{section}: the in-process runtime logged {warnings} unexpected warnings or errors (copied to stderr)"
            ));
        }
        if let Some(Value::Object(s)) = report.sections.get_mut(section.as_str()) {
            s.insert("unexpected_runtime_warnings".to_owned(), json!(warnings));
        }
    }
    Ok(())
}

/// The machine, the broker, the revision and the settings of this run.
async fn meta(cfg: &Config, mgmt: Option<&Management>) -> Map<String, Value> {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_owned();
    let loadavg = std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ");
    let (rabbit, erlang) = match mgmt {
        Some(m) => m.versions().await.ok(),
        None => None,
    }
    .unwrap_or_else(|| (rabbitmqctl_version(), "unknown".to_owned()));
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .arg("-C")
            .arg(root)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    let revision = git(&["rev-parse", "HEAD"]).unwrap_or_else(|| "unknown".to_owned());
    let dirty =
        git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    let mut m = Map::new();
    m.insert("cores".into(), json!(cores));
    m.insert(
        "memory_gib".into(),
        json!(stats::round(mem_kib as f64 / 1024.0 / 1024.0, 1)),
    );
    m.insert("cpu_model".into(), json!(cpu));
    m.insert("kernel".into(), json!(kernel));
    m.insert("loadavg_at_start".into(), json!(loadavg));
    m.insert("rabbitmq_version".into(), json!(rabbit));
    m.insert("erlang_version".into(), json!(erlang));
    m.insert("git_revision".into(), json!(revision));
    m.insert("git_dirty".into(), json!(dirty));
    m.insert("timestamp".into(), json!(chrono::Utc::now().to_rfc3339()));
    m.insert(
        "profile".into(),
        json!(if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }),
    );
    m.insert(
        "settings".into(),
        json!({
            "n": cfg.n,
            "rounds": cfg.rounds,
            "latency_rate_msg_per_s": cfg.rate,
            "latency_duration_s": cfg.duration.as_secs_f64(),
            "prefetch": cfg.prefetch,
            "concurrency": cfg.concurrency,
            "body_bytes": cfg.size,
            "publishes_in_flight": cfg.publish_concurrency,
            "email_n": cfg.email_n,
            "emails_in_flight": cfg.email_concurrency,
            "email_memory_n": cfg.email_memory_n,
            "thumbnails_n": cfg.thumbnails_n,
            "peers": cfg.peers.0.iter().map(|p| p.as_str()).collect::<Vec<_>>(),
            "smoke": cfg.smoke,
            "sections": cfg.sections.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
            "warren": "Worker with its defaults except prefetch and concurrency: in-process idempotency store (backend memory), Prometheus metrics, OpenTelemetry spans (no exporter), JSON log line per task at info (written to /dev/null in process)",
        }),
    );
    m
}

fn rabbitmqctl_version() -> String {
    std::process::Command::new("rabbitmqctl")
        .arg("version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".to_owned())
}
