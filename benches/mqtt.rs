//! MQTT load generator for any broker over TLS (jwtgate, Mosquitto, ...).
//!
//! Built on `rumqttc` + tokio. Two subcommands:
//!
//! - `run`: connects to one broker and runs the selected scenarios, printing
//!   one JSON object per result on stdout (and appending it to `--json`), and
//!   a human table on stderr at the end:
//!   - `connect`: connect storm, N clients (own token each), bounded
//!     parallelism, full TLS handshakes; connects/s, CONNACK p50/p99.
//!   - `connect-resume`: the same with TLS session resumption (tickets).
//!   - `fanin-qos0`, `fanin-qos1`: P publishers -> 1 subscriber, for T
//!     seconds at full speed; delivered msgs/s at the subscriber, loss
//!     (every message is tagged with its publisher and a sequence number;
//!     at QoS 1 loss is what was PUBACKed to its publisher and never
//!     delivered, counted after the backlog drained).
//!   - `fanout`: 1 publisher -> S subscribers on one topic at full speed;
//!     deliveries/s, end-to-end latency (timestamp in the payload), loss.
//!   - `fanout-rate`, `latency`: 1 publisher at a fixed rate (500 and 10k
//!     msgs/s) -> S and L subscribers (default 100 and 1); end-to-end
//!     p50/p99/p99.9.
//!   - `idle`: C idle TLS connections; the broker's RSS (VmRSS of
//!     `--broker-pid`) before and after, KiB per connection.
//!
//!   With `--broker-pid`, every scenario also records the broker's CPU time
//!   and context switches over its measured window; the message scenarios
//!   divide both by the messages delivered in the window
//!   (`ctx_switches_per_msg`: the hand-offs per message; `cpu_us_per_msg`).
//! - `report`: reads the JSON lines of several runs, takes medians per
//!   broker and scenario, and prints a Markdown table with the ratio
//!   A/B and the issues' targets.
//!
//! Passwords are fixed (`--password`, for Mosquitto's password file) or a
//! fresh HS256 JWT per client minted from a base64 secret file
//! (`--secret-file`, for jwtgate). Tokens are minted before the clock starts.
//!
//! Every scenario is bounded in count and time and stops by itself.
//! `cargo bench --bench mqtt -- run --help` lists the options; cargo's
//! `--bench` argument is accepted and ignored. See `benches/compare.sh`.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Args, Parser, Subcommand, ValueEnum};
use rumqttc::tokio_rustls::rustls;
use rumqttc::{
    AsyncClient, ConnectReturnCode, Event, EventLoop, MqttOptions, NetworkOptions, Outgoing,
    Packet, QoS, SubscribeReasonCode, TlsConfiguration, Transport,
};
use rustls::client::{
    ClientSessionStore, Resumption, Tls12ClientSessionValue, Tls13ClientSessionValue,
};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, NamedGroup, RootCertStore};
use serde_json::{Value, json};

// ---------------------------------------------------------------------------
// Command line
// ---------------------------------------------------------------------------

#[derive(Parser)]
#[command(
    name = "mqtt",
    about = "MQTT-over-TLS load generator (see benches/compare.sh)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run scenarios against one broker.
    Run(Box<RunArgs>),
    /// Summarize JSON lines from several runs into a Markdown table.
    Report(ReportArgs),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Scenario {
    Connect,
    ConnectResume,
    FaninQos0,
    FaninQos1,
    Fanout,
    FanoutRate,
    Latency,
    Idle,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::Connect => "connect",
            Scenario::ConnectResume => "connect-resume",
            Scenario::FaninQos0 => "fanin-qos0",
            Scenario::FaninQos1 => "fanin-qos1",
            Scenario::Fanout => "fanout",
            Scenario::FanoutRate => "fanout-rate",
            Scenario::Latency => "latency",
            Scenario::Idle => "idle",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Kx {
    /// X25519 only (what OpenSSL and rustls agree on; the default).
    X25519,
    /// NIST P-256 only.
    P256,
    /// rustls' default list (may pick hybrid post-quantum X25519MLKEM768).
    Default,
}

#[derive(Args)]
struct RunArgs {
    /// Name of the broker in the output (e.g. jwtgate, mosquitto).
    #[arg(long, default_value = "broker")]
    label: String,
    /// Round number recorded in the output (for A/B alternation).
    #[arg(long, default_value_t = 1)]
    round: u32,
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 8883)]
    port: u16,
    /// MQTT over secure WebSockets on this path (`--port` then names the
    /// WebSocket listener), instead of MQTT straight over TLS.
    #[arg(long)]
    ws_path: Option<String>,
    /// PEM file with the CA that signed the broker's certificate.
    #[arg(long)]
    ca: PathBuf,
    /// MQTT username (jwtgate wants `JWT`).
    #[arg(long, default_value = "JWT")]
    username: String,
    /// A fixed password for every client.
    #[arg(long, conflicts_with = "secret_file")]
    password: Option<String>,
    /// Base64 HMAC secret: every client gets its own fresh HS256 token.
    #[arg(long, value_name = "FILE")]
    secret_file: Option<PathBuf>,
    /// `kid` header of minted tokens (default: the secret file's stem).
    #[arg(long)]
    kid: Option<String>,
    /// Mint tokens without a `kid` header.
    #[arg(long)]
    no_kid: bool,
    /// Claim that holds the granted topic filters.
    #[arg(long, default_value = "topics")]
    topics_claim: String,
    /// Lifetime of minted tokens.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    token_ttl: Duration,
    /// Topic prefix; minted tokens grant `{prefix}/#`.
    #[arg(long, default_value = "bench")]
    prefix: String,
    /// Scenarios to run, in order (comma-separated).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "connect,connect-resume,fanin-qos0,fanin-qos1,fanout,fanout-rate,latency,idle"
    )]
    scenario: Vec<Scenario>,

    /// Connect storm: number of clients.
    #[arg(long, default_value_t = 2000)]
    clients: usize,
    /// Connects in flight at once (connect storm, and setup elsewhere).
    #[arg(long, default_value_t = 20)]
    parallel: usize,
    /// Fan-in: publishers.
    #[arg(long, default_value_t = 10)]
    publishers: usize,
    /// Fan-out: subscribers.
    #[arg(long, default_value_t = 100)]
    subscribers: usize,
    /// Fan-in / fan-out / latency: how long the publishers publish.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Payload size in bytes; at least 20 are sent (a timestamp, the
    /// publisher's index and a sequence number tag every message).
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// Fan-out: QoS of the publisher and the subscriptions (0 or 1).
    #[arg(long, default_value_t = 0)]
    fanout_qos: u8,
    /// Latency: messages per second.
    #[arg(long, default_value_t = 10_000)]
    rate: u64,
    /// Fanout-rate: messages per second of the publisher (each delivered
    /// to every one of `--subscribers`).
    #[arg(long, default_value_t = 500)]
    fanout_rate: u64,
    /// Latency: subscribers.
    #[arg(long, default_value_t = 1)]
    latency_subscribers: usize,
    /// Latency: warm-up before the measured window.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Idle: connections to hold open.
    #[arg(long, default_value_t = 10_000)]
    idle_clients: usize,
    /// Idle: pause between the last CONNACK and the RSS reading.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    settle: Duration,
    /// PID of the broker: RSS (idle) and CPU time (every scenario).
    #[arg(long)]
    broker_pid: Option<u32>,

    /// Key exchange groups the client offers.
    #[arg(long, value_enum, default_value_t = Kx::X25519)]
    kx: Kx,
    /// MQTT keep-alive of every client.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    keep_alive: Duration,
    /// TCP connect + TLS + CONNACK timeout per client, in seconds.
    #[arg(long, default_value_t = 10)]
    connect_timeout: u64,
    /// Hard bound on one scenario's run time.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    scenario_timeout: Duration,
    /// Append every JSON result line to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Args)]
struct ReportArgs {
    /// JSON-lines files written by `run --json`.
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
    /// Label of the broker the ratio is about (numerator).
    #[arg(long, default_value = "jwtgate")]
    a: String,
    /// Label of the reference broker (denominator).
    #[arg(long, default_value = "mosquitto")]
    b: String,
}

