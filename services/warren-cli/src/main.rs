//! `warren`: parse the command line, run it, exit with its documented
//! status (see `docs/cli.md`).

use clap::Parser;
use warren_cli::{Cli, run};

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    // reqwest is built without a bundled TLS provider: ring, as everywhere.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    match run(cli).await {
        Ok(exit) => exit.into(),
        Err(error) => {
            eprintln!("error: {error:#}");
            error.exit().into()
        }
    }
}
