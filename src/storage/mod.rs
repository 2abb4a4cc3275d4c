//! The buffer for the Historian, on its own thread.
//!
//! Data path: a cycle's samples → [`archive`] rules → a bounded queue →
//! the open [`segment`] (each row written to disk once) → closed segment in
//! staging → the [`outbox`] the Historian reads over its share → deleted
//! when acknowledged ([`retention`]). The [`live`] database holds `current`,
//! the tag list and acknowledgements, and is never opened from another host.
//!
//! Nothing here blocks the scan: a full disk, an unreachable share or a
//! deleted file only lengthens this thread's queue, which is bounded and
//! drained in bounded batches as soon as space returns. Rows still queued
//! at shutdown go to a [`spool`] file that the next start replays; if even
//! that fails, the count of lost rows is logged and RTDS exits non-zero.

pub mod archive;
pub mod encoding;
pub mod idmap;
pub mod live;
pub mod outbox;
pub mod retention;
pub mod segment;
pub mod settings;
pub mod spool;

use crate::diagnostics::{self, Family, Store};
use crate::model::{ScriptState, Status, Timestamp, Value, format_ts};
use archive::{ArchivePolicy, Deadband, Row, TagArchive};
use crossbeam_channel::{
    Receiver, RecvTimeoutError, SendTimeoutError, Sender, TrySendError, bounded,
};
use idmap::{IdMap, IdSet, Slot};
use live::Live;
use outbox::Outbox;
use retention::Ack;
use segment::{OpenSegment, SegmentInfo};
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::path::PathBuf;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use live::{ack_result, submit_ack};
pub use settings::{Retention, SegmentLimits, StorageConfig};

/// A storage failure, with what was being done.
#[derive(Debug)]
pub struct StorageError {
    /// The file or directory.
    pub path: PathBuf,
    /// What was being done.
    pub action: &'static str,
    /// What went wrong.
    pub message: String,
    /// SQLite's error code, when SQLite said it: decisions (a damaged file
    /// is set aside) are taken on it, never on the message.
    pub code: Option<rusqlite::ErrorCode>,
}

impl fmt::Display for StorageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {}: {}",
            self.path.display(),
            self.action,
            self.message
        )
    }
}

impl std::error::Error for StorageError {}

/// What the Historian's `tags` table says about a tag, and how to archive it.
#[derive(Debug, Clone, PartialEq)]
pub struct TagInfo {
    /// Unique tag name (shared with the loop's table).
    pub name: std::sync::Arc<str>,
    /// Connector name, `script` for calculated tags, `storage` for storage's own
    /// (shared by a connector's tags: 10,000 tags need one copy).
    pub source: std::sync::Arc<str>,
    /// Address in the source (empty for calculated tags). Boxed strings
    /// here and below: storage holds one description per tag for the run.
    pub address: Box<str>,
    /// Data type name.
    pub data_type: &'static str,
    /// Whether scripts may write it to its source.
    pub writable: bool,
    /// Free text.
    pub description: Box<str>,
    /// Engineering unit.
    pub unit: Box<str>,
    /// Archive rules.
    pub policy: ArchivePolicy,
}

impl TagInfo {
    /// Describes diagnostic `d` (named `name`, of `source`): its type, unit
    /// and archive rule from its family's table, the heartbeat from
    /// `archive`.
    pub fn diagnostic<F: Family>(
        name: std::sync::Arc<str>,
        source: std::sync::Arc<str>,
        d: F,
        archive: ArchivePolicy,
    ) -> TagInfo {
        let x = d.describe();
        TagInfo {
            name,
            source,
            address: "diagnostic".into(),
            data_type: x.data_type.name(),
            writable: false,
            description: x.description.into(),
            unit: x.unit.into(),
            policy: ArchivePolicy {
                deadband: match x.archive {
                    diagnostics::Archive::OnChange => Deadband::Exact,
                    diagnostics::Archive::OnHeartbeat => Deadband::Absolute(f64::INFINITY),
                },
                ..archive
            },
        }
    }

    /// A stand-in description for a tag id storage knows nothing about.
    pub fn unknown(id: i64) -> TagInfo {
        TagInfo {
            name: format!("tag#{id}").into(),
            source: "".into(),
            address: "".into(),
            data_type: "",
            writable: false,
            description: "".into(),
            unit: "".into(),
            policy: ArchivePolicy::default(),
        }
    }
}

/// Messages to the storage thread.
#[derive(Debug)]
enum Message {
    /// Tags whose server index starts at `first`, in order; `more` follow
    /// in the next messages.
    Tags {
        first: usize,
        tags: Vec<TagInfo>,
        more: usize,
    },
    /// Samples (server tag indexes), in the order the loop applied them.
    Samples(crate::model::Batch),
    /// Tags a reload removed, by name: each gets a final "removed" row.
    Removed(Vec<std::sync::Arc<str>>),
    /// Scripts' `state` maps, saved with the next `current` write.
    ScriptStates(Vec<ScriptState>),
}

/// Storage's health as the loop shows it (status page, API, metrics,
/// `/health`), sent once a second: nobody else opens the live database or
/// walks the outbox for it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StorageReport {
    /// The [`Store`] diagnostics' values, by [`Family::index`].
    pub values: [i64; Store::ALL.len()],
    /// The id the next archive row gets.
    pub next_id: i64,
    /// The last acknowledgement answered: (when, the answer).
    pub last_ack: Option<(String, String)>,
    /// Bytes of the segments in the outbox.
    pub outbox_bytes: u64,
    /// Free bytes of the live database's file system.
    pub disk_free: u64,
    /// Size of that file system.
    pub disk_total: u64,
}

impl StorageReport {
    /// The value of diagnostic `d`.
    pub fn get(&self, d: Store) -> i64 {
        self.values[d.index()]
    }

    /// Rows the Historian has not acknowledged yet.
    pub fn ack_lag(&self) -> i64 {
        (self.next_id - 1 - self.get(Store::AckedId)).max(0)
    }

    /// Whether rows pile up in memory faster than the disk takes them:
    /// half the queue's bound.
    pub fn falling_behind(&self) -> bool {
        self.get(Store::Pending) as usize > MAX_QUEUED_ROWS / 2
    }
}

