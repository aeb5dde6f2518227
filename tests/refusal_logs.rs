//! Refusals counted, not each logged (issue 19, item 7), against the real
//! binary over TLS: a client sends one SUBSCRIBE of thousands of filters it
//! is not granted and a flood of PUBLISHes it is not granted; the gateway's
//! log about it stays a few lines (the first of each kind, then how many
//! were left out), the metrics count every refusal, and a well-behaved
//! device connects, publishes and receives meanwhile. The same for an MQTT
//! 5 client re-authenticating in a loop.

// Tests panic on purpose when a fixture cannot be set up.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::raw5::v5;
use common::scrape::{metrics_port, scrape, value};
use common::{DevBinary, V4Client, mqtt, now_unix};
use rumqttc::{ConnectReturnCode, QoS, SubscribeReasonCode};
use serde_json::{Value, json};

/// Filters in the one SUBSCRIBE, each distinct and refused.
const FILTERS: usize = 5_000;
/// Refused QoS 0 PUBLISHes.
const PUBLISHES: usize = 20_000;
/// Lines of one kind written in full (`gateway::quiet::LOGGED_IN_FULL`).
const IN_FULL: usize = 5;

/// Re-authentications in the loop.
const REAUTHS: usize = 500;

const SUBSCRIPTIONS_REFUSED: &str = "jwtgate_subscriptions_refused_total";
const PUBLISHES_REFUSED: &str = "jwtgate_publishes_refused_total";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_refusals_writes_a_few_lines_and_the_metrics_count_them_all() {
    let gw = DevBinary::start(
        "",
        "[log]\nformat = \"json\"\n[metrics]\nlisten = \"127.0.0.1:0\"\n",
    )
    .await;
    let port = metrics_port(&gw).await;
    let before = scrape(port).await;
    let ttl = Duration::from_secs(600);

    let good = gw.token("meter-1", &["meter/#"], ttl);
    let mut device = V4Client::start(gw.v4_options("meter-1", &good));
    assert_eq!(device.connack().await.code, ConnectReturnCode::Success);
    assert_eq!(
        device.subscribe("meter/#", QoS::AtLeastOnce).await,
        vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]
    );

    let token = gw.token("flooder", &["allowed/#"], ttl);
    let mut raw = gw.raw().await;
    let started = Instant::now();
    raw.send_ok(
        &mqtt::Connect::new(4, "flooder")
            .username("JWT")
            .password(&token)
            .encode(),
    )
    .await;
    assert_eq!(raw.read_packet().await, mqtt::CONNACK_OK_V4);
    let mut subscribe = 1u16.to_be_bytes().to_vec();
    for i in 0..FILTERS {
        mqtt::string(format!("denied/{i}/#").as_bytes(), &mut subscribe);
        subscribe.push(0);
    }
    raw.send_ok(&mqtt::frame(0x82, &subscribe)).await;
    let suback = raw.read_packet().await;
    let codes = &suback[suback.len() - FILTERS..];
    assert!(
        codes.iter().all(|&code| code == 0x80),
        "every filter refused"
    );

    let flood: Vec<u8> = (0..PUBLISHES)
        .flat_map(|i| mqtt::publish(4, &format!("denied/{i}"), b"x", 0, 0))
        .collect();
    let flooding = tokio::spawn(async move {
        raw.send_ok(&flood).await;
        raw
    });
    // The well-behaved device, while the flood is read.
    device
        .publish("meter/1", QoS::AtLeastOnce, false, b"21.5")
        .await;
    assert_eq!(device.expect_publish("meter/1").await.payload, "21.5");
    let mut raw = flooding.await.unwrap();
    // Packets are handled in order: the PINGRESP comes after every refusal.
    raw.send_ok(&mqtt::PINGREQ).await;
    assert_eq!(raw.read_packet().await, mqtt::PINGRESP);
    let elapsed = started.elapsed();

    let after = scrape(port).await;
    let moved = |series: &str| value(&after, series) - value(&before, series);
    assert_eq!(moved(SUBSCRIPTIONS_REFUSED), FILTERS as f64);
    assert_eq!(moved(PUBLISHES_REFUSED), PUBLISHES as f64);

    raw.send_ok(&mqtt::DISCONNECT).await;
    gw.served
        .wait_for_log(0, "\"kind\":\"publish refused\"")
        .await;
    gw.served
        .wait_for_log(0, "\"kind\":\"subscription refused\"")
        .await;
    let log = gw.served.log();
    let lines: Vec<Value> = log
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect();
    let flooder: Vec<&Value> = lines
        .iter()
        .filter(|line| line["client_id"] == "flooder")
        .collect();
    let in_full = |message: &str| {
        flooder
            .iter()
            .filter(|line| line["message"] == message)
            .count()
    };
    assert_eq!(in_full("subscription refused"), IN_FULL);
    assert_eq!(in_full("publish refused: topic not granted"), IN_FULL);
    let left_out = |kind: &str| -> u64 {
        flooder
            .iter()
            .filter(|line| line["kind"] == kind)
            .map(|line| line["suppressed"].as_u64().expect("a count"))
            .sum()
    };
    assert_eq!(left_out("subscription refused"), (FILTERS - IN_FULL) as u64);
    assert_eq!(left_out("publish refused"), (PUBLISHES - IN_FULL) as u64);
    // One summary per kind per 10 s of flooding, and one at the end.
    let bound = 2 * IN_FULL + 2 * (2 + elapsed.as_secs() as usize / 10) + 4;
    assert!(
        flooder.len() <= bound,
        "{} lines about the flooder, at most {bound} expected",
        flooder.len()
    );
    eprintln!(
        "{FILTERS} refused filters and {PUBLISHES} refused publishes in {elapsed:?}: \
         {} log lines about the client, {} bytes of log in all",
        flooder.len(),
        log.len()
    );

    // Still serving: the device goes on.
    device
        .publish("meter/2", QoS::AtLeastOnce, false, b"21.6")
        .await;
    assert_eq!(device.expect_publish("meter/2").await.payload, "21.6");
    gw.assert_no_panic();
}

