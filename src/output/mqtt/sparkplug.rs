//! Sparkplug B 3.0 for an edge node: topics, datatypes, values both ways,
//! births and data messages. Pure functions and plain data; the session
//! state (seq, bdSeq, aliases, who is born) lives in the worker
//! (`worker.rs`), which calls these.
//!
//! - RTDS is the edge node `spBv1.0/{group}/…/{edge_node}`; each connector
//!   is a device (its tags and its `_…` diagnostics), calculated tags are
//!   node metrics beside `bdSeq` and `Node Control/Rebirth`.
//! - Every metric has an alias, its index in the output's table plus one
//!   (unique across the node, stable while the configuration is); births
//!   carry name, alias, datatype, value and time stamp, data messages alias,
//!   value and time stamp only.
//! - A status that is not good is a null value with the property
//!   `Quality` (6.4.9.1): 500 (STALE) for RTDS's stale, 0 (BAD) for every
//!   other status; a good value carries no property (GOOD is the default).

use super::protobuf::{DataType, Metric, MetricValue, QUALITY_BAD, QUALITY_STALE};
use crate::model::{Status, Value};

/// The namespace of Sparkplug B topics.
pub const NAMESPACE: &str = "spBv1.0";

/// The metric name of the rebirth request (5.17).
pub const REBIRTH: &str = "Node Control/Rebirth";

/// Whether `id` may be a group, edge node or device id (4.1.1): not empty,
/// none of `+ / #`, and a valid topic level.
pub fn check_id(what: &str, id: &str) -> Result<(), String> {
    if id.is_empty() || id.contains(['+', '/', '#', '\0']) {
        return Err(format!(
            "{what} `{id}` must be non-empty and hold none of + / # (Sparkplug 4.1.1)"
        ));
    }
    Ok(())
}

/// A device id made from a connector's name: `+ / #` become `_`.
pub fn device_id(name: &str) -> String {
    name.chars()
        .map(|c| {
            if matches!(c, '+' | '/' | '#' | '\0') {
                '_'
            } else {
                c
            }
        })
        .collect()
}

/// The topic of a node message (`NBIRTH` …) or, with `device`, a device
/// message (`DBIRTH` …).
pub fn topic(group: &str, kind: &str, node: &str, device: Option<&str>) -> String {
    match device {
        Some(d) => format!("{NAMESPACE}/{group}/{kind}/{node}/{d}"),
        None => format!("{NAMESPACE}/{group}/{kind}/{node}"),
    }
}

/// The Sparkplug datatype of an RTDS type name (a connector's, a
/// diagnostic's, or a calculated tag's kind), with the tag's current value
/// deciding when the name does not (`auto`, a scaled integer that holds a
/// float).
pub fn datatype(type_name: &str, current: Option<&Value>) -> DataType {
    use DataType::*;
    let lower = type_name.to_ascii_lowercase();
    // OPC UA's `Float` is 32-bit; RTDS's own `float` (a diagnostic, a SQL
    // column, a calculated tag) is 64-bit.
    let named = match lower.as_str() {
        _ if type_name == "Float" => Some(Float),
        "bool" | "boolean" => Some(Boolean),
        "sbyte" | "int8" => Some(Int8),
        "byte" | "uint8" => Some(UInt8),
        "i16" | "int16" => Some(Int16),
        "u16" | "uint16" => Some(UInt16),
        "i32" | "int32" => Some(Int32),
        "u32" | "uint32" => Some(UInt32),
        "i64" | "int64" | "int" => Some(Int64),
        "u64" | "uint64" => Some(UInt64),
        "f32" => Some(Float),
        "f64" | "double" | "float" => Some(Double),
        "string" | "str" | "text" | "localizedtext" | "bytestring" | "datetime" | "guid" => {
            Some(String)
        }
        "bool[]" | "boolean[]" => Some(BooleanArray),
        "i8[]" | "sbyte[]" => Some(Int8Array),
        "u8[]" | "byte[]" => Some(UInt8Array),
        "i16[]" | "int16[]" => Some(Int16Array),
        "u16[]" | "uint16[]" => Some(UInt16Array),
        "i32[]" | "int32[]" => Some(Int32Array),
        "u32[]" | "uint32[]" => Some(UInt32Array),
        "i64[]" | "int64[]" => Some(Int64Array),
        "u64[]" | "uint64[]" => Some(UInt64Array),
        "f32[]" | "float[]" => Some(FloatArray),
        "f64[]" | "double[]" => Some(DoubleArray),
        "string[]" | "str[]" => Some(StringArray),
        _ => None,
    };
    match (named, current) {
        // A scaled integer register holds a float: Double, exactly.
        (Some(t), Some(Value::Float(_))) if is_integer(t) => Double,
        // A value the name's type cannot hold (a u64 above i64::MAX in a
        // tag typed `int`, a scaled f32): the value's own type.
        (Some(t), Some(v)) if to_metric_value(t, v).is_none() => of_value(v),
        (Some(t), _) => t,
        (None, Some(v)) => of_value(v),
        (None, None) => String,
    }
}

