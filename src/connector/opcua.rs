//! `connector=OpcUa`: an OPC UA client through the `open62541` crate
//! (bindings to the C library open62541, MPL-2.0). Its `AsyncClient` runs
//! the C event loop on a thread of its own; this connector drives each call
//! to completion with a minimal blocking executor (`pollster`), so RTDS
//! stays without an async runtime.
//!
//! This first slice reads by polling (one Read service call per scan for
//! all the connector's nodes) and writes through the Write service, with
//! security mode None. Subscriptions, encryption and browsing are not here
//! yet (see the README).

use super::Params;
use super::{Connector, ConnectorError, SetupError};
use crate::model::{Sample, Status, Timestamp, Value};
use crate::tag::TagConfig;
use open62541::{AsyncClient, ClientBuilder, DataType, DataValue, ua};
use std::time::Duration;

/// Keys `connector=OpcUa` accepts.
pub const KEYS: &[&str] = &[
    "endpoint",
    "timeout",
    "mode",
    "security",
    "timestamps",
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
}

impl UaType {
    fn parse(text: &str) -> Result<UaType, String> {
        Ok(match text.to_ascii_lowercase().as_str() {
            "boolean" | "bool" => UaType::Boolean,
            "sbyte" => UaType::SByte,
            "byte" => UaType::Byte,
            "int16" | "i16" => UaType::Int16,
            "uint16" | "u16" => UaType::UInt16,
            "int32" | "i32" => UaType::Int32,
            "uint32" | "u32" => UaType::UInt32,
            "int64" | "i64" => UaType::Int64,
            "uint64" | "u64" => UaType::UInt64,
            "float" | "f32" => UaType::Float,
            "double" | "f64" => UaType::Double,
            "string" => UaType::String,
            other => {
                return Err(format!(
                    "unknown OPC UA type `{other}` (Boolean, SByte, Byte, Int16, UInt16, Int32, UInt32, Int64, UInt64, Float, Double, String)"
                ));
            }
        })
    }

    /// The name stored in the tags table.
    pub fn name(self) -> &'static str {
        match self {
            UaType::Boolean => "Boolean",
            UaType::SByte => "SByte",
            UaType::Byte => "Byte",
            UaType::Int16 => "Int16",
            UaType::UInt16 => "UInt16",
            UaType::Int32 => "Int32",
            UaType::UInt32 => "UInt32",
            UaType::Int64 => "Int64",
            UaType::UInt64 => "UInt64",
            UaType::Float => "Float",
            UaType::Double => "Double",
            UaType::String => "String",
        }
    }

    /// The value as a variant of this type, exactly, or why not.
    fn variant(self, v: &Value) -> Result<ua::Variant, String> {
        let int = || -> Result<i128, String> {
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
        };
        macro_rules! ranged {
            ($t:ty, $ua:ident) => {{
                let i = int()?;
                let x =
                    <$t>::try_from(i).map_err(|_| format!("{v} does not fit {}", self.name()))?;
                ua::Variant::scalar(ua::$ua::new(x))
            }};
        }
        let float = || -> Result<f64, String> {
            match v {
                Value::Float(f) if f.is_finite() => Ok(*f),
                Value::Int(_) | Value::UInt(_) => Ok(v.as_f64().unwrap_or(f64::NAN)),
                Value::Float(_) => Err(format!("{v} is not a finite number")),
                other => Err(format!("cannot write {other} to a {} node", self.name())),
            }
        };
        Ok(match self {
            UaType::Boolean => match v {
                Value::Bool(b) => ua::Variant::scalar(ua::Boolean::new(*b)),
                Value::Int(i @ (0 | 1)) => ua::Variant::scalar(ua::Boolean::new(*i == 1)),
                other => return Err(format!("cannot write {other} to a Boolean node")),
            },
            UaType::SByte => ranged!(i8, SByte),
            UaType::Byte => ranged!(u8, Byte),
            UaType::Int16 => ranged!(i16, Int16),
            UaType::UInt16 => ranged!(u16, UInt16),
            UaType::Int32 => ranged!(i32, Int32),
            UaType::UInt32 => ranged!(u32, UInt32),
            UaType::Int64 => ranged!(i64, Int64),
            UaType::UInt64 => ranged!(u64, UInt64),
            UaType::Float => {
                let x = float()?;
                if x.abs() > f64::from(f32::MAX) {
                    return Err(format!("{v} does not fit Float"));
                }
                ua::Variant::scalar(ua::Float::new(x as f32))
            }
            UaType::Double => ua::Variant::scalar(ua::Double::new(float()?)),
            UaType::String => match v {
                Value::Str(s) => ua::Variant::scalar(
                    ua::String::new(s).map_err(|e| format!("string `{s}`: {e}"))?,
                ),
                other => return Err(format!("cannot write {other} to a String node")),
            },
        })
    }
}

