//! Calculation scripts in Rhai, with the seed's API:
//!
//! ```text
//! let t = server.get("Tag_1");
//! t.value = 42.0;
//! t.status = 0;
//! server.set(t);
//! ```
//!
//! Scripts are compiled once at start (and at reload) and their ASTs re-run
//! each cycle they are due ([`schedule`]). A script runs against the central
//! loop's tag table; what it sets, and what it changes in its `state` map, is
//! applied only when the run finishes without error, so a script that fails
//! half-way never leaves half its outputs updated.
//!
//! Sandbox: Rhai has no file, network or process access of its own and RTDS
//! registers none; `eval` is disabled; every run is bounded in operations,
//! wall-clock time, call depth, string and array size.

pub mod schedule;
pub mod settings;

use crate::located::Errors;
use crate::model::{
    Origin, Sample, ScriptState, Status, TagState, TagTable, Timestamp, Value, format_ts,
};
use chrono::{Datelike, Timelike};
use rhai::{AST, Array, Dynamic, Engine, EvalAltResult, INT, Map, Scope};
use schedule::Timer;
pub use settings::{ScriptConfig, ScriptLimits};
use std::cell::{Cell, RefCell};
use std::collections::{BTreeSet, HashMap};
use std::rc::Rc;
use std::time::{Duration, Instant};

/// A tag as scripts see it: a copy of name, value, status and time stamp.
#[derive(Debug, Clone)]
pub struct ScriptTag {
    name: String,
    value: Dynamic,
    status: INT,
    timestamp: String,
}

/// The `server` object of the seed's API.
#[derive(Clone)]
struct ScriptServer {
    ctx: Rc<RefCell<Context>>,
}

/// The `rnd` object, so the seed's `rnd.uniform(0, 100)` reads the same.
#[derive(Clone)]
struct Random;

#[derive(Default)]
struct Context {
    table: TagTable,
    /// What the running script set, applied when it finishes cleanly.
    sets: Vec<(String, TagState)>,
    /// Position of each name in `sets`, so reads of what this run set stay
    /// O(1) in a script over 10,000 tags.
    set_index: HashMap<String, usize>,
    now: Option<Timestamp>,
    script: String,
    /// Each connector's kind, to check a value set on a writable device tag
    /// before it is accepted (index: connector number).
    devices: Vec<crate::connector::ConnectorKind>,
}

/// Per-run limits the engine's progress callback enforces.
struct Watchdog {
    deadline: Cell<Option<Instant>>,
    limit: Cell<Duration>,
}

/// A script failed at run time; carries what the log needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptError {
    /// Script name.
    pub script: String,
    /// 1-based line (0 when unknown).
    pub line: usize,
    /// What went wrong.
    pub message: String,
}

impl std::fmt::Display for ScriptError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "script {} line {}: {}",
            self.script, self.line, self.message
        )
    }
}

struct Compiled {
    name: String,
    /// Source text: a reload or restart keeps the state of a script only
    /// while this is unchanged.
    source: String,
    ast: AST,
    timer: Timer,
    max_operations: u64,
    max_time: Duration,
    /// The script's `state` map, kept between runs.
    state: Map,
    /// Tags this script has set, marked SCRIPT_ERROR when it fails.
    outputs: BTreeSet<usize>,
    /// Runs and errors, for the status page and metrics.
    stats: crate::status::ScriptStats,
}

/// What one cycle of scripts produced.
#[derive(Debug, Default)]
pub struct ScriptOutcome {
    /// Tag states that changed, for storage (server tag indexes).
    pub samples: Vec<Sample>,
    /// Values set on writable device tags, to be written to their sources.
    pub writes: Vec<(usize, Value)>,
    /// Index of the first tag the scripts created this cycle (== the table's
    /// length before the run when none were).
    pub first_new_tag: usize,
    /// Failures, already logged.
    pub errors: Vec<ScriptError>,
}

/// The compiled scripts and the engine that runs them.
pub struct ScriptHost {
    engine: Engine,
    scripts: Vec<Compiled>,
    ctx: Rc<RefCell<Context>>,
    watchdog: Rc<Watchdog>,
    cycle: Duration,
}

