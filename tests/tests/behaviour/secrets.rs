//! Secrets are never printed, whatever the input: each binary is started with
//! secret-bearing settings (numeric, boolean and URL forms, unknown keys
//! beside them, a value of the wrong type, a failing broker or Redis
//! connection, a TLS error), at debug log level, and everything it writes to
//! stdout and stderr is searched for the secret.

use std::path::Path;

use warren_tests::WAIT;
use warren_tests::broker::TestBroker;
use warren_tests::worker::{WorkerProcess, email_env, gateway_env, image_env, with};

/// The three binaries, as the cases start them.
#[derive(Clone, Copy, Debug)]
enum Binary {
    Email,
    Image,
    Gateway,
}

impl Binary {
    fn base_env(self, namespace: &str, root: &Path) -> Vec<(&'static str, String)> {
        match self {
            // No email is sent: the SMTP port is never dialled.
            Binary::Email => email_env(namespace, 2525),
            Binary::Image => image_env(namespace, root),
            Binary::Gateway => gateway_env(namespace, root),
        }
    }

    async fn start(self, env: &[(&str, String)]) -> anyhow::Result<WorkerProcess> {
        match self {
            Binary::Email => WorkerProcess::email(env).await,
            Binary::Image => WorkerProcess::image(env).await,
            Binary::Gateway => WorkerProcess::gateway(env).await,
        }
    }

    /// The log line that says it works with the broker.
    fn ready_message(self) -> &'static str {
        match self {
            Binary::Email | Binary::Image => "Consuming.",
            Binary::Gateway => "Caught up with the task events.",
        }
    }

    /// Its secret settings other than the broker URL, set to `secret`.
    fn own_secrets(self, secret: &str) -> Vec<(&'static str, String)> {
        match self {
            Binary::Email => vec![
                ("WARREN_EMAIL__SMTP__USERNAME", "warren".to_owned()),
                ("WARREN_EMAIL__SMTP__PASSWORD", secret.to_owned()),
            ],
            Binary::Image | Binary::Gateway => vec![
                ("WARREN_IMAGE__S3__ACCESS_KEY_ID", secret.to_owned()),
                ("WARREN_IMAGE__S3__SECRET_ACCESS_KEY", secret.to_owned()),
            ],
        }
    }
}

