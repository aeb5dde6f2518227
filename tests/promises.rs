//! README promises that had no test of their own (issue 25), each held
//! against the real binary over real TLS. Every test names the README
//! sentence it holds to; an absence ("nothing arrives") is always followed
//! by a message the watcher sends itself, so a watcher that lost its
//! connection cannot pass for one that was told nothing.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::mosquitto::Mosquitto;
use common::raw5::{Raw5, v5};
use common::watch::{handed_back, until_own_marker, wait_for_line};
use common::{DevBinary, RawClient, V4Client, WAIT, mqtt};
use rumqttc::{ConnectReturnCode, QoS, SubscribeReasonCode};

const HOUR: Duration = Duration::from_secs(3600);

/// A clean-session MQTT 3.1.1 client for `sub` (also its client id)
/// granted `topics`, connected.
async fn connected(gw: &DevBinary, sub: &str, topics: &[&str]) -> V4Client {
    let token = gw.token(sub, topics, HOUR);
    let mut client = V4Client::start(gw.v4_options(sub, &token));
    assert_eq!(
        client.connack().await.code,
        ConnectReturnCode::Success,
        "{sub}: CONNACK"
    );
    client
}

/// Persistent-session (clean session 0) options for `client_id`.
fn persistent(gw: &DevBinary, client_id: &str, token: &str) -> rumqttc::MqttOptions {
    let mut opts = gw.v4_options(client_id, token);
    opts.set_clean_session(false);
    opts
}

fn topics(publishes: &[rumqttc::Publish]) -> Vec<&str> {
    publishes.iter().map(|p| p.topic.as_str()).collect()
}

// ---------------------------------------------------------------------------
// 1. Resumed sessions
// ---------------------------------------------------------------------------

/// README, "Routing, sessions and back-pressure": "A resumed session is
/// narrowed to what the new token grants: subscriptions it does not cover
/// are dropped." A session subscribed to `a/#` and `b/#` under a wide
/// token resumes with one granting only `a/#`: it gets `a/` messages, the
/// queued one and a live one, and no `b/` message, queued or live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_session_is_narrowed_to_what_the_new_token_grants() {
    let gw = DevBinary::start("", "").await;
    let wide = gw.token("narrowed", &["a/#", "b/#"], HOUR);
    let mut device = V4Client::start(persistent(&gw, "narrowed-1", &wide));
    assert_eq!(device.connack().await.code, ConnectReturnCode::Success);
    assert_eq!(
        device
            .subscribe_many(&[("a/#", QoS::AtLeastOnce), ("b/#", QoS::AtLeastOnce)])
            .await,
        vec![SubscribeReasonCode::Success(QoS::AtLeastOnce); 2]
    );
    device.disconnect().await;

    // Queued for the parked session while the device is away.
    let mut publisher = connected(&gw, "publisher", &["#"]).await;
    publisher
        .publish("b/queued", QoS::AtLeastOnce, false, b"b")
        .await;
    publisher
        .publish("a/queued", QoS::AtLeastOnce, false, b"a")
        .await;

    let narrow = gw.token("narrowed", &["a/#"], HOUR);
    let mut device = V4Client::start(persistent(&gw, "narrowed-1", &narrow));
    let ack = device.connack().await;
    assert_eq!(ack.code, ConnectReturnCode::Success);
    assert!(ack.session_present, "the session was resumed");
    assert_eq!(&device.expect_publish("a/queued").await.payload[..], b"a");

    // Live: b/ first, then a/, from one publisher into one queue.
    publisher
        .publish("b/live", QoS::AtLeastOnce, false, b"b")
        .await;
    publisher
        .publish("a/live", QoS::AtLeastOnce, false, b"a")
        .await;
    assert_eq!(&device.expect_publish("a/live").await.payload[..], b"a");

    let seen = until_own_marker(&mut device, "a/marker").await;
    let outside: Vec<&str> = topics(&seen)
        .into_iter()
        .filter(|t| !t.starts_with("a/"))
        .collect();
    assert!(
        outside.is_empty(),
        "the resumed session got messages its new token does not grant: {outside:?}"
    );
    gw.assert_no_panic();
}

