//! Storage under faults: a full disk, a deleted or unwritable live
//! database, an unwritable staging directory at shutdown (the spool), and
//! the Historian's time-stamp acknowledgement racing rows with old time
//! stamps. Every test checks that nothing committed is lost, or that the
//! loss is counted and RTDS exits non-zero.

mod common;

use common::*;
use rusqlite::types::Value as Sql;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A config whose live database, staging and outbox live in `data/`.
fn data_config(dir: &TempDir, cycle_ms: u64, storage: &str, scripts: &[(&str, &str)]) -> PathBuf {
    std::fs::create_dir_all(dir.path("data")).unwrap();
    let cfg = config(dir, cycle_ms, &[], scripts);
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "storage: (path: \"rtds.db\")",
        &format!("storage: (path: \"data/rtds.db\", {storage})"),
    );
    std::fs::write(&cfg, text).unwrap();
    cfg
}

fn wait_log(rtds: &Rtds, what: &str, timeout: Duration) -> Duration {
    let t0 = Instant::now();
    wait_for(&format!("log: {what}"), timeout, || {
        rtds.log_text().contains(what)
    });
    t0.elapsed()
}

fn chmod(mode: &str, p: &Path) {
    assert!(
        Command::new("chmod")
            .arg(mode)
            .arg(p)
            .status()
            .unwrap()
            .success()
    );
}

/// A small tmpfs mounted for the test, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .unwrap()
            .success();
        assert!(ok, "mount tmpfs on {}", at.display());
        Tmpfs(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_then_a_little_space_back_lets_rows_flow_within_seconds() {
    if !is_root() {
        eprintln!("skipped: mounting a small tmpfs needs root (CI runs as root)");
        return;
    }
    let dir = TempDir::new("diskfull");
    let data = dir.path("data");
    std::fs::create_dir_all(&data).unwrap();
    let _fs = Tmpfs::mount(&data, "4m");
    // 40 changing tags and a counter every 20 ms: about 2,000 rows/s.
    let load = r#"
        let n = (state.n ?? 0) + 1;
        state.n = n;
        for i in 0..40 { server.set_value("L" + i, n * 100 + i); }
    "#;
    let cfg = data_config(
        &dir,
        20,
        "segment: (max_age_s: 0.5), current_interval_ms: 200",
        &[("ticks", TICKS), ("load", load)],
    );
    let db = data.join("rtds.db");
    let mut rtds = Rtds::start(&cfg);
    wait_for("running", Duration::from_secs(15), || ticks(&db) >= 10);
    // Fill the file system.
    let filler = data.join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 16 * 1024];
        while f.write_all(&chunk).is_ok() {}
        let _ = f.sync_all();
    }
    wait_log(&rtds, "cannot write archive rows", Duration::from_secs(15));
    // Rows pile up in memory meanwhile.
    std::thread::sleep(Duration::from_secs(2));
    // A little space back: 512 kB.
    let len = std::fs::metadata(&filler).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&filler)
        .unwrap()
        .set_len(len.saturating_sub(512 * 1024))
        .unwrap();
    let took = wait_log(&rtds, "writing again", Duration::from_secs(10));
    eprintln!("rows flowed again {took:?} after 512 kB were freed");
    assert!(took < Duration::from_secs(5), "{took:?}");
    // Free the rest so the rest of the run (and the shutdown) has room.
    std::fs::remove_file(&filler).unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let (st, _) = rtds.stop();
    let log = rtds.log_text();
    assert!(st.success(), "{log}");
    let runs = tick_runs(&db);
    assert_eq!(runs, vec![cycles_logged(&log)], "every cycle stored");
}

