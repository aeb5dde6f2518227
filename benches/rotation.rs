//! Key rotation, measured: issue 3's targets, printed and never asserted.
//!
//! `cargo bench --bench rotation` starts the real gateway in-process (the
//! integration tests' harness: a temporary directory with development
//! material, the default configuration, 127.0.0.1 on a free port) and
//! measures two things over real TLS with rumqttc clients:
//!
//! 1. **Rename to first accepted CONNECT.** A new `.b64` secret is written
//!    to a scratch name first; the clock starts at the `rename()` into the
//!    keys directory and stops at the first CONNACK success for a token
//!    signed with it, polled with fresh TLS connections back to back.
//!    Repeated [`DROPS`] times. Target: at most 1 s. Most of it is the file
//!    watcher's 200 ms debounce, on purpose.
//! 2. **Rotation under steady connect load.** [`CLIENTS`] tasks connect
//!    (full TLS handshake), get their CONNACK and DISCONNECT, in a loop, with
//!    tokens of the old key. Midway the new key is dropped; once a probe is
//!    accepted with it, the clients switch to new-key tokens; once every
//!    client has connected with the new key, the old key is removed, as the
//!    README's rotation procedure says. Every attempt that does not end in
//!    CONNACK success is a failure. Target: 0 failures.
//!
//! The whole run takes about 20 s. Logging is at `warn` (override with
//! `RUST_LOG`), since the gateway's line per connection would drown the
//! table.

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use common::{TestGateway, device_claims, drop_secret, sign_hs256_kid, v4_options_for};
use rumqttc::{AsyncClient, ConnectReturnCode, ConnectionError, Event, Outgoing, Packet};

/// Rotations timed in part 1.
const DROPS: usize = 10;
/// Connecting clients in part 2.
const CLIENTS: usize = 8;
/// Length of part 2.
const LOAD_TIME: Duration = Duration::from_secs(10);
/// When, in part 2, the new key is dropped.
const DROP_AT: Duration = Duration::from_secs(3);
/// How long any one wait may take before the bench reports it and moves on:
/// far beyond any target, only there so that nothing hangs.
const GIVE_UP: Duration = Duration::from_secs(10);
/// The warm-up drops its key up to this many times, waiting this long each
/// time (see `run`).
const WARM_UP_TRIES: usize = 20;
const WARM_UP_WAIT: Duration = Duration::from_millis(500);

fn main() {
    // Installed before the harness's own subscriber, which then stays out.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("rotation: cannot start the tokio runtime: {e}");
            std::process::exit(1);
        }
    };
    runtime.block_on(run());
}

/// Where the clients connect: the gateway's port and the CA it is
/// trusted by, owned so that client tasks can hold it.
#[derive(Clone)]
struct Target {
    port: u16,
    ca_pem: Arc<[u8]>,
}

async fn run() {
    let gw = TestGateway::start().await;
    let target = Target {
        port: gw.port(),
        ca_pem: Arc::from(gw.ca_pem()),
    };
    println!(
        "jwtgate key rotation: in-process gateway on {}, TLS, MQTT 3.1.1",
        gw.addr()
    );
    println!();

    // The gateway starts its file watcher when it starts running, a moment
    // after `start` returns, and a file dropped before that goes unnoticed.
    // So the first, untimed rotation drops its key again until it is
    // accepted, which proves the watcher is up.
    let mut warm = Err(String::new());
    for _ in 0..WARM_UP_TRIES {
        warm = rotate_in(&gw, &target, "warm-up", WARM_UP_WAIT).await;
        if warm.is_ok() {
            break;
        }
    }
    if let Err(e) = warm {
        println!("warm-up rotation failed: {e}; nothing measured");
        return;
    }

    let mut times = Vec::with_capacity(DROPS);
    let mut missed = 0;
    for round in 0..DROPS {
        match rotate_in(&gw, &target, &format!("drop-{round}"), GIVE_UP).await {
            Ok(time) => times.push(time),
            Err(e) => {
                println!("  rotation {round}: {e}");
                missed += 1;
            }
        }
    }
    times.sort();
    println!("1. rename() of a new .b64 key -> first accepted CONNECT ({DROPS} rotations)");
    match (times.first(), times.get(times.len() / 2), times.last()) {
        (Some(min), Some(median), Some(max)) => println!(
            "   min {} ms   median {} ms   max {} ms   (target: <= 1000 ms)",
            ms(*min),
            ms(*median),
            ms(*max)
        ),
        _ => println!("   no rotation completed"),
    }
    if missed > 0 {
        println!("   {missed} rotations never completed within {GIVE_UP:?}");
    }
    println!();

    rotation_under_load(&gw, &target).await;
}

