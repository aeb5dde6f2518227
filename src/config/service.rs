//! The service's own settings: the `listen` address, and the `[tls]`,
//! `[storage]`, `[log]` and `[metrics]` tables.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::document::{ConfigError, Document};

/// `listen` by default: every IPv4 address, on the port MQTT over TLS is
/// registered on.
pub(super) const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 8883));

/// `[storage] sync_interval_ms` by default. A second bounds what a power
/// cut loses to the last second of traffic, while one fsync a second costs
/// an SD card or eMMC nothing noticeable; forcing every commit would cost
/// a device's QoS 1 round trip 5-30 ms on such storage.
const DEFAULT_SYNC_INTERVAL: Duration = Duration::from_secs(1);

/// The longest `[storage] sync_interval_ms`: a minute.
const MAX_SYNC_INTERVAL_MS: i64 = 60_000;

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

/// How the log looks (see `crate::logging` for where it goes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// What fits where stderr goes: native journal entries when it is the
    /// journal, text lines otherwise.
    #[default]
    Auto,
    /// Text lines, one per event, wherever stderr goes.
    Text,
    /// One JSON object per line, for log shippers, with every field
    /// (client id, subject, key id, remote address, outcome, reason) a key
    /// of its own.
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
    /// `[tls] client_ca`: the CA certificates devices' client certificates
    /// must chain to; no client certificate is asked for without it.
    pub client_ca: Option<PathBuf>,
    /// `[tls] client_auth`: whether a client certificate is required.
    pub client_auth: ClientAuth,
}

/// Whether a client certificate is required, when `client_ca` is set. The
/// token stays the credential either way: a certificate alone admits no
/// one, it is what a certificate-bound token is checked against.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// Asked for; a device may present none (and then use no bound token).
    #[default]
    Optional,
    /// A handshake without a valid client certificate fails.
    Required,
}

#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "the [tls] table")]
pub(super) struct RawTls {
    cert: Option<Spanned<PathBuf>>,
    key: Option<Spanned<PathBuf>>,
    client_ca: Option<Spanned<PathBuf>>,
    client_auth: Option<Spanned<ClientAuth>>,
}

#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "the [log] table")]
pub(super) struct RawLog {
    format: Option<LogFormat>,
}

#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "the [metrics] table")]
pub(super) struct RawMetrics {
    listen: Option<Spanned<String>>,
    allow_remote: bool,
}

#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "the [storage] table")]
pub(super) struct RawStorage {
    dir: Option<Spanned<PathBuf>>,
    sync_interval_ms: Option<Spanned<i64>>,
}

impl RawLog {
    pub(super) fn apply(self, log: &mut LogConfig) {
        if let Some(format) = self.format {
            log.format = format;
        }
    }
}

impl RawMetrics {
    pub(super) fn validate(self, doc: &Document<'_>) -> Result<MetricsConfig, ConfigError> {
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

impl StorageConfig {
    /// The built-in `[storage]`: the state in `base_dir/state`.
    pub(super) fn defaults(base_dir: &Path) -> StorageConfig {
        StorageConfig {
            dir: base_dir.join("state"),
            sync_interval: DEFAULT_SYNC_INTERVAL,
        }
    }
}

impl RawStorage {
    pub(super) fn validate(
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

impl TlsPaths {
    /// The built-in `[tls]`: the certificate and key in
    /// `base_dir/keys/tls/`.
    pub(super) fn defaults(base_dir: &Path) -> TlsPaths {
        TlsPaths {
            cert: base_dir.join("keys/tls/server.crt"),
            key: base_dir.join("keys/tls/server.key"),
            client_ca: None,
            client_auth: ClientAuth::Optional,
        }
    }
}

impl RawTls {
    pub(super) fn validate(
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
        if let Some(client_ca) = &self.client_ca {
            tls.client_ca = Some(doc.path(client_ca, "[tls] client_ca", base_dir)?);
        }
        if let Some(client_auth) = &self.client_auth {
            if tls.client_ca.is_none() {
                return Err(doc.bad(
                    client_auth,
                    "[tls] client_auth",
                    "needs [tls] client_ca, the CA client certificates are checked against",
                ));
            }
            tls.client_auth = *client_auth.get_ref();
        }
        Ok(())
    }
}
