//! Uplinks: bridges from this gateway to a central broker.
//!
//! # The model
//!
//! A bridge has two directions, configured by its `[[bridge]]` table:
//!
//! - **forward** (local → remote): a `Forwarder` is a tap on the routing
//!   core ([`crate::broker::Tap`]). Every routed message matching a forward
//!   rule is written to the bridge's store-and-forward [`Queue`] on disk
//!   under its remote topic, and the publishing device's PUBACK waits for
//!   that commit and tells whether it worked (the device reads on
//!   meanwhile; its acks leave in order, see `gateway::owed`). The link task sends the queue in order, at most
//!   a window of unacknowledged messages at a time (the remote's receive
//!   maximum; 256 for an MQTT 3.1.1 remote, which names none), taking what
//!   was just committed from memory when it keeps up, and rows are deleted
//!   only once the remote acknowledged them. An outage
//!   of any length up to the queue's budget, a restart or a power cut (up
//!   to `[storage] sync_interval_ms`) loses nothing; on reconnect the link
//!   reads the backlog from the table, without waiting for new traffic.
//! - **subscribe** (remote → local): the link subscribes to the remote
//!   filters and publishes what arrives into the routing core under the
//!   mapped local topic, so it reaches exactly the local subscribers whose
//!   (token-checked) subscriptions match; it acknowledges the remote once
//!   the routing core took the message and every commit it made (a
//!   retained message, another bridge's queue) is done. The bridge keeps a
//!   session at the remote (`clean_start = false`, MQTT 5
//!   `session_expiry_secs`), so what is published for it while the link
//!   or the gateway is down waits there and arrives on the next
//!   connection, in order; it subscribes again only when the remote says
//!   it has no session, or when the subscribe rules changed since the
//!   session's subscriptions were made (recorded beside the database).
//!   The local topic is held to the gateway's
//!   `[limits]` topic limits, as a device's is: a message over them is not
//!   routed, is acknowledged (the remote would send it again for ever) and
//!   counted ([`Refusals`]), and logged at most once a minute.
//!
//! **No loops.** A message that came in from a bridge carries that bridge
//! as its origin ([`Message::origin`]), and its own `Forwarder` never
//! takes it, whatever the rules. On MQTT 5 the link also subscribes with
//! no-local, so the remote never returns the bridge's own forwards.
//!
//! **Reconnects** back off exponentially from 1 s to 60 s with jitter, and
//! every failure is logged once with its kind (credential file, DNS, TCP,
//! TLS, CONNACK, protocol), so an operator can tell a wrong password from a
//! dead link. Each link also keeps where it stands ([`LinkStatus`]:
//! connecting, connected since when, or down since when with the last
//! error) for the metrics and `jwtgate status`, which cannot read a log.

mod backoff;
mod connection;
mod link;
mod outbound;
mod refusal;
mod status;
mod subscriptions;
mod wire;

use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::error;

use crate::broker::{Broker, Kept, Message, Tap};
use crate::config::{BridgeConfig, ForwardRule};
use crate::mqtt::TopicLimits;
use crate::storage::{Queue, Storage};

pub use refusal::{Refusal, Refusals};
pub use status::{LinkState, LinkStatus};

/// The tap that queues what a bridge forwards.
struct Forwarder {
    name: Arc<str>,
    rules: Vec<ForwardRule>,
    queue: Arc<Queue>,
}

impl Tap for Forwarder {
    fn take(&self, message: &Arc<Message>) -> Option<Kept> {
        if message.origin() == Some(&*self.name) {
            return None;
        }
        let rule = self
            .rules
            .iter()
            .find(|rule| rule.local.matches_topic(message.topic()))?;
        let qos = message.qos().min(rule.qos);
        Some(
            self.queue
                .append(Arc::clone(message), rule.remote_topic(message.topic()), qos),
        )
    }
}

/// One [`Refusals`] per bridge of `configs`, for [`start`] and the metrics.
pub fn refusals(configs: &[BridgeConfig]) -> Vec<Arc<Refusals>> {
    configs
        .iter()
        .map(|config| Arc::new(Refusals::new(&config.name)))
        .collect()
}

/// One [`LinkStatus`] per bridge of `configs`, connecting since now, for
/// [`start`] and whoever reports on the links (metrics, `jwtgate status`).
pub fn link_statuses(configs: &[BridgeConfig]) -> Vec<Arc<LinkStatus>> {
    configs
        .iter()
        .map(|config| Arc::new(LinkStatus::new(&config.name, connection::remote(config))))
        .collect()
}

/// Starts every bridge of `configs`: taps on `broker` for their forward
/// rules, and one link task each, until `shutdown` turns true. The queues
/// must have been opened in `storage`; `refusals` and `statuses` are those
/// of [`refusals`] and [`link_statuses`] for the same `configs`, and
/// `limits` the gateway's topic limits, which what comes in from a remote
/// is held to.
pub fn start(
    configs: &[BridgeConfig],
    storage: &Storage,
    broker: &Arc<Broker>,
    limits: &TopicLimits,
    refusals: &[Arc<Refusals>],
    statuses: &[Arc<LinkStatus>],
    shutdown: &watch::Receiver<bool>,
) -> JoinSet<()> {
    let mut links = JoinSet::new();
    for config in configs {
        // Looked up by name, not position: a status made for another list
        // of bridges must not describe the wrong one.
        let status = statuses
            .iter()
            .find(|status| status.name() == config.name)
            .map_or_else(
                || Arc::new(LinkStatus::new(&config.name, connection::remote(config))),
                Arc::clone,
            );
        let Some(queue) = storage.queue(&config.name) else {
            error!(
                bridge = config.name,
                "bridge: no queue was opened for it; not started"
            );
            status.failed(
                "storage",
                "no queue was opened for it; not started".to_owned(),
            );
            continue;
        };
        let name = status.shared_name();
        if !config.forward.is_empty() {
            broker.add_tap(Arc::new(Forwarder {
                name: Arc::clone(&name),
                rules: config.forward.clone(),
                queue: Arc::clone(queue),
            }));
        }
        let refused = refusals
            .iter()
            .find(|refusals| refusals.name() == config.name)
            .map_or_else(|| Arc::new(Refusals::new(&config.name)), Arc::clone);
        // Beside the database: it describes the remote's session as the
        // queue describes what the remote has not acknowledged.
        let subscriptions_file = storage
            .path()
            .parent()
            .filter(|_| !config.clean_start)
            .map(|dir| dir.join(format!("bridge-{}.subscriptions", config.name)));
        let link = link::Link::new(
            config.clone(),
            status,
            Arc::clone(queue),
            Arc::clone(broker),
            *limits,
            refused,
            subscriptions_file,
        );
        links.spawn(link.run(shutdown.clone()));
    }
    links
}
