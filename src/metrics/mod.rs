//! Metrics: the figures an operator's Prometheus scrapes from the gateway.
//!
//! The model. Two kinds of figures, kept apart so that none is ever a
//! stale copy or counted twice:
//!
//! - **Events**, counted where they happen, through [`Metrics`]: the
//!   connections open (by protocol version), every CONNECT's outcome (by
//!   reason: a bad signature, an expired token, an unknown key id, a
//!   revoked one...), publishes received and deliveries sent (by QoS),
//!   bytes in and out, refused publishes and subscriptions, why sessions
//!   ended (the token expired, a reload revoked it, a slow subscriber...),
//!   re-authentications, key reloads and failed TLS handshakes. Each is a
//!   prometheus-client counter or gauge; those counted per packet are
//!   resolved to their label when [`Metrics`] is made, so counting a
//!   packet is one atomic add and takes no lock.
//! - **State**, read from its owner at scrape time by [`State`]: the keys
//!   loaded, the routing core's losses (slow subscribers, expiry, size,
//!   memory budget), whether the durable store's commits work (a full
//!   disk, failed commits), each uplink bridge's link state (connected or
//!   not, from [`crate::bridge::LinkStatus`]), its queue (depth, bytes,
//!   drops, the age of the oldest message) and what each bridge refused of
//!   what its remote sent (by reason, from [`crate::bridge::Refusals`]).
//!
//! [`Exposition`] joins both in one registry and renders the Prometheus
//! text format; [`endpoint`] serves it on `[metrics] listen`. The README
//! ("Metrics") lists every name.

mod bridges;
pub mod endpoint;
mod figures;

pub use figures::Figures;

use std::fmt;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::Registry;

use crate::bridge::{LinkStatus, Refusals};
use crate::broker::Broker;
use crate::keys::KeyStore;
use crate::mqtt::QoS;
use crate::mqtt::{Transport, Version};
use crate::storage::{Health, Queue};
use crate::token::TokenError;

/// One label, `name="value"`: every family here but the bridges'
/// refusals (`bridge` and `reason`) has exactly one.
type Label = [(&'static str, &'static str); 1];

/// The event counters the gateway's tasks share (as an `Arc<Metrics>`).
#[derive(Debug)]
pub struct Metrics {
    connections: Family<Label, Gauge>,
    /// `connections`' gauges for MQTT 3.1, 3.1.1 and 5.
    connections_by_version: [Gauge; 3],
    /// Authenticated connections open, by transport (`tls`, `wss`).
    connections_by_transport: [Gauge; 2],
    transports: Family<Label, Gauge>,
    /// WebSocket upgrade requests refused, by why
    /// (`gateway::websocket::Refused` labels, handed over at start as the
    /// protocol violations are).
    websocket_refusals: Family<Label, Counter>,
    connects: Family<Label, Counter>,
    publishes_received: Family<Label, Counter>,
    /// `publishes_received`' counters for QoS 0, 1 and 2.
    received_by_qos: [Counter; 3],
    deliveries: Family<Label, Counter>,
    delivered_by_qos: [Counter; 3],
    publishes_refused: Counter,
    subscriptions_refused: Counter,
    bytes_received: Counter,
    bytes_sent: Counter,
    disconnects: Family<Label, Counter>,
    /// The `protocol_error` disconnects by the rule broken. Its labels
    /// are the gateway's (`ProtocolViolation::label`), which this module
    /// cannot name without importing it: the gateway hands them over at
    /// start ([`Metrics::expect_protocol_violations`]).
    protocol_violations: Family<Label, Counter>,
    reauthentications: Family<Label, Counter>,
    key_reloads: Family<Label, Counter>,
    handshakes_failed: Family<Label, Counter>,
}

