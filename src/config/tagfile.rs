//! Tag lists kept in spreadsheets, as automation engineers keep them: a CSV
//! file, or a sheet of an ODS or XLSX workbook, named by a connector's
//! `tags_file` (and `tags_sheet`). The first row names the columns:
//!
//! | column | required | as in the RON tag |
//! |---|---|---|
//! | `name` | yes | `name` |
//! | `address` | yes | `address` (format it as text: `00006` as a number loses its zeros) |
//! | `type`, `count`, `order`, `scale`, `offset` | | same |
//! | `writable`, `archive_prev` | | `true/false`, `yes/no`, `1/0`, `x` |
//! | `description`, `unit` | | same |
//! | `deadband`, `deadband_pct`, `heartbeat_s` | | same |
//! | `span_low`, `span_high` | | `span: (low, high)` |
//!
//! Column names are case-insensitive; empty cells take the default; rows
//! whose `name` is empty or starts with `#` are skipped. Errors name the
//! file, the sheet, the row and the column.

use super::TagConfig;
use calamine::{Data, Ods, Range, Reader, Xlsx, open_workbook};
use std::path::Path;

const COLUMNS: &[&str] = &[
    "name",
    "address",
    "type",
    "count",
    "order",
    "scale",
    "offset",
    "writable",
    "description",
    "unit",
    "deadband",
    "deadband_pct",
    "span_low",
    "span_high",
    "heartbeat_s",
    "archive_prev",
];

/// Where a tag came from, for messages about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// Sheet name (empty for CSV).
    pub sheet: String,
    /// 1-based row in the sheet or file.
    pub row: usize,
}

/// A tag-file error: 1-based row (0 for the file as a whole) and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagFileError {
    /// Row at fault.
    pub row: usize,
    /// What is wrong, naming sheet and column.
    pub message: String,
}

/// Reads the tags of `path` (CSV by extension `.csv`, else a workbook):
/// every row that reads, and an error for every cell that does not (a
/// file that cannot be read at all is one error for row 0).
pub fn read(path: &Path, sheet: Option<&str>) -> (Vec<(TagConfig, Origin)>, Vec<TagFileError>) {
    match read_rows(path, sheet) {
        Ok((sheet_name, rows)) => tags_from_rows(&sheet_name, &rows),
        Err(e) => (Vec::new(), vec![e]),
    }
}

/// The sheet's name (empty for CSV) and its rows of cell texts.
fn read_rows(path: &Path, sheet: Option<&str>) -> Result<(String, Vec<Vec<String>>), TagFileError> {
    let whole = |message: String| TagFileError { row: 0, message };
    let is_csv = path
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("csv"));
    let (sheet_name, rows) = if is_csv {
        if sheet.is_some() {
            return Err(whole(
                "tags_sheet is for ODS/XLSX workbooks, not CSV".into(),
            ));
        }
        let text = std::fs::read_to_string(path).map_err(|e| whole(format!("cannot read: {e}")))?;
        (
            String::new(),
            parse_csv(&text).map_err(|(row, m)| TagFileError { row, message: m })?,
        )
    } else {
        // ODS and XLSX only: the old binary formats (.xls, .xlsb) would
        // pull their readers and code-page tables into a binary meant for
        // small flash (README: Binary size). Save as .xlsx or .ods.
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or_default()
            .to_ascii_lowercase();
        let (name, range) = match ext.as_str() {
            "xlsx" | "xlsm" => {
                let book: Xlsx<_> =
                    open_workbook(path).map_err(|e| whole(format!("cannot read workbook: {e}")))?;
                pick_sheet(book, sheet).map_err(whole)?
            }
            "ods" => {
                let book: Ods<_> =
                    open_workbook(path).map_err(|e| whole(format!("cannot read workbook: {e}")))?;
                pick_sheet(book, sheet).map_err(whole)?
            }
            other => {
                return Err(whole(format!(
                    "tag files are .csv, .ods or .xlsx, not `.{other}` (save .xls/.xlsb workbooks as .xlsx)"
                )));
            }
        };
        // Rows as the user numbers them: the range may start below row 1.
        let first_row = range.start().map_or(0, |(r, _)| r as usize);
        let mut rows: Vec<Vec<String>> = vec![Vec::new(); first_row];
        rows.extend(range.rows().map(|r| r.iter().map(cell_text).collect()));
        (name, rows)
    };
    Ok((sheet_name, rows))
}

/// The named sheet (or the first) of a workbook, with its cells.
fn pick_sheet<RS, R>(mut book: R, sheet: Option<&str>) -> Result<(String, Range<Data>), String>
where
    RS: std::io::Read + std::io::Seek,
    R: Reader<RS>,
    R::Error: std::fmt::Display,
{
    let names = book.sheet_names();
    let name = match sheet {
        Some(s) => names
            .iter()
            .find(|n| n.as_str() == s)
            .cloned()
            .ok_or_else(|| format!("no sheet `{s}` (sheets: {})", names.join(", ")))?,
        None => names
            .first()
            .cloned()
            .ok_or_else(|| "the workbook has no sheets".to_string())?,
    };
    let range = book
        .worksheet_range(&name)
        .map_err(|e| format!("sheet `{name}`: {e}"))?;
    Ok((name, range))
}

