//! Connectors: one blocking OS thread per source, talking to the central
//! loop only through channels.
//!
//! The scan drives them: each cycle the central loop asks the connectors
//! due in it to read (a poll request carries the cycle's number) and waits
//! for their answers up to its read deadline. A connector thread owns its
//! socket and never shares it, so a dead or slow device can only ever delay
//! its own thread; one known to be down (in back-off) answers at once.

pub mod modbus;
#[cfg(feature = "opcua")]
pub mod opcua;
pub mod params;
pub mod setup;
pub mod sql;

use crate::diagnostics::{Family, Link};
use crate::model::{Sample, Status, Value};
use chrono::Utc;
use crossbeam_channel::{
    Receiver, RecvTimeoutError, Sender, TrySendError, at, bounded, never, select,
};
pub use params::Params;
pub use setup::{At, Class, Extras, Setup, SetupError};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What a failure means for the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The link cannot be trusted any more (refused, reset, closed, a
    /// timeout after which a late reply could answer the next request, a
    /// malformed reply): it is closed and reopened with back-off.
    Link,
    /// The source refused this one operation (a device exception, a value
    /// it will not take, a failed query, a setting that cannot work); the
    /// link is fine and stays.
    Refused,
    /// The device did not answer, or answered garbage, but the link to it
    /// is fine (an RTU line: the other devices on it are still there). The
    /// link stays open for them; the device's tags go bad and it is
    /// retried with back-off.
    Device,
}

/// Where a connector's link goes. Connectors naming the same endpoint
/// share one thread and one link (one TCP connection, one serial port),
/// their requests in turn.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Endpoint {
    /// A TCP server (host in lower case).
    Tcp {
        /// Host name or address.
        host: String,
        /// Port.
        port: u16,
    },
    /// A serial port.
    Serial(std::path::PathBuf),
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Tcp { host, port } => write!(f, "{host}:{port}"),
            Endpoint::Serial(device) => write!(f, "{}", device.display()),
        }
    }
}

/// Why a connector operation failed: what it means for the link, the
/// status its tags get, and the text for the log (for people only: no
/// decision is taken on it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectorError {
    /// Reconnect, or not.
    pub failure: Failure,
    /// Status code for the affected tags.
    pub status: Status,
    /// What happened, for the log.
    pub message: String,
}

impl ConnectorError {
    /// The link failed: reconnect.
    pub fn link(status: Status, message: impl Into<String>) -> Self {
        ConnectorError {
            failure: Failure::Link,
            status,
            message: message.into(),
        }
    }

    /// This operation was refused; the link stays.
    pub fn refused(status: Status, message: impl Into<String>) -> Self {
        ConnectorError {
            failure: Failure::Refused,
            status,
            message: message.into(),
        }
    }

    /// The device failed this exchange; the link stays for others.
    pub fn device(status: Status, message: impl Into<String>) -> Self {
        ConnectorError {
            failure: Failure::Device,
            status,
            message: message.into(),
        }
    }

    /// Whether the connection can no longer be trusted and must be reopened.
    pub fn breaks_connection(&self) -> bool {
        self.failure == Failure::Link
    }

