//! Configuration: one RON file → a validated, typed [`Config`].
//!
//! Everything a user can get wrong is caught here, before any device is
//! touched, and reported as `file:line: what is wrong` — every mistake of
//! the file and of its tag sheets at once, each at the line of its own key
//! or row — so that `rtds check`, a refused start and a refused SIGHUP
//! reload say exactly where to look.
//!
//! The file is read as a tree of spans first ([`ron_index`]); each section
//! ([`storage`], [`connectors`], [`scripts`], [`http`]) reads its own
//! fields into the typed settings its component owns, and a connector's
//! class validates its own connection string, fields and tags.

mod connectors;
mod http;
mod outputs;
mod read;
pub mod ron_index;
mod scripts;
mod storage;
pub mod tagfile;

use crate::connector::ConnectorKind;
pub use crate::connector::Params;
use crate::http::HttpConfig;
pub use crate::located::{Errors, Located};
use crate::script::{ScriptConfig, ScriptLimits};
use crate::storage::archive::{ArchivePolicy, Deadband};
pub use crate::storage::{Retention, SegmentLimits, StorageConfig};
pub use crate::tag::{Addresses, TagConfig};
use read::{Doc, Fields};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A configuration error, located in its file.
pub type ConfigError = Located;

/// Upper bounds of durations in the file: anything larger is a typo, and
/// would overflow a clock computation somewhere in a long-running process.
const DAY_MS: u64 = 86_400_000;
const HOUR_MS: u64 = 3_600_000;
const MAX_HEARTBEAT_S: f64 = 31_536_000.0;

/// The keys of the top level, in the order the manual documents them.
const TOP_KEYS: &[&str] = &[
    "cycle_ms",
    "read_deadline_ms",
    "log",
    "storage",
    "connectors",
    "scripts",
    "script_limits",
    "http",
    "outputs",
];

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
    /// Outputs besides storage (MQTT …), in config order.
    pub outputs: Vec<crate::output::OutputEntry>,
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

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, Errors> {
        let text = std::fs::read_to_string(path).map_err(|e| Located {
            file: path.to_path_buf(),
            line: 0,
            message: format!("cannot read: {e}"),
        })?;
        Config::parse(path, &text)
    }

    /// Validates `text` as if read from `path`, reporting every error.
    /// Relative paths inside are resolved against `path`'s directory, so a
    /// config works the same whatever the working directory of the init
    /// script.
    pub fn parse(path: &Path, text: &str) -> Result<Config, Errors> {
        let root = ron_index::parse(text).map_err(|e| syntax_error(path, text, e))?;
        let mut doc = Doc::new(path, text);
        let Some(mut top) = Fields::of(&mut doc, &root, "the configuration".into()) else {
            return Err(doc.errors);
        };
        let cycle_ms: u64 = top.get(&mut doc, "cycle_ms").unwrap_or(1000);
        if cycle_ms == 0 || cycle_ms > DAY_MS {
            let at = top.at("cycle_ms");
            doc.error(
                at,
                format!("`cycle_ms`: {cycle_ms} is outside 1..={DAY_MS} (ms, a day)"),
            );
        }
        let cycle_ms = cycle_ms.clamp(1, DAY_MS);
        let read_deadline_ms: u64 = top
            .get(&mut doc, "read_deadline_ms")
            .unwrap_or((cycle_ms / 2).max(1));
        if read_deadline_ms > cycle_ms {
            let at = top.at("read_deadline_ms");
            doc.error(
                at,
                format!(
                    "`read_deadline_ms`: {read_deadline_ms} must not exceed cycle_ms {cycle_ms}"
                ),
            );
        }
        let (log_file, log_level) = log(&mut doc, &mut top);
        let storage = match top.node("storage") {
            Some(n) => storage::read(&mut doc, n),
            None => {
                let at = top.at("storage");
                doc.error(
                    at,
                    "missing `storage: (path: \"…\")`: where the live database is",
                );
                None
            }
        };
        let archive = storage.as_ref().map(|(_, a)| *a).unwrap_or_default();
        let connectors = top
            .node("connectors")
            .map(|n| connectors::read(&mut doc, n, cycle_ms, archive))
            .unwrap_or_default();
        let script_limits: ScriptLimits = top.get(&mut doc, "script_limits").unwrap_or_default();
        let scripts = top
            .node("scripts")
            .map(|n| scripts::read(&mut doc, n, &script_limits))
            .unwrap_or_default();
        let http = top.node("http").and_then(|n| http::read(&mut doc, n));
        let names: Vec<String> = connectors.iter().map(|c| c.name.clone()).collect();
        let data_dir = storage
            .as_ref()
            .and_then(|(s, _)| s.path.parent().map(Path::to_path_buf))
            .unwrap_or_default();
        let outputs = top
            .node("outputs")
            .map(|n| outputs::read(&mut doc, n, &names, &data_dir))
            .unwrap_or_default();
        top.finish(&mut doc, TOP_KEYS);
        let Some((storage, _)) = storage else {
            return Err(doc.finish());
        };
        let config = Config {
            path: path.to_path_buf(),
            cycle: Duration::from_millis(cycle_ms),
            read_deadline: Duration::from_millis(read_deadline_ms.min(cycle_ms)),
            log_file,
            log_level,
            storage,
            connectors,
            scripts,
            script_limits,
            http,
            outputs,
        };
        doc.finish().or(config)
    }
}

