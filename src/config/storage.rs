//! The `storage` section → [`StorageConfig`] and the archive rules every
//! tag starts from.

use super::read::{Doc, Fields};
use super::ron_index::Node;
use super::{ArchiveSettings, HOUR_MS, Retention, SegmentLimits, StorageConfig};
use std::path::PathBuf;
use std::time::Duration;

const KEYS: &[&str] = &[
    "path",
    "outbox",
    "staging",
    "segment",
    "retention",
    "current_interval_ms",
    "journal_mode",
    "synchronous",
    "busy_timeout_ms",
    "cache_kb",
    "archive",
];

/// Reads the section: the settings and the archive settings tags inherit
/// (`None` when the section is too broken to use; the errors say why).
pub fn read(doc: &mut Doc, node: &Node) -> Option<(StorageConfig, ArchiveSettings)> {
    let mut f = Fields::of(doc, node, "storage".into())?;
    let path: Option<PathBuf> = f.get(doc, "path");
    if path.is_none() && f.node("path").is_none() {
        let at = f.start();
        doc.error(
            at,
            "storage: missing `path` (the live database, e.g. \"/var/lib/rtds/rtds.db\")",
        );
    }
    // The live database stays local (WAL lets `rtds status` read while
    // storage writes); segments use a rollback journal where NORMAL
    // leaves a small chance that a power cut corrupts the file.
    let journal_mode = one_of(
        doc,
        &mut f,
        "journal_mode",
        "wal",
        &["delete", "truncate", "persist", "wal"],
    );
    let synchronous = one_of(
        doc,
        &mut f,
        "synchronous",
        "full",
        &["off", "normal", "full", "extra"],
    );
    let busy_timeout_ms = ranged(doc, &mut f, "busy_timeout_ms", 5000, 0, HOUR_MS, "ms");
    // SQLite's page cache per database (the live one and the open
    // segment). Measured (docs/performance.md): 256 kB instead of 512
    // keeps 0.3-0.4 MB less resident at 10,000 tags.
    let cache_kb = ranged(doc, &mut f, "cache_kb", 256, 64, 1_048_576, "kB") as u32;
    let current_interval_ms = ranged(doc, &mut f, "current_interval_ms", 1000, 1, HOUR_MS, "ms");
    let outbox: Option<PathBuf> = f.get(doc, "outbox");
    let staging: Option<PathBuf> = f.get(doc, "staging");
    let segment: SegmentLimits = f.get(doc, "segment").unwrap_or_default();
    if segment.max_rows == 0
        || !(segment.max_mb.is_finite() && segment.max_mb > 0.0 && segment.max_mb <= 4096.0)
        || !(segment.max_age_s.is_finite()
            && segment.max_age_s > 0.0
            && segment.max_age_s <= 86_400.0)
    {
        let at = f.at("segment");
        doc.error(
            at,
            format!(
                "storage `segment`: max_rows must be at least 1, max_mb in (0, 4096], max_age_s in (0, 86400] (got {}, {}, {})",
                segment.max_rows, segment.max_mb, segment.max_age_s
            ),
        );
    }
    let retention: Retention = f.get(doc, "retention").unwrap_or_default();
    if retention.max_age_days > 36_500 || retention.max_mb > (1 << 30) {
        let at = f.at("retention");
        doc.error(
            at,
            format!(
                "storage `retention`: max_age_days at most 36500 and max_mb at most 2^30 (got {}, {})",
                retention.max_age_days, retention.max_mb
            ),
        );
    }
    let archive: ArchiveSettings = f.get(doc, "archive").unwrap_or_default();
    let policy = archive.policy().unwrap_or_else(|m| {
        let at = f.at("archive");
        doc.error(at, format!("storage `archive`: {m}"));
        Default::default()
    });
    f.finish(doc, KEYS);
    let path = path?;
    let outbox = doc.resolve(outbox.as_deref().unwrap_or(&path.with_file_name("outbox")));
    let staging = doc.resolve(
        staging
            .as_deref()
            .unwrap_or(&path.with_file_name("staging")),
    );
    if outbox == staging {
        doc.error(
            node.span.start,
            format!(
                "storage: outbox and staging are both {}: they must differ (staging holds the open segment, which no reader may see)",
                outbox.display()
            ),
        );
    }
    Some((
        StorageConfig {
            path: doc.resolve(&path),
            outbox,
            staging,
            segment,
            current_interval: Duration::from_millis(current_interval_ms),
            journal_mode,
            synchronous,
            busy_timeout: Duration::from_millis(busy_timeout_ms),
            cache_kb,
            archive: policy,
            retention,
        },
        archive,
    ))
}

/// A text setting that must be one of `allowed` (any case).
fn one_of(doc: &mut Doc, f: &mut Fields, key: &str, default: &str, allowed: &[&str]) -> String {
    let v: String = f
        .get::<String>(doc, key)
        .unwrap_or_else(|| default.into())
        .to_ascii_lowercase();
    if allowed.contains(&v.as_str()) {
        return v;
    }
    let at = f.at(key);
    doc.error(
        at,
        format!(
            "storage `{key}`: `{v}` is not one of {}",
            allowed.join(", ")
        ),
    );
    default.into()
}

/// A whole number setting in `lo..=hi` (`unit` for the message).
fn ranged(
    doc: &mut Doc,
    f: &mut Fields,
    key: &str,
    default: u64,
    lo: u64,
    hi: u64,
    unit: &str,
) -> u64 {
    let v: u64 = f.get(doc, key).unwrap_or(default);
    if (lo..=hi).contains(&v) {
        return v;
    }
    let at = f.at(key);
    doc.error(
        at,
        format!("storage `{key}`: {v} is outside {lo}..={hi} ({unit})"),
    );
    default
}
