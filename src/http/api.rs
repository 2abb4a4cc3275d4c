//! What the HTTP server answers, rendered from a [`Snapshot`]: the JSON
//! API, the Prometheus metrics and the health check. Pure functions of
//! the snapshot (and of the storage figures read from the live database),
//! so they are tested without sockets.

use crate::connector::DIAGNOSTICS;
use crate::json;
use crate::model::{TagState, Value, format_ts};
use crate::status::{Kind, Snapshot};
use std::fmt::Write;
use std::path::Path;

/// Storage's own figures, as its `_storage.*` tags and the live
/// database's meta table hold them, plus the disk.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StorageFigures {
    /// `_storage._pending`.
    pub pending: i64,
    /// `_storage._outbox_segments`.
    pub outbox_segments: i64,
    /// `_storage._published`.
    pub published: i64,
    /// `_storage._dropped_rows`.
    pub dropped_rows: i64,
    /// `_storage._purged_rows`.
    pub purged_rows: i64,
    /// `_storage._acked_id`.
    pub acked_id: i64,
    /// The id the next archive row gets.
    pub next_id: i64,
    /// The last acknowledgement: (when written, result), if any.
    pub last_ack: Option<(String, String)>,
    /// Bytes in the outbox.
    pub outbox_bytes: u64,
    /// Free and total bytes of the live database's file system.
    pub disk_free: u64,
    /// See `disk_free`.
    pub disk_total: u64,
}

/// Reads storage's figures (read-only; the live database is in WAL mode,
/// so this never waits for the storage thread).
pub fn storage_figures(live_db: &Path, outbox: &Path) -> StorageFigures {
    let mut f = StorageFigures::default();
    if let Ok(c) =
        rusqlite::Connection::open_with_flags(live_db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
    {
        let _ = c.busy_timeout(std::time::Duration::from_millis(200));
        if let Ok(mut st) =
            c.prepare("SELECT name, value FROM current WHERE name LIKE '\\_storage.%' ESCAPE '\\'")
            && let Ok(rows) = st.query_map([], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, Option<i64>>(1)?))
            })
        {
            for (name, v) in rows.flatten() {
                let v = v.unwrap_or(0);
                match name.as_str() {
                    "_storage._pending" => f.pending = v,
                    "_storage._outbox_segments" => f.outbox_segments = v,
                    "_storage._published" => f.published = v,
                    "_storage._dropped_rows" => f.dropped_rows = v,
                    "_storage._purged_rows" => f.purged_rows = v,
                    "_storage._acked_id" => f.acked_id = v,
                    _ => {}
                }
            }
        }
        f.next_id = c
            .query_row("SELECT value FROM meta WHERE key = 'next_id'", [], |r| {
                r.get::<_, i64>(0)
            })
            .unwrap_or(1);
        f.last_ack = c
            .query_row(
                "SELECT written_at, coalesce(result, 'pending') FROM ack ORDER BY id DESC LIMIT 1",
                [],
                |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)),
            )
            .ok();
    }
    f.outbox_bytes = std::fs::read_dir(outbox)
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0);
    if let Some(dir) = live_db.parent()
        && let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
    {
        // SAFETY: a valid C string and an out-struct statvfs fills.
        let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::statvfs(c.as_ptr(), &mut s) } == 0 {
            f.disk_free = s.f_bavail as u64 * s.f_frsize as u64;
            f.disk_total = s.f_blocks as u64 * s.f_frsize as u64;
        }
    }
    f
}

fn source(s: &Snapshot, kind: Kind) -> (&str, &'static str) {
    match kind {
        Kind::Device(c) => (s.connectors[c].name.as_str(), "device"),
        Kind::Diagnostic(c) => (s.connectors[c].name.as_str(), "diagnostic"),
        Kind::Calculated => ("script", "calculated"),
    }
}

/// One tag as a JSON object.
pub fn tag(s: &Snapshot, i: usize) -> String {
    let m = &s.tags[i];
    let st: &TagState = &s.states[i];
    let (src, kind) = source(s, m.kind);
    let age = (s.taken - st.ts).num_milliseconds() as f64 / 1000.0;
    format!(
        "{{\"name\":{},\"value\":{},\"text\":{},\"status\":{},\"status_text\":{},\"ts\":{},\"age_s\":{age:.3},\"source\":{},\"kind\":\"{kind}\",\"address\":{},\"writable\":{}}}",
        json::string(&m.name),
        st.value.as_ref().map_or("null".into(), json::value),
        json::string(&st.value.as_ref().map_or(String::new(), Value::to_string)),
        st.status.0,
        json::string(&st.status.describe()),
        json::string(&format_ts(&st.ts)),
        json::string(src),
        json::string(&m.address),
        m.writable
    )
}

