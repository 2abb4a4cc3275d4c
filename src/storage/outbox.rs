//! The outbox: the directory the Historian reads (a share RTDS exports, or
//! a mounted remote one). RTDS only ever puts whole files into it, by
//! rename: closed segments, and its answer to the Historian's
//! acknowledgement. The Historian puts one file into it the same way: its
//! acknowledgement, `ack.txt`.
//!
//! Closed segments wait in the local staging directory until the outbox
//! takes them, in id order, so an unreachable share delays publication but
//! loses nothing.

use super::segment::{self, SegmentInfo, sync_dir, sync_file};
use crate::model::{Timestamp, format_ts};
use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The Historian's acknowledgement file in the outbox.
pub const ACK_FILE: &str = "ack.txt";
/// RTDS's answer to it.
pub const ACK_RESULT_FILE: &str = "ack-result.txt";

/// Segments on their way to the Historian, oldest first.
pub struct Outbox {
    /// The published directory.
    pub dir: PathBuf,
    /// The local staging directory.
    pub staging: PathBuf,
    /// Closed, waiting in staging.
    pub staged: VecDeque<SegmentInfo>,
    /// In the outbox, not yet acknowledged.
    pub published: VecDeque<SegmentInfo>,
    /// The last id ever published (survives acknowledgements).
    pub last_published: i64,
    /// Segments published since start.
    pub published_count: u64,
}

impl Outbox {
    /// Takes stock of both directories: leftover temporary files from an
    /// interrupted copy are removed, segments found are listed in id order.
    /// Segments already in the outbox count as published now (the only
    /// safe assumption for time-stamp acknowledgements).
    pub fn scan(dir: &Path, staging: &Path) -> Result<Outbox, String> {
        let now = chrono::Utc::now();
        // The share may come later; staging is what must work now.
        let mut published = list(dir).unwrap_or_else(|e| {
            log::error!("storage: outbox {e}; segments wait in staging until it is reachable");
            Vec::new()
        });
        for s in &mut published {
            s.published_at = Some(now);
        }
        let mut staged = list(staging)?;
        // A copy into the outbox that completed before a crash removed the
        // local one: the outbox has it, the staging copy goes.
        staged.retain(|s| {
            let twin = published
                .iter()
                .any(|p| p.first == s.first && p.last == s.last && p.bytes == s.bytes);
            if twin {
                let _ = std::fs::remove_file(staging.join(segment::file_name(s.first, s.last)));
            }
            !twin
        });
        let last_published = published.iter().map(|s| s.last).max().unwrap_or(0);
        Ok(Outbox {
            dir: dir.to_path_buf(),
            staging: staging.to_path_buf(),
            staged: staged.into(),
            published: published.into(),
            last_published,
            published_count: 0,
        })
    }

    /// The highest id in any closed segment, published or staged.
    pub fn last_id(&self) -> i64 {
        self.staged
            .back()
            .map(|s| s.last)
            .unwrap_or(0)
            .max(self.last_published)
    }

    /// Moves staged segments into the outbox, oldest first, until one fails.
    /// Returns how many went.
    pub fn publish(&mut self) -> Result<usize, String> {
        let mut n = 0;
        while let Some(s) = self.staged.front() {
            let name = segment::file_name(s.first, s.last);
            move_file(&self.staging.join(&name), &self.dir, &name)?;
            let mut s = self.staged.pop_front().unwrap_or_else(|| unreachable!());
            s.published_at = Some(chrono::Utc::now());
            self.last_published = self.last_published.max(s.last);
            self.published.push_back(s);
            self.published_count += 1;
            n += 1;
        }
        Ok(n)
    }

    /// Deletes published segments whose rows are all acknowledged (last id
    /// at most `id`). Returns (segments, rows) deleted; stops at the first
    /// file that cannot be deleted (retried later).
    pub fn delete_acked(&mut self, id: i64) -> Result<(u64, u64), String> {
        let mut done = (0, 0);
        while let Some(s) = self.published.front() {
            if s.last > id {
                break;
            }
            remove(&self.dir.join(segment::file_name(s.first, s.last)))?;
            done.0 += 1;
            done.1 += s.rows;
            self.published.pop_front();
        }
        Ok(done)
    }

    /// Every closed segment, oldest first (published, then staged).
    pub fn all(&self) -> impl Iterator<Item = &SegmentInfo> {
        self.published.iter().chain(self.staged.iter())
    }

    /// Drops the `n` oldest closed segments, unacknowledged (a retention
    /// limit). Returns the segments dropped.
    pub fn drop_oldest(&mut self, n: usize) -> Result<Vec<SegmentInfo>, String> {
        let mut gone = Vec::new();
        for _ in 0..n {
            let (s, dir) = match self.published.front() {
                Some(s) => (s.clone(), &self.dir),
                None => match self.staged.front() {
                    Some(s) => (s.clone(), &self.staging),
                    None => break,
                },
            };
            remove(&dir.join(segment::file_name(s.first, s.last)))?;
            if self.published.pop_front().is_none() {
                self.staged.pop_front();
            }
            gone.push(s);
        }
        Ok(gone)
    }

