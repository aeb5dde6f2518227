//! The web clients' side of the tests: the npm packages in `tests/web`
//! (mqtt.js, puppeteer-core), installed on first use from its lock file,
//! and where the WebSocket listener of a gateway started with
//! [`WEBSOCKET`] is.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;

use super::DevBinary;

/// The config table that turns the WebSocket listener on, on port 0.
pub const WEBSOCKET: &str = "[websocket]\nlisten = \"127.0.0.1:0\"\n";

/// `tests/web`, its npm packages installed (`npm ci`, from
/// `package-lock.json`) if they are not yet. Panics naming what to install
/// when Node.js or npm is missing.
pub fn packages() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/web"));
        let installed = ["mqtt", "puppeteer-core"].iter().all(|package| {
            dir.join("node_modules")
                .join(package)
                .join("package.json")
                .is_file()
        });
        if !installed {
            let status = std::process::Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund"])
                .current_dir(&dir)
                .stdin(Stdio::null())
                .status()
                .unwrap_or_else(|e| {
                    panic!("npm: {e}: install the Debian packages `nodejs` and `npm`")
                });
            assert!(
                status.success(),
                "npm ci in {} failed: {status}",
                dir.display()
            );
        }
        dir
    })
}

/// `wss://localhost:PORT/mqtt` of `gw`'s WebSocket listener.
pub fn url(gw: &DevBinary) -> String {
    let addr = gw
        .served
        .ready()
        .websocket
        .expect("the gateway was started with [websocket] listen");
    format!("wss://localhost:{}/mqtt", addr.port())
}

/// The development CA the gateway's certificate is issued by.
pub fn ca_file(gw: &DevBinary) -> PathBuf {
    let ca = gw.keys_dir().join("tls").join("ca.crt");
    assert!(ca.is_file(), "no development CA at {}", ca.display());
    ca
}

// ---------------------------------------------------------------------------
// A raw client of the WebSocket listener: MQTT bytes in binary messages
// chosen by the test, and HTTP written by hand (issue 21)
// ---------------------------------------------------------------------------

use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use super::{Read, SERVER_NAME, WAIT, client_tls_config, mqtt};

/// TLS (server name `localhost`, trusting the gateway's CA) to `gw`'s
/// WebSocket listener, before any HTTP.
pub async fn tls_to_websocket(gw: &DevBinary) -> TlsStream<tokio::net::TcpStream> {
    let addr = gw
        .served
        .ready()
        .websocket
        .expect("the gateway was started with [websocket] listen");
    let tcp = tokio::time::timeout(WAIT, tokio::net::TcpStream::connect(addr))
        .await
        .expect("TCP connect to the WebSocket listener timed out")
        .expect("TCP connect to the WebSocket listener");
    let connector = TlsConnector::from(client_tls_config(&gw.ca));
    let name =
        tokio_rustls::rustls::pki_types::ServerName::try_from(SERVER_NAME).expect("server name");
    tokio::time::timeout(WAIT, connector.connect(name, tcp))
        .await
        .expect("TLS handshake with the WebSocket listener timed out")
        .expect("TLS handshake with the WebSocket listener")
}

/// An HTTP answer read to the end of its connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpAnswer {
    pub status: u16,
    /// The head, status line and headers, as text.
    pub head: String,
    pub body: Vec<u8>,
}

impl HttpAnswer {
    /// The status and head of `head` (through its empty line), no body.
    pub fn parse(head: &[u8]) -> HttpAnswer {
        let head = String::from_utf8_lossy(head).trim_end().to_owned();
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("no status in {head:?}"));
        HttpAnswer {
            status,
            head,
            body: Vec::new(),
        }
    }

    /// The value of header `name` (any case), if the head has it.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim()
                .eq_ignore_ascii_case(name)
                .then_some(value.trim())
        })
    }
}

/// Reads an HTTP response from `io` until the server closes the
/// connection (the gateway serves one request a connection). Panics after
/// [`WAIT`] or on a response that does not parse.
pub async fn read_http_answer(io: &mut (impl tokio::io::AsyncRead + Unpin)) -> HttpAnswer {
    let mut bytes = Vec::new();
    // A reset or a TLS close without close_notify after the response still
    // leaves the response read.
    let _ = tokio::time::timeout(WAIT, io.read_to_end(&mut bytes))
        .await
        .expect("the server closed the connection within WAIT");
    let end = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP head in {:?}", String::from_utf8_lossy(&bytes)));
    let mut answer = HttpAnswer::parse(&bytes[..end + 4]);
    answer.body = bytes[end + 4..].to_vec();
    answer
}

