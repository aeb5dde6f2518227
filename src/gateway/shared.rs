//! What every connection task of the gateway shares.
//!
//! It has a file of its own, apart from `mod.rs`, so that the connection
//! modules take it from a sibling: the parent only declares and re-exports
//! them, and nothing in the layer imports back up into it.

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
pub(super) struct Shared {
    pub(super) limits: Limits,
    pub(super) leeway: Duration,
    pub(super) deny_publish: DenyPublish,
    pub(super) policy: Policy,
    pub(super) keys: Arc<KeyStore>,
    /// Bumped after every reload of keys and certificate: connections then
    /// re-check their token.
    pub(super) reloads: tokio::sync::watch::Receiver<u64>,
    pub(super) broker: Arc<Broker>,
    pub(super) takeover: Arc<Registry>,
    /// Places of the connections that have not authenticated yet.
    pub(super) strangers: Arc<Strangers>,
    /// Places of the authenticated ones (`[limits] max_connections`).
    pub(super) sessions: Arc<tokio::sync::Semaphore>,
    pub(super) metrics: Arc<Metrics>,
}
