//! HTTP/1.1 requests, read under limits: a status page on a gateway must
//! not be a way to exhaust its memory or threads. Header block, header
//! count and body are bounded; the whole request must arrive before a
//! deadline, so a client that sends one byte a second cannot hold a
//! connection.

use std::io::{self, Read};
use std::time::{Duration, Instant};

/// Bounds on one request.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Request line plus headers, bytes.
    pub head: usize,
    /// Header lines.
    pub headers: usize,
    /// Body bytes (Content-Length).
    pub body: usize,
    /// Time for the whole request, from its first byte.
    pub time: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            head: 8192,
            headers: 32,
            body: 4096,
            time: Duration::from_secs(5),
        }
    }
}

/// A parsed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// `GET`, `POST` …
    pub method: String,
    /// The path, percent-decoded, without the query.
    pub path: String,
    /// Query pairs, percent-decoded.
    pub query: Vec<(String, String)>,
    /// Header names in lower case, values trimmed.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
    /// Whether the client keeps the connection open.
    pub keep_alive: bool,
}

impl Request {
    /// The first header named `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The first query value named `name`.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Why no request could be read; each maps to a response (or none).
#[derive(Debug, PartialEq, Eq)]
pub enum ReadError {
    /// The client closed the connection between requests: nothing to say.
    Closed,
    /// The limit of time ran out (408).
    Timeout,
    /// The header block is over its limit (431).
    HeadTooLarge,
    /// Too many header lines (431).
    TooManyHeaders,
    /// The body is over its limit (413).
    BodyTooLarge,
    /// Not HTTP/1.x as this server speaks it (400), with the reason.
    Bad(&'static str),
}

impl ReadError {
    /// The status code and reason to answer with, if any.
    pub fn status(&self) -> Option<(u16, &'static str)> {
        match self {
            ReadError::Closed => None,
            ReadError::Timeout => Some((408, "the request did not arrive in time")),
            ReadError::HeadTooLarge => Some((431, "request header block too large")),
            ReadError::TooManyHeaders => Some((431, "too many header lines")),
            ReadError::BodyTooLarge => Some((413, "request body too large")),
            ReadError::Bad(why) => Some((400, why)),
        }
    }
}

/// A byte source with a deadline (a socket with its read timeout set to
/// what remains before each read).
pub trait Source {
    /// Reads what is there, at most until `deadline`.
    fn read_until(&mut self, buf: &mut [u8], deadline: Instant) -> io::Result<usize>;
}

impl Source for std::net::TcpStream {
    fn read_until(&mut self, buf: &mut [u8], deadline: Instant) -> io::Result<usize> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        self.set_read_timeout(Some(left))?;
        self.read(buf)
    }
}

impl Source for &[u8] {
    fn read_until(&mut self, buf: &mut [u8], _: Instant) -> io::Result<usize> {
        self.read(buf)
    }
}

/// Reads one request. `pending` holds bytes already received beyond the
/// previous request (pipelining) and keeps what follows this one.
/// `idle` bounds the wait for the first byte of a kept-alive connection.
pub fn read_request(
    src: &mut impl Source,
    pending: &mut Vec<u8>,
    limits: &Limits,
    idle: Duration,
) -> Result<Request, ReadError> {
    let mut deadline = Instant::now() + idle;
    let mut started = !pending.is_empty();
    if started {
        deadline = Instant::now() + limits.time;
    }
    let mut chunk = [0u8; 2048];
    // How far `pending` was searched for the end of the head: bytes are
    // looked at once, however slowly they arrive.
    let mut searched = 0;
    let head_end = loop {
        if let Some(end) = head_end(pending, &mut searched)? {
            break end;
        }
        if pending.len() > limits.head {
            return Err(ReadError::HeadTooLarge);
        }
        let n = match src.read_until(&mut chunk, deadline) {
            Ok(0) if pending.is_empty() => return Err(ReadError::Closed),
            Ok(0) => return Err(ReadError::Bad("connection closed inside the request")),
            Ok(n) => n,
            // An idle kept-alive connection ends quietly; a started
            // request that stalls gets 408.
            Err(e) if timed_out(&e) && started => return Err(ReadError::Timeout),
            Err(_) => return Err(ReadError::Closed),
        };
        if !started {
            started = true;
            deadline = Instant::now() + limits.time;
        }
        pending.extend_from_slice(&chunk[..n]);
    };
    if head_end > limits.head {
        return Err(ReadError::HeadTooLarge);
    }
    let head = std::str::from_utf8(&pending[..head_end - 4])
        .map_err(|_| ReadError::Bad("request head is not UTF-8"))?
        .to_string();
    // CR and LF only as the line ends already split on; no NUL or other
    // control character anywhere (a tab only inside a header value).
    let mut lines = head.split("\r\n");
    let first = lines.next().unwrap_or_default();
    if first.bytes().any(|b| b.is_ascii_control()) {
        return Err(ReadError::Bad("control character in the request line"));
    }
    let mut parts = first.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ReadError::Bad("malformed request line"));
    };
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err(ReadError::Bad("only HTTP/1.0 and HTTP/1.1"));
    }
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(ReadError::Bad("malformed method"));
    }
    // Origin form only (RFC 9112 3.2.1): a path, never a full URL.
    if !target.starts_with('/') {
        return Err(ReadError::Bad("the request target must be a path"));
    }
    let mut headers = Vec::new();
    for line in lines {
        if headers.len() == limits.headers {
            return Err(ReadError::TooManyHeaders);
        }
        if line.starts_with([' ', '\t']) {
            return Err(ReadError::Bad("folded header lines are not accepted"));
        }
        let (k, v) = line
            .split_once(':')
            .ok_or(ReadError::Bad("malformed header line"))?;
        // A token (RFC 9110 5.6.2); no space before the colon (9112 5.1).
        if k.is_empty() || !k.bytes().all(is_tchar) {
            return Err(ReadError::Bad("malformed header name"));
        }
        if v.bytes().any(|b| b.is_ascii_control() && b != b'\t') {
            return Err(ReadError::Bad("control character in a header value"));
        }
        headers.push((
            k.to_ascii_lowercase(),
            v.trim_matches([' ', '\t']).to_string(),
        ));
    }
    fn all<'h>(
        headers: &'h [(String, String)],
        name: &'static str,
    ) -> impl Iterator<Item = &'h str> {
        headers
            .iter()
            .filter(move |(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
    let get = |name: &'static str| all(&headers, name).next();
    if get("transfer-encoding").is_some() {
        return Err(ReadError::Bad(
            "chunked bodies are not accepted; send Content-Length",
        ));
    }
    // RFC 9112 6.3: digits only; several are accepted only when equal.
    let mut length = None;
    for v in all(&headers, "content-length") {
        if v.is_empty() || v.len() > 19 || !v.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ReadError::Bad("malformed Content-Length"));
        }
        let n: usize = v
            .parse()
            .map_err(|_| ReadError::Bad("malformed Content-Length"))?;
        if length.is_some_and(|l| l != n) {
            return Err(ReadError::Bad("differing Content-Length headers"));
        }
        length = Some(n);
    }
    let length = length.unwrap_or(0);
    if length > limits.body {
        return Err(ReadError::BodyTooLarge);
    }
    // RFC 9112 3.2: exactly one Host in HTTP/1.1.
    match all(&headers, "host").count() {
        0 if version == "HTTP/1.1" => return Err(ReadError::Bad("no Host header")),
        0 | 1 => {}
        _ => return Err(ReadError::Bad("more than one Host header")),
    }
    let connection = get("connection").map(str::to_ascii_lowercase);
    let keep_alive = match connection.as_deref() {
        Some(c) if c.contains("close") => false,
        Some(c) if c.contains("keep-alive") => true,
        _ => version == "HTTP/1.1",
    };
    while pending.len() < head_end + length {
        let n = match src.read_until(&mut chunk, deadline) {
            Ok(0) => return Err(ReadError::Bad("connection closed inside the body")),
            Ok(n) => n,
            Err(e) if timed_out(&e) => return Err(ReadError::Timeout),
            Err(_) => return Err(ReadError::Closed),
        };
        pending.extend_from_slice(&chunk[..n]);
    }
    let body = pending[head_end..head_end + length].to_vec();
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, q),
        None => (target, ""),
    };
    let path = decode(path).ok_or(ReadError::Bad("malformed percent-encoding"))?;
    let query = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            Some((decode(k)?, decode(v)?))
        })
        .collect::<Option<Vec<_>>>()
        .ok_or(ReadError::Bad("malformed percent-encoding"))?;
    let request = Request {
        method: method.to_string(),
        path,
        query,
        headers,
        body,
        keep_alive,
    };
    pending.drain(..head_end + length);
    Ok(request)
}