// ---------------------------------------------------------------------------
// 2. The will after re-authentication
// ---------------------------------------------------------------------------

/// An MQTT 5 device with a will on `w/1`, connected with a token granting
/// `w/#` and `x/#`, re-authenticates with a token granting `reauth_topics`
/// and then vanishes (its socket dropped, no DISCONNECT). Returns what a
/// watcher of `w/#` received by the time the gateway was done with it.
async fn will_after_reauthentication(
    gw: &DevBinary,
    watcher: &mut V4Client,
    client_id: &str,
    reauth_topics: &[&str],
) -> Vec<rumqttc::Publish> {
    let wide = gw.token(client_id, &["w/#", "x/#"], HOUR);
    let connect = v5::Connect::new(client_id, &wide).will(v5::Will::new("w/1", b"gone"));
    let (mut device, ack) = Raw5::over(gw.raw().await, connect).await;
    assert_eq!(ack.reason, 0, "{client_id}: CONNACK {ack:?}");
    let fresh = gw.token(client_id, reauth_topics, HOUR);
    match device.reauthenticate(&fresh).await {
        Some(v5::Packet::Auth { reason: 0, .. }) => {}
        other => panic!("{client_id}: expected AUTH success, got {other:?}"),
    }
    let since = gw.served.log().len();
    drop(device);
    handed_back(gw, since, client_id, client_id).await;
    until_own_marker(watcher, "w/marker").await
}

/// README, "Fresh tokens without reconnecting": "On success the new
/// grants replace the old at once (subscriptions they no longer cover are
/// removed and logged, a will they no longer allow is dropped)". The
/// control: a re-authentication that keeps `w/#` keeps the will, which the
/// unclean end then publishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_will_the_new_token_no_longer_allows_is_dropped() {
    let gw = DevBinary::start("", "").await;
    let mut watcher = connected(&gw, "will-watch", &["w/#"]).await;
    assert_eq!(
        watcher.subscribe("w/#", QoS::AtLeastOnce).await,
        vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]
    );

    let kept = will_after_reauthentication(&gw, &mut watcher, "dev-kept", &["w/#", "x/#"]).await;
    assert_eq!(
        topics(&kept),
        ["w/1"],
        "control: a will still granted is published on an unclean end"
    );

    let narrowed = will_after_reauthentication(&gw, &mut watcher, "dev-narrowed", &["x/#"]).await;
    assert!(
        narrowed.is_empty(),
        "a will the new token does not grant was published: {narrowed:?}"
    );
    wait_for_line(
        &gw,
        0,
        &[
            "will dropped: the new token does not grant its topic",
            "dev-narrowed",
        ],
    )
    .await;
    gw.assert_no_panic();
}

// ---------------------------------------------------------------------------
// 3. Slow subscribers with persistent sessions
// ---------------------------------------------------------------------------

/// The queue bound of the slow-subscriber test.
const SLOW_QUEUE: usize = 20;
/// Its in-flight window.
const SLOW_INFLIGHT: usize = 10;

/// An MQTT 3.1.1 subscriber to `slow/#` at QoS 1 on a 4 KiB receive
/// buffer that never reads (nor acknowledges) after its SUBACK.
async fn stalled(gw: &DevBinary, client_id: &str, token: &str, clean: bool) -> RawClient {
    let mut raw = RawClient::connect_with_receive_buffer(gw.addr(), &gw.ca, 4096).await;
    let connect = mqtt::Connect::new(4, client_id)
        .username("JWT")
        .password(token)
        .clean(clean);
    raw.send_ok(&connect.encode()).await;
    let (_, code) = mqtt::parse_connack(&raw.read_packet().await).expect("a CONNACK");
    assert_eq!(code, 0, "{client_id}: CONNACK");
    raw.send_ok(&mqtt::subscribe(4, 1, "slow/#", 1)).await;
    let suback = raw.read_packet().await;
    assert_eq!(
        mqtt::parse_ack_codes(4, &suback),
        Some((1, vec![1])),
        "{client_id}: SUBACK {suback:02x?}"
    );
    raw
}

