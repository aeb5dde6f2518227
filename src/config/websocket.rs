//! The `[websocket]` table: MQTT over secure WebSockets, for browsers and
//! web clients (a page cannot open a raw TCP socket).

use std::net::SocketAddr;

use serde::Deserialize;
use toml::Spanned;

use super::document::{ConfigError, Document};

/// `[websocket] path` by default: what Mosquitto's clients, EMQX, NanoMQ
/// and HiveMQ use, and so what web clients try first.
pub const DEFAULT_PATH: &str = "/mqtt";

/// The longest `path`: an HTTP request line is read under a small bound.
const MAX_PATH_BYTES: usize = 256;

/// The WebSocket listener. TLS with the `[tls]` certificate, as the MQTT
/// listener: there is no plaintext WebSocket listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebSocketConfig {
    /// `[websocket] listen`; off when unset.
    pub listen: Option<SocketAddr>,
    /// The path an upgrade must ask for; any other gets 404.
    pub path: String,
    /// The `Origin`s a browser page may upgrade from (`scheme://host[:port]`,
    /// lowercase); empty allows any, and requests without an `Origin`.
    pub allowed_origins: Vec<String>,
}

impl Default for WebSocketConfig {
    fn default() -> Self {
        WebSocketConfig {
            listen: None,
            path: DEFAULT_PATH.to_owned(),
            allowed_origins: Vec::new(),
        }
    }
}

#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "the [websocket] table")]
pub(super) struct RawWebSocket {
    listen: Option<Spanned<String>>,
    path: Option<Spanned<String>>,
    allowed_origins: Vec<Spanned<String>>,
}

impl RawWebSocket {
    pub(super) fn validate(self, doc: &Document<'_>) -> Result<WebSocketConfig, ConfigError> {
        let mut config = WebSocketConfig::default();
        if let Some(listen) = &self.listen {
            config.listen = Some(doc.socket_addr(listen, "[websocket] listen", "0.0.0.0:8884")?);
        }
        if let Some(path) = &self.path {
            check_path(path.get_ref()).map_err(|why| doc.bad(path, "[websocket] path", why))?;
            config.path = path.get_ref().clone();
        }
        for (i, origin) in self.allowed_origins.iter().enumerate() {
            let key = format!("[websocket] allowed_origins[{i}]");
            let normal = origin_of(origin.get_ref()).map_err(|why| doc.bad(origin, &key, why))?;
            config.allowed_origins.push(normal);
        }
        Ok(config)
    }
}

/// Why `path` cannot be matched against a request's path.
fn check_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err(format!(
            "`{path}` does not start with '/' (for example \"/mqtt\")"
        ));
    }
    if path.len() > MAX_PATH_BYTES {
        return Err(format!("longer than {MAX_PATH_BYTES} bytes"));
    }
    if let Some(c) = path
        .chars()
        .find(|c| matches!(c, '?' | '#') || !c.is_ascii_graphic())
    {
        return Err(format!(
            "`{path}` holds {c:?}: a path is printable ASCII without a query or fragment"
        ));
    }
    Ok(())
}

/// `origin` as browsers send it in `Origin` (RFC 6454: scheme, host and
/// an optional port, no path), lowercased; or why it is not one.
fn origin_of(origin: &str) -> Result<String, String> {
    let example = "for example \"https://dashboard.example\" or \"http://localhost:8080\"";
    let Some((scheme, rest)) = origin.split_once("://") else {
        return Err(format!("`{origin}` is not an origin ({example})"));
    };
    if !matches!(scheme.to_ascii_lowercase().as_str(), "http" | "https") {
        return Err(format!(
            "`{origin}`: an origin's scheme is http or https ({example})"
        ));
    }
    if rest.is_empty() || rest.contains(['/', '?', '#', '@']) || !rest.is_ascii() {
        return Err(format!(
            "`{origin}`: an origin is a scheme, a host and a port, with no path ({example})"
        ));
    }
    Ok(origin.to_ascii_lowercase())
}