/// The log's lines, each a JSON object.
fn json_lines(log: &str) -> Vec<Value> {
    log.lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reauthentication_loop_writes_a_few_lines_and_the_metrics_count_it_all() {
    let gw = DevBinary::start(
        "",
        "[log]\nformat = \"json\"\n[metrics]\nlisten = \"127.0.0.1:0\"\n",
    )
    .await;
    let port = metrics_port(&gw).await;
    let accepted = "jwtgate_reauthentications_total{outcome=\"accepted\"}";
    let before = value(&scrape(port).await, accepted);
    // Its client id is not its subject: the `${clientid}` grant is left
    // out, with a warning, at every verification.
    let token = gw.sign(&json!({
        "sub": "meter-9", "exp": now_unix() + 600, "topics": ["meter/#", "dev/${clientid}/#"]
    }));
    let mut raw = gw.raw().await;
    raw.send_ok(&v5::Connect::enhanced("m9", &token).encode())
        .await;
    assert!(matches!(
        v5::parse(&raw.read_packet().await),
        v5::Packet::ConnAck(ack) if ack.reason == 0
    ));
    let again: Vec<u8> = (0..REAUTHS).flat_map(|_| v5::reauth(&token)).collect();
    raw.send_ok(&again).await;
    for _ in 0..REAUTHS {
        assert!(matches!(
            v5::parse(&raw.read_packet().await),
            v5::Packet::Auth { reason: 0, .. }
        ));
    }
    assert_eq!(
        value(&scrape(port).await, accepted) - before,
        REAUTHS as f64
    );
    raw.send_ok(&v5::disconnect(0, &v5::Props::new())).await;
    gw.served
        .wait_for_log(0, "\"kind\":\"re-authentication\"")
        .await;
    gw.served
        .wait_for_log(0, "\"kind\":\"grant ignored\"")
        .await;
    let lines = json_lines(&gw.served.log());
    let about: Vec<&Value> = lines.iter().filter(|l| l["client_id"] == "m9").collect();
    let count = |message: &str| about.iter().filter(|l| l["message"] == message).count();
    assert_eq!(count("client re-authenticated"), IN_FULL);
    // Once at CONNECT, then the re-authentications' allowance.
    assert_eq!(count("ignoring a grant of the token"), 1 + IN_FULL);
    let left_out = |kind: &str| -> u64 {
        about
            .iter()
            .filter(|l| l["kind"] == kind)
            .map(|l| l["suppressed"].as_u64().expect("a count"))
            .sum()
    };
    assert_eq!(left_out("re-authentication"), (REAUTHS - IN_FULL) as u64);
    assert_eq!(left_out("grant ignored"), (REAUTHS - IN_FULL) as u64);
    assert!(about.len() < 30, "{} lines about the client", about.len());
    gw.assert_no_panic();
}
