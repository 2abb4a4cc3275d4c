//! Modbus TCP: the MBAP header (`codec::Frame`) on a TCP connection. One
//! request at a time; every reply's transaction id is checked, and after a
//! timeout or a malformed frame the connection is dropped, so a late reply
//! can never answer the next request.

use super::codec::{self, Frame, MAX_PDU, MBAP_LEN};
use super::transport::{Transport, io_error, left};
use crate::connector::ConnectorError;
use crate::model::Status;
use std::io::{self, Write as _};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// MBAP over TCP.
pub struct MbapTcp {
    host: String,
    port: u16,
    timeout: Duration,
    stream: Option<Socket>,
    tid: u16,
    strays: u64,
    /// Bytes received and not yet taken as a frame: a reply is read in one
    /// call when it has arrived whole (header and PDU together).
    received: Received,
}

/// Received bytes: room for a whole frame and the start of the next.
struct Received {
    buf: [u8; 2 * (MBAP_LEN + MAX_PDU)],
    len: usize,
}

impl Received {
    /// The next frame: from what is here, reading more only while a frame
    /// is incomplete.
    fn frame(&mut self, link: &mut impl io::Read) -> io::Result<Frame> {
        loop {
            if self.len >= MBAP_LEN {
                let head: [u8; MBAP_LEN] = self.buf[..MBAP_LEN].try_into().unwrap_or_default();
                let (tid, unit, n) = Frame::head(&head)?;
                let end = MBAP_LEN + n;
                if self.len >= end {
                    let pdu = self.buf[MBAP_LEN..end].to_vec();
                    self.buf.copy_within(end..self.len, 0);
                    self.len -= end;
                    return Ok(Frame { tid, unit, pdu });
                }
            }
            let got = link.read(&mut self.buf[self.len..])?;
            if got == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed by the device",
                ));
            }
            self.len += got;
        }
    }
}

/// A connected socket and the timeouts it has now: setting one is a
/// system call, so it is set only when the time left is shorter (see
/// [`Deadline`]).
struct Socket {
    stream: TcpStream,
    read_timeout: Duration,
    write_timeout: Duration,
}

impl MbapTcp {
    /// A transport to `host:port`, not yet connected; `timeout` bounds the
    /// connect.
    pub fn new(host: &str, port: u16, timeout: Duration) -> MbapTcp {
        MbapTcp {
            host: host.to_string(),
            port,
            timeout,
            stream: None,
            tid: 0,
            strays: 0,
            received: Received {
                buf: [0; 2 * (MBAP_LEN + MAX_PDU)],
                len: 0,
            },
        }
    }
}

/// Opens a TCP connection to `host:port` within `timeout`, without Nagle's
/// delay (a request is one small write).
pub fn connect(host: &str, port: u16, timeout: Duration) -> Result<TcpStream, ConnectorError> {
    let addr = (host, port)
        .to_socket_addrs()
        .map_err(|e| ConnectorError::link(Status::NOT_CONNECTED, format!("resolve {host}: {e}")))?
        .next()
        .ok_or_else(|| {
            ConnectorError::link(Status::NOT_CONNECTED, format!("{host} has no address"))
        })?;
    let stream = TcpStream::connect_timeout(&addr, timeout)
        .map_err(|e| io_error(&format!("connect {addr}"), &e))?;
    let setup = |st: &TcpStream| -> io::Result<()> {
        st.set_read_timeout(Some(timeout))?;
        st.set_write_timeout(Some(timeout))?;
        st.set_nodelay(true)
    };
    setup(&stream).map_err(|e| io_error("socket setup", &e))?;
    Ok(stream)
}

/// The socket with one deadline for a whole exchange: no read or write
/// may wait past it, so a reply dribbled a byte at a time cannot stretch
/// the exchange past its timeout. A socket timeout is set only when the
/// one in force would allow more than [`SLACK`] beyond the deadline (every
/// exchange starts with about the same time left, so usually never): a
/// wait ends at the deadline or within `SLACK` of it; a wait that ends
/// early (a timeout set by an earlier, shorter deadline) is resumed with
/// the time left.
struct Deadline<'a> {
    socket: &'a mut Socket,
    deadline: Instant,
}

/// How far past its deadline a wait may end, so that the socket's timeout
/// need not be set before every read.
const SLACK: Duration = Duration::from_millis(10);

fn timed_out(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
    )
}

impl io::Read for Deadline<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let left = left(self.deadline)?;
            let s = &mut *self.socket;
            if s.read_timeout > left + SLACK {
                s.stream.set_read_timeout(Some(left))?;
                s.read_timeout = left;
            }
            match io::Read::read(&mut s.stream, buf) {
                Err(e) if timed_out(&e) && Instant::now() < self.deadline => {
                    // Ended early: wait again, at most for what is left.
                    let rest = super::transport::left(self.deadline)?;
                    s.stream.set_read_timeout(Some(rest))?;
                    s.read_timeout = rest;
                }
                other => return other,
            }
        }
    }
}

impl io::Write for Deadline<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        loop {
            let left = left(self.deadline)?;
            let s = &mut *self.socket;
            if s.write_timeout > left + SLACK {
                s.stream.set_write_timeout(Some(left))?;
                s.write_timeout = left;
            }
            match io::Write::write(&mut s.stream, buf) {
                Err(e) if timed_out(&e) && Instant::now() < self.deadline => {
                    let rest = super::transport::left(self.deadline)?;
                    s.stream.set_write_timeout(Some(rest))?;
                    s.write_timeout = rest;
                }
                other => return other,
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        io::Write::flush(&mut self.socket.stream)
    }
}

