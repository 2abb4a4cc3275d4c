//! The central loop. It owns the tag table; connectors feed it by channel,
//! and once per cycle it
//!
//! 1. marks the tags of connectors that have gone silent as stale,
//! 2. runs the scripts that are due,
//! 3. sends values scripts set on writable tags to their connectors,
//! 4. hands the cycle's samples to storage.
//!
//! Nothing in the loop blocks on a device or the disk: a connector that
//! hangs only stops its own messages, storage only lengthens its own queue.

use crate::config::Config;
use crate::connector::{self, ConnectorHandle, Event, RunnerSpec};
use crate::diagnostics::{self, Family, Link};
use crate::located::Errors;
use crate::model::{Batch, Origin, Sample, Status, TagState, TagTable, Timestamp};
use crate::output::{self, Output, OutputReport};
use crate::script::ScriptHost;
use crate::status::{ConnectorView, Kind, Query, Snapshot, TagMeta};
use crate::storage::archive::ArchivePolicy;
use crate::storage::{Storage, StorageError, StorageReport, StorageStats, TagInfo};
use chrono::Utc;
use crossbeam_channel::{Receiver, Sender, bounded, never, select};
use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What the outside world (signals, tests) tells the loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Stop after storing everything received so far (SIGTERM, SIGINT).
    Stop,
    /// Re-read the config file; keep running on the old one if it is bad
    /// (SIGHUP).
    Reload,
}

/// Why the server could not start.
#[derive(Debug)]
pub enum ServerError {
    /// The storage file could not be opened.
    Storage(StorageError),
    /// A script does not compile (each one named with its line).
    Config(Errors),
    /// A thread could not be started.
    Thread(std::io::Error),
    /// An output could not be started (its store-and-forward file, TLS
    /// files).
    Output(String, std::io::Error),
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerError::Storage(e) => write!(f, "storage: {e}"),
            ServerError::Config(e) => write!(f, "{e}"),
            ServerError::Thread(e) => write!(f, "cannot start thread: {e}"),
            ServerError::Output(name, e) => write!(f, "output {name}: {e}"),
        }
    }
}

impl std::error::Error for ServerError {}

/// Totals of a run, logged at shutdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunSummary {
    /// Cycles completed.
    pub cycles: u64,
    /// What storage wrote.
    pub storage: StorageStats,
    /// Changes the outputs lost (neither delivered nor kept): the exit
    /// status is then 1.
    pub outputs_lost: u64,
}

/// The connectors and scripts of one configuration; replaced whole on reload.
struct Generation {
    config: Config,
    connectors: Vec<ConnectorHandle>,
    events: Receiver<Event>,
    /// Keeps `events` connected with no connector at all, so waiting on it
    /// blocks until the next cycle instead of returning at once (a spin).
    _events_tx: crossbeam_channel::Sender<Event>,
    scripts: ScriptHost,
    /// Server tag indexes of each connector's tags.
    connector_tags: Vec<Arc<[usize]>>,
    last_seen: Vec<Instant>,
    stale_after: Vec<Duration>,
    /// Each connector reads every Nth cycle.
    read_every: Vec<u64>,
    /// The cycle whose read a connector is still doing.
    in_flight: Vec<Option<u64>>,
    /// Scheduled reads each connector answered (for `--scans`).
    reads_done: Vec<u64>,
    /// The scan number this configuration started at (the phase of the
    /// every-Nth-cycle reads).
    first_scan: u64,
}

