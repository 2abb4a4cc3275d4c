//! The built-in HTTP server: a live status page at `/`, a JSON API, Prometheus
//! metrics at `/metrics` and a health check at `/health`.
//!
//! It runs on threads of its own (an accept thread, one per connection up
//! to `max_connections`) and never touches the loop's data: it asks the
//! loop for a [`Snapshot`] by message and renders from that, so a burst of
//! requests costs the loop one `Arc` clone per request and one snapshot
//! per cycle. Requests are read under limits (see [`request`]); with a
//! token configured every request but `/health` and the page itself needs
//! `Authorization: Bearer TOKEN`, and writes are never possible without it.
//!
//! Every request must name this server in its `Host` (an address, or
//! `localhost`, or a name from `hosts`) before any handler runs: a page in
//! the operator's browser whose name is rebound to the gateway's address
//! (DNS rebinding) sends its own name and gets nothing. Writes also check
//! `Origin`. With `tls` the same server speaks HTTPS only ([`tls`]).

pub mod api;
pub mod certificate;
pub mod request;
pub mod tls;

use crate::json;
use crate::status::{Query, Snapshot};
use crossbeam_channel::{Sender, bounded};
use request::{Limits, ReadError, Request};
use std::io::{self, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tls::Conn;

/// The built-in HTTP server (status page, JSON API, metrics, health).
/// Off unless the file has an `http` section; its address defaults to
/// loopback, so opening it to the plant network is a deliberate edit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpConfig {
    /// Address and port to listen on.
    pub listen: std::net::SocketAddr,
    /// Bearer token; when set, every request needs it.
    pub token: Option<String>,
    /// Whether `POST /api/tags/{name}` may write (needs a token).
    pub writes: bool,
    /// Connections served at once; more are refused with 503.
    pub max_connections: usize,
    /// Names besides addresses and `localhost` that requests may give as
    /// their `Host` (lower case): the gateway's DNS names.
    pub hosts: Vec<String>,
    /// HTTPS: certificate chain and key (PEM files).
    pub tls: Option<tls::TlsFiles>,
}

/// The status page: one self-contained file (no CDN, no build step).
const PAGE: &str = include_str!("page.html");

/// How long a kept-alive connection may idle between requests.
const IDLE: Duration = Duration::from_secs(10);
/// Requests served on one connection before it is closed.
const MAX_REQUESTS_PER_CONNECTION: usize = 10_000;
/// How long a request waits for the loop's answer.
const LOOP_ANSWER: Duration = Duration::from_secs(2);
/// A response must be taken by the client within this time plus a second
/// per MiB of it: a client that reads slowly (or not at all) is cut off
/// and its connection slot freed.
const RESPONSE_TIME: Duration = Duration::from_secs(10);
const RESPONSE_RATE: usize = 1 << 20;
/// The send buffer of a connection. Fixed rather than grown by the kernel
/// (up to 4 MB), so that a client that stops reading is noticed by the
/// response deadline, not hidden in kernel memory.
const SEND_BUFFER: libc::c_int = 128 * 1024;

/// A response.
struct Response {
    status: u16,
    content_type: &'static str,
    body: Vec<u8>,
    extra: Vec<(&'static str, String)>,
}

impl Response {
    fn new(status: u16, content_type: &'static str, body: impl Into<Vec<u8>>) -> Response {
        Response {
            status,
            content_type,
            body: body.into(),
            extra: Vec::new(),
        }
    }

    fn json(body: String) -> Response {
        Response::new(200, "application/json", body)
    }

