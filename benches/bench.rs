//! `make bench`: figures for RTDS on this machine, printed as a table and
//! written to `target/bench.json`. Not part of `make test`: it measures, it
//! does not assert.

use rtds::config::{Retention, SegmentLimits, StorageConfig};
use rtds::model::Sample;
use rtds::model::{Origin, Status, TagState, TagTable, Value};
use rtds::script::ScriptHost;
use rtds::script::schedule::Schedule;
use rtds::script::{ScriptConfig, ScriptLimits};
use rtds::storage::archive::ArchivePolicy;
use rtds::storage::outbox::Outbox;
use rtds::storage::segment;
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
    // `make bench` runs everything; `cargo bench --bench bench -- scan` one part.
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let wanted = |name: &str| only.is_empty() || only.iter().any(|o| o == name);
    if wanted("scan") {
        let rtds_us = [1_000, 10_000].map(|n| scan_throughput(&mut figures, n));
        libmodbus_anchor(&mut figures, rtds_us[1]);
    }
    if wanted("instructions") {
        instructions(&mut figures);
    }
    if wanted("scripts") {
        script_cost(&mut figures);
    }
    if wanted("archive") {
        archive_throughput(&mut figures);
        cache_effect(&mut figures);
        purge_cost(&mut figures);
    }
    if wanted("latency") {
        read_to_write_latency(&mut figures);
    }
    if wanted("rtu") {
        rtu_over_a_pty(&mut figures);
    }
    if wanted("mqtt") {
        mqtt_figures(&mut figures);
    }
    if wanted("fleet") {
        fleet(&mut figures);
    }
    #[cfg(feature = "opcua")]
    if wanted("opcua") {
        opcua_poll_throughput(&mut figures, 10_000);
    }
    if wanted("http") {
        http_load(&mut figures);
    }
    if wanted("footprint") {
        footprint(&mut figures);
        jitter(&mut figures);
    }
    binary_sizes(&mut figures);

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
    // A part run on its own goes to its own file: the full run's figures
    // (what the README quotes) stay in bench.json.
    let file = if only.is_empty() {
        "bench.json".to_string()
    } else {
        format!("bench-{}.json", only.join("-"))
    };
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target")
        .join(file);
    std::fs::write(&path, text).expect("write the figures under target/");
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
    let mut host = ScriptHost::new(
        &[cfg],
        &ScriptLimits::default(),
        Duration::from_secs(1),
        Vec::new(),
    )
    .unwrap();
    let mut table = TagTable::default();
    let now = chrono::Utc::now();
    for i in 0..N {
        let origin = Origin::device(0, i, false);
        let state = TagState {
            value: Some(Value::Float(i as f64)),
            status: Status::GOOD,
            ts: now,
        };
        table.add(format!("T{i}").into(), origin, state);
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
    // The defaults a user gets (see config): WAL live database, segments
    // with a rollback journal, synchronous=full.
    let dir = path.parent().unwrap();
    StorageConfig {
        path: path.to_path_buf(),
        outbox: dir.join("outbox"),
        staging: dir.join("staging"),
        segment: SegmentLimits::default(),
        current_interval: Duration::from_secs(1),
        journal_mode: "wal".into(),
        synchronous: "full".into(),
        cache_kb: 256,
        busy_timeout: Duration::from_secs(5),
        archive: ArchivePolicy::default(),
        retention: Retention::default(),
    }
}

/// (write_bytes, cancelled_write_bytes) of this process so far, from
/// /proc/self/io: what it caused to be written to the storage layer.
fn io_written() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/self/io").unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    (field("write_bytes:"), field("cancelled_write_bytes:"))
}

