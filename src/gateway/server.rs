//! The gateway as a whole: what [`Gateway::bind`] starts, in which order,
//! and how [`Gateway::run`] serves until shutdown and then winds down
//! connections, bridges and storage.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_rustls::rustls::ServerConfig;
use tracing::{error, info, warn};

use super::client::ProtocolViolation;
use super::control::GatewayControl;
use super::listener::{self, Serves};
use super::pending::Strangers;
use super::shared::Shared;
use super::websocket;
use crate::admin::{self, server::AdminSocket};
use crate::bridge;
use crate::broker::{Broker, Budget, Quotas};
use crate::config::{AdminConfig, ClientAuth, Config};
use crate::keys::{KeyDirError, KeyStore};
use crate::metrics::{self, Exposition, Metrics};
use crate::reload::{self, Reloader};
use crate::storage::{DurableStore, Storage, StorageError};
use crate::tls::{self, CertResolver, ClientVerifier, TlsError};
use crate::token::Policy;

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("keys: {0}")]
    Keys(#[from] KeyDirError),
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot serve MQTT over WebSockets on {addr} ([websocket] listen): {source}")]
    WebSocketBind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot serve metrics on {addr} ([metrics] listen): {source}")]
    MetricsBind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("[admin] socket: {0}")]
    Admin(#[from] admin::server::BindError),
}

/// A bound, not yet running, gateway.
pub struct Gateway {
    listener: TcpListener,
    acceptor: Arc<ServerConfig>,
    reloader: Arc<Reloader>,
    /// The file watcher; `None` when it could not start (SIGHUP still
    /// reloads).
    watcher: Option<tokio::task::JoinHandle<()>>,
    shared: Arc<Shared>,
    storage: Arc<Storage>,
    bridges: tokio::task::JoinSet<()>,
    stop_bridges: tokio::sync::watch::Sender<bool>,
    /// `[metrics] listen`, bound, with what it serves.
    metrics: Option<(TcpListener, Arc<Exposition>)>,
    /// `[websocket] listen`, bound, with its upgrade policy.
    websocket: Option<(TcpListener, Arc<websocket::Policy>)>,
    /// The figures' owners, for what reports on them besides `/metrics`.
    state: metrics::State,
    /// `[admin] socket`, bound.
    admin: Option<AdminSocket>,
    /// `[sys] interval_secs`: how often `$SYS` figures go out, if at all.
    sys: Option<Duration>,
}

