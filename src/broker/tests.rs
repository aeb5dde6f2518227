//! The routing core's parts working together: routing and merging
//! deliveries, back-pressure and the overflow policies, parked and restored
//! sessions, retained messages.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;

use super::*;
use crate::broker::store::{MemoryStore, SessionExpiry, SessionRecord, Store};
use crate::config::SessionSettings;
use crate::mqtt::{QoS, RetainHandling, SubscriptionOptions};

fn settings() -> SessionSettings {
    SessionSettings {
        max_queued_messages: 2,
        slow_subscriber_timeout: Duration::from_millis(50),
        ..SessionSettings::default()
    }
}

fn broker_with(store: Arc<MemoryStore>) -> Arc<Broker> {
    Broker::new(&settings(), 1 << 30, store)
}

fn options(qos: QoS, id: Option<u32>) -> SubscriptionOptions {
    SubscriptionOptions {
        qos,
        no_local: false,
        retain_as_published: false,
        id,
    }
}

fn message(broker: &Broker, topic: &str, qos: QoS, retain: bool) -> Arc<Message> {
    broker.message(Publication {
        topic: topic.into(),
        payload: Bytes::from_static(b"m"),
        qos,
        retain,
        properties: Properties::default(),
        expiry: None,
    })
}

/// A new session of subject `s`, attached.
fn connected(broker: &Arc<Broker>, client_id: &str) -> Arc<Session> {
    broker
        .attach(SessionKey::new("s", client_id), true, Duration::ZERO)
        .unwrap()
        .session
}

/// Subscribes `session` to `filter`, sending it no retained message.
fn subscribe(broker: &Broker, session: &Arc<Session>, filter: &str, options: SubscriptionOptions) {
    broker
        .subscribe(session, filter, options, RetainHandling::Never)
        .unwrap();
}

/// A new session subscribed to `t` at QoS 1.
fn subscriber(broker: &Arc<Broker>, client_id: &str) -> Arc<Session> {
    let session = connected(broker, client_id);
    subscribe(broker, &session, "t", options(QoS::AtLeastOnce, None));
    session
}

/// Publishes a QoS 1 message on `topic`: whether every subscriber took
/// it at once.
fn taken_at_once(broker: &Broker, topic: &str) -> bool {
    broker
        .publish(message(broker, topic, QoS::AtLeastOnce, false), None)
        .is_done()
}

/// What the session's connection would take, retained replays included.
fn replayed(broker: &Broker, session: &Arc<Session>) -> Vec<Delivery> {
    while broker.replay(session) {}
    taken(session)
}

fn taken(session: &Session) -> Vec<Delivery> {
    let mut out = Vec::new();
    session.mailbox().take(usize::MAX, usize::MAX, &mut out);
    out
}

#[tokio::test]
async fn overlapping_subscriptions_make_one_delivery_at_the_highest_qos() {
    let broker = broker_with(Arc::new(MemoryStore::new()));
    let a = connected(&broker, "a");
    subscribe(&broker, &a, "t/#", options(QoS::AtMostOnce, Some(1)));
    subscribe(&broker, &a, "t/+", options(QoS::ExactlyOnce, Some(2)));
    subscribe(&broker, &a, "$share/g/t/x", options(QoS::AtLeastOnce, None));
    assert!(taken_at_once(&broker, "t/x"));
    let got = taken(&a);
    assert_eq!(
        got.len(),
        2,
        "one merged delivery, one for the shared subscription"
    );
    let merged = got.iter().find(|d| d.subscription_ids.len() == 2).unwrap();
    assert_eq!(
        merged.qos,
        QoS::AtLeastOnce,
        "min(publish 1, best subscription 2)"
    );
    let mut ids = merged.subscription_ids.to_vec();
    ids.sort();
    assert_eq!(ids, [1, 2]);
}

#[tokio::test]
async fn no_local_skips_the_publishers_own_session() {
    let broker = broker_with(Arc::new(MemoryStore::new()));
    let a = connected(&broker, "a");
    let no_local = SubscriptionOptions {
        no_local: true,
        ..options(QoS::AtMostOnce, None)
    };
    subscribe(&broker, &a, "t", no_local);
    let _ = broker.publish(message(&broker, "t", QoS::AtMostOnce, false), Some(&a));
    assert!(taken(&a).is_empty());
    let _ = broker.publish(message(&broker, "t", QoS::AtMostOnce, false), None);
    assert_eq!(taken(&a).len(), 1);
}

#[tokio::test]
async fn a_full_subscriber_holds_the_publication_until_it_has_room() {
    let broker = broker_with(Arc::new(MemoryStore::new()));
    let sub = subscriber(&broker, "sub");
    for _ in 0..2 {
        assert!(taken_at_once(&broker, "t"));
    }
    let mut pending = broker.publish(message(&broker, "t", QoS::AtLeastOnce, false), None);
    assert!(!pending.is_done(), "the queue holds 2");
    let mut out = Vec::new();
    sub.mailbox().take(2, 2, &mut out);
    pending.advance(&broker).await;
    assert!(pending.is_done());
    assert_eq!(taken(&sub).len(), 1);
    assert_eq!(broker.stats().snapshot().dropped, 0);
}

