//! Diagnostic tags: what RTDS publishes about itself beside the data, so
//! an operator and the Historian see link and storage health where they
//! look for values.
//!
//! One table per family, each entry typed: its tag suffix, value type,
//! unit, description, archive rule, its key in the JSON API and its
//! Prometheus metric. The producers fill values by matching on the family
//! (the compiler insists on every variant); the loop, storage, the API,
//! the metrics and the status page iterate the table. A new diagnostic is
//! one variant and its entry here, and its value where it is measured.

/// The value type of a diagnostic tag (its `tags.type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Type {
    /// A flag.
    Bool,
    /// A count or an id.
    Int,
    /// A measurement.
    Float,
    /// A message.
    Text,
}

impl Type {
    /// The name in the Historian's tag list.
    pub fn name(self) -> &'static str {
        match self {
            Type::Bool => "bool",
            Type::Int => "int",
            Type::Float => "float",
            Type::Text => "string",
        }
    }
}

/// When a diagnostic is archived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Archive {
    /// Every change: a state (link up, an error message) or a counter the
    /// Historian should see move when it moves.
    OnChange,
    /// Only with the heartbeat: a figure that moves every poll (a response
    /// time, a request count) would otherwise fill the archive.
    OnHeartbeat,
}

/// A Prometheus metric kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    /// Goes up and down.
    Gauge,
    /// Only goes up.
    Counter,
}

impl MetricKind {
    /// The name in `# TYPE` lines.
    pub fn name(self) -> &'static str {
        match self {
            MetricKind::Gauge => "gauge",
            MetricKind::Counter => "counter",
        }
    }
}

/// How a diagnostic appears in `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Metric {
    /// Metric name (`rtds_connector_requests_total`).
    pub name: &'static str,
    /// Gauge or counter.
    pub kind: MetricKind,
    /// `# HELP` text.
    pub help: &'static str,
    /// Factor from the tag's value to the metric's unit (ms to s: 0.001).
    pub scale: f64,
}

/// One diagnostic.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Diagnostic {
    /// Tag name suffix: the tag is `<owner>.<suffix>` (`plc1._connected`).
    pub suffix: &'static str,
    /// Value type.
    pub data_type: Type,
    /// Engineering unit (empty for counts).
    pub unit: &'static str,
    /// What it says, for the tag list.
    pub description: &'static str,
    /// When it is archived.
    pub archive: Archive,
    /// Key in the JSON API's object for its owner.
    pub json: &'static str,
    /// Its Prometheus metric, if it has one.
    pub metric: Option<Metric>,
}

/// A family of diagnostics: every variant in [`Family::ALL`] order, which
/// is the order of the owner's diagnostic tags.
pub trait Family: Copy + 'static {
    /// Every member, in tag order.
    const ALL: &'static [Self];
    /// Its description.
    fn describe(self) -> Diagnostic;
    /// Its position in [`Family::ALL`] (and among the owner's tags).
    fn index(self) -> usize;
}

/// A connector's link: one set per connector, after its own tags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// Whether the last poll reached the device.
    Connected,
    /// Duration of the last poll.
    ResponseMs,
    /// Requests sent since start.
    Requests,
    /// Failed polls plus tag errors since start.
    Errors,
    /// The last error.
    LastError,
    /// Writes the device confirmed.
    Writes,
    /// Writes that failed or were refused.
    WriteErrors,
    /// Replies refused: a bad CRC, another unit's or transaction's reply,
    /// noise.
    BadFrames,
}

