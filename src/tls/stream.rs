//! The server side of a device's TLS connection, holding no buffer while
//! the device is quiet.
//!
//! tokio-rustls's `ServerConnection` keeps a 4 KiB read buffer for its whole
//! life (rustls makes room for a 4 KiB read before every read and never
//! shrinks below it), a quarter of what an idle device cost. This stream
//! drives rustls's unbuffered API instead, which leaves the ciphertext
//! buffers to the caller:
//!
//! - ciphertext read from the socket is held only while a record is
//!   incomplete: room for a read is made once the socket is readable, and
//!   given back when every record in it has been decrypted;
//! - decrypted bytes go straight into the reader's buffer; only what does
//!   not fit waits here;
//! - ciphertext to send lives until the socket has taken it.
//!
//! [`accept`] runs the handshake (and sends the session tickets that follow
//! it); the [`TlsStream`] it returns is an `AsyncRead + AsyncWrite` like
//! tokio-rustls's, with the same answers at the end: a `close_notify` reads
//! as the end of the stream, a socket closed without one as
//! `UnexpectedEof`.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::rustls;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::CertificateDer;
use tokio_rustls::rustls::server::UnbufferedServerConnection;
use tokio_rustls::rustls::unbuffered::{
    ConnectionState, EncodeError, EncryptError, InsufficientSizeError, UnbufferedStatus,
};

/// Room made for the first socket read after a quiet spell; doubled while
/// reads fill it, up to [`MAX_READ`].
const MIN_READ: usize = 4 * 1024;
const MAX_READ: usize = 32 * 1024;
/// Ciphertext held without a record completing: a handshake message may
/// span records up to 64 KiB (rustls's own limit), an application record
/// is at most about 18 KiB. Past this the peer is sending nonsense.
const MAX_INCOMING: usize = 96 * 1024;
/// Plaintext taken per write: rustls cuts it into records; the caller's
/// next write brings the rest.
const MAX_WRITE: usize = 64 * 1024;

/// Runs the TLS handshake on `tcp`, then hands back the stream.
pub async fn accept(config: Arc<ServerConfig>, tcp: TcpStream) -> io::Result<TlsStream> {
    let conn = UnbufferedServerConnection::new(config).map_err(tls_error)?;
    let mut stream = TlsStream {
        tcp,
        conn,
        incoming: Vec::new(),
        read_size: MIN_READ,
        unread: Vec::new(),
        outgoing: Outgoing::default(),
        read_closed: false,
        close_queued: false,
        failed: false,
    };
    poll_fn(|cx| stream.poll_handshake(cx)).await?;
    Ok(stream)
}

/// A TLS connection a device opened, after its handshake.
pub struct TlsStream {
    tcp: TcpStream,
    conn: UnbufferedServerConnection,
    /// Ciphertext read and not yet decrypted: an incomplete record, or
    /// nothing at all (and then no allocation).
    incoming: Vec<u8>,
    /// Room the next socket read gets.
    read_size: usize,
    /// Decrypted bytes the last reader had no room for.
    unread: Vec<u8>,
    outgoing: Outgoing,
    /// The peer's `close_notify` arrived: every read from now on ends.
    read_closed: bool,
    close_queued: bool,
    /// rustls failed: it is not called again (it keeps offsets into the
    /// input it failed on, which is gone).
    failed: bool,
}

impl TlsStream {
    /// The client's certificate chain, leaf first, when it sent one (and the
    /// handshake verified it).
    pub fn peer_certificates(&self) -> Option<&[CertificateDer<'static>]> {
        self.conn.peer_certificates()
    }

