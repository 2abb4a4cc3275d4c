//! The manual cannot drift from the code: every fenced `ron` block in the
//! README, CONTRIBUTING, CHANGELOG and docs/ goes through `rtds check`
//! (fragments wrapped first, as their marker says), and every relative link
//! points at a file, and a heading, that exists. The conventions are in
//! CONTRIBUTING.md ("Configuration snippets in the manual").
//!
//! Markdown is read line by line with the few rules the manual uses
//! (fences of backticks or tildes, ATX headings, inline links); no crate.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Component, Path, PathBuf};
use std::process::Command;

/// The repository's root.
fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The pages of the manual, relative to the root, sorted.
fn pages() -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = ["README.md", "CONTRIBUTING.md", "CHANGELOG.md"]
        .into_iter()
        .map(PathBuf::from)
        .filter(|p| root().join(p).is_file())
        .collect();
    let mut dirs = vec![PathBuf::from("docs")];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = fs::read_dir(root().join(&dir)) else {
            continue;
        };
        for entry in entries.flatten() {
            let rel = dir.join(entry.file_name());
            if entry.path().is_dir() {
                dirs.push(rel);
            } else if rel.extension().is_some_and(|e| e == "md") {
                out.push(rel);
            }
        }
    }
    out.sort();
    out
}

/// How a `ron` block is checked, from the HTML comment before its fence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// No marker: a whole configuration file.
    Config,
    /// `<!-- check: fields -->`: top-level fields.
    Fields,
    /// `<!-- check: connectors -->`: entries of `connectors`.
    Connectors,
    /// `<!-- check: skip -->`: not checked.
    Skip,
}

/// A `ron` block: the page, the line of its opening fence (1-based), how
/// to check it, and its text.
#[derive(Debug)]
struct Snippet {
    page: PathBuf,
    fence_line: usize,
    kind: Kind,
    text: String,
}

/// A fence line: its character (backtick or tilde), its length and the
/// info string after it.
fn fence(line: &str) -> Option<(char, usize, &str)> {
    let trimmed = line.trim_start();
    let c = trimmed.chars().next()?;
    if c != '`' && c != '~' {
        return None;
    }
    let n = trimmed.chars().take_while(|&x| x == c).count();
    if n < 3 {
        return None;
    }
    Some((c, n, trimmed[n..].trim()))
}

/// Whether `line` closes a block opened by `open` (same character, at
/// least as long, no info string).
fn closes(line: &str, open: (char, usize)) -> bool {
    matches!(fence(line), Some((c, n, info)) if c == open.0 && n >= open.1 && info.is_empty())
}

/// A page's lines, each with whether it lies inside a fenced block (the
/// fence lines themselves count as inside).
fn fenced(text: &str) -> Vec<(&str, bool)> {
    let mut open: Option<(char, usize)> = None;
    let mut out = Vec::new();
    for line in text.lines() {
        match open {
            Some(f) => {
                if closes(line, f) {
                    open = None;
                }
            }
            None => open = fence(line).map(|(c, n, _)| (c, n)),
        }
        out.push((line, open.is_some() || fence(line).is_some()));
    }
    out
}

/// The word of a marker comment `<!-- check: WORD -->`, if `line` is one.
fn marker(line: &str) -> Option<&str> {
    line.trim()
        .strip_prefix("<!--")?
        .strip_suffix("-->")?
        .trim()
        .strip_prefix("check:")
        .map(str::trim)
}

/// The fenced block being read: its fence, and for a `ron` block the line
/// of its opening fence and how to check it.
struct Open {
    fence: (char, usize),
    ron: Option<(usize, Kind)>,
    body: String,
}

