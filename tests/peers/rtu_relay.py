"""A fault-injecting Modbus RTU relay for RTDS's tests, between RTDS's serial
port and an RTU device (tests/peers/rtu_peer.py), independent of RTDS:
standard library only, frames cut by the Modbus RTU length rules, CRC-16/
MODBUS computed here (reference bit loop, checked by --selftest against the
Modbus over Serial Line spec's example and the usual vectors).

    RTDS --- A1 ==pty== A2 --- rtu_relay --- B1 ==pty== B2 --- rtu_peer.py

Usage:
  rtu_relay.py (--rtds PATH | --rtds-pty LINK) (--device PATH | --device-pty LINK)
               [--log FILE] [--stats FILE] [--baud 19200] [--char-bits 11]
               [--pace] [--gap-ms 20] [--cmd COMMAND]...
  rtu_relay.py --selftest

  --rtds PATH / --device PATH   open an existing tty end, e.g. A2 and B1 of
        socat pty,raw,echo=0,link=A1 pty,raw,echo=0,link=A2  (and B1/B2)
  --rtds-pty LINK / --device-pty LINK   make the pty here instead (no socat):
        LINK becomes a symlink to the slave (/dev/pts/N) that RTDS (A1) or the
        device (B2) opens; the relay holds the master, and the slave open too,
        so the other side may close and reopen the port at will. Start the
        relay first, then RTDS / the device on the links.
  --baud, --char-bits   the line the timing checks assume: a character is
        char-bits/baud (11: the spec's RTU character, start+8+parity/2nd
        stop+stop); t3.5 = 3.5 characters, 1.75 ms above 19200 baud.
  --pace   write replies to RTDS at that baud rate, byte by byte, as a wire
        would deliver them (a pty delivers a whole frame at once otherwise).
  --gap-ms   bytes that are no frame the length rules know (unknown function,
        garbage) are passed on as they are after this much silence.

Ready line (stdout, once both ends are open):
  rtu_relay ready rtds /tmp/x/A1 device /tmp/x/B2 t35_ms 2.005

Commands: one a line on stdin, JSON or words (k=v, numbers as numbers):
  {"cmd":"corrupt_crc","n":2}       or   corrupt_crc n=2
Each is answered on stdout by one line: `ok {...the command...}`, or
`error MESSAGE`, or for stats `stats {...}`; the fault is armed when `ok`
is printed. --cmd COMMAND (repeatable) applies commands before the ready line,
silently (a bad one: exit 1, message on stderr). stdin at EOF (/dev/null) is
fine: the relay runs on until SIGTERM / SIGINT, then logs a last stats line,
writes --stats and removes the links it made. Reply faults act on the next n replies from the device ("n": 1
by default, -1: every reply until `clear`), optionally only replies of unit
"unit"; one of each kind applies per reply, in this order:
  drop_reply                      swallow the reply (RTDS times out)
  wrong_unit  as=U                rewrite the unit byte (default unit+1), new CRC
  corrupt_crc [at=I] [xor=X]      invert both CRC bytes (or xor byte I, from
                                  the end if negative, with X; default 0xFF)
  truncate    [keep=K]            send only the first K bytes (default half)
  split       [at=K] [gap_ms=G]   first K bytes (default 3), G ms (default
                                  50) of silence, the rest
  noise       [before=HEX] [after=HEX] [gap_ms=G]   extra bytes around the
                                  reply (default before=00), G ms apart
  delay       ms=D                send the reply D ms late (a late reply)
  delay       until=next_request [ms=D]   hold it until RTDS's next request
                                  has arrived, send it D ms (default 0) after
                                  that request's last byte: a stale reply
                                  while the next request is in flight
Unit state and others:
  dead unit=U / alive unit=U      drop every request to U (a dead device)
  clear                           disarm all faults, every unit alive
  stats                           counters on stdout (also --stats FILE)
  reset_stats                     counters to zero
  mark text=...                   a {"ev":"mark"} line in the log
  quit                            exit (as on SIGTERM)

Counters (the `stats` object; --stats FILE is rewritten whenever the relay is
idle and something changed, and at exit):
  requests forwarded dropped broadcast bad_crc_requests unanswered
  replies sent dropped_replies corrupted truncated noise split delayed late
  wrong_unit unsolicited fragments t35_violations collisions min_idle_ms
  max_read_gap_ms, and per_unit {"1": {"requests","dropped","replies"}}
  (dropped: requests to dead units; unanswered: forwarded requests whose
  reply had not come when the next request did; late: delayed replies sent
  after a newer request arrived; noise/corrupted/...: replies that fault was
  applied to; per_unit replies: by the unit byte the device sent.)

Log (--log FILE), one JSON object a line; "t" is time.time(), *_ms are ms
since the relay started (one monotonic clock):
  {"ev":"request","seq":7,"unit":1,"fc":3,"hex":"010300000001840a",
   "crc_ok":true,"first_ms":..,"last_ms":..,"reads":1,"max_read_gap_ms":0.0,
   "idle_ms":2.4,"after_reply_ms":2.4,"after_request_ms":10.1,
   "t35_ms":2.005,"t35_ok":true,"collision":false,
   "action":"forwarded"|"dropped"|"broadcast"}
     idle_ms: silence on RTDS's side before this request's first byte (since
     the last byte of whatever was last on that side: a reply, noise, the
     previous request); after_reply_ms: since the last byte of the last reply
     sent to RTDS. On a pty these are the gaps RTDS's writer leaves (the
     relay reads within ~0.1 ms): a measured gap is never shorter than the
     real one, so idle_ms < t35_ms is a sure violation. max_read_gap_ms: the
     longest pause inside the request (t1.5 check), reads: how many reads it
     came in; collision: a reply was still going out (paced or split) when
     it began.
  {"ev":"reply","seq":7,"req":7,"unit":1,"fc":3,"exception":null,
   "hex":"0103020065...",
   "sent_hex":"..." (the frame as sent, null if dropped),"noise_before":"00",
   "noise_after":"","faults":["corrupt_crc"],"rx_first_ms":..,"rx_last_ms":..,
   "turnaround_ms":0.9,"tx_first_ms":..,"tx_last_ms":..,"held_ms":0.0,
   "late":false,"newer_req":null}
     logged once sent (or dropped); req: the seq of the request it answers
     (null: unsolicited); turnaround_ms: the device's, from the request
     forwarded to the reply's first byte; held_ms: from the reply's last byte
     in to its first byte out (the relay's own latency, ~0.05 ms, plus any
     delay); tx_last_ms: when its last byte (trailing noise included) went
     out; late/newer_req: a newer request had arrived before it went out.
  {"ev":"fragment","side":"rtds"|"device","hex":..,"first_ms":..,
   "last_ms":..}  bytes no rule framed, passed on after --gap-ms of silence
     (a whole frame of an unknown function with a good CRC is a request or
     reply instead).
  {"ev":"command",...} {"ev":"mark",...} {"ev":"stats",...} (at exit)

Measured on this 2-core machine (ptys, pymodbus 3.16 behind the relay):
  relay latency, device reply in -> out to RTDS: median 0.05 ms, max 0.2 ms.
  pymodbus's turnaround: min 0.4, median 0.7-1.0, p95 1.7-4.5, max 3-12 ms.
  A raw master that waits W ms after reading a reply shows idle_ms of
  W + 0.15-0.5 ms (median), never less than W: W=2.0 gave min 2.16, W=1.0
  gave 1.12-1.97 (all flagged), W=0 gave 0.41-1.7. pymodbus's own async
  client does not keep t3.5: 0.5-1.3 ms between a reply and its next request.
  max_read_gap_ms can read SHORT (a late wake-up for the first chunk): a
  3 ms pause inside a request measured 2.0 ms; use it for gaps of several ms.
  --pace at 9600 baud: median 1.15 ms a byte as asked, jitter up to ~4.5 ms
  (late bytes then go out back to back): fine for whole-frame timing, too
  coarse for t1.5 checks.
"""

