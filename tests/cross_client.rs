//! README, "First run": "Mint a token and connect with any MQTT client,
//! for example Mosquitto's". Every other device client in `tests/` is
//! rumqttc, which comes from the same project as the gateway's codec
//! (rumqttd), so a misreading they share would go unseen. Here two client
//! libraries that share nothing with it, Mosquitto's command line clients
//! (`mosquitto_pub`, `mosquitto_sub`: libmosquitto, C) and Eclipse
//! paho-mqtt for Python (`tests/data/paho_client.py`), run against the real
//! binary over TLS, with `--cafile` / `tls_set`, username `JWT` and the
//! token as password, at MQTT 3.1.1 and 5: publish and subscribe at each
//! QoS, retained messages, the will on an unclean end (and none on a clean
//! one), and the CONNACK code of a refused token.
//!
//! The programs and their tools are `common::programs`'.

mod common;

use std::time::Duration;

use common::programs::*;
use common::watch::{handed_back, until_own_marker};
use common::web;
use common::{DevBinary, V4Client, now_unix, sign_hs256};
use rumqttc::{ConnectReturnCode, QoS, SubscribeReasonCode};
use serde_json::json;

const HOUR: Duration = Duration::from_secs(3600);

// ---------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------

/// Both libraries subscribe at QoS 2 and both publish at QoS 0, 1 and 2;
/// each subscriber receives all six messages at the QoS they were
/// published with, over MQTT 3.1.1 and over MQTT 5.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_and_paho_publish_and_subscribe_at_each_qos() {
    let gw = DevBinary::start("", "").await;
    for version in VERSIONS {
        let v = version.tag();
        let filter = format!("cc/{v}/#");
        let token = |sub: &str| gw.token(sub, &[&filter], HOUR);
        let id = |who: &str| format!("{who}-{v}");

        let mut msub = mosquitto_sub(&gw, version, &id("msub"), &token(&id("msub")), &filter, &[]);
        assert_eq!(subscribed(&mut msub).await, "2", "mosquitto_sub {v}");
        let mut psub = paho_connected(&gw, version, &id("psub"), &token(&id("psub")), None).await;
        assert_eq!(subscribe_on(&mut psub, &filter).await, "2", "paho {v}");
        let mut ppub = paho_connected(&gw, version, &id("ppub"), &token(&id("ppub")), None).await;

        let mut sent = Vec::new();
        for qos in 0..=2 {
            let msg = Msg::new(
                &format!("cc/{v}/mosquitto/q{qos}"),
                qos,
                false,
                &format!("from mosquitto at qos {qos}"),
            );
            mosquitto_publish(&gw, version, &id("mpub"), &token(&id("mpub")), &msg).await;
            sent.push(msg);
            let msg = Msg::new(
                &format!("cc/{v}/paho/q{qos}"),
                qos,
                false,
                &format!("from paho at qos {qos}"),
            );
            publish_on(&mut ppub, &msg.topic, qos, false, &msg.payload).await;
            sent.push(msg);
        }
        sent.sort();
        assert_eq!(msub.messages(6).await, sent, "mosquitto_sub, MQTT {v}");
        assert_eq!(psub.messages(6).await, sent, "paho, MQTT {v}");
    }
    gw.assert_no_panic();
}

/// A retained message published by either library reaches a later
/// subscriber of either library, flagged retained.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_messages_from_either_client_reach_later_subscribers() {
    let gw = DevBinary::start("", "").await;
    for version in VERSIONS {
        let v = version.tag();
        let filter = format!("kept/{v}/#");
        let token = |sub: &str| gw.token(sub, &[&filter], HOUR);
        let id = |who: &str| format!("{who}-{v}");

        let by_mosquitto = Msg::new(&format!("kept/{v}/mosquitto"), 1, true, "set by mosquitto");
        mosquitto_publish(
            &gw,
            version,
            &id("mpub"),
            &token(&id("mpub")),
            &by_mosquitto,
        )
        .await;
        let by_paho = Msg::new(&format!("kept/{v}/paho"), 1, true, "set by paho");
        let mut ppub = paho_connected(&gw, version, &id("ppub"), &token(&id("ppub")), None).await;
        publish_on(&mut ppub, &by_paho.topic, 1, true, &by_paho.payload).await;
        ppub.send("disconnect").await;
        assert!(ppub.exit().await.success(), "paho publisher {v}");

        let both = vec![by_mosquitto.clone(), by_paho.clone()];
        let mut msub = mosquitto_sub(&gw, version, &id("msub"), &token(&id("msub")), &filter, &[]);
        assert_eq!(subscribed(&mut msub).await, "2");
        assert_eq!(msub.messages(2).await, both, "mosquitto_sub, MQTT {v}");
        let mut psub = paho_connected(&gw, version, &id("psub"), &token(&id("psub")), None).await;
        assert_eq!(subscribe_on(&mut psub, &filter).await, "2");
        assert_eq!(psub.messages(2).await, both, "paho, MQTT {v}");
    }
    gw.assert_no_panic();
}