    /// Whether the operation may be tried again later (the device or the
    /// link failed), rather than dropped (the device refused it).
    pub fn retryable(&self) -> bool {
        self.failure != Failure::Refused
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
    /// Writes one value to tag `tag` (index into the connector's tags) and
    /// returns the value the device holds now: the written one as the
    /// tag's type and encoding made it (7.4 on a u16 register is 7; 12.34
    /// on a register scaled by 0.1 is 12.3), which is what the next read
    /// returns and what the archive must say.
    fn write(&mut self, tag: usize, value: &Value) -> Result<Value, ConnectorError>;
    /// Reads tag `tag` alone, for `rtds write`'s read-back. The default
    /// reads every tag (a Modbus scan); a connector whose `read` only
    /// returns changes (an OPC UA subscription) reads the one node.
    fn read_back(&mut self, tag: usize) -> Result<Sample, ConnectorError> {
        let mut samples = Vec::new();
        self.read(&mut samples)?;
        samples.into_iter().find(|s| s.tag == tag).ok_or_else(|| {
            ConnectorError::refused(Status::MISSING, "the read returned nothing for the tag")
        })
    }
    /// Closes the connection (idempotent).
    fn close(&mut self);
    /// Requests sent to the source since start, for the `_requests`
    /// diagnostic tag.
    fn requests(&self) -> u64 {
        0
    }
    /// Replies refused since start (a bad CRC, another unit's or
    /// transaction's reply, noise), for the `_bad_frames` diagnostic tag.
    fn bad_frames(&self) -> u64 {
        0
    }
    /// Gives up the link (open or not), for another connector on the same
    /// endpoint (see [`spawn_group`]); `None` when there is none to share.
    /// Its type is the class's own business: only connectors of one class
    /// share an endpoint.
    fn take_link(&mut self) -> Option<Box<dyn std::any::Any + Send>> {
        None
    }
    /// Takes over the link another connector on the same endpoint gave up.
    fn put_link(&mut self, _link: Box<dyn std::any::Any + Send>) {}
}

/// A connector class's validated settings: everything the server, the
/// scripts and the command line ask of a connector before and besides
/// talking to it (Vector's `SourceConfig` is the model). One
/// implementation per class, registered once in [`CLASSES`].
pub trait SourceConfig: Send + Sync + fmt::Debug + std::any::Any {
    /// Creates the connector (not yet connected). It shares these
    /// settings rather than copying them: with 10,000 tags the per-tag
    /// plan is the bulk of a connector's memory.
    fn build(self: Arc<Self>) -> Box<dyn Connector>;
    /// One line saying what the connector talks to.
    fn describe(&self) -> String;
    /// Lines describing what one scan sends, for `rtds check`.
    fn describe_scan(&self) -> Vec<String>;
    /// Whether tag `tag` may be written.
    fn is_writable(&self, tag: usize) -> bool;
    /// Checks a value a script sets on writable tag `tag` before anything
    /// goes to the device: a value the tag cannot hold exactly is refused.
    fn check_write(&self, tag: usize, value: &Value) -> Result<(), String>;
    /// The data type name of tag `tag`, for the Historian's tag list.
    fn type_name(&self, tag: usize) -> &'static str;
    /// The name of tag `tag`, for log lines.
    fn tag_name(&self, tag: usize) -> &str;
    /// Number of tags.
    fn tag_count(&self) -> usize;
    /// Back-off bounds for reconnects.
    fn retry(&self) -> (Duration, Duration);
    /// The longest one poll may take while still healthy. A poll in flight
    /// is not declared stale before this.
    fn worst_poll(&self) -> Duration;
    /// Where the link goes, for connectors that share one link when they
    /// name the same one (`None`: nothing to share).
    fn endpoint(&self) -> Option<Endpoint> {
        None
    }
    /// What connectors sharing the endpoint must agree on (the framing, a
    /// serial line's speed and parity), in words; `rtds check` refuses a
    /// shared endpoint whose connectors differ.
    fn link_settings(&self) -> String {
        String::new()
    }
    /// Whether to drop the connection after every poll.
    fn auto_close(&self) -> bool {
        false
    }
    /// Whether to connect lazily on first use (`true`) or at start.
    fn auto_open(&self) -> bool {
        true
    }
}

/// The connector classes this build knows. A new class is one module and
/// one line here.
pub const CLASSES: &[Class] = &[
    modbus::CLASS,
    modbus::RTU_CLASS,
    modbus::RTU_TCP_CLASS,
    sql::CLASS,
    #[cfg(feature = "opcua")]
    opcua::CLASS,
];

/// A connector's validated settings, of whichever class.
#[derive(Debug, Clone)]
pub struct ConnectorKind(Arc<dyn SourceConfig>);

impl ConnectorKind {
    /// Builds the typed settings of the class named by `connector=`, or
    /// every error its settings, extras and tags have.
    pub fn from_config(setup: Setup<'_>) -> Result<ConnectorKind, Vec<SetupError>> {
        let name = setup.params.class().to_string();
        match CLASSES.iter().find(|c| c.name.eq_ignore_ascii_case(&name)) {
            Some(class) => (class.setup)(setup).map(ConnectorKind),
            None => Err(vec![SetupError::setting(format!(
                "unknown connector class `{name}` (known: {}{})",
                CLASSES
                    .iter()
                    .map(|c| c.name)
                    .collect::<Vec<_>>()
                    .join(", "),
                if cfg!(feature = "opcua") {
                    ""
                } else {
                    "; OpcUa is not in this build"
                }
            ))]),
        }
    }