/// One tag: its node and how to write it.
#[derive(Debug, Clone)]
pub struct UaTag {
    /// Name, for logs.
    pub name: String,
    /// The node id as written (`ns=2;s=Line1.Temp`).
    pub node: String,
    /// Type for writes (required when writable).
    pub data_type: Option<UaType>,
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
    /// Which time stamp is stored (source).
    pub stamp: Stamp,
    /// First reconnect delay (1 s).
    pub retry_min: Duration,
    /// Longest reconnect delay (60 s).
    pub retry_max: Duration,
    /// The tags.
    pub tags: Vec<UaTag>,
}

impl OpcUaConfig {
    /// Validates settings and tags together.
    pub fn new(mut p: Params, tags: &[TagConfig]) -> Result<OpcUaConfig, SetupError> {
        let setting = |message: String| SetupError { tag: None, message };
        let endpoint = p
            .take("endpoint")
            .ok_or_else(|| setting("connector=OpcUa needs endpoint=opc.tcp://host:4840".into()))?;
        if !endpoint.starts_with("opc.tcp://") {
            return Err(setting(format!(
                "endpoint `{endpoint}` must start with opc.tcp://"
            )));
        }
        let timeout = p
            .secs_or("timeout", Duration::from_secs(5))
            .map_err(setting)?;
        let retry_min = p
            .secs_or("retry_min", Duration::from_secs(1))
            .map_err(setting)?;
        let retry_max = p
            .secs_or("retry_max", Duration::from_secs(60))
            .map_err(setting)?;
        match p
            .take("mode")
            .as_deref()
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            None | Some("poll") => {}
            Some(other) => {
                return Err(setting(format!(
                    "mode `{other}` is not available yet: this RTDS polls (mode=poll)"
                )));
            }
        }
        match p
            .take("security")
            .as_deref()
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            None | Some("none") => {}
            Some(other) => {
                return Err(setting(format!(
                    "security `{other}` is not available yet: this RTDS connects with security=None only"
                )));
            }
        }
        let stamp = match p
            .take("timestamps")
            .as_deref()
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            None | Some("source") => Stamp::Source,
            Some("server") => Stamp::Server,
            Some(other) => {
                return Err(setting(format!(
                    "timestamps `{other}` is not source or server"
                )));
            }
        };
        p.finish(KEYS).map_err(setting)?;
        let mut out = Vec::with_capacity(tags.len());
        for (i, t) in tags.iter().enumerate() {
            let bad = |message: String| SetupError {
                tag: Some(i),
                message,
            };
            t.address.parse::<ua::NodeId>().map_err(|e| {
                bad(format!(
                    "`{}` is not a node id (e.g. ns=2;s=Line1.Temp, ns=3;i=1001): {e}",
                    t.address
                ))
            })?;
            let data_type = t
                .data_type
                .as_deref()
                .map(UaType::parse)
                .transpose()
                .map_err(bad)?;
            if t.writable && data_type.is_none() {
                return Err(bad(
                    "a writable OPC UA tag needs its node's type (e.g. type: \"Int32\")".into(),
                ));
            }
            out.push(UaTag {
                name: t.name.clone(),
                node: t.address.clone(),
                data_type,
                writable: t.writable,
            });
        }
        Ok(OpcUaConfig {
            endpoint,
            timeout,
            stamp,
            retry_min,
            retry_max,
            tags: out,
        })
    }
}

/// `connector=OpcUa`.
pub const CLASS: super::Class = super::Class {
    name: "OpcUa",
    setup: |s| Ok(std::sync::Arc::new(OpcUaConfig::new(s.params, s.tags)?)),
};

impl super::SourceConfig for OpcUaConfig {
    fn build(&self) -> Box<dyn Connector> {
        Box::new(OpcUa::new(self.clone()))
    }

