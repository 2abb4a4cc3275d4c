//! `connector=OpcUa` settings: the connection string's keys, their
//! defaults, and the tags' node ids and types, all validated before any
//! connection is tried.

use crate::connector::{Params, SetupError};
use crate::model::Value;
use crate::tag::TagConfig;
use open62541::ua;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Keys `connector=OpcUa` accepts (README: "connector=OpcUa").
pub const KEYS: &[&str] = &[
    "endpoint",
    "timeout",
    "mode",
    "sampling_ms",
    "publish_ms",
    "queue_size",
    "deadband",
    "security",
    "policy",
    "pki",
    "trust_all",
    "application_uri",
    "user",
    "password",
    "timestamps",
    "max_nodes_per_read",
    "retry_min",
    "retry_max",
];

/// Which time stamp a value is stored with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stamp {
    /// The source's (the device's) time stamp, the server's when absent.
    Source,
    /// The server's time stamp.
    Server,
}

/// The type a tag is written as (the node's data type).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UaType {
    /// Boolean.
    Boolean,
    /// SByte.
    SByte,
    /// Byte.
    Byte,
    /// Int16.
    Int16,
    /// UInt16.
    UInt16,
    /// Int32.
    Int32,
    /// UInt32.
    UInt32,
    /// Int64.
    Int64,
    /// UInt64.
    UInt64,
    /// Float.
    Float,
    /// Double.
    Double,
    /// String.
    String,
    /// DateTime (written from an RFC 3339 text, read as one).
    DateTime,
    /// ByteString, as lowercase hex text (`0a1b`), both ways.
    ByteString,
    /// LocalizedText, read as the JSON text `{"locale":"en","text":"Run"}`
    /// (the locale kept beside the text); not writable.
    LocalizedText,
}

impl UaType {
    const ALL: [UaType; 15] = [
        UaType::Boolean,
        UaType::SByte,
        UaType::Byte,
        UaType::Int16,
        UaType::UInt16,
        UaType::Int32,
        UaType::UInt32,
        UaType::Int64,
        UaType::UInt64,
        UaType::Float,
        UaType::Double,
        UaType::String,
        UaType::DateTime,
        UaType::ByteString,
        UaType::LocalizedText,
    ];

    /// `Int32`, or `Int32[]` for an array (the flag).
    pub(super) fn parse(text: &str) -> Result<(UaType, bool), String> {
        let t = text.trim();
        let (base, array) = match t.strip_suffix("[]") {
            Some(b) => (b.trim(), true),
            None => (t, false),
        };
        let short = match base.to_ascii_lowercase().as_str() {
            "bool" => "boolean",
            "i16" => "int16",
            "u16" => "uint16",
            "i32" => "int32",
            "u32" => "uint32",
            "i64" => "int64",
            "u64" => "uint64",
            "f32" => "float",
            "f64" => "double",
            _ => "",
        };
        UaType::ALL
            .into_iter()
            .find(|u| u.name().eq_ignore_ascii_case(base) || u.name().eq_ignore_ascii_case(short))
            .map(|u| (u, array))
            .ok_or_else(|| {
                format!(
                    "unknown OPC UA type `{text}` ({}; `[]` after one for an array)",
                    UaType::names_list()
                )
            })
    }

    /// Every type's name, for messages: `Boolean, SByte, … LocalizedText`.
    pub fn names_list() -> String {
        UaType::ALL.map(UaType::name).join(", ")
    }