impl Default for Metrics {
    fn default() -> Metrics {
        let connections = Family::<Label, Gauge>::default();
        let publishes_received = Family::<Label, Counter>::default();
        let deliveries = Family::<Label, Counter>::default();
        let transports = Family::<Label, Gauge>::default();
        let qos = ["0", "1", "2"];
        Metrics {
            connections_by_transport: Transport::ALL.map(|t| {
                transports
                    .get_or_create(&[("transport", t.as_str())])
                    .clone()
            }),
            transports,
            websocket_refusals: Family::default(),
            connections_by_version: [Version::V3_1, Version::V3_1_1, Version::V5].map(|v| {
                connections
                    .get_or_create(&[("protocol", v.as_str())])
                    .clone()
            }),
            connections,
            received_by_qos: qos.map(|q| publishes_received.get_or_create(&[("qos", q)]).clone()),
            publishes_received,
            delivered_by_qos: qos.map(|q| deliveries.get_or_create(&[("qos", q)]).clone()),
            deliveries,
            connects: with_labels("outcome", ConnectOutcome::ALL.map(ConnectOutcome::as_str)),
            publishes_refused: Counter::default(),
            subscriptions_refused: Counter::default(),
            bytes_received: Counter::default(),
            bytes_sent: Counter::default(),
            disconnects: with_labels("reason", SessionEnd::ALL.map(SessionEnd::as_str)),
            protocol_violations: Family::default(),
            reauthentications: with_labels(
                "outcome",
                ConnectOutcome::ALL.map(ConnectOutcome::as_str),
            ),
            key_reloads: with_labels("result", ["ok", "failed"]),
            handshakes_failed: with_labels(
                "reason",
                [HandshakeFailure::Error, HandshakeFailure::Timeout].map(HandshakeFailure::as_str),
            ),
        }
    }
}