    /// One line for logs.
    fn describe(&self) -> String {
        format!(
            "OpcUa {}, poll, security None, timeout {:.1} s",
            self.endpoint,
            self.timeout.as_secs_f64()
        )
    }

    /// What one scan sends, for `rtds check`.
    fn describe_scan(&self) -> Vec<String> {
        vec![format!(
            "1 Read call for {} nodes per scan",
            self.tags.len()
        )]
    }

    /// Checks a value for writable tag `tag` without the wire.
    fn check_write(&self, tag: usize, value: &Value) -> Result<(), String> {
        let t = self.tags.get(tag).ok_or("no such tag")?;
        let ty = t.data_type.ok_or("the tag has no type")?;
        ty.variant(value).map(drop)
    }

    fn is_writable(&self, tag: usize) -> bool {
        self.tags.get(tag).is_some_and(|t| t.writable)
    }

    fn type_name(&self, tag: usize) -> &'static str {
        self.tags
            .get(tag)
            .and_then(|t| t.data_type)
            .map_or("", |t| t.name())
    }

    fn retry(&self) -> (Duration, Duration) {
        (self.retry_min, self.retry_max)
    }

    /// The connect plus the read.
    fn worst_poll(&self) -> Duration {
        self.timeout * 2
    }
}

/// The connector.
pub struct OpcUa {
    config: OpcUaConfig,
    nodes: Vec<ua::NodeId>,
    client: Option<AsyncClient>,
    requests: u64,
}

impl OpcUa {
    /// A connector, not connected yet.
    pub fn new(config: OpcUaConfig) -> OpcUa {
        let nodes = config
            .tags
            .iter()
            .map(|t| t.node.parse().unwrap_or_else(|_| ua::NodeId::numeric(0, 0)))
            .collect();
        OpcUa {
            config,
            nodes,
            client: None,
            requests: 0,
        }
    }

    fn client(&self) -> Result<&AsyncClient, ConnectorError> {
        self.client
            .as_ref()
            .ok_or_else(|| ConnectorError::new(Status::NOT_CONNECTED, "not connected"))
    }
}

/// A service or connection error as a connector error: a lost channel
/// means reconnecting.
fn ua_error(what: &str, e: &open62541::Error) -> ConnectorError {
    let name = e.status_code().name();
    let status = if name.contains("Timeout") {
        Status::TIMEOUT
    } else {
        Status::NOT_CONNECTED
    };
    ConnectorError::new(status, format!("{what}: {name}"))
}

fn time(d: Option<&ua::DateTime>) -> Option<Timestamp> {
    let nanos = d?.as_unix_timestamp_nanos();
    if nanos <= 0 {
        return None;
    }
    chrono::DateTime::from_timestamp_nanos(i64::try_from(nanos).ok()?).into()
}

/// A variant as an RTDS value, integers exact.
fn value_of(v: &ua::Variant) -> Option<Value> {
    macro_rules! scalars {
        ($( $ua:ident => $make:expr ),* $(,)?) => {
            $( if let Some(x) = v.to_scalar::<ua::$ua>() { return Some($make(x.value())); } )*
        };
    }
    scalars!(
        Boolean => Value::Bool,
        SByte => |x: i8| Value::Int(i64::from(x)),
        Byte => |x: u8| Value::Int(i64::from(x)),
        Int16 => |x: i16| Value::Int(i64::from(x)),
        UInt16 => |x: u16| Value::Int(i64::from(x)),
        Int32 => |x: i32| Value::Int(i64::from(x)),
        UInt32 => |x: u32| Value::Int(i64::from(x)),
        Int64 => Value::Int,
        UInt64 => Value::from_u64,
        Float => |x: f32| Value::Float(f64::from(x)),
        Double => Value::Float,
    );
    if let Some(s) = v.to_scalar::<ua::String>() {
        return Some(Value::Str(s.as_str().unwrap_or_default().to_string()));
    }
    if let Some(t) = v.to_scalar::<ua::DateTime>() {
        return time(Some(&t)).map(|t| Value::Str(crate::model::format_ts(&t)));
    }
    macro_rules! arrays {
        ($( $ua:ident => $make:expr ),* $(,)?) => {
            $( if let Some(a) = v.to_array::<ua::$ua>() {
                return Some(Value::Array(a.iter().map(|x| $make(x.value())).collect()));
            } )*
        };
    }
    arrays!(
        Boolean => Value::Bool,
        Int16 => |x: i16| Value::Int(i64::from(x)),
        UInt16 => |x: u16| Value::Int(i64::from(x)),
        Int32 => |x: i32| Value::Int(i64::from(x)),
        UInt32 => |x: u32| Value::Int(i64::from(x)),
        Int64 => Value::Int,
        UInt64 => Value::from_u64,
        Float => |x: f32| Value::Float(f64::from(x)),
        Double => Value::Float,
    );
    None
}

