//! Configuration: one RON file → a validated, typed [`Config`].
//!
//! Everything a user can get wrong is caught here, before any device is
//! touched, and reported as `file:line: what is wrong`, so that `rtds check`
//! and a refused start (or a refused SIGHUP reload) say exactly where to look.

pub mod tagfile;

use crate::connector::ConnectorKind;
pub use crate::connector::Params;
use crate::diagnostics::Family;
use crate::script::schedule::{Cron, Schedule};
use crate::storage::archive::{ArchivePolicy, Deadband};
pub use crate::tag::{Addresses, TagConfig};
use serde::Deserialize;
use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A configuration error, located in its file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file at fault (the RON file, or a script it names).
    pub file: PathBuf,
    /// 1-based line, 0 when the error is about the file as a whole.
    pub line: usize,
    /// What is wrong, naming the key or tag.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line > 0 {
            write!(f, "{}:{}: {}", self.file.display(), self.line, self.message)
        } else {
            write!(f, "{}: {}", self.file.display(), self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

/// Upper bounds of durations in the file: anything larger is a typo, and
/// would overflow a clock computation somewhere in a long-running process.
const DAY_MS: u64 = 86_400_000;
const HOUR_MS: u64 = 3_600_000;
const MAX_HEARTBEAT_S: f64 = 31_536_000.0;

fn default_cycle_ms() -> u64 {
    1000
}
fn default_level() -> String {
    "info".into()
}
fn default_journal() -> String {
    // The live database is local only (the Historian reads segment files):
    // WAL lets `rtds status` read while storage writes, and never blocks it.
    "wal".into()
}
fn default_sync() -> String {
    // Segments use a rollback journal, where NORMAL leaves a small chance
    // that a power cut at the wrong moment corrupts the file; FULL costs one
    // more fsync per commit (one commit per cycle).
    "full".into()
}
/// The file as written (serde's view). Unknown fields are errors so a typo
/// such as `intreval_ms` is never silently ignored.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default = "default_cycle_ms")]
    cycle_ms: u64,
    #[serde(default)]
    read_deadline_ms: Option<u64>,
    #[serde(default)]
    log: RawLog,
    storage: RawStorage,
    #[serde(default)]
    connectors: Vec<RawConnector>,
    #[serde(default)]
    scripts: Vec<RawScript>,
    #[serde(default)]
    script_limits: ScriptLimits,
    #[serde(default)]
    http: Option<RawHttp>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    #[serde(default = "default_listen")]
    listen: String,
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    writes: bool,
    #[serde(default = "default_http_connections")]
    max_connections: usize,
}

fn default_listen() -> String {
    "127.0.0.1:8080".into()
}
fn default_http_connections() -> usize {
    16
}

/// The built-in HTTP server (status page, JSON API, metrics, health).
/// Off unless the file has an `http` section; its address defaults to
/// loopback, so opening it to the plant network is a deliberate edit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpConfig {
    /// Address and port to listen on.
    pub listen: std::net::SocketAddr,
    /// Bearer token; when set, every request needs it.
    pub token: Option<String>,
    /// Whether `POST /api/tags/{name}` may write (needs a token).
    pub writes: bool,
    /// Connections served at once; more are refused with 503.
    pub max_connections: usize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    #[serde(default)]
    file: Option<PathBuf>,
    #[serde(default = "default_level")]
    level: String,
}

