//! `rtds`: the command line. Parses arguments, calls into the library, maps
//! errors to exit codes (0 ok, 1 runtime failure, 2 invalid configuration).

use rtds::config::Config;
use rtds::model::{Status, Value};
use rtds::server::{Control, Server};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use simplelog::{CombinedLogger, ConfigBuilder, SharedLogger, WriteLogger};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

const USAGE: &str = "\
usage: rtds COMMAND [-c FILE] [options]

commands:
  run      run the server (what the init script and the systemd unit start)
  check    validate the configuration, print the scan and its requests; touches no device
  status   print every tag's value, status and time from the live database
  read     read every tag from the devices now: address, raw registers in hex, value
  write    write one value to one tag through its connector, then read it back
  scan     find the Modbus unit ids that answer on a line, with ready-to-paste connection strings
  ack      acknowledge the archive up to an id or a time stamp, for the Historian
  browse   list an OPC UA server's nodes (id, name, type, access) to copy into tags
  cert     create or show RTDS's OPC UA certificate, to give to the servers

examples:
  rtds check -c /etc/rtds/rtds.ron
  rtds run -c /etc/rtds/rtds.ron
  rtds read -c conf/rtds.ron --orders        each 32/64-bit tag in all four byte orders
  rtds read -c conf/rtds.ron --every 1000    read again every second (Ctrl-C stops)
  rtds write -c conf/rtds.ron Setpoint 42
  rtds scan 'connector=ModbusRtu; device=/dev/ttyUSB0; baud=9600; parity=N' --units 1-32
  rtds status -c conf/rtds.ron --watch 1000
  rtds ack -c /etc/rtds/rtds.ron 4711
  rtds browse -c conf/rtds.ron line1 'ns=2;s=Line1'

options go anywhere; -c defaults to /etc/rtds/rtds.ron. `rtds COMMAND --help`
explains one command. -V prints the version.
exit status: 0 ok, 1 runtime failure, 2 invalid configuration or usage
signals (run): SIGTERM/SIGINT stop cleanly, SIGHUP reloads the configuration
";

const HELP_RUN: &str = "\
usage: rtds run -c FILE [--scans N]

Runs the server: the scan (read, scripts, writes, store), segments for the
Historian, SIGHUP reloads FILE (refused if invalid), SIGTERM/SIGINT stop
after storing everything. Logs to stderr and to the configured file.
--scans N stops the same way once every connector has answered N reads
(a commissioning check that stores a few scans; the benchmarks' fixed work).
Exit status 1 if archive rows were lost: not written nor spooled at the stop,
or dropped because a queue was full (the log says how many).
";

const HELP_CHECK: &str = "\
usage: rtds check -c FILE

Validates FILE, its tag files and scripts (errors name file and line, all
of them at once where possible) and prints the scan, the tag counts and the
requests one scan sends. Touches no device. Exit status 2 when invalid.
";

const HELP_STATUS: &str = "\
usage: rtds status -c FILE [--watch [MS]]

Prints every tag's current value, status and time from the live database,
with the count of device, diagnostic and calculated tags. --watch refreshes
every MS milliseconds (default 1000) until Ctrl-C.
";

const HELP_READ: &str = "\
usage: rtds read -c FILE [--orders] [--every MS] [--scans N] [CONNECTOR]

Connects to every connector (or only CONNECTOR), reads its tags with the
requests one scan sends (the plan `rtds check` prints; a block the device
refuses is read tag by tag) and prints each tag's address (protocol and
Modicon), type and byte order, the raw registers in hex and the decoded
value. --orders adds the
value decoded in all four byte orders, so a wrong order stands out.
--every MS repeats every MS milliseconds until Ctrl-C; --scans N stops
after N readings. The server need not run; a one-client device must not be
held by it.
";

const HELP_WRITE: &str = "\
usage: rtds write -c FILE TAG VALUE

