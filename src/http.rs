//! The one HTTP stack: hyper's HTTP/1.1 server, under the bounds every
//! listener a stranger can reach needs.
//!
//! The `/metrics` endpoint and the WebSocket listener's upgrade both serve
//! their requests through [`serve_one`]; nothing else in jwtgate parses
//! HTTP. Each connection carries one request: Prometheus opens one per
//! scrape, and a WebSocket connection is HTTP only until its upgrade. The
//! request head must arrive within [`HEAD_TIMEOUT`] and fit in
//! [`MAX_HEAD`]; a listener with no other bound on its connections holds at
//! most a fixed number ([`Places`]), the oldest making room for the newest,
//! so that sockets held open in silence cannot keep an honest client out.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode, header};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::task::AbortHandle;

/// Time for a client to send its whole request head.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest request head read: hyper's floor for its read buffer; a
/// scrape or a browser's upgrade request takes a few hundred bytes.
pub const MAX_HEAD: usize = 8 * 1024;
/// Header lines a request may have (a browser's upgrade sends about 15).
const MAX_HEADERS: usize = 64;

/// A response body: always whole, and small.
pub type Body = Full<Bytes>;

/// Serves one HTTP/1.1 request on `io` with `answer`, then closes it; when
/// `answer` said 101 (and kept the request's `hyper::upgrade::on`), the
/// connection is handed over to the upgrade once the response is written.
pub async fn serve_one<I>(
    io: I,
    answer: impl Fn(Request<Incoming>) -> Response<Body> + Send + Sync + 'static,
) -> Result<(), hyper::Error>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |request| {
        let mut response = answer(request);
        // One request a connection: said in the answer rather than by
        // turning keep-alive off, with which hyper also writes `close` into
        // a 101's `Connection: Upgrade`, and WebSocket clients that hold to
        // RFC 6455 (tungstenite's) refuse the upgrade.
        if response.status() != StatusCode::SWITCHING_PROTOCOLS {
            response.headers_mut().insert(
                header::CONNECTION,
                header::HeaderValue::from_static("close"),
            );
        }
        std::future::ready(Ok::<_, Infallible>(response))
    });
    http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT)
        .max_buf_size(MAX_HEAD)
        .max_headers(MAX_HEADERS)
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades()
        .await
}

/// A plain-text response: `status` with `text` (and a newline) as body.
pub fn text(status: StatusCode, text: &str) -> Response<Body> {
    let mut response = Response::new(Body::new(Bytes::from(format!("{text}\n"))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// The connections a listener serves at once, each its own task. Past
/// `cap`, the oldest still running is closed for the newest: what stays
/// is whoever came last, so an attacker's silent sockets age out under
/// an honest client's new one instead of holding it off.
#[derive(Debug)]
pub struct Places {
    cap: usize,
    live: VecDeque<AbortHandle>,
}

impl Places {
    pub fn new(cap: usize) -> Places {
        Places {
            cap: cap.max(1),
            live: VecDeque::with_capacity(cap),
        }
    }

    /// Counts in the connection served by `task`, closing the oldest if
    /// every place is taken.
    pub fn enter(&mut self, task: AbortHandle) {
        self.live.retain(|live| !live.is_finished());
        if self.live.len() >= self.cap {
            if let Some(oldest) = self.live.pop_front() {
                oldest.abort();
            }
        }
        self.live.push_back(task);
    }
}

#[cfg(test)]
mod tests;
