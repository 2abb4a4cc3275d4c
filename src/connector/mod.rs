//! Connectors: one blocking OS thread per source, polling at its own
//! interval and talking to the central loop only through channels.
//!
//! A connector thread owns its socket and never shares it, so a dead or slow
//! device can only ever delay its own thread: the central loop receives
//! [`Event`]s when they come and never waits for one.

pub mod modbus;
pub mod sql;

use crate::config::{Params, TagConfig};
use crate::model::{Sample, Status, Value};
use chrono::Utc;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, bounded, unbounded};
use std::fmt;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Why a connector operation failed, with the status its tags get.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectorError {
    /// Status code for the affected tags.
    pub status: Status,
    /// What happened, for the log.
    pub message: String,
}

impl ConnectorError {
    /// Builds an error.
    pub fn new(status: Status, message: impl Into<String>) -> Self {
        ConnectorError {
            status,
            message: message.into(),
        }
    }
}

impl ConnectorError {
    /// Whether the connection can no longer be trusted (a late reply could
    /// be taken for the next answer) and must be reopened.
    pub fn breaks_connection(&self) -> bool {
        matches!(
            self.status,
            Status::NOT_CONNECTED | Status::TIMEOUT | Status::PROTOCOL_ERROR
        )
    }
}

impl fmt::Display for ConnectorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} [{}]", self.message, self.status.describe())
    }
}

impl std::error::Error for ConnectorError {}

/// A source of tag values. Implementations do blocking I/O; the runner calls
/// them from the connector's own thread only.
pub trait Connector: Send {
    /// Connects to the source.
    fn open(&mut self) -> Result<(), ConnectorError>;
    /// Whether a connection is currently open.
    fn is_open(&self) -> bool;
    /// Reads every tag once. Per-tag failures (a Modbus exception on one
    /// address) are samples with a bad status; `Err` means the connection
    /// itself failed and every tag goes bad.
    fn read(&mut self, out: &mut Vec<Sample>) -> Result<(), ConnectorError>;
    /// Writes one value to tag `tag` (index into the connector's tags).
    fn write(&mut self, tag: usize, value: &Value) -> Result<(), ConnectorError>;
    /// Closes the connection (idempotent).
    fn close(&mut self);
    /// Requests sent to the source since start, for the `_requests`
    /// diagnostic tag.
    fn requests(&self) -> u64 {
        0
    }
}

/// Diagnostic tags every connector publishes after its own tags, named
/// `<connector>.<suffix>`, so an operator (and the Historian) sees link
/// health next to the data: (suffix, type, description).
pub const DIAGNOSTICS: [(&str, &str, &str); 5] = [
    (
        "_connected",
        "bool",
        "whether the last poll reached the device",
    ),
    (
        "_response_ms",
        "float",
        "duration of the last poll in milliseconds",
    ),
    ("_requests", "int", "requests sent since start"),
    ("_errors", "int", "failed polls plus tag errors since start"),
    (
        "_last_error",
        "string",
        "the last error, empty until one happens",
    ),
];

/// The connector classes RTDS knows, with their validated settings.
#[derive(Debug, Clone)]
pub enum ConnectorKind {
    /// `connector=ModbusTcp`.
    ModbusTcp(modbus::ModbusConfig),
    /// `connector=Sql`.
    Sql(sql::SqlConfig),
}

/// A connector setting or tag that does not validate. `tag` indexes the
/// connector's tag list when the fault is a tag's, so config can point at
/// the tag's line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetupError {
    /// The tag at fault, if any.
    pub tag: Option<usize>,
    /// What is wrong.
    pub message: String,
}

impl ConnectorKind {
    /// Builds the typed settings of the class named by `connector=`.
    pub fn from_config(
        params: Params,
        tags: &[TagConfig],
        extras: &sql::SqlExtras,
    ) -> Result<ConnectorKind, SetupError> {
        match params.class().to_ascii_lowercase().as_str() {
            "modbustcp" => {
                if !extras.queries.is_empty() || extras.write_sql.is_some() {
                    return Err(SetupError {
                        tag: None,
                        message: "queries and write_sql are for connector=Sql".into(),
                    });
                }
                Ok(ConnectorKind::ModbusTcp(modbus::ModbusConfig::new(
                    params, tags,
                )?))
            }
            "sql" => Ok(ConnectorKind::Sql(sql::SqlConfig::new(
                params, tags, extras,
            )?)),
            other => Err(SetupError {
                tag: None,
                message: format!("unknown connector class `{other}` (known: ModbusTcp, Sql)"),
            }),
        }
    }

