//! Tags, values, status codes and time stamps: the plain data every part of
//! RTDS exchanges. Nothing here does I/O, so every other module can depend on
//! it and every thread can send it by value.

use chrono::{DateTime, NaiveDateTime, SecondsFormat, Utc};
use std::fmt;
use std::sync::Arc;

/// The moment a value was read from its source (or set by a script), in UTC.
///
/// UTC everywhere so that a gateway's time zone or a daylight-saving switch
/// can never reorder archived samples.
pub type Timestamp = DateTime<Utc>;

/// Formats a time stamp the way it is stored in SQLite:
/// `2026-11-24T06:10:50.123Z`. Fixed width, so text order is time order, and
/// SQLite's own date functions (`julianday`, `strftime`) accept it.
pub fn format_ts(ts: &Timestamp) -> String {
    ts.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Parses a time stamp as a Historian or an operator writes it: RFC 3339
/// (`2026-11-24T06:00:00Z`, `…+02:00`, with or without fractions) or
/// `YYYY-MM-DD HH:MM:SS[.fff]` taken as UTC.
pub fn parse_ts(text: &str) -> Result<Timestamp, String> {
    let text = text.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.to_utc());
    }
    for fmt in [
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M",
    ] {
        if let Ok(t) = NaiveDateTime::parse_from_str(text, fmt) {
            return Ok(t.and_utc());
        }
    }
    Err(format!(
        "`{}` is not a time stamp (expected e.g. 2026-11-24T06:00:00Z or 2026-11-24 06:00:00 UTC)",
        crate::model::short(text)
    ))
}

/// `text` cut to 120 characters for a message (an ack file, a log line).
pub fn short(text: &str) -> String {
    match text.char_indices().nth(120) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_string(),
    }
}

/// A tag's value. Integers are kept apart from floats so that a counter read
/// as `u32` arrives in SQLite as an exact integer, not a rounded double.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A coil, a discrete input or a bit inside a register.
    Bool(bool),
    /// Any integer type a device delivers (u16 … i64, and u64 up to
    /// `i64::MAX`).
    Int(i64),
    /// A u64 above `i64::MAX` (only those: build with [`Value::from_u64`]).
    /// SQLite has no such integer, so it is stored as its exact decimal text.
    UInt(u64),
    /// f32 and f64 registers, and scaled values.
    Float(f64),
    /// Text: a string held in registers, or a calculated message.
    Str(String),
    /// A block of values read in one go, for scripts to unpack into tags.
    /// Elements are scalars (`Bool`, `Int`, `UInt`, `Float`), each exact.
    Array(Vec<Value>),
}

impl Value {
    /// Makes this value a copy of `other`: scalars copied in place (the
    /// loop does this for every sample), text and arrays cloned.
    #[inline(always)]
    pub fn set_from(&mut self, other: &Value) {
        match (&mut *self, other) {
            (Value::Float(a), Value::Float(b)) => *a = *b,
            (Value::Int(a), Value::Int(b)) => *a = *b,
            (Value::Bool(a), Value::Bool(b)) => *a = *b,
            (Value::UInt(a), Value::UInt(b)) => *a = *b,
            _ => self.clone_from(other),
        }
    }

    /// `self == other`, the scalar cases inline: storage compares every
    /// sample with the tag's previous one.
    #[inline(always)]
    pub fn same_as(&self, other: &Value) -> bool {
        match (self, other) {
            (Value::Int(a), Value::Int(b)) => a == b,
            (Value::Float(a), Value::Float(b)) => a == b,
            _ => self == other,
        }
    }

    /// A u64 as `Int` when it fits, else `UInt`: one representation per
    /// number, so equal values compare equal.
    pub fn from_u64(v: u64) -> Value {
        i64::try_from(v).map_or(Value::UInt(v), Value::Int)
    }

    /// The value as a number, for deadbands and scripts; `None` for text.
    /// Lossy above 2^53: never use it on the way to a device or to SQLite.
    #[inline]
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Bool(b) => Some(if *b { 1.0 } else { 0.0 }),
            Value::Int(i) => Some(*i as f64),
            Value::UInt(u) => Some(*u as f64),
            Value::Float(f) => Some(*f),
            Value::Str(_) | Value::Array(_) => None,
        }
    }

    /// Name of the variant as stored in the `tags.type` column when a tag has
    /// no device type (calculated tags).
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Bool(_) => "bool",
            Value::Int(_) | Value::UInt(_) => "int",
            Value::Float(_) => "float",
            Value::Str(_) => "string",
            Value::Array(_) => "array",
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Bool(b) => write!(f, "{b}"),
            Value::Int(i) => write!(f, "{i}"),
            Value::UInt(u) => write!(f, "{u}"),
            Value::Float(x) => write!(f, "{x}"),
            Value::Str(s) => write!(f, "{s}"),
            Value::Array(a) => {
                f.write_str("[")?;
                for (i, x) in a.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{x}")?;
                }
                f.write_str("]")
            }
        }
    }
}

