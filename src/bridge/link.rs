//! One bridge's connection to its remote broker: connect, subscribe, then
//! move messages both ways until the connection fails or the gateway
//! stops; then back off and do it again.
//!
//! The queue on disk is the truth: each connection starts reading it from
//! its first row (the oldest message the remote has not acknowledged), so
//! whatever was in flight when a connection died is simply sent again, in
//! order. A message sent twice this way is counted as resent; the remote
//! may see it twice (at-least-once), never not at all.
//!
//! Inbound, the bridge's session at the remote plays that part: what the
//! remote sent and the bridge did not acknowledge (because the
//! connection died first, or because it could not be kept) is sent again
//! on the next connection, and what is published meanwhile waits there.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::ServerName;
use tracing::{error, info, warn};

use super::backoff::Backoff;
use super::wire::{Codec, InboundPublish, Incoming, WireError};
use super::{Refusal, Refusals};
use crate::broker::{Broker, CommitError, Message};
use crate::config::{BridgeConfig, Credential, Transport};
use crate::mqtt::QoS;
use crate::mqtt::{LimitError, TopicError, TopicLimits};
use crate::storage::{Queue, QueueReader, Queued, StorageError};
use crate::tls::{self, TlsError};

/// How long DNS, TCP, TLS and CONNACK each get.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Unacknowledged QoS 1 messages towards a remote that names no receive
/// maximum (MQTT 3.1.1), and the most towards any.
const DEFAULT_WINDOW: u16 = 256;
const MAX_WINDOW: u16 = 1024;
/// Rows read from the queue at a time.
const READ_BATCH: usize = 512;
/// Free space the input buffer gets before each read.
const READ_ROOM: usize = 16 * 1024;
/// Output waiting for the socket past which no more messages are encoded.
const MAX_UNWRITTEN: usize = 256 * 1024;
/// Acknowledged messages are deleted from the queue in batches of this
/// many, or after [`ACK_DELAY`]: a commit per PUBACK would rewrite the
/// queue's first page for every message. Deleting late only risks a
/// duplicate after a crash, never a loss.
const ACK_BATCH: usize = 256;
const ACK_DELAY: Duration = Duration::from_millis(20);
/// The packet ids of the one SUBSCRIBE and the one UNSUBSCRIBE a
/// connection may send; publishes use the others.
const SUBSCRIBE_PKID: u16 = 1;
const UNSUBSCRIBE_PKID: u16 = 2;
const FIRST_PUBLISH_PKID: u16 = 3;
/// Refused inbound messages are logged at most once per this interval
/// (with how many were refused since): a hostile or broken remote could
/// otherwise write the log as fast as it sends.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(60);
/// Bytes of a refused topic shown in the log: the topic may be as long as
/// MQTT allows.
const LOGGED_TOPIC_BYTES: usize = 120;

/// A deadline for a disabled timer branch.
fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400)
}

/// Why a connection attempt failed or a connection ended. Each kind is
/// logged as such, so a wrong password reads differently from a dead link.
#[derive(Debug, thiserror::Error)]
enum LinkError {
    #[error("cannot read the credential file {}: {source}", path.display())]
    Credential { path: PathBuf, source: io::Error },
    #[error("DNS: cannot resolve {host}: {detail}")]
    Dns { host: String, detail: String },
    #[error("TCP: cannot connect to {addr}: {source}")]
    Tcp { addr: String, source: io::Error },
    #[error("TLS: {0}")]
    TlsSetup(#[from] TlsError),
    #[error("TLS: handshake with {host} failed: {source}")]
    Tls { host: String, source: io::Error },
    #[error("CONNACK: the remote refused the connection: {0}")]
    Refused(String),
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("timeout: {0}")]
    Timeout(&'static str),
    #[error("connection lost: {0}")]
    Lost(io::Error),
    #[error("the remote disconnected the bridge: {0}")]
    Disconnected(String),
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    #[error("the queue reader stopped: {0}")]
    Reader(String),
    #[error(
        "a message from the remote on {topic} could not be kept ({error}); it is left unacknowledged, for the remote to send again on the next connection"
    )]
    NotKept { topic: String, error: CommitError },
}

