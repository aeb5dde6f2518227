//! Shared harness for jwtgate's integration tests.
//!
//! Everything here talks to the real thing: a real [`Gateway`] bound on
//! `127.0.0.1:0` inside the test's tokio runtime, real TLS, real MQTT
//! clients.
//!
//! - [`TestGateway`]: a gateway in a temporary directory with development
//!   material (CA, server certificate for localhost/127.0.0.1, `keys/dev.b64`)
//!   created by [`firstrun::ensure_dev_material`]. [`TestGateway::token`]
//!   mints tokens with the dev secret through the library;
//!   [`TestGateway::sign`] signs hand-built claims for tokens the minter will
//!   not produce (expired, no topics claim, ...). Dropping it (or
//!   [`TestGateway::stop`]) shuts the gateway down.
//! - [`V4Client`] / [`V5Client`]: rumqttc clients over TLS trusting the dev
//!   CA, whose event loop runs in a task that stops at the first error (no
//!   automatic reconnect), with helpers to wait for CONNACK, SUBACK, a
//!   PUBLISH, a PUBACK, the end of the connection, or to check that nothing
//!   arrives, the latter ([`V4Client::expect_no_publish`],
//!   [`V4Client::publishes_while_alive`]) ending with a round trip that
//!   proves the watcher's connection is still served
//!   ([`V4Client::assert_alive`]); [`V4Client::publishes_within`] panics
//!   if the connection ends, so a dead watcher never reads as "nothing
//!   arrived"; [`V4Client::publishes_expecting`] waits for a known number
//!   of messages and then for extras. The MQTT 5 client also publishes with
//!   properties and subscribes with subscription options. Options come from
//!   [`TestGateway::v4_options`] / [`TestGateway::v5_options`] and are
//!   adjusted with rumqttc's own setters (`set_clean_session`,
//!   `set_keep_alive`, `set_last_will`, `set_credentials`) before
//!   [`V4Client::start`].
//! - [`RawClient`] and the [`mqtt`] encoders and parsers: a bare TLS socket
//!   for bytes no client library will send (MQTT 3.1, forbidden packets,
//!   garbage, a device that never acknowledges or drops mid-delivery), the
//!   certificate a new handshake is shown, and
//!   [`RawClient::connect_with_receive_buffer`] for a subscriber that stops
//!   reading and soon takes nothing more.
//! - Key rotation: [`write_atomically`] (the `.x.tmp` + rename drop) and
//!   [`drop_secret`], [`jwk`] (generated RSA, EC and Ed25519 key pairs with
//!   their JWKs, the library's own test helper), tokens signed by hand
//!   ([`device_claims`], [`sign_jwt`], [`sign_hs256_kid`]), [`capture_logs`]
//!   (the test binary's log, to wait for what the gateway reports) and
//!   [`ServedBinary`] (the `jwtgate` binary as a child process, for
//!   signals and for its resident [`Memory`]; [`DevBinary`] runs it in a
//!   temporary directory with development material and signs its tokens,
//!   optionally under a file size limit, a disk that fills up without
//!   root: [`DevBinary::start_with_file_size_limit`]).
//!   `benches/rotation.rs` includes this harness too.
//!
//! Timeouts here ([`WAIT`], [`START`]) only keep a broken test from
//! hanging; the [`QUIET`] window is for negative checks ("nothing
//! arrives"), never a speed requirement.
//!
//! No spawned binary listens on a port picked in advance: [`ServedBinary`]
//! starts `jwtgate serve --listen 127.0.0.1:0 --ready-file FILE` and reads
//! the bound addresses from the file (a port picked in advance could be
//! taken by another process first, and a connect probe would then succeed
//! against that process). After [`DevBinary::restart`] the gateway listens
//! on a new port: clients must take their options from the harness again
//! ([`DevBinary::addr`], [`DevBinary::v4_options`] are current).

#![allow(dead_code)]

pub mod checks;
pub mod mosquitto;
pub mod programs;
pub mod raw5;
pub mod relay;
pub mod scrape;
pub mod watch;
pub mod web;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Once, OnceLock, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jwtgate::config::Config;
use jwtgate::firstrun;
use jwtgate::gateway::Gateway;
use jwtgate::keys::{self, KeyStore};
use jwtgate::token::{self, MintClaims};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls;

/// Upper bound for anything a test waits on; only there to fail instead of
/// hanging.
pub const WAIT: Duration = Duration::from_secs(10);
/// Upper bound for a spawned `jwtgate serve` to report its listeners bound
/// (`--ready-file`): a start opens the state database and loads keys and
/// certificate, which a loaded machine can take a while over.
pub const START: Duration = Duration::from_secs(30);
/// The window of a negative check: nothing may arrive within it. Long
/// enough that, on a loaded machine, a message routed where it must not go
/// would have arrived; the absence checks ([`V4Client::expect_no_publish`],
/// [`V4Client::publishes_while_alive`]) then also make a round trip on the
/// watcher's connection, so a watcher that saw nothing because it was no
/// longer served fails instead of passing.
pub const QUIET: Duration = Duration::from_secs(1);
/// The filter of the liveness round trip ([`V4Client::assert_alive`]): an
/// UNSUBSCRIBE of it is answered with an UNSUBACK and changes nothing,
/// since nothing ever subscribes to it.
pub const LIVENESS_FILTER: &str = "jwtgate-test/liveness";
/// The name the dev server certificate is issued for.
pub const SERVER_NAME: &str = "localhost";

/// Installs a tracing subscriber once per test binary (`RUST_LOG` wins;
/// default `info,rumqttd=warn`). Output goes through the test writer, so it
/// shows only for failing tests or with `--nocapture`.
pub fn init_tracing() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rumqttd=warn"));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    });
}

/// Seconds since the epoch, for hand-built claims.
pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// A rustls client config trusting exactly the CA certificates in `ca_pem`.
pub fn client_tls_config(ca_pem: &[u8]) -> Arc<rustls::ClientConfig> {
    client_tls_config_with_cert(ca_pem, None)
}

/// As [`client_tls_config`], presenting `client_cert` (certificate chain
/// and key, PEM) when the server asks for one.
pub fn client_tls_config_with_cert(
    ca_pem: &[u8],
    client_cert: Option<(&[u8], &[u8])>,
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut &ca_pem[..]) {
        roots
            .add(cert.expect("CA PEM parses"))
            .expect("CA certificate is usable");
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("default protocol versions")
        .with_root_certificates(roots);
    let config = match client_cert {
        Some((cert, key)) => config
            .with_client_auth_cert(
                rustls_pemfile::certs(&mut &cert[..])
                    .map(|c| c.expect("client certificate PEM"))
                    .collect(),
                rustls_pemfile::private_key(&mut &key[..])
                    .expect("client key PEM")
                    .expect("a client key"),
            )
            .expect("client certificate and key fit"),
        None => config.with_no_client_auth(),
    };
    Arc::new(config)
}

/// rumqttc options for a TLS connection to `localhost:port` trusting
/// `ca_pem`, username `JWT` and `token` as password, clean session, 30 s
/// keep-alive, packet limits large enough for big tokens.
pub fn v4_options_for(
    port: u16,
    ca_pem: &[u8],
    client_id: &str,
    token: &str,
) -> rumqttc::MqttOptions {
    let mut opts = rumqttc::MqttOptions::new(client_id, SERVER_NAME, port);
    opts.set_transport(rumqttc::Transport::tls_with_config(
        rumqttc::TlsConfiguration::Rustls(client_tls_config(ca_pem)),
    ));
    opts.set_credentials("JWT", token);
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_max_packet_size(256 * 1024, 256 * 1024);
    opts
}

/// The MQTT 5 counterpart of [`v4_options_for`].
pub fn v5_options_for(
    port: u16,
    ca_pem: &[u8],
    client_id: &str,
    token: &str,
) -> rumqttc::v5::MqttOptions {
    let mut opts = rumqttc::v5::MqttOptions::new(client_id, SERVER_NAME, port);
    opts.set_transport(rumqttc::Transport::tls_with_config(
        rumqttc::TlsConfiguration::Rustls(client_tls_config(ca_pem)),
    ));
    opts.set_credentials("JWT", token);
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_max_packet_size(Some(256 * 1024));
    opts
}

// ---------------------------------------------------------------------------
// The gateway under test
// ---------------------------------------------------------------------------