fn main() {
    // cargo runs harness=false benches with `--bench`; it means nothing here.
    let args = std::env::args_os().filter(|arg| arg != "--bench");
    let cli = Cli::parse_from(args);
    match cli.command {
        Command::Run(args) => run(*args),
        Command::Report(args) => {
            if let Err(e) = report(&args) {
                eprintln!("mqtt report: {e}");
                std::process::exit(1);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Shared context
// ---------------------------------------------------------------------------

/// Nanoseconds since the process started; the clock of payload timestamps.
fn now_ns() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    BASE.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

enum Creds {
    Fixed(String),
    Minted {
        key: jsonwebtoken::EncodingKey,
        kid: Option<String>,
        claim: String,
        ttl: u64,
        topics: Vec<String>,
    },
}

impl Creds {
    /// The password of the client with subject `subject`: a fixed password,
    /// or a new token (its own `sub`, `jti`, `iat`, `exp`).
    fn password(&self, subject: &str) -> String {
        match self {
            Creds::Fixed(password) => password.clone(),
            Creds::Minted {
                key,
                kid,
                claim,
                ttl,
                topics,
            } => {
                static JTI: AtomicU64 = AtomicU64::new(0);
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .expect("clock after 1970")
                    .as_secs();
                let mut claims = serde_json::Map::new();
                claims.insert("sub".into(), subject.into());
                claims.insert("iat".into(), now.into());
                claims.insert("exp".into(), (now + ttl).into());
                claims.insert(
                    "jti".into(),
                    format!(
                        "{}-{}",
                        std::process::id(),
                        JTI.fetch_add(1, Ordering::Relaxed)
                    )
                    .into(),
                );
                claims.insert(claim.clone(), topics.clone().into());
                let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
                header.kid = kid.clone();
                jsonwebtoken::encode(&header, &claims, key).expect("HS256 signing")
            }
        }
    }
}

/// A TLS 1.3 ticket store that holds enough tickets for every connect in
/// flight (rustls' own keeps 8 per server) and counts hits and misses.
#[derive(Debug, Default)]
struct TicketStore {
    tickets: Mutex<VecDeque<Tls13ClientSessionValue>>,
    kx_hint: Mutex<Option<NamedGroup>>,
    hits: AtomicU64,
    misses: AtomicU64,
}

const MAX_TICKETS: usize = 1024;

impl ClientSessionStore for TicketStore {
    fn set_kx_hint(&self, _: ServerName<'static>, group: NamedGroup) {
        *self.kx_hint.lock().unwrap() = Some(group);
    }
    fn kx_hint(&self, _: &ServerName<'_>) -> Option<NamedGroup> {
        *self.kx_hint.lock().unwrap()
    }
    fn set_tls12_session(&self, _: ServerName<'static>, _: Tls12ClientSessionValue) {}
    fn tls12_session(&self, _: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        None
    }
    fn remove_tls12_session(&self, _: &ServerName<'static>) {}
    fn insert_tls13_ticket(&self, _: ServerName<'static>, value: Tls13ClientSessionValue) {
        let mut tickets = self.tickets.lock().unwrap();
        if tickets.len() >= MAX_TICKETS {
            tickets.pop_front();
        }
        tickets.push_back(value);
    }
    fn take_tls13_ticket(&self, _: &ServerName<'static>) -> Option<Tls13ClientSessionValue> {
        let ticket = self.tickets.lock().unwrap().pop_back();
        if ticket.is_some() {
            self.hits.fetch_add(1, Ordering::Relaxed);
        } else {
            self.misses.fetch_add(1, Ordering::Relaxed);
        }
        ticket
    }
}

struct Ctx {
    label: String,
    round: u32,
    host: String,
    port: u16,
    /// `--ws-path`: over WSS when set.
    ws_path: Option<String>,
    username: String,
    creds: Creds,
    prefix: String,
    /// Unique per run: client ids and subjects start with it.
    run_id: String,
    roots: Arc<RootCertStore>,
    kx: Kx,
    keep_alive: Duration,
    connect_timeout: u64,
    broker_pid: Option<u32>,
}

impl Ctx {
    /// A client configuration: no resumption, or resumption through `store`.
    fn tls(&self, store: Option<Arc<TicketStore>>) -> Arc<ClientConfig> {
        let mut provider = rustls::crypto::aws_lc_rs::default_provider();
        match self.kx {
            Kx::X25519 => provider.kx_groups = vec![rustls::crypto::aws_lc_rs::kx_group::X25519],
            Kx::P256 => provider.kx_groups = vec![rustls::crypto::aws_lc_rs::kx_group::SECP256R1],
            Kx::Default => {}
        }
        let mut config = ClientConfig::builder_with_provider(Arc::new(provider))
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(Arc::clone(&self.roots))
            .with_no_client_auth();
        config.resumption = match store {
            Some(store) => Resumption::store(store),
            None => Resumption::disabled(),
        };
        Arc::new(config)
    }

    fn client_id(&self, what: &str, i: usize) -> String {
        format!("{}-{what}-{i}", self.run_id)
    }
}

/// Options of one client.
struct Spec {
    id: String,
    password: String,
    tls: Arc<ClientConfig>,
    /// Outgoing QoS 1 messages in flight.
    inflight: u16,
    /// Capacity of the request channel.
    cap: usize,
}

impl Spec {
    fn new(ctx: &Ctx, id: String, tls: &Arc<ClientConfig>) -> Spec {
        let password = ctx.creds.password(&id);
        Spec {
            id,
            password,
            tls: Arc::clone(tls),
            inflight: 100,
            cap: 64,
        }
    }
}

/// Connects one client and waits for its CONNACK.
async fn connect(ctx: &Ctx, spec: Spec) -> Result<(AsyncClient, EventLoop), String> {
    let tls = TlsConfiguration::Rustls(spec.tls);
    let mut options = match &ctx.ws_path {
        // rumqttc takes a WebSocket's whole URL as its host.
        Some(path) => {
            let url = format!("wss://{}:{}{path}", ctx.host, ctx.port);
            let mut options = MqttOptions::new(spec.id, url, ctx.port);
            options.set_transport(Transport::Wss(tls));
            options
        }
        None => {
            let mut options = MqttOptions::new(spec.id, ctx.host.clone(), ctx.port);
            options.set_transport(Transport::Tls(tls));
            options
        }
    };
    options.set_credentials(ctx.username.clone(), spec.password);
    options.set_keep_alive(ctx.keep_alive);
    options.set_clean_session(true);
    options.set_max_packet_size(1 << 20, 1 << 20);
    options.set_inflight(spec.inflight);
    let (client, mut eventloop) = AsyncClient::new(options, spec.cap);
    let mut network = NetworkOptions::new();
    network.set_tcp_nodelay(true);
    network.set_connection_timeout(ctx.connect_timeout);
    eventloop.set_network_options(network);
    match eventloop.poll().await {
        Ok(Event::Incoming(Packet::ConnAck(ack))) if ack.code == ConnectReturnCode::Success => {
            Ok((client, eventloop))
        }
        Ok(other) => Err(format!("unexpected first event {other:?}")),
        Err(e) => Err(e.to_string()),
    }
}

/// Subscribes and waits for the SUBACK.
async fn subscribe(
    client: &AsyncClient,
    eventloop: &mut EventLoop,
    filter: &str,
    qos: QoS,
) -> Result<(), String> {
    client
        .subscribe(filter, qos)
        .await
        .map_err(|e| e.to_string())?;
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                return match ack.return_codes.first() {
                    Some(SubscribeReasonCode::Success(_)) => Ok(()),
                    other => Err(format!("subscription to {filter} refused: {other:?}")),
                };
            }
            Ok(_) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// Keeps a connection served until the client asks to disconnect or it
/// fails; never reconnects.
async fn hold(mut eventloop: EventLoop) {
    loop {
        match eventloop.poll().await {
            Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// Connected clients, each served by a task.
#[derive(Default)]
struct Held {
    clients: Vec<AsyncClient>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Held {
    fn push(&mut self, client: AsyncClient, eventloop: EventLoop) {
        self.clients.push(client);
        self.tasks.push(tokio::spawn(hold(eventloop)));
    }

    /// Sends DISCONNECT on every connection and waits (bounded) for them.
    async fn release(mut self) {
        for client in &self.clients {
            let _ = client.try_disconnect();
        }
        let all = async {
            for task in self.tasks.iter_mut() {
                let _ = task.await;
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(10), all).await;
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Connects `specs` with at most `parallel` in flight. Returns the
/// connected clients (held), the CONNACK latencies and the errors.
async fn connect_many(
    ctx: &Arc<Ctx>,
    specs: Vec<Spec>,
    parallel: usize,
) -> (Held, Vec<Duration>, Vec<String>) {
    let total = specs.len();
    let queue = Arc::new(Mutex::new(specs.into_iter().collect::<VecDeque<_>>()));
    let out = Arc::new(Mutex::new((
        Held::default(),
        Vec::with_capacity(total),
        Vec::new(),
    )));
    let mut workers = Vec::new();
    for _ in 0..parallel.max(1).min(total.max(1)) {
        let (ctx, queue, out) = (Arc::clone(ctx), Arc::clone(&queue), Arc::clone(&out));
        workers.push(tokio::spawn(async move {
            loop {
                let Some(spec) = queue.lock().unwrap().pop_front() else {
                    return;
                };
                let start = Instant::now();
                let result = connect(&ctx, spec).await;
                let took = start.elapsed();
                let mut out = out.lock().unwrap();
                match result {
                    Ok((client, eventloop)) => {
                        out.0.push(client, eventloop);
                        out.1.push(took);
                    }
                    Err(e) => out.2.push(e),
                }
            }
        }));
    }
    for worker in workers {
        let _ = worker.await;
    }
    Arc::try_unwrap(out)
        .ok()
        .expect("workers are done")
        .into_inner()
        .unwrap()
}

// ---------------------------------------------------------------------------
// Measurements
// ---------------------------------------------------------------------------

/// A log-linear histogram of nanosecond values, <1% relative error.
#[derive(Clone)]
struct Hist {
    counts: Vec<u64>,
    total: u64,
    max: u64,
}

const SUB_BUCKETS: u64 = 128;

impl Hist {
    fn new() -> Hist {
        Hist {
            counts: vec![0; (SUB_BUCKETS * 58) as usize],
            total: 0,
            max: 0,
        }
    }

    fn index(v: u64) -> usize {
        if v < SUB_BUCKETS {
            return v as usize;
        }
        let exp = 63 - u64::from(v.leading_zeros()); // >= 7
        let shift = exp - 7;
        let sub = (v >> shift) - SUB_BUCKETS;
        (SUB_BUCKETS + shift * SUB_BUCKETS + sub) as usize
    }

    /// The middle of bucket `i`.
    fn value(i: usize) -> u64 {
        let i = i as u64;
        if i < SUB_BUCKETS {
            return i;
        }
        let shift = (i - SUB_BUCKETS) / SUB_BUCKETS;
        let sub = (i - SUB_BUCKETS) % SUB_BUCKETS;
        ((SUB_BUCKETS + sub) << shift) + ((1u64 << shift) >> 1)
    }

    fn record(&mut self, v: u64) {
        self.counts[Self::index(v)] += 1;
        self.total += 1;
        self.max = self.max.max(v);
    }

    fn merge(&mut self, other: &Hist) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
        self.max = self.max.max(other.max);
    }

    /// The `q` quantile (0..=1), in nanoseconds; `None` when empty.
    fn quantile(&self, q: f64) -> Option<u64> {
        if self.total == 0 {
            return None;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (i, count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return Some(Self::value(i).min(self.max));
            }
        }
        Some(self.max)
    }
}

fn micros(ns: Option<u64>) -> Value {
    ns.map_or(Value::Null, |ns| json!(round2(ns as f64 / 1e3)))
}

fn millis(ns: Option<u64>) -> Value {
    ns.map_or(Value::Null, |ns| json!(round2(ns as f64 / 1e6)))
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn round4(x: f64) -> f64 {
    (x * 10_000.0).round() / 10_000.0
}

/// Clock ticks per second of /proc/*/stat times (USER_HZ, 100 on Linux).
const CLK_TCK: f64 = 100.0;

/// utime + stime of a process (or thread) from its `stat` file, in ticks,
/// and its command name.
fn stat_ticks(path: &Path) -> Option<(String, u64)> {
    let text = std::fs::read_to_string(path).ok()?;
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text[open + 1..close].to_owned();
    let fields: Vec<&str> = text[close + 2..].split_whitespace().collect();
    // After "pid (comm) ", field 3 (state) is index 0; utime is field 14.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((comm, utime + stime))
}

/// `voluntary_ctxt_switches` + `nonvoluntary_ctxt_switches` of one thread,
/// from its `status` file: how often it left the CPU, by blocking (a wait
/// for I/O, a futex, a park) or by preemption; and the second alone.
fn ctxt_switches(status: &Path) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(status).ok()?;
    let field = |name: &str| -> Option<u64> {
        text.lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.trim().parse().ok())
    };
    let preempted = field("nonvoluntary_ctxt_switches:")?;
    Some((field("voluntary_ctxt_switches:")? + preempted, preempted))
}

/// One live thread of a process.
struct ThreadSample {
    /// Its name; tokio's workers are all "tokio-runtime-w", and numbered
    /// threads are folded together.
    name: String,
    ticks: u64,
    switches: u64,
    /// Of `switches`, those by preemption (nonvoluntary).
    preempted: u64,
}

/// Every live thread of a process, by thread id.
fn thread_samples(pid: u32) -> BTreeMap<u32, ThreadSample> {
    let mut threads = BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return threads;
    };
    for task in tasks.flatten() {
        let Some(tid) = task.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        let Some((comm, ticks)) = stat_ticks(&task.path().join("stat")) else {
            continue;
        };
        let Some((switches, preempted)) = ctxt_switches(&task.path().join("status")) else {
            continue;
        };
        let name = comm
            .trim_end_matches(|c: char| c.is_ascii_digit())
            .to_owned();
        threads.insert(
            tid,
            ThreadSample {
                name,
                ticks,
                switches,
                preempted,
            },
        );
    }
    threads
}

fn vm_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

/// CPU use and context switches of the broker (and CPU of this process)
/// over a measured window.
struct Probe {
    pid: Option<u32>,
    start: Instant,
    broker: Option<u64>,
    threads: BTreeMap<u32, ThreadSample>,
    own: Option<u64>,
}

impl Probe {
    fn start(pid: Option<u32>) -> Probe {
        Probe {
            pid,
            start: Instant::now(),
            broker: pid
                .and_then(|pid| stat_ticks(Path::new(&format!("/proc/{pid}/stat"))).map(|t| t.1)),
            threads: pid.map(thread_samples).unwrap_or_default(),
            own: stat_ticks(Path::new("/proc/self/stat")).map(|t| t.1),
        }
    }

    /// Adds to `out`: `broker_cores` (CPU seconds per second of the window),
    /// the same per broker thread name (`broker_threads`), the broker's
    /// context switches in the window (`broker_ctx_switches`, of which
    /// `broker_preemptions` by preemption, and per thread name
    /// `broker_thread_ctx_switches`), and `bench_cores`. Returns what the
    /// broker used in the window.
    ///
    /// Context switches are counted per thread, from
    /// `/proc/PID/task/TID/status` at the start and at the end of the window:
    /// each thread alive at the end contributes what it did since the start
    /// (all of it if it started in the window). A thread that exits during
    /// the window takes its count with it (Linux adds it to the process's
    /// rusage, which only the process itself can read): those switches are
    /// lost, so the figure is a lower bound when the broker ends threads
    /// mid-run (tokio's blocking pool retires idle threads after 10 s).
    /// `broker_cores` does not have that gap (`/proc/PID/stat` keeps exited
    /// threads' CPU time); the per-thread CPU does.
    fn stop(self, out: &mut serde_json::Map<String, Value>) -> Used {
        let wall = self.start.elapsed().as_secs_f64();
        let cores = |before: Option<u64>, after: Option<u64>| match (before, after) {
            (Some(b), Some(a)) => json!(round2((a.saturating_sub(b)) as f64 / CLK_TCK / wall)),
            _ => Value::Null,
        };
        let mut used = Used::default();
        if let Some(pid) = self.pid {
            let after = stat_ticks(Path::new(&format!("/proc/{pid}/stat"))).map(|t| t.1);
            out.insert("broker_cores".into(), cores(self.broker, after));
            if let (Some(before), Some(after)) = (self.broker, after) {
                used.cpu_s = Some(after.saturating_sub(before) as f64 / CLK_TCK);
            }
            // (ticks, switches, preemptions) per thread name over the window.
            let mut by_name: BTreeMap<String, (u64, u64, u64)> = BTreeMap::new();
            let threads = thread_samples(pid);
            for (tid, now) in &threads {
                let (ticks, sw, pre) = match self.threads.get(tid) {
                    Some(before) => (
                        now.ticks.saturating_sub(before.ticks),
                        now.switches.saturating_sub(before.switches),
                        now.preempted.saturating_sub(before.preempted),
                    ),
                    None => (now.ticks, now.switches, now.preempted),
                };
                let entry = by_name.entry(now.name.clone()).or_default();
                entry.0 += ticks;
                entry.1 += sw;
                entry.2 += pre;
            }
            let mut cpu = serde_json::Map::new();
            let mut ctx = serde_json::Map::new();
            for (name, (ticks, sw, _)) in &by_name {
                let used = *ticks as f64 / CLK_TCK / wall;
                if used >= 0.005 {
                    cpu.insert(name.clone(), json!(round2(used)));
                }
                if *sw > 0 {
                    ctx.insert(name.clone(), json!(sw));
                }
            }
            out.insert("broker_threads".into(), Value::Object(cpu));
            if !threads.is_empty() {
                let total = by_name.values().map(|v| v.1).sum::<u64>();
                let preempted = by_name.values().map(|v| v.2).sum::<u64>();
                out.insert("broker_ctx_switches".into(), json!(total));
                out.insert("broker_preemptions".into(), json!(preempted));
                out.insert("broker_thread_ctx_switches".into(), Value::Object(ctx));
                used.switches = Some(total);
            }
        }
        let after = stat_ticks(Path::new("/proc/self/stat")).map(|t| t.1);
        out.insert("bench_cores".into(), cores(self.own, after));
        used
    }
}

/// What the broker used over a measured window.
#[derive(Default)]
struct Used {
    /// Context switches of its threads.
    switches: Option<u64>,
    /// CPU seconds (user + system), in ticks of 10 ms.
    cpu_s: Option<f64>,
}

/// Adds `ctx_switches_per_msg`: the broker's context switches in the
/// window per message delivered in it (per delivery for fan-out), the
/// "hand-offs per message" of issue 8; and `cpu_us_per_msg`, its CPU time
/// per message delivered in the window, in microseconds.
fn per_message(out: &mut serde_json::Map<String, Value>, used: &Used, delivered: u64) {
    if delivered == 0 {
        return;
    }
    if let Some(switches) = used.switches {
        out.insert(
            "ctx_switches_per_msg".into(),
            json!(round4(switches as f64 / delivered as f64)),
        );
    }
    if let Some(cpu_s) = used.cpu_s {
        out.insert(
            "cpu_us_per_msg".into(),
            json!(round4(cpu_s * 1e6 / delivered as f64)),
        );
    }
}

fn soft_nofile_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

// ---------------------------------------------------------------------------
// Scenarios
// ---------------------------------------------------------------------------

type Out = serde_json::Map<String, Value>;

fn qos_of(level: u8) -> QoS {
    match level {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

/// An MQTT 3.1.1 CONNECT frame (clean session, username and password).
fn connect_frame(client_id: &str, username: &str, password: &str, keep_alive: u16) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(b"\x00\x04MQTT\x04\xc2");
    body.extend_from_slice(&keep_alive.to_be_bytes());
    for field in [client_id, username, password] {
        body.extend_from_slice(&(field.len() as u16).to_be_bytes());
        body.extend_from_slice(field.as_bytes());
    }
    let mut frame = vec![0x10];
    let mut len = body.len();
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        frame.push(byte);
        if len == 0 {
            break;
        }
    }
    frame.extend_from_slice(&body);
    frame
}

/// Connects with tokio-rustls directly (rumqttc hides the TLS session),
/// sends CONNECT, reads the CONNACK (and with it the session tickets),
/// and says whether the TLS handshake was a resumption.
async fn resumption_probe(
    ctx: &Ctx,
    tls: &Arc<ClientConfig>,
    client_id: &str,
) -> Result<bool, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tcp = tokio::net::TcpStream::connect((ctx.host.as_str(), ctx.port))
        .await
        .map_err(|e| e.to_string())?;
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    let name = ServerName::try_from(ctx.host.clone()).map_err(|e| e.to_string())?;
    let mut stream = rumqttc::tokio_rustls::TlsConnector::from(Arc::clone(tls))
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let frame = connect_frame(client_id, &ctx.username, &ctx.creds.password(client_id), 60);
    stream.write_all(&frame).await.map_err(|e| e.to_string())?;
    let mut connack = [0u8; 4];
    stream
        .read_exact(&mut connack)
        .await
        .map_err(|e| e.to_string())?;
    if connack[0] != 0x20 || connack[3] != 0 {
        return Err(format!("CONNACK {connack:?}"));
    }
    let resumed = stream.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    let _ = stream.write_all(&[0xe0, 0x00]).await;
    let _ = stream.shutdown().await;
    Ok(resumed)
}

/// Connect storm: `n` clients, each with its own token, `parallel` in
/// flight; the clients stay connected until the storm is over.
async fn connect_storm(ctx: &Arc<Ctx>, n: usize, parallel: usize, resume: bool) -> Out {
    let store = resume.then(|| Arc::new(TicketStore::default()));
    let tls = ctx.tls(store.clone());
    let what = if resume { "resume" } else { "storm" };
    let mut out = Out::new();
    if resume {
        // Fill the ticket store first, as a fleet that was connected before
        // the power cut would have.
        let warm: Vec<Spec> = (0..parallel)
            .map(|i| Spec::new(ctx, ctx.client_id("warm", i), &tls))
            .collect();
        let (held, _, _) = connect_many(ctx, warm, parallel).await;
        held.release().await;
        // Does the broker accept the tickets? Checked on a few connections
        // of our own (after a first one that fetches fresh tickets).
        let mut resumed = 0;
        for i in 0..4 {
            match resumption_probe(ctx, &tls, &ctx.client_id("probe", i)).await {
                Ok(true) if i > 0 => resumed += 1,
                Ok(_) => {}
                Err(e) => eprintln!("resumption probe: {e}"),
            }
        }
        out.insert("resumed_probes".into(), json!(format!("{resumed}/3")));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let specs: Vec<Spec> = (0..n)
        .map(|i| Spec::new(ctx, ctx.client_id(what, i), &tls))
        .collect();
    if let Some(store) = &store {
        store.hits.store(0, Ordering::Relaxed);
        store.misses.store(0, Ordering::Relaxed);
    }
    let probe = Probe::start(ctx.broker_pid);
    let start = Instant::now();
    let (held, latencies, errors) = connect_many(ctx, specs, parallel).await;
    let wall = start.elapsed();
    probe.stop(&mut out);
    let mut hist = Hist::new();
    for latency in &latencies {
        hist.record(latency.as_nanos() as u64);
    }
    out.insert("clients".into(), json!(n));
    out.insert("parallel".into(), json!(parallel));
    out.insert("connected".into(), json!(latencies.len()));
    out.insert("failures".into(), json!(errors.len()));
    out.insert("wall_s".into(), json!(round2(wall.as_secs_f64())));
    out.insert(
        "connects_per_s".into(),
        json!(round2(latencies.len() as f64 / wall.as_secs_f64())),
    );
    out.insert("p50_ms".into(), millis(hist.quantile(0.50)));
    out.insert("p99_ms".into(), millis(hist.quantile(0.99)));
    out.insert("max_ms".into(), millis(Some(hist.max)));
    if let Some(store) = &store {
        out.insert(
            "tickets_used".into(),
            json!(store.hits.load(Ordering::Relaxed)),
        );
        out.insert(
            "tickets_missing".into(),
            json!(store.misses.load(Ordering::Relaxed)),
        );
    }
    if let Some(first) = errors.first() {
        out.insert("first_error".into(), json!(first));
    }
    held.release().await;
    out
}

/// Every message the generator publishes carries a tag in its payload:
/// bytes 0..8 the send time (`now_ns`; used where latency is measured),
/// 8..12 the publisher's index in its scenario, 12..20 the message's
/// sequence number at that publisher (0, 1, 2, ... in publish order).
/// Subscribers tally the tags, so each message is told apart: duplicates
/// are not counted twice, and loss is exactly the messages that never
/// arrived (for QoS 1: that were PUBACKed and never arrived).
const TAG_LEN: usize = 20;
/// Tags beyond these are not ours (a payload from some other client).
const MAX_PUBLISHERS: u32 = 1 << 12;
const MAX_SEQ: u64 = 1 << 28;

fn write_tag(payload: &mut [u8], publisher: u32, seq: u64) {
    payload[8..12].copy_from_slice(&publisher.to_be_bytes());
    payload[12..20].copy_from_slice(&seq.to_be_bytes());
}

fn read_tag(payload: &[u8]) -> Option<(u32, u64)> {
    let publisher = u32::from_be_bytes(payload.get(8..12)?.try_into().ok()?);
    let seq = u64::from_be_bytes(payload.get(12..20)?.try_into().ok()?);
    (publisher < MAX_PUBLISHERS && seq < MAX_SEQ).then_some((publisher, seq))
}

/// A set of sequence numbers (a bitmap).
#[derive(Clone, Default)]
struct SeqSet {
    words: Vec<u64>,
    len: u64,
}

impl SeqSet {
    /// Adds `seq`; true if it was not there yet.
    fn insert(&mut self, seq: u64) -> bool {
        let (word, bit) = ((seq / 64) as usize, 1u64 << (seq % 64));
        if word >= self.words.len() {
            self.words.resize(word + 1, 0);
        }
        let new = self.words[word] & bit == 0;
        self.words[word] |= bit;
        self.len += u64::from(new);
        new
    }

    fn contains(&self, seq: u64) -> bool {
        self.words
            .get((seq / 64) as usize)
            .is_some_and(|word| word & (1u64 << (seq % 64)) != 0)
    }

    fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.words.iter().enumerate().flat_map(|(i, &word)| {
            (0..64u64)
                .filter(move |bit| word & (1u64 << bit) != 0)
                .map(move |bit| i as u64 * 64 + bit)
        })
    }
}

/// How a flat-out publisher publishes.
#[derive(Clone, Copy)]
struct Flow {
    qos: QoS,
    payload: usize,
    /// Put a send timestamp in the first 8 payload bytes.
    stamp: bool,
    /// Requests queued in the client at most.
    window: u64,
    /// How long the publisher may take, after the deadline, to send what is
    /// queued and collect its PUBACKs.
    drain: Duration,
}

/// What one publisher did.
#[derive(Default)]
struct Published {
    /// Messages written to the socket before the deadline.
    in_window: u64,
    /// Messages written to the socket in total: sequence numbers
    /// `0..sent`.
    sent: u64,
    /// QoS 1: the sequence numbers the broker PUBACKed.
    acked: SeqSet,
    /// QoS 1: packet id -> sequence number of the messages awaiting their
    /// PUBACK.
    awaiting: std::collections::HashMap<u16, u64>,
}

impl Published {
    /// Takes note of an event of the publisher's event loop. rumqttc writes
    /// publish requests in the order they were queued (on a packet id
    /// collision it takes no new request until the collided one is out),
    /// so the n-th outgoing PUBLISH is the message with sequence number n.
    fn note(&mut self, event: &Event) {
        match event {
            Event::Outgoing(Outgoing::Publish(pkid)) => {
                if *pkid != 0 {
                    self.awaiting.insert(*pkid, self.sent);
                }
                self.sent += 1;
            }
            Event::Incoming(Packet::PubAck(ack)) => {
                if let Some(seq) = self.awaiting.remove(&ack.pkid) {
                    self.acked.insert(seq);
                }
            }
            _ => {}
        }
    }
}

/// Publishes as fast as the connection takes it until `deadline` (keeping
/// at most `flow.window` requests queued in the client), then sends what is
/// queued and waits for the PUBACKs (at most `flow.drain`), then
/// disconnects.
async fn publish_flat_out(
    client: AsyncClient,
    mut eventloop: EventLoop,
    publisher: u32,
    topic: String,
    flow: Flow,
    mut start: tokio::sync::watch::Receiver<bool>,
    deadline: Arc<OnceLock<Instant>>,
) -> Published {
    let Flow {
        qos,
        payload: payload_len,
        stamp,
        window,
        drain,
    } = flow;
    let _ = start.wait_for(|go| *go).await;
    let deadline = *deadline.get().expect("deadline is set before the start");
    let mut payload = vec![0x5au8; payload_len.max(TAG_LEN)];
    let mut requested = 0u64;
    let mut out = Published::default();
    // Feed phase.
    while Instant::now() < deadline {
        while requested - out.sent < window {
            if stamp {
                payload[..8].copy_from_slice(&now_ns().to_be_bytes());
            }
            write_tag(&mut payload, publisher, requested);
            if client
                .try_publish(topic.as_str(), qos, false, payload.clone())
                .is_err()
            {
                break;
            }
            requested += 1;
        }
        match eventloop.poll().await {
            Ok(event) => out.note(&event),
            Err(e) => {
                eprintln!("publisher {topic}: {e}");
                out.in_window = out.sent;
                return out;
            }
        }
    }
    out.in_window = out.sent;
    // Drain what is queued, and the acks. A broker that paces its
    // publishers takes them late, so this may take a while.
    let _ = tokio::time::timeout(drain, async {
        while out.sent < requested || !out.awaiting.is_empty() {
            match eventloop.poll().await {
                Ok(event) => out.note(&event),
                Err(e) => {
                    eprintln!("publisher {topic} (draining): {e}");
                    return;
                }
            }
        }
    })
    .await;
    if out.sent < requested || !out.awaiting.is_empty() {
        eprintln!(
            "publisher {topic}: {} not sent, {} not acknowledged after the {drain:?} drain",
            requested - out.sent,
            out.awaiting.len()
        );
    }
    if qos == QoS::AtMostOnce && !fence(&client, &mut eventloop, &topic, drain).await {
        eprintln!("publisher {topic}: the QoS 1 fence was not acknowledged within {drain:?}");
    }
    let _ = client.try_disconnect();
    let _ = tokio::time::timeout(Duration::from_secs(5), hold(eventloop)).await;
    out
}

/// Publishes a QoS 1 message on `{topic}/fence` (no subscriber's filter
/// matches it) and waits for its PUBACK: a broker acknowledges it only
/// after reading every QoS 0 message the connection carried before it. A
/// QoS 0 message counts as sent once rumqttc has it written out, which may
/// be into its own buffers; a publisher that disconnected with some still
/// there (its broker pacing it) would have them counted as the broker's
/// loss. False when no PUBACK came within `limit`.
async fn fence(
    client: &AsyncClient,
    eventloop: &mut EventLoop,
    topic: &str,
    limit: Duration,
) -> bool {
    if client
        .try_publish(
            format!("{topic}/fence"),
            QoS::AtLeastOnce,
            false,
            Vec::new(),
        )
        .is_err()
    {
        return false;
    }
    tokio::time::timeout(limit, async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => return true,
                Ok(_) => {}
                Err(_) => return false,
            }
        }
    })
    .await
    .unwrap_or(false)
}

/// What one subscriber received, by tag.
struct Tally {
    /// Latencies of timestamped messages sent at or after `from_ns`.
    hist: Hist,
    /// Sequence numbers received, by publisher index.
    seen: Vec<SeqSet>,
    /// Messages received again.
    duplicates: u64,
    /// Messages without a tag of ours.
    untagged: u64,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            hist: Hist::new(),
            seen: Vec::new(),
            duplicates: 0,
            untagged: 0,
        }
    }

    /// Takes note of a message; true if it is its first delivery.
    fn note(&mut self, publisher: u32, seq: u64) -> bool {
        let publisher = publisher as usize;
        if publisher >= self.seen.len() {
            self.seen.resize_with(publisher + 1, SeqSet::default);
        }
        let first = self.seen[publisher].insert(seq);
        self.duplicates += u64::from(!first);
        first
    }
}

/// A subscriber's loop: counts first deliveries of tagged messages and
/// records the end-to-end latency of timestamped ones sent at or after
/// `from_ns`. Runs until the connection fails or the task is aborted (never
/// cancelled mid-poll otherwise, so the stream is never left half-written).
async fn receive(
    mut eventloop: EventLoop,
    count: Arc<AtomicU64>,
    tally: Arc<Mutex<Tally>>,
    timestamps: bool,
    from_ns: Arc<AtomicU64>,
) {
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                let now = now_ns();
                let mut tally = tally.lock().unwrap();
                let Some((publisher, seq)) = read_tag(&publish.payload) else {
                    tally.untagged += 1;
                    continue;
                };
                if tally.note(publisher, seq) {
                    count.fetch_add(1, Ordering::Relaxed);
                }
                if timestamps {
                    let sent = u64::from_be_bytes(publish.payload[..8].try_into().unwrap());
                    if sent >= from_ns.load(Ordering::Relaxed) {
                        tally.hist.record(now.saturating_sub(sent));
                    }
                }
            }
            Ok(_) => {}
            Err(e) => {
                eprintln!("subscriber: {e}");
                return;
            }
        }
    }
}

/// Subscribers of one filter, counting what they receive.
struct Subscribers {
    clients: Vec<AsyncClient>,
    /// First deliveries, per subscriber.
    counts: Vec<Arc<AtomicU64>>,
    tallies: Vec<Arc<Mutex<Tally>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    from_ns: Arc<AtomicU64>,
}

/// What the subscribers received in the end.
struct Received {
    /// Latencies, all subscribers merged.
    hist: Hist,
    /// Per subscriber, the sequence numbers received by publisher index.
    seen: Vec<Vec<SeqSet>>,
    duplicates: u64,
    untagged: u64,
    /// Subscribers whose connection ended before the scenario did.
    disconnected: u64,
}

impl Subscribers {
    async fn start(
        ctx: &Arc<Ctx>,
        what: &str,
        n: usize,
        filter: &str,
        qos: QoS,
        timestamps: bool,
        parallel: usize,
    ) -> Result<Subscribers, String> {
        let tls = ctx.tls(None);
        let specs: Vec<Spec> = (0..n)
            .map(|i| {
                let mut spec = Spec::new(ctx, ctx.client_id(what, i), &tls);
                spec.cap = 1000;
                spec
            })
            .collect();
        // Connect without serving (held tasks would eat the SUBACKs):
        // connect_many holds them, so connect one by one in parallel here.
        let queue = Arc::new(Mutex::new(specs.into_iter().collect::<VecDeque<_>>()));
        let connected = Arc::new(Mutex::new(Vec::new()));
        let mut workers = Vec::new();
        for _ in 0..parallel.max(1).min(n.max(1)) {
            let (ctx, queue, connected) =
                (Arc::clone(ctx), Arc::clone(&queue), Arc::clone(&connected));
            let filter = filter.to_owned();
            workers.push(tokio::spawn(async move {
                loop {
                    let Some(spec) = queue.lock().unwrap().pop_front() else {
                        return Ok::<(), String>(());
                    };
                    let (client, mut eventloop) = connect(&ctx, spec).await?;
                    subscribe(&client, &mut eventloop, &filter, qos).await?;
                    connected.lock().unwrap().push((client, eventloop));
                }
            }));
        }
        for worker in workers {
            worker.await.map_err(|e| e.to_string())??;
        }
        let connected = std::mem::take(&mut *connected.lock().unwrap());
        let from_ns = Arc::new(AtomicU64::new(0));
        let mut subscribers = Subscribers {
            clients: Vec::new(),
            counts: Vec::new(),
            tallies: Vec::new(),
            tasks: Vec::new(),
            from_ns: Arc::clone(&from_ns),
        };
        for (client, eventloop) in connected {
            let count = Arc::new(AtomicU64::new(0));
            let tally = Arc::new(Mutex::new(Tally::new()));
            subscribers.tasks.push(tokio::spawn(receive(
                eventloop,
                Arc::clone(&count),
                Arc::clone(&tally),
                timestamps,
                Arc::clone(&from_ns),
            )));
            subscribers.counts.push(count);
            subscribers.tallies.push(tally);
            subscribers.clients.push(client);
        }
        Ok(subscribers)
    }

    /// Messages received so far, each counted once per subscriber.
    fn received(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// Waits until `expected` messages have arrived, or nothing more has
    /// for `quiet`, at most `max`. Returns what arrived, and whether the
    /// wait was cut short by `max` while messages were still arriving.
    async fn drain(&self, expected: u64, quiet: Duration, max: Duration) -> (u64, bool) {
        let until = Instant::now() + max;
        let mut last = self.received();
        let mut quiet_since = Instant::now();
        while Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let now = self.received();
            if now >= expected {
                return (now, false);
            }
            if now != last {
                last = now;
                quiet_since = Instant::now();
            } else if quiet_since.elapsed() >= quiet {
                return (now, false);
            }
        }
        (self.received(), true)
    }

    /// Stops the loops, disconnects, and returns what was received.
    async fn finish(self) -> Received {
        let disconnected = self.tasks.iter().filter(|t| t.is_finished()).count() as u64;
        for task in &self.tasks {
            task.abort();
        }
        for task in self.tasks {
            let _ = task.await;
        }
        // The event loops went with their tasks, closing the sockets.
        drop(self.clients);
        let mut received = Received {
            hist: Hist::new(),
            seen: Vec::new(),
            duplicates: 0,
            untagged: 0,
            disconnected,
        };
        for tally in &self.tallies {
            let mut tally = tally.lock().unwrap();
            received.hist.merge(&tally.hist);
            received.seen.push(std::mem::take(&mut tally.seen));
            received.duplicates += tally.duplicates;
            received.untagged += tally.untagged;
        }
        received
    }
}

/// Connects `n` publishers and starts them, waiting for a start signal.
/// Publisher `i` tags its messages with index `i`.
async fn start_publishers(
    ctx: &Arc<Ctx>,
    what: &str,
    n: usize,
    topic: impl Fn(usize) -> String,
    flow: Flow,
) -> Result<
    (
        tokio::sync::watch::Sender<bool>,
        Arc<OnceLock<Instant>>,
        Vec<tokio::task::JoinHandle<Published>>,
    ),
    String,
> {
    let tls = ctx.tls(None);
    let (go, start) = tokio::sync::watch::channel(false);
    let deadline = Arc::new(OnceLock::new());
    let mut tasks = Vec::new();
    for i in 0..n {
        let mut spec = Spec::new(ctx, ctx.client_id(what, i), &tls);
        spec.cap = flow.window as usize + 1;
        let (client, eventloop) = connect(ctx, spec).await?;
        tasks.push(tokio::spawn(publish_flat_out(
            client,
            eventloop,
            i as u32,
            topic(i),
            flow,
            start.clone(),
            Arc::clone(&deadline),
        )));
    }
    Ok((go, deadline, tasks))
}

/// Loss over every (subscriber, publisher) pair: what a subscriber should
/// have received and did not. At QoS 0 that is every message its publisher
/// wrote to the socket; at QoS 1 every message the broker PUBACKed (a
/// message the publisher wrote but never got a PUBACK for was not accepted
/// by the broker, and is counted as `unacked` instead). Returns (messages
/// owed, messages missing).
fn loss(qos: QoS, published: &[Published], seen: &[Vec<SeqSet>]) -> (u64, u64) {
    let (mut owed, mut missing) = (0, 0);
    let nothing = SeqSet::default();
    for by_publisher in seen {
        for (i, publisher) in published.iter().enumerate() {
            let got = by_publisher.get(i).unwrap_or(&nothing);
            if qos == QoS::AtMostOnce {
                owed += publisher.sent;
                missing += (0..publisher.sent).filter(|&s| !got.contains(s)).count() as u64;
            } else {
                owed += publisher.acked.len;
                missing += publisher.acked.iter().filter(|&s| !got.contains(s)).count() as u64;
            }
        }
    }
    (owed, missing)
}

/// Waits for the publishers to finish, then for the subscribers to receive
/// what they still owe, and adds the delivery and loss figures to `out`.
/// `in_window` is what the subscribers had received at the deadline.
async fn settle(
    out: &mut Out,
    qos: QoS,
    tasks: Vec<tokio::task::JoinHandle<Published>>,
    subs: Subscribers,
    subscribers: u64,
    in_window: u64,
    duration: Duration,
) -> Result<Received, String> {
    let mut published = Vec::new();
    for task in tasks {
        published.push(task.await.map_err(|e| e.to_string())?);
    }
    let sent: u64 = published.iter().map(|p| p.sent).sum();
    let sent_window: u64 = published.iter().map(|p| p.in_window).sum();
    // A broker that paces its publishers delivers what it accepted late:
    // wait until everything written has arrived, or nothing has for 2 s
    // (at most `drain_bound`).
    let drain_start = Instant::now();
    let (received, cut_short) = subs
        .drain(
            sent * subscribers,
            Duration::from_secs(2),
            drain_bound(duration),
        )
        .await;
    let drained = drain_start.elapsed();
    let got = subs.finish().await;
    let (owed, lost) = loss(qos, &published, &got.seen);
    out.insert("duration_s".into(), json!(duration.as_secs_f64()));
    out.insert("sent".into(), json!(sent));
    out.insert(
        "sent_per_s".into(),
        json!(round2(sent_window as f64 / duration.as_secs_f64())),
    );
    if qos != QoS::AtMostOnce {
        let acked: u64 = published.iter().map(|p| p.acked.len).sum();
        out.insert("acked".into(), json!(acked));
        out.insert("unacked".into(), json!(sent - acked));
    }
    out.insert("received".into(), json!(received));
    out.insert(
        "received_after_window".into(),
        json!(received.saturating_sub(in_window)),
    );
    out.insert("drain_s".into(), json!(round2(drained.as_secs_f64())));
    // Still arriving when the wait ended: the loss then includes messages
    // the broker had queued and not yet delivered (the report says so).
    out.insert("drain_cut_short".into(), json!(cut_short));
    out.insert("duplicates".into(), json!(got.duplicates));
    if got.untagged > 0 {
        out.insert("untagged".into(), json!(got.untagged));
    }
    out.insert("subscribers_disconnected".into(), json!(got.disconnected));
    out.insert("lost".into(), json!(lost));
    out.insert("loss_pct".into(), json!(pct(lost, owed)));
    Ok(got)
}

/// Fan-in: `publishers` -> 1 subscriber, flat out for `duration`.
///
/// `delivered_per_s` counts the messages that reached the subscriber inside
/// the window (each once). `loss_pct` is the share of the messages owed to
/// the subscriber that never reached it, after the publishers drained and
/// the subscriber was given time to catch up (see [`loss`]): at QoS 1 the
/// messages PUBACKed to their publisher and never delivered.
async fn fan_in(
    ctx: &Arc<Ctx>,
    publishers: usize,
    qos: u8,
    duration: Duration,
    payload: usize,
) -> Result<Out, String> {
    let qos = qos_of(qos);
    let filter = format!("{}/fanin/+", ctx.prefix);
    let subs = Subscribers::start(ctx, "fanin-sub", 1, &filter, qos, false, 1).await?;
    let prefix = ctx.prefix.clone();
    let (go, deadline, tasks) = start_publishers(
        ctx,
        "fanin-pub",
        publishers,
        |i| format!("{prefix}/fanin/{i}"),
        Flow {
            qos,
            payload,
            stamp: false,
            window: 32,
            drain: drain_bound(duration),
        },
    )
    .await?;
    let mut out = Out::new();
    let probe = Probe::start(ctx.broker_pid);
    let start = Instant::now();
    let _ = deadline.set(start + duration);
    let _ = go.send(true);
    tokio::time::sleep_until((start + duration).into()).await;
    let in_window = subs.received();
    let used = probe.stop(&mut out);
    per_message(&mut out, &used, in_window);
    out.insert("publishers".into(), json!(publishers));
    out.insert("qos".into(), json!(qos as u8));
    out.insert("payload".into(), json!(payload));
    out.insert(
        "delivered_per_s".into(),
        json!(round2(in_window as f64 / duration.as_secs_f64())),
    );
    settle(&mut out, qos, tasks, subs, 1, in_window, duration).await?;
    Ok(out)
}

/// How long publishers may take to send what they queued and collect their
/// PUBACKs after the window, and subscribers to receive what is still on
/// its way: a broker that paces its publishers may hold much of it.
fn drain_bound(duration: Duration) -> Duration {
    (duration * 2).clamp(Duration::from_secs(10), Duration::from_secs(30))
}

fn pct(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        (part as f64 * 10_000.0 / whole as f64).round() / 100.0
    }
}

