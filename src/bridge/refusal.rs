//! What a bridge did not route of what its remote sent, counted by reason
//! for the metrics.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Why a message from the remote was not routed locally.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Its local topic has more levels than `[limits] max_topic_levels`.
    TopicLevels,
    /// Its local topic is longer than `[limits] max_topic_bytes`.
    TopicBytes,
    /// It maps to no valid local topic.
    InvalidTopic,
    /// It matches no subscribe rule (the remote should not have sent it).
    Unmapped,
}

impl Refusal {
    pub const ALL: [Refusal; 4] = [
        Refusal::TopicLevels,
        Refusal::TopicBytes,
        Refusal::InvalidTopic,
        Refusal::Unmapped,
    ];

    /// The metric's `reason` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::TopicLevels => "topic_levels",
            Refusal::TopicBytes => "topic_bytes",
            Refusal::InvalidTopic => "invalid_topic",
            Refusal::Unmapped => "unmapped",
        }
    }
}

/// One bridge's count of the messages from its remote it did not route,
/// by [`Refusal`]; every reason is there from the start, at zero.
#[derive(Debug)]
pub struct Refusals {
    name: Arc<str>,
    counts: [AtomicU64; Refusal::ALL.len()],
}

impl Refusals {
    pub fn new(name: &str) -> Refusals {
        Refusals {
            name: name.into(),
            counts: Default::default(),
        }
    }

    /// The bridge's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub(super) fn count(&self, refusal: Refusal) {
        self.counts[refusal as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Every reason with its count.
    pub fn snapshot(&self) -> [(Refusal, u64); Refusal::ALL.len()] {
        Refusal::ALL.map(|refusal| {
            (
                refusal,
                self.counts[refusal as usize].load(Ordering::Relaxed),
            )
        })
    }
}

#[cfg(test)]
mod tests;
