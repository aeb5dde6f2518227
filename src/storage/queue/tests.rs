//! When queued messages entered the queue: the oldest follows the head
//! as messages are acknowledged (in or out of order) and dropped by the
//! budget, keeps its time across a reopen, and a layout 2 database's
//! queue is upgraded in place with its rows counted from the upgrade.

use std::path::Path;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use rusqlite::Connection;

use super::*;
use crate::broker::Properties;
use crate::config::StorageConfig;
use crate::storage::Storage;
use crate::storage::schema::{DB_FILE, SCHEMA_VERSION};

fn config(dir: &Path) -> StorageConfig {
    StorageConfig {
        dir: dir.join("state"),
        sync_interval: Duration::from_millis(50),
    }
}

fn message(budget: &Arc<Budget>, payload: &[u8]) -> Arc<Message> {
    Message::new(
        Publication {
            topic: "t".into(),
            payload: Bytes::copy_from_slice(payload),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: Properties::default(),
            expiry: None,
        },
        budget,
    )
}

/// Appends one message and returns the wall-clock window its commit fell
/// in, to the millisecond as the queue keeps it.
async fn append(queue: &Queue, budget: &Arc<Budget>, payload: &[u8]) -> (SystemTime, SystemTime) {
    let before = whole_millis(SystemTime::now());
    queue
        .append(
            message(budget, payload),
            "site/t".to_owned(),
            QoS::AtLeastOnce,
        )
        .await
        .expect("answered")
        .expect("kept");
    let after = SystemTime::now();
    // Apart by more than the millisecond the queue rounds to.
    tokio::time::sleep(Duration::from_millis(5)).await;
    (before, after)
}

fn whole_millis(at: SystemTime) -> SystemTime {
    rows::system_time(rows::unix_millis(at))
}

fn within(at: Option<SystemTime>, (before, after): (SystemTime, SystemTime)) -> bool {
    at.is_some_and(|at| at >= before && at <= after)
}

#[tokio::test]
async fn the_oldest_follows_the_head_and_keeps_its_time_across_a_reopen() {
    let dir = tempfile::tempdir().expect("temp dir");
    let budget = Budget::new(1 << 30);
    let bridges = [("cloud", 1 << 20)];
    let (storage, _) = Storage::open(&config(dir.path()), &bridges, &budget).expect("open");
    let queue = Arc::clone(storage.queue("cloud").expect("the bridge's queue"));
    assert_eq!(queue.oldest_queued_at(), None);
    assert_eq!(queue.snapshot().oldest_queued_at, None);

    let first = append(&queue, &budget, b"1").await;
    let second = append(&queue, &budget, b"2").await;
    let third = append(&queue, &budget, b"3").await;
    assert!(within(queue.oldest_queued_at(), first));
    let oldest = queue.oldest_queued_at();
    assert_eq!(queue.snapshot().oldest_queued_at, oldest);

    // An acknowledgement behind the head leaves it where it is.
    queue.acked(vec![2]);
    storage.flush().await;
    assert_eq!(queue.oldest_queued_at(), oldest);
    assert!(!within(oldest, second), "the messages' times overlap");
    queue.acked(vec![1]);
    storage.flush().await;
    assert!(within(queue.oldest_queued_at(), third));
    let oldest = queue.oldest_queued_at();
    storage.close();
    drop(storage);

    // Restored with the time it was queued, not the time of the restart.
    let (storage, _) = Storage::open(&config(dir.path()), &bridges, &budget).expect("reopen");
    let queue = Arc::clone(storage.queue("cloud").expect("the bridge's queue"));
    assert_eq!(queue.oldest_queued_at(), oldest);
    queue.acked(vec![3]);
    storage.flush().await;
    assert_eq!(queue.oldest_queued_at(), None);
    // Into the empty queue again: the new message is the oldest.
    let fourth = append(&queue, &budget, b"4").await;
    assert!(within(queue.oldest_queued_at(), fourth));
    storage.close();
}

