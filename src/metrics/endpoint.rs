//! The `/metrics` endpoint: plain HTTP on `[metrics] listen`, for
//! Prometheus and `curl`.
//!
//! It answers `GET /metrics` (and `HEAD`) with the exposition and nothing
//! else, one request per connection (`Connection: close`), which is how
//! Prometheus scrapes. Every connection is bounded, since anyone who can
//! reach the port can open one: the request head must arrive within
//! [`REQUEST_TIMEOUT`] and fit in [`MAX_REQUEST_HEAD`], and at most
//! [`MAX_CONNECTIONS`] are served at once. A web framework would bring a
//! second HTTP stack into an edge binary for one fixed response; the
//! exposition itself is prometheus-client's.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tracing::{debug, info, warn};

use super::Exposition;

/// Time for a scraper to send its request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest request head read (Prometheus sends a few hundred bytes).
pub const MAX_REQUEST_HEAD: usize = 8 * 1024;
/// Scrapes served at once; more wait for the accept.
pub const MAX_CONNECTIONS: usize = 16;

/// Serves scrapes on `listener` until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    exposition: Arc<Exposition>,
    mut shutdown: watch::Receiver<bool>,
) {
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "metrics: serving /metrics");
    }
    let places = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(place) = Arc::clone(&places).acquire_owned().await else {
            return;
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    warn!(error = %e, "metrics: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let exposition = Arc::clone(&exposition);
        tokio::spawn(async move {
            if let Err(e) = answer(stream, &exposition).await {
                debug!(%peer, error = %e, "metrics: scrape failed");
            }
            drop(place);
        });
    }
}

/// Reads one request head and writes one response.
async fn answer(mut stream: TcpStream, exposition: &Exposition) -> std::io::Result<()> {
    let head = match tokio::time::timeout(REQUEST_TIMEOUT, read_head(&mut stream)).await {
        Ok(head) => head?,
        Err(_) => return Ok(()),
    };
    let response = match Request::parse(&head) {
        Some(request) if request.path != "/metrics" => {
            Response::text("404 Not Found", "only /metrics is served here\n")
        }
        Some(Request { method: "GET", .. }) => Response::metrics(exposition.render(), true),
        Some(Request { method: "HEAD", .. }) => Response::metrics(exposition.render(), false),
        Some(_) => Response::text("405 Method Not Allowed", "GET /metrics\n"),
        None => Response::text("400 Bad Request", "not an HTTP request\n"),
    };
    stream.write_all(&response.0).await?;
    stream.shutdown().await
}

/// Reads up to the blank line that ends a request head, within
/// [`MAX_REQUEST_HEAD`] bytes; what came is returned either way.
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    while head.len() < MAX_REQUEST_HEAD && !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(chunk.get(..n).unwrap_or_default());
    }
    Ok(head)
}

/// The request line of an HTTP/1.x request.
#[derive(Debug, PartialEq, Eq)]
struct Request<'a> {
    method: &'a str,
    /// The path without a query string (Prometheus may add parameters).
    path: &'a str,
}

impl<'a> Request<'a> {
    fn parse(head: &'a [u8]) -> Option<Request<'a>> {
        let line = head.split(|&b| b == b'\n').next()?;
        let line = std::str::from_utf8(line).ok()?.trim_end_matches('\r');
        let mut words = line.split(' ');
        let (method, target, version) = (words.next()?, words.next()?, words.next()?);
        if words.next().is_some() || !version.starts_with("HTTP/1.") {
            return None;
        }
        let path = target.split('?').next()?;
        Some(Request { method, path })
    }
}

/// A whole response, head and body.
struct Response(Vec<u8>);

impl Response {
    fn metrics(body: String, with_body: bool) -> Response {
        Response::new(
            "200 OK",
            prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            body.len(),
            with_body.then_some(body.as_bytes()),
        )
    }

    fn text(status: &str, body: &str) -> Response {
        Response::new(
            status,
            "text/plain; charset=utf-8",
            body.len(),
            Some(body.as_bytes()),
        )
    }

    fn new(status: &str, content_type: &str, length: usize, body: Option<&[u8]>) -> Response {
        let mut bytes = format!(
            "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {length}\r\n\
             Connection: close\r\n\r\n"
        )
        .into_bytes();
        bytes.extend_from_slice(body.unwrap_or_default());
        Response(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines() {
        let get = Request::parse(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(
            get,
            Some(Request {
                method: "GET",
                path: "/metrics"
            })
        );
        let query = Request::parse(b"GET /metrics?name[]=x HTTP/1.0\r\n\r\n");
        assert_eq!(query.map(|r| r.path), Some("/metrics"));
        for bad in [
            &b""[..],
            b"GET\r\n",
            b"GET /metrics\r\n\r\n",
            b"GET /metrics SPDY/3\r\n\r\n",
            b"GET /metrics HTTP/1.1 extra\r\n",
            b"\xff\xfe /metrics HTTP/1.1\r\n",
        ] {
            assert_eq!(Request::parse(bad), None, "{bad:?}");
        }
    }
}
