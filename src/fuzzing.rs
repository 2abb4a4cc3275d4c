//! Fuzz targets: one function per parser that takes bytes from outside,
//! each given arbitrary bytes. A target panics only when the parser breaks
//! a promise: it panicked itself, accepted what it cannot write back the
//! same (the round trips below), or produced something out of its bounds.
//! `tests/fuzz.rs` runs them on stable Rust inside `make test` with a fixed
//! budget of generated inputs; the `fuzz/` crate runs the same functions
//! under cargo-fuzz (libFuzzer) for as long as one likes (docs/testing.md).
//!
//! They live in the library, not in the tests, so that both drivers share
//! them and they reach parsers that are not public API.

use crate::connector::modbus::codec::{Frame, Request, Response};
use crate::connector::modbus::point::{Address, ByteOrder, DataType, Point};
use crate::connector::modbus::rtu;
use crate::http::request::{self, Limits};
use crate::model::Value;
use crate::output::mqtt::{packet, protobuf};
use std::time::Duration;

/// A fuzz target: arbitrary bytes in, a panic when a promise breaks.
pub type Target = fn(&[u8]);

/// Every target, by name (what `tests/fuzz.rs` and `fuzz/` iterate).
pub const TARGETS: &[(&str, Target)] = &[
    ("http_request", http_request),
    ("http_host", http_host),
    ("mbap_frame", mbap_frame),
    ("modbus_request_pdu", modbus_request_pdu),
    ("modbus_response_pdu", modbus_response_pdu),
    ("rtu_reply", rtu_reply),
    ("register_values", register_values),
    ("modbus_address", modbus_address),
    ("mqtt_packet", mqtt_packet),
    ("sparkplug_payload", sparkplug_payload),
    ("value_text", value_text),
    ("http_write_body", http_write_body),
    ("ack_file", ack_file),
    ("connection_string", connection_string),
    ("csv_tag_sheet", csv_tag_sheet),
    ("workbook_tag_sheet", workbook_tag_sheet),
    ("config_file", config_file),
];

/// HTTP requests, pipelined: every request read is within the limits, and
/// reading ends (each request consumes bytes).
pub fn http_request(data: &[u8]) {
    let limits = Limits::default();
    let mut src = data;
    let mut pending = Vec::new();
    for _ in 0..=data.len() {
        match request::read_request(&mut src, &mut pending, &limits, Duration::ZERO) {
            Ok(r) => {
                assert!(r.path.starts_with('/') || r.path.is_empty(), "{r:?}");
                assert!(r.body.len() <= limits.body);
                assert!(r.headers.len() <= limits.headers);
                assert!(r.method.bytes().all(|b| b.is_ascii_uppercase()), "{r:?}");
                for (k, v) in &r.headers {
                    assert!(!k.is_empty() && !k.contains([':', ' ', '\r', '\n']));
                    assert!(!v.contains(['\r', '\n', '\0']), "{v:?}");
                }
            }
            Err(_) => return,
        }
    }
    panic!("more requests than bytes");
}

/// `Host` values: a name taken is taken again unchanged.
pub fn http_host(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(name) = crate::http::host_name(text) {
        assert_eq!(
            crate::http::host_name(&name).as_deref(),
            Some(name.as_str())
        );
        assert!(!name.contains([':', '/', '@']) || name.starts_with('['));
    }
}

/// MBAP frames: one read back is written back to the same bytes.
pub fn mbap_frame(data: &[u8]) {
    let mut r = data;
    if let Ok(f) = Frame::read_from(&mut r) {
        let used = data.len() - r.len();
        assert_eq!(f.encode(), &data[..used]);
    }
}

/// Request PDUs as a server reads them: what decodes, encodes to a PDU
/// that decodes to the same request.
pub fn modbus_request_pdu(data: &[u8]) {
    if let Ok(req) = Request::decode_pdu(data) {
        let pdu = req.encode_pdu();
        assert_eq!(Request::decode_pdu(&pdu), Ok(req.clone()));
        assert!(pdu.len() <= 253);
    }
}

