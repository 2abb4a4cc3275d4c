//! The OpcUa connector against an independent server: Python asyncua
//! (tests/peers/opcua_server.py) on 127.0.0.1, started here. Expected
//! values are the ones the server script defines; writes are checked by
//! what the server prints it received; the certificate thumbprint by
//! Python's hashlib.

#![cfg(feature = "opcua")]

mod common;

use common::*;
use rusqlite::types::Value as Sql;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

struct UaServer {
    /// Killed when dropped.
    _proc: Proc,
    log: PathBuf,
}

impl UaServer {
    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_log(&self, what: &str, needle: &str, timeout: Duration) {
        wait_for(what, timeout, || self.log_text().contains(needle));
    }
}

fn ua_server(dir: &TempDir, port: u16, n: u32, args: &[&str]) -> UaServer {
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/opcua_server.py");
    let log = dir.path(&format!("ua-{n}.log"));
    let child = Command::new(python())
        .arg(script)
        .arg(port.to_string())
        .args(args)
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the asyncua server");
    let server = UaServer {
        _proc: Proc { child },
        log,
    };
    server.wait_log("asyncua listening", "listening", Duration::from_secs(30));
    server
}

/// A configuration with the given OPC UA connectors `(name, connection,
/// tag lines)` and, when given, one script.
fn ua_config(
    dir: &TempDir,
    cycle_ms: u64,
    connectors: &[(&str, &str, &str)],
    script: Option<&str>,
) -> PathBuf {
    let mut conns = String::new();
    for (name, connection, tags) in connectors {
        conns.push_str(&format!(
            "        (\n            name: \"{name}\",\n            connection: \"{connection}\",\n            tags: [\n{tags}\n            ],\n        ),\n"
        ));
    }
    let scripts = match script {
        Some(src) => {
            dir.write("w.rhai", src);
            "    scripts: [(file: \"w.rhai\")],\n"
        }
        None => "",
    };
    dir.write(
        "rtds.ron",
        &format!(
            "(\n    cycle_ms: {cycle_ms},\n    storage: (path: \"rtds.db\"),\n    connectors: [\n{conns}    ],\n{scripts})\n"
        ),
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The values of `tag` in the archive, in order, good rows only, with the
/// bad rows as `None` so runs can be told apart.
fn archived_ints(db: &std::path::Path, tag: &str) -> Vec<Option<i64>> {
    archive(db, tag)
        .into_iter()
        .map(|(v, st)| (st == 0).then(|| int(&v)))
        .collect()
}

#[test]
fn poll_reads_every_type_splits_by_max_nodes_per_read_writes_exactly_and_recovers() {
    let dir = TempDir::new("opcua");
    let port = free_port();
    let server = ua_server(&dir, port, 1, &["--max-nodes-per-read", "3"]);
    // i64::MIN written as arithmetic: a Rhai literal cannot hold it.
    let script = "if server.good(\"Count\") {\n  server.set_value(\"Setpoint\", 123);\n  server.set_value(\"Wide\", -9223372036854775807 - 1);\n  server.set_value(\"Stamp\", \"2026-11-24T06:00:00Z\");\n  server.set_value(\"Levels\", [-32768, 32767]);\n  server.set_value(\"TempW\", 99.5);\n}\n";
    let cfg = ua_config(
        &dir,
        200,
        &[(
            "ua",
            &format!(
                "connector=OpcUa; endpoint=opc.tcp://127.0.0.1:{port}/rtds/; timeout=2; retry_min=0.2; retry_max=0.5"
            ),
            r#"(name: "Temp", address: "ns=2;s=Line1.Temp"),
            (name: "Count", address: "ns=2;i=1001"),
            (name: "Big", address: "ns=2;s=Line1.Big"),
            (name: "Run", address: "ns=2;s=Line1.Run"),
            (name: "Batch", address: "ns=2;s=Line1.Batch"),
            (name: "Profile", address: "ns=2;s=Line1.Profile"),
            (name: "Nope", address: "ns=2;s=No.Such.Node"),
            (name: "Setpoint", address: "ns=2;s=Line1.Setpoint", type: "Int32", writable: true),
            (name: "Wide", address: "ns=2;s=Line1.Wide", type: "Int64", writable: true),
            (name: "Stamp", address: "ns=2;s=Line1.Stamp", type: "DateTime", writable: true),
            (name: "Levels", address: "ns=2;s=Line1.Levels", type: "Int16[]", writable: true),
            (name: "ByGuid", address: "ns=2;g=72962b91-fa75-4ae6-8d28-b404dc7daf63"),
            (name: "Opaque", address: "ns=2;b=cnRkcw=="),
            (name: "TempW", address: "ns=2;s=Line1.Temp", type: "Double", writable: true),"#,
        )],
        Some(script),
    );
    let mut rtds = Rtds::start(&cfg);
    let db = dir.path("rtds.db");
    wait_for("values", Duration::from_secs(20), || {
        current(&db, "Temp") == Some((Sql::Real(21.5), 0))
    });
    // The values the server holds, as asyncua defines them.
    assert_eq!(current(&db, "Count"), Some((Sql::Integer(-42), 0)));
    assert_eq!(current(&db, "ByGuid"), Some((Sql::Real(7.25), 0)));
    assert_eq!(current(&db, "Opaque"), Some((Sql::Integer(99), 0)));
    assert_eq!(
        current(&db, "Big"),
        Some((Sql::Text("18446744073709551615".into()), 0))
    );
    assert_eq!(current(&db, "Run"), Some((Sql::Integer(1), 0)));
    assert_eq!(current(&db, "Batch"), Some((Sql::Text("B-17".into()), 0)));
    assert_eq!(
        current(&db, "Profile"),
        Some((Sql::Text("[1.5,2.5,3.5]".into()), 0))
    );
    // An unknown node marks only its own tag bad, with the server's code:
    // BadNodeIdUnknown is 0x80340000 (OPC UA Part 4), kept as 0x8034.
    assert_eq!(status_of(&db, "Nope"), Some(0x8034));
    // The writes, as the server saw them (Python prints its own integers).
    server.wait_log(
        "the server saw 123",
        "setpoint 123",
        Duration::from_secs(10),
    );
    server.wait_log(
        "the server saw i64::MIN",
        "wide -9223372036854775808",
        Duration::from_secs(10),
    );
    server.wait_log(
        "the server saw the time",
        "stamp 2026-11-24T06:00:00\n",
        Duration::from_secs(10),
    );
    server.wait_log(
        "the server saw the array",
        "levels [-32768, 32767]",
        Duration::from_secs(10),
    );
    wait_for("the writes confirmed", Duration::from_secs(10), || {
        current(&db, "Setpoint") == Some((Sql::Integer(123), 0))
            && current(&db, "Wide") == Some((Sql::Integer(i64::MIN), 0))
    });
    // A node the server will not write (asyncua: BadNotWritable) is a
    // refused write: counted, never stored as if it had happened.
    wait_for("the refusal counted", Duration::from_secs(10), || {
        current(&db, "ua._write_errors").is_some_and(|(v, _)| int(&v) >= 1)
    });
    assert!(
        rtds.log_text()
            .contains("server refused the write to ns=2;s=Line1.Temp"),
        "{}",
        rtds.log_text()
    );
    assert!(
        archive(&db, "TempW")
            .iter()
            .all(|(v, _)| *v != Sql::Real(99.5)),
        "{:?}",
        archive(&db, "TempW")
    );
    // MaxNodesPerRead 3: 14 nodes go in Read calls of at most 3 (the server
    // refuses bigger ones, and logs the size of each).
    let sizes: Vec<usize> = server
        .log_text()
        .lines()
        .filter_map(|l| {
            l.strip_prefix("read ")?
                .strip_suffix(" nodes")?
                .parse()
                .ok()
        })
        .collect();
    assert!(sizes.len() >= 3, "reads seen: {sizes:?}");
    assert!(sizes.iter().all(|n| *n <= 3), "reads seen: {sizes:?}");
    assert_eq!(sizes.iter().take(5).sum::<usize>(), 14, "{sizes:?}");

    // Commissioning: browse the Line1 object and read through `rtds read`.
    // The DateTime read before the write replaced it, as text.
    assert!(
        archive(&db, "Stamp")
            .first()
            .is_some_and(|(v, _)| *v == Sql::Text("2026-01-02T03:04:05.000Z".into())),
        "{:?}",
        archive(&db, "Stamp")
    );
    let (code, out, err) = rtds_cmd(&["browse", "ua", "ns=2;s=Line1"], &cfg);
    assert_eq!(code, Some(0), "{out}{err}");
    let row = out
        .lines()
        .find(|l| l.starts_with("ns=2;s=Line1.Setpoint "))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        row.contains("Variable") && row.contains("Int32") && row.ends_with("rw"),
        "{row}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("ns=2;s=Line1.Profile ") && l.contains(" Double[] ")),
        "{out}"
    );
    assert!(
        out.contains(
            r#"(name: "Setpoint", address: "ns=2;s=Line1.Setpoint", type: "Int32", writable: true),"#
        ),
        "{out}"
    );
    let (code, out, err) = rtds_cmd(&["read", "ua"], &cfg);
    // Nope is bad, so the exit status says not all were good.
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(out.contains("ns=2;s=Line1.Big"), "{out}");
    assert!(out.contains("= 18446744073709551615"), "{out}");

    // The server goes away: not connected; it comes back: good again.
    let killed = Instant::now();
    drop(server);
    wait_for("not connected", Duration::from_secs(20), || {
        status_of(&db, "Temp") == Some(1)
    });
    let down = killed.elapsed();
    let restarted = Instant::now();
    let _server = ua_server(&dir, port, 2, &["--max-nodes-per-read", "3"]);
    let listening = restarted.elapsed();
    wait_for("good again", Duration::from_secs(30), || {
        status_of(&db, "Temp") == Some(0)
    });
    eprintln!(
        "poll: tags bad {:.2} s after the kill; good {:.2} s after the new server listened",
        down.as_secs_f64(),
        (restarted.elapsed() - listening).as_secs_f64()
    );
    let (st, _) = rtds.stop();
    assert!(st.success(), "{}", rtds.log_text());
    assert_ts_monotonic(&db);
}

#[test]
fn subscribe_over_sign_and_encrypt_with_login_trusts_by_directory_and_resubscribes() {
    let dir = TempDir::new("opcua-secure");
    let port = free_port();
    let certs = dir.path("srv");
    let certs_arg = certs.to_string_lossy().to_string();
    let args = ["--secure", certs_arg.as_str(), "--ramp"];
    let server = ua_server(&dir, port, 1, &args);
    // The thumbprint as Python's hashlib computes it over server.der.
    let thumb = server
        .log_text()
        .lines()
        .find_map(|l| l.strip_prefix("thumbprint ").map(str::to_string))
        .expect("the server prints its thumbprint");
    let cfg = ua_config(
        &dir,
        100,
        &[(
            "ua",
            &format!(
                "connector=OpcUa; endpoint=opc.tcp://127.0.0.1:{port}/rtds/; security=SignAndEncrypt; policy=Basic256Sha256; user=operator; password=s3cret; mode=subscribe; sampling_ms=50; publish_ms=200; queue_size=20; timeout=2; retry_min=0.3; retry_max=1"
            ),
            r#"(name: "Temp", address: "ns=2;s=Line1.Temp"),
            (name: "Ramp", address: "ns=2;s=Line1.Ramp"),
            (name: "Nope", address: "ns=2;s=No.Such.Node"),
            (name: "Setpoint", address: "ns=2;s=Line1.Setpoint", type: "Int32", writable: true),"#,
        )],
        Some(
            "if server.good(\"Ramp\") { server.set_value(\"Setpoint\", server.get(\"Ramp\").value); }\n",
        ),
    );
    let mut rtds = Rtds::start(&cfg);
    let db = dir.path("rtds.db");
    // Not trusted yet: the certificate waits in rejected/, named by its
    // thumbprint, and the log says where to move it.
    let rejected = dir.path(&format!("pki/rejected/{thumb}.der"));
    wait_for(
        "the refused certificate saved",
        Duration::from_secs(20),
        || rejected.is_file(),
    );
    assert_eq!(
        std::fs::read(&rejected).unwrap(),
        std::fs::read(certs.join("server.der")).unwrap(),
        "the saved certificate is the server's"
    );
    wait_for("the log explains", Duration::from_secs(10), || {
        let log = rtds.log_text();
        log.contains("is not trusted") && log.contains(&format!("{thumb}.der"))
    });
    wait_for("tags not connected", Duration::from_secs(10), || {
        status_of(&db, "Ramp") == Some(1)
    });
    // RTDS's own certificate was created for the server's administrator.
    assert!(dir.path("pki/own/rtds.der").is_file());
    let key = dir.path("pki/own/private/rtds.der");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // Trust it: RTDS connects at its next retry, with the login.
    std::fs::create_dir_all(dir.path("pki/trusted")).unwrap();
    std::fs::rename(&rejected, dir.path(&format!("pki/trusted/{thumb}.der"))).unwrap();
    wait_for("Ramp good", Duration::from_secs(20), || {
        status_of(&db, "Ramp") == Some(0)
    });
    assert_eq!(current(&db, "Temp"), Some((Sql::Real(21.5), 0)));
    assert_eq!(status_of(&db, "Nope"), Some(0x8034));
    // Writes go through the Write service on the encrypted session.
    wait_for("the server saw setpoints", Duration::from_secs(10), || {
        server.log_text().lines().any(|l| {
            l.strip_prefix("setpoint ")
                .and_then(|v| v.parse::<i64>().ok())
                .is_some_and(|v| v > 0)
        })
    });
    // Let a few seconds of changes flow, then restart the server.
    std::thread::sleep(Duration::from_secs(3));
    let killed = Instant::now();
    drop(server);
    wait_for("not connected", Duration::from_secs(30), || {
        status_of(&db, "Ramp") == Some(1)
    });
    let down = killed.elapsed();
    let started = Instant::now();
    let server = ua_server(&dir, port, 2, &args);
    let listening = started.elapsed();
    // The subscription is back: values from the new server's ramp.
    wait_for("Ramp good again", Duration::from_secs(30), || {
        status_of(&db, "Ramp") == Some(0)
    });
    let back = started.elapsed() - listening;
    let first = current(&db, "Ramp").map_or(0, |(v, _)| int(&v));
    wait_for("changes flowing again", Duration::from_secs(15), || {
        current(&db, "Ramp").is_some_and(|(v, st)| st == 0 && int(&v) >= first + 30)
    });
    eprintln!(
        "subscribe: tags bad {:.2} s after the kill; good {:.2} s after the new server listened",
        down.as_secs_f64(),
        back.as_secs_f64()
    );
    let (st, _) = rtds.stop();
    assert!(st.success(), "{}", rtds.log_text());
    drop(server);
    // Every step of each server's ramp between the first and the last one
    // archived is there: the queue and the 200 ms publishing lose nothing.
    let values = archived_ints(&db, "Ramp");
    let runs: Vec<Vec<i64>> = values
        .split(|v| v.is_none())
        .map(|r| r.iter().flatten().copied().collect::<Vec<_>>())
        .filter(|r| !r.is_empty())
        .collect();
    assert_eq!(runs.len(), 2, "two server runs: {values:?}");
    for run in &runs {
        assert!(run.len() >= 20, "{run:?}");
        for w in run.windows(2) {
            assert_eq!(w[1], w[0] + 1, "a step lost or doubled in {run:?}");
        }
    }
    assert_ts_monotonic(&db);
}

#[test]
fn a_subscription_deadband_passes_only_the_big_moves() {
    let dir = TempDir::new("opcua-deadband");
    let port = free_port();
    let _server = ua_server(&dir, port, 1, &["--ramp"]);
    let endpoint = format!(
        "connector=OpcUa; endpoint=opc.tcp://127.0.0.1:{port}/rtds/; mode=subscribe; sampling_ms=25; publish_ms=100"
    );
    let with_deadband = format!("{endpoint}; deadband=5");
    let cfg = ua_config(
        &dir,
        100,
        &[
            (
                "db5",
                &with_deadband,
                r#"(name: "Steps5", address: "ns=2;s=Line1.Steps"),"#,
            ),
            (
                "all",
                &endpoint,
                r#"(name: "Steps", address: "ns=2;s=Line1.Steps"),"#,
            ),
        ],
        None,
    );
    let mut rtds = Rtds::start(&cfg);
    let db = dir.path("rtds.db");
    wait_for("many changes", Duration::from_secs(20), || {
        archive(&db, "Steps").len() >= 40
    });
    let (st, _) = rtds.stop();
    assert!(st.success(), "{}", rtds.log_text());
    let with = archived_ints(&db, "Steps5");
    let without = archived_ints(&db, "Steps");
    // Without a deadband the small steps arrive too.
    assert!(without.contains(&Some(11)), "{without:?}");
    // With 5: after the initial value (always sent), only 0, 10 and 30
    // (their moves exceed 5), and all of them.
    let seen: std::collections::BTreeSet<i64> = with[1..].iter().flatten().copied().collect();
    assert_eq!(seen, [0, 10, 30].into_iter().collect(), "{with:?}");
    assert!(with.len() >= 6, "{with:?}");
}

#[test]
fn a_wrong_password_is_refused_clearly_and_marks_the_tags_not_connected() {
    let dir = TempDir::new("opcua-login");
    let port = free_port();
    let certs = dir.path("srv");
    let certs_arg = certs.to_string_lossy().to_string();
    let server = ua_server(&dir, port, 1, &["--secure", certs_arg.as_str()]);
    let cfg = ua_config(
        &dir,
        200,
        &[(
            "ua",
            &format!(
                "connector=OpcUa; endpoint=opc.tcp://127.0.0.1:{port}/rtds/; security=SignAndEncrypt; trust_all=true; user=operator; password=wrong; timeout=2; retry_min=0.3; retry_max=1"
            ),
            r#"(name: "Temp", address: "ns=2;s=Line1.Temp"),"#,
        )],
        None,
    );
    let mut rtds = Rtds::start(&cfg);
    let db = dir.path("rtds.db");
    server.wait_log(
        "the server refused the login",
        "login refused for 'operator'",
        Duration::from_secs(20),
    );
    wait_for("the log says why", Duration::from_secs(20), || {
        rtds.log_text().contains("BadUserAccessDenied")
    });
    wait_for("not connected", Duration::from_secs(10), || {
        status_of(&db, "Temp") == Some(1)
    });
    let (st, _) = rtds.stop();
    assert!(st.success(), "{}", rtds.log_text());
}

#[test]
fn settings_are_checked_before_any_connection() {
    let dir = TempDir::new("opcua-check");
    for (conn, expected) in [
        (
            "connector=OpcUa; endpoint=opc.tcp://127.0.0.1:4840; user=u; password=p",
            "clear text",
        ),
        (
            "connector=OpcUa; endpoint=opc.tcp://127.0.0.1:4840; security=SignAndEncrypt; policy=Rot13",
            "policy `Rot13` is not one of",
        ),
        (
            "connector=OpcUa; endpoint=opc.tcp://127.0.0.1:4840; mode=push",
            "mode `push` is not poll or subscribe",
        ),
        (
            "connector=OpcUa; endpoint=http://127.0.0.1:4840",
            "must be opc.tcp://",
        ),
        (
            "connector=OpcUa; endpoint=opc.tcp://127.0.0.1:4840; security=Sign; user=u",
            "user= needs password=",
        ),
    ] {
        let cfg = ua_config(
            &dir,
            200,
            &[(
                "ua",
                conn,
                r#"(name: "Temp", address: "ns=2;s=Line1.Temp"),"#,
            )],
            None,
        );
        assert_check_refuses(&cfg, expected, "rtds.ron:7");
    }
}
