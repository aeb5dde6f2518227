//! Typed gateway configuration, parsed once from TOML.
//!
//! ## The model
//!
//! A [`Config`] is built once at start-up, by [`Config::load`] from a file or
//! by [`Config::defaults`] when no file is given, and then handed down to the
//! rest of the gateway as plain data. Nothing reads the file again and
//! nothing downstream re-validates: once a `Config` exists, every value in it
//! is usable. Timeouts are [`Duration`]s, the reaction to a refused publish is
//! a [`DenyPublish`], the algorithm allow-list is a list of
//! [`jsonwebtoken::Algorithm`]s, and every path has already been resolved
//! against the directory of the file it came from.
//!
//! Parsing happens in two steps. serde first reads the text into private
//! "raw" structs that mirror the file (every key optional, every value
//! wrapped in [`toml::Spanned`] so we remember where it was written). Those
//! are then checked and converted into the public types. Either step can
//! fail, and both produce a [`ConfigError::Invalid`] that names the file,
//! the line and column, and the key with its table, e.g.
//!
//! ```text
//! /etc/jwtgate.toml:7:19: [limits] max_packet_size: must be at least 1024 bytes
//! ```
//!
//! Errors raised by toml itself (syntax errors, unknown keys, wrong types)
//! carry only a byte span, so the key they concern is recovered by looking
//! that span up in toml's spanned document tree.

// Untrusted input (the config file is read whatever it holds): fail with an
// error, never a panic. Tests are exempt through clippy.toml; an exception
// in this code carries an `#[allow]` saying why it cannot fail. See
// "Robustness" in the crate docs.
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::fmt::Display;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::ops::{Range, RangeInclusive};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::mqtt::TopicLimits;
use jsonwebtoken::Algorithm;
use serde::Deserialize;

pub use crate::acl::ClientIdBinding;

mod bridge;
pub use bridge::{
    BridgeConfig, ClientCert, Credential, ForwardRule, Protocol, Remote, SubscribeRule, Transport,
};
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// The port MQTT over TLS is registered on.
const DEFAULT_PORT: u16 = 8883;

/// MQTT's remaining-length field cannot describe a larger packet.
const MQTT_MAX_PACKET_SIZE: i64 = 268_435_455;

/// Below this even a CONNECT with a realistic JWT does not fit.
const MIN_PACKET_SIZE: i64 = 1024;

/// Below this one session could not queue even one realistic message.
const MIN_QUEUED_BYTES: i64 = 1024;

/// Below this a CONNECT or PUBLISH with a few ordinary MQTT 5 properties
/// would be refused.
const MIN_PROPERTY_BYTES: i64 = 256;

/// MQTT 5 carries the session expiry interval in four bytes.
const MQTT_MAX_SESSION_EXPIRY_SECS: i64 = u32::MAX as i64;

/// The largest `[limits] memory_budget_mb`: 1 TiB.
const MAX_MEMORY_BUDGET_MB: i64 = 1024 * 1024;

/// `[storage] sync_interval_ms` by default. A second bounds what a power
/// cut loses to the last second of traffic, while one fsync a second costs
/// an SD card or eMMC nothing noticeable; forcing every commit would cost
/// a device's QoS 1 round trip 5-30 ms on such storage.
const DEFAULT_SYNC_INTERVAL: Duration = Duration::from_secs(1);

/// The longest `[storage] sync_interval_ms`: a minute.
const MAX_SYNC_INTERVAL_MS: i64 = 60_000;

/// Bytes in one `memory_budget_mb`.
const MIB: usize = 1024 * 1024;

/// The names `jsonwebtoken::Algorithm::from_str` accepts, for error messages.
const ALGORITHM_NAMES: &str =
    "HS256, HS384, HS512, ES256, ES384, RS256, RS384, RS512, PS256, PS384, PS512, EdDSA";

/// The whole gateway configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The file this configuration was read from; `None` for the built-in
    /// defaults.
    pub source: Option<PathBuf>,
    /// Address of the TLS listener. There is no plaintext listener.
    pub listen: SocketAddr,
    pub tls: TlsPaths,
    pub auth: AuthConfig,
    pub limits: Limits,
    pub sessions: SessionSettings,
    pub storage: StorageConfig,
    /// Uplinks to central brokers, in the order written.
    pub bridges: Vec<BridgeConfig>,
    pub log: LogConfig,
    pub metrics: MetricsConfig,
}

/// Where Prometheus scrapes the gateway ([`crate::metrics`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MetricsConfig {
    /// `[metrics] listen`; no metrics listener when unset. A loopback
    /// address unless `[metrics] allow_remote` is set: the figures say
    /// who connects how often, and the endpoint has no authentication.
    pub listen: Option<SocketAddr>,
}

/// How the gateway writes its log (to stderr, which journald takes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogConfig {
    pub format: LogFormat,
}

/// One line per event either way; `json` for log shippers, with every
/// field (client id, subject, key id, remote address, outcome, reason) a
/// key of its own.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Where the durable state (retained messages, parked sessions, the
/// bridges' store-and-forward queues) lives, and how often it is forced to
/// the disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageConfig {
    /// Directory of the database (already resolved); created if missing.
    pub dir: PathBuf,
    /// How long a committed write may sit in the operating system's cache
    /// before it is forced to the disk: what a power cut can lose. A
    /// process kill loses nothing committed. Zero forces every commit, and
    /// then a device's PUBACK waits for the disk.
    pub sync_interval: Duration,
}

/// Where the server certificate and its key live (already resolved).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsPaths {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// How device tokens are verified and what a refused publish costs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthConfig {
    /// Directory holding the verification keys (already resolved).
    pub keys_dir: PathBuf,
    /// Name of the claim listing the topic filters a device may use; never
    /// empty.
    pub topics_claim: String,
    /// Name of the claim holding EMQX-style ACL rules; never empty, never
    /// the topics claim.
    pub acl_claim: String,
    /// Clock-skew allowance applied to `exp` and `nbf`.
    pub leeway: Duration,
    /// Required `iss`, when set; never empty.
    pub issuer: Option<String>,
    /// Accepted `aud` values, when set; never an empty list.
    pub audience: Option<Vec<String>>,
    /// Reject tokens without a `kid` header.
    pub require_kid: bool,
    /// Reject tokens without an `exp` claim.
    pub require_exp: bool,
    /// Reject tokens without a non-empty `sub` claim. Sessions are keyed by
    /// subject and client id, so devices without a subject would share one
    /// namespace and could take over each other's sessions.
    pub require_subject: bool,
    /// Longest accepted `exp - iat`, when set; never zero.
    pub max_token_lifetime: Option<Duration>,
    /// Accepted signature algorithms, when set; never an empty list.
    pub algorithms: Option<Vec<Algorithm>>,
    /// What happens to a connection after a refused PUBLISH.
    pub deny_publish: DenyPublish,
    /// What ties a client id to a token, for `${clientid}` in grants.
    pub client_id_binding: ClientIdBinding,
}

/// What happens to a connection after the gateway refuses one of its
/// PUBLISH packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DenyPublish {
    /// Discard the packet (with a negative acknowledgement where the
    /// protocol has one) and keep the connection.
    #[default]
    Drop,
    /// Close the connection.
    Disconnect,
}

/// Per-connection resource limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// How long a client may take to complete the TLS handshake; never zero.
    pub handshake_timeout: Duration,
    /// How long a client may take, once TLS is up, to send CONNECT; never
    /// zero.
    pub connect_timeout: Duration,
    /// Largest accepted MQTT packet in bytes, between 1024 and 268435455.
    pub max_packet_size: usize,
    /// Largest accepted CONNECT in bytes, between 1024 and 268435455; a
    /// connection uses the smaller of it and `max_packet_size`. A
    /// stranger's first packet is
    /// buffered before anything about it is known, so it gets far less
    /// room than an authenticated client's packets: a CONNECT carries a
    /// token (at most a few KiB), a client id and perhaps a will.
    pub max_connect_packet_size: usize,
    /// Most simultaneous authenticated connections (sessions); never zero.
    /// A client past it is refused with "server unavailable" (MQTT 5:
    /// 0x89 server busy).
    pub max_connections: usize,
    /// Most connections that have not authenticated yet (in the TLS
    /// handshake or before their CONNECT is accepted); never zero. They are
    /// counted apart from `max_connections`, so strangers cannot take the
    /// places of devices; when they are all taken, a new connection pushes
    /// out the oldest of them, so a flood of silent sockets cannot lock
    /// devices out either.
    pub max_pending_connections: usize,
    /// Most unauthenticated connections from one source: an IPv4 address,
    /// or an IPv6 /64 (one host's share of addresses); never zero. More are
    /// closed at once. Devices behind one NAT share it, but each holds a
    /// place only for its handshake.
    pub max_pending_per_source: usize,
    /// How long the gateway waits for a client to read what it is sent
    /// (the whole output, or another 64 KiB of it) before disconnecting
    /// it; never zero. A client that stops reading holds its buffers and
    /// its place, and delays its publishers, until then.
    pub write_timeout: Duration,
    /// Most MQTT 5 property bytes (user properties included) accepted in one
    /// packet, between 256 and 268435455. Properties are copied to every
    /// subscriber, so one packet must not be able to carry an unbounded
    /// amount of them inside `max_packet_size`; more is refused with reason
    /// 0x97 (quota exceeded).
    pub max_property_bytes: usize,
    /// Topic aliases granted to each MQTT 5 client in CONNACK (0 grants
    /// none). Every alias is a topic the gateway remembers for the life of
    /// the connection, so the number is bounded per client.
    pub max_topic_aliases: u16,
    /// Longest keep-alive a client may have, in seconds (1 to 65535), when
    /// set. A client asking for a longer one, or for none (0), is given this
    /// one (MQTT 5 "server keep alive" in CONNACK; MQTT 3.1.1 clients are
    /// held to it silently), so a dead connection and its session's queue
    /// are noticed within a bounded time. `None` takes what the client asks.
    pub max_keep_alive: Option<u16>,
    /// Bytes of application messages held in memory across the whole
    /// gateway (queued, in flight and retained); at least 1 MiB. The
    /// per-session bounds alone would let many sessions together exhaust
    /// the edge box's memory.
    pub memory_budget: usize,
    /// How deep and how long a topic or filter may be
    /// (`max_topic_levels`, 1 to 65535, default 128; `max_topic_bytes`, 1
    /// to 65535, default 4096). Over them, a PUBLISH gets 0x90 (MQTT 3.1.1:
    /// the connection is closed), a filter 0x8F (3.1.1: SUBACK 0x80).
    pub topics: TopicLimits,
    /// Bytes of retained messages (payload, topic and their share of the
    /// retained tree) one token subject may hold, at least 1024; default
    /// 8 MiB. More is answered with 0x97 (quota exceeded).
    pub max_retained_bytes_per_subject: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            handshake_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            max_packet_size: 1024 * 1024,
            max_connect_packet_size: 16 * 1024,
            max_connections: 10_000,
            max_pending_connections: 1024,
            max_pending_per_source: 64,
            write_timeout: Duration::from_secs(30),
            max_property_bytes: 64 * 1024,
            max_topic_aliases: 64,
            max_keep_alive: None,
            memory_budget: 512 * MIB,
            topics: TopicLimits::DEFAULT,
            max_retained_bytes_per_subject: 8 * MIB,
        }
    }
}

