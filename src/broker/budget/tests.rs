use super::*;

#[test]
fn charges_are_given_back() {
    let budget = Budget::new(100);
    let a = budget.charge(60);
    assert!(!budget.exhausted());
    let b = budget.charge(40);
    assert!(budget.exhausted());
    drop(a);
    assert_eq!(budget.used(), 40);
    assert!(!budget.exhausted());
    drop(b);
    assert_eq!(budget.used(), 0);
}

#[test]
fn quotas_refuse_per_subject_and_the_budget_refuses_for_all() {
    let budget = Budget::new(1000);
    let alice = budget.account("alice");
    let bob = budget.account("bob");
    assert!(
        Arc::ptr_eq(&alice, &budget.account("alice")),
        "one per subject"
    );
    let a = budget
        .try_charge(&alice, Kind::Retained, 100, 300, 400)
        .unwrap();
    assert_eq!(alice.held(Kind::Retained), 300);
    assert_eq!(budget.used_by(Kind::Retained), 100);
    assert_eq!(
        budget
            .try_charge(&alice, Kind::Retained, 10, 101, 400)
            .unwrap_err(),
        QuotaError::Subject { quota: 400 }
    );
    // Bob's quota is his own.
    let b = budget
        .try_charge(&bob, Kind::Retained, 100, 300, 400)
        .unwrap();
    let messages = budget.charge(800);
    assert_eq!(
        budget
            .try_charge(&bob, Kind::Subscriptions, 1, 1, usize::MAX)
            .unwrap_err(),
        QuotaError::Budget
    );
    drop((a, b, messages));
    assert_eq!(budget.used(), 0);
    assert_eq!(alice.held(Kind::Retained), 0);
    drop((alice, bob));
    let _carol = budget.account("carol");
    assert_eq!(
        budget.accounts.lock().unwrap().len(),
        1,
        "accounts nobody holds are forgotten"
    );
}

#[test]
fn retained_messages_give_way_to_subscriptions_and_both_to_sessions() {
    let budget = Budget::new(1000);
    let alice = budget.account("alice");
    let charge = |kind, bytes| budget.try_charge(&alice, kind, bytes, bytes, usize::MAX);
    let retained = charge(Kind::Retained, 500).unwrap();
    assert_eq!(charge(Kind::Retained, 1).unwrap_err(), QuotaError::Budget);
    let subscriptions = charge(Kind::Subscriptions, 250).unwrap();
    assert_eq!(
        charge(Kind::Subscriptions, 1).unwrap_err(),
        QuotaError::Budget
    );
    let sessions = charge(Kind::Sessions, 250).unwrap();
    assert_eq!(charge(Kind::Sessions, 1).unwrap_err(), QuotaError::Budget);
    drop((retained, subscriptions, sessions));
    assert_eq!(budget.used(), 0);
}