impl Generation {
    fn start(
        mut config: Config,
        scripts: ScriptHost,
        table: &TagTable,
        scan: u64,
    ) -> Result<Generation, ServerError> {
        // Bounded: a connector has at most one poll in flight and a few
        // write batches, so this only fills while the loop is stuck (a
        // script at its time limit); then a connector's thread waits here
        // (its device is not polled meanwhile) and nothing is dropped.
        let (tx, events) = bounded(4 * config.connectors.len() + 16);
        let mut connector_tags = vec![Vec::new(); config.connectors.len()];
        for (i, origin) in table.origins.iter().enumerate() {
            if let Some((connector, _, _)) = origin.as_device() {
                connector_tags[connector].push(i);
            }
        }
        // Shared with the connector threads, not copied for each.
        let connector_tags: Vec<Arc<[usize]>> = connector_tags.into_iter().map(Arc::from).collect();
        // Connectors naming the same endpoint share one thread and one
        // connection (a one-client device serves all of them).
        let mut groups: Vec<(Option<connector::Endpoint>, Vec<RunnerSpec>)> = Vec::new();
        let mut stale_after = Vec::new();
        for (index, c) in config.connectors.iter().enumerate() {
            let spec = RunnerSpec {
                index,
                name: c.name.clone(),
                interval: c.interval,
                tag_ids: connector_tags[index].clone(),
                kind: c.kind.clone(),
            };
            let endpoint = c.kind.endpoint();
            match groups
                .iter_mut()
                .find(|(e, _)| endpoint.is_some() && *e == endpoint)
            {
                Some((_, specs)) => specs.push(spec),
                None => groups.push((endpoint, vec![spec])),
            }
            // Long enough for a poll that times out plus two missed intervals;
            // a connector that fails reports bad statuses itself well before.
            stale_after.push(c.interval * 3 + c.kind.worst_poll() + Duration::from_secs(1));
        }
        let mut slots: Vec<Option<ConnectorHandle>> =
            (0..config.connectors.len()).map(|_| None).collect();
        for (endpoint, specs) in groups {
            if specs.len() > 1 {
                log::info!(
                    "connectors {} share one link to {}",
                    specs
                        .iter()
                        .map(|s| s.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                    endpoint.map(|e| e.to_string()).unwrap_or_default()
                );
            }
            let indexes: Vec<usize> = specs.iter().map(|s| s.index).collect();
            let handles = connector::spawn_group(specs, tx.clone()).map_err(ServerError::Thread)?;
            for (i, h) in indexes.into_iter().zip(handles) {
                slots[i] = Some(h);
            }
        }
        let connectors: Vec<ConnectorHandle> = slots.into_iter().flatten().collect();
        let now = Instant::now();
        // The table, the connectors and storage are built: the parsed tag
        // list is not needed for the run.
        config.release_tags();
        let cycle_ms = config.cycle.as_millis().max(1);
        let read_every = config
            .connectors
            .iter()
            .map(|c| (c.interval.as_millis() / cycle_ms).max(1) as u64)
            .collect();
        Ok(Generation {
            read_every,
            in_flight: vec![None; connectors.len()],
            reads_done: vec![0; connectors.len()],
            first_scan: scan + 1,
            _events_tx: tx,
            last_seen: vec![now; connectors.len()],
            config,
            connectors,
            events,
            scripts,
            connector_tags,
            stale_after,
        })
    }

    /// Stops the connector threads, waiting at most until `deadline`, and
    /// returns what they sent meanwhile (the last writes' confirmations):
    /// their queue is bounded, so it is emptied while they finish.
    fn stop(&mut self, deadline: Instant) -> Vec<Event> {
        for c in &mut self.connectors {
            // Hand over what is held: the thread writes it if it can.
            c.write(Vec::new());
        }
        for c in &self.connectors {
            c.request_stop();
        }
        let mut last = Vec::new();
        let mut running: Vec<ConnectorHandle> = self.connectors.drain(..).collect();
        loop {
            last.extend(self.events.try_iter());
            let (done, left): (Vec<_>, Vec<_>) = running.into_iter().partition(|h| h.finished());
            for h in done {
                h.join(deadline);
            }
            running = left;
            if running.is_empty() || Instant::now() >= deadline {
                break;
            }
            if let Ok(e) = self.events.recv_timeout(Duration::from_millis(10)) {
                last.push(e);
            }
        }
        for h in running {
            h.join(deadline);
        }
        last.extend(self.events.try_iter());
        last
    }
}

/// Builds the tag table for `config`: device tags in config order, then the
/// calculated tags of `old` (so a reload keeps script results). States of
/// tags that already existed are carried over by name.
fn build_table(config: &Config, old: Option<&TagTable>) -> TagTable {
    let now = Utc::now();
    let carried = |name: &str| -> TagState {
        old.and_then(|o| o.find(name).map(|i| o.states[i].clone()))
            .unwrap_or_else(|| TagState::no_data(now))
    };
    let mut table = TagTable::default();
    table.add_all(config.connectors.iter().enumerate().flat_map(|(ci, c)| {
        let device = c.tags.iter().enumerate().map(move |(li, t)| {
            let origin = Origin::device(ci, li, t.writable);
            (t.name.clone(), origin, carried(&t.name))
        });
        let diagnostic = Link::ALL.iter().map(move |&d| {
            let name: Arc<str> = diagnostics::tag_name(&c.name, d).into();
            let origin = Origin::device(ci, c.tags.len() + d.index(), false);
            let state = carried(&name);
            (name, origin, state)
        });
        device.chain(diagnostic)
    }));
    if let Some(old) = old {
        let kept: Vec<usize> = (0..old.len())
            .filter(|&i| {
                old.origins[i] == Origin::Calculated && table.find(&old.names[i]).is_none()
            })
            .collect();
        table.add_all(kept.into_iter().map(|i| {
            (
                old.names[i].clone(),
                Origin::Calculated,
                old.states[i].clone(),
            )
        }));
    }
    // Built tag by tag: give back the spare capacity of the doubling.
    table.shrink_to_fit();
    table
}

/// Describes every tag of the table for storage's `tags` table. `config`
/// still holds its parsed tags: this runs before [`Generation::start`]
/// releases them.
fn tag_infos<'a>(
    config: &'a Config,
    table: &'a TagTable,
) -> impl ExactSizeIterator<Item = TagInfo> + 'a {
    // One shared copy of each source name, not one per tag.
    let sources: Vec<Arc<str>> = config
        .connectors
        .iter()
        .map(|c| Arc::from(c.name.as_str()))
        .collect();
    let script: Arc<str> = Arc::from("script");
    (0..table.len()).map(move |i| match table.origins[i].as_device() {
        Some((connector, local, _)) if local >= config.connectors[connector].tag_count() => {
            let c = &config.connectors[connector];
            let d = Link::ALL[local - c.tag_count()];
            TagInfo::diagnostic(
                table.names[i].clone(),
                sources[connector].clone(),
                d,
                config.storage.archive,
            )
        }
        Some((connector, local, writable)) => {
            let c = &config.connectors[connector];
            let t = &c.tags[local];
            TagInfo {
                name: t.name.clone(),
                source: sources[connector].clone(),
                address: t.address.as_str().into(),
                data_type: c.kind.type_name(local),
                writable,
                description: t.description.as_str().into(),
                unit: t.unit.as_str().into(),
                policy: c.policies[local],
            }
        }
        None => calculated_info(table, i, &script, config.storage.archive),
    })
}

