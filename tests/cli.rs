//! The command line as a newcomer and a commissioning engineer meet it:
//! usage and help, messages that say what to do next, `rtds read` with raw
//! registers in hex, `rtds write` read back by an independent peer, and
//! `rtds status --watch` ending cleanly on Ctrl-C.

mod common;

use common::*;
use modbus::Client;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn rtds(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_rtds"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn usage_help_and_messages_that_say_what_to_do() {
    let (code, out, err) = rtds(&[]);
    assert_eq!(code, Some(2));
    assert!(
        out.is_empty() && err.contains("usage: rtds COMMAND") && err.contains("examples:"),
        "{err}"
    );
    let (code, out, _) = rtds(&["--help"]);
    assert_eq!(code, Some(0));
    assert!(
        out.contains("rtds write -c conf/rtds.ron Setpoint 42"),
        "{out}"
    );
    for cmd in ["run", "check", "status", "read", "write", "ack"] {
        let (code, out, _) = rtds(&[cmd, "--help"]);
        assert_eq!(code, Some(0), "{cmd}");
        assert!(
            out.starts_with(&format!("usage: rtds {cmd}")),
            "{cmd}: {out}"
        );
        // --help before the command works too.
        assert_eq!(rtds(&["--help", cmd]).1, out);
    }
    let (code, _, err) = rtds(&["frob"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("unknown command `frob`"), "{err}");

    let dir = TempDir::new("cli-msgs");
    let missing = dir.path("nope.ron");
    let (code, _, err) = rtds(&["check", "-c", missing.to_str().unwrap()]);
    assert_eq!(code, Some(2));
    assert!(
        err.contains(&format!(
            "configuration file {} not found",
            missing.display()
        )),
        "{err}"
    );
    // Options in any order; before the first run there is no database.
    let cfg = config(&dir, 1000, &[], &[]);
    let c = cfg.to_str().unwrap();
    for args in [
        vec!["status", "-c", c],
        vec!["-c", c, "status"],
        vec!["ack", "-c", c, "5"],
        vec!["-c", c, "ack", "5"],
    ] {
        let (code, _, err) = rtds(&args);
        assert_eq!(code, Some(1), "{args:?}");
        assert!(
            err.contains(&format!(
                "no database yet at {}: start `rtds run -c {c}` first",
                dir.path("rtds.db").display()
            )),
            "{args:?}: {err}"
        );
    }
    let (code, _, err) = rtds(&["ack", "-c", c]);
    assert_eq!(code, Some(2));
    assert!(err.contains("needs an archive id or a time stamp"), "{err}");
    // A script that is not there: its path as resolved.
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "scripts: [\n",
        "scripts: [\n        (file: \"gone.rhai\"),\n",
    );
    std::fs::write(&cfg, text).unwrap();
    let (code, _, err) = rtds(&["check", "-c", c]);
    assert_eq!(code, Some(2));
    assert!(
        err.contains(&format!(
            "script `gone`: file {} not found",
            dir.path("gone.rhai").display()
        )),
        "{err}"
    );
}

#[test]
fn read_shows_addresses_raw_hex_and_every_byte_order() {
    let dir = TempDir::new("cli-read");
    let sim = Sim::start(&[]);
    let tags = r#"                (name: "Pattern", address: "hr:200"),
                (name: "Real", address: "hr:206", type: "f32"),
                (name: "Swapped", address: "hr:208", type: "f32", order: "CDAB"),
                (name: "Inputs", address: "di:0", count: 8),"#;
    let cfg = config(&dir, 200, &[("plc1", sim.port, "", tags)], &[]);
    let (code, out, err) = rtds_cmd(&["read", "--orders"], &cfg);
    assert_eq!(code, Some(0), "{out}{err}");
    // The simulator's register map: hr:200 = 0x1234, hr:206-207 = 123.5 as
    // f32 ABCD (42F7 0000), hr:208-209 the same in CDAB, di:0-7 = 11001010.
    let line = |name: &str| {
        out.lines()
            .find(|l| l.trim_start().starts_with(name))
            .unwrap()
            .to_string()
    };
    assert!(
        line("Pattern").contains("hr:200 (40201)") && line("Pattern").contains(" 1234 "),
        "{out}"
    );
    assert!(line("Pattern").ends_with("= 4660"), "{out}");
    assert!(
        line("Real").contains("42F7 0000") && line("Real").ends_with("= 123.5"),
        "{out}"
    );
    assert!(
        line("Swapped").contains("0000 42F7") && line("Swapped").ends_with("= 123.5"),
        "{out}"
    );
    assert!(line("Inputs").contains("11001010"), "{out}");
    // The orders line under Real: ABCD right, CDAB obviously wrong.
    let real_at = out
        .lines()
        .position(|l| l.trim_start().starts_with("Real"))
        .unwrap();
    let orders = out.lines().nth(real_at + 1).unwrap();
    assert!(
        orders.contains("ABCD 123.5") && orders.contains("CDAB 2.402e-41"),
        "{orders}"
    );
    // --every: repeated readings at that pace.
    let t0 = Instant::now();
    let (code, out, _) = rtds_cmd(&["read", "--every", "300", "--scans", "3"], &cfg);
    assert_eq!(code, Some(0));
    assert_eq!(out.matches(", scan ").count(), 3, "{out}");
    assert!(
        t0.elapsed() >= Duration::from_millis(600),
        "{:?}",
        t0.elapsed()
    );
}