impl Default for RawLog {
    fn default() -> Self {
        RawLog {
            file: None,
            level: default_level(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStorage {
    path: PathBuf,
    #[serde(default = "default_journal")]
    journal_mode: String,
    #[serde(default = "default_sync")]
    synchronous: String,
    #[serde(default = "default_busy_ms")]
    busy_timeout_ms: u64,
    #[serde(default = "default_cache_kb")]
    cache_kb: u32,
    #[serde(default)]
    outbox: Option<PathBuf>,
    #[serde(default)]
    staging: Option<PathBuf>,
    #[serde(default = "default_current_ms")]
    current_interval_ms: u64,
    #[serde(default)]
    segment: SegmentLimits,
    #[serde(default)]
    archive: ArchiveSettings,
    #[serde(default)]
    retention: Retention,
}

fn default_current_ms() -> u64 {
    1000
}

/// When the open segment is closed and published: whichever comes first.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SegmentLimits {
    /// Rows in one segment.
    pub max_rows: u64,
    /// Megabytes of one segment file.
    pub max_mb: f64,
    /// Seconds since the segment's first row: the freshness a Historian
    /// polling every minute sees (about a minute).
    pub max_age_s: f64,
}

impl Default for SegmentLimits {
    fn default() -> Self {
        SegmentLimits {
            max_rows: 100_000,
            max_mb: 16.0,
            max_age_s: 60.0,
        }
    }
}

fn default_cache_kb() -> u32 {
    // SQLite's page cache per database (the live one and the open
    // segment). Measured (README: Memory): 2 MB each, SQLite's default,
    // bought a few percent of archive speed at most, and 256 kB instead of
    // 512 keeps 0.3-0.4 MB less resident at 10,000 tags.
    256
}
fn default_busy_ms() -> u64 {
    5000
}

/// Archive rules as written at storage (global default), connector or tag
/// level; each level overrides the one above field by field.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ArchiveSettings {
    /// Absolute deadband in engineering units.
    #[serde(default)]
    pub deadband: Option<f64>,
    /// Deadband in percent of `span`.
    #[serde(default)]
    pub deadband_pct: Option<f64>,
    /// Engineering range `(low, high)` for `deadband_pct`.
    #[serde(default)]
    pub span: Option<(f64, f64)>,
    /// Heartbeat period in seconds; 0 turns it off.
    #[serde(default)]
    pub heartbeat_s: Option<f64>,
    /// Archive the held previous sample on a deadband exception.
    #[serde(default)]
    pub archive_prev: Option<bool>,
}

impl ArchiveSettings {
    /// `self` with the fields `over` sets replaced. An absolute deadband and
    /// a percent one exclude each other, so setting one clears the other.
    pub fn overridden_by(self, over: ArchiveSettings) -> ArchiveSettings {
        let (deadband, deadband_pct) = if over.deadband.is_some() || over.deadband_pct.is_some() {
            (over.deadband, over.deadband_pct)
        } else {
            (self.deadband, self.deadband_pct)
        };
        ArchiveSettings {
            deadband,
            deadband_pct,
            span: over.span.or(self.span),
            heartbeat_s: over.heartbeat_s.or(self.heartbeat_s),
            archive_prev: over.archive_prev.or(self.archive_prev),
        }
    }

    /// The policy these settings describe, on top of the built-in defaults
    /// (any change, heartbeat 900 s).
    pub fn policy(&self) -> Result<ArchivePolicy, String> {
        let deadband = match (self.deadband, self.deadband_pct) {
            (Some(_), Some(_)) => return Err("give deadband or deadband_pct, not both".into()),
            (Some(d), None) if d.is_finite() && d >= 0.0 => {
                if d == 0.0 {
                    Deadband::Exact
                } else {
                    Deadband::Absolute(d)
                }
            }
            (Some(d), None) => return Err(format!("deadband {d} must be a finite number >= 0")),
            (None, Some(p)) => {
                let (lo, hi) = self.span.ok_or("deadband_pct needs span: (low, high)")?;
                if !(p.is_finite() && p >= 0.0 && lo.is_finite() && hi.is_finite() && hi > lo) {
                    return Err(format!(
                        "deadband_pct {p} with span ({lo}, {hi}): need pct >= 0 and high > low"
                    ));
                }
                Deadband::Absolute(p / 100.0 * (hi - lo))
            }
            (None, None) => Deadband::Exact,
        };
        let heartbeat = match self.heartbeat_s {
            None => ArchivePolicy::default().heartbeat,
            Some(0.0) => None,
            Some(s) if s.is_finite() && s > 0.0 && s <= MAX_HEARTBEAT_S => {
                Some(Duration::from_secs_f64(s))
            }
            Some(s) => {
                return Err(format!(
                    "heartbeat_s {s} must be between 0 (off) and {MAX_HEARTBEAT_S} (a year)"
                ));
            }
        };
        Ok(ArchivePolicy {
            deadband,
            heartbeat,
            keep_prev: self.archive_prev.unwrap_or(false),
        })
    }
}

/// How much unacknowledged data the outbox may hold. Beyond a limit whole
/// oldest segments are dropped (counted and logged).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Retention {
    /// Most archive rows in segments; 0 = no limit.
    pub max_rows: u64,
    /// Most megabytes of segment files (published, staged and open); 0 = no limit.
    pub max_mb: u64,
    /// Oldest age in days of a segment's newest row; 0 = no limit.
    pub max_age_days: u64,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            max_rows: 10_000_000,
            max_mb: 1024,
            max_age_days: 90,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConnector {
    name: String,
    connection: String,
    /// Every cycle when absent.
    #[serde(default)]
    interval_ms: Option<u64>,
    #[serde(default)]
    archive: ArchiveSettings,
    #[serde(default)]
    tags: Vec<TagConfig>,
    #[serde(default)]
    tags_file: Option<PathBuf>,
    #[serde(default)]
    tags_sheet: Option<String>,
    #[serde(default)]
    queries: Vec<crate::connector::sql::QueryConfig>,
    #[serde(default)]
    write_sql: Option<String>,
}

/// Where a tag was written: a RON line, or a row of a tag file.
enum TagLoc {
    Ron(usize),
    File {
        path: PathBuf,
        sheet: String,
        row: usize,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScript {
    #[serde(default)]
    name: Option<String>,
    file: PathBuf,
    #[serde(default)]
    every_ms: Option<u64>,
    #[serde(default)]
    cron: Option<String>,
    #[serde(default)]
    max_operations: Option<u64>,
    #[serde(default)]
    max_ms: Option<u64>,
}

/// Limits on one script run. Defaults stop an endless loop in well under a
/// second on a gateway while leaving room for a script over 10,000 tags.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ScriptLimits {
    /// Rhai operations per run (each script may lower or raise its own).
    pub max_operations: u64,
    /// Wall-clock milliseconds per run (each script may set its own).
    pub max_ms: u64,
    /// Nesting of function calls.
    pub max_call_levels: usize,
    /// Longest string a script may build, in bytes.
    pub max_string_size: usize,
    /// Largest array a script may build.
    pub max_array_size: usize,
}

impl Default for ScriptLimits {
    fn default() -> Self {
        ScriptLimits {
            max_operations: 20_000_000,
            max_ms: 1000,
            max_call_levels: 64,
            max_string_size: 1 << 20,
            max_array_size: 1 << 20,
        }
    }
}

impl From<&TagConfig> for ArchiveSettings {
    /// The tag's own archive settings.
    fn from(t: &TagConfig) -> ArchiveSettings {
        ArchiveSettings {
            deadband: t.deadband,
            deadband_pct: t.deadband_pct,
            span: t.span,
            heartbeat_s: t.heartbeat_s,
            archive_prev: t.archive_prev,
        }
    }
}

/// The validated configuration the server runs on.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from (for reloads and messages).
    pub path: PathBuf,
    /// Period of the central loop.
    pub cycle: Duration,
    /// How long a cycle waits for the reads it started before running
    /// scripts with what has arrived.
    pub read_deadline: Duration,
    /// Log file (stderr always gets the log too).
    pub log_file: Option<PathBuf>,
    /// Log level filter.
    pub log_level: log::LevelFilter,
    /// SQLite settings.
    pub storage: StorageConfig,
    /// Connectors in config order.
    pub connectors: Vec<ConnectorConfig>,
    /// Scripts in run order.
    pub scripts: Vec<ScriptConfig>,
    /// Limits shared by all scripts (call depth, sizes).
    pub script_limits: ScriptLimits,
    /// The HTTP server, when configured.
    pub http: Option<HttpConfig>,
}

/// Where and how the local buffer is kept.
#[derive(Debug, Clone, PartialEq)]
pub struct StorageConfig {
    /// The live database (local only): `current`, tags, acknowledgements.
    pub path: PathBuf,
    /// Where closed segments are published for the Historian (the directory
    /// a share exposes, or a mounted remote one).
    pub outbox: PathBuf,
    /// Local directory of the open segment and of closed segments waiting
    /// for the outbox.
    pub staging: PathBuf,
    /// When the open segment is closed.
    pub segment: SegmentLimits,
    /// How often `current` is written to the live database.
    pub current_interval: Duration,
    /// `PRAGMA journal_mode` of the live database (`wal` by default).
    pub journal_mode: String,
    /// `PRAGMA synchronous` (`normal`, `full` or `off`).
    pub synchronous: String,
    /// How long a write waits for a reader's lock before it is retried.
    pub busy_timeout: Duration,
    /// SQLite page cache per database, kB (`cache_kb`, default 256).
    pub cache_kb: u32,
    /// Archive rules for tags without their own (calculated tags).
    pub archive: ArchivePolicy,
    /// Limits and purge pace.
    pub retention: Retention,
}

impl Config {
    /// Drops what only building the server needed: each connector's parsed
    /// tags and archive rules (about 280 bytes a tag, 2.7 MB at 10,000
    /// tags). The loop's table, the connectors' own settings and storage
    /// hold what the run needs; names, counts and addresses stay.
    pub fn release_tags(&mut self) {
        for c in &mut self.connectors {
            c.tags = Vec::new();
            c.policies = Vec::new();
        }
    }

    /// The connector called `name`, or a message listing the ones there are.
    pub fn connector(&self, name: &str) -> Result<&ConnectorConfig, String> {
        self.connectors
            .iter()
            .find(|c| c.name == name)
            .ok_or_else(|| {
                format!(
                    "no connector `{name}` (connectors: {})",
                    self.connectors
                        .iter()
                        .map(|c| c.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })
    }
}

impl StorageConfig {
    /// The PRAGMA statements for a segment's connection.
    pub fn segment_pragmas(&self) -> String {
        format!(
            "PRAGMA synchronous={}; PRAGMA cache_size=-{};",
            self.synchronous, self.cache_kb
        )
    }
}

/// One validated connector.
#[derive(Debug, Clone)]
pub struct ConnectorConfig {
    /// Unique name, used in logs and diagnostics.
    pub name: String,
    /// Poll period.
    pub interval: Duration,
    /// The tags, in config order; empty once released (see
    /// [`Config::release_tags`]).
    pub tags: Vec<TagConfig>,
    /// Archive rules of each tag (tag over connector over storage
    /// settings); empty once released.
    pub policies: Vec<ArchivePolicy>,
    /// The tags' addresses as written, kept for the status page.
    pub addresses: Addresses,
    /// Class and its typed settings.
    pub kind: ConnectorKind,
}

impl ConnectorConfig {
    /// Number of tags (also after the parsed list is released).
    pub fn tag_count(&self) -> usize {
        self.addresses.len()
    }
}

/// One validated script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptConfig {
    /// Name in logs (the file stem unless given).
    pub name: String,
    /// The `.rhai` file, resolved against the config's directory.
    pub file: PathBuf,
    /// When it runs.
    pub schedule: Schedule,
    /// Rhai operations one run may take.
    pub max_operations: u64,
    /// Wall-clock time one run may take.
    pub max_time: Duration,
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_path_buf(),
            line: 0,
            message: format!("cannot read: {e}"),
        })?;
        Config::parse(path, &text)
    }

