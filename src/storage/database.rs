//! The open database, [`Storage`]: opened (and created) at start with a
//! queue per bridge, read back, and written by its one writer thread until
//! it is closed.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use rusqlite::{Connection, OpenFlags};
use tokio::sync::oneshot;
use tracing::warn;

use super::command::Write;
use super::queue::{self, Queue, QueueSnapshot};
use super::restore::{Restored, restore};
use super::rows::MESSAGE_SCHEMA;
use super::schema::{DB_FILE, Prepared, StorageError, prepare, wal_path};
use super::writer::{Health, QueueState, Writer};
use crate::broker::Budget;
use crate::config::StorageConfig;

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
    pub(super) fn open_with(
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
                 (seq INTEGER PRIMARY KEY, size INTEGER NOT NULL, queued_at INTEGER NOT NULL, \
                 {MESSAGE_SCHEMA})"
            ))
            .map_err(open_err)?;
            let (tail, bytes, messages): (u64, u64, u64) = db
                .query_row(
                    &format!("SELECT COALESCE(MAX(seq), 0), COALESCE(SUM(size), 0), COUNT(*) FROM {table}"),
                    [],
                    |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
                )
                .map_err(StorageError::Sql)?;
            // What the last run left keeps the time it was queued.
            let oldest = queue::head_queued_at(&db, &table).map_err(StorageError::Sql)?;
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
                    oldest_queued_at: oldest,
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
    pub(super) fn writes(&self) -> Sender<Write> {
        self.writes.clone()
    }

    fn send(&self, write: Write) {
        // Fails only once the writer has stopped.
        let _ = self.writes.send(write);
    }
}