#[test]
fn write_goes_through_the_connector_and_the_peer_reads_it_back() {
    let dir = TempDir::new("cli-write");
    let peer = Peer::start(&dir);
    let tags = r#"                (name: "W16", address: "hr:40", type: "u16", writable: true),
                (name: "WI64", address: "hr:41", type: "i64", writable: true),
                (name: "Ro", address: "hr:13"),"#;
    let cfg = config(&dir, 200, &[("peer", peer.port, "", tags)], &[]);
    let (code, out, err) = rtds_cmd(&["write", "W16", "4242"], &cfg);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains("wrote 4242 to W16 (hr:40); read back: 4242, status 0 (good)"),
        "{out}"
    );
    let (code, out, err) = rtds_cmd(&["write", "WI64", "-9223372036854775808"], &cfg);
    assert_eq!(code, Some(0), "{out}{err}");
    let mut client = modbus_client(peer.port);
    assert_eq!(
        client.read_holding_registers(40, 5).unwrap(),
        vec![4242, 0x8000, 0, 0, 0]
    );
    // Refused before the wire, with the reason.
    let (code, _, err) = rtds_cmd(&["write", "W16", "70000"], &cfg);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("tag `W16`: 70000 does not fit u16; not written"),
        "{err}"
    );
    let (code, _, err) = rtds_cmd(&["write", "Ro", "1"], &cfg);
    assert_eq!(code, Some(1));
    assert!(err.contains("add `writable: true`"), "{err}");
    assert_eq!(client.read_holding_registers(40, 1).unwrap(), vec![4242]);
    // Only the two accepted writes reached the peer (pymodbus notes an
    // FC6 twice, so addresses are compared, not counts).
    let writes: Vec<(u8, u16, u16)> = peer
        .requests()
        .into_iter()
        .filter(|r| matches!(r.0, 5 | 6 | 15 | 16))
        .collect();
    assert!(
        writes.iter().all(|w| *w == (6, 40, 1) || *w == (16, 41, 4)),
        "{writes:?}"
    );
    assert_eq!(writes.iter().filter(|w| w.0 == 16).count(), 1, "{writes:?}");
}

