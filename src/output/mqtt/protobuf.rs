//! Sparkplug B payloads on the wire: the `Payload` and `Payload.Metric`
//! messages of Eclipse Tahu's `sparkplug_b.proto` (Sparkplug 3.0, 6.4.1),
//! with the property set that carries a metric's quality. Hand-written
//! rather than generated: RTDS sends and reads these two messages only,
//! proto2 presence must be kept (a `seq` of 0, a `bdSeq` of 0 and a
//! Rebirth of `false` are written, not skipped as defaults), and a
//! generator would need `protoc` at build time. The field numbers are
//! Tahu's; the test host decodes with Google's protobuf runtime from the
//! specification's schema, independently of this file.

/// A Sparkplug DataType (6.4.16): the enum value on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum DataType {
    /// 8-bit signed.
    Int8 = 1,
    /// 16-bit signed.
    Int16 = 2,
    /// 32-bit signed.
    Int32 = 3,
    /// 64-bit signed.
    Int64 = 4,
    /// 8-bit unsigned.
    UInt8 = 5,
    /// 16-bit unsigned.
    UInt16 = 6,
    /// 32-bit unsigned.
    UInt32 = 7,
    /// 64-bit unsigned.
    UInt64 = 8,
    /// 32-bit float.
    Float = 9,
    /// 64-bit float.
    Double = 10,
    /// A flag.
    Boolean = 11,
    /// UTF-8 text.
    String = 12,
    /// Milliseconds since the epoch, UTC.
    DateTime = 13,
    /// Raw bytes.
    Bytes = 17,
    /// Packed little-endian arrays (6.4.17).
    Int8Array = 22,
    /// See `Int8Array`.
    Int16Array = 23,
    /// See `Int8Array`.
    Int32Array = 24,
    /// See `Int8Array`.
    Int64Array = 25,
    /// See `Int8Array`.
    UInt8Array = 26,
    /// See `Int8Array`.
    UInt16Array = 27,
    /// See `Int8Array`.
    UInt32Array = 28,
    /// See `Int8Array`.
    UInt64Array = 29,
    /// See `Int8Array`.
    FloatArray = 30,
    /// See `Int8Array`.
    DoubleArray = 31,
    /// A u32 count, then the bits most significant first.
    BooleanArray = 32,
    /// Each string followed by a NUL.
    StringArray = 33,
}

impl DataType {
    /// The type for its wire number.
    pub fn from_u32(n: u32) -> Option<DataType> {
        use DataType::*;
        Some(match n {
            1 => Int8,
            2 => Int16,
            3 => Int32,
            4 => Int64,
            5 => UInt8,
            6 => UInt16,
            7 => UInt32,
            8 => UInt64,
            9 => Float,
            10 => Double,
            11 => Boolean,
            12 | 14 | 15 => String,
            13 => DateTime,
            17 | 18 => Bytes,
            22 => Int8Array,
            23 => Int16Array,
            24 => Int32Array,
            25 => Int64Array,
            26 => UInt8Array,
            27 => UInt16Array,
            28 => UInt32Array,
            29 => UInt64Array,
            30 => FloatArray,
            31 => DoubleArray,
            32 => BooleanArray,
            33 => StringArray,
            _ => return None,
        })
    }

    /// Its name in the specification.
    pub fn name(self) -> &'static str {
        use DataType::*;
        match self {
            Int8 => "Int8",
            Int16 => "Int16",
            Int32 => "Int32",
            Int64 => "Int64",
            UInt8 => "UInt8",
            UInt16 => "UInt16",
            UInt32 => "UInt32",
            UInt64 => "UInt64",
            Float => "Float",
            Double => "Double",
            Boolean => "Boolean",
            String => "String",
            DateTime => "DateTime",
            Bytes => "Bytes",
            Int8Array => "Int8Array",
            Int16Array => "Int16Array",
            Int32Array => "Int32Array",
            Int64Array => "Int64Array",
            UInt8Array => "UInt8Array",
            UInt16Array => "UInt16Array",
            UInt32Array => "UInt32Array",
            UInt64Array => "UInt64Array",
            FloatArray => "FloatArray",
            DoubleArray => "DoubleArray",
            BooleanArray => "BooleanArray",
            StringArray => "StringArray",
        }
    }
}

