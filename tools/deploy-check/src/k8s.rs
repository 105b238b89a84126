//! The manifests under `deploy/k8s` as YAML documents, the environment the
//! kubelet gives each container (ConfigMaps and Secrets resolved), and
//! resource quantities.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, bail};
use serde_json::Value;

use crate::repo::{repo_root, yaml_documents};

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
    fn quantities() {
        assert_eq!(quantity(&Value::from("100m")).unwrap(), 0.1);
        assert_eq!(quantity(&Value::from("2")).unwrap(), 2.0);
        assert_eq!(
            quantity(&Value::from("512Mi")).unwrap(),
            512.0 * 1024.0 * 1024.0
        );
    }
}
