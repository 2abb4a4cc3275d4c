//! The Historian's buffer end to end: archive rules, segments,
//! acknowledgements by file, table and command line, limits, a reader
//! holding files, full disks, deleted and unwritable files, and `kill -9`.

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

/// Plays one (value, status) per cycle into tag `Level`, then holds the last.
fn sequence_script(seq: &[(f64, u16)]) -> String {
    let items: Vec<String> = seq.iter().map(|(v, s)| format!("[{v:?}, {s}]")).collect();
    format!(
        "let seq = [{}];\nlet i = state.i ?? 0;\nif i < seq.len() {{\n    let t = server.get(\"Level\");\n    t.value = seq[i][0];\n    t.status = seq[i][1];\n    server.set(t);\n    state.i = i + 1;\n}}\nserver.set_value(\"Done\", i >= seq.len());\n",
        items.join(", ")
    )
}

/// Storage's settings for a test that runs the storage thread in process,
/// in `dir`, with `current` written every `current_interval`.
fn in_process_storage(dir: &TempDir, current_interval: Duration) -> rtds::storage::StorageConfig {
    use rtds::storage::{Retention, SegmentLimits, StorageConfig, archive::ArchivePolicy};
    StorageConfig {
        path: dir.path("rtds.db"),
        outbox: dir.path("outbox"),
        staging: dir.path("staging"),
        segment: SegmentLimits::default(),
        current_interval,
        journal_mode: "wal".into(),
        synchronous: "normal".into(),
        cache_kb: 256,
        busy_timeout: Duration::from_secs(5),
        archive: ArchivePolicy::default(),
        retention: Retention::default(),
    }
}

/// An int tag's description, as a connector registers it.
fn int_tag(name: &str, source: &str, address: &str) -> rtds::storage::TagInfo {
    rtds::storage::TagInfo {
        name: name.into(),
        source: source.into(),
        address: address.into(),
        data_type: "int",
        writable: false,
        description: "".into(),
        unit: "".into(),
        policy: rtds::storage::archive::ArchivePolicy::default(),
    }
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
    let ts: Vec<String> = archive_rows(&db)
        .into_iter()
        .filter(|r| r.name == "Steady")
        .map(|r| r.ts)
        .collect();
    assert!(ts.windows(2).all(|w| w[0] < w[1]), "{ts:?}");
    assert_eq!(
        archive(&db, "Broken"),
        vec![(Sql::Integer(7), 2)],
        "bad: archived once"
    );
}

