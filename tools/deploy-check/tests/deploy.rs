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
//! against a real worker.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use warren::contract::Names;
use warren_deploy_check::{
    Dockerfile, docs, Manifest, Service, Settings, cargo_build_command, compose_environment,
    compose_mounts, compose_ports, container_env, deploy_tool, find, go_duration, k8s_dir,
    k8s_files, k8s_manifests, known_non_setting_variable, manifest_data, mounted_host_path,
    process_lock, process_lock_async, quantity, read, repo_root, run, shell_words, yaml_documents,
};
use warren_tests::broker::TestBroker;
use warren_tests::ops::http_get;
use warren_tests::worker::WorkerProcess;

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

// ---------------------------------------------------------------------------
// Dockerfile

#[test]
fn the_dockerfile_builds_every_service_binary_with_the_documented_release_command() {
    let file = dockerfile();
    let builder = file
        .stage("builder")
        .expect("the Dockerfile has a stage named builder");
    let commands: Vec<String> = builder
        .instructions
        .iter()
        .filter(|i| i.keyword == "RUN")
        .filter_map(|i| cargo_build_command(&i.args))
        .collect();
    assert_eq!(
        commands.len(),
        1,
        "the builder runs one cargo build: {commands:?}"
    );
    let command = &commands[0];

    let documented: BTreeSet<String> = read("docs/deploy.md")
        .lines()
        .filter(|l| l.trim_start().starts_with("cargo build --release"))
        .filter_map(cargo_build_command)
        .collect();
    assert_eq!(
        documented,
        BTreeSet::from([command.clone()]),
        "the release build in docs/deploy.md must be the Dockerfile's"
    );

    let words = shell_words(command);
    for flag in ["--release", "--locked"] {
        assert!(words.iter().any(|w| w == flag), "{command} lacks {flag}");
    }
    let built: BTreeSet<String> = words
        .windows(2)
        .filter(|w| w[0] == "--bin")
        .map(|w| w[1].clone())
        .collect();

    // What the workspace builds: each service's package has a binary of its
    // own name.
    let metadata = cargo_metadata();
    let mut service_bins = BTreeSet::new();
    for service in Service::ALL {
        let package = metadata["packages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == service.name())
            .unwrap_or_else(|| panic!("the workspace has no package {}", service.name()));
        let bins: Vec<&str> = package["targets"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["kind"].as_array().unwrap().iter().any(|k| k == "bin"))
            .filter_map(|t| t["name"].as_str())
            .collect();
        assert!(
            bins.contains(&service.name()),
            "package {} has no binary {} (it has {bins:?})",
            service.name(),
            service.name()
        );
        service_bins.insert(service.name().to_owned());
    }
    assert_eq!(
        built, service_bins,
        "the Dockerfile builds exactly the services' binaries"
    );

    // ... and copies each out of the cached target directory.
    let copied = builder
        .instructions
        .iter()
        .filter(|i| i.keyword == "RUN")
        .map(|i| i.args.as_str())
        .collect::<String>();
    for bin in &built {
        assert!(
            copied.contains(&format!("target/release/{bin}")),
            "the builder does not copy target/release/{bin} out"
        );
    }
}

#[test]
fn each_service_stage_runs_its_own_binary_as_a_non_root_user_on_the_builders_debian() {
    let file = dockerfile();
    let mut problems = Vec::new();

    // The builder: a pinned toolchain at least the workspace's rust-version.
    let builder = file.stage("builder").expect("a builder stage");
    let (toolchain, builder_debian) = builder
        .base
        .strip_prefix("rust:")
        .and_then(|tag| tag.split_once('-'))
        .unwrap_or_else(|| {
            panic!(
                "the builder is not rust:<version>-<debian>: {}",
                builder.base
            )
        });
    let metadata = cargo_metadata();
    let required = metadata["packages"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["rust_version"].as_str())
        .filter_map(major_minor)
        .max()
        .expect("the workspace declares a rust-version");
    match major_minor(toolchain) {
        Some(pinned) if pinned >= required => {}
        Some(pinned) => problems.push(format!(
            "the builder's Rust {pinned:?} is older than the workspace's rust-version {required:?}"
        )),
        None => problems.push(format!(
            "the builder's toolchain {toolchain} is not pinned to a major.minor version"
        )),
    }

    for service in Service::ALL {
        let name = service.name();
        let Some(stage) = file.stage(name) else {
            problems.push(format!("the Dockerfile has no stage (target) {name}"));
            continue;
        };
        let root = file.root_image(name).unwrap_or_default();
        if root != format!("debian:{builder_debian}-slim") {
            problems.push(format!(
                "{name} runs on {root}, not on the builder's Debian ({builder_debian}): \
                 the binary needs the glibc it was linked against"
            ));
        }

        // The binary: copied from the builder, and the entrypoint.
        let copy = stage
            .instructions
            .iter()
            .filter(|i| i.keyword == "COPY")
            .map(|i| i.words())
            .find(|w| {
                w.iter().any(|x| x == "--from=builder")
                    && w.iter().any(|x| x == &format!("/out/{name}"))
            });
        let Some(copy) = copy else {
            problems.push(format!(
                "stage {name} does not copy /out/{name} from the builder"
            ));
            continue;
        };
        let destination = copy.last().cloned().unwrap_or_default();
        match file.last(name, "ENTRYPOINT").and_then(|i| i.exec_form()) {
            Some(entry) if entry == vec![destination.clone()] => {}
            other => problems.push(format!(
                "stage {name}: ENTRYPOINT is {other:?}, not [\"{destination}\"] (the exec form, \
                 so SIGTERM reaches the worker and not a shell)"
            )),
        }

        // Not root.
        let user = file
            .last(name, "USER")
            .map(|i| i.args.clone())
            .unwrap_or_else(|| "root".to_owned());
        let uid = user.split(':').next().unwrap_or_default();
        if uid.parse::<u32>().map_or(true, |uid| uid == 0) {
            problems.push(format!(
                "stage {name} runs as {user:?}: use a numeric non-root uid (runAsNonRoot can \
                 only verify a numeric one)"
            ));
        }

        // The image's own settings load, and EXPOSE names the ports the
        // service listens on with them.
        let settings = match service.load_settings(&settings_env(&file.env(name))) {
            Ok(s) => s,
            Err(e) => {
                problems.push(format!("stage {name}'s ENV: {e:#}"));
                continue;
            }
        };
        let exposed: BTreeSet<u16> = file
            .all(name, "EXPOSE")
            .iter()
            .flat_map(|i| i.words())
            .filter_map(|p| p.split('/').next().and_then(|p| p.parse().ok()))
            .collect();
        let mut listens = BTreeSet::new();
        match settings.port("ops.addr") {
            Ok(port) => {
                listens.insert(port);
            }
            Err(e) => problems.push(format!("{name} has no ops port: {e:#}")),
        }
        if service == Service::Gateway {
            listens.insert(settings.port("http.addr").unwrap());
        }
        if exposed != listens {
            problems.push(format!(
                "stage {name} exposes {exposed:?}; the service listens on {listens:?}"
            ));
        }

        // Files copied from the build context exist.
        for copy in stage.instructions.iter().filter(|i| i.keyword == "COPY") {
            let words = copy.words();
            if words.iter().any(|w| w.starts_with("--from")) {
                continue;
            }
            let sources: Vec<&String> = words.iter().filter(|w| !w.starts_with("--")).collect();
            for source in &sources[..sources.len().saturating_sub(1)] {
                if !repo_root().join(source).exists() {
                    problems.push(format!(
                        "stage {name} copies {source}, which does not exist"
                    ));
                }
            }
        }
    }

    // What each service reads from its image must be there.
    let email = Service::EmailWorker.load_settings(&settings_env(&file.env("email-worker")));
    if let Ok(email) = email {
        let templates = email.str("email.templates_dir").unwrap().to_owned();
        let copied = file
            .stage("email-worker")
            .into_iter()
            .flat_map(|s| &s.instructions)
            .any(|i| {
                i.keyword == "COPY"
                    && i.words().first().map(String::as_str)
                        == Some("services/email-worker/templates")
                    && i.words().last() == Some(&templates)
            });
        if !copied {
            problems.push(format!(
                "the email-worker image does not copy services/email-worker/templates to \
                 email.templates_dir ({templates})"
            ));
        }
    }
    for service in [Service::ImageWorker, Service::Gateway] {
        let Ok(settings) = service.load_settings(&settings_env(&file.env(service.name()))) else {
            continue;
        };
        let root = settings.str("image.local_root").unwrap().to_owned();
        let created = file.all(service.name(), "RUN").iter().any(|i| {
            i.args.contains("install -d -o 10001 -g 10001") && i.words().last() == Some(&root)
        });
        if !created {
            problems.push(format!(
                "the {} image does not create image.local_root ({root}) owned by the service user",
                service.name()
            ));
        }
    }
    report(problems);
}

#[test]
fn hadolint_accepts_the_dockerfile() {
    let hadolint = deploy_tool("hadolint");
    if let Err(e) = run(Command::new(hadolint)
        .arg("Dockerfile")
        .current_dir(repo_root()))
    {
        panic!("{e:#}");
    }
}

/// Whether `.dockerignore` pattern `pattern` (Go's filepath.Match, `**`
/// for any number of directories) excludes `path` or a folder holding it.
fn dockerignore_excludes(pattern: &str, path: &str) -> bool {
    fn matches(pattern: &[&str], path: &[&str]) -> bool {
        match (pattern.first(), path.first()) {
            (None, _) => true, // a matched folder excludes what it holds
            (Some(&"**"), _) => {
                matches(&pattern[1..], path) || (!path.is_empty() && matches(pattern, &path[1..]))
            }
            (Some(_), None) => false,
            (Some(p), Some(segment)) => glob(p, segment) && matches(&pattern[1..], &path[1..]),
        }
    }
    fn glob(pattern: &str, text: &str) -> bool {
        match pattern.split_once('*') {
            None => pattern == text,
            Some((head, tail)) => {
                text.starts_with(head)
                    && (0..=text.len() - head.len()).any(|i| {
                        text.is_char_boundary(head.len() + i) && glob(tail, &text[head.len() + i..])
                    })
            }
        }
    }
    let pattern: Vec<&str> = pattern.trim_matches('/').split('/').collect();
    let path: Vec<&str> = path.trim_matches('/').split('/').collect();
    matches(&pattern, &path)
}

#[test]
fn dockerignore_keeps_everything_the_build_needs() {
    assert!(dockerignore_excludes("target/", "target/release/x"));
    assert!(dockerignore_excludes("*.eml", "a.eml"));
    assert!(!dockerignore_excludes("*.eml", "outbox/a.eml"));
    assert!(dockerignore_excludes("**/*.eml", "outbox/a.eml"));
    assert!(!dockerignore_excludes(
        "outbox/",
        "services/email-worker/outbox"
    ));

    let patterns: Vec<String> = read(".dockerignore")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect();
    assert!(
        patterns.iter().all(|p| !p.starts_with('!')),
        "exceptions (!) in .dockerignore are not understood by this check"
    );
    let mut needed = vec!["Cargo.toml".to_owned(), "Cargo.lock".to_owned()];
    let root = repo_root().canonicalize().unwrap();
    for member in cargo_metadata()["packages"].as_array().unwrap() {
        let manifest = Path::new(member["manifest_path"].as_str().unwrap());
        let dir = manifest.parent().unwrap().canonicalize().unwrap();
        if let Ok(relative) = dir.strip_prefix(&root) {
            needed.push(relative.join("Cargo.toml").display().to_string());
            needed.push(relative.join("src").display().to_string());
        }
    }
    needed.push("services/email-worker/templates/welcome/body.txt".to_owned());
    let mut problems = Vec::new();
    for path in &needed {
        for pattern in &patterns {
            if dockerignore_excludes(pattern, path) {
                problems.push(format!(
                    ".dockerignore's {pattern} leaves {path} out of the build"
                ));
            }
        }
    }
    report(problems);
}

// ---------------------------------------------------------------------------
// docker-compose.yml

#[test]
fn the_compose_file_follows_the_compose_specification() {
    let checker = deploy_tool("check-jsonschema");
    if let Err(e) = run(Command::new(checker)
        .args([
            "--builtin-schema",
            "vendor.compose-spec",
            "docker-compose.yml",
        ])
        .current_dir(repo_root()))
    {
        panic!("{e:#}");
    }
}

#[test]
fn compose_runs_each_service_from_its_image_target_with_settings_the_code_knows() {
    let file = dockerfile();
    let compose = compose();
    let collector = otel_collector_config(&compose);
    let collector_http_port = collector["receivers"]["otlp"]["protocols"]["http"]["endpoint"]
        .as_str()
        .and_then(|e| e.rsplit_once(':'))
        .and_then(|(_, p)| p.parse::<u16>().ok())
        .expect("the collector receives OTLP over HTTP on a port");
    let mut problems = Vec::new();
    for service in Service::ALL {
        let name = service.name();
        let spec = compose_service(&compose, name);
        let build = &spec["build"];
        if build["context"] != "." || build["target"] != name {
            problems.push(format!(
                "compose {name}: build is not context . target {name}: {build}"
            ));
        }
        if !build["dockerfile"].is_null() && build["dockerfile"] != "Dockerfile" {
            problems.push(format!(
                "compose {name}: build.dockerfile is not Dockerfile"
            ));
        }
        for arg in build["args"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, _)| k)
        {
            let declared = file
                .stages
                .iter()
                .flat_map(|s| &s.instructions)
                .any(|i| i.keyword == "ARG" && i.args.split('=').next() == Some(arg.as_str()));
            if !declared {
                problems.push(format!(
                    "compose {name}: build arg {arg} is not an ARG of the Dockerfile"
                ));
            }
        }

        let own = compose_environment(spec).unwrap();
        for (key, value) in &own {
            if value.contains('$') {
                problems.push(format!(
                    "compose {name}: {key}'s value contains $, which compose interpolates"
                ));
            }
            if !key.starts_with("WARREN_") && !known_non_setting_variable(key) {
                problems.push(format!(
                    "compose {name}: {key} is read by nothing in Warren"
                ));
            }
        }
        let settings =
            match service.load_settings(&settings_env(&compose_env(&file, &compose, service))) {
                Ok(s) => s,
                Err(e) => {
                    problems.push(format!("compose {name}: {e:#}"));
                    continue;
                }
            };
        if own.get("OTEL_SERVICE_NAME").map(String::as_str) != Some(name) {
            problems.push(format!("compose {name}: OTEL_SERVICE_NAME is not {name}"));
        }
        match own
            .get("OTEL_EXPORTER_OTLP_ENDPOINT")
            .map(|e| url::Url::parse(e))
        {
            Some(Ok(endpoint)) => {
                let host = endpoint.host_str().unwrap_or_default();
                if !compose["services"][host].is_object() {
                    problems.push(format!(
                        "compose {name}: OTLP endpoint host {host} is no compose service"
                    ));
                }
                if endpoint.port() != Some(collector_http_port) {
                    problems.push(format!(
                        "compose {name}: OTLP endpoint {endpoint} is not the collector's OTLP/HTTP port \
                         {collector_http_port}"
                    ));
                }
            }
            other => problems.push(format!(
                "compose {name}: OTEL_EXPORTER_OTLP_ENDPOINT is {other:?}"
            )),
        }

        // Its ports: the ones it listens on.
        let ops = settings.port("ops.addr").ok();
        let http = settings.port("http.addr").ok();
        for port in compose_ports(spec).unwrap() {
            if Some(port.container) != ops && Some(port.container) != http {
                problems.push(format!(
                    "compose {name} publishes container port {}, where it does not listen",
                    port.container
                ));
            }
            if port.host_ip.as_deref() != Some("127.0.0.1") {
                problems.push(format!(
                    "compose {name}: publish on 127.0.0.1 only, like the rest of the stack"
                ));
            }
        }
        if service == Service::Gateway
            && !compose_ports(spec)
                .unwrap()
                .iter()
                .any(|p| Some(p.container) == http)
        {
            problems.push(format!(
                "compose gateway does not publish its HTTP port {http:?}"
            ));
        }

        // Healthcheck: the ops port, with bash's /dev/tcp (the image has
        // no curl).
        let test = health_script(spec);
        match (test, ops) {
            (Some(script), Some(ops)) if script.contains(&format!("/dev/tcp/127.0.0.1/{ops}")) => {}
            (script, ops) => problems.push(format!(
                "compose {name}: the healthcheck {script:?} does not probe the ops port {ops:?}"
            )),
        }

        // It starts once the broker is up.
        if spec["depends_on"]["rabbitmq"]["condition"] != "service_healthy" {
            problems.push(format!(
                "compose {name} does not wait for rabbitmq to be healthy"
            ));
        }
    }

    // The gateway publishes tasks with `mandatory`: unroutable until the
    // workers have declared their queues, so it starts after they are ready.
    let gateway = compose_service(&compose, "gateway");
    for worker in [Service::EmailWorker, Service::ImageWorker] {
        if gateway["depends_on"][worker.name()]["condition"] != "service_healthy" {
            problems.push(format!(
                "compose gateway does not wait for {} to be healthy (ready: queues declared)",
                worker.name()
            ));
        }
    }
    report(problems);
}

