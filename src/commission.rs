//! Commissioning without starting the server: `rtds read` shows every tag's
//! address, the raw registers in hex and the decoded value (optionally in
//! all four byte orders, so a wrong order is obvious at a glance), and
//! `rtds write` writes one value through the connector code, with the same
//! checks as a script's write, and reads it back.

use crate::config::Config;
use crate::connector::ConnectorKind;
use crate::connector::modbus::point::{ByteOrder, DataType, Point};
use crate::connector::modbus::{ModbusClient, ModbusConfig, Raw};
use crate::model::{Sample, Value};

/// One connection per connector, kept across repeated readings (`--every`),
/// so a tag that fails alone is read alone from then on, as in the scan.
pub struct Reader {
    conns: Vec<Source>,
    /// Whether another connector names the same endpoint (a serial line:
    /// one opener at a time, so each closes after its reading).
    shared: Vec<bool>,
}

enum Source {
    Modbus(Box<ModbusClient>),
    Other(Box<dyn crate::connector::Connector>),
}

impl Reader {
    /// Connectors of `config`, not yet connected.
    pub fn new(config: &Config) -> Reader {
        let endpoints: Vec<_> = config
            .connectors
            .iter()
            .map(|c| c.kind.endpoint())
            .collect();
        let shared = endpoints
            .iter()
            .map(|e| e.is_some() && endpoints.iter().filter(|x| *x == e).count() > 1)
            .collect();
        Reader {
            shared,
            conns: config
                .connectors
                .iter()
                .map(|c| match c.kind.downcast::<ModbusConfig>() {
                    Some(m) => Source::Modbus(Box::new(ModbusClient::new(m.clone()))),
                    None => Source::Other(c.kind.build()),
                })
                .collect(),
        }
    }

    /// Reads connector `connector` once with the requests of its scan
    /// plan. Returns lines for the terminal and whether every tag was good.
    /// `all_orders` adds, for multi-register numbers, the value decoded in
    /// every byte order.
    pub fn read(
        &mut self,
        config: &Config,
        connector: usize,
        all_orders: bool,
    ) -> (Vec<String>, bool) {
        let c = &config.connectors[connector];
        let width = c
            .tags
            .iter()
            .map(|t| t.name.len())
            .max()
            .unwrap_or(4)
            .max(4);
        let mut lines = Vec::new();
        let mut good = true;
        match (
            &mut self.conns[connector],
            c.kind.downcast::<ModbusConfig>(),
        ) {
            (Source::Modbus(conn), Some(m)) => {
                use crate::connector::Connector;
                let mut raws: Vec<(
                    usize,
                    Result<Raw, crate::connector::modbus::codec::Exception>,
                )> = Vec::new();
                let result = if conn.is_open() { Ok(()) } else { conn.open() }.and_then(|()| {
                    conn.scan_blocks(|t, _, r| raws.push((t, r.map(|r| r.to_owned()))))
                });
                if let Err(e) = result {
                    conn.close();
                    return (vec![format!("  {e}")], false);
                }
                raws.sort_by_key(|(t, _)| *t);
                for (i, raw) in raws {
                    let p = &m.points[i];
                    let addr = format!("{} ({})", p.address, modicon(p));
                    let ty = format!("{} {}", p.data_type.name(), order_name(p));
                    let name = &c.tags[i].name;
                    let raw = match raw {
                        Ok(r) => r,
                        Err(code) => {
                            good = false;
                            lines.push(format!(
                                "  {name:width$}  {addr:<18} {ty:<12} device {code}"
                            ));
                            continue;
                        }
                    };
                    let (hex, value) = match &raw {
                        Raw::Registers(r) => (
                            r.iter()
                                .map(|w| format!("{w:04X}"))
                                .collect::<Vec<_>>()
                                .join(" "),
                            p.decode_registers(r),
                        ),
                        Raw::Bits(b) => (
                            b.iter().map(|x| if *x { '1' } else { '0' }).collect(),
                            p.decode_bits(b),
                        ),
                    };
                    lines.push(format!(
                        "  {name:width$}  {addr:<18} {ty:<12} {hex:<24} = {value}"
                    ));
                    if all_orders
                        && let Raw::Registers(r) = &raw
                        && p.data_type.registers() > 1
                    {
                        let each: Vec<String> = ["ABCD", "CDAB", "BADC", "DCBA"]
                            .iter()
                            .filter_map(|o| {
                                let order = ByteOrder::parse(o).ok()?;
                                let q = Point { order, ..p.clone() };
                                Some(format!("{o} {}", compact(&q.decode_registers(r))))
                            })
                            .collect();
                        lines.push(format!("  {:width$}  {}", "", each.join("   ")));
                    }
                }
                lines.push(format!("  {} requests", conn.requests()));
            }
            (Source::Other(conn), _) => {
                let mut samples: Vec<Sample> = Vec::new();
                let result = if conn.is_open() { Ok(()) } else { conn.open() }
                    .and_then(|()| conn.read(&mut samples));
                if let Err(e) = result {
                    conn.close();
                    return (vec![format!("  {e}")], false);
                }
                for s in &samples {
                    good &= s.status.is_good();
                    let value = s.value.as_ref().map_or("-".to_string(), Value::to_string);
                    lines.push(format!(
                        "  {:width$}  {:<18} = {value}  {}",
                        c.tags[s.tag].name, c.tags[s.tag].address, s.status
                    ));
                }
            }
            (Source::Modbus(_), _) => {}
        }
        if self.shared[connector] {
            use crate::connector::Connector;
            match &mut self.conns[connector] {
                Source::Modbus(c) => c.close(),
                Source::Other(c) => c.close(),
            }
        }
        (lines, good)
    }
}

