//! A real Prometheus under test, and the deploy files it is checked against:
//! `/usr/bin/prometheus` (Debian's package) on a free port with a temporary
//! store, its HTTP query API, `promtool`, and the PromQL targets of the
//! Grafana dashboards under `deploy/grafana/dashboards`.

use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::Value;
use tokio::process::{Child, Command};
use warren_tests::ops::http_get;

use crate::repo::repo_root;

/// The repository's `deploy/` directory.
pub fn deploy_dir() -> PathBuf {
    repo_root().join("deploy")
}

/// The Prometheus server binary: `$TEST_PROMETHEUS`, else Debian's.
fn prometheus_binary() -> PathBuf {
    std::env::var_os("TEST_PROMETHEUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/prometheus"))
}

/// Runs `promtool` with `args` in `dir`; an error carries its output.
pub fn promtool(dir: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = std::process::Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .context(
            "could not run promtool (Debian package prometheus; scripts/prepare installs it)",
        )?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        bail!(
            "promtool {} failed ({}):\n{text}",
            args.join(" "),
            out.status
        );
    }
    Ok(text)
}

/// `deploy/prometheus/prometheus.yml` rewritten for a test: every job named
/// in `targets` scrapes only the given `host:port`s (keeping its path and
/// parameters), every other job is dropped, scrapes run every 2 s (2 s
/// allowed each), rule evaluations each second, and `rule_files` point at `rules_dir`.
pub fn local_config(
    deploy_config: &str,
    rules_dir: &Path,
    targets: &[(&str, Vec<String>)],
) -> anyhow::Result<String> {
    let mut config: Value =
        serde_yaml_ng::from_str(deploy_config).context("prometheus.yml is not YAML")?;
    config["global"] = serde_json::json!({
        // A scrape may take more than a second on a loaded machine; tests
        // wait for scrapes to happen, never for time to pass.
        "scrape_interval": "2s",
        "scrape_timeout": "2s",
        "evaluation_interval": "1s",
    });
    if let Some(files) = config["rule_files"].as_array_mut() {
        for file in files {
            let name = file.as_str().context("a rule file is not a string")?;
            *file = Value::from(rules_dir.join(name).display().to_string());
        }
    }
    let jobs = config["scrape_configs"]
        .as_array_mut()
        .context("prometheus.yml has no scrape_configs")?;
    jobs.retain(|job| {
        targets
            .iter()
            .any(|(name, _)| job["job_name"].as_str() == Some(name))
    });
    for (name, addrs) in targets {
        let job = jobs
            .iter_mut()
            .find(|job| job["job_name"].as_str() == Some(name))
            .with_context(|| format!("prometheus.yml has no job {name}"))?;
        let job = job
            .as_object_mut()
            .context("a scrape config is not a map")?;
        job.retain(|key, _| !key.ends_with("_sd_configs"));
        job.insert(
            "static_configs".into(),
            serde_json::json!([{ "targets": addrs }]),
        );
    }
    // JSON is YAML: Prometheus reads it as it is.
    Ok(serde_json::to_string_pretty(&config)?)
}

/// A Prometheus server on 127.0.0.1, killed when dropped.
pub struct PrometheusServer {
    pub addr: SocketAddr,
    child: Child,
    log: PathBuf,
    // Dropped after the child: the store outlives the process using it.
    _dir: tempfile::TempDir,
}

