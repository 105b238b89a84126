//! The deployment files, validated without Docker or a cluster: the
//! `Dockerfile`, `docker-compose.yml` and the manifests under `deploy/k8s`.
//!
//! Every `WARREN_*` variable they set is loaded by the service's own
//! settings loader, with exactly the environment the container would get
//! (the image's `ENV`, then compose's `environment` or the pod's `envFrom`
//! and `env`), so an unknown key or a bad value fails here as it would at
//! start-up. Ports, probe paths, binary names and queue names are compared
//! with the code's; the compose file is checked against the Compose
//! specification's schema, the manifests against the Kubernetes schemas
//! (kubernetes-validate), the Dockerfile with hadolint, and the Prometheus
//! files compose mounts with promtool. The compose healthcheck is run
//! against a real worker. One module per file checked, and `pages` for what
//! the docs pages say about them.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use warren::contract::Names;
use warren_deploy_check::{
    Dockerfile, Manifest, Service, Settings, cargo_build_command, compose_environment,
    compose_mounts, compose_ports, container_env, deploy_tool, docs, find, go_duration, k8s_dir,
    k8s_files, k8s_manifests, known_non_setting_variable, manifest_data, mounted_host_path,
    process_lock, process_lock_async, quantity, read, repo_root, run, shell_words, yaml_documents,
};
use warren_tests::broker::TestBroker;
use warren_tests::ops::http_get;
use warren_tests::worker::WorkerProcess;

mod compose;
mod dockerfile;
mod k8s;
mod pages;

/// Settings that are secrets (docs/operations.md, "Settings"): in Kubernetes they come
/// from Secrets, never from ConfigMaps or the pod spec.
const SECRET_VARIABLES: [&str; 5] = [
    "WARREN_BROKER__URL",
    "WARREN_IDEMPOTENCY__REDIS_URL",
    "WARREN_EMAIL__SMTP__PASSWORD",
    "WARREN_IMAGE__S3__ACCESS_KEY_ID",
    "WARREN_IMAGE__S3__SECRET_ACCESS_KEY",
];

/// The Kubernetes versions the manifests are validated against: the oldest
/// the README promises and kubernetes-validate's newest (its default).
const KUBERNETES_VERSIONS: [Option<&str>; 2] = [Some("1.30.0"), None];

/// Extra time a worker's stop grace period must leave after its drain
/// deadline (consumer.shutdown_timeout): handing back unfinished tasks,
/// closing the connection, flushing traces.
const DRAIN_MARGIN: Duration = Duration::from_secs(10);

/// Parameters KEDA's rabbitmq scaler reads from trigger metadata, and from
/// a TriggerAuthentication (kedacore/keda, pkg/scalers/rabbitmq_scaler.go).
const KEDA_RABBITMQ_METADATA: [&str; 16] = [
    "host",
    "hostFromEnv",
    "usernameFromEnv",
    "passwordFromEnv",
    "protocol",
    "mode",
    "value",
    "activationValue",
    "queueName",
    "vhostName",
    "useRegex",
    "excludeUnacknowledged",
    "pageSize",
    "operation",
    "timeout",
    "unsafeSsl",
];
const KEDA_RABBITMQ_AUTH: [&str; 9] = [
    "host",
    "username",
    "password",
    "tls",
    "ca",
    "cert",
    "key",
    "keyPassword",
    "workloadIdentityResource",
];

const MIB: f64 = 1024.0 * 1024.0;

/// Resident memory of a Warren process before it holds any task, rounded
/// up from the benchmark's 31 MiB peak for a worker with the defaults
/// (docs/performance.md).
const PROCESS_BASELINE_BYTES: f64 = 64.0 * MIB;

/// The gateway's status view per tracked task, at its largest: about
/// 3.7 KB for an email task and 7 KB for a thumbnail task, whose result is
/// kept (docs/gateway.md, "Limits and known behaviour of the gateway").
const GATEWAY_BYTES_PER_TRACKED_TASK: f64 = 7_000.0;

/// What an email task in the worker costs, in multiples of its attachments'
/// decoded size: the delivery's base64, the decoded bytes, the MIME
/// message's base64 and slack.
const EMAIL_ATTACHMENT_COPIES: f64 = 4.0;

fn report(problems: Vec<String>) {
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

fn dockerfile() -> Dockerfile {
    Dockerfile::parse(&read("Dockerfile")).expect("the Dockerfile parses")
}

fn compose() -> Value {
    serde_yaml_ng::from_str(&read("docker-compose.yml")).expect("docker-compose.yml is YAML")
}

fn compose_service<'a>(compose: &'a Value, name: &str) -> &'a Value {
    let service = &compose["services"][name];
    assert!(
        service.is_object(),
        "docker-compose.yml has no service {name}"
    );
    service
}

