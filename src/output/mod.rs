//! Outputs: where the scan's samples go besides storage (the Historian's
//! segment files). MQTT (Sparkplug B or plain JSON topics) is the first;
//! an OPC UA server or others would be the next.
//!
//! Each output runs on its own thread behind a bounded queue and is fed
//! the same [`Batch`]es as storage (one shared allocation, never copied per
//! output). The loop never waits for an output: what the queue cannot
//! take is held, latest last, up to [`MAX_HELD_ROWS`] samples, then the
//! oldest is dropped, counted and logged once per incident; a slow or dead
//! broker only ever costs the output itself (its thread keeps what it
//! cannot send in its own store). Each reports its health (the
//! [`Publish`] family) once a second, for `/health`, `/metrics`,
//! `/api/outputs` and the status page.
//!
//! A new output kind is one module and one line in [`KINDS`].

pub mod mqtt;

use crate::connector::{Extras, SetupError};
use crate::diagnostics::{Family, Publish};
use crate::model::{Batch, Value};
use crate::status::Query;
use crate::storage::TagInfo;
use crossbeam_channel::{Sender, TrySendError};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// Samples held for an output's thread beyond its queue, at most.
pub const MAX_HELD_ROWS: usize = 200_000;

/// Batches in flight to an output's thread.
pub const QUEUE: usize = 64;

/// What the loop tells an output's thread.
#[derive(Debug)]
pub enum Message {
    /// Tags `first..first + tags.len()` of the loop's table (a tag's
    /// index is the `tag` of its samples).
    Tags {
        /// Index of the first.
        first: usize,
        /// Their descriptions.
        tags: Vec<TagInfo>,
    },
    /// Samples, in the order they reached the loop.
    Samples(Batch),
    /// Tags no longer configured.
    Removed(Vec<Arc<str>>),
}

/// An output's health as its thread last reported it.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputReport {
    /// The output's name.
    pub name: String,
    /// Its kind (`mqtt`).
    pub kind: &'static str,
    /// What it talks to, in words.
    pub describe: String,
    /// One value per [`Publish`] entry, in [`Publish::ALL`] order.
    pub values: Vec<Value>,
}

impl OutputReport {
    /// A report before the thread's first one.
    pub fn new(name: &str, kind: &'static str, describe: String) -> OutputReport {
        OutputReport {
            name: name.into(),
            kind,
            describe,
            values: Publish::ALL
                .iter()
                .map(|d| match d {
                    Publish::Connected => Value::Bool(false),
                    Publish::LastError => Value::Str(String::new()),
                    _ => Value::Int(0),
                })
                .collect(),
        }
    }

    /// Diagnostic `d`'s value.
    pub fn get(&self, d: Publish) -> &Value {
        &self.values[d.index()]
    }

    /// Sets diagnostic `d`.
    pub fn set(&mut self, d: Publish, v: Value) {
        self.values[d.index()] = v;
    }
}

/// A running output, as the loop holds it. No call blocks.
pub trait Output: Send {
    /// Its name.
    fn name(&self) -> &str;
    /// Registers tags (the loop's table, from `first`).
    fn tags(&mut self, first: usize, tags: &[TagInfo]);
    /// Hands over a batch of samples.
    fn samples(&mut self, batch: &Batch);
    /// Tags no longer configured.
    fn removed(&mut self, names: &[Arc<str>]);
    /// Hands over what its queue could not take before (every cycle).
    fn pump(&mut self);
    /// Its latest health report, if a new one came.
    fn report(&mut self) -> Option<OutputReport>;
    /// Whether its thread still runs.
    fn is_alive(&self) -> bool;
    /// Stops it: what it holds is delivered or kept in its store until
    /// `deadline`. Returns the changes lost (neither delivered nor kept),
    /// which make the exit status 1.
    fn close(self: Box<Self>, deadline: Instant) -> u64;
}

/// What an output needs from the server when it starts.
pub struct Context {
    /// Its name.
    pub name: String,
    /// The loop's query channel: a command from outside (a Sparkplug
    /// DCMD) writes a tag through it, with a script's checks.
    pub queries: Sender<Query>,
}

/// An output's validated settings.
pub trait OutputConfig: Send + Sync + std::fmt::Debug {
    /// Starts its thread.
    fn start(&self, ctx: Context) -> std::io::Result<Box<dyn Output>>;
    /// What it talks to, in words (the start-up log, `rtds check`).
    fn describe(&self) -> String;
}

