//! RTU on a serial port (RS-485, RS-232, RS-422), through the `serial2`
//! crate: it needs only libc (no libudev, so the ARM cross builds link
//! with Debian's cross gcc alone) and wraps the kernel's RS-485 mode
//! (`TIOCSRS485`) for adapters that need the kernel to drive their
//! direction pin.

use super::line::Line;
use super::transport::left;
use crate::connector::ConnectorError;
use crate::model::Status;
use serial2::{CharSize, FlowControl, Parity, SerialPort, StopBits};
use std::io;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// How a serial line is set up: all connectors on one device must agree.
#[derive(Debug, Clone, PartialEq)]
pub struct LineSettings {
    /// The device (`/dev/ttyS1`, `/dev/ttyUSB0`).
    pub device: PathBuf,
    /// Bits per second.
    pub baud: u32,
    /// `N`, `E` or `O`.
    pub parity: char,
    /// 7 or 8.
    pub data_bits: u8,
    /// 1 or 2.
    pub stop_bits: u8,
    /// The kernel's RS-485 mode, with its RTS delays, when asked for.
    pub rs485: Option<Rs485>,
}

/// The kernel's RS-485 direction control (`TIOCSRS485`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rs485 {
    /// RTS raised this long before the first bit.
    pub before: Duration,
    /// RTS held this long after the last bit.
    pub after: Duration,
}

impl LineSettings {
    /// The line in the words of a device's manual: `19200 8E1`.
    pub fn describe(&self) -> String {
        format!(
            "{} {} {}{}{}{}",
            self.device.display(),
            self.baud,
            self.data_bits,
            self.parity,
            self.stop_bits,
            if self.rs485.is_some() {
                ", kernel RS-485 mode"
            } else {
                ""
            }
        )
    }
}

/// An open serial port.
pub struct SerialLine {
    settings: LineSettings,
    port: Option<SerialPort>,
}

impl SerialLine {
    /// A line with `settings`, not yet open.
    pub fn new(settings: LineSettings) -> SerialLine {
        SerialLine {
            settings,
            port: None,
        }
    }

    fn port(&mut self) -> io::Result<&mut SerialPort> {
        self.port
            .as_mut()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotConnected, "not open"))
    }
}

impl Line for SerialLine {
    fn open(&mut self) -> Result<(), ConnectorError> {
        let s = &self.settings;
        let device = s.device.display().to_string();
        let fail = |what: &str, e: io::Error| {
            ConnectorError::link(Status::NOT_CONNECTED, format!("{device}: {what}: {e}"))
        };
        let (baud, parity, data_bits, stop_bits) = (s.baud, s.parity, s.data_bits, s.stop_bits);
        let port = SerialPort::open(&s.device, move |mut t: serial2::Settings| {
            t.set_raw();
            t.set_baud_rate(baud)?;
            t.set_char_size(if data_bits == 7 {
                CharSize::Bits7
            } else {
                CharSize::Bits8
            });
            t.set_stop_bits(if stop_bits == 2 {
                StopBits::Two
            } else {
                StopBits::One
            });
            t.set_parity(match parity {
                'E' => Parity::Even,
                'O' => Parity::Odd,
                _ => Parity::None,
            });
            t.set_flow_control(FlowControl::None);
            Ok(t)
        })
        .map_err(|e| fail("cannot open it with these line settings", e))?;
        if let Some(rs) = s.rs485 {
            let mut cfg = serial2::rs4xx::Rs485Config::new();
            cfg.set_delay_before_send(rs.before);
            cfg.set_delay_after_send(rs.after);
            port.set_rs4xx_mode(cfg).map_err(|e| {
                fail(
                    "the port does not take the kernel's RS-485 mode (leave rs485 off for an adapter that switches direction by itself)",
                    e,
                )
            })?;
        }
        self.port = Some(port);
        Ok(())
    }

    fn is_open(&self) -> bool {
        self.port.is_some()
    }

    fn close(&mut self) {
        self.port = None;
    }

    fn send(&mut self, bytes: &[u8], deadline: Instant) -> io::Result<()> {
        let left = left(deadline)?;
        let port = self.port()?;
        port.set_write_timeout(left)?;
        port.write_all(bytes)?;
        // Until the last bit is out: the reply's time and the next
        // frame's silence count from there.
        port.flush()
    }

    fn recv(&mut self, buf: &mut [u8], deadline: Instant) -> io::Result<usize> {
        let left = left(deadline)?;
        let port = self.port()?;
        port.set_read_timeout(left)?;
        port.read(buf)
    }

    fn discard(&mut self) -> io::Result<usize> {
        // What is buffered is dropped whole; its size is not told, so a
        // drop counts as one refused frame only when something was read.
        let port = self.port()?;
        port.set_read_timeout(Duration::from_millis(0))?;
        let mut dropped = 0;
        let mut buf = [0u8; 256];
        loop {
            match port.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => dropped += n,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
                    ) =>
                {
                    break;
                }
                Err(e) => return Err(e),
            }
            if dropped > 64 * 1024 {
                // A line that never stops talking: stop reading, the
                // exchange's own checks handle the rest.
                port.discard_input_buffer()?;
                break;
            }
        }
        Ok(dropped)
    }
}