/// What a case's process does with its settings.
#[derive(Clone, Copy, Debug)]
enum Expect {
    /// Starts and works with the broker: the secret was accepted.
    Ready,
    /// Cannot reach the broker: keeps reconnecting (or gives up and exits).
    ConnectionFails,
    /// Stops at start-up, naming the key (this text).
    Refused(&'static str),
    /// Either works or stops, as long as nothing prints the secret.
    Anything,
}

struct Case {
    name: &'static str,
    env: Vec<(&'static str, String)>,
    /// Contents of the settings file (`WARREN_CONFIG`).
    file: Option<String>,
    expect: Expect,
}

/// A secret no other output could contain by chance: twelve digits, which
/// the environment would read as a number.
fn numeric_secret() -> String {
    let n = uuid::Uuid::new_v4().as_u128() % 900_000_000_000 + 100_000_000_000;
    n.to_string()
}

fn cases(binary: Binary, secret: &str) -> Vec<Case> {
    let mut cases = vec![
        Case {
            name: "numeric secrets",
            env: binary.own_secrets(secret),
            file: None,
            expect: Expect::Ready,
        },
        Case {
            name: "numeric broker password",
            env: vec![(
                "WARREN_BROKER__URL",
                format!("amqp://guest:{secret}@127.0.0.1:5672/%2f"),
            )],
            file: None,
            expect: Expect::ConnectionFails,
        },
        Case {
            name: "TLS error, pretty logs",
            env: vec![
                (
                    "WARREN_BROKER__URL",
                    format!("amqps://guest:{secret}@127.0.0.1:5672/%2f"),
                ),
                ("WARREN_TELEMETRY__LOG_FORMAT", "pretty".to_owned()),
            ],
            file: None,
            expect: Expect::ConnectionFails,
        },
        Case {
            name: "numeric broker URL",
            env: vec![("WARREN_BROKER__URL", secret.to_owned())],
            file: None,
            expect: Expect::ConnectionFails,
        },
        Case {
            name: "unknown key beside secrets",
            env: [
                vec![
                    ("WARREN_BROKER__URLL", "1".to_owned()),
                    (
                        "WARREN_BROKER__URL",
                        format!("amqp://guest:{secret}@127.0.0.1:5672/%2f"),
                    ),
                ],
                binary.own_secrets(secret),
            ]
            .concat(),
            file: None,
            expect: Expect::Refused("urll"),
        },
        Case {
            name: "secret of the wrong type in the file",
            env: vec![],
            file: Some(format!("[broker]\nurl = [{secret}, {secret}.5]\n")),
            expect: Expect::Refused("broker.url\""),
        },
        Case {
            name: "numeric secret in the file",
            env: vec![],
            file: Some(format!(
                "[broker]\nurl = \"amqp://guest:{secret}@127.0.0.1:5672/%2f\"\n"
            )),
            expect: Expect::ConnectionFails,
        },
    ];
    match binary {
        Binary::Email | Binary::Image => {
            cases.push(Case {
                name: "Redis unreachable",
                env: vec![
                    ("WARREN_IDEMPOTENCY__BACKEND", "redis".to_owned()),
                    (
                        "WARREN_IDEMPOTENCY__REDIS_URL",
                        format!("redis://:{secret}@127.0.0.1:1/0"),
                    ),
                ],
                file: None,
                expect: Expect::Anything,
            });
            cases.push(Case {
                name: "Redis URL of digits",
                env: vec![
                    ("WARREN_IDEMPOTENCY__BACKEND", "redis".to_owned()),
                    ("WARREN_IDEMPOTENCY__REDIS_URL", secret.to_owned()),
                ],
                file: None,
                expect: Expect::Anything,
            });
        }
        Binary::Gateway => {}
    }
    match binary {
        Binary::Image | Binary::Gateway => cases.push(Case {
            name: "S3 store unreachable",
            env: [
                vec![
                    ("WARREN_IMAGE__STORE", "s3".to_owned()),
                    ("WARREN_IMAGE__S3__BUCKET", "warren-test".to_owned()),
                    (
                        "WARREN_IMAGE__S3__ENDPOINT",
                        "http://127.0.0.1:1".to_owned(),
                    ),
                    ("WARREN_IMAGE__S3__ALLOW_HTTP", "true".to_owned()),
                ],
                binary.own_secrets(secret),
            ]
            .concat(),
            file: None,
            expect: Expect::Anything,
        }),
        Binary::Email => {}
    }
    cases
}

/// Runs one case to the end and returns everything the process wrote.
async fn run(
    binary: Binary,
    case: &Case,
    namespace: &str,
    dir: &Path,
    index: usize,
) -> anyhow::Result<Vec<String>> {
    let mut env = binary.base_env(namespace, dir);
    env.push(("RUST_LOG", "debug".to_owned()));
    env.push(("WARREN_TELEMETRY__LOG_LEVEL", "debug".to_owned()));
    if let Some(text) = &case.file {
        let path = dir.join(format!("warren-{index}.toml"));
        std::fs::write(&path, text)?;
        env.push(("WARREN_CONFIG", path.display().to_string()));
    }
    let overrides: Vec<(&'static str, &str)> =
        case.env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let env = with(env, &overrides);
    let mut process = binary.start(&env).await?;
    let what = format!("{binary:?}, {}", case.name);
    match case.expect {
        Expect::Ready => {
            let seen = process
                .wait_for_log_or_exit(binary.ready_message(), WAIT)
                .await?;
            assert!(
                seen.is_some(),
                "{what}: did not start:\n{}",
                process.tail(20)
            );
        }
        Expect::ConnectionFails => {
            process
                .wait_for_log_or_exit("Broker connection lost; reconnecting.", WAIT)
                .await?;
            assert!(
                process.logs_with_message(binary.ready_message()).is_empty(),
                "{what}: connected"
            );
        }
        Expect::Refused(_) | Expect::Anything => {
            process
                .wait_for_log_or_exit(binary.ready_message(), WAIT)
                .await?;
        }
    }
    // Stops it if it still runs; an exited process ignores this.
    let _ = process.signal("TERM");
    let output = process.all_output(WAIT).await?;
    if let Expect::Refused(key) = case.expect {
        let all = output.join("\n");
        assert!(
            all.contains(key),
            "{what}: the refusal does not name {key}:\n{all}"
        );
    }
    Ok(output)
}

async fn no_secret_printed(binary: Binary) {
    let broker = TestBroker::new().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let secret = numeric_secret();
    let cases = cases(binary, &secret);
    let runs = cases
        .iter()
        .enumerate()
        .map(|(i, case)| run(binary, case, broker.namespace(), dir.path(), i));
    let outputs = futures::future::join_all(runs).await;
    for (case, output) in cases.iter().zip(outputs) {
        let output = output.unwrap_or_else(|e| panic!("{binary:?}, {}: {e:#}", case.name));
        assert!(!output.is_empty(), "{binary:?}, {}: no output", case.name);
        for line in &output {
            assert!(
                !line.contains(&secret),
                "{binary:?}, {}: the secret is printed:\n{line}",
                case.name
            );
        }
    }
    // A boolean secret is accepted too (`true` is in too much output to
    // search for; that it starts is the point).
    let mut env = binary.base_env(broker.namespace(), dir.path());
    env.extend(binary.own_secrets("true"));
    let mut process = binary.start(&env).await.unwrap();
    let seen = process
        .wait_for_log_or_exit(binary.ready_message(), WAIT)
        .await
        .unwrap();
    assert!(
        seen.is_some(),
        "{binary:?}: a boolean secret stopped it:\n{}",
        process.tail(20)
    );
    process.signal("TERM").unwrap();
    process.all_output(WAIT).await.unwrap();
    broker
        .cleanup_stems(&["email", "image"], &[])
        .await
        .unwrap();
}

#[tokio::test]
async fn the_email_worker_never_prints_a_secret() {
    no_secret_printed(Binary::Email).await;
}

#[tokio::test]
async fn the_image_worker_never_prints_a_secret() {
    no_secret_printed(Binary::Image).await;
}

#[tokio::test]
async fn the_gateway_never_prints_a_secret() {
    no_secret_printed(Binary::Gateway).await;
}
