//! Modbus RTU end to end: RTDS on one end of a serial line (a `socat` pty
//! pair), pymodbus's RTU server (tests/peers/rtu_peer.py, several unit ids
//! with different register maps) on the other; for faults, the relay
//! tests/peers/rtu_relay.py between them. Expected values come from the
//! peer's map and Python's `struct` (`rtu_peer.py --pack`), never from RTDS.
//!
//! A pty refuses parity, so every line here is 8N1.

mod common;

use common::*;
use serde_json::Value as Json;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn peers() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers")
}

/// A serial line without hardware: two ptys joined by socat.
struct PtyPair {
    _socat: Proc,
    /// RTDS's end.
    a: PathBuf,
    /// The device's end.
    b: PathBuf,
}

fn pty_pair(dir: &TempDir, name: &str) -> PtyPair {
    let a = dir.path(&format!("{name}-A"));
    let b = dir.path(&format!("{name}-B"));
    let child = Command::new("socat")
        .arg(format!("pty,raw,echo=0,link={}", a.display()))
        .arg(format!("pty,raw,echo=0,link={}", b.display()))
        .stderr(Stdio::null())
        .spawn()
        .expect("socat (make test installs it)");
    let socat = Proc { child };
    wait_for("socat's ptys", Duration::from_secs(10), || {
        a.exists() && b.exists()
    });
    PtyPair {
        _socat: socat,
        a,
        b,
    }
}

/// pymodbus's RTU server (several units) on a serial line and/or TCP.
struct RtuPeer {
    _proc: Proc,
    log: PathBuf,
    state: PathBuf,
    tcp_port: Option<u16>,
}

impl RtuPeer {
    fn start(dir: &TempDir, serial: Option<&Path>, tcp: bool, extra: &[&str]) -> RtuPeer {
        let n = std::fs::read_dir(&dir.0).unwrap().count();
        let log = dir.path(&format!("peer{n}.jsonl"));
        let state = dir.path(&format!("peer{n}.state.json"));
        let mut cmd = Command::new(python());
        cmd.arg(peers().join("rtu_peer.py"))
            .arg("--log")
            .arg(&log)
            .arg("--state")
            .arg(&state)
            .args(extra)
            .stderr(Stdio::null());
        if let Some(s) = serial {
            cmd.arg("--serial").arg(s);
        }
        if tcp {
            cmd.args(["--tcp", "0"]);
        }
        let (proc, rx, _) = spawn_lines(cmd);
        let ready = line_starting(&rx, "rtu_peer ready", Duration::from_secs(30));
        let tcp_port = ready
            .split_whitespace()
            .skip_while(|w| *w != "tcp")
            .nth(1)
            .map(|a| a.rsplit(':').next().unwrap().parse().unwrap());
        RtuPeer {
            _proc: proc,
            log,
            state,
            tcp_port,
        }
    }

    /// The log's events of kind `ev`.
    fn events(&self, ev: &str) -> Vec<Json> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Json>(l).ok())
            .filter(|j| j["ev"] == ev)
            .collect()
    }

    /// Unit `unit`'s holding register `addr` as the device holds it now.
    fn holding(&self, unit: u8, addr: u16) -> u64 {
        let text = std::fs::read_to_string(&self.state).unwrap();
        let j: Json = serde_json::from_str(&text).unwrap();
        j["units"][unit.to_string()]["hr"][addr.to_string()]
            .as_u64()
            .unwrap_or_else(|| panic!("unit {unit} hr {addr} in {text}"))
    }
}

/// The registers Python's `struct` packs `value` into as `fmt` in `order`.
fn pack(fmt: &str, value: &str, order: &str) -> Vec<u64> {
    let out = Command::new(python())
        .arg(peers().join("rtu_peer.py"))
        .args(["--pack", fmt, value, order])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice::<Vec<u64>>(&out.stdout).unwrap()
}

/// A configuration with connectors given by their connection strings.
fn rtu_config(
    dir: &TempDir,
    cycle_ms: u64,
    connectors: &[(&str, String, &str)],
    scripts: &[(&str, &str)],
) -> PathBuf {
    let mut conns = String::new();
    for (name, connection, tags) in connectors {
        conns.push_str(&format!(
            "        (\n            name: \"{name}\",\n            connection: \"{connection}\",\n            tags: [\n{tags}\n            ],\n        ),\n"
        ));
    }
    let mut scr = String::new();
    for (name, src) in scripts {
        dir.write(&format!("{name}.rhai"), src);
        scr.push_str(&format!("        (file: \"{name}.rhai\"),\n"));
    }
    dir.write(
        "rtds.ron",
        &format!(
            "(\n    cycle_ms: {cycle_ms},\n    log: (file: \"rtds.log\", level: \"info\"),\n    storage: (path: \"rtds.db\"),\n    connectors: [\n{conns}    ],\n    scripts: [\n{scr}    ],\n)\n"
        ),
    )
}

