//! The Modbus connectors: `ModbusTcp`, `ModbusRtu` (a serial line) and
//! `ModbusRtuTcp` (RTU frames through a serial-to-Ethernet converter). One
//! client (`client.rs`) runs the scan plan, exception isolation, writes and
//! the bit read-modify-write on any wire; each wire is a transport
//! (`transport.rs`), one module each. This module reads the connection
//! strings into typed settings and the tags into points, the same for all
//! three: tags, types, byte orders, addresses and planning do not depend on
//! the wire.

pub mod bus_scan;
pub mod client;
pub mod codec;
pub mod line;
pub mod plan;
pub mod point;
pub mod rtu;
pub mod rtu_tcp;
pub mod serial;
pub mod tcp;
pub mod transport;

pub use self::client::{ModbusClient, Raw};
use self::plan::{Block, Limits};
use self::point::{Address, ByteOrder, DataType, Point};
use self::serial::{LineSettings, Rs485};
use self::transport::Transport;
use super::{Endpoint, Failure, Params, SetupError, SourceConfig};
use crate::model::Value;
use crate::tag::TagConfig;
use std::sync::Arc;
use std::time::Duration;

/// Keys every Modbus class takes besides its wire's, in the order the
/// manual documents them.
pub const COMMON_KEYS: &[&str] = &[
    "unit_id",
    "timeout",
    "auto_open",
    "auto_close",
    "max_registers",
    "max_bits",
    "max_gap",
    "retry_min",
    "retry_max",
    "byte_order",
    "write_multiple",
];

/// Keys of `connector=ModbusTcp`'s wire.
pub const TCP_KEYS: &[&str] = &["host", "port"];

/// Keys of `connector=ModbusRtu`'s wire.
pub const RTU_KEYS: &[&str] = &[
    "device",
    "baud",
    "parity",
    "data_bits",
    "stop_bits",
    "frame_gap_ms",
    "broadcast_delay_ms",
    "rs485",
    "rts_before_ms",
    "rts_after_ms",
    "retries",
];

/// Keys of `connector=ModbusRtuTcp`'s wire.
pub const RTU_TCP_KEYS: &[&str] = &[
    "host",
    "port",
    "frame_gap_ms",
    "broadcast_delay_ms",
    "retries",
];

/// RTU's timing beyond the line's own t3.5.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RtuTiming {
    /// Extra silence before every frame, for devices slow to turn their
    /// line around (0).
    pub frame_gap: Duration,
    /// How long the devices get to act on a broadcast before the next
    /// frame (100 ms).
    pub broadcast_delay: Duration,
}

/// The wire a Modbus connector's requests travel on.
#[derive(Debug, Clone, PartialEq)]
pub enum Wire {
    /// MBAP over TCP to a device or a gateway (`ModbusTcp`).
    Tcp {
        /// Host name or IP.
        host: String,
        /// TCP port (502).
        port: u16,
    },
    /// RTU on a serial port (`ModbusRtu`).
    Rtu {
        /// The port and its settings.
        line: LineSettings,
        /// Extra gap and broadcast delay.
        timing: RtuTiming,
    },
    /// RTU frames over TCP to a serial-to-Ethernet converter
    /// (`ModbusRtuTcp`).
    RtuTcp {
        /// The converter's host name or IP.
        host: String,
        /// Its TCP port (4001, Moxa's default).
        port: u16,
        /// Extra gap and broadcast delay.
        timing: RtuTiming,
    },
}

