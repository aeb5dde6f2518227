//! The durable store: what must outlive the process, in one SQLite
//! database under `[storage] dir`.
//!
//! # The model
//!
//! Three kinds of state live here:
//!
//! - each bridge's **store-and-forward queue** ([`Queue`]): messages bound
//!   for a remote broker, from the moment they are routed until the remote
//!   acknowledged them;
//! - the **retained messages**, one per topic;
//! - the **parked sessions**: a persistent session's subscriptions and
//!   expiry while its client is away.
//!
//! All writes go through one writer thread (`writer.rs`) that commits them
//! in groups; readers (a bridge draining its queue) have connections of
//! their own, which WAL mode lets run beside the writer. At start,
//! [`Storage::open`] reads the retained messages and sessions back
//! ([`Restored`]) so that the routing core has them before the listener
//! takes its first device; the queues need no restoring, the bridges read
//! them where they are.
//!
//! # What survives what
//!
//! A committed write survives a process kill at once: WAL mode with
//! `synchronous=NORMAL` writes every commit into the WAL file. A power cut
//! may lose what was committed in the last `[storage] sync_interval_ms`,
//! after which the WAL is fsynced (`writer.rs`); a zero interval fsyncs
//! every commit. A message queued for a bridge, and a retained message set
//! or cleared, is committed before the device's PUBACK is sent (the
//! device's ack waits for the writer's answer), so no acknowledged message
//! is lost to a kill. A commit that fails (a full disk) is answered too:
//! the ack then says the message was not kept ([`crate::broker::Kept`]),
//! and [`Health`] shows the state until a commit works again.
//!
//! # Why SQLite
//!
//! Measured on this workload (`benches/store-choice`, see BENCHMARKS.md):
//! SQLite in WAL mode commits a message in tens of microseconds without an
//! fsync while staying safe against a kill; redb, the pure-Rust
//! alternative, is only kill-safe with an fsync per commit (its
//! non-durable commits are lost by a crash), which made it 14 times slower
//! per message and 3.5 times slower in groups of 64.

mod durable;
mod queue;
mod rows;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};
use tokio::sync::oneshot;
use tracing::warn;

pub use durable::DurableStore;
pub use queue::{Queue, QueueReader, QueueSnapshot, Queued};
pub use rows::RowError;

use crate::broker::{Budget, Publication, SessionKey};
use crate::config::StorageConfig;
use crate::mqtt::QoS;
use rows::{MESSAGE_COLUMNS, MESSAGE_SCHEMA, MessageRow};
use writer::{QueueState, Write, Writer};

/// The database file in `[storage] dir`.
const DB_FILE: &str = "jwtgate.sqlite";
/// SQLite's page cache per connection, in KiB as its negative
/// `cache_size` takes it: 8 MiB holds a busy queue's hot pages (its head
/// and tail), where the default 2 MiB made the drain re-read pages.
const PAGE_CACHE_KIB: i64 = -8192;
/// The layout version this code writes, kept in SQLite's `user_version`.
const SCHEMA_VERSION: i64 = 1;

/// Why the durable store could not be opened or read.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("cannot create the state directory {}: {source}", path.display())]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open the database {}: {source}", path.display())]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error(
        "the database {} has layout version {found}, newer than this jwtgate's {SCHEMA_VERSION}; \
         it was written by a later release",
        path.display()
    )]
    NewerSchema { path: PathBuf, found: i64 },
    #[error("database error: {0}")]
    Sql(rusqlite::Error),
}

/// What was kept from the last run.
#[derive(Debug, Default)]
pub struct Restored {
    /// Retained messages not yet expired.
    pub retained: Vec<Publication>,
    /// Parked sessions, expired ones included (the broker discards them).
    pub sessions: Vec<(SessionKey, ParkedSession)>,
    /// Rows that did not decode, reported and left out.
    pub skipped: usize,
}

/// A parked session as read back: its record, with the messages waiting
/// for it not yet charged to the routing core's budget.
#[derive(Debug)]
pub struct ParkedSession {
    pub subscriptions: Vec<(String, crate::mqtt::SubscriptionOptions)>,
    pub expires_at: std::time::SystemTime,
    pub queued: Vec<QueuedDelivery>,
}

