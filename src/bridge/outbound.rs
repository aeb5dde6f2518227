//! The forward direction of one connection: the bridge's queue read in
//! order (from memory when the link keeps up, else from its table), sent
//! within the remote's window, and what the remote acknowledged gathered
//! for deletion.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use tracing::{error, info, warn};

use super::connection::{Connection, LinkError};
use super::subscriptions::{SUBSCRIBE_PKID, UNSUBSCRIBE_PKID};
use crate::mqtt::QoS;
use crate::storage::{Queue, QueueReader, Queued};

/// The first packet id a publish may take: those below are the
/// subscriptions'.
const FIRST_PUBLISH_PKID: u16 = 3;
/// Rows read from the queue at a time.
const READ_BATCH: usize = 512;
/// Output waiting for the socket past which no more messages are encoded.
const MAX_UNWRITTEN: usize = 256 * 1024;

/// What the forward direction did over all of a link's connections, for
/// the line it logs when it stops.
#[derive(Debug, Default)]
pub(super) struct Totals {
    /// The highest sequence number sent on any connection: sending one at
    /// or below it again is a resend.
    pub sent_ever: u64,
    pub forwarded: u64,
    pub resent: u64,
    pub refused: u64,
}

/// What the forward direction of one connection holds.
pub(super) struct Outbound {
    reader: Option<QueueReader>,
    /// Read from the table, not sent yet.
    pub ahead: VecDeque<Queued>,
    /// The highest sequence number read from the table.
    pub read_upto: u64,
    /// Packet id → sequence number of what awaits its PUBACK.
    pub inflight: HashMap<u16, u64>,
    next_pkid: u16,
    /// Sequence numbers to delete: acknowledged, or sent at QoS 0.
    pub done: Vec<u64>,
    /// When the oldest of them was added.
    pub done_since: Option<Instant>,
    /// A backlog being drained: when it started and how many it held.
    draining: Option<(Instant, u64)>,
}

impl Outbound {
    /// A connection's forward direction, reading the queue with `reader`;
    /// `backlog` messages were waiting when it began.
    pub fn new(reader: QueueReader, backlog: u64) -> Outbound {
        Outbound {
            reader: Some(reader),
            ahead: VecDeque::new(),
            read_upto: 0,
            inflight: HashMap::new(),
            next_pkid: FIRST_PUBLISH_PKID,
            done: Vec::new(),
            done_since: None,
            draining: (backlog > 0).then(|| (Instant::now(), backlog)),
        }
    }

    fn pkid(&mut self) -> u16 {
        loop {
            let pkid = self.next_pkid;
            self.next_pkid = match self.next_pkid.wrapping_add(1) {
                0 | SUBSCRIBE_PKID | UNSUBSCRIBE_PKID => FIRST_PUBLISH_PKID,
                next => next,
            };
            if !self.inflight.contains_key(&pkid) {
                return pkid;
            }
        }
    }

    /// Reads the next rows of the queue when nothing read is left to send.
    pub async fn fill(&mut self, queue: &Queue, tail: u64) -> Result<(), LinkError> {
        if !self.ahead.is_empty() || self.read_upto >= tail {
            return Ok(());
        }
        let after = self.read_upto;
        if let Some(rows) = queue.recent_after(after, READ_BATCH) {
            if let Some(last) = rows.last() {
                self.read_upto = last.seq;
            }
            self.ahead.extend(rows);
            return Ok(());
        }
        let Some(mut reader) = self.reader.take() else {
            return Ok(());
        };
        let (reader, rows) = tokio::task::spawn_blocking(move || {
            let rows = reader.after(after, READ_BATCH);
            (reader, rows)
        })
        .await
        .map_err(|err| LinkError::Reader(err.to_string()))?;
        self.reader = Some(reader);
        let rows = rows?;
        match rows.last() {
            Some(last) => self.read_upto = last.seq,
            // Everything up to the tail was acknowledged or dropped.
            None => self.read_upto = tail,
        }
        self.ahead.extend(rows);
        Ok(())
    }

    /// Encodes queued messages while the window and the output allow.
    pub fn send(
        &mut self,
        connection: &mut Connection,
        totals: &mut Totals,
        name: &str,
    ) -> Result<(), LinkError> {
        while self.inflight.len() < connection.window && connection.output.len() < MAX_UNWRITTEN {
            let Some(queued) = self.ahead.pop_front() else {
                break;
            };
            let Some(publication) = queued.publication else {
                // Expired, or did not decode (logged by the reader).
                self.done.push(queued.seq);
                continue;
            };
            if queued.seq <= totals.sent_ever {
                totals.resent += 1;
            }
            totals.sent_ever = totals.sent_ever.max(queued.seq);
            let pkid = self.pkid();
            match connection.codec.publish(
                pkid,
                false,
                publication.qos,
                &publication,
                &mut connection.output,
            ) {
                Ok(()) => {}
                Err(err) => {
                    // Larger than the remote takes: it never will.
                    totals.refused += 1;
                    error!(bridge = name, topic = publication.topic, error = %err, "bridge: a message the remote cannot take is dropped");
                    self.done.push(queued.seq);
                    continue;
                }
            }
            if publication.qos == QoS::AtMostOnce {
                totals.forwarded += 1;
                self.done.push(queued.seq);
            } else {
                self.inflight.insert(pkid, queued.seq);
            }
        }
        Ok(())
    }

    /// Logs the end of a backlog's drain (everything committed is sent
    /// and acknowledged), with its rate.
    pub fn report_drain(&mut self, name: &str, tail: u64) {
        let Some((since, backlog)) = self.draining else {
            return;
        };
        if !self.inflight.is_empty() || !self.ahead.is_empty() || self.read_upto < tail {
            return;
        }
        let secs = since.elapsed().as_secs_f64();
        info!(
            bridge = name,
            messages = backlog,
            seconds = format!("{secs:.2}"),
            per_second = format!("{:.0}", backlog as f64 / secs.max(1e-6)),
            "bridge: backlog drained"
        );
        self.draining = None;
    }

    /// The remote's PUBACK for `pkid`: that message is done, forwarded or
    /// refused by the remote.
    pub fn acked(
        &mut self,
        pkid: u16,
        refused: Option<String>,
        totals: &mut Totals,
        name: &str,
    ) -> Result<(), LinkError> {
        let Some(seq) = self.inflight.remove(&pkid) else {
            return Err(LinkError::Protocol(format!(
                "PUBACK for unknown packet id {pkid}"
            )));
        };
        self.done.push(seq);
        match refused {
            None => totals.forwarded += 1,
            Some(reason) => {
                totals.refused += 1;
                warn!(
                    bridge = name,
                    seq, reason, "bridge: the remote refused a message; it is dropped"
                );
            }
        }
        Ok(())
    }
}
