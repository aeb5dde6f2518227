//! A WebSocket as the byte stream the connection loop reads and writes.
//!
//! Reading yields the payloads of binary messages, back to back, so that
//! the MQTT codec never sees where one message ended: MQTT §6 lets a packet
//! span messages and a message carry several packets. A text message ends
//! the connection (MQTT-6.0.0-1), as an error the loop reports. Pings are
//! answered by tungstenite. Each write is sent as one binary message of at
//! most [`MAX_WRITE`] bytes.
//!
//! What one connection can make the gateway hold is bounded here, as for
//! TLS: a message (and a frame) no larger than the largest MQTT packet
//! `[limits] max_packet_size` allows, reassembled by tungstenite before it
//! is read (a larger one ends the connection); a small read buffer, so
//! that an idle browser costs little more than an idle device.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use futures_util::{Sink, Stream};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

/// The largest message the gateway sends in one write.
pub const MAX_WRITE: usize = 64 * 1024;
/// tungstenite's read buffer, allocated with the connection, and what it
/// reads at a time: 1 KiB like the TLS path's first read buffer, since
/// rustls below already holds whole TLS records and an idle browser should
/// cost about what an idle device does. It grows to a message's size while
/// one arrives.
const READ_BUFFER: usize = 1024;

/// A server-side WebSocket read and written as bytes.
pub struct WsStream {
    socket: WebSocketStream<TokioIo<Upgraded>>,
    /// What is left of the last binary message read.
    unread: Bytes,
    /// An error met after bytes were already read in the same call: those
    /// bytes go out first, the error with the next read.
    deferred: Option<io::Error>,
}

impl WsStream {
    /// A WebSocket on `io` taking messages of up to `max_message` bytes.
    pub(super) async fn new(io: TokioIo<Upgraded>, max_message: usize) -> WsStream {
        let mut config = WebSocketConfig::default();
        config.read_buffer_size = READ_BUFFER;
        // Each message goes to TLS at once; the connection loop flushes.
        config.write_buffer_size = 0;
        config.max_write_buffer_size = 2 * MAX_WRITE + 64;
        config.max_message_size = Some(max_message);
        config.max_frame_size = Some(max_message);
        WsStream {
            socket: WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await,
            unread: Bytes::new(),
            deferred: None,
        }
    }
}

/// Why a WebSocket read failed, as an I/O error the loop reports.
fn io_error(err: WsError) -> io::Error {
    match err {
        WsError::Io(err) => err,
        WsError::ConnectionClosed | WsError::AlreadyClosed => {
            io::Error::from(io::ErrorKind::BrokenPipe)
        }
        other => io::Error::new(io::ErrorKind::InvalidData, other),
    }
}

impl AsyncRead for WsStream {
    /// Fills `buf` from as many messages as are already here: a client
    /// that sends a packet a message (most do) is read a batch at a time,
    /// as over TLS, rather than waking the connection's loop per packet.
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(err) = this.deferred.take() {
            return Poll::Ready(Err(err));
        }
        let start = buf.filled().len();
        loop {
            if !this.unread.is_empty() {
                let n = buf.remaining().min(this.unread.len());
                buf.put_slice(&this.unread.split_to(n));
                if buf.remaining() == 0 {
                    return Poll::Ready(Ok(()));
                }
            }
            let next = match Pin::new(&mut this.socket).poll_next(cx) {
                Poll::Ready(next) => next,
                // What came so far is returned; the waker is registered
                // for the rest.
                Poll::Pending if buf.filled().len() > start => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            };
            let err = match next {
                // The close handshake, or the end of the stream: the end of
                // the bytes (after what was read before it).
                None | Some(Ok(Message::Close(_))) => return Poll::Ready(Ok(())),
                Some(Ok(Message::Binary(payload))) => {
                    this.unread = payload;
                    continue;
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                Some(Ok(Message::Text(_))) => io::Error::new(
                    io::ErrorKind::InvalidData,
                    "a text frame: MQTT over WebSockets is carried in binary frames [MQTT-6.0.0-1]",
                ),
                Some(Err(err)) => io_error(err),
            };
            if buf.filled().len() > start {
                this.deferred = Some(err);
                return Poll::Ready(Ok(()));
            }
            return Poll::Ready(Err(err));
        }
    }
}

impl AsyncWrite for WsStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(Pin::new(&mut this.socket).poll_ready(cx)).map_err(io_error)?;
        let chunk = buf.get(..MAX_WRITE).unwrap_or(buf);
        let n = chunk.len();
        let message = Message::Binary(Bytes::copy_from_slice(chunk));
        Pin::new(&mut this.socket)
            .start_send(message)
            .map_err(io_error)?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().socket)
            .poll_flush(cx)
            .map_err(io_error)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().socket)
            .poll_close(cx)
            .map_err(io_error)
    }
}