/// Totals reported when storage closes, for the shutdown log line and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StorageStats {
    /// Transactions that wrote archive rows.
    pub commits: u64,
    /// Samples received.
    pub samples: u64,
    /// Rows written to segments.
    pub archived: u64,
    /// Segments published to the outbox.
    pub published: u64,
    /// Acknowledged rows deleted.
    pub purged: u64,
    /// Rows dropped before acknowledgement (queue bound, retention limits).
    pub dropped: u64,
    /// Rows saved to the shutdown spool for the next start.
    pub spooled: u64,
    /// Rows lost at shutdown: neither written nor spooled.
    pub lost: u64,
    /// Samples or rows dropped because a queue was full (the loop's hold
    /// for a stalled storage thread, or storage's rows for a disk that
    /// takes nothing): lost too.
    pub overflowed: u64,
    /// The storage thread died (a bug): what it held is lost.
    pub failed: bool,
}

/// The running storage thread.
pub struct Storage {
    /// Bounded ([`CHANNEL`]): what it cannot take yet waits in `held`.
    tx: Sender<Message>,
    thread: JoinHandle<StorageStats>,
    /// Scripts' `state` maps the previous run saved.
    pub saved_scripts: Vec<ScriptState>,
    /// Storage's health, once a second (the latest waits; see
    /// [`StorageReport`]).
    pub reports: Receiver<StorageReport>,
    /// A word each time a registration's last chunk is in (see
    /// [`Storage::wait_registered`]).
    registered: Receiver<()>,
    /// Messages the channel could not take yet, oldest first.
    held: VecDeque<Message>,
    /// Samples in `held`.
    held_rows: usize,
    /// Samples dropped because `held` was full.
    overflowed: u64,
    /// Whether samples are being dropped now (one log line per incident).
    overflowing: bool,
}

impl Storage {
    /// Opens the live database, the staging directory and the outbox and
    /// starts the thread. Opening happens here, on the caller's thread, so
    /// a bad path stops RTDS at start with a clear error rather than later
    /// in the background.
    pub fn start(cfg: &StorageConfig) -> Result<Storage, StorageError> {
        // One report in flight: the loop takes it within a cycle; one it
        // has not taken is simply not replaced until it has.
        let (reports_tx, reports) = bounded(1);
        let (registered_tx, registered) = bounded(1);
        let writer = Writer::open(cfg, reports_tx, registered_tx)?;
        let saved_scripts = match writer.live.as_ref().map(Live::load_script_states) {
            Some(Ok(s)) => s,
            Some(Err(e)) => {
                log::warn!("storage: {e}; scripts start with a fresh state");
                Vec::new()
            }
            None => Vec::new(),
        };
        let (tx, rx) = bounded(CHANNEL);
        let thread = std::thread::Builder::new()
            .name("storage".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| StorageError {
                path: cfg.path.clone(),
                action: "start storage thread",
                message: e.to_string(),
                code: None,
            })?;
        Ok(Storage {
            tx,
            thread,
            saved_scripts,
            reports,
            registered,
            held: VecDeque::new(),
            held_rows: 0,
            overflowed: 0,
            overflowing: false,
        })
    }

    /// Scripts' `state` maps to keep in the live database (they survive a
    /// restart); written with the next `current` update.
    pub fn script_states(&mut self, states: Vec<ScriptState>) {
        self.post(Message::ScriptStates(states));
    }

    /// Registers tags `first..first + tags.len()` of the server's table,
    /// in chunks, each freed as soon as storage has moved it into its map:
    /// one message of 10,000 descriptions would stay allocated until the
    /// last was moved, holding them twice at the peak.
    pub fn tags<I>(&mut self, first: usize, tags: I)
    where
        I: IntoIterator<Item = TagInfo>,
        I::IntoIter: ExactSizeIterator,
    {
        let mut tags = tags.into_iter();
        let total = tags.len();
        let mut sent = 0;
        // At least one message: an empty table still resets storage's ids.
        loop {
            let chunk: Vec<TagInfo> = tags.by_ref().take(TAG_CHUNK).collect();
            let n = chunk.len();
            self.post(Message::Tags {
                first: first + sent,
                tags: chunk,
                more: total.saturating_sub(sent + n),
            });
            sent += n;
            if n < TAG_CHUNK {
                break;
            }
        }
    }

    /// Waits up to `timeout` for the thread to have registered the tags
    /// handed over so far; whether it has. The start waits before any
    /// connector runs: registering 10,000 tags takes the thread a while
    /// (about 1 s under qemu), and polls arriving meanwhile were held until
    /// the bound and then dropped.
    pub fn wait_registered(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while let Some(m) = self.held.pop_front() {
            let rows = match &m {
                Message::Samples(s) => s.len(),
                _ => 0,
            };
            match self.tx.send_deadline(m, deadline) {
                Ok(()) => self.held_rows -= rows,
                Err(SendTimeoutError::Timeout(m)) => {
                    self.held.push_front(m);
                    return false;
                }
                Err(SendTimeoutError::Disconnected(_)) => return false,
            }
        }
        self.registered.recv_deadline(deadline).is_ok()
    }

    /// Hands over samples (a poll's, or a cycle's stale marks and script
    /// results), in the order they reached the loop; never blocks.
    pub fn samples(&mut self, samples: impl Into<crate::model::Batch>) {
        let samples = samples.into();
        if !samples.is_empty() {
            self.post(Message::Samples(samples));
        }
    }

    /// Tags that are no longer configured: each gets a final archive row
    /// with [`Status::REMOVED`] and its `current` row says so.
    pub fn removed(&mut self, names: Vec<std::sync::Arc<str>>) {
        if !names.is_empty() {
            self.post(Message::Removed(names));
        }
    }

    /// Queues `m` behind what is held and hands over what the channel
    /// takes; never blocks (the scan must not wait for a disk).
    fn post(&mut self, m: Message) {
        if let Message::Samples(s) = &m {
            self.held_rows += s.len();
        }
        self.held.push_back(m);
        self.pump();
        // Held beyond the bound: the oldest samples go (descriptions and
        // the rest never: they are small and the archive needs them).
        while self.held_rows > MAX_HELD_ROWS {
            // Never the newest: one poll bigger than the bound still goes.
            let newest = self.held.len().saturating_sub(1);
            let Some(i) = self
                .held
                .iter()
                .take(newest)
                .position(|m| matches!(m, Message::Samples(_)))
            else {
                break;
            };
            if let Some(Message::Samples(s)) = self.held.remove(i) {
                self.held_rows -= s.len();
                self.overflowed += s.len() as u64;
                if !self.overflowing {
                    log::error!(
                        "storage: the storage thread takes nothing ({} rows held for it): dropping the oldest samples",
                        MAX_HELD_ROWS
                    );
                    self.overflowing = true;
                }
            }
        }
    }