    /// Bytes this stream holds for its connection (ciphertext both ways and
    /// decrypted bytes not yet read); 0 for a quiet connection.
    pub fn buffered(&self) -> usize {
        self.incoming.capacity() + self.unread.capacity() + self.outgoing.buf.capacity()
    }

    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            let traffic = self.process(None)?;
            ready!(self.outgoing.poll_send(&mut self.tcp, cx))?;
            // Application data may be written after the server's Finished,
            // but the client's certificate and Finished are still to come.
            if traffic && !self.conn.is_handshaking() {
                return Poll::Ready(Ok(()));
            }
            if self.read_closed {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the client closed the connection during the TLS handshake",
                )));
            }
            ready!(self.poll_fill(cx))?;
        }
    }

    /// Runs the records read so far through rustls: decrypted bytes go to
    /// `read` (or wait in `unread`), whatever rustls has to send goes to
    /// `outgoing`. True once nothing stands between the connection and
    /// application data but more input.
    fn process(&mut self, mut read: Option<&mut ReadBuf<'_>>) -> io::Result<bool> {
        if self.failed {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the TLS connection failed",
            ));
        }
        loop {
            let UnbufferedStatus { mut discard, state } =
                self.conn.process_tls_records(&mut self.incoming);
            let state = match state {
                Ok(state) => state,
                Err(e) => return Err(self.failed(e)),
            };
            let mut broken = None;
            let done = match state {
                ConnectionState::ReadTraffic(mut traffic) => {
                    while let Some(record) = traffic.next_record() {
                        let record = match record {
                            Ok(record) => record,
                            Err(e) => {
                                broken = Some(e);
                                break;
                            }
                        };
                        discard += record.discard;
                        let mut payload = record.payload;
                        if let Some(read) = read.as_deref_mut() {
                            let n = payload.len().min(read.remaining());
                            read.put_slice(&payload[..n]);
                            payload = &payload[n..];
                        }
                        self.unread.extend_from_slice(payload);
                    }
                    None
                }
                ConnectionState::EncodeTlsData(mut encode) => {
                    self.outgoing.put(|out| encode.encode(out), encode_room)?;
                    None
                }
                // Handed to `outgoing`, which the socket drains.
                ConnectionState::TransmitTlsData(transmit) => {
                    transmit.done();
                    None
                }
                ConnectionState::PeerClosed => {
                    self.read_closed = true;
                    None
                }
                ConnectionState::Closed => {
                    self.read_closed = true;
                    Some(false)
                }
                ConnectionState::WriteTraffic(_) => Some(true),
                ConnectionState::BlockedHandshake => Some(false),
                // Early data is never enabled in the configuration.
                _ => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "unexpected TLS early data",
                    ));
                }
            };
            if let Some(e) = broken {
                return Err(self.failed(e));
            }
            // rustls never asks for more than it was given; the bound is
            // there so input could not make a drain panic if it did.
            self.incoming.drain(..discard.min(self.incoming.len()));
            if self.incoming.is_empty() {
                self.incoming = Vec::new();
            }
            if let Some(traffic) = done {
                return Ok(traffic);
            }
        }
    }

    /// Encrypts `data` into `outgoing`: as much as one write takes.
    fn encrypt(&mut self, data: &[u8]) -> io::Result<usize> {
        if !self.process(None)? {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the TLS connection is closed",
            ));
        }
        let data = &data[..data.len().min(MAX_WRITE)];
        // Asked once more, with nothing left to process, rustls hands out
        // the write state itself: `process` cannot return it, as it borrows
        // the connection across the loop.
        let UnbufferedStatus { state, .. } = self.conn.process_tls_records(&mut self.incoming);
        let Ok(ConnectionState::WriteTraffic(mut traffic)) = state else {
            return Err(io::Error::other("TLS connection not ready to write"));
        };
        self.outgoing
            .put(|out| traffic.encrypt(data, out), encrypt_room)?;
        Ok(data.len())
    }

    /// Reads from the socket into `incoming` once it is readable.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            ready!(self.tcp.poll_read_ready(cx))?;
            if self.incoming.len() >= MAX_INCOMING {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "over 96 KiB of TLS input without a complete record",
                )));
            }
            self.incoming.reserve(self.read_size);
            let room = self.incoming.capacity() - self.incoming.len();
            match self.tcp.try_read_buf(&mut self.incoming) {
                Ok(0) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "peer closed connection without sending TLS close_notify",
                    )));
                }
                Ok(n) => {
                    self.read_size = if n >= room {
                        (self.read_size * 2).min(MAX_READ)
                    } else {
                        MIN_READ
                    };
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // Readiness was stale; give the room back while waiting.
                    if self.incoming.is_empty() {
                        self.incoming = Vec::new();
                    }
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    /// Turns a rustls error into the I/O error the caller sees, first
    /// queueing the alert rustls has for the peer (sent if the socket takes
    /// it).
    fn failed(&mut self, error: rustls::Error) -> io::Error {
        // The alert is the first thing rustls hands out after its error,
        // before it looks at input again. Called once more, it would take
        // up the records that failed (and rustls keeps offsets into them:
        // the buffer must stay as it was).
        let UnbufferedStatus { state, .. } = self.conn.process_tls_records(&mut self.incoming);
        if let Ok(ConnectionState::EncodeTlsData(mut encode)) = state {
            let _ = self.outgoing.put(|out| encode.encode(out), encode_room);
        }
        self.failed = true;
        self.incoming = Vec::new();
        let _ = self.outgoing.try_send(&self.tcp);
        tls_error(error)
    }
}

