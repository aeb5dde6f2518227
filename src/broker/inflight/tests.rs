use super::*;
use crate::broker::budget::Budget;
use crate::broker::message::{Message, Properties, Publication};
use crate::mqtt::PacketId;
use proptest::prelude::*;

fn delivery(qos: QoS) -> Delivery {
    let budget = Budget::new(1 << 20);
    let message = Message::new(
        Publication {
            topic: "t".into(),
            payload: bytes::Bytes::from_static(b"x"),
            qos,
            retain: false,
            properties: Properties::default(),
            expiry: None,
        },
        &budget,
    );
    Delivery {
        message,
        qos,
        retain: false,
        subscription_ids: Box::new([]),
    }
}

#[test]
fn qos1_and_qos2_exchanges() {
    let mut inflight = Inflight::default();
    let a = inflight.send(delivery(QoS::AtLeastOnce)).0;
    let b = inflight.send(delivery(QoS::ExactlyOnce)).0;
    assert_eq!((a.get(), b.get()), (1, 2));
    assert_eq!(inflight.puback(b), Err(UnexpectedAck(b)), "b is QoS 2");
    assert_eq!(
        inflight.pubcomp(b),
        Err(UnexpectedAck(b)),
        "not released yet"
    );
    inflight.pubrec(b, true).unwrap();
    inflight.pubrec(b, true).unwrap();
    assert!(matches!(
        inflight.resend().collect::<Vec<_>>()[..],
        [Resend::Publish(p, _), Resend::Release(r)] if p == a && r == b
    ));
    inflight.puback(a).unwrap();
    assert_eq!(inflight.puback(a), Err(UnexpectedAck(a)));
    inflight.pubcomp(b).unwrap();
    assert_eq!(inflight.outgoing(), 0);
}

#[test]
fn a_failed_pubrec_ends_the_exchange() {
    let mut inflight = Inflight::default();
    let id = inflight.send(delivery(QoS::ExactlyOnce)).0;
    inflight.pubrec(id, false).unwrap();
    assert_eq!(inflight.outgoing(), 0);
}

#[test]
fn ids_wrap_and_never_collide_with_a_waiting_one() {
    let mut inflight = Inflight::default();
    assert_eq!(inflight.free_ids(), 65535);
    let oldest = inflight.send(delivery(QoS::AtLeastOnce)).0;
    for _ in 0..65533 {
        let id = inflight.send(delivery(QoS::AtLeastOnce)).0;
        inflight.puback(id).unwrap();
    }
    // 65534 ids used; one more is free, then the ring reaches `oldest`.
    assert_eq!(inflight.free_ids(), 1);
    let last = inflight.send(delivery(QoS::AtLeastOnce)).0;
    assert_eq!(last.get(), 65535);
    assert_eq!(inflight.free_ids(), 0, "the next id would be {oldest}");
    inflight.puback(oldest).unwrap();
    assert_eq!(inflight.free_ids(), 65534);
    let first = inflight.send(delivery(QoS::AtLeastOnce)).0;
    assert_eq!(first, PacketId::FIRST);
    inflight.puback(last).unwrap();
    inflight.puback(first).unwrap();
    assert_eq!(inflight.outgoing(), 0);
}

#[test]
fn incoming_qos2_is_routed_once_per_id() {
    let mut inflight = Inflight::default();
    let seven = PacketId::new(7).unwrap();
    assert!(!inflight.has_received(seven));
    inflight.receive(seven);
    assert!(
        inflight.has_received(seven),
        "a PUBLISH with 7 now is a re-send"
    );
    assert_eq!(inflight.incoming(), 1);
    assert!(inflight.release(seven));
    assert!(!inflight.release(seven));
    assert!(
        !inflight.has_received(seven),
        "a new message may reuse the id"
    );
}

proptest! {
    /// Whatever order acks come in, each sent id is found exactly once
    /// and the window empties.
    #[test]
    fn acks_in_any_order(start in 1u16..=u16::MAX, n in 1usize..200, seed: u64) {
        let mut inflight = Inflight { next_id: PacketId::new(start), ..Inflight::default() };
        let mut ids: Vec<PacketId> = (0..n).map(|_| inflight.send(delivery(QoS::AtLeastOnce)).0).collect();
        let mut x = seed | 1;
        for i in (1..ids.len()).rev() {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            ids.swap(i, (x % (i as u64 + 1)) as usize);
        }
        for id in ids {
            prop_assert_eq!(inflight.puback(id), Ok(()));
            prop_assert_eq!(inflight.puback(id), Err(UnexpectedAck(id)));
        }
        prop_assert_eq!(inflight.outgoing(), 0);
    }
}
