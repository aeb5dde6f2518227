//! The gateway's handle on rumqttd's router, and one connection's link to it.
//!
//! rumqttd's router does routing, QoS bookkeeping, retained messages and
//! persistent sessions on a thread of its own. Connections talk to it through
//! "local links" (`LinkTx`/`LinkRx`), which were written for in-process
//! clients and need care when thousands of async tasks use them:
//!
//! - `LinkBuilder::build()` blocks on a router round trip, so it runs on the
//!   blocking pool. It also blocks *forever* when the router silently refuses
//!   the client (bad client id, no free slot); the gateway checks both before
//!   it asks, and bounds the wait.
//! - `LinkTx::send` is an `async fn` with no await point: it pushes onto the
//!   link's buffer and does a *blocking* send of one wake-up event on the
//!   router's bounded channel. The gateway pushes a whole socket read into the
//!   buffer and wakes the router once ([`Link::send`]), and stops reading from
//!   a client while the router's channel is half full ([`RouterHandle::congested`]),
//!   so the blocking send never waits in practice and a fast publisher is
//!   slowed by TCP back-pressure instead of growing router memory.
//! - Dropping a link does not tell the router: its slot would leak. [`Link`]
//!   sends a DISCONNECT when dropped, unless the router already let go of it
//!   (after which its connection id may belong to someone else).

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use rumqttd::local::{LinkBuilder, LinkRx, LinkTx};
use rumqttd::protocol::{Disconnect, DisconnectReasonCode, Packet};
use rumqttd::{Notification, Router, RouterConfig};

/// How long a new link may wait for the router's answer.
const LINK_TIMEOUT: Duration = Duration::from_secs(10);

// rumqttd's `LinkError` carries the unsent router event (hundreds of
// bytes), so it is turned into its message at this boundary.
type OpenLink = dyn Fn(&str, bool) -> Result<(LinkTx, LinkRx, Notification), String> + Send + Sync;

/// Why a link to the router could not be made or used.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    #[error("the router refused the link: {0}")]
    Refused(String),
    #[error("the router did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the router is gone")]
    Gone,
}

/// A running rumqttd router. Cheap to share behind an `Arc`.
pub struct RouterHandle {
    open: Box<OpenLink>,
    queued_events: Box<dyn Fn() -> usize + Send + Sync>,
}

// rumqttd's router tuning, fixed at what the removed `[router]` keys
// defaulted to, until jwtgate's own routing core replaces the router.
/// Outgoing packets queued per link and router pass.
const MAX_OUTGOING_PACKET_COUNT: u64 = 10_000;
/// Bytes per in-memory log segment.
const MAX_SEGMENT_SIZE: usize = 4 * 1024 * 1024;
/// Segments kept per topic log.
const MAX_SEGMENT_COUNT: usize = 4;

/// Events the router's channel holds (rumqttd's channel size) before a
/// sender blocks.
const ROUTER_CHANNEL_CAPACITY: usize = 1000;

impl RouterHandle {
    /// Starts the router thread. `max_connections` must cover every
    /// connection the gateway admits: the router silently ignores a link
    /// request past it.
    pub fn spawn(max_connections: usize) -> RouterHandle {
        let config = RouterConfig {
            max_connections,
            max_outgoing_packet_count: MAX_OUTGOING_PACKET_COUNT,
            max_segment_size: MAX_SEGMENT_SIZE,
            max_segment_count: MAX_SEGMENT_COUNT,
            ..RouterConfig::default()
        };
        // The router's channel type names a private rumqttd type, so it is
        // captured by closures instead of stored.
        let tx = Router::new(0, config).spawn();
        let queue = tx.clone();
        RouterHandle {
            open: Box::new(move |client_id, clean| {
                LinkBuilder::new(client_id, tx.clone())
                    .clean_session(clean)
                    .dynamic_filters(true)
                    .build()
                    .map_err(|e| e.to_string())
            }),
            queued_events: Box::new(move || queue.len()),
        }
    }