impl LinkError {
    /// The kind, for the log line.
    fn kind(&self) -> &'static str {
        match self {
            LinkError::Credential { .. } => "credential",
            LinkError::Dns { .. } => "dns",
            LinkError::Tcp { .. } => "tcp",
            LinkError::TlsSetup(_) | LinkError::Tls { .. } => "tls",
            LinkError::Refused(_) => "connack",
            LinkError::Protocol(_) => "protocol",
            LinkError::Timeout(_) => "timeout",
            LinkError::Lost(_) => "connection",
            LinkError::Disconnected(_) => "disconnect",
            LinkError::Storage(_) | LinkError::Reader(_) | LinkError::NotKept { .. } => "storage",
        }
    }
}

impl From<WireError> for LinkError {
    fn from(err: WireError) -> Self {
        LinkError::Protocol(err.to_string())
    }
}

trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}

/// One established connection.
struct Connection {
    reader: ReadHalf<Box<dyn Stream>>,
    writer: WriteHalf<Box<dyn Stream>>,
    input: BytesMut,
    output: BytesMut,
    codec: Codec,
    /// QoS 1 messages the remote takes unacknowledged.
    window: usize,
    keep_alive: Duration,
    /// The remote resumed the bridge's session (CONNACK).
    session_present: bool,
    /// Subscription changes sent, until the remote acknowledged them.
    changing: Option<Changing>,
}

/// A SUBSCRIBE and/or UNSUBSCRIBE awaiting its ack; once both are in, and
/// every filter was granted, `record` is what the remote's session holds.
struct Changing {
    suback: bool,
    unsuback: bool,
    granted: bool,
    record: String,
}

/// What the bridge's session at the remote is subscribed to, as recorded
/// in its subscriptions file: the remote and client id on the first line
/// (another one is another session), then `{qos} {filter}` per rule.
fn subscription_record(config: &BridgeConfig) -> String {
    let mut record = format!(
        "{}:{} {}\n",
        config.remote.host, config.remote.port, config.client_id
    );
    for rule in &config.subscribe {
        record.push_str(&format!("{} {}\n", rule.qos.level(), rule.remote.as_str()));
    }
    record
}

/// The filters of a record, if it is of the same session as `current`.
fn recorded_filters<'a>(record: &'a str, current: &str) -> Vec<&'a str> {
    let mut lines = record.lines();
    if lines.next() != current.lines().next() {
        return Vec::new();
    }
    lines
        .filter_map(|line| line.split_once(' ').map(|(_, filter)| filter))
        .collect()
}

impl Connection {
    /// Reads until a whole packet is in; `None` at the end of the stream.
    async fn next_packet(&mut self) -> Result<Option<Incoming>, LinkError> {
        loop {
            if let Some(packet) = self.codec.decode(&mut self.input)? {
                return Ok(Some(packet));
            }
            self.input.reserve(READ_ROOM);
            if self
                .reader
                .read_buf(&mut self.input)
                .await
                .map_err(LinkError::Lost)?
                == 0
            {
                return Ok(None);
            }
        }
    }

    async fn flush(&mut self) -> Result<(), LinkError> {
        self.writer
            .write_all(&self.output)
            .await
            .map_err(LinkError::Lost)?;
        self.output.clear();
        self.writer.flush().await.map_err(LinkError::Lost)
    }
}

/// One bridge's link task.
pub(super) struct Link {
    config: BridgeConfig,
    name: Arc<str>,
    queue: Arc<Queue>,
    broker: Arc<Broker>,
    /// `[limits]` topic limits, applied to what the remote sends as to
    /// what devices send.
    limits: TopicLimits,
    /// Inbound messages not routed, by reason (the metrics read them).
    refusals: Arc<Refusals>,
    /// Refusals since the last one logged, and when that was.
    refusals_unlogged: u64,
    refusal_logged: Option<Instant>,
    /// Where what the remote's session is subscribed to is recorded (in
    /// `[storage] dir`), so that a resumed session is subscribed again
    /// only when the rules changed; `None` with `clean_start`.
    subscriptions_file: Option<PathBuf>,
    /// The highest sequence number sent on any connection: sending one at
    /// or below it again is a resend.
    sent_ever: u64,
    forwarded: u64,
    resent: u64,
    refused: u64,
    received: u64,
}

