//! A self-signed certificate for the status server's HTTPS, for
//! commissioning (`rtds cert --http`): an ECDSA P-256 key made and used
//! with ring (already linked for TLS), and the X.509 v3 certificate written
//! here in DER, a few dozen lines, rather than a certificate crate for one
//! command. It names the gateway by DNS names and addresses
//! (subjectAltName, which browsers require) and is valid for `days`.
//! Plant IT with its own CA replaces the two files with its own.

use chrono::{DateTime, Datelike, Utc};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair};
use std::net::IpAddr;

/// A certificate and its key, PEM.
#[derive(Debug)]
pub struct Pair {
    /// The certificate.
    pub cert_pem: String,
    /// Its key, PKCS#8 (keep it readable only by RTDS).
    pub key_pem: String,
    /// SHA-256 of the certificate, `AB:CD:…`, to compare in a browser.
    pub fingerprint: String,
}

/// A new key and a self-signed certificate for `names` (DNS names or
/// addresses; the first is also the subject's common name), valid from a
/// day before `now` for `days`.
pub fn self_signed(names: &[String], now: DateTime<Utc>, days: i64) -> Result<Pair, String> {
    let rng = SystemRandom::new();
    let alg = &ECDSA_P256_SHA256_ASN1_SIGNING;
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).map_err(|_| "no key: no randomness")?;
    let key = EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).map_err(|e| e.to_string())?;
    let mut serial = [0u8; 16];
    ring::rand::SecureRandom::fill(&rng, &mut serial).map_err(|_| "no randomness")?;
    serial[0] &= 0x7f; // positive
    serial[0] |= 0x40; // and no leading zero byte to strip
    let tbs = tbs(names, &serial, key.public_key().as_ref(), now, days)?;
    let signature = key.sign(&rng, &tbs).map_err(|_| "signing failed")?;
    let cert = der(
        0x30,
        &[
            tbs.as_slice(),
            &ecdsa_sha256(),
            &bit_string(signature.as_ref()),
        ]
        .concat(),
    );
    let digest = ring::digest::digest(&ring::digest::SHA256, &cert);
    Ok(Pair {
        cert_pem: pem("CERTIFICATE", &cert),
        key_pem: pem("PRIVATE KEY", pkcs8.as_ref()),
        fingerprint: digest
            .as_ref()
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect::<Vec<_>>()
            .join(":"),
    })
}

/// The to-be-signed part (RFC 5280 4.1).
fn tbs(
    names: &[String],
    serial: &[u8],
    public_key: &[u8],
    now: DateTime<Utc>,
    days: i64,
) -> Result<Vec<u8>, String> {
    let first = names.first().ok_or("no name for the certificate")?;
    let subject = der(
        0x30,
        &der(
            0x31,
            &der(
                0x30,
                &[oid(&[2, 5, 4, 3]), der(0x0c, first.as_bytes())].concat(),
            ),
        ),
    );
    let validity = der(
        0x30,
        &[
            time(now - chrono::Duration::days(1)),
            time(now + chrono::Duration::days(days)),
        ]
        .concat(),
    );
    let spki = der(
        0x30,
        &[
            der(
                0x30,
                &[
                    oid(&[1, 2, 840, 10045, 2, 1]),    // id-ecPublicKey
                    oid(&[1, 2, 840, 10045, 3, 1, 7]), // prime256v1
                ]
                .concat(),
            ),
            bit_string(public_key),
        ]
        .concat(),
    );
    let mut alt = Vec::new();
    for n in names {
        match n.trim_matches(['[', ']']).parse::<IpAddr>() {
            Ok(IpAddr::V4(a)) => alt.extend(der(0x87, &a.octets())),
            Ok(IpAddr::V6(a)) => alt.extend(der(0x87, &a.octets())),
            Err(_) if n.is_ascii() && !n.is_empty() => alt.extend(der(0x82, n.as_bytes())),
            Err(_) => return Err(format!("`{n}` is neither a DNS name nor an address")),
        }
    }
    let extension = |id: &[u64], critical: bool, value: Vec<u8>| {
        let flag = if critical {
            der(0x01, &[0xff])
        } else {
            Vec::new()
        };
        der(0x30, &[oid(id), flag, der(0x04, &value)].concat())
    };
    let extensions = [
        // subjectAltName
        extension(&[2, 5, 29, 17], false, der(0x30, &alt)),
        // keyUsage: digitalSignature
        extension(&[2, 5, 29, 15], true, der(0x03, &[0x07, 0x80])),
        // extKeyUsage: serverAuth
        extension(
            &[2, 5, 29, 37],
            false,
            der(0x30, &oid(&[1, 3, 6, 1, 5, 5, 7, 3, 1])),
        ),
    ]
    .concat();
    Ok(der(
        0x30,
        &[
            der(0xa0, &der(0x02, &[2])), // version 3
            der(0x02, serial),
            ecdsa_sha256(),
            subject.clone(), // issuer: itself
            validity,
            subject,
            spki,
            der(0xa3, &der(0x30, &extensions)),
        ]
        .concat(),
    ))
}

