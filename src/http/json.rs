//! The little JSON the API needs: writing strings and values, and reading
//! a write's body (`{"value": …}`). Integers are read exactly (a u64 above
//! i64::MAX too), never through a float; a JSON crate would add size for
//! two functions.

use crate::model::Value;

/// `s` as a JSON string literal.
pub fn string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
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
    out
}

/// A value as JSON: numbers as numbers (NaN and infinities as null), text
/// as a string, arrays as arrays.
pub fn value(v: &Value) -> String {
    match v {
        Value::Bool(b) => b.to_string(),
        Value::Int(i) => i.to_string(),
        Value::UInt(u) => u.to_string(),
        Value::Float(f) if f.is_finite() => {
            let s = format!("{f}");
            if s.contains(['.', 'e', 'E']) {
                s
            } else {
                format!("{s}.0")
            }
        }
        Value::Float(_) => "null".into(),
        Value::Str(s) => string(s),
        Value::Array(items) => {
            let inner: Vec<String> = items.iter().map(value).collect();
            format!("[{}]", inner.join(","))
        }
    }
}

/// Reads `{"value": X}` (or a bare X) as a value: integers exact, strings,
/// booleans, arrays of those. Anything else is refused with the reason.
pub fn parse_write(body: &str) -> Result<Value, String> {
    let mut p = Parser {
        s: body.as_bytes(),
        i: 0,
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

    fn number(&mut self) -> Result<Value, String> {
        let start = self.i;
        while matches!(
            self.peek(),
            Some(b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
        ) {
            self.i += 1;
        }
        let text = std::str::from_utf8(&self.s[start..self.i]).unwrap_or_default();
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
    fn writing() {
        assert_eq!(string("a\"<\n"), "\"a\\\"\\u003c\\n\"");
        assert_eq!(value(&Value::Float(2.0)), "2.0");
        assert_eq!(value(&Value::Float(f64::NAN)), "null");
        assert_eq!(value(&Value::UInt(u64::MAX)), "18446744073709551615");
    }
}
