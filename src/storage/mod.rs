//! The local buffer the Historian reads: a SQLite file with a `current` row
//! per tag, an `archive` of changes ([`archive`] says which), and an `ack`
//! table through which the Historian says what it has read ([`retention`]).
//!
//! Storage runs on its own thread and receives whole cycles by channel.
//! Archive decisions are made when a cycle arrives; the rows then wait in a
//! bounded queue until the file can be written, so a slow disk or a
//! Historian holding a read lock delays only this thread, never the cycle,
//! and loses nothing unless the queue's bound is reached (counted).

pub mod archive;
pub mod retention;

use crate::config::{Retention, StorageConfig};
use crate::model::{Sample, Status, Timestamp, Value, format_ts};
use archive::{ArchivePolicy, Deadband, Row, TagArchive};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, unbounded};
use rusqlite::{
    Connection, OptionalExtension, params, types::ToSqlOutput, types::Value as SqlValue,
};
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Version of the schema below, kept in `PRAGMA user_version` so a Historian
/// (or a later RTDS) can tell what it is reading.
pub const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS tags (
    id          INTEGER PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    source      TEXT NOT NULL,      -- connector name, 'script' or 'storage'
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
CREATE TABLE IF NOT EXISTS ack (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    ts         TEXT NOT NULL,            -- rows with archive.ts < this may go
    source     TEXT NOT NULL DEFAULT 'historian',
    written_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    result     TEXT                      -- set by RTDS: 'accepted' or 'refused: why'
);
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
";

/// Names of the tags storage publishes about itself.
pub const DIAGNOSTICS: [(&str, &str); 5] = [
    (
        "_storage._pending",
        "archive rows waiting in memory for the file",
    ),
    ("_storage._archive_rows", "rows in the archive table"),
    (
        "_storage._dropped_rows",
        "rows dropped unacknowledged (queue bound or retention limits) since start",
    ),
    (
        "_storage._purged_rows",
        "acknowledged rows deleted since start",
    ),
    ("_storage._acked_until", "the acknowledgement in force"),
];

/// A storage failure, with what was being done.
#[derive(Debug)]
pub struct StorageError {
    /// The database file.
    pub path: PathBuf,
    /// What was being done.
    pub action: &'static str,
    /// What went wrong.
    pub message: String,
}

impl fmt::Display for StorageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {}: {}",
            self.path.display(),
            self.action,
            self.message
        )
    }
}

impl std::error::Error for StorageError {}

/// What the Historian's `tags` table says about a tag, and how to archive it.
#[derive(Debug, Clone, PartialEq)]
pub struct TagInfo {
    /// Unique tag name.
    pub name: String,
    /// Connector name, `script` for calculated tags, `storage` for storage's own.
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
    /// Archive rules.
    pub policy: ArchivePolicy,
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
    /// Transactions that wrote samples.
    pub commits: u64,
    /// Samples received.
    pub samples: u64,
    /// Rows added to `archive`.
    pub archived: u64,
    /// Acknowledged rows deleted.
    pub purged: u64,
    /// Rows dropped before acknowledgement (queue bound, retention limits).
    pub dropped: u64,
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
                message: e.to_string(),
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

/// Most archive rows held in memory while the file cannot be written (a
/// Historian holding a lock, a full disk): about 200 MB. Beyond it the
/// oldest are dropped and counted in `_storage._dropped_rows`.
const MAX_QUEUED_ROWS: usize = 2_000_000;

/// How often heartbeats, acknowledgements and limits are looked at.
const MAINTENANCE_EVERY: Duration = Duration::from_secs(1);

fn sql_err<'a>(
    path: &'a Path,
    action: &'static str,
) -> impl Fn(rusqlite::Error) -> StorageError + 'a {
    move |e| StorageError {
        path: path.to_path_buf(),
        action,
        message: e.to_string(),
    }
}

struct Writer {
    conn: Connection,
    path: PathBuf,
    retention: Retention,
    /// Database id of each server tag index.
    ids: Vec<i64>,
    archives: HashMap<i64, TagArchive>,
    names: HashMap<i64, String>,
    /// Latest state per tag not yet written to `current`.
    current: HashMap<i64, Row>,
    /// Archive rows not yet written, oldest first.
    rows: VecDeque<(i64, Row)>,
    diag_ids: Vec<i64>,
    acked_until: Option<Timestamp>,
    archive_rows: u64,
    /// A full purge batch was deleted: more to do soon.
    purge_backlog: bool,
    failing: bool,
    stats: StorageStats,
}

