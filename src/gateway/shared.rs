//! What every connection task of the gateway shares.
//!
//! It has a file of its own, apart from `mod.rs`, so that the connection
//! modules take it from a sibling: the parent only declares and re-exports
//! them, and nothing in the layer imports back up into it.
//!
//! Its fields are crate-visible because two places build one: the gateway
//! at start ([`super::server`]) and the `mqtt_session` fuzz harness
//! (`crate::fuzz`), which drives the same connection code over an
//! in-memory stream.

use std::sync::Arc;
use std::time::Duration;

use super::pending::Strangers;
use super::takeover::Registry;
use crate::broker::Broker;
use crate::config::{DenyPublish, Limits};
use crate::keys::KeyStore;
use crate::metrics::Metrics;
use crate::token::Policy;

/// What every connection task shares: settings fixed at start, and handles
/// on the key set, the routing core and the takeover registry.
pub(crate) struct Shared {
    pub(crate) limits: Limits,
    pub(crate) leeway: Duration,
    pub(crate) deny_publish: DenyPublish,
    pub(crate) policy: Policy,
    pub(crate) keys: Arc<KeyStore>,
    /// Bumped after every reload of keys and certificate: connections then
    /// re-check their token.
    pub(crate) reloads: tokio::sync::watch::Receiver<u64>,
    pub(crate) broker: Arc<Broker>,
    pub(crate) takeover: Arc<Registry>,
    /// Places of the connections that have not authenticated yet.
    pub(crate) strangers: Arc<Strangers>,
    /// Places of the authenticated ones (`[limits] max_connections`).
    pub(crate) sessions: Arc<tokio::sync::Semaphore>,
    pub(crate) metrics: Arc<Metrics>,
}