impl Wire {
    /// The connector class this wire belongs to.
    pub fn class(&self) -> &'static str {
        match self {
            Wire::Tcp { .. } => "ModbusTcp",
            Wire::Rtu { .. } => "ModbusRtu",
            Wire::RtuTcp { .. } => "ModbusRtuTcp",
        }
    }

    /// Whether frames are RTU's (unit 0 is a broadcast; no transaction id).
    pub fn is_rtu(&self) -> bool {
        !matches!(self, Wire::Tcp { .. })
    }

    /// A transport for this wire, not yet open; `timeout` bounds a connect.
    pub fn transport(&self, timeout: Duration) -> Box<dyn Transport> {
        match self {
            Wire::Tcp { host, port } => Box::new(tcp::MbapTcp::new(host, *port, timeout)),
            Wire::Rtu { line, timing } => Box::new(line::Rtu::new(
                serial::SerialLine::new(line.clone()),
                rtu::t35(line.baud) + timing.frame_gap,
                timing.broadcast_delay,
            )),
            // The converter keeps the line's t3.5 itself; only the extra
            // gap is RTDS's to keep.
            Wire::RtuTcp { host, port, timing } => Box::new(line::Rtu::new(
                rtu_tcp::TcpLine::new(host, *port, timeout),
                timing.frame_gap,
                timing.broadcast_delay,
            )),
        }
    }

    /// What a reply that passed the framing but answers nothing asked
    /// means: over MBAP the stream is in doubt (reconnect); on an RTU line
    /// only this device's answer is, and the next request resynchronises.
    pub fn garbled(&self) -> Failure {
        match self {
            Wire::Tcp { .. } => Failure::Link,
            Wire::Rtu { .. } | Wire::RtuTcp { .. } => Failure::Device,
        }
    }

    /// Where the link goes: connectors naming the same one share it.
    pub fn endpoint(&self) -> Endpoint {
        match self {
            Wire::Tcp { host, port } | Wire::RtuTcp { host, port, .. } => Endpoint::Tcp {
                host: host.to_ascii_lowercase(),
                port: *port,
            },
            // The device itself, not its spelling: /dev/serial/by-id/…
            // and /dev/ttyUSB0 are one port, and one owner must hold it.
            Wire::Rtu { line, .. } => Endpoint::Serial(
                std::fs::canonicalize(&line.device).unwrap_or_else(|_| line.device.clone()),
            ),
        }
    }

    /// What every connector sharing the endpoint must agree on: the
    /// framing and, on a serial line, its settings and timing.
    pub fn framing(&self) -> String {
        match self {
            Wire::Tcp { .. } => "Modbus TCP (MBAP) framing".into(),
            Wire::Rtu { line, timing } => format!(
                "RTU framing, {}, frame_gap_ms={}, broadcast_delay_ms={}",
                line.frame(),
                timing.frame_gap.as_millis(),
                timing.broadcast_delay.as_millis()
            ),
            Wire::RtuTcp { timing, .. } => format!(
                "RTU framing, frame_gap_ms={}, broadcast_delay_ms={}",
                timing.frame_gap.as_millis(),
                timing.broadcast_delay.as_millis()
            ),
        }
    }

    /// Where requests go, for logs.
    pub fn describe(&self) -> String {
        match self {
            Wire::Tcp { host, port } => format!("{host}:{port}"),
            Wire::Rtu { line, .. } => line.describe(),
            Wire::RtuTcp { host, port, .. } => format!("{host}:{port} (RTU frames)"),
        }
    }

    /// Takes a class's wire keys from `p`, a default where a value is
    /// wrong (the mistake is recorded in `p`).
    fn from_params(class: Class, p: &mut Params) -> Wire {
        let timing = |p: &mut Params| RtuTiming {
            frame_gap: millis(p, "frame_gap_ms", 0, 0..=10_000),
            broadcast_delay: millis(p, "broadcast_delay_ms", 100, 0..=60_000),
        };
        match class {
            Class::Tcp => Wire::Tcp {
                host: p.required("host"),
                port: p.int_or("port", 502, 1..=65535),
            },
            Class::RtuTcp => Wire::RtuTcp {
                host: p.required("host"),
                port: p.int_or("port", 4001, 1..=65535),
                timing: timing(p),
            },
            Class::Rtu => {
                let device = p.required("device");
                let baud = p.int_or("baud", 19_200, 50..=4_000_000);
                let parity = p.parse_or::<String>("parity", "E".into());
                let parity = match parity.to_ascii_uppercase().as_str() {
                    "N" | "NONE" => 'N',
                    "E" | "EVEN" => 'E',
                    "O" | "ODD" => 'O',
                    _ => {
                        p.error("parity", format!("`{parity}` is not N, E or O"));
                        'E'
                    }
                };
                let data_bits = p.int_or("data_bits", 8, 7..=8);
                let stop_bits = p.int_or("stop_bits", 1, 1..=2);
                let rs485 = p.bool_or("rs485", false);
                let before = millis(p, "rts_before_ms", 0, 0..=1000);
                let after = millis(p, "rts_after_ms", 0, 0..=1000);
                if !rs485 && (!before.is_zero() || !after.is_zero()) {
                    p.error(
                        "rts_before_ms",
                        "RTS delays need rs485=true (the kernel's RS-485 mode drives RTS)",
                    );
                }
                Wire::Rtu {
                    line: LineSettings {
                        device: device.into(),
                        baud,
                        parity,
                        data_bits,
                        stop_bits,
                        rs485: rs485.then_some(Rs485 { before, after }),
                    },
                    timing: timing(p),
                }
            }
        }
    }
}