/// `connector=ModbusRtu` on `device`, 8N1, with test timings.
fn rtu(device: &Path, unit: u8, extra: &str) -> String {
    format!(
        "connector=ModbusRtu; device={}; baud=19200; parity=N; unit_id={unit}; timeout=0.5; retry_min=0.2; retry_max=0.5{extra}",
        device.display()
    )
}

fn json_of(v: &rusqlite::types::Value) -> Json {
    match v {
        rusqlite::types::Value::Text(t) => {
            serde_json::from_str(t).unwrap_or(Json::String(t.clone()))
        }
        rusqlite::types::Value::Integer(i) => Json::from(*i),
        rusqlite::types::Value::Real(f) => Json::from(*f),
        other => panic!("unexpected {other:?}"),
    }
}

fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

const UNIT1_TAGS: &str = r#"
    (name: "U1_Who", address: "hr:0", type: "u16"),
    (name: "U1_F_ABCD", address: "hr:1", type: "f32"),
    (name: "U1_F_CDAB", address: "hr:3", type: "f32", order: "CDAB"),
    (name: "U1_I16", address: "hr:5", type: "i16"),
    (name: "U1_U32", address: "hr:6", type: "u32"),
    (name: "U1_F64", address: "hr:8", type: "f64"),
    (name: "U1_Text", address: "hr:12", type: "string", count: 4),
    (name: "U1_Beef", address: "hr:16", type: "u16"),
    (name: "U1_IrF", address: "ir:0", type: "f32"),
    (name: "U1_Ir", address: "ir:2", type: "u16"),
    (name: "U1_Coils", address: "co:0", type: "bool", count: 8),
    (name: "U1_Inputs", address: "di:0", type: "bool", count: 8),
"#;

const UNIT2_TAGS: &str = r#"
    (name: "U2_Who", address: "hr:0", type: "u16"),
    (name: "U2_F", address: "hr:10", type: "f32", order: "CDAB"),
    (name: "U2_Max", address: "hr:12", type: "u16"),
    (name: "U2_I32", address: "hr:13", type: "i32"),
    (name: "U2_Ir", address: "ir:5", type: "u16"),
    (name: "U2_U64", address: "ir:6", type: "u64", order: "DCBA"),
    (name: "U2_Coils", address: "co:0", type: "bool", count: 4),
"#;

/// What the peer's built-in map holds (its documentation, in its own
/// terms: the values it packs with `struct`).
fn expected() -> Vec<(&'static str, Json)> {
    vec![
        ("U1_Who", Json::from(101)),
        ("U1_F_ABCD", Json::from(123.5)),
        ("U1_F_CDAB", Json::from(123.5)),
        ("U1_I16", Json::from(-2)),
        ("U1_U32", Json::from(0x1234_5678)),
        ("U1_F64", Json::from(-1.25)),
        ("U1_Text", Json::from("RTU-ONE!")),
        ("U1_Beef", Json::from(0xBEEF)),
        ("U1_IrF", Json::from(-7.5)),
        ("U1_Ir", Json::from(42)),
        // Arrays are JSON; a bool is 0 or 1 there as everywhere in the
        // Historian's contract (docs/historian.md).
        ("U1_Coils", serde_json::json!([1, 0, 1, 1, 0, 0, 1, 0])),
        ("U1_Inputs", serde_json::json!([0, 1, 0, 1, 1, 1, 0, 0])),
        ("U2_Who", Json::from(201)),
        ("U2_F", Json::from(-7.25)),
        ("U2_Max", Json::from(65535)),
        ("U2_I32", Json::from(-123_456)),
        ("U2_Ir", Json::from(2005)),
        // 0x0102030405060708, which a u64 SQLite integer holds exactly.
        ("U2_U64", Json::from(72_623_859_790_382_856_i64)),
        ("U2_Coils", serde_json::json!([0, 1, 1, 0])),
    ]
}

fn assert_all_exact(db: &Path) {
    for (tag, want) in expected() {
        let (v, st) = current(db, tag).unwrap_or_else(|| panic!("{tag} not in current"));
        assert_eq!(st, 0, "{tag} status");
        assert_eq!(json_of(&v), want, "{tag}");
    }
}