/// A delivery waiting for a parked session, as read back.
#[derive(Debug)]
pub struct QueuedDelivery {
    pub publication: Publication,
    /// The QoS and RETAIN flag it is delivered with.
    pub qos: crate::mqtt::QoS,
    pub retain: bool,
    pub subscription_ids: Vec<u32>,
}

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

/// The open database and its writer.
pub struct Storage {
    path: PathBuf,
    writes: Sender<Write>,
    writer: Mutex<Option<JoinHandle<()>>>,
    queues: Vec<Arc<Queue>>,
    health: Arc<Health>,
}

impl Storage {
    /// Opens (creating if needed) the database in `config.dir` with a
    /// queue for each bridge named in `bridges` (`(name, budget in
    /// bytes)`), and reads back what the last run kept. The queues' caches
    /// of recent messages give way to `memory`, the gateway's budget.
    pub fn open(
        config: &StorageConfig,
        bridges: &[(&str, u64)],
        memory: &Arc<Budget>,
    ) -> Result<(Arc<Storage>, Restored), StorageError> {
        Storage::open_with(config, bridges, memory, |_| Ok(()))
    }

    /// As [`Storage::open`], with `tweak` applied to the writer's
    /// connection before it starts (a test's smaller disk).
    fn open_with(
        config: &StorageConfig,
        bridges: &[(&str, u64)],
        memory: &Arc<Budget>,
        tweak: impl FnOnce(&Connection) -> rusqlite::Result<()>,
    ) -> Result<(Arc<Storage>, Restored), StorageError> {
        std::fs::create_dir_all(&config.dir).map_err(|source| StorageError::CreateDir {
            path: config.dir.clone(),
            source,
        })?;
        let path = config.dir.join(DB_FILE);
        let open_err = |source| StorageError::Open {
            path: path.clone(),
            source,
        };
        let db = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(open_err)?;
        prepare(&db, &path, config.sync_interval).map_err(|err| match err {
            Prepared::Sql(source) => open_err(source),
            Prepared::Newer(found) => StorageError::NewerSchema {
                path: path.clone(),
                found,
            },
        })?;
        let restored = restore(&db).map_err(StorageError::Sql)?;

        let (writes, receiver) = mpsc::channel();
        let mut states = Vec::with_capacity(bridges.len());
        let mut queues = Vec::with_capacity(bridges.len());
        for (index, (name, budget)) in bridges.iter().enumerate() {
            let table = queue::table_name(name);
            db.execute_batch(&format!(
                "CREATE TABLE IF NOT EXISTS {table} \
                 (seq INTEGER PRIMARY KEY, size INTEGER NOT NULL, {MESSAGE_SCHEMA})"
            ))
            .map_err(open_err)?;
            let (tail, bytes, messages): (u64, u64, u64) = db
                .query_row(
                    &format!("SELECT COALESCE(MAX(seq), 0), COALESCE(SUM(size), 0), COUNT(*) FROM {table}"),
                    [],
                    |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
                )
                .map_err(StorageError::Sql)?;
            let queue = Arc::new(Queue::new(
                name,
                index,
                path.clone(),
                *budget,
                writes.clone(),
                tail,
                QueueSnapshot {
                    messages,
                    bytes,
                    dropped: 0,
                },
                Arc::clone(memory),
            ));
            states.push(QueueState {
                queue: Arc::clone(&queue),
                next_seq: tail + 1,
                dropped_through: 0,
                unlogged_drops: 0,
                last_drop_log: None,
            });
            queues.push(queue);
        }
        tweak(&db).map_err(StorageError::Sql)?;
        let health = Arc::new(Health::default());
        let writer = Writer {
            db,
            wal: wal_path(&path),
            sync_interval: config.sync_interval,
            queues: states,
            health: Arc::clone(&health),
            failing: false,
            retry: Vec::new(),
        };
        let thread = std::thread::Builder::new()
            .name("jwtgate-storage".to_owned())
            .spawn(move || writer.run(receiver))
            .map_err(|source| StorageError::CreateDir {
                path: config.dir.clone(),
                source,
            })?;
        let storage = Arc::new(Storage {
            path,
            writes,
            writer: Mutex::new(Some(thread)),
            queues,
            health,
        });
        Ok((storage, restored))
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether commits work.
    pub fn health(&self) -> Arc<Health> {
        Arc::clone(&self.health)
    }

    /// The queue of bridge `name`.
    pub fn queue(&self, name: &str) -> Option<&Arc<Queue>> {
        self.queues.iter().find(|queue| queue.name() == name)
    }

    /// Waits until everything written before is committed and on the disk.
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        self.send(Write::Flush(done));
        let _ = wait.await;
    }

