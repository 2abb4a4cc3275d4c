//! Store-and-forward: changes the broker could not take yet, on disk, in
//! the order they happened, so neither a broker away for hours nor a
//! restart of RTDS loses them. One SQLite file per output; bounded in rows
//! and bytes, the oldest dropped beyond (counted, logged once per
//! incident). Rows leave only once the broker confirmed them.

use crate::model::{Status, Value};
use crate::storage::encoding;
use rusqlite::{Connection, params};
use std::path::{Path, PathBuf};

/// One change to deliver.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// The tag's name (stable across restarts, unlike its index).
    pub tag: std::sync::Arc<str>,
    /// Its value (`None`: a bad status without one).
    pub value: Option<Value>,
    /// Its status.
    pub status: Status,
    /// Milliseconds since the epoch, UTC.
    pub ts_ms: i64,
}

/// The limits of the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Rows at most.
    pub max_rows: u64,
    /// Bytes at most (the file's pages in use).
    pub max_bytes: u64,
}

/// The store-and-forward file.
pub struct Spool {
    path: PathBuf,
    db: Connection,
    limits: Limits,
    rows: u64,
    /// Changes dropped by the limits since start.
    pub dropped: u64,
    dropping: bool,
}

impl Spool {
    /// Opens (or creates) the file; what an earlier run left is kept.
    pub fn open(path: &Path, limits: Limits) -> Result<Spool, String> {
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        let db = Connection::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        db.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = NORMAL;
             CREATE TABLE IF NOT EXISTS spool (
                 id INTEGER PRIMARY KEY,
                 tag TEXT NOT NULL,
                 value,
                 type TEXT NOT NULL,
                 status INTEGER NOT NULL,
                 ts INTEGER NOT NULL
             );",
        )
        .map_err(|e| format!("{}: {e}", path.display()))?;
        let rows: i64 = db
            .query_row("SELECT count(*) FROM spool", [], |r| r.get(0))
            .map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(Spool {
            path: path.to_path_buf(),
            db,
            limits,
            rows: rows as u64,
            dropped: 0,
            dropping: false,
        })
    }

    /// Rows waiting.
    pub fn len(&self) -> u64 {
        self.rows
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Appends changes (one transaction), then enforces the limits.
    pub fn push(&mut self, changes: &[Change]) -> Result<(), String> {
        if changes.is_empty() {
            return Ok(());
        }
        let tx = self
            .db
            .transaction()
            .map_err(|e| format!("{}: {e}", self.path.display()))?;
        {
            let mut st = tx
                .prepare_cached(
                    "INSERT INTO spool (tag, value, type, status, ts) VALUES (?1, ?2, ?3, ?4, ?5)",
                )
                .map_err(|e| e.to_string())?;
            for c in changes {
                let (v, t) = match &c.value {
                    Some(v) => (encoding::to_sql(v), kind_of(v)),
                    None => (rusqlite::types::Value::Null, ""),
                };
                st.execute(params![&*c.tag, v, t, c.status.0, c.ts_ms])
                    .map_err(|e| format!("{}: {e}", self.path.display()))?;
            }
        }
        tx.commit()
            .map_err(|e| format!("{}: {e}", self.path.display()))?;
        self.rows += changes.len() as u64;
        self.enforce();
        Ok(())
    }

    fn enforce(&mut self) {
        let over_rows = self.rows.saturating_sub(self.limits.max_rows);
        let bytes: u64 = self
            .db
            .query_row(
                "SELECT (page_count - freelist_count) * page_size FROM pragma_page_count, pragma_freelist_count, pragma_page_size",
                [],
                |r| r.get::<_, i64>(0),
            )
            .map(|b| b as u64)
            .unwrap_or(0);
        let over_bytes = if bytes > self.limits.max_bytes && self.rows > 0 {
            // Rows to drop for the bytes, by the average row's size, at
            // least a tenth so the file does not hover at its limit.
            let per_row = (bytes / self.rows).max(1);
            ((bytes - self.limits.max_bytes) / per_row).max(self.rows / 10)
        } else {
            0
        };
        let drop = over_rows.max(over_bytes);
        if drop == 0 {
            if self.dropping {
                log::warn!(
                    "mqtt store {}: within its limits again; {} changes dropped so far",
                    self.path.display(),
                    self.dropped
                );
                self.dropping = false;
            }
            return;
        }
        if self
            .db
            .execute(
                "DELETE FROM spool WHERE id IN (SELECT id FROM spool ORDER BY id LIMIT ?1)",
                [drop as i64],
            )
            .is_ok()
        {
            self.rows -= drop.min(self.rows);
            self.dropped += drop;
            if !self.dropping {
                log::error!(
                    "mqtt store {}: full ({} rows, {} bytes at most): dropping the oldest changes",
                    self.path.display(),
                    self.limits.max_rows,
                    self.limits.max_bytes
                );
                self.dropping = true;
            }
        }
    }

    /// The oldest `n` rows after id `after`, in order.
    pub fn peek(&self, after: i64, n: usize) -> Result<Vec<(i64, Change)>, String> {
        let mut st = self
            .db
            .prepare_cached(
                "SELECT id, tag, value, type, status, ts FROM spool WHERE id > ?1 ORDER BY id LIMIT ?2",
            )
            .map_err(|e| e.to_string())?;
        let rows = st
            .query_map(params![after, n as i64], |r| {
                let id: i64 = r.get(0)?;
                let tag: String = r.get(1)?;
                let v: rusqlite::types::Value = r.get(2)?;
                let t: String = r.get(3)?;
                let status: u16 = r.get(4)?;
                let ts: i64 = r.get(5)?;
                Ok((
                    id,
                    Change {
                        tag: tag.into(),
                        value: encoding::from_sql(v, &t),
                        status: Status(status),
                        ts_ms: ts,
                    },
                ))
            })
            .map_err(|e| e.to_string())?;
        rows.collect::<Result<_, _>>().map_err(|e| e.to_string())
    }

    /// Removes the rows up to `id` (the broker confirmed them).
    pub fn confirm(&mut self, id: i64) -> Result<(), String> {
        let n = self
            .db
            .execute("DELETE FROM spool WHERE id <= ?1", [id])
            .map_err(|e| format!("{}: {e}", self.path.display()))?;
        self.rows = self.rows.saturating_sub(n as u64);
        Ok(())
    }
}