#[test]
fn deleted_or_unwritable_files_lose_nothing_and_a_lost_row_means_exit_1() {
    let dir = TempDir::new("unwritable");
    let cfg = data_config(
        &dir,
        20,
        "segment: (max_age_s: 0.3), current_interval_ms: 100",
        &[("ticks", TICKS)],
    );
    let data = dir.path("data");
    let staging = data.join("staging");
    let db = data.join("rtds.db");
    let remove_live = || {
        for ext in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{ext}", db.display()));
        }
    };
    let mut rtds = Rtds::start_unprivileged(&cfg);
    wait_for("running", Duration::from_secs(15), || ticks(&db) >= 5);

    // Deleted while running: recreated, current values come back.
    remove_live();
    wait_log(&rtds, " recreated", Duration::from_secs(10));
    wait_for("current again", Duration::from_secs(10), || ticks(&db) > 5);

    // Deleted while its directory is read-only: cannot be recreated, the
    // archive goes on; writable again: recreated.
    if is_root() {
        chmod("555", &data);
        remove_live();
    } else {
        remove_live();
        chmod("555", &data);
    }
    wait_log(
        &rtds,
        "cannot recreate the live database",
        Duration::from_secs(10),
    );
    std::thread::sleep(Duration::from_millis(500));
    chmod("755", &data);
    wait_for("recreated twice", Duration::from_secs(10), || {
        rtds.log_text().matches("recreated").count() >= 2
    });

    // Staging unwritable at shutdown: rows are spooled beside the live
    // database, and the next start replays them.
    chmod("555", &staging);
    wait_log(&rtds, "cannot write archive rows", Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(300));
    let (st, _) = rtds.stop();
    let first_log = rtds.log_text();
    assert!(st.success(), "{first_log}");
    assert!(
        first_log.contains("rtds.db.spool, replayed at the next start"),
        "{first_log}"
    );
    let spool = data.join("rtds.db.spool");
    let spooled = std::fs::read_to_string(&spool).unwrap().lines().count();
    assert!(spooled > 0);
    chmod("755", &staging);
    let first_cycles = cycles_logged(&first_log);

    let mut rtds = Rtds::start_unprivileged(&cfg);
    wait_log(
        &rtds,
        &format!("replaying {spooled} archive rows"),
        Duration::from_secs(10),
    );
    wait_for(
        "spool replayed and removed",
        Duration::from_secs(10),
        || !spool.exists(),
    );
    wait_for("second run", Duration::from_secs(10), || ticks(&db) >= 5);
    // Nothing stored twice, nothing missing: run 1 complete, run 2 going.
    let runs = tick_runs(&db);
    assert_eq!(runs[0], first_cycles, "{runs:?}");

    // Neither staging nor the live database's directory writable at
    // shutdown: the loss is counted and the exit status says so.
    chmod("555", &staging);
    wait_log(&rtds, "cannot write archive rows", Duration::from_secs(10));
    chmod("555", &data);
    let (st, _) = rtds.stop();
    chmod("755", &data);
    chmod("755", &staging);
    let log = rtds.log_text();
    assert_eq!(st.code(), Some(1), "{log}");
    let lost: u64 = log
        .lines()
        .find_map(|l| {
            l.split("storage: ")
                .nth(1)?
                .split(" archive rows LOST")
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no LOST line: {log}"));
    assert!(lost > 0);
}

#[test]
fn time_stamp_acks_never_purge_rows_with_old_time_stamps_published_later() {
    let dir = TempDir::new("old-ts");
    let lab = dir.path("lab.db");
    let src = rusqlite::Connection::open(&lab).unwrap();
    src.execute_batch(
        "CREATE TABLE lab (tag TEXT, value INTEGER, quality INTEGER, sampled_at TEXT);
         INSERT INTO lab VALUES ('Old', 0, 0, '2026-01-01T00:00:00.000Z');",
    )
    .unwrap();
    dir.write(
        "rtds.ron",
        &r#"(
    cycle_ms: 100,
    storage: (path: "rtds.db", segment: (max_age_s: 0.3)),
    connectors: [(
        name: "lims",
        connection: "connector=Sql; driver=sqlite; path=LAB; timeout=2",
        interval_ms: 100,
        queries: [(name: "lab", sql: "SELECT tag, value, quality, sampled_at FROM lab",
                   name_column: "tag", status_column: "quality", ts_column: "sampled_at")],
        tags: [(name: "Old", address: "lab/Old", type: "int")],
    )],
)
"#
        .replace("LAB", &lab.display().to_string()),
    );
    let cfg = dir.path("rtds.ron");
    let db = dir.path("rtds.db");
    let mut rtds = Rtds::start(&cfg);
    let outbox = dir.path("outbox");
    let mut read: std::collections::BTreeMap<i64, String> = Default::default();
    let mut acks = 0;
    let t0 = Instant::now();
    let mut k = 0;
    while t0.elapsed() < Duration::from_secs(8) {
        // The source: a new value every 100 ms, stamped 60 s in the past.
        k += 1;
        let old = chrono::Utc::now() - chrono::Duration::seconds(60);
        src.execute(
            "UPDATE lab SET value = ?1, sampled_at = ?2",
            rusqlite::params![k, rtds::model::format_ts(&old)],
        )
        .unwrap();
        // The Historian: note the time, read everything published, then
        // acknowledge up to the noted time.
        if k % 3 == 0 {
            let listed_at = chrono::Utc::now();
            for f in segment_files(&db)
                .into_iter()
                .filter(|f| f.starts_with(&outbox))
            {
                let Ok(c) = rusqlite::Connection::open_with_flags(
                    format!("file:{}?mode=ro&immutable=1", f.display()),
                    rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY
                        | rusqlite::OpenFlags::SQLITE_OPEN_URI,
                ) else {
                    continue;
                };
                let Ok(mut st) = c.prepare("SELECT id, name FROM archive_named") else {
                    continue;
                };
                for (id, name) in st
                    .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))
                    .unwrap()
                    .flatten()
                {
                    read.insert(id, name);
                }
            }
            let tmp = outbox.join("ack.tmp");
            std::fs::write(&tmp, format!("ts={}\n", rtds::model::format_ts(&listed_at))).unwrap();
            std::fs::rename(&tmp, outbox.join("ack.txt")).unwrap();
            acks += 1;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let (st, _) = rtds.stop();
    assert!(st.success(), "{}", rtds.log_text());
    let left: Vec<i64> = archive_rows(&db).iter().map(|r| r.id).collect();
    let max = left.iter().chain(read.keys()).max().copied().unwrap();
    let unread_and_gone: Vec<i64> = (1..=max)
        .filter(|id| !read.contains_key(id) && !left.contains(id))
        .collect();
    assert!(
        unread_and_gone.is_empty(),
        "purged unread: {unread_and_gone:?}"
    );
    // The test exercised what it claims: old-stamped rows were read and
    // purged by time-stamp acknowledgements.
    let purged = match current(&db, "_storage._purged_rows") {
        Some((Sql::Integer(n), _)) => n,
        other => panic!("{other:?}"),
    };
    let old_read = read.values().filter(|n| *n == "Old").count();
    eprintln!(
        "{acks} ts acks, {} rows read, {purged} purged, {old_read} old-stamped rows read",
        read.len()
    );
    assert!(
        purged > 0 && old_read > 10,
        "{purged} purged, {old_read} Old rows read"
    );
}