/// What the forward direction of one connection holds.
struct Outbound {
    reader: Option<QueueReader>,
    /// Read from the table, not sent yet.
    ahead: VecDeque<Queued>,
    /// The highest sequence number read from the table.
    read_upto: u64,
    /// Packet id → sequence number of what awaits its PUBACK.
    inflight: HashMap<u16, u64>,
    next_pkid: u16,
    /// Sequence numbers to delete: acknowledged, or sent at QoS 0.
    done: Vec<u64>,
    /// When the oldest of them was added.
    done_since: Option<Instant>,
    /// A backlog being drained: when it started and how many it held.
    draining: Option<(Instant, u64)>,
}

impl Outbound {
    fn pkid(&mut self) -> u16 {
        loop {
            let pkid = self.next_pkid;
            self.next_pkid = match self.next_pkid.wrapping_add(1) {
                0 | SUBSCRIBE_PKID | UNSUBSCRIBE_PKID => FIRST_PUBLISH_PKID,
                next => next,
            };
            if !self.inflight.contains_key(&pkid) {
                return pkid;
            }
        }
    }
}

impl Link {
    pub fn new(
        config: BridgeConfig,
        name: Arc<str>,
        queue: Arc<Queue>,
        broker: Arc<Broker>,
        limits: TopicLimits,
        refusals: Arc<Refusals>,
        subscriptions_file: Option<PathBuf>,
    ) -> Link {
        Link {
            subscriptions_file,
            config,
            name,
            queue,
            broker,
            limits,
            refusals,
            refusals_unlogged: 0,
            refusal_logged: None,
            sent_ever: 0,
            forwarded: 0,
            resent: 0,
            refused: 0,
            received: 0,
        }
    }

    fn remote(&self) -> String {
        format!("{}:{}", self.config.remote.host, self.config.remote.port)
    }

