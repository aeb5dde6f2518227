//! One bridge's store-and-forward queue: messages on their way to the
//! remote broker, kept on disk until it acknowledged them.
//!
//! The queue is a table of the database ordered by a sequence number the
//! writer gives at commit. The bridge reads it in order with a connection
//! of its own ([`QueueReader`]), sends, and reports what the remote
//! acknowledged ([`Queue::acked`]); only then are the rows deleted. So the
//! backlog after an outage or a restart is simply what the table holds,
//! and draining it needs no new traffic: the bridge reads on until the
//! table is empty.
//!
//! A bridge that is caught up would read back, row by row, what was just
//! written; instead the writer leaves the messages of each commit in
//! memory too ([`Queue::recent_after`], the newest [`RECENT_MAX`]), and the
//! bridge takes them from there whenever they follow on from what it has
//! read. The table stays the truth: anything not in memory (a backlog, a
//! reconnect, a restart) is read from it.
//!
//! That cache is a convenience, and it gives way to the sessions: the
//! messages it holds stay charged to the gateway's memory budget, so it
//! holds at most a [`RECENT_SHARE`]th of the budget, and nothing at all
//! while the budget is more than half used (a cut uplink must not fill
//! memory that parked sessions and retained messages need). Whatever it
//! does not hold, the bridge reads from the table.
//!
//! Each row carries the wall-clock time its message entered the queue
//! (`queued_at`, written by the writer at commit), and the queue keeps
//! the time of its head in memory ([`Queue::oldest_queued_at`]): the
//! writer reads it back by the primary key after a commit that removed
//! rows, and knows it without reading when messages enter an empty queue,
//! so asking is one atomic load. A wall clock set back (a box without a
//! real-time clock before NTP) makes ages read wrong by as much; the age
//! of a message queued "in the future" reads as zero.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OpenFlags, OptionalExtension};
use tokio::sync::{oneshot, watch};

use super::command::Write;
use super::rows::{self, MESSAGE_COLUMNS, MessageRow, RowError};
use super::schema::{PAGE_CACHE_KIB, StorageError};
use crate::broker::{Budget, Kept, Message, Publication};
use crate::mqtt::QoS;

/// A bridge's queue.
pub struct Queue {
    name: String,
    /// Its position among the writer's queues.
    index: usize,
    /// Its table's name, quoted for SQL.
    table: String,
    db_path: PathBuf,
    budget: u64,
    writes: Sender<Write>,
    /// The highest sequence number committed.
    tail: watch::Sender<u64>,
    bytes: AtomicU64,
    messages: AtomicU64,
    dropped: AtomicU64,
    /// When the oldest message still queued entered the queue, in unix
    /// milliseconds; 0 when the queue is empty. Only the writer sets it,
    /// after a commit.
    oldest: AtomicU64,
    /// The messages of the latest commits, oldest first.
    recent: Mutex<RecentCache>,
    /// The gateway's memory budget, which the cached messages are charged
    /// to.
    memory: Arc<Budget>,
}

/// Messages kept in memory after their commit, at most: a few commits'
/// worth, for a bridge that keeps up.
pub const RECENT_MAX: usize = 4096;
/// The share of the memory budget the cache may hold: at most
/// `1/RECENT_SHARE` of it.
pub const RECENT_SHARE: usize = 16;

/// Consecutive messages just committed, and what they cost.
#[derive(Default)]
struct RecentCache {
    messages: VecDeque<Recent>,
    bytes: usize,
}

impl RecentCache {
    fn pop_front(&mut self) -> Option<Recent> {
        let recent = self.messages.pop_front()?;
        self.bytes = self.bytes.saturating_sub(recent.message.cost());
        Some(recent)
    }

    fn clear(&mut self) {
        self.messages.clear();
        self.bytes = 0;
    }
}

/// A message just committed to a queue.
pub(super) struct Recent {
    pub seq: u64,
    pub message: Arc<Message>,
    /// The topic it is sent as.
    pub topic: String,
    pub qos: QoS,
}

impl Recent {
    fn queued(self, now: Instant) -> Queued {
        let expiry = match self.message.expires_at() {
            None => Some(None),
            Some(at) => at.checked_duration_since(now).map(Some),
        };
        Queued {
            seq: self.seq,
            publication: expiry.map(|expiry| Publication {
                topic: self.topic,
                payload: self.message.payload().clone(),
                qos: self.qos,
                retain: self.message.retain(),
                properties: self.message.properties().cloned().unwrap_or_default(),
                expiry,
            }),
        }
    }
}

