#!/usr/bin/env python3
"""Reference Historian reader for RTDS segment files.

Runs on the Historian host (Linux or Windows, Python 3.8+, standard library
only). It reads the segments RTDS publishes in its outbox (over a share),
in id order, writes their rows to a CSV file (or stdout), acknowledges by
id, and resumes after its own restart with no duplicate and no gap.

    python3 rtds_reader.py --outbox /mnt/gateway1/outbox --state gw1.state --csv gw1.csv
    python rtds_reader.py --outbox \\\\gateway1\\rtds --state gw1.state --csv gw1.csv   (Windows)

The recipe it follows (see "For the Historian" in RTDS's README):
1. List `seg-<first>-<last>.sqlite` files; names sort in id order. Ignore
   every other file (temporary `.seg-*.tmp` files are being copied).
2. Take the next segment after the last id stored. A segment whose first id
   is not last+1 is a gap: wait a few polls (a listing over a share can
   lag), then report it (RTDS drops whole segments only when its retention
   limits were reached before you acknowledged them; its log says so).
3. Copy the file locally, check its size did not change, open the copy
   read-only with immutable=1 (no lock crosses the share), check
   `PRAGMA user_version`, read `archive_named` in id order and check the ids
   are exactly first..last.
4. Store the rows, make them durable, then record the last id (state file
   written under a temporary name and renamed). The state also records the
   CSV's length, so a crash between the two is undone at the next start
   (the CSV is cut back): no duplicate, no gap.
5. Acknowledge: write `id=<last id>` to `ack.tmp` in the outbox and rename
   it to `ack.txt`. RTDS answers in `ack-result.txt` within a second or two
   and deletes the acknowledged segments.
A segment that cannot be opened is retried at every poll and never
acknowledged: nothing after it is acknowledged either, so nothing is lost;
an operator looks at the file (a copy is kept as <name>.unreadable).
"""

import argparse
import csv
import json
import os
import re
import shutil
import sqlite3
import sys
import tempfile
import time

SEGMENT = re.compile(r"^seg-(\d{19})-(\d{19})\.sqlite$")
KNOWN_VERSIONS = {1, 2}
BOOL_TYPES = {"bool", "boolean"}
U64_TYPES = {"u64", "uint64", "int"}


def decode(value, type_name, version=2):
    """A stored value back as the value RTDS read, given its tag's type
    (the segment's `tags.type`): bools as bool, a u64 above 2**63-1 (text)
    as int, arrays (JSON text, version 2) as lists with every element
    exact, ByteString (hex) as bytes, LocalizedText (JSON) as a dict with
    `locale` and `text`. Everything else is as SQLite returns it. Version
    1 segments wrote string arrays unquoted (`[a,b]`): they are returned
    as the text, which cannot be split reliably."""
    if value is None:
        return None
    t = (type_name or "").lower()
    if isinstance(value, int) and t in BOOL_TYPES:
        return bool(value)
    if not isinstance(value, str):
        return value
    if (t.endswith("[]") or t == "array") and value.startswith("["):
        try:
            items = json.loads(value)
        except ValueError:
            return value
        if t.startswith("bytestring"):
            return [bytes.fromhex(x) for x in items]
        if t.startswith("localizedtext"):
            return [json.loads(x) for x in items]
        return items
    if t in U64_TYPES and value.isdigit():
        return int(value)
    if t == "bytestring":
        return bytes.fromhex(value)
    if t == "localizedtext" and version >= 2:
        return json.loads(value)
    return value
ACK_FILE = "ack.txt"
ACK_RESULT = "ack-result.txt"


def log(msg):
    print(time.strftime("%Y-%m-%dT%H:%M:%S ") + msg, file=sys.stderr, flush=True)


def load_state(path):
    try:
        with open(path, "r", encoding="utf-8") as f:
            s = json.load(f)
        return int(s.get("last_id", 0)), int(s.get("csv_bytes", 0)), int(s.get("acked_id", 0))
    except FileNotFoundError:
        return 0, 0, 0