impl Family for Link {
    const ALL: &'static [Link] = &[
        Link::Connected,
        Link::ResponseMs,
        Link::Requests,
        Link::Errors,
        Link::LastError,
        Link::Writes,
        Link::WriteErrors,
        Link::BadFrames,
    ];

    fn index(self) -> usize {
        self as usize
    }

    fn describe(self) -> Diagnostic {
        let d = |suffix, data_type, description, archive, json, metric| Diagnostic {
            suffix,
            data_type,
            unit: "",
            description,
            archive,
            json,
            metric,
        };
        let counter = |name, help| {
            Some(Metric {
                name,
                kind: MetricKind::Counter,
                help,
                scale: 1.0,
            })
        };
        match self {
            Link::Connected => d(
                "_connected",
                Type::Bool,
                "whether the last poll reached the device",
                Archive::OnChange,
                "connected",
                Some(Metric {
                    name: "rtds_connector_connected",
                    kind: MetricKind::Gauge,
                    help: "1 when the connector's last poll reached its device",
                    scale: 1.0,
                }),
            ),
            Link::ResponseMs => Diagnostic {
                unit: "ms",
                ..d(
                    "_response_ms",
                    Type::Float,
                    "duration of the last poll in milliseconds",
                    Archive::OnHeartbeat,
                    "response_ms",
                    Some(Metric {
                        name: "rtds_connector_response_seconds",
                        kind: MetricKind::Gauge,
                        help: "duration of the last poll",
                        scale: 0.001,
                    }),
                )
            },
            Link::Requests => d(
                "_requests",
                Type::Int,
                "requests sent since start",
                Archive::OnHeartbeat,
                "requests",
                counter(
                    "rtds_connector_requests_total",
                    "requests the connector sent",
                ),
            ),
            Link::Errors => d(
                "_errors",
                Type::Int,
                "failed polls plus tag errors since start",
                Archive::OnChange,
                "errors",
                counter(
                    "rtds_connector_errors_total",
                    "failed polls plus tag errors",
                ),
            ),
            Link::LastError => d(
                "_last_error",
                Type::Text,
                "the last error, empty until one happens",
                Archive::OnChange,
                "last_error",
                None,
            ),
            Link::Writes => d(
                "_writes",
                Type::Int,
                "writes the device confirmed since start",
                Archive::OnChange,
                "writes",
                counter("rtds_connector_writes_total", "writes the device confirmed"),
            ),
            Link::WriteErrors => d(
                "_write_errors",
                Type::Int,
                "writes that failed or the device refused since start",
                Archive::OnChange,
                "write_errors",
                counter(
                    "rtds_connector_write_errors_total",
                    "writes that failed or the device refused",
                ),
            ),
            Link::BadFrames => d(
                "_bad_frames",
                Type::Int,
                "replies refused since start: a bad CRC, another unit's or transaction's reply, bytes that were no frame",
                Archive::OnChange,
                "bad_frames",
                counter(
                    "rtds_connector_bad_frames_total",
                    "replies refused: bad CRC, another unit's or transaction's reply, noise",
                ),
            ),
        }
    }
}

/// Storage's own figures, the tags `_storage.<suffix>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Store {
    /// Archive rows waiting in memory for the disk.
    Pending,
    /// Segments in the outbox not yet acknowledged.
    OutboxSegments,
    /// Segments published since start.
    Published,
    /// Rows dropped unacknowledged since start.
    DroppedRows,
    /// Acknowledged rows deleted since start.
    PurgedRows,
    /// The last acknowledged archive id.
    AckedId,
}

/// The owner name of storage's diagnostic tags.
pub const STORAGE: &str = "_storage";

impl Family for Store {
    const ALL: &'static [Store] = &[
        Store::Pending,
        Store::OutboxSegments,
        Store::Published,
        Store::DroppedRows,
        Store::PurgedRows,
        Store::AckedId,
    ];

    fn index(self) -> usize {
        self as usize
    }

    fn describe(self) -> Diagnostic {
        // Archived on every change: the Historian sees a backlog or an
        // acknowledgement when it happens.
        let d = |suffix, description, json, metric| Diagnostic {
            suffix,
            data_type: Type::Int,
            unit: "",
            description,
            archive: Archive::OnChange,
            json,
            metric,
        };
        let m = |name, kind, help| {
            Some(Metric {
                name,
                kind,
                help,
                scale: 1.0,
            })
        };
        match self {
            Store::Pending => d(
                "_pending",
                "archive rows waiting in memory for the disk",
                "pending_rows",
                m(
                    "rtds_storage_pending_rows",
                    MetricKind::Gauge,
                    "archive rows waiting in memory for the disk",
                ),
            ),
            Store::OutboxSegments => d(
                "_outbox_segments",
                "segments in the outbox not yet acknowledged",
                "outbox_segments",
                m(
                    "rtds_storage_outbox_segments",
                    MetricKind::Gauge,
                    "segments in the outbox not yet acknowledged",
                ),
            ),
            Store::Published => d(
                "_published",
                "segments published since start",
                "published",
                m(
                    "rtds_storage_published_total",
                    MetricKind::Counter,
                    "segments published since start",
                ),
            ),
            Store::DroppedRows => d(
                "_dropped_rows",
                "rows dropped unacknowledged (queue bound or retention limits) since start",
                "dropped_rows",
                m(
                    "rtds_storage_dropped_rows_total",
                    MetricKind::Counter,
                    "archive rows dropped before acknowledgement (queue bound, retention)",
                ),
            ),
            Store::PurgedRows => d(
                "_purged_rows",
                "acknowledged rows deleted since start",
                "purged_rows",
                m(
                    "rtds_storage_purged_rows_total",
                    MetricKind::Counter,
                    "acknowledged archive rows deleted",
                ),
            ),
            Store::AckedId => d(
                "_acked_id",
                "the last acknowledged archive id",
                "acked_id",
                None,
            ),
        }
    }
}

