//! What the central loop tells the outside about itself: a snapshot of the
//! tag table, the connectors, the scripts and the loop's own health, asked
//! for by message (the HTTP thread sends a [`Query`], the loop answers
//! between two steps of its cycle). Plain data: whoever holds a snapshot
//! holds no lock and cannot slow the loop.

use crate::diagnostics::{Family, Link};
use crate::model::{TagState, Timestamp, Value};
use crate::storage::StorageReport;
use crossbeam_channel::Sender;
use std::sync::Arc;

/// Where a tag comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Read from a device (connector index).
    Device(usize),
    /// A connector's own `_…` diagnostic tag (connector index).
    Diagnostic(usize),
    /// Set by a script.
    Calculated,
}

/// A tag's fixed description; shared between snapshots of one table.
#[derive(Debug, Clone, PartialEq)]
pub struct TagMeta {
    /// Tag name.
    pub name: std::sync::Arc<str>,
    /// Origin.
    pub kind: Kind,
    /// Address in its source (empty for calculated tags).
    pub address: String,
    /// Whether scripts (and the API, with writes on) may write it.
    pub writable: bool,
}

/// One connector as configured.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectorView {
    /// Name.
    pub name: String,
    /// What it talks to (the start-up log's line).
    pub describe: String,
    /// Index in the snapshot's tags of its first diagnostic tag (then
    /// the rest in [`Link::ALL`] order).
    pub diagnostics: usize,
}

/// A script's run counters.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ScriptStats {
    /// Script name.
    pub name: String,
    /// Runs since start (or since its source last changed).
    pub runs: u64,
    /// Failed runs and refused writes.
    pub errors: u64,
    /// The last error, with its line; empty until one happens.
    pub last_error: String,
}

/// The loop's state at the end of one cycle.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// When it was taken.
    pub taken: Timestamp,
    /// When the server started.
    pub started: Timestamp,
    /// The configured cycle.
    pub cycle_ms: u64,
    /// Cycles completed.
    pub cycles: u64,
    /// When the last cycle completed.
    pub last_cycle: Timestamp,
    /// Cycle start lateness over the recent cycles, ms: (last, p50, p99, max).
    pub lateness_ms: (f64, f64, f64, f64),
    /// Whether the storage thread is alive.
    pub storage_alive: bool,
    /// Storage's last report (at most a second old).
    pub storage: StorageReport,
    /// Each output's last report (at most a second old).
    pub outputs: Vec<crate::output::OutputReport>,
    /// Tag descriptions, index-aligned with `states`.
    pub tags: Arc<Vec<TagMeta>>,
    /// Tag states.
    pub states: Vec<TagState>,
    /// Connectors.
    pub connectors: Arc<Vec<ConnectorView>>,
    /// Scripts.
    pub scripts: Vec<ScriptStats>,
}

impl Snapshot {
    /// Connector `c`'s diagnostic `d`, if it has a value yet.
    pub fn link(&self, c: usize, d: Link) -> Option<&Value> {
        let at = self.connectors.get(c)?.diagnostics + d.index();
        self.states.get(at)?.value.as_ref()
    }
}

/// A request to the loop.
#[derive(Debug)]
pub enum Query {
    /// The latest snapshot (taken at most one cycle ago).
    Snapshot(Sender<Arc<Snapshot>>),
    /// Write `value` to device tag `tag` with a script write's checks;
    /// the answer says whether it was queued for the device, or why not.
    Write {
        /// Tag name.
        tag: String,
        /// The value.
        value: Value,
        /// Who asked, for the log.
        by: String,
        /// The answer.
        reply: Sender<Result<(), String>>,
    },
}
