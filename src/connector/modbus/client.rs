//! The Modbus client: what a scan and a write do, on whatever wire the
//! connector's transport is (`transport.rs`). Planning, exception
//! isolation, the plan learning from refusals, writes that archive what the
//! device holds, and a bit's read-modify-write live here once for TCP and
//! RTU alike.

use super::codec::{Exception, Request, Response};
use super::plan::{self, Block};
use super::point::{Decoder, Point, Table};
use super::transport::Transport;
use super::{ModbusConfig, SourceConfig};
use crate::connector::{Connector, ConnectorError};
use crate::model::{Sample, Status, Timestamp, Value};
use chrono::Utc;
use std::time::Instant;

/// What a tag's addresses hold on the device, undecoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Raw {
    /// Register words as received.
    Registers(Vec<u16>),
    /// Coils or discrete inputs.
    Bits(Vec<bool>),
}

/// A tag's share of a reply, borrowed from it: decoded in place, never
/// copied (a copy per tag was a fifth of a scan's cost).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawRef<'a> {
    /// Register words as received.
    Registers(&'a [u16]),
    /// Coils or discrete inputs.
    Bits(&'a [bool]),
}

impl RawRef<'_> {
    /// An owned copy (for the commissioning tools, which print it later).
    pub fn to_owned(self) -> Raw {
        match self {
            RawRef::Registers(r) => Raw::Registers(r.to_vec()),
            RawRef::Bits(b) => Raw::Bits(b.to_vec()),
        }
    }
}

impl Raw {
    fn as_ref(&self) -> RawRef<'_> {
        match self {
            Raw::Registers(r) => RawRef::Registers(r),
            Raw::Bits(b) => RawRef::Bits(b),
        }
    }
}

/// Where a tag sits in a block's reply and how it is decoded.
#[derive(Debug, Clone, Copy)]
pub struct Slot {
    /// First address.
    pub offset: u16,
    /// Registers or bits.
    pub span: u16,
    /// How its registers become its value.
    pub decoder: Decoder,
}

/// A block's reply, with where each of its tags sits in it.
pub struct Reply<'a> {
    /// The block read.
    pub block: &'a Block,
    /// Its reply.
    pub raw: &'a Raw,
    /// Every tag's slot, by tag index.
    slots: &'a [Slot],
    /// When the reply came.
    pub ts: Timestamp,
}

