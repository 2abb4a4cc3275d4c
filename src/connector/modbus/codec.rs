//! Modbus TCP framing (MBAP header + PDU), kept apart from sockets so that it
//! is tested on bytes alone and shared by the connector and `rtds-sim`.
//!
//! Why not the `modbus` crate's transport: it reads a reply of the size a
//! *success* would have, so a 9-byte exception reply is never parsed and
//! surfaces as an I/O timeout after the full timeout. Here the MBAP length
//! field decides how much to read, so exceptions are reported at once and
//! exactly.

use std::io::{self, Read, Write};

/// Length of the MBAP header: transaction id, protocol id, length, unit id.
pub const MBAP_LEN: usize = 7;
/// Largest PDU the protocol allows (function code + 252 data bytes).
pub const MAX_PDU: usize = 253;
/// Most registers one read may ask for (FC 3/4).
pub const MAX_READ_REGISTERS: u16 = 125;
/// Most bits one read may ask for (FC 1/2).
pub const MAX_READ_BITS: u16 = 2000;
/// Most registers one FC 16 write may carry.
pub const MAX_WRITE_REGISTERS: u16 = 123;
/// Most coils one FC 15 write may carry.
pub const MAX_WRITE_BITS: u16 = 1968;

/// A device's exception reply (Modbus application protocol v1.1b3, 7):
/// the request reached it and was refused, which says nothing bad about
/// the link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exception {
    /// 1: the function code is not supported.
    IllegalFunction,
    /// 2: the address is not served.
    IllegalDataAddress,
    /// 3: a value in the request is not allowed.
    IllegalDataValue,
    /// 4: the device failed while doing it.
    ServerDeviceFailure,
    /// 5: accepted, will take long.
    Acknowledge,
    /// 6: busy with a long command.
    ServerDeviceBusy,
    /// 8: memory parity error (file records).
    MemoryParityError,
    /// 10: a gateway has no path to the device.
    GatewayPathUnavailable,
    /// 11: a gateway's device did not answer.
    GatewayTargetFailedToRespond,
    /// Any other code.
    Other(u8),
}

impl Exception {
    /// The exception for code `code`.
    pub fn from_code(code: u8) -> Exception {
        match code {
            1 => Exception::IllegalFunction,
            2 => Exception::IllegalDataAddress,
            3 => Exception::IllegalDataValue,
            4 => Exception::ServerDeviceFailure,
            5 => Exception::Acknowledge,
            6 => Exception::ServerDeviceBusy,
            8 => Exception::MemoryParityError,
            10 => Exception::GatewayPathUnavailable,
            11 => Exception::GatewayTargetFailedToRespond,
            other => Exception::Other(other),
        }
    }

    /// Its code on the wire.
    pub fn code(self) -> u8 {
        match self {
            Exception::IllegalFunction => 1,
            Exception::IllegalDataAddress => 2,
            Exception::IllegalDataValue => 3,
            Exception::ServerDeviceFailure => 4,
            Exception::Acknowledge => 5,
            Exception::ServerDeviceBusy => 6,
            Exception::MemoryParityError => 8,
            Exception::GatewayPathUnavailable => 10,
            Exception::GatewayTargetFailedToRespond => 11,
            Exception::Other(c) => c,
        }
    }

    /// The specification's name, in plain words.
    pub fn name(self) -> &'static str {
        match self {
            Exception::IllegalFunction => "illegal function",
            Exception::IllegalDataAddress => "illegal data address",
            Exception::IllegalDataValue => "illegal data value",
            Exception::ServerDeviceFailure => "device failure",
            Exception::Acknowledge => "acknowledge",
            Exception::ServerDeviceBusy => "device busy",
            Exception::MemoryParityError => "memory parity error",
            Exception::GatewayPathUnavailable => "gateway path unavailable",
            Exception::GatewayTargetFailedToRespond => "gateway target failed to respond",
            Exception::Other(_) => "unknown exception",
        }
    }
}

impl std::fmt::Display for Exception {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exception {} ({})", self.code(), self.name())
    }
}

