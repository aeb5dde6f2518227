//! What the overflow policies and limits did, counted for the metrics.

use std::sync::atomic::{AtomicU64, Ordering};

/// What the overflow policies and limits did, since start.
#[derive(Debug, Default)]
pub struct Stats {
    /// Messages published into the routing core (not in the snapshot:
    /// a rate, not a loss).
    pub(super) published: AtomicU64,
    pub(super) dropped: AtomicU64,
    evicted: AtomicU64,
    expired: AtomicU64,
    oversized: AtomicU64,
    pub(super) retained_refused: AtomicU64,
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
