//! The store-and-forward workload on each candidate database: messages
//! appended in commits of 1 and of 64 (a burst from many devices), then
//! drained in order and deleted in commits of 64 (PUBACKs from the remote),
//! 300-byte values keyed by a sequence number.
//!
//! Each mode is labelled with what it survives: a process kill (SIGKILL),
//! and a power cut. Only modes that survive SIGKILL without an fsync per
//! commit can acknowledge a device's QoS 1 publication at once; the others
//! must hold the PUBACK until their fsync.

use std::path::Path;
use std::time::Instant;

const VALUE: usize = 300;
const APPEND: u64 = 20_000;

fn main() {
    let base = std::env::args().nth(1).unwrap_or_else(|| "/var/tmp".to_owned());
    let dir = tempfile::tempdir_in(base).expect("temporary directory");
    println!(
        "{:<62} {:>14} {:>14} {:>12}",
        "mode", "append x1 /s", "append x64 /s", "drain x64 /s"
    );
    for (name, mode) in [
        ("sqlite WAL, synchronous=NORMAL (kill: yes, power: checkpoint)", Sqlite::Normal),
        ("sqlite WAL, synchronous=FULL (kill: yes, power: yes)", Sqlite::Full),
    ] {
        let path = dir.path().join(format!("{mode:?}.sqlite"));
        report(name, sqlite(&path, mode));
    }
    for (name, durability) in [
        ("redb Immediate (kill: yes, power: yes)", redb::Durability::Immediate),
        ("redb None (kill: no, power: no)", redb::Durability::None),
    ] {
        let path = dir.path().join(format!("{durability:?}.redb"));
        report(name, redb_run(&path, durability));
    }
}

fn report(name: &str, (one, batch, drain): (f64, f64, f64)) {
    println!("{name:<62} {one:>14.0} {batch:>14.0} {drain:>12.0}");
}

#[derive(Debug, Clone, Copy)]
enum Sqlite {
    Normal,
    Full,
}

fn sqlite(path: &Path, mode: Sqlite) -> (f64, f64, f64) {
    let mut db = rusqlite::Connection::open(path).unwrap();
    db.pragma_update(None, "journal_mode", "WAL").unwrap();
    let sync = match mode {
        Sqlite::Normal => "NORMAL",
        Sqlite::Full => "FULL",
    };
    db.pragma_update(None, "synchronous", sync).unwrap();
    db.execute("CREATE TABLE q (seq INTEGER PRIMARY KEY, v BLOB NOT NULL)", [])
        .unwrap();
    let value = vec![7u8; VALUE];
    let mut seq = 0u64;
    let mut append = |db: &mut rusqlite::Connection, n: u64, per: u64| {
        let start = Instant::now();
        for _ in 0..n / per {
            let tx = db.transaction().unwrap();
            {
                let mut insert = tx.prepare_cached("INSERT INTO q VALUES (?1, ?2)").unwrap();
                for _ in 0..per {
                    seq += 1;
                    insert.execute(rusqlite::params![seq as i64, &value]).unwrap();
                }
            }
            tx.commit().unwrap();
        }
        n as f64 / start.elapsed().as_secs_f64()
    };
    let one = append(&mut db, APPEND / 10, 1);
    let batch = append(&mut db, APPEND * 5, 64);
    let start = Instant::now();
    let mut drained = 0u64;
    loop {
        let tx = db.transaction().unwrap();
        let seqs: Vec<i64> = {
            let mut read = tx
                .prepare_cached("SELECT seq, v FROM q ORDER BY seq LIMIT 64")
                .unwrap();
            read.query_map([], |row| {
                let _: Vec<u8> = row.get(1)?;
                row.get(0)
            })
            .unwrap()
            .map(Result::unwrap)
            .collect()
        };
        if seqs.is_empty() {
            break;
        }
        {
            let mut delete = tx.prepare_cached("DELETE FROM q WHERE seq = ?1").unwrap();
            for s in &seqs {
                delete.execute([s]).unwrap();
            }
        }
        tx.commit().unwrap();
        drained += seqs.len() as u64;
    }
    (one, batch, drained as f64 / start.elapsed().as_secs_f64())
}

use redb::ReadableTable;

const QUEUE: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("q");

fn redb_run(path: &Path, durability: redb::Durability) -> (f64, f64, f64) {
    let db = redb::Database::create(path).unwrap();
    let value = vec![7u8; VALUE];
    let mut seq = 0u64;
    let mut append = |n: u64, per: u64| {
        let start = Instant::now();
        for _ in 0..n / per {
            let mut tx = db.begin_write().unwrap();
            tx.set_durability(durability).unwrap();
            {
                let mut table = tx.open_table(QUEUE).unwrap();
                for _ in 0..per {
                    seq += 1;
                    table.insert(seq, value.as_slice()).unwrap();
                }
            }
            tx.commit().unwrap();
        }
        n as f64 / start.elapsed().as_secs_f64()
    };
    let one = append(APPEND / 10, 1);
    let batch = append(APPEND * 5, 64);
    let start = Instant::now();
    let mut drained = 0u64;
    loop {
        let mut tx = db.begin_write().unwrap();
        tx.set_durability(durability).unwrap();
        let n = {
            let mut table = tx.open_table(QUEUE).unwrap();
            let seqs: Vec<u64> = table
                .range(0u64..)
                .unwrap()
                .take(64)
                .map(|entry| {
                    let (k, v) = entry.unwrap();
                    let _ = v.value().to_vec();
                    k.value()
                })
                .collect();
            for s in &seqs {
                table.remove(s).unwrap();
            }
            seqs.len()
        };
        tx.commit().unwrap();
        if n == 0 {
            break;
        }
        drained += n as u64;
    }
    (one, batch, drained as f64 / start.elapsed().as_secs_f64())
}
