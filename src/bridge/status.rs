//! Where each bridge's link stands: connecting, connected since when,
//! down since when and why, or stopped by the gateway's shutdown. The link
//! task writes it at each transition; the metrics
//! (`jwtgate_bridge_connected`) and `jwtgate status` read it.
//!
//! A link that is down stays [`LinkState::Down`] while it retries, with
//! the time it went down and the last attempt's error: "down since 10:02,
//! 14 attempts failed, the last with a TLS error" is what an operator
//! needs, where a state flickering between down and connecting with
//! every attempt would hide when the outage began.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

/// One bridge's link state, as the link task last set it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkState {
    /// The first connection since start is being tried.
    Connecting { since: SystemTime },
    /// Connected to the remote (its CONNACK accepted, the subscriptions
    /// sent), since then.
    Connected { since: SystemTime },
    /// Not connected since `since`: the first failed attempt, or the end
    /// of the last connection. `kind` and `error` are the last failure's,
    /// as the log says them (`kind` is one of `credential`, `dns`, `tcp`,
    /// `tls`, `connack`, `protocol`, `timeout`, `connection`,
    /// `disconnect`, `storage`); `failures` counts the failures since
    /// `since`, the end of a connection included.
    Down {
        since: SystemTime,
        kind: &'static str,
        error: String,
        failures: u64,
    },
    /// The gateway is shutting down: the link was closed (or its retries
    /// given up) since then, and will not come back in this process.
    Stopped { since: SystemTime },
}

impl LinkState {
    /// `connecting`, `connected` or `down`.
    pub fn as_str(&self) -> &'static str {
        match self {
            LinkState::Connecting { .. } => "connecting",
            LinkState::Connected { .. } => "connected",
            LinkState::Down { .. } => "down",
            LinkState::Stopped { .. } => "stopped",
        }
    }

    /// When the link entered this state.
    pub fn since(&self) -> SystemTime {
        match self {
            LinkState::Connecting { since }
            | LinkState::Connected { since }
            | LinkState::Stopped { since }
            | LinkState::Down { since, .. } => *since,
        }
    }
}

/// One bridge's link state, shared between its link task and whoever
/// reports on it (as an `Arc<LinkStatus>`).
#[derive(Debug)]
pub struct LinkStatus {
    name: Arc<str>,
    remote: String,
    /// Whether `state` is `Connected`, readable without the lock: a scrape
    /// reads this, and should not wait on a link task.
    connected: AtomicBool,
    /// Held only to copy or replace the state, never across an await.
    state: Mutex<LinkState>,
}

impl LinkStatus {
    /// Bridge `name`'s link to `remote` (`host:port`), connecting since
    /// now.
    pub fn new(name: &str, remote: String) -> LinkStatus {
        LinkStatus {
            name: name.into(),
            remote,
            connected: AtomicBool::new(false),
            state: Mutex::new(LinkState::Connecting {
                since: SystemTime::now(),
            }),
        }
    }

    /// The bridge's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub(super) fn shared_name(&self) -> Arc<str> {
        Arc::clone(&self.name)
    }

    /// The remote, `host:port`.
    pub fn remote(&self) -> &str {
        &self.remote
    }

    /// The state now (a copy).
    pub fn state(&self) -> LinkState {
        self.lock().clone()
    }

    /// Whether the link is connected now; takes no lock.
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// A connection was set up (CONNACK accepted, subscriptions sent).
    pub(crate) fn connected(&self) {
        let mut state = self.lock();
        *state = LinkState::Connected {
            since: SystemTime::now(),
        };
        self.connected.store(true, Ordering::Relaxed);
    }

    /// An attempt failed or a connection ended, with an error of `kind`.
    /// A link already down keeps the time it went down.
    pub(crate) fn failed(&self, kind: &'static str, error: String) {
        let mut state = self.lock();
        let (since, failures) = match &*state {
            LinkState::Down {
                since, failures, ..
            } => (*since, failures.saturating_add(1)),
            LinkState::Connecting { .. }
            | LinkState::Connected { .. }
            | LinkState::Stopped { .. } => (SystemTime::now(), 1),
        };
        *state = LinkState::Down {
            since,
            kind,
            error,
            failures,
        };
        self.connected.store(false, Ordering::Relaxed);
    }

    /// The link task ended, at shutdown: no longer counted as connected
    /// while the rest of the gateway drains.
    pub(crate) fn stopped(&self) {
        *self.lock() = LinkState::Stopped {
            since: SystemTime::now(),
        };
        self.connected.store(false, Ordering::Relaxed);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LinkState> {
        // A panic elsewhere while holding it left a whole state: each
        // writer replaces it in one assignment.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests;
