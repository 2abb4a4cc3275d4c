//! Deployment: `make install` into a staging tree, then the installed SysV
//! init script driven for real (start, status, reload, stop, a stale pid
//! file), running RTDS as an unprivileged user when the test runs as root.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn sh(cmd: &mut Command) -> (i32, String) {
    let out = cmd.output().expect("run command");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

struct Installed {
    root: PathBuf,
    defaults: PathBuf,
}

impl Installed {
    fn init(&self, action: &str) -> (i32, String) {
        sh(Command::new(self.root.join("etc/init.d/rtds"))
            .arg(action)
            .env("RTDS_DEFAULTS", &self.defaults))
    }
}

fn is_root() -> bool {
    // SAFETY: getuid has no preconditions.
    unsafe { libc::getuid() == 0 }
}

fn install(dir: &TempDir) -> PathBuf {
    let root = dir.path("root");
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_rtds")).parent().unwrap();
    let (code, out) = sh(Command::new("make")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["--no-print-directory", "install", "PREFIX=/usr/local"])
        .arg(format!("DESTDIR={}", root.display()))
        .arg(format!("BIN_DIR={}", bin_dir.display())));
    assert_eq!(code, 0, "{out}");
    root
}

#[test]
fn make_install_lays_out_the_usual_tree() {
    let dir = TempDir::new("install");
    let root = install(&dir);
    for f in [
        "usr/local/bin/rtds",
        "usr/local/bin/rtds-sim",
        "etc/rtds/rtds.ron",
        "etc/rtds/scripts/derive.rhai",
        "etc/init.d/rtds",
        "etc/default/rtds",
        "lib/systemd/system/rtds.service",
        "etc/logrotate.d/rtds",
        "var/lib/rtds",
        "var/log/rtds",
    ] {
        assert!(root.join(f).exists(), "{f} missing");
    }
    let unit = std::fs::read_to_string(root.join("lib/systemd/system/rtds.service")).unwrap();
    assert!(
        unit.contains("ExecStart=/usr/local/bin/rtds run -c /etc/rtds/rtds.ron"),
        "{unit}"
    );
    assert!(unit.contains("ExecReload=/bin/kill -HUP $MAINPID"));
    let init = std::fs::read_to_string(root.join("etc/init.d/rtds")).unwrap();
    assert!(init.contains("DAEMON=/usr/local/bin/rtds"));
    // The installed configuration validates as it stands (paths in /etc/rtds).
    let conf = root.join("etc/rtds/rtds.ron");
    let text = std::fs::read_to_string(&conf).unwrap();
    assert!(text.contains("/var/lib/rtds/rtds.db") && text.contains("/var/log/rtds/rtds.log"));
    let (code, out, err) = rtds_cmd(&["check"], &conf);
    assert_eq!(code, Some(0), "{out}{err}");
    // A second install keeps the edited configuration.
    std::fs::write(&conf, format!("// edited\n{text}")).unwrap();
    install(&dir);
    assert!(
        std::fs::read_to_string(&conf)
            .unwrap()
            .starts_with("// edited")
    );
    assert!(root.join("etc/rtds/rtds.ron.dist").exists());
}