/// Describes calculated tag `i` (a script's result) for storage.
fn calculated_info(
    table: &TagTable,
    i: usize,
    script: &Arc<str>,
    policy: ArchivePolicy,
) -> TagInfo {
    TagInfo {
        name: table.names[i].clone(),
        source: script.clone(),
        address: "".into(),
        data_type: table.states[i].value.as_ref().map_or("", |v| v.kind()),
        writable: false,
        description: "".into(),
        unit: "".into(),
        policy,
    }
}

/// Compiles the scripts of a whole configuration, with its connectors'
/// write checks.
pub fn scripts_for(config: &Config) -> Result<ScriptHost, Errors> {
    ScriptHost::new(
        &config.scripts,
        &config.script_limits,
        config.cycle,
        config.connectors.iter().map(|c| c.kind.clone()).collect(),
    )
}

/// The running server.
pub struct Server {
    active: Generation,
    table: TagTable,
    storage: Storage,
    /// Samples the current cycle computed (stale marks, scripts), handed
    /// to storage at its end; polls go to storage as they are applied.
    batch: Vec<Sample>,
    cycles: u64,
    /// `rtds run --scans N`: stop once every connector answered N reads.
    stop_after: Option<u64>,
    /// How late each cycle started against its schedule, in ms (bounded):
    /// the figure that says whether the gateway keeps up.
    lateness: Vec<f32>,
    /// Scripts' states last handed to storage, and when to look again.
    states_saved: Vec<crate::model::ScriptState>,
    states_due: Instant,
    /// Scan cycles started.
    scan: u64,
    /// Requests from the HTTP thread (never answered when there is none).
    queries: Receiver<Query>,
    started: Timestamp,
    /// The last snapshot and the cycle count it was taken at.
    snapshot: Option<(u64, Arc<Snapshot>)>,
    /// Tag and connector descriptions for snapshots, until the table changes.
    meta: Option<Meta>,
    /// Lateness of the recent cycles, for the status page and metrics.
    recent: VecDeque<f32>,
    /// Writes the API accepted, for the next cycle.
    api_writes: Vec<(usize, crate::model::Value)>,
    last_cycle: Timestamp,
    /// Storage's latest report, for snapshots.
    storage_report: StorageReport,
    /// The outputs besides storage (MQTT …), in config order.
    outputs: Vec<Box<dyn Output>>,
    /// Their latest reports, for snapshots.
    output_reports: Vec<OutputReport>,
}

/// Tag and connector descriptions shared by snapshots.
type Meta = (Arc<Vec<TagMeta>>, Arc<Vec<ConnectorView>>);

/// Recent cycles whose lateness the status page and metrics summarise.
const RECENT_CYCLES: usize = 1000;

/// How often scripts' states are compared and saved (and at stop).
const STATES_EVERY: Duration = Duration::from_secs(1);

