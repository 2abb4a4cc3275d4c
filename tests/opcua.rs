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
    proc: Proc,
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
        proc: Proc { child },
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

/// Runs `code` in Python with `db` bound to an sqlite3 connection on
/// `path` and `json`, `math` imported; returns what it prints.
fn py_on_db(path: &std::path::Path, code: &str) -> String {
    let out = Command::new("python3")
        .args([
            "-c",
            &format!(
                "import json, math, sqlite3\ndb = sqlite3.connect({:?})\n{code}",
                path.to_string_lossy()
            ),
        ])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn every_kind_of_value_reads_back_as_the_server_holds_it_and_writes_archive_once() {
    let dir = TempDir::new("opcua-kinds");
    let port = free_port();
    let server = ua_server(&dir, port, 1, &[]);
    let endpoint = format!("endpoint=opc.tcp://127.0.0.1:{port}/rtds/; timeout=2");
    let script =
        "server.set_value(\"Flag\", 0);\nserver.set_value(\"Big64\", \"18446744073709551615\");\n";
    let cfg = ua_config(
        &dir,
        100,
        &[
            (
                "ua",
                &format!("connector=OpcUa; {endpoint}; retry_min=0.2; retry_max=0.5"),
                r#"(name: "Bytes", address: "ns=2;s=Line1.Bytes", type: "ByteString"),
            (name: "RawBytes", address: "ns=2;s=Line1.Bytes"),
            (name: "Label", address: "ns=2;s=Line1.Label", type: "LocalizedText"),
            (name: "Names", address: "ns=2;s=Line1.Names"),
            (name: "Empty", address: "ns=2;s=Line1.Empty"),
            (name: "OneEmpty", address: "ns=2;s=Line1.OneEmpty"),
            (name: "Huge", address: "ns=2;s=Line1.Huge"),
            (name: "Nan", address: "ns=2;s=Line1.Nan"),
            (name: "Id", address: "ns=2;s=Line1.Id"),
            (name: "Flag", address: "ns=2;s=Line1.Flag", type: "Boolean", writable: true),
            (name: "Big64", address: "ns=2;s=Line1.Big64", type: "UInt64", writable: true),"#,
            ),
            (
                "uas",
                &format!("connector=OpcUa; {endpoint}; mode=subscribe; sampling_ms=100"),
                r#"(name: "SubSet", address: "ns=2;s=Line1.Setpoint", type: "Int32", writable: true),"#,
            ),
        ],
        Some(script),
    );
    let mut rtds = Rtds::start(&cfg);
    let db = dir.path("rtds.db");
    server.wait_log(
        "the server saw false",
        "flag False",
        Duration::from_secs(20),
    );
    server.wait_log(
        "the server saw u64::MAX",
        "big64 18446744073709551615",
        Duration::from_secs(10),
    );
    wait_for("the confirmations", Duration::from_secs(10), || {
        current(&db, "Flag") == Some((Sql::Integer(0), 0)) && status_of(&db, "Big64") == Some(0)
    });
    // Ten more cycles of the same writes and reads.
    std::thread::sleep(Duration::from_secs(1));
    let (st, _) = rtds.stop();
    let log = rtds.log_text();
    assert!(st.success(), "{log}");
    // Python decodes what RTDS stored and compares with the values the
    // server script defines.
    let verdict = py_on_db(
        &db,
        r#"cur = {n: (v, s) for n, v, s in db.execute("SELECT name, value, status FROM current")}
ok = {
  "Bytes": cur["Bytes"] == (b"\x00\x01\xfe\xff".hex(), 0),
  "Label": cur["Label"][1] == 0 and json.loads(cur["Label"][0]) == {"locale": "en-US", "text": 'Running, "fast"'},
  "Names": cur["Names"][1] == 0 and json.loads(cur["Names"][0]) == ["a,b", "c", "", 'q"u\\o'],
  "Empty": cur["Empty"][1] == 0 and json.loads(cur["Empty"][0]) == [],
  "OneEmpty": cur["OneEmpty"][1] == 0 and json.loads(cur["OneEmpty"][0]) == [""],
  "Huge": cur["Huge"][1] == 0 and [repr(x) for x in json.loads(cur["Huge"][0])] == [repr(x) for x in [1e300, -0.0, 0.1, 5e-324]],
  "Nan": cur["Nan"] == (None, 13),
  "Id": cur["Id"][1] == 9,
  "RawBytes": cur["RawBytes"] == (None, 9),
  "Flag": cur["Flag"] == (0, 0),
  "Big64": cur["Big64"] == ("18446744073709551615", 0),
}
print(" ".join(k for k, v in ok.items() if not v) or "all exact", cur)"#,
    );
    assert!(verdict.starts_with("all exact"), "{verdict}");
    // The reference Historian reader decodes the segments back to the
    // same values, with their types (bools as bools, u64 as int, bytes).
    let reader = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("historian");
    let verdict = py_on_db(
        &db,
        &format!(
            r#"import glob, os, sys, tempfile
sys.path.insert(0, {reader:?})
import rtds_reader as r
last = {{}}
for path in sorted(glob.glob({outbox:?} + "/seg-*.sqlite")):
    first, end = (int(x) for x in os.path.basename(path)[4:-7].split("-"))
    for id_, name, value, status, ts, ty, version in r.read_segment(os.path.dirname(path), os.path.basename(path), first, end, 0, tempfile.mkdtemp()):
        last[name] = (r.decode(value, ty, version), status, ty)
want = {{
  "Bytes": (b"\x00\x01\xfe\xff", 0, "ByteString"),
  "Label": ({{"locale": "en-US", "text": 'Running, "fast"'}}, 0, "LocalizedText"),
  "Names": (["a,b", "c", "", 'q"u\\o'], 0, "array"),
  "Empty": ([], 0, "array"),
  "OneEmpty": ([""], 0, "array"),
  "Flag": (False, 0, "Boolean"),
  "Big64": (18446744073709551615, 0, "UInt64"),
}}
bad = [k for k, v in want.items() if last[k][:2] != v[:2] or (v[2] and last[k][2] != v[2])]
huge = last["Huge"][0]
if [repr(x) for x in huge] != [repr(x) for x in [1e300, -0.0, 0.1, 5e-324]]: bad.append("Huge")
if type(last["Flag"][0]) is not bool: bad.append("Flag type")
print(" ".join(bad) or "all decoded", last)"#,
            outbox = dir.path("outbox").to_string_lossy()
        ),
    );
    assert!(verdict.starts_with("all decoded"), "{verdict}");
    // The Guid is named in the log, once, and so is the ByteString on a
    // tag that does not declare it.
    assert_eq!(
        log.matches("holds a Guid, a type RTDS cannot read").count(),
        1,
        "{log}"
    );
    assert_eq!(
        log.matches(r#"tag RawBytes (ns=2;s=Line1.Bytes) holds a ByteString: declare it on the tag (type: "ByteString")"#).count(),
        1,
        "{log}"
    );
    // One row per change: the value read before the first write, then the
    // one the server holds, for ten confirmations and ten reads of it.
    let good = |tag: &str| -> Vec<Sql> {
        archive(&db, tag)
            .into_iter()
            .filter(|r| r.1 == 0)
            .map(|r| r.0)
            .collect()
    };
    assert_eq!(good("Flag"), vec![Sql::Integer(1), Sql::Integer(0)]);
    assert_eq!(
        good("Big64"),
        vec![Sql::Integer(0), Sql::Text("18446744073709551615".into())]
    );
    // rtds write on a subscribed connector reads the node back itself.
    let (code, out, err) = rtds_cmd(&["write", "SubSet", "77"], &cfg);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("read back: 77, status 0 (good)"), "{out}");
    server.wait_log("the server saw 77", "setpoint 77", Duration::from_secs(10));
    // Browse offers the new types and says which one RTDS cannot read.
    let (code, out, err) = rtds_cmd(&["browse", "ua", "ns=2;s=Line1"], &cfg);
    assert_eq!(code, Some(0), "{out}{err}");
    for line in [
        r#"(name: "Bytes", address: "ns=2;s=Line1.Bytes", type: "ByteString"),"#,
        r#"(name: "Label", address: "ns=2;s=Line1.Label", type: "LocalizedText"),"#,
        r#"(name: "Names", address: "ns=2;s=Line1.Names", type: "String[]"),"#,
        r#"(name: "Id", address: "ns=2;s=Line1.Id"),  // Guid: a type RTDS cannot read (status 9)"#,
    ] {
        assert!(out.contains(line), "{line} in\n{out}");
    }
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
        &[
            (
                "ua",
                &format!(
                    "connector=OpcUa; endpoint=opc.tcp://127.0.0.1:{port}/rtds/; security=SignAndEncrypt; policy=Basic256Sha256; user=operator; password=s3cret; mode=subscribe; sampling_ms=50; publish_ms=200; queue_size=20; timeout=2; retry_min=0.3; retry_max=1"
                ),
                r#"(name: "Temp", address: "ns=2;s=Line1.Temp"),
            (name: "Ramp", address: "ns=2;s=Line1.Ramp"),
            (name: "Nope", address: "ns=2;s=No.Such.Node"),
            (name: "Setpoint", address: "ns=2;s=Line1.Setpoint", type: "Int32", writable: true),"#,
            ),
            (
                // A second connector on the same PKI folder: both save the
                // refused certificate at the same moment.
                "ua2",
                &format!(
                    "connector=OpcUa; endpoint=opc.tcp://127.0.0.1:{port}/rtds/; security=SignAndEncrypt; policy=Basic256Sha256; user=operator; password=s3cret; timeout=2; retry_min=0.3; retry_max=1"
                ),
                r#"(name: "Temp2", address: "ns=2;s=Line1.Temp"),"#,
            ),
            (
                // A wrong password: refused for the certificate first,
                // then, once it is trusted, for the login: a new cause,
                // logged.
                "ua3",
                &format!(
                    "connector=OpcUa; endpoint=opc.tcp://127.0.0.1:{port}/rtds/; security=SignAndEncrypt; policy=Basic256Sha256; user=operator; password=wrong; timeout=2; retry_min=0.3; retry_max=1"
                ),
                r#"(name: "Temp3", address: "ns=2;s=Line1.Temp"),"#,
            ),
        ],
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

    assert!(
        !rtds.log_text().contains("saving it failed"),
        "{}",
        rtds.log_text()
    );
    // Trust it: RTDS connects at its next retry, with the login. RTDS
    // made the folder the log names.
    assert!(dir.path("pki/trusted").is_dir());
    std::fs::rename(&rejected, dir.path(&format!("pki/trusted/{thumb}.der"))).unwrap();
    wait_for("Ramp good", Duration::from_secs(20), || {
        status_of(&db, "Ramp") == Some(0)
    });
    assert_eq!(current(&db, "Temp"), Some((Sql::Real(21.5), 0)));
    wait_for("the second connector too", Duration::from_secs(10), || {
        current(&db, "Temp2") == Some((Sql::Real(21.5), 0))
    });
    wait_for("the login refusal logged", Duration::from_secs(10), || {
        rtds.log_text().lines().any(|l| {
            l.contains("WARN") && l.contains("connector ua3") && l.contains("BadUserAccessDenied")
        })
    });
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

/// An independent asyncua subscriber (tests/peers/opcua_subscriber.py) to
/// `node`, its stdout in `log`; ready once it printed `subscribed`.
fn subscriber(dir: &TempDir, endpoint: &str, node: &str, n: u32) -> (Proc, PathBuf) {
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/opcua_subscriber.py");
    let log = dir.path(&format!("sub-{n}.log"));
    let child = Command::new(python())
        .args([script.as_os_str(), endpoint.as_ref(), node.as_ref()])
        .args(["--publish-ms", "200", "--sampling-ms", "50"])
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the asyncua subscriber");
    let proc = Proc { child };
    wait_for("the subscriber subscribed", Duration::from_secs(20), || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.contains("subscribed"))
    });
    (proc, log)
}

