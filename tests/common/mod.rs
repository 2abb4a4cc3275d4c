//! Helpers for the end-to-end tests: real binaries, real sockets on
//! loopback, real SQLite files. Every spawned process is killed on drop and
//! every wait has a deadline.

#![allow(dead_code)]

use rusqlite::Connection;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::ChildStdin;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

/// A script counting cycles in a calculated tag: 1, 2, 3, … one per cycle
/// (back to 1 after a restart), so gaps in stored cycles are visible.
pub const TICKS: &str = r#"
    let t = server.get("Ticks");
    t.value = if t.status == 0 { t.value + 1 } else { 1 };
    t.status = 0;
    server.set(t);
"#;

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let dir =
            std::env::temp_dir().join(format!("rtds-e2e-{name}-{}-{stamp}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.0.join(rel)
    }

    pub fn write(&self, rel: &str, text: &str) -> PathBuf {
        let p = self.path(rel);
        std::fs::write(&p, text).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A process killed when dropped.
pub struct Proc {
    pub child: Child,
}

impl Proc {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on a child we own; no memory is shared.
        unsafe {
            libc::kill(self.pid(), sig);
        }
    }

    /// Waits for exit until `timeout`; None if still running.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The simulator, on a port of its own choosing (or a given one).
pub struct Sim {
    pub proc: Proc,
    pub port: u16,
}

impl Sim {
    pub fn start(args: &[&str]) -> Sim {
        Sim::start_on(0, args)
    }

    /// On a port of its own choosing, its stderr (`--log-requests`) in `log`.
    pub fn start_logged(args: &[&str], log: &Path) -> Sim {
        Sim::spawn(0, args, Some(log))
    }

    pub fn start_on(port: u16, args: &[&str]) -> Sim {
        Sim::spawn(port, args, None)
    }

    fn spawn(port: u16, args: &[&str], log: Option<&Path>) -> Sim {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut child = Command::new(env!("CARGO_BIN_EXE_rtds-sim"))
                .args(["--port", &port.to_string()])
                .args(args)
                .stdout(Stdio::piped())
                .stderr(match log {
                    Some(l) => Stdio::from(std::fs::File::create(l).unwrap()),
                    None => Stdio::null(),
                })
                .spawn()
                .expect("start rtds-sim");
            let mut line = String::new();
            BufReader::new(child.stdout.take().unwrap())
                .read_line(&mut line)
                .unwrap();
            if let Some(addr) = line.trim().strip_prefix("rtds-sim listening on ") {
                let port = addr.rsplit(':').next().unwrap().parse().unwrap();
                return Sim {
                    proc: Proc { child },
                    port,
                };
            }
            // The fixed port may still be held by the previous instance.
            let _ = child.kill();
            let _ = child.wait();
            assert!(
                Instant::now() < deadline,
                "rtds-sim did not start on port {port}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// `rtds` with its stderr going to a file in the test's directory.
pub struct Rtds {
    pub proc: Proc,
    pub log: PathBuf,
}

pub fn is_root() -> bool {
    // SAFETY: getuid has no preconditions.
    unsafe { libc::getuid() == 0 }
}

impl Rtds {
    pub fn start(config: &Path) -> Rtds {
        Rtds::start_with(config, &[])
    }

    /// As an unprivileged user (nobody, when the tests run as root), so
    /// that file permissions apply to it: root writes through any chmod.
    /// The config's directory is opened up for that user.
    pub fn start_unprivileged(config: &Path) -> Rtds {
        if !is_root() {
            return Rtds::start(config);
        }
        let dir = config.parent().unwrap();
        let _ = Command::new("chown")
            .args(["-R", "nobody:nogroup"])
            .arg(dir)
            .status();
        Rtds::start_with(
            config,
            &[
                "setpriv",
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "--",
            ],
        )
    }

    fn start_with(config: &Path, wrapper: &[&str]) -> Rtds {
        let log = config.with_extension("stderr");
        let mut cmd = match wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(env!("CARGO_BIN_EXE_rtds"));
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_rtds")),
        };
        let child = cmd
            .args(["run", "-c"])
            .arg(config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start rtds");
        Rtds {
            proc: Proc { child },
            log,
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then wait (bounded) for a clean exit.
    pub fn stop(&mut self) -> (ExitStatus, Duration) {
        let t0 = Instant::now();
        self.proc.signal(libc::SIGTERM);
        let st = self
            .proc
            .wait_timeout(Duration::from_secs(10))
            .expect("rtds did not exit within 10 s of SIGTERM");
        (st, t0.elapsed())
    }
}

/// Polls `cond` every 50 ms until it holds or `timeout` passes.
pub fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Opens the database read-only (None while RTDS has not created it yet).
pub fn db(path: &Path) -> Option<Connection> {
    if !path.exists() {
        return None;
    }
    let c = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).ok()?;
    c.busy_timeout(Duration::from_secs(5)).ok()?;
    Some(c)
}

/// `current` row of a tag: (value, status).
pub fn current(path: &Path, tag: &str) -> Option<(rusqlite::types::Value, i64)> {
    db(path)?
        .query_row(
            "SELECT value, status FROM current WHERE name = ?1",
            [tag],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .ok()
}

pub fn status_of(path: &Path, tag: &str) -> Option<i64> {
    current(path, tag).map(|(_, s)| s)
}

/// One archive row as a segment holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct ArchiveRow {
    pub id: i64,
    pub name: String,
    pub value: rusqlite::types::Value,
    pub status: i64,
    pub ts: String,
}

/// The segment files beside the live database `db`, in the order rows flow
/// through them: the open segment, closed ones in staging, published ones.
/// Reading in that order never misses a file that moves meanwhile (it may
/// see one twice; callers dedupe by id).
pub fn segment_files(db: &Path) -> Vec<PathBuf> {
    let dir = db.parent().unwrap();
    let mut out = vec![dir.join("staging/open.sqlite")];
    for sub in ["staging", "outbox"] {
        let mut names: Vec<PathBuf> = std::fs::read_dir(dir.join(sub))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.path())
                    .filter(|p| {
                        let n = p.file_name().unwrap().to_string_lossy();
                        n.starts_with("seg-") && n.ends_with(".sqlite")
                    })
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        out.extend(names);
    }
    out
}

/// Every archive row RTDS has written (open, staged and published
/// segments), by id.
pub fn archive_rows(db: &Path) -> Vec<ArchiveRow> {
    let mut rows = std::collections::BTreeMap::new();
    for f in segment_files(db) {
        let Ok(c) = Connection::open_with_flags(&f, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        else {
            continue;
        };
        c.busy_timeout(Duration::from_secs(5)).unwrap();
        let Ok(mut st) = c.prepare("SELECT id, name, value, status, ts FROM archive_named") else {
            continue;
        };
        let got = st.query_map([], |r| {
            Ok(ArchiveRow {
                id: r.get(0)?,
                name: r.get(1)?,
                value: r.get(2)?,
                status: r.get(3)?,
                ts: r.get(4)?,
            })
        });
        let Ok(got) = got else { continue };
        for r in got.flatten() {
            rows.insert(r.id, r);
        }
    }
    rows.into_values().collect()
}

/// Archive rows of a tag in order: (value, status).
pub fn archive(db: &Path, tag: &str) -> Vec<(rusqlite::types::Value, i64)> {
    archive_rows(db)
        .into_iter()
        .filter(|r| r.name == tag)
        .map(|r| (r.value, r.status))
        .collect()
}

/// A config with one Modbus connector per `(name, port, extra keys)`, the
/// given tag lines per connector, and scripts.
pub fn config(
    dir: &TempDir,
    cycle_ms: u64,
    connectors: &[(&str, u16, &str, &str)],
    scripts: &[(&str, &str)],
) -> PathBuf {
    let mut conns = String::new();
    for (name, port, extra, tags) in connectors {
        // Test defaults (short timeout and back-off), overridden by `extra`.
        let mut keys: Vec<(String, String)> =
            [("timeout", "1"), ("retry_min", "0.2"), ("retry_max", "0.5")]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
        for kv in extra.split(';').map(str::trim).filter(|kv| !kv.is_empty()) {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            keys.retain(|(key, _)| key != k);
            keys.push((k.to_string(), v.to_string()));
        }
        let keys: String = keys.iter().map(|(k, v)| format!("; {k}={v}")).collect();
        conns.push_str(&format!(
            "        (\n            name: \"{name}\",\n            connection: \"connector=ModbusTcp; host=127.0.0.1; port={port}; unit_id=1{keys}\",\n            interval_ms: {cycle_ms},\n            tags: [\n{tags}\n            ],\n        ),\n"
        ));
    }
    let mut scr = String::new();
    for (name, src) in scripts {
        dir.write(&format!("{name}.rhai"), src);
        scr.push_str(&format!("        (file: \"{name}.rhai\"),\n"));
    }
    let text = format!(
        "(\n    cycle_ms: {cycle_ms},\n    log: (file: \"rtds.log\", level: \"info\"),\n    storage: (path: \"rtds.db\"),\n    connectors: [\n{conns}    ],\n    scripts: [\n{scr}    ],\n)\n"
    );
    dir.write("rtds.ron", &text)
}

pub fn int(v: &rusqlite::types::Value) -> i64 {
    match v {
        rusqlite::types::Value::Integer(i) => *i,
        other => panic!("expected an integer, got {other:?}"),
    }
}

/// The independent peer: pymodbus's server (tests/peers/pymodbus_peer.py)
/// in the project's venv. Its stdout, one line per request served, goes to
/// a file in the test's directory.
pub struct Peer {
    pub proc: Proc,
    pub port: u16,
    pub log: PathBuf,
}

/// The venv's python: `RTDS_PYTHON`, else `.venv/bin/python` (made by
/// `make venv`, which `make test` and `.ci/run` call).
pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("RTDS_PYTHON") {
        return PathBuf::from(p);
    }
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    assert!(
        p.exists(),
        "{} missing: run `make venv` to install the pymodbus peer the tests need",
        p.display()
    );
    p
}

impl Peer {
    pub fn start(dir: &TempDir) -> Peer {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/pymodbus_peer.py");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let log = dir.path(&format!("peer-{port}.log"));
            let child = Command::new(python())
                .arg(&script)
                .arg(port.to_string())
                .stdout(std::fs::File::create(&log).unwrap())
                .stderr(Stdio::null())
                .spawn()
                .expect("start the pymodbus peer");
            let mut proc = Proc { child };
            // Up once it accepts a connection; a port taken meanwhile makes it exit.
            loop {
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Peer { proc, port, log };
                }
                if proc.child.try_wait().unwrap().is_some() || Instant::now() > deadline {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            assert!(Instant::now() < deadline, "pymodbus peer did not start");
        }
    }

    /// The requests the peer served, as (function code, address, count);
    /// count is in registers for bit functions (pymodbus's bookkeeping).
    pub fn requests(&self) -> Vec<(u8, u16, u16)> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let mut it = l
                    .strip_prefix("request ")?
                    .split(' ')
                    .map(|x| x.parse::<u16>().ok());
                Some((it.next()?? as u8, it.next()??, it.next()??))
            })
            .collect()
    }
}

/// Runs `rtds ARGS` to completion (bounded) and returns (exit code, stdout, stderr).
pub fn rtds_cmd(args: &[&str], config: &Path) -> (Option<i32>, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_rtds"))
        .args(args)
        .arg("-c")
        .arg(config)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("rtds {args:?} did not finish within 60 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Asserts that `rtds check` refuses `config` (exit 2) with `expected` in
/// its message, pointing at `at` (`file:line`, or a prefix of it).
pub fn assert_check_refuses(config: &Path, expected: &str, at: &str) {
    let (code, out, err) = rtds_cmd(&["check"], config);
    assert_eq!(code, Some(2), "{expected}: {out}{err}");
    assert!(err.contains(expected), "expected `{expected}`: {err}");
    assert!(err.contains(at), "names `{at}`: {err}");
}

/// The current value of the `Ticks` counter (0 until it is good).
pub fn ticks(db: &Path) -> i64 {
    match current(db, "Ticks") {
        Some((rusqlite::types::Value::Integer(n), 0)) => n,
        _ => 0,
    }
}

/// Every run's `Ticks` values are gapless 1..k (a run restarts at 1);
/// returns the runs' lengths.
pub fn tick_runs(db: &Path) -> Vec<i64> {
    let values: Vec<i64> = archive(db, "Ticks").iter().map(|r| int(&r.0)).collect();
    let mut runs = Vec::new();
    for (i, v) in values.iter().enumerate() {
        if *v == 1 {
            runs.push(1);
        } else {
            assert_eq!(
                *v,
                values[i - 1] + 1,
                "gap inside a run at row {i}: {values:?}"
            );
            *runs.last_mut().unwrap() = *v;
        }
    }
    runs
}

/// Cycles a run reported in its shutdown line.
pub fn cycles_logged(log: &str) -> i64 {
    log.lines()
        .rev()
        .find_map(|l| l.split("rtds stopped after ").nth(1))
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no shutdown line in:\n{log}"))
}

/// Asserts that no tag's archived time stamps go backwards (rows in id
/// order, time stamps compared as the fixed-width ISO text they are).
pub fn assert_ts_monotonic(db: &Path) {
    let mut last: std::collections::HashMap<String, String> = Default::default();
    for r in archive_rows(db) {
        if let Some(prev) = last.get(&r.name) {
            assert!(
                *prev <= r.ts,
                "tag {} goes back in time: {prev} then {} (id {})",
                r.name,
                r.ts,
                r.id
            );
        }
        last.insert(r.name.clone(), r.ts.clone());
    }
}

/// The independent Modbus client (the `modbus` crate) on 127.0.0.1:`port`.
pub fn modbus_client(port: u16) -> modbus::tcp::Transport {
    let cfg = modbus::tcp::Config {
        tcp_port: port,
        tcp_read_timeout: Some(Duration::from_secs(2)),
        ..Default::default()
    };
    modbus::tcp::Transport::new_with_cfg("127.0.0.1", cfg).unwrap()
}

/// Starts `cmd` with stdout piped; returns it and a channel of its stdout
/// lines (read by a thread, so every wait on it has a deadline).
pub fn spawn_lines(mut cmd: Command) -> (Proc, Receiver<String>, Option<ChildStdin>) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start {cmd:?}: {e}"));
    let out = child.stdout.take().unwrap();
    let stdin = child.stdin.take();
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (Proc { child }, rx, stdin)
}

/// The next line starting with `prefix`, within `timeout`.
pub fn line_starting(rx: &Receiver<String>, prefix: &str, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) if l.starts_with(prefix) => return l,
            Ok(_) => {}
            Err(e) => panic!("no line starting with `{prefix}` within {timeout:?}: {e}"),
        }
    }
}
