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
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let out = String::from_utf8_lossy(&raw).into_owned();
    let status = status_line(&out);
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
        for b in b"GET /api/tags HTTP/1.1\r\nHost: localhost\r\n".iter() {
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
        (
            "listen: \"0.0.0.0:8080\"",
            "0.0.0.0:8080 is reachable from other machines: set a `token`",
        ),
        (
            "hosts: [\"gw.plant:8080\"]",
            "`hosts`: `gw.plant:8080` is not a host name",
        ),
        (
            "tls: (cert: \"c.pem\")",
            "http `tls`: needs `cert` and `key`",
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

/// The page at `url` as headless chromium leaves it after `budget_ms` of
/// virtual time (its timers run; the API answers in real time).
fn page_in_chromium(dir: &TempDir, url: &str, budget_ms: u32, extra: &[String]) -> String {
    let browser = ["chromium", "chromium-browser"]
        .into_iter()
        .find(|b| {
            std::process::Command::new(b)
                .arg("--version")
                .output()
                .is_ok()
        })
        .expect("chromium is installed by .ci/deps");
    let profile = dir.path("chromium-profile");
    let mut child = std::process::Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--dump-dom",
        ])
        .arg(format!("--virtual-time-budget={budget_ms}"))
        .args(extra)
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(url)
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
    dom
}

