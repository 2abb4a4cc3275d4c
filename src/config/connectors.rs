//! The `connectors` section → [`ConnectorConfig`]s. The fields every
//! connector has are read here; the connection string, the class's own
//! fields and the tags' addresses are the class's to validate (through
//! the registry, [`ConnectorKind::from_config`]); every error of every
//! connector is reported, each at its own line or tag-sheet row.

use super::read::{Doc, Fields};
use super::ron_index::Node;
use super::{ArchiveSettings, ConnectorConfig, DAY_MS, tagfile};
use crate::connector::{At, ConnectorKind, Endpoint, Extras, Params, Setup};
use crate::diagnostics::{Family, Link};
use crate::located::Located;
use crate::tag::{Addresses, TagConfig};
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

/// The fields every connector has; the rest belong to its class.
const KEYS: &[&str] = &[
    "name",
    "connection",
    "interval_ms",
    "archive",
    "tags",
    "tags_file",
    "tags_sheet",
];

/// Where a tag was written: a byte offset of the RON file, or a row of a
/// tag sheet.
enum TagAt {
    Ron(usize),
    File {
        path: PathBuf,
        sheet: String,
        row: usize,
    },
}

/// Reads every connector; `cycle_ms` is the scan's period, `archive` the
/// storage section's archive settings the tags inherit.
pub fn read(
    doc: &mut Doc,
    node: &Node,
    cycle_ms: u64,
    archive: ArchiveSettings,
) -> Vec<ConnectorConfig> {
    if !matches!(node.kind, super::ron_index::Kind::Seq(_)) {
        doc.error(node.span.start, "connectors must be a list [ (…), (…) ]");
        return Vec::new();
    }
    let mut out = Vec::new();
    // Tag names across all connectors: where each was first written.
    let mut names: HashMap<std::sync::Arc<str>, ()> = HashMap::new();
    let mut connector_names: Vec<String> = Vec::new();
    // Where each endpoint was first named: by whom, with which settings.
    let mut endpoints: Vec<(Endpoint, String, String)> = Vec::new();
    for (n, item) in node.items().iter().enumerate() {
        if let Some(c) = one(
            doc,
            item,
            n,
            cycle_ms,
            archive,
            &mut names,
            &mut connector_names,
        ) {
            if let Some(e) = c.kind.endpoint() {
                let settings = c.kind.link_settings();
                match endpoints.iter().find(|(x, _, _)| *x == e) {
                    Some((_, first, theirs)) if *theirs != settings => {
                        let at = item
                            .field("connection")
                            .map_or(item.span.start, |f| f.value.span.start);
                        doc.error(
                            at,
                            format!(
                                "connector `{}`: shares {e} with connector `{first}`, but one link has one setting: `{first}` uses {theirs}, this one {settings}",
                                c.name
                            ),
                        );
                    }
                    Some(_) => {}
                    None => endpoints.push((e, c.name.clone(), settings)),
                }
            }
            out.push(c);
        }
    }
    // Diagnostic tag names are taken by the connectors themselves.
    for c in &out {
        for &d in Link::ALL {
            let name = crate::diagnostics::tag_name(&c.name, d);
            if names.contains_key(name.as_str()) {
                let at = find_tag(doc, node, &name).unwrap_or(node.span.start);
                doc.error(
                    at,
                    format!(
                        "tag name `{name}` is reserved for connector `{}`'s diagnostics",
                        c.name
                    ),
                );
            }
        }
    }
    out
}

/// Where tag `name` is written in the RON text, if it is.
fn find_tag(doc: &Doc, connectors: &Node, name: &str) -> Option<usize> {
    connectors.items().iter().find_map(|c| {
        c.field("tags")?.value.items().iter().find_map(|t| {
            let f = t.field("name")?;
            let text = doc.text_of(&f.value);
            (text.trim_matches('"') == name).then_some(t.span.start)
        })
    })
}

