//! The accept loop: TCP in, TLS up, one task per client.
//!
//! Handshakes run inside each connection's own task with a timeout, so a
//! client that opens a TCP connection and says nothing holds only its own
//! task (rumqttd's listener awaits each handshake in the accept loop, where
//! one silent peer stalls everyone). The connection cap is a semaphore taken
//! before the handshake: past it, new sockets are closed at once and the
//! live connections are untouched.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, error, warn};

use super::{Shared, connection};

/// Pause after an accept error (typically out of file descriptors) so the
/// loop does not spin while the condition lasts.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

pub(super) async fn accept_loop(
    listener: &TcpListener,
    acceptor: &TlsAcceptor,
    shared: &Arc<Shared>,
    shutdown: &watch::Receiver<bool>,
    connections: &mut JoinSet<()>,
) {
    let slots = Arc::new(Semaphore::new(shared.limits.max_connections));
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
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            warn!(%peer, limit = shared.limits.max_connections, "connection limit reached; closing new connection");
            continue;
        };
        // Small MQTT packets over TLS otherwise wait on Nagle's algorithm.
        if let Err(e) = tcp.set_nodelay(true) {
            debug!(%peer, error = %e, "could not set TCP_NODELAY");
        }
        let acceptor = acceptor.clone();
        let shared = Arc::clone(shared);
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let handshake =
                tokio::time::timeout(shared.limits.handshake_timeout, acceptor.accept(tcp)).await;
            match handshake {
                // Boxed: the TLS stream is over a kilobyte and the
                // connection future moves it around; every idle device's
                // task would carry several copies of its slot.
                Ok(Ok(tls)) => connection::serve(Box::new(tls), peer, shared, shutdown).await,
                Ok(Err(e)) => debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => debug!(%peer, "TLS handshake timed out"),
            }
            drop(slot);
        });
    }
}
