//! The `Sql` connector against real databases: a SQLite file, and a
//! PostgreSQL server started here on loopback, reached through its ODBC
//! driver (Debian's `postgresql` and `odbc-postgresql`).

mod common;

use common::*;
use rusqlite::types::Value as Sql;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const NASTY: &str = r#"O'Brien "quoted"; DROP TABLE lab; --"#;

fn sql_config(dir: &TempDir, connection: &str, extra_queries: &str) -> PathBuf {
    let script = format!(
        "server.set_value(\"Note\", {nasty:?});\nserver.set_value(\"Dose\", 2.5);\n",
        nasty = NASTY
    );
    dir.write("write.rhai", &script);
    dir.write(
        "rtds.ron",
        &format!(
            r#"(
    cycle_ms: 200,
    storage: (path: "rtds.db"),
    connectors: [(
        name: "lims",
        connection: "{connection}",
        interval_ms: 200,
        queries: [
            (name: "lab", sql: "SELECT tag, value, quality, sampled_at FROM lab", name_column: "tag", status_column: "quality", ts_column: "sampled_at"),
            (name: "order", sql: "SELECT order_no, qty FROM current_order", mode: "columns"),
{extra_queries}
        ],
        write_sql: "INSERT INTO setpoints (name, value, status, ts) VALUES (:name, :value, :status, :ts)",
        tags: [
            (name: "pH", address: "lab/pH", type: "float"),
            (name: "Batch", address: "lab/Batch", type: "string"),
            (name: "Temp", address: "lab/Temp", type: "float"),
            (name: "Moist", address: "lab/Moist", type: "float"),
            (name: "Absent", address: "lab/Absent"),
            (name: "Order", address: "order/order_no"),
            (name: "Qty", address: "order/qty", type: "int"),
            (name: "Note", address: "lab/Note", type: "string", writable: true),
            (name: "Dose", address: "lab/Dose", type: "float", writable: true),
        ],
    )],
    scripts: [(file: "write.rhai")],
)
"#
        ),
    )
}

/// Values every database in these tests holds.
fn expect_reads(db: &Path) {
    assert_eq!(current(db, "pH"), Some((Sql::Real(7.25), 0)));
    assert_eq!(current(db, "Batch"), Some((Sql::Text("B-17".into()), 0)));
    assert_eq!(status_of(db, "Temp"), Some(8), "NULL");
    assert_eq!(status_of(db, "Moist"), Some(9), "type mismatch");
    assert_eq!(status_of(db, "Absent"), Some(10), "missing");
    assert_eq!(current(db, "Order"), Some((Sql::Text("A-1".into()), 0)));
    assert_eq!(current(db, "Qty"), Some((Sql::Integer(40), 0)));
    let c = common::db(db).unwrap();
    let ts: String = c
        .query_row("SELECT ts FROM current WHERE name = 'pH'", [], |r| r.get(0))
        .unwrap();
    assert_eq!(
        ts, "2026-11-24T05:00:00.000Z",
        "the time stamp column is used"
    );
}