/// A counter family with every label value it will ever have already
/// exported at zero: a family that appears only with its first event reads
/// as "no data" to an alert rule, and a fresh gateway's `grep` finds
/// nothing.
fn with_labels<const N: usize>(
    name: &'static str,
    values: [&'static str; N],
) -> Family<Label, Counter> {
    let family = Family::<Label, Counter>::default();
    for value in values {
        drop(family.get_or_create(&[(name, value)]));
    }
    family
}

impl Metrics {
    /// Counts an authenticated connection for as long as the returned
    /// guard lives.
    pub fn connected(&self, version: Version, transport: Transport) -> Connected {
        let gauges = [
            self.connections_by_version[version as usize].clone(),
            self.connections_by_transport[transport as usize].clone(),
        ];
        for gauge in &gauges {
            gauge.inc();
        }
        Connected(gauges)
    }

    /// Exports every WebSocket upgrade refusal's label at zero.
    pub fn expect_websocket_refusals(&self, labels: &[&'static str]) {
        for label in labels {
            drop(self.websocket_refusals.get_or_create(&[("reason", label)]));
        }
    }

    /// Counts a refused WebSocket upgrade request.
    pub fn websocket_refused(&self, label: &'static str) {
        self.websocket_refusals
            .get_or_create(&[("reason", label)])
            .inc();
    }

    pub fn connect(&self, outcome: ConnectOutcome) {
        self.connects
            .get_or_create(&[("outcome", outcome.as_str())])
            .inc();
    }

    pub fn reauthentication(&self, outcome: ConnectOutcome) {
        self.reauthentications
            .get_or_create(&[("outcome", outcome.as_str())])
            .inc();
    }

    pub fn published(&self, qos: QoS) {
        self.received_by_qos[qos as usize].inc();
    }

    pub fn delivered(&self, qos: QoS) {
        self.delivered_by_qos[qos as usize].inc();
    }

    pub fn publish_refused(&self) {
        self.publishes_refused.inc();
    }

    pub fn subscription_refused(&self) {
        self.subscriptions_refused.inc();
    }

    /// The byte counters one connection adds to as it reads and writes.
    pub fn traffic(&self) -> Traffic {
        Traffic {
            received: self.bytes_received.clone(),
            sent: self.bytes_sent.clone(),
        }
    }

    /// The counters now. Each is read on its own, so two read during a
    /// burst may be a few events apart.
    pub fn figures(&self) -> Figures {
        // A gauge counts open connections and never goes below zero.
        let gauge = |g: &Gauge| g.get().max(0).unsigned_abs();
        Figures {
            connections_by_version: self.connections_by_version.each_ref().map(gauge),
            connections_by_transport: self.connections_by_transport.each_ref().map(gauge),
            received: self.received_by_qos.iter().map(|c| c.get()).sum(),
            delivered: self.delivered_by_qos.iter().map(|c| c.get()).sum(),
            bytes_received: self.bytes_received.get(),
            bytes_sent: self.bytes_sent.get(),
        }
    }

    pub fn session_ended(&self, end: SessionEnd) {
        self.disconnects
            .get_or_create(&[("reason", end.as_str())])
            .inc();
    }

    /// Exports `jwtgate_protocol_violations_total` at zero for each of
    /// `labels` (the gateway's list, which this module cannot import).
    pub fn expect_protocol_violations(&self, labels: &[&'static str]) {
        for label in labels {
            drop(
                self.protocol_violations
                    .get_or_create(&[("violation", label)]),
            );
        }
    }

    /// A client closed for breaking the protocol, by the rule it broke.
    pub fn protocol_violation(&self, violation: &'static str) {
        self.protocol_violations
            .get_or_create(&[("violation", violation)])
            .inc();
    }

    /// A reload of the keys directory: `ok` when every file was read,
    /// false when any was refused or the directory could not be read
    /// (the keys in force then stay, see [`crate::keys`]).
    pub fn key_reload(&self, ok: bool) {
        let result = if ok { "ok" } else { "failed" };
        self.key_reloads.get_or_create(&[("result", result)]).inc();
    }

    pub fn handshake_failed(&self, failure: HandshakeFailure) {
        self.handshakes_failed
            .get_or_create(&[("reason", failure.as_str())])
            .inc();
    }

    fn register(&self, registry: &mut Registry) {
        registry.register(
            "jwtgate_connections",
            "Authenticated MQTT connections open, by protocol version",
            self.connections.clone(),
        );
        registry.register(
            "jwtgate_connections_by_transport",
            "Authenticated MQTT connections open, by transport (tls: MQTT over TLS; wss: over secure WebSockets)",
            self.transports.clone(),
        );
        registry.register(
            "jwtgate_websocket_upgrades_refused",
            "WebSocket upgrade requests answered with an HTTP error, by why",
            self.websocket_refusals.clone(),
        );
        registry.register(
            "jwtgate_connects",
            "CONNECT attempts, by outcome (accepted, or why refused)",
            self.connects.clone(),
        );
        registry.register(
            "jwtgate_publishes_received",
            "PUBLISH packets accepted from clients and routed, by QoS",
            self.publishes_received.clone(),
        );
        registry.register(
            "jwtgate_deliveries",
            "PUBLISH packets sent to subscribers, by QoS",
            self.deliveries.clone(),
        );
        registry.register(
            "jwtgate_publishes_refused",
            "PUBLISH packets refused: topic not granted, or too many property bytes",
            self.publishes_refused.clone(),
        );
        registry.register(
            "jwtgate_subscriptions_refused",
            "Subscription filters refused: not granted, invalid or over a quota",
            self.subscriptions_refused.clone(),
        );
        registry.register(
            "jwtgate_received_bytes",
            "MQTT bytes read from clients (inside TLS)",
            self.bytes_received.clone(),
        );
        registry.register(
            "jwtgate_sent_bytes",
            "MQTT bytes written to clients (inside TLS)",
            self.bytes_sent.clone(),
        );
        registry.register(
            "jwtgate_disconnects",
            "Sessions' connections ended, by reason (token_expired, revoked, ...)",
            self.disconnects.clone(),
        );
        registry.register(
            "jwtgate_protocol_violations",
            "Connections closed for breaking the protocol, by the rule broken",
            self.protocol_violations.clone(),
        );
        registry.register(
            "jwtgate_reauthentications",
            "MQTT 5 re-authentications (AUTH), by outcome",
            self.reauthentications.clone(),
        );
        registry.register(
            "jwtgate_key_reloads",
            "Reloads of the keys directory (on a change to it, to the TLS certificate, or SIGHUP), by result (failed: a file was refused and its old keys kept)",
            self.key_reloads.clone(),
        );
        registry.register(
            "jwtgate_tls_handshake_failures",
            "TLS handshakes that failed or timed out",
            self.handshakes_failed.clone(),
        );
    }
}

/// Keeps one connection counted in `jwtgate_connections`.
#[derive(Debug)]
pub struct Connected([Gauge; 2]);

impl Drop for Connected {
    fn drop(&mut self) {
        for gauge in &self.0 {
            gauge.dec();
        }
    }
}

/// The byte counters of one connection (clones sharing the gateway's).
#[derive(Debug, Clone, Default)]
pub struct Traffic {
    received: Counter,
    sent: Counter,
}

impl Traffic {
    pub fn received(&self, bytes: usize) {
        self.received.inc_by(bytes as u64);
    }

    pub fn sent(&self, bytes: usize) {
        self.sent.inc_by(bytes as u64);
    }
}

/// How a TLS handshake failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeFailure {
    Error,
    Timeout,
}

impl HandshakeFailure {
    fn as_str(self) -> &'static str {
        match self {
            HandshakeFailure::Error => "error",
            HandshakeFailure::Timeout => "timeout",
        }
    }
}

/// What became of a CONNECT (or an MQTT 5 re-authentication): the
/// `outcome` label. Finer than the reason code the client gets, which
/// says only "bad credentials" or "not authorized".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectOutcome {
    Accepted,
    /// Not an MQTT version the gateway speaks.
    UnsupportedProtocol,
    /// A CONNECT that cannot be parsed (nor its will topic read as a
    /// topic): closed without a CONNACK.
    MalformedPacket,
    /// A CONNECT that parsed but breaks a rule of MQTT 5 (a Receive
    /// Maximum of 0, say): CONNACK 0x82.
    ProtocolError,
    /// No user name `JWT` with a password, nor authentication method
    /// `JWT` with data.
    BadUsername,
    /// Not a well-formed JWT, or claims of the wrong shape.
    MalformedToken,
    /// No key of that id, or none for the token's algorithm.
    UnknownKid,
    BadSignature,
    /// An algorithm the key, the policy or jwtgate does not allow.
    AlgorithmRefused,
    Expired,
    /// `nbf` or `iat` in the future.
    NotYetValid,
    /// Issuer, audience, lifetime, `kid` or `exp` demanded by `[auth]`.
    PolicyRefused,
    /// Named by the deny list.
    Revoked,
    /// An authentic token whose identity may not connect: no subject, no
    /// usable grants, a will outside them.
    NotAuthorized,
    BadClientId,
    /// The token's `clientid` claim names another client id.
    ClientIdMismatch,
    /// The token is bound (`cnf`) to a client certificate the connection
    /// did not present, or is unbound under `[auth]
    /// require_certificate_binding`.
    CertificateBinding,
    BadAuthMethod,
    /// Over a limit of the CONNECT's own (MQTT 5 property bytes), or of the
    /// subject's (`[sessions] max_sessions_per_subject`, the memory budget).
    QuotaExceeded,
    /// A will topic that is no valid topic name, or over `[limits]
    /// max_topic_levels` / `max_topic_bytes`.
    TopicNameInvalid,
    /// Every place for a connection taken (`[limits] max_connections`).
    ServerBusy,
    ServerUnavailable,
}