    /// Commits and syncs everything written before, then stops the
    /// writer; writes sent after are not kept. Blocking (it joins the
    /// writer thread): call it at the very end, off the async workers.
    pub fn close(&self) {
        let (done, _wait) = oneshot::channel();
        self.send(Write::Stop(done));
        let thread = self
            .writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if thread.is_some_and(|thread| thread.join().is_err()) {
            warn!("storage: the writer thread panicked while closing");
        }
    }

    /// A sender of writes, for the parts that write (the durable store).
    fn writes(&self) -> Sender<Write> {
        self.writes.clone()
    }

    fn send(&self, write: Write) {
        // Fails only once the writer has stopped.
        let _ = self.writes.send(write);
    }
}

/// The WAL file SQLite keeps beside `db`.
fn wal_path(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push("-wal");
    PathBuf::from(name)
}

enum Prepared {
    Sql(rusqlite::Error),
    Newer(i64),
}

impl From<rusqlite::Error> for Prepared {
    fn from(err: rusqlite::Error) -> Self {
        Prepared::Sql(err)
    }
}

/// Sets the connection up and creates the tables of an empty database.
fn prepare(db: &Connection, path: &Path, sync_interval: Duration) -> Result<(), Prepared> {
    // Another process (a second gateway on the same directory) waits a
    // moment rather than failing at once.
    db.busy_timeout(Duration::from_secs(5))?;
    let mode: String = db.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        warn!(
            database = %path.display(),
            mode,
            "storage: the file system refused WAL mode; every commit now costs an fsync"
        );
    }
    let synchronous = if sync_interval.is_zero() {
        "FULL"
    } else {
        "NORMAL"
    };
    db.pragma_update(None, "synchronous", synchronous)?;
    // Checkpoints (copying the WAL into the database, with two fsyncs)
    // every 64 MiB of log rather than SQLite's 4 MiB: a busy queue would
    // otherwise checkpoint many times a second.
    db.pragma_update(None, "wal_autocheckpoint", 16_384)?;
    db.pragma_update(None, "cache_size", PAGE_CACHE_KIB)?;
    let version: i64 = db.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    if version > SCHEMA_VERSION {
        return Err(Prepared::Newer(version));
    }
    db.execute_batch(&format!(
        "CREATE TABLE IF NOT EXISTS retained ({MESSAGE_SCHEMA}, PRIMARY KEY (topic)) WITHOUT ROWID;
         CREATE TABLE IF NOT EXISTS sessions (
             subject TEXT NOT NULL,
             client_id TEXT NOT NULL,
             expires_at INTEGER NOT NULL,
             subscriptions TEXT NOT NULL,
             PRIMARY KEY (subject, client_id)
         ) WITHOUT ROWID;
         CREATE TABLE IF NOT EXISTS session_messages (
             subject TEXT NOT NULL,
             client_id TEXT NOT NULL,
             position INTEGER NOT NULL,
             delivery_qos INTEGER NOT NULL,
             delivery_retain INTEGER NOT NULL,
             subscription_ids TEXT NOT NULL,
             {MESSAGE_SCHEMA},
             PRIMARY KEY (subject, client_id, position)
         ) WITHOUT ROWID;
         PRAGMA user_version = {SCHEMA_VERSION};"
    ))?;
    Ok(())
}

