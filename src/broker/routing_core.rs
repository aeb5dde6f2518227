//! The routing core itself, [`Broker`]: what it holds, how it is built,
//! and the few accessors every part of it uses. Its work is spread by job
//! over `publish.rs`, `attach.rs`, `subscribe.rs` and `audit.rs`, each an
//! `impl Broker` of its own.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};

use super::budget::Budget;
use super::index::Index;
use super::mailbox::QueueLimits;
use super::message::{Message, Publication};
use super::registry::Registry;
use super::stats::Stats;
use super::store::Store;
use super::tap::Tap;
use crate::config::SessionSettings;
use crate::mqtt::TopicLimits;

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

/// The routing core. One per gateway, shared by every connection.
pub struct Broker {
    pub(super) settings: SessionSettings,
    pub(super) quotas: Quotas,
    pub(super) limits: QueueLimits,
    pub(super) index: RwLock<Index>,
    pub(super) sessions: Mutex<Registry>,
    pub(super) store: Arc<dyn Store>,
    pub(super) taps: RwLock<Vec<Arc<dyn Tap>>>,
    pub(super) budget: Arc<Budget>,
    pub(super) stats: Stats,
    /// Set while retained messages are refused for want of memory, so the
    /// refusal is logged once per episode.
    pub(super) refusing_retained: AtomicBool,
}

pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
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

    /// Subscriptions held, connected sessions' and parked ones', each
    /// member of a shared group one.
    pub fn subscription_count(&self) -> usize {
        self.read_index().count()
    }

    /// Retained messages held (expired ones not yet purged included).
    pub fn retained_count(&self) -> usize {
        self.store.retained_count()
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

    pub(super) fn read_index(&self) -> std::sync::RwLockReadGuard<'_, Index> {
        self.index.read().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn write_index(&self) -> std::sync::RwLockWriteGuard<'_, Index> {
        self.index.write().unwrap_or_else(PoisonError::into_inner)
    }
}