/// Fan-out: 1 publisher flat out -> `subscribers` on one topic.
async fn fan_out(
    ctx: &Arc<Ctx>,
    subscribers: usize,
    qos: u8,
    duration: Duration,
    payload: usize,
    parallel: usize,
) -> Result<Out, String> {
    let qos = qos_of(qos);
    let topic = format!("{}/fanout", ctx.prefix);
    let subs =
        Subscribers::start(ctx, "fanout-sub", subscribers, &topic, qos, true, parallel).await?;
    let (go, deadline, tasks) = start_publishers(
        ctx,
        "fanout-pub",
        1,
        |_| topic.clone(),
        Flow {
            qos,
            payload,
            stamp: true,
            window: 8,
            drain: drain_bound(duration),
        },
    )
    .await?;
    let mut out = Out::new();
    let probe = Probe::start(ctx.broker_pid);
    let start = Instant::now();
    let _ = deadline.set(start + duration);
    let _ = go.send(true);
    tokio::time::sleep_until((start + duration).into()).await;
    let in_window = subs.received();
    let used = probe.stop(&mut out);
    per_message(&mut out, &used, in_window);
    out.insert("subscribers".into(), json!(subscribers));
    out.insert("qos".into(), json!(qos as u8));
    out.insert("payload".into(), json!(payload));
    out.insert(
        "deliveries_per_s".into(),
        json!(round2(in_window as f64 / duration.as_secs_f64())),
    );
    let got = settle(
        &mut out,
        qos,
        tasks,
        subs,
        subscribers as u64,
        in_window,
        duration,
    )
    .await?;
    // The publisher's figures under the names this scenario always had.
    for (old, new) in [("sent", "published"), ("sent_per_s", "published_per_s")] {
        if let Some(value) = out.remove(old) {
            out.insert(new.into(), value);
        }
    }
    out.insert("p50_us".into(), micros(got.hist.quantile(0.50)));
    out.insert("p99_us".into(), micros(got.hist.quantile(0.99)));
    out.insert("max_us".into(), micros(Some(got.hist.max)));
    Ok(out)
}

