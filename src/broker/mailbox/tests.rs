//! One subscriber's queue: its bounds, its overflow policies, the
//! in-flight window and the publishers it wakes.

use super::*;
use crate::broker::message::{Properties, Publication};
use bytes::Bytes;

fn limits(max_messages: usize, policy: SlowSubscriber) -> QueueLimits {
    QueueLimits {
        max_messages,
        max_bytes: 1 << 20,
        policy,
    }
}

fn delivery(budget: &Arc<Budget>, payload: &str, qos: QoS) -> Delivery {
    let message = Message::new(
        Publication {
            topic: "t".into(),
            payload: Bytes::copy_from_slice(payload.as_bytes()),
            qos,
            retain: false,
            properties: Properties::default(),
            expiry: None,
        },
        budget,
    );
    Delivery {
        message,
        qos,
        retain: false,
        subscription_ids: Box::new([]),
    }
}

fn payloads(mailbox: &Mailbox) -> Vec<String> {
    let mut out = Vec::new();
    mailbox.take(usize::MAX, usize::MAX, &mut out);
    out.iter()
        .map(|d| String::from_utf8_lossy(d.message.payload()).into_owned())
        .collect()
}

#[test]
fn a_connected_full_queue_makes_publishers_wait() {
    let budget = Budget::new(1 << 30);
    let mailbox = Mailbox::new(limits(2, SlowSubscriber::Disconnect));
    mailbox.set_online(true);
    for p in ["a", "b"] {
        assert_eq!(
            mailbox.offer(delivery(&budget, p, QoS::AtLeastOnce), &budget),
            Offer::Queued { parked: false }
        );
    }
    assert_eq!(
        mailbox.offer(delivery(&budget, "c", QoS::AtLeastOnce), &budget),
        Offer::Full
    );
    assert_eq!(payloads(&mailbox), ["a", "b"]);
}

#[test]
fn overflow_drops_the_oldest_qos0_then_the_new_message() {
    let budget = Budget::new(1 << 30);
    let mailbox = Mailbox::new(limits(3, SlowSubscriber::Drop));
    // Offline: no one waits, overflow at once.
    mailbox.offer(delivery(&budget, "q1", QoS::AtLeastOnce), &budget);
    mailbox.offer(delivery(&budget, "old0", QoS::AtMostOnce), &budget);
    mailbox.offer(delivery(&budget, "q1b", QoS::AtLeastOnce), &budget);
    assert_eq!(
        mailbox.offer(delivery(&budget, "new0", QoS::AtMostOnce), &budget),
        Offer::Dropped {
            first: true,
            queued: true,
            parked: true
        }
    );
    assert_eq!(
        mailbox.offer(delivery(&budget, "late1", QoS::AtLeastOnce), &budget),
        Offer::Dropped {
            first: false,
            queued: true,
            parked: true
        },
        "a QoS 1 message displaces the queued QoS 0 one"
    );
    assert_eq!(
        mailbox.offer(delivery(&budget, "later1", QoS::AtLeastOnce), &budget),
        Offer::Dropped {
            first: false,
            queued: false,
            parked: true
        },
        "with no QoS 0 message left, the new one is dropped"
    );
    let mut out = Vec::new();
    assert_eq!(
        mailbox.take(10, 10, &mut out),
        Taken::Recovered { dropped: 3 }
    );
    let got: Vec<_> = out.iter().map(|d| d.message.payload().clone()).collect();
    assert_eq!(got, ["q1", "q1b", "late1"]);
}

#[test]
fn disconnect_policy_evicts_on_qos1_overflow_only() {
    let budget = Budget::new(1 << 30);
    let mailbox = Mailbox::new(limits(1, SlowSubscriber::Disconnect));
    mailbox.set_online(true);
    mailbox.offer(delivery(&budget, "a", QoS::AtMostOnce), &budget);
    assert_eq!(
        mailbox.overflow(delivery(&budget, "b", QoS::AtMostOnce), &budget),
        Offer::Dropped {
            first: true,
            queued: true,
            parked: false
        }
    );
    let mut out = Vec::new();
    assert_eq!(mailbox.take(0, 0, &mut out), Taken::Ok);
    mailbox.overflow(delivery(&budget, "c", QoS::AtLeastOnce), &budget);
    assert_eq!(mailbox.take(10, 10, &mut out), Taken::Evicted);
}

