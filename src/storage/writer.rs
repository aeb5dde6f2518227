//! The one thread that writes the database, committing in groups.
//!
//! Every change (a message queued for a bridge, an acknowledged one
//! removed, a retained message set or cleared, a session parked or
//! forgotten) is a [`Write`] sent over a channel. The writer takes what has
//! gathered, applies it in one transaction and commits, then tells whoever
//! waits that their writes are kept. Under load one commit carries hundreds
//! of writes; an idle gateway commits each at once. SQLite allows one
//! writer at a time anyway, and a thread of its own keeps its file I/O off
//! the tokio workers.
//!
//! A commit in WAL mode with `synchronous=NORMAL` is a `write()` into the
//! WAL file: from then on a process kill loses nothing. What a power cut
//! may lose is bounded by the sync interval: that often, the WAL file is
//! fsynced if anything was committed since. With a zero interval SQLite
//! runs `synchronous=FULL` and every commit is fsynced before anyone is
//! told it is kept.

use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use rusqlite::{Connection, ToSql, params, params_from_iter};
use tokio::sync::oneshot;
use tracing::{error, warn};

use super::queue::{Queue, Recent};
use super::rows::{self, MESSAGE_COLUMNS, MessageRow};
use crate::broker::store::SessionRecord;
use crate::broker::{Message, QoS, SessionKey};

/// One change to the database.
pub(super) enum Write {
    /// Queue `message` as `topic` at `qos` on queue number `queue`.
    Append {
        queue: usize,
        message: Arc<Message>,
        topic: String,
        qos: QoS,
        kept: oneshot::Sender<()>,
    },
    /// The remote acknowledged these sequence numbers of queue `queue`.
    Acked {
        queue: usize,
        seqs: Vec<u64>,
    },
    Retain(Arc<Message>),
    ClearRetained(Box<str>),
    SaveSession(SessionKey, SessionRecord),
    RemoveSession(SessionKey),
    /// Commit and sync everything sent before, then answer.
    Flush(oneshot::Sender<()>),
    /// As `Flush`, then stop.
    Stop(oneshot::Sender<()>),
}

/// Writes applied per transaction, at most: enough to carry a burst,
/// few enough that the first waiter is not held long.
const MAX_GROUP: usize = 1024;
/// How long to wait between drop warnings of one queue.
const DROP_LOG_EVERY: Duration = Duration::from_secs(10);

/// What the writer knows of one bridge's queue.
pub(super) struct QueueState {
    pub queue: Arc<Queue>,
    /// The next sequence number to give.
    pub next_seq: u64,
    /// The newest sequence number the budget dropped.
    pub dropped_through: u64,
    /// Drops not yet logged, and when the last warning was.
    pub unlogged_drops: u64,
    pub last_drop_log: Option<Instant>,
}

pub(super) struct Writer {
    pub db: Connection,
    pub wal: PathBuf,
    pub sync_interval: Duration,
    pub queues: Vec<QueueState>,
}

