//! Hostile and broken clients against the real `jwtgate` binary over TLS
//! (issue 9): floods of strangers, slow handshakes, oversized and malformed
//! first frames, readers that stop reading, revocations racing a CONNECT,
//! tokens built to overflow or to share sessions.
//!
//! Every case ends by checking that a well-behaved device still connects,
//! subscribes, publishes and receives its own message within
//! [`SERVED_WITHIN`], and that the gateway's log shows no panic. The
//! figures the cases rely on (memory per unauthenticated connection, time
//! to disconnect a stalled reader) are printed (`--nocapture` shows them).

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant, SystemTime};

use common::checks::{ahead_of_now, assert_at_exp, until_metric};
use common::{
    DevBinary, RawClient, Read, V4Client, WAIT, device_claims, drop_secret, kubelet_update, mqtt,
    now_unix, raise_open_file_limit, sign_hs256_kid, tcp_from, write_atomically,
};
use rumqttc::{ConnectReturnCode, QoS};
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const HOUR: Duration = Duration::from_secs(3600);
/// What "still served" means: a device connects, subscribes, publishes at
/// QoS 1 and receives its message back within this time.
const SERVED_WITHIN: Duration = Duration::from_secs(10);

/// A well-behaved device named `name` is served within [`SERVED_WITHIN`]
/// (see `DevBinary::device_is_served`).
async fn device_is_served(gw: &DevBinary, name: &str) -> Duration {
    gw.device_is_served(name, SERVED_WITHIN).await
}

/// 127.0.0.`n`: another host, as far as the gateway can tell.
fn loopback(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, n))
}

/// Whether the server has closed a plain TCP connection that sent nothing.
fn tcp_is_closed(tcp: &TcpStream) -> bool {
    let mut byte = [0u8; 1];
    match tcp.try_read(&mut byte) {
        Ok(_) => true,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    }
}

/// Whether the server has closed a TLS connection that sent nothing.
async fn tls_is_closed(raw: &mut RawClient) -> bool {
    matches!(
        raw.read_within(Duration::from_millis(1)).await,
        Some(Read::Closed(_))
    )
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

// ---------------------------------------------------------------------------
// Strangers: connections that never authenticate
// ---------------------------------------------------------------------------

/// Issue 9 item 1, as reproduced: with `max_connections = 600`, 700 silent
/// TCP sockets from 127.0.0.2 made a device from 127.0.0.1 fail its TLS
/// handshake. Now one source holds at most `max_pending_per_source` (64)
/// unauthenticated places; the rest are closed at once, and the device is
/// served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_sockets_from_one_source_leave_room_for_devices() {
    raise_open_file_limit();
    let gw = DevBinary::start("", "[limits]\nmax_connections = 600\n").await;
    let mut silent = Vec::new();
    for _ in 0..700 {
        silent.push(tcp_from(loopback(2), gw.addr()).await.expect("TCP connect"));
    }
    gw.served
        .wait_for_log(0, "too many unauthenticated connections from one source")
        .await;
    let took = device_is_served(&gw, "after-silent-flood").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let open = silent.iter().filter(|tcp| !tcp_is_closed(tcp)).count();
    eprintln!(
        "700 silent sockets from one source: {open} kept open; a device was served in {took:?}"
    );
    assert!(
        open <= 64,
        "{open} silent sockets from one source kept open"
    );
}

