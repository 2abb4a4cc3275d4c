//! The bus scan of `rtds scan`: which unit ids answer on a line (what a
//! Modscan user does first on a new RS-485 line). Each unit is asked for
//! one holding register; any answer, an exception included, means a device
//! is there; silence within the timeout means none is. The whole scan is
//! bounded: units × (timeout + the line's silence), said before it starts.

use super::codec::{Exception, Request, Response};
use super::{ModbusSettings, Wire, rtu};
use crate::connector::{ConnectorError, Failure};
use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// What one unit id did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Nothing within the timeout: no device at this id.
    Silent,
    /// It answered holding register 0 (its value).
    Register(u16),
    /// It answered with an exception: a device is there, register 0 is not
    /// (or FC 3 is not) in its map.
    Exception(Exception),
    /// Bytes came that are no valid reply: a device at another speed or
    /// parity, or two devices with one id.
    Garbled(String),
}

impl Answer {
    /// Whether a device answered.
    pub fn found(&self) -> bool {
        matches!(self, Answer::Register(_) | Answer::Exception(_))
    }
}

/// The request each unit gets: one holding register at 0.
const PROBE: Request = Request::ReadHoldingRegisters { addr: 0, count: 1 };

/// The default wait for each unit: the request's and reply's time on the
/// line plus 100 ms for the device (most answer within 10 ms).
pub fn default_timeout(wire: &Wire) -> Duration {
    match wire {
        Wire::Rtu { line, .. } => rtu::on_the_wire(8 + 7, line.baud) + Duration::from_millis(100),
        Wire::RtuTcp { .. } | Wire::Tcp { .. } => Duration::from_millis(200),
    }
}

/// The longest the scan of `units` can take.
pub fn bound(settings: &ModbusSettings, units: &RangeInclusive<u8>) -> Duration {
    let per_unit = settings.timeout
        + match &settings.wire {
            Wire::Rtu { line, timing } => rtu::t35(line.baud) + timing.frame_gap,
            Wire::RtuTcp { timing, .. } => timing.frame_gap,
            Wire::Tcp { .. } => Duration::ZERO,
        };
    let n = units.clone().count() as u32;
    // Plus one connect, and over TCP one reconnect after each silent unit
    // (a timeout leaves an MBAP stream in doubt).
    per_unit * n
        + settings.timeout
            * if matches!(settings.wire, Wire::Tcp { .. }) {
                n + 1
            } else {
                1
            }
}

/// Asks every unit of `units` in turn, calling `each` with its answer as it
/// comes; stops early when `stop` is set. `Err` when the line itself fails
/// (the port cannot be opened, the converter is gone).
pub fn scan(
    settings: &ModbusSettings,
    units: RangeInclusive<u8>,
    stop: &AtomicBool,
    mut each: impl FnMut(u8, &Answer),
) -> Result<Vec<(u8, Answer)>, ConnectorError> {
    let mut link = settings.wire.transport(settings.timeout);
    link.open()?;
    let mut out = Vec::new();
    for unit in units {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        if !link.is_open() {
            link.open()?;
        }
        let deadline = Instant::now() + settings.timeout;
        let answer = match link.exchange(unit, &PROBE.encode_pdu(), deadline) {
            Ok(pdu) => match Response::decode_pdu(&PROBE, &pdu) {
                Ok(Response::Registers(r)) => Answer::Register(r[0]),
                Ok(Response::Exception(e)) => Answer::Exception(e),
                Ok(_) | Err(_) => Answer::Garbled(format!(
                    "a reply that does not answer the request ({} bytes)",
                    pdu.len()
                )),
            },
            Err(e) if e.status == crate::model::Status::TIMEOUT => {
                if e.failure == Failure::Link {
                    // MBAP: the stream is in doubt after a timeout.
                    link.close();
                }
                Answer::Silent
            }
            Err(e) if e.failure == Failure::Link => return Err(e),
            Err(e) => Answer::Garbled(e.message),
        };
        each(unit, &answer);
        out.push((unit, answer));
    }
    link.close();
    Ok(out)
}

