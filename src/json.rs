//! The JSON RTDS reads and writes: the HTTP API, a value's text in the
//! archive (arrays in `current` and in segments), and soon MQTT payloads.
//! Integers are read and written exactly (a u64 above i64::MAX too), never
//! through a float; a JSON crate would add size for a few functions.
//!
//! Two flavours of writing a value, one of reading it:
//! - [`value`]: the API's, standard JSON (NaN and infinities as `null`,
//!   which a browser's `JSON.parse` accepts).
//! - [`value_text`]: the archive's, reversible: floats in their shortest
//!   round-trip form always with a `.` or an exponent (`1.0`, `1e300`), so
//!   a reader tells them from integers, and NaN and the infinities as
//!   `NaN`, `Infinity`, `-Infinity` (as Python's `json` writes and reads
//!   them). [`parse_value_text`] reads it back to the same value.

use crate::model::Value;

/// `s` as a JSON string literal.
pub fn string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    push_string(&mut out, s);
    out
}

fn push_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            // `<` too, so a tag name can never close a <script> element.
            c if (c as u32) < 0x20 || c == '<' => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// A finite float in its shortest round-trip form, always with a `.` or
/// an exponent (Rust's `Debug`: `2.0`, `0.1`, `1e300`, `1e-7`).
fn push_float(out: &mut String, f: f64) {
    use std::fmt::Write;
    let _ = write!(out, "{f:?}");
}

/// A value as standard JSON, for the API: numbers as numbers (NaN and
/// infinities as null), text as a string, arrays as arrays.
pub fn value(v: &Value) -> String {
    let mut out = String::new();
    push_value(&mut out, v, false);
    out
}

/// A value as reversible JSON text, for the archive (see the module
/// comment): what [`parse_value_text`] reads back to the same value.
pub fn value_text(v: &Value) -> String {
    let mut out = String::new();
    push_value(&mut out, v, true);
    out
}

fn push_value(out: &mut String, v: &Value, exact: bool) {
    use std::fmt::Write;
    match v {
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Int(i) => {
            let _ = write!(out, "{i}");
        }
        Value::UInt(u) => {
            let _ = write!(out, "{u}");
        }
        Value::Float(f) if f.is_finite() => push_float(out, *f),
        Value::Float(_) if !exact => out.push_str("null"),
        Value::Float(f) if f.is_nan() => out.push_str("NaN"),
        Value::Float(f) if *f > 0.0 => out.push_str("Infinity"),
        Value::Float(_) => out.push_str("-Infinity"),
        Value::Str(s) => push_string(out, s),
        Value::Array(items) => {
            out.push('[');
            for (i, x) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                push_value(out, x, exact);
            }
            out.push(']');
        }
    }
}

/// Reads a value written by [`value_text`]: scalars, or a flat array of
/// them. Integers stay integers, numbers with a `.` or an exponent are
/// floats, `NaN`/`Infinity`/`-Infinity` are accepted.
pub fn parse_value_text(text: &str) -> Result<Value, String> {
    let mut p = Parser {
        s: text.as_bytes(),
        i: 0,
        specials: true,
    };
    let v = p.value(0)?;
    p.ws();
    if p.i != p.s.len() {
        return Err("trailing characters after the value".into());
    }
    Ok(v)
}