#[test]
fn two_units_on_one_line_read_every_type_exactly_through_one_owner() {
    let dir = TempDir::new("rtu-types");
    let line = pty_pair(&dir, "line");
    let peer = RtuPeer::start(&dir, Some(&line.b), false, &[]);
    let cfg = rtu_config(
        &dir,
        200,
        &[
            ("u1", rtu(&line.a, 1, ""), UNIT1_TAGS),
            ("u2", rtu(&line.a, 2, ""), UNIT2_TAGS),
        ],
        &[],
    );
    // `rtds check` prints the same plan as for Modbus TCP.
    let (code, out, err) = rtds_cmd(&["check"], &cfg);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("share one link to"), "{out}");
    assert!(out.contains("ModbusRtu"), "{out}");
    assert!(out.contains("FC3 hr:0 count 17"), "{out}");
    // Commissioning: `rtds read` on the line, the server not running.
    let (code, out, err) = rtds_cmd(&["read", "u2"], &cfg);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("= -123456"), "{out}");
    assert!(out.contains("= 72623859790382856"), "{out}");

    let db = dir.path("rtds.db");
    let mut rtds = Rtds::start(&cfg);
    wait_for("both units good", Duration::from_secs(20), || {
        status_of(&db, "U1_Inputs") == Some(0) && status_of(&db, "U2_Coils") == Some(0)
    });
    assert_all_exact(&db);
    // One owner per line: a scan while the server holds it is refused,
    // rather than taking the server's replies.
    let scan = format!("connector=ModbusRtu; device={}; parity=N", line.a.display());
    let (code, out, err) = rtds_cmd(&["scan", &scan, "--units", "1-3"], &cfg);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(err.contains("busy: another program holds it"), "{out}{err}");
    let (st, _) = rtds.stop();
    assert!(st.success(), "{}", rtds.log_text());
    let log = rtds.log_text();
    assert!(log.contains("connectors u1, u2 share one link to"), "{log}");
    // Every request the device decoded had a good CRC (it logs no other),
    // each of the two units got its own, and no reply was refused.
    let requests = peer.events("request");
    for unit in [1, 2] {
        assert!(
            requests.iter().filter(|r| r["unit"] == unit).count() >= 2,
            "unit {unit}: {requests:?}"
        );
    }
    assert!(
        requests.iter().all(|r| r["unit"] == 1 || r["unit"] == 2),
        "{requests:?}"
    );
    for name in ["u1._bad_frames", "u2._bad_frames"] {
        assert_eq!(current(&db, name).map(|c| int(&c.0)), Some(0), "{name}");
    }
}

#[test]
fn boundary_writes_reach_the_device_as_struct_packs_them() {
    let dir = TempDir::new("rtu-writes");
    let line = pty_pair(&dir, "line");
    // Unit 1: memory at hr 20-39, hr 40 holding 0x00FF, coils 16-31.
    let map = dir.write(
        "map.json",
        r#"{"units": {"1": {
            "hr": [{"address": 0, "values": [101]}, {"address": 20, "count": 20, "value": 0},
                   {"address": 40, "values": [255]}],
            "co": [{"address": 16, "count": 16, "value": 0}]}}}"#,
    );
    let peer = RtuPeer::start(
        &dir,
        Some(&line.b),
        false,
        &["--map", map.to_str().unwrap()],
    );
    let tags = r#"
    (name: "W_U16", address: "hr:20", type: "u16", writable: true),
    (name: "W_I16", address: "hr:21", type: "i16", writable: true),
    (name: "W_U32", address: "hr:22", type: "u32", writable: true),
    (name: "W_I32", address: "hr:24", type: "i32", order: "CDAB", writable: true),
    (name: "W_F32", address: "hr:26", type: "f32", writable: true),
    (name: "W_I64", address: "hr:28", type: "i64", order: "DCBA", writable: true),
    (name: "W_U64", address: "hr:32", type: "u64", writable: true),
    (name: "W_F64", address: "hr:36", type: "f64", order: "BADC", writable: true),
    (name: "W_Bit", address: "hr:40.15", type: "bool", writable: true),
    (name: "W_Coil", address: "co:20", type: "bool", writable: true),
