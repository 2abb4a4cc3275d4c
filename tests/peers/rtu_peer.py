"""An independent Modbus RTU device for RTDS's tests: pymodbus's serial server
(RTU framer) on a pty, and/or pymodbus's TCP server with the RTU framer
("RTU over TCP", what a Moxa NPort-style serial-to-Ethernet converter in TCP
server mode carries), serving SEVERAL unit ids, each with its own register
map. Register contents are computed here with `struct`, not by RTDS.

Usage:
  rtu_peer.py [--serial PTY] [--tcp PORT] [--map FILE.json] [--log FILE]
              [--state FILE] [--baud 19200] [--unknown-units silent|gateway]
              [--no-broadcast] [--debug]
  rtu_peer.py --print-map             the built-in map below, as JSON
  rtu_peer.py --pack FMT VALUE [ORDER] registers struct packs VALUE into
              (FMT: u16 i16 u32 i32 u64 i64 f32 f64, ORDER: ABCD CDAB BADC
              DCBA), e.g. `--pack f32 123.5 CDAB` prints [0, 17143]

At least one of --serial / --tcp. A serial line without hardware:
  socat pty,raw,echo=0,link=/tmp/x/A pty,raw,echo=0,link=/tmp/x/B
  rtu_peer.py --serial /tmp/x/B --log /tmp/x/peer.jsonl   (RTDS opens /tmp/x/A)
or behind tests/peers/rtu_relay.py (which can make the ptys itself).
The serial side is 8N1: a pty refuses parity and 7 data bits (tcsetattr
EINVAL on this 6.x kernel; CSTOPB and any baud are accepted), so RTDS's pty
tests need parity none too. The baud rate only matters to RTDS's own timing
(a pty delivers at once). --tcp 0 picks a free port.
Both at once share ONE data model (a write over TCP is read back over serial).

Needs pymodbus 3.16 and, for --serial, pyserial (pymodbus imports it only
for serial ports; the Makefile's PEERS must list 'pyserial==3.5').

Ready line, on stdout, once every port is open (the first stdout line; the
only one when --log is given):
  rtu_peer ready serial /tmp/x/B tcp 127.0.0.1:40123 units 1,2
(`serial PATH` and `tcp HOST:PORT` only for what was asked.) SIGTERM or
SIGINT stops it.

Log (--log FILE, default stdout after the ready line): one JSON object a line,
flushed at once; `t` is time.time():
  {"ev":"request","t":..,"unit":1,"fc":3,"address":0,"count":2}
      every request pymodbus decoded (valid CRC), whatever the unit, before it
      is handled; "count" is in registers or coils (1 for fc 5 and 6);
      writes add "values" (registers as ints, coils as 0/1) and
      "hex" (the written data as on the wire: exactly what struct.pack(">f",
      123.5).hex() gives for an ABCD f32); fc 22 adds and_mask/or_mask; fc 23
      adds read_address/read_count/write_address.
  {"ev":"write","t":..,"unit":1,"fc":16,"table":"hr","address":20,
   "values":[17143,0],"hex":"42f70000","after":{"20":17143,"21":0,...}}
      every write APPLIED to a unit (after pymodbus's checks passed, one line
      per unit for a broadcast), between its request and its reply; "after"
      is the whole table of that unit (every defined address) once the write
      is done. A refused write (exception) has no such line.
  {"ev":"reply","t":..,"unit":1,"fc":3,"exception":null,"values":[...]}
      every reply sent; "exception" is the exception code (2 = illegal
      address, ...) or null; reads carry the values returned.
  {"ev":"dump","t":..,"units":{"1":{"hr":{..},"ir":{..},"co":{..},"di":{..}}}}
      right after the ready line, and on SIGUSR1.
--state FILE: that same {"units":...} object, rewritten (atomically) at start
and after every write: the device's registers as they are now.

Units (pymodbus quirks handled here):
  - a unit not in the map gets NO reply (a real RS-485 line: nobody answers);
    pymodbus's default would answer exception 4 (its device lookup raises a
    KeyError). --unknown-units gateway answers exception 0x0B instead.
  - unit 0 is broadcast: writes go to every unit, no reply (--no-broadcast
    treats 0 as an unknown unit: silence).
  - addresses not in the map answer exception 2 (illegal data address);
    bit READS are valid per group of 16 around defined bits (pymodbus stores
    bits 16 to a register: coil 8 of unit 1 reads 0), bit WRITES only on
    defined bits; a table absent from a unit's map refuses every address.

pymodbus 3.16's RTU server on the line (measured, see rtu_relay.py's notes):
  - turnaround on a pty: median ~0.7-0.9 ms, p95 1.7-4.5 ms, max 3-12 ms
    (2 busy cores), from the request's last byte to the reply's first.
  - a bad CRC is dropped silently (no reply), and so is everything else in
    its receive buffer at that moment; a good request written 50 ms later
    is answered.
  - no t3.5 resynchronisation: bytes before a request (noise) make it lose
    the request whenever they parse as the start of a frame (00 ff, 55,
    ff alone 50 ms earlier: all lost the request); a partial request stays
    buffered indefinitely and completes with whatever comes next.
  - one request per read: two requests in one write get one reply (the
    second is discarded); trailing garbage after a request is discarded.
  - an unknown function code gets no reply (not exception 1) and stays in
    the buffer: the NEXT good request is lost too, the one after is served.
  - a count out of range (read 0 or 126 registers) answers a malformed
    exception, function 0x80 code 1 (01 80 01 80 00), not 0x83 code 3.

Map file (--map): {"units": {"UNIT": {"hr": [ENTRY...], "ir": [...],
"co": [...], "di": [...]}}}, ENTRY one of
  {"address": 0, "values": [1, 2, 3]}                 raw registers
  {"address": 0, "type": "f32", "value": 123.5, "order": "CDAB"}
  {"address": 0, "string": "PYMODBUS"}                2 chars a register
  {"address": 40, "count": 20, "value": 0}            memory (writes)
  {"address": 0, "bits": "10110010"}                  co/di, address first
  {"address": 20, "count": 10, "value": 0}            co/di memory
and "readonly": true on any entry (a write there answers exception 2).

Built-in map (no --map), two units with DIFFERENT layouts:
 unit 1  hr 0 u16 101 (who answered)  1-2 f32 123.5 ABCD  3-4 f32 123.5 CDAB
         5 i16 -2   6-7 u32 0x12345678 ABCD   8-11 f64 -1.25 ABCD
         12-15 string "RTU-ONE!"   16 u16 0xBEEF readonly   20-39 memory
         ir 0-1 f32 -7.5 ABCD  2 u16 42    co 0-7 10110010  16-31 memory
         di 0-7 01011100
 unit 2  hr 0 u16 201   10-11 f32 -7.25 CDAB   12 u16 65535
         13-14 i32 -123456 ABCD   100-119 memory   (1-9, 15-99 invalid)
         ir 5 u16 2005  6-9 u64 0x0102030405060708 DCBA
         co 0-3 0110  (no di: every di address answers exception 2)
"""

