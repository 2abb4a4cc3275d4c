//! How one tag maps onto a Modbus device: which table, which address, which
//! data type in which byte order, and how its registers become a [`Value`]
//! and back. Pure functions, so every byte order is tested without a socket.

use crate::model::Value;
use std::fmt;
use std::fmt::Write as _;

/// The four Modbus data tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    /// Coils (0x, read FC 1, write FC 5/15).
    Coil,
    /// Discrete inputs (1x, read FC 2, read-only).
    DiscreteInput,
    /// Input registers (3x, read FC 4, read-only).
    InputRegister,
    /// Holding registers (4x, read FC 3, write FC 6/16).
    HoldingRegister,
}

impl Table {
    /// Whether the table holds single bits rather than 16-bit registers.
    pub fn is_bits(self) -> bool {
        matches!(self, Table::Coil | Table::DiscreteInput)
    }

    /// Whether a master may write it.
    pub fn is_writable(self) -> bool {
        matches!(self, Table::Coil | Table::HoldingRegister)
    }

    /// The short prefix used in `hr:0` notation.
    pub fn prefix(self) -> &'static str {
        match self {
            Table::Coil => "co",
            Table::DiscreteInput => "di",
            Table::InputRegister => "ir",
            Table::HoldingRegister => "hr",
        }
    }

    /// The read function code.
    pub fn read_function(self) -> u8 {
        match self {
            Table::Coil => 1,
            Table::DiscreteInput => 2,
            Table::HoldingRegister => 3,
            Table::InputRegister => 4,
        }
    }
}

/// A parsed tag address: table, 0-based protocol address and, for a bit
/// inside a register, the bit number (0 = least significant).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Address {
    /// Which table.
    pub table: Table,
    /// 0-based address as sent on the wire.
    pub offset: u16,
    /// `Some(n)` for `hr:10.3`: bit n of the register.
    pub bit: Option<u8>,
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.table.prefix(), self.offset)?;
        if let Some(b) = self.bit {
            write!(f, ".{b}")?;
        }
        Ok(())
    }
}

/// What a vendor notation says beyond the address: the type and word order
/// its memory area implies (`%MF` is a REAL stored low word first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hints {
    /// The type the notation implies, if any.
    pub data_type: Option<DataType>,
    /// The byte order the notation implies, if any.
    pub order: Option<ByteOrder>,
}

impl Address {
    /// Parses a Schneider (IEC 61131 Unity/EcoStruxure) address where it
    /// maps to one Modbus address without ambiguity: `%MW100` is `hr:100`,
    /// `%MW100.3` bit 3 of it, `%MD100` a DINT and `%MF100` a REAL at
    /// `hr:100`–`hr:101` stored low word first (CDAB), `%M20` coil 20.
    /// `None` for anything that is not such a notation.
    pub fn parse_vendor(text: &str) -> Option<Result<(Address, Hints), String>> {
        let rest = text.trim().strip_prefix('%')?;
        let upper = rest.to_ascii_uppercase();
        let (kind, num) = ["MW", "MD", "MF", "M"]
            .iter()
            .find_map(|k| upper.strip_prefix(k).map(|n| (*k, n.to_string())))?;
        let (num, bit) = match num.split_once('.') {
            Some((n, b)) => (n.to_string(), Some(b.to_string())),
            None => (num, None),
        };
        let offset = match num.parse::<u16>() {
            Ok(n) => n,
            Err(_) => return Some(Err(format!("`{text}`: `{num}` is not 0..65535"))),
        };
        let none = Hints {
            data_type: None,
            order: None,
        };
        let wide = |t| Hints {
            data_type: Some(t),
            order: Some(ByteOrder::Cdab),
        };
        let (address, hints) = match (kind, bit) {
            ("MW", None) => (format!("hr:{offset}"), none),
            ("MW", Some(b)) => (format!("hr:{offset}.{b}"), none),
            ("MD", None) => (format!("hr:{offset}"), wide(DataType::I32)),
            ("MF", None) => (format!("hr:{offset}"), wide(DataType::F32)),
            ("M", None) => (format!("co:{offset}"), none),
            _ => {
                return Some(Err(format!(
                    "`{text}`: a bit of %{kind} is not a Modbus address"
                )));
            }
        };
        Some(Address::parse(&address).map(|a| (a, hints)))
    }

    /// Parses either protocol notation (`hr:0`, `ir:10`, `co:5`, `di:7`,
    /// 0-based) or classic Modicon notation (`40001`, `30011`, `00006`,
    /// `10008`, 1-based; six digits `400001` reach 65536). `40001` and `hr:0`
    /// are the same register. A `.n` suffix selects bit n of a register.
    pub fn parse(text: &str) -> Result<Address, String> {
        let text = text.trim();
        let (main, bit) = match text.split_once('.') {
            Some((m, b)) => {
                let bit: u8 = b
                    .parse()
                    .ok()
                    .filter(|b| *b < 16)
                    .ok_or_else(|| format!("bit `{b}` in `{text}` is not 0..15"))?;
                (m, Some(bit))
            }
            None => (text, None),
        };
        let (table, offset) = if let Some((prefix, num)) = main.split_once(':') {
            let table = match prefix.to_ascii_lowercase().as_str() {
                "hr" => Table::HoldingRegister,
                "ir" => Table::InputRegister,
                "co" => Table::Coil,
                "di" => Table::DiscreteInput,
                other => {
                    return Err(format!(
                        "unknown table `{other}` in `{text}` (expected hr, ir, co or di)"
                    ));
                }
            };
            let offset: u16 = num
                .parse()
                .map_err(|_| format!("address `{num}` in `{text}` is not 0..65535"))?;
            (table, offset)
        } else {
            if !(main.len() == 5 || main.len() == 6) || !main.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!(
                    "`{text}` is neither `hr:N`/`ir:N`/`co:N`/`di:N` nor a 5- or 6-digit Modicon address"
                ));
            }
            let table = match &main[..1] {
                "0" => Table::Coil,
                "1" => Table::DiscreteInput,
                "3" => Table::InputRegister,
                "4" => Table::HoldingRegister,
                d => {
                    return Err(format!(
                        "Modicon address `{text}` starts with {d}, not 0, 1, 3 or 4"
                    ));
                }
            };
            let number: u32 = main[1..]
                .parse()
                .map_err(|_| format!("bad address `{text}`"))?;
            if number == 0 || number > 65536 {
                return Err(format!("Modicon address `{text}` is outside 1..65536"));
            }
            (table, (number - 1) as u16)
        };
        if bit.is_some() && table.is_bits() {
            return Err(format!(
                "`{text}`: a bit number needs a register table, not {}",
                table.prefix()
            ));
        }
        Ok(Address { table, offset, bit })
    }
}

