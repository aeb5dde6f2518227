//! README, "$SYS figures": with `[sys] interval_secs`, the gateway
//! publishes Mosquitto's `$SYS/broker/...` figures (and its own under
//! `$SYS/broker/jwtgate/`) as retained messages, readable only by tokens
//! granted `$SYS/#` or a part of it, and written by no client.
//!
//! The real binary over TLS, read with Mosquitto's own `mosquitto_sub -t
//! '$SYS/#'` (`common::programs`): present with the grant, absent
//! with a grant of `#` or `a/#`, refused on publish and as a will (and the
//! retained value unchanged), and absent altogether without `[sys]`.

mod common;

use std::time::Duration;

use common::programs::{Program, Version, mosquitto_connection, mosquitto_pub, tool};
use common::scrape::{metrics_port, scrape, value};
use common::watch::until_own_marker;
use common::{DevBinary, V4Client};
use rumqttc::{ConnectReturnCode, LastWill, QoS, SubscribeReasonCode};
use tokio::process::Command;

const HOUR: Duration = Duration::from_secs(3600);
const VERSION: &str = concat!("jwtgate ", env!("CARGO_PKG_VERSION"));
const SYS: &str = "[sys]\ninterval_secs = 1\n\n[metrics]\nlisten = \"127.0.0.1:0\"\n";

/// One message as `mosquitto_sub` printed it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Msg {
    retained: bool,
    topic: String,
    payload: String,
}

/// `mosquitto_sub -t FILTER` running beside the test; killed when dropped.
struct Sub(Program);

impl Sub {
    /// `mosquitto_sub` over MQTT 5 on `filter`, printing
    /// `MSG|<retain>|<topic>|<payload>` (topics here hold spaces, which
    /// the harness's `MSG <qos> <retain> <topic> <payload>` cannot carry).
    fn start(gw: &DevBinary, client_id: &str, token: &str, filter: &str) -> Sub {
        let mut command = Command::new(tool("stdbuf", "coreutils"));
        command
            .arg("-oL")
            .arg(tool("mosquitto_sub", "mosquitto-clients"))
            .args(mosquitto_connection(gw, Version::V5, client_id, token))
            .args(["-d", "-t", filter, "-F", "MSG|%r|%t|%p"]);
        Sub(Program::spawn(
            format!("mosquitto_sub {client_id}"),
            command,
            false,
        ))
    }

    async fn line(&mut self, what: &str, matches: impl Fn(&str) -> bool) -> String {
        self.0.line(what, matches).await
    }

    /// Reads on until the messages printed so far satisfy `done` (at
    /// once if they already do); returns them.
    async fn until(&mut self, what: &str, done: impl Fn(&[Msg]) -> bool) -> Vec<Msg> {
        while !done(&self.messages()) {
            self.line(what, |line| line.starts_with("MSG|")).await;
        }
        self.messages()
    }

    /// The first message printed on `topic` that `accept` takes, waiting
    /// for it if there is none yet.
    async fn message(&mut self, topic: &str, accept: impl Fn(&Msg) -> bool) -> Msg {
        let on = |m: &Msg| m.topic == topic && accept(m);
        let messages = self
            .until(&format!("a message on {topic}"), |all| all.iter().any(on))
            .await;
        messages.into_iter().find(on).expect("just seen")
    }

    /// The SUBACK's reason, as `mosquitto_sub -d` prints it.
    async fn subscribed(&mut self) -> String {
        let line = self
            .line("SUBACK", |line| line.starts_with("Subscribed (mid:"))
            .await;
        line.rsplit(": ").next().unwrap_or_default().to_owned()
    }

    fn messages(&self) -> Vec<Msg> {
        self.0
            .seen()
            .iter()
            .filter_map(|line| parse(line))
            .collect()
    }
}

fn parse(line: &str) -> Option<Msg> {
    let mut fields = line.strip_prefix("MSG|")?.splitn(3, '|');
    Some(Msg {
        retained: fields.next()? == "1",
        topic: fields.next()?.to_owned(),
        payload: fields.next()?.to_owned(),
    })
}

