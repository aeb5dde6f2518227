use std::time::Duration;

use super::*;

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

#[test]
fn each_source_has_its_own_cap() {
    let strangers = Arc::new(Strangers::new(100, 2));
    let a1 = strangers.enter(ip("10.0.0.1")).unwrap();
    let _a2 = strangers.enter(ip("10.0.0.1")).unwrap();
    assert_eq!(
        strangers.enter(ip("10.0.0.1")).unwrap_err(),
        NoPlace::SourceFull(2)
    );
    let _b = strangers.enter(ip("10.0.0.2")).unwrap();
    drop(a1);
    let _a3 = strangers.enter(ip("10.0.0.1")).unwrap();
    assert_eq!(strangers.len(), 3);
}

#[test]
fn an_ipv6_host_is_its_slash_64() {
    let strangers = Arc::new(Strangers::new(100, 1));
    let _a = strangers.enter(ip("2001:db8:1:2::1")).unwrap();
    assert!(strangers.enter(ip("2001:db8:1:2:ffff::9")).is_err());
    assert!(strangers.enter(ip("2001:db8:1:3::1")).is_ok());
    let _v4 = strangers.enter(ip("192.0.2.7")).unwrap();
    assert!(strangers.enter(ip("::ffff:192.0.2.7")).is_err());
}

#[tokio::test]
async fn a_newcomer_pushes_out_the_oldest_stranger() {
    let strangers = Arc::new(Strangers::new(2, 10));
    let oldest = strangers.enter(ip("10.0.0.1")).unwrap();
    let middle = strangers.enter(ip("10.0.0.2")).unwrap();
    let _newest = strangers.enter(ip("10.0.0.3")).unwrap();
    tokio::time::timeout(Duration::from_secs(1), oldest.evicted())
        .await
        .expect("the oldest is told");
    assert!(
        tokio::time::timeout(Duration::from_millis(50), middle.evicted())
            .await
            .is_err(),
        "the others keep their place"
    );
    assert_eq!((strangers.len(), strangers.evicted()), (2, 1));
    // Dropping an evicted place gives back nothing twice.
    drop(oldest);
    assert_eq!(strangers.len(), 2);
    let _more = strangers.enter(ip("10.0.0.1")).unwrap();
    assert_eq!(strangers.len(), 2);
}
