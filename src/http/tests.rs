use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

/// Sends `request` through [`serve_one`] answering 200 "hello", and
/// returns what came back.
async fn exchange(request: &[u8]) -> String {
    let (mut client, server) = tokio::io::duplex(64 * 1024);
    let served = tokio::spawn(serve_one(server, |_| text(StatusCode::OK, "hello")));
    client.write_all(request).await.unwrap();
    let mut response = Vec::new();
    client.read_to_end(&mut response).await.unwrap();
    let _ = served.await.unwrap();
    String::from_utf8(response).unwrap()
}

#[tokio::test]
async fn one_request_is_answered_and_the_connection_closed() {
    let response = exchange(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
    assert!(response.ends_with("\r\n\r\nhello\n"), "{response}");
    assert!(
        response.to_ascii_lowercase().contains("connection: close"),
        "{response}"
    );
}

/// A request whose lines end in a bare LF (curl scripts, netcat) is read
/// like any other, not left waiting for a CR that never comes.
#[tokio::test]
async fn bare_line_feeds_are_read() {
    let response = exchange(b"GET /x HTTP/1.1\nHost: a\n\n").await;
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
}

#[tokio::test]
async fn a_head_past_the_limit_is_refused() {
    let mut request = b"GET /x HTTP/1.1\r\n".to_vec();
    while request.len() <= MAX_HEAD {
        request.extend_from_slice(b"X-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
    }
    request.extend_from_slice(b"\r\n");
    let response = exchange(&request).await;
    assert!(response.starts_with("HTTP/1.1 431"), "{response}");
}

#[tokio::test]
async fn past_the_cap_the_oldest_connection_makes_room() {
    let mut places = Places::new(2);
    let finished = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..3 {
        let finished = Arc::clone(&finished);
        let task = tokio::spawn(async move {
            std::future::pending::<()>().await;
            finished.fetch_add(1, Ordering::SeqCst);
        });
        places.enter(task.abort_handle());
        tasks.push(task);
    }
    let mut tasks = tasks.into_iter();
    let oldest = tasks.next().unwrap();
    assert!(
        oldest.await.unwrap_err().is_cancelled(),
        "the oldest is closed"
    );
    for task in tasks {
        assert!(!task.is_finished(), "the newer ones are served");
        task.abort();
    }
    assert_eq!(finished.load(Ordering::SeqCst), 0);
}