impl Server {
    /// Opens storage, starts the outputs, compiles scripts and starts the
    /// connectors. `queries` reaches the loop (an output's commands write
    /// through it).
    pub fn start(config: Config, queries: Sender<Query>) -> Result<Server, ServerError> {
        let mut scripts = scripts_for(&config).map_err(ServerError::Config)?;
        let mut storage = Storage::start(&config.storage).map_err(ServerError::Storage)?;
        let restored = scripts.restore(&storage.saved_scripts);
        if restored > 0 {
            log::info!("scripts: the state of {restored} scripts restored from the live database");
        }
        let table = build_table(&config, None);
        let infos: Vec<TagInfo> = tag_infos(&config, &table).collect();
        let mut outputs: Vec<Box<dyn Output>> = Vec::new();
        let mut output_reports = Vec::new();
        for o in &config.outputs {
            let mut out = o
                .config
                .start(output::Context {
                    name: o.name.clone(),
                    queries: queries.clone(),
                })
                .map_err(|e| ServerError::Output(o.name.clone(), e))?;
            out.tags(0, &infos);
            output_reports.push(OutputReport::new(&o.name, o.kind, o.config.describe()));
            outputs.push(out);
        }
        let registering = Instant::now();
        storage.tags(0, infos);
        let device: usize = config.connectors.iter().map(|c| c.tag_count()).sum();
        let diagnostic = table.len() - device + diagnostics::Store::ALL.len();
        log::info!(
            "rtds starting: {} connectors, {} scripts, {}; cycle {} ms, storage {}",
            config.connectors.len(),
            scripts.len(),
            tag_counts(device, diagnostic, 0),
            config.cycle.as_millis(),
            config.storage.path.display()
        );
        // No poll before storage knows the tags: one arriving meanwhile is
        // held for it, and at 10,000 tags a fast scan filled the bound on
        // held samples before a slow machine's registration was done.
        if storage.wait_registered(REGISTRATION_WAIT) {
            log::info!(
                "storage: the tags registered in {:.1} ms",
                registering.elapsed().as_secs_f64() * 1e3
            );
        } else {
            log::warn!(
                "storage: registering the tags is taking over {} s; starting the connectors anyway",
                REGISTRATION_WAIT.as_secs()
            );
        }
        let active = Generation::start(config, scripts, &table, 0)?;
        Ok(Server {
            active,
            table,
            storage,
            batch: Vec::new(),
            cycles: 0,
            stop_after: None,
            lateness: Vec::new(),
            states_saved: Vec::new(),
            states_due: Instant::now(),
            scan: 0,
            queries: never(),
            started: Utc::now(),
            snapshot: None,
            meta: None,
            recent: VecDeque::with_capacity(RECENT_CYCLES),
            api_writes: Vec::new(),
            last_cycle: Utc::now(),
            storage_report: StorageReport::default(),
            outputs,
            output_reports,
        })
    }

    /// Answers `queries` (from the HTTP thread) between the steps of the
    /// loop: a snapshot is an `Arc` handed out, taken at most once a cycle.
    pub fn serve(&mut self, queries: Receiver<Query>) {
        self.queries = queries;
    }

    fn query(&mut self, q: Query) {
        match q {
            Query::Snapshot(reply) => {
                let snap = self.snapshot();
                let _ = reply.send(snap);
            }
            Query::Write {
                tag,
                value,
                by,
                reply,
            } => {
                let result = self.api_write(&tag, value, &by);
                let _ = reply.send(result);
            }
        }
    }

    /// A write from the API, with the checks a script's write gets.
    fn api_write(&mut self, tag: &str, value: crate::model::Value, by: &str) -> Result<(), String> {
        let idx = self
            .table
            .find(tag)
            .ok_or_else(|| format!("no tag `{tag}`"))?;
        let Some((connector, local, writable)) = self.table.origins[idx].as_device() else {
            return Err(format!(
                "`{tag}` is calculated by a script, not a device tag"
            ));
        };
        let kind = &self.active.config.connectors[connector].kind;
        if !writable || !kind.is_writable(local) {
            return Err(format!(
                "`{tag}` is not writable (`writable: true` in the configuration)"
            ));
        }
        kind.check_write(local, &value)
            .map_err(|m| format!("`{tag}`: {m}; not written"))?;
        log::info!("api: {by} writes {value} to {tag}");
        self.table.states[idx].value = Some(value.clone());
        self.api_writes.push((idx, value));
        Ok(())
    }

