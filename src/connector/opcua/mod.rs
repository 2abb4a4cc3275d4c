//! `connector=OpcUa`: an OPC UA client through the `open62541` crate
//! (bindings to the C library open62541, MPL-2.0). Its `AsyncClient` runs
//! the C event loop on a thread of its own; this connector drives each call
//! to completion with a minimal blocking executor (`pollster`), so RTDS
//! stays without an async runtime.
//!
//! `mode=poll` reads every node with one Read call per scan (more when the
//! server's MaxNodesPerRead says so). `mode=subscribe` creates one
//! subscription whose notifications the C thread queues on a channel; each
//! scan takes what has arrived, so changes reach the central loop through
//! the same `Event::Samples` as every connector's. A monitored
//! `Server_ServerStatus_CurrentTime` is the subscription's heartbeat: when
//! it falls silent the server (or the session) is gone, and the runner's
//! reconnect creates the subscription again.

mod browse;
pub mod pki;
mod settings;

pub use browse::{Child, browse, render};
pub use settings::{KEYS, Mode, OpcUaConfig, SecurityMode, Stamp, UaTag, UaType};

use super::{Connector, ConnectorError};
use crate::model::{Sample, Status, Timestamp, Value};
use crossbeam_channel::{Receiver, Sender, bounded};
use open62541::{
    AsyncClient, AsyncSubscription, ClientBuilder, DataType, DataValue,
    MonitoredItemCreateRequestBuilder, MonitoredItemHandle, SubscriptionBuilder, ua,
};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// `connector=OpcUa`.
pub const CLASS: super::Class = super::Class {
    name: "OpcUa",
    setup: |s| {
        let extras = s.extras.finish("OpcUa", &[]);
        match OpcUaConfig::new(s.params, s.tags, s.base) {
            Ok(c) if extras.is_empty() => Ok(std::sync::Arc::new(c)),
            Ok(_) => Err(extras),
            Err(mut e) => {
                e.extend(extras);
                Err(e)
            }
        }
    },
};

impl super::SourceConfig for OpcUaConfig {
    fn build(self: std::sync::Arc<Self>) -> Box<dyn Connector> {
        Box::new(OpcUa::new(self))
    }

    fn describe(&self) -> String {
        let mode = match self.mode {
            Mode::Poll => "poll".to_string(),
            Mode::Subscribe {
                sampling, publish, ..
            } => format!(
                "subscribe (sampling {} ms, publish {} ms)",
                sampling.as_millis(),
                publish.as_millis()
            ),
        };
        let security = match self.security.mode {
            SecurityMode::None => "security None".to_string(),
            m => format!("security {m:?} {}", self.security.policy),
        };
        let user = self
            .user
            .as_ref()
            .map_or(String::new(), |(u, _)| format!(", user {u}"));
        format!(
            "OpcUa {}, {mode}, {security}{user}, timeout {:.1} s",
            self.endpoint,
            self.timeout.as_secs_f64()
        )
    }

    fn describe_scan(&self) -> Vec<String> {
        match self.mode {
            Mode::Poll if self.max_nodes_per_read > 0 => vec![format!(
                "{} Read calls for {} nodes per scan (max_nodes_per_read {})",
                self.tags.len().div_ceil(self.max_nodes_per_read as usize),
                self.tags.len(),
                self.max_nodes_per_read
            )],
            Mode::Poll => vec![format!(
                "1 Read call for {} nodes per scan (more if the server's MaxNodesPerRead is lower)",
                self.tags.len()
            )],
            Mode::Subscribe {
                queue_size,
                deadband,
                ..
            } => vec![format!(
                "1 subscription, {} monitored items (queue {queue_size}, deadband {deadband}) plus the server clock as heartbeat; no requests per scan",
                self.tags.len()
            )],
        }
    }

    fn is_writable(&self, tag: usize) -> bool {
        self.tags.get(tag).is_some_and(|t| t.writable)
    }

    fn check_write(&self, tag: usize, value: &Value) -> Result<(), String> {
        OpcUaConfig::check_write(self, tag, value)
    }

    fn tag_name(&self, tag: usize) -> &str {
        self.tags.get(tag).map_or("", |t| &t.name)
    }

    fn tag_count(&self) -> usize {
        self.tags.len()
    }