/// A thousand strangers from twenty sources (each under its cap), silent
/// TCP sockets and TLS connections that never send CONNECT, against
/// `max_pending_connections = 600`: the newest push out the oldest, and
/// devices reconnecting meanwhile are served. Also measures the memory an
/// unauthenticated connection holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_strangers_do_not_lock_out_reconnecting_devices() {
    raise_open_file_limit();
    // Timeouts far beyond the test, so that every stranger is held until
    // pushed out (and while memory is measured).
    let gw = DevBinary::start(
        "",
        "[limits]\nmax_pending_connections = 600\nhandshake_timeout_secs = 120\n\
         connect_timeout_secs = 120\n",
    )
    .await;
    let source = |i: usize| loopback(10 + (i % 20) as u8);
    let mut tcp = Vec::new();
    let mut tls = Vec::new();

    // 400 silent TCP sockets, then 200 TLS connections without CONNECT:
    // 600 places, all taken, none pushed out yet.
    let before = settled_rss(&gw).await;
    for i in 0..400 {
        tcp.push(tcp_from(source(i), gw.addr()).await.expect("TCP connect"));
    }
    let after_tcp = settled_rss(&gw).await;
    for i in 0..200 {
        tls.push(RawClient::connect_from(source(i), gw.addr(), &gw.ca).await);
    }
    let after_tls = settled_rss(&gw).await;
    // Measured while the gateway holds them all: none was closed.
    let open_tcp = tcp.iter().filter(|tcp| !tcp_is_closed(tcp)).count();
    let mut open_tls = 0;
    for raw in &mut tls {
        if !tls_is_closed(raw).await {
            open_tls += 1;
        }
    }
    assert_eq!((open_tcp, open_tls), (400, 200), "strangers closed early");
    let per_tcp = after_tcp.rss.saturating_sub(before.rss) / 400;
    let per_tls = after_tls.rss.saturating_sub(after_tcp.rss) / 200;
    eprintln!(
        "gateway RSS {:.1} MiB → {:.1} MiB with 400 silent TCP sockets → {:.1} MiB with 200 TLS \
         connections without CONNECT: {:.1} KiB per silent socket, {:.1} KiB per TLS connection",
        mib(before.rss),
        mib(after_tcp.rss),
        mib(after_tls.rss),
        per_tcp as f64 / 1024.0,
        per_tls as f64 / 1024.0,
    );
    assert!(
        per_tls <= 64 * 1024 && per_tcp <= 64 * 1024,
        "an unauthenticated connection holds more than 64 KiB"
    );
    // And the measurement saw them at all: each holds a task, a socket's
    // buffers and, for TLS, a rustls session (about 15 and 22 KiB here);
    // under 1 KiB means the figures were read before the gateway took the
    // connections in.
    assert!(
        per_tcp >= 1024 && per_tls >= 1024,
        "{per_tcp} bytes per silent socket, {per_tls} per TLS connection: not measured"
    );

    // 400 more strangers while ten devices reconnect one after another.
    let devices = async {
        let mut slowest = Duration::ZERO;
        for n in 0..10 {
            slowest = slowest.max(device_is_served(&gw, &format!("reconnecting-{n}")).await);
        }
        slowest
    };
    let more = async {
        for i in 0..400 {
            if i % 2 == 0 {
                tcp.push(tcp_from(source(i), gw.addr()).await.expect("TCP connect"));
            } else {
                tls.push(RawClient::connect_from(source(i), gw.addr(), &gw.ca).await);
            }
        }
    };
    let (slowest, ()) = tokio::join!(devices, more);
    gw.served
        .wait_for_log(0, "unauthenticated connections are being pushed out")
        .await;
    // A newcomer takes its place at once; the stranger it pushed out is
    // closed a moment later, by its own task: count until that settles.
    let settle = Instant::now() + WAIT;
    let open = loop {
        let mut open = tcp.iter().filter(|tcp| !tcp_is_closed(tcp)).count();
        for raw in &mut tls {
            if !tls_is_closed(raw).await {
                open += 1;
            }
        }
        if open <= 600 || Instant::now() >= settle {
            break open;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!(
        "1,000 strangers against 600 places: {open} still open; the slowest of 10 reconnecting \
         devices was served in {slowest:?}"
    );
    assert!(open <= 600, "{open} strangers hold places");
    device_is_served(&gw, "after-strangers").await;
}

/// The gateway's resident memory once it has stopped changing: three
/// readings 200 ms apart within 64 KiB of each other. Panics after
/// [`WAIT`].
async fn settled_rss(gw: &DevBinary) -> common::Memory {
    let deadline = Instant::now() + WAIT;
    let mut readings = vec![gw.served.memory()];
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        readings.push(gw.served.memory());
        if let [.., a, b, c] = readings.as_slice() {
            let (low, high) = (a.rss.min(b.rss).min(c.rss), a.rss.max(b.rss).max(c.rss));
            if high - low <= 64 * 1024 {
                return *c;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the gateway's RSS never settled: {:?}",
            readings.iter().map(|m| m.rss).collect::<Vec<_>>()
        );
    }
}

/// A slow-loris TLS handshake: 50 connections that trickle a TLS record
/// header and then a byte every 200 ms never finish their handshake; each
/// is closed at `handshake_timeout_secs`, not before, and devices are
/// served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_loris_handshakes_are_cut_at_the_handshake_timeout() {
    const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);
    let gw = DevBinary::start("", "[limits]\nhandshake_timeout_secs = 2\n").await;
    let started = Instant::now();
    let mut slow = Vec::new();
    for _ in 0..50 {
        let mut tcp = tcp_from(loopback(3), gw.addr()).await.expect("TCP connect");
        // A handshake record announcing 512 bytes.
        tcp.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00])
            .await
            .unwrap();
        slow.push(tcp);
    }
    // When each connection was first seen cut (a write failing).
    let mut cut: Vec<Option<Duration>> = vec![None; slow.len()];
    let trickle = async {
        loop {
            for (tcp, cut) in slow.iter_mut().zip(cut.iter_mut()) {
                if cut.is_none() && tcp.write_all(&[0x01]).await.is_err() {
                    *cut = Some(started.elapsed());
                }
            }
            if cut.iter().all(Option::is_some) || started.elapsed() > WAIT {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let ((), served_in) = tokio::join!(trickle, device_is_served(&gw, "beside-loris"));
    let cut: Vec<Duration> = cut
        .into_iter()
        .map(|at| at.expect("a slow handshake still open after WAIT"))
        .collect();
    let (first, last) = (
        cut.iter().min().copied().unwrap_or_default(),
        cut.iter().max().copied().unwrap_or_default(),
    );
    eprintln!(
        "50 slow-loris handshakes cut between {first:?} and {last:?}; a device was served in \
         {served_in:?}"
    );
    // None before the timeout (each was accepted after `started`), though
    // every one kept sending; all within a few trickle rounds after it.
    assert!(
        first >= HANDSHAKE_TIMEOUT,
        "a slow handshake was cut after {first:?}, before the handshake timeout"
    );
    assert!(
        last < HANDSHAKE_TIMEOUT + Duration::from_secs(4),
        "a slow handshake was still open {last:?} after it began"
    );
}

/// A ClientHello that never ends (1 MiB announced, sent as full 16 KiB
/// records) is refused once rustls's 64 KiB limit for a handshake message
/// is reached: the connection closes before a quarter of it is written, so
/// what the gateway held for it stayed bounded, and devices are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_client_hello_is_cut_at_64_kib() {
    const RECORD: usize = 16 * 1024;
    let gw = DevBinary::start("", "[metrics]\nlisten = \"127.0.0.1:0\"\n").await;
    let mut tcp = tcp_from(loopback(4), gw.addr()).await.expect("TCP connect");
    let mut sent = 0;
    let cut = loop {
        let mut record = vec![0x16, 0x03, 0x01, (RECORD >> 8) as u8, 0];
        let mut body = vec![0u8; RECORD];
        if sent == 0 {
            // ClientHello, 1 MiB long.
            body[..4].copy_from_slice(&[0x01, 0x10, 0x00, 0x00]);
        }
        record.extend_from_slice(&body);
        if tcp.write_all(&record).await.is_err() {
            break true;
        }
        sent += RECORD;
        if sent >= 256 * 1024 {
            // Unread data may sit in the socket buffers: the answer says.
            let mut answer = Vec::new();
            let read = tokio::time::timeout(
                WAIT,
                tokio::io::AsyncReadExt::read_to_end(&mut tcp, &mut answer),
            )
            .await;
            break matches!(read, Ok(Ok(_) | Err(_)));
        }
    };
    assert!(cut, "the gateway kept reading a ClientHello past 256 KiB");
    eprintln!(
        "an endless ClientHello was cut after {} KiB were written",
        sent / 1024
    );
    device_is_served(&gw, "after-endless-hello").await;
}

/// A first frame larger than `max_connect_packet_size` (16 KiB) closes the
/// connection from its fixed header, before its body is buffered: a
/// CONNECT announcing 256 MiB, and a real 20 KiB CONNECT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_first_frames_close_the_connection_unread() {
    let gw = DevBinary::start("", "").await;
    let mut huge = gw.raw().await;
    huge.send_ok(&[0x10, 0xff, 0xff, 0xff, 0x7f, 0x00, 0x04])
        .await;
    assert!(huge.expect_closed().await.is_empty(), "no CONNACK");

    let token = gw.token("big-connect", &["ok/#"], HOUR);
    let big = mqtt::Connect::new(4, &"x".repeat(20 * 1024))
        .username("JWT")
        .password(&token)
        .encode();
    let mut raw = gw.raw().await;
    // The gateway may close before all of it is written.
    let _ = raw.send(&big).await;
    assert!(raw.expect_closed().await.is_empty(), "no CONNACK");
    device_is_served(&gw, "after-oversized").await;
}