/// A queue's figures at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueSnapshot {
    /// Messages waiting for the remote's acknowledgement.
    pub messages: u64,
    /// Bytes they take, as budgeted.
    pub bytes: u64,
    /// Messages dropped by the budget since start.
    pub dropped: u64,
    /// When the oldest of them entered the queue (rows queued before the
    /// layout upgrade that added the time: the upgrade's time); `None`
    /// when the queue is empty.
    pub oldest_queued_at: Option<SystemTime>,
}

/// One queued message, as read back.
#[derive(Debug)]
pub struct Queued {
    pub seq: u64,
    /// `None` when the row did not decode or the message expired: the
    /// bridge acknowledges it without sending.
    pub publication: Option<Publication>,
}

impl Queue {
    /// The queue of bridge `name`, number `index` among the writer's,
    /// holding what `stored` says up to sequence number `tail`; its
    /// cache of recent messages gives way to `memory`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        name: &str,
        index: usize,
        db_path: PathBuf,
        budget: u64,
        writes: Sender<Write>,
        tail: u64,
        stored: QueueSnapshot,
        memory: Arc<Budget>,
    ) -> Queue {
        Queue {
            name: name.to_owned(),
            index,
            table: table_name(name),
            db_path,
            budget,
            writes,
            tail: watch::Sender::new(tail),
            bytes: AtomicU64::new(stored.bytes),
            messages: AtomicU64::new(stored.messages),
            dropped: AtomicU64::new(stored.dropped),
            oldest: AtomicU64::new(millis_or_zero(stored.oldest_queued_at)),
            recent: Mutex::default(),
            memory,
        }
    }

    /// The bridge it belongs to.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Queues `message` to be sent as `topic` at `qos`. The receiver
    /// completes once the commit was tried, with its outcome: an error
    /// when the commit failed or the message is larger than the whole
    /// budget.
    pub fn append(&self, message: Arc<Message>, topic: String, qos: QoS) -> Kept {
        let (kept, receiver) = oneshot::channel();
        // A send fails only once the writer is gone (shutdown); the
        // receiver then completes at once as not kept.
        let _ = self.writes.send(Write::Append {
            queue: self.index,
            message,
            topic,
            qos,
            kept,
        });
        receiver
    }

    /// The remote acknowledged these messages: they may go.
    pub fn acked(&self, seqs: Vec<u64>) {
        if !seqs.is_empty() {
            let _ = self.writes.send(Write::Acked {
                queue: self.index,
                seqs,
            });
        }
    }

    /// Watches the highest sequence number committed.
    pub fn committed(&self) -> watch::Receiver<u64> {
        self.tail.subscribe()
    }

    /// Up to `limit` messages after sequence number `after`, from memory,
    /// when the latest commits follow on from it; `None` when the table
    /// must be read.
    pub fn recent_after(&self, after: u64, limit: usize) -> Option<Vec<Queued>> {
        let mut recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        while recent.messages.front().is_some_and(|r| r.seq <= after) {
            recent.pop_front();
        }
        if recent.messages.front()?.seq != after + 1 {
            return None;
        }
        let now = Instant::now();
        let n = limit.min(recent.messages.len());
        let taken = (0..n)
            .filter_map(|_| recent.pop_front())
            .map(|r| r.queued(now))
            .collect();
        Some(taken)
    }

    /// Forgets the recent messages up to `seq`, which the budget dropped.
    pub(super) fn forget_recent_through(&self, seq: u64) {
        let mut recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        while recent.messages.front().is_some_and(|r| r.seq <= seq) {
            recent.pop_front();
        }
    }

    /// Keeps a just-committed message in memory, if the memory budget
    /// can spare it (see the module docs).
    pub(super) fn committed_recently(&self, message: Recent) {
        let mut recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        let cost = message.message.cost();
        let share = self.memory.limit() / RECENT_SHARE;
        let tight = self.memory.used() > self.memory.limit() / 2;
        // The cache holds consecutive messages only: after a gap the
        // bridge reads the table anyway.
        let follows = recent
            .messages
            .back()
            .is_none_or(|last| last.seq + 1 == message.seq);
        if tight || cost > share || !follows {
            recent.clear();
            if tight || cost > share {
                return;
            }
        }
        while recent.messages.len() >= RECENT_MAX || recent.bytes + cost > share {
            recent.pop_front();
        }
        recent.bytes += cost;
        recent.messages.push_back(message);
    }

    /// A connection of its own to read the queue with.
    pub fn reader(&self) -> Result<QueueReader, StorageError> {
        let db = Connection::open_with_flags(
            &self.db_path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|source| StorageError::Open {
            path: self.db_path.clone(),
            source,
        })?;
        // Rows are read in order and once: a cache holding a batch's pages
        // is all it needs.
        db.pragma_update(None, "cache_size", PAGE_CACHE_KIB)
            .map_err(StorageError::Sql)?;
        Ok(QueueReader {
            db,
            select: format!(
                "SELECT seq, {MESSAGE_COLUMNS} FROM {} WHERE seq > ?1 ORDER BY seq LIMIT ?2",
                self.table
            ),
        })
    }

    pub fn snapshot(&self) -> QueueSnapshot {
        QueueSnapshot {
            messages: self.messages.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            oldest_queued_at: self.oldest_queued_at(),
        }
    }

    /// When the oldest message waiting for the remote entered the queue;
    /// `None` when none waits. One atomic load: cheap enough for every
    /// scrape.
    pub fn oldest_queued_at(&self) -> Option<SystemTime> {
        match self.oldest.load(Ordering::Relaxed) {
            0 => None,
            millis => Some(UNIX_EPOCH + Duration::from_millis(millis)),
        }
    }

    /// Whether the queue held nothing after the last commit.
    pub(super) fn was_empty(&self) -> bool {
        self.oldest.load(Ordering::Relaxed) == 0
    }

    /// A commit changed the queue's oldest message: it entered at `at`,
    /// or (`None`) the queue is empty. Only the writer calls it.
    pub(super) fn set_oldest(&self, at: Option<SystemTime>) {
        self.oldest.store(millis_or_zero(at), Ordering::Relaxed);
    }

    pub(super) fn table(&self) -> &str {
        &self.table
    }

    pub(super) fn budget(&self) -> u64 {
        self.budget
    }

    pub(super) fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// A commit added `added` messages of `added_bytes`, removed
    /// `removed` of `removed_bytes` and dropped `dropped` (some of those
    /// removed, or never added). Only the writer calls it, after a commit
    /// went through.
    pub(super) fn changed(
        &self,
        added_bytes: u64,
        added: u64,
        removed_bytes: u64,
        removed: u64,
        dropped: u64,
    ) {
        let apply = |figure: &AtomicU64, add: u64, remove: u64| {
            let _ = figure.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |now| {
                Some((now + add).saturating_sub(remove))
            });
        };
        apply(&self.bytes, added_bytes, removed_bytes);
        apply(&self.messages, added, removed);
        self.dropped.fetch_add(dropped, Ordering::Relaxed);
    }

    pub(super) fn publish_tail(&self, seq: u64) {
        self.tail.send_if_modified(|tail| {
            let moved = *tail != seq;
            *tail = seq;
            moved
        });
    }
}