/// A publication waiting for a stalled subscriber and a briefly full
/// one: the latter takes it as soon as it drains, so the policy meets
/// only the stalled one, even if the well-behaved one is full again
/// when the bound passes.
#[tokio::test]
async fn only_a_subscriber_full_all_along_meets_the_policy() {
    let broker = broker_with(Arc::new(MemoryStore::new()));
    let stalled = subscriber(&broker, "stalled");
    let reader = subscriber(&broker, "reader");
    for _ in 0..2 {
        let _ = broker.publish(message(&broker, "t", QoS::AtLeastOnce, false), None);
    }
    let mut pending = broker.publish(message(&broker, "t", QoS::AtLeastOnce, false), None);
    // Both full. The reader drains; the publication reaches it at once.
    let mut out = Vec::new();
    reader.mailbox().take(2, 2, &mut out);
    tokio::time::timeout(Duration::from_millis(20), pending.advance(&broker))
        .await
        .expect("advanced on the reader's room, well before the bound");
    assert_eq!(taken(&reader).len(), 1);
    // The reader fills up again just before the bound passes.
    for _ in 0..2 {
        reader.mailbox().force(taken_delivery(&broker, "refill"));
    }
    while !pending.is_done() {
        pending.advance(&broker).await;
    }
    assert_eq!(broker.stats().snapshot().dropped, 1, "the stalled one only");
    assert_eq!(
        stalled.mailbox().take(10, 10, &mut out),
        Taken::Evicted,
        "the stalled subscriber meets its policy"
    );
    assert_ne!(
        reader.mailbox().take(10, 10, &mut out),
        Taken::Evicted,
        "the reader does not"
    );
}

fn taken_delivery(broker: &Broker, topic: &str) -> Delivery {
    Delivery {
        message: message(broker, topic, QoS::AtLeastOnce, false),
        qos: QoS::AtLeastOnce,
        retain: false,
        subscription_ids: Default::default(),
    }
}

#[tokio::test]
async fn past_the_hold_back_bound_the_policy_applies() {
    let broker = broker_with(Arc::new(MemoryStore::new()));
    let sub = subscriber(&broker, "stalled");
    for _ in 0..2 {
        let _ = broker.publish(message(&broker, "t", QoS::AtLeastOnce, false), None);
    }
    let mut pending = broker.publish(message(&broker, "t", QoS::AtLeastOnce, false), None);
    while !pending.is_done() {
        pending.advance(&broker).await;
    }
    assert_eq!(broker.stats().snapshot().dropped, 1);
    let mut out = Vec::new();
    assert_eq!(
        sub.mailbox().take(10, 10, &mut out),
        Taken::Evicted,
        "the default policy disconnects a stalled QoS 1 subscriber"
    );
}

#[tokio::test]
async fn a_parked_session_keeps_receiving_and_is_resumed() {
    let store = Arc::new(MemoryStore::new());
    let broker = broker_with(Arc::clone(&store));
    let key = SessionKey::new("s", "p");
    let attached = broker.attach(key.clone(), true, Duration::ZERO).unwrap();
    subscribe(
        &broker,
        &attached.session,
        "t",
        options(QoS::AtLeastOnce, None),
    );
    broker.detach(
        attached.session,
        attached.inflight,
        Duration::from_secs(60),
        None,
    );
    assert_eq!(store.sessions().len(), 1, "parked in the store");
    assert!(taken_at_once(&broker, "t"));
    let resumed = broker.attach(key, false, Duration::ZERO).unwrap();
    assert!(resumed.present);
    assert!(store.sessions().is_empty(), "live again");
    assert_eq!(taken(&resumed.session).len(), 1, "queued while away");
}

