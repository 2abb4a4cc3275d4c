//! The seed's connection strings: `connector=Class; key=value; …`.

use std::collections::BTreeMap;
use std::time::Duration;

/// A connection string in the seed's form,
/// `connector=ModbusTcp; host=10.0.0.5; port=502; unit_id=1; timeout=5`,
/// split into its class and `key=value` pairs. Each connector class takes
/// the keys it knows with the typed getters; [`Params::finish`] then
/// refuses whatever is left, so a misspelt key is never ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Params {
    class: String,
    pairs: BTreeMap<String, String>,
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
        Ok(Params { class, pairs })
    }

    /// The connector class, e.g. `ModbusTcp`.
    pub fn class(&self) -> &str {
        &self.class
    }

    /// An optional text value.
    pub fn take(&mut self, key: &str) -> Option<String> {
        self.pairs.remove(key).filter(|v| !v.is_empty())
    }

    /// A required text value.
    pub fn required(&mut self, key: &str) -> Result<String, String> {
        match self.pairs.remove(key) {
            Some(v) if !v.is_empty() => Ok(v),
            _ => Err(format!("missing required key `{key}`")),
        }
    }

    /// An optional value parsed with `FromStr`.
    pub fn parse_or<T: std::str::FromStr>(&mut self, key: &str, default: T) -> Result<T, String> {
        match self.pairs.remove(key) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|_| {
                format!(
                    "key `{key}`: `{v}` is not a valid {}",
                    short_type_name::<T>()
                )
            }),
        }
    }

    /// An optional boolean: true/false, yes/no, 1/0, on/off.
    pub fn bool_or(&mut self, key: &str, default: bool) -> Result<bool, String> {
        match self.pairs.remove(key).map(|v| v.to_ascii_lowercase()) {
            None => Ok(default),
            Some(v) => match v.as_str() {
                "true" | "yes" | "1" | "on" => Ok(true),
                "false" | "no" | "0" | "off" => Ok(false),
                _ => Err(format!("key `{key}`: `{v}` is not true or false")),
            },
        }
    }

    /// An optional duration in seconds, fractions allowed (`timeout=0.5`).
    pub fn secs_or(&mut self, key: &str, default: Duration) -> Result<Duration, String> {
        match self.pairs.remove(key) {
            None => Ok(default),
            Some(v) => v
                .parse::<f64>()
                .ok()
                .filter(|s| s.is_finite() && *s > 0.0 && *s <= 86_400.0)
                .map(Duration::from_secs_f64)
                .ok_or_else(|| {
                    format!("key `{key}`: `{v}` is not a number of seconds in (0, 86400]")
                }),
        }
    }

    /// Refuses keys nobody took, listing the ones the class knows.
    pub fn finish(self, known: &[&str]) -> Result<(), String> {
        match self.pairs.keys().next() {
            None => Ok(()),
            Some(k) => Err(format!(
                "unknown key `{k}` for connector={} (known keys: {})",
                self.class,
                known.join(", ")
            )),
        }
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

fn short_type_name<T>() -> &'static str {
    let full = std::any::type_name::<T>();
    match full {
        "u8" | "u16" | "u32" | "u64" | "usize" => "non-negative whole number in range",
        _ => full.rsplit("::").next().unwrap_or(full),
    }
}