/// A metric's value, in the field its datatype uses.
#[derive(Debug, Clone, PartialEq)]
pub enum MetricValue {
    /// `int_value` (10): Int8..Int32 as their N-bit two's complement,
    /// zero-extended; UInt8..UInt32.
    Int(u32),
    /// `long_value` (11): Int64 as two's complement, UInt64, DateTime.
    Long(u64),
    /// `float_value` (12).
    Float(f32),
    /// `double_value` (13).
    Double(f64),
    /// `boolean_value` (14).
    Bool(bool),
    /// `string_value` (15).
    String(String),
    /// `bytes_value` (16): Bytes and the packed arrays.
    Bytes(Vec<u8>),
}

/// Quality of a metric whose status is not good (6.4.9.1): the property
/// `Quality`, an Int32.
pub const QUALITY_BAD: i32 = 0;
/// A value not refreshed (RTDS's stale status).
pub const QUALITY_STALE: i32 = 500;

/// One metric.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Metric {
    /// Name (births; commands may use it instead of the alias).
    pub name: Option<String>,
    /// Alias (every metric but Rebirth and bdSeq).
    pub alias: Option<u64>,
    /// Milliseconds since the epoch, UTC.
    pub timestamp: Option<u64>,
    /// Datatype (births only).
    pub datatype: Option<DataType>,
    /// Sent from store-and-forward, not current.
    pub is_historical: bool,
    /// No value (a bad status).
    pub is_null: bool,
    /// The `Quality` property when not good.
    pub quality: Option<i32>,
    /// The value, unless null.
    pub value: Option<MetricValue>,
}

/// A Sparkplug payload.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Payload {
    /// Milliseconds since the epoch, UTC (all but NDEATH may carry it).
    pub timestamp: Option<u64>,
    /// The metrics.
    pub metrics: Vec<Metric>,
    /// 0..=255 (absent on NDEATH and commands).
    pub seq: Option<u64>,
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn key(out: &mut Vec<u8>, field: u32, wire: u8) {
    varint(out, u64::from(field) << 3 | u64::from(wire));
}

fn bytes_field(out: &mut Vec<u8>, field: u32, b: &[u8]) {
    key(out, field, 2);
    varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

impl Metric {
    fn encode(&self, out: &mut Vec<u8>) {
        if let Some(n) = &self.name {
            bytes_field(out, 1, n.as_bytes());
        }
        if let Some(a) = self.alias {
            key(out, 2, 0);
            varint(out, a);
        }
        if let Some(t) = self.timestamp {
            key(out, 3, 0);
            varint(out, t);
        }
        if let Some(d) = self.datatype {
            key(out, 4, 0);
            varint(out, d as u64);
        }
        if self.is_historical {
            key(out, 5, 0);
            out.push(1);
        }
        if self.is_null {
            key(out, 7, 0);
            out.push(1);
        }
        if let Some(q) = self.quality {
            // PropertySet { keys: ["Quality"], values: [{ type: Int32, int_value }] }
            let mut value = Vec::new();
            key(&mut value, 1, 0);
            varint(&mut value, DataType::Int32 as u64);
            key(&mut value, 3, 0);
            varint(&mut value, u64::from(q as u32));
            let mut set = Vec::new();
            bytes_field(&mut set, 1, b"Quality");
            bytes_field(&mut set, 2, &value);
            bytes_field(out, 9, &set);
        }
        match &self.value {
            None => {}
            Some(MetricValue::Int(v)) => {
                key(out, 10, 0);
                varint(out, u64::from(*v));
            }
            Some(MetricValue::Long(v)) => {
                key(out, 11, 0);
                varint(out, *v);
            }
            Some(MetricValue::Float(v)) => {
                key(out, 12, 5);
                out.extend_from_slice(&v.to_le_bytes());
            }
            Some(MetricValue::Double(v)) => {
                key(out, 13, 1);
                out.extend_from_slice(&v.to_le_bytes());
            }
            Some(MetricValue::Bool(v)) => {
                key(out, 14, 0);
                out.push(u8::from(*v));
            }
            Some(MetricValue::String(s)) => bytes_field(out, 15, s.as_bytes()),
            Some(MetricValue::Bytes(b)) => bytes_field(out, 16, b),
        }
    }
}

impl Payload {
    /// The payload's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + self.metrics.len() * 24);
        if let Some(t) = self.timestamp {
            key(&mut out, 1, 0);
            varint(&mut out, t);
        }
        let mut m = Vec::new();
        for metric in &self.metrics {
            m.clear();
            metric.encode(&mut m);
            bytes_field(&mut out, 2, &m);
        }
        if let Some(s) = self.seq {
            key(&mut out, 3, 0);
            varint(&mut out, s);
        }
        out
    }

    /// Reads a payload (a command from a host). Unknown fields are skipped
    /// by their wire type; what cannot be read is an error, never a guess.
    pub fn decode(bytes: &[u8]) -> Result<Payload, String> {
        let mut r = Reader { b: bytes, at: 0 };
        let mut p = Payload::default();
        while !r.done() {
            let (field, wire) = r.key()?;
            match (field, wire) {
                (1, 0) => p.timestamp = Some(r.varint()?),
                (2, 2) => p.metrics.push(Metric::decode(r.bytes()?)?),
                (3, 0) => p.seq = Some(r.varint()?),
                _ => r.skip(wire)?,
            }
        }
        Ok(p)
    }
}