/// A whole number of milliseconds in `range`, as a duration.
fn millis(
    p: &mut Params,
    key: &str,
    default: u64,
    range: std::ops::RangeInclusive<i64>,
) -> Duration {
    Duration::from_millis(p.int_or(key, default, range))
}

/// Which Modbus class a connection string names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Tcp,
    Rtu,
    RtuTcp,
}

impl Class {
    fn keys(self) -> Vec<&'static str> {
        let wire = match self {
            Class::Tcp => TCP_KEYS,
            Class::Rtu => RTU_KEYS,
            Class::RtuTcp => RTU_TCP_KEYS,
        };
        wire.iter().chain(COMMON_KEYS).copied().collect()
    }
}

/// Typed connection settings.
#[derive(Debug, Clone, PartialEq)]
pub struct ModbusSettings {
    /// Where requests go and how they are framed.
    pub wire: Wire,
    /// Unit id (1); gateways route by it, RTU devices answer to it, and on
    /// an RTU line 0 is a broadcast (write only, no reply).
    pub unit_id: u8,
    /// Connect and reply timeout (5 s over Modbus TCP, 1 s over RTU).
    pub timeout: Duration,
    /// Connect on first poll and reconnect on demand (true); false connects
    /// when the connector starts.
    pub auto_open: bool,
    /// Close after every poll, for devices that accept one client only.
    pub auto_close: bool,
    /// Most registers per read request (125).
    pub max_registers: u16,
    /// Most bits per read request (2000).
    pub max_bits: u16,
    /// Unused addresses a request may span to join two tags (0).
    pub max_gap: u16,
    /// First reconnect delay (1 s).
    pub retry_min: Duration,
    /// Longest reconnect delay (60 s).
    pub retry_max: Duration,
    /// Default byte order of the connector's tags (ABCD).
    pub byte_order: ByteOrder,
    /// Always write with FC 15/16, for devices that lack FC 5/6 (false:
    /// FC 5/6 for a single coil or register, FC 15/16 otherwise).
    pub write_multiple: bool,
    /// On an RTU line, how often a request whose reply came garbled (a
    /// bad CRC, noise) is sent again at once before the device counts as
    /// failing (1). A timeout is never retried: a dead device would cost
    /// its neighbours on the line twice.
    pub retries: u8,
}

impl ModbusSettings {
    /// Takes `connector=ModbusTcp`'s keys from `params`: the settings (a
    /// default where a value was wrong) and every mistake (a value out of
    /// its range, an unknown key), so the tags are checked too.
    pub fn from_params(p: Params) -> (ModbusSettings, Vec<String>) {
        Self::of_class(Class::Tcp, p)
    }

    /// Settings of any Modbus class from its connection string
    /// (`connector=ModbusRtu; …`), for tools that take one directly.
    pub fn from_connection(p: Params) -> (ModbusSettings, Vec<String>) {
        let class = match p.class().to_ascii_lowercase().as_str() {
            "modbusrtu" => Class::Rtu,
            "modbusrtutcp" => Class::RtuTcp,
            _ => Class::Tcp,
        };
        let (s, mut errors) = Self::of_class(class, p.clone());
        if class == Class::Tcp && !p.class().eq_ignore_ascii_case("ModbusTcp") {
            errors.insert(
                0,
                format!(
                    "`connector={}` is not a Modbus class (ModbusTcp, ModbusRtu, ModbusRtuTcp)",
                    p.class()
                ),
            );
        }
        (s, errors)
    }