/// A running in-process gateway with development material in a temp dir.
pub struct TestGateway {
    dir: tempfile::TempDir,
    config: Config,
    addr: SocketAddr,
    ca_pem: Vec<u8>,
    secret_path: PathBuf,
    keys: Arc<KeyStore>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl TestGateway {
    /// A gateway with the default configuration (listening on 127.0.0.1:0).
    pub async fn start() -> TestGateway {
        TestGateway::start_with(|_| {}).await
    }

    /// A gateway whose default configuration is adjusted by `tweak` before
    /// binding. `listen` is already `127.0.0.1:0` when `tweak` runs.
    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> TestGateway {
        init_tracing();
        let dir = tempfile::tempdir().expect("temp dir");
        let material =
            firstrun::ensure_dev_material(&dir.path().join("keys")).expect("dev material");
        let ca_path = material.ca_cert.clone().expect("a dev CA is created");
        let ca_pem = std::fs::read(&ca_path).expect("read dev CA");
        let mut config = Config::defaults(dir.path());
        config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        tweak(&mut config);
        let gateway = Gateway::bind(&config).await.expect("gateway binds");
        let addr = gateway.local_addr().expect("local address");
        let keys = gateway.keys();
        let (shutdown, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(gateway.run(async move {
            let _ = stopped.await;
        }));
        TestGateway {
            dir,
            config,
            addr,
            ca_pem,
            secret_path: material.secret,
            keys,
            shutdown: Some(shutdown),
            task: Some(task),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The development CA certificate (PEM) clients must trust.
    pub fn ca_pem(&self) -> &[u8] {
        &self.ca_pem
    }

    /// The temp directory the gateway lives in.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The keys directory the gateway verifies tokens against.
    pub fn keys_dir(&self) -> &Path {
        &self.config.auth.keys_dir
    }

    /// The configuration the gateway was bound with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The gateway's own key store (for reload/rotation tests).
    pub fn key_store(&self) -> Arc<KeyStore> {
        Arc::clone(&self.keys)
    }

    /// The raw bytes of the dev HMAC secret.
    pub fn secret(&self) -> Vec<u8> {
        let text = std::fs::read_to_string(&self.secret_path).expect("read dev secret");
        keys::decode_secret(&text).expect("dev secret decodes")
    }

    /// A token for `sub` granting `topics`, valid for `ttl`, minted by the
    /// library with the newest HMAC secret of the gateway's key set.
    pub fn token(&self, sub: &str, topics: &[&str], ttl: Duration) -> String {
        let keys = self.keys.snapshot();
        let key = keys.newest_hmac().expect("an HMAC secret is loaded");
        token::mint(key, &self.claims(sub, topics, ttl)).expect("mint")
    }

    /// Like [`TestGateway::token`], signed with the key `kid` of the
    /// gateway's current key set.
    pub fn token_signed_by(&self, kid: &str, sub: &str, topics: &[&str], ttl: Duration) -> String {
        let keys = self.keys.snapshot();
        let key = keys
            .get(kid)
            .unwrap_or_else(|| panic!("no key {kid:?} in the key set"));
        token::mint(key, &self.claims(sub, topics, ttl)).expect("mint")
    }

    /// Mint claims matching the gateway's policy (topics claim name,
    /// issuer, audience).
    pub fn claims(&self, sub: &str, topics: &[&str], ttl: Duration) -> MintClaims {
        MintClaims {
            subject: sub.to_owned(),
            topics: topics.iter().map(|t| (*t).to_owned()).collect(),
            ttl,
            topics_claim: self.config.auth.topics_claim.clone(),
            issuer: self.config.auth.issuer.clone(),
            audience: self.config.auth.audience.clone().unwrap_or_default(),
        }
    }

    /// Signs arbitrary `claims` with HS256 and the dev secret (no `kid`).
    pub fn sign(&self, claims: &serde_json::Value) -> String {
        sign_hs256(&self.secret(), claims)
    }

    /// rumqttc v4 options for this gateway (see [`v4_options_for`]).
    pub fn v4_options(&self, client_id: &str, token: &str) -> rumqttc::MqttOptions {
        v4_options_for(self.port(), &self.ca_pem, client_id, token)
    }

    /// rumqttc v5 options for this gateway (see [`v5_options_for`]).
    pub fn v5_options(&self, client_id: &str, token: &str) -> rumqttc::v5::MqttOptions {
        v5_options_for(self.port(), &self.ca_pem, client_id, token)
    }

    /// A v4 client with default options, connected (CONNACK success
    /// asserted).
    pub async fn v4_connected(&self, client_id: &str, token: &str) -> V4Client {
        let mut client = V4Client::start(self.v4_options(client_id, token));
        let ack = client.connack().await;
        assert_eq!(
            ack.code,
            rumqttc::ConnectReturnCode::Success,
            "{client_id}: CONNACK"
        );
        client
    }

    /// A v5 client with default options, connected (CONNACK success
    /// asserted).
    pub async fn v5_connected(&self, client_id: &str, token: &str) -> V5Client {
        let mut client = V5Client::start(self.v5_options(client_id, token));
        let ack = client.connack().await;
        assert_eq!(
            ack.code,
            rumqttc::v5::mqttbytes::v5::ConnectReturnCode::Success,
            "{client_id}: CONNACK"
        );
        client
    }

    /// A raw TLS connection to this gateway.
    pub async fn raw(&self) -> RawClient {
        RawClient::connect(self.addr, &self.ca_pem).await
    }

    /// Stops the gateway and waits for `run` to return.
    pub async fn stop(mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(15), task)
                .await
                .expect("gateway stops within the shutdown grace")
                .expect("gateway task did not panic");
        }
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}

/// Signs `claims` with HS256 and `secret`, without a `kid`.
pub fn sign_hs256(secret: &[u8], claims: &serde_json::Value) -> String {
    let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    jsonwebtoken::encode(
        &header,
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
    .expect("sign claims")
}

// ---------------------------------------------------------------------------
// rumqttc clients
// ---------------------------------------------------------------------------

/// Spawns a task polling an event loop and forwarding every event, stopping
/// after the first error (rumqttc would otherwise reconnect).
macro_rules! spawn_event_loop {
    ($eventloop:expr, $tx:expr) => {{
        let mut eventloop = $eventloop;
        let tx = $tx;
        tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(event) => {
                        if tx.send(Ok(event)).is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                }
            }
        })
    }};
}

/// A rumqttc MQTT 3.1.1 client whose event loop runs in its own task.
pub struct V4Client {
    pub client: rumqttc::AsyncClient,
    events: mpsc::UnboundedReceiver<Result<rumqttc::Event, rumqttc::ConnectionError>>,
    task: JoinHandle<()>,
    /// Publishes seen while waiting for something else, in arrival order.
    pending: Vec<rumqttc::Publish>,
    ended: Option<String>,
}

impl V4Client {
    /// Starts connecting with `opts`; nothing is awaited yet.
    pub fn start(opts: rumqttc::MqttOptions) -> V4Client {
        let (client, eventloop) = rumqttc::AsyncClient::new(opts, 64);
        let (tx, events) = mpsc::unbounded_channel();
        let task = spawn_event_loop!(eventloop, tx);
        V4Client {
            client,
            events,
            task,
            pending: Vec::new(),
            ended: None,
        }
    }

    /// The next incoming packet, `Err` with the reason once the connection
    /// ended; panics after [`WAIT`].
    async fn next_incoming(&mut self, what: &str) -> Result<rumqttc::Packet, String> {
        self.next_incoming_within(WAIT)
            .await
            .unwrap_or_else(|| panic!("timed out waiting for {what}"))
    }

    /// Like `next_incoming`, but `None` when `window` passes first.
    async fn next_incoming_within(
        &mut self,
        window: Duration,
    ) -> Option<Result<rumqttc::Packet, String>> {
        if let Some(reason) = &self.ended {
            return Some(Err(reason.clone()));
        }
        let deadline = tokio::time::Instant::now() + window;
        loop {
            let event = match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Err(_) => return None,
                Ok(event) => event,
            };
            match event {
                Some(Ok(rumqttc::Event::Incoming(packet))) => return Some(Ok(packet)),
                Some(Ok(rumqttc::Event::Outgoing(_))) => {}
                Some(Err(e)) => {
                    let reason = format!("{e:?}");
                    self.ended = Some(reason.clone());
                    return Some(Err(reason));
                }
                None => {
                    let reason = "event loop stopped".to_owned();
                    self.ended = Some(reason.clone());
                    return Some(Err(reason));
                }
            }
        }
    }

