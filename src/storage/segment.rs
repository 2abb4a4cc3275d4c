//! Segment files: the archive as the Historian receives it.
//!
//! Archive rows are written once, into the *open segment*, a SQLite file in
//! the local staging directory. When it is full or old enough it is closed:
//! renamed to its final name (`seg-<first id>-<last id>.sqlite`, both ids
//! zero-padded to 19 digits so names sort in id order) and never written
//! again. A closed file is immutable, so a reader on another host opens it
//! with `immutable=1` and needs no lock the share cannot give.
//!
//! Each commit also updates the `segment` table and the tags the rows refer
//! to, so the open file is a complete segment at every moment: a `kill -9`
//! leaves one that the next start reopens and continues.

use super::TagInfo;
use super::archive::Row;
use super::idmap::IdSet;
use super::retention::parse_ts;
use super::settings::SegmentLimits;
use crate::model::{Timestamp, format_ts};
use rusqlite::{Connection, OpenFlags, params};
use std::path::{Path, PathBuf};

/// Version of the segment schema, in `PRAGMA user_version` of every segment.
/// A reader refuses a version it does not know (see the README's policy).
/// 2: arrays as JSON text with strings quoted (1 wrote `[a,b]`, which
/// could not be read back), array types named with `[]`, the view's `type`.
pub const SEGMENT_VERSION: i64 = 2;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS tags (
    id          INTEGER PRIMARY KEY,
    name        TEXT NOT NULL,
    source      TEXT NOT NULL,
    address     TEXT NOT NULL,
    type        TEXT NOT NULL,
    description TEXT NOT NULL,
    unit        TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS archive (
    id     INTEGER PRIMARY KEY,
    tag_id INTEGER NOT NULL,
    value,
    status INTEGER NOT NULL,
    ts     TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS segment (
    key   TEXT PRIMARY KEY,
    value
);
CREATE VIEW IF NOT EXISTS archive_named AS
    SELECT a.id, t.name, a.value, a.status, a.ts, t.type
    FROM archive a JOIN tags t ON t.id = a.tag_id;
";

/// Name of the open segment in the staging directory.
pub const OPEN_NAME: &str = "open.sqlite";

/// The file name of a closed segment holding ids `first..=last`.
pub fn file_name(first: i64, last: i64) -> String {
    format!("seg-{first:019}-{last:019}.sqlite")
}

/// The id range a segment's file name states; `None` for any other file
/// (temporary files, the ack file, a user's notes).
pub fn parse_name(name: &str) -> Option<(i64, i64)> {
    let ids = name.strip_prefix("seg-")?.strip_suffix(".sqlite")?;
    let (a, b) = ids.split_once('-')?;
    if a.len() != 19 || b.len() != 19 || !(a.bytes().chain(b.bytes()).all(|c| c.is_ascii_digit())) {
        return None;
    }
    let (first, last) = (a.parse().ok()?, b.parse().ok()?);
    (first <= last).then_some((first, last))
}

/// What RTDS knows about a closed segment.
#[derive(Debug, Clone, PartialEq)]
pub struct SegmentInfo {
    /// First archive id.
    pub first: i64,
    /// Last archive id.
    pub last: i64,
    /// Rows (`last - first + 1`).
    pub rows: u64,
    /// File size.
    pub bytes: u64,
    /// Newest row time stamp (for age limits and time-stamp acknowledgements).
    pub max_ts: Option<Timestamp>,
    /// When it was renamed into the outbox (RTDS's clock); `None` while it
    /// waits in staging. Segments found at start count as published then.
    pub published_at: Option<Timestamp>,
}

impl SegmentInfo {
    /// Reads a closed segment's facts from its `segment` table.
    pub fn read(path: &Path) -> Result<SegmentInfo, String> {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(parse_name)
            .ok_or_else(|| format!("{}: not a segment name", path.display()))?;
        let bytes = std::fs::metadata(path)
            .map_err(|e| format!("{}: {e}", path.display()))?
            .len();
        let conn = open_immutable(path)?;
        let max_ts: Option<String> = conn
            .query_row("SELECT value FROM segment WHERE key = 'max_ts'", [], |r| {
                r.get(0)
            })
            .map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(SegmentInfo {
            first: name.0,
            last: name.1,
            rows: (name.1 - name.0 + 1) as u64,
            bytes,
            max_ts: max_ts.and_then(|t| parse_ts(&t).ok()),
            published_at: None,
        })
    }
}

/// Opens a closed segment read-only without locking, as a reader should.
pub fn open_immutable(path: &Path) -> Result<Connection, String> {
    let uri = format!(
        "file:{}?mode=ro&immutable=1",
        path.display()
            .to_string()
            .replace('%', "%25")
            .replace('?', "%3f")
            .replace('#', "%23")
    );
    Connection::open_with_flags(
        uri,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI,
    )
    .map_err(|e| format!("{}: {e}", path.display()))
}

/// The segment being written.
pub struct OpenSegment {
    conn: Connection,
    path: PathBuf,
    /// First id in it; `None` while empty.
    first: Option<i64>,
    /// The id the next row gets.
    pub next_id: i64,
    rows: u64,
    min_ts: Option<Timestamp>,
    max_ts: Option<Timestamp>,
    /// When its first row was written (RTDS's clock): the age limit counts
    /// from here.
    created: Option<Timestamp>,
    /// Tags already described in its `tags` table.
    described: IdSet,
    synchronous: String,
    broken: bool,
    /// The schema version the file was started with: an open segment an
    /// older RTDS left is closed as it is, never continued in another
    /// encoding.
    pub version: i64,
}

impl OpenSegment {
    /// Opens `dir/open.sqlite`, continuing the one a previous run left (a
    /// hot journal is rolled back by the read-write open), or creates it.
    /// Ids continue from the larger of what the file holds and `next_id`.
    /// `synchronous` holds the PRAGMA statements to run on the connection
    /// (see [`super::StorageConfig::segment_pragmas`]).
    pub fn open(dir: &Path, synchronous: &str, next_id: i64) -> rusqlite::Result<OpenSegment> {
        let path = dir.join(OPEN_NAME);
        let conn = Connection::open(&path)?;
        conn.busy_timeout(std::time::Duration::from_secs(2))?;
        let _: String = conn.query_row("PRAGMA journal_mode=DELETE", [], |r| r.get(0))?;
        conn.execute_batch(synchronous)?;
        let had: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        conn.execute_batch(SCHEMA)?;
        let (first, last, rows): (Option<i64>, Option<i64>, i64) =
            conn.query_row("SELECT min(id), max(id), count(*) FROM archive", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })?;
        let version = if rows > 0 && had != 0 {
            had
        } else {
            conn.pragma_update(None, "user_version", SEGMENT_VERSION)?;
            SEGMENT_VERSION
        };
        let meta = |key: &str| -> rusqlite::Result<Option<Timestamp>> {
            let t: Option<String> = conn
                .query_row("SELECT value FROM segment WHERE key = ?1", [key], |r| {
                    r.get(0)
                })
                .or_else(|e| match e {
                    rusqlite::Error::QueryReturnedNoRows => Ok(None),
                    e => Err(e),
                })?;
            Ok(t.and_then(|t| parse_ts(&t).ok()))
        };
        let (min_ts, max_ts, created) = (meta("min_ts")?, meta("max_ts")?, meta("created_at")?);
        let described = {
            let mut st = conn.prepare("SELECT id FROM tags")?;
            st.query_map([], |r| r.get(0))?
                .collect::<rusqlite::Result<IdSet>>()?
        };
        Ok(OpenSegment {
            next_id: last.map_or(next_id, |l| (l + 1).max(next_id)),
            conn,
            path,
            first,
            rows: rows as u64,
            min_ts,
            max_ts,
            created: created.or(if rows > 0 {
                Some(chrono::Utc::now())
            } else {
                None
            }),
            described,
            synchronous: synchronous.to_string(),
            broken: false,
            version,
        })
    }

    /// A stand-in for a segment file that cannot be opened.
    pub fn broken(dir: &Path, synchronous: &str, next_id: i64) -> OpenSegment {
        OpenSegment {
            conn: Connection::open_in_memory().expect("in-memory SQLite"),
            path: dir.join(OPEN_NAME),
            first: None,
            next_id,
            rows: 0,
            min_ts: None,
            max_ts: None,
            created: None,
            described: IdSet::default(),
            synchronous: synchronous.to_string(),
            broken: true,
            version: SEGMENT_VERSION,
        }
    }

    /// Describes tag `id` again with its next row (its type was learned
    /// after this segment described it without one).
    pub fn redescribe(&mut self, id: i64) {
        self.described.remove(id);
    }

    /// Rows in it.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Bytes of the file.
    pub fn bytes(&self) -> u64 {
        std::fs::metadata(&self.path).map_or(0, |m| m.len())
    }

    /// Writes `rows` (tag id, row) in one transaction with ids from
    /// `next_id` on. On error nothing is written and nothing changes.
    pub fn append(
        &mut self,
        rows: &[(i64, Row)],
        tags: &super::idmap::IdMap<TagInfo>,
    ) -> rusqlite::Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        if self.broken {
            return Err(rusqlite::Error::InvalidPath(self.path.clone()));
        }
        let now = chrono::Utc::now();
        // Tags described in this transaction: they join `described` only
        // when it commits.
        let mut described = IdSet::default();
        let mut min_ts = self.min_ts;
        let mut max_ts = self.max_ts;
        let tx = self.conn.unchecked_transaction()?;
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO archive (id, tag_id, value, status, ts) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            let mut describe = tx.prepare_cached(
                "INSERT OR REPLACE INTO tags (id, name, source, address, type, description, unit)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?;
            let mut ts_text = TsText::default();
            for (k, (tag, row)) in rows.iter().enumerate() {
                if !self.described.contains(*tag) && described.insert(*tag) {
                    let fallback;
                    let t = match tags.get(tag) {
                        Some(t) => t,
                        None => {
                            fallback = TagInfo::unknown(*tag);
                            &fallback
                        }
                    };
                    describe.execute(params![
                        tag,
                        t.name,
                        t.source,
                        t.address,
                        t.data_type,
                        t.description,
                        t.unit
                    ])?;
                }
                insert.execute(params![
                    self.next_id + k as i64,
                    tag,
                    row.value.as_ref().map(super::encoding::to_sql),
                    row.status.0,
                    ts_text.get(&row.ts)
                ])?;
                min_ts = Some(min_ts.map_or(row.ts, |m| m.min(row.ts)));
                max_ts = Some(max_ts.map_or(row.ts, |m| m.max(row.ts)));
            }
            let first = self.first.unwrap_or(self.next_id);
            let last = self.next_id + rows.len() as i64 - 1;
            let created = self.created.unwrap_or(now);
            let mut meta =
                tx.prepare_cached("INSERT OR REPLACE INTO segment (key, value) VALUES (?1, ?2)")?;
            meta.execute(params!["first_id", first])?;
            meta.execute(params!["last_id", last])?;
            meta.execute(params!["rows", last - first + 1])?;
            meta.execute(params!["min_ts", min_ts.as_ref().map(format_ts)])?;
            meta.execute(params!["max_ts", max_ts.as_ref().map(format_ts)])?;
            meta.execute(params!["created_at", format_ts(&created)])?;
            meta.execute(params!["rtds_version", env!("CARGO_PKG_VERSION")])?;
            meta.execute(params!["gateway", hostname()])?;
        }
        tx.commit()?;
        self.first.get_or_insert(self.next_id);
        self.created.get_or_insert(now);
        self.next_id += rows.len() as i64;
        self.rows += rows.len() as u64;
        self.min_ts = min_ts;
        self.max_ts = max_ts;
        for id in described.iter() {
            self.described.insert(id);
        }
        Ok(())
    }

    /// Whether a limit says it is time to close (never when empty).
    pub fn is_due(&self, limits: &SegmentLimits, now: Timestamp) -> bool {
        let Some(created) = self.created else {
            return false;
        };
        self.rows >= limits.max_rows
            || self.bytes() as f64 >= limits.max_mb * 1024.0 * 1024.0
            || (now - created).num_milliseconds() as f64 >= limits.max_age_s * 1000.0
    }

    /// Whether it is an in-memory stand-in after the file could not be
    /// opened: appends fail until it is reopened.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// Closes it: the connection is closed (the rollback journal is gone
    /// after the last commit), the file synced and renamed to its final name
    /// in the same directory, and the directory synced. Returns the segment
    /// to write next (a new one, or the same file reopened when the rename
    /// failed) and the closed segment (`None` when it was empty and stays
    /// open).
    pub fn close(self) -> (OpenSegment, Result<Option<SegmentInfo>, String>) {
        let Some(first) = self.first else {
            return (self, Ok(None));
        };
        let OpenSegment {
            conn,
            path,
            next_id,
            rows,
            max_ts,
            synchronous,
            ..
        } = self;
        // Dropping the connection closes the file (rusqlite finalizes its
        // cached statements first); after the last commit no journal is left.
        drop(conn);
        let last = next_id - 1;
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let target = dir.join(file_name(first, last));
        let result = sync_file(&path)
            .and_then(|()| std::fs::rename(&path, &target))
            .and_then(|()| sync_dir(&dir));
        if let Err(e) = result {
            return reopen(&dir, &synchronous, next_id, Err(e.to_string()));
        }
        let closed = SegmentInfo {
            first,
            last,
            rows,
            bytes: std::fs::metadata(&target).map_or(0, |m| m.len()),
            max_ts,
            published_at: None,
        };
        reopen(&dir, &synchronous, next_id, Ok(Some(closed)))
    }

    /// Every row in it, for replays and the last archived row per tag after
    /// a restart: (tag id, row) in id order.
    pub fn last_rows(&self) -> rusqlite::Result<Vec<(i64, Row)>> {
        let mut st = self.conn.prepare(
            "SELECT a.tag_id, a.value, a.status, a.ts, coalesce(t.type, '') FROM archive a
             LEFT JOIN tags t ON t.id = a.tag_id
             WHERE a.id IN (SELECT max(id) FROM archive GROUP BY tag_id) ORDER BY a.id",
        )?;
        let rows = st.query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, rusqlite::types::Value>(1)?,
                r.get::<_, u16>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, String>(4)?,
            ))
        })?;
        let mut out = Vec::new();
        for r in rows {
            let (tag, value, status, ts, ty) = r?;
            if let Ok(ts) = parse_ts(&ts) {
                out.push((
                    tag,
                    Row {
                        value: super::encoding::from_sql(value, &ty),
                        status: crate::model::Status(status),
                        ts,
                    },
                ));
            }
        }
        Ok(out)
    }
}

