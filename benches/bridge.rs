//! The uplink bridge, measured beside Mosquitto's (issue 11): printed,
//! never asserted.
//!
//! `cargo bench --bench bridge` starts a central Mosquitto (TLS, password
//! file, the integration tests' harness) and, in turn, two edge brokers
//! bridged to it through a relay that can cut the uplink:
//!
//! - **jwtgate**, the release binary, with a `[[bridge]]` forwarding
//!   `sensors/#` at QoS 1 to `site-42/...`, its queue on disk (SQLite,
//!   defaults: `sync_interval_ms = 1000`);
//! - **Mosquitto** as the edge, with a bridge section doing the same
//!   (`topic sensors/# out 1 "" site-42/`), its queue in memory
//!   (`persistence false`, its fastest configuration; Mosquitto's queue is
//!   not durable either way).
//!
//! For each, over TLS at both hops:
//!
//! 1. **Forward throughput**: `--publishers` devices publish
//!    `--forward-messages` QoS 1 messages of `--payload` bytes flat out
//!    (100 in flight each) while the uplink is up; the figure is messages
//!    per second from the first publish to the last arrival at a
//!    subscriber on the central broker.
//! 2. **Backlog drain**: the uplink is cut, the devices publish
//!    `--backlog-mb` of QoS 1 messages (every one acknowledged by the
//!    edge), the uplink comes back; the figure is the messages per second
//!    between the first and the last arrival at the central subscriber
//!    (the edge's reconnect wait is left out: jwtgate's backoff and
//!    Mosquitto's `restart_timeout` differ by design). The enqueue rate
//!    while cut and the edge's peak memory are printed too.
//!
//! Each publishing phase stops at `--phase-limit-secs`: an edge that stops
//! answering its devices is reported with what it acknowledged by then.
//!
//! `--only jwtgate` or `--only mosquitto` runs one edge.

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use common::mosquitto::Mosquitto;
use common::relay::Relay;
use common::{DevBinary, Memory};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

#[derive(Parser, Debug)]
struct Cli {
    /// Messages of the forward-throughput run.
    #[arg(long, default_value_t = 200_000)]
    forward_messages: usize,
    /// Size of the backlog built while the uplink is cut, in MiB.
    #[arg(long, default_value_t = 1024)]
    backlog_mb: usize,
    /// Payload bytes per message.
    #[arg(long, default_value_t = 1024)]
    payload: usize,
    /// Devices publishing at once.
    #[arg(long, default_value_t = 8)]
    publishers: usize,
    /// Time limit of each publishing phase, in seconds.
    #[arg(long, default_value_t = 900)]
    phase_limit_secs: u64,
    /// Run one edge only: "jwtgate" or "mosquitto".
    #[arg(long)]
    only: Option<String>,
    /// cargo bench passes `--bench`.
    #[arg(long, hide = true)]
    bench: bool,
}

/// What arrived at the central subscriber.
#[derive(Default)]
struct Tally {
    count: usize,
    first: Option<Instant>,
    last: Option<Instant>,
}

/// A subscriber on the central broker that only counts.
struct Central {
    tally: Arc<Mutex<Tally>>,
    task: tokio::task::JoinHandle<()>,
}