Writes VALUE to the writable device tag TAG through its connector, with the
checks a script's write gets (range, type, NaN), then reads the tag back
and prints what the device holds (7.4 on a u16 register is 7). Integers are
exact; a u64 above 9223372036854775807 is given as its digits; bools as
true/false or 1/0; an array tag takes a JSON array ([1, 2] or [\"a,b\", \"c\"]).
";

const HELP_SCAN: &str = "\
usage: rtds scan 'connector=ModbusRtu; device=DEV; baud=…; parity=…' [--units A-B] [--timeout MS]
       rtds scan -c FILE CONNECTOR [--units A-B] [--timeout MS]

Asks every unit id in A-B (default 1-247) for holding register 0 on a
Modbus line, one after the other, and lists those that answer: with the
register's value, or with an exception (the device is there, register 0
is not in its map). Garbled answers point at a wrong baud rate or parity,
or two devices with one id. Then prints a connection string for each unit
found, ready to paste. The line is given by a connection string (ModbusRtu,
ModbusRtuTcp or ModbusTcp to a gateway; its unit_id is ignored) or by a
connector of FILE. --timeout MS is the wait per unit (default: the frames'
time on the line plus 100 ms; 200 ms over TCP); the total is bounded by
units × timeout, printed first. The server must not hold the line.
Exit status 0 when a device answered, 1 when none did.
";

const HELP_ACK: &str = "\
usage: rtds ack -c FILE N|TS

Acknowledges the archive for the Historian, through the live database:
  N   every row up to archive id N is stored (the contract; its segments go)
  TS  a time stamp such as 2026-11-24T06:00:00Z: segments published before
      it (and before now) whose rows are all older than it
Refused (exit 2) when N was not published yet, TS is in the future, or it
goes back before the acknowledgement in force. Waits up to 3 s for the
running server's answer.
";

const HELP_BROWSE: &str = "\
usage: rtds browse -c FILE CONNECTOR [NODE]

Connects to the OPC UA server of CONNECTOR with its settings (endpoint,
security, login) and lists the children of NODE (default i=85, the Objects
folder): node id, browse name, node class, and for variables the data type
and access (r, rw). Then prints the variables as tag lines ready to paste
into the connector's `tags`. Browse deeper by giving a listed node id.
";

const HELP_CERT: &str = "\
usage: rtds cert -c FILE CONNECTOR
       rtds cert -c FILE http

Creates RTDS's OPC UA application certificate for CONNECTOR's PKI directory
if there is none (RTDS also does this at its first secure connection), and
prints its path, SHA-1 thumbprint and application URI: give the .der file
to the server's administrator to trust. Server certificates RTDS refused
wait in the PKI's rejected/ directory; move one into trusted/ to accept it.

With `http`: the status server's HTTPS certificate and key (the http
section's `tls` files), made self-signed for this machine's name, the
`hosts`, localhost and the listen address when neither file exists (RTDS
also does this at start); prints its SHA-256 fingerprint.
";

/// The command line, parsed: options may stand anywhere.
#[derive(Default)]
struct Args {
    command: Option<String>,
    config: Option<PathBuf>,
    help: bool,
    version: bool,
    scans: Option<u32>,
    every: Option<u64>,
    orders: bool,
    watch: Option<u64>,
    units: Option<String>,
    timeout: Option<u64>,
    words: Vec<String>,
}

const COMMANDS: [&str; 9] = [
    "run", "check", "status", "read", "write", "scan", "ack", "browse", "cert",
];

fn parse_args(argv: &[String]) -> Result<Args, String> {
    let mut a = Args::default();
    let mut pending: Vec<String> = Vec::new();
    let mut k = 0;
    let next = |k: &mut usize| -> Option<String> {
        *k += 1;
        argv.get(*k).cloned()
    };
    let number = |v: Option<String>, what: &str| -> Result<u64, String> {
        v.as_deref()
            .and_then(|n| n.parse::<u64>().ok())
            .filter(|n| *n > 0 && *n <= 86_400_000)
            .ok_or_else(|| format!("{what} needs a number (1 to 86400000)"))
    };
    while k < argv.len() {
        let arg = argv[k].as_str();
        match arg {
            "-h" | "--help" => a.help = true,
            "-V" | "--version" => a.version = true,
            "-c" | "--config" => {
                a.config = Some(PathBuf::from(
                    next(&mut k).ok_or("-c needs a file: -c /etc/rtds/rtds.ron")?,
                ))
            }
            "--scans" => {
                a.scans = Some(number(next(&mut k), "--scans")?.min(u64::from(u32::MAX)) as u32)
            }
            "--every" => a.every = Some(number(next(&mut k), "--every")?),
            "--orders" => a.orders = true,
            "--units" => {
                a.units = Some(next(&mut k).ok_or("--units needs unit ids: --units 1-32")?)
            }
            "--timeout" => a.timeout = Some(number(next(&mut k), "--timeout")?),
            "--watch" => {
                // An optional period: the next word if it is a number.
                match argv.get(k + 1).and_then(|n| n.parse::<u64>().ok()) {
                    Some(ms) if ms > 0 && ms <= 86_400_000 => {
                        a.watch = Some(ms);
                        k += 1;
                    }
                    _ => a.watch = Some(1000),
                }
            }
            // A negative number is a value (`rtds write … Offset -5`).
            w if w.starts_with('-') && w.parse::<f64>().is_err() => {
                return Err(format!("unknown option `{w}`"));
            }
            w if a.command.is_none() && COMMANDS.contains(&w) => a.command = Some(w.to_string()),
            w => pending.push(w.to_string()),
        }
        k += 1;
    }
    if a.command.is_none() && !pending.is_empty() {
        return Err(format!(
            "unknown command `{}` (commands: {})",
            pending[0],
            COMMANDS.join(", ")
        ));
    }
    a.words = pending;
    Ok(a)
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let args = match parse_args(&argv) {
        Ok(a) => a,
        Err(e) => return usage_error(&e),
    };
    if args.version {
        println!("rtds {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    let Some(command) = args.command.as_deref() else {
        if args.help {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        eprint!("{USAGE}");
        return ExitCode::from(2);
    };
    if args.help {
        print!(
            "{}",
            match command {
                "run" => HELP_RUN,
                "check" => HELP_CHECK,
                "status" => HELP_STATUS,
                "read" => HELP_READ,
                "write" => HELP_WRITE,
                "scan" => HELP_SCAN,
                "browse" => HELP_BROWSE,
                "cert" => HELP_CERT,
                _ => HELP_ACK,
            }
        );
        return ExitCode::SUCCESS;
    }
    let words = args.words.len();
    let (wanted, what) = match command {
        "write" => (2, "a tag and a value: rtds write -c FILE TAG VALUE"),
        "ack" => (1, "an archive id or a time stamp: rtds ack -c FILE 4711"),
        "read" => (words.min(1), ""),
        "scan" => (
            1,
            "a line: rtds scan 'connector=ModbusRtu; device=/dev/ttyUSB0; …' or rtds scan -c FILE CONNECTOR",
        ),
        "browse" => (
            words.clamp(1, 2),
            "a connector: rtds browse -c FILE CONNECTOR [NODE]",
        ),
        "cert" => (1, "a connector or `http`: rtds cert -c FILE CONNECTOR"),
        _ => (0, ""),
    };
    if words != wanted {
        return usage_error(&if wanted == 0 {
            format!("`rtds {command}` takes no `{}`", args.words[0])
        } else {
            format!("`rtds {command}` needs {what}")
        });
    }
    let config = args
        .config
        .clone()
        .unwrap_or_else(|| PathBuf::from("/etc/rtds/rtds.ron"));
    if command != "run" {
        // One-shot commands write to stdout: end quietly when the reader
        // goes away (`rtds check | head`) instead of panicking. The server
        // keeps Rust's default of ignoring SIGPIPE.
        // SAFETY: called before any thread starts; SIG_DFL is always valid.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    match command {
        "check" => check(&config),
        "status" => status(&config, args.watch),
        "read" => read(&config, &args),
        "write" => write(&config, &args.words[0], &args.words[1]),
        "scan" => scan(&config, &args),
        "ack" => ack(&config, &args.words[0]),
        "browse" => opcua_tool(&config, &args.words, rtds::commission::browse),
        "cert" if args.words[0] == "http" => match load(&config) {
            Err(code) => code,
            Ok(c) if c.connectors.iter().any(|k| k.name == "http") => {
                opcua_tool(&config, &args.words, rtds::commission::certificate)
            }
            Ok(c) => print_lines(rtds::commission::http_certificate(&c)),
        },
        "cert" => opcua_tool(&config, &args.words, rtds::commission::certificate),
        _ => run(&config, args.scans),
    }
}

fn usage_error(msg: &str) -> ExitCode {
    eprintln!(
        "rtds: {msg}\n(`rtds --help` lists the commands, `rtds COMMAND --help` explains one)"
    );
    ExitCode::from(2)
}

fn load(path: &Path) -> Result<Config, ExitCode> {
    if !path.exists() {
        let shown = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        eprintln!(
            "rtds: configuration file {} not found; give one with -c FILE (the demo's is conf/rtds.ron)",
            shown.display()
        );
        return Err(ExitCode::from(2));
    }
    Config::load(path).map_err(|e| {
        if e.len() == 1 {
            eprintln!("rtds: invalid configuration: {e}");
        } else {
            // One error a line, then the count.
            eprintln!("rtds: invalid configuration:\n{e}");
        }
        ExitCode::from(2)
    })
}

/// The live database, or the message a user needs before the first run.
fn live_db(config: &Config, path: &Path) -> Result<rusqlite::Connection, ExitCode> {
    let db = &config.storage.path;
    if !db.exists() {
        eprintln!(
            "rtds: no database yet at {}: start `rtds run -c {}` first",
            db.display(),
            path.display()
        );
        return Err(ExitCode::from(1));
    }
    rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(
        |e| {
            eprintln!("rtds: {}: {e}", db.display());
            ExitCode::from(1)
        },
    )
}

/// A flag set by SIGINT/SIGTERM, for the commands that repeat until Ctrl-C.
fn interrupted() -> std::sync::Arc<std::sync::atomic::AtomicBool> {
    let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for sig in [SIGINT, SIGTERM] {
        let _ = signal_hook::flag::register(sig, flag.clone());
    }
    flag
}

/// Sleeps `ms` in short steps; false once interrupted.
fn pause(ms: u64, stop: &std::sync::atomic::AtomicBool) -> bool {
    let until = std::time::Instant::now() + std::time::Duration::from_millis(ms);
    while std::time::Instant::now() < until {
        if stop.load(std::sync::atomic::Ordering::Relaxed) {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    !stop.load(std::sync::atomic::Ordering::Relaxed)
}

fn check(path: &Path) -> ExitCode {
    let config = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if let Err(e) = rtds::server::scripts_for(&config) {
        eprintln!("rtds: invalid configuration: {e}");
        return ExitCode::from(2);
    }
    let tags: usize = config.connectors.iter().map(|c| c.tags.len()).sum();
    use rtds::diagnostics::{Family, Link, Store};
    let diagnostic = config.connectors.len() * Link::ALL.len() + Store::ALL.len();
    println!("{}: valid", path.display());
    let st = &config.storage;
    println!(
        "cycle {} ms; live database {} (journal {}, synchronous {})",
        config.cycle.as_millis(),
        st.path.display(),
        st.journal_mode,
        st.synchronous
    );
    println!(
        "segments: staged in {}, published to {}, closed at {} rows, {} MB or {} s",
        st.staging.display(),
        st.outbox.display(),
        st.segment.max_rows,
        st.segment.max_mb,
        st.segment.max_age_s
    );
    println!(
        "{} connectors, {} scripts; {} (calculated tags appear when scripts first set them)",
        config.connectors.len(),
        config.scripts.len(),
        rtds::server::tag_counts(tags, diagnostic, 0)
    );
    // The scan, as the central loop runs it.
    let cycle_ms = config.cycle.as_millis().max(1);
    let reads: Vec<String> = config
        .connectors
        .iter()
        .map(|c| match c.interval.as_millis() / cycle_ms {
            1 => c.name.clone(),
            n => format!("{} (every {n}th cycle)", c.name),
        })
        .collect();
    println!(
        "scan every {} ms: 1. read {}; 2. wait for the reads at most {} ms; 3. run {} scripts; 4. send writes; 5. store",
        cycle_ms,
        if reads.is_empty() {
            "nothing".to_string()
        } else {
            reads.join(", ")
        },
        config.read_deadline.as_millis(),
        config.scripts.len()
    );
    let mut endpoints: Vec<(rtds::connector::Endpoint, Vec<&str>)> = Vec::new();
    for c in &config.connectors {
        if let Some(e) = c.kind.endpoint() {
            match endpoints.iter_mut().find(|(x, _)| *x == e) {
                Some((_, names)) => names.push(&c.name),
                None => endpoints.push((e, vec![&c.name])),
            }
        }
    }
    for (e, names) in endpoints.iter().filter(|(_, n)| n.len() > 1) {
        println!("connectors {} share one link to {e}", names.join(", "));
    }
    for c in &config.connectors {
        println!(
            "connector {}: {}, every {} ms, {} tags",
            c.name,
            c.kind.describe(),
            c.interval.as_millis(),
            c.tags.len()
        );
        for line in c.kind.describe_scan() {
            println!("  {line}");
        }
    }
    for s in &config.scripts {
        let when = &s.schedule;
        println!(
            "script {}: {}, {when}, at most {} operations and {} ms per run",
            s.name,
            s.file.display(),
            s.max_operations,
            s.max_time.as_millis()
        );
    }
    ExitCode::SUCCESS
}

fn init_logging(config: &Config) -> Result<(), String> {
    let log_config = ConfigBuilder::new()
        .set_time_format_rfc3339()
        .set_thread_level(simplelog::LevelFilter::Off)
        .set_target_level(simplelog::LevelFilter::Off)
        .build();
    let mut loggers: Vec<Box<dyn SharedLogger>> = vec![WriteLogger::new(
        config.log_level,
        log_config.clone(),
        std::io::stderr(),
    )];
    if let Some(file) = &config.log_file {
        if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("log directory {}: {e}", dir.display()))?;
        }
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(file)
            .map_err(|e| format!("log file {}: {e}", file.display()))?;
        loggers.push(WriteLogger::new(config.log_level, log_config, f));
    }
    log::set_max_level(config.log_level);
    log::set_boxed_logger(Box::new(QuietStack {
        inner: CombinedLogger::new(loggers),
        verbose: config.log_level >= log::LevelFilter::Debug,
    }))
    .map_err(|e| e.to_string())
}

/// Keeps the OPC UA stack's own log (open62541: every channel opened,
/// endpoint chosen, item deleted) for `level: "debug"`: at info the
/// connector's lines say what matters (connected, lost, why), once.
struct QuietStack {
    inner: Box<CombinedLogger>,
    verbose: bool,
}

impl log::Log for QuietStack {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        (self.verbose || !metadata.target().starts_with("open62541"))
            && self.inner.enabled(metadata)
    }

    fn log(&self, record: &log::Record) {
        if self.enabled(record.metadata()) {
            self.inner.log(record);
        }
    }

    fn flush(&self) {
        self.inner.flush();
    }
}

fn run(path: &Path, scans: Option<u32>) -> ExitCode {
    tune_malloc();
    let config = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if let Err(e) = init_logging(&config) {
        eprintln!("rtds: {e}");
        return ExitCode::from(1);
    }
    // Bounded: a signal that finds it full is one already waiting (stop
    // and reload are the same request twice).
    let (tx, control) = crossbeam_channel::bounded(4);
    let mut signals = match signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP]) {
        Ok(s) => s,
        Err(e) => {
            log::error!("cannot install signal handlers: {e}");
            return ExitCode::from(1);
        }
    };
    let handle = signals.handle();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                let c = if sig == SIGHUP {
                    Control::Reload
                } else {
                    Control::Stop
                };
                if let Err(crossbeam_channel::TrySendError::Disconnected(_)) = tx.try_send(c) {
                    break;
                }
            }
        })
        .ok();
    // The HTTP server binds first: an address that is taken stops the
    // start with a clear line rather than running without the page.
    let (queries_tx, queries) = crossbeam_channel::bounded(64);
    if let Some(http) = config.http.clone()
        && let Err(e) = rtds::http::spawn(http, queries_tx.clone())
    {
        log::error!("cannot start: {e}");
        return ExitCode::from(1);
    }
    let mut server = match Server::start(config, queries_tx) {
        Ok(s) => s,
        Err(e) => {
            log::error!("cannot start: {e}");
            return ExitCode::from(match e {
                rtds::server::ServerError::Config(_) => 2,
                _ => 1,
            });
        }
    };
    server.serve(queries);
    if let Some(n) = scans {
        server.stop_after(u64::from(n));
    }
    let summary = server.run(control);
    handle.close();
    if summary.storage.lost > 0
        || summary.storage.overflowed > 0
        || summary.storage.failed
        || summary.outputs_lost > 0
    {
        // The log said how many rows were lost and why.
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

fn status(path: &Path, watch: Option<u64>) -> ExitCode {
    let config = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let stop = interrupted();
    loop {
        let db = match live_db(&config, path) {
            Ok(db) => db,
            Err(code) => return code,
        };
        let table = match status_table(&db) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("rtds: {}: {e}", config.storage.path.display());
                return ExitCode::from(1);
            }
        };
        drop(db);
        match watch {
            None => {
                print!("{table}");
                return ExitCode::SUCCESS;
            }
            Some(ms) => {
                // Clear the screen and redraw, like `watch`.
                print!(
                    "\x1b[H\x1b[2Jrtds status -c {} (every {ms} ms, Ctrl-C stops)\n\n{table}",
                    path.display()
                );
                let _ = std::io::Write::flush(&mut std::io::stdout());
                if !pause(ms, &stop) {
                    return ExitCode::SUCCESS;
                }
            }
        }
    }
}