impl ScriptHost {
    /// Compiles every script; each that does not compile is an error with
    /// its file and line (all of them, not the first only). `cycle` is the
    /// central loop's period; `devices` are the connectors' settings, whose
    /// checks a script's write gets.
    pub fn new(
        configs: &[ScriptConfig],
        limits: &ScriptLimits,
        cycle: Duration,
        devices: Vec<crate::connector::ConnectorKind>,
    ) -> Result<ScriptHost, Errors> {
        let ctx = Rc::new(RefCell::new(Context::default()));
        let watchdog = Rc::new(Watchdog {
            deadline: Cell::new(None),
            limit: Cell::new(Duration::ZERO),
        });
        let engine = build_engine(&ctx, &watchdog, limits);
        let mut scripts = Vec::with_capacity(configs.len());
        let mut errors = Errors::default();
        for c in configs {
            let src = match std::fs::read_to_string(&c.file) {
                Ok(s) => s,
                Err(e) => {
                    errors.push(&c.file, 0, format!("cannot read script: {e}"));
                    continue;
                }
            };
            let ast = match engine.compile(&src) {
                Ok(a) => a,
                Err(e) => {
                    errors.push(
                        &c.file,
                        e.position().line().unwrap_or(0),
                        format!("script `{}` does not compile: {}", c.name, e.err_type()),
                    );
                    continue;
                }
            };
            scripts.push(Compiled {
                name: c.name.clone(),
                source: src,
                ast,
                timer: Timer::new(c.schedule.clone()),
                max_operations: c.max_operations,
                max_time: c.max_time,
                state: Map::new(),
                outputs: BTreeSet::new(),
                stats: crate::status::ScriptStats {
                    name: c.name.clone(),
                    ..Default::default()
                },
            });
        }
        ctx.borrow_mut().devices = devices;
        errors.or(ScriptHost {
            engine,
            scripts,
            ctx,
            watchdog,
            cycle,
        })
    }

    /// Takes over from the host of the previous configuration (SIGHUP):
    /// every script whose name and source are unchanged keeps its `state`
    /// and its schedule's memory (a cron job does not run again in the same
    /// minute); a changed or new script starts fresh. Returns (kept, fresh).
    pub fn adopt(&mut self, old: &mut ScriptHost) -> (usize, usize) {
        let mut kept = 0;
        for s in &mut self.scripts {
            if let Some(o) = old
                .scripts
                .iter_mut()
                .find(|o| o.name == s.name && o.source == s.source)
            {
                s.state = std::mem::take(&mut o.state);
                s.timer = o.timer.clone();
                s.stats = std::mem::take(&mut o.stats);
                kept += 1;
            }
        }
        (kept, self.scripts.len() - kept)
    }

    /// Every script's run counters.
    pub fn stats(&self) -> Vec<crate::status::ScriptStats> {
        self.scripts.iter().map(|s| s.stats.clone()).collect()
    }

    /// Every script's state, for the live database.
    pub fn saved_states(&self) -> Vec<ScriptState> {
        self.scripts
            .iter()
            .map(|s| ScriptState {
                name: s.name.clone(),
                source: s.source.clone(),
                state: rhai::format_map_as_json(&s.state),
            })
            .collect()
    }

    /// Restores states a previous run saved, for scripts whose source is
    /// unchanged. Returns how many were restored.
    pub fn restore(&mut self, saved: &[ScriptState]) -> usize {
        let mut n = 0;
        for s in &mut self.scripts {
            let Some(old) = saved
                .iter()
                .find(|o| o.name == s.name && o.source == s.source)
            else {
                continue;
            };
            match self.engine.parse_json(&old.state, true) {
                Ok(map) => {
                    s.state = map;
                    n += 1;
                }
                Err(e) => log::warn!(
                    "script {}: saved state cannot be read ({e}); starting fresh",
                    s.name
                ),
            }
        }
        n
    }

    /// Number of scripts.
    pub fn len(&self) -> usize {
        self.scripts.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.scripts.is_empty()
    }

