//! Prometheus metrics (issue 13): the real binary with `[metrics] listen`,
//! scraped over HTTP before and after a scripted session (a good connect,
//! bad tokens, a refused publish, key reloads), every counter checked for
//! the amount it must have moved; and the listener's loopback rule.

// Tests panic on purpose when a fixture cannot be set up.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::scrape::{metrics_port, value};
use common::{DevBinary, QUIET, V4Client, WAIT, mqtt, now_unix, sign_hs256_kid};
use rumqttc::{ConnectReturnCode, QoS};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One scrape: every sample line, `name{labels}` to value.
#[derive(Debug, Clone)]
struct Scrape(BTreeMap<String, f64>);

impl Scrape {
    /// The value of `series`, which must be exported: every family is,
    /// with every label value, from the start, so a misspelt or missing
    /// series fails here instead of reading as 0 (the harness's strict
    /// [`value`]).
    fn get(&self, series: &str) -> f64 {
        value(&self.0, series)
    }

    /// How much `series` grew since `before`.
    fn delta(&self, before: &Scrape, series: &str) -> f64 {
        self.get(series) - before.get(series)
    }
}

/// `GET path` on the metrics port: the status line and the body.
async fn http_get(port: u16, path: &str) -> (String, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect to the metrics port");
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    tokio::time::timeout(WAIT, stream.read_to_string(&mut response))
        .await
        .expect("the response within WAIT")
        .expect("read the response");
    let (head, body) = response.split_once("\r\n\r\n").expect("a head and a body");
    let status = head.lines().next().unwrap_or_default().to_owned();
    (status, body.to_owned())
}

async fn scrape(port: u16) -> Scrape {
    let (status, body) = http_get(port, "/metrics").await;
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    Scrape(
        body.lines()
            .filter(|line| !line.starts_with('#') && !line.is_empty())
            .map(|line| {
                let (series, value) = line.rsplit_once(' ').expect("`series value`");
                (series.to_owned(), value.parse().expect("a number"))
            })
            .collect(),
    )
}