    /// Waits for the CONNACK. A refusal (which rumqttc reports as an error)
    /// is returned as a CONNACK with that code.
    pub async fn connack(&mut self) -> rumqttc::ConnAck {
        if let Some(reason) = &self.ended {
            panic!("connection ended before CONNACK: {reason}");
        }
        loop {
            let event = tokio::time::timeout(WAIT, self.events.recv())
                .await
                .expect("timed out waiting for CONNACK");
            match event {
                Some(Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(ack)))) => return ack,
                Some(Ok(_)) => {}
                Some(Err(rumqttc::ConnectionError::ConnectionRefused(code))) => {
                    self.ended = Some(format!("refused: {code:?}"));
                    return rumqttc::ConnAck::new(code, false);
                }
                Some(Err(e)) => panic!("connection failed before CONNACK: {e:?}"),
                None => panic!("event loop stopped before CONNACK"),
            }
        }
    }

    /// Subscribes to one filter and returns the SUBACK codes.
    pub async fn subscribe(
        &mut self,
        filter: &str,
        qos: rumqttc::QoS,
    ) -> Vec<rumqttc::SubscribeReasonCode> {
        self.client
            .subscribe(filter, qos)
            .await
            .expect("queue SUBSCRIBE");
        self.suback().await
    }

    /// Subscribes to several filters in one SUBSCRIBE and returns the
    /// SUBACK codes.
    pub async fn subscribe_many(
        &mut self,
        filters: &[(&str, rumqttc::QoS)],
    ) -> Vec<rumqttc::SubscribeReasonCode> {
        let filters = filters
            .iter()
            .map(|(path, qos)| rumqttc::SubscribeFilter::new((*path).to_owned(), *qos));
        self.client
            .subscribe_many(filters)
            .await
            .expect("queue SUBSCRIBE");
        self.suback().await
    }

    /// Waits for the next SUBACK and returns its codes.
    pub async fn suback(&mut self) -> Vec<rumqttc::SubscribeReasonCode> {
        loop {
            match self.next_incoming("SUBACK").await {
                Ok(rumqttc::Packet::SubAck(ack)) => return ack.return_codes,
                Ok(rumqttc::Packet::Publish(p)) => self.pending.push(p),
                Ok(_) => {}
                Err(e) => panic!("connection ended while waiting for SUBACK: {e}"),
            }
        }
    }

    /// Unsubscribes from one filter and waits for the UNSUBACK.
    pub async fn unsubscribe(&mut self, filter: &str) {
        self.client
            .unsubscribe(filter)
            .await
            .expect("queue UNSUBSCRIBE");
        loop {
            match self.next_incoming("UNSUBACK").await {
                Ok(rumqttc::Packet::UnsubAck(_)) => return,
                Ok(rumqttc::Packet::Publish(p)) => self.pending.push(p),
                Ok(_) => {}
                Err(e) => panic!("connection ended while waiting for UNSUBACK: {e}"),
            }
        }
    }

    /// Publishes and, for QoS 1/2, waits for the PUBACK/PUBCOMP.
    pub async fn publish(&mut self, topic: &str, qos: rumqttc::QoS, retain: bool, payload: &[u8]) {
        self.client
            .publish(topic, qos, retain, payload.to_vec())
            .await
            .expect("queue PUBLISH");
        let done = |p: &rumqttc::Packet| match qos {
            rumqttc::QoS::AtMostOnce => true,
            rumqttc::QoS::AtLeastOnce => matches!(p, rumqttc::Packet::PubAck(_)),
            rumqttc::QoS::ExactlyOnce => matches!(p, rumqttc::Packet::PubComp(_)),
        };
        if qos == rumqttc::QoS::AtMostOnce {
            return;
        }
        loop {
            match self.next_incoming("publish acknowledgement").await {
                Ok(p) if done(&p) => return,
                Ok(rumqttc::Packet::Publish(p)) => self.pending.push(p),
                Ok(_) => {}
                Err(e) => panic!("connection ended while waiting for the publish ack: {e}"),
            }
        }
    }

    /// Waits for a PUBLISH on `topic`; publishes on other topics are kept
    /// for [`V4Client::take_other_publishes`].
    pub async fn expect_publish(&mut self, topic: &str) -> rumqttc::Publish {
        if let Some(i) = self.pending.iter().position(|p| p.topic == topic) {
            return self.pending.remove(i);
        }
        loop {
            match self.next_incoming(&format!("a PUBLISH on {topic}")).await {
                Ok(rumqttc::Packet::Publish(p)) if p.topic == topic => return p,
                Ok(rumqttc::Packet::Publish(p)) => self.pending.push(p),
                Ok(_) => {}
                Err(e) => panic!("connection ended while waiting for a PUBLISH on {topic}: {e}"),
            }
        }
    }

    /// Every PUBLISH that arrives within `window` (plus those already
    /// buffered). Panics if the connection has ended or ends within the
    /// window: a client no longer connected receives nothing, which must
    /// not read as "nothing was sent to it".
    pub async fn publishes_within(&mut self, window: Duration) -> Vec<rumqttc::Publish> {
        let mut seen = std::mem::take(&mut self.pending);
        let deadline = tokio::time::Instant::now() + window;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_incoming_within(left).await {
                None => return seen,
                Some(Ok(rumqttc::Packet::Publish(p))) => seen.push(p),
                Some(Ok(_)) => {}
                Some(Err(e)) => panic!(
                    "the connection ended while collecting publishes (after {} of them: {:?}): {e}",
                    seen.len(),
                    topics_v4(&seen)
                ),
            }
        }
    }

    /// Proves the connection is served now: a round trip, an UNSUBSCRIBE
    /// of [`LIVENESS_FILTER`] (never subscribed, so it changes nothing)
    /// answered by its UNSUBACK. Publishes arriving meanwhile are kept
    /// (for [`V4Client::take_other_publishes`] and the waits). Panics if
    /// the connection has ended, ends, or no answer comes within [`WAIT`].
    pub async fn assert_alive(&mut self) {
        if let Some(reason) = &self.ended {
            panic!("the connection has ended (liveness check): {reason}");
        }
        if let Err(e) = self.client.unsubscribe(LIVENESS_FILTER).await {
            panic!("the connection has ended (liveness check): its event loop is gone: {e:?}");
        }
        loop {
            match self
                .next_incoming("the UNSUBACK of the liveness check")
                .await
            {
                Ok(rumqttc::Packet::UnsubAck(_)) => return,
                Ok(rumqttc::Packet::Publish(p)) => self.pending.push(p),
                Ok(_) => {}
                Err(e) => panic!("the connection ended during the liveness check: {e}"),
            }
        }
    }

    /// The absence check: every PUBLISH within `window`, then a round trip
    /// on the connection ([`V4Client::assert_alive`]) and whatever arrived
    /// before its answer. Panics if the connection ends, so an empty result
    /// means a connected client was sent nothing.
    pub async fn publishes_while_alive(&mut self, window: Duration) -> Vec<rumqttc::Publish> {
        let mut seen = self.publishes_within(window).await;
        self.assert_alive().await;
        seen.append(&mut self.pending);
        seen
    }

    /// A positive check of a known number: waits (up to [`WAIT`]) until
    /// `count` publishes arrived, then collects what else arrives within
    /// [`QUIET`] and a round trip, so that a duplicate or an extra shows.
    /// Returns them all for the caller to compare; panics if the
    /// connection ends.
    pub async fn publishes_expecting(&mut self, count: usize) -> Vec<rumqttc::Publish> {
        let mut seen = std::mem::take(&mut self.pending);
        let deadline = tokio::time::Instant::now() + WAIT;
        while seen.len() < count {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_incoming_within(left).await {
                None => break,
                Some(Ok(rumqttc::Packet::Publish(p))) => seen.push(p),
                Some(Ok(_)) => {}
                Some(Err(e)) => panic!(
                    "the connection ended after {} of {count} publishes ({:?}): {e}",
                    seen.len(),
                    topics_v4(&seen)
                ),
            }
        }
        seen.extend(self.publishes_while_alive(QUIET).await);
        seen
    }

    /// Asserts that no PUBLISH arrives within [`QUIET`] and that the
    /// connection is still served after it ([`V4Client::publishes_while_alive`]).
    pub async fn expect_no_publish(&mut self) {
        let seen = self.publishes_while_alive(QUIET).await;
        assert!(seen.is_empty(), "expected no PUBLISH, got {seen:?}");
    }

    /// Publishes buffered while waiting for something else.
    pub fn take_other_publishes(&mut self) -> Vec<rumqttc::Publish> {
        std::mem::take(&mut self.pending)
    }

    /// Waits for the next incoming packet of any kind (publishes included).
    pub async fn next_packet(&mut self) -> Result<rumqttc::Packet, String> {
        if !self.pending.is_empty() {
            return Ok(rumqttc::Packet::Publish(self.pending.remove(0)));
        }
        self.next_incoming("a packet").await
    }

    /// Waits until the connection ends (the server closed it); returns the
    /// error rumqttc reported. Panics after [`WAIT`].
    pub async fn closed(&mut self) -> String {
        loop {
            match self.next_incoming("the connection to close").await {
                Ok(rumqttc::Packet::Publish(p)) => self.pending.push(p),
                Ok(_) => {}
                Err(e) => return e,
            }
        }
    }

    /// True while the event loop has not reported an error. Without
    /// traffic that proves little (a connection nobody serves reports no
    /// error either): [`V4Client::assert_alive`] makes a round trip.
    pub async fn is_open(&mut self) -> bool {
        // Drain whatever is queued without waiting.
        while let Ok(event) = self.events.try_recv() {
            match event {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => self.pending.push(p),
                Ok(_) => {}
                Err(e) => self.ended = Some(format!("{e:?}")),
            }
        }
        self.ended.is_none() && !self.task.is_finished()
    }

    /// Sends DISCONNECT and waits for the event loop to finish.
    pub async fn disconnect(mut self) {
        if self.ended.is_none() {
            let _ = self.client.disconnect().await;
            let _ = tokio::time::timeout(WAIT, &mut self.task).await;
        }
        self.task.abort();
    }

    /// Drops the TCP connection without DISCONNECT (aborts the event loop,
    /// which owns the socket).
    pub async fn kill(mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }
}

impl Drop for V4Client {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The topics of `publishes`, for failure messages.
fn topics_v4(publishes: &[rumqttc::Publish]) -> Vec<&str> {
    publishes.iter().map(|p| p.topic.as_str()).collect()
}

/// The topics of `publishes`, for failure messages.
fn topics_v5(publishes: &[rumqttc::v5::mqttbytes::v5::Publish]) -> Vec<String> {
    publishes
        .iter()
        .map(|p| String::from_utf8_lossy(&p.topic).into_owned())
        .collect()
}

/// A rumqttc MQTT 5 client whose event loop runs in its own task.
pub struct V5Client {
    pub client: rumqttc::v5::AsyncClient,
    events: mpsc::UnboundedReceiver<Result<rumqttc::v5::Event, rumqttc::v5::ConnectionError>>,
    task: JoinHandle<()>,
    pending: Vec<rumqttc::v5::mqttbytes::v5::Publish>,
    /// The reason of a DISCONNECT the server sent, once one arrived.
    server_disconnect: Option<rumqttc::v5::mqttbytes::v5::DisconnectReasonCode>,
    ended: Option<V5End>,
}

/// How an MQTT 5 connection ended.
#[derive(Debug, Clone)]
pub struct V5End {
    /// The reason in the server's DISCONNECT, if one arrived.
    pub disconnect: Option<rumqttc::v5::mqttbytes::v5::DisconnectReasonCode>,
    /// What rumqttc reported.
    pub error: String,
}

impl V5Client {
    /// Starts connecting with `opts`; nothing is awaited yet.
    pub fn start(opts: rumqttc::v5::MqttOptions) -> V5Client {
        let (client, eventloop) = rumqttc::v5::AsyncClient::new(opts, 64);
        let (tx, events) = mpsc::unbounded_channel();
        let task = spawn_event_loop!(eventloop, tx);
        V5Client {
            client,
            events,
            task,
            pending: Vec::new(),
            server_disconnect: None,
            ended: None,
        }
    }

    fn end_from(&mut self, error: Option<rumqttc::v5::ConnectionError>) -> V5End {
        use rumqttc::v5::{ConnectionError, StateError};
        let from_error = match &error {
            Some(ConnectionError::MqttState(StateError::ServerDisconnect {
                reason_code, ..
            })) => Some(*reason_code),
            _ => None,
        };
        let end = V5End {
            disconnect: self.server_disconnect.or(from_error),
            error: error.map_or_else(|| "event loop stopped".to_owned(), |e| format!("{e:?}")),
        };
        self.ended = Some(end.clone());
        end
    }

    async fn next_incoming(
        &mut self,
        what: &str,
    ) -> Result<rumqttc::v5::mqttbytes::v5::Packet, V5End> {
        self.next_incoming_within(WAIT)
            .await
            .unwrap_or_else(|| panic!("timed out waiting for {what}"))
    }

    async fn next_incoming_within(
        &mut self,
        window: Duration,
    ) -> Option<Result<rumqttc::v5::mqttbytes::v5::Packet, V5End>> {
        use rumqttc::v5::mqttbytes::v5::Packet;
        if let Some(end) = &self.ended {
            return Some(Err(end.clone()));
        }
        let deadline = tokio::time::Instant::now() + window;
        loop {
            let event = match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Err(_) => return None,
                Ok(event) => event,
            };
            match event {
                Some(Ok(rumqttc::v5::Event::Incoming(Packet::Disconnect(d)))) => {
                    self.server_disconnect = Some(d.reason_code);
                }
                Some(Ok(rumqttc::v5::Event::Incoming(packet))) => return Some(Ok(packet)),
                Some(Ok(rumqttc::v5::Event::Outgoing(_))) => {}
                Some(Err(e)) => return Some(Err(self.end_from(Some(e)))),
                None => return Some(Err(self.end_from(None))),
            }
        }
    }