    /// Hands over what the channel takes of what is held, oldest first (the
    /// loop calls it every cycle).
    pub fn pump(&mut self) {
        while let Some(m) = self.held.pop_front() {
            let rows = match &m {
                Message::Samples(s) => s.len(),
                _ => 0,
            };
            match self.tx.try_send(m) {
                Ok(()) => self.held_rows -= rows,
                Err(TrySendError::Full(m)) => {
                    self.held.push_front(m);
                    return;
                }
                // The thread is gone (is_alive says so to the loop).
                Err(TrySendError::Disconnected(_)) => {
                    self.held.clear();
                    self.held_rows = 0;
                    return;
                }
            }
        }
        if self.overflowing {
            log::warn!(
                "storage: the storage thread takes samples again; {} were dropped while it could not",
                self.overflowed
            );
            self.overflowing = false;
        }
    }

    /// Hands over everything held, waiting for the thread as long as it
    /// takes: for a producer that must not drop (a benchmark feeding rows
    /// as fast as it can); the loop uses [`Storage::pump`].
    pub fn flush(&mut self) {
        while let Some(m) = self.held.pop_front() {
            if let Message::Samples(s) = &m {
                self.held_rows -= s.len();
            }
            if self.tx.send(m).is_err() {
                break;
            }
        }
    }

    /// Whether the thread is still running (false after a panic).
    pub fn is_alive(&self) -> bool {
        !self.thread.is_finished()
    }

    /// Hands over everything held (waiting for the thread this time, up to
    /// a minute), writes everything queued, publishes the open segment,
    /// closes the files and returns the totals. What could not be handed
    /// over is counted as overflowed (and makes the exit status 1).
    pub fn close(mut self) -> StorageStats {
        let deadline = Instant::now() + Duration::from_secs(60);
        while let Some(m) = self.held.pop_front() {
            let rows = match &m {
                Message::Samples(s) => s.len(),
                _ => 0,
            };
            if self.tx.send_deadline(m, deadline).is_err() {
                self.overflowed += rows as u64;
            }
        }
        let overflowed: u64 = self.overflowed
            + self
                .held
                .iter()
                .map(|m| match m {
                    Message::Samples(s) => s.len() as u64,
                    _ => 0,
                })
                .sum::<u64>();
        if overflowed > 0 {
            log::error!(
                "storage: {overflowed} samples were dropped before the storage thread could take them"
            );
        }
        drop(self.tx);
        let mut stats = self.thread.join().unwrap_or_else(|_| StorageStats {
            failed: true,
            ..StorageStats::default()
        });
        stats.overflowed += overflowed;
        stats
    }
}

/// Messages in flight to the storage thread: it takes each at once (it
/// waits only on SQLite), and one holds a whole poll.
const CHANNEL: usize = 64;

/// Samples the loop holds for storage while its channel is full (a thread
/// stalled on a lock): about 12 MB. Beyond, the oldest are dropped,
/// counted and logged; the scan never waits.
pub const MAX_HELD_ROWS: usize = 200_000;

/// Most archive rows held in memory while nothing can be written (a full
/// disk, an unwritable staging directory): about 200 MB. Beyond it the
/// oldest are dropped and counted in `_storage._dropped_rows`.
pub const MAX_QUEUED_ROWS: usize = 2_000_000;

/// Rows per transaction: small enough that a little free space lets a batch
/// through after a full disk, large enough to amortize the commit.
const BATCH_ROWS: usize = 10_000;

/// Tag descriptions per registration message (and transaction).
const TAG_CHUNK: usize = 1_000;

/// How often a `current` row whose tag was read again with the same value
/// and status gets its new time: a static plant's 10,000 rows are not
/// rewritten every second for their time alone.
const CURRENT_TIME_EVERY: Duration = Duration::from_secs(10);

/// How often heartbeats, acknowledgements, limits and the files' presence
/// are looked at.
const MAINTENANCE_EVERY: Duration = Duration::from_secs(1);

/// Something going wrong over a stretch of time, logged when it starts and
/// summarized once when it ends.
#[derive(Default)]
struct Incident {
    since: Option<Timestamp>,
    segments: u64,
    rows: u64,
    ids: Option<(i64, i64)>,
}

impl Incident {
    fn add(&mut self, segments: u64, rows: u64, ids: Option<(i64, i64)>) -> bool {
        let started = self.since.is_none();
        self.since.get_or_insert_with(chrono::Utc::now);
        self.segments += segments;
        self.rows += rows;
        if let Some((a, b)) = ids {
            self.ids = Some(self.ids.map_or((a, b), |(x, y)| (x.min(a), y.max(b))));
        }
        started
    }

    fn end(&mut self) -> Option<String> {
        let since = self.since?;
        let ids = self
            .ids
            .map(|(a, b)| format!(" (ids {a}-{b})"))
            .unwrap_or_default();
        let text = format!(
            "{} rows in {} segments{ids} since {}",
            self.rows,
            self.segments,
            format_ts(&since)
        );
        *self = Incident::default();
        Some(text)
    }
}

struct Writer {
    cfg: StorageConfig,
    /// `None` while the live database is gone and could not be recreated.
    live: Option<Live>,
    seg: OpenSegment,
    outbox: Outbox,
    /// Database id of each server tag index.
    ids: Vec<i64>,
    infos: IdMap<TagInfo>,
    archives: IdMap<Tracked>,
    /// Last archived rows saved by the previous run, used when a tag registers.
    last_saved: IdMap<Row>,
    /// Tags whose latest state (their archive's `latest`) is not yet
    /// written to `current`: a bit a tag, not a copy of the row.
    current: IdSet,
    /// Tags read again with the same value and status since their
    /// `current` row was written: only its time would change, so the row
    /// is rewritten every [`CURRENT_TIME_EVERY`], not every flush.
    touched: IdSet,
    /// When the touched rows are next written.
    touched_due: Instant,
    /// Tags whose last archived row changed since the last segment close
    /// saved them (`archived_last`): a close saves only those.
    last_changed: IdSet,
    /// Scripts' states not yet written.
    script_states: Vec<ScriptState>,
    current_due: Instant,
    /// Archive rows not yet written, oldest first.
    rows: VecDeque<(i64, Row)>,
    /// The spool file replayed at start and how many of its rows (at the
    /// front of `rows`) are not yet in a segment: deleted once they are.
    spool: Option<(PathBuf, usize)>,
    diag_ids: Vec<i64>,
    acked_id: i64,
    /// The ack file last answered (which file, not its content: the same
    /// request renamed in again is answered again), and when it was last
    /// looked at: a new request was written after that moment.
    ack_seen: Option<outbox::FileId>,
    ack_polled: Timestamp,
    write_failing: Option<(Instant, String)>,
    publish_failing: bool,
    live_failing: bool,
    drops: Incident,
    queue_drops: Incident,
    stats: StorageStats,
    /// Where the once-a-second [`StorageReport`] goes.
    reports: Sender<StorageReport>,
    /// Told when a registration's last chunk is in.
    registered: Sender<()>,
    /// The last acknowledgement answered: (when, the answer).
    last_ack: Option<(String, String)>,
}

