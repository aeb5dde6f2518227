//! One session: the routing core's state for one client identity.
//!
//! A session is named by a [`SessionKey`], the token's subject together
//! with the client id, so a device can only ever resume its own sessions.
//! It outlives connections when the client asks for that (MQTT 3.1.1 clean
//! session 0, MQTT 5 session expiry), up to `[sessions]
//! max_session_expiry`.
//!
//! What a session holds, and who touches it:
//!
//! - its [`Mailbox`]: messages waiting to be sent, filled by publishers on
//!   their own tasks and drained by the connection serving the session;
//! - its subscriptions, as the client made them (the index holds the same
//!   subscriptions keyed by topic);
//! - its [`Inflight`] exchanges, parked here while no connection holds
//!   them (a connection owns them outright while it does);
//! - the timers of a parked session: its expiry and a delayed will.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use tokio::task::AbortHandle;

use super::budget::{Account, Charge};
use super::inflight::Inflight;
use super::mailbox::{Mailbox, QueueLimits};
use super::retained::Position;
use crate::mqtt::SubscriptionOptions;

/// The name of a session: whose token, which client id.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SessionKey {
    subject: Box<str>,
    client_id: Box<str>,
}

impl SessionKey {
    pub fn new(subject: &str, client_id: &str) -> SessionKey {
        SessionKey {
            subject: subject.into(),
            client_id: client_id.into(),
        }
    }

    pub fn subject(&self) -> &str {
        &self.subject
    }

    pub fn client_id(&self) -> &str {
        &self.client_id
    }
}

impl fmt::Display for SessionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (sub {:?})", self.client_id, self.subject)
    }
}

#[derive(Debug)]
pub struct Session {
    key: SessionKey,
    mailbox: Mailbox,
    state: Mutex<State>,
    /// Retained messages wait to be replayed ([`State::replays`]): read
    /// without the lock on every delivery round.
    replaying: AtomicBool,
}

/// One subscription as the session holds it.
#[derive(Debug)]
pub(super) struct Subscription {
    pub options: SubscriptionOptions,
    /// The filter and its share of the subscription index.
    pub charge: Option<Charge>,
}

/// Retained messages still to be sent for one subscription: a position in
/// the retained store, read a slice at a time as the session has room.
#[derive(Debug)]
pub(super) struct Replay {
    /// The filter (without `$share/...`: shared subscriptions get none).
    pub filter: Box<str>,
    pub options: SubscriptionOptions,
    /// Resume after this topic; `None` before the first slice.
    pub after: Option<Position>,
    /// The filter and the largest position it may hold.
    pub charge: Charge,
}

#[derive(Debug, Default)]
pub(super) struct State {
    /// Requested filter (`$share/...` included) to the subscription.
    pub subscriptions: HashMap<Box<str>, Subscription>,
    /// Bytes charged for the subscriptions and replays.
    pub subscription_bytes: usize,
    /// Retained messages to send, oldest subscription first.
    pub replays: VecDeque<Replay>,
    /// The subject's account, and the session's own place on it.
    pub account: Option<Arc<Account>>,
    pub charge: Option<Charge>,
    /// The exchanges of a parked session.
    pub inflight: Option<Inflight>,
    /// A connection holds the session.
    pub attached: bool,
    /// While attached, the expiry the client asked for, when not zero: the
    /// session is kept in the store while connected (see
    /// `Broker::save_connected`).
    pub keep_for: Option<Duration>,
    /// Deliveries the store holds for this parked session: the next one
    /// queued while it is parked is written at this position.
    pub stored: u64,
    /// The session is over; it only lingers in tasks that still hold it.
    pub ended: bool,
    pub expiry: Option<AbortHandle>,
    /// When a parked session's expiry comes.
    pub expires_at: Option<SystemTime>,
    pub will: Option<AbortHandle>,
}

impl Session {
    pub fn new(key: SessionKey, limits: QueueLimits) -> Session {
        Session {
            key,
            mailbox: Mailbox::new(limits),
            state: Mutex::default(),
            replaying: AtomicBool::new(false),
        }
    }

    pub fn key(&self) -> &SessionKey {
        &self.key
    }

    pub fn mailbox(&self) -> &Mailbox {
        &self.mailbox
    }

    pub(super) fn state(&self) -> MutexGuard<'_, State> {
        // Updates under this lock are single assignments and map edits
        // that cannot panic halfway.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The account of the session's subject, which what the session's
    /// connection holds is booked to.
    pub fn account(&self) -> Option<Arc<Account>> {
        self.state().account.clone()
    }

    /// Whether retained messages wait to be replayed.
    pub fn is_replaying(&self) -> bool {
        self.replaying.load(Ordering::Acquire)
    }

    pub(super) fn set_replaying(&self, replaying: bool) {
        self.replaying.store(replaying, Ordering::Release);
    }

    /// The filters this session is subscribed to, as requested.
    pub fn subscriptions(&self) -> Vec<String> {
        let mut filters: Vec<String> = self
            .state()
            .subscriptions
            .keys()
            .map(|k| k.to_string())
            .collect();
        filters.sort();
        filters
    }
}