/// The data type a tag's registers hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataType {
    /// A coil, a discrete input, or a bit of a register.
    Bool,
    /// Unsigned 16-bit.
    U16,
    /// Signed 16-bit.
    I16,
    /// Unsigned 32-bit, two registers.
    U32,
    /// Signed 32-bit, two registers.
    I32,
    /// Unsigned 64-bit, four registers.
    U64,
    /// Signed 64-bit, four registers.
    I64,
    /// IEEE 754 single, two registers.
    F32,
    /// IEEE 754 double, four registers.
    F64,
    /// Text, two characters per register.
    Str,
}

impl DataType {
    /// Parses a type name as written in the config.
    pub fn parse(text: &str) -> Result<DataType, String> {
        Ok(match text.to_ascii_lowercase().as_str() {
            "bool" => DataType::Bool,
            "u16" | "uint16" | "word" => DataType::U16,
            "i16" | "int16" | "int" => DataType::I16,
            "u32" | "uint32" | "dword" => DataType::U32,
            "i32" | "int32" | "dint" => DataType::I32,
            "u64" | "uint64" => DataType::U64,
            "i64" | "int64" => DataType::I64,
            "f32" | "float" | "real" => DataType::F32,
            "f64" | "double" | "lreal" => DataType::F64,
            "string" | "str" => DataType::Str,
            other => {
                return Err(format!(
                    "unknown type `{other}` (expected bool, u16, i16, u32, i32, u64, i64, f32, f64 or string)"
                ));
            }
        })
    }

    /// Registers one value occupies (strings: per register, see `count`).
    pub fn registers(self) -> u16 {
        match self {
            DataType::Bool | DataType::U16 | DataType::I16 | DataType::Str => 1,
            DataType::U32 | DataType::I32 | DataType::F32 => 2,
            DataType::U64 | DataType::I64 | DataType::F64 => 4,
        }
    }

    /// Name of an array of it (`count` above 1) in `tags.type`: `f32[]`.
    pub fn array_name(self) -> &'static str {
        match self {
            DataType::Bool => "bool[]",
            DataType::U16 => "u16[]",
            DataType::I16 => "i16[]",
            DataType::U32 => "u32[]",
            DataType::I32 => "i32[]",
            DataType::U64 => "u64[]",
            DataType::I64 => "i64[]",
            DataType::F32 => "f32[]",
            DataType::F64 => "f64[]",
            DataType::Str => "string",
        }
    }

    /// Name as written in the config and stored in `tags.type`.
    pub fn name(self) -> &'static str {
        match self {
            DataType::Bool => "bool",
            DataType::U16 => "u16",
            DataType::I16 => "i16",
            DataType::U32 => "u32",
            DataType::I32 => "i32",
            DataType::U64 => "u64",
            DataType::I64 => "i64",
            DataType::F32 => "f32",
            DataType::F64 => "f64",
            DataType::Str => "string",
        }
    }
}

/// Byte and word order of a multi-byte value, named by where the bytes of
/// the big-endian value `ABCD` land on the wire. The same names apply to
/// 16-bit (`AB`/`BA`) and 64-bit values: `CDAB` swaps register order,
/// `BADC` swaps the bytes inside each register, `DCBA` does both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ByteOrder {
    /// Big-endian registers, most significant register first (Modbus standard).
    #[default]
    Abcd,
    /// Word swap: least significant register first (many PLCs, e.g. Schneider).
    Cdab,
    /// Byte swap within registers, most significant register first.
    Badc,
    /// Fully little-endian.
    Dcba,
}

impl ByteOrder {
    /// Parses `ABCD`, `CDAB`, `BADC`, `DCBA` (any case).
    pub fn parse(text: &str) -> Result<ByteOrder, String> {
        Ok(match text.to_ascii_uppercase().as_str() {
            "ABCD" | "AB" | "ABCDEFGH" | "BIG" => ByteOrder::Abcd,
            "CDAB" | "GHEFCDAB" => ByteOrder::Cdab,
            "BADC" | "BA" | "BADCFEHG" => ByteOrder::Badc,
            "DCBA" | "HGFEDCBA" | "LITTLE" => ByteOrder::Dcba,
            other => {
                return Err(format!(
                    "unknown byte order `{other}` (expected ABCD, CDAB, BADC or DCBA)"
                ));
            }
        })
    }

    /// The order's name as written in the config: `ABCD` …
    pub fn name(self) -> &'static str {
        match self {
            ByteOrder::Abcd => "ABCD",
            ByteOrder::Cdab => "CDAB",
            ByteOrder::Badc => "BADC",
            ByteOrder::Dcba => "DCBA",
        }
    }

    fn swaps(self) -> (bool, bool) {
        // (swap register order, swap bytes inside a register)
        match self {
            ByteOrder::Abcd => (false, false),
            ByteOrder::Cdab => (true, false),
            ByteOrder::Badc => (false, true),
            ByteOrder::Dcba => (true, true),
        }
    }

    /// Registers as read from the wire (at most 4) → the value's bits, as
    /// the big-endian number they make: no buffer on the way.
    #[inline]
    pub fn registers_to_u64(self, regs: &[u16]) -> u64 {
        let (words, bytes) = self.swaps();
        let word = |r: u16| u64::from(if bytes { r.swap_bytes() } else { r });
        // The value's i-th register, most significant first.
        let at = |i: usize| word(regs[if words { regs.len() - 1 - i } else { i }]);
        match regs.len() {
            1 => at(0),
            2 => (at(0) << 16) | at(1),
            4 => (at(0) << 48) | (at(1) << 32) | (at(2) << 16) | at(3),
            _ => (0..regs.len()).fold(0, |v, i| (v << 16) | at(i)),
        }
    }

    /// Registers as read from the wire → big-endian bytes of the value.
    pub fn registers_to_bytes(self, regs: &[u16]) -> Vec<u8> {
        let (words, bytes) = self.swaps();
        let mut out = Vec::with_capacity(regs.len() * 2);
        let mut push = |r: u16| {
            let [hi, lo] = r.to_be_bytes();
            if bytes {
                out.extend_from_slice(&[lo, hi]);
            } else {
                out.extend_from_slice(&[hi, lo]);
            }
        };
        if words {
            regs.iter().rev().for_each(|r| push(*r));
        } else {
            regs.iter().for_each(|r| push(*r));
        }
        out
    }

    /// Big-endian bytes of a value → registers to put on the wire.
    pub fn bytes_to_registers(self, be: &[u8]) -> Vec<u16> {
        let (words, bytes) = self.swaps();
        let mut regs: Vec<u16> = be
            .chunks(2)
            .map(|c| {
                let (hi, lo) = (c[0], *c.get(1).unwrap_or(&0));
                if bytes {
                    u16::from_be_bytes([lo, hi])
                } else {
                    u16::from_be_bytes([hi, lo])
                }
            })
            .collect();
        if words {
            regs.reverse();
        }
        regs
    }
}

