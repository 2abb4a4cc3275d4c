//! The local buffer the Historian reads: a SQLite file with a `current` row
//! per tag and an `archive` of changes.
//!
//! Storage runs on its own thread and receives whole cycles by channel, so a
//! slow disk or a Historian holding a read lock delays only this thread; the
//! batches queue in memory meanwhile and are written as one transaction as
//! soon as the file is free again.

use crate::config::StorageConfig;
use crate::model::{Sample, Status, Value, format_ts};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, unbounded};
use rusqlite::{Connection, params, types::ToSqlOutput, types::Value as SqlValue};
use std::fmt;
use std::path::PathBuf;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Version of the schema below, kept in `PRAGMA user_version` so a Historian
/// (or a later RTDS) can tell what it is reading.
pub const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS tags (
    id          INTEGER PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    source      TEXT NOT NULL,      -- connector name, or 'script'
    address     TEXT NOT NULL,
    type        TEXT NOT NULL,
    writable    INTEGER NOT NULL,
    description TEXT NOT NULL,
    unit        TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS current (
    tag_id INTEGER PRIMARY KEY REFERENCES tags(id),
    name   TEXT NOT NULL,
    value,
    status INTEGER NOT NULL,
    ts     TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS archive (
    id     INTEGER PRIMARY KEY AUTOINCREMENT,
    tag_id INTEGER NOT NULL REFERENCES tags(id),
    value,
    status INTEGER NOT NULL,
    ts     TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS archive_ts ON archive(ts);
CREATE INDEX IF NOT EXISTS archive_tag_ts ON archive(tag_id, ts);
CREATE VIEW IF NOT EXISTS archive_named AS
    SELECT a.id, t.name, a.value, a.status, a.ts
    FROM archive a JOIN tags t ON t.id = a.tag_id;
";

/// A storage failure, with what was being done.
#[derive(Debug)]
pub struct StorageError {
    /// The database file.
    pub path: PathBuf,
    /// What was being done.
    pub action: &'static str,
    /// SQLite's error.
    pub source: rusqlite::Error,
}

impl fmt::Display for StorageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {}: {}",
            self.path.display(),
            self.action,
            self.source
        )
    }
}

impl std::error::Error for StorageError {}

/// What the Historian's `tags` table says about a tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagInfo {
    /// Unique tag name.
    pub name: String,
    /// Connector name, or `script` for calculated tags.
    pub source: String,
    /// Address in the source (empty for calculated tags).
    pub address: String,
    /// Data type name.
    pub data_type: String,
    /// Whether scripts may write it to its source.
    pub writable: bool,
    /// Free text.
    pub description: String,
    /// Engineering unit.
    pub unit: String,
}

/// Messages to the storage thread.
#[derive(Debug)]
enum Message {
    /// Tags whose server index starts at `first`, in order.
    Tags { first: usize, tags: Vec<TagInfo> },
    /// One cycle's samples (server tag indexes).
    Cycle(Vec<Sample>),
}

/// Totals reported when storage closes, for the shutdown log line and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StorageStats {
    /// Transactions committed.
    pub commits: u64,
    /// Samples written to `current`.
    pub samples: u64,
    /// Rows added to `archive`.
    pub archived: u64,
}

/// The running storage thread.
pub struct Storage {
    tx: Sender<Message>,
    thread: JoinHandle<StorageStats>,
}

impl Storage {
    /// Opens (creating if needed) the database and starts the thread. Opening
    /// happens here, on the caller's thread, so a bad path stops RTDS at
    /// start with a clear error rather than later in the background.
    pub fn start(cfg: &StorageConfig) -> Result<Storage, StorageError> {
        let writer = Writer::open(cfg)?;
        let (tx, rx) = unbounded();
        let thread = std::thread::Builder::new()
            .name("storage".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| StorageError {
                path: cfg.path.clone(),
                action: "start storage thread",
                source: rusqlite::Error::ToSqlConversionFailure(Box::new(e)),
            })?;
        Ok(Storage { tx, thread })
    }