// ---------------------------------------------------------------------------
// Malformed frames
// ---------------------------------------------------------------------------

/// Issue 9 item 4: a 2-byte CONNECT followed by an MQTT 3.1 variable header
/// used to make the protocol sniffer read past the frame and panic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqisdp_sniff_bytes_close_the_connection_without_a_panic() {
    let gw = DevBinary::start("", "").await;
    let mut raw = gw.raw().await;
    raw.send_ok(b"\x10\x00\x00\x06MQIsdp\x03").await;
    assert!(raw.expect_closed().await.is_empty());
    device_is_served(&gw, "after-sniff").await;
}

/// A second CONNECT inside an MQTT 3.1 session, in the same shape, or as a
/// proper 3.1 CONNECT: a protocol error that closes the connection, not a
/// panic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_connect_in_a_v31_session_closes_it() {
    let gw = DevBinary::start("", "").await;
    let token = gw.token("v31", &["ok/#"], HOUR);
    for second in [
        b"\x10\x00\x00\x06MQIsdp\x03".to_vec(),
        mqtt::Connect::new(3, "v31")
            .username("JWT")
            .password(&token)
            .encode(),
    ] {
        let mut raw = gw.raw().await;
        raw.send_ok(
            &mqtt::Connect::new(3, "v31")
                .username("JWT")
                .password(&token)
                .encode(),
        )
        .await;
        assert_eq!(raw.read_packet().await, mqtt::CONNACK_OK_V4);
        let _ = raw.send(&second).await;
        assert!(raw.expect_closed().await.is_empty());
    }
    device_is_served(&gw, "after-v31").await;
}