/// Writes `request` (bytes as given: the attacker's view) on a new TLS
/// connection to `gw`'s WebSocket listener and reads the answer to the end
/// of the connection.
pub async fn wss_http(gw: &DevBinary, request: &[u8]) -> HttpAnswer {
    let mut tls = tls_to_websocket(gw).await;
    tls.write_all(request).await.expect("write the request");
    tls.flush().await.expect("flush the request");
    read_http_answer(&mut tls).await
}

/// An upgrade request, written by hand so that the test chooses every
/// header: `GET path` with `Connection: Upgrade`, `Upgrade: websocket`,
/// `Sec-WebSocket-Version: 13`, a fresh key and, unless changed,
/// `Sec-WebSocket-Protocol: mqtt`.
#[derive(Debug, Clone)]
pub struct Upgrade {
    path: String,
    headers: Vec<(String, String)>,
}

impl Upgrade {
    /// The request for `path_and_query`, offering the subprotocol `mqtt`.
    pub fn new(path_and_query: &str) -> Upgrade {
        Upgrade {
            path: path_and_query.to_owned(),
            headers: vec![
                ("Connection".into(), "Upgrade".into()),
                ("Upgrade".into(), "websocket".into()),
                ("Sec-WebSocket-Version".into(), "13".into()),
                ("Sec-WebSocket-Protocol".into(), "mqtt".into()),
            ],
        }
    }

    /// Sets header `name` to `value`, replacing any value it had.
    pub fn header(self, name: &str, value: &str) -> Upgrade {
        let mut upgrade = self.without(name);
        upgrade.headers.push((name.to_owned(), value.to_owned()));
        upgrade
    }

    /// Leaves header `name` out.
    pub fn without(mut self, name: &str) -> Upgrade {
        self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        self
    }

    fn encode(&self, port: u16, key: &str) -> Vec<u8> {
        let mut request = format!(
            "GET {} HTTP/1.1\r\nHost: localhost:{port}\r\nSec-WebSocket-Key: {key}\r\n",
            self.path
        );
        for (name, value) in &self.headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        request.into_bytes()
    }
}

/// A WebSocket to the gateway carrying MQTT in binary messages the test
/// shapes itself (one byte a message, several packets in one, text frames,
/// oversized frames), read back as whole MQTT frames.
pub struct WsClient {
    socket: WebSocketStream<TlsStream<tokio::net::TcpStream>>,
    /// Bytes of binary messages not yet made up into a whole frame.
    buf: Vec<u8>,
    /// The subprotocol the gateway chose.
    pub protocol: Option<String>,
}

impl WsClient {
    /// Upgrades on `/mqtt` offering `mqtt`; panics unless the answer is
    /// 101.
    pub async fn connect(gw: &DevBinary) -> WsClient {
        match WsClient::upgrade(gw, Upgrade::new("/mqtt")).await {
            Ok(client) => client,
            Err(answer) => panic!("the upgrade was refused: {answer:?}"),
        }
    }