fn cell_text(d: &Data) -> String {
    match d {
        Data::Empty => String::new(),
        Data::String(s) => s.trim().to_string(),
        Data::Float(f) if f.fract() == 0.0 && f.abs() < 1e15 => format!("{}", *f as i64),
        Data::Float(f) => f.to_string(),
        Data::Int(i) => i.to_string(),
        Data::Bool(b) => b.to_string(),
        other => other.to_string(),
    }
}

fn column_letter(mut i: usize) -> String {
    let mut s = String::new();
    loop {
        s.insert(0, (b'A' + (i % 26) as u8) as char);
        if i < 26 {
            return s;
        }
        i = i / 26 - 1;
    }
}

/// Every tag of the rows, and every mistake (each bad cell of a row, not
/// its first only).
pub(crate) fn tags_from_rows(
    sheet: &str,
    rows: &[Vec<String>],
) -> (Vec<(TagConfig, Origin)>, Vec<TagFileError>) {
    let at = |row: usize, col: Option<(usize, &str)>, m: String| {
        let mut place = String::new();
        if !sheet.is_empty() {
            place.push_str(&format!("sheet `{sheet}`, "));
        }
        if let Some((c, name)) = col {
            place.push_str(&format!("column {} (`{name}`): ", column_letter(c)));
        }
        TagFileError {
            row,
            message: format!("{place}{m}"),
        }
    };
    let mut errors = Vec::new();
    let Some(header_at) = rows.iter().position(|r| r.iter().any(|c| !c.is_empty())) else {
        return (Vec::new(), vec![at(0, None, "no header row".into())]);
    };
    let header: Vec<String> = rows[header_at]
        .iter()
        .map(|h| h.trim().to_ascii_lowercase())
        .collect();
    for (i, h) in header.iter().enumerate() {
        if !h.is_empty() && !COLUMNS.contains(&h.as_str()) {
            errors.push(at(
                header_at + 1,
                Some((i, h)),
                format!("unknown column (known: {})", COLUMNS.join(", ")),
            ));
        }
    }
    let col = |name: &str| header.iter().position(|h| h == name);
    for required in ["name", "address"] {
        if col(required).is_none() {
            errors.push(at(
                header_at + 1,
                None,
                format!("missing column `{required}`"),
            ));
        }
    }
    if !errors.is_empty() {
        return (Vec::new(), errors);
    }
    let mut tags = Vec::new();
    for (r, cells) in rows.iter().enumerate().skip(header_at + 1) {
        let row = r + 1;
        let get = |name: &str| -> Option<(usize, &str)> {
            let i = col(name)?;
            cells
                .get(i)
                .map(|v| v.trim())
                .filter(|v| !v.is_empty())
                .map(|v| (i, v))
        };
        let name = get("name").map(|(_, v)| v.to_string()).unwrap_or_default();
        if name.is_empty() || name.starts_with('#') {
            continue;
        }
        let before = errors.len();
        let text = |n: &str| get(n).map(|(_, v)| v.to_string());
        let mut num = |n: &str| -> Option<f64> {
            let (i, v) = get(n)?;
            v.replace(',', ".").parse::<f64>().ok().or_else(|| {
                errors.push(at(row, Some((i, n)), format!("`{v}` is not a number")));
                None
            })
        };
        let (scale, offset) = (num("scale"), num("offset"));
        let (deadband, deadband_pct, heartbeat_s) =
            (num("deadband"), num("deadband_pct"), num("heartbeat_s"));
        let (span_low, span_high) = (num("span_low"), num("span_high"));
        let mut flag = |n: &str| -> Option<bool> {
            let (i, v) = get(n)?;
            match v.to_ascii_lowercase().as_str() {
                "true" | "yes" | "1" | "x" | "y" => Some(true),
                "false" | "no" | "0" | "n" => Some(false),
                _ => {
                    errors.push(at(row, Some((i, n)), format!("`{v}` is not true or false")));
                    None
                }
            }
        };
        let (writable, archive_prev) = (flag("writable"), flag("archive_prev"));
        let address = text("address");
        if address.is_none() {
            errors.push(at(
                row,
                col("address").map(|i| (i, "address")),
                format!("tag `{name}` has no address"),
            ));
        }
        let count = get("count").and_then(|(i, v)| {
            v.parse::<u16>().ok().or_else(|| {
                errors.push(at(
                    row,
                    Some((i, "count")),
                    format!("`{v}` is not a count 0..65535"),
                ));
                None
            })
        });
        let span = match (span_low, span_high) {
            (Some(lo), Some(hi)) => Some((lo, hi)),
            (None, None) => None,
            _ => {
                errors.push(at(
                    row,
                    None,
                    format!("tag `{name}`: give both span_low and span_high, or neither"),
                ));
                None
            }
        };
        if errors.len() > before {
            continue;
        }
        let tag = TagConfig {
            name: name.into(),
            address: address.unwrap_or_default(),
            data_type: text("type"),
            count,
            order: text("order"),
            scale: scale.unwrap_or(1.0),
            offset: offset.unwrap_or(0.0),
            writable: writable.unwrap_or(false),
            description: text("description").unwrap_or_default(),
            unit: text("unit").unwrap_or_default(),
            deadband,
            deadband_pct,
            span,
            heartbeat_s,
            archive_prev,
        };
        tags.push((
            tag,
            Origin {
                sheet: sheet.to_string(),
                row,
            },
        ));
    }
    (tags, errors)
}

