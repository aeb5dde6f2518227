//! One live connection per session.
//!
//! MQTT says a new CONNECT for a session that is already connected takes
//! it over: the old connection is closed first. The new connection may
//! only take the session from the routing core once the old one has handed
//! it back (with its in-flight exchanges), so sessions are serialized
//! here: a newcomer kicks the holder and waits until the holder has let
//! go.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{OwnedMutexGuard, watch};

use crate::broker::SessionKey;

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
    kick: watch::Sender<u64>,
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
                kick: watch::channel(0).0,
            });
            entry.generation += 1;
            entry.kick.send_replace(entry.generation);
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
            _slot: guard,
        })
    }
}

/// The right to be a session's live connection. Dropping it lets the next
/// claimant in, so it must outlive the connection's hold on the session.
pub struct Claim {
    registry: Arc<Registry>,
    key: SessionKey,
    generation: u64,
    kicked: watch::Receiver<u64>,
    _slot: OwnedMutexGuard<()>,
}

impl Claim {
    /// Resolves when a newer connection wants the session.
    pub async fn taken_over(&mut self) {
        let mine = self.generation;
        // An error means the registry entry is gone, which cannot happen
        // while this claim holds it; waiting forever is then right.
        if self.kicked.wait_for(|latest| *latest > mine).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        let mut map = self
            .registry
            .by_session
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
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