    /// Runs the scripts that are due at `now` (cycle time stamp `ts`), in
    /// config order, against `table`. A script's sets are applied when it
    /// succeeds; when it fails, they are discarded, its error is logged, the
    /// tags it computes go to status 4 (script error), and the next script
    /// runs as usual.
    pub fn run_due(&mut self, table: &mut TagTable, now: Instant, ts: Timestamp) -> ScriptOutcome {
        let mut out = ScriptOutcome {
            first_new_tag: table.len(),
            ..ScriptOutcome::default()
        };
        {
            let mut ctx = self.ctx.borrow_mut();
            ctx.table = std::mem::take(table);
            ctx.now = Some(ts);
        }
        let local = ts.with_timezone(&chrono::Local).naive_local();
        for script in &mut self.scripts {
            if !script.timer.due(now, local, self.cycle) {
                continue;
            }
            {
                let mut ctx = self.ctx.borrow_mut();
                ctx.sets.clear();
                ctx.set_index.clear();
                ctx.script.clone_from(&script.name);
            }
            self.engine.set_max_operations(script.max_operations);
            self.watchdog.limit.set(script.max_time);
            self.watchdog
                .deadline
                .set(Some(Instant::now() + script.max_time));
            let mut scope = Scope::new();
            scope.push(
                "server",
                ScriptServer {
                    ctx: self.ctx.clone(),
                },
            );
            scope.push("rnd", Random);
            scope.push("state", script.state.clone());
            let result = self.engine.run_ast_with_scope(&mut scope, &script.ast);
            self.watchdog.deadline.set(None);
            script.stats.runs += 1;
            let mut ctx = self.ctx.borrow_mut();
            let sets = std::mem::take(&mut ctx.sets);
            ctx.set_index.clear();
            match result {
                Ok(()) => {
                    if let Some(state) = scope.get_value::<Map>("state") {
                        script.state = state;
                    }
                    for (name, state) in sets {
                        let idx = match ctx.table.find(&name) {
                            Some(i) => i,
                            None => ctx.table.add(
                                name.into(),
                                Origin::Calculated,
                                TagState::no_data(ts),
                            ),
                        };
                        if let Origin::Device { .. } = ctx.table.origins[idx] {
                            // Goes to the device; stored only when the device
                            // confirms it (the connector reports the write),
                            // never as a value the PLC may not hold.
                            if let Some(v) = &state.value {
                                out.writes.push((idx, v.clone()));
                            }
                            ctx.table.states[idx].value.clone_from(&state.value);
                            continue;
                        }
                        script.outputs.insert(idx);
                        let mut sample = Sample {
                            tag: idx,
                            value: state.value.clone(),
                            status: state.status,
                            ts: state.ts,
                        };
                        sample.check_nan();
                        let st = &mut ctx.table.states[idx];
                        if sample.value.is_some() {
                            st.value = state.value;
                        }
                        st.status = sample.status;
                        st.ts = state.ts;
                        out.samples.push(sample);
                    }
                }
                Err(e) => {
                    let err = ScriptError {
                        script: script.name.clone(),
                        line: e.position().line().unwrap_or(0),
                        message: describe(&e, script.max_time),
                    };
                    log::error!("{err}; its outputs are marked bad, the other scripts run on");
                    for &idx in &script.outputs {
                        let st = &mut ctx.table.states[idx];
                        st.status = Status::SCRIPT_ERROR;
                        st.ts = ts;
                        out.samples.push(Sample {
                            tag: idx,
                            value: st.value.clone(),
                            status: st.status,
                            ts,
                        });
                    }
                    script.stats.errors += 1;
                    script.stats.last_error = format!("line {}: {}", err.line, err.message);
                    out.errors.push(err);
                }
            }
        }
        *table = std::mem::take(&mut self.ctx.borrow_mut().table);
        out
    }
}