    /// Validates `text` as if read from `path`. Relative paths inside are
    /// resolved against `path`'s directory, so a config works the same
    /// whatever the working directory of the init script.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let err = |line: usize, message: String| ConfigError {
            file: path.to_path_buf(),
            line,
            message,
        };
        // implicit_some: optional fields are written `type: "f32"`, not
        // `type: Some("f32")`, as an automation engineer would expect.
        let raw: RawConfig = ron::Options::default()
            .with_default_extension(ron::extensions::Extensions::IMPLICIT_SOME)
            .from_str(text)
            .map_err(|e| err(e.span.start.line, plain_words(&e.code.to_string())))?;
        let loc = Locator::new(text);
        let base = path.parent().unwrap_or(Path::new("."));
        let resolve = |p: &Path| -> PathBuf {
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                normalize(&base.join(p))
            }
        };

        if raw.cycle_ms == 0 || raw.cycle_ms > DAY_MS {
            return Err(err(
                loc.find("cycle_ms", 0),
                format!("cycle_ms must be between 1 and {DAY_MS} (a day)"),
            ));
        }
        let read_deadline_ms = raw.read_deadline_ms.unwrap_or((raw.cycle_ms / 2).max(1));
        if read_deadline_ms > raw.cycle_ms {
            return Err(err(
                loc.find("read_deadline_ms", 0),
                format!(
                    "read_deadline_ms {read_deadline_ms} must not exceed cycle_ms {}",
                    raw.cycle_ms
                ),
            ));
        }
        if !(64..=1_048_576).contains(&raw.storage.cache_kb) {
            return Err(err(
                loc.find("cache_kb", 0),
                "cache_kb must be 64..=1048576 (kB of SQLite page cache per database)".into(),
            ));
        }
        if raw.storage.busy_timeout_ms > HOUR_MS {
            return Err(err(
                loc.find("busy_timeout_ms", 0),
                format!("busy_timeout_ms must be at most {HOUR_MS} (an hour)"),
            ));
        }
        let log_level = raw.log.level.parse::<log::LevelFilter>().map_err(|_| {
            err(
                loc.find("level", 0),
                format!(
                    "log level `{}` is not one of off, error, warn, info, debug, trace",
                    raw.log.level
                ),
            )
        })?;
        let journal_mode = raw.storage.journal_mode.to_ascii_lowercase();
        if !["delete", "truncate", "persist", "wal"].contains(&journal_mode.as_str()) {
            return Err(err(
                loc.find("journal_mode", 0),
                format!(
                    "journal_mode `{journal_mode}` is not one of delete, truncate, persist, wal"
                ),
            ));
        }
        let synchronous = raw.storage.synchronous.to_ascii_lowercase();
        if !["off", "normal", "full", "extra"].contains(&synchronous.as_str()) {
            return Err(err(
                loc.find("synchronous", 0),
                format!("synchronous `{synchronous}` is not one of off, normal, full, extra"),
            ));
        }

        let storage_policy = raw
            .storage
            .archive
            .policy()
            .map_err(|m| err(loc.find("archive", 0), format!("storage archive: {m}")))?;
        let seg = raw.storage.segment;
        if seg.max_rows == 0
            || !(seg.max_mb.is_finite() && seg.max_mb > 0.0 && seg.max_mb <= 4096.0)
            || !(seg.max_age_s.is_finite() && seg.max_age_s > 0.0 && seg.max_age_s <= 86_400.0)
        {
            return Err(err(
                loc.find("segment", 0),
                format!(
                    "segment: max_rows must be at least 1, max_mb in (0, 4096], max_age_s in (0, 86400] (got {}, {}, {})",
                    seg.max_rows, seg.max_mb, seg.max_age_s
                ),
            ));
        }
        let outbox = resolve(
            raw.storage
                .outbox
                .as_deref()
                .unwrap_or(&raw.storage.path.with_file_name("outbox")),
        );
        let staging = resolve(
            raw.storage
                .staging
                .as_deref()
                .unwrap_or(&raw.storage.path.with_file_name("staging")),
        );
        if outbox == staging {
            return Err(err(
                loc.find("outbox", 0),
                format!(
                    "storage: outbox and staging are both {}: they must differ (staging holds the open segment, which no reader may see)",
                    outbox.display()
                ),
            ));
        }
        let ret = raw.storage.retention;
        if ret.max_age_days > 36_500 || ret.max_mb > (1 << 30) {
            return Err(err(
                loc.find("retention", 0),
                format!(
                    "retention: max_age_days at most 36500 and max_mb at most 2^30 (got {}, {})",
                    ret.max_age_days, ret.max_mb
                ),
            ));
        }
        if raw.storage.current_interval_ms == 0 || raw.storage.current_interval_ms > 3_600_000 {
            return Err(err(
                loc.find("current_interval_ms", 0),
                "current_interval_ms must be between 1 and 3600000".into(),
            ));
        }

        let mut names = HashSet::new();
        let mut connectors = Vec::new();
        let mut conn_names = HashSet::new();
        let mut cursor = 0;
        for rc in raw.connectors {
            let line = loc.find(&format!("\"{}\"", rc.name), cursor);
            cursor = line;
            if !conn_names.insert(rc.name.clone()) {
                return Err(err(
                    line,
                    format!("connector name `{}` is used twice", rc.name),
                ));
            }
            if rc.name.is_empty() || rc.name.starts_with('_') || rc.name.contains('.') {
                return Err(err(
                    line,
                    format!(
                        "connector name `{}` must be non-empty, not start with `_` (reserved for RTDS's own tags) and have no `.`",
                        rc.name
                    ),
                ));
            }
            let interval_ms = rc.interval_ms.unwrap_or(raw.cycle_ms);
            if interval_ms == 0 || interval_ms > DAY_MS || interval_ms % raw.cycle_ms != 0 {
                return Err(err(
                    loc.find("interval_ms", line),
                    format!(
                        "connector `{}`: interval_ms {} must be a multiple of cycle_ms {} (the scan reads it every Nth cycle), at most {DAY_MS}",
                        rc.name, interval_ms, raw.cycle_ms
                    ),
                ));
            }
            let conn_line = loc.find(&rc.connection, cursor);
            let params = Params::parse(&rc.connection)
                .map_err(|e| err(conn_line, format!("connector `{}`: {e}", rc.name)))?;
            // Inline tags, then those of the tag file: one list, each tag
            // remembering where it was written for messages about it.
            let mut tags = rc.tags;
            let mut locs: Vec<TagLoc> = Vec::with_capacity(tags.len());
            let mut tag_cursor = conn_line;
            for t in &tags {
                tag_cursor = loc.find(&format!("\"{}\"", t.name), tag_cursor);
                locs.push(TagLoc::Ron(tag_cursor));
            }
            if let Some(file) = &rc.tags_file {
                let file_line = loc.find(&file.to_string_lossy(), conn_line);
                let full = resolve(file);
                let read = tagfile::read(&full, rc.tags_sheet.as_deref()).map_err(|e| {
                    if e.row == 0 {
                        err(
                            file_line,
                            format!(
                                "connector `{}`: tags_file `{}`: {}",
                                rc.name,
                                full.display(),
                                e.message
                            ),
                        )
                    } else {
                        ConfigError {
                            file: full.clone(),
                            line: e.row,
                            message: e.message,
                        }
                    }
                })?;
                for (t, origin) in read {
                    locs.push(TagLoc::File {
                        path: full.clone(),
                        sheet: origin.sheet,
                        row: origin.row,
                    });
                    tags.push(t);
                }
            } else if rc.tags_sheet.is_some() {
                return Err(err(
                    line,
                    format!("connector `{}`: tags_sheet needs tags_file", rc.name),
                ));
            }
            let tag_err = |i: usize, tags: &[TagConfig], message: String| -> ConfigError {
                match &locs[i] {
                    TagLoc::Ron(l) => err(
                        *l,
                        format!("connector `{}`, tag `{}`: {message}", rc.name, tags[i].name),
                    ),
                    TagLoc::File { path, sheet, row } => ConfigError {
                        file: path.clone(),
                        line: *row,
                        message: if sheet.is_empty() {
                            format!("tag `{}`: {message}", tags[i].name)
                        } else {
                            format!("sheet `{sheet}`, tag `{}`: {message}", tags[i].name)
                        },
                    },
                }
            };
            for (i, t) in tags.iter().enumerate() {
                if t.name.trim().is_empty() || t.name.chars().any(|c| c.is_control()) {
                    return Err(tag_err(
                        i,
                        &tags,
                        "the name is empty or has control characters".into(),
                    ));
                }
                if t.name.starts_with("_storage.") {
                    return Err(tag_err(
                        i,
                        &tags,
                        "the name is reserved for storage's diagnostics".into(),
                    ));
                }
                if !names.insert(t.name.clone()) {
                    return Err(tag_err(i, &tags, "the name is used twice".into()));
                }
            }
            let mut policies = Vec::with_capacity(tags.len());
            for (i, t) in tags.iter().enumerate() {
                let settings = raw
                    .storage
                    .archive
                    .overridden_by(rc.archive)
                    .overridden_by(ArchiveSettings::from(t));
                policies.push(settings.policy().map_err(|m| tag_err(i, &tags, m))?);
            }
            let extras = crate::connector::sql::SqlExtras {
                queries: rc.queries.clone(),
                write_sql: rc.write_sql.clone(),
            };
            let kind = ConnectorKind::from_config(crate::connector::Setup {
                params,
                tags: &tags,
                extras: &extras,
                base,
            })
            .map_err(|e| match e.tag {
                Some(i) => tag_err(i, &tags, e.message),
                None => err(conn_line, format!("connector `{}`: {}", rc.name, e.message)),
            })?;
            // Parsing grew the list by doubling: give back the spare half
            // (10,000 tags × 240 B would hold 16,384 slots for the run).
            tags.shrink_to_fit();
            connectors.push(ConnectorConfig {
                name: rc.name,
                interval: Duration::from_millis(interval_ms),
                addresses: Addresses::of(&tags),
                tags,
                policies,
                kind,
            });
        }

        // Diagnostic tag names are taken by the connectors themselves.
        for c in &connectors {
            for &d in crate::diagnostics::Link::ALL {
                let name = crate::diagnostics::tag_name(&c.name, d);
                if names.contains(name.as_str()) {
                    let line = loc.find(&format!("\"{name}\""), 0);
                    return Err(err(
                        line,
                        format!(
                            "tag name `{name}` is reserved for connector `{}`'s diagnostics",
                            c.name
                        ),
                    ));
                }
            }
        }

        let mut scripts = Vec::new();
        for rs in raw.scripts {
            let file_text = rs.file.to_string_lossy().to_string();
            let line = loc.find(&file_text, 0);
            let file = resolve(&rs.file);
            if !file.is_file() {
                return Err(err(
                    line,
                    format!(
                        "script file {} not found",
                        std::path::absolute(&file).unwrap_or(file.clone()).display()
                    ),
                ));
            }
            let name = rs.name.unwrap_or_else(|| {
                rs.file
                    .file_stem()
                    .map(|s| s.to_string_lossy().to_string())
                    .unwrap_or(file_text)
            });
            let schedule = match (rs.every_ms, &rs.cron) {
                (Some(_), Some(_)) => {
                    return Err(err(
                        line,
                        format!("script `{name}`: give every_ms or cron, not both"),
                    ));
                }
                (Some(ms), None) if ms == 0 || ms > 7 * DAY_MS => {
                    return Err(err(
                        loc.find("every_ms", line),
                        format!(
                            "script `{name}`: every_ms must be between 1 and {} (a week; use cron for longer)",
                            7 * DAY_MS
                        ),
                    ));
                }
                (Some(ms), None) => Schedule::Every(Duration::from_millis(ms)),
                (None, Some(c)) => Schedule::Cron(
                    Cron::parse(c)
                        .map_err(|e| err(loc.find(c, line), format!("script `{name}`: {e}")))?,
                ),
                (None, None) => Schedule::EveryCycle,
            };
            let max_operations = rs
                .max_operations
                .unwrap_or(raw.script_limits.max_operations);
            let max_ms = rs.max_ms.unwrap_or(raw.script_limits.max_ms);
            if max_operations == 0 || max_ms == 0 || max_ms > HOUR_MS {
                return Err(err(
                    line,
                    format!(
                        "script `{name}`: max_operations must be at least 1 and max_ms between 1 and {HOUR_MS}"
                    ),
                ));
            }
            scripts.push(ScriptConfig {
                name,
                file,
                schedule,
                max_operations,
                max_time: Duration::from_millis(max_ms),
            });
        }

        let http = match raw.http {
            None => None,
            Some(h) => {
                let line = loc.find("http:", 0);
                let listen = h.listen.parse().map_err(|_| {
                    err(
                        loc.find("listen", line),
                        format!(
                            "http listen `{}` is not an address and port (e.g. 127.0.0.1:8080, 0.0.0.0:8080)",
                            h.listen
                        ),
                    )
                })?;
                if let Some(t) = &h.token
                    && (t.len() < 16 || t.chars().any(|c| c.is_whitespace() || c.is_control()))
                {
                    return Err(err(
                        loc.find("token", line),
                        "http token must be at least 16 characters without spaces".into(),
                    ));
                }
                if h.writes && h.token.is_none() {
                    return Err(err(
                        loc.find("writes", line),
                        "http writes need a token: writes are never allowed without authentication"
                            .into(),
                    ));
                }
                if h.max_connections == 0 || h.max_connections > 1024 {
                    return Err(err(
                        loc.find("max_connections", line),
                        "http max_connections must be 1..=1024".into(),
                    ));
                }
                Some(HttpConfig {
                    listen,
                    token: h.token,
                    writes: h.writes,
                    max_connections: h.max_connections,
                })
            }
        };
        Ok(Config {
            path: path.to_path_buf(),
            cycle: Duration::from_millis(raw.cycle_ms),
            read_deadline: Duration::from_millis(read_deadline_ms),
            log_file: raw.log.file.as_deref().map(resolve),
            log_level,
            storage: StorageConfig {
                outbox: resolve(
                    raw.storage
                        .outbox
                        .as_deref()
                        .unwrap_or(&raw.storage.path.with_file_name("outbox")),
                ),
                staging: resolve(
                    raw.storage
                        .staging
                        .as_deref()
                        .unwrap_or(&raw.storage.path.with_file_name("staging")),
                ),
                segment: seg,
                current_interval: Duration::from_millis(raw.storage.current_interval_ms),
                path: resolve(&raw.storage.path),
                journal_mode,
                synchronous,
                busy_timeout: Duration::from_millis(raw.storage.busy_timeout_ms),
                cache_kb: raw.storage.cache_kb,
                archive: storage_policy,
                retention: raw.storage.retention,
            },
            connectors,
            scripts,
            script_limits: raw.script_limits,
            http,
        })
    }
}