/// A value for the side-by-side byte orders: far-off floats in scientific
/// notation, so a wrong order reads as obviously wrong, in few characters.
fn compact(v: &Value) -> String {
    match v {
        Value::Float(f) if *f != 0.0 && (f.abs() >= 1e9 || f.abs() < 1e-4) => format!("{f:.3e}"),
        other => other.to_string(),
    }
}

/// The classic 1-based Modicon number of a protocol address (`hr:0` is
/// 40001), the other half of the 0- versus 1-based trap.
fn modicon(p: &Point) -> String {
    let digit = match p.address.table.prefix() {
        "co" => 0,
        "di" => 1,
        "ir" => 3,
        _ => 4,
    };
    let n = u32::from(p.address.offset) + 1;
    if n <= 9_999 {
        format!("{digit}{n:04}")
    } else {
        format!("{digit}{n:05}")
    }
}

fn order_name(p: &Point) -> &'static str {
    if p.data_type.registers() < 2 || p.data_type == DataType::Str {
        return "";
    }
    p.order.name()
}

/// Where a tag lives: (connector index, index in its tags).
pub fn find_tag(config: &Config, name: &str) -> Option<(usize, usize)> {
    config.connectors.iter().enumerate().find_map(|(c, conn)| {
        conn.tags
            .iter()
            .position(|t| &*t.name == name)
            .map(|i| (c, i))
    })
}

/// A value typed on the command line, read as the tag's type expects it.
pub fn parse_value(kind: &ConnectorKind, tag: usize, text: &str) -> Value {
    let t = text.trim();
    let ty = kind.type_name(tag);
    // An array tag takes a JSON array: `[1, 2]`, `["a,b", "c"]`.
    if ty.ends_with("[]")
        && let Ok(v) = crate::json::parse_write(t)
    {
        return v;
    }
    match ty.to_ascii_lowercase().as_str() {
        "string" | "text" | "datetime" | "bytestring" => Value::Str(text.to_string()),
        "bool" | "boolean" => match t.to_ascii_lowercase().as_str() {
            "true" | "on" | "1" => Value::Bool(true),
            "false" | "off" | "0" => Value::Bool(false),
            _ => Value::Str(text.to_string()),
        },
        _ => {
            if let Ok(i) = t.parse::<i64>() {
                Value::Int(i)
            } else if t.bytes().all(|b| b.is_ascii_digit()) && !t.is_empty() {
                // Beyond i64: the exact digits, for a u64 register.
                Value::Str(t.to_string())
            } else if let Ok(f) = t.parse::<f64>() {
                Value::Float(f)
            } else if t == "true" || t == "false" {
                Value::Bool(t == "true")
            } else {
                Value::Str(text.to_string())
            }
        }
    }
}