fn is_integer(t: DataType) -> bool {
    use DataType::*;
    matches!(
        t,
        Int8 | Int16 | Int32 | Int64 | UInt8 | UInt16 | UInt32 | UInt64
    )
}

/// The datatype a value of unknown type gets.
fn of_value(v: &Value) -> DataType {
    match v {
        Value::Bool(_) => DataType::Boolean,
        Value::Int(_) => DataType::Int64,
        Value::UInt(_) => DataType::UInt64,
        Value::Float(_) => DataType::Double,
        Value::Str(_) => DataType::String,
        // An array of unknown elements: its JSON text.
        Value::Array(_) => DataType::String,
    }
}

fn le<const N: usize>(out: &mut Vec<u8>, b: [u8; N]) {
    out.extend_from_slice(&b);
}

/// `v` in datatype `t`'s field, or `None` when it does not fit exactly
/// (then the metric's type must change: a rebirth).
pub fn to_metric_value(t: DataType, v: &Value) -> Option<MetricValue> {
    use DataType::*;
    let int = |v: &Value| -> Option<i128> {
        match v {
            Value::Int(i) => Some(i128::from(*i)),
            Value::UInt(u) => Some(i128::from(*u)),
            Value::Bool(b) => Some(i128::from(*b)),
            Value::Float(f) if f.fract() == 0.0 && f.abs() < 1e19 => Some(*f as i128),
            _ => None,
        }
    };
    let ranged = |lo: i128, hi: i128| int(v).filter(|i| (lo..=hi).contains(i));
    Some(match t {
        Boolean => match v {
            Value::Bool(b) => MetricValue::Bool(*b),
            _ => return None,
        },
        // IntN as its N-bit two's complement, zero-extended (what Tahu's
        // Python and pysparkplug read).
        Int8 => MetricValue::Int(u32::from(ranged(-128, 127)? as i8 as u8)),
        Int16 => MetricValue::Int(u32::from(ranged(-32_768, 32_767)? as i16 as u16)),
        Int32 => {
            MetricValue::Int(ranged(i128::from(i32::MIN), i128::from(i32::MAX))? as i32 as u32)
        }
        UInt8 => MetricValue::Int(ranged(0, 255)? as u32),
        UInt16 => MetricValue::Int(ranged(0, 65_535)? as u32),
        UInt32 => MetricValue::Int(ranged(0, i128::from(u32::MAX))? as u32),
        Int64 => {
            MetricValue::Long(ranged(i128::from(i64::MIN), i128::from(i64::MAX))? as i64 as u64)
        }
        UInt64 => MetricValue::Long(ranged(0, i128::from(u64::MAX))? as u64),
        DateTime => MetricValue::Long(ranged(0, i128::from(i64::MAX))? as u64),
        Float => match v {
            Value::Float(f) if f64::from(*f as f32) == *f || f.is_nan() => {
                MetricValue::Float(*f as f32)
            }
            Value::Int(i) if (*i as f32) as i64 == *i => MetricValue::Float(*i as f32),
            _ => return None,
        },
        Double => match v {
            Value::Float(f) => MetricValue::Double(*f),
            Value::Int(i) if (*i as f64) as i64 == *i => MetricValue::Double(*i as f64),
            _ => return None,
        },
        String => match v {
            Value::Str(s) => MetricValue::String(s.clone()),
            Value::Array(_) => MetricValue::String(crate::json::value_text(v)),
            other => MetricValue::String(other.to_string()),
        },
        Bytes => return None,
        _ => MetricValue::Bytes(array_bytes(t, v)?),
    })
}

