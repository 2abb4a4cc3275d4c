//! A value as it is stored where a reader keeps it (`current`, segments,
//! `archived_last`), and back. The Historian's contract (segment schema
//! version 2) in code; `historian/rtds_reader.py` is its independent
//! reader.
//!
//! - bools and integers: SQLite integers, exact (a bool is 0 or 1);
//! - a u64 above i64::MAX: its decimal text (no SQLite integer holds it);
//! - floats: SQLite reals (infinities included; NaN is never stored: a
//!   device's NaN is a status, see `Status::NOT_A_NUMBER`);
//! - text: SQLite text;
//! - arrays: JSON text (`crate::json::value_text`): strings quoted and
//!   escaped, floats in shortest round-trip form with a `.` or an exponent.
//!
//! Reading back needs the tag's type (the `type` column beside the value),
//! because a text may be a string, a u64 or an array.

use crate::model::Value;
use rusqlite::types::Value as SqlValue;

/// Converts a value to SQLite, integers exact.
pub fn to_sql(v: &Value) -> SqlValue {
    match v {
        Value::Bool(b) => SqlValue::Integer(i64::from(*b)),
        Value::Int(i) => SqlValue::Integer(*i),
        Value::UInt(u) => SqlValue::Text(u.to_string()),
        Value::Float(f) => SqlValue::Real(*f),
        Value::Str(s) => SqlValue::Text(s.clone()),
        Value::Array(_) => SqlValue::Text(crate::json::value_text(v)),
    }
}

/// Whether tag type `type_name` holds arrays: `f32[]`, `Int16[]`, or a
/// calculated tag's `array`.
pub fn is_array_type(type_name: &str) -> bool {
    type_name.ends_with("[]") || type_name == "array"
}

fn is_bool_type(type_name: &str) -> bool {
    matches!(type_name.to_ascii_lowercase().as_str(), "bool" | "boolean")
}

/// Reads a stored value back, given its tag's type: the inverse of
/// [`to_sql`] for every value that type holds. A text that is not what
/// the type says (a calculated tag whose kind changed) stays text.
pub fn from_sql(v: SqlValue, type_name: &str) -> Option<Value> {
    match v {
        SqlValue::Null | SqlValue::Blob(_) => None,
        SqlValue::Integer(i) if is_bool_type(type_name) => Some(Value::Bool(i != 0)),
        SqlValue::Integer(i) => Some(Value::Int(i)),
        SqlValue::Real(f) => Some(Value::Float(f)),
        SqlValue::Text(s) if is_array_type(type_name) && s.starts_with('[') => {
            Some(crate::json::parse_value_text(&s).unwrap_or(Value::Str(s)))
        }
        SqlValue::Text(s)
            if !s.is_empty()
                && s.bytes().all(|b| b.is_ascii_digit())
                && matches!(
                    type_name.to_ascii_lowercase().as_str(),
                    "u64" | "uint64" | "int"
                ) =>
        {
            match s.parse::<u64>() {
                Ok(u) => Some(Value::from_u64(u)),
                Err(_) => Some(Value::Str(s)),
            }
        }
        SqlValue::Text(s) => Some(Value::Str(s)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_of_value_reads_back_with_its_type() {
        let cases: Vec<(Value, &str)> = vec![
            (Value::Bool(true), "bool"),
            (Value::Bool(false), "Boolean"),
            (Value::Int(i64::MIN), "i64"),
            (Value::Int(i64::MAX), "u64"),
            (Value::UInt(u64::MAX), "u64"),
            (Value::UInt(u64::MAX), "UInt64"),
            (Value::UInt(9_223_372_036_854_775_808), "int"),
            (Value::Float(1e300), "f64"),
            (Value::Float(f64::NEG_INFINITY), "Double"),
            (Value::Str("18446744073709551615".into()), "string"),
            (Value::Str("[1,2]".into()), "String"),
            (Value::Str(String::new()), "string"),
            (
                Value::Array(vec![Value::Str("a,b".into()), Value::Str("c".into())]),
                "String[]",
            ),
            (Value::Array(vec![Value::Str(String::new())]), "String[]"),
            (Value::Array(vec![]), "String[]"),
            (
                Value::Array(vec![Value::Float(1e300), Value::Float(2.0)]),
                "f64[]",
            ),
            (
                Value::Array(vec![Value::Int(1), Value::UInt(u64::MAX)]),
                "array",
            ),
        ];
        for (v, ty) in cases {
            assert_eq!(from_sql(to_sql(&v), ty), Some(v.clone()), "{v:?} as {ty}");
        }
        // The two values the old encoding could not tell apart.
        assert_ne!(
            to_sql(&Value::Array(vec![
                Value::Str("a,b".into()),
                Value::Str("c".into())
            ])),
            to_sql(&Value::Array(vec![
                Value::Str("a".into()),
                Value::Str("b".into()),
                Value::Str("c".into())
            ]))
        );
        assert_ne!(
            to_sql(&Value::Array(vec![Value::Str(String::new())])),
            to_sql(&Value::Array(vec![]))
        );
        assert_eq!(from_sql(SqlValue::Null, "u16"), None);
    }
}