    fn of_class(class: Class, mut p: Params) -> (ModbusSettings, Vec<String>) {
        let wire = Wire::from_params(class, &mut p);
        let rtu = wire.is_rtu();
        let byte_order = p.parse_or::<String>("byte_order", "ABCD".into());
        let s = ModbusSettings {
            // RTU addresses 1..=247 (0 broadcasts); over TCP a gateway
            // may route any byte.
            unit_id: p.int_or("unit_id", 1, if rtu { 0..=247 } else { 0..=255 }),
            // A serial device answers within milliseconds or not at all;
            // a long timeout would cost a dead device's neighbours.
            timeout: p.secs_or("timeout", Duration::from_secs(if rtu { 1 } else { 5 })),
            wire,
            auto_open: p.bool_or("auto_open", true),
            auto_close: p.bool_or("auto_close", false),
            max_registers: p.int_or(
                "max_registers",
                codec::MAX_READ_REGISTERS,
                1..=i64::from(codec::MAX_READ_REGISTERS),
            ),
            max_bits: p.int_or(
                "max_bits",
                codec::MAX_READ_BITS,
                1..=i64::from(codec::MAX_READ_BITS),
            ),
            max_gap: p.int_or("max_gap", 0, 0..=i64::from(codec::MAX_READ_REGISTERS)),
            retry_min: p.secs_or("retry_min", Duration::from_secs(1)),
            retry_max: p.secs_or("retry_max", Duration::from_secs(60)),
            byte_order: ByteOrder::parse(&byte_order).unwrap_or_else(|e| {
                p.error("byte_order", e);
                ByteOrder::Abcd
            }),
            write_multiple: p.bool_or("write_multiple", false),
            retries: if rtu {
                p.int_or("retries", 1, 0..=5)
            } else {
                0
            },
        };
        if s.retry_max < s.retry_min {
            p.error("retry_max", "must not be below retry_min");
        }
        let errors = p.finish(&class.keys());
        (s, errors)
    }

    /// Whether this connector broadcasts (unit 0 on an RTU line): it
    /// writes to every device and reads nothing.
    pub fn broadcasts(&self) -> bool {
        self.wire.is_rtu() && self.unit_id == rtu::BROADCAST
    }

    fn limits(&self) -> Limits {
        Limits {
            max_registers: self.max_registers,
            max_bits: self.max_bits,
            max_gap: self.max_gap,
        }
    }
}

/// Settings plus the parsed tags: everything needed to build the connector.
#[derive(Debug, Clone, PartialEq)]
pub struct ModbusConfig {
    /// Connection settings.
    pub settings: ModbusSettings,
    /// One point per tag, in config order.
    pub points: Vec<Point>,
    /// Which tags may be written.
    pub writable: Vec<bool>,
    /// Tag names, for `rtds check` and logs.
    pub names: Vec<std::sync::Arc<str>>,
}

impl ModbusConfig {
    /// Validates `connector=ModbusTcp`'s settings and tags together,
    /// reporting every mistake.
    pub fn new(params: Params, tags: &[TagConfig]) -> Result<ModbusConfig, Vec<SetupError>> {
        Self::of_class(Class::Tcp, params, tags)
    }

    fn of_class(
        class: Class,
        params: Params,
        tags: &[TagConfig],
    ) -> Result<ModbusConfig, Vec<SetupError>> {
        let (settings, errors) = ModbusSettings::of_class(class, params);
        let mut errors: Vec<SetupError> = errors.into_iter().map(SetupError::setting).collect();
        let mut parsed = Vec::with_capacity(tags.len());
        for (i, t) in tags.iter().enumerate() {
            match parse_point(t, &settings) {
                Ok(p) => parsed.push(Some(p)),
                Err(message) => {
                    errors.push(SetupError::tag(i, message));
                    parsed.push(None);
                }
            }
        }
        let writable: Vec<bool> = tags.iter().map(|t| t.writable).collect();
        // The tags that parsed are checked together too, whatever the
        // others' mistakes.
        errors.extend(
            check_writes(&parsed, &writable, tags)
                .into_iter()
                .map(|(tag, message)| SetupError::tag(tag, message)),
        );
        if !errors.is_empty() {
            return Err(errors);
        }
        let points: Vec<Point> = parsed.into_iter().flatten().collect();
        Ok(ModbusConfig {
            settings,
            points,
            writable,
            names: tags.iter().map(|t| t.name.clone()).collect(),
        })
    }