/// A tag's archive state with the two things a sample needs from its
/// description, kept in step with it by `adopt`: a sample looks up one map,
/// not two.
#[derive(Debug)]
struct Tracked {
    policy: ArchivePolicy,
    /// The description has a data type (one without learns it from its
    /// first value).
    typed: bool,
    archive: TagArchive,
}

fn io_err(path: &std::path::Path, action: &'static str, e: impl fmt::Display) -> StorageError {
    StorageError {
        path: path.to_path_buf(),
        action,
        message: e.to_string(),
        code: None,
    }
}

impl Writer {
    fn open(
        cfg: &StorageConfig,
        reports: Sender<StorageReport>,
        registered: Sender<()>,
    ) -> Result<Writer, StorageError> {
        let started = chrono::Utc::now();
        let mut live = match Live::open(cfg) {
            Ok(l) => l,
            // A damaged file (a power cut with synchronous=off, a disk
            // error): kept aside for inspection, and a new one made, so an
            // unattended gateway goes on collecting.
            Err(e) if is_damaged(e.code) => {
                let aside = set_aside(&cfg.path, &e.message)?;
                log::error!(
                    "storage: live database {} is damaged ({}); kept as {} and recreated (tag ids start anew; acknowledgements resume from the ack file)",
                    cfg.path.display(),
                    e.message,
                    aside.display()
                );
                Live::open(cfg)?
            }
            Err(e) => return Err(e),
        };
        std::fs::create_dir_all(&cfg.staging)
            .map_err(|e| io_err(&cfg.staging, "create staging directory", e))?;
        let outbox = Outbox::scan(&cfg.outbox, &cfg.staging)
            .map_err(|e| io_err(&cfg.staging, "list staging directory", e))?;
        let acked_id = live.meta("acked_id")?.unwrap_or(0);
        let next_id = [
            live.meta("next_id")?.unwrap_or(1),
            outbox.last_id() + 1,
            acked_id + 1,
        ]
        .into_iter()
        .max()
        .unwrap_or(1);
        let open_path = cfg.staging.join(segment::OPEN_NAME);
        let seg = match OpenSegment::open(&cfg.staging, &cfg.segment_pragmas(), next_id) {
            Ok(s) => s,
            Err(e) if is_damaged(e.sqlite_error_code()) => {
                let aside = set_aside(&open_path, &e.to_string())?;
                log::error!(
                    "storage: the open segment {} is damaged ({e}); kept as {} (its rows are not published) and a new one started",
                    open_path.display(),
                    aside.display()
                );
                OpenSegment::open(&cfg.staging, &cfg.segment_pragmas(), next_id)
                    .map_err(|e| io_err(&open_path, "open segment", e))?
            }
            Err(e) => return Err(io_err(&open_path, "open segment", e)),
        };
        let mut last_saved = live.load_last()?;
        for (id, row) in seg
            .last_rows()
            .map_err(|e| io_err(&cfg.staging, "read open segment", e))?
        {
            last_saved.insert(id, row);
        }
        let mut w = Writer {
            cfg: cfg.clone(),
            live: None,
            seg,
            outbox,
            ids: Vec::new(),
            infos: IdMap::default(),
            archives: IdMap::default(),
            last_saved,
            current: IdSet::default(),
            last_changed: IdSet::default(),
            touched: IdSet::default(),
            touched_due: Instant::now() + CURRENT_TIME_EVERY,
            script_states: Vec::new(),
            // The first write a period after the start, like every later one
            // (registration wrote every row already).
            current_due: Instant::now() + cfg.current_interval,
            rows: VecDeque::new(),
            spool: None,
            diag_ids: Vec::new(),
            acked_id,
            ack_seen: None,
            // Segments found at start count as published at `started`: an
            // ack file already there is older than that.
            ack_polled: started - chrono::Duration::milliseconds(1),
            write_failing: None,
            publish_failing: false,
            live_failing: false,
            drops: Incident::default(),
            queue_drops: Incident::default(),
            stats: StorageStats::default(),
            reports,
            registered,
            last_ack: None,
        };
        w.replay_spool(&mut live)?;
        w.live = Some(live);
        let diag: Vec<TagInfo> = Store::ALL
            .iter()
            .map(|&d| {
                TagInfo::diagnostic(
                    diagnostics::tag_name(diagnostics::STORAGE, d).into(),
                    "storage".into(),
                    d,
                    ArchivePolicy::default(),
                )
            })
            .collect();
        let ids = w.register(&diag)?;
        w.adopt(diag, &ids, 0);
        w.diag_ids = ids;
        if w.seg.version != segment::SEGMENT_VERSION {
            log::info!(
                "storage: the open segment was started by an older RTDS (schema version {}): closed as it is",
                w.seg.version
            );
            w.close_segment();
        }
        if !w.outbox.staged.is_empty() {
            w.publish();
        }
        // The loop's first snapshots show where storage starts.
        let _ = w.reports.try_send(w.report());
        Ok(w)
    }

    /// Where the shutdown spool goes: beside the live database, or in the
    /// staging directory when that cannot be written.
    fn spool_paths(&self) -> [PathBuf; 2] {
        let mut beside = self.cfg.path.clone().into_os_string();
        beside.push(".spool");
        [beside.into(), self.cfg.staging.join("rtds.spool")]
    }

