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
usage: rtds [COMMAND] [-c FILE]

commands:
  run      run the server (default)
  check    validate the configuration and print what one scan sends; touches no device
  status   print the current value, status and time of every tag from the database
  ack N|TS acknowledge the archive up to id N (every row up to N is stored by the
           Historian), or up to time stamp TS (e.g. 2026-11-24T06:00:00Z: segments
           published before now whose rows are all older than TS); refused if N
           was not published yet, if TS is in the future, or if it goes back
  read     connect to every connector, read all its tags once (or --scans N times)
           and print them: a commissioning check of addresses, types and byte orders

options:
  -c, --config FILE   configuration file (default /etc/rtds/rtds.ron)
      --scans N       with read: how many scans (default 1)
  -h, --help          this text
  -V, --version       version

exit status: 0 ok, 1 runtime failure, 2 invalid configuration or usage
signals: SIGTERM/SIGINT stop cleanly, SIGHUP reloads the configuration
";

fn main() -> ExitCode {
    let mut command = "run".to_string();
    let mut config = PathBuf::from("/etc/rtds/rtds.ron");
    let mut scans = 1u32;
    let mut ack_ts: Option<String> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "-h" | "--help" => {
                print!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            "-V" | "--version" => {
                println!("rtds {}", env!("CARGO_PKG_VERSION"));
                return ExitCode::SUCCESS;
            }
            "-c" | "--config" => match args.next() {
                Some(p) => config = PathBuf::from(p),
                None => return usage_error("-c needs a file"),
            },
            "--scans" => match args.next().and_then(|n| n.parse().ok()) {
                Some(n) if n > 0 => scans = n,
                _ => return usage_error("--scans needs a number above 0"),
            },
            "ack" => match args.next() {
                Some(ts) => {
                    command = a;
                    ack_ts = Some(ts);
                }
                None => return usage_error("ack needs an archive id or a time stamp"),
            },
            "run" | "check" | "status" | "read" => command = a,
            other => return usage_error(&format!("unknown argument `{other}`")),
        }
    }
    if command != "run" {
        // One-shot commands write to stdout: end quietly when the reader
        // goes away (`rtds check | head`) instead of panicking. The server
        // keeps Rust's default of ignoring SIGPIPE.
        // SAFETY: called before any thread starts; SIG_DFL is always valid.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    match command.as_str() {
        "check" => check(&config),
        "status" => status(&config),
        "read" => read(&config, scans),
        "ack" => ack(&config, ack_ts.as_deref().unwrap_or_default()),
        _ => run(&config),
    }
}

fn usage_error(msg: &str) -> ExitCode {
    eprintln!("rtds: {msg}\n\n{USAGE}");
    ExitCode::from(2)
}

fn load(path: &Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|e| {
        eprintln!("rtds: invalid configuration: {e}");
        ExitCode::from(2)
    })
}

fn check(path: &Path) -> ExitCode {
    let config = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if let Err(e) = rtds::script::ScriptHost::for_config(&config) {
        eprintln!("rtds: invalid configuration: {e}");
        return ExitCode::from(2);
    }
    let tags: usize = config.connectors.iter().map(|c| c.tags.len()).sum();
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
        "{} connectors, {} tags, {} scripts",
        config.connectors.len(),
        tags,
        config.scripts.len()
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
    let mut endpoints: Vec<(String, Vec<&str>)> = Vec::new();
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
    CombinedLogger::init(loggers).map_err(|e| e.to_string())
}

fn run(path: &Path) -> ExitCode {
    let config = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if let Err(e) = init_logging(&config) {
        eprintln!("rtds: {e}");
        return ExitCode::from(1);
    }
    let (tx, control) = crossbeam_channel::unbounded();
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
                if tx.send(c).is_err() {
                    break;
                }
            }
        })
        .ok();
    let server = match Server::start(config) {
        Ok(s) => s,
        Err(e) => {
            log::error!("cannot start: {e}");
            return ExitCode::from(match e {
                rtds::server::ServerError::Config(_) => 2,
                _ => 1,
            });
        }
    };
    let summary = server.run(control);
    handle.close();
    if summary.storage.lost > 0 || summary.storage.failed {
        // The log said how many rows were lost and why.
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

fn status(path: &Path) -> ExitCode {
    let config = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let db = match rusqlite::Connection::open_with_flags(
        &config.storage.path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    ) {
        Ok(db) => db,
        Err(e) => {
            eprintln!("rtds: {}: {e}", config.storage.path.display());
            return ExitCode::from(1);
        }
    };
    let rows = db
        .prepare("SELECT name, value, status, ts FROM current ORDER BY tag_id")
        .and_then(|mut st| {
            st.query_map([], |r| {
                let value: rusqlite::types::Value = r.get(1)?;
                Ok((
                    r.get::<_, String>(0)?,
                    value,
                    r.get::<_, u16>(2)?,
                    r.get::<_, String>(3)?,
                ))
            })?
            .collect::<Result<Vec<_>, _>>()
        });
    match rows {
        Ok(rows) => {
            let width = rows.iter().map(|r| r.0.len()).max().unwrap_or(4).max(4);
            println!(
                "{:width$}  {:>16}  {:<24}  time (UTC)",
                "tag", "value", "status"
            );
            for (name, value, st, ts) in rows {
                let value = match value {
                    rusqlite::types::Value::Null => "-".to_string(),
                    rusqlite::types::Value::Integer(i) => Value::Int(i).to_string(),
                    rusqlite::types::Value::Real(f) => format!("{f:.4}"),
                    rusqlite::types::Value::Text(s) => s,
                    rusqlite::types::Value::Blob(_) => "<blob>".into(),
                };
                println!(
                    "{name:width$}  {value:>16}  {:<24}  {ts}",
                    Status(st).to_string()
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("rtds: {}: {e}", config.storage.path.display());
            ExitCode::from(1)
        }
    }
}

fn read(path: &Path, scans: u32) -> ExitCode {
    let config = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let mut all_good = true;
    for c in &config.connectors {
        println!("connector {}: {}", c.name, c.kind.describe());
        let mut conn = c.kind.build();
        for scan in 1..=scans {
            let mut samples = Vec::new();
            let result = if conn.is_open() {
                conn.read(&mut samples)
            } else {
                conn.open().and_then(|()| conn.read(&mut samples))
            };
            if let Err(e) = result {
                println!("  scan {scan}: {e}");
                conn.close();
                all_good = false;
                continue;
            }
            println!("  scan {scan}:");
            for s in &samples {
                all_good &= s.status.is_good();
                let value = s.value.as_ref().map_or("-".to_string(), Value::to_string);
                println!("    {:24} {value:>20}  {}", c.tags[s.tag].name, s.status);
            }
        }
        println!("  {} requests", conn.requests());
        conn.close();
    }
    if all_good {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
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