    /// Creates the connector (not yet connected).
    pub fn build(&self) -> Box<dyn Connector> {
        match self {
            ConnectorKind::ModbusTcp(c) => Box::new(modbus::ModbusTcp::new(c.clone())),
            ConnectorKind::Sql(c) => Box::new(sql::SqlConnector::new(c.clone())),
        }
    }

    /// One line saying what the connector talks to.
    pub fn describe(&self) -> String {
        match self {
            ConnectorKind::ModbusTcp(c) => c.describe(),
            ConnectorKind::Sql(c) => c.describe(),
        }
    }

    /// Lines describing what one scan sends, for `rtds check`.
    pub fn describe_scan(&self) -> Vec<String> {
        match self {
            ConnectorKind::ModbusTcp(c) => c.describe_scan(),
            ConnectorKind::Sql(c) => c.describe_scan(),
        }
    }

    /// Whether tag `tag` may be written.
    pub fn is_writable(&self, tag: usize) -> bool {
        match self {
            ConnectorKind::ModbusTcp(c) => c.is_writable(tag),
            ConnectorKind::Sql(c) => c.tags.get(tag).is_some_and(|t| t.writable),
        }
    }

    /// The data type name of tag `tag`, for the Historian's tag list.
    pub fn type_name(&self, tag: usize) -> &'static str {
        match self {
            ConnectorKind::ModbusTcp(c) => c.points.get(tag).map_or("", |p| p.data_type.name()),
            ConnectorKind::Sql(c) => c.type_name(tag),
        }
    }

    /// Back-off bounds for reconnects.
    pub fn retry(&self) -> (Duration, Duration) {
        match self {
            ConnectorKind::ModbusTcp(c) => (c.settings.retry_min, c.settings.retry_max),
            ConnectorKind::Sql(c) => (c.settings.retry_min, c.settings.retry_max),
        }
    }

    /// Whether to drop the connection after every poll.
    pub fn auto_close(&self) -> bool {
        match self {
            ConnectorKind::ModbusTcp(c) => c.settings.auto_close,
            ConnectorKind::Sql(_) => false,
        }
    }

    /// Whether to connect lazily on first use (`true`) or at start.
    pub fn auto_open(&self) -> bool {
        match self {
            ConnectorKind::ModbusTcp(c) => c.settings.auto_open,
            ConnectorKind::Sql(_) => true,
        }
    }

    /// The longest one poll may block (all requests timing out).
    pub fn worst_poll(&self) -> Duration {
        match self {
            ConnectorKind::ModbusTcp(c) => c.settings.timeout * 2,
            ConnectorKind::Sql(c) => c.settings.timeout * (c.queries.len() as u32 + 1),
        }
    }
}

/// What the central loop tells a connector thread.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Write these values (tag index within the connector, value) now.
    Write(Vec<(usize, Value)>),
    /// Finish pending writes and stop.
    Stop,
}

/// What a connector thread tells the central loop.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Results of one poll; `tag` fields are indexes into the server's table.
    Samples {
        /// Which connector (config order).
        connector: usize,
        /// One sample per tag read.
        samples: Vec<Sample>,
    },
}

/// Reconnect back-off: doubles from `min` to `max` while a device keeps
/// failing, so a dead PLC is polled less and less often, and resets on the
/// first success.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Option<Duration>,
}

impl Backoff {
    /// A back-off that has seen no failure yet.
    pub fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max: max.max(min),
            next: None,
        }
    }

    /// Records a failure; returns how long to wait before the next try.
    pub fn fail(&mut self) -> Duration {
        let wait = self.next.unwrap_or(self.min);
        self.next = Some((wait * 2).min(self.max));
        wait
    }

    /// Records a success.
    pub fn reset(&mut self) {
        self.next = None;
    }
}

