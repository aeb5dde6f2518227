//! The gateway-wide memory budget for application messages.
//!
//! Per-session bounds keep one subscriber from holding too much; the
//! budget keeps all of them together, plus the retained store, under one
//! figure (`[limits] memory_budget_mb`). Each [`super::Message`] carries a
//! [`Charge`] for what it holds and gives it back when it is freed, so the
//! budget counts a message once however many queues share it, and can
//! never drift from what is really allocated.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

#[derive(Debug)]
pub struct Budget {
    limit: usize,
    used: AtomicUsize,
}

impl Budget {
    pub fn new(limit: usize) -> Arc<Budget> {
        Arc::new(Budget {
            limit,
            used: AtomicUsize::new(0),
        })
    }

    /// Charges `bytes`; they are given back when the charge is dropped.
    /// Charging never fails: what may exceed the budget is decided where
    /// messages are queued ([`Budget::exhausted`]).
    pub fn charge(self: &Arc<Self>, bytes: usize) -> Charge {
        self.used.fetch_add(bytes, Ordering::Relaxed);
        Charge {
            budget: Arc::clone(self),
            bytes,
        }
    }

    /// True once messages in memory use the whole budget.
    pub fn exhausted(&self) -> bool {
        self.used() >= self.limit
    }

    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    pub fn limit(&self) -> usize {
        self.limit
    }
}

/// Bytes held against a [`Budget`] until dropped.
#[derive(Debug)]
pub struct Charge {
    budget: Arc<Budget>,
    bytes: usize,
}

impl Charge {
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_are_given_back() {
        let budget = Budget::new(100);
        let a = budget.charge(60);
        assert!(!budget.exhausted());
        let b = budget.charge(40);
        assert!(budget.exhausted());
        drop(a);
        assert_eq!(budget.used(), 40);
        assert!(!budget.exhausted());
        drop(b);
        assert_eq!(budget.used(), 0);
    }
}
