//! Waiting on what the served binary did, for checks that something did
//! *not* happen: the log line that says a connection ended, the moment its
//! session (and will) went back to the routing core, and a watcher proving
//! it was listening all along by hearing a message it sent itself.

use std::time::{Duration, Instant};

use rumqttc::{ConnectReturnCode, QoS};

use super::{DevBinary, QUIET, V4Client, WAIT};

/// Waits until the log of `gw`, after its first `since` bytes, has a line
/// holding every one of `needles`; returns it. Panics after [`WAIT`].
pub async fn wait_for_line(gw: &DevBinary, since: usize, needles: &[&str]) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let log = gw.served.log();
        if let Some(line) = log
            .get(since..)
            .unwrap_or("")
            .lines()
            .find(|line| needles.iter().all(|n| line.contains(n)))
        {
            return line.to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "no line with {needles:?} in the log within {WAIT:?}:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Once `gw` logged the end of `client_id`'s connection (after `since`),
/// connects again as subject `sub` with that client id (clean session) and
/// leaves. The gateway answers that CONNECT only after the old connection
/// handed its session back to the routing core, and with it its will if
/// one was due (a will without delay is published by a task started
/// then). Note that a takeover never publishes the will, which is why the
/// end must be logged first.
pub async fn handed_back(gw: &DevBinary, since: usize, sub: &str, client_id: &str) {
    wait_for_line(
        gw,
        since,
        &["client disconnected", format!("\"{client_id}\"").as_str()],
    )
    .await;
    let token = gw.token(sub, &["unused/#"], Duration::from_secs(3600));
    let mut again = V4Client::start(gw.v4_options(client_id, &token));
    assert_eq!(
        again.connack().await.code,
        ConnectReturnCode::Success,
        "{client_id}: CONNACK"
    );
    again.disconnect().await;
}

/// Every PUBLISH `watcher` receives within [`QUIET`] and until a message it
/// sends itself on `marker` (a topic it is granted and subscribed to)
/// comes back: what arrived before that, with proof that it was connected
/// and listening all along.
pub async fn until_own_marker(watcher: &mut V4Client, marker: &str) -> Vec<rumqttc::Publish> {
    let mut seen = watcher.publishes_within(QUIET).await;
    watcher
        .publish(marker, QoS::AtLeastOnce, false, b"marker")
        .await;
    watcher.expect_publish(marker).await;
    seen.extend(watcher.take_other_publishes());
    seen
}