/// A running connector thread, as the central loop holds it.
pub struct ConnectorHandle {
    /// Connector name, for logs.
    pub name: String,
    commands: Sender<Command>,
    done: Receiver<()>,
    thread: Option<JoinHandle<()>>,
}

impl ConnectorHandle {
    /// Queues values for writing; they are written before the next poll.
    pub fn write(&self, values: Vec<(usize, Value)>) {
        // A send fails only when the thread has ended (it logs why).
        let _ = self.commands.send(Command::Write(values));
    }

    /// Asks the thread to stop (after pending writes) without waiting.
    pub fn request_stop(&self) {
        let _ = self.commands.send(Command::Stop);
    }

    /// Waits until `deadline` for the thread to end. A thread stuck in a
    /// blocking call past the deadline is left behind (it ends with the
    /// process) so that shutdown never hangs on a dead device.
    pub fn join(mut self, deadline: Instant) -> bool {
        match self.done.recv_deadline(deadline) {
            Err(RecvTimeoutError::Disconnected) | Ok(()) => {
                if let Some(t) = self.thread.take() {
                    let _ = t.join();
                }
                true
            }
            Err(RecvTimeoutError::Timeout) => {
                log::warn!(
                    "connector {}: still busy at shutdown, left behind",
                    self.name
                );
                false
            }
        }
    }
}

/// Everything a connector thread needs, moved into it.
pub struct RunnerSpec {
    /// Connector number (config order).
    pub index: usize,
    /// Name for logs and the thread.
    pub name: String,
    /// Poll period.
    pub interval: Duration,
    /// Server tag index of each of the connector's tags, followed by those
    /// of its [`DIAGNOSTICS`] tags.
    pub tag_ids: Vec<usize>,
    /// Tag names (without diagnostics), for log messages.
    pub tag_names: Vec<String>,
    /// The class and settings.
    pub kind: ConnectorKind,
}

/// Starts a connector thread.
pub fn spawn(spec: RunnerSpec, events: Sender<Event>) -> std::io::Result<ConnectorHandle> {
    let (commands, rx) = unbounded();
    let (done_tx, done) = bounded::<()>(0);
    let name = spec.name.clone();
    let thread = std::thread::Builder::new()
        .name(format!("conn-{}", spec.name))
        .spawn(move || {
            run(spec, rx, events);
            drop(done_tx);
        })?;
    Ok(ConnectorHandle {
        name,
        commands,
        done,
        thread: Some(thread),
    })
}

/// Link statistics behind the diagnostic tags.
#[derive(Debug, Default)]
struct LinkStats {
    errors: i64,
    last_error: String,
}