/// Fixed-rate latency: 1 publisher paced at `rate` msgs/s by its own OS
/// thread -> `subscribers`, QoS 0; latencies after the warm-up.
async fn latency(
    ctx: &Arc<Ctx>,
    subscribers: usize,
    rate: u64,
    warmup: Duration,
    duration: Duration,
    payload: usize,
    parallel: usize,
) -> Result<Out, String> {
    let topic = format!("{}/latency", ctx.prefix);
    let subs = Subscribers::start(
        ctx,
        "latency-sub",
        subscribers,
        &topic,
        QoS::AtMostOnce,
        true,
        parallel,
    )
    .await?;
    let tls = ctx.tls(None);
    let mut spec = Spec::new(ctx, ctx.client_id("latency-pub", 0), &tls);
    spec.cap = 10_000;
    let (client, mut eventloop) = connect(ctx, spec).await?;
    let sent = Arc::new(AtomicU64::new(0));
    let poller = {
        let sent = Arc::clone(&sent);
        tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Outgoing(Outgoing::Publish(_))) => {
                        sent.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
    };
    let interval = Duration::from_nanos(1_000_000_000 / rate.max(1));
    let begin = Instant::now();
    let measure_from = begin + warmup;
    let end = measure_from + duration;
    subs.from_ns
        .store(now_ns() + warmup.as_nanos() as u64, Ordering::Relaxed);
    let refused = Arc::new(AtomicU64::new(0));
    let pacer = {
        let (client, topic, refused) = (client.clone(), topic.clone(), Arc::clone(&refused));
        std::thread::spawn(move || {
            let mut payload = vec![0x5au8; payload.max(TAG_LEN)];
            let mut k: u32 = 0;
            let mut scheduled = 0u64;
            loop {
                let due = begin + interval * k;
                if due >= end {
                    return scheduled;
                }
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                }
                payload[..8].copy_from_slice(&now_ns().to_be_bytes());
                write_tag(&mut payload, 0, u64::from(k));
                if client
                    .try_publish(topic.as_str(), QoS::AtMostOnce, false, payload.clone())
                    .is_err()
                {
                    refused.fetch_add(1, Ordering::Relaxed);
                }
                scheduled += 1;
                k += 1;
            }
        })
    };
    let mut out = Out::new();
    tokio::time::sleep_until(measure_from.into()).await;
    let sent_before = sent.load(Ordering::Relaxed);
    let received_before = subs.received();
    let probe = Probe::start(ctx.broker_pid);
    tokio::time::sleep_until(end.into()).await;
    let in_window = subs.received().saturating_sub(received_before);
    let used = probe.stop(&mut out);
    per_message(&mut out, &used, in_window);
    let scheduled = tokio::task::spawn_blocking(move || pacer.join().unwrap_or(0))
        .await
        .unwrap_or(0);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let sent_total = sent.load(Ordering::Relaxed);
    let expected = sent_total * subscribers as u64;
    let (received, _) = subs
        .drain(expected, Duration::from_millis(700), Duration::from_secs(3))
        .await;
    let _ = client.try_disconnect();
    let _ = tokio::time::timeout(Duration::from_secs(1), poller).await;
    let got = subs.finish().await;
    let hist = got.hist;
    let window_sent = sent_total.saturating_sub(sent_before);
    out.insert("subscribers".into(), json!(subscribers));
    out.insert("rate".into(), json!(rate));
    out.insert("payload".into(), json!(payload));
    out.insert("duration_s".into(), json!(duration.as_secs_f64()));
    out.insert("scheduled".into(), json!(scheduled));
    out.insert(
        "client_refused".into(),
        json!(refused.load(Ordering::Relaxed)),
    );
    out.insert("sent".into(), json!(sent_total));
    out.insert(
        "sent_per_s".into(),
        json!(round2(window_sent as f64 / duration.as_secs_f64())),
    );
    out.insert("received".into(), json!(received));
    out.insert(
        "delivered_per_s".into(),
        json!(round2(in_window as f64 / duration.as_secs_f64())),
    );
    out.insert("duplicates".into(), json!(got.duplicates));
    out.insert("subscribers_disconnected".into(), json!(got.disconnected));
    let lost = expected.saturating_sub(received);
    out.insert("lost".into(), json!(lost));
    out.insert("loss_pct".into(), json!(pct(lost, expected)));
    out.insert("samples".into(), json!(hist.total));
    out.insert("p50_us".into(), micros(hist.quantile(0.50)));
    out.insert("p99_us".into(), micros(hist.quantile(0.99)));
    out.insert("p999_us".into(), micros(hist.quantile(0.999)));
    out.insert("max_us".into(), micros(Some(hist.max)));
    Ok(out)
}

