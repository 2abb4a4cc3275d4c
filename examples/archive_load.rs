//! A fixed archive workload for `make bench`'s instruction counts (run under
//! valgrind's callgrind, which is why it is a program of its own).
//!
//! `archive_load rtds DIR TAGS CYCLES CURRENT_MS`: storage as RTDS runs it
//! (default settings, `current` written every CURRENT_MS), fed CYCLES
//! cycles in which every one of TAGS float tags changes, each sample with a
//! time stamp of its own (the worst case: a poll stamps once per reply).
//!
//! `archive_load raw DIR TAGS CYCLES`: the floor, the same rows inserted by
//! a prepared rusqlite statement into a table of the segment's shape, in
//! transactions of the size storage uses, their time stamps' text made
//! beforehand on the main thread (so the floor is SQLite's work alone).
//!
//! Both do the work on a thread of its own (storage's, or the raw insert's)
//! so the bench reads that thread's count apart from the feeding.

use rtds::model::{Sample, Status, Value, format_ts};
use rtds::storage::archive::ArchivePolicy;
use rtds::storage::{Retention, SegmentLimits, Storage, StorageConfig, TagInfo};
use std::path::Path;
use std::time::Duration;

fn samples(tags: usize, cycles: usize) -> Vec<Vec<Sample>> {
    let base = chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
        .expect("a fixed start")
        .with_timezone(&chrono::Utc);
    (0..cycles)
        .map(|k| {
            (0..tags)
                .map(|i| Sample {
                    tag: i,
                    value: Some(Value::Float((k * tags + i) as f64 * 0.5)),
                    status: Status::GOOD,
                    ts: base
                        + chrono::Duration::seconds(k as i64)
                        + chrono::Duration::microseconds(i as i64),
                })
                .collect()
        })
        .collect()
}

fn rtds(dir: &Path, tags: usize, cycles: usize, current_ms: u64) {
    let cfg = StorageConfig {
        path: dir.join("rtds.db"),
        outbox: dir.join("outbox"),
        staging: dir.join("staging"),
        segment: SegmentLimits::default(),
        current_interval: Duration::from_millis(current_ms),
        journal_mode: "wal".into(),
        synchronous: "full".into(),
        cache_kb: 256,
        busy_timeout: Duration::from_secs(5),
        archive: ArchivePolicy::default(),
        retention: Retention::default(),
    };
    let input = samples(tags, cycles);
    let mut storage = Storage::start(&cfg).expect("storage starts");
    storage.tags(
        0,
        (0..tags).map(|i| TagInfo {
            name: format!("T{i}").into(),
            source: "bench".into(),
            address: "".into(),
            data_type: "float",
            writable: false,
            description: "".into(),
            unit: "".into(),
            policy: ArchivePolicy::default(),
        }),
    );
    for c in input {
        storage.samples(c);
        storage.flush();
    }
    let stats = storage.close();
    println!("{} {}", stats.archived, stats.commits);
}

fn raw(dir: &Path, tags: usize, cycles: usize) {
    let input: Vec<Vec<(usize, f64, u16, String)>> = samples(tags, cycles)
        .into_iter()
        .map(|c| {
            c.into_iter()
                .map(|s| {
                    let v = match s.value {
                        Some(Value::Float(f)) => f,
                        _ => 0.0,
                    };
                    (s.tag, v, s.status.0, format_ts(&s.ts))
                })
                .collect()
        })
        .collect();
    let path = dir.join("raw.db");
    std::thread::spawn(move || {
        let conn = rusqlite::Connection::open(&path).expect("open");
        conn.execute_batch(
            "PRAGMA journal_mode=delete; PRAGMA synchronous=full;
             CREATE TABLE archive (id INTEGER PRIMARY KEY, tag_id INTEGER NOT NULL, value, status INTEGER NOT NULL, ts TEXT NOT NULL);",
        )
        .expect("schema");
        let mut id = 0i64;
        for c in &input {
            let tx = conn.unchecked_transaction().expect("begin");
            {
                let mut st = tx
                    .prepare_cached(
                        "INSERT INTO archive (id, tag_id, value, status, ts) VALUES (?1, ?2, ?3, ?4, ?5)",
                    )
                    .expect("prepare");
                for (tag, v, status, ts) in c {
                    id += 1;
                    st.execute(rusqlite::params![id, *tag as i64, v, status, ts])
                        .expect("insert");
                }
            }
            tx.commit().expect("commit");
        }
        println!("{id} {}", input.len());
    })
    .join()
    .expect("the insert thread");
}

fn main() {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let n = |i: usize| -> usize { a.get(i).and_then(|v| v.parse().ok()).unwrap_or(0) };
    let dir = Path::new(a.get(1).map_or(".", String::as_str));
    match a.first().map(String::as_str) {
        Some("rtds") => rtds(dir, n(2), n(3), n(4).max(1) as u64),
        Some("raw") => raw(dir, n(2), n(3)),
        _ => {
            eprintln!("usage: archive_load rtds DIR TAGS CYCLES CURRENT_MS | raw DIR TAGS CYCLES");
            std::process::exit(2);
        }
    }
}
