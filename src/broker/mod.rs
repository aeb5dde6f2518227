//! jwtgate's routing core: subscriptions, retained messages, sessions and
//! delivery with back-pressure.
//!
//! # The model
//!
//! There is no router thread. A PUBLISH is routed on its publisher's own
//! task: [`Broker::publish`] matches its topic against the subscription
//! [`index`], merges the subscriptions of one session into one delivery
//! (at the highest QoS, with every subscription identifier), and puts a
//! [`Delivery`] into each subscriber session's bounded [`mailbox`]. The
//! subscriber's connection task is woken once per batch, not per message,
//! and turns deliveries into PUBLISH packets on its own socket. A message
//! crosses at most one task boundary between publisher and subscriber.
//!
//! **Back-pressure, not loss.** When a connected subscriber's queue is
//! full, [`Broker::publish`] returns a [`Pending`] publication; the
//! publisher's connection stops reading its socket and awaits
//! [`Pending::advance`] until every subscriber has taken the message, so
//! TCP paces the device. Only its QoS 1 PUBACK (or QoS 2 PUBREC) waits for
//! that, so a PUBACKed message is in every matching subscriber's queue.
//! One subscriber may hold a publisher back for at most `[sessions]
//! slow_subscriber_timeout`; then that subscriber's overflow policy applies
//! (see [`mailbox`]), every drop is counted ([`Stats`]) and logged, and the
//! publisher goes on. A subscriber that drains meanwhile takes the message
//! at once, so the policy only meets one that stayed full all along.
//!
//! **Sessions** are keyed by token subject and client id
//! ([`SessionKey`]). A connection [`Broker::attach`]es to one (new, or a
//! resumed persistent one with its queue and in-flight exchanges) and
//! [`Broker::detach`]es when it ends: the session then ends, or is parked
//! (its subscriptions kept, its queue still filling up to its bound) until
//! its expiry, with its will published after the will delay unless the
//! client comes back first.
//!
//! **Memory** is bounded per session (messages and bytes queued, in-flight
//! window, subscriptions) and gateway-wide by one ledger, the [`budget`]:
//! every message (MQTT 5 properties included), subscription, retained
//! message's place in the tree, session and topic alias is charged to it
//! while it lives, and what a client asks to hold is also booked to its
//! token subject's account, against the subject's quotas ([`Quotas`],
//! `[sessions] max_sessions_per_subject`, `max_subscription_bytes`). No
//! structure here walks topic levels by recursion, and retained messages
//! for a new subscription are replayed in slices (see `subscribe.rs`).
//!
//! **Storage**: retained messages and parked sessions go through the
//! [`store::Store`] trait; [`store::MemoryStore`] keeps them in memory.
//!
//! Authorization is not done here: the connection layer only hands the
//! broker what the token allows ([`crate::acl`]).

mod audit;
pub mod budget;
mod children;
pub mod index;
pub mod inflight;
pub mod mailbox;
pub mod message;
mod registry;
pub mod retained;
pub mod session;
pub mod store;
mod subscribe;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::task::Poll;
use std::time::{Duration, Instant, SystemTime};

use tracing::{info, warn};

use crate::config::SessionSettings;
use crate::mqtt::QoS;
use crate::mqtt::{FilterError, RequestedFilter, TopicLimits};
use budget::{Account, Kind};
pub use budget::{Budget, QuotaError};
use index::{Index, Subscriber};
pub use inflight::{Inflight, Resend, UnexpectedAck};
pub use mailbox::{Delivery, Offer, QueueLimits, Taken};
pub use message::{Message, Properties, Publication};
use registry::{Registry, session_cost};
use retained::Retained;
use session::Subscription;
pub use session::{Session, SessionKey};
use store::{SessionRecord, Store};

/// What one subject, or one session, may hold beyond the per-session
/// queue bounds ([`SessionSettings`] has the rest).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quotas {
    /// Bytes of retained messages (payload, topic, tree) per subject.
    pub retained_bytes_per_subject: usize,
    /// The longest topic a client may use: what a retained replay's
    /// position may hold.
    pub max_topic_bytes: usize,
}

impl Quotas {
    pub fn new(retained_bytes_per_subject: usize, topics: &TopicLimits) -> Quotas {
        Quotas {
            retained_bytes_per_subject,
            max_topic_bytes: topics.max_bytes,
        }
    }
}

impl Default for Quotas {
    fn default() -> Self {
        Quotas::new(8 * 1024 * 1024, &TopicLimits::DEFAULT)
    }
}

