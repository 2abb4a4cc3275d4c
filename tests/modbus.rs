//! The Modbus TCP connector against an independent implementation (pymodbus)
//! and against the project's simulator in its fault modes.

mod common;

use common::*;
use modbus::Client;
use rusqlite::types::Value as Sql;
use std::time::{Duration, Instant};

/// Every type and byte order the peer holds, with the value it encodes.
const PEER_TAGS: &[(&str, &str, Sql)] = &[
    (
        "F_ABCD",
        r#"address: "hr:0", type: "f32", order: "ABCD""#,
        Sql::Real(123.5),
    ),
    (
        "F_CDAB",
        r#"address: "hr:2", type: "f32", order: "CDAB""#,
        Sql::Real(123.5),
    ),
    (
        "F_BADC",
        r#"address: "hr:4", type: "f32", order: "BADC""#,
        Sql::Real(123.5),
    ),
    (
        "F_DCBA",
        r#"address: "hr:6", type: "f32", order: "DCBA""#,
        Sql::Real(123.5),
    ),
    (
        "U32",
        r#"address: "40009", type: "u32""#,
        Sql::Integer(0x1234_5678),
    ),
    (
        "I32_CDAB",
        r#"address: "hr:10", type: "i32", order: "CDAB""#,
        Sql::Integer(-123_456),
    ),
    ("I16", r#"address: "hr:12", type: "i16""#, Sql::Integer(-2)),
    (
        "U16",
        r#"address: "hr:13", type: "u16""#,
        Sql::Integer(65535),
    ),
    (
        "U16_scaled",
        r#"address: "hr:13", type: "u16", scale: 0.01, offset: -100"#,
        Sql::Real(555.35),
    ),
    ("F64", r#"address: "hr:14", type: "f64""#, Sql::Real(-1.25)),
    (
        "F64_DCBA",
        r#"address: "hr:18", type: "f64", order: "DCBA""#,
        Sql::Real(-1.25),
    ),
    (
        "I64",
        r#"address: "hr:22", type: "i64""#,
        Sql::Integer(-1_234_567_890_123),
    ),
    (
        "U64_CDAB",
        r#"address: "hr:26", type: "u64", order: "CDAB""#,
        Sql::Integer(0x0102_0304_0506_0708),
    ),
    (
        "Text",
        r#"address: "hr:30", type: "string", count: 4"#,
        Sql::Text(String::new()),
    ),
    (
        "Bit0",
        r#"address: "hr:34.0", type: "bool""#,
        Sql::Integer(1),
    ),
    (
        "Bit1",
        r#"address: "hr:34.1", type: "bool""#,
        Sql::Integer(0),
    ),
    (
        "Bit15",
        r#"address: "40035.15", type: "bool""#,
        Sql::Integer(1),
    ),
    ("IR_F", r#"address: "ir:0", type: "f32""#, Sql::Real(-7.5)),
    ("IR_U", r#"address: "30003", type: "u16""#, Sql::Integer(42)),
    (
        "Coils",
        r#"address: "co:0", type: "bool", count: 16"#,
        Sql::Text(String::new()),
    ),
    ("C3", r#"address: "00004", type: "bool""#, Sql::Integer(1)),
    (
        "DI",
        r#"address: "di:0", type: "bool", count: 8"#,
        Sql::Text(String::new()),
    ),
    ("DI1", r#"address: "10002", type: "bool""#, Sql::Integer(1)),
];

fn expected(name: &str, v: &Sql) -> Sql {
    match name {
        "Text" => Sql::Text("PYMODBUS".into()),
        "Coils" => Sql::Text("[1,0,1,1,0,0,1,0,1,1,1,1,0,0,0,0]".into()),
        "DI" => Sql::Text("[0,1,0,1,1,1,0,0]".into()),
        _ => v.clone(),
    }
}

fn tag_lines(tags: &[(&str, &str, Sql)]) -> String {
    tags.iter()
        .map(|(n, rest, _)| format!("                (name: \"{n}\", {rest}),"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn every_type_and_byte_order_reads_exactly_from_an_independent_peer() {
    let dir = TempDir::new("peer-types");
    let peer = Peer::start(&dir);
    let cfg = config(
        &dir,
        200,
        &[("peer", peer.port, "", &tag_lines(PEER_TAGS))],
        &[],
    );
    let mut rtds = Rtds::start(&cfg);
    let db = dir.path("rtds.db");
    let names: Vec<&str> = PEER_TAGS.iter().map(|t| t.0).collect();
    wait_for("all peer tags good", Duration::from_secs(20), || {
        names.iter().all(|n| status_of(&db, n) == Some(0))
    });
    let (st, _) = rtds.stop();
    assert!(st.success());
    for (name, _, v) in PEER_TAGS {
        assert_eq!(current(&db, name), Some((expected(name, v), 0)), "{name}");
    }
    assert_eq!(current(&db, "peer._connected"), Some((Sql::Integer(1), 0)));
}

#[test]
fn one_scan_sends_exactly_the_planned_requests() {
    let dir = TempDir::new("peer-plan");
    let peer = Peer::start(&dir);
    let cfg = config(
        &dir,
        200,
        &[("peer", peer.port, "", &tag_lines(PEER_TAGS))],
        &[],
    );
    let (code, plan, err) = rtds_cmd(&["check"], &cfg);
    assert_eq!(code, Some(0), "{err}");
    // 23 tags: hr:0..34 in one request, ir:0..2, co:0..15, di:0..7.
    assert!(
        plan.contains("4 requests per scan, 62 registers/bits read, 0 of them gap filler"),
        "{plan}"
    );

    let (code, out, err) = rtds_cmd(&["read"], &cfg);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("  4 requests"), "{out}");
    let mut seen = peer.requests();
    seen.sort();
    // pymodbus counts bit requests in registers of 16 bits.
    assert_eq!(seen, vec![(1, 0, 1), (2, 0, 1), (3, 0, 35), (4, 0, 3)]);
    for (name, _, v) in PEER_TAGS {
        let line = out
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{name} ")))
            .unwrap();
        let shown = match expected(name, v) {
            Sql::Integer(i) if ["Bit0", "Bit1", "Bit15", "C3", "DI1"].contains(name) => {
                (i == 1).to_string()
            }
            Sql::Integer(i) => i.to_string(),
            Sql::Real(f) => f.to_string(),
            Sql::Text(t) => t,
            other => panic!("{other:?}"),
        };
        assert!(line.ends_with(&format!("= {shown}")), "{name}: {line}");
    }
}

#[test]
fn an_exception_costs_only_the_bad_tag_and_arrives_at_once() {
    let dir = TempDir::new("peer-exc");
    let peer = Peer::start(&dir);
    // hr:60 is not defined on the peer: exception 2. With a 5 s timeout, an
    // exception mistaken for a short read would take 5 s per request.
    let tags = r#"                (name: "A58", address: "hr:58"),
                (name: "A59", address: "hr:59"),
                (name: "Bad60", address: "hr:60"),
                (name: "A100", address: "hr:100"),"#;
    let cfg = config(&dir, 200, &[("peer", peer.port, "; timeout=5", tags)], &[]);
    let t0 = Instant::now();
    let (code, out, _) = rtds_cmd(&["read", "--scans", "3", "--every", "100"], &cfg);
    let took = t0.elapsed();
    assert_eq!(code, Some(1), "a bad tag makes `read` exit 1\n{out}");
    assert!(took < Duration::from_secs(3), "took {took:?}");
    let scans: Vec<&str> = out.split(", scan ").skip(1).collect();
    assert_eq!(scans.len(), 3, "{out}");
    for scan in scans {
        assert!(scan.contains("A58") && scan.contains("A100"), "{scan}");
        for good in ["A58", "A59", "A100"] {
            let line = scan.lines().find(|l| l.contains(good)).unwrap();
            assert!(line.contains(" = "), "{line}");
        }
        let bad = scan.lines().find(|l| l.contains("Bad60")).unwrap();
        assert!(
            bad.ends_with("device exception 2 (illegal data address)"),
            "{bad}"
        );
    }
    // Scan 1: block 58..60 fails, then 58, 59, 60 alone, plus hr:100 = 5.
    // Scans 2 and 3: 58..59, 60 alone, 100 = 3 each. Total 11.
    assert!(out.contains("  11 requests"), "{out}");
    let reads: Vec<(u8, u16, u16)> = peer.requests();
    assert_eq!(
        reads.iter().filter(|r| **r == (3, 58, 2)).count(),
        2,
        "{reads:?}"
    );
}

#[test]
fn writes_of_every_function_code_are_read_back_by_the_peer() {
    let dir = TempDir::new("peer-write");
    let peer = Peer::start(&dir);
    let tags = r#"                (name: "W16", address: "hr:40", type: "u16", writable: true),
                (name: "WF", address: "hr:41", type: "f32", order: "CDAB", writable: true),
                (name: "WI64", address: "hr:43", type: "i64", writable: true),
                (name: "WStr", address: "hr:47", type: "string", count: 2, writable: true),
                (name: "WBit", address: "hr:49.2", type: "bool", writable: true),
                (name: "WScaled", address: "hr:50", type: "u16", scale: 0.1, writable: true),
                (name: "WCoil", address: "co:20", type: "bool", writable: true),
                (name: "WCoils", address: "co:22", type: "bool", count: 3, writable: true),"#;
    let tags_multi =
        r#"                (name: "M16", address: "hr:100", type: "u16", writable: true),"#;
    let script = r#"
        server.set_value("W16", 4242);
        server.set_value("WF", 123.5);
        server.set_value("WI64", -5);
        server.set_value("WStr", "OK");
        server.set_value("WBit", true);
        server.set_value("WScaled", 12.3);
        server.set_value("WCoil", true);
        server.set_value("WCoils", [1, 0, 1]);
        server.set_value("M16", 9);
    "#;
    let cfg = config(
        &dir,
        300,
        &[
            ("peer", peer.port, "", tags),
            ("peer_fc16", peer.port, "; write_multiple=true", tags_multi),
        ],
        &[("write", script)],
    );
    let mut rtds = Rtds::start(&cfg);
    let mut client = modbus_client(peer.port);
    let i64_regs = {
        let b = (-5i64).to_be_bytes();
        (0..4)
            .map(|k| u16::from_be_bytes([b[2 * k], b[2 * k + 1]]))
            .collect::<Vec<_>>()
    };
    let mut want = vec![4242, 0x0000, 0x42F7];
    want.extend(&i64_regs);
    want.extend([0x4F4B, 0x0000, 0b100, 123]);
    wait_for("registers written", Duration::from_secs(20), || {
        client.read_holding_registers(40, 11).unwrap() == want
    });
    use modbus::Coil::{Off, On};
    wait_for("coils written", Duration::from_secs(10), || {
        client.read_coils(20, 5).unwrap() == vec![On, Off, On, Off, On]
            && client.read_holding_registers(100, 1).unwrap() == vec![9]
    });
    let (st, _) = rtds.stop();
    assert!(st.success(), "{}", rtds.log_text());
    let fcs: std::collections::BTreeSet<(u8, u16)> =
        peer.requests().iter().map(|r| (r.0, r.1)).collect();
    for fc in [
        (6, 40),
        (16, 41),
        (16, 43),
        (16, 47),
        (6, 49),
        (6, 50),
        (5, 20),
        (15, 22),
        (16, 100),
    ] {
        assert!(
            fcs.contains(&fc),
            "peer never saw FC {} at {}: {fcs:?}",
            fc.0,
            fc.1
        );
    }
    assert!(
        !fcs.contains(&(6, 100)),
        "write_multiple=true must not use FC 6"
    );
    // The read-modify-write of the bit read the register first.
    assert!(fcs.contains(&(3, 49)) || fcs.contains(&(3, 40)));
}

#[test]
fn connectors_on_a_one_client_device_share_its_link_and_get_their_polls() {
    for (extra, label) in [("; auto_close=true", "auto_close"), ("", "kept open")] {
        let dir = TempDir::new("oneclient");
        // Logs every request: `request PEER unit 1 ReadHoldingRegisters { addr: 200, … }`.
        let log_path = dir.path("sim.log");
        let sim = Sim::start_logged(&["--max-clients", "1", "--log-requests"], &log_path);
        let port = sim.port;
        let a = r#"                (name: "A", address: "hr:200"),"#;
        let b = r#"                (name: "B", address: "hr:201", type: "i16"),"#;
        let cfg = config(
            &dir,
            200,
            &[("a", port, extra, a), ("b", port, extra, b)],
            &[],
        );
        let mut rtds = Rtds::start(&cfg);
        let db = dir.path("rtds.db");
        wait_for(
            &format!("{label}: both read"),
            Duration::from_secs(20),
            || {
                current(&db, "A") == Some((Sql::Integer(4660), 0))
                    && current(&db, "B") == Some((Sql::Integer(-2), 0))
            },
        );
        std::thread::sleep(Duration::from_secs(8));
        let (st, _) = rtds.stop();
        let log = rtds.log_text();
        assert!(st.success(), "{log}");
        assert!(log.contains("connectors a, b share one link"), "{log}");
        let cycles = cycles_logged(&log);
        let sim_log = std::fs::read_to_string(&log_path).unwrap();
        let served = |addr: u16| {
            sim_log
                .lines()
                .filter(|l| l.contains(&format!("ReadHoldingRegisters {{ addr: {addr},")))
                .count() as i64
        };
        let (pa, pb) = (served(200), served(201));
        eprintln!("{label}: {cycles} cycles, a {pa} polls, b {pb} polls");
        // Every scan reads both (the first scans may precede the wait).
        for (name, n) in [("a", pa), ("b", pb)] {
            assert!(
                n * 100 >= cycles * 95,
                "{label}: {name} got {n} of {cycles} polls"
            );
        }
        assert!(
            !sim_log.contains("refused a connection"),
            "{label}: {sim_log}"
        );
        for tag in ["A", "B"] {
            assert!(archive(&db, tag).iter().all(|r| r.1 == 0), "{label}: {tag}");
        }
        assert_ts_monotonic(&db);
    }
}

#[test]
fn a_script_combining_two_plcs_sees_both_from_the_same_scan() {
    let dir = TempDir::new("same-scan");
    let (s1, s2) = (Sim::start(&[]), Sim::start(&[]));
    let tag = |name: &str| format!("                (name: \"{name}\", address: \"hr:0\"),");
    let script = r#"
        let a = server.get("A");
        let b = server.get("B");
        if a.status == 0 && b.status == 0 {
            server.set_value("Pair", a.timestamp + " " + b.timestamp);
        }
    "#;
    let cfg = config(
        &dir,
        100,
        &[
            ("p1", s1.port, "", &tag("A")),
            ("p2", s2.port, "", &tag("B")),
        ],
        &[("pair", script)],
    );
    let mut rtds = Rtds::start(&cfg);
    let db = dir.path("rtds.db");
    wait_for("pairs", Duration::from_secs(20), || {
        archive(&db, "Pair").len() >= 30
    });
    let (st, _) = rtds.stop();
    assert!(st.success());
    let parse = |t: &str| chrono::DateTime::parse_from_rfc3339(t).unwrap().to_utc();
    let mut worst_apart = 0;
    let mut worst_age = 0;
    for r in archive_rows(&db).into_iter().filter(|r| r.name == "Pair") {
        let Sql::Text(pair) = &r.value else {
            panic!("{r:?}")
        };
        let (ta, tb) = pair.split_once(' ').unwrap();
        let (ta, tb, run) = (parse(ta), parse(tb), parse(&r.ts));
        worst_apart = worst_apart.max((ta - tb).num_milliseconds().abs());
        // Read in this cycle, just before the script ran: younger than a
        // cycle (the free-running design allowed a whole interval).
        worst_age = worst_age.max((run - ta.max(tb)).num_milliseconds());
    }
    eprintln!("read apart at most {worst_apart} ms, at most {worst_age} ms before the script");
    assert!(worst_apart < 50, "{worst_apart} ms apart");
    assert!((0..50).contains(&worst_age), "{worst_age} ms old");
}

#[test]
fn late_replies_time_out_and_are_never_taken_as_answers() {
    let dir = TempDir::new("late");
    // Replies come 600 ms late; the connector waits 300 ms.
    let sim = Sim::start(&["--delay-ms", "600"]);
    let tags = r#"                (name: "P", address: "hr:200"),
                (name: "M", address: "hr:201", type: "i16"),"#;
    let cfg = config(
        &dir,
        100,
        &[(
            "slow",
            sim.port,
            "; timeout=0.3; retry_min=0.1; retry_max=0.1",
            tags,
        )],
        &[],
    );
    let mut rtds = Rtds::start(&cfg);
    let db = dir.path("rtds.db");
    wait_for(
        "several timed-out polls",
        Duration::from_secs(20),
        || matches!(current(&db, "slow._errors"), Some((Sql::Integer(n), _)) if n >= 5),
    );
    rtds.stop();
    assert_eq!(status_of(&db, "P"), Some(2));
    // Never a good row: a late reply to one request was never taken for the next.
    assert!(
        archive(&db, "P").iter().all(|r| r.1 != 0),
        "{:?}",
        archive(&db, "P")
    );
    assert!(archive(&db, "M").iter().all(|r| r.1 != 0));
    let (last, _) = current(&db, "slow._last_error").unwrap();
    assert!(
        matches!(&last, Sql::Text(t) if t.contains("timeout")),
        "{last:?}"
    );
    assert_eq!(
        current(&db, "slow._connected").map(|c| c.0),
        Some(Sql::Integer(0))
    );
}

#[test]
fn check_plans_a_thousand_tags_into_the_fewest_requests() {
    let dir = TempDir::new("plan1000");
    let contiguous: String = (0..1000)
        .map(|i| format!("                (name: \"T{i}\", address: \"hr:{i}\"),\n"))
        .collect();
    let cfg = config(&dir, 1000, &[("plc", 502, "", &contiguous)], &[]);
    let (code, out, err) = rtds_cmd(&["check"], &cfg);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("8 requests per scan, 1000 registers/bits read, 0 of them gap filler"),
        "{out}"
    );

    // Every other register: gaps of one. max_gap=1 bridges them.
    let sparse: String = (0..1000)
        .map(|i| {
            format!(
                "                (name: \"S{i}\", address: \"hr:{}\"),\n",
                2 * i
            )
        })
        .collect();
    let cfg = config(&dir, 1000, &[("plc", 502, "; max_gap=1", &sparse)], &[]);
    let (_, out, _) = rtds_cmd(&["check"], &cfg);
    assert!(
        out.contains("16 requests per scan, 1984 registers/bits read, 984 of them gap filler"),
        "{out}"
    );
    let cfg = config(&dir, 1000, &[("plc", 502, "", &sparse)], &[]);
    let (_, out, _) = rtds_cmd(&["check"], &cfg);
    assert!(out.contains("1000 requests per scan"), "{out}");
}

/// The misbehaving peer (tests/peers/faulty_peer.py) in `mode`, on a port
/// it chose itself (no race with other tests for a free port).
fn faulty_peer(mode: &str) -> (Proc, u16) {
    use std::io::BufRead;
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/faulty_peer.py");
    let mut child = std::process::Command::new("python3")
        .arg(script)
        .arg(mode)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line
        .trim()
        .strip_prefix("listening ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("faulty peer said `{line}`"));
    (Proc { child }, port)
}

#[test]
fn timeout_bounds_the_whole_exchange_against_dribbling_stray_and_http_peers() {
    for (mode, status, words) in [
        ("dribble", 2, "reply too slow"),
        ("stray", 2, "only"),
        ("http", 7, "not speaking Modbus TCP"),
    ] {
        let dir = TempDir::new(&format!("deadline-{mode}"));
        let (_peer, port) = faulty_peer(mode);
        let tags = r#"                (name: "R5", address: "hr:5", type: "u16"),"#;
        let cfg = config(&dir, 500, &[("plc1", port, "timeout=1", tags)], &[]);
        let mut rtds = Rtds::start(&cfg);
        let db = dir.path("rtds.db");
        wait_for(
            &format!("{mode}: a failed poll"),
            Duration::from_secs(15),
            || status_of(&db, "R5") == Some(status),
        );
        std::thread::sleep(Duration::from_millis(2500));
        let (st, took) = rtds.stop();
        assert!(st.success());
        assert!(took < Duration::from_secs(3), "{mode}: stop took {took:?}");
        // No poll took more than the 1 s timeout (plus scheduling slack).
        let worst = archive(&db, "plc1._response_ms")
            .into_iter()
            .chain(current(&db, "plc1._response_ms"))
            .filter_map(|(v, _)| match v {
                Sql::Real(ms) => Some(ms),
                _ => None,
            })
            .fold(0.0, f64::max);
        assert!(
            worst > 0.0 && worst < 1500.0,
            "{mode}: a poll took {worst} ms"
        );
        let log = rtds.log_text();
        assert!(log.contains(words), "{mode}: {log}");
        assert_eq!(
            archive(&db, "R5").iter().filter(|r| r.1 == 0).count(),
            0,
            "{mode}: never a good value"
        );
        assert_ts_monotonic(&db);
    }
}

#[test]
fn schneider_notation_reads_the_peer_like_protocol_addresses() {
    let dir = TempDir::new("vendor");
    let peer = Peer::start(&dir);
    // The peer (Python struct): hr:2-3 f32 123.5 CDAB, hr:10-11 i32 -123456
    // CDAB, hr:12 i16 -2, hr:34 0x8009, co:0.. 1011 0010.
    let tags = r#"                (name: "Real", address: "%MF2"),
                (name: "Dint", address: "%MD10"),
                (name: "Word", address: "%MW12", type: "i16"),
                (name: "Bit15", address: "%MW34.15"),
                (name: "Coil2", address: "%M2"),"#;
    let cfg = config(&dir, 200, &[("peer", peer.port, "", tags)], &[]);
    let (code, out, err) = rtds_cmd(&["read"], &cfg);
    assert_eq!(code, Some(0), "{out}{err}");
    for (name, addr, value) in [
        ("Real", "hr:2 (40003)", "= 123.5"),
        ("Dint", "hr:10 (40011)", "= -123456"),
        ("Word", "hr:12 (40013)", "= -2"),
        ("Bit15", "hr:34.15", "= true"),
        ("Coil2", "co:2 (00003)", "= true"),
    ] {
        let line = out
            .lines()
            .find(|l| l.trim_start().starts_with(name))
            .unwrap_or_else(|| panic!("{name}: {out}"));
        assert!(line.contains(addr) && line.ends_with(value), "{line}");
    }
}

/// Python's answer to `expr` (words packed with `struct`, or a decoded
/// value), printed by Python.
fn py(expr: &str) -> String {
    let out = std::process::Command::new("python3")
        .args(["-c", &format!("import json, math, struct\nprint({expr})")])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn py_words(fmt: &str, values: &str) -> Vec<u16> {
    py(&format!(
        "' '.join(str(int.from_bytes(b[i:i+2], 'big')) for b in [struct.pack('>{fmt}', {values})] for i in range(0, len(b), 2))"
    ))
    .split_whitespace()
    .map(|w| w.parse().unwrap())
    .collect()
}

#[test]
fn nan_from_a_device_is_a_status_and_infinities_are_values() {
    let dir = TempDir::new("peer-nan");
    let peer = Peer::start(&dir);
    let mut client = modbus_client(peer.port);
    // The registers, as Python packs them: NaN and +inf, then an f32
    // array holding NaN and -inf between finite values.
    client
        .write_multiple_registers(40, &py_words("f", "float('nan')"))
        .unwrap();
    client
        .write_multiple_registers(42, &py_words("d", "float('inf')"))
        .unwrap();
    client
        .write_multiple_registers(
            46,
            &py_words(
                "ffff",
                "1.5, float('nan'), float('-inf'), 3.4028234663852886e38",
            ),
        )
        .unwrap();
    let tags = r#"                (name: "Nan", address: "hr:40", type: "f32"),
                (name: "Inf", address: "hr:42", type: "f64"),
                (name: "Arr", address: "hr:46", type: "f32", count: 4),
                (name: "NanScaled", address: "hr:40", type: "f32", scale: 2),"#;
    let cfg = config(&dir, 100, &[("peer", peer.port, "", tags)], &[]);
    let mut rtds = Rtds::start(&cfg);
    let db = dir.path("rtds.db");
    wait_for("the tags read", Duration::from_secs(20), || {
        status_of(&db, "Arr") == Some(0) && status_of(&db, "Nan").is_some_and(|s| s != 6)
    });
    let (st, _) = rtds.stop();
    assert!(st.success());
    // NaN: status 13 ("not a number"), no value, in current and archive.
    for tag in ["Nan", "NanScaled"] {
        assert_eq!(current(&db, tag), Some((Sql::Null, 13)), "{tag}");
        assert!(archive(&db, tag).contains(&(Sql::Null, 13)), "{tag}");
    }
    assert_eq!(current(&db, "Inf"), Some((Sql::Real(f64::INFINITY), 0)));
    // The array's text, decoded by Python's json, holds the f32 bits the
    // registers hold (f32 values are stored in their shortest decimal
    // form: compared as f32, NaN as NaN).
    let Some((Sql::Text(text), 0)) = current(&db, "Arr") else {
        panic!("{:?}", current(&db, "Arr"));
    };
    let same = py(&format!(
        "[math.isnan(x) or struct.pack('>f', x) for x in json.loads({text:?})] == [struct.pack('>f', 1.5), True, struct.pack('>f', float('-inf')), struct.pack('>f', 3.4028234663852886e38)]"
    ));
    assert_eq!(same, "True", "{text}");
    // The segment says the tag is an array of f32.
    let seg = segment_files(&db).pop().expect("a segment");
    let ty: String = rusqlite::Connection::open(seg)
        .unwrap()
        .query_row("SELECT type FROM tags WHERE name = 'Arr'", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ty, "f32[]");
}

#[test]
fn reconnects_come_at_the_back_off_gaps_whatever_the_scan_interval() {
    // A device that accepts the connection and drops it at once: every
    // attempt fails, and each one is an accept here, with its time.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { break };
            drop(conn);
            if tx.send(Instant::now()).is_err() {
                break;
            }
        }
    });
    let dir = TempDir::new("backoff");
    let tags = r#"                (name: "A", address: "hr:0", type: "u16"),"#;
    // A 1 s scan with back-off 0.2 … 1.6 s: retries must not wait for a
    // scan.
    let cfg = config(
        &dir,
        1000,
        &[("plc", port, "retry_min=0.2; retry_max=1.6", tags)],
        &[],
    );
    let _rtds = Rtds::start(&cfg);
    let mut at = Vec::new();
    while at.len() < 7 {
        at.push(
            rx.recv_timeout(Duration::from_secs(10))
                .expect("another attempt"),
        );
    }
    let gaps: Vec<f64> = at.windows(2).map(|w| (w[1] - w[0]).as_secs_f64()).collect();
    eprintln!("gaps between attempts: {gaps:.2?}");
    for (gap, want) in gaps.iter().zip([0.2, 0.4, 0.8, 1.6, 1.6, 1.6]) {
        assert!(
            *gap >= want - 0.02 && *gap < want + 0.3,
            "gaps {gaps:.2?}, expected 0.2, 0.4, 0.8, 1.6, 1.6, 1.6"
        );
    }
}

#[test]
fn a_bridged_gap_holding_an_illegal_address_is_split_once_and_stays_split() {
    let dir = TempDir::new("peer-bridge");
    let peer = Peer::start(&dir);
    // hr:60-99 are illegal on the peer: max_gap 45 bridges 58..101 across
    // them, which the peer refuses; each tag reads fine alone.
    let tags = r#"                (name: "A58", address: "hr:58"),
                (name: "A100", address: "hr:100"),"#;
    let cfg = config(&dir, 200, &[("peer", peer.port, "; max_gap=45", tags)], &[]);
    let (code, out, _) = rtds_cmd(&["read", "--scans", "5", "--every", "50"], &cfg);
    assert_eq!(code, Some(0), "{out}");
    // Scan 1: the bridge (refused), then each tag alone = 3 requests.
    // Scans 2-5: the two tags alone = 2 each. Total 11, never the bridge
    // again.
    assert!(out.contains("  11 requests"), "{out}");
    // The peer logs the requests it serves (not the refused bridge): each
    // tag alone, every scan.
    let reads = peer.requests();
    assert_eq!(reads, [(3, 58, 1), (3, 100, 1)].repeat(5), "{reads:?}");
    // In a run: logged once, however many scans.
    let mut rtds = Rtds::start(&cfg);
    let db = dir.path("rtds.db");
    wait_for(
        "many scans",
        Duration::from_secs(20),
        || matches!(current(&db, "peer._requests"), Some((Sql::Integer(n), _)) if n >= 30),
    );
    let (st, _) = rtds.stop();
    assert!(st.success());
    let log = rtds.log_text();
    assert_eq!(
        log.matches("reading them without bridging gaps from now on")
            .count(),
        1,
        "{log}"
    );
    assert_eq!(status_of(&db, "A58"), Some(0));
    assert_eq!(status_of(&db, "A100"), Some(0));
}

/// The tags of the recorded run: every type and byte order, bits, arrays,
/// a string, scaled values and input registers, each on registers the
/// simulator's `--changing` map moves on every read.
fn recorded_tags() -> String {
    let mut lines = Vec::new();
    let mut addr = 0u32;
    let mut tag = |name: String, keys: String, width: u32| {
        lines.push(format!(
            "(name: \"{name}\", address: \"hr:{addr}\", {keys}),"
        ));
        addr += width;
    };
    tag("U16".into(), r#"type: "u16""#.into(), 1);
    tag("I16".into(), r#"type: "i16""#.into(), 1);
    for order in ["ABCD", "CDAB", "BADC", "DCBA"] {
        for (t, w) in [
            ("u32", 2),
            ("i32", 2),
            ("f32", 2),
            ("u64", 4),
            ("i64", 4),
            ("f64", 4),
        ] {
            tag(
                format!("{}_{order}", t.to_uppercase()),
                format!(r#"type: "{t}", order: "{order}""#),
                w,
            );
        }
    }
    tag("U16x4".into(), r#"type: "u16", count: 4"#.into(), 4);
    tag("F32x3".into(), r#"type: "f32", count: 3"#.into(), 6);
    tag(
        "F64x2".into(),
        r#"type: "f64", count: 2, order: "DCBA""#.into(),
        8,
    );
    tag("Text".into(), r#"type: "string", count: 4"#.into(), 4);
    tag(
        "Scaled".into(),
        r#"type: "u16", scale: 0.1, offset: -5"#.into(),
        1,
    );
    tag("ScaledF".into(), r#"type: "f32", scale: 0.001"#.into(), 2);
    tag("ScaledI".into(), r#"type: "i32", scale: 10"#.into(), 2);
    let bit_reg = addr;
    for b in [0, 1, 15] {
        lines.push(format!(
            "(name: \"Bit{b}\", address: \"hr:{bit_reg}.{b}\", type: \"bool\"),"
        ));
    }
    lines.push(r#"(name: "In16", address: "ir:7", type: "u16"),"#.into());
    lines.push(r#"(name: "InF32", address: "ir:8", type: "f32", order: "CDAB"),"#.into());
    lines.join("\n")
}

/// The archive of a fixed run, value by value, against a recording made
/// before the decoding and storage were reworked for speed (issue 27):
/// every value bit for bit (floats as their bits), in order, per tag. The
/// simulator's `--changing` map gives the same registers on every run.
/// `RTDS_RECORD=1` writes the recording anew (only when a change of values
/// is intended, and then it says so in its commit).
#[test]
fn archived_values_match_the_recorded_run() {
    let dir = TempDir::new("recorded");
    let sim = Sim::start(&["--changing"]);
    let cfg = config(&dir, 20, &[("plc", sim.port, "", &recorded_tags())], &[]);
    let (code, _, err) = rtds_cmd(&["run", "--scans", "6"], &cfg);
    assert_eq!(code, Some(0), "{err}");
    let mut got = String::new();
    for r in archive_rows(&dir.path("rtds.db")) {
        if r.name.contains("._") {
            continue; // diagnostics depend on timing
        }
        let v = match &r.value {
            Sql::Integer(i) => format!("i {i}"),
            Sql::Real(f) => format!("r {f:?} {:016x}", f.to_bits()),
            Sql::Text(t) => format!("t {t}"),
            Sql::Null => "null".into(),
            Sql::Blob(b) => format!("b {b:?}"),
        };
        got.push_str(&format!("{}\t{}\t{v}\n", r.name, r.status));
    }
    let fixture =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/recorded_run.tsv");
    if std::env::var_os("RTDS_RECORD").is_some() {
        std::fs::write(&fixture, &got).unwrap();
    }
    let want = std::fs::read_to_string(&fixture).expect("the recording");
    // Six reads, each moving every register: six rows of each word tag.
    assert_eq!(
        got.lines().filter(|l| l.starts_with("U16\t")).count(),
        6,
        "{got}"
    );
    // And the first tags from the simulator's documented map itself, not
    // from any recording: register a after k reads holds
    // 0x4000 + (a × 37 mod 1024) + k; U16 at hr:0, U32 ABCD at hr:2–3,
    // F32 ABCD at hr:6–7 (stored as the f64 of its shortest decimal).
    let reg = |a: u32, k: u32| 0x4000 + (a * 37 % 1024) + k;
    let column = |name: &str| -> Vec<String> {
        got.lines()
            .filter(|l| l.starts_with(&format!("{name}\t")))
            .map(|l| l.rsplit('\t').next().unwrap().to_string())
            .collect()
    };
    let (u16s, u32s, f32s) = (column("U16"), column("U32_ABCD"), column("F32_ABCD"));
    assert_eq!((u32s.len(), f32s.len()), (6, 6));
    for k in 0..6u32 {
        let i = k as usize;
        assert_eq!(u16s[i], format!("i {}", reg(0, k)));
        assert_eq!(u32s[i], format!("i {}", (reg(2, k) << 16) | reg(3, k)));
        let f: f64 = f32::from_bits((reg(6, k) << 16) | reg(7, k))
            .to_string()
            .parse()
            .unwrap();
        assert_eq!(f32s[i], format!("r {f:?} {:016x}", f.to_bits()));
    }
    for (n, (g, w)) in got.lines().zip(want.lines()).enumerate() {
        assert_eq!(g, w, "archive row {} differs from the recording", n + 1);
    }
    assert_eq!(got.lines().count(), want.lines().count());
}
