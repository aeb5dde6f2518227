//! The one ledger: every byte the gateway holds on a client's behalf.
//!
//! Per-session bounds keep one subscriber from holding too much; the
//! ledger keeps everything together under one figure (`[limits]
//! memory_budget_mb`) and says who holds what. Whatever is held is charged
//! here by what it costs, and given back when it is freed (a [`Charge`] is
//! dropped):
//!
//! - application messages ([`Kind::Messages`]), once however many queues
//!   share them, charged when built; their count is bounded where they are
//!   queued ([`Budget::exhausted`]), so building one never fails;
//! - subscriptions (the filter and its share of the subscription index),
//!   retained messages' places in the retained tree, sessions, and the
//!   topic aliases the gateway assigns: structures a client grows by
//!   asking, so [`Budget::try_charge`] refuses them once the budget is
//!   used up or the owner's quota is, and the client is told (MQTT 5
//!   reason 0x97, quota exceeded). Retained messages may fill at most half
//!   the budget, subscriptions and aliases three quarters, so that what a
//!   few clients pile up never keeps others from connecting.
//!
//! Charges on a client's behalf are also booked to the [`Account`] of its
//! token subject, which is how per-subject quotas are kept: one device
//! cannot take the whole budget from the others.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};

/// What a charge pays for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Messages,
    Subscriptions,
    Retained,
    Sessions,
    Aliases,
}

impl Kind {
    pub const ALL: [Kind; 5] = [
        Kind::Messages,
        Kind::Subscriptions,
        Kind::Retained,
        Kind::Sessions,
        Kind::Aliases,
    ];

    fn index(self) -> usize {
        self as usize
    }

    /// How much of the budget may be in use for a charge of this kind to
    /// be taken. What a few clients can pile up for everyone (retained
    /// messages) stops first, at half; subscriptions and aliases at three
    /// quarters; a session only when the budget is used up: so a budget
    /// filled with retained messages or subscriptions still lets devices
    /// connect, subscribe and have their messages queued.
    fn ceiling(self, limit: usize) -> usize {
        match self {
            Kind::Retained => limit / 2,
            Kind::Subscriptions | Kind::Aliases => limit - limit / 4,
            Kind::Messages | Kind::Sessions => limit,
        }
    }
}

/// Bytes per [`Kind`].
#[derive(Debug, Default)]
struct Counters([AtomicUsize; Kind::ALL.len()]);

impl Counters {
    fn add(&self, kind: Kind, bytes: usize) -> usize {
        self.slot(kind).fetch_add(bytes, Ordering::Relaxed) + bytes
    }

    fn sub(&self, kind: Kind, bytes: usize) {
        self.slot(kind).fetch_sub(bytes, Ordering::Relaxed);
    }

    fn get(&self, kind: Kind) -> usize {
        self.slot(kind).load(Ordering::Relaxed)
    }

    fn slot(&self, kind: Kind) -> &AtomicUsize {
        // `Kind::index` is below `Kind::ALL.len()` by construction.
        #[allow(clippy::indexing_slicing)]
        &self.0[kind.index()]
    }
}

#[derive(Debug)]
pub struct Budget {
    limit: usize,
    used: AtomicUsize,
    by_kind: Counters,
    /// The accounts in use, by subject: one per subject however many
    /// sessions and retained messages it holds.
    accounts: Mutex<HashMap<Box<str>, Weak<Account>>>,
}

/// What one token subject holds.
#[derive(Debug)]
pub struct Account {
    subject: Box<str>,
    held: Counters,
}

impl Account {
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// Bytes of `kind` this subject holds.
    pub fn held(&self, kind: Kind) -> usize {
        self.held.get(kind)
    }
}

/// Why a charge was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum QuotaError {
    #[error("the gateway's memory budget is used up ([limits] memory_budget_mb)")]
    Budget,
    #[error("the subject's quota of {quota} bytes is used up")]
    Subject { quota: usize },
}