#[test]
fn an_unreachable_outbox_delays_publication_and_loses_nothing() {
    let dir = TempDir::new("outbox-down");
    let cfg = data_config(&dir, 20, "segment: (max_age_s: 0.2)", &[("ticks", TICKS)]);
    let data = dir.path("data");
    let outbox = data.join("outbox");
    let staged = || -> usize {
        std::fs::read_dir(data.join("staging"))
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.file_name().to_string_lossy().starts_with("seg-"))
                    .count()
            })
            .unwrap_or(0)
    };
    let db = data.join("rtds.db");
    let mut rtds = Rtds::start_unprivileged(&cfg);
    wait_for("running", Duration::from_secs(15), || ticks(&db) >= 5);
    chmod("555", &outbox);
    wait_log(&rtds, "closed segments wait in", Duration::from_secs(10));
    wait_for(
        "segments waiting in staging",
        Duration::from_secs(10),
        || staged() >= 3,
    );
    chmod("755", &outbox);
    wait_log(&rtds, "reachable again", Duration::from_secs(10));
    wait_for("staging drained", Duration::from_secs(10), || staged() == 0);
    let (st, _) = rtds.stop();
    let log = rtds.log_text();
    assert!(st.success(), "{log}");
    // Published in id order with no gap, every cycle stored.
    let mut names: Vec<String> = std::fs::read_dir(&outbox)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("seg-"))
        .collect();
    names.sort();
    let ranges: Vec<(i64, i64)> = names
        .iter()
        .map(|n| {
            let ids = &n[4..n.len() - 7];
            let (a, b) = ids.split_once('-').unwrap();
            (a.parse().unwrap(), b.parse().unwrap())
        })
        .collect();
    assert_eq!(ranges[0].0, 1);
    for w in ranges.windows(2) {
        assert_eq!(w[1].0, w[0].1 + 1, "{ranges:?}");
    }
    assert_eq!(tick_runs(&db), vec![cycles_logged(&log)]);
}