/// A request PDU as plain data. In every variant `addr` is the first
/// 0-based address, `count` the quantity, `value(s)` the data written.
#[allow(missing_docs)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// FC 1.
    ReadCoils { addr: u16, count: u16 },
    /// FC 2.
    ReadDiscreteInputs { addr: u16, count: u16 },
    /// FC 3.
    ReadHoldingRegisters { addr: u16, count: u16 },
    /// FC 4.
    ReadInputRegisters { addr: u16, count: u16 },
    /// FC 5.
    WriteSingleCoil { addr: u16, value: bool },
    /// FC 6.
    WriteSingleRegister { addr: u16, value: u16 },
    /// FC 15.
    WriteMultipleCoils { addr: u16, values: Vec<bool> },
    /// FC 16.
    WriteMultipleRegisters { addr: u16, values: Vec<u16> },
}

impl Request {
    /// The function code on the wire.
    pub fn function(&self) -> u8 {
        match self {
            Request::ReadCoils { .. } => 1,
            Request::ReadDiscreteInputs { .. } => 2,
            Request::ReadHoldingRegisters { .. } => 3,
            Request::ReadInputRegisters { .. } => 4,
            Request::WriteSingleCoil { .. } => 5,
            Request::WriteSingleRegister { .. } => 6,
            Request::WriteMultipleCoils { .. } => 15,
            Request::WriteMultipleRegisters { .. } => 16,
        }
    }

    /// Encodes the PDU (function code and data, no header).
    pub fn encode_pdu(&self) -> Vec<u8> {
        // Room for the largest PDU at once: growing from one byte cost a
        // reallocation per request.
        let mut pdu = Vec::with_capacity(MAX_PDU);
        pdu.push(self.function());
        match self {
            Request::ReadCoils { addr, count }
            | Request::ReadDiscreteInputs { addr, count }
            | Request::ReadHoldingRegisters { addr, count }
            | Request::ReadInputRegisters { addr, count } => {
                put_u16(&mut pdu, *addr);
                put_u16(&mut pdu, *count);
            }
            Request::WriteSingleCoil { addr, value } => {
                put_u16(&mut pdu, *addr);
                put_u16(&mut pdu, if *value { 0xFF00 } else { 0x0000 });
            }
            Request::WriteSingleRegister { addr, value } => {
                put_u16(&mut pdu, *addr);
                put_u16(&mut pdu, *value);
            }
            Request::WriteMultipleCoils { addr, values } => {
                put_u16(&mut pdu, *addr);
                put_u16(&mut pdu, values.len() as u16);
                let bytes = pack_bits(values);
                pdu.push(bytes.len() as u8);
                pdu.extend_from_slice(&bytes);
            }
            Request::WriteMultipleRegisters { addr, values } => {
                put_u16(&mut pdu, *addr);
                put_u16(&mut pdu, values.len() as u16);
                pdu.push((values.len() * 2) as u8);
                for v in values {
                    put_u16(&mut pdu, *v);
                }
            }
        }
        pdu
    }

    /// Decodes a request PDU, as a server does. The error is the Modbus
    /// exception code to answer with.
    pub fn decode_pdu(pdu: &[u8]) -> Result<Request, Exception> {
        let (&function, data) = pdu.split_first().ok_or(Exception::IllegalFunction)?;
        let word = |i: usize| -> Result<u16, Exception> {
            data.get(i..i + 2)
                .map(|b| u16::from_be_bytes([b[0], b[1]]))
                .ok_or(Exception::IllegalDataValue)
        };
        let req = match function {
            1..=4 => {
                let (addr, count) = (word(0)?, word(2)?);
                let max = if function <= 2 {
                    MAX_READ_BITS
                } else {
                    MAX_READ_REGISTERS
                };
                if count == 0 || count > max {
                    return Err(Exception::IllegalDataValue);
                }
                match function {
                    1 => Request::ReadCoils { addr, count },
                    2 => Request::ReadDiscreteInputs { addr, count },
                    3 => Request::ReadHoldingRegisters { addr, count },
                    _ => Request::ReadInputRegisters { addr, count },
                }
            }
            5 => {
                let value = match word(2)? {
                    0xFF00 => true,
                    0x0000 => false,
                    _ => return Err(Exception::IllegalDataValue),
                };
                Request::WriteSingleCoil {
                    addr: word(0)?,
                    value,
                }
            }
            6 => Request::WriteSingleRegister {
                addr: word(0)?,
                value: word(2)?,
            },
            15 | 16 => {
                let (addr, count) = (word(0)?, word(2)?);
                let byte_count = *data.get(4).ok_or(Exception::IllegalDataValue)? as usize;
                let payload = data
                    .get(5..5 + byte_count)
                    .ok_or(Exception::IllegalDataValue)?;
                if function == 15 {
                    if count == 0
                        || count > MAX_WRITE_BITS
                        || byte_count != count.div_ceil(8) as usize
                    {
                        return Err(Exception::IllegalDataValue);
                    }
                    Request::WriteMultipleCoils {
                        addr,
                        values: unpack_bits(payload, count as usize),
                    }
                } else {
                    if count == 0 || count > MAX_WRITE_REGISTERS || byte_count != count as usize * 2
                    {
                        return Err(Exception::IllegalDataValue);
                    }
                    Request::WriteMultipleRegisters {
                        addr,
                        values: payload
                            .chunks_exact(2)
                            .map(|b| u16::from_be_bytes([b[0], b[1]]))
                            .collect(),
                    }
                }
            }
            _ => return Err(Exception::IllegalFunction),
        };
        Ok(req)
    }
}

