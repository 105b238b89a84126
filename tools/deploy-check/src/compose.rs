//! `docker-compose.yml` read the way Docker Compose reads it: durations,
//! environments, published ports and mounts, in their short and long forms.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value;

use crate::repo::repo_root;

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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

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
    fn compose_short_ports() {
        let service = serde_json::json!({"ports": ["127.0.0.1:8080:80", "9000:9001", "53/udp"]});
        let ports = compose_ports(&service).unwrap();
        assert_eq!(ports[0].host, Some(8080));
        assert_eq!(ports[0].container, 80);
        assert_eq!(ports[1].host, Some(9000));
        assert_eq!(ports[2].container, 53);
    }
}
