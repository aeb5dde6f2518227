//! The `[[bridge]]` tables: uplinks to a central broker.
//!
//! Each table becomes one [`BridgeConfig`], checked as thoroughly as the
//! rest of the file: a bad value is an error naming the file, line and key
//! (`[[bridge]] cloud: forward[0].qos`), never a bridge that fails later at
//! run time. What can only be known at run time (whether the remote
//! answers, whether the credential file is readable now) is the bridge's
//! own business and is logged there.

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::document::{ConfigError, Document, MIB};
use crate::mqtt::{QoS, validate_topic_name};
use crate::mqtt::{TopicFilter, TopicLimits};

/// The default `max_queue_mb`: a day of a busy site's telemetry at 5 KiB/s
/// fits, and it is a small share of an edge box's storage.
const DEFAULT_MAX_QUEUE_MB: i64 = 512;
/// The largest `max_queue_mb`: 1 TiB.
const MAX_QUEUE_MB: i64 = 1024 * 1024;
/// The MQTT over TLS port, when `remote` names none.
const MQTTS_PORT: u16 = 8883;
/// The plain MQTT port, for a loopback `mqtt://` remote naming none.
const MQTT_PORT: u16 = 1883;
/// The default `session_expiry_secs`: a week, so that a site offline over
/// a long weekend still finds the commands sent meanwhile.
const DEFAULT_SESSION_EXPIRY_SECS: i64 = 7 * 24 * 3600;

/// One uplink to a central broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeConfig {
    /// Names the bridge in logs, metrics and the state directory: letters,
    /// digits, `-` and `_`, unique among the bridges.
    pub name: String,
    pub remote: Remote,
    /// Roots to verify the remote's certificate with instead of the
    /// system's.
    pub ca_file: Option<PathBuf>,
    pub client_id: String,
    pub username: Option<String>,
    pub credential: Option<Credential>,
    /// A client certificate, for brokers that authenticate the bridge by
    /// it.
    pub client_cert: Option<ClientCert>,
    pub protocol: Protocol,
    pub keep_alive: Duration,
    /// Start a new session at the remote on every connect. `false` (the
    /// default) keeps one, so that what the remote queues for the bridge's
    /// subscriptions while the link or the gateway is down arrives after.
    pub clean_start: bool,
    /// MQTT 5: how long the remote keeps the session after the link drops,
    /// in seconds (`u32::MAX`: for ever). Ignored with `clean_start`; an
    /// MQTT 3.1.1 remote applies its own setting.
    pub session_expiry_secs: u32,
    /// Local messages sent to the remote.
    pub forward: Vec<ForwardRule>,
    /// Remote messages published locally.
    pub subscribe: Vec<SubscribeRule>,
    /// Disk budget of the store-and-forward queue, in bytes.
    pub max_queue_bytes: u64,
}

/// Where the central broker listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remote {
    pub host: String,
    pub port: u16,
    pub transport: Transport,
}

/// How the uplink's bytes travel. Plain MQTT only reaches a loopback host
/// (a broker on the same box, or a tunnel's local end).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Tls,
    Plain,
}

/// What the bridge authenticates with, besides a client certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// A password, read from this file at start.
    PasswordFile(PathBuf),
    /// A token (a JWT), read from this file on every connect and reconnect
    /// and when the file changes, so a refresher can keep it fresh.
    TokenFile(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCert {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The MQTT version spoken to the remote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// MQTT 3.1.1.
    V4,
    /// MQTT 5.
    V5,
}

/// Local messages matching `local` go to the remote as `remote_prefix` +
/// their topic, at `qos`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardRule {
    pub local: TopicFilter,
    pub remote_prefix: String,
    pub qos: QoS,
}

/// Remote messages matching `remote` are subscribed to at `qos` and
/// published locally as `local_prefix` + their topic without
/// `strip_prefix`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscribeRule {
    pub remote: TopicFilter,
    pub strip_prefix: String,
    pub local_prefix: String,
    pub qos: QoS,
}

impl SubscribeRule {
    /// The local topic of a message received on `remote_topic`; `None`
    /// when it does not carry `strip_prefix` (the remote sent a topic the
    /// rule's filter should not have matched) or maps to no valid topic.
    pub fn local_topic(&self, remote_topic: &str) -> Option<String> {
        let rest = remote_topic.strip_prefix(&self.strip_prefix)?;
        let topic = format!("{}{rest}", self.local_prefix);
        validate_topic_name(&topic).ok().map(|()| topic)
    }
}

impl ForwardRule {
    /// The remote topic of a local message on `topic`.
    pub fn remote_topic(&self, topic: &str) -> String {
        format!("{}{topic}", self.remote_prefix)
    }
}

// The raw tables, as written.

