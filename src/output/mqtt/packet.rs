//! MQTT 3.1.1 packets (OASIS standard, 2014), the nine RTDS uses: CONNECT
//! with a Will, CONNACK, PUBLISH at QoS 0 and 1, PUBACK, SUBSCRIBE, SUBACK,
//! PINGREQ, PINGRESP and DISCONNECT. Pure functions on bytes, tested
//! without a socket; the session (`session.rs`) drives them over TCP or TLS.
//!
//! Written here rather than taken from a crate: the maintained sans-I/O
//! codec (`mqtt-protocol-core`) carries MQTT 5, broker roles and a packet
//! store (1.4 MB of source, serde_json, strum, derive_builder, indexmap,
//! hashbrown), and `mqttbytes` is unmaintained since 2021; these nine
//! packets of a frozen standard are under 400 lines, and a gateway's flash
//! is small. Mosquitto and paho (the tests' broker and host) are the
//! independent checks.

use std::io::{self, Read};

/// The largest packet RTDS accepts from the broker (a command); larger
/// ones are refused rather than buffered.
pub const MAX_INCOMING: usize = 1 << 20;

/// A Will: what the broker publishes if RTDS vanishes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Will {
    /// Topic.
    pub topic: String,
    /// Payload.
    pub payload: Vec<u8>,
    /// 0 or 1.
    pub qos: u8,
    /// Retained.
    pub retain: bool,
}

/// CONNECT's contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    /// Client identifier.
    pub client_id: String,
    /// Start without the broker's stored session (Sparkplug requires it).
    pub clean_session: bool,
    /// Seconds; 0 turns keep-alive off.
    pub keep_alive: u16,
    /// The Will.
    pub will: Option<Will>,
    /// User name.
    pub username: Option<String>,
    /// Password.
    pub password: Option<String>,
}

/// A PUBLISH.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    /// Topic.
    pub topic: String,
    /// Payload.
    pub payload: Vec<u8>,
    /// 0 or 1.
    pub qos: u8,
    /// Retained.
    pub retain: bool,
    /// A resend of a QoS 1 message.
    pub dup: bool,
    /// Packet identifier (QoS 1 only).
    pub pid: u16,
}

/// What the broker sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// CONNACK: session present, return code (0 accepted).
    ConnAck {
        /// The broker kept a session.
        session_present: bool,
        /// 0 accepted, 1-5 refused (see [`connack_reason`]).
        code: u8,
    },
    /// A message on a subscribed topic.
    Publish(Publish),
    /// PUBACK for packet id.
    PubAck(u16),
    /// SUBACK: packet id and a return code per topic (0x80 refused).
    SubAck(u16, Vec<u8>),
    /// PINGRESP.
    PingResp,
}

/// CONNACK return codes in words (3.2.2.3).
pub fn connack_reason(code: u8) -> &'static str {
    match code {
        0 => "accepted",
        1 => "refused: the broker does not take MQTT 3.1.1",
        2 => "refused: the client identifier is not allowed",
        3 => "refused: the broker is unavailable",
        4 => "refused: bad user name or password",
        5 => "refused: not authorized",
        _ => "refused with an unknown code",
    }
}

fn remaining_length(out: &mut Vec<u8>, mut n: usize) {
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            break;
        }
    }
}

fn string(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s);
}

fn packet(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 5);
    out.push(kind);
    remaining_length(&mut out, body.len());
    out.extend_from_slice(body);
    out
}

/// Strings in MQTT are at most 65,535 bytes and never hold NUL (1.5.3).
pub fn check_string(what: &str, s: &str) -> Result<(), String> {
    if s.len() > 65_535 {
        return Err(format!("{what} is longer than MQTT's 65,535 bytes"));
    }
    if s.contains('\0') {
        return Err(format!("{what} holds a NUL character"));
    }
    Ok(())
}

/// A topic RTDS publishes to: no wildcards (4.7.1), not empty.
pub fn check_topic(topic: &str) -> Result<(), String> {
    check_string("the topic", topic)?;
    if topic.is_empty() || topic.contains(['+', '#']) {
        return Err(format!(
            "topic `{topic}` is empty or holds a wildcard (+ or #)"
        ));
    }
    Ok(())
}

impl Connect {
    /// The packet's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(64);
        string(&mut b, b"MQTT");
        b.push(4);
        let mut flags = 0u8;
        if self.clean_session {
            flags |= 0x02;
        }
        if let Some(w) = &self.will {
            flags |= 0x04 | (w.qos.min(1) << 3);
            if w.retain {
                flags |= 0x20;
            }
        }
        if self.password.is_some() {
            flags |= 0x40;
        }
        if self.username.is_some() {
            flags |= 0x80;
        }
        b.push(flags);
        b.extend_from_slice(&self.keep_alive.to_be_bytes());
        string(&mut b, self.client_id.as_bytes());
        if let Some(w) = &self.will {
            string(&mut b, w.topic.as_bytes());
            string(&mut b, &w.payload);
        }
        if let Some(u) = &self.username {
            string(&mut b, u.as_bytes());
        }
        if let Some(p) = &self.password {
            string(&mut b, p.as_bytes());
        }
        packet(0x10, &b)
    }
}

