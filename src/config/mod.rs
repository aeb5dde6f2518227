//! Typed gateway configuration, parsed once from TOML.
//!
//! ## The model
//!
//! A [`Config`] is built once at start-up, by [`Config::load`] from a file or
//! by [`Config::defaults`] when no file is given, and then handed down to the
//! rest of the gateway as plain data. Nothing reads the file again and
//! nothing downstream re-validates: once a `Config` exists, every value in it
//! is usable. Timeouts are [`Duration`](std::time::Duration)s, the
//! reaction to a refused publish is a [`DenyPublish`], the algorithm
//! allow-list is a list of [`jsonwebtoken::Algorithm`]s, and every path has
//! already been resolved against the directory of the file it came from.
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
//!
//! ## One file a section
//!
//! Each section of the file has its own module, holding its public types,
//! their defaults, the raw table and the checks that turn one into the
//! other: `auth` (`[auth]`), `limits` (`[limits]`), `sessions`
//! (`[sessions]`, and the old `[router]` it replaced), `service` (the
//! service's own `listen`, `[tls]`, `[storage]`, `[log]` and `[metrics]`),
//! `websocket`, `admin`, `sys` and `bridge` (`[[bridge]]`). They all report through `document` (the
//! text with its spans, and [`ConfigError`]), never through this module,
//! which only assembles a [`Config`] from them: a section reads on its own,
//! and no section imports what imports it. Of the rest of the crate,
//! `config` uses [`crate::mqtt`] alone, so any module can read its plain
//! data without a circle.

// Untrusted input (the config file is read whatever it holds): fail with an
// error, never a panic, here and in every file below. Tests are exempt
// through clippy.toml; an exception in this code carries an `#[allow]`
// saying why it cannot fail. See "Robustness" in the crate docs.
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

mod admin;
mod auth;
mod bridge;
mod document;
mod limits;
mod service;
mod sessions;
mod sys;
mod websocket;

pub use admin::{AdminConfig, DEFAULT_SOCKET as DEFAULT_ADMIN_SOCKET};
pub use auth::{AuthConfig, ClientIdBinding, DenyPublish};
pub use bridge::{
    BridgeConfig, ClientCert, Credential, ForwardRule, Protocol, Remote, SubscribeRule, Transport,
};
pub use document::ConfigError;
pub use limits::Limits;
pub use service::{ClientAuth, LogConfig, LogFormat, MetricsConfig, StorageConfig, TlsPaths};
pub use sessions::{SessionSettings, SlowSubscriber};
pub use sys::SysConfig;
pub use websocket::WebSocketConfig;

use admin::RawAdmin;
use auth::RawAuth;
use document::Document;
use limits::RawLimits;
use service::{DEFAULT_LISTEN, RawLog, RawMetrics, RawStorage, RawTls};
use sessions::{RawRouter, RawSessions};
use sys::RawSys;
use websocket::RawWebSocket;

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
    pub websocket: WebSocketConfig,
    /// `[admin] socket`: the status and control commands' way in.
    pub admin: AdminConfig,
    /// `[sys] interval_secs`: the `$SYS/broker/...` figures.
    pub sys: SysConfig,
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
            listen: DEFAULT_LISTEN,
            tls: TlsPaths::defaults(base_dir),
            auth: AuthConfig::defaults(base_dir),
            limits: Limits::default(),
            sessions: SessionSettings::default(),
            storage: StorageConfig::defaults(base_dir),
            bridges: Vec::new(),
            log: LogConfig::default(),
            metrics: MetricsConfig::default(),
            websocket: WebSocketConfig::default(),
            admin: AdminConfig::defaults(base_dir),
            sys: SysConfig::default(),
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
    websocket: RawWebSocket,
    admin: RawAdmin,
    sys: RawSys,
    /// rumqttd's router's table, gone with it; read only to refuse it with
    /// an error naming the replacement.
    router: Option<Spanned<RawRouter>>,
}

impl RawConfig {
    fn validate(self, doc: &Document<'_>, base_dir: &Path) -> Result<Config, ConfigError> {
        let mut config = Config::defaults(base_dir);
        if let Some(listen) = &self.listen {
            config.listen = doc.socket_addr(listen, "listen", "0.0.0.0:8883")?;
        }
        self.tls.validate(doc, base_dir, &mut config.tls)?;
        self.auth
            .validate(doc, base_dir, self.deny_publish, &mut config.auth)?;
        self.limits.validate(doc, &mut config.limits)?;
        if let Some(router) = &self.router {
            return Err(RawRouter::refuse(router, doc));
        }
        self.sessions.validate(doc, &mut config.sessions)?;
        self.storage.validate(doc, base_dir, &mut config.storage)?;
        config.bridges = bridge::validate(self.bridge, doc, base_dir, &config.limits.topics)?;
        self.log.apply(&mut config.log);
        config.metrics = self.metrics.validate(doc)?;
        config.websocket = self.websocket.validate(doc)?;
        config.admin = self.admin.validate(doc, base_dir)?;
        config.sys = self.sys.validate(doc)?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests;
