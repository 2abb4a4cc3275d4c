//! `make bench`: figures for RTDS on this machine, printed as a table and
//! written to `target/bench.json`. Not part of `make test`: it measures, it
//! does not assert.

use rtds::config::{Retention, ScriptConfig, ScriptLimits, StorageConfig};
use rtds::model::Sample;
use rtds::model::{Origin, Status, TagState, TagTable, Value};
use rtds::script::ScriptHost;
use rtds::script::schedule::Schedule;
use rtds::storage::archive::ArchivePolicy;
use rtds::storage::{Storage, TagInfo};
use std::time::{Duration, Instant};

struct Figure {
    key: &'static str,
    label: String,
    value: f64,
    unit: &'static str,
}

fn main() {
    let mut figures = Vec::new();
    script_cost(&mut figures);
    archive_throughput(&mut figures);
    purge_cost(&mut figures);

    println!("\n{:<58} {:>14}  unit", "figure", "value");
    for f in &figures {
        println!("{:<58} {:>14.3}  {}", f.label, f.value, f.unit);
    }
    let json: Vec<String> = figures
        .iter()
        .map(|f| {
            format!(
                "  \"{}\": {{\"value\": {}, \"unit\": \"{}\"}}",
                f.key, f.value, f.unit
            )
        })
        .collect();
    let text = format!("{{\n{}\n}}\n", json.join(",\n"));
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench.json");
    std::fs::write(&path, text).expect("write target/bench.json");
    println!("\nwritten to {}", path.display());
}

