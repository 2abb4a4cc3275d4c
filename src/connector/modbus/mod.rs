//! The `ModbusTcp` connector: settings from the connection string, the
//! per-scan request plan, and the blocking client that runs it.

pub mod codec;
pub mod plan;
pub mod point;

use self::codec::{Exception, Frame, Request, Response};
use self::plan::{Block, Limits};
use self::point::{Address, ByteOrder, DataType, Point, Table};
use super::{Connector, ConnectorError, Params, SetupError, SourceConfig};
use crate::model::{Sample, Status, Value};
use crate::tag::TagConfig;
use chrono::Utc;
use std::io;
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// Keys `connector=ModbusTcp` accepts, in the order the README documents them.
pub const KEYS: &[&str] = &[
    "host",
    "port",
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

/// Typed connection settings.
#[derive(Debug, Clone, PartialEq)]
pub struct ModbusSettings {
    /// Device host name or IP.
    pub host: String,
    /// TCP port (502).
    pub port: u16,
    /// Unit id (1); gateways route by it.
    pub unit_id: u8,
    /// Connect and reply timeout (5 s).
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
}

impl ModbusSettings {
    /// Takes the class's keys from `params`: the settings (a default
    /// where a value was wrong) and every mistake (a value out of its
    /// range, an unknown key), so the tags are checked too.
    pub fn from_params(mut p: Params) -> (ModbusSettings, Vec<String>) {
        let byte_order = p.parse_or::<String>("byte_order", "ABCD".into());
        let s = ModbusSettings {
            host: p.required("host"),
            port: p.int_or("port", 502, 1..=65535),
            unit_id: p.int_or("unit_id", 1, 0..=255),
            timeout: p.secs_or("timeout", Duration::from_secs(5)),
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
        };
        if s.retry_max < s.retry_min {
            p.error("retry_max", "must not be below retry_min");
        }
        let errors = p.finish(KEYS);
        (s, errors)
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
    /// Validates settings and tags together, reporting every mistake.
    pub fn new(params: Params, tags: &[TagConfig]) -> Result<ModbusConfig, Vec<SetupError>> {
        let (settings, errors) = ModbusSettings::from_params(params);
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

    /// The read plan for a scan.
    pub fn plan(&self) -> Vec<Block> {
        let refs: Vec<&Point> = self.points.iter().collect();
        plan::plan(&refs, self.settings.limits())
    }
}

/// `connector=ModbusTcp`.
pub const CLASS: super::Class = super::Class {
    name: "ModbusTcp",
    setup: |s| {
        let extras = s.extras.finish("ModbusTcp", &[]);
        let config = ModbusConfig::new(s.params, s.tags);
        match (config, extras.is_empty()) {
            (Ok(c), true) => Ok(std::sync::Arc::new(c)),
            (Ok(_), false) => Err(extras),
            (Err(mut e), _) => {
                e.extend(extras);
                Err(e)
            }
        }
    },
};

impl SourceConfig for ModbusConfig {
    fn build(self: std::sync::Arc<Self>) -> Box<dyn super::Connector> {
        Box::new(ModbusTcp::new(self))
    }

    /// `host:port unit N` for logs.
    fn describe(&self) -> String {
        let s = &self.settings;
        format!(
            "ModbusTcp {}:{} unit {}, timeout {:.1} s{}",
            s.host,
            s.port,
            s.unit_id,
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

    fn endpoint(&self) -> Option<String> {
        Some(format!(
            "{}:{}",
            self.settings.host.to_ascii_lowercase(),
            self.settings.port
        ))
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

    /// Every request of the plan answered just within the timeout, plus
    /// the connect.
    fn worst_poll(&self) -> Duration {
        self.settings.timeout * (self.plan().len() as u32).saturating_add(1)
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
    if t.writable && !address.table.is_writable() {
        return Err(format!(
            "writable, but {} is a read-only table",
            address.table.prefix()
        ));
    }
    Ok(point)
}

/// What a tag's addresses hold on the device, undecoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Raw {
    /// Register words as received.
    Registers(Vec<u16>),
    /// Coils or discrete inputs.
    Bits(Vec<bool>),
}

/// A Modbus TCP client connector. One socket, one request at a time: the
/// transaction id of every reply is checked, and after any timeout the
/// socket is dropped so a late reply can never answer the next request.
pub struct ModbusTcp {
    config: std::sync::Arc<ModbusConfig>,
    /// The scan plan; shared so a scan holds it without copying it.
    blocks: std::sync::Arc<Vec<Block>>,
    /// What scans learned about the device's address map (see
    /// [`plan::Learned`]): one bad address never costs the rest of a
    /// block, and a refused bridge is split once, not every scan.
    learned: plan::Learned,
    stream: Option<TcpStream>,
    tid: u16,
    requests: u64,
}

impl ModbusTcp {
    /// A connector for `config`, not yet connected.
    pub fn new(config: std::sync::Arc<ModbusConfig>) -> Self {
        let blocks = config.plan().into();
        ModbusTcp {
            config,
            blocks,
            learned: plan::Learned::default(),
            stream: None,
            tid: 0,
            requests: 0,
        }
    }

    fn replan(&mut self) {
        let all: Vec<&Point> = self.config.points.iter().collect();
        self.blocks = self
            .learned
            .plan(&all, self.config.settings.limits())
            .into();
    }

    /// Sends one request and returns its reply, matched by transaction id.
    /// `timeout` bounds the whole exchange (one deadline set when the
    /// request goes out): sending, any stray frames for other transactions
    /// (skipped), and the complete reply, however slowly it trickles in.
    pub fn call(&mut self, req: &Request) -> Result<Response, ConnectorError> {
        let deadline = Instant::now() + self.config.settings.timeout;
        let stream = self
            .stream
            .as_mut()
            .ok_or_else(|| ConnectorError::link(Status::NOT_CONNECTED, "not connected"))?;
        self.tid = self.tid.wrapping_add(1);
        self.requests += 1;
        let tid = self.tid;
        let unit = self.config.settings.unit_id;
        let mut link = Deadline { stream, deadline };
        Frame {
            tid,
            unit,
            pdu: req.encode_pdu(),
        }
        .write_to(&mut link)
        .map_err(|e| io_error("send", &e))?;
        let mut strays = 0;
        loop {
            let frame = Frame::read_from(&mut link).map_err(|e| match e.kind() {
                io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock if strays > 0 => {
                    ConnectorError::link(
                        Status::TIMEOUT,
                        format!(
                            "reply too slow: no answer to transaction {tid} within the timeout, only {strays} replies for other transactions"
                        ),
                    )
                }
                _ => io_error("receive", &e),
            })?;
            if frame.tid != tid {
                // A reply for another transaction (some gateways duplicate
                // replies): skipped, within the same deadline.
                strays += 1;
                log::debug!(
                    "modbus: reply for another transaction ({}, waiting for {tid}) skipped",
                    frame.tid
                );
                continue;
            }
            if frame.unit != unit {
                return Err(ConnectorError::link(
                    Status::PROTOCOL_ERROR,
                    format!("reply from unit {}, asked unit {unit}", frame.unit),
                ));
            }
            return Response::decode_pdu(req, &frame.pdu)
                .map_err(|m| ConnectorError::link(Status::PROTOCOL_ERROR, m));
        }
    }

    /// One scan by the plan: each block read in one request, its tags'
    /// raw registers or bits handed to `visit` in plan order. A block the
    /// device answers with an exception is read tag by tag, and a tag that
    /// fails alone is read alone from then on (the plan is redone), so one
    /// bad address costs only its own tag.
    pub fn scan_blocks(
        &mut self,
        mut visit: impl FnMut(usize, Result<Raw, Exception>),
    ) -> Result<(), ConnectorError> {
        let blocks = self.blocks.clone();
        let mut learned = self.learned.clone();
        for b in blocks.iter() {
            match self.fetch_block(b)? {
                Ok(raw) => {
                    for (t, r) in self.split(b, raw) {
                        learned.failing.remove(&t);
                        visit(t, Ok(r));
                    }
                }
                Err(code) if b.tags.len() == 1 => {
                    learned.failing.insert(b.tags[0]);
                    visit(b.tags[0], Err(code));
                }
                Err(code) => {
                    let mut failed_alone = Vec::new();
                    for &t in &b.tags {
                        let p = &self.config.points[t];
                        let solo = Block {
                            table: b.table,
                            start: p.address.offset,
                            count: p.span(),
                            tags: vec![t],
                        };
                        match self.fetch_block(&solo)? {
                            Ok(raw) => visit(t, Ok(raw)),
                            Err(code) => {
                                failed_alone.push(t);
                                visit(t, Err(code));
                            }
                        }
                    }
                    if let Some(how) = learned.refused(b, &failed_alone) {
                        log::warn!(
                            "modbus {}: exception {code} on {}:{} count {} ({} tags, {} of them refused alone): reading them {how} from now on",
                            self.config.settings.host,
                            b.table.prefix(),
                            b.start,
                            b.count,
                            b.tags.len(),
                            failed_alone.len()
                        );
                    }
                }
            }
        }
        if learned != self.learned {
            self.learned = learned;
            self.replan();
        }
        Ok(())
    }

    /// Each tag's share of a block's registers or bits.
    fn split(&self, b: &Block, raw: Raw) -> Vec<(usize, Raw)> {
        b.tags
            .iter()
            .map(|&t| {
                let p = &self.config.points[t];
                let from = (p.address.offset - b.start) as usize;
                let to = from + p.span() as usize;
                let part = match &raw {
                    Raw::Registers(r) => Raw::Registers(r[from..to].to_vec()),
                    Raw::Bits(x) => Raw::Bits(x[from..to].to_vec()),
                };
                (t, part)
            })
            .collect()
    }

    /// One read request for a block; `Ok(Err(code))` is a device exception.
    fn fetch_block(&mut self, b: &Block) -> Result<Result<Raw, Exception>, ConnectorError> {
        let (addr, count) = (b.start, b.count);
        let req = match b.table {
            Table::Coil => Request::ReadCoils { addr, count },
            Table::DiscreteInput => Request::ReadDiscreteInputs { addr, count },
            Table::HoldingRegister => Request::ReadHoldingRegisters { addr, count },
            Table::InputRegister => Request::ReadInputRegisters { addr, count },
        };
        Ok(match self.call(&req)? {
            Response::Exception(code) => Err(code),
            Response::Bits(bits) => Ok(Raw::Bits(bits)),
            Response::Registers(regs) => Ok(Raw::Registers(regs)),
            Response::Written { .. } => {
                return Err(ConnectorError::link(
                    Status::PROTOCOL_ERROR,
                    "write echo to a read",
                ));
            }
        })
    }
}

fn io_error(what: &str, e: &io::Error) -> ConnectorError {
    let status = match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Status::TIMEOUT,
        io::ErrorKind::InvalidData => Status::PROTOCOL_ERROR,
        _ => Status::NOT_CONNECTED,
    };
    let message = match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
            format!("{what}: reply too slow (no complete reply within the timeout)")
        }
        io::ErrorKind::UnexpectedEof => format!("{what}: the device closed the connection"),
        _ => format!("{what}: {e}"),
    };
    ConnectorError::link(status, message)
}

/// The socket with one deadline for a whole exchange: every read and write
/// gets only the time left, so a reply dribbled a byte at a time cannot
/// stretch the exchange past `timeout`.
struct Deadline<'a> {
    stream: &'a mut TcpStream,
    deadline: Instant,
}

impl Deadline<'_> {
    fn left(&self) -> io::Result<Duration> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            Err(io::Error::new(io::ErrorKind::TimedOut, "deadline passed"))
        } else {
            Ok(left)
        }
    }
}