#[test]
fn sqlite_reads_maps_statuses_and_writes_verbatim() {
    let dir = TempDir::new("sqlite-src");
    let lab = dir.path("lab.db");
    let src = rusqlite::Connection::open(&lab).unwrap();
    src.execute_batch(
        "CREATE TABLE lab (tag TEXT, value, quality INTEGER, sampled_at TEXT);
         INSERT INTO lab VALUES ('pH', 7.25, 0, '2026-11-24T05:00:00Z'), ('Batch', 'B-17', 0, NULL),
                                ('Temp', NULL, 0, NULL), ('Moist', 'wet', 0, NULL);
         CREATE TABLE current_order (order_no TEXT, qty INTEGER);
         INSERT INTO current_order VALUES ('A-1', 40);
         CREATE TABLE setpoints (name TEXT, value, status INTEGER, ts TEXT);",
    )
    .unwrap();
    let conn = format!(
        "connector=Sql; driver=sqlite; path={}; timeout=2",
        lab.display()
    );
    let broken = r#"            (name: "broken", sql: "SELECT name, value FROM no_such_table"),"#;
    let cfg = sql_config(&dir, &conn, broken);
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "(name: \"Dose\"",
        "(name: \"Lost\", address: \"broken/x\"),\n            (name: \"Dose\"",
    );
    std::fs::write(&cfg, text).unwrap();
    let mut rtds = Rtds::start(&cfg);
    let db = dir.path("rtds.db");
    wait_for("reads and writes", Duration::from_secs(20), || {
        status_of(&db, "pH") == Some(0)
            && src
                .query_row(
                    "SELECT count(*) FROM setpoints WHERE name = 'Note'",
                    [],
                    |r| r.get::<_, i64>(0),
                )
                .unwrap()
                > 0
    });
    let (st, _) = rtds.stop();
    assert!(st.success());
    expect_reads(&db);
    assert_eq!(status_of(&db, "Lost"), Some(11), "query error");
    assert!(
        rtds.log_text()
            .contains("query broken: no such table: no_such_table"),
        "{}",
        rtds.log_text()
    );
    let note: String = src
        .query_row(
            "SELECT value FROM setpoints WHERE name = 'Note' LIMIT 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(note, NASTY, "written verbatim, as a bound parameter");
    let dose: f64 = src
        .query_row(
            "SELECT value FROM setpoints WHERE name = 'Dose' LIMIT 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(dose, 2.5);
    let lab_rows: i64 = src
        .query_row("SELECT count(*) FROM lab", [], |r| r.get(0))
        .unwrap();
    assert_eq!(lab_rows, 4, "the table is still there");
}

#[test]
fn check_refuses_malformed_queries_and_templates() {
    let dir = TempDir::new("sql-check");
    let conn = "connector=Sql; driver=sqlite; path=/nonexistent/lab.db";
    let cfg = sql_config(
        &dir,
        conn,
        r#"            (name: "bad", sql: "DELETE FROM lab"),"#,
    );
    let (code, _, err) = rtds_cmd(&["check"], &cfg);
    assert_eq!(code, Some(2));
    assert!(err.contains("query `bad`: must be a SELECT"), "{err}");
    let cfg = sql_config(
        &dir,
        conn,
        r#"            (name: "bad", sql: "SELECT value FROM lab WHERE (tag = 'x'"),"#,
    );
    let (_, _, err) = rtds_cmd(&["check"], &cfg);
    assert!(err.contains("parentheses do not balance"), "{err}");
    let cfg = sql_config(&dir, conn, "");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace(":status, :ts)", ":state, :ts)");
    std::fs::write(&cfg, text).unwrap();
    let (_, _, err) = rtds_cmd(&["check"], &cfg);
    assert!(
        err.contains("write_sql: unknown parameter `:state`"),
        "{err}"
    );
    let cfg = sql_config(&dir, conn, "");
    let (code, out, err) = rtds_cmd(&["check"], &cfg);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("2 queries per scan"), "{out}");
}

/// A PostgreSQL server of the test's own, on a free loopback port.
struct Postgres {
    bin: PathBuf,
    data: PathBuf,
    port: u16,
    dir: PathBuf,
}

fn as_postgres(cmd: &Path) -> Command {
    // PostgreSQL refuses to run as root.
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } == 0 {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(cmd);
        c
    } else {
        Command::new(cmd)
    }
}

impl Postgres {
    fn start(dir: &TempDir) -> Postgres {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL is installed (apt-get install postgresql odbc-postgresql)")
            .filter_map(|e| e.ok())
            .map(|e| e.path().join("bin"))
            .find(|p| p.join("initdb").exists())
            .expect("initdb");
        let root = dir.path("pg");
        std::fs::create_dir_all(&root).unwrap();
        let _ = Command::new("chmod").arg("777").arg(&dir.0).status();
        let _ = Command::new("chmod").arg("777").arg(&root).status();
        let data = root.join("data");
        let out = as_postgres(&bin.join("initdb"))
            .args(["-U", "postgres", "-A", "trust", "--no-sync", "-D"])
            .arg(&data)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let pg = Postgres {
            bin,
            data,
            port,
            dir: root,
        };
        pg.ctl("start");
        pg.psql(
            "CREATE TABLE lab (tag text, value text, quality int, sampled_at text);
             INSERT INTO lab VALUES ('pH', '7.25', 0, '2026-11-24T05:00:00Z'), ('Batch', 'B-17', 0, NULL),
                                    ('Temp', NULL, 0, NULL), ('Moist', 'wet', 0, NULL);
             CREATE TABLE current_order (order_no text, qty int);
             INSERT INTO current_order VALUES ('A-1', 40);
             CREATE TABLE setpoints (name text, value text, status int, ts text);",
        );
        pg
    }