/// A compose service's `depends_on`, short (list) or long (map) form: each
/// dependency with its condition (`None`: the short form's
/// `service_started`).
fn depends_on<'a>(name: &str, service: &'a Value) -> Vec<(&'a str, Option<&'a str>)> {
    match &service["depends_on"] {
        Value::Null => Vec::new(),
        Value::Array(list) => list
            .iter()
            .filter_map(Value::as_str)
            .map(|d| (d, None))
            .collect(),
        Value::Object(map) => map
            .iter()
            .map(|(d, c)| (d.as_str(), c["condition"].as_str()))
            .collect(),
        other => panic!("{name}: depends_on is {other}"),
    }
}

/// The script of a compose healthcheck of the form `[CMD, bash, -c, script]`.
fn health_script(service: &Value) -> Option<String> {
    let test: Vec<&str> = service["healthcheck"]["test"]
        .as_array()?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    match test.as_slice() {
        ["CMD", "bash", "-c", script] => Some((*script).to_owned()),
        _ => None,
    }
}

/// The collector config compose mounts for the otel-collector service.
fn otel_collector_config(compose: &Value) -> Value {
    let collector = compose_service(compose, "otel-collector");
    let config_arg = collector["command"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .find_map(|a| a.strip_prefix("--config="))
        .expect("the otel-collector command names its --config=");
    let path = mounted_host_path(collector, config_arg).unwrap_or_else(|| {
        panic!("otel-collector's {config_arg} is not mounted from the repository")
    });
    serde_yaml_ng::from_str(&std::fs::read_to_string(&path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn compose_start_order_is_sound_and_waits_only_on_healthchecks_that_exist() {
    let compose = compose();
    let services = compose["services"].as_object().unwrap();
    let mut problems = Vec::new();
    let mut edges: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (name, spec) in services {
        for (dependency, condition) in depends_on(name, spec) {
            let Some(target) = services.get(dependency) else {
                problems.push(format!(
                    "{name} depends on {dependency}, which is no service"
                ));
                continue;
            };
            if condition == Some("service_healthy") && target["healthcheck"]["test"].is_null() {
                problems.push(format!(
                    "{name} waits for {dependency} to be healthy, but {dependency} has no healthcheck"
                ));
            }
            edges.entry(name.as_str()).or_default().push(dependency);
        }
    }
    // No cycles: compose would refuse to start.
    fn visit<'a>(
        node: &'a str,
        edges: &BTreeMap<&'a str, Vec<&'a str>>,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
        problems: &mut Vec<String>,
    ) {
        if done.contains(node) {
            return;
        }
        if path.contains(&node) {
            problems.push(format!("depends_on cycle: {} -> {node}", path.join(" -> ")));
            return;
        }
        path.push(node);
        for next in edges.get(node).into_iter().flatten() {
            visit(next, edges, path, done, problems);
        }
        path.pop();
        done.insert(node);
    }
    let mut done = BTreeSet::new();
    for name in services.keys() {
        visit(name, &edges, &mut Vec::new(), &mut done, &mut problems);
    }

    // Healthchecks compose can run: a form it knows, durations it reads,
    // and an HTTP probe (wget, curl) of a port the container serves.
    for (name, spec) in services {
        let check = &spec["healthcheck"];
        if check.is_null() {
            continue;
        }
        for key in ["interval", "timeout", "start_period", "start_interval"] {
            if let Some(text) = check[key].as_str()
                && go_duration(text).is_none()
            {
                problems.push(format!(
                    "{name}: healthcheck {key} {text:?} is no duration compose reads"
                ));
            }
        }
        let test: Vec<&str> = check["test"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        if !matches!(test.as_slice(), ["CMD" | "CMD-SHELL", _, ..]) {
            problems.push(format!(
                "{name}: healthcheck test {test:?} is not [CMD, ...] or [CMD-SHELL, ...]"
            ));
        }
        let served: BTreeSet<u16> = compose_ports(spec)
            .unwrap()
            .iter()
            .map(|p| p.container)
            .collect();
        for url in test.iter().filter_map(|w| url::Url::parse(w).ok()) {
            if !matches!(url.scheme(), "http" | "https") {
                continue;
            }
            let local = matches!(url.host_str(), Some("127.0.0.1" | "localhost"));
            let port = url.port_or_known_default().unwrap_or_default();
            if !local || !served.contains(&port) {
                problems.push(format!(
                    "{name}: the healthcheck asks {url}, not a port the container serves \
                     ({served:?}) on its own loopback"
                ));
            }
        }
    }

    // RabbitMQ: healthy means answering, with the plugins the stack uses.
    let rabbitmq = compose_service(&compose, "rabbitmq");
    if rabbitmq["healthcheck"]["test"].is_null() {
        problems.push("rabbitmq has no healthcheck".to_owned());
    }
    let plugins = mounted_host_path(rabbitmq, "/etc/rabbitmq/enabled_plugins")
        .map(|p| std::fs::read_to_string(p).unwrap_or_default())
        .unwrap_or_default();
    for plugin in ["rabbitmq_management", "rabbitmq_prometheus"] {
        if !plugins.contains(plugin) {
            problems.push(format!("rabbitmq's enabled_plugins lacks {plugin}"));
        }
    }
    report(problems);
}

#[test]
fn compose_services_wait_for_the_services_they_talk_to() {
    let file = dockerfile();
    let compose = compose();
    let services = compose["services"].as_object().unwrap();
    let host = |url: &str| {
        url::Url::parse(url)
            .ok()
            .and_then(|u| u.host_str().map(str::to_owned))
            .unwrap_or_default()
    };
    // (service, the service it talks to, the setting that says so), read
    // from each one's configuration. Prometheus is left out on purpose: it
    // scrapes whatever answers, and a target that does not is what
    // WarrenWorkerDown is for.
    let mut talks: Vec<(String, String, String)> = Vec::new();
    for service in Service::ALL {
        let name = service.name();
        let settings = compose_settings(&file, &compose, service);
        let mut peer =
            |peer: String, why: &str| talks.push((name.to_owned(), peer, why.to_owned()));
        peer(host(settings.str("broker.url").unwrap()), "broker.url");
        if service == Service::EmailWorker && settings.str("email.transport").unwrap() == "smtp" {
            peer(
                settings.str("email.smtp.host").unwrap().to_owned(),
                "email.smtp.host",
            );
        }
        let env = compose_environment(compose_service(&compose, name)).unwrap();
        if let Some(endpoint) = env.get("OTEL_EXPORTER_OTLP_ENDPOINT") {
            peer(host(endpoint), "OTEL_EXPORTER_OTLP_ENDPOINT");
        }
    }
    let grafana = compose_service(&compose, "grafana");
    let datasources = mounted_host_path(grafana, "/etc/grafana/provisioning/datasources")
        .expect("grafana's data sources are mounted from the repository");
    for entry in std::fs::read_dir(&datasources).unwrap() {
        let doc: Value =
            serde_yaml_ng::from_str(&std::fs::read_to_string(entry.unwrap().path()).unwrap())
                .unwrap();
        for source in doc["datasources"].as_array().into_iter().flatten() {
            let url = source["url"].as_str().unwrap_or_default();
            talks.push((
                "grafana".to_owned(),
                host(url),
                format!("data source {}", source["name"]),
            ));
        }
    }
    let collector = otel_collector_config(&compose);
    for (name, exporter) in collector["exporters"].as_object().into_iter().flatten() {
        if let Some(endpoint) = exporter["endpoint"].as_str() {
            let peer = endpoint.split("://").last().unwrap_or_default();
            let peer = peer.split(':').next().unwrap_or_default().to_owned();
            talks.push((
                "otel-collector".to_owned(),
                peer,
                format!("exporter {name}"),
            ));
        }
    }
    assert!(talks.len() >= 9, "too few connections found: {talks:?}");

    let mut problems = Vec::new();
    for (service, peer, why) in &talks {
        let Some(target) = services.get(peer) else {
            problems.push(format!(
                "{service} talks to {peer} ({why}), which is no compose service"
            ));
            continue;
        };
        let dependencies = depends_on(service, &services[service]);
        match dependencies.iter().find(|(d, _)| d == peer) {
            None => problems.push(format!(
                "{service} talks to {peer} ({why}) but does not depend on it"
            )),
            Some((_, condition))
                if !target["healthcheck"]["test"].is_null()
                    && *condition != Some("service_healthy") =>
            {
                problems.push(format!(
                    "{service} starts before {peer} ({why}) is healthy, though {peer} has a \
                     healthcheck: use condition service_healthy"
                ))
            }
            Some(_) => {}
        }
    }
    report(problems);
}

#[test]
fn compose_mounts_exist_and_the_configs_they_mount_point_at_real_services_and_ports() {
    let file = dockerfile();
    let compose = compose();
    let services = compose["services"].as_object().unwrap();
    let mut problems = Vec::new();
    let named_volumes: BTreeSet<&str> = compose["volumes"]
        .as_object()
        .map(|v| v.keys().map(String::as_str).collect())
        .unwrap_or_default();
    for (name, spec) in services {
        for mount in compose_mounts(spec).unwrap() {
            if mount.bind {
                if !repo_root().join(&mount.source).exists() {
                    problems.push(format!(
                        "{name} mounts {}, which does not exist",
                        mount.source
                    ));
                }
            } else if !named_volumes.contains(mount.source.as_str()) {
                problems.push(format!(
                    "{name} mounts volume {}, which is not declared",
                    mount.source
                ));
            }
        }
    }

    // Prometheus: promtool accepts the config and rules compose mounts, and
    // every Warren job scrapes the service of its name on its ops port.
    let prometheus = compose_service(&compose, "prometheus");
    let config_arg = prometheus["command"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .find_map(|a| a.strip_prefix("--config.file="))
        .expect("prometheus' command names --config.file=");
    let config_path = mounted_host_path(prometheus, config_arg)
        .unwrap_or_else(|| panic!("prometheus' {config_arg} is not mounted from the repository"));
    let config_dir = config_path.parent().unwrap().to_owned();
    let config_name = config_path
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    {
        let _guard = process_lock();
        if let Err(e) = warren_deploy_check::prometheus::promtool(
            &config_dir,
            &["check", "config", &config_name],
        ) {
            problems.push(format!("{e:#}"));
        }
    }
    let config: Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    for rules in config["rule_files"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
    {
        let _guard = process_lock();
        if let Err(e) =
            warren_deploy_check::prometheus::promtool(&config_dir, &["check", "rules", rules])
        {
            problems.push(format!("{e:#}"));
        }
    }
    for service in Service::ALL {
        let ops = ops_port(&compose_settings(&file, &compose, service), service);
        let job = config["scrape_configs"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|j| j["job_name"] == service.name());
        let targets: Vec<&str> = job
            .map(|j| {
                j["static_configs"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .flat_map(|c| c["targets"].as_array().into_iter().flatten())
                    .filter_map(Value::as_str)
                    .collect()
            })
            .unwrap_or_default();
        let expected = format!("{}:{ops}", service.name());
        if targets != [expected.as_str()] {
            problems.push(format!(
                "prometheus job {} scrapes {targets:?}, not the compose service on its ops port ({expected})",
                service.name()
            ));
        }
    }
    for job in config["scrape_configs"].as_array().into_iter().flatten() {
        for target in job["static_configs"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|c| c["targets"].as_array().into_iter().flatten())
            .filter_map(Value::as_str)
        {
            let host = target.split(':').next().unwrap_or_default();
            if !services.contains_key(host) {
                problems.push(format!(
                    "prometheus scrapes {target}, and {host} is no compose service"
                ));
            }
        }
    }

    // Grafana: the home dashboard and the data source compose points it at.
    let grafana = compose_service(&compose, "grafana");
    let grafana_env = compose_environment(grafana).unwrap();
    if let Some(home) = grafana_env.get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH") {
        match mounted_host_path(grafana, home) {
            Some(path) if path.is_file() => {}
            _ => problems.push(format!(
                "grafana's home dashboard {home} is not a mounted file"
            )),
        }
    }
    if let Some(datasources) = mounted_host_path(grafana, "/etc/grafana/provisioning/datasources") {
        for entry in std::fs::read_dir(&datasources).unwrap() {
            let path = entry.unwrap().path();
            let doc: Value =
                serde_yaml_ng::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            for source in doc["datasources"].as_array().into_iter().flatten() {
                let url = url::Url::parse(source["url"].as_str().unwrap_or_default());
                let host = url
                    .as_ref()
                    .ok()
                    .and_then(|u| u.host_str())
                    .unwrap_or_default();
                if !services.contains_key(host) {
                    problems.push(format!(
                        "grafana data source {} points at {host}, no compose service",
                        source["name"]
                    ));
                }
            }
        }
    } else {
        problems
            .push("grafana's provisioning directory is not mounted from the repository".to_owned());
    }

    // The collector: a complete pipeline, exporting to a compose service.
    let collector = otel_collector_config(&compose);
    for (kind, list) in [
        ("receivers", "receivers"),
        ("processors", "processors"),
        ("exporters", "exporters"),
    ] {
        for pipeline in collector["service"]["pipelines"]
            .as_object()
            .into_iter()
            .flatten()
        {
            for component in pipeline.1[list]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
            {
                if collector[kind][component].is_null() {
                    problems.push(format!(
                        "collector pipeline {} uses {kind} {component}, not defined",
                        pipeline.0
                    ));
                }
            }
        }
    }
    for extension in collector["service"]["extensions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
    {
        if collector["extensions"][extension].is_null() {
            problems.push(format!("collector extension {extension} is not defined"));
        }
    }
    for (name, exporter) in collector["exporters"].as_object().into_iter().flatten() {
        if let Some(endpoint) = exporter["endpoint"].as_str() {
            let host = endpoint
                .split("://")
                .last()
                .unwrap_or_default()
                .split(':')
                .next()
                .unwrap_or_default();
            if !services.contains_key(host) {
                problems.push(format!(
                    "collector exporter {name} sends to {endpoint}: {host} is no compose service"
                ));
            }
        }
    }
    let jaeger = compose_service(&compose, "jaeger");
    if !compose_ports(jaeger)
        .unwrap()
        .iter()
        .any(|p| p.container == 16686)
    {
        problems.push("jaeger does not publish its UI (16686)".to_owned());
    }
    report(problems);
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

#[test]
fn the_compose_healthcheck_passes_against_a_ready_worker_and_fails_once_it_stopped() {
    let file = dockerfile();
    let compose = compose();
    // One script for every service, differing only in the port.
    let mut templates = BTreeSet::new();
    let mut paths = BTreeSet::new();
    for service in Service::ALL {
        let ops = ops_port(&compose_settings(&file, &compose, service), service);
        let script =
            health_script(compose_service(&compose, service.name())).unwrap_or_else(|| {
                panic!(
                    "compose {} has no [CMD, bash, -c, ...] healthcheck",
                    service.name()
                )
            });
        let template = script.replace(
            &format!("/dev/tcp/127.0.0.1/{ops}"),
            "/dev/tcp/127.0.0.1/{port}",
        );
        templates.insert(template);
        for path in ["/healthz", "/readyz"] {
            if script.contains(&format!("GET {path} ")) {
                paths.insert(path.to_owned());
            }
        }
    }
    assert_eq!(
        templates.len(),
        1,
        "the services' healthchecks differ: {templates:#?}"
    );
    assert_ops_router_serves(&paths);
    let template = templates.pop_first().unwrap();

    // Built before the broker connection opens: a long build would let its
    // heartbeats lapse.
    let binary = {
        let _guard = process_lock();
        warren_tests::worker::binary("email-worker", "email-worker").unwrap()
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let broker = TestBroker::new().await.unwrap();
        let outbox = tempfile::tempdir().unwrap();
        let env = vec![
            ("WARREN_BROKER__NAMESPACE", broker.namespace().to_owned()),
            ("WARREN_EMAIL__TRANSPORT", "outbox".to_owned()),
            (
                "WARREN_EMAIL__OUTBOX_DIR",
                outbox.path().display().to_string(),
            ),
            (
                "WARREN_EMAIL__TEMPLATES_DIR",
                repo_root()
                    .join("services/email-worker/templates")
                    .display()
                    .to_string(),
            ),
            ("WARREN_CONSUMER__EVENTS", "false".to_owned()),
            ("WARREN_OPS__ADDR", "127.0.0.1:0".to_owned()),
        ];
        let mut worker = {
            let _guard = process_lock_async().await;
            WorkerProcess::start(binary, "email-worker", &env)
                .await
                .unwrap()
        };
        let addr = worker.ops_addr().await.unwrap();
        worker.wait_ready().await.unwrap();
        let script = template.replace("{port}", &addr.port().to_string());
        let probe = |script: String| async move {
            let _guard = process_lock_async().await;
            tokio::process::Command::new("bash")
                .args(["-c", &script])
                .stderr(std::process::Stdio::null())
                .status()
                .await
                .unwrap()
                .success()
        };

        let deadline = Instant::now() + Duration::from_secs(30);
        while !probe(script.clone()).await {
            assert!(
                Instant::now() < deadline,
                "the healthcheck `{script}` did not pass within 30 s against a ready worker:\n{}",
                worker.tail(20)
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }

        worker.signal("TERM").unwrap();
        worker.wait_exit(Duration::from_secs(60)).await.unwrap();
        assert!(
            !probe(script.clone()).await,
            "the healthcheck `{script}` passes with no worker running"
        );
        broker.cleanup().await.unwrap();
    });
}

#[test]
fn workers_get_longer_to_stop_than_their_drain_deadline() {
    let file = dockerfile();
    let compose = compose();
    let manifests = manifests();
    let mut problems = Vec::new();
    for service in Service::ALL {
        let name = service.name();
        // What a clean stop takes: the drain for workers, the longest
        // request for the gateway.
        let deadline = |settings: &Settings| match service {
            Service::Gateway => settings.duration("http.request_timeout").unwrap(),
            _ => settings.duration("consumer.shutdown_timeout").unwrap() + DRAIN_MARGIN,
        };

        let settings = compose_settings(&file, &compose, service);
        let grace = match compose_service(&compose, name)["stop_grace_period"].as_str() {
            None => Duration::from_secs(10), // compose's default
            Some(text) => go_duration(text).unwrap_or_else(|| {
                panic!("compose {name}: stop_grace_period {text:?} is no duration compose reads")
            }),
        };
        if grace <= deadline(&settings) {
            problems.push(format!(
                "compose {name}: stop_grace_period {grace:?} is not longer than {:?}",
                deadline(&settings)
            ));
        }

        let settings = k8s_settings(&file, &manifests, service);
        let pod = &deployment(&manifests, service).doc["spec"]["template"]["spec"];
        let grace =
            Duration::from_secs(pod["terminationGracePeriodSeconds"].as_u64().unwrap_or(30));
        if grace <= deadline(&settings) {
            problems.push(format!(
                "Deployment {name}: terminationGracePeriodSeconds {grace:?} is not longer than {:?}",
                deadline(&settings)
            ));
        }
    }
    report(problems);
}

#[test]
fn services_that_share_work_agree_on_the_settings_they_share() {
    let file = dockerfile();
    let compose = compose();
    let manifests = manifests();
    let mut problems = Vec::new();
    let load = |place: &str, service: Service| match place {
        "docker-compose.yml" => compose_settings(&file, &compose, service),
        _ => k8s_settings(&file, &manifests, service),
    };
    for place in ["docker-compose.yml", "deploy/k8s"] {
        let email = load(place, Service::EmailWorker);
        let image = load(place, Service::ImageWorker);
        let gateway = load(place, Service::Gateway);
        for path in ["broker.url", "broker.namespace"] {
            for other in [&image, &gateway] {
                if email.get(path) != other.get(path) {
                    problems.push(format!("{place}: the services disagree on {path}"));
                }
            }
        }
        // The gateway writes uploads where the image worker reads them, and
        // checks tasks against the image worker's limits.
        for path in [
            "image.store",
            "image.s3",
            "image.max_width",
            "image.max_height",
            "image.max_pixels",
            "image.max_source_bytes",
            "image.max_inline_bytes",
        ] {
            if gateway.get(path) != image.get(path) {
                problems.push(format!(
                    "{place}: gateway's {path} = {:?}, image-worker's = {:?}",
                    gateway.get(path),
                    image.get(path)
                ));
            }
        }
        if image.get("image.store") == Some(&Value::from("local")) {
            let root = |s: &Settings| s.get("image.local_root").cloned();
            if root(&gateway) != root(&image) {
                problems.push(format!(
                    "{place}: gateway and image-worker have different local roots"
                ));
            }
        }
        // A delayed task goes to a delay queue the workers declared.
        for worker in [&email, &image] {
            if gateway.get("tasks.retry_delays") != worker.get("consumer.retry_delays") {
                problems.push(format!(
                    "{place}: gateway's tasks.retry_delays differ from a worker's"
                ));
            }
        }
        if gateway.get("email.max_attachment_bytes") != email.get("email.max_attachment_bytes") {
            problems.push(format!(
                "{place}: gateway and email-worker disagree on email.max_attachment_bytes"
            ));
        }
    }

    // Compose: the gateway and the image worker share the local store.
    let image = compose_settings(&file, &compose, Service::ImageWorker);
    if image.str("image.store").unwrap() == "local" {
        let root = image.str("image.local_root").unwrap();
        let volume = |service: &str| {
            compose_mounts(compose_service(&compose, service))
                .unwrap()
                .into_iter()
                .find(|m| m.target == root)
                .map(|m| m.source)
        };
        match (volume("gateway"), volume("image-worker")) {
            (Some(a), Some(b)) if a == b => {}
            other => problems.push(format!(
                "compose: gateway and image-worker must mount one volume at {root}: {other:?}"
            )),
        }
    }
    report(problems);
}

/// The section under the heading `title` of the docs page `page`, its
/// subsections included.
fn doc_section<'a>(text: &'a str, page: &str, title: &str) -> &'a str {
    docs::section(text, title).unwrap_or_else(|| panic!("{page} has no section {title}"))
}

#[test]
fn the_docs_list_every_port_compose_publishes() {
    let compose = compose();
    let deploy = read("docs/deploy.md");
    let section = doc_section(&deploy, "docs/deploy.md", "Running with Docker");
    let mut problems = Vec::new();
    for (name, spec) in compose["services"].as_object().unwrap() {
        if !section.contains(&format!("`{name}`")) {
            problems.push(format!(
                "docs/deploy.md, Running with Docker, does not list the service `{name}`"
            ));
        }
        for port in compose_ports(spec).unwrap() {
            let Some(host) = port.host else { continue };
            let mentioned = section
                .split(|c: char| !c.is_ascii_digit())
                .any(|n| n == host.to_string());
            if !mentioned {
                problems.push(format!(
                    "docs/deploy.md, Running with Docker, does not list {name}'s port {host}"
                ));
            }
        }
    }
    report(problems);
}

// ---------------------------------------------------------------------------
// deploy/k8s

#[test]
fn the_kubernetes_manifests_pass_the_kubernetes_schemas() {
    let validator = deploy_tool("kubernetes-validate");
    let manifests = manifests();
    let mut problems = Vec::new();
    for path in k8s_files() {
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        let expected: BTreeSet<String> = manifests
            .iter()
            .filter(|m| m.file == file && !m.is_keda() && !m.is_kustomization())
            .map(|m| format!("{}/{}", m.kind().to_ascii_lowercase(), m.name()))
            .collect();
        if expected.is_empty() {
            continue;
        }
        for version in KUBERNETES_VERSIONS {
            let mut command = Command::new(&validator);
            command.arg("--strict");
            if let Some(version) = version {
                command.args(["--kubernetes-version", version]);
            }
            command.arg(&path);
            let output = match run(&mut command) {
                Ok((stdout, stderr)) => stdout + &stderr,
                Err(e) => {
                    problems.push(format!("{e:#}"));
                    continue;
                }
            };
            // A misspelt kind only warns ("Couldn't find schema"): insist
            // that each resource was validated.
            let passed: BTreeSet<String> = output
                .lines()
                .filter_map(|l| l.split(" passed for resource ").nth(1))
                .filter_map(|rest| rest.split_whitespace().next())
                .map(str::to_owned)
                .collect();
            for resource in expected.difference(&passed) {
                problems.push(format!(
                    "{file}: {resource} was not validated against Kubernetes {}:\n{output}",
                    version.unwrap_or("(newest)")
                ));
            }
        }
    }
    report(problems);
}

#[test]
fn the_kustomization_applies_every_manifest() {
    let kustomization =
        yaml_documents(&std::fs::read_to_string(k8s_dir().join("kustomization.yaml")).unwrap())
            .unwrap()
            .remove(0);
    let listed: BTreeSet<String> = kustomization["resources"]
        .as_array()
        .expect("kustomization.yaml lists resources")
        .iter()
        .map(|r| r.as_str().unwrap().to_owned())
        .collect();
    let files: BTreeSet<String> = k8s_files()
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .filter(|f| f != "kustomization.yaml")
        .collect();
    assert_eq!(
        listed, files,
        "kustomization.yaml's resources are not the manifest files"
    );
    let namespace = kustomization["namespace"]
        .as_str()
        .expect("kustomization.yaml sets a namespace");
    let manifests = manifests();
    assert!(
        find(&manifests, "Namespace", namespace).is_some(),
        "no Namespace {namespace} manifest"
    );
    // Every image the Deployments run is one kustomize pins.
    let pinned: BTreeSet<&str> = kustomization["images"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["name"].as_str())
        .collect();
    for service in Service::ALL {
        let image = container(deployment(&manifests, service), service)["image"]
            .as_str()
            .unwrap();
        assert!(
            pinned.contains(image),
            "kustomization.yaml does not pin image {image}"
        );
    }
    // ... to the version the workspace builds (the tag of a release).
    let metadata = cargo_metadata();
    for entry in kustomization["images"].as_array().into_iter().flatten() {
        let name = entry["name"].as_str().unwrap_or_default();
        let package = name.strip_prefix("warren/").unwrap_or(name);
        let version = metadata["packages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == package)
            .and_then(|p| p["version"].as_str())
            .unwrap_or_else(|| {
                panic!("kustomization.yaml pins {name}, no package of the workspace")
            });
        assert_eq!(
            entry["newTag"].as_str(),
            Some(version),
            "kustomization.yaml deploys {name} at another version than the workspace's"
        );
    }
}

#[test]
fn deployments_run_the_services_image_and_probe_the_ports_and_paths_the_code_serves() {
    let file = dockerfile();
    let manifests = manifests();
    let mut problems = Vec::new();
    let mut probe_paths = BTreeSet::new();
    for service in Service::ALL {
        let name = service.name();
        let deployment = deployment(&manifests, service);
        let container = container(deployment, service);
        let settings = k8s_settings(&file, &manifests, service);

        if container["image"] != format!("warren/{name}") {
            problems.push(format!(
                "Deployment {name} runs {}, not warren/{name}",
                container["image"]
            ));
        }
        if !container["command"].is_null() || !container["args"].is_null() {
            problems.push(format!(
                "Deployment {name} overrides the image's entrypoint"
            ));
        }
        let labels = &deployment.doc["spec"]["template"]["metadata"]["labels"];
        if deployment.doc["spec"]["selector"]["matchLabels"]
            .as_object()
            .is_none_or(|m| m.iter().any(|(k, v)| &labels[k] != v))
        {
            problems.push(format!(
                "Deployment {name}: the selector does not select its pods"
            ));
        }
        // Prometheus' pod discovery (deploy/prometheus/prometheus.yml) keys
        // on this label.
        if labels["app.kubernetes.io/name"] != name {
            problems.push(format!(
                "Deployment {name}: pods lack app.kubernetes.io/name: {name}"
            ));
        }

        let ports: BTreeMap<String, u64> = container["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| {
                (
                    p["name"].as_str().unwrap_or_default().to_owned(),
                    p["containerPort"].as_u64().unwrap_or(0),
                )
            })
            .collect();
        let ops = match settings.port("ops.addr") {
            Ok(port) => u64::from(port),
            Err(e) => {
                problems.push(format!(
                    "Deployment {name}: the service has no ops port: {e:#}"
                ));
                continue;
            }
        };
        if ports.get("ops") != Some(&ops) {
            problems.push(format!(
                "Deployment {name}: port ops is {:?}, the service's is {ops}",
                ports.get("ops")
            ));
        }
        if service == Service::Gateway {
            let http = u64::from(settings.port("http.addr").unwrap());
            if ports.get("http") != Some(&http) {
                problems.push(format!(
                    "Deployment {name}: port http is {:?}, the service's is {http}",
                    ports.get("http")
                ));
            }
        }
        for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
            let get = &container[probe]["httpGet"];
            let port = match &get["port"] {
                Value::String(named) => ports.get(named).copied(),
                Value::Number(n) => n.as_u64(),
                _ => None,
            };
            if get["path"] != path || port != Some(ops) {
                problems.push(format!(
                    "Deployment {name}: {probe} is {get}, not GET {path} on the ops port {ops}"
                ));
            }
            probe_paths.insert(get["path"].as_str().unwrap_or_default().to_owned());
        }
    }
    // Services route to a named container port of the pods they select.
    for service in manifests.iter().filter(|m| m.kind() == "Service") {
        let selector = &service.doc["spec"]["selector"];
        let target = manifests.iter().find(|m| {
            m.kind() == "Deployment"
                && selector.as_object().is_some_and(|s| {
                    s.iter()
                        .all(|(k, v)| &m.doc["spec"]["template"]["metadata"]["labels"][k] == v)
                })
        });
        let Some(target) = target else {
            problems.push(format!(
                "Service {} selects no Deployment's pods",
                service.name()
            ));
            continue;
        };
        for port in service.doc["spec"]["ports"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let exists = target.doc["spec"]["template"]["spec"]["containers"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|c| c["ports"].as_array().into_iter().flatten())
                .any(|p| {
                    p["name"] == port["targetPort"] || p["containerPort"] == port["targetPort"]
                });
            if !exists {
                problems.push(format!(
                    "Service {}: targetPort {} is no container port",
                    service.name(),
                    port["targetPort"]
                ));
            }
        }
    }
    report(problems);
    assert_ops_router_serves(&probe_paths);
}

#[test]
fn deployments_get_settings_the_code_knows_and_secrets_only_from_secrets() {
    let file = dockerfile();
    let manifests = manifests();
    let mut problems = Vec::new();
    let mut used: BTreeSet<(String, String)> = BTreeSet::new();
    for service in Service::ALL {
        let name = service.name();
        let env = pod_env(&file, &manifests, service);
        for (key, (_, source)) in &env {
            used.insert(
                source
                    .split_once(' ')
                    .map(|(k, n)| (k.to_owned(), n.to_owned()))
                    .unwrap_or_default(),
            );
            if !key.starts_with("WARREN_") && !known_non_setting_variable(key) {
                problems.push(format!(
                    "Deployment {name}: {key} (from {source}) is read by nothing in Warren"
                ));
            }
            if SECRET_VARIABLES.contains(&key.as_str()) && !source.starts_with("Secret ") {
                problems.push(format!(
                    "Deployment {name}: the secret {key} comes from {source}, not a Secret"
                ));
            }
        }
        let plain: BTreeMap<String, String> = env.into_iter().map(|(k, (v, _))| (k, v)).collect();
        if let Err(e) = service.load_settings(&settings_env(&plain)) {
            problems.push(format!("Deployment {name}: {e:#}"));
        }
        if plain.get("OTEL_SERVICE_NAME").map(String::as_str) != Some(name) {
            problems.push(format!(
                "Deployment {name}: OTEL_SERVICE_NAME is not {name}"
            ));
        }
    }
    // Secret values never sit in a ConfigMap, even one nobody uses.
    for manifest in manifests.iter().filter(|m| m.kind() == "ConfigMap") {
        for key in manifest_data(manifest).unwrap().keys() {
            if SECRET_VARIABLES.contains(&key.as_str()) {
                problems.push(format!(
                    "ConfigMap {} holds the secret {key}",
                    manifest.name()
                ));
            }
        }
    }
    // Every ConfigMap and Secret is used by a Deployment or by KEDA.
    for manifest in manifests.iter().filter(|m| m.is_keda()) {
        for reference in manifest.doc["spec"]["secretTargetRef"]
            .as_array()
            .into_iter()
            .flatten()
        {
            used.insert((
                "Secret".to_owned(),
                reference["name"].as_str().unwrap_or_default().to_owned(),
            ));
        }
    }
    for manifest in manifests
        .iter()
        .filter(|m| m.kind() == "ConfigMap" || m.kind() == "Secret")
    {
        if !used.contains(&(manifest.kind().to_owned(), manifest.name().to_owned())) {
            problems.push(format!(
                "{} {} is used by nothing",
                manifest.kind(),
                manifest.name()
            ));
        }
    }
    report(problems);
}

#[test]
fn every_container_has_resource_requests_and_limits_and_runs_locked_down() {
    let manifests = manifests();
    let mut problems = Vec::new();
    for deployment in manifests.iter().filter(|m| m.kind() == "Deployment") {
        let pod = &deployment.doc["spec"]["template"]["spec"];
        if pod["securityContext"]["runAsNonRoot"] != true {
            problems.push(format!(
                "Deployment {}: runAsNonRoot is not true",
                deployment.name()
            ));
        }
        for container in pod["containers"].as_array().into_iter().flatten() {
            let name = format!(
                "{}/{}",
                deployment.name(),
                container["name"].as_str().unwrap_or_default()
            );
            for resource in ["cpu", "memory"] {
                let request = &container["resources"]["requests"][resource];
                let limit = &container["resources"]["limits"][resource];
                match (quantity(request), quantity(limit)) {
                    (Ok(request), Ok(limit)) if request > 0.0 && request <= limit => {}
                    _ => problems.push(format!(
                        "{name}: {resource} request {request} and limit {limit} are not both set with request <= limit"
                    )),
                }
            }
            let security = &container["securityContext"];
            if security["allowPrivilegeEscalation"] != false
                || security["readOnlyRootFilesystem"] != true
                || security["capabilities"]["drop"] != serde_json::json!(["ALL"])
            {
                problems.push(format!(
                    "{name}: securityContext must forbid privilege escalation, make the root file system \
                     read-only and drop all capabilities"
                ));
            }
        }
    }
    report(problems);
}

#[test]
fn resources_cover_what_each_service_may_hold_and_run() {
    let file = dockerfile();
    let manifests = manifests();
    let mut problems = Vec::new();
    for service in Service::ALL {
        let name = service.name();
        let settings = k8s_settings(&file, &manifests, service);
        let container = container(deployment(&manifests, service), service);
        let resources = &container["resources"];
        let request = quantity(&resources["requests"]["memory"]).unwrap();
        let limit = quantity(&resources["limits"]["memory"]).unwrap();
        let number = |path: &str| {
            settings
                .get(path)
                .and_then(Value::as_f64)
                .unwrap_or_else(|| panic!("{name} has no numeric setting {path}"))
        };
        // What the service holds for good once busy, and at most.
        let (steady, worst, what) = match service {
            Service::Gateway => {
                let view = number("events.max_tracked_tasks") * GATEWAY_BYTES_PER_TRACKED_TASK;
                let upload = number("http.max_upload_bytes").min(number("image.max_source_bytes"));
                // Uploads are held whole while stored, at most this many at once.
                let uploads = number("http.max_concurrent_uploads");
                (
                    view,
                    view + uploads * upload,
                    format!(
                        "a full status view (events.max_tracked_tasks x {GATEWAY_BYTES_PER_TRACKED_TASK} \
                         bytes), then http.max_concurrent_uploads ({uploads}) uploads of http.max_upload_bytes"
                    ),
                )
            }
            Service::EmailWorker => (
                0.0,
                number("consumer.prefetch")
                    * number("email.max_attachment_bytes")
                    * EMAIL_ATTACHMENT_COPIES,
                format!(
                    "consumer.prefetch tasks with email.max_attachment_bytes of attachments, \
                     {EMAIL_ATTACHMENT_COPIES} copies each"
                ),
            ),
            Service::ImageWorker => {
                // CPU-bound: one image thread per core, requested and
                // limited alike, so no thread is throttled or left idle
                // (image.threads 0 means one per core the container may use).
                let cpu_request = quantity(&resources["requests"]["cpu"]).unwrap();
                let cpu_limit = quantity(&resources["limits"]["cpu"]).unwrap();
                let threads = match number("image.threads") {
                    t if t < 1.0 => cpu_limit.ceil(),
                    t => t,
                };
                if cpu_request != cpu_limit || threads != cpu_limit {
                    problems.push(format!(
                        "Deployment {name}: {threads} image threads on a CPU request of \
                         {cpu_request} and a limit of {cpu_limit}: make all three equal"
                    ));
                }
                (
                    0.0,
                    threads * number("image.max_alloc_bytes")
                        + number("consumer.concurrency") * number("image.max_source_bytes"),
                    "image.max_alloc_bytes per image thread, and image.max_source_bytes per \
                     task in progress"
                        .to_owned(),
                )
            }
        };
        let needs_request = PROCESS_BASELINE_BYTES + steady;
        let needs_limit = PROCESS_BASELINE_BYTES + worst;
        if request < needs_request {
            problems.push(format!(
                "Deployment {name}: memory request {:.0} MiB is below the {:.0} MiB it holds \
                 for good (the process, and {what})",
                request / MIB,
                needs_request / MIB
            ));
        }
        if limit < needs_limit {
            problems.push(format!(
                "Deployment {name}: memory limit {:.0} MiB is below the {:.0} MiB it may hold \
                 (the process, and {what})",
                limit / MIB,
                needs_limit / MIB
            ));
        }
    }
    report(problems);
}

#[test]
fn every_deployment_has_a_disruption_budget_that_selects_its_pods() {
    let manifests = manifests();
    let mut problems = Vec::new();
    for deployment in manifests.iter().filter(|m| m.kind() == "Deployment") {
        let labels = &deployment.doc["spec"]["template"]["metadata"]["labels"];
        let budgets: Vec<&Manifest> = manifests
            .iter()
            .filter(|m| m.kind() == "PodDisruptionBudget")
            .filter(|m| {
                m.doc["spec"]["selector"]["matchLabels"]
                    .as_object()
                    .is_some_and(|s| !s.is_empty() && s.iter().all(|(k, v)| &labels[k] == v))
            })
            .collect();
        match budgets.as_slice() {
            [budget] => {
                let spec = &budget.doc["spec"];
                if spec["maxUnavailable"].is_null() == spec["minAvailable"].is_null() {
                    problems.push(format!(
                        "PodDisruptionBudget {}: set one of maxUnavailable, minAvailable",
                        budget.name()
                    ));
                }
                // A worker may scale to one replica (or zero): minAvailable
                // would then block every node drain.
                if deployment.doc["spec"]["replicas"].is_null() && !spec["minAvailable"].is_null() {
                    problems.push(format!(
                        "PodDisruptionBudget {}: use maxUnavailable for an autoscaled Deployment",
                        budget.name()
                    ));
                }
            }
            other => problems.push(format!(
                "Deployment {} is covered by {} disruption budgets, not one",
                deployment.name(),
                other.len()
            )),
        }
    }
    report(problems);
}

#[test]
fn keda_scales_each_worker_on_ready_plus_unacked_messages_of_its_own_queue() {
    let file = dockerfile();
    let manifests = manifests();
    let mut problems = Vec::new();
    let scaled: Vec<&Manifest> = manifests
        .iter()
        .filter(|m| m.kind() == "ScaledObject")
        .collect();
    for manifest in manifests.iter().filter(|m| m.is_keda()) {
        if manifest.doc["apiVersion"] != "keda.sh/v1alpha1" || manifest.name().is_empty() {
            problems.push(format!(
                "{}: a KEDA resource needs apiVersion keda.sh/v1alpha1 and a name",
                manifest.file
            ));
        }
        if !["ScaledObject", "TriggerAuthentication"].contains(&manifest.kind()) {
            problems.push(format!(
                "{}: unexpected KEDA kind {}",
                manifest.file,
                manifest.kind()
            ));
        }
    }

    for service in Service::ALL {
        let name = service.name();
        let mine: Vec<&&Manifest> = scaled
            .iter()
            .filter(|m| m.doc["spec"]["scaleTargetRef"]["name"] == name)
            .collect();
        let Some(stem) = service.queue_stem() else {
            if !mine.is_empty() {
                problems.push(format!(
                    "{name} consumes no queue; KEDA should not scale it on one"
                ));
            }
            continue;
        };
        let [object] = mine.as_slice() else {
            problems.push(format!(
                "{} ScaledObjects target {name}, not one",
                mine.len()
            ));
            continue;
        };
        let spec = &object.doc["spec"];
        let deployment = deployment(&manifests, service);
        if !deployment.doc["spec"]["replicas"].is_null() {
            problems.push(format!(
                "Deployment {name} sets replicas, which every apply would reset under the autoscaler"
            ));
        }
        let target_kind = spec["scaleTargetRef"]["kind"]
            .as_str()
            .unwrap_or("Deployment");
        if target_kind != "Deployment" {
            problems.push(format!(
                "ScaledObject {}: scaleTargetRef.kind is {target_kind}",
                object.name()
            ));
        }

        let settings = k8s_settings(&file, &manifests, service);
        let min = spec["minReplicaCount"].as_u64().unwrap_or(0);
        let max = spec["maxReplicaCount"].as_u64().unwrap_or(100);
        if min > max || max == 0 {
            problems.push(format!(
                "ScaledObject {}: replicas {min}..{max}",
                object.name()
            ));
        }
        if let Some(fallback) = spec["fallback"]["replicas"].as_u64()
            && (fallback > max || fallback < min.max(1))
        {
            problems.push(format!(
                "ScaledObject {}: fallback replicas {fallback} outside {min}..{max}",
                object.name()
            ));
        }
        // Going down must not outrun the tasks in flight.
        let task_timeout = settings.duration("consumer.task_timeout").unwrap();
        let window = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]
            ["stabilizationWindowSeconds"]
            .as_u64()
            .unwrap_or(300);
        if Duration::from_secs(window) <= task_timeout {
            problems.push(format!(
                "ScaledObject {}: the scale-down window ({window}s) is not longer than consumer.task_timeout",
                object.name()
            ));
        }
        if min == 0 {
            let cooldown = spec["cooldownPeriod"].as_u64().unwrap_or(300);
            if Duration::from_secs(cooldown) <= task_timeout {
                problems.push(format!(
                    "ScaledObject {}: cooldownPeriod ({cooldown}s) is not longer than consumer.task_timeout",
                    object.name()
                ));
            }
        }

        let triggers = spec["triggers"].as_array().cloned().unwrap_or_default();
        if triggers.is_empty() {
            problems.push(format!("ScaledObject {} has no triggers", object.name()));
        }
        for trigger in &triggers {
            let Some(metadata) = trigger["metadata"].as_object() else {
                problems.push(format!(
                    "ScaledObject {}: a trigger without metadata",
                    object.name()
                ));
                continue;
            };
            if trigger["type"] != "rabbitmq" {
                problems.push(format!(
                    "ScaledObject {}: trigger type {} (expected rabbitmq)",
                    object.name(),
                    trigger["type"]
                ));
                continue;
            }
            let meta = |key: &str| metadata.get(key).and_then(Value::as_str);
            for key in metadata.keys() {
                if !KEDA_RABBITMQ_METADATA.contains(&key.as_str()) {
                    problems.push(format!(
                        "ScaledObject {}: KEDA's rabbitmq scaler has no parameter {key}",
                        object.name()
                    ));
                }
            }
            // Ready + unacked: the management API's `messages`.
            if meta("protocol") != Some("http")
                || meta("mode") != Some("QueueLength")
                || meta("excludeUnacknowledged").is_some_and(|v| v != "false")
            {
                problems.push(format!(
                    "ScaledObject {}: count ready + unacked messages: protocol http, mode QueueLength, \
                     excludeUnacknowledged unset or \"false\" (amqp mode counts ready messages only, \
                     kedacore/keda#356)",
                    object.name()
                ));
            }
            let queue = Names::new(settings.str("broker.namespace").unwrap()).work_queue(stem);
            if meta("queueName") != Some(queue.as_str()) {
                problems.push(format!(
                    "ScaledObject {}: queueName is {:?}, the worker consumes {queue}",
                    object.name(),
                    meta("queueName")
                ));
            }
            let concurrency = settings
                .get("consumer.concurrency")
                .and_then(Value::as_u64)
                .unwrap();
            let value = meta("value").and_then(|v| v.parse::<f64>().ok());
            if value != Some(concurrency as f64) {
                problems.push(format!(
                    "ScaledObject {}: value is {:?}, not the worker's consumer.concurrency ({concurrency}): \
                     keda.yaml explains why",
                    object.name(),
                    meta("value")
                ));
            }
            if let Some(activation) = meta("activationValue")
                && activation.parse::<f64>().is_err()
            {
                problems.push(format!(
                    "ScaledObject {}: activationValue {activation} is no number",
                    object.name()
                ));
            }
            // The management API of the broker the workers use.
            let broker = url::Url::parse(settings.str("broker.url").unwrap()).unwrap();
            let host = meta("host").map(url::Url::parse);
            match host {
                Some(Ok(api)) => {
                    let api_host = api.host_str().unwrap_or_default();
                    let broker_host = broker.host_str().unwrap_or_default();
                    if api_host.split('.').next() != Some(broker_host)
                        || !matches!(api.scheme(), "http" | "https")
                    {
                        problems.push(format!(
                            "ScaledObject {}: host {api} is not the management API of the broker {broker_host}",
                            object.name()
                        ));
                    }
                }
                other => {
                    problems.push(format!("ScaledObject {}: host is {other:?}", object.name()))
                }
            }
            let vhost = broker
                .path()
                .trim_start_matches('/')
                .replace("%2f", "/")
                .replace("%2F", "/");
            if meta("vhostName") != Some(vhost.as_str()) {
                problems.push(format!(
                    "ScaledObject {}: vhostName {:?} is not the broker URL's vhost {vhost:?}",
                    object.name(),
                    meta("vhostName")
                ));
            }
            // Credentials from a TriggerAuthentication whose Secret exists.
            let auth_name = trigger["authenticationRef"]["name"]
                .as_str()
                .unwrap_or_default();
            let Some(auth) = find(&manifests, "TriggerAuthentication", auth_name) else {
                problems.push(format!(
                    "ScaledObject {}: no TriggerAuthentication {auth_name}",
                    object.name()
                ));
                continue;
            };
            let mut parameters = BTreeSet::new();
            for reference in auth.doc["spec"]["secretTargetRef"]
                .as_array()
                .into_iter()
                .flatten()
            {
                let parameter = reference["parameter"].as_str().unwrap_or_default();
                parameters.insert(parameter);
                if !KEDA_RABBITMQ_AUTH.contains(&parameter) {
                    problems.push(format!(
                        "TriggerAuthentication {auth_name}: no rabbitmq parameter {parameter}"
                    ));
                }
                let secret = reference["name"].as_str().unwrap_or_default();
                let key = reference["key"].as_str().unwrap_or_default();
                let has_key = find(&manifests, "Secret", secret)
                    .map(|s| manifest_data(s).unwrap().contains_key(key))
                    .unwrap_or(false);
                if !has_key {
                    problems.push(format!(
                        "TriggerAuthentication {auth_name}: Secret {secret} has no key {key}"
                    ));
                }
            }
            if parameters.contains("username") != parameters.contains("password") {
                problems.push(format!(
                    "TriggerAuthentication {auth_name}: username and password go together"
                ));
            }
        }
    }
    report(problems);
}

// ---------------------------------------------------------------------------
// docs/observability.md and docs/deploy.md, "Running in production"

/// Every panel of a Grafana dashboard, those inside rows included; rows
/// themselves are headings, not panels.
fn dashboard_panels(panels: &Value, out: &mut Vec<String>) {
    for panel in panels.as_array().into_iter().flatten() {
        if panel["type"] != "row" {
            out.push(panel["title"].as_str().unwrap_or_default().to_owned());
        }
        dashboard_panels(&panel["panels"], out);
    }
}

#[test]
fn the_docs_explain_every_dashboard_panel_and_alert_and_link_what_they_cite() {
    let observability = read("docs/observability.md");
    let deploy = read("docs/deploy.md");
    let production = doc_section(&deploy, "docs/deploy.md", "Running in production");
    let mut problems = Vec::new();

    // Each dashboard and each of its panels, by title.
    let mut dashboards = 0;
    for entry in std::fs::read_dir(repo_root().join("deploy/grafana/dashboards")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|x| x != "json") {
            continue;
        }
        dashboards += 1;
        let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let title = dashboard["title"].as_str().unwrap_or_default();
        if !observability.contains(&format!("**{title}**")) {
            problems.push(format!(
                "docs/observability.md does not describe the dashboard **{title}**"
            ));
        }
        let mut panels = Vec::new();
        dashboard_panels(&dashboard["panels"], &mut panels);
        assert!(!panels.is_empty(), "{title} has no panels");
        for panel in panels {
            if !observability.contains(&format!("*{panel}*")) {
                problems.push(format!(
                    "docs/observability.md does not say what the panel *{panel}* of {title} shows"
                ));
            }
        }
    }
    assert!(dashboards >= 2, "no dashboards found");

    // Each alert: what it means (Observability) and what to do about it
    // in production.
    let rules: Value =
        serde_yaml_ng::from_str(&read("deploy/prometheus/alerts.yml")).expect("alerts.yml");
    let alerts: Vec<&str> = rules["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_array().into_iter().flatten())
        .filter_map(|r| r["alert"].as_str())
        .collect();
    assert!(!alerts.is_empty(), "alerts.yml has no alerts");
    for alert in alerts {
        for (section, text) in [
            ("docs/observability.md", observability.as_str()),
            ("docs/deploy.md, Running in production", production),
        ] {
            if !text.contains(&format!("| `{alert}` |")) {
                problems.push(format!("{section} has no row for the alert {alert}"));
            }
        }
    }

    // What the issue asks of the section, and links to what it cites (that
    // every relative link leads to a file and heading is the docs check's).
    for heading in [
        "What a replica buys",
        "Autoscaling",
        "Dashboards and alerts in production",
        "Draining a worker",
    ] {
        if !production.contains(&format!("\n### {heading}\n")) {
            problems.push(format!(
                "docs/deploy.md, Running in production, has no ### {heading}"
            ));
        }
    }
    for wanted in [
        "performance.md",
        "observability.md#dashboards",
        "observability.md#alerts",
    ] {
        if !production.contains(&format!("]({wanted})")) {
            problems.push(format!(
                "docs/deploy.md, Running in production, does not link {wanted}"
            ));
        }
    }
    for file in ["docs/deploy.md", "docs/observability.md"] {
        problems.extend(docs::broken_links(file));
    }
    report(problems);
}