/// A response PDU as plain data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// Answer to FC 1/2: exactly the bits asked for.
    Bits(Vec<bool>),
    /// Answer to FC 3/4: exactly the registers asked for.
    Registers(Vec<u16>),
    /// Echo of an FC 5/6 write, or address and count of an FC 15/16 write.
    Written {
        /// First address written.
        addr: u16,
        /// Value (FC 5/6) or quantity (FC 15/16).
        value: u16,
    },
    /// The device refused.
    Exception(Exception),
}

impl Response {
    /// Encodes the PDU answering a request with function code `function`.
    pub fn encode_pdu(&self, function: u8) -> Vec<u8> {
        match self {
            Response::Bits(bits) => {
                let bytes = pack_bits(bits);
                let mut pdu = vec![function, bytes.len() as u8];
                pdu.extend_from_slice(&bytes);
                pdu
            }
            Response::Registers(regs) => {
                let mut pdu = vec![function, (regs.len() * 2) as u8];
                for r in regs {
                    put_u16(&mut pdu, *r);
                }
                pdu
            }
            Response::Written { addr, value } => {
                let mut pdu = vec![function];
                put_u16(&mut pdu, *addr);
                put_u16(&mut pdu, *value);
                pdu
            }
            Response::Exception(e) => vec![function | 0x80, e.code()],
        }
    }

    /// Decodes the PDU answering `req`, checking that it answers *that*
    /// request: same function, the byte count the request implies, the
    /// echo of a write. A mismatch is a protocol error, never a value.
    pub fn decode_pdu(req: &Request, pdu: &[u8]) -> Result<Response, String> {
        Self::decode_pdu_into(req, pdu, Vec::new())
    }

    /// [`Response::decode_pdu`] with registers decoded into `spare` (a
    /// scan hands back the previous reply's vector: no allocation per
    /// request).
    pub fn decode_pdu_into(req: &Request, pdu: &[u8], spare: Vec<u16>) -> Result<Response, String> {
        let function = req.function();
        let (&fc, data) = pdu.split_first().ok_or("empty reply")?;
        if fc == function | 0x80 {
            let code = *data.first().ok_or("exception reply without a code")?;
            return Ok(Response::Exception(Exception::from_code(code)));
        }
        if fc != function {
            return Err(format!(
                "reply has function code {fc}, request had {function}"
            ));
        }
        match req {
            Request::ReadCoils { count, .. } | Request::ReadDiscreteInputs { count, .. } => {
                let expected = count.div_ceil(8) as usize;
                let payload = counted_payload(data, expected)?;
                Ok(Response::Bits(unpack_bits(payload, *count as usize)))
            }
            Request::ReadHoldingRegisters { count, .. }
            | Request::ReadInputRegisters { count, .. } => {
                let payload = counted_payload(data, *count as usize * 2)?;
                // A plain loop over pairs into the vector, every element
                // overwritten (the spare is only cut or lengthened, never
                // cleared and filled first): extending from the iterator
                // chain cost three times the instructions per register.
                let mut regs = spare;
                regs.truncate(payload.len() / 2);
                regs.resize(payload.len() / 2, 0);
                for (r, b) in regs.iter_mut().zip(payload.chunks_exact(2)) {
                    *r = u16::from_be_bytes([b[0], b[1]]);
                }
                Ok(Response::Registers(regs))
            }
            Request::WriteSingleCoil { addr, .. }
            | Request::WriteSingleRegister { addr, .. }
            | Request::WriteMultipleCoils { addr, .. }
            | Request::WriteMultipleRegisters { addr, .. } => {
                if data.len() != 4 {
                    return Err(format!("write reply has {} data bytes, not 4", data.len()));
                }
                let echo_addr = u16::from_be_bytes([data[0], data[1]]);
                let value = u16::from_be_bytes([data[2], data[3]]);
                if echo_addr != *addr {
                    return Err(format!(
                        "write reply echoes address {echo_addr}, request had {addr}"
                    ));
                }
                // The whole echo: the value written (FC 5/6) or the
                // quantity (FC 15/16) must be the one sent.
                let expected = match req {
                    Request::WriteSingleCoil { value: on, .. } => {
                        if *on {
                            0xFF00
                        } else {
                            0x0000
                        }
                    }
                    Request::WriteSingleRegister { value, .. } => *value,
                    Request::WriteMultipleCoils { values, .. } => values.len() as u16,
                    Request::WriteMultipleRegisters { values, .. } => values.len() as u16,
                    _ => value,
                };
                if value != expected {
                    return Err(format!(
                        "write reply echoes {value:#06x}, request sent {expected:#06x}"
                    ));
                }
                Ok(Response::Written { addr: *addr, value })
            }
        }
    }
}

