//! What outlives a restart of the real binary (issue 11): retained
//! messages, and persistent sessions with their subscriptions and the QoS 1
//! messages queued for them while their device was away.
//!
//! The restarted binary listens on a new port (the harness starts it on
//! port 0 and reads the port it reports), so every client after a restart
//! is started with options made after it.

mod common;

use std::time::Duration;

use common::{DevBinary, V4Client};
use rumqttc::MqttOptions;
use rumqttc::{ConnectReturnCode, QoS, SubscribeReasonCode};

const HOUR: Duration = Duration::from_secs(3600);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retained_message_survives_a_restart() {
    let mut gw = DevBinary::start("", "").await;
    let token = gw.token("thermostat", &["status/#"], HOUR);
    let mut device = V4Client::start(gw.v4_options("thermostat", &token));
    assert_eq!(device.connack().await.code, ConnectReturnCode::Success);
    device
        .publish("status/thermostat", QoS::AtLeastOnce, true, b"21.5C")
        .await;
    device
        .publish("status/cleared", QoS::AtLeastOnce, true, b"soon gone")
        .await;
    device
        .publish("status/cleared", QoS::AtLeastOnce, true, b"")
        .await;
    device.disconnect().await;

    gw.served.terminate().await;
    gw.restart().await;

    let reader_token = gw.token("dashboard", &["status/#"], HOUR);
    let mut reader = V4Client::start(gw.v4_options("dashboard", &reader_token));
    assert_eq!(reader.connack().await.code, ConnectReturnCode::Success);
    assert_eq!(
        reader.subscribe("status/#", QoS::AtLeastOnce).await,
        vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]
    );
    // The one retained message, then nothing more (the cleared one).
    let got = reader.publishes_expecting(1).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].topic, "status/thermostat");
    assert_eq!(&got[0].payload[..], b"21.5C");
    assert!(got[0].retain);
    gw.assert_no_panic();
}

/// The valve's options for where `gw` listens now: a persistent session.
fn valve_options(gw: &DevBinary, token: &str) -> MqttOptions {
    let mut options = gw.v4_options("valve-1", token);
    options.set_clean_session(false);
    options
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_session_and_its_queued_message_survive_a_restart() {
    let mut gw = DevBinary::start("", "").await;
    let token = gw.token("valve", &["cmd/valve/#"], HOUR);
    let mut valve = V4Client::start(valve_options(&gw, &token));
    let connack = valve.connack().await;
    assert_eq!(connack.code, ConnectReturnCode::Success);
    assert_eq!(
        valve.subscribe("cmd/valve/#", QoS::AtLeastOnce).await,
        vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]
    );
    valve.disconnect().await;

    // Queued for the parked session while the valve is away.
    let operator_token = gw.token("operator", &["cmd/#"], HOUR);
    let mut operator = V4Client::start(gw.v4_options("operator", &operator_token));
    assert_eq!(operator.connack().await.code, ConnectReturnCode::Success);
    operator
        .publish("cmd/valve/open", QoS::AtLeastOnce, false, b"open 30%")
        .await;
    operator.disconnect().await;

    gw.served.terminate().await;
    gw.restart().await;

    let mut valve = V4Client::start(valve_options(&gw, &token));
    let connack = valve.connack().await;
    assert_eq!(connack.code, ConnectReturnCode::Success);
    assert!(connack.session_present, "the session did not survive");
    let got = valve.expect_publish("cmd/valve/open").await;
    assert_eq!(&got.payload[..], b"open 30%");

    // Its subscription did too: a new command reaches it.
    let mut operator = V4Client::start(gw.v4_options("operator", &operator_token));
    assert_eq!(operator.connack().await.code, ConnectReturnCode::Success);
    operator
        .publish("cmd/valve/close", QoS::AtLeastOnce, false, b"close")
        .await;
    assert_eq!(
        &valve.expect_publish("cmd/valve/close").await.payload[..],
        b"close"
    );
    gw.assert_no_panic();
}

