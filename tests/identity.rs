//! `${clientid}` bound to the token (issue 19, item 6), against the real
//! binary over TLS: a device may not borrow another's client id to reach
//! its `${clientid}` topics; a `clientid` claim binds (and a mismatch is
//! refused with "client identifier not valid"), so does `sub` equal to the
//! client id; a `$` client id never stands in a grant; `client_id_binding
//! = "none"` brings the old, unbound behaviour back. Re-authentication
//! applies the same rule to the new token.

// Tests panic on purpose when a fixture cannot be set up.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::raw5::{Raw5, v5};
use common::scrape::{metrics_port, scrape, value};
use common::{DevBinary, TestGateway, V4Client, V5Client, mqtt, now_unix, v5_options_for};
use std::time::Duration;

use rumqttc::{ConnectReturnCode, QoS, SubscribeReasonCode};
use serde_json::{Value, json};

const METRICS: &str = "[metrics]\nlisten = \"127.0.0.1:0\"\n";
const MISMATCHES: &str = "jwtgate_connects_total{outcome=\"client_id_mismatch\"}";

/// A token for `sub` granting `topics`, with a `clientid` claim when given.
fn claims(sub: &str, clientid: Option<&str>, topics: &[&str]) -> Value {
    let mut claims = json!({ "sub": sub, "exp": now_unix() + 600, "topics": topics });
    if let Some(clientid) = clientid {
        claims["clientid"] = json!(clientid);
    }
    claims
}

async fn v4(gw: &DevBinary, client_id: &str, token: &str) -> (V4Client, ConnectReturnCode) {
    let mut client = V4Client::start(gw.v4_options(client_id, token));
    let code = client.connack().await.code;
    (client, code)
}