    /// The settings as their own class's type, for tools that know it
    /// (`rtds read` shows Modbus registers).
    pub fn downcast<T: SourceConfig>(&self) -> Option<Arc<T>> {
        let any: Arc<dyn std::any::Any + Send + Sync> = self.0.clone();
        any.downcast::<T>().ok()
    }

    /// Creates the connector (not yet connected), sharing the settings.
    pub fn build(&self) -> Box<dyn Connector> {
        self.0.clone().build()
    }
}

impl std::ops::Deref for ConnectorKind {
    type Target = dyn SourceConfig;
    fn deref(&self) -> &Self::Target {
        self.0.as_ref()
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
    /// Results of one poll, or confirmed writes; `tag` fields are indexes
    /// into the server's table.
    Samples {
        /// Which connector (config order).
        connector: usize,
        /// One sample per tag read (none when the device is known to be
        /// down and was not tried).
        samples: Vec<Sample>,
        /// The scan cycle whose read request this answers; `None` for write
        /// confirmations outside a poll.
        cycle: Option<u64>,
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

/// A running connector, as the central loop holds it. Connectors that name
/// the same endpoint run in one thread (see [`spawn_group`]); each still has
/// its own handle.
pub struct ConnectorHandle {
    /// Connector name, for logs.
    pub name: String,
    member: usize,
    commands: Sender<(usize, Command)>,
    polls: Sender<(usize, u64)>,
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
        match self.commands.try_send((self.member, Command::Write(batch))) {
            Ok(()) => {}
            Err(TrySendError::Full((_, Command::Write(batch)))) => self.held.extend(batch),
            // The thread has ended (it logged why).
            Err(TrySendError::Disconnected(_)) => {}
        }
    }

    /// Asks the thread to read for scan cycle `cycle`; false when the
    /// request cannot be queued (the thread is stuck).
    pub fn poll(&self, cycle: u64) -> bool {
        self.polls.try_send((self.member, cycle)).is_ok()
    }

    /// Asks the thread to stop without waiting. It writes what it holds if
    /// the device is connected, and drops it (logged) if not.
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

    /// Whether the thread has ended.
    pub fn finished(&self) -> bool {
        matches!(
            self.done.try_recv(),
            Err(crossbeam_channel::TryRecvError::Disconnected)
        )
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

/// Everything a connector needs, moved into its thread.
pub struct RunnerSpec {
    /// Connector number (config order).
    pub index: usize,
    /// Name for logs and the thread.
    pub name: String,
    /// Poll period.
    pub interval: Duration,
    /// Server tag index of each of the connector's tags, followed by those
    /// of its [`Link`] diagnostic tags.
    pub tag_ids: Arc<[usize]>,
    /// The class and settings.
    pub kind: ConnectorKind,
}

/// Starts a connector thread.
pub fn spawn(spec: RunnerSpec, events: Sender<Event>) -> std::io::Result<ConnectorHandle> {
    let mut handles = spawn_group(vec![spec], events)?;
    Ok(handles.remove(0))
}

/// Starts one thread for connectors that talk to the same endpoint: one
/// serialized link, one TCP connection at a time handed from one to the
/// next, requests in turn. A one-client device (or a serial gateway with
/// several unit ids) then serves all of them; with `auto_close` the
/// connection is closed once all of a scan's reads are done.
pub fn spawn_group(
    specs: Vec<RunnerSpec>,
    events: Sender<Event>,
) -> std::io::Result<Vec<ConnectorHandle>> {
    let n = specs.len().max(1);
    let (commands, commands_rx) = bounded(COMMAND_QUEUE * n);
    let (polls, polls_rx) = bounded(n);
    let (stop, stop_rx) = bounded(1);
    let (done_tx, done) = bounded::<()>(0);
    let names: Vec<String> = specs.iter().map(|s| s.name.clone()).collect();
    let thread = std::thread::Builder::new()
        .name(format!("conn-{}", names.join("+")))
        .spawn(move || {
            run(specs, commands_rx, polls_rx, stop_rx, events);
            drop(done_tx);
        })?;
    let mut thread = Some(thread);
    Ok(names
        .into_iter()
        .enumerate()
        .map(|(member, name)| ConnectorHandle {
            name,
            member,
            commands: commands.clone(),
            polls: polls.clone(),
            stop: stop.clone(),
            held: BTreeMap::new(),
            done: done.clone(),
            thread: thread.take(),
        })
        .collect())
}

/// Link statistics behind the diagnostic tags.
#[derive(Debug, Default)]
struct LinkStats {
    errors: i64,
    last_error: String,
    /// The last failure's cause, to log a new one at once (see `cause_of`).
    last_cause: Option<(Status, String)>,
    writes: i64,
    write_errors: i64,
}

/// One connector inside its thread: the source, its back-off and
/// bookkeeping, and the values waiting to be written.
struct Member {
    spec: RunnerSpec,
    conn: Box<dyn Connector>,
    backoff: Backoff,
    auto_close: bool,
    failing: bool,
    /// Whether the last failure broke the link (it is closed and
    /// reopened) rather than one device's exchange (the link stays for the
    /// others on it).
    broken: bool,
    /// When the current fault started and how many attempts failed since,
    /// for the one summary line when it ends.
    fault: Option<(Instant, u32)>,
    /// While the device is failing: when the back-off allows the next try.
    retry_at: Option<Instant>,
    stats: LinkStats,
    /// Values waiting for the device, latest per tag: bounded by the tag
    /// count however long the device is away.
    pending: BTreeMap<usize, Value>,
}

impl Member {
    fn new(spec: RunnerSpec) -> Member {
        let (retry_min, retry_max) = spec.kind.retry();
        let mut conn = spec.kind.build();
        log::info!("connector {}: started, {}", spec.name, spec.kind.describe());
        if !spec.kind.auto_open()
            && let Err(e) = conn.open()
        {
            log::warn!("connector {}: initial connect failed: {e}", spec.name);
        }
        Member {
            auto_close: spec.kind.auto_close(),
            backoff: Backoff::new(retry_min, retry_max),
            conn,
            spec,
            failing: false,
            broken: false,
            fault: None,
            retry_at: None,
            stats: LinkStats::default(),
            pending: BTreeMap::new(),
        }
    }

    /// The event for samples (connector-local tag indexes).
    fn event(&self, mut samples: Vec<Sample>, cycle: Option<u64>) -> Event {
        // In place: moving each sample through an iterator cost more.
        for s in &mut samples {
            s.tag = self.spec.tag_ids[s.tag];
        }
        Event::Samples {
            connector: self.spec.index,
            samples,
            cycle,
        }
    }

    /// Records a failed attempt that started at `started` and schedules
    /// the next one: back-off counted from the attempt's start, so retries
    /// start 1, 2, 4 … s apart however long an attempt takes to fail. The
    /// connection is closed by the caller once the tags' bad statuses are
    /// on their way (closing a session to a frozen server can take its
    /// whole timeout).
    fn fail(&mut self, e: &ConnectorError, started: Instant) {
        let wait = self.backoff.fail();
        let how = format!(
            "connector {}: {e}; retrying in {:.1} s",
            self.spec.name,
            wait.as_secs_f64()
        );
        // A new cause during the same outage (a refused login after the
        // certificate was trusted) is news; the same one again is not.
        let cause = Some(cause_of(e));
        if self.failing && cause == self.stats.last_cause {
            log::debug!("{how}");
        } else {
            log::warn!("{how}");
        }
        self.stats.last_cause = cause;
        self.failing = true;
        self.broken = e.breaks_connection();
        self.fault.get_or_insert((started, 0)).1 += 1;
        self.stats.errors += 1;
        self.stats.last_error = e.to_string();
        self.retry_at = Some(started + wait);
    }

    /// Writes what is pending now, unless the device is failing (then the
    /// values wait for the next try the back-off allows, with the poll).
    fn write_now(&mut self) -> Option<Event> {
        if self.failing {
            return None;
        }
        let mut confirmed = Vec::new();
        let started = Instant::now();
        if let Err(e) = write_pending(
            &self.spec,
            self.conn.as_mut(),
            &mut self.pending,
            &mut self.stats,
            &mut confirmed,
        ) {
            self.fail(&e, started);
        }
        (!confirmed.is_empty()).then(|| self.event(confirmed, None))
    }

    /// One poll for scan cycle `cycle`: connect if needed, write what is
    /// pending, read every tag. A device known to be down (in back-off)
    /// is not tried: the answer comes at once and the tags keep the
    /// failure's status. `None` is the back-off's retry, when its time
    /// comes (the thread's timer, not the next scan: a retry due at 1 s is
    /// tried at 1 s whatever the interval); its reading goes to the loop
    /// outside a scan, like a write's confirmation.
    fn poll(&mut self, cycle: Option<u64>) -> Event {
        if cycle.is_some() && self.retry_at.is_some_and(|t| Instant::now() < t) {
            return self.event(Vec::new(), cycle);
        }
        let tag_count = self.spec.kind.tag_count();
        let mut samples = Vec::with_capacity(self.spec.tag_ids.len());
        let mut confirmed = Vec::new();
        let started = Instant::now();
        let result = if self.conn.is_open() {
            Ok(())
        } else {
            self.conn.open()
        }
        .and_then(|()| {
            write_pending(
                &self.spec,
                self.conn.as_mut(),
                &mut self.pending,
                &mut self.stats,
                &mut confirmed,
            )
        })
        .and_then(|()| self.conn.read(&mut samples));
        let now = Instant::now();
        let connected = result.is_ok();
        match result {
            Ok(()) => {
                if let Some((since, attempts)) = self.fault.take() {
                    log::info!(
                        "connector {}: connection restored after {attempts} failed attempts over {:.1} s",
                        self.spec.name,
                        since.elapsed().as_secs_f64()
                    );
                }
                self.failing = false;
                self.retry_at = None;
                self.backoff.reset();
                // One pass: NaN checked, failures counted, and each tag
                // numbered as the loop's table numbers it.
                for s in &mut samples {
                    s.check_nan();
                    if !s.status.is_good() {
                        self.stats.errors += 1;
                        self.stats.last_error = format!(
                            "tag {}: {}",
                            self.spec.kind.tag_name(s.tag),
                            s.status.describe()
                        );
                    }
                    s.tag = self.spec.tag_ids[s.tag];
                }
            }
            Err(e) => {
                self.fail(&e, started);
                // What the read delivered before the link failed (an OPC UA
                // subscription's last changes, the blocks of a scan read
                // before a timeout) are readings: they go first, then every
                // tag goes bad.
                for s in &mut samples {
                    s.check_nan();
                    s.tag = self.spec.tag_ids[s.tag];
                }
                let ts = Utc::now();
                samples.extend((0..tag_count).map(|i| Sample {
                    tag: self.spec.tag_ids[i],
                    value: None,
                    status: e.status,
                    ts,
                }));
            }
        }
        let ts = Utc::now();
        let response_ms = (now - started).as_secs_f64() * 1000.0;
        let n = Link::ALL.len();
        // Confirmed writes first: the poll's own reading of the same tag
        // (if any) is newer. The poll's vector, sized for every tag and
        // diagnostic, is sent as it is when nothing was confirmed (no
        // second vector of 10,000 samples).
        for s in &mut confirmed {
            s.tag = self.spec.tag_ids[s.tag];
        }
        let mut out = if confirmed.is_empty() {
            samples
        } else {
            confirmed.reserve_exact(samples.len() + n);
            confirmed.append(&mut samples);
            confirmed
        };
        out.reserve_exact(n);
        for &d in Link::ALL {
            let value = match d {
                Link::Connected => Value::Bool(connected),
                Link::ResponseMs => Value::Float(response_ms),
                Link::Requests => Value::Int(self.conn.requests() as i64),
                Link::Errors => Value::Int(self.stats.errors),
                Link::LastError => Value::Str(self.stats.last_error.clone()),
                Link::Writes => Value::Int(self.stats.writes),
                Link::WriteErrors => Value::Int(self.stats.write_errors),
                Link::BadFrames => Value::Int(self.conn.bad_frames() as i64),
            };
            out.push(Sample {
                tag: self.spec.tag_ids[tag_count + d.index()],
                value: Some(value),
                status: Status::GOOD,
                ts,
            });
        }
        // Numbered for the loop above, as they were made.
        Event::Samples {
            connector: self.spec.index,
            samples: out,
            cycle,
        }
    }

    /// At stop: what is pending is written only over a live connection (at
    /// most one timeout per tag), else dropped and logged, so a stop never
    /// waits behind a backlog.
    fn finish(&mut self) -> Option<Event> {
        let mut event = None;
        if !self.pending.is_empty() && self.conn.is_open() && !self.failing {
            let mut confirmed = Vec::new();
            let _ = write_pending(
                &self.spec,
                self.conn.as_mut(),
                &mut self.pending,
                &mut self.stats,
                &mut confirmed,
            );
            event = Some(self.event(confirmed, None));
        }
        if !self.pending.is_empty() {
            log::warn!(
                "connector {}: {} pending writes dropped at stop: the device is not connected ({})",
                self.spec.name,
                self.pending.len(),
                self.pending
                    .iter()
                    .map(|(t, v)| format!("{} = {v}", self.spec.kind.tag_name(*t)))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        self.conn.close();
        log::info!("connector {}: stopped", self.spec.name);
        event
    }
}

/// The members of one thread and who holds their shared connection.
struct Group {
    members: Vec<Member>,
    holder: usize,
}

impl Group {
    /// Hands the open connection (if any) to member `m` before it talks to
    /// the device: one TCP connection for all members, never two at once.
    fn take_turn(&mut self, m: usize) {
        if self.holder != m {
            let link = self.members[self.holder].conn.take_link();
            if let Some(link) = link {
                self.members[m].conn.put_link(link);
            }
            self.holder = m;
        }
    }

    /// After member `m`'s turn: a link it broke is closed (reopened at the
    /// next turn); one device failing leaves the link to the others.
    fn after_failure(&mut self, m: usize) {
        if self.members[m].failing && self.members[m].broken {
            self.members[m].conn.close();
        }
    }

    /// Closes the shared connection after a turn when a member asks for
    /// `auto_close`.
    fn end_turns(&mut self) {
        if self.members.iter().any(|m| m.auto_close) {
            self.members[self.holder].conn.close();
        }
    }
}

fn run(
    specs: Vec<RunnerSpec>,
    commands: Receiver<(usize, Command)>,
    polls: Receiver<(usize, u64)>,
    stop: Receiver<()>,
    events: Sender<Event>,
) {
    let mut group = Group {
        members: specs.into_iter().map(Member::new).collect(),
        holder: 0,
    };
    let send = |e: Event| events.send(e).is_ok();
    'run: loop {
        // The back-off's next try, if any member is waiting for one.
        let retry = group
            .members
            .iter()
            .filter_map(|m| m.retry_at)
            .min()
            .map_or_else(never, at);
        select! {
            recv(retry) -> _ => {
                let now = Instant::now();
                for m in 0..group.members.len() {
                    if group.members[m].retry_at.is_some_and(|t| t <= now) {
                        group.take_turn(m);
                        let event = group.members[m].poll(None);
                        if !send(event) {
                            break 'run;
                        }
                        if group.members[m].failing {
                            group.after_failure(m);
                        } else {
                            // One link for the group: those that waited
                            // for the link use it now (those whose own
                            // device failed keep their back-off).
                            for other in group.members.iter_mut().filter(|o| o.broken) {
                                other.retry_at = None;
                                other.failing = false;
                                other.broken = false;
                            }
                            break;
                        }
                    }
                }
                group.end_turns();
            },
            recv(commands) -> cmd => match cmd {
                Ok((m, Command::Write(values))) if m < group.members.len() => {
                    group.members[m].pending.extend(values);
                    group.take_turn(m);
                    let event = group.members[m].write_now();
                    group.end_turns();
                    if let Some(e) = event && !send(e) {
                        break 'run;
                    }
                }
                Ok(_) => {}
                Err(_) => break 'run,
            },
            recv(polls) -> p => {
                let Ok(first) = p else { break 'run };
                // Every member's request of this scan, in member order;
                // a grouped member's request may trail the first by a
                // moment, so a shared link waits a little for it.
                let mut due: BTreeMap<usize, u64> = BTreeMap::from([first]);
                if group.members.len() > 1 {
                    let grace = Instant::now() + Duration::from_millis(5);
                    while due.len() < group.members.len() {
                        match polls.recv_deadline(grace) {
                            Ok((m, c)) => {
                                due.insert(m, c);
                            }
                            Err(_) => break,
                        }
                    }
                }
                due.extend(polls.try_iter());
                for (m, cycle) in due {
                    if m >= group.members.len() {
                        continue;
                    }
                    group.take_turn(m);
                    let event = group.members[m].poll(Some(cycle));
                    if !send(event) {
                        break 'run;
                    }
                    group.after_failure(m);
                }
                group.end_turns();
            },
            recv(stop) -> _ => break 'run,
        }
    }
    while let Ok((m, Command::Write(values))) = commands.try_recv() {
        if let Some(member) = group.members.get_mut(m) {
            member.pending.extend(values);
        }
    }
    for m in 0..group.members.len() {
        group.take_turn(m);
        if let Some(e) = group.members[m].finish() {
            send(e);
        }
    }
}

/// What makes two failures the same cause: the status and the message
/// without its figures ("no notification for 9.1 s" and "… 9.3 s" are one).
fn cause_of(e: &ConnectorError) -> (Status, String) {
    (
        e.status,
        e.message.chars().filter(|c| !c.is_ascii_digit()).collect(),
    )
}

/// Writes the pending values, oldest tag first. A confirmed write becomes a
/// good sample of the value the device holds now (the connector's answer,
/// never the script's input: 7.4 written to a u16 is archived as 7); a refused
/// one (exception, bad value) is logged, counted and dropped; a failure of
/// the link or the device stops here with the rest still pending, for the
/// next try (writing a register again is harmless if the first got through
/// and only its reply was lost).
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
        let name = spec.kind.tag_name(tag);
        match conn.write(tag, &value) {
            Ok(held) => {
                log::debug!(
                    "connector {}: wrote {value} to {name}, the device holds {held}",
                    spec.name
                );
                stats.writes += 1;
                confirmed.push(Sample {
                    tag,
                    value: Some(held),
                    status: Status::GOOD,
                    ts: Utc::now(),
                });
            }
            Err(e) => {
                stats.write_errors += 1;
                stats.errors += 1;
                stats.last_error = format!("write {name}: {e}");
                if e.retryable() {
                    if e.breaks_connection() {
                        conn.close();
                    }
                    log::warn!(
                        "connector {}: write of {value} to {name} not confirmed: {e}; kept for the next try",
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
}