#[test]
fn changes_received_before_a_kill_are_archived_and_a_restart_costs_one_scan_and_a_connect() {
    let dir = TempDir::new("opcua-kills");
    let port = free_port();
    let endpoint = format!("opc.tcp://127.0.0.1:{port}/rtds/");
    // A 1 s scan: changes wait up to a second in the client between scans,
    // which is where a kill used to lose them.
    let cfg = ua_config(
        &dir,
        1000,
        &[(
            "ua",
            &format!(
                "connector=OpcUa; endpoint={endpoint}; mode=subscribe; sampling_ms=50; publish_ms=200; queue_size=100; timeout=2; retry_min=0.3; retry_max=1"
            ),
            r#"(name: "Ramp", address: "ns=2;s=Line1.Ramp"),"#,
        )],
        None,
    );
    let db = dir.path("rtds.db");
    let mut rtds = Rtds::start(&cfg);
    let mut expected: Vec<(i64, i64, Vec<i64>)> = Vec::new();
    let mut restarts = Vec::new();
    for k in 0..4u32 {
        let base = i64::from(k) * 100_000;
        let from = base.to_string();
        let started = Instant::now();
        let server = ua_server(&dir, port, k, &["--ramp", "--ramp-from", &from]);
        let listening = started.elapsed();
        let (_sub, sub_log) = subscriber(&dir, &endpoint, "ns=2;s=Line1.Ramp", k);
        wait_for("RTDS reads the new run", Duration::from_secs(30), || {
            current(&db, "Ramp").is_some_and(|(v, st)| st == 0 && int(&v) > base)
        });
        if k > 0 {
            restarts.push(started.elapsed() - listening);
        }
        std::thread::sleep(Duration::from_millis(1500));
        // Pause the ramp; once the independent subscriber has the last
        // value, every client has received it: kill the server.
        server.proc.signal(libc::SIGUSR1);
        let last: i64 = {
            let mut last = None;
            wait_for("paused", Duration::from_secs(10), || {
                last = server
                    .log_text()
                    .lines()
                    .find_map(|l| l.strip_prefix("paused at ").and_then(|v| v.parse().ok()));
                last.is_some()
            });
            last.unwrap()
        };
        let got = || -> Vec<i64> {
            std::fs::read_to_string(&sub_log)
                .unwrap_or_default()
                .lines()
                .filter_map(|l| l.strip_prefix("value ")?.parse().ok())
                .collect()
        };
        wait_for(
            "the subscriber has the last value",
            Duration::from_secs(10),
            || got().last() == Some(&last),
        );
        std::thread::sleep(Duration::from_millis(300));
        server.proc.signal(libc::SIGKILL);
        drop(server);
        wait_for("RTDS sees the loss", Duration::from_secs(30), || {
            status_of(&db, "Ramp") == Some(1)
        });
        expected.push((base, last, got()));
    }
    let (st, _) = rtds.stop();
    assert!(st.success(), "{}", rtds.log_text());
    let archived: Vec<i64> = archive(&db, "Ramp")
        .into_iter()
        .filter(|r| r.1 == 0)
        .map(|r| int(&r.0))
        .collect();
    for (base, last, got) in &expected {
        let run: Vec<i64> = archived
            .iter()
            .copied()
            .filter(|v| *v > *base && *v < base + 100_000)
            .collect();
        let first = *run.first().expect("the run archived");
        // Everything the independent subscriber received from RTDS's first
        // value of the run on, the last one before the kill included.
        let missing: Vec<i64> = got
            .iter()
            .copied()
            .filter(|v| *v >= first && !run.contains(v))
            .collect();
        assert!(missing.is_empty(), "run {base}: lost {missing:?}");
        assert_eq!(run.last(), Some(last), "run {base}");
        assert!(
            run.windows(2).all(|w| w[1] == w[0] + 1),
            "run {base}: {run:?}"
        );
    }
    eprintln!(
        "restart: tags good {:?} after the new server listened",
        restarts
    );
    // One scan (1 s), the back-off's first wait (0.3 s) and a connect with
    // its subscription, with room for a loaded machine.
    for r in &restarts {
        assert!(*r < Duration::from_secs(5), "{restarts:?}");
    }
    assert_ts_monotonic(&db);
}