    fn type_name(&self, tag: usize) -> &'static str {
        match self.tags.get(tag) {
            Some(UaTag {
                data_type: Some(t),
                array,
                ..
            }) => {
                if *array {
                    t.array_name()
                } else {
                    t.name()
                }
            }
            _ => "",
        }
    }

    fn retry(&self) -> (Duration, Duration) {
        (self.retry_min, self.retry_max)
    }

    /// The connect (channel, session, subscription) plus the read.
    fn worst_poll(&self) -> Duration {
        self.timeout * 4
    }
}

/// `Server_ServerStatus_CurrentTime` (ns=0;i=2258): the subscription's
/// heartbeat.
const CURRENT_TIME: u32 = 2258;
/// `Server_ServerCapabilities_OperationLimits_MaxNodesPerRead`.
const MAX_NODES_PER_READ: u32 = 11705;
/// `…_OperationLimits_MaxMonitoredItemsPerCall`.
const MAX_MONITORED_ITEMS_PER_CALL: u32 = 11714;

/// What the C thread's subscription callbacks send the connector.
enum Note {
    /// A tag's new value or status.
    Change(Sample),
    /// A tag's value cannot be stored: why (see [`sample`]).
    Unsupported(usize, String),
    /// The server clock ticked: the subscription is alive.
    Beat,
}

/// A live subscription; dropped before the client disconnects.
struct Subscribed {
    _subscription: AsyncSubscription,
    _items: Vec<MonitoredItemHandle>,
    notes: Receiver<Note>,
    /// Notifications the callbacks could not queue (the queue was full):
    /// counted there, logged here.
    dropped: Arc<AtomicU64>,
    dropped_logged: u64,
    last_beat: Instant,
    /// Silence after which the subscription is taken for dead (`None`:
    /// the server's clock could not be monitored).
    silence: Option<Duration>,
    /// Per-tag failures from creating the items, delivered once.
    failed: Vec<Sample>,
}

/// The connector.
pub struct OpcUa {
    config: std::sync::Arc<OpcUaConfig>,
    nodes: Vec<ua::NodeId>,
    /// The Value attribute of every node: the poll's request, built once.
    value_ids: Vec<(ua::NodeId, ua::AttributeId)>,
    client: Option<AsyncClient>,
    subscribed: Option<Subscribed>,
    /// Nodes per Read call (0: all in one).
    per_read: usize,
    requests: u64,
    refusal: pki::Refusal,
    /// Tags whose unsupported type was logged (once each).
    warned: std::collections::BTreeSet<usize>,
}

impl OpcUa {
    /// A connector, not connected yet.
    pub fn new(config: std::sync::Arc<OpcUaConfig>) -> OpcUa {
        let nodes: Vec<ua::NodeId> = config
            .tags
            .iter()
            .map(|t| t.node.parse().unwrap_or_else(|_| ua::NodeId::numeric(0, 0)))
            .collect();
        let value_ids = nodes
            .iter()
            .map(|n| (n.clone(), ua::AttributeId::VALUE))
            .collect();
        OpcUa {
            config,
            nodes,
            value_ids,
            client: None,
            subscribed: None,
            per_read: 0,
            requests: 0,
            refusal: pki::Refusal::default(),
            warned: std::collections::BTreeSet::new(),
        }
    }

    /// Logs, once per tag, why a value cannot be stored (see
    /// [`sample`]): the tag's status 9 alone would not say.
    fn unsupported(&mut self, tag: usize, why: &str) {
        if self.warned.insert(tag)
            && let Some(t) = self.config.tags.get(tag)
        {
            log::warn!(
                "OPC UA {}: tag {} ({}) {why}: status 9 (type mismatch)",
                self.config.endpoint,
                t.name,
                t.node,
            );
        }
    }

    fn client(&self) -> Result<&AsyncClient, ConnectorError> {
        self.client.as_ref().ok_or_else(not_connected)
    }