/// The messages waiting for parked sessions, per session, in order.
fn queued_deliveries(
    db: &Connection,
    skipped: &mut usize,
) -> rusqlite::Result<std::collections::HashMap<SessionKey, Vec<QueuedDelivery>>> {
    let mut queued: std::collections::HashMap<SessionKey, Vec<QueuedDelivery>> =
        std::collections::HashMap::new();
    let mut select = db.prepare(&format!(
        "SELECT subject, client_id, delivery_qos, delivery_retain, subscription_ids, {MESSAGE_COLUMNS} \
         FROM session_messages ORDER BY subject, client_id, position"
    ))?;
    let rows = select.query_map([], |row| {
        Ok((
            row.get::<_, String>(0)?,
            row.get::<_, String>(1)?,
            row.get::<_, i64>(2)?,
            row.get::<_, bool>(3)?,
            row.get::<_, String>(4)?,
            MessageRow::read(row, 5),
        ))
    })?;
    for row in rows {
        let (subject, client_id, qos, retain, ids, message) = row?;
        let key = SessionKey::new(&subject, &client_id);
        let decoded = message
            .and_then(MessageRow::publication)
            .and_then(|publication| {
                let ids: Vec<u32> = serde_json::from_str(&ids)
                    .map_err(|err| RowError::Properties(err.to_string()))?;
                let qos = QoS::try_from(qos)?;
                Ok(publication.map(|publication| QueuedDelivery {
                    publication,
                    qos,
                    retain,
                    subscription_ids: ids,
                }))
            });
        match decoded {
            Ok(Some(delivery)) => queued.entry(key).or_default().push(delivery),
            // Expired while the gateway was down.
            Ok(None) => {}
            Err(err) => {
                warn!(session = %key, error = %err, "storage: a message queued for a parked session does not decode; it is left out");
                *skipped += 1;
            }
        }
    }
    Ok(queued)
}

