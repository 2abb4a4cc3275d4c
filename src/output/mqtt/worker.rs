//! The MQTT output's thread. It keeps every tag's latest value, decides
//! what changed (the tag's deadband, as the archive does, without the
//! heartbeat), and delivers it: live while the broker (and a Sparkplug
//! primary host) is there, into the store-and-forward file while not, and
//! from the file, in order and marked historical, before live data resumes.
//!
//! Nothing counts as delivered before the broker confirmed it: a PUBACK for
//! QoS 1; for QoS 0 (Sparkplug's data messages must be QoS 0) a PINGRESP to
//! a PINGREQ sent after them, since the broker handles a connection's
//! packets in order. What was sent but not confirmed when the connection
//! drops goes back into the store and is sent again, so a broker crash can
//! repeat a change (marked historical) but never lose one.

use super::packet::{Connect, Incoming, PINGREQ, Will, puback};
use super::protobuf::{DataType, Metric, MetricValue, Payload};
use super::session::{Session, Woken, wait_wake};
use super::spool::{Change, Spool};
use super::{Mode, MqttSettings, json, sparkplug};
use crate::connector::Backoff;
use crate::diagnostics::Publish;
use crate::model::{Status, Timestamp, Value};
use crate::output::{Message, OutputReport};
use crate::status::Query;
use crate::storage::TagInfo;
use crate::storage::archive::{ArchivePolicy, Row, TagArchive};
use chrono::{TimeZone, Utc};
use crossbeam_channel::{Receiver, Sender, bounded};
use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Metrics in one data message at most (a replay sends many).
const PER_MESSAGE: usize = 500;
/// Stored changes sent per round of a replay, before the loop is heard.
const REPLAY_ROUND: usize = 2_000;
/// How often the health report goes to the loop.
const REPORT_EVERY: Duration = Duration::from_secs(1);

/// A tag as the output knows it.
struct Tag {
    name: Arc<str>,
    source: Arc<str>,
    type_name: &'static str,
    writable: bool,
    /// The device it belongs to (`None`: a node metric).
    device: Option<usize>,
    /// The Sparkplug datatype of the current birth.
    spb: Option<DataType>,
    /// What was last delivered (report by exception, the tag's deadband),
    /// and its latest sample (`rbe.latest`: what a birth carries).
    rbe: TagArchive,
    policy: ArchivePolicy,
    /// `<connector>._connected`: says whether the device is there.
    link_flag: bool,
}

/// A connector, as a Sparkplug device.
struct Device {
    id: String,
    source: Arc<str>,
    /// Its `_connected` flag's last value.
    alive: Option<bool>,
    /// Whether its DBIRTH of this session went out (and no DDEATH since).
    born: bool,
}

/// What happened, in order.
enum Event {
    Change(usize, Option<Value>, Status, i64),
    DeviceUp(usize),
    DeviceDown(usize),
}

/// A sent message not yet confirmed.
struct Inflight {
    /// Live changes it carried (back into the store if the link drops).
    live: Vec<Change>,
    /// The last store row it carried (removed once confirmed).
    stored: Option<i64>,
    /// Values it carried.
    values: u64,
    /// QoS 1: its packet id; QoS 0: the PINGREQ that confirms it.
    pid: Option<u16>,
    barrier: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Not connected.
    Offline,
    /// Connected, waiting for the primary host's STATE online.
    WaitingHost,
    /// Connected, the births due once every device's first poll is in (or
    /// at `birth_by`): a birth before it would say "no value" for all.
    Birth,
    /// Sending what the store holds.
    Replaying,
    /// Live.
    Live,
}

pub struct Worker {
    s: Arc<MqttSettings>,
    tls: Option<Arc<rustls::ClientConfig>>,
    spool: Spool,
    rx: Receiver<Message>,
    stop: Receiver<()>,
    wake: OwnedFd,
    reports: Sender<OutputReport>,
    queries: Sender<Query>,
    tags: Vec<Option<Tag>>,
    by_name: HashMap<Arc<str>, usize>,
    devices: Vec<Device>,
    /// Events to send while live.
    live: VecDeque<Event>,
    /// Changes for the store, written in one transaction per batch.
    to_store: Vec<Change>,
    session: Option<Session>,
    phase: Phase,
    backoff: Backoff,
    retry_at: Instant,
    /// Sparkplug: the bdSeq of the current (or next) connection.
    bd_seq: u8,
    seq: u8,
    rebirth: bool,
    last_state_ts: i64,
    /// The latest the first births wait for the first polls.
    birth_by: Instant,
    /// The last store row sent in this replay.
    replayed: i64,
    inflight: VecDeque<Inflight>,
    pings_sent: u64,
    pings_back: u64,
    ping_out: Option<Instant>,
    report: OutputReport,
    sent: u64,
    lost: u64,
    connects: u64,
    last_report: Instant,
    /// The last error's cause (its message without figures).
    last_cause: Option<String>,
    /// Since when connecting fails, and how often it did.
    outage: Option<(Instant, u32)>,
}

fn ms(ts: &Timestamp) -> i64 {
    ts.timestamp_millis()
}

fn ts_of(ms: i64) -> Timestamp {
    Utc.timestamp_millis_opt(ms)
        .single()
        .unwrap_or_else(Utc::now)
}

