//! A message's cost to the budget, its expiry and its delivered QoS.

use super::*;

fn publication(payload: &'static [u8]) -> Publication {
    Publication {
        topic: "a/b".into(),
        payload: Bytes::from_static(payload),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: Properties::default(),
        expiry: None,
    }
}

#[test]
fn properties_count_against_the_budget_and_are_released() {
    let budget = Budget::new(1 << 20);
    let mut big = publication(b"x");
    big.properties.user_properties = vec![("k".repeat(1000), "v".repeat(9000))];
    let plain = Message::new(publication(b"x"), &budget);
    let with_props = Message::new(big, &budget);
    assert!(with_props.cost() >= plain.cost() + 10_000);
    assert_eq!(budget.used(), plain.cost() + with_props.cost());
    drop(with_props);
    assert_eq!(budget.used(), plain.cost());
}

#[test]
fn remaining_expiry_rounds_up_and_expires() {
    let budget = Budget::new(1 << 20);
    let mut p = publication(b"x");
    p.expiry = Some(Duration::from_secs(10));
    let m = Message::new(p, &budget);
    let now = Instant::now();
    assert_eq!(m.remaining_expiry(now), Some(10));
    assert_eq!(
        m.remaining_expiry(now + Duration::from_millis(9_100)),
        Some(1)
    );
    assert!(!m.expired(now));
    assert!(m.expired(now + Duration::from_secs(11)));
    assert_eq!(m.remaining_expiry(now + Duration::from_secs(11)), Some(0));
    assert_eq!(
        Message::new(publication(b"y"), &budget).remaining_expiry(now),
        None
    );
}

#[test]
fn delivered_qos_is_the_lower() {
    assert_eq!(QoS::ExactlyOnce.min(QoS::AtLeastOnce), QoS::AtLeastOnce);
    assert_eq!(QoS::AtMostOnce.min(QoS::ExactlyOnce), QoS::AtMostOnce);
}