#[test]
fn status_watch_refreshes_and_ends_cleanly_on_ctrl_c() {
    let dir = TempDir::new("cli-watch");
    let cfg = config(&dir, 100, &[], &[("ticks", TICKS)]);
    let mut server = Rtds::start(&cfg);
    let db = dir.path("rtds.db");
    wait_for("running", Duration::from_secs(15), || ticks(&db) > 0);
    let child = Command::new(env!("CARGO_BIN_EXE_rtds"))
        .args(["status", "--watch", "200", "-c"])
        .arg(&cfg)
        .stdout(std::fs::File::create(dir.path("watch.out")).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut watch = Proc { child };
    wait_for("three refreshes", Duration::from_secs(10), || {
        std::fs::read_to_string(dir.path("watch.out"))
            .unwrap_or_default()
            .matches("(every 200 ms, Ctrl-C stops)")
            .count()
            >= 3
    });
    watch.signal(libc::SIGINT);
    let st = watch
        .wait_timeout(Duration::from_secs(5))
        .expect("ends on SIGINT");
    assert_eq!(st.code(), Some(0));
    let out = std::fs::read_to_string(dir.path("watch.out")).unwrap();
    assert!(out.contains("Ticks") && out.contains("calculated"), "{out}");
    server.stop();
}

/// One mistake in a tag sheet: the cells it sets (column, value) and a
/// piece of the message that must name it.
type Mistake = (&'static [(&'static str, &'static str)], &'static str);

const MISTAKES: &[Mistake] = &[
    (&[("address", "hr:x")], "is not 0..65535"),
    (&[("address", "hr:70000")], "70000"),
    (&[("address", "zz:5")], "zz:5"),
    (&[("address", "")], "has no address"),
    (&[("type", "u17")], "unknown type `u17`"),
    (&[("address", "co:1"), ("type", "f32")], "type must be bool"),
    (&[("type", "bool")], "needs a bit number"),
    (&[("scale", "abc")], "`abc` is not a number"),
    (&[("offset", "1..2")], "`1..2` is not a number"),
    (&[("scale", "0")], "scale must be a non-zero"),
    (&[("writable", "maybe")], "`maybe` is not true or false"),
    (
        &[("archive_prev", "perhaps")],
        "`perhaps` is not true or false",
    ),
    (&[("count", "70000")], "is not a count"),
    (&[("count", "x")], "`x` is not a count"),
    (&[("count", "0")], "count must be at least 1"),
    (&[("order", "ABDC")], "unknown byte order `ABDC`"),
    (
        &[("type", "string"), ("count", "4"), ("order", "CDAB")],
        "strings take order ABCD",
    ),
    (
        &[("address", "ir:7"), ("writable", "yes")],
        "read-only table",
    ),
    (&[("deadband_pct", "1")], "deadband_pct needs span"),
    (&[("span_low", "0")], "give both span_low and span_high"),
    (&[("heartbeat_s", "-5")], "heartbeat_s -5 must be between"),
    (&[("deadband", "-1")], "deadband -1 must be"),
    (&[("deadband", "x")], "`x` is not a number"),
    (
        &[
            ("deadband", "1"),
            ("deadband_pct", "1"),
            ("span_low", "0"),
            ("span_high", "10"),
        ],
        "not both",
    ),
    (
        &[("type", "string"), ("count", "200")],
        "more than one request may read",
    ),
    (
        &[("type", "f64"), ("address", "hr:65534")],
        "runs past the end",
    ),
    (&[("address", "hr:3.16")], "hr:3.16"),
    (
        &[
            ("address", "hr:100"),
            ("type", "u16"),
            ("count", "124"),
            ("writable", "1"),
        ],
        "at most 123",
    ),
    (
        &[
            ("address", "co:9"),
            ("type", "bool"),
            ("count", "1969"),
            ("writable", "x"),
        ],
        "at most 1968",
    ),
    (&[("type", "i16"), ("address", "30001.5")], "bit address"),
];

#[test]
fn a_tag_sheet_with_forty_mistakes_is_reported_in_one_check() {
    let dir = TempDir::new("forty");
    let columns = [
        "name",
        "address",
        "type",
        "count",
        "order",
        "scale",
        "offset",
        "writable",
        "description",
        "unit",
        "deadband",
        "deadband_pct",
        "span_low",
        "span_high",
        "heartbeat_s",
        "archive_prev",
    ];
    // 5,000 tags; rows with a mistake every 120 rows, 40 of them: the 30
    // kinds above, then the first 7 again, and three repeated names.
    let mut sheet = columns.join(",") + "\n";
    let mut expected: Vec<(usize, String)> = Vec::new();
    let mut mistakes = 0;
    for i in 0..5000usize {
        let row = i + 2; // the header is row 1
        let mut cells: Vec<String> = columns.iter().map(|_| String::new()).collect();
        cells[0] = format!("T{i}");
        cells[1] = format!("hr:{}", 1000 + i);
        cells[2] = "u16".into();
        if i % 120 == 7 && mistakes < 37 {
            let (set, needle) = MISTAKES[mistakes % MISTAKES.len()];
            for (col, v) in set {
                let c = columns.iter().position(|x| x == col).unwrap();
                cells[c] = (*v).into();
            }
            expected.push((row, needle.to_string()));
            mistakes += 1;
        } else if i % 120 == 67 && (37..40).contains(&mistakes) {
            cells[0] = format!("T{}", i - 1);
            expected.push((row, "the name is used twice".into()));
            mistakes += 1;
        }
        sheet.push_str(&cells.join(","));
        sheet.push('\n');
    }
    assert_eq!(mistakes, 40);
    dir.write("tags.csv", &sheet);
    let cfg = dir.write(
        "rtds.ron",
        "(\n    storage: (path: \"rtds.db\"),\n    connectors: [\n        (name: \"plc\", connection: \"connector=ModbusTcp; host=127.0.0.1\", tags_file: \"tags.csv\"),\n    ],\n)\n",
    );
    let (code, out, err) = rtds_cmd(&["check"], &cfg);
    assert_eq!(code, Some(2), "{out}");
    let csv = dir.path("tags.csv").display().to_string();
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with(&csv)).collect();
    for (row, needle) in &expected {
        let prefix = format!("{csv}:{row}: ");
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with(&prefix) && l.contains(needle.as_str())),
            "row {row}: no `{needle}` in\n{err}"
        );
    }
    assert_eq!(lines.len(), 40, "one line per mistake:\n{err}");
    assert!(err.trim_end().ends_with("40 errors"), "{err}");
    eprintln!("{err}");
}