impl Transport for MbapTcp {
    fn open(&mut self) -> Result<(), ConnectorError> {
        self.close();
        self.stream = Some(Socket {
            stream: connect(&self.host, self.port, self.timeout)?,
            read_timeout: self.timeout,
            write_timeout: self.timeout,
        });
        Ok(())
    }

    fn is_open(&self) -> bool {
        self.stream.is_some()
    }

    fn close(&mut self) {
        // Nothing received on a connection answers anything on the next.
        self.received.len = 0;
        if let Some(s) = self.stream.take() {
            let _ = s.stream.shutdown(std::net::Shutdown::Both);
        }
    }

    /// One deadline for the whole exchange: sending, any stray frames for
    /// other transactions (skipped), and the complete reply, however slowly
    /// it trickles in.
    fn exchange(
        &mut self,
        unit: u8,
        pdu: &[u8],
        deadline: Instant,
    ) -> Result<Vec<u8>, ConnectorError> {
        let socket = self
            .stream
            .as_mut()
            .ok_or_else(|| ConnectorError::link(Status::NOT_CONNECTED, "not connected"))?;
        self.tid = self.tid.wrapping_add(1);
        let tid = self.tid;
        let mut link = Deadline { socket, deadline };
        // Header and PDU in one write (a device never sees a split frame
        // from us), built on the stack.
        if pdu.len() > MAX_PDU {
            return Err(ConnectorError::refused(
                Status::BAD_CONFIG,
                format!(
                    "a request of {} bytes exceeds Modbus's {MAX_PDU}",
                    pdu.len()
                ),
            ));
        }
        let mut frame = [0u8; MBAP_LEN + MAX_PDU];
        let n = codec::frame_into(tid, unit, pdu, &mut frame);
        link.write_all(&frame[..n])
            .map_err(|e| io_error("send", &e))?;
        let mut strays = 0;
        loop {
            let frame = self.received.frame(&mut link).map_err(|e| match e.kind() {
                io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock if strays > 0 => {
                    ConnectorError::link(
                        Status::TIMEOUT,
                        format!(
                            "reply too slow: no answer to transaction {tid} within the timeout, only {strays} replies for other transactions"
                        ),
                    )
                }
                _ => io_error("receive", &e),
            })?;
            if frame.tid != tid {
                // A reply for another transaction (some gateways duplicate
                // replies): skipped, within the same deadline.
                strays += 1;
                self.strays += 1;
                log::debug!(
                    "modbus: reply for another transaction ({}, waiting for {tid}) skipped",
                    frame.tid
                );
                continue;
            }
            if frame.unit != unit {
                return Err(ConnectorError::link(
                    Status::PROTOCOL_ERROR,
                    format!("reply from unit {}, asked unit {unit}", frame.unit),
                ));
            }
            return Ok(frame.pdu);
        }
    }

    fn bad_frames(&self) -> u64 {
        self.strays
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stream handing out its bytes in the chunk sizes given, cycling.
    struct Chunked<'a> {
        bytes: &'a [u8],
        sizes: &'a [usize],
        k: usize,
    }

    impl io::Read for Chunked<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.sizes[self.k % self.sizes.len()]
                .max(1)
                .min(buf.len())
                .min(self.bytes.len());
            self.k += 1;
            buf[..n].copy_from_slice(&self.bytes[..n]);
            self.bytes = &self.bytes[n..];
            Ok(n)
        }
    }

    /// However the bytes arrive (one at a time, frames glued together,
    /// split mid-header), the frames taken from them are exactly those
    /// `Frame::read_from` reads from the whole stream, and garbage is the
    /// same error: checked over pseudo-random streams of valid frames with
    /// bad headers mixed in.
    #[test]
    fn frames_are_the_same_however_the_bytes_arrive() {
        let mut rand = crate::testrand::XorShift(0x9e37_79b9_7f4a_7c15);
        let mut next = move || rand.next();
        for _ in 0..2_000 {
            let mut stream = Vec::new();
            for _ in 0..(next() % 5 + 1) {
                let len = (next() % MAX_PDU as u64 + 1) as usize;
                let frame = Frame {
                    tid: next() as u16,
                    unit: next() as u8,
                    pdu: (0..len).map(|_| next() as u8).collect(),
                };
                let mut bytes = frame.encode();
                if next() % 20 == 0 {
                    bytes[2] = 1; // protocol id ≠ 0
                }
                if next() % 20 == 0 {
                    bytes[4] = 0xff; // length beyond 254
                }
                stream.extend(bytes);
            }
            let sizes: Vec<usize> = (0..4).map(|_| (next() % 300) as usize).collect();
            let mut whole = &stream[..];
            let mut chunked = Chunked {
                bytes: &stream,
                sizes: &sizes,
                k: 0,
            };
            let mut received = Received {
                buf: [0; 2 * (MBAP_LEN + MAX_PDU)],
                len: 0,
            };
            loop {
                let want = Frame::read_from(&mut whole);
                let got = received.frame(&mut chunked);
                match (want, got) {
                    (Ok(w), Ok(g)) => assert_eq!((w.tid, w.unit, w.pdu), (g.tid, g.unit, g.pdu)),
                    (Err(w), Err(g)) => {
                        // The end of the stream, or the same bad header.
                        if w.kind() == io::ErrorKind::InvalidData {
                            assert_eq!(w.to_string(), g.to_string());
                        }
                        break;
                    }
                    (w, g) => panic!("read_from {w:?}, received {g:?} ({sizes:?})"),
                }
            }
        }
    }
}