/// Scrapes until `done` holds (a reload happens a moment after its file
/// lands), for up to [`WAIT`].
async fn scrape_until(port: u16, done: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let now = scrape(port).await;
        if done(&now) {
            return now;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the metrics never got there: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Connects a v3.1.1 client with `token` and returns it with its CONNACK code.
async fn connect(gw: &DevBinary, client_id: &str, token: &str) -> (V4Client, ConnectReturnCode) {
    let mut client = V4Client::start(gw.v4_options(client_id, token));
    let code = client.connack().await.code;
    (client, code)
}

/// Drops `name` into the keys directory the way operators are told to:
/// written as a dotfile, then renamed into place (one change, one reload).
fn drop_key_file(gw: &DevBinary, name: &str, contents: &str) {
    let dir = gw.keys_dir();
    let scratch = dir.join(format!(".{name}.tmp"));
    std::fs::write(&scratch, contents).unwrap();
    std::fs::rename(&scratch, dir.join(name)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scripted_session_moves_each_counter_by_its_amount() {
    let gw = DevBinary::start("", "[metrics]\nlisten = \"127.0.0.1:0\"\n").await;
    // The port of a `[metrics] listen` with port 0, from the ready file.
    let port = metrics_port(&gw).await;
    // Nothing has connected yet: the harness learns that the gateway is
    // ready from its ready file, without probing the port, so not even a
    // failed handshake is counted.
    let handshake_errors = "jwtgate_tls_handshake_failures_total{reason=\"error\"}";
    let before = scrape(port).await;
    assert_eq!(before.get(handshake_errors), 0.0, "{before:?}");
    assert_eq!(before.get("jwtgate_keys_loaded"), 1.0, "{before:?}");
    assert_eq!(before.get("jwtgate_connections{protocol=\"3.1.1\"}"), 0.0);
    // Before any event, each labelled family is there at zero (an alert
    // rule sees 0, not "no data"; README's `grep ^jwtgate_connects` finds
    // it on a fresh gateway).
    for series in [
        "jwtgate_connects_total{outcome=\"accepted\"}",
        "jwtgate_connects_total{outcome=\"expired\"}",
        "jwtgate_reauthentications_total{outcome=\"accepted\"}",
        "jwtgate_disconnects_total{reason=\"client\"}",
        "jwtgate_disconnects_total{reason=\"protocol_error\"}",
        "jwtgate_protocol_violations_total{violation=\"second_connect\"}",
        "jwtgate_protocol_violations_total{violation=\"no_local_on_shared\"}",
        "jwtgate_protocol_violations_total{violation=\"unsubscribe_without_filters\"}",
        "jwtgate_connects_total{outcome=\"protocol_error\"}",
        "jwtgate_connects_total{outcome=\"malformed_packet\"}",
        "jwtgate_key_reloads_total{result=\"ok\"}",
        "jwtgate_key_reloads_total{result=\"failed\"}",
        "jwtgate_tls_handshake_failures_total{reason=\"timeout\"}",
    ] {
        assert_eq!(before.get(series), 0.0, "{series}");
    }

    // A good device: connects, subscribes, publishes where it may (QoS 1,
    // delivered back to itself) and where it may not.
    let token = gw.token("meter-1", &["meters/1/#"], Duration::from_secs(600));
    let (mut good, code) = connect(&gw, "meter-1", &token).await;
    assert_eq!(code, ConnectReturnCode::Success);
    good.subscribe("meters/1/#", QoS::AtLeastOnce).await;
    good.publish("meters/1/kwh", QoS::AtLeastOnce, false, b"42")
        .await;
    good.expect_publish("meters/1/kwh").await;
    good.publish("meters/2/kwh", QoS::AtLeastOnce, false, b"not mine")
        .await;
    let during = scrape(port).await;
    assert_eq!(during.get("jwtgate_connections{protocol=\"3.1.1\"}"), 1.0);

    // Plaintext MQTT on the TLS port: a failed handshake.
    let mut plain = TcpStream::connect(gw.addr()).await.unwrap();
    plain
        .write_all(b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x00")
        .await
        .unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(WAIT, plain.read_to_end(&mut rest)).await;

    // A device that sends CONNECT twice: closed for the rule it broke.
    let mut twice = gw.raw().await;
    let hello = mqtt::Connect::new(4, "meter-5")
        .username("JWT")
        .password(&gw.token("meter-5", &["meters/5/#"], Duration::from_secs(600)))
        .encode();
    twice.send_ok(&hello).await;
    assert_eq!(twice.read_packet().await, mqtt::CONNACK_OK_V4);
    let _ = twice.send(&hello).await;
    assert!(twice.expect_closed().await.is_empty());

    // Three devices refused, each for a reason of its own.
    let claims = |sub: &str, exp: u64| json!({ "sub": sub, "exp": exp, "topics": ["x/#"] });
    let expired = gw.sign(&claims("meter-2", now_unix() - 3600));
    let forged = sign_hs256_kid(
        b"not the gateway's secret, 32 bytes+",
        "dev",
        &claims("meter-3", now_unix() + 600),
    );
    let unknown = sign_hs256_kid(
        b"not the gateway's secret, 32 bytes+",
        "retired-2025",
        &claims("meter-4", now_unix() + 600),
    );
    for (client_id, token) in [("m2", &expired), ("m3", &forged), ("m4", &unknown)] {
        let (_, code) = connect(&gw, client_id, token).await;
        assert_eq!(code, ConnectReturnCode::BadUserNamePassword, "{client_id}");
    }
    good.disconnect().await;
    let after_session = scrape_until(port, |s| {
        s.get("jwtgate_connections{protocol=\"3.1.1\"}") == 0.0
    })
    .await;

    // A new key, then a broken file: one reload each.
    drop_key_file(
        &gw,
        "site-2027.b64",
        "c2l0ZS0yMDI3LXNlY3JldC1vZi1hdC1sZWFzdC0zMi1ieXRlcw==\n",
    );
    let reloaded = scrape_until(port, |s| s.get("jwtgate_keys_loaded") == 2.0).await;
    drop_key_file(&gw, "broken.b64", "this is not base64!\n");
    let broken = scrape_until(port, |s| {
        s.delta(&reloaded, "jwtgate_key_reloads_total{result=\"failed\"}") > 0.0
    })
    .await;
    // Time for a second, unwanted reload to show (the harness's window of
    // "nothing more happens").
    tokio::time::sleep(QUIET).await;
    let end = scrape(port).await;

    let expect = [
        // The good device and the one that sent CONNECT twice.
        ("jwtgate_connects_total{outcome=\"accepted\"}", 2.0),
        ("jwtgate_connects_total{outcome=\"expired\"}", 1.0),
        ("jwtgate_connects_total{outcome=\"bad_signature\"}", 1.0),
        ("jwtgate_connects_total{outcome=\"unknown_kid\"}", 1.0),
        ("jwtgate_publishes_received_total{qos=\"1\"}", 1.0),
        ("jwtgate_deliveries_total{qos=\"1\"}", 1.0),
        ("jwtgate_publishes_refused_total", 1.0),
        ("jwtgate_subscriptions_refused_total", 0.0),
        ("jwtgate_disconnects_total{reason=\"client\"}", 1.0),
        ("jwtgate_disconnects_total{reason=\"protocol_error\"}", 1.0),
        (
            "jwtgate_protocol_violations_total{violation=\"second_connect\"}",
            1.0,
        ),
        ("jwtgate_key_reloads_total{result=\"ok\"}", 1.0),
        ("jwtgate_key_reloads_total{result=\"failed\"}", 1.0),
        (handshake_errors, 1.0),
        (
            "jwtgate_tls_handshake_failures_total{reason=\"timeout\"}",
            0.0,
        ),
    ];
    for (series, amount) in expect {
        assert_eq!(end.delta(&before, series), amount, "{series}: {end:?}");
    }
    assert_eq!(
        end.get("jwtgate_keys_loaded"),
        2.0,
        "the broken file added nothing"
    );
    assert_eq!(end, broken, "nothing moved after the reloads settled");
    // Bytes: at least the good device's CONNECT (which carries its token)
    // in, and its CONNACK, SUBACK, PUBACKs and the delivery out.
    let received = after_session.delta(&before, "jwtgate_received_bytes_total");
    let sent = after_session.delta(&before, "jwtgate_sent_bytes_total");
    assert!(received > token.len() as f64, "received {received}");
    assert!(sent >= 4.0 + 5.0 + 2.0 * 4.0 + 17.0, "sent {sent}");

    // Only /metrics is served.
    let (status, _) = http_get(port, "/").await;
    assert_eq!(status, "HTTP/1.1 404 Not Found");
}

impl PartialEq for Scrape {
    /// Equal but for the byte counters, which the scrapes themselves do
    /// not move (they are MQTT bytes) but a keep-alive could.
    fn eq(&self, other: &Scrape) -> bool {
        let without_bytes = |s: &Scrape| {
            s.0.iter()
                .filter(|(k, _)| !k.ends_with("_bytes_total"))
                .map(|(k, v)| (k.clone(), *v))
                .collect::<BTreeMap<_, _>>()
        };
        without_bytes(self) == without_bytes(other)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_endpoint_refuses_a_non_loopback_address_unless_allowed() {
    // Refused at start, naming file, line and key.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("jwtgate.toml");
    std::fs::write(&config, "[metrics]\nlisten = \"0.0.0.0:9883\"\n").unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_jwtgate"))
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .output()
        .expect("run jwtgate serve");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    for needle in [
        "jwtgate.toml:2:",
        "[metrics] listen",
        "not a loopback address",
    ] {
        assert!(stderr.contains(needle), "no {needle:?} in: {stderr}");
    }

    // Served there when the config says so explicitly.
    let gw = DevBinary::start(
        "",
        "[metrics]\nlisten = \"0.0.0.0:0\"\nallow_remote = true\n",
    )
    .await;
    let scrape = scrape(metrics_port(&gw).await).await;
    assert_eq!(scrape.get("jwtgate_keys_loaded"), 1.0);
}

// ---------------------------------------------------------------------------
// The HTTP under /metrics (issue 21: hyper, one request a connection, 64
// places, the oldest closed for the newest)
// ---------------------------------------------------------------------------

const METRICS_ON: &str = "[metrics]\nlisten = \"127.0.0.1:0\"\n";

/// An HTTP answer read to the end of its connection: the head (status line
/// and headers) and the body.
#[derive(Debug)]
struct Answer {
    head: String,
    body: Vec<u8>,
}

impl Answer {
    fn status_line(&self) -> &str {
        self.head.lines().next().unwrap_or_default()
    }

    /// The value of header `name` (any case).
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim()
                .eq_ignore_ascii_case(name)
                .then_some(value.trim())
        })
    }
}

/// Writes `request` as given on a new connection to the metrics port and
/// reads the answer until the server closes (it serves one request a
/// connection); returns it with the time from the connect to the close.
async fn exchange(port: u16, request: &[u8]) -> (Answer, Duration) {
    let started = std::time::Instant::now();
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect to the metrics port");
    stream.write_all(request).await.unwrap();
    let mut bytes = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut bytes))
        .await
        .expect("the answer and the close within WAIT")
        .expect("read the answer");
    let took = started.elapsed();
    let text = String::from_utf8_lossy(&bytes);
    let (head, _) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP head in {text:?}"));
    let answer = Answer {
        head: head.to_owned(),
        body: bytes[head.len() + 4..].to_vec(),
    };
    (answer, took)
}

/// The exposition in `body`, which must hold the gateway's families.
fn assert_exposition(body: &[u8]) {
    let text = String::from_utf8_lossy(body);
    assert!(
        text.lines().any(|line| line == "jwtgate_keys_loaded 1"),
        "not the exposition: {text}"
    );
}

/// How long an honest scrape may take while strangers hold sockets open:
/// the bound.
const SCRAPE_BOUND: Duration = Duration::from_secs(1);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_with_bare_lf_line_endings_gets_the_exposition() {
    let gw = DevBinary::start("", METRICS_ON).await;
    let port = metrics_port(&gw).await;
    let (answer, took) = exchange(port, b"GET /metrics HTTP/1.1\nHost: x\n\n").await;
    eprintln!("bare-LF request answered in {took:?}");
    assert_eq!(answer.status_line(), "HTTP/1.1 200 OK", "{answer:?}");
    assert_exposition(&answer.body);
    assert!(took < SCRAPE_BOUND, "answered in {took:?}");
}

/// Connections opened and left silent, each waiting for its request head
/// (5 s), do not delay a scrape: 32 of them held open for the whole
/// scrape, which is answered within the bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_two_silent_sockets_do_not_hold_off_a_scrape() {
    let gw = DevBinary::start("", METRICS_ON).await;
    silent_sockets_then_a_scrape(metrics_port(&gw).await, 32).await;
    gw.assert_no_panic();
}

/// More silent sockets than the endpoint's places (64): the oldest make
/// room, and a scrape is still answered within the bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_silent_sockets_than_places_do_not_hold_off_a_scrape() {
    let gw = DevBinary::start("", METRICS_ON).await;
    silent_sockets_then_a_scrape(metrics_port(&gw).await, 2 * 64).await;
    gw.assert_no_panic();
}