#[test]
fn the_status_page_shows_live_values_in_a_real_browser() {
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
    let dom = page_in_chromium(&dir, &format!("http://127.0.0.1:{port}/"), 8000, &[]);
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

/// Raw bytes on one connection: the whole answer, read until the server
/// closes (every case here ends with `Connection: close` or an error).
fn raw(port: u16, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.write_all(bytes);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

fn status_line(answer: &str) -> u16 {
    answer
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[test]
fn rebinding_hosts_cross_origin_writes_and_ambiguous_framing_are_refused() {
    let dir = TempDir::new("http-hostile");
    let sim = Sim::start(&[]);
    let port = free_port();
    let cfg = config_with_http(
        &dir,
        sim.port,
        &format!(
            "listen: \"127.0.0.1:{port}\", token: \"{TOKEN}\", writes: true, hosts: [\"gw17.plant.local\"]"
        ),
        100,
    );
    let mut rtds = Rtds::start(&cfg);
    wait_http(port);
    wait_for("values", Duration::from_secs(20), || {
        status_of(&dir.path("rtds.db"), "Setpoint") == Some(0)
    });
    let get = |host: &str, path: &str| {
        status_line(&raw(
            port,
            format!(
                "GET {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        ))
    };
    // DNS rebinding: the attacker's name reaches 127.0.0.1; the browser
    // sends that name. Refused on every path, the open ones too.
    for path in ["/api/tags", "/health", "/", "/metrics"] {
        assert_eq!(get("evil.example.com", path), 421, "{path}");
        assert_eq!(
            get(&format!("evil.example.com:{port}"), path),
            421,
            "{path}"
        );
    }
    // Another address than the one listened on; a name with junk in it.
    assert_eq!(get("10.1.2.3", "/api/tags"), 421);
    assert_eq!(get("gw17.plant.local@evil.com", "/api/tags"), 421);
    // Its own names: the configured one (any case, a final dot, a port),
    // localhost, the listen address, loopback v6.
    for host in [
        "gw17.plant.local".to_string(),
        format!("GW17.Plant.Local.:{port}"),
        "localhost".into(),
        format!("127.0.0.1:{port}"),
        format!("[::1]:{port}"),
    ] {
        assert_eq!(get(&host, "/api/tags"), 200, "{host}");
    }
    wait_for("the refusal logged", Duration::from_secs(5), || {
        rtds.log_text()
            .contains("refused: Host is not this server's name")
    });

    // A write from another site's page: 403, and the PLC untouched.
    let mut plc = modbus_client(sim.port);
    let before = plc.read_holding_registers(100, 1).unwrap()[0];
    let target = if before == 4321 { 4322 } else { 4321 };
    let post = |origin: &str| {
        let body = format!("{{\"value\": {target}}}");
        status_line(&raw(
            port,
            format!(
                "POST /api/tags/Setpoint HTTP/1.1\r\nHost: localhost:{port}\r\nAuthorization: Bearer {TOKEN}\r\n{origin}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        ))
    };
    assert_eq!(post("Origin: http://evil.example.com\r\n"), 403);
    assert_eq!(post("Origin: null\r\n"), 403);
    assert_eq!(
        post(&format!("Origin: https://localhost:{port}\r\n")),
        403,
        "another scheme is another origin"
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(plc.read_holding_registers(100, 1).unwrap()[0], before);
    // The page's own origin (and tools, which send none) may write.
    assert_eq!(post(&format!("Origin: http://localhost:{port}\r\n")), 200);
    wait_for("the write on the PLC", Duration::from_secs(10), || {
        plc.read_holding_registers(100, 1).unwrap()[0] == target
    });

    // Framing (RFC 9112), each case on its own connection: 400 and closed,
    // never a second request read out of the first one's body.
    let head = format!("Host: localhost\r\nAuthorization: Bearer {TOKEN}\r\n");
    let cases: Vec<(&str, String)> = vec![
        (
            "differing Content-Length",
            format!(
                "POST /api/tags/Setpoint HTTP/1.1\r\n{head}Content-Length: 0\r\nContent-Length: 45\r\n\r\nGET /api/tags HTTP/1.1\r\nHost: localhost\r\n\r\n"
            ),
        ),
        (
            "a signed length",
            format!("POST /api/tags/Setpoint HTTP/1.1\r\n{head}Content-Length: +5\r\n\r\n12345"),
        ),
        (
            "a hex length",
            format!("POST /api/tags/Setpoint HTTP/1.1\r\n{head}Content-Length: 0x5\r\n\r\n12345"),
        ),
        (
            "a list as length",
            format!("POST /api/tags/Setpoint HTTP/1.1\r\n{head}Content-Length: 5, 5\r\n\r\n12345"),
        ),
        (
            "an overflowing length",
            format!(
                "POST /api/tags/Setpoint HTTP/1.1\r\n{head}Content-Length: 99999999999999999999999\r\n\r\n"
            ),
        ),
        (
            "NUL in a value",
            format!("GET /api/tags HTTP/1.1\r\n{head}X-A: a\0b\r\n\r\n"),
        ),
        (
            "a bare CR in a value",
            format!("GET /api/tags HTTP/1.1\r\n{head}X-A: a\rb\r\n\r\n"),
        ),
        (
            "bare LF line ends",
            format!("GET /api/tags HTTP/1.1\n{}\n", head.replace("\r\n", "\n")),
        ),
        (
            "a folded line",
            format!("GET /api/tags HTTP/1.1\r\n{head}X-A: a\r\n b\r\n\r\n"),
        ),
        (
            "space before the colon",
            format!("GET /api/tags HTTP/1.1\r\n{head}X-A : b\r\n\r\n"),
        ),
        (
            "no Host",
            format!("GET /api/tags HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"),
        ),
        (
            "two Hosts",
            format!("GET /api/tags HTTP/1.1\r\n{head}Host: evil.example.com\r\n\r\n"),
        ),
        (
            "a full URL as target",
            format!("GET http://evil.example.com/api/tags HTTP/1.1\r\n{head}\r\n"),
        ),
        (
            "chunked",
            format!(
                "POST /api/tags/Setpoint HTTP/1.1\r\n{head}Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
            ),
        ),
    ];
    for (what, bytes) in &cases {
        let t0 = Instant::now();
        let answer = raw(port, bytes.as_bytes());
        assert_eq!(status_line(&answer), 400, "{what}: {answer}");
        assert_eq!(
            answer.matches("HTTP/1.1").count(),
            1,
            "{what}: one answer: {answer}"
        );
        // Refused when seen, not after the 5 s request deadline.
        assert!(
            t0.elapsed() < Duration::from_secs(3),
            "{what}: {:?}",
            t0.elapsed()
        );
    }
    // Equal duplicates are one length (RFC 9112 6.3); the scheme of the
    // token is case-insensitive.
    let answer = raw(
        port,
        format!("GET /api/status HTTP/1.1\r\nHost: localhost\r\nAuthorization: bearer {TOKEN}\r\nContent-Length: 0\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    assert_eq!(status_line(&answer), 200, "{answer}");
    let (st, _) = rtds.stop();
    assert!(st.success(), "{}", rtds.log_text());
}

#[test]
fn a_slow_reader_is_cut_off_at_the_deadline_and_others_are_served_meanwhile() {
    let dir = TempDir::new("http-slow-reader");
    let port = free_port();
    // 20,000 calculated tags: /api/tags is several MB, far more than the
    // socket buffers hold.
    dir.write(
        "many.rhai",
        "for i in 0..20000 { server.set_value(\"Calculated_tag_number_\" + i, i * 1000); }\n",
    );
    let cfg = dir.write(
        "rtds.ron",
        &format!(
            "(\n cycle_ms: 1000,\n log: (file: \"rtds.log\"),\n storage: (path: \"rtds.db\"),\n scripts: [(file: \"many.rhai\", max_operations: 10000000)],\n http: (listen: \"127.0.0.1:{port}\", max_connections: 4),\n)\n"
        ),
    );
    let mut rtds = Rtds::start(&cfg);
    wait_http(port);
    let size = {
        let mut size = 0;
        wait_for("all tags", Duration::from_secs(30), || {
            let (st, body) = call(port, "GET", "/api/tags", None, "");
            size = body.len();
            st == 200 && body.matches("\"name\"").count() >= 20_000
        });
        size
    };
    assert!(size > 2_000_000, "{size} bytes");
    // Two clients ask and never read.
    let slow: Vec<TcpStream> = (0..2)
        .map(|_| {
            let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
            s.write_all(b"GET /api/tags HTTP/1.1\r\nHost: localhost\r\n\r\n")
                .unwrap();
            s
        })
        .collect();
    let t0 = Instant::now();
    // The other slots serve others meanwhile.
    for _ in 0..5 {
        let (st, body) = call(port, "GET", "/api/status", None, "");
        assert_eq!(st, 200, "{body}");
    }
    // The documented deadline: 10 s plus a second per MiB.
    let deadline = Duration::from_secs(10) + Duration::from_secs_f64(size as f64 / 1048576.0);
    for mut s in slow {
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        // Sleep past the deadline before reading anything, then drain:
        // the server must have given up, so the stream ends short.
        let wait = (deadline + Duration::from_secs(2)).saturating_sub(t0.elapsed());
        std::thread::sleep(wait);
        let mut got = 0usize;
        let mut buf = vec![0u8; 65536];
        let ended = Instant::now();
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n,
            }
            assert!(
                ended.elapsed() < Duration::from_secs(20),
                "the server kept sending"
            );
        }
        assert!(
            got < size,
            "the whole answer came ({got} of {size} bytes): not cut off"
        );
    }
    // Both slots are free again: four at once, all served (a connection
    // thread frees its slot just after its socket closes: a moment later).
    wait_for("four clients at once", Duration::from_secs(10), || {
        let clients: Vec<_> = (0..4)
            .map(|_| std::thread::spawn(move || call(port, "GET", "/api/status", None, "").0))
            .collect();
        clients.into_iter().all(|c| c.join().unwrap() == 200)
    });
    let (st, _) = rtds.stop();
    assert!(st.success(), "{}", rtds.log_text());
}

/// The SPKI SHA-256 of a PEM certificate, base64, as chromium's
/// `--ignore-certificate-errors-spki-list` takes it (openssl computes it).
fn spki_hash(cert: &std::path::Path) -> String {
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl x509 -in '{}' -pubkey -noout | openssl pkey -pubin -outform der | openssl dgst -sha256 -binary | base64",
            cert.display()
        ))
        .output()
        .expect("openssl is installed by .ci/deps");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn https_with_a_self_signed_pair_in_curl_and_chromium() {
    let dir = TempDir::new("http-tls");
    let sim = Sim::start(&[]);
    let port = free_port();
    let cfg = config_with_http(
        &dir,
        sim.port,
        &format!(
            "listen: \"127.0.0.1:{port}\", hosts: [\"gw17.plant.local\"], tls: (cert: \"https/cert.pem\", key: \"https/key.pem\")"
        ),
        100,
    );
    // Commissioning: the engineer makes the pair and notes its fingerprint.
    let (code, out, err) = rtds_cmd(&["cert", "http"], &cfg);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains("created") && out.contains("SHA-256 fingerprint"),
        "{out}"
    );
    let cert = dir.path("https/cert.pem");
    let key_mode = std::fs::metadata(dir.path("https/key.pem")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&key_mode.permissions()) & 0o777,
        0o600
    );
    // A second time: the same pair, not a new one.
    let (_, again, _) = rtds_cmd(&["cert", "http"], &cfg);
    assert!(again.contains("existing"), "{again}");
    let mut rtds = Rtds::start(&cfg);
    wait_http(port);
    wait_for("values", Duration::from_secs(20), || {
        status_of(&dir.path("rtds.db"), "Pattern") == Some(0)
    });
    let curl = |args: &[&str]| {
        let out = std::process::Command::new("curl")
            .args(["-sS", "--max-time", "10"])
            .args(args)
            .output()
            .expect("curl");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let auth = format!("Authorization: Bearer {TOKEN}");
    let cacert = cert.to_str().unwrap();
    // Trusted by its certificate, under each name it carries.
    for url in [
        format!("https://localhost:{port}/api/tags/Pattern"),
        format!("https://127.0.0.1:{port}/api/tags/Pattern"),
    ] {
        let (code, body, err) = curl(&["--cacert", cacert, "-H", &auth, &url]);
        assert_eq!(code, Some(0), "{url}: {err}");
        assert!(body.contains("\"value\":4660"), "{url}: {body}");
    }
    let resolve = format!("gw17.plant.local:{port}:127.0.0.1");
    let (code, body, err) = curl(&[
        "--cacert",
        cacert,
        "--resolve",
        &resolve,
        &format!("https://gw17.plant.local:{port}/health"),
    ]);
    assert_eq!((code, body.as_str()), (Some(0), "ok\n"), "{err}");
    // Not trusted without it; a name it does not carry fails verification.
    let (code, _, _) = curl(&[&format!("https://localhost:{port}/health")]);
    assert_eq!(code, Some(60), "curl refuses an unknown certificate");
    let resolve = format!("other.plant.local:{port}:127.0.0.1");
    let (code, _, _) = curl(&[
        "--cacert",
        cacert,
        "--resolve",
        &resolve,
        &format!("https://other.plant.local:{port}/health"),
    ]);
    assert_eq!(code, Some(60), "a name the certificate does not carry");
    // Plain HTTP on the HTTPS port gets nothing.
    let (code, _, _) = curl(&[&format!("http://127.0.0.1:{port}/health")]);
    assert_ne!(code, Some(0));

    // The page over HTTPS in chromium, trusting this key only.
    let dom = page_in_chromium(
        &dir,
        &format!("https://localhost:{port}/"),
        5000,
        &[format!(
            "--ignore-certificate-errors-spki-list={}",
            spki_hash(&cert)
        )],
    );
    // The page loaded and its API calls went over HTTPS too.
    let refreshes: i64 = dom
        .split("data-refreshes=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(-1);
    assert!(refreshes >= 2, "{dom}");
    assert!(
        dom.contains(">4660<"),
        "Pattern as the simulator holds it: {dom}"
    );
    let (st, _) = rtds.stop();
    assert!(st.success(), "{}", rtds.log_text());
}