impl Connector for OpcUa {
    fn open(&mut self) -> Result<(), ConnectorError> {
        self.close();
        let client = ClientBuilder::default()
            .timeout(self.config.timeout)
            .connect(&self.config.endpoint)
            .map_err(|e| ua_error(&format!("connect to {}", self.config.endpoint), &e))?;
        self.client = Some(client.into_async());
        Ok(())
    }

    fn is_open(&self) -> bool {
        self.client.is_some()
    }

    fn read(&mut self, out: &mut Vec<Sample>) -> Result<(), ConnectorError> {
        let ids: Vec<(ua::NodeId, ua::AttributeId)> = self
            .nodes
            .iter()
            .map(|n| (n.clone(), ua::AttributeId::VALUE))
            .collect();
        self.requests += 1;
        let client = self.client()?;
        let results = pollster::block_on(client.read_many_attributes(&ids))
            .map_err(|e| ua_error("read", &e))?;
        let now = chrono::Utc::now();
        for (i, dv) in results.iter().enumerate() {
            out.push(sample(i, dv, self.config.stamp, now));
        }
        Ok(())
    }

    fn write(&mut self, tag: usize, value: &Value) -> Result<(), ConnectorError> {
        let bad = |m: String| ConnectorError::new(Status::BAD_CONFIG, m);
        let t = self
            .config
            .tags
            .get(tag)
            .ok_or_else(|| bad(format!("no tag #{tag}")))?;
        if !t.writable {
            return Err(bad(format!("tag {} is not writable", t.name)));
        }
        let ty = t.data_type.ok_or_else(|| bad("no type".into()))?;
        let variant = ty.variant(value).map_err(bad)?;
        self.requests += 1;
        let node = self.nodes[tag].clone();
        let client = self.client()?;
        pollster::block_on(client.write_value(&node, &ua::DataValue::new(variant))).map_err(|e| {
            match e {
                // The server refused this write (a Bad result): the link is fine.
                open62541::Error::Server(code) if !code.name().contains("Connection") => {
                    let name = code.name();
                    ConnectorError::new(
                        Status::opc_ua(code.into_raw()),
                        format!("server refused the write to {}: {name}", t.node),
                    )
                }
                other => ua_error("write", &other),
            }
        })
    }

    fn close(&mut self) {
        if let Some(c) = self.client.take() {
            pollster::block_on(c.disconnect());
        }
    }

    fn requests(&self) -> u64 {
        self.requests
    }
}

/// One node's result as a sample: Good is 0; Uncertain and Bad keep the
/// server's code (`code >> 16`), Uncertain with its value, Bad without.
fn sample(tag: usize, dv: &DataValue<ua::Variant>, stamp: Stamp, now: Timestamp) -> Sample {
    let (status, bad) = match dv.status() {
        Some(c) if c.is_bad() => (Status::opc_ua(c.into_raw()), true),
        Some(c) if c.is_uncertain() => (Status::opc_ua(c.into_raw()), false),
        _ => (Status::GOOD, false),
    };
    let ts = match stamp {
        Stamp::Source => time(dv.source_timestamp()).or(time(dv.server_timestamp())),
        Stamp::Server => time(dv.server_timestamp()),
    }
    .unwrap_or(now);
    let value = if bad {
        None
    } else {
        dv.value().and_then(value_of)
    };
    // A good node whose value RTDS cannot represent: say so, do not guess.
    let status = if status.is_good() && value.is_none() {
        Status::TYPE_MISMATCH
    } else {
        status
    };
    Sample {
        tag,
        value,
        status,
        ts,
    }
}

impl Drop for OpcUa {
    fn drop(&mut self) {
        // open62541: never drop a client without disconnecting it.
        self.close();
    }
}