/// How sessions queue and deliver messages (jwtgate's routing core).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionSettings {
    /// Most QoS 1 and 2 messages sent to one client and not yet
    /// acknowledged; at least 1. Also capped by the client's MQTT 5 receive
    /// maximum. Bounds what a client that stops acknowledging keeps held in
    /// memory, and what is re-sent when it resumes.
    pub max_inflight: u16,
    /// Most messages waiting for one session (connected or offline); at
    /// least 1. A full queue holds its publishers back, then the
    /// `slow_subscriber` policy applies.
    pub max_queued_messages: usize,
    /// Most bytes (topic + payload + properties) waiting for one session; at
    /// least 1024. Counts what a message really costs, so a few large
    /// messages cannot exceed what `max_queued_messages` small ones would.
    pub max_queued_bytes: usize,
    /// What happens to a subscriber whose queue stays full past
    /// `slow_subscriber_timeout`.
    pub slow_subscriber: SlowSubscriber,
    /// How long one full subscriber queue may hold a publisher back before
    /// the `slow_subscriber` policy applies to that subscriber; never zero.
    /// Bounds how far one stalled device can slow every publisher on its
    /// topics.
    pub slow_subscriber_timeout: Duration,
    /// Most subscriptions one session may hold; at least 1. More gets SUBACK
    /// "quota exceeded". Bounds the subscription index one device can grow.
    pub max_subscriptions: usize,
    /// Cap on the MQTT 5 session expiry interval a client asks for, and the
    /// expiry of MQTT 3.1.1 persistent (clean session 0) sessions; at most
    /// 4294967295 seconds (MQTT 5's largest). Bounds how long a device that
    /// never comes back keeps its session and queue. Zero: no session
    /// outlives its connection.
    pub max_session_expiry: Duration,
    /// Most sessions, connected and parked together, one token subject may
    /// hold; at least 1, default 8. A CONNECT that would make another is
    /// refused with 0x97 (quota exceeded; MQTT 3.1.1: server unavailable).
    /// Without it one token could park a session per invented client id.
    pub max_sessions_per_subject: usize,
    /// Bytes the subscriptions of one session may hold (each filter and
    /// its share of the subscription index, about 400 bytes a level), at
    /// least 1024; default 256 KiB, room for the 100 subscriptions of
    /// `max_subscriptions` at 6 levels each. More gets SUBACK 0x97 (quota
    /// exceeded).
    pub max_subscription_bytes: usize,
}

impl Default for SessionSettings {
    fn default() -> Self {
        SessionSettings {
            max_inflight: 1000,
            max_queued_messages: 1000,
            max_queued_bytes: 8 * MIB,
            slow_subscriber: SlowSubscriber::Disconnect,
            slow_subscriber_timeout: Duration::from_millis(2000),
            max_subscriptions: 100,
            max_session_expiry: Duration::from_secs(86_400),
            max_sessions_per_subject: 8,
            max_subscription_bytes: 256 * 1024,
        }
    }
}

/// What happens to a subscriber whose queue has held a publisher back for
/// `[sessions] slow_subscriber_timeout_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SlowSubscriber {
    /// Close the slow subscriber's connection (MQTT 5 reason 0x97, quota
    /// exceeded); the device reconnects and resumes. Its QoS 0 messages are
    /// still dropped oldest first.
    #[default]
    Disconnect,
    /// Keep the connection and drop messages for it (QoS 0 oldest first),
    /// counted and logged.
    Drop,
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read at all.
    #[error("cannot read config file {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    /// The file was read but is not a valid configuration. `line` and
    /// `column` are 1-based and point at the offending key or value; `key`
    /// is the key with its table (`[limits] max_packet_size`) when known.
    #[error("{}:{line}:{column}: {}", path.display(), with_key(key.as_deref(), message))]
    Invalid {
        path: PathBuf,
        line: usize,
        column: usize,
        key: Option<String>,
        message: String,
    },
}

fn with_key(key: Option<&str>, message: &str) -> String {
    match key {
        Some(key) => format!("{key}: {message}"),
        None => message.to_owned(),
    }
}

impl Config {
    /// Reads and validates a config file. Relative paths in it resolve
    /// against the file's directory.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let base_dir = path.parent().unwrap_or(Path::new(""));
        Config::parse(&text, path, base_dir)
    }

    /// Parses config text; `origin` is the file name used in error messages
    /// (and recorded as [`Config::source`]), relative paths resolve against
    /// `base_dir`.
    pub fn parse(text: &str, origin: &Path, base_dir: &Path) -> Result<Config, ConfigError> {
        let doc = Document { text, origin };
        let raw: RawConfig = toml::from_str(text).map_err(|err| doc.toml_error(&err))?;
        let mut config = raw.validate(&doc, base_dir)?;
        config.source = Some(origin.to_path_buf());
        Ok(config)
    }

    /// The built-in defaults used by `jwtgate serve` with no `--config`:
    /// keys in `base_dir/keys`, the certificate and key in
    /// `base_dir/keys/tls/`, durable state in `base_dir/state`, listening
    /// on 0.0.0.0:8883, no bridges.
    pub fn defaults(base_dir: &Path) -> Config {
        Config {
            source: None,
            listen: SocketAddr::from((Ipv4Addr::UNSPECIFIED, DEFAULT_PORT)),
            tls: TlsPaths {
                cert: base_dir.join("keys/tls/server.crt"),
                key: base_dir.join("keys/tls/server.key"),
            },
            auth: AuthConfig {
                keys_dir: base_dir.join("keys"),
                topics_claim: "topics".to_owned(),
                acl_claim: "acl".to_owned(),
                leeway: Duration::from_secs(5),
                issuer: None,
                audience: None,
                // The development HS256 tokens carry no kid.
                require_kid: false,
                require_exp: true,
                require_subject: true,
                max_token_lifetime: None,
                algorithms: None,
                deny_publish: DenyPublish::Drop,
                client_id_binding: ClientIdBinding::ClaimOrSubject,
            },
            limits: Limits::default(),
            sessions: SessionSettings::default(),
            storage: StorageConfig {
                dir: base_dir.join("state"),
                sync_interval: DEFAULT_SYNC_INTERVAL,
            },
            bridges: Vec::new(),
            log: LogConfig::default(),
            metrics: MetricsConfig::default(),
        }
    }
}

// The raw structs mirror the file one to one. Every key is optional so that
// absence means "use the default", and values stay `Spanned` until they have
// been checked, so a failed check can point at the exact place.

#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "a TOML document")]
struct RawConfig {
    listen: Option<Spanned<String>>,
    /// Compatibility alias for `[auth] deny_publish`.
    deny_publish: Option<Spanned<DenyPublish>>,
    tls: RawTls,
    auth: RawAuth,
    limits: RawLimits,
    sessions: RawSessions,
    storage: RawStorage,
    bridge: Vec<Spanned<bridge::RawBridge>>,
    log: RawLog,
    metrics: RawMetrics,
    /// rumqttd's router's table, gone with it; read only to refuse it with
    /// an error naming the replacement.
    router: Option<Spanned<RawRouter>>,
}

#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "the [tls] table")]
struct RawTls {
    cert: Option<Spanned<PathBuf>>,
    key: Option<Spanned<PathBuf>>,
}

#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "the [auth] table")]
struct RawAuth {
    keys_dir: Option<Spanned<PathBuf>>,
    topics_claim: Option<Spanned<String>>,
    acl_claim: Option<Spanned<String>>,
    leeway_secs: Option<Spanned<i64>>,
    issuer: Option<Spanned<String>>,
    audience: Option<Spanned<Audience>>,
    require_kid: Option<bool>,
    require_exp: Option<bool>,
    require_subject: Option<bool>,
    max_token_lifetime_secs: Option<Spanned<i64>>,
    algorithms: Option<Spanned<Vec<Spanned<String>>>>,
    deny_publish: Option<Spanned<DenyPublish>>,
    client_id_binding: Option<Spanned<ClientIdBinding>>,
}

#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "the [limits] table")]
struct RawLimits {
    handshake_timeout_secs: Option<Spanned<i64>>,
    connect_timeout_secs: Option<Spanned<i64>>,
    max_packet_size: Option<Spanned<i64>>,
    max_connect_packet_size: Option<Spanned<i64>>,
    max_connections: Option<Spanned<i64>>,
    max_pending_connections: Option<Spanned<i64>>,
    max_pending_per_source: Option<Spanned<i64>>,
    write_timeout_secs: Option<Spanned<i64>>,
    max_property_bytes: Option<Spanned<i64>>,
    max_topic_aliases: Option<Spanned<i64>>,
    max_keep_alive_secs: Option<Spanned<i64>>,
    memory_budget_mb: Option<Spanned<i64>>,
    max_topic_levels: Option<Spanned<i64>>,
    max_topic_bytes: Option<Spanned<i64>>,
    max_retained_bytes_per_subject: Option<Spanned<i64>>,
}

#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "the [sessions] table")]
struct RawSessions {
    max_inflight: Option<Spanned<i64>>,
    max_queued_messages: Option<Spanned<i64>>,
    max_queued_bytes: Option<Spanned<i64>>,
    slow_subscriber: Option<Spanned<SlowSubscriber>>,
    slow_subscriber_timeout_ms: Option<Spanned<i64>>,
    max_subscriptions: Option<Spanned<i64>>,
    max_session_expiry_secs: Option<Spanned<i64>>,
    max_sessions_per_subject: Option<Spanned<i64>>,
    max_subscription_bytes: Option<Spanned<i64>>,
}

#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "the [log] table")]
struct RawLog {
    format: Option<LogFormat>,
}

#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "the [metrics] table")]
struct RawMetrics {
    listen: Option<Spanned<String>>,
    allow_remote: bool,
}

#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "the [storage] table")]
struct RawStorage {
    dir: Option<Spanned<PathBuf>>,
    sync_interval_ms: Option<Spanned<i64>>,
}

/// The keys rumqttd's router took. Their values are not read (any type is
/// taken), only where they were written, so that each gets an error naming
/// its replacement; any other key is an ordinary unknown-key error.
#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "the [router] table")]
struct RawRouter {
    max_outgoing_packet_count: Option<Spanned<de::IgnoredAny>>,
    max_segment_size: Option<Spanned<de::IgnoredAny>>,
    max_segment_count: Option<Spanned<de::IgnoredAny>>,
}

/// `audience` is written either as one string or as a list of strings.
struct Audience(Vec<String>);

impl<'de> Deserialize<'de> for Audience {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct AudienceVisitor;

        impl<'de> Visitor<'de> for AudienceVisitor {
            type Value = Audience;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string or a list of strings")
            }

            fn visit_str<E: de::Error>(self, value: &str) -> Result<Audience, E> {
                Ok(Audience(vec![value.to_owned()]))
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Audience, A::Error> {
                let mut values = Vec::new();
                while let Some(value) = seq.next_element::<String>()? {
                    values.push(value);
                }
                Ok(Audience(values))
            }
        }

        deserializer.deserialize_any(AudienceVisitor)
    }
}

/// The text being parsed and the name to report it under.
struct Document<'a> {
    text: &'a str,
    origin: &'a Path,
}

