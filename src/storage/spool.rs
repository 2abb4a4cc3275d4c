//! The shutdown spool: archive rows that could not be written before RTDS
//! stopped (disk full, unwritable staging directory) are saved to a plain
//! text file that the next start replays ahead of new rows.
//!
//! One row per line, tab-separated: tag name, status, time stamp, value.
//! The value is `-` (none), `b:0|1`, `i:N`, `u:N` (a u64 above i64::MAX),
//! `f:X` (Rust's shortest exact form), `s:TEXT` (with `\\`, `\t`, `\n`
//! escaped) or `a:` followed by the array's JSON text (`a:[1,2.5,"x,y"]`,
//! the archive's reversible form; spools of RTDS 0.1 wrote comma-separated
//! scalars, `a:i1,f2.5,b0`, still read). Text, so
//! an operator can read what was saved; tag names, so it survives a lost
//! live database whose tag ids it would not match.

use super::archive::Row;
use super::retention::parse_ts;
use crate::model::{Status, Value, format_ts};

/// Formats one row.
pub fn line(name: &str, row: &Row) -> String {
    let value = match &row.value {
        None => "-".to_string(),
        Some(Value::Str(s)) => format!("s:{}", escape(s)),
        Some(v @ Value::Array(_)) => format!("a:{}", crate::json::value_text(v)),
        Some(v) => {
            let s = scalar(v);
            format!("{}:{}", &s[..1], &s[1..])
        }
    };
    format!(
        "{}\t{}\t{}\t{value}\n",
        escape(name),
        row.status.0,
        format_ts(&row.ts)
    )
}

/// A scalar as `<kind letter><text>`.
fn scalar(v: &Value) -> String {
    match v {
        Value::Bool(b) => format!("b{}", u8::from(*b)),
        Value::Int(i) => format!("i{i}"),
        Value::UInt(u) => format!("u{u}"),
        Value::Float(f) => format!("f{f:?}"),
        Value::Str(s) => format!("s{}", escape(s)),
        Value::Array(_) => format!("s{}", escape(&crate::json::value_text(v))),
    }
}

fn parse_scalar(kind: &str, text: &str) -> Option<Value> {
    Some(match kind {
        "b" => Value::Bool(text == "1"),
        "i" => Value::Int(text.parse().ok()?),
        "u" => Value::from_u64(text.parse().ok()?),
        "f" => Value::Float(text.parse().ok()?),
        "s" => Value::Str(unescape(text)),
        _ => return None,
    })
}

/// Parses one line back: (tag name, row).
pub fn parse(line: &str) -> Result<(String, Row), String> {
    let mut it = line.splitn(4, '\t');
    let (Some(name), Some(status), Some(ts), Some(value)) =
        (it.next(), it.next(), it.next(), it.next())
    else {
        return Err("expected 4 tab-separated fields".into());
    };
    let status = status
        .parse::<u16>()
        .map_err(|_| format!("bad status `{status}`"))?;
    let ts = parse_ts(ts)?;
    let bad = || format!("bad value `{value}`");
    let value = match value.split_once(':') {
        None if value == "-" => None,
        Some(("a", v)) if v.starts_with('[') => {
            Some(crate::json::parse_value_text(v).map_err(|_| bad())?)
        }
        Some(("a", "")) => Some(Value::Array(Vec::new())),
        Some(("a", v)) => Some(Value::Array(
            v.split(',')
                .map(|x| {
                    let (k, t) = x.split_at_checked(1).ok_or_else(bad)?;
                    parse_scalar(k, t).ok_or_else(bad)
                })
                .collect::<Result<_, _>>()?,
        )),
        Some((k, v)) => Some(parse_scalar(k, v).ok_or_else(bad)?),
        None => return Err(bad()),
    };
    Ok((
        unescape(name),
        Row {
            value,
            status: Status(status),
            ts,
        },
    ))
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('\t', "\\t")
        .replace('\n', "\\n")
        .replace('\r', "\\r")
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('t') => out.push('\t'),
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};

    #[test]
    fn every_kind_of_value_round_trips_exactly() {
        let ts = Utc.timestamp_millis_opt(1_800_000_000_123).unwrap();
        let values = [
            None,
            Some(Value::Bool(true)),
            Some(Value::Bool(false)),
            Some(Value::Int(i64::MIN)),
            Some(Value::Int(i64::MAX)),
            Some(Value::Float(0.1 + 0.2)),
            Some(Value::Float(f64::MIN_POSITIVE)),
            Some(Value::Float(-1e308)),
            Some(Value::Str("tab\there\nnew \\ line: ok".into())),
            Some(Value::Str(String::new())),
            Some(Value::from_u64(u64::MAX)),
            Some(Value::Array(vec![
                Value::Float(1.5),
                Value::Int(i64::MAX),
                Value::from_u64(u64::MAX),
                Value::Bool(true),
                Value::Float(1e-300),
            ])),
            Some(Value::Array(Vec::new())),
            Some(Value::Array(vec![Value::Str(String::new())])),
            Some(Value::Array(vec![
                Value::Str("a,b".into()),
                Value::Str("tab\there\nnew".into()),
            ])),
        ];
        for v in values {
            let row = Row {
                value: v,
                status: Status(102),
                ts,
            };
            let text = line("Line\t1.Flow", &row);
            assert_eq!(text.matches('\n').count(), 1, "{text:?}");
            let (name, back) = parse(text.trim_end_matches('\n')).unwrap();
            assert_eq!(name, "Line\t1.Flow");
            assert_eq!(back, row);
        }
    }

    #[test]
    fn spools_of_rtds_0_1_still_replay() {
        let (_, row) = parse("a\t0\t2026-11-24T06:00:00.000Z\ta:i1,f2.5,b0").unwrap();
        assert_eq!(
            row.value,
            Some(Value::Array(vec![
                Value::Int(1),
                Value::Float(2.5),
                Value::Bool(false)
            ]))
        );
    }

    #[test]
    fn damaged_lines_are_errors() {
        assert!(parse("a\t0\t2026-11-24T06:00:00.000Z").is_err());
        assert!(parse("a\tx\t2026-11-24T06:00:00.000Z\ti:1").is_err());
        assert!(parse("a\t0\tnoon\ti:1").is_err());
        assert!(parse("a\t0\t2026-11-24T06:00:00.000Z\ti:1.5").is_err());
        assert!(parse("a\t0\t2026-11-24T06:00:00.000Z\tz:1").is_err());
    }
}