/// The `current` table as text, with the tag counts by kind.
fn status_table(db: &rusqlite::Connection) -> rusqlite::Result<String> {
    let mut st = db.prepare(
        "SELECT c.name, c.value, c.status, c.ts, t.source, t.address
         FROM current c JOIN tags t ON t.id = c.tag_id ORDER BY c.tag_id",
    )?;
    let rows = st
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, rusqlite::types::Value>(1)?,
                r.get::<_, u16>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, String>(5)?,
            ))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    let (mut device, mut diagnostic, mut calculated) = (0, 0, 0);
    for r in &rows {
        match (r.4.as_str(), r.5.as_str()) {
            ("script", _) => calculated += 1,
            (_, "diagnostic") => diagnostic += 1,
            ("spool", _) => {}
            _ => device += 1,
        }
    }
    let mut out = format!(
        "{}\n",
        rtds::server::tag_counts(device, diagnostic, calculated)
    );
    let width = rows.iter().map(|r| r.0.len()).max().unwrap_or(4).max(4);
    out.push_str(&format!(
        "{:width$}  {:>20}  {:<24}  time (UTC)\n",
        "tag", "value", "status"
    ));
    for (name, value, st, ts, _, _) in rows {
        let value = match value {
            rusqlite::types::Value::Null => "-".to_string(),
            rusqlite::types::Value::Integer(i) => Value::Int(i).to_string(),
            rusqlite::types::Value::Real(f) => format!("{f:.4}"),
            rusqlite::types::Value::Text(s) => s,
            rusqlite::types::Value::Blob(_) => "<blob>".into(),
        };
        out.push_str(&format!(
            "{name:width$}  {value:>20}  {:<24}  {ts}\n",
            Status(st).to_string()
        ));
    }
    Ok(out)
}

