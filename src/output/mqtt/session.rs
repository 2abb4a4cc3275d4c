//! One connection to the broker, blocking: TCP or TLS (rustls with the
//! `ring` provider: no C toolchain beyond what SQLite needs, and the
//! smaller of rustls's providers), CONNECT and CONNACK, publishing,
//! subscribing, and waiting for the broker's packets or the loop's wake-up
//! with `poll(2)` on both descriptors, so one thread serves both without an
//! async runtime.

use super::packet::{self, Connect, Incoming, Publish};
use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where the broker is and how to reach it.
#[derive(Debug, Clone, PartialEq)]
pub struct Broker {
    /// Host name or address (TLS checks the certificate against it).
    pub host: String,
    /// Port.
    pub port: u16,
    /// TLS settings, when the connection is encrypted.
    pub tls: Option<Tls>,
    /// Bounds connecting, the handshake and every write.
    pub timeout: Duration,
}

/// TLS settings: the CA that signed the broker's certificate and,
/// optionally, RTDS's own certificate and key.
#[derive(Debug, Clone, PartialEq)]
pub struct Tls {
    /// PEM file of trusted CA certificates.
    pub ca_file: PathBuf,
    /// PEM file of RTDS's certificate chain (client authentication).
    pub cert_file: Option<PathBuf>,
    /// PEM file of its private key.
    pub key_file: Option<PathBuf>,
}

impl Broker {
    /// Parses `mqtt://host:1883`, `mqtts://host:8883`, `tcp://…`,
    /// `ssl://…`, `tls://…` or `host[:port]` (plain): whether TLS, host,
    /// port (1883, or 8883 with TLS).
    pub fn parse_url(url: &str) -> Result<(bool, String, u16), String> {
        let (tls, rest) = match url.split_once("://") {
            Some((scheme, rest)) => match scheme.to_ascii_lowercase().as_str() {
                "mqtt" | "tcp" => (false, rest),
                "mqtts" | "ssl" | "tls" => (true, rest),
                other => {
                    return Err(format!(
                        "`{other}://` is not a broker scheme (mqtt://, mqtts://, tcp://, tls://)"
                    ));
                }
            },
            None => (false, url),
        };
        let rest = rest.trim_end_matches('/');
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) if !h.is_empty() && !h.ends_with(':') => (
                h.trim_start_matches('[').trim_end_matches(']'),
                p.parse::<u16>()
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or_else(|| format!("`{p}` is not a port in 1..=65535"))?,
            ),
            _ => (rest, if tls { 8883 } else { 1883 }),
        };
        if host.is_empty() || host.contains(['/', '?', '@']) {
            return Err(format!("`{url}` names no broker host"));
        }
        Ok((tls, host.to_string(), port))
    }
}

/// Reads the TLS client configuration (done once at start, so a missing
/// file is a configuration error, not a failure at every reconnect).
pub fn tls_config(tls: &Tls) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let read_certs = |p: &Path| -> Result<Vec<CertificateDer<'static>>, String> {
        let certs: Vec<_> = CertificateDer::pem_file_iter(p)
            .map_err(|e| format!("{}: {e}", p.display()))?
            .collect::<Result<_, _>>()
            .map_err(|e| format!("{}: {e}", p.display()))?;
        if certs.is_empty() {
            return Err(format!("{}: no PEM certificate in it", p.display()));
        }
        Ok(certs)
    };
    let mut roots = rustls::RootCertStore::empty();
    for c in read_certs(&tls.ca_file)? {
        roots
            .add(c)
            .map_err(|e| format!("{}: {e}", tls.ca_file.display()))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let config = match (&tls.cert_file, &tls.key_file) {
        (Some(cert), Some(key)) => {
            let chain = read_certs(cert)?;
            let key =
                PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("client certificate: {e}"))?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => return Err("cert_file and key_file go together".into()),
    };
    Ok(Arc::new(config))
}

/// The byte stream: plain TCP, or TLS over it.
enum Wire {
    Plain(TcpStream),
    Tls {
        sock: TcpStream,
        conn: Box<rustls::ClientConnection>,
    },
}

