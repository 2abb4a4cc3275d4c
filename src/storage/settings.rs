//! Storage's settings, typed: what the `storage` section of the
//! configuration becomes once validated (the configuration reads and
//! checks the file; storage owns what the values mean).

use super::archive::ArchivePolicy;
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

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

impl StorageConfig {
    /// The PRAGMA statements for a segment's connection.
    pub fn segment_pragmas(&self) -> String {
        format!(
            "PRAGMA synchronous={}; PRAGMA cache_size=-{};",
            self.synchronous, self.cache_kb
        )
    }
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