#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "a [[bridge]] table")]
pub(super) struct RawBridge {
    name: Option<Spanned<String>>,
    remote: Option<Spanned<String>>,
    ca_file: Option<Spanned<PathBuf>>,
    client_id: Option<Spanned<String>>,
    username: Option<Spanned<String>>,
    password_file: Option<Spanned<PathBuf>>,
    token_file: Option<Spanned<PathBuf>>,
    cert_file: Option<Spanned<PathBuf>>,
    key_file: Option<Spanned<PathBuf>>,
    protocol: Option<Spanned<i64>>,
    keep_alive_secs: Option<Spanned<i64>>,
    clean_start: Option<Spanned<bool>>,
    session_expiry_secs: Option<Spanned<i64>>,
    forward: Vec<Spanned<RawForward>>,
    subscribe: Vec<Spanned<RawSubscribe>>,
    max_queue_mb: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a forward rule { local, remote_prefix, qos }"
)]
struct RawForward {
    local: Spanned<String>,
    #[serde(default)]
    remote_prefix: Option<Spanned<String>>,
    #[serde(default)]
    qos: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a subscribe rule { remote, strip_prefix, local_prefix, qos }"
)]
struct RawSubscribe {
    remote: Spanned<String>,
    #[serde(default)]
    strip_prefix: Option<Spanned<String>>,
    #[serde(default)]
    local_prefix: Option<Spanned<String>>,
    #[serde(default)]
    qos: Option<Spanned<i64>>,
}

/// Checks every `[[bridge]]` table; its filters must keep to `limits`
/// (`[limits] max_topic_levels`, `max_topic_bytes`), as a device's must.
pub(super) fn validate(
    raw: Vec<Spanned<RawBridge>>,
    doc: &Document<'_>,
    base_dir: &Path,
    limits: &TopicLimits,
) -> Result<Vec<BridgeConfig>, ConfigError> {
    let mut names = HashSet::new();
    let mut bridges = Vec::with_capacity(raw.len());
    for (index, table) in raw.into_iter().enumerate() {
        let at = table.span().start;
        let bridge = table
            .into_inner()
            .validate(doc, base_dir, limits, index, at)?;
        if !names.insert(bridge.name.clone()) {
            return Err(doc.invalid(
                at,
                Some(format!("[[bridge]] {}: name", bridge.name)),
                "another [[bridge]] has this name; each needs its own",
            ));
        }
        bridges.push(bridge);
    }
    Ok(bridges)
}