    /// The name stored in the tags table.
    pub fn name(self) -> &'static str {
        self.names().0
    }

    /// The array type's name, `Int32[]`.
    pub fn array_name(self) -> &'static str {
        self.names().1
    }

    fn names(self) -> (&'static str, &'static str) {
        match self {
            UaType::Boolean => ("Boolean", "Boolean[]"),
            UaType::SByte => ("SByte", "SByte[]"),
            UaType::Byte => ("Byte", "Byte[]"),
            UaType::Int16 => ("Int16", "Int16[]"),
            UaType::UInt16 => ("UInt16", "UInt16[]"),
            UaType::Int32 => ("Int32", "Int32[]"),
            UaType::UInt32 => ("UInt32", "UInt32[]"),
            UaType::Int64 => ("Int64", "Int64[]"),
            UaType::UInt64 => ("UInt64", "UInt64[]"),
            UaType::Float => ("Float", "Float[]"),
            UaType::Double => ("Double", "Double[]"),
            UaType::String => ("String", "String[]"),
            UaType::DateTime => ("DateTime", "DateTime[]"),
            UaType::ByteString => ("ByteString", "ByteString[]"),
            UaType::LocalizedText => ("LocalizedText", "LocalizedText[]"),
        }
    }

    /// The value as a variant of this type (an array of it when `array`),
    /// exactly, or why not: integers never pass through a float.
    pub(super) fn variant(self, v: &Value, array: bool) -> Result<ua::Variant, String> {
        macro_rules! build {
            ($ua:ident, $conv:expr) => {{
                let conv = $conv;
                if array {
                    let Value::Array(items) = v else {
                        return Err(format!(
                            "{v} is not an array (the node is {})",
                            self.array_name()
                        ));
                    };
                    let xs = items
                        .iter()
                        .map(|x| conv(x).map(ua::$ua::new))
                        .collect::<Result<Vec<_>, String>>()?;
                    ua::Variant::array(ua::Array::from_slice(&xs))
                } else {
                    ua::Variant::scalar(ua::$ua::new(conv(v)?))
                }
            }};
        }
        macro_rules! ranged {
            ($t:ty, $ua:ident) => {
                build!($ua, |x: &Value| -> Result<$t, String> {
                    <$t>::try_from(self.int(x)?)
                        .map_err(|_| format!("{x} does not fit {}", self.name()))
                })
            };
        }
        Ok(match self {
            UaType::Boolean => build!(Boolean, |x: &Value| match x {
                Value::Bool(b) => Ok(*b),
                Value::Int(i @ (0 | 1)) => Ok(*i == 1),
                other => Err(format!("cannot write {other} to a Boolean node")),
            }),
            UaType::SByte => ranged!(i8, SByte),
            UaType::Byte => ranged!(u8, Byte),
            UaType::Int16 => ranged!(i16, Int16),
            UaType::UInt16 => ranged!(u16, UInt16),
            UaType::Int32 => ranged!(i32, Int32),
            UaType::UInt32 => ranged!(u32, UInt32),
            UaType::Int64 => ranged!(i64, Int64),
            UaType::UInt64 => ranged!(u64, UInt64),
            UaType::Float => build!(Float, |x: &Value| {
                let f = self.float(x)?;
                if f.abs() > f64::from(f32::MAX) {
                    return Err(format!("{x} does not fit Float"));
                }
                Ok(f as f32)
            }),
            UaType::Double => build!(Double, |x: &Value| self.float(x)),
            UaType::String => {
                let text = |x: &Value| match x {
                    Value::Str(s) => ua::String::new(s).map_err(|e| format!("string `{s}`: {e}")),
                    other => Err(format!("cannot write {other} to a String node")),
                };
                if array {
                    let Value::Array(items) = v else {
                        return Err(format!("{v} is not an array (the node is String[])"));
                    };
                    let xs = items.iter().map(text).collect::<Result<Vec<_>, _>>()?;
                    ua::Variant::array(ua::Array::from_slice(&xs))
                } else {
                    ua::Variant::scalar(text(v)?)
                }
            }
            UaType::ByteString => {
                let bytes = |x: &Value| match x {
                    Value::Str(s) => hex_bytes(s).map(|b| ua::ByteString::new(&b)),
                    other => Err(format!(
                        "cannot write {other} to a ByteString node (give hex text such as \"0a1b\")"
                    )),
                };
                if array {
                    let Value::Array(items) = v else {
                        return Err(format!("{v} is not an array (the node is ByteString[])"));
                    };
                    let xs = items.iter().map(bytes).collect::<Result<Vec<_>, _>>()?;
                    ua::Variant::array(ua::Array::from_slice(&xs))
                } else {
                    ua::Variant::scalar(bytes(v)?)
                }
            }
            UaType::LocalizedText => {
                return Err("LocalizedText nodes are read-only in RTDS".into());
            }
            UaType::DateTime => {
                let stamp = |x: &Value| match x {
                    Value::Str(s) => chrono::DateTime::parse_from_rfc3339(s.trim())
                        .map_err(|e| format!("`{s}` is not an RFC 3339 time ({e})"))
                        .and_then(|t| {
                            let nanos = t.timestamp_nanos_opt().ok_or("out of range")?;
                            ua::DateTime::try_from_unix_timestamp_nanos(i128::from(nanos))
                                .map_err(|e| e.to_string())
                        }),
                    other => Err(format!(
                        "cannot write {other} to a DateTime node (give a time such as 2026-11-24T06:00:00Z)"
                    )),
                };
                if array {
                    let Value::Array(items) = v else {
                        return Err(format!("{v} is not an array (the node is DateTime[])"));
                    };
                    let xs = items.iter().map(stamp).collect::<Result<Vec<_>, _>>()?;
                    ua::Variant::array(ua::Array::from_slice(&xs))
                } else {
                    ua::Variant::scalar(stamp(v)?)
                }
            }
        })
    }

    /// A whole number, exactly (a float only when integral and in range).
    fn int(self, v: &Value) -> Result<i128, String> {
        match v {
            Value::Int(i) => Ok(i128::from(*i)),
            Value::UInt(u) => Ok(i128::from(*u)),
            Value::Bool(b) => Ok(i128::from(*b)),
            Value::Float(f) if f.is_finite() && f.fract() == 0.0 && f.abs() < 1.7e38 => {
                Ok(*f as i128)
            }
            Value::Str(s) => s
                .trim()
                .parse::<i128>()
                .map_err(|_| format!("cannot write text `{s}` to a {} node", self.name())),
            other => Err(format!("cannot write {other} to a {} node", self.name())),
        }
    }

    /// A finite number.
    fn float(self, v: &Value) -> Result<f64, String> {
        match v {
            Value::Float(f) if f.is_finite() => Ok(*f),
            Value::Int(_) | Value::UInt(_) => Ok(v.as_f64().unwrap_or(f64::NAN)),
            Value::Float(_) => Err(format!("{v} is not a finite number")),
            other => Err(format!("cannot write {other} to a {} node", self.name())),
        }
    }
}