#[test]
fn a_frozen_server_is_noticed_within_the_documented_time_in_both_modes() {
    let dir = TempDir::new("opcua-frozen");
    let port = free_port();
    let server = ua_server(&dir, port, 1, &["--ramp"]);
    let endpoint =
        format!("endpoint=opc.tcp://127.0.0.1:{port}/rtds/; timeout=2; retry_min=0.5; retry_max=2");
    let cfg = ua_config(
        &dir,
        500,
        &[
            (
                "sub",
                &format!(
                    "connector=OpcUa; {endpoint}; mode=subscribe; sampling_ms=50; publish_ms=200"
                ),
                r#"(name: "SubRamp", address: "ns=2;s=Line1.Ramp"),"#,
            ),
            (
                "poll",
                &format!("connector=OpcUa; {endpoint}"),
                r#"(name: "PollRamp", address: "ns=2;s=Line1.Ramp"),"#,
            ),
        ],
        None,
    );
    let db = dir.path("rtds.db");
    let mut rtds = Rtds::start(&cfg);
    wait_for("both good", Duration::from_secs(20), || {
        status_of(&db, "SubRamp") == Some(0) && status_of(&db, "PollRamp") == Some(0)
    });
    std::thread::sleep(Duration::from_secs(1));
    server.proc.signal(libc::SIGSTOP);
    let frozen = Instant::now();
    let (mut sub, mut poll) = (None, None);
    wait_for("both noticed", Duration::from_secs(30), || {
        if poll.is_none() && status_of(&db, "PollRamp").is_some_and(|s| s != 0) {
            poll = Some(frozen.elapsed());
        }
        if sub.is_none() && status_of(&db, "SubRamp").is_some_and(|s| s != 0) {
            sub = Some(frozen.elapsed());
        }
        sub.is_some() && poll.is_some()
    });
    let (sub, poll) = (sub.unwrap(), poll.unwrap());
    eprintln!(
        "frozen server noticed after {:.2} s (subscribe), {:.2} s (poll)",
        sub.as_secs_f64(),
        poll.as_secs_f64()
    );
    // docs/connectors/opcua.md: subscribe max(3 x publishing, 3 s) + 1 s +
    // timeout = 6 s here, poll the timeout, each plus up to one scan
    // (0.5 s); `current` is written every second; 1 s for the machine.
    assert!(
        sub < Duration::from_millis(6000 + 500 + 1000 + 1000),
        "{sub:?}"
    );
    assert!(
        poll < Duration::from_millis(2000 + 500 + 1000 + 1000),
        "{poll:?}"
    );
    server.proc.signal(libc::SIGCONT);
    wait_for("both good again", Duration::from_secs(30), || {
        status_of(&db, "SubRamp") == Some(0) && status_of(&db, "PollRamp") == Some(0)
    });
    let (st, _) = rtds.stop();
    assert!(st.success(), "{}", rtds.log_text());
}