/// Idle capacity: `n` connections held open; the broker's RSS before and
/// after.
async fn idle(ctx: &Arc<Ctx>, n: usize, parallel: usize, settle: Duration) -> Out {
    let mut out = Out::new();
    if let Some(limit) = soft_nofile_limit() {
        out.insert("nofile_limit".into(), json!(limit));
        if limit < n as u64 + 64 {
            eprintln!(
                "idle: RLIMIT_NOFILE is {limit}, below {n} connections; raise it (ulimit -n) or lower --idle-clients"
            );
        }
    }
    let tls = ctx.tls(None);
    let specs: Vec<Spec> = (0..n)
        .map(|i| {
            let mut spec = Spec::new(ctx, ctx.client_id("idle", i), &tls);
            spec.cap = 4;
            spec
        })
        .collect();
    let before = ctx.broker_pid.and_then(vm_rss_kib);
    let probe = Probe::start(ctx.broker_pid);
    let start = Instant::now();
    let (held, latencies, errors) = connect_many(ctx, specs, parallel).await;
    let wall = start.elapsed();
    probe.stop(&mut out);
    tokio::time::sleep(settle).await;
    let after = ctx.broker_pid.and_then(vm_rss_kib);
    let connected = latencies.len();
    out.insert("clients".into(), json!(n));
    out.insert("connected".into(), json!(connected));
    out.insert("failures".into(), json!(errors.len()));
    out.insert(
        "connects_per_s".into(),
        json!(round2(connected as f64 / wall.as_secs_f64())),
    );
    out.insert("rss_before_kib".into(), json!(before));
    out.insert("rss_after_kib".into(), json!(after));
    if let (Some(before), Some(after)) = (before, after) {
        out.insert("rss_after_mib".into(), json!(round2(after as f64 / 1024.0)));
        if connected > 0 {
            let per_conn = after.saturating_sub(before) as f64 / connected as f64;
            out.insert("kib_per_conn".into(), json!(round2(per_conn)));
            // The bound is for 10,000 connections: measured when
            // that many were held, else extrapolated from the slope.
            let at_10k = if connected >= 10_000 {
                after as f64
            } else {
                before as f64 + per_conn * 10_000.0
            };
            out.insert("rss_10k_mib".into(), json!(round2(at_10k / 1024.0)));
            out.insert("rss_10k_projected".into(), json!(connected < 10_000));
        }
    }
    if let Some(first) = errors.first() {
        out.insert("first_error".into(), json!(first));
    }
    held.release().await;
    out
}