    /// The Historian's acknowledgement file, if there is one: at most
    /// [`MAX_ACK_BYTES`] of it (plus one, to tell it is longer), with the
    /// identity that tells a new request from one already answered.
    pub fn read_ack(&self) -> Option<AckFile> {
        use std::io::Read;
        let path = self.dir.join(ACK_FILE);
        let file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            // There, but not readable (a directory, no permission): that
            // gets an answer too.
            Err(e) => {
                let m = std::fs::symlink_metadata(&path).ok()?;
                return Some(AckFile {
                    id: FileId::of(&m),
                    bytes: Err(e.to_string()),
                    len: m.len(),
                });
            }
        };
        // The identity and the content of the same open file.
        let m = file.metadata().ok()?;
        let mut bytes = Vec::with_capacity(64);
        let read = file
            .take(MAX_ACK_BYTES as u64 + 1)
            .read_to_end(&mut bytes)
            .map(|_| bytes)
            .map_err(|e| e.to_string());
        Some(AckFile {
            id: FileId::of(&m),
            bytes: read,
            len: m.len(),
        })
    }

    /// Writes RTDS's answer next to it, whole or not at all.
    pub fn answer_ack(&self, text: &str) -> Result<(), String> {
        write_whole(&self.dir, ACK_RESULT_FILE, text.as_bytes())
    }
}

/// The closed segments in `dir`, oldest first. Temporary files left by an
/// interrupted copy are removed.
fn list(dir: &Path) -> Result<Vec<SegmentInfo>, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut out = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(".seg-") && name.ends_with(".tmp") {
            let _ = std::fs::remove_file(entry.path());
            continue;
        }
        if segment::parse_name(&name).is_none() {
            continue;
        }
        match SegmentInfo::read(&entry.path()) {
            Ok(s) => out.push(s),
            Err(e) => log::error!("storage: segment {e}; left where it is, not counted"),
        }
    }
    out.sort_by_key(|s| s.first);
    Ok(out)
}

/// Moves `from` into `dir` as `name`: a rename on the same file system,
/// else a copy under a temporary name, synced, then renamed, so a reader
/// of `dir` sees the whole file or nothing.
fn move_file(from: &Path, dir: &Path, name: &str) -> Result<(), String> {
    let target = dir.join(name);
    let fail = |e: std::io::Error| format!("publish {name} to {}: {e}", dir.display());
    match std::fs::rename(from, &target) {
        Ok(()) => return sync_dir(dir).map_err(fail),
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {}
        Err(e) => return Err(fail(e)),
    }
    let tmp = dir.join(format!(".{name}.tmp"));
    let copied = std::fs::copy(from, &tmp)
        .and_then(|_| sync_file(&tmp))
        .and_then(|()| std::fs::rename(&tmp, &target))
        .and_then(|()| sync_dir(dir));
    if let Err(e) = copied {
        let _ = std::fs::remove_file(&tmp);
        return Err(fail(e));
    }
    std::fs::remove_file(from).map_err(fail)
}

fn remove(path: &Path) -> Result<(), String> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("delete {}: {e}", path.display())),
    }
}

/// Writes `dir/name` under a temporary name, syncs it and renames it into
/// place.
pub fn write_whole(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), String> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let target = dir.join(name);
    let result = std::fs::File::create(&tmp)
        .and_then(|mut f| {
            f.write_all(bytes)?;
            f.sync_all()
        })
        .and_then(|()| std::fs::rename(&tmp, &target));
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("{}: {e}", target.display())
    })
}

/// Largest acknowledgement read: a request is one line of a few dozen
/// bytes; anything beyond this is refused without reading the rest.
pub const MAX_ACK_BYTES: usize = 4096;

/// Which file `ack.txt` is: a new request is a new file (renamed in) or a
/// rewrite of it (in place); the same content renamed in again is a new
/// request too (a Historian that lost its answer asks again).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileId {
    dev: u64,
    ino: u64,
    mtime_ns: i128,
    ctime_ns: i128,
    len: u64,
}

impl FileId {
    fn of(m: &std::fs::Metadata) -> FileId {
        use std::os::unix::fs::MetadataExt;
        let ns = |s: i64, n: i64| i128::from(s) * 1_000_000_000 + i128::from(n);
        FileId {
            dev: m.dev(),
            ino: m.ino(),
            mtime_ns: ns(m.mtime(), m.mtime_nsec()),
            ctime_ns: ns(m.ctime(), m.ctime_nsec()),
            len: m.len(),
        }
    }
}

/// The acknowledgement file as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckFile {
    /// Which file it is.
    pub id: FileId,
    /// Its first [`MAX_ACK_BYTES`] + 1 bytes, or why it could not be read.
    pub bytes: Result<Vec<u8>, String>,
    /// Its whole length.
    pub len: u64,
}

/// The answer file's text: the request (quoted, bounded), what was
/// decided, and the state in force.
pub fn answer_text(request: &str, result: &str, acked_id: i64, at: Timestamp) -> String {
    format!(
        "request: {request}\nresult: {result}\nacked_id: {acked_id}\nanswered_at: {}\n",
        format_ts(&at)
    )
}