/// The table of bridge `name`'s queue, quoted. Bridge names are letters,
/// digits, `-` and `_` (the config checks), so quoting is all it needs.
pub(super) fn table_name(name: &str) -> String {
    format!("\"queue:{name}\"")
}

/// When the first row of queue table `table` (quoted) entered the queue;
/// `None` when it is empty. One lookup by the primary key. A row without
/// a time (the column is NOT NULL: an edit by hand) counts from now.
pub(super) fn head_queued_at(db: &Connection, table: &str) -> rusqlite::Result<Option<SystemTime>> {
    let head: Option<Option<i64>> = db
        .prepare_cached(&format!(
            "SELECT queued_at FROM {table} ORDER BY seq LIMIT 1"
        ))?
        .query_row([], |row| row.get(0))
        .optional()?;
    Ok(head.map(|at| at.map_or_else(SystemTime::now, rows::system_time)))
}

/// `at` in unix milliseconds, at least 1 (0 says "empty"); 0 for `None`.
fn millis_or_zero(at: Option<SystemTime>) -> u64 {
    at.map_or(0, |at| rows::unix_millis(at).max(1).unsigned_abs())
}

/// Reads a queue in order.
pub struct QueueReader {
    db: Connection,
    select: String,
}

impl QueueReader {
    /// Up to `limit` messages after sequence number `after`, in order.
    /// Blocking: call it off the async workers.
    pub fn after(&mut self, after: u64, limit: usize) -> Result<Vec<Queued>, StorageError> {
        let mut select = self
            .db
            .prepare_cached(&self.select)
            .map_err(StorageError::Sql)?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = select
            .query_map(rusqlite::params![after, limit], |row| {
                let seq: u64 = row.get(0)?;
                Ok((seq, MessageRow::read(row, 1)))
            })
            .map_err(StorageError::Sql)?;
        let mut out = Vec::new();
        for row in rows {
            let (seq, message) = row.map_err(StorageError::Sql)?;
            let publication = message.and_then(MessageRow::publication);
            let publication = match publication {
                Ok(publication) => publication,
                Err(err) => {
                    log_bad_row(seq, &err);
                    None
                }
            };
            out.push(Queued { seq, publication });
        }
        Ok(out)
    }
}

fn log_bad_row(seq: u64, err: &RowError) {
    tracing::error!(seq, error = %err, "bridge queue: a stored message does not decode; it is skipped");
}

#[cfg(test)]
mod tests;