fn read(path: &Path, args: &Args) -> ExitCode {
    let config = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let only = args.words.first();
    if let Some(name) = only
        && let Err(e) = config.connector(name)
    {
        eprintln!("rtds: {e} in {}", path.display());
        return ExitCode::from(2);
    }
    let stop = interrupted();
    let scans = args
        .scans
        .unwrap_or(if args.every.is_some() { u32::MAX } else { 1 });
    let mut all_good = true;
    let mut reader = rtds::commission::Reader::new(&config);
    for scan in 1..=scans {
        if scan > 1 && !pause(args.every.unwrap_or(1000), &stop) {
            break;
        }
        let now = rtds::model::format_ts(&chrono::Utc::now());
        for (i, c) in config.connectors.iter().enumerate() {
            if only.is_some_and(|n| *n != c.name) {
                continue;
            }
            println!(
                "connector {}: {}, scan {scan} at {now}",
                c.name,
                c.kind.describe()
            );
            let (lines, good) = reader.read(&config, i, args.orders);
            all_good &= good;
            for l in lines {
                println!("{l}");
            }
        }
    }
    if all_good {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// `rtds scan`: the line from a connection string or a connector of the
/// configuration, then every unit in turn.
fn scan(path: &Path, args: &Args) -> ExitCode {
    use rtds::connector::modbus::bus_scan;
    use rtds::connector::modbus::{ModbusConfig, ModbusSettings};
    let word = &args.words[0];
    let (mut settings, timeout_given) = if word.contains('=') {
        let params = match rtds::connector::Params::parse(word) {
            Ok(p) => p,
            Err(e) => return usage_error(&format!("the line `{word}`: {e}")),
        };
        let given = params.has("timeout");
        let (settings, errors) = ModbusSettings::from_connection(params);
        if !errors.is_empty() {
            return usage_error(&format!("the line `{word}`: {}", errors.join("; ")));
        }
        (settings, given)
    } else {
        let config = match load(path) {
            Ok(c) => c,
            Err(code) => return code,
        };
        let c = match config.connector(word) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("rtds: {e} in {}", path.display());
                return ExitCode::from(2);
            }
        };
        match c.kind.downcast::<ModbusConfig>() {
            Some(m) => (m.settings.clone(), false),
            None => return usage_error(&format!("connector `{word}` is not a Modbus connector")),
        }
    };
    settings.timeout = match args.timeout {
        Some(ms) => std::time::Duration::from_millis(ms),
        None if timeout_given => settings.timeout,
        None => bus_scan::default_timeout(&settings.wire),
    };
    let units = match bus_scan::parse_units(args.units.as_deref().unwrap_or("1-247")) {
        Ok(u) => u,
        Err(e) => return usage_error(&e),
    };
    println!(
        "scanning units {}-{} on {}, {} ms per unit: at most {:.1} s (Ctrl-C stops)",
        units.start(),
        units.end(),
        settings.wire.describe(),
        settings.timeout.as_millis(),
        bus_scan::bound(&settings, &units).as_secs_f64()
    );
    let stop = interrupted();
    let started = std::time::Instant::now();
    let found = bus_scan::scan(&settings, units, &stop, |unit, answer| match answer {
        bus_scan::Answer::Silent => {}
        bus_scan::Answer::Register(v) => {
            println!("unit {unit}: answers, holding register 0 = {v} (0x{v:04X})")
        }
        bus_scan::Answer::Exception(e) => {
            println!(
                "unit {unit}: answers with {e} to a read of holding register 0: a device is there"
            )
        }
        bus_scan::Answer::Garbled(m) => {
            println!(
                "unit {unit}: garbled answer ({m}): another baud rate or parity, or two devices with this id?"
            )
        }
    });
    let found = match found {
        Ok(f) => f,
        Err(e) => {
            eprintln!("rtds: {}: {e}", settings.wire.describe());
            return ExitCode::from(1);
        }
    };
    let units: Vec<u8> = found
        .iter()
        .filter(|(_, a)| a.found())
        .map(|(u, _)| *u)
        .collect();
    println!(
        "{} of {} unit ids answered in {:.1} s",
        units.len(),
        found.len(),
        started.elapsed().as_secs_f64()
    );
    if units.is_empty() {
        return ExitCode::from(1);
    }
    println!("ready to paste into `connectors` (add the tags):");
    for unit in units {
        println!(
            "    (name: \"unit{unit}\", connection: \"{}\", tags: []),",
            bus_scan::connection_line(&settings, unit)
        );
    }
    ExitCode::SUCCESS
}