/// README, "Routing, sessions and back-pressure", the `disconnect` policy:
/// for QoS 1/2 "the connection is closed (...); a clean session ends with
/// it, a persistent one keeps its queue for the client's return". Two
/// subscribers stop reading, one persistent, one clean; a publisher sends
/// 40 numbered QoS 1 messages past the in-flight window and queue bound.
/// Both are disconnected as slow. The persistent one comes back to every
/// message it had been given, in flight or queued, in order from the
/// first; the clean one comes back to no session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_slow_subscriber_keeps_its_queue_for_its_return() {
    let gw = DevBinary::start(
        "",
        &format!(
            "[sessions]\nslow_subscriber = \"disconnect\"\nslow_subscriber_timeout_ms = 500\n\
             max_inflight = {SLOW_INFLIGHT}\nmax_queued_messages = {SLOW_QUEUE}\n"
        ),
    )
    .await;
    let token = gw.token("slow", &["slow/#"], HOUR);
    let persistent_sub = stalled(&gw, "slow-persistent", &token, false).await;
    let clean_sub = stalled(&gw, "slow-clean", &token, true).await;

    let since = gw.served.log().len();
    let mut publisher = connected(&gw, "slow-pub", &["slow/#"]).await;
    for n in 0..40 {
        publisher
            .publish("slow/t", QoS::AtLeastOnce, false, n.to_string().as_bytes())
            .await;
    }
    for id in ["slow-persistent", "slow-clean"] {
        wait_for_line(
            &gw,
            since,
            &[
                "slow subscriber: disconnecting",
                format!("\"{id}\"").as_str(),
            ],
        )
        .await;
    }
    drop((persistent_sub, clean_sub));

    let mut back = V4Client::start(persistent(&gw, "slow-persistent", &token));
    let ack = back.connack().await;
    assert_eq!(ack.code, ConnectReturnCode::Success);
    assert!(ack.session_present, "the persistent session was kept");
    // At least the queue's worth, then a last message, which has room by
    // then: everything before it is what the session kept.
    let mut got = Vec::new();
    let deadline = Instant::now() + WAIT;
    while got.len() < SLOW_QUEUE {
        assert!(
            Instant::now() < deadline,
            "only {} messages came back: {:?}",
            got.len(),
            got
        );
        got.extend(back.publishes_within(Duration::from_millis(100)).await);
    }
    publisher
        .publish("slow/t", QoS::AtLeastOnce, false, b"end")
        .await;
    loop {
        let p = back.expect_publish("slow/t").await;
        if &p.payload[..] == b"end" {
            break;
        }
        got.push(p);
    }
    got.extend(back.take_other_publishes());
    let numbers: Vec<usize> = got
        .iter()
        .map(|p| {
            String::from_utf8_lossy(&p.payload)
                .parse()
                .unwrap_or_else(|_| panic!("a numbered message: {p:?}"))
        })
        .collect();
    let first: Vec<usize> = (0..numbers.len()).collect();
    assert_eq!(
        numbers, first,
        "the kept queue: every message from the first, in order"
    );
    assert!(
        (SLOW_QUEUE..=SLOW_QUEUE + SLOW_INFLIGHT).contains(&numbers.len()),
        "the queue ({SLOW_QUEUE}) and the in-flight window ({SLOW_INFLIGHT}) came back, no more: {}",
        numbers.len()
    );
    println!(
        "a persistent slow subscriber got {} of the 40 messages back on its return",
        numbers.len()
    );

    let mut clean = V4Client::start(persistent(&gw, "slow-clean", &token));
    let ack = clean.connack().await;
    assert_eq!(ack.code, ConnectReturnCode::Success);
    assert!(
        !ack.session_present,
        "a clean session ends with its slow connection"
    );
    gw.assert_no_panic();
}

// ---------------------------------------------------------------------------
// 4. kill -9
// ---------------------------------------------------------------------------