/// The `log` section: its file (resolved) and level.
fn log(doc: &mut Doc, top: &mut Fields) -> (Option<PathBuf>, log::LevelFilter) {
    let Some(node) = top.node("log") else {
        return (None, log::LevelFilter::Info);
    };
    let Some(mut f) = Fields::of(doc, node, "log".into()) else {
        return (None, log::LevelFilter::Info);
    };
    let file: Option<PathBuf> = f.get(doc, "file");
    let level: String = f.get(doc, "level").unwrap_or_else(|| "info".into());
    let parsed = level.parse::<log::LevelFilter>().unwrap_or_else(|_| {
        let at = f.at("level");
        doc.error(
            at,
            format!("log `level`: `{level}` is not one of off, error, warn, info, debug, trace"),
        );
        log::LevelFilter::Info
    });
    f.finish(doc, &["file", "level"]);
    (file.map(|p| doc.resolve(&p)), parsed)
}

/// A file RON cannot read at all: serde's own message, at its line.
fn syntax_error(path: &Path, text: &str, e: ron_index::SyntaxError) -> Errors {
    // RON's reader words syntax errors well; ask it, and fall back to ours.
    let ron: Result<ron::Value, _> = ron::Options::default()
        .with_default_extension(ron::extensions::Extensions::IMPLICIT_SOME)
        .from_str(text);
    let (line, message) = match ron {
        Err(r) => (r.span.start.line, plain_words(&r.code.to_string())),
        Ok(_) => (ron_index::Lines::of(text).line(e.at), e.message),
    };
    Located {
        file: path.to_path_buf(),
        line,
        message,
    }
    .into()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, Errors> {
        Config::parse(Path::new("/nonexistent/rtds.ron"), text)
    }

    /// The one error `text` has.
    fn one_error(text: &str) -> Located {
        let e = parse(text).unwrap_err();
        assert_eq!(e.len(), 1, "{e}");
        e.0[0].clone()
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
        assert_eq!(p.required("host"), "10.0.0.5");
        assert_eq!(p.int_or::<u16>("port", 1, 1..=65535), 502);
        assert_eq!(p.secs_or("timeout", Duration::ZERO), Duration::from_secs(5));
        assert!(p.bool_or("auto_close", false));
        let left = p.clone().finish(&[]);
        assert!(left.iter().any(|e| e.contains("auto_open")), "{left:?}");
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
        let e = one_error(&bad);
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
        let e = one_error(&bad);
        assert_eq!(e.line, 7, "{e}");
        assert!(
            e.to_string()
                .starts_with("/nonexistent/rtds.ron:7: connector `plc1`: unknown key `unit_di`"),
            "{e}"
        );

        let bad = GOOD.replace("port=5020", "port=lots");
        let e = one_error(&bad);
        assert!(
            e.message.contains("`port`") && e.message.contains("1..=65535") && e.line == 7,
            "{e}"
        );

        let bad = GOOD.replace("\"40011\"", "\"hr:x\"");
        let e = one_error(&bad);
        assert_eq!(e.line, 10, "{e}");
        assert!(e.message.contains("tag `Temp`"), "{e}");

        let bad = GOOD.replace("host=127.0.0.1; ", "");
        assert!(
            one_error(&bad)
                .message
                .contains("missing required key `host`")
        );

        let bad = GOOD.replace("cycle_ms", "cylce_ms");
        let e = one_error(&bad);
        assert!(
            e.message.contains("unknown key `cylce_ms`") && !e.message.contains("Raw"),
            "{e}"
        );
        assert_eq!(e.line, 2, "{e}");

        let bad = GOOD.replace("\"Temp\"", "\"Counter\"");
        assert!(one_error(&bad).message.contains("used twice"));
    }

    #[test]
    fn every_error_is_reported_at_its_own_line() {
        // A key that also appears earlier in a comment and in a tag name:
        // each error is still at the key's own line.
        let text = r#"(
    // cycle_ms: explained here; read_deadline_ms too
    cycle_ms: 0,
    read_deadline_ms: 99999999,
    storage: (path: "rtds.db", cache_kb: 1, journal_mode: "fast", segmnt: ()),
    connectors: [
        (
            name: "plc1",
            connection: "connector=ModbusTcp; host=plc; port=0; unit_id=300; bogus=1",
            interval_ms: 0,
            tags: [
                (name: "cache_kb", address: "hr:0", type: "u16"),
                (name: "B", address: "hr:x"),
                (name: "C", address: "hr:1", type: "u17"),
                (name: "D", adress: "hr:2"),
                (name: "E", address: "hr:3", scale: "x"),
            ],
        ),
        (name: "plc1", connection: "connector=Nope"),
    ],
    scripts: [(file: "missing.rhai", every_ms: 0)],
    http: (listen: "everywhere", max_connections: 0),
    colour: "red",
)"#;
        let e = parse(text).unwrap_err();
        let found: Vec<(usize, &str)> = e.0.iter().map(|e| (e.line, e.message.as_str())).collect();
        let has = |line: usize, needle: &str| {
            assert!(
                found.iter().any(|(l, m)| *l == line && m.contains(needle)),
                "no `{needle}` at line {line} in:\n{e}"
            );
        };
        has(3, "`cycle_ms`: 0 is outside 1..=86400000");
        has(5, "storage `cache_kb`: 1 is outside 64..=1048576");
        has(5, "storage `journal_mode`: `fast` is not one of");
        has(5, "storage: unknown key `segmnt`");
        has(9, "`port`: `0` is not a whole number in 1..=65535");
        has(9, "`unit_id`: `300` is not a whole number in 0..=255");
        has(9, "unknown key `bogus`");
        has(10, "`interval_ms` 0 must be a multiple of cycle_ms");
        has(13, "tag `B`");
        has(14, "tag `C`: unknown type `u17`");
        has(15, "field named `adress`");
        has(16, "`scale`: Expected float");
        has(19, "connector name `plc1` is used twice");
        has(21, "script `missing`: file");
        has(21, "`every_ms` 0 is outside");
        has(22, "http `listen`: `everywhere` is not an address");
        has(22, "http `max_connections`: 0 is outside 1..=1024");
        has(23, "unknown key `colour`");
        let lines: Vec<usize> = found.iter().map(|(l, _)| *l).collect();
        assert!(lines.windows(2).all(|w| w[0] <= w[1]), "sorted: {lines:?}");
        assert!(
            e.to_string().ends_with(&format!("{} errors", e.len())),
            "{e}"
        );
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
            let e = &e.0[0];
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

    #[test]
    fn a_file_ron_cannot_read_is_one_error_at_its_place() {
        let e = parse("(\n    cycle_ms: 500,\n    storage: (path: \"rtds.db\"\n)").unwrap_err();
        assert_eq!(e.len(), 1, "{e}");
        assert!(e.0[0].line >= 3, "{e}");
    }
}