#[test]
fn the_init_script_starts_reloads_reports_and_stops_rtds() {
    let dir = TempDir::new("initd");
    let root = install(&dir);
    let sim = Sim::start(&[]);
    let data = dir.path("data");
    std::fs::create_dir_all(&data).unwrap();
    let user = if is_root() { "nobody" } else { "" };
    if is_root() {
        // The unprivileged user must reach and write its data directory.
        for p in [&dir.0, &data] {
            let _ = Command::new("chmod").arg("777").arg(p).status();
        }
    }
    let conf = dir.path("rtds.ron");
    let write_conf = |extra: &str| {
        std::fs::write(
            &conf,
            format!(
                "(\n    cycle_ms: 200,\n    log: (file: \"data/rtds.log\"),\n    storage: (path: \"data/rtds.db\"),\n    connectors: [(\n        name: \"plc1\",\n        connection: \"connector=ModbusTcp; host=127.0.0.1; port={}; timeout=1\",\n        interval_ms: 200,\n        tags: [\n            (name: \"Pattern\", address: \"hr:200\"),\n{extra}\n        ],\n    )],\n)\n",
                sim.port
            ),
        )
        .unwrap();
    };
    write_conf("");
    let pidfile = dir.path("rtds.pid");
    let defaults = dir.write(
        "defaults",
        &format!(
            "DAEMON={}\nCONF={}\nPIDFILE={}\nRTDS_USER={user}\n",
            root.join("usr/local/bin/rtds").display(),
            conf.display(),
            pidfile.display()
        ),
    );
    let rtds = Installed { root, defaults };
    let db = data.join("rtds.db");

    let (code, out) = rtds.init("status");
    assert_eq!(code, 3, "{out}");
    let (code, out) = rtds.init("start");
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("rtds started (pid"), "{out}");
    let pid: u32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // Kill the daemon whatever happens below.
    struct Reap(u32);
    impl Drop for Reap {
        fn drop(&mut self) {
            unsafe { libc::kill(self.0 as i32, libc::SIGKILL) };
        }
    }
    let _reap = Reap(pid);
    if is_root() {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
        assert!(
            uid_line.split_whitespace().nth(1) == Some("65534"),
            "runs as nobody: {uid_line}"
        );
    }
    wait_for("Pattern read", Duration::from_secs(15), || {
        status_of(&db, "Pattern") == Some(0)
    });
    let (code, out) = rtds.init("status");
    assert_eq!(code, 0);
    assert!(
        out.contains(&format!("rtds is running (pid {pid})")),
        "{out}"
    );
    let (code, out) = rtds.init("start");
    assert_eq!(code, 0);
    assert!(out.contains("already running"), "{out}");

    // reload = SIGHUP: a new tag appears.
    write_conf("            (name: \"Real\", address: \"hr:206\", type: \"f32\"),");
    let (code, out) = rtds.init("reload");
    assert_eq!(code, 0, "{out}");
    wait_for("reloaded tag read", Duration::from_secs(15), || {
        status_of(&db, "Real") == Some(0)
    });
    // A broken configuration is not sent; the running one stays.
    std::fs::write(
        &conf,
        "(cycle_ms: 200, storage: (path: \"data/rtds.db\"), bogus: 1)",
    )
    .unwrap();
    let (code, out) = rtds.init("reload");
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("unknown key `bogus`") && out.contains("the running one stays"),
        "{out}"
    );
    assert_eq!(rtds.init("status").0, 0);
    write_conf("");

    let (code, out) = rtds.init("stop");
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("rtds stopped"), "{out}");
    assert!(!Path::new(&format!("/proc/{pid}")).exists(), "process gone");
    assert!(!pidfile.exists());
    let log = std::fs::read_to_string(data.join("rtds.log")).unwrap();
    assert!(
        log.contains("rtds stopped after"),
        "clean SIGTERM shutdown: {log}"
    );

    // A stale pid file (a dead process's pid) is reported, then replaced.
    let mut dead = Command::new("true").spawn().unwrap();
    let dead_pid = dead.id();
    dead.wait().unwrap();
    std::fs::write(&pidfile, format!("{dead_pid}\n")).unwrap();
    let (code, out) = rtds.init("status");
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("pid file"), "{out}");
    let (code, out) = rtds.init("start");
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("removing stale pid file") && out.contains("started"),
        "{out}"
    );
    let pid2: u32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let _reap2 = Reap(pid2);
    let (code, out) = rtds.init("restart");
    assert_eq!(code, 0, "{out}");
    let (code, out) = rtds.init("stop");
    assert_eq!(code, 0, "{out}");
    assert_eq!(rtds.init("status").0, 3);
}
