//! The `Sql` connector: reads tags from relational databases (lab results,
//! MES orders, setpoints) and writes tags back, in the same threads-and-
//! channels model as a PLC. Two backends behind one small trait: SQLite
//! (always built in) and ODBC (feature `odbc`, over unixODBC: SQL Server,
//! PostgreSQL, MySQL/MariaDB, Oracle …).
//!
//! Reading: each query of the connector runs every interval. A `rows`
//! query returns one row per tag (a name column, a value column, optional
//! status and time stamp columns); a `columns` query returns one row with
//! one column per tag. A tag's address is `query/key`: the value of the
//! name column (rows) or the column name (columns).
//!
//! Writing: one statement template for the connector, with the named
//! parameters `:name`, `:value`, `:status`, `:ts`, always bound — a value is
//! never pasted into SQL text.

#[cfg(feature = "odbc")]
mod odbc;
mod sqlite;

use super::{Connector, ConnectorError, SetupError};
use crate::connector::Params;
use crate::model::{Sample, Status, Timestamp, Value, format_ts};
use crate::tag::TagConfig;
use chrono::Utc;
use serde::Deserialize;
use std::collections::HashMap;
use std::time::Duration;

/// Keys `connector=Sql` accepts.
pub const KEYS: &[&str] = &[
    "driver",
    "path",
    "dsn",
    "odbc",
    "user",
    "password",
    "timeout",
    "retry_min",
    "retry_max",
];

/// One query of a connector, as written in the config.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct QueryConfig {
    /// Name used in tag addresses (`name/key`) and in messages.
    pub name: String,
    /// A single SELECT (or WITH … SELECT).
    pub sql: String,
    /// `"rows"` (default): a row per tag. `"columns"`: one row, a column
    /// per tag.
    #[serde(default)]
    pub mode: Option<String>,
    /// Rows mode: column holding the tag key (default `name`).
    #[serde(default)]
    pub name_column: Option<String>,
    /// Rows mode: column holding the value (default `value`).
    #[serde(default)]
    pub value_column: Option<String>,
    /// Rows mode: optional column holding a status code (0 = good).
    #[serde(default)]
    pub status_column: Option<String>,
    /// Rows mode: optional column holding the value's time stamp.
    #[serde(default)]
    pub ts_column: Option<String>,
}

impl QueryConfig {
    /// The mode, checked.
    pub fn mode(&self) -> Result<QueryMode, String> {
        match self.mode.as_deref().map(str::to_ascii_lowercase).as_deref() {
            None | Some("rows") => Ok(QueryMode::Rows),
            Some("columns") => Ok(QueryMode::Columns),
            Some(other) => Err(format!("mode `{other}` is not rows or columns")),
        }
    }
}

/// How a query's result maps to tags.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum QueryMode {
    /// One row per tag.
    #[default]
    Rows,
    /// One row, one column per tag.
    Columns,
}

/// What an `Sql` connector's entry gives besides its connection string:
/// its own fields (`queries`, `write_sql`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SqlExtras {
    /// Read queries.
    pub queries: Vec<QueryConfig>,
    /// Write template for writable tags.
    pub write_sql: Option<String>,
}

/// Which database and how to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A SQLite file that must exist.
    Sqlite(std::path::PathBuf),
    /// An ODBC connection string (built from `dsn`, `user`, `password`, or
    /// given whole as `odbc='Driver=…;Server=…'`).
    Odbc(String),
}

/// Typed connection settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqlSettings {
    /// The database.
    pub target: Target,
    /// Connect and statement timeout (5 s).
    pub timeout: Duration,
    /// First reconnect delay (1 s).
    pub retry_min: Duration,
    /// Longest reconnect delay (60 s).
    pub retry_max: Duration,
}

