//! The email worker on the wire: Postfix's own `smtp-sink`, connection reuse
//! counted at the server, `421` back-pressure, and `PIPELINING` observed in
//! the server's reads. Real worker processes, the real RabbitMQ, real SMTP
//! servers over TCP; no rate is asserted (rates belong to the bench).
//!
//! Servers: `/usr/sbin/smtp-sink` (Debian's `postfix` package, installed
//! unconfigured by `scripts/install-postfix-tools`, which `scripts/prepare`
//! runs) and `tests/smtp_wire_server.py` (aiosmtpd, reporting connections,
//! refusals and reads).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use warren::PublishOptions;
use warren_tests::broker::TestBroker;
use warren_tests::ops::{http_get, sample, sample_or_zero};
use warren_tests::smtp_tls::WireServer;
use warren_tests::worker::{WorkerProcess, email_env, with};

const WAIT: Duration = Duration::from_secs(120);
const SMTP_SINK: &str = "/usr/sbin/smtp-sink";

/// Waits until the wire server has accepted `n` messages.
async fn wait_for_messages(server: &WireServer, n: usize) -> anyhow::Result<Vec<Value>> {
    server.wait_for("message", n, WAIT).await
}

fn rcpt(prefix: &str) -> String {
    format!("{prefix}-{}@example.com", uuid::Uuid::new_v4().simple())
}

/// Publishes `n` plain emails to `to`; returns their task ids.
async fn publish_emails(broker: &TestBroker, to: &str, cc: Option<&str>, n: usize) -> Vec<String> {
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let mut body = json!({
            "to": to,
            "subject": format!("Wire test {i}"),
            "text": format!("Hello,\n.\nline starting with a dot above; message {i}.\n"),
        });
        if let Some(cc) = cc {
            body["cc"] = json!(cc);
        }
        ids.push(
            broker
                .publish("email.send", &body, PublishOptions::default())
                .await
                .unwrap(),
        );
    }
    ids
}

async fn metrics(worker: &WorkerProcess) -> String {
    let addr = worker.ops_addr().await.unwrap();
    let (status, body) = http_get(addr, "/metrics").await.unwrap();
    assert_eq!(status, 200);
    body
}

