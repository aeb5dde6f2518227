//! Integration tests for jwtgate's routing core (issue 8): delivered QoS,
//! shared subscriptions and the sequence that bricked rumqttd's router,
//! retained messages, persistent sessions, back-pressure instead of loss,
//! the slow-subscriber policy, bounded memory and the per-session caps.
//!
//! The real gateway in-process over real TLS, driven by rumqttc (MQTT 3.1.1
//! and 5); raw sockets ([`RawDevice`]) where a test needs a device that
//! never acknowledges, drops its connection mid-delivery or stops reading;
//! the real binary where a test needs the process's memory.
//!
//! The limits on waits ([`WAIT`]) only keep a broken test from hanging, and
//! [`QUIET`] is the window of a negative check; none is a speed
//! requirement.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::{
    DevBinary, QUIET, RawClient, Read, TestGateway, V4Client, V5Client, WAIT, capture_logs, mqtt,
};
use jwtgate::config::{Config, SlowSubscriber};
use rumqttc::v5::mqttbytes::QoS as QoS5;
use rumqttc::v5::mqttbytes::v5::{
    ConnectReturnCode as Code5, Filter, Packet as Packet5, PubAckReason, PubRecReason,
    PublishProperties, SubscribeReasonCode as Sub5, UnsubAckReason,
};
use rumqttc::{QoS, SubscribeReasonCode};

const HOUR: Duration = Duration::from_secs(3600);

/// The log capture has to be installed before the first gateway of this
/// test binary logs, so every test starts its gateway here.
async fn start() -> TestGateway {
    start_with(|_| {}).await
}

async fn start_with(tweak: impl FnOnce(&mut Config)) -> TestGateway {
    capture_logs();
    TestGateway::start_with(tweak).await
}

/// A gateway for the stalled-subscriber tests: at most 100 + 50 of the
/// busy topic's messages can be on their way to a stalled subscriber,
/// whatever its socket buffers hold, and it may hold publishers back for
/// half a second.
async fn busy_gateway(policy: SlowSubscriber) -> TestGateway {
    start_with(|cfg| {
        cfg.sessions.max_inflight = 100;
        cfg.sessions.max_queued_messages = 50;
        cfg.sessions.slow_subscriber = policy;
        cfg.sessions.slow_subscriber_timeout = Duration::from_millis(500);
    })
    .await
}

fn qos4(qos: u8) -> QoS {
    match qos {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        2 => QoS::ExactlyOnce,
        other => panic!("no QoS {other}"),
    }
}