/// Every tag whose name contains `filter` (case-insensitive), as a JSON
/// array.
pub fn tags(s: &Snapshot, filter: Option<&str>) -> String {
    let needle = filter.map(str::to_lowercase).unwrap_or_default();
    let items: Vec<String> = (0..s.tags.len())
        .filter(|&i| needle.is_empty() || s.tags[i].name.to_lowercase().contains(&needle))
        .map(|i| tag(s, i))
        .collect();
    format!("[{}]", items.join(","))
}

/// A connector's diagnostic value `k` (index into [`DIAGNOSTICS`]).
fn diag(s: &Snapshot, c: usize, k: usize) -> Option<&Value> {
    s.states
        .get(s.connectors[c].diagnostics + k)
        .and_then(|st| st.value.as_ref())
}

fn diag_f64(s: &Snapshot, c: usize, k: usize) -> f64 {
    diag(s, c, k).and_then(Value::as_f64).unwrap_or(0.0)
}

/// The connectors with their link health, as a JSON array.
pub fn connectors(s: &Snapshot) -> String {
    let items: Vec<String> = (0..s.connectors.len())
        .map(|c| {
            let v = &s.connectors[c];
            let tags = s
                .tags
                .iter()
                .filter(|m| m.kind == Kind::Device(c))
                .count();
            let bad = s
                .tags
                .iter()
                .zip(&s.states)
                .filter(|(m, st)| m.kind == Kind::Device(c) && !st.status.is_good())
                .count();
            let last_error = diag(s, c, 4).map_or(String::new(), Value::to_string);
            format!(
                "{{\"name\":{},\"describe\":{},\"connected\":{},\"response_ms\":{:.3},\"requests\":{},\"errors\":{},\"last_error\":{},\"writes\":{},\"write_errors\":{},\"tags\":{tags},\"bad_tags\":{bad}}}",
                json::string(&v.name),
                json::string(&v.describe),
                diag(s, c, 0) == Some(&Value::Bool(true)),
                diag_f64(s, c, 1),
                diag_f64(s, c, 2) as i64,
                diag_f64(s, c, 3) as i64,
                json::string(&last_error),
                diag_f64(s, c, 5) as i64,
                diag_f64(s, c, 6) as i64,
            )
        })
        .collect();
    format!("[{}]", items.join(","))
}

/// The scripts' counters, as a JSON array.
pub fn scripts(s: &Snapshot) -> String {
    let items: Vec<String> = s
        .scripts
        .iter()
        .map(|x| {
            format!(
                "{{\"name\":{},\"runs\":{},\"errors\":{},\"last_error\":{}}}",
                json::string(&x.name),
                x.runs,
                x.errors,
                json::string(&x.last_error)
            )
        })
        .collect();
    format!("[{}]", items.join(","))
}

/// Storage, as a JSON object.
pub fn storage(s: &Snapshot, f: &StorageFigures) -> String {
    let (ack_at, ack_result) = f.last_ack.clone().unwrap_or_default();
    format!(
        "{{\"alive\":{},\"pending_rows\":{},\"outbox_segments\":{},\"published\":{},\"dropped_rows\":{},\"purged_rows\":{},\"acked_id\":{},\"last_id\":{},\"ack_lag_rows\":{},\"last_ack_at\":{},\"last_ack_result\":{},\"outbox_bytes\":{},\"disk_free_bytes\":{},\"disk_total_bytes\":{}}}",
        s.storage_alive,
        f.pending,
        f.outbox_segments,
        f.published,
        f.dropped_rows,
        f.purged_rows,
        f.acked_id,
        f.next_id - 1,
        (f.next_id - 1 - f.acked_id).max(0),
        json::string(&ack_at),
        json::string(&ack_result),
        f.outbox_bytes,
        f.disk_free,
        f.disk_total
    )
}

/// The loop's own figures, as a JSON object.
pub fn status(s: &Snapshot) -> String {
    let (last, p50, p99, max) = s.lateness_ms;
    format!(
        "{{\"version\":\"{}\",\"started\":{},\"now\":{},\"cycle_ms\":{},\"cycles\":{},\"lateness_ms\":{{\"last\":{last:.3},\"p50\":{p50:.3},\"p99\":{p99:.3},\"max\":{max:.3}}},\"tags\":{}}}",
        env!("CARGO_PKG_VERSION"),
        json::string(&format_ts(&s.started)),
        json::string(&format_ts(&s.taken)),
        s.cycle_ms,
        s.cycles,
        s.tags.len()
    )
}

