//! The Historian hand-off over a real SMB share: Samba's `smbd` exports
//! the outbox on 127.0.0.1, `smbnetfs` (FUSE) mounts it as the Historian
//! host would, and the reference reader (historian/rtds_reader.py, Python
//! standard library only) reads, acknowledges, is killed and resumes while
//! RTDS runs at a 100 ms cycle. smbnetfs passes no locks: the realistic
//! worst case for a share.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let quiet = |cmd: &str, args: &[&str]| {
            let _ = Command::new(cmd)
                .args(args)
                .arg(&self.0)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        };
        quiet("fusermount3", &["-u"]);
        quiet("umount", &["-l"]);
    }
}

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// smbd on 127.0.0.1:445 sharing `outbox` as guest, with its own
/// lock/state/private directories under `dir`.
fn start_smbd(dir: &TempDir, outbox: &Path) -> Proc {
    for d in [
        "smb/lock",
        "smb/state",
        "smb/private",
        "smb/cache",
        "smb/pid",
    ] {
        std::fs::create_dir_all(dir.path(d)).unwrap();
    }
    let base = dir.path("smb");
    let conf = dir.write(
        "smb/smb.conf",
        &format!(
            "[global]\n  smb ports = 445\n  interfaces = lo\n  bind interfaces only = yes\n  lock directory = {b}/lock\n  state directory = {b}/state\n  private dir = {b}/private\n  cache directory = {b}/cache\n  pid directory = {b}/pid\n  map to guest = Bad User\n  guest account = root\n  log file = {b}/smbd.log\n  disable spoolss = yes\n  load printers = no\n  server role = standalone server\n[outbox]\n  path = {o}\n  guest ok = yes\n  read only = no\n  force user = root\n",
            b = base.display(),
            o = outbox.display()
        ),
    );
    let child = Command::new("smbd")
        .args(["--foreground", "--no-process-group", "-s"])
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start smbd");
    let proc = Proc { child };
    wait_for("smbd on 127.0.0.1:445", Duration::from_secs(20), || {
        std::net::TcpStream::connect(("127.0.0.1", 445)).is_ok()
    });
    proc
}

/// Mounts the whole SMB network at `mnt` with smbnetfs as a guest; the
/// share appears as `mnt/127.0.0.1/outbox`.
fn mount_smbnetfs(dir: &TempDir, mnt: &Path) -> Mount {
    let home = dir.path("smbhome");
    std::fs::create_dir_all(home.join(".smb")).unwrap();
    std::fs::write(
        home.join(".smb/smb.conf"),
        "[global]\n  client min protocol = SMB2\n",
    )
    .unwrap();
    let conf = home.join(".smb/smbnetfs.conf");
    std::fs::write(&conf, "auth \"guest\" \"\"\nsmb_query_browsers \"false\"\n").unwrap();
    let _ = Command::new("chmod").arg("600").arg(&conf).status();
    std::fs::create_dir_all(mnt).unwrap();
    let ok = Command::new("smbnetfs")
        .arg(mnt)
        .arg("-o")
        .arg(format!("config={}", conf.display()))
        .env("HOME", &home)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run smbnetfs")
        .success();
    assert!(ok, "smbnetfs mount failed");
    Mount(mnt.to_path_buf())
}

