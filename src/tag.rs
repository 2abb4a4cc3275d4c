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