// ---------------------------------------------------------------------------
// run
// ---------------------------------------------------------------------------

fn run(args: RunArgs) {
    let roots = match load_roots(&args.ca) {
        Ok(roots) => roots,
        Err(e) => {
            eprintln!("mqtt: {e}");
            std::process::exit(2);
        }
    };
    let creds = match (&args.password, &args.secret_file) {
        (Some(password), None) => Creds::Fixed(password.clone()),
        (None, Some(file)) => {
            let text = std::fs::read_to_string(file).unwrap_or_else(|e| {
                eprintln!("mqtt: {}: {e}", file.display());
                std::process::exit(2)
            });
            let secret = jwtgate::keys::decode_secret(&text).unwrap_or_else(|e| {
                eprintln!("mqtt: {}: {e}", file.display());
                std::process::exit(2)
            });
            let kid = if args.no_kid {
                None
            } else {
                Some(args.kid.clone().unwrap_or_else(|| {
                    file.file_stem()
                        .map(|s| s.to_string_lossy().into_owned())
                        .unwrap_or_default()
                }))
            };
            Creds::Minted {
                key: jsonwebtoken::EncodingKey::from_secret(&secret),
                kid,
                claim: args.topics_claim.clone(),
                ttl: args.token_ttl.as_secs().max(1),
                topics: vec![format!("{}/#", args.prefix)],
            }
        }
        _ => {
            eprintln!("mqtt: give --password or --secret-file");
            std::process::exit(2);
        }
    };
    now_ns();
    let ctx = Arc::new(Ctx {
        label: args.label.clone(),
        round: args.round,
        host: args.host.clone(),
        port: args.port,
        ws_path: args.ws_path.clone(),
        username: args.username.clone(),
        creds,
        prefix: args.prefix.clone(),
        run_id: format!(
            "b{}x{}",
            std::process::id(),
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() % 100_000)
                .unwrap_or(0)
        ),
        roots: Arc::new(roots),
        kx: args.kx,
        keep_alive: args.keep_alive,
        connect_timeout: args.connect_timeout,
        broker_pid: args.broker_pid,
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut results = Vec::new();
    for scenario in args.scenario.clone() {
        let ctx2 = Arc::clone(&ctx);
        let a = &args;
        let started = Instant::now();
        let outcome = runtime.block_on(async move {
            let work = async {
                let ctx = &ctx2;
                match scenario {
                    Scenario::Connect => Ok(connect_storm(ctx, a.clients, a.parallel, false).await),
                    Scenario::ConnectResume => {
                        Ok(connect_storm(ctx, a.clients, a.parallel, true).await)
                    }
                    Scenario::FaninQos0 => {
                        fan_in(ctx, a.publishers, 0, a.duration, a.payload).await
                    }
                    Scenario::FaninQos1 => {
                        fan_in(ctx, a.publishers, 1, a.duration, a.payload).await
                    }
                    Scenario::Fanout => {
                        fan_out(
                            ctx,
                            a.subscribers,
                            a.fanout_qos,
                            a.duration,
                            a.payload,
                            a.parallel,
                        )
                        .await
                    }
                    Scenario::FanoutRate => {
                        latency(
                            ctx,
                            a.subscribers,
                            a.fanout_rate,
                            a.warmup,
                            a.duration,
                            a.payload,
                            a.parallel,
                        )
                        .await
                    }
                    Scenario::Latency => {
                        latency(
                            ctx,
                            a.latency_subscribers,
                            a.rate,
                            a.warmup,
                            a.duration,
                            a.payload,
                            a.parallel,
                        )
                        .await
                    }
                    Scenario::Idle => Ok(idle(ctx, a.idle_clients, a.parallel, a.settle).await),
                }
            };
            match tokio::time::timeout(a.scenario_timeout, work).await {
                Ok(result) => result,
                Err(_) => Err(format!("timed out after {:?}", a.scenario_timeout)),
            }
        });
        let mut line = Out::new();
        line.insert("broker".into(), json!(ctx.label));
        line.insert("scenario".into(), json!(scenario.name()));
        line.insert("round".into(), json!(ctx.round));
        line.insert(
            "unix_time".into(),
            json!(
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0)
            ),
        );
        line.insert(
            "elapsed_s".into(),
            json!(round2(started.elapsed().as_secs_f64())),
        );
        match outcome {
            Ok(out) => line.extend(out),
            Err(e) => {
                line.insert("error".into(), json!(e));
            }
        }
        let text = Value::Object(line.clone()).to_string();
        println!("{text}");
        if let Some(path) = &args.json {
            let appended = OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .and_then(|mut f| writeln!(f, "{text}"));
            if let Err(e) = appended {
                eprintln!("mqtt: {}: {e}", path.display());
            }
        }
        results.push(line);
        // Let the broker finish closing the scenario's connections.
        std::thread::sleep(Duration::from_millis(500));
    }
    // Event loops of clients that timed out may still be parked; do not wait.
    runtime.shutdown_timeout(Duration::from_secs(1));
    eprintln!("{}", human_table(&results));
}