    fn error(status: u16, message: &str) -> Response {
        Response::new(
            status,
            "application/json",
            format!("{{\"error\":{}}}\n", json::string(message)),
        )
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        421 => "Misdirected Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        422 => "Unprocessable Content",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

/// Writes a response, all of it before its deadline (see [`RESPONSE_TIME`]).
fn send(stream: &mut Conn, r: &Response, keep_alive: bool, head_only: bool) -> io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\nConnection: {}\r\n",
        r.status,
        reason(r.status),
        r.content_type,
        r.body.len(),
        if keep_alive { "keep-alive" } else { "close" }
    );
    for (k, v) in &r.extra {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let body: &[u8] = if head_only { &[] } else { &r.body };
    let deadline = Instant::now()
        + RESPONSE_TIME
        + Duration::from_secs_f64((head.len() + body.len()) as f64 / RESPONSE_RATE as f64);
    for part in [head.as_bytes(), body] {
        for piece in part.chunks(16 * 1024) {
            stream.set_write_deadline(deadline)?;
            stream.write_all(piece)?;
        }
    }
    stream.set_write_deadline(deadline)?;
    stream.flush()
}

/// What every connection thread shares.
struct Shared {
    config: HttpConfig,
    /// HTTPS, when configured.
    tls: Option<Arc<rustls::ServerConfig>>,
    queries: Sender<Query>,
    active: AtomicUsize,
    /// When the last refused token was logged (ms since start), so a
    /// flood of bad tokens is one log line a second.
    last_refusal_log: AtomicU64,
    epoch: Instant,
}

/// Binds `config.listen` and serves on threads of their own. An address
/// that cannot be bound is an error at start, not a silent absence.
pub fn spawn(config: HttpConfig, queries: Sender<Query>) -> io::Result<SocketAddr> {
    let listener = TcpListener::bind(config.listen).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("http: cannot listen on {}: {e}", config.listen),
        )
    })?;
    let tls = match &config.tls {
        Some(files) => Some({
            match tls::ensure_pair(files, &tls::default_names(&config)) {
                Ok(Some(fingerprint)) => log::warn!(
                    "http: made a self-signed certificate {} (SHA-256 {fingerprint}): browsers will ask to trust it; replace it with one from the plant's CA",
                    files.cert.display()
                ),
                Ok(None) => {}
                Err(e) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("http: {e}"),
                    ));
                }
            }
            tls::server_config(files)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("http: {e}")))?
        }),
        None => None,
    };
    let addr = listener.local_addr()?;
    log::info!(
        "http: status page and API on {}://{addr}/ ({}{})",
        if tls.is_some() { "https" } else { "http" },
        if config.token.is_some() {
            "token required"
        } else {
            "no token: read-only, keep it on loopback or a trusted network"
        },
        if config.writes {
            ", writes enabled"
        } else {
            ""
        }
    );
    let shared = Arc::new(Shared {
        config,
        tls,
        queries,
        active: AtomicUsize::new(0),
        last_refusal_log: AtomicU64::new(0),
        epoch: Instant::now(),
    });
    std::thread::Builder::new()
        .name("http".into())
        .spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let _ = stream.set_nodelay(true);
                tls::set_send_buffer(&stream, SEND_BUFFER);
                if shared.active.fetch_add(1, Ordering::SeqCst) >= shared.config.max_connections {
                    shared.active.fetch_sub(1, Ordering::SeqCst);
                    // Over HTTPS there is no time for a handshake here:
                    // the connection is just closed.
                    if shared.tls.is_none() {
                        refuse(&mut Conn::Plain(stream));
                    }
                    continue;
                }
                let shared = shared.clone();
                let spawned = std::thread::Builder::new()
                    .name("http-conn".into())
                    .stack_size(128 * 1024)
                    .spawn({
                        let shared = shared.clone();
                        move || {
                            serve(&shared, stream);
                            shared.active.fetch_sub(1, Ordering::SeqCst);
                        }
                    });
                if spawned.is_err() {
                    shared.active.fetch_sub(1, Ordering::SeqCst);
                }
            }
        })?;
    Ok(addr)
}

/// One connection: requests until the client closes, idles, breaks a
/// limit, or asks to close.
fn serve(shared: &Shared, stream: TcpStream) {
    let peer = stream
        .peer_addr()
        .map_or_else(|_| "?".to_string(), |a| a.to_string());
    let mut stream = match &shared.tls {
        None => Conn::Plain(stream),
        Some(config) => match Conn::tls(config.clone(), stream) {
            Ok(c) => c,
            Err(_) => return,
        },
    };
    let mut pending = Vec::new();
    let limits = Limits::default();
    for _ in 0..MAX_REQUESTS_PER_CONNECTION {
        let req = match request::read_request(&mut stream, &mut pending, &limits, IDLE) {
            Ok(r) => r,
            Err(ReadError::Closed) => return,
            Err(e) => {
                if let Some((status, why)) = e.status() {
                    let _ = send(&mut stream, &Response::error(status, why), false, false);
                    linger(&mut stream);
                }
                return;
            }
        };
        let keep_alive = req.keep_alive;
        let head_only = req.method == "HEAD";
        let response = handle(shared, &req, &peer);
        if send(&mut stream, &response, keep_alive, head_only).is_err() || !keep_alive {
            return;
        }
    }
}

/// 503 on the accept thread itself (no thread to spare): the request
/// already sent is read first (at most 50 ms), so the close that follows
/// does not reset the connection under the answer.
fn refuse(stream: &mut Conn) {
    use std::io::Read;
    let _ = stream
        .sock()
        .set_read_timeout(Some(Duration::from_millis(50)));
    let mut sink = [0u8; 8192];
    let _ = stream.read(&mut sink);
    let _ = send(
        stream,
        &Response::error(503, "too many connections"),
        false,
        false,
    );
    stream.close();
}