fn one(
    doc: &mut Doc,
    item: &Node,
    n: usize,
    cycle_ms: u64,
    storage_archive: ArchiveSettings,
    names: &mut HashMap<std::sync::Arc<str>, ()>,
    connector_names: &mut Vec<String>,
) -> Option<ConnectorConfig> {
    let mut f = Fields::of(doc, item, format!("connector {}", n + 1))?;
    let name: String = f.get(doc, "name").unwrap_or_default();
    if !name.is_empty() {
        f.what = format!("connector `{name}`");
    }
    let what = f.what.clone();
    let name_at = f.at("name");
    if name.is_empty() || name.starts_with('_') || name.contains('.') {
        doc.error(
            name_at,
            format!(
                "{what}: `name` must be non-empty, not start with `_` (reserved for RTDS's own tags) and have no `.`"
            ),
        );
    } else if connector_names.contains(&name) {
        doc.error(name_at, format!("connector name `{name}` is used twice"));
    }
    connector_names.push(name.clone());
    let interval_ms: u64 = f.get(doc, "interval_ms").unwrap_or(cycle_ms);
    if interval_ms == 0 || interval_ms > DAY_MS || !interval_ms.is_multiple_of(cycle_ms) {
        let at = f.at("interval_ms");
        doc.error(
            at,
            format!(
                "{what}: `interval_ms` {interval_ms} must be a multiple of cycle_ms {cycle_ms} (the scan reads it every Nth cycle), at most {DAY_MS}"
            ),
        );
    }
    let connection: Option<String> = f.get(doc, "connection");
    let connection_at = f.at("connection");
    if connection.is_none() && f.node("connection").is_none() {
        doc.error(
            f.start(),
            format!("{what}: missing `connection` (e.g. \"connector=ModbusTcp; host=10.0.0.5\")"),
        );
    }
    let archive: ArchiveSettings = f.get(doc, "archive").unwrap_or_default();

    // Inline tags, then those of the tag sheet: one list, each tag
    // remembering where it was written for messages about it.
    let mut tags: Vec<TagConfig> = Vec::new();
    let mut at: Vec<TagAt> = Vec::new();
    if let Some(list) = f.node("tags") {
        for (i, t) in list.items().iter().enumerate() {
            if let Some(tag) = doc.de::<TagConfig>(t, &format!("{what}, tag {}", i + 1)) {
                tags.push(tag);
                at.push(TagAt::Ron(t.span.start));
            }
        }
    }
    let tags_file: Option<PathBuf> = f.get(doc, "tags_file");
    let tags_sheet: Option<String> = f.get(doc, "tags_sheet");
    match (&tags_file, &tags_sheet) {
        (Some(file), sheet) => {
            let full = doc.resolve(file);
            let (read, errors) = tagfile::read(&full, sheet.as_deref());
            for e in errors {
                if e.row == 0 {
                    let at = f.at("tags_file");
                    doc.error(
                        at,
                        format!("{what}: tags_file `{}`: {}", full.display(), e.message),
                    );
                } else {
                    doc.errors.0.push(Located {
                        file: full.clone(),
                        line: e.row,
                        message: e.message,
                    });
                }
            }
            for (t, origin) in read {
                at.push(TagAt::File {
                    path: full.clone(),
                    sheet: origin.sheet,
                    row: origin.row,
                });
                tags.push(t);
            }
        }
        (None, Some(_)) => {
            let at = f.at("tags_sheet");
            doc.error(at, format!("{what}: tags_sheet needs tags_file"));
        }
        (None, None) => {}
    }
    let tag_error = |doc: &mut Doc, i: usize, tags: &[TagConfig], message: String| match &at[i] {
        TagAt::Ron(offset) => doc.error(
            *offset,
            format!("{what}, tag `{}`: {message}", tags[i].name),
        ),
        TagAt::File { path, sheet, row } => doc.errors.0.push(Located {
            file: path.clone(),
            line: *row,
            message: if sheet.is_empty() {
                format!("tag `{}`: {message}", tags[i].name)
            } else {
                format!("sheet `{sheet}`, tag `{}`: {message}", tags[i].name)
            },
        }),
    };
    for (i, t) in tags.iter().enumerate() {
        if t.name.trim().is_empty() || t.name.chars().any(|c| c.is_control()) {
            tag_error(
                doc,
                i,
                &tags,
                "the name is empty or has control characters".into(),
            );
        } else if t.name.starts_with("_storage.") {
            tag_error(
                doc,
                i,
                &tags,
                "the name is reserved for storage's diagnostics".into(),
            );
        } else if names.insert(t.name.clone(), ()).is_some() {
            tag_error(doc, i, &tags, "the name is used twice".into());
        }
    }
    let mut policies = Vec::with_capacity(tags.len());
    for (i, t) in tags.iter().enumerate() {
        let settings = storage_archive
            .overridden_by(archive)
            .overridden_by(ArchiveSettings::from(t));
        match settings.policy() {
            Ok(p) => policies.push(p),
            Err(m) => {
                tag_error(doc, i, &tags, m);
                policies.push(Default::default());
            }
        }
    }

    // The class's own fields, as RON text for it to read.
    let extras = Extras::new(
        f.rest()
            .into_iter()
            .filter(|x| !KEYS.contains(&x.key.as_str()))
            .map(|x| (x.key.clone(), doc.text_of(&x.value).to_string()))
            .collect(),
    );
    let field_at: Vec<(String, usize)> = f
        .rest()
        .into_iter()
        .map(|x| (x.key.clone(), x.key_at))
        .collect();
    // The class reports the fields it does not know; the generic ones
    // were all read above.
    drop(f);
    let connection = connection?;
    let params = match Params::parse(&connection) {
        Ok(p) => p,
        Err(e) => {
            doc.error(connection_at, format!("{what}: {e}"));
            return None;
        }
    };
    let kind = ConnectorKind::from_config(Setup {
        params,
        tags: &tags,
        extras,
        base: doc.base,
    });
    let kind = match kind {
        Ok(k) => k,
        Err(errors) => {
            for e in errors {
                match e.at {
                    At::Connection => doc.error(connection_at, format!("{what}: {}", e.message)),
                    At::Tag(i) if i < tags.len() => tag_error(doc, i, &tags, e.message),
                    At::Tag(_) => doc.error(item.span.start, format!("{what}: {}", e.message)),
                    At::Field(key, rel) => {
                        let line = field_at
                            .iter()
                            .find(|(k, _)| *k == key)
                            .map_or(doc.line(item.span.start), |(_, o)| doc.line(*o))
                            + rel.saturating_sub(1);
                        doc.error_at_line(line, format!("{what}: {}", e.message));
                    }
                }
            }
            return None;
        }
    };
    // Parsing grew the list by doubling: give back the spare half
    // (10,000 tags × 240 B would hold 16,384 slots for the run).
    tags.shrink_to_fit();
    Some(ConnectorConfig {
        name,
        interval: Duration::from_millis(interval_ms),
        addresses: Addresses::of(&tags),
        tags,
        policies,
        kind,
    })
}