/// Reads the retained messages and parked sessions back.
fn restore(db: &Connection) -> rusqlite::Result<Restored> {
    let mut restored = Restored::default();
    let mut select = db.prepare(&format!("SELECT {MESSAGE_COLUMNS} FROM retained"))?;
    let rows = select.query_map([], |row| Ok(MessageRow::read(row, 0)))?;
    for row in rows {
        match row?.and_then(MessageRow::publication) {
            Ok(Some(publication)) => restored.retained.push(publication),
            Ok(None) => {}
            Err(err) => {
                warn!(error = %err, "storage: a retained message does not decode; it is left out");
                restored.skipped += 1;
            }
        }
    }
    let mut select =
        db.prepare("SELECT subject, client_id, expires_at, subscriptions FROM sessions")?;
    let rows = select.query_map([], |row| {
        Ok((
            row.get::<_, String>(0)?,
            row.get::<_, String>(1)?,
            row.get::<_, i64>(2)?,
            row.get::<_, String>(3)?,
        ))
    })?;
    let mut queued = queued_deliveries(db, &mut restored.skipped)?;
    for row in rows {
        let (subject, client_id, expires_at, subscriptions) = row?;
        let key = SessionKey::new(&subject, &client_id);
        match rows::subscriptions_from_json(&subscriptions) {
            Ok(subscriptions) => {
                let queued = queued.remove(&key).unwrap_or_default();
                restored.sessions.push((
                    key,
                    ParkedSession {
                        subscriptions,
                        expires_at: rows::system_time(expires_at),
                        queued,
                    },
                ));
            }
            Err(err) => {
                warn!(session = %key, error = %err, "storage: a parked session does not decode; it is left out");
                restored.skipped += 1;
            }
        }
    }
    Ok(restored)
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use bytes::Bytes;

    use super::*;
    use crate::broker::retained::Retained;
    use crate::broker::store::{SessionRecord, Store};
    use crate::broker::{Budget, Delivery, Message, Properties};
    use crate::mqtt::TopicLimits;
    use crate::mqtt::{QoS, SubscriptionOptions};

    fn retained(message: Arc<Message>) -> Retained {
        Retained {
            message,
            charge: None,
        }
    }

    fn config(dir: &Path) -> StorageConfig {
        StorageConfig {
            dir: dir.join("state"),
            sync_interval: Duration::from_millis(50),
        }
    }

    fn message(budget: &Arc<Budget>, topic: &str, payload: &[u8]) -> Arc<Message> {
        Message::new(
            Publication {
                topic: topic.into(),
                payload: Bytes::copy_from_slice(payload),
                qos: QoS::AtLeastOnce,
                retain: false,
                properties: Properties::default(),
                expiry: None,
            },
            budget,
        )
    }

    fn read_all(queue: &Queue) -> Vec<(u64, String, Vec<u8>)> {
        let mut reader = queue.reader().expect("reader");
        reader
            .after(0, usize::MAX)
            .expect("read the queue")
            .into_iter()
            .map(|q| {
                let p = q.publication.expect("decodes");
                (q.seq, p.topic, p.payload.to_vec())
            })
            .collect()
    }

    #[tokio::test]
    async fn a_queue_keeps_order_until_acked_and_across_a_reopen() {
        let dir = tempfile::tempdir().expect("temp dir");
        let budget = Budget::new(1 << 30);
        {
            let (storage, _) =
                Storage::open(&config(dir.path()), &[("cloud", 1 << 20)], &budget).expect("open");
            let queue = Arc::clone(storage.queue("cloud").expect("the bridge's queue"));
            let mut kept = Vec::new();
            for i in 0..5u8 {
                let topic = format!("t/{}", i % 2);
                kept.push(queue.append(
                    message(&budget, &topic, &[i]),
                    topic.clone(),
                    QoS::AtLeastOnce,
                ));
            }
            for k in kept {
                assert_eq!(k.await, Ok(Ok(())));
            }
            assert_eq!(*queue.committed().borrow(), 5);
            let all = read_all(&queue);
            assert_eq!(
                all.iter()
                    .map(|(seq, _, p)| (*seq, p[0]))
                    .collect::<Vec<_>>(),
                vec![(1, 0), (2, 1), (3, 2), (4, 3), (5, 4)]
            );
            queue.acked(vec![1, 2, 4]);
            storage.flush().await;
            assert_eq!(queue.snapshot().messages, 2);
            storage.close();
        }
        let (storage, _) =
            Storage::open(&config(dir.path()), &[("cloud", 1 << 20)], &budget).expect("reopen");
        let queue = Arc::clone(storage.queue("cloud").expect("the bridge's queue"));
        assert_eq!(
            read_all(&queue)
                .iter()
                .map(|(seq, _, _)| *seq)
                .collect::<Vec<_>>(),
            vec![3, 5]
        );
        assert_eq!(queue.snapshot().messages, 2);
        // New messages continue the numbering, never reuse it.
        queue
            .append(
                message(&budget, "t/new", b"n"),
                "site/t/new".into(),
                QoS::AtMostOnce,
            )
            .await
            .expect("answered")
            .expect("kept");
        let mut reader = queue.reader().expect("reader");
        let after = reader.after(5, 10).expect("read");
        assert_eq!(after.len(), 1);
        assert_eq!(after[0].seq, 6);
        assert_eq!(
            after[0]
                .publication
                .as_ref()
                .map(|p| (p.qos, p.topic.as_str())),
            Some((QoS::AtMostOnce, "site/t/new"))
        );
        storage.close();
    }

    #[tokio::test]
    async fn past_its_budget_a_queue_drops_the_oldest_and_counts_them() {
        let dir = tempfile::tempdir().expect("temp dir");
        let budget = Budget::new(1 << 30);
        let (storage, _) =
            Storage::open(&config(dir.path()), &[("cloud", 10_000)], &budget).expect("open");
        let queue = Arc::clone(storage.queue("cloud").expect("queue"));
        let payload = [7u8; 900];
        for i in 0..40 {
            let topic = format!("t/{i}");
            drop(queue.append(
                message(&budget, &topic, &payload),
                topic.clone(),
                QoS::AtLeastOnce,
            ));
        }
        // Larger than the whole budget: dropped itself.
        drop(queue.append(
            message(&budget, "huge", &[0u8; 20_000]),
            "huge".into(),
            QoS::AtLeastOnce,
        ));
        storage.flush().await;
        let snapshot = queue.snapshot();
        assert!(snapshot.bytes <= 10_000, "{snapshot:?}");
        let all = read_all(&queue);
        assert_eq!(all.len() as u64, snapshot.messages);
        assert_eq!(snapshot.dropped + snapshot.messages, 41, "{snapshot:?}");
        // What is left is the newest, in order.
        let topics: Vec<String> = all.into_iter().map(|(_, t, _)| t).collect();
        let newest: Vec<String> = (40 - topics.len()..40).map(|i| format!("t/{i}")).collect();
        assert_eq!(topics, newest);
        // Memory holds the recent commits, but never what the budget
        // dropped: a reader from the start must go to the table.
        let first_kept = read_all(&queue)[0].0;
        assert!(queue.recent_after(0, 100).is_none());
        let recent = queue
            .recent_after(first_kept - 1, 100)
            .expect("the kept messages are recent");
        let seqs: Vec<u64> = recent.iter().map(|q| q.seq).collect();
        assert_eq!(seqs, (first_kept..=40).collect::<Vec<_>>());
        assert_eq!(
            recent
                .last()
                .and_then(|q| q.publication.as_ref())
                .map(|p| p.topic.as_str()),
            Some("t/39")
        );
        // Taken once: the next reader past them finds nothing more.
        assert!(queue.recent_after(40, 100).is_none());
        storage.close();
    }

    /// Appends a message of `size` payload bytes on `t/{n}` and waits for
    /// the writer's answer.
    async fn append_one(
        queue: &Queue,
        budget: &Arc<Budget>,
        n: usize,
        size: usize,
    ) -> Result<(), crate::broker::CommitError> {
        let topic = format!("t/{n}");
        queue
            .append(
                message(budget, &topic, &vec![b'x'; size]),
                topic,
                QoS::AtLeastOnce,
            )
            .await
            .expect("the writer answers")
    }

    /// What the queue's table holds: (rows, bytes as budgeted, seqs).
    fn table_figures(storage: &Storage) -> (u64, u64, Vec<u64>) {
        let db = Connection::open_with_flags(storage.path(), OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("open read-only");
        let (rows, bytes) = db
            .query_row(
                "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM \"queue:cloud\"",
                [],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .expect("figures");
        let mut select = db
            .prepare("SELECT seq FROM \"queue:cloud\" ORDER BY seq")
            .expect("select");
        let seqs = select
            .query_map([], |row| row.get(0))
            .expect("seqs")
            .collect::<rusqlite::Result<_>>()
            .expect("read seqs");
        (rows, bytes, seqs)
    }

    /// Issue 19, item 4: on a database that cannot grow (a full disk, made
    /// here with `max_page_count`), a failed commit is answered as such
    /// and moves none of the queue's figures; once room returns (acked
    /// rows free pages) the queue takes messages again, numbered on
    /// from the last committed one, and its figures still match its
    /// table.
    #[tokio::test]
    async fn a_failed_commit_is_answered_and_leaves_the_queue_as_it_was() {
        let dir = tempfile::tempdir().expect("temp dir");
        let budget = Budget::new(1 << 30);
        let (storage, _) =
            Storage::open_with(&config(dir.path()), &[("cloud", 1 << 30)], &budget, |db| {
                let pages: u64 = db.query_row("PRAGMA page_count", [], |row| row.get(0))?;
                db.query_row(
                    &format!("PRAGMA max_page_count = {}", pages + 24),
                    [],
                    |_| Ok(()),
                )
            })
            .expect("open");
        let queue = Arc::clone(storage.queue("cloud").expect("queue"));
        let health = storage.health();
        let mut kept = 0;
        let failure = loop {
            match append_one(&queue, &budget, kept, 2000).await {
                Ok(()) => kept += 1,
                Err(err) => break err,
            }
            assert!(kept < 1000, "the database never filled up");
        };
        assert_eq!(failure, crate::broker::CommitError::Full);
        assert!(kept > 0);
        for n in 0..20 {
            assert_eq!(
                append_one(&queue, &budget, kept + n, 2000).await,
                Err(crate::broker::CommitError::Full)
            );
        }
        assert!(health.disk_full());
        assert_eq!(health.failed_commits(), 21);
        let failed_before_acks = health.failed_commits();
        let (rows, bytes, seqs) = table_figures(&storage);
        let snapshot = queue.snapshot();
        assert_eq!((snapshot.messages, snapshot.bytes), (rows, bytes));
        assert_eq!(rows, kept as u64);
        assert_eq!(*queue.committed().borrow(), kept as u64);
        assert_eq!(seqs, (1..=kept as u64).collect::<Vec<_>>());

        // The remote's acks in a commit that fails are applied by the
        // next one.
        queue.acked(vec![1]);
        assert_eq!(
            append_one(&queue, &budget, 0, 2000).await,
            Err(crate::broker::CommitError::Full)
        );
        storage.flush().await;
        assert_eq!(health.failed_commits(), failed_before_acks + 1);
        let (rows, _, seqs) = table_figures(&storage);
        assert_eq!((rows, seqs.first()), (kept as u64 - 1, Some(&2)));
        assert_eq!(queue.snapshot().messages, rows);

        // Room again: the remote took the first half.
        queue.acked((2..=kept as u64 / 2).collect());
        storage.flush().await;
        append_one(&queue, &budget, 9999, 10)
            .await
            .expect("kept once there is room");
        assert!(!health.disk_full());
        let (rows, bytes, seqs) = table_figures(&storage);
        let snapshot = queue.snapshot();
        assert_eq!((snapshot.messages, snapshot.bytes), (rows, bytes));
        assert_eq!(seqs.last(), Some(&(kept as u64 + 1)), "no gap, no reuse");
        assert_eq!(*queue.committed().borrow(), kept as u64 + 1);
        let recent = queue
            .recent_after(kept as u64, 10)
            .expect("the new message is recent");
        assert_eq!(
            recent
                .iter()
                .map(|q| (q.seq, q.publication.as_ref().map(|p| p.topic.as_str())))
                .collect::<Vec<_>>(),
            [(kept as u64 + 1, Some("t/9999"))]
        );
        storage.close();
    }

    /// The bridge's cache of recent messages holds at most a share of the
    /// memory budget, and nothing while the budget is tight: the rows on
    /// disk are read instead.
    #[tokio::test]
    async fn the_recent_cache_gives_way_to_the_memory_budget() {
        let dir = tempfile::tempdir().expect("temp dir");
        let budget = Budget::new(256 * 1024);
        let (storage, _) =
            Storage::open(&config(dir.path()), &[("cloud", 1 << 30)], &budget).expect("open");
        let queue = Arc::clone(storage.queue("cloud").expect("queue"));
        for n in 0..40 {
            append_one(&queue, &budget, n, 1000).await.expect("kept");
        }
        // 40 kB committed, a 16 kB share: only the newest are in memory.
        assert!(queue.recent_after(0, 100).is_none());
        let cached = (0..40u64)
            .find_map(|after| queue.recent_after(after, 100))
            .expect("the newest are cached");
        assert!(cached.len() <= 256 * 1024 / 16 / 1000, "{}", cached.len());
        assert_eq!(cached.last().map(|q| q.seq), Some(40));

        // Sessions hold more than half the budget: nothing is cached.
        let _sessions = budget.charge(200 * 1024);
        append_one(&queue, &budget, 40, 1000).await.expect("kept");
        assert!(queue.recent_after(40, 100).is_none());
        let mut reader = queue.reader().expect("reader");
        assert_eq!(reader.after(40, 100).expect("read").len(), 1, "on disk");
        storage.close();
    }

    #[tokio::test]
    async fn retained_messages_and_parked_sessions_survive_a_reopen() {
        let dir = tempfile::tempdir().expect("temp dir");
        let budget = Budget::new(1 << 30);
        let key = SessionKey::new("device-1", "client-1");
        let options = SubscriptionOptions {
            qos: QoS::AtLeastOnce,
            no_local: true,
            retain_as_published: false,
            id: Some(7),
        };
        let expires_at = SystemTime::now() + Duration::from_secs(3600);
        {
            let (storage, restored) =
                Storage::open(&config(dir.path()), &[], &budget).expect("open");
            let store = DurableStore::new(&storage, restored, &budget, &TopicLimits::DEFAULT).0;
            let mut with_props = Publication {
                topic: "status/a".into(),
                payload: Bytes::from_static(b"on"),
                qos: QoS::AtLeastOnce,
                retain: true,
                properties: Properties {
                    payload_format_indicator: Some(1),
                    content_type: Some("text/plain".into()),
                    response_topic: Some("reply/a".into()),
                    correlation_data: Some(Bytes::from_static(&[0, 255, 1])),
                    user_properties: vec![("k".into(), "v".into())],
                },
                expiry: Some(Duration::from_secs(600)),
            };
            // Each change hands its commit back for the publisher's ack.
            let commits = [
                store.retain(retained(Message::new(with_props.clone(), &budget))),
                {
                    with_props.topic = "status/b".into();
                    store.retain(retained(Message::new(with_props, &budget)))
                },
                store.retain(retained(message(&budget, "status/c", b"x"))),
                store.clear_retained("status/b"),
            ];
            for commit in commits {
                assert_eq!(commit.expect("a commit to wait on").await, Ok(Ok(())));
            }
            store.save_session(
                &key,
                SessionRecord {
                    subscriptions: vec![("cmd/#".into(), options)],
                    expires_at,
                    queued: vec![
                        Delivery {
                            message: message(&budget, "cmd/first", b"1"),
                            qos: QoS::AtLeastOnce,
                            retain: false,
                            subscription_ids: vec![7].into(),
                        },
                        Delivery {
                            message: message(&budget, "cmd/second", b"2"),
                            qos: QoS::AtMostOnce,
                            retain: true,
                            subscription_ids: Vec::new().into(),
                        },
                    ],
                },
            );
            store.save_session(
                &SessionKey::new("device-2", "gone"),
                SessionRecord {
                    subscriptions: vec![],
                    expires_at,
                    queued: Vec::new(),
                },
            );
            store.remove_session(&SessionKey::new("device-2", "gone"));
            storage.close();
        }
        let (storage, restored) = Storage::open(&config(dir.path()), &[], &budget).expect("reopen");
        assert_eq!(restored.skipped, 0);
        let store = DurableStore::new(&storage, restored, &budget, &TopicLimits::DEFAULT).0;
        let mut topics = Vec::new();
        let mut props = None;
        store.retained("status/#", None, usize::MAX, &mut |m| {
            topics.push(m.topic().to_owned());
            if m.topic() == "status/a" {
                props = m.properties().cloned();
                let left = m
                    .remaining_expiry(std::time::Instant::now())
                    .expect("expiry kept");
                assert!((595..=600).contains(&left), "{left}");
            }
        });
        topics.sort();
        assert_eq!(topics, ["status/a", "status/c"]);
        let props = props.expect("properties kept");
        assert_eq!(props.correlation_data.as_deref(), Some(&[0, 255, 1][..]));
        assert_eq!(props.content_type.as_deref(), Some("text/plain"));
        assert_eq!(
            props.user_properties,
            vec![("k".to_owned(), "v".to_owned())]
        );
        let sessions = store.sessions();
        assert_eq!(sessions.len(), 1);
        assert_eq!(sessions[0].0, key);
        assert_eq!(
            sessions[0].1.subscriptions,
            vec![("cmd/#".to_owned(), options)]
        );
        let drift = sessions[0]
            .1
            .expires_at
            .duration_since(expires_at)
            .unwrap_or_else(|e| e.duration());
        assert!(drift < Duration::from_millis(2), "{drift:?}");
        let queued: Vec<_> = sessions[0]
            .1
            .queued
            .iter()
            .map(|d| {
                (
                    d.message.topic(),
                    d.qos,
                    d.retain,
                    d.subscription_ids.to_vec(),
                )
            })
            .collect();
        assert_eq!(
            queued,
            [
                ("cmd/first", QoS::AtLeastOnce, false, vec![7]),
                ("cmd/second", QoS::AtMostOnce, true, vec![]),
            ]
        );
        storage.close();
    }

    #[test]
    fn a_database_from_a_later_release_is_refused_not_rewritten() {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = config(dir.path());
        std::fs::create_dir_all(&config.dir).expect("state dir");
        let db = Connection::open(config.dir.join(DB_FILE)).expect("create");
        db.pragma_update(None, "user_version", 9)
            .expect("set version");
        drop(db);
        match Storage::open(&config, &[], &Budget::new(1 << 20)) {
            Err(err @ StorageError::NewerSchema { found: 9, .. }) => {
                assert!(err.to_string().contains("jwtgate.sqlite"), "{err}");
            }
            Err(other) => panic!("wrong error: {other}"),
            Ok(_) => panic!("opened a newer database"),
        }
    }
}
