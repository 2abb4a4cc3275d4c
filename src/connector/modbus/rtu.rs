//! Modbus RTU framing (Modbus over Serial Line v1.02, 2.5.1): a frame is
//! the unit address, the PDU and a CRC-16/MODBUS, low byte first; frames
//! are told apart by at least 3.5 characters of silence. Pure functions on
//! bytes, so framing is tested without a line, and shared by the serial
//! transport and RTU over TCP (a serial-to-Ethernet converter forwards
//! these frames as they are).

use super::codec::MAX_PDU;

/// Unit 0: a broadcast, written to every device, answered by none.
pub const BROADCAST: u8 = 0;

/// The largest frame: address, PDU, CRC.
pub const MAX_FRAME: usize = 1 + MAX_PDU + 2;

/// CRC-16/MODBUS (polynomial 0xA001 reflected, initial 0xFFFF), by table:
/// computed once, 512 bytes.
pub fn crc16(bytes: &[u8]) -> u16 {
    const TABLE: [u16; 256] = {
        let mut t = [0u16; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u16;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 {
                    (c >> 1) ^ 0xA001
                } else {
                    c >> 1
                };
                k += 1;
            }
            t[i] = c;
            i += 1;
        }
        t
    };
    bytes.iter().fold(0xFFFF, |crc, &b| {
        (crc >> 8) ^ TABLE[((crc ^ u16::from(b)) & 0xFF) as usize]
    })
}

/// The frame carrying `pdu` to `unit`.
pub fn frame(unit: u8, pdu: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(pdu.len() + 3);
    f.push(unit);
    f.extend_from_slice(pdu);
    let crc = crc16(&f);
    f.extend_from_slice(&crc.to_le_bytes());
    f
}

/// How long a reply to function `function` is, once its first bytes are
/// known: the whole frame's length, or `None` while more bytes are needed
/// to tell (a read reply's byte count is its third byte). The spec gives
/// RTU no length field: the function code decides.
pub fn reply_len(head: &[u8]) -> Option<usize> {
    let fc = *head.get(1)?;
    if fc & 0x80 != 0 {
        // Address, function | 0x80, exception code, CRC.
        return Some(5);
    }
    match fc {
        1..=4 => Some(5 + usize::from(*head.get(2)?)),
        5 | 6 | 15 | 16 => Some(8),
        // A function RTDS never sends: take what the line gives.
        _ => None,
    }
}

/// The length of a normal (not exception) reply frame to the request
/// `pdu`, known from the request alone: a read's from its count, a
/// write's echo always 8. `None` for a function RTDS never sends.
pub fn expected_len(pdu: &[u8]) -> Option<usize> {
    let count = || {
        Some(usize::from(u16::from_be_bytes([
            *pdu.get(3)?,
            *pdu.get(4)?,
        ])))
    };
    match *pdu.first()? {
        1 | 2 => Some(5 + count()?.div_ceil(8)),
        3 | 4 => Some(5 + 2 * count()?),
        5 | 6 | 15 | 16 => Some(8),
        _ => None,
    }
}

/// The probe that resynchronises RTDS with a unit before read `pdu`, after
/// that unit left a request unanswered: the same read at the same address
/// with another count (1 or 2), so its reply can never be taken for the
/// read's, nor the read's for it. `None` for writes, whose echo names
/// address and value and so cannot be mistaken for another write's.
pub fn probe_for(pdu: &[u8]) -> Option<Vec<u8>> {
    let fc = *pdu.first()?;
    if !(1..=4).contains(&fc) || pdu.len() != 5 {
        return None;
    }
    let addr = u16::from_be_bytes([pdu[1], pdu[2]]);
    let count = u16::from_be_bytes([pdu[3], pdu[4]]);
    let probe_count: u16 = if count == 1 { 2 } else { 1 };
    let addr = addr.min(u16::MAX - (probe_count - 1));
    let mut probe = vec![fc];
    probe.extend_from_slice(&addr.to_be_bytes());
    probe.extend_from_slice(&probe_count.to_be_bytes());
    Some(probe)
}