#[test]
fn security_the_server_does_not_offer_is_named_with_what_it_offers() {
    let dir = TempDir::new("opcua-modes");
    let port = free_port();
    let _server = ua_server(&dir, port, 1, &[]);
    let cfg = ua_config(
        &dir,
        500,
        &[(
            "ua",
            &format!(
                "connector=OpcUa; endpoint=opc.tcp://127.0.0.1:{port}/rtds/; security=SignAndEncrypt; trust_all=true; timeout=2; retry_min=5; retry_max=5"
            ),
            r#"(name: "Temp", address: "ns=2;s=Line1.Temp"),"#,
        )],
        None,
    );
    let mut rtds = Rtds::start(&cfg);
    wait_for("the refusal explained", Duration::from_secs(20), || {
        rtds.log_text()
            .contains("the server offers no endpoint with security SignAndEncrypt Basic256Sha256; it offers: None None")
    });
    // Status 3, bad config: no retry will fix it.
    wait_for("bad config", Duration::from_secs(5), || {
        status_of(&dir.path("rtds.db"), "Temp") == Some(3)
    });
    let (st, _) = rtds.stop();
    assert!(st.success());
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
            "key `policy`: `Rot13` is not one of",
        ),
        (
            "connector=OpcUa; endpoint=opc.tcp://127.0.0.1:4840; mode=push",
            "key `mode`: `push` is not poll or subscribe",
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