/// An output's health (MQTT: the broker), reported by its thread to the
/// loop once a second and shown by `/api/outputs`, `/metrics`, `/health`
/// and the status page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Publish {
    /// Whether it delivers now (connected; with a Sparkplug primary host,
    /// that host is online too).
    Connected,
    /// Changes waiting, in memory and in the store-and-forward file.
    Queued,
    /// Values delivered since start.
    Sent,
    /// Changes dropped since start (the store's limits).
    Dropped,
    /// Reconnects since start.
    Reconnects,
    /// The last error.
    LastError,
}

impl Family for Publish {
    const ALL: &'static [Publish] = &[
        Publish::Connected,
        Publish::Queued,
        Publish::Sent,
        Publish::Dropped,
        Publish::Reconnects,
        Publish::LastError,
    ];

    fn index(self) -> usize {
        self as usize
    }

    fn describe(self) -> Diagnostic {
        let d = |suffix, data_type, description, json, metric| Diagnostic {
            suffix,
            data_type,
            unit: "",
            description,
            archive: Archive::OnChange,
            json,
            metric,
        };
        let m = |name, kind, help| {
            Some(Metric {
                name,
                kind,
                help,
                scale: 1.0,
            })
        };
        match self {
            Publish::Connected => d(
                "_connected",
                Type::Bool,
                "whether the output delivers now (its broker connected, a Sparkplug primary host online)",
                "connected",
                m(
                    "rtds_output_connected",
                    MetricKind::Gauge,
                    "1 when the output delivers",
                ),
            ),
            Publish::Queued => d(
                "_queued",
                Type::Int,
                "changes waiting to be delivered, in memory and in the store-and-forward file",
                "queued",
                m(
                    "rtds_output_queued",
                    MetricKind::Gauge,
                    "changes waiting to be delivered",
                ),
            ),
            Publish::Sent => d(
                "_sent",
                Type::Int,
                "values delivered since start",
                "sent",
                m(
                    "rtds_output_sent_total",
                    MetricKind::Counter,
                    "values delivered",
                ),
            ),
            Publish::Dropped => d(
                "_dropped",
                Type::Int,
                "changes dropped since start (the store-and-forward limits)",
                "dropped",
                m(
                    "rtds_output_dropped_total",
                    MetricKind::Counter,
                    "changes dropped",
                ),
            ),
            Publish::Reconnects => d(
                "_reconnects",
                Type::Int,
                "connections made since start",
                "reconnects",
                m(
                    "rtds_output_connects_total",
                    MetricKind::Counter,
                    "connections made",
                ),
            ),
            Publish::LastError => d(
                "_last_error",
                Type::Text,
                "the last error, empty until one happens",
                "last_error",
                None,
            ),
        }
    }
}

/// The tag name of diagnostic `d` of `owner` (`plc1._connected`).
pub fn tag_name<F: Family>(owner: &str, d: F) -> String {
    format!("{owner}.{}", d.describe().suffix)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check<F: Family + PartialEq + std::fmt::Debug>() {
        let mut suffixes = std::collections::HashSet::new();
        let mut keys = std::collections::HashSet::new();
        for (i, d) in F::ALL.iter().enumerate() {
            assert_eq!(d.index(), i, "{d:?} out of order");
            let x = d.describe();
            assert!(x.suffix.starts_with('_'), "{d:?}");
            assert!(suffixes.insert(x.suffix), "{d:?}: suffix twice");
            assert!(keys.insert(x.json), "{d:?}: JSON key twice");
        }
    }

    #[test]
    fn every_family_is_in_order_with_unique_names() {
        check::<Link>();
        check::<Store>();
        check::<Publish>();
        assert_eq!(tag_name("plc1", Link::Connected), "plc1._connected");
        assert_eq!(tag_name(STORAGE, Store::AckedId), "_storage._acked_id");
    }
}
