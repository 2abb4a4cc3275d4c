//! The Historian's buffer end to end: archive rules, acknowledgements,
//! limits, a reader holding the file, and `kill -9`.

mod common;

use common::*;
use rusqlite::types::Value as Sql;
use std::path::Path;
use std::time::{Duration, Instant};

/// Adds settings to the `storage: (…)` section of a test config.
fn with_storage(cfg: &Path, extra: &str) {
    let text = std::fs::read_to_string(cfg).unwrap();
    let text = text.replace(
        "storage: (path: \"rtds.db\")",
        &format!("storage: (path: \"rtds.db\", {extra})"),
    );
    std::fs::write(cfg, text).unwrap();
}

fn ticks(db: &Path) -> i64 {
    match current(db, "Ticks") {
        Some((Sql::Integer(n), 0)) => n,
        _ => 0,
    }
}

/// Plays one (value, status) per cycle into tag `Level`, then holds the last.
fn sequence_script(seq: &[(f64, u16)]) -> String {
    let items: Vec<String> = seq.iter().map(|(v, s)| format!("[{v:?}, {s}]")).collect();
    format!(
        "let seq = [{}];\nlet i = state.i ?? 0;\nif i < seq.len() {{\n    let t = server.get(\"Level\");\n    t.value = seq[i][0];\n    t.status = seq[i][1];\n    server.set(t);\n    state.i = i + 1;\n}}\nserver.set_value(\"Done\", i >= seq.len());\n",
        items.join(", ")
    )
}

#[test]
fn deadband_and_status_rules_give_exact_rows() {
    let dir = TempDir::new("deadband");
    let seq = [
        (20.0, 0),
        (20.5, 0), // within 1.0
        (21.0, 0), // exactly 1.0: not more than the deadband
        (21.2, 0), // archived
        (21.0, 0),
        (21.0, 2), // status change: archived
        (25.0, 2), // still bad: nothing
        (25.0, 0), // good again: archived
        (25.5, 0),
        (19.0, 0), // archived
    ];
    let cfg = config(&dir, 50, &[], &[("seq", &sequence_script(&seq))]);
    with_storage(&cfg, "archive: (deadband: 1.0, heartbeat_s: 0)");
    let mut rtds = Rtds::start(&cfg);
    let db = dir.path("rtds.db");
    wait_for("sequence played", Duration::from_secs(15), || {
        current(&db, "Done").map(|c| c.0) == Some(Sql::Integer(1))
    });
    let (st, _) = rtds.stop();
    assert!(st.success());
    let rows: Vec<(f64, i64)> = archive(&db, "Level")
        .into_iter()
        .map(|(v, s)| match v {
            Sql::Real(f) => (f, s),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        rows,
        vec![(20.0, 0), (21.2, 0), (21.0, 2), (25.0, 0), (19.0, 0)]
    );
}

#[test]
fn heartbeats_repeat_good_values_but_not_bad_ones() {
    let dir = TempDir::new("heartbeat");
    // Steady: constant and good. Broken: constant and bad (status 2).
    let script = r#"
        server.set_value("Steady", 5);
        let b = server.get("Broken");
        b.value = 7;
        b.status = 2;
        server.set(b);
    "#;
    let cfg = config(&dir, 100, &[], &[("hb", script)]);
    with_storage(&cfg, "archive: (heartbeat_s: 1)");
    let mut rtds = Rtds::start(&cfg);
    let db = dir.path("rtds.db");
    wait_for("three heartbeats", Duration::from_secs(20), || {
        archive(&db, "Steady").len() >= 4
    });
    let (st, _) = rtds.stop();
    assert!(st.success());
    let steady = archive(&db, "Steady");
    assert!(
        steady.iter().all(|r| r == &(Sql::Integer(5), 0)),
        "{steady:?}"
    );
    // Heartbeat rows carry the time of the heartbeat: distinct, increasing.
    let c = common::db(&db).unwrap();
    let ts: Vec<String> = c
        .prepare("SELECT ts FROM archive_named WHERE name = 'Steady' ORDER BY id")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(ts.windows(2).all(|w| w[0] < w[1]), "{ts:?}");
    assert_eq!(
        archive(&db, "Broken"),
        vec![(Sql::Integer(7), 2)],
        "bad: archived once"
    );
}

#[test]
fn acknowledgements_through_the_table_and_the_cli() {
    let dir = TempDir::new("ack");
    let cfg = config(&dir, 20, &[], &[("ticks", TICKS)]);
    with_storage(&cfg, "retention: (purge_batch: 7)");
    let mut rtds = Rtds::start(&cfg);
    let db = dir.path("rtds.db");
    wait_for("some rows", Duration::from_secs(15), || ticks(&db) >= 30);
    let ts_of = |n: i64| -> String {
        common::db(&db)
            .unwrap()
            .query_row(
                "SELECT ts FROM archive_named WHERE name = 'Ticks' AND value = ?1",
                [n],
                |r| r.get(0),
            )
            .unwrap()
    };
    let (ack10, ack20, ack25) = (ts_of(10), ts_of(20), ts_of(25));
    // The Historian acknowledges up to tick 20's time stamp through the table.
    {
        let w = rusqlite::Connection::open(&db).unwrap();
        w.busy_timeout(Duration::from_secs(10)).unwrap();
        w.execute("INSERT INTO ack (ts) VALUES (?1)", [&ack20])
            .unwrap();
        w.execute("INSERT INTO ack (ts) VALUES ('2999-01-01T00:00:00Z')", [])
            .unwrap();
    }
    let min_tick = |db: &Path| -> i64 {
        common::db(db)
            .unwrap()
            .query_row(
                "SELECT min(value) FROM archive_named WHERE name = 'Ticks'",
                [],
                |r| r.get(0),
            )
            .unwrap()
    };
    wait_for(
        "rows before the ack purged",
        Duration::from_secs(15),
        || min_tick(&db) >= 20,
    );
    let results: Vec<(String, Option<String>)> = common::db(&db)
        .unwrap()
        .prepare("SELECT ts, result FROM ack ORDER BY id")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(results[0].1.as_deref(), Some("accepted"));
    assert!(
        results[1]
            .1
            .as_deref()
            .unwrap()
            .starts_with("refused: 2999-01-01"),
        "{results:?}"
    );
    // Nothing at or after the acknowledged time stamp was touched.
    assert_eq!(min_tick(&db), 20);

    // The command line: backwards and future are refused, forward accepted.
    let (code, _, err) = rtds_cmd(&["ack", &ack10], &cfg);
    assert_eq!(code, Some(2));
    assert!(err.contains("goes back before"), "{err}");
    let (code, _, err) = rtds_cmd(&["ack", "2999-01-01 00:00:00"], &cfg);
    assert_eq!(code, Some(2));
    assert!(err.contains("in the future"), "{err}");

    let (code, out, err) = rtds_cmd(&["ack", &ack25], &cfg);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains(": accepted"), "{out}");
    wait_for("purged to 25", Duration::from_secs(15), || {
        min_tick(&db) >= 25
    });
    let (code, _, err) = rtds_cmd(&["ack", "yesterday"], &cfg);
    assert_eq!(code, Some(2));
    assert!(err.contains("not a time stamp"), "{err}");
    let (st, _) = rtds.stop();
    assert!(st.success());
    assert_eq!(
        current(&db, "_storage._acked_until").map(|c| c.0),
        Some(Sql::Text(ack25.clone()))
    );
    assert!(matches!(current(&db, "_storage._purged_rows"), Some((Sql::Integer(n), 0)) if n >= 24));
}