    fn replay_spool(&mut self, live: &mut Live) -> Result<(), StorageError> {
        for path in self.spool_paths() {
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue;
            };
            let mut bad = 0;
            let mut n = 0;
            let mut replayed: HashMap<std::sync::Arc<str>, i64> = HashMap::new();
            for (i, line) in text.lines().enumerate() {
                match spool::parse(line) {
                    Ok((name, row)) => {
                        let id = match replayed.get(name.as_str()) {
                            Some(&id) => id,
                            None => {
                                let id = live.tag_id(&name)?;
                                let name: std::sync::Arc<str> = name.into();
                                replayed.insert(name.clone(), id);
                                self.infos.insert(
                                    id,
                                    TagInfo {
                                        name,
                                        ..TagInfo::unknown(id)
                                    },
                                );
                                id
                            }
                        };
                        self.rows.push_back((id, row));
                        n += 1;
                    }
                    Err(e) => {
                        bad += 1;
                        log::error!("storage: {}:{}: {e}; line skipped", path.display(), i + 1);
                    }
                }
            }
            log::info!(
                "storage: replaying {n} archive rows saved at the last shutdown in {}{}",
                path.display(),
                if bad > 0 {
                    format!(" ({bad} damaged lines skipped)")
                } else {
                    String::new()
                }
            );
            // One spool at a time; the other (if any) waits for the next start.
            let rows = self.rows.len();
            self.spool = Some((path, rows));
            break;
        }
        Ok(())
    }

    fn run(mut self, rx: Receiver<Message>) -> StorageStats {
        let mut maintain_at = Instant::now();
        let mut retry_at: Option<Instant> = None;
        let check_every =
            MAINTENANCE_EVERY.min(Duration::from_secs_f64(self.cfg.segment.max_age_s));
        let mut check_at = Instant::now() + check_every;
        loop {
            let mut wake = maintain_at.min(check_at);
            if let Some(t) = retry_at {
                wake = wake.min(t);
            }
            if !self.current.is_empty() {
                wake = wake.min(self.current_due);
            }
            if !self.touched.is_empty() {
                wake = wake.min(self.touched_due.max(self.current_due));
            }
            match rx.recv_deadline(wake) {
                Ok(m) => self.take(m),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            // Merge whatever queued meanwhile into the same transaction.
            while let Ok(m) = rx.try_recv() {
                self.take(m);
            }
            let now = Instant::now();
            if retry_at.is_none_or(|t| now >= t) {
                retry_at = match self.flush_rows() {
                    Ok(()) => None,
                    Err(()) => Some(now + Duration::from_secs(1)),
                };
            }
            let due = !(self.current.is_empty() && self.script_states.is_empty())
                || (!self.touched.is_empty() && now >= self.touched_due);
            if due && now >= self.current_due {
                self.flush_current();
                self.current_due = now + self.cfg.current_interval;
            }
            if now >= check_at {
                if self.seg.is_due(&self.cfg.segment, chrono::Utc::now()) {
                    self.close_segment();
                }
                check_at = now + check_every;
            }
            if now >= maintain_at {
                self.tick();
                maintain_at = now + MAINTENANCE_EVERY;
            }
        }
        self.shutdown()
    }

    fn take(&mut self, m: Message) {
        match m {
            Message::Tags { first, tags, more } => {
                // Registration must not be lost: retry while the file refuses.
                let ids = loop {
                    match self.register(&tags) {
                        Ok(ids) => break ids,
                        Err(e) => {
                            log::error!("storage: {e}; retrying tag registration");
                            std::thread::sleep(Duration::from_secs(1));
                            self.check_live();
                        }
                    }
                };
                self.adopt(tags, &ids, more);
                self.ids.truncate(first);
                self.ids.extend(ids);
                if more == 0 {
                    let _ = self.registered.try_send(());
                }
            }
            Message::Samples(samples) => {
                self.stats.samples += samples.len() as u64;
                // While the queue is short (its normal state: drained every
                // wake), room for exactly what comes instead of doubling a
                // 10,000-row queue to 16,384; a backlog grows the usual way.
                if self.rows.len() + samples.len() <= 4 * BATCH_ROWS {
                    self.rows.reserve_exact(samples.len());
                }
                // Read in place, shared or not: a tag's latest value is
                // copied into its own (a scalar, or text into its buffer).
                for s in samples.iter() {
                    let Some(&id) = self.ids.get(s.tag) else {
                        continue;
                    };
                    self.record(id, s.value.as_ref(), s.status, s.ts);
                }
            }
            Message::ScriptStates(states) => self.script_states = states,
            Message::Removed(names) => {
                let now = chrono::Utc::now();
                // A reload's rare work: a name index for it alone, not one
                // kept for the whole run.
                let ids: Vec<(i64, std::sync::Arc<str>)> = {
                    let by_name: HashMap<&str, i64> =
                        self.infos.iter().map(|(id, t)| (&*t.name, id)).collect();
                    names
                        .into_iter()
                        .filter_map(|n| Some((*by_name.get(&*n)?, n)))
                        .collect()
                };
                for (id, name) in ids {
                    log::info!("storage: tag {name} removed from the configuration");
                    self.record(id, None, Status::REMOVED, now);
                }
            }
        }
    }

    /// Applies one sample to a tag: `current` to update, archive rows to add.
    /// Once per sample: one look-up of the tag, inline in the batch's loop.
    #[inline(always)]
    fn record(&mut self, id: i64, value: Option<&Value>, status: Status, ts: Timestamp) {
        let Some(slot) = Slot::of(id) else {
            return;
        };
        let Some(tag) = self.archives.at_mut(slot) else {
            return;
        };
        if !tag.typed && value.is_some() {
            return self.learn_type(slot, id, value, status, ts);
        }
        let Tracked {
            policy,
            archive: arch,
            ..
        } = tag;
        // The steady state inline, without building the general case's
        // list of rows for every sample.
        let (changed, archived) = match arch.steady(policy, value, status, ts) {
            Some(steady) => {
                if steady.archived
                    && let Some(row) = arch.last.clone()
                {
                    self.queue_row(id, row);
                }
                (steady.changed, steady.archived)
            }
            None => {
                let out = arch.general(policy, value, status, ts);
                let changed = out.changed;
                let archived = !out.is_empty();
                for row in out {
                    self.queue_row(id, row);
                }
                (changed, archived)
            }
        };
        if changed {
            self.current.insert_at(slot);
        } else {
            self.touched.insert_at(slot);
        }
        if archived {
            self.last_changed.insert_at(slot);
        }
    }

    /// A tag registered without a type takes its first value's: written
    /// before its row is described in a segment. Then the sample is
    /// recorded as any other.
    #[cold]
    #[inline(never)]
    fn learn_type(
        &mut self,
        slot: Slot,
        id: i64,
        value: Option<&Value>,
        status: Status,
        ts: Timestamp,
    ) {
        if let (Some(info), Some(v)) = (self.infos.at_mut(slot), value) {
            info.data_type = v.kind();
            self.seg.redescribe(id);
            if let Some(live) = self.live.as_mut()
                && let Err(e) = live.set_type(id, info.data_type)
            {
                log::warn!("storage: {e}");
            }
        }
        if let Some(tag) = self.archives.at_mut(slot) {
            tag.typed = true;
        }
        self.record(id, value, status, ts);
    }

    /// Queues an archive row; beyond [`MAX_QUEUED_ROWS`] the oldest goes,
    /// counted and logged once per incident.
    fn queue_row(&mut self, id: i64, row: Row) {
        if self.rows.len() >= MAX_QUEUED_ROWS {
            self.rows.pop_front();
            if let Some((_, n)) = &mut self.spool {
                *n = n.saturating_sub(1);
            }
            self.stats.dropped += 1;
            self.stats.overflowed += 1;
            if self.queue_drops.add(0, 1, None) {
                log::error!(
                    "storage: {MAX_QUEUED_ROWS} archive rows wait in memory for a disk that cannot take them: dropping the oldest"
                );
            }
        }
        self.rows.push_back((id, row));
    }

    /// Writes `tags` to the live database; returns their ids in order.
    fn register(&mut self, tags: &[TagInfo]) -> Result<Vec<i64>, StorageError> {
        let live = self.live.as_mut().ok_or_else(|| StorageError {
            path: self.cfg.path.clone(),
            action: "register tags",
            message: "the live database is not available".into(),
            code: None,
        })?;
        live.register(tags.iter().map(|t| (t, None)))
    }

    /// Takes registered `tags` (with their `ids`) into memory, moved, not
    /// copied. `more` tags follow in later messages: ids are usually
    /// consecutive, so room for them is made now rather than by doubling.
    fn adopt(&mut self, tags: Vec<TagInfo>, ids: &[i64], more: usize) {
        let top = ids.iter().copied().max().unwrap_or(0);
        let room = top.saturating_add(i64::try_from(more).unwrap_or(i64::MAX));
        self.infos.reserve_ids(room);
        self.archives.reserve_ids(room);
        for (t, &id) in tags.into_iter().zip(ids) {
            let (policy, typed) = (t.policy, !t.data_type.is_empty());
            match self.archives.get_mut(&id) {
                Some(tag) => {
                    tag.policy = policy;
                    tag.typed = typed;
                }
                None => {
                    let last = self.last_saved.remove(&id);
                    let archive = TagArchive::new(last);
                    self.archives.insert(
                        id,
                        Tracked {
                            policy,
                            typed,
                            archive,
                        },
                    );
                }
            }
            self.infos.insert(id, t);
        }
    }

    /// Writes queued archive rows into the open segment in bounded batches
    /// until the queue is empty or a write fails (the rows stay queued).
    fn flush_rows(&mut self) -> Result<(), ()> {
        while !self.rows.is_empty() {
            if self.seg.is_broken() {
                match OpenSegment::open(
                    &self.cfg.staging,
                    &self.cfg.segment_pragmas(),
                    self.seg.next_id,
                ) {
                    Ok(s) => self.seg = s,
                    Err(e) => return self.write_failed(format!("open segment: {e}")),
                }
            }
            let room = self
                .cfg
                .segment
                .max_rows
                .saturating_sub(self.seg.rows())
                .max(1);
            let n = self.rows.len().min(BATCH_ROWS).min(room as usize);
            let batch = &self.rows.make_contiguous()[..n];
            if let Err(e) = self.seg.append(batch, &self.infos) {
                return self.write_failed(e.to_string());
            }
            self.rows.drain(..n);
            self.stats.archived += n as u64;
            self.stats.commits += 1;
            if let Some((path, left)) = &mut self.spool {
                *left = left.saturating_sub(n);
                if *left == 0 {
                    if let Err(e) = std::fs::remove_file(&*path) {
                        log::error!("storage: replayed spool {}: {e}", path.display());
                    }
                    self.spool = None;
                }
            }
            if self.seg.rows() >= self.cfg.segment.max_rows {
                self.close_segment();
            }
        }
        if let Some((since, _)) = self.write_failing.take() {
            let queue_drops = self
                .queue_drops
                .end()
                .map(|t| format!("; dropped meanwhile: {t}"))
                .unwrap_or_default();
            log::info!(
                "storage: writing again after {:.1} s, queue drained{queue_drops}",
                since.elapsed().as_secs_f64()
            );
        }
        Ok(())
    }

    fn write_failed(&mut self, why: String) -> Result<(), ()> {
        if self.write_failing.is_none() {
            log::error!(
                "storage: cannot write archive rows to {}: {why}; {} rows kept in memory, retrying every second",
                self.cfg.staging.join(segment::OPEN_NAME).display(),
                self.rows.len()
            );
            self.write_failing = Some((Instant::now(), why));
        }
        Err(())
    }

    fn flush_current(&mut self) {
        let Some(live) = self.live.as_mut() else {
            return;
        };
        if !self.script_states.is_empty() {
            match live.save_script_states(&self.script_states) {
                Ok(()) => self.script_states.clear(),
                Err(e) => log::warn!("storage: {e}; retried"),
            }
        }
        // The changed rows, and every touched_due the ones whose time
        // alone moved (each id once: a tag in both sets is in `current`).
        let now = Instant::now();
        let with_touched = now >= self.touched_due && !self.touched.is_empty();
        if with_touched {
            for id in self.touched.iter() {
                self.current.insert(id);
            }
        }
        let archives = &self.archives;
        let rows = self
            .current
            .iter()
            .filter_map(|id| Some((id, archives.get(&id)?.archive.latest.as_ref()?)));
        match live.write_current(rows) {
            Ok(()) => {
                self.current.clear();
                if with_touched {
                    self.touched.clear();
                    self.touched_due = now + CURRENT_TIME_EVERY;
                }
                if self.live_failing {
                    log::info!("storage: live database writable again");
                    self.live_failing = false;
                }
            }
            Err(e) => {
                if !self.live_failing {
                    log::error!("storage: {e}; current values kept in memory, retrying");
                    self.live_failing = true;
                }
            }
        }
    }

    /// Closes the open segment if it has rows, then publishes.
    fn close_segment(&mut self) {
        let seg = std::mem::replace(
            &mut self.seg,
            OpenSegment::broken(&self.cfg.staging, &self.cfg.segment_pragmas(), 0),
        );
        let (next, result) = seg.close();
        self.seg = next;
        match result {
            Ok(Some(closed)) => {
                log::debug!(
                    "storage: closed segment {}",
                    segment::file_name(closed.first, closed.last)
                );
                self.outbox.staged.push_back(closed);
                let next_id = self.seg.next_id;
                // Straight from the archive state: a copy of 10,000 rows
                // here was the largest allocation of a segment's close.
                // Only the tags archived since the last close: the others'
                // saved rows are still right.
                if let Some(live) = self.live.as_mut() {
                    let (archives, changed) = (&self.archives, &self.last_changed);
                    let last = changed
                        .iter()
                        .filter_map(|id| Some((id, archives.get(&id)?.archive.last.as_ref()?)));
                    let saved = live
                        .set_meta("next_id", next_id)
                        .and_then(|()| live.save_last(last));
                    match saved {
                        Ok(()) => self.last_changed = IdSet::default(),
                        Err(e) => log::warn!("storage: {e}"),
                    }
                }
                self.publish();
            }
            Ok(None) => {}
            Err(e) => log::error!("storage: cannot close the open segment: {e}; retried later"),
        }
    }

    fn publish(&mut self) {
        match self.outbox.publish() {
            Ok(n) => {
                self.stats.published += n as u64;
                if self.publish_failing {
                    log::info!(
                        "storage: outbox {} reachable again; {n} segments published",
                        self.outbox.dir.display()
                    );
                    self.publish_failing = false;
                }
            }
            Err(e) => {
                if !self.publish_failing {
                    log::error!(
                        "storage: {e}; {} closed segments wait in {}, retried every second",
                        self.outbox.staged.len(),
                        self.cfg.staging.display()
                    );
                    self.publish_failing = true;
                }
            }
        }
    }

    /// Recreates the live database when it was deleted or replaced.
    fn check_live(&mut self) {
        if self.live.as_ref().is_some_and(Live::still_there) {
            return;
        }
        if self.live.is_some() {
            log::error!(
                "storage: live database {} was deleted or replaced; recreating it",
                self.cfg.path.display()
            );
            self.live = None;
        }
        let rebuilt = Live::open(&self.cfg).and_then(|mut live| {
            // Every tag with its old id (in id order, as IdMap iterates).
            live.register(self.infos.iter().map(|(i, t)| (t, Some(i))))?;
            live.set_meta("acked_id", self.acked_id)?;
            live.set_meta("next_id", self.seg.next_id)?;
            Ok(live)
        });
        match rebuilt {
            Ok(live) => {
                log::info!(
                    "storage: live database {} recreated",
                    self.cfg.path.display()
                );
                self.live = Some(live);
                self.live_failing = false;
                // Every tag's latest state, not only what changed since.
                for (id, a) in self.archives.iter() {
                    if a.archive.latest.is_some() {
                        self.current.insert(id);
                    }
                }
            }
            Err(e) => {
                if !self.live_failing {
                    log::error!(
                        "storage: cannot recreate the live database: {e}; retried every second"
                    );
                    self.live_failing = true;
                }
            }
        }
    }

    /// Once a second: the live file's presence, heartbeats,
    /// acknowledgements, publication retries, limits, diagnostics.
    fn tick(&mut self) {
        self.check_live();
        let now = chrono::Utc::now();
        let mut due = Vec::new();
        for (id, a) in self.archives.iter_mut() {
            if let Some(row) = a.archive.on_tick(&a.policy, now) {
                due.push((id, row));
            }
        }
        due.sort_by_key(|(id, _)| *id);
        for (id, row) in due {
            self.last_changed.insert(id);
            self.queue_row(id, row);
        }
        if !self.outbox.staged.is_empty() {
            self.publish();
        }
        self.read_acks(now);
        match self.outbox.delete_acked(self.acked_id) {
            Ok((_, rows)) => self.stats.purged += rows,
            Err(e) => log::warn!("storage: {e}; retried in a second"),
        }
        self.enforce_limits(now);
        let report = self.report();
        for &d in Store::ALL {
            if let Some(&id) = self.diag_ids.get(d.index()) {
                self.record(id, Some(&Value::Int(report.get(d))), Status::GOOD, now);
            }
        }
        // The loop shows it (API, metrics, health) without touching a
        // file; a report it has not taken yet is replaced by the next.
        let _ = self.reports.try_send(report);
    }

    /// Storage's figures now (the disk's from one statvfs).
    fn report(&self) -> StorageReport {
        let mut values = [0; Store::ALL.len()];
        for &d in Store::ALL {
            values[d.index()] = match d {
                Store::Pending => self.rows.len() as i64,
                Store::OutboxSegments => self.outbox.published.len() as i64,
                Store::Published => self.stats.published as i64,
                Store::DroppedRows => self.stats.dropped as i64,
                Store::PurgedRows => self.stats.purged as i64,
                Store::AckedId => self.acked_id,
            };
        }
        let (disk_free, disk_total) = disk_space(&self.cfg.path).unwrap_or_default();
        StorageReport {
            values,
            next_id: self.seg.next_id,
            last_ack: self.last_ack.clone(),
            outbox_bytes: self.outbox.published.iter().map(|s| s.bytes).sum(),
            disk_free,
            disk_total,
        }
    }

    /// Acknowledgements from the ack file in the outbox and from the live
    /// database's `ack` table (`rtds ack`), each answered where it came from.
    fn read_acks(&mut self, now: Timestamp) {
        let polled = std::mem::replace(&mut self.ack_polled, now);
        // Every request gets an answer, whatever the file holds: a new
        // file (or a rewrite) is a new request, even with the content of
        // one already answered.
        if let Some(file) = self.outbox.read_ack()
            && self.ack_seen != Some(file.id)
        {
            let (quoted, request) = match &file.bytes {
                Ok(bytes) => (
                    retention::quote(bytes, file.len),
                    retention::read_request(bytes, file.len),
                ),
                Err(e) => (String::new(), Err(format!("cannot read it: {e}"))),
            };
            let result = request
                .map_err(|e| format!("refused: {e}"))
                .and_then(|ack| self.apply_ack(ack, polled, now));
            let answer = self.log_ack("ack file", &quoted, result);
            let reply = outbox::answer_text(&quoted, &answer, self.acked_id, now);
            match self.outbox.answer_ack(&reply) {
                Ok(()) => self.ack_seen = Some(file.id),
                Err(e) => log::warn!("storage: cannot answer the ack file: {e}; retried"),
            }
        }
        let pending = match self.live.as_ref().map(Live::pending_acks) {
            Some(Ok(p)) => p,
            Some(Err(e)) => {
                log::warn!("storage: {e}");
                return;
            }
            None => return,
        };
        for p in pending {
            let result = p.ack.and_then(|ack| self.apply_ack(ack, p.written_at, now));
            let quoted = retention::quote(p.text.as_bytes(), p.text.len() as u64);
            let answer = self.log_ack(&format!("acknowledgement #{}", p.id), &quoted, result);
            if let Some(live) = self.live.as_mut()
                && let Err(e) = live.answer_ack(p.id, &answer)
            {
                log::warn!("storage: {e}");
            }
        }
    }

    /// Logs an acknowledgement's outcome with its (bounded) quote, and
    /// keeps it for the report.
    fn log_ack(&mut self, what: &str, text: &str, result: Result<String, String>) -> String {
        let answer = match &result {
            Ok(m) | Err(m) => m.clone(),
        };
        self.last_ack = Some((format_ts(&chrono::Utc::now()), answer));
        match result {
            Ok(m) => {
                log::info!("storage: {what} ({text}) {m}");
                m
            }
            Err(m) => {
                log::warn!("storage: {what} ({text}) {m}");
                m
            }
        }
    }

    /// Applies an acknowledgement written at `written`; returns the answer.
    fn apply_ack(
        &mut self,
        ack: Ack,
        written: Timestamp,
        now: Timestamp,
    ) -> Result<String, String> {
        let id = match ack {
            Ack::Id(n) => {
                retention::check_id(n, self.acked_id, self.outbox.last_published)?;
                n
            }
            Ack::Ts(ts) => {
                let published: Vec<SegmentInfo> = self.outbox.published.iter().cloned().collect();
                match retention::ts_to_id(ts, written, now, &published)? {
                    Some(n) if n > self.acked_id => n,
                    _ => {
                        return Ok(format!(
                            "accepted: no further segment was published before it and holds only older rows; acknowledged up to id {}",
                            self.acked_id
                        ));
                    }
                }
            }
        };
        self.acked_id = id;
        if let Some(live) = self.live.as_mut()
            && let Err(e) = live.set_meta("acked_id", id)
        {
            log::warn!("storage: {e}");
        }
        if let Some(summary) = self.drops.end() {
            log::warn!(
                "storage: the Historian acknowledges again; dropped unacknowledged by retention limits while it was away: {summary}"
            );
        }
        let (segments, rows) = self.outbox.delete_acked(id).unwrap_or_else(|e| {
            log::warn!("storage: {e}; retried in a second");
            (0, 0)
        });
        self.stats.purged += rows;
        Ok(format!(
            "accepted: rows up to id {id} acknowledged; {segments} segments ({rows} rows) deleted"
        ))
    }

    /// Drops whole oldest segments while a retention limit is exceeded;
    /// one log line when it starts and one summary when it ends.
    fn enforce_limits(&mut self, now: Timestamp) {
        let all: Vec<SegmentInfo> = self.outbox.all().cloned().collect();
        let n = retention::over_limits(
            &all,
            self.seg.rows(),
            self.seg.bytes(),
            &self.cfg.retention,
            now,
        );
        if n == 0 {
            // The incident goes on while the Historian stays away: each
            // segment closed meanwhile may push the limit again. It ends
            // with the Historian's next acknowledgement (or the stop).
            return;
        }
        match self.outbox.drop_oldest(n) {
            Ok(gone) => {
                let rows: u64 = gone.iter().map(|s| s.rows).sum();
                let ids = gone
                    .first()
                    .zip(gone.last())
                    .map(|(a, b)| (a.first, b.last));
                self.stats.dropped += rows;
                if self.drops.add(gone.len() as u64, rows, ids) {
                    let r = &self.cfg.retention;
                    log::warn!(
                        "storage: retention limit reached (max_rows {}, max_mb {}, max_age_days {}) before the Historian acknowledged: dropping the oldest segments",
                        r.max_rows,
                        r.max_mb,
                        r.max_age_days
                    );
                }
            }
            Err(e) => log::warn!("storage: {e}"),
        }
    }

    /// Writes what is queued, publishes the open segment, and spools what
    /// cannot be written.
    fn shutdown(mut self) -> StorageStats {
        for attempt in 0..3 {
            if self.flush_rows().is_ok() {
                break;
            }
            if attempt < 2 {
                std::thread::sleep(Duration::from_millis(300));
            }
        }
        // Every row's latest time, the touched ones' too.
        self.touched_due = Instant::now();
        self.flush_current();
        if self.rows.is_empty() {
            self.close_segment();
        }
        if let Some(summary) = self.drops.end() {
            log::warn!("storage: dropped unacknowledged by retention limits: {summary}");
        }
        if !self.outbox.staged.is_empty() {
            log::warn!(
                "storage: {} closed segments still wait in {} for the outbox; published at the next start",
                self.outbox.staged.len(),
                self.cfg.staging.display()
            );
        }
        if !self.rows.is_empty() {
            self.save_spool();
        }
        self.stats
    }

    fn save_spool(&mut self) {
        let n = self.rows.len() as u64;
        let mut text = String::new();
        for (id, row) in &self.rows {
            let name = self
                .infos
                .get(id)
                .map_or_else(|| TagInfo::unknown(*id).name, |t| t.name.clone());
            text.push_str(&spool::line(&name, row));
        }
        let mut errors = Vec::new();
        for path in self.spool_paths() {
            let dir = path.parent().map(PathBuf::from).unwrap_or_default();
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            match outbox::write_whole(&dir, &name, text.as_bytes()) {
                Ok(()) => {
                    // The other place may hold an older spool of the same
                    // rows (replayed at this start): only one may remain.
                    for other in self.spool_paths() {
                        if other != path {
                            let _ = std::fs::remove_file(other);
                        }
                    }
                    log::warn!(
                        "storage: {n} archive rows could not be written; saved to {}, replayed at the next start",
                        path.display()
                    );
                    self.stats.spooled = n;
                    return;
                }
                Err(e) => errors.push(e),
            }
        }
        log::error!(
            "storage: {n} archive rows LOST: they could not be written, nor saved to a spool file ({})",
            errors.join("; ")
        );
        self.stats.lost = n;
    }
}

