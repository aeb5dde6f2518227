use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream as ClientStream;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::{ClientConfig, RootCertStore, SupportedProtocolVersion, version};

use super::*;
use crate::firstrun::write_dev_tls;
use crate::tls::{CertResolver, provider, read_certificates, server_config};

/// A server configuration with the development certificate, and a client
/// configuration of `version` that trusts it.
fn configs(
    version: &'static SupportedProtocolVersion,
) -> (tempfile::TempDir, Arc<ServerConfig>, Arc<ClientConfig>) {
    let dir = tempfile::tempdir().expect("temp dir");
    let dev = write_dev_tls(dir.path()).expect("dev TLS material");
    let resolver = CertResolver::load(&dev.server_cert, &dev.server_key).expect("certificate");
    let server = server_config(Arc::new(resolver), None).expect("server config");
    let mut roots = RootCertStore::empty();
    let ca = dev.ca_cert.as_deref().expect("a fresh directory has a CA");
    for cert in read_certificates(ca).expect("CA") {
        roots.add(cert).expect("CA is valid");
    }
    let client = ClientConfig::builder_with_provider(Arc::new(provider()))
        .with_protocol_versions(&[version])
        .expect("version")
        .with_root_certificates(roots)
        .with_no_client_auth();
    (dir, server, Arc::new(client))
}

/// A loopback TCP connection, and the server's handshake on its far end.
async fn accepting(
    server: Arc<ServerConfig>,
) -> (TcpStream, tokio::task::JoinHandle<io::Result<TlsStream>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let accepting = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.expect("accept");
        accept(server, tcp).await
    });
    (TcpStream::connect(addr).await.expect("connect"), accepting)
}

/// A handshake over loopback TCP: the server's stream and the client's.
async fn pair(
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
) -> (TlsStream, ClientStream<TcpStream>) {
    let (tcp, accepting) = accepting(server).await;
    let name = ServerName::try_from("localhost").expect("name");
    let client = TlsConnector::from(client)
        .connect(name, tcp)
        .await
        .expect("client handshake");
    let server = accepting
        .await
        .expect("accept task")
        .expect("server handshake");
    (server, client)
}

/// Bytes that show a reordering or a lost piece.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

#[tokio::test]
async fn data_crosses_both_ways_in_records_of_every_size_on_tls13_and_tls12() {
    for version in [&version::TLS13, &version::TLS12] {
        let (_dir, server, client) = configs(version);
        let (mut server, mut client) = pair(server, client).await;
        // Over several records each way, read by the server in pieces far
        // smaller than a record: the rest of a record waits in the stream.
        let sent = pattern(200 * 1024 + 7);
        let echo = tokio::spawn(async move {
            let mut got = Vec::new();
            let mut piece = [0u8; 100];
            while got.len() < 200 * 1024 + 7 {
                let n = server.read(&mut piece).await.expect("server read");
                assert!(n > 0, "the stream ended early");
                got.extend_from_slice(&piece[..n]);
            }
            server.write_all(&got).await.expect("server write");
            server.flush().await.expect("server flush");
            server
        });
        client.write_all(&sent).await.expect("client write");
        client.flush().await.expect("client flush");
        let mut back = vec![0u8; sent.len()];
        client.read_exact(&mut back).await.expect("client read");
        assert!(back == sent, "{version:?}: the echo differs");
        let server = echo.await.expect("echo task");
        assert_eq!(
            server.buffered(),
            0,
            "{version:?}: a quiet stream holds buffers"
        );
    }
}

#[tokio::test]
async fn a_quiet_connection_holds_no_buffer_while_a_read_waits() {
    let (_dir, server, client) = configs(&version::TLS13);
    let (mut server, mut client) = pair(server, client).await;
    client.write_all(b"ping").await.expect("write");
    client.flush().await.expect("flush");
    let mut got = [0u8; 4];
    server.read_exact(&mut got).await.expect("read");
    // A read that waits for a device that says nothing.
    let mut more = [0u8; 16];
    let waited = tokio::time::timeout(Duration::from_millis(100), server.read(&mut more)).await;
    assert!(waited.is_err(), "nothing was sent, nothing is read");
    assert_eq!(server.buffered(), 0);
    // A record cut in two is held until its second half comes.
    let (mut raw, _) = client.into_inner();
    raw.write_all(&[23, 3, 3, 0, 40, 1, 2, 3])
        .await
        .expect("raw write");
    let waited = tokio::time::timeout(Duration::from_millis(100), server.read(&mut more)).await;
    assert!(waited.is_err(), "half a record is not data");
    assert!(server.buffered() >= 8);
}