impl Writer {
    fn open(cfg: &StorageConfig) -> Result<Writer, StorageError> {
        let path = cfg.path.clone();
        let fail = |action| sql_err(&cfg.path, action);
        if let Some(dir) = cfg.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| StorageError {
                path: path.clone(),
                action: "create directory",
                message: e.to_string(),
            })?;
        }
        let conn = Connection::open(&cfg.path).map_err(fail("open"))?;
        conn.busy_timeout(cfg.busy_timeout)
            .map_err(fail("set busy_timeout"))?;
        // A new file gets incremental auto-vacuum, so purged space is given
        // back to the file system in small steps; it must precede the tables.
        let empty: i64 = conn
            .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
            .map_err(fail("read schema"))?;
        if empty == 0 {
            conn.execute_batch("PRAGMA auto_vacuum = INCREMENTAL")
                .map_err(fail("set auto_vacuum"))?;
        }
        let _: String = conn
            .query_row(
                &format!("PRAGMA journal_mode={}", cfg.journal_mode),
                [],
                |r| r.get(0),
            )
            .map_err(fail("set journal_mode"))?;
        conn.execute_batch(&format!("PRAGMA synchronous={}", cfg.synchronous))
            .map_err(fail("set synchronous"))?;
        // 16 MB of page cache instead of SQLite's 2 MB: a cycle of 10,000
        // tags dirties archive, index and `current` pages together, and a
        // transaction that outgrows the cache spills pages to the file
        // mid-way, each spill costing a journal sync.
        conn.execute_batch("PRAGMA cache_size = -16384")
            .map_err(fail("set cache_size"))?;
        conn.execute_batch(SCHEMA).map_err(fail("create schema"))?;
        conn.pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(fail("set user_version"))?;
        let archive_rows: i64 = conn
            .query_row("SELECT count(*) FROM archive", [], |r| r.get(0))
            .map_err(fail("count archive rows"))?;
        let acked_until = read_acked_until(&conn).map_err(fail("read acknowledgement"))?;
        let mut w = Writer {
            conn,
            path,
            retention: cfg.retention,
            ids: Vec::new(),
            archives: HashMap::new(),
            names: HashMap::new(),
            current: HashMap::new(),
            rows: VecDeque::new(),
            diag_ids: Vec::new(),
            acked_until,
            archive_rows: archive_rows as u64,
            purge_backlog: false,
            failing: false,
            stats: StorageStats::default(),
        };
        let diag: Vec<TagInfo> = DIAGNOSTICS
            .iter()
            .enumerate()
            .map(|(i, (name, description))| TagInfo {
                name: (*name).into(),
                source: "storage".into(),
                address: "diagnostic".into(),
                data_type: if i == 4 { "string" } else { "int" }.into(),
                writable: false,
                description: (*description).into(),
                unit: String::new(),
                // Queue length and row count move every cycle: archived on
                // the heartbeat only. The counters and the ack on change.
                policy: ArchivePolicy {
                    deadband: if i < 2 {
                        Deadband::Absolute(f64::INFINITY)
                    } else {
                        Deadband::Exact
                    },
                    ..ArchivePolicy::default()
                },
            })
            .collect();
        w.diag_ids = w.register(&diag)?;
        Ok(w)
    }

    fn run(mut self, rx: Receiver<Message>) -> StorageStats {
        let mut retry_at: Option<Instant> = None;
        let mut maintain_at = Instant::now();
        loop {
            let now = Instant::now();
            let mut wake = maintain_at;
            if let Some(t) = retry_at {
                wake = wake.min(t);
            }
            if self.purge_backlog {
                wake = now;
            }
            match rx.recv_deadline(wake) {
                Ok(m) => self.take(m),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            // Merge whatever queued meanwhile into the same transaction.
            while let Ok(m) = rx.try_recv() {
                self.take(m);
            }
            let now = Instant::now();
            if retry_at.is_none_or(|t| now >= t) {
                retry_at = self.flush_logged();
            }
            if now >= maintain_at || self.purge_backlog {
                if now >= maintain_at {
                    self.tick();
                    maintain_at = now + MAINTENANCE_EVERY;
                }
                if retry_at.is_none()
                    && let Err(e) = self.retain()
                {
                    log::warn!("storage: {e}; retried in a second");
                    self.purge_backlog = false;
                }
            }
        }
        // Shutdown: write what is queued, retrying a busy file for a while.
        for attempt in 0..10 {
            match self.flush() {
                Ok(()) => break,
                Err(e) => {
                    log::error!("storage: final write attempt {}: {e}", attempt + 1);
                    std::thread::sleep(Duration::from_millis(300));
                }
            }
        }
        if !self.rows.is_empty() || !self.current.is_empty() {
            log::error!(
                "storage: {} archive rows could not be written at shutdown",
                self.rows.len()
            );
        }
        self.stats
    }

    fn take(&mut self, m: Message) {
        match m {
            Message::Tags { first, tags } => {
                // Registration must not be lost: retry until the file lets us.
                loop {
                    match self.register(&tags) {
                        Ok(ids) => {
                            let end = first + ids.len();
                            if self.ids.len() < end {
                                self.ids.resize(end, 0);
                            }
                            self.ids[first..end].copy_from_slice(&ids);
                            break;
                        }
                        Err(e) => {
                            log::error!("storage: {e}; retrying");
                            std::thread::sleep(Duration::from_secs(1));
                        }
                    }
                }
            }
            Message::Cycle(samples) => {
                self.stats.samples += samples.len() as u64;
                for s in samples {
                    let Some(&id) = self.ids.get(s.tag) else {
                        continue;
                    };
                    self.record(id, s.value, s.status, s.ts);
                }
            }
        }
    }

    /// Applies one sample to a tag: `current` to update, archive rows to add.
    fn record(&mut self, id: i64, value: Option<Value>, status: Status, ts: Timestamp) {
        let Some(arch) = self.archives.get_mut(&id) else {
            return;
        };
        let rows = arch.on_sample(value, status, ts);
        if let Some(latest) = &arch.latest {
            self.current.insert(id, latest.clone());
        }
        for r in rows {
            self.queue_row(id, r);
        }
    }

    fn queue_row(&mut self, id: i64, row: Row) {
        if self.rows.len() >= MAX_QUEUED_ROWS {
            self.rows.pop_front();
            self.stats.dropped += 1;
            if self.stats.dropped.is_power_of_two() {
                log::error!(
                    "storage: {MAX_QUEUED_ROWS} rows queued for a file that cannot be written; {} oldest dropped so far",
                    self.stats.dropped
                );
            }
        }
        self.rows.push_back((id, row));
    }

    fn register(&mut self, tags: &[TagInfo]) -> Result<Vec<i64>, StorageError> {
        let path = self.path.clone();
        let e = |a| sql_err(&path, a);
        let tx = self.conn.unchecked_transaction().map_err(e("begin"))?;
        let mut ids = Vec::with_capacity(tags.len());
        {
            let mut upsert = tx
                .prepare_cached(
                    "INSERT INTO tags (name, source, address, type, writable, description, unit)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                     ON CONFLICT(name) DO UPDATE SET source = ?2, address = ?3, type = ?4,
                        writable = ?5, description = ?6, unit = ?7
                     RETURNING id",
                )
                .map_err(e("prepare tag upsert"))?;
            let mut current = tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO current (tag_id, name, value, status, ts)
                     VALUES (?1, ?2, NULL, ?3, ?4)",
                )
                .map_err(e("prepare current insert"))?;
            let mut last_row = tx
                .prepare_cached("SELECT value, status, ts FROM archive WHERE tag_id = ?1 ORDER BY id DESC LIMIT 1")
                .map_err(e("prepare archive lookup"))?;
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
                    .map_err(e("register tag"))?;
                current
                    .execute(params![id, t.name, Status::NO_DATA.0, now])
                    .map_err(e("insert current row"))?;
                ids.push(id);
                self.names.insert(id, t.name.clone());
                match self.archives.get_mut(&id) {
                    Some(a) => a.policy = t.policy,
                    None => {
                        let last = last_row
                            .query_row([id], |r| {
                                Ok((
                                    r.get::<_, SqlValue>(0)?,
                                    r.get::<_, u16>(1)?,
                                    r.get::<_, String>(2)?,
                                ))
                            })
                            .optional()
                            .map_err(e("read last archived row"))?
                            .and_then(|(v, st, ts)| {
                                Some(Row {
                                    value: from_sql(v),
                                    status: Status(st),
                                    ts: retention::parse_ts(&ts).ok()?,
                                })
                            });
                        self.archives.insert(id, TagArchive::new(t.policy, last));
                    }
                }
            }
        }
        tx.commit().map_err(e("commit tags"))?;
        Ok(ids)
    }

    fn flush_logged(&mut self) -> Option<Instant> {
        match self.flush() {
            Ok(()) => {
                if self.failing {
                    log::info!("storage: writing again, queue drained");
                    self.failing = false;
                }
                None
            }
            Err(e) => {
                if !self.failing {
                    log::error!(
                        "storage: {e}; {} archive rows kept in memory, retrying",
                        self.rows.len()
                    );
                    self.failing = true;
                }
                Some(Instant::now() + Duration::from_secs(1))
            }
        }
    }

    /// Writes the queued `current` updates and archive rows in one
    /// transaction; on failure they stay queued.
    fn flush(&mut self) -> Result<(), StorageError> {
        if self.rows.is_empty() && self.current.is_empty() {
            return Ok(());
        }
        let path = self.path.clone();
        let e = |a| sql_err(&path, a);
        let tx = self.conn.unchecked_transaction().map_err(e("begin"))?;
        let mut ts_text = TsText::default();
        {
            let mut current = tx
                .prepare_cached(
                    "UPDATE current SET value = ?2, status = ?3, ts = ?4 WHERE tag_id = ?1",
                )
                .map_err(e("prepare current update"))?;
            for (id, r) in &self.current {
                current
                    .execute(params![
                        id,
                        r.value.as_ref().map(to_sql),
                        r.status.0,
                        ts_text.get(&r.ts)
                    ])
                    .map_err(e("update current"))?;
            }
            let mut archive = tx
                .prepare_cached(
                    "INSERT INTO archive (tag_id, value, status, ts) VALUES (?1, ?2, ?3, ?4)",
                )
                .map_err(e("prepare archive insert"))?;
            for (id, r) in &self.rows {
                archive
                    .execute(params![
                        id,
                        r.value.as_ref().map(to_sql),
                        r.status.0,
                        ts_text.get(&r.ts)
                    ])
                    .map_err(e("insert archive row"))?;
            }
        }
        tx.commit().map_err(e("commit"))?;
        self.stats.commits += 1;
        self.stats.archived += self.rows.len() as u64;
        self.archive_rows += self.rows.len() as u64;
        self.rows.clear();
        self.current.clear();
        Ok(())
    }

    /// Once a second: heartbeats, acknowledgements, storage diagnostics.
    fn tick(&mut self) {
        let now = chrono::Utc::now();
        let mut due = Vec::new();
        for (&id, a) in self.archives.iter_mut() {
            if let Some(row) = a.on_tick(now) {
                due.push((id, row));
            }
        }
        due.sort_by_key(|(id, _)| *id);
        for (id, row) in due {
            self.queue_row(id, row);
        }
        if let Err(e) = self.read_acks() {
            log::warn!("storage: {e}; retried in a second");
        }
        let diag = [
            Value::Int(self.rows.len() as i64),
            Value::Int(self.archive_rows as i64),
            Value::Int(self.stats.dropped as i64),
            Value::Int(self.stats.purged as i64),
            Value::Str(self.acked_until.as_ref().map(format_ts).unwrap_or_default()),
        ];
        for (i, v) in diag.into_iter().enumerate() {
            if let Some(&id) = self.diag_ids.get(i) {
                self.record(id, Some(v), Status::GOOD, now);
            }
        }
    }

    /// Reads new rows of the `ack` table and answers each in its `result`.
    fn read_acks(&mut self) -> Result<(), StorageError> {
        let path = self.path.clone();
        let e = |a| sql_err(&path, a);
        let pending: Vec<(i64, String)> = {
            let mut st = self
                .conn
                .prepare_cached("SELECT id, ts FROM ack WHERE result IS NULL ORDER BY id")
                .map_err(e("read acks"))?;
            st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .map_err(e("read acks"))?
                .collect::<Result<_, _>>()
                .map_err(e("read acks"))?
        };
        if pending.is_empty() {
            return Ok(());
        }
        let tx = self.conn.unchecked_transaction().map_err(e("begin"))?;
        let mut acked = self.acked_until;
        for (id, text) in pending {
            let result = retention::parse_ts(&text)
                .map_err(|m| format!("refused: {m}"))
                .and_then(|ts| retention::check_ack(ts, acked, chrono::Utc::now()).map(|()| ts));
            let answer = match result {
                Ok(ts) => {
                    acked = Some(ts);
                    log::info!(
                        "storage: acknowledgement #{id} accepted: archive rows before {} may go",
                        format_ts(&ts)
                    );
                    "accepted".to_string()
                }
                Err(m) => {
                    log::warn!("storage: acknowledgement #{id} ({text}) {m}");
                    m
                }
            };
            tx.execute(
                "UPDATE ack SET result = ?2 WHERE id = ?1",
                params![id, answer],
            )
            .map_err(e("answer ack"))?;
        }
        if let Some(ts) = acked {
            tx.execute(
                "INSERT INTO meta (key, value) VALUES ('acked_until', ?1)
                 ON CONFLICT(key) DO UPDATE SET value = ?1",
                [format_ts(&ts)],
            )
            .map_err(e("store acknowledgement"))?;
        }
        tx.commit().map_err(e("commit acks"))?;
        self.acked_until = acked;
        if acked.is_some() {
            self.purge_backlog = true;
        }
        Ok(())
    }

    /// One small step of deleting: acknowledged rows first, then whatever
    /// the retention limits force out. Each step is one short transaction.
    fn retain(&mut self) -> Result<(), StorageError> {
        let batch = i64::from(self.retention.purge_batch);
        let mut busy = false;
        if let Some(acked) = self.acked_until {
            let n = self.delete(
                "DELETE FROM archive WHERE id IN (SELECT id FROM archive WHERE ts < ?1 ORDER BY ts LIMIT ?2)",
                params![format_ts(&acked), batch],
            )?;
            self.stats.purged += n;
            busy |= n == batch as u64;
        }
        let mut dropped = 0;
        if self.archive_rows > self.retention.max_rows {
            let excess = (self.archive_rows - self.retention.max_rows).min(batch as u64) as i64;
            dropped += self.delete(
                "DELETE FROM archive WHERE id IN (SELECT id FROM archive ORDER BY id LIMIT ?1)",
                params![excess],
            )?;
        }
        if self.retention.max_age_days > 0 {
            let oldest =
                chrono::Utc::now() - chrono::Duration::days(self.retention.max_age_days as i64);
            dropped += self.delete(
                "DELETE FROM archive WHERE id IN (SELECT id FROM archive WHERE ts < ?1 ORDER BY ts LIMIT ?2)",
                params![format_ts(&oldest), batch],
            )?;
        }
        if self.used_bytes()? > self.retention.max_mb * 1024 * 1024 && self.archive_rows > 0 {
            dropped += self.delete(
                "DELETE FROM archive WHERE id IN (SELECT id FROM archive ORDER BY id LIMIT ?1)",
                params![batch],
            )?;
        }
        if dropped > 0 {
            if self.stats.dropped == 0
                || (self.stats.dropped + dropped) / 100_000 > self.stats.dropped / 100_000
            {
                log::warn!(
                    "storage: retention limit reached (max_rows {}, max_mb {}, max_age_days {}): {} unacknowledged rows dropped so far",
                    self.retention.max_rows,
                    self.retention.max_mb,
                    self.retention.max_age_days,
                    self.stats.dropped + dropped
                );
            }
            self.stats.dropped += dropped;
            busy = true;
        }
        self.purge_backlog = busy;
        // Give freed pages back to the file system, a little at a time.
        self.conn
            .execute_batch("PRAGMA incremental_vacuum(512)")
            .map_err(sql_err(&self.path, "incremental vacuum"))?;
        Ok(())
    }

    fn delete(&mut self, sql: &str, p: impl rusqlite::Params) -> Result<u64, StorageError> {
        let n = self
            .conn
            .execute(sql, p)
            .map_err(sql_err(&self.path, "delete archive rows"))? as u64;
        self.archive_rows = self.archive_rows.saturating_sub(n);
        Ok(n)
    }

    /// Bytes of the file in use (free pages excluded).
    fn used_bytes(&self) -> Result<u64, StorageError> {
        let e = sql_err(&self.path, "read page counts");
        let pages: i64 = self
            .conn
            .query_row("PRAGMA page_count", [], |r| r.get(0))
            .map_err(&e)?;
        let free: i64 = self
            .conn
            .query_row("PRAGMA freelist_count", [], |r| r.get(0))
            .map_err(&e)?;
        let size: i64 = self
            .conn
            .query_row("PRAGMA page_size", [], |r| r.get(0))
            .map_err(&e)?;
        Ok(((pages - free).max(0) * size) as u64)
    }
}

