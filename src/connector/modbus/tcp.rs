//! Modbus TCP: the MBAP header (`codec::Frame`) on a TCP connection. One
//! request at a time; every reply's transaction id is checked, and after a
//! timeout or a malformed frame the connection is dropped, so a late reply
//! can never answer the next request.

use super::codec::Frame;
use super::transport::{Transport, io_error, left};
use crate::connector::ConnectorError;
use crate::model::Status;
use std::io;
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// MBAP over TCP.
pub struct MbapTcp {
    host: String,
    port: u16,
    timeout: Duration,
    stream: Option<TcpStream>,
    tid: u16,
    strays: u64,
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

/// The socket with one deadline for a whole exchange: every read and write
/// gets only the time left, so a reply dribbled a byte at a time cannot
/// stretch the exchange past its timeout.
pub struct Deadline<'a> {
    /// The socket.
    pub stream: &'a mut TcpStream,
    /// When the exchange must be over.
    pub deadline: Instant,
}

impl io::Read for Deadline<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = left(self.deadline)?;
        self.stream.set_read_timeout(Some(left))?;
        self.stream.read(buf)
    }
}

impl io::Write for Deadline<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let left = left(self.deadline)?;
        self.stream.set_write_timeout(Some(left))?;
        self.stream.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.stream.flush()
    }
}

impl Transport for MbapTcp {
    fn open(&mut self) -> Result<(), ConnectorError> {
        self.close();
        self.stream = Some(connect(&self.host, self.port, self.timeout)?);
        Ok(())
    }

    fn is_open(&self) -> bool {
        self.stream.is_some()
    }

    fn close(&mut self) {
        if let Some(s) = self.stream.take() {
            let _ = s.shutdown(std::net::Shutdown::Both);
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
        let stream = self
            .stream
            .as_mut()
            .ok_or_else(|| ConnectorError::link(Status::NOT_CONNECTED, "not connected"))?;
        self.tid = self.tid.wrapping_add(1);
        let tid = self.tid;
        let mut link = Deadline { stream, deadline };
        Frame {
            tid,
            unit,
            pdu: pdu.to_vec(),
        }
        .write_to(&mut link)
        .map_err(|e| io_error("send", &e))?;
        let mut strays = 0;
        loop {
            let frame = Frame::read_from(&mut link).map_err(|e| match e.kind() {
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