"#;
    let cfg = rtu_config(&dir, 200, &[("u1", rtu(&line.a, 1, ""), tags)], &[]);
    // (tag, value written, struct format, order, first register).
    let cases: &[(&str, &str, &str, &str, u16)] = &[
        ("W_U16", "65535", "u16", "ABCD", 20),
        ("W_I16", "-32768", "i16", "ABCD", 21),
        ("W_U32", "4294967295", "u32", "ABCD", 22),
        ("W_I32", "-2147483648", "i32", "CDAB", 24),
        ("W_F32", "3.4028234663852886e38", "f32", "ABCD", 26),
        ("W_I64", "-9223372036854775808", "i64", "DCBA", 28),
        ("W_U64", "18446744073709551615", "u64", "ABCD", 32),
        ("W_F64", "-1.7976931348623157e308", "f64", "BADC", 36),
    ];
    for (tag, value, fmt, order, addr) in cases {
        let (code, out, err) = rtds_cmd(&["write", tag, value], &cfg);
        assert_eq!(code, Some(0), "{tag} {value}: {out}{err}");
        let want = pack(fmt, value, order);
        let held: Vec<u64> = (0..want.len() as u16)
            .map(|i| peer.holding(1, addr + i))
            .collect();
        assert_eq!(held, want, "{tag} = {value}: device registers");
    }
    // A bit inside a register: read-modify-write leaves the other 15 bits.
    let (code, out, err) = rtds_cmd(&["write", "W_Bit", "true"], &cfg);
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(peer.holding(1, 40), 0x80FF);
    let (code, out, err) = rtds_cmd(&["write", "W_Coil", "1"], &cfg);
    assert_eq!(code, Some(0), "{out}{err}");
    let writes = peer.events("write");
    assert!(
        writes
            .iter()
            .any(|w| w["fc"] == 5 && w["table"] == "co" && w["address"] == 20),
        "{writes:?}"
    );
    // Out of range, a fraction on an integer, NaN: refused before the wire.
    let before = peer.events("request").len();
    for (tag, value) in [
        ("W_U16", "65536"),
        ("W_I16", "-32769"),
        ("W_U32", "-1"),
        ("W_F32", "3.5e38"),
        ("W_U16", "NaN"),
    ] {
        let (code, out, err) = rtds_cmd(&["write", tag, value], &cfg);
        assert_ne!(code, Some(0), "{tag} {value} accepted: {out}");
        assert!(!err.is_empty(), "{tag} {value}: no message");
    }
    assert_eq!(
        peer.events("request").len(),
        before,
        "a refused write reached the line"
    );
}

#[test]
fn a_dead_unit_costs_the_line_at_most_its_timeout_per_back_off() {
    let dir = TempDir::new("rtu-dead");
    let line = pty_pair(&dir, "line");
    let peer = RtuPeer::start(&dir, Some(&line.b), false, &[]);
    // Unit 9 is not on the line. It is tried every 4 s (retry_min =
    // retry_max) and each try costs the line its 0.3 s timeout.
    let cfg = rtu_config(
        &dir,
        100,
        &[
            (
                "u1",
                rtu(&line.a, 1, ""),
                r#"(name: "U1_Who", address: "hr:0", type: "u16"),"#,
            ),
            (
                "u2",
                rtu(&line.a, 2, ""),
                r#"(name: "U2_Who", address: "hr:0", type: "u16"),"#,
            ),
            (
                "dead",
                rtu(&line.a, 9, "").replace(
                    "timeout=0.5; retry_min=0.2; retry_max=0.5",
                    "timeout=0.3; retry_min=4; retry_max=4",
                ),
                r#"(name: "Dead_Who", address: "hr:0", type: "u16"),"#,
            ),
        ],
        &[("ticks", TICKS)],
    );
    let db = dir.path("rtds.db");
    let mut rtds = Rtds::start(&cfg);
    wait_for("unit 1 good", Duration::from_secs(20), || {
        status_of(&db, "U1_Who") == Some(0) && ticks(&db) > 0
    });
    wait_for("the dead unit timed out", Duration::from_secs(20), || {
        status_of(&db, "Dead_Who") == Some(2)
    });
    // A window of 100 scans, measured by the scan's own counter.
    let (t0, ticks0) = (now_unix(), ticks(&db));
    wait_for("100 scans", Duration::from_secs(60), || {
        ticks(&db) >= ticks0 + 100
    });
    let (t1, ticks1) = (now_unix(), ticks(&db));
    let scans = (ticks1 - ticks0) as f64;
    let requests = peer.events("request");
    let in_window = |unit: i64| {
        requests
            .iter()
            .filter(|r| r["unit"] == unit)
            .filter(|r| (t0..=t1).contains(&r["t"].as_f64().unwrap()))
            .count() as f64
    };
    let (share1, share2, dead_tries) = (in_window(1) / scans, in_window(2) / scans, in_window(9));
    println!(
        "{scans} scans in {:.1} s: unit 1 polled {:.1} %, unit 2 {:.1} %, dead unit 9 tried {dead_tries} times",
        t1 - t0,
        share1 * 100.0,
        share2 * 100.0
    );
    assert!(share1 >= 0.9 && share2 >= 0.9, "{share1} {share2}");
    // The dead unit is tried once per back-off period, not every scan.
    let period = t1 - t0;
    assert!(
        dead_tries >= 1.0 && dead_tries <= (period / 4.0).ceil() + 1.0,
        "{dead_tries} tries in {period} s"
    );
    let (st, _) = rtds.stop();
    assert!(st.success());
    // The live units never went bad; the dead one says timeout and not
    // connected, and nothing else.
    for tag in ["U1_Who", "U2_Who"] {
        let rows = archive(&db, tag);
        assert!(
            rows.iter().all(|(v, s)| *s == 0 && int(v) > 100),
            "{tag}: {rows:?}"
        );
    }
    let dead = archive(&db, "Dead_Who");
    assert!(
        dead.iter()
            .all(|(v, s)| *v == rusqlite::types::Value::Null && (*s == 1 || *s == 2)),
        "{dead:?}"
    );
    assert_eq!(current(&db, "dead._connected").map(|c| int(&c.0)), Some(0));
    assert_eq!(current(&db, "u1._connected").map(|c| int(&c.0)), Some(1));
}