def save_state(path, last_id, csv_bytes, acked_id):
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump({"last_id": last_id, "csv_bytes": csv_bytes, "acked_id": acked_id}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def list_segments(outbox):
    out = []
    for name in os.listdir(outbox):
        m = SEGMENT.match(name)
        if m:
            out.append((int(m.group(1)), int(m.group(2)), name))
    out.sort()
    return out


class Unreadable(Exception):
    pass


def read_segment(outbox, name, first, last, after, workdir):
    """Rows of one segment with id > after, checked complete."""
    src = os.path.join(outbox, name)
    local = os.path.join(workdir, "segment.sqlite")
    try:
        size = os.path.getsize(src)
        shutil.copyfile(src, local)
        if os.path.getsize(local) != size or os.path.getsize(src) != size:
            raise Unreadable("its size changed while it was copied")
        uri = "file:" + local.replace("\\", "/").replace("?", "%3f").replace("#", "%23")
        if re.match(r"^[A-Za-z]:", local):
            uri = "file:/" + local.replace("\\", "/")
        con = sqlite3.connect(uri + "?mode=ro&immutable=1", uri=True)
        try:
            version = con.execute("PRAGMA user_version").fetchone()[0]
            if version not in KNOWN_VERSIONS:
                raise Unreadable(
                    "segment schema version %d is not one this reader knows (%s): upgrade the reader"
                    % (version, sorted(KNOWN_VERSIONS)))
            rows = con.execute(
                "SELECT a.id, t.name, a.value, a.status, a.ts, t.type"
                " FROM archive a JOIN tags t ON t.id = a.tag_id ORDER BY a.id").fetchall()
            rows = [r + (version,) for r in rows]
        finally:
            con.close()
    except (OSError, sqlite3.Error) as e:
        raise Unreadable(str(e))
    ids = [r[0] for r in rows]
    if ids != list(range(first, last + 1)):
        raise Unreadable("ids are not exactly %d..%d (%d rows)" % (first, last, len(rows)))
    return [r for r in rows if r[0] > after]


def acknowledge(outbox, last_id, wait_s):
    tmp = os.path.join(outbox, "ack.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("id=%d\n" % last_id)
    os.replace(tmp, os.path.join(outbox, ACK_FILE))
    deadline = time.time() + wait_s
    while time.time() < deadline:
        try:
            with open(os.path.join(outbox, ACK_RESULT), "r", encoding="utf-8") as f:
                text = f.read()
        except OSError:
            text = ""
        if "request: id=%d\n" % last_id in text:
            result = next((l[8:] for l in text.splitlines() if l.startswith("result: ")), "")
            return result
        time.sleep(0.2)
    return None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--outbox", required=True, help="the gateway's outbox directory (share)")
    ap.add_argument("--state", required=True, help="this reader's state file (local)")
    ap.add_argument("--csv", help="append rows to this CSV file (default: stdout)")
    ap.add_argument("--jsonl", action="store_true",
                    help="write JSON lines with each value decoded by its type instead of CSV")
    ap.add_argument("--poll", type=float, default=10.0, help="seconds between polls (10)")
    ap.add_argument("--once", action="store_true", help="one pass, then exit")
    ap.add_argument("--no-ack", action="store_true", help="read only, never acknowledge")
    ap.add_argument("--gap-polls", type=int, default=3,
                    help="polls a gap in ids must persist before it is reported and passed (3)")
    ap.add_argument("--duration", type=float, default=0,
                    help="stop after this many seconds (0 = run until interrupted)")
    a = ap.parse_args(argv)

    last_id, csv_bytes, acked_id = load_state(a.state)
    out = None
    if a.csv:
        out = open(a.csv, "a+b")
        out.seek(0, os.SEEK_END)
        if out.tell() > csv_bytes:
            log("cutting %s back to %d bytes: rows after id %d were written but not recorded"
                % (a.csv, csv_bytes, last_id))
            out.truncate(csv_bytes)
        elif out.tell() < csv_bytes:
            log("error: %s is shorter than its state says (%d < %d bytes): was it edited?"
                % (a.csv, out.tell(), csv_bytes))
            return 2
        out.seek(0, os.SEEK_END)
    workdir = tempfile.mkdtemp(prefix="rtds-reader-")
    gap_seen = 0
    stop_at = time.time() + a.duration if a.duration > 0 else None
    failures = 0
    try:
        while True:
            try:
                segments = list_segments(a.outbox)
            except OSError as e:
                log("cannot list %s: %s; retrying" % (a.outbox, e))
                segments = []
            progressed = False
            for first, last, name in segments:
                if last <= last_id:
                    continue
                if first > last_id + 1:
                    gap_seen += 1
                    if gap_seen < a.gap_polls:
                        break
                    log("GAP: ids %d..%d are missing (dropped by RTDS's retention limits before "
                        "they were acknowledged; see the gateway's log); continuing at %d"
                        % (last_id + 1, first - 1, first))
                gap_seen = 0
                try:
                    rows = read_segment(a.outbox, name, first, last, last_id, workdir)
                except Unreadable as e:
                    failures += 1
                    log("segment %s cannot be read: %s; retried at the next poll, not acknowledged"
                        % (name, e))
                    keep = os.path.join(os.path.dirname(os.path.abspath(a.state)), name + ".unreadable")
                    try:
                        shutil.copyfile(os.path.join(a.outbox, name), keep)
                    except OSError:
                        pass
                    break
                if out is not None:
                    text = _text(rows, a.jsonl)
                    out.write(text.encode("utf-8"))
                    out.flush()
                    os.fsync(out.fileno())
                    csv_bytes = out.tell()
                else:
                    sys.stdout.write(_text(rows, a.jsonl))
                    sys.stdout.flush()
                last_id = last
                save_state(a.state, last_id, csv_bytes, acked_id)
                progressed = True
            if not a.no_ack and last_id > acked_id:
                try:
                    result = acknowledge(a.outbox, last_id, wait_s=max(5.0, a.poll))
                except OSError as e:
                    result = None
                    log("cannot write the acknowledgement: %s; retried after the next segment" % e)
                if result is None:
                    log("no answer to the acknowledgement of id %d yet (is RTDS running?)" % last_id)
                elif result.startswith("accepted"):
                    acked_id = last_id
                    save_state(a.state, last_id, csv_bytes, acked_id)
                else:
                    log("acknowledgement of id %d: %s" % (last_id, result))
            if a.once or (stop_at is not None and time.time() >= stop_at):
                break
            time.sleep(a.poll)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        if out is not None:
            out.close()
    log("stopped at id %d (acknowledged %d)%s"
        % (last_id, acked_id, ", %d read failures" % failures if failures else ""))
    return 0


def _text(rows, jsonl):
    """Rows as CSV (id, name, value as stored, status, ts) or as JSON lines
    with the value decoded (bytes as hex, NaN as NaN, integers exact)."""
    import io
    buf = io.StringIO()
    if jsonl:
        for id_, name, value, status, ts, type_name, version in rows:
            v = decode(value, type_name, version)
            if isinstance(v, bytes):
                v = v.hex()
            elif isinstance(v, list):
                v = [x.hex() if isinstance(x, bytes) else x for x in v]
            buf.write(json.dumps({"id": id_, "name": name, "type": type_name, "value": v,
                                  "status": status, "ts": ts}) + "\n")
        return buf.getvalue()
    w = csv.writer(buf, lineterminator="\n")
    for r in rows:
        w.writerow(r[:5])
    return buf.getvalue()


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:
        # stdout closed early (`| head`): what was not written is not
        # recorded as read, so nothing is lost.
        sys.stderr.close()
        sys.exit(1)
