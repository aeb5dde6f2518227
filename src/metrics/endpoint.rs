//! The `/metrics` endpoint: plain HTTP on `[metrics] listen`, for
//! Prometheus and `curl`.
//!
//! It answers `GET /metrics` (and `HEAD`) with the exposition and nothing
//! else, one request per connection, which is how Prometheus scrapes. The
//! HTTP is hyper's, with the bounds of [`crate::http`]: anyone who can
//! reach the port can open connections, so at most [`MAX_CONNECTIONS`] are
//! served at once and a new one closes the oldest. Sockets opened and left
//! silent therefore cannot hold a scrape off; the exposition itself is
//! prometheus-client's.

use std::sync::Arc;
use std::time::Duration;

use hyper::{Method, Response, StatusCode, header};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::Exposition;
use crate::http::{self, Body, Places};

/// Scrapes served at once; a new connection past it closes the oldest.
pub const MAX_CONNECTIONS: usize = 64;

/// Serves scrapes on `listener` until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    exposition: Arc<Exposition>,
    mut shutdown: watch::Receiver<bool>,
) {
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "metrics: serving /metrics");
    }
    let mut places = Places::new(MAX_CONNECTIONS);
    loop {
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
        let task = tokio::spawn(async move {
            let served = http::serve_one(stream, move |request| {
                answer(request.method(), request.uri().path(), &exposition)
            })
            .await;
            if let Err(e) = served {
                debug!(%peer, error = %e, "metrics: scrape failed");
            }
        });
        places.enter(task.abort_handle());
    }
}

/// The response to `method` on `path` (the query, which Prometheus may
/// add, is not read). hyper leaves the body out for HEAD.
fn answer(method: &Method, path: &str, exposition: &Exposition) -> Response<Body> {
    if path != "/metrics" {
        return http::text(StatusCode::NOT_FOUND, "only /metrics is served here");
    }
    if method != Method::GET && method != Method::HEAD {
        let mut refused = http::text(StatusCode::METHOD_NOT_ALLOWED, "GET /metrics");
        refused
            .headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
        return refused;
    }
    let mut response = Response::new(Body::from(exposition.render()));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(
            prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
        ),
    );
    response
}