fn wait_registered(path: &std::path::Path, n: usize) {
    let probe = rusqlite::Connection::open(path).unwrap();
    probe.busy_timeout(Duration::from_secs(30)).unwrap();
    while probe
        .query_row("SELECT count(*) FROM current", [], |r| r.get::<_, i64>(0))
        .unwrap_or(0)
        < n as i64
    {
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn tag_infos(n: usize) -> Vec<TagInfo> {
    (0..n)
        .map(|i| TagInfo {
            name: format!("T{i}").into(),
            source: "bench".into(),
            address: "".into(),
            data_type: "float",
            writable: false,
            description: "".into(),
            unit: "".into(),
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
/// same rows into a table of the segment's shape in the same number of
/// transactions (the disk's ceiling); and the bytes each archived row costs
/// the disk (from /proc/self/io), which shows whether a row is written once.
/// What SQLite's page cache buys: the same archive run (10,000 tags
/// changing every cycle, 30 cycles) with `cache_kb` 128, 256 (the default)
/// and 2,048 (SQLite's own default), rows per second each.
fn cache_effect(figures: &mut Vec<Figure>) {
    const TAGS: usize = 10_000;
    const CYCLES: usize = 30;
    for (kb, key) in [
        (128u32, "archive_rows_per_s_cache_128k"),
        (256, "archive_rows_per_s_cache_256k"),
        (2048, "archive_rows_per_s_cache_2048k"),
    ] {
        let dir = bench_dir(&format!("cache{kb}"));
        let path = dir.join("rtds.db");
        let mut cfg = storage_config(&path);
        cfg.cache_kb = kb;
        let mut storage = Storage::start(&cfg).unwrap();
        storage.tags(0, tag_infos(TAGS));
        let cycles: Vec<Vec<Sample>> = (0..CYCLES).map(|k| cycle(TAGS, k)).collect();
        wait_registered(&path, TAGS);
        let t0 = Instant::now();
        for c in cycles {
            storage.samples(c);
            storage.flush();
            storage.flush();
        }
        storage.close();
        figures.push(Figure {
            key,
            label: format!("archive rows/s with cache_kb {kb}"),
            value: (TAGS * CYCLES) as f64 / t0.elapsed().as_secs_f64(),
            unit: "rows/s",
        });
        let _ = std::fs::remove_dir_all(&dir);
    }
}

fn archive_throughput(figures: &mut Vec<Figure>) {
    const TAGS: usize = 10_000;
    const CYCLES: usize = 30;
    let dir = bench_dir("archive");
    let path = dir.join("rtds.db");
    let mut storage = Storage::start(&storage_config(&path)).unwrap();
    storage.tags(0, tag_infos(TAGS));
    let cycles: Vec<Vec<Sample>> = (0..CYCLES).map(|k| cycle(TAGS, k)).collect();
    // Time the archive, not the one-off registration of 10,000 tags.
    wait_registered(&path, TAGS);
    let io0 = io_written();
    let t0 = Instant::now();
    for c in cycles {
        storage.samples(c);
        storage.flush();
    }
    let stats = storage.close();
    let rtds_secs = t0.elapsed().as_secs_f64();
    let io1 = io_written();
    let rows = (TAGS * CYCLES) as f64;
    assert!(stats.archived >= rows as u64);

    let raw_path = dir.join("raw.db");
    let conn = rusqlite::Connection::open(&raw_path).unwrap();
    conn.execute_batch(
        "PRAGMA journal_mode=delete; PRAGMA synchronous=full;
         CREATE TABLE archive (id INTEGER PRIMARY KEY, tag_id INTEGER NOT NULL, value, status INTEGER NOT NULL, ts TEXT NOT NULL);",
    )
    .unwrap();
    // Storage merges cycles that queue while it writes; give the raw insert
    // the same number of transactions it used.
    let commits = stats.commits.max(1) as usize;
    let per_tx = (TAGS * CYCLES).div_ceil(commits);
    let ts = rtds::model::format_ts(&chrono::Utc::now());
    let io2 = io_written();
    let t0 = Instant::now();
    for chunk in (0..TAGS * CYCLES).collect::<Vec<_>>().chunks(per_tx) {
        let tx = conn.unchecked_transaction().unwrap();
        {
            let mut st = tx
                .prepare_cached(
                    "INSERT INTO archive (id, tag_id, value, status, ts) VALUES (?1, ?2, ?3, 0, ?4)",
                )
                .unwrap();
            for &n in chunk {
                st.execute(rusqlite::params![
                    n as i64 + 1,
                    (n % TAGS) as i64,
                    n as f64,
                    ts
                ])
                .unwrap();
            }
        }
        tx.commit().unwrap();
    }
    let raw_secs = t0.elapsed().as_secs_f64();
    let io3 = io_written();
    let segment_bytes: u64 = ["outbox", "staging"]
        .iter()
        .flat_map(|d| {
            std::fs::read_dir(dir.join(d))
                .into_iter()
                .flatten()
                .flatten()
        })
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum();
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
    figures.push(Figure {
        key: "archive_disk_bytes_per_row",
        label: "RTDS bytes written per archived row (all files)".into(),
        value: (io1.0 - io0.0) as f64 / rows,
        unit: "B/row",
    });
    figures.push(Figure {
        key: "raw_disk_bytes_per_row",
        label: "raw insert bytes written per row".into(),
        value: (io3.0 - io2.0) as f64 / rows,
        unit: "B/row",
    });
    figures.push(Figure {
        key: "segment_file_bytes_per_row",
        label: "segment file size per row (what the Historian copies)".into(),
        value: segment_bytes as f64 / rows,
        unit: "B/row",
    });
    let _ = std::fs::remove_dir_all(&dir);
}

/// Time to purge 1,000,000 acknowledged rows: whole segment files deleted.
/// Measured twice: the deletion itself, and end to end from the ack file's
/// rename to the last file gone (that includes waiting for storage's
/// once-a-second look at the outbox).
fn purge_cost(figures: &mut Vec<Figure>) {
    const TAGS: usize = 10_000;
    const CYCLES: usize = 100;
    let dir = bench_dir("purge");
    let path = dir.join("rtds.db");
    let cfg = storage_config(&path);
    let fill = |k0: usize| {
        let mut storage = Storage::start(&cfg).unwrap();
        storage.tags(0, tag_infos(TAGS));
        wait_registered(&path, TAGS);
        for k in k0..k0 + CYCLES {
            storage.samples(cycle(TAGS, k));
            storage.flush();
        }
        storage.close()
    };
    let segments = |d: &std::path::Path| -> Vec<(i64, i64)> {
        std::fs::read_dir(d)
            .unwrap()
            .flatten()
            .filter_map(|e| segment::parse_name(&e.file_name().to_string_lossy()))
            .collect()
    };
    // The deletion itself, through the library.
    let stats = fill(0);
    let mut outbox = Outbox::scan(&cfg.outbox, &cfg.staging).unwrap();
    let last = outbox.last_id();
    let t0 = Instant::now();
    let (files, rows) = outbox.delete_acked(last).unwrap();
    let secs = t0.elapsed().as_secs_f64();
    assert!(rows >= stats.archived.min(1_000_000) && segments(&cfg.outbox).is_empty());
    figures.push(Figure {
        key: "purge_1m_rows_s",
        label: format!("purge of {rows} acknowledged rows ({files} segment files)"),
        value: secs,
        unit: "s",
    });
    // End to end, through the ack file and a running storage thread.
    fill(CYCLES);
    let storage = Storage::start(&cfg).unwrap();
    let last = segments(&cfg.outbox).iter().map(|s| s.1).max().unwrap();
    let tmp = cfg.outbox.join("ack.tmp");
    std::fs::write(&tmp, format!("id={last}\n")).unwrap();
    let t0 = Instant::now();
    std::fs::rename(&tmp, cfg.outbox.join("ack.txt")).unwrap();
    while !segments(&cfg.outbox).is_empty() {
        std::thread::sleep(Duration::from_millis(5));
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "purge did not finish"
        );
    }
    let e2e = t0.elapsed().as_secs_f64();
    storage.close();
    figures.push(Figure {
        key: "purge_ack_to_gone_s",
        label: "ack file renamed -> 1M rows' segments gone (incl. poll)".into(),
        value: e2e,
        unit: "s",
    });
    let _ = std::fs::remove_dir_all(&dir);
}

/// A child process killed on drop.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_sim(dir: &std::path::Path, log_requests: bool) -> (Child, u16) {
    if log_requests {
        start_sim_with(dir, &["--log-requests"])
    } else {
        start_sim_with(dir, &[])
    }
}

/// The simulator with `args`; with `--log-requests` its stderr goes to
/// `dir/sim.requests`.
fn start_sim_with(dir: &std::path::Path, args: &[&str]) -> (Child, u16) {
    use std::io::BufRead;
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_rtds-sim"));
    cmd.args(["--port", "0"])
        .args(args)
        .stdout(std::process::Stdio::piped());
    if args.contains(&"--log-requests") {
        cmd.stderr(std::fs::File::create(dir.join("sim.requests")).unwrap());
    } else {
        cmd.stderr(std::process::Stdio::null());
    }
    let mut child = cmd.spawn().expect("rtds-sim");
    let mut line = String::new();
    let out = child.stdout.take().unwrap();
    std::io::BufReader::new(out).read_line(&mut line).unwrap();
    let port = line.trim().rsplit(':').next().unwrap().parse().unwrap();
    (Child(child), port)
}

/// `n` holding-register tags of mixed types, laid end to end from hr:0.
fn mixed_tags(n: usize) -> (String, Vec<(u32, u32)>) {
    let types = [
        ("u16", 1),
        ("i16", 1),
        ("u32", 2),
        ("f32", 2),
        ("i32", 2),
        ("f64", 4),
    ];
    let mut addr = 0u32;
    let mut lines = String::new();
    let mut spans = Vec::new();
    for i in 0..n {
        let (t, w) = types[i % types.len()];
        lines.push_str(&format!(
            "(name: \"T{i}\", address: \"hr:{addr}\", type: \"{t}\"),\n"
        ));
        spans.push((addr, w));
        addr += w;
    }
    (lines, spans)
}

fn rtds_config(
    dir: &std::path::Path,
    port: u16,
    tags: &str,
    cycle_ms: u64,
    interval_ms: u64,
) -> std::path::PathBuf {
    let path = dir.join("rtds.ron");
    std::fs::write(
        &path,
        format!(
            "(\n cycle_ms: {cycle_ms},\n log: (file: \"rtds.log\"),\n storage: (path: \"rtds.db\"),\n connectors: [(\n  name: \"plc\",\n  connection: \"connector=ModbusTcp; host=127.0.0.1; port={port}; timeout=2\",\n  interval_ms: {interval_ms},\n  tags: [\n{tags}  ],\n )],\n)\n"
        ),
    )
    .unwrap();
    path
}

/// Latency from a value's read to the dependent write on the wire, at a
/// 100 ms scan: a peer in this process (the project's codec) answers each
/// read of hr:0 with a new value and notes when; a script copies it to the
/// writable hr:1; the peer notes when that write arrives.
fn read_to_write_latency(figures: &mut Vec<Figure>) {
    use rtds::connector::modbus::codec::{Frame, Request, Response};
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};
    let dir = bench_dir("latency");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let lat: Arc<Mutex<Vec<f64>>> = Arc::default();
    let seen = lat.clone();
    std::thread::spawn(move || {
        let mut read_at: HashMap<u16, Instant> = HashMap::new();
        let mut next: u16 = 0;
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            while let Ok(frame) = Frame::read_from(&mut stream) {
                let function = frame.pdu.first().copied().unwrap_or(0);
                let response = match Request::decode_pdu(&frame.pdu) {
                    Ok(Request::ReadHoldingRegisters { addr: 0, count }) => {
                        next = next.wrapping_add(1);
                        let mut regs = vec![0u16; count as usize];
                        regs[0] = next;
                        read_at.insert(next, Instant::now());
                        Response::Registers(regs)
                    }
                    Ok(Request::ReadHoldingRegisters { count, .. }) => {
                        Response::Registers(vec![0; count as usize])
                    }
                    Ok(Request::WriteSingleRegister { addr, value }) => {
                        if let Some(t) = read_at.remove(&value) {
                            seen.lock()
                                .unwrap()
                                .push(t.elapsed().as_secs_f64() * 1000.0);
                        }
                        Response::Written { addr, value }
                    }
                    _ => Response::Exception(
                        rtds::connector::modbus::codec::Exception::IllegalFunction,
                    ),
                };
                let reply = Frame {
                    tid: frame.tid,
                    unit: frame.unit,
                    pdu: response.encode_pdu(function),
                };
                if reply.write_to(&mut stream).is_err() {
                    break;
                }
            }
        }
    });
    std::fs::write(
        dir.join("copy.rhai"),
        "server.set_value(\"Out\", server.get_value(\"In\"));\n",
    )
    .unwrap();
    let tags = "   (name: \"In\", address: \"hr:0\"),\n   (name: \"Out\", address: \"hr:1\", writable: true),\n";
    let cfg = rtds_config(&dir, port, tags, 100, 100);
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace(" )],\n)", " )],\n scripts: [(file: \"copy.rhai\")],\n)");
    std::fs::write(&cfg, text).unwrap();
    let rtds = start_rtds(&cfg);
    std::thread::sleep(Duration::from_secs(20));
    stop_rtds(rtds);
    let mut v = lat.lock().unwrap().clone();
    v.sort_by(f64::total_cmp);
    let at = |q: f64| {
        v.get(((v.len().max(1) - 1) as f64 * q).round() as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    figures.push(Figure {
        key: "read_to_write_p50_ms",
        label: format!(
            "read -> dependent write on the wire, 100 ms scan, p50 ({} writes)",
            v.len()
        ),
        value: at(0.5),
        unit: "ms",
    });
    figures.push(Figure {
        key: "read_to_write_p99_ms",
        label: "read -> dependent write on the wire, p99".into(),
        value: at(0.99),
        unit: "ms",
    });
    let _ = std::fs::remove_dir_all(&dir);
}

/// User + system CPU seconds so far of the threads of `pid` whose name
/// starts with `prefix`.
fn thread_cpu_secs(pid: u32, prefix: &str) -> f64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0.0;
    };
    tasks
        .flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm"))
                .is_ok_and(|c| c.trim_end().starts_with(prefix))
        })
        .map(|t| {
            let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
            let after = stat.rsplit(')').next().unwrap_or("").to_string();
            let f: Vec<&str> = after.split_whitespace().collect();
            let ticks: f64 = f.get(11).and_then(|u| u.parse::<f64>().ok()).unwrap_or(0.0)
                + f.get(12).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
            // SAFETY: sysconf has no preconditions.
            ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
        })
        .sum()
}

/// (user, system) CPU seconds of this process's children that have ended
/// and been waited for.
fn children_cpu_secs() -> (f64, f64) {
    // SAFETY: getrusage fills the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut u) };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (secs(u.ru_utime), secs(u.ru_stime))
}

/// User + system CPU seconds of a process so far.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|u| u.parse::<f64>().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

fn status_kb(pid: u32, key: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

fn start_rtds(config: &std::path::Path) -> Child {
    Child(
        std::process::Command::new(env!("CARGO_BIN_EXE_rtds"))
            .args(["run", "-c"])
            .arg(config)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("rtds"),
    )
}

fn stop_rtds(mut child: Child) {
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.0.id() as i32, libc::SIGTERM) };
    let _ = child.0.wait();
}

fn current_int(db: &std::path::Path, tag: &str) -> i64 {
    let c = rusqlite::Connection::open(db).unwrap();
    c.busy_timeout(Duration::from_secs(10)).unwrap();
    c.query_row("SELECT value FROM current WHERE name = ?1", [tag], |r| {
        r.get::<_, Option<i64>>(0)
    })
    .ok()
    .flatten()
    .unwrap_or(0)
}