impl Central {
    async fn subscribe(central: &Mosquitto) -> Central {
        let mut options = central.v4_options("bench-central");
        options.set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut eventloop) = AsyncClient::new(options, 100);
        client
            .subscribe("site-42/#", QoS::AtLeastOnce)
            .await
            .expect("queue SUBSCRIBE");
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::SubAck(_))) => break,
                Ok(_) => {}
                Err(err) => panic!("central subscriber: {err}"),
            }
        }
        let tally = Arc::new(Mutex::new(Tally::default()));
        let counting = Arc::clone(&tally);
        let task = tokio::spawn(async move {
            let _client = client;
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::Publish(_))) => {
                        let now = Instant::now();
                        let mut tally = counting.lock().expect("tally");
                        tally.count += 1;
                        tally.first.get_or_insert(now);
                        tally.last = Some(now);
                    }
                    Ok(_) => {}
                    Err(err) => panic!("central subscriber: {err}"),
                }
            }
        });
        Central { tally, task }
    }

    fn reset(&self) {
        *self.tally.lock().expect("tally") = Tally::default();
    }

    /// Waits until `count` arrived (or nothing arrived for a minute);
    /// returns the count and the first and last arrival.
    async fn wait_for(&self, count: usize) -> (usize, Option<Instant>, Option<Instant>) {
        let mut last_count = 0;
        let mut last_change = Instant::now();
        loop {
            let (seen, first, last) = {
                let tally = self.tally.lock().expect("tally");
                (tally.count, tally.first, tally.last)
            };
            if seen >= count || last_change.elapsed() > Duration::from_secs(120) {
                return (seen, first, last);
            }
            if seen != last_count {
                last_count = seen;
                last_change = Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Central {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What the devices of one phase got done.
struct Published {
    /// Messages the edge acknowledged.
    acked: usize,
    /// Times a device lost its connection to the edge.
    drops: usize,
    /// Whether the phase stopped at its time limit.
    timed_out: bool,
}

/// `count` QoS 1 messages from each of `options`, 100 in flight per
/// device; returns once every one was acknowledged or at `deadline`,
/// whichever comes first: an edge that stops serving its devices must
/// not hang the benchmark.
async fn publish(
    options: Vec<MqttOptions>,
    count: usize,
    payload: usize,
    deadline: tokio::time::Instant,
) -> Published {
    let mut devices = tokio::task::JoinSet::new();
    for (d, mut opts) in options.into_iter().enumerate() {
        opts.set_inflight(100);
        devices.spawn(async move {
            let (client, mut eventloop) = AsyncClient::new(opts, 200);
            let topic = format!("sensors/dev{d}/data");
            let sender = tokio::spawn(async move {
                for n in 0..count {
                    let mut body = format!("{d}:{n}:").into_bytes();
                    body.resize(payload, b'x');
                    if client
                        .publish(&topic, QoS::AtLeastOnce, false, body)
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            });
            let mut acked = 0;
            let mut drops = 0;
            while acked < count {
                let Ok(event) = tokio::time::timeout_at(deadline, eventloop.poll()).await else {
                    eprintln!(
                        "device {d}: time limit reached with {acked} of {count} acknowledged"
                    );
                    sender.abort();
                    return (acked, drops, true);
                };
                match event {
                    Ok(Event::Incoming(Packet::PubAck(_))) => acked += 1,
                    Ok(_) => {}
                    // rumqttc reconnects on the next poll and sends what
                    // was not acknowledged again.
                    Err(err) => {
                        drops += 1;
                        eprintln!("device {d}: connection lost ({err}); reconnecting");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
            let _ = sender.await;
            (acked, drops, false)
        });
    }
    let mut total = Published {
        acked: 0,
        drops: 0,
        timed_out: false,
    };
    while let Some(done) = devices.join_next().await {
        let (acked, drops, timed_out) = done.expect("a device");
        total.acked += acked;
        total.drops += drops;
        total.timed_out |= timed_out;
    }
    total
}

/// One edge broker under test.
enum Edge {
    Jwtgate(Box<DevBinary>),
    Mosquitto(Mosquitto),
}

impl Edge {
    fn name(&self) -> &'static str {
        match self {
            Edge::Jwtgate(_) => "jwtgate",
            Edge::Mosquitto(_) => "mosquitto",
        }
    }

    async fn start(kind: &str, central: &Mosquitto, relay: &Relay, dir: &std::path::Path) -> Edge {
        match kind {
            "jwtgate" => {
                let password = dir.join("uplink.password");
                central.write_password_file(&password);
                let table = format!(
                    "[[bridge]]\nname = \"cloud\"\nremote = \"mqtts://127.0.0.1:{port}\"\n\
                     ca_file = \"{ca}\"\nclient_id = \"site-42\"\nusername = \"site-42\"\n\
                     password_file = \"{password}\"\nprotocol = 4\nmax_queue_mb = 8192\n\
                     forward = [ {{ local = \"sensors/#\", remote_prefix = \"site-42/\", qos = 1 }} ]\n",
                    port = relay.port,
                    ca = central.ca_pem_path().display(),
                    password = password.display(),
                );
                Edge::Jwtgate(Box::new(DevBinary::start("", &table).await))
            }
            _ => {
                let conf = format!(
                    "max_queued_messages 0\n\
                     connection cloud\naddress 127.0.0.1:{port}\nbridge_cafile {ca}\n\
                     remote_username site-42\nremote_password {password}\nremote_clientid site-42\n\
                     bridge_protocol_version mqttv311\ntry_private false\nnotifications false\n\
                     restart_timeout 1 2\ntopic sensors/# out 1 \"\" site-42/\n",
                    port = relay.port,
                    ca = central.ca_pem_path().display(),
                    password = central.password(),
                );
                Edge::Mosquitto(Mosquitto::start_with(&conf).await)
            }
        }
    }

    fn devices(&self, n: usize) -> Vec<MqttOptions> {
        (0..n)
            .map(|d| {
                let id = format!("dev{d}");
                let mut options = match self {
                    Edge::Jwtgate(gw) => {
                        let token = gw.token(&id, &["sensors/#"], Duration::from_secs(86_400));
                        gw.v4_options(&id, &token)
                    }
                    Edge::Mosquitto(m) => m.v4_options(&id),
                };
                options.set_max_packet_size(1 << 20, 1 << 20);
                options
            })
            .collect()
    }

    fn memory(&mut self) -> Option<Memory> {
        match self {
            Edge::Jwtgate(gw) => Some(gw.served.memory()),
            Edge::Mosquitto(m) => m.pid().map(Memory::of),
        }
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn main() {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(run(cli));
}

async fn run(cli: Cli) {
    let central = Mosquitto::start().await;
    let kinds: Vec<&str> = match cli.only.as_deref() {
        Some(only) => vec![only],
        None => vec!["jwtgate", "mosquitto"],
    };
    let backlog = cli.backlog_mb * 1024 * 1024 / cli.payload / cli.publishers;
    let mut rows = Vec::new();
    for kind in kinds {
        let scratch = tempfile::tempdir().expect("temp dir");
        let relay = Relay::start(central.tls_port(), true).await;
        let mut edge = Edge::start(kind, &central, &relay, scratch.path()).await;
        let subscriber = Central::subscribe(&central).await;
        // Let the edge's bridge connect.
        tokio::time::sleep(Duration::from_secs(2)).await;

        let limit = Duration::from_secs(cli.phase_limit_secs);
        let each = cli.forward_messages / cli.publishers;
        let started = Instant::now();
        let forwarded = publish(
            edge.devices(cli.publishers),
            each,
            cli.payload,
            tokio::time::Instant::now() + limit,
        )
        .await;
        let mut drops = forwarded.drops;
        let (seen, _, last) = subscriber.wait_for(forwarded.acked).await;
        let forward_secs = last.map_or(f64::NAN, |l| (l - started).as_secs_f64());
        let forward_rate = seen as f64 / forward_secs;
        eprintln!("{}: forwarded {seen} in {forward_secs:.2} s", edge.name());

        relay.set_up(false);
        tokio::time::sleep(Duration::from_secs(1)).await;
        subscriber.reset();
        let cut = Instant::now();
        let cut_phase = publish(
            edge.devices(cli.publishers),
            backlog,
            cli.payload,
            tokio::time::Instant::now() + limit,
        )
        .await;
        drops += cut_phase.drops;
        let enqueue_secs = cut.elapsed().as_secs_f64();
        let queued = cut_phase.acked;
        eprintln!(
            "{}: {queued} of {} queued while cut, in {enqueue_secs:.2} s{}",
            edge.name(),
            backlog * cli.publishers,
            if cut_phase.timed_out || forwarded.timed_out {
                " (a phase stopped at its time limit)"
            } else {
                ""
            }
        );
        let up = Instant::now();
        relay.set_up(true);
        let (drained, first, last) = subscriber.wait_for(queued).await;
        let drain_secs = match (first, last) {
            (Some(first), Some(last)) => (last - first).as_secs_f64(),
            _ => f64::NAN,
        };
        let reconnect_secs = first.map_or(f64::NAN, |f| (f - up).as_secs_f64());
        let memory = edge.memory();
        eprintln!(
            "{}: drained {drained} of {queued} in {drain_secs:.2} s",
            edge.name()
        );
        rows.push(format!(
            "| {} | {:.0} | {}/{} | {:.0} | {:.0} | {}/{} | {:.1} | {} | {} |",
            edge.name(),
            forward_rate,
            queued,
            backlog * cli.publishers,
            queued as f64 / enqueue_secs,
            drained as f64 / drain_secs,
            drained,
            queued,
            reconnect_secs,
            memory.map_or("?".to_owned(), |m| format!("{:.0}", mib(m.peak))),
            drops,
        ));
    }
    println!(
        "\nbridge: {} B payloads, {} publishers, QoS 1, TLS both hops\n",
        cli.payload, cli.publishers
    );
    println!(
        "| edge | forward msgs/s | backlog acknowledged/attempted | enqueue msgs/s (uplink cut) | drain msgs/s | arrived | reconnect s | edge peak RSS MiB | device disconnects |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for row in rows {
        println!("{row}");
    }
}
