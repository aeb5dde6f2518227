//! A state machine over the routing core: subscribe, unsubscribe, publish,
//! retain, disconnect and resume across a few subjects, with a small budget
//! and small quotas so that refusals happen. After every step the ledger
//! must equal what is held, no structure may take the budget past its
//! limit, and no subject may hold more than its quotas.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use proptest::prelude::*;

use super::Holdings;
use crate::broker::budget::Kind;
use crate::broker::store::MemoryStore;
use crate::broker::{Attached, Broker, Properties, Publication, Quotas, SessionKey};
use crate::config::SessionSettings;
use crate::mqtt::TopicLimits;
use crate::mqtt::{QoS, RetainHandling, SubscriptionOptions};

const SUBJECTS: [&str; 3] = ["alice", "bob", "carol"];
const CLIENTS: [&str; 3] = ["c0", "c1", "c2"];
const FILTERS: [&str; 6] = ["#", "r/#", "r/+", "r/a", "$share/g/r/#", "x/+/y"];
const TOPICS: [&str; 5] = ["r/a", "r/b", "r", "x/1/y", "r/a/b"];
const BUDGET: usize = 48 * 1024;
const RETAINED_QUOTA: usize = 6 * 1024;
const SESSIONS_PER_SUBJECT: usize = 2;

#[derive(Debug, Clone)]
enum Op {
    Attach {
        subject: usize,
        client: usize,
        clean: bool,
    },
    Detach {
        slot: usize,
        park: bool,
    },
    Subscribe {
        slot: usize,
        filter: usize,
        handling: u8,
    },
    Unsubscribe {
        slot: usize,
        filter: usize,
    },
    Publish {
        slot: usize,
        topic: usize,
        retain: bool,
        size: usize,
    },
    Take {
        slot: usize,
    },
    Replay {
        slot: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..3usize, 0..3usize, any::<bool>()).prop_map(|(subject, client, clean)| Op::Attach {
            subject,
            client,
            clean
        }),
        (0..6usize, any::<bool>()).prop_map(|(slot, park)| Op::Detach { slot, park }),
        (0..6usize, 0..FILTERS.len(), 0..3u8).prop_map(|(slot, filter, handling)| Op::Subscribe {
            slot,
            filter,
            handling
        }),
        (0..6usize, 0..FILTERS.len()).prop_map(|(slot, filter)| Op::Unsubscribe { slot, filter }),
        (
            0..6usize,
            0..TOPICS.len(),
            any::<bool>(),
            prop_oneof![Just(0usize), 1..3000usize]
        )
            .prop_map(|(slot, topic, retain, size)| Op::Publish {
                slot,
                topic,
                retain,
                size
            }),
        (0..6usize).prop_map(|slot| Op::Take { slot }),
        (0..6usize).prop_map(|slot| Op::Replay { slot }),
    ]
}

fn check(broker: &Broker) -> Result<(), TestCaseError> {
    prop_assert_eq!(broker.audit(), Holdings::booked(broker));
    let budget = broker.budget();
    let structures = budget.used() - budget.used_by(Kind::Messages);
    prop_assert!(
        structures <= budget.limit(),
        "structures hold {} of {}",
        structures,
        budget.limit()
    );
    prop_assert!(
        budget.used_by(Kind::Retained) <= budget.limit() / 2,
        "retained messages hold at most half the budget"
    );
    for subject in SUBJECTS {
        let account = budget.account(subject);
        prop_assert!(account.held(Kind::Retained) <= RETAINED_QUOTA);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn the_ledger_equals_what_is_held(ops in prop::collection::vec(op(), 1..60)) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let _entered = runtime.enter();
        let settings = SessionSettings {
            max_queued_messages: 4,
            max_subscriptions: 4,
            max_sessions_per_subject: SESSIONS_PER_SUBJECT,
            max_subscription_bytes: 12 * 1024,
            ..SessionSettings::default()
        };
        let broker = Broker::with_budget(
            &settings,
            crate::broker::Budget::new(BUDGET),
            Arc::new(MemoryStore::new()),
            Quotas::new(RETAINED_QUOTA, &TopicLimits { max_levels: 8, max_bytes: 1024 }),
        );
        // Connected sessions, by the slot the ops name.
        let mut live: Vec<Attached> = Vec::new();
        for op in ops {
            match op {
                Op::Attach { subject, client, clean } => {
                    let key = SessionKey::new(SUBJECTS[subject], CLIENTS[client]);
                    if live.iter().any(|a| a.session.key() == &key) {
                        continue;
                    }
                    // A persistent attach writes its record while connected.
                    let expiry = if clean { Duration::ZERO } else { Duration::from_secs(60) };
                    match broker.attach(key, clean, expiry) {
                        Ok(attached) => live.push(attached),
                        Err(_) => {
                            let held = live.iter().filter(|a| a.session.key().subject() == SUBJECTS[subject]).count();
                            prop_assert!(held <= SESSIONS_PER_SUBJECT);
                        }
                    }
                }
                Op::Detach { slot, park } => {
                    if slot < live.len() {
                        let attached = live.swap_remove(slot);
                        let expiry = if park { Duration::from_secs(60) } else { Duration::ZERO };
                        broker.detach(attached.session, attached.inflight, expiry, None);
                    }
                }
                Op::Subscribe { slot, filter, handling } => {
                    if let Some(attached) = live.get(slot) {
                        let handling = match handling {
                            0 => RetainHandling::OnSubscribe,
                            1 => RetainHandling::OnNewSubscription,
                            _ => RetainHandling::Never,
                        };
                        let options = SubscriptionOptions {
                            qos: QoS::AtLeastOnce,
                            no_local: false,
                            retain_as_published: false,
                            id: None,
                        };
                        let _ = broker.subscribe(&attached.session, FILTERS[filter], options, handling);
                    }
                }
                Op::Unsubscribe { slot, filter } => {
                    if let Some(attached) = live.get(slot) {
                        broker.unsubscribe(&attached.session, FILTERS[filter]);
                    }
                }
                Op::Publish { slot, topic, retain, size } => {
                    let message = broker.message(Publication {
                        topic: TOPICS[topic].into(),
                        payload: Bytes::from(vec![b'p'; size]),
                        qos: QoS::AtMostOnce,
                        retain,
                        properties: Properties::default(),
                        expiry: None,
                    });
                    let publisher = live.get(slot).map(|a| &a.session);
                    drop(broker.publish(message, publisher));
                }
                Op::Take { slot } => {
                    if let Some(attached) = live.get(slot) {
                        let mut out = Vec::new();
                        attached.session.mailbox().take(usize::MAX, usize::MAX, &mut out);
                    }
                }
                Op::Replay { slot } => {
                    if let Some(attached) = live.get(slot) {
                        broker.replay(&attached.session);
                    }
                }
            }
            check(&broker)?;
        }
        for attached in live.drain(..) {
            broker.detach(attached.session, attached.inflight, Duration::ZERO, None);
        }
        check(&broker)?;
    }
}