    /// Waits for the CONNACK. A refusal (which rumqttc reports as an error)
    /// is returned as a CONNACK with that code.
    pub async fn connack(&mut self) -> rumqttc::v5::mqttbytes::v5::ConnAck {
        use rumqttc::v5::mqttbytes::v5::{ConnAck, Packet};
        if let Some(end) = &self.ended {
            panic!("connection ended before CONNACK: {end:?}");
        }
        loop {
            let event = tokio::time::timeout(WAIT, self.events.recv())
                .await
                .expect("timed out waiting for CONNACK");
            match event {
                Some(Ok(rumqttc::v5::Event::Incoming(Packet::ConnAck(ack)))) => return ack,
                Some(Ok(_)) => {}
                Some(Err(rumqttc::v5::ConnectionError::ConnectionRefused(code))) => {
                    self.ended = Some(V5End {
                        disconnect: None,
                        error: format!("refused: {code:?}"),
                    });
                    return ConnAck {
                        session_present: false,
                        code,
                        properties: None,
                    };
                }
                Some(Err(e)) => panic!("connection failed before CONNACK: {e:?}"),
                None => panic!("event loop stopped before CONNACK"),
            }
        }
    }

    /// Subscribes to one filter and returns the SUBACK codes.
    pub async fn subscribe(
        &mut self,
        filter: &str,
        qos: rumqttc::v5::mqttbytes::QoS,
    ) -> Vec<rumqttc::v5::mqttbytes::v5::SubscribeReasonCode> {
        self.client
            .subscribe(filter, qos)
            .await
            .expect("queue SUBSCRIBE");
        self.suback().await
    }

    /// Subscribes to several filters in one SUBSCRIBE and returns the
    /// SUBACK codes.
    pub async fn subscribe_many(
        &mut self,
        filters: &[(&str, rumqttc::v5::mqttbytes::QoS)],
    ) -> Vec<rumqttc::v5::mqttbytes::v5::SubscribeReasonCode> {
        let filters = filters
            .iter()
            .map(|(path, qos)| rumqttc::v5::mqttbytes::v5::Filter::new((*path).to_owned(), *qos));
        self.client
            .subscribe_many(filters)
            .await
            .expect("queue SUBSCRIBE");
        self.suback().await
    }

    /// Subscribes with filters built by hand (subscription options such
    /// as no local or retain as published) and returns the SUBACK codes.
    pub async fn subscribe_filters(
        &mut self,
        filters: Vec<rumqttc::v5::mqttbytes::v5::Filter>,
    ) -> Vec<rumqttc::v5::mqttbytes::v5::SubscribeReasonCode> {
        self.client
            .subscribe_many(filters)
            .await
            .expect("queue SUBSCRIBE");
        self.suback().await
    }

    /// Unsubscribes from one filter and returns the UNSUBACK reasons.
    pub async fn unsubscribe(
        &mut self,
        filter: &str,
    ) -> Vec<rumqttc::v5::mqttbytes::v5::UnsubAckReason> {
        use rumqttc::v5::mqttbytes::v5::Packet;
        self.client
            .unsubscribe(filter)
            .await
            .expect("queue UNSUBSCRIBE");
        loop {
            match self.next_incoming("UNSUBACK").await {
                Ok(Packet::UnsubAck(ack)) => return ack.reasons,
                Ok(Packet::Publish(p)) => self.pending.push(p),
                Ok(_) => {}
                Err(e) => panic!("connection ended while waiting for UNSUBACK: {e:?}"),
            }
        }
    }

    /// Waits for the next SUBACK and returns its codes.
    pub async fn suback(&mut self) -> Vec<rumqttc::v5::mqttbytes::v5::SubscribeReasonCode> {
        use rumqttc::v5::mqttbytes::v5::Packet;
        loop {
            match self.next_incoming("SUBACK").await {
                Ok(Packet::SubAck(ack)) => return ack.return_codes,
                Ok(Packet::Publish(p)) => self.pending.push(p),
                Ok(_) => {}
                Err(e) => panic!("connection ended while waiting for SUBACK: {e:?}"),
            }
        }
    }

    /// Publishes at QoS 0 (nothing awaited) or QoS 1 (the PUBACK is
    /// returned).
    pub async fn publish(
        &mut self,
        topic: &str,
        qos: rumqttc::v5::mqttbytes::QoS,
        retain: bool,
        payload: &[u8],
    ) -> Option<rumqttc::v5::mqttbytes::v5::Packet> {
        self.publish_with_properties(topic, qos, retain, payload, None)
            .await
    }

    /// [`V5Client::publish`] with PUBLISH properties (user properties,
    /// message expiry, ...).
    pub async fn publish_with_properties(
        &mut self,
        topic: &str,
        qos: rumqttc::v5::mqttbytes::QoS,
        retain: bool,
        payload: &[u8],
        properties: Option<rumqttc::v5::mqttbytes::v5::PublishProperties>,
    ) -> Option<rumqttc::v5::mqttbytes::v5::Packet> {
        use rumqttc::v5::mqttbytes::{QoS, v5::Packet};
        match properties {
            Some(properties) => self
                .client
                .publish_with_properties(topic, qos, retain, payload.to_vec(), properties)
                .await
                .expect("queue PUBLISH"),
            None => self
                .client
                .publish(topic, qos, retain, payload.to_vec())
                .await
                .expect("queue PUBLISH"),
        }
        if qos == QoS::AtMostOnce {
            return None;
        }
        loop {
            match self.next_incoming("publish acknowledgement").await {
                Ok(p @ Packet::PubAck(_)) if qos == QoS::AtLeastOnce => return Some(p),
                Ok(p @ Packet::PubComp(_)) if qos == QoS::ExactlyOnce => return Some(p),
                Ok(p @ Packet::PubRec(_)) if qos == QoS::ExactlyOnce => {
                    // A failure PUBREC ends the exchange.
                    if let Packet::PubRec(rec) = &p {
                        if rec.reason != rumqttc::v5::mqttbytes::v5::PubRecReason::Success {
                            return Some(p);
                        }
                    }
                }
                Ok(Packet::Publish(p)) => self.pending.push(p),
                Ok(_) => {}
                Err(e) => panic!("connection ended while waiting for the publish ack: {e:?}"),
            }
        }
    }

    /// Waits for a PUBLISH on `topic`; publishes on other topics are kept.
    pub async fn expect_publish(&mut self, topic: &str) -> rumqttc::v5::mqttbytes::v5::Publish {
        use rumqttc::v5::mqttbytes::v5::Packet;
        if let Some(i) = self
            .pending
            .iter()
            .position(|p| p.topic == topic.as_bytes())
        {
            return self.pending.remove(i);
        }
        loop {
            match self.next_incoming(&format!("a PUBLISH on {topic}")).await {
                Ok(Packet::Publish(p)) if p.topic == topic.as_bytes() => return p,
                Ok(Packet::Publish(p)) => self.pending.push(p),
                Ok(_) => {}
                Err(e) => panic!("connection ended while waiting for a PUBLISH on {topic}: {e:?}"),
            }
        }
    }

    /// Every PUBLISH that arrives within `window` (plus those already
    /// buffered). Panics if the connection has ended or ends within the
    /// window (see [`V4Client::publishes_within`]).
    pub async fn publishes_within(
        &mut self,
        window: Duration,
    ) -> Vec<rumqttc::v5::mqttbytes::v5::Publish> {
        use rumqttc::v5::mqttbytes::v5::Packet;
        let mut seen = std::mem::take(&mut self.pending);
        let deadline = tokio::time::Instant::now() + window;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_incoming_within(left).await {
                None => return seen,
                Some(Ok(Packet::Publish(p))) => seen.push(p),
                Some(Ok(_)) => {}
                Some(Err(end)) => panic!(
                    "the connection ended while collecting publishes (after {} of them: {:?}): {end:?}",
                    seen.len(),
                    topics_v5(&seen)
                ),
            }
        }
    }

    /// Proves the connection is served now (see [`V4Client::assert_alive`]):
    /// an UNSUBSCRIBE of [`LIVENESS_FILTER`] answered by its UNSUBACK.
    pub async fn assert_alive(&mut self) {
        use rumqttc::v5::mqttbytes::v5::Packet;
        if let Some(end) = &self.ended {
            panic!("the connection has ended (liveness check): {end:?}");
        }
        if let Err(e) = self.client.unsubscribe(LIVENESS_FILTER).await {
            panic!("the connection has ended (liveness check): its event loop is gone: {e:?}");
        }
        loop {
            match self
                .next_incoming("the UNSUBACK of the liveness check")
                .await
            {
                Ok(Packet::UnsubAck(_)) => return,
                Ok(Packet::Publish(p)) => self.pending.push(p),
                Ok(_) => {}
                Err(end) => panic!("the connection ended during the liveness check: {end:?}"),
            }
        }
    }

    /// The absence check (see [`V4Client::publishes_while_alive`]).
    pub async fn publishes_while_alive(
        &mut self,
        window: Duration,
    ) -> Vec<rumqttc::v5::mqttbytes::v5::Publish> {
        let mut seen = self.publishes_within(window).await;
        self.assert_alive().await;
        seen.append(&mut self.pending);
        seen
    }

    /// A positive check of a known number (see
    /// [`V4Client::publishes_expecting`]).
    pub async fn publishes_expecting(
        &mut self,
        count: usize,
    ) -> Vec<rumqttc::v5::mqttbytes::v5::Publish> {
        use rumqttc::v5::mqttbytes::v5::Packet;
        let mut seen = std::mem::take(&mut self.pending);
        let deadline = tokio::time::Instant::now() + WAIT;
        while seen.len() < count {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_incoming_within(left).await {
                None => break,
                Some(Ok(Packet::Publish(p))) => seen.push(p),
                Some(Ok(_)) => {}
                Some(Err(end)) => panic!(
                    "the connection ended after {} of {count} publishes ({:?}): {end:?}",
                    seen.len(),
                    topics_v5(&seen)
                ),
            }
        }
        seen.extend(self.publishes_while_alive(QUIET).await);
        seen
    }

    /// Asserts that no PUBLISH arrives within [`QUIET`] and that the
    /// connection is still served after it.
    pub async fn expect_no_publish(&mut self) {
        let seen = self.publishes_while_alive(QUIET).await;
        assert!(seen.is_empty(), "expected no PUBLISH, got {seen:?}");
    }

    /// Waits for the next incoming packet of any kind (publishes included);
    /// `Err` once the connection has ended. Panics after [`WAIT`].
    pub async fn next_packet(&mut self) -> Result<rumqttc::v5::mqttbytes::v5::Packet, V5End> {
        if !self.pending.is_empty() {
            return Ok(rumqttc::v5::mqttbytes::v5::Packet::Publish(
                self.pending.remove(0),
            ));
        }
        self.next_incoming("a packet").await
    }

    /// Waits until the connection ends; returns the server's DISCONNECT
    /// reason (if any) and rumqttc's error. Panics after [`WAIT`].
    pub async fn closed(&mut self) -> V5End {
        use rumqttc::v5::mqttbytes::v5::Packet;
        loop {
            match self.next_incoming("the connection to close").await {
                Ok(Packet::Publish(p)) => self.pending.push(p),
                Ok(_) => {}
                Err(end) => return end,
            }
        }
    }

    /// True while the event loop has not reported an error (see
    /// [`V4Client::is_open`]; [`V5Client::assert_alive`] makes a round
    /// trip).
    pub async fn is_open(&mut self) -> bool {
        while let Ok(event) = self.events.try_recv() {
            match event {
                Ok(rumqttc::v5::Event::Incoming(rumqttc::v5::mqttbytes::v5::Packet::Publish(
                    p,
                ))) => self.pending.push(p),
                Ok(_) => {}
                Err(e) => {
                    self.end_from(Some(e));
                }
            }
        }
        self.ended.is_none() && !self.task.is_finished()
    }

    /// Sends DISCONNECT and waits for the event loop to finish.
    pub async fn disconnect(mut self) {
        if self.ended.is_none() {
            let _ = self.client.disconnect().await;
            let _ = tokio::time::timeout(WAIT, &mut self.task).await;
        }
        self.task.abort();
    }

    /// Drops the TCP connection without DISCONNECT.
    pub async fn kill(mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }
}

