//! Every parser that takes bytes from outside, fed generated inputs on
//! stable Rust: the targets of `rtds::fuzzing` (HTTP requests and Host
//! names, MBAP frames, Modbus PDUs, RTU replies in noise, register values,
//! addresses, MQTT packets, Sparkplug payloads, the archive's value text,
//! write bodies, the ack file, connection strings, CSV tag sheets, the
//! configuration file), each from a few valid seeds mutated at random
//! (bit flips, interesting bytes and tokens, insertions, deletions,
//! repeats, splices, truncations), with a fixed budget and seed so that a
//! run is repeatable:
//!
//! - `RTDS_FUZZ_ITERS` inputs per target (default 500,000 in a release
//!   build, 50,000 in `make test`'s debug build);
//! - `RTDS_FUZZ_SEED` to explore elsewhere (default fixed).
//!
//! Each input must not panic, must keep the target's round trips, and must
//! not allocate more than 1 MiB plus 64 bytes per input byte at once (a
//! length field believed before the bytes arrived would). A failing input
//! is printed and written to `target/fuzz-failures/` for `cargo fuzz run
//! TARGET FILE` (see docs/testing.md).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

/// The system allocator, counting this thread's live bytes and their peak.
struct Counting;

thread_local! {
    static LIVE: Cell<usize> = const { Cell::new(0) };
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = LIVE.try_with(|l| {
            let n = l.get() + layout.size();
            l.set(n);
            let _ = PEAK.try_with(|p| p.set(p.get().max(n)));
        });
        // SAFETY: the caller's layout, passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let _ = LIVE.try_with(|l| l.set(l.get().saturating_sub(layout.size())));
        // SAFETY: allocated by `alloc` above with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = LIVE.try_with(|l| {
            let n = l.get().saturating_sub(layout.size()) + new_size;
            l.set(n);
            let _ = PEAK.try_with(|p| p.set(p.get().max(n)));
        });
        // SAFETY: as in `alloc` and `dealloc`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// SplitMix64: small, fast, and the same sequence everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

/// Bytes and tokens that reach edges: lengths, separators, line ends.
const TOKENS: &[&[u8]] = &[
    b"\r\n",
    b"\n",
    b"\r",
    b"\0",
    b"\r\n\r\n",
    b": ",
    b"Content-Length: ",
    b"Host: ",
    b"Transfer-Encoding: chunked\r\n",
    b"%",
    b"%00",
    b"%zz",
    b"=",
    b";",
    b",",
    b"\"",
    b"\\",
    b"\\u0000",
    b"\\ud800",
    b"[",
    b"]",
    b"(",
    b")",
    b"{",
    b"}",
    b"0",
    b"-1",
    b"+5",
    b"65535",
    b"65536",
    b"4294967296",
    b"18446744073709551615",
    b"99999999999999999999999",
    b"1e308",
    b"1e999",
    b"NaN",
    b"-Infinity",
    b"\xff\xff\xff\x7f",
    b"\xff\xff\xff\xff\xff",
    b"\x80\x80\x80\x80\x01",
    b"\xc3\x28",
    b"\xef\xbb\xbf",
    b"hr:",
    b"connector=",
];