// ---------------------------------------------------------------------------
// Readers that stop reading
// ---------------------------------------------------------------------------

/// A subscriber of `busy/#` that stops reading after its SUBACK: its socket
/// receive buffer is 4 KiB, so its TCP window soon stays at zero. With
/// `will`, its will is `(topic, payload)`.
async fn stalled_subscriber(
    gw: &DevBinary,
    client_id: &str,
    token: &str,
    will: Option<(&str, &[u8])>,
) -> RawClient {
    let mut raw = RawClient::connect_with_receive_buffer(gw.addr(), &gw.ca, 4096).await;
    let mut connect = mqtt::Connect::new(4, client_id)
        .username("JWT")
        .password(token);
    if let Some((topic, payload)) = will {
        connect = connect.will(topic, payload);
    }
    raw.send_ok(&connect.encode()).await;
    assert_eq!(raw.read_packet().await, mqtt::CONNACK_OK_V4);
    raw.send_ok(&mqtt::subscribe(4, 1, "busy/#", 0)).await;
    assert_eq!(mqtt::packet_type(&raw.read_packet().await), Some(9));
    raw
}

/// A device subscribed to `wills/#`, for the stalled readers' wills.
async fn will_watcher(gw: &DevBinary) -> V4Client {
    let token = gw.token("will-watcher", &["wills/#"], HOUR);
    let mut watcher = V4Client::start(gw.v4_options("will-watcher", &token));
    assert_eq!(watcher.connack().await.code, ConnectReturnCode::Success);
    watcher.subscribe("wills/#", QoS::AtLeastOnce).await;
    watcher
}