/// Opens the segment to write next, or an in-memory stand-in that refuses
/// appends when even that fails (rows then wait in the queue, and the next
/// flush tries to open the file again).
fn reopen(
    dir: &Path,
    synchronous: &str,
    next_id: i64,
    result: Result<Option<SegmentInfo>, String>,
) -> (OpenSegment, Result<Option<SegmentInfo>, String>) {
    match OpenSegment::open(dir, synchronous, next_id) {
        Ok(s) => (s, result),
        Err(e) => {
            let broken = OpenSegment::broken(dir, synchronous, next_id);
            let result = match result {
                Ok(closed) => {
                    log::error!(
                        "storage: cannot open a new segment in {}: {e}",
                        dir.display()
                    );
                    Ok(closed)
                }
                Err(why) => Err(format!("{why}; reopening failed: {e}")),
            };
            (broken, result)
        }
    }
}

/// fsync of a file's contents.
pub fn sync_file(path: &Path) -> std::io::Result<()> {
    std::fs::File::open(path)?.sync_all()
}

/// fsync of a directory, so a rename in it survives a power cut.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// The gateway's host name, recorded in each segment so a Historian
/// collecting from several gateways can tell them apart.
fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates
    // when the name fits, and we stop at the first NUL or the end.
    let ok = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0;
    if !ok {
        return String::new();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// Formats time stamps as [`format_ts`] does, reusing the text: a poll's
/// samples share their time stamp, and within one second only the
/// milliseconds change (three digits patched in place), so a row costs a
/// full formatting only when its second differs from the last row's.
#[derive(Default)]
pub struct TsText {
    /// The last text and the whole second it was made for.
    last: Option<(i64, String)>,
}

impl TsText {
    /// The stored form of `ts`.
    pub fn get(&mut self, ts: &Timestamp) -> &str {
        let second = ts.timestamp();
        let millis = ts.timestamp_subsec_millis();
        match &mut self.last {
            // `…:SS.mmmZ`: the milliseconds are the three bytes before `Z`
            // (a leap second, millis ≥ 1000, is formatted whole).
            Some((s, text)) if *s == second && millis < 1000 && text.len() >= 4 => {
                let n = text.len();
                let digits = [
                    b'0' + (millis / 100) as u8,
                    b'0' + (millis / 10 % 10) as u8,
                    b'0' + (millis % 10) as u8,
                ];
                // SAFETY: ASCII digits replace ASCII digits.
                unsafe { text.as_bytes_mut()[n - 4..n - 1].copy_from_slice(&digits) };
            }
            last => *last = Some((second, format_ts(ts))),
        }
        self.last.as_ref().map_or("", |(_, t)| t.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_stamp_text_is_format_ts_whatever_the_sequence() {
        use chrono::TimeZone;
        let base = chrono::Utc.timestamp_opt(1_800_000_000, 0).unwrap();
        let ms = |n: i64| base + chrono::Duration::microseconds(n);
        let mut cache = TsText::default();
        let sequence = [
            ms(0),
            ms(0),
            ms(999),
            ms(1_000),
            ms(123_456),
            ms(5_000),
            ms(999_999),
            ms(1_000_000),
            ms(999_000),
            ms(-1),
            ms(86_400_000_000 * 365 * 8000),
            ms(86_400_000_000 * 365 * 8000 + 7_000),
            ms(250_000),
        ];
        for ts in sequence {
            assert_eq!(cache.get(&ts), format_ts(&ts), "{ts:?}");
        }
    }

    #[test]
    fn names_sort_in_id_order_and_parse_back() {
        let a = file_name(9, 10);
        let b = file_name(11, 2_000_000_000_000);
        assert_eq!(a, "seg-0000000000000000009-0000000000000000010.sqlite");
        assert!(a < b);
        assert_eq!(parse_name(&b), Some((11, 2_000_000_000_000)));
        assert_eq!(
            parse_name(&file_name(i64::MAX, i64::MAX)),
            Some((i64::MAX, i64::MAX))
        );
        for bad in [
            "open.sqlite",
            ".seg-0000000000000000009-0000000000000000010.sqlite.tmp",
            "seg-9-10.sqlite",
            "seg-0000000000000000011-0000000000000000010.sqlite",
            "seg-000000000000000000a-0000000000000000010.sqlite",
            "ack.txt",
        ] {
            assert_eq!(parse_name(bad), None, "{bad}");
        }
    }
}
