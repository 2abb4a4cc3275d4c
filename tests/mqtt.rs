//! The MQTT output end to end: Debian's `mosquitto` started by each test on
//! loopback, RTDS polling the simulator, and independent subscribers: a
//! Sparkplug B 3.0 host in Python (tests/peers/sparkplug_host.py: paho-mqtt
//! and Google's protobuf runtime with the specification's schema, checking
//! every edge node rule it receives) and a plain subscriber
//! (tests/peers/mqtt_dump.py). Expected values come from the simulator's
//! documented map and Python's decoding, never from RTDS.

mod common;

use common::*;
use serde_json::Value as Json;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

fn peers() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A mosquitto broker on 127.0.0.1.
struct Broker {
    proc: Proc,
    port: u16,
    conf: PathBuf,
}

impl Broker {
    /// Starts it on `port` (0: a free one) with `extra` configuration
    /// lines (a TLS listener's files, a password file).
    fn start(dir: &TempDir, port: u16, extra: &str) -> Broker {
        let port = if port == 0 { free_port() } else { port };
        let conf = dir.write(
            &format!("mosquitto-{port}.conf"),
            &format!(
                "listener {port} 127.0.0.1\npersistence false\nlog_dest stderr\nlog_type error\nlog_type warning\n{}{extra}\n",
                // Run as root (the tests in CI), mosquitto would drop to
                // its own user, which cannot read the test's files.
                if is_root() { "user root\n" } else { "" }
            ),
        );
        Broker::run(dir, port, conf)
    }

