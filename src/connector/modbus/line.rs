//! Modbus RTU's exchange on a byte line (a serial port, or a TCP
//! connection to a serial-to-Ethernet converter): wait for the silence
//! that separates frames, drop what arrived unasked (noise, a reply that
//! came too late), send the frame, and take the reply out of what comes
//! back (`rtu::find_reply`). No transaction id protects RTU: the unit, the
//! function, the length and the CRC must all fit, and everything else is
//! refused and counted.
//!
//! A device that does not answer, or answers garbage, fails its own
//! request only: the line is fine for the other devices on it
//! (`Failure::Device`), and the next request waits for silence and
//! discards the late bytes first.

use super::rtu::{self, Found, MAX_FRAME};
use super::transport::{Transport, left};
use crate::connector::{ConnectorError, Failure};
use crate::model::Status;
use std::io;
use std::time::{Duration, Instant};

/// How long the line must stay quiet after a corrupt reply before it is
/// given up (rather than the whole timeout): longer than t3.5 at any
/// speed, and than a converter's forwarding delay.
const SETTLE: Duration = Duration::from_millis(30);

/// A byte line RTU frames travel on.
pub trait Line: Send + 'static {
    /// Opens it.
    fn open(&mut self) -> Result<(), ConnectorError>;
    /// Whether it is open.
    fn is_open(&self) -> bool;
    /// Closes it.
    fn close(&mut self);
    /// Writes `bytes`, all of them, before `deadline`; returns once they
    /// are on their way (a serial port: transmitted).
    fn send(&mut self, bytes: &[u8], deadline: Instant) -> io::Result<()>;
    /// Reads what has arrived into `buf`, waiting until `deadline` for at
    /// least one byte (`TimedOut` when none came; 0 when the line closed).
    fn recv(&mut self, buf: &mut [u8], deadline: Instant) -> io::Result<usize>;
    /// Drops what waits to be read; returns how many bytes.
    fn discard(&mut self) -> io::Result<usize>;
}

/// RTU framing on a line.
pub struct Rtu<L: Line> {
    line: L,
    /// The silence before a frame: t3.5 at the line's speed (none through
    /// a converter, which keeps its own), plus the configured extra gap.
    silence: Duration,
    /// How long the devices need after a broadcast before the next frame.
    broadcast_delay: Duration,
    /// When the line last carried a byte.
    quiet_since: Instant,
    bad_frames: u64,
    /// Units that left a request unanswered (a timeout, garbage): their
    /// reply may still come, during a later exchange, and RTU has no
    /// transaction id. A late reply of another length is refused by its
    /// length; one of the same shape (the same read at another address)
    /// could pass for the next read's. So the next read to such a unit is
    /// preceded by a probe of another shape (`rtu::probe_for`), taken
    /// only when the line then stays quiet: the unit and RTDS are in step
    /// again, and whatever was late has come and gone.
    suspect: [bool; 256],
}

impl<L: Line> Rtu<L> {
    /// RTU on `line`, leaving `silence` between frames.
    pub fn new(line: L, silence: Duration, broadcast_delay: Duration) -> Rtu<L> {
        Rtu {
            line,
            silence,
            broadcast_delay,
            quiet_since: Instant::now(),
            bad_frames: 0,
            suspect: [false; 256],
        }
    }

    /// After a reply found while the line is suspect: waits for the line
    /// to stay quiet a moment (until `deadline` at most). Bytes already
    /// behind the reply (`extra`) or arriving now are a second reply or
    /// noise: the exchange cannot say which reply is this request's, and
    /// is refused.
    fn quiet_after(&mut self, extra: usize, deadline: Instant) -> Result<(), usize> {
        let mut more = extra;
        let mut chunk = [0u8; MAX_FRAME];
        let until = deadline.min(Instant::now() + self.silence.max(SETTLE));
        while more == 0 {
            match self.line.recv(&mut chunk, until) {
                Ok(n) if n > 0 => {
                    more += n;
                    self.quiet_since = Instant::now();
                }
                _ => break,
            }
        }
        if more == 0 { Ok(()) } else { Err(more) }
    }

    /// Waits out the silence after the last byte, then drops what came
    /// unasked (a late reply must never answer this request); bytes that
    /// came meanwhile restart the silence, so a frame never follows noise
    /// closer than t3.5. A line that will not fall silent before
    /// `deadline` fails this request only.
    fn prepare(&mut self, deadline: Instant) -> Result<(), ConnectorError> {
        loop {
            let ready = self.quiet_since + self.silence;
            let now = Instant::now();
            if ready > deadline {
                return Err(device_error(
                    Status::TIMEOUT,
                    "the line did not fall silent before the timeout (noise, or another master?)"
                        .into(),
                ));
            }
            if ready > now {
                std::thread::sleep(ready - now);
            }
            let dropped = self
                .line
                .discard()
                .map_err(|e| link_error("discard input", &e))?;
            if dropped == 0 {
                return Ok(());
            }
            self.bad_frames += 1;
            self.quiet_since = Instant::now();
            log::debug!("modbus rtu: {dropped} bytes nobody asked for dropped before a request");
        }
    }

