//! Messages the router dropped before a subscriber received them.
//!
//! rumqttd keeps each subscription filter's messages in a bounded in-memory
//! log (`[router] max_segment_size` × `max_segment_count`). It never slows a
//! publisher for a slow subscriber: when a subscriber falls further behind
//! than the log holds, the oldest segment is recycled and the subscriber's
//! read cursor jumps ahead. Those messages are lost. Every delivery carries
//! its offset in the filter's log, and the offsets of one filter are
//! consecutive, so the jump is visible here: the gateway counts what each
//! subscriber lost, adds it to a gateway-wide total and logs it.
//!
//! A delivery is attributed to the one subscription whose filter matches its
//! topic. Deliveries matching several subscriptions (overlapping filters),
//! shared subscriptions (each member sees only some offsets by design) and
//! retained messages (no offset) are not tracked.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::acl::TopicFilter;

/// A subscriber's subscriptions and the last offset delivered on each.
#[derive(Debug, Default)]
pub struct LossTracker {
    subscriptions: Vec<(TopicFilter, Option<u64>)>,
}

impl LossTracker {
    /// Starts tracking a subscription the router accepted.
    pub fn subscribed(&mut self, filter: &str) {
        if filter.starts_with("$share/")
            || self.subscriptions.iter().any(|(f, _)| f.as_str() == filter)
        {
            return;
        }
        if let Ok(filter) = TopicFilter::parse(filter) {
            self.subscriptions.push((filter, None));
        }
    }

    pub fn unsubscribed(&mut self, filter: &str) {
        self.subscriptions.retain(|(f, _)| f.as_str() != filter);
    }

    /// Records a delivery at `offset` of the log behind its subscription and
    /// returns how many messages before it were skipped.
    pub fn delivered(&mut self, topic: &str, offset: u64) -> u64 {
        let mut matching = self
            .subscriptions
            .iter_mut()
            .filter(|(filter, _)| filter.matches_topic(topic));
        let (Some((_, last)), None) = (matching.next(), matching.next()) else {
            return 0;
        };
        let lost = match *last {
            Some(previous) if offset > previous + 1 => offset - previous - 1,
            // The first delivery, the next one in order, or a redelivery
            // from an earlier offset after a reconnect.
            _ => 0,
        };
        *last = Some(offset);
        lost
    }
}

/// Messages lost to recycled router log segments, gateway-wide.
#[derive(Debug, Default)]
pub struct LossCounter(AtomicU64);

impl LossCounter {
    /// Adds `lost` and returns the new total.
    pub fn add(&self, lost: u64) -> u64 {
        self.0.fetch_add(lost, Ordering::Relaxed) + lost
    }

    pub fn total(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jump_in_offsets_is_counted_once() {
        let mut tracker = LossTracker::default();
        tracker.subscribed("sensors/#");
        assert_eq!(tracker.delivered("sensors/a", 10), 0);
        assert_eq!(tracker.delivered("sensors/a", 11), 0);
        assert_eq!(tracker.delivered("sensors/b", 20), 8);
        assert_eq!(tracker.delivered("sensors/b", 21), 0);
    }

    #[test]
    fn redelivery_from_an_earlier_offset_is_not_a_loss() {
        let mut tracker = LossTracker::default();
        tracker.subscribed("a");
        tracker.delivered("a", 5);
        assert_eq!(tracker.delivered("a", 3), 0);
        assert_eq!(tracker.delivered("a", 4), 0);
    }

    #[test]
    fn ambiguous_shared_and_unknown_deliveries_are_not_tracked() {
        let mut tracker = LossTracker::default();
        tracker.subscribed("a/#");
        tracker.subscribed("a/+");
        tracker.subscribed("$share/g/b");
        tracker.delivered("a/x", 1);
        assert_eq!(tracker.delivered("a/x", 50), 0, "two filters match");
        assert_eq!(tracker.delivered("b", 50), 0, "shared");
        assert_eq!(tracker.delivered("c", 50), 0, "no subscription");
        tracker.unsubscribed("a/+");
        tracker.delivered("a/x", 60);
        assert_eq!(tracker.delivered("a/x", 70), 9);
    }

    #[test]
    fn the_counter_sums() {
        let counter = LossCounter::default();
        assert_eq!(counter.add(3), 3);
        assert_eq!(counter.add(4), 7);
        assert_eq!(counter.total(), 7);
    }
}
