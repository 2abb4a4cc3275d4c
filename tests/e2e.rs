//! End to end: `rtds` against `rtds-sim` on loopback, asserting what lands
//! in the SQLite file.

mod common;

use common::*;
use modbus::Client;
use rusqlite::types::Value as Sql;
use std::process::Command;
use std::time::{Duration, Instant};

const STATIC_TAGS: &str = r#"                (name: "Pattern", address: "hr:200", type: "u16", unit: "counts"),
                (name: "Minus2", address: "40202", type: "i16"),
                (name: "Big", address: "hr:202", type: "u32"),
                (name: "Neg", address: "hr:204", type: "i32"),
                (name: "Real", address: "hr:206", type: "f32"),
                (name: "RealSwapped", address: "hr:208", type: "f32", order: "CDAB"),
                (name: "Coil1", address: "co:1", type: "bool"),
                (name: "Coil2", address: "00003", type: "bool"),
                (name: "Inputs", address: "di:0", type: "bool", count: 8),"#;

fn all_good(db: &std::path::Path, tags: &[&str]) -> bool {
    tags.iter().all(|t| status_of(db, t) == Some(0))
}

#[test]
fn values_statuses_and_archive_rows_land_in_sqlite() {
    let dir = TempDir::new("values");
    let sim = Sim::start(&[]);
    let cfg = config(&dir, 200, &[("plc1", sim.port, "", STATIC_TAGS)], &[]);
    let mut rtds = Rtds::start(&cfg);
    let db = dir.path("rtds.db");
    let names = [
        "Pattern",
        "Minus2",
        "Big",
        "Neg",
        "Real",
        "RealSwapped",
        "Coil1",
        "Coil2",
        "Inputs",
    ];
    wait_for("all tags good", Duration::from_secs(15), || {
        all_good(&db, &names)
    });
    // Let a few more scans pass: unchanged values must not add archive rows.
    let scans_before = std::fs::metadata(&db).unwrap().modified().unwrap();
    std::thread::sleep(Duration::from_millis(700));
    let (st, _) = rtds.stop();
    assert!(st.success(), "{st:?}\n{}", rtds.log_text());
    let log_file = std::fs::read_to_string(dir.path("rtds.log")).unwrap();
    assert!(
        log_file.contains(
            "rtds starting: 1 connectors, 0 scripts, 23 tags: 9 device, 14 diagnostic, 0 calculated"
        ),
        "{log_file}"
    );
    assert!(log_file.contains("rtds stopped after"), "{log_file}");
    assert!(std::fs::metadata(&db).unwrap().modified().unwrap() > scans_before);

    let expect = [
        ("Pattern", Sql::Integer(4660)),
        ("Minus2", Sql::Integer(-2)),
        ("Big", Sql::Integer(305_419_896)),
        ("Neg", Sql::Integer(-123_456)),
        ("Real", Sql::Real(123.5)),
        ("RealSwapped", Sql::Real(123.5)),
        ("Coil1", Sql::Integer(1)),
        ("Coil2", Sql::Integer(0)),
        ("Inputs", Sql::Text("[1,1,0,0,1,0,1,0]".into())),
    ];
    for (tag, value) in expect {
        assert_eq!(current(&db, tag), Some((value.clone(), 0)), "current {tag}");
        // Static values: exactly one archive row each, however many scans ran.
        assert_eq!(archive(&db, tag), vec![(value, 0)], "archive {tag}");
    }
    let c = common::db(&db).unwrap();
    let (source, address, ty, unit): (String, String, String, String) = c
        .query_row(
            "SELECT source, address, type, unit FROM tags WHERE name = 'Minus2'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .unwrap();
    assert_eq!(
        (
            source.as_str(),
            address.as_str(),
            ty.as_str(),
            unit.as_str()
        ),
        ("plc1", "40202", "i16", "")
    );
    let ok: String = c
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ok, "ok");
    // Time stamps are ISO 8601 UTC with milliseconds, readable by SQLite itself.
    let rows = archive_rows(&db);
    assert!(!rows.is_empty());
    for r in &rows {
        let ok: bool = c
            .query_row(
                "SELECT ?1 GLOB '????-??-??T??:??:??.???Z' AND julianday(?1) IS NOT NULL",
                [&r.ts],
                |x| x.get(0),
            )
            .unwrap();
        assert!(ok, "{r:?}");
    }
}

