//! One connection served from an in-memory stream, for the `mqtt_session`
//! fuzz target ([`super::mqtt_session`]).
//!
//! The target must drive exactly the function the TLS path calls
//! (`gateway::connection::serve`), with a duplex stream where the TLS
//! stream would be, or, in WebSocket mode, exactly what the WebSocket
//! listener does on it (the upgrade, `gateway::websocket`, then the same
//! function on the frames); the gateway opens those and what they take
//! (`Shared`, a stranger's place) to the crate, and no further, for this
//! harness. Everything
//! around it is built small: short timeouts so a stalled exchange ends
//! quickly, small packet limits so no input can make it hold much, and a
//! fresh in-memory routing core per run so runs cannot influence each
//! other.
//!
//! What the routing core did is watched by a probe session attached to the
//! same broker, subscribed to every topic a filter can name, and by the
//! retained store: the caller gets every topic that was routed and decides
//! what was allowed.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::broker::store::{MemoryStore, Store};
use crate::broker::{Broker, Delivery, SessionKey};
use crate::config::{DenyPublish, Limits, SessionSettings, WebSocketConfig};
use crate::gateway::connection::{self, Peer};
use crate::gateway::pending::Strangers;
use crate::gateway::session::MAX_UNWRITTEN;
use crate::gateway::shared::Shared;
use crate::gateway::takeover::Registry;
use crate::gateway::websocket;
use crate::keys::KeyStore;
use crate::mqtt::{QoS, RetainHandling, SubscriptionOptions, Transport};
use crate::token::Policy;

/// Filters the probe subscribes to. A filter starting with a wildcard does
/// not match `$` topics, so the `$` roots a client might try are named.
const PROBE_FILTERS: [&str; 3] = ["#", "$SYS/#", "$share-not/#"];

/// How long a run may take, in real time, once the client side has closed.
/// Every timeout below is far shorter, so reaching it means a connection
/// that does not end when its client is gone.
const RUN_LIMIT: Duration = Duration::from_secs(10);
/// Milliseconds the tasks a connection leaves behind (its will) get to
/// finish after it has ended.
const SETTLE_STEPS: usize = 1000;

/// The routing core's memory budget in these runs.
const MEMORY_BUDGET: usize = 1024 * 1024;
/// The largest packet a client may send in these runs.
const MAX_PACKET: usize = 64 * 1024;

/// The most heap memory one run may take beyond what it started with,
/// allowed by its limits: the routing core's budget, five packets at the
/// size limit (the read buffer, the packet decoded from it, the message
/// routed from it, its copy for a retained store, and in WebSocket mode
/// the message tungstenite reassembles), the output a session
/// lets wait for its client, and 256 KiB for everything of fixed size (the
/// runtime, the broker's tables, the connection's state; a short run takes
/// about 50 KiB in all). A run over it held memory its limits should have
/// refused.
pub const SESSION_MEMORY_BOUND: usize = MEMORY_BUDGET + 5 * MAX_PACKET + MAX_UNWRITTEN + 256 * 1024;

/// How the connection is set up.
#[derive(Debug, Clone, Copy, Default)]
pub struct SessionSetup {
    /// Close the connection after a refused PUBLISH instead of dropping it.
    pub deny_disconnects: bool,
    /// Cap the keep-alive, which makes the gateway announce a server keep
    /// alive to MQTT 5 clients.
    pub cap_keep_alive: bool,
    /// Serve the stream as the WebSocket listener does: an HTTP upgrade
    /// (path `/mqtt`, any origin), then MQTT in its frames.
    pub websocket: bool,
}

/// What one run did.
#[derive(Debug, Default)]
pub struct SessionOutcome {
    /// Topics of the messages the probe received, in order.
    pub routed: Vec<String>,
    /// Topics left in the retained store.
    pub retained: Vec<String>,
    /// Whether the connection ended within `RUN_LIMIT` of the client
    /// closing its side.
    pub ended: bool,
    /// Whether every task it left behind (a will) had finished within
    /// `SETTLE_STEPS` milliseconds after.
    pub settled: bool,
}

/// Serves `input` as everything one client sends, then its end of stream,
/// through `connection::serve`, and reports what was routed.
///
/// Runs its own current-thread tokio runtime; must not be called from
/// inside one.
pub fn fuzz_session(
    keys: Arc<KeyStore>,
    policy: Policy,
    setup: SessionSetup,
    input: &[u8],
) -> std::io::Result<SessionOutcome> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    Ok(runtime.block_on(run(keys, policy, setup, input)))
}