/// A tag's quality. 0 is good; every other code says *why* a value cannot be
/// trusted, so an operator can tell a cable fault from a wrong address.
///
/// | code | meaning |
/// |------|---------|
/// | 0 | good |
/// | 1 | not connected: connection refused, reset or closed |
/// | 2 | timeout: the device did not answer in time |
/// | 3 | bad config: the tag cannot be read as configured |
/// | 4 | script error: the script that computes the tag failed |
/// | 5 | stale: the connector has delivered nothing for too long |
/// | 6 | no data yet: the tag has never been read since start |
/// | 7 | protocol error: the device's reply was malformed |
/// | 8 | null: the database returned NULL |
/// | 9 | type mismatch: the value cannot be read as the tag's type |
/// | 10 | missing: the source returned no row or column for the tag |
/// | 11 | query error: the statement reading the tag failed |
/// | 12 | removed: the tag is no longer configured (its final archive row) |
/// | 13 | not a number: the source delivered NaN (no value; the last one is kept) |
/// | 16384 and up | an OPC UA Uncertain (0x4000…) or Bad (0x8000…) code, shifted right 16 bits |
/// | 100 + N | device exception N (102 = illegal data address) |
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Status(pub u16);

impl Status {
    /// The value is fresh and trustworthy.
    pub const GOOD: Status = Status(0);
    /// The connector could not reach the device.
    pub const NOT_CONNECTED: Status = Status(1);
    /// The device did not answer within the connector's timeout.
    pub const TIMEOUT: Status = Status(2);
    /// The tag's configuration cannot work (e.g. address out of range).
    pub const BAD_CONFIG: Status = Status(3);
    /// The script computing this tag failed in its last run.
    pub const SCRIPT_ERROR: Status = Status(4);
    /// The connector has not delivered a value for far longer than its interval.
    pub const STALE: Status = Status(5);
    /// No value has been read since start.
    pub const NO_DATA: Status = Status(6);
    /// The device answered with something that is not valid Modbus.
    pub const PROTOCOL_ERROR: Status = Status(7);
    /// A database returned NULL for the tag.
    pub const NULL_VALUE: Status = Status(8);
    /// The value cannot be converted to the tag's type.
    pub const TYPE_MISMATCH: Status = Status(9);
    /// The source returned no row (or column) for the tag.
    pub const MISSING: Status = Status(10);
    /// The query that reads the tag failed.
    pub const QUERY_ERROR: Status = Status(11);
    /// The tag was removed from the configuration (its last archive row).
    pub const REMOVED: Status = Status(12);
    /// The source delivered NaN: not a measurement (a sensor fault, an
    /// uninitialised register). SQLite cannot store NaN, and NULL with a
    /// good status would say "good, no value": a status says what it is.
    pub const NOT_A_NUMBER: Status = Status(13);
    /// Statuses from this value up are OPC UA status codes: the server's
    /// 32-bit code shifted right by 16 bits (its code proper, without the
    /// info bits), so the Historian sees which Uncertain or Bad it was.
    pub const OPC_UA_BASE: u16 = 0x4000;

    /// The status for an OPC UA Uncertain or Bad code: `code >> 16`
    /// (BadNodeIdUnknown, 0x80340000, is 32820).
    pub fn opc_ua(code: u32) -> Status {
        Status(((code >> 16) as u16).max(Self::OPC_UA_BASE))
    }
    /// Base of the device exception codes: exception N is `100 + N`.
    pub const EXCEPTION_BASE: u16 = 100;

    /// The status for Modbus exception code `code` (1 = illegal function …).
    pub fn exception(code: u8) -> Status {
        Status(Self::EXCEPTION_BASE + u16::from(code))
    }

    /// Whether the value can be trusted.
    pub fn is_good(self) -> bool {
        self == Status::GOOD
    }

