//! The extra line: the SMTP client's own cost, against the bench's own sink
//! that ACKs every TCP segment at once (`TCP_QUICKACK`), which a real server
//! does not. Warren's mailer in process (its pool) against lettre with one
//! fresh connection per message, same N and emails in flight, alternating
//! per round.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use email_worker::{EmailSettings, Mailer, SmtpSettings, SmtpTls, TransportKind};
use lettre::Message;
use lettre::transport::smtp::client::AsyncSmtpConnection;
use lettre::transport::smtp::extension::ClientId;
use serde_json::json;
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
                let mut ctx = TaskContext::new(format!("bench-{i}"), "email.send");
                ctx.max_attempts = 6;
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

/// Runs the quick-ACK comparison; returns its JSON and adds its row.
pub async fn run(cfg: &Config, report: &mut Report) -> anyhow::Result<serde_json::Value> {
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
    let (w, b) = (median(&fast.warren), median(&fast.per_message));
    let r = ratio(w, b);
    report.row(
        "email",
        format!(
            "emails/s, extra: quick-ACK sink (not a real server), in process, median of {}",
            cfg.rounds
        ),
        thousands(w),
        thousands(b),
        Some(r),
        "(pool vs lettre 1 conn/msg)",
        None,
    );
    Ok(json!({
        "sink": "bench/src/smtp_sink.rs with TCP_QUICKACK: measures the SMTP client, not a real server",
        "emails": cfg.email_n,
        "warren_pool": { "rates_per_s": rates(&fast.warren), "median_per_s": round(w, 1) },
        "connection_per_message": { "rates_per_s": rates(&fast.per_message), "median_per_s": round(b, 1) },
        "ratio_pool_to_per_message": round(r, 4),
        "smtp_connections_opened": connections,
    }))
}
