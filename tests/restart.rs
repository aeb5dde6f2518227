//! What outlives a restart of the real binary (issue 11): retained
//! messages, and persistent sessions with their subscriptions and the QoS 1
//! messages queued for them while their device was away.

mod common;

use std::time::Duration;

use common::{DevBinary, V4Client};
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
    let got = reader.publishes_within(Duration::from_millis(500)).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].topic, "status/thermostat");
    assert_eq!(&got[0].payload[..], b"21.5C");
    assert!(got[0].retain);
    gw.assert_no_panic();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_session_and_its_queued_message_survive_a_restart() {
    let mut gw = DevBinary::start("", "").await;
    let token = gw.token("valve", &["cmd/valve/#"], HOUR);
    let mut options = gw.v4_options("valve-1", &token);
    options.set_clean_session(false);
    let mut valve = V4Client::start(options.clone());
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

    let mut valve = V4Client::start(options.clone());
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