impl SqlSettings {
    /// Takes the class's keys from `params`: the settings and every
    /// mistake (an unknown key, a value out of its range).
    pub fn from_params(mut p: Params) -> (SqlSettings, Vec<String>) {
        let driver = p.required("driver").to_ascii_lowercase();
        let target = match driver.as_str() {
            "sqlite" => Target::Sqlite(std::path::PathBuf::from(p.required("path"))),
            "odbc" => {
                let full = p.take("odbc").unwrap_or_default();
                let dsn = p.take("dsn").unwrap_or_default();
                let user = p.take("user").unwrap_or_default();
                let password = p.take("password").unwrap_or_default();
                let mut s = match (full.is_empty(), dsn.is_empty()) {
                    (false, true) => full,
                    (true, false) => format!("DSN={dsn};"),
                    _ => {
                        p.error(
                            "driver",
                            "driver=odbc needs either dsn=… or odbc='…connection string…'",
                        );
                        String::new()
                    }
                };
                if !s.is_empty() && !s.ends_with(';') {
                    s.push(';');
                }
                if !user.is_empty() {
                    s.push_str(&format!("UID={user};"));
                }
                if !password.is_empty() {
                    s.push_str(&format!("PWD={password};"));
                }
                if !cfg!(feature = "odbc") {
                    p.error(
                        "driver",
                        "this build has no ODBC support (cargo feature `odbc`)",
                    );
                }
                Target::Odbc(s)
            }
            "" => Target::Odbc(String::new()),
            other => {
                p.error("driver", format!("`{other}` is not sqlite or odbc"));
                Target::Odbc(String::new())
            }
        };
        let s = SqlSettings {
            target,
            timeout: p.secs_or("timeout", Duration::from_secs(5)),
            retry_min: p.secs_or("retry_min", Duration::from_secs(1)),
            retry_max: p.secs_or("retry_max", Duration::from_secs(60)),
        };
        if s.retry_max < s.retry_min {
            p.error("retry_max", "must not be below retry_min");
        }
        let errors = p.finish(KEYS);
        (s, errors)
    }
}

/// The type a tag's value is converted to; `Auto` keeps what the database
/// delivers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SqlType {
    /// As delivered.
    Auto,
    /// A 64-bit float.
    Float,
    /// A 64-bit integer.
    Int,
    /// Text.
    Text,
    /// A boolean (0/1, true/false).
    Bool,
}

impl SqlType {
    /// Whether a value a script sets can go to a column of this type as it
    /// is (no rounding, no text-to-number guessing).
    pub fn check_write(self, v: &Value) -> Result<(), String> {
        let ok = match (self, v) {
            (_, Value::Array(_)) => false,
            (SqlType::Auto, Value::Float(f)) | (SqlType::Float, Value::Float(f)) => f.is_finite(),
            (SqlType::Auto, _) => true,
            (SqlType::Float, Value::Int(_) | Value::UInt(_)) => true,
            (SqlType::Int, Value::Int(_) | Value::Bool(_)) => true,
            (SqlType::Text, Value::Str(_)) => true,
            (SqlType::Bool, Value::Bool(_) | Value::Int(0 | 1)) => true,
            _ => false,
        };
        if ok {
            Ok(())
        } else {
            Err(format!(
                "{v} ({}) cannot be written to a {} column",
                v.kind(),
                self.name()
            ))
        }
    }

    /// The value the next read returns after `v` (accepted by
    /// [`Self::check_write`]) was written: the cell as the write sends it,
    /// converted as a read converts it (an integer in a float column is a
    /// float there, `true` in an untyped one is 1).
    pub fn held(self, v: &Value) -> Value {
        convert(&to_cell(v), self).0.unwrap_or_else(|| v.clone())
    }

    fn parse(t: Option<&str>) -> Result<SqlType, String> {
        Ok(match t.map(str::to_ascii_lowercase).as_deref() {
            None => SqlType::Auto,
            Some("float" | "f64" | "f32" | "double" | "real") => SqlType::Float,
            Some("int" | "i64" | "i32" | "i16" | "u16" | "u32" | "integer") => SqlType::Int,
            Some("string" | "text" | "str") => SqlType::Text,
            Some("bool" | "boolean") => SqlType::Bool,
            Some(other) => {
                return Err(format!(
                    "unknown type `{other}` (expected float, int, string or bool)"
                ));
            }
        })
    }

    fn name(self) -> &'static str {
        match self {
            SqlType::Auto => "auto",
            SqlType::Float => "float",
            SqlType::Int => "int",
            SqlType::Text => "string",
            SqlType::Bool => "bool",
        }
    }
}

/// One tag of an `Sql` connector.
#[derive(Debug, Clone, PartialEq)]
pub struct SqlTag {
    /// Index of the query that reads it.
    pub query: usize,
    /// Name-column value or column name.
    pub key: String,
    /// Conversion.
    pub ty: SqlType,
    /// Whether scripts may write it.
    pub writable: bool,
    /// Tag name, for the `:name` parameter and messages.
    pub name: std::sync::Arc<str>,
}

/// Settings, queries and tags: everything to build the connector.
#[derive(Debug, Clone, PartialEq)]
pub struct SqlConfig {
    /// Connection settings.
    pub settings: SqlSettings,
    /// Read queries.
    pub queries: Vec<QueryConfig>,
    /// Tags in config order.
    pub tags: Vec<SqlTag>,
    /// Write statement, translated to `?` placeholders, and the parameter
    /// name of each placeholder in order.
    pub write: Option<(String, Vec<String>)>,
}