async fn run(
    keys: Arc<KeyStore>,
    policy: Policy,
    setup: SessionSetup,
    input: &[u8],
) -> SessionOutcome {
    let limits = Limits {
        handshake_timeout: Duration::from_secs(1),
        connect_timeout: Duration::from_secs(1),
        max_packet_size: MAX_PACKET,
        max_connect_packet_size: 16 * 1024,
        max_connections: 4,
        max_pending_connections: 4,
        max_pending_per_source: 4,
        write_timeout: Duration::from_millis(200),
        max_property_bytes: 4 * 1024,
        max_topic_aliases: 8,
        max_keep_alive: setup.cap_keep_alive.then_some(30),
        memory_budget: MEMORY_BUDGET,
        topics: crate::mqtt::TopicLimits::DEFAULT,
        max_retained_bytes_per_subject: MEMORY_BUDGET,
    };
    let sessions = SessionSettings {
        max_inflight: 8,
        max_queued_messages: 32,
        max_queued_bytes: 64 * 1024,
        slow_subscriber_timeout: Duration::from_millis(50),
        max_subscriptions: 16,
        // No session outlives its connection, so a will is never delayed
        // past the run and nothing is left parked between runs.
        max_session_expiry: Duration::ZERO,
        ..SessionSettings::default()
    };
    let store = Arc::new(MemoryStore::new());
    let broker = Broker::new(
        &sessions,
        limits.memory_budget,
        Arc::clone(&store) as Arc<dyn Store>,
    );

    // The probe: a session of its own subject, so the client can never
    // take it over, holding every topic a filter can name.
    let probe = broker
        .attach(
            SessionKey::new("fuzz-probe", "fuzz-probe"),
            true,
            Duration::ZERO,
        )
        .expect("a new routing core has room for the probe's session")
        .session;
    for filter in PROBE_FILTERS {
        let options = SubscriptionOptions {
            qos: QoS::ExactlyOnce,
            no_local: false,
            retain_as_published: false,
            id: None,
        };
        // Cannot fail: valid filters, a fresh session below the cap.
        let _ = broker.subscribe(&probe, filter, options, RetainHandling::Never);
    }
    let routed = Arc::new(Mutex::new(Vec::new()));
    // Drained as it fills, so the probe never holds a publisher back.
    let drainer = tokio::spawn({
        let probe = Arc::clone(&probe);
        let routed = Arc::clone(&routed);
        async move {
            loop {
                take_all(&probe, &routed);
                probe.mailbox().ready().await;
            }
        }
    });

    let (_reload_sender, reloads) = tokio::sync::watch::channel(0);
    let (_shutdown_sender, shutdown) = tokio::sync::watch::channel(false);
    let strangers = Arc::new(Strangers::new(
        limits.max_pending_connections,
        limits.max_pending_per_source,
    ));
    let shared = Arc::new(Shared {
        sessions: Arc::new(tokio::sync::Semaphore::new(limits.max_connections)),
        limits,
        leeway: Duration::from_secs(5),
        deny_publish: if setup.deny_disconnects {
            DenyPublish::Disconnect
        } else {
            DenyPublish::Drop
        },
        policy,
        keys,
        reloads,
        broker: Arc::clone(&broker),
        takeover: Arc::new(Registry::default()),
        strangers: Arc::clone(&strangers),
        metrics: Arc::default(),
    });
    let ip = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
    let Ok(place) = strangers.enter(ip) else {
        // A fresh table with room for four: cannot happen.
        return SessionOutcome::default();
    };

    let (client, server) = tokio::io::duplex(16 * 1024);
    let (mut client_read, mut client_write) = tokio::io::split(client);
    let feed = async {
        // The server may close early; what it did not read is not an error.
        let _ = client_write.write_all(input).await;
        let _ = client_write.shutdown().await;
        drop(client_write);
    };
    // What the gateway writes is read and dropped, so that it is never
    // held up by a full pipe.
    let read = async {
        let mut buffer = [0u8; 4096];
        while let Ok(1..) = client_read.read(&mut buffer).await {}
    };
    let addr = SocketAddr::new(ip, 8883);
    let serve = async move {
        if !setup.websocket {
            let peer = Peer {
                addr,
                transport: Transport::Tls,
                certificate: None,
            };
            return connection::serve(server, peer, place, shared, shutdown).await;
        }
        let policy = Arc::new(websocket::Policy::new(
            &WebSocketConfig::default(),
            MAX_PACKET,
        ));
        let upgrade = policy.upgrade(server);
        // As the listener does: the upgrade under the handshake deadline.
        let Ok(Ok(ws)) = tokio::time::timeout(shared.limits.handshake_timeout, upgrade).await
        else {
            return;
        };
        let peer = Peer {
            addr,
            transport: Transport::Wss,
            certificate: None,
        };
        connection::serve(ws, peer, place, shared, shutdown).await;
    };
    // All three at once: the gateway may write while the client is still
    // sending, and must not be held up by an unread output.
    let (ended, (), ()) = tokio::join!(
        async { tokio::time::timeout(RUN_LIMIT, serve).await.is_ok() },
        feed,
        read,
    );
    // A will is published by a task of its own, after a timer (zero when
    // no session outlives its connection, but a timer all the same): wait
    // for every task but the drainer to finish, within a bound.
    let metrics = tokio::runtime::Handle::current().metrics();
    for _ in 0..SETTLE_STEPS {
        if metrics.num_alive_tasks() <= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let settled = metrics.num_alive_tasks() <= 1;
    drainer.abort();
    take_all(&probe, &routed);
    let mut retained = Vec::new();
    for filter in PROBE_FILTERS {
        store.retained(filter, None, usize::MAX, &mut |message| {
            retained.push(message.topic().to_owned())
        });
    }
    let routed = std::mem::take(&mut *routed.lock().unwrap_or_else(PoisonError::into_inner));
    SessionOutcome {
        routed,
        retained,
        ended,
        settled,
    }
}

fn take_all(probe: &crate::broker::Session, routed: &Mutex<Vec<String>>) {
    let mut out: Vec<Delivery> = Vec::new();
    let _ = probe.mailbox().take(usize::MAX, usize::MAX, &mut out);
    routed
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .extend(
            out.iter()
                .map(|delivery| delivery.message.topic().to_owned()),
        );
}
