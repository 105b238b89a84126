//! The ops endpoints every service serves on a port of its own:
//! `/metrics` (Prometheus text format), `/healthz` (the process is alive)
//! and `/readyz` (connected, topology declared, consuming).
//!
//! Kept apart from any public API port so probes and scrapes never compete
//! with user traffic and can be firewalled separately.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::settings::OpsSettings;

/// Answers whether the service is ready, and if not, why.
pub type Readiness = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// A running ops server.
pub struct OpsServer {
    /// The address it listens on (the port chosen, for port 0).
    pub local_addr: SocketAddr,
    /// The server's task: it ends after shutdown.
    pub task: JoinHandle<()>,
}

/// Binds the ops port and serves until `shutdown` is cancelled. Logs the
/// bound address (useful with port 0).
pub async fn serve(
    settings: &OpsSettings,
    readiness: Readiness,
    shutdown: CancellationToken,
) -> std::io::Result<OpsServer> {
    let listener = TcpListener::bind(&settings.addr).await?;
    let local_addr = listener.local_addr()?;
    let app = router(readiness);
    tracing::info!(addr = %local_addr, "Serving /metrics, /healthz and /readyz.");
    let task = tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "The ops endpoint failed.");
        }
    });
    Ok(OpsServer { local_addr, task })
}

/// The ops port could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("could not listen on {addr} for the ops endpoints")]
pub struct OpsBindError {
    /// The address asked for.
    pub addr: String,
    /// Why it could not be bound.
    #[source]
    pub source: std::io::Error,
}

/// Serves the ops endpoints while `work` (a service's run, drain included)
/// goes on, and stops them once it is over: probes see "not ready" while
/// the service drains, and the last scrape sees its final counts.
pub async fn serve_during<T>(
    settings: &OpsSettings,
    readiness: Readiness,
    work: impl std::future::Future<Output = T>,
) -> Result<T, OpsBindError> {
    let stop = CancellationToken::new();
    let server = serve(settings, readiness, stop.clone())
        .await
        .map_err(|source| OpsBindError {
            addr: settings.addr.clone(),
            source,
        })?;
    let result = work.await;
    stop.cancel();
    let _ = server.task.await;
    Ok(result)
}

/// The routes, for services that mount them on a router of their own.
pub fn router(readiness: Readiness) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let readiness = readiness.clone();
                async move {
                    match readiness() {
                        Ok(()) => (StatusCode::OK, "ready\n".to_owned()),
                        Err(why) => (
                            StatusCode::SERVICE_UNAVAILABLE,
                            format!("not ready: {why}\n"),
                        ),
                    }
                }
            }),
        )
}

async fn metrics() -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::metrics::render(),
    )
}