#[test]
fn scripts_derive_tags_and_write_through_to_the_plc() {
    let dir = TempDir::new("script");
    let sim = Sim::start(&[]);
    let tags = r#"                (name: "Pattern", address: "hr:200", type: "u16"),
                (name: "Setpoint", address: "hr:100", type: "u16", writable: true),
                (name: "Valve", address: "co:100", type: "bool", writable: true),
                (name: "Level", address: "hr:110", type: "f32", order: "CDAB", writable: true),"#;
    let script = r#"
        let t = server.get("Pattern");
        let d = server.get("Doubled");
        d.value = t.value * 2;
        d.status = t.status;
        server.set(d);
        server.set_value("Setpoint", 777);
        server.set_value("Valve", true);
        server.set_value("Level", 12.25);
    "#;
    let cfg = config(
        &dir,
        200,
        &[("plc1", sim.port, "", tags)],
        &[("derive", script)],
    );
    let mut rtds = Rtds::start(&cfg);
    let db = dir.path("rtds.db");
    wait_for(
        "Doubled computed and Setpoint read back",
        Duration::from_secs(15),
        || {
            current(&db, "Doubled") == Some((Sql::Integer(9320), 0))
                && current(&db, "Setpoint").map(|c| c.0) == Some(Sql::Integer(777))
        },
    );
    // An independent client sees what RTDS wrote.
    let mut peer = modbus_client(sim.port);
    wait_for(
        "all writes visible to the peer",
        Duration::from_secs(10),
        || {
            peer.read_holding_registers(100, 1).unwrap() == vec![777]
                && peer.read_coils(100, 1).unwrap() == vec![modbus::Coil::On]
                && peer.read_holding_registers(110, 2).unwrap() == vec![0x0000, 0x4144] // 12.25 CDAB
        },
    );
    let (st, _) = rtds.stop();
    assert!(st.success());
    let c = common::db(&db).unwrap();
    let source: String = c
        .query_row("SELECT source FROM tags WHERE name = 'Doubled'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(source, "script");
}

#[test]
fn a_stopped_plc_marks_its_tags_bad_without_stalling_the_rest() {
    let dir = TempDir::new("dead");
    let sim1 = Sim::start(&[]);
    let port1 = sim1.port;
    let sim2 = Sim::start(&[]);
    let tags1 = r#"                (name: "P1", address: "hr:200", type: "u16"),"#;
    let tags2 = r#"                (name: "P2", address: "hr:200", type: "u16"),"#;
    let cfg = config(
        &dir,
        100,
        &[("plc1", port1, "", tags1), ("plc2", sim2.port, "", tags2)],
        &[("ticks", TICKS)],
    );
    let mut rtds = Rtds::start(&cfg);
    let db = dir.path("rtds.db");
    wait_for("both PLCs good", Duration::from_secs(15), || {
        all_good(&db, &["P1", "P2"])
    });

    drop(sim1);
    wait_for("P1 bad", Duration::from_secs(15), || {
        matches!(status_of(&db, "P1"), Some(1) | Some(2))
    });
    wait_for(
        "link diagnostics show the outage",
        Duration::from_secs(10),
        || {
            current(&db, "plc1._connected").map(|c| c.0) == Some(Sql::Integer(0))
                && matches!(current(&db, "plc1._last_error"), Some((Sql::Text(t), 0)) if !t.is_empty())
        },
    );
    // The cycle and the other connector go on while plc1 is down.
    let ticks_at = |db: &std::path::Path| current(db, "Ticks").map_or(0, |c| int(&c.0));
    let t0 = ticks_at(&db);
    wait_for("cycles continue", Duration::from_secs(10), || {
        ticks_at(&db) >= t0 + 10
    });
    assert_eq!(status_of(&db, "P2"), Some(0));
    let p2_rows = archive(&db, "P2");
    assert_eq!(
        p2_rows,
        vec![(Sql::Integer(4660), 0)],
        "plc2 never went bad"
    );

    let _sim1 = Sim::start_on(port1, &[]);
    wait_for("P1 good again", Duration::from_secs(20), || {
        status_of(&db, "P1") == Some(0)
    });
    wait_for("plc1 connected again", Duration::from_secs(5), || {
        current(&db, "plc1._connected").map(|c| c.0) == Some(Sql::Integer(1))
    });
    let requests = |db: &std::path::Path| match current(db, "plc2._requests") {
        Some((Sql::Integer(n), 0)) => n,
        _ => 0,
    };
    let r0 = requests(&db);
    wait_for("plc2 request counter moves", Duration::from_secs(5), || {
        requests(&db) > r0
    });
    let (st, _) = rtds.stop();
    assert!(st.success());
    let statuses: Vec<i64> = archive(&db, "P1").into_iter().map(|r| r.1).collect();
    assert_eq!(statuses.first(), Some(&0));
    assert_eq!(statuses.last(), Some(&0));
    assert!(statuses.contains(&1), "a not-connected row: {statuses:?}");
    assert_ts_monotonic(&db);
    let log = rtds.log_text();
    assert!(
        log.contains("connector plc1:") && log.contains("connection restored after"),
        "{log}"
    );
}

#[test]
fn a_silent_plc_times_out_without_stalling_the_cycle() {
    // A TCP peer that accepts and never answers: the worst kind of device.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let held = std::thread::spawn(move || {
        let mut conns = Vec::new();
        silent.set_nonblocking(true).unwrap();
        let end = Instant::now() + Duration::from_secs(30);
        while Instant::now() < end {
            if let Ok((s, _)) = silent.accept() {
                conns.push(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    let dir = TempDir::new("silent");
    let tags = r#"                (name: "Mute", address: "hr:0", type: "u16"),"#;
    let cfg = config(&dir, 100, &[("mute", port, "", tags)], &[("ticks", TICKS)]);
    let mut rtds = Rtds::start(&cfg);
    let db = dir.path("rtds.db");
    wait_for("Mute times out", Duration::from_secs(15), || {
        status_of(&db, "Mute") == Some(2)
    });
    let ticks_at = |db: &std::path::Path| current(db, "Ticks").map_or(0, |c| int(&c.0));
    let t0 = ticks_at(&db);
    // 1 s timeout per poll; 100 ms cycles keep running meanwhile.
    wait_for("cycles continue", Duration::from_secs(10), || {
        ticks_at(&db) >= t0 + 15
    });
    let (st, took) = rtds.stop();
    assert!(st.success());
    assert!(
        took < Duration::from_secs(3),
        "stop took {took:?} with a silent PLC"
    );
    drop(held);
}

#[test]
fn a_bad_config_is_refused_with_file_line_and_key() {
    let dir = TempDir::new("badcfg");
    let cfg = config(
        &dir,
        200,
        &[("plc1", 5020, "; unit_di=2", STATIC_TAGS)],
        &[],
    );
    for cmd in ["run", "check"] {
        let t0 = Instant::now();
        let out = Command::new(env!("CARGO_BIN_EXE_rtds"))
            .args([cmd, "-c"])
            .arg(&cfg)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{cmd}");
        assert!(t0.elapsed() < Duration::from_secs(5));
        let err = String::from_utf8_lossy(&out.stderr);
        let expected = format!(
            "{}:8: connector `plc1`: unknown key `unit_di`",
            cfg.display()
        );
        assert!(err.contains(&expected), "{cmd}: {err}");
    }
    assert!(!dir.path("rtds.db").exists(), "nothing started");

    // A bad tag names the tag's own line; a bad script names the script's.
    let bad_tag = config(&dir, 200, &[("plc1", 5020, "", STATIC_TAGS)], &[]);
    let text = std::fs::read_to_string(&bad_tag)
        .unwrap()
        .replace("\"hr:204\", type: \"i32\"", "\"hr:204\", type: \"i33\"");
    std::fs::write(&bad_tag, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_rtds"))
        .args(["check", "-c"])
        .arg(&bad_tag)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        err.contains(":14: connector `plc1`, tag `Neg`: unknown type `i33`"),
        "{err}"
    );

    let bad_script = config(&dir, 200, &[], &[("broken", "let x = 1;\nlet = 2;\n")]);
    let out = Command::new(env!("CARGO_BIN_EXE_rtds"))
        .args(["run", "-c"])
        .arg(&bad_script)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("broken.rhai:2: script `broken` does not compile"),
        "{err}"
    );
}

#[test]
fn check_prints_the_scan_plan_without_touching_a_device() {
    let dir = TempDir::new("check");
    // Port 9 (discard) on loopback: nothing listens, nothing is sent.
    let cfg = config(&dir, 200, &[("plc1", 9, "", STATIC_TAGS)], &[]);
    let out = Command::new(env!("CARGO_BIN_EXE_rtds"))
        .args(["check", "-c"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    // hr:200..209 in one request, co:1..2, di:0..7: 3 requests.
    assert!(
        text.contains("3 requests per scan, 20 registers/bits read, 0 of them gap filler"),
        "{text}"
    );
    assert!(text.contains("FC3 hr:200 count 10"), "{text}");
    assert!(
        text.contains(
            "scan every 200 ms: 1. read plc1; 2. wait for the reads at most 100 ms; 3. run 0 scripts"
        ),
        "{text}"
    );
    // An interval that is not a multiple of the cycle is refused, with its line.
    let bad = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("interval_ms: 200", "interval_ms: 300");
    std::fs::write(&cfg, bad).unwrap();
    let (code, _, err) = rtds_cmd(&["check"], &cfg);
    assert_eq!(code, Some(2));
    assert!(
        err.contains(
            "rtds.ron:9: connector `plc1`: `interval_ms` 300 must be a multiple of cycle_ms 200"
        ),
        "{err}"
    );
    assert!(!dir.path("rtds.db").exists());
}

#[test]
fn sigterm_stores_every_cycle_and_exits_within_two_seconds() {
    let dir = TempDir::new("sigterm");
    let sim = Sim::start(&[]);
    let tags = r#"                (name: "Counter", address: "hr:0", type: "u16"),"#;
    let cfg = config(
        &dir,
        20,
        &[("plc1", sim.port, "", tags)],
        &[("ticks", TICKS)],
    );
    let mut rtds = Rtds::start(&cfg);
    let db = dir.path("rtds.db");
    wait_for(
        "some cycles",
        Duration::from_secs(15),
        || matches!(current(&db, "Ticks"), Some((Sql::Integer(n), _)) if n > 20),
    );
    let (st, took) = rtds.stop();
    assert!(st.success(), "{st:?}");
    assert!(took < Duration::from_secs(2), "stop took {took:?}");
    let log = rtds.log_text();
    let cycles: i64 = log
        .lines()
        .find_map(|l| l.split("rtds stopped after ").nth(1))
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no summary line in log:\n{log}"));
    // Every cycle's value is in the archive, in order, none missing.
    let values: Vec<i64> = archive(&db, "Ticks").iter().map(|r| int(&r.0)).collect();
    assert_eq!(values, (1..=cycles).collect::<Vec<_>>());
    assert_eq!(current(&db, "Ticks"), Some((Sql::Integer(cycles), 0)));
}

#[test]
fn sighup_reloads_a_good_config_and_refuses_a_bad_one() {
    let dir = TempDir::new("reload");
    let sim = Sim::start(&[]);
    let one = r#"                (name: "Pattern", address: "hr:200", type: "u16"),"#;
    let cfg = config(&dir, 100, &[("plc1", sim.port, "", one)], &[]);
    let mut rtds = Rtds::start(&cfg);
    let db = dir.path("rtds.db");
    wait_for("Pattern good", Duration::from_secs(15), || {
        status_of(&db, "Pattern") == Some(0)
    });

    // A broken file is refused and the running configuration keeps going.
    let good_text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, good_text.replace("unit_id=1", "unit_id=one")).unwrap();
    rtds.proc.signal(libc::SIGHUP);
    wait_for("refusal logged", Duration::from_secs(10), || {
        rtds.log_text()
            .contains("key `unit_id`: `one` is not a whole number in 0..=255")
    });
    assert!(
        rtds.log_text().contains("reload refused"),
        "{}",
        rtds.log_text()
    );

    // A good one adds a tag and keeps the old one's history.
    let two =
        format!("{one}\n                (name: \"Real\", address: \"hr:206\", type: \"f32\"),");
    config(&dir, 100, &[("plc1", sim.port, "", &two)], &[]);
    rtds.proc.signal(libc::SIGHUP);
    wait_for("new tag read", Duration::from_secs(15), || {
        current(&db, "Real") == Some((Sql::Real(123.5), 0))
    });
    assert_eq!(status_of(&db, "Pattern"), Some(0));
    let (st, _) = rtds.stop();
    assert!(st.success());
    assert_eq!(
        archive(&db, "Pattern"),
        vec![(Sql::Integer(4660), 0)],
        "no duplicate row across the reload"
    );
}

#[test]
fn a_broken_or_endless_script_is_stopped_and_the_rest_runs_on() {
    let dir = TempDir::new("badscript");
    let sim = Sim::start(&[]);
    let tags = r#"                (name: "Pattern", address: "hr:200", type: "u16"),"#;
    let flaky = "let t = server.get_value(\"Ticks\");\nserver.set_value(\"Flaky\", t);\nif t % 2 == 0 { throw \"even tick\"; }\n";
    let cfg = config(
        &dir,
        100,
        &[("plc1", sim.port, "", tags)],
        &[
            ("ticks", TICKS),
            ("forever", "let n = 0;\nloop { n += 1; }\n"),
            ("flaky", flaky),
        ],
    );
    // The endless script gets 150 ms per run.
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "(file: \"forever.rhai\")",
        "(file: \"forever.rhai\", max_ms: 150)",
    );
    std::fs::write(&cfg, text).unwrap();
    let mut rtds = Rtds::start(&cfg);
    let db = dir.path("rtds.db");
    wait_for(
        "ten cycles despite the endless script",
        Duration::from_secs(20),
        || current(&db, "Ticks").is_some_and(|c| matches!(c.0, Sql::Integer(n) if n >= 10)),
    );
    let (st, _) = rtds.stop();
    assert!(st.success());
    let log = rtds.log_text();
    assert!(
        log.contains("script forever line 2: stopped: exceeded its time limit of 150 ms"),
        "{log}"
    );
    assert!(log.contains("script flaky line 3: even tick"), "{log}");
    // Flaky's runs alternate: kept on odd ticks, discarded (status 4) on even.
    let rows = archive(&db, "Flaky");
    assert!(
        rows.iter().any(|r| r.1 == 0) && rows.iter().any(|r| r.1 == 4),
        "{rows:?}"
    );
    for (v, st) in &rows {
        if *st == 0 {
            assert_eq!(
                int(v) % 2,
                1,
                "only odd values are ever stored as good: {rows:?}"
            );
        }
    }
    assert_eq!(status_of(&db, "Pattern"), Some(0));
}

#[test]
fn a_script_that_does_not_compile_is_refused_at_reload() {
    let dir = TempDir::new("reloadscript");
    let sim = Sim::start(&[]);
    let tags = r#"                (name: "Pattern", address: "hr:200", type: "u16"),"#;
    let cfg = config(
        &dir,
        100,
        &[("plc1", sim.port, "", tags)],
        &[("ticks", TICKS)],
    );
    let mut rtds = Rtds::start(&cfg);
    let db = dir.path("rtds.db");
    let ticks = |db: &std::path::Path| match current(db, "Ticks") {
        Some((Sql::Integer(n), 0)) => n,
        _ => 0,
    };
    wait_for("ticks", Duration::from_secs(15), || ticks(&db) >= 3);
    dir.write("ticks.rhai", "let t = server.get(\"Ticks\")\nt.value = ;\n");
    rtds.proc.signal(libc::SIGHUP);
    // Wait for the whole line: the log is written as it is formatted.
    wait_for("refusal logged", Duration::from_secs(10), || {
        rtds.log_text().contains("reload refused")
            && rtds
                .log_text()
                .contains("ticks.rhai:2: script `ticks` does not compile")
    });
    // The compiled old script keeps running.
    let t0 = ticks(&db);
    wait_for("old script still runs", Duration::from_secs(10), || {
        ticks(&db) >= t0 + 5
    });
    rtds.stop();
}

#[test]
fn the_shipped_demo_configuration_validates() {
    let conf = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/rtds.ron");
    let (code, out, err) = rtds_cmd(&["check"], &conf);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("1 connectors, 4 scripts; 33 tags: 19 device, 14 diagnostic, 0 calculated"),
        "{out}"
    );
}

fn spreadsheet_config(dir: &TempDir, port: u16, file: &str, sheet: &str) -> std::path::PathBuf {
    dir.write(
        "rtds.ron",
        &format!(
            "(\n    storage: (path: \"rtds.db\"),\n    connectors: [(\n        name: \"plc1\",\n        connection: \"connector=ModbusTcp; host=127.0.0.1; port={port}; timeout=1\",\n        tags: [(name: \"Inline\", address: \"hr:200\")],\n        tags_file: \"{file}\",{sheet}\n    )],\n)\n"
        ),
    )
}

#[test]
fn tags_come_from_ods_and_csv_spreadsheets() {
    let dir = TempDir::new("sheets");
    let sim = Sim::start(&[]);
    let ods = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/config.ods");
    std::fs::copy(&ods, dir.path("config.ods")).unwrap();
    let cfg = spreadsheet_config(
        &dir,
        sim.port,
        "config.ods",
        "\n        tags_sheet: \"plc1\",",
    );
    let (code, out, err) = rtds_cmd(&["read"], &cfg);
    assert_eq!(code, Some(0), "{out}{err}");
    for want in ["Inline ", "OdsPattern ", "OdsCounter ", "OdsSine "] {
        let line = out
            .lines()
            .find(|l| l.trim_start().starts_with(want))
            .unwrap_or_else(|| panic!("{want}: {out}"));
        assert!(line.contains(" = "), "a decoded value: {line}");
    }
    assert!(
        out.lines()
            .any(|l| l.contains("OdsPattern") && l.contains(" 1234 ") && l.ends_with("= 4660")),
        "{out}"
    );

    let cfg = spreadsheet_config(
        &dir,
        sim.port,
        "config.ods",
        "\n        tags_sheet: \"nope\",",
    );
    let (code, _, err) = rtds_cmd(&["check"], &cfg);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("rtds.ron:7: connector `plc1`: tags_file")
            && err.contains("no sheet `nope` (sheets: plc1)"),
        "{err}"
    );

    dir.write(
        "tags.csv",
        "name;address;type;scale\nGood;hr:206;f32;1\nBad;hr:204;i33;1\nWorse;hr:1;u16;lots\n",
    );
    let cfg = spreadsheet_config(&dir, sim.port, "tags.csv", "");
    let (code, _, err) = rtds_cmd(&["check"], &cfg);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("tags.csv:4: column D (`scale`): `lots` is not a number"),
        "{err}"
    );
    dir.write(
        "tags.csv",
        "name;address;type\nGood;hr:206;f32\nBad;hr:204;i33\n",
    );
    let (code, _, err) = rtds_cmd(&["check"], &cfg);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("tags.csv:3: tag `Bad`: unknown type `i33`"),
        "{err}"
    );
    dir.write("tags.csv", "name;address;type\nInline;hr:206;f32\n");
    let (_, _, err) = rtds_cmd(&["check"], &cfg);
    assert!(
        err.contains("tags.csv:2: tag `Inline`: the name is used twice"),
        "{err}"
    );
}