#[test]
fn an_outbox_on_another_file_system_receives_whole_copies() {
    if !is_root() {
        eprintln!("skipped: mounting a tmpfs needs root (CI runs as root)");
        return;
    }
    let dir = TempDir::new("outbox-xdev");
    let outbox = dir.path("remote");
    std::fs::create_dir_all(&outbox).unwrap();
    let _fs = Tmpfs::mount(&outbox, "16m");
    let cfg = data_config(
        &dir,
        20,
        &format!(
            "outbox: \"{}\", segment: (max_age_s: 0.2)",
            outbox.display()
        ),
        &[("ticks", TICKS)],
    );
    let mut rtds = Rtds::start(&cfg);
    let segs = || -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&outbox)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    wait_for("segments copied in", Duration::from_secs(15), || {
        segs().iter().filter(|n| n.starts_with("seg-")).count() >= 3
    });
    let (st, _) = rtds.stop();
    let log = rtds.log_text();
    assert!(st.success(), "{log}");
    // Only whole segments: no temporary file left, staging emptied, and
    // every cycle in the copies.
    assert!(segs().iter().all(|n| n.starts_with("seg-")), "{:?}", segs());
    let staged = std::fs::read_dir(dir.path("data/staging"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("seg-"))
        .count();
    assert_eq!(staged, 0);
    let mut ticks = Vec::new();
    for n in segs() {
        let c = rusqlite::Connection::open(outbox.join(&n)).unwrap();
        let ok: String = c
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(ok, "ok", "{n}");
        let mut st = c
            .prepare("SELECT value FROM archive_named WHERE name = 'Ticks' ORDER BY id")
            .unwrap();
        ticks.extend(
            st.query_map([], |r| r.get::<_, i64>(0))
                .unwrap()
                .map(Result::unwrap),
        );
    }
    assert_eq!(ticks, (1..=cycles_logged(&log)).collect::<Vec<_>>());
}