/// The bytes of hex text (`0a1B`, even length), or why not.
fn hex_bytes(text: &str) -> Result<Vec<u8>, String> {
    let t = text.trim();
    if !t.len().is_multiple_of(2) || !t.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("`{text}` is not hex text (two digits a byte)"));
    }
    (0..t.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&t[i..i + 2], 16).map_err(|e| e.to_string()))
        .collect()
}

/// How values come from the server.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    /// One Read call per scan (split by MaxNodesPerRead).
    Poll,
    /// A subscription: the server sends changes, the scan takes what came.
    Subscribe {
        /// How often the server samples each node.
        sampling: Duration,
        /// How often the server sends what changed.
        publish: Duration,
        /// Changes the server keeps per node between two publishes.
        queue_size: u32,
        /// Absolute data-change deadband (0: every change).
        deadband: f64,
    },
}

/// Message security of the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecurityMode {
    /// Plain text.
    None,
    /// Signed.
    Sign,
    /// Signed and encrypted.
    SignAndEncrypt,
}

/// The security policies open62541 offers a client.
pub const POLICIES: &[&str] = &[
    "Basic256Sha256",
    "Aes128_Sha256_RsaOaep",
    "Aes256_Sha256_RsaPss",
    "Basic256",
    "Basic128Rsa15",
];

/// Where RTDS keeps its certificates and whom it trusts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Security {
    /// None, Sign or SignAndEncrypt.
    pub mode: SecurityMode,
    /// Policy name (one of [`POLICIES`]; `None` with mode None).
    pub policy: &'static str,
    /// The PKI directory: `own/` (RTDS's certificate and key), `trusted/`
    /// and `rejected/` (server certificates).
    pub pki: PathBuf,
    /// Trust any server certificate: for tests, never for a plant.
    pub trust_all: bool,
    /// RTDS's application URI, also in its certificate.
    pub application_uri: String,
}

/// One tag: its node and how to write it.
#[derive(Debug, Clone)]
pub struct UaTag {
    /// Name, for logs.
    pub name: std::sync::Arc<str>,
    /// The node id as written (`ns=2;s=Line1.Temp`).
    pub node: String,
    /// Type for writes (required when writable).
    pub data_type: Option<UaType>,
    /// Whether the node holds an array of `data_type`.
    pub array: bool,
    /// Whether scripts may write it.
    pub writable: bool,
}