/// Formats time stamps, reusing the text while they repeat: the samples of
/// one poll share one, and formatting is a measurable share of a write.
#[derive(Default)]
struct TsText {
    last: Option<(Timestamp, String)>,
}

impl TsText {
    fn get(&mut self, ts: &Timestamp) -> String {
        match &self.last {
            Some((t, s)) if t == ts => s.clone(),
            _ => {
                let s = format_ts(ts);
                self.last = Some((*ts, s.clone()));
                s
            }
        }
    }
}

fn read_acked_until(conn: &Connection) -> rusqlite::Result<Option<Timestamp>> {
    let text: Option<String> = conn
        .query_row(
            "SELECT value FROM meta WHERE key = 'acked_until'",
            [],
            |r| r.get(0),
        )
        .optional()
        .or_else(|e| match e {
            // A database from before the meta table: nothing acknowledged.
            rusqlite::Error::SqliteFailure(_, Some(ref m)) if m.contains("no such table") => {
                Ok(None)
            }
            other => Err(other),
        })?;
    Ok(text.and_then(|t| retention::parse_ts(&t).ok()))
}

/// Records an acknowledgement on behalf of the command line (`rtds ack`):
/// checked here against the clock and the acknowledgement in force, then
/// written to the `ack` table for the running server to apply (or the next
/// start). Returns the ack row's id.
pub fn submit_ack(path: &Path, ts: Timestamp) -> Result<i64, String> {
    let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    conn.busy_timeout(Duration::from_secs(10))
        .map_err(|e| e.to_string())?;
    let acked = read_acked_until(&conn).map_err(|e| e.to_string())?;
    retention::check_ack(ts, acked, chrono::Utc::now())?;
    conn.execute(
        "INSERT INTO ack (ts, source) VALUES (?1, 'cli')",
        [format_ts(&ts)],
    )
    .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(conn.last_insert_rowid())
}