fn load_roots(ca: &Path) -> Result<RootCertStore, String> {
    let file = File::open(ca).map_err(|e| format!("{}: {e}", ca.display()))?;
    let mut roots = RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut BufReader::new(file)) {
        let cert = cert.map_err(|e| format!("{}: {e}", ca.display()))?;
        roots
            .add(cert)
            .map_err(|e| format!("{}: {e}", ca.display()))?;
    }
    if roots.is_empty() {
        return Err(format!("{}: no certificate", ca.display()));
    }
    Ok(roots)
}

/// The headline figures of each result, one line per scenario.
fn human_table(results: &[Out]) -> String {
    let mut text = String::new();
    let _ = writeln!(text, "{:<16} {:<15} figures", "broker", "scenario");
    for r in results {
        let get = |k: &str| r.get(k).cloned().unwrap_or(Value::Null);
        let scenario = get("scenario").as_str().unwrap_or("").to_owned();
        let figures = if let Some(e) = r.get("error") {
            format!("ERROR {e}")
        } else {
            let keys: &[&str] = match scenario.as_str() {
                "connect" | "connect-resume" => &[
                    "connects_per_s",
                    "p50_ms",
                    "p99_ms",
                    "failures",
                    "broker_cores",
                ],
                "fanin-qos0" | "fanin-qos1" => &[
                    "delivered_per_s",
                    "sent",
                    "acked",
                    "received",
                    "lost",
                    "loss_pct",
                    "broker_cores",
                    "cpu_us_per_msg",
                    "ctx_switches_per_msg",
                ],
                "fanout" => &[
                    "deliveries_per_s",
                    "p50_us",
                    "p99_us",
                    "loss_pct",
                    "broker_cores",
                    "cpu_us_per_msg",
                    "ctx_switches_per_msg",
                ],
                "latency" | "fanout-rate" => &[
                    "delivered_per_s",
                    "p50_us",
                    "p99_us",
                    "p999_us",
                    "loss_pct",
                    "broker_cores",
                    "cpu_us_per_msg",
                    "ctx_switches_per_msg",
                ],
                "idle" => &[
                    "connected",
                    "rss_before_kib",
                    "rss_after_kib",
                    "kib_per_conn",
                    "failures",
                ],
                _ => &[],
            };
            keys.iter()
                .map(|k| format!("{k}={}", get(k)))
                .collect::<Vec<_>>()
                .join("  ")
        };
        let _ = writeln!(
            text,
            "{:<16} {:<15} {}",
            get("broker").as_str().unwrap_or(""),
            scenario,
            figures
        );
    }
    text
}

// ---------------------------------------------------------------------------
// report
// ---------------------------------------------------------------------------

/// How a metric is judged against the issues' targets (issue 8's
/// throughput, latency and memory; issue 24's efficiency at a steady rate:
/// CPU per delivery no more than B's, context switches per delivery within
/// twice B's, idle memory per connection no more than B's). A is the broker
/// the table is about (`--a`), B the reference (`--b`); the medians of the
/// rounds are compared, except by `Zero`.
#[derive(Clone, Copy)]
enum Target {
    /// Informational only.
    None,
    /// A >= factor x B.
    AtLeastBTimes(f64),
    /// A <= B.
    AtMostB,
    /// A <= factor x B.
    AtMostBTimes(f64),
    /// A <= a fixed bound.
    AtMost(f64),
    /// A = 0 in every round, not only the median.
    Zero,
}

struct Metric {
    scenario: &'static str,
    key: &'static str,
    label: &'static str,
    target: Target,
}