    /// A short English description, for logs and `rtds status`.
    pub fn describe(self) -> String {
        match self.0 {
            0 => "good".into(),
            1 => "not connected".into(),
            2 => "timeout".into(),
            3 => "bad config".into(),
            4 => "script error".into(),
            5 => "stale".into(),
            6 => "no data yet".into(),
            7 => "protocol error".into(),
            8 => "null".into(),
            9 => "type mismatch".into(),
            10 => "missing".into(),
            11 => "query error".into(),
            12 => "removed".into(),
            13 => "not a number".into(),
            n if (Self::OPC_UA_BASE..0x8000).contains(&n) => {
                format!("OPC UA Uncertain 0x{n:04X}0000")
            }
            n if n >= 0x8000 => format!("OPC UA Bad 0x{n:04X}0000"),
            n if n > Self::EXCEPTION_BASE && n < Self::EXCEPTION_BASE + 256 => {
                format!("device exception {}", n - Self::EXCEPTION_BASE)
            }
            n => format!("status {n}"),
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.0, self.describe())
    }
}

/// The state of one tag as the central loop holds it: value, quality and
/// the time the value was taken.
#[derive(Debug, Clone, PartialEq)]
pub struct TagState {
    /// Last known value; kept when the tag goes bad, so an operator still
    /// sees the last good reading next to a bad status (as SCADA does).
    pub value: Option<Value>,
    /// Quality of `value`.
    pub status: Status,
    /// When `value` (or the status change) was observed.
    pub ts: Timestamp,
}

impl TagState {
    /// A tag that has not been read yet.
    pub fn no_data(ts: Timestamp) -> TagState {
        TagState {
            value: None,
            status: Status::NO_DATA,
            ts,
        }
    }
}

/// Samples handed to storage and the outputs at once: one allocation
/// shared by all of them, never copied per consumer.
pub type Batch = std::sync::Arc<Vec<Sample>>;

/// One reading of one tag, as a connector hands it to the central loop and the
/// central loop hands it to storage. `tag` indexes the server's tag table.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Index into the tag table the receiver was built from.
    pub tag: usize,
    /// `None` when the read failed: the last value is kept, the status says why.
    pub value: Option<Value>,
    /// Quality of this reading.
    pub status: Status,
    /// When it was read.
    pub ts: Timestamp,
}

impl Sample {
    /// A good sample whose value is NaN becomes [`Status::NOT_A_NUMBER`]
    /// without a value (the tag keeps its last one, as for every bad
    /// status). NaN inside an array stays: the array's text says `NaN`.
    #[inline]
    pub fn check_nan(&mut self) {
        if self.status.is_good() && matches!(self.value, Some(Value::Float(f)) if f.is_nan()) {
            self.value = None;
            self.status = Status::NOT_A_NUMBER;
        }
    }
}

/// A script's `state` map as kept in the live database between runs of
/// RTDS, with the source it belongs to: a script whose source changed
/// starts with a fresh state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptState {
    /// Script name.
    pub name: String,
    /// The script's source text when the state was saved.
    pub source: String,
    /// The state map as JSON (Rhai's own format and parser).
    pub state: String,
}

/// Where a tag's value comes from, which decides who may set it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Read by connector `connector` as its tag number `local` (32-bit:
    /// 12 bytes a tag instead of 24; no gateway holds 4 billion tags).
    /// Build with [`Origin::device`], read with [`Origin::as_device`].
    Device {
        /// Connector index (config order).
        connector: u32,
        /// Index within the connector's tags.
        local: u32,
        /// Whether a script may set it (and so write it to the device).
        writable: bool,
    },
    /// Computed by scripts only.
    Calculated,
}

impl Origin {
    /// Tag `local` of connector `connector`.
    pub fn device(connector: usize, local: usize, writable: bool) -> Origin {
        // A wrapped index would route a write to another tag: refuse
        // loudly instead (4 billion tags do not fit in memory anyway).
        let narrow = |i: usize| u32::try_from(i).expect("a tag index beyond u32");
        Origin::Device {
            connector: narrow(connector),
            local: narrow(local),
            writable,
        }
    }

    /// (connector, local, writable) as indexes, for a device tag.
    pub fn as_device(self) -> Option<(usize, usize, bool)> {
        match self {
            Origin::Device {
                connector,
                local,
                writable,
            } => Some((connector as usize, local as usize, writable)),
            Origin::Calculated => None,
        }
    }
}

/// Every tag the central loop holds, addressed by index (fast, for the
/// cycle) or by name (for scripts). Tags are only ever added, so an index
/// stays valid for the life of a configuration.
#[derive(Debug, Clone, Default)]
pub struct TagTable {
    /// Tag names, by index (shared with the config, connectors and storage).
    pub names: Vec<Arc<str>>,
    /// Current state, by index.
    pub states: Vec<TagState>,
    /// Origin, by index.
    pub origins: Vec<Origin>,
    /// Indexes sorted by name, for lookups by binary search: 4 bytes a
    /// tag, where a hash map of names cost about 40 (README: Memory).
    by_name: Vec<u32>,
}