/// Validated `connector=OpcUa` settings.
#[derive(Debug, Clone)]
pub struct OpcUaConfig {
    /// `opc.tcp://host:port/path`.
    pub endpoint: String,
    /// Response timeout (5 s).
    pub timeout: Duration,
    /// Poll (default) or subscribe.
    pub mode: Mode,
    /// Security settings.
    pub security: Security,
    /// User name and password; anonymous when absent.
    pub user: Option<(String, String)>,
    /// Which time stamp is stored (source).
    pub stamp: Stamp,
    /// Nodes per Read call; 0: as the server's MaxNodesPerRead says.
    pub max_nodes_per_read: u32,
    /// First reconnect delay (1 s).
    pub retry_min: Duration,
    /// Longest reconnect delay (60 s).
    pub retry_max: Duration,
    /// The tags.
    pub tags: Vec<UaTag>,
}

/// The machine's host name, for the default application URI.
pub fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; the result is
    // NUL-terminated unless truncated, handled by the search below.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    if rc == 0 && end > 0 {
        String::from_utf8_lossy(&buf[..end]).into_owned()
    } else {
        "localhost".into()
    }
}

/// One tag's node and type, or what is wrong with them.
fn ua_tag(t: &TagConfig) -> Result<UaTag, String> {
    t.address.parse::<ua::NodeId>().map_err(|e| {
        format!(
            "`{}` is not a node id (e.g. ns=2;s=Line1.Temp, ns=3;i=1001, ns=2;g=…, ns=2;b=…): {e}",
            t.address
        )
    })?;
    if t.count.is_some() || t.order.is_some() || t.scale != 1.0 || t.offset != 0.0 {
        return Err("count, order, scale and offset are for Modbus tags".into());
    }
    let (data_type, array) = match t.data_type.as_deref().map(UaType::parse) {
        None => (None, false),
        Some(Ok((ty, array))) => (Some(ty), array),
        Some(Err(e)) => return Err(e),
    };
    if t.writable && data_type == Some(UaType::LocalizedText) {
        return Err("LocalizedText nodes are read-only in RTDS: remove `writable`".into());
    }
    if t.writable && data_type.is_none() {
        return Err("a writable OPC UA tag needs its node's type (e.g. type: \"Int32\")".into());
    }
    Ok(UaTag {
        name: t.name.clone(),
        node: t.address.clone(),
        data_type,
        array,
        writable: t.writable,
    })
}

fn lower(p: &mut Params, key: &str) -> Option<String> {
    p.take(key).map(|v| v.to_ascii_lowercase())
}