fn describe(e: &EvalAltResult, max_time: Duration) -> String {
    match e {
        EvalAltResult::ErrorTerminated(_, _) => {
            return format!(
                "stopped: exceeded its time limit of {} ms",
                max_time.as_millis()
            );
        }
        // `throw "…"` in a script, or an error of the server API: the
        // message is already in the plant's words.
        EvalAltResult::ErrorRuntime(value, _) => return value.to_string(),
        _ => {}
    }
    // The position is reported separately as `line`.
    let text = e.to_string();
    match text.rfind(" (line ") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

/// A small xorshift generator: scripts need plausible test values, not
/// cryptography, and this keeps a crate out of the gateway binary.
fn next_random(seed: &Cell<u64>) -> f64 {
    let mut x = seed.get();
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    seed.set(x);
    (x >> 11) as f64 / (1u64 << 53) as f64
}

fn number(d: &Dynamic) -> Result<f64, Box<EvalAltResult>> {
    d.as_float()
        .or_else(|_| d.as_int().map(|i| i as f64))
        .map_err(|t| format!("expected a number, found {t}").into())
}

fn build_engine(
    ctx: &Rc<RefCell<Context>>,
    watchdog: &Rc<Watchdog>,
    limits: &ScriptLimits,
) -> Engine {
    let mut engine = Engine::new();
    engine
        .set_max_call_levels(limits.max_call_levels)
        .set_max_expr_depths(128, 64)
        .set_max_string_size(limits.max_string_size)
        .set_max_array_size(limits.max_array_size)
        .set_max_map_size(limits.max_array_size);
    engine.disable_symbol("eval");

    let w = watchdog.clone();
    engine.on_progress(move |ops| {
        // Checking the clock every 1024 operations costs nothing measurable.
        if ops % 1024 == 0
            && let Some(deadline) = w.deadline.get()
            && Instant::now() > deadline
        {
            return Some(Dynamic::from(format!(
                "time limit of {} ms",
                w.limit.get().as_millis()
            )));
        }
        None
    });

    let c = ctx.clone();
    engine.on_print(move |s| {
        let name = c.borrow().script.clone();
        log::info!("script {name}: {s}");
    });
    let c = ctx.clone();
    engine.on_debug(move |s, _src, pos| {
        let name = c.borrow().script.clone();
        log::debug!("script {name} line {}: {s}", pos.line().unwrap_or(0));
    });

    engine
        .register_type_with_name::<ScriptTag>("Tag")
        .register_get("name", |t: &mut ScriptTag| t.name.clone())
        .register_get_set(
            "value",
            |t: &mut ScriptTag| t.value.clone(),
            |t: &mut ScriptTag, v: Dynamic| t.value = v,
        )
        .register_get_set(
            "status",
            |t: &mut ScriptTag| t.status,
            |t: &mut ScriptTag, s: INT| t.status = s,
        )
        .register_get("timestamp", |t: &mut ScriptTag| t.timestamp.clone())
        .register_fn("to_string", |t: &mut ScriptTag| {
            format!(
                "{}={} (status {}, {})",
                t.name, t.value, t.status, t.timestamp
            )
        })
        .register_fn("to_debug", |t: &mut ScriptTag| format!("{t:?}"));

    engine
        .register_type_with_name::<ScriptServer>("Server")
        .register_fn("get", |s: &mut ScriptServer, name: &str| s.get(name))
        .register_fn("set", |s: &mut ScriptServer, t: ScriptTag| {
            s.set(&t.name, t.value, t.status)
        })
        .register_fn("get_value", |s: &mut ScriptServer, name: &str| {
            s.get_value(name)
        })
        // The guard every script reading a device needs: a PLC that is off
        // gives statuses, not values, and `() * 10.0` is an error.
        .register_fn("good", |s: &mut ScriptServer, name: &str| {
            let ctx = s.ctx.borrow();
            ctx.lookup(name)
                .is_some_and(|t| t.status.is_good() && t.value.is_some())
        })
        .register_fn(
            "set_value",
            |s: &mut ScriptServer, name: &str, v: Dynamic| s.set(name, v, 0),
        );

    let seed = Rc::new(Cell::new(
        (std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64))
            | 1,
    ));
    let uniform = move |a: Dynamic, b: Dynamic| -> Result<f64, Box<EvalAltResult>> {
        let (a, b) = (number(&a)?, number(&b)?);
        Ok(a + (b - a) * next_random(&seed))
    };
    let u2 = uniform.clone();
    engine
        .register_type_with_name::<Random>("Random")
        .register_fn("uniform", uniform)
        .register_fn("uniform", move |_: &mut Random, a: Dynamic, b: Dynamic| {
            u2(a, b)
        });

    // Time helpers read the cycle's time stamp, so every script of a cycle
    // sees the same instant. Hours and weekdays are local, like shifts.
    let now = |c: &Rc<RefCell<Context>>| c.borrow().now.unwrap_or_else(chrono::Utc::now);
    let c = ctx.clone();
    engine.register_fn("now", move || format_ts(&now(&c)));
    let c = ctx.clone();
    engine.register_fn("now_ms", move || now(&c).timestamp_millis());
    let c = ctx.clone();
    engine.register_fn("hour", move || {
        INT::from(now(&c).with_timezone(&chrono::Local).hour())
    });
    let c = ctx.clone();
    engine.register_fn("minute", move || {
        INT::from(now(&c).with_timezone(&chrono::Local).minute())
    });
    let c = ctx.clone();
    engine.register_fn("weekday", move || {
        INT::from(
            now(&c)
                .with_timezone(&chrono::Local)
                .weekday()
                .number_from_monday(),
        )
    });
    let c = ctx.clone();
    engine.register_fn("date", move || {
        now(&c)
            .with_timezone(&chrono::Local)
            .format("%Y-%m-%d")
            .to_string()
    });
    engine
}