/// Closes after an error answer without resetting the connection: a
/// close with unread input sends RST, which can destroy the answer before
/// the client reads it. Reads (and drops) what is still coming, briefly.
fn linger(stream: &mut Conn) {
    use std::io::Read;
    stream.close();
    let _ = stream
        .sock()
        .set_read_timeout(Some(Duration::from_millis(500)));
    let mut sink = [0u8; 4096];
    let mut left: usize = 64 * 1024;
    while left > 0 {
        match stream.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(n) => left = left.saturating_sub(n),
        }
    }
}

/// Constant-time comparison, so the token cannot be guessed byte by byte
/// from response times.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn authorized(shared: &Shared, req: &Request, peer: &str) -> bool {
    let Some(token) = &shared.config.token else {
        return true;
    };
    // The scheme is case-insensitive (RFC 9110 11.1).
    let given = req
        .header("authorization")
        .and_then(|h| h.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim())
        .unwrap_or_default();
    if same(given.as_bytes(), token.as_bytes()) {
        return true;
    }
    refused(
        shared,
        req,
        peer,
        if given.is_empty() {
            "no bearer token"
        } else {
            "wrong bearer token"
        },
    );
    false
}

/// Logs a refused request, at most one line a second.
fn refused(shared: &Shared, req: &Request, peer: &str, why: &str) {
    let now = shared.epoch.elapsed().as_millis() as u64;
    let last = shared.last_refusal_log.load(Ordering::Relaxed);
    if now.saturating_sub(last) >= 1000 || last == 0 {
        shared.last_refusal_log.store(now.max(1), Ordering::Relaxed);
        log::warn!(
            "http: {} {} from {peer} refused: {why}",
            req.method,
            req.path
        );
    }
}

/// The name a `Host` header gives, lower case, without its port and a
/// final dot; `None` when it is not a host at all.
pub fn host_name(host: &str) -> Option<String> {
    let name = if let Some(rest) = host.strip_prefix('[') {
        // [v6]:port
        let (addr, after) = rest.split_once(']')?;
        if !(after.is_empty() || after.strip_prefix(':').is_some_and(is_port)) {
            return None;
        }
        addr.parse::<std::net::Ipv6Addr>().ok()?;
        return Some(format!("[{}]", addr.to_ascii_lowercase()));
    } else {
        match host.rsplit_once(':') {
            Some((h, p)) if is_port(p) => h,
            Some(_) => return None,
            None => host,
        }
    };
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    let ok = !name.is_empty()
        && !name.starts_with('.')
        && !name.ends_with('.')
        && !name.contains("..")
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
    ok.then_some(name)
}

fn is_port(p: &str) -> bool {
    !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit())
}

/// Whether `Host` names this server: `localhost`, a configured name, or an
/// address: the listen address and loopback, or any address when
/// listening on all of them (0.0.0.0 or ::, whose addresses DHCP may
/// change). A rebinding page cannot send an address: its own name is what
/// the browser puts there. HTTP/1.0 without `Host` (no browser sends that)
/// is let through; HTTP/1.1 without one never reaches here.
fn host_allowed(config: &HttpConfig, host: Option<&str>) -> bool {
    let Some(host) = host else { return true };
    let Some(name) = host_name(host) else {
        return false;
    };
    let ip = name
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<std::net::IpAddr>();
    match ip {
        Ok(ip) => {
            let listen = config.listen.ip();
            listen.is_unspecified() || ip.is_loopback() || ip == listen
        }
        Err(_) => name == "localhost" || config.hosts.contains(&name),
    }
}

/// A state-changing request with an `Origin` must come from a page of
/// this very server (`scheme://host` as it was asked for): a form or
/// script on another site gets 403 even with the operator's cookies or a
/// rebound name.
fn origin_allowed(shared: &Shared, req: &Request) -> bool {
    let Some(origin) = req.header("origin") else {
        return true;
    };
    let scheme = if shared.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let Some(host) = req.header("host") else {
        return false;
    };
    origin.eq_ignore_ascii_case(&format!("{scheme}://{host}"))
}

fn snapshot(shared: &Shared) -> Result<Arc<Snapshot>, Response> {
    let (tx, rx) = bounded(1);
    shared
        .queries
        .send(Query::Snapshot(tx))
        .map_err(|_| Response::error(503, "the scan loop has stopped"))?;
    rx.recv_timeout(LOOP_ANSWER)
        .map_err(|_| Response::error(503, "the scan loop is not answering"))
}

