//! RTU over TCP: the RTU frames of a serial line, unchanged, on a TCP
//! connection to a serial-to-Ethernet converter (Moxa NPort, USR, Waveshare
//! in "TCP server" mode). The converter keeps the line's timing; RTDS
//! frames, checks and resynchronises as on a serial port (`line.rs`).

use super::line::Line;
use super::tcp::connect;
use super::transport::left;
use crate::connector::ConnectorError;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// A TCP connection carrying RTU frames.
pub struct TcpLine {
    host: String,
    port: u16,
    timeout: Duration,
    stream: Option<TcpStream>,
}

impl TcpLine {
    /// A line to `host:port`, not yet connected.
    pub fn new(host: &str, port: u16, timeout: Duration) -> TcpLine {
        TcpLine {
            host: host.to_string(),
            port,
            timeout,
            stream: None,
        }
    }

    fn stream(&mut self) -> io::Result<&mut TcpStream> {
        self.stream
            .as_mut()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotConnected, "not connected"))
    }
}

impl Line for TcpLine {
    fn open(&mut self) -> Result<(), ConnectorError> {
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

    fn send(&mut self, bytes: &[u8], deadline: Instant) -> io::Result<()> {
        let left = left(deadline)?;
        let s = self.stream()?;
        s.set_write_timeout(Some(left))?;
        s.write_all(bytes)
    }

    fn recv(&mut self, buf: &mut [u8], deadline: Instant) -> io::Result<usize> {
        let left = left(deadline)?;
        let s = self.stream()?;
        s.set_read_timeout(Some(left))?;
        s.read(buf)
    }

    fn discard(&mut self) -> io::Result<usize> {
        let s = self.stream()?;
        s.set_nonblocking(true)?;
        let mut dropped = 0;
        let mut buf = [0u8; 256];
        let result = loop {
            match s.read(&mut buf) {
                Ok(0) => {
                    break Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the converter closed the connection",
                    ));
                }
                Ok(n) => dropped += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break Ok(dropped),
                Err(e) => break Err(e),
            }
        };
        s.set_nonblocking(false)?;
        result
    }
}
