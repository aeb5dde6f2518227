//! Sessions coming and going: a connection attaches to a new or a resumed
//! session and detaches when it ends; the session then ends, or is parked
//! until its expiry, with its will published after its delay. Persistent
//! sessions are saved to the store, connected or parked, and brought back
//! from it at start.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tracing::info;

use super::budget::{Kind, QuotaError};
use super::index::{self, Subscriber};
use super::inflight::{Inflight, Resend};
use super::mailbox::Delivery;
use super::message::Publication;
use super::registry::session_cost;
use super::routing_core::{Broker, lock};
use super::session::{Session, SessionKey, State, Subscription};
use super::store::{SessionExpiry, SessionRecord};
use super::tap::Kept;
use crate::mqtt::RequestedFilter;

/// A session a connection has just taken.
#[derive(Debug)]
pub struct Attached {
    pub session: Arc<Session>,
    /// A stored session was resumed (CONNACK "session present").
    pub present: bool,
    /// Its QoS exchanges, empty for a new session.
    pub inflight: Inflight,
}

/// Why a session could not be attached.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AttachError {
    #[error(
        "the subject already holds {0} sessions, connected and parked ([sessions] max_sessions_per_subject)"
    )]
    TooMany(usize),
    #[error("{0}")]
    Quota(#[from] QuotaError),
}

/// A will to publish when its session's connection ends.
#[derive(Debug, Clone)]
pub struct Will {
    pub publication: Publication,
    /// MQTT 5 will delay interval.
    pub delay: Duration,
}

impl Broker {
    /// Brings back the sessions the store kept parked.
    pub(super) fn restore(self: &Arc<Self>) {
        let now = SystemTime::now();
        for (key, record) in self.store.sessions() {
            let Some(left) = record.expiry.left(now) else {
                self.store.remove_session(&key);
                continue;
            };
            let session = Arc::new(Session::new(key.clone(), self.limits));
            {
                // Restored state fitted the budget when it was made; it is
                // charged, not refused.
                let account = self.budget.account(key.subject());
                let mut state = session.state();
                state.charge = Some(self.budget.charge_as(Kind::Sessions, session_cost(&key)));
                state.account = Some(account);
            }
            for (requested, options) in &record.subscriptions {
                let Ok(parsed) = RequestedFilter::parse(requested) else {
                    continue;
                };
                let cost = index::subscription_cost(requested);
                let mut state = session.state();
                state.subscription_bytes += cost;
                state.subscriptions.insert(
                    requested.as_str().into(),
                    Subscription {
                        options: *options,
                        charge: Some(self.budget.charge_as(Kind::Subscriptions, cost)),
                    },
                );
                drop(state);
                self.write_index().insert(
                    parsed.group,
                    parsed.filter,
                    Subscriber {
                        session: Arc::clone(&session),
                        options: *options,
                    },
                );
            }
            {
                let mut state = session.state();
                state.inflight = Some(Inflight::default());
                state.stored = record.queued.len() as u64;
            }
            for delivery in record.queued {
                session.mailbox().force(delivery);
            }
            self.arm_expiry(&session, left);
            lock(&self.sessions).insert(key, session);
        }
    }

