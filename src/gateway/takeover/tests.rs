use super::*;
use crate::mqtt::{Transport, Version};

fn key() -> SessionKey {
    SessionKey::new("sub", "dev")
}

#[tokio::test]
async fn a_second_claim_kicks_and_waits_for_the_first() {
    let registry = Arc::new(Registry::default());
    let mut first = registry
        .claim(&key(), Duration::from_secs(1))
        .await
        .unwrap();
    let second = {
        let registry = registry.clone();
        tokio::spawn(async move { registry.claim(&key(), Duration::from_secs(5)).await })
    };
    assert_eq!(first.kicked().await, Kicked::TakenOver);
    assert!(!second.is_finished());
    drop(first);
    let mut second = second.await.unwrap().unwrap();
    // The new holder is not itself kicked by its own claim.
    let kicked = tokio::time::timeout(Duration::from_millis(50), second.kicked()).await;
    assert!(kicked.is_err());
    drop(second);
    assert!(registry.by_session.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_holder_that_never_lets_go_times_the_claimant_out() {
    let registry = Arc::new(Registry::default());
    let _first = registry
        .claim(&key(), Duration::from_secs(1))
        .await
        .unwrap();
    let second = registry.claim(&key(), Duration::from_millis(50)).await;
    assert!(second.is_err());
}

#[tokio::test]
async fn other_subjects_with_the_same_client_id_do_not_collide() {
    let registry = Arc::new(Registry::default());
    let _a = registry
        .claim(&SessionKey::new("a", "dev"), Duration::from_secs(1))
        .await
        .unwrap();
    let b = registry
        .claim(&SessionKey::new("b", "dev"), Duration::from_millis(50))
        .await;
    assert!(b.is_ok());
}

#[tokio::test]
async fn an_operator_ends_the_holders_it_picks_and_learns_when_they_let_go() {
    let registry = Arc::new(Registry::default());
    let mut a = registry
        .claim(&SessionKey::new("a", "dev"), Duration::from_secs(1))
        .await
        .unwrap();
    let mut b = registry
        .claim(&SessionKey::new("b", "dev"), Duration::from_secs(1))
        .await
        .unwrap();
    a.go_live(Live::new(
        "127.0.0.1:1".parse().unwrap(),
        Transport::Tls,
        Version::V5,
        Some(7),
    ));
    let live = registry.live();
    assert_eq!(live.len(), 2);
    let listed = live.iter().find(|(key, _)| key.subject() == "a").unwrap();
    assert_eq!(listed.1.as_ref().unwrap().token_expires(), Some(7));
    a.renewed(Some(9));
    assert_eq!(
        registry
            .live()
            .iter()
            .find(|(k, _)| k.subject() == "a")
            .unwrap()
            .1
            .as_ref()
            .unwrap()
            .token_expires(),
        Some(9)
    );

    let slots = registry.end(|key| key.subject() == "a", true);
    assert_eq!(slots.len(), 1);
    assert_eq!(
        a.kicked().await,
        Kicked::Administrative {
            discard_session: true
        }
    );
    let untouched = tokio::time::timeout(Duration::from_millis(50), b.kicked()).await;
    assert!(untouched.is_err(), "b was not picked");
    assert!(slots[0].try_lock().is_err(), "a still holds its slot");
    drop(a);
    assert!(slots[0].try_lock().is_ok());
    assert_eq!(registry.live().len(), 1);
}

#[tokio::test]
async fn a_newcomer_after_an_operators_order_is_not_ended_by_it() {
    let registry = Arc::new(Registry::default());
    let first = registry
        .claim(&key(), Duration::from_secs(1))
        .await
        .unwrap();
    let _ = registry.end(|_| true, false);
    drop(first);
    let mut second = registry
        .claim(&key(), Duration::from_secs(1))
        .await
        .unwrap();
    let kicked = tokio::time::timeout(Duration::from_millis(50), second.kicked()).await;
    assert!(kicked.is_err());
}