impl io::Read for Deadline<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.left()?;
        self.stream.set_read_timeout(Some(left))?;
        self.stream.read(buf)
    }
}

impl io::Write for Deadline<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let left = self.left()?;
        self.stream.set_write_timeout(Some(left))?;
        self.stream.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.stream.flush()
    }
}

impl Connector for ModbusTcp {
    fn open(&mut self) -> Result<(), ConnectorError> {
        self.close();
        let s = &self.config.settings;
        let addr = (s.host.as_str(), s.port)
            .to_socket_addrs()
            .map_err(|e| {
                ConnectorError::link(Status::NOT_CONNECTED, format!("resolve {}: {e}", s.host))
            })?
            .next()
            .ok_or_else(|| {
                ConnectorError::link(Status::NOT_CONNECTED, format!("{} has no address", s.host))
            })?;
        let stream = TcpStream::connect_timeout(&addr, s.timeout)
            .map_err(|e| io_error(&format!("connect {addr}"), &e))?;
        let setup = |st: &TcpStream| -> io::Result<()> {
            st.set_read_timeout(Some(s.timeout))?;
            st.set_write_timeout(Some(s.timeout))?;
            st.set_nodelay(true)
        };
        setup(&stream).map_err(|e| io_error("socket setup", &e))?;
        self.stream = Some(stream);
        Ok(())
    }