impl TagTable {
    /// Adds a tag and returns its index; the name must be new. One tag
    /// at a time (a script's new tag): building a table uses [`Self::add_all`].
    pub fn add(&mut self, name: Arc<str>, origin: Origin, state: TagState) -> usize {
        let i = self.push(name, origin, state);
        let at = self
            .by_name
            .partition_point(|&k| self.names[k as usize] < self.names[i]);
        self.by_name.insert(at, i as u32);
        i
    }

    /// Adds tags in bulk, sorting the name index once.
    pub fn add_all(&mut self, tags: impl IntoIterator<Item = (Arc<str>, Origin, TagState)>) {
        for (name, origin, state) in tags {
            let i = self.push(name, origin, state);
            self.by_name.push(i as u32);
        }
        let names = &self.names;
        self.by_name
            .sort_unstable_by(|&a, &b| names[a as usize].cmp(&names[b as usize]));
    }

    fn push(&mut self, name: Arc<str>, origin: Origin, state: TagState) -> usize {
        let i = self.names.len();
        // The name index holds u32: a wrapped one would find another tag.
        // Memory runs out long before, but refuse rather than wrap.
        assert!(u32::try_from(i).is_ok(), "a tag index beyond u32");
        self.names.push(name);
        self.states.push(state);
        self.origins.push(origin);
        i
    }

    /// Gives back spare capacity (after building a table tag by tag).
    pub fn shrink_to_fit(&mut self) {
        self.names.shrink_to_fit();
        self.states.shrink_to_fit();
        self.origins.shrink_to_fit();
        self.by_name.shrink_to_fit();
    }

    /// Index of the tag called `name`.
    pub fn find(&self, name: &str) -> Option<usize> {
        let i = self
            .by_name
            .binary_search_by(|&k| (*self.names[k as usize]).cmp(name))
            .ok()?;
        Some(self.by_name[i] as usize)
    }

    /// Number of tags.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether there are no tags.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn finds_every_tag_by_name_whichever_way_it_was_added() {
        let now = Utc::now();
        let mut t = TagTable::default();
        let bulk = ["b", "a", "Ä", "a.b", "a_", "", "z9", "z10"];
        t.add_all(
            bulk.iter()
                .map(|n| (Arc::from(*n), Origin::Calculated, TagState::no_data(now))),
        );
        // One at a time, in and around the sorted names.
        for n in ["aa", "0", "zz", "a.a"] {
            t.add(n.into(), Origin::Calculated, TagState::no_data(now));
        }
        assert_eq!(t.len(), 12);
        for (i, n) in t.names.iter().enumerate() {
            assert_eq!(t.find(n), Some(i), "{n}");
        }
        assert_eq!(t.find("b"), Some(0));
        assert_eq!(t.find("zz"), Some(10));
        for n in ["c", "A", "a.", "z", "ä"] {
            assert_eq!(t.find(n), None, "{n}");
        }
    }

    #[test]
    fn timestamps_are_fixed_width_utc_millis() {
        let ts = Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap();
        assert_eq!(format_ts(&ts), "2026-01-02T03:04:05.000Z");
    }

    #[test]
    fn exception_statuses_are_100_plus_code() {
        assert_eq!(Status::exception(2), Status(102));
        assert_eq!(Status::exception(2).describe(), "device exception 2");
        assert_eq!(Status::TIMEOUT.to_string(), "2 (timeout)");
    }

    #[test]
    fn arrays_display_as_json_lists() {
        assert_eq!(
            Value::Array(vec![Value::Float(1.0), Value::Float(2.5)]).to_string(),
            "[1,2.5]"
        );
        assert_eq!(
            Value::Array(vec![Value::Int(i64::MIN), Value::from_u64(u64::MAX)]).to_string(),
            "[-9223372036854775808,18446744073709551615]"
        );
        assert_eq!(Value::from_u64(5), Value::Int(5));
        // OPC UA Part 4: BadNodeIdUnknown 0x80340000, UncertainLastUsableValue 0x40900000.
        assert_eq!(Status::opc_ua(0x8034_0000), Status(32820));
        assert_eq!(
            Status::opc_ua(0x8034_0000).describe(),
            "OPC UA Bad 0x80340000"
        );
        assert_eq!(
            Status::opc_ua(0x4090_0000).describe(),
            "OPC UA Uncertain 0x40900000"
        );
        assert_eq!(Value::Bool(true).as_f64(), Some(1.0));
        assert_eq!(Value::Str("x".into()).as_f64(), None);
    }
}