fn qos5(qos: u8) -> QoS5 {
    match qos {
        0 => QoS5::AtMostOnce,
        1 => QoS5::AtLeastOnce,
        2 => QoS5::ExactlyOnce,
        other => panic!("no QoS {other}"),
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

// ---------------------------------------------------------------------------
// A device on a raw socket
// ---------------------------------------------------------------------------

/// A device speaking MQTT over a raw TLS socket: it acknowledges a PUBLISH
/// only when told to, and drops its connection like a device whose radio
/// drops (no DISCONNECT, no PUBACK).
struct RawDevice {
    raw: RawClient,
    level: u8,
    next_pkid: u16,
    /// Publishes that arrived while waiting for something else, not yet
    /// acknowledged.
    pending: Vec<mqtt::Publish>,
}

impl RawDevice {
    /// Connects `client_id` with `token` at protocol `level`. `persistent`
    /// is clean session 0 (3.1.1), or clean start 0 with a session expiry
    /// of an hour (MQTT 5). Asserts CONNACK success; returns the device and
    /// the session-present flag.
    async fn connect(
        gw: &TestGateway,
        level: u8,
        client_id: &str,
        token: &str,
        persistent: bool,
    ) -> (RawDevice, bool) {
        RawDevice::connect_over(gw.raw().await, level, client_id, token, persistent).await
    }

    /// [`RawDevice::connect`] over a socket already open.
    async fn connect_over(
        mut raw: RawClient,
        level: u8,
        client_id: &str,
        token: &str,
        persistent: bool,
    ) -> (RawDevice, bool) {
        let mut connect = mqtt::Connect::new(level, client_id)
            .username("JWT")
            .password(token)
            .keep_alive(60)
            .clean(!persistent);
        if persistent && level == 5 {
            connect = connect.session_expiry(3600);
        }
        raw.send_ok(&connect.encode()).await;
        let frame = raw.read_packet().await;
        let (present, code) = mqtt::parse_connack(&frame)
            .unwrap_or_else(|| panic!("{client_id}: expected a CONNACK, got {frame:02x?}"));
        assert_eq!(code, 0, "{client_id}: CONNACK code ({frame:02x?})");
        let device = RawDevice {
            raw,
            level,
            next_pkid: 1,
            pending: Vec::new(),
        };
        (device, present)
    }

    fn pkid(&mut self) -> u16 {
        let pkid = self.next_pkid;
        self.next_pkid = self.next_pkid.checked_add(1).unwrap_or(1);
        pkid
    }

    /// The next frame; panics if the connection closes or after [`WAIT`].
    async fn frame(&mut self, what: &str) -> Vec<u8> {
        match self.raw.read_within(WAIT).await {
            Some(Read::Packet(frame)) => frame,
            Some(Read::Closed(rest)) => {
                panic!("connection closed while waiting for {what} ({rest:02x?})")
            }
            None => panic!("timed out waiting for {what}"),
        }
    }

    /// Waits for the SUBACK or UNSUBACK (`kind` 9 or 11) of `pkid` and
    /// returns its codes; publishes arriving meanwhile are kept.
    async fn ack_codes(&mut self, kind: u8, pkid: u16) -> Vec<u8> {
        loop {
            let frame = self.frame("SUBACK/UNSUBACK").await;
            if let Some(publish) = mqtt::parse_publish(self.level, &frame) {
                self.pending.push(publish);
                continue;
            }
            assert_eq!(
                mqtt::packet_type(&frame),
                Some(kind),
                "expected packet type {kind}, got {frame:02x?}"
            );
            let (acked, codes) = mqtt::parse_ack_codes(self.level, &frame)
                .unwrap_or_else(|| panic!("malformed ack {frame:02x?}"));
            assert_eq!(acked, pkid, "ack for another packet: {frame:02x?}");
            return codes;
        }
    }

    /// Subscribes to one filter; returns the SUBACK codes.
    async fn subscribe(&mut self, filter: &str, qos: u8) -> Vec<u8> {
        let pkid = self.pkid();
        let packet = mqtt::subscribe(self.level, pkid, filter, qos);
        self.raw.send_ok(&packet).await;
        self.ack_codes(9, pkid).await
    }

    /// Unsubscribes from one filter; returns the UNSUBACK codes (none in
    /// 3.1.1).
    async fn unsubscribe(&mut self, filter: &str) -> Vec<u8> {
        let pkid = self.pkid();
        let packet = mqtt::unsubscribe(self.level, pkid, filter);
        self.raw.send_ok(&packet).await;
        self.ack_codes(11, pkid).await
    }

    /// The next PUBLISH, not acknowledged.
    async fn next_publish(&mut self) -> mqtt::Publish {
        if !self.pending.is_empty() {
            return self.pending.remove(0);
        }
        let frame = self.frame("a PUBLISH").await;
        mqtt::parse_publish(self.level, &frame)
            .unwrap_or_else(|| panic!("expected a PUBLISH, got {frame:02x?}"))
    }

    /// Acknowledges `publish` the way its QoS asks: PUBACK, or PUBREC then
    /// (after the server's PUBREL) PUBCOMP.
    async fn ack(&mut self, publish: &mqtt::Publish) {
        match publish.qos {
            0 => {}
            1 => self.raw.send_ok(&mqtt::puback(publish.pkid)).await,
            _ => {
                self.raw.send_ok(&mqtt::pubrec(publish.pkid)).await;
                loop {
                    let frame = self.frame("PUBREL").await;
                    if let Some(other) = mqtt::parse_publish(self.level, &frame) {
                        self.pending.push(other);
                        continue;
                    }
                    assert_eq!(
                        mqtt::packet_type(&frame),
                        Some(6),
                        "expected PUBREL, got {frame:02x?}"
                    );
                    break;
                }
                self.raw.send_ok(&mqtt::pubcomp(publish.pkid)).await;
            }
        }
    }

    /// Every PUBLISH until nothing arrives for [`QUIET`], each acknowledged,
    /// then those arriving before the answer to a PINGREQ ([`RawDevice::ping`]):
    /// the device was served throughout, so "nothing" means nothing was
    /// sent. Panics if the connection closes.
    async fn publishes_until_quiet(&mut self) -> Vec<mqtt::Publish> {
        let mut seen = Vec::new();
        for publish in std::mem::take(&mut self.pending) {
            self.ack(&publish).await;
            seen.push(publish);
        }
        loop {
            match self.raw.read_within(QUIET).await {
                None => {
                    seen.extend(self.ping().await);
                    return seen;
                }
                Some(Read::Closed(rest)) => {
                    panic!(
                        "connection closed after {} publishes ({rest:02x?})",
                        seen.len()
                    )
                }
                Some(Read::Packet(frame)) => {
                    let publish = mqtt::parse_publish(self.level, &frame)
                        .unwrap_or_else(|| panic!("expected a PUBLISH, got {frame:02x?}"));
                    self.ack(&publish).await;
                    seen.push(publish);
                }
            }
        }
    }

    /// PINGREQ, then the PUBLISHes (acknowledged) that arrive before the
    /// PINGRESP: the connection is alive and everything queued before the
    /// ping has been handed over.
    async fn ping(&mut self) -> Vec<mqtt::Publish> {
        self.raw.send_ok(&mqtt::PINGREQ).await;
        let mut seen = Vec::new();
        loop {
            let frame = self.frame("PINGRESP").await;
            if frame == mqtt::PINGRESP {
                return seen;
            }
            let publish = mqtt::parse_publish(self.level, &frame)
                .unwrap_or_else(|| panic!("expected PINGRESP, got {frame:02x?}"));
            self.ack(&publish).await;
            seen.push(publish);
        }
    }
}

/// The topics of `publishes`, in order.
fn topics(publishes: &[mqtt::Publish]) -> Vec<&str> {
    publishes.iter().map(|p| p.topic.as_str()).collect()
}

/// The success SUBACK code at `level` for a granted QoS, as on the wire.
fn granted(qos: u8) -> Vec<u8> {
    vec![qos]
}

// ---------------------------------------------------------------------------
// Delivered QoS
// ---------------------------------------------------------------------------

/// MQTT 3.1.1 §3.8.4 / MQTT 5 §3.8.4: a message is delivered at the lower
/// of its publish QoS and the QoS granted to the subscription, never
/// upgraded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivered_qos_is_the_minimum_of_publish_and_granted_qos() {
    let gw = start().await;
    let token = gw.token("qos", &["q/#"], HOUR);
    let mut sub4 = gw.v4_connected("qos-sub4", &token).await;
    let mut sub5 = gw.v5_connected("qos-sub5", &token).await;
    let filters: Vec<(String, u8)> = (0..3).map(|s| (format!("q/s{s}/+"), s)).collect();
    let f4: Vec<(&str, QoS)> = filters
        .iter()
        .map(|(f, q)| (f.as_str(), qos4(*q)))
        .collect();
    let f5: Vec<(&str, QoS5)> = filters
        .iter()
        .map(|(f, q)| (f.as_str(), qos5(*q)))
        .collect();
    assert_eq!(
        sub4.subscribe_many(&f4).await,
        (0..3)
            .map(|q| SubscribeReasonCode::Success(qos4(q)))
            .collect::<Vec<_>>()
    );
    assert_eq!(
        sub5.subscribe_many(&f5).await,
        (0..3).map(|q| Sub5::Success(qos5(q))).collect::<Vec<_>>()
    );

    let mut pub4 = gw.v4_connected("qos-pub4", &token).await;
    let mut pub5 = gw.v5_connected("qos-pub5", &token).await;
    for sub_qos in 0..3u8 {
        for pub_qos in 0..3u8 {
            pub4.publish(
                &format!("q/s{sub_qos}/v4p{pub_qos}"),
                qos4(pub_qos),
                false,
                b"from v4",
            )
            .await;
            pub5.publish(
                &format!("q/s{sub_qos}/v5p{pub_qos}"),
                qos5(pub_qos),
                false,
                b"from v5",
            )
            .await;
        }
    }

    let mut wrong = Vec::new();
    for sub_qos in 0..3u8 {
        for pub_qos in 0..3u8 {
            let want = sub_qos.min(pub_qos);
            for from in ["v4", "v5"] {
                let topic = format!("q/s{sub_qos}/{from}p{pub_qos}");
                let got4 = sub4.expect_publish(&topic).await.qos;
                if got4 != qos4(want) {
                    wrong.push(format!("{topic} to 3.1.1: {got4:?}, want QoS {want}"));
                }
                let got5 = sub5.expect_publish(&topic).await.qos;
                if got5 != qos5(want) {
                    wrong.push(format!("{topic} to MQTT 5: {got5:?}, want QoS {want}"));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "delivered at the wrong QoS:\n{wrong:#?}");
    let extra4 = sub4.publishes_while_alive(QUIET).await;
    assert!(extra4.is_empty(), "3.1.1 duplicates: {extra4:?}");
    let extra5 = sub5.publishes_while_alive(QUIET).await;
    assert!(extra5.is_empty(), "MQTT 5 duplicates: {extra5:?}");
}

// ---------------------------------------------------------------------------
// Shared subscriptions
// ---------------------------------------------------------------------------

/// A subscriber of either protocol, for tests that gather what several
/// clients received.
enum Sub<'a> {
    V4(&'a mut V4Client),
    V5(&'a mut V5Client),
}

impl Sub<'_> {
    /// The payloads of the publishes arriving within `window` (the
    /// connection must not end).
    async fn payloads_within(&mut self, window: Duration) -> Vec<String> {
        match self {
            Sub::V4(c) => c
                .publishes_within(window)
                .await
                .iter()
                .map(|p| text(&p.payload))
                .collect(),
            Sub::V5(c) => c
                .publishes_within(window)
                .await
                .iter()
                .map(|p| text(&p.payload))
                .collect(),
        }
    }

    /// The payloads of the publishes already here and of those arriving
    /// before the answer to a round trip that proves the connection is
    /// still served.
    async fn payloads_while_alive(&mut self) -> Vec<String> {
        match self {
            Sub::V4(c) => c
                .publishes_while_alive(Duration::ZERO)
                .await
                .iter()
                .map(|p| text(&p.payload))
                .collect(),
            Sub::V5(c) => c
                .publishes_while_alive(Duration::ZERO)
                .await
                .iter()
                .map(|p| text(&p.payload))
                .collect(),
        }
    }
}

/// What each of `subs` receives until together they hold `expected`
/// messages (or [`WAIT`] passes), then for [`QUIET`] more and a round trip
/// on each connection, so that a duplicate shows and a member that got
/// nothing more was still connected.
async fn gather(subs: &mut [Sub<'_>], expected: usize) -> Vec<Vec<String>> {
    let mut got = vec![Vec::new(); subs.len()];
    let deadline = tokio::time::Instant::now() + WAIT;
    while got.iter().map(Vec::len).sum::<usize>() < expected
        && tokio::time::Instant::now() < deadline
    {
        for (sub, got) in subs.iter_mut().zip(got.iter_mut()) {
            got.extend(sub.payloads_within(Duration::from_millis(20)).await);
        }
    }
    // One quiet window for all: a duplicate has had time to arrive anywhere.
    tokio::time::sleep(QUIET).await;
    for (sub, got) in subs.iter_mut().zip(got.iter_mut()) {
        got.extend(sub.payloads_while_alive().await);
    }
    got
}

/// Asserts that `got` (per member) holds every one of `sent` exactly once
/// across the members.
fn assert_each_exactly_once(what: &str, sent: &[String], got: &[Vec<String>]) {
    let mut all: Vec<&String> = got.iter().flatten().collect();
    all.sort();
    let mut want: Vec<&String> = sent.iter().collect();
    want.sort();
    assert_eq!(
        all, want,
        "{what}: each message to exactly one member; per member: {got:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_subscription_gives_each_message_to_exactly_one_member() {
    let gw = start().await;
    let token = gw.token("worker", &["work/#"], HOUR);
    let mut m1 = gw.v4_connected("member-1", &token).await;
    let mut m2 = gw.v5_connected("member-2", &token).await;
    let mut m3 = gw.v4_connected("member-3", &token).await;
    let group = "$share/g/work/#";
    for m in [&mut m1, &mut m3] {
        assert_eq!(
            m.subscribe(group, QoS::AtLeastOnce).await,
            vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]
        );
    }
    assert_eq!(
        m2.subscribe(group, QoS5::AtLeastOnce).await,
        vec![Sub5::Success(QoS5::AtLeastOnce)]
    );
    let mut everything = gw.v4_connected("everything", &token).await;
    everything.subscribe("work/#", QoS::AtLeastOnce).await;

    // Authorized on the inner filter: a token for work/a/# may join a
    // group on work/a/#, not one on work/#.
    let narrow = gw.token("narrow", &["work/a/#"], HOUR);
    let mut n4 = gw.v4_connected("narrow-4", &narrow).await;
    let mut n5 = gw.v5_connected("narrow-5", &narrow).await;
    assert_eq!(
        n4.subscribe(group, QoS::AtLeastOnce).await,
        vec![SubscribeReasonCode::Failure]
    );
    assert_eq!(
        n5.subscribe(group, QoS5::AtLeastOnce).await,
        vec![Sub5::NotAuthorized]
    );
    // Same group name, another filter: another shared subscription.
    let narrow_group = "$share/g/work/a/#";
    assert_eq!(
        n4.subscribe(narrow_group, QoS::AtLeastOnce).await,
        vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]
    );
    assert_eq!(
        n5.subscribe(narrow_group, QoS5::AtLeastOnce).await,
        vec![Sub5::Success(QoS5::AtLeastOnce)]
    );

    let mut publisher = gw.v4_connected("work-pub", &token).await;
    let b: Vec<String> = (0..30).map(|n| format!("b-{n}")).collect();
    for payload in &b {
        publisher
            .publish("work/b/job", QoS::AtLeastOnce, false, payload.as_bytes())
            .await;
    }
    let got = gather(
        &mut [Sub::V4(&mut m1), Sub::V5(&mut m2), Sub::V4(&mut m3)],
        30,
    )
    .await;
    assert_each_exactly_once("(g, work/#) on work/b", &b, &got);
    let narrow_got = gather(&mut [Sub::V4(&mut n4), Sub::V5(&mut n5)], 0).await;
    assert!(
        narrow_got.iter().all(Vec::is_empty),
        "work/b is outside (g, work/a/#): {narrow_got:?}"
    );

    // work/a matches both shared subscriptions: each delivers it once.
    let a: Vec<String> = (0..10).map(|n| format!("a-{n}")).collect();
    for payload in &a {
        publisher
            .publish("work/a/job", QoS::AtLeastOnce, false, payload.as_bytes())
            .await;
    }
    let got = gather(
        &mut [Sub::V4(&mut m1), Sub::V5(&mut m2), Sub::V4(&mut m3)],
        10,
    )
    .await;
    assert_each_exactly_once("(g, work/#) on work/a", &a, &got);
    let got = gather(&mut [Sub::V4(&mut n4), Sub::V5(&mut n5)], 10).await;
    assert_each_exactly_once("(g, work/a/#) on work/a", &a, &got);

    // The plain subscription got everything, once.
    let mut plain = gather(&mut [Sub::V4(&mut everything)], 40).await.remove(0);
    plain.sort();
    let mut all: Vec<String> = b.iter().chain(&a).cloned().collect();
    all.sort();
    assert_eq!(plain, all, "the non-shared subscriber gets every message");

    // A member vanishes (its TCP connection drops). Its client id
    // reconnecting with a clean session proves its old session is gone;
    // from then on the two left share everything.
    m3.kill().await;
    gw.v4_connected("member-3", &token).await.disconnect().await;
    let c: Vec<String> = (0..30).map(|n| format!("c-{n}")).collect();
    for payload in &c {
        publisher
            .publish("work/c/job", QoS::AtLeastOnce, false, payload.as_bytes())
            .await;
    }
    let got = gather(&mut [Sub::V4(&mut m1), Sub::V5(&mut m2)], 30).await;
    assert_each_exactly_once("(g, work/#) after a member vanished", &c, &got);
    unrelated_device_is_served(&gw, 4).await;
}

// ---------------------------------------------------------------------------
// The brick sequence (issue 8 item 1) and its variants
// ---------------------------------------------------------------------------

/// The shared subscription of the brick sequence.
const UNIQ: &str = "$share/uniq/dev/1/#";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unsubscribe {
    Never,
    /// UNSUBSCRIBE after receiving the message, before dropping the
    /// connection.
    BeforeDrop,
    /// UNSUBSCRIBE once reconnected.
    AfterReconnect,
}

#[derive(Debug, Clone, Copy)]
struct Brick {
    level: u8,
    persistent: bool,
    qos: u8,
    unsubscribe: Unsubscribe,
}

/// The end of every brick sequence: a device that has nothing to do with
/// the first connects, subscribes, publishes and receives.
async fn unrelated_device_is_served(gw: &TestGateway, level: u8) {
    let token = gw.token("unrelated", &["other/#"], HOUR);
    if level == 5 {
        let mut c = gw.v5_connected("unrelated", &token).await;
        assert_eq!(
            c.subscribe("other/#", QoS5::AtLeastOnce).await,
            vec![Sub5::Success(QoS5::AtLeastOnce)]
        );
        c.publish("other/x", QoS5::AtLeastOnce, false, b"served")
            .await;
        assert_eq!(&c.expect_publish("other/x").await.payload[..], b"served");
    } else {
        let mut c = gw.v4_connected("unrelated", &token).await;
        assert_eq!(
            c.subscribe("other/#", QoS::AtLeastOnce).await,
            vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]
        );
        c.publish("other/x", QoS::AtLeastOnce, false, b"served")
            .await;
        assert_eq!(&c.expect_publish("other/x").await.payload[..], b"served");
    }
}

/// Issue 8 item 1: a device granted `dev/1/#` connects as `c`, subscribes
/// `$share/uniq/dev/1/#`, receives one message it never acknowledges and
/// drops its TCP connection. Then it reconnects (its session resumed with
/// the unacknowledged message re-sent when persistent, fresh when clean),
/// receives again, and an unrelated device is served.
async fn brick_sequence(case: Brick) {
    let Brick {
        level,
        persistent,
        qos,
        unsubscribe,
    } = case;
    let gw = start().await;
    let token = gw.token("dev-1", &["dev/1/#"], HOUR);
    let mut publisher = gw
        .v4_connected("brick-pub", &gw.token("brick-pub", &["dev/#"], HOUR))
        .await;

    let (mut device, present) = RawDevice::connect(&gw, level, "c", &token, persistent).await;
    assert!(!present, "{case:?}: no session before the first connection");
    assert_eq!(device.subscribe(UNIQ, qos).await, granted(qos), "{case:?}");
    publisher
        .publish("dev/1/a", qos4(qos), false, b"first")
        .await;
    let first = device.next_publish().await;
    assert_eq!(
        (first.topic.as_str(), &first.payload[..], first.qos),
        ("dev/1/a", &b"first"[..], qos),
        "{case:?}"
    );
    if unsubscribe == Unsubscribe::BeforeDrop {
        let codes = device.unsubscribe(UNIQ).await;
        if level == 5 {
            assert_eq!(codes, [0x00], "{case:?}: UNSUBACK");
        }
    }
    // The radio drops: no PUBACK/PUBREC, no DISCONNECT.
    drop(device);

    let (mut device, present) = RawDevice::connect(&gw, level, "c", &token, persistent).await;
    assert_eq!(present, persistent, "{case:?}: session present");
    let resent = device.publishes_until_quiet().await;
    if persistent {
        // MQTT 3.1.1 §4.4, MQTT 5 §4.4: the unacknowledged message is
        // re-sent with its packet identifier, flagged as a duplicate (an
        // UNSUBSCRIBE does not cancel a delivery already under way).
        assert_eq!(
            resent
                .iter()
                .map(|p| (p.topic.as_str(), &p.payload[..], p.qos, p.dup, p.pkid))
                .collect::<Vec<_>>(),
            [("dev/1/a", &b"first"[..], qos, true, first.pkid)],
            "{case:?}: the unacknowledged message is re-sent on resume"
        );
    } else {
        assert!(
            resent.is_empty(),
            "{case:?}: a clean session starts empty: {resent:?}"
        );
    }
    if unsubscribe == Unsubscribe::AfterReconnect {
        let codes = device.unsubscribe(UNIQ).await;
        if level == 5 {
            assert_eq!(
                codes,
                [0x00],
                "{case:?}: UNSUBACK of the resumed subscription"
            );
        }
    }
    let subscribed = persistent && unsubscribe == Unsubscribe::Never;
    if !subscribed {
        publisher
            .publish("dev/1/b", qos4(qos), false, b"unheard")
            .await;
        let stray = device.publishes_until_quiet().await;
        assert!(
            stray.is_empty(),
            "{case:?}: no subscription, no delivery: {stray:?}"
        );
        assert_eq!(device.subscribe(UNIQ, qos).await, granted(qos), "{case:?}");
    }
    publisher
        .publish("dev/1/c", qos4(qos), false, b"again")
        .await;
    let again = device.next_publish().await;
    assert_eq!(
        (again.topic.as_str(), &again.payload[..]),
        ("dev/1/c", &b"again"[..]),
        "{case:?}"
    );
    device.ack(&again).await;
    assert!(device.ping().await.is_empty(), "{case:?}: nothing more");

    unrelated_device_is_served(&gw, level).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn brick_v4_persistent_qos1() {
    brick_sequence(Brick {
        level: 4,
        persistent: true,
        qos: 1,
        unsubscribe: Unsubscribe::Never,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn brick_v5_persistent_qos1() {
    brick_sequence(Brick {
        level: 5,
        persistent: true,
        qos: 1,
        unsubscribe: Unsubscribe::Never,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn brick_v4_clean_qos1() {
    brick_sequence(Brick {
        level: 4,
        persistent: false,
        qos: 1,
        unsubscribe: Unsubscribe::Never,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn brick_v5_clean_qos1() {
    brick_sequence(Brick {
        level: 5,
        persistent: false,
        qos: 1,
        unsubscribe: Unsubscribe::Never,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn brick_v4_persistent_qos2() {
    brick_sequence(Brick {
        level: 4,
        persistent: true,
        qos: 2,
        unsubscribe: Unsubscribe::Never,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn brick_v5_persistent_qos2() {
    brick_sequence(Brick {
        level: 5,
        persistent: true,
        qos: 2,
        unsubscribe: Unsubscribe::Never,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn brick_v5_clean_qos2() {
    brick_sequence(Brick {
        level: 5,
        persistent: false,
        qos: 2,
        unsubscribe: Unsubscribe::Never,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn brick_v4_unsubscribe_before_drop() {
    brick_sequence(Brick {
        level: 4,
        persistent: true,
        qos: 1,
        unsubscribe: Unsubscribe::BeforeDrop,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn brick_v5_unsubscribe_before_drop() {
    brick_sequence(Brick {
        level: 5,
        persistent: true,
        qos: 1,
        unsubscribe: Unsubscribe::BeforeDrop,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn brick_v4_unsubscribe_after_reconnect() {
    brick_sequence(Brick {
        level: 4,
        persistent: true,
        qos: 1,
        unsubscribe: Unsubscribe::AfterReconnect,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn brick_v5_unsubscribe_after_reconnect() {
    brick_sequence(Brick {
        level: 5,
        persistent: true,
        qos: 1,
        unsubscribe: Unsubscribe::AfterReconnect,
    })
    .await;
}

/// Two devices (different subjects, both client id `c`) in one group
/// `uniq` with different filters: two shared subscriptions, each device
/// receiving only its own filter's messages. The first one drops mid
/// delivery; the second keeps receiving, the first resumes, and an
/// unrelated device is served.
async fn two_devices_one_group(level: u8) {
    let gw = start().await;
    let mut publisher = gw
        .v4_connected("brick-pub", &gw.token("brick-pub", &["dev/#"], HOUR))
        .await;
    let t1 = gw.token("dev-1", &["dev/1/#"], HOUR);
    let t2 = gw.token("dev-2", &["dev/2/#"], HOUR);
    let (mut d1, _) = RawDevice::connect(&gw, level, "c", &t1, true).await;
    let (mut d2, _) = RawDevice::connect(&gw, level, "c", &t2, true).await;
    assert_eq!(d1.subscribe("$share/uniq/dev/1/#", 1).await, granted(1));
    assert_eq!(d2.subscribe("$share/uniq/dev/2/#", 1).await, granted(1));

    for n in 0..3 {
        for dev in [1, 2] {
            publisher
                .publish(
                    &format!("dev/{dev}/{n}"),
                    QoS::AtLeastOnce,
                    false,
                    b"each its own",
                )
                .await;
        }
    }
    assert_eq!(
        topics(&d1.publishes_until_quiet().await),
        ["dev/1/0", "dev/1/1", "dev/1/2"],
        "level {level}: device 1 gets its filter's messages only"
    );
    assert_eq!(
        topics(&d2.publishes_until_quiet().await),
        ["dev/2/0", "dev/2/1", "dev/2/2"],
        "level {level}: device 2 gets its filter's messages only"
    );

    // Device 1 receives one more and drops without PUBACK.
    publisher
        .publish("dev/1/unacked", QoS::AtLeastOnce, false, b"dropped")
        .await;
    let unacked = d1.next_publish().await;
    assert_eq!(unacked.topic, "dev/1/unacked");
    drop(d1);

    // Device 2 is not held back.
    publisher
        .publish("dev/2/after", QoS::AtLeastOnce, false, b"still flowing")
        .await;
    let after = d2.next_publish().await;
    assert_eq!(after.topic, "dev/2/after", "level {level}");
    d2.ack(&after).await;

    // Device 1 resumes: its unacknowledged message again, then new ones.
    let (mut d1, present) = RawDevice::connect(&gw, level, "c", &t1, true).await;
    assert!(present, "level {level}: device 1's session is resumed");
    let resent = d1.publishes_until_quiet().await;
    assert_eq!(
        resent
            .iter()
            .map(|p| (p.topic.as_str(), p.dup))
            .collect::<Vec<_>>(),
        [("dev/1/unacked", true)],
        "level {level}: the unacknowledged message is re-sent"
    );
    publisher
        .publish("dev/1/again", QoS::AtLeastOnce, false, b"again")
        .await;
    assert_eq!(d1.next_publish().await.topic, "dev/1/again");
    assert!(
        d2.publishes_until_quiet().await.is_empty(),
        "level {level}: device 2 got nothing of device 1's"
    );
    unrelated_device_is_served(&gw, level).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn brick_v4_two_devices_one_group_different_filters() {
    two_devices_one_group(4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn brick_v5_two_devices_one_group_different_filters() {
    two_devices_one_group(5).await;
}

// ---------------------------------------------------------------------------
// Retained messages
// ---------------------------------------------------------------------------

/// A new 3.1.1 and a new MQTT 5 subscriber to `topic`: what each is sent
/// on subscribing, as (payload, retain flag): `expected` messages waited
/// for, then whatever else arrives.
async fn retained_for_newcomers(
    gw: &TestGateway,
    token: &str,
    topic: &str,
    step: &str,
    expected: usize,
) -> [Vec<(String, bool)>; 2] {
    let mut c4 = gw.v4_connected(&format!("new4-{step}"), token).await;
    c4.subscribe(topic, QoS::AtLeastOnce).await;
    let got4 = c4
        .publishes_expecting(expected)
        .await
        .iter()
        .map(|p| (text(&p.payload), p.retain))
        .collect();
    let mut c5 = gw.v5_connected(&format!("new5-{step}"), token).await;
    c5.subscribe(topic, QoS5::AtLeastOnce).await;
    let got5 = c5
        .publishes_expecting(expected)
        .await
        .iter()
        .map(|p| (text(&p.payload), p.retain))
        .collect();
    [got4, got5]
}

/// MQTT 3.1.1 §3.3.1.3, MQTT 5 §3.3.1.3: a retained message is set by a
/// retain=1 PUBLISH, replaced by the next, deleted only by a retain=1
/// PUBLISH with an empty payload; a retain=0 empty payload is an ordinary
/// message. Retained messages sent on subscribe carry retain=1, live
/// deliveries retain=0 unless the MQTT 5 subscription asked for retain as
/// published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_messages_are_set_replaced_and_deleted_only_by_a_retained_empty_payload() {
    let gw = start().await;
    let token = gw.token("retain", &["cfg/#"], HOUR);
    let topic = "cfg/r";
    let mut watch4 = gw.v4_connected("watch4", &token).await;
    watch4.subscribe("cfg/#", QoS::AtLeastOnce).await;
    let mut watch5 = gw.v5_connected("watch5", &token).await;
    watch5.subscribe("cfg/#", QoS5::AtLeastOnce).await;
    let mut as_published = gw.v5_connected("watch5-rap", &token).await;
    let mut filter = Filter::new("cfg/#", QoS5::AtLeastOnce);
    filter.preserve_retain = true;
    assert_eq!(
        as_published.subscribe_filters(vec![filter]).await,
        vec![Sub5::Success(QoS5::AtLeastOnce)]
    );
    let mut publisher = gw.v4_connected("retain-pub", &token).await;

    // (what, retain flag, payload, what a newcomer then gets)
    let steps: [(&str, bool, &[u8], Option<&str>); 4] = [
        ("set", true, b"one", Some("one")),
        ("replace", true, b"two", Some("two")),
        ("empty-not-retained", false, b"", Some("two")),
        ("delete", true, b"", None),
    ];
    // Every deviation, so that one failure does not hide the others.
    let mut wrong = Vec::new();
    let mut check = |what: String, got: &dyn std::fmt::Debug, want: &dyn std::fmt::Debug| {
        let (got, want) = (format!("{got:?}"), format!("{want:?}"));
        if got != want {
            wrong.push(format!("{what}: got {got}, want {want}"));
        }
    };
    for (step, retain, payload, kept) in steps {
        publisher
            .publish(topic, QoS::AtLeastOnce, retain, payload)
            .await;
        let sent = text(payload);
        // Live deliveries: the message as sent, retain=0 (retain as
        // published: the publish's own flag).
        let live4 = watch4.expect_publish(topic).await;
        check(
            format!("{step}: live 3.1.1 delivery (payload, retain)"),
            &(text(&live4.payload), live4.retain),
            &(&sent, false),
        );
        let live5 = watch5.expect_publish(topic).await;
        check(
            format!("{step}: live MQTT 5 delivery (payload, retain)"),
            &(text(&live5.payload), live5.retain),
            &(&sent, false),
        );
        let rap = as_published.expect_publish(topic).await;
        check(
            format!("{step}: live delivery, retain as published (payload, retain)"),
            &(text(&rap.payload), rap.retain),
            &(&sent, retain),
        );
        let want: Vec<(String, bool)> = kept.map(|k| (k.to_owned(), true)).into_iter().collect();
        let [got4, got5] = retained_for_newcomers(&gw, &token, topic, step, want.len()).await;
        check(format!("{step}: a new 3.1.1 subscriber gets"), &got4, &want);
        check(
            format!("{step}: a new MQTT 5 subscriber gets"),
            &got5,
            &want,
        );
    }
    let extra4 = watch4.publishes_while_alive(QUIET).await.len();
    check("3.1.1 extra live deliveries".into(), &extra4, &0);
    let extra5 = watch5.publishes_while_alive(QUIET).await.len();
    check("MQTT 5 extra live deliveries".into(), &extra5, &0);
    assert!(wrong.is_empty(), "retained messages:\n{wrong:#?}");
}

// ---------------------------------------------------------------------------
// Persistent sessions
// ---------------------------------------------------------------------------

/// A persistent session's options: clean session 0 (3.1.1).
fn persistent_v4(gw: &TestGateway, id: &str, token: &str) -> rumqttc::MqttOptions {
    let mut opts = gw.v4_options(id, token);
    opts.set_clean_session(false);
    opts
}

/// A persistent session's options: clean start 0, session expiry an hour
/// (MQTT 5).
fn persistent_v5(gw: &TestGateway, id: &str, token: &str) -> rumqttc::v5::MqttOptions {
    let mut opts = gw.v5_options(id, token);
    opts.set_clean_start(false);
    opts.set_session_expiry_interval(Some(3600));
    opts
}

/// QoS 1 and 2 messages published while a persistent session is offline
/// are queued and delivered on resume, in order, with session present;
/// 3.1.1 (clean session 0) and MQTT 5 (session expiry > 0).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_messages_are_queued_and_delivered_on_resume() {
    let gw = start().await;
    let token = gw.token("offline", &["off/#"], HOUR);
    let mut publisher = gw.v4_connected("offline-pub", &token).await;

    let mut c4 = V4Client::start(persistent_v4(&gw, "offline-4", &token));
    assert!(!c4.connack().await.session_present);
    c4.subscribe_many(&[
        ("off/4/q1/+", QoS::AtLeastOnce),
        ("off/4/q2/+", QoS::ExactlyOnce),
    ])
    .await;
    c4.disconnect().await;
    let mut c5 = V5Client::start(persistent_v5(&gw, "offline-5", &token));
    assert!(!c5.connack().await.session_present);
    c5.subscribe_many(&[
        ("off/5/q1/+", QoS5::AtLeastOnce),
        ("off/5/q2/+", QoS5::ExactlyOnce),
    ])
    .await;
    c5.disconnect().await;

    // Five messages on each of four topics: MQTT orders messages per
    // topic (3.1.1 §4.6, MQTT 5 §4.6), not across topics.
    for n in 0..5 {
        for level in [4, 5] {
            for qos in [1u8, 2] {
                publisher
                    .publish(
                        &format!("off/{level}/q{qos}/t"),
                        qos4(qos),
                        false,
                        format!("{n}").as_bytes(),
                    )
                    .await;
            }
        }
    }
    // What each topic should deliver: (topic, QoS, payloads in order).
    let want = |level: u8| -> Vec<(String, u8, Vec<String>)> {
        [1u8, 2]
            .iter()
            .map(|qos| {
                let payloads = (0..5).map(|n| n.to_string()).collect();
                (format!("off/{level}/q{qos}/t"), *qos, payloads)
            })
            .collect()
    };
    let per_topic = |got: Vec<(String, u8, String)>| -> Vec<(String, u8, Vec<String>)> {
        let mut topics: Vec<(String, u8, Vec<String>)> = Vec::new();
        for (topic, qos, payload) in got {
            match topics.iter_mut().find(|(t, q, _)| *t == topic && *q == qos) {
                Some((_, _, payloads)) => payloads.push(payload),
                None => topics.push((topic, qos, vec![payload])),
            }
        }
        topics.sort();
        topics
    };

    let mut c4 = V4Client::start(persistent_v4(&gw, "offline-4", &token));
    assert!(c4.connack().await.session_present, "3.1.1 session resumed");
    let queued: usize = want(4).iter().map(|(_, _, payloads)| payloads.len()).sum();
    let got4 = c4
        .publishes_expecting(queued)
        .await
        .iter()
        .map(|p| (p.topic.clone(), p.qos as u8, text(&p.payload)))
        .collect();
    assert_eq!(
        per_topic(got4),
        want(4),
        "3.1.1: everything queued, in order"
    );

    let mut c5 = V5Client::start(persistent_v5(&gw, "offline-5", &token));
    assert!(c5.connack().await.session_present, "MQTT 5 session resumed");
    let got5 = c5
        .publishes_expecting(queued)
        .await
        .iter()
        .map(|p| (text(&p.topic), p.qos as u8, text(&p.payload)))
        .collect();
    assert_eq!(
        per_topic(got5),
        want(5),
        "MQTT 5: everything queued, in order"
    );
}

/// MQTT 3.1.1 §4.4, MQTT 5 §4.4: a QoS 1 message sent to a persistent
/// session and not acknowledged before the connection dropped is sent
/// again on resume, with the same packet identifier and DUP set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacknowledged_qos1_is_resent_with_dup_on_resume() {
    let gw = start().await;
    let token = gw.token("resend", &["resend/#"], HOUR);
    let mut publisher = gw.v4_connected("resend-pub", &token).await;
    for level in [4u8, 5] {
        let id = format!("resend-{level}");
        let (mut device, _) = RawDevice::connect(&gw, level, &id, &token, true).await;
        let filter = format!("resend/{level}");
        assert_eq!(device.subscribe(&filter, 1).await, granted(1));
        publisher
            .publish(&filter, QoS::AtLeastOnce, false, b"ack me")
            .await;
        let first = device.next_publish().await;
        assert!(
            !first.dup,
            "level {level}: first delivery is not a duplicate"
        );
        drop(device);

        let (mut device, present) = RawDevice::connect(&gw, level, &id, &token, true).await;
        assert!(present, "level {level}: session present");
        let again = device.publishes_until_quiet().await;
        assert_eq!(
            again,
            [mqtt::Publish {
                dup: true,
                ..first.clone()
            }],
            "level {level}: re-sent once, same packet id, DUP set"
        );
        // Acknowledged now: not sent a third time.
        drop(device);
        let (mut device, _) = RawDevice::connect(&gw, level, &id, &token, true).await;
        let third = device.publishes_until_quiet().await;
        assert!(third.is_empty(), "level {level}: acked is done: {third:?}");
    }
}

/// Client ids with `$` and other punctuation are ordinary ids: accepted,
/// and their persistent sessions work. Ids with `+`, `#` or `/` are
/// refused (issue 12: grants may name topics after the client id).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_ids_with_dollar_are_accepted_and_with_wildcards_or_slash_refused() {
    let gw = start().await;
    let mut publisher = gw
        .v4_connected("ids-pub", &gw.token("ids-pub", &["ids/#"], HOUR))
        .await;
    for id in ["dev/1", "dev+1", "dev#1", "+", "#"] {
        for level in [4u8, 5] {
            let token = gw.token(&format!("ids-{level}"), &["ids/#"], HOUR);
            let mut raw = gw.raw().await;
            let connect = mqtt::Connect::new(level, id)
                .username("JWT")
                .password(&token)
                .keep_alive(60);
            raw.send_ok(&connect.encode()).await;
            let frame = raw.read_packet().await;
            let (_, code) = mqtt::parse_connack(&frame).expect("a CONNACK");
            // 3.1.1's "identifier rejected", MQTT 5's "client identifier
            // not valid".
            let expected = if level == 5 { 0x85 } else { 2 };
            assert_eq!(code, expected, "{id:?} at level {level}");
        }
    }
    for (n, id) in ["$dev1", "dev.1", "dev:1@site"].into_iter().enumerate() {
        for level in [4, 5] {
            let token = gw.token(&format!("ids-{level}"), &["ids/#"], HOUR);
            let topic = format!("ids/{level}/{n}");
            let (mut device, _) = RawDevice::connect(&gw, level, id, &token, true).await;
            assert_eq!(device.subscribe(&topic, 1).await, granted(1), "{id:?}");
            drop(device);
            publisher
                .publish(&topic, QoS::AtLeastOnce, false, id.as_bytes())
                .await;
            let (mut device, present) = RawDevice::connect(&gw, level, id, &token, true).await;
            assert!(present, "{id:?} at level {level}: session present");
            let got = device.publishes_until_quiet().await;
            assert_eq!(
                got.iter()
                    .map(|p| (p.topic.as_str(), &p.payload[..]))
                    .collect::<Vec<_>>(),
                [(topic.as_str(), id.as_bytes())],
                "{id:?} at level {level}: the offline message"
            );
        }
    }
}

// ---------------------------------------------------------------------------
// Offline queue bounds
// ---------------------------------------------------------------------------

/// A persistent session's offline queue keeps at most `[sessions]
/// max_queued_messages` messages and `max_queued_bytes` bytes; publishers
/// are not held back by an offline session (every publish is PUBACKed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_queue_is_bounded_by_max_queued_messages_and_bytes() {
    let gw = start_with(|cfg| {
        cfg.sessions.max_queued_messages = 5;
        cfg.sessions.max_queued_bytes = 4096;
    })
    .await;
    let token = gw.token("bounded", &["bound/#"], HOUR);
    for (id, filter) in [("by-count", "bound/count"), ("by-bytes", "bound/bytes")] {
        let mut c = V4Client::start(persistent_v4(&gw, id, &token));
        c.connack().await;
        c.subscribe(filter, QoS::AtLeastOnce).await;
        c.disconnect().await;
    }
    let mut publisher = gw.v4_connected("bound-pub", &token).await;
    // 20 small messages: the count is the bound.
    for n in 0..20 {
        publisher
            .publish(
                "bound/count",
                QoS::AtLeastOnce,
                false,
                format!("{n}").as_bytes(),
            )
            .await;
    }
    // 10 messages of 1 KiB: the bytes are the bound.
    for n in 0..10u8 {
        publisher
            .publish("bound/bytes", QoS::AtLeastOnce, false, &[b'a' + n; 1024])
            .await;
    }

    let mut c = V4Client::start(persistent_v4(&gw, "by-count", &token));
    assert!(c.connack().await.session_present);
    let got = c.publishes_expecting(5).await;
    assert_eq!(
        got.len(),
        5,
        "max_queued_messages = 5 keeps 5 of the 20 sent offline: {:?}",
        got.iter().map(|p| text(&p.payload)).collect::<Vec<_>>()
    );
    let mut c = V4Client::start(persistent_v4(&gw, "by-bytes", &token));
    assert!(c.connack().await.session_present);
    // At least one, then whatever else was kept.
    let got = c.publishes_expecting(1).await;
    assert!(
        (1..=4).contains(&got.len()),
        "max_queued_bytes = 4096 keeps one to four of ten 1 KiB messages, got {}",
        got.len()
    );
}

// ---------------------------------------------------------------------------
// Back-pressure and the slow-subscriber policy
// ---------------------------------------------------------------------------

/// The id of a flood message: its payload up to the padding.
fn flood_id(payload: &[u8]) -> String {
    text(payload.split(|b| *b == b' ').next().unwrap_or_default())
}

/// A QoS 1 publisher sending `count` messages `{name}-{n}` (padded with
/// spaces to `size` bytes) to `topic`, with up to 100 in flight, as fast as
/// the gateway takes them. Returns the ids the gateway PUBACKed, in order;
/// stops early at the first error or when nothing happens for [`WAIT`].
async fn flood(
    opts: rumqttc::MqttOptions,
    topic: &str,
    name: &str,
    count: usize,
    size: usize,
) -> Vec<String> {
    use rumqttc::{Event, Outgoing, Packet};
    let (client, mut eventloop) = rumqttc::AsyncClient::new(opts, 100);
    let ids: Vec<String> = (0..count).map(|n| format!("{name}-{n}")).collect();
    let producer = tokio::spawn({
        let ids = ids.clone();
        let topic = topic.to_owned();
        async move {
            for id in ids {
                let mut payload = id.into_bytes();
                payload.resize(size.max(payload.len()), b' ');
                if client
                    .publish(&topic, QoS::AtLeastOnce, false, payload)
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    });
    // The event loop sends publishes in the order they were queued: the
    // n-th outgoing PUBLISH is ids[n]; a PUBACK names it by packet id.
    let mut sent = 0;
    let mut in_flight: HashMap<u16, usize> = HashMap::new();
    let mut acked = Vec::with_capacity(count);
    while acked.len() < count {
        match tokio::time::timeout(WAIT, eventloop.poll()).await {
            Err(_) | Ok(Err(_)) => break,
            Ok(Ok(Event::Outgoing(Outgoing::Publish(pkid)))) => {
                in_flight.insert(pkid, sent);
                sent += 1;
            }
            Ok(Ok(Event::Incoming(Packet::PubAck(ack)))) => {
                if let Some(n) = in_flight.remove(&ack.pkid) {
                    acked.push(ids[n].clone());
                }
            }
            Ok(Ok(_)) => {}
        }
    }
    producer.abort();
    acked
}

/// The flood ids `sub` receives until it holds every one of `wanted`, or
/// until nothing more arrives for [`WAIT`].
async fn receive_ids(sub: &mut V4Client, wanted: &[String]) -> HashSet<String> {
    let mut got = HashSet::new();
    let mut progress = tokio::time::Instant::now();
    while !wanted.iter().all(|id| got.contains(id)) && progress.elapsed() < WAIT {
        for p in sub.publishes_within(Duration::from_millis(50)).await {
            got.insert(flood_id(&p.payload));
            progress = tokio::time::Instant::now();
        }
    }
    got
}

/// The ids of `wanted` missing from `got`, for a readable failure.
fn missing<'a>(wanted: &'a [String], got: &HashSet<String>) -> Vec<&'a String> {
    wanted.iter().filter(|id| !got.contains(*id)).collect()
}

/// Ten publishers flood one QoS 1 subscriber that reads as fast as it can,
/// through a subscriber queue of 50 messages: the publishers are paced,
/// nothing is dropped, and every message PUBACKed to a publisher is
/// delivered (at least once), counted by payload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_publishers_flooding_one_qos1_subscriber_lose_no_acknowledged_message() {
    const PUBLISHERS: usize = 10;
    const COUNT: usize = 2_000;
    // One token for eleven connections: more than a subject's default
    // eight sessions.
    let gw = start_with(|cfg| {
        cfg.sessions.max_queued_messages = 50;
        cfg.sessions.max_sessions_per_subject = 16;
    })
    .await;
    let token = gw.token("fan-in", &["fan-in/#"], HOUR);
    let mut sub = gw.v4_connected("fan-in-sub", &token).await;
    sub.subscribe("fan-in/#", QoS::AtLeastOnce).await;
    let floods: Vec<_> = (0..PUBLISHERS)
        .map(|i| {
            let opts = gw.v4_options(&format!("fan-in-pub-{i}"), &token);
            tokio::spawn(async move {
                flood(opts, &format!("fan-in/{i}"), &format!("p{i}"), COUNT, 1024).await
            })
        })
        .collect();
    let mut acked = Vec::new();
    for flood in floods {
        acked.push(flood.await.expect("flood task"));
    }
    let all: Vec<String> = acked.iter().flatten().cloned().collect();
    let got = receive_ids(&mut sub, &all).await;
    let lost = missing(&all, &got);
    assert!(
        lost.is_empty(),
        "{} of {} PUBACKed messages never delivered, e.g. {:?}",
        lost.len(),
        all.len(),
        &lost[..lost.len().min(10)]
    );
    for (i, acked) in acked.iter().enumerate() {
        assert_eq!(
            acked.len(),
            COUNT,
            "publisher {i} finished: all its messages PUBACKed"
        );
    }
}

/// Two publishers of 1,000 QoS 1 messages of `size` bytes on `busy/t`
/// (publishing through `token`), two well-behaved QoS 1 subscribers reading
/// as fast as they can. Asserts that both publishers finish (every message
/// PUBACKed) and both well-behaved subscribers receive every message,
/// whatever a stalled subscriber on the same topic does. Returns the ids
/// published.
async fn busy_topic(gw: &TestGateway, token: &str, size: usize) -> Vec<String> {
    const COUNT: usize = 1_000;
    let mut good = Vec::new();
    for i in 0..2 {
        let mut c = gw.v4_connected(&format!("good-{i}"), token).await;
        c.subscribe("busy/#", QoS::AtLeastOnce).await;
        good.push(c);
    }
    let floods: Vec<_> = (0..2)
        .map(|i| {
            let opts = gw.v4_options(&format!("busy-pub-{i}"), token);
            tokio::spawn(async move { flood(opts, "busy/t", &format!("b{i}"), COUNT, size).await })
        })
        .collect();
    let mut published = Vec::new();
    for (i, flood) in floods.into_iter().enumerate() {
        let acked = flood.await.expect("flood task");
        assert_eq!(
            acked.len(),
            COUNT,
            "publisher {i} finished: a stalled subscriber holds it back only up to the bound"
        );
        published.extend(acked);
    }
    for (i, c) in good.iter_mut().enumerate() {
        let got = receive_ids(c, &published).await;
        let lost = missing(&published, &got);
        assert!(
            lost.is_empty(),
            "well-behaved subscriber {i} missed {} of {}, e.g. {:?}",
            lost.len(),
            published.len(),
            &lost[..lost.len().min(10)]
        );
    }
    published
}

/// A subscriber on a 4 KiB receive buffer that subscribes to `busy/#` at
/// `qos` and then never reads again.
async fn stalled_subscriber(
    gw: &TestGateway,
    level: u8,
    client_id: &str,
    token: &str,
    qos: u8,
) -> RawDevice {
    let raw = RawClient::connect_with_receive_buffer(gw.addr(), gw.ca_pem(), 4096).await;
    let (mut device, _) = RawDevice::connect_over(raw, level, client_id, token, false).await;
    assert_eq!(device.subscribe("busy/#", qos).await, granted(qos));
    device
}

/// The reason code of an MQTT 5 DISCONNECT frame (0 when it has none).
fn disconnect_reason(frame: &[u8]) -> Option<u8> {
    match frame {
        [0xE0, 0x00] => Some(0x00),
        [0xE0, _, reason, ..] => Some(*reason),
        _ => None,
    }
}

/// `slow_subscriber = "disconnect"`: one subscriber stops reading on a busy
/// topic. The publishers wait for it at most `slow_subscriber_timeout`,
/// then its connection is closed (MQTT 5: DISCONNECT 0x97 if the socket
/// still takes it) and logged; the well-behaved subscribers receive every
/// message and the publishers finish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_subscriber_is_disconnected_and_the_others_get_everything() {
    let logs = capture_logs();
    let since = logs.position();
    let gw = busy_gateway(SlowSubscriber::Disconnect).await;
    let token = gw.token("busy", &["busy/#"], HOUR);
    let mut stalled = stalled_subscriber(&gw, 5, "stalled-disconnect", &token, 1).await;

    let published = busy_topic(&gw, &token, 512).await;
    logs.wait_for_line(since, &["slow subscriber", "stalled-disconnect"])
        .await;
    // Draining its socket now ends in the close, short of everything.
    let frames = stalled.raw.expect_closed().await;
    let received = frames
        .iter()
        .filter(|f| mqtt::packet_type(f) == Some(3))
        .count();
    assert!(
        received < published.len(),
        "the stalled subscriber was cut off, yet got all {received} messages"
    );
    if let Some(last) = frames.last().filter(|f| mqtt::packet_type(f) == Some(14)) {
        assert_eq!(
            disconnect_reason(last),
            Some(0x97),
            "MQTT 5: told \"quota exceeded\": {last:02x?}"
        );
    }
    // It comes back like any device.
    let (mut back, _) = RawDevice::connect(&gw, 5, "stalled-disconnect", &token, false).await;
    assert_eq!(back.subscribe("busy/#", 1).await, granted(1));
    unrelated_device_is_served(&gw, 5).await;
}

/// `slow_subscriber = "drop"`: the stalled subscriber keeps its connection
/// and has messages dropped (logged); the well-behaved subscribers receive
/// every message and the publishers finish. Once it reads again it gets
/// new messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_subscriber_with_the_drop_policy_loses_messages_not_its_connection() {
    let logs = capture_logs();
    let since = logs.position();
    let gw = busy_gateway(SlowSubscriber::Drop).await;
    let token = gw.token("busy", &["busy/#"], HOUR);
    let mut stalled = stalled_subscriber(&gw, 4, "stalled-drop", &token, 1).await;

    let published = busy_topic(&gw, &token, 512).await;
    logs.wait_for_line(since, &["slow subscriber", "stalled-drop"])
        .await;
    let mut got = stalled.publishes_until_quiet().await;
    got.extend(stalled.ping().await);
    assert!(
        got.len() < published.len(),
        "messages were dropped for the stalled subscriber, yet it got all {}",
        got.len()
    );
    // Still connected, still subscribed.
    let mut publisher = gw.v4_connected("busy-after", &token).await;
    publisher
        .publish("busy/t", QoS::AtLeastOnce, false, b"after")
        .await;
    let after = stalled.next_publish().await;
    assert_eq!(&after.payload[..], b"after");
    stalled.ack(&after).await;
}

/// A QoS 0 subscription whose queue is full loses its oldest messages, not
/// its newest nor its connection (whatever the policy), and the drops are
/// logged; the QoS 1 subscribers and publishers are unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_qos0_subscriber_loses_its_oldest_messages() {
    let logs = capture_logs();
    let since = logs.position();
    let gw = start_with(|cfg| {
        cfg.sessions.max_queued_messages = 50;
        cfg.sessions.slow_subscriber_timeout = Duration::from_millis(500);
    })
    .await;
    let token = gw.token("busy", &["busy/#"], HOUR);
    let mut stalled = stalled_subscriber(&gw, 4, "stalled-qos0", &token, 0).await;

    // QoS 0 has no in-flight window: what stalls it is the socket. The
    // server's send buffer grows to a few MB whatever the client's
    // receive buffer, so the flood is 8 MB.
    let published = busy_topic(&gw, &token, 4096).await;
    // One more, while its queue is still full: the newest is kept.
    let mut publisher = gw.v4_connected("busy-last", &token).await;
    publisher
        .publish("busy/t", QoS::AtLeastOnce, false, b"newest")
        .await;
    logs.wait_for_line(since, &["slow subscriber", "stalled-qos0"])
        .await;
    let mut got = stalled.publishes_until_quiet().await;
    got.extend(stalled.ping().await);
    assert!(
        got.len() < published.len(),
        "the oldest were dropped, yet it got all {}",
        got.len()
    );
    assert_eq!(
        got.last().map(|p| &p.payload[..]),
        Some(&b"newest"[..]),
        "the newest message is delivered last ({} received)",
        got.len()
    );
}

// ---------------------------------------------------------------------------
// Bounded memory and the per-session caps
// ---------------------------------------------------------------------------

/// Messages in the user-properties flood.
const FLOOD_MESSAGES: usize = 2_000;

/// The flooding device's QoS 1 window.
const FLOOD_IN_FLIGHT: u16 = 10;

/// How much the gateway's resident memory may grow through the
/// user-properties flood: the 8 MiB subscriber queue, TLS and codec
/// buffers, allocator slack. rumqttd's router (today's main) keeps every
/// message's properties in its topic logs, uncharged: hundreds of MiB.
const FLOOD_MEMORY: u64 = 64 * 1024 * 1024;

/// `count` user properties of `value_len` bytes each.
fn user_properties(count: usize, value_len: usize) -> PublishProperties {
    PublishProperties {
        user_properties: (0..count)
            .map(|i| (format!("k{i:03}"), "v".repeat(value_len)))
            .collect(),
        ..PublishProperties::default()
    }
}

/// The reason of a PUBACK or PUBREC, or what came instead.
fn ack_reason(ack: Option<Packet5>) -> String {
    match ack {
        Some(Packet5::PubAck(ack)) => format!("PUBACK {:?}", ack.reason),
        Some(Packet5::PubRec(rec)) => format!("PUBREC {:?}", rec.reason),
        other => format!("{other:?}"),
    }
}

/// MQTT 5 §3.3.2.3: a PUBLISH whose properties exceed `[limits]
/// max_property_bytes` is refused with 0x97 (quota exceeded) in its PUBACK
/// or PUBREC, and not delivered; QoS 0 is dropped. One under the cap is
/// delivered with its user properties unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_over_max_property_bytes_gets_quota_exceeded_and_is_not_delivered() {
    let gw = start_with(|cfg| cfg.limits.max_property_bytes = 1024).await;
    let token = gw.token("props", &["props/#"], HOUR);
    let mut watcher = gw.v5_connected("props-watch", &token).await;
    watcher.subscribe("props/#", QoS5::ExactlyOnce).await;
    let mut publisher = gw.v5_connected("props-pub", &token).await;
    let big = user_properties(4, 500);
    let small = user_properties(2, 100);

    publisher
        .publish_with_properties(
            "props/big",
            QoS5::AtMostOnce,
            false,
            b"0",
            Some(big.clone()),
        )
        .await;
    let ack1 = publisher
        .publish_with_properties(
            "props/big",
            QoS5::AtLeastOnce,
            false,
            b"1",
            Some(big.clone()),
        )
        .await;
    assert_eq!(
        ack_reason(ack1),
        format!("PUBACK {:?}", PubAckReason::QuotaExceeded)
    );
    let ack2 = publisher
        .publish_with_properties("props/big", QoS5::ExactlyOnce, false, b"2", Some(big))
        .await;
    assert_eq!(
        ack_reason(ack2),
        format!("PUBREC {:?}", PubRecReason::QuotaExceeded)
    );

    let ack = publisher
        .publish_with_properties(
            "props/small",
            QoS5::AtLeastOnce,
            false,
            b"fits",
            Some(small.clone()),
        )
        .await;
    assert_eq!(
        ack_reason(ack),
        format!("PUBACK {:?}", PubAckReason::Success)
    );
    let got = watcher.expect_publish("props/small").await;
    assert_eq!(
        got.properties.map(|p| p.user_properties),
        Some(small.user_properties),
        "user properties delivered unchanged"
    );
    let stray = watcher.publishes_while_alive(QUIET).await;
    assert!(
        stray.is_empty(),
        "refused publishes were delivered: {:?}",
        stray.iter().map(|p| text(&p.payload)).collect::<Vec<_>>()
    );
    // The publisher stays connected: it is still served, a round trip
    // shows (an open socket alone would not).
    publisher.assert_alive().await;
}

/// Past `[sessions] max_subscriptions` a SUBSCRIBE filter gets 0x97 (MQTT
/// 5) or 0x80 (3.1.1) while the others in the packet are granted;
/// re-subscribing an existing filter replaces it (no new subscription) and
/// an UNSUBSCRIBE frees a place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_past_max_subscriptions_are_refused() {
    let gw = start_with(|cfg| cfg.sessions.max_subscriptions = 3).await;
    let token = gw.token("cap", &["cap/#"], HOUR);
    let filters = ["cap/a", "cap/b", "cap/c", "cap/d", "cap/e"];

    let mut c5 = gw.v5_connected("cap-5", &token).await;
    let many: Vec<(&str, QoS5)> = filters.iter().map(|f| (*f, QoS5::AtLeastOnce)).collect();
    let ok5 = Sub5::Success(QoS5::AtLeastOnce);
    assert_eq!(
        c5.subscribe_many(&many).await,
        [ok5, ok5, ok5, Sub5::QuotaExceeded, Sub5::QuotaExceeded],
        "MQTT 5: three granted, the fourth and fifth over the cap"
    );
    assert_eq!(
        c5.subscribe("cap/a", QoS5::AtLeastOnce).await,
        [ok5],
        "re-subscribing cap/a replaces it: no fourth subscription"
    );
    assert_eq!(
        c5.subscribe("cap/e", QoS5::AtLeastOnce).await,
        [Sub5::QuotaExceeded],
        "still full"
    );
    assert_eq!(c5.unsubscribe("cap/b").await, [UnsubAckReason::Success]);
    assert_eq!(
        c5.subscribe("cap/d", QoS5::AtLeastOnce).await,
        [ok5],
        "an UNSUBSCRIBE frees a place"
    );

    let mut c4 = gw.v4_connected("cap-4", &token).await;
    let many: Vec<(&str, QoS)> = filters.iter().map(|f| (*f, QoS::AtLeastOnce)).collect();
    let ok4 = SubscribeReasonCode::Success(QoS::AtLeastOnce);
    assert_eq!(
        c4.subscribe_many(&many).await,
        [
            ok4,
            ok4,
            ok4,
            SubscribeReasonCode::Failure,
            SubscribeReasonCode::Failure
        ],
        "3.1.1: three granted, the fourth and fifth over the cap"
    );

    // Only granted filters deliver.
    let mut publisher = gw.v4_connected("cap-pub", &token).await;
    for topic in filters {
        publisher
            .publish(topic, QoS::AtLeastOnce, false, topic.as_bytes())
            .await;
    }
    let mut got5: Vec<String> = c5
        .publishes_expecting(3)
        .await
        .iter()
        .map(|p| text(&p.topic))
        .collect();
    got5.sort();
    assert_eq!(got5, ["cap/a", "cap/c", "cap/d"], "MQTT 5 deliveries");
    let mut got4: Vec<String> = c4
        .publishes_expecting(3)
        .await
        .iter()
        .map(|p| p.topic.clone())
        .collect();
    got4.sort();
    assert_eq!(got4, ["cap/a", "cap/b", "cap/c"], "3.1.1 deliveries");
}

/// Issue 8 item 3, the user-properties flood, on the real binary: an MQTT 5
/// device publishes 2,000 one-byte QoS 1 messages, each with about 60 KB
/// of user properties (under `[limits] max_property_bytes` = 65536), to a
/// topic it also subscribes to, and gets every one back with its
/// properties. The gateway's resident memory, at its peak and after
/// unsubscribing, stays within [`FLOOD_MEMORY`] of what it was before the
/// flood (`[sessions] max_queued_bytes` = 8 MiB). A PUBLISH over the
/// property cap gets PUBACK 0x97 and is not delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_properties_flood_stays_within_a_memory_bound() {
    capture_logs();
    let gw = DevBinary::start(
        "",
        "[limits]\nmax_property_bytes = 65536\n\n[sessions]\nmax_queued_bytes = 8388608\n",
    )
    .await;
    let served = &gw.served;
    let token = gw.token("flood", &["flood/#"], Duration::from_secs(3600));
    let mut opts = common::v5_options_for(served.port(), &gw.ca, "flood", &token);
    // rumqttc does not read while it writes: with its whole window of
    // 60 KB messages outstanding, a gateway pacing it (as it should)
    // and a client stuck writing could wait for each other. Ten in
    // flight always fit in the socket buffers.
    opts.set_outgoing_inflight_upper_limit(FLOOD_IN_FLIGHT);
    let mut network = rumqttc::NetworkOptions::new();
    network.set_tcp_nodelay(true);
    opts.set_network_options(network);
    let mut device = V5Client::start(opts);
    let ack = device.connack().await;
    assert_eq!(ack.code, Code5::Success, "{}", served.log());
    device.subscribe("flood/#", QoS5::AtLeastOnce).await;
    let before = served.memory();

    // 60 properties of 1,000 bytes: about 60 KB per message, sent as
    // fast as the gateway takes them.
    let properties = user_properties(60, 1_000);
    let producer = tokio::spawn({
        let client = device.client.clone();
        let properties = properties.clone();
        async move {
            for _ in 0..FLOOD_MESSAGES {
                let queued = client
                    .publish_with_properties(
                        "flood/t",
                        QoS5::AtLeastOnce,
                        false,
                        &b"x"[..],
                        properties.clone(),
                    )
                    .await;
                if queued.is_err() {
                    return;
                }
            }
        }
    });
    let (mut acked, mut refused, mut delivered) = (0, Vec::new(), 0);
    let mut first = None;
    while acked < FLOOD_MESSAGES || delivered < FLOOD_MESSAGES {
        let packet = tokio::time::timeout(WAIT / 2, device.next_packet())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "nothing for {:?} after {acked} PUBACKs and {delivered} deliveries\n{}",
                    WAIT / 2,
                    served.log()
                )
            });
        match packet {
            Ok(Packet5::PubAck(ack)) => {
                acked += 1;
                if ack.reason != PubAckReason::Success {
                    refused.push(ack.reason);
                }
            }
            Ok(Packet5::Publish(p)) => {
                first.get_or_insert(p.properties);
                delivered += 1;
            }
            Ok(_) => {}
            Err(end) => panic!(
                "the connection ended after {acked} PUBACKs: {end:?}\n{}",
                served.log()
            ),
        }
    }
    producer.abort();
    let after_flood = served.memory();

    // Over the cap: refused, not delivered.
    let over = user_properties(70, 1_000);
    let ack = device
        .publish_with_properties("flood/t", QoS5::AtLeastOnce, false, b"y", Some(over))
        .await;
    let over_reason = ack_reason(ack);
    let stray = device.publishes_while_alive(QUIET).await.len();

    device.unsubscribe("flood/#").await;
    let after_unsubscribe = served.memory();

    let mib = |bytes: u64| bytes as f64 / 1024.0 / 1024.0;
    let limit = before.rss + FLOOD_MEMORY;
    let report = format!(
        "RSS before {:.1} MiB, after the flood {:.1} MiB (peak {:.1} MiB), after \
             unsubscribing {:.1} MiB; limit {:.1} MiB",
        mib(before.rss),
        mib(after_flood.rss),
        mib(after_flood.peak),
        mib(after_unsubscribe.rss),
        mib(limit)
    );
    eprintln!("{report}");
    assert!(
        after_flood.peak <= limit && after_unsubscribe.rss <= limit,
        "memory grew past the bound: {report}"
    );
    assert_eq!(
        (acked, &refused[..]),
        (FLOOD_MESSAGES, &[][..]),
        "every message PUBACKed with success"
    );
    assert_eq!(delivered, FLOOD_MESSAGES, "every message came back");
    assert_eq!(
        first.flatten().map(|p| p.user_properties),
        Some(properties.user_properties),
        "user properties delivered unchanged"
    );
    assert_eq!(
        over_reason,
        format!("PUBACK {:?}", PubAckReason::QuotaExceeded),
        "properties over max_property_bytes"
    );
    assert_eq!(stray, 0, "the refused message was delivered");
}