fn ecdsa_sha256() -> Vec<u8> {
    der(0x30, &oid(&[1, 2, 840, 10045, 4, 3, 2]))
}

/// UTCTime through 2049, GeneralizedTime after (RFC 5280 4.1.2.5).
fn time(t: DateTime<Utc>) -> Vec<u8> {
    if t.year() < 2050 {
        der(0x17, t.format("%y%m%d%H%M%SZ").to_string().as_bytes())
    } else {
        der(0x18, t.format("%Y%m%d%H%M%SZ").to_string().as_bytes())
    }
}

fn bit_string(bytes: &[u8]) -> Vec<u8> {
    der(0x03, &[&[0u8][..], bytes].concat())
}

fn oid(arcs: &[u64]) -> Vec<u8> {
    let mut body = vec![(arcs[0] * 40 + arcs[1]) as u8];
    for &a in &arcs[2..] {
        let mut septets = vec![(a & 0x7f) as u8];
        let mut rest = a >> 7;
        while rest > 0 {
            septets.push((rest & 0x7f) as u8 | 0x80);
            rest >>= 7;
        }
        body.extend(septets.iter().rev());
    }
    der(0x06, &body)
}

/// One DER element: tag, definite length, content.
fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let n = content.len();
    if n < 0x80 {
        out.push(n as u8);
    } else {
        let bytes: Vec<u8> = n
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(content);
    out
}

fn pem(label: &str, der: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::new();
    for chunk in der.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, b)| acc | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                b64.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                b64.push('=');
            }
        }
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_lengths_and_oids_match_the_x690_examples() {
        assert_eq!(der(0x04, &[1, 2]), [0x04, 2, 1, 2]);
        let long = der(0x04, &[0u8; 300]);
        assert_eq!(&long[..4], &[0x04, 0x82, 0x01, 0x2c]);
        // 1.2.840.113549 is 06 06 2A 86 48 86 F7 0D (X.690 8.19 example form).
        assert_eq!(
            oid(&[1, 2, 840, 113549]),
            [0x06, 0x06, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d]
        );
        assert_eq!(pem("X", b"Man").lines().nth(1), Some("TWFu"));
        assert_eq!(pem("X", b"Ma").lines().nth(1), Some("TWE="));
    }

    #[test]
    fn a_pair_is_accepted_by_rustls() {
        let dir = std::env::temp_dir().join(format!("rtds-cert-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let names = ["gw.example".to_string(), "127.0.0.1".into(), "::1".into()];
        let pair = self_signed(&names, Utc::now(), 365).unwrap();
        let files = super::super::tls::TlsFiles {
            cert: dir.join("c.pem"),
            key: dir.join("k.pem"),
        };
        std::fs::write(&files.cert, &pair.cert_pem).unwrap();
        std::fs::write(&files.key, &pair.key_pem).unwrap();
        super::super::tls::server_config(&files).expect("the pair loads");
        assert_eq!(pair.fingerprint.len(), 32 * 3 - 1);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