impl<'a> Reply<'a> {
    /// Each tag of the block with its slot and its share of the reply, in
    /// plan order.
    #[inline(always)]
    pub fn parts(&self) -> impl Iterator<Item = (usize, Slot, RawRef<'a>)> + 'a {
        let (block, raw, slots) = (self.block, self.raw, self.slots);
        block.tags.iter().map(move |&t| {
            let s = slots[t];
            let from = usize::from(s.offset - block.start);
            let to = from + usize::from(s.span);
            let share = match raw {
                Raw::Registers(r) => RawRef::Registers(&r[from..to]),
                Raw::Bits(x) => RawRef::Bits(&x[from..to]),
            };
            (t, s, share)
        })
    }
}

/// What a scan hands its visitor: most of a scan is whole blocks (their
/// tags cut from the reply in a loop of the visitor's own, not a call per
/// tag); a block the device refused is read and handed over tag by tag.
pub enum Visit<'a> {
    /// A block's reply.
    Block(Reply<'a>),
    /// One tag read on its own: its raw share or the device's exception.
    Tag(usize, Timestamp, Result<RawRef<'a>, Exception>),
}

/// A Modbus client connector, whatever its wire: the scan by the plan,
/// exceptions isolated to their tags, the plan learning, writes with the
/// value the device holds, a bit's read-modify-write. One request at a
/// time, each bounded by one deadline.
pub struct ModbusClient {
    config: std::sync::Arc<ModbusConfig>,
    /// The scan plan; shared so a scan holds it without copying it.
    blocks: std::sync::Arc<Vec<Block>>,
    /// What scans learned about the device's address map (see
    /// [`plan::Learned`]): one bad address never costs the rest of a
    /// block, and a refused bridge is split once, not every scan.
    learned: plan::Learned,
    /// The wire (taken and handed back between connectors sharing it).
    link: Option<Box<dyn Transport>>,
    requests: u64,
    /// Each tag's first address, span and decoding, worked out once: a
    /// scan cuts every reply by them.
    slots: Vec<Slot>,
    /// The previous reply's register vector, for the next reply to reuse.
    spare: Vec<u16>,
    /// Replies refused during this connector's own exchanges (on a shared
    /// line, the link's count is the line's; this one says which device).
    bad_frames: u64,
}

impl ModbusClient {
    /// A connector for `config`, not yet connected.
    pub fn new(config: std::sync::Arc<ModbusConfig>) -> Self {
        let blocks = config.plan().into();
        let link = Some(config.settings.wire.transport(config.settings.timeout));
        let slots = config
            .points
            .iter()
            .map(|p| Slot {
                offset: p.address.offset,
                span: p.span(),
                decoder: p.decoder(),
            })
            .collect();
        ModbusClient {
            slots,
            config,
            blocks,
            learned: plan::Learned::default(),
            link,
            requests: 0,
            spare: Vec::new(),
            bad_frames: 0,
        }
    }

    fn link(&mut self) -> Result<&mut Box<dyn Transport>, ConnectorError> {
        self.link
            .as_mut()
            .ok_or_else(|| ConnectorError::link(Status::NOT_CONNECTED, "not connected"))
    }

    /// A reply that does not answer the request (see [`super::Wire::garbled`]).
    fn garbled(&self, message: &str) -> ConnectorError {
        ConnectorError {
            failure: self.config.settings.wire.garbled(),
            status: Status::PROTOCOL_ERROR,
            message: message.into(),
        }
    }

    fn replan(&mut self) {
        let all: Vec<&Point> = self.config.points.iter().collect();
        self.blocks = self
            .learned
            .plan(&all, self.config.settings.limits())
            .into();
    }

    /// Sends one request and returns its reply, checked to answer that
    /// very request. `timeout` bounds the whole exchange (one deadline set
    /// when the request goes out).
    pub fn call(&mut self, req: &Request) -> Result<Response, ConnectorError> {
        self.call_into(req, Vec::new())
    }

    /// [`Self::call`] with a read's registers decoded into `spare`.
    fn call_into(&mut self, req: &Request, spare: Vec<u16>) -> Result<Response, ConnectorError> {
        let deadline = Instant::now() + self.config.settings.timeout;
        let unit = self.config.settings.unit_id;
        let broadcast = self.config.settings.broadcasts();
        let pdu_out = req.encode_pdu();
        let (timeout, retries) = (self.config.settings.timeout, self.config.settings.retries);
        let mut tries = 0;
        let pdu = loop {
            self.requests += 1;
            let link = self.link()?;
            let before = link.bad_frames();
            let got = if broadcast {
                link.broadcast(&pdu_out, deadline).map(|()| None)
            } else {
                // A garbled reply (a bad CRC, noise) on a line is tried
                // again at once, `retries` times, each with its own
                // timeout: noise is brief, and backing off for it would
                // cost a poll.
                let d = if tries == 0 {
                    deadline
                } else {
                    Instant::now() + timeout
                };
                link.exchange(unit, &pdu_out, d).map(Some)
            };
            let after = link.bad_frames();
            self.bad_frames += after.saturating_sub(before);
            match got {
                Err(e)
                    if e.failure == crate::connector::Failure::Device
                        && e.status == Status::PROTOCOL_ERROR
                        && tries < retries =>
                {
                    tries += 1;
                    log::debug!("modbus: {e}; trying again ({tries})");
                }
                other => break other,
            }
        };
        let Some(pdu) = pdu? else {
            // Nobody answers a broadcast: it is done once it is sent.
            return Ok(Response::Written { addr: 0, value: 0 });
        };
        Response::decode_pdu_into(req, &pdu, spare).map_err(|m| {
            // A reply that passed the framing but does not answer the
            // request: over TCP the stream is in doubt (reconnect); on a
            // serial line, only this device's answer is.
            self.garbled(&m)
        })
    }

    /// One scan by the plan, each tag's raw registers or bits handed to
    /// `visit` in plan order with the time of its reply (see [`Self::scan`]).
    pub fn scan_blocks(
        &mut self,
        mut visit: impl FnMut(usize, Timestamp, Result<RawRef<'_>, Exception>),
    ) -> Result<(), ConnectorError> {
        self.scan(|v| match v {
            Visit::Block(reply) => {
                for (t, _, r) in reply.parts() {
                    visit(t, reply.ts, Ok(r));
                }
            }
            Visit::Tag(t, ts, r) => visit(t, ts, r),
        })
    }

    /// One scan by the plan: each block read in one request, handed to
    /// `visit` with the time of the reply (all of a reply's values were
    /// read at that moment: one time stamp for them, not a clock read per
    /// tag). A block the device answers with an exception is read tag by
    /// tag, and a tag that fails alone is read alone from then on (the
    /// plan is redone), so one bad address costs only its own tag.
    pub fn scan(&mut self, mut visit: impl FnMut(Visit<'_>)) -> Result<(), ConnectorError> {
        let blocks = self.blocks.clone();
        let mut learned = self.learned.clone();
        for b in blocks.iter() {
            let got = self.fetch_block(b)?;
            let ts = Utc::now();
            match got {
                Ok(raw) => {
                    if !learned.failing.is_empty() {
                        for t in &b.tags {
                            learned.failing.remove(t);
                        }
                    }
                    visit(Visit::Block(Reply {
                        block: b,
                        raw: &raw,
                        slots: &self.slots,
                        ts,
                    }));
                    if let Raw::Registers(regs) = raw {
                        self.spare = regs;
                    }
                }
                Err(code) if b.tags.len() == 1 => {
                    learned.failing.insert(b.tags[0]);
                    visit(Visit::Tag(b.tags[0], ts, Err(code)));
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
                        let got = self.fetch_block(&solo)?;
                        let ts = Utc::now();
                        match got {
                            Ok(raw) => visit(Visit::Tag(t, ts, Ok(raw.as_ref()))),
                            Err(code) => {
                                failed_alone.push(t);
                                visit(Visit::Tag(t, ts, Err(code)));
                            }
                        }
                    }
                    if let Some(how) = learned.refused(b, &failed_alone) {
                        log::warn!(
                            "modbus {}: exception {code} on {}:{} count {} ({} tags, {} of them refused alone): reading them {how} from now on",
                            self.config.settings.wire.describe(),
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

    /// One read request for a block; `Ok(Err(code))` is a device exception.
    fn fetch_block(&mut self, b: &Block) -> Result<Result<Raw, Exception>, ConnectorError> {
        let (addr, count) = (b.start, b.count);
        let req = match b.table {
            Table::Coil => Request::ReadCoils { addr, count },
            Table::DiscreteInput => Request::ReadDiscreteInputs { addr, count },
            Table::HoldingRegister => Request::ReadHoldingRegisters { addr, count },
            Table::InputRegister => Request::ReadInputRegisters { addr, count },
        };
        let spare = std::mem::take(&mut self.spare);
        Ok(match self.call_into(&req, spare)? {
            Response::Exception(code) => Err(code),
            Response::Bits(bits) => Ok(Raw::Bits(bits)),
            Response::Registers(regs) => Ok(Raw::Registers(regs)),
            Response::Written { .. } => {
                return Err(self.garbled("a write's echo in reply to a read"));
            }
        })
    }
}

impl Connector for ModbusClient {
    fn open(&mut self) -> Result<(), ConnectorError> {
        self.link()?.open()
    }

    fn is_open(&self) -> bool {
        self.link.as_ref().is_some_and(|l| l.is_open())
    }

    fn read(&mut self, out: &mut Vec<Sample>) -> Result<(), ConnectorError> {
        // The settings are shared: holding them while `scan` borrows the
        // connector costs a reference count, not a copy of every point.
        let config = self.config.clone();
        let good = |tag, ts, value| Sample {
            tag,
            value: Some(value),
            status: Status::GOOD,
            ts,
        };
        self.scan(|v| match v {
            // Most of a scan: a block's tags decoded in one loop, extending
            // the vector from an iterator of known length (room made once,
            // no capacity check per tag).
            Visit::Block(reply) => out.extend(reply.parts().map(|(t, slot, share)| {
                let p = &config.points[t];
                let value = match share {
                    RawRef::Registers(r) => slot.decoder.decode(p, r),
                    RawRef::Bits(b) => p.decode_bits(b),
                };
                good(t, reply.ts, value)
            })),
            Visit::Tag(t, ts, Ok(r)) => out.push(good(t, ts, decode(&config.points[t], r))),
            Visit::Tag(t, ts, Err(code)) => out.push(Sample {
                tag: t,
                value: None,
                status: Status::exception(code.code()),
                ts,
            }),
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
                    _ => return Err(self.garbled("not a register in reply to a read")),
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
            _ => Err(self.garbled("not a write's echo in reply to a write")),
        }
    }

    fn take_link(&mut self) -> Option<Box<dyn std::any::Any + Send>> {
        self.link
            .take()
            .map(|l| Box::new(l) as Box<dyn std::any::Any + Send>)
    }

    fn put_link(&mut self, link: Box<dyn std::any::Any + Send>) {
        if let Ok(l) = link.downcast::<Box<dyn Transport>>() {
            self.link = Some(*l);
        }
    }

    fn close(&mut self) {
        if let Some(l) = self.link.as_mut() {
            l.close();
        }
    }

    fn requests(&self) -> u64 {
        self.requests
    }

    fn bad_frames(&self) -> u64 {
        self.bad_frames
    }
}

/// A tag's value from its share of a reply.
fn decode(p: &Point, raw: RawRef<'_>) -> Value {
    match raw {
        RawRef::Registers(r) => p.decode_registers(r),
        RawRef::Bits(b) => p.decode_bits(b),
    }
}