/// The published segment files of a test's outbox as (first, last) ids,
/// parsed from their names with a regex-free reading of the documented
/// pattern `seg-<19 digits>-<19 digits>.sqlite`.
fn published(dir: &TempDir) -> Vec<(i64, i64)> {
    let mut out: Vec<(i64, i64)> = std::fs::read_dir(dir.path("outbox"))
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    let n = e.file_name().to_string_lossy().into_owned();
                    let ids = n.strip_prefix("seg-")?.strip_suffix(".sqlite")?;
                    let (a, b) = ids.split_once('-')?;
                    if a.len() != 19 || b.len() != 19 {
                        return None;
                    }
                    Some((a.parse::<i64>().ok()?, b.parse::<i64>().ok()?))
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// Writes the Historian's ack file the documented way: a temporary name,
/// then a rename into place.
fn write_ack_file(dir: &TempDir, text: &str) {
    let tmp = dir.path("outbox/ack.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.path("outbox/ack.txt")).unwrap();
}

fn ack_answer(dir: &TempDir, request: &str) -> Option<String> {
    let text = std::fs::read_to_string(dir.path("outbox/ack-result.txt")).ok()?;
    text.contains(&format!("request: {request}\n")).then(|| {
        text.lines()
            .find_map(|l| l.strip_prefix("result: ").map(str::to_string))
    })?
}

fn wait_answer(dir: &TempDir, request: &str) -> String {
    let mut answer = None;
    wait_for(
        &format!("answer to {request}"),
        Duration::from_secs(10),
        || {
            answer = ack_answer(dir, request);
            answer.is_some()
        },
    );
    answer.unwrap()
}

/// Checks that stored ids are exactly 1..=n, each in one file only.
fn assert_ids_contiguous(db: &Path) -> i64 {
    let mut ids = Vec::new();
    for f in segment_files(db) {
        if !f.exists() {
            continue;
        }
        let c = rusqlite::Connection::open(&f).unwrap();
        let mut st = c.prepare("SELECT id FROM archive ORDER BY id").unwrap();
        ids.extend(
            st.query_map([], |r| r.get::<_, i64>(0))
                .unwrap()
                .map(Result::unwrap),
        );
    }
    ids.sort();
    let n = ids.len() as i64;
    assert_eq!(
        ids,
        (1..=n).collect::<Vec<_>>(),
        "ids 1..{n}, no gap, no duplicate"
    );
    n
}

#[test]
fn segments_are_published_whole_and_acknowledged_by_file_table_and_cli() {
    let dir = TempDir::new("ack");
    let cfg = config(&dir, 20, &[], &[("ticks", TICKS)]);
    with_storage(&cfg, "segment: (max_age_s: 0.3)");
    let mut rtds = Rtds::start(&cfg);
    let db = dir.path("rtds.db");
    wait_for("four segments", Duration::from_secs(20), || {
        published(&dir).len() >= 4
    });
    let segs = published(&dir);
    // Names sort in id order and the ranges follow each other.
    for w in segs.windows(2) {
        assert_eq!(w[1].0, w[0].1 + 1, "{segs:?}");
    }
    assert_eq!(segs[0].0, 1);
    // Every published file is a complete SQLite file of the documented
    // schema, opened the way a reader over a share opens it.
    for (a, b) in &segs {
        let f = dir.path(&format!("outbox/seg-{a:019}-{b:019}.sqlite"));
        let c = rusqlite::Connection::open_with_flags(
            format!("file:{}?mode=ro&immutable=1", f.display()),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_URI,
        )
        .unwrap();
        let v: i64 = c
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, 2);
        let (min, max, n, named): (i64, i64, i64, i64) = c
            .query_row(
                "SELECT min(id), max(id), count(*), (SELECT count(*) FROM archive_named) FROM archive",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .unwrap();
        assert_eq!((min, max, n, named), (*a, *b, b - a + 1, b - a + 1));
        let meta: i64 = c
            .query_row("SELECT value FROM segment WHERE key = 'last_id'", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(meta, *b);
    }

    // The ack file: up to the second segment's last id.
    let n2 = segs[1].1;
    write_ack_file(&dir, &format!("id={n2}\n"));
    let answer = wait_answer(&dir, &format!("id={n2}"));
    assert!(answer.starts_with("accepted"), "{answer}");
    assert!(answer.contains("2 segments"), "{answer}");
    wait_for(
        "acknowledged segments deleted",
        Duration::from_secs(5),
        || published(&dir).first().map(|s| s.0) == Some(n2 + 1),
    );
    // Unacknowledged ones are kept.
    assert!(published(&dir).contains(&segs[2]));

    // Beyond what was published: refused, nothing deleted.
    write_ack_file(&dir, "id=999999999\n");
    let answer = wait_answer(&dir, "id=999999999");
    assert!(
        answer.starts_with("refused") && answer.contains("beyond"),
        "{answer}"
    );
    assert!(published(&dir).contains(&segs[2]));

    // The command line on the gateway: backwards refused, forward accepted.
    let (code, out, err) = rtds_cmd(&["ack", &(n2 - 1).to_string()], &cfg);
    assert_eq!(code, Some(2), "{out}{err}");
    assert!(
        out.contains("refused: id") && out.contains("goes back"),
        "{out}"
    );
    let n3 = segs[2].1;
    let (code, out, err) = rtds_cmd(&["ack", &n3.to_string()], &cfg);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("accepted"), "{out}");
    assert!(!published(&dir).contains(&segs[2]));
    let (code, out, _) = rtds_cmd(&["ack", "2999-01-01 00:00:00"], &cfg);
    assert_eq!(code, Some(2));
    assert!(out.contains("in the future"), "{out}");
    let (code, _, err) = rtds_cmd(&["ack", "yesterday"], &cfg);
    assert_eq!(code, Some(2));
    assert!(err.contains("not a time stamp"), "{err}");
    // A time stamp: everything published before it was written and older
    // than it goes; what is published afterwards stays.
    std::thread::sleep(Duration::from_millis(400));
    let before: Vec<(i64, i64)> = published(&dir);
    let now = rtds::model::format_ts(&chrono::Utc::now());
    let (code, out, err) = rtds_cmd(&["ack", &now], &cfg);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("accepted: rows up to id"), "{out}");
    let after = published(&dir);
    let last_before = before.last().unwrap().1;
    assert!(
        before.iter().all(|s| !after.contains(s)),
        "segments published before the ack was written are gone: {before:?} -> {after:?}"
    );
    let (st, _) = rtds.stop();
    assert!(st.success());
    let acked = current(&db, "_storage._acked_id")
        .map(|c| int(&c.0))
        .unwrap();
    assert!(acked >= last_before, "{acked} < {last_before}");
    assert!(matches!(current(&db, "_storage._purged_rows"), Some((Sql::Integer(n), 0)) if n >= n3));
    // What is left still starts right after the acknowledgement.
    assert!(published(&dir).iter().all(|s| s.0 > acked));
}

#[test]
fn every_acknowledgement_gets_a_bounded_answer_whatever_the_file_holds() {
    let dir = TempDir::new("ack-any");
    let cfg = config(&dir, 20, &[], &[("ticks", TICKS)]);
    with_storage(&cfg, "segment: (max_age_s: 0.3)");
    let mut rtds = Rtds::start(&cfg);
    wait_for("two segments", Duration::from_secs(20), || {
        published(&dir).len() >= 2
    });
    let first = published(&dir)[0].1;
    let answer_file = dir.path("outbox/ack-result.txt");
    // Each request renamed in (the documented way); RTDS's answer read
    // back after the previous one is removed, so each wait sees a new one.
    let ask = |bytes: &[u8]| -> String {
        let _ = std::fs::remove_file(&answer_file);
        let tmp = dir.path("outbox/ack.tmp");
        std::fs::write(&tmp, bytes).unwrap();
        std::fs::rename(&tmp, dir.path("outbox/ack.txt")).unwrap();
        let mut text = String::new();
        wait_for("an answer", Duration::from_secs(10), || {
            text = std::fs::read_to_string(&answer_file).unwrap_or_default();
            text.contains("answered_at: ")
        });
        text
    };
    let result = |text: &str| -> String {
        text.lines()
            .find_map(|l| l.strip_prefix("result: "))
            .unwrap_or_default()
            .to_string()
    };
    // Not UTF-8.
    let a = ask(b"id=\xff\xfe12\n");
    assert!(result(&a).starts_with("refused: not UTF-8 text"), "{a}");
    // 10 MB: refused by its size, quoted by its beginning only.
    let log_before = rtds.log_text().len();
    let huge = format!("id={first}\n{}", "#".repeat(10 * 1024 * 1024));
    let a = ask(huge.as_bytes());
    assert!(
        result(&a).starts_with(&format!("refused: the file has {} bytes", huge.len())),
        "{a}"
    );
    assert!(a.len() < 1024, "the answer is {} bytes", a.len());
    // The same request renamed in twice: answered twice, accepted twice.
    let a = ask(format!("id={first}\n").as_bytes());
    assert!(result(&a).starts_with("accepted"), "{a}");
    let a = ask(format!("id={first}\n").as_bytes());
    assert!(result(&a).starts_with("accepted"), "{a}");
    // id= and ts= together: ambiguous.
    let a = ask(format!("id={first}\nts=2026-01-01T00:00:00Z\n").as_bytes());
    assert_eq!(
        result(&a),
        "refused: 2 requests in one file; write exactly one (id=N or ts=TIME)",
        "{a}"
    );
    // A long line: quoted cut, with the size.
    let long = format!("id={}\n", "9".repeat(5000));
    let a = ask(long.as_bytes());
    assert!(a.len() < 1024 && a.contains("… (5004 bytes)"), "{a}");
    // Written in place (no rename) with new content: a new request.
    let _ = std::fs::remove_file(&answer_file);
    std::fs::write(dir.path("outbox/ack.txt"), format!("id={first}\n")).unwrap();
    wait_for(
        "the in-place request answered",
        Duration::from_secs(10),
        || std::fs::read_to_string(&answer_file).is_ok_and(|t| t.contains("result: accepted")),
    );
    // An ack.txt that cannot be read (a directory): answered too.
    std::fs::remove_file(dir.path("outbox/ack.txt")).unwrap();
    let _ = std::fs::remove_file(&answer_file);
    std::fs::create_dir(dir.path("outbox/ack.txt")).unwrap();
    wait_for(
        "the unreadable one answered",
        Duration::from_secs(10),
        || {
            std::fs::read_to_string(&answer_file)
                .is_ok_and(|t| t.contains("result: refused: cannot read it"))
        },
    );
    let (st, _) = rtds.stop();
    assert!(st.success());
    // The log grew by lines, not by megabytes.
    let grown = rtds.log_text().len() - log_before;
    assert!(grown < 16 * 1024, "the log grew {grown} bytes");
}

#[test]
fn a_retention_limit_drops_whole_oldest_segments_with_one_summary() {
    let dir = TempDir::new("limit");
    let cfg = config(&dir, 10, &[], &[("ticks", TICKS)]);
    with_storage(&cfg, "segment: (max_rows: 20), retention: (max_rows: 100)");
    let mut rtds = Rtds::start(&cfg);
    let db = dir.path("rtds.db");
    wait_for(
        "rows dropped",
        Duration::from_secs(20),
        || matches!(current(&db, "_storage._dropped_rows"), Some((Sql::Integer(n), 0)) if n >= 100),
    );
    let (st, _) = rtds.stop();
    assert!(st.success());
    let rows = archive_rows(&db);
    // At most the limit plus the open segment (segments of 20 rows).
    assert!(rows.len() <= 100 + 20, "{} rows", rows.len());
    assert!(
        rows[0].id > 100,
        "the oldest went first (min id {})",
        rows[0].id
    );
    let segs = published(&dir);
    assert!(segs.iter().all(|(a, b)| b - a < 20), "{segs:?}");
    let log = rtds.log_text();
    assert_eq!(
        log.matches("retention limit reached").count(),
        1,
        "one line when it starts: {log}"
    );
    // One summary, with the count the diagnostic tag says.
    let dropped = match current(&db, "_storage._dropped_rows") {
        Some((Sql::Integer(n), _)) => n,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        log.matches("dropped unacknowledged").count(),
        1,
        "one summary for the whole incident: {log}"
    );
    let summary = log
        .lines()
        .find(|l| l.contains("dropped unacknowledged"))
        .expect("summary line");
    let counted: i64 = summary
        .split("dropped unacknowledged")
        .nth(1)
        .and_then(|r| r.split_whitespace().find_map(|w| w.parse().ok()))
        .unwrap();
    assert!(counted >= dropped, "{summary} vs {dropped}");
    // The first id still stored follows the last dropped one, and the
    // summary names the whole range.
    assert_eq!(rows[0].id, counted + 1, "{summary}");
    assert!(summary.contains(&format!("(ids 1-{counted})")), "{summary}");
}

#[test]
fn the_size_limit_keeps_segments_near_max_mb() {
    let dir = TempDir::new("maxmb");
    // 500 changing calculated tags every 20 ms: about 25,000 rows/s.
    let script = r#"
        let n = (state.n ?? 0) + 1;
        state.n = n;
        for i in 0..500 { server.set_value("L" + i, n * 1000 + i); }
    "#;
    let cfg = config(&dir, 20, &[], &[("load", script)]);
    with_storage(&cfg, "segment: (max_mb: 0.25), retention: (max_mb: 2)");
    let mut rtds = Rtds::start(&cfg);
    let db = dir.path("rtds.db");
    wait_for(
        "rows dropped for size",
        Duration::from_secs(60),
        || matches!(current(&db, "_storage._dropped_rows"), Some((Sql::Integer(n), 0)) if n > 0),
    );
    // Let it run on: the files must stay near the limit, not grow.
    std::thread::sleep(Duration::from_secs(3));
    let bytes: u64 = segment_files(&db)
        .iter()
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.len())
        .sum();
    let (st, _) = rtds.stop();
    assert!(st.success());
    assert!(
        bytes < 3 * 1024 * 1024,
        "{bytes} bytes of segments with max_mb 2"
    );
    assert!(rtds.log_text().contains("retention limit reached"));
}

