//! What the HTTP server answers, rendered from a [`Snapshot`]: the JSON
//! API, the Prometheus metrics and the health check. Pure functions of
//! the snapshot (storage's figures included, from its last report), so
//! they are tested without sockets and no request touches a file.

use crate::diagnostics::{Family, Link, MetricKind, Publish, Store};
use crate::json;
use crate::model::{TagState, Value, format_ts};
use crate::status::{Kind, Snapshot};
use std::fmt::Write;

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

/// A diagnostic's value as JSON, its type's zero while it has none.
fn diag_json(d: Link, v: Option<&Value>) -> String {
    use crate::diagnostics::Type;
    match (v, d.describe().data_type) {
        (Some(v), _) => json::value(v),
        (None, Type::Bool) => "false".into(),
        (None, Type::Int) => "0".into(),
        (None, Type::Float) => "0.0".into(),
        (None, Type::Text) => "\"\"".into(),
    }
}

/// A diagnostic's value for a metric (a bool as 1 or 0).
fn diag_f64(v: Option<&Value>) -> f64 {
    v.and_then(Value::as_f64).unwrap_or(0.0)
}

/// The connectors with their link health ([`Link`]'s JSON keys), as a JSON
/// array.
pub fn connectors(s: &Snapshot) -> String {
    let items: Vec<String> = (0..s.connectors.len())
        .map(|c| {
            let v = &s.connectors[c];
            let tags = s.tags.iter().filter(|m| m.kind == Kind::Device(c)).count();
            let bad = s
                .tags
                .iter()
                .zip(&s.states)
                .filter(|(m, st)| m.kind == Kind::Device(c) && !st.status.is_good())
                .count();
            let mut o = format!(
                "{{\"name\":{},\"describe\":{}",
                json::string(&v.name),
                json::string(&v.describe)
            );
            for &d in Link::ALL {
                let _ = write!(
                    o,
                    ",\"{}\":{}",
                    d.describe().json,
                    diag_json(d, s.link(c, d))
                );
            }
            let _ = write!(o, ",\"tags\":{tags},\"bad_tags\":{bad}}}");
            o
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

/// Storage, as a JSON object ([`Store`]'s JSON keys and the report's
/// figures).
pub fn storage(s: &Snapshot) -> String {
    let r = &s.storage;
    let (ack_at, ack_result) = r.last_ack.clone().unwrap_or_default();
    let mut o = format!("{{\"alive\":{}", s.storage_alive);
    for &d in Store::ALL {
        let _ = write!(o, ",\"{}\":{}", d.describe().json, r.get(d));
    }
    let _ = write!(
        o,
        ",\"last_id\":{},\"ack_lag_rows\":{},\"last_ack_at\":{},\"last_ack_result\":{},\"outbox_bytes\":{},\"disk_free_bytes\":{},\"disk_total_bytes\":{}}}",
        r.next_id - 1,
        r.ack_lag(),
        json::string(&ack_at),
        json::string(&ack_result),
        r.outbox_bytes,
        r.disk_free,
        r.disk_total
    );
    o
}

/// The outputs, as a JSON array: each one's name, kind, what it talks to
/// and its [`Publish`] figures by their JSON keys.
pub fn outputs(s: &Snapshot) -> String {
    let items: Vec<String> = s
        .outputs
        .iter()
        .map(|o| {
            let mut x = format!(
                "{{\"name\":{},\"kind\":{},\"describe\":{}",
                json::string(&o.name),
                json::string(o.kind),
                json::string(&o.describe)
            );
            for &d in Publish::ALL {
                let _ = write!(x, ",\"{}\":{}", d.describe().json, json::value(o.get(d)));
            }
            x.push('}');
            x
        })
        .collect();
    format!("[{}]", items.join(","))
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
pub fn metrics(s: &Snapshot) -> String {
    let mut out = String::with_capacity(4096);
    let mut family = |name: &str, kind: &str, help: &str, rows: Vec<(String, f64)>| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (labels, v) in rows {
            let _ = writeln!(out, "{name}{labels} {v}");
        }
    };
    for &d in Link::ALL {
        if let Some(m) = d.describe().metric {
            let rows = (0..s.connectors.len())
                .map(|c| {
                    (
                        format!("{{connector=\"{}\"}}", label(&s.connectors[c].name)),
                        diag_f64(s.link(c, d)) * m.scale,
                    )
                })
                .collect();
            family(m.name, m.kind.name(), m.help, rows);
        }
    }
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
    for &d in Publish::ALL {
        if let Some(m) = d.describe().metric {
            let rows = s
                .outputs
                .iter()
                .map(|o| {
                    (
                        format!("{{output=\"{}\"}}", label(&o.name)),
                        diag_f64(Some(o.get(d))) * m.scale,
                    )
                })
                .collect();
            family(m.name, m.kind.name(), m.help, rows);
        }
    }
    family(
        "rtds_storage_up",
        "gauge",
        "1 while the storage thread runs",
        vec![(String::new(), f64::from(u8::from(s.storage_alive)))],
    );
    let r = &s.storage;
    for &d in Store::ALL {
        if let Some(m) = d.describe().metric {
            let v = r.get(d) as f64 * m.scale;
            family(m.name, m.kind.name(), m.help, vec![(String::new(), v)]);
        }
    }
    family(
        "rtds_storage_rows_total",
        MetricKind::Counter.name(),
        "archive rows written (the last archive id)",
        vec![(String::new(), (r.next_id - 1) as f64)],
    );
    family(
        "rtds_storage_ack_lag_rows",
        MetricKind::Gauge.name(),
        "archive rows the Historian has not acknowledged yet",
        vec![(String::new(), r.ack_lag() as f64)],
    );
    family(
        "rtds_storage_disk_free_bytes",
        MetricKind::Gauge.name(),
        "free bytes on the live database's file system",
        vec![(String::new(), r.disk_free as f64)],
    );
    out
}

/// `Ok` while the loop scans and storage stores; otherwise the reason.
/// From the snapshot alone: no file system work per request.
pub fn health(s: &Snapshot) -> Result<(), String> {
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
    if s.storage.falling_behind() {
        return Err(format!(
            "storage falls behind: {} archive rows wait for the disk",
            s.storage.get(Store::Pending)
        ));
    }
    // An output that does not deliver (its broker away): the data is kept,
    // but the plant's broker does not get it, which monitoring must see.
    for o in &s.outputs {
        if o.get(Publish::Connected) != &Value::Bool(true) {
            return Err(format!(
                "output {} does not deliver ({}); {} changes wait",
                o.name,
                match o.get(Publish::LastError) {
                    Value::Str(e) if !e.is_empty() => e.as_str(),
                    _ => "not connected yet",
                },
                o.get(Publish::Queued)
            ));
        }
    }
    Ok(())
}

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
                name: crate::diagnostics::tag_name("plc", Link::ALL[k]).into(),
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
            storage: crate::storage::StorageReport::default(),
            outputs: Vec::new(),
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
        let mut s = s;
        s.storage.next_id = 101;
        s.storage.values[Store::AckedId.index()] = 60;
        s.storage.values[Store::DroppedRows.index()] = 3;
        let m = metrics(&s);
        assert!(m.contains("rtds_storage_dropped_rows_total 3\n"), "{m}");
        assert!(
            m.contains("rtds_connector_connected{connector=\"plc\"} 1\n"),
            "{m}"
        );
        let st = storage(&s);
        assert!(
            st.contains("\"acked_id\":60,") && st.contains("\"ack_lag_rows\":40"),
            "{st}"
        );
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
        s.last_cycle = s.taken;
        assert_eq!(health(&s), Ok(()));
        s.storage.values[Store::Pending.index()] = 1_500_000;
        assert!(health(&s).unwrap_err().contains("falls behind"));
        s.storage.values[Store::Pending.index()] = 0;
        s.last_cycle = s.taken - chrono::Duration::seconds(5);
        assert!(health(&s).unwrap_err().contains("no scan cycle"));
        s.last_cycle = s.taken;
        s.storage_alive = false;
        assert!(health(&s).unwrap_err().contains("storage"));
    }
}