fn write(path: &Path, tag: &str, value: &str) -> ExitCode {
    let config = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    match rtds::commission::write_and_read_back(&config, tag, value) {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("rtds: {e}");
            ExitCode::from(1)
        }
    }
}

/// glibc malloc settings for a small, steady footprint (README: Memory).
///
/// One arena for the whole process: glibc gives each thread that allocates
/// its own, up to 8 per core, and memory freed in one is not reused by
/// another. RTDS allocates little per cycle, so the shared arena's lock
/// costs nothing measurable, and peak memory with 10,000 tags drops by
/// about 2 MB.
///
/// A fixed mmap threshold of 128 kB: by default glibc raises it (up to
/// 32 MB) after the first large block is freed, such as the config text at
/// start; from then on a poll's 10,000 samples (560 kB) come from the heap,
/// whose high-water mark never comes down. Fixed, every large block is
/// mapped and given back whole: 0.5-0.8 MB less at 10,000 tags, and the
/// peak no longer depends on the order things were freed in.
///
/// `MALLOC_ARENA_MAX` and `MALLOC_MMAP_THRESHOLD_` in the environment win.
fn tune_malloc() {
    #[cfg(target_env = "gnu")]
    {
        // SAFETY: called before any other thread exists; both settings
        // take a positive count of arenas or bytes.
        if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
            unsafe {
                libc::mallopt(libc::M_ARENA_MAX, 1);
            }
        }
        if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_none() {
            unsafe {
                libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
            }
        }
    }
}

