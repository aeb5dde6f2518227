//! The database file and its layout: where it lives, how a connection to
//! it is set up, the tables and the layout version, and why opening it
//! fails.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rusqlite::Connection;
use tracing::warn;

use super::rows::{MESSAGE_SCHEMA, unix_millis};

/// The database file in `[storage] dir`.
pub(super) const DB_FILE: &str = "jwtgate.sqlite";
/// SQLite's page cache per connection, in KiB as its negative
/// `cache_size` takes it: 8 MiB holds a busy queue's hot pages (its head
/// and tail), where the default 2 MiB made the drain re-read pages.
pub(super) const PAGE_CACHE_KIB: i64 = -8192;
/// The layout version this code writes, kept in SQLite's `user_version`.
/// 2 added `sessions.expiry_ms`: a session written while connected. 3
/// added `queued_at` to the bridges' queue tables: when each message
/// entered its queue, for the age of the oldest.
pub(super) const SCHEMA_VERSION: i64 = 3;

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

/// The WAL file SQLite keeps beside `db`.
pub(super) fn wal_path(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push("-wal");
    PathBuf::from(name)
}

/// Why [`prepare`] failed.
pub(super) enum Prepared {
    Sql(rusqlite::Error),
    Newer(i64),
}

impl From<rusqlite::Error> for Prepared {
    fn from(err: rusqlite::Error) -> Self {
        Prepared::Sql(err)
    }
}

/// Sets the connection up and creates the tables of an empty database.
pub(super) fn prepare(
    db: &Connection,
    path: &Path,
    sync_interval: Duration,
) -> Result<(), Prepared> {
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
    let mut version: i64 = db.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    if version > SCHEMA_VERSION {
        return Err(Prepared::Newer(version));
    }
    if version == 1 {
        // Sessions written by version 1 were all parked: NULL says so.
        // One transaction with the version, so that an interrupted
        // upgrade is redone, not half done.
        db.execute_batch(
            "BEGIN;
             ALTER TABLE sessions ADD COLUMN expiry_ms INTEGER;
             PRAGMA user_version = 2;
             COMMIT;",
        )?;
        version = 2;
    }
    if version == 2 {
        add_queued_at(db)?;
    }
    db.execute_batch(&format!(
        "CREATE TABLE IF NOT EXISTS retained ({MESSAGE_SCHEMA}, PRIMARY KEY (topic)) WITHOUT ROWID;
         CREATE TABLE IF NOT EXISTS sessions (
             subject TEXT NOT NULL,
             client_id TEXT NOT NULL,
             expires_at INTEGER NOT NULL,
             expiry_ms INTEGER,
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

/// Layout 2 to 3: a `queued_at` column (unix milliseconds) in every
/// queue table, including those of bridges no longer configured, which a
/// later configuration may name again. Rows already queued get the
/// upgrade's time, a column default, which costs no rewrite of a large
/// backlog: their true age is unknown and at least that, so the age of
/// the oldest reads low rather than not at all. One transaction with the
/// version, so that an interrupted upgrade is redone, not half done.
fn add_queued_at(db: &Connection) -> rusqlite::Result<()> {
    let now = unix_millis(SystemTime::now());
    let tx = db.unchecked_transaction()?;
    let tables = tx
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name GLOB 'queue:*'")?
        .query_map([], |row| row.get::<_, String>(0))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    for table in tables {
        tx.execute_batch(&format!(
            "ALTER TABLE \"{}\" ADD COLUMN queued_at INTEGER NOT NULL DEFAULT {now}",
            table.replace('"', "\"\"")
        ))?;
    }
    tx.pragma_update(None, "user_version", 3)?;
    tx.commit()
}
