//! A session's queue of messages waiting to be sent, and the two wake-ups
//! around it.
//!
//! Publishers put [`Delivery`]s in ([`Mailbox::offer`]); the connection
//! serving the session takes them out in batches ([`Mailbox::take`]). The
//! queue is bounded in messages and in bytes. What happens at the bound is
//! the heart of back-pressure:
//!
//! - While the session is connected, a full queue answers [`Offer::Full`]:
//!   the publisher stops reading its socket and waits for room
//!   ([`Mailbox::room`]), so TCP paces the device and nothing is lost.
//! - A publisher waits for one subscriber only up to its hold-back bound.
//!   Past it, the publisher calls [`Mailbox::overflow`], which starts an
//!   *overflow episode*: the policy applies to this message and, until the
//!   subscriber has drained half its queue, to every later one at once,
//!   without making anyone wait again.
//! - While the session is offline nobody waits: a full queue overflows
//!   straight away.
//!
//! Overflow makes room by dropping the oldest QoS 0 message; with none to
//! drop, the new message is dropped. Under the `disconnect` policy a QoS 1/2
//! overflow also evicts the connection ([`Taken::Evicted`]). Every drop is
//! counted; the first of an episode and its end are reported so they can be
//! logged once, not per message.
//!
//! The connection is woken ([`Mailbox::ready`]) when the queue goes from
//! empty to non-empty, not per message: a busy subscriber takes a whole
//! batch per wake-up. Publishers are woken when the queue is down to three
//! quarters of its bound, so a woken crowd finds room for all of them.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::Notify;

use super::budget::Budget;
use super::message::Message;
use crate::config::SlowSubscriber;
use crate::mqtt::QoS;

/// One message on its way to one session, as that session gets it.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub message: Arc<Message>,
    /// min(published QoS, the subscription's QoS).
    pub qos: QoS,
    /// The RETAIN flag on the wire: set for retained messages sent on
    /// subscribe, and for live ones only under "retain as published".
    pub retain: bool,
    /// Identifiers of the subscriptions it matched (MQTT 5).
    pub subscription_ids: Box<[u32]>,
}

/// How much one session may have waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueLimits {
    pub max_messages: usize,
    pub max_bytes: usize,
    pub policy: SlowSubscriber,
}

/// What became of an offered delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// Queued. `parked`: no connection held the session then, so the
    /// delivery outlives a crash only if the store writes it down.
    Queued { parked: bool },
    /// The session is connected and its queue is full: wait for room, up to
    /// the hold-back bound.
    Full,
    /// The overflow policy dropped a message (the new one or an older QoS 0
    /// one). `first` marks the first drop of an overflow episode; `queued`
    /// says the new one was queued all the same (older ones made room),
    /// `parked` as for `Queued`.
    Dropped {
        first: bool,
        queued: bool,
        parked: bool,
    },
    /// The session has ended; nothing is delivered to it any more.
    Closed,
}

impl Offer {
    /// The offered delivery went into the queue of a session no connection
    /// held.
    pub fn queued_while_parked(self) -> bool {
        matches!(
            self,
            Offer::Queued { parked: true }
                | Offer::Dropped {
                    queued: true,
                    parked: true,
                    ..
                }
        )
    }
}

/// What [`Mailbox::take`] found besides the deliveries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Taken {
    /// Business as usual.
    Ok,
    /// An overflow episode ended; this many messages were dropped in it.
    Recovered { dropped: u64 },
    /// The slow-subscriber policy wants this connection closed.
    Evicted,
}

#[derive(Debug)]
pub struct Mailbox {
    limits: QueueLimits,
    state: Mutex<State>,
    /// Wakes the connection serving the session.
    ready: Notify,
    /// Wakes publishers waiting for room.
    room: Notify,
}

#[derive(Debug, Default)]
struct State {
    queue: VecDeque<Delivery>,
    bytes: usize,
    /// QoS 0 deliveries in the queue: overflow drops those first.
    qos0: usize,
    online: bool,
    closed: bool,
    /// Messages dropped in the current overflow episode, if one is going on.
    overflow: Option<u64>,
    evicted: bool,
    /// Some publisher waits for room.
    waiting: bool,
}

impl State {
    fn push(&mut self, delivery: Delivery) {
        self.bytes += delivery.message.cost();
        self.qos0 += usize::from(delivery.qos == QoS::AtMostOnce);
        self.queue.push_back(delivery);
    }

