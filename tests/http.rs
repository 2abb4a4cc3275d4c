//! The built-in HTTP server, over loopback: the JSON API against values
//! read independently from the simulator (the `modbus` crate), writes
//! checked on the PLC, tokens, request limits, slow clients, metrics and
//! health; and the status page in a real browser (headless chromium).

mod common;

use common::*;
use modbus::Client;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

const TOKEN: &str = "test-token-0123456789";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One request on its own connection: (status, body).
fn call(port: u16, method: &str, path: &str, token: Option<&str>, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    // A server that answers early (413, 503) may stop reading: the answer
    // still counts.
    let _ = write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let out = String::from_utf8_lossy(&raw).into_owned();
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, b)| b.to_string());
    (status, body)
}

fn config_with_http(dir: &TempDir, sim: u16, http: &str, cycle_ms: u64) -> std::path::PathBuf {
    let cfg = config(
        dir,
        cycle_ms,
        &[(
            "plc",
            sim,
            "",
            r#"(name: "Pattern", address: "hr:200", type: "u16"),
               (name: "Ramp", address: "hr:12", type: "f32"),
               (name: "Setpoint", address: "hr:100", type: "u16", writable: true),"#,
        )],
        &[],
    );
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "    storage: (path: \"rtds.db\"),\n",
        &format!("    storage: (path: \"rtds.db\"),\n    http: ({http}),\n"),
    );
    std::fs::write(&cfg, text).unwrap();
    cfg
}

fn wait_http(port: u16) {
    wait_for("http up", Duration::from_secs(20), || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
}

#[test]
fn api_metrics_health_tokens_writes_and_limits() {
    let dir = TempDir::new("http");
    let sim = Sim::start(&[]);
    let port = free_port();
    let cfg = config_with_http(
        &dir,
        sim.port,
        &format!(
            "listen: \"127.0.0.1:{port}\", token: \"{TOKEN}\", writes: true, max_connections: 6"
        ),
        100,
    );
    let mut rtds = Rtds::start(&cfg);
    wait_http(port);
    let db = dir.path("rtds.db");
    wait_for("values", Duration::from_secs(20), || {
        status_of(&db, "Pattern") == Some(0)
    });

    // Without a token, or with a wrong one: 401, and one log line each.
    assert_eq!(call(port, "GET", "/api/tags", None, "").0, 401);
    assert_eq!(
        call(port, "GET", "/metrics", Some("wrong-token-0123456789"), "").0,
        401
    );
    wait_for("refusals logged", Duration::from_secs(5), || {
        let log = rtds.log_text();
        log.contains("refused: no bearer token") || log.contains("refused: wrong bearer token")
    });
    // Health needs none (monitoring systems), nor does the page.
    assert_eq!(call(port, "GET", "/health", None, ""), (200, "ok\n".into()));
    let (st, page) = call(port, "GET", "/", None, "");
    assert_eq!(st, 200);
    assert!(page.contains("<title>RTDS</title>"));

    // A tag as the simulator holds it, read independently over Modbus.
    let mut plc = modbus_client(sim.port);
    let pattern = plc.read_holding_registers(200, 1).unwrap()[0];
    let (st, body) = call(port, "GET", "/api/tags/Pattern", Some(TOKEN), "");
    assert_eq!(st, 200, "{body}");
    assert!(body.contains(&format!("\"value\":{pattern},")), "{body}");
    assert!(body.contains("\"status_text\":\"good\""), "{body}");
    let (st, body) = call(port, "GET", "/api/tags?filter=patt", Some(TOKEN), "");
    assert_eq!(st, 200);
    assert_eq!(body.matches("\"name\"").count(), 1, "{body}");
    assert_eq!(call(port, "GET", "/api/tags/Nope", Some(TOKEN), "").0, 404);
    let (_, body) = call(port, "GET", "/api/connectors", Some(TOKEN), "");
    assert!(
        body.contains("\"name\":\"plc\"") && body.contains("\"connected\":true"),
        "{body}"
    );
    let (_, body) = call(port, "GET", "/api/storage", Some(TOKEN), "");
    assert!(body.contains("\"alive\":true"), "{body}");

    // Metrics: the text format, and counters that move.
    let requests = |text: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix("rtds_connector_requests_total{connector=\"plc\"} "))
            .and_then(|v| v.parse().ok())
            .unwrap_or(-1.0)
    };
    let (st, m1) = call(port, "GET", "/metrics", Some(TOKEN), "");
    assert_eq!(st, 200);
    for line in m1.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let (name, value) = line.rsplit_once(' ').unwrap();
        assert!(value.parse::<f64>().is_ok(), "{line}");
        assert!(name.starts_with("rtds_"), "{line}");
    }
    std::thread::sleep(Duration::from_millis(500));
    let (_, m2) = call(port, "GET", "/metrics", Some(TOKEN), "");
    assert!(requests(&m2) > requests(&m1), "{m1}\n{m2}");

    // Writes: with the token, the PLC gets the value (read back over
    // Modbus); a value the tag cannot hold and a read-only tag are refused
    // before the wire.
    let (st, body) = call(
        port,
        "POST",
        "/api/tags/Setpoint",
        Some(TOKEN),
        "{\"value\": 4242}",
    );
    assert_eq!(st, 200, "{body}");
    wait_for("the PLC holds 4242", Duration::from_secs(10), || {
        plc.read_holding_registers(100, 1).unwrap()[0] == 4242
    });
    let (st, body) = call(
        port,
        "POST",
        "/api/tags/Setpoint",
        Some(TOKEN),
        "{\"value\": 70000}",
    );
    assert_eq!(st, 422, "{body}");
    assert!(body.contains("70000"), "{body}");
    assert_eq!(
        call(
            port,
            "POST",
            "/api/tags/Pattern",
            Some(TOKEN),
            "{\"value\": 1}"
        )
        .0,
        422
    );
    assert_eq!(
        call(port, "POST", "/api/tags/Setpoint", None, "{\"value\": 1}").0,
        401
    );
    assert_eq!(
        call(
            port,
            "POST",
            "/api/tags/Setpoint",
            Some(TOKEN),
            "{\"value\": }"
        )
        .0,
        400
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(plc.read_holding_registers(100, 1).unwrap()[0], 4242);
    assert!(
        rtds.log_text().contains("writes 4242 to Setpoint"),
        "audit line"
    );

    // Limits: too many headers, too big a body.
    let headers: String = (0..40).map(|i| format!("X-{i}: y\r\n")).collect();
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "GET /health HTTP/1.1\r\n{headers}\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 431"), "{out}");
    let big = "x".repeat(5000);
    assert_eq!(
        call(port, "POST", "/api/tags/Setpoint", Some(TOKEN), &big).0,
        413
    );

    // A slow client (one byte a second) holds nothing: others are served
    // meanwhile, and it is cut off with 408 within the 5 s request limit.
    let slow = std::thread::spawn(move || {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        let started = Instant::now();
        for b in b"GET /api/tags HTTP/1.1\r\nHost: x\r\n".iter() {
            if s.write_all(&[*b]).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(1000));
            if started.elapsed() > Duration::from_secs(8) {
                break;
            }
        }
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        (out, started.elapsed())
    });
    // Others are served while it dribbles.
    for _ in 0..5 {
        let t = Instant::now();
        assert_eq!(call(port, "GET", "/health", None, "").0, 200);
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
        std::thread::sleep(Duration::from_millis(200));
    }
    let (out, took) = slow.join().unwrap();
    assert!(out.starts_with("HTTP/1.1 408"), "{out:?} after {took:?}");
    assert!(took < Duration::from_secs(8), "{took:?}");
    // Connections beyond max_connections (6) get 503 at once, from the
    // accept thread; the ones held are freed when their clients go.
    let idle: Vec<TcpStream> = (0..6)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    wait_for("503 when full", Duration::from_secs(5), || {
        let t = Instant::now();
        call(port, "GET", "/health", None, "").0 == 503 && t.elapsed() < Duration::from_secs(1)
    });
    drop(idle);
    wait_for("slots free again", Duration::from_secs(15), || {
        call(port, "GET", "/health", None, "").0 == 200
    });

    let (st, _) = rtds.stop();
    assert!(st.success(), "{}", rtds.log_text());
}

