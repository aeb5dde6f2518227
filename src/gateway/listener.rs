//! The accept loops: TCP in, TLS up (and on the WebSocket listener, the
//! upgrade, [`super::websocket`]), one task per client.
//!
//! Handshakes run inside each connection's own task with a timeout, so a
//! client that opens a TCP connection and says nothing holds only its own
//! task (rumqttd's listener awaits each handshake in the accept loop, where
//! one silent peer stalls everyone). Until its CONNECT is accepted a
//! connection holds a stranger's place ([`super::pending`]), taken here
//! before the handshake: past the cap for its source it is closed at once,
//! and when every place is taken it pushes out the oldest stranger. The
//! authenticated sessions' cap is applied at CONNECT
//! ([`super::connection`]), so strangers never count against it.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio::time::error::Elapsed;
use tokio_rustls::rustls::ServerConfig;
use tracing::{debug, error, warn};

use super::connection::{self, Peer};
use super::pending::Pending;
use super::shared::Shared;
use super::websocket::{self, UpgradeError};
use crate::metrics::HandshakeFailure;
use crate::mqtt::Transport;
use crate::tls::Thumbprint;
use crate::tls::stream::{self, TlsStream};

/// Pause after an accept error (typically out of file descriptors) so the
/// loop does not spin while the condition lasts.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Shortest time between two warnings about a flood of strangers: a flood
/// must not flood the log as well.
const FLOOD_WARNING_EVERY: Duration = Duration::from_secs(10);

/// What a listener serves: MQTT straight over TLS, or inside WebSockets
/// upgraded under the policy.
#[derive(Debug, Clone)]
pub(super) enum Serves {
    Mqtt,
    WebSocket(Arc<websocket::Policy>),
}