impl Drop for V5Client {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ---------------------------------------------------------------------------
// Raw sockets
// ---------------------------------------------------------------------------

/// A bare TLS connection for hand-made bytes.
pub struct RawClient {
    stream: TlsStream<TcpStream>,
    buf: Vec<u8>,
}

/// What a raw read saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Read {
    /// One complete MQTT frame (fixed header included).
    Packet(Vec<u8>),
    /// The server closed the connection (or reset it); any bytes of an
    /// incomplete frame are included.
    Closed(Vec<u8>),
}

impl RawClient {
    /// Connects over TCP and completes the TLS handshake (server name
    /// `localhost`, trusting `ca_pem`).
    pub async fn connect(addr: SocketAddr, ca_pem: &[u8]) -> RawClient {
        let tcp = tokio::time::timeout(WAIT, TcpStream::connect(addr))
            .await
            .expect("TCP connect timed out")
            .expect("TCP connect");
        RawClient::handshake(tcp, ca_pem).await
    }

    /// Like [`RawClient::connect`], from the local address `from` (any of
    /// 127.0.0.0/8 on loopback): a client on another host, as far as the
    /// server can tell.
    pub async fn connect_from(
        from: std::net::IpAddr,
        addr: SocketAddr,
        ca_pem: &[u8],
    ) -> RawClient {
        let tcp = tcp_from(from, addr).await.expect("TCP connect");
        RawClient::handshake(tcp, ca_pem).await
    }

    /// Like [`RawClient::connect`], with the socket's receive buffer set to
    /// `bytes` before connecting (Linux doubles it). A client that stops
    /// reading then holds only a few KiB in flight, so the server soon
    /// meets a subscriber that takes nothing more.
    pub async fn connect_with_receive_buffer(
        addr: SocketAddr,
        ca_pem: &[u8],
        bytes: u32,
    ) -> RawClient {
        let socket = match addr {
            SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
            SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
        }
        .expect("TCP socket");
        socket
            .set_recv_buffer_size(bytes)
            .expect("set the receive buffer size");
        let tcp = tokio::time::timeout(WAIT, socket.connect(addr))
            .await
            .expect("TCP connect timed out")
            .expect("TCP connect");
        RawClient::handshake(tcp, ca_pem).await
    }

    /// Like [`RawClient::connect`], presenting `client_cert` (certificate
    /// and key, PEM).
    pub async fn connect_with_cert(
        addr: SocketAddr,
        ca_pem: &[u8],
        client_cert: (&[u8], &[u8]),
    ) -> RawClient {
        let tcp = tokio::time::timeout(WAIT, TcpStream::connect(addr))
            .await
            .expect("TCP connect timed out")
            .expect("TCP connect");
        RawClient::handshake_with(tcp, client_tls_config_with_cert(ca_pem, Some(client_cert))).await
    }

    async fn handshake(tcp: TcpStream, ca_pem: &[u8]) -> RawClient {
        RawClient::handshake_with(tcp, client_tls_config(ca_pem)).await
    }

    async fn handshake_with(tcp: TcpStream, config: Arc<rustls::ClientConfig>) -> RawClient {
        let connector = TlsConnector::from(config);
        let name = rustls::pki_types::ServerName::try_from(SERVER_NAME).expect("server name");
        let stream = tokio::time::timeout(WAIT, connector.connect(name, tcp))
            .await
            .expect("TLS handshake timed out")
            .expect("TLS handshake");
        RawClient {
            stream,
            buf: Vec::new(),
        }
    }

    /// The certificate (DER) the server presented in this connection's
    /// handshake. Every [`RawClient::connect`] builds a new client
    /// configuration, so this is a full handshake, never a resumed one.
    pub fn peer_certificate(&self) -> Vec<u8> {
        let (_, connection) = self.stream.get_ref();
        connection
            .peer_certificates()
            .and_then(|chain| chain.first())
            .expect("the server presented a certificate")
            .to_vec()
    }

    /// Writes `bytes` and flushes. Errors (the server may already have
    /// closed) are returned, not raised.
    pub async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await
    }

    /// Like [`RawClient::send`], panicking on error.
    pub async fn send_ok(&mut self, bytes: &[u8]) {
        self.send(bytes).await.expect("raw send");
    }

    /// Reads one MQTT frame or the end of the connection; `None` when
    /// `window` passes first.
    pub async fn read_within(&mut self, window: Duration) -> Option<Read> {
        let deadline = tokio::time::Instant::now() + window;
        loop {
            if let Some(size) = mqtt::frame_len(&self.buf) {
                if self.buf.len() >= size {
                    let frame: Vec<u8> = self.buf.drain(..size).collect();
                    return Some(Read::Packet(frame));
                }
            }
            let mut chunk = [0u8; 4096];
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Err(_) => return None,
                Ok(Ok(0)) | Ok(Err(_)) => return Some(Read::Closed(std::mem::take(&mut self.buf))),
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Reads one MQTT frame; panics if the connection closes or after
    /// [`WAIT`].
    pub async fn read_packet(&mut self) -> Vec<u8> {
        match self.read_within(WAIT).await {
            Some(Read::Packet(p)) => p,
            Some(Read::Closed(rest)) => {
                panic!("connection closed while reading a packet ({rest:02x?})")
            }
            None => panic!("timed out reading a packet"),
        }
    }

    /// Reads until the server closes the connection; returns the frames
    /// received before the close. Bytes that do not make up a whole frame
    /// when the connection closes (a malformed packet) are returned as a
    /// last, incomplete "frame", so callers comparing frames see them.
    /// Panics after [`WAIT`].
    pub async fn expect_closed(&mut self) -> Vec<Vec<u8>> {
        let mut frames = Vec::new();
        loop {
            match self.read_within(WAIT).await {
                Some(Read::Packet(p)) => frames.push(p),
                Some(Read::Closed(rest)) => {
                    if !rest.is_empty() {
                        frames.push(rest);
                    }
                    return frames;
                }
                None => panic!("connection still open after {WAIT:?}; received {frames:02x?}"),
            }
        }
    }
}

/// Updates `dir` the way the kubelet's atomic writer updates a mounted
/// Kubernetes secret: the files go into a new timestamped directory
/// `..{stamp}`, a link `..data_tmp` to it is renamed over `..data`, each
/// file is a link through `..data` (made by the first update), and the
/// previous timestamped directory is removed.
pub fn kubelet_update(dir: &Path, stamp: &str, secrets: &[(&str, &[u8])]) {
    use base64::Engine as _;
    use std::os::unix::fs::symlink;
    let data = dir.join("..data");
    let previous = std::fs::read_link(&data).ok();
    let timestamped = format!("..{stamp}");
    std::fs::create_dir(dir.join(&timestamped)).expect("create the timestamped dir");
    for (name, secret) in secrets {
        let text = base64::engine::general_purpose::STANDARD.encode(secret);
        std::fs::write(dir.join(&timestamped).join(name), text).expect("write a secret");
    }
    symlink(&timestamped, dir.join("..data_tmp")).expect("link ..data_tmp");
    std::fs::rename(dir.join("..data_tmp"), &data).expect("rename ..data_tmp over ..data");
    for (name, _) in secrets {
        let link = dir.join(name);
        if std::fs::symlink_metadata(&link).is_err() {
            symlink(Path::new("..data").join(name), &link).expect("link a key file");
        }
    }
    if let Some(previous) = previous {
        std::fs::remove_dir_all(dir.join(previous)).expect("remove the old timestamped dir");
    }
}

/// A TCP connection to `addr` from the local address `from`.
pub async fn tcp_from(from: std::net::IpAddr, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
    }?;
    socket.bind(SocketAddr::new(from, 0))?;
    tokio::time::timeout(WAIT, socket.connect(addr))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?
}

/// Hand-encoded MQTT packets for raw sockets. `level` is the protocol
/// level: 3 (MQTT 3.1, `MQIsdp`), 4 (3.1.1) or 5.
pub mod mqtt {
    /// The CONNACK for a successful 3.1/3.1.1 CONNECT without a session.
    pub const CONNACK_OK_V4: [u8; 4] = [0x20, 0x02, 0x00, 0x00];
    pub const PINGREQ: [u8; 2] = [0xC0, 0x00];
    pub const PINGRESP: [u8; 2] = [0xD0, 0x00];
    pub const DISCONNECT: [u8; 2] = [0xE0, 0x00];