import argparse
import asyncio
import functools
import json
import os
import signal
import struct
import sys
import time

FORMATS = {"u16": "H", "i16": "h", "u32": "I", "i32": "i", "u64": "Q", "i64": "q",
           "f32": "f", "f64": "d"}
TABLES = ("co", "di", "hr", "ir")  # pymodbus's tuple order
FC_TABLE = {1: "co", 5: "co", 15: "co", 2: "di", 3: "hr", 6: "hr", 16: "hr",
            22: "hr", 23: "hr", 4: "ir"}

DEFAULT_MAP = {
    "units": {
        "1": {
            "hr": [
                {"address": 0, "values": [101]},
                {"address": 1, "type": "f32", "value": 123.5, "order": "ABCD"},
                {"address": 3, "type": "f32", "value": 123.5, "order": "CDAB"},
                {"address": 5, "type": "i16", "value": -2},
                {"address": 6, "type": "u32", "value": 0x12345678},
                {"address": 8, "type": "f64", "value": -1.25},
                {"address": 12, "string": "RTU-ONE!"},
                {"address": 16, "values": [0xBEEF], "readonly": True},
                {"address": 20, "count": 20, "value": 0},
            ],
            "ir": [
                {"address": 0, "type": "f32", "value": -7.5},
                {"address": 2, "values": [42]},
            ],
            "co": [
                {"address": 0, "bits": "10110010"},
                {"address": 16, "count": 16, "value": 0},
            ],
            "di": [{"address": 0, "bits": "01011100"}],
        },
        "2": {
            "hr": [
                {"address": 0, "values": [201]},
                {"address": 10, "type": "f32", "value": -7.25, "order": "CDAB"},
                {"address": 12, "values": [65535]},
                {"address": 13, "type": "i32", "value": -123456},
                {"address": 100, "count": 20, "value": 0},
            ],
            "ir": [
                {"address": 5, "values": [2005]},
                {"address": 6, "type": "u64", "value": 0x0102030405060708, "order": "DCBA"},
            ],
            "co": [{"address": 0, "bits": "0110"}],
        },
    }
}