/// What an output kind is given to set itself up.
pub struct Setup<'a> {
    /// The output's name.
    pub name: &'a str,
    /// Its entry's fields besides `name` and `kind`.
    pub extras: Extras,
    /// The configuration file's directory, for relative paths.
    pub base: &'a Path,
    /// The live database's directory (a default place for files).
    pub data_dir: &'a Path,
}

/// What a kind's setup returns: the settings, or every mistake.
pub type Built = Result<Arc<dyn OutputConfig>, Vec<SetupError>>;

/// An output kind: its name in `kind:` and how its settings are read.
pub struct Kind {
    /// `kind: "mqtt"`.
    pub name: &'static str,
    /// Reads the settings, or every mistake (`At::Field` names the line).
    pub setup: fn(Setup<'_>) -> Built,
}

/// The output kinds this build knows. A new kind is one module and one
/// line here.
pub const KINDS: &[Kind] = &[mqtt::KIND];

/// One configured output.
#[derive(Debug, Clone)]
pub struct OutputEntry {
    /// Its name (unique among connectors and outputs: its diagnostics are
    /// `<name>._connected` …).
    pub name: String,
    /// Its kind.
    pub kind: &'static str,
    /// Its settings.
    pub config: Arc<dyn OutputConfig>,
}

impl PartialEq for OutputEntry {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
            && self.kind == other.kind
            && format!("{:?}", self.config) == format!("{:?}", other.config)
    }
}

/// The loop's side of an output's queue: a bounded channel, and what it
/// could not take held here, oldest dropped beyond [`MAX_HELD_ROWS`].
pub struct Feed {
    name: String,
    tx: Sender<Message>,
    held: VecDeque<Message>,
    held_rows: usize,
    /// Samples dropped because the thread took nothing for too long.
    pub overflowed: u64,
    overflowing: bool,
}

fn rows(m: &Message) -> usize {
    match m {
        Message::Samples(b) => b.len(),
        _ => 0,
    }
}

impl Feed {
    /// A feed into `tx`.
    pub fn new(name: &str, tx: Sender<Message>) -> Feed {
        Feed {
            name: name.into(),
            tx,
            held: VecDeque::new(),
            held_rows: 0,
            overflowed: 0,
            overflowing: false,
        }
    }

    /// Queues `m` behind what is held and hands over what the channel
    /// takes.
    pub fn post(&mut self, m: Message) {
        self.held_rows += rows(&m);
        self.held.push_back(m);
        self.pump();
        while self.held_rows > MAX_HELD_ROWS {
            let newest = self.held.len().saturating_sub(1);
            let Some(i) = self
                .held
                .iter()
                .take(newest)
                .position(|m| matches!(m, Message::Samples(_)))
            else {
                break;
            };
            if let Some(m) = self.held.remove(i) {
                let n = rows(&m);
                self.held_rows -= n;
                self.overflowed += n as u64;
                if !self.overflowing {
                    log::error!(
                        "output {}: its thread takes nothing ({MAX_HELD_ROWS} samples held for it): dropping the oldest",
                        self.name
                    );
                    self.overflowing = true;
                }
            }
        }
    }

    /// Hands over what is held, oldest first.
    pub fn pump(&mut self) {
        while let Some(m) = self.held.pop_front() {
            let n = rows(&m);
            match self.tx.try_send(m) {
                Ok(()) => self.held_rows -= n,
                Err(TrySendError::Full(m)) => {
                    self.held.push_front(m);
                    return;
                }
                Err(TrySendError::Disconnected(_)) => {
                    self.held.clear();
                    self.held_rows = 0;
                    return;
                }
            }
        }
        if self.overflowing {
            log::warn!(
                "output {}: its thread takes samples again; {} were dropped meanwhile",
                self.name,
                self.overflowed
            );
            self.overflowing = false;
        }
    }

    /// Hands over what is held, waiting for the thread until `deadline`;
    /// returns the samples that could not be (lost).
    pub fn drain(&mut self, deadline: Instant) -> u64 {
        let mut lost = 0;
        while let Some(m) = self.held.pop_front() {
            let n = rows(&m) as u64;
            if self.tx.send_deadline(m, deadline).is_err() {
                lost += n;
            }
        }
        self.held_rows = 0;
        lost + self.overflowed
    }
}

/// Reads the directory a relative output file is resolved against.
pub fn resolve(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}