fn manifests() -> Vec<Manifest> {
    k8s_manifests().expect("every file under deploy/k8s is YAML")
}

fn cargo() -> Command {
    let cargo = {
        let _guard = process_lock(); // a settings load may have cleared the environment
        std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned())
    };
    let mut command = Command::new(cargo);
    command.current_dir(repo_root());
    command
}

/// `cargo metadata` of the workspace. `--locked` also checks that
/// Cargo.lock is up to date, as the Dockerfile's `cargo build --locked`
/// needs.
fn cargo_metadata() -> Value {
    let (stdout, _) =
        run(cargo().args(["metadata", "--locked", "--no-deps", "--format-version", "1"]))
            .expect("cargo metadata --locked");
    serde_json::from_str(&stdout).expect("cargo metadata prints JSON")
}

/// The environment a service's container starts with under compose: the
/// image's `ENV`, then compose's `environment`.
fn compose_env(
    dockerfile: &Dockerfile,
    compose: &Value,
    service: Service,
) -> BTreeMap<String, String> {
    let mut env = dockerfile.env(service.name());
    env.extend(
        compose_environment(compose_service(compose, service.name()))
            .unwrap_or_else(|e| panic!("{}: {e}", service.name())),
    );
    env
}

/// Only the `WARREN_*` variables, which the settings loader reads.
fn settings_env(env: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    env.iter()
        .filter(|(k, _)| k.starts_with("WARREN_"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn compose_settings(dockerfile: &Dockerfile, compose: &Value, service: Service) -> Settings {
    service
        .load_settings(&settings_env(&compose_env(dockerfile, compose, service)))
        .unwrap_or_else(|e| panic!("docker-compose.yml, service {}: {e:#}", service.name()))
}

fn deployment(manifests: &[Manifest], service: Service) -> &Manifest {
    find(manifests, "Deployment", service.name())
        .unwrap_or_else(|| panic!("deploy/k8s has no Deployment {}", service.name()))
}

/// The Deployment's container that runs the service (named after it).
fn container(deployment: &Manifest, service: Service) -> &Value {
    deployment.doc["spec"]["template"]["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["name"] == service.name())
        .unwrap_or_else(|| {
            panic!(
                "Deployment {} has no container named {}",
                service.name(),
                service.name()
            )
        })
}

/// The environment of a service's container on Kubernetes: the image's
/// `ENV`, then the pod's `envFrom` and `env`, with where each came from.
fn pod_env(
    dockerfile: &Dockerfile,
    manifests: &[Manifest],
    service: Service,
) -> BTreeMap<String, (String, String)> {
    let mut env: BTreeMap<String, (String, String)> = dockerfile
        .env(service.name())
        .into_iter()
        .map(|(k, v)| (k, (v, "the image's ENV".to_owned())))
        .collect();
    let from_pod = container_env(
        container(deployment(manifests, service), service),
        manifests,
    )
    .unwrap_or_else(|e| panic!("Deployment {}: {e:#}", service.name()));
    for (key, (value, source)) in from_pod {
        env.insert(key, (value, format!("{} {}", source.kind, source.name)));
    }
    env
}

fn k8s_settings(dockerfile: &Dockerfile, manifests: &[Manifest], service: Service) -> Settings {
    let env: BTreeMap<String, String> = pod_env(dockerfile, manifests, service)
        .into_iter()
        .map(|(k, (v, _))| (k, v))
        .collect();
    service
        .load_settings(&settings_env(&env))
        .unwrap_or_else(|e| panic!("deploy/k8s, Deployment {}: {e:#}", service.name()))
}

/// The service's ops port (`/metrics`, `/healthz`, `/readyz`) with these
/// settings.
fn ops_port(settings: &Settings, service: Service) -> u16 {
    settings.port("ops.addr").unwrap_or_else(|e| {
        panic!(
            "{} has no ops port, which its probes, healthcheck and Prometheus job use: {e:#}",
            service.name()
        )
    })
}

/// `(major, minor)` of a version such as `1.88` or `1.95.0`.
fn major_minor(version: &str) -> Option<(u32, u32)> {
    let mut parts = version.split('.');
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// Serves the real ops router and GETs each path: each must answer 200.
fn assert_ops_router_serves(paths: &BTreeSet<String>) {
    assert!(!paths.is_empty());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let stop = tokio_util::sync::CancellationToken::new();
        let settings = warren::settings::OpsSettings {
            addr: "127.0.0.1:0".to_owned(),
        };
        let server = warren::ops::serve(&settings, std::sync::Arc::new(|| Ok(())), stop.clone())
            .await
            .unwrap();
        for path in paths {
            let (status, body) = http_get(server.local_addr, path).await.unwrap();
            assert_eq!(
                status, 200,
                "the ops router answers {path} with {status}: {body}"
            );
        }
        stop.cancel();
    });
}