    /// Gives a connection the session `key`: the stored one unless
    /// `clean_start` (which discards it), else a new one, if its subject
    /// may hold another and the budget has room. The caller must hold the
    /// key's takeover claim, so no other connection has it. A session the
    /// client asks to keep (`expiry` not zero) is written to the store at
    /// once, and again on each change of its subscriptions.
    pub fn attach(
        self: &Arc<Self>,
        key: SessionKey,
        clean_start: bool,
        expiry: Duration,
    ) -> Result<Attached, AttachError> {
        let keep_for = Some(expiry.min(self.settings.max_session_expiry)).filter(|e| !e.is_zero());
        let mut sessions = lock(&self.sessions);
        let discarded = match sessions.get(&key) {
            Some(existing) if !clean_start => {
                // Still under the registry lock, so an expiry firing now
                // sees the session attached and leaves it alone.
                let existing = Arc::clone(existing);
                let inflight = {
                    let mut state = existing.state();
                    for timer in [state.expiry.take(), state.will.take()]
                        .into_iter()
                        .flatten()
                    {
                        timer.abort();
                    }
                    state.attached = true;
                    state.keep_for = keep_for;
                    // A crash before the commit leaves the parked record,
                    // which is as good: nobody waits on it.
                    let _ = self.save_connected(&existing, &state);
                    state.inflight.take().unwrap_or_default()
                };
                existing.mailbox().set_online(true);
                drop(sessions);
                if keep_for.is_none() {
                    self.store.remove_session(&key);
                }
                return Ok(Attached {
                    session: existing,
                    present: true,
                    inflight,
                });
            }
            Some(_) => sessions.remove(&key),
            None => None,
        };
        // A session discarded by clean start makes room for its successor.
        let held = sessions.of_subject(key.subject());
        if discarded.is_none() && held >= self.settings.max_sessions_per_subject {
            drop(sessions);
            return Err(AttachError::TooMany(held));
        }
        let account = self.budget.account(key.subject());
        let charge = match self.budget.try_charge(
            &account,
            Kind::Sessions,
            session_cost(&key),
            session_cost(&key),
            usize::MAX,
        ) {
            Ok(charge) => charge,
            Err(err) => {
                if let Some(old) = discarded {
                    // Put back: a refused connection discards nothing.
                    sessions.insert(key, old);
                }
                return Err(err.into());
            }
        };
        let session = Arc::new(Session::new(key.clone(), self.limits));
        {
            let mut state = session.state();
            state.attached = true;
            state.account = Some(account);
            state.charge = Some(charge);
            state.keep_for = keep_for;
        }
        session.mailbox().set_online(true);
        sessions.insert(key, Arc::clone(&session));
        drop(sessions);
        if let Some(old) = discarded {
            // A new connection before the will delay passed: no will.
            if let Some(will) = old.state().will.take() {
                will.abort();
            }
            self.retire(&old);
        }
        // After the old session's record is gone: they share a key. A
        // crash before the commit loses a session its client was told is
        // new, so nobody waits on it.
        let _ = self.save_connected(&session, &session.state());
        Ok(Attached {
            session,
            present: false,
            inflight: Inflight::default(),
        })
    }