/// Whether an SQLite error says the file is not a usable database.
fn is_damaged(code: Option<rusqlite::ErrorCode>) -> bool {
    matches!(
        code,
        Some(rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase)
    )
}

/// Renames a damaged file (and its journals) to `<name>.damaged-<time>`.
fn set_aside(path: &std::path::Path, why: &str) -> Result<PathBuf, StorageError> {
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ");
    let mut aside = path.as_os_str().to_owned();
    aside.push(format!(".damaged-{stamp}"));
    let aside = PathBuf::from(aside);
    std::fs::rename(path, &aside).map_err(|e| StorageError {
        path: path.to_path_buf(),
        action: "set a damaged file aside",
        message: format!("{why}; {e}"),
        code: None,
    })?;
    for ext in ["-journal", "-wal", "-shm"] {
        let mut j = path.as_os_str().to_owned();
        j.push(ext);
        let _ = std::fs::remove_file(PathBuf::from(j));
    }
    Ok(aside)
}

/// Free and total bytes of the file system holding `path`.
fn disk_space(path: &std::path::Path) -> Option<(u64, u64)> {
    let dir = path.parent()?;
    let dir = if dir.as_os_str().is_empty() {
        std::path::Path::new(".")
    } else {
        dir
    };
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: a valid C string and an out-struct that statvfs fills.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
        return None;
    }
    Some((
        s.f_bavail as u64 * s.f_frsize as u64,
        s.f_blocks as u64 * s.f_frsize as u64,
    ))
}