/// The fault relay between RTDS and the device, with its command channel.
struct Relay {
    _proc: Proc,
    stdin: ChildStdin,
    out: Receiver<String>,
    rtds_end: PathBuf,
    log: PathBuf,
}

impl Relay {
    fn start(dir: &TempDir) -> (Relay, PathBuf) {
        let rtds_end = dir.path("relay-A1");
        let device_end = dir.path("relay-B2");
        let log = dir.path("relay.jsonl");
        let mut cmd = Command::new(python());
        cmd.arg(peers().join("rtu_relay.py"))
            .arg("--rtds-pty")
            .arg(&rtds_end)
            .arg("--device-pty")
            .arg(&device_end)
            .arg("--log")
            .arg(&log)
            .args(["--baud", "19200"])
            .stdin(Stdio::piped())
            .stderr(Stdio::null());
        let (proc, out, stdin) = spawn_lines(cmd);
        line_starting(&out, "rtu_relay ready", Duration::from_secs(30));
        (
            Relay {
                _proc: proc,
                stdin: stdin.unwrap(),
                out,
                rtds_end,
                log,
            },
            device_end,
        )
    }

    /// Sends a command; returns its answer line.
    fn cmd(&mut self, command: &str) -> String {
        writeln!(self.stdin, "{command}").unwrap();
        self.stdin.flush().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let l = self
                .out
                .recv_timeout(left)
                .unwrap_or_else(|e| panic!("relay: no answer to `{command}`: {e}"));
            if l.starts_with("ok ") || l.starts_with("stats ") {
                return l;
            }
            assert!(!l.starts_with("error"), "relay: `{command}`: {l}");
        }
    }

    fn stats(&mut self) -> Json {
        let l = self.cmd("stats");
        serde_json::from_str(l.strip_prefix("stats ").unwrap()).unwrap()
    }

    fn events(&self, ev: &str) -> Vec<Json> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Json>(l).ok())
            .filter(|j| j["ev"] == ev)
            .collect()
    }
}

