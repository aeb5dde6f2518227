//! The byte side of a connection: the TLS stream, its buffers and codec.
//!
//! Reading and writing happen in one future, [`Wire::progress`], which the
//! connection's loop waits on beside everything else (deliveries, timers,
//! takeover, shutdown). A write is never awaited on its own: a client that
//! stops reading fills its socket, the loop keeps serving its timers and
//! its eviction, and only the gateway's own output for it waits. Teardown
//! writes (the last DISCONNECT, a refusal's CONNACK) get a deadline
//! ([`Wire::flush_within`]) for the same reason.
//!
//! What the gateway has to say is encoded into an [`Outbox`] first, which
//! knows nothing of sockets: the protocol layer ([`super::client`]) writes
//! into it and is tested without I/O.
//!
//! Buffers exist while they hold something, so the thousands of quiet
//! devices of a fleet hold none: a client that sends little is read
//! through the stack and its input buffer given back once its packets are
//! taken; reads double from 1 KiB while a client keeps filling them; the
//! output buffer is given back once written out.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use rumqttd::protocol::Packet;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tracing::warn;

use super::codec::{Codec, OutgoingPublish};
use crate::metrics::Traffic;

/// Room a socket read gets: from the minimum (on the stack while the input
/// buffer is empty), doubled each time a read fills it, up to the maximum.
const MIN_READ_CHUNK: usize = 1024;
const MAX_READ_CHUNK: usize = 32 * 1024;

/// Packets encoded for the client, waiting for the socket.
pub(super) struct Outbox {
    codec: Codec,
    bytes: BytesMut,
}

impl Outbox {
    pub fn new(codec: Codec) -> Outbox {
        Outbox {
            codec,
            bytes: BytesMut::new(),
        }
    }

    /// The client's codec: its protocol version and packet size limit.
    pub fn codec(&self) -> &Codec {
        &self.codec
    }

    /// Queues a packet (anything but PUBLISH) for the client.
    pub fn queue(&mut self, packet: Packet) {
        if let Err(e) = self.codec.encode(packet, &mut self.bytes) {
            // Only the gateway's own packets are encoded here; a failure is
            // a bug in what was built, not something the client did.
            warn!(error = %e, "could not encode a packet for the client");
        }
    }

    /// Queues bytes the gateway encodes itself, for packets rumqttd does
    /// not know (see [`super::codec::auth`]).
    pub fn queue_with(&mut self, encode: impl FnOnce(&mut BytesMut)) {
        encode(&mut self.bytes);
    }

    /// Queues a PUBLISH for the client.
    pub fn queue_publish(&mut self, publish: &OutgoingPublish<'_>) {
        self.codec.encode_publish(publish, &mut self.bytes);
    }

    /// Bytes queued and not yet written.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Takes everything queued (what a test reads instead of a socket).
    #[cfg(test)]
    pub fn take(&mut self) -> BytesMut {
        std::mem::take(&mut self.bytes)
    }
}

pub(super) struct Wire<S> {
    pub stream: S,
    pub input: BytesMut,
    pub output: Outbox,
    /// Bytes went to the stream since its last flush.
    unflushed: bool,
    /// Bytes written to the stream, ever: how a stalled reader is told
    /// from a slow one.
    written: u64,
    chunk: usize,
    traffic: Traffic,
}

/// What [`Wire::progress`] did.
#[derive(Debug)]
pub(super) enum Progress {
    /// Bytes arrived in `input`.
    Read,
    /// Output went out (or was flushed).
    Wrote,
    /// The peer closed the connection.
    Closed,
    Failed(io::Error),
}

impl<S: AsyncRead + AsyncWrite + Unpin> Wire<S> {
    /// A wire over `stream`, whose first bytes (read while the CONNECT
    /// was sniffed) are in `input`; `traffic` counts the bytes each way.
    pub fn new(stream: S, codec: Codec, input: BytesMut, traffic: Traffic) -> Wire<S> {
        traffic.received(input.len());
        Wire {
            stream,
            input,
            output: Outbox::new(codec),
            unflushed: false,
            written: 0,
            chunk: MIN_READ_CHUNK,
            traffic,
        }
    }