/// The type name `encoding::from_sql` reads a value back with.
fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Bool(_) => "bool",
        Value::Int(_) => "int",
        Value::UInt(_) => "u64",
        Value::Float(_) => "float",
        Value::Str(_) => "string",
        Value::Array(_) => "array",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_come_back_in_order_exactly_and_the_limit_drops_the_oldest() {
        let dir = std::env::temp_dir().join(format!("rtds-spool-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("s.db");
        let limits = Limits {
            max_rows: 5,
            max_bytes: 100 << 20,
        };
        let c = |i: i64, v: Option<Value>| Change {
            tag: format!("T{i}").into(),
            value: v,
            status: Status::GOOD,
            ts_ms: 1_800_000_000_000 + i,
        };
        let mut s = Spool::open(&path, limits).unwrap();
        let values = [
            Some(Value::Int(i64::MIN)),
            Some(Value::UInt(u64::MAX)),
            Some(Value::Float(0.1)),
            Some(Value::Array(vec![
                Value::Str("a,b".into()),
                Value::Str("c".into()),
            ])),
            None,
        ];
        let changes: Vec<Change> = values
            .iter()
            .enumerate()
            .map(|(i, v)| c(i as i64, v.clone()))
            .collect();
        s.push(&changes).unwrap();
        drop(s);
        // A restart keeps them.
        let mut s = Spool::open(&path, limits).unwrap();
        assert_eq!(s.len(), 5);
        let got: Vec<Change> = s.peek(0, 10).unwrap().into_iter().map(|(_, c)| c).collect();
        assert_eq!(got, changes);
        // Two more: the two oldest go, counted.
        s.push(&[
            c(5, Some(Value::Bool(true))),
            c(6, Some(Value::Bool(false))),
        ])
        .unwrap();
        assert_eq!((s.len(), s.dropped), (5, 2));
        let first = s.peek(0, 1).unwrap();
        assert_eq!(&*first[0].1.tag, "T2");
        s.confirm(first[0].0).unwrap();
        assert_eq!(s.len(), 4);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