/// Cost of one run of a script that reads 10,000 device tags and sets
/// 10,000 calculated tags, as a plant's unpack-and-scale script would.
fn script_cost(figures: &mut Vec<Figure>) {
    const N: usize = 10_000;
    let dir = std::env::temp_dir().join(format!("rtds-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("touch10k.rhai");
    std::fs::write(
        &file,
        format!(
            "for i in 0..{N} {{\n    let v = server.get_value(\"T\" + i);\n    server.set_value(\"C\" + i, v * 2.0);\n}}\n"
        ),
    )
    .unwrap();
    let cfg = ScriptConfig {
        name: "touch10k".into(),
        file,
        schedule: Schedule::EveryCycle,
        max_operations: ScriptLimits::default().max_operations,
        max_time: Duration::from_secs(60),
    };
    let mut host =
        ScriptHost::new(&[cfg], &ScriptLimits::default(), Duration::from_secs(1)).unwrap();
    let mut table = TagTable::default();
    let now = chrono::Utc::now();
    for i in 0..N {
        let origin = Origin::Device {
            connector: 0,
            local: i,
            writable: false,
        };
        let state = TagState {
            value: Some(Value::Float(i as f64)),
            status: Status::GOOD,
            ts: now,
        };
        table.add(format!("T{i}"), origin, state);
    }
    // The first run creates the 10,000 calculated tags; time the steady state.
    let out = host.run_due(&mut table, Instant::now(), now);
    assert!(out.errors.is_empty(), "{:?}", out.errors);
    let runs = 20;
    let t0 = Instant::now();
    for _ in 0..runs {
        let out = host.run_due(&mut table, Instant::now(), chrono::Utc::now());
        assert_eq!(out.samples.len(), N);
    }
    let per_run = t0.elapsed().as_secs_f64() * 1000.0 / f64::from(runs);
    figures.push(Figure {
        key: "script_10k_tags_ms",
        label: "script touching 10,000 tags (get + set each), per run".into(),
        value: per_run,
        unit: "ms",
    });
    let _ = std::fs::remove_dir_all(&dir);
}

fn bench_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("rtds-bench-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn storage_config(path: &std::path::Path) -> StorageConfig {
    // The defaults a user gets: rollback journal, synchronous=full.
    StorageConfig {
        path: path.to_path_buf(),
        journal_mode: "delete".into(),
        synchronous: "full".into(),
        busy_timeout: Duration::from_secs(5),
        archive: ArchivePolicy::default(),
        retention: Retention::default(),
    }
}

fn tag_infos(n: usize) -> Vec<TagInfo> {
    (0..n)
        .map(|i| TagInfo {
            name: format!("T{i}"),
            source: "bench".into(),
            address: String::new(),
            data_type: "float".into(),
            writable: false,
            description: String::new(),
            unit: String::new(),
            policy: ArchivePolicy::default(),
        })
        .collect()
}

fn cycle(n: usize, k: usize) -> Vec<Sample> {
    let ts = chrono::Utc::now();
    (0..n)
        .map(|i| Sample {
            tag: i,
            value: Some(Value::Float((k * n + i) as f64)),
            status: Status::GOOD,
            ts,
        })
        .collect()
}

/// Rows/s into the archive when every one of 10,000 tags changes every
/// cycle, one transaction per cycle, against a raw rusqlite insert of the
/// same rows in the same number of transactions (the disk's ceiling).
fn archive_throughput(figures: &mut Vec<Figure>) {
    const TAGS: usize = 10_000;
    const CYCLES: usize = 30;
    let dir = bench_dir("archive");
    let path = dir.join("rtds.db");
    let storage = Storage::start(&storage_config(&path)).unwrap();
    storage.tags(0, tag_infos(TAGS));
    let cycles: Vec<Vec<Sample>> = (0..CYCLES).map(|k| cycle(TAGS, k)).collect();
    let t0 = Instant::now();
    for c in cycles {
        storage.cycle(c);
    }
    let stats = storage.close();
    let rtds_secs = t0.elapsed().as_secs_f64();
    let rows = (TAGS * CYCLES) as f64;
    assert!(stats.archived >= rows as u64);

    let raw_path = dir.join("raw.db");
    let conn = rusqlite::Connection::open(&raw_path).unwrap();
    conn.execute_batch(
        "PRAGMA journal_mode=delete; PRAGMA synchronous=full;
         CREATE TABLE archive (id INTEGER PRIMARY KEY AUTOINCREMENT, tag_id INTEGER NOT NULL, value, status INTEGER NOT NULL, ts TEXT NOT NULL);
         CREATE INDEX archive_ts ON archive(ts); CREATE INDEX archive_tag_ts ON archive(tag_id, ts);",
    )
    .unwrap();
    // Storage merges cycles that queue while it writes; give the raw insert
    // the same number of transactions it used.
    let commits = stats.commits.max(1) as usize;
    let per_tx = (TAGS * CYCLES).div_ceil(commits);
    let ts = rtds::model::format_ts(&chrono::Utc::now());
    let t0 = Instant::now();
    for chunk in (0..TAGS * CYCLES).collect::<Vec<_>>().chunks(per_tx) {
        let tx = conn.unchecked_transaction().unwrap();
        {
            let mut st = tx
                .prepare_cached(
                    "INSERT INTO archive (tag_id, value, status, ts) VALUES (?1, ?2, 0, ?3)",
                )
                .unwrap();
            for &n in chunk {
                st.execute(rusqlite::params![(n % TAGS) as i64, n as f64, ts])
                    .unwrap();
            }
        }
        tx.commit().unwrap();
    }
    let raw_secs = t0.elapsed().as_secs_f64();
    figures.push(Figure {
        key: "archive_rows_per_s",
        label: format!("archive rows/s, {TAGS} tags changing every cycle (+ current)"),
        value: rows / rtds_secs,
        unit: "rows/s",
    });
    figures.push(Figure {
        key: "raw_insert_rows_per_s",
        label: format!("raw rusqlite insert, same rows in the same {commits} transactions"),
        value: rows / raw_secs,
        unit: "rows/s",
    });
    figures.push(Figure {
        key: "archive_vs_raw_ratio",
        label: "RTDS archive / raw insert".into(),
        value: raw_secs / rtds_secs,
        unit: "ratio",
    });
    let _ = std::fs::remove_dir_all(&dir);
}

/// Time to purge 1,000,000 acknowledged rows in `purge_batch` steps, and the
/// longest a commit waits behind one step.
fn purge_cost(figures: &mut Vec<Figure>) {
    const TAGS: usize = 10_000;
    const CYCLES: usize = 100;
    let dir = bench_dir("purge");
    let path = dir.join("rtds.db");
    let cfg = storage_config(&path);
    let storage = Storage::start(&cfg).unwrap();
    storage.tags(0, tag_infos(TAGS));
    for k in 0..CYCLES {
        storage.cycle(cycle(TAGS, k));
    }
    storage.close();
    let count = |c: &rusqlite::Connection| -> i64 {
        c.query_row("SELECT count(*) FROM archive WHERE tag_id IN (SELECT id FROM tags WHERE source = 'bench')", [], |r| r.get(0))
            .unwrap()
    };
    let reader = rusqlite::Connection::open(&path).unwrap();
    reader.busy_timeout(Duration::from_secs(30)).unwrap();
    let before = count(&reader);
    let storage = Storage::start(&cfg).unwrap();
    storage.tags(0, tag_infos(TAGS));
    let ack = rtds::model::format_ts(&chrono::Utc::now());
    reader
        .execute("INSERT INTO ack (ts) VALUES (?1)", [&ack])
        .unwrap();
    let t0 = Instant::now();
    while count(&reader) > 0 {
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            t0.elapsed() < Duration::from_secs(600),
            "purge did not finish"
        );
    }
    let secs = t0.elapsed().as_secs_f64();
    storage.close();
    let batch = f64::from(Retention::default().purge_batch);
    figures.push(Figure {
        key: "purge_1m_rows_s",
        label: format!("purge of {before} acknowledged rows"),
        value: secs,
        unit: "s",
    });
    figures.push(Figure {
        key: "purge_step_ms",
        label: format!("one purge step ({batch} rows), mean"),
        value: secs * 1000.0 / (before as f64 / batch),
        unit: "ms",
    });
    let _ = std::fs::remove_dir_all(&dir);
}
