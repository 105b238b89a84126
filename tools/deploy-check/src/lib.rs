//! Checks that Warren's deploy files, dashboards, alerts and docs agree with
//! the code, without Docker or a cluster: the `Dockerfile`, `docker-compose.yml`
//! and the manifests under `deploy/k8s` read the way their tools read them, each
//! service's settings loaded by its own loader from the environment those files
//! give it, a real Prometheus for the dashboards, and the Markdown docs' links.
//!
//! The checks are the tests of this crate (`tests/deploy.rs`, `tests/dashboards.rs`,
//! `tests/docs.rs`); this library is what they share. It is the one crate besides
//! the services themselves that depends on the service crates.

pub mod compose;
pub mod dockerfile;
pub mod docs;
pub mod k8s;
pub mod prometheus;
pub mod repo;
pub mod services;

pub use compose::{
    Mount, PublishedPort, compose_environment, compose_mounts, compose_ports, go_duration,
    mounted_host_path,
};
pub use dockerfile::{Dockerfile, Instruction, Stage, cargo_build_command, shell_words};
pub use k8s::{
    EnvSource, Manifest, container_env, find, k8s_dir, k8s_files, k8s_manifests, manifest_data,
    quantity,
};
pub use repo::{
    deploy_tool, deploy_tools_dir, process_lock, process_lock_async, read, repo_root, run,
    yaml_documents,
};
pub use services::{Service, Settings, known_non_setting_variable};