/// Reply PDUs to each kind of request (the request from the first bytes):
/// a reply taken answers that request, and encodes back the same.
pub fn modbus_response_pdu(data: &[u8]) {
    if data.len() < 4 {
        return;
    }
    let addr = u16::from_be_bytes([data[0], data[1]]);
    let count = u16::from(data[2] % 125) + 1;
    let req = match data[3] % 6 {
        0 => Request::ReadCoils { addr, count },
        1 => Request::ReadDiscreteInputs { addr, count },
        2 => Request::ReadHoldingRegisters { addr, count },
        3 => Request::ReadInputRegisters { addr, count },
        4 => Request::WriteSingleRegister { addr, value: count },
        _ => Request::WriteSingleCoil {
            addr,
            value: count % 2 == 0,
        },
    };
    let pdu = &data[4..];
    if let Ok(resp) = Response::decode_pdu(&req, pdu) {
        match &resp {
            Response::Registers(r) => assert_eq!(r.len(), usize::from(count)),
            Response::Bits(b) => assert_eq!(b.len(), usize::from(count)),
            _ => {}
        }
        let again = resp.encode_pdu(req.function());
        assert_eq!(Response::decode_pdu(&req, &again), Ok(resp));
    }
}

/// RTU reply search over noise: a reply found has a PDU for that request;
/// a valid frame put after the noise is found.
pub fn rtu_reply(data: &[u8]) {
    if data.len() < 2 {
        return;
    }
    let unit = data[0].max(1);
    let request = Request::ReadHoldingRegisters {
        addr: 0,
        count: u16::from(data[1] % 8) + 1,
    }
    .encode_pdu();
    let noise = &data[2..];
    if let rtu::Found::Reply { pdu, .. } = rtu::find_reply(noise, unit, &request) {
        assert_eq!(pdu.first().map(|f| f & 0x7f), Some(3), "{pdu:?}");
    }
    let mut reply = vec![3, (data[1] % 8 + 1) * 2];
    reply.resize(2 + usize::from(reply[1]), 0x5a);
    let frame = rtu::frame(unit, &reply);
    assert_eq!(rtu::crc16(&frame), 0, "a frame's CRC checks over itself");
}

/// Registers decoded as every type and order: no panic; a value decoded
/// from registers encodes back to the same registers (floats by bits)
/// where the type holds every bit pattern, NaN and infinities aside (never
/// written to a device: refused as not finite).
pub fn register_values(data: &[u8]) {
    if data.len() < 2 {
        return;
    }
    let regs: Vec<u16> = data[2..]
        .chunks_exact(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]))
        .take(16)
        .collect();
    let types = [
        "u16", "i16", "u32", "i32", "u64", "i64", "f32", "f64", "string",
    ];
    let orders = ["ABCD", "CDAB", "BADC", "DCBA"];
    let t = DataType::parse(types[usize::from(data[0]) % types.len()]).expect("a type");
    let order = ByteOrder::parse(orders[usize::from(data[1]) % orders.len()]).expect("an order");
    let width = usize::from(t.registers().max(1));
    if t != DataType::Str && regs.len() < width {
        return;
    }
    let count = if t == DataType::Str {
        regs.len().max(1) as u16
    } else {
        1
    };
    let point = Point {
        address: Address::parse("hr:0").expect("an address"),
        data_type: t,
        count,
        order,
        scale: 1.0,
        offset: 0.0,
    };
    let regs = &regs[..if t == DataType::Str {
        regs.len()
    } else {
        width
    }];
    if regs.is_empty() {
        return;
    }
    let v = point.decode_registers(regs);
    let exact = match (&v, t) {
        (Value::Float(f), _) => f.is_finite(),
        (_, DataType::Str) => false,
        _ => true,
    };
    if exact {
        assert_eq!(
            point.encode_registers(&v).as_deref(),
            Ok(regs),
            "{t:?} {order:?} {v:?}"
        );
    }
}

/// Addresses in RTDS's and the vendors' notations, types and orders.
pub fn modbus_address(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = Address::parse(text);
    let _ = Address::parse_vendor(text);
    let _ = DataType::parse(text);
    let _ = ByteOrder::parse(text);
}

