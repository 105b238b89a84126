//! The peers `--peers` runs beside Warren in the same run: other task
//! frameworks doing the same job on the same broker, machine and servers.
//!
//! Each peer is Python from a virtualenv that `bench/prepare` installs from
//! PyPI inside the checkout (`bench/.venv`, pinned in
//! `bench/peers/requirements.txt`); its scripts live in `bench/peers/`.
//! Today: [`Peer::Celery`] in the email section (the seed's email task),
//! and both peers' no-op tasks in the consume and publish sections
//! ([`noop`]).
//! A section asks [`Peers::has`] for the peers it knows how to run, so a new
//! peer (Dramatiq) or a new section (no-op consumers) adds a variant and its
//! own module, nothing else.

pub mod celery;
pub mod noop;

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use anyhow::bail;

/// A framework measured beside Warren.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// Celery 5, prefork, `acks_late`.
    Celery,
    /// Dramatiq 2, its RabbitMQ broker.
    Dramatiq,
}

impl Peer {
    pub const ALL: [Peer; 2] = [Peer::Celery, Peer::Dramatiq];

    pub fn as_str(self) -> &'static str {
        match self {
            Peer::Celery => "celery",
            Peer::Dramatiq => "dramatiq",
        }
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Peer {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Peer::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<_> = Peer::ALL.iter().map(|p| p.as_str()).collect();
                format!("unknown peer '{s}' (one of {})", names.join(", "))
            })
    }
}

/// The peers of this run (none without `--peers`).
#[derive(Debug, Clone, Default)]
pub struct Peers(pub Vec<Peer>);

impl Peers {
    pub fn has(&self, peer: Peer) -> bool {
        self.0.contains(&peer)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// `bench/`: the peers' scripts are in `bench/peers/`, their venv in
/// `bench/.venv`.
pub fn bench_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// An executable of the peers' virtualenv, or how to get it.
pub fn venv_bin(name: &str) -> anyhow::Result<PathBuf> {
    let path = bench_dir().join(".venv/bin").join(name);
    if !path.exists() {
        bail!(
            "{} is missing: run bench/prepare (it installs the peers into bench/.venv)",
            path.display()
        );
    }
    Ok(path)
}