    /// Writes pending output and, if `read`, reads input: whichever the
    /// socket allows first. Cancel-safe.
    pub async fn progress(&mut self, read: bool) -> Progress {
        // A client reading in small pieces is read through the stack while
        // nothing of its is buffered: the wait for its next packet holds no
        // heap.
        let through_stack = self.input.is_empty() && self.chunk == MIN_READ_CHUNK;
        if through_stack {
            self.input = BytesMut::new();
        } else if read && self.input.capacity() - self.input.len() < self.chunk / 2 {
            self.input.reserve(self.chunk);
        }
        poll_fn(|cx| {
            let mut wrote = false;
            let output = &mut self.output.bytes;
            while !output.is_empty() {
                match Pin::new(&mut self.stream).poll_write(cx, output) {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Progress::Closed),
                    Poll::Ready(Ok(n)) => {
                        output.advance(n);
                        self.written += n as u64;
                        self.traffic.sent(n);
                        self.unflushed = true;
                        wrote = true;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Progress::Failed(e)),
                    Poll::Pending => break,
                }
            }
            if output.is_empty() && self.unflushed {
                match Pin::new(&mut self.stream).poll_flush(cx) {
                    Poll::Ready(Ok(())) => {
                        self.unflushed = false;
                        wrote = true;
                        *output = BytesMut::new();
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Progress::Failed(e)),
                    Poll::Pending => {}
                }
            }
            if wrote {
                return Poll::Ready(Progress::Wrote);
            }
            if !read {
                return Poll::Pending;
            }
            if through_stack {
                let mut chunk = [0u8; MIN_READ_CHUNK];
                let mut buf = ReadBuf::new(&mut chunk);
                return match Pin::new(&mut self.stream).poll_read(cx, &mut buf) {
                    Poll::Ready(Ok(())) if buf.filled().is_empty() => Poll::Ready(Progress::Closed),
                    Poll::Ready(Ok(())) => {
                        let n = buf.filled().len();
                        self.traffic.received(n);
                        if n == MIN_READ_CHUNK {
                            self.chunk *= 2;
                        }
                        self.input.extend_from_slice(buf.filled());
                        Poll::Ready(Progress::Read)
                    }
                    Poll::Ready(Err(e)) => Poll::Ready(Progress::Failed(e)),
                    Poll::Pending => Poll::Pending,
                };
            }
            let room = self.input.capacity() - self.input.len();
            match tokio_util::io::poll_read_buf(Pin::new(&mut self.stream), cx, &mut self.input) {
                Poll::Ready(Ok(0)) => Poll::Ready(Progress::Closed),
                Poll::Ready(Ok(n)) => {
                    self.traffic.received(n);
                    if n >= room {
                        self.chunk = (self.chunk * 2).min(MAX_READ_CHUNK);
                    } else if n < room / 4 {
                        // The client slowed down: down again, to the stack
                        // in the end.
                        self.chunk = (self.chunk / 2).max(MIN_READ_CHUNK);
                    }
                    Poll::Ready(Progress::Read)
                }
                Poll::Ready(Err(e)) => Poll::Ready(Progress::Failed(e)),
                Poll::Pending => Poll::Pending,
            }
        })
        .await
    }

    /// Whether output is waiting to go out.
    pub fn wants_write(&self) -> bool {
        !self.output.is_empty() || self.unflushed
    }

    /// Bytes written to the stream so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Writes everything out, giving up after `limit`: for the last words
    /// to a client that may have stopped reading.
    pub async fn flush_within(&mut self, limit: Duration) -> io::Result<()> {
        let flush = async {
            while self.wants_write() {
                match self.progress(false).await {
                    Progress::Wrote | Progress::Read => {}
                    Progress::Closed => return Err(io::ErrorKind::WriteZero.into()),
                    Progress::Failed(e) => return Err(e),
                }
            }
            Ok(())
        };
        tokio::time::timeout(limit, flush)
            .await
            .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into()))
    }

    /// Flushes what is queued (within `limit`) and closes the stream.
    pub async fn close(&mut self, limit: Duration) {
        if self.flush_within(limit).await.is_ok() {
            let _ = tokio::time::timeout(limit, self.stream.shutdown()).await;
        }
    }
}

#[cfg(test)]
mod tests;