impl Document<'_> {
    fn invalid(&self, at: usize, key: Option<String>, message: impl Display) -> ConfigError {
        let (line, column) = line_column(self.text, at);
        ConfigError::Invalid {
            path: self.origin.to_path_buf(),
            line,
            column,
            key,
            message: message.to_string(),
        }
    }

    /// An error about a value whose key we know.
    fn bad<T>(&self, value: &Spanned<T>, key: &str, message: impl Display) -> ConfigError {
        self.invalid(value.span().start, Some(key.to_owned()), message)
    }

    /// An `IP:port` value; `example` shows the form in the error.
    fn socket_addr(
        &self,
        value: &Spanned<String>,
        key: &str,
        example: &str,
    ) -> Result<SocketAddr, ConfigError> {
        value.get_ref().parse().map_err(|_| {
            self.bad(
                value,
                key,
                format!(
                    "`{}` is not an IP address and port (for example \"{example}\")",
                    value.get_ref()
                ),
            )
        })
    }

    fn toml_error(&self, err: &toml::de::Error) -> ConfigError {
        // toml always attaches a span in practice; the start of the file is
        // the honest fallback if a future version does not.
        let span = err.span().unwrap_or(0..0);
        let key = key_at(self.text, &span);
        self.invalid(span.start, key, err.message())
    }

    /// Checks an integer against `range` and converts it to the target type.
    fn int<T: TryFrom<i64>>(
        &self,
        value: &Spanned<i64>,
        key: &str,
        range: RangeInclusive<i64>,
        unit: &str,
    ) -> Result<T, ConfigError> {
        let n = *value.get_ref();
        let (min, max) = (*range.start(), *range.end());
        let amount = |bound: i64| match unit {
            "" => bound.to_string(),
            _ => format!("{bound} {unit}"),
        };
        if n < min {
            let message = match min {
                0 => "must not be negative".to_owned(),
                1 => "must be greater than 0".to_owned(),
                _ => format!("must be at least {}", amount(min)),
            };
            return Err(self.bad(value, key, message));
        }
        if n > max {
            return Err(self.bad(value, key, format!("must be at most {}", amount(max))));
        }
        T::try_from(n).map_err(|_| self.bad(value, key, "is too large for this platform"))
    }

    fn seconds(&self, value: &Spanned<i64>, key: &str, min: i64) -> Result<Duration, ConfigError> {
        self.int(value, key, min..=i64::MAX, "seconds")
            .map(Duration::from_secs)
    }

    fn milliseconds(
        &self,
        value: &Spanned<i64>,
        key: &str,
        min: i64,
    ) -> Result<Duration, ConfigError> {
        self.int(value, key, min..=i64::MAX, "milliseconds")
            .map(Duration::from_millis)
    }

    fn path(
        &self,
        value: &Spanned<PathBuf>,
        key: &str,
        base_dir: &Path,
    ) -> Result<PathBuf, ConfigError> {
        if value.get_ref().as_os_str().is_empty() {
            return Err(self.bad(value, key, "must not be empty"));
        }
        // `join` keeps absolute paths as they are.
        Ok(base_dir.join(value.get_ref()))
    }
}

impl RawConfig {
    fn validate(self, doc: &Document<'_>, base_dir: &Path) -> Result<Config, ConfigError> {
        let mut config = Config::defaults(base_dir);
        if let Some(listen) = &self.listen {
            config.listen = doc.socket_addr(listen, "listen", "0.0.0.0:8883")?;
        }
        self.tls.validate(doc, base_dir, &mut config.tls)?;
        let deny_publish = match (self.deny_publish, &self.auth.deny_publish) {
            (Some(top), Some(auth)) => {
                let (auth_line, _) = line_column(doc.text, auth.span().start);
                return Err(doc.bad(
                    &top,
                    "deny_publish",
                    format!(
                        "given both at the top level and as [auth] deny_publish (line \
                         {auth_line}); keep only [auth] deny_publish"
                    ),
                ));
            }
            (Some(top), None) => Some(top.into_inner()),
            (None, auth) => auth.as_ref().map(|auth| *auth.get_ref()),
        };
        self.auth.validate(doc, base_dir, &mut config.auth)?;
        if let Some(deny_publish) = deny_publish {
            config.auth.deny_publish = deny_publish;
        }
        self.limits.validate(doc, &mut config.limits)?;
        if let Some(router) = &self.router {
            return Err(RawRouter::refuse(router, doc));
        }
        self.sessions.validate(doc, &mut config.sessions)?;
        self.storage.validate(doc, base_dir, &mut config.storage)?;
        config.bridges = bridge::validate(self.bridge, doc, base_dir, &config.limits.topics)?;
        if let Some(format) = self.log.format {
            config.log.format = format;
        }
        config.metrics = self.metrics.validate(doc)?;
        Ok(config)
    }
}

impl RawMetrics {
    fn validate(self, doc: &Document<'_>) -> Result<MetricsConfig, ConfigError> {
        let Some(listen) = &self.listen else {
            return Ok(MetricsConfig::default());
        };
        let addr = doc.socket_addr(listen, "[metrics] listen", "127.0.0.1:9883")?;
        if !addr.ip().is_loopback() && !self.allow_remote {
            return Err(doc.bad(
                listen,
                "[metrics] listen",
                format!(
                    "{addr} is not a loopback address: the metrics endpoint has no \
                     authentication and tells who connects how often; scrape it through \
                     a proxy, or set [metrics] allow_remote = true to serve it there anyway"
                ),
            ));
        }
        Ok(MetricsConfig { listen: Some(addr) })
    }
}

impl RawStorage {
    fn validate(
        self,
        doc: &Document<'_>,
        base_dir: &Path,
        storage: &mut StorageConfig,
    ) -> Result<(), ConfigError> {
        if let Some(dir) = &self.dir {
            storage.dir = doc.path(dir, "[storage] dir", base_dir)?;
        }
        if let Some(ms) = &self.sync_interval_ms {
            storage.sync_interval = doc
                .int(
                    ms,
                    "[storage] sync_interval_ms",
                    0..=MAX_SYNC_INTERVAL_MS,
                    "milliseconds",
                )
                .map(Duration::from_millis)?;
        }
        Ok(())
    }
}

impl RawTls {
    fn validate(
        self,
        doc: &Document<'_>,
        base_dir: &Path,
        tls: &mut TlsPaths,
    ) -> Result<(), ConfigError> {
        if let Some(cert) = &self.cert {
            tls.cert = doc.path(cert, "[tls] cert", base_dir)?;
        }
        if let Some(key) = &self.key {
            tls.key = doc.path(key, "[tls] key", base_dir)?;
        }
        Ok(())
    }
}