/// Whatever a broker sends: packets split off one by one; a PUBLISH
/// written by RTDS is read back the same.
pub fn mqtt_packet(data: &[u8]) {
    let mut at = 0;
    while let Ok(Some((_, n))) = packet::split(&data[at..]) {
        assert!(n > 0);
        at += n;
    }
    if data.len() >= 3 {
        let cut = usize::from(data[0]).min(data.len() - 1);
        let topic = String::from_utf8_lossy(&data[1..=cut]).into_owned();
        if packet::check_topic(&topic).is_ok() {
            let p = packet::Publish {
                topic,
                payload: data[cut..].to_vec(),
                qos: data[1] & 1,
                retain: data[2] & 1 == 1,
                dup: false,
                pid: if data[1] & 1 == 1 { 1 } else { 0 },
            };
            let bytes = p.encode();
            let (back, n) = packet::split(&bytes)
                .expect("RTDS's own PUBLISH")
                .expect("whole");
            assert_eq!(n, bytes.len());
            assert_eq!(back, packet::Incoming::Publish(p));
        }
    }
}

/// Sparkplug payloads (NCMD, DCMD, STATE from others): what decodes,
/// encodes to bytes that decode to the same payload.
pub fn sparkplug_payload(data: &[u8]) {
    if let Ok(p) = protobuf::Payload::decode(data) {
        // Compared as bytes: a NaN is not equal to itself as a value.
        let again = p.encode();
        let back = protobuf::Payload::decode(&again).expect("its own encoding");
        assert_eq!(back.encode(), again, "{p:?}");
        assert_eq!(back.metrics.len(), p.metrics.len());
    }
}

/// The archive's value text (what the Historian reads): whatever parses
/// is written back to text that parses to the same value.
pub fn value_text(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(v) = crate::json::parse_value_text(text) {
        let written = crate::json::value_text(&v);
        let back = crate::json::parse_value_text(&written).expect("its own text");
        assert!(same_value(&back, &v), "{text:?} → {written:?}");
    }
}

/// Equality with NaN equal to itself (the text keeps NaN).
fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Float(x), Value::Float(y)) => x.to_bits() == y.to_bits() || x == y,
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same_value(a, b))
        }
        _ => a == b,
    }
}

/// The body of `POST /api/tags/{name}`.
pub fn http_write_body(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = crate::json::parse_write(text);
    }
}

/// The Historian's acknowledgement file, whatever is in it.
pub fn ack_file(data: &[u8]) {
    let _ = crate::storage::retention::read_request(data, data.len() as u64);
}

/// Connection strings.
pub fn connection_string(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = crate::connector::params::Params::parse(text);
    }
}

/// CSV tag sheets: every error names a row of the file.
pub fn csv_tag_sheet(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let rows = text.lines().count() + 1;
    match crate::config::tagfile::parse_csv(text) {
        Ok(cells) => {
            let (_, errors) = crate::config::tagfile::tags_from_rows("", &cells);
            for e in errors {
                assert!(e.row <= cells.len() + 1, "row {} of {}", e.row, cells.len());
            }
        }
        Err((row, _)) => assert!(row <= rows, "row {row} of {rows}"),
    }
}

/// ODS and XLSX tag sheets (the first byte picks which): read through
/// calamine from a file, as RTDS reads them.
pub fn workbook_tag_sheet(data: &[u8]) {
    let Some((&kind, bytes)) = data.split_first() else {
        return;
    };
    let ext = if kind & 1 == 0 { "ods" } else { "xlsx" };
    let path = std::env::temp_dir().join(format!(
        "rtds-fuzz-{}-{:?}.{ext}",
        std::process::id(),
        std::thread::current().id()
    ));
    if std::fs::write(&path, bytes).is_err() {
        return;
    }
    let (tags, errors) = crate::config::tagfile::read(&path, None);
    let _ = std::fs::remove_file(&path);
    for e in &errors {
        assert!(!e.message.is_empty());
    }
    drop(tags);
}

/// The configuration file: every error on a line of the file.
pub fn config_file(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = std::path::Path::new("/nonexistent/rtds-fuzz/rtds.ron");
    if let Err(errors) = crate::config::Config::parse(path, text) {
        let lines = text.split('\n').count();
        for e in &errors.0 {
            assert!(
                e.line >= 1 && e.line <= lines,
                "line {} of {lines}: {}",
                e.line,
                e.message
            );
        }
    }
}
