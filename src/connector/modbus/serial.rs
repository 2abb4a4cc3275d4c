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
    /// The line in the words of a device's manual: `/dev/ttyS1 19200 8E1`.
    pub fn describe(&self) -> String {
        format!("{} {}", self.device.display(), self.frame())
    }

    /// The character frame and direction control: `19200 8E1`, what
    /// every device on the line must agree on.
    pub fn frame(&self) -> String {
        format!(
            "{} {}{}{}{}",
            self.baud,
            self.data_bits,
            self.parity,
            self.stop_bits,
            match self.rs485 {
                Some(r) => format!(
                    " (kernel RS-485 mode, RTS {} ms before, {} ms after)",
                    r.before.as_millis(),
                    r.after.as_millis()
                ),
                None => String::new(),
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
            let what = match e.kind() {
                io::ErrorKind::NotFound => {
                    "no such device (the adapter unplugged? a /dev/serial/by-id/ name stays the same across reboots)"
                }
                io::ErrorKind::PermissionDenied => {
                    "permission denied (RTDS's user needs the dialout group)"
                }
                _ => what,
            };
            ConnectorError::link(Status::NOT_CONNECTED, format!("{device}: {what}: {e}"))
        };
        let (baud, parity, data_bits, stop_bits) = (s.baud, s.parity, s.data_bits, s.stop_bits);
        let opened = SerialPort::open(&s.device, move |mut t: serial2::Settings| {
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
        });
        let port = match opened {
            // serial2 sets any speed through termios2 (TCGETS2), which
            // qemu-user (the ARM test) and some old kernels lack: the
            // classic termios calls take the standard speeds.
            Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {
                classic::open(s).map(SerialPort::from).map_err(|e| {
                    fail(
                        "cannot open it with these line settings (classic termios)",
                        e,
                    )
                })?
            }
            other => other.map_err(|e| fail("cannot open it with these line settings", e))?,
        };
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
        // One owner per line: a second opener (a scan while the server
        // runs, another program) would take the replies meant for this
        // one. flock stops another RTDS (root too); TIOCEXCL other
        // programs that open it without root.
        let fd = std::os::fd::AsRawFd::as_raw_fd(&port);
        // SAFETY: flock/ioctl on a descriptor we own, no pointers.
        if unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(fail(
                "busy: another program holds it (rtds run, a scan, a terminal); one program per line",
                io::Error::last_os_error(),
            ));
        }
        // SAFETY: as above.
        unsafe {
            libc::ioctl(fd, libc::TIOCEXCL);
        }
        self.port = Some(port);
        Ok(())
    }

    fn is_open(&self) -> bool {
        self.port.is_some()
    }

    fn close(&mut self) {
        if let Some(port) = self.port.take() {
            // SAFETY: ioctl on the descriptor we still own; exclusive mode
            // must not outlive us on the tty.
            unsafe {
                libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(&port), libc::TIOCNXCL);
            }
        }
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

/// Opening a port with the classic termios calls (`tcsetattr`, the
/// standard `Bnnnn` speeds), for where termios2 is missing.
mod classic {
    use super::LineSettings;
    use std::io;
    use std::os::fd::{AsRawFd, OwnedFd};
    use std::os::unix::fs::OpenOptionsExt;

    fn speed(baud: u32) -> io::Result<libc::speed_t> {
        Ok(match baud {
            50 => libc::B50,
            75 => libc::B75,
            110 => libc::B110,
            134 => libc::B134,
            150 => libc::B150,
            200 => libc::B200,
            300 => libc::B300,
            600 => libc::B600,
            1200 => libc::B1200,
            1800 => libc::B1800,
            2400 => libc::B2400,
            4800 => libc::B4800,
            9600 => libc::B9600,
            19_200 => libc::B19200,
            38_400 => libc::B38400,
            57_600 => libc::B57600,
            115_200 => libc::B115200,
            230_400 => libc::B230400,
            460_800 => libc::B460800,
            500_000 => libc::B500000,
            921_600 => libc::B921600,
            1_000_000 => libc::B1000000,
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "{baud} baud is not a standard speed, and this system has no termios2 for others"
                    ),
                ));
            }
        })
    }

    /// Opens and sets up the port: raw, the speed, the character frame.
    pub fn open(s: &LineSettings) -> io::Result<OwnedFd> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK)
            .open(&s.device)?;
        let fd = file.as_raw_fd();
        let check = |r: libc::c_int| {
            if r == 0 {
                Ok(())
            } else {
                Err(io::Error::last_os_error())
            }
        };
        // SAFETY: tcgetattr/cfmakeraw/cfsetspeed/tcsetattr on an open
        // descriptor we own, with a termios struct of the right size.
        unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            check(libc::tcgetattr(fd, &mut t))?;
            libc::cfmakeraw(&mut t);
            check(libc::cfsetspeed(&mut t, speed(s.baud)?))?;
            t.c_cflag &=
                !(libc::CSIZE | libc::CSTOPB | libc::PARENB | libc::PARODD | libc::CRTSCTS);
            t.c_cflag |= libc::CLOCAL | libc::CREAD;
            t.c_cflag |= if s.data_bits == 7 {
                libc::CS7
            } else {
                libc::CS8
            };
            if s.stop_bits == 2 {
                t.c_cflag |= libc::CSTOPB;
            }
            match s.parity {
                'E' => t.c_cflag |= libc::PARENB,
                'O' => t.c_cflag |= libc::PARENB | libc::PARODD,
                _ => {}
            }
            t.c_iflag &= !(libc::IXON | libc::IXOFF | libc::IXANY);
            check(libc::tcsetattr(fd, libc::TCSANOW, &t))?;
        }
        Ok(file.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn the_classic_termios_path_opens_a_pty_and_carries_bytes() {
        // A pty pair from the kernel: the master end here, the slave end
        // opened the classic way, as where termios2 is missing.
        let (mut master, slave) = unsafe {
            let (mut m, mut s) = (0, 0);
            assert_eq!(
                libc::openpty(
                    &mut m,
                    &mut s,
                    std::ptr::null_mut(),
                    std::ptr::null(),
                    std::ptr::null()
                ),
                0
            );
            let name = std::ffi::CStr::from_ptr(libc::ttyname(s))
                .to_string_lossy()
                .into_owned();
            use std::os::fd::FromRawFd;
            libc::close(s);
            (std::fs::File::from_raw_fd(m), name)
        };
        let settings = LineSettings {
            device: slave.into(),
            baud: 19_200,
            parity: 'N',
            data_bits: 8,
            stop_bits: 1,
            rs485: None,
        };
        let mut port = SerialPort::from(classic::open(&settings).unwrap());
        port.set_read_timeout(Duration::from_secs(2)).unwrap();
        master.write_all(&[1, 3, 0, 0, 0, 1, 0x84, 0x0A]).unwrap();
        let mut buf = [0u8; 8];
        let mut got = 0;
        while got < 8 {
            got += port.read(&mut buf[got..]).unwrap();
        }
        assert_eq!(buf, [1, 3, 0, 0, 0, 1, 0x84, 0x0A]);
        port.write_all(&[0x55]).unwrap();
        let mut one = [0u8; 1];
        master.read_exact(&mut one).unwrap();
        assert_eq!(one, [0x55]);
        let odd = LineSettings {
            baud: 12_345,
            ..settings
        };
        assert!(
            classic::open(&odd)
                .unwrap_err()
                .to_string()
                .contains("not a standard speed")
        );
    }
}