    /// Connects, serves, reconnects, until `shutdown` turns true.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = Backoff::new();
        loop {
            if *shutdown.borrow() {
                break;
            }
            let attempt = tokio::select! {
                attempt = self.connect() => attempt,
                _ = shutdown.changed() => break,
            };
            match attempt {
                Ok(mut connection) => {
                    info!(
                        bridge = &*self.name,
                        remote = self.remote(),
                        queued = self.queue.snapshot().messages,
                        window = connection.window,
                        session_present = connection.session_present,
                        "bridge connected"
                    );
                    backoff.reset();
                    match self.serve(&mut connection, &mut shutdown).await {
                        Ok(()) => {
                            let _ = connection.codec.disconnect(&mut connection.output);
                            let _ =
                                tokio::time::timeout(Duration::from_secs(1), connection.flush())
                                    .await;
                            break;
                        }
                        Err(err) => warn!(
                            bridge = &*self.name,
                            remote = self.remote(),
                            kind = err.kind(),
                            error = %err,
                            "bridge: connection ended; reconnecting"
                        ),
                    }
                }
                Err(err) => warn!(
                    bridge = &*self.name,
                    remote = self.remote(),
                    kind = err.kind(),
                    error = %err,
                    "bridge: cannot connect"
                ),
            }
            let wait = backoff.next_wait();
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => break,
            }
        }
        info!(
            bridge = &*self.name,
            forwarded = self.forwarded,
            resent = self.resent,
            refused = self.refused,
            received = self.received,
            queued = self.queue.snapshot().messages,
            "bridge stopped"
        );
    }

    /// The password or token, read now: a token file is read on every
    /// connect, so a refresher's new token is used at the next one.
    fn password(&self) -> Result<Option<String>, LinkError> {
        let read = |path: &Path| {
            std::fs::read_to_string(path).map_err(|source| LinkError::Credential {
                path: path.to_path_buf(),
                source,
            })
        };
        Ok(match &self.config.credential {
            None => None,
            Some(Credential::PasswordFile(path)) => {
                Some(read(path)?.trim_end_matches(['\r', '\n']).to_owned())
            }
            Some(Credential::TokenFile(path)) => Some(read(path)?.trim().to_owned()),
        })
    }

    async fn connect(&self) -> Result<Connection, LinkError> {
        let config = &self.config;
        let password = self.password()?;
        let host = config.remote.host.clone();
        let addrs: Vec<_> = tokio::time::timeout(
            CONNECT_TIMEOUT,
            tokio::net::lookup_host((host.as_str(), config.remote.port)),
        )
        .await
        .map_err(|_| LinkError::Timeout("DNS"))?
        .map_err(|err| LinkError::Dns {
            host: host.clone(),
            detail: err.to_string(),
        })?
        .collect();
        if addrs.is_empty() {
            return Err(LinkError::Dns {
                host,
                detail: "no address".to_owned(),
            });
        }
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addrs.as_slice()))
            .await
            .map_err(|_| LinkError::Timeout("TCP connect"))?
            .map_err(|source| LinkError::Tcp {
                addr: self.remote(),
                source,
            })?;
        // Small packets (acks, pings) must not wait for Nagle.
        let _ = tcp.set_nodelay(true);
        let stream: Box<dyn Stream> = match config.remote.transport {
            Transport::Plain => Box::new(tcp),
            Transport::Tls => {
                let client_cert = config
                    .client_cert
                    .as_ref()
                    .map(|c| (c.cert.as_path(), c.key.as_path()));
                let tls = tls::client_config(config.ca_file.as_deref(), client_cert)?;
                let server = ServerName::try_from(host.clone()).map_err(|err| LinkError::Tls {
                    host: host.clone(),
                    source: io::Error::new(io::ErrorKind::InvalidInput, err),
                })?;
                let stream = tokio::time::timeout(
                    CONNECT_TIMEOUT,
                    TlsConnector::from(tls).connect(server, tcp),
                )
                .await
                .map_err(|_| LinkError::Timeout("TLS handshake"))?
                .map_err(|source| LinkError::Tls { host, source })?;
                Box::new(stream)
            }
        };
        let (reader, writer) = tokio::io::split(stream);
        let mut connection = Connection {
            reader,
            writer,
            input: BytesMut::with_capacity(8 * 1024),
            output: BytesMut::with_capacity(8 * 1024),
            codec: Codec::new(config.protocol),
            window: usize::from(DEFAULT_WINDOW),
            keep_alive: config.keep_alive,
            session_present: false,
            changing: None,
        };
        connection
            .codec
            .connect(config, password, &mut connection.output)?;
        connection.flush().await?;
        let connack = tokio::time::timeout(CONNECT_TIMEOUT, connection.next_packet())
            .await
            .map_err(|_| LinkError::Timeout("CONNACK"))??;
        let connack = match connack {
            Some(Incoming::ConnAck(connack)) => connack,
            Some(other) => {
                return Err(LinkError::Protocol(format!(
                    "expected CONNACK, got {other:?}"
                )));
            }
            None => return Err(LinkError::Refused("closed before CONNACK".to_owned())),
        };
        if let Some(reason) = connack.refused {
            return Err(LinkError::Refused(reason));
        }
        connection.codec.limit_outgoing(connack.max_packet_size);
        connection.window = usize::from(
            connack
                .receive_maximum
                .unwrap_or(DEFAULT_WINDOW)
                .clamp(1, MAX_WINDOW),
        );
        if let Some(secs) = connack.server_keep_alive {
            connection.keep_alive = Duration::from_secs(u64::from(secs.max(1)));
        }
        connection.session_present = connack.session_present && !config.clean_start;
        self.subscribe(&mut connection)?;
        connection.flush().await?;
        Ok(connection)
    }

    /// Subscribes as the session at the remote needs. A resumed session
    /// still holds its subscriptions: subscribing again would only make
    /// the remote send every retained message once more, so it is done
    /// only when the rules changed since they were made (then the removed
    /// ones are unsubscribed). A new session (the remote forgot it: it
    /// expired, or the remote restarted without persistence) gets them
    /// all.
    fn subscribe(&self, connection: &mut Connection) -> Result<(), LinkError> {
        let config = &self.config;
        let record = subscription_record(config);
        let wanted: Vec<(String, QoS)> = config
            .subscribe
            .iter()
            .map(|rule| (rule.remote.as_str().to_owned(), rule.qos))
            .collect();
        let mut removed = Vec::new();
        if let Some(file) = &self.subscriptions_file {
            if connection.session_present {
                match std::fs::read_to_string(file) {
                    Ok(previous) if previous == record => return Ok(()),
                    Ok(previous) => {
                        removed = recorded_filters(&previous, &record)
                            .into_iter()
                            .filter(|filter| wanted.iter().all(|(f, _)| f != filter))
                            .map(str::to_owned)
                            .collect();
                    }
                    // Not recorded (or unreadable): subscribe to be sure.
                    Err(_) => {}
                }
                info!(
                    bridge = &*self.name,
                    subscribe = wanted.len(),
                    unsubscribe = removed.len(),
                    "bridge: the subscribe rules changed since the remote's session was made; subscribing again"
                );
            } else if let Err(err) = std::fs::remove_file(file) {
                // The remote holds no subscription: neither may the record.
                if err.kind() != io::ErrorKind::NotFound {
                    warn!(bridge = &*self.name, file = %file.display(), error = %err, "bridge: cannot remove the subscriptions record");
                }
            }
        }
        if !wanted.is_empty() {
            connection
                .codec
                .subscribe(SUBSCRIBE_PKID, &wanted, &mut connection.output)?;
        }
        if !removed.is_empty() {
            connection
                .codec
                .unsubscribe(UNSUBSCRIBE_PKID, &removed, &mut connection.output)?;
        }
        if !wanted.is_empty() || !removed.is_empty() {
            connection.changing = Some(Changing {
                suback: wanted.is_empty(),
                unsuback: removed.is_empty(),
                granted: true,
                record,
            });
        }
        Ok(())
    }

    /// Records what the remote's session is subscribed to, once it
    /// acknowledged every change; a refused filter is not recorded, so it
    /// is asked for again on the next connection.
    fn record_subscriptions(&self, connection: &mut Connection) {
        let Some(changing) = connection.changing.take_if(|c| c.suback && c.unsuback) else {
            return;
        };
        let Some(file) = &self.subscriptions_file else {
            return;
        };
        if !changing.granted {
            return;
        }
        // Written aside and renamed, so a crash leaves the old record or
        // the new one, never half of one.
        let partial = file.with_extension("partial");
        let written = std::fs::write(&partial, changing.record.as_bytes())
            .and_then(|()| std::fs::rename(&partial, file));
        if let Err(err) = written {
            warn!(bridge = &*self.name, file = %file.display(), error = %err, "bridge: cannot record the remote session's subscriptions; they are made again on the next connection");
        }
    }

    /// Moves messages both ways until the connection fails (an error) or
    /// `shutdown` turns true (`Ok`).
    async fn serve(
        &mut self,
        connection: &mut Connection,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), LinkError> {
        let backlog = self.queue.snapshot().messages;
        let mut out = Outbound {
            reader: Some(self.queue.reader()?),
            ahead: VecDeque::new(),
            read_upto: 0,
            inflight: HashMap::new(),
            next_pkid: FIRST_PUBLISH_PKID,
            done: Vec::new(),
            done_since: None,
            draining: (backlog > 0).then(|| (Instant::now(), backlog)),
        };
        let ended = self.exchange(connection, shutdown, &mut out).await;
        // What the remote acknowledged goes, however the connection ended.
        self.queue.acked(std::mem::take(&mut out.done));
        ended
    }

    async fn exchange(
        &mut self,
        connection: &mut Connection,
        shutdown: &mut watch::Receiver<bool>,
        out: &mut Outbound,
    ) -> Result<(), LinkError> {
        let mut committed = self.queue.committed();
        let mut last_heard = Instant::now();
        let mut last_sent = Instant::now();
        let mut ping_sent: Option<Instant> = None;
        // What came in with the CONNACK: a resumed session's queued
        // messages follow it at once, often in the same read, and would
        // otherwise sit in the buffer until the next bytes arrive (the
        // PINGRESP, a keep-alive later).
        while let Some(packet) = connection.codec.decode(&mut connection.input)? {
            self.handle(packet, connection, out).await?;
        }
        loop {
            let tail = *committed.borrow_and_update();
            self.fill(out, tail).await?;
            self.send(connection, out)?;
            let caught_up = out.ahead.is_empty() && out.read_upto >= tail;
            if out.done.len() >= ACK_BATCH || (caught_up && out.inflight.is_empty()) {
                self.queue.acked(std::mem::take(&mut out.done));
                out.done_since = None;
            } else if !out.done.is_empty() {
                out.done_since.get_or_insert_with(Instant::now);
            }
            self.report_drain(out, tail);
            let window_full = out.inflight.len() >= connection.window;
            if !connection.output.is_empty() {
                last_sent = Instant::now();
            }
            let ping_due = last_sent + connection.keep_alive;
            let silent_since = ping_sent.unwrap_or(last_heard);
            let dead_at = silent_since + connection.keep_alive + connection.keep_alive / 2;
            // Room for a read: the buffer's front goes with every packet
            // decoded, and a full one would be read 64 bytes at a time.
            connection.input.reserve(READ_ROOM);
            tokio::select! {
                read = connection.reader.read_buf(&mut connection.input) => {
                    if read.map_err(LinkError::Lost)? == 0 {
                        return Err(LinkError::Lost(io::ErrorKind::UnexpectedEof.into()));
                    }
                    last_heard = Instant::now();
                    ping_sent = None;
                    while let Some(packet) = connection.codec.decode(&mut connection.input)? {
                        self.handle(packet, connection, out).await?;
                    }
                }
                written = connection.writer.write(&connection.output), if !connection.output.is_empty() => {
                    let n = written.map_err(LinkError::Lost)?;
                    connection.output.advance(n);
                }
                changed = committed.changed(), if caught_up && !window_full => {
                    // The writer is gone only at shutdown, which the
                    // shutdown branch sees.
                    if changed.is_err() {
                        return Ok(());
                    }
                }
                () = tokio::time::sleep_until(ping_due.into()), if ping_sent.is_none() => {
                    connection.codec.pingreq(&mut connection.output)?;
                    ping_sent = Some(Instant::now());
                }
                () = tokio::time::sleep_until(dead_at.into()) => {
                    return Err(LinkError::Timeout("the remote stopped answering (keep-alive)"));
                }
                () = tokio::time::sleep_until(
                    out.done_since.map_or(far_future(), |since| since + ACK_DELAY).into()
                ), if out.done_since.is_some() => {
                    self.queue.acked(std::mem::take(&mut out.done));
                    out.done_since = None;
                }
                _ = shutdown.changed() => return Ok(()),
            }
        }
    }

    /// Reads the next rows of the queue when nothing read is left to send.
    async fn fill(&mut self, out: &mut Outbound, tail: u64) -> Result<(), LinkError> {
        if !out.ahead.is_empty() || out.read_upto >= tail {
            return Ok(());
        }
        let after = out.read_upto;
        if let Some(rows) = self.queue.recent_after(after, READ_BATCH) {
            if let Some(last) = rows.last() {
                out.read_upto = last.seq;
            }
            out.ahead.extend(rows);
            return Ok(());
        }
        let Some(mut reader) = out.reader.take() else {
            return Ok(());
        };
        let (reader, rows) = tokio::task::spawn_blocking(move || {
            let rows = reader.after(after, READ_BATCH);
            (reader, rows)
        })
        .await
        .map_err(|err| LinkError::Reader(err.to_string()))?;
        out.reader = Some(reader);
        let rows = rows?;
        match rows.last() {
            Some(last) => out.read_upto = last.seq,
            // Everything up to the tail was acknowledged or dropped.
            None => out.read_upto = tail,
        }
        out.ahead.extend(rows);
        Ok(())
    }

    /// Encodes queued messages while the window and the output allow.
    fn send(&mut self, connection: &mut Connection, out: &mut Outbound) -> Result<(), LinkError> {
        while out.inflight.len() < connection.window && connection.output.len() < MAX_UNWRITTEN {
            let Some(queued) = out.ahead.pop_front() else {
                break;
            };
            let Some(publication) = queued.publication else {
                // Expired, or did not decode (logged by the reader).
                out.done.push(queued.seq);
                continue;
            };
            if queued.seq <= self.sent_ever {
                self.resent += 1;
            }
            self.sent_ever = self.sent_ever.max(queued.seq);
            let pkid = out.pkid();
            match connection.codec.publish(
                pkid,
                false,
                publication.qos,
                &publication,
                &mut connection.output,
            ) {
                Ok(()) => {}
                Err(err) => {
                    // Larger than the remote takes: it never will.
                    self.refused += 1;
                    error!(bridge = &*self.name, topic = publication.topic, error = %err, "bridge: a message the remote cannot take is dropped");
                    out.done.push(queued.seq);
                    continue;
                }
            }
            if publication.qos == QoS::AtMostOnce {
                self.forwarded += 1;
                out.done.push(queued.seq);
            } else {
                out.inflight.insert(pkid, queued.seq);
            }
        }
        Ok(())
    }

    /// Logs the end of a backlog's drain (everything committed is sent
    /// and acknowledged), with its rate.
    fn report_drain(&self, out: &mut Outbound, tail: u64) {
        let Some((since, backlog)) = out.draining else {
            return;
        };
        if !out.inflight.is_empty() || !out.ahead.is_empty() || out.read_upto < tail {
            return;
        }
        let secs = since.elapsed().as_secs_f64();
        info!(
            bridge = &*self.name,
            messages = backlog,
            seconds = format!("{secs:.2}"),
            per_second = format!("{:.0}", backlog as f64 / secs.max(1e-6)),
            "bridge: backlog drained"
        );
        out.draining = None;
    }

    async fn handle(
        &mut self,
        packet: Incoming,
        connection: &mut Connection,
        out: &mut Outbound,
    ) -> Result<(), LinkError> {
        match packet {
            Incoming::PubAck { pkid, refused } => {
                let Some(seq) = out.inflight.remove(&pkid) else {
                    return Err(LinkError::Protocol(format!(
                        "PUBACK for unknown packet id {pkid}"
                    )));
                };
                out.done.push(seq);
                match refused {
                    None => self.forwarded += 1,
                    Some(reason) => {
                        self.refused += 1;
                        warn!(
                            bridge = &*self.name,
                            seq, reason, "bridge: the remote refused a message; it is dropped"
                        );
                    }
                }
            }
            Incoming::Publish(publish) => self.receive(publish, connection).await?,
            Incoming::SubAck { pkid, granted } => {
                let Some(changing) = connection
                    .changing
                    .as_mut()
                    .filter(|c| pkid == SUBSCRIBE_PKID && !c.suback)
                else {
                    return Err(LinkError::Protocol(format!(
                        "SUBACK for unknown packet id {pkid}"
                    )));
                };
                changing.suback = true;
                changing.granted = granted.len() == self.config.subscribe.len()
                    && granted.iter().all(Result::is_ok);
                for (rule, granted) in self.config.subscribe.iter().zip(granted) {
                    if let Err(reason) = granted {
                        error!(
                            bridge = &*self.name,
                            filter = rule.remote.as_str(),
                            reason,
                            "bridge: the remote refused a subscription; nothing comes in on it"
                        );
                    }
                }
                self.record_subscriptions(connection);
            }
            Incoming::UnsubAck { pkid } => {
                let Some(changing) = connection
                    .changing
                    .as_mut()
                    .filter(|c| pkid == UNSUBSCRIBE_PKID && !c.unsuback)
                else {
                    return Err(LinkError::Protocol(format!(
                        "UNSUBACK for unknown packet id {pkid}"
                    )));
                };
                changing.unsuback = true;
                self.record_subscriptions(connection);
            }
            Incoming::PingResp => {}
            Incoming::Disconnect { reason } => return Err(LinkError::Disconnected(reason)),
            Incoming::ConnAck(_) => return Err(LinkError::Protocol("a second CONNACK".to_owned())),
            Incoming::Unexpected(what) => {
                return Err(LinkError::Protocol(format!(
                    "unexpected {what} from the remote"
                )));
            }
        }
        Ok(())
    }

    /// Publishes a message from the remote into the routing core under its
    /// local topic, then acknowledges it: only once it is routed and every
    /// commit it made (a retained message, another bridge's queue) is
    /// done, so the remote keeps it until the gateway has it. A message
    /// that could not be kept is not acknowledged and the connection ends:
    /// the remote sends it again on the next one (the bridge's session
    /// there holds it).
    ///
    /// A message the gateway would refuse from a device (its local topic
    /// is over the `[limits]` topic limits, or it maps to no valid local
    /// topic) is not routed, but acknowledged all the same: refused, it
    /// would otherwise come back on every connection for ever.
    async fn receive(
        &mut self,
        publish: InboundPublish,
        connection: &mut Connection,
    ) -> Result<(), LinkError> {
        let InboundPublish {
            pkid,
            topic,
            mut publication,
        } = publish;
        let qos = publication.qos;
        match self.local_topic(&topic) {
            Ok((local, rule_qos)) => {
                self.received += 1;
                publication.topic = local;
                publication.qos = qos.min(rule_qos);
                let message = Message::bridged(publication, self.broker.budget(), &self.name);
                let mut pending = self.broker.publish(message, None);
                for kept in pending.take_kept() {
                    // A dropped sender (the writer gone) is not kept.
                    let outcome = kept.await.unwrap_or(Err(CommitError::Storage));
                    if let Err(error) = outcome {
                        return Err(LinkError::NotKept { topic, error });
                    }
                }
                while !pending.is_done() {
                    pending.advance(&self.broker).await;
                }
            }
            Err(refusal) => self.refused_inbound(refusal, &topic),
        }
        if qos != QoS::AtMostOnce {
            connection.codec.puback(pkid, &mut connection.output)?;
        }
        Ok(())
    }

    /// The local topic and QoS of a message the remote sent on
    /// `remote_topic`, or why it has none here. The local topic is
    /// checked against the gateway's topic limits before anything else
    /// sees it.
    fn local_topic(&self, remote_topic: &str) -> Result<(String, QoS), Refusal> {
        let rule = self
            .config
            .subscribe
            .iter()
            .find(|rule| rule.remote.matches_topic(remote_topic))
            .ok_or(Refusal::Unmapped)?;
        let local = rule
            .local_topic(remote_topic)
            .ok_or(Refusal::InvalidTopic)?;
        match self.limits.topic_name(&local) {
            Ok(()) => Ok((local, rule.qos)),
            Err(TopicError::Limit(LimitError::TooDeep { .. })) => Err(Refusal::TopicLevels),
            Err(TopicError::Limit(LimitError::TooLong { .. })) => Err(Refusal::TopicBytes),
            Err(_) => Err(Refusal::InvalidTopic),
        }
    }

    /// Counts an inbound message not routed, and logs it unless one was
    /// logged within [`REFUSAL_LOG_INTERVAL`].
    fn refused_inbound(&mut self, refusal: Refusal, topic: &str) {
        self.refusals.count(refusal);
        self.refusals_unlogged += 1;
        if self
            .refusal_logged
            .is_some_and(|at| at.elapsed() < REFUSAL_LOG_INTERVAL)
        {
            return;
        }
        let mut shown = LOGGED_TOPIC_BYTES.min(topic.len());
        while !topic.is_char_boundary(shown) {
            shown -= 1;
        }
        warn!(
            bridge = &*self.name,
            reason = refusal.as_str(),
            topic = &topic[..shown],
            topic_bytes = topic.len(),
            topic_levels = topic.bytes().filter(|&b| b == b'/').count() + 1,
            max_topic_levels = self.limits.max_levels,
            max_topic_bytes = self.limits.max_bytes,
            refused = self.refusals_unlogged,
            "bridge: messages from the remote were not routed (acknowledged, not redelivered); logged at most once a minute, counted in jwtgate_bridge_refused_total"
        );
        self.refusals_unlogged = 0;
        self.refusal_logged = Some(Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::Config;

    fn bridge(subscribe: &str) -> BridgeConfig {
        let text = format!(
            "[[bridge]]\nname = \"cloud\"\nremote = \"mqtts://broker.example\"\nclient_id = \"site-42\"\n\
             subscribe = [ {subscribe} ]\n"
        );
        let config = Config::parse(&text, Path::new("jwtgate.toml"), Path::new("/srv"))
            .unwrap_or_else(|err| panic!("{err}"));
        config.bridges[0].clone()
    }

    #[test]
    fn a_subscriptions_record_names_its_session_and_its_filters() {
        let before = subscription_record(&bridge(
            "{ remote = \"site-42/cmd/#\" }, { remote = \"site-42/cfg/+\", qos = 0 }",
        ));
        assert_eq!(
            before,
            "broker.example:8883 site-42\n1 site-42/cmd/#\n0 site-42/cfg/+\n"
        );
        let after = subscription_record(&bridge("{ remote = \"site-42/cmd/#\" }"));
        assert_eq!(
            recorded_filters(&before, &after),
            vec!["site-42/cmd/#", "site-42/cfg/+"]
        );
        // Another client id is another session: none of its filters are ours.
        let elsewhere = before.replace(" site-42\n", " site-43\n");
        assert!(recorded_filters(&elsewhere, &after).is_empty());
    }
}