impl Metric {
    fn decode(bytes: &[u8]) -> Result<Metric, String> {
        let mut r = Reader { b: bytes, at: 0 };
        let mut m = Metric::default();
        let mut values = 0;
        while !r.done() {
            let (field, wire) = r.key()?;
            let mut value = |v: MetricValue| {
                values += 1;
                Some(v)
            };
            match (field, wire) {
                (1, 2) => {
                    m.name = Some(
                        String::from_utf8(r.bytes()?.to_vec())
                            .map_err(|_| "a metric name that is not UTF-8")?,
                    )
                }
                (2, 0) => m.alias = Some(r.varint()?),
                (3, 0) => m.timestamp = Some(r.varint()?),
                (4, 0) => {
                    let n = r.varint()?;
                    m.datatype = u32::try_from(n).ok().and_then(DataType::from_u32);
                    if m.datatype.is_none() {
                        return Err(format!("datatype {n} is not one RTDS takes"));
                    }
                }
                (5, 0) => m.is_historical = r.varint()? != 0,
                (7, 0) => m.is_null = r.varint()? != 0,
                (10, 0) => m.value = value(MetricValue::Int(r.varint()? as u32)),
                (11, 0) => m.value = value(MetricValue::Long(r.varint()?)),
                (12, 5) => m.value = value(MetricValue::Float(f32::from_le_bytes(r.fixed()?))),
                (13, 1) => m.value = value(MetricValue::Double(f64::from_le_bytes(r.fixed()?))),
                (14, 0) => m.value = value(MetricValue::Bool(r.varint()? != 0)),
                (15, 2) => {
                    m.value = value(MetricValue::String(
                        String::from_utf8(r.bytes()?.to_vec())
                            .map_err(|_| "a string value that is not UTF-8")?,
                    ))
                }
                (16, 2) => m.value = value(MetricValue::Bytes(r.bytes()?.to_vec())),
                _ => r.skip(wire)?,
            }
        }
        if values > 1 {
            return Err("a metric with two values".into());
        }
        Ok(m)
    }
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn done(&self) -> bool {
        self.at >= self.b.len()
    }