/// Serde names the Rust structs in its messages; say the section instead.
fn plain_words(message: &str) -> String {
    [
        ("in `RawConfig`", "at the top level"),
        ("in `RawLog`", "in log"),
        ("in `RawStorage`", "in storage"),
        ("in `RawConnector`", "in a connector"),
        ("in `RawScript`", "in a script"),
        ("in `TagConfig`", "in a tag"),
        ("in `ArchiveSettings`", "in archive"),
        ("in `Retention`", "in retention"),
        ("in `SegmentLimits`", "in segment"),
        ("in `ScriptLimits`", "in script_limits"),
    ]
    .iter()
    .fold(message.to_string(), |m, (from, to)| m.replace(from, to))
}

/// Removes `a/..` pairs lexically, so messages show `data/rtds.db` rather
/// than `conf/../data/rtds.db`.
fn normalize(p: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::ParentDir
                if matches!(out.components().next_back(), Some(Component::Normal(_))) =>
            {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    if out.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        out
    }
}

/// Finds the line of a piece of text in the source, for messages about
/// values that passed RON's syntax check but not validation.
struct Locator<'a> {
    lines: Vec<&'a str>,
}

impl<'a> Locator<'a> {
    fn new(text: &'a str) -> Self {
        Locator {
            lines: text.lines().collect(),
        }
    }