    /// One request and its reply. `probe`: the reply is taken only if the
    /// line stays quiet after it (see `suspect`), which then clears.
    fn exchange_once(
        &mut self,
        unit: u8,
        pdu: &[u8],
        deadline: Instant,
        probe: bool,
    ) -> Result<Vec<u8>, ConnectorError> {
        self.prepare(deadline)?;
        self.send(unit, pdu, deadline)?;
        let mut buf: Vec<u8> = Vec::with_capacity(64);
        let mut chunk = [0u8; MAX_FRAME];
        // After a frame for this request with a bad CRC, a valid one may
        // still follow at once (the bad one was noise that looked like a
        // start); once the line stays quiet, the reply was corrupt.
        let mut wait_until = deadline;
        loop {
            match self.line.recv(&mut chunk, wait_until) {
                Ok(0) => {
                    return Err(ConnectorError::link(
                        Status::NOT_CONNECTED,
                        "the line closed",
                    ));
                }
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    self.quiet_since = Instant::now();
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
                    ) =>
                {
                    self.quiet_since = Instant::now();
                    self.suspect[usize::from(unit)] = true;
                    if buf.is_empty() {
                        return Err(device_error(
                            Status::TIMEOUT,
                            format!("unit {unit} did not answer within the timeout"),
                        ));
                    }
                    // Something came, but no reply that checks: a bad CRC,
                    // a reply cut short, noise.
                    self.bad_frames += 1;
                    return Err(device_error(
                        Status::PROTOCOL_ERROR,
                        format!(
                            "unit {unit}: no valid reply within the timeout ({} bytes that are no reply to this request: a bad CRC, a frame cut short, noise)",
                            buf.len()
                        ),
                    ));
                }
                Err(e) => return Err(link_error("receive", &e)),
            }
            match rtu::find_reply(&buf, unit, pdu) {
                Found::Reply {
                    pdu,
                    skipped,
                    strays,
                    bad_crc,
                } => {
                    // Bytes right behind the reply (noise, a second
                    // frame) are refused too: read now, they will not be
                    // dropped before the next request.
                    let behind = buf.len() - (skipped + pdu.len() + 3);
                    let refused = strays
                        + bad_crc
                        + usize::from(skipped > 0 && strays == 0)
                        + usize::from(behind > 0 && !probe);
                    if refused > 0 {
                        self.bad_frames += refused as u64;
                        log::debug!(
                            "modbus rtu: unit {unit}: {skipped} bytes before its reply ({strays} frames of other units or requests, {bad_crc} with a bad CRC) and {behind} after it refused"
                        );
                    }
                    if probe {
                        if let Err(more) = self.quiet_after(behind, deadline) {
                            self.bad_frames += 1;
                            return Err(device_error(
                                Status::PROTOCOL_ERROR,
                                format!(
                                    "unit {unit}: {more} more bytes right after its reply: a late reply may be among them"
                                ),
                            ));
                        }
                        self.suspect[usize::from(unit)] = false;
                    }
                    return Ok(pdu);
                }
                Found::Incomplete if buf.len() > 4 * MAX_FRAME => {
                    self.bad_frames += 1;
                    self.suspect[usize::from(unit)] = true;
                    return Err(device_error(
                        Status::PROTOCOL_ERROR,
                        format!(
                            "unit {unit}: {} bytes without a valid reply (noise on the line?)",
                            buf.len()
                        ),
                    ));
                }
                Found::Corrupt => {
                    wait_until = deadline.min(Instant::now() + self.silence.max(SETTLE));
                }
                Found::Incomplete => wait_until = deadline,
            }
        }
    }

    fn send(&mut self, unit: u8, pdu: &[u8], deadline: Instant) -> Result<(), ConnectorError> {
        let frame = rtu::frame(unit, pdu);
        let sent = self.line.send(&frame, deadline);
        self.quiet_since = Instant::now();
        sent.map_err(|e| link_error("send", &e))
    }
}

/// An error of the line itself (the port, the connection): reopen it.
fn link_error(what: &str, e: &io::Error) -> ConnectorError {
    super::transport::io_error(what, e)
}

/// An error of one device's exchange; the line is fine.
fn device_error(status: Status, message: String) -> ConnectorError {
    ConnectorError {
        failure: Failure::Device,
        status,
        message,
    }
}

impl<L: Line> Transport for Rtu<L> {
    fn open(&mut self) -> Result<(), ConnectorError> {
        self.line.close();
        self.line.open()?;
        self.quiet_since = Instant::now();
        Ok(())
    }

    fn is_open(&self) -> bool {
        self.line.is_open()
    }

    fn close(&mut self) {
        self.line.close();
    }

    fn exchange(
        &mut self,
        unit: u8,
        pdu: &[u8],
        deadline: Instant,
    ) -> Result<Vec<u8>, ConnectorError> {
        if !self.line.is_open() {
            return Err(ConnectorError::link(Status::NOT_CONNECTED, "not connected"));
        }
        if self.suspect[usize::from(unit)]
            && let Some(probe) = rtu::probe_for(pdu)
        {
            // The probe's failure reads as the device's (the same cause:
            // one log line per outage, not one per kind of attempt).
            self.exchange_once(unit, &probe, deadline, true)?;
            log::debug!("modbus rtu: unit {unit} answered the probe; back in step");
        }
        self.exchange_once(unit, pdu, deadline, false)
    }

    fn broadcast(&mut self, pdu: &[u8], deadline: Instant) -> Result<(), ConnectorError> {
        if !self.line.is_open() {
            return Err(ConnectorError::link(Status::NOT_CONNECTED, "not connected"));
        }
        self.prepare(deadline)?;
        self.send(rtu::BROADCAST, pdu, deadline)?;
        // No reply comes; the devices need the turnaround delay to act on
        // it before the line carries the next frame.
        let wait = self.broadcast_delay.min(left(deadline).unwrap_or_default());
        std::thread::sleep(wait);
        self.quiet_since = Instant::now();
        Ok(())
    }

    fn bad_frames(&self) -> u64 {
        self.bad_frames
    }
}