/// Completes once a [`Tap`] or the store has tried to commit a message,
/// with the outcome the publisher's acknowledgement must tell. A closed
/// channel (the writer stopped) means it was not kept.
pub type Kept = tokio::sync::oneshot::Receiver<Result<(), CommitError>>;

/// Why a message a publisher waits on was not kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CommitError {
    /// The commit failed (an I/O error, the writer gone).
    #[error("the store could not commit it")]
    Storage,
    /// The disk (or a quota, or a file size limit), the queue's own
    /// budget or the memory budget has no room for it.
    #[error("the store has no room for it")]
    Full,
}

/// Something outside the routing core that takes the routed messages it
/// wants: a bridge's store-and-forward queue. A publisher's QoS 1/2
/// acknowledgement waits until every tap that took its message has kept
/// it.
pub trait Tap: Send + Sync {
    /// Takes `message` if it wants it.
    fn take(&self, message: &Arc<Message>) -> Option<Kept>;
}

/// The routing core. One per gateway, shared by every connection.
pub struct Broker {
    settings: SessionSettings,
    quotas: Quotas,
    limits: QueueLimits,
    index: RwLock<Index>,
    sessions: Mutex<Registry>,
    store: Arc<dyn Store>,
    taps: RwLock<Vec<Arc<dyn Tap>>>,
    budget: Arc<Budget>,
    stats: Stats,
    /// Set while retained messages are refused for want of memory, so the
    /// refusal is logged once per episode.
    refusing_retained: AtomicBool,
}

/// What the overflow policies and limits did, since start.
#[derive(Debug, Default)]
pub struct Stats {
    /// Messages published into the routing core (not in the snapshot:
    /// a rate, not a loss).
    published: AtomicU64,
    dropped: AtomicU64,
    evicted: AtomicU64,
    expired: AtomicU64,
    oversized: AtomicU64,
    retained_refused: AtomicU64,
}

/// A copy of [`Stats`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Deliveries dropped by a full queue's overflow policy.
    pub dropped: u64,
    /// Connections closed by the `disconnect` slow-subscriber policy.
    pub evicted: u64,
    /// Deliveries whose message expired before it could be sent.
    pub expired: u64,
    /// Deliveries larger than their client's maximum packet size.
    pub oversized: u64,
    /// Retained messages not stored because the memory budget was used up.
    pub retained_refused: u64,
}

impl Stats {
    pub fn snapshot(&self) -> StatsSnapshot {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StatsSnapshot {
            dropped: load(&self.dropped),
            evicted: load(&self.evicted),
            expired: load(&self.expired),
            oversized: load(&self.oversized),
            retained_refused: load(&self.retained_refused),
        }
    }

    /// Messages published since start.
    pub fn published(&self) -> u64 {
        self.published.load(Ordering::Relaxed)
    }

    pub fn evicted(&self) {
        self.evicted.fetch_add(1, Ordering::Relaxed);
    }

    pub fn expired(&self) {
        self.expired.fetch_add(1, Ordering::Relaxed);
    }

    pub fn oversized(&self) {
        self.oversized.fetch_add(1, Ordering::Relaxed);
    }
}

/// A session a connection has just taken.
#[derive(Debug)]
pub struct Attached {
    pub session: Arc<Session>,
    /// A stored session was resumed (CONNACK "session present").
    pub present: bool,
    /// Its QoS exchanges, empty for a new session.
    pub inflight: Inflight,
}