fn mutate(rng: &mut Rng, seeds: &[Vec<u8>], input: &mut Vec<u8>) {
    for _ in 0..1 + rng.below(8) {
        let len = input.len();
        match rng.below(9) {
            0 if len > 0 => {
                let i = rng.below(len);
                input[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                input[i] = [0, 0xff, 0x7f, 0x80, b' ', b'9'][rng.below(6)];
            }
            2 => {
                let t = TOKENS[rng.below(TOKENS.len())];
                let at = rng.below(len + 1);
                input.splice(at..at, t.iter().copied());
            }
            3 if len > 0 => {
                let a = rng.below(len);
                let b = (a + 1 + rng.below(16)).min(len);
                input.drain(a..b);
            }
            4 if len > 0 => {
                // Repeat a piece (headers twice, a field twice).
                let a = rng.below(len);
                let b = (a + 1 + rng.below(64)).min(len);
                let piece = input[a..b].to_vec();
                let at = rng.below(len + 1);
                input.splice(at..at, piece);
            }
            5 => {
                let other = &seeds[rng.below(seeds.len())];
                if !other.is_empty() {
                    let a = rng.below(other.len());
                    let b = (a + 1 + rng.below(64)).min(other.len());
                    let at = rng.below(len + 1);
                    input.splice(at..at, other[a..b].iter().copied());
                }
            }
            6 if len > 0 => input.truncate(rng.below(len)),
            7 => {
                let at = rng.below(len + 1);
                let n = 1 + rng.below(8);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                input.splice(at..at, bytes);
            }
            _ if len > 0 => {
                // A big-endian length or count made huge or zero.
                let i = rng.below(len);
                input[i] = if rng.below(2) == 0 { 0xff } else { 0 };
            }
            _ => input.push(rng.next() as u8),
        }
    }
    input.truncate(64 * 1024);
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Runs `target` on its seeds and on `RTDS_FUZZ_ITERS` mutants of them.
fn fuzz(name: &str, seeds: Vec<Vec<u8>>) {
    fuzz_scaled(name, seeds, 1);
}

/// The same with a `1/divisor` share of the budget (targets that go
/// through files), and room for what they unpack.
fn fuzz_scaled(name: &str, seeds: Vec<Vec<u8>>, divisor: u64) {
    let target = rtds::fuzzing::TARGETS
        .iter()
        .find(|(n, _)| *n == name)
        .unwrap_or_else(|| panic!("no target {name}"))
        .1;
    // `make test` runs the debug build (every arithmetic overflow checked),
    // about ten times slower: a tenth of the inputs there.
    let default = if cfg!(debug_assertions) {
        50_000
    } else {
        500_000
    };
    let iters = env_number("RTDS_FUZZ_ITERS", default) / divisor;
    let seed = env_number("RTDS_FUZZ_SEED", 0x5254_4453);
    // Each target its own sequence, the same on every run.
    let mut rng = Rng(seed
        ^ name
            .bytes()
            .fold(0u64, |h, b| h.wrapping_mul(31) + u64::from(b)));
    let mut input = Vec::new();
    for k in 0..seeds.len() as u64 + iters {
        input.clear();
        let from = &seeds[rng.below(seeds.len())];
        input.extend_from_slice(from);
        if k >= seeds.len() as u64 {
            mutate(&mut rng, &seeds, &mut input);
        }
        let before = LIVE.with(Cell::get);
        PEAK.with(|p| p.set(before));
        let outcome = std::panic::catch_unwind(|| target(&input));
        let grew = PEAK.with(Cell::get).saturating_sub(before);
        let bound = (1 << 20) + 64 * input.len();
        let why = match outcome {
            Err(e) => Some(
                e.downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "a panic".into()),
            ),
            Ok(()) if grew > bound => Some(format!(
                "allocated {grew} bytes at once for {} input bytes",
                input.len()
            )),
            Ok(()) => None,
        };
        if let Some(why) = why {
            let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/fuzz-failures");
            let _ = std::fs::create_dir_all(&dir);
            let file = dir.join(format!("{name}-{seed:x}-{k}"));
            let _ = std::fs::write(&file, &input);
            panic!(
                "fuzz target {name}, input {k} (RTDS_FUZZ_SEED={seed}): {why}\ninput ({} bytes, saved as {}): {:?}",
                input.len(),
                file.display(),
                String::from_utf8_lossy(&input)
            );
        }
    }
}

fn text_seeds(seeds: &[&str]) -> Vec<Vec<u8>> {
    seeds.iter().map(|s| s.as_bytes().to_vec()).collect()
}

#[test]
fn http_requests() {
    fuzz(
        "http_request",
        text_seeds(&[
            "GET /api/tags?filter=Line%201 HTTP/1.1\r\nHost: localhost:8080\r\nAuthorization: Bearer abcdefghijklmnop\r\n\r\n",
            "POST /api/tags/Setpoint HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 13\r\nOrigin: http://127.0.0.1\r\n\r\n{\"value\": 42}GET /health HTTP/1.0\r\n\r\n",
            "HEAD / HTTP/1.1\r\nHost: [::1]:8080\r\nConnection: close\r\nX-A: b\tc\r\n\r\n",
        ]),
    );
}

#[test]
fn http_hosts() {
    fuzz(
        "http_host",
        text_seeds(&[
            "localhost:8080",
            "[::1]:80",
            "GW17.plant.local.",
            "10.0.0.1",
            "a_b-c",
        ]),
    );
}

#[test]
fn mbap_frames() {
    fuzz(
        "mbap_frame",
        vec![
            vec![0, 1, 0, 0, 0, 6, 1, 3, 0, 0, 0, 10],
            vec![0x12, 0x34, 0, 0, 0, 7, 1, 3, 4, 0, 1, 0, 2],
            vec![0, 2, 0, 0, 0, 3, 1, 0x83, 2],
        ],
    );
}

#[test]
fn modbus_request_pdus() {
    fuzz(
        "modbus_request_pdu",
        vec![
            vec![3, 0, 0, 0, 125],
            vec![1, 0, 10, 7, 0xd0],
            vec![5, 0, 1, 0xff, 0],
            vec![6, 0, 100, 0x12, 0x34],
            vec![15, 0, 0, 0, 10, 2, 0xff, 0x03],
            vec![16, 0, 0, 0, 2, 4, 0, 1, 0, 2],
        ],
    );
}

#[test]
fn modbus_response_pdus() {
    fuzz(
        "modbus_response_pdu",
        vec![
            vec![0, 0, 1, 2, 3, 4, 0, 1, 0, 2],
            vec![0, 0, 9, 0, 1, 2, 0xff, 0x03],
            vec![0, 100, 7, 4, 6, 0, 100, 0, 8],
            vec![0, 0, 0, 5, 5, 0, 0, 0xff, 0],
            vec![0, 0, 3, 3, 0x84, 2],
        ],
    );
}

#[test]
fn rtu_replies_in_noise() {
    fuzz(
        "rtu_reply",
        vec![
            // unit 1, 1 register: 01 03 02 00 2A + CRC
            vec![1, 0, 1, 3, 2, 0, 0x2a, 0x39, 0x9b],
            vec![7, 1, 0, 0xff, 7, 3, 4, 0, 1, 0, 2, 0x2a, 0x32],
            vec![1, 0, 1, 0x83, 2, 0xc0, 0xf1],
        ],
    );
}

#[test]
fn register_values() {
    fuzz(
        "register_values",
        vec![
            vec![0, 0, 0x12, 0x34],
            vec![7, 1, 0x40, 0x49, 0x0f, 0xdb],
            vec![5, 3, 0x80, 0, 0, 0, 0, 0, 0, 0],
            vec![8, 2, b'H', b'i', b'!', 0, b'o', b'k'],
        ],
    );
}

#[test]
fn modbus_addresses() {
    fuzz(
        "modbus_address",
        text_seeds(&[
            "hr:100", "ir:3.15", "coil:7", "40001", "400001", "%MW100", "%MX10.3", "DB1.DBW0",
            "f32", "DCBA", "hr:65535",
        ]),
    );
}

#[test]
fn mqtt_packets() {
    fuzz(
        "mqtt_packet",
        vec![
            vec![0x20, 2, 0, 0, 0xd0, 0],
            vec![0x40, 2, 0, 1, 0x90, 3, 0, 1, 0],
            // PUBLISH QoS 1 "spBv1.0/G/NCMD/n", pid 5, payload 01 02
            [&[0x32u8, 22, 0, 16][..], b"spBv1.0/G/NCMD/n", &[0, 5, 1, 2]].concat(),
            vec![8, 0, 1, b'a', b'b', b'c', b'd', b'e'],
        ],
    );
}

#[test]
fn sparkplug_payloads() {
    use rtds::output::mqtt::protobuf::{DataType, Metric, MetricValue, Payload};
    let payload = |metrics: Vec<Metric>| {
        Payload {
            timestamp: Some(1_764_000_000_000),
            metrics,
            seq: Some(7),
        }
        .encode()
    };
    fuzz(
        "sparkplug_payload",
        vec![
            payload(vec![Metric {
                name: Some("Node Control/Rebirth".into()),
                datatype: Some(DataType::Boolean),
                value: Some(MetricValue::Bool(true)),
                ..Metric::default()
            }]),
            payload(vec![
                Metric {
                    alias: Some(12),
                    timestamp: Some(1),
                    datatype: Some(DataType::Int64),
                    value: Some(MetricValue::Long(i64::MIN as u64)),
                    ..Metric::default()
                },
                Metric {
                    name: Some("plc/Setpoint".into()),
                    datatype: Some(DataType::Double),
                    value: Some(MetricValue::Double(-1.5e300)),
                    ..Metric::default()
                },
                Metric {
                    name: Some("s".into()),
                    datatype: Some(DataType::String),
                    value: Some(MetricValue::String("a\"b".into())),
                    ..Metric::default()
                },
            ]),
        ],
    );
}

#[test]
fn archive_value_text() {
    fuzz(
        "value_text",
        text_seeds(&[
            "[1,2.5,\"a,b\",true,NaN,-Infinity]",
            "\"x\\\"y\\u00e9\"",
            "18446744073709551615",
            "-9223372036854775808",
            "[\"\",[]]",
            "1e300",
        ]),
    );
}

#[test]
fn http_write_bodies() {
    fuzz(
        "http_write_body",
        text_seeds(&[
            "{\"value\": 42}",
            "{\"value\": [1, \"a\", true]}",
            "-0.5",
            "\"text\"",
        ]),
    );
}

#[test]
fn ack_files() {
    fuzz(
        "ack_file",
        text_seeds(&["id=4711\n", "ts=2026-11-28T10:00:00Z", "4711", "id=1 ts=2"]),
    );
}

#[test]
fn connection_strings() {
    fuzz(
        "connection_string",
        text_seeds(&[
            "connector=ModbusTcp; host=10.0.0.5; port=502; unit_id=1; timeout=5; auto_open=true; auto_close=true",
            "connector=ModbusRtu; device=/dev/ttyS1; baud=19200; parity=E; data_bits=8; stop_bits=1; unit_id=7",
            "connector=Odbc; dsn=\"Driver={PostgreSQL};Server=db;Uid=a;Pwd=b;\"; query=\"SELECT 1\"",
        ]),
    );
}

#[test]
fn csv_tag_sheets() {
    fuzz(
        "csv_tag_sheet",
        text_seeds(&[
            "name,address,type,order,scale,writable\nFlow,hr:0,f32,CDAB,0.1,false\n\"Tank, level\",ir:3,u16,,,true\n",
            "\u{feff}name;address;type\nA;40001;u16\nB;hr:2;string\n",
        ]),
    );
}

#[test]
fn workbook_tag_sheets() {
    let ods = include_bytes!("../conf/config.ods");
    fuzz_scaled(
        "workbook_tag_sheet",
        vec![[&[0u8][..], ods].concat(), [&[1u8][..], ods].concat()],
        50,
    );
}

#[test]
fn configuration_files() {
    fuzz(
        "config_file",
        text_seeds(&[
            include_str!("../conf/rtds.ron"),
            "(\n cycle_ms: 500,\n storage: (path: \"x.db\"),\n http: (listen: \"127.0.0.1:8080\", hosts: [\"gw\"]),\n connectors: [(name: \"a\", connection: \"connector=ModbusTcp; host=h\", tags: [(name: \"T\", address: \"hr:1\", type: \"u16\")])],\n)\n",
        ]),
    );
}

#[test]
fn every_target_is_fuzzed_here() {
    let src = include_str!("fuzz.rs");
    for (name, _) in rtds::fuzzing::TARGETS {
        assert!(
            src.contains(&format!("\"{name}\",")),
            "target {name} has no test in tests/fuzz.rs"
        );
    }
}