#[test]
fn with_no_connectors_the_loop_idles() {
    let dir = TempDir::new("idle");
    let cfg = config(&dir, 1000, &[], &[]);
    let mut rtds = Rtds::start(&cfg);
    let db = dir.path("rtds.db");
    wait_for("started", Duration::from_secs(10), || db.exists());
    let cpu = |pid: i32| -> f64 {
        // utime + stime, fields 14 and 15 of /proc/PID/stat, in clock ticks.
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<&str> = after.split(' ').collect();
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        (f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap()) / hz
    };
    let before = cpu(rtds.proc.pid());
    std::thread::sleep(Duration::from_secs(3));
    let used = cpu(rtds.proc.pid()) - before;
    let (st, _) = rtds.stop();
    assert!(st.success());
    assert!(used < 0.3, "{used:.2} s of CPU in 3 s with nothing to do");
}

#[test]
fn script_state_survives_a_reload_and_a_restart_unless_the_script_changes() {
    let dir = TempDir::new("state");
    let count = "let n = (state.n ?? 0) + 1;\nstate.n = n;\nserver.set_value(\"N\", n);\n";
    let cfg = config(&dir, 50, &[], &[("count", count)]);
    let db = dir.path("rtds.db");
    let n = || match current(&db, "N") {
        Some((Sql::Integer(n), 0)) => n,
        _ => 0,
    };
    let mut rtds = Rtds::start(&cfg);
    wait_for("counting", Duration::from_secs(15), || n() >= 20);
    // A reload that does not touch the script: the count goes on.
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("cycle_ms: 50", "cycle_ms: 60");
    std::fs::write(&cfg, text).unwrap();
    rtds.proc.signal(libc::SIGHUP);
    wait_for("reloaded", Duration::from_secs(10), || {
        rtds.log_text().contains("1 scripts keep their state")
    });
    let values =
        |db: &std::path::Path| -> Vec<i64> { archive(db, "N").iter().map(|r| int(&r.0)).collect() };
    wait_for("counting on", Duration::from_secs(10), || n() >= 60);
    let v = values(&db);
    assert!(
        v.windows(2).all(|w| w[1] == w[0] + 1),
        "no restart at 1: {v:?}"
    );
    // A restart: the state comes back from the live database.
    let (st, _) = rtds.stop();
    assert!(st.success());
    let before = n();
    let mut rtds = Rtds::start(&cfg);
    wait_for("counting after restart", Duration::from_secs(15), || {
        n() > before + 5
    });
    assert!(rtds.log_text().contains("the state of 1 scripts restored"));
    let v = values(&db);
    assert!(
        v.windows(2).all(|w| w[1] == w[0] + 1),
        "no restart at 1: {v:?}"
    );
    // A changed script starts fresh.
    dir.write(
        "count.rhai",
        "let n = (state.n ?? 1000) + 1;\nstate.n = n;\nserver.set_value(\"N\", n);\n",
    );
    rtds.proc.signal(libc::SIGHUP);
    wait_for("fresh state", Duration::from_secs(10), || {
        (1001..1100).contains(&n())
    });
    assert!(
        rtds.log_text()
            .contains("0 scripts keep their state and schedule, 1 start fresh")
    );
    let (st, _) = rtds.stop();
    assert!(st.success());
}