    fn snapshot(&mut self) -> Arc<Snapshot> {
        if let Some((at, snap)) = &self.snapshot
            && *at == self.cycles
        {
            return snap.clone();
        }
        let (tags, connectors) = self.meta();
        let mut recent: Vec<f32> = self.recent.iter().copied().collect();
        let last = recent.last().copied().unwrap_or(0.0);
        let (p50, p99, max) = percentiles(&mut recent).unwrap_or((0.0, 0.0, 0.0));
        let config = &self.active.config;
        let snap = Arc::new(Snapshot {
            taken: Utc::now(),
            started: self.started,
            cycle_ms: config.cycle.as_millis() as u64,
            cycles: self.cycles,
            last_cycle: self.last_cycle,
            lateness_ms: (
                f64::from(last),
                f64::from(p50),
                f64::from(p99),
                f64::from(max),
            ),
            storage_alive: self.storage.is_alive(),
            storage: self.storage_report.clone(),
            outputs: self.output_reports.clone(),
            tags,
            states: self.table.states.clone(),
            connectors,
            scripts: self.active.scripts.stats(),
        });
        self.snapshot = Some((self.cycles, snap.clone()));
        snap
    }

    /// Tag and connector descriptions, rebuilt when the table changed.
    fn meta(&mut self) -> Meta {
        if let Some((t, c)) = &self.meta
            && t.len() == self.table.len()
        {
            return (t.clone(), c.clone());
        }
        let config = &self.active.config;
        let tags: Vec<TagMeta> = (0..self.table.len())
            .map(|i| {
                let (kind, address, writable) = match self.table.origins[i].as_device() {
                    Some((connector, local, _))
                        if local >= config.connectors[connector].tag_count() =>
                    {
                        (Kind::Diagnostic(connector), "diagnostic".to_string(), false)
                    }
                    Some((connector, local, writable)) => (
                        Kind::Device(connector),
                        config.connectors[connector]
                            .addresses
                            .get(local)
                            .to_string(),
                        writable,
                    ),
                    None => (Kind::Calculated, String::new(), false),
                };
                TagMeta {
                    name: self.table.names[i].clone(),
                    kind,
                    address,
                    writable,
                }
            })
            .collect();
        let connectors: Vec<ConnectorView> = config
            .connectors
            .iter()
            .map(|c| ConnectorView {
                name: c.name.clone(),
                describe: c.kind.describe(),
                diagnostics: self
                    .table
                    .find(&format!("{}._connected", c.name))
                    .unwrap_or(0),
            })
            .collect();
        let meta = (Arc::new(tags), Arc::new(connectors));
        self.meta = Some(meta.clone());
        meta
    }

    /// Stops the run once every connector has answered `scans` scheduled
    /// reads (and that cycle's scripts, writes and storage ran): a
    /// commissioning check that stores a few scans and ends, and the
    /// benchmarks' fixed amount of work.
    pub fn stop_after(&mut self, scans: u64) {
        self.stop_after = Some(scans);
    }

    fn scans_done(&self) -> bool {
        self.stop_after
            .is_some_and(|n| self.active.reads_done.iter().all(|&d| d >= n))
    }

    /// Runs until `control` says stop (or is dropped), then stores
    /// everything pending and returns the totals.
    pub fn run(mut self, control: Receiver<Control>) -> RunSummary {
        let mut next_cycle = Instant::now() + self.active.config.cycle;
        loop {
            let now = Instant::now();
            if now >= next_cycle {
                let late = (now - next_cycle).as_secs_f32() * 1000.0;
                if self.lateness.len() < MAX_LATENESS_SAMPLES {
                    self.lateness.push(late);
                }
                if self.recent.len() == RECENT_CYCLES {
                    self.recent.pop_front();
                }
                self.recent.push_back(late);
                // The seed's scan: start the reads due in this cycle, wait
                // for them (up to the read deadline), then scripts, writes
                // and storage on values read in this very cycle.
                let started = self.start_reads();
                let deadline = now + self.active.config.read_deadline;
                let mut pending = None;
                while self.reads_outstanding(started) {
                    let events = self.active.events.clone();
                    let queries = self.queries.clone();
                    select! {
                        recv(events) -> ev => {
                            if let Ok(ev) = ev {
                                self.event(ev);
                            }
                        }
                        recv(queries) -> q => match q {
                            Ok(q) => self.query(q),
                            Err(_) => self.queries = never(),
                        },
                        recv(control) -> c => {
                            pending = Some(c.unwrap_or(Control::Stop));
                            break;
                        }
                        default(deadline.saturating_duration_since(Instant::now())) => break,
                    }
                }
                if pending == Some(Control::Stop) || !self.cycle(now) || self.scans_done() {
                    break;
                }
                if pending == Some(Control::Reload) && !self.reload() {
                    break;
                }
                next_cycle = next_deadline(next_cycle, self.active.config.cycle, Instant::now());
                continue;
            }
            let events = self.active.events.clone();
            let queries = self.queries.clone();
            select! {
                recv(events) -> ev => {
                    if let Ok(ev) = ev {
                        self.event(ev);
                    }
                }
                recv(queries) -> q => match q {
                    Ok(q) => self.query(q),
                    // The HTTP thread is gone: stop listening for it.
                    Err(_) => self.queries = never(),
                },
                recv(control) -> c => match c {
                    Ok(Control::Reload) => {
                        if !self.reload() {
                            break;
                        }
                    }
                    Ok(Control::Stop) | Err(_) => break,
                },
                default(next_cycle - now) => {}
            }
        }
        self.shutdown()
    }