/// Waits until the gateway drops deliveries for a full session queue
/// (`slow_subscriber = "drop"`): the subscriber that stopped reading has
/// taken all it will, and the gateway's writes to it are stuck. Needs
/// [`METRICS`] in the config.
async fn until_writes_are_stuck(gw: &DevBinary) {
    until_metric(gw, "jwtgate_slow_subscriber_drops_total", |n| n > 0.0).await;
}

/// Reads the stalled reader's socket until the gateway's close shows:
/// what the kernel still held for it, then the end of the stream. Panics if
/// the socket is still open [`WAIT`] after the last byte (the flood must
/// have stopped).
async fn assert_closed_by_the_gateway(stalled: &mut RawClient, what: &str) {
    loop {
        match stalled.read_within(WAIT).await {
            Some(Read::Packet(_)) => {}
            Some(Read::Closed(_)) => return,
            None => panic!("{what}: the stalled reader's socket is still open"),
        }
    }
}

/// The metrics endpoint, on a port of its own choosing.
const METRICS: &str = "\n[metrics]\nlisten = \"127.0.0.1:0\"\n";

/// Publishes 64 KiB QoS 0 messages to `busy/load` as fast as the gateway
/// takes them, until the returned task is aborted.
fn flood_busy_topic(gw: &DevBinary) -> tokio::task::JoinHandle<()> {
    let token = gw.token("flooder", &["busy/#"], HOUR);
    let flooder = V4Client::start(gw.v4_options("flooder", &token));
    tokio::spawn(async move {
        let mut flooder = flooder;
        assert_eq!(flooder.connack().await.code, ConnectReturnCode::Success);
        let payload = vec![0x5a; 64 * 1024];
        loop {
            if flooder
                .client
                .publish("busy/load", QoS::AtMostOnce, false, payload.clone())
                .await
                .is_err()
            {
                return;
            }
        }
    })
}

