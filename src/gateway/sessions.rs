//! One live connection per client id.
//!
//! MQTT says a new CONNECT with a client id that is already connected takes
//! the session over: the old connection is closed first. rumqttd's router
//! would do that itself, but it then reuses the old connection's id for the
//! new one, and the old connection's task, not yet aware, could send its own
//! DISCONNECT for that id and cut the new client off. So the gateway
//! serializes sessions per client id here: a newcomer kicks the holder and
//! waits until the holder has let go of its router link.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{OwnedMutexGuard, watch};

/// The router's name for a client's session: its subject and client id,
/// so that a client id is only ever resumed by the subject that made it.
/// The router refuses ids with `+ # $ /`, so those (and `%`, the escape)
/// are percent-encoded in the subject; a client id with them is refused
/// before it gets here.
pub fn session_key(subject: Option<&str>, client_id: &str) -> String {
    let mut key = String::with_capacity(client_id.len() + 16);
    for c in subject.unwrap_or("").chars() {
        match c {
            '+' | '#' | '$' | '/' | '%' | ':' => key.push_str(&format!("%{:02X}", c as u32)),
            c => key.push(c),
        }
    }
    key.push(':');
    key.push_str(client_id);
    key
}

#[derive(Default)]
pub struct Sessions {
    by_client: Mutex<HashMap<String, Entry>>,
}

struct Entry {
    /// Bumped by every claim; a holder whose generation is older has been
    /// taken over.
    generation: u64,
    /// Held by the live session for as long as it has a router link.
    slot: Arc<tokio::sync::Mutex<()>>,
    kick: watch::Sender<u64>,
}

/// The previous holder did not let go in time.
#[derive(Debug, thiserror::Error)]
#[error("the previous connection of this client did not close within {0:?}")]
pub struct TakeoverTimeout(Duration);

impl Sessions {
    /// Claims `client_id` for a new connection, kicking any current holder,
    /// and waits until the holder is gone.
    pub async fn claim(
        self: &Arc<Self>,
        client_id: &str,
        wait: Duration,
    ) -> Result<Claim, TakeoverTimeout> {
        let (generation, slot, kicked) = {
            let mut map = self
                .by_client
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let entry = map.entry(client_id.to_owned()).or_insert_with(|| Entry {
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
            sessions: Arc::clone(self),
            client_id: client_id.to_owned(),
            generation,
            kicked,
            _slot: guard,
        })
    }
}

/// The right to be `client_id`'s live connection. Dropping it lets the next
/// claimant in, so it must outlive the connection's router link.
pub struct Claim {
    sessions: Arc<Sessions>,
    client_id: String,
    generation: u64,
    kicked: watch::Receiver<u64>,
    _slot: OwnedMutexGuard<()>,
}

impl Claim {
    /// Resolves when a newer connection of the same client id wants the
    /// session.
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
            .sessions
            .by_client
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if map
            .get(&self.client_id)
            .is_some_and(|e| e.generation == self.generation)
        {
            map.remove(&self.client_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_keys_separate_subjects_and_escape_router_specials() {
        assert_eq!(session_key(Some("auth0|dev"), "t1"), "auth0|dev:t1");
        assert_eq!(session_key(Some("a/b:c"), "t1"), "a%2Fb%3Ac:t1");
        assert_eq!(session_key(None, "t1"), ":t1");
        assert_ne!(
            session_key(Some("a:b"), "c"),
            session_key(Some("a"), "b:c"),
            "the separator cannot be forged from the subject"
        );
    }

    #[tokio::test]
    async fn a_second_claim_kicks_and_waits_for_the_first() {
        let sessions = Arc::new(Sessions::default());
        let mut first = sessions.claim("dev", Duration::from_secs(1)).await.unwrap();
        let second = {
            let sessions = sessions.clone();
            tokio::spawn(async move { sessions.claim("dev", Duration::from_secs(5)).await })
        };
        first.taken_over().await;
        assert!(!second.is_finished());
        drop(first);
        let mut second = second.await.unwrap().unwrap();
        // The new holder is not itself kicked by its own claim.
        let kicked = tokio::time::timeout(Duration::from_millis(50), second.taken_over()).await;
        assert!(kicked.is_err());
        drop(second);
        assert!(sessions.by_client.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_holder_that_never_lets_go_times_the_claimant_out() {
        let sessions = Arc::new(Sessions::default());
        let _first = sessions.claim("dev", Duration::from_secs(1)).await.unwrap();
        let second = sessions.claim("dev", Duration::from_millis(50)).await;
        assert!(second.is_err());
    }
}
