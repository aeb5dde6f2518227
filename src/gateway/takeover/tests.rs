use super::*;

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
    first.taken_over().await;
    assert!(!second.is_finished());
    drop(first);
    let mut second = second.await.unwrap().unwrap();
    // The new holder is not itself kicked by its own claim.
    let kicked = tokio::time::timeout(Duration::from_millis(50), second.taken_over()).await;
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