/// A will set by either library is published when the client's process
/// is killed (its socket closes without DISCONNECT), and not when it
/// disconnects cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn either_clients_will_is_published_on_an_unclean_end_only() {
    let gw = DevBinary::start("", "").await;
    let mut watcher =
        V4Client::start(gw.v4_options("will-watch", &gw.token("will-watch", &["will/#"], HOUR)));
    assert_eq!(watcher.connack().await.code, ConnectReturnCode::Success);
    assert_eq!(
        watcher.subscribe("will/#", QoS::AtLeastOnce).await,
        vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]
    );
    for version in VERSIONS {
        let v = version.tag();
        let token = |sub: &str| gw.token(sub, &["will/#", "cc/#"], HOUR);
        let id = |who: &str| format!("{who}-{v}");

        // Killed: the will is published.
        let topic = format!("will/{v}/mosquitto");
        let mut msub = mosquitto_sub(
            &gw,
            version,
            &id("mwill"),
            &token(&id("mwill")),
            "cc/none",
            &[
                "--will-topic",
                topic.as_str(),
                "--will-payload",
                "mosquitto gone",
                "--will-qos",
                "1",
            ],
        );
        subscribed(&mut msub).await;
        msub.kill().await;
        let will = watcher.expect_publish(&topic).await;
        assert_eq!(&will.payload[..], b"mosquitto gone", "MQTT {v}");

        let topic = format!("will/{v}/paho");
        let will = Some((topic.as_str(), "paho gone", 1));
        let mut pwill =
            paho_connected(&gw, version, &id("pwill"), &token(&id("pwill")), will).await;
        pwill.kill().await;
        let will = watcher.expect_publish(&topic).await;
        assert_eq!(&will.payload[..], b"paho gone", "MQTT {v}");

        // Ended with DISCONNECT: no will.
        let since = gw.served.log().len();
        let clean_topic = format!("will/{v}/mosquitto-clean");
        let (status, out) = mosquitto_pub(
            &gw,
            version,
            &id("mclean"),
            &token(&id("mclean")),
            &[
                "--will-topic",
                clean_topic.as_str(),
                "--will-payload",
                "not gone",
                "-t",
                "cc/x",
                "-m",
                "hello",
            ],
        )
        .await;
        assert!(status.success(), "{out}");
        handed_back(&gw, since, &id("mclean"), &id("mclean")).await;

        let since = gw.served.log().len();
        let clean_topic = format!("will/{v}/paho-clean");
        let will = Some((clean_topic.as_str(), "not gone", 1));
        let mut pclean =
            paho_connected(&gw, version, &id("pclean"), &token(&id("pclean")), will).await;
        pclean.send("disconnect").await;
        assert!(pclean.exit().await.success(), "paho {v}");
        handed_back(&gw, since, &id("pclean"), &id("pclean")).await;

        let seen = until_own_marker(&mut watcher, &format!("will/{v}/marker")).await;
        assert!(
            seen.is_empty(),
            "MQTT {v}: a will published after a clean DISCONNECT: {seen:?}"
        );
    }
    gw.assert_no_panic();
}

/// README, "Authentication and authorization": "Refusals: MQTT 3.1/3.1.1
/// CONNACK 4 (bad username or password: wrong username, no/invalid/expired
/// token) or 5 (not authorized: valid token without a subject or a usable
/// grant claim, ...); MQTT 5 reason 0x86 / 0x87." Each library hears the
/// code for a token signed with another key and for a valid token that
/// grants nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn either_client_hears_the_documented_refusal_codes() {
    let gw = DevBinary::start("", "").await;
    let forged = sign_hs256(
        b"not the gateway's secret, 32 bytes+",
        &json!({ "sub": "intruder", "exp": now_unix() + 3600, "topics": ["#"] }),
    );
    let grants_nothing = gw.sign(&json!({ "sub": "idle", "exp": now_unix() + 3600, "topics": [] }));
    for (version, bad_credentials, not_authorized) in
        [(Version::V311, 4u8, 5u8), (Version::V5, 0x86, 0x87)]
    {
        let v = version.tag();
        for (what, token, code) in [
            ("a token signed with another key", &forged, bad_credentials),
            ("a token granting nothing", &grants_nothing, not_authorized),
        ] {
            let (status, out) = mosquitto_pub(
                &gw,
                version,
                &format!("refused-m-{v}"),
                token,
                &["-t", "cc/x", "-m", "x"],
            )
            .await;
            assert!(
                out.contains(&format!("received CONNACK ({code})")),
                "mosquitto_pub, MQTT {v}, {what}: expected CONNACK {code:#04x}:\n{out}"
            );
            assert!(!status.success(), "mosquitto_pub, MQTT {v}, {what}");

            let mut client = paho(&gw, version, &format!("refused-p-{v}"), token, None);
            assert_eq!(connack(&mut client).await, code, "paho, MQTT {v}, {what}");
        }
    }
    gw.assert_no_panic();
}

