//! The live database: local to the gateway, never opened from another host.
//! It holds what RTDS needs to run and an operator wants to look at: the
//! `tags` list with stable ids, `current` values, acknowledgements made with
//! `rtds ack`, and RTDS's own bookkeeping (`meta`, `archived_last`).
//!
//! WAL journal by default: readers on the gateway (`rtds status`) never
//! block the writer, and a commit costs one sequential append. It is safe
//! here because no other host opens the file.

use super::archive::Row;
use super::encoding::{from_sql, to_sql};
use super::retention::{Ack, parse_ts};
use super::segment::TsText;
use super::settings::StorageConfig;
use super::{StorageError, TagInfo};
use crate::model::{Status, format_ts};
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Version of the live schema, in `PRAGMA user_version` (1 was RTDS 0.1's
/// single file with the archive inside).
pub const LIVE_VERSION: i64 = 2;

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
CREATE TABLE IF NOT EXISTS ack (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    ts         TEXT,                     -- a time-stamp acknowledgement, or
    source     TEXT NOT NULL DEFAULT 'historian',
    written_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    result     TEXT,                     -- set by RTDS: 'accepted …' or 'refused: why'
    up_to_id   INTEGER                   -- an acknowledgement by id
);
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value
);
CREATE TABLE IF NOT EXISTS script_state (
    name     TEXT PRIMARY KEY,
    source   TEXT NOT NULL,       -- the script's source when saved
    state    TEXT NOT NULL,       -- its `state` map as JSON
    saved_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS archived_last (
    tag_id INTEGER PRIMARY KEY,
    value,
    status INTEGER NOT NULL,
    ts     TEXT NOT NULL
);
";

/// An acknowledgement waiting in the `ack` table.
pub struct PendingAck {
    /// Row id.
    pub id: i64,
    /// What it asks, or why it cannot be read.
    pub ack: Result<Ack, String>,
    /// When it was written (SQLite's clock on this host).
    pub written_at: crate::model::Timestamp,
    /// The request as text, for the log.
    pub text: String,
}

/// The open live database.
pub struct Live {
    conn: Connection,
    /// Its path.
    pub path: PathBuf,
    identity: Option<(u64, u64)>,
}

fn err<'a>(path: &'a Path, action: &'static str) -> impl Fn(rusqlite::Error) -> StorageError + 'a {
    move |e| StorageError {
        path: path.to_path_buf(),
        action,
        code: e.sqlite_error_code(),
        message: e.to_string(),
    }
}

fn identity(path: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

impl Live {
    /// Opens or creates it. A file that can only be opened read-only is an
    /// error: RTDS would run without being able to record anything.
    pub fn open(cfg: &StorageConfig) -> Result<Live, StorageError> {
        let path = cfg.path.clone();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| StorageError {
                path: path.clone(),
                action: "create directory",
                message: e.to_string(),
                code: None,
            })?;
        }
        let conn = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(err(&path, "open"))?;
        if conn.is_readonly(rusqlite::MAIN_DB).unwrap_or(true) {
            return Err(StorageError {
                path,
                action: "open",
                message: "the file can only be opened read-only".into(),
                code: None,
            });
        }
        conn.busy_timeout(cfg.busy_timeout)
            .map_err(err(&path, "set busy_timeout"))?;
        let _: String = conn
            .query_row(
                &format!("PRAGMA journal_mode={}", cfg.journal_mode),
                [],
                |r| r.get(0),
            )
            .map_err(err(&path, "set journal_mode"))?;
        conn.execute_batch(&format!(
            "PRAGMA synchronous={}; PRAGMA cache_size=-{};",
            cfg.synchronous, cfg.cache_kb
        ))
        .map_err(err(&path, "set synchronous"))?;
        let old: bool = conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE name = 'archive' AND type = 'table'",
                [],
                |r| r.get(0),
            )
            .map_err(err(&path, "read schema"))?;
        if old {
            // RTDS 0.1 kept the archive here; its `ack` lacks `up_to_id`.
            let has_col: bool = conn
                .query_row(
                    "SELECT count(*) FROM pragma_table_info('ack') WHERE name = 'up_to_id'",
                    [],
                    |r| r.get(0),
                )
                .map_err(err(&path, "read schema"))?;
            if !has_col {
                conn.execute_batch("ALTER TABLE ack ADD COLUMN up_to_id INTEGER")
                    .map_err(err(&path, "upgrade ack table"))?;
            }
            log::warn!(
                "storage: {} has an archive table from RTDS 0.1: it is left as it is (read it with sqlite3); archive rows now go to segment files",
                path.display()
            );
        }
        conn.execute_batch(SCHEMA)
            .map_err(err(&path, "create schema"))?;
        conn.pragma_update(None, "user_version", LIVE_VERSION)
            .map_err(err(&path, "set user_version"))?;
        Ok(Live {
            identity: identity(&path),
            conn,
            path,
        })
    }

    /// False once the file was deleted or replaced under RTDS.
    pub fn still_there(&self) -> bool {
        identity(&self.path).is_some_and(|id| Some(id) == self.identity)
    }

    /// Registers tags, each with the id it had if known (so a recreated
    /// database gives every tag its old id; a tag already in the database
    /// keeps its own). Returns the ids in order.
    pub fn register<'a>(
        &mut self,
        tags: impl Iterator<Item = (&'a TagInfo, Option<i64>)>,
    ) -> Result<Vec<i64>, StorageError> {
        let e = |a| err(&self.path, a);
        let tx = self.conn.unchecked_transaction().map_err(e("begin"))?;
        let mut ids = Vec::with_capacity(tags.size_hint().0);
        {
            let mut upsert = tx
                .prepare_cached(
                    "INSERT INTO tags (id, name, source, address, type, writable, description, unit)
                     VALUES (?8, ?1, ?2, ?3, ?4, ?5, ?6, ?7)
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
            let now = format_ts(&chrono::Utc::now());
            for (t, known) in tags {
                let id: i64 = upsert
                    .query_row(
                        params![
                            t.name,
                            t.source,
                            t.address,
                            t.data_type,
                            t.writable,
                            t.description,
                            t.unit,
                            known
                        ],
                        |r| r.get(0),
                    )
                    .map_err(e("register tag"))?;
                current
                    .execute(params![id, t.name, Status::NO_DATA.0, now])
                    .map_err(e("insert current row"))?;
                ids.push(id);
            }
        }
        tx.commit().map_err(e("commit tags"))?;
        Ok(ids)
    }

    /// The id of a tag by name (for spool replays), registering a minimal
    /// entry for a name no longer configured.
    pub fn tag_id(&mut self, name: &str) -> Result<i64, StorageError> {
        let e = |a| err(&self.path, a);
        let found: Option<i64> = self
            .conn
            .query_row("SELECT id FROM tags WHERE name = ?1", [name], |r| r.get(0))
            .optional()
            .map_err(e("find tag"))?;
        if let Some(id) = found {
            return Ok(id);
        }
        self.conn
            .query_row(
                "INSERT INTO tags (name, source, address, type, writable, description, unit)
                 VALUES (?1, 'spool', '', '', 0, 'replayed from the shutdown spool', '') RETURNING id",
                [name],
                |r| r.get(0),
            )
            .map_err(e("register spooled tag"))
    }

    /// Records the type of a tag registered without one (an untyped
    /// OPC UA node, an SQL column read as it comes, a calculated tag),
    /// learned from its first value: a reader needs it to decode values.
    pub fn set_type(&mut self, id: i64, data_type: &str) -> Result<(), StorageError> {
        self.conn
            .execute(
                "UPDATE tags SET type = ?2 WHERE id = ?1",
                params![id, data_type],
            )
            .map(drop)
            .map_err(err(&self.path, "record a tag's type"))
    }

    /// Writes the latest state of the tags in `rows` to `current`.
    pub fn write_current<'a>(
        &mut self,
        rows: impl Iterator<Item = (i64, &'a Row)>,
    ) -> Result<(), StorageError> {
        let e = |a| err(&self.path, a);
        let tx = self.conn.unchecked_transaction().map_err(e("begin"))?;
        {
            let mut st = tx
                .prepare_cached(
                    "UPDATE current SET value = ?2, status = ?3, ts = ?4 WHERE tag_id = ?1",
                )
                .map_err(e("prepare current update"))?;
            let mut ts_text = TsText::default();
            for (id, r) in rows {
                st.execute(params![
                    id,
                    r.value.as_ref().map(to_sql),
                    r.status.0,
                    ts_text.get(&r.ts)
                ])
                .map_err(e("update current"))?;
            }
        }
        tx.commit().map_err(e("commit current"))
    }

    /// Saves the last archived row of every tag, so the deadband compares
    /// with it after a restart.
    pub fn save_last<'a>(
        &mut self,
        rows: impl Iterator<Item = (i64, &'a Row)>,
    ) -> Result<(), StorageError> {
        let e = |a| err(&self.path, a);
        let tx = self.conn.unchecked_transaction().map_err(e("begin"))?;
        {
            let mut st = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO archived_last (tag_id, value, status, ts) VALUES (?1, ?2, ?3, ?4)",
                )
                .map_err(e("prepare archived_last"))?;
            let mut ts_text = TsText::default();
            for (id, r) in rows {
                st.execute(params![
                    id,
                    r.value.as_ref().map(to_sql),
                    r.status.0,
                    ts_text.get(&r.ts)
                ])
                .map_err(e("save archived_last"))?;
            }
        }
        tx.commit().map_err(e("commit archived_last"))
    }

    /// The saved last archived row of every tag.
    pub fn load_last(&self) -> Result<super::idmap::IdMap<Row>, StorageError> {
        let e = |a| err(&self.path, a);
        let mut st = self
            .conn
            .prepare(
                "SELECT a.tag_id, a.value, a.status, a.ts, coalesce(t.type, '')
                 FROM archived_last a LEFT JOIN tags t ON t.id = a.tag_id",
            )
            .map_err(e("read archived_last"))?;
        let rows = st
            .query_map([], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, rusqlite::types::Value>(1)?,
                    r.get::<_, u16>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, String>(4)?,
                ))
            })
            .map_err(e("read archived_last"))?;
        let mut out = super::idmap::IdMap::default();
        for r in rows {
            let (id, v, s, ts, ty) = r.map_err(e("read archived_last"))?;
            if let Ok(ts) = parse_ts(&ts) {
                out.insert(
                    id,
                    Row {
                        value: from_sql(v, &ty),
                        status: Status(s),
                        ts,
                    },
                );
            }
        }
        Ok(out)
    }

    /// Saves scripts' `state` maps.
    pub fn save_script_states(
        &mut self,
        states: &[crate::model::ScriptState],
    ) -> Result<(), StorageError> {
        let e = |a| err(&self.path, a);
        let tx = self.conn.unchecked_transaction().map_err(e("begin"))?;
        {
            let mut st = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO script_state (name, source, state, saved_at) VALUES (?1, ?2, ?3, ?4)",
                )
                .map_err(e("prepare script_state"))?;
            let now = format_ts(&chrono::Utc::now());
            for s in states {
                st.execute(params![s.name, s.source, s.state, now])
                    .map_err(e("save script state"))?;
            }
        }
        tx.commit().map_err(e("commit script_state"))
    }

    /// The scripts' `state` maps a previous run saved.
    pub fn load_script_states(&self) -> Result<Vec<crate::model::ScriptState>, StorageError> {
        let e = |a| err(&self.path, a);
        let mut st = self
            .conn
            .prepare("SELECT name, source, state FROM script_state")
            .map_err(e("read script_state"))?;
        let rows = st
            .query_map([], |r| {
                Ok(crate::model::ScriptState {
                    name: r.get(0)?,
                    source: r.get(1)?,
                    state: r.get(2)?,
                })
            })
            .map_err(e("read script_state"))?;
        rows.collect::<Result<_, _>>()
            .map_err(e("read script_state"))
    }

    /// An integer from `meta`.
    pub fn meta(&self, key: &str) -> Result<Option<i64>, StorageError> {
        self.conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| {
                r.get::<_, rusqlite::types::Value>(0)
            })
            .optional()
            .map(|v| match v {
                Some(rusqlite::types::Value::Integer(i)) => Some(i),
                Some(rusqlite::types::Value::Text(t)) => t.parse().ok(),
                _ => None,
            })
            .map_err(err(&self.path, "read meta"))
    }

    /// Sets an integer in `meta`.
    pub fn set_meta(&mut self, key: &str, value: i64) -> Result<(), StorageError> {
        self.conn
            .execute(
                "INSERT INTO meta (key, value) VALUES (?1, ?2)
                 ON CONFLICT(key) DO UPDATE SET value = ?2",
                params![key, value],
            )
            .map(drop)
            .map_err(err(&self.path, "write meta"))
    }

    /// Acknowledgements not answered yet, oldest first.
    pub fn pending_acks(&self) -> Result<Vec<PendingAck>, StorageError> {
        let e = |a| err(&self.path, a);
        let mut st = self
            .conn
            .prepare_cached(
                "SELECT id, ts, up_to_id, written_at FROM ack WHERE result IS NULL ORDER BY id",
            )
            .map_err(e("read acks"))?;
        let rows = st
            .query_map([], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, Option<String>>(1)?,
                    r.get::<_, Option<i64>>(2)?,
                    r.get::<_, String>(3)?,
                ))
            })
            .map_err(e("read acks"))?;
        let mut out = Vec::new();
        for r in rows {
            let (id, ts, up_to, written) = r.map_err(e("read acks"))?;
            let written_at = parse_ts(&written).unwrap_or_else(|_| chrono::Utc::now());
            let (ack, text) = match (up_to, ts) {
                (Some(n), _) => (Ok(Ack::Id(n)), format!("id={n}")),
                (None, Some(t)) => (parse_ts(&t).map(Ack::Ts), format!("ts={t}")),
                (None, None) => (Err("neither ts nor up_to_id set".into()), String::new()),
            };
            out.push(PendingAck {
                id,
                ack,
                written_at,
                text,
            });
        }
        Ok(out)
    }

    /// Records RTDS's answer to acknowledgement `id`.
    pub fn answer_ack(&mut self, id: i64, result: &str) -> Result<(), StorageError> {
        self.conn
            .execute(
                "UPDATE ack SET result = ?2 WHERE id = ?1",
                params![id, result],
            )
            .map(drop)
            .map_err(err(&self.path, "answer ack"))
    }
}

/// Records an acknowledgement on behalf of the command line (`rtds ack`),
/// for the running server to apply (or the next start). Returns its row id.
pub fn submit_ack(path: &Path, ack: Ack) -> Result<i64, String> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_WRITE)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    conn.busy_timeout(Duration::from_secs(10))
        .map_err(|e| e.to_string())?;
    let (ts, id) = match ack {
        Ack::Id(n) => (None, Some(n)),
        Ack::Ts(t) => (Some(format_ts(&t)), None),
    };
    conn.execute(
        "INSERT INTO ack (ts, up_to_id, source) VALUES (?1, ?2, 'cli')",
        params![ts, id],
    )
    .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(conn.last_insert_rowid())
}

/// The `result` RTDS wrote for ack row `id`, if it has handled it yet.
pub fn ack_result(path: &Path, id: i64) -> Option<String> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).ok()?;
    conn.busy_timeout(Duration::from_secs(2)).ok()?;
    conn.query_row("SELECT result FROM ack WHERE id = ?1", [id], |r| r.get(0))
        .ok()
        .flatten()
}