/// The connection string for the device at `unit` on this line, ready to
/// paste: the wire's keys as given, the unit id, no scan timeout.
pub fn connection_line(settings: &ModbusSettings, unit: u8) -> String {
    let wire = match &settings.wire {
        Wire::Tcp { host, port } => format!("connector=ModbusTcp; host={host}; port={port}"),
        Wire::RtuTcp { host, port, timing } => format!(
            "connector=ModbusRtuTcp; host={host}; port={port}{}",
            gap(timing.frame_gap)
        ),
        Wire::Rtu { line, timing } => format!(
            "connector=ModbusRtu; device={}; baud={}; parity={}; data_bits={}; stop_bits={}{}{}",
            line.device.display(),
            line.baud,
            line.parity,
            line.data_bits,
            line.stop_bits,
            match line.rs485 {
                Some(rs) => format!(
                    "; rs485=true; rts_before_ms={}; rts_after_ms={}",
                    rs.before.as_millis(),
                    rs.after.as_millis()
                ),
                None => String::new(),
            },
            gap(timing.frame_gap)
        ),
    };
    format!("{wire}; unit_id={unit}")
}

fn gap(frame_gap: Duration) -> String {
    if frame_gap.is_zero() {
        String::new()
    } else {
        format!("; frame_gap_ms={}", frame_gap.as_millis())
    }
}

/// Parses `A-B` or `A` as a range of unit ids in 1..=247 (0 broadcasts and
/// is never answered).
pub fn parse_units(text: &str) -> Result<RangeInclusive<u8>, String> {
    let bad = || format!("--units `{text}`: give unit ids in 1..=247 as A-B or A");
    let (a, b) = text.split_once('-').unwrap_or((text, text));
    let a: u8 = a.trim().parse().map_err(|_| bad())?;
    let b: u8 = b.trim().parse().map_err(|_| bad())?;
    if a == 0 || b > 247 || a > b {
        return Err(bad());
    }
    Ok(a..=b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connector::Params;

    fn settings(text: &str) -> ModbusSettings {
        let (s, errors) = ModbusSettings::from_connection(Params::parse(text).unwrap());
        assert!(errors.is_empty(), "{errors:?}");
        s
    }

    #[test]
    fn unit_ranges() {
        assert_eq!(parse_units("1-247"), Ok(1..=247));
        assert_eq!(parse_units("7"), Ok(7..=7));
        for bad in ["0-3", "1-248", "5-2", "x", ""] {
            assert!(parse_units(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_pasted_line_is_the_line_it_scanned() {
        let s = settings(
            "connector=ModbusRtu; device=/dev/ttyS1; baud=9600; parity=N; stop_bits=2; frame_gap_ms=5; unit_id=1",
        );
        let line = connection_line(&s, 17);
        assert_eq!(
            line,
            "connector=ModbusRtu; device=/dev/ttyS1; baud=9600; parity=N; data_bits=8; stop_bits=2; frame_gap_ms=5; unit_id=17"
        );
        // It reads back as the same line with the new unit.
        let again = settings(&line);
        assert_eq!((again.wire, again.unit_id), (s.wire, 17));
    }

    #[test]
    fn the_bound_counts_every_unit_and_the_line_silence() {
        let mut s = settings("connector=ModbusRtu; device=/dev/ttyS1; baud=9600; timeout=0.1");
        // 10 units × (100 ms + t3.5 at 9600: 38.5 bits, 4,010,416 ns) +
        // one connect's 100 ms.
        assert_eq!(
            bound(&s, &(1..=10)).as_nanos(),
            10 * (100_000_000 + 4_010_416) + 100_000_000
        );
        s.timeout = default_timeout(&s.wire);
        // 15 bytes at 9600 baud, 11 bits each: 17.2 ms, plus 100 ms.
        assert_eq!(s.timeout.as_micros(), 117_187);
    }
}
