//! The OpcUa connector against an independent server: Python asyncua
//! (tests/peers/opcua_server.py) on 127.0.0.1, started here.

#![cfg(feature = "opcua")]

mod common;

use common::*;
use rusqlite::types::Value as Sql;
use std::process::{Command, Stdio};
use std::time::Duration;

struct UaServer {
    /// Killed when dropped.
    _proc: Proc,
    log: std::path::PathBuf,
}

fn ua_server(dir: &TempDir, port: u16, n: u32) -> UaServer {
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/opcua_server.py");
    let log = dir.path(&format!("ua-{n}.log"));
    let child = Command::new(python())
        .arg(script)
        .arg(port.to_string())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the asyncua server");
    let server = UaServer {
        _proc: Proc { child },
        log,
    };
    wait_for("asyncua listening", Duration::from_secs(30), || {
        std::fs::read_to_string(&server.log)
            .unwrap_or_default()
            .contains("listening")
    });
    server
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn reads_every_type_writes_back_and_recovers_from_a_server_restart() {
    let dir = TempDir::new("opcua");
    let port = free_port();
    let server = ua_server(&dir, port, 1);
    let script = "if server.good(\"Count\") { server.set_value(\"Setpoint\", 123); }\n";
    dir.write("w.rhai", script);
    let cfg = dir.write(
        "rtds.ron",
        &format!(
            r#"(
    cycle_ms: 200,
    storage: (path: "rtds.db"),
    connectors: [(
        name: "ua",
        connection: "connector=OpcUa; endpoint=opc.tcp://127.0.0.1:{port}/rtds/; timeout=2; retry_min=0.2; retry_max=0.5",
        tags: [
            (name: "Temp", address: "ns=2;s=Line1.Temp"),
            (name: "Count", address: "ns=2;i=1001"),
            (name: "Big", address: "ns=2;s=Line1.Big"),
            (name: "Run", address: "ns=2;s=Line1.Run"),
            (name: "Batch", address: "ns=2;s=Line1.Batch"),
            (name: "Profile", address: "ns=2;s=Line1.Profile"),
            (name: "Nope", address: "ns=2;s=No.Such.Node"),
            (name: "Setpoint", address: "ns=2;s=Line1.Setpoint", type: "Int32", writable: true),
        ],
    )],
    scripts: [(file: "w.rhai")],
)
"#
        ),
    );
    let mut rtds = Rtds::start(&cfg);
    let db = dir.path("rtds.db");
    wait_for("values", Duration::from_secs(20), || {
        current(&db, "Temp") == Some((Sql::Real(21.5), 0))
    });
    // The values the server holds, as asyncua defines them above.
    assert_eq!(current(&db, "Count"), Some((Sql::Integer(-42), 0)));
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
    // The write, as the server saw it.
    wait_for("the server saw the write", Duration::from_secs(10), || {
        std::fs::read_to_string(&server.log)
            .unwrap_or_default()
            .contains("setpoint 123")
    });
    wait_for("the write confirmed", Duration::from_secs(10), || {
        current(&db, "Setpoint") == Some((Sql::Integer(123), 0))
    });
    // The server goes away: not connected; it comes back: good again.
    drop(server);
    wait_for("not connected", Duration::from_secs(20), || {
        status_of(&db, "Temp") == Some(1)
    });
    let _server = ua_server(&dir, port, 2);
    wait_for("good again", Duration::from_secs(30), || {
        status_of(&db, "Temp") == Some(0)
    });
    let (st, _) = rtds.stop();
    assert!(st.success(), "{}", rtds.log_text());
    assert_ts_monotonic(&db);
}