    fn run(dir: &TempDir, port: u16, conf: PathBuf) -> Broker {
        let log = dir.path(&format!("mosquitto-{port}.log"));
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("mosquitto (make test installs it)");
        let mut proc = Proc { child };
        wait_for("mosquitto listening", Duration::from_secs(15), || {
            assert!(
                proc.child.try_wait().unwrap().is_none(),
                "mosquitto exited: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        Broker { proc, port, conf }
    }

    /// Stops it (SIGTERM) and waits for the exit.
    fn stop(mut self) -> (u16, PathBuf) {
        self.proc.signal(libc::SIGTERM);
        assert!(self.proc.wait_timeout(Duration::from_secs(10)).is_some());
        (self.port, self.conf.clone())
    }
}

/// The independent Sparkplug host, with its command channel.
struct Host {
    _proc: Proc,
    stdin: ChildStdin,
    lines: Receiver<String>,
    out: PathBuf,
}

impl Host {
    fn start(dir: &TempDir, port: u16, group: &str, host_id: Option<&str>, name: &str) -> Host {
        let out = dir.path(&format!("{name}.jsonl"));
        let mut cmd = Command::new(python());
        cmd.arg(peers().join("sparkplug_host.py"))
            .args(["--port", &port.to_string(), "--group", group])
            .arg("--out")
            .arg(&out)
            .stdin(Stdio::piped())
            .stderr(Stdio::null());
        if let Some(h) = host_id {
            cmd.args(["--host-id", h]);
        }
        let (proc, lines, stdin) = spawn_lines(cmd);
        line_starting(
            &lines,
            "sparkplug_host: subscribed",
            Duration::from_secs(30),
        );
        Host {
            _proc: proc,
            stdin: stdin.unwrap(),
            lines,
            out,
        }
    }

    fn cmd(&mut self, json: &str) {
        writeln!(self.stdin, "{json}").unwrap();
        self.stdin.flush().unwrap();
        let l = line_starting(&self.lines, "sparkplug_host:", Duration::from_secs(10));
        assert!(l.contains(" ok "), "host: {json}: {l}");
    }

    fn records(&self) -> Vec<Json> {
        read_jsonl(&self.out)
    }

    fn messages(&self, kind: &str) -> Vec<Json> {
        self.records()
            .into_iter()
            .filter(|r| r["kind"] == "message" && r["type"] == kind)
            .collect()
    }

    fn violations(&self) -> Vec<Json> {
        self.records()
            .into_iter()
            .filter(|r| r["kind"] == "violation")
            .collect()
    }
}

fn read_jsonl(path: &Path) -> Vec<Json> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Values of metric `name` in the host's records, in arrival order:
/// (value, is_historical, type).
fn values_of(records: &[Json], name: &str) -> Vec<(Json, bool, String)> {
    records
        .iter()
        .filter(|r| r["kind"] == "message")
        .flat_map(|r| {
            let t = r["type"].as_str().unwrap_or("").to_string();
            r["metrics"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .filter(|m| m["resolved_name"] == name || m["name"] == name)
                .map(move |m| (m["value"].clone(), m["is_historical"] == true, t.clone()))
        })
        .collect()
}

const TAGS: &str = r#"
        (name: "Pattern", address: "hr:200", type: "u16"),
        (name: "Neg", address: "hr:201", type: "i16"),
        (name: "Big", address: "hr:202", type: "u32"),
        (name: "Real", address: "hr:206", type: "f32"),
        (name: "Dbl", address: "hr:210", type: "f64"),
        (name: "Text", address: "hr:214", type: "string", count: 4),
        (name: "Inputs", address: "di:0", type: "bool", count: 8),
        (name: "U64Max", address: "hr:300", type: "u64"),
        (name: "I64Min", address: "hr:304", type: "i64"),
        (name: "I64Max", address: "hr:308", type: "i64"),
        (name: "Setpoint", address: "hr:100", type: "u16", writable: true),
"#;

/// Puts u64::MAX, i64::MIN and i64::MAX into the simulator's free memory
/// with the independent client.
fn extremes(sim: &Sim) {
    use modbus::Client;
    let mut c = modbus_client(sim.port);
    c.write_multiple_registers(300, &[0xFFFF; 4]).unwrap();
    c.write_multiple_registers(304, &[0x8000, 0, 0, 0]).unwrap();
    c.write_multiple_registers(308, &[0x7FFF, 0xFFFF, 0xFFFF, 0xFFFF])
        .unwrap();
}

fn config(dir: &TempDir, cycle_ms: u64, sim: u16, output: &str) -> PathBuf {
    dir.write("ticks.rhai", TICKS);
    dir.write(
        "rtds.ron",
        &format!(
            "(\n cycle_ms: {cycle_ms},\n log: (file: \"rtds.log\", level: \"info\"),\n storage: (path: \"rtds.db\"),\n connectors: [(\n  name: \"plc1\",\n  connection: \"connector=ModbusTcp; host=127.0.0.1; port={sim}; timeout=1\",\n  tags: [{TAGS}  ],\n )],\n scripts: [(file: \"ticks.rhai\")],\n outputs: [{output}],\n)\n"
        ),
    )
}

#[test]
fn a_sparkplug_host_sees_complete_births_continuous_seq_rebirth_commands_and_the_death() {
    let dir = TempDir::new("mqtt-spb");
    let sim = Sim::start(&[]);
    extremes(&sim);
    let broker = Broker::start(&dir, 0, "allow_anonymous true");
    let mut host = Host::start(&dir, broker.port, "Plant1", None, "host");
    let cfg = config(
        &dir,
        10,
        sim.port,
        &format!(
            "(name: \"site\", kind: \"mqtt\", broker: \"mqtt://127.0.0.1:{}\", group: \"Plant1\", edge_node: \"gw1\", commands: true, keep_alive_s: 5, retry_min_s: 0.2, retry_max_s: 1)",
            broker.port
        ),
    );
    let (code, out, err) = rtds_cmd(&["check"], &cfg);
    assert_eq!(code, Some(0), "{out}{err}");
    let rtds = Rtds::start(&cfg);
    // Births, then more than a thousand data messages (a 10 ms scan).
    wait_for("a thousand data messages", Duration::from_secs(60), || {
        host.messages("NDATA").len() + host.messages("DDATA").len() >= 1200
    });
    // One NBIRTH, or two when the calculated tag came after the first
    // (new metrics need a new birth: 5.11).
    let nbirth = host.messages("NBIRTH");
    let births_before = nbirth.len();
    assert!(
        (1..=2).contains(&births_before),
        "{births_before} NBIRTHs\n{}",
        rtds.log_text()
    );
    assert!(nbirth.iter().all(|b| b["seq"] == 0));
    let bd_seq = values_of(&nbirth, "bdSeq")[0].0.clone();
    // The first birth may come before the first poll: a metric without a
    // value yet is null with the quality BAD (6.4.9.1), never a made-up 0.
    for m in host.messages("DBIRTH")[0]["metrics"].as_array().unwrap() {
        assert!(
            m["value"] != Json::Null || m["properties"]["Quality"]["value"] == 0,
            "{m}"
        );
    }
    // Rebirth on request: NBIRTH seq 0 again, the same bdSeq, DBIRTH after,
    // with every metric's current value.
    host.cmd(r#"{"cmd":"rebirth","node":"gw1"}"#);
    wait_for("the rebirth", Duration::from_secs(10), || {
        host.messages("NBIRTH").len() == births_before + 1
            && host.messages("DBIRTH").len() > births_before
    });
    assert!(
        values_of(&host.messages("NBIRTH"), "bdSeq")
            .iter()
            .all(|v| v.0 == bd_seq)
    );
    let births = host.messages("DBIRTH");
    let birth = births.last().unwrap();
    assert_eq!(birth["device"], "plc1");
    let metric = |name: &str| -> Json {
        birth["metrics"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("{name} not in the DBIRTH: {birth}"))
    };
    for (name, datatype, value) in [
        ("Pattern", "UInt16", serde_json::json!(4660)),
        ("Neg", "Int16", serde_json::json!(-2)),
        ("Big", "UInt32", serde_json::json!(305_419_896)),
        ("Real", "Float", serde_json::json!(123.5)),
        ("Dbl", "Double", serde_json::json!(-1.25)),
        ("Text", "String", serde_json::json!("RTDS-SIM")),
        (
            "Inputs",
            "BooleanArray",
            serde_json::json!([true, true, false, false, true, false, true, false]),
        ),
        (
            "U64Max",
            "UInt64",
            serde_json::json!(18_446_744_073_709_551_615_u64),
        ),
        ("I64Min", "Int64", serde_json::json!(i64::MIN)),
        ("I64Max", "Int64", serde_json::json!(i64::MAX)),
    ] {
        let m = metric(name);
        assert_eq!(m["datatype"], datatype, "{name}: {m}");
        assert_eq!(m["value"], value, "{name}: {m}");
        assert!(
            m["alias"].is_u64() && m["timestamp"].is_u64(),
            "{name}: {m}"
        );
    }
    // A DCMD reaches the simulator; one on a tag that is not writable is
    // refused and nothing reaches it.
    host.cmd(r#"{"cmd":"dcmd","node":"gw1","device":"plc1","metric":"Setpoint","value":1234}"#);
    host.cmd(r#"{"cmd":"dcmd","node":"gw1","device":"plc1","metric":"Pattern","value":1}"#);
    {
        use modbus::Client;
        let mut c = modbus_client(sim.port);
        wait_for(
            "the DCMD's write in the PLC",
            Duration::from_secs(10),
            || c.read_holding_registers(100, 1).unwrap() == vec![1234],
        );
        assert_eq!(c.read_holding_registers(200, 1).unwrap(), vec![4660]);
    }
    wait_for(
        "the written value in a DDATA",
        Duration::from_secs(10),
        || {
            values_of(&host.records(), "Setpoint")
                .iter()
                .any(|v| v.0 == 1234 && v.2 == "DDATA")
        },
    );
    assert!(
        rtds.log_text().contains("write to Pattern refused"),
        "{}",
        rtds.log_text()
    );
    // kill -9: the broker publishes the Will, an NDEATH with the bdSeq of
    // the NBIRTH.
    rtds.proc.signal(libc::SIGKILL);
    wait_for("the NDEATH", Duration::from_secs(20), || {
        !host.messages("NDEATH").is_empty()
    });
    assert_eq!(values_of(&host.messages("NDEATH"), "bdSeq")[0].0, bd_seq);
    // The host found nothing to object to over all of it (seq continuity,
    // aliases, types, births before data, QoS, retain …).
    let v = host.violations();
    let data = host.messages("NDATA").len() + host.messages("DDATA").len();
    println!("{data} data messages, {} violations", v.len());
    assert!(v.is_empty(), "{v:#?}");
    drop(broker);
}

#[test]
fn the_broker_away_for_a_minute_loses_nothing_and_history_comes_first_in_order() {
    let dir = TempDir::new("mqtt-saf");
    let sim = Sim::start(&[]);
    let broker = Broker::start(&dir, 0, "allow_anonymous true");
    // With a primary host, RTDS births and replays only once the host says
    // it is online: nothing is sent to a broker nobody listens to.
    let host1 = Host::start(&dir, broker.port, "Plant1", Some("scada"), "host1");
    let cfg = config(
        &dir,
        100,
        sim.port,
        &format!(
            "(name: \"site\", kind: \"mqtt\", broker: \"mqtt://127.0.0.1:{}\", group: \"Plant1\", edge_node: \"gw1\", primary_host: \"scada\", keep_alive_s: 5, timeout_s: 2, retry_min_s: 0.2, retry_max_s: 1)",
            broker.port
        ),
    );
    let db = dir.path("rtds.db");
    let mut rtds = Rtds::start(&cfg);
    // Changes only: a birth repeats the current value, it is no change.
    let ticks_seen = |records: &[Json]| -> Vec<(i64, bool)> {
        values_of(records, "Ticks")
            .into_iter()
            .filter(|(_, _, kind)| kind == "NDATA")
            .filter_map(|(v, hist, _)| Some((v.as_i64()?, hist)))
            .collect()
    };
    wait_for("live ticks at the host", Duration::from_secs(30), || {
        ticks_seen(&host1.records()).iter().filter(|t| !t.1).count() >= 10
    });
    // The broker goes away for a minute while the counter keeps counting.
    let (port, conf) = broker.stop();
    drop(host1);
    let at_stop = ticks(&db);
    let t0 = Instant::now();
    wait_for("a minute of changes", Duration::from_secs(120), || {
        ticks(&db) >= at_stop + 600
    });
    let outage_s = t0.elapsed().as_secs_f64();
    let _broker = Broker::run(&dir, port, conf);
    let host2 = Host::start(&dir, port, "Plant1", Some("scada"), "host2");
    let resumed = ticks(&db);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ticks_seen(&host2.records())
        .iter()
        .any(|(v, h)| !h && *v > resumed + 20)
    {
        assert!(
            Instant::now() < deadline,
            "no live ticks at the new host:\n{}\n{:?}",
            rtds.log_text(),
            host2.records().iter().rev().take(5).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (st, _) = rtds.stop();
    assert!(st.success(), "{}", rtds.log_text());
    let before = ticks_seen(&read_jsonl(&dir.path("host1.jsonl")));
    let after = ticks_seen(&host2.records());
    // Every value in order, none lost: what host 1 saw, then host 2's
    // history, then its live values. A change the broker took just before
    // it went down, whose confirmation (the PINGRESP after it) never came,
    // is sent again as history with its original time stamp: at-least-once,
    // as QoS 0 and 1 are; such a repeat can only be the tail of what host
    // 1 saw, right at the outage.
    let historical = after.iter().filter(|(_, h)| *h).count();
    let last_before = before.last().map_or(0, |b| b.0);
    let repeats: Vec<i64> = after
        .iter()
        .take_while(|(v, _)| *v <= last_before)
        .map(|(v, h)| {
            assert!(*h, "a live value {v} repeated: {before:?} {after:?}");
            *v
        })
        .collect();
    assert!(repeats.len() <= 3, "repeats {repeats:?}");
    let all: Vec<i64> = before
        .iter()
        .map(|(v, _)| *v)
        .chain(after.iter().skip(repeats.len()).map(|(v, _)| *v))
        .collect();
    let first = all[0];
    let dups: Vec<i64> = all
        .windows(2)
        .filter(|w| w[1] <= w[0])
        .map(|w| w[1])
        .collect();
    assert!(
        dups.is_empty(),
        "repeated or out of order: {dups:?}\nbefore {before:?}\nafter {:?}",
        &after[..after.len().min(30)]
    );
    let last = *all.last().unwrap();
    assert_eq!(
        all.len() as i64,
        last - first + 1,
        "gaps between {first} and {last}"
    );
    // The outage's values came as history, before any live value.
    let first_live = after.iter().position(|(_, h)| !h).unwrap();
    assert!(after[..first_live].iter().all(|(_, h)| *h));
    assert!(historical >= 550, "{historical} historical values");
    println!(
        "broker away {outage_s:.1} s: {} values before, {historical} replayed as history ({} of them sent before the outage, unconfirmed), {} live after; none lost",
        before.len(),
        repeats.len(),
        after.len() - historical
    );
    let v: Vec<Json> = read_jsonl(&dir.path("host2.jsonl"))
        .into_iter()
        .filter(|r| r["kind"] == "violation")
        .collect();
    assert!(v.is_empty(), "{v:#?}");
}

/// Starts the plain subscriber on `filter`; returns it and its output.
fn dump(dir: &TempDir, port: u16, filter: &str, extra: &[&str]) -> (Proc, PathBuf) {
    let n = std::fs::read_dir(&dir.0).unwrap().count();
    let out = dir.path(&format!("dump-{port}-{n}.jsonl"));
    let mut cmd = Command::new(python());
    cmd.arg(peers().join("mqtt_dump.py"))
        .args(["--port", &port.to_string(), "--topic", filter])
        .arg("--out")
        .arg(&out)
        .args(extra)
        .stderr(Stdio::null());
    let (proc, lines, _) = spawn_lines(cmd);
    line_starting(&lines, "mqtt_dump: subscribed", Duration::from_secs(30));
    (proc, out)
}

/// The last payload of `topic`, parsed.
fn last_on(out: &Path, topic: &str) -> Option<(Json, bool, String)> {
    read_jsonl(out)
        .into_iter()
        .rev()
        .find(|r| r["topic"] == topic)
        .map(|r| {
            let text = r["payload"].as_str().unwrap_or("").to_string();
            (
                serde_json::from_str(&text).unwrap_or(Json::Null),
                r["retain"] == true,
                text,
            )
        })
}

#[test]
fn json_topics_carry_the_simulators_values_exactly_and_say_online() {
    let dir = TempDir::new("mqtt-json");
    let sim = Sim::start(&[]);
    extremes(&sim);
    let broker = Broker::start(&dir, 0, "allow_anonymous true");
    let (_dump, out) = dump(&dir, broker.port, "rtds/gw1/#", &[]);
    let cfg = config(
        &dir,
        100,
        sim.port,
        &format!(
            "(name: \"site\", kind: \"mqtt\", mode: \"json\", broker: \"127.0.0.1:{}\", topic_prefix: \"rtds/gw1\", retry_min_s: 0.2, retry_max_s: 1)",
            broker.port
        ),
    );
    let mut rtds = Rtds::start(&cfg);
    wait_for("the values", Duration::from_secs(30), || {
        last_on(&out, "rtds/gw1/plc1/I64Max").is_some()
            && last_on(&out, "rtds/gw1/script/Ticks").is_some()
    });
    // A subscriber that comes later gets each tag's last value, retained
    // (MQTT 3.3.1.3: the retain flag is set only on those).
    let (_late, late) = dump(&dir, broker.port, "rtds/gw1/#", &[]);
    wait_for("the retained values", Duration::from_secs(10), || {
        last_on(&late, "rtds/gw1/plc1/I64Max").is_some()
    });
    for (tag, want) in [
        ("Pattern", "4660"),
        ("Neg", "-2"),
        ("Big", "305419896"),
        ("Real", "123.5"),
        ("Dbl", "-1.25"),
        ("Text", "\"RTDS-SIM\""),
        ("Inputs", "[true,true,false,false,true,false,true,false]"),
        ("U64Max", "18446744073709551615"),
        ("I64Min", "-9223372036854775808"),
        ("I64Max", "9223372036854775807"),
    ] {
        let (json, retained, text) = last_on(&late, &format!("rtds/gw1/plc1/{tag}")).unwrap();
        // The digits as they are in the text (a JSON reader may round them).
        assert!(
            text.starts_with(&format!("{{\"value\":{want},\"status\":0,")),
            "{tag}: {text}"
        );
        assert_eq!(json["quality"], "good");
        assert!(json["ts"].as_str().unwrap().ends_with('Z'));
        assert!(retained, "{tag} not retained");
    }
    let (status, retained, _) = last_on(&late, "rtds/gw1/status").unwrap();
    assert_eq!(
        (status["online"].clone(), retained),
        (Json::Bool(true), true)
    );
    let (st, _) = rtds.stop();
    assert!(st.success());
    wait_for("offline", Duration::from_secs(10), || {
        last_on(&out, "rtds/gw1/status").is_some_and(|s| s.0["online"] == false)
    });
}

/// A CA, and a certificate for 127.0.0.1 and localhost signed by it, made
/// with openssl: (ca.pem, server.pem, server.key).
fn test_pki(dir: &TempDir, name: &str) -> (PathBuf, PathBuf, PathBuf) {
    let run = |args: &[&str]| {
        let st = Command::new("openssl")
            .args(args)
            .current_dir(&dir.0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(st.success(), "openssl {args:?}");
    };
    let ca = format!("{name}-ca");
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        &format!("/CN={ca}"),
        "-keyout",
        &format!("{ca}.key"),
        "-out",
        &format!("{ca}.pem"),
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        &format!("{name}.key"),
        "-out",
        &format!("{name}.csr"),
    ]);
    dir.write(
        &format!("{name}.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    );
    run(&[
        "x509",
        "-req",
        "-in",
        &format!("{name}.csr"),
        "-CA",
        &format!("{ca}.pem"),
        "-CAkey",
        &format!("{ca}.key"),
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        &format!("{name}.ext"),
        "-out",
        &format!("{name}.pem"),
    ]);
    (
        dir.path(&format!("{ca}.pem")),
        dir.path(&format!("{name}.pem")),
        dir.path(&format!("{name}.key")),
    )
}

#[test]
fn tls_with_a_password_connects_and_wrong_ones_are_refused_clearly() {
    let dir = TempDir::new("mqtt-tls");
    let sim = Sim::start(&[]);
    let (ca, cert, key) = test_pki(&dir, "broker");
    let (other_ca, _, _) = test_pki(&dir, "other");
    let passwd = dir.path("passwd");
    let st = Command::new("mosquitto_passwd")
        .args(["-c", "-b"])
        .arg(&passwd)
        .args(["gw1", "s3cret-pass"])
        .status()
        .unwrap();
    assert!(st.success());
    let broker = Broker::start(
        &dir,
        0,
        &format!(
            "allow_anonymous false\npassword_file {}\ncafile {}\ncertfile {}\nkeyfile {}\n",
            passwd.display(),
            ca.display(),
            cert.display(),
            key.display()
        ),
    );
    let (_dump, out) = dump(
        &dir,
        broker.port,
        "rtds/gw1/#",
        &[
            "--cafile",
            ca.to_str().unwrap(),
            "--username",
            "gw1",
            "--password",
            "s3cret-pass",
        ],
    );
    let output = |password: &str, ca: &Path| {
        format!(
            "(name: \"site\", kind: \"mqtt\", mode: \"json\", broker: \"mqtts://127.0.0.1:{}\", ca_file: \"{}\", username: \"gw1\", password: \"{password}\", topic_prefix: \"rtds/gw1\", retry_min_s: 0.2, retry_max_s: 1)",
            broker.port,
            ca.display()
        )
    };
    // The right CA and password: values arrive.
    let cfg = config(&dir, 100, sim.port, &output("s3cret-pass", &ca));
    let mut rtds = Rtds::start(&cfg);
    wait_for("values over TLS", Duration::from_secs(30), || {
        last_on(&out, "rtds/gw1/plc1/Pattern").is_some_and(|v| v.0["value"] == 4660)
    });
    rtds.stop();
    // A wrong password: refused, said so, retried.
    let cfg = config(&dir, 100, sim.port, &output("wrong", &ca));
    let mut rtds = Rtds::start(&cfg);
    // Mosquitto answers a wrong password with CONNACK 5 (not authorized).
    wait_for("the refusal in the log", Duration::from_secs(20), || {
        let l = rtds.log_text();
        l.contains("refused: not authorized (CONNACK 5)")
            || l.contains("refused: bad user name or password (CONNACK 4)")
    });
    rtds.stop();
    // A broker whose certificate another CA signed: no connection.
    let cfg = config(&dir, 100, sim.port, &output("s3cret-pass", &other_ca));
    let mut rtds = Rtds::start(&cfg);
    wait_for(
        "the TLS refusal in the log",
        Duration::from_secs(20),
        || {
            let l = rtds.log_text();
            l.contains("TLS handshake") && l.contains("certificate")
        },
    );
    rtds.stop();
    // A CA file that is not there: a configuration error, at its line.
    let cfg = config(
        &dir,
        100,
        sim.port,
        &output("x", Path::new("missing-ca.pem")),
    );
    let (code, _, err) = rtds_cmd(&["check"], &cfg);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("missing-ca.pem") && err.contains("rtds.ron:"),
        "{err}"
    );
}