#[test]
fn corrupt_truncated_noisy_and_late_replies_are_refused_counted_and_never_stored() {
    let dir = TempDir::new("rtu-faults");
    let (mut relay, device_end) = Relay::start(&dir);
    let _peer = RtuPeer::start(&dir, Some(&device_end), false, &[]);
    // Two one-register blocks of the same unit and function: a late reply
    // to one has exactly the shape of the other's (RTU has no transaction
    // id), so a stale reply taken for the next would store 101 as 48879.
    let cfg = rtu_config(
        &dir,
        100,
        &[(
            "u1",
            rtu(&relay.rtds_end, 1, ""),
            r#"(name: "A", address: "hr:0", type: "u16"),
               (name: "B", address: "hr:16", type: "u16"),"#,
        )],
        &[],
    );
    let db = dir.path("rtds.db");
    let mut rtds = Rtds::start(&cfg);
    wait_for("good", Duration::from_secs(20), || {
        status_of(&db, "A") == Some(0) && status_of(&db, "B") == Some(0)
    });
    let bad_frames = || current(&db, "u1._bad_frames").map_or(0, |c| int(&c.0));
    let good = || status_of(&db, "A") == Some(0) && status_of(&db, "B") == Some(0);
    // Each fault, and the replies it spoils at least (a split reply that
    // arrives whole within the timeout is fine).
    let faults = [
        ("corrupt_crc n=3 unit=1", 3),
        ("truncate n=2 unit=1", 2),
        ("wrong_unit n=2 unit=1", 2),
        (
            r#"{"cmd": "noise", "n": 3, "before": "00ff07", "unit": 1}"#,
            3,
        ),
        (r#"{"cmd": "noise", "n": 2, "after": "0103", "unit": 1}"#, 2),
        ("split n=2 at=3 gap_ms=5 unit=1", 0),
        // The late reply arrives before the next request's own.
        ("delay n=2 until=next_request ms=0 unit=1", 2),
    ];
    let mut expected = 0;
    for (fault, spoiled) in faults {
        let before = relay.stats();
        relay.cmd(fault);
        let (kind, n) = match serde_json::from_str::<Json>(fault) {
            Ok(j) => (
                j["cmd"].as_str().unwrap().to_string(),
                j["n"].as_i64().unwrap(),
            ),
            Err(_) => (
                fault.split_whitespace().next().unwrap().to_string(),
                fault
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("n="))
                    .unwrap()
                    .parse()
                    .unwrap(),
            ),
        };
        let kind = match kind.as_str() {
            "corrupt_crc" => "corrupted",
            "truncate" => "truncated",
            "delay" => "delayed",
            k => k,
        }
        .to_string();
        // The relay applied all of them, RTDS counted them, and the
        // values are good again.
        wait_for(fault, Duration::from_secs(20), || {
            let now = relay.stats();
            now[&kind].as_i64().unwrap_or(0) - before[&kind].as_i64().unwrap_or(0) >= n
        });
        expected += spoiled;
        wait_for(
            &format!("{fault}: {expected} bad frames"),
            Duration::from_secs(20),
            || bad_frames() >= expected,
        );
        wait_for("good again", Duration::from_secs(20), good);
        println!("after {fault}: u1._bad_frames = {}", bad_frames());
    }
    let stats = relay.stats();
    let (st, _) = rtds.stop();
    assert!(st.success(), "{}", rtds.log_text());
    println!("relay: {stats}\nu1._bad_frames = {}", bad_frames());
    // Nothing wrong ever stored: each tag only ever held its own value
    // (a bad row keeps the last good value beside its status, or none).
    for (tag, want) in [("A", 101), ("B", 0xBEEF)] {
        let rows = archive(&db, tag);
        assert!(
            rows.iter().filter(|r| r.1 != 0).count() >= 3,
            "{tag}: {rows:?}"
        );
        for (v, _) in &rows {
            assert!(
                *v == rusqlite::types::Value::Null || int(v) == want,
                "{tag}: {rows:?}"
            );
        }
    }
    // RTDS left the spec's silence before every request, and never spoke
    // while a reply was on the line.
    let requests = relay.events("request");
    assert!(requests.len() > 20);
    let short: Vec<&Json> = requests
        .iter()
        .skip(1)
        .filter(|r| r["t35_ok"] == false || r["collision"] == true)
        .collect();
    assert!(short.is_empty(), "{short:?}");
}

#[test]
fn rtu_over_tcp_through_a_converter_shares_one_connection() {
    let dir = TempDir::new("rtu-tcp");
    let peer = RtuPeer::start(&dir, None, true, &[]);
    let port = peer.tcp_port.expect("tcp port");
    let conn = |unit: u8| {
        format!(
            "connector=ModbusRtuTcp; host=127.0.0.1; port={port}; unit_id={unit}; timeout=0.5; retry_min=0.2; retry_max=0.5"
        )
    };
    let cfg = rtu_config(
        &dir,
        200,
        &[("u1", conn(1), UNIT1_TAGS), ("u2", conn(2), UNIT2_TAGS)],
        &[],
    );
    let db = dir.path("rtds.db");
    let mut rtds = Rtds::start(&cfg);
    wait_for("both units good", Duration::from_secs(20), || {
        status_of(&db, "U1_Inputs") == Some(0) && status_of(&db, "U2_Coils") == Some(0)
    });
    assert_all_exact(&db);
    let (st, _) = rtds.stop();
    assert!(st.success());
    assert!(
        rtds.log_text().contains(&format!(
            "connectors u1, u2 share one link to 127.0.0.1:{port}"
        )),
        "{}",
        rtds.log_text()
    );
}