/// Issue 9 item 2: a subscriber with a zero receive window on a busy topic
/// is disconnected by the write deadline (`write_timeout_secs = 2`), while
/// a subscriber that reads keeps receiving. The slow-subscriber policy is
/// "drop", so only the write deadline can end the stalled one. As the
/// README says, its will is published; and its socket is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_stops_reading_is_disconnected_by_the_write_deadline() {
    const WRITE_TIMEOUT: Duration = Duration::from_secs(2);
    let gw = DevBinary::start(
        "",
        "[limits]\nwrite_timeout_secs = 2\n\n[sessions]\nslow_subscriber = \"drop\"\n",
    )
    .await;
    let mut watcher = will_watcher(&gw).await;
    let token = gw.token("stalled", &["busy/#", "wills/#"], HOUR);
    let mut stalled = stalled_subscriber(
        &gw,
        "stalled",
        &token,
        Some(("wills/stalled", b"stalled: gone")),
    )
    .await;
    let reader_token = gw.token("reader", &["busy/#"], HOUR);
    let mut reader = V4Client::start(gw.v4_options("reader", &reader_token));
    assert_eq!(reader.connack().await.code, ConnectReturnCode::Success);
    reader.subscribe("busy/#", QoS::AtMostOnce).await;

    let started = Instant::now();
    let flood = flood_busy_topic(&gw);
    // The will marks the session's end: not before a write has been stuck
    // for the whole deadline (no write to it can be stuck before the flood
    // began), and within WAIT (`expect_publish` fails after it).
    let will = watcher.expect_publish("wills/stalled").await;
    let disconnected_after = started.elapsed();
    assert_eq!(&will.payload[..], b"stalled: gone");
    assert!(
        disconnected_after >= WRITE_TIMEOUT,
        "disconnected {disconnected_after:?} after the flood began, before the write deadline"
    );
    // The reader is served throughout: the flood still reaches it.
    let received = reader.publishes_expecting(1).await;
    assert!(!received.is_empty(), "the reading subscriber got nothing");
    flood.abort();
    assert_closed_by_the_gateway(&mut stalled, "past the write deadline").await;
    watcher.assert_alive().await;
    eprintln!(
        "a subscriber with a zero window was disconnected {disconnected_after:?} after the \
         flood began (write_timeout_secs = 2)"
    );
    device_is_served(&gw, "after-stall").await;
}

/// While a write to a stalled reader is pending, the token's `exp` still
/// ends the connection (the write deadline is far away here), at `exp`,
/// and its will is published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_reader_is_still_closed_at_its_tokens_exp() {
    let gw = DevBinary::start(
        "leeway_secs = 0\n",
        &format!(
            "[limits]\nwrite_timeout_secs = 600\n\n[sessions]\nslow_subscriber = \"drop\"\n{METRICS}"
        ),
    )
    .await;
    let mut watcher = will_watcher(&gw).await;
    // Far enough ahead to connect and get stuck before it (checked below).
    let exp = now_unix() + 6;
    let token = gw.sign(&json!({
        "sub": "stalled-exp",
        "exp": exp,
        "topics": ["busy/#", "wills/#"],
    }));
    let mut stalled = stalled_subscriber(
        &gw,
        "stalled-exp",
        &token,
        Some(("wills/stalled-exp", b"stalled-exp: gone")),
    )
    .await;
    let flood = flood_busy_topic(&gw);
    until_writes_are_stuck(&gw).await;
    assert!(
        ahead_of_now(exp) > Duration::ZERO,
        "stuck only after exp: nothing tested"
    );
    let will = watcher.expect_publish("wills/stalled-exp").await;
    assert_at_exp(
        "the will published",
        SystemTime::now(),
        exp,
        Duration::from_secs(3),
    );
    assert_eq!(&will.payload[..], b"stalled-exp: gone");
    flood.abort();
    assert_closed_by_the_gateway(&mut stalled, "at exp").await;
    watcher.assert_alive().await;
    device_is_served(&gw, "after-exp").await;
}

/// While a write to a stalled reader is pending, a deny-list entry for its
/// subject still ends the connection; a revoked device's will is not
/// published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_reader_is_still_closed_by_a_deny_list_entry() {
    let gw = DevBinary::start(
        "",
        &format!(
            "[limits]\nwrite_timeout_secs = 600\n\n[sessions]\nslow_subscriber = \"drop\"\n{METRICS}"
        ),
    )
    .await;
    let mut watcher = will_watcher(&gw).await;
    let token = gw.token("stalled-deny", &["busy/#", "wills/#"], HOUR);
    let mut stalled = stalled_subscriber(
        &gw,
        "stalled-deny",
        &token,
        Some(("wills/stalled-deny", b"stalled-deny: gone")),
    )
    .await;
    let flood = flood_busy_topic(&gw);
    until_writes_are_stuck(&gw).await;
    write_atomically(&gw.keys_dir().join("revoked"), "sub:stalled-deny\n");
    // Ended by the revocation while nothing has been read from it, so
    // while its writes are still stuck.
    until_metric(&gw, "jwtgate_disconnects_total{reason=\"revoked\"}", |n| {
        n >= 1.0
    })
    .await;
    flood.abort();
    assert_closed_by_the_gateway(&mut stalled, "revoked").await;
    watcher.expect_no_publish().await;
    watcher.assert_alive().await;
    device_is_served(&gw, "after-deny").await;
}