    /// Asks every connector due in this cycle to read (a connector with
    /// `interval_ms` N × `cycle_ms` every Nth cycle), unless its previous
    /// read is still under way. Returns this cycle's number.
    fn start_reads(&mut self) -> u64 {
        self.scan += 1;
        let scan = self.scan;
        let g = &mut self.active;
        for (c, handle) in g.connectors.iter().enumerate() {
            let every = g.read_every[c].max(1);
            if g.in_flight[c].is_some() || !(scan - g.first_scan).is_multiple_of(every) {
                continue;
            }
            if handle.poll(scan) {
                g.in_flight[c] = Some(scan);
            }
        }
        scan
    }

    /// Whether a read started in cycle `scan` has not answered yet.
    fn reads_outstanding(&self, scan: u64) -> bool {
        self.active.in_flight.contains(&Some(scan))
    }

    fn event(&mut self, ev: Event) {
        let Event::Samples {
            connector,
            samples,
            cycle,
        } = ev;
        if cycle.is_some()
            && let Some(f) = self.active.in_flight.get_mut(connector)
        {
            *f = None;
            self.active.reads_done[connector] += 1;
        }
        self.apply(connector, samples);
    }

    fn apply(&mut self, connector: usize, samples: Vec<Sample>) {
        if let Some(seen) = self.active.last_seen.get_mut(connector) {
            *seen = Instant::now();
        }
        let mut samples = samples;
        for s in &mut samples {
            let st = &mut self.table.states[s.tag];
            // A tag's time never goes backwards: a slow poll's reading may
            // arrive after the tag was stamped stale (or after a newer write
            // confirmation) at a later moment. The start's "no data yet" is
            // not a reading: a source's own older time stamp stands.
            if st.status != Status::NO_DATA {
                monotonic(&mut s.ts, st.ts);
            }
            match (&mut st.value, &s.value) {
                (Some(held), Some(v)) => held.set_from(v),
                (held, Some(v)) => *held = Some(v.clone()),
                (_, None) => {}
            }
            st.status = s.status;
            st.ts = s.ts;
        }
        // On to storage and the outputs in the vector the connector
        // filled, shared: gathering a cycle's polls into one batch would
        // copy 10,000 samples (and double the vector) whenever two polls
        // land in one cycle. Per tag the order stays: the cycle's own
        // samples (stale marks, scripts) go out at its end, before the
        // next event is applied.
        self.hand_over(samples);
    }

    /// Hands samples to the outputs and storage: one allocation shared.
    fn hand_over(&mut self, samples: Vec<Sample>) {
        if samples.is_empty() {
            return;
        }
        let batch: Batch = Arc::new(samples);
        for o in &mut self.outputs {
            o.samples(&batch);
        }
        self.storage.samples(batch);
    }

    fn cycle(&mut self, now: Instant) -> bool {
        if !self.storage.is_alive() {
            log::error!("storage thread died: nothing more can be stored; stopping");
            return false;
        }
        if let Ok(report) = self.storage.reports.try_recv() {
            self.storage_report = report;
        }
        // What the storage channel could not take last cycle goes first.
        self.storage.pump();
        for (o, r) in self.outputs.iter_mut().zip(&mut self.output_reports) {
            o.pump();
            if let Some(new) = o.report() {
                *r = new;
            }
        }
        let ts = Utc::now();
        for (c, tags) in self.active.connector_tags.iter().enumerate() {
            if now.duration_since(self.active.last_seen[c]) <= self.active.stale_after[c] {
                continue;
            }
            for &t in tags.iter() {
                let st = &mut self.table.states[t];
                if st.status.is_good() {
                    st.status = Status::STALE;
                    st.ts = ts;
                    self.batch.push(Sample {
                        tag: t,
                        value: None,
                        status: Status::STALE,
                        ts,
                    });
                }
            }
        }

        let out = self.active.scripts.run_due(&mut self.table, now, ts);
        if out.first_new_tag < self.table.len() {
            // Scripts add calculated tags only: their descriptions need
            // nothing from the (released) parsed tag list.
            let script: Arc<str> = Arc::from("script");
            let policy = self.active.config.storage.archive;
            let infos: Vec<TagInfo> = (out.first_new_tag..self.table.len())
                .map(|i| calculated_info(&self.table, i, &script, policy))
                .collect();
            for o in &mut self.outputs {
                o.tags(out.first_new_tag, &infos);
            }
            self.storage.tags(out.first_new_tag, infos);
        }
        let mut writes: Vec<Vec<(usize, crate::model::Value)>> =
            vec![Vec::new(); self.active.connectors.len()];
        for (tag, value) in out.writes.into_iter().chain(self.api_writes.drain(..)) {
            if let Some((connector, local, _)) = self.table.origins[tag].as_device() {
                writes[connector].push((local, value));
            }
        }
        // Every connector every cycle: hands over what an earlier cycle
        // could not (a busy thread), latest value per tag.
        for (c, w) in writes.into_iter().enumerate() {
            self.active.connectors[c].write(w);
        }
        self.batch.reserve_exact(out.samples.len());
        self.batch.extend(out.samples);
        let batch = std::mem::take(&mut self.batch);
        self.hand_over(batch);
        if now >= self.states_due {
            self.save_script_states();
            self.states_due = now + STATES_EVERY;
        }
        self.cycles += 1;
        self.last_cycle = Utc::now();
        true
    }

