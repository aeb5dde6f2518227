//! MQTT over secure WebSockets (MQTT §6): the upgrade, then a byte stream
//! under the same connection loop as MQTT over TLS.
//!
//! A connection on `[websocket] listen` is TLS first, as on the MQTT
//! listener, then one HTTP/1.1 request ([`crate::http`]) that must ask to
//! upgrade to a WebSocket (version 13) on `[websocket] path`, from an
//! allowed `Origin`, offering an MQTT subprotocol. Anything else is
//! answered with an HTTP error and closed ([`Refused`]). After the 101,
//! [`WsStream`] turns binary messages into the bytes
//! [`super::connection::serve`] reads, exactly as it reads TLS: an MQTT
//! packet may span messages and a message may carry several packets.
//!
//! The token is never read from the request: not from a query string nor
//! an `Authorization` header. It travels in CONNECT, as over TLS, so it
//! stays out of proxies' and servers' access logs.

// Untrusted input (a stranger's HTTP request and frames): fail with an
// error, never a panic. See "Robustness" in the crate docs.
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod stream;

use std::sync::{Arc, Mutex, PoisonError};

use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper::{HeaderMap, Method, Request, Response, StatusCode, Version, header};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use crate::config::WebSocketConfig;
use crate::http::{self, Body};

pub(super) use stream::WsStream;

/// The subprotocols an MQTT client may offer: `mqtt` (MQTT §6), and the
/// names mqtt.js offers for MQTT 3.1 and EMQX and HiveMQ accept.
const SUBPROTOCOLS: [&str; 4] = ["mqtt", "mqttv3.1", "mqttv3.1.1", "mqttv5"];

/// Why an upgrade request was refused: each knows its HTTP answer and the
/// label it is counted under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("not the WebSocket path")]
    WrongPath,
    #[error("not a GET")]
    Method,
    #[error("not a WebSocket upgrade")]
    NotUpgrade,
    #[error("not WebSocket version 13")]
    Version,
    #[error("an Origin that [websocket] allowed_origins does not list")]
    Origin,
    #[error("no MQTT subprotocol offered")]
    Subprotocol,
}

impl Refused {
    pub const ALL: [Refused; 6] = [
        Refused::WrongPath,
        Refused::Method,
        Refused::NotUpgrade,
        Refused::Version,
        Refused::Origin,
        Refused::Subprotocol,
    ];

    pub const fn label(self) -> &'static str {
        match self {
            Refused::WrongPath => "wrong_path",
            Refused::Method => "method",
            Refused::NotUpgrade => "not_upgrade",
            Refused::Version => "version",
            Refused::Origin => "origin",
            Refused::Subprotocol => "subprotocol",
        }
    }

    fn response(self, path: &str) -> Response<Body> {
        let mut response = match self {
            Refused::WrongPath => http::text(
                StatusCode::NOT_FOUND,
                &format!("MQTT over WebSockets is served on {path}"),
            ),
            Refused::Method => http::text(
                StatusCode::METHOD_NOT_ALLOWED,
                "GET with Upgrade: websocket",
            ),
            Refused::NotUpgrade | Refused::Version => http::text(
                StatusCode::UPGRADE_REQUIRED,
                "MQTT over WebSockets: Upgrade: websocket, Sec-WebSocket-Version: 13",
            ),
            Refused::Origin => http::text(StatusCode::FORBIDDEN, "this Origin may not connect"),
            Refused::Subprotocol => http::text(
                StatusCode::BAD_REQUEST,
                "offer the WebSocket subprotocol mqtt (Sec-WebSocket-Protocol: mqtt)",
            ),
        };
        let headers = response.headers_mut();
        if self == Refused::Method {
            headers.insert(header::ALLOW, header::HeaderValue::from_static("GET"));
        }
        if matches!(self, Refused::NotUpgrade | Refused::Version) {
            headers.insert(
                header::UPGRADE,
                header::HeaderValue::from_static("websocket"),
            );
            headers.insert(
                header::SEC_WEBSOCKET_VERSION,
                header::HeaderValue::from_static("13"),
            );
        }
        response
    }
}

/// Why a WebSocket connection did not come up.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("upgrade refused: {0}")]
    Refused(Refused),
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    #[error("the connection closed before the upgrade")]
    Closed,
}

/// What an upgrade request must satisfy, from `[websocket]`.
#[derive(Debug, Clone)]
pub struct Policy {
    path: String,
    /// Lowercase; empty allows any.
    allowed_origins: Vec<String>,
    /// The largest message a client may send: one whole MQTT packet of the
    /// largest size allowed, and its fixed header.
    max_message: usize,
}