/// The shipped demo configuration and scripts, in `dir`, against `port`,
/// at a faster scan.
fn demo_config(dir: &TempDir, port: u16) -> std::path::PathBuf {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(repo.join("conf/rtds.ron"))
        .unwrap()
        .replace("\"../data/", &format!("\"{}/", dir.0.display()))
        .replace("\"../scripts/", &format!("\"{}/scripts/", repo.display()))
        .replace(
            "\"tags.csv\"",
            &format!("\"{}/conf/tags.csv\"", repo.display()),
        )
        .replace("port=5020", &format!("port={port}"))
        // Tests run side by side: the demo's status page on any free port.
        .replace("listen: \"127.0.0.1:8080\"", "listen: \"127.0.0.1:0\"")
        .replace("cycle_ms: 1000", "cycle_ms: 200")
        .replace("interval_ms: 1000", "interval_ms: 200");
    dir.write("rtds.ron", &text)
}

#[test]
fn the_demo_with_its_plc_off_logs_one_warning_and_no_script_errors() {
    let dir = TempDir::new("demo-off");
    // Port 9 on loopback: nothing listens.
    let cfg = demo_config(&dir, 9);
    let mut rtds = Rtds::start(&cfg);
    let db = dir.path("rtds.db");
    wait_for("tags marked not connected", Duration::from_secs(15), || {
        status_of(&db, "Counter") == Some(1) && status_of(&db, "SineScaled") == Some(1)
    });
    std::thread::sleep(Duration::from_secs(2));
    let (st, _) = rtds.stop();
    assert!(st.success());
    let log = rtds.log_text();
    let errors: Vec<&str> = log.lines().filter(|l| l.contains("[ERROR]")).collect();
    assert!(errors.is_empty(), "{errors:#?}");
    let warnings: Vec<&str> = log.lines().filter(|l| l.contains("[WARN]")).collect();
    assert_eq!(warnings.len(), 1, "{warnings:#?}");
    assert!(warnings[0].contains("connector plc1:"), "{warnings:#?}");
    // The inputs unpacked from the block carry the block's bad status.
    assert_eq!(status_of(&db, "Input_0"), Some(1));
}

#[test]
fn the_demo_against_the_simulator_computes_its_tags() {
    let dir = TempDir::new("demo-on");
    let sim = Sim::start(&[]);
    let cfg = demo_config(&dir, sim.port);
    let mut rtds = Rtds::start(&cfg);
    let db = dir.path("rtds.db");
    wait_for(
        "derived and unpacked tags good",
        Duration::from_secs(15),
        || {
            all_good(
                &db,
                &["SineScaled", "Input_0", "Input_7", "Setpoint", "Pump"],
            )
        },
    );
    let (st, _) = rtds.stop();
    assert!(st.success());
    assert!(!rtds.log_text().contains("[ERROR]"), "{}", rtds.log_text());
    // rtds-sim's di:0..7 are 1 1 0 0 1 0 1 0 (its register map).
    let bits: Vec<Option<(Sql, i64)>> = (0..8)
        .map(|i| current(&db, &format!("Input_{i}")))
        .collect();
    let want: Vec<Option<(Sql, i64)>> = [1, 1, 0, 0, 1, 0, 1, 0]
        .iter()
        .map(|b| Some((Sql::Integer(*b), 0)))
        .collect();
    assert_eq!(bits, want);
}