/// A socket read that ran into its timeout (reported as either kind).
fn timed_out(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
    )
}

/// The end of the head (just past its empty line) once it is in `buf`;
/// `searched` is how far an earlier call looked. A line ending in a bare
/// LF is refused at once (RFC 9112 2.2 allows either refusing it or reading
/// it as CRLF; a server and a proxy in front of it that disagree on it are
/// how requests get smuggled), as is a CR not followed by LF.
fn head_end(buf: &[u8], searched: &mut usize) -> Result<Option<usize>, ReadError> {
    let mut i = *searched;
    while i < buf.len() {
        match buf[i] {
            b'\n' if i == 0 || buf[i - 1] != b'\r' => {
                return Err(ReadError::Bad("a line ends in LF without CR"));
            }
            b'\r' if buf.get(i + 1).is_some_and(|&b| b != b'\n') => {
                return Err(ReadError::Bad("CR not followed by LF"));
            }
            b'\n' if i >= 3 && &buf[i - 3..=i] == b"\r\n\r\n" => return Ok(Some(i + 1)),
            _ => {}
        }
        i += 1;
    }
    // A CR at the very end is looked at again with what follows it.
    *searched = if buf.last() == Some(&b'\r') { i - 1 } else { i };
    Ok(None)
}

/// A header name's characters (RFC 9110 5.6.2 `tchar`).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Percent-decoding (`+` as a space, as forms send it); `None` when
/// malformed or not UTF-8.
pub fn decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Request, ReadError> {
        let mut pending = Vec::new();
        read_request(
            &mut text.as_bytes(),
            &mut pending,
            &Limits::default(),
            Duration::from_secs(1),
        )
    }

    #[test]
    fn a_get_with_query_and_headers() {
        let r = parse("GET /api/tags?filter=Line%201&x HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer  abc \r\n\r\n").unwrap();
        assert_eq!(r.method, "GET");
        assert_eq!(r.path, "/api/tags");
        assert_eq!(r.param("filter"), Some("Line 1"));
        assert_eq!(r.param("x"), Some(""));
        assert_eq!(r.header("authorization"), Some("Bearer  abc"));
        assert!(r.keep_alive);
    }

    #[test]
    fn bodies_and_pipelining() {
        let text = "POST /api/tags/A HTTP/1.1\r\nHost: a\r\nContent-Length: 13\r\n\r\n{\"value\": 42}GET / HTTP/1.0\r\n\r\n";
        let mut src = text.as_bytes();
        let mut pending = Vec::new();
        let l = Limits::default();
        let r = read_request(&mut src, &mut pending, &l, Duration::from_secs(1)).unwrap();
        assert_eq!(r.body, b"{\"value\": 42}");
        let r = read_request(&mut src, &mut pending, &l, Duration::from_secs(1)).unwrap();
        assert_eq!(r.path, "/");
        assert!(!r.keep_alive, "HTTP/1.0 closes by default");
        assert_eq!(
            read_request(&mut src, &mut pending, &l, Duration::from_secs(1)),
            Err(ReadError::Closed)
        );
    }

    #[test]
    fn limits_are_enforced() {
        let many: String = (0..40).map(|i| format!("X-{i}: y\r\n")).collect();
        assert_eq!(
            parse(&format!("GET / HTTP/1.1\r\n{many}\r\n")),
            Err(ReadError::TooManyHeaders)
        );
        let long = "a".repeat(9000);
        assert_eq!(
            parse(&format!("GET /{long} HTTP/1.1\r\n\r\n")),
            Err(ReadError::HeadTooLarge)
        );
        assert_eq!(
            parse("POST / HTTP/1.1\r\nContent-Length: 5000\r\n\r\n"),
            Err(ReadError::BodyTooLarge)
        );
        assert!(matches!(
            parse("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Err(ReadError::Bad(_))
        ));
        assert!(matches!(parse("GET /\r\n\r\n"), Err(ReadError::Bad(_))));
        assert!(matches!(
            parse("GET /%zz HTTP/1.1\r\nHost: a\r\n\r\n"),
            Err(ReadError::Bad(_))
        ));
    }

    #[test]
    fn framing_is_read_strictly() {
        let bad = |text: &str, why: &'static str| {
            assert_eq!(parse(text), Err(ReadError::Bad(why)), "{text:?}");
        };
        bad(
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
            "differing Content-Length headers",
        );
        for length in ["+5", "-1", "0x5", "5, 5", " ", "99999999999999999999"] {
            bad(
                &format!("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: {length}\r\n\r\n12345"),
                "malformed Content-Length",
            );
        }
        bad("GET / HTTP/1.1\r\n\r\n", "no Host header");
        bad(
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "more than one Host header",
        );
        bad(
            "GET / HTTP/1.1\nHost: a\n\n",
            "a line ends in LF without CR",
        );
        bad(
            "GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n",
            "CR not followed by LF",
        );
        bad(
            "GET / HTTP/1.1\r\nHost: a\r\nX: a\0b\r\n\r\n",
            "control character in a header value",
        );
        bad(
            "GET / HTTP/1.1\r\nHost: a\r\n b\r\n\r\n",
            "folded header lines are not accepted",
        );
        bad(
            "GET / HTTP/1.1\r\nHost : a\r\n\r\n",
            "malformed header name",
        );
        bad(
            "GET http://x/ HTTP/1.1\r\nHost: a\r\n\r\n",
            "the request target must be a path",
        );
        // Equal lengths are one; a tab in a value is fine; HTTP/1.0 needs no Host.
        let r = parse("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nContent-Length: 2\r\nX: a\tb\r\n\r\nok").unwrap();
        assert_eq!(r.body, b"ok");
        assert_eq!(r.header("x"), Some("a\tb"));
        assert!(parse("GET / HTTP/1.0\r\n\r\n").is_ok());
    }

    #[test]
    fn a_bare_lf_is_seen_however_the_bytes_arrive() {
        // One byte at a time: the check must not depend on where reads end.
        let text = b"GET / HTTP/1.1\r\nHost: a\n\r\n";
        let mut searched = 0;
        let mut seen = Vec::new();
        let mut result = Ok(None);
        for &b in text {
            seen.push(b);
            result = head_end(&seen, &mut searched);
            if result.is_err() {
                break;
            }
        }
        assert_eq!(result, Err(ReadError::Bad("a line ends in LF without CR")));
        let mut searched = 0;
        let ok = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        let mut found = None;
        for n in 1..=ok.len() {
            if let Some(end) = head_end(&ok[..n], &mut searched).unwrap() {
                found = Some(end);
                break;
            }
        }
        assert_eq!(found, Some(ok.len()));
    }
}