def regs(fmt, value, order="ABCD"):
    """Registers for `value` packed big-endian by struct as `fmt`, then reordered."""
    raw = struct.pack(">" + FORMATS.get(fmt, fmt), value)
    words = [raw[i : i + 2] for i in range(0, len(raw), 2)]
    if order in ("CDAB", "DCBA"):
        words.reverse()
    if order in ("BADC", "DCBA"):
        words = [w[::-1] for w in words]
    return [int.from_bytes(w, "big") for w in words]


def entry_values(entry, bits):
    """(address, list of values) an entry of the map defines."""
    addr = int(entry["address"])
    if "count" in entry:
        v = entry.get("value", 0)
        return addr, [int(bool(v)) if bits else int(v)] * int(entry["count"])
    if bits:
        if "bits" in entry:
            return addr, [int(c) for c in entry["bits"] if c in "01"]
        return addr, [int(bool(v)) for v in entry["values"]]
    if "type" in entry:
        return addr, regs(entry["type"], entry["value"], entry.get("order", "ABCD"))
    if "string" in entry:
        raw = entry["string"].encode()
        raw += b"\0" * (len(raw) % 2)
        return addr, [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]
    return addr, [int(v) for v in entry["values"]]


class Model:
    """The map, resolved: unit -> table -> {address: value} as defined."""

    def __init__(self, spec):
        self.defined = {}  # unit -> table -> {addr: initial value}
        self.readonly = {}  # unit -> table -> set of addresses
        for unit_s, tables in spec["units"].items():
            unit = int(unit_s)
            if not 1 <= unit <= 247:
                raise SystemExit(f"unit {unit}: RTU units are 1-247 (0 is broadcast)")
            self.defined[unit] = {}
            self.readonly[unit] = {}
            for t in TABLES:
                cells, ro = {}, set()
                for e in tables.get(t, []):
                    addr, vals = entry_values(e, t in ("co", "di"))
                    for i, v in enumerate(vals):
                        if addr + i in cells:
                            raise SystemExit(f"unit {unit} {t} {addr + i} defined twice")
                        cells[addr + i] = v
                        if e.get("readonly"):
                            ro.add(addr + i)
                if cells:
                    self.defined[unit][t] = cells
                    self.readonly[unit][t] = ro

    def devices(self, action):
        from pymodbus.simulator import DataType, SimData, SimDevice

        out = []
        for unit, tables in self.defined.items():
            simdata = []
            for t in TABLES:
                cells = tables.get(t)
                bits = t in ("co", "di")
                if not cells:
                    # pymodbus needs a block per table; the action refuses it.
                    simdata.append([SimData(address=0, values=[False] * 16, datatype=DataType.BITS)]
                                   if bits else
                                   [SimData(address=0, values=[0], datatype=DataType.REGISTERS)])
                    continue
                blocks, run = [], []
                for addr in sorted(cells):
                    if run and (addr != run[-1] + 1 or
                                (addr in self.readonly[unit][t]) != (run[0] in self.readonly[unit][t])):
                        blocks.append(run)
                        run = []
                    run.append(addr)
                blocks.append(run)
                simdata.append([
                    SimData(address=b[0],
                            values=[bool(cells[a]) for a in b] if bits else [cells[a] for a in b],
                            datatype=DataType.BITS if bits else DataType.REGISTERS,
                            readonly=b[0] in self.readonly[unit][t])
                    for b in blocks
                ])
            out.append(SimDevice(id=unit, simdata=tuple(simdata),
                                 action=functools.partial(action, unit)))
        return out