    /// Registers tags `first..first + tags.len()` of the server's table.
    pub fn tags(&self, first: usize, tags: Vec<TagInfo>) {
        let _ = self.tx.send(Message::Tags { first, tags });
    }

    /// Hands over one cycle's samples; never blocks.
    pub fn cycle(&self, samples: Vec<Sample>) {
        if !samples.is_empty() {
            let _ = self.tx.send(Message::Cycle(samples));
        }
    }

    /// Writes everything queued, closes the file and returns the totals.
    pub fn close(self) -> StorageStats {
        drop(self.tx);
        self.thread.join().unwrap_or_default()
    }
}

/// Last archived state of a tag, to decide whether a sample is a change.
type LastArchived = Option<(Option<Value>, Status)>;

struct Writer {
    conn: Connection,
    path: PathBuf,
    /// Database id of each server tag index.
    ids: Vec<i64>,
    last: Vec<LastArchived>,
    pending: Vec<Sample>,
    stats: StorageStats,
}

/// Most samples held in memory while the file cannot be written; beyond it
/// the oldest are dropped (and counted in the log) so memory stays bounded.
const MAX_PENDING: usize = 2_000_000;

impl Writer {
    fn open(cfg: &StorageConfig) -> Result<Writer, StorageError> {
        let path = cfg.path.clone();
        let fail = |action: &'static str| {
            let path = path.clone();
            move |source| StorageError {
                path,
                action,
                source,
            }
        };
        if let Some(dir) = cfg.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| StorageError {
                path: path.clone(),
                action: "create directory",
                source: rusqlite::Error::ToSqlConversionFailure(Box::new(e)),
            })?;
        }
        let conn = Connection::open(&cfg.path).map_err(fail("open"))?;
        conn.busy_timeout(Duration::from_secs(5))
            .map_err(fail("set busy_timeout"))?;
        // journal_mode answers with a row; synchronous does not.
        let _: String = conn
            .query_row(
                &format!("PRAGMA journal_mode={}", cfg.journal_mode),
                [],
                |r| r.get(0),
            )
            .map_err(fail("set journal_mode"))?;
        conn.execute_batch(&format!("PRAGMA synchronous={}", cfg.synchronous))
            .map_err(fail("set synchronous"))?;
        conn.execute_batch(SCHEMA).map_err(fail("create schema"))?;
        conn.pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(fail("set user_version"))?;
        Ok(Writer {
            conn,
            path,
            ids: Vec::new(),
            last: Vec::new(),
            pending: Vec::new(),
            stats: StorageStats::default(),
        })
    }

    fn run(mut self, rx: Receiver<Message>) -> StorageStats {
        let mut retry_at: Option<Instant> = None;
        loop {
            let msg = match retry_at {
                Some(t) => match rx.recv_deadline(t) {
                    Ok(m) => Some(m),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => break,
                },
                None => match rx.recv() {
                    Ok(m) => Some(m),
                    Err(_) => break,
                },
            };
            if let Some(m) = msg {
                self.take(m);
            }
            // Merge whatever queued meanwhile into the same transaction.
            while let Ok(m) = rx.try_recv() {
                self.take(m);
            }
            retry_at = match self.flush() {
                Ok(()) => None,
                Err(e) => {
                    log::error!(
                        "storage: {e}; {} samples kept in memory, retrying",
                        self.pending.len()
                    );
                    Some(Instant::now() + Duration::from_secs(1))
                }
            };
        }
        // Shutdown: a last attempt, then a few more if the file is busy.
        for attempt in 0..5 {
            match self.flush() {
                Ok(()) => break,
                Err(e) => {
                    log::error!("storage: final write attempt {}: {e}", attempt + 1);
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
        if !self.pending.is_empty() {
            log::error!(
                "storage: {} samples could not be written at shutdown",
                self.pending.len()
            );
        }
        self.stats
    }

    fn take(&mut self, m: Message) {
        match m {
            Message::Tags { first, tags } => {
                if let Err(e) = self.register(first, &tags) {
                    log::error!("storage: {e}");
                }
            }
            Message::Cycle(samples) => {
                self.pending.extend(samples);
                if self.pending.len() > MAX_PENDING {
                    let drop_n = self.pending.len() - MAX_PENDING;
                    self.pending.drain(..drop_n);
                    log::error!(
                        "storage: backlog over {MAX_PENDING} samples, dropped the {drop_n} oldest"
                    );
                }
            }
        }
    }

    fn err(&self, action: &'static str) -> impl Fn(rusqlite::Error) -> StorageError + '_ {
        move |source| StorageError {
            path: self.path.clone(),
            action,
            source,
        }
    }

    fn register(&mut self, first: usize, tags: &[TagInfo]) -> Result<(), StorageError> {
        let tx = self
            .conn
            .unchecked_transaction()
            .map_err(self.err("begin"))?;
        let mut ids = Vec::with_capacity(tags.len());
        let mut last = Vec::with_capacity(tags.len());
        {
            let mut upsert = tx
                .prepare_cached(
                    "INSERT INTO tags (name, source, address, type, writable, description, unit)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                     ON CONFLICT(name) DO UPDATE SET source = ?2, address = ?3, type = ?4,
                        writable = ?5, description = ?6, unit = ?7
                     RETURNING id",
                )
                .map_err(self.err("prepare tag upsert"))?;
            let mut current = tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO current (tag_id, name, value, status, ts)
                     VALUES (?1, ?2, NULL, ?3, ?4)",
                )
                .map_err(self.err("prepare current insert"))?;
            let mut last_row = tx
                .prepare_cached(
                    "SELECT value, status FROM archive WHERE tag_id = ?1 ORDER BY id DESC LIMIT 1",
                )
                .map_err(self.err("prepare archive lookup"))?;
            let now = format_ts(&chrono::Utc::now());
            for t in tags {
                let id: i64 = upsert
                    .query_row(
                        params![
                            t.name,
                            t.source,
                            t.address,
                            t.data_type,
                            t.writable,
                            t.description,
                            t.unit
                        ],
                        |r| r.get(0),
                    )
                    .map_err(self.err("register tag"))?;
                current
                    .execute(params![id, t.name, Status::NO_DATA.0, now])
                    .map_err(self.err("insert current row"))?;
                let prev = last_row
                    .query_row([id], |r| {
                        Ok((from_sql(r.get::<_, SqlValue>(0)?), Status(r.get(1)?)))
                    })
                    .ok();
                ids.push(id);
                last.push(prev);
            }
        }
        tx.commit().map_err(self.err("commit tags"))?;
        let end = first + tags.len();
        if self.ids.len() < end {
            self.ids.resize(end, 0);
            self.last.resize(end, None);
        }
        self.ids[first..end].copy_from_slice(&ids);
        for (slot, l) in self.last[first..end].iter_mut().zip(last) {
            *slot = l;
        }
        Ok(())
    }

    /// Writes all pending samples in one transaction.
    fn flush(&mut self) -> Result<(), StorageError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let tx = self
            .conn
            .unchecked_transaction()
            .map_err(self.err("begin"))?;
        let mut archived = 0u64;
        // Decisions are made on a copy so a failed commit leaves `last` as it was.
        let mut last = self.last.clone();
        {
            let mut current = tx
                .prepare_cached(
                    "UPDATE current SET value = ?2, status = ?3, ts = ?4 WHERE tag_id = ?1",
                )
                .map_err(self.err("prepare current update"))?;
            let mut archive = tx
                .prepare_cached(
                    "INSERT INTO archive (tag_id, value, status, ts) VALUES (?1, ?2, ?3, ?4)",
                )
                .map_err(self.err("prepare archive insert"))?;
            for s in &self.pending {
                let Some(&id) = self.ids.get(s.tag) else {
                    continue;
                };
                let ts = format_ts(&s.ts);
                let value = s.value.as_ref().map(to_sql);
                current
                    .execute(params![id, value, s.status.0, ts])
                    .map_err(self.err("update current"))?;
                if is_change(&last[s.tag], s) {
                    archive
                        .execute(params![id, value, s.status.0, ts])
                        .map_err(self.err("insert archive row"))?;
                    last[s.tag] = Some((s.value.clone(), s.status));
                    archived += 1;
                }
            }
        }
        tx.commit().map_err(self.err("commit"))?;
        self.last = last;
        self.stats.commits += 1;
        self.stats.samples += self.pending.len() as u64;
        self.stats.archived += archived;
        self.pending.clear();
        Ok(())
    }
}

/// Whether a sample differs from the last archived state of its tag: a new
/// value, or a new status (a tag going bad is always archived, once).
fn is_change(last: &LastArchived, s: &Sample) -> bool {
    match last {
        None => true,
        Some((value, status)) => *status != s.status || (s.value.is_some() && *value != s.value),
    }
}

fn to_sql(v: &Value) -> ToSqlOutput<'static> {
    ToSqlOutput::Owned(match v {
        Value::Bool(b) => SqlValue::Integer(i64::from(*b)),
        Value::Int(i) => SqlValue::Integer(*i),
        Value::Float(f) => SqlValue::Real(*f),
        Value::Str(s) => SqlValue::Text(s.clone()),
        Value::Array(_) => SqlValue::Text(v.to_string()),
    })
}