impl ConnectOutcome {
    /// Every outcome, so each label is exported from the start at zero
    /// (a variant added above belongs here too).
    pub const ALL: [ConnectOutcome; 22] = [
        ConnectOutcome::Accepted,
        ConnectOutcome::UnsupportedProtocol,
        ConnectOutcome::MalformedPacket,
        ConnectOutcome::ProtocolError,
        ConnectOutcome::BadUsername,
        ConnectOutcome::MalformedToken,
        ConnectOutcome::UnknownKid,
        ConnectOutcome::BadSignature,
        ConnectOutcome::AlgorithmRefused,
        ConnectOutcome::Expired,
        ConnectOutcome::NotYetValid,
        ConnectOutcome::PolicyRefused,
        ConnectOutcome::Revoked,
        ConnectOutcome::NotAuthorized,
        ConnectOutcome::BadClientId,
        ConnectOutcome::ClientIdMismatch,
        ConnectOutcome::CertificateBinding,
        ConnectOutcome::BadAuthMethod,
        ConnectOutcome::QuotaExceeded,
        ConnectOutcome::TopicNameInvalid,
        ConnectOutcome::ServerBusy,
        ConnectOutcome::ServerUnavailable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ConnectOutcome::Accepted => "accepted",
            ConnectOutcome::UnsupportedProtocol => "unsupported_protocol",
            ConnectOutcome::MalformedPacket => "malformed_packet",
            ConnectOutcome::ProtocolError => "protocol_error",
            ConnectOutcome::BadUsername => "bad_username",
            ConnectOutcome::MalformedToken => "malformed_token",
            ConnectOutcome::UnknownKid => "unknown_kid",
            ConnectOutcome::BadSignature => "bad_signature",
            ConnectOutcome::AlgorithmRefused => "algorithm_refused",
            ConnectOutcome::Expired => "expired",
            ConnectOutcome::NotYetValid => "not_yet_valid",
            ConnectOutcome::PolicyRefused => "policy_refused",
            ConnectOutcome::Revoked => "revoked",
            ConnectOutcome::NotAuthorized => "not_authorized",
            ConnectOutcome::BadClientId => "bad_client_id",
            ConnectOutcome::ClientIdMismatch => "client_id_mismatch",
            ConnectOutcome::CertificateBinding => "certificate_binding",
            ConnectOutcome::BadAuthMethod => "bad_auth_method",
            ConnectOutcome::QuotaExceeded => "quota_exceeded",
            ConnectOutcome::TopicNameInvalid => "topic_name_invalid",
            ConnectOutcome::ServerBusy => "server_busy",
            ConnectOutcome::ServerUnavailable => "server_unavailable",
        }
    }
}

