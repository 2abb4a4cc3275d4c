//! Where every value of a RON file is: the file read as a tree of spans,
//! so each part of the configuration is deserialized on its own (one bad
//! tag does not hide the next) and every error names the line of its own
//! key, never a line found by searching the text.
//!
//! It knows the RON the configuration uses: structs `(key: value)`,
//! named or not, tuples, lists, maps, strings (raw strings too), chars,
//! numbers, identifiers, comments (`//`, nested `/* */`) and the
//! `#![enable(…)]` attributes at the top. What it accepts, serde's RON
//! reader then checks in detail.

use std::ops::Range;

/// A value and where it is.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// Byte range in the text.
    pub span: Range<usize>,
    /// What it is.
    pub kind: Kind,
}

/// The shape of a value.
#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    /// `(key: value, …)` or `Name(key: value, …)`.
    Struct(Vec<Field>),
    /// `[a, b]`, `(a, b)` or `Name(a, b)` (`Some(x)` too).
    Seq(Vec<Node>),
    /// `{k: v, …}`.
    Map(Vec<(Node, Node)>),
    /// A string, number, char, bool or bare identifier.
    Scalar,
}

/// One `key: value` of a struct.
#[derive(Debug, Clone, PartialEq)]
pub struct Field {
    /// The key.
    pub key: String,
    /// Where the key is.
    pub key_at: usize,
    /// Its value.
    pub value: Node,
}

impl Node {
    /// The struct's fields (none for other values).
    pub fn fields(&self) -> &[Field] {
        match &self.kind {
            Kind::Struct(f) => f,
            _ => &[],
        }
    }

    /// The list's items (none for other values).
    pub fn items(&self) -> &[Node] {
        match &self.kind {
            Kind::Seq(s) => s,
            _ => &[],
        }
    }

    /// Field `key`, if the struct has it.
    pub fn field(&self, key: &str) -> Option<&Field> {
        self.fields().iter().find(|f| f.key == key)
    }
}

/// A syntax error: the byte offset and what was expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    /// Byte offset of the offending character.
    pub at: usize,
    /// What was wrong.
    pub message: String,
}

/// Line numbers of byte offsets.
#[derive(Debug, Clone)]
pub struct Lines(Vec<usize>);

impl Lines {
    /// The start of every line of `text`.
    pub fn of(text: &str) -> Lines {
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Lines(starts)
    }

    /// The 1-based line of byte `offset`.
    pub fn line(&self, offset: usize) -> usize {
        self.0.partition_point(|&s| s <= offset)
    }
}

/// Reads `text` as one RON value.
pub fn parse(text: &str) -> Result<Node, SyntaxError> {
    let mut p = Parser {
        s: text.as_bytes(),
        i: 0,
        depth: 0,
    };
    p.trivia()?;
    let node = p.value()?;
    p.trivia()?;
    if p.i < p.s.len() {
        return Err(p.err("text after the end of the configuration"));
    }
    Ok(node)
}

/// Deepest nesting read: far beyond any configuration, and a bound on the
/// recursion for whatever a file holds.
const MAX_DEPTH: usize = 64;

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
    depth: usize,
}