    fn varint(&mut self) -> Result<u64, String> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let byte = *self.b.get(self.at).ok_or("a number cut short")?;
            self.at += 1;
            v |= u64::from(byte & 0x7F) << shift;
            if byte & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("a number longer than 10 bytes".into())
    }

    fn key(&mut self) -> Result<(u64, u8), String> {
        let k = self.varint()?;
        Ok((k >> 3, (k & 7) as u8))
    }

    fn bytes(&mut self) -> Result<&'a [u8], String> {
        let n = usize::try_from(self.varint()?).map_err(|_| "a length too large")?;
        let end = self
            .at
            .checked_add(n)
            .filter(|e| *e <= self.b.len())
            .ok_or("a length beyond the payload")?;
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn fixed<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let end = self.at + N;
        let s = self
            .b
            .get(self.at..end)
            .ok_or("a fixed-size value cut short")?;
        self.at = end;
        Ok(s.try_into().expect("N bytes"))
    }

    fn skip(&mut self, wire: u8) -> Result<(), String> {
        match wire {
            0 => self.varint().map(drop),
            1 => self.fixed::<8>().map(drop),
            2 => self.bytes().map(drop),
            5 => self.fixed::<4>().map(drop),
            w => Err(format!("wire type {w} is not protobuf's")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_worked_example_and_presence_of_zero() {
        // The DDATA of the notes' worked example: Int64 min and UInt64 max
        // by alias, seq 2 (timestamps left out to keep the bytes short).
        let p = Payload {
            timestamp: None,
            metrics: vec![
                Metric {
                    alias: Some(10),
                    value: Some(MetricValue::Long(i64::MIN as u64)),
                    ..Metric::default()
                },
                Metric {
                    alias: Some(11),
                    value: Some(MetricValue::Long(u64::MAX)),
                    ..Metric::default()
                },
            ],
            seq: Some(2),
        };
        let b = p.encode();
        assert_eq!(
            b,
            [
                0x12, 0x0d, 0x10, 0x0a, 0x58, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80,
                0x01, 0x12, 0x0d, 0x10, 0x0b, 0x58, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
                0xff, 0x01, 0x18, 0x02
            ]
        );
        assert_eq!(Payload::decode(&b).unwrap(), p);
        // seq 0, a bdSeq of 0 and a false Rebirth are on the wire.
        let birth = Payload {
            seq: Some(0),
            metrics: vec![
                Metric {
                    name: Some("bdSeq".into()),
                    datatype: Some(DataType::Int64),
                    value: Some(MetricValue::Long(0)),
                    ..Metric::default()
                },
                Metric {
                    name: Some("Node Control/Rebirth".into()),
                    datatype: Some(DataType::Boolean),
                    value: Some(MetricValue::Bool(false)),
                    ..Metric::default()
                },
            ],
            ..Payload::default()
        };
        let b = birth.encode();
        assert!(b.ends_with(&[0x18, 0x00]));
        assert!(b.windows(2).any(|w| w == [0x58, 0x00]));
        assert!(b.windows(2).any(|w| w == [0x70, 0x00]));
        assert_eq!(Payload::decode(&b).unwrap(), birth);
    }

    #[test]
    fn floats_quality_and_garbage() {
        let m = Metric {
            alias: Some(3),
            timestamp: Some(1_700_000_000_000),
            is_null: true,
            quality: Some(QUALITY_BAD),
            ..Metric::default()
        };
        let f = Metric {
            alias: Some(4),
            value: Some(MetricValue::Float(1.23)),
            ..Metric::default()
        };
        let p = Payload {
            metrics: vec![m, f],
            ..Payload::default()
        };
        let b = p.encode();
        // 1.23f little-endian (the spec's 6.4.17 text): a4 70 9d 3f.
        assert!(b.windows(5).any(|w| w == [0x65, 0xa4, 0x70, 0x9d, 0x3f]));
        let back = Payload::decode(&b).unwrap();
        assert_eq!(back.metrics[1], p.metrics[1]);
        assert!(back.metrics[0].is_null);
        for bad in [&[0x12, 0x05, 0x10][..], &[0x0f], &[0x12, 0x02, 0x0a, 0x01]] {
            assert!(Payload::decode(bad).is_err(), "{bad:?}");
        }
        // Two values in one metric are refused.
        assert!(Payload::decode(&[0x12, 0x04, 0x58, 0x01, 0x70, 0x01]).is_err());
    }
}