impl From<&TokenError> for ConnectOutcome {
    fn from(error: &TokenError) -> ConnectOutcome {
        match error {
            TokenError::TooLarge { .. }
            | TokenError::Malformed(_)
            | TokenError::CriticalHeader
            | TokenError::ClaimsNotAnObject
            | TokenError::BadClaim { .. } => ConnectOutcome::MalformedToken,
            TokenError::UnsupportedConfirmation => ConnectOutcome::CertificateBinding,
            TokenError::UnknownKey { .. } | TokenError::NoKeyForAlgorithm { .. } => {
                ConnectOutcome::UnknownKid
            }
            TokenError::BadSignature { .. } => ConnectOutcome::BadSignature,
            TokenError::UnsupportedAlgorithm { .. }
            | TokenError::AlgorithmNotAllowed { .. }
            | TokenError::KeyRefusesAlgorithm { .. }
            | TokenError::KeyUnusable { .. } => ConnectOutcome::AlgorithmRefused,
            TokenError::Expired { .. } => ConnectOutcome::Expired,
            TokenError::NotYetValid { .. } | TokenError::IssuedInFuture { .. } => {
                ConnectOutcome::NotYetValid
            }
            TokenError::KidRequired
            | TokenError::MissingExp
            | TokenError::MissingIat { .. }
            | TokenError::IssuedAfterExpiry { .. }
            | TokenError::LifetimeTooLong { .. }
            | TokenError::MissingIssuer
            | TokenError::WrongIssuer { .. }
            | TokenError::MissingAudience
            | TokenError::WrongAudience => ConnectOutcome::PolicyRefused,
            TokenError::Revoked { .. } => ConnectOutcome::Revoked,
            TokenError::MissingSubject | TokenError::Grants(_) => ConnectOutcome::NotAuthorized,
        }
    }
}

/// Why a session's connection ended: the `reason` label of
/// `jwtgate_disconnects`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEnd {
    /// The client sent DISCONNECT.
    Client,
    /// The socket closed or failed without one.
    Vanished,
    ProtocolError,
    KeepAliveTimeout,
    TokenExpired,
    TakenOver,
    Shutdown,
    /// A reload removed the token's key or the deny list named it.
    Revoked,
    PublishDenied,
    SlowSubscriber,
    WriteStalled,
    ReauthRefused,
    /// An MQTT 3.1.1 client's message could not be kept (a full disk),
    /// which its ack cannot say.
    NotKept,
    /// An operator's `jwtgate disconnect`.
    Administrative,
}

impl SessionEnd {
    /// Every reason, so each label is exported from the start at zero (a
    /// variant added above belongs here too).
    const ALL: [SessionEnd; 14] = [
        SessionEnd::Client,
        SessionEnd::Vanished,
        SessionEnd::ProtocolError,
        SessionEnd::KeepAliveTimeout,
        SessionEnd::TokenExpired,
        SessionEnd::TakenOver,
        SessionEnd::Shutdown,
        SessionEnd::Revoked,
        SessionEnd::PublishDenied,
        SessionEnd::SlowSubscriber,
        SessionEnd::WriteStalled,
        SessionEnd::ReauthRefused,
        SessionEnd::NotKept,
        SessionEnd::Administrative,
    ];