impl Budget {
    pub fn new(limit: usize) -> Arc<Budget> {
        Arc::new(Budget {
            limit,
            used: AtomicUsize::new(0),
            by_kind: Counters::default(),
            accounts: Mutex::default(),
        })
    }

    /// Charges a message's `bytes`; they are given back when the charge is
    /// dropped. Charging never fails: what may exceed the budget is
    /// decided where messages are queued ([`Budget::exhausted`]).
    pub fn charge(self: &Arc<Self>, bytes: usize) -> Charge {
        self.book(None, Kind::Messages, bytes, 0)
    }

    /// Charges `bytes` of `kind` that no client asked for (state restored
    /// at start, which fitted the budget when it was made).
    pub fn charge_as(self: &Arc<Self>, kind: Kind, bytes: usize) -> Charge {
        self.book(None, kind, bytes, 0)
    }

    /// The account of `subject`, shared by everything it holds.
    pub fn account(&self, subject: &str) -> Arc<Account> {
        let mut accounts = self.accounts.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(account) = accounts.get(subject).and_then(Weak::upgrade) {
            return account;
        }
        // Accounts nobody holds any more are forgotten here, so the map is
        // bounded by the subjects holding something.
        accounts.retain(|_, account| account.strong_count() > 0);
        let account = Arc::new(Account {
            subject: subject.into(),
            held: Counters::default(),
        });
        accounts.insert(subject.into(), Arc::downgrade(&account));
        account
    }

    /// Charges `bytes` of `kind` to the budget and `account`, unless that
    /// would take the budget past its limit, or `account`'s holdings of
    /// `kind` (`account_bytes` counted for it) past `quota`.
    ///
    /// `account_bytes` may differ from `bytes`: a retained message's
    /// payload is already charged as a message, but counts against its
    /// publisher's retained quota too.
    pub fn try_charge(
        self: &Arc<Self>,
        account: &Arc<Account>,
        kind: Kind,
        bytes: usize,
        account_bytes: usize,
        quota: usize,
    ) -> Result<Charge, QuotaError> {
        if account.held.get(kind).saturating_add(account_bytes) > quota {
            return Err(QuotaError::Subject { quota });
        }
        if self.used().saturating_add(bytes) > kind.ceiling(self.limit) {
            return Err(QuotaError::Budget);
        }
        Ok(self.book(Some(Arc::clone(account)), kind, bytes, account_bytes))
    }

    fn book(
        self: &Arc<Self>,
        account: Option<Arc<Account>>,
        kind: Kind,
        bytes: usize,
        account_bytes: usize,
    ) -> Charge {
        self.used.fetch_add(bytes, Ordering::Relaxed);
        self.by_kind.add(kind, bytes);
        if let Some(account) = &account {
            account.held.add(kind, account_bytes);
        }
        Charge {
            budget: Arc::clone(self),
            account,
            kind,
            bytes,
            account_bytes,
        }
    }

    /// True once what is held uses the whole budget.
    pub fn exhausted(&self) -> bool {
        self.used() >= self.limit
    }

    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Bytes of `kind` held.
    pub fn used_by(&self, kind: Kind) -> usize {
        self.by_kind.get(kind)
    }

    pub fn limit(&self) -> usize {
        self.limit
    }
}

/// Bytes held against a [`Budget`] (and an [`Account`]) until dropped.
#[derive(Debug)]
pub struct Charge {
    budget: Arc<Budget>,
    account: Option<Arc<Account>>,
    kind: Kind,
    bytes: usize,
    account_bytes: usize,
}

impl Charge {
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// What it counts against its account's quota.
    pub fn account_bytes(&self) -> usize {
        self.account_bytes
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// Whether it is booked to `account`.
    pub fn is_booked_to(&self, account: &Arc<Account>) -> bool {
        self.account
            .as_ref()
            .is_some_and(|a| Arc::ptr_eq(a, account))
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.bytes, Ordering::Relaxed);
        self.budget.by_kind.sub(self.kind, self.bytes);
        if let Some(account) = &self.account {
            account.held.sub(self.kind, self.account_bytes);
        }
    }
}

#[cfg(test)]
mod tests;
