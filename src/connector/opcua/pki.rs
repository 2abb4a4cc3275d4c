//! RTDS's own OPC UA certificate and the servers it trusts.
//!
//! The layout is the one UaExpert and most OPC UA stacks use, so a plant
//! admin recognises it:
//!
//! ```text
//! pki/own/rtds.der           RTDS's application certificate (give it to the server)
//! pki/own/private/rtds.der   its private key (mode 0600)
//! pki/trusted/               server certificates RTDS trusts (.der or .pem)
//! pki/rejected/              server certificates RTDS refused, named by thumbprint
//! ```
//!
//! A server certificate is trusted when the very same certificate lies in
//! `trusted/` (pinning, the common practice with self-signed server
//! certificates): to accept a server, move its file from `rejected/` to
//! `trusted/`. Certificate authorities and revocation lists are not
//! evaluated.

use open62541::{Certificate, CustomCertificateVerification, PrivateKey, ua};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// RTDS's certificate file under the PKI directory.
pub fn own_certificate(pki: &Path) -> PathBuf {
    pki.join("own").join("rtds.der")
}

/// RTDS's private key file under the PKI directory.
pub fn own_key(pki: &Path) -> PathBuf {
    pki.join("own").join("private").join("rtds.der")
}

/// Loads RTDS's certificate and key, creating them on first use
/// (RSA 2048, valid ten years, application URI `uri`). Returns whether
/// they were created.
pub fn own_identity(pki: &Path, uri: &str) -> Result<(Certificate, PrivateKey, bool), String> {
    let (cert_path, key_path) = (own_certificate(pki), own_key(pki));
    if cert_path.is_file() && key_path.is_file() {
        let cert = fs::read(&cert_path).map_err(|e| format!("{}: {e}", cert_path.display()))?;
        let key = fs::read(&key_path).map_err(|e| format!("{}: {e}", key_path.display()))?;
        return Ok((
            Certificate::from_bytes(&cert),
            PrivateKey::from_bytes(&key),
            false,
        ));
    }
    let host = super::settings::host_name();
    let subject = ua::Array::from_slice(&[
        ua::String::new("O=RTDS").map_err(|e| e.to_string())?,
        ua::String::new(&format!("CN=RTDS@{host}")).map_err(|e| e.to_string())?,
    ]);
    let alt = ua::Array::from_slice(&[
        ua::String::new(&format!("DNS:{host}")).map_err(|e| e.to_string())?,
        ua::String::new(&format!("URI:{uri}")).map_err(|e| e.to_string())?,
    ]);
    let params = ua::KeyValueMap::from_slice(&[
        (
            &ua::QualifiedName::new(0, "key-size-bits"),
            &ua::Variant::scalar(ua::UInt16::new(2048)),
        ),
        (
            &ua::QualifiedName::new(0, "expires-in-days"),
            &ua::Variant::scalar(ua::UInt16::new(3650)),
        ),
    ]);
    let (cert, key) =
        open62541::create_certificate(&subject, &alt, &ua::CertificateFormat::DER, Some(&params))
            .map_err(|e| format!("creating RTDS's OPC UA certificate: {e}"))?;
    write_new(&cert_path, cert.as_bytes(), 0o644)?;
    write_new(&key_path, key.as_bytes(), 0o600)?;
    make_trust_dirs(pki);
    Ok((cert, key, true))
}

/// Creates `trusted/` and `rejected/`, so "move the file into trusted/"
/// needs no `mkdir` (a failure shows later, where the folder is used).
fn make_trust_dirs(pki: &Path) {
    for dir in ["trusted", "rejected"] {
        let _ = fs::create_dir_all(pki.join(dir));
    }
}

/// Writes a file through a temporary name, with `mode`, creating parents.
/// The temporary name is the writer's own (process and a counter), so two
/// connectors saving the same server's certificate into one PKI folder
/// at once do not trip over each other's file.
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), String> {
    use std::os::unix::fs::OpenOptionsExt;
    let fail = |e: std::io::Error| format!("{}: {e}", path.display());
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(fail)?;
    }
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = path.with_extension(format!("{}-{n}.tmp", std::process::id()));
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(fail)?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(fail)?;
    fs::rename(&tmp, path).map_err(fail)
}

/// The server certificate the last handshake refused, if any, for the
/// connector's error message.
pub type Refusal = Arc<Mutex<Option<String>>>;

/// Trusts exactly the certificates in `trusted/`; saves any other in
/// `rejected/` and records why.
pub struct TrustDir {
    pki: PathBuf,
    refusal: Refusal,
}

impl TrustDir {
    /// A verifier over `pki`, reporting refusals into `refusal`.
    pub fn new(pki: &Path, refusal: Refusal) -> TrustDir {
        TrustDir {
            pki: pki.to_path_buf(),
            refusal,
        }
    }
}