pub(super) async fn accept_loop(
    listener: &TcpListener,
    serves: &Serves,
    tls_config: &Arc<ServerConfig>,
    shared: &Arc<Shared>,
    shutdown: &watch::Receiver<bool>,
    connections: &mut JoinSet<()>,
) {
    let mut flood = FloodWarning::default();
    loop {
        // Reap finished tasks so the set holds only live connections. A
        // panic is a bug: it ends only its own connection, but it is said.
        while let Some(finished) = connections.try_join_next() {
            if let Err(e) = finished {
                if e.is_panic() {
                    error!(error = %e, "a connection task panicked");
                }
            }
        }
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                warn!(error = %e, "accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let pending = match shared.strangers.enter(peer.ip()) {
            Ok(pending) => pending,
            Err(e) => {
                debug!(%peer, error = %e, "closing new connection");
                flood.refused(shared, peer.ip());
                continue;
            }
        };
        flood.check_evictions(shared);
        // Small MQTT packets over TLS otherwise wait on Nagle's algorithm.
        if let Err(e) = tcp.set_nodelay(true) {
            debug!(%peer, error = %e, "could not set TCP_NODELAY");
        }
        let tls_config = Arc::clone(tls_config);
        let shared = Arc::clone(shared);
        let shutdown = shutdown.clone();
        let serves = serves.clone();
        connections.spawn(async move {
            let limit = shared.limits.handshake_timeout;
            // The stream is boxed as the handshake ends: held unboxed in
            // a local of this task, its kilobyte would stay reserved in
            // every idle device's task after it moved out.
            let accept = async { stream::accept(tls_config, tcp).await.map(Box::new) };
            let Some(handshake) = as_stranger(&pending, limit, accept).await else {
                debug!(%peer, "TLS handshake cut short: a newer connection took its place");
                return;
            };
            // Boxed (above): the TLS stream is over a kilobyte and the
            // connection future moves it around; every idle device's task
            // would carry several copies of its slot.
            let tls = match handshake {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    shared.metrics.handshake_failed(HandshakeFailure::Error);
                    debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    shared.metrics.handshake_failed(HandshakeFailure::Timeout);
                    debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            // Verified by the handshake against `[tls] client_ca`.
            let certificate = tls
                .peer_certificates()
                .and_then(<[_]>::first)
                .map(Thumbprint::of);
            match serves {
                Serves::Mqtt => {
                    let peer = Peer {
                        addr: peer,
                        transport: Transport::Tls,
                        certificate,
                    };
                    connection::serve(tls, peer, pending, shared, shutdown).await;
                }
                Serves::WebSocket(policy) => {
                    // Boxed: a task is as large as its largest state, and
                    // this arm's (the HTTP upgrade, the WebSocket stream
                    // around the TLS one) would size every TLS device's
                    // task for it.
                    Box::pin(async move {
                        let Some(ws) = upgrade(&policy, tls, peer, &pending, &shared).await else {
                            return;
                        };
                        let peer = Peer {
                            addr: peer,
                            transport: Transport::Wss,
                            certificate,
                        };
                        connection::serve(ws, peer, pending, shared, shutdown).await;
                    })
                    .await;
                }
            }
        });
    }
}

/// Runs one step of a stranger's setup (the TLS handshake, the WebSocket
/// upgrade) under its place and the handshake deadline; `None` when a newer
/// connection took the place first.
async fn as_stranger<T>(
    pending: &Pending,
    limit: Duration,
    step: impl Future<Output = T>,
) -> Option<Result<T, Elapsed>> {
    tokio::select! {
        () = pending.evicted() => None,
        done = tokio::time::timeout(limit, step) => Some(done),
    }
}

/// Takes the WebSocket upgrade on `tls`, still as a stranger; `None`, said
/// and counted, when it did not come.
async fn upgrade(
    policy: &Arc<websocket::Policy>,
    tls: Box<TlsStream>,
    peer: SocketAddr,
    pending: &Pending,
    shared: &Shared,
) -> Option<Box<websocket::WsStream>> {
    let limit = shared.limits.handshake_timeout;
    let Some(upgrade) = as_stranger(pending, limit, policy.upgrade(tls)).await else {
        debug!(%peer, "WebSocket upgrade cut short: a newer connection took its place");
        return None;
    };
    match upgrade {
        Ok(Ok(ws)) => Some(Box::new(ws)),
        Ok(Err(UpgradeError::Refused(refused))) => {
            shared.metrics.websocket_refused(refused.label());
            debug!(%peer, reason = %refused, "WebSocket upgrade refused");
            None
        }
        Ok(Err(e)) => {
            shared.metrics.handshake_failed(HandshakeFailure::Error);
            debug!(%peer, error = %e, "WebSocket upgrade failed");
            None
        }
        Err(_) => {
            shared.metrics.handshake_failed(HandshakeFailure::Timeout);
            debug!(%peer, "WebSocket upgrade timed out");
            None
        }
    }
}

/// Says, now and then, that strangers are being turned away or pushed out:
/// the operator should know of a flood, the log should not carry it.
#[derive(Default)]
struct FloodWarning {
    last: Option<Instant>,
    evicted: u64,
    refused: u64,
}

impl FloodWarning {
    fn due(&mut self) -> bool {
        let now = Instant::now();
        let due = self
            .last
            .is_none_or(|last| now.duration_since(last) >= FLOOD_WARNING_EVERY);
        if due {
            self.last = Some(now);
        }
        due
    }

    fn refused(&mut self, shared: &Shared, ip: std::net::IpAddr) {
        self.refused += 1;
        if self.due() {
            warn!(
                source = %ip,
                refused_since_start = self.refused,
                limit = shared.limits.max_pending_per_source,
                "too many unauthenticated connections from one source; closing new ones"
            );
        }
    }

    fn check_evictions(&mut self, shared: &Shared) {
        let evicted = shared.strangers.evicted();
        if evicted > self.evicted && self.due() {
            warn!(
                evicted_since_start = evicted,
                pending = shared.strangers.len(),
                limit = shared.limits.max_pending_connections,
                "unauthenticated connections are being pushed out by newer ones"
            );
            self.evicted = evicted;
        }
    }
}