#[test]
fn bad_http_settings_are_refused_with_the_line() {
    let dir = TempDir::new("http-check");
    for (http, expected) in [
        ("listen: \"nowhere\"", "is not an address and port"),
        ("writes: true", "`writes`: needs a token"),
        ("token: \"short\"", "at least 16 characters"),
        (
            "max_connections: 0",
            "`max_connections`: 0 is outside 1..=1024",
        ),
    ] {
        let cfg = config_with_http(&dir, 1, http, 100);
        assert_check_refuses(&cfg, expected, "rtds.ron:");
    }
    // A port already taken stops the start with the address in the log.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let cfg = config_with_http(&dir, 1, &format!("listen: \"127.0.0.1:{port}\""), 100);
    let mut rtds = Rtds::start(&cfg);
    let status = rtds
        .proc
        .wait_timeout(Duration::from_secs(20))
        .expect("rtds stops");
    assert_eq!(status.code(), Some(1));
    assert!(
        rtds.log_text()
            .contains(&format!("cannot listen on 127.0.0.1:{port}")),
        "{}",
        rtds.log_text()
    );
}

#[test]
fn the_status_page_shows_live_values_in_a_real_browser() {
    let browser = ["chromium", "chromium-browser"]
        .into_iter()
        .find(|b| {
            std::process::Command::new(b)
                .arg("--version")
                .output()
                .is_ok()
        })
        .expect("chromium is installed by .ci/deps");
    let dir = TempDir::new("http-page");
    let sim = Sim::start(&[]);
    let port = free_port();
    let cfg = config_with_http(
        &dir,
        sim.port,
        &format!("listen: \"127.0.0.1:{port}\""),
        100,
    );
    let mut rtds = Rtds::start(&cfg);
    wait_http(port);
    let db = dir.path("rtds.db");
    wait_for("values", Duration::from_secs(20), || {
        status_of(&db, "Ramp") == Some(0)
    });
    // The page refreshes every second; chromium's virtual time runs its
    // timers, the API answers in real time (a 100 ms cycle: the simulator's
    // ramp moves between refreshes).
    let profile = dir.path("chromium-profile");
    let mut child = std::process::Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--virtual-time-budget=8000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("http://127.0.0.1:{port}/"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut dom = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut dom)
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "chromium did not finish");
        std::thread::sleep(Duration::from_millis(50));
    }
    let attr = |needle: &str| -> i64 {
        dom.split(needle)
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(-1)
    };
    assert!(attr("data-refreshes=\"") >= 2, "{dom}");
    assert!(
        attr("data-tag=\"Ramp\" data-changes=\"") >= 1,
        "the ramp never changed on the page: {dom}"
    );
    assert!(dom.contains(">connected<"), "{dom}");
    assert!(
        dom.contains(">4660<"),
        "Pattern as the simulator holds it: {dom}"
    );
    let (st, _) = rtds.stop();
    assert!(st.success(), "{}", rtds.log_text());
}