/// Reads `{"value": X}` (or a bare X) as a value: integers exact, strings,
/// booleans, arrays of those. Anything else is refused with the reason.
pub fn parse_write(body: &str) -> Result<Value, String> {
    let mut p = Parser {
        s: body.as_bytes(),
        i: 0,
        specials: false,
    };
    p.ws();
    let v = if p.peek() == Some(b'{') {
        p.i += 1;
        p.ws();
        let key = p.string()?;
        if key != "value" {
            return Err(format!("expected {{\"value\": …}}, found key `{key}`"));
        }
        p.ws();
        p.expect(b':')?;
        let v = p.value(0)?;
        p.ws();
        p.expect(b'}')?;
        v
    } else {
        p.value(0)?
    };
    p.ws();
    if p.i != p.s.len() {
        return Err("trailing characters after the value".into());
    }
    Ok(v)
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
    /// Whether `NaN`, `Infinity` and `-Infinity` are numbers (the
    /// archive's text), or refused (a write's body).
    specials: bool,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\r' | b'\n')) {
            self.i += 1;
        }
    }

    fn expect(&mut self, c: u8) -> Result<(), String> {
        if self.peek() == Some(c) {
            self.i += 1;
            Ok(())
        } else {
            Err(format!("expected `{}` at byte {}", c as char, self.i))
        }
    }

    fn value(&mut self, depth: usize) -> Result<Value, String> {
        self.ws();
        if self.specials
            && let Some((len, f)) = self.special()
        {
            self.i += len;
            return Ok(Value::Float(f));
        }
        match self.peek() {
            Some(b'"') => self.string().map(Value::Str),
            Some(b't') if self.s[self.i..].starts_with(b"true") => {
                self.i += 4;
                Ok(Value::Bool(true))
            }
            Some(b'f') if self.s[self.i..].starts_with(b"false") => {
                self.i += 5;
                Ok(Value::Bool(false))
            }
            Some(b'[') if depth == 0 => {
                self.i += 1;
                let mut items = Vec::new();
                self.ws();
                if self.peek() == Some(b']') {
                    self.i += 1;
                    return Ok(Value::Array(items));
                }
                loop {
                    items.push(self.value(depth + 1)?);
                    self.ws();
                    match self.peek() {
                        Some(b',') => self.i += 1,
                        Some(b']') => {
                            self.i += 1;
                            return Ok(Value::Array(items));
                        }
                        _ => return Err(format!("expected `,` or `]` at byte {}", self.i)),
                    }
                }
            }
            Some(b'-' | b'0'..=b'9') => self.number(),
            _ => Err(format!(
                "expected a number, string, true, false or a flat array at byte {}",
                self.i
            )),
        }
    }

    /// The special float at the cursor, if any, and its length.
    fn special(&self) -> Option<(usize, f64)> {
        let rest = &self.s[self.i..];
        [
            (&b"NaN"[..], f64::NAN),
            (b"Infinity", f64::INFINITY),
            (b"-Infinity", f64::NEG_INFINITY),
        ]
        .into_iter()
        .find(|(w, _)| rest.starts_with(w))
        .map(|(w, f)| (w.len(), f))
    }

    fn number(&mut self) -> Result<Value, String> {
        let start = self.i;
        while matches!(
            self.peek(),
            Some(b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
        ) {
            self.i += 1;
        }
        let text = std::str::from_utf8(&self.s[start..self.i]).unwrap_or_default();
        // Rust's parsers take a leading `+`; JSON does not.
        if text.starts_with('+') {
            return Err(format!("`{text}` is not a JSON number"));
        }
        if let Ok(i) = text.parse::<i64>() {
            return Ok(Value::Int(i));
        }
        if let Ok(u) = text.parse::<u64>() {
            return Ok(Value::from_u64(u));
        }
        if text.bytes().all(|b| b.is_ascii_digit() || b == b'-') {
            return Err(format!("{text} is beyond 64-bit integers"));
        }
        text.parse::<f64>()
            .ok()
            .filter(|f| f.is_finite())
            .map(Value::Float)
            .ok_or_else(|| format!("`{text}` is not a number"))
    }

    fn string(&mut self) -> Result<String, String> {
        self.expect(b'"')?;
        let mut out = Vec::new();
        loop {
            let c = self.peek().ok_or("unterminated string")?;
            self.i += 1;
            match c {
                b'"' => break,
                b'\\' => {
                    let e = self.peek().ok_or("unterminated escape")?;
                    self.i += 1;
                    match e {
                        b'"' | b'\\' | b'/' => out.push(e),
                        b'n' => out.push(b'\n'),
                        b'r' => out.push(b'\r'),
                        b't' => out.push(b'\t'),
                        b'b' => out.push(8),
                        b'f' => out.push(12),
                        b'u' => {
                            let hex = self
                                .s
                                .get(self.i..self.i + 4)
                                .and_then(|h| std::str::from_utf8(h).ok())
                                .and_then(|h| u32::from_str_radix(h, 16).ok())
                                .ok_or("malformed \\u escape")?;
                            self.i += 4;
                            let c = char::from_u32(hex).ok_or("\\u escape is not a character")?;
                            let mut buf = [0u8; 4];
                            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                        }
                        _ => return Err("unknown escape".into()),
                    }
                }
                c if c < 0x20 => return Err("control character in a string".into()),
                c => out.push(c),
            }
        }
        String::from_utf8(out).map_err(|_| "string is not UTF-8".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_are_read_exactly_at_the_edges() {
        assert_eq!(
            parse_write("{\"value\": -9223372036854775808}"),
            Ok(Value::Int(i64::MIN))
        );
        assert_eq!(
            parse_write("18446744073709551615"),
            Ok(Value::UInt(u64::MAX))
        );
        assert_eq!(
            parse_write("9007199254740993"),
            Ok(Value::Int(9_007_199_254_740_993))
        );
        assert!(parse_write("18446744073709551616").is_err());
        assert_eq!(parse_write(" 1.5 "), Ok(Value::Float(1.5)));
        assert!(parse_write("1e999").is_err());
    }

    #[test]
    fn strings_bools_arrays_and_refusals() {
        assert_eq!(
            parse_write("{\"value\":\"a\\\"b\\u00e9\"}"),
            Ok(Value::Str("a\"bé".into()))
        );
        assert_eq!(parse_write("true"), Ok(Value::Bool(true)));
        assert_eq!(
            parse_write("[1, -2]"),
            Ok(Value::Array(vec![Value::Int(1), Value::Int(-2)]))
        );
        assert!(parse_write("[[1]]").is_err());
        assert!(parse_write("{\"v\": 1}").is_err());
        assert!(parse_write("{\"value\": 1} x").is_err());
        assert!(parse_write("null").is_err());
    }

    #[test]
    fn archive_text_reads_back_to_the_same_value() {
        let cases = [
            Value::Array(vec![Value::Str("a,b".into()), Value::Str("c".into())]),
            Value::Array(vec![
                Value::Str("a".into()),
                Value::Str("b".into()),
                Value::Str("c".into()),
            ]),
            Value::Array(vec![Value::Str(String::new())]),
            Value::Array(vec![]),
            Value::Array(vec![Value::Str("q\"u\\o\nte\u{1}<é🙂".into())]),
            Value::Array(vec![
                Value::Float(1e300),
                Value::Float(-0.0),
                Value::Float(0.1),
                Value::Float(1.0),
                Value::Float(f64::MIN_POSITIVE),
                Value::Float(5e-324),
                Value::Float(f64::MAX),
                Value::Float(f64::INFINITY),
                Value::Float(f64::NEG_INFINITY),
            ]),
            Value::Array(vec![
                Value::Int(i64::MIN),
                Value::Int(0),
                Value::UInt(u64::MAX),
                Value::Bool(true),
                Value::Bool(false),
            ]),
            Value::Float(1e300),
            Value::Int(-1),
            Value::Str("[1,2]".into()),
        ];
        for v in cases {
            let text = value_text(&v);
            assert_eq!(parse_value_text(&text), Ok(v.clone()), "{text}");
        }
        assert_eq!(
            value_text(&Value::Array(vec![Value::Float(1e300), Value::Float(2.0)])),
            "[1e300,2.0]"
        );
        assert_eq!(
            value_text(&Value::Array(vec![Value::Str("a,b".into())])),
            "[\"a,b\"]"
        );
        let nan = parse_value_text("[NaN]").unwrap();
        assert!(matches!(&nan, Value::Array(a) if matches!(a[0], Value::Float(f) if f.is_nan())));
        assert_eq!(value_text(&nan), "[NaN]");
        // Standard JSON in the API; a write's body takes no NaN and no `+`.
        assert_eq!(value(&Value::Float(f64::INFINITY)), "null");
        assert!(parse_write("NaN").is_err());
        assert!(parse_write("+5").is_err());
        assert!(parse_value_text("[1] 2").is_err());
        assert!(parse_value_text("[[1]]").is_err());
    }

    #[test]
    fn writing() {
        assert_eq!(string("a\"<\n"), "\"a\\\"\\u003c\\n\"");
        assert_eq!(value(&Value::Float(2.0)), "2.0");
        assert_eq!(value(&Value::Float(f64::NAN)), "null");
        assert_eq!(value(&Value::UInt(u64::MAX)), "18446744073709551615");
    }
}
