//! The seam between Modbus and its wires: a [`Transport`] carries one
//! request PDU to a unit and brings back its reply PDU within a deadline.
//! Planning, exception isolation, writes and the bit read-modify-write
//! (`client.rs`) never know which wire they run on; each transport is one
//! module: MBAP over TCP (`tcp.rs`), RTU over a serial line
//! (`serial.rs`), RTU over TCP to a serial-to-Ethernet converter
//! (`rtu_tcp.rs`), the last two sharing RTU's exchange (`line.rs`).

use crate::connector::ConnectorError;
use crate::model::Status;
use std::io;
use std::time::Instant;

/// A wire Modbus requests travel on.
pub trait Transport: Send + 'static {
    /// Opens it (connects, opens the port).
    fn open(&mut self) -> Result<(), ConnectorError>;
    /// Whether it is open.
    fn is_open(&self) -> bool;
    /// Closes it (idempotent).
    fn close(&mut self);
    /// Sends `pdu` to `unit` and returns the reply's PDU, all before
    /// `deadline`. The reply is the one answering this request: a frame
    /// for another transaction or unit is skipped (and counted), never
    /// returned.
    fn exchange(
        &mut self,
        unit: u8,
        pdu: &[u8],
        deadline: Instant,
    ) -> Result<Vec<u8>, ConnectorError>;
    /// Sends `pdu` to every device (unit 0, RTU's broadcast) and waits the
    /// turnaround delay the devices need to act on it; no reply comes.
    fn broadcast(&mut self, pdu: &[u8], deadline: Instant) -> Result<(), ConnectorError> {
        let _ = (pdu, deadline);
        Err(ConnectorError::refused(
            Status::BAD_CONFIG,
            "this transport has no broadcast",
        ))
    }
    /// Frames refused since start: bad CRC, another unit's or
    /// transaction's reply, bytes that were no frame.
    fn bad_frames(&self) -> u64 {
        0
    }
}

/// An I/O error of a link as a connector error: a timeout or a malformed
/// reply leaves the link in doubt (the late reply could answer the next
/// request), everything else means it is gone; both reconnect.
pub fn io_error(what: &str, e: &io::Error) -> ConnectorError {
    let status = match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Status::TIMEOUT,
        io::ErrorKind::InvalidData => Status::PROTOCOL_ERROR,
        _ => Status::NOT_CONNECTED,
    };
    let message = match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
            format!("{what}: reply too slow (no complete reply within the timeout)")
        }
        io::ErrorKind::UnexpectedEof => format!("{what}: the device closed the connection"),
        _ => format!("{what}: {e}"),
    };
    ConnectorError::link(status, message)
}

/// The time left before `deadline`, or a timeout error when none is.
pub fn left(deadline: Instant) -> io::Result<std::time::Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        Err(io::Error::new(io::ErrorKind::TimedOut, "deadline passed"))
    } else {
        Ok(left)
    }
}
