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
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError, bounded, select};
use std::collections::BTreeMap;
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
pub const DIAGNOSTICS: [(&str, &str, &str); 7] = [
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
    ("_writes", "int", "writes the device confirmed since start"),
    (
        "_write_errors",
        "int",
        "writes that failed or the device refused since start",
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

    /// Checks a value a script sets on writable tag `tag` before anything
    /// goes to the device: a value the tag cannot hold exactly is refused.
    pub fn check_write(&self, tag: usize, value: &Value) -> Result<(), String> {
        match self {
            ConnectorKind::ModbusTcp(c) => c.check_write(tag, value),
            ConnectorKind::Sql(c) => c
                .tags
                .get(tag)
                .ok_or_else(|| "no such tag".to_string())
                .and_then(|t| t.ty.check_write(value)),
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

    /// The longest one poll may take while still healthy: every request of
    /// the plan answered just within the timeout, plus the connect. A poll
    /// in flight is not declared stale before this.
    pub fn worst_poll(&self) -> Duration {
        match self {
            ConnectorKind::ModbusTcp(c) => {
                c.settings.timeout * (c.plan().len() as u32).saturating_add(1)
            }
            ConnectorKind::Sql(c) => c.settings.timeout * (c.queries.len() as u32 + 1),
        }
    }
}

/// What the central loop tells a connector thread.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Write these values (tag index within the connector, value) as soon
    /// as the device is reachable; a later value for the same tag replaces
    /// an earlier one not yet written.
    Write(Vec<(usize, Value)>),
}

/// Write commands in flight to one connector thread. Small: the central
/// loop keeps what does not fit (latest value per tag) and sends it later.
const COMMAND_QUEUE: usize = 4;

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
    stop: Sender<()>,
    /// Values the command queue could not take yet, latest per tag.
    held: BTreeMap<usize, Value>,
    done: Receiver<()>,
    thread: Option<JoinHandle<()>>,
}

impl ConnectorHandle {
    /// Hands values over for writing without ever blocking: when the
    /// thread is busy (a device slow to answer), they are held here, the
    /// latest per tag, and handed over at a later call (the loop calls this
    /// every cycle, with or without new values).
    pub fn write(&mut self, values: Vec<(usize, Value)>) {
        self.held.extend(values);
        if self.held.is_empty() {
            return;
        }
        let batch: Vec<(usize, Value)> = std::mem::take(&mut self.held).into_iter().collect();
        match self.commands.try_send(Command::Write(batch)) {
            Ok(()) => {}
            Err(TrySendError::Full(Command::Write(batch))) => self.held.extend(batch),
            // The thread has ended (it logged why).
            Err(TrySendError::Disconnected(_)) => {}
        }
    }

    /// Asks the thread to stop without waiting. It writes what it holds if
    /// the device is connected, and drops it (logged, counted) if not.
    pub fn request_stop(&self) {
        if !self.held.is_empty() {
            log::warn!(
                "connector {}: {} writes not handed over before stop",
                self.name,
                self.held.len()
            );
        }
        let _ = self.stop.try_send(());
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
    let (commands, rx) = bounded(COMMAND_QUEUE);
    let (stop, stop_rx) = bounded(1);
    let (done_tx, done) = bounded::<()>(0);
    let name = spec.name.clone();
    let thread = std::thread::Builder::new()
        .name(format!("conn-{}", spec.name))
        .spawn(move || {
            run(spec, rx, stop_rx, events);
            drop(done_tx);
        })?;
    Ok(ConnectorHandle {
        name,
        commands,
        stop,
        held: BTreeMap::new(),
        done,
        thread: Some(thread),
    })
}

/// Link statistics behind the diagnostic tags.
#[derive(Debug, Default)]
struct LinkStats {
    errors: i64,
    last_error: String,
    writes: i64,
    write_errors: i64,
}

fn run(spec: RunnerSpec, commands: Receiver<Command>, stop: Receiver<()>, events: Sender<Event>) {
    let mut conn = spec.kind.build();
    let (retry_min, retry_max) = spec.kind.retry();
    let mut backoff = Backoff::new(retry_min, retry_max);
    let auto_close = spec.kind.auto_close();
    let tag_count = spec.tag_names.len();
    let mut next_poll = Instant::now();
    let mut samples = Vec::with_capacity(spec.tag_ids.len());
    let mut failing = false;
    // When the current fault started and how many attempts failed since,
    // for the one summary line when it ends.
    let mut fault: Option<(Instant, u32)> = None;
    let mut stats = LinkStats::default();
    // Values waiting for the device, latest per tag: bounded by the tag
    // count however long the device is away.
    let mut pending: BTreeMap<usize, Value> = BTreeMap::new();
    log::info!("connector {}: started, {}", spec.name, spec.kind.describe());
    if !spec.kind.auto_open()
        && let Err(e) = conn.open()
    {
        log::warn!("connector {}: initial connect failed: {e}", spec.name);
    }
    let send = |samples: Vec<Sample>| {
        let batch: Vec<Sample> = samples
            .into_iter()
            .map(|mut s| {
                s.tag = spec.tag_ids[s.tag];
                s
            })
            .collect();
        events
            .send(Event::Samples {
                connector: spec.index,
                samples: batch,
            })
            .is_ok()
    };
    loop {
        let timeout = next_poll.saturating_duration_since(Instant::now());
        select! {
            recv(commands) -> cmd => match cmd {
                Ok(Command::Write(values)) => {
                    pending.extend(values);
                    // While the device is failing, writes wait for the next
                    // attempt the back-off allows, together with the poll.
                    if !failing {
                        let mut confirmed = Vec::new();
                        if let Err(e) = write_pending(&spec, conn.as_mut(), &mut pending, &mut stats, &mut confirmed) {
                            failing = true;
                            fault.get_or_insert((Instant::now(), 0)).1 += 1;
                            let wait = backoff.fail();
                            log::warn!("connector {}: {e}; retrying in {:.1} s", spec.name, wait.as_secs_f64());
                            next_poll = Instant::now() + wait.max(spec.interval);
                        }
                        if auto_close {
                            conn.close();
                        }
                        if !confirmed.is_empty() && !send(confirmed) {
                            break;
                        }
                    }
                    continue;
                }
                Err(_) => break,
            },
            recv(stop) -> _ => break,
            default(timeout) => {}
        }
        samples.clear();
        let started = Instant::now();
        let mut confirmed = Vec::new();
        let result = if conn.is_open() { Ok(()) } else { conn.open() }
            .and_then(|()| {
                write_pending(
                    &spec,
                    conn.as_mut(),
                    &mut pending,
                    &mut stats,
                    &mut confirmed,
                )
            })
            .and_then(|()| conn.read(&mut samples));
        let now = Instant::now();
        let connected = result.is_ok();
        match result {
            Ok(()) => {
                if let Some((since, attempts)) = fault.take() {
                    log::info!(
                        "connector {}: connection restored after {attempts} failed attempts over {:.1} s",
                        spec.name,
                        since.elapsed().as_secs_f64()
                    );
                }
                failing = false;
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
                let f = fault.get_or_insert((started, 0));
                f.1 += 1;
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
            Value::Int(stats.writes),
            Value::Int(stats.write_errors),
        ];
        // Confirmed writes first: the poll's own reading of the same tag
        // (if any) is newer.
        confirmed.append(&mut samples);
        confirmed.extend(diagnostics.into_iter().enumerate().map(|(k, v)| Sample {
            tag: tag_count + k,
            value: Some(v),
            status: Status::GOOD,
            ts,
        }));
        if !send(confirmed) {
            break;
        }
    }
    // A stop never waits behind a backlog: what is pending is written only
    // over a live connection (at most one timeout per tag), else dropped.
    while let Ok(Command::Write(values)) = commands.try_recv() {
        pending.extend(values);
    }
    if !pending.is_empty() {
        if conn.is_open() && !failing {
            let mut confirmed = Vec::new();
            let _ = write_pending(
                &spec,
                conn.as_mut(),
                &mut pending,
                &mut stats,
                &mut confirmed,
            );
            send(confirmed);
        }
        if !pending.is_empty() {
            log::warn!(
                "connector {}: {} pending writes dropped at stop: the device is not connected ({})",
                spec.name,
                pending.len(),
                pending
                    .iter()
                    .map(|(t, v)| format!("{} = {v}", spec.tag_names[*t]))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    conn.close();
    log::info!("connector {}: stopped", spec.name);
}

/// Writes the pending values, oldest tag first. A confirmed write becomes a
/// good sample of the written value (the device holds it now); a refused
/// one (exception, bad value) is logged, counted and dropped; a link
/// failure stops here with the rest still pending, for after the reconnect.
fn write_pending(
    spec: &RunnerSpec,
    conn: &mut dyn Connector,
    pending: &mut BTreeMap<usize, Value>,
    stats: &mut LinkStats,
    confirmed: &mut Vec<Sample>,
) -> Result<(), ConnectorError> {
    if !pending.is_empty() && !conn.is_open() {
        conn.open()?;
    }
    while let Some((tag, value)) = pending.pop_first() {
        let name = &spec.tag_names[tag];
        match conn.write(tag, &value) {
            Ok(()) => {
                log::debug!("connector {}: wrote {value} to {name}", spec.name);
                stats.writes += 1;
                confirmed.push(Sample {
                    tag,
                    value: Some(value),
                    status: Status::GOOD,
                    ts: Utc::now(),
                });
            }
            Err(e) => {
                stats.write_errors += 1;
                stats.errors += 1;
                stats.last_error = format!("write {name}: {e}");
                if e.breaks_connection() {
                    conn.close();
                    log::warn!(
                        "connector {}: write of {value} to {name} not done: {e}; kept for the reconnect",
                        spec.name
                    );
                    pending.insert(tag, value);
                    return Err(e);
                }
                log::error!(
                    "connector {}: write of {value} to {name} refused: {e}",
                    spec.name
                );
            }
        }
    }
    Ok(())
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