/// What was found in the bytes received after a request to `unit` with
/// function `function`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// The reply's PDU, and how many bytes before it were skipped (noise,
    /// a late reply to another request).
    Reply {
        /// The PDU (function code and data).
        pdu: Vec<u8>,
        /// Bytes skipped before it.
        skipped: usize,
        /// Frames with a valid CRC but from another unit, skipped.
        strays: usize,
        /// Candidate frames whose CRC failed, skipped.
        bad_crc: usize,
    },
    /// Not yet (the deadline decides).
    Incomplete,
    /// Not yet, but a whole frame for this request came with a bad CRC:
    /// unless a valid one follows at once, the reply is corrupt.
    Corrupt,
}

/// Looks for the reply from `unit` to the request `request` (a PDU) in
/// `buf`. A reply is a frame starting with the unit and the function (or
/// its exception), of the length the request implies, whose CRC checks;
/// anything before it (noise, a late frame for someone else) is skipped
/// and counted. A frame with a valid CRC from another unit, or from this
/// unit but of another length (a late reply to an earlier request), is a
/// stray, never taken for the answer.
pub fn find_reply(buf: &[u8], unit: u8, request: &[u8]) -> Found {
    let function = request.first().copied().unwrap_or(0);
    let expect = expected_len(request);
    let mut skipped = 0;
    let mut strays = 0;
    let mut bad_crc = 0;
    let mut at = 0;
    let incomplete = |bad_crc: usize| {
        if bad_crc > 0 {
            Found::Corrupt
        } else {
            Found::Incomplete
        }
    };
    while at < buf.len() {
        let rest = &buf[at..];
        let Some(len) = reply_len(rest) else {
            if rest.len() < 3 {
                return incomplete(bad_crc);
            }
            // An unknown function: not a frame start.
            at += 1;
            skipped += 1;
            continue;
        };
        if rest.len() < len {
            // Could be our reply, still arriving; but if it cannot be ours
            // (wrong unit or function), it is noise or a stray: look on.
            if rest[0] == unit && (rest[1] & 0x7F) == function {
                return incomplete(bad_crc);
            }
            at += 1;
            skipped += 1;
            continue;
        }
        let candidate = &rest[..len];
        let crc = u16::from_le_bytes([candidate[len - 2], candidate[len - 1]]);
        if crc16(&candidate[..len - 2]) != crc {
            if rest[0] == unit && (rest[1] & 0x7F) == function {
                bad_crc += 1;
            }
            at += 1;
            skipped += 1;
            continue;
        }
        let wrong_length = rest[1] & 0x80 == 0 && expect.is_some_and(|e| e != len);
        if rest[0] != unit || (rest[1] & 0x7F) != function || wrong_length {
            strays += 1;
            at += len;
            skipped += len;
            continue;
        }
        return Found::Reply {
            pdu: candidate[1..len - 2].to_vec(),
            skipped,
            strays,
            bad_crc,
        };
    }
    incomplete(bad_crc)
}

/// The silence that ends a frame at `baud` bits per second, 11 bits a
/// character: 3.5 characters, but a fixed 1.75 ms above 19,200 baud
/// (2.5.1.1), as the spec recommends for fast lines.
pub fn t35(baud: u32) -> std::time::Duration {
    if baud > 19_200 {
        std::time::Duration::from_micros(1750)
    } else {
        // 3.5 characters of 11 bits: 38.5 bit times.
        std::time::Duration::from_nanos(38_500_000_000 / u64::from(baud.max(1)))
    }
}