/// An array packed as 6.4.17 says: little-endian elements; BooleanArray a
/// u32 count then the bits, most significant first; StringArray each
/// string followed by a NUL.
fn array_bytes(t: DataType, v: &Value) -> Option<Vec<u8>> {
    use DataType::*;
    let Value::Array(items) = v else {
        return None;
    };
    let mut out = Vec::with_capacity(items.len() * 4 + 4);
    match t {
        BooleanArray => {
            le(&mut out, (items.len() as u32).to_le_bytes());
            let mut byte = 0u8;
            for (i, x) in items.iter().enumerate() {
                // Modbus bit arrays hold 0 and 1 (scripts see integers).
                let b = match x {
                    Value::Bool(b) => *b,
                    Value::Int(0) => false,
                    Value::Int(1) => true,
                    _ => return None,
                };
                if b {
                    byte |= 0x80 >> (i % 8);
                }
                if i % 8 == 7 {
                    out.push(byte);
                    byte = 0;
                }
            }
            if items.len() % 8 != 0 {
                out.push(byte);
            }
        }
        StringArray => {
            for x in items {
                let Value::Str(s) = x else { return None };
                if s.contains('\0') {
                    return None;
                }
                out.extend_from_slice(s.as_bytes());
                out.push(0);
            }
        }
        _ => {
            let elem = match t {
                Int8Array => Int8,
                Int16Array => Int16,
                Int32Array => Int32,
                Int64Array => Int64,
                UInt8Array => UInt8,
                UInt16Array => UInt16,
                UInt32Array => UInt32,
                UInt64Array => UInt64,
                FloatArray => Float,
                DoubleArray => Double,
                _ => return None,
            };
            for x in items {
                match (elem, to_metric_value(elem, x)?) {
                    (Int8 | UInt8, MetricValue::Int(n)) => out.push(n as u8),
                    (Int16 | UInt16, MetricValue::Int(n)) => le(&mut out, (n as u16).to_le_bytes()),
                    (Int32 | UInt32, MetricValue::Int(n)) => le(&mut out, n.to_le_bytes()),
                    (_, MetricValue::Long(n)) => le(&mut out, n.to_le_bytes()),
                    (_, MetricValue::Float(f)) => le(&mut out, f.to_le_bytes()),
                    (_, MetricValue::Double(f)) => le(&mut out, f.to_le_bytes()),
                    _ => return None,
                }
            }
        }
    }
    Some(out)
}

/// A command's value as an RTDS value, for datatype `t` (the metric's, from
/// RTDS's own birth). Lenient where hosts differ (6.4.17 and the notes on
/// Tahu): IntN from `int_value` as its low N bits sign-extended, UInt32 from
/// either field; a value in the wrong field otherwise is refused.
pub fn from_metric_value(t: DataType, v: &MetricValue) -> Result<Value, String> {
    use DataType::*;
    let bad = || format!("a {} value does not fit a {} metric", kind(v), t.name());
    Ok(match (t, v) {
        (Boolean, MetricValue::Bool(b)) => Value::Bool(*b),
        (Int8, MetricValue::Int(n)) => Value::Int(i64::from(*n as u8 as i8)),
        (Int16, MetricValue::Int(n)) => Value::Int(i64::from(*n as u16 as i16)),
        (Int32, MetricValue::Int(n)) => Value::Int(i64::from(*n as i32)),
        (UInt8, MetricValue::Int(n)) if *n <= 0xFF => Value::Int(i64::from(*n)),
        (UInt16, MetricValue::Int(n)) if *n <= 0xFFFF => Value::Int(i64::from(*n)),
        (UInt32, MetricValue::Int(n)) => Value::Int(i64::from(*n)),
        (UInt32, MetricValue::Long(n)) if *n <= u64::from(u32::MAX) => Value::Int(*n as i64),
        (Int64, MetricValue::Long(n)) => Value::Int(*n as i64),
        (UInt64, MetricValue::Long(n)) => match i64::try_from(*n) {
            Ok(i) => Value::Int(i),
            Err(_) => Value::UInt(*n),
        },
        (Float, MetricValue::Float(f)) => Value::Float(f64::from(*f)),
        (Double, MetricValue::Double(f)) => Value::Float(*f),
        (String, MetricValue::String(s)) => Value::Str(s.clone()),
        _ => return Err(bad()),
    })
}

fn kind(v: &MetricValue) -> &'static str {
    match v {
        MetricValue::Int(_) => "int_value",
        MetricValue::Long(_) => "long_value",
        MetricValue::Float(_) => "float_value",
        MetricValue::Double(_) => "double_value",
        MetricValue::Bool(_) => "boolean_value",
        MetricValue::String(_) => "string_value",
        MetricValue::Bytes(_) => "bytes_value",
    }
}

/// The quality property of a status that is not good.
pub fn quality(status: Status) -> Option<i32> {
    if status.is_good() {
        None
    } else if status == Status::STALE {
        Some(QUALITY_STALE)
    } else {
        Some(QUALITY_BAD)
    }
}