    /// The read plan for a scan (none for a broadcast: nobody answers).
    pub fn plan(&self) -> Vec<Block> {
        if self.settings.broadcasts() {
            return Vec::new();
        }
        let refs: Vec<&Point> = self.points.iter().collect();
        plan::plan(&refs, self.settings.limits())
    }
}

/// The setup of one Modbus class: its settings, tags and (no) extra fields.
fn setup(class: Class, s: super::Setup<'_>) -> super::setup::Built {
    let name = match class {
        Class::Tcp => "ModbusTcp",
        Class::Rtu => "ModbusRtu",
        Class::RtuTcp => "ModbusRtuTcp",
    };
    let mut errors = s.extras.finish(name, &[]);
    match ModbusConfig::of_class(class, s.params, s.tags) {
        Ok(c) if errors.is_empty() => Ok(Arc::new(c)),
        Ok(_) => Err(errors),
        Err(e) => {
            errors.splice(0..0, e);
            Err(errors)
        }
    }
}

/// `connector=ModbusTcp`.
pub const CLASS: super::Class = super::Class {
    name: "ModbusTcp",
    setup: |s| setup(Class::Tcp, s),
};

/// `connector=ModbusRtu`: a serial line.
pub const RTU_CLASS: super::Class = super::Class {
    name: "ModbusRtu",
    setup: |s| setup(Class::Rtu, s),
};

/// `connector=ModbusRtuTcp`: RTU frames through a serial-to-Ethernet
/// converter.
pub const RTU_TCP_CLASS: super::Class = super::Class {
    name: "ModbusRtuTcp",
    setup: |s| setup(Class::RtuTcp, s),
};

impl SourceConfig for ModbusConfig {
    fn build(self: Arc<Self>) -> Box<dyn super::Connector> {
        Box::new(ModbusClient::new(self))
    }

    /// `ModbusRtu /dev/ttyS1 19200 8E1 unit 7` for logs.
    fn describe(&self) -> String {
        let s = &self.settings;
        format!(
            "{} {}, unit {}{}, timeout {:.1} s{}",
            s.wire.class(),
            s.wire.describe(),
            s.unit_id,
            if s.broadcasts() {
                " (broadcast: writes only)"
            } else {
                ""
            },
            s.timeout.as_secs_f64(),
            if s.auto_close {
                ", closes after each poll"
            } else {
                ""
            }
        )
    }

    /// The requests of one scan, for `rtds check`.
    fn describe_scan(&self) -> Vec<String> {
        if self.settings.broadcasts() {
            return vec![format!(
                "broadcast (unit 0): no reads; each write goes to every device on the line, no reply awaited, then {} ms for the devices to act",
                match &self.settings.wire {
                    Wire::Rtu { timing, .. } | Wire::RtuTcp { timing, .. } =>
                        timing.broadcast_delay.as_millis(),
                    Wire::Tcp { .. } => 0,
                }
            )];
        }
        let blocks = self.plan();
        let refs: Vec<&Point> = self.points.iter().collect();
        let sum = plan::summarize(&blocks, &refs);
        let mut lines = vec![format!(
            "{} requests per scan, {} registers/bits read, {} of them gap filler",
            sum.requests, sum.units_read, sum.units_wasted
        )];
        for b in &blocks {
            let first = &self.names[b.tags[0]];
            let more = if b.tags.len() > 1 {
                format!(" … {} tags", b.tags.len())
            } else {
                String::new()
            };
            lines.push(format!(
                "FC{} {}:{} count {} ({first}{more})",
                b.table.read_function(),
                b.table.prefix(),
                b.start,
                b.count
            ));
        }
        lines
    }