#[tokio::test]
async fn a_budget_drop_moves_the_oldest_to_what_is_left() {
    let dir = tempfile::tempdir().expect("temp dir");
    let budget = Budget::new(1 << 30);
    // Room for about two of these 3000-byte messages.
    let (storage, _) =
        Storage::open(&config(dir.path()), &[("cloud", 7000)], &budget).expect("open");
    let queue = Arc::clone(storage.queue("cloud").expect("the bridge's queue"));
    let payload = [b'x'; 3000];
    let first = append(&queue, &budget, &payload).await;
    let second = append(&queue, &budget, &payload).await;
    assert!(within(queue.oldest_queued_at(), first));
    append(&queue, &budget, &payload).await;
    assert_eq!(queue.snapshot().dropped, 1);
    assert!(within(queue.oldest_queued_at(), second));
    storage.close();
}

/// A queue table written by layout 2 has no `queued_at`: it is added in
/// place, its rows count from the upgrade (their true time is unknown),
/// and that time stays theirs across reopens; a bridge no longer
/// configured has its table upgraded too.
#[tokio::test]
async fn a_version_2_queue_is_upgraded_and_counts_its_rows_from_the_upgrade() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = config(dir.path());
    std::fs::create_dir_all(&config.dir).expect("state dir");
    {
        let db = Connection::open(config.dir.join(DB_FILE)).expect("create");
        for table in ["\"queue:cloud\"", "\"queue:old\""] {
            db.execute_batch(&format!(
                "CREATE TABLE {table} (seq INTEGER PRIMARY KEY, size INTEGER NOT NULL, \
                 topic TEXT NOT NULL, payload BLOB NOT NULL, qos INTEGER NOT NULL, \
                 retain INTEGER NOT NULL, expires_at INTEGER, properties TEXT);
                 INSERT INTO {table} (seq, size, topic, payload, qos, retain) \
                 VALUES (1, 100, 'site/a', x'01', 1, 0), (2, 100, 'site/b', x'02', 1, 0);"
            ))
            .expect("a version 2 queue");
        }
        db.pragma_update(None, "user_version", 2)
            .expect("set version");
    }
    let budget = Budget::new(1 << 20);
    let before = whole_millis(SystemTime::now());
    let (storage, _) = Storage::open(&config, &[("cloud", 1 << 20)], &budget).expect("open");
    let upgraded = (before, SystemTime::now());
    let queue = Arc::clone(storage.queue("cloud").expect("the bridge's queue"));
    assert_eq!(queue.snapshot().messages, 2);
    let oldest = queue.oldest_queued_at();
    assert!(within(oldest, upgraded), "{oldest:?} not in {upgraded:?}");
    let rows = queue.reader().expect("reader").after(0, 10).expect("read");
    assert_eq!(
        rows.iter()
            .map(|q| q.publication.as_ref().map(|p| p.topic.as_str()))
            .collect::<Vec<_>>(),
        [Some("site/a"), Some("site/b")]
    );
    tokio::time::sleep(Duration::from_millis(5)).await;
    let new = append(&queue, &budget, b"new").await;
    assert_eq!(queue.oldest_queued_at(), oldest);
    queue.acked(vec![1, 2]);
    storage.flush().await;
    assert!(within(queue.oldest_queued_at(), new));
    storage.close();
    drop(storage);

    let db = Connection::open(config.dir.join(DB_FILE)).expect("reopen by hand");
    let version: i64 = db
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .expect("version");
    assert_eq!(version, SCHEMA_VERSION);
    let old_rows: Vec<i64> = db
        .prepare("SELECT queued_at FROM \"queue:old\" ORDER BY seq")
        .expect("the unconfigured bridge's table has the column")
        .query_map([], |row| row.get(0))
        .expect("read")
        .collect::<Result<_, _>>()
        .expect("times");
    assert_eq!(old_rows.len(), 2);
    assert!(
        old_rows
            .iter()
            .all(|&at| Some(rows::system_time(at)) == oldest)
    );
    drop(db);

    // Opened again, nothing is upgraded twice and the times stay.
    let (storage, _) = Storage::open(&config, &[("old", 1 << 20)], &budget).expect("reopen");
    let old = storage.queue("old").expect("the old bridge's queue");
    assert_eq!(old.oldest_queued_at(), oldest);
    storage.close();
}