/// Why a subscription was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubscribeError {
    #[error("invalid filter: {0}")]
    Invalid(#[from] FilterError),
    #[error("the session already has the maximum of {0} subscriptions")]
    TooMany(usize),
    #[error(
        "the session's subscriptions would hold more than {0} bytes ([sessions] max_subscription_bytes)"
    )]
    TooLarge(usize),
    #[error("{0}")]
    Quota(#[from] QuotaError),
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

/// One session a message goes to, with what its subscriptions ask for.
#[derive(Debug)]
struct Target {
    session: Arc<Session>,
    qos: QoS,
    retain_as_published: bool,
    ids: Vec<u32>,
    shared: bool,
}

/// A publication some subscriber has not taken yet; see the module docs.
#[derive(Debug)]
#[must_use = "a pending publication must be advanced until done"]
pub struct Pending {
    message: Arc<Message>,
    waiting: Vec<(Target, Instant)>,
    /// Taps still writing the message down.
    kept: Vec<Kept>,
}

impl Pending {
    /// Takes the commits (the taps', the retained store's) out, for a
    /// publisher that holds its acknowledgements in order on its own and
    /// reads on meanwhile (the gateway's clients): the publication is then
    /// done once its subscribers have it.
    pub fn take_kept(&mut self) -> Vec<Kept> {
        std::mem::take(&mut self.kept)
    }

    /// Every subscriber has taken the message (or its policy dropped it).
    pub fn is_done(&self) -> bool {
        self.waiting.is_empty() && self.kept.is_empty()
    }

    /// Waits until any waiting subscriber has room or the earliest
    /// hold-back bound passes, then offers the message again to all that
    /// wait. Cancel-safe: dropping the future loses nothing.
    ///
    /// Every subscriber is watched, not just one: a subscriber that drains
    /// takes the message at once and stops waiting, so when a stalled one
    /// keeps the publication past its bound, only a subscriber still full
    /// then (one that has not drained all that time) meets its policy.
    /// Waiting on the first alone once let a well-behaved subscriber sit in
    /// the list until the stalled one's bound, and be found full then by
    /// the burst that other publishers, released at the same moment, had
    /// just delivered.
    pub async fn advance(&mut self, broker: &Broker) {
        // The commits first: they come within a moment, and the
        // publisher's ack must not go out before them. Their outcome is
        // for an ack to tell; a publisher with one takes them out first
        // (`take_kept`), the others (wills, the bridges' inbound) have no
        // one to tell.
        while let Some(kept) = self.kept.last_mut() {
            let _ = kept.await;
            self.kept.pop();
        }
        let Some(earliest) = self.waiting.iter().map(|(_, deadline)| *deadline).min() else {
            return;
        };
        {
            let cost = self.message.cost();
            let mut rooms: Vec<Pin<Box<dyn Future<Output = ()> + Send + '_>>> = self
                .waiting
                .iter()
                .map(|(target, _)| {
                    Box::pin(target.session.mailbox().room(cost, &broker.budget)) as Pin<Box<_>>
                })
                .collect();
            let any_room = std::future::poll_fn(|cx| {
                if rooms
                    .iter_mut()
                    .any(|room| room.as_mut().poll(cx).is_ready())
                {
                    Poll::Ready(())
                } else {
                    Poll::Pending
                }
            });
            tokio::select! {
                () = any_room => {}
                () = tokio::time::sleep_until(tokio::time::Instant::from_std(earliest)) => {}
            }
        }
        let now = Instant::now();
        let message = &self.message;
        self.waiting.retain(|(target, deadline)| {
            broker.offer(target, message, *deadline <= now) == Offer::Full
        });
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Broker {
    /// A broker with `settings`, a gateway-wide message budget of
    /// `memory_budget` bytes, and the sessions `store` kept parked. Must
    /// run inside a tokio runtime (parked sessions get expiry timers).
    pub fn new(
        settings: &SessionSettings,
        memory_budget: usize,
        store: Arc<dyn Store>,
    ) -> Arc<Broker> {
        Broker::with_budget(
            settings,
            Budget::new(memory_budget),
            store,
            Quotas::default(),
        )
    }

    /// As [`Broker::new`], charging to `budget`, which the store's
    /// restored state may already be charged to, with `quotas`.
    pub fn with_budget(
        settings: &SessionSettings,
        budget: Arc<Budget>,
        store: Arc<dyn Store>,
        quotas: Quotas,
    ) -> Arc<Broker> {
        let broker = Arc::new(Broker {
            quotas,
            limits: QueueLimits {
                max_messages: settings.max_queued_messages,
                max_bytes: settings.max_queued_bytes,
                policy: settings.slow_subscriber,
            },
            settings: settings.clone(),
            index: RwLock::default(),
            sessions: Mutex::default(),
            store,
            taps: RwLock::default(),
            budget,
            stats: Stats::default(),
            refusing_retained: AtomicBool::new(false),
        });
        broker.restore();
        broker
    }

    /// Brings back the sessions the store kept parked.
    fn restore(self: &Arc<Self>) {
        let now = SystemTime::now();
        for (key, record) in self.store.sessions() {
            let Ok(left) = record.expires_at.duration_since(now) else {
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
            session.state().inflight = Some(Inflight::default());
            for delivery in record.queued {
                session.mailbox().force(delivery);
            }
            self.arm_expiry(&session, left);
            lock(&self.sessions).insert(key, session);
        }
    }

    pub fn settings(&self) -> &SessionSettings {
        &self.settings
    }

    pub fn budget(&self) -> &Arc<Budget> {
        &self.budget
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Whether the subscription index can be read now: the routing core
    /// is not stuck (the systemd watchdog asks, see [`crate::readiness`]).
    pub fn responds(&self) -> bool {
        self.index.try_read().is_ok()
    }

    /// Test hook: wedges the routing core for good, as a deadlock would,
    /// by holding the subscription index from a thread that never lets
    /// go. Only `jwtgate serve` with `JWTGATE_TEST_HOOKS=1` calls it.
    #[doc(hidden)]
    pub fn wedge_for_tests(self: &Arc<Self>) {
        let broker = Arc::clone(self);
        std::thread::spawn(move || {
            let _held = broker.write_index();
            loop {
                std::thread::park();
            }
        });
    }

    /// Sessions known, connected or parked.
    pub fn session_count(&self) -> usize {
        lock(&self.sessions).sessions.len()
    }

    /// Adds a tap, which sees every message routed from now on.
    pub fn add_tap(&self, tap: Arc<dyn Tap>) {
        self.taps
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .push(tap);
    }

    /// Builds a message charged to this broker's budget.
    pub fn message(&self, publication: Publication) -> Arc<Message> {
        Message::new(publication, &self.budget)
    }

    fn read_index(&self) -> std::sync::RwLockReadGuard<'_, Index> {
        self.index.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write_index(&self) -> std::sync::RwLockWriteGuard<'_, Index> {
        self.index.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Gives a connection the session `key`: the stored one unless
    /// `clean_start` (which discards it), else a new one, if its subject
    /// may hold another and the budget has room. The caller must hold the
    /// key's takeover claim, so no other connection has it.
    pub fn attach(
        self: &Arc<Self>,
        key: SessionKey,
        clean_start: bool,
    ) -> Result<Attached, AttachError> {
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
                    state.inflight.take().unwrap_or_default()
                };
                existing.mailbox().set_online(true);
                drop(sessions);
                self.store.remove_session(&key);
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
            let subscriptions = {
                let mut state = session.state();
                state.attached = false;
                state.inflight = Some(inflight);
                state
                    .subscriptions
                    .iter()
                    .map(|(k, sub)| (k.to_string(), sub.options))
                    .collect()
            };
            session.mailbox().set_online(false);
            self.arm_expiry(&session, expiry);
            self.store.save_session(
                session.key(),
                SessionRecord {
                    subscriptions,
                    expires_at: SystemTime::now() + expiry,
                    queued: Vec::new(),
                },
            );
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
            let record = {
                let state = session.state();
                if state.attached || state.ended {
                    continue;
                }
                let Some(expires_at) = state.expires_at else {
                    continue;
                };
                let mut queued: Vec<Delivery> = state
                    .inflight
                    .iter()
                    .flat_map(Inflight::resend)
                    .filter_map(|resend| match resend {
                        Resend::Publish(_, delivery) => Some(delivery.clone()),
                        Resend::Release(_) => None,
                    })
                    .collect();
                queued.extend(session.mailbox().peek_all());
                SessionRecord {
                    subscriptions: state
                        .subscriptions
                        .iter()
                        .map(|(k, sub)| (k.to_string(), sub.options))
                        .collect(),
                    expires_at,
                    queued,
                }
            };
            self.store.save_session(session.key(), record);
        }
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
        if self.unregister(session, true) {
            info!(session = %session.key(), "session expired");
            self.retire(session);
        }
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
        self.store.remove_session(session.key());
    }

    /// Routes `message` (published by `publisher`'s session, if any) to
    /// every matching subscription, and stores or clears it as the
    /// retained message of its topic when it has the RETAIN flag.
    pub fn publish(&self, message: Arc<Message>, publisher: Option<&Arc<Session>>) -> Pending {
        self.stats.published.fetch_add(1, Ordering::Relaxed);
        let retained = if message.retain() {
            let account = publisher.and_then(|p| p.state().account.clone());
            self.update_retained(&message, account.as_ref())
        } else {
            None
        };
        let mut targets = Vec::new();
        self.read_index()
            .matches(message.topic(), &self.budget, |m| {
                let subscriber = m.subscriber;
                if subscriber.options.no_local
                    && publisher.is_some_and(|p| Arc::ptr_eq(p, &subscriber.session))
                {
                    return;
                }
                targets.push(Target {
                    session: Arc::clone(&subscriber.session),
                    qos: subscriber.options.qos,
                    retain_as_published: subscriber.options.retain_as_published,
                    ids: subscriber.options.id.into_iter().collect(),
                    shared: m.shared,
                });
            });
        merge_per_session(&mut targets);
        let deadline = Instant::now() + self.settings.slow_subscriber_timeout;
        // A publisher never waits for its own session: it could not drain
        // it while it waits (its acks are not read), so its own overflow
        // applies at once.
        let waiting = targets
            .into_iter()
            .filter(|target| {
                let own = publisher.is_some_and(|p| Arc::ptr_eq(p, &target.session));
                self.offer(target, &message, own) == Offer::Full
            })
            .map(|target| (target, deadline))
            .collect();
        let kept = self
            .taps
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter_map(|tap| tap.take(&message))
            .chain(retained)
            .collect();
        Pending {
            message,
            waiting,
            kept,
        }
    }

    /// Stores (or with an empty payload clears) `message` as its topic's
    /// retained message, its place charged to its publisher's `account`
    /// (the gateway's alone for a will or a bridged message), within the
    /// subject's retained quota and the budget. The store's commit, or the
    /// refusal, is for the publisher's ack to wait on.
    fn update_retained(
        &self,
        message: &Arc<Message>,
        account: Option<&Arc<Account>>,
    ) -> Option<Kept> {
        if message.payload().is_empty() {
            return self.store.clear_retained(message.topic());
        }
        let place = retained::place_cost(message.topic());
        let charge = match account {
            Some(account) => {
                // What it replaces of the same publisher is freed by it.
                let quota = self.quotas.retained_bytes_per_subject
                    + self.store.held_by(message.topic(), account);
                self.budget.try_charge(
                    account,
                    Kind::Retained,
                    place,
                    place + message.cost(),
                    quota,
                )
            }
            None if self.budget.exhausted() => Err(QuotaError::Budget),
            None => Ok(self.budget.charge_as(Kind::Retained, place)),
        };
        match charge {
            Ok(charge) => {
                if self.refusing_retained.swap(false, Ordering::Relaxed) {
                    info!("retained messages are stored again");
                }
                self.store.retain(Retained {
                    message: Arc::clone(message),
                    charge: Some(charge),
                })
            }
            Err(err) => {
                self.stats.retained_refused.fetch_add(1, Ordering::Relaxed);
                if err == QuotaError::Budget
                    && !self.refusing_retained.swap(true, Ordering::Relaxed)
                {
                    warn!(
                        topic = message.topic(),
                        budget = self.budget.limit(),
                        "memory budget used up: retained messages are not stored until memory frees up (see [limits] memory_budget_mb)"
                    );
                }
                // Routed, but not kept as retained: the ack must not say
                // it was.
                let (refused, kept) = tokio::sync::oneshot::channel();
                let _ = refused.send(Err(CommitError::Full));
                Some(kept)
            }
        }
    }

    /// Offers `message` to one target; with `overflow`, its policy applies
    /// if it is still full.
    fn offer(&self, target: &Target, message: &Arc<Message>, overflow: bool) -> Offer {
        let delivery = Delivery {
            message: Arc::clone(message),
            qos: message.qos().min(target.qos),
            retain: target.retain_as_published && message.retain(),
            subscription_ids: target.ids.as_slice().into(),
        };
        let mailbox = target.session.mailbox();
        let offer = if overflow {
            mailbox.overflow(delivery, &self.budget)
        } else {
            mailbox.offer(delivery, &self.budget)
        };
        if let Offer::Dropped { first } = offer {
            let total = self.stats.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if first {
                warn!(
                    session = %target.session.key(),
                    online = mailbox.is_online(),
                    queued = mailbox.len(),
                    total_dropped = total,
                    "slow subscriber: queue full, messages dropped"
                );
            }
        }
        offer
    }
}

/// Several subscriptions of one session that match one message make one
/// delivery, at the highest of their QoS and with all their identifiers
/// (MQTT 5 §3.3.4). Shared-subscription deliveries stay separate.
fn merge_per_session(targets: &mut Vec<Target>) {
    if targets.len() < 2 {
        return;
    }
    targets.sort_unstable_by_key(|t| (t.shared, Arc::as_ptr(&t.session)));
    let mut merged: Vec<Target> = Vec::with_capacity(targets.len());
    for target in targets.drain(..) {
        match merged.last_mut() {
            Some(last)
                if !target.shared
                    && !last.shared
                    && Arc::ptr_eq(&last.session, &target.session) =>
            {
                last.qos = last.qos.max(target.qos);
                last.retain_as_published |= target.retain_as_published;
                last.ids.extend(target.ids);
            }
            _ => merged.push(target),
        }
    }
    *targets = merged;
}

/// Runs `run` on a thread with a small stack (256 KiB, an eighth of a
/// tokio worker's): a walk that recursed over thousands of topic levels
/// would overflow it.
#[cfg(test)]
fn on_small_stack(run: impl FnOnce() + Send + 'static) {
    std::thread::Builder::new()
        .stack_size(256 * 1024)
        .spawn(run)
        .unwrap()
        .join()
        .unwrap();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::store::MemoryStore;
    use crate::mqtt::{RetainHandling, SubscriptionOptions};
    use bytes::Bytes;

    fn settings() -> SessionSettings {
        SessionSettings {
            max_queued_messages: 2,
            slow_subscriber_timeout: Duration::from_millis(50),
            ..SessionSettings::default()
        }
    }

    fn broker_with(store: Arc<MemoryStore>) -> Arc<Broker> {
        Broker::new(&settings(), 1 << 30, store)
    }

    fn options(qos: QoS, id: Option<u32>) -> SubscriptionOptions {
        SubscriptionOptions {
            qos,
            no_local: false,
            retain_as_published: false,
            id,
        }
    }

    fn message(broker: &Broker, topic: &str, qos: QoS, retain: bool) -> Arc<Message> {
        broker.message(Publication {
            topic: topic.into(),
            payload: Bytes::from_static(b"m"),
            qos,
            retain,
            properties: Properties::default(),
            expiry: None,
        })
    }

    /// What the session's connection would take, retained replays included.
    fn replayed(broker: &Broker, session: &Arc<Session>) -> Vec<Delivery> {
        while broker.replay(session) {}
        taken(session)
    }

    fn taken(session: &Session) -> Vec<Delivery> {
        let mut out = Vec::new();
        session.mailbox().take(usize::MAX, usize::MAX, &mut out);
        out
    }

    #[tokio::test]
    async fn overlapping_subscriptions_make_one_delivery_at_the_highest_qos() {
        let broker = broker_with(Arc::new(MemoryStore::new()));
        let a = broker
            .attach(SessionKey::new("s", "a"), true)
            .unwrap()
            .session;
        broker
            .subscribe(
                &a,
                "t/#",
                options(QoS::AtMostOnce, Some(1)),
                RetainHandling::Never,
            )
            .unwrap();
        broker
            .subscribe(
                &a,
                "t/+",
                options(QoS::ExactlyOnce, Some(2)),
                RetainHandling::Never,
            )
            .unwrap();
        broker
            .subscribe(
                &a,
                "$share/g/t/x",
                options(QoS::AtLeastOnce, None),
                RetainHandling::Never,
            )
            .unwrap();
        assert!(
            broker
                .publish(message(&broker, "t/x", QoS::AtLeastOnce, false), None)
                .is_done()
        );
        let got = taken(&a);
        assert_eq!(
            got.len(),
            2,
            "one merged delivery, one for the shared subscription"
        );
        let merged = got.iter().find(|d| d.subscription_ids.len() == 2).unwrap();
        assert_eq!(
            merged.qos,
            QoS::AtLeastOnce,
            "min(publish 1, best subscription 2)"
        );
        let mut ids = merged.subscription_ids.to_vec();
        ids.sort();
        assert_eq!(ids, [1, 2]);
    }

    #[tokio::test]
    async fn no_local_skips_the_publishers_own_session() {
        let broker = broker_with(Arc::new(MemoryStore::new()));
        let a = broker
            .attach(SessionKey::new("s", "a"), true)
            .unwrap()
            .session;
        let no_local = SubscriptionOptions {
            no_local: true,
            ..options(QoS::AtMostOnce, None)
        };
        broker
            .subscribe(&a, "t", no_local, RetainHandling::Never)
            .unwrap();
        let _ = broker.publish(message(&broker, "t", QoS::AtMostOnce, false), Some(&a));
        assert!(taken(&a).is_empty());
        let _ = broker.publish(message(&broker, "t", QoS::AtMostOnce, false), None);
        assert_eq!(taken(&a).len(), 1);
    }

    #[tokio::test]
    async fn a_full_subscriber_holds_the_publication_until_it_has_room() {
        let broker = broker_with(Arc::new(MemoryStore::new()));
        let sub = broker
            .attach(SessionKey::new("s", "sub"), true)
            .unwrap()
            .session;
        broker
            .subscribe(
                &sub,
                "t",
                options(QoS::AtLeastOnce, None),
                RetainHandling::Never,
            )
            .unwrap();
        for _ in 0..2 {
            assert!(
                broker
                    .publish(message(&broker, "t", QoS::AtLeastOnce, false), None)
                    .is_done()
            );
        }
        let mut pending = broker.publish(message(&broker, "t", QoS::AtLeastOnce, false), None);
        assert!(!pending.is_done(), "the queue holds 2");
        let mut out = Vec::new();
        sub.mailbox().take(2, 2, &mut out);
        pending.advance(&broker).await;
        assert!(pending.is_done());
        assert_eq!(taken(&sub).len(), 1);
        assert_eq!(broker.stats().snapshot().dropped, 0);
    }

    /// A publication waiting for a stalled subscriber and a briefly full
    /// one: the latter takes it as soon as it drains, so the policy meets
    /// only the stalled one, even if the well-behaved one is full again
    /// when the bound passes.
    #[tokio::test]
    async fn only_a_subscriber_full_all_along_meets_the_policy() {
        let broker = broker_with(Arc::new(MemoryStore::new()));
        let stalled = broker
            .attach(SessionKey::new("s", "stalled"), true)
            .unwrap()
            .session;
        let reader = broker
            .attach(SessionKey::new("s", "reader"), true)
            .unwrap()
            .session;
        for session in [&stalled, &reader] {
            broker
                .subscribe(
                    session,
                    "t",
                    options(QoS::AtLeastOnce, None),
                    RetainHandling::Never,
                )
                .unwrap();
        }
        for _ in 0..2 {
            let _ = broker.publish(message(&broker, "t", QoS::AtLeastOnce, false), None);
        }
        let mut pending = broker.publish(message(&broker, "t", QoS::AtLeastOnce, false), None);
        // Both full. The reader drains; the publication reaches it at once.
        let mut out = Vec::new();
        reader.mailbox().take(2, 2, &mut out);
        tokio::time::timeout(Duration::from_millis(20), pending.advance(&broker))
            .await
            .expect("advanced on the reader's room, well before the bound");
        assert_eq!(taken(&reader).len(), 1);
        // The reader fills up again just before the bound passes.
        for _ in 0..2 {
            reader.mailbox().force(taken_delivery(&broker, "refill"));
        }
        while !pending.is_done() {
            pending.advance(&broker).await;
        }
        assert_eq!(broker.stats().snapshot().dropped, 1, "the stalled one only");
        assert_eq!(
            stalled.mailbox().take(10, 10, &mut out),
            Taken::Evicted,
            "the stalled subscriber meets its policy"
        );
        assert_ne!(
            reader.mailbox().take(10, 10, &mut out),
            Taken::Evicted,
            "the reader does not"
        );
    }

    fn taken_delivery(broker: &Broker, topic: &str) -> Delivery {
        Delivery {
            message: message(broker, topic, QoS::AtLeastOnce, false),
            qos: QoS::AtLeastOnce,
            retain: false,
            subscription_ids: Default::default(),
        }
    }

    #[tokio::test]
    async fn past_the_hold_back_bound_the_policy_applies() {
        let broker = broker_with(Arc::new(MemoryStore::new()));
        let sub = broker
            .attach(SessionKey::new("s", "stalled"), true)
            .unwrap()
            .session;
        broker
            .subscribe(
                &sub,
                "t",
                options(QoS::AtLeastOnce, None),
                RetainHandling::Never,
            )
            .unwrap();
        for _ in 0..2 {
            let _ = broker.publish(message(&broker, "t", QoS::AtLeastOnce, false), None);
        }
        let mut pending = broker.publish(message(&broker, "t", QoS::AtLeastOnce, false), None);
        while !pending.is_done() {
            pending.advance(&broker).await;
        }
        assert_eq!(broker.stats().snapshot().dropped, 1);
        let mut out = Vec::new();
        assert_eq!(
            sub.mailbox().take(10, 10, &mut out),
            Taken::Evicted,
            "the default policy disconnects a stalled QoS 1 subscriber"
        );
    }

    #[tokio::test]
    async fn a_parked_session_keeps_receiving_and_is_resumed() {
        let store = Arc::new(MemoryStore::new());
        let broker = broker_with(Arc::clone(&store));
        let key = SessionKey::new("s", "p");
        let attached = broker.attach(key.clone(), true).unwrap();
        broker
            .subscribe(
                &attached.session,
                "t",
                options(QoS::AtLeastOnce, None),
                RetainHandling::Never,
            )
            .unwrap();
        broker.detach(
            attached.session,
            attached.inflight,
            Duration::from_secs(60),
            None,
        );
        assert_eq!(store.sessions().len(), 1, "parked in the store");
        assert!(
            broker
                .publish(message(&broker, "t", QoS::AtLeastOnce, false), None)
                .is_done()
        );
        let resumed = broker.attach(key, false).unwrap();
        assert!(resumed.present);
        assert!(store.sessions().is_empty(), "live again");
        assert_eq!(taken(&resumed.session).len(), 1, "queued while away");
    }

    #[tokio::test]
    async fn a_parked_session_expires() {
        let broker = broker_with(Arc::new(MemoryStore::new()));
        let key = SessionKey::new("s", "e");
        let attached = broker.attach(key.clone(), true).unwrap();
        broker.detach(
            attached.session,
            attached.inflight,
            Duration::from_millis(20),
            None,
        );
        assert_eq!(broker.session_count(), 1);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(broker.session_count(), 0);
        assert!(!broker.attach(key, false).unwrap().present);
    }

    #[tokio::test]
    async fn parked_sessions_in_the_store_are_restored_at_start() {
        let store = Arc::new(MemoryStore::new());
        let key = SessionKey::new("s", "restored");
        store.save_session(
            &key,
            SessionRecord {
                subscriptions: vec![("t/+".into(), options(QoS::AtLeastOnce, Some(7)))],
                expires_at: SystemTime::now() + Duration::from_secs(60),
                queued: Vec::new(),
            },
        );
        store.save_session(
            &SessionKey::new("s", "stale"),
            SessionRecord {
                subscriptions: Vec::new(),
                expires_at: SystemTime::now() - Duration::from_secs(1),
                queued: Vec::new(),
            },
        );
        let broker = broker_with(Arc::clone(&store));
        assert_eq!(broker.session_count(), 1, "the expired record is dropped");
        assert!(
            broker
                .publish(message(&broker, "t/x", QoS::AtLeastOnce, false), None)
                .is_done()
        );
        let resumed = broker.attach(key, false).unwrap();
        assert!(resumed.present);
        let got = taken(&resumed.session);
        assert_eq!(got.len(), 1);
        assert_eq!(&got[0].subscription_ids[..], [7]);
    }

    #[tokio::test]
    async fn retained_messages_follow_retain_handling_and_are_not_sent_to_shared_subscriptions() {
        let broker = broker_with(Arc::new(MemoryStore::new()));
        let _ = broker.publish(message(&broker, "r/1", QoS::ExactlyOnce, true), None);
        let a = broker
            .attach(SessionKey::new("s", "r"), true)
            .unwrap()
            .session;
        let sub = |handling| {
            broker
                .subscribe(&a, "r/#", options(QoS::AtLeastOnce, None), handling)
                .unwrap()
        };
        assert!(!sub(RetainHandling::OnNewSubscription));
        let got = replayed(&broker, &a);
        assert_eq!(got.len(), 1);
        assert!(got[0].retain);
        assert_eq!(got[0].qos, QoS::AtLeastOnce);
        assert!(sub(RetainHandling::OnNewSubscription), "exists now");
        assert!(replayed(&broker, &a).is_empty());
        sub(RetainHandling::OnSubscribe);
        assert_eq!(replayed(&broker, &a).len(), 1);
        broker
            .subscribe(
                &a,
                "$share/g/r/#",
                options(QoS::AtLeastOnce, None),
                RetainHandling::OnSubscribe,
            )
            .unwrap();
        assert!(replayed(&broker, &a).is_empty());
        // Only a retained empty payload deletes it.
        let mut empty = Publication {
            topic: "r/1".into(),
            payload: Bytes::new(),
            qos: QoS::AtMostOnce,
            retain: false,
            properties: Properties::default(),
            expiry: None,
        };
        let _ = broker.publish(broker.message(empty.clone()), None);
        replayed(&broker, &a);
        sub(RetainHandling::OnSubscribe);
        assert_eq!(replayed(&broker, &a).len(), 1);
        empty.retain = true;
        let _ = broker.publish(broker.message(empty), None);
        replayed(&broker, &a);
        sub(RetainHandling::OnSubscribe);
        assert!(replayed(&broker, &a).is_empty());
    }
}