#[test]
fn readers_holding_the_live_database_and_a_segment_stall_nothing() {
    let dir = TempDir::new("reader");
    let cfg = config(&dir, 50, &[], &[("ticks", TICKS)]);
    with_storage(
        &cfg,
        "busy_timeout_ms: 500, segment: (max_age_s: 0.5), current_interval_ms: 100",
    );
    let mut rtds = Rtds::start(&cfg);
    let db = dir.path("rtds.db");
    wait_for("a published segment", Duration::from_secs(15), || {
        ticks(&db) >= 5 && !published(&dir).is_empty()
    });
    // An operator's read transaction on the live database, and a reader
    // sitting on a published segment, both for 10 s.
    let reader = rusqlite::Connection::open(&db).unwrap();
    reader.execute_batch("BEGIN").unwrap();
    let held_at: i64 = reader
        .query_row("SELECT count(*) FROM current", [], |r| r.get(0))
        .unwrap();
    assert!(held_at > 0);
    let (a, b) = published(&dir)[0];
    let seg = rusqlite::Connection::open(dir.path(&format!("outbox/seg-{a:019}-{b:019}.sqlite")))
        .unwrap();
    seg.execute_batch("BEGIN; SELECT count(*) FROM archive;")
        .unwrap();
    let t0 = Instant::now();
    let start_ticks = ticks(&db);
    std::thread::sleep(Duration::from_secs(10));
    // `current` moved on meanwhile (WAL: readers never block the writer).
    assert!(
        ticks(&db) >= start_ticks + 50,
        "{} -> {}",
        start_ticks,
        ticks(&db)
    );
    reader.execute_batch("COMMIT").unwrap();
    seg.execute_batch("COMMIT").unwrap();
    let blocked_for = t0.elapsed();
    let (st, _) = rtds.stop();
    assert!(st.success());
    let runs = tick_runs(&db);
    assert_eq!(runs.len(), 1);
    assert_eq!(
        runs[0],
        cycles_logged(&rtds.log_text()),
        "every cycle stored"
    );
    assert!(
        runs[0] as f64 >= blocked_for.as_secs_f64() / 0.05 * 0.5,
        "{runs:?}"
    );
}

