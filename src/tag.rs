//! A tag as the configuration writes it, shared by the config loader (which
//! reads it from RON or a tag file) and the connectors (which give `address`,
//! `type` and `order` their meaning), so neither depends on the other.

use serde::Deserialize;

/// One tag of a connector, as written in the config. The meaning of
/// `address`, `type` and `order` belongs to the connector class.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TagConfig {
    /// Unique name across the whole server; scripts and the database use it.
    /// One allocation shared by the loop's table, the connector and
    /// storage: a name is held in half a dozen places.
    pub name: std::sync::Arc<str>,
    /// Where the value lives in the source (e.g. `hr:0` or `40001`).
    pub address: String,
    /// Data type; the connector's default when absent.
    #[serde(rename = "type", default)]
    pub data_type: Option<String>,
    /// Array length or string register count.
    #[serde(default)]
    pub count: Option<u16>,
    /// Byte/word order; the connector's default when absent.
    #[serde(default)]
    pub order: Option<String>,
    /// Engineering value = raw × scale + offset.
    #[serde(default = "default_one")]
    pub scale: f64,
    /// See `scale`.
    #[serde(default)]
    pub offset: f64,
    /// Whether scripts may write it to the source.
    #[serde(default)]
    pub writable: bool,
    /// Free text for the Historian's tag list.
    #[serde(default)]
    pub description: String,
    /// Engineering unit for the Historian's tag list.
    #[serde(default)]
    pub unit: String,
    /// Archive deadband in engineering units (see [`ArchiveSettings`]).
    #[serde(default)]
    pub deadband: Option<f64>,
    /// Archive deadband in percent of `span`.
    #[serde(default)]
    pub deadband_pct: Option<f64>,
    /// Engineering range for `deadband_pct`.
    #[serde(default)]
    pub span: Option<(f64, f64)>,
    /// Archive heartbeat in seconds (0 = off).
    #[serde(default)]
    pub heartbeat_s: Option<f64>,
    /// Archive the held previous sample on a deadband exception.
    #[serde(default)]
    pub archive_prev: Option<bool>,
}

fn default_one() -> f64 {
    1.0
}

/// The addresses of a connector's tags as written, in one buffer. This is
/// what the status page still needs once the parsed tag list is released
/// (once the configuration releases its parsed tags): 10,000 addresses as
/// separate strings cost about 48 bytes each, here about 10.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Addresses {
    text: String,
    /// End of each address in `text`.
    ends: Vec<u32>,
}

impl Addresses {
    /// The addresses of `tags`, in order.
    pub fn of(tags: &[TagConfig]) -> Addresses {
        let mut text = String::with_capacity(tags.iter().map(|t| t.address.len()).sum());
        let mut ends = Vec::with_capacity(tags.len());
        for t in tags {
            text.push_str(&t.address);
            // A config file is far below 4 GiB: its addresses fit in u32.
            ends.push(u32::try_from(text.len()).unwrap_or(u32::MAX));
        }
        Addresses { text, ends }
    }

    /// The address of tag `i` (empty past the end).
    pub fn get(&self, i: usize) -> &str {
        let Some(&end) = self.ends.get(i) else {
            return "";
        };
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        self.text
            .get(start as usize..end as usize)
            .unwrap_or_default()
    }

    /// Number of tags.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether there are no tags.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tag(address: &str) -> TagConfig {
        ron::from_str(&format!("(name: \"t\", address: \"{address}\")")).unwrap()
    }

    #[test]
    fn addresses_come_back_as_written() {
        let list = Addresses::of(&[tag("hr:0"), tag(""), tag("ns=2;s=Ä.Temp"), tag("40001")]);
        assert_eq!(list.len(), 4);
        let got: Vec<&str> = (0..4).map(|i| list.get(i)).collect();
        assert_eq!(got, ["hr:0", "", "ns=2;s=Ä.Temp", "40001"]);
        assert_eq!(list.get(4), "");
        assert!(Addresses::of(&[]).is_empty());
    }
}
