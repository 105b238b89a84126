//! Section 4: emails per second into a local SMTP server, Warren's mailer
//! (the `email.send` handler with its pooled SMTP transport) against one
//! fresh SMTP connection per message, as the classic aiosmtplib tutorial
//! does, written here with lettre. Same N, same emails in flight,
//! alternating per round.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use email_worker::{EmailSettings, Mailer, SmtpSettings, SmtpTls, TransportKind};
use lettre::Message;
use lettre::transport::smtp::client::AsyncSmtpConnection;
use lettre::transport::smtp::extension::ClientId;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tokio::task::JoinSet;
use warren::{Task, TaskContext};
use warren_tasks::email::SendEmail;

use crate::config::Config;
use crate::report::{Report, thousands};
use crate::smtp_sink::SmtpSink;
use crate::stats::{median, ratio, round};
use crate::warren_side::init_telemetry;

const FROM: &str = "Warren Bench <bench@warren.test>";
const TO: &str = "rcpt@warren.test";
const SUBJECT: &str = "Warren bench";
const TEXT: &str = "Hello,\n\nthis is one of the emails of Warren's benchmark.\n";

/// The task body a producer would send, decoded per email as the runtime
/// does.
fn task_body() -> Vec<u8> {
    serde_json::to_vec(&json!({ "to": TO, "subject": SUBJECT, "text": TEXT })).unwrap_or_default()
}

fn mailer(port: u16, pool: u32) -> anyhow::Result<Mailer> {
    let settings = EmailSettings {
        transport: TransportKind::Smtp,
        default_from: FROM.to_owned(),
        templates_dir: "/nonexistent".into(),
        smtp: SmtpSettings {
            host: "127.0.0.1".to_owned(),
            port: Some(port),
            tls: SmtpTls::None,
            pool_max_size: pool,
            ..SmtpSettings::default()
        },
        ..EmailSettings::default()
    };
    Ok(Mailer::from_settings(&settings)?)
}

async fn warren_once(n: usize, concurrency: usize, port: u16) -> anyhow::Result<f64> {
    init_telemetry();
    let mailer = mailer(port, concurrency as u32)?;
    let body: Arc<[u8]> = task_body().into();
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut set = JoinSet::new();
    for _ in 0..concurrency.max(1) {
        let (mailer, next, body) = (mailer.clone(), next.clone(), body.clone());
        set.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return anyhow::Ok(());
                }
                let ctx = TaskContext {
                    id: format!("bench-{i}"),
                    task_type: "email.send".to_owned(),
                    attempt: 1,
                    max_attempts: 6,
                    priority: 0,
                    published_at: None,
                    redelivered: false,
                };
                let task = SendEmail::decode(&body)?;
                mailer.send(&ctx, task).await?;
            }
        });
    }
    while let Some(r) = set.join_next().await {
        r??;
    }
    let elapsed = start.elapsed();
    mailer.close().await;
    Ok(n as f64 / elapsed.as_secs_f64())
}