fn counted_payload(data: &[u8], expected: usize) -> Result<&[u8], String> {
    let (&n, rest) = data.split_first().ok_or("reply without byte count")?;
    if n as usize != expected || rest.len() != expected {
        return Err(format!(
            "reply carries {} bytes (count byte {n}), request implies {expected}",
            rest.len()
        ));
    }
    Ok(rest)
}

/// Plain words for a header that is text: the peer speaks another protocol
/// (a web server, a Telnet banner) on the port configured for Modbus.
fn not_modbus(head: &[u8]) -> Option<String> {
    let text = head
        .iter()
        .all(|b| b.is_ascii_graphic() || *b == b' ' || *b == b'\r' || *b == b'\n');
    if !text {
        return None;
    }
    let start = String::from_utf8_lossy(head).trim().to_string();
    let what = if start.starts_with("HTTP") {
        " (looks like HTTP: a web server?)"
    } else {
        ""
    };
    Some(format!(
        "the peer is not speaking Modbus TCP: it sent text `{start}`{what}"
    ))
}

/// One Modbus TCP frame: MBAP header fields plus the PDU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Transaction id: pairs a reply with its request.
    pub tid: u16,
    /// Unit id: the slave behind a gateway, or the device itself.
    pub unit: u8,
    /// Function code and data.
    pub pdu: Vec<u8>,
}

impl Frame {
    /// Encodes header and PDU into one buffer, sent in one `write` so the
    /// device never sees a split frame from us.
    pub fn encode(&self) -> Vec<u8> {
        let mut buf = vec![0; MBAP_LEN + self.pdu.len()];
        frame_into(self.tid, self.unit, &self.pdu, &mut buf);
        buf
    }

    /// Reads exactly one frame, taking its length from the MBAP header.
    /// A header that cannot be Modbus (protocol id ≠ 0, length outside
    /// 2..=254) is `InvalidData`: the stream cannot be resynchronised and the
    /// caller must drop the connection.
    pub fn read_from(r: &mut impl Read) -> io::Result<Frame> {
        let mut head = [0u8; MBAP_LEN];
        r.read_exact(&mut head)?;
        let (tid, unit, len) = Frame::head(&head)?;
        let mut pdu = vec![0u8; len];
        r.read_exact(&mut pdu)?;
        Ok(Frame { tid, unit, pdu })
    }

    /// Checks an MBAP header: (transaction id, unit, PDU length), or
    /// `InvalidData` when it cannot be Modbus (see [`Frame::read_from`]).
    pub fn head(head: &[u8; MBAP_LEN]) -> io::Result<(u16, u8, usize)> {
        let tid = u16::from_be_bytes([head[0], head[1]]);
        let pid = u16::from_be_bytes([head[2], head[3]]);
        let len = u16::from_be_bytes([head[4], head[5]]) as usize;
        if pid != 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                not_modbus(head).unwrap_or_else(|| format!("MBAP protocol id {pid}, expected 0")),
            ));
        }
        if !(2..=MAX_PDU + 1).contains(&len) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("MBAP length {len} outside 2..=254"),
            ));
        }
        Ok((tid, head[6], len - 1))
    }

    /// Writes the frame in one call.
    pub fn write_to(&self, w: &mut impl Write) -> io::Result<()> {
        w.write_all(&self.encode())
    }
}

