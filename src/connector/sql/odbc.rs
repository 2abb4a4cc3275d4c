//! ODBC backend (odbc-api over unixODBC): any database with an ODBC driver.
//! Values are fetched as text and typed by the column's SQL type; parameters
//! are bound with their own types (numbers as numbers, text as text).

use super::{Backend, Cell, DbError, Table};
use odbc_api::buffers::TextRowSet;
use odbc_api::parameter::InputParameter;
use odbc_api::{Connection, ConnectionOptions, Cursor, DataType, IntoParameter, ResultSetMetadata};
use std::time::Duration;

pub(super) struct Odbc {
    conn: Connection<'static>,
}

/// Sorts an error by its SQLSTATE (ISO 9075, the ODBC appendix A), never
/// by its text: class 08 is a connection exception, HYT00/HYT01 timeouts;
/// the rest is about the statement.
fn classify(e: odbc_api::Error) -> DbError {
    let state = match &e {
        odbc_api::Error::Diagnostics { record, .. } => Some(record.state),
        _ => None,
    };
    let text = e.to_string();
    match state.as_ref().map(|s| s.as_str()) {
        Some("HYT00" | "HYT01") => DbError::Timeout(text),
        Some(s) if s.starts_with("08") => DbError::Connection(text),
        _ => DbError::Statement(text),
    }
}

fn secs(d: Duration) -> usize {
    d.as_secs_f64().ceil().max(1.0) as usize
}

impl Odbc {
    pub(super) fn open(connection_string: &str, timeout: Duration) -> Result<Odbc, DbError> {
        let env = odbc_api::environment()
            .map_err(|e| DbError::Connection(format!("ODBC environment: {e}")))?;
        let options = ConnectionOptions {
            login_timeout_sec: Some(secs(timeout) as u32),
            ..ConnectionOptions::default()
        };
        let conn = env
            .connect_with_connection_string(connection_string, options)
            .map_err(|e| DbError::Connection(e.to_string()))?;
        Ok(Odbc { conn })
    }
}

impl Backend for Odbc {
    fn query(&mut self, sql: &str, timeout: Duration) -> Result<Table, DbError> {
        let Some(mut cursor) = self
            .conn
            .execute(sql, (), Some(secs(timeout)))
            .map_err(classify)?
        else {
            return Ok(Table::default());
        };
        let columns: Vec<String> = cursor
            .column_names()
            .map_err(classify)?
            .collect::<Result<_, _>>()
            .map_err(classify)?;
        let mut kinds = Vec::with_capacity(columns.len());
        for i in 1..=columns.len() {
            kinds.push(cursor.col_data_type(i as u16).map_err(classify)?);
        }
        let buffer = TextRowSet::for_cursor(256, &mut cursor, Some(4096)).map_err(classify)?;
        let mut block = cursor.bind_buffer(buffer).map_err(classify)?;
        let mut rows = Vec::new();
        while let Some(batch) = block.fetch().map_err(classify)? {
            for r in 0..batch.num_rows() {
                let row = (0..columns.len())
                    .map(|c| {
                        let text = batch.at_as_str(c, r).ok().flatten();
                        match text {
                            None => Cell::Null,
                            Some(t) => typed(t, &kinds[c]),
                        }
                    })
                    .collect();
                rows.push(row);
            }
        }
        Ok(Table { columns, rows })
    }

    fn execute(&mut self, sql: &str, params: &[Cell], timeout: Duration) -> Result<(), DbError> {
        let bound: Vec<Box<dyn InputParameter>> = params
            .iter()
            .map(|c| -> Box<dyn InputParameter> {
                match c {
                    Cell::Null => Box::new(None::<&str>.into_parameter()),
                    Cell::Int(i) => Box::new(*i),
                    Cell::Float(f) => Box::new(*f),
                    Cell::Text(s) => Box::new(s.clone().into_parameter()),
                }
            })
            .collect();
        self.conn
            .execute(sql, bound.as_slice(), Some(secs(timeout)))
            .map(|_| ())
            .map_err(classify)
    }
}

fn typed(text: &str, kind: &DataType) -> Cell {
    let int = || {
        text.trim()
            .parse()
            .map(Cell::Int)
            .unwrap_or_else(|_| Cell::Text(text.to_string()))
    };
    let float = || {
        text.trim()
            .parse()
            .map(Cell::Float)
            .unwrap_or_else(|_| Cell::Text(text.to_string()))
    };
    match kind {
        DataType::TinyInt | DataType::SmallInt | DataType::Integer | DataType::BigInt => int(),
        DataType::Bit => match text.trim() {
            "1" | "t" | "true" => Cell::Int(1),
            "0" | "f" | "false" => Cell::Int(0),
            _ => Cell::Text(text.to_string()),
        },
        DataType::Real
        | DataType::Float { .. }
        | DataType::Double
        | DataType::Numeric { .. }
        | DataType::Decimal { .. } => float(),
        _ => Cell::Text(text.to_string()),
    }
}