#[test]
fn take_stops_at_the_inflight_window_and_wakes_publishers() {
    let budget = Budget::new(1 << 30);
    let mailbox = Mailbox::new(limits(4, SlowSubscriber::Disconnect));
    mailbox.set_online(true);
    for (p, qos) in [
        ("a", QoS::AtLeastOnce),
        ("b", QoS::AtMostOnce),
        ("c", QoS::AtLeastOnce),
        ("d", QoS::AtMostOnce),
    ] {
        mailbox.offer(delivery(&budget, p, qos), &budget);
    }
    assert_eq!(
        mailbox.offer(delivery(&budget, "e", QoS::AtMostOnce), &budget),
        Offer::Full
    );
    let mut out = Vec::new();
    mailbox.take(10, 1, &mut out);
    assert_eq!(out.len(), 2, "a (the one QoS 1 slot) and b, not c");
    assert_eq!(mailbox.len(), 2);
    // Room again: a waiting publisher would now be let through.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async {
        tokio::time::timeout(std::time::Duration::from_secs(1), mailbox.room(1, &budget))
            .await
            .unwrap();
    });
}

#[test]
fn byte_bound_and_budget_count() {
    let budget = Budget::new(1 << 30);
    let mailbox = Mailbox::new(QueueLimits {
        max_messages: 100,
        max_bytes: 300,
        policy: SlowSubscriber::Drop,
    });
    mailbox.set_online(true);
    let big = "x".repeat(100);
    assert_eq!(
        mailbox.offer(delivery(&budget, &big, QoS::AtLeastOnce), &budget),
        Offer::Queued { parked: false }
    );
    assert_eq!(
        mailbox.offer(delivery(&budget, &big, QoS::AtLeastOnce), &budget),
        Offer::Full
    );

    let tight = Budget::new(1);
    let other = Mailbox::new(limits(100, SlowSubscriber::Drop));
    other.set_online(true);
    assert_eq!(
        other.offer(delivery(&tight, "a", QoS::AtLeastOnce), &tight),
        Offer::Queued { parked: false }
    );
    assert_eq!(
        other.offer(delivery(&tight, "b", QoS::AtLeastOnce), &tight),
        Offer::Full,
        "past the global budget only an empty queue takes a message"
    );
}

#[test]
fn a_closed_mailbox_refuses_and_forgets() {
    let budget = Budget::new(1 << 30);
    let mailbox = Mailbox::new(limits(4, SlowSubscriber::Drop));
    mailbox.offer(delivery(&budget, "a", QoS::AtLeastOnce), &budget);
    assert_eq!(mailbox.close(), 1);
    assert_eq!(
        mailbox.offer(delivery(&budget, "b", QoS::AtLeastOnce), &budget),
        Offer::Closed
    );
    assert!(mailbox.is_empty());
    assert_eq!(budget.used(), 0);
}

#[test]
fn park_splits_what_was_queued_from_what_comes_after() {
    let budget = Budget::new(1 << 30);
    let mailbox = Mailbox::new(limits(10, SlowSubscriber::Drop));
    mailbox.set_online(true);
    assert_eq!(
        mailbox.offer(delivery(&budget, "before", QoS::AtLeastOnce), &budget),
        Offer::Queued { parked: false }
    );
    let parked: Vec<_> = mailbox
        .park()
        .iter()
        .map(|d| d.message.payload().clone())
        .collect();
    assert_eq!(parked, ["before"]);
    let after = mailbox.offer(delivery(&budget, "after", QoS::AtLeastOnce), &budget);
    assert_eq!(after, Offer::Queued { parked: true });
    assert!(after.queued_while_parked());
    assert_eq!(mailbox.len(), 2, "parking keeps the queue");
}