/// Drops a new secret `kid` and returns the time from its `rename()` to the
/// first accepted CONNECT with a token signed by it, if that is within
/// `limit`.
async fn rotate_in(
    gw: &TestGateway,
    target: &Target,
    kid: &str,
    limit: Duration,
) -> Result<Duration, String> {
    let secret = format!("rotation secret {kid:>16}");
    let token = sign_hs256_kid(secret.as_bytes(), kid, &device_claims(kid));
    let renamed = drop_secret(gw.keys_dir(), kid, secret.as_bytes());
    loop {
        match attempt(target, &token).await {
            Outcome::Accepted => return Ok(renamed.elapsed()),
            Outcome::Refused(_) if renamed.elapsed() < limit => {}
            Outcome::Refused(code) => {
                return Err(format!("still refused ({code:?}) after {limit:?}"));
            }
            Outcome::Failed(e) => return Err(format!("connection failed: {e}")),
        }
    }
}

/// How one connection attempt ended.
enum Outcome {
    Accepted,
    Refused(ConnectReturnCode),
    /// Anything else: TLS, I/O, protocol, timeout.
    Failed(String),
}

/// Connects (TCP, a full TLS handshake, CONNECT) with a client id of its
/// own, waits for the CONNACK and, when accepted, sends DISCONNECT.
async fn attempt(target: &Target, token: &str) -> Outcome {
    static NEXT_ID: AtomicU64 = AtomicU64::new(0);
    let client_id = format!("rotation-{}", NEXT_ID.fetch_add(1, Ordering::Relaxed));
    let opts = v4_options_for(target.port, &target.ca_pem, &client_id, token);
    let (client, mut eventloop) = AsyncClient::new(opts, 4);
    let connack = loop {
        match tokio::time::timeout(GIVE_UP, eventloop.poll()).await {
            Err(_) => return Outcome::Failed(format!("no CONNACK within {GIVE_UP:?}")),
            Ok(Ok(Event::Incoming(Packet::ConnAck(ack)))) => break ack.code,
            Ok(Ok(_)) => {}
            Ok(Err(ConnectionError::ConnectionRefused(code))) => return Outcome::Refused(code),
            Ok(Err(e)) => return Outcome::Failed(e.to_string()),
        }
    };
    if connack != ConnectReturnCode::Success {
        return Outcome::Refused(connack);
    }
    if let Err(e) = client.try_disconnect() {
        return Outcome::Failed(format!("cannot queue DISCONNECT: {e}"));
    }
    loop {
        match tokio::time::timeout(GIVE_UP, eventloop.poll()).await {
            Err(_) => return Outcome::Failed(format!("DISCONNECT not sent within {GIVE_UP:?}")),
            Ok(Ok(Event::Outgoing(Outgoing::Disconnect))) => return Outcome::Accepted,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Outcome::Failed(format!("after CONNACK: {e}")),
        }
    }
}

/// What the load clients share with the conductor.
#[derive(Default)]
struct Load {
    /// Set once the new key is in force: clients then use new-key tokens.
    use_new_key: AtomicBool,
    /// Clients that have connected with a new-key token at least once.
    switched: AtomicUsize,
    stop: AtomicBool,
    attempts: AtomicU64,
    connected: AtomicU64,
    /// Failures by what went wrong.
    failures: Mutex<BTreeMap<String, u64>>,
}