fn run(spec: RunnerSpec, commands: Receiver<Command>, events: Sender<Event>) {
    let mut conn = spec.kind.build();
    let (retry_min, retry_max) = spec.kind.retry();
    let mut backoff = Backoff::new(retry_min, retry_max);
    let auto_close = spec.kind.auto_close();
    let tag_count = spec.tag_names.len();
    let mut next_poll = Instant::now();
    let mut samples = Vec::with_capacity(spec.tag_ids.len());
    let mut failing = false;
    let mut stats = LinkStats::default();
    log::info!("connector {}: started, {}", spec.name, spec.kind.describe());
    if !spec.kind.auto_open()
        && let Err(e) = conn.open()
    {
        log::warn!("connector {}: initial connect failed: {e}", spec.name);
    }
    loop {
        match commands.recv_deadline(next_poll) {
            Ok(Command::Write(values)) => {
                write_all(&spec, conn.as_mut(), values, &mut stats);
                if auto_close {
                    conn.close();
                }
                continue;
            }
            Ok(Command::Stop) | Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => {}
        }
        samples.clear();
        let started = Instant::now();
        let result = if conn.is_open() {
            conn.read(&mut samples)
        } else {
            conn.open().and_then(|()| conn.read(&mut samples))
        };
        let now = Instant::now();
        let connected = result.is_ok();
        match result {
            Ok(()) => {
                if failing {
                    log::info!("connector {}: connection restored", spec.name);
                    failing = false;
                }
                backoff.reset();
                for s in samples.iter().filter(|s| !s.status.is_good()) {
                    stats.errors += 1;
                    stats.last_error =
                        format!("tag {}: {}", spec.tag_names[s.tag], s.status.describe());
                }
                next_poll = next_tick(next_poll, spec.interval, now);
            }
            Err(e) => {
                conn.close();
                let wait = backoff.fail();
                if !failing {
                    log::warn!(
                        "connector {}: {e}; retrying in {:.1} s",
                        spec.name,
                        wait.as_secs_f64()
                    );
                } else {
                    log::debug!(
                        "connector {}: {e}; retrying in {:.1} s",
                        spec.name,
                        wait.as_secs_f64()
                    );
                }
                failing = true;
                stats.errors += 1;
                stats.last_error = e.to_string();
                let ts = Utc::now();
                samples.clear();
                samples.extend((0..tag_count).map(|i| Sample {
                    tag: i,
                    value: None,
                    status: e.status,
                    ts,
                }));
                next_poll = now + wait.max(spec.interval);
            }
        }
        if auto_close {
            conn.close();
        }
        let ts = Utc::now();
        let diagnostics = [
            Value::Bool(connected),
            Value::Float((now - started).as_secs_f64() * 1000.0),
            Value::Int(conn.requests() as i64),
            Value::Int(stats.errors),
            Value::Str(stats.last_error.clone()),
        ];
        samples.extend(diagnostics.into_iter().enumerate().map(|(k, v)| Sample {
            tag: tag_count + k,
            value: Some(v),
            status: Status::GOOD,
            ts,
        }));
        let batch: Vec<Sample> = samples
            .drain(..)
            .map(|mut s| {
                s.tag = spec.tag_ids[s.tag];
                s
            })
            .collect();
        if events
            .send(Event::Samples {
                connector: spec.index,
                samples: batch,
            })
            .is_err()
        {
            break;
        }
    }
    // Writes queued before Stop were handled above in order; drain any that
    // raced with it so no value a script set is dropped silently.
    while let Ok(cmd) = commands.try_recv() {
        if let Command::Write(values) = cmd {
            write_all(&spec, conn.as_mut(), values, &mut stats);
        }
    }
    conn.close();
    log::info!("connector {}: stopped", spec.name);
}

fn write_all(
    spec: &RunnerSpec,
    conn: &mut dyn Connector,
    values: Vec<(usize, Value)>,
    stats: &mut LinkStats,
) {
    for (tag, value) in values {
        let name = &spec.tag_names[tag];
        let result = if conn.is_open() {
            conn.write(tag, &value)
        } else {
            conn.open().and_then(|()| conn.write(tag, &value))
        };
        match result {
            Ok(()) => log::debug!("connector {}: wrote {value} to {name}", spec.name),
            Err(e) => {
                log::error!(
                    "connector {}: write of {value} to {name} failed: {e}",
                    spec.name
                );
                stats.errors += 1;
                stats.last_error = format!("write {name}: {e}");
                if e.breaks_connection() {
                    conn.close();
                }
            }
        }
    }
}

/// The next poll time on the connector's grid; ticks missed while a poll
/// overran are skipped rather than fired in a burst.
fn next_tick(prev: Instant, interval: Duration, now: Instant) -> Instant {
    let mut next = prev + interval;
    if next <= now {
        let behind = now - prev;
        let skipped = (behind.as_nanos() / interval.as_nanos().max(1)) as u32;
        next = prev + interval * (skipped + 1);
    }
    next
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_max_and_resets() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(5));
        let waits: Vec<u64> = (0..5).map(|_| b.fail().as_secs()).collect();
        assert_eq!(waits, vec![1, 2, 4, 5, 5]);
        b.reset();
        assert_eq!(b.fail(), Duration::from_secs(1));
    }

    #[test]
    fn missed_ticks_are_skipped_not_bunched() {
        let t0 = Instant::now();
        let i = Duration::from_millis(100);
        assert_eq!(next_tick(t0, i, t0 + Duration::from_millis(10)), t0 + i);
        assert_eq!(
            next_tick(t0, i, t0 + Duration::from_millis(350)),
            t0 + Duration::from_millis(400)
        );
    }
}