impl Context {
    /// The state a script sees for `name`: what this run already set
    /// (read-your-writes), else the table's.
    fn lookup(&self, name: &str) -> Option<&TagState> {
        match self.set_index.get(name) {
            Some(&i) => Some(&self.sets[i].1),
            None => self.table.find(name).map(|i| &self.table.states[i]),
        }
    }
}

impl ScriptServer {
    fn get(&self, name: &str) -> ScriptTag {
        let ctx = self.ctx.borrow();
        match ctx.lookup(name) {
            Some(s) => ScriptTag {
                name: name.to_string(),
                value: s.value.as_ref().map_or(Dynamic::UNIT, to_dynamic),
                status: INT::from(s.status.0),
                timestamp: format_ts(&s.ts),
            },
            // A name nobody defined yet: setting it creates a calculated tag.
            None => ScriptTag {
                name: name.to_string(),
                value: Dynamic::UNIT,
                status: INT::from(Status::NO_DATA.0),
                timestamp: ctx.now.as_ref().map(format_ts).unwrap_or_default(),
            },
        }
    }

    fn get_value(&self, name: &str) -> Dynamic {
        let ctx = self.ctx.borrow();
        ctx.lookup(name)
            .and_then(|s| s.value.as_ref())
            .map_or(Dynamic::UNIT, to_dynamic)
    }

    fn set(&self, name: &str, value: Dynamic, status: INT) -> Result<(), Box<EvalAltResult>> {
        if name.starts_with("_storage.") {
            return Err(format!("tag `{name}` belongs to storage's diagnostics").into());
        }
        let mut ctx = self.ctx.borrow_mut();
        let origin = ctx.table.find(name).map(|i| ctx.table.origins[i]);
        if let Some(Origin::Device {
            writable: false, ..
        }) = origin
        {
            return Err(format!("tag `{name}` is read from a device and is not writable").into());
        }
        let value = to_value(&value)
            .map_err(|m| -> Box<EvalAltResult> { format!("tag `{name}`: {m}").into() })?;
        // A value the device tag cannot hold exactly is refused here, with
        // the script's line, before anything goes to the wire.
        if let (Some((connector, local, _)), Some(v)) = (origin.and_then(Origin::as_device), &value)
            && let Some(kind) = ctx.devices.get(connector)
            && let Err(m) = kind.check_write(local, v)
        {
            return Err(format!("tag `{name}`: {m}; not written").into());
        }
        let status = u16::try_from(status)
            .map(Status)
            .map_err(|_| -> Box<EvalAltResult> {
                format!("tag `{name}`: status {status} is not 0..65535").into()
            })?;
        let ts = ctx.now.unwrap_or_else(chrono::Utc::now);
        let state = TagState { value, status, ts };
        match ctx.set_index.get(name) {
            Some(&i) => ctx.sets[i].1 = state,
            None => {
                let i = ctx.sets.len();
                ctx.set_index.insert(name.to_string(), i);
                ctx.sets.push((name.to_string(), state));
            }
        }
        Ok(())
    }
}

fn to_dynamic(v: &Value) -> Dynamic {
    match v {
        Value::Bool(b) => Dynamic::from_bool(*b),
        Value::Int(i) => Dynamic::from_int(*i),
        // Rhai's integers are i64: a u64 above i64::MAX arrives as a float
        // (approximate; see the README for writing one back exactly).
        Value::UInt(u) => Dynamic::from_float(*u as f64),
        Value::Float(f) => Dynamic::from_float(*f),
        Value::Str(s) => Dynamic::from(s.clone()),
        Value::Array(a) => Dynamic::from_array(a.iter().map(to_dynamic).collect()),
    }
}