impl SqlConfig {
    /// Validates settings, queries and tags together, reporting every
    /// mistake.
    pub fn new(
        params: Params,
        tags: &[TagConfig],
        extras: &SqlExtras,
    ) -> Result<SqlConfig, Vec<SetupError>> {
        let (settings, errors) = SqlSettings::from_params(params);
        let mut errors: Vec<SetupError> = errors.into_iter().map(SetupError::setting).collect();
        if extras.queries.is_empty() {
            errors.push(SetupError::field(
                "queries",
                "an Sql connector needs at least one query",
            ));
        }
        let mut names = HashMap::new();
        for (i, q) in extras.queries.iter().enumerate() {
            let mut bad = |m: String| {
                errors.push(SetupError::field(
                    "queries",
                    format!("query `{}`: {m}", q.name),
                ))
            };
            if names.insert(q.name.clone(), i).is_some() {
                bad("the name is used twice".into());
            }
            if let Err(m) = check_select(&q.sql) {
                bad(m);
            }
            match q.mode() {
                Err(m) => bad(m),
                Ok(QueryMode::Columns)
                    if q.name_column.is_some()
                        || q.value_column.is_some()
                        || q.status_column.is_some()
                        || q.ts_column.is_some() =>
                {
                    bad("*_column settings are for mode rows".into())
                }
                Ok(_) => {}
            }
        }
        let write = match &extras.write_sql {
            None => None,
            Some(sql) => match named_to_positional(sql) {
                Ok((_, order)) if !order.iter().any(|p| p == "value") => {
                    errors.push(SetupError::field(
                        "write_sql",
                        "`write_sql`: must use :value",
                    ));
                    None
                }
                Ok(w) => Some(w),
                Err(m) => {
                    errors.push(SetupError::field("write_sql", format!("write_sql: {m}")));
                    None
                }
            },
        };
        let mut out = Vec::with_capacity(tags.len());
        for (i, t) in tags.iter().enumerate() {
            match sql_tag(
                t,
                &names,
                extras,
                write.is_some() || extras.write_sql.is_some(),
            ) {
                Ok(tag) => out.push(tag),
                Err(m) => errors.push(SetupError::tag(i, m)),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(SqlConfig {
            settings,
            queries: extras.queries.clone(),
            tags: out,
            write,
        })
    }
}

/// One tag's query, key and type, or what is wrong with them.
fn sql_tag(
    t: &TagConfig,
    names: &HashMap<String, usize>,
    extras: &SqlExtras,
    can_write: bool,
) -> Result<SqlTag, String> {
    let (q, key) = t
        .address
        .split_once('/')
        .ok_or_else(|| format!("address `{}` is not query/key", t.address))?;
    let query = *names.get(q).ok_or_else(|| {
        format!(
            "no query named `{q}` (queries: {})",
            extras
                .queries
                .iter()
                .map(|q| q.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )
    })?;
    if key.is_empty() {
        return Err("the key after `/` is empty".into());
    }
    if t.writable && !can_write {
        return Err("writable, but the connector has no write_sql".into());
    }
    if t.count.is_some() || t.order.is_some() || t.scale != 1.0 || t.offset != 0.0 {
        return Err("count, order, scale and offset are for Modbus tags".into());
    }
    Ok(SqlTag {
        query,
        key: key.to_string(),
        ty: SqlType::parse(t.data_type.as_deref())?,
        writable: t.writable,
        name: t.name.clone(),
    })
}

/// `connector=Sql`.
pub const CLASS: super::Class = super::Class {
    name: "Sql",
    setup: |mut s| {
        // Its own fields of the connector's entry: the queries and the
        // write statement.
        let mut errors = Vec::new();
        let queries = s
            .extras
            .take::<Vec<QueryConfig>>("queries")
            .unwrap_or_else(|e| {
                errors.push(e);
                None
            });
        let write_sql = s.extras.take::<String>("write_sql").unwrap_or_else(|e| {
            errors.push(e);
            None
        });
        let extras = SqlExtras {
            queries: queries.unwrap_or_default(),
            write_sql,
        };
        errors.extend(s.extras.finish("Sql", &["queries", "write_sql"]));
        match SqlConfig::new(s.params, s.tags, &extras) {
            Ok(c) if errors.is_empty() => Ok(std::sync::Arc::new(c)),
            Ok(_) => Err(errors),
            Err(e) => {
                errors.extend(e);
                Err(errors)
            }
        }
    },
};

impl super::SourceConfig for SqlConfig {
    fn build(self: std::sync::Arc<Self>) -> Box<dyn super::Connector> {
        Box::new(SqlConnector::new(self))
    }

    /// One line for logs.
    fn describe(&self) -> String {
        match &self.settings.target {
            Target::Sqlite(p) => format!("Sql sqlite {}", p.display()),
            Target::Odbc(s) => format!("Sql odbc {}", redact(s)),
        }
    }

    /// What one scan does, for `rtds check`.
    fn describe_scan(&self) -> Vec<String> {
        let mut lines = vec![format!("{} queries per scan", self.queries.len())];
        for (i, q) in self.queries.iter().enumerate() {
            let n = self.tags.iter().filter(|t| t.query == i).count();
            lines.push(format!(
                "query {} ({:?}, {n} tags): {}",
                q.name,
                q.mode().unwrap_or_default(),
                q.sql.trim()
            ));
        }
        if let Some((sql, _)) = &self.write {
            lines.push(format!("writes: {sql}"));
        }
        lines
    }

    /// The type name of a tag, for the `tags` table.
    fn type_name(&self, tag: usize) -> &'static str {
        self.tags.get(tag).map_or("", |t| t.ty.name())
    }

    fn tag_name(&self, tag: usize) -> &str {
        self.tags.get(tag).map_or("", |t| &t.name)
    }

    fn tag_count(&self) -> usize {
        self.tags.len()
    }

    fn is_writable(&self, tag: usize) -> bool {
        self.tags.get(tag).is_some_and(|t| t.writable)
    }

    fn check_write(&self, tag: usize, value: &Value) -> Result<(), String> {
        self.tags
            .get(tag)
            .ok_or_else(|| "no such tag".to_string())
            .and_then(|t| t.ty.check_write(value))
    }

    fn retry(&self) -> (Duration, Duration) {
        (self.settings.retry_min, self.settings.retry_max)
    }

    /// Every query answered just within the timeout, plus the connect.
    fn worst_poll(&self) -> Duration {
        self.settings.timeout * (self.queries.len() as u32 + 1)
    }
}

/// Hides passwords in a connection string shown in logs.
fn redact(s: &str) -> String {
    s.split(';')
        .map(|kv| match kv.split_once('=') {
            Some((k, _))
                if k.trim().eq_ignore_ascii_case("pwd")
                    || k.trim().eq_ignore_ascii_case("password") =>
            {
                format!("{k}=***")
            }
            _ => kv.to_string(),
        })
        .collect::<Vec<_>>()
        .join(";")
}

/// What `rtds check` can tell about a read query without a database: one
/// statement, a SELECT (reads must not change data), quotes and
/// parentheses balanced.
pub fn check_select(sql: &str) -> Result<(), String> {
    let body = sql.trim().trim_end_matches(';').trim();
    let first = body
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_ascii_uppercase();
    if first != "SELECT" && first != "WITH" {
        return Err(format!(
            "must be a SELECT (or WITH … SELECT), not `{first}`"
        ));
    }
    let mut depth = 0i32;
    let mut quote: Option<char> = None;
    for c in body.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(c),
            (None, '(') => depth += 1,
            (None, ')') => {
                depth -= 1;
                if depth < 0 {
                    return Err("a `)` closes nothing".into());
                }
            }
            (None, ';') => return Err("one statement only".into()),
            _ => {}
        }
    }
    if quote.is_some() {
        return Err("a quoted string is not closed".into());
    }
    if depth != 0 {
        return Err("parentheses do not balance".into());
    }
    Ok(())
}