def dump_units(model, core):
    """{"UNIT": {table: {"addr": value}}}: what the device holds now."""
    from pymodbus.simulator.simutils import SimUtils

    out = {}
    for unit, tables in model.defined.items():
        rt = core.devices[unit]
        u = {}
        for t, cells in tables.items():
            start, _n, registers, _flags = rt.block[t[0]]
            if t in ("co", "di"):
                bits = SimUtils.registersToBits(registers)
                u[t] = {str(a): int(bits[a - start * 16]) for a in sorted(cells)}
            else:
                u[t] = {str(a): registers[a - start] for a in sorted(cells)}
        out[str(unit)] = u
    return out


class Peer:
    def __init__(self, args, model):
        self.args = args
        self.model = model
        self.core = None
        self.out = open(args.log, "a", buffering=1) if args.log else None
        self.loop = None
        self.pending = []  # writes applied, not logged yet

    def log(self, rec):
        rec = {"ev": rec.pop("ev"), "t": round(time.time(), 6), **rec}
        line = json.dumps(rec, separators=(",", ":"))
        if self.out:
            self.out.write(line + "\n")
        else:
            print(line, flush=True)

    def save_state(self):
        if self.args.state:
            tmp = self.args.state + ".tmp"
            with open(tmp, "w") as f:
                json.dump({"units": dump_units(self.model, self.core)}, f)
            os.replace(tmp, self.args.state)

    def dump(self):
        self.log({"ev": "dump", "units": dump_units(self.model, self.core)})

    async def action(self, unit, fc, _start, address, count, _registers, values):
        """Called by pymodbus once its own checks passed, before a write applies."""
        from pymodbus.constants import ExcCodes

        table = FC_TABLE.get(fc)
        cells = self.model.defined[unit].get(table)
        if cells is None:
            return ExcCodes.ILLEGAL_ADDRESS
        if values is not None:
            vals = [int(v) for v in values]
            span = range(address, address + len(vals))
            # Exact per address for writes (pymodbus knows bits only 16 at a
            # time and has no read-only bits).
            if any(a not in cells for a in span):
                return ExcCodes.ILLEGAL_ADDRESS
            if any(a in self.model.readonly[unit][table] for a in span):
                return ExcCodes.ILLEGAL_ADDRESS
            # pymodbus applies the values right after this returns: log them
            # then, before the reply (trace_pdu) or, for a broadcast, soon.
            self.pending.append((unit, fc, table, address, vals))
            self.loop.call_soon(self.flush_writes)
        return None

    def flush_writes(self):
        while self.pending:
            self.written(*self.pending.pop(0))

    def written(self, unit, fc, table, address, vals):
        rec = {"ev": "write", "unit": unit, "fc": fc, "table": table, "address": address,
               "values": vals}
        if table == "hr":
            rec["hex"] = b"".join(struct.pack(">H", v) for v in vals).hex()
        rec["after"] = dump_units(self.model, self.core)[str(unit)][table]
        self.log(rec)
        self.save_state()

    def trace_pdu(self, sending, pdu):
        try:
            self.trace(sending, pdu)
        except Exception as exc:  # noqa: BLE001 - never break pymodbus's handling
            self.log({"ev": "reply" if sending else "request", "unit": pdu.dev_id,
                      "fc": pdu.function_code, "error": repr(exc)})
        return pdu

    def trace(self, sending, pdu):
        fc = pdu.function_code
        if not sending:
            rec = {"ev": "request", "unit": pdu.dev_id, "fc": fc}
            if fc == 23:
                rec.update(read_address=pdu.read_address, read_count=pdu.read_count,
                           write_address=pdu.write_address,
                           values=list(pdu.write_registers),
                           hex=b"".join(struct.pack(">H", v) for v in pdu.write_registers).hex())
            elif fc == 22:
                rec.update(address=pdu.address, and_mask=pdu.and_mask, or_mask=pdu.or_mask)
            else:
                rec.update(address=pdu.address, count=pdu.count)
                if fc in (6, 16):
                    rec["values"] = list(pdu.registers)
                    rec["hex"] = b"".join(struct.pack(">H", v) for v in pdu.registers).hex()
                    rec["count"] = len(pdu.registers)
                elif fc in (5, 15):
                    rec["values"] = [int(b) for b in pdu.bits[: pdu.count or 1]]
                    rec["count"] = len(rec["values"])
        else:
            self.flush_writes()
            rec = {"ev": "reply", "unit": pdu.dev_id, "fc": fc & 0x7F,
                   "exception": pdu.exception_code if fc & 0x80 else None}
            if not fc & 0x80 and fc in (1, 2):
                rec["values"] = [int(b) for b in pdu.bits]
            elif not fc & 0x80 and fc in (3, 4, 23):
                rec["values"] = list(pdu.registers)
        self.log(rec)

    async def run(self):
        from pymodbus.exceptions import NoSuchIdException
        from pymodbus.framer import FramerType
        from pymodbus.server import ModbusSerialServer, ModbusTcpServer
        from pymodbus.simulator.simcore import SimCore

        class StrictCore(SimCore):
            """SimCore without the fall-back to device 0 (a KeyError here)."""

            def _SimCore__get_device(self, device_id):
                if device_id not in self.devices:
                    raise NoSuchIdException(f"no unit {device_id}")
                return self.devices[device_id]

        self.loop = asyncio.get_running_loop()
        devices = self.model.devices(self.action)
        self.core = StrictCore(devices)
        common = dict(
            framer=FramerType.RTU,
            ignore_missing_devices=self.args.unknown_units == "silent",
            broadcast_enable=not self.args.no_broadcast,
            trace_pdu=self.trace_pdu,
        )
        servers, ready = [], ["rtu_peer", "ready"]
        if self.args.serial:
            s = ModbusSerialServer(devices, port=self.args.serial, baudrate=self.args.baud,
                                   bytesize=8, parity="N", stopbits=1, **common)
            s.context = self.core
            await s.serve_forever(background=True)
            servers.append(s)
            ready += ["serial", self.args.serial]
        if self.args.tcp is not None:
            s = ModbusTcpServer(devices, address=(self.args.host, self.args.tcp), **common)
            s.context = self.core
            await s.serve_forever(background=True)
            servers.append(s)
            port = s.transport.sockets[0].getsockname()[1]
            ready += ["tcp", f"{self.args.host}:{port}"]
        ready += ["units", ",".join(str(u) for u in self.model.defined)]
        print(" ".join(ready), flush=True)
        self.dump()
        self.save_state()

        stop = asyncio.Event()
        self.loop.add_signal_handler(signal.SIGTERM, stop.set)
        self.loop.add_signal_handler(signal.SIGINT, stop.set)
        self.loop.add_signal_handler(signal.SIGUSR1, self.dump)
        await stop.wait()
        for s in servers:
            await s.shutdown()