    /// 1-based line of the first occurrence of `needle` at or after line
    /// `from` (1-based; 0 = start); `from` itself (or 1) when not found.
    fn find(&self, needle: &str, from: usize) -> usize {
        let start = from.saturating_sub(1);
        self.lines
            .iter()
            .enumerate()
            .skip(start)
            .find(|(_, l)| l.contains(needle))
            .map_or(from.max(1), |(i, _)| i + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("/nonexistent/rtds.ron"), text)
    }

    const GOOD: &str = r#"(
    cycle_ms: 500,
    storage: (path: "rtds.db"),
    connectors: [
        (
            name: "plc1",
            connection: "connector=ModbusTcp; host=127.0.0.1; port=5020; unit_id=1; timeout=5; auto_open=true; auto_close=false",
            tags: [
                (name: "Counter", address: "hr:0", type: "u16"),
                (name: "Temp", address: "40011", type: "f32"),
            ],
        ),
    ],
)"#;

    #[test]
    fn the_seed_connection_string_parses() {
        let mut p = Params::parse("connector=ModbusTcp; host=10.0.0.5; port=502; unit_id=1; timeout=5; auto_open=true; auto_close=true").unwrap();
        assert_eq!(p.class(), "ModbusTcp");
        assert_eq!(p.required("host").unwrap(), "10.0.0.5");
        assert_eq!(p.parse_or("port", 1u16), Ok(502));
        assert_eq!(
            p.secs_or("timeout", Duration::ZERO),
            Ok(Duration::from_secs(5))
        );
        assert_eq!(p.bool_or("auto_close", false), Ok(true));
        assert!(p.clone().finish(&[]).unwrap_err().contains("auto_open"));
    }

    #[test]
    fn connection_string_errors() {
        assert!(Params::parse("host=1").unwrap_err().contains("connector"));
        assert!(
            Params::parse("connector=X; host")
                .unwrap_err()
                .contains("key=value")
        );
        assert!(
            Params::parse("connector=X; a=1; A=2")
                .unwrap_err()
                .contains("twice")
        );
        let mut p = Params::parse("connector=X; port=70000; t=-1; b=maybe").unwrap();
        assert!(p.parse_or("port", 0u16).is_err());
        assert!(p.secs_or("t", Duration::ZERO).is_err());
        assert!(p.bool_or("b", false).is_err());
    }

    #[test]
    fn archive_settings_override_tag_over_connector_over_storage() {
        let text = GOOD
            .replace(
                "storage: (path: \"rtds.db\"),",
                "storage: (path: \"rtds.db\", archive: (deadband: 5.0, heartbeat_s: 60)),",
            )
            .replace(
                "tags: [",
                "archive: (deadband_pct: 1.0, span: (0.0, 200.0), archive_prev: true),\n            tags: [",
            )
            .replace(
                "(name: \"Temp\", address: \"40011\", type: \"f32\")",
                "(name: \"Temp\", address: \"40011\", type: \"f32\", deadband: 0.5, heartbeat_s: 0)",
            );
        let c = parse(&text).unwrap();
        let p = &c.connectors[0].policies;
        // Counter: connector's 1 % of 200 = 2.0, storage's heartbeat.
        assert_eq!(p[0].deadband, Deadband::Absolute(2.0));
        assert_eq!(p[0].heartbeat, Some(Duration::from_secs(60)));
        assert!(p[0].keep_prev);
        // Temp: its own deadband (replacing the percent one) and no heartbeat.
        assert_eq!(p[1].deadband, Deadband::Absolute(0.5));
        assert_eq!(p[1].heartbeat, None);
        assert_eq!(c.storage.archive.deadband, Deadband::Absolute(5.0));

        let bad = GOOD.replace("type: \"f32\")", "type: \"f32\", deadband_pct: 2.0)");
        let e = parse(&bad).unwrap_err();
        assert!(
            e.message.contains("deadband_pct needs span") && e.line == 10,
            "{e}"
        );
    }

    #[test]
    fn a_good_config_validates() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.cycle, Duration::from_millis(500));
        assert_eq!(c.storage.path, PathBuf::from("/nonexistent/rtds.db"));
        assert_eq!(c.connectors[0].tags.len(), 2);
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let bad = GOOD.replace("unit_id=1", "unit_di=1");
        let e = parse(&bad).unwrap_err();
        assert_eq!(e.line, 7, "{e}");
        assert!(
            e.to_string()
                .starts_with("/nonexistent/rtds.ron:7: connector `plc1`: unknown key `unit_di`"),
            "{e}"
        );

        let bad = GOOD.replace("port=5020", "port=lots");
        let e = parse(&bad).unwrap_err();
        assert!(e.message.contains("`port`") && e.line == 7, "{e}");

        let bad = GOOD.replace("\"40011\"", "\"hr:x\"");
        let e = parse(&bad).unwrap_err();
        assert_eq!(e.line, 10, "{e}");
        assert!(e.message.contains("tag `Temp`"), "{e}");

        let bad = GOOD.replace("host=127.0.0.1; ", "");
        assert!(
            parse(&bad)
                .unwrap_err()
                .message
                .contains("missing required key `host`")
        );

        let bad = GOOD.replace("cycle_ms", "cylce_ms");
        let e = parse(&bad).unwrap_err();
        assert!(
            e.message.contains("at the top level") && !e.message.contains("Raw"),
            "{e}"
        );
        assert_eq!(e.line, 2, "{e}");
        assert!(e.message.contains("cylce_ms"), "{e}");

        let bad = GOOD.replace("\"Temp\"", "\"Counter\"");
        assert!(parse(&bad).unwrap_err().message.contains("used twice"));
    }

    #[test]
    fn durations_that_would_overflow_are_refused_with_their_line() {
        let cases = [
            (
                "cycle_ms: 500,",
                "cycle_ms: 18446744073709551615,",
                2,
                "cycle_ms",
            ),
            (
                "storage: (path: \"rtds.db\"),",
                "storage: (path: \"rtds.db\", archive: (heartbeat_s: 1e300)),",
                3,
                "heartbeat_s",
            ),
            (
                "storage: (path: \"rtds.db\"),",
                "storage: (path: \"rtds.db\", retention: (max_age_days: 18446744073709551615)),",
                3,
                "max_age_days",
            ),
            (
                "storage: (path: \"rtds.db\"),",
                "storage: (path: \"rtds.db\", busy_timeout_ms: 18446744073709551615),",
                3,
                "busy_timeout_ms",
            ),
            ("timeout=5;", "timeout=1e30;", 7, "timeout"),
        ];
        for (from, to, line, word) in cases {
            let text = GOOD.replace(from, to);
            assert_ne!(text, GOOD, "{from}");
            let e = parse(&text).unwrap_err();
            assert_eq!(e.line, line, "{to}: {e}");
            assert!(e.message.contains(word), "{to}: {e}");
        }
        // max_mb 0 means no limit (documented), not "drop everything".
        let text = GOOD.replace(
            "storage: (path: \"rtds.db\"),",
            "storage: (path: \"rtds.db\", retention: (max_mb: 0)),",
        );
        assert_eq!(parse(&text).unwrap().storage.retention.max_mb, 0);
    }
}