/// Writes the frame of `pdu` (header, then the PDU) into the front of
/// `out` and returns its length: a request's frame built on the stack,
/// without an allocation. `out` must hold `MBAP_LEN + pdu.len()` bytes.
pub fn frame_into(tid: u16, unit: u8, pdu: &[u8], out: &mut [u8]) -> usize {
    let n = MBAP_LEN + pdu.len();
    out[0..2].copy_from_slice(&tid.to_be_bytes());
    out[2..4].copy_from_slice(&[0, 0]);
    out[4..6].copy_from_slice(&(pdu.len() as u16 + 1).to_be_bytes());
    out[6] = unit;
    out[MBAP_LEN..n].copy_from_slice(pdu);
    n
}

fn put_u16(buf: &mut Vec<u8>, v: u16) {
    buf.extend_from_slice(&v.to_be_bytes());
}

/// Packs bits LSB-first into bytes, as Modbus orders coils.
pub fn pack_bits(bits: &[bool]) -> Vec<u8> {
    let mut bytes = vec![0u8; bits.len().div_ceil(8)];
    for (i, &b) in bits.iter().enumerate() {
        if b {
            bytes[i / 8] |= 1 << (i % 8);
        }
    }
    bytes
}

/// Unpacks `count` bits LSB-first from bytes.
pub fn unpack_bits(bytes: &[u8], count: usize) -> Vec<bool> {
    (0..count)
        .map(|i| bytes.get(i / 8).is_some_and(|b| b & (1 << (i % 8)) != 0))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_holding_request_bytes() {
        let req = Request::ReadHoldingRegisters {
            addr: 0x006B,
            count: 3,
        };
        let frame = Frame {
            tid: 1,
            unit: 17,
            pdu: req.encode_pdu(),
        };
        // The example from the Modbus application protocol spec, with MBAP.
        assert_eq!(
            frame.encode(),
            [0, 1, 0, 0, 0, 6, 17, 0x03, 0x00, 0x6B, 0x00, 0x03]
        );
    }

    #[test]
    fn read_holding_response_decodes_registers() {
        let req = Request::ReadHoldingRegisters { addr: 0, count: 3 };
        let pdu = [0x03, 0x06, 0x02, 0x2B, 0x00, 0x00, 0x00, 0x64];
        assert_eq!(
            Response::decode_pdu(&req, &pdu),
            Ok(Response::Registers(vec![0x022B, 0x0000, 0x0064]))
        );
    }

    /// A scan decodes each reply into the previous reply's vector: whatever
    /// its length and contents, the result is the reply's registers alone
    /// (the spec's example reply, Modbus Application Protocol 6.3).
    #[test]
    fn a_reused_vector_holds_the_reply_alone() {
        let req = Request::ReadHoldingRegisters { addr: 0, count: 3 };
        let pdu = [0x03, 0x06, 0x02, 0x2B, 0x00, 0x00, 0x00, 0x64];
        for spare in [vec![], vec![0xAAAA; 1], vec![0xAAAA; 3], vec![0x5555; 125]] {
            assert_eq!(
                Response::decode_pdu_into(&req, &pdu, spare),
                Ok(Response::Registers(vec![0x022B, 0x0000, 0x0064]))
            );
        }
    }

    #[test]
    fn exception_reply_is_read_whole_and_decoded_at_once() {
        // 9 bytes on the wire: the frame a fixed-size reader waits past.
        let wire = [0, 7, 0, 0, 0, 3, 1, 0x83, 0x02];
        let frame = Frame::read_from(&mut &wire[..]).unwrap();
        assert_eq!(frame.tid, 7);
        let req = Request::ReadHoldingRegisters {
            addr: 1000,
            count: 1,
        };
        assert_eq!(
            Response::decode_pdu(&req, &frame.pdu),
            Ok(Response::Exception(Exception::IllegalDataAddress))
        );
    }

    #[test]
    fn short_or_foreign_replies_are_protocol_errors() {
        let req = Request::ReadHoldingRegisters { addr: 0, count: 2 };
        assert!(Response::decode_pdu(&req, &[0x03, 0x02, 0, 1]).is_err());
        assert!(Response::decode_pdu(&req, &[0x04, 0x04, 0, 1, 0, 2]).is_err());
        let wire = [0, 1, 0, 5, 0, 3, 1, 0x83, 0x02];
        assert_eq!(
            Frame::read_from(&mut &wire[..]).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
    }

    #[test]
    fn coils_pack_lsb_first() {
        // Spec example: coils 20..38 = CD 6B 05.
        let bits = unpack_bits(&[0xCD, 0x6B, 0x05], 19);
        assert_eq!(pack_bits(&bits), vec![0xCD, 0x6B, 0x05]);
        assert!(bits[0] && !bits[1] && bits[2] && bits[3]);
        let req = Request::ReadCoils {
            addr: 19,
            count: 19,
        };
        assert_eq!(
            Response::decode_pdu(&req, &[0x01, 0x03, 0xCD, 0x6B, 0x05]),
            Ok(Response::Bits(bits))
        );
    }

    #[test]
    fn every_request_round_trips_through_the_server_decoder() {
        let reqs = [
            Request::ReadCoils {
                addr: 1,
                count: 2000,
            },
            Request::ReadDiscreteInputs { addr: 2, count: 9 },
            Request::ReadHoldingRegisters {
                addr: 3,
                count: 125,
            },
            Request::ReadInputRegisters { addr: 4, count: 1 },
            Request::WriteSingleCoil {
                addr: 5,
                value: true,
            },
            Request::WriteSingleRegister {
                addr: 6,
                value: 0xBEEF,
            },
            Request::WriteMultipleCoils {
                addr: 7,
                values: vec![true, false, true, true, false, false, true, false, true],
            },
            Request::WriteMultipleRegisters {
                addr: 8,
                values: vec![1, 2, 0xFFFF],
            },
        ];
        for req in reqs {
            assert_eq!(Request::decode_pdu(&req.encode_pdu()), Ok(req.clone()));
        }
    }

    #[test]
    fn server_refuses_bad_requests_with_the_right_exception() {
        assert_eq!(
            Request::decode_pdu(&[0x2B]),
            Err(Exception::IllegalFunction)
        );
        assert_eq!(
            Request::decode_pdu(&[0x03, 0, 0, 0, 126]),
            Err(Exception::IllegalDataValue)
        );
        assert_eq!(
            Request::decode_pdu(&[0x05, 0, 0, 0x12, 0x34]),
            Err(Exception::IllegalDataValue)
        );
    }

    #[test]
    fn write_echo_must_match() {
        let req = Request::WriteSingleRegister { addr: 6, value: 1 };
        assert_eq!(
            Response::decode_pdu(&req, &[0x06, 0, 6, 0, 1]),
            Ok(Response::Written { addr: 6, value: 1 })
        );
        assert!(Response::decode_pdu(&req, &[0x06, 0, 7, 0, 1]).is_err());
        // The whole echo (spec 6.5, 6.6, 6.11, 6.12): value or quantity too,
        // and nothing after it.
        assert!(Response::decode_pdu(&req, &[0x06, 0, 6, 0, 2]).is_err());
        assert!(Response::decode_pdu(&req, &[0x06, 0, 6, 0, 1, 0]).is_err());
        let coil = Request::WriteSingleCoil {
            addr: 3,
            value: true,
        };
        assert!(Response::decode_pdu(&coil, &[0x05, 0, 3, 0xFF, 0x00]).is_ok());
        assert!(Response::decode_pdu(&coil, &[0x05, 0, 3, 0x00, 0x00]).is_err());
        let regs = Request::WriteMultipleRegisters {
            addr: 10,
            values: vec![1, 2, 3],
        };
        assert!(Response::decode_pdu(&regs, &[0x10, 0, 10, 0, 3]).is_ok());
        assert!(Response::decode_pdu(&regs, &[0x10, 0, 10, 0, 2]).is_err());
        let coils = Request::WriteMultipleCoils {
            addr: 0,
            values: vec![true; 9],
        };
        assert!(Response::decode_pdu(&coils, &[0x0F, 0, 0, 0, 9]).is_ok());
        assert!(Response::decode_pdu(&coils, &[0x0F, 0, 0, 0, 8]).is_err());
    }

    #[test]
    fn a_peer_speaking_http_is_named_in_plain_words() {
        let mut r: &[u8] = b"HTTP/1.1 400 Bad Request\r\n\r\n";
        let e = Frame::read_from(&mut r).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(
            e.to_string()
                .contains("not speaking Modbus TCP: it sent text `HTTP/1.` (looks like HTTP"),
            "{e}"
        );
        let mut r: &[u8] = &[0, 1, 0, 7, 0, 3, 1, 3, 0];
        assert!(
            Frame::read_from(&mut r)
                .unwrap_err()
                .to_string()
                .contains("protocol id 7")
        );
    }
}