    /// Hands the scripts' states to storage when they changed.
    fn save_script_states(&mut self) {
        let states = self.active.scripts.saved_states();
        if states != self.states_saved {
            self.storage.script_states(states.clone());
            self.states_saved = states;
        }
    }

    /// Applies a new configuration; returns false when the server cannot
    /// go on (a thread could not be started).
    fn reload(&mut self) -> bool {
        let path = self.active.config.path.clone();
        log::info!("reload: reading {}", path.display());
        let checked = Config::load(&path).and_then(|c| scripts_for(&c).map(|s| (c, s)));
        let (config, mut scripts) = match checked {
            Ok(pair) => pair,
            Err(e) => {
                log::error!("reload refused, keeping the running configuration: {e}");
                return true;
            }
        };
        if config.storage != self.active.config.storage {
            log::warn!("reload: storage settings change only on restart");
        }
        if config.http != self.active.config.http {
            log::warn!("reload: http settings change only on restart");
        }
        if config.log_file != self.active.config.log_file
            || config.log_level != self.active.config.log_level
        {
            log::warn!("reload: log settings change only on restart");
        }
        if config.outputs != self.active.config.outputs {
            log::warn!("reload: outputs change only on restart");
        }
        // Samples so far refer to the old table's indexes: hand them over first.
        let batch = std::mem::take(&mut self.batch);
        self.hand_over(batch);
        // Old connections close before new ones open: one-client devices.
        // Their last events refer to the old table: applied first.
        for e in self.active.stop(Instant::now() + Duration::from_secs(2)) {
            self.event(e);
        }
        let table = build_table(&config, Some(&self.table));
        let removed: Vec<Arc<str>> = self
            .table
            .names
            .iter()
            .filter(|n| table.find(n).is_none())
            .cloned()
            .collect();
        for o in &mut self.outputs {
            o.removed(&removed);
        }
        self.storage.removed(removed);
        self.table = table;
        self.meta = None;
        self.snapshot = None;
        let infos: Vec<TagInfo> = tag_infos(&config, &self.table).collect();
        for o in &mut self.outputs {
            o.tags(0, &infos);
        }
        self.storage.tags(0, infos);
        let (kept, fresh) = scripts.adopt(&mut self.active.scripts);
        if !scripts.is_empty() {
            log::info!(
                "reload: {kept} scripts keep their state and schedule, {fresh} start fresh (new or changed source)"
            );
        }
        match Generation::start(config, scripts, &self.table, self.scan) {
            Ok(g) => self.active = g,
            Err(e) => {
                log::error!("reload failed: {e}; stopping");
                return false;
            }
        }
        let device: usize = self
            .active
            .config
            .connectors
            .iter()
            .map(|c| c.tag_count())
            .sum();
        let calculated = self
            .table
            .origins
            .iter()
            .filter(|o| **o == Origin::Calculated)
            .count();
        log::info!(
            "reload: now {} connectors, {} scripts, {}",
            self.active.connectors.len(),
            self.active.scripts.len(),
            tag_counts(
                device,
                self.table.len() - device - calculated + diagnostics::Store::ALL.len(),
                calculated
            )
        );
        true
    }