// ---------------------------------------------------------------------------
// Revocation racing a CONNECT
// ---------------------------------------------------------------------------

/// Issue 9 item 3: a revocation that lands after a CONNECT's token was
/// verified but before its session started (here: while an older
/// connection of the same session, a stalled reader, takes a second to let
/// go) closes the new session as soon as it starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_in_the_admit_window_closes_the_session() {
    let gw = DevBinary::start(
        "",
        &format!(
            "[limits]\nwrite_timeout_secs = 600\n\n[sessions]\nslow_subscriber = \"drop\"\n{METRICS}"
        ),
    )
    .await;
    let old_token = gw.sign(&json!({
        "sub": "race", "jti": "old", "exp": now_unix() + 3600, "topics": ["busy/#"],
    }));
    let new_token = gw.sign(&json!({
        "sub": "race", "jti": "new", "exp": now_unix() + 3600, "topics": ["busy/#"],
    }));
    let _old = stalled_subscriber(&gw, "race", &old_token, None).await;
    let flood = flood_busy_topic(&gw);
    until_writes_are_stuck(&gw).await;

    // The new connection verifies its token, then waits for the old one,
    // which spends up to a second failing to write its last words (its end
    // is counted as it begins them).
    let mut new = V4Client::start(gw.v4_options("race", &new_token));
    until_metric(
        &gw,
        "jwtgate_disconnects_total{reason=\"taken_over\"}",
        |n| n >= 1.0,
    )
    .await;
    write_atomically(&gw.keys_dir().join("revoked"), "jti:new\n");
    gw.served.signal("HUP");
    let connack = new.connack().await;
    if connack.code == ConnectReturnCode::Success {
        let end = new.closed().await;
        eprintln!("the session admitted in the window was closed: {end}");
        // By the revocation, not anything else.
        until_metric(&gw, "jwtgate_disconnects_total{reason=\"revoked\"}", |n| {
            n >= 1.0
        })
        .await;
    } else {
        // The reload won the race outright: refused at CONNECT.
        assert_eq!(connack.code, ConnectReturnCode::NotAuthorized);
    }
    flood.abort();
    device_is_served(&gw, "after-race").await;
}

// ---------------------------------------------------------------------------
// Tokens
// ---------------------------------------------------------------------------

/// `exp` = 2^63 must not overflow the gateway's deadline arithmetic: the
/// token is simply valid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exp_of_two_to_the_63_neither_overflows_nor_panics() {
    let gw = DevBinary::start("", "").await;
    let token = gw.sign(&json!({
        "sub": "far-future", "exp": 1u64 << 63, "topics": ["ok/#"],
    }));
    let mut device = V4Client::start(gw.v4_options("far-future", &token));
    assert_eq!(device.connack().await.code, ConnectReturnCode::Success);
    device.subscribe("ok/far", QoS::AtLeastOnce).await;
    device
        .publish("ok/far", QoS::AtLeastOnce, false, b"x")
        .await;
    device.expect_publish("ok/far").await;
    device_is_served(&gw, "after-exp-2-63").await;
}

