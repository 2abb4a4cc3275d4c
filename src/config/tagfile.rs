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

/// Reads the tags of `path` (CSV by extension `.csv`, else a workbook).
pub fn read(path: &Path, sheet: Option<&str>) -> Result<Vec<(TagConfig, Origin)>, TagFileError> {
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
    tags_from_rows(&sheet_name, &rows)
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

fn tags_from_rows(
    sheet: &str,
    rows: &[Vec<String>],
) -> Result<Vec<(TagConfig, Origin)>, TagFileError> {
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
    let header_at = rows
        .iter()
        .position(|r| r.iter().any(|c| !c.is_empty()))
        .ok_or_else(|| at(0, None, "no header row".into()))?;
    let header: Vec<String> = rows[header_at]
        .iter()
        .map(|h| h.trim().to_ascii_lowercase())
        .collect();
    for (i, h) in header.iter().enumerate() {
        if !h.is_empty() && !COLUMNS.contains(&h.as_str()) {
            return Err(at(
                header_at + 1,
                Some((i, h)),
                format!("unknown column (known: {})", COLUMNS.join(", ")),
            ));
        }
    }
    let col = |name: &str| header.iter().position(|h| h == name);
    for required in ["name", "address"] {
        if col(required).is_none() {
            return Err(at(
                header_at + 1,
                None,
                format!("missing column `{required}`"),
            ));
        }
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
        let text = |n: &str| get(n).map(|(_, v)| v.to_string());
        let num = |n: &str| -> Result<Option<f64>, TagFileError> {
            match get(n) {
                None => Ok(None),
                Some((i, v)) => v
                    .replace(',', ".")
                    .parse::<f64>()
                    .map(Some)
                    .map_err(|_| at(row, Some((i, n)), format!("`{v}` is not a number"))),
            }
        };
        let flag = |n: &str| -> Result<Option<bool>, TagFileError> {
            match get(n) {
                None => Ok(None),
                Some((i, v)) => match v.to_ascii_lowercase().as_str() {
                    "true" | "yes" | "1" | "x" | "y" => Ok(Some(true)),
                    "false" | "no" | "0" | "n" => Ok(Some(false)),
                    _ => Err(at(row, Some((i, n)), format!("`{v}` is not true or false"))),
                },
            }
        };
        let address = text("address").ok_or_else(|| {
            at(
                row,
                col("address").map(|i| (i, "address")),
                format!("tag `{name}` has no address"),
            )
        })?;
        let count = match get("count") {
            None => None,
            Some((i, v)) => Some(v.parse::<u16>().map_err(|_| {
                at(
                    row,
                    Some((i, "count")),
                    format!("`{v}` is not a count 0..65535"),
                )
            })?),
        };
        let span = match (num("span_low")?, num("span_high")?) {
            (Some(lo), Some(hi)) => Some((lo, hi)),
            (None, None) => None,
            _ => {
                return Err(at(
                    row,
                    None,
                    "give both span_low and span_high, or neither".into(),
                ));
            }
        };
        let tag = TagConfig {
            name: name.into(),
            address,
            data_type: text("type"),
            count,
            order: text("order"),
            scale: num("scale")?.unwrap_or(1.0),
            offset: num("offset")?.unwrap_or(0.0),
            writable: flag("writable")?.unwrap_or(false),
            description: text("description").unwrap_or_default(),
            unit: text("unit").unwrap_or_default(),
            deadband: num("deadband")?,
            deadband_pct: num("deadband_pct")?,
            span,
            heartbeat_s: num("heartbeat_s")?,
            archive_prev: flag("archive_prev")?,
        };
        tags.push((
            tag,
            Origin {
                sheet: sheet.to_string(),
                row,
            },
        ));
    }
    Ok(tags)
}

/// Splits CSV text into rows of fields: RFC 4180 quoting, `,` or — as
/// European spreadsheet exports write it — `;` when the header has `;` and
/// no `,`. Errors carry the 1-based row.
fn parse_csv(text: &str) -> Result<Vec<Vec<String>>, (usize, String)> {
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
        let e = read(Path::new("/nonexistent/tags.xls"), None).unwrap_err();
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
            &rows("Name,Address,Type,Scale,Writable,Span_Low,Span_High,Deadband_Pct\n# comment,,,,,,,\nFlow,40011,f32,\"0,1\",x,0,200,0.5\nLevel,hr:3,,,,,,\n"),
        )
        .unwrap();
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
        let e = tags_from_rows("plc1", &rows("name,address,scale\nA,hr:0,lots\n")).unwrap_err();
        assert_eq!(e.row, 2);
        assert_eq!(
            e.message,
            "sheet `plc1`, column C (`scale`): `lots` is not a number"
        );
        let e = tags_from_rows("", &rows("name,address,colour\n")).unwrap_err();
        assert!(
            e.message.starts_with("column C (`colour`): unknown column"),
            "{}",
            e.message
        );
        let e = tags_from_rows("", &rows("name,type\nA,u16\n")).unwrap_err();
        assert!(e.message.contains("missing column `address`"));
        assert_eq!(column_letter(27), "AB");
    }
}