    fn shutdown(mut self) -> RunSummary {
        log::info!("rtds stopping: storing pending values");
        self.save_script_states();
        let batch = std::mem::take(&mut self.batch);
        self.hand_over(batch);
        for e in self.active.stop(Instant::now() + Duration::from_secs(1)) {
            self.event(e);
        }
        // The outputs get a few seconds to deliver or store what they hold.
        let deadline = Instant::now() + Duration::from_secs(5);
        let outputs_lost = std::mem::take(&mut self.outputs)
            .into_iter()
            .map(|o| o.close(deadline))
            .sum();
        let storage = self.storage.close();
        let summary = RunSummary {
            cycles: self.cycles,
            storage,
            outputs_lost,
        };
        log::info!(
            "rtds stopped after {} cycles; stored {} samples, {} archive rows in {} transactions",
            summary.cycles,
            storage.samples,
            storage.archived,
            storage.commits
        );
        if let Some((p50, p99, max)) = percentiles(&mut self.lateness) {
            log::info!(
                "cycle start lateness over {} cycles: p50 {p50:.3} ms, p99 {p99:.3} ms, max {max:.3} ms",
                self.lateness.len()
            );
        }
        summary
    }
}

/// How long the start waits for storage to register the tags.
const REGISTRATION_WAIT: Duration = Duration::from_secs(60);

/// Cycles whose lateness is kept for the shutdown summary (a day at 100 ms).
const MAX_LATENESS_SAMPLES: usize = 864_000;

/// p50, p99 and max of `v` (reordered in place), `None` when empty.
///
/// By selection, not a sort: the stop summarises up to a day of cycles, and
/// a sort's cost grew with the run where selection's stays linear.
fn percentiles(v: &mut [f32]) -> Option<(f32, f32, f32)> {
    if v.is_empty() {
        return None;
    }
    let at = |q: f64| ((v.len() - 1) as f64 * q).round() as usize;
    let (i50, i99) = (at(0.50), at(0.99));
    let (_, &mut p99, above) = v.select_nth_unstable_by(i99, f32::total_cmp);
    let max = above
        .iter()
        .copied()
        .fold(p99, |m, x| if x.total_cmp(&m).is_gt() { x } else { m });
    // Everything before the 99th is no greater than it.
    let (_, &mut p50, _) = v[..=i99].select_nth_unstable_by(i50, f32::total_cmp);
    Some((p50, p99, max))
}

/// The one breakdown of tags that `rtds check`, the start log and
/// `rtds status` all print, so their counts can be compared.
pub fn tag_counts(device: usize, diagnostic: usize, calculated: usize) -> String {
    format!(
        "{} tags: {device} device, {diagnostic} diagnostic, {calculated} calculated",
        device + diagnostic + calculated
    )
}

/// Raises `ts` to `prev` when it is older: time stamps of one tag never go
/// back (written only then: this runs for every sample).
#[inline(always)]
fn monotonic(ts: &mut Timestamp, prev: Timestamp) {
    if *ts < prev {
        *ts = prev;
    }
}

/// Next cycle deadline on the fixed grid; cycles missed (a very long script
/// run) are skipped, not run back to back.
fn next_deadline(prev: Instant, cycle: Duration, now: Instant) -> Instant {
    let mut next = prev + cycle;
    while next <= now {
        next += cycle;
    }
    next
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lateness_percentiles() {
        let mut v: Vec<f32> = (1..=100).rev().map(|x| x as f32).collect();
        assert_eq!(percentiles(&mut v), Some((51.0, 99.0, 100.0)));
        assert_eq!(percentiles(&mut []), None);
        assert_eq!(percentiles(&mut [7.0]), Some((7.0, 7.0, 7.0)));
        // Against the sorted order's ranks, over lengths and repeats.
        let mut rand = crate::testrand::XorShift(0x9e37_79b9_7f4a_7c15);
        for n in 1..300usize {
            let mut v: Vec<f32> = (0..n).map(|_| (rand.next() % 50) as f32 / 4.0).collect();
            let mut sorted = v.clone();
            sorted.sort_by(f32::total_cmp);
            let rank = |q: f64| sorted[((n - 1) as f64 * q).round() as usize];
            assert_eq!(
                percentiles(&mut v),
                Some((rank(0.5), rank(0.99), sorted[n - 1])),
                "{n}"
            );
        }
    }

    #[test]
    fn time_stamps_never_go_back() {
        let t = |ms: i64| chrono::DateTime::from_timestamp_millis(1_800_000_000_000 + ms).unwrap();
        let after = |prev, ts| {
            let mut ts = ts;
            monotonic(&mut ts, prev);
            ts
        };
        assert_eq!(after(t(35_081), t(31_000)), t(35_081));
        assert_eq!(after(t(35_081), t(36_000)), t(36_000));
        assert_eq!(after(t(35_081), t(35_081)), t(35_081));
    }

    #[test]
    fn missed_cycles_are_skipped() {
        let t0 = Instant::now();
        let c = Duration::from_millis(100);
        assert_eq!(
            next_deadline(t0, c, t0 + Duration::from_millis(250)),
            t0 + Duration::from_millis(300)
        );
    }
}