/// Every `ron` block of a page; faults in its markers are added to
/// `faults`.
fn snippets(page: &Path, text: &str, faults: &mut Vec<String>) -> Vec<Snippet> {
    let at = |line: usize| format!("{}:{line}", page.display());
    let stray = |line: usize| format!("{}: a check marker not followed by a `ron` block", at(line));
    let mut out = Vec::new();
    let mut marked: Option<(usize, Kind)> = None;
    let mut open: Option<Open> = None;
    for (i, line) in text.lines().enumerate() {
        let number = i + 1;
        if let Some(block) = &mut open {
            if closes(line, block.fence) {
                if let Some((fence_line, kind)) = block.ron {
                    out.push(Snippet {
                        page: page.to_path_buf(),
                        fence_line,
                        kind,
                        text: std::mem::take(&mut block.body),
                    });
                }
                open = None;
            } else {
                block.body.push_str(line);
                block.body.push('\n');
            }
            continue;
        }
        if let Some((c, n, info)) = fence(line) {
            let lang = info
                .split(|x: char| x == ',' || x.is_whitespace())
                .next()
                .unwrap_or("");
            let mark = marked.take();
            let ron = if lang == "ron" {
                Some((number, mark.map_or(Kind::Config, |(_, k)| k)))
            } else {
                if let Some((m, _)) = mark {
                    faults.push(stray(m));
                }
                None
            };
            open = Some(Open {
                fence: (c, n),
                ron,
                body: String::new(),
            });
            continue;
        }
        if let Some(word) = marker(line) {
            if let Some((m, _)) = marked {
                faults.push(stray(m));
            }
            let kind = match word {
                "fields" => Kind::Fields,
                "connectors" => Kind::Connectors,
                "skip" => Kind::Skip,
                other => {
                    faults.push(format!(
                        "{}: unknown check marker `{other}` (fields, connectors or skip)",
                        at(number)
                    ));
                    Kind::Skip
                }
            };
            marked = Some((number, kind));
        } else if !line.trim().is_empty()
            && let Some((m, _)) = marked.take()
        {
            faults.push(stray(m));
        }
    }
    if let Some((m, _)) = marked {
        faults.push(stray(m));
    }
    if let Some(Open {
        ron: Some((start, _)),
        ..
    }) = open
    {
        faults.push(format!("{}: a `ron` block is never closed", at(start)));
    }
    out
}

/// The configuration file to check for a snippet, and how many lines were
/// put before the snippet's first line.
fn wrap(s: &Snippet) -> (String, usize) {
    const STORAGE: &str = "    storage: (path: \"../data/rtds.db\"),\n";
    match s.kind {
        Kind::Config | Kind::Skip => (s.text.clone(), 0),
        Kind::Fields => {
            let has_storage = s
                .text
                .lines()
                .any(|l| l.trim_start().starts_with("storage:"));
            if has_storage {
                (format!("(\n{})\n", s.text), 1)
            } else {
                (format!("(\n{STORAGE}{})\n", s.text), 2)
            }
        }
        Kind::Connectors => (
            format!("(\n{STORAGE}    connectors: [\n{}    ],\n)\n", s.text),
            3,
        ),
    }
}

/// `rtds check`'s message with the temporary file's lines turned into the
/// page's: `…/README.md-124.ron:5:` becomes `README.md:128:`.
fn relocate(message: &str, file: &Path, s: &Snippet, before: usize) -> String {
    let name = format!("{}:", file.display());
    let mut out = String::new();
    let mut rest = message;
    while let Some(at) = rest.find(&name) {
        out.push_str(&rest[..at]);
        let after = &rest[at + name.len()..];
        let digits: String = after.chars().take_while(char::is_ascii_digit).collect();
        let page = s.page.display();
        match digits.parse::<usize>() {
            Ok(line) if line > before => {
                out.push_str(&format!("{page}:{}", s.fence_line + line - before));
            }
            Ok(line) => {
                out.push_str(&format!(
                    "{page}:{} (line {line} of the wrapping)",
                    s.fence_line
                ));
            }
            Err(_) => out.push_str(&format!("{page}:{}:", s.fence_line)),
        }
        rest = &after[digits.len()..];
    }
    out.push_str(rest);
    out
}