/// A Prometheus label value.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Prometheus text exposition format 0.0.4.
pub fn metrics(s: &Snapshot, f: &StorageFigures) -> String {
    let mut out = String::with_capacity(4096);
    let mut family = |name: &str, kind: &str, help: &str, rows: Vec<(String, f64)>| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (labels, v) in rows {
            let _ = writeln!(out, "{name}{labels} {v}");
        }
    };
    let per = |k: usize, scale: f64| -> Vec<(String, f64)> {
        (0..s.connectors.len())
            .map(|c| {
                (
                    format!("{{connector=\"{}\"}}", label(&s.connectors[c].name)),
                    diag_f64(s, c, k) * scale,
                )
            })
            .collect()
    };
    family(
        "rtds_connector_connected",
        "gauge",
        "1 when the connector's last poll reached its device",
        (0..s.connectors.len())
            .map(|c| {
                (
                    format!("{{connector=\"{}\"}}", label(&s.connectors[c].name)),
                    f64::from(u8::from(diag(s, c, 0) == Some(&Value::Bool(true)))),
                )
            })
            .collect(),
    );
    family(
        "rtds_connector_requests_total",
        "counter",
        "requests the connector sent",
        per(2, 1.0),
    );
    family(
        "rtds_connector_errors_total",
        "counter",
        "failed polls plus tag errors",
        per(3, 1.0),
    );
    family(
        "rtds_connector_response_seconds",
        "gauge",
        "duration of the last poll",
        per(1, 0.001),
    );
    family(
        "rtds_connector_writes_total",
        "counter",
        "writes the device confirmed",
        per(5, 1.0),
    );
    family(
        "rtds_connector_write_errors_total",
        "counter",
        "writes that failed or the device refused",
        per(6, 1.0),
    );
    let bad = |kind: fn(Kind) -> bool| {
        s.tags
            .iter()
            .zip(&s.states)
            .filter(|(m, st)| kind(m.kind) && !st.status.is_good())
            .count() as f64
    };
    family(
        "rtds_bad_tags",
        "gauge",
        "device tags whose status is not good",
        vec![(String::new(), bad(|k| matches!(k, Kind::Device(_))))],
    );
    family(
        "rtds_cycles_total",
        "counter",
        "scan cycles completed",
        vec![(String::new(), s.cycles as f64)],
    );
    let (_, p50, p99, max) = s.lateness_ms;
    family(
        "rtds_cycle_lateness_seconds",
        "summary",
        "how late cycles started against their schedule, over the last 1000 cycles",
        vec![
            ("{quantile=\"0.5\"}".into(), p50 / 1000.0),
            ("{quantile=\"0.99\"}".into(), p99 / 1000.0),
            ("{quantile=\"1\"}".into(), max / 1000.0),
        ],
    );
    family(
        "rtds_script_runs_total",
        "counter",
        "script runs",
        s.scripts
            .iter()
            .map(|x| (format!("{{script=\"{}\"}}", label(&x.name)), x.runs as f64))
            .collect(),
    );
    family(
        "rtds_script_errors_total",
        "counter",
        "failed script runs and refused writes",
        s.scripts
            .iter()
            .map(|x| {
                (
                    format!("{{script=\"{}\"}}", label(&x.name)),
                    x.errors as f64,
                )
            })
            .collect(),
    );
    family(
        "rtds_storage_up",
        "gauge",
        "1 while the storage thread runs",
        vec![(String::new(), f64::from(u8::from(s.storage_alive)))],
    );
    family(
        "rtds_storage_rows_total",
        "counter",
        "archive rows written (the last archive id)",
        vec![(String::new(), (f.next_id - 1) as f64)],
    );
    family(
        "rtds_storage_pending_rows",
        "gauge",
        "archive rows waiting in memory for the disk",
        vec![(String::new(), f.pending as f64)],
    );
    family(
        "rtds_storage_dropped_rows_total",
        "counter",
        "archive rows dropped before acknowledgement (queue bound, retention)",
        vec![(String::new(), f.dropped_rows as f64)],
    );
    family(
        "rtds_storage_outbox_segments",
        "gauge",
        "segments in the outbox not yet acknowledged",
        vec![(String::new(), f.outbox_segments as f64)],
    );
    family(
        "rtds_storage_ack_lag_rows",
        "gauge",
        "archive rows the Historian has not acknowledged yet",
        vec![(String::new(), (f.next_id - 1 - f.acked_id).max(0) as f64)],
    );
    family(
        "rtds_storage_disk_free_bytes",
        "gauge",
        "free bytes on the live database's file system",
        vec![(String::new(), f.disk_free as f64)],
    );
    out
}

/// `Ok` while the loop scans and storage stores; otherwise the reason.
pub fn health(s: &Snapshot, f: &StorageFigures) -> Result<(), String> {
    let last_cycle_age_ms = (s.taken - s.last_cycle).num_milliseconds() as f64;
    if !s.storage_alive {
        return Err("storage thread stopped: nothing is stored".into());
    }
    let limit = (s.cycle_ms as f64) * 3.0 + 1000.0;
    if last_cycle_age_ms > limit {
        return Err(format!(
            "no scan cycle for {:.1} s",
            last_cycle_age_ms / 1000.0
        ));
    }
    if f.pending as usize > crate::storage::MAX_QUEUED_ROWS / 2 {
        return Err(format!(
            "storage falls behind: {} archive rows wait for the disk",
            f.pending
        ));
    }
    Ok(())
}