/// A tag's decoding worked out once from its point: a single scalar of
/// the common types is one arm here, with its byte order as two flags.
/// Everything else (bits in a register, arrays, strings, scaling, u64) is
/// [`Point::decode_registers`]. A scan decodes every tag; the general
/// path's checks were most of the cost of decoding a u16.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decoder {
    kind: Shape,
    words: bool,
    bytes: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    U16,
    I16,
    U32,
    I32,
    I64,
    F32,
    F64,
    General,
}

impl Decoder {
    /// The value of `p`'s registers (exactly `p.span()` of them), as
    /// `p.decode_registers(regs)` gives it.
    #[inline(always)]
    pub fn decode(self, p: &Point, regs: &[u16]) -> Value {
        let word = |r: u16| if self.bytes { r.swap_bytes() } else { r };
        let pair = || {
            let (hi, lo) = if self.words {
                (regs[1], regs[0])
            } else {
                (regs[0], regs[1])
            };
            (u32::from(word(hi)) << 16) | u32::from(word(lo))
        };
        match self.kind {
            Shape::U16 => Value::Int(i64::from(word(regs[0]))),
            Shape::I16 => Value::Int(i64::from(word(regs[0]) as i16)),
            Shape::U32 => Value::Int(i64::from(pair())),
            Shape::I32 => Value::Int(i64::from(pair() as i32)),
            Shape::F32 => Value::Float(widen(f32::from_bits(pair()))),
            Shape::I64 => Value::Int(p.order.registers_to_u64(&regs[..4]) as i64),
            Shape::F64 => Value::Float(f64::from_bits(p.order.registers_to_u64(&regs[..4]))),
            Shape::General => p.decode_registers(regs),
        }
    }
}

/// Everything the connector needs to read and write one tag.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    /// Where it lives.
    pub address: Address,
    /// What it holds.
    pub data_type: DataType,
    /// Array length for numeric types; register count for strings.
    pub count: u16,
    /// Byte/word order of multi-register values.
    pub order: ByteOrder,
    /// Engineering value = raw × scale + offset.
    pub scale: f64,
    /// See `scale`.
    pub offset: f64,
}

impl Point {
    /// Checks that type, count and table fit together.
    pub fn validate(&self) -> Result<(), String> {
        let t = self.address.table;
        if t.is_bits() && self.data_type != DataType::Bool {
            return Err(format!(
                "{} addresses hold bits: type must be bool, not {}",
                t.prefix(),
                self.data_type.name()
            ));
        }
        if self.address.bit.is_some() && self.data_type != DataType::Bool {
            return Err("a bit address (`.n`) needs type bool".into());
        }
        if !t.is_bits() && self.address.bit.is_none() && self.data_type == DataType::Bool {
            return Err(format!(
                "type bool on a register needs a bit number, e.g. `{}.0`",
                self.address
            ));
        }
        if self.count == 0 {
            return Err("count must be at least 1".into());
        }
        // Text is a sequence of registers in reading order: only the
        // byte order inside a register applies. A word swap would mean
        // nothing, so it is refused rather than silently ignored.
        if self.data_type == DataType::Str && self.order.swaps().0 {
            return Err(format!(
                "strings take order ABCD (high byte first) or BADC (low byte first), not {}: the registers of a text are read in order",
                self.order.name()
            ));
        }
        if self.data_type == DataType::Bool && self.count > 1 && !t.is_bits() {
            return Err(
                "arrays of register bits are not supported; read the register as u16".into(),
            );
        }
        if self.scale == 0.0 || !self.scale.is_finite() || !self.offset.is_finite() {
            return Err("scale must be a non-zero finite number and offset finite".into());
        }
        let end = u32::from(self.address.offset) + u32::from(self.span());
        if end > 65536 {
            return Err(format!("{} runs past the end of the table", self.address));
        }
        Ok(())
    }

    /// Registers (or bits) the tag occupies on the device.
    pub fn span(&self) -> u16 {
        if self.address.table.is_bits() {
            self.count
        } else if self.address.bit.is_some() {
            1
        } else {
            self.data_type.registers().saturating_mul(self.count)
        }
    }

    fn is_scaled(&self) -> bool {
        self.scale != 1.0 || self.offset != 0.0
    }

    /// Decodes the tag's bits from a bit-table read.
    pub fn decode_bits(&self, bits: &[bool]) -> Value {
        if self.count == 1 {
            Value::Bool(bits[0])
        } else {
            Value::Array(bits.iter().map(|b| Value::Int(i64::from(*b))).collect())
        }
    }

    /// Decodes the tag's registers (exactly `span()` of them).
    pub fn decode_registers(&self, regs: &[u16]) -> Value {
        if let Some(bit) = self.address.bit {
            return Value::Bool(regs[0] & (1 << bit) != 0);
        }
        if self.data_type == DataType::Str {
            let bytes = self.order.text_to_bytes(regs);
            let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
            return Value::Str(
                String::from_utf8_lossy(&bytes[..end])
                    .trim_end()
                    .to_string(),
            );
        }
        let width = self.data_type.registers() as usize;
        if self.count == 1 {
            return self.decode_one(self.order.registers_to_u64(&regs[..width]));
        }
        Value::Array(
            regs.chunks_exact(width)
                .map(|chunk| self.decode_one(self.order.registers_to_u64(chunk)))
                .collect(),
        )
    }