    /// The client builder for the configured security and login.
    fn builder(&self) -> Result<ClientBuilder, ConnectorError> {
        let c = &self.config;
        let s = &c.security;
        let setup = |m: String| ConnectorError::refused(Status::BAD_CONFIG, m);
        let builder = if s.mode == SecurityMode::None {
            ClientBuilder::default()
        } else {
            let (cert, key, created) =
                pki::own_identity(&s.pki, &s.application_uri).map_err(setup)?;
            if created {
                log::info!(
                    "created RTDS's OPC UA certificate {} (application URI {}): the server must trust it",
                    pki::own_certificate(&s.pki).display(),
                    s.application_uri
                );
            }
            let mode = match s.mode {
                SecurityMode::Sign => ua::MessageSecurityMode::SIGN,
                _ => ua::MessageSecurityMode::SIGNANDENCRYPT,
            };
            let policy = format!("http://opcfoundation.org/UA/SecurityPolicy#{}", s.policy);
            let b = ClientBuilder::default_encryption(&cert, &key)
                .map_err(|e| setup(format!("RTDS's certificate or key is unusable: {e}")))?
                .security_mode(mode)
                .security_policy_uri(ua::String::new(&policy).map_err(|e| setup(e.to_string()))?)
                .client_description(
                    ua::ApplicationDescription::init()
                        .with_application_uri(&s.application_uri)
                        .with_application_name("", "RTDS")
                        .with_application_type(ua::ApplicationType::CLIENT),
                );
            if s.trust_all {
                b.accept_all()
            } else {
                b.certificate_verification(ua::CertificateVerification::custom(pki::TrustDir::new(
                    &s.pki,
                    self.refusal.clone(),
                )))
            }
        };
        let builder = match &c.user {
            Some((u, p)) => builder.user_identity_token(&ua::UserIdentityToken::UserName(
                ua::UserNameIdentityToken::new(u, p),
            )),
            None => builder,
        };
        Ok(builder.timeout(c.timeout))
    }