    /// The total length of the frame at the front of `buf`, once its fixed
    /// header is complete.
    pub fn frame_len(buf: &[u8]) -> Option<usize> {
        let mut value = 0usize;
        for (i, byte) in buf.iter().skip(1).take(4).enumerate() {
            value |= usize::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return Some(1 + i + 1 + value);
            }
        }
        None
    }

    /// A variable byte integer (remaining length, property lengths).
    pub fn remaining_length(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let mut byte = (n % 128) as u8;
            n /= 128;
            if n > 0 {
                byte |= 0x80;
            }
            out.push(byte);
            if n == 0 {
                break;
            }
        }
    }

    /// A length-prefixed string or binary field.
    pub fn string(s: &[u8], out: &mut Vec<u8>) {
        out.extend_from_slice(&u16::try_from(s.len()).expect("short string").to_be_bytes());
        out.extend_from_slice(s);
    }

    /// A packet: its first byte, the remaining length, `body`.
    pub fn frame(first: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![first];
        remaining_length(body.len(), &mut out);
        out.extend_from_slice(body);
        out
    }

    /// A CONNECT, built up and then [`Connect::encode`]d.
    #[derive(Debug, Clone)]
    pub struct Connect {
        level: u8,
        client_id: String,
        username: Option<String>,
        password: Option<String>,
        keep_alive: u16,
        clean: bool,
        will: Option<(String, Vec<u8>)>,
        session_expiry: Option<u32>,
    }

    impl Connect {
        /// Clean session, keep-alive 30 s, no credentials, no will.
        pub fn new(level: u8, client_id: &str) -> Connect {
            Connect {
                level,
                client_id: client_id.to_owned(),
                username: None,
                password: None,
                keep_alive: 30,
                clean: true,
                will: None,
                session_expiry: None,
            }
        }

        pub fn username(mut self, username: &str) -> Connect {
            self.username = Some(username.to_owned());
            self
        }

        pub fn password(mut self, password: &str) -> Connect {
            self.password = Some(password.to_owned());
            self
        }

        pub fn keep_alive(mut self, secs: u16) -> Connect {
            self.keep_alive = secs;
            self
        }

        pub fn clean(mut self, clean: bool) -> Connect {
            self.clean = clean;
            self
        }

        /// MQTT 5 only: the Session Expiry Interval property (seconds); a
        /// session outlives the connection only with one above 0.
        pub fn session_expiry(mut self, secs: u32) -> Connect {
            self.session_expiry = Some(secs);
            self
        }

        /// A QoS 0, non-retained will.
        pub fn will(mut self, topic: &str, payload: &[u8]) -> Connect {
            self.will = Some((topic.to_owned(), payload.to_vec()));
            self
        }

        pub fn encode(&self) -> Vec<u8> {
            let v5 = self.level == 5;
            let mut body = Vec::new();
            string(if self.level == 3 { b"MQIsdp" } else { b"MQTT" }, &mut body);
            body.push(self.level);
            let mut flags = 0;
            if self.clean {
                flags |= 0x02;
            }
            if self.will.is_some() {
                flags |= 0x04;
            }
            if self.password.is_some() {
                flags |= 0x40;
            }
            if self.username.is_some() {
                flags |= 0x80;
            }
            body.push(flags);
            body.extend_from_slice(&self.keep_alive.to_be_bytes());
            if v5 {
                match self.session_expiry {
                    Some(secs) => {
                        body.push(5);
                        body.push(0x11);
                        body.extend_from_slice(&secs.to_be_bytes());
                    }
                    None => body.push(0), // no properties
                }
            }
            string(self.client_id.as_bytes(), &mut body);
            if let Some((topic, payload)) = &self.will {
                if v5 {
                    body.push(0); // no will properties
                }
                string(topic.as_bytes(), &mut body);
                string(payload, &mut body);
            }
            if let Some(u) = &self.username {
                string(u.as_bytes(), &mut body);
            }
            if let Some(p) = &self.password {
                string(p.as_bytes(), &mut body);
            }
            frame(0x10, &body)
        }
    }

    /// A SUBSCRIBE for one filter.
    pub fn subscribe(level: u8, pkid: u16, filter: &str, qos: u8) -> Vec<u8> {
        let mut body = pkid.to_be_bytes().to_vec();
        if level == 5 {
            body.push(0);
        }
        string(filter.as_bytes(), &mut body);
        body.push(qos);
        frame(0x82, &body)
    }

    /// A PUBLISH (no retain, no dup); `pkid` is used for QoS > 0.
    pub fn publish(level: u8, topic: &str, payload: &[u8], qos: u8, pkid: u16) -> Vec<u8> {
        let mut body = Vec::new();
        string(topic.as_bytes(), &mut body);
        if qos > 0 {
            body.extend_from_slice(&pkid.to_be_bytes());
        }
        if level == 5 {
            body.push(0);
        }
        body.extend_from_slice(payload);
        frame(0x30 | (qos << 1), &body)
    }

    /// An UNSUBSCRIBE for one filter.
    pub fn unsubscribe(level: u8, pkid: u16, filter: &str) -> Vec<u8> {
        let mut body = pkid.to_be_bytes().to_vec();
        if level == 5 {
            body.push(0);
        }
        string(filter.as_bytes(), &mut body);
        frame(0xA2, &body)
    }

    /// PUBACK (success, no properties: the same bytes at every level).
    pub fn puback(pkid: u16) -> Vec<u8> {
        frame(0x40, &pkid.to_be_bytes())
    }

    /// PUBREC (success, no properties).
    pub fn pubrec(pkid: u16) -> Vec<u8> {
        frame(0x50, &pkid.to_be_bytes())
    }

    /// PUBCOMP (success, no properties).
    pub fn pubcomp(pkid: u16) -> Vec<u8> {
        frame(0x70, &pkid.to_be_bytes())
    }

    /// A PUBLISH as it arrived.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Publish {
        pub topic: String,
        pub payload: Vec<u8>,
        pub qos: u8,
        pub retain: bool,
        pub dup: bool,
        /// 0 for QoS 0.
        pub pkid: u16,
    }

    /// The packet type of a frame (the high nibble of its first byte).
    pub fn packet_type(frame_bytes: &[u8]) -> Option<u8> {
        frame_bytes.first().map(|first| first >> 4)
    }

    /// Reads a variable byte integer at `*at`, advancing it.
    fn var_int(bytes: &[u8], at: &mut usize) -> Option<usize> {
        let mut value = 0usize;
        for i in 0..4 {
            let byte = *bytes.get(*at)?;
            *at += 1;
            value |= usize::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return Some(value);
            }
        }
        None
    }

    /// Where the variable header of a frame starts.
    fn body_start(frame_bytes: &[u8]) -> Option<usize> {
        let mut at = 1;
        var_int(frame_bytes, &mut at)?;
        Some(at)
    }

    fn u16_at(bytes: &[u8], at: usize) -> Option<u16> {
        Some(u16::from_be_bytes([*bytes.get(at)?, *bytes.get(at + 1)?]))
    }

    /// A PUBLISH frame of protocol `level` (MQTT 5 properties skipped);
    /// `None` if `frame_bytes` is not a well-formed PUBLISH.
    pub fn parse_publish(level: u8, frame_bytes: &[u8]) -> Option<Publish> {
        if packet_type(frame_bytes)? != 3 {
            return None;
        }
        let flags = frame_bytes[0] & 0x0f;
        let qos = (flags >> 1) & 0x03;
        let mut at = body_start(frame_bytes)?;
        let topic_len = usize::from(u16_at(frame_bytes, at)?);
        at += 2;
        let topic = String::from_utf8(frame_bytes.get(at..at + topic_len)?.to_vec()).ok()?;
        at += topic_len;
        let mut pkid = 0;
        if qos > 0 {
            pkid = u16_at(frame_bytes, at)?;
            at += 2;
        }
        if level == 5 {
            let properties = var_int(frame_bytes, &mut at)?;
            at += properties;
        }
        Some(Publish {
            topic,
            payload: frame_bytes.get(at..)?.to_vec(),
            qos,
            retain: flags & 0x01 != 0,
            dup: flags & 0x08 != 0,
            pkid,
        })
    }

    /// The topic and payload of a PUBLISH frame (3.1/3.1.1 layout).
    pub fn parse_publish_v4(frame_bytes: &[u8]) -> Option<(String, Vec<u8>)> {
        parse_publish(4, frame_bytes).map(|p| (p.topic, p.payload))
    }

    /// The packet identifier and return/reason codes of a SUBACK or
    /// UNSUBACK frame of protocol `level` (a 3.1.1 UNSUBACK has no codes);
    /// `None` for any other frame.
    pub fn parse_ack_codes(level: u8, frame_bytes: &[u8]) -> Option<(u16, Vec<u8>)> {
        if !matches!(packet_type(frame_bytes)?, 9 | 11) {
            return None;
        }
        let mut at = body_start(frame_bytes)?;
        let pkid = u16_at(frame_bytes, at)?;
        at += 2;
        if level == 5 {
            let properties = var_int(frame_bytes, &mut at)?;
            at += properties;
        }
        Some((pkid, frame_bytes.get(at..)?.to_vec()))
    }

    /// The session-present flag and the return/reason code of a CONNACK
    /// frame; `None` for any other frame.
    pub fn parse_connack(frame_bytes: &[u8]) -> Option<(bool, u8)> {
        if packet_type(frame_bytes)? != 2 {
            return None;
        }
        let at = body_start(frame_bytes)?;
        Some((frame_bytes.get(at)? & 0x01 != 0, *frame_bytes.get(at + 1)?))
    }
}

// ---------------------------------------------------------------------------
// Key rotation: files, key material, logs, the binary
// ---------------------------------------------------------------------------

/// Generated key pairs and their JWKs. The file is the library's own test
/// helper (`src/keys/testing.rs`), included rather than copied so that unit
/// and integration tests build JWKs the same way.
#[path = "../../src/keys/testing.rs"]
pub mod jwk;

/// Claims for device `sub`: an hour to live, its own topic tree
/// `devices/{sub}/#`.
pub fn device_claims(sub: &str) -> serde_json::Value {
    serde_json::json!({
        "sub": sub,
        "exp": now_unix() + 3600,
        "topics": [format!("devices/{sub}/#")],
    })
}

/// Signs `claims` with `alg` and `key`, naming `kid` in the header when
/// given.
pub fn sign_jwt(
    alg: jsonwebtoken::Algorithm,
    kid: Option<&str>,
    claims: &serde_json::Value,
    key: &jsonwebtoken::EncodingKey,
) -> String {
    let mut header = jsonwebtoken::Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).expect("sign claims")
}