/// Replaces `:name`, `:value`, `:status`, `:ts` outside quotes by `?` and
/// returns the parameter order: drivers differ in named-parameter support,
/// `?` works everywhere.
pub fn named_to_positional(sql: &str) -> Result<(String, Vec<String>), String> {
    const KNOWN: [&str; 4] = ["name", "value", "status", "ts"];
    let mut out = String::with_capacity(sql.len());
    let mut order = Vec::new();
    let mut quote: Option<char> = None;
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => {
                quote = None;
                out.push(c);
            }
            (Some(_), c) => out.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                out.push(c);
            }
            (None, ':') if chars.peek() == Some(&':') => {
                // PostgreSQL casts (`::text`) are not parameters.
                chars.next();
                out.push_str("::");
            }
            (None, ':') if chars.peek().is_some_and(|c| c.is_ascii_alphabetic()) => {
                let mut name = String::new();
                while let Some(&c) = chars.peek() {
                    if c.is_ascii_alphanumeric() || c == '_' {
                        name.push(c);
                        chars.next();
                    } else {
                        break;
                    }
                }
                if !KNOWN.contains(&name.as_str()) {
                    return Err(format!(
                        "unknown parameter `:{name}` (known: :name, :value, :status, :ts)"
                    ));
                }
                out.push('?');
                order.push(name);
            }
            (None, c) => out.push(c),
        }
    }
    if quote.is_some() {
        return Err("a quoted string is not closed".into());
    }
    Ok((out, order))
}

/// A cell of a result set, as the backends deliver it.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    /// SQL NULL.
    Null,
    /// An integer column.
    Int(i64),
    /// A floating-point or decimal column.
    Float(f64),
    /// Anything else, as text.
    Text(String),
}