    /// One value from its big-endian bits (the low 16 × width bits of `v`).
    fn decode_one(&self, v: u64) -> Value {
        // The truncating casts keep exactly the type's own bits.
        let raw = match self.data_type {
            DataType::U16 => Value::Int(i64::from(v as u16)),
            DataType::I16 => Value::Int(i64::from(v as u16 as i16)),
            DataType::U32 => Value::Int(i64::from(v as u32)),
            DataType::I32 => Value::Int(i64::from(v as u32 as i32)),
            DataType::U64 => Value::from_u64(v),
            DataType::I64 => Value::Int(v as i64),
            DataType::F32 => Value::Float(widen(f32::from_bits(v as u32))),
            DataType::F64 => Value::Float(f64::from_bits(v)),
            DataType::Bool | DataType::Str => unreachable!("handled by decode_registers"),
        };
        if self.is_scaled() {
            Value::Float(round_significant(
                raw.as_f64().unwrap_or(0.0) * self.scale + self.offset,
            ))
        } else {
            raw
        }
    }

    /// How a scan decodes this tag, decided once (see [`Decoder`]).
    pub fn decoder(&self) -> Decoder {
        let kind = if self.address.table.is_bits()
            || self.address.bit.is_some()
            || self.count != 1
            || self.is_scaled()
        {
            Shape::General
        } else {
            match self.data_type {
                DataType::U16 => Shape::U16,
                DataType::I16 => Shape::I16,
                DataType::U32 => Shape::U32,
                DataType::I32 => Shape::I32,
                DataType::I64 => Shape::I64,
                DataType::F32 => Shape::F32,
                DataType::F64 => Shape::F64,
                DataType::U64 | DataType::Bool | DataType::Str => Shape::General,
            }
        };
        let (words, bytes) = self.order.swaps();
        Decoder { kind, words, bytes }
    }

    /// Encodes a value for writing: registers, inverse of `decode_registers`.
    /// Fails (with a message for the log) when the value does not fit.
    pub fn encode_registers(&self, value: &Value) -> Result<Vec<u16>, String> {
        if self.address.table.is_bits() || self.address.bit.is_some() {
            return Err("bits are written with encode_bits".into());
        }
        if self.data_type == DataType::Str {
            let Value::Str(s) = value else {
                return Err(format!("a string tag cannot take {}", value.kind()));
            };
            let mut bytes = s.as_bytes().to_vec();
            let cap = self.count as usize * 2;
            if bytes.len() > cap {
                return Err(format!("string of {} bytes exceeds {cap}", bytes.len()));
            }
            bytes.resize(cap, 0);
            return Ok(self.order.text_to_registers(&bytes));
        }
        let values: Vec<Value> = match value {
            Value::Array(a) => a.clone(),
            v => vec![v.clone()],
        };
        if values.len() != self.count as usize {
            return Err(format!(
                "expected {} values, got {}",
                self.count,
                values.len()
            ));
        }
        let mut regs = Vec::with_capacity(self.span() as usize);
        for v in &values {
            regs.extend(self.order.bytes_to_registers(&self.encode_one(v)?));
        }
        Ok(regs)
    }

    /// One value as big-endian bytes of the tag's type. Integers go through
    /// `i128` exactly (never a float) unless the tag is scaled; a value the
    /// type cannot hold is an error, never a wrapped or saturated number.
    fn encode_one(&self, v: &Value) -> Result<Vec<u8>, String> {
        let t = self.data_type;
        let no_fit = || format!("{v} does not fit {}", t.name());
        let float = |v: &Value| -> Result<f64, String> {
            let x = match v {
                Value::Str(_) | Value::Array(_) => {
                    return Err(format!("cannot write {} to a {} tag", v.kind(), t.name()));
                }
                other => other.as_f64().unwrap_or(f64::NAN),
            };
            let raw = (x - self.offset) / self.scale;
            if raw.is_finite() {
                Ok(raw)
            } else {
                Err(format!("{v} is not a finite number"))
            }
        };
        let int = |v: &Value| -> Result<i128, String> {
            if self.is_scaled() {
                return float_to_int(float(v)?).ok_or_else(no_fit);
            }
            match v {
                Value::Int(i) => Ok(i128::from(*i)),
                Value::UInt(u) => Ok(i128::from(*u)),
                Value::Bool(b) => Ok(i128::from(*b)),
                Value::Float(f) if f.is_finite() => float_to_int(*f).ok_or_else(no_fit),
                Value::Float(_) => Err(format!("{v} is not a finite number")),
                // The way to write a u64 above i64::MAX, which no script
                // integer can hold: its decimal digits.
                Value::Str(s) => s
                    .trim()
                    .parse::<i128>()
                    .map_err(|_| format!("cannot write text `{s}` to a {} tag", t.name())),
                Value::Array(_) => Err(format!("cannot write an array to a {} tag", t.name())),
            }
        };
        let ranged = |lo: i128, hi: i128| -> Result<i128, String> {
            let i = int(v)?;
            if (lo..=hi).contains(&i) {
                Ok(i)
            } else {
                Err(no_fit())
            }
        };
        Ok(match t {
            DataType::U16 => (ranged(0, 0xFFFF)? as u16).to_be_bytes().to_vec(),
            DataType::I16 => (ranged(i16::MIN.into(), i16::MAX.into())? as i16)
                .to_be_bytes()
                .to_vec(),
            DataType::U32 => (ranged(0, u32::MAX.into())? as u32).to_be_bytes().to_vec(),
            DataType::I32 => (ranged(i32::MIN.into(), i32::MAX.into())? as i32)
                .to_be_bytes()
                .to_vec(),
            DataType::U64 => (ranged(0, u64::MAX.into())? as u64).to_be_bytes().to_vec(),
            DataType::I64 => (ranged(i64::MIN.into(), i64::MAX.into())? as i64)
                .to_be_bytes()
                .to_vec(),
            DataType::F32 => {
                // Rounded to the nearest f32 first: an f32 read is widened
                // to its shortest decimal (FLT_MAX is 3.4028235e38, a hair
                // above f32::MAX as an f64), and what was read must be
                // writable back. Only what rounds to infinity does not fit.
                let x = float(v)? as f32;
                if !x.is_finite() {
                    return Err(no_fit());
                }
                x.to_be_bytes().to_vec()
            }
            DataType::F64 => float(v)?.to_be_bytes().to_vec(),
            DataType::Bool | DataType::Str => unreachable!("handled by the caller"),
        })
    }