    fn remove(&mut self, index: usize) -> Option<Delivery> {
        let delivery = self.queue.remove(index)?;
        self.bytes -= delivery.message.cost();
        self.qos0 -= usize::from(delivery.qos == QoS::AtMostOnce);
        Some(delivery)
    }

    /// Whether `cost` more bytes fit. An empty queue always takes one
    /// message, however large: otherwise it could never be delivered.
    fn fits(&self, limits: &QueueLimits, cost: usize, budget: &Budget) -> bool {
        self.queue.is_empty()
            || (self.queue.len() < limits.max_messages
                && self.bytes + cost <= limits.max_bytes
                && !budget.exhausted())
    }

    /// Below three quarters of the bound: worth waking publishers for.
    fn has_room(&self, limits: &QueueLimits) -> bool {
        self.queue.len() < limits.max_messages - limits.max_messages / 4
            && self.bytes < limits.max_bytes - limits.max_bytes / 4
    }

    /// Down to half the bound: an overflow episode is over.
    fn recovered(&self, limits: &QueueLimits) -> bool {
        self.queue.len() <= limits.max_messages / 2 && self.bytes <= limits.max_bytes / 2
    }
}

impl Mailbox {
    pub fn new(limits: QueueLimits) -> Mailbox {
        Mailbox {
            limits,
            state: Mutex::default(),
            ready: Notify::new(),
            room: Notify::new(),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Nothing under this lock can panic halfway through an update.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `delivery` if it fits; see the module docs for when it does
    /// not.
    pub fn offer(&self, delivery: Delivery, budget: &Budget) -> Offer {
        let mut state = self.state();
        if state.closed {
            return Offer::Closed;
        }
        let full = !state.fits(&self.limits, delivery.message.cost(), budget);
        if full && state.online && state.overflow.is_none() {
            state.waiting = true;
            return Offer::Full;
        }
        self.overflow_locked(state, delivery, budget)
    }

    /// Queues `delivery` if it fits, and applies the overflow policy
    /// (starting an overflow episode) if it does not: for a delivery a
    /// publisher has waited for long enough, or one that must not wait.
    pub fn overflow(&self, delivery: Delivery, budget: &Budget) -> Offer {
        let state = self.state();
        if state.closed {
            return Offer::Closed;
        }
        self.overflow_locked(state, delivery, budget)
    }

    fn overflow_locked(
        &self,
        mut state: MutexGuard<'_, State>,
        delivery: Delivery,
        budget: &Budget,
    ) -> Offer {
        let cost = delivery.message.cost();
        let was_empty = state.queue.is_empty();
        let parked = !state.online;
        if state.fits(&self.limits, cost, budget) {
            state.push(delivery);
            drop(state);
            if was_empty {
                self.ready.notify_one();
            }
            return Offer::Queued { parked };
        }
        let first = state.overflow.is_none();
        let mut dropped = 0;
        let mut wake = false;
        if delivery.qos != QoS::AtMostOnce
            && state.online
            && self.limits.policy == SlowSubscriber::Disconnect
            && !state.evicted
        {
            state.evicted = true;
            wake = true;
        }
        while !state.fits(&self.limits, cost, budget) && state.qos0 > 0 {
            let oldest = state.queue.iter().position(|d| d.qos == QoS::AtMostOnce);
            if oldest.and_then(|i| state.remove(i)).is_none() {
                break;
            }
            dropped += 1;
        }
        let queued = state.fits(&self.limits, cost, budget);
        if queued {
            state.push(delivery);
        } else {
            dropped += 1;
        }
        *state.overflow.get_or_insert(0) += dropped;
        drop(state);
        if wake {
            self.ready.notify_one();
        }
        if dropped == 0 {
            Offer::Queued { parked }
        } else {
            Offer::Dropped {
                first,
                queued,
                parked,
            }
        }
    }

    /// Queues a delivery regardless of the bound: for retained messages
    /// sent on subscribe, which are in memory already and must not be lost
    /// to the subscriber's own backlog.
    pub fn force(&self, delivery: Delivery) {
        let mut state = self.state();
        if state.closed {
            return;
        }
        let was_empty = state.queue.is_empty();
        state.push(delivery);
        drop(state);
        if was_empty {
            self.ready.notify_one();
        }
    }

    /// Queues `delivery` only if it fits, never overflowing: for retained
    /// messages replayed on subscribe, which wait in the store until the
    /// session has room. Whether it was queued.
    pub fn push_if_room(&self, delivery: Delivery, budget: &Budget) -> bool {
        let mut state = self.state();
        if state.closed || !state.fits(&self.limits, delivery.message.cost(), budget) {
            return false;
        }
        let was_empty = state.queue.is_empty();
        state.push(delivery);
        drop(state);
        if was_empty {
            self.ready.notify_one();
        }
        true
    }

    /// Wakes the connection serving the session, which has work besides
    /// the queue (retained messages to replay).
    pub fn wake(&self) {
        self.ready.notify_one();
    }

    /// Copies of everything queued, oldest first, left in place.
    pub fn peek_all(&self) -> Vec<Delivery> {
        self.state().queue.iter().cloned().collect()
    }

    /// Moves up to `max` deliveries into `out`, oldest first, stopping at a
    /// QoS 1/2 delivery once `inflight_room` of them have been taken.
    pub fn take(&self, max: usize, mut inflight_room: usize, out: &mut Vec<Delivery>) -> Taken {
        let mut state = self.state();
        if state.evicted {
            return Taken::Evicted;
        }
        let mut taken = 0;
        while taken < max {
            let Some(front) = state.queue.front() else {
                break;
            };
            if front.qos != QoS::AtMostOnce {
                if inflight_room == 0 {
                    break;
                }
                inflight_room -= 1;
            }
            if let Some(delivery) = state.remove(0) {
                out.push(delivery);
            }
            taken += 1;
        }
        let wake = state.waiting && state.has_room(&self.limits);
        if wake {
            state.waiting = false;
        }
        let recovered = match state.overflow {
            Some(dropped) if state.recovered(&self.limits) => {
                state.overflow = None;
                Taken::Recovered { dropped }
            }
            _ => Taken::Ok,
        };
        drop(state);
        if wake {
            self.room.notify_waiters();
        }
        recovered
    }

    /// Resolves when there may be deliveries to take (or an eviction).
    pub async fn ready(&self) {
        self.ready.notified().await;
    }

    /// Resolves when `cost` more bytes would fit, or when waiting is
    /// pointless (the session went offline, ended or overflows). The caller
    /// offers again either way.
    pub async fn room(&self, cost: usize, budget: &Budget) {
        let notified = self.room.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        {
            let mut state = self.state();
            if state.closed
                || !state.online
                || state.overflow.is_some()
                || state.fits(&self.limits, cost, budget)
            {
                return;
            }
            state.waiting = true;
        }
        notified.await;
    }

    /// Whether an offer would be queued right now (for choosing a shared
    /// subscription member).
    pub fn accepts_now(&self, budget: &Budget) -> bool {
        let state = self.state();
        state.online && !state.closed && state.overflow.is_none() && {
            state.queue.len() < self.limits.max_messages
                && state.bytes < self.limits.max_bytes
                && !budget.exhausted()
        }
    }

    pub fn is_online(&self) -> bool {
        self.state().online
    }

    /// No connection serves the session any more: returns what it queues,
    /// read under the same lock, so that every delivery queued from now on
    /// is answered `parked` and none of those is in what this returns.
    pub fn park(&self) -> Vec<Delivery> {
        let mut state = self.state();
        state.online = false;
        state.evicted = false;
        let queued = state.queue.iter().cloned().collect();
        drop(state);
        self.room.notify_waiters();
        queued
    }

    /// A connection now serves the session (or no longer does). Publishers
    /// waiting for an offline session stop waiting.
    pub fn set_online(&self, online: bool) {
        let mut state = self.state();
        state.online = online;
        state.evicted = false;
        drop(state);
        self.room.notify_waiters();
    }

    /// The session has ended: drops what is queued and refuses the rest.
    /// Returns how many deliveries were dropped.
    pub fn close(&self) -> usize {
        let mut state = self.state();
        state.closed = true;
        let dropped = state.queue.len();
        state.queue = VecDeque::new();
        state.bytes = 0;
        state.qos0 = 0;
        drop(state);
        self.room.notify_waiters();
        self.ready.notify_one();
        dropped
    }

    /// Keeps only the deliveries `keep` accepts (a resumed session whose
    /// new token grants less).
    pub fn retain(&self, mut keep: impl FnMut(&Delivery) -> bool) {
        let mut state = self.state();
        let mut index = 0;
        while index < state.queue.len() {
            if keep(&state.queue[index]) {
                index += 1;
            } else {
                state.remove(index);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.state().queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests;