async fn rotation_under_load(gw: &TestGateway, target: &Target) {
    let (old_kid, new_kid) = ("dev", "rotated");
    let old_secret = gw.secret();
    let new_secret = b"the rotated fleet secret (32 B).";
    let load = Arc::new(Load::default());
    let started = Instant::now();

    let mut clients = tokio::task::JoinSet::new();
    for i in 0..CLIENTS {
        let claims = device_claims(&format!("load-{i}"));
        let old = sign_hs256_kid(&old_secret, old_kid, &claims);
        let new = sign_hs256_kid(new_secret, new_kid, &claims);
        clients.spawn(client_loop(target.clone(), Arc::clone(&load), old, new));
    }
    tokio::time::sleep(DROP_AT).await;
    let events = conduct(gw, target, &load, (old_kid, new_kid), new_secret, started).await;
    tokio::time::sleep(LOAD_TIME.saturating_sub(started.elapsed())).await;
    load.stop.store(true, Ordering::Relaxed);
    while let Some(joined) = clients.join_next().await {
        if let Err(e) = joined {
            println!("a load client failed: {e}");
        }
    }
    let elapsed = started.elapsed();

    let attempts = load.attempts.load(Ordering::Relaxed);
    let connected = load.connected.load(Ordering::Relaxed);
    let failures = load.failures.lock().unwrap_or_else(PoisonError::into_inner);
    let failed: u64 = failures.values().sum();
    println!(
        "2. rotation under steady connect load ({CLIENTS} clients, connect + DISCONNECT in a loop, {:.1} s)",
        elapsed.as_secs_f64()
    );
    println!("   {:<44} {:>8}", "event", "t (s)");
    for (what, at) in &events {
        println!("   {what:<44} {:>8.3}", at.as_secs_f64());
    }
    println!("   {:<44} {:>8}", "attempts", attempts);
    println!(
        "   {:<44} {:>8}   ({:.0} connects/s)",
        "connected",
        connected,
        connected as f64 / elapsed.as_secs_f64()
    );
    println!("   {:<44} {:>8}   (target: 0)", "failed", failed);
    for (what, count) in failures.iter() {
        println!("     {count} x {what}");
    }
}

/// The rotation itself, while the clients connect: drop the new key,
/// switch the clients once a probe is accepted with it, remove the old key
/// once every client has used the new one. Returns what happened when,
/// counted from `started`.
async fn conduct(
    gw: &TestGateway,
    target: &Target,
    load: &Load,
    (old_kid, new_kid): (&str, &str),
    new_secret: &[u8],
    started: Instant,
) -> Vec<(String, Duration)> {
    let mut events = Vec::new();
    let renamed = drop_secret(gw.keys_dir(), new_kid, new_secret);
    events.push((
        "new key renamed into the keys dir".to_owned(),
        renamed - started,
    ));
    let probe = sign_hs256_kid(new_secret, new_kid, &device_claims("probe"));
    loop {
        match attempt(target, &probe).await {
            Outcome::Accepted => break,
            _ if renamed.elapsed() > GIVE_UP => {
                events.push((
                    "new key never accepted; rotation abandoned".to_owned(),
                    started.elapsed(),
                ));
                return events;
            }
            _ => {}
        }
    }
    let accepted = started.elapsed();
    events.push((
        format!(
            "new key accepted by a probe (+{} ms)",
            ms(accepted - (renamed - started))
        ),
        accepted,
    ));
    load.use_new_key.store(true, Ordering::Relaxed);

    let deadline = Instant::now() + GIVE_UP;
    while load.switched.load(Ordering::Relaxed) < CLIENTS {
        if Instant::now() > deadline {
            events.push((
                "clients never all switched; old key kept".to_owned(),
                started.elapsed(),
            ));
            return events;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    events.push((
        "every client connected with the new key".to_owned(),
        started.elapsed(),
    ));
    let old_file = gw.keys_dir().join(format!("{old_kid}.b64"));
    match std::fs::remove_file(&old_file) {
        Ok(()) => events.push(("old key removed".to_owned(), started.elapsed())),
        Err(e) => events.push((
            format!("cannot remove {}: {e}", old_file.display()),
            started.elapsed(),
        )),
    }
    events
}

/// One load client: connect and disconnect until told to stop, with the
/// old key's token until the new key is in force.
async fn client_loop(target: Target, load: Arc<Load>, old: String, new: String) {
    let mut switched = false;
    while !load.stop.load(Ordering::Relaxed) {
        let use_new = load.use_new_key.load(Ordering::Relaxed);
        let outcome = attempt(&target, if use_new { &new } else { &old }).await;
        load.attempts.fetch_add(1, Ordering::Relaxed);
        let failure = match outcome {
            Outcome::Accepted => {
                load.connected.fetch_add(1, Ordering::Relaxed);
                if use_new && !switched {
                    switched = true;
                    load.switched.fetch_add(1, Ordering::Relaxed);
                }
                continue;
            }
            Outcome::Refused(code) => format!(
                "refused with {code:?} ({} key)",
                if use_new { "new" } else { "old" }
            ),
            Outcome::Failed(e) => e,
        };
        *load
            .failures
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(failure)
            .or_default() += 1;
    }
}

fn ms(time: Duration) -> String {
    format!("{:.1}", time.as_secs_f64() * 1000.0)
}