/// The rows of the report. B is Mosquitto in `compare.sh`, or an older
/// jwtgate build when two builds are compared (`report --a new --b old`):
/// connect rates are only comparable on the same machine at the same time,
/// so their target is "not lower than B" rather than a figure from
/// another day.
const METRICS: &[Metric] = &[
    Metric {
        scenario: "connect",
        key: "connects_per_s",
        label: "TLS connects/s (full handshake)",
        target: Target::AtLeastBTimes(1.0),
    },
    Metric {
        scenario: "connect",
        key: "p50_ms",
        label: "CONNACK p50 ms",
        target: Target::None,
    },
    Metric {
        scenario: "connect",
        key: "p99_ms",
        label: "CONNACK p99 ms",
        target: Target::None,
    },
    Metric {
        scenario: "connect",
        key: "failures",
        label: "failures",
        target: Target::None,
    },
    Metric {
        scenario: "connect",
        key: "broker_cores",
        label: "broker CPU (cores)",
        target: Target::None,
    },
    Metric {
        scenario: "connect-resume",
        key: "connects_per_s",
        label: "TLS connects/s (resumption)",
        target: Target::AtLeastBTimes(1.0),
    },
    Metric {
        scenario: "connect-resume",
        key: "p99_ms",
        label: "CONNACK p99 ms",
        target: Target::None,
    },
    Metric {
        scenario: "connect-resume",
        key: "tickets_used",
        label: "tickets offered",
        target: Target::None,
    },
    Metric {
        scenario: "connect-resume",
        key: "broker_cores",
        label: "broker CPU (cores)",
        target: Target::None,
    },
    Metric {
        scenario: "fanin-qos0",
        key: "delivered_per_s",
        label: "delivered msgs/s",
        target: Target::AtLeastBTimes(1.5),
    },
    Metric {
        scenario: "fanin-qos0",
        key: "sent_per_s",
        label: "published msgs/s",
        target: Target::None,
    },
    Metric {
        scenario: "fanin-qos0",
        key: "loss_pct",
        label: "loss % (of messages sent)",
        target: Target::AtMostB,
    },
    Metric {
        scenario: "fanin-qos0",
        key: "ctx_switches_per_msg",
        label: "broker context switches per delivered msg",
        target: Target::None,
    },
    Metric {
        scenario: "fanin-qos0",
        key: "cpu_us_per_msg",
        label: "broker CPU µs per delivered msg",
        target: Target::None,
    },
    Metric {
        scenario: "fanin-qos0",
        key: "broker_cores",
        label: "broker CPU (cores)",
        target: Target::None,
    },
    Metric {
        scenario: "fanin-qos1",
        key: "delivered_per_s",
        label: "delivered msgs/s",
        target: Target::AtLeastBTimes(1.5),
    },
    Metric {
        scenario: "fanin-qos1",
        key: "sent_per_s",
        label: "published msgs/s",
        target: Target::None,
    },
    Metric {
        scenario: "fanin-qos1",
        key: "loss_pct",
        label: "loss % (PUBACKed, never delivered)",
        target: Target::Zero,
    },
    Metric {
        scenario: "fanin-qos1",
        key: "ctx_switches_per_msg",
        label: "broker context switches per delivered msg",
        target: Target::None,
    },
    Metric {
        scenario: "fanin-qos1",
        key: "cpu_us_per_msg",
        label: "broker CPU µs per delivered msg",
        target: Target::None,
    },
    Metric {
        scenario: "fanin-qos1",
        key: "broker_cores",
        label: "broker CPU (cores)",
        target: Target::None,
    },
    Metric {
        scenario: "fanout",
        key: "deliveries_per_s",
        label: "deliveries/s",
        target: Target::AtLeastBTimes(10.0),
    },
    Metric {
        scenario: "fanout",
        key: "published_per_s",
        label: "published msgs/s",
        target: Target::None,
    },
    Metric {
        scenario: "fanout",
        key: "p50_us",
        label: "latency p50 µs",
        target: Target::None,
    },
    Metric {
        scenario: "fanout",
        key: "p99_us",
        label: "latency p99 µs",
        target: Target::None,
    },
    Metric {
        scenario: "fanout",
        key: "loss_pct",
        label: "loss %",
        target: Target::None,
    },
    Metric {
        scenario: "fanout",
        key: "ctx_switches_per_msg",
        label: "broker context switches per delivery",
        target: Target::None,
    },
    Metric {
        scenario: "fanout",
        key: "cpu_us_per_msg",
        label: "broker CPU µs per delivery",
        target: Target::None,
    },
    Metric {
        scenario: "fanout",
        key: "broker_cores",
        label: "broker CPU (cores)",
        target: Target::None,
    },
    Metric {
        scenario: "fanout-rate",
        key: "delivered_per_s",
        label: "deliveries/s (fixed rate)",
        target: Target::None,
    },
    Metric {
        scenario: "fanout-rate",
        key: "p50_us",
        label: "latency p50 µs",
        target: Target::None,
    },
    Metric {
        scenario: "fanout-rate",
        key: "p99_us",
        label: "latency p99 µs",
        target: Target::None,
    },
    Metric {
        scenario: "fanout-rate",
        key: "loss_pct",
        label: "loss %",
        target: Target::None,
    },
    Metric {
        scenario: "fanout-rate",
        key: "ctx_switches_per_msg",
        label: "broker context switches per delivery",
        target: Target::AtMostBTimes(2.0),
    },
    Metric {
        scenario: "fanout-rate",
        key: "cpu_us_per_msg",
        label: "broker CPU µs per delivery",
        target: Target::AtMostB,
    },
    Metric {
        scenario: "fanout-rate",
        key: "broker_cores",
        label: "broker CPU (cores)",
        target: Target::None,
    },
    Metric {
        scenario: "latency",
        key: "delivered_per_s",
        label: "delivered msgs/s",
        target: Target::None,
    },
    Metric {
        scenario: "latency",
        key: "p50_us",
        label: "latency p50 µs",
        target: Target::None,
    },
    Metric {
        scenario: "latency",
        key: "p99_us",
        label: "latency p99 µs",
        target: Target::AtMostB,
    },
    Metric {
        scenario: "latency",
        key: "p999_us",
        label: "latency p99.9 µs",
        target: Target::AtMostBTimes(1.5),
    },
    Metric {
        scenario: "latency",
        key: "ctx_switches_per_msg",
        label: "broker context switches per delivered msg",
        target: Target::None,
    },
    Metric {
        scenario: "latency",
        key: "cpu_us_per_msg",
        label: "broker CPU µs per delivered msg",
        target: Target::None,
    },
    Metric {
        scenario: "latency",
        key: "broker_cores",
        label: "broker CPU (cores)",
        target: Target::None,
    },
    Metric {
        scenario: "idle",
        key: "connected",
        label: "connections held",
        target: Target::None,
    },
    Metric {
        scenario: "idle",
        key: "kib_per_conn",
        label: "RSS KiB per connection",
        target: Target::AtMostB,
    },
    Metric {
        scenario: "idle",
        key: "rss_after_mib",
        label: "RSS MiB with all connected",
        target: Target::None,
    },
    Metric {
        scenario: "idle",
        key: "rss_10k_mib",
        label: "RSS MiB at 10,000 connections (projected if fewer held)",
        target: Target::AtMost(200.0),
    },
    Metric {
        scenario: "idle",
        key: "connects_per_s",
        label: "connects/s while filling",
        target: Target::None,
    },
];

fn median(values: &mut [f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    let n = values.len();
    Some(if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    })
}

fn fmt_num(x: f64) -> String {
    let abs = x.abs();
    if abs >= 1000.0 {
        let whole = x.round() as i64;
        let digits = whole.unsigned_abs().to_string();
        let mut grouped = String::new();
        for (i, ch) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 {
                grouped.push(',');
            }
            grouped.push(ch);
        }
        if whole < 0 {
            format!("-{grouped}")
        } else {
            grouped
        }
    } else if abs >= 100.0 || x.fract() == 0.0 {
        format!("{x:.0}")
    } else if abs >= 10.0 {
        format!("{x:.1}")
    } else if abs >= 0.1 {
        format!("{x:.2}")
    } else {
        // Two significant digits (context switches per fan-out delivery
        // can be a few thousandths).
        let decimals = (1 - abs.log10().floor() as i64).clamp(2, 6) as usize;
        format!("{x:.decimals$}")
    }
}

fn report(args: &ReportArgs) -> Result<(), String> {
    // (scenario, broker, key) -> values across rounds.
    let mut values: BTreeMap<(String, String, String), Vec<f64>> = BTreeMap::new();
    let mut rounds: BTreeMap<(String, String), usize> = BTreeMap::new();
    let mut errors = Vec::new();
    let mut cut_short = Vec::new();
    for input in &args.inputs {
        let file = File::open(input).map_err(|e| format!("{}: {e}", input.display()))?;
        for line in BufReader::new(file).lines() {
            let line = line.map_err(|e| e.to_string())?;
            let Ok(Value::Object(obj)) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            let scenario = obj
                .get("scenario")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned();
            let broker = obj
                .get("broker")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned();
            if let Some(e) = obj.get("error") {
                errors.push(format!(
                    "{broker} {scenario} round {}: {e}",
                    obj.get("round").unwrap_or(&Value::Null)
                ));
                continue;
            }
            *rounds
                .entry((scenario.clone(), broker.clone()))
                .or_default() += 1;
            if obj.get("drain_cut_short") == Some(&Value::Bool(true)) {
                cut_short.push(format!(
                    "{broker} {scenario} round {} ({}s after the window, {} % lost)",
                    obj.get("round").unwrap_or(&Value::Null),
                    obj.get("drain_s").unwrap_or(&Value::Null),
                    obj.get("loss_pct").unwrap_or(&Value::Null),
                ));
            }
            for (key, value) in &obj {
                if let Some(x) = value.as_f64() {
                    values
                        .entry((scenario.clone(), broker.clone(), key.clone()))
                        .or_default()
                        .push(x);
                }
            }
        }
    }
    let (a, b) = (&args.a, &args.b);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| scenario | figure | {a} | {b} | {a}/{b} | target | met |"
    );
    let _ = writeln!(out, "|---|---|---:|---:|---:|---|---|");
    for metric in METRICS {
        let get = |broker: &str| {
            values
                .get(&(
                    metric.scenario.to_owned(),
                    broker.to_owned(),
                    metric.key.to_owned(),
                ))
                .cloned()
        };
        // A row needs A's figure; without B's (its runs failed) the row
        // still shows A, and a target that compares with B is not judged.
        let Some(mut va) = get(a) else {
            continue;
        };
        let mut vb = get(b);
        let spread = |v: &[f64]| {
            let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            if v.len() > 1 {
                format!(" <sub>({}–{})</sub>", fmt_num(lo), fmt_num(hi))
            } else {
                String::new()
            }
        };
        let sa = spread(&va);
        let sb = vb.as_deref().map(spread).unwrap_or_default();
        let all_zero = va.iter().all(|&x| x == 0.0);
        let ma = median(&mut va).expect("at least one value");
        let mb = vb.as_deref_mut().and_then(median);
        let ratio = match mb {
            Some(mb) if mb != 0.0 => format!("{:.2}×", ma / mb),
            _ => "–".to_owned(),
        };
        let vs_b = |ok: fn(f64, f64, f64) -> bool, x: f64| match mb {
            Some(mb) => yes_no(ok(ma, mb, x)),
            None => format!("– (no {b} figure)"),
        };
        let (target, met) = match metric.target {
            Target::None => (String::new(), String::new()),
            Target::AtLeastBTimes(k) => (format!("≥ {k}×"), vs_b(|a, b, k| a >= k * b, k)),
            Target::AtMostB => (format!("≤ {b}"), vs_b(|a, b, _| a <= b, 0.0)),
            Target::AtMostBTimes(k) => (format!("≤ {k}× {b}"), vs_b(|a, b, k| a <= k * b, k)),
            Target::AtMost(bound) => (format!("≤ {}", fmt_num(bound)), yes_no(ma <= bound)),
            Target::Zero => ("= 0 (every round)".to_owned(), yes_no(all_zero)),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {}{sa} | {}{sb} | {ratio} | {target} | {met} |",
            metric.scenario,
            metric.label,
            fmt_num(ma),
            mb.map_or_else(|| "–".to_owned(), fmt_num),
        );
    }
    let _ = writeln!(out);
    let counts: Vec<String> = rounds
        .iter()
        .map(|((s, br), n)| format!("{s}/{br}: {n}"))
        .collect();
    let _ = writeln!(
        out,
        "Runs per scenario and broker (medians over these): {}",
        counts.join(", ")
    );
    if !cut_short.is_empty() {
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "Runs whose subscribers were still receiving when the wait for late messages ended \
             (their loss % includes messages the broker still held, not only dropped ones):"
        );
        for run in cut_short {
            let _ = writeln!(out, "- {run}");
        }
    }
    if !errors.is_empty() {
        let _ = writeln!(out);
        let _ = writeln!(out, "Failed runs (left out of the medians):");
        for e in errors {
            let _ = writeln!(out, "- {e}");
        }
    }
    print!("{out}");
    Ok(())
}

fn yes_no(ok: bool) -> String {
    if ok { "yes".into() } else { "**no**".into() }
}