/// Opens `count` connections to `port` that send nothing, then scrapes
/// while holding them; asserts the scrape's answer and its time.
async fn silent_sockets_then_a_scrape(port: u16, count: usize) {
    let mut silent = Vec::with_capacity(count);
    for _ in 0..count {
        silent.push(
            TcpStream::connect(("127.0.0.1", port))
                .await
                .expect("connect a silent socket"),
        );
    }
    let (answer, took) = exchange(
        port,
        b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\n\r\n",
    )
    .await;
    // Held until the scrape is over: whichever the server let go of by now
    // read as closed.
    let still_open = silent
        .iter()
        .filter(|socket| {
            let mut byte = [0u8; 1];
            matches!(socket.try_read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
        })
        .count();
    eprintln!(
        "scrape with {count} silent sockets held: {took:?} ({still_open} still open after it)"
    );
    drop(silent);
    assert_eq!(answer.status_line(), "HTTP/1.1 200 OK", "{answer:?}");
    assert_exposition(&answer.body);
    assert!(
        took < SCRAPE_BOUND,
        "the scrape took {took:?} with {count} silent sockets held"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_gets_no_body_and_a_post_is_refused() {
    let gw = DevBinary::start("", METRICS_ON).await;
    let port = metrics_port(&gw).await;

    let (head, _) = exchange(port, b"HEAD /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n").await;
    assert_eq!(head.status_line(), "HTTP/1.1 200 OK", "{head:?}");
    assert!(head.body.is_empty(), "a body after HEAD: {head:?}");
    assert!(
        head.header("content-type")
            .is_some_and(|t| t.starts_with("text/plain")),
        "{head:?}"
    );

    let (post, _) = exchange(
        port,
        b"POST /metrics HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n",
    )
    .await;
    assert_eq!(
        post.status_line(),
        "HTTP/1.1 405 Method Not Allowed",
        "{post:?}"
    );
    assert_eq!(post.header("allow"), Some("GET, HEAD"), "{post:?}");

    // The GET beside them is served as ever.
    let (get, _) = exchange(port, b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n").await;
    assert_eq!(get.status_line(), "HTTP/1.1 200 OK", "{get:?}");
    assert_exposition(&get.body);
}