/// A result set: column names and rows.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Table {
    /// Column names as the database reports them.
    pub columns: Vec<String>,
    /// Rows of cells, one per column.
    pub rows: Vec<Vec<Cell>>,
}

/// A backend failure: the connection, or only the statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DbError {
    /// The connection is gone or cannot be made.
    Connection(String),
    /// The statement took longer than the timeout.
    Timeout(String),
    /// The statement failed (syntax, missing table, constraint …).
    Statement(String),
}

/// What a database backend does for the connector.
trait Backend: Send {
    fn query(&mut self, sql: &str, timeout: Duration) -> Result<Table, DbError>;
    fn execute(&mut self, sql: &str, params: &[Cell], timeout: Duration) -> Result<(), DbError>;
}

fn connect(settings: &SqlSettings) -> Result<Box<dyn Backend>, DbError> {
    match &settings.target {
        Target::Sqlite(path) => Ok(Box::new(sqlite::Sqlite::open(path, settings.timeout)?)),
        #[cfg(feature = "odbc")]
        Target::Odbc(s) => Ok(Box::new(odbc::Odbc::open(s, settings.timeout)?)),
        #[cfg(not(feature = "odbc"))]
        Target::Odbc(_) => Err(DbError::Connection("built without ODBC support".into())),
    }
}

/// Maps a query's result onto the tags that read from it (`tags`: the
/// connector's tag index and tag). Pure: every status rule is unit-tested.
pub fn map_result(
    q: &QueryConfig,
    table: &Table,
    tags: &[(usize, &SqlTag)],
    now: Timestamp,
) -> Vec<Sample> {
    let col = |name: &str| {
        table
            .columns
            .iter()
            .position(|c| c.eq_ignore_ascii_case(name))
    };
    let sample = |tag: usize, value: Option<Value>, status: Status, ts: Timestamp| Sample {
        tag,
        value,
        status,
        ts,
    };
    let all = |status: Status| {
        tags.iter()
            .map(|(i, _)| sample(*i, None, status, now))
            .collect::<Vec<_>>()
    };
    match q.mode().unwrap_or_default() {
        QueryMode::Columns => {
            let Some(row) = table.rows.first() else {
                return all(Status::MISSING);
            };
            tags.iter()
                .map(|(i, t)| match col(&t.key) {
                    None => sample(*i, None, Status::MISSING, now),
                    Some(c) => {
                        let (value, status) = convert(&row[c], t.ty);
                        sample(*i, value, status, now)
                    }
                })
                .collect()
        }
        QueryMode::Rows => {
            let name_col = q.name_column.as_deref().unwrap_or("name");
            let value_col = q.value_column.as_deref().unwrap_or("value");
            let (Some(nc), Some(vc)) = (col(name_col), col(value_col)) else {
                log::warn!(
                    "query {}: result has no `{name_col}` or `{value_col}` column (columns: {})",
                    q.name,
                    table.columns.join(", ")
                );
                return all(Status::QUERY_ERROR);
            };
            let sc = q.status_column.as_deref().and_then(col);
            let tc = q.ts_column.as_deref().and_then(col);
            let mut by_key: HashMap<String, &Vec<Cell>> = HashMap::new();
            for row in &table.rows {
                let key = match &row[nc] {
                    Cell::Text(s) => s.clone(),
                    Cell::Int(i) => i.to_string(),
                    Cell::Float(f) => f.to_string(),
                    Cell::Null => continue,
                };
                by_key.entry(key).or_insert(row);
            }
            tags.iter()
                .map(|(i, t)| {
                    let Some(row) = by_key.get(&t.key) else {
                        return sample(*i, None, Status::MISSING, now);
                    };
                    let (value, mut status) = convert(&row[vc], t.ty);
                    if status.is_good()
                        && let Some(sc) = sc
                    {
                        status = match &row[sc] {
                            Cell::Int(s) => u16::try_from(*s)
                                .map(Status)
                                .unwrap_or(Status::TYPE_MISMATCH),
                            Cell::Null => Status::GOOD,
                            Cell::Text(s) => s
                                .trim()
                                .parse::<u16>()
                                .map(Status)
                                .unwrap_or(Status::TYPE_MISMATCH),
                            Cell::Float(f) if f.fract() == 0.0 && *f >= 0.0 && *f < 65536.0 => {
                                Status(*f as u16)
                            }
                            Cell::Float(_) => Status::TYPE_MISMATCH,
                        };
                    }
                    let ts = tc
                        .and_then(|tc| match &row[tc] {
                            Cell::Text(s) => crate::model::parse_ts(s).ok(),
                            _ => None,
                        })
                        .unwrap_or(now);
                    sample(*i, value, status, ts)
                })
                .collect()
        }
    }
}