/// Signs `claims` with HS256 and `secret`, naming key `kid`.
pub fn sign_hs256_kid(secret: &[u8], kid: &str, claims: &serde_json::Value) -> String {
    sign_jwt(
        jsonwebtoken::Algorithm::HS256,
        Some(kid),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
}

/// Writes `contents` to `path` the way operators are told to drop key
/// files: into `.{name}.tmp` next to it, then renamed over it, so that a
/// reader sees the old file or the new one, never half of one. Returns the
/// instant of the rename, the moment the new file appeared.
pub fn write_atomically(path: &Path, contents: impl AsRef<[u8]>) -> Instant {
    let name = path
        .file_name()
        .expect("a file path")
        .to_str()
        .expect("a UTF-8 file name");
    let scratch = path.with_file_name(format!(".{name}.tmp"));
    std::fs::write(&scratch, contents).expect("write the scratch file");
    let renamed = Instant::now();
    std::fs::rename(&scratch, path).expect("rename the scratch file into place");
    renamed
}

/// Drops the HMAC secret `{kid}.b64` (standard base64) into the keys
/// directory `dir` with [`write_atomically`]; returns the instant of the
/// rename.
pub fn drop_secret(dir: &Path, kid: &str, secret: &[u8]) -> Instant {
    use base64::Engine as _;
    let text = base64::engine::general_purpose::STANDARD.encode(secret);
    write_atomically(&dir.join(format!("{kid}.b64")), text)
}

/// The log of this test binary, captured so that a test can wait for what
/// the gateway reports (a key file it left out, a certificate it refused).
/// Every test's gateway logs here; tests tell their lines apart by the
/// paths of their own temporary directory.
pub struct Logs {
    text: Mutex<String>,
}

static CAPTURED: OnceLock<Logs> = OnceLock::new();

/// Installs the capturing subscriber (level `info,rumqttd=warn`, whatever
/// `RUST_LOG` says, so that the lines tests wait for are always there) and
/// returns the log. Lines also go to the test output, as with
/// [`init_tracing`]. Only the first subscriber of a process is installed,
/// so in a test binary that uses this, every test must call it before it
/// starts a gateway.
pub fn capture_logs() -> &'static Logs {
    static INSTALL: Once = Once::new();
    let logs = CAPTURED.get_or_init(|| Logs {
        text: Mutex::default(),
    });
    INSTALL.call_once(|| {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("info,rumqttd=warn"))
            .with_ansi(false)
            .with_writer(|| LogWriter)
            .try_init()
            .expect("capture_logs() runs before any other tracing subscriber is installed");
    });
    logs
}