#[test]
fn the_bus_scan_finds_the_units_and_prints_lines_that_work() {
    let dir = TempDir::new("rtu-scan");
    let line = pty_pair(&dir, "line");
    let _peer = RtuPeer::start(&dir, Some(&line.b), false, &[]);
    let string = format!(
        "connector=ModbusRtu; device={}; baud=19200; parity=N",
        line.a.display()
    );
    let cfg = dir.write("unused.ron", "()");
    let t0 = Instant::now();
    let (code, out, err) = rtds_cmd(
        &["scan", &string, "--units", "1-12", "--timeout", "100"],
        &cfg,
    );
    let took = t0.elapsed();
    assert_eq!(code, Some(0), "{out}{err}");
    println!("{out}");
    // The bound it announced, and kept.
    let bound: f64 = out
        .split("at most ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .expect("announced bound");
    assert!(bound < 2.0, "{out}");
    assert!(
        took.as_secs_f64() < bound + 1.5,
        "{took:?} for a bound of {bound} s"
    );
    assert!(
        out.contains("unit 1: answers, holding register 0 = 101"),
        "{out}"
    );
    assert!(
        out.contains("unit 2: answers, holding register 0 = 201"),
        "{out}"
    );
    assert!(out.contains("2 of 12 unit ids answered"), "{out}");
    // The pasted lines make a configuration that checks and reads.
    let pasted: Vec<&str> = out
        .lines()
        .filter(|l| l.trim_start().starts_with("(name: \"unit"))
        .collect();
    assert_eq!(pasted.len(), 2, "{out}");
    let with_tags: Vec<String> = pasted
        .iter()
        .map(|l| l.replace("tags: []", "tags: [(name: \"Who_X\", address: \"hr:0\")]"))
        .enumerate()
        .map(|(i, l)| l.replace("Who_X", &format!("Who_{i}")))
        .collect();
    let cfg = dir.write(
        "pasted.ron",
        &format!(
            "(\n cycle_ms: 200,\n storage: (path: \"p.db\"),\n connectors: [\n{}\n ],\n)\n",
            with_tags.join("\n")
        ),
    );
    let (code, out, err) = rtds_cmd(&["read"], &cfg);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("= 101") && out.contains("= 201"), "{out}");
    // Nobody on the line: exit 1, still bounded.
    let (code, out, _) = rtds_cmd(
        &["scan", &string, "--units", "20-24", "--timeout", "50"],
        &cfg,
    );
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("0 of 5 unit ids answered"), "{out}");
}

#[test]
fn a_broadcast_writes_every_unit_and_waits_for_no_reply() {
    let dir = TempDir::new("rtu-broadcast");
    let line = pty_pair(&dir, "line");
    let map = dir.write(
        "map.json",
        r#"{"units": {
            "1": {"hr": [{"address": 0, "values": [101]}, {"address": 50, "count": 4, "value": 0}]},
            "2": {"hr": [{"address": 0, "values": [201]}, {"address": 50, "count": 4, "value": 0}]}
        }}"#,
    );
    let peer = RtuPeer::start(
        &dir,
        Some(&line.b),
        false,
        &["--map", map.to_str().unwrap()],
    );
    let cfg = rtu_config(
        &dir,
        100,
        &[
            (
                "all",
                rtu(&line.a, 0, ""),
                r#"(name: "Everyone", address: "hr:50", type: "u32", writable: true),"#,
            ),
            (
                "u1",
                rtu(&line.a, 1, ""),
                r#"(name: "U1_50", address: "hr:50", type: "u32"),"#,
            ),
            (
                "u2",
                rtu(&line.a, 2, ""),
                r#"(name: "U2_50", address: "hr:50", type: "u32"),"#,
            ),
        ],
        &[(
            "set",
            r#"let t = server.get("Everyone"); t.value = 305419896; server.set(t);"#,
        )],
    );
    let (code, out, err) = rtds_cmd(&["check"], &cfg);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("broadcast (unit 0): no reads"), "{out}");
    // By hand: sent, and said that nothing can be read back.
    let (code, out, err) = rtds_cmd(&["write", "Everyone", "7"], &cfg);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("no device answers a broadcast"), "{out}");
    assert!(peer.holding(1, 51) == 7 && peer.holding(2, 51) == 7);
    let db = dir.path("rtds.db");
    let mut rtds = Rtds::start(&cfg);
    wait_for(
        "both units hold the broadcast value",
        Duration::from_secs(20),
        || {
            current(&db, "U1_50")
                .is_some_and(|(v, s)| s == 0 && v == rusqlite::types::Value::Integer(0x1234_5678))
                && current(&db, "U2_50").is_some_and(|(v, s)| {
                    s == 0 && v == rusqlite::types::Value::Integer(0x1234_5678)
                })
        },
    );
    let (st, _) = rtds.stop();
    assert!(st.success());
    // Sent to unit 0, applied by both units, answered by none.
    let requests = peer.events("request");
    assert!(
        requests.iter().any(|r| r["unit"] == 0 && r["fc"] == 16),
        "{requests:?}"
    );
    let writes = peer.events("write");
    for unit in [1, 2] {
        assert!(
            writes
                .iter()
                .any(|w| w["unit"] == unit && w["hex"] == "12345678"),
            "{writes:?}"
        );
    }
    assert!(peer.events("reply").iter().all(|r| r["unit"] != 0));
    // The broadcast's confirmation is what was sent.
    assert_eq!(
        current(&db, "Everyone").map(|(v, _)| v),
        Some(rusqlite::types::Value::Integer(0x1234_5678))
    );
    assert!(peer.holding(1, 50) == 0x1234 && peer.holding(2, 51) == 0x5678);
}