/// Issue 19, item 5: a retained message is acknowledged only once it is
/// committed, so a SIGKILL right after the last PUBACK loses none of them.
/// The publishes are pipelined (rumqttc keeps up to 100 in flight), as a
/// device flushing its state after a reconnect would send them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_retained_messages_survive_a_kill_right_after_the_last_puback() {
    const ROUNDS: usize = 3;
    const MESSAGES: usize = 200;
    let mut gw = DevBinary::start("", "").await;
    let payload = vec![b'r'; 20 * 1024];
    let mut survived = Vec::new();
    let mut acked_in = Vec::new();
    for round in 0..ROUNDS {
        let started = std::time::Instant::now();
        let token = gw.token("panel", &["status/#"], HOUR);
        let mut device = V4Client::start(gw.v4_options("panel", &token));
        assert_eq!(device.connack().await.code, ConnectReturnCode::Success);
        for i in 0..MESSAGES {
            device
                .client
                .publish(
                    format!("status/r{round}/{i}"),
                    QoS::AtLeastOnce,
                    true,
                    payload.clone(),
                )
                .await
                .expect("queue PUBLISH");
        }
        let mut acked = 0;
        while acked < MESSAGES {
            match device.next_packet().await {
                Ok(rumqttc::Packet::PubAck(_)) => acked += 1,
                Ok(_) => {}
                Err(e) => panic!("connection ended after {acked} PUBACKs: {e}"),
            }
        }
        acked_in.push(started.elapsed());
        gw.served.kill().await;
        gw.restart().await;

        let reader_token = gw.token("dashboard", &["status/#"], HOUR);
        let mut reader = V4Client::start(gw.v4_options("dashboard", &reader_token));
        assert_eq!(reader.connack().await.code, ConnectReturnCode::Success);
        reader
            .subscribe(&format!("status/r{round}/#"), QoS::AtLeastOnce)
            .await;
        let mut topics = std::collections::HashSet::new();
        for p in reader.publishes_expecting(MESSAGES).await {
            assert!(p.retain && p.payload.len() == payload.len(), "{p:?}");
            assert!(topics.insert(p.topic.clone()), "twice: {}", p.topic);
        }
        reader.disconnect().await;
        survived.push(topics.len());
    }
    println!(
        "retained QoS 1 messages of 20 KB surviving a SIGKILL right after the last PUBACK: {survived:?} of {MESSAGES} per round (connect to last PUBACK: {acked_in:.2?})"
    );
    assert!(
        survived.iter().all(|&n| n == MESSAGES),
        "acknowledged retained messages lost: {survived:?} of {MESSAGES} per round"
    );
    gw.assert_no_panic();
}

/// An acknowledgement is a commit for a parked session too: QoS 1 messages
/// queued for a device that is away are written down before their
/// publisher's PUBACK, so a SIGKILL right after the last PUBACK loses none,
/// and the device gets them all, in order, when it comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_acknowledged_for_a_parked_session_survive_a_kill() {
    const MESSAGES: usize = 200;
    let mut gw = DevBinary::start("", "").await;
    let token = gw.token("valve", &["cmd/valve/#"], HOUR);
    let mut options = gw.v4_options("valve-1", &token);
    options.set_clean_session(false);
    let mut valve = V4Client::start(options.clone());
    assert_eq!(valve.connack().await.code, ConnectReturnCode::Success);
    valve.subscribe("cmd/valve/#", QoS::AtLeastOnce).await;
    valve.disconnect().await;

    let operator_token = gw.token("operator", &["cmd/#"], HOUR);
    let mut operator = V4Client::start(gw.v4_options("operator", &operator_token));
    assert_eq!(operator.connack().await.code, ConnectReturnCode::Success);
    for i in 0..MESSAGES {
        operator
            .client
            .publish(
                "cmd/valve/step",
                QoS::AtLeastOnce,
                false,
                i.to_string().into_bytes(),
            )
            .await
            .expect("queue PUBLISH");
    }
    let mut acked = 0;
    while acked < MESSAGES {
        match operator.next_packet().await {
            Ok(rumqttc::Packet::PubAck(_)) => acked += 1,
            Ok(_) => {}
            Err(e) => panic!("connection ended after {acked} PUBACKs: {e}"),
        }
    }
    gw.served.kill().await;
    gw.restart().await;

    // The restarted gateway listens on a new port: options made now.
    let mut options = gw.v4_options("valve-1", &token);
    options.set_clean_session(false);
    let mut valve = V4Client::start(options);
    let connack = valve.connack().await;
    assert_eq!(connack.code, ConnectReturnCode::Success);
    assert!(connack.session_present, "the session did not survive");
    let mut got = Vec::new();
    while got.len() < MESSAGES {
        let publish = valve.expect_publish("cmd/valve/step").await;
        got.push(String::from_utf8_lossy(&publish.payload).into_owned());
    }
    let sent: Vec<String> = (0..MESSAGES).map(|i| i.to_string()).collect();
    assert_eq!(got, sent, "acknowledged messages lost or out of order");
    gw.assert_no_panic();
}