/// The reference reader, with its stderr in `log`.
fn reader(share: &Path, dir: &TempDir, args: &[&str], log: &Path) -> Proc {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("historian/rtds_reader.py");
    let child = Command::new("python3")
        .arg(script)
        .arg("--outbox")
        .arg(share)
        .arg("--state")
        .arg(dir.path("reader.state"))
        .arg("--csv")
        .arg(dir.path("historian.csv"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .unwrap(),
        )
        .spawn()
        .expect("start the reader");
    Proc { child }
}

#[test]
fn the_reference_reader_over_smb_gets_every_row_exactly_once() {
    if !is_root() || !have("smbd") || !have("smbnetfs") {
        eprintln!(
            "skipped: needs root (port 445, FUSE), smbd and smbnetfs (make test installs them)"
        );
        return;
    }
    let dir = TempDir::new("share");
    let outbox = dir.path("outbox");
    std::fs::create_dir_all(&outbox).unwrap();
    let _smbd = start_smbd(&dir, &outbox);
    let mnt = dir.path("mnt");
    let _mount = mount_smbnetfs(&dir, &mnt);
    let share = mnt.join("127.0.0.1/outbox");
    wait_for("the share mounted", Duration::from_secs(20), || {
        std::fs::read_dir(&share).is_ok()
    });

    let cfg = config(&dir, 100, &[], &[("ticks", TICKS)]);
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "storage: (path: \"rtds.db\")",
        "storage: (path: \"rtds.db\", segment: (max_age_s: 1))",
    );
    std::fs::write(&cfg, text).unwrap();
    let db = dir.path("rtds.db");
    let mut rtds = Rtds::start(&cfg);
    let log = dir.path("reader.log");
    let t0 = Instant::now();

    // A reader polling every 0.5 s, then one killed at an arbitrary moment,
    // then one that runs on: each resumes from the state file.
    let mut r = reader(&share, &dir, &["--poll", "0.5", "--duration", "6"], &log);
    assert!(
        r.wait_timeout(Duration::from_secs(60))
            .expect("reader ends")
            .success()
    );
    let mut r = reader(&share, &dir, &["--poll", "0.3"], &log);
    std::thread::sleep(Duration::from_millis(3700));
    r.signal(libc::SIGKILL);
    r.wait_timeout(Duration::from_secs(5));
    let mut r = reader(&share, &dir, &["--poll", "0.5", "--duration", "5"], &log);
    assert!(
        r.wait_timeout(Duration::from_secs(60))
            .expect("reader ends")
            .success()
    );
    let (st, _) = rtds.stop();
    assert!(st.success(), "{}", rtds.log_text());
    let cycles = {
        let log = rtds.log_text();
        log.lines()
            .find_map(|l| l.split("rtds stopped after ").nth(1))
            .and_then(|r| r.split(' ').next())
            .and_then(|n| n.parse::<i64>().ok())
            .unwrap()
    };
    // The last segments, published at the stop: read but not acknowledged,
    // so they must stay.
    let mut r = reader(&share, &dir, &["--once", "--no-ack"], &log);
    assert!(
        r.wait_timeout(Duration::from_secs(60))
            .expect("reader ends")
            .success()
    );
    let elapsed = t0.elapsed();

    let reader_log = std::fs::read_to_string(&log).unwrap();
    assert!(
        !reader_log.contains("cannot be read"),
        "read errors: {reader_log}"
    );
    assert!(!reader_log.contains("GAP"), "{reader_log}");
    // Every id exactly once, in order, and every cycle's counter value.
    let csv = std::fs::read_to_string(dir.path("historian.csv")).unwrap();
    let rows: Vec<Vec<&str>> = csv.lines().map(|l| l.split(',').collect()).collect();
    let ids: Vec<i64> = rows.iter().map(|r| r[0].parse().unwrap()).collect();
    let n = ids.len() as i64;
    assert_eq!(ids, (1..=n).collect::<Vec<_>>(), "every id exactly once");
    let ticks: Vec<i64> = rows
        .iter()
        .filter(|r| r[1] == "Ticks")
        .map(|r| r[2].parse().unwrap())
        .collect();
    assert_eq!(
        ticks,
        (1..=cycles).collect::<Vec<_>>(),
        "every cycle's counter"
    );
    // Acknowledged segments are gone, the unacknowledged last ones kept.
    let answer = std::fs::read_to_string(outbox.join("ack-result.txt")).unwrap();
    let acked: i64 = answer
        .lines()
        .find_map(|l| l.strip_prefix("acked_id: "))
        .unwrap()
        .parse()
        .unwrap();
    let left: Vec<(i64, i64)> = std::fs::read_dir(&outbox)
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let ids = name
                .strip_prefix("seg-")?
                .strip_suffix(".sqlite")?
                .to_string();
            let (a, b) = ids.split_once('-')?;
            Some((a.parse().ok()?, b.parse().ok()?))
        })
        .collect();
    assert!(acked > 0 && acked < n, "acked {acked} of {n}");
    assert!(!left.is_empty(), "the unacknowledged segments are kept");
    assert!(
        left.iter().all(|(a, _)| *a > acked),
        "{left:?} acked {acked}"
    );
    assert_eq!(left.iter().map(|(_, b)| *b).max(), Some(n));
    // No temporary file left behind in the outbox.
    assert!(std::fs::read_dir(&outbox).unwrap().flatten().all(|e| {
        let n = e.file_name().to_string_lossy().into_owned();
        !n.ends_with(".tmp")
    }));
    let c = rusqlite::Connection::open(&db).unwrap();
    let ok: String = c
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ok, "ok");
    eprintln!(
        "share: {n} rows (ids 1..{n}), {cycles} cycles, acknowledged up to {acked}, {} segments kept, 0 read errors, {:.1} s",
        left.len(),
        elapsed.as_secs_f64()
    );
}
