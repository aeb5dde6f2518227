//! A link's state through its transitions: connecting from the start,
//! down since the first failure however many follow, connected from the
//! moment it connects, and down again from the end of that connection.

use std::time::SystemTime;

use super::*;

#[test]
fn a_new_link_is_connecting_since_its_creation() {
    let before = SystemTime::now();
    let status = LinkStatus::new("cloud", "broker.example:8883".to_owned());
    assert_eq!(status.name(), "cloud");
    assert_eq!(status.remote(), "broker.example:8883");
    assert!(!status.is_connected());
    let state = status.state();
    assert_eq!(state.as_str(), "connecting");
    assert!(state.since() >= before && state.since() <= SystemTime::now());
}

#[test]
fn a_link_down_stays_down_since_its_first_failure_with_the_last_error() {
    let status = LinkStatus::new("cloud", "broker.example:8883".to_owned());
    status.failed("tcp", "TCP: connection refused".to_owned());
    let first = status.state();
    let LinkState::Down {
        since, failures, ..
    } = first
    else {
        panic!("not down: {first:?}");
    };
    assert_eq!(failures, 1);
    status.failed("tls", "TLS: bad certificate".to_owned());
    assert_eq!(
        status.state(),
        LinkState::Down {
            since,
            kind: "tls",
            error: "TLS: bad certificate".to_owned(),
            failures: 2,
        }
    );
    assert!(!status.is_connected());
}

#[test]
fn connected_then_lost_is_down_from_the_end_of_the_connection() {
    let status = LinkStatus::new("cloud", "broker.example:8883".to_owned());
    status.failed("tcp", "TCP: connection refused".to_owned());
    let went_down = status.state().since();
    let before = SystemTime::now();
    status.connected();
    assert!(status.is_connected());
    let connected = status.state();
    assert_eq!(connected.as_str(), "connected");
    assert!(connected.since() >= before);
    assert!(connected.since() >= went_down);

    let before = SystemTime::now();
    status.failed("connection", "connection lost: reset".to_owned());
    assert!(!status.is_connected());
    let LinkState::Down {
        since,
        kind,
        failures,
        ..
    } = status.state()
    else {
        panic!("not down");
    };
    // A new outage: counted from its own start, not the earlier one.
    assert!(since >= before, "{since:?} before {before:?}");
    assert_eq!((kind, failures), ("connection", 1));
}

#[test]
fn a_stopped_link_is_not_connected_and_says_since_when() {
    let status = LinkStatus::new("cloud", "broker.example:8883".to_owned());
    status.connected();
    assert!(status.is_connected());
    let before = SystemTime::now();
    status.stopped();
    assert!(!status.is_connected());
    let state = status.state();
    assert_eq!(state.as_str(), "stopped");
    assert!(state.since() >= before);
    // A shutdown is not a failure: nothing was counted.
    assert!(matches!(state, LinkState::Stopped { .. }));
}
