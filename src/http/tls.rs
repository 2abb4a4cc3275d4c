//! HTTPS for the status server, on rustls with the ring provider: the TLS
//! library the MQTT output already links, so HTTPS costs only its server
//! half. A connection is [`Conn`], plain or TLS, read and written with the
//! same deadlines either way.

use super::request::Source;
use rustls::{ServerConfig, ServerConnection, StreamOwned};
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

/// The certificate chain and its key, PEM files (`rtds cert --http`
/// makes a self-signed pair for commissioning).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain, the server's first.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
}

/// Reads the pair into a server configuration: TLS 1.2 and 1.3, HTTP/1.1
/// offered by ALPN. A file missing or not matching is an error at start.
pub fn server_config(files: &TlsFiles) -> Result<Arc<ServerConfig>, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let cert = &files.cert;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("{}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("{}: no PEM certificate in it", cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| format!("{}: {e}", files.key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| format!("{} and {}: {e}", files.cert.display(), files.key.display()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// One client connection.
pub enum Conn {
    /// HTTP.
    Plain(TcpStream),
    /// HTTPS.
    Tls(Box<StreamOwned<ServerConnection, TcpStream>>),
}

impl Conn {
    /// A TLS connection; the handshake happens with the first read, under
    /// the request's deadline.
    pub fn tls(config: Arc<ServerConfig>, sock: TcpStream) -> io::Result<Conn> {
        let conn = ServerConnection::new(config).map_err(io::Error::other)?;
        Ok(Conn::Tls(Box::new(StreamOwned::new(conn, sock))))
    }

    /// The socket underneath.
    pub fn sock(&self) -> &TcpStream {
        match self {
            Conn::Plain(s) => s,
            Conn::Tls(s) => &s.sock,
        }
    }

    /// Bounds the next writes by `deadline`; an error once it has passed.
    pub fn set_write_deadline(&self, deadline: Instant) -> io::Result<()> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        self.sock().set_write_timeout(Some(left))
    }

    /// Ends the sending side (with TLS, after its close_notify).
    pub fn close(&mut self) {
        if let Conn::Tls(s) = self {
            s.conn.send_close_notify();
            let _ = s.flush();
        }
        let _ = self.sock().shutdown(std::net::Shutdown::Write);
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Plain(s) => s.read(buf),
            Conn::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Plain(s) => s.write(buf),
            Conn::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Conn::Plain(s) => s.flush(),
            Conn::Tls(s) => s.flush(),
        }
    }
}

impl Source for Conn {
    fn read_until(&mut self, buf: &mut [u8], deadline: Instant) -> io::Result<usize> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        // A TLS read may write too (the handshake): both under the deadline.
        self.sock().set_read_timeout(Some(left))?;
        self.sock().set_write_timeout(Some(left))?;
        self.read(buf)
    }
}

/// The pair at `files`, made self-signed when neither file exists (as
/// appliances do at their first start): for `names` (the configured
/// `hosts`, `localhost`, the listen address, loopback and this machine's
/// host name). Returns the new certificate's SHA-256 fingerprint, or
/// `None` when the files were there.
pub fn ensure_pair(files: &TlsFiles, names: &[String]) -> Result<Option<String>, String> {
    if files.cert.exists() || files.key.exists() {
        return Ok(None);
    }
    let pair = super::certificate::self_signed(names, chrono::Utc::now(), 825)?;
    for (path, text, mode) in [
        (&files.key, &pair.key_pem, 0o600),
        (&files.cert, &pair.cert_pem, 0o644),
    ] {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        f.write_all(text.as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(Some(pair.fingerprint))
}

/// The names a self-signed certificate for `config` carries.
pub fn default_names(config: &super::HttpConfig) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    let mut add = |n: String| {
        if !n.is_empty() && !names.contains(&n) {
            names.push(n);
        }
    };
    if let Some(h) = hostname() {
        add(h.to_ascii_lowercase());
    }
    for h in &config.hosts {
        add(h.clone());
    }
    add("localhost".into());
    if !config.listen.ip().is_unspecified() {
        add(config.listen.ip().to_string());
    }
    add("127.0.0.1".into());
    add("::1".into());
    names
}

fn hostname() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: a buffer of the length given.
    let r = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if r != 0 {
        return None;
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    let h = std::str::from_utf8(&buf[..end]).ok()?;
    super::host_name(h).filter(|n| n.contains(|c: char| c.is_ascii_alphabetic()))
}

/// Fixes a socket's send buffer (the kernel doubles what it is given).
pub fn set_send_buffer(sock: &TcpStream, bytes: libc::c_int) {
    // SAFETY: a valid socket and a c_int option of its stated size.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&bytes as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}