/// Issue 9 item 6: a token without `sub` (or with an empty one) would put
/// its device in the session namespace of every other such device, able
/// to take over and resume their sessions: refused (CONNACK 5, "not
/// authorized").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_without_a_subject_is_refused() {
    let gw = DevBinary::start("", "").await;
    for claims in [
        json!({ "exp": now_unix() + 3600, "topics": ["ok/#"] }),
        json!({ "sub": "", "exp": now_unix() + 3600, "topics": ["ok/#"] }),
    ] {
        let mut device = V4Client::start(gw.v4_options("shared-id", &gw.sign(&claims)));
        assert_eq!(
            device.connack().await.code,
            ConnectReturnCode::NotAuthorized
        );
    }
    device_is_served(&gw, "after-no-sub").await;
}

/// Issue 9 item 6: an `iat` an hour ahead (a token minted by a host with a
/// wrong clock, or built to outlive a lifetime cap) is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_issued_in_the_future_is_refused() {
    let gw = DevBinary::start("", "").await;
    let token = gw.sign(&json!({
        "sub": "time-traveller",
        "iat": now_unix() + 3600,
        "exp": now_unix() + 7200,
        "topics": ["ok/#"],
    }));
    let mut device = V4Client::start(gw.v4_options("time-traveller", &token));
    assert_eq!(
        device.connack().await.code,
        ConnectReturnCode::BadUserNamePassword
    );
    device_is_served(&gw, "after-future-iat").await;
}

// ---------------------------------------------------------------------------
// Keys
// ---------------------------------------------------------------------------

/// Issue 9 item 7: a 16-byte HMAC secret dropped into the keys directory
/// (guessable offline from one captured token) is refused at load with its
/// file named; its tokens are refused, and the keys in force stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_hmac_key_file_is_refused_and_the_old_keys_stay() {
    let gw = DevBinary::start("", "").await;
    let short_secret = b"sixteen bytes!!!";
    drop_secret(&gw.keys_dir(), "short", short_secret);
    gw.served.wait_for_log(0, "short.b64").await;
    gw.served
        .wait_for_log(0, "the secret is 16 bytes long; HS256 needs at least 32")
        .await;
    let token = sign_hs256_kid(short_secret, "short", &device_claims("short-key"));
    let mut device = V4Client::start(gw.v4_options("short-key", &token));
    assert_eq!(
        device.connack().await.code,
        ConnectReturnCode::BadUserNamePassword
    );
    device_is_served(&gw, "after-short-key").await;
}

/// Issue 9 item 7: keys mounted from a Kubernetes secret change only by
/// the kubelet swapping its `..data` link; the gateway follows the swap:
/// the new key verifies, the old one no longer does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kubernetes_data_swap_replaces_the_key() {
    let gw = DevBinary::start("", "").await;
    let old_secret = b"the mounted secret before update";
    let new_secret = b"the mounted secret after update.";
    kubelet_update(
        &gw.keys_dir(),
        "2026_12_01_14_00_00.000000001",
        &[("k8s.b64", old_secret)],
    );
    let old_token = sign_hs256_kid(old_secret, "k8s", &device_claims("k8s-device"));
    let new_token = sign_hs256_kid(new_secret, "k8s", &device_claims("k8s-device"));
    until_connack(&gw, &old_token, ConnectReturnCode::Success).await;
    kubelet_update(
        &gw.keys_dir(),
        "2026_12_01_14_05_00.000000002",
        &[("k8s.b64", new_secret)],
    );
    until_connack(&gw, &new_token, ConnectReturnCode::Success).await;
    until_connack(&gw, &old_token, ConnectReturnCode::BadUserNamePassword).await;
    device_is_served(&gw, "after-k8s-swap").await;
}

/// Connects with `token` until the CONNACK code is `expected` (a reload
/// takes a moment to land); panics after [`WAIT`].
async fn until_connack(gw: &DevBinary, token: &str, expected: ConnectReturnCode) {
    let deadline = Instant::now() + WAIT;
    loop {
        let mut device = V4Client::start(gw.v4_options("k8s-device", token));
        let code = device.connack().await.code;
        if code == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "CONNACK {code:?}, never {expected:?}:\n{}",
            gw.served.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