#[test]
fn the_row_limit_drops_the_oldest_and_counts_them() {
    let dir = TempDir::new("limit");
    let cfg = config(&dir, 10, &[], &[("ticks", TICKS)]);
    with_storage(&cfg, "retention: (max_rows: 100, purge_batch: 50)");
    let mut rtds = Rtds::start(&cfg);
    let db = dir.path("rtds.db");
    wait_for(
        "rows dropped",
        Duration::from_secs(20),
        || matches!(current(&db, "_storage._dropped_rows"), Some((Sql::Integer(n), 0)) if n >= 100),
    );
    let (st, _) = rtds.stop();
    assert!(st.success());
    let c = common::db(&db).unwrap();
    let (rows, min_id): (i64, i64) = c
        .query_row("SELECT count(*), min(id) FROM archive", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    // Within a second's worth of cycles (100 at 10 ms) of the limit.
    assert!(rows <= 100 + 150, "{rows} rows");
    assert!(min_id > 100, "the oldest went first (min id {min_id})");
    assert!(
        rtds.log_text().contains("retention limit reached"),
        "{}",
        rtds.log_text()
    );
}

#[test]
fn a_reader_holding_the_file_for_30_s_loses_nothing() {
    let dir = TempDir::new("reader");
    let cfg = config(&dir, 50, &[], &[("ticks", TICKS)]);
    with_storage(&cfg, "busy_timeout_ms: 500");
    let mut rtds = Rtds::start(&cfg);
    let db = dir.path("rtds.db");
    wait_for("running", Duration::from_secs(15), || ticks(&db) >= 5);
    // A Historian that opens a read transaction and sits on it.
    let reader = rusqlite::Connection::open(&db).unwrap();
    reader.execute_batch("BEGIN").unwrap();
    let held_at: i64 = reader
        .query_row("SELECT count(*) FROM archive", [], |r| r.get(0))
        .unwrap();
    assert!(held_at > 0);
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(30));
    reader.execute_batch("COMMIT").unwrap();
    drop(reader);
    let blocked_for = t0.elapsed();
    wait_for("storage catches up", Duration::from_secs(15), || {
        rtds.log_text().contains("writing again, queue drained")
    });
    let (st, _) = rtds.stop();
    assert!(st.success());
    let values: Vec<i64> = archive(&db, "Ticks").iter().map(|r| int(&r.0)).collect();
    let n = *values.last().unwrap();
    assert_eq!(
        values,
        (1..=n).collect::<Vec<_>>(),
        "every cycle stored, in order"
    );
    // The cycle kept its pace while the file was held: 50 ms cycles for 30 s.
    assert!(
        n as f64 >= blocked_for.as_secs_f64() / 0.05 * 0.5,
        "{n} cycles"
    );
    let c = common::db(&db).unwrap();
    let max_gap_ms: f64 = c
        .query_row(
            "SELECT max((julianday(b.ts) - julianday(a.ts)) * 86400000.0)
             FROM archive_named a JOIN archive_named b ON b.name = a.name AND b.value = a.value + 1
             WHERE a.name = 'Ticks'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(max_gap_ms < 1000.0, "a cycle stalled for {max_gap_ms} ms");
    assert!(rtds.log_text().contains("archive rows kept in memory"));
}

#[test]
fn kill_9_at_any_moment_leaves_a_valid_database_with_every_committed_row() {
    let dir = TempDir::new("kill9");
    let sim = Sim::start(&[]);
    let tags = r#"                (name: "Counter", address: "hr:0"),
                (name: "Sine", address: "hr:10", type: "f32"),
                (name: "Block", address: "hr:200", count: 18),"#;
    let cfg = config(
        &dir,
        10,
        &[("plc1", sim.port, "", tags)],
        &[("ticks", TICKS)],
    );
    with_storage(&cfg, "synchronous: \"normal\"");
    let db = dir.path("rtds.db");
    let mut runs = 0;
    // Deterministic spread of kill moments between 150 and 850 ms.
    for i in 0..10u64 {
        let mut rtds = Rtds::start(&cfg);
        let wait = 150 + (i * 337) % 700;
        std::thread::sleep(Duration::from_millis(wait));
        rtds.proc.signal(libc::SIGKILL);
        rtds.proc
            .wait_timeout(Duration::from_secs(5))
            .expect("killed");
        runs += 1;
        // Read-write, as the next RTDS start opens it: a killed writer leaves
        // a hot journal that only a writer may roll back.
        let c = rusqlite::Connection::open(&db).expect("database exists");
        let ok: String = c
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(ok, "ok", "after kill {i}");
    }
    // Each run counts Ticks from 1; what a run committed is a gapless 1..k.
    let values: Vec<i64> = archive(&db, "Ticks").iter().map(|r| int(&r.0)).collect();
    let mut segments = 0;
    for (i, v) in values.iter().enumerate() {
        if *v == 1 {
            segments += 1;
        } else {
            assert_eq!(
                *v,
                values[i - 1] + 1,
                "gap inside a run at row {i}: {values:?}"
            );
        }
    }
    assert!(segments >= runs - 2, "{segments} runs stored of {runs}");
}

#[test]
fn the_size_limit_keeps_the_file_near_max_mb() {
    let dir = TempDir::new("maxmb");
    // 500 changing calculated tags every 20 ms: about 25,000 rows/s.
    let script = r#"
        let n = (state.n ?? 0) + 1;
        state.n = n;
        for i in 0..500 { server.set_value("L" + i, n * 1000 + i); }
    "#;
    let cfg = config(&dir, 20, &[], &[("load", script)]);
    with_storage(&cfg, "retention: (max_mb: 2, purge_batch: 5000)");
    let mut rtds = Rtds::start(&cfg);
    let db = dir.path("rtds.db");
    wait_for(
        "rows dropped for size",
        Duration::from_secs(60),
        || matches!(current(&db, "_storage._dropped_rows"), Some((Sql::Integer(n), 0)) if n > 0),
    );
    // Let it run on: the file must stay near the limit, not grow.
    std::thread::sleep(Duration::from_secs(3));
    let (st, _) = rtds.stop();
    assert!(st.success());
    let c = common::db(&db).unwrap();
    let used = |q: &str| -> i64 { c.query_row(q, [], |r| r.get(0)).unwrap() };
    let bytes =
        (used("PRAGMA page_count") - used("PRAGMA freelist_count")) * used("PRAGMA page_size");
    assert!(
        bytes < 4 * 1024 * 1024,
        "{bytes} bytes in use with max_mb 2"
    );
    assert!(rtds.log_text().contains("retention limit reached"));
}