#[test]
fn kill_9_twenty_times_loses_no_committed_row() {
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
    // Short segments, so kills land during closes and publications too.
    with_storage(&cfg, "synchronous: \"normal\", segment: (max_age_s: 0.15)");
    let db = dir.path("rtds.db");
    let runs = 20;
    for i in 0..runs {
        let mut rtds = Rtds::start(&cfg);
        // Deterministic spread of kill moments between 150 and 850 ms.
        let wait = 150 + (i * 337) % 700;
        std::thread::sleep(Duration::from_millis(wait));
        rtds.proc.signal(libc::SIGKILL);
        rtds.proc
            .wait_timeout(Duration::from_secs(5))
            .expect("killed");
        // Read-write, as the next start opens them: a killed writer may
        // leave a hot journal that only a writer may roll back.
        for f in std::iter::once(db.clone()).chain(segment_files(&db)) {
            if !f.exists() {
                continue;
            }
            let c = rusqlite::Connection::open(&f).unwrap();
            let ok: String = c
                .query_row("PRAGMA integrity_check", [], |r| r.get(0))
                .unwrap();
            assert_eq!(ok, "ok", "{} after kill {i}", f.display());
        }
        // No temporary file is ever mistaken for a segment.
        assert!(published(&dir).iter().all(|(a, b)| a <= b));
    }
    // Each run counts Ticks from 1; what a run committed is a gapless 1..k.
    let stored = tick_runs(&db);
    assert!(
        stored.len() >= runs as usize - 2,
        "{} runs stored of {runs}",
        stored.len()
    );
    // Ids across all files: 1..n, none twice, none missing.
    let n = assert_ids_contiguous(&db);
    assert!(n > 100, "{n} rows");
}