/// Splits CSV text into rows of fields: RFC 4180 quoting, `,` or — as
/// European spreadsheet exports write it — `;` when the header has `;` and
/// no `,`. Errors carry the 1-based row.
pub(crate) fn parse_csv(text: &str) -> Result<Vec<Vec<String>>, (usize, String)> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let first = text.lines().next().unwrap_or("");
    let sep = if first.contains(';') && !first.contains(',') {
        ';'
    } else {
        ','
    };
    let mut rows = Vec::new();
    let mut row = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut line = 1;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => {
                if c == '\n' {
                    line += 1;
                }
                field.push(c);
            }
            (false, '"') if field.trim().is_empty() => {
                field.clear();
                quoted = true;
            }
            (false, c) if c == sep => row.push(std::mem::take(&mut field).trim().to_string()),
            (false, '\r') => {}
            (false, '\n') => {
                row.push(std::mem::take(&mut field).trim().to_string());
                rows.push(std::mem::take(&mut row));
                line += 1;
            }
            (false, c) => field.push(c),
        }
    }
    if quoted {
        return Err((line, "a quoted field is not closed".into()));
    }
    if !field.is_empty() || !row.is_empty() {
        row.push(field.trim().to_string());
        rows.push(row);
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_binary_workbooks_are_refused_by_name() {
        let (tags, e) = read(Path::new("/nonexistent/tags.xls"), None);
        assert!(tags.is_empty());
        let e = &e[0];
        assert_eq!(e.row, 0);
        assert!(
            e.message.contains(".csv, .ods or .xlsx") && e.message.contains(".xls"),
            "{}",
            e.message
        );
    }

    #[test]
    fn csv_quoting_and_separators() {
        let rows =
            parse_csv("name,description\nA,\"says \"\"hi\"\", twice\"\r\nB,\"two\nlines\"\n")
                .unwrap();
        assert_eq!(rows[1], vec!["A", "says \"hi\", twice"]);
        assert_eq!(rows[2], vec!["B", "two\nlines"]);
        let rows = parse_csv("name;scale\nA;0,1\n").unwrap();
        assert_eq!(rows[1], vec!["A", "0,1"]);
        assert!(parse_csv("name\n\"open").is_err());
    }

    fn rows(text: &str) -> Vec<Vec<String>> {
        parse_csv(text).unwrap()
    }

    #[test]
    fn rows_become_tags_with_defaults() {
        let tags = tags_from_rows(
            "",
            &rows(
                "Name,Address,Type,Scale,Writable,Span_Low,Span_High,Deadband_Pct\n# comment,,,,,,,\nFlow,40011,f32,\"0,1\",x,0,200,0.5\nLevel,hr:3,,,,,,\n",
            ),
        );
        assert!(tags.1.is_empty(), "{:?}", tags.1);
        let tags = tags.0;
        assert_eq!(tags.len(), 2);
        let (flow, origin) = &tags[0];
        assert_eq!(origin.row, 3);
        assert_eq!(
            (flow.scale, flow.writable, flow.span, flow.deadband_pct),
            (0.1, true, Some((0.0, 200.0)), Some(0.5))
        );
        assert_eq!(tags[1].0.data_type, None);
        assert_eq!(tags[1].0.scale, 1.0);
    }

    #[test]
    fn errors_name_row_and_column() {
        // Every bad cell of every row: the good rows still become tags.
        let (tags, e) = tags_from_rows(
            "plc1",
            &rows("name,address,scale,writable\nA,hr:0,lots,maybe\nB,hr:1,2,x\nC,,1,\n"),
        );
        assert_eq!(tags.len(), 1);
        assert_eq!(tags[0].0.name.as_ref(), "B");
        let found: Vec<(usize, &str)> = e.iter().map(|e| (e.row, e.message.as_str())).collect();
        assert_eq!(
            found,
            [
                (
                    2,
                    "sheet `plc1`, column C (`scale`): `lots` is not a number"
                ),
                (
                    2,
                    "sheet `plc1`, column D (`writable`): `maybe` is not true or false"
                ),
                (
                    4,
                    "sheet `plc1`, column B (`address`): tag `C` has no address"
                ),
            ]
        );
        let (_, e) = tags_from_rows("", &rows("name,address,colour\n"));
        assert!(
            e[0].message
                .starts_with("column C (`colour`): unknown column"),
            "{}",
            e[0].message
        );
        let (_, e) = tags_from_rows("", &rows("name,type\nA,u16\n"));
        assert!(e[0].message.contains("missing column `address`"));
        assert_eq!(column_letter(27), "AB");
    }
}