/// The real pump: its token's `sub` is its client id.
async fn real_pump(gw: &DevBinary) -> V4Client {
    let token = gw.sign(&claims("pump-17", None, &["dev/${clientid}/#"]));
    let (mut pump, code) = v4(gw, "pump-17", &token).await;
    assert_eq!(code, ConnectReturnCode::Success, "sub == client id binds");
    assert_eq!(
        pump.subscribe("dev/pump-17/#", QoS::AtLeastOnce).await,
        vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]
    );
    pump
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_cannot_reach_another_devices_clientid_topics_by_using_its_id() {
    let gw = DevBinary::start("", "").await;
    let mut pump = real_pump(&gw).await;

    // thermostat-3's token, used with the pump's client id.
    let token = gw.sign(&claims(
        "thermostat-3",
        None,
        &["dev/${clientid}/#", "thermostat/#"],
    ));
    let (mut attacker, code) = v4(&gw, "pump-17", &token).await;
    assert_eq!(code, ConnectReturnCode::Success, "its other grants stand");
    assert_eq!(
        attacker.subscribe("dev/pump-17/#", QoS::AtMostOnce).await,
        vec![SubscribeReasonCode::Failure]
    );
    attacker
        .publish("dev/pump-17/cmd", QoS::AtLeastOnce, false, b"open")
        .await;
    pump.expect_no_publish().await;
    gw.served
        .wait_for_log(0, "ignoring a grant of the token")
        .await;

    // With nothing but the `${clientid}` grant, the token grants nothing.
    let only = gw.sign(&claims("thermostat-3", None, &["dev/${clientid}/#"]));
    let (_, code) = v4(&gw, "pump-17", &only).await;
    assert_eq!(code, ConnectReturnCode::NotAuthorized);

    // The pump itself still talks to itself.
    let mut own = V4Client::start(gw.v4_options(
        "pump-17-tool",
        &gw.sign(&claims("pump-17-tool", Some("pump-17-tool"), &["dev/#"])),
    ));
    assert_eq!(own.connack().await.code, ConnectReturnCode::Success);
    own.publish("dev/pump-17/cmd", QoS::AtLeastOnce, false, b"close")
        .await;
    assert_eq!(
        pump.expect_publish("dev/pump-17/cmd").await.payload,
        "close"
    );
    gw.assert_no_panic();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clientid_claim_binds_and_a_mismatch_is_client_identifier_not_valid() {
    let gw = DevBinary::start("", METRICS).await;
    let port = metrics_port(&gw).await;
    let before = value(&scrape(port).await, MISMATCHES);
    let token = gw.sign(&claims("fleet-a", Some("pump-17"), &["dev/${clientid}/#"]));

    let (mut device, code) = v4(&gw, "pump-17", &token).await;
    assert_eq!(code, ConnectReturnCode::Success);
    assert_eq!(
        device.subscribe("dev/pump-17/#", QoS::AtLeastOnce).await,
        vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)],
        "${{clientid}} took the claimed id"
    );
    device
        .publish("dev/pump-17/state", QoS::AtLeastOnce, false, b"ok")
        .await;
    assert_eq!(
        device.expect_publish("dev/pump-17/state").await.payload,
        "ok"
    );

    // The claim names pump-17: no other client id, even sub's.
    for client_id in ["pump-18", "fleet-a"] {
        let (_, code) = v4(&gw, client_id, &token).await;
        assert_eq!(code, ConnectReturnCode::BadClientId, "3.1.1 code 2");
    }
    let mut v5 = V5Client::start(v5_options_for(gw.served.port(), &gw.ca, "pump-18", &token));
    assert_eq!(
        v5.connack().await.code,
        rumqttc::v5::mqttbytes::v5::ConnectReturnCode::ClientIdentifierNotValid,
        "MQTT 5: 0x85"
    );
    // No client id: the one the gateway would assign is not the claimed one.
    let mut raw = gw.raw().await;
    raw.send_ok(
        &mqtt::Connect::new(4, "")
            .username("JWT")
            .password(&token)
            .encode(),
    )
    .await;
    assert_eq!(
        mqtt::parse_connack(&raw.read_packet().await),
        Some((false, 2))
    );
    gw.served
        .wait_for_log(0, "the token's \"clientid\" claim is \"pump-17\"")
        .await;
    let after = value(&scrape(port).await, MISMATCHES);
    assert_eq!(after - before, 4.0, "each mismatch counted once");
    gw.assert_no_panic();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dollar_client_id_never_stands_in_a_grant() {
    for auth in ["", "client_id_binding = \"none\"\n"] {
        let gw = DevBinary::start(auth, "").await;
        let token = gw.sign(&claims("$SYS", Some("$SYS"), &["${clientid}/#", "x/#"]));
        let (mut device, code) = v4(&gw, "$SYS", &token).await;
        assert_eq!(code, ConnectReturnCode::Success, "{auth:?}");
        assert_eq!(
            device.subscribe("$SYS/#", QoS::AtMostOnce).await,
            vec![SubscribeReasonCode::Failure],
            "{auth:?}"
        );
        assert_eq!(
            device.subscribe("x/#", QoS::AtMostOnce).await,
            vec![SubscribeReasonCode::Success(QoS::AtMostOnce)]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_id_binding_none_restores_the_unbound_behaviour_and_warns() {
    let gw = DevBinary::start("client_id_binding = \"none\"\n", "").await;
    gw.served
        .wait_for_log(0, "client_id_binding = \"none\": ")
        .await;
    let mut pump = real_pump(&gw).await;
    let token = gw.sign(&claims("thermostat-3", None, &["dev/${clientid}/#"]));
    let (mut other, code) = v4(&gw, "pump-17", &token).await;
    assert_eq!(code, ConnectReturnCode::Success);
    assert_eq!(
        other.subscribe("dev/pump-17/#", QoS::AtMostOnce).await,
        vec![SubscribeReasonCode::Success(QoS::AtMostOnce)]
    );
    other
        .publish("dev/pump-17/cmd", QoS::AtLeastOnce, false, b"open")
        .await;
    assert_eq!(pump.expect_publish("dev/pump-17/cmd").await.payload, "open");
    // A clientid claim is not looked at.
    let claimed = gw.sign(&claims("x", Some("someone-else"), &["dev/${clientid}/#"]));
    let (_, code) = v4(&gw, "pump-18", &claimed).await;
    assert_eq!(code, ConnectReturnCode::Success);
}

#[tokio::test]
async fn reauthentication_applies_the_binding_to_the_new_token() {
    let gw = TestGateway::start().await;
    let watch_token = gw.token("will-watch", &["r/#"], Duration::from_secs(600));
    let mut watcher = gw.v4_connected("will-watch", &watch_token).await;
    watcher.subscribe("r/+/will", QoS::AtMostOnce).await;
    let sign = |clientid: Option<&str>| gw.sign(&claims("dev-r", clientid, &["r/${clientid}/#"]));
    let connect = |client_id: &str, token: &str| {
        v5::Connect::enhanced(client_id, token)
            .will(v5::Will::new(&format!("r/{client_id}/will"), b"gone"))
    };

    // The same binding: the grants and the will they allow carry on.
    let (mut device, _) = Raw5::connect(&gw, connect("dev-r1", &sign(Some("dev-r1")))).await;
    assert_eq!(device.subscribe(1, &[("r/dev-r1/#", 1)]).await, vec![1]);
    assert!(matches!(
        device.reauthenticate(&sign(Some("dev-r1"))).await,
        Some(v5::Packet::Auth { reason: 0x00, .. })
    ));
    drop(device);
    assert_eq!(
        watcher.expect_publish("r/dev-r1/will").await.payload,
        "gone"
    );

    // A new token without the claim leaves dev-r2 unbound: the will it no
    // longer grants is dropped.
    let (mut device, _) = Raw5::connect(&gw, connect("dev-r2", &sign(Some("dev-r2")))).await;
    assert!(matches!(
        device
            .reauthenticate(&gw.sign(&claims("dev-r", None, &["r/${clientid}/#", "other/#"])))
            .await,
        Some(v5::Packet::Auth { reason: 0x00, .. })
    ));
    drop(device);
    watcher.expect_no_publish().await;

    // A claim naming another client id ends the session.
    let (mut device, _) = Raw5::connect(&gw, connect("dev-r3", &sign(Some("dev-r3")))).await;
    match device.reauthenticate(&sign(Some("dev-r4"))).await {
        Some(v5::Packet::Disconnect { reason, .. }) => assert_eq!(reason, 0x87),
        other => panic!("expected DISCONNECT 0x87, got {other:?}"),
    }
    assert_eq!(device.closed().await, None, "closed after the DISCONNECT");
}