#[test]
fn a_removed_tag_gets_a_final_removed_row() {
    let dir = TempDir::new("removed");
    let sim = Sim::start(&[]);
    let both = r#"                (name: "Pattern", address: "hr:200"),
                (name: "Old", address: "hr:201", type: "i16"),"#;
    let cfg = config(&dir, 100, &[("plc1", sim.port, "", both)], &[]);
    let mut rtds = Rtds::start(&cfg);
    let db = dir.path("rtds.db");
    wait_for("Old read", Duration::from_secs(15), || {
        status_of(&db, "Old") == Some(0)
    });
    // Rename Old to New: a removal plus a new tag.
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("\"Old\"", "\"New\"");
    std::fs::write(&cfg, text).unwrap();
    rtds.proc.signal(libc::SIGHUP);
    wait_for("New read", Duration::from_secs(15), || {
        status_of(&db, "New") == Some(0)
    });
    let (st, _) = rtds.stop();
    assert!(st.success());
    let old = archive(&db, "Old");
    let new = archive(&db, "New");
    assert_eq!(old.len(), 2, "{old:?}");
    // The simulator's register map holds -2 at hr:201 (i16).
    assert_eq!(old[0], (Sql::Integer(-2), 0));
    assert_eq!(
        old[1],
        (Sql::Integer(-2), 12),
        "final row: last value, removed"
    );
    assert_eq!(status_of(&db, "Old"), Some(12));
    assert_eq!(new, vec![(Sql::Integer(-2), 0)]);
}