fn handle(shared: &Shared, req: &Request, peer: &str) -> Response {
    if !host_allowed(&shared.config, req.header("host")) {
        refused(shared, req, peer, "Host is not this server's name");
        return Response::error(
            421,
            "this server does not answer to that Host name: add it to http `hosts` in the configuration",
        );
    }
    if !matches!(req.method.as_str(), "GET" | "HEAD") && !origin_allowed(shared, req) {
        refused(shared, req, peer, "Origin is another site");
        return Response::error(403, "cross-origin requests may not change anything");
    }
    let path = req.path.as_str();
    let get = req.method == "GET" || req.method == "HEAD";
    // The page carries no data (it asks the API, with the token the user
    // types), and health is for monitoring systems: both open.
    if get && (path == "/" || path == "/index.html") {
        let mut r = Response::new(200, "text/html; charset=utf-8", PAGE);
        r.extra.push((
            "Content-Security-Policy",
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:".into(),
        ));
        return r;
    }
    if get && path == "/health" {
        return match snapshot(shared) {
            Err(r) => Response::new(
                r.status,
                "text/plain; charset=utf-8",
                String::from_utf8_lossy(&r.body).into_owned(),
            ),
            Ok(s) => match api::health(&s) {
                Ok(()) => Response::new(200, "text/plain; charset=utf-8", "ok\n"),
                Err(why) => Response::new(503, "text/plain; charset=utf-8", format!("{why}\n")),
            },
        };
    }
    if !authorized(shared, req, peer) {
        let mut r = Response::error(401, "a valid bearer token is required");
        r.extra
            .push(("WWW-Authenticate", "Bearer realm=\"rtds\"".into()));
        return r;
    }
    if req.method == "POST" {
        if let Some(name) = path.strip_prefix("/api/tags/") {
            return write(shared, req, name, peer);
        }
        return Response::error(405, "only tag writes are POSTed: POST /api/tags/{name}");
    }
    if !get {
        return Response::error(405, "method not allowed");
    }
    let s = match snapshot(shared) {
        Ok(s) => s,
        Err(r) => return r,
    };
    match path {
        "/api/tags" => Response::json(api::tags(&s, req.param("filter"))),
        "/api/connectors" => Response::json(api::connectors(&s)),
        "/api/scripts" => Response::json(api::scripts(&s)),
        "/api/status" => Response::json(api::status(&s)),
        "/api/storage" => Response::json(api::storage(&s)),
        "/api/outputs" => Response::json(api::outputs(&s)),
        "/metrics" => Response::new(
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            api::metrics(&s),
        ),
        _ => match path.strip_prefix("/api/tags/") {
            Some(name) => match s.tags.iter().position(|m| &*m.name == name) {
                Some(i) => Response::json(api::tag(&s, i)),
                None => Response::error(404, &format!("no tag `{name}`")),
            },
            None => Response::error(
                404,
                "no such page: /, /api/tags, /api/tags/{name}, /api/connectors, /api/scripts, /api/storage, /api/outputs, /api/status, /metrics, /health",
            ),
        },
    }
}

fn write(shared: &Shared, req: &Request, name: &str, peer: &str) -> Response {
    if !shared.config.writes || shared.config.token.is_none() {
        return Response::error(
            403,
            "writes are off: set http: (writes: true, token: …) in the configuration",
        );
    }
    let body = match std::str::from_utf8(&req.body) {
        Ok(b) => b,
        Err(_) => return Response::error(400, "the body is not UTF-8"),
    };
    let value = match json::parse_write(body) {
        Ok(v) => v,
        Err(e) => return Response::error(400, &format!("body: {e} (send {{\"value\": 42}})")),
    };
    let (tx, rx) = bounded(1);
    if shared
        .queries
        .send(Query::Write {
            tag: name.to_string(),
            value,
            by: format!("http {peer}"),
            reply: tx,
        })
        .is_err()
    {
        return Response::error(503, "the scan loop has stopped");
    }
    match rx.recv_timeout(LOOP_ANSWER) {
        Ok(Ok(())) => Response::json(
            "{\"queued\":true,\"note\":\"stored when the device confirms the write\"}".into(),
        ),
        Ok(Err(why)) => Response::error(422, &why),
        Err(_) => Response::error(503, "the scan loop is not answering"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_page_is_small_and_self_contained() {
        let page = super::PAGE;
        assert!(page.len() < 50_000, "{} bytes", page.len());
        for outside in ["http://", "https://", "//cdn", "src=\"http"] {
            assert!(!page.contains(outside), "the page refers to {outside}");
        }
        assert!(page.contains("name=\"viewport\""), "readable on a phone");
    }
}