/// End to end, device → `current`: `n` tags polled back to back for 10 s.
/// Returns RTDS's CPU µs per request, for the comparison with mbpoll.
fn scan_throughput(figures: &mut Vec<Figure>, n: usize) -> f64 {
    let dir = bench_dir(&format!("scan{n}"));
    let (_sim, port) = start_sim(&dir, false);
    let (tags, spans) = mixed_tags(n);
    // A 1 ms scan: each cycle starts a read when the previous one is done.
    let cfg = rtds_config(&dir, port, &tags, 1, 1);
    // Requests per scan: RTDS's plan against the theoretical minimum
    // (registers / 125 per contiguous span, values allowed to split).
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rtds"))
        .args(["check", "-c"])
        .arg(&cfg)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let planned: f64 = text
        .lines()
        .find_map(|l| {
            l.trim()
                .split(" requests per scan")
                .next()
                .filter(|_| l.contains("requests per scan"))
        })
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0);
    let regs: u32 = spans.iter().map(|s| s.1).sum();
    let minimum = f64::from(regs.div_ceil(125));
    let child = start_rtds(&cfg);
    let pid = child.0.id();
    std::thread::sleep(Duration::from_secs(2));
    let db = dir.join("rtds.db");
    let (r0, c0, t0) = (
        current_int(&db, "plc._requests"),
        cpu_secs(pid),
        Instant::now(),
    );
    std::thread::sleep(Duration::from_secs(10));
    let (r1, c1, secs) = (
        current_int(&db, "plc._requests"),
        cpu_secs(pid),
        t0.elapsed().as_secs_f64(),
    );
    stop_rtds(child);
    let requests = (r1 - r0) as f64;
    let scans = requests / planned.max(1.0);
    let cpu_us = (c1 - c0) * 1e6 / requests.max(1.0);
    let k = if n >= 10_000 { "10k" } else { "1k" };
    let rows = [
        (
            format!("scan_{k}_tags_per_s"),
            format!("{n} mixed tags: tags/s device → current"),
            scans * n as f64 / secs,
            "tags/s",
        ),
        (
            format!("scan_{k}_requests_per_s"),
            format!("{n} mixed tags: Modbus requests/s"),
            requests / secs,
            "req/s",
        ),
        (
            format!("scan_{k}_cpu_us_per_request"),
            format!("{n} mixed tags: RTDS CPU per request (all threads)"),
            cpu_us,
            "µs",
        ),
        (
            format!("scan_{k}_requests_per_scan"),
            format!("{n} mixed tags: requests per scan (RTDS plan)"),
            planned,
            "req",
        ),
        (
            format!("scan_{k}_minimum_requests"),
            format!("{n} mixed tags: theoretical minimum ({regs} registers / 125)"),
            minimum,
            "req",
        ),
        (
            format!("scan_{k}_plan_ratio"),
            format!("{n} mixed tags: plan / minimum"),
            planned / minimum,
            "ratio",
        ),
    ];
    for (key, label, value, unit) in rows {
        figures.push(Figure {
            key: Box::leak(key.into_boxed_str()),
            label,
            value,
            unit,
        });
    }
    let _ = std::fs::remove_dir_all(&dir);
    cpu_us
}

