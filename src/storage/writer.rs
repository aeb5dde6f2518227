//! The one thread that writes the database, committing in groups.
//!
//! Every change (a message queued for a bridge, an acknowledged one
//! removed, a retained message set or cleared, a session parked or
//! forgotten) is a [`Write`] sent over a channel. The writer takes what has
//! gathered, applies it in one transaction and commits, then tells whoever
//! waits whether their writes are kept. Under load one commit carries
//! hundreds of writes; an idle gateway commits each at once. SQLite allows
//! one writer at a time anyway, and a thread of its own keeps its file I/O
//! off the tokio workers.
//!
//! A failed commit (a full disk, an I/O error) is answered as one: the
//! device's PUBACK says the message was not kept (`crate::broker::Kept`),
//! and nothing of the transaction moves the queues' figures, which change
//! only once a commit went through. Commits failing is a state, logged
//! when it starts and when it ends and shown by the metrics ([`Health`]);
//! the next commit that works ends it, without a restart.
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
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant, SystemTime};

use rusqlite::{Connection, ToSql, params, params_from_iter};
use tracing::{error, info, warn};

use super::command::Write;
use super::queue::{self, Queue, Recent};
use super::rows::{self, MESSAGE_COLUMNS, MessageRow};
use crate::broker::store::SessionExpiry;
use crate::broker::{CommitError, Delivery, SessionKey};

/// Whether commits work, as the writer last found, for the metrics.
#[derive(Debug, Default)]
pub struct Health {
    /// The last commit failed for want of room (a full disk, a quota, a
    /// file size limit), and none has changed rows since.
    disk_full: AtomicBool,
    /// Commits that failed, since start.
    failed_commits: AtomicU64,
}

impl Health {
    pub fn disk_full(&self) -> bool {
        self.disk_full.load(Ordering::Relaxed)
    }

    pub fn failed_commits(&self) -> u64 {
        self.failed_commits.load(Ordering::Relaxed)
    }
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

/// What one transaction does to a queue's figures. It is gathered while
/// the transaction runs and applied only once it committed: a rolled-back
/// transaction must leave the queue's accounting (and its numbering) as
/// it found it, or the queue would believe itself fuller than its table.
struct QueueChange {
    next_seq: u64,
    dropped_through: u64,
    added_bytes: u64,
    added: u64,
    removed_bytes: u64,
    removed: u64,
    /// The oldest messages dropped to make room.
    evicted: u64,
    /// Messages larger than the whole budget, not queued.
    refused: u64,
    recent: Vec<Recent>,
    /// When the queue's oldest message entered it (`None`: it is empty),
    /// if the transaction changed which message that is.
    oldest: Option<Option<SystemTime>>,
}

impl QueueChange {
    fn new(state: &QueueState) -> QueueChange {
        QueueChange {
            next_seq: state.next_seq,
            dropped_through: state.dropped_through,
            added_bytes: 0,
            added: 0,
            removed_bytes: 0,
            removed: 0,
            evicted: 0,
            refused: 0,
            recent: Vec::new(),
            oldest: None,
        }
    }

    /// The queue's bytes as the transaction has them so far.
    fn bytes(&self, queue: &Queue) -> u64 {
        (queue.bytes() + self.added_bytes).saturating_sub(self.removed_bytes)
    }