impl Wire {
    fn sock(&self) -> &TcpStream {
        match self {
            Wire::Plain(s) | Wire::Tls { sock: s, .. } => s,
        }
    }

    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Wire::Plain(s) => s.write_all(bytes),
            Wire::Tls { sock, conn } => {
                conn.writer().write_all(bytes)?;
                while conn.wants_write() {
                    conn.write_tls(sock)?;
                }
                Ok(())
            }
        }
    }

    /// Reads what has arrived (the socket is readable) into `buf`; 0 when
    /// the broker closed the connection.
    fn read_some(&mut self, buf: &mut Vec<u8>) -> io::Result<usize> {
        let mut chunk = [0u8; 16 * 1024];
        match self {
            Wire::Plain(s) => {
                let n = s.read(&mut chunk)?;
                buf.extend_from_slice(&chunk[..n]);
                Ok(n)
            }
            Wire::Tls { sock, conn } => {
                if conn.read_tls(sock)? == 0 {
                    return Ok(0);
                }
                conn.process_new_packets()
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                let mut total = 0;
                loop {
                    match conn.reader().read(&mut chunk) {
                        Ok(0) => return Ok(if total == 0 { 0 } else { total }),
                        Ok(n) => {
                            buf.extend_from_slice(&chunk[..n]);
                            total += n;
                        }
                        // Nothing more decrypted yet: a record still coming.
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            return Ok(total.max(1));
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
        }
    }
}

/// What [`Session::wait`] saw.
#[derive(Debug, PartialEq, Eq)]
pub enum Woken {
    /// Packets from the broker (possibly none, while one is still coming).
    Packets(Vec<Incoming>),
    /// The loop has something (the wake descriptor was readable).
    Wake,
    /// Neither, before the timeout.
    Timeout,
}

/// A connected MQTT session.
pub struct Session {
    wire: Wire,
    inbuf: Vec<u8>,
    next_pid: u16,
    timeout: Duration,
    /// When RTDS last sent anything (keep-alive counts from there).
    pub last_sent: Instant,
    /// Whether the broker said it kept a session.
    pub session_present: bool,
}

/// Waits until `fd` (and `wake`, if any) is readable or `timeout` passes:
/// (socket readable, wake readable).
fn poll_two(fd: Option<RawFd>, wake: RawFd, timeout: Duration) -> io::Result<(bool, bool)> {
    let mut fds = [
        libc::pollfd {
            fd: wake,
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: fd.unwrap_or(-1),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    let n = if fd.is_some() { 2 } else { 1 };
    let ms = timeout.as_millis().min(i32::MAX as u128) as libc::c_int;
    // SAFETY: poll(2) on an array of `n` initialised pollfd structs we own.
    let r = unsafe { libc::poll(fds.as_mut_ptr(), n as libc::nfds_t, ms) };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok((false, false));
        }
        return Err(e);
    }
    let ready = |p: &libc::pollfd| p.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0;
    Ok((n == 2 && ready(&fds[1]), ready(&fds[0])))
}

/// Waits for the wake descriptor alone (while not connected).
pub fn wait_wake(wake: RawFd, timeout: Duration) -> io::Result<bool> {
    poll_two(None, wake, timeout).map(|(_, w)| w)
}

impl Session {
    /// Connects, sends CONNECT and waits for CONNACK; a refusal is an
    /// error naming the broker's reason.
    pub fn connect(
        broker: &Broker,
        tls: Option<&Arc<rustls::ClientConfig>>,
        connect: &Connect,
    ) -> Result<Session, String> {
        let addr = (broker.host.as_str(), broker.port)
            .to_socket_addrs()
            .map_err(|e| format!("resolve {}: {e}", broker.host))?
            .next()
            .ok_or_else(|| format!("{} has no address", broker.host))?;
        let sock = TcpStream::connect_timeout(&addr, broker.timeout)
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let setup = |s: &TcpStream| -> io::Result<()> {
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(broker.timeout))?;
            s.set_write_timeout(Some(broker.timeout))
        };
        setup(&sock).map_err(|e| format!("socket setup: {e}"))?;
        let wire = match tls {
            None => Wire::Plain(sock),
            Some(config) => {
                let name = rustls_pki_types::ServerName::try_from(broker.host.clone())
                    .map_err(|e| format!("`{}` as a TLS server name: {e}", broker.host))?;
                let mut conn = rustls::ClientConnection::new(config.clone(), name)
                    .map_err(|e| format!("TLS: {e}"))?;
                let mut sock = sock;
                while conn.is_handshaking() {
                    conn.complete_io(&mut sock)
                        .map_err(|e| format!("TLS handshake with {addr}: {e}"))?;
                }
                Wire::Tls {
                    sock,
                    conn: Box::new(conn),
                }
            }
        };
        let mut s = Session {
            wire,
            inbuf: Vec::with_capacity(1024),
            next_pid: 0,
            timeout: broker.timeout,
            last_sent: Instant::now(),
            session_present: false,
        };
        s.send(&connect.encode())
            .map_err(|e| format!("send CONNECT: {e}"))?;
        let deadline = Instant::now() + broker.timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err("no CONNACK within the timeout".into());
            }
            let packets = s
                .read_packets(left)
                .map_err(|e| format!("CONNACK: {e}"))?
                .ok_or("the broker closed the connection")?;
            // The first packet must be the CONNACK (3.2).
            if let Some(p) = packets.into_iter().next() {
                return match p {
                    Incoming::ConnAck {
                        code: 0,
                        session_present,
                    } => {
                        s.session_present = session_present;
                        Ok(s)
                    }
                    Incoming::ConnAck { code, .. } => Err(format!(
                        "the broker {} (CONNACK {code})",
                        packet::connack_reason(code)
                    )),
                    other => Err(format!("expected CONNACK, got {other:?}")),
                };
            }
        }
    }

    /// Reads packets, waiting up to `timeout` for the socket; `None` when
    /// the broker closed the connection.
    fn read_packets(&mut self, timeout: Duration) -> io::Result<Option<Vec<Incoming>>> {
        let (readable, _) = poll_two(Some(self.wire.sock().as_raw_fd()), -1, timeout)?;
        if !readable {
            return Ok(Some(Vec::new()));
        }
        if self.wire.read_some(&mut self.inbuf)? == 0 {
            return Ok(None);
        }
        let mut out = Vec::new();
        while let Some((p, n)) = packet::split(&self.inbuf)? {
            self.inbuf.drain(..n);
            out.push(p);
        }
        Ok(Some(out))
    }

    /// Sends bytes (a whole packet), bounded by the timeout.
    pub fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.wire.write_all(bytes)?;
        self.last_sent = Instant::now();
        Ok(())
    }

    /// The next packet id (1..=65535).
    pub fn pid(&mut self) -> u16 {
        self.next_pid = self.next_pid.wrapping_add(1).max(1);
        self.next_pid
    }

    /// Publishes; returns the packet id (0 at QoS 0).
    pub fn publish(
        &mut self,
        topic: &str,
        payload: Vec<u8>,
        qos: u8,
        retain: bool,
    ) -> io::Result<u16> {
        let pid = if qos > 0 { self.pid() } else { 0 };
        let p = Publish {
            topic: topic.to_string(),
            payload,
            qos,
            retain,
            dup: false,
            pid,
        };
        self.send(&p.encode())?;
        Ok(pid)
    }

    /// Subscribes; returns the packet id the SUBACK will carry.
    pub fn subscribe(&mut self, topics: &[(String, u8)]) -> io::Result<u16> {
        let pid = self.pid();
        self.send(&packet::subscribe(pid, topics))?;
        Ok(pid)
    }

    /// Waits for the broker or the loop (`wake`) up to `timeout`.
    pub fn wait(&mut self, wake: RawFd, timeout: Duration) -> io::Result<Woken> {
        // Whole packets already read come first.
        if let Some((p, n)) = packet::split(&self.inbuf)? {
            self.inbuf.drain(..n);
            return Ok(Woken::Packets(vec![p]));
        }
        let (readable, woken) = poll_two(Some(self.wire.sock().as_raw_fd()), wake, timeout)?;
        if readable {
            return match self.read_packets(Duration::ZERO)? {
                Some(p) => Ok(Woken::Packets(p)),
                None => Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the broker closed the connection",
                )),
            };
        }
        Ok(if woken { Woken::Wake } else { Woken::Timeout })
    }

    /// The write timeout, for callers bounding a sequence of sends.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Sends DISCONNECT and closes.
    pub fn disconnect(mut self) {
        let _ = self.send(&packet::DISCONNECT);
        if let Wire::Tls { sock, conn } = &mut self.wire {
            conn.send_close_notify();
            let _ = conn.write_tls(sock);
        }
        let _ = self.wire.sock().shutdown(std::net::Shutdown::Both);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_urls() {
        assert_eq!(
            Broker::parse_url("mqtt://10.0.0.5"),
            Ok((false, "10.0.0.5".into(), 1883))
        );
        assert_eq!(
            Broker::parse_url("mqtts://broker.plant.local"),
            Ok((true, "broker.plant.local".into(), 8883))
        );
        assert_eq!(
            Broker::parse_url("tls://b:18883/"),
            Ok((true, "b".into(), 18883))
        );
        assert_eq!(
            Broker::parse_url("127.0.0.1:1884"),
            Ok((false, "127.0.0.1".into(), 1884))
        );
        for bad in [
            "http://x",
            "mqtt://",
            "mqtt://x:0",
            "mqtt://x:99999",
            "mqtt://u@x",
        ] {
            assert!(Broker::parse_url(bad).is_err(), "{bad}");
        }
    }
}