/// One metric's value at a time: a birth's (`name` and `datatype` given)
/// or a data message's (alias only).
#[allow(clippy::too_many_arguments)]
pub fn metric(
    name: Option<&str>,
    alias: u64,
    t: DataType,
    birth: bool,
    value: Option<&Value>,
    status: Status,
    ts_ms: u64,
    historical: bool,
) -> Metric {
    let value = if status.is_good() {
        value.and_then(|v| to_metric_value(t, v))
    } else {
        None
    };
    Metric {
        name: name.map(str::to_string),
        alias: Some(alias),
        timestamp: Some(ts_ms),
        datatype: birth.then_some(t),
        is_historical: historical,
        is_null: value.is_none(),
        quality: quality(status).or(if status.is_good() && value.is_none() {
            // A good status without a value that fits: never claims good.
            Some(QUALITY_BAD)
        } else {
            None
        }),
        value,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_follow_the_tag_and_a_scaled_integer_is_a_double() {
        assert_eq!(datatype("u16", None), DataType::UInt16);
        assert_eq!(datatype("u16", Some(&Value::Float(12.3))), DataType::Double);
        assert_eq!(datatype("UInt64", None), DataType::UInt64);
        assert_eq!(datatype("float", None), DataType::Double);
        assert_eq!(datatype("f32", None), DataType::Float);
        assert_eq!(datatype("Float", None), DataType::Float);
        assert_eq!(datatype("f32[]", None), DataType::FloatArray);
        assert_eq!(datatype("auto", Some(&Value::UInt(1))), DataType::UInt64);
        assert_eq!(datatype("", None), DataType::String);
        assert_eq!(datatype("bool", None), DataType::Boolean);
    }

    #[test]
    fn values_are_exact_both_ways_at_the_extremes() {
        use DataType::*;
        for (t, v) in [
            (Int64, Value::Int(i64::MIN)),
            (Int64, Value::Int(i64::MAX)),
            (UInt64, Value::UInt(u64::MAX)),
            (Int16, Value::Int(-32_768)),
            (Int8, Value::Int(-5)),
            (UInt32, Value::Int(4_294_967_295)),
            (Float, Value::Float(f64::from(f32::MAX))),
            (Double, Value::Float(-f64::MAX)),
            (Boolean, Value::Bool(true)),
            (String, Value::Str("a\u{e9}b".into())),
        ] {
            let m = to_metric_value(t, &v).unwrap_or_else(|| panic!("{t:?} {v:?}"));
            assert_eq!(from_metric_value(t, &m).unwrap(), v, "{t:?}");
        }
        // Zero-extended N bits on the wire.
        assert_eq!(
            to_metric_value(Int8, &Value::Int(-5)),
            Some(MetricValue::Int(251))
        );
        assert_eq!(
            to_metric_value(Int16, &Value::Int(-1)),
            Some(MetricValue::Int(65_535))
        );
        // Tahu Java's sign extension to 32 bits reads the same.
        assert_eq!(
            from_metric_value(Int8, &MetricValue::Int(0xFFFF_FFFB)).unwrap(),
            Value::Int(-5)
        );
        // Out of range or the wrong kind: no value (a rebirth fixes the type).
        assert_eq!(to_metric_value(UInt16, &Value::Int(70_000)), None);
        assert_eq!(to_metric_value(Int64, &Value::Float(0.5)), None);
        assert_eq!(to_metric_value(Float, &Value::Float(0.1)), None);
        assert!(from_metric_value(Int64, &MetricValue::Double(1.0)).is_err());
    }

    #[test]
    fn arrays_as_the_specification_packs_them() {
        // 6.4.17's BooleanArray example: 12 values → 0c 00 00 00 34 d0.
        let bits = [
            false, false, true, true, false, true, false, false, true, true, false, true,
        ];
        let v = Value::Array(bits.iter().map(|b| Value::Bool(*b)).collect());
        assert_eq!(
            to_metric_value(DataType::BooleanArray, &v),
            Some(MetricValue::Bytes(vec![0x0c, 0, 0, 0, 0x34, 0xd0]))
        );
        let s = Value::Array(vec![Value::Str("ABC".into()), Value::Str("hello".into())]);
        assert_eq!(
            to_metric_value(DataType::StringArray, &s),
            Some(MetricValue::Bytes(b"ABC\0hello\0".to_vec()))
        );
        // Int16Array [-30000, 30000] → d0 8a 30 75 (the spec's example).
        let i = Value::Array(vec![Value::Int(-30_000), Value::Int(30_000)]);
        assert_eq!(
            to_metric_value(DataType::Int16Array, &i),
            Some(MetricValue::Bytes(vec![0xd0, 0x8a, 0x30, 0x75]))
        );
    }

    #[test]
    fn bad_statuses_are_null_with_a_quality() {
        let m = metric(
            None,
            3,
            DataType::Double,
            false,
            Some(&Value::Float(1.0)),
            Status::STALE,
            1,
            true,
        );
        assert!(m.is_null && m.value.is_none());
        assert_eq!(
            (m.quality, m.is_historical, m.name),
            (Some(500), true, None)
        );
        let m = metric(
            Some("T"),
            3,
            DataType::Double,
            true,
            Some(&Value::Float(1.0)),
            Status::GOOD,
            1,
            false,
        );
        assert_eq!((m.quality, m.value), (None, Some(MetricValue::Double(1.0))));
        assert_eq!(m.datatype, Some(DataType::Double));
        assert!(check_id("group", "a/b").is_err() && check_id("group", "Plant 1").is_ok());
        assert_eq!(device_id("line/1#"), "line_1_");
    }
}
