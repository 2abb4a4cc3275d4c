//! The Debian package as plant IT meets it: built by `cross/deb/build.sh`
//! from this build's binaries, checked by lintian, and installed on this
//! machine for real with dpkg: files, owners and modes; not started on
//! install; the init script starting RTDS from the installed tree as the
//! `rtds` user; an edited configuration and script kept across an upgrade;
//! the service restarted by the upgrade only if it was running; the live
//! database never touched; remove and purge. Everything the package made
//! is removed afterwards. Installing needs root (CI runs as root).

mod common;

use common::*;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn must(cmd: &mut Command) -> String {
    let shown = format!("{cmd:?}");
    let (ok, out) = run(cmd);
    assert!(ok, "{shown} failed:\n{out}");
    out
}

/// dpkg as on a SysV gateway in runlevel 2 (a container has no runlevel,
/// and invoke-rc.d then leaves every service alone).
fn dpkg(args: &[&str]) -> String {
    must(
        Command::new("timeout")
            .arg("300")
            .arg("dpkg")
            .args(args)
            .env("RUNLEVEL", "2")
            .env("PREVLEVEL", "N"),
    )
}

/// The machine as it was: no rtds package, the container's policy-rc.d
/// back in place (it forbids every service action, which is what Docker
/// images want and what would hide the upgrade's restart here).
struct Machine {
    policy: Option<PathBuf>,
}

const POLICY: &str = "/usr/sbin/policy-rc.d";

impl Machine {
    fn prepare(dir: &TempDir) -> Machine {
        Machine::clean();
        let policy = Path::new(POLICY).exists().then(|| {
            let aside = dir.path("policy-rc.d");
            std::fs::copy(POLICY, &aside).unwrap();
            std::fs::remove_file(POLICY).unwrap();
            aside
        });
        Machine { policy }
    }

    fn clean() {
        if Path::new("/etc/init.d/rtds").exists() {
            let _ = run(Command::new("/etc/init.d/rtds").arg("stop"));
        }
        let _ = run(Command::new("dpkg").args(["--purge", "rtds"]));
        let _ = std::fs::remove_dir_all("/var/lib/rtds");
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        Machine::clean();
        if let Some(p) = &self.policy {
            let _ = std::fs::copy(p, POLICY);
            let _ = Command::new("chmod").args(["755", POLICY]).status();
        }
    }
}