/// The number of connector diagnostics, for the page's columns.
pub const DIAGNOSTIC_COUNT: usize = DIAGNOSTICS.len();

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Status, Timestamp};
    use crate::status::{ConnectorView, ScriptStats, TagMeta};
    use std::sync::Arc;

    fn snap() -> Snapshot {
        let t0: Timestamp = "2026-11-24T10:00:00Z".parse().unwrap();
        let mut tags = vec![TagMeta {
            name: "Temp \"A\"".into(),
            kind: Kind::Device(0),
            address: "hr:0".into(),
            writable: true,
        }];
        let mut states = vec![TagState {
            value: Some(Value::Int(i64::MIN)),
            status: Status::GOOD,
            ts: t0,
        }];
        let diag_values = [
            Value::Bool(true),
            Value::Float(1.5),
            Value::Int(10),
            Value::Int(2),
            Value::Str("timeout".into()),
            Value::Int(3),
            Value::Int(1),
        ];
        for (k, v) in diag_values.into_iter().enumerate() {
            tags.push(TagMeta {
                name: format!("plc.{}", DIAGNOSTICS[k].0).into(),
                kind: Kind::Diagnostic(0),
                address: "diagnostic".into(),
                writable: false,
            });
            states.push(TagState {
                value: Some(v),
                status: Status::GOOD,
                ts: t0,
            });
        }
        Snapshot {
            taken: "2026-11-24T10:00:01.5Z".parse().unwrap(),
            started: t0,
            cycle_ms: 100,
            cycles: 42,
            last_cycle: t0,
            lateness_ms: (0.1, 0.2, 0.9, 1.5),
            storage_alive: true,
            live_db: "/nonexistent/rtds.db".into(),
            outbox: "/nonexistent/outbox".into(),
            tags: Arc::new(tags),
            states,
            connectors: Arc::new(vec![ConnectorView {
                name: "plc".into(),
                describe: "ModbusTcp".into(),
                diagnostics: 1,
            }]),
            scripts: vec![ScriptStats {
                name: "calc".into(),
                runs: 7,
                errors: 1,
                last_error: "line 3: boom".into(),
            }],
        }
    }

    #[test]
    fn tags_render_exactly_and_escape_names() {
        let s = snap();
        let t = tag(&s, 0);
        assert!(t.contains("\"name\":\"Temp \\\"A\\\"\""), "{t}");
        assert!(t.contains("\"value\":-9223372036854775808"), "{t}");
        assert!(t.contains("\"age_s\":1.500"), "{t}");
        assert_eq!(tags(&s, Some("TEMP")).matches("\"name\"").count(), 1);
        assert_eq!(tags(&s, None).matches("\"name\"").count(), 8);
    }

    #[test]
    fn connectors_and_metrics_read_the_diagnostics() {
        let s = snap();
        let c = connectors(&s);
        assert!(c.contains("\"connected\":true"), "{c}");
        assert!(c.contains("\"requests\":10"), "{c}");
        assert!(c.contains("\"last_error\":\"timeout\""), "{c}");
        assert!(c.contains("\"write_errors\":1"), "{c}");
        let f = StorageFigures {
            next_id: 101,
            acked_id: 60,
            ..Default::default()
        };
        let m = metrics(&s, &f);
        assert!(
            m.contains("rtds_connector_requests_total{connector=\"plc\"} 10\n"),
            "{m}"
        );
        assert!(
            m.contains("rtds_connector_response_seconds{connector=\"plc\"} 0.0015\n"),
            "{m}"
        );
        assert!(m.contains("rtds_storage_ack_lag_rows 40\n"), "{m}");
        assert!(
            m.contains("rtds_script_errors_total{script=\"calc\"} 1\n"),
            "{m}"
        );
        assert!(
            m.contains("rtds_cycle_lateness_seconds{quantile=\"0.99\"} 0.0009\n"),
            "{m}"
        );
    }

    #[test]
    fn health_names_the_reason() {
        let mut s = snap();
        let f = StorageFigures::default();
        s.last_cycle = s.taken;
        assert_eq!(health(&s, &f), Ok(()));
        s.last_cycle = s.taken - chrono::Duration::seconds(5);
        assert!(health(&s, &f).unwrap_err().contains("no scan cycle"));
        s.last_cycle = s.taken;
        s.storage_alive = false;
        assert!(health(&s, &f).unwrap_err().contains("storage"));
    }
}