fn to_value(d: &Dynamic) -> Result<Option<Value>, String> {
    if d.is_unit() {
        return Ok(None);
    }
    if let Ok(b) = d.as_bool() {
        return Ok(Some(Value::Bool(b)));
    }
    if let Ok(i) = d.as_int() {
        return Ok(Some(Value::Int(i)));
    }
    if let Ok(f) = d.as_float() {
        return Ok(Some(Value::Float(f)));
    }
    if d.is_string() {
        return Ok(Some(Value::Str(
            d.clone().into_string().unwrap_or_default(),
        )));
    }
    if d.is_array() {
        let arr: Array = d.clone().into_array().unwrap_or_default();
        let items = arr
            .iter()
            .map(|x| match to_value(x) {
                Ok(Some(v @ (Value::Bool(_) | Value::Int(_) | Value::Float(_)))) => Ok(v),
                _ => Err("an array value must hold numbers or bools only".to_string()),
            })
            .collect::<Result<Vec<Value>, _>>()?;
        return Ok(Some(Value::Array(items)));
    }
    Err(format!("cannot store a value of type {}", d.type_name()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use schedule::Schedule;
    use std::path::PathBuf;

    fn host(scripts: &[(&str, &str)]) -> Result<ScriptHost, Errors> {
        let dir = std::env::temp_dir().join(format!(
            "rtds-script-{}-{}",
            std::process::id(),
            scripts[0].0
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let configs: Vec<ScriptConfig> = scripts
            .iter()
            .map(|(name, src)| {
                let file: PathBuf = dir.join(format!("{name}.rhai"));
                std::fs::write(&file, src).unwrap();
                ScriptConfig {
                    name: name.to_string(),
                    file,
                    schedule: Schedule::EveryCycle,
                    max_operations: ScriptLimits::default().max_operations,
                    max_time: Duration::from_secs(30),
                }
            })
            .collect();
        ScriptHost::new(
            &configs,
            &ScriptLimits::default(),
            Duration::from_secs(1),
            Vec::new(),
        )
    }

    fn table() -> TagTable {
        let mut t = TagTable::default();
        let now = Utc::now();
        let good = |v: Value| TagState {
            value: Some(v),
            status: Status::GOOD,
            ts: now,
        };
        t.add(
            "Tag_1".into(),
            Origin::Device {
                connector: 0,
                local: 0,
                writable: false,
            },
            good(Value::Int(7)),
        );
        t.add(
            "Setpoint".into(),
            Origin::Device {
                connector: 0,
                local: 1,
                writable: true,
            },
            good(Value::Int(0)),
        );
        t.add(
            "Block".into(),
            Origin::Device {
                connector: 0,
                local: 2,
                writable: false,
            },
            good(Value::Array(vec![Value::Float(1.0), Value::Float(2.0)])),
        );
        t
    }

    #[test]
    fn the_seed_example_derives_a_tag() {
        let mut h = host(&[(
            "seed",
            r#"let tgv = server.get("Tag_1");
               print(tgv);
               let out = server.get("Derived");
               out.value = tgv.value * 2.5;
               out.status = 0;
               server.set(out);"#,
        )])
        .unwrap();
        let mut t = table();
        let out = h.run_due(&mut t, Instant::now(), Utc::now());
        assert!(out.errors.is_empty(), "{:?}", out.errors);
        let i = t.find("Derived").unwrap();
        assert_eq!(t.states[i].value, Some(Value::Float(17.5)));
        assert_eq!(t.states[i].status, Status::GOOD);
        assert_eq!(out.first_new_tag, 3);
        assert_eq!(out.samples.len(), 1);
        assert!(out.writes.is_empty());
    }

    #[test]
    fn writable_tags_become_writes_and_read_only_ones_are_errors() {
        let mut h = host(&[
            ("w", r#"server.set_value("Setpoint", 42);"#),
            ("ro", "\n\nserver.set_value(\"Tag_1\", 1);"),
            ("after", r#"server.set_value("Ran", true);"#),
        ])
        .unwrap();
        let mut t = table();
        let out = h.run_due(&mut t, Instant::now(), Utc::now());
        assert_eq!(out.writes, vec![(1, Value::Int(42))]);
        assert_eq!(out.errors.len(), 1);
        assert_eq!(
            (out.errors[0].script.as_str(), out.errors[0].line),
            ("ro", 3)
        );
        assert!(
            out.errors[0].message.contains("not writable"),
            "{}",
            out.errors[0]
        );
        assert_eq!(
            t.states[t.find("Ran").unwrap()].value,
            Some(Value::Bool(true))
        );
        assert_eq!(t.states[0].value, Some(Value::Int(7)));
    }

    #[test]
    fn a_failing_run_discards_its_sets_and_marks_outputs_bad() {
        let mut h = host(&[(
            "flaky",
            r#"let n = server.get_value("Tag_1");
               server.set_value("Out", n);
               if n > 7 { throw "too big"; }"#,
        )])
        .unwrap();
        let mut t = table();
        h.run_due(&mut t, Instant::now(), Utc::now());
        let out_idx = t.find("Out").unwrap();
        assert_eq!(t.states[out_idx].value, Some(Value::Int(7)));
        t.states[0].value = Some(Value::Int(8));
        let out = h.run_due(&mut t, Instant::now(), Utc::now());
        assert_eq!(out.errors.len(), 1);
        assert_eq!(
            t.states[out_idx].value,
            Some(Value::Int(7)),
            "set discarded"
        );
        assert_eq!(t.states[out_idx].status, Status::SCRIPT_ERROR);
    }

    #[test]
    fn an_endless_loop_is_stopped() {
        let mut h = host(&[("forever", "loop { }")]).unwrap();
        let mut t = table();
        let start = Instant::now();
        let out = h.run_due(&mut t, Instant::now(), Utc::now());
        assert_eq!(out.errors.len(), 1);
        assert!(
            out.errors[0].message.contains("operations"),
            "{}",
            out.errors[0]
        );
        assert!(start.elapsed() < Duration::from_secs(20));
    }

    #[test]
    fn arrays_unpack_and_compile_errors_name_the_line() {
        let mut h = host(&[(
            "unpack",
            r#"let b = server.get_value("Block");
               for (x, i) in b { server.set_value("Block_" + i, x); }"#,
        )])
        .unwrap();
        let mut t = table();
        let out = h.run_due(&mut t, Instant::now(), Utc::now());
        assert!(out.errors.is_empty(), "{:?}", out.errors);
        assert_eq!(
            t.states[t.find("Block_1").unwrap()].value,
            Some(Value::Float(2.0))
        );
        // Every script that does not compile, each with its line.
        let e = host(&[("broken", "let x = 1;\nlet y = ;"), ("also", "let ;")])
            .err()
            .unwrap();
        assert_eq!(e.len(), 2, "{e}");
        let broken = e.0.iter().find(|x| x.message.contains("broken")).unwrap();
        assert_eq!(broken.line, 2, "{e}");
        assert!(e.0.iter().any(|x| x.message.contains("`also`")), "{e}");
    }

    #[test]
    fn state_persists_between_runs_and_is_discarded_on_error() {
        let mut h = host(&[(
            "total",
            r#"state.total = (state.total ?? 0) + server.get_value("Tag_1");
               server.set_value("Total", state.total);
               if state.total > 20 { throw "boom"; }"#,
        )])
        .unwrap();
        let mut t = table();
        let total = |h: &mut ScriptHost, t: &mut TagTable| {
            let out = h.run_due(t, Instant::now(), Utc::now());
            (
                t.states[t.find("Total").unwrap()].value.clone(),
                out.errors.len(),
            )
        };
        assert_eq!(total(&mut h, &mut t), (Some(Value::Int(7)), 0));
        assert_eq!(total(&mut h, &mut t), (Some(Value::Int(14)), 0));
        // 21 > 20: the run fails, its state change is dropped, so the next
        // run starts again from 14 and fails the same way.
        assert_eq!(total(&mut h, &mut t), (Some(Value::Int(14)), 1));
        assert_eq!(total(&mut h, &mut t), (Some(Value::Int(14)), 1));
    }

    #[test]
    fn the_seed_random_example_ports_one_to_one() {
        let mut h = host(&[(
            "seed_random",
            r#"let tgv = server.get("Random");
               tgv.value = rnd.uniform(0, 100);
               tgv.status = 0;
               server.set(tgv);
               server.set_value("R2", uniform(-1.5, 1.5));"#,
        )])
        .unwrap();
        let mut t = table();
        let mut seen = Vec::new();
        for _ in 0..50 {
            let out = h.run_due(&mut t, Instant::now(), Utc::now());
            assert!(out.errors.is_empty(), "{:?}", out.errors);
            let Some(Value::Float(r)) = t.states[t.find("Random").unwrap()].value else {
                panic!()
            };
            let Some(Value::Float(r2)) = t.states[t.find("R2").unwrap()].value else {
                panic!()
            };
            assert!(
                (0.0..100.0).contains(&r) && (-1.5..1.5).contains(&r2),
                "{r} {r2}"
            );
            seen.push(r);
        }
        seen.dedup();
        assert!(seen.len() > 40, "values vary");
    }

    #[test]
    fn time_helpers_use_the_cycle_time() {
        let mut h = host(&[(
            "time",
            r#"server.set_value("Now", now());
               server.set_value("Ms", now_ms());
               server.set_value("Hour", hour());
               server.set_value("Dow", weekday());"#,
        )])
        .unwrap();
        let mut t = table();
        let ts = chrono::DateTime::parse_from_rfc3339("2026-11-24T06:10:50.123Z")
            .unwrap()
            .to_utc();
        h.run_due(&mut t, Instant::now(), ts);
        let v = |n: &str| t.states[t.find(n).unwrap()].value.clone().unwrap();
        assert_eq!(v("Now"), Value::Str("2026-11-24T06:10:50.123Z".into()));
        assert_eq!(v("Ms"), Value::Int(ts.timestamp_millis()));
        let local = ts.with_timezone(&chrono::Local);
        assert_eq!(v("Hour"), Value::Int(i64::from(local.hour())));
        assert_eq!(
            v("Dow"),
            Value::Int(i64::from(local.weekday().number_from_monday()))
        );
    }

    #[test]
    fn a_slow_script_is_stopped_by_its_time_limit() {
        let dir = std::env::temp_dir().join(format!("rtds-script-{}-slow", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("slow.rhai");
        std::fs::write(&file, "let x = 0; loop { x += 1; }").unwrap();
        let cfg = ScriptConfig {
            name: "slow".into(),
            file,
            schedule: Schedule::EveryCycle,
            max_operations: u64::MAX,
            max_time: Duration::from_millis(100),
        };
        let mut h = ScriptHost::new(
            &[cfg],
            &ScriptLimits::default(),
            Duration::from_secs(1),
            Vec::new(),
        )
        .unwrap();
        let mut t = table();
        let start = Instant::now();
        let out = h.run_due(&mut t, Instant::now(), Utc::now());
        assert!(start.elapsed() < Duration::from_secs(2));
        assert_eq!(out.errors.len(), 1);
        assert!(
            out.errors[0].message.contains("time limit of 100 ms"),
            "{}",
            out.errors[0]
        );
    }

    #[test]
    fn schedules_decide_which_scripts_run() {
        let dir = std::env::temp_dir().join(format!("rtds-script-{}-sched", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mk = |name: &str, schedule: Schedule| {
            let file = dir.join(format!("{name}.rhai"));
            std::fs::write(
                &file,
                format!("server.set_value(\"{name}\", (server.get_value(\"{name}\") ?? 0) + 1);"),
            )
            .unwrap();
            ScriptConfig {
                name: name.into(),
                file,
                schedule,
                max_operations: 1_000_000,
                max_time: Duration::from_secs(30),
            }
        };
        let cfgs = [
            mk("each", Schedule::EveryCycle),
            mk("every3", Schedule::Every(Duration::from_secs(3))),
            mk(
                "hourly",
                Schedule::Cron(schedule::Cron::parse("0 * * * *").unwrap()),
            ),
        ];
        let mut h = ScriptHost::new(
            &cfgs,
            &ScriptLimits::default(),
            Duration::from_secs(1),
            Vec::new(),
        )
        .unwrap();
        let mut t = table();
        let t0 = Instant::now();
        // Ten one-second cycles from 12:59:55 local time.
        let start = chrono::Local::now()
            .with_hour(12)
            .and_then(|d| d.with_minute(59))
            .and_then(|d| d.with_second(55))
            .unwrap();
        for i in 0..10u32 {
            let now = t0 + Duration::from_secs(u64::from(i));
            let ts = (start + chrono::Duration::seconds(i64::from(i))).to_utc();
            h.run_due(&mut t, now, ts);
        }
        let v = |n: &str| t.states[t.find(n).unwrap()].value.clone();
        assert_eq!(v("each"), Some(Value::Int(10)));
        assert_eq!(v("every3"), Some(Value::Int(4)), "cycles 0, 3, 6, 9");
        assert_eq!(v("hourly"), Some(Value::Int(1)), "once, at 13:00");
    }
}
