//! Client acknowledgements, put back into the order the router needs.
//!
//! The router numbers the QoS 1/2 messages it forwards and accepts their
//! acknowledgements strictly in that order: an ack out of order, or one it
//! never asked for, makes it drop the connection. MQTT clients may ack in
//! any order, and after a reconnect may ack packet ids from the previous
//! connection. An [`AckOrder`] remembers what was sent, takes the client's
//! acks as they come, and releases them to the router in sending order.

use std::collections::VecDeque;

#[derive(Debug, Default)]
pub struct AckOrder {
    /// Packet ids in the order they were sent, with whether the client has
    /// acknowledged each.
    outstanding: VecDeque<(u16, bool)>,
}

impl AckOrder {
    /// Records a packet sent to the client that the router expects an ack for.
    pub fn sent(&mut self, pkid: u16) {
        self.outstanding.push_back((pkid, false));
    }

    /// Records the client's ack. Returns false for a packet id nothing is
    /// waiting for, which must not reach the router.
    pub fn acked(&mut self, pkid: u16) -> bool {
        match self
            .outstanding
            .iter_mut()
            .find(|(id, done)| *id == pkid && !*done)
        {
            Some(entry) => {
                entry.1 = true;
                true
            }
            None => false,
        }
    }

    /// Takes the acks the router may now be told about, oldest first.
    pub fn release(&mut self) -> impl Iterator<Item = u16> + '_ {
        std::iter::from_fn(|| match self.outstanding.front() {
            Some(&(pkid, true)) => {
                self.outstanding.pop_front();
                Some(pkid)
            }
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn out_of_order_acks_are_released_in_order() {
        let mut order = AckOrder::default();
        for pkid in 1..=3 {
            order.sent(pkid);
        }
        assert!(order.acked(2));
        assert_eq!(order.release().collect::<Vec<_>>(), Vec::<u16>::new());
        assert!(order.acked(1));
        assert_eq!(order.release().collect::<Vec<_>>(), vec![1, 2]);
        assert!(order.acked(3));
        assert_eq!(order.release().collect::<Vec<_>>(), vec![3]);
    }

    #[test]
    fn unknown_and_repeated_acks_are_refused() {
        let mut order = AckOrder::default();
        order.sent(5);
        assert!(!order.acked(6));
        assert!(order.acked(5));
        assert!(!order.acked(5));
    }

    proptest! {
        /// Whatever order the client acks in, the router sees exactly the
        /// sent ids in sending order.
        #[test]
        fn any_ack_order_releases_sending_order(
            ids in proptest::sample::subsequence((1u16..=100).collect::<Vec<_>>(), 1..100)
                .prop_shuffle(),
            ack_order in any::<u64>(),
        ) {
            let mut order = AckOrder::default();
            for &id in &ids {
                order.sent(id);
            }
            let mut acks = ids.clone();
            // A deterministic shuffle of the acks, driven by proptest.
            let len = acks.len();
            for i in 0..len {
                let j = (ack_order.rotate_left(i as u32) as usize) % len;
                acks.swap(i, j);
            }
            let mut released = Vec::new();
            for id in acks {
                prop_assert!(order.acked(id));
                released.extend(order.release());
            }
            prop_assert_eq!(released, ids);
        }
    }
}