#[test]
fn damaged_files_are_set_aside_and_collection_goes_on() {
    let dir = TempDir::new("damaged");
    let cfg = data_config(&dir, 50, "segment: (max_age_s: 0.3)", &[("ticks", TICKS)]);
    let data = dir.path("data");
    std::fs::create_dir_all(data.join("staging")).unwrap();
    // What a failing disk or a power cut with synchronous=off can leave.
    let junk = vec![0x5Au8; 8192];
    std::fs::write(data.join("rtds.db"), &junk).unwrap();
    std::fs::write(data.join("staging/open.sqlite"), &junk).unwrap();
    let mut rtds = Rtds::start(&cfg);
    let db = data.join("rtds.db");
    wait_for("collecting", Duration::from_secs(15), || ticks(&db) >= 10);
    let (st, _) = rtds.stop();
    let log = rtds.log_text();
    assert!(st.success(), "{log}");
    assert!(
        log.contains("live database") && log.contains("is damaged"),
        "{log}"
    );
    assert!(
        log.contains("the open segment") && log.contains("is damaged"),
        "{log}"
    );
    let aside = |dir: &std::path::Path, prefix: &str| {
        std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .filter(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                n.starts_with(prefix) && n.contains(".damaged-")
            })
            .count()
    };
    assert_eq!(aside(&data, "rtds.db"), 1, "kept for inspection");
    assert_eq!(aside(&data.join("staging"), "open.sqlite"), 1);
    assert_eq!(tick_runs(&db), vec![cycles_logged(&log)]);
}

/// The resident memory of process `pid`, in kB.
fn rss_kb(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_stalled_storage_thread_costs_bounded_memory_and_what_is_dropped_is_counted() {
    let dir = TempDir::new("stall");
    // 500 calculated tags every 10 ms: 50,000 samples a second.
    let script = r#"
        let n = (state.n ?? 0) + 1;
        state.n = n;
        for i in 0..500 { server.set_value("T" + i, n + i); }
    "#;
    let cfg = data_config(&dir, 10, "busy_timeout_ms: 50", &[("many", script)]);
    let db = dir.path("data/rtds.db");
    let mut rtds = Rtds::start(&cfg);
    wait_for("the tags stored", Duration::from_secs(20), || {
        status_of(&db, "T499") == Some(0)
    });
    // Another process holds the live database: storage's next tag
    // registration waits for it, retrying, and takes nothing meanwhile.
    let holder = Command::new("python3")
        .args([
            "-c",
            "import sqlite3, sys, time\nc = sqlite3.connect(sys.argv[1], isolation_level=None)\nc.execute('BEGIN EXCLUSIVE')\nprint('locked', flush=True)\ntime.sleep(120)",
        ])
        .arg(&db)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut holder = Proc { child: holder };
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holder.child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "locked");
    // A reload that adds a script's tag: registration must wait.
    dir.write(
        "many.rhai",
        &format!("{script}\nserver.set_value(\"New\", 1);\n"),
    );
    rtds.proc.signal(libc::SIGHUP);
    wait_log(
        &rtds,
        "dropping the oldest samples",
        Duration::from_secs(30),
    );
    // Memory stays flat while it drops: the hold is bounded.
    let at_drop = rss_kb(rtds.proc.pid());
    std::thread::sleep(Duration::from_secs(5));
    let later = rss_kb(rtds.proc.pid());
    eprintln!("RSS when dropping began {at_drop} kB, 5 s later {later} kB");
    assert!(
        later < at_drop + 8 * 1024,
        "RSS grew from {at_drop} to {later} kB"
    );
    // The holder lets go: storage registers and takes samples again.
    drop(holder);
    wait_log(
        &rtds,
        "the storage thread takes samples again",
        Duration::from_secs(30),
    );
    wait_for("the new tag stored", Duration::from_secs(20), || {
        status_of(&db, "New") == Some(0)
    });
    let (st, _) = rtds.stop();
    let log = rtds.log_text();
    // Counted and logged, and the exit status says data was lost.
    assert_eq!(st.code(), Some(1), "{log}");
    let dropped: u64 = log
        .lines()
        .find_map(|l| {
            l.split("storage: ")
                .nth(1)?
                .strip_suffix(" samples were dropped before the storage thread could take them")?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no count in {log}"));
    assert!(dropped > 0, "{log}");
    eprintln!("{dropped} samples dropped while storage was stalled");
}