    /// After a failed connect: whether the server offers no endpoint with
    /// the configured security, and what it offers instead (the stack's
    /// own error, e.g. BadIdentityTokenRejected, does not say).
    fn endpoint_mismatch(&self) -> Option<String> {
        let c = &self.config;
        let offered = ClientBuilder::default()
            .timeout(c.timeout)
            .get_endpoints(&c.endpoint)
            .ok()?;
        let name = |m: &ua::MessageSecurityMode| -> &'static str {
            if *m == ua::MessageSecurityMode::SIGN {
                "Sign"
            } else if *m == ua::MessageSecurityMode::SIGNANDENCRYPT {
                "SignAndEncrypt"
            } else {
                "None"
            }
        };
        let wanted = match c.security.mode {
            SecurityMode::None => "None",
            SecurityMode::Sign => "Sign",
            SecurityMode::SignAndEncrypt => "SignAndEncrypt",
        };
        let modes: Vec<String> = offered
            .iter()
            .map(|e| {
                let policy = e.security_policy_uri().as_str().unwrap_or_default();
                let policy = policy.rsplit('#').next().unwrap_or(policy);
                (name(e.security_mode()), policy.to_string())
            })
            .map(|(m, p)| format!("{m} {p}"))
            .collect();
        let matches = offered.iter().any(|e| {
            let policy = e.security_policy_uri().as_str().unwrap_or_default();
            name(e.security_mode()) == wanted
                && (c.security.mode == SecurityMode::None
                    || policy.rsplit('#').next() == Some(c.security.policy))
        });
        (!matches && !modes.is_empty()).then(|| {
            format!(
                "the server offers no endpoint with security {wanted}{}; it offers: {}",
                if c.security.mode == SecurityMode::None {
                    String::new()
                } else {
                    format!(" {}", c.security.policy)
                },
                modes.join(", ")
            )
        })
    }

    /// Reads one of the server's operation limits (0: none or unknown).
    fn limit(&mut self, id: u32) -> usize {
        let Some(client) = self.client.as_ref() else {
            return 0;
        };
        self.requests += 1;
        pollster::block_on(client.read_value(&ua::NodeId::ns0(id)))
            .ok()
            .and_then(|dv| dv.value().and_then(|v| v.to_scalar::<ua::UInt32>()))
            .map_or(0, |v| v.value() as usize)
    }

    /// Creates the subscription, its monitored items and the heartbeat.
    fn subscribe(
        &mut self,
        sampling: Duration,
        publish: Duration,
        queue_size: u32,
        deadband: f64,
    ) -> Result<(), ConnectorError> {
        let per_call = self.limit(MAX_MONITORED_ITEMS_PER_CALL);
        let client = self.client.as_ref().ok_or_else(not_connected)?;
        // Bounded: four publishing rounds of every monitored item's queue
        // between two scans, and room for a clock tick each. The callbacks
        // run on the C library's thread and must not block: what does not
        // fit is counted and logged, never waited for.
        let capacity = (4 * self.nodes.len() * queue_size as usize + 1024).min(1_000_000);
        let (tx, notes) = bounded(capacity);
        let dropped = Arc::new(AtomicU64::new(0));
        let queue = Queue {
            tx,
            dropped: dropped.clone(),
        };
        self.requests += 1;
        let (created, subscription) = pollster::block_on(
            SubscriptionBuilder::default()
                .requested_publishing_interval(Some(publish))
                .create(client),
        )
        .map_err(|e| ua_error("create subscription", &e))?;
        // The server may publish less often than asked: the watchdog
        // follows what it granted.
        let granted = created
            .revised_publishing_interval()
            .unwrap_or(publish)
            .max(publish);
        let mut items = Vec::with_capacity(self.nodes.len() + 1);
        let mut failed = Vec::new();
        // The heartbeat first, then the tags in chunks the server accepts.
        let beat_queue = queue.clone();
        self.requests += 1;
        let beat = pollster::block_on(
            subscription.create_monitored_items_callback(
                MonitoredItemCreateRequestBuilder::new([ua::NodeId::ns0(CURRENT_TIME)])
                    .sampling_interval(Some(Duration::from_secs(1))),
                |_| {
                    let queue = beat_queue.clone();
                    move |_: DataValue<ua::Variant>| queue.push(Note::Beat)
                },
            ),
        )
        .ok()
        .and_then(|mut results| results.pop())
        .and_then(Result::ok);
        let watchdog = match beat {
            Some((_, h)) => {
                items.push(h);
                // Three publishing intervals (at least 3 s) plus the clock's
                // 1 s sampling and the timeout.
                Some(
                    (granted * 3).max(Duration::from_secs(3))
                        + Duration::from_secs(1)
                        + self.config.timeout,
                )
            }
            None => {
                log::warn!(
                    "OPC UA {}: the server clock (i=2258) cannot be monitored: a lost subscription is noticed from the session state only",
                    self.config.endpoint
                );
                None
            }
        };
        let chunk = if per_call == 0 { usize::MAX } else { per_call };
        let stamp = self.config.stamp;
        let declared: std::sync::Arc<[Option<UaType>]> =
            self.config.tags.iter().map(|t| t.data_type).collect();
        let mut first = 0;
        for nodes in self.nodes.chunks(chunk.max(1)) {
            let mut request = MonitoredItemCreateRequestBuilder::new(nodes.iter().cloned())
                .sampling_interval(Some(sampling))
                .queue_size(queue_size)
                .discard_oldest(true);
            if deadband > 0.0 {
                request = request.filter(deadband_filter(deadband));
            }
            self.requests += 1;
            let results =
                pollster::block_on(subscription.create_monitored_items_callback(request, |i| {
                    let queue = queue.clone();
                    let tag = first + i;
                    let declared = declared.get(tag).copied().flatten();
                    move |dv: DataValue<ua::Variant>| {
                        let (s, why) = sample(tag, &dv, stamp, chrono::Utc::now(), declared);
                        if let Some(why) = why {
                            queue.push(Note::Unsupported(tag, why));
                        }
                        queue.push(Note::Change(s));
                    }
                }))
                .map_err(|e| ua_error("create monitored items", &e))?;
            for (i, r) in results.into_iter().enumerate() {
                match r {
                    Ok((_, h)) => items.push(h),
                    Err(e) => failed.push(Sample {
                        tag: first + i,
                        value: None,
                        status: match &e {
                            open62541::Error::Server(code) => {
                                Status::opc_ua(code.clone().into_raw())
                            }
                            _ => Status::PROTOCOL_ERROR,
                        },
                        ts: chrono::Utc::now(),
                    }),
                }
            }
            first += nodes.len();
        }
        self.subscribed = Some(Subscribed {
            _subscription: subscription,
            _items: items,
            notes,
            dropped,
            dropped_logged: 0,
            last_beat: Instant::now(),
            silence: watchdog,
            failed,
        });
        Ok(())
    }

    fn poll_read(&mut self, out: &mut Vec<Sample>) -> Result<(), ConnectorError> {
        let ids = std::mem::take(&mut self.value_ids);
        let results = self.read_attributes(&ids);
        self.value_ids = ids;
        let results = results?;
        let now = chrono::Utc::now();
        let stamp = self.config.stamp;
        out.reserve(results.len());
        for (i, dv) in results.iter().enumerate() {
            let (s, why) = sample(i, dv, stamp, now, self.config.tags[i].data_type);
            out.push(s);
            if let Some(why) = why {
                self.unsupported(i, &why);
            }
        }
        Ok(())
    }

    /// Reads attributes in as many Read calls as the server's
    /// MaxNodesPerRead (or `max_nodes_per_read`) needs.
    fn read_attributes(
        &mut self,
        ids: &[(ua::NodeId, ua::AttributeId)],
    ) -> Result<Vec<DataValue<ua::Variant>>, ConnectorError> {
        let chunk = if self.per_read == 0 {
            ids.len().max(1)
        } else {
            self.per_read
        };
        let mut out = Vec::with_capacity(ids.len());
        for part in ids.chunks(chunk) {
            self.requests += 1;
            let client = self.client.as_ref().ok_or_else(not_connected)?;
            let results = pollster::block_on(client.read_many_attributes(part))
                .map_err(|e| ua_error("read", &e))?;
            if results.len() != part.len() {
                return Err(ConnectorError::link(
                    Status::PROTOCOL_ERROR,
                    format!("read: {} results for {} nodes", results.len(), part.len()),
                ));
            }
            out.extend(results);
        }
        Ok(out)
    }
}

