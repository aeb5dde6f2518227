//! The database across reopens: queue order and budget, failed commits,
//! the recent cache, retained messages and parked sessions, and a layout
//! from a later release.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use rusqlite::{Connection, OpenFlags};

use super::schema::DB_FILE;
use super::*;
use crate::broker::retained::Retained;
use crate::broker::store::{SessionExpiry, SessionRecord, Store};
use crate::broker::{Budget, Delivery, Message, Properties, Publication, SessionKey};
use crate::config::StorageConfig;
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
        let (storage, restored) = Storage::open(&config(dir.path()), &[], &budget).expect("open");
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
                expiry: SessionExpiry::At(expires_at),
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
                expiry: SessionExpiry::At(expires_at),
                queued: Vec::new(),
            },
        );
        store.remove_session(&SessionKey::new("device-2", "gone"));
        // Written while its client was connected: its interval counts from
        // the reopen.
        store.save_session(
            &SessionKey::new("device-3", "connected"),
            SessionRecord {
                subscriptions: vec![("valve/#".into(), options)],
                expiry: SessionExpiry::AfterRestart(Duration::from_secs(90)),
                queued: Vec::new(),
            },
        );
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
    let mut sessions = store.sessions();
    sessions.sort_by(|a, b| a.0.subject().cmp(b.0.subject()));
    assert_eq!(sessions.len(), 2);
    assert_eq!(sessions[1].0, SessionKey::new("device-3", "connected"));
    assert_eq!(
        sessions[1].1.expiry,
        SessionExpiry::AfterRestart(Duration::from_secs(90))
    );
    assert_eq!(
        sessions[1].1.subscriptions,
        vec![("valve/#".to_owned(), options)]
    );
    assert_eq!(sessions[0].0, key);
    assert_eq!(
        sessions[0].1.subscriptions,
        vec![("cmd/#".to_owned(), options)]
    );
    let SessionExpiry::At(restored_at) = sessions[0].1.expiry else {
        panic!("a parked session came back as {:?}", sessions[0].1.expiry);
    };
    let drift = restored_at
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

/// A database written by layout version 1 (no `sessions.expiry_ms`) is
/// upgraded in place: its parked sessions come back parked, at their
/// time, and the upgrade is not run twice.
#[test]
fn a_version_1_database_is_upgraded_and_keeps_its_sessions() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = config(dir.path());
    std::fs::create_dir_all(&config.dir).expect("state dir");
    let expires_at = SystemTime::now() + Duration::from_secs(600);
    {
        let db = Connection::open(config.dir.join(DB_FILE)).expect("create");
        db.execute_batch(
            "CREATE TABLE sessions (
                 subject TEXT NOT NULL,
                 client_id TEXT NOT NULL,
                 expires_at INTEGER NOT NULL,
                 subscriptions TEXT NOT NULL,
                 PRIMARY KEY (subject, client_id)
             ) WITHOUT ROWID;
             PRAGMA user_version = 1;",
        )
        .expect("version 1 layout");
        db.execute(
            "INSERT INTO sessions VALUES ('dev', 'c1', ?1, '[{\"filter\":\"a/#\",\"qos\":1}]')",
            [super::rows::unix_millis(expires_at)],
        )
        .expect("a parked session");
    }
    let budget = Budget::new(1 << 20);
    for _ in 0..2 {
        let (storage, restored) = Storage::open(&config, &[], &budget).expect("open");
        assert_eq!(restored.skipped, 0);
        assert_eq!(restored.sessions.len(), 1);
        let (key, session) = &restored.sessions[0];
        assert_eq!(key, &SessionKey::new("dev", "c1"));
        assert_eq!(session.subscriptions.len(), 1);
        let SessionExpiry::At(at) = session.expiry else {
            panic!("came back as {:?}", session.expiry);
        };
        let drift = at
            .duration_since(expires_at)
            .unwrap_or_else(|e| e.duration());
        assert!(drift < Duration::from_millis(2), "{drift:?}");
        storage.close();
    }
    let db = Connection::open(config.dir.join(DB_FILE)).expect("reopen by hand");
    let version: i64 = db
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .expect("version");
    assert_eq!(version, super::schema::SCHEMA_VERSION);
}

/// `$SYS/...` retained messages are the gateway's figures of one run:
/// held in memory and counted, never committed, and a `$` row an older
/// version wrote (when a client granted `$foo/#` could publish there) is
/// dropped from the database at the next start.
#[tokio::test]
async fn server_topics_are_retained_in_memory_only() {
    let dir = tempfile::tempdir().expect("temp dir");
    let budget = Budget::new(1 << 30);
    {
        let (storage, restored) = Storage::open(&config(dir.path()), &[], &budget).expect("open");
        let store = DurableStore::new(&storage, restored, &budget, &TopicLimits::DEFAULT).0;
        let sys = |payload: &[u8]| {
            let message = Publication {
                topic: "$SYS/broker/uptime".into(),
                payload: Bytes::copy_from_slice(payload),
                qos: QoS::AtMostOnce,
                retain: true,
                properties: Properties::default(),
                expiry: None,
            };
            retained(Message::new(message, &budget))
        };
        assert!(store.retain(sys(b"1 seconds")).is_none(), "no commit");
        assert!(store.retain(sys(b"2 seconds")).is_none(), "no commit");
        let kept = store.retain(retained(message(&budget, "status/a", b"on")));
        assert_eq!(kept.expect("a commit").await, Ok(Ok(())));
        assert_eq!(store.retained_count(), 2);
        let mut seen = Vec::new();
        store.retained("$SYS/#", None, usize::MAX, &mut |m| {
            seen.push(m.payload().clone());
        });
        assert_eq!(seen, [Bytes::from_static(b"2 seconds")]);
        assert!(store.clear_retained("$SYS/broker/uptime").is_none());
        assert_eq!(store.retained_count(), 1);
        // What an older version wrote down, behind the store's back.
        let (old, written) = tokio::sync::oneshot::channel();
        storage
            .writes()
            .send(super::command::Write::Retain(
                message(&budget, "$old/figure", b"stale"),
                old,
            ))
            .expect("the writer runs");
        assert_eq!(written.await, Ok(Ok(())));
        storage.close();
    }
    for pass in ["the first reopen drops the $ row", "it is gone"] {
        let (storage, restored) = Storage::open(&config(dir.path()), &[], &budget).expect("reopen");
        let topics: Vec<String> = restored.retained.iter().map(|p| p.topic.clone()).collect();
        let store = DurableStore::new(&storage, restored, &budget, &TopicLimits::DEFAULT);
        assert_eq!(store.1, 0, "{pass}: not counted as over the limits");
        assert_eq!(store.0.retained_count(), 1, "{pass}");
        if pass == "it is gone" {
            assert_eq!(topics, ["status/a"], "{pass}");
        }
        storage.close();
    }
}