impl CustomCertificateVerification for TrustDir {
    fn verify_certificate(&self, certificate: &ua::ByteString) -> ua::StatusCode {
        let der = certificate.as_bytes().unwrap_or_default();
        make_trust_dirs(&self.pki);
        if trusted(&self.pki.join("trusted"), der) {
            return ua::StatusCode::GOOD;
        }
        let thumb = thumbprint(der);
        let rejected = self.pki.join("rejected");
        let file = rejected.join(format!("{thumb}.der"));
        let saved = write_new(&file, der, 0o644);
        let message = match saved {
            Ok(()) => format!(
                "the server's certificate (SHA-1 thumbprint {thumb}) is not trusted; it was saved as {}: to trust this server, move that file into {}",
                file.display(),
                self.pki.join("trusted").display()
            ),
            Err(e) => format!(
                "the server's certificate (SHA-1 thumbprint {thumb}) is not trusted, and saving it failed ({e}): put the server's certificate into {}",
                self.pki.join("trusted").display()
            ),
        };
        if let Ok(mut r) = self.refusal.lock() {
            *r = Some(message);
        }
        ua::StatusCode::BADCERTIFICATEUNTRUSTED
    }
}

/// Whether `der` is one of the certificates (DER or PEM) in `dir`.
fn trusted(dir: &Path, der: &[u8]) -> bool {
    let Ok(entries) = fs::read_dir(dir) else {
        return false;
    };
    entries.flatten().any(|e| {
        let Ok(bytes) = fs::read(e.path()) else {
            return false;
        };
        bytes == der || pem_blocks(&bytes).iter().any(|b| b == der)
    })
}

/// The base64 bodies of a PEM file's `-----BEGIN …-----` blocks, decoded.
fn pem_blocks(text: &[u8]) -> Vec<Vec<u8>> {
    let Ok(text) = std::str::from_utf8(text) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut body: Option<String> = None;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with("-----BEGIN") {
            body = Some(String::new());
        } else if line.starts_with("-----END") {
            if let Some(b) = body.take()
                && let Some(bytes) = base64(&b)
            {
                out.push(bytes);
            }
        } else if let Some(b) = body.as_mut() {
            b.push_str(line);
        }
    }
    out
}

/// Standard base64 (RFC 4648), padding optional; `None` on a bad character.
fn base64(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0);
    for c in text.bytes().filter(|c| *c != b'=') {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

/// The certificate's SHA-1 thumbprint in upper-case hex, as OPC UA tools
/// (and the servers' own certificate pages) show it.
pub fn thumbprint(der: &[u8]) -> String {
    sha1(der).iter().map(|b| format!("{b:02X}")).collect()
}

/// SHA-1 (FIPS 180-4). Only names certificate files and matches what
/// OPC UA tools display; trust itself compares whole certificates.
fn sha1(data: &[u8]) -> [u8; 20] {
    let mut h: [u32; 5] = [
        0x6745_2301,
        0xEFCD_AB89,
        0x98BA_DCFE,
        0x1032_5476,
        0xC3D2_E1F0,
    ];
    let mut msg = data.to_vec();
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&((data.len() as u64) * 8).to_be_bytes());
    for block in msg.chunks(64) {
        let mut w = [0u32; 80];
        for (i, word) in block.chunks(4).enumerate() {
            w[i] = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
        }
        for i in 16..80 {
            w[i] = (w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16]).rotate_left(1);
        }
        let [mut a, mut b, mut c, mut d, mut e] = h;
        for (i, wi) in w.iter().enumerate() {
            let (f, k) = match i {
                0..=19 => ((b & c) | (!b & d), 0x5A82_7999),
                20..=39 => (b ^ c ^ d, 0x6ED9_EBA1),
                40..=59 => ((b & c) | (b & d) | (c & d), 0x8F1B_BCDC),
                _ => (b ^ c ^ d, 0xCA62_C1D6),
            };
            let t = a
                .rotate_left(5)
                .wrapping_add(f)
                .wrapping_add(e)
                .wrapping_add(k)
                .wrapping_add(*wi);
            e = d;
            d = c;
            c = b.rotate_left(30);
            b = a;
            a = t;
        }
        for (x, y) in h.iter_mut().zip([a, b, c, d, e]) {
            *x = x.wrapping_add(y);
        }
    }
    let mut out = [0u8; 20];
    for (i, x) in h.iter().enumerate() {
        out[i * 4..i * 4 + 4].copy_from_slice(&x.to_be_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha1_matches_the_fips_examples() {
        // FIPS 180-4 / RFC 3174 test vectors.
        assert_eq!(
            thumbprint(b"abc"),
            "A9993E364706816ABA3E25717850C26C9CD0D89D"
        );
        assert_eq!(
            thumbprint(b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
            "84983E441C3BD26EBAAE4AA1F95129E5E54670F1"
        );
        assert_eq!(thumbprint(b""), "DA39A3EE5E6B4B0D3255BFEF95601890AFD80709");
    }

    #[test]
    fn pem_bodies_decode() {
        let pem = b"junk\n-----BEGIN CERTIFICATE-----\nTWFu\naGVsbG8=\n-----END CERTIFICATE-----\n";
        assert_eq!(pem_blocks(pem), vec![b"Manhello".to_vec()]);
        assert_eq!(base64("TQ=="), Some(b"M".to_vec()));
        assert_eq!(base64("T*=="), None);
    }
}