fn live_uptimes(messages: &[Msg]) -> usize {
    messages
        .iter()
        .filter(|m| !m.retained && m.topic == sys("uptime"))
        .count()
}

fn sys(name: &str) -> String {
    format!("$SYS/broker/{name}")
}

/// The figures reach a token granted `$SYS/#` as retained messages, in
/// Mosquitto's formats, and follow the gateway live; tokens granted `#`
/// or `a/#` get none of them; no client can overwrite one, by PUBLISH
/// (MQTT 5: PUBACK 0x87, counted as refused) or by will (CONNACK 5).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn figures_reach_granted_readers_only_and_no_client_writes_them() {
    let gw = DevBinary::start("", SYS).await;
    let port = metrics_port(&gw).await;

    // Readers without the grant subscribe first, so that the figures
    // published while the granted reader waits would reach them too.
    let mut all = V4Client::start(gw.v4_options("all", &gw.token("all", &["#"], HOUR)));
    assert_eq!(all.connack().await.code, ConnectReturnCode::Success);
    assert_eq!(
        all.subscribe("$SYS/#", QoS::AtMostOnce).await,
        [SubscribeReasonCode::Failure],
        "a grant of # does not cover $SYS/#"
    );
    assert_eq!(
        all.subscribe("#", QoS::AtMostOnce).await,
        [SubscribeReasonCode::Success(QoS::AtMostOnce)]
    );
    let mut narrow = V4Client::start(gw.v4_options("narrow", &gw.token("narrow", &["a/#"], HOUR)));
    assert_eq!(narrow.connack().await.code, ConnectReturnCode::Success);
    assert_eq!(
        narrow.subscribe("$SYS/#", QoS::AtMostOnce).await,
        [SubscribeReasonCode::Failure]
    );
    assert_eq!(
        narrow.subscribe("a/#", QoS::AtMostOnce).await,
        [SubscribeReasonCode::Success(QoS::AtMostOnce)]
    );

    let reader_token = gw.token("operator", &["$SYS/#"], HOUR);
    let mut reader = Sub::start(&gw, "operator", &reader_token, "$SYS/#");
    assert_eq!(reader.subscribed().await, "0");
    // The retained copies first: the gateway published them at start.
    let version = reader.message(&sys("version"), |_| true).await;
    assert_eq!(version.payload, VERSION);
    assert!(version.retained, "{version:?}");
    // A tick may overtake the replay: a live copy may come first.
    let uptime = reader.message(&sys("uptime"), |m| m.retained).await;
    let seconds = uptime.payload.strip_suffix(" seconds");
    assert!(
        seconds.is_some_and(|s| s.parse::<u64>().is_ok()),
        "{uptime:?}"
    );
    // Then live: two uptimes sent after every subscription above was
    // made, and the three clients connected.
    reader
        .until("two live uptimes", |all| live_uptimes(all) >= 2)
        .await;
    reader
        .message(&sys("clients/connected"), |m| m.payload == "3")
        .await;
    let figures = reader.messages();
    let last = |name: &str| {
        figures
            .iter()
            .rev()
            .find(|m| m.topic == sys(name))
            .map(|m| m.payload.clone())
            .unwrap_or_else(|| panic!("no {name} among {figures:?}"))
    };
    assert_eq!(last("jwtgate/keys/loaded"), "1", "the dev key");
    assert!(last("subscriptions/count").parse::<u64>().unwrap() >= 3);
    assert!(last("retained messages/count").parse::<u64>().unwrap() >= 20);
    assert!(last("heap/current").parse::<u64>().unwrap() > 0);
    for name in [
        "clients/total",
        "clients/maximum",
        "clients/disconnected",
        "messages/received",
        "messages/sent",
        "bytes/received",
        "bytes/sent",
    ] {
        last(name).parse::<u64>().unwrap();
    }
    for load in [
        "messages/received",
        "messages/sent",
        "bytes/received",
        "bytes/sent",
    ] {
        for window in ["1min", "5min", "15min"] {
            let text = last(&format!("load/{load}/{window}"));
            let (_, decimals) = text.split_once('.').expect("two decimals");
            assert_eq!(decimals.len(), 2, "{load}/{window}: {text}");
        }
    }
    assert!(
        figures.iter().all(|m| m.topic.starts_with("$SYS/broker/")),
        "{figures:?}"
    );

    // Neither `#` nor `a/#` heard any of it, live or retained: each hears
    // its own marker, behind whatever would have been queued for it.
    for (client, marker) in [(&mut all, "m/all"), (&mut narrow, "a/marker")] {
        let heard = until_own_marker(client, marker).await;
        let dollar: Vec<&str> = heard
            .iter()
            .map(|p| p.topic.as_str())
            .filter(|t| t.starts_with('$'))
            .collect();
        assert!(dollar.is_empty(), "{marker}: {dollar:?}");
    }

    // A client granted $SYS/# may read it, never write it.
    let args = ["-q", "1", "-r", "-t", "$SYS/broker/version", "-m", "forged"];
    let (_, v5) = mosquitto_pub(&gw, Version::V5, "forger-5", &reader_token, &args).await;
    assert!(v5.contains("received PUBACK (Mid: 1, RC:135)"), "{v5}");
    // MQTT 3.1.1 has no reason code: acknowledged, and dropped.
    let (_, v311) = mosquitto_pub(&gw, Version::V311, "forger-311", &reader_token, &args).await;
    assert!(v311.contains("received PUBACK"), "{v311}");
    let mut will = gw.v4_options("will", &reader_token);
    will.set_last_will(LastWill::new(
        "$SYS/broker/version",
        "forged",
        QoS::AtMostOnce,
        true,
    ));
    let mut will = V4Client::start(will);
    assert_eq!(
        will.connack().await.code,
        ConnectReturnCode::NotAuthorized,
        "a will on $SYS"
    );

    // The retained version is still the gateway's, for a reader arriving
    // now and for the one that listened throughout.
    let mut late = Sub::start(&gw, "late", &reader_token, "$SYS/broker/version");
    let version = late.message(&sys("version"), |_| true).await;
    assert_eq!(
        (version.payload.as_str(), version.retained),
        (VERSION, true)
    );
    // One more tick for the forgeries to have reached it, had they gone
    // through.
    let ticks = live_uptimes(&reader.messages());
    reader
        .until("one more live uptime", |all| live_uptimes(all) > ticks)
        .await;
    let forged: Vec<Msg> = reader
        .messages()
        .into_iter()
        .filter(|m| m.payload == "forged")
        .collect();
    assert!(forged.is_empty(), "{forged:?}");

    let scraped = scrape(port).await;
    assert_eq!(value(&scraped, "jwtgate_publishes_refused_total"), 2.0);
    assert_eq!(
        value(
            &scraped,
            "jwtgate_connects_total{outcome=\"not_authorized\"}"
        ),
        1.0
    );
    assert!(gw.served.log().contains("$SYS: publishing"));
    gw.assert_no_panic();
}

/// Without `[sys]` nothing is published under `$SYS`: a token granted
/// `$SYS/#` subscribes and hears nothing, retained or live, until its
/// own marker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_under_sys_without_the_table() {
    let gw = DevBinary::start("", "").await;
    let token = gw.token("operator", &["$SYS/#", "m/#"], HOUR);
    let mut reader = V4Client::start(gw.v4_options("operator", &token));
    assert_eq!(reader.connack().await.code, ConnectReturnCode::Success);
    assert_eq!(
        reader
            .subscribe_many(&[("$SYS/#", QoS::AtMostOnce), ("m/marker", QoS::AtMostOnce)])
            .await,
        [SubscribeReasonCode::Success(QoS::AtMostOnce); 2]
    );
    let heard = until_own_marker(&mut reader, "m/marker").await;
    assert!(heard.is_empty(), "{heard:?}");
    assert!(!gw.served.log().contains("$SYS: publishing"));
    gw.assert_no_panic();
}