    fn removed(&mut self, size: u64) {
        self.removed_bytes += size;
        self.removed += 1;
    }
}

pub(super) struct Writer {
    pub db: Connection,
    pub wal: PathBuf,
    pub sync_interval: Duration,
    pub queues: Vec<QueueState>,
    pub health: Arc<Health>,
    /// The last commit that carried writes failed.
    pub failing: bool,
    /// The remote's acknowledgements a failed commit did not apply, for
    /// the next one: otherwise their rows would stay, taking budget, and
    /// be sent again after a restart.
    pub retry: Vec<Write>,
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
            let mut group = std::mem::take(&mut self.retry);
            group.push(first);
            while group.len() < MAX_GROUP {
                match writes.try_recv() {
                    Ok(write) => group.push(write),
                    Err(_) => break,
                }
            }
            let stop = group.iter().any(|write| matches!(write, Write::Stop(_)));
            let flush = stop || group.iter().any(|write| matches!(write, Write::Flush(_)));
            // Only a commit that changed rows proves the disk takes writes
            // again: a flush, or a delete that matched nothing, writes
            // nothing.
            let changes_before = self.db.total_changes();
            let mut changes: Vec<QueueChange> = self.queues.iter().map(QueueChange::new).collect();
            let mut outcomes = vec![Ok(()); group.len()];
            match self.apply(&group, &mut changes, &mut outcomes) {
                Ok(()) => {
                    self.committed(changes);
                    if self.db.total_changes() > changes_before {
                        self.recovered();
                    }
                }
                Err(err) => {
                    let failure = self.failed(&err);
                    outcomes.fill(Err(failure));
                }
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
            for (write, outcome) in group.into_iter().zip(outcomes) {
                match write {
                    Write::Append { kept, .. }
                    | Write::QueueParked { kept, .. }
                    | Write::SaveSession { kept, .. }
                    | Write::Retain(_, kept)
                    | Write::ClearRetained(_, kept) => {
                        let _ = kept.send(outcome);
                    }
                    Write::Flush(done) | Write::Stop(done) => {
                        let _ = done.send(());
                    }
                    acked @ Write::Acked { .. } if outcome.is_err() => self.retry.push(acked),
                    Write::Acked { .. } | Write::RemoveSession(_) => {}
                }
            }
            if stop {
                return;
            }
        }
        self.sync();
    }

    /// Applies what a committed transaction did to the queues.
    fn committed(&mut self, changes: Vec<QueueChange>) {
        for (state, change) in self.queues.iter_mut().zip(changes) {
            state.next_seq = change.next_seq;
            state.dropped_through = change.dropped_through;
            let queue = Arc::clone(&state.queue);
            queue.changed(
                change.added_bytes,
                change.added,
                change.removed_bytes,
                change.removed,
                change.evicted + change.refused,
            );
            if change.refused > 0 {
                note_drops(
                    state,
                    change.refused,
                    "a message larger than the whole queue budget was dropped",
                );
            }
            if change.evicted > 0 {
                note_drops(
                    state,
                    change.evicted,
                    "queue budget reached: the oldest messages were dropped",
                );
            }
            if let Some(oldest) = change.oldest {
                queue.set_oldest(oldest);
            }
            for recent in change.recent {
                queue.committed_recently(recent);
            }
            // What the budget dropped must not be sent from memory.
            queue.forget_recent_through(state.dropped_through);
        }
    }