    /// Whether `value` can be written to tag `tag` exactly: the same
    /// encoding the write itself uses, without the wire.
    fn check_write(&self, tag: usize, value: &Value) -> Result<(), String> {
        let p = self.points.get(tag).ok_or("no such tag")?;
        if p.address.table.is_bits() || p.address.bit.is_some() {
            p.encode_bits(value).map(drop)
        } else {
            p.encode_registers(value).map(drop)
        }
    }

    /// Whether the tag may be written (configured writable, writable table).
    fn is_writable(&self, tag: usize) -> bool {
        self.writable.get(tag).copied().unwrap_or(false)
    }

    fn type_name(&self, tag: usize) -> &'static str {
        match self.points.get(tag) {
            Some(p) if p.count > 1 => p.data_type.array_name(),
            Some(p) => p.data_type.name(),
            None => "",
        }
    }

    fn tag_name(&self, tag: usize) -> &str {
        self.names.get(tag).map_or("", |n| n)
    }

    fn tag_count(&self) -> usize {
        self.points.len()
    }

    fn endpoint(&self) -> Option<Endpoint> {
        Some(self.settings.wire.endpoint())
    }

    fn link_settings(&self) -> String {
        self.settings.wire.framing()
    }

    fn retry(&self) -> (Duration, Duration) {
        (self.settings.retry_min, self.settings.retry_max)
    }

    fn auto_close(&self) -> bool {
        self.settings.auto_close
    }

    fn auto_open(&self) -> bool {
        self.settings.auto_open
    }

    /// Every request of the plan (and its retries) answered just within
    /// the timeout, plus the connect.
    fn worst_poll(&self) -> Duration {
        let tries = 1 + u32::from(self.settings.retries);
        self.settings.timeout * (self.plan().len() as u32 * tries).saturating_add(1)
    }
}

/// Protocol limits of one write request (Modbus application protocol
/// v1.1b3, 6.11 and 6.12): 123 registers for FC16, 1968 coils for FC15.
const MAX_WRITE_REGISTERS: u16 = 123;
const MAX_WRITE_COILS: u16 = 1968;

/// Refuses writable tags one request cannot write, and writable tags that
/// share a register or coil: two writes to overlapping addresses leave the
/// device holding a mix of both. Returns every (tag index, message naming
/// both).
fn check_writes(
    points: &[Option<Point>],
    writable: &[bool],
    tags: &[TagConfig],
) -> Vec<(usize, String)> {
    let mut errors = Vec::new();
    let mut spans = Vec::new();
    for (i, p) in points.iter().enumerate() {
        let Some(p) = p else { continue };
        if !writable.get(i).copied().unwrap_or(false) {
            continue;
        }
        let (limit, unit) = if p.address.table.is_bits() {
            (MAX_WRITE_COILS, "coils")
        } else {
            (MAX_WRITE_REGISTERS, "registers")
        };
        if p.span() > limit {
            errors.push((
                i,
                format!(
                    "writable, but spans {} {unit}; one write request carries at most {limit}",
                    p.span()
                ),
            ));
            continue;
        }
        let start = u32::from(p.address.offset);
        spans.push((
            p.address.table,
            start,
            start + u32::from(p.span()),
            p.address.bit,
            i,
        ));
    }
    spans.sort_by_key(|s| (s.0 as u8, s.1, s.2));
    let mut reported = std::collections::BTreeSet::new();
    for (k, a) in spans.iter().enumerate() {
        for b in &spans[k + 1..] {
            if b.0 != a.0 || b.1 >= a.2 {
                break;
            }
            // Distinct bits of one register are written read-modify-write
            // and do not disturb each other.
            if let (Some(x), Some(y)) = (a.3, b.3)
                && x != y
            {
                continue;
            }
            let (first, second) = if a.4 < b.4 { (a.4, b.4) } else { (b.4, a.4) };
            if reported.insert(second) {
                errors.push((
                    second,
                    format!(
                        "writable tags `{}` ({}) and `{}` ({}) overlap: a write to one would change the other",
                        tags[first].name, tags[first].address, tags[second].name, tags[second].address
                    ),
                ));
            }
        }
    }
    errors
}