/// How long `bytes` take on the line at `baud` (11 bits a character).
pub fn on_the_wire(bytes: usize, baud: u32) -> std::time::Duration {
    std::time::Duration::from_nanos(bytes as u64 * 11 * 1_000_000_000 / u64::from(baud.max(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_matches_the_specification_and_the_usual_vectors() {
        // Modbus over Serial Line v1.02, 6.2.2: address 02, function 07
        // gives CRC 0x1241, sent low byte first: 41 12.
        assert_eq!(crc16(&[0x02, 0x07]), 0x1241);
        assert_eq!(frame(0x02, &[0x07]), [0x02, 0x07, 0x41, 0x12]);
        // Read one holding register at 0 from unit 1: 01 03 00 00 00 01 84 0A.
        assert_eq!(
            frame(1, &[0x03, 0x00, 0x00, 0x00, 0x01]),
            [0x01, 0x03, 0x00, 0x00, 0x00, 0x01, 0x84, 0x0A]
        );
        // The CRC catalogue's check value for CRC-16/MODBUS.
        assert_eq!(crc16(b"123456789"), 0x4B37);
    }

    #[test]
    fn reply_lengths_come_from_the_function_code() {
        assert_eq!(reply_len(&[1]), None);
        assert_eq!(reply_len(&[1, 3]), None);
        assert_eq!(reply_len(&[1, 3, 4]), Some(9));
        assert_eq!(reply_len(&[1, 0x83]), Some(5));
        assert_eq!(reply_len(&[1, 6]), Some(8));
        assert_eq!(reply_len(&[1, 16]), Some(8));
        assert_eq!(reply_len(&[1, 0x2B, 0]), None);
    }

    #[test]
    fn the_reply_is_found_behind_noise_and_strays_and_a_bad_crc_never_is() {
        let reply = frame(7, &[3, 2, 0x12, 0x34]);
        let read = [3, 0, 0, 0, 1];
        let Found::Reply { pdu, skipped, .. } = find_reply(&reply, 7, &read) else {
            panic!()
        };
        assert_eq!((pdu.as_slice(), skipped), (&[3u8, 2, 0x12, 0x34][..], 0));
        // Noise before it, and a late reply from unit 5 before that.
        let mut buf = frame(5, &[3, 2, 0xAA, 0xBB]);
        buf.extend_from_slice(&[0x00, 0xFF, 0x07]);
        buf.extend_from_slice(&reply);
        match find_reply(&buf, 7, &read) {
            Found::Reply {
                pdu,
                skipped,
                strays,
                ..
            } => {
                assert_eq!(pdu, [3, 2, 0x12, 0x34]);
                assert_eq!(skipped, 10);
                assert_eq!(strays, 1);
            }
            other => panic!("{other:?}"),
        }
        // A corrupted CRC: never a reply.
        let mut bad = reply.clone();
        *bad.last_mut().unwrap() ^= 0xFF;
        assert_eq!(find_reply(&bad, 7, &read), Found::Corrupt);
        // Truncated: not yet.
        assert_eq!(find_reply(&reply[..5], 7, &read), Found::Incomplete);
        // An exception reply.
        let exc = frame(7, &[0x83, 2]);
        assert!(matches!(find_reply(&exc, 7, &read), Found::Reply { pdu, .. } if pdu == [0x83, 2]));
        // The same frame from unit 8 is a stray, not the answer.
        assert_eq!(
            find_reply(&frame(8, &[3, 2, 0, 1]), 7, &read),
            Found::Incomplete
        );
    }

    #[test]
    fn a_late_reply_of_another_length_is_a_stray_and_the_probe_differs() {
        // A late reply to a two-register read, then this one-register
        // read's own reply.
        let mut buf = frame(7, &[3, 4, 0, 1, 0, 2]);
        buf.extend_from_slice(&frame(7, &[3, 2, 0x12, 0x34]));
        match find_reply(&buf, 7, &[3, 0, 16, 0, 1]) {
            Found::Reply { pdu, strays, .. } => {
                assert_eq!((pdu, strays), (vec![3, 2, 0x12, 0x34], 1));
            }
            other => panic!("{other:?}"),
        }
        // Alone, it is no reply to this read.
        assert_eq!(
            find_reply(&frame(7, &[3, 4, 0, 1, 0, 2]), 7, &[3, 0, 16, 0, 1]),
            Found::Incomplete
        );
        assert_eq!(expected_len(&[1, 0, 0, 0, 9]), Some(7));
        assert_eq!(expected_len(&[3, 0, 0, 0, 125]), Some(255));
        assert_eq!(expected_len(&[16, 0, 0, 0, 2, 4, 0, 0, 0, 0]), Some(8));
        // The probe reads the same address with another count.
        assert_eq!(probe_for(&[3, 0, 16, 0, 1]), Some(vec![3, 0, 16, 0, 2]));
        assert_eq!(probe_for(&[4, 0, 16, 0, 9]), Some(vec![4, 0, 16, 0, 1]));
        assert_eq!(
            probe_for(&[3, 0xFF, 0xFF, 0, 1]),
            Some(vec![3, 0xFF, 0xFE, 0, 2])
        );
        assert_eq!(probe_for(&[6, 0, 1, 0, 1]), None);
    }

    #[test]
    fn silence_between_frames() {
        assert_eq!(t35(9600).as_micros(), 4010);
        assert_eq!(t35(19_200).as_micros(), 2005);
        assert_eq!(t35(38_400).as_micros(), 1750);
        assert_eq!(on_the_wire(8, 9600).as_micros(), 9166);
    }
}