    /// True while the router's event channel is more than half full: time to
    /// stop reading from clients until it drains.
    pub fn congested(&self) -> bool {
        (self.queued_events)() > ROUTER_CHANNEL_CAPACITY / 2
    }

    /// Registers a client with the router. Returns the link and whether the
    /// router resumed a stored session.
    pub async fn open_link(
        self: &std::sync::Arc<Self>,
        client_id: String,
        clean_session: bool,
    ) -> Result<(Link, bool), RouterError> {
        let router = std::sync::Arc::clone(self);
        let build = tokio::task::spawn_blocking(move || (router.open)(&client_id, clean_session));
        let (tx, rx, ack) = tokio::time::timeout(LINK_TIMEOUT, build)
            .await
            .map_err(|_| RouterError::Timeout(LINK_TIMEOUT))?
            .map_err(|_| RouterError::Gone)?
            .map_err(RouterError::Refused)?;
        let session_present = matches!(
            Option::<Packet>::from(ack),
            Some(Packet::ConnAck(ack, _)) if ack.session_present
        );
        Ok((
            Link {
                tx,
                rx,
                attached: true,
            },
            session_present,
        ))
    }
}

/// Runs a future that is known to have no await point to completion.
fn complete_now<F: Future>(fut: F) -> Option<F::Output> {
    match pin!(fut).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(out) => Some(out),
        Poll::Pending => None,
    }
}

/// One client's link to the router.
pub struct Link {
    tx: LinkTx,
    rx: LinkRx,
    /// False once the router has dropped this link: its connection id may
    /// then already belong to another client, so nothing more is sent.
    attached: bool,
}

impl Link {
    /// Hands packets to the router and wakes it once for all of them.
    pub fn send(&mut self, packets: impl IntoIterator<Item = Packet>) -> Result<(), RouterError> {
        if !self.attached {
            return Err(RouterError::Gone);
        }
        let mut packets = packets.into_iter().peekable();
        let mut last = None;
        {
            let mut buffer = self.tx.buffer();
            while let Some(packet) = packets.next() {
                if packets.peek().is_none() {
                    last = Some(packet);
                } else {
                    buffer.push_back(packet);
                }
            }
        }
        let Some(last) = last else { return Ok(()) };
        match complete_now(self.tx.send(last)) {
            Some(Ok(_)) => Ok(()),
            Some(Err(e)) => {
                self.attached = false;
                Err(RouterError::Refused(e.to_string()))
            }
            None => Err(RouterError::Gone),
        }
    }

    /// Packets handed over that the router has not picked up yet.
    pub fn backlog(&self) -> usize {
        self.tx.buffer().len()
    }

    /// Waits for the router's next notification; `None` when the router
    /// has dropped this link.
    pub async fn next(&mut self) -> Option<Notification> {
        loop {
            match self.rx.next().await {
                Ok(Some(notification)) => return Some(notification),
                // A wake-up with nothing in it: wait for the next one.
                Ok(None) => continue,
                Err(_) => {
                    self.attached = false;
                    return None;
                }
            }
        }
    }

    /// Asks the router to resume forwarding after it paused this link
    /// (`Notification::Unschedule`) because the link's buffer was full.
    pub async fn wake(&self) -> Result<(), RouterError> {
        self.rx
            .wake()
            .await
            .map_err(|e| RouterError::Refused(e.to_string()))
    }

    /// The next notification if one is already there, without waiting.
    pub fn try_next(&mut self) -> Option<Notification> {
        match complete_now(self.rx.next()) {
            Some(Ok(notification)) => notification,
            Some(Err(_)) => {
                self.attached = false;
                None
            }
            None => None,
        }
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        // Drain what the router sent: this is also how a link learns that
        // the router has already let go of it.
        while self.try_next().is_some() {}
        if self.attached {
            let bye = Packet::Disconnect(
                Disconnect {
                    reason_code: DisconnectReasonCode::NormalDisconnection,
                },
                None,
            );
            // Nothing to do if this fails: the router is already gone.
            let _ = self.send([bye]);
        }
    }
}