impl Publish {
    /// The packet's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(self.topic.len() + self.payload.len() + 4);
        string(&mut b, self.topic.as_bytes());
        if self.qos > 0 {
            b.extend_from_slice(&self.pid.to_be_bytes());
        }
        b.extend_from_slice(&self.payload);
        let kind = 0x30
            | (u8::from(self.dup && self.qos > 0) << 3)
            | (self.qos.min(1) << 1)
            | u8::from(self.retain);
        packet(kind, &b)
    }
}

/// SUBSCRIBE to `topics` (filter, QoS) with packet id `pid`.
pub fn subscribe(pid: u16, topics: &[(String, u8)]) -> Vec<u8> {
    let mut b = pid.to_be_bytes().to_vec();
    for (t, q) in topics {
        string(&mut b, t.as_bytes());
        b.push(*q);
    }
    packet(0x82, &b)
}

/// PUBACK for `pid`.
pub fn puback(pid: u16) -> Vec<u8> {
    packet(0x40, &pid.to_be_bytes())
}

/// PINGREQ.
pub const PINGREQ: [u8; 2] = [0xC0, 0x00];
/// DISCONNECT.
pub const DISCONNECT: [u8; 2] = [0xE0, 0x00];

/// Reads one packet from `r`: blocks until it is whole (the caller bounds
/// the wait with the socket's timeout). Packets RTDS never asked for and
/// malformed ones are errors: the connection is then dropped.
pub fn read(r: &mut impl Read) -> io::Result<Incoming> {
    let mut head = [0u8; 1];
    r.read_exact(&mut head)?;
    let mut len = 0usize;
    let mut mult = 1usize;
    for i in 0..4 {
        let mut b = [0u8; 1];
        r.read_exact(&mut b)?;
        len += usize::from(b[0] & 0x7F) * mult;
        if b[0] & 0x80 == 0 {
            break;
        }
        if i == 3 {
            return Err(bad("a remaining length longer than 4 bytes"));
        }
        mult *= 128;
    }
    if len > MAX_INCOMING {
        return Err(bad(&format!(
            "a packet of {len} bytes (RTDS takes at most {MAX_INCOMING})"
        )));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    decode(head[0], &body)
}

/// Takes the first whole packet out of `buf`, if there is one: the packet
/// and the bytes it took. Bytes of a packet still arriving stay.
pub fn split(buf: &[u8]) -> io::Result<Option<(Incoming, usize)>> {
    let Some(&head) = buf.first() else {
        return Ok(None);
    };
    let mut len = 0usize;
    let mut mult = 1usize;
    let mut at = 1;
    loop {
        let Some(&b) = buf.get(at) else {
            return Ok(None);
        };
        at += 1;
        len += usize::from(b & 0x7F) * mult;
        if b & 0x80 == 0 {
            break;
        }
        if at == 5 {
            return Err(bad("a remaining length longer than 4 bytes"));
        }
        mult *= 128;
    }
    if len > MAX_INCOMING {
        return Err(bad(&format!(
            "a packet of {len} bytes (RTDS takes at most {MAX_INCOMING})"
        )));
    }
    if buf.len() < at + len {
        return Ok(None);
    }
    Ok(Some((decode(head, &buf[at..at + len])?, at + len)))
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("broker sent {what}"))
}

fn u16_at(b: &[u8], at: usize) -> io::Result<u16> {
    b.get(at..at + 2)
        .map(|x| u16::from_be_bytes([x[0], x[1]]))
        .ok_or_else(|| bad("a packet cut short"))
}