impl OpcUaConfig {
    /// Validates settings and tags together, reporting every mistake;
    /// relative paths resolve against `base` (the config file's directory).
    pub fn new(
        mut p: Params,
        tags: &[TagConfig],
        base: &Path,
    ) -> Result<OpcUaConfig, Vec<SetupError>> {
        let endpoint = p.take("endpoint").unwrap_or_else(|| {
            p.error(
                "endpoint",
                "connector=OpcUa needs endpoint=opc.tcp://host:4840",
            );
            String::new()
        });
        if !endpoint.is_empty()
            && (!endpoint.starts_with("opc.tcp://") || endpoint.len() <= "opc.tcp://".len())
        {
            p.error(
                "endpoint",
                format!("`{endpoint}` must be opc.tcp://host:port[/path]"),
            );
        }
        let timeout = p.secs_or("timeout", Duration::from_secs(5));
        let retry_min = p.secs_or("retry_min", Duration::from_secs(1));
        let retry_max = p.secs_or("retry_max", Duration::from_secs(60));
        if retry_max < retry_min {
            p.error("retry_max", "must not be below retry_min");
        }
        let ms = |p: &mut Params, key: &str, default: u64| -> Duration {
            Duration::from_millis(p.int_or(key, default, 1..=3_600_000))
        };
        let sampling = ms(&mut p, "sampling_ms", 500);
        let publish = ms(&mut p, "publish_ms", sampling.as_millis() as u64);
        let queue_size: u32 = p.int_or("queue_size", 10, 1..=i64::from(u32::MAX));
        let deadband: f64 = p.parse_or("deadband", 0.0);
        if !(deadband.is_finite() && deadband >= 0.0) {
            p.error("deadband", format!("{deadband} must be 0 or more"));
        }
        let mode = match lower(&mut p, "mode").as_deref() {
            None | Some("poll") => Mode::Poll,
            Some("subscribe") => Mode::Subscribe {
                sampling,
                publish,
                queue_size,
                deadband,
            },
            Some(other) => {
                p.error("mode", format!("`{other}` is not poll or subscribe"));
                Mode::Poll
            }
        };
        let mode_name = lower(&mut p, "security");
        let sec_mode = match mode_name.as_deref() {
            None | Some("none") => SecurityMode::None,
            Some("sign") => SecurityMode::Sign,
            Some("signandencrypt") => SecurityMode::SignAndEncrypt,
            Some(other) => {
                p.error(
                    "security",
                    format!("`{other}` is not None, Sign or SignAndEncrypt"),
                );
                SecurityMode::None
            }
        };
        let policy = match (sec_mode, p.take("policy")) {
            (SecurityMode::None, None) => "None",
            (SecurityMode::None, Some(x)) if x.eq_ignore_ascii_case("none") => "None",
            (SecurityMode::None, Some(x)) => {
                p.error(
                    "policy",
                    format!("`{x}` needs security=Sign or SignAndEncrypt"),
                );
                "None"
            }
            (_, None) => "Basic256Sha256",
            (_, Some(x)) => POLICIES
                .iter()
                .copied()
                .find(|known| known.eq_ignore_ascii_case(&x))
                .unwrap_or_else(|| {
                    p.error(
                        "policy",
                        format!("`{x}` is not one of {}", POLICIES.join(", ")),
                    );
                    "Basic256Sha256"
                }),
        };
        let pki = base.join(p.take("pki").unwrap_or_else(|| "pki".into()));
        // Absolute, so log lines name the very directory to put files in.
        let pki = std::path::absolute(&pki).unwrap_or(pki);
        let trust_all = p.bool_or("trust_all", false);
        let application_uri = p
            .take("application_uri")
            .unwrap_or_else(|| format!("urn:{}:rtds", host_name()));
        let user = match (p.take("user"), p.take("password")) {
            (None, None) => None,
            (Some(u), Some(pw)) => Some((u, pw)),
            (Some(_), None) => {
                p.error("user", "user= needs password=");
                None
            }
            (None, Some(_)) => {
                p.error("password", "password= needs user=");
                None
            }
        };
        if user.is_some() && sec_mode == SecurityMode::None {
            p.error(
                "user",
                "user and password would cross the network in clear text: use security=SignAndEncrypt",
            );
        }
        let stamp = match lower(&mut p, "timestamps").as_deref() {
            None | Some("source") => Stamp::Source,
            Some("server") => Stamp::Server,
            Some(other) => {
                p.error("timestamps", format!("`{other}` is not source or server"));
                Stamp::Source
            }
        };
        let max_nodes_per_read: u32 = p.int_or("max_nodes_per_read", 0, 0..=i64::from(u32::MAX));
        let mut errors: Vec<SetupError> = p
            .finish(KEYS)
            .into_iter()
            .map(SetupError::setting)
            .collect();
        let mut out = Vec::with_capacity(tags.len());
        for (i, t) in tags.iter().enumerate() {
            match ua_tag(t) {
                Ok(tag) => out.push(tag),
                Err(message) => errors.push(SetupError::tag(i, message)),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(OpcUaConfig {
            endpoint,
            timeout,
            mode,
            security: Security {
                mode: sec_mode,
                policy,
                pki,
                trust_all,
                application_uri,
            },
            user,
            stamp,
            max_nodes_per_read,
            retry_min,
            retry_max,
            tags: out,
        })
    }

    /// Checks a value for writable tag `tag` without the wire.
    pub fn check_write(&self, tag: usize, value: &Value) -> Result<(), String> {
        let t = self.tags.get(tag).ok_or("no such tag")?;
        let ty = t.data_type.ok_or("the tag has no type")?;
        ty.variant(value, t.array).map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fits(t: &str, v: Value) -> bool {
        let (ty, array) = UaType::parse(t).unwrap();
        ty.variant(&v, array).is_ok()
    }

    #[test]
    fn writes_fit_the_node_type_exactly_or_are_refused() {
        // The ranges of OPC UA Part 6, 5.1.2, edges on both sides.
        assert!(fits("Int64", Value::Int(i64::MIN)));
        assert!(fits("Int64", Value::Int(i64::MAX)));
        assert!(!fits("Int64", Value::UInt(u64::MAX)));
        assert!(fits("UInt64", Value::UInt(u64::MAX)));
        assert!(fits("UInt64", Value::Str("18446744073709551615".into())));
        assert!(!fits("UInt64", Value::Str("18446744073709551616".into())));
        assert!(!fits("UInt64", Value::Int(-1)));
        assert!(fits("Int32", Value::Int(-2_147_483_648)));
        assert!(!fits("Int32", Value::Int(2_147_483_648)));
        assert!(fits("UInt16", Value::Int(65_535)));
        assert!(!fits("UInt16", Value::Int(65_536)));
        assert!(fits("SByte", Value::Int(-128)));
        assert!(!fits("SByte", Value::Int(128)));
        assert!(!fits("Byte", Value::Int(-1)));
        assert!(!fits("Int32", Value::Float(1.5)));
        assert!(fits("Int32", Value::Float(7.0)));
        assert!(!fits("Float", Value::Float(1e39)));
        assert!(fits("Float", Value::Float(3.4e38)));
        assert!(!fits("Double", Value::Float(f64::NAN)));
        assert!(!fits("Double", Value::Float(f64::INFINITY)));
        assert!(fits("Boolean", Value::Bool(true)));
        assert!(!fits("Boolean", Value::Int(2)));
        assert!(!fits("String", Value::Int(2)));
        assert!(fits("String", Value::Str("B-17".into())));
        assert!(fits("DateTime", Value::Str("2026-11-24T06:00:00Z".into())));
        assert!(!fits("DateTime", Value::Str("yesterday".into())));
        assert!(fits(
            "Int16[]",
            Value::Array(vec![Value::Int(-32768), Value::Int(32767)])
        ));
        assert!(!fits(
            "Int16[]",
            Value::Array(vec![Value::Int(1), Value::Int(32768)])
        ));
        assert!(!fits("Int16[]", Value::Int(1)));
        assert!(!fits("Int16", Value::Array(vec![Value::Int(1)])));
    }

    #[test]
    fn the_written_integer_is_the_value_itself() {
        let v = UaType::Int64.variant(&Value::Int(i64::MIN), false).unwrap();
        assert_eq!(v.to_scalar::<ua::Int64>().unwrap().value(), i64::MIN);
        let v = UaType::UInt64
            .variant(&Value::UInt(u64::MAX), false)
            .unwrap();
        assert_eq!(v.to_scalar::<ua::UInt64>().unwrap().value(), u64::MAX);
        // 2^53 + 1 has no f64: it must not pass through one.
        let v = UaType::Int64
            .variant(&Value::Int(9_007_199_254_740_993), false)
            .unwrap();
        assert_eq!(
            v.to_scalar::<ua::Int64>().unwrap().value(),
            9_007_199_254_740_993
        );
    }

    #[test]
    fn keys_have_documented_defaults() {
        let p = Params::parse("connector=OpcUa; endpoint=opc.tcp://h:4840").unwrap();
        let c = OpcUaConfig::new(p, &[], Path::new("/etc/rtds")).unwrap();
        assert_eq!(c.timeout, Duration::from_secs(5));
        assert_eq!(c.mode, Mode::Poll);
        assert_eq!(c.security.mode, SecurityMode::None);
        assert_eq!(c.security.pki, Path::new("/etc/rtds/pki"));
        assert_eq!(c.stamp, Stamp::Source);
        assert_eq!(c.max_nodes_per_read, 0);
        let p = Params::parse(
            "connector=OpcUa; endpoint=opc.tcp://h:4840; mode=subscribe; security=Sign",
        )
        .unwrap();
        let c = OpcUaConfig::new(p, &[], Path::new("/etc/rtds")).unwrap();
        assert_eq!(
            c.mode,
            Mode::Subscribe {
                sampling: Duration::from_millis(500),
                publish: Duration::from_millis(500),
                queue_size: 10,
                deadband: 0.0
            }
        );
        assert_eq!(c.security.policy, "Basic256Sha256");
    }
}