/// `rtds browse` or `rtds cert`: (config, connector, node) to lines.
type OpcUaTool = fn(&Config, &str, Option<&str>) -> Result<Vec<String>, String>;

/// `rtds browse` and `rtds cert`: lines on stdout, or the error and 1.
fn opcua_tool(path: &Path, words: &[String], tool: OpcUaTool) -> ExitCode {
    let config = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    print_lines(tool(&config, &words[0], words.get(1).map(String::as_str)))
}

/// A command's lines on stdout, or its error and exit status 1.
fn print_lines(result: Result<Vec<String>, String>) -> ExitCode {
    match result {
        Ok(lines) => {
            for l in lines {
                println!("{l}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("rtds: {e}");
            ExitCode::from(1)
        }
    }
}

fn ack(path: &Path, text: &str) -> ExitCode {
    let config = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let ack = match rtds::storage::retention::parse_ack(text) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("rtds: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(code) = live_db(&config, path) {
        return code;
    }
    let db = &config.storage.path;
    match rtds::storage::submit_ack(db, ack) {
        Ok(id) => {
            // A running server answers within about a second.
            for _ in 0..30 {
                if let Some(result) = rtds::storage::ack_result(db, id) {
                    println!("acknowledgement #{id} ({}): {result}", text.trim());
                    return if result.starts_with("accepted") {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::from(2)
                    };
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            println!(
                "acknowledgement #{id} ({}) recorded; RTDS applies it when it runs",
                text.trim()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("rtds: acknowledgement {e}");
            ExitCode::from(2)
        }
    }
}