impl RawAuth {
    fn validate(
        self,
        doc: &Document<'_>,
        base_dir: &Path,
        auth: &mut AuthConfig,
    ) -> Result<(), ConfigError> {
        if let Some(keys_dir) = &self.keys_dir {
            auth.keys_dir = doc.path(keys_dir, "[auth] keys_dir", base_dir)?;
        }
        if let Some(claim) = self.topics_claim {
            if claim.get_ref().is_empty() {
                return Err(doc.bad(&claim, "[auth] topics_claim", "must not be empty"));
            }
            if self.acl_claim.is_none() && *claim.get_ref() == auth.acl_claim {
                return Err(doc.bad(
                    &claim,
                    "[auth] topics_claim",
                    "must differ from [auth] acl_claim (default \"acl\")",
                ));
            }
            auth.topics_claim = claim.into_inner();
        }
        if let Some(claim) = self.acl_claim {
            if claim.get_ref().is_empty() {
                return Err(doc.bad(&claim, "[auth] acl_claim", "must not be empty"));
            }
            if *claim.get_ref() == auth.topics_claim {
                return Err(doc.bad(
                    &claim,
                    "[auth] acl_claim",
                    "must differ from [auth] topics_claim",
                ));
            }
            auth.acl_claim = claim.into_inner();
        }
        if let Some(leeway) = &self.leeway_secs {
            auth.leeway = doc.seconds(leeway, "[auth] leeway_secs", 0)?;
        }
        if let Some(issuer) = self.issuer {
            if issuer.get_ref().is_empty() {
                return Err(doc.bad(
                    &issuer,
                    "[auth] issuer",
                    "must not be empty (leave it out to accept any issuer)",
                ));
            }
            auth.issuer = Some(issuer.into_inner());
        }
        if let Some(audience) = self.audience {
            let values = &audience.get_ref().0;
            if values.is_empty() {
                return Err(doc.bad(
                    &audience,
                    "[auth] audience",
                    "must not be an empty list (leave it out to accept any audience)",
                ));
            }
            if values.iter().any(String::is_empty) {
                return Err(doc.bad(
                    &audience,
                    "[auth] audience",
                    "must not contain an empty string",
                ));
            }
            auth.audience = Some(audience.into_inner().0);
        }
        if let Some(require_kid) = self.require_kid {
            auth.require_kid = require_kid;
        }
        if let Some(require_exp) = self.require_exp {
            auth.require_exp = require_exp;
        }
        if let Some(require_subject) = self.require_subject {
            auth.require_subject = require_subject;
        }
        if let Some(binding) = self.client_id_binding {
            auth.client_id_binding = binding.into_inner();
        }
        if let Some(lifetime) = &self.max_token_lifetime_secs {
            auth.max_token_lifetime =
                Some(doc.seconds(lifetime, "[auth] max_token_lifetime_secs", 1)?);
        }
        if let Some(names) = &self.algorithms {
            if names.get_ref().is_empty() {
                return Err(doc.bad(
                    names,
                    "[auth] algorithms",
                    "must not be an empty list (leave it out to accept every algorithm \
                     the keys support)",
                ));
            }
            let algorithms = names
                .get_ref()
                .iter()
                .map(|name| {
                    name.get_ref().parse::<Algorithm>().map_err(|_| {
                        doc.bad(
                            name,
                            "[auth] algorithms",
                            format!(
                                "unknown algorithm `{}`, expected one of {ALGORITHM_NAMES}",
                                name.get_ref()
                            ),
                        )
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            auth.algorithms = Some(algorithms);
        }
        Ok(())
    }
}

impl RawLimits {
    fn validate(self, doc: &Document<'_>, limits: &mut Limits) -> Result<(), ConfigError> {
        if let Some(secs) = &self.handshake_timeout_secs {
            limits.handshake_timeout = doc.seconds(secs, "[limits] handshake_timeout_secs", 1)?;
        }
        if let Some(secs) = &self.connect_timeout_secs {
            limits.connect_timeout = doc.seconds(secs, "[limits] connect_timeout_secs", 1)?;
        }
        if let Some(size) = &self.max_packet_size {
            limits.max_packet_size = doc.int(
                size,
                "[limits] max_packet_size",
                MIN_PACKET_SIZE..=MQTT_MAX_PACKET_SIZE,
                "bytes",
            )?;
        }
        if let Some(size) = &self.max_connect_packet_size {
            limits.max_connect_packet_size = doc.int(
                size,
                "[limits] max_connect_packet_size",
                MIN_PACKET_SIZE..=MQTT_MAX_PACKET_SIZE,
                "bytes",
            )?;
        }
        if let Some(count) = &self.max_connections {
            limits.max_connections =
                doc.int(count, "[limits] max_connections", 1..=i64::MAX, "")?;
        }
        if let Some(count) = &self.max_pending_connections {
            limits.max_pending_connections =
                doc.int(count, "[limits] max_pending_connections", 1..=i64::MAX, "")?;
        }
        if let Some(count) = &self.max_pending_per_source {
            limits.max_pending_per_source =
                doc.int(count, "[limits] max_pending_per_source", 1..=i64::MAX, "")?;
        }
        if let Some(secs) = &self.write_timeout_secs {
            limits.write_timeout = doc.seconds(secs, "[limits] write_timeout_secs", 1)?;
        }
        if let Some(size) = &self.max_property_bytes {
            limits.max_property_bytes = doc.int(
                size,
                "[limits] max_property_bytes",
                MIN_PROPERTY_BYTES..=MQTT_MAX_PACKET_SIZE,
                "bytes",
            )?;
        }
        if let Some(count) = &self.max_topic_aliases {
            limits.max_topic_aliases = doc.int(
                count,
                "[limits] max_topic_aliases",
                0..=i64::from(u16::MAX),
                "",
            )?;
        }
        if let Some(secs) = &self.max_keep_alive_secs {
            limits.max_keep_alive = Some(doc.int(
                secs,
                "[limits] max_keep_alive_secs",
                1..=i64::from(u16::MAX),
                "seconds",
            )?);
        }
        if let Some(value) = &self.memory_budget_mb {
            let key = "[limits] memory_budget_mb";
            let mb: usize = doc.int(value, key, 1..=MAX_MEMORY_BUDGET_MB, "MiB")?;
            limits.memory_budget = mb
                .checked_mul(MIB)
                .ok_or_else(|| doc.bad(value, key, "is too large for this platform"))?;
        }
        if let Some(count) = &self.max_topic_levels {
            limits.topics.max_levels = doc.int(
                count,
                "[limits] max_topic_levels",
                1..=i64::from(u16::MAX),
                "",
            )?;
        }
        if let Some(size) = &self.max_topic_bytes {
            limits.topics.max_bytes = doc.int(
                size,
                "[limits] max_topic_bytes",
                1..=i64::from(u16::MAX),
                "bytes",
            )?;
        }
        if let Some(size) = &self.max_retained_bytes_per_subject {
            limits.max_retained_bytes_per_subject = doc.int(
                size,
                "[limits] max_retained_bytes_per_subject",
                1024..=i64::MAX,
                "bytes",
            )?;
        }
        Ok(())
    }
}

impl RawSessions {
    fn validate(
        self,
        doc: &Document<'_>,
        sessions: &mut SessionSettings,
    ) -> Result<(), ConfigError> {
        if let Some(count) = &self.max_inflight {
            sessions.max_inflight = doc.int(
                count,
                "[sessions] max_inflight",
                1..=i64::from(u16::MAX),
                "",
            )?;
        }
        if let Some(count) = &self.max_queued_messages {
            sessions.max_queued_messages =
                doc.int(count, "[sessions] max_queued_messages", 1..=i64::MAX, "")?;
        }
        if let Some(size) = &self.max_queued_bytes {
            sessions.max_queued_bytes = doc.int(
                size,
                "[sessions] max_queued_bytes",
                MIN_QUEUED_BYTES..=i64::MAX,
                "bytes",
            )?;
        }
        if let Some(policy) = &self.slow_subscriber {
            sessions.slow_subscriber = *policy.get_ref();
        }
        if let Some(ms) = &self.slow_subscriber_timeout_ms {
            sessions.slow_subscriber_timeout =
                doc.milliseconds(ms, "[sessions] slow_subscriber_timeout_ms", 1)?;
        }
        if let Some(count) = &self.max_subscriptions {
            sessions.max_subscriptions =
                doc.int(count, "[sessions] max_subscriptions", 1..=i64::MAX, "")?;
        }
        if let Some(secs) = &self.max_session_expiry_secs {
            sessions.max_session_expiry = doc
                .int(
                    secs,
                    "[sessions] max_session_expiry_secs",
                    0..=MQTT_MAX_SESSION_EXPIRY_SECS,
                    "seconds",
                )
                .map(Duration::from_secs)?;
        }
        if let Some(count) = &self.max_sessions_per_subject {
            sessions.max_sessions_per_subject = doc.int(
                count,
                "[sessions] max_sessions_per_subject",
                1..=i64::MAX,
                "",
            )?;
        }
        if let Some(size) = &self.max_subscription_bytes {
            sessions.max_subscription_bytes = doc.int(
                size,
                "[sessions] max_subscription_bytes",
                1024..=i64::MAX,
                "bytes",
            )?;
        }
        Ok(())
    }
}

impl RawRouter {
    /// The error for a `[router]` table: the first old key in it, in file
    /// order, with its replacement, or the table itself when it is empty.
    fn refuse(router: &Spanned<RawRouter>, doc: &Document<'_>) -> ConfigError {
        const QUEUES: &str =
            "rumqttd's router is gone: use [sessions] max_inflight and max_queued_messages";
        const LOG: &str = "rumqttd's router is gone: use [sessions] max_queued_bytes and \
                           [limits] memory_budget_mb";
        let raw = router.get_ref();
        let first = [
            (
                &raw.max_outgoing_packet_count,
                "max_outgoing_packet_count",
                QUEUES,
            ),
            (&raw.max_segment_size, "max_segment_size", LOG),
            (&raw.max_segment_count, "max_segment_count", LOG),
        ]
        .into_iter()
        .filter_map(|(value, key, message)| value.as_ref().map(|value| (value, key, message)))
        .min_by_key(|(value, _, _)| value.span().start);
        match first {
            Some((value, key, message)) => doc.bad(value, &format!("[router] {key}"), message),
            None => doc.bad(
                router,
                "[router]",
                "the [router] table is no longer used: jwtgate's routing core is configured \
                 in [sessions]",
            ),
        }
    }
}

/// 1-based line and column (in characters) of byte offset `at` in `text`.
fn line_column(text: &str, at: usize) -> (usize, usize) {
    let mut at = at.min(text.len());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    let before = &text[..at];
    let line_start = before.rfind('\n').map_or(0, |nl| nl + 1);
    let line = before.matches('\n').count() + 1;
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

/// Names the key an error span from toml points into, as `key`,
/// `[table] key`, `[table]`, or inside an array of tables as the bridge
/// module names its own errors: `[[bridge]] cloud: forward[0].qos`.
fn key_at(text: &str, span: &Range<usize>) -> Option<String> {
    // The recoverable parser still yields the keys it could read when the
    // text has a syntax error.
    let (root, _) = DeTable::parse_recoverable(text);
    let mut path = Vec::new();
    if let Some(is_table) = find_key(root.get_ref(), span.start, &mut path) {
        return Some(render_key(&path, is_table));
    }
    // A duplicate key is not in the tree; its span still covers the key
    // itself, which we recognise by what follows it.
    let word = text.get(span.clone())?;
    let after = text.get(span.end..)?.trim_start_matches([' ', '\t']);
    let is_bare_key = !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    (is_bare_key && after.starts_with(['=', '.', ']'])).then(|| word.to_owned())
}

/// Depth-first search for the innermost key whose name or value covers
/// `at`, filling `path`; returns whether that key holds a table.
fn find_key(table: &DeTable<'_>, at: usize, path: &mut Vec<String>) -> Option<bool> {
    let covers = |span: Range<usize>| span.start <= at && at <= span.end;
    for (key, value) in table.iter() {
        path.push(key.get_ref().to_string());
        // A `[table]` header's span covers only the header, so look inside
        // before deciding the table itself is meant.
        if let DeValue::Table(inner) = value.get_ref() {
            if let Some(found) = find_key(inner, at, path) {
                return Some(found);
            }
        }
        // The tables of an array (`[[bridge]]`, `forward = [{...}]`): an
        // element is named by its index, and by its `name` when it has one.
        if let DeValue::Array(items) = value.get_ref() {
            for (i, item) in items.iter().enumerate() {
                let DeValue::Table(inner) = item.get_ref() else {
                    continue;
                };
                let name = inner.get("name").and_then(|n| match n.get_ref() {
                    DeValue::String(name) => Some(name.to_string()),
                    _ => None,
                });
                path.push(match name {
                    Some(name) => format!("[{i}]={name}"),
                    None => format!("[{i}]"),
                });
                if let Some(found) = find_key(inner, at, path) {
                    return Some(found);
                }
                path.pop();
            }
        }
        if covers(key.span()) || covers(value.span()) {
            return Some(value.get_ref().is_table());
        }
        path.pop();
    }
    None
}

fn render_key(path: &[String], is_table: bool) -> String {
    // Inside an array of tables: `[[table]] name: key[1].key`.
    if let [table, element, rest @ ..] = path {
        if let Some(element) = element.strip_prefix('[') {
            let (index, name) = element.split_once(']').unwrap_or((element, ""));
            let label = name
                .strip_prefix('=')
                .map_or_else(|| format!("#{index}"), str::to_owned);
            let mut inner = String::new();
            for segment in rest {
                match segment.strip_prefix('[') {
                    Some(index) => {
                        let index = index.split_once(']').map_or(index, |(i, _)| i);
                        inner.push_str(&format!("[{index}]"));
                    }
                    None => {
                        if !inner.is_empty() {
                            inner.push('.');
                        }
                        inner.push_str(segment);
                    }
                }
            }
            return format!("[[{table}]] {label}: {inner}");
        }
    }
    match path {
        _ if is_table => format!("[{}]", path.join(".")),
        [key] => key.clone(),
        [tables @ .., key] => format!("[{}] {key}", tables.join(".")),
        [] => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORIGIN: &str = "conf/jwtgate.toml";
    const BASE: &str = "/srv/jwtgate";

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new(ORIGIN), Path::new(BASE))
    }

    /// Parses `text`, which must fail, and returns the error's parts and
    /// its rendered form.
    fn invalid(text: &str) -> (usize, usize, Option<String>, String, String) {
        match parse(text) {
            Ok(config) => panic!("expected an error, got {config:?}"),
            Err(err @ ConfigError::Invalid { .. }) => {
                let shown = err.to_string();
                let ConfigError::Invalid {
                    path,
                    line,
                    column,
                    key,
                    message,
                } = err
                else {
                    unreachable!()
                };
                assert_eq!(path, Path::new(ORIGIN));
                (line, column, key, message, shown)
            }
            Err(err) => panic!("expected ConfigError::Invalid, got {err:?}"),
        }
    }

    /// Checks that each `(text, line, column, key, part of the message)`
    /// fails with that position, key and message, shown as
    /// `file:line:column: key: message`.
    fn assert_invalid_cases(cases: &[(&str, usize, usize, &str, &str)]) {
        for &(text, line, column, key, fragment) in cases {
            let (got_line, got_column, got_key, message, shown) = invalid(text);
            assert_eq!(
                (got_line, got_column),
                (line, column),
                "position for {text:?}"
            );
            assert_eq!(got_key.as_deref(), Some(key), "key for {text:?}");
            assert!(message.contains(fragment), "{text:?} gave {message:?}");
            let prefix = format!("{ORIGIN}:{line}:{column}: {key}: ");
            assert!(shown.starts_with(&prefix), "{text:?} shown as {shown:?}");
        }
    }

    const FULL_EXAMPLE: &str = r#"
listen = "0.0.0.0:8883"          # TLS only; there is no plaintext listener. default "0.0.0.0:8883"
[tls]
cert = "keys/tls/server.crt"     # PEM chain; default "keys/tls/server.crt"
key  = "keys/tls/server.key"     # PEM private key (PKCS#8, PKCS#1 or SEC1); default "keys/tls/server.key"
[auth]
keys_dir = "keys"                # default "keys"
topics_claim = "topics"          # default "topics"; must be non-empty
acl_claim = "acl"                # EMQX-style ACL claim (object or rule list); default "acl"
leeway_secs = 5                  # clock-skew allowance for exp/nbf; default 5, 0 allowed
issuer = "https://tenant.example/"   # optional; enforced when set
audience = "api"                 # optional; a string OR a list of strings; enforced when set; empty list is an error
require_kid = false              # default false (the seed's HS256 tokens carry no kid)
require_exp = true               # default true
require_subject = true           # default true: refuse tokens without a non-empty sub
max_token_lifetime_secs = 86400  # optional cap on exp - iat; must be > 0
algorithms = ["HS256", "RS256"]  # optional allow-list; each must be a jsonwebtoken::Algorithm name; empty list is an error
deny_publish = "drop"            # "drop" (default) | "disconnect": what happens to a connection after a refused PUBLISH
client_id_binding = "claim_or_subject"  # default; "none" lets ${clientid} take any client id
[limits]
handshake_timeout_secs = 10      # TLS handshake timeout; default 10; must be > 0
connect_timeout_secs = 10        # time from TLS up to a CONNECT packet; default 10; must be > 0
max_packet_size = 1048576        # bytes, default 1 MiB; minimum 1024, maximum 268435455 (MQTT's limit)
max_connect_packet_size = 16384  # bytes, default 16 KiB; 1024 to 268435455, capped by max_packet_size
max_connections = 10000          # authenticated connections; default 10000; must be > 0
max_pending_connections = 1024   # not yet authenticated; default 1024; must be > 0
max_pending_per_source = 64      # not yet authenticated, per IPv4 address or IPv6 /64; default 64; must be > 0
write_timeout_secs = 30          # a client that reads nothing for this long is disconnected; default 30; must be > 0
max_property_bytes = 65536       # MQTT 5 property bytes per packet; default 64 KiB; 256 to 268435455
max_topic_aliases = 64           # aliases granted per MQTT 5 client; default 64; 0 grants none
max_keep_alive_secs = 600        # optional cap on the client's keep-alive; 1 to 65535
memory_budget_mb = 512           # messages in memory, gateway-wide; default 512; 1 to 1048576
max_topic_levels = 128           # levels in a topic or filter; default 128; 1 to 65535
max_topic_bytes = 4096           # bytes in a topic or filter; default 4096; 1 to 65535
max_retained_bytes_per_subject = 8388608  # retained messages one token subject may hold; default 8 MiB; minimum 1024
[sessions]                       # jwtgate's routing core
max_inflight = 1000              # unacknowledged QoS 1/2 per client; default 1000; 1 to 65535
max_queued_messages = 1000       # per session; default 1000; must be >= 1
max_queued_bytes = 8388608       # per session; default 8 MiB; minimum 1024
slow_subscriber = "disconnect"   # "disconnect" (default) | "drop"
slow_subscriber_timeout_ms = 2000  # default 2000; must be > 0
max_subscriptions = 100          # per session; default 100; must be > 0
max_session_expiry_secs = 86400  # default 86400; 0 allowed
max_sessions_per_subject = 8     # sessions (connected and parked) per token subject; default 8; must be > 0
max_subscription_bytes = 262144  # subscriptions of one session, in bytes; default 256 KiB; minimum 1024
[storage]                        # retained messages, parked sessions, bridge queues
dir = "state"                    # default "state" next to the config; created if missing
sync_interval_ms = 1000          # what a power cut may lose; default 1000; 0 forces every commit; at most 60000
[log]
format = "text"                  # "text" (default) | "json": one JSON object per line; --log-format overrides
[metrics]                        # Prometheus text format at http://LISTEN/metrics; off by default
listen = "127.0.0.1:9883"        # a loopback address unless allow_remote = true
allow_remote = false             # default false
[[bridge]]                       # one table per uplink; none by default
name = "cloud"                   # required; letters, digits, - and _; unique
remote = "mqtts://broker.example:8883"  # required; mqtts:// only, except a loopback host; port default 8883
ca_file = "keys/tls/uplink-ca.crt"      # optional; the system roots otherwise
client_id = "site-42"            # required
username = "site-42"             # optional
password_file = "keys/uplink.password"  # optional; or token_file, re-read on every reconnect and when it changes
# cert_file = "..." and key_file = "...": a client certificate, both or neither
protocol = 5                     # 4 (MQTT 3.1.1) or 5 (default)
keep_alive_secs = 30             # default 30; 5 to 65535
clean_start = false              # default false: keep a session at the remote, so commands sent while the link is down arrive
session_expiry_secs = 604800     # MQTT 5: how long the remote keeps it; default 604800 (7 days); 4294967295 never ends
forward = [ { local = "sensors/#", remote_prefix = "site-42/", qos = 1 } ]   # local -> remote; qos 0 or 1 (default)
subscribe = [ { remote = "site-42/cmd/#", strip_prefix = "site-42/", local_prefix = "", qos = 1 } ]  # remote -> local
max_queue_mb = 512               # disk budget of the store-and-forward queue; default 512; the oldest go past it
"#;

    #[test]
    fn full_example_parses_to_the_documented_values() {
        let config = parse(FULL_EXAMPLE).expect("the documented example is valid");
        let base = Path::new(BASE);
        assert_eq!(
            config,
            Config {
                source: Some(PathBuf::from(ORIGIN)),
                listen: "0.0.0.0:8883".parse().expect("literal address"),
                tls: TlsPaths {
                    cert: base.join("keys/tls/server.crt"),
                    key: base.join("keys/tls/server.key"),
                },
                auth: AuthConfig {
                    keys_dir: base.join("keys"),
                    topics_claim: "topics".to_owned(),
                    acl_claim: "acl".to_owned(),
                    leeway: Duration::from_secs(5),
                    issuer: Some("https://tenant.example/".to_owned()),
                    audience: Some(vec!["api".to_owned()]),
                    require_kid: false,
                    require_exp: true,
                    require_subject: true,
                    max_token_lifetime: Some(Duration::from_secs(86_400)),
                    algorithms: Some(vec![Algorithm::HS256, Algorithm::RS256]),
                    deny_publish: DenyPublish::Drop,
                    client_id_binding: ClientIdBinding::ClaimOrSubject,
                },
                limits: Limits {
                    handshake_timeout: Duration::from_secs(10),
                    connect_timeout: Duration::from_secs(10),
                    max_packet_size: 1_048_576,
                    max_connect_packet_size: 16_384,
                    max_connections: 10_000,
                    max_pending_connections: 1024,
                    max_pending_per_source: 64,
                    write_timeout: Duration::from_secs(30),
                    max_property_bytes: 65_536,
                    max_topic_aliases: 64,
                    max_keep_alive: Some(600),
                    memory_budget: 512 * 1024 * 1024,
                    topics: TopicLimits {
                        max_levels: 128,
                        max_bytes: 4096,
                    },
                    max_retained_bytes_per_subject: 8 * 1024 * 1024,
                },
                sessions: SessionSettings {
                    max_inflight: 1000,
                    max_queued_messages: 1000,
                    max_queued_bytes: 8_388_608,
                    slow_subscriber: SlowSubscriber::Disconnect,
                    slow_subscriber_timeout: Duration::from_millis(2000),
                    max_subscriptions: 100,
                    max_session_expiry: Duration::from_secs(86_400),
                    max_sessions_per_subject: 8,
                    max_subscription_bytes: 256 * 1024,
                },
                storage: StorageConfig {
                    dir: base.join("state"),
                    sync_interval: Duration::from_secs(1),
                },
                bridges: vec![BridgeConfig {
                    name: "cloud".to_owned(),
                    remote: Remote {
                        host: "broker.example".to_owned(),
                        port: 8883,
                        transport: Transport::Tls,
                    },
                    ca_file: Some(base.join("keys/tls/uplink-ca.crt")),
                    client_id: "site-42".to_owned(),
                    username: Some("site-42".to_owned()),
                    credential: Some(Credential::PasswordFile(base.join("keys/uplink.password"))),
                    client_cert: None,
                    protocol: Protocol::V5,
                    keep_alive: Duration::from_secs(30),
                    clean_start: false,
                    session_expiry_secs: 604_800,
                    forward: vec![ForwardRule {
                        local: crate::mqtt::TopicFilter::parse("sensors/#")
                            .expect("literal filter"),
                        remote_prefix: "site-42/".to_owned(),
                        qos: crate::mqtt::QoS::AtLeastOnce,
                    }],
                    subscribe: vec![SubscribeRule {
                        remote: crate::mqtt::TopicFilter::parse("site-42/cmd/#")
                            .expect("literal filter"),
                        strip_prefix: "site-42/".to_owned(),
                        local_prefix: String::new(),
                        qos: crate::mqtt::QoS::AtLeastOnce,
                    }],
                    max_queue_bytes: 512 * 1024 * 1024,
                }],
                log: LogConfig {
                    format: LogFormat::Text,
                },
                metrics: MetricsConfig {
                    listen: Some(SocketAddr::from(([127, 0, 0, 1], 9883))),
                },
            }
        );
    }

    #[test]
    fn the_documented_example_matches_the_defaults_where_it_states_them() {
        let example = parse(FULL_EXAMPLE).expect("the documented example is valid");
        let defaults = Config::defaults(Path::new(BASE));
        assert_eq!(example.listen, defaults.listen);
        assert_eq!(example.tls, defaults.tls);
        // max_keep_alive_secs is the one optional key the example sets.
        assert_eq!(
            example.limits,
            Limits {
                max_keep_alive: Some(600),
                ..defaults.limits
            }
        );
        assert_eq!(example.sessions, defaults.sessions);
        assert_eq!(example.storage, defaults.storage);
        assert_eq!(example.auth.keys_dir, defaults.auth.keys_dir);
        assert_eq!(example.auth.leeway, defaults.auth.leeway);
        assert_eq!(example.auth.require_subject, defaults.auth.require_subject);
        assert_eq!(
            example.auth.client_id_binding,
            defaults.auth.client_id_binding
        );
        // The bridge's optional keys the example states are their defaults.
        let minimal = parse(
            "[[bridge]]\nname = \"b\"\nremote = \"mqtts://h\"\nclient_id = \"c\"\nforward = [ { local = \"a\" } ]\n",
        )
        .expect("a minimal bridge");
        let (example, minimal) = (&example.bridges[0], &minimal.bridges[0]);
        assert_eq!(example.clean_start, minimal.clean_start);
        assert_eq!(example.session_expiry_secs, minimal.session_expiry_secs);
        assert_eq!(example.keep_alive, minimal.keep_alive);
        assert_eq!(example.protocol, minimal.protocol);
        assert_eq!(example.max_queue_bytes, minimal.max_queue_bytes);
    }

    #[test]
    fn empty_file_gives_the_defaults() {
        let config = parse("").expect("an empty file is valid");
        assert_eq!(
            config,
            Config {
                source: Some(PathBuf::from(ORIGIN)),
                ..Config::defaults(Path::new(BASE))
            }
        );
        // Spot-check the defaults themselves rather than trusting `defaults`.
        assert_eq!(config.listen, SocketAddr::from(([0, 0, 0, 0], 8883)));
        assert_eq!(
            config.tls.cert,
            Path::new("/srv/jwtgate/keys/tls/server.crt")
        );
        assert_eq!(
            config.tls.key,
            Path::new("/srv/jwtgate/keys/tls/server.key")
        );
        assert_eq!(config.auth.keys_dir, Path::new("/srv/jwtgate/keys"));
        assert_eq!(config.auth.topics_claim, "topics");
        assert_eq!(config.auth.leeway, Duration::from_secs(5));
        assert!(!config.auth.require_kid);
        assert!(config.auth.require_exp);
        assert!(config.auth.require_subject);
        assert_eq!(config.auth.issuer, None);
        assert_eq!(config.auth.audience, None);
        assert_eq!(config.auth.max_token_lifetime, None);
        assert_eq!(config.auth.algorithms, None);
        assert_eq!(config.auth.deny_publish, DenyPublish::Drop);
        assert_eq!(config.limits.max_packet_size, 1024 * 1024);
        assert_eq!(config.limits.max_property_bytes, 65_536);
        assert_eq!(config.limits.max_topic_aliases, 64);
        assert_eq!(config.limits.max_keep_alive, None);
        assert_eq!(config.limits.memory_budget, 512 * 1024 * 1024);
        assert_eq!(config.sessions.max_inflight, 1000);
        assert_eq!(config.sessions.max_queued_messages, 1000);
        assert_eq!(config.sessions.max_queued_bytes, 8 * 1024 * 1024);
        assert_eq!(config.sessions.slow_subscriber, SlowSubscriber::Disconnect);
        assert_eq!(
            config.sessions.slow_subscriber_timeout,
            Duration::from_secs(2)
        );
        assert_eq!(config.sessions.max_subscriptions, 100);
        assert_eq!(
            config.sessions.max_session_expiry,
            Duration::from_secs(86_400)
        );
    }

    #[test]
    fn empty_tables_and_comments_are_valid() {
        let config = parse("# nothing here\n[tls]\n[auth]\n[limits]\n[sessions]\n")
            .expect("empty tables are valid");
        assert_eq!(config.limits, Limits::default());
        assert_eq!(config.sessions, SessionSettings::default());
    }

    #[test]
    fn defaults_have_no_source() {
        let config = Config::defaults(Path::new("/var/lib/jwtgate"));
        assert_eq!(config.source, None);
        assert_eq!(config.auth.keys_dir, Path::new("/var/lib/jwtgate/keys"));
        assert_eq!(
            config.tls.cert,
            Path::new("/var/lib/jwtgate/keys/tls/server.crt")
        );
    }

    #[test]
    fn relative_paths_resolve_against_the_config_dir_and_absolute_ones_stay() {
        let absolute = std::env::temp_dir().join("certs").join("gateway.pem");
        let text = format!(
            "[tls]\ncert = '{}'\nkey = 'private/tls.key'\n[auth]\nkeys_dir = '../shared/keys'\n",
            absolute.display()
        );
        let config = parse(&text).expect("valid paths");
        assert_eq!(config.tls.cert, absolute);
        assert_eq!(config.tls.key, Path::new("/srv/jwtgate/private/tls.key"));
        assert_eq!(
            config.auth.keys_dir,
            Path::new("/srv/jwtgate/../shared/keys")
        );
    }

    #[test]
    fn every_key_can_be_changed() {
        let config = parse(
            r#"
listen = "[::1]:9883"
[auth]
topics_claim = "mqtt_topics"
acl_claim = "mqtt_acl"
leeway_secs = 0
require_kid = true
require_exp = false
require_subject = false
algorithms = ["EdDSA", "ES256", "PS512"]
deny_publish = "disconnect"
client_id_binding = "none"
[limits]
handshake_timeout_secs = 3
connect_timeout_secs = 7
max_packet_size = 268435455
max_connect_packet_size = 1024
max_connections = 1
max_pending_connections = 1
max_pending_per_source = 1
write_timeout_secs = 1
max_property_bytes = 256
max_topic_aliases = 0
max_keep_alive_secs = 65535
memory_budget_mb = 3
[sessions]
max_inflight = 65535
max_queued_messages = 1
max_queued_bytes = 1024
slow_subscriber = "drop"
slow_subscriber_timeout_ms = 1
max_subscriptions = 1
max_session_expiry_secs = 0
"#,
        )
        .expect("valid config");
        assert_eq!(
            config.listen,
            SocketAddr::from(([0, 0, 0, 0, 0, 0, 0, 1], 9883))
        );
        assert_eq!(config.auth.topics_claim, "mqtt_topics");
        assert_eq!(config.auth.acl_claim, "mqtt_acl");
        assert_eq!(config.auth.leeway, Duration::ZERO);
        assert!(config.auth.require_kid);
        assert!(!config.auth.require_exp);
        assert!(!config.auth.require_subject);
        assert_eq!(
            config.auth.algorithms,
            Some(vec![Algorithm::EdDSA, Algorithm::ES256, Algorithm::PS512])
        );
        assert_eq!(config.auth.deny_publish, DenyPublish::Disconnect);
        assert_eq!(config.auth.client_id_binding, ClientIdBinding::Unchecked);
        assert_eq!(
            config.limits,
            Limits {
                handshake_timeout: Duration::from_secs(3),
                connect_timeout: Duration::from_secs(7),
                max_packet_size: 268_435_455,
                max_connect_packet_size: 1024,
                max_connections: 1,
                max_pending_connections: 1,
                max_pending_per_source: 1,
                write_timeout: Duration::from_secs(1),
                max_property_bytes: 256,
                max_topic_aliases: 0,
                max_keep_alive: Some(65_535),
                memory_budget: 3 * 1024 * 1024,
                ..Limits::default()
            }
        );
        assert_eq!(
            config.sessions,
            SessionSettings {
                max_inflight: 65_535,
                max_queued_messages: 1,
                max_queued_bytes: 1024,
                slow_subscriber: SlowSubscriber::Drop,
                slow_subscriber_timeout: Duration::from_millis(1),
                max_subscriptions: 1,
                max_session_expiry: Duration::ZERO,
                ..SessionSettings::default()
            }
        );
    }

    #[test]
    fn audience_may_be_a_string_or_a_list() {
        let one = parse("[auth]\naudience = \"api\"\n").expect("string audience");
        assert_eq!(one.auth.audience, Some(vec!["api".to_owned()]));

        let many = parse("[auth]\naudience = [\"api\", \"mqtt\"]\n").expect("list audience");
        assert_eq!(
            many.auth.audience,
            Some(vec!["api".to_owned(), "mqtt".to_owned()])
        );
    }

    #[test]
    fn audience_errors_name_the_key() {
        let (line, _, key, message, _) = invalid("\n[auth]\naudience = []\n");
        assert_eq!(line, 3);
        assert_eq!(key.as_deref(), Some("[auth] audience"));
        assert!(message.contains("empty list"), "{message}");

        let (line, column, key, message, _) = invalid("[auth]\naudience = [\"api\", 7]\n");
        assert_eq!((line, column), (2, 20));
        assert_eq!(key.as_deref(), Some("[auth] audience"));
        assert!(message.contains("expected a string"), "{message}");

        let (_, _, key, message, _) = invalid("[auth]\naudience = 7\n");
        assert_eq!(key.as_deref(), Some("[auth] audience"));
        assert!(
            message.contains("expected a string or a list of strings"),
            "{message}"
        );
    }

    #[test]
    fn log_format_is_text_or_json() {
        assert_eq!(
            parse("[log]\nformat = \"json\"\n")
                .expect("json")
                .log
                .format,
            LogFormat::Json
        );
        let err = parse("[log]\nformat = \"yaml\"\n").expect_err("yaml is refused");
        let text = err.to_string();
        assert!(text.contains(":2:10: [log] format"), "{text}");
        assert!(parse("[log]\nlevel = \"debug\"\n").is_err());
    }

    #[test]
    fn metrics_are_off_unless_listen_is_set_and_remote_only_when_allowed() {
        assert_eq!(parse("").unwrap().metrics.listen, None);
        let local = parse("[metrics]\nlisten = \"[::1]:9883\"\n").unwrap();
        assert_eq!(local.metrics.listen, Some("[::1]:9883".parse().unwrap()));
        let remote = parse("[metrics]\nlisten = \"0.0.0.0:9883\"\nallow_remote = true\n").unwrap();
        assert_eq!(remote.metrics.listen, Some("0.0.0.0:9883".parse().unwrap()));
    }

    #[test]
    fn storage_takes_a_directory_and_a_bounded_sync_interval() {
        let config = parse("[storage]\ndir = \"/var/lib/jwtgate\"\nsync_interval_ms = 0\n")
            .expect("valid storage table");
        assert_eq!(
            config.storage,
            StorageConfig {
                dir: PathBuf::from("/var/lib/jwtgate"),
                sync_interval: Duration::ZERO,
            }
        );
        assert_invalid_cases(&[
            (
                "[storage]\nsync_interval_ms = 60001\n",
                2,
                20,
                "[storage] sync_interval_ms",
                "at most 60000 milliseconds",
            ),
            (
                "[storage]\nsync_interval_ms = -1\n",
                2,
                20,
                "[storage] sync_interval_ms",
                "must not be negative",
            ),
            (
                "[storage]\ndir = \"\"\n",
                2,
                7,
                "[storage] dir",
                "must not be empty",
            ),
        ]);
    }

    #[test]
    fn unknown_top_level_key_names_file_line_and_key() {
        let (line, column, key, message, shown) =
            invalid("listen = \"0.0.0.0:8883\"\n\nlisten_plain = \"0.0.0.0:1883\"\n");
        assert_eq!((line, column), (3, 1));
        assert_eq!(key.as_deref(), Some("listen_plain"));
        assert!(
            message.contains("unknown field `listen_plain`"),
            "{message}"
        );
        assert!(
            shown.starts_with("conf/jwtgate.toml:3:1: listen_plain: unknown field"),
            "{shown}"
        );
    }

    #[test]
    fn unknown_key_in_auth_names_file_line_and_table() {
        let (line, column, key, message, shown) = invalid("[auth]\nleeway_secs = 5\nleeway = 5\n");
        assert_eq!((line, column), (3, 1));
        assert_eq!(key.as_deref(), Some("[auth] leeway"));
        assert!(message.contains("unknown field `leeway`"), "{message}");
        assert!(
            message.contains("`leeway_secs`"),
            "lists the valid keys: {message}"
        );
        assert!(
            shown.starts_with("conf/jwtgate.toml:3:1: [auth] leeway: unknown field `leeway`"),
            "{shown}"
        );
    }

    #[test]
    fn unknown_key_in_a_bridge_rule_names_the_bridge_and_the_rule() {
        let text = "[[bridge]]\nname = \"cloud\"\nhost = \"central\"\nclient_id = \"site\"\n\
                    forward = [ { local = \"a/#\" }, { local = \"b/#\", bogus = 1 } ]\n";
        let (line, _, key, message, shown) = invalid(text);
        assert_eq!(line, 5);
        assert_eq!(
            key.as_deref(),
            Some("[[bridge]] cloud: forward[1].bogus"),
            "{shown}"
        );
        assert!(message.contains("unknown field `bogus`"), "{message}");
        let (_, _, key, _, _) = invalid("[[bridge]]\nname = \"cloud\"\nbogus = 1\n");
        assert_eq!(key.as_deref(), Some("[[bridge]] cloud: bogus"));
    }

    #[test]
    fn unknown_table_is_named() {
        let (line, _, key, message, _) = invalid("[auth]\n[plaintext]\nlisten = 1\n");
        assert_eq!(line, 2);
        assert_eq!(key.as_deref(), Some("[plaintext]"));
        assert!(message.contains("unknown field `plaintext`"), "{message}");
    }

    #[test]
    fn bad_values_name_the_key_and_line() {
        // (text, line, column, key, part of the message)
        let cases = [
            (
                "[metrics]\nlisten = \"0.0.0.0:9883\"\n",
                2,
                10,
                "[metrics] listen",
                "is not a loopback address",
            ),
            (
                "[metrics]\nlisten = \"localhost:9883\"\n",
                2,
                10,
                "[metrics] listen",
                "is not an IP address and port",
            ),
            (
                "[sessions]\nmax_queued_bytes = 10\n",
                2,
                20,
                "[sessions] max_queued_bytes",
                "must be at least 1024 bytes",
            ),
            (
                "[limits]\nmax_connect_packet_size = 100\n",
                2,
                27,
                "[limits] max_connect_packet_size",
                "must be at least 1024 bytes",
            ),
            (
                "[limits]\nmax_pending_per_source = 0\n",
                2,
                26,
                "[limits] max_pending_per_source",
                "must be greater than 0",
            ),
            (
                "[limits]\nwrite_timeout_secs = 0\n",
                2,
                22,
                "[limits] write_timeout_secs",
                "must be greater than 0",
            ),
            (
                "[auth]\n\nleeway_secs = -1\n",
                3,
                15,
                "[auth] leeway_secs",
                "must not be negative",
            ),
            (
                "[auth]\ndeny_publish = \"maybe\"\n",
                2,
                16,
                "[auth] deny_publish",
                "unknown variant `maybe`, expected `drop` or `disconnect`",
            ),
            (
                "[auth]\n\nclient_id_binding = \"subject\"\n",
                3,
                21,
                "[auth] client_id_binding",
                "unknown variant `subject`, expected `claim_or_subject` or `none`",
            ),
            (
                "[auth]\nalgorithms = [\"HS256\", \"HS999\"]\n",
                2,
                24,
                "[auth] algorithms",
                "unknown algorithm `HS999`",
            ),
            (
                "listen = \"nonsense\"\n",
                1,
                10,
                "listen",
                "`nonsense` is not an IP address and port",
            ),
            (
                "[limits]\nmax_packet_size = 1023\n",
                2,
                19,
                "[limits] max_packet_size",
                "must be at least 1024 bytes",
            ),
            (
                "[limits]\nmax_packet_size = 268435456\n",
                2,
                19,
                "[limits] max_packet_size",
                "must be at most 268435455 bytes",
            ),
            (
                "[limits]\nhandshake_timeout_secs = 0\n",
                2,
                26,
                "[limits] handshake_timeout_secs",
                "must be greater than 0",
            ),
            (
                "[limits]\nconnect_timeout_secs = 0\n",
                2,
                24,
                "[limits] connect_timeout_secs",
                "must be greater than 0",
            ),
            (
                "[limits]\nmax_connections = 0\n",
                2,
                19,
                "[limits] max_connections",
                "must be greater than 0",
            ),
            (
                "[sessions]\nmax_inflight = 0\n",
                2,
                16,
                "[sessions] max_inflight",
                "must be greater than 0",
            ),
            (
                "[sessions]\nmax_subscriptions = 0\n",
                2,
                21,
                "[sessions] max_subscriptions",
                "must be greater than 0",
            ),
            (
                "[auth]\nmax_token_lifetime_secs = 0\n",
                2,
                27,
                "[auth] max_token_lifetime_secs",
                "must be greater than 0",
            ),
            (
                "[auth]\ntopics_claim = \"\"\n",
                2,
                16,
                "[auth] topics_claim",
                "must not be empty",
            ),
            (
                "[auth]\nacl_claim = \"\"\n",
                2,
                13,
                "[auth] acl_claim",
                "must not be empty",
            ),
            (
                "[auth]\nacl_claim = \"topics\"\n",
                2,
                13,
                "[auth] acl_claim",
                "must differ from [auth] topics_claim",
            ),
            (
                "[auth]\nissuer = \"\"\n",
                2,
                10,
                "[auth] issuer",
                "must not be empty",
            ),
            (
                "[auth]\nalgorithms = []\n",
                2,
                14,
                "[auth] algorithms",
                "must not be an empty list",
            ),
            (
                "[tls]\ncert = \"\"\n",
                2,
                8,
                "[tls] cert",
                "must not be empty",
            ),
            (
                "[auth]\nleeway_secs = \"5\"\n",
                2,
                15,
                "[auth] leeway_secs",
                "invalid type: string \"5\"",
            ),
            (
                "[auth]\nrequire_kid = \"yes\"\n",
                2,
                15,
                "[auth] require_kid",
                "invalid type: string \"yes\", expected a boolean",
            ),
            (
                "[auth]\nleeway_secs = 5\nrequire_subject = 1\n",
                3,
                19,
                "[auth] require_subject",
                "invalid type: integer `1`, expected a boolean",
            ),
            ("auth = 3\n", 1, 8, "auth", "expected the [auth] table"),
            (
                "auth = { leeway_secs = -1 }\n",
                1,
                24,
                "[auth] leeway_secs",
                "must not be negative",
            ),
            (
                "auth.leeway_secs = -1\n",
                1,
                20,
                "[auth] leeway_secs",
                "must not be negative",
            ),
        ];
        assert_invalid_cases(&cases);
    }

    #[test]
    fn new_limits_and_sessions_keys_are_bounded() {
        // (text, line, column, key, part of the message)
        let cases = [
            (
                "[limits]\nmax_property_bytes = 255\n",
                2,
                22,
                "[limits] max_property_bytes",
                "must be at least 256 bytes",
            ),
            (
                "[limits]\nmax_property_bytes = 268435456\n",
                2,
                22,
                "[limits] max_property_bytes",
                "must be at most 268435455 bytes",
            ),
            (
                "[limits]\nmax_topic_aliases = -1\n",
                2,
                21,
                "[limits] max_topic_aliases",
                "must not be negative",
            ),
            (
                "[limits]\nmax_topic_aliases = 65536\n",
                2,
                21,
                "[limits] max_topic_aliases",
                "must be at most 65535",
            ),
            (
                "[limits]\nmax_keep_alive_secs = 0\n",
                2,
                23,
                "[limits] max_keep_alive_secs",
                "must be greater than 0",
            ),
            (
                "[limits]\nmax_keep_alive_secs = 65536\n",
                2,
                23,
                "[limits] max_keep_alive_secs",
                "must be at most 65535 seconds",
            ),
            (
                "[limits]\nmemory_budget_mb = 0\n",
                2,
                20,
                "[limits] memory_budget_mb",
                "must be greater than 0",
            ),
            (
                "[limits]\nmemory_budget_mb = 1048577\n",
                2,
                20,
                "[limits] memory_budget_mb",
                "must be at most 1048576 MiB",
            ),
            (
                "[sessions]\nmax_inflight = 65536\n",
                2,
                16,
                "[sessions] max_inflight",
                "must be at most 65535",
            ),
            (
                "[sessions]\nmax_queued_messages = 0\n",
                2,
                23,
                "[sessions] max_queued_messages",
                "must be greater than 0",
            ),
            (
                "[sessions]\nmax_queued_bytes = 1023\n",
                2,
                20,
                "[sessions] max_queued_bytes",
                "must be at least 1024 bytes",
            ),
            (
                "[sessions]\nslow_subscriber_timeout_ms = 0\n",
                2,
                30,
                "[sessions] slow_subscriber_timeout_ms",
                "must be greater than 0",
            ),
            (
                "[sessions]\nmax_session_expiry_secs = -1\n",
                2,
                27,
                "[sessions] max_session_expiry_secs",
                "must not be negative",
            ),
            (
                "[sessions]\nmax_session_expiry_secs = 4294967296\n",
                2,
                27,
                "[sessions] max_session_expiry_secs",
                "must be at most 4294967295 seconds",
            ),
            (
                "[sessions]\nslow_subscriber = \"block\"\n",
                2,
                19,
                "[sessions] slow_subscriber",
                "unknown variant `block`, expected `disconnect` or `drop`",
            ),
            (
                "[sessions]\nslow_subscriber = true\n",
                2,
                19,
                "[sessions] slow_subscriber",
                "wanted string or table",
            ),
            (
                "[sessions]\nmax_inflight = \"1000\"\n",
                2,
                16,
                "[sessions] max_inflight",
                "invalid type: string \"1000\"",
            ),
            (
                "sessions = 3\n",
                1,
                12,
                "sessions",
                "expected the [sessions] table",
            ),
        ];
        assert_invalid_cases(&cases);
    }

    #[test]
    fn new_limits_and_sessions_keys_accept_their_bounds() {
        let low = parse(
            "[limits]\nmax_property_bytes = 256\nmax_topic_aliases = 0\nmax_keep_alive_secs = 1\n\
             memory_budget_mb = 1\n[sessions]\nmax_inflight = 1\nmax_queued_bytes = 1024\n\
             max_session_expiry_secs = 0\n",
        )
        .expect("lowest values are valid");
        assert_eq!(low.limits.max_property_bytes, 256);
        assert_eq!(low.limits.max_topic_aliases, 0);
        assert_eq!(low.limits.max_keep_alive, Some(1));
        assert_eq!(low.limits.memory_budget, 1024 * 1024);
        assert_eq!(low.sessions.max_inflight, 1);
        assert_eq!(low.sessions.max_queued_bytes, 1024);
        assert_eq!(low.sessions.max_session_expiry, Duration::ZERO);

        let high = parse(
            "[limits]\nmax_property_bytes = 268435455\nmax_topic_aliases = 65535\n\
             max_keep_alive_secs = 65535\n[sessions]\nmax_inflight = 65535\n\
             max_queued_messages = 1000000\nslow_subscriber_timeout_ms = 60000\n\
             max_subscriptions = 100000\nmax_session_expiry_secs = 4294967295\n",
        )
        .expect("highest values are valid");
        assert_eq!(high.limits.max_property_bytes, 268_435_455);
        assert_eq!(high.limits.max_topic_aliases, u16::MAX);
        assert_eq!(high.limits.max_keep_alive, Some(u16::MAX));
        assert_eq!(high.sessions.max_inflight, u16::MAX);
        assert_eq!(high.sessions.max_queued_messages, 1_000_000);
        assert_eq!(
            high.sessions.slow_subscriber_timeout,
            Duration::from_secs(60)
        );
        assert_eq!(high.sessions.max_subscriptions, 100_000);
        assert_eq!(
            high.sessions.max_session_expiry,
            Duration::from_secs(u64::from(u32::MAX))
        );
    }

    #[test]
    fn memory_budget_is_stored_in_bytes() {
        let config = parse("[limits]\nmemory_budget_mb = 64\n").expect("valid budget");
        assert_eq!(config.limits.memory_budget, 64 * 1024 * 1024);

        let largest = parse("[limits]\nmemory_budget_mb = 1048576\n");
        if cfg!(target_pointer_width = "64") {
            let config = largest.expect("1 TiB fits in 64 bits");
            assert_eq!(config.limits.memory_budget, 1 << 40);
        } else {
            let (line, column, key, message, _) = invalid("[limits]\nmemory_budget_mb = 1048576\n");
            assert_eq!((line, column), (2, 20));
            assert_eq!(key.as_deref(), Some("[limits] memory_budget_mb"));
            assert_eq!(message, "is too large for this platform");
        }
    }

    #[test]
    fn slow_subscriber_takes_disconnect_or_drop() {
        let config = parse("[sessions]\nslow_subscriber = \"disconnect\"\n").expect("valid");
        assert_eq!(config.sessions.slow_subscriber, SlowSubscriber::Disconnect);
        let config = parse("[sessions]\nslow_subscriber = \"drop\"\n").expect("valid");
        assert_eq!(config.sessions.slow_subscriber, SlowSubscriber::Drop);
        assert_eq!(SlowSubscriber::default(), SlowSubscriber::Disconnect);

        let (line, column, key, message, shown) =
            invalid("[sessions]\nslow_subscriber = \"Drop\"\n");
        assert_eq!((line, column), (2, 19));
        assert_eq!(key.as_deref(), Some("[sessions] slow_subscriber"));
        assert!(
            message.contains("unknown variant `Drop`, expected `disconnect` or `drop`"),
            "{message}"
        );
        assert!(
            shown
                .starts_with("conf/jwtgate.toml:2:19: [sessions] slow_subscriber: unknown variant"),
            "{shown}"
        );
    }

    #[test]
    fn unknown_key_in_sessions_is_named() {
        let (line, column, key, message, _) = invalid("[sessions]\nmax_queue = 5\n");
        assert_eq!((line, column), (2, 1));
        assert_eq!(key.as_deref(), Some("[sessions] max_queue"));
        assert!(message.contains("unknown field `max_queue`"), "{message}");
        assert!(
            message.contains("`max_queued_messages`"),
            "lists the valid keys: {message}"
        );
    }

    const QUEUES_MOVED: &str =
        "rumqttd's router is gone: use [sessions] max_inflight and max_queued_messages";
    const LOG_MOVED: &str =
        "rumqttd's router is gone: use [sessions] max_queued_bytes and [limits] memory_budget_mb";
    const ROUTER_TABLE_GONE: &str = "the [router] table is no longer used: jwtgate's routing \
                                     core is configured in [sessions]";

    #[test]
    fn old_router_keys_name_their_replacement() {
        let cases = [
            (
                "[router]\nmax_outgoing_packet_count = 10000\n",
                2,
                29,
                "[router] max_outgoing_packet_count",
                QUEUES_MOVED,
            ),
            (
                "[router]\nmax_segment_size = 4194304\n",
                2,
                20,
                "[router] max_segment_size",
                LOG_MOVED,
            ),
            (
                "[router]\nmax_segment_count = 4\n",
                2,
                21,
                "[router] max_segment_count",
                LOG_MOVED,
            ),
            // The value is not read: a wrong type still gets the replacement.
            (
                "[router]\nmax_segment_size = \"4 MiB\"\n",
                2,
                20,
                "[router] max_segment_size",
                LOG_MOVED,
            ),
            // Other ways to write the table.
            (
                "router = { max_segment_count = 4 }\n",
                1,
                32,
                "[router] max_segment_count",
                LOG_MOVED,
            ),
            (
                "router.max_outgoing_packet_count = 1\n",
                1,
                36,
                "[router] max_outgoing_packet_count",
                QUEUES_MOVED,
            ),
        ];
        for (text, line, column, key, message) in cases {
            let (got_line, got_column, got_key, got_message, shown) = invalid(text);
            assert_eq!((got_line, got_column), (line, column), "{text:?}");
            assert_eq!(got_key.as_deref(), Some(key), "{text:?}");
            assert_eq!(got_message, message, "{text:?}");
            assert_eq!(
                shown,
                format!("{ORIGIN}:{line}:{column}: {key}: {message}"),
                "{text:?}"
            );
        }
    }

    #[test]
    fn the_first_old_router_key_in_the_file_is_reported() {
        let (line, _, key, message, _) = invalid(
            "[router]\nmax_segment_count = 4\nmax_outgoing_packet_count = 1\nmax_segment_size = 1024\n",
        );
        assert_eq!(line, 2);
        assert_eq!(key.as_deref(), Some("[router] max_segment_count"));
        assert_eq!(message, LOG_MOVED);

        let (line, _, key, message, _) = invalid(
            "[sessions]\nmax_inflight = 10\n[router]\nmax_outgoing_packet_count = 1\nmax_segment_count = 4\n",
        );
        assert_eq!(line, 4);
        assert_eq!(key.as_deref(), Some("[router] max_outgoing_packet_count"));
        assert_eq!(message, QUEUES_MOVED);
    }

    #[test]
    fn an_empty_router_table_is_refused() {
        let (line, column, key, message, shown) = invalid("[auth]\n\n[router]\n");
        assert_eq!((line, column), (3, 1));
        assert_eq!(key.as_deref(), Some("[router]"));
        assert_eq!(message, ROUTER_TABLE_GONE);
        assert_eq!(
            shown,
            format!("{ORIGIN}:3:1: [router]: {ROUTER_TABLE_GONE}")
        );

        let (line, column, key, message, _) = invalid("router = {}\n");
        assert_eq!((line, column), (1, 10));
        assert_eq!(key.as_deref(), Some("[router]"));
        assert_eq!(message, ROUTER_TABLE_GONE);
    }

    #[test]
    fn unknown_keys_in_router_are_ordinary_unknown_keys() {
        let (line, column, key, message, _) = invalid("[router]\nmax_inflight = 10\n");
        assert_eq!((line, column), (2, 1));
        assert_eq!(key.as_deref(), Some("[router] max_inflight"));
        assert!(
            message.contains("unknown field `max_inflight`"),
            "{message}"
        );
    }

    #[test]
    fn display_has_the_documented_shape() {
        let (_, _, _, _, shown) = invalid("[limits]\nmax_packet_size = 10\n");
        assert_eq!(
            shown,
            "conf/jwtgate.toml:2:19: [limits] max_packet_size: must be at least 1024 bytes"
        );
    }

    #[test]
    fn syntax_errors_name_the_line_and_key() {
        let (line, column, key, message, _) = invalid("[auth]\nissuer = \"a\"\nleeway_secs = \n");
        assert_eq!((line, column), (3, 15));
        assert_eq!(key.as_deref(), Some("[auth] leeway_secs"));
        assert!(!message.is_empty());

        let (line, _, key, _, _) = invalid("listen = nonsense\n");
        assert_eq!(line, 1);
        assert_eq!(key.as_deref(), Some("listen"));
    }

    #[test]
    fn duplicate_keys_are_named() {
        let (line, column, key, message, _) = invalid("[auth]\nleeway_secs = 1\nleeway_secs = 2\n");
        assert_eq!((line, column), (3, 1));
        assert_eq!(key.as_deref(), Some("leeway_secs"));
        assert!(message.contains("duplicate key"), "{message}");

        let (line, _, key, _, _) = invalid("[auth]\n[limits]\n[auth]\n");
        assert_eq!(line, 3);
        assert_eq!(key.as_deref(), Some("[auth]"));
    }

    #[test]
    fn columns_count_characters_not_bytes() {
        let (line, column, key, _, _) = invalid("auth = { issuer = \"é\", leeway_secs = -1 }\n");
        // "é" is two bytes but one column.
        assert_eq!((line, column), (1, 38));
        assert_eq!(key.as_deref(), Some("[auth] leeway_secs"));
    }

    #[test]
    fn top_level_deny_publish_is_an_alias() {
        let config = parse("deny_publish = \"disconnect\"\n").expect("alias is valid");
        assert_eq!(config.auth.deny_publish, DenyPublish::Disconnect);

        let config = parse("[auth]\ndeny_publish = \"disconnect\"\n").expect("valid");
        assert_eq!(config.auth.deny_publish, DenyPublish::Disconnect);

        let (line, _, key, message, _) = invalid("deny_publish = \"maybe\"\n");
        assert_eq!(line, 1);
        assert_eq!(key.as_deref(), Some("deny_publish"));
        assert!(message.contains("unknown variant `maybe`"), "{message}");
    }

    #[test]
    fn deny_publish_in_both_places_is_an_error_naming_both() {
        let (line, column, key, message, shown) =
            invalid("deny_publish = \"drop\"\n[auth]\ndeny_publish = \"drop\"\n");
        assert_eq!((line, column), (1, 16));
        assert_eq!(key.as_deref(), Some("deny_publish"));
        assert!(
            message.contains("[auth] deny_publish (line 3)"),
            "{message}"
        );
        assert!(
            shown.starts_with("conf/jwtgate.toml:1:16: deny_publish: given both"),
            "{shown}"
        );
    }

    #[test]
    fn every_algorithm_named_in_errors_is_accepted() {
        for name in ALGORITHM_NAMES.split(", ") {
            let config = parse(&format!("[auth]\nalgorithms = [\"{name}\"]\n"))
                .unwrap_or_else(|err| panic!("{name}: {err}"));
            let algorithms = config.auth.algorithms.expect("algorithms were given");
            assert_eq!(format!("{:?}", algorithms[0]), name);
        }
    }

    #[test]
    fn load_reads_a_file_and_resolves_against_its_directory() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("jwtgate.toml");
        std::fs::write(&path, "[auth]\nkeys_dir = \"trust\"\nleeway_secs = 2\n").expect("write");
        let config = Config::load(&path).expect("valid file");
        assert_eq!(config.source, Some(path.clone()));
        assert_eq!(config.auth.keys_dir, dir.path().join("trust"));
        assert_eq!(config.auth.leeway, Duration::from_secs(2));
        assert_eq!(config.tls.cert, dir.path().join("keys/tls/server.crt"));
    }

    #[test]
    fn load_errors_name_the_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("jwtgate.toml");
        std::fs::write(&path, "[limits]\nmax_connections = -3\n").expect("write");
        let err = Config::load(&path).expect_err("invalid file");
        assert_eq!(
            err.to_string(),
            format!(
                "{}:2:19: [limits] max_connections: must be greater than 0",
                path.display()
            )
        );
    }

    #[test]
    fn load_on_a_missing_file_names_the_path() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("missing.toml");
        let err = Config::load(&path).expect_err("file does not exist");
        let ConfigError::Read {
            path: reported,
            source,
        } = &err
        else {
            panic!("expected ConfigError::Read, got {err:?}");
        };
        assert_eq!(reported, &path);
        assert_eq!(source.kind(), io::ErrorKind::NotFound);
        let shown = err.to_string();
        assert!(
            shown.starts_with(&format!("cannot read config file {}: ", path.display())),
            "{shown}"
        );
    }

    #[test]
    fn config_can_be_shared_across_tasks() {
        fn assert_shareable<T: Send + Sync + Clone + std::fmt::Debug + 'static>() {}
        fn assert_error<T: std::error::Error + Send + Sync + 'static>() {}
        assert_shareable::<Config>();
        assert_error::<ConfigError>();
    }
}