/// Rows of the sessions table for `client_id`, read beside the running
/// gateway (WAL mode lets a reader in; it sees only what is committed).
fn session_rows(state_dir: &Path, client_id: &str) -> u64 {
    let db = rusqlite::Connection::open_with_flags(
        state_dir.join("jwtgate.sqlite"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("open the database read-only");
    db.query_row(
        "SELECT COUNT(*) FROM sessions WHERE client_id = ?1",
        [client_id],
        |row| row.get(0),
    )
    .expect("count the session rows")
}

/// After a SIGKILL and a restart: `valve-1`'s persistent session is
/// there (session present) and its subscription to `cmd/valve/#` works.
async fn valve_session_is_back(gw: &DevBinary, opts: rumqttc::MqttOptions) {
    let mut valve = V4Client::start(opts);
    let ack = valve.connack().await;
    assert_eq!(ack.code, ConnectReturnCode::Success);
    assert!(
        ack.session_present,
        "the persistent session did not survive"
    );
    let mut operator = connected(gw, "operator", &["cmd/#"]).await;
    operator
        .publish("cmd/valve/open", QoS::AtLeastOnce, false, b"open 30%")
        .await;
    assert_eq!(
        &valve.expect_publish("cmd/valve/open").await.payload[..],
        b"open 30%",
        "the session's subscription did not survive"
    );
}

/// README, "Known limitations": "A persistent session is written to the
/// durable store when its client goes away (its subscriptions, expiry and
/// the messages it holds)", and "retained messages ... are committed
/// before the PUBACK". So after `kill -9` and a restart, a retained message
/// set (and one cleared) before the kill is as it was, and a parked
/// persistent session is there with its subscription. (The messages queued
/// for a parked session are held to their promise in `tests/restart.rs`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_messages_and_a_parked_sessions_subscriptions_survive_a_kill() {
    let mut gw = DevBinary::start("", "").await;
    let valve_token = gw.token("valve", &["cmd/valve/#"], HOUR);
    let opts = persistent(&gw, "valve-1", &valve_token);
    let mut valve = V4Client::start(opts.clone());
    assert_eq!(valve.connack().await.code, ConnectReturnCode::Success);
    assert_eq!(
        valve.subscribe("cmd/valve/#", QoS::AtLeastOnce).await,
        vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]
    );
    valve.disconnect().await;

    let mut panel = connected(&gw, "panel", &["status/#"]).await;
    panel
        .publish("status/panel", QoS::AtLeastOnce, true, b"21.5C")
        .await;
    panel
        .publish("status/gone", QoS::AtLeastOnce, true, b"soon gone")
        .await;
    panel
        .publish("status/gone", QoS::AtLeastOnce, true, b"")
        .await;
    panel.disconnect().await;

    // "Written as they change": no ack tells the client when, so wait
    // until the parked session is committed, which a kill cannot undo.
    let state = gw.dir().join("state");
    let deadline = Instant::now() + WAIT;
    while session_rows(&state, "valve-1") == 0 {
        assert!(
            Instant::now() < deadline,
            "the parked session was not written within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    gw.served.kill().await;
    gw.restart().await;

    // The restarted gateway listens on a new port: options made now.
    let opts = persistent(&gw, "valve-1", &valve_token);
    valve_session_is_back(&gw, opts).await;

    let mut reader = connected(&gw, "dashboard", &["status/#"]).await;
    reader.subscribe("status/#", QoS::AtLeastOnce).await;
    let panel_status = reader.expect_publish("status/panel").await;
    assert_eq!(&panel_status.payload[..], b"21.5C");
    assert!(panel_status.retain, "sent as retained");
    let more = until_own_marker(&mut reader, "status/dashboard").await;
    assert!(
        more.is_empty(),
        "only status/panel is retained (status/gone was cleared before the kill): {more:?}"
    );
    gw.assert_no_panic();
}

/// The same promise for a persistent session whose client is connected
/// when the gateway is killed (README, "Sessions and restarts"): its SUBACK
/// is sent once the subscription is written down, so a kill -9 right
/// after the SUBACK finds the session and its subscription there after the
/// restart ("session present 1", and a command on the filter arrives).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connected_persistent_sessions_subscriptions_survive_a_kill() {
    let mut gw = DevBinary::start("", "").await;
    let valve_token = gw.token("valve", &["cmd/valve/#"], HOUR);
    let opts = persistent(&gw, "valve-1", &valve_token);
    let mut valve = V4Client::start(opts.clone());
    assert_eq!(valve.connack().await.code, ConnectReturnCode::Success);
    assert_eq!(
        valve.subscribe("cmd/valve/#", QoS::AtLeastOnce).await,
        vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]
    );
    gw.served.kill().await;
    drop(valve);
    gw.restart().await;

    // The restarted gateway listens on a new port: options made now.
    let opts = persistent(&gw, "valve-1", &valve_token);
    valve_session_is_back(&gw, opts).await;
    gw.assert_no_panic();
}