/// Converts a cell to a tag's type; NULL and failed conversions become
/// statuses, never panics.
fn convert(cell: &Cell, ty: SqlType) -> (Option<Value>, Status) {
    let ok = |v: Value| (Some(v), Status::GOOD);
    let mismatch = (None, Status::TYPE_MISMATCH);
    match (cell, ty) {
        (Cell::Null, _) => (None, Status::NULL_VALUE),
        (Cell::Int(i), SqlType::Auto | SqlType::Int) => ok(Value::Int(*i)),
        (Cell::Int(i), SqlType::Float) => ok(Value::Float(*i as f64)),
        (Cell::Int(i), SqlType::Bool) => ok(Value::Bool(*i != 0)),
        (Cell::Int(i), SqlType::Text) => ok(Value::Str(i.to_string())),
        (Cell::Float(f), SqlType::Auto | SqlType::Float) => ok(Value::Float(*f)),
        (Cell::Float(f), SqlType::Int) if f.fract() == 0.0 && f.abs() < 9.0e15 => {
            ok(Value::Int(*f as i64))
        }
        (Cell::Float(_), SqlType::Int | SqlType::Bool) => mismatch,
        (Cell::Float(f), SqlType::Text) => ok(Value::Str(f.to_string())),
        (Cell::Text(s), SqlType::Auto | SqlType::Text) => ok(Value::Str(s.clone())),
        (Cell::Text(s), SqlType::Float) => {
            s.trim().parse().map_or(mismatch, |f| ok(Value::Float(f)))
        }
        (Cell::Text(s), SqlType::Int) => s.trim().parse().map_or(mismatch, |i| ok(Value::Int(i))),
        (Cell::Text(s), SqlType::Bool) => match s.trim().to_ascii_lowercase().as_str() {
            "1" | "true" | "t" | "yes" => ok(Value::Bool(true)),
            "0" | "false" | "f" | "no" => ok(Value::Bool(false)),
            _ => mismatch,
        },
    }
}

fn to_cell(v: &Value) -> Cell {
    match v {
        Value::Bool(b) => Cell::Int(i64::from(*b)),
        Value::Int(i) => Cell::Int(*i),
        Value::Float(f) => Cell::Float(*f),
        Value::Str(s) => Cell::Text(s.clone()),
        Value::UInt(_) | Value::Array(_) => Cell::Text(v.to_string()),
    }
}

fn db_error(query: &str, e: DbError) -> ConnectorError {
    match e {
        DbError::Connection(m) => ConnectorError::link(Status::NOT_CONNECTED, m),
        DbError::Timeout(m) => ConnectorError::link(Status::TIMEOUT, format!("{query}: {m}")),
        DbError::Statement(m) => {
            ConnectorError::refused(Status::QUERY_ERROR, format!("{query}: {m}"))
        }
    }
}

/// The connector.
pub struct SqlConnector {
    config: std::sync::Arc<SqlConfig>,
    db: Option<Box<dyn Backend>>,
    requests: u64,
    /// Last error per query, so a failing query is logged when it starts
    /// or changes, not every interval.
    query_errors: Vec<Option<String>>,
}

impl SqlConnector {
    /// A connector for `config`, not yet connected.
    pub fn new(config: std::sync::Arc<SqlConfig>) -> Self {
        let n = config.queries.len();
        SqlConnector {
            config,
            db: None,
            requests: 0,
            query_errors: vec![None; n],
        }
    }

    /// After a statement error, whether the connection itself still works:
    /// drivers report a dead server in many ways, a ping does not lie.
    fn alive(&mut self) -> bool {
        let timeout = self.config.settings.timeout;
        self.requests += 1;
        self.db
            .as_mut()
            .is_some_and(|db| db.query("SELECT 1", timeout).is_ok())
    }
}

impl Connector for SqlConnector {
    fn open(&mut self) -> Result<(), ConnectorError> {
        self.db = None;
        let db = connect(&self.config.settings).map_err(|e| db_error("connect", e))?;
        self.db = Some(db);
        Ok(())
    }

    fn is_open(&self) -> bool {
        self.db.is_some()
    }