impl Logs {
    /// Where the log ends now: [`Logs::wait_for_line`] from here only sees
    /// what is logged later.
    pub fn position(&self) -> usize {
        self.text
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Waits until a line logged after `since` contains every one of
    /// `needles`, and returns it. Panics after [`WAIT`].
    pub async fn wait_for_line(&self, since: usize, needles: &[&str]) -> String {
        self.wait_for(since, &format!("a line with {needles:?}"), |line| {
            needles.iter().all(|needle| line.contains(needle))
        })
        .await
    }

    /// Waits until a line logged after `since` satisfies `wanted` (`what`
    /// describes it for the panic message), and returns it. Panics after
    /// [`WAIT`].
    pub async fn wait_for(
        &self,
        since: usize,
        what: &str,
        wanted: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            {
                let text = self.text.lock().unwrap_or_else(PoisonError::into_inner);
                if let Some(line) = text[since..].lines().find(|line| wanted(line)) {
                    return line.to_owned();
                }
            }
            assert!(
                Instant::now() < deadline,
                "no log line within {WAIT:?}: {what}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Appends to [`CAPTURED`] and passes the bytes on to the test output.
struct LogWriter;

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Some(logs) = CAPTURED.get() {
            logs.text
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push_str(&String::from_utf8_lossy(buf));
        }
        tracing_subscriber::fmt::TestWriter::new().write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A process's resident memory in bytes (`VmRSS` and `VmHWM`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Memory {
    pub rss: u64,
    pub peak: u64,
}

impl Memory {
    /// Process `pid`'s resident memory, from `/proc/PID/status`.
    pub fn of(pid: u32) -> Memory {
        let status =
            std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/PID/status");
        let field = |name: &str| -> u64 {
            let line = status
                .lines()
                .find(|line| line.starts_with(name))
                .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"));
            let kib: u64 = line
                .trim_start_matches(name)
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .unwrap_or_else(|_| panic!("unreadable {line:?}"));
            kib * 1024
        };
        Memory {
            rss: field("VmRSS:"),
            peak: field("VmHWM:"),
        }
    }
}

/// What `jwtgate serve --ready-file FILE` reported: the addresses its
/// listeners are bound to, and its admin socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ready {
    /// The MQTT (TLS) listener (`mqtt=`).
    pub mqtt: SocketAddr,
    /// The `/metrics` listener (`metrics=`), when `[metrics] listen` is set.
    pub metrics: Option<SocketAddr>,
    /// The WebSocket listener (`websocket=`), when `[websocket] listen` is
    /// set.
    pub websocket: Option<SocketAddr>,
    /// The admin socket (`admin=`), when it is bound.
    pub admin: Option<PathBuf>,
}

impl Ready {
    /// Parses the file's `key=address` lines; `None` unless it holds an
    /// `mqtt=` line and every line parses.
    pub fn parse(text: &str) -> Option<Ready> {
        let mut mqtt = None;
        let mut metrics = None;
        let mut websocket = None;
        let mut admin = None;
        for line in text.lines().filter(|line| !line.trim().is_empty()) {
            let (key, value) = line.split_once('=')?;
            if key.trim() == "admin" {
                admin = Some(PathBuf::from(value.trim()));
                continue;
            }
            let addr: SocketAddr = value.trim().parse().ok()?;
            match key.trim() {
                "mqtt" => mqtt = Some(addr),
                "metrics" => metrics = Some(addr),
                "websocket" => websocket = Some(addr),
                _ => return None,
            }
        }
        Some(Ready {
            mqtt: mqtt?,
            metrics,
            websocket,
            admin,
        })
    }
}

/// Waits until the `jwtgate serve` in `child`, started with `--ready-file
/// path`, has written `path`, and returns what it says. Panics with `log()`
/// (the child's log) if the process exits first, if the file does not
/// parse, or after [`START`]. For tests that spawn the binary themselves.
pub async fn wait_for_ready_file(
    path: &Path,
    child: &mut tokio::process::Child,
    log: impl Fn() -> String,
) -> Ready {
    let deadline = Instant::now() + START;
    loop {
        // The gateway renames the file into place: there is all of it or
        // none.
        match std::fs::read_to_string(path) {
            Ok(text) => match Ready::parse(&text) {
                Some(ready) => return ready,
                None => panic!(
                    "unreadable ready file {}: {text:?}\n{}",
                    path.display(),
                    log()
                ),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => panic!("reading the ready file {}: {e}\n{}", path.display(), log()),
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "jwtgate serve exited ({status}) before it was ready:\n{}",
                log()
            );
        }
        assert!(
            Instant::now() < deadline,
            "jwtgate serve did not report ready within {START:?} ({} not written):\n{}",
            path.display(),
            log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `jwtgate serve --config CONFIG --listen 127.0.0.1:0 --ready-file FILE`
/// as a child process, its log (stderr, level `info,rumqttd=warn`) in a
/// file, the ready file next to it (`serve.log`, `serve.ready`). Started
/// once the ready file says where it listens. Killed when dropped. The
/// binary is this build's, or the one the environment variable
/// `JWTGATE_BIN` names (a build that has `--ready-file`).
pub struct ServedBinary {
    child: tokio::process::Child,
    log_path: PathBuf,
    ready: Ready,
}

impl ServedBinary {
    /// Starts the binary with `config` on port 0, writing its log to
    /// `log_path`, and waits until it reports its listeners bound.
    pub async fn start(config: &Path, log_path: PathBuf) -> ServedBinary {
        ServedBinary::start_with_env(config, log_path, &[]).await
    }

    /// As [`ServedBinary::start`], with `env` added to the child's
    /// environment (systemd's `NOTIFY_SOCKET`, say).
    pub async fn start_with_env(
        config: &Path,
        log_path: PathBuf,
        env: &[(&str, &str)],
    ) -> ServedBinary {
        ServedBinary::spawn(config, log_path, env, None).await
    }

    /// Lifts the limit [`DevBinary::start_with_file_size_limit`] set:
    /// space comes back.
    pub fn lift_file_size_limit(&self) {
        let unlimited = libc::rlimit {
            rlim_cur: libc::RLIM_INFINITY,
            rlim_max: libc::RLIM_INFINITY,
        };
        let pid = libc::pid_t::try_from(self.pid()).expect("a pid");
        // SAFETY: prlimit only reads the struct passed.
        let done =
            unsafe { libc::prlimit(pid, libc::RLIMIT_FSIZE, &unlimited, std::ptr::null_mut()) };
        assert_eq!(done, 0, "prlimit: {}", std::io::Error::last_os_error());
    }

    async fn spawn(
        config: &Path,
        log_path: PathBuf,
        env: &[(&str, &str)],
        file_size: Option<u64>,
    ) -> ServedBinary {
        let log = std::fs::File::create(&log_path).expect("create the log file");
        let ready_path = log_path.with_extension("ready");
        match std::fs::remove_file(&ready_path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => panic!("remove the old {}: {e}", ready_path.display()),
        }
        // `JWTGATE_BIN` runs another build (an older one, for before and
        // after figures) under the same test.
        let binary =
            std::env::var_os("JWTGATE_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_jwtgate").into());
        let mut command = tokio::process::Command::new(binary);
        if let Some(file_size) = file_size {
            // SAFETY: signal and setrlimit are async-signal-safe, and
            // nothing else runs between fork and exec.
            unsafe {
                command.pre_exec(move || {
                    libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
                    let limit = libc::rlimit {
                        rlim_cur: file_size,
                        rlim_max: libc::RLIM_INFINITY,
                    };
                    if libc::setrlimit(libc::RLIMIT_FSIZE, &limit) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = command
            .envs(env.iter().copied())
            .arg("serve")
            .arg("--config")
            .arg(config)
            .args(["--listen", "127.0.0.1:0"])
            .arg("--ready-file")
            .arg(&ready_path)
            .env("RUST_LOG", "info,rumqttd=warn")
            .env("NO_COLOR", "1")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("spawn jwtgate serve");
        let ready = wait_for_ready_file(&ready_path, &mut child, || {
            std::fs::read_to_string(&log_path).unwrap_or_default()
        })
        .await;
        ServedBinary {
            child,
            log_path,
            ready,
        }
    }

    /// The addresses the running process reported.
    pub fn ready(&self) -> Ready {
        self.ready.clone()
    }

    /// The MQTT listener's address.
    pub fn addr(&self) -> SocketAddr {
        self.ready.mqtt
    }

    /// The `/metrics` listener's address, when `[metrics] listen` is set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.ready.metrics
    }

    /// The MQTT listener's port.
    pub fn port(&self) -> u16 {
        self.ready.mqtt.port()
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("the child is running")
    }

    /// The child's resident memory now and at its peak.
    pub fn memory(&self) -> Memory {
        Memory::of(self.pid())
    }

    /// Everything logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// SIGKILL, and waits for the process to be gone: a crash or a power
    /// cut, as far as the process can tell.
    pub async fn kill(&mut self) {
        self.child.start_kill().expect("SIGKILL jwtgate");
        let _ = self.child.wait().await;
    }

    /// SIGTERM, and waits (up to [`WAIT`]) for a clean exit.
    pub async fn terminate(&mut self) {
        self.signal("TERM");
        let status = tokio::time::timeout(WAIT, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("jwtgate did not stop on SIGTERM:\n{}", self.log()))
            .expect("wait for jwtgate");
        assert!(
            status.success(),
            "jwtgate exited with {status}:\n{}",
            self.log()
        );
    }

    /// Sends a signal (`"HUP"`, `"TERM"`) with kill(1).
    pub fn signal(&self, name: &str) {
        let pid = self.child.id().expect("the child is running").to_string();
        let status = std::process::Command::new("kill")
            .args([&format!("-{name}"), &pid])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} {pid}");
    }

    /// Waits until the log, after its first `since` bytes, contains
    /// `needle`. Panics after [`WAIT`].
    pub async fn wait_for_log(&self, since: usize, needle: &str) {
        self.wait_for_log_within(since, needle, WAIT).await;
    }

    /// Like [`ServedBinary::wait_for_log`] with a window of its own.
    pub async fn wait_for_log_within(&self, since: usize, needle: &str, window: Duration) {
        let deadline = Instant::now() + window;
        while !self.log().get(since..).unwrap_or("").contains(needle) {
            assert!(
                Instant::now() < deadline,
                "no {needle:?} in the log within {window:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The `jwtgate` binary served from a temporary directory holding
/// development material (CA, server certificate, `keys/dev.b64`) and a
/// config file: `[tls]` and `[auth]` pointing there, plus what the test
/// adds. Tokens are signed with the development secret.
pub struct DevBinary {
    pub served: ServedBinary,
    pub ca: Vec<u8>,
    secret: Vec<u8>,
    dir: tempfile::TempDir,
}

impl DevBinary {
    /// Starts `jwtgate serve` with `auth` added to its `[auth]` table
    /// (`"leeway_secs = 0\n"`) and `extra` appended to the config (other
    /// tables: `"[limits]\nwrite_timeout_secs = 2\n"`).
    pub async fn start(auth: &str, extra: &str) -> DevBinary {
        DevBinary::start_with_env(auth, extra, &[]).await
    }

    /// As [`DevBinary::start`], with `env` added to the process's
    /// environment.
    pub async fn start_with_env(auth: &str, extra: &str, env: &[(&str, &str)]) -> DevBinary {
        DevBinary::spawn(auth, extra, env, None, None).await
    }

    /// As [`DevBinary::start`], asking devices for client certificates
    /// issued by `client_ca` (PEM, written to `keys/tls/clients-ca.crt`),
    /// with `tls` added to the `[tls]` table (`"client_auth = \"required\"\n"`).
    pub async fn start_with_client_ca(
        client_ca: &str,
        tls: &str,
        auth: &str,
        extra: &str,
    ) -> DevBinary {
        DevBinary::spawn(auth, extra, &[], None, Some((client_ca, tls))).await
    }

    /// As [`DevBinary::start`], with the process's files limited to
    /// `file_size` bytes (a soft `RLIMIT_FSIZE`, with SIGXFSZ ignored so
    /// that a write past it fails with EFBIG): a disk that fills up,
    /// without root. [`ServedBinary::lift_file_size_limit`] lifts it.
    pub async fn start_with_file_size_limit(auth: &str, extra: &str, file_size: u64) -> DevBinary {
        DevBinary::spawn(auth, extra, &[], Some(file_size), None).await
    }

    /// `client_ca`: the client CA's PEM and the `[tls]` lines that go with
    /// it.
    async fn spawn(
        auth: &str,
        extra: &str,
        env: &[(&str, &str)],
        file_size: Option<u64>,
        client_ca: Option<(&str, &str)>,
    ) -> DevBinary {
        let dir = tempfile::tempdir().expect("temp dir");
        let material =
            firstrun::ensure_dev_material(&dir.path().join("keys")).expect("dev material");
        let tls = match client_ca {
            Some((pem, tls)) => {
                std::fs::write(dir.path().join("keys/tls/clients-ca.crt"), pem)
                    .expect("write the client CA");
                format!("client_ca = \"keys/tls/clients-ca.crt\"\n{tls}")
            }
            None => String::new(),
        };
        let ca = std::fs::read(material.ca_cert.expect("a dev CA")).expect("read the CA");
        let secret = keys::decode_secret(
            &std::fs::read_to_string(&material.secret).expect("read the secret"),
        )
        .expect("the secret decodes");
        let config = dir.path().join("jwtgate.toml");
        std::fs::write(
            &config,
            format!(
                "[tls]\ncert = \"keys/tls/server.crt\"\nkey = \"keys/tls/server.key\"\n{tls}\n\
                 [admin]\nsocket = \"state/admin.sock\"\n\n\
                 [auth]\nkeys_dir = \"keys\"\n{auth}\n{extra}"
            ),
        )
        .expect("write the config");
        let served =
            ServedBinary::spawn(&config, dir.path().join("serve.log"), env, file_size).await;
        DevBinary {
            served,
            ca,
            secret,
            dir,
        }
    }

    /// Where the gateway listens now (a [`DevBinary::restart`] moves it).
    pub fn addr(&self) -> SocketAddr {
        self.served.addr()
    }

    /// Where `/metrics` is served now, when the config sets `[metrics]
    /// listen` (port 0 is fine: this is the bound address).
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.served.metrics_addr()
    }

    pub fn keys_dir(&self) -> PathBuf {
        self.dir.path().join("keys")
    }

    /// The directory holding the config, the keys and the durable state.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Starts the binary again after [`ServedBinary::kill`] or
    /// [`ServedBinary::terminate`]: same config, same directory, a fresh
    /// log (`serve-N.log`; the earlier ones stay), on port 0 again: it
    /// listens on a new port, which [`DevBinary::addr`] and the options
    /// made from now on use. Clients must be started with new options.
    pub async fn restart(&mut self) {
        let runs = std::fs::read_dir(self.dir.path())
            .expect("read the test directory")
            .filter(|e| {
                e.as_ref().is_ok_and(|e| {
                    let name = e.file_name();
                    let name = name.to_string_lossy();
                    name.starts_with("serve") && name.ends_with(".log")
                })
            })
            .count();
        let log = self.dir.path().join(format!("serve-{runs}.log"));
        self.served = ServedBinary::start(&self.dir.path().join("jwtgate.toml"), log).await;
    }

    /// `claims` signed with the development secret.
    pub fn sign(&self, claims: &serde_json::Value) -> String {
        sign_hs256(&self.secret, claims)
    }

    /// A token for `sub` granting `topics`, valid for `ttl`.
    pub fn token(&self, sub: &str, topics: &[&str], ttl: Duration) -> String {
        self.sign(&serde_json::json!({
            "sub": sub,
            "exp": now_unix() + ttl.as_secs(),
            "topics": topics,
        }))
    }

    /// rumqttc v4 options for where the gateway listens now.
    pub fn v4_options(&self, client_id: &str, token: &str) -> rumqttc::MqttOptions {
        v4_options_for(self.served.port(), &self.ca, client_id, token)
    }

    /// rumqttc v5 options for where the gateway listens now.
    pub fn v5_options(&self, client_id: &str, token: &str) -> rumqttc::v5::MqttOptions {
        v5_options_for(self.served.port(), &self.ca, client_id, token)
    }

    pub async fn raw(&self) -> RawClient {
        RawClient::connect(self.addr(), &self.ca).await
    }

    /// The log must not show a panic.
    pub fn assert_no_panic(&self) {
        let log = self.served.log();
        assert!(!log.contains("panicked"), "a panic in the log:\n{log}");
    }

    /// A well-behaved device named `name` (granted `ok/#`) connects,
    /// subscribes to its own topic, publishes to it at QoS 1 and receives
    /// the message, all `within`; the log shows no panic. Returns how long
    /// that took: the check the abuse tests make after every attack.
    pub async fn device_is_served(&self, name: &str, within: Duration) -> Duration {
        let started = std::time::Instant::now();
        let topic = format!("ok/{name}");
        let token = self.token(name, &["ok/#"], Duration::from_secs(3600));
        let served = tokio::time::timeout(within, async {
            let mut device = V4Client::start(self.v4_options(name, &token));
            assert_eq!(
                device.connack().await.code,
                rumqttc::ConnectReturnCode::Success
            );
            device.subscribe(&topic, rumqttc::QoS::AtLeastOnce).await;
            device
                .publish(&topic, rumqttc::QoS::AtLeastOnce, false, b"served")
                .await;
            assert_eq!(&device.expect_publish(&topic).await.payload[..], b"served");
            device.disconnect().await;
        })
        .await;
        assert!(
            served.is_ok(),
            "device {name} not served within {within:?}:\n{}",
            self.served.log()
        );
        self.assert_no_panic();
        started.elapsed()
    }
}

/// Raises this process's open-file limit to its hard limit, so a test can
/// hold a thousand sockets on a machine whose default soft limit is 1,024
/// (its children, the gateway among them, inherit it). Returns the limit
/// now in force.
pub fn raise_open_file_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 0;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    limit.rlim_cur
}
