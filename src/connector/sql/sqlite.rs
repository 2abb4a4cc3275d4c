//! SQLite backend (rusqlite, always built in). The file must exist: a
//! connector that silently created an empty database at a mistyped path
//! would read nothing forever.

use super::{Backend, Cell, DbError, Table};
use rusqlite::{Connection, OpenFlags, types::Value as SqlValue};
use std::path::Path;
use std::time::{Duration, Instant};

pub(super) struct Sqlite {
    conn: Connection,
}

impl Sqlite {
    pub(super) fn open(path: &Path, timeout: Duration) -> Result<Sqlite, DbError> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| DbError::Connection(format!("{}: {e}", path.display())))?;
        conn.busy_timeout(timeout)
            .map_err(|e| DbError::Connection(e.to_string()))?;
        Ok(Sqlite { conn })
    }

    /// Interrupts a statement that runs past `timeout` (SQLite has no
    /// statement timeout of its own; busy_timeout covers only locks).
    fn guard(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let _ = self
            .conn
            .progress_handler(1000, Some(move || Instant::now() > deadline));
    }

    fn classify(&self, e: rusqlite::Error) -> DbError {
        match &e {
            rusqlite::Error::SqliteFailure(f, _)
                if f.code == rusqlite::ErrorCode::OperationInterrupted =>
            {
                DbError::Timeout("statement interrupted after the timeout".into())
            }
            rusqlite::Error::SqliteFailure(f, _)
                if matches!(
                    f.code,
                    rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
                ) =>
            {
                DbError::Timeout(e.to_string())
            }
            rusqlite::Error::SqliteFailure(f, _)
                if matches!(
                    f.code,
                    rusqlite::ErrorCode::CannotOpen
                        | rusqlite::ErrorCode::NotADatabase
                        | rusqlite::ErrorCode::SystemIoFailure
                ) =>
            {
                DbError::Connection(e.to_string())
            }
            _ => DbError::Statement(e.to_string()),
        }
    }
}

impl Backend for Sqlite {
    fn query(&mut self, sql: &str, timeout: Duration) -> Result<Table, DbError> {
        self.guard(timeout);
        let result = (|| {
            let mut st = self.conn.prepare(sql)?;
            let columns: Vec<String> = st.column_names().map(|c| c.to_string()).collect();
            let n = columns.len();
            let rows = st
                .query_map([], |r| {
                    (0..n)
                        .map(|i| {
                            Ok(match r.get::<_, SqlValue>(i)? {
                                SqlValue::Null => Cell::Null,
                                SqlValue::Integer(v) => Cell::Int(v),
                                SqlValue::Real(v) => Cell::Float(v),
                                SqlValue::Text(v) => Cell::Text(v),
                                SqlValue::Blob(b) => Cell::Text(format!("<{} bytes>", b.len())),
                            })
                        })
                        .collect::<rusqlite::Result<Vec<Cell>>>()
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(Table { columns, rows })
        })();
        let _ = self.conn.progress_handler(0, None::<fn() -> bool>);
        result.map_err(|e| self.classify(e))
    }

    fn execute(&mut self, sql: &str, params: &[Cell], timeout: Duration) -> Result<(), DbError> {
        self.guard(timeout);
        let values: Vec<SqlValue> = params
            .iter()
            .map(|c| match c {
                Cell::Null => SqlValue::Null,
                Cell::Int(i) => SqlValue::Integer(*i),
                Cell::Float(f) => SqlValue::Real(*f),
                Cell::Text(s) => SqlValue::Text(s.clone()),
            })
            .collect();
        let result = self.conn.execute(sql, rusqlite::params_from_iter(values));
        let _ = self.conn.progress_handler(0, None::<fn() -> bool>);
        result.map(|_| ()).map_err(|e| self.classify(e))
    }
}