    fn read(&mut self, out: &mut Vec<Sample>) -> Result<(), ConnectorError> {
        let timeout = self.config.settings.timeout;
        for qi in 0..self.config.queries.len() {
            let q = self.config.queries[qi].clone();
            let tags: Vec<(usize, &SqlTag)> = self
                .config
                .tags
                .iter()
                .enumerate()
                .filter(|(_, t)| t.query == qi)
                .collect();
            if tags.is_empty() {
                continue;
            }
            self.requests += 1;
            let db = self
                .db
                .as_mut()
                .ok_or_else(|| ConnectorError::link(Status::NOT_CONNECTED, "not connected"))?;
            match db.query(&q.sql, timeout) {
                Ok(table) => {
                    if self.query_errors[qi].take().is_some() {
                        log::info!("query {}: works again", q.name);
                    }
                    let tags: Vec<(usize, &SqlTag)> = self
                        .config
                        .tags
                        .iter()
                        .enumerate()
                        .filter(|(_, t)| t.query == qi)
                        .collect();
                    out.extend(map_result(&q, &table, &tags, Utc::now()));
                }
                Err(DbError::Statement(m)) => {
                    if !self.alive() {
                        return Err(ConnectorError::link(
                            Status::NOT_CONNECTED,
                            format!("query {}: {m}", q.name),
                        ));
                    }
                    if self.query_errors[qi].as_deref() != Some(m.as_str()) {
                        log::warn!("query {}: {m}", q.name);
                        self.query_errors[qi] = Some(m);
                    }
                    let now = Utc::now();
                    let ids: Vec<usize> = self
                        .config
                        .tags
                        .iter()
                        .enumerate()
                        .filter(|(_, t)| t.query == qi)
                        .map(|(i, _)| i)
                        .collect();
                    out.extend(ids.into_iter().map(|i| Sample {
                        tag: i,
                        value: None,
                        status: Status::QUERY_ERROR,
                        ts: now,
                    }));
                }
                Err(e) => return Err(db_error(&format!("query {}", q.name), e)),
            }
        }
        Ok(())
    }

    fn write(&mut self, tag: usize, value: &Value) -> Result<Value, ConnectorError> {
        let bad = |m: String| ConnectorError::refused(Status::BAD_CONFIG, m);
        let t = self
            .config
            .tags
            .get(tag)
            .ok_or_else(|| bad(format!("no tag #{tag}")))?;
        if !t.writable {
            return Err(bad(format!("tag {} is not writable", t.name)));
        }
        t.ty.check_write(value).map_err(bad)?;
        let (sql, order) = self
            .config
            .write
            .clone()
            .ok_or_else(|| bad("no write_sql".into()))?;
        let now = format_ts(&Utc::now());
        let params: Vec<Cell> = order
            .iter()
            .map(|p| match p.as_str() {
                "name" => Cell::Text(t.name.to_string()),
                "value" => to_cell(value),
                "status" => Cell::Int(0),
                _ => Cell::Text(now.clone()),
            })
            .collect();
        let name = t.name.clone();
        let timeout = self.config.settings.timeout;
        self.requests += 1;
        let db = self
            .db
            .as_mut()
            .ok_or_else(|| ConnectorError::link(Status::NOT_CONNECTED, "not connected"))?;
        match db.execute(&sql, &params, timeout) {
            Ok(()) => Ok(t.ty.held(value)),
            Err(DbError::Statement(m)) if self.alive() => Err(ConnectorError::refused(
                Status::QUERY_ERROR,
                format!("write {name}: {m}"),
            )),
            Err(DbError::Statement(m)) => Err(ConnectorError::link(
                Status::NOT_CONNECTED,
                format!("write {name}: {m}"),
            )),
            Err(e) => Err(db_error(&format!("write {name}"), e)),
        }
    }

    fn close(&mut self) {
        self.db = None;
    }

