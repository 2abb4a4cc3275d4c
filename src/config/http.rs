//! The `http` section → [`HttpConfig`] (the server is off without it).

use super::read::{Doc, Fields};
use super::ron_index::Node;
use crate::http::HttpConfig;
use crate::http::tls::TlsFiles;

const KEYS: &[&str] = &[
    "listen",
    "token",
    "writes",
    "max_connections",
    "hosts",
    "tls",
];

/// Reads the section.
pub fn read(doc: &mut Doc, node: &Node) -> Option<HttpConfig> {
    let mut f = Fields::of(doc, node, "http".into())?;
    let listen: String = f
        .get(doc, "listen")
        .unwrap_or_else(|| "127.0.0.1:8080".into());
    let token: Option<String> = f.get(doc, "token");
    let writes: bool = f.get(doc, "writes").unwrap_or(false);
    let max_connections: usize = f.get(doc, "max_connections").unwrap_or(16);
    let listen = match listen.parse() {
        Ok(a) => Some(a),
        Err(_) => {
            let at = f.at("listen");
            doc.error(
                at,
                format!(
                    "http `listen`: `{listen}` is not an address and port (e.g. 127.0.0.1:8080, 0.0.0.0:8080)"
                ),
            );
            None
        }
    };
    if let Some(t) = &token
        && (t.len() < 16 || t.chars().any(|c| c.is_whitespace() || c.is_control()))
    {
        let at = f.at("token");
        doc.error(
            at,
            "http `token`: must be at least 16 characters without spaces",
        );
    }
    if writes && token.is_none() {
        let at = f.at("writes");
        doc.error(
            at,
            "http `writes`: needs a token: writes are never allowed without authentication",
        );
    }
    if max_connections == 0 || max_connections > 1024 {
        let at = f.at("max_connections");
        doc.error(
            at,
            format!("http `max_connections`: {max_connections} is outside 1..=1024"),
        );
    }
    let hosts: Vec<String> = f.get(doc, "hosts").unwrap_or_default();
    let mut names = Vec::new();
    for h in &hosts {
        match crate::http::host_name(h) {
            Some(n) if n == *h.to_ascii_lowercase() => names.push(n),
            _ => {
                let at = f.at("hosts");
                doc.error(
                    at,
                    format!(
                        "http `hosts`: `{h}` is not a host name (letters, digits, `-`, `.`; no port, no scheme)"
                    ),
                );
            }
        }
    }
    let tls = f.node("tls").and_then(|node| {
        let mut t = Fields::of(doc, node, "http `tls`".into())?;
        let cert: Option<String> = t.get(doc, "cert");
        let key: Option<String> = t.get(doc, "key");
        let start = t.start();
        t.finish(doc, &["cert", "key"]);
        let (Some(cert), Some(key)) = (cert, key) else {
            doc.error(start, "http `tls`: needs `cert` and `key` (PEM files)");
            return None;
        };
        let files = TlsFiles {
            cert: doc.base.join(cert),
            key: doc.base.join(key),
        };
        // Checked now, so that `rtds check` says it. When neither file is
        // there, RTDS makes a self-signed pair at start (`rtds cert --http`
        // makes it on demand).
        if (files.cert.exists() || files.key.exists())
            && let Err(e) = crate::http::tls::server_config(&files)
        {
            doc.error(start, format!("http `tls`: {e}"));
        }
        Some(files)
    });
    if let Some(a) = &listen
        && !std::net::SocketAddr::ip(a).is_loopback()
        && token.is_none()
    {
        let at = f.at("listen");
        doc.error(
            at,
            format!(
                "http `listen`: {a} is reachable from other machines: set a `token` (16 characters or more)"
            ),
        );
    }
    f.finish(doc, KEYS);
    Some(HttpConfig {
        listen: listen?,
        token,
        writes,
        max_connections,
        hosts: names,
        tls,
    })
}
