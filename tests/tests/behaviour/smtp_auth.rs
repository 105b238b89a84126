//! The email worker's SMTP AUTH over TLS against a real server:
//! `tests/smtp_wire_server.py` (aiosmtpd) with STARTTLS or implicit TLS, a
//! certificate signed by a CA the test generates (the worker trusts it
//! through `SSL_CERT_FILE`), and AUTH required, offering PLAIN or LOGIN.
//! A wrong password is `smtp_permanent` with the server's reason; the
//! password shows in no log line.

use std::time::Duration;

use serde_json::{Value, json};
use warren::PublishOptions;
use warren::contract::headers;
use warren_tests::broker::TestBroker;
use warren_tests::smtp_tls::{TestCa, WireServer};
use warren_tests::worker::{WorkerProcess, email_env, with};
use warren_tests::{WAIT, rcpt};

const LOGIN: &str = "mailer";

fn password() -> String {
    format!("pw-{}", uuid::Uuid::new_v4().simple())
}

/// A ready email worker sending to `server` over `tls`, as `LOGIN` with
/// `password`, trusting `ca`.
async fn worker(
    broker: &TestBroker,
    server: &WireServer,
    ca: &TestCa,
    tls: &str,
    password: &str,
    overrides: &[(&'static str, &str)],
) -> WorkerProcess {
    let ca_path = ca.ca().display().to_string();
    let mut settings: Vec<(&'static str, &str)> = vec![
        ("WARREN_EMAIL__SMTP__TLS", tls),
        // The certificate names localhost.
        ("WARREN_EMAIL__SMTP__HOST", "localhost"),
        ("SSL_CERT_FILE", &ca_path),
        ("WARREN_EMAIL__SMTP__USERNAME", LOGIN),
        ("WARREN_EMAIL__SMTP__PASSWORD", password),
    ];
    settings.extend_from_slice(overrides);
    let env = with(email_env(broker.namespace(), server.port), &settings);
    let worker = WorkerProcess::email(&env).await.expect("worker");
    worker.wait_ready().await.expect("worker ready");
    worker
}

async fn server(ca: &TestCa, tls: &str, mechanism: &str, password: &str) -> WireServer {
    let (cert, key) = (ca.server_cert(), ca.server_key());
    let auth = format!("{LOGIN}:{password}");
    WireServer::start(&[
        "--tls",
        tls,
        "--cert",
        cert.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
        "--auth",
        &auth,
        "--auth-mechanism",
        mechanism,
    ])
    .await
    .expect("the SMTP server starts")
}

async fn publish(broker: &TestBroker, to: &str) -> String {
    broker
        .publish(
            "email.send",
            &json!({"to": to, "subject": "Authenticated", "text": "Hello over TLS.\n"}),
            PublishOptions::default(),
        )
        .await
        .expect("publish")
}

/// Everything the worker wrote, as text.
fn output(worker: &WorkerProcess) -> String {
    worker
        .logs()
        .iter()
        .map(Value::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test]
async fn starttls_and_implicit_tls_each_authenticate_with_plain_and_login() {
    let ca = TestCa::generate().expect("a CA");
    for tls in ["starttls", "implicit"] {
        for mechanism in ["PLAIN", "LOGIN"] {
            let password = password();
            let server = server(&ca, tls, mechanism, &password).await;
            let broker = TestBroker::new().await.unwrap();
            let worker = worker(&broker, &server, &ca, tls, &password, &[]).await;
            let to = rcpt("auth");
            publish(&broker, &to).await;
            let messages = server
                .wait_for("message", 1, WAIT)
                .await
                .unwrap_or_else(|e| panic!("{tls}/{mechanism}: {e}\n{}", worker.tail(20)));
            assert_eq!(messages[0]["rcpt_tos"][0], to.as_str());
            let auths = server.events("auth");
            assert!(!auths.is_empty(), "{tls}/{mechanism}: no AUTH");
            for auth in &auths {
                assert_eq!(auth["mechanism"], mechanism, "{tls}: {auth}");
                assert_eq!(auth["login"], LOGIN);
                assert_eq!(auth["success"], true, "{tls}/{mechanism}");
            }
            // Under STARTTLS, AUTH only after the upgrade (the server's
            // reads are after decryption, in order).
            if tls == "starttls" {
                let commands: Vec<String> = server
                    .events("read")
                    .iter()
                    .flat_map(|r| r["commands"].as_array().cloned().unwrap_or_default())
                    .filter_map(|c| c.as_str().map(str::to_uppercase))
                    .collect();
                let starttls = commands.iter().position(|c| c == "STARTTLS");
                let auth = commands.iter().position(|c| c.starts_with("AUTH"));
                assert!(
                    matches!((starttls, auth), (Some(s), Some(a)) if s < a),
                    "AUTH before STARTTLS: {:?}",
                    commands
                        .iter()
                        .map(|c| c.split(' ').next())
                        .collect::<Vec<_>>()
                );
            }
            assert!(
                !output(&worker).contains(&password),
                "{tls}/{mechanism}: the password is in the worker's output"
            );
            broker.cleanup().await.unwrap();
        }
    }
}

#[tokio::test]
async fn a_wrong_smtp_password_is_parked_as_smtp_permanent_and_never_logged() {
    let ca = TestCa::generate().expect("a CA");
    for (tls, mechanism) in [("starttls", "LOGIN"), ("implicit", "PLAIN")] {
        let server = server(&ca, tls, mechanism, &password()).await;
        let wrong = password();
        let broker = TestBroker::new().await.unwrap();
        let worker = worker(&broker, &server, &ca, tls, &wrong, &[]).await;
        let id = publish(&broker, &rcpt("wrongpw")).await;
        let parked = broker
            .take(&broker.email_dead_queue(), 1, WAIT)
            .await
            .unwrap_or_else(|e| panic!("{tls}: {e}\n{}", worker.tail(20)));
        let m = &parked[0];
        assert_eq!(m.message_id().as_deref(), Some(id.as_str()));
        assert_eq!(m.header(headers::DEAD_REASON).as_deref(), Some("permanent"));
        assert_eq!(
            m.header(headers::ERROR_KIND).as_deref(),
            Some("smtp_permanent"),
            "{tls}"
        );
        let reason = m.header(headers::ERROR).unwrap_or_default();
        assert!(
            reason.contains("AUTH") && reason.contains("535"),
            "{tls}: the reason names the refused AUTH: {reason}"
        );
        assert_eq!(
            m.header(headers::ATTEMPT).as_deref(),
            Some("1"),
            "never retried"
        );
        let auths = server
            .wait_for("auth", 1, Duration::from_secs(5))
            .await
            .unwrap();
        assert!(auths.iter().all(|a| a["success"] == false));
        assert!(server.events("message").is_empty());
        let logged = output(&worker);
        assert!(
            !logged.contains(&wrong),
            "{tls}: the password is in the worker's output"
        );
        for value in m.headers().values() {
            assert!(!value.contains(&wrong));
        }
        broker.cleanup().await.unwrap();
    }
}