#[tokio::test]
async fn close_notify_ends_the_stream_and_a_bare_close_is_an_unexpected_eof() {
    let (_dir, server_config, client_config) = configs(&version::TLS13);
    let (mut server, mut client) =
        pair(Arc::clone(&server_config), Arc::clone(&client_config)).await;
    client.write_all(b"last").await.expect("write");
    client.shutdown().await.expect("client close_notify");
    let mut got = Vec::new();
    server.read_to_end(&mut got).await.expect("a clean end");
    assert_eq!(got, b"last");
    // The other way: the server's shutdown is a close_notify the client reads
    // as the end.
    server.shutdown().await.expect("server close_notify");
    let mut rest = Vec::new();
    client
        .read_to_end(&mut rest)
        .await
        .expect("the client reads a clean end");
    assert!(rest.is_empty());

    let (mut server, client) = pair(server_config, client_config).await;
    // The socket's end without a close_notify (a shutdown, not a drop: a
    // socket dropped with the session tickets unread would be reset).
    let (mut raw, _) = client.into_inner();
    raw.shutdown().await.expect("FIN");
    let mut byte = [0u8; 1];
    let err = server
        .read(&mut byte)
        .await
        .expect_err("no close_notify came");
    assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
}

#[tokio::test]
async fn a_peer_that_does_not_speak_tls_fails_the_handshake() {
    let (_dir, server, _) = configs(&version::TLS13);
    let (mut tcp, accepting) = accepting(server).await;
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let err = accepting
        .await
        .expect("accept task")
        .err()
        .expect("HTTP is not a ClientHello");
    assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
    // The server said why (an alert record, content type 21) before it
    // closed.
    let mut answer = Vec::new();
    let _ = tcp.read_to_end(&mut answer).await;
    assert_eq!(answer.first(), Some(&21), "answer: {answer:?}");
}

#[tokio::test]
async fn a_handshake_cut_short_is_an_unexpected_eof() {
    let (_dir, server, _) = configs(&version::TLS13);
    let (mut tcp, accepting) = accepting(server).await;
    // The start of a ClientHello record, then nothing.
    tcp.write_all(&[22, 3, 1, 0, 200, 1]).await.expect("write");
    drop(tcp);
    let err = accepting
        .await
        .expect("accept task")
        .err()
        .expect("half a ClientHello");
    assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "{err}");
}

#[tokio::test]
async fn a_forged_record_fails_the_stream_for_good_without_a_panic() {
    let (_dir, server, client) = configs(&version::TLS13);
    let (mut server, client) = pair(server, client).await;
    let (mut raw, _) = client.into_inner();
    // Application data that no key encrypted.
    let mut forged = vec![23, 3, 3, 0, 40];
    forged.extend_from_slice(&[0x5a; 40]);
    raw.write_all(&forged).await.expect("raw write");
    let mut byte = [0u8; 1];
    let err = server.read(&mut byte).await.expect_err("a forged record");
    assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
    // Whatever the connection's owner does next is refused, not a panic.
    let again = server.read(&mut byte).await.expect_err("still failed");
    assert_eq!(again.kind(), io::ErrorKind::BrokenPipe);
    assert!(server.write_all(b"late").await.is_err());
    let _ = server.shutdown().await;
    assert_eq!(server.buffered(), 0);
}

#[tokio::test]
async fn a_key_update_the_client_asks_for_is_answered_and_data_flows_on() {
    let (_dir, server, client) = configs(&version::TLS13);
    let (mut server, mut client) = pair(server, client).await;
    let echo = tokio::spawn(async move {
        let mut piece = [0u8; 5];
        for _ in 0..3 {
            server.read_exact(&mut piece).await.expect("server read");
            server.write_all(&piece).await.expect("server write");
            server.flush().await.expect("server flush");
        }
    });
    for word in [b"one..", b"two..", b"three"] {
        // The server must move to the client's new keys to read what
        // follows, and answers (rustls asks it to) with an update of its own.
        client
            .get_mut()
            .1
            .refresh_traffic_keys()
            .expect("key update");
        client.write_all(word).await.expect("client write");
        client.flush().await.expect("client flush");
        let mut back = [0u8; 5];
        client.read_exact(&mut back).await.expect("client read");
        assert_eq!(&back, word);
    }
    echo.await.expect("echo task");
}
