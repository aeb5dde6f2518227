//! Reaching the remote broker: one connection set up (credential, DNS,
//! TCP, TLS, CONNECT and CONNACK), the packets read from it and written to
//! it, and the kinds of failure that end one, each logged as such.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::ServerName;

use super::wire::{Codec, Incoming, WireError};
use crate::broker::CommitError;
use crate::config::{BridgeConfig, Credential, Transport};
use crate::storage::StorageError;
use crate::tls::{self, TlsError};

/// How long DNS, TCP, TLS and CONNACK each get.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Unacknowledged QoS 1 messages towards a remote that names no receive
/// maximum (MQTT 3.1.1), and the most towards any.
const DEFAULT_WINDOW: u16 = 256;
const MAX_WINDOW: u16 = 1024;
/// Free space the input buffer gets before each read.
pub(super) const READ_ROOM: usize = 16 * 1024;

/// Why a connection attempt failed or a connection ended. Each kind is
/// logged as such, so a wrong password reads differently from a dead link.
#[derive(Debug, thiserror::Error)]
pub(super) enum LinkError {
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
    pub fn kind(&self) -> &'static str {
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

pub(super) trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}

/// One established connection.
pub(super) struct Connection {
    pub reader: ReadHalf<Box<dyn Stream>>,
    pub writer: WriteHalf<Box<dyn Stream>>,
    pub input: BytesMut,
    pub output: BytesMut,
    pub codec: Codec,
    /// QoS 1 messages the remote takes unacknowledged.
    pub window: usize,
    pub keep_alive: Duration,
    /// The remote resumed the bridge's session (CONNACK).
    pub session_present: bool,
    /// Subscription changes sent, until the remote acknowledged them.
    pub changing: Option<Changing>,
}

/// A SUBSCRIBE and/or UNSUBSCRIBE awaiting its ack; once both are in, and
/// every filter was granted, `record` is what the remote's session holds.
pub(super) struct Changing {
    pub suback: bool,
    pub unsuback: bool,
    pub granted: bool,
    pub record: String,
}

impl Connection {
    /// Reads until a whole packet is in; `None` at the end of the stream.
    pub async fn next_packet(&mut self) -> Result<Option<Incoming>, LinkError> {
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

    pub async fn flush(&mut self) -> Result<(), LinkError> {
        self.writer
            .write_all(&self.output)
            .await
            .map_err(LinkError::Lost)?;
        self.output.clear();
        self.writer.flush().await.map_err(LinkError::Lost)
    }
}

/// The remote as the log names it.
pub(super) fn remote(config: &BridgeConfig) -> String {
    format!("{}:{}", config.remote.host, config.remote.port)
}

/// The password or token, read now: a token file is read on every
/// connect, so a refresher's new token is used at the next one.
fn password(config: &BridgeConfig) -> Result<Option<String>, LinkError> {
    let read = |path: &Path| {
        std::fs::read_to_string(path).map_err(|source| LinkError::Credential {
            path: path.to_path_buf(),
            source,
        })
    };
    Ok(match &config.credential {
        None => None,
        Some(Credential::PasswordFile(path)) => {
            Some(read(path)?.trim_end_matches(['\r', '\n']).to_owned())
        }
        Some(Credential::TokenFile(path)) => Some(read(path)?.trim().to_owned()),
    })
}

/// Connects to the remote of `config` (DNS, TCP, TLS, CONNECT) and
/// reads its CONNACK: a connection that is yet to subscribe.
pub(super) async fn connect(config: &BridgeConfig) -> Result<Connection, LinkError> {
    let password = password(config)?;
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
            addr: remote(config),
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
    Ok(connection)
}
