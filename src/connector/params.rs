//! The seed's connection strings: `connector=Class; key=value; …`.

use std::collections::BTreeMap;
use std::ops::RangeInclusive;
use std::time::Duration;

/// A connection string in the seed's form,
/// `connector=ModbusTcp; host=10.0.0.5; port=502; unit_id=1; timeout=5`,
/// split into its class and `key=value` pairs. Each connector class takes
/// the keys it knows with the typed getters, which never fail: a bad value
/// is recorded (naming the key and what it may be) and the default stands
/// in, so [`Params::finish`] reports every mistake of a string at once,
/// with every key nobody took (a misspelt key is never ignored).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Params {
    class: String,
    pairs: BTreeMap<String, String>,
    errors: Vec<String>,
}

impl Params {
    /// Splits the string. Keys are case-insensitive; a key given twice, a
    /// pair without `=`, and a missing `connector=` are errors.
    pub fn parse(text: &str) -> Result<Params, String> {
        let mut pairs = BTreeMap::new();
        for part in split_pairs(text)? {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| format!("`{part}` is not key=value"))?;
            let key = k.trim().to_ascii_lowercase();
            if key.is_empty() {
                return Err(format!("`{part}` has an empty key"));
            }
            let v = v.trim();
            // A value in quotes may hold `;` (an ODBC connection string).
            let v = match (v.chars().next(), v.chars().last()) {
                (Some(a @ ('\'' | '"')), Some(b)) if a == b && v.len() >= 2 => &v[1..v.len() - 1],
                _ => v,
            };
            if pairs.insert(key.clone(), v.to_string()).is_some() {
                return Err(format!("key `{key}` is given twice"));
            }
        }
        let class = pairs
            .remove("connector")
            .ok_or("missing key `connector` (e.g. connector=ModbusTcp)")?;
        Ok(Params {
            class,
            pairs,
            errors: Vec::new(),
        })
    }

    /// Whether the string gives `key` (not yet taken).
    pub fn has(&self, key: &str) -> bool {
        self.pairs.contains_key(key)
    }

    /// The connector class, e.g. `ModbusTcp`.
    pub fn class(&self) -> &str {
        &self.class
    }

    /// Records a mistake about `key` (a value out of range, two keys that
    /// exclude each other), reported by [`Params::finish`].
    pub fn error(&mut self, key: &str, message: impl std::fmt::Display) {
        self.errors.push(format!("key `{key}`: {message}"));
    }

    /// An optional text value.
    pub fn take(&mut self, key: &str) -> Option<String> {
        self.pairs.remove(key).filter(|v| !v.is_empty())
    }

    /// A required text value (empty, and recorded, when missing).
    pub fn required(&mut self, key: &str) -> String {
        match self.pairs.remove(key) {
            Some(v) if !v.is_empty() => v,
            _ => {
                self.errors.push(format!("missing required key `{key}`"));
                String::new()
            }
        }
    }

    /// An optional value parsed with `FromStr` (text, a float).
    pub fn parse_or<T: std::str::FromStr>(&mut self, key: &str, default: T) -> T {
        match self.pairs.remove(key) {
            None => default,
            Some(v) => v.parse().unwrap_or_else(|_| {
                self.error(
                    key,
                    format!("`{v}` is not a {}", std::any::type_name::<T>()),
                );
                default
            }),
        }
    }

    /// An optional whole number in `range` (the message names the range).
    pub fn int_or<T>(&mut self, key: &str, default: T, range: RangeInclusive<i64>) -> T
    where
        T: TryFrom<i64>,
    {
        match self.pairs.remove(key) {
            None => default,
            Some(v) => match v.trim().parse::<i64>() {
                Ok(n) if range.contains(&n) => T::try_from(n).unwrap_or(default),
                _ => {
                    self.error(
                        key,
                        format!(
                            "`{v}` is not a whole number in {}..={}",
                            range.start(),
                            range.end()
                        ),
                    );
                    default
                }
            },
        }
    }

    /// An optional boolean: true/false, yes/no, 1/0, on/off.
    pub fn bool_or(&mut self, key: &str, default: bool) -> bool {
        match self.pairs.remove(key) {
            None => default,
            Some(v) => match v.to_ascii_lowercase().as_str() {
                "true" | "yes" | "1" | "on" => true,
                "false" | "no" | "0" | "off" => false,
                _ => {
                    self.error(key, format!("`{v}` is not true or false"));
                    default
                }
            },
        }
    }

    /// An optional duration in seconds, fractions allowed (`timeout=0.5`).
    pub fn secs_or(&mut self, key: &str, default: Duration) -> Duration {
        match self.pairs.remove(key) {
            None => default,
            Some(v) => v
                .parse::<f64>()
                .ok()
                .filter(|s| s.is_finite() && *s > 0.0 && *s <= 86_400.0)
                .map(Duration::from_secs_f64)
                .unwrap_or_else(|| {
                    self.error(
                        key,
                        format!("`{v}` is not a number of seconds in (0, 86400]"),
                    );
                    default
                }),
        }
    }

    /// Every mistake recorded, then every key nobody took (listing the
    /// ones the class knows); empty when the string is right.
    pub fn finish(self, known: &[&str]) -> Vec<String> {
        let mut out = self.errors;
        for k in self.pairs.keys() {
            out.push(format!(
                "unknown key `{k}` for connector={} (known keys: {})",
                self.class,
                known.join(", ")
            ));
        }
        out
    }
}

/// Splits at `;` outside single or double quotes.
fn split_pairs(text: &str) -> Result<Vec<&str>, String> {
    let mut parts = Vec::new();
    let mut quote: Option<char> = None;
    let mut start = 0;
    for (i, c) in text.char_indices() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(c),
            (None, ';') => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if quote.is_some() {
        return Err("a quoted value is not closed".into());
    }
    parts.push(&text[start..]);
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_mistake_of_a_string_is_reported_at_once() {
        let mut p = Params::parse(
            "connector=ModbusTcp; port=70000; unit_id=x; timeout=-1; auto_open=maybe; hots=plc",
        )
        .unwrap();
        assert_eq!(p.int_or::<u16>("port", 502, 1..=65535), 502);
        assert_eq!(p.int_or::<u8>("unit_id", 1, 0..=247), 1);
        assert_eq!(
            p.secs_or("timeout", Duration::from_secs(5)),
            Duration::from_secs(5)
        );
        assert!(p.bool_or("auto_open", true));
        assert_eq!(p.required("host"), "");
        let e = p.finish(&["host", "port"]);
        assert_eq!(e.len(), 6, "{e:#?}");
        assert!(e[0].contains("`port`: `70000` is not a whole number in 1..=65535"));
        assert!(e[1].contains("`unit_id`: `x` is not a whole number in 0..=247"));
        assert!(e.iter().any(|m| m.contains("missing required key `host`")));
        assert!(e.last().unwrap().contains("unknown key `hots`"));
    }

    #[test]
    fn quoted_values_keep_their_semicolons() {
        let mut p = Params::parse("connector=Sql; odbc='Driver=X;Server=y'").unwrap();
        assert_eq!(p.take("odbc").as_deref(), Some("Driver=X;Server=y"));
        assert!(Params::parse("connector=Sql; odbc='open").is_err());
        assert!(Params::parse("host=a; host=b; connector=X").is_err());
        assert!(Params::parse("host=a").is_err());
    }
}