/// `current` is rewritten for a tag when its value or status changed; a tag
/// read again with the same value and status gets its new time every 10 s
/// and at the stop, not at every flush (a static plant's rows are not
/// rewritten every second for their time alone). In process, against the
/// storage thread itself; read back with SQLite.
#[test]
fn current_rows_change_with_their_values_and_their_time_at_the_stop() {
    use rtds::model::{Sample, Status, Value, format_ts};
    use rtds::storage::{Storage, TagInfo};
    let dir = TempDir::new("current-changes");
    let db = dir.path("rtds.db");
    let cfg = in_process_storage(&dir, Duration::from_millis(1));
    let info = |name: &str| int_tag(name, "test", "");
    let mut storage = Storage::start(&cfg).unwrap();
    // C is registered without a type, as a script's new tag is: its first
    // value gives it one.
    let untyped = TagInfo {
        data_type: "",
        ..info("C")
    };
    storage.tags(0, vec![info("A"), info("B"), untyped]);
    let t0 = rtds::model::parse_ts("2026-11-28T10:00:00.125Z").unwrap();
    let t1 = rtds::model::parse_ts("2026-11-28T10:00:01.250Z").unwrap();
    let sample = |tag, v, ts| Sample {
        tag,
        value: Some(Value::Int(v)),
        status: Status::GOOD,
        ts,
    };
    let row = |name: &str| -> Option<(i64, String)> {
        common::db(&db)?
            .query_row(
                "SELECT value, ts FROM current WHERE name = ?1",
                [name],
                |r| Ok((r.get::<_, Option<i64>>(0)?.unwrap_or(-1), r.get(1)?)),
            )
            .ok()
    };
    storage.samples(vec![
        sample(0, 1, t0),
        sample(1, 1, t0),
        Sample {
            tag: 2,
            value: Some(Value::Float(2.5)),
            status: Status::GOOD,
            ts: t0,
        },
    ]);
    wait_for("both rows written", Duration::from_secs(10), || {
        row("B") == Some((1, format_ts(&t0)))
    });
    storage.samples(vec![sample(0, 1, t1), sample(1, 2, t1)]);
    wait_for("B's change written", Duration::from_secs(10), || {
        row("B") == Some((2, format_ts(&t1)))
    });
    assert_eq!(
        row("A"),
        Some((1, format_ts(&t0))),
        "A changed nothing but its time"
    );
    storage.close();
    assert_eq!(
        row("A"),
        Some((1, format_ts(&t1))),
        "the stop writes every time"
    );
    let c = common::db(&db).unwrap().query_row(
        "SELECT t.type, c.value FROM tags t JOIN current c ON c.name = t.name WHERE t.name = 'C'",
        [],
        |r| Ok((r.get::<_, String>(0)?, r.get::<_, f64>(1)?)),
    );
    assert_eq!(
        c.unwrap(),
        ("float".to_string(), 2.5),
        "C took its first value's type"
    );
}