// ---------------------------------------------------------------------------
// Over secure WebSockets
// ---------------------------------------------------------------------------

/// README, "Browsers and web clients": "after the upgrade a WebSocket
/// connection is a client like any other". mqtt.js (Node) and paho-mqtt,
/// both over WSS, and rumqttc over TLS subscribe to the same filter; each
/// publishes at QoS 1 and 2 and every one of them receives every message,
/// over MQTT 3.1.1 and 5: the same routing core behind both transports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_clients_over_wss_and_devices_over_tls_exchange_messages() {
    let gw = DevBinary::start("", web::WEBSOCKET).await;
    for version in VERSIONS {
        let v = version.tag();
        let filter = format!("web/{v}/#");
        let token = |id: &str| gw.token(id, &[&filter], HOUR);
        let mut web_clients = Vec::new();
        for driven in [Driven::MqttJs, Driven::PahoWss] {
            let id = format!("{driven:?}-{v}");
            let mut client = program(&gw, driven, version, &id, &token(&id), None);
            assert_eq!(connack(&mut client).await, 0, "{id}");
            assert_eq!(subscribe_on(&mut client, &filter).await, "2", "{id}");
            web_clients.push(client);
        }
        let device_id = format!("tls-{v}");
        let mut device = V4Client::start(gw.v4_options(&device_id, &token(&device_id)));
        assert_eq!(device.connack().await.code, ConnectReturnCode::Success);
        device.subscribe(&filter, QoS::AtLeastOnce).await;

        let mut expected = Vec::new();
        for (i, qos) in [(0, 1u8), (1, 2u8)] {
            let topic = format!("web/{v}/from-web-{i}");
            publish_on(&mut web_clients[i], &topic, qos, false, "over wss").await;
            expected.push(Msg::new(&topic, qos, false, "over wss"));
        }
        let tls_topic = format!("web/{v}/from-tls");
        device
            .publish(&tls_topic, QoS::ExactlyOnce, false, b"over tls")
            .await;
        expected.push(Msg::new(&tls_topic, 2, false, "over tls"));
        expected.sort();
        for client in &mut web_clients {
            assert_eq!(client.messages(3).await, expected, "{}", client.name);
        }
        let mut got: Vec<String> = device
            .publishes_expecting(3)
            .await
            .iter()
            .map(|p| p.topic.clone())
            .collect();
        got.sort();
        let mut want: Vec<String> = expected.iter().map(|m| m.topic.clone()).collect();
        want.sort();
        assert_eq!(got, want, "the TLS device, MQTT {v}");
    }
    gw.assert_no_panic();
}

/// Over WSS a web client is held to its token as a device over TLS is: a
/// filter outside its grant is refused in the SUBACK (0x80 / 0x87), an
/// MQTT 5 PUBLISH outside it is answered 0x87 and delivered to nobody, and
/// a token signed with another key gets CONNACK 4 / 0x86.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_clients_over_wss_are_held_to_their_grants() {
    let gw = DevBinary::start("", web::WEBSOCKET).await;
    let forged = sign_hs256(
        b"not the gateway's secret, 32 bytes+",
        &json!({ "sub": "intruder", "exp": now_unix() + 3600, "topics": ["#"] }),
    );
    let mut watcher = V4Client::start(gw.v4_options("watcher", &gw.token("watcher", &["#"], HOUR)));
    assert_eq!(watcher.connack().await.code, ConnectReturnCode::Success);
    watcher.subscribe("#", QoS::AtLeastOnce).await;
    for (version, refused_filter, bad_token) in
        [(Version::V311, "128", 4u8), (Version::V5, "135", 0x86)]
    {
        let v = version.tag();
        for driven in [Driven::MqttJs, Driven::PahoWss] {
            let id = format!("{driven:?}-{v}");
            let token = gw.token(&id, &[&format!("mine/{v}/#")], HOUR);
            let mut client = program(&gw, driven, version, &id, &token, None);
            assert_eq!(connack(&mut client).await, 0, "{id}");
            assert_eq!(
                subscribe_on(&mut client, "theirs/#").await,
                refused_filter,
                "{id}"
            );
            if driven == Driven::MqttJs && version == Version::V5 {
                client.send("pub theirs/x 1 0 not mine").await;
                let line = client
                    .line("PUBREFUSED", |l| l.starts_with("PUBREFUSED "))
                    .await;
                assert_eq!(line, "PUBREFUSED 135", "{id}");
            }
            let mut forged_client =
                program(&gw, driven, version, &format!("{id}-forged"), &forged, None);
            assert_eq!(
                connack(&mut forged_client).await,
                bad_token,
                "{id} with a forged token"
            );
        }
    }
    // Nothing outside a grant was delivered, and the watcher is still
    // served.
    let stray = watcher.publishes_while_alive(common::QUIET).await;
    assert!(stray.is_empty(), "{stray:?}");
    gw.assert_no_panic();
}