impl PrometheusServer {
    /// Starts Prometheus with `config` (YAML) on a free port and waits
    /// until it is ready.
    pub async fn start(config: &str) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("warren-prom-").tempdir()?;
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config)?;
        let log = dir.path().join("prometheus.log");
        let port = {
            let listener = TcpListener::bind("127.0.0.1:0")?;
            listener.local_addr()?.port()
        };
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let binary = prometheus_binary();
        let child = Command::new(&binary)
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(File::create(&log)?)
            .stderr(File::create(&log)?)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| {
                format!(
                    "could not start {} (Debian package prometheus; scripts/prepare installs it)",
                    binary.display()
                )
            })?;
        let mut server = Self {
            addr,
            child,
            log,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok((200, _)) = http_get(addr, "/-/ready").await {
                return Ok(server);
            }
            if let Some(status) = server.child.try_wait()? {
                bail!("Prometheus exited ({status}):\n{}", server.log_text());
            }
            if Instant::now() >= deadline {
                bail!(
                    "Prometheus was not ready within 30 s:\n{}",
                    server.log_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// What Prometheus logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `GET path` on the HTTP API, parsed as JSON, whatever the status
    /// (errors come back as `{"status": "error", "error": ...}`).
    pub async fn api(&self, path: &str) -> anyhow::Result<Value> {
        let (status, body) = http_get(self.addr, path).await?;
        serde_json::from_str(&body)
            .with_context(|| format!("GET {path}: HTTP {status}, not JSON: {body:.500}"))
    }

    /// Evaluates `expr` now (`/api/v1/query`).
    pub async fn query(&self, expr: &str) -> anyhow::Result<QueryAnswer> {
        let answer = self
            .api(&format!("/api/v1/query?query={}", percent_encode(expr)))
            .await?;
        if answer["status"] != "success" {
            return Ok(QueryAnswer::Error(format!(
                "{}: {}",
                answer["errorType"].as_str().unwrap_or("error"),
                answer["error"].as_str().unwrap_or("")
            )));
        }
        let data = &answer["data"];
        let result = match data["resultType"].as_str() {
            Some("vector" | "matrix") => data["result"].as_array().cloned().unwrap_or_default(),
            // A scalar or string: one value.
            _ => vec![data["result"].clone()],
        };
        Ok(QueryAnswer::Data(result))
    }

    /// Waits until `expr` returns at least one sample whose value satisfies
    /// `ok`.
    pub async fn wait_for(
        &self,
        expr: &str,
        ok: impl Fn(f64) -> bool,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let last = self.query(expr).await?;
            if let QueryAnswer::Data(result) = &last
                && result.iter().filter_map(sample_value).any(&ok)
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("waited {timeout:?} for {expr}; last answer: {last:?}");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

impl Drop for PrometheusServer {
    fn drop(&mut self) {
        // kill_on_drop would only signal; wait a moment for the process to
        // go so the temporary store can be removed after it.
        let _ = self.child.start_kill();
        let deadline = Instant::now() + Duration::from_secs(5);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Prometheus' answer to a query.
#[derive(Debug)]
pub enum QueryAnswer {
    /// The series (or the one scalar) returned; may be empty.
    Data(Vec<Value>),
    /// The query did not parse or could not be evaluated.
    Error(String),
}

/// The value of an instant-vector sample (`{"metric":..,"value":[t,"v"]}`).
pub fn sample_value(sample: &Value) -> Option<f64> {
    sample["value"][1].as_str()?.parse().ok()
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// One query of a dashboard panel.
#[derive(Debug, Clone)]
pub struct PanelQuery {
    pub dashboard: String,
    pub panel: String,
    pub expr: String,
}

/// Every Prometheus query of a Grafana dashboard's panels, rows' nested
/// panels included.
pub fn dashboard_queries(dashboard: &Value) -> Vec<PanelQuery> {
    fn walk(panels: &Value, dashboard: &str, out: &mut Vec<PanelQuery>) {
        for panel in panels.as_array().into_iter().flatten() {
            for target in panel["targets"].as_array().into_iter().flatten() {
                if let Some(expr) = target["expr"].as_str() {
                    out.push(PanelQuery {
                        dashboard: dashboard.to_owned(),
                        panel: panel["title"].as_str().unwrap_or("").to_owned(),
                        expr: expr.to_owned(),
                    });
                }
            }
            walk(&panel["panels"], dashboard, out);
        }
    }
    let mut out = Vec::new();
    let title = dashboard["title"].as_str().unwrap_or("");
    walk(&dashboard["panels"], title, &mut out);
    out
}

/// Replaces Grafana's template variables (`$name`, `${name}`,
/// `${name:format}`, `[[name]]`) by the values in `vars`; a variable not
/// in `vars` is an error, so a dashboard cannot use one the test ignores.
pub fn substitute(expr: &str, vars: &[(&str, &str)]) -> anyhow::Result<String> {
    let lookup = |name: &str| {
        vars.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| *v)
            .with_context(|| format!("unknown template variable ${name} in {expr}"))
    };
    let is_word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut out = String::new();
    let mut rest = expr;
    while let Some(i) = rest.find(['$', '[']) {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(braced) = tail.strip_prefix("${") {
            let end = braced.find('}').context("unclosed ${")?;
            let name = braced[..end].split(':').next().unwrap_or("");
            out.push_str(lookup(name)?);
            rest = &braced[end + 1..];
        } else if let Some(bracketed) = tail.strip_prefix("[[")
            && let Some(end) = bracketed.find("]]")
            && bracketed[..end].chars().all(is_word)
            && end > 0
        {
            out.push_str(lookup(&bracketed[..end])?);
            rest = &bracketed[end + 2..];
        } else if let Some(named) = tail.strip_prefix('$')
            && named.starts_with(is_word)
        {
            let end = named.find(|c: char| !is_word(c)).unwrap_or(named.len());
            out.push_str(lookup(&named[..end])?);
            rest = &named[end..];
        } else {
            out.push_str(&tail[..1]);
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_variables_are_replaced_in_every_syntax() {
        let vars = [("namespace", "t-1"), ("__rate_interval", "30s")];
        assert_eq!(
            substitute(
                r#"rate(x{queue=~"$namespace[.][^.]+", a="${namespace:regex}", b="[[namespace]]"}[$__rate_interval])"#,
                &vars
            )
            .unwrap(),
            r#"rate(x{queue=~"t-1[.][^.]+", a="t-1", b="t-1"}[30s])"#
        );
        assert!(substitute("x{a=\"$nope\"}", &vars).is_err());
        assert_eq!(substitute("x[5m] $", &vars).unwrap(), "x[5m] $");
    }

    #[test]
    fn queries_are_percent_encoded() {
        assert_eq!(
            percent_encode("a{b=\"c d\"}[1m]"),
            "a%7Bb%3D%22c%20d%22%7D%5B1m%5D"
        );
    }

    #[test]
    fn the_local_config_keeps_named_jobs_with_new_targets() {
        let deploy = "global: {scrape_interval: 15s}\nrule_files: [alerts.yml]\nscrape_configs:\n  - job_name: a\n    metrics_path: /m\n    params: {family: [x, y]}\n    static_configs: [{targets: ['a:1']}]\n  - job_name: b\n    static_configs: [{targets: ['b:1']}]\n";
        let out = local_config(
            deploy,
            Path::new("/rules"),
            &[("a", vec!["127.0.0.1:9".to_owned()])],
        )
        .unwrap();
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["global"]["scrape_interval"], "2s");
        assert_eq!(v["rule_files"][0], "/rules/alerts.yml");
        assert_eq!(v["scrape_configs"].as_array().unwrap().len(), 1);
        assert_eq!(v["scrape_configs"][0]["metrics_path"], "/m");
        assert_eq!(v["scrape_configs"][0]["params"]["family"][1], "y");
        assert_eq!(
            v["scrape_configs"][0]["static_configs"][0]["targets"][0],
            "127.0.0.1:9"
        );
    }
}