    fn ctl(&self, action: &str) {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.display()
        );
        let out = as_postgres(&self.bin.join("pg_ctl"))
            .args([action, "-w", "-m", "fast", "-D"])
            .arg(&self.data)
            .args(["-o", &opts, "-l"])
            .arg(self.dir.join("log"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg_ctl {action}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn psql(&self, sql: &str) -> String {
        let out = Command::new(self.bin.join("psql"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-At",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                sql,
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "psql: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim_end().to_string()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = as_postgres(&self.bin.join("pg_ctl"))
            .args(["stop", "-m", "immediate", "-D"])
            .arg(&self.data)
            .output();
    }
}

fn odbc_driver() -> PathBuf {
    [
        "/usr/lib/x86_64-linux-gnu/odbc/psqlodbcw.so",
        "/usr/lib/aarch64-linux-gnu/odbc/psqlodbcw.so",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
    .expect("the PostgreSQL ODBC driver (apt-get install odbc-postgresql)")
}

#[test]
fn postgresql_over_odbc_reads_writes_and_survives_a_restart() {
    let dir = TempDir::new("pg");
    let pg = Postgres::start(&dir);
    let conn = format!(
        "connector=Sql; driver=odbc; odbc='Driver={};Server=127.0.0.1;Port={};Database=postgres'; user=postgres; timeout=2; retry_min=0.2; retry_max=0.5",
        odbc_driver().display(),
        pg.port
    );
    let cfg = sql_config(&dir, &conn, "");
    let mut rtds = Rtds::start(&cfg);
    let db = dir.path("rtds.db");
    wait_for("reads and a write", Duration::from_secs(30), || {
        status_of(&db, "pH") == Some(0)
            && !pg
                .psql("SELECT value FROM setpoints WHERE name = 'Note' LIMIT 1")
                .is_empty()
    });
    expect_reads(&db);
    assert_eq!(
        pg.psql("SELECT value FROM setpoints WHERE name = 'Note' LIMIT 1"),
        NASTY
    );
    assert_eq!(
        pg.psql("SELECT value FROM setpoints WHERE name = 'Dose' LIMIT 1"),
        "2.5"
    );
    assert_eq!(pg.psql("SELECT count(*) FROM lab"), "4");

    pg.ctl("stop");
    wait_for(
        "tags bad while the database is down",
        Duration::from_secs(20),
        || status_of(&db, "pH") == Some(1) && status_of(&db, "Qty") == Some(1),
    );
    pg.ctl("start");
    wait_for(
        "good again after the restart",
        Duration::from_secs(30),
        || status_of(&db, "pH") == Some(0) && status_of(&db, "Qty") == Some(0),
    );
    let (st, _) = rtds.stop();
    assert!(st.success());
    let log = rtds.log_text();
    assert!(
        log.contains("connector lims:") && log.contains("connection restored"),
        "{log}"
    );
    assert!(!log.contains("Pwd="), "no credentials in the log");
}

#[test]
fn a_runaway_query_is_stopped_by_the_statement_timeout() {
    let dir = TempDir::new("sql-timeout");
    let lab = dir.path("lab.db");
    rusqlite::Connection::open(&lab)
        .unwrap()
        .execute_batch("CREATE TABLE t (name TEXT, value REAL); INSERT INTO t VALUES ('x', 1.0);")
        .unwrap();
    let cfg = dir.write(
        "rtds.ron",
        &format!(
            r#"(
    cycle_ms: 100,
    storage: (path: "rtds.db"),
    connectors: [(
        name: "slow",
        connection: "connector=Sql; driver=sqlite; path={}; timeout=0.5; retry_min=0.2; retry_max=0.5",
        interval_ms: 100,
        queries: [
            (name: "fast", sql: "SELECT name, value FROM t"),
            (name: "endless", sql: "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT 'y' AS name, count(*) AS value FROM c"),
        ],
        tags: [(name: "X", address: "fast/x"), (name: "Y", address: "endless/y")],
    )],
)
"#,
            lab.display()
        ),
    );
    let t0 = std::time::Instant::now();
    let mut rtds = Rtds::start(&cfg);
    let db = dir.path("rtds.db");
    wait_for("timeout status", Duration::from_secs(15), || {
        status_of(&db, "Y") == Some(2)
    });
    assert!(t0.elapsed() < Duration::from_secs(10));
    let (st, took) = rtds.stop();
    assert!(st.success());
    assert!(took < Duration::from_secs(3), "stop took {took:?}");
    assert!(
        rtds.log_text().contains("interrupted after the timeout"),
        "{}",
        rtds.log_text()
    );
}