/// An upgrade the request may have.
#[derive(Debug, PartialEq, Eq)]
struct Accepted {
    /// `Sec-WebSocket-Accept`.
    accept: String,
    /// The subprotocol chosen, as the client spelt it.
    protocol: String,
}

impl Policy {
    /// The policy of `config`, for packets of up to `max_packet_size`.
    pub fn new(config: &WebSocketConfig, max_packet_size: usize) -> Policy {
        Policy {
            path: config.path.clone(),
            allowed_origins: config.allowed_origins.clone(),
            max_message: max_packet_size.saturating_add(5),
        }
    }

    /// The path upgrades are served on.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Takes the upgrade request from `io` (after TLS) and, when it may
    /// upgrade, answers 101 and hands back the WebSocket.
    pub async fn upgrade<I>(self: &Arc<Self>, io: I) -> Result<WsStream, UpgradeError>
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        // Filled by the answer: the request's upgrade, or why it had none.
        let outcome: Arc<Mutex<Option<Result<OnUpgrade, Refused>>>> = Arc::default();
        let policy = Arc::clone(self);
        let answered = Arc::clone(&outcome);
        http::serve_one(io, move |mut request| {
            let (response, result) = match policy.check(&request) {
                Ok(accepted) => (switching(accepted), Ok(hyper::upgrade::on(&mut request))),
                Err(refused) => (refused.response(&policy.path), Err(refused)),
            };
            *answered.lock().unwrap_or_else(PoisonError::into_inner) = Some(result);
            response
        })
        .await?;
        let outcome = outcome
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        match outcome {
            Some(Ok(upgrade)) => {
                let upgraded: Upgraded = upgrade.await?;
                Ok(WsStream::new(TokioIo::new(upgraded), self.max_message).await)
            }
            Some(Err(refused)) => Err(UpgradeError::Refused(refused)),
            None => Err(UpgradeError::Closed),
        }
    }

    fn check<B>(&self, request: &Request<B>) -> Result<Accepted, Refused> {
        if request.uri().path() != self.path {
            return Err(Refused::WrongPath);
        }
        if request.method() != Method::GET {
            return Err(Refused::Method);
        }
        let headers = request.headers();
        let upgrade = request.version() == Version::HTTP_11
            && has_token(headers, header::CONNECTION, "upgrade")
            && has_token(headers, header::UPGRADE, "websocket");
        let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY).filter(|_| upgrade) else {
            return Err(Refused::NotUpgrade);
        };
        if headers
            .get(header::SEC_WEBSOCKET_VERSION)
            .map(|v| v.as_bytes())
            != Some(b"13")
        {
            return Err(Refused::Version);
        }
        // Origin restrains browsers, which always send it; a device's
        // client may send none, and could send any.
        if let Some(origin) = headers.get(header::ORIGIN) {
            let allowed = self.allowed_origins.is_empty()
                || origin.to_str().is_ok_and(|origin| {
                    self.allowed_origins
                        .iter()
                        .any(|allowed| allowed.eq_ignore_ascii_case(origin))
                });
            if !allowed {
                return Err(Refused::Origin);
            }
        }
        let protocol = offered(headers)
            .find(|offer| SUBPROTOCOLS.iter().any(|p| p.eq_ignore_ascii_case(offer)))
            .ok_or(Refused::Subprotocol)?;
        Ok(Accepted {
            accept: derive_accept_key(key.as_bytes()),
            protocol: protocol.to_owned(),
        })
    }
}

/// Whether header `name` lists `token` (comma-separated, any case).
fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|item| item.trim().eq_ignore_ascii_case(token))
}

/// The subprotocols the client offers, in its order of preference.
fn offered(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
}

/// The 101 answer to an accepted upgrade.
fn switching(accepted: Accepted) -> Response<Body> {
    let mut response = Response::new(Body::default());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(
        header::UPGRADE,
        header::HeaderValue::from_static("websocket"),
    );
    headers.insert(
        header::CONNECTION,
        header::HeaderValue::from_static("Upgrade"),
    );
    // Both came from the request's header values, which are already valid
    // header text, or from base64.
    if let Ok(accept) = header::HeaderValue::from_str(&accepted.accept) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    if let Ok(protocol) = header::HeaderValue::from_str(&accepted.protocol) {
        headers.insert(header::SEC_WEBSOCKET_PROTOCOL, protocol);
    }
    response
}

#[cfg(test)]
mod tests;