async fn worker_for(
    broker: &TestBroker,
    port: u16,
    overrides: &[(&'static str, &str)],
) -> WorkerProcess {
    let env = with(email_env(broker.namespace(), port), overrides);
    let worker = WorkerProcess::email(&env).await.expect("worker");
    worker.wait_ready().await.expect("worker ready");
    worker
}

#[tokio::test]
async fn postfix_smtp_sink_accepts_1000_emails() {
    const N: usize = 1_000;
    assert!(
        Path::new(SMTP_SINK).exists(),
        "{SMTP_SINK} is missing: run scripts/prepare (it installs Debian's postfix, unconfigured)"
    );
    let dumps = tempfile::tempdir().unwrap();
    // smtp-sink drops root for `nobody`, which must be able to write here.
    std::fs::set_permissions(
        dumps.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // `-c`: a running count (`mesg=N`, one per accepted message) on
    // stdout, the event to wait for; `-d`: one file per message, to check
    // which ones. (`-M N` would exit at the Nth message without answering.)
    let mut sink = Command::new(SMTP_SINK)
        .args(["-u", "nobody", "-c", "-d"])
        .arg(dumps.path().join("%H%M%S."))
        .arg(format!("127.0.0.1:{port}"))
        .arg("256")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut counter = BufReader::new(sink.stdout.take().unwrap());
    // smtp-sink listens before it does anything else; wait until it does.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "smtp-sink did not listen"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let broker = TestBroker::new().await.unwrap();
    let worker = worker_for(&broker, port, &[("WARREN_CONSUMER__CONCURRENCY", "10")]).await;
    let to = rcpt("postfix");
    let cc = rcpt("postfix-cc");
    let ids = publish_emails(&broker, &to, Some(&cc), N).await;

    let accepted = tokio::time::timeout(WAIT, async {
        let mut chunk = Vec::new();
        loop {
            chunk.clear();
            if counter.read_until(b'\r', &mut chunk).await.unwrap() == 0 {
                return None;
            }
            let count: Option<usize> = String::from_utf8_lossy(&chunk)
                .split_whitespace()
                .find_map(|f| f.strip_prefix("mesg=")?.trim().parse().ok());
            if count >= Some(N) {
                return count;
            }
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "smtp-sink did not get {N} messages; worker:\n{}",
            worker.tail(20)
        )
    });
    assert_eq!(accepted, Some(N), "smtp-sink exited early");
    // The worker saw every final 250, so every dump file is complete.
    let addr = worker.ops_addr().await.unwrap();
    tokio::time::timeout(WAIT, async {
        loop {
            let (_, body) = http_get(addr, "/metrics").await.unwrap();
            if sample_or_zero(&body, "warren_emails_sent_total", &[("transport", "smtp")])
                >= N as f64
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the worker did not count every email as sent");
    let mut seen = HashSet::new();
    for entry in walk(dumps.path()) {
        let text = std::fs::read_to_string(&entry).unwrap();
        let id = text
            .lines()
            .find_map(|l| l.strip_prefix("Message-ID: <"))
            .and_then(|l| l.split('@').next())
            .unwrap_or_else(|| panic!("no Message-ID in {}", entry.display()));
        assert!(text.contains(&to) && text.contains(&cc), "both recipients");
        seen.insert(id.to_owned());
    }
    let expected: HashSet<String> = ids.into_iter().collect();
    assert_eq!(seen.len(), N, "one dump per message");
    assert_eq!(seen, expected, "every task's email arrived");
    assert_eq!(broker.depth(&broker.email_dead_queue()).await.unwrap(), 0);
    broker.cleanup().await.unwrap();
}

/// Every file under `dir`, recursively.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[tokio::test]
async fn the_pool_reuses_its_connections_against_aiosmtpd() {
    const N: usize = 200;
    const POOL: usize = 4;
    let server = WireServer::start(&[]).await.unwrap();
    let broker = TestBroker::new().await.unwrap();
    let worker = worker_for(
        &broker,
        server.port,
        &[
            ("WARREN_EMAIL__SMTP__POOL_MAX_SIZE", "4"),
            ("WARREN_CONSUMER__CONCURRENCY", "8"),
        ],
    )
    .await;
    let to = rcpt("reuse");
    publish_emails(&broker, &to, None, N).await;
    wait_for_messages(&server, N).await.unwrap();

    let connections = server.events("connection").len();
    let metrics = metrics(&worker).await;
    let opened = sample(&metrics, "warren_smtp_connections_opened_total", &[]) as usize;
    // Nothing closed a connection under the worker, so there were no
    // reconnects: at most one connection per pool slot, each reused.
    assert!(connections >= 1, "{connections}");
    assert!(
        connections <= POOL,
        "{connections} connections for {N} emails with a pool of {POOL}"
    );
    assert_eq!(opened, connections, "the worker counts what the server saw");
    let closed = server.events("closed").len();
    assert_eq!(closed, 0, "no connection was dropped");
    broker.cleanup().await.unwrap();
}

#[tokio::test]
async fn a_server_that_answers_421_gets_fewer_connections_and_every_email() {
    const N: usize = 100;
    const K: usize = 2;
    let server = WireServer::start(&["--max-connections", "2"])
        .await
        .unwrap();
    let broker = TestBroker::new().await.unwrap();
    // Every email is queued before the worker starts, so its eight handlers
    // want eight connections at once however slowly a loaded machine
    // publishes (published one by one beside a running worker, each email
    // could be sent before the next arrived, and two connections do).
    broker
        .declare_email_topology(&[Duration::from_millis(200), Duration::from_millis(300)])
        .await
        .unwrap();
    let to = rcpt("busy");
    let ids: HashSet<String> = publish_emails(&broker, &to, None, N)
        .await
        .into_iter()
        .collect();
    let worker = worker_for(
        &broker,
        server.port,
        &[
            ("WARREN_EMAIL__SMTP__POOL_MAX_SIZE", "8"),
            ("WARREN_CONSUMER__CONCURRENCY", "8"),
            ("WARREN_CONSUMER__PREFETCH", "16"),
        ],
    )
    .await;
    let messages = wait_for_messages(&server, N).await.unwrap();

    let delivered: HashSet<String> = messages
        .iter()
        .filter_map(|m| m["message_id"].as_str())
        .filter_map(|id| id.split('@').next())
        .map(str::to_owned)
        .collect();
    assert_eq!(delivered, ids, "every email delivered");
    let refused = server.events("refused").len();
    assert!(
        refused >= 1,
        "the server refused no connection: the test proves nothing"
    );
    assert!(server.events("connection").len() <= K + refused);

    let metrics = metrics(&worker).await;
    let shrinks = sample(&metrics, "warren_smtp_pool_shrinks_total", &[]);
    let limit = sample(&metrics, "warren_smtp_pool_limit", &[]);
    assert!(shrinks >= 1.0, "the pool never shrank:\n{metrics}");
    assert!(
        limit <= K as f64,
        "limit {limit} after the server allowed {K}"
    );
    assert_eq!(
        broker.depth(&broker.email_dead_queue()).await.unwrap(),
        0,
        "nothing parked"
    );
    // Created at the first retry: absent means none.
    let retried = sample_or_zero(&metrics, "warren_tasks_retried_total", &[]);
    assert_eq!(
        retried, 0.0,
        "the back-pressure is absorbed in the pool, not retried"
    );
    broker.cleanup().await.unwrap();
}

/// The command lines that arrived in one read, per read, on the server.
fn reads(server: &WireServer) -> Vec<Vec<String>> {
    server
        .events("read")
        .iter()
        .map(|r| {
            r["commands"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c.as_str().unwrap().to_ascii_uppercase())
                .collect()
        })
        .collect()
}

fn verbs(read: &[String]) -> usize {
    read.iter()
        .filter(|l| {
            ["MAIL ", "RCPT ", "DATA", "RSET"]
                .iter()
                .any(|v| l.starts_with(v))
        })
        .count()
}

#[tokio::test]
async fn pipelining_is_used_only_where_the_server_offers_it() {
    const N: usize = 5;
    let pipelining = WireServer::start(&["--pipelining"]).await.unwrap();
    let plain = WireServer::start(&[]).await.unwrap();
    for (server, offered) in [(&pipelining, true), (&plain, false)] {
        let broker = TestBroker::new().await.unwrap();
        let _worker = worker_for(
            &broker,
            server.port,
            &[
                ("WARREN_EMAIL__SMTP__POOL_MAX_SIZE", "1"),
                ("WARREN_CONSUMER__CONCURRENCY", "1"),
            ],
        )
        .await;
        let to = rcpt("pipe");
        let cc = rcpt("pipe-cc");
        publish_emails(&broker, &to, Some(&cc), N).await;
        wait_for_messages(server, N).await.unwrap();
        let reads = reads(server);
        if offered {
            // RSET (from the second message on), MAIL, both RCPTs and DATA
            // in one read.
            let grouped = reads
                .iter()
                .filter(|r| {
                    r.iter().any(|l| l.starts_with("MAIL "))
                        && r.iter().filter(|l| l.starts_with("RCPT ")).count() == 2
                        && r.iter().any(|l| l == "DATA")
                })
                .count();
            assert_eq!(grouped, N, "every envelope in one read: {reads:?}");
            let with_rset = reads
                .iter()
                .filter(|r| r.first().is_some_and(|l| l == "RSET") && verbs(r) == 5)
                .count();
            assert_eq!(with_rset, N - 1, "RSET between messages: {reads:?}");
        } else {
            assert!(
                reads.iter().all(|r| verbs(r) <= 1),
                "one command per read without PIPELINING: {reads:?}"
            );
            let mails = reads
                .iter()
                .filter(|r| r.iter().any(|l| l.starts_with("MAIL ")))
                .count();
            assert_eq!(mails, N);
        }
        assert_eq!(
            server.events("connection").len(),
            1,
            "one pooled connection"
        );
        broker.cleanup().await.unwrap();
    }
}

/// A self-signed certificate for `localhost`, written to `dir`; returns the
/// certificate's and the key's paths.
fn localhost_certificate(dir: &Path) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let status = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args([
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost",
        ])
        // A server's certificate, not a CA's (openssl's default): webpki
        // refuses a CA certificate as the server's own.
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .args(["-addext", "extendedKeyUsage=serverAuth"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(Stdio::null())
        .status()
        .expect("openssl must be installed");
    assert!(status.success());
    (cert, key)
}

#[tokio::test]
async fn starttls_and_implicit_tls_deliver_to_a_trusted_server() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = localhost_certificate(dir.path());
    let (cert_arg, key_arg) = (cert.to_str().unwrap(), key.to_str().unwrap());
    for mode in ["starttls", "implicit"] {
        let server = WireServer::start(&[
            "--pipelining",
            "--tls",
            mode,
            "--cert",
            cert_arg,
            "--key",
            key_arg,
        ])
        .await
        .unwrap();
        let broker = TestBroker::new().await.unwrap();
        let env = with(
            email_env(broker.namespace(), server.port),
            &[
                ("WARREN_EMAIL__SMTP__TLS", mode),
                // The certificate names localhost; the worker checks it
                // against the roots in SSL_CERT_FILE.
                ("WARREN_EMAIL__SMTP__HOST", "localhost"),
                ("SSL_CERT_FILE", cert_arg),
            ],
        );
        let worker = WorkerProcess::email(&env).await.unwrap();
        worker.wait_ready().await.unwrap();
        let to = rcpt("tls");
        publish_emails(&broker, &to, None, 3).await;
        let messages = wait_for_messages(&server, 3).await.unwrap();
        assert_eq!(messages.len(), 3, "{mode}");
        // In plain text the server saw only what precedes STARTTLS.
        let reads = reads(&server);
        assert!(
            reads
                .iter()
                .any(|r| r.iter().any(|l| l.starts_with("MAIL "))),
            "{mode}: {reads:?}"
        );
        broker.cleanup().await.unwrap();
    }

    // A certificate the worker does not trust is a connection failure
    // (retried), never a delivery.
    let server = WireServer::start(&["--tls", "implicit", "--cert", cert_arg, "--key", key_arg])
        .await
        .unwrap();
    let broker = TestBroker::new().await.unwrap();
    let env = with(
        email_env(broker.namespace(), server.port),
        &[
            ("WARREN_EMAIL__SMTP__TLS", "implicit"),
            ("WARREN_EMAIL__SMTP__HOST", "localhost"),
            ("SSL_CERT_FILE", "/nonexistent.pem"),
        ],
    );
    let worker = WorkerProcess::email(&env).await.unwrap();
    worker.wait_ready().await.unwrap();
    publish_emails(&broker, &rcpt("untrusted"), None, 1).await;
    let retried = worker
        .wait_for_log("Task failed; it will be retried.", 1, WAIT)
        .await
        .unwrap();
    assert_eq!(
        retried[0]["fields"]["error_kind"], "smtp_connection",
        "{retried:?}"
    );
    assert!(server.events("message").is_empty());
    broker.cleanup().await.unwrap();
}
