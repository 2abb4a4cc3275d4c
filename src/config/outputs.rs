//! The `outputs` section → [`OutputEntry`]s. `name` and `kind` are read
//! here; the rest of an entry is the kind's to read (through the registry,
//! [`crate::output::KINDS`]), every mistake at its own line.

use super::read::{Doc, Fields};
use super::ron_index::Node;
use crate::connector::{At, Extras};
use crate::output::{KINDS, OutputEntry, Setup};
use std::path::Path;

const KEYS: &[&str] = &["name", "kind"];

/// Reads every output; `taken` are the connectors' names (an output's
/// diagnostics are named like a connector's, so the names must differ),
/// `data_dir` the live database's directory.
pub fn read(doc: &mut Doc, node: &Node, taken: &[String], data_dir: &Path) -> Vec<OutputEntry> {
    if !matches!(node.kind, super::ron_index::Kind::Seq(_)) {
        doc.error(node.span.start, "outputs must be a list [ (…), (…) ]");
        return Vec::new();
    }
    let mut out: Vec<OutputEntry> = Vec::new();
    for (n, item) in node.items().iter().enumerate() {
        let Some(mut f) = Fields::of(doc, item, format!("output {}", n + 1)) else {
            continue;
        };
        let name: String = f.get(doc, "name").unwrap_or_default();
        let name_at = f.at("name");
        let what = format!("output `{name}`");
        if name.is_empty() || name.starts_with('_') || name.contains(['.', '/', '+', '#']) {
            doc.error(
                name_at,
                format!(
                    "output {}: `name` must be non-empty, not start with `_`, and have no `.`, `/`, `+` or `#`",
                    n + 1
                ),
            );
        } else if taken.contains(&name) || out.iter().any(|o| o.name == name) {
            doc.error(
                name_at,
                format!("`{name}` names a connector or another output already"),
            );
        }
        let kind_name: String = f.get(doc, "kind").unwrap_or_default();
        let kind_at = f.at("kind");
        let Some(kind) = KINDS
            .iter()
            .find(|k| k.name.eq_ignore_ascii_case(&kind_name))
        else {
            doc.error(
                kind_at,
                format!(
                    "{what}: `kind` `{kind_name}` is not one this build knows ({})",
                    KINDS.iter().map(|k| k.name).collect::<Vec<_>>().join(", ")
                ),
            );
            continue;
        };
        let fields: Vec<(String, String)> = f
            .rest()
            .into_iter()
            .filter(|x| !KEYS.contains(&x.key.as_str()))
            .map(|x| (x.key.clone(), doc.text_of(&x.value).to_string()))
            .collect();
        let field_at: Vec<(String, usize)> = f
            .rest()
            .into_iter()
            .map(|x| (x.key.clone(), x.key_at))
            .collect();
        drop(f);
        let setup = Setup {
            name: &name,
            extras: Extras::new(fields),
            base: doc.base,
            data_dir,
        };
        match (kind.setup)(setup) {
            Ok(config) => out.push(OutputEntry {
                name,
                kind: kind.name,
                config,
            }),
            Err(errors) => {
                for e in errors {
                    match e.at {
                        At::Field(key, rel) => {
                            let line = field_at
                                .iter()
                                .find(|(k, _)| *k == key)
                                .map_or(doc.line(item.span.start), |(_, o)| doc.line(*o))
                                + rel.saturating_sub(1);
                            doc.error_at_line(line, format!("{what}: {}", e.message));
                        }
                        _ => doc.error(item.span.start, format!("{what}: {}", e.message)),
                    }
                }
            }
        }
    }
    out
}