/// The `result` RTDS wrote for ack row `id`, if it has handled it yet.
pub fn ack_result(path: &Path, id: i64) -> Option<String> {
    let conn =
        Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).ok()?;
    conn.busy_timeout(Duration::from_secs(2)).ok()?;
    conn.query_row("SELECT result FROM ack WHERE id = ?1", [id], |r| r.get(0))
        .ok()
        .flatten()
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

    fn temp_db(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("rtds-storage-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir.join("t.db")
    }

    fn cfg(path: &Path) -> StorageConfig {
        StorageConfig {
            path: path.to_path_buf(),
            journal_mode: "delete".into(),
            synchronous: "normal".into(),
            busy_timeout: Duration::from_millis(200),
            archive: ArchivePolicy::default(),
            retention: Retention::default(),
        }
    }

    fn info(n: &str) -> TagInfo {
        TagInfo {
            name: n.into(),
            source: "test".into(),
            address: String::new(),
            data_type: "int".into(),
            writable: false,
            description: String::new(),
            unit: String::new(),
            policy: ArchivePolicy::default(),
        }
    }

    fn s(tag: usize, v: i64) -> Sample {
        Sample {
            tag,
            value: Some(Value::Int(v)),
            status: Status::GOOD,
            ts: Utc::now(),
        }
    }

    #[test]
    fn a_cycle_lands_in_current_and_archive() {
        let path = temp_db("cycle");
        let st = Storage::start(&cfg(&path)).unwrap();
        st.tags(0, vec![info("a"), info("b")]);
        st.cycle(vec![s(0, 1), s(1, 5)]);
        st.cycle(vec![s(0, 1), s(1, 6)]);
        let stats = st.close();
        assert_eq!(stats.samples, 4);
        // 3 rows for a and b, plus the first value of each storage diagnostic.
        assert_eq!(stats.archived, 3 + DIAGNOSTICS.len() as u64);
        let db = Connection::open(&path).unwrap();
        let rows: Vec<(String, i64)> = db
            .prepare("SELECT name, value FROM archive_named WHERE name IN ('a', 'b') ORDER BY id")
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
        let auto_vacuum: i64 = db
            .query_row("PRAGMA auto_vacuum", [], |r| r.get(0))
            .unwrap();
        assert_eq!(auto_vacuum, 2, "incremental");
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[test]
    fn a_restart_compares_with_the_last_archived_row() {
        let path = temp_db("restart");
        let st = Storage::start(&cfg(&path)).unwrap();
        st.tags(0, vec![info("a")]);
        st.cycle(vec![s(0, 7)]);
        st.close();
        let st = Storage::start(&cfg(&path)).unwrap();
        st.tags(0, vec![info("a")]);
        st.cycle(vec![s(0, 7)]);
        assert_eq!(
            st.close().archived,
            0,
            "same value after a restart: no new row"
        );
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }
}