fn from_sql(v: SqlValue) -> Option<Value> {
    match v {
        SqlValue::Null => None,
        SqlValue::Integer(i) => Some(Value::Int(i)),
        SqlValue::Real(f) => Some(Value::Float(f)),
        SqlValue::Text(s) => Some(Value::Str(s)),
        SqlValue::Blob(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    fn sample(value: Option<Value>, status: Status) -> Sample {
        Sample {
            tag: 0,
            value,
            status,
            ts: Utc::now(),
        }
    }

    #[test]
    fn changes_of_value_or_status_are_archived() {
        let last = Some((Some(Value::Int(1)), Status::GOOD));
        assert!(!is_change(
            &last,
            &sample(Some(Value::Int(1)), Status::GOOD)
        ));
        assert!(is_change(&last, &sample(Some(Value::Int(2)), Status::GOOD)));
        assert!(is_change(&last, &sample(None, Status::TIMEOUT)));
        assert!(is_change(&None, &sample(None, Status::NO_DATA)));
        let bad = Some((Some(Value::Int(1)), Status::TIMEOUT));
        assert!(!is_change(&bad, &sample(None, Status::TIMEOUT)));
    }

    fn temp_db(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("rtds-storage-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir.join("t.db")
    }

    #[test]
    fn a_cycle_lands_in_current_and_archive() {
        let path = temp_db("cycle");
        let cfg = StorageConfig {
            path: path.clone(),
            journal_mode: "delete".into(),
            synchronous: "normal".into(),
        };
        let st = Storage::start(&cfg).unwrap();
        let info = |n: &str| TagInfo {
            name: n.into(),
            source: "test".into(),
            address: String::new(),
            data_type: "int".into(),
            writable: false,
            description: String::new(),
            unit: String::new(),
        };
        st.tags(0, vec![info("a"), info("b")]);
        let s = |tag, v: i64| Sample {
            tag,
            value: Some(Value::Int(v)),
            status: Status::GOOD,
            ts: Utc::now(),
        };
        st.cycle(vec![s(0, 1), s(1, 5)]);
        st.cycle(vec![s(0, 1), s(1, 6)]);
        let stats = st.close();
        assert_eq!((stats.samples, stats.archived), (4, 3));
        let db = Connection::open(&path).unwrap();
        let rows: Vec<(String, i64)> = db
            .prepare("SELECT name, value FROM archive_named ORDER BY id")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            rows,
            vec![("a".into(), 1), ("b".into(), 5), ("b".into(), 6)]
        );
        let cur: i64 = db
            .query_row("SELECT value FROM current WHERE name = 'b'", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(cur, 6);
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }
}