/// Writes `text` to tag `name` through its connector, with the checks a
/// script's write gets, then reads the connector's tags and returns the
/// tag's value as the device now holds it.
pub fn write_and_read_back(config: &Config, name: &str, text: &str) -> Result<String, String> {
    let (c, i) = find_tag(config, name).ok_or_else(|| {
        format!("no device tag `{name}` in the configuration (calculated tags cannot be written to a device)")
    })?;
    let kind = &config.connectors[c].kind;
    if !kind.is_writable(i) {
        return Err(format!(
            "tag `{name}` is not writable: add `writable: true` to it in the configuration"
        ));
    }
    let value = parse_value(kind, i, text);
    kind.check_write(i, &value)
        .map_err(|m| format!("tag `{name}`: {m}; not written"))?;
    let mut conn = kind.build();
    let held = conn
        .open()
        .and_then(|()| conn.write(i, &value))
        .map_err(|e| format!("write of {value} to {name} failed: {e}"))?;
    if kind
        .downcast::<ModbusConfig>()
        .is_some_and(|m| m.settings.broadcasts())
    {
        conn.close();
        return Ok(format!(
            "broadcast {held} to {name} ({}) to every device on the line; no device answers a broadcast, so nothing was read back",
            config.connectors[c].tags[i].address
        ));
    }
    let back = conn
        .read_back(i)
        .map_err(|e| format!("wrote {value} to {name}, but reading back failed: {e}"));
    conn.close();
    let back = back?;
    let holds = if held == value {
        String::new()
    } else {
        format!(" (the tag's type holds it as {held})")
    };
    let shown = back.value.as_ref().map_or("-".into(), Value::to_string);
    Ok(format!(
        "wrote {value} to {name} ({}){holds}; read back: {shown}, status {}",
        config.connectors[c].tags[i].address, back.status
    ))
}

/// The OPC UA settings of connector `name`, or why there are none.
#[cfg(feature = "opcua")]
fn opcua_settings(
    config: &Config,
    name: &str,
) -> Result<std::sync::Arc<crate::connector::opcua::OpcUaConfig>, String> {
    let c = config.connector(name)?;
    c.kind
        .downcast::<crate::connector::opcua::OpcUaConfig>()
        .ok_or_else(|| format!("connector `{name}` is not an OPC UA connector"))
}

/// `rtds browse`: the children of `node` on connector `name`'s server.
#[cfg(feature = "opcua")]
pub fn browse(config: &Config, name: &str, node: Option<&str>) -> Result<Vec<String>, String> {
    use crate::connector::opcua;
    let ua = opcua_settings(config, name)?;
    let children = opcua::browse(&ua, node)?;
    let mut lines = vec![format!(
        "{} children of {} on {}",
        children.len(),
        node.unwrap_or("i=85 (Objects)"),
        ua.endpoint
    )];
    lines.extend(opcua::render(&children));
    Ok(lines)
}

/// `rtds cert`: RTDS's certificate for connector `name`, created if absent.
#[cfg(feature = "opcua")]
pub fn certificate(config: &Config, name: &str, _: Option<&str>) -> Result<Vec<String>, String> {
    use crate::connector::opcua::pki;
    let s = &opcua_settings(config, name)?.security;
    let (cert, _, created) = pki::own_identity(&s.pki, &s.application_uri)?;
    Ok(vec![
        format!(
            "{} {}",
            if created { "created" } else { "existing" },
            pki::own_certificate(&s.pki).display()
        ),
        format!("SHA-1 thumbprint {}", pki::thumbprint(cert.as_bytes())),
        format!("application URI {}", s.application_uri),
        format!(
            "trusted servers: {}  (refused ones wait in {})",
            s.pki.join("trusted").display(),
            s.pki.join("rejected").display()
        ),
    ])
}

/// Without OPC UA in the build.
#[cfg(not(feature = "opcua"))]
pub fn browse(_: &Config, _: &str, _: Option<&str>) -> Result<Vec<String>, String> {
    Err("this build has no OPC UA (feature `opcua`)".into())
}

/// Without OPC UA in the build.
#[cfg(not(feature = "opcua"))]
pub fn certificate(_: &Config, _: &str, _: Option<&str>) -> Result<Vec<String>, String> {
    Err("this build has no OPC UA (feature `opcua`)".into())
}

/// `rtds cert -c FILE http`: the status server's HTTPS pair, made
/// self-signed when neither file exists (RTDS also does this at start).
pub fn http_certificate(config: &Config) -> Result<Vec<String>, String> {
    use crate::http::tls;
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let http = config
        .http
        .as_ref()
        .ok_or("the configuration has no `http` section")?;
    let files = http.tls.as_ref().ok_or(
        "`http` has no `tls`: add tls: (cert: \"https/cert.pem\", key: \"https/key.pem\") to it",
    )?;
    let names = tls::default_names(http);
    let created = tls::ensure_pair(files, &names)?.is_some();
    let der = CertificateDer::from_pem_file(&files.cert)
        .map_err(|e| format!("{}: {e}", files.cert.display()))?;
    let fingerprint = ring::digest::digest(&ring::digest::SHA256, der.as_ref())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":");
    let mut lines = vec![
        format!(
            "{} {} (key {})",
            if created { "created" } else { "existing" },
            files.cert.display(),
            files.key.display()
        ),
        format!("SHA-256 fingerprint {fingerprint}"),
    ];
    if created {
        lines.push(format!(
            "self-signed for {}: browsers ask once to trust it; compare the fingerprint",
            names.join(", ")
        ));
    }
    Ok(lines)
}