#[test]
fn one_port_under_two_names_is_one_line() {
    // The pty's link and the /dev/pts/N it points to: as by-id names and
    // ttyUSBn are on a gateway.
    let dir = TempDir::new("rtu-names");
    let line = pty_pair(&dir, "line");
    let real = std::fs::canonicalize(&line.a).unwrap();
    assert_ne!(real, line.a);
    let cfg = rtu_config(
        &dir,
        100,
        &[
            ("u1", rtu(&line.a, 1, ""), r#"(name: "A", address: "hr:0")"#),
            ("u2", rtu(&real, 2, ""), r#"(name: "B", address: "hr:0")"#),
        ],
        &[],
    );
    let (code, out, err) = rtds_cmd(&["check"], &cfg);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("connectors u1, u2 share one link to"), "{out}");
}

#[test]
fn line_settings_are_checked_with_every_mistake_named() {
    let dir = TempDir::new("rtu-check");
    let cfg = rtu_config(
        &dir,
        100,
        &[
            (
                "a",
                "connector=ModbusRtu; device=/dev/ttyS9; baud=19200; parity=X; unit_id=248; data_bits=9".into(),
                r#"(name: "A", address: "hr:0")"#,
            ),
            (
                "b",
                "connector=ModbusRtu; device=/dev/ttyS1; baud=9600".into(),
                r#"(name: "B", address: "hr:0")"#,
            ),
            (
                "c",
                "connector=ModbusRtu; device=/dev/ttyS1; baud=19200; unit_id=2".into(),
                r#"(name: "C", address: "hr:0")"#,
            ),
            (
                "d",
                "connector=ModbusRtu; device=/dev/ttyS2; unit_id=0".into(),
                r#"(name: "D", address: "hr:0")"#,
            ),
            (
                "e",
                "connector=ModbusRtuTcp; host=10.0.0.9; rts_before_ms=2".into(),
                r#"(name: "E", address: "hr:0")"#,
            ),
        ],
        &[],
    );
    let (code, out, err) = rtds_cmd(&["check"], &cfg);
    assert_eq!(code, Some(2), "{out}{err}");
    for want in [
        "`parity`: `X` is not N, E or O",
        "`unit_id`: `248` is not a whole number in 0..=247",
        "`data_bits`: `9` is not a whole number in 7..=8",
        "shares /dev/ttyS1 with connector `b`",
        "9600",
        "its tags must be writable",
        "unknown key `rts_before_ms` for connector=ModbusRtuTcp",
    ] {
        assert!(err.contains(want), "missing `{want}` in:\n{err}");
    }
    // Each at its own line of the file.
    assert!(err.contains("rtds.ron:"), "{err}");
}

#[test]
fn a_port_that_refuses_the_kernels_rs485_mode_says_so() {
    // A pty has no RS-485 mode (TIOCSRS485 fails), as some USB adapters'
    // drivers: the connector reports it instead of polling a line whose
    // direction nobody switches.
    let dir = TempDir::new("rtu-rs485");
    let line = pty_pair(&dir, "line");
    let cfg = rtu_config(
        &dir,
        100,
        &[(
            "m",
            rtu(&line.a, 1, "; rs485=true; rts_after_ms=2"),
            r#"(name: "M", address: "hr:0")"#,
        )],
        &[],
    );
    let (code, out, err) = rtds_cmd(&["check"], &cfg);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("kernel RS-485 mode"), "{out}");
    let (code, out, err) = rtds_cmd(&["read"], &cfg);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(
        out.contains("does not take the kernel's RS-485 mode (leave rs485 off for an adapter that switches direction by itself)"),
        "{out}"
    );
}