impl Worker {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        s: Arc<MqttSettings>,
        tls: Option<Arc<rustls::ClientConfig>>,
        spool: Spool,
        rx: Receiver<Message>,
        stop: Receiver<()>,
        wake: OwnedFd,
        reports: Sender<OutputReport>,
        queries: Sender<Query>,
    ) -> Worker {
        let report = OutputReport::new(&s.name, "mqtt", s.describe());
        Worker {
            backoff: Backoff::new(s.retry_min, s.retry_max),
            s,
            tls,
            spool,
            rx,
            stop,
            wake,
            reports,
            queries,
            tags: Vec::new(),
            by_name: HashMap::new(),
            devices: Vec::new(),
            live: VecDeque::new(),
            to_store: Vec::new(),
            session: None,
            phase: Phase::Offline,
            retry_at: Instant::now(),
            bd_seq: 0,
            seq: 0,
            rebirth: false,
            last_state_ts: i64::MIN,
            birth_by: Instant::now(),
            replayed: 0,
            inflight: VecDeque::new(),
            pings_sent: 0,
            pings_back: 0,
            ping_out: None,
            report,
            sent: 0,
            lost: 0,
            connects: 0,
            last_report: Instant::now(),
            last_cause: None,
            outage: None,
        }
    }

    fn sparkplug(&self) -> bool {
        matches!(self.s.mode, Mode::Sparkplug { .. })
    }

    /// Records an error: logged when it is news (a new cause), at debug
    /// level when the same cause repeats (a broker away: one line, not
    /// one per retry).
    fn error(&mut self, message: String) {
        let cause: String = message.chars().filter(|c| !c.is_ascii_digit()).collect();
        if self.last_cause.as_deref() == Some(cause.as_str()) {
            log::debug!("output {}: {message}", self.s.name);
        } else {
            log::warn!("output {}: {message}", self.s.name);
            self.last_cause = Some(cause);
        }
        self.report.set(Publish::LastError, Value::Str(message));
    }

    /// The thread: returns the changes lost (neither delivered nor stored).
    pub fn run(mut self) -> u64 {
        loop {
            let stopping = self.stop.try_recv().is_ok();
            self.take_messages();
            if stopping {
                break;
            }
            if self.session.is_none() && Instant::now() >= self.retry_at {
                self.connect();
            }
            if self.session.is_some()
                && let Err(e) = self.deliver()
            {
                self.drop_link(&format!("sending: {e}"));
            }
            self.send_report(false);
            self.wait();
        }
        self.finish();
        self.lost
    }

    /// Waits for the broker, the loop, a retry or a report, whichever first.
    fn wait(&mut self) {
        let now = Instant::now();
        let mut until = self.last_report + REPORT_EVERY;
        if self.session.is_none() {
            until = until.min(self.retry_at);
        } else {
            until = until.min(self.keep_alive_due());
        }
        if self.phase == Phase::Birth {
            until = until.min(self.birth_by);
        }
        let timeout = until.saturating_duration_since(now);
        let wake = self.wake.as_raw_fd();
        let woken = match self.session.as_mut() {
            None => wait_wake(wake, timeout).map(|w| if w { Woken::Wake } else { Woken::Timeout }),
            Some(s) => s.wait(wake, timeout),
        };
        match woken {
            Ok(Woken::Packets(packets)) => {
                for p in packets {
                    if let Err(e) = self.incoming(p) {
                        self.drop_link(&e);
                        break;
                    }
                }
            }
            Ok(Woken::Wake) => self.drain_wake(),
            Ok(Woken::Timeout) => {}
            Err(e) => self.drop_link(&format!("receiving: {e}")),
        }
        if let Err(e) = self.keep_alive() {
            self.drop_link(&e);
        }
    }

    fn drain_wake(&self) {
        let mut buf = [0u8; 256];
        // SAFETY: reads into our buffer from the non-blocking pipe we own.
        while unsafe { libc::read(self.wake.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) } > 0 {
        }
    }

    fn keep_alive_due(&self) -> Instant {
        let sent = self
            .session
            .as_ref()
            .map_or_else(Instant::now, |s| s.last_sent);
        let due = sent + self.s.keep_alive;
        match self.ping_out {
            Some(t) => due.min(t + self.s.broker.timeout),
            None => due,
        }
    }

    /// A PINGREQ when nothing was sent for the keep-alive; a PINGREQ not
    /// answered within the timeout means the broker is gone.
    fn keep_alive(&mut self) -> Result<(), String> {
        let Some(s) = self.session.as_mut() else {
            return Ok(());
        };
        if let Some(t) = self.ping_out
            && t.elapsed() > self.s.broker.timeout.max(self.s.keep_alive)
        {
            return Err(format!(
                "no PINGRESP within {:.1} s: the broker is not answering",
                t.elapsed().as_secs_f64()
            ));
        }
        if s.last_sent.elapsed() >= self.s.keep_alive {
            s.send(&PINGREQ).map_err(|e| format!("PINGREQ: {e}"))?;
            self.pings_sent += 1;
            self.ping_out.get_or_insert_with(Instant::now);
        }
        Ok(())
    }

    // ---- what the loop hands over --------------------------------------

    /// Takes what the loop queued so far (not what keeps arriving while
    /// it works: delivering must get its turn, or a thread that falls
    /// behind would never send its births).
    fn take_messages(&mut self) {
        for _ in 0..self.rx.len() {
            let Ok(m) = self.rx.try_recv() else { break };
            match m {
                Message::Tags { first, tags } => self.register(first, tags),
                Message::Samples(batch) => {
                    for s in batch.iter() {
                        self.sample(s.tag, s.value.clone(), s.status, ms(&s.ts));
                    }
                    // One transaction for the batch's changes, not one
                    // per change (50,000 a second at 10,000 tags).
                    let changes = std::mem::take(&mut self.to_store);
                    self.store(changes);
                }
                Message::Removed(names) => {
                    for n in names {
                        if let Some(i) = self.by_name.remove(&n) {
                            self.tags[i] = None;
                        }
                    }
                    self.rebirth = true;
                }
            }
        }
    }

    fn register(&mut self, first: usize, infos: Vec<TagInfo>) {
        let mut changed = false;
        if first == 0 && !self.tags.is_empty() {
            // A whole new table (a reload): what stays keeps its state.
            let same = self.tags.len() == infos.len()
                && self.tags.iter().zip(&infos).all(|(t, i)| {
                    t.as_ref()
                        .is_some_and(|t| t.name == i.name && t.type_name == i.data_type)
                });
            if same {
                return;
            }
            self.tags.clear();
            self.by_name.clear();
        }
        let end = first + infos.len();
        if self.tags.len() < end {
            self.tags.resize_with(end, || None);
        }
        for (k, t) in infos.into_iter().enumerate() {
            let i = first + k;
            if let Some(Some(old)) = self.tags.get(i)
                && old.name == t.name
                && old.type_name == t.data_type
            {
                continue;
            }
            changed = true;
            // Calculated tags are node metrics; a connector's tags and
            // diagnostics belong to its device.
            let device = if &*t.source == "script" || t.source.is_empty() {
                None
            } else {
                Some(
                    match self.devices.iter().position(|d| d.source == t.source) {
                        Some(d) => d,
                        None => {
                            self.devices.push(Device {
                                id: sparkplug::device_id(&t.source),
                                source: t.source.clone(),
                                alive: None,
                                born: false,
                            });
                            self.devices.len() - 1
                        }
                    },
                )
            };
            let link_flag = &*t.address == "diagnostic" && t.name.ends_with("._connected");
            self.by_name.insert(t.name.clone(), i);
            self.tags[i] = Some(Tag {
                name: t.name,
                source: t.source,
                type_name: t.data_type,
                writable: t.writable,
                device,
                spb: None,
                rbe: TagArchive::new(None),
                policy: ArchivePolicy {
                    heartbeat: None,
                    keep_prev: false,
                    ..t.policy
                },
                link_flag,
            });
        }
        // New metrics need a new birth (5.11).
        self.rebirth |= changed;
    }

    fn sample(&mut self, i: usize, value: Option<Value>, status: Status, ts: i64) {
        let Some(Some(tag)) = self.tags.get_mut(i) else {
            return;
        };
        let value = value.or_else(|| tag.rbe.latest.as_ref().and_then(|l| l.value.clone()));
        let rows = tag
            .rbe
            .on_sample(&tag.policy, value.as_ref(), status, ts_of(ts));
        if tag.link_flag
            && let Some(d) = tag.device
        {
            let up = status.is_good() && value == Some(Value::Bool(true));
            let dev = &mut self.devices[d];
            if dev.alive != Some(up) {
                dev.alive = Some(up);
                let e = if up {
                    Event::DeviceUp(d)
                } else {
                    Event::DeviceDown(d)
                };
                self.event(e);
            }
        }
        for r in rows {
            self.event(Event::Change(i, r.value, r.status, ms(&r.ts)));
        }
    }

    fn event(&mut self, e: Event) {
        if self.phase == Phase::Live
            || (self.phase == Phase::Replaying && !matches!(e, Event::Change(..)))
        {
            self.live.push_back(e);
            return;
        }
        // Not delivering: changes go to the store; a device's coming and
        // going is told by the births when the broker is back.
        if let Event::Change(i, value, status, ts_ms) = e {
            let Some(Some(t)) = self.tags.get(i) else {
                return;
            };
            self.to_store.push(Change {
                tag: t.name.clone(),
                value,
                status,
                ts_ms,
            });
        }
    }

    fn store(&mut self, changes: Vec<Change>) {
        if changes.is_empty() {
            return;
        }
        let n = changes.len() as u64;
        if let Err(e) = self.spool.push(&changes) {
            self.lost += n;
            self.error(format!("store-and-forward file: {e}; {n} changes lost"));
        }
    }

    // ---- the connection -------------------------------------------------

    fn will(&self) -> Will {
        match &self.s.mode {
            Mode::Sparkplug { group, node, .. } => Will {
                topic: sparkplug::topic(group, "NDEATH", node, None),
                payload: self.ndeath().encode(),
                qos: 1,
                retain: false,
            },
            Mode::Json { prefix, .. } => Will {
                topic: json::status_topic(prefix),
                payload: json::online(false, &Utc::now()),
                qos: 1,
                retain: true,
            },
        }
    }

    fn ndeath(&self) -> Payload {
        Payload {
            timestamp: Some(Utc::now().timestamp_millis() as u64),
            metrics: vec![Metric {
                name: Some("bdSeq".into()),
                datatype: Some(DataType::Int64),
                value: Some(MetricValue::Long(u64::from(self.bd_seq))),
                ..Metric::default()
            }],
            seq: None,
        }
    }

    fn connect(&mut self) {
        let connect = Connect {
            client_id: self.s.client_id.clone(),
            clean_session: true,
            keep_alive: self.s.keep_alive.as_secs().min(65_535) as u16,
            will: Some(self.will()),
            username: self.s.username.clone(),
            password: self.s.password.clone(),
        };
        let started = Instant::now();
        match Session::connect(&self.s.broker, self.tls.as_ref(), &connect) {
            Ok(session) => {
                self.session = Some(session);
                self.connects += 1;
                self.backoff.reset();
                self.ping_out = None;
                self.last_cause = None;
                match self.outage.take() {
                    Some((since, failed)) => log::info!(
                        "output {}: connected to {} again after {failed} failed attempts over {:.1} s (connection {})",
                        self.s.name,
                        self.s.url,
                        since.elapsed().as_secs_f64(),
                        self.connects
                    ),
                    None => log::info!(
                        "output {}: connected to {} (connection {})",
                        self.s.name,
                        self.s.url,
                        self.connects
                    ),
                }
                if let Err(e) = self.start_session() {
                    self.drop_link(&e);
                }
            }
            Err(e) => {
                let wait = self.backoff.fail();
                self.retry_at = started + wait;
                self.outage.get_or_insert((started, 0)).1 += 1;
                self.error(format!(
                    "cannot connect to {}: {e}; retrying in {:.1} s",
                    self.s.url,
                    wait.as_secs_f64()
                ));
            }
        }
    }

    /// After CONNACK: subscriptions, then births (or waiting for the
    /// primary host).
    fn start_session(&mut self) -> Result<(), String> {
        let Some(s) = self.session.as_mut() else {
            return Ok(());
        };
        match &self.s.mode {
            Mode::Sparkplug {
                group,
                node,
                primary_host,
                ..
            } => {
                let mut topics = vec![
                    (sparkplug::topic(group, "NCMD", node, None), 1),
                    (sparkplug::topic(group, "DCMD", node, Some("+")), 1),
                ];
                if let Some(h) = primary_host {
                    topics.push((format!("{}/STATE/{h}", sparkplug::NAMESPACE), 1));
                }
                s.subscribe(&topics)
                    .map_err(|e| format!("SUBSCRIBE: {e}"))?;
                if primary_host.is_some() {
                    self.phase = Phase::WaitingHost;
                    return Ok(());
                }
                self.await_births();
                return Ok(());
            }
            Mode::Json { prefix, .. } => {
                let topic = json::status_topic(prefix);
                s.publish(&topic, json::online(true, &Utc::now()), 1, true)
                    .map_err(|e| format!("status: {e}"))?;
            }
        }
        self.begin_replay();
        Ok(())
    }

    /// Births once the devices' first polls are in, 2 s at most.
    fn await_births(&mut self) {
        self.phase = Phase::Birth;
        self.birth_by = Instant::now() + Duration::from_secs(2);
    }

    fn begin_replay(&mut self) {
        self.replayed = 0;
        self.phase = if self.spool.is_empty() {
            Phase::Live
        } else {
            log::info!(
                "output {}: sending {} stored changes first",
                self.s.name,
                self.spool.len()
            );
            Phase::Replaying
        };
    }

    /// The link failed: what was not confirmed goes back into the store,
    /// and a reconnect is scheduled.
    fn drop_link(&mut self, why: &str) {
        if let Some(s) = self.session.take() {
            s.disconnect();
        }
        self.store_unsent();
        for d in &mut self.devices {
            d.born = false;
        }
        self.phase = Phase::Offline;
        self.ping_out = None;
        // Pings of the dead connection will never be answered.
        self.pings_back = self.pings_sent;
        if self.sparkplug() {
            // The next CONNECT carries the next bdSeq (4.2.1.1.2).
            self.bd_seq = self.bd_seq.wrapping_add(1);
        }
        let wait = self.backoff.fail();
        self.retry_at = Instant::now() + wait;
        self.error(format!(
            "connection to {} lost: {why}; reconnecting in {:.1} s",
            self.s.url,
            wait.as_secs_f64()
        ));
    }

    /// What was sent but not confirmed, then what was still waiting to
    /// go: into the store, in that order, to be sent again.
    fn store_unsent(&mut self) {
        let mut back: Vec<Change> = Vec::new();
        for f in self.inflight.drain(..) {
            back.extend(f.live);
        }
        let events: Vec<Event> = self.live.drain(..).collect();
        for e in events {
            if let Event::Change(i, value, status, ts_ms) = e
                && let Some(Some(t)) = self.tags.get(i)
            {
                back.push(Change {
                    tag: t.name.clone(),
                    value,
                    status,
                    ts_ms,
                });
            }
        }
        self.store(back);
    }

    fn next_seq(&mut self) -> u64 {
        let s = self.seq;
        self.seq = self.seq.wrapping_add(1);
        u64::from(s)
    }

    fn publish(
        &mut self,
        topic: &str,
        payload: Vec<u8>,
        qos: u8,
        retain: bool,
    ) -> Result<u16, String> {
        let s = self.session.as_mut().ok_or("not connected")?;
        s.publish(topic, payload, qos, retain)
            .map_err(|e| format!("PUBLISH {topic}: {e}"))
    }

    /// NBIRTH and every DBIRTH (Sparkplug 5.4, 5.6): every metric with its
    /// name, alias, datatype, current value and time stamp.
    fn births(&mut self, why: &str) -> Result<(), String> {
        let Mode::Sparkplug { group, node, .. } = self.s.mode.clone() else {
            return Ok(());
        };
        log::info!("output {}: births ({why})", self.s.name);
        self.rebirth = false;
        self.seq = 0;
        let now = Utc::now().timestamp_millis() as u64;
        for t in self.tags.iter_mut().flatten() {
            t.spb = Some(sparkplug::datatype(
                t.type_name,
                t.rbe.latest.as_ref().and_then(|l| l.value.as_ref()),
            ));
        }
        let mut metrics = vec![
            Metric {
                name: Some("bdSeq".into()),
                timestamp: Some(now),
                datatype: Some(DataType::Int64),
                value: Some(MetricValue::Long(u64::from(self.bd_seq))),
                ..Metric::default()
            },
            Metric {
                name: Some(sparkplug::REBIRTH.into()),
                timestamp: Some(now),
                datatype: Some(DataType::Boolean),
                value: Some(MetricValue::Bool(false)),
                ..Metric::default()
            },
        ];
        metrics.extend(self.birth_metrics(None, now));
        let seq = self.next_seq();
        let payload = Payload {
            timestamp: Some(now),
            metrics,
            seq: Some(seq),
        };
        self.publish(
            &sparkplug::topic(&group, "NBIRTH", &node, None),
            payload.encode(),
            0,
            false,
        )?;
        for d in 0..self.devices.len() {
            if self.devices[d].alive == Some(false) {
                self.devices[d].born = false;
                continue;
            }
            self.dbirth(d, now)?;
        }
        // What was decided before the birth is in it.
        self.live
            .retain(|e| !matches!(e, Event::DeviceUp(_) | Event::DeviceDown(_)));
        Ok(())
    }

    fn dbirth(&mut self, d: usize, now: u64) -> Result<(), String> {
        let Mode::Sparkplug { group, node, .. } = self.s.mode.clone() else {
            return Ok(());
        };
        let metrics = self.birth_metrics(Some(d), now);
        let seq = self.next_seq();
        let payload = Payload {
            timestamp: Some(now),
            metrics,
            seq: Some(seq),
        };
        let topic = sparkplug::topic(&group, "DBIRTH", &node, Some(&self.devices[d].id));
        self.publish(&topic, payload.encode(), 0, false)?;
        self.devices[d].born = true;
        Ok(())
    }

    fn birth_metrics(&self, device: Option<usize>, now: u64) -> Vec<Metric> {
        self.tags
            .iter()
            .enumerate()
            .filter_map(|(i, t)| Some((i, t.as_ref()?)))
            .filter(|(_, t)| t.device == device)
            .map(|(i, t)| {
                let (value, status, ts) = match &t.rbe.latest {
                    Some(r) => (r.value.as_ref(), r.status, ms(&r.ts) as u64),
                    None => (None, Status::NO_DATA, now),
                };
                sparkplug::metric(
                    Some(&t.name),
                    i as u64 + 1,
                    t.spb.unwrap_or(DataType::String),
                    true,
                    value,
                    status,
                    ts,
                    false,
                )
            })
            .collect()
    }

    // ---- delivering ------------------------------------------------------

    fn deliver(&mut self) -> Result<(), String> {
        match self.phase {
            Phase::Offline | Phase::WaitingHost => return Ok(()),
            Phase::Birth => {
                // The loop registers its tags once the thread runs: none
                // yet is not "every device polled".
                let polled =
                    !self.tags.is_empty() && self.devices.iter().all(|d| d.alive.is_some());
                if !polled && Instant::now() < self.birth_by {
                    return Ok(());
                }
                self.births(if polled {
                    "connected"
                } else {
                    "connected; some devices not polled yet"
                })?;
                self.begin_replay();
            }
            Phase::Replaying | Phase::Live => {}
        }
        if self.rebirth && self.sparkplug() {
            self.births("new or removed metrics")?;
        }
        let mut sent_any = false;
        if self.phase == Phase::Replaying {
            sent_any |= self.replay()?;
        }
        if self.phase == Phase::Live {
            sent_any |= self.send_live()?;
        }
        if sent_any {
            // The barrier that confirms this round's QoS 0 messages.
            let s = self.session.as_mut().ok_or("not connected")?;
            s.send(&PINGREQ).map_err(|e| format!("PINGREQ: {e}"))?;
            self.pings_sent += 1;
            self.ping_out.get_or_insert_with(Instant::now);
        }
        Ok(())
    }

    /// One round of the store's changes; true when something went out.
    fn replay(&mut self) -> Result<bool, String> {
        let rows = self
            .spool
            .peek(self.replayed, REPLAY_ROUND)
            .map_err(|e| format!("store-and-forward file: {e}"))?;
        if rows.is_empty() {
            // Everything sent; live once it is all confirmed.
            if self.inflight.iter().all(|f| f.stored.is_none()) {
                log::info!("output {}: stored changes sent; live again", self.s.name);
                self.phase = Phase::Live;
            }
            return Ok(false);
        }
        let last = rows.last().map_or(0, |r| r.0);
        let mut changes: Vec<(usize, Option<Value>, Status, i64)> = Vec::with_capacity(rows.len());
        for (_, c) in rows {
            // A tag no longer configured: nothing to tell.
            if let Some(&i) = self.by_name.get(&c.tag) {
                changes.push((i, c.value, c.status, c.ts_ms));
            }
        }
        self.send_changes(&changes, true, Some(last), Vec::new())?;
        self.replayed = last;
        Ok(true)
    }

    fn send_live(&mut self) -> Result<bool, String> {
        if self.live.is_empty() {
            return Ok(false);
        }
        // In rounds of one message's worth, so that what a round builds
        // (metrics, payloads, the changes kept until confirmed) stays small
        // however many tags changed at once.
        let mut batch: Vec<(usize, Option<Value>, Status, i64)> = Vec::with_capacity(PER_MESSAGE);
        while let Some(e) = self.live.pop_front() {
            match e {
                Event::Change(i, v, st, ts) => {
                    batch.push((i, v, st, ts));
                    if batch.len() == PER_MESSAGE {
                        let live = self.live_changes(&batch);
                        self.send_changes(&batch, false, None, live)?;
                        batch.clear();
                    }
                }
                Event::DeviceUp(d) if self.devices[d].born => {}
                Event::DeviceDown(d) if !self.devices[d].born => {}
                Event::DeviceUp(d) | Event::DeviceDown(d) => {
                    // What came before it goes first.
                    let live = self.live_changes(&batch);
                    self.send_changes(&batch, false, None, live)?;
                    batch.clear();
                    if self.sparkplug() {
                        if matches!(e, Event::DeviceUp(_)) {
                            self.dbirth(d, Utc::now().timestamp_millis() as u64)?;
                        } else {
                            self.ddeath(d)?;
                        }
                    }
                }
            }
        }
        let live = self.live_changes(&batch);
        self.send_changes(&batch, false, None, live)?;
        // A burst's queue is not kept at its peak size.
        if self.live.capacity() > 4 * PER_MESSAGE {
            self.live.shrink_to(PER_MESSAGE);
        }
        Ok(true)
    }

    fn live_changes(&self, batch: &[(usize, Option<Value>, Status, i64)]) -> Vec<Change> {
        batch
            .iter()
            .filter_map(|(i, v, st, ts)| {
                let t = self.tags.get(*i)?.as_ref()?;
                Some(Change {
                    tag: t.name.clone(),
                    value: v.clone(),
                    status: *st,
                    ts_ms: *ts,
                })
            })
            .collect()
    }

    fn ddeath(&mut self, d: usize) -> Result<(), String> {
        let Mode::Sparkplug { group, node, .. } = self.s.mode.clone() else {
            return Ok(());
        };
        if !self.devices[d].born {
            return Ok(());
        }
        let seq = self.next_seq();
        let payload = Payload {
            timestamp: Some(Utc::now().timestamp_millis() as u64),
            metrics: Vec::new(),
            seq: Some(seq),
        };
        let topic = sparkplug::topic(&group, "DDEATH", &node, Some(&self.devices[d].id));
        self.publish(&topic, payload.encode(), 0, false)?;
        self.devices[d].born = false;
        Ok(())
    }

    /// Sends changes: Sparkplug groups them per device into NDATA/DDATA
    /// messages, JSON sends one message per change. `live` are the same
    /// changes by name, to store again should the link drop first;
    /// `stored` the last store row among them.
    fn send_changes(
        &mut self,
        changes: &[(usize, Option<Value>, Status, i64)],
        historical: bool,
        stored: Option<i64>,
        live: Vec<Change>,
    ) -> Result<(), String> {
        if changes.is_empty() {
            if let Some(id) = stored {
                // Nothing to tell for these rows (removed tags): confirmed.
                self.track(Vec::new(), Some(id), 0, None);
            }
            return Ok(());
        }
        match self.s.mode.clone() {
            Mode::Sparkplug { group, node, .. } => {
                // A value whose type changed (a scaled tag's first float):
                // a rebirth first, with the new type.
                let retype = changes.iter().any(|(i, v, st, _)| {
                    st.is_good()
                        && self.tags[*i].as_ref().is_some_and(|t| {
                            v.as_ref().is_some_and(|v| {
                                sparkplug::to_metric_value(t.spb.unwrap_or(DataType::String), v)
                                    .is_none()
                            })
                        })
                });
                if retype {
                    for (i, v, _, ts) in changes {
                        if let Some(Some(t)) = self.tags.get_mut(*i)
                            && v.is_some()
                        {
                            t.rbe.latest = Some(Row {
                                value: v.clone(),
                                status: Status::GOOD,
                                ts: ts_of(*ts),
                            });
                        }
                    }
                    self.births("a metric's type changed")?;
                }
                let mut by_device: Vec<(Option<usize>, Vec<Metric>)> = Vec::new();
                for (i, v, st, ts) in changes {
                    let Some(t) = self.tags[*i].as_ref() else {
                        continue;
                    };
                    // Nothing for a device that is not born (it is dead:
                    // its DDEATH said so).
                    if let Some(d) = t.device
                        && !self.devices[d].born
                    {
                        continue;
                    }
                    let m = sparkplug::metric(
                        None,
                        *i as u64 + 1,
                        t.spb.unwrap_or(DataType::String),
                        false,
                        v.as_ref(),
                        *st,
                        *ts as u64,
                        historical,
                    );
                    match by_device.iter_mut().find(|(d, _)| *d == t.device) {
                        Some((_, ms)) => ms.push(m),
                        None => by_device.push((t.device, vec![m])),
                    }
                }
                let mut live = Some(live);
                let n = by_device.len();
                if n == 0 {
                    self.track(live.take().unwrap_or_default(), stored, 0, None);
                }
                for (k, (device, metrics)) in by_device.into_iter().enumerate() {
                    for chunk in metrics.chunks(PER_MESSAGE) {
                        let seq = self.next_seq();
                        let payload = Payload {
                            timestamp: Some(Utc::now().timestamp_millis() as u64),
                            metrics: chunk.to_vec(),
                            seq: Some(seq),
                        };
                        let (kind, dev) = match device {
                            Some(d) => ("DDATA", Some(self.devices[d].id.clone())),
                            None => ("NDATA", None),
                        };
                        let topic = sparkplug::topic(&group, kind, &node, dev.as_deref());
                        self.publish(&topic, payload.encode(), 0, false)?;
                        // The whole round's changes ride on its last message.
                        let last = k + 1 == n;
                        self.track(
                            if last {
                                live.take().unwrap_or_default()
                            } else {
                                Vec::new()
                            },
                            if last { stored } else { None },
                            chunk.len() as u64,
                            None,
                        );
                    }
                }
            }
            Mode::Json {
                prefix,
                qos,
                retain,
            } => {
                let n = changes.len();
                let mut live = live.into_iter();
                for (k, (i, v, st, ts)) in changes.iter().enumerate() {
                    let Some(t) = self.tags[*i].as_ref() else {
                        continue;
                    };
                    let topic = json::topic(&prefix, &t.source, &t.name);
                    let payload = json::payload(t.type_name, v.as_ref(), *st, &ts_of(*ts));
                    let pid = self.publish(&topic, payload, qos, retain)?;
                    let last = k + 1 == n;
                    self.track(
                        live.next().into_iter().collect(),
                        if last { stored } else { None },
                        1,
                        (qos > 0).then_some(pid),
                    );
                }
            }
        }
        Ok(())
    }

    fn track(&mut self, live: Vec<Change>, stored: Option<i64>, values: u64, pid: Option<u16>) {
        self.inflight.push_back(Inflight {
            live,
            stored,
            values,
            pid,
            // Confirmed by the PINGREQ sent after this round.
            barrier: self.pings_sent + 1,
        });
    }

    /// Messages the broker confirmed: counted, their store rows removed.
    fn confirm(&mut self, f: Inflight) {
        self.sent += f.values;
        if let Some(id) = f.stored
            && let Err(e) = self.spool.confirm(id)
        {
            self.error(format!("store-and-forward file: {e}"));
        }
    }

    // ---- what the broker sends -------------------------------------------

    fn incoming(&mut self, p: Incoming) -> Result<(), String> {
        match p {
            Incoming::PingResp => {
                self.pings_back += 1;
                self.ping_out = None;
                while self
                    .inflight
                    .front()
                    .is_some_and(|f| f.pid.is_none() && f.barrier <= self.pings_back)
                {
                    let f = self.inflight.pop_front().expect("checked");
                    self.confirm(f);
                }
            }
            Incoming::PubAck(pid) => {
                // Brokers acknowledge in order (MQTT 4.6): the oldest is
                // almost always the one, and a search of thousands in
                // flight per PUBACK would cost more than the publish.
                let k = if self.inflight.front().is_some_and(|f| f.pid == Some(pid)) {
                    Some(0)
                } else {
                    self.inflight.iter().position(|f| f.pid == Some(pid))
                };
                if let Some(k) = k {
                    let f = self.inflight.remove(k).expect("found");
                    self.confirm(f);
                }
            }
            Incoming::SubAck(_, codes) => {
                if codes.contains(&0x80) {
                    self.error(
                        "the broker refused a subscription (NCMD, DCMD or STATE): commands and the primary host will not be heard".into(),
                    );
                }
            }
            Incoming::ConnAck { .. } => return Err("a second CONNACK".into()),
            Incoming::Publish(p) => {
                if p.qos == 1
                    && let Some(s) = self.session.as_mut()
                {
                    s.send(&puback(p.pid)).map_err(|e| format!("PUBACK: {e}"))?;
                }
                self.command(&p.topic, &p.payload)?;
            }
        }
        Ok(())
    }

    /// NCMD, DCMD and the primary host's STATE.
    fn command(&mut self, topic: &str, payload: &[u8]) -> Result<(), String> {
        let Mode::Sparkplug {
            group,
            node,
            primary_host,
            commands,
        } = self.s.mode.clone()
        else {
            return Ok(());
        };
        if let Some(h) = &primary_host
            && topic == format!("{}/STATE/{h}", sparkplug::NAMESPACE)
        {
            return self.state(payload);
        }
        let ncmd = sparkplug::topic(&group, "NCMD", &node, None);
        let dcmd = sparkplug::topic(&group, "DCMD", &node, None) + "/";
        let device = if topic == ncmd {
            None
        } else if let Some(d) = topic.strip_prefix(&dcmd) {
            match self.devices.iter().position(|x| x.id == d) {
                Some(i) => Some(i),
                None => {
                    self.error(format!("DCMD for unknown device `{d}` ignored"));
                    return Ok(());
                }
            }
        } else {
            return Ok(());
        };
        let p = match Payload::decode(payload) {
            Ok(p) => p,
            Err(e) => {
                self.error(format!("{topic}: unreadable payload ({e}); ignored"));
                return Ok(());
            }
        };
        for m in p.metrics {
            if device.is_none() && m.name.as_deref() == Some(sparkplug::REBIRTH) {
                if m.value == Some(MetricValue::Bool(true)) {
                    log::info!("output {}: rebirth requested by NCMD", self.s.name);
                    if self.phase != Phase::WaitingHost {
                        self.births("requested by NCMD")?;
                    }
                }
                continue;
            }
            let i = match (m.alias, &m.name) {
                (Some(a), _)
                    if a >= 1 && self.tags.get(a as usize - 1).is_some_and(Option::is_some) =>
                {
                    a as usize - 1
                }
                (_, Some(n)) if self.by_name.contains_key(n.as_str()) => self.by_name[n.as_str()],
                _ => {
                    self.error(format!(
                        "{topic}: no metric {} {}; ignored",
                        m.name.as_deref().unwrap_or(""),
                        m.alias.map(|a| format!("alias {a}")).unwrap_or_default()
                    ));
                    continue;
                }
            };
            self.write(topic, device, i, &m, commands);
        }
        Ok(())
    }

    /// A DCMD's write, through the loop with a script's checks.
    fn write(&mut self, topic: &str, device: Option<usize>, i: usize, m: &Metric, commands: bool) {
        let Some(t) = self.tags[i].as_ref() else {
            return;
        };
        let name = t.name.to_string();
        let refuse = |w: &mut Worker, why: String| {
            w.error(format!("{topic}: write to {name} refused: {why}"));
        };
        if !commands {
            return refuse(
                self,
                "commands are off (`commands: true` in the output)".into(),
            );
        }
        if t.device != device || !t.writable {
            return refuse(self, "the tag is not writable on this device".into());
        }
        let spb = t.spb.unwrap_or(DataType::String);
        let value = match (&m.value, m.is_null) {
            (Some(v), false) => match sparkplug::from_metric_value(spb, v) {
                Ok(v) => v,
                Err(e) => return refuse(self, e),
            },
            _ => return refuse(self, "a null value".into()),
        };
        let (tx, rx) = bounded(1);
        let asked = self.queries.send_timeout(
            Query::Write {
                tag: name.clone(),
                value: value.clone(),
                by: format!("mqtt {} DCMD", self.s.name),
                reply: tx,
            },
            Duration::from_secs(2),
        );
        match asked
            .ok()
            .and_then(|()| rx.recv_timeout(Duration::from_secs(5)).ok())
        {
            Some(Ok(())) => log::info!("output {}: DCMD writes {value} to {name}", self.s.name),
            Some(Err(e)) => refuse(self, e),
            None => refuse(self, "the loop did not answer".into()),
        }
    }

    /// The primary host's STATE (3.0: `{"online": bool, "timestamp": ms}`).
    fn state(&mut self, payload: &[u8]) -> Result<(), String> {
        let text = String::from_utf8_lossy(payload);
        let online = text.split("\"online\"").nth(1).map(|r| {
            r.trim_start()
                .trim_start_matches(':')
                .trim_start()
                .starts_with("true")
        });
        let ts: i64 = text
            .split("\"timestamp\"")
            .nth(1)
            .and_then(|r| {
                let r = r.trim_start().trim_start_matches(':').trim_start();
                let end = r.find(|c: char| !c.is_ascii_digit()).unwrap_or(r.len());
                r[..end].parse().ok()
            })
            .unwrap_or(0);
        let Some(online) = online else {
            self.error(format!(
                "STATE `{text}` is not Sparkplug 3.0's JSON; ignored"
            ));
            return Ok(());
        };
        // An older STATE than the last one seen is a stale Will (5.4).
        if ts < self.last_state_ts {
            return Ok(());
        }
        self.last_state_ts = ts;
        match (online, self.phase) {
            (true, Phase::WaitingHost) => {
                log::info!("output {}: primary host online", self.s.name);
                self.await_births();
            }
            (false, Phase::Live | Phase::Replaying | Phase::Birth) => {
                log::warn!(
                    "output {}: primary host offline: NDEATH and reconnect, storing meanwhile",
                    self.s.name
                );
                let topic = match &self.s.mode {
                    Mode::Sparkplug { group, node, .. } => {
                        sparkplug::topic(group, "NDEATH", node, None)
                    }
                    Mode::Json { .. } => return Ok(()),
                };
                let payload = self.ndeath().encode();
                let _ = self.publish(&topic, payload, 1, false);
                return Err("the primary host went offline".into());
            }
            _ => {}
        }
        Ok(())
    }

    // ---- reports and the end -----------------------------------------------

    fn send_report(&mut self, force: bool) {
        if !force && self.last_report.elapsed() < REPORT_EVERY {
            return;
        }
        self.last_report = Instant::now();
        let queued = self.spool.len()
            + self.live.len() as u64
            + self
                .inflight
                .iter()
                .map(|f| f.live.len() as u64)
                .sum::<u64>();
        self.report.set(
            Publish::Connected,
            Value::Bool(self.phase == Phase::Live || self.phase == Phase::Replaying),
        );
        self.report.set(Publish::Queued, Value::Int(queued as i64));
        self.report.set(Publish::Sent, Value::Int(self.sent as i64));
        self.report.set(
            Publish::Dropped,
            Value::Int((self.spool.dropped + self.lost) as i64),
        );
        self.report
            .set(Publish::Reconnects, Value::Int(self.connects as i64));
        // The loop takes the newest; an untaken older one is replaced.
        let _ = self.reports.try_send(self.report.clone());
    }

    /// At stop: what is live goes out if connected (then NDEATH and
    /// DISCONNECT, 5.5), the rest into the store.
    fn finish(&mut self) {
        if self.session.is_some() && self.phase == Phase::Live {
            if let Err(e) = self.deliver() {
                self.drop_link(&format!("sending: {e}"));
            }
            // Wait (briefly) for the confirmations.
            let deadline = Instant::now() + self.s.broker.timeout.min(Duration::from_secs(3));
            while !self.inflight.is_empty() && self.session.is_some() && Instant::now() < deadline {
                let wake = self.wake.as_raw_fd();
                let left = deadline.saturating_duration_since(Instant::now());
                match self.session.as_mut().map(|s| s.wait(wake, left)) {
                    Some(Ok(Woken::Packets(ps))) => {
                        for p in ps {
                            let _ = self.incoming(p);
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => break,
                }
            }
        }
        if self.session.is_some() {
            if let Mode::Sparkplug { group, node, .. } = &self.s.mode {
                let topic = sparkplug::topic(group, "NDEATH", node, None);
                let payload = self.ndeath().encode();
                let _ = self.publish(&topic, payload, 1, false);
            } else if let Mode::Json { prefix, .. } = &self.s.mode {
                let topic = json::status_topic(prefix);
                let _ = self.publish(&topic, json::online(false, &Utc::now()), 1, true);
            }
        }
        self.store_unsent();
        if let Some(s) = self.session.take() {
            s.disconnect();
        }
        self.phase = Phase::Offline;
        self.send_report(true);
        log::info!(
            "output {}: stopped; {} values delivered, {} changes kept for the next run",
            self.s.name,
            self.sent,
            self.spool.len()
        );
    }
}
