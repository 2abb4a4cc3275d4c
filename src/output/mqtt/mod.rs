//! The MQTT output: RTDS as a Sparkplug B 3.0 edge node, or plain JSON
//! topics, on a broker reached over TCP or TLS, with store-and-forward.
//!
//! - `packet.rs`: MQTT 3.1.1 packets on bytes;
//! - `session.rs`: one connection (TCP/TLS), waiting on the broker and the
//!   loop at once with `poll(2)`;
//! - `protobuf.rs`, `sparkplug.rs`: Sparkplug payloads, types and values;
//! - `json.rs`: the plain topics' payloads;
//! - `spool.rs`: what the broker could not take yet, on disk;
//! - `worker.rs`: the output's thread: births, data, commands, the
//!   primary host, reconnects, replay.
//!
//! This module reads the settings and gives the loop its handle.

pub mod json;
pub mod packet;
pub mod protobuf;
pub mod session;
pub mod sparkplug;
pub mod spool;
mod worker;

use super::{Context, Feed, Kind, Message, Output, OutputConfig, OutputReport, QUEUE, Setup};
use crate::connector::SetupError;
use crate::model::Batch;
use crate::storage::TagInfo;
use crossbeam_channel::{Receiver, Sender, bounded};
use session::{Broker, Tls};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What the output publishes.
#[derive(Clone, PartialEq)]
pub enum Mode {
    /// A Sparkplug B edge node.
    Sparkplug {
        /// Group id.
        group: String,
        /// Edge node id.
        node: String,
        /// The primary host application's id: publish only while its
        /// STATE says online.
        primary_host: Option<String>,
        /// Whether DCMD may write tags (off by default).
        commands: bool,
    },
    /// `{prefix}/{connector}/{tag}` with `{"value":…,"status":…,"ts":…}`.
    Json {
        /// Topic prefix.
        prefix: String,
        /// QoS of the value messages (0 or 1).
        qos: u8,
        /// Whether they are retained.
        retain: bool,
    },
}

/// Validated settings of one MQTT output.
#[derive(Clone, PartialEq)]
pub struct MqttSettings {
    /// The output's name.
    pub name: String,
    /// The broker URL as configured (for messages).
    pub url: String,
    /// Where and how to connect.
    pub broker: Broker,
    /// MQTT client id.
    pub client_id: String,
    /// Login.
    pub username: Option<String>,
    /// Password (never printed).
    pub password: Option<String>,
    /// Keep-alive.
    pub keep_alive: Duration,
    /// What to publish.
    pub mode: Mode,
    /// First reconnect delay.
    pub retry_min: Duration,
    /// Longest reconnect delay.
    pub retry_max: Duration,
    /// The store-and-forward file.
    pub store: PathBuf,
    /// Its limits.
    pub limits: spool::Limits,
}

impl std::fmt::Debug for MqttSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Everything but the password.
        f.debug_struct("MqttSettings")
            .field("url", &self.url)
            .field("broker", &self.broker)
            .field("client_id", &self.client_id)
            .field("username", &self.username)
            .field("keep_alive", &self.keep_alive)
            .field("describe", &self.describe())
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

impl MqttSettings {
    fn describe(&self) -> String {
        match &self.mode {
            Mode::Sparkplug {
                group,
                node,
                primary_host,
                commands,
            } => format!(
                "MQTT {} as Sparkplug B edge node {group}/{node}{}{}",
                self.url,
                primary_host
                    .as_ref()
                    .map(|h| format!(", primary host {h}"))
                    .unwrap_or_default(),
                if *commands { ", commands on" } else { "" }
            ),
            Mode::Json {
                prefix,
                qos,
                retain,
            } => format!(
                "MQTT {} as JSON topics {prefix}/<connector>/<tag>, QoS {qos}{}",
                self.url,
                if *retain { ", retained" } else { "" }
            ),
        }
    }
}

/// Keys of an `mqtt` output entry besides `name` and `kind`.
pub const KEYS: &[&str] = &[
    "broker",
    "client_id",
    "username",
    "password",
    "ca_file",
    "cert_file",
    "key_file",
    "keep_alive_s",
    "timeout_s",
    "retry_min_s",
    "retry_max_s",
    "mode",
    "group",
    "edge_node",
    "primary_host",
    "commands",
    "topic_prefix",
    "qos",
    "retain",
    "store_file",
    "store_max_rows",
    "store_max_mb",
];

/// `kind: "mqtt"`.
pub const KIND: Kind = Kind {
    name: "mqtt",
    setup,
};