impl AsyncRead for TlsStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.unread.is_empty() {
                let n = this.unread.len().min(buf.remaining());
                buf.put_slice(&this.unread[..n]);
                this.unread.drain(..n);
                if this.unread.is_empty() {
                    this.unread = Vec::new();
                }
                return Poll::Ready(Ok(()));
            }
            let before = buf.filled().len();
            this.process(Some(buf))?;
            // What rustls answered on the way (a key update, an alert)
            // goes out as soon as the socket takes it.
            if let Poll::Ready(Err(e)) = this.outgoing.poll_send(&mut this.tcp, cx) {
                return Poll::Ready(Err(e));
            }
            if buf.filled().len() > before || this.read_closed || buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            ready!(this.poll_fill(cx))?;
        }
    }
}

impl AsyncWrite for TlsStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        // One write's ciphertext at a time: a client that stops reading
        // holds back its writer, not the gateway's memory.
        ready!(this.outgoing.poll_send(&mut this.tcp, cx))?;
        let had_unread = !this.unread.is_empty();
        let n = this.encrypt(data)?;
        if let Poll::Ready(Err(e)) = this.outgoing.poll_send(&mut this.tcp, cx) {
            return Poll::Ready(Err(e));
        }
        if !had_unread && !this.unread.is_empty() {
            // Bytes decrypted here are the reader's: make sure it looks.
            cx.waker().wake_by_ref();
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.outgoing.poll_send(&mut this.tcp, cx))?;
        Pin::new(&mut this.tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.close_queued && !this.failed {
            ready!(this.outgoing.poll_send(&mut this.tcp, cx))?;
            this.close_queued = true;
            if this.process(None)? {
                let UnbufferedStatus { state, .. } =
                    this.conn.process_tls_records(&mut this.incoming);
                if let Ok(ConnectionState::WriteTraffic(mut traffic)) = state {
                    this.outgoing
                        .put(|out| traffic.queue_close_notify(out), encrypt_room)?;
                }
            }
        }
        ready!(this.outgoing.poll_send(&mut this.tcp, cx))?;
        Pin::new(&mut this.tcp).poll_shutdown(cx)
    }
}

/// Ciphertext on its way to the socket.
#[derive(Default)]
struct Outgoing {
    /// Zeroed room rustls writes into; dropped once the socket took all.
    buf: Vec<u8>,
    /// `buf[sent..end]` is still to send.
    sent: usize,
    end: usize,
}

impl Outgoing {
    /// Lets rustls write at the end, making the room it asks for.
    fn put<E: std::error::Error + Send + Sync + 'static>(
        &mut self,
        mut write: impl FnMut(&mut [u8]) -> Result<usize, E>,
        room_needed: impl Fn(&E) -> Option<usize>,
    ) -> io::Result<()> {
        let written = match write(&mut self.buf[self.end..]) {
            Ok(n) => n,
            Err(e) => match room_needed(&e) {
                Some(required) => {
                    self.buf.resize(self.end + required, 0);
                    write(&mut self.buf[self.end..]).map_err(io::Error::other)?
                }
                None => return Err(io::Error::other(e)),
            },
        };
        self.end += written;
        Ok(())
    }

    /// Sends until the socket has everything or would block.
    fn poll_send(&mut self, tcp: &mut TcpStream, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.end {
            let n = ready!(Pin::new(&mut *tcp).poll_write(cx, &self.buf[self.sent..self.end]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.drained();
        Poll::Ready(Ok(()))
    }

    /// Sends what the socket takes now, without waiting: a last alert.
    fn try_send(&mut self, tcp: &TcpStream) -> io::Result<()> {
        while self.sent < self.end {
            match tcp.try_write(&self.buf[self.sent..self.end])? {
                0 => return Err(io::ErrorKind::WriteZero.into()),
                n => self.sent += n,
            }
        }
        self.drained();
        Ok(())
    }

    fn drained(&mut self) {
        self.sent = 0;
        self.end = 0;
        self.buf = Vec::new();
    }
}

fn encode_room(e: &EncodeError) -> Option<usize> {
    match e {
        EncodeError::InsufficientSize(InsufficientSizeError { required_size }) => {
            Some(*required_size)
        }
        EncodeError::AlreadyEncoded => None,
    }
}

fn encrypt_room(e: &EncryptError) -> Option<usize> {
    match e {
        EncryptError::InsufficientSize(InsufficientSizeError { required_size }) => {
            Some(*required_size)
        }
        _ => None,
    }
}

fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

#[cfg(test)]
mod tests;