    /// Counts a failed commit and says so once, when commits start
    /// failing; returns what the waiters are told.
    fn failed(&mut self, err: &rusqlite::Error) -> CommitError {
        let failure = match err.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DiskFull) => CommitError::Full,
            // SQLite says "full" for ENOSPC only; a quota (EDQUOT) or a
            // file size limit (EFBIG) is no room either, reported as an
            // I/O error whose errno tells.
            Some(rusqlite::ErrorCode::SystemIoFailure)
                if matches!(self.system_errno(), libc::EDQUOT | libc::EFBIG) =>
            {
                CommitError::Full
            }
            _ => CommitError::Storage,
        };
        self.health.failed_commits.fetch_add(1, Ordering::Relaxed);
        self.health
            .disk_full
            .store(failure == CommitError::Full, Ordering::Relaxed);
        if !self.failing {
            self.failing = true;
            error!(
                error = %err,
                disk_full = failure == CommitError::Full,
                "storage: commits are failing: the messages, retained messages and sessions they carry are not kept, and publishers are told so (logged once; see jwtgate_storage_failed_commits)"
            );
        }
        failure
    }

    /// The errno of the system call behind the connection's last I/O
    /// error.
    fn system_errno(&self) -> i32 {
        // SAFETY: the handle is this open connection's, used on its own
        // thread, and sqlite3_system_errno only reads it.
        unsafe { rusqlite::ffi::sqlite3_system_errno(self.db.handle()) }
    }

    /// A commit that changed rows worked: if commits were failing, they no
    /// longer are.
    fn recovered(&mut self) {
        if std::mem::take(&mut self.failing) {
            self.health.disk_full.store(false, Ordering::Relaxed);
            info!(
                failed_commits = self.health.failed_commits.load(Ordering::Relaxed),
                "storage: commits succeed again"
            );
        }
    }

    /// Applies `group` in one transaction, gathering what it does to the
    /// queues in `changes` and, in `outcomes`, the writes it could not
    /// keep whatever the commit does (a message larger than its queue's
    /// whole budget).
    fn apply(
        &mut self,
        group: &[Write],
        changes: &mut [QueueChange],
        outcomes: &mut [Result<(), CommitError>],
    ) -> rusqlite::Result<()> {
        let tx = self.db.transaction()?;
        // One time for the group: its writes arrived within a commit of
        // each other. Whole milliseconds, as the row keeps it, so that the
        // time in memory is the one a restart reads back.
        let now = rows::system_time(rows::unix_millis(SystemTime::now()));
        for (write, outcome) in group.iter().zip(outcomes.iter_mut()) {
            match write {
                Write::Append {
                    queue,
                    message,
                    topic,
                    qos,
                    ..
                } => {
                    let (Some(state), Some(change)) =
                        (self.queues.get(*queue), changes.get_mut(*queue))
                    else {
                        *outcome = Err(CommitError::Storage);
                        continue;
                    };
                    let mut row = MessageRow::new(message, *qos);
                    row.topic.clone_from(topic);
                    match append(&tx, &state.queue, change, row, now)? {
                        Some(seq) => change.recent.push(Recent {
                            seq,
                            message: Arc::clone(message),
                            topic: topic.clone(),
                            qos: *qos,
                        }),
                        None => *outcome = Err(CommitError::Full),
                    }
                }
                Write::Acked { queue, seqs } => {
                    if let (Some(state), Some(change)) =
                        (self.queues.get(*queue), changes.get_mut(*queue))
                    {
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
                                change.removed(size);
                            }
                        }
                    }
                }
                Write::Retain(message, _) => {
                    let row = MessageRow::new(message, message.qos());
                    tx.prepare_cached(&format!(
                        "INSERT OR REPLACE INTO retained ({MESSAGE_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6)"
                    ))?
                    .execute(params_from_iter(row.values()))?;
                }
                Write::ClearRetained(topic, _) => {
                    tx.prepare_cached("DELETE FROM retained WHERE topic = ?1")?
                        .execute([&**topic])?;
                }
                Write::SaveSession { key, record, .. } => {
                    // A connected session's interval counts from the
                    // restart; `expires_at` then only says when it was
                    // written plus its interval, for someone reading the
                    // table.
                    let (expires_at, expiry_ms) = match record.expiry {
                        SessionExpiry::At(at) => (at, None),
                        SessionExpiry::AfterRestart(interval) => (
                            SystemTime::now() + interval,
                            Some(rows::millis_of(interval)),
                        ),
                    };
                    tx.prepare_cached(
                        "INSERT OR REPLACE INTO sessions \
                         (subject, client_id, expires_at, expiry_ms, subscriptions) \
                         VALUES (?1, ?2, ?3, ?4, ?5)",
                    )?
                    .execute(params![
                        key.subject(),
                        key.client_id(),
                        rows::unix_millis(expires_at),
                        expiry_ms,
                        rows::subscriptions_json(record)
                    ])?;
                    remove_queued(&tx, key)?;
                    for (position, delivery) in record.queued.iter().enumerate() {
                        insert_queued(&tx, key, position as u64, delivery)?;
                    }
                }
                Write::QueueParked {
                    key,
                    position,
                    delivery,
                    ..
                } => insert_queued(&tx, key, *position, delivery)?,
                Write::RemoveSession(key) => {
                    tx.prepare_cached(
                        "DELETE FROM sessions WHERE subject = ?1 AND client_id = ?2",
                    )?
                    .execute(params![key.subject(), key.client_id()])?;
                    remove_queued(&tx, key)?;
                }
                Write::Flush(_) | Write::Stop(_) => {}
            }
        }
        // A removal may have taken the head (acknowledgements need not
        // come in order, the budget drops the oldest): read the new one
        // by the primary key, once per queue and commit.
        for (state, change) in self.queues.iter().zip(changes.iter_mut()) {
            if change.removed > 0 {
                change.oldest = Some(queue::head_queued_at(&tx, state.queue.table())?);
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

/// One delivery of a parked session's queue, at `position`.
fn insert_queued(
    tx: &rusqlite::Transaction<'_>,
    key: &SessionKey,
    position: u64,
    delivery: &Delivery,
) -> rusqlite::Result<()> {
    let row = MessageRow::new(&delivery.message, delivery.message.qos());
    let ids = serde_json::to_string(&delivery.subscription_ids).unwrap_or_else(|_| "[]".to_owned());
    // SQLite's integers are signed; a queue never holds 2^63 deliveries.
    let position = i64::try_from(position).unwrap_or(i64::MAX);
    let first: [&dyn ToSql; 6] = [
        &key.subject(),
        &key.client_id(),
        &position,
        &(delivery.qos as i64),
        &delivery.retain,
        &ids,
    ];
    tx.prepare_cached(&format!(
        "INSERT OR REPLACE INTO session_messages (subject, client_id, position, delivery_qos, \
         delivery_retain, subscription_ids, {MESSAGE_COLUMNS}) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)"
    ))?
    .execute(params_from_iter(first.into_iter().chain(row.values())))?;
    Ok(())
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

/// Inserts `row` at the end of `queue`, dropping the oldest past its
/// budget; returns its sequence number, or `None` when it was dropped
/// itself. What it does is noted in `change`, for after the commit.
fn append(
    tx: &rusqlite::Transaction<'_>,
    queue: &Queue,
    change: &mut QueueChange,
    row: MessageRow,
    now: SystemTime,
) -> rusqlite::Result<Option<u64>> {
    let size = row.size();
    if size > queue.budget() {
        // It could never fit: dropping everything else would not help.
        change.refused += 1;
        return Ok(None);
    }
    while change.bytes(queue) + size > queue.budget() {
        let oldest: Option<(u64, u64)> = tx
            .prepare_cached(&format!(
                "DELETE FROM {table} WHERE seq = (SELECT MIN(seq) FROM {table}) RETURNING seq, size",
                table = queue.table()
            ))?
            .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))
            .map(Some)
            .or_else(none_if_no_rows)?;
        let Some((seq, freed)) = oldest else { break };
        change.dropped_through = change.dropped_through.max(seq);
        change.removed(freed);
        change.evicted += 1;
    }
    let seq = change.next_seq;
    let queued_at = rows::unix_millis(now);
    tx.prepare_cached(&format!(
        "INSERT INTO {} (seq, size, queued_at, {MESSAGE_COLUMNS}) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        queue.table()
    ))?
    .execute(params_from_iter(
        [&seq as &dyn ToSql, &size, &queued_at]
            .into_iter()
            .chain(row.values()),
    ))?;
    // Into an empty queue, the first message is its head: known without
    // reading (a removal in the same commit reads the head anyway).
    if queue.was_empty() && change.oldest.is_none() {
        change.oldest = Some(Some(now));
    }
    change.next_seq += 1;
    change.added_bytes += size;
    change.added += 1;
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