impl Parser<'_> {
    fn err(&self, message: &str) -> SyntaxError {
        SyntaxError {
            at: self.i.min(self.s.len()),
            message: message.into(),
        }
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    /// Skips whitespace, comments and `#![…]` attributes.
    fn trivia(&mut self) -> Result<(), SyntaxError> {
        loop {
            match (self.peek(), self.s.get(self.i + 1)) {
                (Some(c), _) if c.is_ascii_whitespace() => self.i += 1,
                (Some(b'/'), Some(b'/')) => {
                    while self.peek().is_some_and(|c| c != b'\n') {
                        self.i += 1;
                    }
                }
                (Some(b'/'), Some(b'*')) => {
                    let start = self.i;
                    self.i += 2;
                    let mut open = 1;
                    while open > 0 {
                        match (self.peek(), self.s.get(self.i + 1)) {
                            (None, _) => {
                                self.i = start;
                                return Err(self.err("a /* comment is not closed"));
                            }
                            (Some(b'*'), Some(b'/')) => {
                                open -= 1;
                                self.i += 2;
                            }
                            (Some(b'/'), Some(b'*')) => {
                                open += 1;
                                self.i += 2;
                            }
                            _ => self.i += 1,
                        }
                    }
                }
                (Some(b'#'), Some(b'!')) => {
                    while self.peek().is_some_and(|c| c != b']') {
                        self.i += 1;
                    }
                    if self.peek().is_none() {
                        return Err(self.err("an attribute #![…] is not closed"));
                    }
                    self.i += 1;
                }
                _ => return Ok(()),
            }
        }
    }

    fn value(&mut self) -> Result<Node, SyntaxError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.err("values nested too deeply"));
        }
        let node = self.value_inner();
        self.depth -= 1;
        node
    }

    fn value_inner(&mut self) -> Result<Node, SyntaxError> {
        let start = self.i;
        match self.peek() {
            None => Err(self.err("a value is missing")),
            Some(b'(') => self.parens(start),
            Some(b'[') => {
                self.i += 1;
                let items = self.list(b']')?;
                Ok(self.node(start, Kind::Seq(items)))
            }
            Some(b'{') => {
                self.i += 1;
                let mut entries = Vec::new();
                loop {
                    self.trivia()?;
                    if self.peek() == Some(b'}') {
                        self.i += 1;
                        return Ok(self.node(start, Kind::Map(entries)));
                    }
                    let k = self.value()?;
                    self.trivia()?;
                    self.expect(b':')?;
                    self.trivia()?;
                    let v = self.value()?;
                    entries.push((k, v));
                    self.trivia()?;
                    match self.peek() {
                        Some(b',') => self.i += 1,
                        Some(b'}') => {}
                        _ => return Err(self.err("expected `,` or `}`")),
                    }
                }
            }
            Some(b'"') => {
                self.string()?;
                Ok(self.node(start, Kind::Scalar))
            }
            Some(b'r') if matches!(self.s.get(self.i + 1), Some(b'"' | b'#')) => {
                self.raw_string()?;
                Ok(self.node(start, Kind::Scalar))
            }
            Some(b'b') if self.s.get(self.i + 1) == Some(&b'"') => {
                self.i += 1;
                self.string()?;
                Ok(self.node(start, Kind::Scalar))
            }
            Some(b'\'') => {
                // Up to the next unescaped quote (`'\''`, `'\u{1F600}'`).
                self.i += 1;
                loop {
                    match self.peek() {
                        None | Some(b'\n') => {
                            self.i = start;
                            return Err(self.err("a char is not closed"));
                        }
                        Some(b'\\') => self.i += 2,
                        Some(b'\'') => break,
                        Some(_) => self.i += 1,
                    }
                }
                self.i += 1;
                Ok(self.node(start, Kind::Scalar))
            }
            Some(c) if c.is_ascii_alphabetic() || c == b'_' => {
                self.ident();
                self.trivia()?;
                if self.peek() == Some(b'(') {
                    // A named struct or tuple (`Some(x)`).
                    let mut n = self.parens(self.i)?;
                    n.span.start = start;
                    return Ok(n);
                }
                Ok(self.node(start, Kind::Scalar))
            }
            Some(c) if c.is_ascii_digit() || matches!(c, b'-' | b'+' | b'.') => {
                self.i += 1;
                while self.peek().is_some_and(|c| {
                    c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'+' | b'-')
                }) {
                    self.i += 1;
                }
                Ok(self.node(start, Kind::Scalar))
            }
            Some(_) => Err(self.err("expected a value")),
        }
    }

    /// `( … )`: a struct when it starts with `key:`, else a tuple.
    fn parens(&mut self, start: usize) -> Result<Node, SyntaxError> {
        self.expect(b'(')?;
        self.trivia()?;
        let at = self.i;
        let is_struct = self
            .peek()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == b'_')
            && {
                self.ident();
                self.trivia()?;
                let colon = self.peek() == Some(b':') && self.s.get(self.i + 1) != Some(&b':');
                self.i = at;
                colon
            };
        if !is_struct {
            let items = self.list(b')')?;
            return Ok(self.node(start, Kind::Seq(items)));
        }
        let mut fields = Vec::new();
        loop {
            self.trivia()?;
            if self.peek() == Some(b')') {
                self.i += 1;
                return Ok(self.node(start, Kind::Struct(fields)));
            }
            let key_at = self.i;
            if !self
                .peek()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == b'_')
            {
                return Err(self.err("expected a key (name: value)"));
            }
            self.ident();
            let key = String::from_utf8_lossy(&self.s[key_at..self.i]).into_owned();
            self.trivia()?;
            self.expect(b':')?;
            self.trivia()?;
            let value = self.value()?;
            fields.push(Field { key, key_at, value });
            self.trivia()?;
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b')') => {}
                _ => return Err(self.err("expected `,` or `)`")),
            }
        }
    }

    /// Values separated by commas up to `close` (consumed).
    fn list(&mut self, close: u8) -> Result<Vec<Node>, SyntaxError> {
        let mut items = Vec::new();
        loop {
            self.trivia()?;
            if self.peek() == Some(close) {
                self.i += 1;
                return Ok(items);
            }
            items.push(self.value()?);
            self.trivia()?;
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(c) if c == close => {}
                _ => {
                    return Err(self.err(&format!("expected `,` or `{}`", close as char)));
                }
            }
        }
    }

    fn ident(&mut self) {
        while self
            .peek()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == b'_')
        {
            self.i += 1;
        }
    }

    fn string(&mut self) -> Result<(), SyntaxError> {
        let start = self.i;
        self.expect(b'"')?;
        loop {
            match self.peek() {
                None => {
                    self.i = start;
                    return Err(self.err("a string is not closed"));
                }
                Some(b'\\') => self.i += 2,
                Some(b'"') => {
                    self.i += 1;
                    return Ok(());
                }
                Some(_) => self.i += 1,
            }
        }
    }

    fn raw_string(&mut self) -> Result<(), SyntaxError> {
        let start = self.i;
        self.i += 1;
        let mut hashes = 0;
        while self.peek() == Some(b'#') {
            hashes += 1;
            self.i += 1;
        }
        self.expect(b'"')?;
        loop {
            match self.peek() {
                None => {
                    self.i = start;
                    return Err(self.err("a raw string is not closed"));
                }
                Some(b'"')
                    if self.s[self.i + 1..]
                        .iter()
                        .take(hashes)
                        .filter(|&&c| c == b'#')
                        .count()
                        == hashes =>
                {
                    self.i += 1 + hashes;
                    return Ok(());
                }
                Some(_) => self.i += 1,
            }
        }
    }

    fn expect(&mut self, c: u8) -> Result<(), SyntaxError> {
        if self.peek() == Some(c) {
            self.i += 1;
            Ok(())
        } else {
            Err(self.err(&format!("expected `{}`", c as char)))
        }
    }

    fn node(&self, start: usize, kind: Kind) -> Node {
        Node {
            span: start..self.i,
            kind,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_values_are_found_where_they_are() {
        let text = r##"#![enable(implicit_some)]
// a comment with (parens: and colons)
(
    cycle_ms: 100, /* nested /* comment */ */
    storage: (path: "a\"b.db"),
    connectors: [
        Connector(name: "plc", tags: [(name: "T", address: 'x'), (name: r#"R"#, span: (0, 1))]),
    ],
    map: {"k": 1},
    opt: Some(5),
)
"##;
        let root = parse(text).unwrap();
        let lines = Lines::of(text);
        let keys: Vec<&str> = root.fields().iter().map(|f| f.key.as_str()).collect();
        assert_eq!(keys, ["cycle_ms", "storage", "connectors", "map", "opt"]);
        let f = root.field("storage").unwrap();
        assert_eq!(lines.line(f.key_at), 5);
        assert_eq!(&text[f.value.span.clone()], r#"(path: "a\"b.db")"#);
        let conn = &root.field("connectors").unwrap().value.items()[0];
        assert_eq!(lines.line(conn.span.start), 7);
        let tags = conn.field("tags").unwrap().value.items();
        assert_eq!(tags.len(), 2);
        assert_eq!(
            &text[tags[1].span.clone()],
            r##"(name: r#"R"#, span: (0, 1))"##
        );
        assert_eq!(tags[1].field("span").unwrap().value.items().len(), 2);
        assert!(matches!(
            root.field("opt").unwrap().value.kind,
            Kind::Seq(_)
        ));
    }

    #[test]
    fn broken_text_is_an_error_at_its_place_never_a_panic() {
        for (text, at) in [
            ("(a: 1", 5),
            ("(a: \"open)", 4),
            ("(a: [1, 2)", 9),
            ("(a 1)", 3),
            ("(a: 1) x", 7),
            ("/* open", 0),
            ("", 0),
        ] {
            assert_eq!(parse(text).unwrap_err().at, at, "{text}");
        }
        let deep = "[".repeat(1000);
        assert!(parse(&deep).is_err());
        assert_eq!(Lines::of("a\nb\n").line(2), 2);
    }
}