/// A session its client asks to keep is in the store while connected:
/// written at attach and with its subscriptions once they are kept, with
/// its interval to count from a restart; parked, at its time; resumed
/// with expiry, connected again; ended, gone.
#[tokio::test]
async fn a_kept_session_is_in_the_store_while_connected() {
    let store = Arc::new(MemoryStore::new());
    let broker = broker_with(Arc::clone(&store));
    let key = SessionKey::new("s", "kept");
    let expiry = Duration::from_secs(90);
    let stored = || {
        let sessions = store.sessions();
        assert!(sessions.len() <= 1, "{sessions:?}");
        sessions.into_iter().next().map(|(k, record)| {
            assert_eq!(k, key);
            let filters: Vec<String> = record.subscriptions.into_iter().map(|(f, _)| f).collect();
            (filters, record.expiry)
        })
    };
    let attached = broker.attach(key.clone(), true, expiry).unwrap();
    assert_eq!(
        stored(),
        Some((vec![], SessionExpiry::AfterRestart(expiry)))
    );
    subscribe(
        &broker,
        &attached.session,
        "t/+",
        options(QoS::AtLeastOnce, None),
    );
    assert!(
        broker.keep_subscriptions(&attached.session).is_none(),
        "memory: nothing to wait on"
    );
    assert_eq!(
        stored(),
        Some((vec!["t/+".into()], SessionExpiry::AfterRestart(expiry)))
    );
    broker.detach(attached.session, attached.inflight, expiry, None);
    assert!(
        matches!(stored(), Some((_, SessionExpiry::At(_)))),
        "parked at its time"
    );
    let resumed = broker.attach(key.clone(), false, expiry).unwrap();
    assert!(resumed.present);
    assert_eq!(
        stored(),
        Some((vec!["t/+".into()], SessionExpiry::AfterRestart(expiry)))
    );
    broker.detach(resumed.session, resumed.inflight, Duration::ZERO, None);
    assert_eq!(stored(), None, "ended");
    // Asked for no expiry: nothing written.
    let clean = broker.attach(key.clone(), true, Duration::ZERO).unwrap();
    subscribe(
        &broker,
        &clean.session,
        "t/+",
        options(QoS::AtLeastOnce, None),
    );
    assert!(broker.keep_subscriptions(&clean.session).is_none());
    assert_eq!(stored(), None);
}

#[tokio::test]
async fn a_parked_session_expires() {
    let broker = broker_with(Arc::new(MemoryStore::new()));
    let key = SessionKey::new("s", "e");
    let attached = broker.attach(key.clone(), true, Duration::ZERO).unwrap();
    broker.detach(
        attached.session,
        attached.inflight,
        Duration::from_millis(20),
        None,
    );
    assert_eq!(broker.session_count(), 1);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(broker.session_count(), 0);
    assert!(!broker.attach(key, false, Duration::ZERO).unwrap().present);
}

#[tokio::test]
async fn parked_sessions_in_the_store_are_restored_at_start() {
    let store = Arc::new(MemoryStore::new());
    let key = SessionKey::new("s", "restored");
    store.save_session(
        &key,
        SessionRecord {
            subscriptions: vec![("t/+".into(), options(QoS::AtLeastOnce, Some(7)))],
            expiry: SessionExpiry::At(SystemTime::now() + Duration::from_secs(60)),
            queued: Vec::new(),
        },
    );
    store.save_session(
        &SessionKey::new("s", "stale"),
        SessionRecord {
            subscriptions: Vec::new(),
            expiry: SessionExpiry::At(SystemTime::now() - Duration::from_secs(1)),
            queued: Vec::new(),
        },
    );
    let broker = broker_with(Arc::clone(&store));
    assert_eq!(broker.session_count(), 1, "the expired record is dropped");
    assert!(taken_at_once(&broker, "t/x"));
    let resumed = broker.attach(key, false, Duration::ZERO).unwrap();
    assert!(resumed.present);
    let got = taken(&resumed.session);
    assert_eq!(got.len(), 1);
    assert_eq!(&got[0].subscription_ids[..], [7]);
}

#[tokio::test]
async fn retained_messages_follow_retain_handling_and_are_not_sent_to_shared_subscriptions() {
    let broker = broker_with(Arc::new(MemoryStore::new()));
    let _ = broker.publish(message(&broker, "r/1", QoS::ExactlyOnce, true), None);
    let a = connected(&broker, "r");
    let sub = |handling| {
        broker
            .subscribe(&a, "r/#", options(QoS::AtLeastOnce, None), handling)
            .unwrap()
    };
    assert!(!sub(RetainHandling::OnNewSubscription));
    let got = replayed(&broker, &a);
    assert_eq!(got.len(), 1);
    assert!(got[0].retain);
    assert_eq!(got[0].qos, QoS::AtLeastOnce);
    assert!(sub(RetainHandling::OnNewSubscription), "exists now");
    assert!(replayed(&broker, &a).is_empty());
    sub(RetainHandling::OnSubscribe);
    assert_eq!(replayed(&broker, &a).len(), 1);
    broker
        .subscribe(
            &a,
            "$share/g/r/#",
            options(QoS::AtLeastOnce, None),
            RetainHandling::OnSubscribe,
        )
        .unwrap();
    assert!(replayed(&broker, &a).is_empty());
    // Only a retained empty payload deletes it.
    let mut empty = Publication {
        topic: "r/1".into(),
        payload: Bytes::new(),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: Properties::default(),
        expiry: None,
    };
    let _ = broker.publish(broker.message(empty.clone()), None);
    replayed(&broker, &a);
    sub(RetainHandling::OnSubscribe);
    assert_eq!(replayed(&broker, &a).len(), 1);
    empty.retain = true;
    let _ = broker.publish(broker.message(empty), None);
    replayed(&broker, &a);
    sub(RetainHandling::OnSubscribe);
    assert!(replayed(&broker, &a).is_empty());
}