    /// Encodes a value for a coil write.
    pub fn encode_bits(&self, value: &Value) -> Result<Vec<bool>, String> {
        let bit = |v: &Value| match v {
            Value::Bool(b) => Ok(*b),
            Value::Int(i @ (0 | 1)) => Ok(*i == 1),
            Value::Float(f) if *f == 0.0 || *f == 1.0 => Ok(*f == 1.0),
            other => Err(format!(
                "cannot write {other} to a bool tag (true/false or 1/0)"
            )),
        };
        let bits = match value {
            Value::Array(a) => a.iter().map(bit).collect::<Result<_, _>>()?,
            v => vec![bit(v)?],
        };
        if bits.len() != self.count as usize {
            return Err(format!(
                "expected {} values, got {}",
                self.count,
                bits.len()
            ));
        }
        Ok(bits)
    }
}

/// A finite float rounded to the nearest integer, `None` beyond what an
/// `i128` holds (the callers' ranges are all within it).
fn float_to_int(x: f64) -> Option<i128> {
    let r = x.round();
    // 2^127 is exact in f64; `as` saturates, so check first.
    (r.is_finite() && r.abs() < 1.7014118346046923e38).then_some(r as i128)
}

/// Rounds to 15 significant digits, so 3 × 0.1 is stored as 0.3 and not
/// 0.30000000000000004; a double carries 15 reliable decimal digits.
fn round_significant(x: f64) -> f64 {
    if x.is_finite() {
        let mut text = Digits::new();
        let _ = write!(text, "{x:.14e}");
        text.as_str().parse().unwrap_or(x)
    } else {
        x
    }
}

/// Widens an f32 to the f64 with the same shortest decimal form, so 71.78767
/// is stored as 71.78767 and not as 71.7876663208008 (the binary widening).
/// The digits are the shortest that read back as the same f32, the nearest
/// of them to the value, a tie rounded up (core's rule: `{:e}` gives the
/// same digits as `to_string`), written on the stack: no allocation per
/// value. (ryu's digits are cheaper but break ties to even: 429.953125
/// would be stored as 429.95312 where RTDS has always stored 429.95313.)
fn widen(x: f32) -> f64 {
    if !x.is_finite() {
        return f64::from(x);
    }
    // An integer that fits the mantissa is its own shortest form (the
    // truncating cast is exact below 2^24, and one instruction where
    // `fract` was a call).
    if x.abs() < 16_777_216.0 && (x as i32) as f32 == x {
        return f64::from(x);
    }
    if let Some((digits, exp)) = shortest_f32(x.abs())
        && let Some(v) = decimal_to_f64(digits, exp)
    {
        return if x < 0.0 { -v } else { v };
    }
    let mut text = Digits::new();
    let _ = write!(text, "{x:e}");
    text.as_str().parse().unwrap_or(f64::from(x))
}

/// The digits `{:e}` prints for a positive normal f32, as (digits, power of
/// ten of the last digit), by core's own rule (its Dragon4 "shortest"):
/// the fewest digits that parse back to `x`, and of the candidates at that
/// length the nearest, a tie rounded up.
///
/// Exact in 64-bit integers, and cheap because the value is put at a
/// decimal scale where it is a fixed-point number with a binary fraction:
/// `x / 10^q` is `r / 2^sh` for an integer `r`, and so are the two bounds
/// of the interval that parses back to `x`. The interval's integers at that
/// scale are then found by shifts, and each digit fewer is one division by
/// the constant 10. Values from about 1e-7 to 9e18 fit; beyond, and for
/// subnormals, `None`: the caller formats.
fn shortest_f32(x: f32) -> Option<(u64, i32)> {
    let bits = x.to_bits();
    let (e_bits, m_bits) = ((bits >> 23) & 0xff, bits & 0x7f_ffff);
    if e_bits == 0 || e_bits == 0xff || x.is_sign_negative() {
        return None;
    }
    let m = u64::from(m_bits | 0x80_0000);
    let e = e_bits as i32 - 150;
    // x = mant × 2^ex; its neighbours' midpoints are minus and plus away (a
    // power of two has a nearer neighbour below), inclusive when the
    // mantissa is even (parsing rounds ties to even): core's decoding.
    let (mant, minus, plus, ex) = if m_bits == 0 {
        (m << 2, 1u64, 2u64, e - 2)
    } else {
        (m << 1, 1, 1, e - 1)
    };
    let inclusive = m % 2 == 0;
    // The scale 10^q: at least nine integer digits (nine always reach into
    // the interval, FLT_DECIMAL_DIG), and never a fraction of a power of
    // ten (q <= 0), so only fives multiply and twos shift. `kl` is
    // floor(log10 2^(e_bits - 127)), exact for every f32 exponent, so x is
    // at least 10^kl.
    let kl = ((e_bits as i32 - 127) * 78_913) >> 18;
    let q = (kl - 8).min(0);
    let five = *POW5.get(usize::try_from(-q).ok()?)?;
    let (left, sh) = ((ex - q).max(0) as u32, (q - ex).max(0) as u32);
    // x and the interval's ends at the scale, in units of 2^-sh: two bits
    // of room left above, so the upper end (at most 2^-23 more) and the
    // rounding below cannot overflow, and the shift loses nothing.
    let r = mant.checked_mul(five)?;
    if r.leading_zeros() < left + 2 || sh >= 64 {
        return None;
    }
    let (lo, hi) = ((r - minus * five) << left, (r + plus * five) << left);
    let r = r << left;
    // The interval's first and last integers at the scale (its ends count
    // when inclusive).
    let frac = (1u64 << sh) - 1;
    let mut first = (lo >> sh) + u64::from(!inclusive || lo & frac != 0);
    let mut last = (hi >> sh) - u64::from(!inclusive && hi & frac == 0);
    if first > last {
        return None;
    }
    // The fewest digits: drop one while a multiple of ten is still inside.
    let (mut pow, mut dropped) = (1u64, 0);
    while first.div_ceil(10) <= last / 10 {
        (first, last) = (first.div_ceil(10), last / 10);
        pow *= 10;
        dropped += 1;
    }
    // Of the candidates left, the nearest to x, a tie rounded up.
    let t = (r >> sh) / pow;
    // (pow × 2^sh is at most the upper end: a candidate is at least 1.)
    let rest = r - ((t * pow) << sh);
    let up = rest >= (pow << sh) - rest;
    Some(((t + u64::from(up)).clamp(first, last), q + dropped))
}

/// 5^0 … 5^27, every power of five a u64 holds.
const POW5: [u64; 28] = {
    let mut t = [1u64; 28];
    let mut i = 1;
    while i < 28 {
        t[i] = t[i - 1] * 5;
        i += 1;
    }
    t
};