/// The start waits for storage to know the tags before any connector
/// polls (polls arriving meanwhile were held, and at 10,000 tags and a
/// fast scan dropped): when the wait says so, every tag is in the live
/// database, counted there by SQLite, not by RTDS.
#[test]
fn the_wait_for_registration_returns_when_every_tag_is_in() {
    use rtds::storage::Storage;
    let dir = TempDir::new("registration-wait");
    let db = dir.path("rtds.db");
    let cfg = in_process_storage(&dir, Duration::from_secs(1));
    const N: usize = 20_000;
    let infos = (0..N).map(|i| int_tag(&format!("plc.T{i}"), "plc", &format!("hr:{i}")));
    let mut storage = Storage::start(&cfg).unwrap();
    storage.tags(0, infos.collect::<Vec<_>>());
    assert!(storage.wait_registered(Duration::from_secs(120)));
    let after: i64 = common::db(&db)
        .unwrap()
        .query_row("SELECT count(*) FROM tags WHERE source = 'plc'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(after, N as i64);
    storage.close();
}

/// A live database another connection holds locked: the wait gives up at its
/// bound (the start goes on with a warning rather than hang), and once the
/// lock goes, registration completes and a later wait says so.
#[test]
fn the_wait_for_registration_gives_up_while_the_database_is_locked() {
    use rtds::storage::{Storage, StorageConfig};
    let dir = TempDir::new("registration-locked");
    let db = dir.path("rtds.db");
    let cfg = StorageConfig {
        busy_timeout: Duration::from_millis(100),
        ..in_process_storage(&dir, Duration::from_secs(1))
    };
    let mut storage = Storage::start(&cfg).unwrap();
    let holder = rusqlite::Connection::open(&db).unwrap();
    holder.execute_batch("BEGIN EXCLUSIVE").unwrap();
    storage.tags(0, vec![int_tag("plc.A", "plc", "hr:0")]);
    let t0 = Instant::now();
    assert!(!storage.wait_registered(Duration::from_millis(500)));
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_millis(500) && waited < Duration::from_secs(10),
        "{waited:?}"
    );
    let count = |c: &rusqlite::Connection| -> i64 {
        c.query_row("SELECT count(*) FROM tags WHERE source = 'plc'", [], |r| {
            r.get(0)
        })
        .unwrap()
    };
    assert_eq!(count(&holder), 0);
    holder.execute_batch("COMMIT").unwrap();
    assert!(storage.wait_registered(Duration::from_secs(60)));
    assert_eq!(count(&holder), 1);
    storage.close();
}
