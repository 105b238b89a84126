//! Building the gateway from its settings and running it until shutdown:
//! the broker link (publishing, and the events stream followed into the
//! status view) and the HTTP API.

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use secrecy::ExposeSecret;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use warren::broker::worker_identity;
use warren::ops::Readiness;
use warren_store::{SettingError, Store, StoreError, policy};
use warren_tasks::email::EmailAddress;

use crate::api::{self, AppInner, AppState, Limits};
use crate::auth::Auth;
use crate::broker::{Broker, SessionError};
use crate::enqueue::Checks;
use crate::indexer::Indexer;
use crate::settings::{Settings, StoreKind};
use crate::status::Tracker;
use crate::workflows::Workflows;
use warren::events::{RedisOptions, RedisStatusStore};

/// The sender the email checks assume when a task names none; only its
/// validity matters (the worker applies its own `email.default_from`).
const PLACEHOLDER_FROM: &str = "Warren <warren@localhost>";
/// How long in-flight requests may take to finish after shutdown began.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Start-up and run errors.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error(transparent)]
    Image(#[from] SettingError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("could not listen on {addr} for the HTTP API: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the HTTP server failed: {0}")]
    Serve(#[source] std::io::Error),
    #[error(transparent)]
    Broker(#[from] SessionError),
    #[error(transparent)]
    StatusStore(#[from] warren::events::StatusStoreError),
    #[error(transparent)]
    Auth(#[from] crate::auth::AuthError),
    #[error("{0}")]
    Console(String),
}

/// The `redis` store's key prefix: `status.key_prefix`, or
/// `{namespace}:status:`.
pub fn key_prefix(settings: &Settings) -> String {
    if settings.status.key_prefix.is_empty() {
        format!("{}:status:", settings.broker.namespace)
    } else {
        settings.status.key_prefix.clone()
    }
}

/// How often the `redis` store is pinged for readiness.
const STORE_PING_EVERY: Duration = Duration::from_millis(500);

/// A gateway ready to run.
pub struct Gateway {
    settings: Settings,
    broker: Arc<Broker>,
    tracker: Arc<Tracker>,
    workflows: Arc<Workflows>,
    store: Store,
    checks: Checks,
    auth: Arc<Auth>,
}

impl Gateway {
    /// Checks the settings and opens the image store; connects nothing yet.
    pub fn build(settings: Settings) -> Result<Self, GatewayError> {
        let auth = Arc::new(Auth::from_settings(&settings.auth, &settings.http.addr)?);
        settings.console.checked().map_err(GatewayError::Console)?;
        let image = policy(&settings.image)?;
        let store = Store::from_settings(&settings.image)?;
        let default_from = EmailAddress::parse("default_from", PLACEHOLDER_FROM)
            .unwrap_or_else(|e| unreachable!("the placeholder sender is valid: {e}"));
        let checks = Checks {
            default_from,
            max_attachment_bytes: settings.email.max_attachment_bytes,
            image,
        };
        let names = settings.broker.names();
        let broker = Arc::new(Broker::new(names, worker_identity("gateway")));
        let tracker = Arc::new(
            match settings.status.store {
                StoreKind::Memory => Tracker::new(settings.events.max_tracked_tasks),
                StoreKind::Redis => Tracker::shared(
                    settings.status.recent_tasks,
                    RedisStatusStore::new(
                        settings.status.redis_url.expose_secret(),
                        RedisOptions {
                            prefix: key_prefix(&settings),
                            retention: settings.events.retention,
                            max_index_tasks: settings.status.max_index_tasks,
                            max_events_per_task: settings.status.max_events_per_task,
                            max_result_bytes: settings.status.max_result_bytes,
                        },
                    )?,
                ),
            }
            .with_retention(settings.events.retention),
        );
        let workflows = Arc::new(Workflows::new(settings.workflows.max_tracked));
        Ok(Self {
            settings,
            broker,
            tracker,
            workflows,
            store,
            checks,
            auth,
        })
    }

    /// Ready once connected, the events stream declared, and, on the
    /// `memory` store, the view caught up with what the stream held; on
    /// `redis`, as soon as Redis answers.
    pub fn readiness(&self) -> Readiness {
        let broker = self.broker.clone();
        let tracker = self.tracker.clone();
        Arc::new(move || {
            if !broker.is_connected() {
                Err("not connected to the broker".to_owned())
            } else if !tracker.is_stream_declared() {
                Err("the events stream is not declared yet".to_owned())
            } else if tracker.store().is_some() && !tracker.store_answers() {
                Err("the status store (redis) does not answer".to_owned())
            } else if !tracker.is_caught_up() {
                Err("still reading the events stream".to_owned())
            } else {
                Ok(())
            }
        })
    }

    /// Serves until `shutdown` is cancelled, then lets in-flight requests
    /// finish (open SSE streams end at once).
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), GatewayError> {
        let Self {
            settings,
            broker,
            tracker,
            workflows,
            store,
            checks,
            auth,
        } = self;
        let listener = TcpListener::bind(&settings.http.addr)
            .await
            .map_err(|source| GatewayError::Bind {
                addr: settings.http.addr.clone(),
                source,
            })?;
        let addr: SocketAddr = listener.local_addr().map_err(GatewayError::Serve)?;
        let max_upload_bytes = settings
            .http
            .max_upload_bytes
            .min(usize::try_from(settings.image.max_source_bytes).unwrap_or(usize::MAX));
        let state = AppState::new(AppInner {
            broker: broker.clone(),
            tracker: tracker.clone(),
            workflows: workflows.clone(),
            checks,
            store,
            limits: Limits {
                max_body_bytes: settings.http.max_body_bytes,
                max_upload_bytes,
                request_timeout: settings.http.request_timeout,
                unknown_wait: settings.events.unknown_wait,
                keep_alive: settings.events.keep_alive,
                max_list_limit: settings.status.max_list_limit,
                max_workflow_steps: settings
                    .workflows
                    .max_steps
                    .min(warren::workflow::MAX_STEPS)
                    .min(warren::workflow::MAX_MEMBERS),
            },
            uploads: Arc::new(tokio::sync::Semaphore::new(
                settings.http.max_concurrent_uploads.max(1),
            )),
            shutdown: shutdown.clone(),
            auth: auth.clone(),
            console: Some(Arc::new(
                crate::console::Console::new(auth.clone(), settings.broker.clone()).with_options(
                    crate::console::Options {
                        // Checked in `build`.
                        conductor: settings.console.checked().ok().flatten(),
                        replay_rate: settings.console.replay_rate,
                    },
                ),
            )),
        });
        if auth.is_open() {
            tracing::warn!(
                addr = %addr,
                "No API key is configured: the gateway is open to every caller on this loopback address. \
                 Configure auth.keys before binding to any other address."
            );
        } else {
            tracing::info!(keys = auth.key_count(), "API keys loaded.");
        }
        tracing::info!(
            identity = %broker.identity(),
            namespace = %settings.broker.namespace,
            broker = %settings.broker.redacted_url(),
            retention = %humantime::format_duration(settings.events.retention),
            max_tracked_tasks = settings.events.max_tracked_tasks,
            "Gateway starting."
        );
        // The broker connections outlive the HTTP drain: requests in flight
        // at SIGTERM still get their publish confirmed (and their `queued`
        // event written) before the connections close.
        let broker_stop = CancellationToken::new();
        let following = {
            let broker = broker.clone();
            let tracker_for_broker = tracker.clone();
            let broker_settings = settings.broker.clone();
            let retention = settings.events.retention;
            let shutdown = shutdown.clone();
            let broker_stop = broker_stop.clone();
            tokio::spawn(async move {
                let result = broker
                    .run(broker_settings, retention, tracker_for_broker, broker_stop)
                    .await;
                // What reconnecting cannot fix stops the gateway.
                if result.is_err() {
                    shutdown.cancel();
                }
                result
            })
        };

        // The workflows' records, read from the whole retention whatever
        // the status store.
        let mut background = vec![tokio::spawn(crate::workflows::follow(
            settings.broker.clone(),
            broker.names().clone(),
            broker.identity().to_owned(),
            workflows,
            broker_stop.clone(),
        ))];
        // The `redis` store: readiness follows its pings, and the indexer
        // stands by for its lock (or indexes).
        if let Some(store) = tracker.store().cloned() {
            let tracker = tracker.clone();
            let stop = broker_stop.clone();
            let pinger = store.clone();
            background.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(STORE_PING_EVERY);
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tick.tick() => {
                            let answers = pinger.ping().await.is_ok();
                            if answers != tracker.store_answers() {
                                if answers {
                                    tracing::info!("The status store (redis) answers.");
                                } else {
                                    tracing::warn!("The status store (redis) does not answer.");
                                }
                            }
                            tracker.set_store_answers(answers);
                        }
                    }
                }
            }));
            if settings.status.indexer {
                let indexer = Indexer {
                    broker: settings.broker.clone(),
                    names: broker.names().clone(),
                    identity: broker.identity().to_owned(),
                    store,
                    batch: settings.status.indexer_batch,
                    retry: settings.status.indexer_retry,
                };
                background.push(tokio::spawn(indexer.run(broker_stop.clone())));
            }
        }

        tracing::info!(addr = %addr, "Serving the HTTP API.");
        let server = tokio::spawn(
            axum::serve(listener, api::router(state))
                .with_graceful_shutdown(shutdown.clone().cancelled_owned())
                .into_future(),
        );
        shutdown.cancelled().await;
        // Stop accepting; let in-flight requests finish, within a bound.
        let abort = server.abort_handle();
        let served = match tokio::time::timeout(DRAIN_TIMEOUT, server).await {
            Ok(Ok(served)) => served.map_err(GatewayError::Serve),
            Ok(Err(join)) => {
                tracing::error!(error = %join, "The HTTP server ended abnormally.");
                Ok(())
            }
            Err(_) => {
                tracing::warn!("Requests still running after the drain timeout were cut off.");
                abort.abort();
                Ok(())
            }
        };
        broker_stop.cancel();
        for task in background {
            let _ = task.await;
        }
        let followed = match following.await {
            Ok(result) => result.map_err(GatewayError::from),
            Err(join) => {
                tracing::error!(error = %join, "The broker task ended abnormally.");
                Ok(())
            }
        };
        tracing::info!("Gateway stopped.");
        followed.and(served)
    }
}