// ---------------------------------------------------------------------------
// 5. The MQTT 5 bridge's no-local
// ---------------------------------------------------------------------------

/// README, "Connecting the site to a central broker", "No loops": "With
/// `protocol = 5` the bridge also subscribes with no-local, so the central
/// broker does not even send the bridge's own forwards back." An MQTT 5
/// bridge to a real Mosquitto forwards `cmd/#` and subscribes to the same
/// topics there. A device's publish on `cmd/ack` reaches the central broker
/// once and a local watcher once: the copy Mosquitto would hand back to
/// the bridge (and the bridge would route locally, as over MQTT 3.1.1) is
/// never sent. A command the operator sends after the forward arrived
/// marks the point by which such a copy would have come in, since
/// Mosquitto sends the bridge its messages in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mqtt5_bridge_is_not_sent_its_own_forwards_back() {
    let mosquitto = Mosquitto::start().await;
    let secrets = tempfile::tempdir().expect("temp dir");
    let password = secrets.path().join("uplink.password");
    mosquitto.write_password_file(&password);
    let table = format!(
        "[[bridge]]\nname = \"cloud\"\nremote = \"mqtts://127.0.0.1:{port}\"\n\
         ca_file = \"{ca}\"\nclient_id = \"site-42\"\nusername = \"site-42\"\n\
         password_file = \"{password}\"\nkeep_alive_secs = 5\nprotocol = 5\n\
         forward = [ {{ local = \"cmd/#\", remote_prefix = \"site-42/\", qos = 1 }} ]\n\
         subscribe = [ {{ remote = \"site-42/cmd/#\", strip_prefix = \"site-42/\", local_prefix = \"\", qos = 1 }} ]\n",
        port = mosquitto.tls_port(),
        ca = mosquitto.ca_pem_path().display(),
        password = password.display(),
    );
    let gw = DevBinary::start("", &table).await;
    gw.served.wait_for_log(0, "bridge connected").await;

    let mut panel = connected(&gw, "panel", &["cmd/#"]).await;
    assert_eq!(
        panel.subscribe("cmd/#", QoS::AtLeastOnce).await,
        vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]
    );
    let mut device = connected(&gw, "thermostat", &["cmd/#"]).await;
    let mut central = mosquitto.subscriber("central", "site-42/#").await;
    let mut operator = mosquitto.connected("operator").await;

    // The bridge's subscription is in place: a command reaches the panel.
    operator
        .publish("site-42/cmd/probe", QoS::AtLeastOnce, false, b"probe")
        .await;
    panel.expect_publish("cmd/probe").await;

    device
        .publish("cmd/ack", QoS::AtLeastOnce, false, b"done")
        .await;
    assert_eq!(
        &central.expect_publish("site-42/cmd/ack").await.payload[..],
        b"done",
        "the forward rule works"
    );
    operator
        .publish("site-42/cmd/marker", QoS::AtLeastOnce, false, b"marker")
        .await;
    panel.expect_publish("cmd/marker").await;
    central.expect_publish("site-42/cmd/marker").await;

    let local: Vec<rumqttc::Publish> = panel.take_other_publishes();
    let acks = local.iter().filter(|p| p.topic == "cmd/ack").count();
    assert_eq!(
        acks,
        1,
        "the device's message once, never a copy handed back by the central broker: {:?}",
        topics(&local)
    );
    let remote = central.take_other_publishes();
    assert!(
        remote.iter().all(|p| p.topic != "site-42/cmd/ack"),
        "forwarded again: {:?}",
        topics(&remote)
    );
    gw.assert_no_panic();
}