fn owner_and_mode(path: &str) -> (String, u32) {
    let m = std::fs::metadata(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let user = must(Command::new("stat").args(["-c", "%U:%G", path]));
    (user.trim().to_string(), m.mode() & 0o7777)
}

fn running_pid() -> Option<String> {
    let pid = std::fs::read_to_string("/run/rtds.pid").ok()?;
    let pid = pid.trim().to_string();
    Path::new(&format!("/proc/{pid}")).exists().then_some(pid)
}

#[test]
fn the_package_installs_keeps_edits_across_an_upgrade_and_purges() {
    if !is_root() {
        eprintln!("skipped: installing a package needs root");
        return;
    }
    let dir = TempDir::new("deb");
    let top = Path::new(env!("CARGO_MANIFEST_DIR"));
    let bins = Path::new(env!("CARGO_BIN_EXE_rtds")).parent().unwrap();
    let out = dir.path("out");
    let build = |version: &str| -> String {
        let text = must(
            Command::new("sh")
                .arg(top.join("cross/deb/build.sh"))
                .arg(bins)
                .arg("amd64")
                .arg(&out)
                .arg(version)
                .env("DEB_COMPRESSION", "gzip")
                .current_dir(top),
        );
        text.lines().last().unwrap().to_string()
    };
    let v1 = build("0.1.0");
    let v2 = build("0.1.1");
    assert!(v1.ends_with("rtds_0.1.0-1_amd64.deb"), "{v1}");
    // lintian: no errors or warnings (overrides carry their reasons).
    let (_, report) = run(Command::new("lintian")
        .args(["--tag-display-limit", "0"])
        .arg(&v1));
    let findings: Vec<&str> = report
        .lines()
        .filter(|l| l.starts_with("E:") || l.starts_with("W:"))
        .collect();
    assert!(findings.is_empty(), "lintian:\n{report}");
    let control = must(Command::new("dpkg-deb").args(["-f", &v1]));
    assert!(control.contains("Architecture: amd64"), "{control}");
    assert!(control.contains("libodbc2"), "ODBC is linked: {control}");

    let machine = Machine::prepare(&dir);
    dpkg(&["-i", &v1]);
    // Files, owners and modes.
    for (path, owner, mode) in [
        ("/usr/bin/rtds", "root:root", 0o755),
        ("/usr/bin/rtds-sim", "root:root", 0o755),
        ("/etc/rtds/rtds.ron", "root:root", 0o644),
        ("/etc/rtds/scripts/derive.rhai", "root:root", 0o644),
        ("/etc/init.d/rtds", "root:root", 0o755),
        ("/etc/default/rtds", "root:root", 0o644),
        ("/etc/logrotate.d/rtds", "root:root", 0o644),
        ("/lib/systemd/system/rtds.service", "root:root", 0o644),
        ("/usr/share/doc/rtds/copyright", "root:root", 0o644),
        (
            "/usr/share/doc/rtds/changelog.Debian.gz",
            "root:root",
            0o644,
        ),
        ("/usr/share/doc/rtds/rtds_reader.py", "root:root", 0o644),
        (
            "/usr/share/doc/rtds/docs/configuration.md",
            "root:root",
            0o644,
        ),
        ("/var/lib/rtds", "rtds:rtds", 0o750),
        ("/var/log/rtds", "rtds:rtds", 0o750),
    ] {
        assert_eq!(owner_and_mode(path), (owner.to_string(), mode), "{path}");
    }
    let passwd = must(Command::new("getent").args(["passwd", "rtds"]));
    assert!(
        passwd.contains(":/var/lib/rtds:/usr/sbin/nologin"),
        "{passwd}"
    );
    let groups = must(Command::new("id").args(["-nG", "rtds"]));
    assert!(
        groups.split_whitespace().any(|g| g == "dialout"),
        "{groups}"
    );
    let conffiles = must(Command::new("dpkg-query").args(["-W", "-f=${Conffiles}", "rtds"]));
    for f in [
        "/etc/rtds/rtds.ron",
        "/etc/rtds/scripts/derive.rhai",
        "/etc/default/rtds",
    ] {
        assert!(conffiles.contains(f), "{f} is not a conffile:\n{conffiles}");
    }
    // Installed, valid, not started.
    must(Command::new("/usr/bin/rtds").args(["check", "-c", "/etc/rtds/rtds.ron"]));
    assert!(running_pid().is_none(), "started on install");

    // The engineer's edits: a port of their own, and a script comment.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let conf = std::fs::read_to_string("/etc/rtds/rtds.ron").unwrap();
    let edited =
        conf.replace("127.0.0.1:8080", &format!("127.0.0.1:{port}")) + "// edited on site\n";
    std::fs::write("/etc/rtds/rtds.ron", &edited).unwrap();
    let script = std::fs::read_to_string("/etc/rtds/scripts/derive.rhai").unwrap() + "// ours\n";
    std::fs::write("/etc/rtds/scripts/derive.rhai", &script).unwrap();

    // Enabled and started as the manual says, by the init script, as
    // rtds, from the installed tree.
    must(Command::new("update-rc.d").args(["rtds", "enable"]));
    must(Command::new("/etc/init.d/rtds").arg("start"));
    wait_for("RTDS stores", Duration::from_secs(30), || {
        std::fs::metadata("/var/lib/rtds/rtds.db").is_ok_and(|m| m.len() > 0)
    });
    let pid1 = running_pid().expect("running after start");
    let user = must(Command::new("ps").args(["-o", "user=", "-p", &pid1]));
    assert_eq!(user.trim(), "rtds");
    let db_inode = std::fs::metadata("/var/lib/rtds/rtds.db").unwrap().ino();

    // Upgrade while running: edits kept, restarted, the database the same.
    dpkg(&["-i", &v2]);
    assert_eq!(
        std::fs::read_to_string("/etc/rtds/rtds.ron").unwrap(),
        edited
    );
    assert_eq!(
        std::fs::read_to_string("/etc/rtds/scripts/derive.rhai").unwrap(),
        script
    );
    assert!(!Path::new("/etc/rtds/rtds.ron.dpkg-dist").exists());
    let version = must(Command::new("dpkg-query").args(["-W", "-f=${Version}", "rtds"]));
    assert_eq!(version, "0.1.1-1");
    wait_for("restarted", Duration::from_secs(30), || {
        running_pid().is_some_and(|p| p != pid1)
    });
    assert_eq!(
        std::fs::metadata("/var/lib/rtds/rtds.db").unwrap().ino(),
        db_inode,
        "the live database was replaced"
    );

    // Upgrade while stopped: stays stopped.
    must(Command::new("/etc/init.d/rtds").arg("stop"));
    assert!(running_pid().is_none());
    dpkg(&["-i", &v2]);
    assert!(
        running_pid().is_none(),
        "an upgrade started a stopped service"
    );

    // Remove keeps configuration, user and data; purge keeps only the data.
    dpkg(&["--remove", "rtds"]);
    assert!(!Path::new("/usr/bin/rtds").exists());
    assert!(Path::new("/etc/rtds/rtds.ron").exists());
    dpkg(&["--purge", "rtds"]);
    assert!(
        !Path::new("/etc/rtds").exists(),
        "configuration left by purge"
    );
    assert!(!Path::new("/var/log/rtds").exists(), "logs left by purge");
    let (has_user, _) = run(Command::new("getent").args(["passwd", "rtds"]));
    assert!(!has_user, "the rtds user left by purge");
    assert!(
        Path::new("/var/lib/rtds/rtds.db").exists(),
        "purge removed the buffer (it keeps /var/lib/rtds)"
    );
    drop(machine);
    assert!(!Path::new("/var/lib/rtds").exists());
}