import argparse
import errno
import json
import os
import select
import signal
import sys
import termios
import time
import tty

# --------------------------------------------------------------- CRC-16/MODBUS


def crc16(data):
    """CRC-16/MODBUS: poly 0xA001 (0x8005 reflected), init 0xFFFF, no final xor."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def with_crc(body):
    """body + its CRC, low byte first (as RTU sends it)."""
    return bytes(body) + crc16(body).to_bytes(2, "little")


def crc_ok(frame):
    return len(frame) >= 4 and crc16(frame[:-2]) == int.from_bytes(frame[-2:], "little")


def selftest():
    # Modbus over Serial Line V1.02, 6.2.2: message 02 07 -> CRC 0x1241, sent 41 12.
    assert crc16(b"\x02\x07") == 0x1241
    assert with_crc(b"\x02\x07")[-2:] == b"\x41\x12"
    # Read holding register 0, unit 1: 01 03 00 00 00 01 84 0A.
    assert with_crc(bytes.fromhex("010300000001")).hex() == "010300000001840a"
    # The CRC catalogue's check value of CRC-16/MODBUS.
    assert crc16(b"123456789") == 0x4B37
    assert crc_ok(bytes.fromhex("010300000001840a"))
    assert not crc_ok(bytes.fromhex("010300000001840b"))
    assert request_len(bytes.fromhex("0110001400020442f70000")) == 13
    assert reply_len(bytes.fromhex("010302")) == 7
    assert reply_len(bytes.fromhex("0183")) == 5
    print("selftest ok")


# ------------------------------------------------------------- frame lengths


def request_len(b):
    """Length of the request frame starting b: None needs more bytes, 0 unknown."""
    if len(b) < 2:
        return None
    fc = b[1]
    fixed = {1: 8, 2: 8, 3: 8, 4: 8, 5: 8, 6: 8, 7: 4, 8: 8, 11: 4, 12: 4, 17: 4,
             22: 10, 24: 6, 43: 7}
    if fc in fixed:
        return fixed[fc]
    if fc in (15, 16):
        return None if len(b) < 7 else 9 + b[6]
    if fc == 23:
        return None if len(b) < 11 else 13 + b[10]
    if fc in (20, 21):
        return None if len(b) < 3 else 5 + b[2]
    return 0


def reply_len(b):
    """Length of the reply frame starting b: None needs more bytes, 0 unknown."""
    if len(b) < 2:
        return None
    fc = b[1]
    if fc & 0x80:
        return 5
    if fc in (1, 2, 3, 4, 12, 17, 20, 21, 23):
        return None if len(b) < 3 else 5 + b[2]
    if fc in (5, 6, 8, 11, 15, 16):
        return 8
    if fc == 7:
        return 5
    if fc == 22:
        return 10
    if fc == 24:
        return None if len(b) < 4 else 6 + int.from_bytes(b[2:4], "big")
    return 0


# --------------------------------------------------------------------- ptys

T0 = time.perf_counter()


def now():
    """ms since start, one monotonic clock."""
    return (time.perf_counter() - T0) * 1000.0


def open_tty(path):
    fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    try:
        tty.setraw(fd)
    except termios.error:
        pass
    return fd, None


def make_pty(link):
    master, slave = os.openpty()
    tty.setraw(slave)
    attrs = termios.tcgetattr(slave)
    attrs[3] &= ~termios.ECHO
    termios.tcsetattr(slave, termios.TCSANOW, attrs)
    os.set_blocking(master, False)
    if os.path.lexists(link):
        os.unlink(link)
    os.symlink(os.ttyname(slave), link)
    # The slave stays open here: the master never sees EIO (hang-up) when
    # the other side closes, so it may reopen.
    return master, slave


# -------------------------------------------------------------------- relay

KINDS = ("drop_reply", "wrong_unit", "corrupt_crc", "truncate", "split", "noise", "delay")
COUNTER_NAMES = ("requests", "forwarded", "dropped", "broadcast", "bad_crc_requests",
                 "unanswered", "replies", "sent", "dropped_replies", "corrupted",
                 "truncated", "noise", "split", "delayed", "late", "wrong_unit",
                 "unsolicited", "fragments", "t35_violations", "collisions")
FAULT_COUNTER = {"drop_reply": "dropped_replies", "wrong_unit": "wrong_unit",
                 "corrupt_crc": "corrupted", "truncate": "truncated", "split": "split",
                 "noise": "noise", "delay": "delayed"}


class Stop(Exception):
    """SIGTERM / SIGINT: leave the loop (select would resume otherwise)."""


class Rx:
    """Bytes arriving on one side, cut into frames."""

    def __init__(self, side, length_rule):
        self.side = side
        self.rule = length_rule
        self.buf = b""
        self.first = None  # ms of the current frame's first byte
        self.last = None  # ms of its last read
        self.reads = []  # ms of each read in the current frame

    def feed(self, data, t):
        """Frames completed by this read: [(frame, first_ms, last_ms, reads)]."""
        if not self.buf:
            self.first = t
            self.reads = []
        self.buf += data
        self.last = t
        self.reads.append(t)
        out = []
        while self.buf:
            n = self.rule(self.buf)
            if not n or len(self.buf) < n:
                break
            out.append((self.buf[:n], self.first, t, self.reads))
            self.buf = self.buf[n:]
            self.first, self.reads = t, [t]
        return out

    def stale(self, t, gap):
        """The buffer, if silent for `gap` ms (no rule framed it), else None."""
        if self.buf and t - self.last >= gap:
            out = (self.buf, self.first, self.last, self.reads)
            self.buf = b""
            return out
        return None


class Relay:
    def __init__(self, args):
        self.args = args
        self.char_ms = args.char_bits * 1000.0 / args.baud
        self.t35 = 1.75 if args.baud > 19200 else 3.5 * self.char_ms
        self.log_file = open(args.log, "a", buffering=1) if args.log else None
        self.links = []
        self.keep = []
        if args.rtds_pty:
            self.rtds, s = make_pty(args.rtds_pty)
            self.links.append(args.rtds_pty)
            self.keep.append(s)
        else:
            self.rtds, _ = open_tty(args.rtds)
        if args.device_pty:
            self.dev, s = make_pty(args.device_pty)
            self.links.append(args.device_pty)
            self.keep.append(s)
        else:
            self.dev, _ = open_tty(args.device)
        self.rx_rtds = Rx("rtds", request_len)
        self.rx_dev = Rx("device", reply_len)
        self.faults = []  # armed reply faults, in arrival order
        self.dead = set()
        self.reset_stats()
        self.req_seq = 0
        self.reply_seq = 0
        self.awaiting = None  # the forwarded request a reply is due for
        self.held = []  # replies waiting for RTDS's next request
        self.queue = []  # [due_ms, order, bytes, reply record or None, last?]
        self.busy = []  # (start, end) ms of the line towards RTDS
        self.order = 0
        self.rtds_last = None  # ms of the last byte on RTDS's side
        self.reply_last = None  # ms of the last reply byte sent to RTDS
        self.request_last = None  # ms of the last request byte from RTDS
        self.stdin_open = True
        self.stdin_buf = b""
        self.running = True
        self.dirty = True
        self.quiet = False

    # ------------------------------------------------------------ bookkeeping

    def reset_stats(self):
        self.stats = {k: 0 for k in COUNTER_NAMES}
        self.stats["min_idle_ms"] = None
        self.stats["max_read_gap_ms"] = 0.0
        self.stats["per_unit"] = {}

    def unit_stats(self, unit):
        return self.stats["per_unit"].setdefault(
            str(unit), {"requests": 0, "dropped": 0, "replies": 0})

    def count(self, name, by=1):
        self.stats[name] += by
        self.dirty = True

    def log(self, rec):
        if self.log_file:
            rec = {"ev": rec.pop("ev"), "t": round(time.time(), 6), **rec}
            self.log_file.write(json.dumps(rec, separators=(",", ":")) + "\n")

    def say(self, line):
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    def save_stats(self):
        self.dirty = False
        if self.args.stats:
            tmp = self.args.stats + ".tmp"
            with open(tmp, "w") as f:
                json.dump(self.stats, f)
            os.replace(tmp, self.args.stats)

    # --------------------------------------------------------------- requests

    def on_request(self, frame, first, last, reads):
        self.req_seq += 1
        seq = self.req_seq
        unit = frame[0]
        fc = frame[1] if len(frame) > 1 else None
        gaps = [b - a for a, b in zip(reads, reads[1:])]
        max_gap = round(max(gaps), 3) if gaps else 0.0
        idle = None if self.rtds_last is None else first - self.rtds_last
        rec = {
            "ev": "request", "seq": seq, "unit": unit, "fc": fc, "hex": frame.hex(),
            "crc_ok": crc_ok(frame), "first_ms": round(first, 3), "last_ms": round(last, 3),
            "reads": len(reads), "max_read_gap_ms": max_gap,
            "idle_ms": None if idle is None else round(idle, 3),
            "after_reply_ms": None if self.reply_last is None else round(first - self.reply_last, 3),
            "after_request_ms": None if self.request_last is None else round(first - self.request_last, 3),
            "t35_ms": round(self.t35, 3),
            "t35_ok": None if idle is None else idle >= self.t35,
            # A reply still going out to RTDS (paced, split) when this began.
            "collision": any("tx_first_ms" in q[3] for q in self.queue),
        }
        self.count("requests")
        self.unit_stats(unit)["requests"] += 1
        if not rec["crc_ok"]:
            self.count("bad_crc_requests")
        if rec["collision"]:
            self.count("collisions")
        if idle is not None:
            if idle < self.t35:
                self.count("t35_violations")
            m = self.stats["min_idle_ms"]
            self.stats["min_idle_ms"] = round(idle if m is None else min(m, idle), 3)
        self.stats["max_read_gap_ms"] = max(self.stats["max_read_gap_ms"], max_gap)
        self.rtds_last = self.request_last = last
        if self.awaiting is not None:
            self.count("unanswered")
            self.awaiting = None
        if unit in self.dead:
            rec["action"] = "dropped"
            self.count("dropped")
            self.unit_stats(unit)["dropped"] += 1
        else:
            fwd = now()
            self.write_all(self.dev, frame)
            self.count("forwarded")
            if unit == 0:
                rec["action"] = "broadcast"
                self.count("broadcast")
            else:
                rec["action"] = "forwarded"
                self.awaiting = {"seq": seq, "unit": unit, "fwd_ms": fwd}
        self.log(rec)
        # Replies held for this request go out now (+ their ms).
        held, self.held = self.held, []
        for r, ms in held:
            self.schedule(r, last + ms)

    # ---------------------------------------------------------------- replies

    def take(self, kind, unit):
        """The first armed fault of `kind` for `unit`, consumed; or None."""
        for f in self.faults:
            if f["cmd"] == kind and f.get("unit") in (None, unit):
                if f["n"] > 0:
                    f["n"] -= 1
                    if f["n"] == 0:
                        self.faults.remove(f)
                return f
        return None

    def on_reply(self, frame, first, last, reads):
        self.reply_seq += 1
        req = self.awaiting
        self.awaiting = None
        unit = frame[0]
        rec = {
            "ev": "reply", "seq": self.reply_seq, "req": req["seq"] if req else None,
            "unit": unit, "fc": frame[1] if len(frame) > 1 else None,
            "exception": frame[2] if len(frame) > 2 and frame[1] & 0x80 else None,
            "hex": frame.hex(), "faults": [], "rx_first_ms": round(first, 3), "rx_last_ms": round(last, 3),
            "turnaround_ms": round(first - req["fwd_ms"], 3) if req else None,
        }
        self.count("replies")
        self.unit_stats(unit)["replies"] += 1
        if req is None:
            self.count("unsolicited")
        applied = {}
        for kind in KINDS:
            f = self.take(kind, unit)
            if f is not None:
                applied[kind] = f
                rec["faults"].append(kind)
                self.count(FAULT_COUNTER[kind])
                if kind == "drop_reply":
                    break
        if "drop_reply" in applied:
            rec["sent_hex"] = None
            self.log(rec)
            return
        out = bytearray(frame)
        if "wrong_unit" in applied:
            new = applied["wrong_unit"].get("as", unit % 247 + 1)
            out = bytearray(with_crc(bytes([new]) + bytes(out[1:-2])))
        if "corrupt_crc" in applied:
            f = applied["corrupt_crc"]
            xor = f.get("xor", 0xFF)
            if "at" in f:
                out[f["at"]] ^= xor
            else:
                out[-1] ^= xor
                out[-2] ^= xor
        if "truncate" in applied:
            keep = applied["truncate"].get("keep", max(1, len(out) // 2))
            out = out[:keep]
        # Segments: (offset_ms from the reply's start, bytes).
        pieces = []
        if "split" in applied:
            f = applied["split"]
            at = f.get("at", 3)
            pieces = [(bytes(out[:at]), 0.0), (bytes(out[at:]), f.get("gap_ms", 50.0))]
        else:
            pieces = [(bytes(out), 0.0)]
        rec["sent_hex"] = bytes(out).hex()
        rec["noise_before"] = rec["noise_after"] = ""
        if "noise" in applied:
            f = applied["noise"]
            before = bytes.fromhex(f.get("before", "" if "after" in f else "00"))
            after = bytes.fromhex(f.get("after", ""))
            gap = f.get("gap_ms", 0.0)
            rec["noise_before"], rec["noise_after"] = before.hex(), after.hex()
            if before:
                pieces.insert(0, (before, 0.0))
                pieces[1] = (pieces[1][0], gap)
            if after:
                pieces.append((after, gap))
        rec["pieces"] = pieces
        if "delay" in applied:
            f = applied["delay"]
            if f.get("until") == "next_request":
                self.held.append((rec, f.get("ms", 0.0)))
                return
            self.schedule(rec, last + f.get("ms", 0.0))
        else:
            self.schedule(rec, now())

    def schedule(self, rec, due):
        """Queue a reply's pieces on RTDS's line from `due`, after what is on it."""
        char = self.char_ms if self.args.pace else 0.0
        plan, t = [], 0.0
        for data, gap in rec.pop("pieces"):
            t += gap
            if char:
                for b in data:
                    plan.append((t, bytes([b])))
                    t += char
            elif data:
                plan.append((t, data))
        duration = t
        # The line is one wire: a reply (with its split gap or pacing) is not
        # interleaved with another one; it waits until the line is free.
        t_now = now()
        self.busy = [(a, b) for a, b in self.busy if b > t_now]
        start = max(due, t_now)
        moved = True
        while moved:
            moved = False
            for a, b in self.busy:
                if start < b and a < start + max(duration, 1e-9):
                    start, moved = b, True
        if duration > 0:
            self.busy.append((start, start + duration))
        rec["due_ms"] = due
        for i, (off, data) in enumerate(plan):
            self.order += 1
            self.queue.append([start + off, self.order, data, rec, i == len(plan) - 1])
        if not plan:  # truncate keep=0: nothing to send
            self.finish(rec, now(), now())
        self.queue.sort(key=lambda q: (q[0], q[1]))

    def send_due(self):
        while self.queue and self.queue[0][0] <= now():
            _due, _o, data, rec, last = self.queue.pop(0)
            # Stamped before write(): the reader may have the bytes as soon as
            # write() starts copying, and this process may be preempted
            # before write() returns (measured: up to 2.6 ms on 2 busy cores).
            t = now()
            self.write_all(self.rtds, data)
            if "tx_first_ms" not in rec:
                rec["tx_first_ms"] = round(t, 3)
            self.rtds_last = t
            if last:
                self.finish(rec, rec["tx_first_ms"], t)

    def finish(self, rec, first, last):
        if rec.get("quiet"):  # a device-side fragment, logged already
            self.reply_last = last
            return
        rec["tx_first_ms"] = round(first, 3)
        rec["tx_last_ms"] = round(last, 3)
        rec["held_ms"] = round(first - rec["rx_last_ms"], 3)
        req = rec["req"]
        rec["late"] = req is not None and self.req_seq > req
        rec["newer_req"] = self.req_seq if rec["late"] else None
        if rec["late"] and "delay" in rec["faults"]:
            self.count("late")
        self.reply_last = last
        del rec["due_ms"]
        self.count("sent")
        self.log(rec)

    def write_all(self, fd, data):
        while data:
            try:
                n = os.write(fd, data)
                data = data[n:]
            except BlockingIOError:
                select.select([], [fd], [], 0.05)

    # --------------------------------------------------------------- commands

    def command(self, line, quiet=False):
        self.quiet = quiet
        line = line.strip()
        if not line:
            return
        try:
            if line.startswith("{"):
                cmd = json.loads(line)
            else:
                words = line.split()
                cmd = {"cmd": words[0]}
                for w in words[1:]:
                    k, _, v = w.partition("=")
                    try:
                        cmd[k] = int(v, 0)
                    except ValueError:
                        try:
                            cmd[k] = float(v)
                        except ValueError:
                            cmd[k] = v
            self.apply(cmd)
        except Exception as exc:  # noqa: BLE001 - answer the test, keep running
            if quiet:
                sys.exit(f"rtu_relay: --cmd {line!r}: {exc}")
            self.say(f"error {exc}")

    def apply(self, cmd):
        name = cmd.get("cmd")
        if name == "corrupt":
            name = cmd["cmd"] = "corrupt_crc"
        if name in KINDS:
            cmd.setdefault("n", 1)
            if not isinstance(cmd["n"], int) or cmd["n"] == 0 or cmd["n"] < -1:
                raise ValueError("n: a count >= 1, or -1 for every reply")
            if "before" in cmd or "after" in cmd:
                bytes.fromhex(cmd.get("before", "")), bytes.fromhex(cmd.get("after", ""))
            if name == "delay" and "ms" not in cmd and cmd.get("until") != "next_request":
                raise ValueError("delay needs ms=D or until=next_request")
            self.faults.append(dict(cmd))
        elif name == "dead":
            self.dead.add(int(cmd["unit"]))
        elif name == "alive":
            self.dead.discard(int(cmd["unit"]))
        elif name == "clear":
            self.faults.clear()
            self.dead.clear()
        elif name == "stats":
            if self.quiet:
                return
            self.say("stats " + json.dumps(self.stats, separators=(",", ":")))
            return
        elif name == "reset_stats":
            self.reset_stats()
        elif name == "mark":
            self.log({"ev": "mark", "ms": round(now(), 3), "text": cmd.get("text", "")})
        elif name == "quit":
            self.running = False
        else:
            raise ValueError(f"unknown command {name!r}")
        self.log({"ev": "command", "ms": round(now(), 3), **cmd})
        self.dirty = True
        if not self.quiet:
            self.say("ok " + json.dumps(cmd, separators=(",", ":")))

    # ------------------------------------------------------------------- loop

    def on_read(self, fd, rx, handler, t):
        try:
            data = os.read(fd, 4096)
        except BlockingIOError:
            return
        except OSError as exc:
            if exc.errno == errno.EIO:  # the other end closed (socat's pty)
                time.sleep(0.01)
                return
            raise
        if not data:
            time.sleep(0.01)
            return
        for frame, first, last, reads in rx.feed(data, t):
            handler(frame, first, last, reads)

    def flush_stale(self, t):
        for rx in (self.rx_rtds, self.rx_dev):
            got = rx.stale(t, self.args.gap_ms)
            if got is None:
                continue
            data, first, last, _reads = got
            if rx.rule(data) == 0 and len(data) >= 4 and crc_ok(data):
                # A whole frame of a function the rules do not know.
                (self.on_request if rx is self.rx_rtds else self.on_reply)(*got)
                continue
            self.count("fragments")
            self.log({"ev": "fragment", "side": rx.side, "hex": data.hex(),
                      "first_ms": round(first, 3), "last_ms": round(last, 3)})
            if rx is self.rx_rtds:
                self.rtds_last = last
                self.write_all(self.dev, data)
            else:
                self.schedule({"quiet": True, "req": None, "rx_last_ms": last,
                               "pieces": [(data, 0.0)]}, now())

    def next_timeout(self):
        t = now()
        deadlines = []
        if self.queue:
            deadlines.append(self.queue[0][0])
        for rx in (self.rx_rtds, self.rx_dev):
            if rx.buf:
                deadlines.append(rx.last + self.args.gap_ms)
        if not deadlines:
            return None
        return max(0.0, (min(deadlines) - t) / 1000.0)

    def run(self):
        for c in self.args.cmd:
            self.command(c, quiet=True)
        rtds_name = self.args.rtds_pty or self.args.rtds
        dev_name = self.args.device_pty or self.args.device
        self.say(f"rtu_relay ready rtds {rtds_name} device {dev_name} t35_ms {round(self.t35, 3)}")
        try:
            self.loop()
        except Stop:
            pass
        self.log({"ev": "stats", "ms": round(now(), 3), **self.stats})
        self.save_stats()
        for link in self.links:
            try:
                os.unlink(link)
            except OSError:
                pass

    def loop(self):
        stdin = sys.stdin.fileno()
        while self.running:
            timeout = self.next_timeout()
            if self.dirty and (timeout is None or timeout > 0.002):
                self.save_stats()
            fds = [self.rtds, self.dev] + ([stdin] if self.stdin_open else [])
            try:
                ready, _, _ = select.select(fds, [], [], timeout)
            except InterruptedError:
                continue
            t = now()
            if self.rtds in ready:
                self.on_read(self.rtds, self.rx_rtds, self.on_request, t)
            if self.dev in ready:
                self.on_read(self.dev, self.rx_dev, self.on_reply, t)
            if self.stdin_open and stdin in ready:
                chunk = os.read(stdin, 4096)
                if not chunk:
                    self.stdin_open = False
                self.stdin_buf += chunk
                while b"\n" in self.stdin_buf:
                    line, self.stdin_buf = self.stdin_buf.split(b"\n", 1)
                    self.command(line.decode())
            self.send_due()
            self.flush_stale(now())


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    a = p.add_mutually_exclusive_group()
    a.add_argument("--rtds", help="existing tty end RTDS's side (socat's A2)")
    a.add_argument("--rtds-pty", help="make a pty; symlink for RTDS to open (A1)")
    b = p.add_mutually_exclusive_group()
    b.add_argument("--device", help="existing tty end of the device's side (socat's B1)")
    b.add_argument("--device-pty", help="make a pty; symlink for the device to open (B2)")
    p.add_argument("--log", help="JSON-lines log file")
    p.add_argument("--stats", help="counters file, rewritten as they change")
    p.add_argument("--baud", type=int, default=19200)
    p.add_argument("--char-bits", type=int, default=11)
    p.add_argument("--pace", action="store_true", help="write replies at --baud")
    p.add_argument("--gap-ms", type=float, default=20.0)
    p.add_argument("--cmd", action="append", default=[], help="a command, before any traffic")
    p.add_argument("--selftest", action="store_true")
    args = p.parse_args()
    if args.selftest:
        selftest()
        return
    if not (args.rtds or args.rtds_pty) or not (args.device or args.device_pty):
        p.error("need --rtds or --rtds-pty, and --device or --device-pty")
    relay = Relay(args)

    def stop(_sig, _frame):
        raise Stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    relay.run()


if __name__ == "__main__":
    main()