impl RawBridge {
    fn validate(
        self,
        doc: &Document<'_>,
        base_dir: &Path,
        limits: &TopicLimits,
        index: usize,
        at: usize,
    ) -> Result<BridgeConfig, ConfigError> {
        let Some(name) = self.name else {
            return Err(doc.invalid(
                at,
                Some(format!("[[bridge]] #{}: name", index + 1)),
                "missing; every bridge needs a name (letters, digits, `-`, `_`)",
            ));
        };
        let key = |field: &str| format!("[[bridge]] {}: {field}", name.get_ref());
        let valid_name = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
        if name.get_ref().is_empty() || !name.get_ref().chars().all(valid_name) {
            return Err(doc.bad(
                &name,
                &key("name"),
                "must be letters, digits, `-` and `_` only (it names a directory)",
            ));
        }
        let missing =
            |field: &str, what: &str| doc.invalid(at, Some(key(field)), format!("missing; {what}"));
        let remote = self.remote.as_ref().ok_or_else(|| {
            missing(
                "remote",
                "the central broker's address, e.g. \"mqtts://broker.example:8883\"",
            )
        })?;
        let remote = parse_remote(remote.get_ref())
            .map_err(|message| doc.bad(remote, &key("remote"), message))?;
        let client_id = self
            .client_id
            .ok_or_else(|| missing("client_id", "the client id the bridge connects with"))?;
        if client_id.get_ref().is_empty() {
            return Err(doc.bad(&client_id, &key("client_id"), "must not be empty"));
        }
        let credential = match (self.password_file, self.token_file) {
            (Some(_), Some(token)) => {
                return Err(doc.bad(
                    &token,
                    &key("token_file"),
                    "given with password_file; a bridge authenticates with one of them",
                ));
            }
            (Some(file), None) => Some(Credential::PasswordFile(doc.path(
                &file,
                &key("password_file"),
                base_dir,
            )?)),
            (None, Some(file)) => Some(Credential::TokenFile(doc.path(
                &file,
                &key("token_file"),
                base_dir,
            )?)),
            (None, None) => None,
        };
        let client_cert = match (self.cert_file, self.key_file) {
            (Some(cert), Some(key_file)) => Some(ClientCert {
                cert: doc.path(&cert, &key("cert_file"), base_dir)?,
                key: doc.path(&key_file, &key("key_file"), base_dir)?,
            }),
            (Some(cert), None) => {
                return Err(doc.bad(&cert, &key("cert_file"), "given without key_file"));
            }
            (None, Some(key_file)) => {
                return Err(doc.bad(&key_file, &key("key_file"), "given without cert_file"));
            }
            (None, None) => None,
        };
        if remote.transport == Transport::Plain && client_cert.is_some() {
            return Err(doc.invalid(
                at,
                Some(key("cert_file")),
                "a client certificate needs an mqtts:// remote",
            ));
        }
        let ca_file = match &self.ca_file {
            Some(file) => Some(doc.path(file, &key("ca_file"), base_dir)?),
            None => None,
        };
        let protocol = match &self.protocol {
            None => Protocol::V5,
            Some(value) => match value.get_ref() {
                4 => Protocol::V4,
                5 => Protocol::V5,
                _ => {
                    return Err(doc.bad(
                        value,
                        &key("protocol"),
                        "must be 4 (MQTT 3.1.1) or 5 (MQTT 5)",
                    ));
                }
            },
        };
        let keep_alive = match &self.keep_alive_secs {
            None => Duration::from_secs(30),
            Some(secs) => Duration::from_secs(doc.int(
                secs,
                &key("keep_alive_secs"),
                5..=i64::from(u16::MAX),
                "seconds",
            )?),
        };
        let clean_start = self.clean_start.as_ref().is_some_and(|v| *v.get_ref());
        let session_expiry_secs: u32 = match &self.session_expiry_secs {
            None => u32::try_from(DEFAULT_SESSION_EXPIRY_SECS).unwrap_or(u32::MAX),
            Some(secs) => {
                let key = key("session_expiry_secs");
                if protocol == Protocol::V4 {
                    return Err(doc.bad(
                        secs,
                        &key,
                        "MQTT 3.1.1 (protocol = 4) has no session expiry; the remote's own setting applies",
                    ));
                }
                if clean_start {
                    return Err(doc.bad(
                        secs,
                        &key,
                        "given with clean_start = true, which keeps no session",
                    ));
                }
                doc.int(secs, &key, 1..=i64::from(u32::MAX), "seconds")?
            }
        };
        let max_queue_mb: u64 = match &self.max_queue_mb {
            None => DEFAULT_MAX_QUEUE_MB.unsigned_abs(),
            Some(mb) => doc.int(mb, &key("max_queue_mb"), 1..=MAX_QUEUE_MB, "MiB")?,
        };
        let forward = self
            .forward
            .iter()
            .enumerate()
            .map(|(i, rule)| {
                rule.get_ref()
                    .validate(doc, limits, &key(&format!("forward[{i}]")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let subscribe = self
            .subscribe
            .iter()
            .enumerate()
            .map(|(i, rule)| {
                rule.get_ref()
                    .validate(doc, limits, &key(&format!("subscribe[{i}]")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if forward.is_empty() && subscribe.is_empty() {
            return Err(missing(
                "forward",
                "a bridge with neither forward nor subscribe rules would carry nothing",
            ));
        }
        Ok(BridgeConfig {
            name: name.into_inner(),
            remote,
            ca_file,
            client_id: client_id.into_inner(),
            username: self.username.map(Spanned::into_inner),
            credential,
            client_cert,
            protocol,
            keep_alive,
            clean_start,
            session_expiry_secs,
            forward,
            subscribe,
            max_queue_bytes: max_queue_mb.saturating_mul(MIB as u64),
        })
    }
}

fn qos(doc: &Document<'_>, value: Option<&Spanned<i64>>, key: &str) -> Result<QoS, ConfigError> {
    match value.map(|v| (v, *v.get_ref())) {
        None | Some((_, 1)) => Ok(QoS::AtLeastOnce),
        Some((_, 0)) => Ok(QoS::AtMostOnce),
        Some((value, _)) => Err(doc.bad(
            value,
            &format!("{key}.qos"),
            "must be 0 or 1 (the queue already makes a bridged message at-least-once)",
        )),
    }
}

/// A prefix put in front of topics: anything a topic may hold, wildcards
/// excepted.
fn prefix(
    doc: &Document<'_>,
    value: Option<&Spanned<String>>,
    key: &str,
) -> Result<String, ConfigError> {
    let Some(value) = value else {
        return Ok(String::new());
    };
    let text = value.get_ref();
    if let Some(wildcard) = text.chars().find(|c| matches!(c, '+' | '#' | '\0')) {
        return Err(doc.bad(
            value,
            key,
            format!(
                "must not contain `{}`: it is put in front of topic names",
                wildcard.escape_default()
            ),
        ));
    }
    Ok(text.clone())
}

/// A filter of a rule: valid for MQTT, and within the gateway's topic
/// limits, as a device's filter must be.
fn filter(
    doc: &Document<'_>,
    value: &Spanned<String>,
    limits: &TopicLimits,
    key: &str,
) -> Result<TopicFilter, ConfigError> {
    let parsed = TopicFilter::parse(value.get_ref()).map_err(|err| doc.bad(value, key, err))?;
    within(doc, value, parsed.as_str(), limits, key)?;
    Ok(parsed)
}

/// Checks `filter` (`value` itself, or what it maps to) against `limits`.
fn within(
    doc: &Document<'_>,
    value: &Spanned<String>,
    filter: &str,
    limits: &TopicLimits,
    key: &str,
) -> Result<(), ConfigError> {
    limits
        .requested(filter)
        .map(drop)
        .map_err(|err| doc.bad(value, key, err))
}

impl RawForward {
    fn validate(
        &self,
        doc: &Document<'_>,
        limits: &TopicLimits,
        key: &str,
    ) -> Result<ForwardRule, ConfigError> {
        Ok(ForwardRule {
            local: filter(doc, &self.local, limits, &format!("{key}.local"))?,
            remote_prefix: prefix(
                doc,
                self.remote_prefix.as_ref(),
                &format!("{key}.remote_prefix"),
            )?,
            qos: qos(doc, self.qos.as_ref(), key)?,
        })
    }
}

impl RawSubscribe {
    fn validate(
        &self,
        doc: &Document<'_>,
        limits: &TopicLimits,
        key: &str,
    ) -> Result<SubscribeRule, ConfigError> {
        let remote = filter(doc, &self.remote, limits, &format!("{key}.remote"))?;
        let strip_prefix = prefix(
            doc,
            self.strip_prefix.as_ref(),
            &format!("{key}.strip_prefix"),
        )?;
        // Every topic the filter matches must carry the prefix, or some
        // messages would have no local topic.
        if !remote.as_str().starts_with(&strip_prefix) {
            if let Some(value) = &self.strip_prefix {
                return Err(doc.bad(
                    value,
                    &format!("{key}.strip_prefix"),
                    format!(
                        "`{strip_prefix}` does not begin the remote filter `{}`",
                        remote.as_str()
                    ),
                ));
            }
        }
        if remote.as_str().len() == strip_prefix.len() {
            if let Some(value) = &self.strip_prefix {
                return Err(doc.bad(
                    value,
                    &format!("{key}.strip_prefix"),
                    "is the whole remote filter; leave a level to map",
                ));
            }
        }
        let local_prefix = prefix(
            doc,
            self.local_prefix.as_ref(),
            &format!("{key}.local_prefix"),
        )?;
        // What the rule brings in lands under the mapped filter: a prefix
        // that takes it past the limits would refuse every message.
        if let Some(value) = &self.local_prefix {
            let rest = remote.as_str().get(strip_prefix.len()..).unwrap_or("");
            within(
                doc,
                value,
                &format!("{local_prefix}{rest}"),
                limits,
                &format!("{key}.local_prefix"),
            )?;
        }
        Ok(SubscribeRule {
            remote,
            strip_prefix,
            local_prefix,
            qos: qos(doc, self.qos.as_ref(), key)?,
        })
    }
}

/// Parses `mqtts://host[:port]` (or `mqtt://` to a loopback host); IPv6
/// addresses in brackets.
fn parse_remote(text: &str) -> Result<Remote, String> {
    let (transport, rest) = if let Some(rest) = text.strip_prefix("mqtts://") {
        (Transport::Tls, rest)
    } else if let Some(rest) = text.strip_prefix("mqtt://") {
        (Transport::Plain, rest)
    } else {
        return Err(format!(
            "`{text}` is not an mqtts:// address (for example \"mqtts://broker.example:8883\")"
        ));
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let (host, port) = if let Some(bracketed) = rest.strip_prefix('[') {
        let (host, after) = bracketed
            .split_once(']')
            .ok_or_else(|| format!("`{text}`: an IPv6 address needs its closing `]`"))?;
        (host, after.strip_prefix(':'))
    } else {
        match rest.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (rest, None),
        }
    };
    if host.is_empty() || host.contains(['/', '@', '?', '#', ' ']) {
        return Err(format!(
            "`{text}` names no host (user, path and query are not taken)"
        ));
    }
    let port = match port {
        None => match transport {
            Transport::Tls => MQTTS_PORT,
            Transport::Plain => MQTT_PORT,
        },
        Some(port) => match port.parse::<u16>() {
            Ok(port) if port > 0 => port,
            _ => return Err(format!("`{text}`: `{port}` is not a port number")),
        },
    };
    let loopback = host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if transport == Transport::Plain && !loopback {
        return Err(format!(
            "`{text}` would send tokens and data in the clear; use mqtts:// (plain mqtt:// only reaches a loopback host)"
        ));
    }
    Ok(Remote {
        host: host.to_owned(),
        port,
        transport,
    })
}
