//! The `scripts` section → [`ScriptConfig`]s (compiling them is the
//! script host's; here the files, schedules and limits are checked).

use super::read::{Doc, Fields};
use super::ron_index::{Kind, Node};
use super::{DAY_MS, HOUR_MS};
use crate::script::schedule::{Cron, Schedule};
use crate::script::{ScriptConfig, ScriptLimits};
use std::path::PathBuf;
use std::time::Duration;

const KEYS: &[&str] = &[
    "name",
    "file",
    "every_ms",
    "cron",
    "max_operations",
    "max_ms",
];

/// Reads every script entry.
pub fn read(doc: &mut Doc, node: &Node, limits: &ScriptLimits) -> Vec<ScriptConfig> {
    if !matches!(node.kind, Kind::Seq(_)) {
        doc.error(
            node.span.start,
            "scripts must be a list [ (file: \"…\"), … ]",
        );
        return Vec::new();
    }
    node.items()
        .iter()
        .enumerate()
        .filter_map(|(n, item)| one(doc, item, n, limits))
        .collect()
}

fn one(doc: &mut Doc, item: &Node, n: usize, limits: &ScriptLimits) -> Option<ScriptConfig> {
    let mut f = Fields::of(doc, item, format!("script {}", n + 1))?;
    let file: Option<PathBuf> = f.get(doc, "file");
    let name: Option<String> = f.get(doc, "name");
    let file_at = f.at("file");
    let Some(file_text) = file else {
        if f.node("file").is_none() {
            doc.error(
                f.start(),
                format!("{}: missing `file` (a .rhai script)", f.what),
            );
        }
        f.finish(doc, KEYS);
        return None;
    };
    let name = name.unwrap_or_else(|| {
        file_text
            .file_stem()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_else(|| file_text.to_string_lossy().to_string())
    });
    f.what = format!("script `{name}`");
    let what = f.what.clone();
    let file = doc.resolve(&file_text);
    if !file.is_file() {
        doc.error(
            file_at,
            format!(
                "{what}: file {} not found",
                std::path::absolute(&file).unwrap_or(file.clone()).display()
            ),
        );
    }
    let every_ms: Option<u64> = f.get(doc, "every_ms");
    let cron: Option<String> = f.get(doc, "cron");
    let schedule = match (every_ms, cron) {
        (Some(_), Some(_)) => {
            let at = f.at("cron");
            doc.error(at, format!("{what}: give every_ms or cron, not both"));
            Schedule::EveryCycle
        }
        (Some(ms), None) if ms == 0 || ms > 7 * DAY_MS => {
            let at = f.at("every_ms");
            doc.error(
                at,
                format!(
                    "{what}: `every_ms` {ms} is outside 1..={} (a week; use cron for longer)",
                    7 * DAY_MS
                ),
            );
            Schedule::EveryCycle
        }
        (Some(ms), None) => Schedule::Every(Duration::from_millis(ms)),
        (None, Some(c)) => match Cron::parse(&c) {
            Ok(c) => Schedule::Cron(c),
            Err(e) => {
                let at = f.at("cron");
                doc.error(at, format!("{what}: `cron`: {e}"));
                Schedule::EveryCycle
            }
        },
        (None, None) => Schedule::EveryCycle,
    };
    let max_operations: u64 = f
        .get(doc, "max_operations")
        .unwrap_or(limits.max_operations);
    let max_ms: u64 = f.get(doc, "max_ms").unwrap_or(limits.max_ms);
    if max_operations == 0 {
        let at = f.at("max_operations");
        doc.error(at, format!("{what}: `max_operations` must be at least 1"));
    }
    if max_ms == 0 || max_ms > HOUR_MS {
        let at = f.at("max_ms");
        doc.error(
            at,
            format!("{what}: `max_ms` {max_ms} is outside 1..={HOUR_MS} (an hour)"),
        );
    }
    f.finish(doc, KEYS);
    Some(ScriptConfig {
        name,
        file,
        schedule,
        max_operations,
        max_time: Duration::from_millis(max_ms.clamp(1, HOUR_MS)),
    })
}
