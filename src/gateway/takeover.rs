//! One live connection per session.
//!
//! MQTT says a new CONNECT for a session that is already connected takes
//! it over: the old connection is closed first. The new connection may
//! only take the session from the routing core once the old one has handed
//! it back (with its in-flight exchanges), so sessions are serialized
//! here: a newcomer kicks the holder and waits until the holder has let
//! go.
//!
//! The registry is also where an operator finds the live connections
//! (`jwtgate sessions`) and ends them (`jwtgate disconnect`): each holder
//! says who it is once admitted ([`Claim::go_live`]), and an operator's
//! order reaches it the way a newcomer's kick does.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use tokio::sync::{OwnedMutexGuard, watch};

use crate::broker::SessionKey;
use crate::mqtt::{Transport, Version};

#[derive(Default)]
pub struct Registry {
    by_session: Mutex<HashMap<SessionKey, Entry>>,
}

struct Entry {
    /// Bumped by every claim; a holder whose generation is older has been
    /// taken over.
    generation: u64,
    /// Held by the live connection until it has handed the session back.
    slot: Arc<tokio::sync::Mutex<()>>,
    kick: watch::Sender<Kick>,
    /// What the holder said of itself once admitted.
    live: Option<Arc<Live>>,
}

/// What a holder watches for.
#[derive(Debug, Clone, Copy, Default)]
struct Kick {
    /// The latest claim's generation.
    generation: u64,
    /// An operator's order to the latest claimant.
    ended: Option<Kicked>,
}

/// Why a holder must let go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kicked {
    /// A newer connection of the session wants it.
    TakenOver,
    /// `jwtgate disconnect`.
    Administrative { discard_session: bool },
}

/// A live connection, as `jwtgate sessions` shows it.
#[derive(Debug)]
pub(crate) struct Live {
    pub remote: SocketAddr,
    pub transport: Transport,
    pub version: Version,
    pub since: SystemTime,
    /// The token's `exp` (Unix seconds), 0 for none; re-authentication
    /// moves it.
    token_expires: AtomicU64,
}

impl Live {
    pub fn new(
        remote: SocketAddr,
        transport: Transport,
        version: Version,
        token_expires: Option<u64>,
    ) -> Live {
        Live {
            remote,
            transport,
            version,
            since: SystemTime::now(),
            token_expires: AtomicU64::new(token_expires.unwrap_or(0)),
        }
    }

    pub fn token_expires(&self) -> Option<u64> {
        Some(self.token_expires.load(Ordering::Relaxed)).filter(|&exp| exp > 0)
    }

    pub fn renewed(&self, token_expires: Option<u64>) {
        self.token_expires
            .store(token_expires.unwrap_or(0), Ordering::Relaxed);
    }
}

/// The previous holder did not let go in time.
#[derive(Debug, thiserror::Error)]
#[error("the previous connection of this session did not close within {0:?}")]
pub struct TakeoverTimeout(Duration);

impl Registry {
    /// Claims `key` for a new connection, kicking any current holder, and
    /// waits until the holder is gone.
    pub async fn claim(
        self: &Arc<Self>,
        key: &SessionKey,
        wait: Duration,
    ) -> Result<Claim, TakeoverTimeout> {
        let (generation, slot, kicked) = {
            let mut map = self
                .by_session
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let entry = map.entry(key.clone()).or_insert_with(|| Entry {
                generation: 0,
                slot: Arc::new(tokio::sync::Mutex::new(())),
                kick: watch::channel(Kick::default()).0,
                live: None,
            });
            entry.generation += 1;
            entry.live = None;
            entry.kick.send_replace(Kick {
                generation: entry.generation,
                ended: None,
            });
            (entry.generation, entry.slot.clone(), entry.kick.subscribe())
        };
        let guard = tokio::time::timeout(wait, slot.lock_owned())
            .await
            .map_err(|_| TakeoverTimeout(wait))?;
        Ok(Claim {
            registry: Arc::clone(self),
            key: key.clone(),
            generation,
            kicked,
            live: None,
            _slot: guard,
        })
    }

    /// The sessions held by a connection now, with what each holder said
    /// of itself (nothing yet while it is being admitted).
    pub fn live(&self) -> Vec<(SessionKey, Option<Arc<Live>>)> {
        self.lock()
            .iter()
            .map(|(key, entry)| (key.clone(), entry.live.clone()))
            .collect()
    }

    /// Tells the holders of the sessions `wanted` picks to end them, and
    /// returns, for each, its slot: locked until that holder has let go.
    pub fn end(
        &self,
        wanted: impl Fn(&SessionKey) -> bool,
        discard_session: bool,
    ) -> Vec<Arc<tokio::sync::Mutex<()>>> {
        let order = Kicked::Administrative { discard_session };
        self.lock()
            .iter()
            .filter(|(key, _)| wanted(key))
            .map(|(_, entry)| {
                entry.kick.send_modify(|kick| kick.ended = Some(order));
                Arc::clone(&entry.slot)
            })
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SessionKey, Entry>> {
        self.by_session
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// The right to be a session's live connection. Dropping it lets the next
/// claimant in, so it must outlive the connection's hold on the session.
pub struct Claim {
    registry: Arc<Registry>,
    key: SessionKey,
    generation: u64,
    kicked: watch::Receiver<Kick>,
    live: Option<Arc<Live>>,
    _slot: OwnedMutexGuard<()>,
}

impl Claim {
    /// Resolves when a newer connection wants the session, or an operator
    /// ends it.
    pub async fn kicked(&mut self) -> Kicked {
        let mine = self.generation;
        let kick = self
            .kicked
            .wait_for(|kick| kick.generation > mine || kick.ended.is_some())
            .await
            .map(|kick| *kick);
        match kick {
            Ok(kick) if kick.generation > mine => Kicked::TakenOver,
            Ok(kick) => kick.ended.unwrap_or(Kicked::TakenOver),
            // The registry entry is gone, which cannot happen while this
            // claim holds it; waiting forever is then right.
            Err(_) => std::future::pending().await,
        }
    }

    /// The holder is admitted: from now on `jwtgate sessions` lists it.
    pub fn go_live(&mut self, live: Live) {
        let live = Arc::new(live);
        if let Some(entry) = self
            .registry
            .lock()
            .get_mut(&self.key)
            .filter(|entry| entry.generation == self.generation)
        {
            entry.live = Some(Arc::clone(&live));
        }
        self.live = Some(live);
    }

    /// A re-authentication put a token with this `exp` in force.
    pub fn renewed(&self, token_expires: Option<u64>) {
        if let Some(live) = &self.live {
            live.renewed(token_expires);
        }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        let mut map = self.registry.lock();
        if map
            .get(&self.key)
            .is_some_and(|e| e.generation == self.generation)
        {
            map.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests;