/// `digits × 10^exp` as the nearest f64, when one IEEE operation on exact
/// operands gives it (Clinger's fast path: digits below 2^53, a power of
/// ten an f64 holds exactly), which is what parsing the text gives.
fn decimal_to_f64(digits: u64, exp: i32) -> Option<f64> {
    const POW10: [f64; 23] = [
        1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
        1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
    ];
    if digits >= 1 << 53 {
        return None;
    }
    let p = *POW10.get(exp.unsigned_abs() as usize)?;
    Some(if exp >= 0 {
        digits as f64 * p
    } else {
        digits as f64 / p
    })
}

/// A number's text on the stack (`-1.23456789012345e-308` is 22 bytes).
struct Digits {
    buf: [u8; 32],
    len: usize,
}

impl Digits {
    fn new() -> Digits {
        Digits {
            buf: [0; 32],
            len: 0,
        }
    }

    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }
}

impl std::fmt::Write for Digits {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.len + s.len();
        if end > self.buf.len() {
            return Err(std::fmt::Error);
        }
        self.buf[self.len..end].copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

impl ByteOrder {
    // Strings are a sequence of registers, each holding two characters; only
    // the byte swap applies (register order is the text's order).
    fn text_to_bytes(self, regs: &[u16]) -> Vec<u8> {
        let single = if self.swaps().1 {
            ByteOrder::Badc
        } else {
            ByteOrder::Abcd
        };
        single.registers_to_bytes(regs)
    }