    fn as_str(self) -> &'static str {
        match self {
            SessionEnd::Client => "client",
            SessionEnd::Vanished => "vanished",
            SessionEnd::ProtocolError => "protocol_error",
            SessionEnd::KeepAliveTimeout => "keep_alive_timeout",
            SessionEnd::TokenExpired => "token_expired",
            SessionEnd::TakenOver => "taken_over",
            SessionEnd::Shutdown => "shutdown",
            SessionEnd::Revoked => "revoked",
            SessionEnd::PublishDenied => "publish_denied",
            SessionEnd::SlowSubscriber => "slow_subscriber",
            SessionEnd::WriteStalled => "write_stalled",
            SessionEnd::ReauthRefused => "reauth_refused",
            SessionEnd::NotKept => "not_kept",
            SessionEnd::Administrative => "administrative",
        }
    }
}

/// The figures read from their owners at scrape time (and by `jwtgate
/// status` and `$SYS`, each with its own clone of the handles).
#[derive(Clone)]
pub struct State {
    pub broker: Arc<Broker>,
    pub keys: Arc<KeyStore>,
    /// Whether the durable store's commits work.
    pub storage: Arc<Health>,
    /// The uplink bridges' queues.
    pub queues: Vec<Arc<Queue>>,
    /// What each bridge did not route of what its remote sent.
    pub refusals: Vec<Arc<Refusals>>,
    /// Where each bridge's link stands (connected, connecting, down).
    pub links: Vec<Arc<LinkStatus>>,
}

impl fmt::Debug for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("State")
            .field("queues", &self.queues.len())
            .finish_non_exhaustive()
    }
}

impl Collector for State {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let keys = self.keys.snapshot();
        gauge(
            &mut encoder,
            "jwtgate_keys_loaded",
            "Verification keys in force",
            keys.len(),
        )?;
        gauge(
            &mut encoder,
            "jwtgate_deny_list_entries",
            "Entries of the deny list (keys/revoked) in force",
            keys.deny_list().len(),
        )?;
        gauge(
            &mut encoder,
            "jwtgate_storage_disk_full",
            "1 while the durable store's commits fail for want of room (a full disk, a quota, a file size limit; publishes are then answered as not kept), else 0",
            usize::from(self.storage.disk_full()),
        )?;
        let losses = self.broker.stats().snapshot();
        for (name, help, value) in [
            (
                "jwtgate_slow_subscriber_drops",
                "Deliveries dropped by a full session queue (slow_subscriber = \"drop\")",
                losses.dropped,
            ),
            (
                "jwtgate_slow_subscriber_disconnects",
                "Connections closed by slow_subscriber = \"disconnect\"",
                losses.evicted,
            ),
            (
                "jwtgate_expired_deliveries",
                "Deliveries whose message expired before it could be sent",
                losses.expired,
            ),
            (
                "jwtgate_oversized_deliveries",
                "Deliveries larger than their client's maximum packet size, skipped",
                losses.oversized,
            ),
            (
                "jwtgate_retained_refused",
                "Retained messages not stored: the memory budget was used up",
                losses.retained_refused,
            ),
            (
                "jwtgate_storage_failed_commits",
                "Commits of the durable store that failed; what they carried was answered as not kept",
                self.storage.failed_commits(),
            ),
        ] {
            let counter = ConstCounter::new(value);
            counter.encode(encoder.encode_descriptor(
                name,
                help,
                None,
                counter.metric_type(),
            )?)?;
        }
        bridges::encode(&self.links, &self.refusals, &self.queues, &mut encoder)
    }
}

fn gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: usize) -> fmt::Result {
    let gauge = ConstGauge::new(saturating_i64(value as u64));
    gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)
}

fn saturating_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// The registry Prometheus reads: the event counters and the state.
#[derive(Debug)]
pub struct Exposition {
    registry: Registry,
}

impl Exposition {
    pub fn new(metrics: &Metrics, state: State) -> Exposition {
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        registry.register_collector(Box::new(state));
        Exposition { registry }
    }

    /// The Prometheus text format (0.0.4), as served at `/metrics`.
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail; an encoder error would be a
        // bug in a metric, and a scrape still gets what came before it.
        if let Err(e) =
            prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry)
        {
            tracing::error!(error = %e, "metrics: encoding failed");
        }
        text
    }
}

#[cfg(test)]
mod tests;