/// Modbus RTU over a pty: RTDS reads 1,000 registers of unit 1 (8 requests
/// of 125) back to back from pymodbus's RTU server, through the fault
/// relay (no faults armed), which measures on the line itself how long RTDS
/// stays silent between a reply's last byte and its next request, against
/// the spec's t3.5. pymodbus (Python) bounds the request rate; RTDS's CPU
/// per request is its own process's.
fn rtu_over_a_pty(figures: &mut Vec<Figure>) {
    use std::io::BufRead;
    let dir = bench_dir("rtu");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = root.join(".venv/bin/python");
    if !python.exists() {
        eprintln!(
            "rtu bench skipped: {} missing (make venv)",
            python.display()
        );
        return;
    }
    let ready = |child: &mut std::process::Child, what: &str| {
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(line.contains("ready"), "{what}: {line}");
    };
    let mut relay = std::process::Command::new(&python)
        .arg(root.join("tests/peers/rtu_relay.py"))
        .arg("--rtds-pty")
        .arg(dir.join("A1"))
        .arg("--device-pty")
        .arg(dir.join("B2"))
        .arg("--log")
        .arg(dir.join("relay.jsonl"))
        .args(["--baud", "19200"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("the RTU relay");
    ready(&mut relay, "relay");
    let _relay = Child(relay);
    std::fs::write(
        dir.join("map.json"),
        r#"{"units": {"1": {"hr": [{"address": 0, "count": 1000, "value": 0}]}}}"#,
    )
    .unwrap();
    let mut peer = std::process::Command::new(&python)
        .arg(root.join("tests/peers/rtu_peer.py"))
        .arg("--serial")
        .arg(dir.join("B2"))
        .arg("--map")
        .arg(dir.join("map.json"))
        .arg("--log")
        .arg("/dev/null")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("the RTU peer");
    ready(&mut peer, "peer");
    let _peer = Child(peer);
    let tags: String = (0..1000)
        .map(|i| format!("   (name: \"R{i}\", address: \"hr:{i}\", type: \"u16\"),\n"))
        .collect();
    let cfg = dir.join("rtds.ron");
    std::fs::write(
        &cfg,
        format!(
            "(\n cycle_ms: 20,\n log: (file: \"rtds.log\"),\n storage: (path: \"rtds.db\"),\n connectors: [(\n  name: \"rtu\",\n  connection: \"connector=ModbusRtu; device={}; baud=19200; parity=N; unit_id=1; timeout=1\",\n  interval_ms: 20,\n  tags: [\n{tags}  ],\n )],\n)\n",
            dir.join("A1").display()
        ),
    )
    .unwrap();
    let child = start_rtds(&cfg);
    let pid = child.0.id();
    std::thread::sleep(Duration::from_secs(2));
    let db = dir.join("rtds.db");
    let now_unix = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64()
    };
    let (r0, c0, k0, t0, u0) = (
        current_int(&db, "rtu._requests"),
        cpu_secs(pid),
        thread_cpu_secs(pid, "conn-rtu"),
        Instant::now(),
        now_unix(),
    );
    std::thread::sleep(Duration::from_secs(10));
    let (r1, c1, k1, secs, u1) = (
        current_int(&db, "rtu._requests"),
        cpu_secs(pid),
        thread_cpu_secs(pid, "conn-rtu"),
        t0.elapsed().as_secs_f64(),
        now_unix(),
    );
    stop_rtds(child);
    let requests = (r1 - r0) as f64;
    // The same line, the same device: libmodbus's RTU client in a tight C
    // loop, the anchor (as for Modbus TCP).
    let anchor = rtu_libmodbus_anchor(&dir, &dir.join("A1"));
    let u2 = now_unix();
    // The silence before each request in a window, as the relay saw it:
    // after_reply_ms, from the last byte of the reply before it.
    let log = std::fs::read_to_string(dir.join("relay.jsonl")).unwrap_or_default();
    let field = |l: &str, key: &str| -> Option<f64> {
        let at = l.find(&format!("\"{key}\":"))? + key.len() + 3;
        l[at..].split([',', '}']).next()?.trim().parse().ok()
    };
    let idle_in = |from: f64, to: f64| {
        let mut idle: Vec<f64> = log
            .lines()
            .filter(|l| l.contains("\"ev\":\"request\""))
            .filter(|l| field(l, "t").is_some_and(|t| (from..=to).contains(&t)))
            .filter_map(|l| field(l, "after_reply_ms"))
            .collect();
        idle.sort_by(f64::total_cmp);
        idle
    };
    let pct_of = |idle: &[f64], p: f64| {
        idle.get(((idle.len() as f64 - 1.0) * p).round() as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    let idle = idle_in(u0, u1);
    let pct = |p: f64| pct_of(&idle, p);
    let anchor_idle = idle_in(u1 + 0.5, u2);
    let rows = [
        (
            "rtu_requests_per_s",
            "Modbus RTU on a pty, 19200 8N1: requests/s (125 registers, pymodbus)",
            requests / secs,
            "req/s",
        ),
        (
            "rtu_cpu_us_per_request",
            "Modbus RTU: RTDS CPU per 125-register request (all threads)",
            (c1 - c0) * 1e6 / requests.max(1.0),
            "µs",
        ),
        (
            "rtu_connector_cpu_us_per_request",
            "Modbus RTU: its connector thread alone, CPU per request",
            (k1 - k0) * 1e6 / requests.max(1.0),
            "µs",
        ),
        (
            "rtu_idle_ms_min",
            "Modbus RTU: silence before a request, min (t3.5 = 2.005 ms)",
            pct(0.0),
            "ms",
        ),
        (
            "rtu_idle_ms_p50",
            "Modbus RTU: silence before a request, p50",
            pct(0.5),
            "ms",
        ),
        (
            "rtu_idle_ms_p99",
            "Modbus RTU: silence before a request, p99",
            pct(0.99),
            "ms",
        ),
        (
            "rtu_libmodbus_cpu_us_per_request",
            "Modbus RTU: libmodbus C loop, same line, CPU per request",
            anchor,
            "µs",
        ),
        (
            "rtu_libmodbus_idle_ms_min",
            "Modbus RTU: libmodbus's silence before a request, min",
            pct_of(&anchor_idle, 0.0),
            "ms",
        ),
        (
            "rtu_libmodbus_idle_ms_p50",
            "Modbus RTU: libmodbus's silence before a request, p50",
            pct_of(&anchor_idle, 0.5),
            "ms",
        ),
    ];
    for (key, label, value, unit) in rows {
        figures.push(Figure {
            key,
            label: label.into(),
            value,
            unit,
        });
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// libmodbus's RTU client reading 125 registers 500 times on `device`:
/// its CPU µs per request (NaN when cc or libmodbus is missing).
fn rtu_libmodbus_anchor(dir: &std::path::Path, device: &std::path::Path) -> f64 {
    let src = dir.join("rtu_loop.c");
    std::fs::write(
        &src,
        r#"#include <modbus.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
int main(int argc, char **argv) {
    int n = atoi(argv[2]), failed = 0;
    uint16_t regs[125];
    modbus_t *ctx = modbus_new_rtu(argv[1], 19200, 'N', 8, 1);
    if (ctx == NULL || modbus_connect(ctx) == -1) { fprintf(stderr, "open failed\n"); return 1; }
    modbus_set_slave(ctx, 1);
    for (int i = 0; i < n; i++)
        if (modbus_read_registers(ctx, (i % 8) * 125, 125, regs) != 125) failed++;
    struct rusage u;
    getrusage(RUSAGE_SELF, &u);
    double cpu = u.ru_utime.tv_sec + u.ru_utime.tv_usec / 1e6 + u.ru_stime.tv_sec + u.ru_stime.tv_usec / 1e6;
    printf("%d %d %.6f\n", n, failed, cpu);
    modbus_close(ctx);
    modbus_free(ctx);
    return failed != 0;
}
"#,
    )
    .unwrap();
    let bin = dir.join("rtu_loop");
    let built = std::process::Command::new("cc")
        .arg(&src)
        .arg("-o")
        .arg(&bin)
        .args(["-O2", "-I/usr/include/modbus"])
        .arg("-lmodbus")
        .status();
    if !built.is_ok_and(|s| s.success()) {
        eprintln!("RTU libmodbus anchor skipped: cc or libmodbus-dev missing");
        return f64::NAN;
    }
    let out = std::process::Command::new(&bin)
        .arg(device)
        .arg("500")
        .output()
        .expect("run the libmodbus RTU loop");
    let text = String::from_utf8_lossy(&out.stdout);
    let f: Vec<f64> = text
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    match f.as_slice() {
        [n, failed, cpu] if *failed == 0.0 => cpu * 1e6 / n,
        _ => {
            eprintln!(
                "RTU libmodbus anchor failed: {text} {}",
                String::from_utf8_lossy(&out.stderr)
            );
            f64::NAN
        }
    }
}

/// A mosquitto on a free port with `$SYS` every second; (process, port).
fn start_broker(dir: &std::path::Path) -> Option<(Child, u16)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .ok()?
        .local_addr()
        .ok()?
        .port();
    let conf = dir.join("mosquitto.conf");
    let root = unsafe { libc::getuid() } == 0;
    std::fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nsys_interval 1\nmax_queued_messages 100000\n{}",
            if root { "user root\n" } else { "" }
        ),
    )
    .ok()?;
    let child = std::process::Command::new("mosquitto")
        .arg("-c")
        .arg(&conf)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    let child = Child(child);
    let t0 = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if t0.elapsed() > Duration::from_secs(10) {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Some((child, port))
}

/// The last value of mosquitto's `$SYS/broker/bytes/received` (bytes it
/// read from all clients), read with paho in the venv.
fn broker_bytes_received(port: u16) -> f64 {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = std::process::Command::new(root.join(".venv/bin/python"))
        .arg("-c")
        .arg(format!(
            "import paho.mqtt.subscribe as s; m = s.simple('$SYS/broker/bytes/received', hostname='127.0.0.1', port={port}); print(m.payload.decode())"
        ))
        .output();
    out.ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(f64::NAN)
}

/// `n` calculated tags that change every cycle (a script), published by
/// an `mqtt` output in `mode` (None: no output) to `port`; returns (CPU s,
/// values delivered, peak RSS kB, lateness p99 ms from the stop line).
fn mqtt_run(
    dir: &std::path::Path,
    n: usize,
    mode: Option<&str>,
    port: u16,
    secs: u64,
) -> (f64, f64, f64, f64) {
    std::fs::write(
        dir.join("churn.rhai"),
        format!(
            "let t = server.get(\"Ticks\");\nlet k = if t.status == 0 {{ t.value + 1 }} else {{ 1 }};\nt.value = k; t.status = 0; server.set(t);\nfor i in 0..{n} {{ server.set_value(\"C\" + i, k + i); }}\n"
        ),
    )
    .unwrap();
    let output = match mode {
        Some(m) => format!(
            "outputs: [(name: \"site\", kind: \"mqtt\", broker: \"mqtt://127.0.0.1:{port}\", mode: \"{m}\", {}retry_min_s: 0.2, retry_max_s: 1)],",
            if m == "sparkplug" {
                "group: \"Bench\", edge_node: \"gw1\", "
            } else {
                ""
            }
        ),
        None => String::new(),
    };
    let _ = std::fs::remove_dir_all(dir.join("data"));
    std::fs::create_dir_all(dir.join("data")).unwrap();
    let cfg = dir.join("rtds.ron");
    std::fs::write(
        &cfg,
        format!(
            "(\n cycle_ms: 200,\n log: (file: \"rtds.log\"),\n storage: (path: \"data/rtds.db\"),\n scripts: [(file: \"churn.rhai\", max_operations: 100000000)],\n {output}\n)\n"
        ),
    )
    .unwrap();
    let child = start_rtds(&cfg);
    let pid = child.0.id();
    std::thread::sleep(Duration::from_secs(secs));
    let cpu = cpu_secs(pid);
    let peak = status_kb(pid, "VmHWM:");
    stop_rtds(child);
    let log = std::fs::read_to_string(dir.join("rtds.log")).unwrap_or_default();
    let sent: f64 = log
        .lines()
        .find_map(|l| l.split("stopped; ").nth(1)?.split(' ').next()?.parse().ok())
        .unwrap_or(0.0);
    let p99: f64 = log
        .lines()
        .rev()
        .find_map(|l| l.split("p99 ").nth(1)?.split(' ').next()?.parse().ok())
        .unwrap_or(f64::NAN);
    (cpu, sent, peak, p99)
}

/// MQTT: values/s published, CPU and bytes per value (Sparkplug and JSON),
/// memory at 10,000 tags with and without the output, and the scan's
/// lateness with the broker down.
fn mqtt_figures(figures: &mut Vec<Figure>) {
    let dir = bench_dir("mqtt");
    let Some((_broker, port)) = start_broker(&dir) else {
        eprintln!("mqtt bench skipped: mosquitto missing");
        return;
    };
    const N: usize = 10_000;
    const SECS: u64 = 15;
    let (cpu_off, _, peak_off, late_off) = mqtt_run(&dir, N, None, port, SECS);
    let mut push = |key: &'static str, label: String, value: f64, unit: &'static str| {
        figures.push(Figure {
            key,
            label,
            value,
            unit,
        })
    };
    for (mode, k) in [("sparkplug", "spb"), ("json", "json")] {
        let b0 = broker_bytes_received(port);
        let (cpu, sent, peak, _) = mqtt_run(&dir, N, Some(mode), port, SECS);
        // $SYS is refreshed every second.
        std::thread::sleep(Duration::from_millis(1500));
        let b1 = broker_bytes_received(port);
        push(
            Box::leak(format!("mqtt_{k}_values_per_s").into_boxed_str()),
            format!("MQTT {mode}: values/s published (10,000 tags changing every 200 ms)"),
            sent / SECS as f64,
            "values/s",
        );
        push(
            Box::leak(format!("mqtt_{k}_cpu_us_per_value").into_boxed_str()),
            format!("MQTT {mode}: RTDS CPU per value published (over no output)"),
            (cpu - cpu_off) * 1e6 / sent.max(1.0),
            "µs",
        );
        push(
            Box::leak(format!("mqtt_{k}_bytes_per_value").into_boxed_str()),
            format!("MQTT {mode}: bytes on the wire per value (broker's count)"),
            (b1 - b0) / sent.max(1.0),
            "B",
        );
        push(
            Box::leak(format!("mqtt_{k}_peak_rss_extra_mib").into_boxed_str()),
            format!("MQTT {mode}: peak RSS over no output, 10,000 tags"),
            (peak - peak_off) / 1024.0,
            "MiB",
        );
    }
    // The broker gone: everything goes to the store; the scan must not
    // notice.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (_, _, _, late_dead) = mqtt_run(&dir, N, Some("sparkplug"), dead, SECS);
    push(
        "mqtt_lateness_p99_no_output_ms",
        "cycle lateness p99, 10,000 changing tags, no output".into(),
        late_off,
        "ms",
    );
    push(
        "mqtt_lateness_p99_broker_down_ms",
        "cycle lateness p99, same, Sparkplug output with the broker down".into(),
        late_dead,
        "ms",
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// 20 RTDS processes (edge nodes gw0 … gw19), 500 tags each (one
/// simulator), on one mosquitto, and the independent Sparkplug host:
/// messages/s, the latency from a value's read to the host, and whether
/// anything was lost (every node's counter seen without a gap).
fn fleet(figures: &mut Vec<Figure>) {
    use std::io::BufRead;
    let dir = bench_dir("fleet");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let Some((_broker, port)) = start_broker(&dir) else {
        eprintln!("fleet bench skipped: mosquitto missing");
        return;
    };
    let (_sim, sim_port) = start_sim(&dir, false);
    let out = dir.join("host.jsonl");
    let mut host = std::process::Command::new(root.join(".venv/bin/python"))
        .arg(root.join("tests/peers/sparkplug_host.py"))
        .args(["--port", &port.to_string(), "--group", "Fleet"])
        .arg("--out")
        .arg(&out)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("the Sparkplug host");
    let mut line = String::new();
    std::io::BufReader::new(host.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let _host = Child(host);
    const NODES: usize = 20;
    const TAGS: usize = 500;
    let (tags, _) = mixed_tags(TAGS - 1);
    // hr:0 counts seconds: a change every second on every node.
    let tags = format!("{tags}(name: \"Seconds\", address: \"hr:0\", type: \"u16\"),\n");
    let mut children = Vec::new();
    for k in 0..NODES {
        let d = dir.join(format!("gw{k}"));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("ticks.rhai"), "let t = server.get(\"Ticks\");\nt.value = if t.status == 0 { t.value + 1 } else { 1 };\nt.status = 0;\nserver.set(t);\n").unwrap();
        let cfg = d.join("rtds.ron");
        std::fs::write(
            &cfg,
            format!(
                "(\n cycle_ms: 100,\n log: (file: \"rtds.log\"),\n storage: (path: \"rtds.db\"),\n connectors: [(\n  name: \"plc\",\n  connection: \"connector=ModbusTcp; host=127.0.0.1; port={sim_port}; timeout=2\",\n  tags: [\n{}  ],\n )],\n scripts: [(file: \"ticks.rhai\")],\n outputs: [(name: \"site\", kind: \"mqtt\", broker: \"mqtt://127.0.0.1:{port}\", group: \"Fleet\", edge_node: \"gw{k}\")],\n)\n",
                tags.replace("name: \"T", &format!("name: \"G{k}T"))
            ),
        )
        .unwrap();
        children.push(start_rtds(&cfg));
    }
    let secs = 30.0;
    std::thread::sleep(Duration::from_secs_f64(secs));
    for c in children {
        stop_rtds(c);
    }
    std::thread::sleep(Duration::from_millis(500));
    // The host's record: per node, Ticks in NDATA (its counter) for the
    // loss check; every data metric's (receive time − read time).
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    let mut messages = 0.0;
    let mut latencies: Vec<f64> = Vec::new();
    let mut ticks: std::collections::BTreeMap<String, Vec<i64>> = Default::default();
    let mut violations = 0.0;
    for l in text.lines() {
        let Ok(r) = serde_json::from_str::<serde_json::Value>(l) else {
            continue;
        };
        if r["kind"] == "violation" {
            violations += 1.0;
            continue;
        }
        if r["kind"] != "message" || !(r["type"] == "NDATA" || r["type"] == "DDATA") {
            continue;
        }
        messages += 1.0;
        let rx = r["rx"].as_f64().unwrap_or(f64::NAN);
        let node = r["node"].as_str().unwrap_or("").to_string();
        for m in r["metrics"].as_array().into_iter().flatten() {
            if let Some(ts) = m["timestamp"].as_f64() {
                latencies.push(rx - ts);
            }
            if m["resolved_name"] == "Ticks"
                && let Some(v) = m["value"].as_i64()
            {
                ticks.entry(node.clone()).or_default().push(v);
            }
        }
    }
    let lost: i64 = ticks
        .values()
        .map(|v| {
            let span = v.iter().max().unwrap_or(&0) - v.iter().min().unwrap_or(&0) + 1;
            span - v.len() as i64
        })
        .sum::<i64>()
        + (NODES - ticks.len()) as i64 * 1_000_000;
    latencies.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 - 1.0) * p).round() as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    for (key, label, value, unit) in [
        (
            "fleet_messages_per_s",
            format!("fleet, {NODES} RTDS × {TAGS} tags, 1 mosquitto: data messages/s at the host"),
            messages / secs,
            "msg/s",
        ),
        (
            "fleet_latency_p50_ms",
            "fleet: read → Sparkplug host, p50".to_string(),
            pct(0.5),
            "ms",
        ),
        (
            "fleet_latency_p99_ms",
            "fleet: read → Sparkplug host, p99".to_string(),
            pct(0.99),
            "ms",
        ),
        (
            "fleet_lost",
            "fleet: counter values lost (all nodes)".to_string(),
            lost as f64,
            "values",
        ),
        (
            "fleet_violations",
            "fleet: Sparkplug rule violations seen by the host".to_string(),
            violations,
            "count",
        ),
    ] {
        figures.push(Figure {
            key,
            label,
            value,
            unit,
        });
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The fair anchor: a tight C loop of libmodbus's `modbus_read_registers`
/// (125 registers, the largest read) against the same simulator, built
/// here with the system's cc and libmodbus. Its CPU per request is what a
/// minimal C client costs; RTDS's figure also decodes, runs the loop and
/// stores. (`mbpoll`, compared before, starts a process and prints every
/// poll: it measured its own overhead, not the protocol's.)
/// The fair anchor, built in `dir`: a tight libmodbus client loop in C,
/// `loop PORT N` reads 125 registers N times and prints its CPU time.
fn build_libmodbus_loop(dir: &std::path::Path) -> Option<std::path::PathBuf> {
    let src = dir.join("loop.c");
    std::fs::write(
        &src,
        r#"#include <modbus.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
int main(int argc, char **argv) {
    int port = atoi(argv[1]), n = atoi(argv[2]), failed = 0;
    uint16_t regs[125];
    modbus_t *ctx = modbus_new_tcp("127.0.0.1", port);
    if (ctx == NULL || modbus_connect(ctx) == -1) { fprintf(stderr, "connect failed\n"); return 1; }
    modbus_set_slave(ctx, 1);
    for (int i = 0; i < n; i++)
        if (modbus_read_registers(ctx, (i % 4) * 125, 125, regs) != 125) failed++;
    struct rusage u;
    getrusage(RUSAGE_SELF, &u);
    double cpu = u.ru_utime.tv_sec + u.ru_utime.tv_usec / 1e6 + u.ru_stime.tv_sec + u.ru_stime.tv_usec / 1e6;
    printf("%d %d %.6f\n", n, failed, cpu);
    modbus_close(ctx);
    modbus_free(ctx);
    return failed != 0;
}
"#,
    )
    .unwrap();
    let bin = dir.join("loop");
    let built = std::process::Command::new("cc")
        .args(["-O2", "-I/usr/include/modbus"])
        .arg(&src)
        .arg("-o")
        .arg(&bin)
        .arg("-lmodbus")
        .status();
    built.is_ok_and(|s| s.success()).then_some(bin)
}

fn libmodbus_anchor(figures: &mut Vec<Figure>, rtds_cpu_us: f64) {
    let dir = bench_dir("libmodbus");
    let Some(bin) = build_libmodbus_loop(&dir) else {
        println!(
            "libmodbus anchor skipped: cc or libmodbus-dev missing (make bench installs them)"
        );
        return;
    };
    let (_sim, port) = start_sim(&dir, false);
    let out = std::process::Command::new(&bin)
        .arg(port.to_string())
        .arg("50000")
        .output()
        .expect("run the libmodbus loop");
    let text = String::from_utf8_lossy(&out.stdout);
    let f: Vec<f64> = text
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect();
    if f.len() != 3 || f[1] != 0.0 {
        println!(
            "libmodbus anchor failed: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        return;
    }
    let us = f[2] * 1e6 / f[0];
    figures.push(Figure {
        key: "libmodbus_cpu_us_per_request",
        label: "libmodbus C loop: CPU per 125-register request".into(),
        value: us,
        unit: "µs",
    });
    figures.push(Figure {
        key: "rtds_vs_libmodbus_cpu_ratio",
        label: "RTDS (10k tags, decode + loop + store) / libmodbus loop".into(),
        value: rtds_cpu_us / us,
        unit: "ratio",
    });
    let _ = std::fs::remove_dir_all(&dir);
}

/// Peak resident memory (`VmHWM`) with 1,000, 10,000 and 100,000 tags
/// polled every 100 ms with default settings (the 100,000 as four
/// connectors of 25,000 on one shared link: the simulator has 65,536
/// registers), so growth per tag is visible; and, in the 10,000-tag run,
/// the start-up: from `rtds run` to the first stored value, the first
/// archive row on disk and the first segment published (its default
/// closing age is 60 s).
fn footprint(figures: &mut Vec<Figure>) {
    let mut peaks = Vec::new();
    for n in [1_000usize, 10_000, 100_000] {
        let dir = bench_dir(&format!("mem{n}"));
        let (_sim, port) = start_sim(&dir, false);
        let per = n.min(25_000);
        let (tags, _) = mixed_tags(per);
        let mut connectors = String::new();
        for k in 0..n / per {
            connectors.push_str(&format!(
                "(\n  name: \"plc{k}\",\n  connection: \"connector=ModbusTcp; host=127.0.0.1; port={port}; unit_id={}; timeout=2\",\n  interval_ms: 100,\n  tags: [\n{}  ],\n ),\n",
                k + 1,
                tags.replace("name: \"T", &format!("name: \"U{k}T"))
            ));
        }
        let cfg = dir.join("rtds.ron");
        std::fs::write(
            &cfg,
            format!(
                "(\n cycle_ms: 100,\n log: (file: \"rtds.log\"),\n storage: (path: \"rtds.db\"),\n connectors: [\n{connectors}],\n)\n"
            ),
        )
        .unwrap();
        let started = Instant::now();
        let child = start_rtds(&cfg);
        let pid = child.0.id();
        let (mut value, mut row, mut segment) = (None, None, None);
        let run = Duration::from_secs(if n == 10_000 { 60 } else { 30 });
        while started.elapsed() < run
            || (n == 10_000 && segment.is_none() && started.elapsed() < Duration::from_secs(90))
        {
            if n == 10_000 {
                let at = started.elapsed().as_secs_f64();
                if value.is_none() && first_good(&dir.join("rtds.db")) {
                    value = Some(at);
                }
                if row.is_none() && has_rows(&dir.join("staging/open.sqlite")) {
                    row = Some(at);
                }
                if segment.is_none()
                    && std::fs::read_dir(dir.join("outbox")).is_ok_and(|d| {
                        d.flatten()
                            .any(|e| e.file_name().to_string_lossy().starts_with("seg-"))
                    })
                {
                    segment = Some(at);
                }
                std::thread::sleep(Duration::from_millis(10));
            } else {
                std::thread::sleep(Duration::from_millis(500));
            }
        }
        let peak_kb = status_kb(pid, "VmHWM:");
        stop_rtds(child);
        peaks.push(peak_kb);
        let k = match n {
            1_000 => "1k",
            10_000 => "10k",
            _ => "100k",
        };
        figures.push(Figure {
            key: Box::leak(format!("rss_peak_{k}_tags_mb").into_boxed_str()),
            label: format!("peak resident memory, {n} tags, {} s", run.as_secs()),
            value: peak_kb / 1024.0,
            unit: "MiB",
        });
        if n == 10_000 {
            for (key, label, v) in [
                (
                    "startup_first_value_s",
                    "start-up, 10,000 tags: to the first stored value",
                    value,
                ),
                (
                    "startup_first_row_s",
                    "start-up: to the first device row in the open segment",
                    row,
                ),
                (
                    "startup_first_segment_s",
                    "start-up: to the first published segment (closes at 60 s)",
                    segment,
                ),
            ] {
                figures.push(Figure {
                    key,
                    label: label.into(),
                    value: v.unwrap_or(f64::NAN),
                    unit: "s",
                });
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
    figures.push(Figure {
        key: "rss_bytes_per_tag_1k_10k",
        label: "memory per tag, 1,000 → 10,000 tags".into(),
        value: (peaks[1] - peaks[0]) * 1024.0 / 9_000.0,
        unit: "B",
    });
    figures.push(Figure {
        key: "rss_bytes_per_tag_10k_100k",
        label: "memory per tag, 10,000 → 100,000 tags".into(),
        value: (peaks[2] - peaks[1]) * 1024.0 / 90_000.0,
        unit: "B",
    });
}

fn first_good(db: &std::path::Path) -> bool {
    rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .and_then(|c| {
            c.query_row(
                "SELECT count(*) FROM current WHERE name = 'U0T0' AND status = 0",
                [],
                |r| r.get::<_, i64>(0),
            )
        })
        .is_ok_and(|n| n > 0)
}

fn has_rows(segment: &std::path::Path) -> bool {
    segment.exists()
        && rusqlite::Connection::open_with_flags(
            segment,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .and_then(|c| {
            // A device tag's row, not storage's own start-up diagnostics.
            c.query_row(
                "SELECT count(*) FROM archive_named WHERE name = 'U0T0'",
                [],
                |r| r.get::<_, i64>(0),
            )
        })
        .is_ok_and(|n| n > 0)
}

/// Cycle start lateness at a 100 ms cycle with 1,000 tags over 60 s, as
/// RTDS logs it at shutdown.
fn jitter(figures: &mut Vec<Figure>) {
    let dir = bench_dir("jitter");
    let (_sim, port) = start_sim(&dir, false);
    let (tags, _) = mixed_tags(1_000);
    let cfg = rtds_config(&dir, port, &tags, 100, 100);
    let child = start_rtds(&cfg);
    std::thread::sleep(Duration::from_secs(60));
    stop_rtds(child);
    let log = std::fs::read_to_string(dir.join("rtds.log")).unwrap_or_default();
    let line = log
        .lines()
        .find(|l| l.contains("cycle start lateness"))
        .unwrap_or("")
        .to_string();
    let grab = |tag: &str| -> f64 {
        line.split(tag)
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(f64::NAN)
    };
    figures.push(Figure {
        key: "jitter_p50_ms",
        label: "cycle start lateness p50, 100 ms cycle, 1,000 tags, 60 s".into(),
        value: grab("p50 "),
        unit: "ms",
    });
    figures.push(Figure {
        key: "jitter_p99_ms",
        label: "cycle start lateness p99".into(),
        value: grab("p99 "),
        unit: "ms",
    });
    let _ = std::fs::remove_dir_all(&dir);
}

/// Stripped release binaries: this machine's, and the ARM ones if built.
/// OPC UA poll mode end to end, server → `current`: `n` Double nodes read
/// back to back for 10 s from open62541's own server (in this process, on
/// a thread: a fast peer, so the figure is RTDS's side). The values change
/// between reads, so every read is new data.
#[cfg(feature = "opcua")]
fn opcua_poll_throughput(figures: &mut Vec<Figure>, n: usize) {
    use open62541::{ServerBuilder, VariableNode, ua};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let dir = bench_dir("opcua");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (server, runner) = ServerBuilder::default().port(port).build();
    let ids: Vec<ua::NodeId> = (0..n)
        .map(|i| {
            let id = ua::NodeId::string(1, &format!("v.{i}"));
            server
                .add_variable_node(VariableNode {
                    requested_new_node_id: Some(id.clone()),
                    // Objects folder (i=85), Organizes (i=35),
                    // BaseDataVariableType (i=63), Double (i=11).
                    parent_node_id: ua::NodeId::ns0(85),
                    reference_type_id: ua::NodeId::ns0(35),
                    browse_name: ua::QualifiedName::new(1, &format!("v{i}")),
                    type_definition: ua::NodeId::ns0(63),
                    attributes: ua::VariableAttributes::default()
                        .with_data_type(&ua::NodeId::ns0(11)),
                })
                .expect("add node");
            server
                .write_value(&id, &ua::Variant::scalar(ua::Double::new(i as f64)))
                .unwrap();
            id
        })
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    let run =
        std::thread::spawn(move || runner.run_until_cancelled(|| stopped.load(Ordering::Relaxed)));
    // The values move: a writer thread bumps a tenth of them all the time.
    let server = Arc::new(server);
    let writer = {
        let (server, stop) = (server.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut k = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for id in ids.iter().step_by(10) {
                    let _ = server.write_value(id, &ua::Variant::scalar(ua::Double::new(k as f64)));
                }
                k += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let tags: String = (0..n)
        .map(|i| format!("(name: \"U{i}\", address: \"ns=1;s=v.{i}\"),\n"))
        .collect();
    let cfg = dir.join("rtds.ron");
    std::fs::write(
        &cfg,
        format!(
            "(\n cycle_ms: 1,\n log: (file: \"rtds.log\"),\n storage: (path: \"rtds.db\"),\n connectors: [(\n  name: \"ua\",\n  connection: \"connector=OpcUa; endpoint=opc.tcp://127.0.0.1:{port}; timeout=5\",\n  tags: [\n{tags}  ],\n )],\n)\n"
        ),
    )
    .unwrap();
    let child = start_rtds(&cfg);
    let pid = child.0.id();
    let db = dir.join("rtds.db");
    let deadline = Instant::now() + Duration::from_secs(30);
    while current_int(&db, "ua._requests") < 5 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(1));
    let (r0, c0, t0) = (
        current_int(&db, "ua._requests"),
        cpu_secs(pid),
        Instant::now(),
    );
    std::thread::sleep(Duration::from_secs(10));
    let (r1, c1, secs) = (
        current_int(&db, "ua._requests"),
        cpu_secs(pid),
        t0.elapsed().as_secs_f64(),
    );
    let rss = status_kb(pid, "VmHWM:");
    stop_rtds(child);
    stop.store(true, Ordering::Relaxed);
    let _ = writer.join();
    let _ = run.join();
    let reads = (r1 - r0) as f64;
    let values = reads * n as f64;
    for (key, label, value, unit) in [
        (
            "opcua_10k_values_per_s",
            format!("OPC UA poll, {n} nodes: values/s server → current"),
            values / secs,
            "values/s",
        ),
        (
            "opcua_10k_reads_per_s",
            format!("OPC UA poll, {n} nodes: Read calls/s"),
            reads / secs,
            "reads/s",
        ),
        (
            "opcua_10k_cpu_us_per_value",
            format!("OPC UA poll, {n} nodes: RTDS CPU per value (all threads)"),
            (c1 - c0) * 1e6 / values.max(1.0),
            "µs",
        ),
        (
            "opcua_10k_peak_rss_mb",
            format!("OPC UA poll, {n} nodes: RTDS peak resident memory"),
            rss / 1024.0,
            "MB",
        ),
    ] {
        figures.push(Figure {
            key,
            label,
            value,
            unit,
        });
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The cycle's lateness with and without 1,000 HTTP requests a second on
/// the status API (1,000 tags, 100 ms cycle, 20 s each): the page and
/// monitoring must not disturb the scan.
fn http_load(figures: &mut Vec<Figure>) {
    use std::io::{BufRead, BufReader, Write};
    let lateness = |log: &str| -> (f64, f64) {
        let line = log
            .lines()
            .find(|l| l.contains("cycle start lateness"))
            .unwrap_or("");
        let grab = |tag: &str| -> f64 {
            line.split(tag)
                .nth(1)
                .and_then(|r| r.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .unwrap_or(f64::NAN)
        };
        (grab("p50 "), grab("p99 "))
    };
    let mut results = Vec::new();
    for loaded in [false, true] {
        let dir = bench_dir(if loaded { "http-load" } else { "http-idle" });
        let (_sim, port) = start_sim(&dir, false);
        let (tags, _) = mixed_tags(1_000);
        let cfg = rtds_config(&dir, port, &tags, 100, 100);
        let http_port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let text = std::fs::read_to_string(&cfg).unwrap().replace(
            " storage: (path: \"rtds.db\"),\n",
            &format!(
                " storage: (path: \"rtds.db\"),\n http: (listen: \"127.0.0.1:{http_port}\"),\n"
            ),
        );
        std::fs::write(&cfg, text).unwrap();
        let child = start_rtds(&cfg);
        let t0 = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", http_port)).is_err()
            && t0.elapsed() < Duration::from_secs(20)
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_secs(2));
        let mut served = 0u64;
        let mut failed = 0u64;
        let mut latencies: Vec<f64> = Vec::new();
        let secs = 20.0;
        if loaded {
            // 4 clients on kept-alive connections, each paced at 250/s:
            // the tag list filtered to a few tags, the metrics, the status.
            let threads: Vec<_> = (0..4)
                .map(|k| {
                    std::thread::spawn(move || {
                        let paths = [
                            "/api/tags?filter=T10",
                            "/metrics",
                            "/api/status",
                            "/api/connectors",
                        ];
                        let mut s = std::net::TcpStream::connect(("127.0.0.1", http_port)).unwrap();
                        s.set_nodelay(true).unwrap();
                        let mut r = BufReader::new(s.try_clone().unwrap());
                        let start = Instant::now();
                        let (mut ok, mut bad, mut lat) = (0u64, 0u64, Vec::new());
                        let mut i = 0u64;
                        while start.elapsed().as_secs_f64() < secs {
                            let due = start + Duration::from_micros(i * 4000 + k * 1000);
                            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                                std::thread::sleep(wait);
                            }
                            let sent = Instant::now();
                            let path = paths[(i as usize) % paths.len()];
                            if write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").is_err()
                            {
                                bad += 1;
                                break;
                            }
                            let mut len = 0usize;
                            let mut status = String::new();
                            let mut line = String::new();
                            loop {
                                line.clear();
                                if r.read_line(&mut line).unwrap_or(0) == 0 {
                                    break;
                                }
                                if status.is_empty() {
                                    status = line.clone();
                                }
                                if let Some(v) =
                                    line.to_ascii_lowercase().strip_prefix("content-length:")
                                {
                                    len = v.trim().parse().unwrap_or(0);
                                }
                                if line == "\r\n" {
                                    break;
                                }
                            }
                            let mut body = vec![0u8; len];
                            let _ = std::io::Read::read_exact(&mut r, &mut body);
                            if status.contains(" 200 ") {
                                ok += 1;
                                lat.push(sent.elapsed().as_secs_f64() * 1000.0);
                            } else {
                                bad += 1;
                            }
                            i += 1;
                        }
                        (ok, bad, lat)
                    })
                })
                .collect();
            for t in threads {
                let (ok, bad, lat) = t.join().unwrap();
                served += ok;
                failed += bad;
                latencies.extend(lat);
            }
        } else {
            std::thread::sleep(Duration::from_secs_f64(secs));
        }
        stop_rtds(child);
        let log = std::fs::read_to_string(dir.join("rtds.log")).unwrap_or_default();
        results.push((lateness(&log), served, failed, latencies));
        let _ = std::fs::remove_dir_all(&dir);
    }
    let ((idle50, idle99), _, _, _) = results[0];
    let ((load50, load99), served, failed, ref mut lat) = results[1];
    lat.sort_by(f64::total_cmp);
    let p99 = lat
        .get(lat.len().saturating_sub(1) * 99 / 100)
        .copied()
        .unwrap_or(f64::NAN);
    for (key, label, value, unit) in [
        (
            "http_idle_lateness_p99_ms",
            "cycle lateness p99, 1,000 tags, no HTTP load".to_string(),
            idle99,
            "ms",
        ),
        (
            "http_load_lateness_p99_ms",
            "cycle lateness p99, same, 1,000 HTTP requests/s".to_string(),
            load99,
            "ms",
        ),
        (
            "http_idle_lateness_p50_ms",
            "cycle lateness p50, no HTTP load".to_string(),
            idle50,
            "ms",
        ),
        (
            "http_load_lateness_p50_ms",
            "cycle lateness p50, 1,000 HTTP requests/s".to_string(),
            load50,
            "ms",
        ),
        (
            "http_requests_per_s",
            "HTTP requests served per second (4 clients)".to_string(),
            served as f64 / 20.0,
            "req/s",
        ),
        (
            "http_failed_requests",
            "HTTP requests failed under load".to_string(),
            failed as f64,
            "req",
        ),
        (
            "http_latency_p99_ms",
            "HTTP request latency p99 under load".to_string(),
            p99,
            "ms",
        ),
    ] {
        figures.push(Figure {
            key,
            label,
            value,
            unit,
        });
    }
}

fn binary_sizes(figures: &mut Vec<Figure>) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
    for (key, label, path) in [
        (
            "size_x86_64_mb",
            "rtds binary, x86-64 (release, stripped, with ODBC)",
            "release/rtds",
        ),
        (
            "size_aarch64_mb",
            "rtds binary, aarch64 (make cross-aarch64)",
            "aarch64-unknown-linux-gnu/release/rtds",
        ),
        (
            "size_armv7_mb",
            "rtds binary, armv7 (make cross-armv7)",
            "armv7-unknown-linux-gnueabihf/release/rtds",
        ),
    ] {
        if let Ok(m) = std::fs::metadata(root.join(path)) {
            figures.push(Figure {
                key,
                label: label.into(),
                value: m.len() as f64 / 1e6,
                unit: "MB",
            });
        }
    }
}

/// Instructions counted by valgrind's callgrind: stable where CPU time is
/// not (frequency, other load, the cache a neighbour left). Each figure is
/// marginal: two runs of the same program with a small and a larger fixed
/// amount of work, the difference divided by the difference in work, so
/// start-up, registration and the final flush cancel out. Per thread, so
/// the cost is seen where it is paid.
fn instructions(figures: &mut Vec<Figure>) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let profiling = root.join("target/profiling");
    let (rtds_bin, load_bin) = (
        profiling.join("rtds"),
        profiling.join("examples/archive_load"),
    );
    let have_valgrind = std::process::Command::new("valgrind")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !have_valgrind || !rtds_bin.exists() || !load_bin.exists() {
        println!(
            "instruction counts skipped: needs valgrind and `cargo build --profile profiling --bins --example archive_load` (make bench does both)"
        );
        return;
    }
    let mut push = |key: &str, label: String, value: f64, unit: &'static str| {
        println!("{label:<58} {value:>14.0}  {unit}");
        figures.push(Figure {
            key: Box::leak(key.to_string().into_boxed_str()),
            label,
            value,
            unit,
        });
    };
    let dir = bench_dir("callgrind");

    // Acquisition: 10,000 mixed tags from the simulator's changing map,
    // every value different on every read; nothing archived after each
    // tag's first row (a deadband no change reaches) and `current` written
    // only at the stop, which both runs share. The scan is the issue's, a
    // 100 ms cycle: at a 1 ms cycle the loop's per-cycle work is counted
    // some fifty times over, valgrind being that much slower per request
    // and not per cycle, so the loop's figure there grew with the
    // machine's slowness (reported below on its own line).
    const TAGS: usize = 10_000;
    const CYCLE_MS: u64 = 100;
    let (tags, _) = mixed_tags(TAGS);
    let scan_run = |scans: u64, cycle_ms: u64| -> Option<(Vec<(String, u64)>, f64)> {
        let run = dir.join(format!("scan{scans}-{cycle_ms}"));
        std::fs::create_dir_all(&run).unwrap();
        let (_sim, port) = start_sim_with(&run, &["--changing"]);
        let cfg = changing_scan_config(&run, port, &tags, cycle_ms);
        let threads = callgrind(
            &run,
            &rtds_bin,
            &[
                "run".as_ref(),
                "-c".as_ref(),
                cfg.as_os_str(),
                "--scans".as_ref(),
                scans.to_string().as_ref(),
            ],
        )?;
        let requests = current_int(&run.join("rtds.db"), "plc._requests") as f64;
        Some((threads, requests))
    };
    // 60 scans apart (9,600 requests): the start's and the stop's work is
    // the same in both runs, but what its allocations cost varies with the
    // heap's state by a few million instructions, which 20 scans apart
    // spread into a storage figure that varied by 1,500 per request.
    let (Some((small, r_small)), Some((large, r_large))) =
        (scan_run(4, CYCLE_MS), scan_run(64, CYCLE_MS))
    else {
        println!(
            "instruction counts: the rtds runs under callgrind failed (see {})",
            dir.display()
        );
        return;
    };
    let requests = r_large - r_small;
    let mut total = 0.0;
    for (thread, n) in &large {
        let before = small.iter().find(|(t, _)| t == thread).map_or(0, |x| x.1);
        let per = (*n as f64 - before as f64) / requests;
        total += per;
        push(
            &format!("instr_per_request_{thread}"),
            format!("instructions per request, {thread} thread (10k tags changing)"),
            per,
            "instr",
        );
    }
    push(
        "instr_per_request",
        format!("instructions per 125-register request, all threads ({TAGS} tags changing)"),
        total,
        "instr",
    );
    if let (Some((small, r_small)), Some((large, r_large))) = (scan_run(4, 1), scan_run(64, 1)) {
        let of = |t: &[(String, u64)]| t.iter().find(|(n, _)| n == "loop").map_or(0, |x| x.1);
        push(
            "instr_per_request_loop_1ms",
            "  the loop thread at a 1 ms cycle".into(),
            (of(&large) as f64 - of(&small) as f64) / (r_large - r_small),
            "instr",
        );
    }

    // CPU time of the same scans natively (the release build, no valgrind):
    // more of them, so the clock's ticks do not matter.
    let native_run = |scans: u64| -> Option<(f64, (f64, f64))> {
        let run = dir.join(format!("native{scans}"));
        timed_scans(
            &run,
            &tags,
            scans,
            1,
            std::process::Command::new(env!("CARGO_BIN_EXE_rtds")),
        )
    };
    if let (Some((ra, ca)), Some((rb, cb))) = (native_run(50), native_run(550)) {
        let per = |a: f64, b: f64| (b - a) * 1e6 / (rb - ra);
        push(
            "cpu_us_per_request_changing",
            format!("CPU per request, {TAGS} tags changing (x86-64, release)"),
            per(ca.0 + ca.1, cb.0 + cb.1),
            "µs",
        );
        // The instructions above are user space; the kernel's share (the
        // socket's send and receive, thread wake-ups) is most of the time
        // and varies from run to run with the machine.
        push(
            "cpu_us_per_request_changing_user",
            "  of which user space".into(),
            per(ca.0, cb.0),
            "µs",
        );
        push(
            "cpu_us_per_request_changing_system",
            "  of which kernel".into(),
            per(ca.1, cb.1),
            "µs",
        );
    }

    // The same scans by the aarch64 build (make cross-aarch64, or the
    // binary RTDS_AARCH64_BIN names) under qemu-aarch64, counted by a
    // small TCG plugin the bench builds: qemu's vCPU per thread, numbered
    // in the order RTDS starts its threads.
    let aarch64 = std::env::var_os("RTDS_AARCH64_BIN")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| root.join("target/aarch64-unknown-linux-gnu/release/rtds"));
    match (aarch64.exists(), build_qemu_counter(&dir)) {
        (true, Some(plugin)) => {
            // (instructions per thread, requests, CPU seconds of qemu); the
            // CPU time from runs without the plugin, which slows qemu.
            let qemu_run = |scans: u64, count: bool| -> Option<(Vec<u64>, f64, f64)> {
                let run = dir.join(format!("qemu{scans}{count}"));
                let counts = run.join("insns.txt");
                let mut cmd = std::process::Command::new("qemu-aarch64");
                cmd.args(["-L", "/usr/aarch64-linux-gnu"]);
                if count {
                    cmd.arg("-plugin").arg(format!(
                        "{},out={}",
                        plugin.display(),
                        counts.display()
                    ));
                }
                // Counted: the scan above; timed: back to back, as natively.
                let cycle_ms = if count { CYCLE_MS } else { 1 };
                let (requests, (user, system)) = timed_scans(&run, &tags, scans, cycle_ms, {
                    cmd.arg(&aarch64);
                    cmd
                })?;
                let per_thread = if count {
                    std::fs::read_to_string(&counts)
                        .ok()?
                        .lines()
                        .filter_map(|l| l.split_whitespace().nth(1)?.parse().ok())
                        .collect()
                } else {
                    Vec::new()
                };
                Some((per_thread, requests, user + system))
            };
            // Many more scans than the counted runs: qemu's translation of
            // the code and the start's work are a large, varying cost that
            // 20 scans did not outweigh (the figure came out negative).
            if let (Some((_, ra, ca)), Some((_, rb, cb))) =
                (qemu_run(4, false), qemu_run(204, false))
            {
                push(
                    "aarch64_qemu_cpu_us_per_request",
                    "aarch64 (qemu-aarch64 on this x86-64): CPU per request".into(),
                    (cb - ca) * 1e6 / (rb - ra),
                    "µs",
                );
            }
            if let (Some((a, ra, _)), Some((b, rb, _))) = (qemu_run(4, true), qemu_run(64, true)) {
                let names = ["loop", "signals", "storage", "connector"];
                let mut total = 0.0;
                for (i, n) in b.iter().enumerate() {
                    let per = (*n as f64 - a.get(i).copied().unwrap_or(0) as f64) / (rb - ra);
                    total += per;
                    let name = names.get(i).copied().unwrap_or("other");
                    push(
                        &format!("aarch64_instr_per_request_{name}"),
                        format!("aarch64 (qemu): instructions per request, {name} thread"),
                        per,
                        "instr",
                    );
                }
                push(
                    "aarch64_instr_per_request",
                    "aarch64 (qemu): instructions per request, all threads".into(),
                    total,
                    "instr",
                );
            } else {
                println!("aarch64 instruction counts: the runs under qemu failed");
            }
        }
        _ => println!(
            "aarch64 instruction counts skipped: needs {} (make cross-aarch64), qemu-aarch64 and cc",
            aarch64.display()
        ),
    }

    // The floor: libmodbus's loop, same requests, same simulator.
    if let Some(bin) = build_libmodbus_loop(&dir) {
        let run = |n: u32| -> Option<u64> {
            let (_sim, port) = start_sim_with(&dir, &["--changing"]);
            let t = callgrind(
                &dir,
                &bin,
                &[port.to_string().as_ref(), n.to_string().as_ref()],
            )?;
            Some(t.iter().map(|x| x.1).sum())
        };
        if let (Some(a), Some(b)) = (run(200), run(2200)) {
            let per = (b as f64 - a as f64) / 2000.0;
            push(
                "libmodbus_instr_per_request",
                "instructions per request, libmodbus C loop".into(),
                per,
                "instr",
            );
            push(
                "rtds_vs_libmodbus_instr_ratio",
                "RTDS / libmodbus, instructions per request".into(),
                total / per,
                "ratio",
            );
        }
    }

    // The archive: storage's thread per archived row (every tag changing
    // every cycle, a time stamp per sample; `current` written at the stop,
    // the same in both runs), and the raw insert of the same rows.
    const ROWS_TAGS: usize = 10_000;
    let load = |args: &[&str]| -> Option<u64> {
        let run = dir.join(format!("load-{}", args.join("-")));
        std::fs::create_dir_all(&run).unwrap();
        let mut a: Vec<&std::ffi::OsStr> = vec![args[0].as_ref(), run.as_os_str()];
        a.extend(args[1..].iter().map(|s| std::ffi::OsStr::new(*s)));
        let t = callgrind(&run, &load_bin, &a)?;
        // The work is on the one thread it starts (storage's, the insert's).
        t.iter()
            .find(|(name, _)| name != "main")
            .or(t.last())
            .map(|x| x.1)
    };
    let t = ROWS_TAGS.to_string();
    let t = t.as_str();
    let rows = (5 * ROWS_TAGS) as f64;
    let archive = load(&["rtds", t, "2", "3600000"])
        .zip(load(&["rtds", t, "7", "3600000"]))
        .map(|(a, b)| (b as f64 - a as f64) / rows);
    let raw = load(&["raw", t, "2"])
        .zip(load(&["raw", t, "7"]))
        .map(|(a, b)| (b as f64 - a as f64) / rows);
    if let Some(a) = archive {
        push(
            "instr_per_archived_row",
            "instructions per archived row, storage thread".into(),
            a,
            "instr",
        );
        if let Some(r) = raw {
            push(
                "raw_insert_instr_per_row",
                "instructions per row, raw prepared rusqlite insert".into(),
                r,
                "instr",
            );
            push(
                "archive_vs_raw_instr_ratio",
                "RTDS archive / raw insert, instructions per row".into(),
                a / r,
                "ratio",
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Runs `program` (an `rtds` binary, or a command ending in one) for
/// `scans` of the changing scan in `run`: (requests, (user, system) CPU
/// seconds). The CPU time is the program's alone (the simulator is reaped
/// after).
fn timed_scans(
    run: &std::path::Path,
    tags: &str,
    scans: u64,
    cycle_ms: u64,
    mut program: std::process::Command,
) -> Option<(f64, (f64, f64))> {
    std::fs::create_dir_all(run).ok()?;
    let (_sim, port) = start_sim_with(run, &["--changing"]);
    let cfg = changing_scan_config(run, port, tags, cycle_ms);
    let cpu0 = children_cpu_secs();
    let status = program
        .args(["run", "-c"])
        .arg(&cfg)
        .args(["--scans", &scans.to_string()])
        .current_dir(run)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .ok()?;
    let cpu1 = children_cpu_secs();
    let cpu = (cpu1.0 - cpu0.0, cpu1.1 - cpu0.1);
    status.success().then(|| {
        (
            current_int(&run.join("rtds.db"), "plc._requests") as f64,
            cpu,
        )
    })
}

/// The scan the instruction counts measure: `tags` from the changing
/// simulator on `port`, read every cycle of `cycle_ms` (1: back to back),
/// nothing archived after each tag's first row (a deadband no change
/// reaches) and `current` written at the stop only (the same in every run,
/// so it cancels).
fn changing_scan_config(
    dir: &std::path::Path,
    port: u16,
    tags: &str,
    cycle_ms: u64,
) -> std::path::PathBuf {
    let cfg = dir.join("rtds.ron");
    std::fs::write(
        &cfg,
        format!(
            "(\n cycle_ms: {cycle_ms},\n log: (file: \"rtds.log\"),\n storage: (path: \"rtds.db\", current_interval_ms: 3600000, archive: (deadband: 1e300, heartbeat_s: 0)),\n connectors: [(\n  name: \"plc\",\n  connection: \"connector=ModbusTcp; host=127.0.0.1; port={port}; timeout=30\",\n  interval_ms: {cycle_ms},\n  tags: [\n{tags}  ],\n )],\n)\n"
        ),
    )
    .unwrap();
    cfg
}

/// A TCG plugin for qemu-user counting the instructions each vCPU (each
/// thread of the program) executes, written at exit to the file given as
/// `out=`. Debian ships qemu without its example plugins or the header,
/// so the few declarations of QEMU's plugin API (version 1, as in 7.2)
/// are here.
fn build_qemu_counter(dir: &std::path::Path) -> Option<std::path::PathBuf> {
    let src = dir.join("count.c");
    std::fs::write(&src, QEMU_COUNTER).ok()?;
    let lib = dir.join("libcount.so");
    let built = std::process::Command::new("cc")
        .args(["-O2", "-shared", "-fPIC", "-o"])
        .arg(&lib)
        .arg(&src)
        .status();
    let qemu = std::process::Command::new("qemu-aarch64")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    (qemu && built.is_ok_and(|s| s.success())).then_some(lib)
}

const QEMU_COUNTER: &str = r#"#include <stdint.h>
#include <stdio.h>
#include <string.h>
typedef uint64_t qemu_plugin_id_t;
struct qemu_plugin_tb;
typedef struct qemu_info_t qemu_info_t;
enum qemu_plugin_cb_flags { QEMU_PLUGIN_CB_NO_REGS, QEMU_PLUGIN_CB_R_REGS, QEMU_PLUGIN_CB_RW_REGS };
typedef void (*tb_trans_cb)(qemu_plugin_id_t id, struct qemu_plugin_tb *tb);
typedef void (*vcpu_udata_cb)(unsigned int vcpu_index, void *userdata);
typedef void (*udata_cb)(qemu_plugin_id_t id, void *userdata);
void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t id, tb_trans_cb cb);
size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *tb);
void qemu_plugin_register_vcpu_tb_exec_cb(struct qemu_plugin_tb *tb, vcpu_udata_cb cb, enum qemu_plugin_cb_flags flags, void *userdata);
void qemu_plugin_register_atexit_cb(qemu_plugin_id_t id, udata_cb cb, void *userdata);
__attribute__((visibility("default"))) int qemu_plugin_version = 1;
#define MAX 256
static uint64_t counts[MAX];
static const char *out_path = "qemu-insns.txt";
/* Each vCPU adds to its own slot only: no lock needed. */
static void exec(unsigned int vcpu, void *n) { if (vcpu < MAX) counts[vcpu] += (uintptr_t)n; }
static void trans(qemu_plugin_id_t id, struct qemu_plugin_tb *tb) {
    qemu_plugin_register_vcpu_tb_exec_cb(tb, exec, QEMU_PLUGIN_CB_NO_REGS,
                                         (void *)(uintptr_t)qemu_plugin_tb_n_insns(tb));
}
static void done(qemu_plugin_id_t id, void *p) {
    FILE *f = fopen(out_path, "w");
    if (!f) return;
    for (int i = 0; i < MAX; i++)
        if (counts[i]) fprintf(f, "%d %llu\n", i, (unsigned long long)counts[i]);
    fclose(f);
}
__attribute__((visibility("default")))
int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info, int argc, char **argv) {
    for (int i = 0; i < argc; i++)
        if (strncmp(argv[i], "out=", 4) == 0) out_path = argv[i] + 4;
    qemu_plugin_register_vcpu_tb_trans_cb(id, trans);
    qemu_plugin_register_atexit_cb(id, done, NULL);
    return 0;
}
"#;

/// Runs `program args` under callgrind, one count per thread; returns
/// (thread, instructions) with threads named by what they run.
fn callgrind(
    dir: &std::path::Path,
    program: &std::path::Path,
    args: &[&std::ffi::OsStr],
) -> Option<Vec<(String, u64)>> {
    let out = dir.join("callgrind.out");
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        if e.file_name().to_string_lossy().starts_with("callgrind.out") {
            let _ = std::fs::remove_file(e.path());
        }
    }
    let status = std::process::Command::new("valgrind")
        .arg("--tool=callgrind")
        .arg("--separate-threads=yes")
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg(program)
        .args(args)
        .current_dir(dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.join("valgrind.log")).ok()?)
        .status()
        .ok()?;
    if !status.success() {
        return None;
    }
    let mut threads = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("callgrind.out"))
        })
        .collect();
    files.sort();
    for f in files {
        let text = std::fs::read_to_string(&f).ok()?;
        let Some(total) = text
            .lines()
            .find_map(|l| l.strip_prefix("summary:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        else {
            continue;
        };
        // The first thread is the program's main (RTDS's loop runs there);
        // the others by what only they run.
        let has = |s: &str| text.contains(s);
        let name = if f.to_string_lossy().ends_with("-01") {
            if has("rtds::server::Server") {
                "loop"
            } else {
                "main"
            }
        } else if has("ModbusClient") {
            "connector"
        } else if has("rtds::storage::Writer") {
            "storage"
        } else if has("signal_hook") {
            "signals"
        } else {
            "other"
        };
        let name = name.to_string();
        match threads.iter_mut().find(|(n, _)| *n == name) {
            Some((_, n)) => *n += total,
            None => threads.push((name, total)),
        }
    }
    Some(threads)
}