def main():
    # `--pack FMT VALUE [ORDER]` first and by hand: argparse takes a
    # negative value in exponent form (-1.7976931348623157e308) for an option.
    if len(sys.argv) > 1 and sys.argv[1] == "--pack":
        if len(sys.argv) not in (4, 5):
            sys.exit("usage: rtu_peer.py --pack FMT VALUE [ORDER]")
        fmt, value = sys.argv[2], sys.argv[3]
        value = float(value) if fmt.startswith("f") else int(value, 0)
        print(json.dumps(regs(fmt, value, sys.argv[4] if len(sys.argv) > 4 else "ABCD")))
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--serial", help="pty / tty the RTU server opens (8N1)")
    p.add_argument("--tcp", type=int, help="TCP port for RTU over TCP (0: a free one)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--baud", type=int, default=19200)
    p.add_argument("--map", help="JSON register map (default: the built-in one)")
    p.add_argument("--log", help="JSON-lines log file (default: stdout)")
    p.add_argument("--state", help="file rewritten with every unit's tables after each write")
    p.add_argument("--unknown-units", choices=("silent", "gateway"), default="silent")
    p.add_argument("--no-broadcast", action="store_true")
    p.add_argument("--debug", action="store_true", help="pymodbus debug log on stderr")
    p.add_argument("--print-map", action="store_true")
    args = p.parse_args()

    if args.print_map:
        print(json.dumps(DEFAULT_MAP, indent=1))
        return
    if not args.serial and args.tcp is None:
        p.error("give --serial PTY and/or --tcp PORT")
    if args.serial:
        try:
            import serial  # noqa: F401 - pymodbus's serial transport needs it
        except ImportError:
            sys.exit("rtu_peer: --serial needs pyserial next to pymodbus (pip install 'pyserial==3.5')")
    spec = DEFAULT_MAP
    if args.map:
        with open(args.map) as f:
            spec = json.load(f)
    model = Model(spec)
    if args.debug:
        from pymodbus import pymodbus_apply_logging_config

        pymodbus_apply_logging_config("DEBUG")
    asyncio.run(Peer(args, model).run())


if __name__ == "__main__":
    main()
