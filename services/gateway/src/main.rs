//! The gateway: telemetry, settings, build, serve until SIGTERM or ctrl-c.
//!
//! Two helpers for `[auth]`: `gateway new-key` prints a new random key and
//! the hash to configure; `gateway hash-key` reads a key on standard input
//! (never the command line, which other users can see) and prints its hash.

use anyhow::Context;
use gateway::{Gateway, Settings};

// mimalloc, not the system's malloc: see "The allocator" in
// docs/performance.md.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match std::env::args().nth(1).as_deref() {
        Some("new-key") => {
            let key = gateway::auth::new_key();
            println!("key:  {key}");
            println!("hash: {}", gateway::auth::hash_key(&key));
            return Ok(());
        }
        Some("hash-key") => {
            let mut key = String::new();
            std::io::stdin()
                .read_line(&mut key)
                .context("Could not read the key on standard input")?;
            let key = key.trim_end_matches(['\r', '\n']);
            anyhow::ensure!(!key.is_empty(), "No key on standard input");
            println!("{}", gateway::auth::hash_key(key));
            return Ok(());
        }
        Some(other) => anyhow::bail!(
            "Unknown argument '{other}': `gateway` serves; `gateway new-key` and `gateway hash-key` make keys"
        ),
        None => {}
    }
    let settings = Settings::load().context("Could not load the settings")?;
    let telemetry = warren::telemetry::init(&settings.telemetry, "gateway", std::io::stdout)
        .context("Could not set up logging and tracing")?;
    warren::metrics::init("gateway");
    gateway::metrics::init();
    let shutdown = warren::shutdown::on_signal();

    let ops_settings = settings.ops.clone();
    let gateway = Gateway::build(settings).context("Could not set up the gateway")?;

    // The ops endpoints outlive the HTTP API's drain.
    let readiness = gateway.readiness();
    let result = warren::ops::serve_during(&ops_settings, readiness, gateway.run(shutdown)).await;
    telemetry.shutdown().await;
    result?.context("The gateway stopped")
}