async fn per_message_once(n: usize, concurrency: usize, port: u16) -> anyhow::Result<f64> {
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut set = JoinSet::new();
    for _ in 0..concurrency.max(1) {
        let next = next.clone();
        set.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return anyhow::Ok(());
                }
                let message = Message::builder()
                    .from(FROM.parse()?)
                    .to(TO.parse()?)
                    .subject(SUBJECT)
                    .message_id(Some(format!("<bench-{i}@warren.test>")))
                    .body(TEXT.to_owned())?;
                let mut connection = AsyncSmtpConnection::connect_tokio1(
                    ("127.0.0.1", port),
                    Some(Duration::from_secs(10)),
                    &ClientId::default(),
                    None,
                    None,
                )
                .await?;
                connection
                    .send(message.envelope(), &message.formatted())
                    .await?;
                connection.quit().await?;
            }
        });
    }
    while let Some(r) = set.join_next().await {
        r??;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// The Python test sink (`tests/smtp_sink.py`, aiosmtpd), drained in the
/// background; killed on drop.
struct PythonSink {
    port: u16,
    _child: tokio::process::Child,
}

async fn python_sink() -> anyhow::Result<PythonSink> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/smtp_sink.py");
    let mut child = Command::new("/usr/bin/python3")
        .args([script, "--port", "0"])
        .stdout(std::process::Stdio::piped())
        .stdin(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("could not start tests/smtp_sink.py with /usr/bin/python3")?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let first = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .context("the Python SMTP sink did not start")??
        .context("the Python SMTP sink exited")?;
    let ready: serde_json::Value = serde_json::from_str(&first)?;
    let port = ready["port"]
        .as_u64()
        .context("no port from the Python sink")? as u16;
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok(PythonSink {
        port,
        _child: child,
    })
}

struct Outcome {
    warren: Vec<f64>,
    per_message: Vec<f64>,
}

async fn measure(
    cfg: &Config,
    report: &mut Report,
    port: u16,
    sink: &str,
    n: usize,
    check: Option<&SmtpSink>,
) -> anyhow::Result<Outcome> {
    let mut out = Outcome {
        warren: Vec::new(),
        per_message: Vec::new(),
    };
    for r in 0..cfg.rounds {
        for k in 0..2 {
            let before = check.map(SmtpSink::received);
            let (who, rate) = if (k + r) % 2 == 0 {
                let rate = warren_once(n, cfg.email_concurrency, port).await?;
                out.warren.push(rate);
                ("warren_pool", rate)
            } else {
                let rate = per_message_once(n, cfg.email_concurrency, port).await?;
                out.per_message.push(rate);
                ("connection_per_message", rate)
            };
            if let (Some(sink), Some(before)) = (check, before) {
                let got = sink.received() - before;
                if got != n as u64 {
                    bail!("the SMTP sink received {got} of {n} emails from {who}");
                }
            }
            report.note(format!(
                "email ({sink} sink) round {}/{}: {who} {} emails/s",
                r + 1,
                cfg.rounds,
                thousands(rate)
            ));
        }
    }
    Ok(out)
}

fn rates(v: &[f64]) -> Vec<f64> {
    v.iter().map(|x| round(*x, 1)).collect()
}

/// Emails per run against sinks that stall each message for a delayed ACK:
/// enough for a median, not so many that the run takes minutes.
const SLOW_SINK_EMAILS: usize = 1_000;

pub async fn run(cfg: &Config, report: &mut Report) -> anyhow::Result<()> {
    // The client's own cost: a sink that ACKs at once.
    let sink = SmtpSink::start(true)?;
    let connections_before = sink.connections();
    let fast = measure(
        cfg,
        report,
        sink.port,
        "rust quick-ack",
        cfg.email_n,
        Some(&sink),
    )
    .await?;
    let connections = sink.connections() - connections_before;
    drop(sink);
    // What a stock Linux MTA does: delayed ACKs.
    let stock_n = cfg.email_n.min(SLOW_SINK_EMAILS);
    let sink = SmtpSink::start(false)?;
    let stock = measure(
        cfg,
        report,
        sink.port,
        "rust stock-TCP",
        stock_n,
        Some(&sink),
    )
    .await?;
    drop(sink);
    let (w, b) = (median(&fast.warren), median(&fast.per_message));
    let (sw, sb) = (median(&stock.warren), median(&stock.per_message));
    let r = ratio(w, b);
    let mut section = json!({
        "emails": cfg.email_n,
        "in_flight": cfg.email_concurrency,
        "quick_ack_sink": {
            "sink": "bench/src/smtp_sink.rs with TCP_QUICKACK: measures the SMTP client",
            "emails": cfg.email_n,
            "warren_pool": { "rates_per_s": rates(&fast.warren), "median_per_s": round(w, 1) },
            "connection_per_message": { "rates_per_s": rates(&fast.per_message), "median_per_s": round(b, 1) },
            "ratio_pool_to_per_message": round(r, 4),
            "smtp_connections_opened": connections,
        },
        "stock_tcp_sink": {
            "sink": "bench/src/smtp_sink.rs with the kernel's delayed ACKs, as a stock Linux MTA",
            "emails": stock_n,
            "warren_pool": { "rates_per_s": rates(&stock.warren), "median_per_s": round(sw, 1) },
            "connection_per_message": { "rates_per_s": rates(&stock.per_message), "median_per_s": round(sb, 1) },
            "ratio_pool_to_per_message": round(ratio(sw, sb), 4),
            "seconds_per_email_per_connection_warren": round(cfg.email_concurrency as f64 / sw, 4),
        },
    });
    report.row(
        "email",
        format!("emails/s, quick-ACK SMTP sink, median of {}", cfg.rounds),
        thousands(w),
        thousands(b),
        Some(r),
        "(pool vs 1 conn/msg)",
        None,
    );
    report.row(
        "email",
        "emails/s, stock-TCP SMTP sink (delayed ACK)",
        thousands(sw),
        thousands(sb),
        Some(ratio(sw, sb)),
        "",
        None,
    );
    if cfg.python_sink {
        let py = python_sink().await?;
        let n = cfg.email_n.min(SLOW_SINK_EMAILS);
        let out = measure(cfg, report, py.port, "python aiosmtpd", n, None).await?;
        let (pw, pb) = (median(&out.warren), median(&out.per_message));
        section["python_sink"] = json!({
            "sink": "tests/smtp_sink.py (aiosmtpd)",
            "emails": n,
            "warren_pool": { "rates_per_s": rates(&out.warren), "median_per_s": round(pw, 1) },
            "connection_per_message": { "rates_per_s": rates(&out.per_message), "median_per_s": round(pb, 1) },
            "ratio_pool_to_per_message": round(ratio(pw, pb), 4),
        });
        report.row(
            "email",
            "emails/s, aiosmtpd sink (tests/smtp_sink.py)",
            thousands(pw),
            thousands(pb),
            Some(ratio(pw, pb)),
            "",
            None,
        );
    }
    report.sections.insert("email".to_owned(), section);
    Ok(())
}