    /// Sends `request` on a new TLS connection: the WebSocket after a 101
    /// (whose `Sec-WebSocket-Accept` must match the key), or any other
    /// answer, read to the end of its connection.
    pub async fn upgrade(gw: &DevBinary, request: Upgrade) -> Result<WsClient, HttpAnswer> {
        let mut tls = tls_to_websocket(gw).await;
        let key = tokio_tungstenite::tungstenite::handshake::client::generate_key();
        let port = gw
            .served
            .ready()
            .websocket
            .expect("[websocket] listen")
            .port();
        tls.write_all(&request.encode(port, &key))
            .await
            .expect("write the upgrade request");
        tls.flush().await.expect("flush the upgrade request");
        // The head, a byte at a time: nothing past it may be taken from the
        // stream the WebSocket reads next.
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8; 1];
            let n = tokio::time::timeout(WAIT, tls.read(&mut byte))
                .await
                .expect("the upgrade answered within WAIT")
                .expect("read the upgrade's answer");
            assert!(
                n == 1,
                "the connection ended inside the answer's head: {:?}",
                String::from_utf8_lossy(&head)
            );
            head.push(byte[0]);
            assert!(head.len() <= 16 * 1024, "an answer head past 16 KiB");
        }
        let mut answer = HttpAnswer::parse(&head);
        if answer.status != 101 {
            let _ = tokio::time::timeout(WAIT, tls.read_to_end(&mut answer.body))
                .await
                .expect("the server closed the refused connection within WAIT");
            return Err(answer);
        }
        let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
        assert_eq!(
            answer.header("sec-websocket-accept"),
            Some(accept.as_str()),
            "{answer:?}"
        );
        assert!(
            answer
                .header("upgrade")
                .is_some_and(|v| v.eq_ignore_ascii_case("websocket")),
            "{answer:?}"
        );
        let protocol = answer.header("sec-websocket-protocol").map(str::to_owned);
        let socket = WebSocketStream::from_raw_socket(tls, Role::Client, None).await;
        Ok(WsClient {
            socket,
            buf: Vec::new(),
            protocol,
        })
    }

    /// Sends one message (or, with [`Message::Frame`], one frame as
    /// built). Errors (the server may already have closed) are returned.
    pub async fn send(&mut self, message: Message) -> Result<(), WsError> {
        tokio::time::timeout(WAIT, self.socket.send(message))
            .await
            .expect("the send finished within WAIT")
    }

    /// Sends `bytes` as one binary message, panicking on error.
    pub async fn send_binary(&mut self, bytes: &[u8]) {
        self.send(Message::binary(bytes.to_vec()))
            .await
            .expect("send a binary message");
    }

    /// One MQTT frame from the binary messages received, or the end of the
    /// connection (a close frame, the TLS stream's end or an error: any
    /// bytes of an unfinished frame included); `None` when `window` passes
    /// first. A text message from the server fails the test.
    pub async fn read_within(&mut self, window: Duration) -> Option<Read> {
        let deadline = tokio::time::Instant::now() + window;
        loop {
            if let Some(size) = mqtt::frame_len(&self.buf) {
                if self.buf.len() >= size {
                    return Some(Read::Packet(self.buf.drain(..size).collect()));
                }
            }
            match tokio::time::timeout_at(deadline, self.socket.next()).await {
                Err(_) => return None,
                Ok(Some(Ok(Message::Binary(bytes)))) => self.buf.extend_from_slice(&bytes),
                Ok(Some(Ok(Message::Text(text)))) => {
                    panic!("the gateway sent a text message: {text:?}")
                }
                Ok(Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)))) => {}
                Ok(None | Some(Ok(Message::Close(_))) | Some(Err(_))) => {
                    return Some(Read::Closed(std::mem::take(&mut self.buf)));
                }
            }
        }
    }

    /// One MQTT frame; panics if the connection ends or after [`WAIT`].
    pub async fn read_packet(&mut self) -> Vec<u8> {
        match self.read_within(WAIT).await {
            Some(Read::Packet(frame)) => frame,
            Some(Read::Closed(rest)) => {
                panic!("the WebSocket closed while reading a packet ({rest:02x?})")
            }
            None => panic!("no packet over the WebSocket within {WAIT:?}"),
        }
    }

    /// Reads until the gateway ends the connection; returns the frames
    /// received before (and any incomplete rest). Panics after [`WAIT`].
    pub async fn expect_closed(&mut self) -> Vec<Vec<u8>> {
        let mut frames = Vec::new();
        loop {
            match self.read_within(WAIT).await {
                Some(Read::Packet(frame)) => frames.push(frame),
                Some(Read::Closed(rest)) => {
                    if !rest.is_empty() {
                        frames.push(rest);
                    }
                    return frames;
                }
                None => {
                    panic!("the WebSocket is still open after {WAIT:?}; received {frames:02x?}")
                }
            }
        }
    }

    /// A WebSocket on which an MQTT 3.1.1 session is up: the CONNECT (user
    /// name `JWT`, `token` as password) in one message, CONNACK 0 read.
    pub async fn mqtt_v4(gw: &DevBinary, client_id: &str, token: &str) -> WsClient {
        let mut client = WsClient::connect(gw).await;
        client
            .send_binary(
                &mqtt::Connect::new(4, client_id)
                    .username("JWT")
                    .password(token)
                    .encode(),
            )
            .await;
        assert_eq!(client.read_packet().await, mqtt::CONNACK_OK_V4);
        client
    }
}