    fn requests(&self) -> u64 {
        self.requests
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(mode: QueryMode) -> QueryConfig {
        QueryConfig {
            name: "lab".into(),
            sql: "SELECT 1".into(),
            mode: Some(
                if mode == QueryMode::Rows {
                    "rows"
                } else {
                    "columns"
                }
                .into(),
            ),
            name_column: None,
            value_column: None,
            status_column: Some("quality".into()),
            ts_column: Some("sampled_at".into()),
        }
    }

    fn tag(key: &str, ty: SqlType) -> SqlTag {
        SqlTag {
            query: 0,
            key: key.into(),
            ty,
            writable: false,
            name: key.into(),
        }
    }

    #[test]
    fn rows_map_values_statuses_and_time_stamps() {
        let table = Table {
            columns: vec![
                "NAME".into(),
                "Value".into(),
                "quality".into(),
                "sampled_at".into(),
            ],
            rows: vec![
                vec![
                    Cell::Text("pH".into()),
                    Cell::Float(7.25),
                    Cell::Int(0),
                    Cell::Text("2026-11-24T05:00:00Z".into()),
                ],
                vec![
                    Cell::Text("Batch".into()),
                    Cell::Text("B-17".into()),
                    Cell::Int(0),
                    Cell::Null,
                ],
                vec![
                    Cell::Text("Temp".into()),
                    Cell::Null,
                    Cell::Int(0),
                    Cell::Null,
                ],
                vec![
                    Cell::Text("Moist".into()),
                    Cell::Text("wet".into()),
                    Cell::Int(0),
                    Cell::Null,
                ],
                vec![
                    Cell::Text("Flagged".into()),
                    Cell::Int(3),
                    Cell::Int(120),
                    Cell::Null,
                ],
            ],
        };
        let tags = [
            tag("pH", SqlType::Auto),
            tag("Batch", SqlType::Text),
            tag("Temp", SqlType::Float),
            tag("Moist", SqlType::Float),
            tag("Flagged", SqlType::Int),
            tag("Absent", SqlType::Auto),
        ];
        let refs: Vec<(usize, &SqlTag)> = tags.iter().enumerate().collect();
        let now = Utc::now();
        let s = map_result(&q(QueryMode::Rows), &table, &refs, now);
        assert_eq!(
            (s[0].value.clone(), s[0].status),
            (Some(Value::Float(7.25)), Status::GOOD)
        );
        assert_eq!(format_ts(&s[0].ts), "2026-11-24T05:00:00.000Z");
        assert_eq!(s[1].value, Some(Value::Str("B-17".into())));
        assert_eq!(s[1].ts, now);
        assert_eq!(s[2].status, Status::NULL_VALUE);
        assert_eq!(s[3].status, Status::TYPE_MISMATCH);
        assert_eq!(
            (s[4].value.clone(), s[4].status),
            (Some(Value::Int(3)), Status(120))
        );
        assert_eq!(s[5].status, Status::MISSING);
    }

    #[test]
    fn columns_map_by_column_name() {
        let table = Table {
            columns: vec!["order_no".into(), "qty".into()],
            rows: vec![vec![Cell::Text("A-1".into()), Cell::Int(40)]],
        };
        let tags = [
            tag("order_no", SqlType::Auto),
            tag("QTY", SqlType::Float),
            tag("nope", SqlType::Auto),
        ];
        let refs: Vec<(usize, &SqlTag)> = tags.iter().enumerate().collect();
        let s = map_result(&q(QueryMode::Columns), &table, &refs, Utc::now());
        assert_eq!(s[0].value, Some(Value::Str("A-1".into())));
        assert_eq!(s[1].value, Some(Value::Float(40.0)));
        assert_eq!(s[2].status, Status::MISSING);
        let empty = map_result(&q(QueryMode::Columns), &Table::default(), &refs, Utc::now());
        assert!(empty.iter().all(|s| s.status == Status::MISSING));
    }

    #[test]
    fn parameters_are_positional_and_quotes_are_left_alone() {
        let (sql, order) = named_to_positional(
            "INSERT INTO sp (name, value, note, ts) VALUES (:name, :value, ':not_a_param', CAST(:ts AS timestamptz)) -- x::text",
        )
        .unwrap();
        assert_eq!(
            sql,
            "INSERT INTO sp (name, value, note, ts) VALUES (?, ?, ':not_a_param', CAST(? AS timestamptz)) -- x::text"
        );
        assert_eq!(order, vec!["name", "value", "ts"]);
        assert!(
            named_to_positional("UPDATE t SET v = :val")
                .unwrap_err()
                .contains(":val")
        );
    }

    #[test]
    fn check_refuses_what_it_can_see_is_wrong() {
        assert!(check_select("SELECT name, value FROM lab WHERE x = 'a;b'").is_ok());
        assert!(check_select("WITH x AS (SELECT 1) SELECT * FROM x;").is_ok());
        assert!(
            check_select("DELETE FROM lab")
                .unwrap_err()
                .contains("SELECT")
        );
        assert!(
            check_select("SELECT (1")
                .unwrap_err()
                .contains("parentheses")
        );
        assert!(check_select("SELECT 'x").unwrap_err().contains("quoted"));
        assert!(
            check_select("SELECT 1; DROP TABLE lab")
                .unwrap_err()
                .contains("one statement")
        );
    }

    #[test]
    fn connection_strings_and_redaction() {
        let (s, e) = SqlSettings::from_params(
            Params::parse("connector=Sql; driver=sqlite; path=/tmp/lab.db; timeout=2").unwrap(),
        );
        assert!(e.is_empty(), "{e:?}");
        assert_eq!(s.target, Target::Sqlite("/tmp/lab.db".into()));
        let (_, e) =
            SqlSettings::from_params(Params::parse("connector=Sql; driver=oracle").unwrap());
        assert!(e[0].contains("`oracle` is not sqlite or odbc"), "{e:?}");
        let (_, e) =
            SqlSettings::from_params(Params::parse("connector=Sql; driver=sqlite").unwrap());
        assert!(e[0].contains("path"), "{e:?}");
        assert_eq!(
            redact("Driver=x;Uid=u;Pwd=secret;"),
            "Driver=x;Uid=u;Pwd=***;"
        );
    }
}
