//! Routing one message: matching it against the subscription index,
//! offering it to each subscriber's queue, holding the publisher back while
//! a subscriber is full ([`Pending`]), and keeping it as its topic's
//! retained message.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::task::Poll;
use std::time::Instant;

use tracing::{info, warn};

use super::budget::{Account, Kind, QuotaError};
use super::mailbox::{Delivery, Offer};
use super::message::Message;
use super::retained::{self, Retained};
use super::routing_core::Broker;
use super::session::Session;
use super::tap::{CommitError, Kept};
use crate::mqtt::QoS;

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
        let Pending {
            message,
            waiting,
            kept,
        } = self;
        // A session parked since it was found full writes the message down
        // now; the commit is awaited on the next call, its outcome told to
        // no one (the publisher's ack tells what the first offers found).
        waiting.retain(|(target, deadline)| {
            let (offer, written) = broker.offer(target, message, *deadline <= now);
            kept.extend(written);
            offer == Offer::Full
        });
    }
}

impl Broker {
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
        let mut kept: Vec<Kept> = retained.into_iter().collect();
        // A publisher never waits for its own session: it could not drain
        // it while it waits (its acks are not read), so its own overflow
        // applies at once.
        let waiting = targets
            .into_iter()
            .filter(|target| {
                let own = publisher.is_some_and(|p| Arc::ptr_eq(p, &target.session));
                let (offer, written) = self.offer(target, &message, own);
                kept.extend(written);
                offer == Offer::Full
            })
            .map(|target| (target, deadline))
            .collect();
        kept.extend(
            self.taps
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .filter_map(|tap| tap.take(&message)),
        );
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
    /// if it is still full. A QoS 1 or 2 delivery queued for a parked
    /// session is written down too: its commit, if the store makes one, is
    /// for the publisher's ack to wait on, since that ack promises the
    /// message outlives a crash.
    fn offer(
        &self,
        target: &Target,
        message: &Arc<Message>,
        overflow: bool,
    ) -> (Offer, Option<Kept>) {
        let delivery = || Delivery {
            message: Arc::clone(message),
            qos: message.qos().min(target.qos),
            retain: target.retain_as_published && message.retain(),
            subscription_ids: target.ids.as_slice().into(),
        };
        let mailbox = target.session.mailbox();
        let offer = if overflow {
            mailbox.overflow(delivery(), &self.budget)
        } else {
            mailbox.offer(delivery(), &self.budget)
        };
        let written =
            if offer.queued_while_parked() && message.qos().min(target.qos) > QoS::AtMostOnce {
                self.write_parked(&target.session, &delivery())
            } else {
                None
            };
        if let Offer::Dropped { first, .. } = offer {
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
        (offer, written)
    }

    /// Writes down a delivery just queued for a parked session, behind the
    /// record [`Broker::detach`] saved. Under the session's lock, which
    /// `detach` holds from parking the mailbox until its record is sent:
    /// this write reaches the store after the record, never before.
    fn write_parked(&self, session: &Session, delivery: &Delivery) -> Option<Kept> {
        let mut state = session.state();
        // Resumed since (its connection holds the message now) or ended.
        if state.attached || state.ended {
            return None;
        }
        let position = state.stored;
        state.stored += 1;
        self.store.queue_parked(session.key(), position, delivery)
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
