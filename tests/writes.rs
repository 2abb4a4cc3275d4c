//! Writes a PLC can trust: boundary values read back by an independent peer
//! (pymodbus, expected words from Python's `struct`), values refused before
//! the wire, a device refusing a write, and a PLC away for 30 s while a
//! script writes every cycle.

mod common;

use common::*;
use modbus::Client;
use rusqlite::types::Value as Sql;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Holding-register words of `value` packed big-endian as struct format
/// `fmt`, computed by Python, not by RTDS.
fn py_words(fmt: &str, value: &str) -> Vec<u16> {
    let out = Command::new("python3")
        .args([
            "-c",
            &format!(
                "import struct; b = struct.pack('>{fmt}', {value}); print(' '.join(str(int.from_bytes(b[i:i+2], 'big')) for i in range(0, len(b), 2)))"
            ),
        ])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(|w| w.parse().unwrap())
        .collect()
}

#[test]
fn boundary_writes_reach_the_peer_exactly_and_bad_ones_never_leave() {
    let dir = TempDir::new("write-edges");
    let peer = Peer::start(&dir);
    // pymodbus memory: hr 40-59 and 100-109; 60-99 answer exception 2.
    let tags = r#"                (name: "Max", address: "hr:40", type: "i64", writable: true),
                (name: "Min", address: "hr:44", type: "i64", writable: true),
                (name: "U64Max", address: "hr:48", type: "u64", writable: true),
                (name: "Odd", address: "hr:52", type: "i64", writable: true),
                (name: "W16", address: "hr:56", type: "u16", writable: true),
                (name: "WF", address: "hr:57", type: "f32", writable: true),
                (name: "U64F", address: "hr:100", type: "u64", writable: true),
                (name: "Hole", address: "hr:60", type: "u16", writable: true),"#;
    let good = r#"
        server.set_value("Max", 9223372036854775807);
        server.set_value("Min", -9223372036854775807 - 1);
        server.set_value("U64Max", "18446744073709551615");
        server.set_value("Odd", 9007199254740993);
        server.set_value("Hole", 7);
    "#;
    let cfg = config(
        &dir,
        200,
        &[("peer", peer.port, "", tags)],
        &[
            ("good", good),
            ("too_big", "\nserver.set_value(\"W16\", 70000);\n"),
            (
                "not_a_number",
                "let x = 0.0 / 0.0;\nserver.set_value(\"WF\", x);\n",
            ),
            (
                "float_u64",
                "server.set_value(\"U64F\", 18446744073709551615.0);\n",
            ),
        ],
    );
    let mut rtds = Rtds::start(&cfg);
    let mut client = modbus_client(peer.port);
    let mut want = py_words("q", "2**63 - 1");
    want.extend(py_words("q", "-2**63"));
    want.extend(py_words("Q", "2**64 - 1"));
    want.extend(py_words("q", "2**53 + 1"));
    wait_for(
        "boundary values on the peer",
        Duration::from_secs(20),
        || client.read_holding_registers(40, 16).unwrap() == want,
    );
    let db = dir.path("rtds.db");
    wait_for("confirmed writes archived", Duration::from_secs(10), || {
        archive(&db, "Odd")
            .iter()
            .any(|r| r.0 == Sql::Integer(9007199254740993))
    });
    std::thread::sleep(Duration::from_millis(600));
    let (st, _) = rtds.stop();
    let log = rtds.log_text();
    assert!(st.success(), "{log}");
    // Refused values never reached the wire: the registers are untouched
    // and the peer saw no write there.
    assert_eq!(client.read_holding_registers(56, 3).unwrap(), vec![0, 0, 0]);
    assert_eq!(client.read_holding_registers(100, 4).unwrap(), vec![0; 4]);
    let writes: Vec<(u8, u16, u16)> = peer
        .requests()
        .into_iter()
        .filter(|r| matches!(r.0, 5 | 6 | 15 | 16))
        .collect();
    for addr in [56, 57, 100] {
        assert!(
            !writes.iter().any(|w| w.1 == addr),
            "write to {addr}: {writes:?}"
        );
    }
    // Each refusal is a script error naming script, line, tag and value.
    for (script, line, what) in [
        ("too_big", 2, "tag `W16`: 70000 does not fit u16"),
        ("not_a_number", 2, "tag `WF`: NaN is not a finite number"),
        (
            "float_u64",
            1,
            "tag `U64F`: 18446744073709552000 does not fit u64",
        ),
    ] {
        let hit = log
            .lines()
            .find(|l| l.contains(&format!("script {script}")) && l.contains(what));
        let hit = hit.unwrap_or_else(|| panic!("no error for {script} in:\n{log}"));
        assert!(hit.contains(&format!("line {line}")), "{hit}");
    }
    // The archive holds exact integers, u64 above i64::MAX as its decimal
    // text, and never a value the device does not hold.
    let good_values = |tag: &str| -> Vec<Sql> {
        archive(&db, tag)
            .into_iter()
            .filter(|r| r.1 == 0)
            .map(|r| r.0)
            .collect()
    };
    assert!(good_values("Max").contains(&Sql::Integer(i64::MAX)));
    assert!(good_values("Min").contains(&Sql::Integer(i64::MIN)));
    assert!(good_values("U64Max").contains(&Sql::Text("18446744073709551615".into())));
    assert!(good_values("Odd").contains(&Sql::Integer(9007199254740993)));
    assert!(!good_values("W16").contains(&Sql::Integer(70000)));
    assert!(good_values("U64F").iter().all(|v| *v == Sql::Integer(0)));
    // The device refused the write to the hole: logged, counted, not archived.
    assert!(log.contains("write of 7 to Hole refused"), "{log}");
    assert!(!good_values("Hole").contains(&Sql::Integer(7)));
    assert!(matches!(current(&db, "peer._write_errors"), Some((Sql::Integer(n), 0)) if n >= 1));
    assert!(matches!(current(&db, "peer._writes"), Some((Sql::Integer(n), 0)) if n >= 4));
}