impl Gateway {
    /// Loads keys and certificate, restores the durable state, creates the
    /// routing core, starts the bridges and the file watcher, and binds the
    /// listener, in that order.
    pub async fn bind(config: &Config) -> Result<Gateway, StartError> {
        let (keys, report) = KeyStore::open(&config.auth.keys_dir)?;
        report.log();
        let keys = Arc::new(keys);
        let certs = Arc::new(CertResolver::load(&config.tls.cert, &config.tls.key)?);
        let clients = match &config.tls.client_ca {
            Some(ca) => Some(Arc::new(ClientVerifier::load(
                ca,
                config.tls.client_auth == ClientAuth::Required,
            )?)),
            None => None,
        };
        let acceptor = tls::server_config(Arc::clone(&certs), clients.clone())?;
        let metrics = Arc::new(Metrics::default());
        metrics.expect_protocol_violations(&ProtocolViolation::LABELS);
        metrics.expect_websocket_refusals(&websocket::Refused::ALL.map(websocket::Refused::label));
        let reloader = Arc::new(
            Reloader::new(
                Arc::clone(&keys),
                certs,
                config.tls.clone(),
                Arc::clone(&metrics),
                Policy::from_config(&config.auth),
            )
            .with_client_verifier(clients),
        );
        reloader.warn_about_policy();
        // Restored before the listener takes anyone: a device that
        // resumes its session or subscribes finds what the last run kept.
        let queues: Vec<(&str, u64)> = config
            .bridges
            .iter()
            .map(|bridge| (bridge.name.as_str(), bridge.max_queue_bytes))
            .collect();
        let budget = Budget::new(config.limits.memory_budget);
        let (storage, restored) = Storage::open(&config.storage, &queues, &budget)?;
        if restored.skipped > 0 {
            warn!(skipped = restored.skipped, database = %storage.path().display(), "storage: some kept state did not decode and was left out");
        }
        let (store, refused) =
            DurableStore::new(&storage, restored, &budget, &config.limits.topics);
        if refused > 0 {
            warn!(
                refused,
                max_topic_levels = config.limits.topics.max_levels,
                max_topic_bytes = config.limits.topics.max_bytes,
                "storage: kept retained messages, subscriptions or queued messages over today's topic limits were left out"
            );
        }
        info!(
            database = %storage.path().display(),
            retained = store.retained_count(),
            "durable state restored"
        );
        let broker = Broker::with_budget(
            &config.sessions,
            budget,
            Arc::new(store),
            Quotas::new(
                config.limits.max_retained_bytes_per_subject,
                &config.limits.topics,
            ),
        );
        // The uplinks start now: their taps must be on the routing core
        // before the first device publishes, and a backlog left by the last
        // run drains while the listener comes up.
        let (stop_bridges, bridges_stopped) = tokio::sync::watch::channel(false);
        let refusals = bridge::refusals(&config.bridges);
        let links = bridge::link_statuses(&config.bridges);
        let bridges = bridge::start(
            &config.bridges,
            &storage,
            &broker,
            &config.limits.topics,
            &refusals,
            &links,
            &bridges_stopped,
        );
        let state = metrics::State {
            broker: Arc::clone(&broker),
            keys: Arc::clone(&keys),
            storage: storage.health(),
            queues: config
                .bridges
                .iter()
                .filter_map(|bridge| storage.queue(&bridge.name).cloned())
                .collect(),
            refusals,
            links,
        };
        let exposition = Arc::new(Exposition::new(&metrics, state.clone()));
        let shared = Shared {
            limits: config.limits.clone(),
            leeway: config.auth.leeway,
            deny_publish: config.auth.deny_publish,
            policy: Policy::from_config(&config.auth),
            keys,
            reloads: reloader.subscribe(),
            broker,
            takeover: Arc::default(),
            strangers: Arc::new(Strangers::new(
                config.limits.max_pending_connections,
                config.limits.max_pending_per_source,
            )),
            sessions: Arc::new(tokio::sync::Semaphore::new(config.limits.max_connections)),
            metrics,
        };
        // Watch from now on, so that a key dropped between start and the
        // first client is not missed.
        let watcher = reload::watch_files(Arc::clone(&reloader))
            .inspect_err(|e| {
                error!(error = %e, "cannot watch the keys directory; reload with SIGHUP");
            })
            .ok();
        let metrics = match config.metrics.listen {
            Some(addr) => Some((
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| StartError::MetricsBind { addr, source })?,
                exposition,
            )),
            None => None,
        };
        // Bound last: a client that can connect finds the keys watched
        // and the durable state restored.
        let websocket = match config.websocket.listen {
            Some(addr) => Some((
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| StartError::WebSocketBind { addr, source })?,
                Arc::new(websocket::Policy::new(
                    &config.websocket,
                    config.limits.max_packet_size,
                )),
            )),
            None => None,
        };
        let admin = bind_admin(&config.admin)?;
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| StartError::Bind {
                    addr: config.listen,
                    source,
                })?;
        Ok(Gateway {
            listener,
            acceptor,
            reloader,
            watcher,
            shared: Arc::new(shared),
            storage,
            bridges,
            stop_bridges,
            metrics,
            websocket,
            state,
            admin,
            sys: config.sys.interval,
        })
    }

    /// The address the listener is bound to (useful with port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The address MQTT over WebSockets is served on, when `[websocket]
    /// listen` is set.
    pub fn websocket_addr(&self) -> Option<SocketAddr> {
        self.websocket
            .as_ref()
            .and_then(|(listener, _)| listener.local_addr().ok())
    }

    /// The address `/metrics` is served on, when `[metrics] listen` is set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics
            .as_ref()
            .and_then(|(listener, _)| listener.local_addr().ok())
    }

    /// The admin socket's path, when it is bound.
    pub fn admin_socket(&self) -> Option<&std::path::Path> {
        self.admin.as_ref().map(AdminSocket::path)
    }

    /// The key store connections verify against.
    pub fn keys(&self) -> Arc<KeyStore> {
        Arc::clone(&self.shared.keys)
    }

    /// The routing core: sessions, subscriptions, and what its overflow
    /// policies did ([`Broker::stats`]).
    pub fn broker(&self) -> Arc<Broker> {
        Arc::clone(&self.shared.broker)
    }

    /// What the systemd watchdog and status report on.
    pub fn health(&self) -> crate::readiness::Health {
        crate::readiness::Health::new(
            Arc::clone(&self.shared.broker),
            Arc::clone(&self.shared.keys),
            Arc::clone(&self.shared.sessions),
            self.shared.limits.max_connections,
        )
    }

    /// Reloads keys and certificate on demand (the binary calls it on
    /// SIGHUP); the file watcher started by [`Gateway::bind`] calls it too.
    pub fn reloader(&self) -> Arc<Reloader> {
        Arc::clone(&self.reloader)
    }

    /// Serves clients until `shutdown` resolves, then closes every
    /// connection, giving each up to `SHUTDOWN_GRACE` to finish.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let Gateway {
            listener,
            acceptor,
            watcher,
            shared,
            storage,
            mut bridges,
            stop_bridges,
            metrics,
            websocket,
            reloader,
            state,
            admin,
            sys,
        } = self;
        let (stop, stopped) = tokio::sync::watch::channel(false);
        if let Some(interval) = sys {
            tokio::spawn(crate::sys::serve(
                Arc::clone(&shared.metrics),
                state.clone(),
                interval,
                stopped.clone(),
            ));
        }
        if let Some(admin) = admin {
            let mut listeners = std::collections::BTreeMap::new();
            for (name, addr) in [
                ("mqtt", listener.local_addr().ok()),
                (
                    "websocket",
                    websocket.as_ref().and_then(|(l, _)| l.local_addr().ok()),
                ),
                (
                    "metrics",
                    metrics.as_ref().and_then(|(l, _)| l.local_addr().ok()),
                ),
            ] {
                if let Some(addr) = addr {
                    listeners.insert(name.to_owned(), addr.to_string());
                }
            }
            let control = Arc::new(GatewayControl::new(
                Arc::clone(&shared),
                state,
                reloader,
                listeners,
            ));
            tokio::spawn(Arc::clone(&control).sample(stopped.clone()));
            tokio::spawn(admin.serve(control, stopped.clone()));
        }
        if let Some((listener, exposition)) = metrics {
            tokio::spawn(metrics::endpoint::serve(
                listener,
                exposition,
                stopped.clone(),
            ));
        }
        // One set of connection tasks per listener, each owned by its
        // accept loop while it runs.
        let mut connections = tokio::task::JoinSet::new();
        let mut ws_connections = tokio::task::JoinSet::new();
        let web = async {
            match &websocket {
                Some((listener, policy)) => {
                    if let Ok(addr) = listener.local_addr() {
                        info!(%addr, path = policy.path(), "serving MQTT over secure WebSockets");
                    }
                    let serves = Serves::WebSocket(Arc::clone(policy));
                    listener::accept_loop(
                        listener,
                        &serves,
                        &acceptor,
                        &shared,
                        &stopped,
                        &mut ws_connections,
                    )
                    .await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = listener::accept_loop(&listener, &Serves::Mqtt, &acceptor, &shared, &stopped, &mut connections) => {
                error!("the listener stopped accepting connections");
            }
            () = web => {
                error!("the WebSocket listener stopped accepting connections");
            }
            () = shutdown => {}
        }
        drop(listener);
        drop(websocket);
        let _ = stop.send(true);
        let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
            while connections.join_next().await.is_some() {}
            while ws_connections.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            warn!(
                remaining = connections.len() + ws_connections.len(),
                "connections still open after the shutdown grace period; closing them"
            );
            connections.shutdown().await;
            ws_connections.shutdown().await;
        }
        if let Some(watcher) = watcher {
            watcher.abort();
        }
        let stats = shared.broker.stats().snapshot();
        if stats != Default::default() {
            warn!(
                dropped = stats.dropped,
                evicted = stats.evicted,
                expired = stats.expired,
                oversized = stats.oversized,
                retained_refused = stats.retained_refused,
                "messages not delivered since start (slow subscribers, expiry, size limits, memory budget)"
            );
        }
        // The uplinks say goodbye to their remotes; what they did not send
        // stays queued for the next run.
        let _ = stop_bridges.send(true);
        if tokio::time::timeout(SHUTDOWN_GRACE, async {
            while bridges.join_next().await.is_some() {}
        })
        .await
        .is_err()
        {
            bridges.shutdown().await;
        }
        // Every connection has ended: the sessions they parked are saved
        // with the messages waiting for them, and written before the
        // process goes.
        shared.broker.save_parked();
        let closed = tokio::task::spawn_blocking(move || storage.close()).await;
        if closed.is_err() {
            error!("storage: closing the database failed; the last changes may be lost");
        }
    }
}

/// Binds `[admin] socket`. The default path only exists under the
/// packaged unit (`/run/jwtgate`), so a gateway started elsewhere from a
/// config file that does not name one goes without, and says so; a path
/// the operator chose must work.
fn bind_admin(config: &AdminConfig) -> Result<Option<AdminSocket>, StartError> {
    let Some(path) = &config.socket else {
        return Ok(None);
    };
    match AdminSocket::bind(path) {
        Ok(socket) => {
            info!(socket = %path.display(), "admin socket ready (jwtgate status, sessions, disconnect)");
            Ok(Some(socket))
        }
        Err(e) if !config.explicit => {
            warn!(error = %e, "no admin socket: jwtgate status, sessions and disconnect will not reach this gateway; set [admin] socket to a path it can create");
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// How long connections get to finish once shutdown begins.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
