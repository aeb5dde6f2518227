//! Connections that have not authenticated yet, and the places they hold.
//!
//! Before its CONNECT is accepted a connection is a stranger: anyone on the
//! network can open one, and each holds a socket, a task, TLS state and a
//! little buffer for as long as its timeouts allow. Strangers therefore get
//! places of their own, apart from the authenticated sessions
//! (`[limits] max_connections`), so a flood of them can never take a
//! device's place:
//!
//! - at most `max_pending_per_source` per source (an IPv4 address, or an
//!   IPv6 /64, since one host owns a whole /64): past it, new sockets from
//!   that source are closed at once;
//! - at most `max_pending_connections` in all: when they are all taken, a
//!   newcomer pushes out the oldest stranger. Silent sockets age, devices
//!   complete their handshake and CONNECT in milliseconds, so a flood from
//!   many sources slows devices down instead of locking them out.
//!
//! A place is a [`Pending`]; it is given back when dropped (the connection
//! authenticated, failed or closed). An evicted connection learns it from
//! [`Pending::evicted`] and closes.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::Notify;

/// Where strangers come from, as far as their count is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct Source(IpAddr);

impl Source {
    pub fn of(ip: IpAddr) -> Source {
        match ip {
            IpAddr::V4(_) => Source(ip),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Source(IpAddr::V4(v4)),
                None => {
                    let prefix = u128::from(v6) & !(u128::from(u64::MAX));
                    Source(IpAddr::V6(Ipv6Addr::from(prefix)))
                }
            },
        }
    }
}

/// Why a new connection got no place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum NoPlace {
    #[error("{0} unauthenticated connections from this source already")]
    SourceFull(usize),
}

/// The places of all strangers.
#[derive(Debug)]
pub(crate) struct Strangers {
    max_total: usize,
    max_per_source: usize,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    next_id: u64,
    /// Oldest first: ids only grow.
    by_age: BTreeMap<u64, Stranger>,
    per_source: HashMap<Source, usize>,
    evicted: u64,
}

#[derive(Debug)]
struct Stranger {
    source: Source,
    evict: Arc<Notify>,
}

impl State {
    fn leave(&mut self, id: u64) -> Option<Stranger> {
        let stranger = self.by_age.remove(&id)?;
        if let Some(count) = self.per_source.get_mut(&stranger.source) {
            *count -= 1;
            if *count == 0 {
                self.per_source.remove(&stranger.source);
            }
        }
        Some(stranger)
    }
}

impl Strangers {
    pub fn new(max_total: usize, max_per_source: usize) -> Strangers {
        Strangers {
            max_total: max_total.max(1),
            max_per_source: max_per_source.max(1),
            state: Mutex::default(),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // The state is consistent after every statement that changes it, so
        // a panic elsewhere while it was held leaves nothing half done.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes a place for a new connection from `ip`, pushing out the oldest
    /// stranger if every place is taken.
    pub fn enter(self: &Arc<Self>, ip: IpAddr) -> Result<Pending, NoPlace> {
        let source = Source::of(ip);
        let mut state = self.state();
        let from_source = state.per_source.get(&source).copied().unwrap_or(0);
        if from_source >= self.max_per_source {
            return Err(NoPlace::SourceFull(from_source));
        }
        while state.by_age.len() >= self.max_total {
            let Some(oldest) = state.by_age.keys().next().copied() else {
                break;
            };
            if let Some(stranger) = state.leave(oldest) {
                stranger.evict.notify_one();
                state.evicted += 1;
            }
        }
        let id = state.next_id;
        state.next_id += 1;
        let evict = Arc::new(Notify::new());
        state.by_age.insert(
            id,
            Stranger {
                source,
                evict: Arc::clone(&evict),
            },
        );
        *state.per_source.entry(source).or_insert(0) += 1;
        Ok(Pending {
            strangers: Arc::clone(self),
            id,
            evict,
        })
    }

    /// Unauthenticated connections now.
    pub fn len(&self) -> usize {
        self.state().by_age.len()
    }

    /// Strangers pushed out by newer ones since start.
    pub fn evicted(&self) -> u64 {
        self.state().evicted
    }
}

/// One stranger's place, given back when dropped.
#[derive(Debug)]
pub(crate) struct Pending {
    strangers: Arc<Strangers>,
    id: u64,
    evict: Arc<Notify>,
}

impl Pending {
    /// Resolves when a newer stranger took this place.
    pub async fn evicted(&self) {
        self.evict.notified().await;
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.strangers.state().leave(self.id);
    }
}

#[cfg(test)]
mod tests;