#[test]
fn a_plc_away_for_30_s_gets_one_write_of_the_latest_value_and_polls_go_on() {
    let dir = TempDir::new("write-away");
    let sim = Sim::start(&[]);
    let port = sim.port;
    let tags = r#"                (name: "Setpoint", address: "hr:100", type: "u16", writable: true),
                (name: "Counter", address: "hr:0", type: "u16"),"#;
    // A new setpoint every cycle while the PLC is away, nothing otherwise.
    let script = r#"
        let c = server.get("plc1._connected");
        if c.value == false {
            let n = (state.n ?? 0) + 1;
            state.n = n;
            server.set_value("Setpoint", n);
            server.set_value("LastSet", n);
        }
    "#;
    let cfg = config(&dir, 100, &[("plc1", port, "", tags)], &[("away", script)]);
    let db = dir.path("rtds.db");
    let mut rtds = Rtds::start(&cfg);
    let connected = || matches!(current(&db, "plc1._connected"), Some((Sql::Integer(1), 0)));
    wait_for("connected", Duration::from_secs(15), connected);
    drop(sim);
    let away = Instant::now();
    wait_for(
        "writes queued",
        Duration::from_secs(10),
        || matches!(current(&db, "LastSet"), Some((Sql::Integer(n), 0)) if n > 5),
    );
    while away.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(500));
        // Polls go on at the back-off pace: the tags say "not connected",
        // never "stale" behind a queue of writes.
        if away.elapsed() > Duration::from_secs(5) {
            assert_eq!(
                status_of(&db, "Counter"),
                Some(1),
                "at {:?}",
                away.elapsed()
            );
        }
    }
    let set_while_away = match current(&db, "LastSet") {
        Some((Sql::Integer(n), _)) => n,
        other => panic!("{other:?}"),
    };
    assert!(
        set_while_away > 100,
        "{set_while_away} setpoints while away"
    );
    // The PLC returns, logging every request it serves.
    let log_path = dir.path("sim.log");
    let child = Command::new(env!("CARGO_BIN_EXE_rtds-sim"))
        .args(["--port", &port.to_string(), "--log-requests"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let _sim2 = Proc { child };
    wait_for("reconnected", Duration::from_secs(20), connected);
    std::thread::sleep(Duration::from_secs(1));
    let last = match current(&db, "LastSet") {
        Some((Sql::Integer(n), _)) => n,
        other => panic!("{other:?}"),
    };
    let (st, took) = rtds.stop();
    assert!(st.success(), "{}", rtds.log_text());
    assert!(took < Duration::from_secs(2), "stop took {took:?}");
    let sim_log = std::fs::read_to_string(&log_path).unwrap();
    let written: Vec<i64> = sim_log
        .lines()
        .filter_map(|l| {
            let v = l.split("WriteSingleRegister { addr: 100, value: ").nth(1)?;
            v.split(' ').next()?.parse().ok()
        })
        .collect();
    eprintln!("{set_while_away} setpoints set while away; written on return: {written:?}");
    // Hundreds of setpoints while away; on return the latest only (a
    // second one may follow if a script ran before it saw the link back).
    assert!(!written.is_empty() && written.len() <= 2, "{written:?}");
    assert!(written.windows(2).all(|w| w[0] < w[1]), "{written:?}");
    assert_eq!(*written.last().unwrap(), last, "{written:?}");
    assert!(
        written[0] >= set_while_away,
        "{written:?} vs {set_while_away}"
    );
    // Archived setpoints are ones the PLC confirmed (or read), never the
    // hundreds it never held.
    let archived: Vec<i64> = archive(&db, "Setpoint")
        .into_iter()
        .filter(|r| r.1 == 0)
        .map(|r| int(&r.0))
        .collect();
    assert!(
        archived.iter().all(|v| *v == 0 || written.contains(v)),
        "{archived:?}"
    );
    // Stale and "not connected" rows while away, then good ones: in order.
    assert_ts_monotonic(&db);
}

#[test]
fn a_stop_with_writes_pending_for_a_dead_plc_is_quick_and_says_so() {
    let dir = TempDir::new("write-stop");
    // Port 9 on loopback: nothing listens.
    let tags =
        r#"                (name: "Setpoint", address: "hr:100", type: "u16", writable: true),"#;
    let script = "server.set_value(\"Setpoint\", 5);\n";
    let cfg = config(&dir, 50, &[("plc1", 9, "", tags)], &[("w", script)]);
    let mut rtds = Rtds::start(&cfg);
    let db = dir.path("rtds.db");
    wait_for("not connected", Duration::from_secs(15), || {
        status_of(&db, "Setpoint") == Some(1)
    });
    std::thread::sleep(Duration::from_secs(2));
    let (st, took) = rtds.stop();
    assert!(st.success());
    assert!(took < Duration::from_secs(2), "{took:?}");
    let log = rtds.log_text();
    assert!(
        log.contains(
            "1 pending writes dropped at stop: the device is not connected (Setpoint = 5)"
        ),
        "{log}"
    );
}

/// The value Python's `struct` gives back for `value` packed as `fmt`
/// (what a register of that type holds), printed with repr.
fn py_held(fmt: &str, value: &str) -> String {
    let out = Command::new("python3")
        .args([
            "-c",
            &format!("import struct; print(repr(struct.unpack('>{fmt}', struct.pack('>{fmt}', {value}))[0]))"),
        ])
        .output()
        .expect("python3");
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn confirmed_writes_archive_what_the_device_holds_once() {
    let dir = TempDir::new("write-held");
    let peer = Peer::start(&dir);
    let tags = r#"                (name: "W16", address: "hr:40", type: "u16", writable: true),
                (name: "Scaled", address: "hr:41", type: "u16", scale: 0.1, writable: true),
                (name: "F32", address: "hr:42", type: "f32", writable: true),
                (name: "I64F", address: "hr:44", type: "i64", writable: true),
                (name: "U64T", address: "hr:48", type: "u64", writable: true),
                (name: "Bit", address: "hr:52.3", type: "bool", writable: true),"#;
    // The same values every cycle: the device rounds or narrows each.
    let script = r#"
        server.set_value("W16", 7.4);
        server.set_value("Scaled", 12.34);
        server.set_value("F32", 16777217);
        server.set_value("I64F", 5.6);
        server.set_value("U64T", "18446744073709551615");
        server.set_value("Bit", 1);
    "#;
    let cfg = config(
        &dir,
        100,
        &[("peer", peer.port, "", tags)],
        &[("w", script)],
    );
    let mut rtds = Rtds::start(&cfg);
    let mut client = modbus_client(peer.port);
    // What the device must hold, packed by Python.
    let mut want = py_words("H", "round(7.4)");
    want.extend(py_words("H", "round(12.34 / 0.1)"));
    want.extend(py_words("f", "16777217"));
    want.extend(py_words("q", "round(5.6)"));
    want.extend(py_words("Q", "2**64 - 1"));
    want.extend(py_words("H", "1 << 3"));
    wait_for(
        "the device holds the values",
        Duration::from_secs(20),
        || client.read_holding_registers(40, 13).unwrap() == want,
    );
    // Twenty more cycles of the same writes and reads.
    std::thread::sleep(Duration::from_secs(2));
    let (st, _) = rtds.stop();
    assert!(st.success(), "{}", rtds.log_text());
    let db = dir.path("rtds.db");
    let f32_held: f64 = py_held("f", "16777217").parse().unwrap();
    let scaled: f64 = Command::new("python3")
        .args(["-c", "print(float('%.15g' % (123 * 0.1)))"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().parse().unwrap())
        .unwrap();
    for (tag, held) in [
        ("W16", Sql::Integer(7)),
        ("Scaled", Sql::Real(scaled)),
        ("F32", Sql::Real(f32_held)),
        ("I64F", Sql::Integer(6)),
        ("U64T", Sql::Text("18446744073709551615".into())),
        ("Bit", Sql::Integer(1)),
    ] {
        let good: Vec<Sql> = archive(&db, tag)
            .into_iter()
            .filter(|r| r.1 == 0)
            .map(|r| r.0)
            .collect();
        // Before the first write the register held 0: at most that row,
        // then exactly one row of the held value, for 20 confirmations and
        // 20 reads of it.
        let rows_of_held = good.iter().filter(|v| **v == held).count();
        assert_eq!(rows_of_held, 1, "{tag}: {good:?}");
        assert!(
            good.iter()
                .all(|v| *v == held || *v == Sql::Integer(0) || *v == Sql::Real(0.0)),
            "{tag}: {good:?}"
        );
        assert_eq!(current(&db, tag), Some((held.clone(), 0)), "{tag}");
    }
}