    fn is_open(&self) -> bool {
        self.stream.is_some()
    }

    fn read(&mut self, out: &mut Vec<Sample>) -> Result<(), ConnectorError> {
        // The settings are shared: holding them while `scan_blocks` borrows
        // the connector costs a reference count, not a copy of every point.
        let config = self.config.clone();
        self.scan_blocks(|t, raw| {
            let ts = Utc::now();
            let p = &config.points[t];
            out.push(match raw {
                Ok(Raw::Registers(r)) => Sample {
                    tag: t,
                    value: Some(p.decode_registers(&r)),
                    status: Status::GOOD,
                    ts,
                },
                Ok(Raw::Bits(b)) => Sample {
                    tag: t,
                    value: Some(p.decode_bits(&b)),
                    status: Status::GOOD,
                    ts,
                },
                Err(code) => Sample {
                    tag: t,
                    value: None,
                    status: Status::exception(code.code()),
                    ts,
                },
            });
        })
    }

    fn write(&mut self, tag: usize, value: &Value) -> Result<Value, ConnectorError> {
        let bad = |m: String| ConnectorError::refused(Status::BAD_CONFIG, m);
        let config = self.config.clone();
        let p = config
            .points
            .get(tag)
            .ok_or_else(|| bad(format!("no tag #{tag}")))?;
        if !config.is_writable(tag) {
            return Err(bad(format!("tag {} is not writable", config.names[tag])));
        }
        let addr = p.address.offset;
        let multiple = config.settings.write_multiple;
        // The request, and the value the device holds once it is done:
        // decoded from what goes on the wire, as the next read decodes it.
        let (req, held) = match (p.address.table, p.address.bit) {
            (Table::Coil, _) => {
                let bits = p.encode_bits(value).map_err(bad)?;
                let held = p.decode_bits(&bits);
                let req = if bits.len() == 1 && !multiple {
                    Request::WriteSingleCoil {
                        addr,
                        value: bits[0],
                    }
                } else {
                    Request::WriteMultipleCoils { addr, values: bits }
                };
                (req, held)
            }
            (Table::HoldingRegister, Some(bit)) => {
                // A bit inside a register: read, modify, write back.
                let on = p.encode_bits(value).map_err(bad)?[0];
                let current = match self.call(&Request::ReadHoldingRegisters { addr, count: 1 })? {
                    Response::Registers(r) => r[0],
                    Response::Exception(e) => {
                        return Err(ConnectorError::refused(
                            Status::exception(e.code()),
                            format!("read before bit write: {e}"),
                        ));
                    }
                    _ => {
                        return Err(ConnectorError::link(
                            Status::PROTOCOL_ERROR,
                            "unexpected reply",
                        ));
                    }
                };
                let mask = 1u16 << bit;
                let value = if on { current | mask } else { current & !mask };
                let req = if multiple {
                    Request::WriteMultipleRegisters {
                        addr,
                        values: vec![value],
                    }
                } else {
                    Request::WriteSingleRegister { addr, value }
                };
                (req, Value::Bool(on))
            }
            (Table::HoldingRegister, None) => {
                let regs = p.encode_registers(value).map_err(bad)?;
                let held = p.decode_registers(&regs);
                let req = if regs.len() == 1 && !multiple {
                    Request::WriteSingleRegister {
                        addr,
                        value: regs[0],
                    }
                } else {
                    Request::WriteMultipleRegisters { addr, values: regs }
                };
                (req, held)
            }
            (t, _) => return Err(bad(format!("{} is read-only", t.prefix()))),
        };
        match self.call(&req)? {
            Response::Written { .. } => Ok(held),
            Response::Exception(e) => Err(ConnectorError::refused(
                Status::exception(e.code()),
                format!("device refused write to {}: {e}", p.address),
            )),
            _ => Err(ConnectorError::link(
                Status::PROTOCOL_ERROR,
                "unexpected reply to a write",
            )),
        }
    }

    fn take_link(&mut self) -> Option<TcpStream> {
        self.stream.take()
    }

    fn put_link(&mut self, stream: TcpStream) {
        self.stream = Some(stream);
    }

    fn close(&mut self) {
        if let Some(s) = self.stream.take() {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }

    fn requests(&self) -> u64 {
        self.requests
    }
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
            (s.port, s.unit_id, s.max_registers, s.max_gap),
            (502, 1, 125, 0)
        );
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