/// A fresh directory under the system temp dir, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Scratch {
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let dir = std::env::temp_dir().join(format!("rtds-docs-{}-{stamp}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Copies the files (not subdirectories) of `from` into `to`.
fn copy_files(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap().flatten() {
        if entry.path().is_file() {
            fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

#[test]
fn every_ron_snippet_in_the_manual_passes_rtds_check() {
    let scratch = Scratch::new();
    // Snippets are checked as if they stood in conf/, beside the demo's
    // tag lists, with the demo's scripts in ../scripts.
    let conf = scratch.0.join("conf");
    copy_files(&root().join("conf"), &conf);
    copy_files(&root().join("scripts"), &scratch.0.join("scripts"));

    let mut faults = Vec::new();
    let mut all = Vec::new();
    for page in pages() {
        let text = fs::read_to_string(root().join(&page)).unwrap();
        all.extend(snippets(&page, &text, &mut faults));
    }
    let mut checked = 0;
    let mut skipped = 0;
    for s in &all {
        // A build without the OPC UA connector refuses its class by name.
        let no_opcua = !cfg!(feature = "opcua") && s.text.contains("connector=OpcUa");
        if s.kind == Kind::Skip || no_opcua {
            skipped += 1;
            continue;
        }
        let (config, before) = wrap(s);
        let name = format!(
            "{}-{}.ron",
            s.page.display().to_string().replace('/', "-"),
            s.fence_line
        );
        let file = conf.join(name);
        fs::write(&file, config).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_rtds"))
            .args(["check", "-c"])
            .arg(&file)
            .output()
            .expect("run rtds check");
        checked += 1;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            faults.push(format!(
                "{}:{}: `rtds check` refuses this {:?} snippet (exit {:?}):\n    {}",
                s.page.display(),
                s.fence_line,
                s.kind,
                out.status.code(),
                relocate(stderr.trim(), &file, s, before).replace('\n', "\n    ")
            ));
        }
    }
    println!(
        "{} ron snippets: {checked} checked, {skipped} skipped",
        all.len()
    );
    assert!(checked > 0, "no ron snippet found: is the manual there?");
    assert!(faults.is_empty(), "\n{}\n", faults.join("\n"));
}

/// GitHub's anchor for a heading: lower case, punctuation dropped, spaces
/// to `-`.
fn slug(heading: &str) -> String {
    heading
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// The anchors of a page's headings, a repeated one numbered as GitHub does.
fn anchors(text: &str) -> BTreeSet<String> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut out = BTreeSet::new();
    for (line, in_fence) in fenced(text) {
        if in_fence {
            continue;
        }
        let hashes = line.chars().take_while(|&c| c == '#').count();
        if !(1..=6).contains(&hashes) || !line[hashes..].starts_with(' ') {
            continue;
        }
        let base = slug(line[hashes..].trim().trim_end_matches('#').trim());
        let n = seen.entry(base.clone()).or_insert(0);
        out.insert(if *n == 0 { base } else { format!("{base}-{n}") });
        *n += 1;
    }
    out
}

/// `line` without its code spans (a run of N backticks up to the next run
/// of exactly N).
fn without_code(line: &str) -> String {
    let chars: Vec<char> = line.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    while i < chars.len() {
        if chars[i] != '`' {
            out.push(chars[i]);
            i += 1;
            continue;
        }
        let n = chars[i..].iter().take_while(|&&c| c == '`').count();
        let mut j = i + n;
        let mut close = None;
        while j < chars.len() {
            if chars[j] == '`' {
                let m = chars[j..].iter().take_while(|&&c| c == '`').count();
                if m == n {
                    close = Some(j + m);
                    break;
                }
                j += m;
            } else {
                j += 1;
            }
        }
        match close {
            Some(end) => {
                out.push(' ');
                i = end;
            }
            None => {
                out.extend(&chars[i..i + n]);
                i += n;
            }
        }
    }
    out
}

/// The targets of a line's inline links and images, `[text](target)`.
fn link_targets(line: &str) -> Vec<String> {
    let line = without_code(line);
    let mut out = Vec::new();
    let mut rest = line.as_str();
    while let Some(at) = rest.find("](") {
        let after = &rest[at + 2..];
        let Some(end) = after.find(')') else { break };
        let target = after[..end].split_whitespace().next().unwrap_or("");
        out.push(target.trim_matches(|c| c == '<' || c == '>').to_string());
        rest = &after[end..];
    }
    out
}

/// `base/rel` with `.` and `..` resolved, without touching the file system.
fn join(base: &Path, rel: &str) -> PathBuf {
    let mut out = PathBuf::new();
    for c in base.join(rel).components() {
        match c {
            Component::ParentDir => {
                if matches!(
                    out.components().next_back(),
                    None | Some(Component::ParentDir)
                ) {
                    out.push("..");
                } else {
                    out.pop();
                }
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

#[test]
fn every_relative_link_in_the_manual_points_at_something_that_exists() {
    let mut faults = Vec::new();
    let mut links = 0;
    let mut cache: BTreeMap<PathBuf, BTreeSet<String>> = BTreeMap::new();
    for page in pages() {
        let text = fs::read_to_string(root().join(&page)).unwrap();
        let dir = page.parent().unwrap_or(Path::new("")).to_path_buf();
        for (i, (line, in_fence)) in fenced(&text).into_iter().enumerate() {
            if in_fence {
                continue;
            }
            for target in link_targets(line) {
                if target.is_empty() || target.contains("://") || target.starts_with("mailto:") {
                    continue;
                }
                links += 1;
                let (path, anchor) = match target.split_once('#') {
                    Some((p, a)) => (p, Some(a)),
                    None => (target.as_str(), None),
                };
                let file = if path.is_empty() {
                    page.clone()
                } else {
                    join(&dir, path)
                };
                let at = format!("{}:{}", page.display(), i + 1);
                if file.components().next() == Some(Component::ParentDir)
                    || !root().join(&file).exists()
                {
                    faults.push(format!("{at}: `{target}`: no file {}", file.display()));
                    continue;
                }
                let Some(anchor) = anchor else { continue };
                if file.extension().is_none_or(|e| e != "md") {
                    continue;
                }
                let known = cache.entry(file.clone()).or_insert_with(|| {
                    anchors(&fs::read_to_string(root().join(&file)).unwrap_or_default())
                });
                if !known.contains(anchor) {
                    faults.push(format!(
                        "{at}: `{target}`: no heading `#{anchor}` in {}",
                        file.display()
                    ));
                }
            }
        }
    }
    println!("{links} relative links checked");
    assert!(links > 0, "no relative link found: is the manual there?");
    assert!(faults.is_empty(), "\n{}\n", faults.join("\n"));
}

#[test]
fn anchors_and_links_are_read_as_github_reads_them() {
    assert_eq!(
        slug("`connector=ModbusTcp` keys"),
        "connectormodbustcp-keys"
    );
    assert_eq!(
        slug("The live database (local only)"),
        "the-live-database-local-only"
    );
    assert_eq!(
        slug("For the Historian: reading and acknowledging"),
        "for-the-historian-reading-and-acknowledging"
    );
    let want: BTreeSet<String> = ["a", "tests", "tests-1"].map(String::from).into();
    assert_eq!(
        anchors("# A\n## Tests\n```\n# not a heading\n```\n## Tests\n"),
        want
    );
    assert_eq!(
        link_targets("see [x](a.md#b), `[y](no.md)` and ![i](p.png \"t\")"),
        vec!["a.md#b".to_string(), "p.png".to_string()]
    );
    let mut faults = Vec::new();
    let text = "<!-- check: fields -->\n```ron\nhttp: (),\n```\n\n~~~md\n```ron\n(\n```\n~~~\n";
    let got = snippets(Path::new("x.md"), text, &mut faults);
    assert!(faults.is_empty(), "{faults:?}");
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].fence_line, got[0].kind), (2, Kind::Fields));
    assert_eq!(got[0].text, "http: (),\n");
    snippets(
        Path::new("x.md"),
        "<!-- check: feilds -->\n```ron\n()\n```\n",
        &mut faults,
    );
    snippets(
        Path::new("x.md"),
        "<!-- check: skip -->\ntext\n",
        &mut faults,
    );
    assert_eq!(faults.len(), 2, "{faults:?}");
}