    /// The connection holding `session` is gone. With a zero `expiry` (or
    /// none allowed) the session ends now; otherwise it is parked with its
    /// exchanges for up to `expiry`. `will`, if given, is published after
    /// its delay, or when the session ends if that comes first.
    pub fn detach(
        self: &Arc<Self>,
        session: Arc<Session>,
        inflight: Inflight,
        expiry: Duration,
        will: Option<Will>,
    ) {
        let expiry = expiry.min(self.settings.max_session_expiry);
        if expiry.is_zero() {
            self.end(&session);
        } else {
            {
                // One lock from parking the mailbox to sending the record:
                // a delivery queued before is in the record, one queued
                // after is written behind it (`Broker::write_parked`).
                let mut state = session.state();
                state.attached = false;
                state.keep_for = None;
                state.inflight = Some(inflight);
                let queued = session.mailbox().park();
                let record = stored_record(
                    &state,
                    queued,
                    SessionExpiry::At(SystemTime::now() + expiry),
                );
                state.stored = record.queued.len() as u64;
                // Nobody is left to answer; a crash before the commit
                // leaves the record written while connected.
                let _ = self.store.save_session(session.key(), record);
            }
            self.arm_expiry(&session, expiry);
        }
        if let Some(will) = will {
            let delay = will.delay.min(expiry);
            let broker = Arc::clone(self);
            let task = tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let message = broker.message(will.publication);
                let mut pending = broker.publish(message, None);
                while !pending.is_done() {
                    pending.advance(&broker).await;
                }
            });
            if !delay.is_zero() {
                session.state().will = Some(task.abort_handle());
            }
        }
    }

    /// Saves every parked session again with the messages waiting for it
    /// (unacknowledged ones first), so that they outlive a restart. For the
    /// gateway's shutdown, once its connections have ended.
    pub fn save_parked(&self) {
        let parked: Vec<Arc<Session>> = lock(&self.sessions).sessions.values().cloned().collect();
        for session in parked {
            let mut state = session.state();
            if state.attached || state.ended {
                continue;
            }
            let Some(expires_at) = state.expires_at else {
                continue;
            };
            let record = stored_record(
                &state,
                session.mailbox().peek_all(),
                SessionExpiry::At(expires_at),
            );
            state.stored = record.queued.len() as u64;
            // The storage's close, next at shutdown, waits for the commit.
            let _ = self.store.save_session(session.key(), record);
        }
    }

    /// Writes down `session`, connected, if its client asked to keep it:
    /// its subscriptions as they are now. Returns the commit, for the
    /// SUBACK or UNSUBACK that changed them to wait on.
    pub fn keep_subscriptions(&self, session: &Session) -> Option<Kept> {
        self.save_connected(session, &session.state())
    }

    /// [`Broker::keep_subscriptions`] for a caller that holds the session's
    /// lock (`state`): records reach the store in the order of the changes.
    pub(super) fn save_connected(&self, session: &Session, state: &State) -> Option<Kept> {
        let interval = state.keep_for.filter(|_| state.attached)?;
        let record = stored_record(state, Vec::new(), SessionExpiry::AfterRestart(interval));
        self.store.save_session(session.key(), record)
    }

    fn arm_expiry(self: &Arc<Self>, session: &Arc<Session>, after: Duration) {
        session.state().expires_at = Some(SystemTime::now() + after);
        let broker = Arc::downgrade(self);
        let parked = Arc::clone(session);
        let timer = tokio::spawn(async move {
            tokio::time::sleep(after).await;
            if let Some(broker) = broker.upgrade() {
                broker.expire(&parked);
            }
        });
        session.state().expiry = Some(timer.abort_handle());
    }

    /// A parked session's expiry has come.
    fn expire(&self, session: &Arc<Session>) {
        self.end_parked(session, "its expiry came");
    }

    /// Ends `session` if it is still the parked one registered, saying
    /// `why`; false when a connection holds it or it is gone.
    pub(super) fn end_parked(&self, session: &Arc<Session>, why: &str) -> bool {
        if !self.unregister(session, true) {
            return false;
        }
        info!(session = %session.key(), why, "parked session ended");
        self.retire(session);
        true
    }

    /// Ends a session for good: out of the registry, the index and the
    /// store, its queue dropped. A pending will is left to fire.
    fn end(&self, session: &Arc<Session>) {
        self.unregister(session, false);
        self.retire(session);
    }

    /// Takes `session` out of the registry if it is still the one there.
    /// With `only_if_parked`, a session a connection holds is left alone,
    /// and false returned.
    fn unregister(&self, session: &Arc<Session>, only_if_parked: bool) -> bool {
        let mut sessions = lock(&self.sessions);
        if only_if_parked && session.state().attached {
            return false;
        }
        if sessions
            .get(session.key())
            .is_some_and(|s| Arc::ptr_eq(s, session))
        {
            sessions.remove(session.key());
        }
        true
    }

    /// Everything of ending a session but the registry.
    fn retire(&self, session: &Arc<Session>) {
        let subscriptions = {
            let mut state = session.state();
            state.ended = true;
            state.attached = false;
            if let Some(expiry) = state.expiry.take() {
                expiry.abort();
            }
            state.replays.clear();
            state.subscription_bytes = 0;
            state.charge = None;
            std::mem::take(&mut state.subscriptions)
        };
        session.set_replaying(false);
        if !subscriptions.is_empty() {
            let mut index = self.write_index();
            for requested in subscriptions.keys() {
                if let Ok(parsed) = RequestedFilter::parse(requested) {
                    index.remove(parsed.group, parsed.filter, session);
                }
            }
        }
        let dropped = session.mailbox().close();
        if dropped > 0 {
            info!(session = %session.key(), dropped, "session ended with undelivered messages");
        }
        // An expiry that fired as a clean start replaced the session would
        // otherwise erase its successor's record, which has the same key.
        let replaced = lock(&self.sessions)
            .get(session.key())
            .is_some_and(|current| !Arc::ptr_eq(current, session));
        if !replaced {
            self.store.remove_session(session.key());
        }
    }
}

/// What a session leaves to the store: its subscriptions, and the
/// deliveries it holds, unacknowledged ones first, then `queued` (a
/// connected session's connection holds its exchanges, so it leaves none).
fn stored_record(state: &State, queued: Vec<Delivery>, expiry: SessionExpiry) -> SessionRecord {
    let mut held: Vec<Delivery> = state
        .inflight
        .iter()
        .flat_map(Inflight::resend)
        .filter_map(|resend| match resend {
            Resend::Publish(_, delivery) => Some(delivery.clone()),
            Resend::Release(_) => None,
        })
        .collect();
    held.extend(queued);
    SessionRecord {
        subscriptions: state
            .subscriptions
            .iter()
            .map(|(k, sub)| (k.to_string(), sub.options))
            .collect(),
        expiry,
        queued: held,
    }
}