    fn text_to_registers(self, bytes: &[u8]) -> Vec<u16> {
        let single = if self.swaps().1 {
            ByteOrder::Badc
        } else {
            ByteOrder::Abcd
        };
        single.bytes_to_registers(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(addr: &str, t: DataType, order: ByteOrder) -> Point {
        Point {
            address: Address::parse(addr).unwrap(),
            data_type: t,
            count: 1,
            order,
            scale: 1.0,
            offset: 0.0,
        }
    }

    #[test]
    fn modicon_and_protocol_addresses_agree() {
        assert_eq!(Address::parse("40001"), Address::parse("hr:0"));
        assert_eq!(Address::parse("400001"), Address::parse("hr:0"));
        assert_eq!(Address::parse("465536").unwrap().offset, 65535);
        assert_eq!(Address::parse("30011"), Address::parse("ir:10"));
        assert_eq!(Address::parse("00006"), Address::parse("co:5"));
        assert_eq!(Address::parse("10008"), Address::parse("di:7"));
        let bit = Address::parse("40011.3").unwrap();
        assert_eq!(
            (bit.table, bit.offset, bit.bit),
            (Table::HoldingRegister, 10, Some(3))
        );
        assert!(Address::parse("40000").is_err());
        assert!(Address::parse("20001").is_err());
        assert!(Address::parse("xx:1").is_err());
        assert!(Address::parse("co:1.2").is_err());
        assert!(Address::parse("hr:10.16").is_err());
    }

    #[test]
    fn f32_123_5_in_every_order() {
        // 123.5 = 0x42F7_0000.
        let cases = [
            (ByteOrder::Abcd, [0x42F7, 0x0000]),
            (ByteOrder::Cdab, [0x0000, 0x42F7]),
            (ByteOrder::Badc, [0xF742, 0x0000]),
            (ByteOrder::Dcba, [0x0000, 0xF742]),
        ];
        for (order, regs) in cases {
            let p = point("hr:0", DataType::F32, order);
            assert_eq!(p.decode_registers(&regs), Value::Float(123.5), "{order:?}");
            assert_eq!(
                p.encode_registers(&Value::Float(123.5)).unwrap(),
                regs,
                "{order:?}"
            );
        }
    }

    #[test]
    fn f32_is_stored_as_its_shortest_decimal() {
        let p = point("hr:0", DataType::F32, ByteOrder::Abcd);
        let regs = p.encode_registers(&Value::Float(71.78767)).unwrap();
        assert_eq!(p.decode_registers(&regs), Value::Float(71.78767));
    }

    #[test]
    fn f32_extremes_read_are_writable_back() {
        // Found by tests/fuzz.rs: -FLT_MAX read (FF7F FFFF) came back as
        // -3.4028235e38, which the write refused as too large for an f32.
        let p = point("hr:0", DataType::F32, ByteOrder::Abcd);
        for bits in [0xFF7F_FFFFu32, 0x7F7F_FFFF, 0x0000_0001, 0x8080_0000] {
            let regs = [(bits >> 16) as u16, bits as u16];
            let v = p.decode_registers(&regs);
            assert_eq!(p.encode_registers(&v), Ok(regs.to_vec()), "{v:?}");
        }
        assert!(p.encode_registers(&Value::Float(3.41e38)).is_err());
        assert!(p.encode_registers(&Value::Float(-1e39)).is_err());
    }

    #[test]
    fn integers_signed_and_wide() {
        let p = point("hr:0", DataType::I16, ByteOrder::Abcd);
        assert_eq!(p.decode_registers(&[0xFFFE]), Value::Int(-2));
        let p = point("hr:0", DataType::U32, ByteOrder::Abcd);
        assert_eq!(
            p.decode_registers(&[0x1234, 0x5678]),
            Value::Int(0x1234_5678)
        );
        let p = point("hr:0", DataType::I32, ByteOrder::Cdab);
        assert_eq!(p.decode_registers(&[0x1DC0, 0xFFFE]), Value::Int(-123_456));
        let p = point("hr:0", DataType::U64, ByteOrder::Abcd);
        assert_eq!(p.decode_registers(&[0xFFFF; 4]), Value::from_u64(u64::MAX));
        let p = point("hr:0", DataType::F64, ByteOrder::Dcba);
        let regs = p.encode_registers(&Value::Float(-1.25)).unwrap();
        assert_eq!(p.decode_registers(&regs), Value::Float(-1.25));
    }

    #[test]
    fn scale_and_offset_apply_both_ways() {
        let mut p = point("hr:0", DataType::I16, ByteOrder::Abcd);
        p.scale = 0.1;
        p.offset = -50.0;
        assert_eq!(
            p.decode_registers(&[1000]),
            Value::Float(1000.0 * 0.1 - 50.0)
        );
        assert_eq!(p.encode_registers(&Value::Float(50.0)).unwrap(), vec![1000]);
        assert!(p.encode_registers(&Value::Float(1e9)).is_err());
    }

    #[test]
    fn bits_strings_and_arrays() {
        let p = point("hr:5.15", DataType::Bool, ByteOrder::Abcd);
        assert_eq!(p.decode_registers(&[0x8000]), Value::Bool(true));
        let mut s = point("hr:0", DataType::Str, ByteOrder::Abcd);
        s.count = 3;
        assert_eq!(
            s.decode_registers(&[0x5254, 0x4453, 0x0000]),
            Value::Str("RTDS".into())
        );
        assert_eq!(
            s.encode_registers(&Value::Str("RTDS".into())).unwrap(),
            vec![0x5254, 0x4453, 0]
        );
        // BADC: the low byte first in each register ("RTDS" as "TRSD").
        s.order = ByteOrder::Badc;
        assert_eq!(
            s.decode_registers(&[0x5452, 0x5344, 0x0000]),
            Value::Str("RTDS".into())
        );
        assert!(s.validate().is_ok());
        // A word swap means nothing for text: refused, not ignored.
        for o in [ByteOrder::Cdab, ByteOrder::Dcba] {
            s.order = o;
            assert!(
                s.validate()
                    .unwrap_err()
                    .contains("strings take order ABCD")
            );
        }
        let mut a = point("hr:0", DataType::U16, ByteOrder::Abcd);
        a.count = 3;
        assert_eq!(a.span(), 3);
        assert_eq!(
            a.decode_registers(&[1, 2, 3]),
            Value::Array(vec![Value::Int(1), Value::Int(2), Value::Int(3)])
        );
    }

    #[test]
    fn validation_catches_mismatches() {
        let mut p = point("co:0", DataType::U16, ByteOrder::Abcd);
        assert!(p.validate().is_err());
        p.data_type = DataType::Bool;
        assert!(p.validate().is_ok());
        let p = point("hr:65535", DataType::F32, ByteOrder::Abcd);
        assert!(p.validate().unwrap_err().contains("past the end"));
        let p = point("hr:1", DataType::Bool, ByteOrder::Abcd);
        assert!(p.validate().is_err());
    }

    /// Registers of a big-endian byte string (ABCD order).
    fn words(b: &[u8]) -> Vec<u16> {
        b.chunks(2)
            .map(|c| u16::from_be_bytes([c[0], c[1]]))
            .collect()
    }

    #[test]
    fn integer_writes_are_exact_at_the_edges_and_refused_beyond() {
        let i64p = point("hr:0", DataType::I64, ByteOrder::Abcd);
        let u64p = point("hr:0", DataType::U64, ByteOrder::Abcd);
        let u16p = point("hr:0", DataType::U16, ByteOrder::Abcd);
        let enc = |p: &Point, v: Value| p.encode_registers(&v);
        assert_eq!(
            enc(&i64p, Value::Int(i64::MAX)),
            Ok(words(&i64::MAX.to_be_bytes()))
        );
        assert_eq!(
            enc(&i64p, Value::Int(i64::MIN)),
            Ok(words(&i64::MIN.to_be_bytes()))
        );
        // 2^53 + 1 has no f64: it must not pass through one.
        let odd = (1i64 << 53) + 1;
        assert_eq!(enc(&i64p, Value::Int(odd)), Ok(words(&odd.to_be_bytes())));
        assert_eq!(
            enc(&u64p, Value::Str("18446744073709551615".into())),
            Ok(vec![0xFFFF; 4])
        );
        assert_eq!(enc(&u64p, Value::from_u64(u64::MAX)), Ok(vec![0xFFFF; 4]));
        // 2^64 as a float (what u64::MAX becomes in a script's float) does
        // not fit: refused, not wrapped to 0.
        assert!(enc(&u64p, Value::Float(u64::MAX as f64)).is_err());
        assert!(enc(&u64p, Value::Int(-1)).is_err());
        assert!(enc(&u64p, Value::Str("18446744073709551616".into())).is_err());
        assert!(enc(&u16p, Value::Int(70_000)).is_err());
        assert!(enc(&u16p, Value::Int(-1)).is_err());
        assert_eq!(enc(&u16p, Value::Int(65_535)), Ok(vec![0xFFFF]));
        assert_eq!(
            enc(&u16p, Value::Float(65_534.6)),
            Ok(vec![0xFFFF]),
            "rounded"
        );
        assert!(
            enc(&u16p, Value::Float(65_535.5)).is_err(),
            "rounds to 65536"
        );
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            assert!(enc(&u16p, Value::Float(bad)).is_err(), "{bad}");
        }
        assert!(
            enc(&u16p, Value::Str("12".into())).is_ok(),
            "digits are a number"
        );
        assert!(enc(&u16p, Value::Str("twelve".into())).is_err());
    }

    #[test]
    fn float_writes_refuse_what_the_register_cannot_hold() {
        let f32p = point("hr:0", DataType::F32, ByteOrder::Abcd);
        let f64p = point("hr:0", DataType::F64, ByteOrder::Abcd);
        assert!(f32p.encode_registers(&Value::Float(f64::NAN)).is_err());
        assert!(
            f32p.encode_registers(&Value::Float(1e39)).is_err(),
            "f32 overflow"
        );
        assert!(f64p.encode_registers(&Value::Float(f64::INFINITY)).is_err());
        assert_eq!(
            f64p.encode_registers(&Value::Float(-1.25)),
            Ok(words(&(-1.25f64).to_be_bytes()))
        );
        assert!(f64p.encode_registers(&Value::Str("1.5".into())).is_err());
    }

    #[test]
    fn bits_take_bools_or_0_and_1_only() {
        let coil = Point {
            count: 2,
            ..point("co:0", DataType::Bool, ByteOrder::Abcd)
        };
        assert_eq!(
            coil.encode_bits(&Value::Array(vec![Value::Int(1), Value::Bool(false)])),
            Ok(vec![true, false])
        );
        assert!(
            coil.encode_bits(&Value::Array(vec![Value::Int(2), Value::Int(0)]))
                .is_err()
        );
        assert!(
            coil.encode_bits(&Value::Array(vec![Value::Int(1)]))
                .is_err(),
            "count"
        );
    }

    #[test]
    fn sixty_four_bit_arrays_read_exactly() {
        let p = Point {
            count: 2,
            ..point("hr:0", DataType::U64, ByteOrder::Abcd)
        };
        let mut regs = words(&u64::MAX.to_be_bytes());
        regs.extend(words(&((1u64 << 53) + 1).to_be_bytes()));
        assert_eq!(
            p.decode_registers(&regs),
            Value::Array(vec![Value::UInt(u64::MAX), Value::Int((1 << 53) + 1)])
        );
    }

    #[test]
    fn schneider_notation_maps_to_one_modbus_address() {
        let v = |t: &str| Address::parse_vendor(t).unwrap().unwrap();
        assert_eq!(v("%MW100").0, Address::parse("hr:100").unwrap());
        assert_eq!(v("%mw100.3").0, Address::parse("hr:100.3").unwrap());
        assert_eq!(v("%M20").0, Address::parse("co:20").unwrap());
        let (a, h) = v("%MF10");
        assert_eq!(a, Address::parse("40011").unwrap());
        assert_eq!(
            (h.data_type, h.order),
            (Some(DataType::F32), Some(ByteOrder::Cdab))
        );
        assert_eq!(v("%MD4").1.data_type, Some(DataType::I32));
        assert!(Address::parse_vendor("hr:1").is_none());
        assert!(
            Address::parse_vendor("%IW3").is_none(),
            "inputs are not on Modbus"
        );
        assert!(Address::parse_vendor("%MF1.2").unwrap().is_err());
        assert!(Address::parse_vendor("%MW70000").unwrap().is_err());
    }

    /// `widen` gives exactly what formatting the f32 and parsing the text
    /// as an f64 gives (its definition), over a spread of bit patterns:
    /// every exponent, both signs, denormals, integers and non-integers.
    #[test]
    fn widen_matches_the_text_round_trip() {
        let mut bits: u32 = 0;
        for _ in 0..1_000_000 {
            let x = f32::from_bits(bits);
            let want = if x.is_finite() {
                x.to_string().parse::<f64>().unwrap()
            } else {
                f64::from(x)
            };
            let got = widen(x);
            assert!(
                got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
                "{x:e} ({bits:08x}): {got:e} != {want:e}"
            );
            bits = bits.wrapping_add(4_297);
        }
        for x in [
            16_777_215.0f32,
            -16_777_215.0,
            8_388_607.5,
            0.1,
            -0.0,
            1e-45,
            3.4028235e38,
        ] {
            assert_eq!(
                widen(x).to_bits(),
                x.to_string().parse::<f64>().unwrap().to_bits()
            );
        }
    }

    #[test]
    fn registers_make_the_value_bits_in_every_order() {
        // 0x0102030405060708 as ABCD registers, then as each order sends it.
        let regs = |o: ByteOrder| -> Vec<u16> {
            o.bytes_to_registers(&0x0102_0304_0506_0708u64.to_be_bytes())
        };
        for o in [
            ByteOrder::Abcd,
            ByteOrder::Cdab,
            ByteOrder::Badc,
            ByteOrder::Dcba,
        ] {
            assert_eq!(o.registers_to_u64(&regs(o)), 0x0102_0304_0506_0708, "{o:?}");
        }
        assert_eq!(
            ByteOrder::Cdab.registers_to_u64(&[0x5678, 0x1234]),
            0x1234_5678
        );
        assert_eq!(
            ByteOrder::Badc.registers_to_u64(&[0x3412, 0x7856]),
            0x1234_5678
        );
        assert_eq!(
            ByteOrder::Dcba.registers_to_u64(&[0x7856, 0x3412]),
            0x1234_5678
        );
    }

    /// A scan decodes through [`Decoder`]: for every type, order, count,
    /// scaling and bit address it must give what `decode_registers` gives
    /// (which the recorded run and the exactness tests pin), over register
    /// contents that include NaN, infinities and the extremes.
    #[test]
    fn the_decoder_agrees_with_decode_registers() {
        let types = [
            DataType::Bool,
            DataType::U16,
            DataType::I16,
            DataType::U32,
            DataType::I32,
            DataType::U64,
            DataType::I64,
            DataType::F32,
            DataType::F64,
            DataType::Str,
        ];
        let orders = [
            ByteOrder::Abcd,
            ByteOrder::Cdab,
            ByteOrder::Badc,
            ByteOrder::Dcba,
        ];
        fn same(a: &Value, b: &Value) -> bool {
            match (a, b) {
                (Value::Float(x), Value::Float(y)) => x.to_bits() == y.to_bits(),
                (Value::Array(x), Value::Array(y)) => {
                    x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same(a, b))
                }
                _ => a == b,
            }
        }
        let mut rand = crate::testrand::XorShift(0x2545_f491_4f6c_dd1d);
        let mut fast = 0;
        for t in types {
            for order in orders {
                for (addr, count, scale) in [
                    ("hr:0", 1, 1.0),
                    ("hr:0", 3, 1.0),
                    ("hr:0", 1, 0.1),
                    ("hr:0.5", 1, 1.0),
                ] {
                    let p = Point {
                        count,
                        scale,
                        ..point(addr, t, order)
                    };
                    if p.validate().is_err() {
                        continue;
                    }
                    let d = p.decoder();
                    fast += usize::from(d.kind != Shape::General);
                    let span = usize::from(p.span());
                    for i in 0..2_000 {
                        let regs: Vec<u16> = (0..span)
                            .map(|_| {
                                let seed = rand.next();
                                match i % 4 {
                                    0 => [0, 0xffff, 0x7fff, 0x8000, 0x7f80, 0xff80, 0x7fc0]
                                        [(seed % 7) as usize],
                                    _ => seed as u16,
                                }
                            })
                            .collect();
                        let (got, want) = (d.decode(&p, &regs), p.decode_registers(&regs));
                        assert!(same(&got, &want), "{p:?} {regs:04x?}: {got:?} != {want:?}");
                    }
                }
            }
        }
        // U16, I16, U32, I32, I64, F32, F64 in four orders each.
        assert_eq!(fast, 28);
    }

    /// Every positive finite f32 (negatives mirror them): `cargo test
    /// --release --lib -- --ignored widen_every_f32` (about 14 minutes).
    #[test]
    #[ignore]
    fn widen_every_f32() {
        let mut bad = 0u64;
        for bits in 0..0x7f80_0000u32 {
            let x = f32::from_bits(bits);
            let want: f64 = x.to_string().parse().unwrap();
            if widen(x).to_bits() != want.to_bits() {
                bad += 1;
                if bad < 10 {
                    eprintln!("{bits:08x}: {} != {want}", widen(x));
                }
            }
        }
        assert_eq!(bad, 0);
    }
}