/// Decodes a packet from its first byte and its body.
pub fn decode(head: u8, body: &[u8]) -> io::Result<Incoming> {
    match head >> 4 {
        2 => {
            if body.len() != 2 {
                return Err(bad("a CONNACK of the wrong size"));
            }
            Ok(Incoming::ConnAck {
                session_present: body[0] & 1 == 1,
                code: body[1],
            })
        }
        3 => {
            let qos = (head >> 1) & 3;
            if qos > 2 {
                return Err(bad("a PUBLISH with QoS 3"));
            }
            let tlen = usize::from(u16_at(body, 0)?);
            let topic = body
                .get(2..2 + tlen)
                .ok_or_else(|| bad("a PUBLISH topic cut short"))?;
            let topic =
                String::from_utf8(topic.to_vec()).map_err(|_| bad("a topic that is not UTF-8"))?;
            let mut at = 2 + tlen;
            let pid = if qos > 0 {
                let p = u16_at(body, at)?;
                at += 2;
                p
            } else {
                0
            };
            Ok(Incoming::Publish(Publish {
                topic,
                payload: body[at..].to_vec(),
                qos,
                retain: head & 1 == 1,
                dup: head & 8 == 8,
                pid,
            }))
        }
        4 if body.len() == 2 => Ok(Incoming::PubAck(u16_at(body, 0)?)),
        9 if body.len() >= 3 => Ok(Incoming::SubAck(u16_at(body, 0)?, body[2..].to_vec())),
        13 if body.is_empty() => Ok(Incoming::PingResp),
        t => Err(bad(&format!("packet type {t} RTDS does not expect"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_with_a_will_and_a_login_byte_for_byte() {
        let c = Connect {
            client_id: "gw1".into(),
            clean_session: true,
            keep_alive: 30,
            will: Some(Will {
                topic: "a/b".into(),
                payload: vec![0xAA],
                qos: 1,
                retain: false,
            }),
            username: Some("u".into()),
            password: Some("p".into()),
        };
        // 3.1.2: "MQTT", level 4, flags user|pass|will QoS 1|will|clean
        // = 0xCE, keep-alive 30, then id, will topic, will message, user,
        // password, each with its 2-byte length.
        assert_eq!(
            c.encode(),
            [
                0x10, 29, 0, 4, b'M', b'Q', b'T', b'T', 4, 0xCE, 0, 30, 0, 3, b'g', b'w', b'1', 0,
                3, b'a', b'/', b'b', 0, 1, 0xAA, 0, 1, b'u', 0, 1, b'p'
            ]
        );
    }

    #[test]
    fn publish_and_the_remaining_length_rule() {
        let p = Publish {
            topic: "t".into(),
            payload: vec![1, 2],
            qos: 1,
            retain: true,
            dup: true,
            pid: 0x0102,
        };
        assert_eq!(p.encode(), [0x3B, 7, 0, 1, b't', 1, 2, 1, 2]);
        // QoS 0: no packet id, DUP never set.
        let p0 = Publish {
            qos: 0,
            ..p.clone()
        };
        assert_eq!(p0.encode(), [0x31, 5, 0, 1, b't', 1, 2]);
        // 2.2.3's examples: 127 in one byte, 128 in two, 16,383 in two,
        // 16,384 in three.
        for (n, want) in [
            (127usize, vec![0x7F]),
            (128, vec![0x80, 0x01]),
            (16_383, vec![0xFF, 0x7F]),
            (16_384, vec![0x80, 0x80, 0x01]),
        ] {
            let mut out = Vec::new();
            remaining_length(&mut out, n);
            assert_eq!(out, want, "{n}");
        }
        // Reads back.
        let big = Publish {
            topic: "spBv1.0/g/DCMD/n/d".into(),
            payload: vec![7; 300],
            ..p
        };
        let bytes = big.encode();
        assert_eq!(read(&mut &bytes[..]).unwrap(), Incoming::Publish(big));
    }

    #[test]
    fn what_the_broker_sends_and_garbage() {
        let read_all = |b: &[u8]| read(&mut &b[..]);
        assert_eq!(
            read_all(&[0x20, 2, 0, 0]).unwrap(),
            Incoming::ConnAck {
                session_present: false,
                code: 0
            }
        );
        assert_eq!(read_all(&[0x40, 2, 0, 9]).unwrap(), Incoming::PubAck(9));
        assert_eq!(
            read_all(&[0x90, 4, 0, 5, 1, 0x80]).unwrap(),
            Incoming::SubAck(5, vec![1, 0x80])
        );
        assert_eq!(read_all(&[0xD0, 0]).unwrap(), Incoming::PingResp);
        for garbage in [
            &[0x20, 3, 0, 0, 0][..],
            &[0xF0, 0],
            &[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01],
            &[0x30, 3, 0, 5, b'x'],
            &[0x36, 2, 0, 0],
        ] {
            assert!(read_all(garbage).is_err(), "{garbage:?}");
        }
        // Split out of a stream, a packet at a time, a partial one kept.
        let mut stream = vec![0x40, 2, 0, 9, 0xD0, 0, 0x90, 4, 0, 5];
        assert_eq!(split(&stream).unwrap(), Some((Incoming::PubAck(9), 4)));
        stream.drain(..4);
        assert_eq!(split(&stream).unwrap(), Some((Incoming::PingResp, 2)));
        stream.drain(..2);
        assert_eq!(split(&stream).unwrap(), None);
        assert!(split(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]).is_err());
        // Longer than RTDS takes.
        assert!(read_all(&[0x30, 0x80, 0x80, 0x80, 0x01]).is_err());
        assert!(check_topic("a/+/b").is_err() && check_topic("").is_err());
        assert!(check_topic("spBv1.0/G/NDATA/n").is_ok());
    }
}