fn parse_point(t: &TagConfig, s: &ModbusSettings) -> Result<Point, String> {
    let (address, hints) = match Address::parse_vendor(&t.address) {
        Some(parsed) => parsed?,
        None => (
            Address::parse(&t.address)?,
            point::Hints {
                data_type: None,
                order: None,
            },
        ),
    };
    // The tag's own type and order win over what a vendor notation implies.
    let data_type = match &t.data_type {
        Some(name) => DataType::parse(name)?,
        None if address.table.is_bits() || address.bit.is_some() => DataType::Bool,
        None => hints.data_type.unwrap_or(DataType::U16),
    };
    let order = match &t.order {
        Some(o) => ByteOrder::parse(o)?,
        None => hints.order.unwrap_or(s.byte_order),
    };
    // A connector's word order (CDAB) is for numbers; a text without an
    // order of its own takes only the byte order inside a register.
    let order = match (&t.order, data_type, order) {
        (None, DataType::Str, ByteOrder::Cdab) => ByteOrder::Abcd,
        (None, DataType::Str, ByteOrder::Dcba) => ByteOrder::Badc,
        (_, _, o) => o,
    };
    let point = Point {
        address,
        data_type,
        count: t.count.unwrap_or(1),
        order,
        scale: t.scale,
        offset: t.offset,
    };
    point.validate()?;
    let max = if address.table.is_bits() {
        s.max_bits
    } else {
        s.max_registers
    };
    if point.span() > max {
        return Err(format!(
            "spans {} {}, more than one request may read (max {max})",
            point.span(),
            if address.table.is_bits() {
                "bits"
            } else {
                "registers"
            }
        ));
    }
    if s.broadcasts() {
        if !t.writable {
            return Err(
                "a broadcast connector (unit_id=0) reads nothing: its tags must be writable".into(),
            );
        }
        if address.bit.is_some() {
            return Err("a bit inside a register is written read-modify-write, and nobody answers a broadcast's read: write the whole register".into());
        }
    }
    if t.writable && !address.table.is_writable() {
        return Err(format!(
            "writable, but {} is a read-only table",
            address.table.prefix()
        ));
    }
    Ok(point)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connector::At;

    fn tag(name: &str, address: &str, t: &str) -> TagConfig {
        TagConfig {
            name: name.into(),
            address: address.into(),
            data_type: Some(t.into()),
            count: None,
            order: None,
            scale: 1.0,
            offset: 0.0,
            writable: false,
            description: String::new(),
            unit: String::new(),
            deadband: None,
            deadband_pct: None,
            span: None,
            heartbeat_s: None,
            archive_prev: None,
        }
    }

    #[test]
    fn settings_defaults_and_seed_keys() {
        let p =
            Params::parse("connector=ModbusTcp; host=plc; timeout=0.5; auto_close=true").unwrap();
        let (s, errors) = ModbusSettings::from_params(p);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(
            s.wire,
            Wire::Tcp {
                host: "plc".into(),
                port: 502
            }
        );
        assert_eq!((s.unit_id, s.max_registers, s.max_gap), (1, 125, 0));
        assert_eq!(s.timeout, Duration::from_millis(500));
        assert!(s.auto_open && s.auto_close);
        // Every mistake at once, each naming its key and range.
        let p =
            Params::parse("connector=ModbusTcp; host=plc; unit_id=300; max_registers=200; port=0")
                .unwrap();
        let (_, errors) = ModbusSettings::from_params(p);
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(
            errors
                .iter()
                .any(|e| e.contains("`unit_id`: `300` is not a whole number in 0..=255"))
        );
        assert!(
            errors
                .iter()
                .any(|e| e.contains("`max_registers`: `200` is not a whole number in 1..=125"))
        );
        assert!(
            errors
                .iter()
                .any(|e| e.contains("`port`: `0` is not a whole number in 1..=65535"))
        );
    }

    #[test]
    fn a_connectors_word_order_is_for_numbers_not_text() {
        let p = || Params::parse("connector=ModbusTcp; host=plc; byte_order=DCBA").unwrap();
        let mut s = tag("s", "hr:0", "string");
        s.count = Some(2);
        let c = ModbusConfig::new(p(), &[s.clone(), tag("f", "hr:2", "f32")]).unwrap();
        assert_eq!(c.points[0].order, ByteOrder::Badc);
        assert_eq!(c.points[1].order, ByteOrder::Dcba);
        s.order = Some("CDAB".into());
        let e = &ModbusConfig::new(p(), &[s]).unwrap_err()[0];
        assert!(e.message.contains("not CDAB"), "{}", e.message);
    }

    #[test]
    fn tags_are_checked_against_their_table() {
        let p = || Params::parse("connector=ModbusTcp; host=plc").unwrap();
        assert!(ModbusConfig::new(p(), &[tag("a", "hr:0", "f32")]).is_ok());
        // Every bad tag, not the first only.
        let e = ModbusConfig::new(
            p(),
            &[
                tag("a", "hr:0", "u16"),
                tag("b", "co:0", "f32"),
                tag("c", "hr:x", "u16"),
                tag("d", "hr:1", "u17"),
            ],
        )
        .unwrap_err();
        let at: Vec<&At> = e.iter().map(|e| &e.at).collect();
        assert_eq!(at, [&At::Tag(1), &At::Tag(2), &At::Tag(3)]);
        let mut w = tag("c", "ir:0", "u16");
        w.writable = true;
        assert!(
            ModbusConfig::new(p(), &[w]).unwrap_err()[0]
                .message
                .contains("read-only")
        );
        let mut s = tag("s", "hr:0", "string");
        s.count = Some(126);
        assert!(
            ModbusConfig::new(p(), &[s]).unwrap_err()[0]
                .message
                .contains("max 125")
        );
    }

    #[test]
    fn writes_over_protocol_limits_and_overlapping_writable_tags_are_refused() {
        let p = || Params::parse("connector=ModbusTcp; host=plc").unwrap();
        let w = |name: &str, address: &str, t: &str, count: Option<u16>| TagConfig {
            writable: true,
            count,
            ..tag(name, address, t)
        };
        // 123 registers is the FC16 limit (spec 6.12), 1968 coils FC15's (6.11).
        assert!(ModbusConfig::new(p(), &[w("a", "hr:0", "u16", Some(123))]).is_ok());
        let e = &ModbusConfig::new(p(), &[w("a", "hr:0", "u16", Some(124))]).unwrap_err()[0];
        assert!(e.message.contains("at most 123"), "{}", e.message);
        assert!(ModbusConfig::new(p(), &[w("c", "co:0", "bool", Some(1968))]).is_ok());
        let e = &ModbusConfig::new(p(), &[w("c", "co:0", "bool", Some(1969))]).unwrap_err()[0];
        assert!(e.message.contains("at most 1968"), "{}", e.message);
        // Read-only tags may be read beyond a write's limit.
        assert!(ModbusConfig::new(p(), &[tag("r", "hr:0", "u16")]).is_ok());

        let e = &ModbusConfig::new(
            p(),
            &[
                w("Big", "hr:100", "u32", None),
                w("Small", "hr:101", "u16", None),
            ],
        )
        .unwrap_err()[0];
        assert_eq!(e.at, At::Tag(1));
        assert!(
            e.message.contains("`Big` (hr:100)") && e.message.contains("`Small` (hr:101)"),
            "{}",
            e.message
        );
        // Adjacent is fine, and so are two bits of one register; a bit and
        // the whole register are not.
        assert!(
            ModbusConfig::new(
                p(),
                &[
                    w("A", "hr:100", "u32", None),
                    w("B", "hr:102", "u16", None),
                    w("C", "hr:103.0", "bool", None),
                    w("D", "hr:103.1", "bool", None),
                ]
            )
            .is_ok()
        );
        assert!(
            ModbusConfig::new(
                p(),
                &[
                    w("C", "hr:103.0", "bool", None),
                    w("R", "hr:103", "u16", None)
                ]
            )
            .is_err()
        );
        // Overlap with a read-only tag is harmless: only writes collide.
        assert!(
            ModbusConfig::new(
                p(),
                &[w("Big", "hr:100", "u32", None), tag("Ro", "hr:101", "u16")]
            )
            .is_ok()
        );
    }
}