fn setup(mut s: Setup<'_>) -> super::Built {
    let mut errors = Vec::new();
    let mut take = |key: &str| -> Option<String> {
        match s.extras.take::<String>(key) {
            Ok(v) => v,
            Err(e) => {
                errors.push(e);
                None
            }
        }
    };
    let url = take("broker");
    let client_id = take("client_id");
    let username = take("username");
    let password = take("password");
    let ca_file = take("ca_file");
    let cert_file = take("cert_file");
    let key_file = take("key_file");
    let mode = take("mode").unwrap_or_else(|| "sparkplug".into());
    let group = take("group");
    let edge_node = take("edge_node");
    let primary_host = take("primary_host");
    let topic_prefix = take("topic_prefix");
    let store_file = take("store_file");
    let mut num = |key: &str, default: f64, lo: f64, hi: f64| -> f64 {
        match s.extras.take::<f64>(key) {
            Ok(Some(v)) if (lo..=hi).contains(&v) => v,
            Ok(Some(v)) => {
                errors.push(SetupError::field(
                    key,
                    format!("`{key}`: {v} is outside {lo}..={hi}"),
                ));
                default
            }
            Ok(None) => default,
            Err(e) => {
                errors.push(e);
                default
            }
        }
    };
    let keep_alive = num("keep_alive_s", 30.0, 5.0, 3600.0);
    let timeout = num("timeout_s", 10.0, 0.1, 300.0);
    let retry_min = num("retry_min_s", 1.0, 0.1, 3600.0);
    let retry_max = num("retry_max_s", 60.0, 0.1, 86_400.0);
    let qos = num("qos", 1.0, 0.0, 1.0);
    let max_rows = num("store_max_rows", 1_000_000.0, 1.0, 1e10);
    let max_mb = num("store_max_mb", 100.0, 1.0, 1e6);
    let mut flag = |key: &str, default: bool| -> bool {
        match s.extras.take::<bool>(key) {
            Ok(v) => v.unwrap_or(default),
            Err(e) => {
                errors.push(e);
                default
            }
        }
    };
    let commands = flag("commands", false);
    let retain = flag("retain", true);
    errors.extend(std::mem::take(&mut s.extras).finish_for("an mqtt output", KEYS));
    if retry_max < retry_min {
        errors.push(SetupError::field(
            "retry_max_s",
            "`retry_max_s` must not be below retry_min_s",
        ));
    }
    if qos.fract() != 0.0 {
        errors.push(SetupError::field("qos", "`qos` is 0 or 1"));
    }
    let broker = match url.as_deref().map(Broker::parse_url) {
        None => {
            errors.push(SetupError::setting(
                "missing `broker` (e.g. \"mqtt://10.0.0.20:1883\" or \"mqtts://broker.plant.local\")",
            ));
            None
        }
        Some(Err(e)) => {
            errors.push(SetupError::field("broker", format!("`broker`: {e}")));
            None
        }
        Some(Ok(b)) => Some(b),
    };
    let resolve = |p: &str| super::resolve(s.base, std::path::Path::new(p));
    let tls = match &broker {
        Some((true, _, _)) => {
            // Without a CA file, the system's trust store.
            let ca = ca_file
                .as_deref()
                .map(resolve)
                .unwrap_or_else(|| PathBuf::from("/etc/ssl/certs/ca-certificates.crt"));
            let tls = Tls {
                ca_file: ca,
                cert_file: cert_file.as_deref().map(resolve),
                key_file: key_file.as_deref().map(resolve),
            };
            // Read now: a missing or bad file is a configuration error.
            if let Err(e) = session::tls_config(&tls) {
                errors.push(SetupError::field(
                    if ca_file.is_some() {
                        "ca_file"
                    } else {
                        "broker"
                    },
                    format!("TLS: {e}"),
                ));
            }
            Some(tls)
        }
        _ => {
            for (k, v) in [
                ("ca_file", &ca_file),
                ("cert_file", &cert_file),
                ("key_file", &key_file),
            ] {
                if v.is_some() {
                    errors.push(SetupError::field(
                        k,
                        format!("`{k}` needs a TLS broker (mqtts://…)"),
                    ));
                }
            }
            None
        }
    };
    let mode = match mode.to_ascii_lowercase().as_str() {
        "sparkplug" | "sparkplugb" => {
            let mut id = |what: &str, key: &str, v: Option<String>| -> String {
                match v {
                    None => {
                        errors.push(SetupError::setting(format!(
                            "missing `{key}` (the Sparkplug {what} id)"
                        )));
                        String::new()
                    }
                    Some(v) => {
                        if let Err(e) = sparkplug::check_id(what, &v) {
                            errors.push(SetupError::field(key, format!("`{key}`: {e}")));
                        }
                        v
                    }
                }
            };
            let group = id("group", "group", group);
            let node = id("edge node", "edge_node", edge_node);
            if let Some(h) = &primary_host
                && let Err(e) = sparkplug::check_id("primary host", h)
            {
                errors.push(SetupError::field(
                    "primary_host",
                    format!("`primary_host`: {e}"),
                ));
            }
            if topic_prefix.is_some() {
                errors.push(SetupError::field(
                    "topic_prefix",
                    "`topic_prefix` is for mode \"json\"; Sparkplug's topics are spBv1.0/{group}/…",
                ));
            }
            Mode::Sparkplug {
                group,
                node,
                primary_host,
                commands,
            }
        }
        "json" => {
            let prefix = topic_prefix.unwrap_or_else(|| format!("rtds/{}", s.name));
            if let Err(e) = packet::check_topic(&prefix) {
                errors.push(SetupError::field(
                    "topic_prefix",
                    format!("`topic_prefix`: {e}"),
                ));
            }
            for (k, v) in [
                ("group", &group),
                ("edge_node", &edge_node),
                ("primary_host", &primary_host),
            ] {
                if v.is_some() {
                    errors.push(SetupError::field(
                        k,
                        format!("`{k}` is for mode \"sparkplug\""),
                    ));
                }
            }
            if commands {
                errors.push(SetupError::field(
                    "commands",
                    "`commands` is for mode \"sparkplug\" (DCMD)",
                ));
            }
            Mode::Json {
                prefix: prefix.trim_end_matches('/').to_string(),
                qos: qos as u8,
                retain,
            }
        }
        other => {
            errors.push(SetupError::field(
                "mode",
                format!("`mode`: `{other}` is not \"sparkplug\" or \"json\""),
            ));
            Mode::Json {
                prefix: String::new(),
                qos: 1,
                retain: true,
            }
        }
    };
    let client_id = client_id.unwrap_or_else(|| match &mode {
        Mode::Sparkplug { group, node, .. } => format!("rtds-{group}-{node}"),
        Mode::Json { .. } => format!("rtds-{}", s.name),
    });
    for (k, v) in [
        ("client_id", Some(&client_id)),
        ("username", username.as_ref()),
        ("password", password.as_ref()),
    ] {
        if let Some(v) = v
            && let Err(e) = packet::check_string(&format!("`{k}`"), v)
        {
            errors.push(SetupError::field(k, e));
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let (_, host, port) = broker.expect("checked above");
    let store = store_file
        .as_deref()
        .map(resolve)
        .unwrap_or_else(|| s.data_dir.join(format!("mqtt-{}.db", s.name)));
    Ok(Arc::new(MqttSettings {
        name: s.name.to_string(),
        url: url.unwrap_or_default(),
        broker: Broker {
            host,
            port,
            tls,
            timeout: Duration::from_secs_f64(timeout),
        },
        client_id,
        username,
        password,
        keep_alive: Duration::from_secs_f64(keep_alive),
        mode,
        retry_min: Duration::from_secs_f64(retry_min),
        retry_max: Duration::from_secs_f64(retry_max),
        store,
        limits: spool::Limits {
            max_rows: max_rows as u64,
            max_bytes: (max_mb * 1024.0 * 1024.0) as u64,
        },
    }))
}

impl OutputConfig for MqttSettings {
    fn start(&self, ctx: Context) -> std::io::Result<Box<dyn Output>> {
        let settings = Arc::new(self.clone());
        let tls = match &self.broker.tls {
            Some(t) => Some(session::tls_config(t).map_err(std::io::Error::other)?),
            None => None,
        };
        let spool = spool::Spool::open(&self.store, self.limits).map_err(std::io::Error::other)?;
        let (tx, rx) = bounded(QUEUE);
        let (stop_tx, stop_rx) = bounded(1);
        let (reports_tx, reports) = bounded(1);
        let (wake_rx, wake_tx) = pipe()?;
        let describe = self.describe();
        let name = ctx.name.clone();
        let worker = worker::Worker::new(
            settings,
            tls,
            spool,
            rx,
            stop_rx,
            wake_rx,
            reports_tx,
            ctx.queries,
        );
        let thread = std::thread::Builder::new()
            .name(format!("mqtt-{name}"))
            .spawn(move || worker.run())?;
        log::info!("output {name}: started, {describe}");
        Ok(Box::new(MqttOutput {
            feed: Feed::new(&name, tx),
            name,
            wake: wake_tx,
            reports,
            stop: stop_tx,
            thread: Some(thread),
            last: None,
        }))
    }

    fn describe(&self) -> String {
        MqttSettings::describe(self)
    }
}

/// A non-blocking pipe: (read end, write end). The loop writes a byte when
/// it hands something over; the worker's `poll` wakes on it.
fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    use std::os::fd::FromRawFd;
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two descriptors we then own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both are fresh descriptors owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// The loop's handle of an MQTT output.
struct MqttOutput {
    name: String,
    feed: Feed,
    wake: OwnedFd,
    reports: Receiver<OutputReport>,
    stop: Sender<()>,
    thread: Option<JoinHandle<u64>>,
    last: Option<OutputReport>,
}

impl MqttOutput {
    fn wake(&self) {
        // SAFETY: a one-byte write to a non-blocking pipe we own; a full
        // pipe (EAGAIN) already means "wake up".
        unsafe {
            libc::write(self.wake.as_raw_fd(), [1u8].as_ptr().cast(), 1);
        }
    }
}

impl Output for MqttOutput {
    fn name(&self) -> &str {
        &self.name
    }

    fn tags(&mut self, first: usize, tags: &[TagInfo]) {
        self.feed.post(Message::Tags {
            first,
            tags: tags.to_vec(),
        });
        self.wake();
    }

    fn samples(&mut self, batch: &Batch) {
        if !batch.is_empty() {
            self.feed.post(Message::Samples(batch.clone()));
            self.wake();
        }
    }

    fn removed(&mut self, names: &[Arc<str>]) {
        if !names.is_empty() {
            self.feed.post(Message::Removed(names.to_vec()));
            self.wake();
        }
    }

    fn pump(&mut self) {
        self.feed.pump();
    }

    fn report(&mut self) -> Option<OutputReport> {
        let latest = self.reports.try_iter().last()?;
        let mut r = latest;
        // What the loop dropped for it counts too.
        if self.feed.overflowed > 0 {
            let d = crate::diagnostics::Publish::Dropped;
            let before = match r.get(d) {
                crate::model::Value::Int(n) => *n,
                _ => 0,
            };
            let v = before + self.feed.overflowed as i64;
            r.set(d, crate::model::Value::Int(v));
        }
        self.last = Some(r.clone());
        Some(r)
    }

    fn is_alive(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    fn close(mut self: Box<Self>, deadline: Instant) -> u64 {
        let mut lost = self.feed.drain(deadline);
        let _ = self.stop.try_send(());
        self.wake();
        let Some(thread) = self.thread.take() else {
            return lost;
        };
        while !thread.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if thread.is_finished() {
            lost += thread.join().unwrap_or(0);
        } else {
            log::error!(
                "output {}: still busy at shutdown (the broker or the disk stalls), left behind",
                self.name
            );
        }
        if lost > 0 {
            log::error!(
                "output {}: {lost} changes were neither delivered nor kept in its store",
                self.name
            );
        }
        lost
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connector::Extras;

    fn setup_of(fields: &[(&str, &str)]) -> crate::output::Built {
        setup(Setup {
            name: "site",
            extras: Extras::new(
                fields
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            base: std::path::Path::new("/etc/rtds"),
            data_dir: std::path::Path::new("/var/lib/rtds"),
        })
    }

    #[test]
    fn settings_and_every_mistake_at_once() {
        let ok = setup_of(&[
            ("broker", "\"mqtt://10.0.0.20\""),
            ("group", "\"Plant1\""),
            ("edge_node", "\"gw1\""),
        ])
        .unwrap();
        let d = ok.describe();
        assert!(d.contains("Sparkplug B edge node Plant1/gw1"), "{d}");
        let dbg = format!("{ok:?}");
        assert!(dbg.contains("/var/lib/rtds/mqtt-site.db"), "{dbg}");
        let e = setup_of(&[
            ("broker", "\"http://x\""),
            ("group", "\"a/b\""),
            ("qos", "2"),
            ("password", "\"secret\""),
            ("ca_file", "\"ca.pem\""),
            ("topic_prefix", "\"x\""),
            ("colour", "\"red\""),
        ])
        .unwrap_err();
        let text: Vec<String> = e.iter().map(|e| e.message.clone()).collect();
        let all = text.join("\n");
        for want in [
            "not a broker scheme",
            "must be non-empty and hold none of + / #",
            "missing `edge_node`",
            "`qos`: 2 is outside 0..=1",
            "`ca_file` needs a TLS broker",
            "`topic_prefix` is for mode \"json\"",
            "`colour` is not a setting of an mqtt output",
        ] {
            assert!(all.contains(want), "missing `{want}` in\n{all}");
        }
        let json = setup_of(&[("broker", "\"127.0.0.1:1884\""), ("mode", "\"json\"")]).unwrap();
        assert!(
            json.describe()
                .contains("rtds/site/<connector>/<tag>, QoS 1, retained")
        );
        assert!(
            !format!(
                "{:?}",
                setup_of(&[
                    ("broker", "\"x\""),
                    ("mode", "\"json\""),
                    ("password", "\"hunter2\"")
                ])
                .unwrap()
            )
            .contains("hunter2")
        );
    }
}