impl Writer {
    /// Runs until every sender is gone, then commits and syncs what is
    /// left.
    pub fn run(mut self, writes: Receiver<Write>) {
        let mut dirty_since: Option<Instant> = None;
        loop {
            let wait = match dirty_since {
                Some(since) => self.sync_interval.saturating_sub(since.elapsed()),
                None => Duration::from_secs(3600),
            };
            let first = match writes.recv_timeout(wait) {
                Ok(write) => write,
                Err(RecvTimeoutError::Timeout) => {
                    if dirty_since.is_some() {
                        self.sync();
                        dirty_since = None;
                    }
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            };
            let mut group = vec![first];
            while group.len() < MAX_GROUP {
                match writes.try_recv() {
                    Ok(write) => group.push(write),
                    Err(_) => break,
                }
            }
            let mut answers = Vec::new();
            let mut committed = Vec::new();
            let mut flush = false;
            let stop = group.iter().any(|write| matches!(write, Write::Stop(_)));
            match self.apply(group, &mut answers, &mut committed, &mut flush) {
                Ok(()) => {
                    for (queue, recent) in committed {
                        if let Some(state) = self.queues.get(queue) {
                            state.queue.committed_recently(recent);
                        }
                    }
                    // What the budget dropped must not be sent from memory.
                    for state in &self.queues {
                        state.queue.forget_recent_through(state.dropped_through);
                    }
                }
                Err(err) => error!(
                    error = %err,
                    "storage: a commit failed; the messages, retained messages and sessions in it are not kept"
                ),
            }
            if flush || self.sync_interval.is_zero() {
                self.sync();
                dirty_since = None;
            } else if dirty_since.is_none() {
                dirty_since = Some(Instant::now());
            }
            // The tail moves before anyone is answered, so a caller that
            // awaited its append sees it in `Queue::committed`.
            for state in &self.queues {
                state.queue.publish_tail(state.next_seq.saturating_sub(1));
            }
            for answer in answers {
                let _ = answer.send(());
            }
            if stop {
                return;
            }
        }
        self.sync();
    }

    /// Applies `group` in one transaction. Whoever waits for a write is
    /// answered (after the caller syncs, if it must) even when the commit
    /// failed: the failure is logged, and holding a device's PUBACK
    /// forever would not make the disk work again.
    fn apply(
        &mut self,
        group: Vec<Write>,
        answers: &mut Vec<oneshot::Sender<()>>,
        committed: &mut Vec<(usize, Recent)>,
        flush: &mut bool,
    ) -> rusqlite::Result<()> {
        let tx = self.db.transaction()?;
        for write in group {
            match write {
                Write::Append {
                    queue,
                    message,
                    topic,
                    qos,
                    kept,
                } => {
                    answers.push(kept);
                    if let Some(state) = self.queues.get_mut(queue) {
                        let mut row = MessageRow::new(&message, qos);
                        row.topic.clone_from(&topic);
                        if let Some(seq) = append(&tx, state, row)? {
                            committed.push((
                                queue,
                                Recent {
                                    seq,
                                    message,
                                    topic,
                                    qos,
                                },
                            ));
                        }
                    }
                }
                Write::Acked { queue, seqs } => {
                    if let Some(state) = self.queues.get(queue) {
                        let mut delete = tx.prepare_cached(&format!(
                            "DELETE FROM {} WHERE seq = ?1 RETURNING size",
                            state.queue.table()
                        ))?;
                        for seq in seqs {
                            let size: Option<u64> = delete
                                .query_row([seq], |row| row.get(0))
                                .map(Some)
                                .or_else(none_if_no_rows)?;
                            if let Some(size) = size {
                                state.queue.removed(size);
                            }
                        }
                    }
                }
                Write::Retain(message) => {
                    let row = MessageRow::new(&message, message.qos());
                    tx.prepare_cached(&format!(
                        "INSERT OR REPLACE INTO retained ({MESSAGE_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6)"
                    ))?
                    .execute(params_from_iter(row.values()))?;
                }
                Write::ClearRetained(topic) => {
                    tx.prepare_cached("DELETE FROM retained WHERE topic = ?1")?
                        .execute([&*topic])?;
                }
                Write::SaveSession(key, record) => {
                    tx.prepare_cached(
                        "INSERT OR REPLACE INTO sessions (subject, client_id, expires_at, subscriptions) \
                         VALUES (?1, ?2, ?3, ?4)",
                    )?
                    .execute(params![
                        key.subject(),
                        key.client_id(),
                        rows::unix_millis(record.expires_at),
                        rows::subscriptions_json(&record)
                    ])?;
                    remove_queued(&tx, &key)?;
                    let mut insert = tx.prepare_cached(&format!(
                        "INSERT INTO session_messages (subject, client_id, position, delivery_qos, \
                         delivery_retain, subscription_ids, {MESSAGE_COLUMNS}) \
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)"
                    ))?;
                    for (position, delivery) in record.queued.iter().enumerate() {
                        let row = MessageRow::new(&delivery.message, delivery.message.qos());
                        let ids = serde_json::to_string(&delivery.subscription_ids)
                            .unwrap_or_else(|_| "[]".to_owned());
                        let first: [&dyn ToSql; 6] = [
                            &key.subject(),
                            &key.client_id(),
                            &position,
                            &(delivery.qos as i64),
                            &delivery.retain,
                            &ids,
                        ];
                        insert.execute(params_from_iter(first.into_iter().chain(row.values())))?;
                    }
                }
                Write::RemoveSession(key) => {
                    tx.prepare_cached(
                        "DELETE FROM sessions WHERE subject = ?1 AND client_id = ?2",
                    )?
                    .execute(params![key.subject(), key.client_id()])?;
                    remove_queued(&tx, &key)?;
                }
                Write::Flush(answer) | Write::Stop(answer) => {
                    answers.push(answer);
                    *flush = true;
                }
            }
        }
        tx.commit()
    }

    /// Forces what was committed to the disk. With `synchronous=FULL`
    /// SQLite already did; otherwise the WAL file holds every commit
    /// since the last checkpoint, and the checkpoints SQLite runs itself
    /// are fsynced by it.
    fn sync(&mut self) {
        if self.sync_interval.is_zero() {
            return;
        }
        match File::open(&self.wal).and_then(|wal| wal.sync_data()) {
            Ok(()) => {}
            // No WAL file: nothing was committed since the last checkpoint.
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => error!(
                wal = %self.wal.display(),
                error = %err,
                "storage: cannot sync the database's log to the disk; a power cut may lose recent messages"
            ),
        }
    }
}

fn remove_queued(tx: &rusqlite::Transaction<'_>, key: &SessionKey) -> rusqlite::Result<()> {
    tx.prepare_cached("DELETE FROM session_messages WHERE subject = ?1 AND client_id = ?2")?
        .execute(params![key.subject(), key.client_id()])?;
    Ok(())
}

fn none_if_no_rows<T>(err: rusqlite::Error) -> rusqlite::Result<Option<T>> {
    match err {
        rusqlite::Error::QueryReturnedNoRows => Ok(None),
        err => Err(err),
    }
}

/// Queues `row`, dropping the oldest messages of the queue while its
/// budget would be exceeded.
/// Inserts `row` at the end of a queue, dropping the oldest past its
/// budget; returns its sequence number, or `None` when it was dropped.
fn append(
    tx: &rusqlite::Transaction<'_>,
    state: &mut QueueState,
    row: MessageRow,
) -> rusqlite::Result<Option<u64>> {
    let size = row.size();
    let queue = Arc::clone(&state.queue);
    if size > queue.budget() {
        // It could never fit: dropping everything else would not help.
        queue.dropped(1);
        note_drops(
            state,
            1,
            "a message larger than the whole queue budget was dropped",
        );
        return Ok(None);
    }
    let mut dropped = 0;
    while queue.bytes() + size > queue.budget() {
        let oldest: Option<(u64, u64)> = tx
            .prepare_cached(&format!(
                "DELETE FROM {table} WHERE seq = (SELECT MIN(seq) FROM {table}) RETURNING seq, size",
                table = queue.table()
            ))?
            .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))
            .map(Some)
            .or_else(none_if_no_rows)?;
        let Some((seq, freed)) = oldest else { break };
        state.dropped_through = state.dropped_through.max(seq);
        queue.removed(freed);
        dropped += 1;
    }
    if dropped > 0 {
        queue.dropped(dropped);
        note_drops(
            state,
            dropped,
            "queue budget reached: the oldest messages were dropped",
        );
    }
    let seq = state.next_seq;
    tx.prepare_cached(&format!(
        "INSERT INTO {} (seq, size, {MESSAGE_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        queue.table()
    ))?
    .execute(params_from_iter(
        [&seq as &dyn ToSql, &size].into_iter().chain(row.values()),
    ))?;
    state.next_seq += 1;
    queue.added(size);
    Ok(Some(seq))
}

/// Counts `count` drops and warns about them, at most every
/// [`DROP_LOG_EVERY`] per queue, with the number since the last warning.
fn note_drops(state: &mut QueueState, count: u64, why: &str) {
    state.unlogged_drops += count;
    if state
        .last_drop_log
        .is_some_and(|last| last.elapsed() < DROP_LOG_EVERY)
    {
        return;
    }
    let queue = &state.queue;
    warn!(
        bridge = queue.name(),
        dropped = state.unlogged_drops,
        dropped_total = queue.snapshot().dropped,
        queued_bytes = queue.bytes(),
        budget_bytes = queue.budget(),
        "bridge queue: {why} (see max_queue_mb)"
    );
    state.unlogged_drops = 0;
    state.last_drop_log = Some(Instant::now());
}
