//! Reading the configuration's tree piece by piece, collecting errors:
//! each field is deserialized on its own, so one bad value does not hide
//! the next, and each error is placed at its own key's line.

use super::ron_index::{Field, Kind, Lines, Node};
use super::{Errors, normalize, plain_words};
use serde::de::DeserializeOwned;
use std::path::{Path, PathBuf};

/// The file being read and the errors found so far.
pub struct Doc<'t> {
    /// The configuration file.
    pub file: &'t Path,
    /// Its text.
    pub text: &'t str,
    lines: Lines,
    /// Its directory: relative paths in it resolve against it.
    pub base: &'t Path,
    /// Every error so far.
    pub errors: Errors,
}

impl<'t> Doc<'t> {
    pub fn new(file: &'t Path, text: &'t str) -> Doc<'t> {
        Doc {
            file,
            text,
            lines: Lines::of(text),
            base: file.parent().unwrap_or(Path::new(".")),
            errors: Errors::default(),
        }
    }

    /// The line of byte `offset`.
    pub fn line(&self, offset: usize) -> usize {
        self.lines.line(offset)
    }

    /// An error at the line of byte `offset`.
    pub fn error(&mut self, offset: usize, message: impl Into<String>) {
        let line = self.line(offset);
        self.errors.push(self.file, line, message);
    }

    /// An error at 1-based line `line` of this file.
    pub fn error_at_line(&mut self, line: usize, message: impl Into<String>) {
        self.errors.push(self.file, line, message);
    }

    /// The RON text of `node`.
    pub fn text_of(&self, node: &Node) -> &'t str {
        &self.text[node.span.clone()]
    }

    /// `node` read as `T`; `None` (and the error, named `what`, at its
    /// line) when it does not read.
    pub fn de<T: DeserializeOwned>(&mut self, node: &Node, what: &str) -> Option<T> {
        let text = self.text_of(node);
        match ron::Options::default()
            .with_default_extension(ron::extensions::Extensions::IMPLICIT_SOME)
            .from_str::<T>(text)
        {
            Ok(v) => Some(v),
            Err(e) => {
                let line = self.line(node.span.start) + e.span.start.line.saturating_sub(1);
                let code = plain_words(&e.code.to_string());
                // Serde's messages do not always say which field ("Expected
                // float"): the field whose value holds the error's place.
                let at = offset_in(text, e.span.start.line, e.span.start.col) + node.span.start;
                let field = node
                    .fields()
                    .iter()
                    .find(|f| (f.key_at..=f.value.span.end).contains(&at))
                    .map(|f| format!("`{}`: ", f.key))
                    .unwrap_or_default();
                self.error_at_line(line, format!("{what}: {field}{code}"));
                None
            }
        }
    }

    /// `p` resolved against the file's directory.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            normalize(&self.base.join(p))
        }
    }

    /// The errors, sorted.
    pub fn finish(self) -> Errors {
        let errors = self.errors;
        match errors.or(()) {
            Ok(()) => Errors::default(),
            Err(e) => e,
        }
    }
}

/// The byte offset of 1-based `line` and `col` (characters) in `text`.
fn offset_in(text: &str, line: usize, col: usize) -> usize {
    let start: usize = text
        .split_inclusive('\n')
        .take(line.saturating_sub(1))
        .map(str::len)
        .sum();
    start
        + text[start..]
            .char_indices()
            .nth(col.saturating_sub(1))
            .map_or(text.len() - start, |(i, _)| i)
}

/// The fields of one struct of the file (a section, a connector, a
/// script), read one at a time; [`Fields::finish`] refuses the keys
/// nobody read.
pub struct Fields<'n> {
    node: &'n Node,
    /// How messages name it: `storage`, `connector `plc1``.
    pub what: String,
    taken: Vec<usize>,
}

impl<'n> Fields<'n> {
    /// The struct at `node`, named `what` in messages; `None` (and an
    /// error) when `node` is not `( key: value, … )`. A key given twice is
    /// an error at its second place.
    pub fn of(doc: &mut Doc, node: &'n Node, what: String) -> Option<Fields<'n>> {
        if !matches!(node.kind, Kind::Struct(_))
            && !(matches!(&node.kind, Kind::Seq(s) if s.is_empty()))
        {
            doc.error(
                node.span.start,
                format!("{what} must be written ( key: value, … )"),
            );
            return None;
        }
        let fields = node.fields();
        for (i, f) in fields.iter().enumerate() {
            if fields[..i].iter().any(|g| g.key == f.key) {
                doc.error(f.key_at, format!("{what}: `{}` is given twice", f.key));
            }
        }
        Some(Fields {
            node,
            what,
            taken: Vec::new(),
        })
    }

    fn find(&mut self, key: &str) -> Option<&'n Field> {
        let i = self.node.fields().iter().position(|f| f.key == key)?;
        self.taken.push(i);
        Some(&self.node.fields()[i])
    }

    /// The value of `key`, if given.
    pub fn node(&mut self, key: &str) -> Option<&'n Node> {
        self.find(key).map(|f| &f.value)
    }

    /// The value of `key` read as `T`; `None` when absent or wrong (the
    /// error is recorded at its line, naming the key).
    pub fn get<T: DeserializeOwned>(&mut self, doc: &mut Doc, key: &str) -> Option<T> {
        let f = self.find(key)?;
        let what = format!("{}: `{key}`", self.what);
        doc.de(&f.value, &what)
    }

    /// Where `key` is, or the struct itself when it has no such key.
    pub fn at(&self, key: &str) -> usize {
        self.node
            .field(key)
            .map_or(self.node.span.start, |f| f.key_at)
    }

    /// Where the struct starts.
    pub fn start(&self) -> usize {
        self.node.span.start
    }

    /// The fields nobody read, in order.
    pub fn rest(&self) -> Vec<&'n Field> {
        self.node
            .fields()
            .iter()
            .enumerate()
            .filter(|(i, _)| !self.taken.contains(i))
            .map(|(_, f)| f)
            .collect()
    }

    /// Refuses every key nobody read, naming the known ones.
    pub fn finish(self, doc: &mut Doc, known: &[&str]) {
        for f in self.rest() {
            doc.error(
                f.key_at,
                format!(
                    "{}: unknown key `{}` (known: {})",
                    self.what,
                    f.key,
                    known.join(", ")
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_of_the_wrong_type_is_named_by_its_field() {
        let text = "[\n    (name: \"E\", address: \"hr:3\", scale: \"x\"),\n]";
        let root = super::super::ron_index::parse(text).unwrap();
        let mut doc = Doc::new(Path::new("/x/rtds.ron"), text);
        let tag = &root.items()[0];
        assert!(doc.de::<crate::tag::TagConfig>(tag, "tag 1").is_none());
        let e = &doc.errors.0[0];
        assert_eq!(e.line, 2);
        assert_eq!(e.message, "tag 1: `scale`: Expected float");
        assert_eq!(offset_in("ab\ncd", 2, 2), 4);
    }
}