/// The subscription's side of the notification queue.
#[derive(Clone)]
struct Queue {
    tx: Sender<Note>,
    dropped: Arc<AtomicU64>,
}

impl Queue {
    /// Queues a note without ever blocking the C library's thread.
    fn push(&self, note: Note) {
        if self.tx.try_send(note).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Moves the notifications that have arrived into `out`; whether the
/// server's clock ticked among them.
fn take_notes(
    sub: &mut Subscribed,
    out: &mut Vec<Sample>,
    unsupported: &mut Vec<(usize, String)>,
) -> bool {
    let mut beat = false;
    for note in sub.notes.try_iter() {
        match note {
            Note::Change(s) => out.push(s),
            Note::Unsupported(tag, name) => unsupported.push((tag, name)),
            Note::Beat => beat = true,
        }
    }
    beat
}

/// Whether the session is activated. The crate shows its state only
/// through Debug; the expected text is computed once.
fn activated(state: &ua::SessionState) -> bool {
    static ACTIVATED: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let want = ACTIVATED.get_or_init(|| {
        format!(
            "{:?}",
            open62541_sys::UA_SessionState::UA_SESSIONSTATE_ACTIVATED
        )
    });
    format!("{state:?}").contains(want.as_str())
}

fn not_connected() -> ConnectorError {
    ConnectorError::link(Status::NOT_CONNECTED, "not connected")
}

/// An absolute data-change deadband, reporting status and value changes.
fn deadband_filter(deadband: f64) -> ua::DataChangeFilter {
    let mut f = ua::DataChangeFilter::init();
    // SAFETY: plain fields of an owned, initialised value.
    unsafe {
        let raw = f.as_mut();
        raw.trigger = open62541_sys::UA_DataChangeTrigger::UA_DATACHANGETRIGGER_STATUSVALUE;
        // DeadbandType Absolute (OPC UA Part 4, 7.17.2).
        raw.deadbandType = 1;
        raw.deadbandValue = deadband;
    }
    f
}

/// A service or connection error as a connector error: a lost channel
/// means reconnecting.
fn ua_error(what: &str, e: &open62541::Error) -> ConnectorError {
    let code = e.status_code();
    let status = if code == ua::StatusCode::BADTIMEOUT || code == ua::StatusCode::BADREQUESTTIMEOUT
    {
        Status::TIMEOUT
    } else {
        Status::NOT_CONNECTED
    };
    ConnectorError::link(status, format!("{what}: {}", code.name()))
}

/// Whether a service's Bad result says the connection or session is gone
/// (OPC UA Part 4, 7.38): the request was not refused, it was not heard.
fn link_lost(code: &ua::StatusCode) -> bool {
    [
        ua::StatusCode::BADCONNECTIONCLOSED,
        ua::StatusCode::BADCONNECTIONREJECTED,
        ua::StatusCode::BADSECURECHANNELCLOSED,
        ua::StatusCode::BADSECURECHANNELIDINVALID,
        ua::StatusCode::BADSESSIONCLOSED,
        ua::StatusCode::BADSESSIONIDINVALID,
        ua::StatusCode::BADCOMMUNICATIONERROR,
        ua::StatusCode::BADTIMEOUT,
        ua::StatusCode::BADREQUESTTIMEOUT,
        ua::StatusCode::BADSERVERNOTCONNECTED,
        ua::StatusCode::BADDISCONNECT,
        ua::StatusCode::BADNOTCONNECTED,
        ua::StatusCode::BADSHUTDOWN,
        ua::StatusCode::BADSERVERHALTED,
    ]
    .contains(code)
}

impl Connector for OpcUa {
    fn open(&mut self) -> Result<(), ConnectorError> {
        self.close();
        if let Ok(mut r) = self.refusal.lock() {
            *r = None;
        }
        let builder = self.builder()?;
        let endpoint = &self.config.endpoint;
        self.requests += 1;
        let client = builder.connect(endpoint).map_err(|e| {
            match self.refusal.lock().ok().and_then(|mut r| r.take()) {
                // The one failure a user must act on: say what to do.
                Some(why) => ConnectorError::link(
                    Status::NOT_CONNECTED,
                    format!("connect to {endpoint}: {why}"),
                ),
                None => match self.endpoint_mismatch() {
                    Some(why) => ConnectorError::refused(
                        Status::BAD_CONFIG,
                        format!("connect to {endpoint}: {why}"),
                    ),
                    None => ua_error(&format!("connect to {endpoint}"), &e),
                },
            }
        })?;
        self.client = Some(client.into_async());
        match self.config.mode {
            Mode::Poll => {
                let server = self.limit(MAX_NODES_PER_READ);
                let mine = self.config.max_nodes_per_read as usize;
                self.per_read = match (mine, server) {
                    (0, s) => s,
                    (m, 0) => m,
                    (m, s) => m.min(s),
                };
                Ok(())
            }
            Mode::Subscribe {
                sampling,
                publish,
                queue_size,
                deadband,
            } => self
                .subscribe(sampling, publish, queue_size, deadband)
                .inspect_err(|_| self.close()),
        }
    }

    fn is_open(&self) -> bool {
        self.client.is_some()
    }

    fn read(&mut self, out: &mut Vec<Sample>) -> Result<(), ConnectorError> {
        let Some(sub) = self.subscribed.as_mut() else {
            return self.poll_read(out);
        };
        out.append(&mut sub.failed);
        let mut unsupported = Vec::new();
        if take_notes(sub, out, &mut unsupported) {
            sub.last_beat = Instant::now();
        }
        let dropped = sub.dropped.load(Ordering::Relaxed);
        if dropped > sub.dropped_logged {
            log::warn!(
                "OPC UA {}: {} notifications dropped since the last scan: the scan takes them too rarely for what the server sends (a shorter interval_ms, or a deadband)",
                self.config.endpoint,
                dropped - sub.dropped_logged
            );
            sub.dropped_logged = dropped;
        }
        let quiet = sub.last_beat.elapsed();
        let lost = if sub.silence.is_some_and(|limit| quiet > limit) {
            Some(format!(
                "no notification from the server for {:.1} s: the session or subscription is gone",
                quiet.as_secs_f64()
            ))
        } else {
            let state = self.client()?.state();
            // The crate shows the session state only through Debug.
            (!state.connect_status.is_good() || !activated(&state.session_state))
                .then(|| format!("session lost ({})", state.connect_status.name()))
        };
        if let Some(why) = lost {
            // Changes the client received before the loss are readings like
            // any other: into the scan before the tags go bad (the runner
            // keeps what a failed read delivered).
            if let Some(sub) = self.subscribed.as_mut() {
                take_notes(sub, out, &mut unsupported);
            }
            return Err(ConnectorError::link(Status::NOT_CONNECTED, why));
        }
        for (tag, name) in unsupported {
            self.unsupported(tag, &name);
        }
        Ok(())
    }

    fn write(&mut self, tag: usize, value: &Value) -> Result<Value, ConnectorError> {
        let bad = |m: String| ConnectorError::refused(Status::BAD_CONFIG, m);
        let t = self
            .config
            .tags
            .get(tag)
            .ok_or_else(|| bad(format!("no tag #{tag}")))?;
        if !t.writable {
            return Err(bad(format!("tag {} is not writable", t.name)));
        }
        let ty = t.data_type.ok_or_else(|| bad("no type".into()))?;
        let variant = ty.variant(value, t.array).map_err(bad)?;
        // What the server holds once it accepts: the variant sent, read
        // back as a read reads it (0 on a Boolean is false, a UInt64's
        // decimal text its number).
        let held = value_of(&variant).ok_or_else(|| bad(format!("{value} has no OPC UA form")))?;
        self.requests += 1;
        let node = self.nodes[tag].clone();
        let client = self.client()?;
        pollster::block_on(client.write_value(&node, &ua::DataValue::new(variant)))
            .map(|()| held)
            .map_err(|e| match e {
                // The server refused this write (a Bad result): the link is fine.
                open62541::Error::Server(code) if !link_lost(&code) => {
                    let name = code.name();
                    ConnectorError::refused(
                        Status::opc_ua(code.into_raw()),
                        format!("server refused the write to {}: {name}", t.node),
                    )
                }
                other => ua_error("write", &other),
            })
    }

    /// One Read of the tag's node, whatever the mode: a subscription's
    /// `read` returns only what changed.
    fn read_back(&mut self, tag: usize) -> Result<Sample, ConnectorError> {
        let id = [(self.nodes[tag].clone(), ua::AttributeId::VALUE)];
        let dv = self.read_attributes(&id)?.pop().ok_or_else(|| {
            ConnectorError::link(Status::PROTOCOL_ERROR, "read: no result for the node")
        })?;
        let declared = self.config.tags[tag].data_type;
        Ok(sample(tag, &dv, self.config.stamp, chrono::Utc::now(), declared).0)
    }

    fn close(&mut self) {
        // Items and subscription first: their drop asks the live client to
        // delete them at the server.
        self.subscribed = None;
        if let Some(c) = self.client.take() {
            pollster::block_on(c.disconnect());
        }
    }

    fn requests(&self) -> u64 {
        self.requests
    }
}

impl Drop for OpcUa {
    fn drop(&mut self) {
        // open62541: never drop a client without disconnecting it.
        self.close();
    }
}

fn time(d: Option<&ua::DateTime>) -> Option<Timestamp> {
    let nanos = d?.as_unix_timestamp_nanos();
    if nanos <= 0 {
        return None;
    }
    chrono::DateTime::from_timestamp_nanos(i64::try_from(nanos).ok()?).into()
}
fn value_of(v: &ua::Variant) -> Option<Value> {
    // Each numeric type, scalar or array.
    macro_rules! numbers {
        ($( $ua:ident => $make:expr ),* $(,)?) => {
            $(
                if let Some(x) = v.to_scalar::<ua::$ua>() {
                    return Some($make(x.value()));
                }
                if let Some(a) = v.to_array::<ua::$ua>() {
                    return Some(Value::Array(a.iter().map(|x| $make(x.value())).collect()));
                }
            )*
        };
    }
    numbers!(
        Boolean => Value::Bool,
        SByte => |x: i8| Value::Int(i64::from(x)),
        Byte => |x: u8| Value::Int(i64::from(x)),
        Int16 => |x: i16| Value::Int(i64::from(x)),
        UInt16 => |x: u16| Value::Int(i64::from(x)),
        Int32 => |x: i32| Value::Int(i64::from(x)),
        UInt32 => |x: u32| Value::Int(i64::from(x)),
        Int64 => Value::Int,
        UInt64 => Value::from_u64,
        Float => |x: f32| Value::Float(f64::from(x)),
        Double => Value::Float,
    );
    if let Some(s) = v.to_scalar::<ua::String>() {
        return Some(Value::Str(s.as_str().unwrap_or_default().to_string()));
    }
    if let Some(t) = v.to_scalar::<ua::DateTime>() {
        return time(Some(&t)).map(|t| Value::Str(crate::model::format_ts(&t)));
    }
    if let Some(a) = v.to_array::<ua::String>() {
        return Some(Value::Array(
            a.iter()
                .map(|s| Value::Str(s.as_str().unwrap_or_default().to_string()))
                .collect(),
        ));
    }
    if let Some(b) = v.to_scalar::<ua::ByteString>() {
        return Some(Value::Str(hex(b.as_bytes().unwrap_or_default())));
    }
    if let Some(a) = v.to_array::<ua::ByteString>() {
        return Some(Value::Array(
            a.iter()
                .map(|b| Value::Str(hex(b.as_bytes().unwrap_or_default())))
                .collect(),
        ));
    }
    if let Some(t) = v.to_scalar::<ua::LocalizedText>() {
        return Some(localized(&t));
    }
    if let Some(a) = v.to_array::<ua::LocalizedText>() {
        return Some(Value::Array(a.iter().map(localized).collect()));
    }
    if let Some(a) = v.to_array::<ua::DateTime>() {
        return Some(Value::Array(
            a.iter()
                .map(|t| {
                    time(Some(t)).map_or(Value::Str(String::new()), |t| {
                        Value::Str(crate::model::format_ts(&t))
                    })
                })
                .collect(),
        ));
    }
    None
}
/// Bytes as lowercase hex text.
fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// A LocalizedText as the JSON text `{"locale":"…","text":"…"}`: the
/// locale stays beside the text, and a reader decodes both.
fn localized(t: &ua::LocalizedText) -> Value {
    Value::Str(format!(
        "{{\"locale\":{},\"text\":{}}}",
        crate::json::string(t.locale().as_str().unwrap_or_default()),
        crate::json::string(t.text().as_str().unwrap_or_default())
    ))
}

/// The built-in type of a value (OPC UA Part 6, 5.1.2), for messages.
fn type_of(v: &ua::Variant) -> &'static str {
    v.type_id()
        .and_then(|id| id.as_ns0())
        .and_then(|n| browse::BUILT_IN.get(n as usize).copied())
        .filter(|n| !n.is_empty())
        .unwrap_or("structure")
}

/// A Read result or notification as a sample of tag `tag`, and why its
/// value cannot be stored when it cannot: a type RTDS cannot read, or a
/// ByteString or LocalizedText on a tag without a declared type (their
/// hex and JSON text would reach the Historian looking like strings).
pub(super) fn sample(
    tag: usize,
    dv: &DataValue<ua::Variant>,
    stamp: Stamp,
    now: Timestamp,
    declared: Option<UaType>,
) -> (Sample, Option<String>) {
    let (status, bad) = match dv.status() {
        Some(c) if c.is_bad() => (Status::opc_ua(c.into_raw()), true),
        Some(c) if c.is_uncertain() => (Status::opc_ua(c.into_raw()), false),
        _ => (Status::GOOD, false),
    };
    let ts = match stamp {
        Stamp::Source => time(dv.source_timestamp()).or(time(dv.server_timestamp())),
        Stamp::Server => time(dv.server_timestamp()),
    }
    .unwrap_or(now);
    let mut why = None;
    let value = if bad {
        None
    } else {
        dv.value().and_then(|v| {
            let value = value_of(v);
            if value.is_none() {
                why = Some(format!(
                    "holds a {}, a type RTDS cannot read (readable: {})",
                    type_of(v),
                    UaType::names_list()
                ));
                return None;
            }
            if declared.is_none()
                && let name @ ("ByteString" | "LocalizedText") = type_of(v)
            {
                why = Some(format!(
                    "holds a {name}: declare it on the tag (type: \"{name}{}\") so the Historian can decode it",
                    if v.is_scalar() { "" } else { "[]" }
                ));
                return None;
            }
            value
        })
    };
    // A good node whose value RTDS cannot represent: say so, do not guess.
    let status = if status.is_good() && value.is_none() {
        Status::TYPE_MISMATCH
    } else {
        status
    };
    (
        Sample {
            tag,
            value,
            status,
            ts,
        },
        why,
    )
}
